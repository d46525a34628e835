"""Matrix-expression building blocks: light constructors and the two custom nodes.

The constructors build SymPy matrix expressions without ``.doit()`` (which is
slow and rewrites what documents want to show) and apply only the algebra of
symbolic zeros and ones: a zero term is dropped, a product with a zero is
zero, a Hadamard factor of all ones is dropped.  Paths that carry no gradient
are symbolic zeros and are never printed.

Custom nodes:

* :class:`Softmax` -- the softmax over the output units of each example;
* :class:`OutputLoss` -- the scalar loss of one step, summed over units and
  examples, of an output layer and loss pair applied to a pre-activation.
"""

from __future__ import annotations

from typing import Any

import sympy as sp
from sympy.core.symbol import Str
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixExpr

__all__ = [
    "AxisExpr",
    "HadamardPower",
    "OutputLoss",
    "Softmax",
    "add",
    "broadcast_bias",
    "hadamard",
    "hadamard_power",
    "is_matrix",
    "is_zero",
    "matmul",
    "ones",
    "scale",
    "split_scale",
    "substitute",
    "sum_columns",
    "transpose",
    "zeros",
]


def is_matrix(expr: Any) -> bool:
    return bool(getattr(expr, "is_Matrix", False))


def is_zero(expr: Any) -> bool:
    return isinstance(expr, sp.ZeroMatrix) or (not is_matrix(expr) and expr == 0)


def ones(rows: Any, cols: Any) -> sp.OneMatrix:
    return sp.OneMatrix(rows, cols)


def zeros(rows: Any, cols: Any) -> sp.ZeroMatrix:
    return sp.ZeroMatrix(rows, cols)


def split_scale(expr: Any) -> tuple[sp.Expr, Any]:
    """``(c, X)`` with ``expr == c * X`` for a scalar c pulled out of a MatMul."""
    if isinstance(expr, sp.MatMul):
        coeff, mats = expr.as_coeff_matrices()
        if coeff != 1:
            return coeff, mats[0] if len(mats) == 1 else sp.MatMul(*mats)
    return sp.Integer(1), expr


def add(*terms: Any) -> Any:
    """The sum of the terms, zeros dropped (a single term is returned as it is)."""
    kept = [t for t in terms if not is_zero(t)]
    if not kept:
        return terms[0]
    if len(kept) == 1:
        return kept[0]
    if is_matrix(kept[0]):
        return sp.MatAdd(*kept)
    return sp.Add(*kept)


def scale(coeff: Any, expr: Any) -> Any:
    """``coeff * expr`` for a scalar ``coeff``."""
    coeff = sp.sympify(coeff)
    if coeff == 0:
        return zeros(*expr.shape) if is_matrix(expr) else sp.Integer(0)
    if coeff == 1 or is_zero(expr):
        return expr
    if not is_matrix(expr):
        return coeff * expr
    inner, rest = split_scale(expr)
    return sp.MatMul(coeff * inner, rest)


def matmul(*factors: Any) -> Any:
    """The matrix product, zeros absorbing and identities dropped."""
    if any(isinstance(f, sp.ZeroMatrix) for f in factors):
        return zeros(factors[0].shape[0], factors[-1].shape[1])
    kept = [f for f in factors if not isinstance(f, sp.Identity)]
    if not kept:
        return factors[0]
    if len(kept) == 1:
        return kept[0]
    return sp.MatMul(*kept)


def hadamard(*factors: Any) -> Any:
    """The elementwise product; all-ones factors dropped, scalars pulled out front."""
    coeff = sp.Integer(1)
    kept = []
    for factor in factors:
        c, rest = split_scale(factor)
        coeff *= c
        if isinstance(rest, sp.ZeroMatrix):
            return rest
        if not isinstance(rest, sp.OneMatrix):
            kept.append(rest)
    if not kept:
        return scale(coeff, ones(*factors[0].shape))
    body = kept[0] if len(kept) == 1 else sp.HadamardProduct(*kept)
    return scale(coeff, body)


class HadamardPower(sp.HadamardPower):  # type: ignore[misc]
    """SymPy's elementwise power, printable by SymPy's ``NumPyPrinter`` and ``lambdify``."""

    def _numpycode(self, printer: Any) -> str:
        power = printer._module_format("numpy.power")
        return f"{power}({printer._print(self.base)}, {printer._print(self.exp)})"


def hadamard_power(base: Any, exp: Any) -> Any:
    if exp == 1:
        return base
    return HadamardPower(base, exp)


def transpose(expr: Any) -> Any:
    if isinstance(expr, sp.Transpose):
        return expr.arg
    if isinstance(expr, (sp.ZeroMatrix, sp.OneMatrix)):
        return type(expr)(expr.shape[1], expr.shape[0])
    return sp.Transpose(expr)


