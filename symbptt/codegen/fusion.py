"""Fusion: parallel quantities of a step as column blocks of one array, one product for all.

Found by structure, for any cell (no role or cell shape is recognised).  A
forward loop statement ``q_k = f_k(H_k + A @ P_k + E_k)``, whose argument has
one part ``H_k`` computed for all steps before the loop (hoisted), one product
of an operand ``A`` with a parameter ``P_k`` (``W.T`` in the row form) and
perhaps more terms ``E_k``, is a *member*; the members of the same units form a
*group* (an LSTM's four gates, a GRU's three).  Then:

* the members are stored as column blocks of one array (ordered so that
  members of one product and of one function are adjacent);
* the hoisted parts are one product with the parameters concatenated once per
  call (``x_all @ [W_xi.T, W_xf.T, ...] + [b_i.T, ...]``) when they share their
  structure, else each is written into its block;
* members with the same operand ``A`` make one product in the loop
  (``h_prev @ [W_hi.T, W_hf.T, ...]``), added to their blocks at once, and a
  run of members with the same function is applied in one call;
* in the backward pass the members' argument adjoints (δ^q) are blocks of one
  array in the same order, so that ``Σ_k δ^k_(t+1) @ W_k`` is one product with
  the concatenation, and so are dX, the initial states' gradients and the
  parameter gradients (``δ_all.T @ x_all``: every W_x* at once, each its block).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from ..expr import functions, mexpr
from .numpy_printer import flatten_matmul
from .rowform import transpose
from .schedule import (
    Block,
    Concat,
    Group,
    Hoisted,
    Repeat,
    Schedule,
    Split,
    Stmt,
    _Builder,
    _reads,
    _subexpressions,
    _terms,
)

__all__ = ["fuse"]

#: Orders of more members than this are not searched (the cell's order is kept).
MAX_SEARCH = 6
#: The longest name of a group array (longer joined names fall back to a counted one).
MAX_GROUP_NAME = 12


@dataclass(frozen=True)
class _Member:
    stmt: Stmt
    position: int
    function: Any  # the Lambda applied elementwise
    hoisted: Hoisted
    operand: Any  # A
    leaf: Any  # P_k: a parameter or its transpose
    extra: tuple[Any, ...]  # E_k


@dataclass(frozen=True)
class _Product:
    """Members ``start .. stop - 1`` (in block order) share ``operand @ leaf_k``."""

    operand: Any
    start: int
    stop: int
    leaves: tuple[Any, ...]
    concat: Concat


def _param(s: Schedule, leaf: Any) -> Any:
    """The parameter of a leaf ``W`` or ``W.T`` (None when it is not one)."""
    if leaf in s.params:
        return leaf
    if isinstance(leaf, sp.Transpose) and leaf.arg in s.params:
        return leaf.arg
    return None


def _joined(names: list[str]) -> str:
    """``W_x_ifoc`` for W_xi, W_xf, W_xo, W_xc; ``o_i_f_g`` for o, i, f, g."""
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    rests = [name[len(prefix) :] for name in names]
    if not all(rests):
        return "_".join(names)
    stem = prefix.rstrip("_")
    glue = "" if all(len(r) == 1 for r in rests) else "_"
    body = glue.join(rests)
    return f"{stem}_{body}" if stem else body


class _Fuser:
    def __init__(self, builder: _Builder) -> None:
        self.b = builder
        self.s = builder.s

    # -- helpers ----------------------------------------------------------------------
    def concat(self, parts: tuple[Any, ...], axis: int) -> Concat:
        """The concatenation of ``parts`` (made once per call; reused when made before)."""
        for c in self.s.concats:
            if c.parts == parts and c.axis == axis:
                return c
        names = [self.s.params[_param(self.s, p)] for p in parts]
        name = self.b.fresh_name(_joined(names))
        rows = sum((p.shape[0] for p in parts), sp.Integer(0)) if axis == 0 else parts[0].shape[0]
        cols = sum((p.shape[1] for p in parts), sp.Integer(0)) if axis == 1 else parts[0].shape[1]
        c = Concat(sp.MatrixSymbol(name, rows, cols), parts, axis)
        self.s.concats.append(c)
        return c

    def short_name(self, wanted: str, fallback: str) -> str:
        """``wanted`` if it is short (the lines that name a group stay within the width)."""
        return self.b.fresh_name(wanted if len(wanted) <= MAX_GROUP_NAME else fallback)

    def block_symbol(self, group: str, start: int, stop: int, offset: int, width: Any) -> Any:
        """The family of blocks ``start .. stop - 1`` of ``group`` at ``offset``."""
        s = self.s
        count = s.groups[group].count
        base = group if (start, stop) == (0, count) else f"{group}_{start}_{stop}"
        symbol = s.index.get(("group:" + base, offset))
        if symbol is None:
            symbol = self.b.new_symbol(base, (s.batch, (stop - start) * width), offset)
            s.role[symbol] = "group:" + base
            s.index[("group:" + base, offset)] = symbol
            s.blocks[base] = Block(group, start, stop)
        return symbol

    # -- members -------------------------------------------------------------------------
    def member(
        self, st: Stmt, position: int, hoisted: dict[Any, Hoisted], reads: Counter[Any]
    ) -> _Member | None:
        s = self.s
        if not isinstance(st.expr, ElementwiseApplyFunction) or st.target in s.alias:
            return None
        if s.is_state(st.target) or st.target.shape[0] != s.batch:
            return None
        terms = _terms(st.expr.expr)
        parts = [t for t in terms if t in hoisted and hoisted[t].alias is None and reads[t] == 1]
        products = []
        for term in terms:
            if isinstance(term, sp.MatMul):
                coeff, mats = flatten_matmul(term)
                if coeff == 1 and len(mats) == 2 and _param(s, mats[1]) is not None:
                    products.append((term, mats[0], mats[1]))
        if len(parts) != 1 or len(products) != 1:
            return None
        term, operand, leaf = products[0]
        extra = tuple(t for t in terms if t is not parts[0] and t is not term)
        return _Member(st, position, st.expr.function, hoisted[parts[0]], operand, leaf, extra)

    def order(self, members: list[_Member]) -> list[_Member]:
        """Members of one product, then of one function, adjacent.

        The fewest runs of equal operands, then of equal functions; ties: the cell's order.
        """
        if len(members) > MAX_SEARCH:
            return members

        def runs(keys: list[Any]) -> int:
            return 1 + sum(1 for a, b in itertools.pairwise(keys) if a != b)

        factors = [self.factor(m) for m in members]
        best: tuple[Any, ...] | None = None
        chosen = members
        for order in itertools.permutations(range(len(members))):
            ms = [members[i] for i in order]
            fs = [factors[i] for i in order]
            shared = runs([m.function for m in ms]) + runs(fs)
            cost = (runs([m.operand for m in ms]), shared, order)
            if best is None or cost < best:
                best, chosen = cost, ms
        return chosen

    def adjoint_of(self, target: Any) -> Any:
        """The argument's adjoint (δ^q) of a member ``q = f(argument)``, or None."""
        s = self.s
        return s.index.get(("pre_adjoint_" + s.role[target], 0))

    def factor(self, m: _Member) -> Any:
        """``F`` of the member's ``δ^q = F ⊙ K`` in the backward loop (K hoisted), or None."""
        split = self.split(self.adjoint_of(m.stmt.target))
        return split[0] if split is not None else None

    def split(self, adjoint: Any) -> tuple[Any, Any] | None:
        """``(F, K)`` when the loop computes ``adjoint = F ⊙ K`` with K a hoisted array."""
        s = self.s
        hoisted = {h.symbol for h in s.backward_pre if h.alias is None}
        for st in s.backward_loop:
            if st.target != adjoint or not isinstance(st.expr, sp.HadamardProduct):
                continue
            fixed = [f for f in st.expr.args if f in hoisted]
            moving = [f for f in st.expr.args if f not in hoisted]
            if len(fixed) == 1 and len(moving) == 1:
                return moving[0], fixed[0]
        return None

    # -- the forward pass -----------------------------------------------------------------
    def fuse_forward(self) -> list[tuple[str, list[_Member], list[_Product]]]:
        s = self.s
        hoisted = {h.symbol: h for h in s.forward_pre}
        reads: Counter[Any] = Counter()
        for st in s.forward_loop + s.forward_post:
            reads.update(_reads(st.expr))
        for h in s.forward_pre:
            reads.update(_reads(h.expr))
        found = [
            m
            for i, st in enumerate(s.forward_loop)
            if (m := self.member(st, i, hoisted, reads)) is not None
        ]
        by_units: dict[Any, list[_Member]] = {}
        for m in found:
            by_units.setdefault(m.stmt.target.shape[1], []).append(m)
        done = []
        for width, members in by_units.items():
            if len(members) < 2:
                continue
            members = self.order(members)
            done.append(self.fuse_group(members, width))
        return done

    def fuse_group(
        self, members: list[_Member], width: Any
    ) -> tuple[str, list[_Member], list[_Product]]:
        s = self.s
        name = self.short_name(_joined([s.base[m.stmt.target] for m in members]), "gates")
        count = len(members)
        s.groups[name] = Group(name, width, count, "forward")
        for k, m in enumerate(members):
            s.blocks[s.base[m.stmt.target]] = Block(name, k, k + 1)
        whole = self.block_symbol(name, 0, count, 0, width)
        products: list[_Product] = []
        # the hoisted parts: one product for all when they share their structure
        fused = self.fused_hoist(members)
        first = min(s.forward_pre.index(m.hoisted) for m in members)
        rest = [h for h in s.forward_pre if all(h is not m.hoisted for m in members)]
        if fused is not None:
            expr, hoisted_products = fused
            products += hoisted_products
            new = [Hoisted(whole, expr, members[0].stmt)]
        else:
            new = []
            for k, m in enumerate(members):
                s.blocks[s.base[m.hoisted.symbol]] = Block(name, k, k + 1)
                new.append(m.hoisted)
        s.forward_pre = rest[:first] + new + rest[first:]
        # the loop: one product per operand, one call per run of one function
        runs: list[tuple[int, int]] = []
        start = 0
        for k in range(1, count + 1):
            if k == count or members[k].operand != members[start].operand:
                runs.append((start, k))
                start = k
        loop_products = []
        for a, b in runs:
            leaves = tuple(m.leaf for m in members[a:b])
            concat = self.concat(leaves, 1)
            product = _Product(members[a].operand, a, b, leaves, concat)
            loop_products.append(product)
            products.append(product)
        position = {id(m): m.position for m in members}
        statements = list(s.forward_loop)
        member_at = {m.position: (k, m) for k, m in enumerate(members)}
        applies = self.function_runs(members, statements)
        out: list[Stmt] = []

        def target_of(a: int, b: int) -> Any:  # one member: its own symbol (its own view)
            if b - a == 1:
                return members[a].stmt.target
            return self.block_symbol(name, a, b, 0, width)

        for i, st in enumerate(statements):
            for product in loop_products:
                if min(position[id(m)] for m in members[product.start : product.stop]) == i:
                    target = target_of(product.start, product.stop)
                    expr = mexpr.matmul(product.operand, product.concat.symbol)
                    out.append(Stmt(target, expr, "accumulate"))
            if i not in member_at:
                out.append(st)
                continue
            k, m = member_at[i]
            if m.extra:
                out.append(Stmt(m.stmt.target, mexpr.add(*m.extra), "accumulate"))
            for a, b in applies:
                if max(position[id(x)] for x in members[a:b]) == i:
                    target = target_of(a, b)
                    out.append(Stmt(target, functions.Apply(m.function, target), "apply"))
        s.forward_loop = out
        s.fused[name] = [m.stmt for m in members]
        return name, members, products

    def function_runs(
        self, members: list[_Member], statements: list[Stmt]
    ) -> list[tuple[int, int]]:
        """Runs of adjacent members with one function (none read between their statements)."""
        runs: list[tuple[int, int]] = []
        start = 0
        for k in range(1, len(members) + 1):
            same = k < len(members) and members[k].function == members[start].function
            if same:
                lo = min(m.position for m in members[start : k + 1])
                hi = max(m.position for m in members[start : k + 1])
                targets = {m.stmt.target for m in members[start : k + 1]}
                between = [st for st in statements[lo + 1 : hi] if st.target not in targets]
                if any(st.expr.free_symbols & targets for st in between):
                    same = False
            if not same:
                runs.append((start, k))
                start = k
        return runs

    def fused_hoist(self, members: list[_Member]) -> tuple[Any, list[_Product]] | None:
        """``x @ [P_1, P_2, ...] + 1 @ [b_1.T, ...]``: the hoisted parts as one expression."""
        s = self.s
        layouts: list[dict[Any, Any]] = []
        for m in members:
            terms: dict[Any, Any] = {}
            for term in _terms(m.hoisted.expr):
                if not isinstance(term, sp.MatMul):
                    return None
                coeff, mats = flatten_matmul(term)
                if coeff != 1 or len(mats) < 2 or _param(s, mats[-1]) is None:
                    return None
                left = mexpr.matmul(*mats[:-1])
                if left in terms:
                    return None
                terms[left] = mats[-1]
            layouts.append(terms)
        if any(set(t) != set(layouts[0]) for t in layouts):
            return None
        fused_terms = []
        products = []
        for left in layouts[0]:
            leaves = tuple(t[left] for t in layouts)
            concat = self.concat(leaves, 1)
            fused_terms.append(mexpr.matmul(left, concat.symbol))
            products.append(_Product(left, 0, len(members), leaves, concat))
        return mexpr.add(*fused_terms), products

    # -- the backward pass ------------------------------------------------------------------
    def fuse_backward(self, name: str, members: list[_Member], products: list[_Product]) -> None:
        s = self.s
        group = s.groups[name]
        adjoints = []
        for m in members:
            symbol = s.index.get(("pre_adjoint_" + s.role[m.stmt.target], 0))
            if symbol is None or all(st.target != symbol for st in s.backward_loop):
                return
            adjoints.append(symbol)
        dname = self.short_name(f"delta_{name}", "deltas")
        s.groups[dname] = Group(dname, group.width, group.count, "backward")
        for k, a in enumerate(adjoints):
            s.blocks[s.base[a]] = Block(dname, k, k + 1)
        # Σ_k δ^k @ P_k^T: one product with the concatenation, wherever it occurs
        mapping: dict[Any, Any] = {}

        def fuse_sums(expr: Any) -> Any:
            if not isinstance(expr, sp.Basic):
                return expr
            for node in _subexpressions(expr):
                if not isinstance(node, sp.MatAdd):
                    continue
                terms = _terms(node)
                for product in products:
                    if product.stop - product.start < 2:
                        continue
                    for offset in (-1, 0, 1):
                        wanted = []
                        members_run = range(product.start, product.stop)
                        for k, leaf in zip(members_run, product.leaves, strict=True):
                            adjoint = s.family(adjoints[k], offset)
                            term = (
                                None if adjoint is None else mexpr.matmul(adjoint, transpose(leaf))
                            )
                            wanted.append(term)
                        if None in wanted or not all(w in terms for w in wanted):
                            continue
                        run = self.block_symbol(
                            dname, product.start, product.stop, offset, group.width
                        )
                        fused = mexpr.matmul(run, sp.Transpose(product.concat.symbol))
                        kept = [t for t in terms if t not in wanted]
                        new = mexpr.add(fused, *kept)
                        return fuse_sums(expr.xreplace({node: new}))
            return expr

        def stmts(items: list[Stmt]) -> list[Stmt]:
            return [Stmt(st.target, fuse_sums(st.expr), st.kind, st.param) for st in items]

        s.backward_loop = stmts(s.backward_loop)
        s.backward_last = stmts(s.backward_last)
        s.dx = fuse_sums(s.dx)
        s.initial_gradients = {k: fuse_sums(v) for k, v in s.initial_gradients.items()}
        del mapping
        # the parameter gradients of each product: one product over the stacked steps
        summed = list(s.summed)
        for product in products:
            if product.stop - product.start < 2:
                continue
            params = [s.params[_param(s, leaf)] for leaf in product.leaves]
            found = {st.param: st for st in summed if st.param in params}
            if set(found) != set(params):
                continue
            first = adjoints[product.start]
            reference = found[params[0]].expr
            if any(
                found[p].expr != reference.xreplace({first: adjoints[k]})
                for k, p in zip(range(product.start, product.stop), params, strict=True)
            ):
                continue
            run = self.block_symbol(dname, product.start, product.stop, 0, group.width)
            fused = reference.xreplace({first: run})
            rows, cols = reference.shape
            axis = 0 if fused.shape[0] != rows else 1
            if fused.shape[axis] != (product.stop - product.start) * (rows if axis == 0 else cols):
                continue
            symbol = sp.MatrixSymbol("d" + str(product.concat.symbol.name), *fused.shape)
            at = min(summed.index(found[p]) for p in params)
            summed = [st for st in summed if st.param not in params]
            summed.insert(at, Stmt(symbol, fused, "contribution"))
            width = rows if axis == 0 else cols
            for k, p in enumerate(params):
                s.splits[p] = Split(symbol, axis, k, width)
        s.summed = summed
        self.fuse_factors(dname, adjoints)

    def fuse_factors(self, dname: str, adjoints: list[Any]) -> None:
        """``[δ^a, δ^b] = Repeat(F) ⊙ [K_a, K_b]``: one call for adjoints sharing F.

        Their hoisted factors K become blocks of one array, in the adjoints' order.
        """
        s = self.s
        group = s.groups[dname]
        splits = [self.split(a) for a in adjoints]
        if any(x is None for x in splits):
            return
        factors = [x[1] for x in splits if x is not None]
        readers: Counter[Any] = Counter()
        for item in s.backward_loop + s.backward_last:
            readers.update(_reads(item.expr))
        if any(readers[k] > 2 for k in factors) or len(set(factors)) != len(factors):
            return
        kname = self.short_name(f"local_{dname.removeprefix('delta_')}", "locals")
        s.groups[kname] = Group(kname, group.width, group.count, "backward")
        for k, factor in enumerate(factors):
            s.blocks[s.base[factor]] = Block(kname, k, k + 1)
        runs: list[tuple[int, int]] = []
        start = 0
        for k in range(1, len(adjoints) + 1):
            if k == len(adjoints) or splits[k][0] != splits[start][0]:  # type: ignore[index]
                runs.append((start, k))
                start = k
        for name in ("backward_loop", "backward_last"):
            items: list[Stmt] = getattr(s, name)
            for a, b in runs:
                if b - a < 2:
                    continue
                members = set(adjoints[a:b])
                at = [i for i, item in enumerate(items) if item.target in members]
                moving = splits[a][0]  # type: ignore[index]
                expected = {
                    adjoints[k]: {moving, splits[k][1]}  # type: ignore[index]
                    for k in range(a, b)
                }
                if len(at) != b - a or any(
                    not isinstance(items[i].expr, sp.HadamardProduct)
                    or set(items[i].expr.args) != expected[items[i].target]
                    for i in at
                ):
                    continue
                target = self.block_symbol(dname, a, b, 0, group.width)
                blocks = self.block_symbol(kname, a, b, 0, group.width)
                fused = sp.HadamardProduct(Repeat(moving, b - a), blocks)
                new = Stmt(target, fused, "broadcast")
                items = [item for i, item in enumerate(items) if i not in at[1:]]
                items[at[0]] = new
            setattr(s, name, items)


def fuse(builder: _Builder) -> None:
    """Fuse the schedule's parallel statements (see the module docstring)."""
    fuser = _Fuser(builder)
    for name, members, products in fuser.fuse_forward():
        fuser.fuse_backward(name, members, products)
