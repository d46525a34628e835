"""Random instances of the model and the evaluation of expressions at them.

Every forward quantity and adjoint is computed by the derivation, in float64 and in
30-digit arithmetic; candidates are evaluated in the same environments."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import mpmath
import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix

from ..core.derive import Derivation
from ..core.evaluate import Evaluator
from ..core.graph import T_SYMBOL
from ..expr import mexpr
from ..expr.exprlang import ExpressionError
from .limits import _MAX_MP_ARGUMENT, _SIZE_FIELDS, DPS
from .work import _Work


class _Undefined(ArithmeticError):
    """The candidate has no finite real value at this point."""


class _Eval(Evaluator):
    """The project's evaluator plus the nodes a candidate may hold."""

    def _compute(self, expr: Any) -> Any:
        if isinstance(expr, DiagMatrix):
            vector = self._eval(expr.args[0])
            flat = list(np.asarray(vector).reshape(-1))
            out = self._filled((len(flat), len(flat)), 0)
            for i, v in enumerate(flat):
                out[i, i] = v
            return out
        if isinstance(expr, sp.HadamardPower) and not sp.sympify(expr.exp).is_Integer:
            base = self._eval(expr.base)
            exp = self._eval(expr.exp)
            return base**exp
        if isinstance(expr, ElementwiseApplyFunction) and self.backend == "mp":
            arg = self._eval(expr.expr)
            for v in np.asarray(arg).reshape(-1):
                if not mpmath.isfinite(v) or abs(v) > _MAX_MP_ARGUMENT:
                    raise _Undefined("an elementwise function's argument is too large")
        return super()._compute(expr)


