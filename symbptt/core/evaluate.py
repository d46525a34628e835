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

from ..expr import functions, mexpr

__all__ = ["EVALUATE", "Evaluator", "evaluates"]


def _module(backend: str) -> Any:
    """What ``lambdify`` prints for: "mpmath", or NumPy as the module itself (the name
    "numpy" makes lambdify run ``from numpy import *``, which imports numpy.testing and
    numpy.f2py: 40 ms of every command)."""
    return "mpmath" if backend == "mp" else np


@cache
def _scalar_function(function: sp.Lambda, backend: str) -> Callable[[Any], Any]:
    (var,) = function.variables
    compiled = sp.lambdify(var, function.expr, modules=[_module(backend)])
    if backend == "mp":
        return np.frompyfunc(compiled, 1, 1)  # type: ignore[no-any-return]
    return compiled  # type: ignore[no-any-return]


@cache
def _loss_function(loss: str, backend: str) -> Callable[[Any, Any], Any]:
    definition = functions.LOSSES[loss].definition
    compiled = sp.lambdify((functions.a, functions.y), definition, modules=[_module(backend)])
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
        if expr.is_number:
            if self.backend == "mp":
                return mpmath.mpf(sp.N(expr, self.dps))
            return float(expr)
        return evaluation_for(expr)(self, expr)

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


# ------------------------------------------------------------------------------ the table
Evaluation = Callable[[Evaluator, Any], Any]

#: The evaluation table: SymPy node class -> its value from its children's (the
#: counterpart of :data:`symbptt.core.rules.VJP`; ``tests/test_ops.py`` checks that every op
#: with a rule has an evaluation and a printing in every printer).
EVALUATE: dict[type, Evaluation] = {}


def evaluates(*types: type) -> Callable[[Evaluation], Evaluation]:
    """Register an evaluation for the given node classes."""

    def register(evaluation: Evaluation) -> Evaluation:
        for cls in types:
            EVALUATE[cls] = evaluation
        return evaluation

    return register


def evaluation_for(expr: Any) -> Evaluation:
    """The table's entry for ``expr``'s class or the nearest base class that has one."""
    for cls in type(expr).__mro__:
        if cls in EVALUATE:
            return EVALUATE[cls]
    raise TypeError(f"no evaluation for {type(expr).__name__!r}")


@evaluates(sp.OneMatrix)
def _ones(ev: Evaluator, expr: Any) -> Any:
    return ev._filled(expr.shape, 1)


@evaluates(sp.ZeroMatrix)
def _zeros(ev: Evaluator, expr: Any) -> Any:
    return ev._filled(expr.shape, 0)


@evaluates(sp.Identity)
def _identity(ev: Evaluator, expr: Any) -> Any:
    n = ev._size(expr.shape[0])
    out = ev._filled((n, n), 0)
    for i in range(n):
        out[i, i] = out[i, i] + 1
    return out


@evaluates(sp.MatAdd, sp.Add)
def _sum(ev: Evaluator, expr: Any) -> Any:
    values = [ev._eval(arg) for arg in expr.args]
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


@evaluates(sp.MatMul)
def _matmul(ev: Evaluator, expr: Any) -> Any:
    coeff, mats = expr.as_coeff_matrices()
    value = ev._eval(mats[0])
    for m in mats[1:]:
        value = np.dot(value, ev._eval(m))
    return ev._eval(coeff) * value if coeff != 1 else value


@evaluates(sp.Mul, sp.HadamardProduct)
def _product(ev: Evaluator, expr: Any) -> Any:
    value = ev._eval(expr.args[0])
    for arg in expr.args[1:]:
        value = value * ev._eval(arg)
    return value


@evaluates(sp.Pow)
def _power(ev: Evaluator, expr: Any) -> Any:
    return ev._eval(expr.base) ** ev._eval(expr.exp)


@evaluates(sp.Transpose)
def _transpose(ev: Evaluator, expr: Any) -> Any:
    return ev._eval(expr.arg).T


@evaluates(sp.HadamardPower)
def _hadamard_power(ev: Evaluator, expr: Any) -> Any:
    base, exp = ev._eval(expr.base), int(expr.exp)
    return base**exp if exp >= 0 else 1 / base ** (-exp)


@evaluates(ElementwiseApplyFunction)
def _elementwise(ev: Evaluator, expr: Any) -> Any:
    return _scalar_function(expr.function, ev.backend)(ev._eval(expr.expr))


@evaluates(mexpr.Softmax)
def _softmax(ev: Evaluator, expr: Any) -> Any:
    return ev._softmax(ev._eval(expr.arg), expr.axis)


@evaluates(mexpr.OutputLoss)
def _output_loss(ev: Evaluator, expr: Any) -> Any:
    return ev._output_loss(expr)