def substitute(expr: Any, mapping: Any) -> Any:
    """``expr`` with ``mapping`` substituted and the zero terms and products dropped.

    Where ``mapping`` sends a symbol to a zero matrix (an adjoint after the last
    step), sums lose the term and products vanish, as the constructors do.
    """
    if isinstance(expr, (sp.MatrixSymbol, sp.Symbol)):
        return mapping.get(expr, expr)
    if not isinstance(expr, sp.Basic) or not expr.args or isinstance(expr, sp.Lambda):
        return expr
    args = [substitute(arg, mapping) for arg in expr.args]
    if isinstance(expr, sp.MatAdd):
        return add(*args)
    if isinstance(expr, sp.MatMul):
        coeff = sp.Mul(*(a for a in args if not is_matrix(a)))
        return scale(coeff, matmul(*(a for a in args if is_matrix(a))))
    if isinstance(expr, sp.HadamardProduct):
        return hadamard(*args)
    if isinstance(expr, sp.HadamardPower) and isinstance(args[0], sp.ZeroMatrix):
        return args[0]
    if isinstance(expr, sp.Transpose):
        return transpose(args[0])
    if any(isinstance(a, sp.ZeroMatrix) for a in args) and not isinstance(
        expr, ElementwiseApplyFunction
    ):
        raise NotImplementedError(f"a zero inside {type(expr).__name__}")
    return expr.func(*args)


def broadcast_bias(bias: Any, layout: str, batch: Any) -> Any:
    """A bias vector (n x 1) added to every example: b 1^T (column layout) or 1 b^T (row)."""
    if layout == "column":
        return sp.MatMul(bias, ones(1, batch))
    return sp.MatMul(ones(batch, 1), sp.Transpose(bias))


def sum_columns(expr: Any, layout: str) -> Any:
    """The gradient of a broadcast bias: the adjoint summed over the examples, as n x 1."""
    rows, cols = expr.shape
    if layout == "column":
        return matmul(expr, ones(cols, 1))
    return matmul(transpose(expr), ones(rows, 1))


class AxisExpr(MatrixExpr):  # type: ignore[misc]
    """A matrix function of ``arg`` over the units along ``axis``, of ``arg``'s shape."""

    def __new__(cls, arg: Any, axis: int) -> AxisExpr:
        return super().__new__(cls, arg, sp.Integer(axis))  # type: ignore[no-any-return]

    @property
    def arg(self) -> Any:
        return self.args[0]

    @property
    def axis(self) -> int:
        return int(self.args[1])

    @property
    def shape(self) -> tuple[Any, Any]:
        return self.args[0].shape  # type: ignore[no-any-return]


class Softmax(AxisExpr):
    """softmax over the output units: along axis 0 (units are rows) or 1 (units are columns).

    A first-class SymPy matrix expression: ``_entry`` gives its entries (so
    ``.as_explicit()`` works), ``_numpycode`` prints it for SymPy's own
    ``NumPyPrinter`` and ``lambdify`` (with the maximum subtracted before
    ``exp``), ``_latex`` for ``sympy.latex`` as the documents write it.
    """

    #: How documents and ``sympy.latex`` write it.
    latex_name = r"\operatorname{softmax}"

    def _entry(self, i: Any, j: Any, **kwargs: Any) -> Any:
        arg, units = self.arg, self.shape[self.axis]
        k = sp.Dummy("k", integer=True)

        def at(u: Any) -> Any:
            return arg._entry(u, j, **kwargs) if self.axis == 0 else arg._entry(i, u, **kwargs)

        if isinstance(units, (int, sp.Integer)):
            total = sp.Add(*(sp.exp(at(u)) for u in range(int(units))))
        else:
            total = sp.Sum(sp.exp(at(k)), (k, 0, units - 1))
        return sp.exp(arg._entry(i, j, **kwargs)) / total

    def _numpycode(self, printer: Any) -> str:
        arg = printer._print(self.arg)
        exp, amax, total = (printer._module_format(f"numpy.{f}") for f in ("exp", "amax", "sum"))
        shifted = f"{exp}({arg} - {amax}({arg}, axis={self.axis}, keepdims=True))"
        return f"({shifted} / {total}({shifted}, axis={self.axis}, keepdims=True))"

    def _latex(self, printer: Any) -> str:
        return rf"{self.latex_name}\left({printer._print(self.arg)}\right)"


class OutputLoss(sp.Expr):  # type: ignore[misc]
    """The loss of one step: sum over examples and units of loss(g(O), Y).

    Arguments: the output pre-activation ``O``, the prediction ``Yhat`` (the
    symbol that holds g(O), used by the gradient rule), the target ``Y``, the
    names of the output layer and the loss, and the axis of the units (0 when
    examples are columns, 1 when they are rows).  A masked model adds
    ``weight``, of the pre-activation's shape: each unit's loss is multiplied
    by it before the sum (0 for a padded step, 1/n for a mean over n real steps).
    """

    is_commutative = True
    is_real = True

    def __new__(
        cls,
        pre: Any,
        pred: Any,
        target: Any,
        output: str | Str,
        loss: str | Str,
        axis: Any,
        weight: Any = None,
    ) -> OutputLoss:
        output, loss = (Str(n) if isinstance(n, str) else n for n in (output, loss))
        extra = () if weight is None else (weight,)
        return super().__new__(  # type: ignore[no-any-return]
            cls, pre, pred, target, output, loss, sp.Integer(axis), *extra
        )

    @property
    def weight(self) -> Any:
        """The per-unit weight of the loss, or None (every unit counts once)."""
        return self.args[6] if len(self.args) > 6 else None

    @property
    def pre(self) -> Any:
        return self.args[0]

    @property
    def pred(self) -> Any:
        return self.args[1]

    @property
    def target(self) -> Any:
        return self.args[2]

    @property
    def output(self) -> str:
        return str(self.args[3].name)

    @property
    def loss(self) -> str:
        return str(self.args[4].name)

    @property
    def axis(self) -> int:
        return int(self.args[5])
