"""The rolled schedule of BPTT: what runs once over all steps, what stays in the loop.

Everything here is decided by dependency analysis of the generic step form
(:attr:`symbptt.core.derive.Derivation.step_form`, in row form), for any cell:
no role name or cell shape is recognised.

Forward pass.  The states at ``t - 1`` are *carried* into step ``t``.  An
assignment is *recurrent* when it reads a carried symbol or a recurrent
target of the same step.  The loop computes what the states at ``t`` need;
every other assignment (the output layer) runs after the loop over all
steps at once (or at the last step only, for many-to-one models).

Backward pass.  The adjoints at ``t + 1`` are carried into step ``t`` (the
loop runs backwards).  Assignments that read no carried adjoint, directly or
through a recurrent one (the output layer's gradient), run over all steps at
once before the loop; the per-step contributions to the parameter gradients
are summed over the steps by one product over the stacked steps after it.

Hoisting.  Inside a recurrent assignment, a subexpression that reads nothing
recurrent, and whose rows depend only on the same rows of what it reads, is
computed for every step at once before the loop (a *hoisted* array): the
input projections ``x_t W^T + b`` of the forward pass, the factors of the
adjoints that are made of stored forward values (``1 - h_t**2``).  Before
that, loop expressions are put in a form where such factors show up: nested
elementwise products are flattened, a factor common to every term of a sum is
taken out (``dh * g + dh * h`` is ``dh * (g + h)``), and an adjoint read once,
by an elementwise product of the same step, is written into it.

The step form gives the last step of the backward pass separately for
many-to-one models; for many-to-many ones it is the body with every carried
adjoint zero (the terms vanish symbolically, with :func:`symbptt.expr.mexpr.substitute`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixExpr

from ..core.derive import Derivation, backprop
from ..core.graph import Symbols, build_cell
from ..expr import mexpr
from .lines import atomic, unused_name
from .numpy_printer import LogSumExp, flatten_matmul
from .rowform import RowForm, push_transposes, transpose

__all__ = [
    "Block",
    "Concat",
    "Group",
    "Hoisted",
    "Repeat",
    "Schedule",
    "Split",
    "StateInfo",
    "Stmt",
    "build_schedule",
    "row_local",
]

#: Roles of the output layer's quantities (the head the spec adds to every cell).
HEAD_KINDS = ("output_pre_activation", "output", "loss")
_ADJOINT = ("adjoint_", "pre_adjoint_")
_OFFSET_SUFFIX = {-1: "_prev", 0: "_t", 1: "_next"}


@dataclass(frozen=True)
class Stmt:
    """``target = expr`` of the generic step, in row form."""

    target: Any
    expr: Any
    kind: str
    param: str | None = None


@dataclass(frozen=True)
class Hoisted:
    """``symbol = expr`` computed for every step at once (stacked by rows).

    ``expr`` reads per-step quantities at step t (or a state at t - 1); the
    stacked result holds step t in rows t m .. t m + m - 1.  ``source`` is the
    statement it was taken from (for comments); ``alias`` the loop statement
    whose target is stored in this array and accumulated in the loop.
    """

    symbol: Any
    expr: Any
    source: Stmt
    alias: Any = None


@dataclass(frozen=True)
class StateInfo:
    """A state of the cell: its key, the symbols at t and t - 1, and its initial value."""

    key: str
    now: Any
    prev: Any
    initial: Any  # the derivation's initial-value symbol (h_0), in row form
    argument: str  # the module's keyword for it: key + "0"


@dataclass(frozen=True)
class Group:
    """An array whose column blocks hold several same-sized quantities of each step."""

    name: str
    width: Any  # the units of one block (a size symbol)
    count: int  # the number of blocks
    phase: str  # "forward" or "backward": where it is made


@dataclass(frozen=True)
class Block:
    """Where a family is stored: blocks ``start .. stop - 1`` of the group array ``group``."""

    group: str
    start: int
    stop: int


@dataclass(frozen=True)
class Concat:
    """A parameter-shaped array made once per call: ``np.concatenate(parts, axis)``."""

    symbol: Any
    parts: tuple[Any, ...]
    axis: int


@dataclass(frozen=True)
class Split:
    """A parameter's gradient is block ``index`` (of ``width``) of ``symbol`` along ``axis``."""

    symbol: Any
    axis: int
    index: int
    width: Any


