"""NumPy gradient modules printed from the derivation: rolled (any T) and unrolled (fixed T).

``emit_numpy(spec)`` returns the source of a Python module (the contract is
in the module docstring it prints, ``templates/gradients.py.jinja``); the
templates lay the module out and every expression of the forward and
backward pass is printed here, from the derivation, by
:class:`~symbptt.numpy_printer.NumPyPrinter`:

* the rolled module (``gradients.py.jinja``) prints the generic step
  (:attr:`~symbptt.derive.Derivation.step_form`) as a *hoisted schedule*:
  what does not depend on the recurrence is done once over all steps (the
  input projection, the output layer and its loss gradient, the weight
  gradients and bias sums as single products), and only the recurrent
  product and what it feeds stays in the loop;
* the unrolled module (``gradients_unrolled.py.jinja``) prints the
  derivation's own assignments, one per line, for ``spec.steps`` steps.

Internally every per-step array holds one example per row (time-major data
``X[t]`` is ``x_t^T``).  A column-layout notation (``W x``) is turned into
that row form by transposing its assignments symbolically
(:class:`RowForm`), so both layouts run the same BLAS-friendly code: a
column-layout weight appears as ``W.T``.

Emission always derives with symbolic sizes (so that ``b 1^T``, ``X 1`` and
``1 1^T X`` stay distinguishable) and with the initial state as an input
(every module accepts ``h0`` and can return its gradient); the spec's
concrete sizes become run-time checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import sympy as sp
from sympy.core.symbol import Str
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from . import functions, mexpr
from .derive import Derivation, derive
from .graph import T_SYMBOL, Assignment, Symbols
from .notation import Notation
from .numpy_printer import (
    LogSumExp,
    NumPyPrinter,
    SumEntries,
    flatten_matmul,
    helper_source,
    matmul_form,
    stable_loss_matrix,
)
from .spec import ModelSpec
from .templating import render

__all__ = ["RowForm", "emit_numpy", "load_module"]

_SIZE_NAMES = {"n_in": "n_in", "n_hidden": "n_hidden", "n_out": "n_out", "batch": "m"}


# ---------------------------------------------------------------------------- the input
def _emission_derivation(source: ModelSpec | Derivation) -> tuple[ModelSpec, Derivation]:
    """The user's spec and a derivation with symbolic sizes and the initial state as input."""
    spec = source.spec if isinstance(source, Derivation) else source
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"expected a ModelSpec or a Derivation, got {type(source).__name__}")
    emission = dataclasses.replace(
        spec, n_in=None, n_hidden=None, n_out=None, batch=None, initial_state="input"
    )
    if isinstance(source, Derivation) and source.spec == emission:
        return spec, source
    return spec, derive(emission)


# ---------------------------------------------------------------------------- row form
def _tr(expr: Any) -> Any:
    """The transpose of ``expr`` (whose own transposes are already at the leaves)."""
    if isinstance(expr, sp.Transpose):
        return expr.arg
    if isinstance(expr, sp.MatrixSymbol):
        return sp.Transpose(expr)
    if isinstance(expr, (sp.OneMatrix, sp.ZeroMatrix)):
        return type(expr)(expr.shape[1], expr.shape[0])
    if isinstance(expr, sp.MatAdd):
        return sp.MatAdd(*(_tr(arg) for arg in expr.args))
    if isinstance(expr, sp.MatMul):
        coeff, mats = flatten_matmul(expr)
        return mexpr.scale(coeff, mexpr.matmul(*(_tr(m) for m in reversed(mats))))
    if isinstance(expr, sp.HadamardProduct):
        return sp.HadamardProduct(*(_tr(arg) for arg in expr.args))
    if isinstance(expr, sp.HadamardPower):
        return sp.HadamardPower(_tr(expr.base), expr.exp)
    if isinstance(expr, ElementwiseApplyFunction):
        return ElementwiseApplyFunction(expr.function, _tr(expr.expr))
    if isinstance(expr, mexpr.Softmax):
        return mexpr.Softmax(_tr(expr.arg), 1 - expr.axis)
    if isinstance(expr, LogSumExp):
        return LogSumExp(_tr(expr.arg), 1 - expr.axis)
    raise TypeError(f"cannot transpose {type(expr).__name__}")


def push_transposes(expr: Any) -> Any:
    """``expr`` with every transpose pushed down to a symbol (``(A B)^T = B^T A^T``)."""
    if isinstance(expr, sp.Transpose):
        return _tr(push_transposes(expr.arg))
    if isinstance(expr, mexpr.OutputLoss):
        pre, pred, target = (push_transposes(e) for e in (expr.pre, expr.pred, expr.target))
        if all(isinstance(e, sp.Transpose) for e in (pre, pred, target)):
            return mexpr.OutputLoss(
                pre.arg, pred.arg, target.arg, expr.output, expr.loss, 1 - expr.axis
            )
        return mexpr.OutputLoss(pre, pred, target, expr.output, expr.loss, expr.axis)
    if not isinstance(expr, sp.Basic) or not expr.args or isinstance(expr, sp.Lambda):
        return expr
    if isinstance(expr, (sp.MatrixSymbol, sp.OneMatrix, sp.ZeroMatrix, sp.Symbol)):
        return expr
    args = tuple(push_transposes(arg) for arg in expr.args)
    if args == expr.args:
        return expr
    return expr.func(*args)


class RowForm:
    """The assignments of a notation in row form: one example per row.

    In a column-layout notation a per-example quantity ``s`` (n x m) is held
    as ``s^T`` (m x n), a symbol of the same name: ``s = E`` becomes
    ``s^T = E^T`` with the transposes pushed to the leaves, so ``z = W x + b 1^T``
    becomes ``z = x W^T + 1 b^T``.  Parameter-shaped quantities (weights,
    their gradients) keep their shape.  A row-layout notation is unchanged.
    """

    def __init__(self, symbols: Symbols) -> None:
        self.column = symbols.layout == "column"
        self.batch = symbols.sizes["batch"]
        self.meta: dict[Any, tuple[str, Any]] = {}
        self._map: dict[Any, Any] = {}
        for symbol, info in symbols.meta.items():
            self.meta[self.symbol(symbol)] = info

    def _is_series(self, symbol: Any) -> bool:
        return isinstance(symbol, sp.MatrixSymbol) and symbol.shape[1] == self.batch

    def symbol(self, symbol: Any) -> Any:
        """The row-form symbol of ``symbol``."""
        if not self.column or not self._is_series(symbol):
            return symbol
        if symbol not in self._map:
            self._map[symbol] = sp.MatrixSymbol(symbol.name, symbol.shape[1], symbol.shape[0])
        return self._map[symbol]

    def expr(self, expr: Any) -> Any:
        """``expr`` written with row-form symbols (its own shape unchanged)."""
        if not self.column:
            return expr
        leaves = expr.atoms(sp.MatrixSymbol) if isinstance(expr, sp.Basic) else set()
        mapping = {s: sp.Transpose(self.symbol(s)) for s in leaves if self._is_series(s)}
        return push_transposes(expr.xreplace(mapping))

    def assignment(self, assignment: Assignment) -> Assignment:
        """``assignment`` in row form (a series target is transposed with its expression)."""
        target = assignment.target
        expr = self.expr(assignment.expr)
        if self.column and self._is_series(target):
            expr = _tr(expr)
        return Assignment(
            self.symbol(target), expr, assignment.kind, assignment.step, assignment.param
        )


# ---------------------------------------------------------------------------- zeros
def _without(expr: Any, zeros: Mapping[Any, Any]) -> Any:
    """``expr`` with ``zeros`` substituted and the zero terms and products dropped."""
    return mexpr.substitute(expr, zeros)


