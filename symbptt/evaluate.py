"""Numbers for symbols: evaluate the graph and the derivation at a point.

An independent, small interpreter of the matrix expressions the derivation
builds, used by the proofs and the checker (SymPy's own ``doit`` does not
evaluate elementwise functions of explicit matrices).  Two backends:

* ``"float"``: NumPy float64 arrays;
* ``"mp"``: NumPy object arrays of mpmath numbers at ``dps`` significant digits.

Scalar functions are taken from their SymPy definitions with ``lambdify``
(on the project's own definitions, never on user text).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import mpmath
import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from . import functions, mexpr

__all__ = ["Evaluator"]


@cache
def _scalar_function(function: sp.Lambda, backend: str) -> Callable[[Any], Any]:
    (var,) = function.variables
    module = "mpmath" if backend == "mp" else "numpy"
    compiled = sp.lambdify(var, function.expr, modules=[module])
    if backend == "mp":
        return np.frompyfunc(compiled, 1, 1)  # type: ignore[no-any-return]
    return compiled  # type: ignore[no-any-return]


@cache
def _loss_function(loss: str, backend: str) -> Callable[[Any, Any], Any]:
    definition = functions.LOSSES[loss].definition
    module = "mpmath" if backend == "mp" else "numpy"
    compiled = sp.lambdify((functions.a, functions.y), definition, modules=[module])
    if backend == "mp":
        return np.frompyfunc(compiled, 2, 1)  # type: ignore[no-any-return]
    return compiled  # type: ignore[no-any-return]


class Evaluator:
    """Evaluate expressions given values for their symbols.

    ``env`` maps SymPy symbols (MatrixSymbols, loss Symbols, size Symbols) to
    numbers or arrays.  Results are memoised per expression object, so an
    expanded gradient with shared subtrees is evaluated in linear time.
    """

    def __init__(self, env: Mapping[Any, Any], backend: str = "float", dps: int = 30) -> None:
        if backend not in ("float", "mp"):
            raise ValueError(f"backend: got {backend!r}; expected 'float' or 'mp'")
        self.backend = backend
        self.dps = dps
        self.env: dict[Any, Any] = dict(env)
        self._memo: dict[Any, Any] = {}

    # -- numbers ------------------------------------------------------------------
    def array(self, values: Any) -> Any:
        """``values`` as an array of this backend (for the env)."""
        if self.backend == "float":
            return np.asarray(values, dtype=float)
        with mpmath.workdps(self.dps):
            return np.vectorize(mpmath.mpf, otypes=[object])(np.asarray(values))

    def _size(self, value: Any) -> int:
        value = sp.sympify(value).xreplace(
            {k: v for k, v in self.env.items() if isinstance(k, sp.Symbol)}
        )
        return int(value)

    def _filled(self, shape: tuple[Any, Any], fill: int) -> Any:
        rows, cols = self._size(shape[0]), self._size(shape[1])
        if self.backend == "float":
            return np.full((rows, cols), float(fill))
        out = np.empty((rows, cols), dtype=object)
        out.fill(mpmath.mpf(fill))
        return out

    # -- evaluation ---------------------------------------------------------------
    def run(self, assignments: Any) -> None:
        """Evaluate assignments in order, storing each target's value."""
        with mpmath.workdps(self.dps):
            for assignment in assignments:
                self.env[assignment.target] = self._eval(assignment.expr)

    def __call__(self, expr: Any) -> Any:
        with mpmath.workdps(self.dps):
            return self._eval(expr)

    def _eval(self, expr: Any) -> Any:
        if expr in self.env:
            return self.env[expr]
        if expr in self._memo:
            return self._memo[expr]
        value = self._compute(expr)
        self._memo[expr] = value
        return value

    def _compute(self, expr: Any) -> Any:
        if isinstance(expr, (sp.MatrixSymbol, sp.Symbol)):
            raise KeyError(f"no value for symbol {expr.name!r}")
        if isinstance(expr, sp.OneMatrix):
            return self._filled(expr.shape, 1)
        if isinstance(expr, sp.ZeroMatrix):
            return self._filled(expr.shape, 0)
        if isinstance(expr, sp.Identity):
            n = self._size(expr.shape[0])
            out = self._filled((n, n), 0)
            for i in range(n):
                out[i, i] = out[i, i] + 1
            return out
        if expr.is_number:
            if self.backend == "mp":
                return mpmath.mpf(sp.N(expr, self.dps))
            return float(expr)
        if isinstance(expr, (sp.MatAdd, sp.Add)):
            values = [self._eval(arg) for arg in expr.args]
            total = values[0]
            for v in values[1:]:
                total = total + v
            return total
        if isinstance(expr, sp.MatMul):
            coeff, mats = expr.as_coeff_matrices()
            value = self._eval(mats[0])
            for m in mats[1:]:
                value = np.dot(value, self._eval(m))
            return self._eval(coeff) * value if coeff != 1 else value
        if isinstance(expr, sp.Mul):
            value = self._eval(expr.args[0])
            for arg in expr.args[1:]:
                value = value * self._eval(arg)
            return value
        if isinstance(expr, sp.Pow):
            return self._eval(expr.base) ** self._eval(expr.exp)
        if isinstance(expr, sp.Transpose):
            return self._eval(expr.arg).T
        if isinstance(expr, sp.HadamardProduct):
            value = self._eval(expr.args[0])
            for arg in expr.args[1:]:
                value = value * self._eval(arg)
            return value
        if isinstance(expr, sp.HadamardPower):
            base, exp = self._eval(expr.base), int(expr.exp)
            return base**exp if exp >= 0 else 1 / base ** (-exp)
        if isinstance(expr, ElementwiseApplyFunction):
            return _scalar_function(expr.function, self.backend)(self._eval(expr.expr))
        if isinstance(expr, mexpr.Softmax):
            return self._softmax(self._eval(expr.arg), expr.axis)
        if isinstance(expr, mexpr.OutputLoss):
            return self._output_loss(expr)
        raise TypeError(f"cannot evaluate {type(expr).__name__}")

    def _softmax(self, values: Any, axis: int) -> Any:
        exp = np.exp if self.backend == "float" else np.frompyfunc(mpmath.exp, 1, 1)
        shifted = values - values.max(axis=axis, keepdims=True)
        e = exp(shifted)
        return e / e.sum(axis=axis, keepdims=True)

    def _output_loss(self, expr: mexpr.OutputLoss) -> Any:
        """The loss from its definitions: prediction g(O), then the unit loss, summed."""
        pre = self._eval(expr.pre)
        output = functions.OUTPUTS[expr.output]
        if isinstance(output, functions.SoftmaxOutput):
            pred = self._softmax(pre, expr.axis)
        else:
            pred = _scalar_function(output.function, self.backend)(pre)
        units = _loss_function(expr.loss, self.backend)(pred, self._eval(expr.target))
        if expr.weight is not None:
            units = units * self._eval(expr.weight)
        return units.sum()