@dataclass
class Schedule:
    """The rolled schedule of one derivation (see the module docstring).

    Symbols are the row-form symbols of the generic step, plus *hoisted*
    symbols (arrays computed before a loop), each of a *family* (``base``)
    at an offset from t (``offset``).
    """

    many_to_one: bool
    states: list[StateInfo]
    base: dict[Any, str]
    offset: dict[Any, int]
    role: dict[Any, str]
    index: dict[tuple[str, int], Any]
    params: dict[Any, str]
    batch: Any
    forward: list[Stmt]  # the forward statements of the step, as derived (for comments)
    forward_pre: list[Hoisted] = field(default_factory=list)
    forward_loop: list[Stmt] = field(default_factory=list)
    forward_post: list[Stmt] = field(default_factory=list)
    loss: Stmt | None = None
    backward_pre: list[Hoisted] = field(default_factory=list)
    backward_last: list[Stmt] = field(default_factory=list)
    backward_loop: list[Stmt] = field(default_factory=list)
    summed: list[Stmt] = field(default_factory=list)
    last_only: list[Stmt] = field(default_factory=list)
    looped: list[Stmt] = field(default_factory=list)  # contributions accumulated in the loop
    dx: Any = None
    initial_gradients: dict[str, Any] = field(default_factory=dict)
    alias: dict[Any, Any] = field(default_factory=dict)  # loop target -> hoisted array
    carried_forward: set[Any] = field(default_factory=set)
    carried_backward: set[Any] = field(default_factory=set)
    # fusion (symbptt.codegen.fusion): families stored as column blocks of a group array,
    # parameters concatenated once per call, parameter gradients that are blocks of one
    blocks: dict[str, Block] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    concats: list[Concat] = field(default_factory=list)
    splits: dict[str, Split] = field(default_factory=dict)
    fused: dict[str, list[Stmt]] = field(default_factory=dict)  # group -> its members' statements

    def is_step(self, symbol: Any) -> bool:
        return symbol in self.offset

    def step_symbols(self, expr: Any) -> set[Any]:
        """The per-step symbols ``expr`` reads."""
        if not isinstance(expr, sp.Basic):
            return set()
        return {s for s in expr.free_symbols if s in self.offset}

    def family(self, symbol: Any, offset: int) -> Any:
        """The symbol of ``symbol``'s family at ``offset`` (None when there is none)."""
        return self.index.get((self.role[symbol], offset))

    def is_state(self, symbol: Any) -> bool:
        return any(self.role[symbol] == self.role[s.now] for s in self.states)

    def is_adjoint(self, symbol: Any) -> bool:
        return self.role.get(symbol, "").startswith(_ADJOINT)


class Repeat(MatrixExpr):  # type: ignore[misc]
    """``[F, F, ..., F]``: ``count`` copies of ``F`` side by side (a broadcast operand).

    Only fused statements use it (``[δ^a, δ^b] = [dc, dc] ⊙ [K_a, K_b]``); the NumPy
    printer writes it as a broadcast over a third axis, never as a copy.
    """

    def __new__(cls, arg: Any, count: int) -> Repeat:
        return super().__new__(cls, arg, sp.Integer(count))  # type: ignore[no-any-return]

    @property
    def arg(self) -> Any:
        return self.args[0]

    @property
    def count(self) -> int:
        return int(self.args[1])

    @property
    def shape(self) -> tuple[Any, Any]:
        rows, cols = self.args[0].shape
        return rows, cols * self.args[1]


# ---------------------------------------------------------------------------- structure
def row_local(expr: Any, batch: Any) -> bool:
    """True when every row of ``expr`` depends only on the same row of what it reads.

    Then ``expr`` evaluated on arrays that stack the steps by rows is the stack
    of its per-step values.  A product that contracts over the examples (an
    inner size equal to the batch) or a softmax over the examples is not.
    """
    stack = [expr]
    while stack:
        node = stack.pop()
        if not isinstance(node, sp.Basic) or isinstance(node, sp.Lambda):
            continue
        if isinstance(node, sp.MatMul):
            _, mats = flatten_matmul(node)
            if any(a.shape[1] == batch for a in mats[:-1]):
                return False
            stack.extend(mats)
            continue
        if isinstance(node, (mexpr.Softmax, LogSumExp)) and node.axis == 0:
            return False
        if isinstance(node, sp.Transpose) and getattr(node.arg, "shape", (None,))[0] == batch:
            return False
        stack.extend(node.args)
    return True


def _hadamard_factors(expr: Any) -> tuple[Any, list[Any]]:
    """``(c, [F1, F2, ...])`` with ``expr == c F1 ⊙ F2 ⊙ ...`` (nested products flattened)."""
    coeff, body = mexpr.split_scale(expr)
    if not isinstance(body, sp.HadamardProduct):
        return coeff, [body]
    factors: list[Any] = []
    for arg in body.args:
        c, inner = _hadamard_factors(arg)
        coeff *= c
        factors += inner
    return coeff, factors


def _hadamard(coeff: Any, factors: list[Any]) -> Any:
    return mexpr.scale(coeff, mexpr.hadamard(*factors)) if factors else None


