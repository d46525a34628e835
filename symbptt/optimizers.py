"""Optimizers and gradient clipping: update rules over dicts of NumPy arrays.

* :class:`SGD`, the update of 002_8ce72ce757ab2cde.txt (Step 4:
  θ ← θ − ∂L/∂θ × learning_rate); :class:`Adam`, the optimizer
  001_9533ae6820425de5.txt names; :class:`Adagrad`.  Each updates the
  parameters in place, keeping their dtype.
* :func:`clip_by_value` and :func:`clip_by_norm` (by the global norm of all
  gradients together), the usual cure for exploding gradients.

Their hyperparameters are defined once, here: the documents print the
defaults from these classes, and :mod:`symbptt.train` drives them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
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
    "global_norm",
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
