"""Training with the generated gradients: optimizers, clipping, truncated BPTT.

Everything here works on plain dicts of NumPy arrays, the parameters a
generated module's ``init_params`` returns and the gradients its
``loss_and_gradients`` returns (see :func:`symbptt.emit_numpy`), so a user
can drive a generated module with these or with their own loop.

* :class:`SGD`, the update of 002_8ce72ce757ab2cde.txt (Step 4:
  θ ← θ − ∂L/∂θ × learning_rate); :class:`Adam`, the optimizer
  001_9533ae6820425de5.txt names; :class:`Adagrad`.  Each updates the
  parameters in place, keeping their dtype.
* :func:`clip_by_value` and :func:`clip_by_norm` (by the global norm of all
  gradients together), the usual cure for exploding gradients.
* :func:`truncated_bptt`: the loss and gradients over windows of k steps,
  every state of the cell (h; h and c for an LSTM) carried from one window to
  the next.
* :func:`gradient_norms`: ‖∂L_T/∂h_k‖ against k, the vanishing/exploding
  gradient picture, from the generated code's gradient with respect to the
  initial value of the state the output layer reads (h0).
* :func:`fit`: a small training loop over all of these.

Truncated BPTT
--------------
Full BPTT differentiates the loss of all T steps through all T steps.
Truncated BPTT with window ``k`` cuts the sequence into windows of k steps
(the last may be shorter).  Each window runs forward from the states the
previous window ended in (``h0`` and, for a cell of several states such as
the LSTM, ``c0``, ... of the generated module's ``loss_and_all_gradients``,
whose ``state["h_T"]``, ``state["c_T"]``, ... are the final states), so the
forward pass and the loss are exactly those of the whole sequence; but the
backward pass of a window stops at its first step: the states it starts from
are treated as constants, and ∂L/∂h at a window's start is dropped.  The
parameter gradients are the sum of the windows' (weighted by the window's
share of the steps when the loss is the mean over time).  With
``k >= T`` there is one window, and it is full BPTT.  For many-to-one
models only the last window has a loss; the earlier ones only carry the state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, MutableMapping
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "Optimizer",
    "clip_by_norm",
    "clip_by_value",
    "fit",
    "global_norm",
    "gradient_norms",
    "last_step_module",
    "truncated_bptt",
]

Array = NDArray[Any]
Arrays = Mapping[str, Array]


def _check_grads(params: Mapping[str, Array], grads: Arrays) -> None:
    missing = [name for name in params if name not in grads]
    if missing:
        raise KeyError(
            f"no gradient for parameter(s) {', '.join(missing)}; got gradients for "
            f"{', '.join(grads) or 'nothing'}"
        )
    for name, value in params.items():
        if np.shape(grads[name]) != np.shape(value):
            raise ValueError(
                f"gradient of {name}: shape {np.shape(grads[name])} does not match the "
                f"parameter's shape {np.shape(value)}"
            )


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: got {value!r}; expected a positive number")
    return float(value)


class Optimizer:
    """Updates parameters in place from their gradients: ``opt.step(params, grads)``.

    Only the names in ``params`` are updated; every one must have a gradient
    of its shape (extra gradients, e.g. for the initial state, are ignored).
    """

    def step(self, params: MutableMapping[str, Array], grads: Arrays) -> None:
        _check_grads(params, grads)
        for name, value in params.items():
            update = np.asarray(self._update(name, grads[name]), dtype=value.dtype)
            if isinstance(value, np.ndarray) and value.flags.writeable:
                value -= update
            else:
                params[name] = value - update

    def _update(self, name: str, grad: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError


class SGD(Optimizer):
    """Plain gradient descent, 002's Step 4: ``θ ← θ − (∂L/∂θ) × learning_rate``."""

    def __init__(self, lr: float = 0.1) -> None:
        self.lr = _positive("lr", lr)

    def _update(self, name: str, grad: Array) -> Array:
        return self.lr * grad

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr:g})"