def _terms(expr: Any) -> list[Any]:
    if isinstance(expr, sp.MatAdd):
        out: list[Any] = []
        for arg in expr.args:
            out += _terms(arg)
        return out
    return [expr]


def _flatten(expr: Any) -> Any:
    """``expr`` with nested sums and elementwise products flattened (bottom-up)."""
    if not isinstance(expr, sp.Basic) or not expr.args or isinstance(expr, sp.Lambda):
        return expr
    if isinstance(expr, (sp.MatrixSymbol, sp.Symbol)):
        return expr
    args = [_flatten(arg) for arg in expr.args]
    if isinstance(expr, sp.MatAdd):
        return mexpr.add(*(t for arg in args for t in _terms(arg)))
    if isinstance(expr, sp.HadamardProduct):
        coeff = sp.Integer(1)
        factors: list[Any] = []
        for arg in args:
            c, inner = _hadamard_factors(arg)
            coeff *= c
            factors += inner
        return _hadamard(coeff, factors)
    if isinstance(expr, sp.MatMul):
        coeff = sp.Mul(*(a for a in args if not mexpr.is_matrix(a)))
        return mexpr.scale(coeff, mexpr.matmul(*(a for a in args if mexpr.is_matrix(a))))
    if tuple(args) == expr.args:
        return expr
    return expr.func(*args)


def _factor_common(expr: Any, recurrent: set[Any]) -> Any:
    """``F ⊙ (A + B)`` for ``F ⊙ A + F ⊙ B`` when F is recurrent and A + B is not.

    The factor that stays in the loop is taken out of a sum, so that the rest
    (made of stored values only) can be hoisted out of it.
    """
    terms = _terms(expr)
    if len(terms) < 2:
        return expr
    split = [_hadamard_factors(term) for term in terms]
    first = split[0][1]
    for candidate in first:
        if not (candidate.free_symbols & recurrent):
            continue
        if not all(candidate in factors for _, factors in split):
            continue
        rests = []
        for coeff, factors in split:
            rest = list(factors)
            rest.remove(candidate)
            rests.append(
                mexpr.scale(coeff, mexpr.hadamard(*rest) if rest else mexpr.ones(*candidate.shape))
            )
        remainder = mexpr.add(*rests)
        if remainder.free_symbols & recurrent:
            continue
        return mexpr.hadamard(candidate, remainder)
    return expr


def _reads(expr: Any) -> Counter[Any]:
    """How many times each symbol occurs in ``expr`` (as a tree)."""
    counts: Counter[Any] = Counter()
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, (sp.MatrixSymbol, sp.Symbol)):
            counts[node] += 1
            continue
        if isinstance(node, sp.Basic) and not isinstance(node, sp.Lambda):
            stack.extend(node.args)
    return counts