# ---------------------------------------------------------------------------- code lines
@dataclass
class Code:
    """Lines of generated code, each with the names it reads and the name it defines.

    A *pure* line only defines its name (a view, a reshape, a workspace
    array): :meth:`prune` drops it when nothing after it reads the name.
    """

    entries: list[tuple[str, frozenset[str], str | None, bool]] = field(default_factory=list)

    def add(
        self, line: str, uses: Iterable[str] = (), defines: str | None = None, pure: bool = False
    ) -> None:
        self.entries.append((line, frozenset(uses), defines, pure))

    def extend(self, other: Code, indent: int = 0) -> None:
        pad = "    " * indent
        self.entries += [
            (pad + line if line else line, uses, defines, pure)
            for line, uses, defines, pure in other.entries
        ]

    @property
    def uses(self) -> set[str]:
        return set().union(*(uses for _, uses, _, _ in self.entries)) if self.entries else set()

    @property
    def defines(self) -> list[str]:
        return [d for _, _, d, _ in self.entries if d is not None]

    def prune(self, live: Iterable[str]) -> Code:
        """Drop pure lines whose name nothing later (nor ``live``) reads, and their comments."""
        needed = set(live)
        keep = [True] * len(self.entries)
        for i in reversed(range(len(self.entries))):
            _, uses, defines, pure = self.entries[i]
            if pure and defines is not None and defines not in needed:
                keep[i] = False
                continue
            needed |= uses
        for i, (line, _, _, _) in enumerate(self.entries):
            if line.strip().startswith("#"):
                following = next(
                    (
                        j
                        for j in range(i + 1, len(self.entries))
                        if not self.entries[j][0].strip().startswith("#")
                    ),
                    None,
                )
                keep[i] = following is not None and keep[following]
        return Code([entry for entry, kept in zip(self.entries, keep, strict=True) if kept])

    def lines(self) -> list[str]:
        return [line for line, _, _, _ in self.entries]


class _Printer(NumPyPrinter):
    """The NumPy printer sharing one set of helpers across a module's printers."""

    def __init__(self, names: Mapping[Any, str], helpers: set[str] | None = None) -> None:
        super().__init__(names)
        if helpers is not None:
            self.helpers = helpers


# ---------------------------------------------------------------------------- long lines
WIDTH = 88  # ruff format's default line length: printed lines never need wrapping


def _trivial(expr: Any) -> bool:
    if not isinstance(expr, sp.Basic) or isinstance(expr, (sp.Lambda, Str)):
        return True
    if isinstance(expr, sp.Transpose):
        return isinstance(expr.arg, (sp.MatrixSymbol, sp.OneMatrix))
    return bool(expr.is_Atom or isinstance(expr, (sp.MatrixSymbol, sp.OneMatrix)))


