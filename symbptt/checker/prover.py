"""The symbolic proof: both sides as explicit matrices of polynomials in the entries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix

from ..expr import mexpr
from .formulas import _kept
from .language import _label
from .points import _gradient_symbol
from .work import _Work

#: Abandon the proof when a polynomial entry grows past this many terms...
_MAX_TERMS = 20_000


#: ... or when it has multiplied this many pairs of terms (a second or two; rational
#: coefficients are about three times slower than integer ones).
_MAX_WORK = {"ZZ": 250_000, "QQ": 80_000}


def _lengths(values: Any) -> Any:
    return np.vectorize(len, otypes=[int])(values)


def _symbolic_equal(work: _Work, expr: Any, name: str) -> str | None:
    """Prove equality as polynomials in the entries of the model's quantities, if possible.

    Both sides become explicit matrices whose entries are polynomials (over the
    rationals) in the entries of the parameters, inputs, targets and forward
    quantities (h, ŷ, ...), first with δ_t kept as a symbol, then with δ_t
    expanded.  f(z_t) and softmax(o_t) in the candidate are first replaced by
    h_t and ŷ_t.  Returns which form proved it, or None (not polynomial, over
    budget, or not equal as polynomials, which proves nothing).
    """
    graph = work.graph
    forward = [a for a in graph.assignments if a.kind not in ("loss", "total_loss")]
    canonical = {a.expr: a.target for a in forward}
    defs = {a.target: a.expr for a in work.d.assignments}
    if not expr.free_symbols & (set(defs) | {a.target for a in forward}):
        # a candidate in the leaves only (derive(spec).gradient(name, expand=True)): find the
        # forward quantities in it.  Not otherwise: the expanded forms grow fast with T.
        canonical.update({work.d.value_of(a.target): a.target for a in forward})
    expr = expr.xreplace(canonical)
    meta = graph.symbols.meta
    kept = set(_kept(work.d))
    notation = work.notation
    named = {s for s, (role, _) in meta.items() if role in kept}
    labels = ", ".join(f"{_label(notation, role)}[t]" for role in _kept(work.d))
    plural = "as a symbol" if len(kept) == 1 else "as symbols"
    target = _gradient_symbol(work, name)
    levels = [
        (f"with {labels} {plural}", {k: v for k, v in defs.items() if k not in named}),
        (f"with {labels} expanded", defs),
    ]
    for label, level_defs in levels:
        try:
            try:
                explicit = _PolyExplicit(level_defs, [expr, target], sp.ZZ)
                equal = bool(np.all(explicit(expr) == explicit(target)))
            except _NeedRationals:
                explicit = _PolyExplicit(level_defs, [expr, target], sp.QQ)
                equal = bool(np.all(explicit(expr) == explicit(target)))
        except _NotPolynomial:
            return None
        if equal:
            return label
    return None


def _leaf_name(leaf: Any) -> str:
    return str(leaf.name) if isinstance(leaf, sp.MatrixSymbol) else str(leaf)


def _function_of_leaf(node: Any, defs: Mapping[Any, Any]) -> bool:
    """``f(q)`` applied elementwise to a symbol the proof does not expand (tanh(c_t))."""
    if not isinstance(node, ElementwiseApplyFunction):
        return False
    (var,) = node.function.variables
    inner = node.expr
    return node.function.expr != var and isinstance(inner, sp.MatrixSymbol) and inner not in defs


class _NotPolynomial(Exception):
    """The expression is not a polynomial in the entries (or too big to expand)."""


class _NeedRationals(Exception):
    """A coefficient is not an integer: redo the expansion over the rationals."""


class _PolyExplicit:
    """Matrix expressions as NumPy object arrays of polynomials in their leaves' entries."""

    def __init__(self, defs: Mapping[Any, Any], roots: Sequence[Any], domain: Any) -> None:
        self.defs = defs
        self.domain = domain
        leaves = sorted(self._leaves(roots), key=_leaf_name)
        gens: list[sp.Symbol] = []
        self.index: dict[Any, list[list[int]]] = {}
        for leaf in leaves:
            rows, cols = int(leaf.shape[0]), int(leaf.shape[1])
            self.index[leaf] = [
                [len(gens) + i * cols + j for j in range(cols)] for i in range(rows)
            ]
            label = _leaf_name(leaf)
            gens += [sp.Symbol(f"{label}[{i},{j}]") for i in range(rows) for j in range(cols)]
        if not gens:
            gens = [sp.Symbol("_")]
        self.ring, *self.gens = sp.ring(gens, domain)
        self.memo: dict[Any, Any] = {}
        self.work = 0  # term products spent so far (a deterministic budget)

    def _leaves(self, roots: Sequence[Any]) -> set[Any]:
        seen: set[Any] = set()
        leaves: set[Any] = set()
        stack = list(roots)
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if isinstance(node, sp.MatrixSymbol):
                if node in self.defs:
                    stack.append(self.defs[node])
                else:
                    leaves.add(node)
            elif _function_of_leaf(node, self.defs):
                leaves.add(node)  # tanh(c_t): its entries are variables of their own
            elif isinstance(node, sp.Basic):
                stack.extend(node.args)
        return leaves

    def __call__(self, expr: Any) -> Any:
        if expr in self.memo:
            return self.memo[expr]
        value = self._compute(expr)
        if (
            isinstance(value, np.ndarray)
            and value.size
            and max(len(v) for v in value.flat) > _MAX_TERMS
        ):
            raise _NotPolynomial("too many terms")
        self.memo[expr] = value
        return value

    def _generators(self, leaf: Any) -> Any:
        index = self.index[leaf]
        out = np.empty((len(index), len(index[0])), dtype=object)
        for i, row in enumerate(index):
            for j, k in enumerate(row):
                out[i, j] = self.gens[k]
        return out

    def _spend(self, amount: Any) -> None:
        self.work += int(amount)
        if self.work > _MAX_WORK[str(self.domain)]:
            raise _NotPolynomial("over the budget of the proof")

    def _scalar(self, value: Any) -> Any:
        value = sp.sympify(value)
        if not value.is_Rational:
            raise _NotPolynomial(f"the scalar {value} is not a rational number")
        if not value.is_Integer and self.domain == sp.ZZ:
            raise _NeedRationals
        return self.ring(value)

    def _filled(self, rows: int, cols: int, fill: Any) -> Any:
        out = np.empty((rows, cols), dtype=object)
        for index in np.ndindex(rows, cols):
            out[index] = fill
        return out

    def _compute(self, expr: Any) -> Any:
        if not mexpr.is_matrix(expr):
            return self._scalar(expr)
        if isinstance(expr, sp.MatrixSymbol):
            if expr in self.defs:
                return self(self.defs[expr])
            return self._generators(expr)
        rows, cols = int(expr.shape[0]), int(expr.shape[1])
        if isinstance(expr, sp.ZeroMatrix):
            return self._filled(rows, cols, self.ring.zero)
        if isinstance(expr, sp.OneMatrix):
            return self._filled(rows, cols, self.ring.one)
        if isinstance(expr, sp.Identity):
            out = self._filled(rows, rows, self.ring.zero)
            for i in range(rows):
                out[i, i] = self.ring.one
            return out
        if isinstance(expr, sp.MatAdd):
            total = self(expr.args[0])
            for arg in expr.args[1:]:
                total = total + self(arg)
            return total
        if isinstance(expr, sp.MatMul):
            coeff, mats = expr.as_coeff_matrices()
            value = self(mats[0])
            for m in mats[1:]:
                right = self(m)
                self._spend((_lengths(value).sum(axis=0) * _lengths(right).sum(axis=1)).sum())
                value = np.dot(value, right)
            return value * self._scalar(coeff) if coeff != 1 else value
        if isinstance(expr, sp.Transpose):
            return self(expr.arg).T
        if isinstance(expr, sp.HadamardProduct):
            value = self(expr.args[0])
            for arg in expr.args[1:]:
                right = self(arg)
                self._spend((_lengths(value) * _lengths(right)).sum())
                value = value * right
            return value
        if isinstance(expr, sp.HadamardPower):
            exp = sp.sympify(expr.exp)
            if not (exp.is_Integer and 0 <= int(exp) <= 16):
                raise _NotPolynomial("a power that is not a small non-negative integer")
            base = self(expr.base)
            out = self._filled(rows, cols, self.ring.one)
            for _ in range(int(exp)):
                out = out * base
            return out
        if isinstance(expr, ElementwiseApplyFunction):
            (var,) = expr.function.variables
            if expr.function.expr == var:
                return self(expr.expr)
            if expr in self.index:
                return self._generators(expr)
            raise _NotPolynomial("an elementwise function")
        if isinstance(expr, DiagMatrix):
            vector = list(self(expr.args[0]).reshape(-1))
            out = self._filled(len(vector), len(vector), self.ring.zero)
            for i, v in enumerate(vector):
                out[i, i] = v
            return out
        raise _NotPolynomial(type(expr).__name__)