# ---------------------------------------------------------------------------- the builder
class _Builder:
    def __init__(self, d: Derivation) -> None:
        sf = d.step_form
        self.d = d
        self.t = sf.t
        self.rf = RowForm(sf.symbols)
        self.symbols = sf.symbols
        self.many_to_one = d.spec.mode == "many_to_one"
        base: dict[Any, str] = {}
        offset: dict[Any, int] = {}
        role: dict[Any, str] = {}
        index: dict[tuple[str, int], Any] = {}
        for symbol, (r, step) in self.rf.meta.items():
            if isinstance(step, sp.Basic) and step.free_symbols:
                k = int(step - self.t)
                index.setdefault((r, k), symbol)
                suffix = "_" + Symbols.step_name(step)
                name = str(symbol.name)
                if not name.endswith(suffix):
                    raise ValueError(f"symbol {name!r} does not end with its step {suffix!r}")
                base[symbol] = name[: -len(suffix)]
                offset[symbol] = k
                role[symbol] = r
        cell = sf.symbols.cell
        notation = sf.symbols.notation
        states = []
        graph_initials = d.graph.initials
        graph_rows = RowForm(d.graph.symbols)
        for state in cell.states:
            entry = notation.name_of(state.key)
            now, prev = index[(entry.role, 0)], index.get((entry.role, -1))
            if prev is None:  # a state nothing reads at t - 1 still carries its value
                prev = self.rf.symbol(sf.symbols.series(state.key, self.t - 1))
                base[prev], offset[prev], role[prev] = base[now], -1, entry.role
                index[(entry.role, -1)] = prev
            initial = graph_rows.symbol(graph_initials[state.key])
            states.append(StateInfo(state.key, now, prev, initial, state.key + "0"))
        self.s = Schedule(
            many_to_one=self.many_to_one,
            states=states,
            base=base,
            offset=offset,
            role=role,
            index=index,
            params={symbol: name for name, symbol in sf.symbols.params.items()},
            batch=self.rf.batch,
            forward=[],
        )
        self._names = set(base.values()) | set(self.s.params.values())

    # -- helpers -----------------------------------------------------------------------
    def stmts(self, assignments: Iterable[Any]) -> list[Stmt]:
        out = []
        for assignment in assignments:
            row = self.rf.assignment(assignment)
            expr = push_transposes(row.expr)
            out.append(Stmt(row.target, expr, assignment.kind, assignment.param))
        return out

    def fresh_name(self, wanted: str) -> str:
        return unused_name(wanted, self._names)

    def new_symbol(self, base: str, shape: tuple[Any, Any], offset: int = 0) -> Any:
        """A hoisted array's symbol (a new family ``base``)."""
        symbol = sp.MatrixSymbol(f"{base}@{offset}", *shape)
        role = "hoisted:" + base
        self.s.base[symbol], self.s.offset[symbol], self.s.role[symbol] = base, offset, role
        self.s.index[(role, offset)] = symbol
        return symbol

    def stackable(self, expr: Any, recurrent: set[Any]) -> int | None:
        """The offset at which ``expr`` can be computed for all steps, or None.

        0 when it reads per-step values at t (and states at t - 1, which are
        stored for all steps); 1 when it reads values at t + 1 only (it is then
        computed at t and read one step later).
        """
        s = self.s
        reads = s.step_symbols(expr)
        if not reads or reads & recurrent or atomic(expr):
            return None
        if not mexpr.is_matrix(expr) or expr.shape[0] != s.batch or not row_local(expr, s.batch):
            return None
        offsets = {s.offset[r] for r in reads}
        if offsets <= {0, -1} and all(s.offset[r] == 0 or s.is_state(r) for r in reads):
            return 0
        if offsets == {1} and all(s.family(r, 0) is not None for r in reads):
            return 1
        return None

    # -- hoisting ----------------------------------------------------------------------
    def hoist(
        self,
        expr: Any,
        recurrent: set[Any],
        out: list[Hoisted],
        source: Stmt,
        lookup_only: bool = False,
    ) -> Any:
        """``expr`` with its stackable parts replaced by hoisted arrays (added to ``out``).

        With ``lookup_only`` only parts hoisted before are replaced.
        """
        found = {h.expr: h for h in out}
        base = self.s.base.get(source.target, "tmp")

        def place(node: Any, wanted: str) -> Any:
            k = self.stackable(node, recurrent)
            if k is None:
                return None
            normal = node
            if k == 1:
                normal = node.xreplace({r: self.s.family(r, 0) for r in self.s.step_symbols(node)})
            hoisted = found.get(normal)
            if hoisted is None:
                if lookup_only:
                    return None
                symbol = self.new_symbol(self.fresh_name(wanted), node.shape)
                hoisted = Hoisted(symbol, normal, source)
                out.append(hoisted)
                found[normal] = hoisted
            if k == 0:
                return hoisted.symbol
            nxt = self.s.family(hoisted.symbol, 1)
            if nxt is None:
                nxt = self.new_symbol(self.s.base[hoisted.symbol], node.shape, 1)
            return nxt

        def walk(node: Any, top: bool) -> Any:
            if not isinstance(node, sp.Basic) or not mexpr.is_matrix(node):
                return node
            if isinstance(node, (sp.MatrixSymbol, sp.OneMatrix, sp.ZeroMatrix, sp.Identity)):
                return node
            if not (node.free_symbols & recurrent):
                whole = place(node, f"{base}_part")
                if whole is not None:
                    return whole
            if isinstance(node, sp.MatAdd):
                terms = _terms(node)
                fixed = [t for t in terms if not (t.free_symbols & recurrent)]
                moving = [t for t in terms if t.free_symbols & recurrent]
                if fixed and moving:
                    group = place(mexpr.add(*fixed), f"{base}_pre" if not top else f"{base}_part")
                    if group is not None:
                        return mexpr.add(group, *(walk(t, False) for t in moving))
                return mexpr.add(*(walk(t, False) for t in terms))
            if isinstance(node, sp.HadamardProduct):
                coeff, factors = _hadamard_factors(node)
                fixed = [f for f in factors if not (f.free_symbols & recurrent)]
                moving = [f for f in factors if f.free_symbols & recurrent]
                if fixed and moving and (len(fixed) > 1 or not atomic(fixed[0])):
                    wanted = self.factor_name(source, moving[0] if len(moving) == 1 else None)
                    group = place(mexpr.hadamard(*fixed), wanted)
                    if group is not None:
                        moved = [walk(f, False) for f in moving]
                        return mexpr.scale(coeff, mexpr.hadamard(*moved, group))
                return mexpr.scale(coeff, mexpr.hadamard(*(walk(f, False) for f in factors)))
            if isinstance(node, sp.MatMul):
                coeff, mats = flatten_matmul(node)
                return mexpr.scale(coeff, mexpr.matmul(*(walk(m, False) for m in mats)))
            if isinstance(node, ElementwiseApplyFunction):
                return node.func(node.function, walk(node.expr, False))
            if isinstance(node, sp.HadamardPower):
                return node.func(walk(node.base, False), node.exp)
            return node

        return walk(expr, True)

    def factor_name(self, stmt: Stmt, moving: Any) -> str:
        """``dQ_dP``: the hoisted factor of ``dP = dQ ⊙ factor`` (P's adjoint from Q's)."""
        s = self.s
        target_role = s.role.get(stmt.target, "")
        if isinstance(moving, sp.MatrixSymbol) and s.is_adjoint(moving):
            primal = self._primal_name(target_role)
            source = self._primal_name(s.role[moving])
            if primal and source:
                return f"d{source}_d{primal}"
        return f"{s.base.get(stmt.target, 'tmp')}_factor"

    def _primal_name(self, role: str) -> str:
        s = self.s
        for prefix, suffix in (("pre_adjoint_", "_pre"), ("adjoint_", "")):
            if role.startswith(prefix):
                primal = s.index.get((role[len(prefix) :], 0))
                return s.base[primal] + suffix if primal is not None else ""
        return ""

    def hoist_statement(
        self, stmt: Stmt, recurrent: set[Any], out: list[Hoisted], lookup_only: bool = False
    ) -> Stmt:
        """``stmt`` with hoisted parts; a sum whose stackable terms are hoisted whole is
        stored in the hoisted array (the loop accumulates into it)."""
        expr = stmt.expr
        base = self.s.base.get(stmt.target, "tmp")
        if isinstance(expr, sp.MatAdd):
            terms = _terms(expr)
            fixed = [t for t in terms if not (t.free_symbols & recurrent)]
            moving = [t for t in terms if t.free_symbols & recurrent]
            if fixed and moving and not lookup_only and stmt.target not in self.s.alias:
                group = mexpr.add(*fixed)
                if self.stackable(group, recurrent) == 0 and not self.s.is_state(stmt.target):
                    symbol = self.new_symbol(base, group.shape)  # the target's own storage
                    hoisted = Hoisted(symbol, group, stmt, stmt.target)
                    out.append(hoisted)
                    self.s.alias[stmt.target] = symbol
                    rest = [self.hoist(t, recurrent, out, stmt) for t in moving]
                    return Stmt(stmt.target, mexpr.add(symbol, *rest), stmt.kind, stmt.param)
        new = self.hoist(expr, recurrent, out, stmt, lookup_only)
        return Stmt(stmt.target, new, stmt.kind, stmt.param)

    # -- forward -----------------------------------------------------------------------
    def build_forward(self, forward: list[Stmt], last_forward: list[Stmt] | None) -> None:
        s = self.s
        s.forward = list(last_forward or forward)
        carried = {state.prev for state in s.states}
        s.carried_forward = carried
        defined = {st.target: st for st in forward}
        # what the states at t need, in the order of the equations
        needed: set[Any] = set()
        stack = [state.now for state in s.states]
        while stack:
            symbol = stack.pop()
            if symbol in needed or symbol not in defined:
                continue
            needed.add(symbol)
            stack.extend(r for r in s.step_symbols(defined[symbol].expr) if s.offset[r] == 0)
        recurrent = set(carried)
        for st in forward:
            if st.target not in needed:
                continue
            reads = s.step_symbols(st.expr)
            if reads & recurrent or self.stackable(st.expr, recurrent) is None:
                recurrent.add(st.target)
        for st in forward:
            if st.target not in needed:
                continue
            if st.target not in recurrent:
                s.forward_pre.append(Hoisted(st.target, st.expr, st))
                continue
            s.forward_loop.append(self.hoist_statement(st, recurrent, s.forward_pre))
        post = last_forward if last_forward is not None else forward
        for st in post:
            if st.target in needed:
                continue
            if st.kind == "loss":
                s.loss = st
            else:
                s.forward_post.append(st)
        if s.loss is None:
            raise ValueError("the step form has no loss")

    # -- backward ----------------------------------------------------------------------
    def without_carried(self, statements: list[Stmt]) -> list[Stmt]:
        """The body with every carried adjoint zero: the last step of a many-to-many model."""
        zeros = {c: sp.ZeroMatrix(*c.shape) for c in self.s.carried_backward}
        out = []
        for st in statements:
            expr = mexpr.substitute(st.expr, zeros)
            if mexpr.is_zero(expr):
                zeros[st.target] = sp.ZeroMatrix(*st.target.shape)
                continue
            out.append(Stmt(st.target, expr, st.kind, st.param))
        return out

    def rewrite(
        self, statements: list[Stmt], recurrent: set[Any], extra_reads: Counter[Any]
    ) -> list[Stmt]:
        """Flatten, take common factors out of sums, write single-use products into
        their one reader (see the module docstring)."""
        out = [
            Stmt(st.target, _factor_common(_flatten(st.expr), recurrent), st.kind, st.param)
            for st in statements
        ]
        changed = True
        while changed:
            changed = False
            counts = Counter(extra_reads)
            for st in out:
                counts.update(_reads(st.expr))
            by_target = {st.target: i for i, st in enumerate(out)}
            for i, st in enumerate(out):
                if not isinstance(st.expr, sp.HadamardProduct) and not isinstance(
                    mexpr.split_scale(st.expr)[1], sp.HadamardProduct
                ):
                    continue
                coeff, factors = _hadamard_factors(st.expr)
                for factor in factors:
                    j = by_target.get(factor)
                    if j is None or j >= i or counts[factor] != 1:
                        continue
                    inner = out[j].expr
                    if not isinstance(mexpr.split_scale(inner)[1], sp.HadamardProduct):
                        continue
                    c2, inner_factors = _hadamard_factors(inner)
                    rest = list(factors)
                    rest.remove(factor)
                    out[i] = Stmt(
                        st.target, _hadamard(coeff * c2, inner_factors + rest), st.kind, st.param
                    )
                    del out[j]
                    changed = True
                    break
                if changed:
                    break
        return out

    def build_backward(
        self, body: list[Stmt], last: list[Stmt] | None, dx: Any, initial: Mapping[str, Any]
    ) -> None:
        s = self.s
        carried = {
            sym
            for st in body
            for sym in s.step_symbols(st.expr)
            if s.offset[sym] == 1 and s.is_adjoint(sym)
        }
        s.carried_backward = carried
        if last is None:
            last = self.without_carried(body)
        adjoints = [st for st in body if st.kind != "contribution"]
        contributions = [st for st in body if st.kind == "contribution"]
        last_adjoints = [st for st in last if st.kind != "contribution"]
        last_contributions = [st for st in last if st.kind == "contribution"]
        # what else reads the adjoints: contributions, dX and the initial states' gradients
        extra: Counter[Any] = Counter()
        for expr in [dx, *initial.values()] + [st.expr for st in contributions]:
            if expr is not None:
                extra.update(_reads(expr))
        last_extra: Counter[Any] = Counter(extra)
        for st in last_contributions:
            last_extra.update(_reads(st.expr))
        recurrent = set(carried)
        for st in adjoints:
            if s.step_symbols(st.expr) & recurrent or self.stackable(st.expr, recurrent) is None:
                recurrent.add(st.target)
        pre = [st for st in adjoints if st.target not in recurrent]
        loop = self.rewrite([st for st in adjoints if st.target in recurrent], recurrent, extra)
        for st in pre:
            s.backward_pre.append(Hoisted(st.target, st.expr, st))
        pre_values = {st.target: st.expr for st in pre}
        for st in loop:
            s.backward_loop.append(self.hoist_statement(st, recurrent, s.backward_pre))
        # the last step: what was computed for all steps is not computed again
        last_adjoints = [st for st in last_adjoints if pre_values.get(st.target) != st.expr]
        last_recurrent = recurrent | {st.target for st in last_adjoints}
        for st in self.rewrite(last_adjoints, last_recurrent, last_extra):
            new = self.hoist_statement(st, recurrent, s.backward_pre, lookup_only=True)
            if s.alias.get(st.target) == new.expr:
                continue  # its value is the hoisted array's, already there
            s.backward_last.append(new)
        # contributions: summed over the steps by one product when they can be
        in_last = {st.param: st for st in last_contributions}
        for st in contributions:
            other = in_last.pop(st.param, None)
            if other is not None and other.expr == st.expr and self.summable(st.expr):
                s.summed.append(st)
            else:
                s.looped.append(st)
                if other is not None:
                    s.last_only.append(other)
        s.last_only += list(in_last.values())
        s.dx = dx
        s.initial_gradients = dict(initial)

    def summable(self, expr: Any) -> bool:
        """A contribution whose sum over t is the same expression of the stacked arrays.

        Each term contracts over the examples (``A^T B`` or a sum over the rows)
        of row-local factors at step t (or states at t - 1).
        """
        s = self.s
        for term in _terms(expr):
            _, mats = flatten_matmul(term)
            if len(mats) < 2 or mats[0].shape[1] != s.batch:
                return False
            left = transpose(mats[0])
            rest = mexpr.matmul(*mats[1:])
            for part in (left, rest):
                reads = s.step_symbols(part)
                if any(
                    s.offset[r] == 1 or (s.offset[r] == -1 and not s.is_state(r)) for r in reads
                ):
                    return False
                if not isinstance(part, sp.OneMatrix) and not row_local(part, s.batch):
                    return False
        return True


