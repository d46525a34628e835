"""The scalar oracle: the fully explicit, unrolled loss, built entry by entry.

This is written independently of the derivation: it composes the spec's
definitions (activation, output, loss: the single source of truth) on
explicit SymPy matrices whose entries are numbers or symbols, and lets
``sympy.diff`` differentiate the result.  :func:`scalar_proof` compares every
entry of every derived gradient with it, at 30 significant digits.

Scalar differentiation grows about exponentially with T: use small sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mpmath
import numpy as np
import sympy as sp

from . import functions
from .derive import Derivation, derive
from .evaluate import Evaluator
from .notation import NOTATIONS
from .spec import ModelSpec

__all__ = ["DPS", "ScalarProof", "random_values", "scalar_loss", "scalar_proof"]

DPS = 30


def _apply(definition: sp.Expr, matrix: sp.Matrix) -> sp.Matrix:
    return matrix.applyfunc(lambda v: definition.xreplace({functions.z: v}))


def _softmax(matrix: sp.Matrix, axis: int) -> sp.Matrix:
    out = sp.zeros(*matrix.shape)
    output = functions.SoftmaxOutput()
    if axis == 0:
        for j in range(matrix.shape[1]):
            column = output.definition_of(list(matrix[:, j]))
            for i, v in enumerate(column):
                out[i, j] = v
    else:
        for i in range(matrix.shape[0]):
            row = output.definition_of(list(matrix[i, :]))
            for j, v in enumerate(row):
                out[i, j] = v
    return out


def _sizes(spec: ModelSpec) -> tuple[int, int, int, int]:
    """(n_in, n_hidden, n_out, batch); the scalar oracle needs them concrete."""
    sizes = (spec.n_in, spec.n_hidden, spec.n_out, spec.batch)
    if any(size is None for size in sizes):
        raise ValueError(
            "the scalar oracle needs concrete sizes: set n_in, n_hidden, n_out and batch "
            f"(got {sizes})"
        )
    return sizes  # type: ignore[return-value]


def scalar_loss(spec: ModelSpec, values: dict[str, Any]) -> sp.Expr:
    """The loss of ``spec`` with explicit matrices ``values`` (by ASCII name; x/y as lists)."""
    notation = NOTATIONS[spec.notation]
    column = notation.layout == "column"
    p: dict[str, Any] = {param.role: values.get(param.ascii) for param in notation.params}
    hidden = functions.ACTIVATIONS[spec.hidden].definition
    xs, ys = values["x"], values["y"]
    _, n1, _, m = _sizes(spec)
    h = values.get("h0")
    if h is None:
        h = sp.zeros(n1, m) if column else sp.zeros(m, n1)
    losses = []
    steps = spec.steps
    loss_def = functions.LOSSES[spec.loss].definition
    for k in range(steps):
        if column:
            z = p["recurrent_weight"] * h + p["input_weight"] * xs[k]
            if spec.bias:
                z += p["hidden_bias"] * sp.ones(1, m)
        else:
            z = h * p["recurrent_weight"] + xs[k] * p["input_weight"]
            if spec.bias:
                z += sp.ones(m, 1) * p["hidden_bias"].T
        h = _apply(hidden, z)
        if spec.mode == "many_to_one" and k != steps - 1:
            continue
        if column:
            o = p["output_weight"] * h
            if spec.bias:
                o += p["output_bias"] * sp.ones(1, m)
        else:
            o = h * p["output_weight"]
            if spec.bias:
                o += sp.ones(m, 1) * p["output_bias"].T
        if spec.output == "softmax":
            pred = _softmax(o, 0 if column else 1)
        else:
            pred = _apply(functions.OUTPUTS[spec.output].definition, o)
        target = ys[k] if spec.mode == "many_to_many" else ys[0]
        losses.append(
            sp.Add(
                *(
                    loss_def.xreplace({functions.a: pred[i, j], functions.y: target[i, j]})
                    for i in range(pred.shape[0])
                    for j in range(pred.shape[1])
                )
            )
        )
    total = sp.Add(*losses)
    if spec.time_reduction == "mean":
        total = total / len(losses)
    if spec.batch_reduction == "mean":
        total = total / m
    return total


def random_values(spec: ModelSpec, rng: np.random.Generator) -> dict[str, Any]:
    """Random 30-digit values for every matrix of the model, keyed by ASCII name."""
    notation = NOTATIONS[spec.notation]
    column = notation.layout == "column"
    n0, n1, n2, m = _sizes(spec)

    def mat(rows: int, cols: int, scale: float = 0.6) -> sp.Matrix:
        data = rng.normal(scale=scale, size=(rows, cols))
        return sp.Matrix(rows, cols, [sp.Float(repr(float(v)), DPS) for v in data.ravel()])

    def shaped(units: int) -> tuple[int, int]:
        return (units, m) if column else (m, units)

    shapes: dict[str, tuple[int, int]] = {
        "input_weight": (n1, n0) if column else (n0, n1),
        "recurrent_weight": (n1, n1),
        "output_weight": (n2, n1) if column else (n1, n2),
        "hidden_bias": (n1, 1),
        "output_bias": (n2, 1),
    }
    values: dict[str, Any] = {}
    for param in notation.params:
        if param.role.endswith("_bias") and not spec.bias:
            continue
        values[param.ascii] = mat(*shapes[param.role])
    values["x"] = [mat(*shaped(n0), 1.0) for _ in range(spec.steps)]
    count = spec.steps if spec.mode == "many_to_many" else 1
    values["y"] = [_target(spec, shaped(n2), rng, column) for _ in range(count)]
    if spec.initial_state == "input":
        values["h0"] = mat(*shaped(n1))
    return values


def _target(
    spec: ModelSpec, shape: tuple[int, int], rng: np.random.Generator, column: bool
) -> sp.Matrix:
    if spec.loss == "cross_entropy":
        raw = rng.random(size=shape) + 0.1
        raw = raw / raw.sum(axis=0 if column else 1, keepdims=True)
        data = [sp.Float(repr(float(v)), DPS) for v in raw.ravel()]
        matrix = sp.Matrix(shape[0], shape[1], data)
        # make each distribution sum to exactly one in 30 digits
        for j in range(shape[1] if column else shape[0]):
            if column:
                matrix[-1, j] = 1 - sum(matrix[:-1, j])
            else:
                matrix[j, -1] = 1 - sum(matrix[j, :-1])
        return matrix
    if spec.loss == "binary_cross_entropy":
        return sp.Matrix(
            shape[0], shape[1], [sp.Integer(int(v)) for v in rng.integers(0, 2, size=shape).ravel()]
        )
    return sp.Matrix(
        shape[0], shape[1], [sp.Float(repr(float(v)), DPS) for v in rng.normal(size=shape).ravel()]
    )


@dataclass(frozen=True)
class ScalarProof:
    """The outcome of comparing a derivation with scalar ``sympy.diff``."""

    spec: ModelSpec
    entries: int  # how many gradient entries were compared
    max_relative_error: float  # max |derived - diff| / max(1, |diff|)
    digits: int  # working precision

    @property
    def ok(self) -> bool:
        return self.max_relative_error < 10.0 ** (-(self.digits - 5))


def _env(d: Derivation, values: dict[str, Any]) -> dict[Any, Any]:
    """Evaluator values (mp backend) for the derivation's leaves from oracle values."""
    graph = d.graph

    def arr(matrix: sp.Matrix) -> Any:
        rows = [[mpmath.mpf(str(v)) for v in row] for row in matrix.tolist()]
        return np.array(rows, dtype=object)

    env: dict[Any, Any] = {}
    for name, symbol in graph.params.items():
        env[symbol] = arr(values[name])
    for symbol, value in zip(graph.inputs, values["x"], strict=True):
        env[symbol] = arr(value)
    for symbol, value in zip(graph.targets, values["y"], strict=True):
        env[symbol] = arr(value)
    if d.spec.initial_state == "input":
        env[graph.initial] = arr(values["h0"])
    for key, size in graph.symbols.sizes.items():
        if isinstance(size, sp.Symbol):
            env[size] = getattr(d.spec, key)
    return env