def _children(expr: Any) -> list[Any]:
    """The subexpressions a long line can be split at (with runs of atoms grouped)."""
    if isinstance(expr, mexpr.OutputLoss):
        return []
    if isinstance(expr, ElementwiseApplyFunction):
        args = [expr.expr]
    else:
        args = [a for a in expr.args if isinstance(a, sp.Basic)]
    compound = [a for a in args if not _trivial(a)]
    if compound or len(args) <= 2:
        return compound
    if isinstance(expr, (sp.MatAdd, sp.Add, sp.HadamardProduct, sp.Mul)):
        return [expr.func(*args[: len(args) // 2])]
    return []


def _descendants(expr: Any) -> list[Any]:
    """Every subexpression a long line can be split at, outermost first."""
    out: list[Any] = []
    stack = list(reversed(_children(expr)))
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed([c for c in _children(node) if c in node.args]))
    return out


def fit(
    target: str,
    expr: Any,
    new_printer: Callable[[dict[Any, str]], _Printer],
    names: dict[Any, str],
    indent: int = 4,
    counter: list[int] | None = None,
) -> list[tuple[str, str, set[str]]]:
    """``target = expr`` as statements ``(name, code, names read)`` that each fit in :data:`WIDTH`.

    While a line is too long, the smallest subexpression whose naming makes it
    fit (else the largest) is assigned first to ``<target>_part<k>``; ``counter``
    (one number in a list) numbers the parts when several calls share a target.
    """
    counter = [0] if counter is None else counter
    if isinstance(expr, sp.Basic):
        losses = expr.atoms(mexpr.OutputLoss)
        expr = expr.xreplace({n: SumEntries(stable_loss_matrix(n)) for n in losses})
    names = dict(names)
    pending = [(target, expr)]
    out: list[tuple[str, str, set[str]]] = []
    while pending:
        name, current = pending.pop()
        printer = new_printer(names)
        code = str(printer.doprint(current))
        excess = indent + len(name) + 3 + len(code) - WIDTH
        candidates = _descendants(current) if excess > 0 else []
        if not candidates:
            out.append((name, code, set(printer.used)))
            continue
        counter[0] += 1
        part = f"{target}_part{counter[0]}"
        lengths = [len(str(new_printer(names).doprint(c))) for c in candidates]
        enough = [(length, i) for i, length in enumerate(lengths) if length - len(part) >= excess]
        child = candidates[min(enough)[1] if enough else lengths.index(max(lengths))]
        symbol = sp.MatrixSymbol(part, *child.shape) if mexpr.is_matrix(child) else sp.Symbol(part)
        names[symbol] = part
        if child in current.args or child not in _children(current):
            replaced = current.xreplace({child: symbol})
        else:  # a run of atoms grouped by _children
            grouped = set(child.args)
            replaced = current.func(symbol, *(a for a in current.args if a not in grouped))
        if replaced == current:
            out.append((name, code, set(printer.used)))
            continue
        pending.append((name, replaced))
        pending.append((part, child))
    return out


# ---------------------------------------------------------------------------- lowering
def _atomic(expr: Any) -> bool:
    """An operand that is printed without computing a new full-size array."""
    if not mexpr.is_matrix(expr):
        return True
    if isinstance(expr, (sp.MatrixSymbol, sp.OneMatrix, LogSumExp)):
        return True
    if isinstance(expr, sp.Transpose):
        return isinstance(expr.arg, sp.MatrixSymbol)
    if isinstance(expr, sp.MatMul):
        coeff, mats, axis = matmul_form(expr)
        if coeff != 1:
            return False
        if axis is not None:
            return True
        return len(mats) == 1 and _atomic(mats[0])
    return False


class Lowering:
    """Three-address code: an expression written into an existing array, in place.

    Each line is one NumPy call (``np.dot(a, b, out=z)``, ``z += b``), so no
    full-size temporary is allocated; an operand that is itself compound is
    first written into a scratch array asked of ``scratch(shape)``.  Products
    of 2-D arrays use ``np.dot``: with ``out`` it costs less per call than
    ``np.matmul`` (the loops make many small calls) and calls the same BLAS.
    """

    def __init__(
        self, printer: _Printer, scratch: Callable[[tuple[Any, Any]], str], indent: int = 4
    ) -> None:
        self.printer = printer
        self.scratch = scratch
        self.indent = indent

    def code(self, expr: Any) -> str:
        return str(self.printer.doprint(expr))

    def fresh(self, expr: Any, code: Code) -> str:
        """The code of ``expr``; lines too long are split into named parts first."""
        names = dict(self.printer.names)
        parts = fit(self.target, expr, self._same_printer, names, self.indent, self.counter)
        for name, text, used in parts[:-1]:
            code.add(f"{name} = {text}", used, name)
            self.printer.used |= used | {name}
        self.printer.used |= parts[-1][2]
        return parts[-1][1]

    def _same_printer(self, names: dict[Any, str]) -> _Printer:
        return _Printer(names, self.printer.helpers)

    def short(self, expr: Any, out: Code) -> str:
        """An atomic operand's code; a long one (a log-sum-exp) is named on a line of its own."""
        code = self.code(expr)
        if len(code) <= 40:
            return code
        text = self.fresh(expr, out)
        self.counter[0] += 1
        name = f"{self.target}_part{self.counter[0]}"
        out.add(f"{name} = {text}", (), name)
        self.scratches.add(name)
        return name

    def statement(self, expr: Any, target: str) -> Code:
        """Lines writing ``expr`` into the array ``target`` (each line lists what all read)."""
        self.printer.used.clear()
        self.scratches: set[str] = set()
        self.target = target
        self.counter = [0]
        code = self.assign(expr, target)
        uses = frozenset(self.printer.used | self.scratches | {target})
        return Code([(line, uses, None, False) for line, _, _, _ in code.entries])

    def operand(self, expr: Any, out: Code) -> str:
        if _atomic(expr):
            return self.short(expr, out)
        buffer = self.scratch(expr.shape)
        self.scratches.add(buffer)
        out.extend(self.assign(expr, buffer))
        return buffer

    def assign(self, expr: Any, target: str) -> Code:
        code = Code()
        if _atomic(expr):
            code.add(f"{target}[...] = {self.short(expr, code)}")
            return code
        if isinstance(expr, sp.MatMul) and matmul_form(expr)[2] is not None:
            coeff, mats, axis = matmul_form(expr)
            if len(mats) == 1 and not isinstance(mats[0], sp.Transpose):
                inner = self.operand(mats[0], code)
                code.add(f"{target}[...] = {inner}.sum(axis={axis}, keepdims=True)")
            else:
                body = sp.MatMul(*flatten_matmul(expr)[1])
                code.add(f"{target}[...] = {self.fresh(body, code)}")
            self._scale(coeff, target, code)
            return code
        if isinstance(expr, sp.MatMul):
            coeff, mats, axis = matmul_form(expr)
            if axis is None and len(mats) >= 2:
                left = self.operand(mats[0], code)
                for i, factor in enumerate(mats[1:]):
                    right = self.operand(factor, code)
                    into = target
                    if i < len(mats) - 2:
                        into = self.scratch((mats[0].shape[0], factor.shape[1]))
                        self.scratches.add(into)
                    code.add(f"np.dot({left}, {right}, out={into})")
                    left = into
            else:
                code.extend(self.assign(mats[0], target))
            self._scale(coeff, target, code)
            return code
        if isinstance(expr, sp.MatAdd):
            self._sum(list(expr.args), target, code)
            return code
        if isinstance(expr, sp.HadamardProduct):
            factors = list(expr.args)
            compound = [f for f in factors if not _atomic(f)]
            if compound:
                code.extend(self.assign(compound[0], target))
                rest = [f for f in factors if f is not compound[0]]
            else:
                a, b = factors[0], factors[1]
                a_code, b_code = self.short(a, code), self.short(b, code)
                code.add(f"np.multiply({a_code}, {b_code}, out={target})")
                rest = factors[2:]
            for factor in rest:
                code.add(f"{target} *= {self.operand(factor, code)}")
            return code
        if isinstance(expr, sp.HadamardPower) and expr.exp == 2:
            base = self.operand(expr.base, code) if _atomic(expr.base) else None
            if base is None:
                code.extend(self.assign(expr.base, target))
                base = target
            code.add(f"np.multiply({base}, {base}, out={target})")
            return code
        if isinstance(expr, ElementwiseApplyFunction):
            arg = expr.expr
            if _atomic(arg):
                arg_code = self.short(arg, code)
            else:
                code.extend(self.assign(arg, target))
                arg_code = target
            call = self.printer.elementwise_into(expr, arg_code, target)
            if call is not None:
                code.add(call)
            else:
                placeholder = sp.MatrixSymbol("_arg", *arg.shape)
                self.printer.names[placeholder] = arg_code
                applied = expr.func(expr.function, placeholder)
                code.add(f"{target}[...] = {self.fresh(applied, code)}")
                del self.printer.names[placeholder]
            return code
        if isinstance(expr, mexpr.Softmax):
            arg_code = self.operand(expr.arg, code)
            self.printer.helpers.add("softmax")
            code.add(f"softmax({arg_code}, axis={expr.axis}, out={target})")
            return code
        code.add(f"{target}[...] = {self.fresh(expr, code)}")
        return code

    def _sum(self, terms: list[Any], target: str, code: Code) -> None:
        signed = [
            (
                NumPyPrinter._negative(t),
                NumPyPrinter._negated(t) if NumPyPrinter._negative(t) else t,
            )
            for t in terms
        ]
        compound = [i for i, (_, t) in enumerate(signed) if not _atomic(t)]
        if compound:
            positive = [i for i in compound if not signed[i][0]]
            base = positive[0] if positive else compound[0]
            rest = [i for i in range(len(signed)) if i != base]
            code.extend(self.assign(signed[base][1], target))
            if signed[base][0]:
                atoms = [i for i in rest if not signed[i][0] and _atomic(signed[i][1])]
                if atoms:
                    first_code = self.short(signed[atoms[0]][1], code)
                    code.add(f"np.subtract({first_code}, {target}, out={target})")
                    rest.remove(atoms[0])
                else:
                    code.add(f"np.negative({target}, out={target})")
        else:
            order = sorted(range(len(signed)), key=lambda i: signed[i][0])
            first, second = order[0], order[1]
            a, b = self.short(signed[first][1], code), self.short(signed[second][1], code)
            if signed[first][0]:
                code.add(f"np.add({a}, {b}, out={target})")
                code.add(f"np.negative({target}, out={target})")
            else:
                op = "subtract" if signed[second][0] else "add"
                code.add(f"np.{op}({a}, {b}, out={target})")
            rest = order[2:]
        for i in rest:
            negative, term = signed[i]
            code.add(f"{target} {'-=' if negative else '+='} {self.operand(term, code)}")

    def _scale(self, coeff: Any, target: str, code: Code) -> None:
        numer, denom = sp.fraction(sp.sympify(coeff))
        if numer == -1:
            code.add(f"np.negative({target}, out={target})")
        elif numer != 1:
            code.add(f"{target} *= {self.code(numer)}")
        if denom != 1:
            code.add(f"{target} /= {self.code(denom)}")


# ---------------------------------------------------------------------------- naming
def _base(symbol: Any, step: Any) -> str:
    """The name of a step-indexed symbol without its step: ``dW_xh`` of ``dW_xh_t-1``."""
    suffix = "_" + Symbols.step_name(step)
    name = str(symbol.name)
    if not name.endswith(suffix):
        raise ValueError(f"symbol {name!r} does not end with its step {suffix!r}")
    return name[: -len(suffix)]


_STEP_SUFFIX = {-1: "_prev", 0: "_t", 1: "_next"}


def _size_names(symbols: Symbols, batch: str = "m") -> dict[Any, str]:
    names = {symbols.sizes[key]: value for key, value in _SIZE_NAMES.items()}
    names[symbols.sizes["batch"]] = batch
    names[T_SYMBOL] = "T"
    return names


@dataclass
class _Statement:
    """A row-form assignment of the generic step."""

    target: Any
    expr: Any
    role: str
    param: str | None = None


@dataclass
class _Buffers:
    """Arrays of the workspace a function asks for, in order of first use."""

    shapes: dict[str, str] = field(default_factory=dict)
    counter: list[int] = field(default_factory=lambda: [0])

    def line(self, name: str, shape: str) -> str:
        self.shapes[name] = shape
        return f'{name} = _buffer(ws, "{name}", {shape}, dtype)'

    def scratch_name(self) -> str:
        self.counter[0] += 1
        return f"tmp{self.counter[0]}"


# ---------------------------------------------------------------------------- rolled
class _Rolled:
    """The rolled module's code: the generic step as a hoisted schedule.

    Arrays ``q_all`` hold a quantity of every step stacked by rows ((T m) x n,
    step t in rows t m .. t m + m - 1) and ``q_seq`` is the same memory as
    (T, m, n); in the loop ``q_t``, ``q_prev`` and ``q_next`` are views of the
    step t, t - 1 and t + 1.  A row-local expression of per-step quantities
    evaluated on the stacked arrays is the stack of its per-step values, and
    a product ``A_t^T B_t`` of stacked arrays is the sum over the steps.
    """

    def __init__(self, spec: ModelSpec, d: Derivation) -> None:
        self.spec, self.d = spec, d
        self.notation: Notation = d.notation
        self.column = self.notation.layout == "column"
        sf = d.step_form
        self.t = sf.t
        self.rf = RowForm(sf.symbols)
        self.m2o = spec.mode == "many_to_one"
        self.index: dict[tuple[str, int], Any] = {}
        self.base: dict[Any, str] = {}
        self.offset: dict[Any, int] = {}
        for symbol, (role, step) in self.rf.meta.items():
            if isinstance(step, sp.Basic) and step.free_symbols:
                offset = int(step - self.t)
                self.index.setdefault((role, offset), symbol)
                self.base[symbol] = _base(symbol, step)
                self.offset[symbol] = offset
        sizes = _size_names(sf.symbols)
        params = {symbol: name for name, symbol in sf.symbols.params.items()}
        self.param_names = dict(params)
        self.names_all = {**sizes, **params}
        self.names_step = {**sizes, **params}
        for symbol, base in self.base.items():
            offset = self.offset[symbol]
            self.names_step[symbol] = base + _STEP_SUFFIX[offset]
            self.names_all[symbol] = base + {-1: "_prev_all", 0: "_all", 1: "_next_all"}[offset]
        self.sizes = sizes
        self.names_loop = dict(self.names_step)
        for symbol, name in params.items():
            self.names_loop[sp.Transpose(symbol)] = f"{name}_T"
        convert = self._statements
        self.forward = convert(sf.forward)
        self.backward = convert(sf.backward)
        self.last_forward = convert(sf.last_forward) if sf.last_forward else []
        if sf.last_backward:
            self.last_backward = convert(sf.last_backward)
        else:
            self.last_backward = self._without_next(self.backward)
        self.buffers = _Buffers()
        self.helpers: set[str] = set()
        self.seq_index: dict[str, Callable[[int], str]] = {}

    # -- statements ---------------------------------------------------------------
    def _statements(self, assignments: Iterable[Assignment]) -> list[_Statement]:
        out = []
        for assignment in assignments:
            row = self.rf.assignment(assignment)
            out.append(_Statement(row.target, row.expr, assignment.kind, assignment.param))
        return out

    def _without_next(self, statements: list[_Statement]) -> list[_Statement]:
        """The backward step with δ_{t+1} = 0: the last step of a many-to-many model."""
        delta_next = self.index[("adjoint_pre_activation", 1)]
        zeros: dict[Any, Any] = {delta_next: sp.ZeroMatrix(*delta_next.shape)}
        out = []
        for s in statements:
            expr = _without(s.expr, zeros)
            if mexpr.is_zero(expr):
                zeros[s.target] = sp.ZeroMatrix(*s.target.shape)
                continue
            out.append(_Statement(s.target, expr, s.role, s.param))
        return out

    @staticmethod
    def _one(statements: list[_Statement], role: str) -> _Statement:
        found = [s for s in statements if s.role == role]
        if len(found) != 1:
            raise NotImplementedError(f"expected one {role} assignment, found {len(found)}")
        return found[0]

    # -- printing -----------------------------------------------------------------
    def new_printer(self, names: Mapping[Any, str]) -> _Printer:
        return _Printer(names, self.helpers)

    def printer(self, context: str, extra: Mapping[Any, str] | None = None) -> _Printer:
        names = {"all": self.names_all, "step": self.names_step, "loop": self.names_loop}[context]
        return self.new_printer({**names, **(extra or {})})

    def fresh(
        self,
        code: Code,
        target: str,
        expr: Any,
        context: str,
        extra: Mapping[Any, str] | None = None,
    ) -> None:
        """``target = expr`` as a new array (split into parts when the line is long)."""
        names = {"all": self.names_all, "step": self.names_step, "loop": self.names_loop}[context]
        indent = 8 if context == "loop" else 4
        names = {**names, **(extra or {})}
        for part, text, used in fit(target, expr, self.new_printer, names, indent):
            code.add(f"{part} = {text}", used, part, True)

    def code_of(self, expr: Any, context: str) -> tuple[str, set[str]]:
        printer = self.printer(context)
        return str(printer.doprint(expr)), set(printer.used)

    def shape_code(self, shape: tuple[Any, Any], stacked: bool) -> tuple[str, set[str]]:
        """A shape as code, ``(T * m, n_hidden)`` for a stacked array, and the names it reads."""
        printer = self.new_printer(self.sizes)
        dims = []
        for dim in shape:
            if dim == self.rf.batch:
                dims.append("T * m" if stacked else "m")
                printer.used |= {"T", "m"} if stacked else {"m"}
            else:
                dims.append(str(printer.doprint(dim)))
        return f"({dims[0]}, {dims[1]})", printer.used

    def line_of(self, statement: _Statement, context: str, shift: int = 0) -> str:
        """The forward assignment as a line of per-step code, for comments."""
        names = dict(self.names_step)
        if shift:
            for symbol, base in self.base.items():
                offset = self.offset[symbol] + shift
                names[symbol] = base + _STEP_SUFFIX.get(offset, f"_{offset:+d}")
        printer = self.new_printer(names)
        return f"{printer.doprint(statement.target)} = {printer.doprint(statement.expr)}"

    def lower(
        self,
        expr: Any,
        target: str,
        context: str,
        code: Code,
        scratch_code: Code,
        extra: Mapping[Any, str] | None = None,
    ) -> None:
        """``expr`` written into ``target`` in place; scratch arrays go to ``scratch_code``."""
        stacked = context == "all"

        def scratch(shape: tuple[Any, Any]) -> str:
            name = self.buffers.scratch_name()
            self.buffer(scratch_code, name, *self.shape_code(shape, stacked))
            return name

        lowering = Lowering(self.printer(context, extra), scratch, 8 if context == "loop" else 4)
        code.extend(lowering.statement(expr, target))

    def buffer(self, code: Code, name: str, shape: str, uses: Iterable[str]) -> None:
        """Ask the workspace for the array ``name``."""
        code.add(self.buffers.line(name, shape), {"ws", "dtype", *uses}, name, True)

    # -- per-step views -----------------------------------------------------------
    def views(self, body: Code) -> Code:
        """``q_t = q_seq[t]`` for the per-step names ``body`` reads, in order of first use."""
        views = Code()
        seen: set[str] = set()
        for _, uses, _, _ in body.entries:
            for symbol, name in sorted(self.names_step.items(), key=lambda kv: kv[1]):
                if name not in uses or name in seen or symbol not in self.base:
                    continue
                base, offset = self.base[symbol], self.offset[symbol]
                if base not in self.seq_index:
                    continue
                seen.add(name)
                seq = f"{base}_seq"
                views.add(f"{name} = {seq}[{self.seq_index[base](offset)}]", {seq, "t"}, name, True)
        return views

    def _seq(self, base: str, shift: int = 0) -> None:
        """Register ``base_seq`` as the per-step storage of ``base`` (index t + shift + offset)."""

        def index(offset: int) -> str:
            k = offset + shift
            return "t" if k == 0 else f"t + {k}" if k > 0 else f"t - {-k}"

        self.seq_index[base] = index

    def comment_for(self, expr: Any, forward: list[_Statement], loss_line: str) -> list[str]:
        """``# grad of: <forward line>`` for each forward assignment whose adjoint is read."""
        lines = []
        symbols = sorted(
            (s for s in expr.free_symbols if s in self.offset),
            key=lambda s: (self.offset[s], str(s)),
        )
        for symbol in symbols:
            role, _ = self.rf.meta[symbol]
            if not role.startswith("adjoint_"):
                continue
            primal = self.index.get((role[len("adjoint_") :], 0))
            statement = next((s for s in forward if s.target == primal), None)
            if statement is not None:
                lines.append(f"# grad of: {self.line_of(statement, 'step', self.offset[symbol])}")
        if not lines:
            lines.append(f"# grad of: {loss_line}")
        return lines

    # -- forward ------------------------------------------------------------------
    def forward_code(self) -> Code:
        c = Code()
        c.add("T, m, n_in = X.shape", {"X"})
        c.add("n_hidden = h0.shape[1]", {"h0"}, "n_hidden", True)
        out_weight = self.notation.param("output_weight").ascii
        c.add(f"n_out = {out_weight}.shape[{0 if self.column else 1}]", {out_weight}, "n_out", True)
        c.add("dtype = X.dtype", {"X"}, "dtype", True)
        x_base = self.base[self.index[("input", 0)]]
        c.add(
            f"{x_base}_all = X.reshape(T * m, n_in)", {"X", "T", "m", "n_in"}, f"{x_base}_all", True
        )
        c.add(f"{x_base}_seq = X", {"X"}, f"{x_base}_seq", True)
        self._seq(x_base)
        z = self._one(self.forward, "pre_activation")
        h = self._one(self.forward, "hidden")
        h_prev = self.index[("hidden", -1)]
        zb, hb = self.base[z.target], self.base[h.target]
        self.hidden_base = hb
        terms = list(z.expr.args) if isinstance(z.expr, sp.MatAdd) else [z.expr]
        hoisted = [term for term in terms if h_prev not in term.free_symbols]
        recurrent = [term for term in terms if h_prev in term.free_symbols]
        self.buffer(c, f"{hb}_seq", "(T + 1, m, n_hidden)", {"T", "m", "n_hidden"})
        c.add(f"{hb}_seq[0] = h0", {f"{hb}_seq", "h0"})
        self._seq(hb, shift=1)
        self.buffer(c, f"{zb}_all", "(T * m, n_hidden)", {"T", "m", "n_hidden"})
        if hoisted:
            c.add(f"# {self.line_of(z, 'step')}, without {self.names_step[h_prev]}: all steps")
            self.lower(mexpr.add(*hoisted), f"{zb}_all", "all", c, c)
        c.add(
            f"{zb}_seq = {zb}_all.reshape(T, m, n_hidden)",
            {f"{zb}_all", "T", "m", "n_hidden"},
            f"{zb}_seq",
            True,
        )
        self._seq(zb)
        loop, before = Code(), Code()
        self.transposed_params(before)
        loop.add(f"# {self.line_of(z, 'step')}")
        z_t = self.names_step[z.target]
        if hoisted:
            self.accumulate(mexpr.add(*recurrent), z_t, loop, before)
        else:
            self.lower(mexpr.add(*recurrent), z_t, "loop", loop, before)
        loop.add(f"# {self.line_of(h, 'step')}")
        self.lower(h.expr, self.names_step[h.target], "loop", loop, before)
        c.extend(before)
        c.add("for t in range(T):", {"T"})
        body = self.views(loop)
        body.extend(loop)
        c.extend(body, indent=1)
        c.add(
            f"{hb}_all = {hb}_seq[1:].reshape(T * m, n_hidden)",
            {f"{hb}_seq", "T", "m", "n_hidden"},
            f"{hb}_all",
            True,
        )
        c.add(
            f"{hb}_prev_all = {hb}_seq[:-1].reshape(T * m, n_hidden)",
            {f"{hb}_seq", "T", "m", "n_hidden"},
            f"{hb}_prev_all",
            True,
        )
        outputs = self.last_forward if self.m2o else self.forward
        outputs = [s for s in outputs if s.role in ("output_pre_activation", "output")]
        if not self.m2o:
            for s in outputs:
                name = self.names_all[s.target]
                self.buffer(c, name, *self.shape_code(s.target.shape, True))
                c.add(f"# {self.line_of(s, 'step')}")
                self.lower(s.expr, name, "all", c, c)
                self._seq(self.base[s.target])
        else:
            last = Code()
            for s in outputs:
                last.add(f"# {self.line_of(s, 'step')}")
                self.fresh(last, self.names_step[s.target], s.expr, "step")
            c.add("t = T - 1", {"T"}, "t", True)
            c.extend(self.views(last))
            c.extend(last)
        return c

    def transposed_params(self, before: Code) -> None:
        """Name ``W.T`` once before a loop (attribute look-ups in the loop cost time)."""
        for name in self.param_names.values():
            before.add(f"{name}_T = {name}.T", {name}, f"{name}_T", True)

    def accumulate(self, expr: Any, target: str, code: Code, before: Code) -> None:
        """``target += expr`` in a loop, through a scratch array (no allocation)."""
        if _atomic(expr):
            text, used = self.code_of(expr, "loop")
            code.add(f"{target} += {text}", used | {target})
            return
        name = self.buffers.scratch_name()
        self.buffer(before, name, *self.shape_code(expr.shape, False))
        self.lower(expr, name, "loop", code, before)
        code.add(f"{target} += {name}", {target, name})

    # -- loss ---------------------------------------------------------------------
    def total_loss(self) -> tuple[_Statement, Any]:
        statements = self.last_forward if self.m2o else self.forward
        loss = self._one(statements, "loss")
        steps = sp.Integer(1) if self.m2o else T_SYMBOL
        return loss, self.d.step_form.symbols.loss_scale(steps)

    def loss_line(self) -> str:
        loss, scale = self.total_loss()
        total = sp.Symbol("_total")
        printer = self.new_printer(
            {
                **self.names_step,
                total: f"sum({self.names_step[loss.target]} for t in range(T))"
                if not self.m2o
                else self.names_step[loss.target],
            }
        )
        return f"{self.notation.loss_ascii} = {printer.doprint(scale * total)}"

    def loss_code(self) -> Code:
        c = Code()
        loss, scale = self.total_loss()
        y = self.index[("target", 0)]
        name = self.notation.loss_ascii
        total = sp.Symbol("_total")
        c.add(f"# {self.line_of(loss, 'step')}")
        node = loss.expr
        softmax = mexpr.Softmax(node.pre, node.axis)
        known = {softmax: self.names_step[node.pred]} if node.output == "softmax" else {}
        if self.m2o:
            c.add(f"{self.names_step[y]} = Y", {"Y"}, self.names_step[y], True)
            self.fresh(c, name, scale * loss.expr, "step", known)
        else:
            y_all = self.names_all[y]
            c.add(f"{y_all} = Y.reshape(T * m, n_out)", {"Y", "T", "m", "n_out"}, y_all, True)
            terms = f"{self.notation.loss_ascii}_terms"
            matrix = stable_loss_matrix(loss.expr)
            self.buffer(c, terms, *self.shape_code(matrix.shape, True))
            known = {softmax: self.names_all[node.pred]} if node.output == "softmax" else {}
            self.lower(matrix, terms, "all", c, c, known)
            c.add(f"# {self.loss_line()}")
            printer = self.new_printer({total: f"{terms}.sum()"})
            c.add(
                f"{name} = {printer.doprint(scale * total)}",
                {terms} | self._size_uses(scale),
                name,
                True,
            )
        return c

    def _size_uses(self, expr: Any) -> set[str]:
        return {self.sizes[s] for s in sp.sympify(expr).free_symbols if s in self.sizes}

    # -- backward -----------------------------------------------------------------
    def backward_code(self) -> tuple[Code, Code, dict[str, str]]:
        """The backward pass, the extra gradients (h0, X), each parameter's gradient variable."""
        c = Code()
        body, last = self.backward, self.last_backward
        forward = self.forward + [s for s in self.last_forward if s not in self.forward]
        loop_roles = ("adjoint_hidden", "adjoint_pre_activation")
        delta_next = self.index[("adjoint_pre_activation", 1)]
        dh, delta = self._one(body, "adjoint_hidden"), self._one(body, "adjoint_pre_activation")
        dh_last = self._one(last, "adjoint_hidden")
        delta_last = self._one(last, "adjoint_pre_activation")
        if delta.expr != delta_last.expr:
            raise NotImplementedError("the adjoint of the pre-activation differs at the last step")
        y = self.index[("target", 0)]
        if self.m2o:
            c.add(f"{self.names_step[y]} = Y", {"Y"}, self.names_step[y], True)
        else:
            y_all = self.names_all[y]
            c.add(f"{y_all} = Y.reshape(T * m, n_out)", {"Y", "T", "m", "n_out"}, y_all, True)
        loss_line = self.loss_line()

        # what does not depend on δ_{t+1}, for all steps at once
        stacked = [s for s in body if s.role not in loop_roles and s.role != "contribution"]
        for s in stacked:
            if s not in last:
                raise NotImplementedError(f"{s.target} differs at the last step")
            name = self.names_all[s.target]
            self.buffer(c, name, *self.shape_code(s.target.shape, True))
            for line in self.comment_for(s.expr, forward, loss_line):
                c.add(line)
            self.lower(s.expr, name, "all", c, c)
        terms = list(dh.expr.args) if isinstance(dh.expr, sp.MatAdd) else [dh.expr]
        hoisted = [term for term in terms if delta_next not in term.free_symbols]
        recurrent = [term for term in terms if delta_next in term.free_symbols]
        dh_base = self.base[dh.target]
        dh_t = self.names_step[dh.target]
        stacked_dh = bool(hoisted)
        if stacked_dh:
            if mexpr.add(*hoisted) != dh_last.expr:
                raise NotImplementedError(
                    "the adjoint of the hidden state differs at the last step"
                )
            self.buffer(c, f"{dh_base}_all", "(T * m, n_hidden)", {"T", "m", "n_hidden"})
            for line in self.comment_for(mexpr.add(*hoisted), forward, loss_line):
                c.add(line)
            self.lower(mexpr.add(*hoisted), f"{dh_base}_all", "all", c, c)
            c.add(
                f"{dh_base}_seq = {dh_base}_all.reshape(T, m, n_hidden)",
                {f"{dh_base}_all", "T", "m", "n_hidden"},
                f"{dh_base}_seq",
                True,
            )
            self._seq(dh_base)
        else:
            self.buffer(c, dh_t, "(m, n_hidden)", {"m", "n_hidden"})

        # the factors of δ_t that do not depend on the loop (the activation's derivative)
        delta_expr = delta.expr
        factors = (
            list(delta_expr.args) if isinstance(delta_expr, sp.HadamardProduct) else [delta_expr]
        )
        invariant = [f for f in factors if dh.target not in f.free_symbols and not _atomic(f)]
        delta_base = self.base[delta.target]
        hidden_base = self.base[self.index[("hidden", 0)]]
        pre_base = self.base[self.index[("pre_activation", 0)]]
        for k, factor in enumerate(invariant):
            name = f"d{hidden_base}_d{pre_base}" if k == 0 else f"d{hidden_base}_d{pre_base}_{k}"
            symbol = sp.MatrixSymbol(f"{name}_t", *factor.shape)
            self.names_all[symbol] = f"{name}_all"
            self.names_step[symbol] = self.names_loop[symbol] = f"{name}_t"
            self.base[symbol], self.offset[symbol] = name, 0
            self.buffer(c, f"{name}_all", "(T * m, n_hidden)", {"T", "m", "n_hidden"})
            hidden = self._one(forward, "hidden")
            c.add(
                f"# grad of: {self.line_of(hidden, 'step')}, the factor without the loop's values"
            )
            self.lower(factor, f"{name}_all", "all", c, c)
            c.add(
                f"{name}_seq = {name}_all.reshape(T, m, n_hidden)",
                {f"{name}_all", "T", "m", "n_hidden"},
                f"{name}_seq",
                True,
            )
            self._seq(name)
            delta_expr = delta_expr.xreplace({factor: symbol})
        self.buffer(c, f"{delta_base}_seq", "(T, m, n_hidden)", {"T", "m", "n_hidden"})
        self._seq(delta_base)
        delta_t = self.names_step[delta.target]
        hidden = self._one(forward, "hidden")

        # contributions: summed over the steps by one product, or of the last step only
        gradients: dict[str, str] = {}
        summed: list[_Statement] = []
        last_only: list[_Statement] = []
        for name in self.param_names.values():
            in_body = [s for s in body if s.role == "contribution" and s.param == name]
            in_last = [s for s in last if s.role == "contribution" and s.param == name]
            gradients[name] = "d" + name
            if in_body and in_last and in_body[0].expr == in_last[0].expr:
                summed.append(in_body[0])
            elif in_last and not in_body:
                last_only.append(in_last[0])
            elif in_body or in_last:
                raise NotImplementedError(f"the contribution to {name} differs at the last step")
            else:
                gradients[name] = f"np.zeros_like({name})"

        # the last step (t = T - 1): no δ_{t+1}
        block = Code()
        for s in last:
            if s.role in loop_roles or s.role == "contribution" or s in stacked:
                continue
            for line in self.comment_for(s.expr, forward, loss_line):
                block.add(line)
            self.fresh(block, self.names_step[s.target], s.expr, "step")
        if not stacked_dh:
            for line in self.comment_for(dh_last.expr, forward, loss_line):
                block.add(line)
            self.lower(dh_last.expr, dh_t, "step", block, c)
        block.add(f"# grad of: {self.line_of(hidden, 'step')}")
        self.lower(delta_expr, delta_t, "step", block, c)
        previous: list[str] = []
        for s in last_only:
            comments = self.comment_for(s.expr, forward, loss_line)
            for line in comments if comments != previous else []:
                block.add(line)
            previous = comments
            self.fresh(block, gradients[str(s.param)], s.expr, "step")
        c.add("# the last step: no delta from step t + 1")
        c.add("t = T - 1", {"T"}, "t", True)
        c.extend(self.views(block))
        c.extend(block)

        # the loop, t = T - 2, ..., 0
        loop, before = Code(), Code()
        self.transposed_params(before)
        z = self._one(forward, "pre_activation")
        loop.add(f"# grad of: {self.line_of(z, 'step', 1)}")
        if stacked_dh:
            self.accumulate(mexpr.add(*recurrent), dh_t, loop, before)
        else:
            self.lower(mexpr.add(*recurrent), dh_t, "loop", loop, before)
        loop.add(f"# grad of: {self.line_of(hidden, 'step')}")
        self.lower(delta_expr, delta_t, "loop", loop, before)
        c.extend(before)
        c.add("for t in range(T - 2, -1, -1):", {"T"})
        loop_body = self.views(loop)
        loop_body.extend(loop)
        c.extend(loop_body, indent=1)
        c.add(
            f"{delta_base}_all = {delta_base}_seq.reshape(T * m, n_hidden)",
            {f"{delta_base}_seq", "T", "m", "n_hidden"},
            f"{delta_base}_all",
            True,
        )
        groups: dict[str, list[_Statement]] = {}
        for s in summed:
            comment = "\n".join(self.comment_for(s.expr, forward, loss_line))
            groups.setdefault(comment, []).append(s)
        for comment, statements in groups.items():
            for line in comment.split("\n"):
                c.add(line)
            for s in statements:
                self.fresh(c, gradients[str(s.param)], s.expr, "all")

        # h0 and X
        extras = Code()
        extras.add(f"# grad of: {self.line_of(z, 'step')}, of x_t")
        d = self.d
        rows = RowForm(d.graph.symbols)
        first = d.graph.steps[0]
        dx = _tr(rows.expr(d.input_gradients[first])) if self.column else d.input_gradients[first]
        concrete = {}
        for symbol, (role, step) in rows.meta.items():
            if step == first and (role, 0) in self.index:
                concrete[symbol] = self.names_all[self.index[(role, 0)]]
        printer = self.new_printer({**self.names_all, **concrete})
        extras.add(
            f"dX = ({printer.doprint(dx)}).reshape(T, m, n_in)",
            printer.used | {"T", "m", "n_in"},
            "dX",
            True,
        )
        extras.add(f"# grad of: {self.line_of(z, 'step')} at the first step, of h0")
        names = dict(self.names_step)
        names[delta_next] = f"{delta_base}_seq[0]"
        printer = self.new_printer(names)
        text = printer.doprint(mexpr.add(*recurrent))
        extras.add(f"dh0 = {text}", printer.used | {f"{delta_base}_seq"}, "dh0", True)
        return c, extras, gradients

    # -- the module ---------------------------------------------------------------
    def build(self) -> dict[str, Any]:
        forward = self.forward_code()
        loss = self.loss_code()
        backward, extras, gradients = self.backward_code()
        loss_name = self.notation.loss_ascii
        output = self.index[("output", 0)]
        prediction = self.names_step[output] if self.m2o else self.names_all[output]
        hidden_seq = f"{self.hidden_base}_seq"
        parts = _assemble(
            forward,
            loss,
            backward,
            extras,
            gradients,
            self.param_names.values(),
            loss_name,
            {prediction, hidden_seq},
        )
        return parts | {
            "prediction": prediction,
            "prediction_stacked": not self.m2o,
            "hidden_seq": hidden_seq,
        }


def _assemble(
    forward: Code,
    loss: Code,
    backward: Code,
    extras: Code,
    gradients: Mapping[str, str],
    params: Iterable[str],
    loss_name: str,
    outputs: set[str],
) -> dict[str, Any]:
    """The module's function bodies, each pruned to what is used.

    The cache holds the forward arrays that the loss, the backward pass and the
    extras read, and the ``outputs`` the module returns.
    """
    params = list(params)
    extras = extras.prune({"dX", "dh0"})
    backward = backward.prune({v for v in gradients.values() if v.isidentifier()} | extras.uses)
    loss = loss.prune({loss_name})
    local = set(loss.defines) | set(backward.defines) | set(extras.defines)
    downstream = ((loss.uses | backward.uses | extras.uses) - local) | outputs
    cache = _ordered(n for n in ["T", "m", "n_in", *forward.defines] if n in downstream)
    forward = _unpack_shape(forward.prune(set(cache)), cache)
    return {
        "forward": _with_inputs(forward, params, [], []),
        "loss": _with_inputs(loss, [], cache, loss.defines),
        "backward": _with_inputs(
            backward, params, cache, backward.defines + extras.defines, extras.uses
        ),
        "extras": extras.lines(),
        "cache": cache,
        "gradients": gradients,
        "loss_name": loss_name,
    }


def _unpack_shape(code: Code, cache: list[str]) -> Code:
    """``T, m, n_in = X.shape`` with ``_`` for the sizes nothing reads."""
    entries = list(code.entries)
    for i, (line, uses, defines, pure) in enumerate(entries):
        if line == "T, m, n_in = X.shape":
            later = set().union(*(u for _, u, _, _ in entries[i + 1 :])) | set(cache)
            names = [n if n in later else "_" for n in ("T", "m", "n_in")]
            entries[i] = (f"{', '.join(names)} = X.shape", uses, defines, pure)
            if names == ["_", "_", "_"]:
                del entries[i]
            break
    return Code(entries)


def _ordered(names: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return seen


def _with_inputs(
    body: Code,
    params: Iterable[str],
    cache: list[str],
    local: list[str],
    more_uses: Iterable[str] = (),
) -> list[str]:
    """``body`` preceded by the look-ups of the parameters and cached arrays it reads."""
    uses = body.uses | set(more_uses)
    head = [f'{name} = params["{name}"]' for name in params if name in uses]
    head += [f'{name} = cache["{name}"]' for name in cache if name in uses and name not in local]
    return head + body.lines()


# ---------------------------------------------------------------------------- unrolled
class _Unrolled:
    """The unrolled module's code: the derivation's assignments, one per line, for T steps."""

    def __init__(self, spec: ModelSpec, d: Derivation) -> None:
        self.spec, self.d = spec, d
        self.notation: Notation = d.notation
        self.column = self.notation.layout == "column"
        graph = d.graph
        self.rf = RowForm(graph.symbols)
        self.sizes = _size_names(graph.symbols)
        self.param_names = {symbol: name for name, symbol in graph.params.items()}
        self.names: dict[Any, str] = {**self.sizes, **self.param_names}
        self.forward = [self._statement(a) for a in graph.assignments]
        self.backward = [self._statement(a) for a in d.assignments]
        self.helpers: set[str] = set()
        # (role, step) -> symbol, built once: ``comments`` looks adjoints and
        # primals up for every pair of statements, and a scan of ``rf.meta``
        # per look-up made unrolled emission cubic in the number of steps.
        self._by_role: dict[tuple[str, Any], Any] = {}
        for symbol, (role, step) in self.rf.meta.items():
            self._by_role.setdefault((role, step), symbol)
        self._forward_reads = [f.expr.free_symbols for f in self.forward]
        self._forwards_by_adjoint: dict[Any, list[int]] = {}
        for index, forward in enumerate(self.forward):
            if forward.role not in ("loss", "total_loss"):
                adjoint = self._adjoint_of(forward.target)
                if adjoint is not None:
                    self._forwards_by_adjoint.setdefault(adjoint, []).append(index)
        self._comment_lines: dict[int, str] = {}

    def new_printer(self, names: Mapping[Any, str]) -> _Printer:
        return _Printer(names, self.helpers)

    def _statement(self, assignment: Assignment) -> _Statement:
        row = self.rf.assignment(assignment)
        return _Statement(row.target, row.expr, assignment.kind, assignment.param)

    def code_of(self, expr: Any) -> tuple[str, set[str]]:
        printer = self.new_printer(self.names)
        return str(printer.doprint(expr)), set(printer.used)

    def line_of(self, statement: _Statement) -> str:
        printer = self.new_printer(self.names)
        return f"{printer.doprint(statement.target)} = {printer.doprint(statement.expr)}"

    def assign(self, code: Code, statement: _Statement, name: str | None = None) -> None:
        target = name or str(self.new_printer(self.names).doprint(statement.target))
        for part, text, used in fit(target, statement.expr, self.new_printer, self.names):
            code.add(f"{part} = {text}", used, part, True)

    def comments(self, statement: _Statement) -> list[str]:
        """``# grad of: ...`` for the forward assignments a backward assignment comes from."""
        reads = statement.expr.free_symbols
        lines = []
        primal = None
        if statement.role.startswith("adjoint_") or statement.role == "contribution":
            primal = self._primal_of(statement.target)
            # Only the forward assignments whose adjoint this one reads can
            # match; taken in forward order, as a scan of them all would.
            candidates = sorted(
                index
                for s in reads
                if self.rf.meta.get(s, ("",))[0].startswith("adjoint_")
                for index in self._forwards_by_adjoint.get(s, ())
            )
            for index in candidates:
                reads_of_forward = self._forward_reads[index]
                if (
                    statement.param in {str(p) for p in reads_of_forward}
                    if statement.role == "contribution"
                    else primal in reads_of_forward
                ):
                    lines.append(self._forward_comment(index))
        if not lines and primal is not None:
            for index, forward in enumerate(self.forward):
                if forward.role == "loss" and primal in self._forward_reads[index]:
                    lines.append(self._forward_comment(index))
        return lines

    def _forward_comment(self, index: int) -> str:
        if index not in self._comment_lines:
            self._comment_lines[index] = f"# grad of: {self.line_of(self.forward[index])}"
        return self._comment_lines[index]

    def _adjoint_of(self, symbol: Any) -> Any:
        role, step = self.rf.meta.get(symbol, (None, None))
        return self._by_role.get((f"adjoint_{role}", step))

    def _primal_of(self, symbol: Any) -> Any:
        role, step = self.rf.meta.get(symbol, ("", None))
        if not role.startswith("adjoint_"):
            return None
        return self._by_role.get((role[len("adjoint_") :], step))

    def build(self) -> dict[str, Any]:
        d, graph = self.d, self.d.graph
        forward, loss, backward, extras = Code(), Code(), Code(), Code()
        forward.add("T, m, n_in = X.shape", {"X"})
        forward.add("dtype = X.dtype", {"X"}, "dtype", True)
        printer = self.new_printer(self.names)
        for i, x in enumerate(graph.inputs):
            name = str(printer.doprint(self.rf.symbol(x)))
            forward.add(f"{name} = X[{i}]", {"X"}, name, True)
        initial = str(printer.doprint(self.rf.symbol(graph.initial)))
        forward.add(f"{initial} = h0", {"h0"}, initial, True)
        many_to_one = self.spec.mode == "many_to_one"
        for i, y in enumerate(graph.targets):
            name = str(printer.doprint(self.rf.symbol(y)))
            loss.add(f"{name} = {'Y' if many_to_one else f'Y[{i}]'}", {"Y"}, name, True)
            backward.add(f"{name} = {'Y' if many_to_one else f'Y[{i}]'}", {"Y"}, name, True)
        for s in self.forward:
            if s.role in ("loss", "total_loss"):
                node = s.expr
                if isinstance(node, mexpr.OutputLoss) and node.output == "softmax":
                    softmax = mexpr.Softmax(node.pre, node.axis)
                    self.names[softmax] = str(self.new_printer(self.names).doprint(node.pred))
                self.assign(loss, s)
                self.names = {
                    k: v for k, v in self.names.items() if not isinstance(k, mexpr.Softmax)
                }
            else:
                self.assign(forward, s)
        previous: list[str] = []
        for s in self.backward:
            comments = self.comments(s) if s.role != "gradient" else ["# sum over the steps"]
            if comments != previous:
                for line in comments:
                    backward.add(line)
            previous = comments
            self.assign(backward, s)
        names: list[str] = []
        for step in graph.steps:
            name = f"dx_{step}"
            self.assign(extras, _Statement(None, self._row(d.input_gradients[step]), "input"), name)
            names.append(name)
        extras.add(f"dX = np.stack([{', '.join(names)}])", set(names), "dX", True)
        initial_name = self.notation.initial_ascii
        self.assign(
            extras, _Statement(None, self._row(d.gradients[initial_name]), "initial"), "dh0"
        )
        loss_name = self.notation.loss_ascii
        gradients = {name: f"d{name}" for name in self.param_names.values()}
        output = graph.symbols.series("output", graph.steps[-1])
        prediction = str(printer.doprint(self.rf.symbol(output)))
        predictions = [
            str(printer.doprint(self.rf.symbol(graph.symbols.series("output", step))))
            for step in graph.steps
        ]
        hidden = [
            str(printer.doprint(self.rf.symbol(graph.symbols.series("hidden", step))))
            for step in graph.steps
        ]
        outputs = set(predictions if not many_to_one else [prediction]) | {hidden[-1]}
        parts = _assemble(
            forward,
            loss,
            backward,
            extras,
            gradients,
            self.param_names.values(),
            loss_name,
            outputs,
        )
        return parts | {
            "prediction": prediction,
            "predictions": predictions,
            "prediction_stacked": False,
            "final_hidden": hidden[-1],
        }

    def _row(self, expr: Any) -> Any:
        return _tr(self.rf.expr(expr)) if self.column else expr


# ---------------------------------------------------------------------------- the module text
def _doc_names(symbols: Symbols, notation: Notation, t: Any) -> dict[Any, str]:
    """Per-step symbols in the notation's index style: ``h_(t-1)``, ``h^(t)``, ``a(t)``."""
    names: dict[Any, str] = dict(_size_names(symbols))
    names.update({symbol: name for name, symbol in symbols.params.items()})
    for symbol, (_, step) in symbols.meta.items():
        if not (isinstance(step, sp.Basic) and step.free_symbols):
            continue
        base = _base(symbol, step)
        index = str(step).replace(" ", "")
        if notation.style == "sup":
            names[symbol] = f"{base}^({index})"
        elif notation.style == "call":
            names[symbol] = f"{base}({index})"
        else:
            names[symbol] = f"{base}_{index}" if index == str(t) else f"{base}_({index})"
    return names


def _equations(spec: ModelSpec, d: Derivation) -> list[str]:
    """The model's equations in the notation's own layout, as docstring lines."""
    sf = d.step_form
    notation = d.notation
    names = _doc_names(sf.symbols, notation, sf.t)
    printer = NumPyPrinter(names)
    statements = list(sf.last_forward or sf.forward)
    lines = []
    for a in statements:
        target = printer.doprint(a.target)
        if a.kind == "loss":
            pred = sp.Symbol(printer.doprint(a.expr.pred))
            truth = sp.Symbol(printer.doprint(a.expr.target))
            loss = functions.LOSSES[spec.loss].definition.xreplace(
                {functions.a: pred, functions.y: truth}
            )
            lines.append(f"{target} = sum over units and examples of {sp.sstr(loss)}")
        else:
            lines.append(f"{target} = {printer.doprint(a.expr)}")
    steps = T_SYMBOL if spec.mode == "many_to_many" else sp.Integer(1)
    scale = sf.symbols.loss_scale(steps)
    total = sp.Symbol("_total")
    loss_t = printer.doprint(next(a.target for a in statements if a.kind == "loss"))
    what = f"sum over t of {loss_t}" if spec.mode == "many_to_many" else f"{loss_t} of the last t"
    total_code = NumPyPrinter({total: f"({what})", **names}).doprint(scale * total)
    lines.append(f"{notation.loss_ascii} = {total_code}")
    return lines


def _shapes(symbols: Symbols) -> dict[str, str]:
    """The parameters' shapes as code in n_in, n_hidden, n_out."""
    printer = NumPyPrinter(_size_names(symbols))
    return {
        name: f"({printer.doprint(symbol.shape[0])}, {printer.doprint(symbol.shape[1])})"
        for name, symbol in symbols.params.items()
    }


def _context(spec: ModelSpec, d: Derivation, unrolled: bool) -> dict[str, Any]:
    notation = d.notation
    builder: _Rolled | _Unrolled = _Unrolled(spec, d) if unrolled else _Rolled(spec, d)
    built = builder.build()
    symbols = d.graph.symbols
    shapes = _shapes(symbols)
    fan_in = {"input_weight": "n_in", "recurrent_weight": "n_hidden", "output_weight": "n_hidden"}
    roles = {name: role for name, role in d.roles.items() if name in symbols.params}
    init = [
        {"name": name, "shape": shapes[name], "fan_in": fan_in.get(roles[name])}
        for name in symbols.params
    ]
    many_to_one = spec.mode == "many_to_one"
    column = notation.layout == "column"
    if unrolled:
        final_hidden = f'cache["{built["final_hidden"]}"]'
        if many_to_one:
            prediction = f'cache["{built["prediction"]}"]'
        else:
            prediction = "np.stack([cache[name] for name in _PREDICTIONS])"
    else:
        final_hidden = f'cache["{built["hidden_seq"]}"][-1]'
        name = built["prediction"]
        prediction = (
            f'cache["{name}"]'
            if many_to_one
            else f'cache["{name}"].reshape(X.shape[0], X.shape[1], -1)'
        )
    steps_text = ", ".join(str(s) for s in notation.steps(2)) + ", ...,"
    first = notation.t0
    last = "T" if first == 1 else "T - 1"
    title = "Gradients of an Elman RNN by backpropagation through time, " + (
        f"unrolled for T = {spec.steps} steps." if unrolled else "rolled: any number of steps T."
    )
    header = [
        "Generated by symbptt from SPEC below: do not edit.",
        "Regenerate: python -m symbptt.regenerate (the presets in generated/); any spec:",
        f"symbptt.emit_numpy(symbptt.ModelSpec(**SPEC){', unrolled=True' if unrolled else ''}).",
        f"Model: {notation.title}; seed {notation.seed}.",
        f"Spec hash {spec.hash()}; SymPy {sp.__version__}.",
    ]
    equations = _equations(spec, d)
    data_shape = "(T, m, n_out)" if not many_to_one else "(m, n_out)"
    layout = (
        [
            "Layout: column vectors, as in W x: a per-step quantity is (units, m); inside,",
            "the code works on transposed views, one example per row: X[t] is x_t^T and",
            "W x + b appears as x @ W.T + b.T.",
        ]
        if column
        else ["Layout: rows, as in X W: a per-step quantity is (m, units), one example per row."]
    )
    # The fused output gradient (e.g. softmax - Y for cross-entropy) was derived
    # with the targets summing to one over the units: the module checks it.
    distribution = functions.LOSSES[spec.loss].distribution
    targets_rule = (
        [
            f"Targets: {spec.loss} needs each target to sum to 1 over the n_out units",
            "(one-hot or probabilities; Y.sum(axis=-1) == 1): the gradient is derived",
            "under that rule, and other targets raise ValueError.",
        ]
        if distribution
        else []
    )
    docstring = [
        f"Equations (@ the matrix product, * elementwise; t = {steps_text} {last},",
        f"{notation.initial_ascii} the initial state h0):",
        *("    " + line for line in equations),
        "",
        "Shapes: X (T, m, n_in) time-major (X[t] holds step t), one example per row;",
        f"Y {data_shape}; h0 (m, n_hidden) or None for zeros; the parameters",
        *(f"    {name} {shape}" for name, shape in shapes.items()),
        "(biases are n x 1 vectors, as in the notation).",
        *layout,
        f"Reductions: {spec.time_reduction} over time, {spec.batch_reduction} over the batch.",
        *targets_rule,
        "",
        "Functions: init_params, forward, loss, loss_and_gradients (the loss and the",
        "parameter gradients), loss_and_all_gradients (also the gradients of X and h0",
        "and the final hidden state: state['dX'], state['dh0'], state['h_T']).",
        "float32 in, float32 out; bad shapes, dtypes or parameters raise ValueError.",
    ]
    if not unrolled:
        docstring += [
            "",
            "Schedule: what does not depend on the recurrence runs once over all steps",
            "(input projection, output layer, loss gradient, weight gradients); the loops",
            "hold the recurrent products only.  loss_and_gradients keeps its scratch",
            "arrays between calls (per thread); clear_workspace() frees them.",
        ]
    else:
        docstring += [
            "",
            f"Straight-line code for T = {spec.steps} steps (X.shape[0] must be {spec.steps}).",
        ]
    spec_items = {
        key: repr(value) if not isinstance(value, str) else f'"{value}"'
        for key, value in spec.as_dict().items()
    }
    helpers = [helper_source(name) for name in sorted(builder.helpers)]
    return {
        **built,
        "title": title,
        "header": header,
        "docstring": docstring,
        "parameters": list(symbols.params),
        "roles": roles,
        "layout": notation.layout,
        "steps": spec.steps if unrolled else None,
        "sizes": {
            "n_in": spec.n_in,
            "n_hidden": spec.n_hidden,
            "n_out": spec.n_out,
            "m": spec.batch,
        },
        "spec": spec_items,
        "init": init,
        "prediction": prediction,
        "prediction_shape": "(T, m, n_out), time-major" if not many_to_one else "(m, n_out)",
        "final_hidden": final_hidden,
        "recurrent": notation.param("recurrent_weight").ascii,
        "output_weight": notation.param("output_weight").ascii,
        "output_axis": 0 if column else 1,
        "target_shape": data_shape,
        "targets_are_distributions": distribution,
        "workspace": not unrolled,
        "stacked_predictions": built.get("predictions", []) if not many_to_one else [],
        "helpers": helpers,
    }


def emit_numpy(spec: ModelSpec | Derivation, unrolled: bool = False) -> str:
    """The source of a NumPy module computing the loss and gradients of ``spec``.

    ``unrolled=False`` gives the rolled module (any number of steps), ``True``
    straight-line code for ``spec.steps`` steps.  A :class:`Derivation` is
    accepted in place of its spec.  The text is the same for the same spec,
    whatever the hash seed.
    """
    user_spec, d = _emission_derivation(spec)
    template = "gradients_unrolled.py.jinja" if unrolled else "gradients.py.jinja"
    return render(template, **_context(user_spec, d, unrolled))


#: This process's private folder for generated modules (made on first use).
_MODULE_FOLDER: Path | None = None


def _module_folder() -> Path:
    """A folder only this user can read or write, made once per process (mode 0700).

    Private so that no other user can own it, plant a file or link in it, or
    read what is written there; ``tempfile.mkdtemp`` makes it under an
    unpredictable name.  It is left behind, as the tracebacks of the modules
    loaded from it point into it.
    """
    global _MODULE_FOLDER
    if _MODULE_FOLDER is None or not _MODULE_FOLDER.is_dir():
        _MODULE_FOLDER = Path(tempfile.mkdtemp(prefix="symbptt-"))
    return _MODULE_FOLDER


def load_module(source: str, name: str | None = None) -> ModuleType:
    """Import generated source from a file, so that tracebacks show its lines.

    The file is written once per process, under a name made of the hash of the
    source, in a private folder of the temporary directory (see
    :func:`_module_folder`): written whole to a new file, then renamed.
    """
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    folder = _module_folder()
    module_name = name or f"symbptt_generated_{digest}"
    path = folder / f"{module_name}.py"
    if not path.exists() or path.read_text(encoding="utf-8") != source:
        with tempfile.NamedTemporaryFile(
            "w",
            encoding="utf-8",
            dir=folder,
            prefix=f".{module_name}.",
            suffix=".tmp",
            delete=False,
        ) as partial:
            partial.write(source)
        os.replace(partial.name, path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load generated module from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
