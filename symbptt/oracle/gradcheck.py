"""Numerical verification of a generated gradient module.

Used by the tests, the documents and the command line:

* :func:`random_problem` draws parameters, data and targets a module accepts
  (targets fit the loss: distributions for cross-entropy, 0/1 for binary
  cross-entropy, reals for squared error);
* :func:`finite_difference_errors` compares the module's gradients with central
  finite differences of its own loss, in float64, and returns the largest
  relative error per parameter, for ``X`` and for every initial state (``h0``,
  and ``c0`` for an LSTM: the module's ``STATES``);
* :func:`gradcheck` does the first for a spec (or a module): the summary the
  documents and the command line report;
* :func:`taylor_test` checks, along a random direction ``v``, that the
  remainder ``|L(p + e v) - L(p) - e <g, v>|`` falls like ``e**2`` (slope about
  2 on a log-log scale) and that ``<g, v>`` matches the central difference of
  ``L`` along ``v`` (a directional-derivative test that scales to long
  sequences, where entry-by-entry differences would be slow).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "GradcheckResult",
    "Problem",
    "TaylorResult",
    "cupy_unavailable",
    "finite_difference_errors",
    "gradcheck",
    "initial_arguments",
    "numpy_view",
    "random_problem",
    "relative_error",
    "taylor_test",
]

Array = NDArray[Any]


def initial_arguments(module: ModuleType) -> tuple[str, ...]:
    """The keywords of a module's initial states, in order: ``("h0",)``, ``("h0", "c0")``.

    A composed model's module names them in ``INITIALS`` (state key -> keyword:
    ``{"h_1f": "h0_1f", ...}``).
    """
    if hasattr(module, "INITIALS"):
        return tuple(module.INITIALS.values())
    return tuple(f"{key}0" for key in getattr(module, "STATES", ("h",)))


def _final_key(module: ModuleType, argument: str) -> str:
    """The key of ``state`` holding the final value of the state whose initial is ``argument``."""
    if hasattr(module, "INITIALS"):
        key = next(k for k, v in module.INITIALS.items() if v == argument)
        return f"{key}_T"
    return f"{argument[:-1]}_T"


def cupy_unavailable() -> str | None:
    """None where a CuPy module can run (cupy imports and sees a GPU), else why it cannot,
    in one line."""
    try:
        import cupy
    except ImportError as exc:
        return f"cupy is not installed (pip install 'symbptt[cupy]'): {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # the CUDA runtime raises its own error without a driver
        return f"cupy sees no GPU: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None if count > 0 else "cupy sees no GPU (getDeviceCount() is 0)"


class _NumPyView:
    """A generated torch, JAX or array API module called with NumPy arrays and answering in
    NumPy arrays.

    torch tensors share the arrays' memory (``torch.from_numpy``), so the
    entries :func:`finite_difference_errors` perturbs in place are the ones the
    module reads; JAX arrays are copies made at every call (float64 needs
    ``jax_enable_x64``, which the view sets for the process).
    """

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.back: Any = np.asarray  # an answer's array as a NumPy array
        if getattr(module, "jnp", None) is not None:
            config: Any = module.jax.config  # the module's own jax
            config.update("jax_enable_x64", True)
            self.array: Any = module.jnp.asarray
        elif hasattr(module, "NAMESPACE"):  # an array API module: NumPy's arrays, or CuPy's
            if module.NAMESPACE == "cupy":
                import cupy

                self.array, self.back = cupy.asarray, cupy.asnumpy
            else:
                self.array = np.asarray
        else:
            import torch

            self.array = torch.from_numpy
        for name in ("PARAMETERS", "STATES", "STEPS", "SPEC", "SIZES", "ROLES", "LAYOUT"):
            setattr(self, name, getattr(module, name))
        if hasattr(module, "INITIALS"):  # a composed model's keywords of its initial states
            self.INITIALS = module.INITIALS

    def _tensors(self, params: Mapping[str, Array], X: Array, Y: Array, initial: Any) -> Any:
        tensor = self.array
        states = {k: None if v is None else tensor(v) for k, v in initial.items()}
        return {k: tensor(v) for k, v in params.items()}, tensor(X), tensor(Y), states

    def loss(self, params: Mapping[str, Array], X: Array, Y: Array, **initial: Any) -> float:
        params_t, X_t, Y_t, states = self._tensors(params, X, Y, initial)
        return float(self.module.loss_and_gradients(params_t, X_t, Y_t, **states)[0])

    def loss_and_all_gradients(
        self, params: Mapping[str, Array], X: Array, Y: Array, **initial: Any
    ) -> tuple[float, dict[str, Array], dict[str, Array]]:
        params_t, X_t, Y_t, states = self._tensors(params, X, Y, initial)
        value, gradients, state = self.module.loss_and_all_gradients(params_t, X_t, Y_t, **states)
        as_numpy = {k: self.back(v) for k, v in gradients.items()}
        return float(value), as_numpy, {k: self.back(v) for k, v in state.items()}


def numpy_view(module: ModuleType) -> Any:
    """A generated torch, JAX or array API (CuPy) module seen through NumPy arrays, for
    :func:`finite_difference_errors` (its ``loss`` and ``loss_and_all_gradients``
    take and give arrays)."""
    return _NumPyView(module)


@dataclass
class Problem:
    """Arguments of a generated module's functions: ``params``, ``X``, ``Y`` and the
    initial states ``initial`` (by keyword: ``{"h0": ..., "c0": ...}``; None for zeros)."""

    params: dict[str, Array]
    X: Array
    Y: Array
    initial: dict[str, Array | None] = field(default_factory=dict)
    #: A masked model's mask (T, m): 1 where an example's step is real, its real steps first.
    mask: Array | None = None

    def keywords(self) -> dict[str, Array]:
        """The keywords every call passes besides the initial states: ``mask`` when masked."""
        return {} if self.mask is None else {"mask": self.mask}

    @property
    def h0(self) -> Array | None:
        """The first state's initial value (the only one of a one-state cell)."""
        return next(iter(self.initial.values()), None)

    def args(self) -> tuple[Any, ...]:
        """``(params, X, Y, h0, ...)``: positional arguments of the module's functions."""
        masks = () if self.mask is None else (self.mask,)
        return (self.params, self.X, self.Y, *masks, *self.initial.values())