class Adam(Optimizer):
    """Adam (Kingma & Ba), with bias correction.

    ``m ← β1 m + (1 − β1) g``, ``v ← β2 v + (1 − β2) g²``,
    ``θ ← θ − lr · m̂ / (√v̂ + ε)`` with ``m̂ = m / (1 − β1^k)``, ``v̂ = v / (1 − β2^k)``
    at the k-th step.
    """

    def __init__(
        self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        self.lr = _positive("lr", lr)
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name}: got {beta!r}; expected a number in [0, 1)")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = _positive("eps", eps)
        self.m: dict[str, Array] = {}
        self.v: dict[str, Array] = {}
        self.steps = 0

    def step(self, params: MutableMapping[str, Array], grads: Arrays) -> None:
        self.steps += 1
        super().step(params, grads)

    def _update(self, name: str, grad: Array) -> Array:
        m = self.m.setdefault(name, np.zeros_like(grad))
        v = self.v.setdefault(name, np.zeros_like(grad))
        m *= self.beta1
        m += (1.0 - self.beta1) * grad
        v *= self.beta2
        v += (1.0 - self.beta2) * grad * grad
        m_hat = m / (1.0 - self.beta1**self.steps)
        v_hat = v / (1.0 - self.beta2**self.steps)
        return self.lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def __repr__(self) -> str:
        return f"Adam(lr={self.lr:g}, beta1={self.beta1:g}, beta2={self.beta2:g})"


class Adagrad(Optimizer):
    """Adagrad: ``G ← G + g²``, ``θ ← θ − lr · g / (√G + ε)`` (min-char-rnn trains with it)."""

    def __init__(self, lr: float = 0.1, eps: float = 1e-8) -> None:
        self.lr = _positive("lr", lr)
        self.eps = _positive("eps", eps)
        self.sum_squares: dict[str, Array] = {}

    def _update(self, name: str, grad: Array) -> Array:
        g2 = self.sum_squares.setdefault(name, np.zeros_like(grad))
        g2 += grad * grad
        return self.lr * grad / (np.sqrt(g2) + self.eps)

    def __repr__(self) -> str:
        return f"Adagrad(lr={self.lr:g})"


# -- clipping -----------------------------------------------------------------------
def global_norm(grads: Arrays) -> float:
    """The L2 norm of all gradients taken together (√Σ ‖g‖²)."""
    return math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))


def clip_by_value(grads: Arrays, limit: float) -> dict[str, Array]:
    """Every entry clipped to ``[-limit, limit]`` (new arrays; the input is not changed)."""
    limit = _positive("limit", limit)
    return {name: np.clip(g, -limit, limit) for name, g in grads.items()}


def clip_by_norm(grads: Arrays, max_norm: float) -> dict[str, Array]:
    """All gradients scaled together so that their :func:`global_norm` is at most ``max_norm``.

    The direction of the whole gradient is kept; when the norm is already
    within bounds the gradients come back unchanged (as copies).
    """
    max_norm = _positive("max_norm", max_norm)
    norm = global_norm(grads)
    scale = max_norm / norm if norm > max_norm else 1.0
    return {name: (g * scale).astype(g.dtype, copy=False) for name, g in grads.items()}


# -- truncated BPTT -------------------------------------------------------------------
def _spec_field(module: ModuleType, name: str) -> Any:
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, dict) or name not in spec:
        raise TypeError(
            "module: expected a module generated by symbptt.emit_numpy (with SPEC), "
            f"got {getattr(module, '__name__', module)!r}"
        )
    return spec[name]


def _windows(steps: int, k: int) -> list[tuple[int, int]]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: got {k!r}; expected a window length >= 1")
    return [(start, min(start + int(k), steps)) for start in range(0, steps, int(k))]


def _states(module: ModuleType) -> tuple[str, ...]:
    """The module's states (``STATES``; a module without it has the one state h)."""
    states: tuple[str, ...] = tuple(getattr(module, "STATES", ("h",)))
    return states