# ---------------------------------------------------------------------------- sharing
def _subexpressions(expr: Any) -> list[Any]:
    """Every subexpression of ``expr`` (preorder, lambdas left out)."""
    out: list[Any] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        if not isinstance(node, sp.Basic) or isinstance(node, sp.Lambda):
            continue
        out.append(node)
        stack.extend(reversed(node.args))
    return out


def _replace_everywhere(s: Schedule, mapping: Mapping[Any, Any], backward_only: bool) -> None:
    """``mapping`` substituted in every statement of the backward pass (and the forward's)."""

    def sub(expr: Any) -> Any:
        return expr.xreplace(mapping) if isinstance(expr, sp.Basic) else expr

    def stmts(items: list[Stmt]) -> list[Stmt]:
        return [Stmt(st.target, sub(st.expr), st.kind, st.param) for st in items]

    s.backward_pre = [Hoisted(h.symbol, sub(h.expr), h.source, h.alias) for h in s.backward_pre]
    s.backward_loop = stmts(s.backward_loop)
    s.backward_last = stmts(s.backward_last)
    s.summed, s.last_only, s.looped = stmts(s.summed), stmts(s.last_only), stmts(s.looped)
    s.dx = sub(s.dx)
    s.initial_gradients = {k: sub(v) for k, v in s.initial_gradients.items()}
    if not backward_only:
        s.forward_post = stmts(s.forward_post)