def random_problem(
    module: ModuleType,
    steps: int | None = None,
    batch: int = 2,
    n_in: int = 3,
    n_hidden: int = 4,
    n_out: int = 3,
    rng: np.random.Generator | int | None = 0,
    dtype: Any = np.float64,
    scale: float = 0.5,
    initial_state: bool = True,
) -> Problem:
    """Random arguments for ``module`` (sizes fixed by its spec win over the ones given).

    Weights and biases are drawn with standard deviation ``scale`` (biases too,
    so that their gradients are tested away from zero), every initial state
    likewise unless ``initial_state`` is False (then each is None: zeros).
    """
    rng = np.random.default_rng(rng)
    sizes = module.SIZES
    n_in = sizes["n_in"] or n_in
    n_hidden = sizes["n_hidden"] or n_hidden
    n_out = sizes["n_out"] or n_out
    batch = sizes["m"] or batch
    steps = module.STEPS or steps or module.SPEC["steps"]
    params = module.init_params(n_in, n_hidden, n_out, rng=rng, dtype=dtype)
    params = {
        name: rng.normal(scale=scale, size=value.shape).astype(dtype)
        for name, value in params.items()
    }
    X = rng.normal(size=(steps, batch, n_in)).astype(dtype)
    shape = (steps, batch, n_out) if module.SPEC["mode"] == "many_to_many" else (batch, n_out)
    loss = module.SPEC["loss"]
    if loss == "cross_entropy":
        raw = rng.random(shape) + 0.1
        Y = raw / raw.sum(axis=-1, keepdims=True)
    elif loss == "binary_cross_entropy":
        Y = (rng.random(shape) < 0.5).astype(float)
    else:
        Y = rng.normal(size=shape)
    sizes = {"n_in": n_in, "n_hidden": n_hidden}
    state_sizes = getattr(module, "STATE_SIZES", {"h": "n_hidden"})
    initial: dict[str, Array | None] = {}
    keys = getattr(module, "INITIALS", None) or {
        key: f"{key}0" for key in getattr(module, "STATES", ("h",))
    }
    for key, argument in keys.items():
        shape = (batch, sizes[state_sizes[key]])
        value = rng.normal(scale=scale, size=shape).astype(dtype) if initial_state else None
        initial[argument] = value
    mask = None
    if module.SPEC.get("masked"):  # random lengths: the first example's T, the last's < T
        lengths = rng.integers(1, steps + 1, size=batch)
        lengths[0] = steps
        if steps > 1 and batch > 1:
            lengths[-1] = min(lengths[-1], steps - 1)
        mask = (np.arange(steps)[:, None] < lengths[None, :]).astype(dtype)
    return Problem(params, X, Y.astype(dtype), initial, mask)


