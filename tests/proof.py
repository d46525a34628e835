"""Compare a derivation with the scalar oracle at one random point."""

from __future__ import annotations

from typing import Any

import mpmath
import numpy as np
import sympy as sp

import symbptt
from symbptt.evaluate import Evaluator
from symbptt.notation import NOTATIONS

from . import oracle


def derivation_env(d: symbptt.Derivation, values: dict[str, Any]) -> dict[Any, Any]:
    """Evaluator env (mp backend) for the derivation's leaves from oracle values."""
    graph = d.graph
    ev = Evaluator({}, backend="mp", dps=oracle.DPS)

    def arr(matrix: sp.Matrix) -> Any:
        return ev.array(np.array([[mpmath.mpf(str(v)) for v in row] for row in matrix.tolist()], dtype=object))

    env: dict[Any, Any] = {}
    for name, symbol in graph.params.items():
        env[symbol] = arr(values[name])
    for symbol, value in zip(graph.inputs, values["x"]):
        env[symbol] = arr(value)
    for symbol, value in zip(graph.targets, values["y"]):
        env[symbol] = arr(value)
    if d.spec.initial_state == "input":
        env[graph.initial] = arr(values["h0"])
    for key, size in graph.symbols.sizes.items():
        if isinstance(size, sp.Symbol):
            env[size] = getattr(d.spec, key)
    return env


def max_relative_error(spec: symbptt.ModelSpec, rng: np.random.Generator, names: list[str] | None = None) -> float:
    """Max over every entry of every gradient of |derived - diff| / max(1, |diff|)."""
    with mpmath.workdps(oracle.DPS):
        return _max_relative_error(spec, rng, names)


def _max_relative_error(spec: symbptt.ModelSpec, rng: np.random.Generator, names: list[str] | None) -> float:
    d = symbptt.derive(spec)
    values = oracle.random_values(spec, rng)
    env = derivation_env(d, values)
    notation = NOTATIONS[spec.notation]
    key_of = {p.ascii: p.ascii for p in notation.params}
    key_of[notation.initial_ascii] = "h0"
    worst = 0.0
    w = sp.Symbol("w")
    for name in names or list(d.gradients):
        ev = Evaluator(env, backend="mp", dps=oracle.DPS)
        derived = ev(d.gradient(name, expand=True))
        original = values[key_of[name]]
        rows, cols = original.shape
        for i in range(rows):
            for j in range(cols):
                probe = dict(values)
                changed = original.copy()
                changed[i, j] = w
                probe[key_of[name]] = changed
                loss = oracle.scalar_loss(spec, probe)
                exact = sp.diff(loss, w).xreplace({w: original[i, j]}).evalf(oracle.DPS)
                got = derived[i, j] if hasattr(derived, "shape") else derived
                err = abs(mpmath.mpf(str(exact)) - got) / max(1, abs(mpmath.mpf(str(exact))))
                worst = max(worst, float(err))
    return worst