def _name_of(builder: _Builder, expr: Any, fallback: str) -> str:
    """A name for a stored subexpression: ``tanh_c`` for tanh(c_t), ``r_h`` for r_t ⊙ h_(t-1),
    ``delta_g_W_hh`` for delta_g_t @ W_hh."""
    s = builder.s
    parts: list[str] = []
    if isinstance(expr, ElementwiseApplyFunction) and expr.expr in s.base:
        from ..expr.functions import activation_for

        parts = [activation_for(expr.function).name, s.base[expr.expr]]
    elif isinstance(expr, sp.HadamardProduct) and all(a in s.base for a in expr.args):
        parts = [s.base[a] for a in expr.args]
    elif isinstance(expr, sp.MatMul):
        _, mats = flatten_matmul(expr)
        names = [
            s.base.get(m, s.params.get(m, s.params.get(getattr(m, "arg", None), ""))) for m in mats
        ]
        if all(names):
            parts = names
    return builder.fresh_name("_".join(parts) if parts else fallback)


def share_forward(builder: _Builder) -> None:
    """Store what the forward loop computes anyway and the backward pass needs again.

    A subexpression of a forward loop statement that a backward expression reads too
    (an LSTM's tanh(c_t), a GRU's r_t ⊙ h_(t-1)) becomes a stored quantity of its own.
    """
    s = builder.s
    wanted: set[Any] = set()
    exprs = [h.expr for h in s.backward_pre] + [st.expr for st in s.backward_loop]
    exprs += [st.expr for st in s.backward_last + s.summed + s.last_only + s.looped]
    exprs += [e for e in [s.dx, *s.initial_gradients.values()] if e is not None]
    for expr in exprs:
        for node in _subexpressions(expr):
            costly = isinstance(node, (ElementwiseApplyFunction, sp.HadamardProduct)) or (
                isinstance(node, sp.MatMul) and len(flatten_matmul(node)[1]) > 1
            )
            if costly and not atomic(node) and s.step_symbols(node):
                wanted.add(node)
    out: list[Stmt] = []
    mapping: dict[Any, Any] = {}
    for st in s.forward_loop:
        found = [
            node
            for node in _subexpressions(st.expr)[1:]
            if node in wanted
            and node not in mapping
            and node.shape[0] == s.batch
            and all(s.offset[r] <= 0 for r in s.step_symbols(node))
        ]
        for node in found:
            if any(node in _subexpressions(other) for other in found if other is not node):
                continue  # the largest shared part only
            symbol = builder.new_symbol(
                _name_of(builder, node, s.base[st.target] + "_part"), node.shape
            )
            s.role[symbol] = "stored:" + s.base[symbol]
            out.append(Stmt(symbol, node, "stored"))
            mapping[node] = symbol
        out.append(Stmt(st.target, st.expr.xreplace(mapping), st.kind, st.param))
    s.forward_loop = out
    if mapping:
        _replace_everywhere(s, mapping, backward_only=False)