def relative_error(actual: Array, expected: Array, floor: float = 0.0) -> float:
    """``max |actual - expected|`` relative to their largest entry (at least ``floor``)."""
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    scale = max(float(np.abs(expected).max(initial=0.0)), float(np.abs(actual).max(initial=0.0)))
    scale = max(scale, floor)
    if scale == 0.0:
        return 0.0
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


def _central_differences(loss: Any, array: Array, eps: float) -> Array:
    """d loss / d array by central differences, one entry at a time (``array`` is restored)."""
    out = np.zeros_like(array, dtype=float)
    for index in np.ndindex(array.shape):
        old = array[index]
        array[index] = old + eps
        plus = loss()
        array[index] = old - eps
        minus = loss()
        array[index] = old
        out[index] = (plus - minus) / (2 * eps)
    return out


def _initial_values(
    module: ModuleType, params: Mapping[str, Array], X: Array, Y: Array, problem: Problem
) -> dict[str, Array]:
    """Every initial state of ``problem``, zeros (of the state's shape) where it is None."""
    values = {name: problem.initial.get(name) for name in initial_arguments(module)}
    if any(value is None for value in values.values()):
        _, _, state = module.loss_and_all_gradients(params, X, Y, **problem.keywords())
        for name, value in values.items():
            if value is None:
                values[name] = np.zeros_like(state[_final_key(module, name)])
    return {name: value for name, value in values.items() if value is not None}


def finite_difference_errors(
    module: ModuleType, problem: Problem, eps: float = 1e-5
) -> dict[str, float]:
    """Largest relative error of each gradient against central differences (float64).

    Keys: the parameters, ``"X"`` and every initial state (``"h0"``, ``"c0"``, ...;
    those from ``loss_and_all_gradients``).  ``problem`` must be float64.  A
    difference quotient carries rounding noise of about 1e-16 |L| / eps, so
    errors are relative to at least ``1e-4 max(1, |L|)``: a gradient far
    smaller than the loss is compared in absolute terms instead of measuring
    that noise.
    """
    if problem.X.dtype != np.float64:
        raise ValueError(f"problem: expected float64 arrays, got {problem.X.dtype}")
    params, X, Y = problem.params, problem.X, problem.Y
    initial = _initial_values(module, params, X, Y, problem)
    keywords = problem.keywords()
    value, gradients, state = module.loss_and_all_gradients(params, X, Y, **keywords, **initial)
    floor = 1e-4 * max(1.0, abs(value))

    def loss() -> float:
        return float(module.loss(params, X, Y, **keywords, **initial))

    errors = {}
    for name in module.PARAMETERS:
        numeric = _central_differences(loss, params[name], eps)
        errors[name] = relative_error(gradients[name], numeric, floor)
    errors["X"] = relative_error(state["dX"], _central_differences(loss, X, eps), floor)
    for name, array in initial.items():
        numeric = _central_differences(loss, array, eps)
        errors[name] = relative_error(state[f"d{name}"], numeric, floor)
    return errors


