"""Row form: every per-step quantity held with one example per row.

Internally the generated code keeps one example per row (time-major data
``X[t]`` is ``x_t^T``).  A column-layout notation (``W x``) is turned into
that row form by transposing its assignments symbolically (:class:`RowForm`),
so both layouts run the same BLAS-friendly code: a column-layout weight
appears as ``W.T``.
"""

from __future__ import annotations

from typing import Any

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from ..core.graph import Assignment, Symbols
from ..expr import mexpr
from .numpy_printer import LogSumExp, flatten_matmul

__all__ = ["RowForm", "push_transposes", "transpose"]


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
        return expr.func(_tr(expr.base), expr.exp)
    if isinstance(expr, ElementwiseApplyFunction):
        return expr.func(expr.function, _tr(expr.expr))
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
        weight = None if expr.weight is None else push_transposes(expr.weight)
        if all(isinstance(e, sp.Transpose) for e in (pre, pred, target)):
            return mexpr.OutputLoss(
                pre.arg,
                pred.arg,
                target.arg,
                expr.output,
                expr.loss,
                1 - expr.axis,
                None if weight is None else _tr(weight),
            )
        return mexpr.OutputLoss(pre, pred, target, expr.output, expr.loss, expr.axis, weight)
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


transpose = _tr