def _initial(
    module: ModuleType, h0: Array | None, initial: Mapping[str, Array | None]
) -> dict[str, Array | None]:
    """The module's initial-state keywords (``h0``, ``c0``, ...) with their values."""
    names = [f"{key}0" for key in _states(module)]
    unknown = sorted(set(initial) - set(names[1:]))
    if unknown:
        raise TypeError(
            f"unexpected initial state(s) {', '.join(unknown)}; this module takes "
            f"{', '.join(names)}"
        )
    values: dict[str, Array | None] = {names[0]: h0}
    values.update({name: initial.get(name) for name in names[1:]})
    return values


def _final(module: ModuleType, state: Mapping[str, Array]) -> dict[str, Array]:
    """The final states of ``loss_and_all_gradients``'s ``state``, as initial-state keywords."""
    return {f"{key}0": state[f"{key}_T"] for key in _states(module)}


def truncated_bptt(
    module: ModuleType,
    params: Mapping[str, Array],
    X: Array,
    Y: Array,
    k: int,
    h0: Array | None = None,
    **initial: Array | None,
) -> tuple[float, dict[str, Array], Any]:
    """Loss and gradients by truncated BPTT over windows of ``k`` steps.

    ``module`` is a generated gradient module (rolled, so that windows of any
    length work); ``X`` (T, m, n_in), ``Y`` and the initial states (``h0``,
    and ``c0``, ... for a cell of several states; None for zeros) as for its
    ``loss_and_gradients``.  Returns ``(loss, gradients, final)``: the loss of
    the whole sequence (equal to the module's ``loss``), the truncated
    gradients, and the final state: for a cell of one state its final value
    (m, n_hidden), which a caller passes as ``h0`` to carry the state on into
    the next sequence (stateful training over a long text); for a cell of
    several states a dict of every final state by initial-state keyword
    (``{"h0": h_T, "c0": c_T}``), passed on as ``**final``.  With ``k >= T``
    this is full BPTT.
    """
    mode = _spec_field(module, "mode")
    mean_over_time = _spec_field(module, "time_reduction") == "mean"
    steps = int(np.shape(X)[0])
    windows = _windows(steps, k)
    total = 0.0
    grads: dict[str, Array] = {}
    carried: Mapping[str, Array | None] = _initial(module, h0, initial)
    for start, stop in windows:
        last = stop == steps
        if mode == "many_to_one" and not last:
            carried = _advance(module, params, X[start:stop], carried)
            continue
        window_y = Y if mode == "many_to_one" else Y[start:stop]
        value, window_grads, state = module.loss_and_all_gradients(
            params, X[start:stop], window_y, **carried
        )
        weight = (stop - start) / steps if mean_over_time and mode == "many_to_many" else 1.0
        total += weight * float(value)
        for name, grad in window_grads.items():
            scaled = grad * weight if weight != 1.0 else grad
            grads[name] = grads[name] + scaled if name in grads else np.array(scaled, copy=True)
        carried = _final(module, state)
    if len(carried) == 1:
        return total, grads, next(iter(carried.values()))
    return total, grads, dict(carried)


def _advance(
    module: ModuleType,
    params: Mapping[str, Array],
    X: Array,
    initial: Mapping[str, Array | None],
) -> dict[str, Any]:
    """Every state after running ``X`` from ``initial`` (a many-to-one window without a loss).

    The generated module returns the final states with the gradients; the
    target only shapes the (discarded) loss, and the states do not depend on
    it, so the module's own predictions serve: a valid target for every loss
    (a cross-entropy target must sum to one over the units).
    """
    predictions, _ = module.forward(params, X, **initial)
    _, _, state = module.loss_and_all_gradients(params, X, predictions, **initial)
    return _final(module, state)


# -- the vanishing / exploding gradient picture ---------------------------------------
@cache
def _last_step_module(spec_items: tuple[tuple[str, Any], ...]) -> ModuleType:
    from .emit import emit_numpy, load_module
    from .spec import ModelSpec

    spec = dataclasses.replace(ModelSpec(**dict(spec_items)), mode="many_to_one")
    return load_module(emit_numpy(spec))