@dataclass
class TaylorResult:
    """The outcome of :func:`taylor_test`.

    ``steps`` are the step sizes e, ``remainders`` ``|L(p + e v) - L(p) - e <g, v>|``,
    ``slopes`` the log-log slopes between consecutive steps (about 2 when the
    gradient is right, about 1 when it is wrong), ``directional_error`` the
    relative difference between ``<g, v>`` and the central difference of L
    along v at the middle step.
    """

    steps: list[float]
    remainders: list[float]
    slopes: list[float] = field(default_factory=list)
    directional_error: float = math.nan

    @property
    def slope(self) -> float:
        """The median slope (robust to one step lost in rounding)."""
        return float(np.median(self.slopes)) if self.slopes else math.nan


def taylor_test(
    module: ModuleType,
    problem: Problem,
    rng: np.random.Generator | int | None = 0,
    steps: tuple[float, ...] = (1e-2, 5e-3, 2.5e-3, 1.25e-3, 6.25e-4),
    inputs: bool = True,
) -> TaylorResult:
    """Taylor-remainder and directional-derivative test along a random direction.

    The direction perturbs every parameter and, with ``inputs``, X and every
    initial state too (their gradients from ``loss_and_all_gradients``).
    """
    rng = np.random.default_rng(rng)
    params, X, Y = problem.params, problem.X, problem.Y
    initial = _initial_values(module, params, X, Y, problem)
    keywords = problem.keywords()
    base, gradients, state = module.loss_and_all_gradients(params, X, Y, **keywords, **initial)
    point = {**params, "X": X, **initial}
    grads = {**gradients, "X": state["dX"], **{n: state[f"d{n}"] for n in initial}}
    names = list(params) + (["X", *initial] if inputs else [])
    direction = {name: rng.normal(size=point[name].shape) for name in names}
    slope_along = sum(float(np.sum(grads[n] * direction[n])) for n in names)

    def loss_at(e: float) -> float:
        moved = {n: point[n] + e * direction[n] if n in direction else point[n] for n in point}
        ps = {n: moved[n] for n in params}
        states = {n: moved[n] for n in initial}
        return float(module.loss(ps, moved["X"], Y, **keywords, **states))

    remainders = [abs(loss_at(e) - base - e * slope_along) for e in steps]
    slopes = [
        math.log(remainders[i] / remainders[i + 1]) / math.log(steps[i] / steps[i + 1])
        for i in range(len(steps) - 1)
        if remainders[i] > 0 and remainders[i + 1] > 0
    ]
    middle = steps[len(steps) // 2] * 1e-3
    central = (loss_at(middle) - loss_at(-middle)) / (2 * middle)
    directional = abs(central - slope_along) / max(abs(central), abs(slope_along), 1e-300)
    return TaylorResult(list(steps), remainders, slopes, directional)


@dataclass
class GradcheckResult:
    """The outcome of :func:`gradcheck`: errors by gradient and whether all pass."""

    errors: dict[str, float]
    tolerance: float

    @property
    def max_relative_error(self) -> float:
        return max(self.errors.values())

    @property
    def ok(self) -> bool:
        return self.max_relative_error < self.tolerance


def gradcheck(
    model: Any,
    rng: np.random.Generator | int | None = 0,
    tolerance: float = 1e-6,
    unrolled: bool = False,
    steps: int | None = None,
    batch: int = 2,
) -> GradcheckResult:
    """Central finite differences of the generated module of ``model`` (float64).

    ``model`` is a :class:`~symbptt.model.spec.ModelSpec`, a
    :class:`~symbptt.core.derive.Derivation` or a generated module; ``steps`` (the
    spec's by default) and ``batch`` size the random problem.
    """
    if isinstance(model, ModuleType):
        module = model
    else:
        from ..codegen.emit import emit_numpy, load_module

        module = load_module(emit_numpy(model, unrolled=unrolled))
    problem = random_problem(module, steps=steps, batch=batch, rng=rng)
    return GradcheckResult(finite_difference_errors(module, problem), tolerance)