def share_carried(builder: _Builder) -> None:
    """Compute once what the backward loop reads at t + 1 and computes again at t.

    A product of adjoints carried from t + 1 (a GRU's δg_(t+1) W_hh, in dh_t) whose
    step-t version is computed in the same loop (in δr_t) is stored at step t and
    read from there one step later.
    """
    s = builder.s
    loop = s.backward_loop
    targets = {st.target for st in loop}
    for st in list(loop):
        for node in _subexpressions(st.expr):
            if not isinstance(node, sp.MatMul) or atomic(node):
                continue
            reads = s.step_symbols(node)
            if not reads or any(s.offset[r] != 1 or not s.is_adjoint(r) for r in reads):
                continue
            now = node.xreplace({r: s.family(r, 0) for r in reads})
            users = [
                i for i, other in enumerate(s.backward_loop) if now in _subexpressions(other.expr)
            ]
            if not users or any(s.family(r, 0) not in targets for r in reads):
                continue
            name = _name_of(builder, now, s.base[st.target] + "_part")
            symbol = builder.new_symbol(name, now.shape)
            nxt = builder.new_symbol(name, now.shape, 1)
            s.role[symbol] = s.role[nxt] = "adjoint_shared:" + name
            s.index[(s.role[symbol], 0)], s.index[(s.role[nxt], 1)] = symbol, nxt
            new = Stmt(symbol, now, "shared")
            for name_list in ("backward_loop", "backward_last"):
                items = getattr(s, name_list)
                replaced = [
                    Stmt(x.target, x.expr.xreplace({now: symbol, node: nxt}), x.kind, x.param)
                    for x in items
                ]
                defined = [i for i, x in enumerate(replaced) if x.target in now.free_symbols]
                if name_list == "backward_last" and not defined:
                    continue
                at = (max(defined) + 1) if defined else 0
                replaced.insert(at, new)
                setattr(s, name_list, replaced)
            s.carried_backward.add(nxt)
            return share_carried(builder)