def _evaluate(expr: Any, env: Mapping[Any, Any], backend: str) -> Any | None:
    """``expr`` at a point (None where it has no finite real value)."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            value = _Eval(env, backend=backend, dps=DPS)(expr)
    except (ArithmeticError, ValueError, TypeError):
        return None  # e.g. log of a negative number, or a complex scalar such as (-1)**0.5
    value = np.asarray(value)
    if value.ndim != 2:
        return None
    if not _finite_real(value, backend):
        return None
    return value


def _finite_real(value: Any, backend: str) -> bool:
    if backend == "float":
        return bool(np.all(np.isfinite(value)))
    for v in value.reshape(-1):
        if isinstance(v, mpmath.mpc):
            if v.imag != 0:
                return False
            v = v.real
        if not mpmath.isfinite(v):
            return False
    return True


def _close(got: Any, expected: Any, rtol: float) -> bool:
    if got is None or expected is None or got.shape != expected.shape:
        return False
    diff = _max_abs(got - expected)
    return diff <= rtol * max(1.0, _max_abs(expected))


def _max_abs(value: Any) -> float:
    if value.size == 0:
        return 0.0
    if value.dtype == object:
        return float(max(abs(v) for v in value.reshape(-1)))
    return float(np.max(np.abs(value)))


def _to_float(value: Any) -> np.ndarray:
    if value.dtype != object:
        return np.asarray(value, dtype=float)
    out = np.empty(value.shape, dtype=float)
    for index, v in np.ndenumerate(value):
        out[index] = float(v.real) if isinstance(v, mpmath.mpc) else float(v)
    return out


class _Point:
    """One random instance: the leaves, and every forward and adjoint value."""

    def __init__(self, work: _Work, leaves: dict[Any, np.ndarray], kind: str) -> None:
        self.work = work
        self.leaves = leaves
        self.kind = kind  # "soft", "one-hot", "same-class", "real", "binary"
        self.env_f = _run(work, leaves, "float")
        self._env_mp: dict[Any, Any] | None = None

    @property
    def has_mp(self) -> bool:
        return self._env_mp is not None

    @property
    def env_mp(self) -> dict[Any, Any]:
        if self._env_mp is None:
            self._env_mp = _run(self.work, self.leaves, "mp")
        return self._env_mp


def _run(work: _Work, leaves: Mapping[Any, np.ndarray], backend: str) -> dict[Any, Any]:
    evaluator = _Eval({}, backend=backend, dps=DPS)
    env: dict[Any, Any] = {}
    with mpmath.workdps(DPS):
        for symbol, value in leaves.items():
            env[symbol] = evaluator.array(value) if backend == "mp" else np.array(value)
        if backend == "mp":
            _normalise_mp_targets(work, env)
    evaluator = _Eval(env, backend=backend, dps=DPS)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        evaluator.run(work.forward)
        evaluator.run(work.d.assignments)
    return evaluator.env


def _normalise_mp_targets(work: _Work, env: dict[Any, Any]) -> None:
    """Make cross-entropy targets sum to exactly one over the units in 30 digits."""
    if work.spec.loss != "cross_entropy":
        return
    column = work.notation.layout == "column"
    for target in work.graph.targets:
        value = env[target]
        if column:
            for j in range(value.shape[1]):
                value[-1, j] = 1 - sum(value[:-1, j])
        else:
            for i in range(value.shape[0]):
                value[i, -1] = 1 - sum(value[i, :-1])


def _shape(symbol: Any) -> tuple[int, int]:
    return int(symbol.shape[0]), int(symbol.shape[1])


def _target_value(
    work: _Work, shape: tuple[int, int], rng: np.random.Generator, kind: str, same_class: int = 0
) -> np.ndarray:
    loss = work.spec.loss
    column = work.notation.layout == "column"
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, size=shape).astype(float)
    if loss == "squared_error":
        return rng.normal(size=shape)
    units_axis = 0 if column else 1
    units = shape[units_axis]
    examples = shape[1 - units_axis]
    if kind == "soft":
        raw = rng.random(size=shape) + 0.1
        return np.asarray(raw / raw.sum(axis=units_axis, keepdims=True))
    out = np.zeros(shape)
    for e in range(examples):
        c = same_class if kind == "same-class" else int(rng.integers(0, units))
        if column:
            out[c, e] = 1.0
        else:
            out[e, c] = 1.0
    return out


def _other_target(
    work: _Work, value: np.ndarray, kind: str, rng: np.random.Generator
) -> np.ndarray:
    """A different target of the same kind (a one-hot class moves to the next unit)."""
    if kind in ("one-hot", "same-class"):
        axis = 0 if work.notation.layout == "column" else 1
        return np.roll(value, 1, axis=axis)
    if kind == "binary":
        return 1.0 - value
    return _target_value(work, value.shape, rng, kind)


def _leaves(
    work: _Work, rng: np.random.Generator, kind: str, same_class: int = 0
) -> dict[Any, np.ndarray]:
    graph = work.graph
    leaves: dict[Any, np.ndarray] = {}
    for symbol in graph.params.values():
        leaves[symbol] = rng.normal(scale=0.5, size=_shape(symbol))
    for symbol in graph.inputs:
        leaves[symbol] = rng.normal(size=_shape(symbol))
    for symbol in graph.targets:
        leaves[symbol] = _target_value(work, _shape(symbol), rng, kind, same_class)
    for initial in graph.initial_inputs.values():
        leaves[initial] = rng.normal(scale=0.5, size=_shape(initial))
    if graph.masks:
        leaves.update(_masks(work, rng))
    return leaves


def _masks(work: _Work, rng: np.random.Generator) -> dict[Any, np.ndarray]:
    """Each step's mask: every example's real steps first, 1 to T of them.

    The first example is padded after its first step when T > 1 (so a padded
    step is always there to be handled), the others get random lengths.
    """
    graph = work.graph
    steps = len(graph.steps)
    batch = work.sizes["batch"]
    lengths = rng.integers(1, steps + 1, size=batch)
    if steps > 1:
        lengths[0] = 1 + int(rng.integers(0, steps - 1))
    out = {}
    for index, symbol in enumerate(graph.masks):
        row = (lengths > index).astype(float)
        out[symbol] = row.reshape(_shape(symbol))
    return out


def _kind(work: _Work, index: int, one_hot: bool) -> str:
    loss = work.spec.loss
    if loss == "cross_entropy":
        return "one-hot" if one_hot or index % 2 == 1 else "soft"
    return "binary" if loss == "binary_cross_entropy" else "real"


@lru_cache(maxsize=16)
def _points_cached(work: _Work, seed: int, count: int, one_hot: bool) -> tuple[_Point, ...]:
    out = []
    for i in range(count):
        kind = _kind(work, i, one_hot)
        rng = np.random.default_rng([seed, i])
        out.append(_Point(work, _leaves(work, rng, kind), kind))
    return tuple(out)


def _points(work: _Work, seed: int, count: int, one_hot: bool = False) -> tuple[_Point, ...]:
    return _points_cached(work, seed, count, one_hot)


def _target(work: _Work, name: str) -> Any:
    return _gradient_symbol(work, name)


def _gradient_symbol(work: _Work, name: str) -> Any:
    for a in work.d.assignments:
        if a.kind == "gradient" and a.param == name:
            return a.target
    raise KeyError(name)  # pragma: no cover - every gradient has its sum


def _prepare(expr: Any) -> Any:
    """Decimal literals as exact rationals (0.1 means 1/10, not the nearest double)."""
    floats = (
        {f: sp.Rational(str(f)) for f in expr.atoms(sp.Float)} if isinstance(expr, sp.Basic) else {}
    )
    return expr.xreplace(floats) if floats else expr


_ALLOWED_NODES: tuple[type, ...] = (
    sp.MatrixSymbol,
    sp.MatAdd,
    sp.MatMul,
    sp.Transpose,
    sp.HadamardProduct,
    sp.HadamardPower,
    ElementwiseApplyFunction,
    mexpr.Softmax,
    DiagMatrix,
    sp.OneMatrix,
    sp.ZeroMatrix,
    sp.Identity,
)


def _from_sympy(work: _Work, orig: Derivation, expr: Any) -> Any:
    """A SymPy candidate on the concrete model: sizes substituted, symbols checked."""
    sizes = orig.graph.symbols.sizes
    mapping: dict[Any, Any] = {
        sizes[key]: sp.Integer(work.sizes[key])
        for key, _ in _SIZE_FIELDS
        if isinstance(sizes[key], sp.Symbol)
    }
    mapping[T_SYMBOL] = sp.Integer(len(work.graph.steps))
    expr = _prepare(expr.xreplace(mapping)) if mapping else _prepare(expr)
    known = set(work.graph.symbols.meta)
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.MatrixSymbol) and node not in known:
            raise ExpressionError(
                f"unknown symbol {node.name} of shape {node.shape} in the candidate: use the "
                f"symbols of derive(spec) (parameters, graph.symbols.series(role, step), delta_t)"
            )
        if mexpr.is_matrix(node) and not isinstance(node, _ALLOWED_NODES):
            raise ExpressionError(
                f"the candidate holds a {type(node).__name__}, which the checker cannot evaluate"
            )
    return expr