def last_step_module(module: ModuleType) -> ModuleType:
    """The generated module of the same model whose loss is the last step's only (L_T).

    A many-to-one module is its own; for a many-to-many one the many-to-one
    version of its spec is derived and emitted (once per spec).  The
    parameters are the same.
    """
    if _spec_field(module, "mode") == "many_to_one":
        return module
    spec: dict[str, Any] = dict(module.SPEC)
    return _last_step_module(tuple(sorted(spec.items())))


def gradient_norms(
    module: ModuleType,
    params: Mapping[str, Array],
    X: Array,
    Y: Array,
    h0: Array | None = None,
    **initial: Array | None,
) -> Array:
    """‖∂L_T/∂h_k‖ for k = 0, 1, ..., T−1: how far back the last step's loss reaches.

    ``L_T`` is the loss of the last step alone (reduced over the batch as the
    spec says), ``h_k`` the value after k steps of the state the output layer
    reads (the module's ``READOUT``; ``h_0`` its initial value; the first state
    when the output reads an intermediate quantity) and the norm the Frobenius
    norm over the batch.  Each value is the generated code's gradient with
    respect to that state's initial value: the many-to-one version of the
    model (:func:`last_step_module`) run on steps k+1..T from the states after
    k steps (every state carried; the others held fixed).  A curve that falls
    geometrically as k moves away from T is the vanishing gradient; one that
    grows, exploding.

    ``Y`` is the module's target: (T, m, n_out) for many-to-many (its last
    step is used) or (m, n_out) for many-to-one; the initial states (``h0``,
    ``c0``, ...) as for the module.  Returns an array of T floats.
    """
    last = last_step_module(module)
    steps = int(np.shape(X)[0])
    target = Y if _spec_field(module, "mode") == "many_to_one" else Y[-1]
    states = _states(module)
    readout = getattr(module, "READOUT", states[0])
    key = readout if readout in states else states[0]
    # the states after 0 .. T-1 steps, one step at a time
    carried: Mapping[str, Array | None] = _initial(module, h0, initial)
    history = [carried]
    for step in range(steps - 1):
        carried = _advance(last, params, X[step : step + 1], carried)
        history.append(carried)
    norms = np.empty(steps)
    for k, at_k in enumerate(history):
        _, _, state = last.loss_and_all_gradients(params, X[k:], target, **at_k)
        norms[k] = float(np.linalg.norm(np.asarray(state[f"d{key}0"], dtype=np.float64)))
    return norms


# -- a training loop -------------------------------------------------------------------
def fit(
    module: ModuleType,
    params: MutableMapping[str, Array],
    X: Array,
    Y: Array,
    *,
    optimizer: Optimizer | None = None,
    iterations: int = 100,
    h0: Array | None = None,
    truncate: int | None = None,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    callback: Callable[[int, float, Mapping[str, Array]], None] | None = None,
    **initial: Array | None,
) -> list[float]:
    """Train ``params`` in place on one sequence; returns the loss before each update.

    Each iteration: the loss and gradients (full BPTT, or :func:`truncated_bptt`
    with windows of ``truncate`` steps), optional clipping (by value, then by
    global norm), then ``optimizer.step`` (default :class:`Adam`).
    ``callback(iteration, loss, grads)`` runs after each step (1-based).
    ``h0`` and, for a cell of several states, ``c0``, ... are the initial
    states (None for zeros).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations: got {iterations!r}; expected an integer >= 0")
    optimizer = optimizer if optimizer is not None else Adam()
    start = _initial(module, h0, initial)
    first, *others = start
    rest = {name: start[name] for name in others}
    losses: list[float] = []
    for iteration in range(1, iterations + 1):
        if truncate is None:
            value, grads = module.loss_and_gradients(params, X, Y, **start)
        else:
            value, grads, _ = truncated_bptt(module, params, X, Y, truncate, start[first], **rest)
        if clip_value is not None:
            grads = clip_by_value(grads, clip_value)
        if clip_norm is not None:
            grads = clip_by_norm(grads, clip_norm)
        losses.append(float(value))
        optimizer.step(params, grads)
        if callback is not None:
            callback(iteration, float(value), grads)
    return losses