def _generic_input_gradients(d: Derivation, rf: RowForm) -> tuple[Any, dict[str, Any]]:
    """dL/dx_t and the parts of dL/ds_{t-1} that step t gives, in step-t adjoints (row form).

    Reverse mode over one step's cell equations, each seeded with its target's
    own (whole) adjoint, so that the parts come out in the named adjoints of
    step t.  At the first step the second gives the initial states' gradients.
    """
    sf = d.step_form
    symbols = Symbols(sf.symbols.spec, sf.symbols.notation)
    t = sf.t
    forward, _, _ = build_cell(symbols, t, with_output=False)
    cell = symbols.cell
    x = symbols.series("input", t)
    previous = {state.key: symbols.series(state.key, t - 1) for state in cell.states}
    seeds = {}
    for assignment in forward:
        role, step = symbols.meta[assignment.target]
        seeds[assignment.target] = symbols.adjoint(role, step)
    constants = frozenset(a.target for a in forward)
    _, parts = backprop(forward, seeds, {x, *previous.values()}, symbols, constants)

    def total(symbol: Any) -> Any:
        found = parts.get(symbol, [])
        return rf.expr(mexpr.add(*(p for _, p in found))) if found else None

    def row(value: Any) -> Any:
        if value is None:
            return None
        return push_transposes(transpose(value) if rf.column else value)

    return row(total(x)), {key: row(total(symbol)) for key, symbol in previous.items()}


def build_schedule(d: Derivation, fuse: bool = True) -> Schedule:
    """The rolled schedule of ``d`` (whose spec has symbolic sizes); ``fuse``: with
    :mod:`symbptt.codegen.fusion`."""
    sf = d.step_form
    builder = _Builder(d)
    forward = builder.stmts(sf.forward)
    last_forward = builder.stmts(sf.last_forward) if sf.last_forward else None
    builder.build_forward(forward, last_forward)
    body = builder.stmts(sf.backward)
    last = builder.stmts(sf.last_backward) if sf.last_backward else None
    dx, initial = _generic_input_gradients(d, builder.rf)
    defined = {st.target for st in body} | {st.target for st in last or []}
    zeros = {
        sym: sp.ZeroMatrix(*sym.shape)
        for expr in [dx, *initial.values()]
        if expr is not None
        for sym in builder.s.step_symbols(expr)
        if builder.s.is_adjoint(sym) and sym not in defined
    }
    if zeros:
        dx = mexpr.substitute(dx, zeros) if dx is not None else None
        initial = {
            k: mexpr.substitute(v, zeros) if v is not None else None for k, v in initial.items()
        }
    builder.build_backward(body, last, dx, initial)
    share_forward(builder)
    share_carried(builder)
    if fuse:
        from .fusion import fuse as fuse_blocks

        fuse_blocks(builder)
    return builder.s