def scalar_proof(
    spec: ModelSpec, rng: np.random.Generator, names: list[str] | None = None
) -> ScalarProof:
    """Compare every entry of every gradient with ``sympy.diff`` of the scalar loss.

    Each entry is differentiated with every other number fixed at a random
    30-digit value, so ``sympy.diff`` sees the fully explicit unrolled loss as
    a function of that one entry; the derivation's expanded gradient
    (``Derivation.gradient(name, expand=True)``) is evaluated at the same point.
    """
    with mpmath.workdps(DPS):
        d = derive(spec)
        values = random_values(spec, rng)
        env = _env(d, values)
        notation = NOTATIONS[spec.notation]
        key_of = {p.ascii: p.ascii for p in notation.params}
        key_of[notation.initial_ascii] = "h0"
        worst = mpmath.mpf(0)
        count = 0
        w = sp.Symbol("w")
        for name in names or list(d.gradients):
            derived = Evaluator(env, backend="mp", dps=DPS)(d.gradient(name, expand=True))
            original = values[key_of[name]]
            for i in range(original.shape[0]):
                for j in range(original.shape[1]):
                    changed = original.copy()
                    changed[i, j] = w
                    loss = scalar_loss(spec, {**values, key_of[name]: changed})
                    exact = sp.diff(loss, w).xreplace({w: original[i, j]}).evalf(DPS)
                    exact_mp = mpmath.mpf(str(exact))
                    error = abs(exact_mp - derived[i, j]) / max(1, abs(exact_mp))
                    worst = max(worst, error)
                    count += 1
        return ScalarProof(spec, count, float(worst), DPS)
