"""The scalar oracle: the fully explicit, unrolled loss, built entry by entry.

This is written independently of the derivation: it composes the spec's
definitions (activation, output, loss; the single source of truth) on
explicit SymPy matrices whose entries are numbers or symbols, and lets
``sympy.diff`` differentiate the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy as sp

from symbptt import functions
from symbptt.notation import NOTATIONS
from symbptt.spec import ModelSpec

DPS = 30


def _apply(definition: sp.Expr, matrix: sp.Matrix) -> sp.Matrix:
    return matrix.applyfunc(lambda v: definition.xreplace({functions.z: v}))


def _softmax(matrix: sp.Matrix, axis: int) -> sp.Matrix:
    out = sp.zeros(*matrix.shape)
    output = functions.OUTPUTS["softmax"]
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


def scalar_loss(spec: ModelSpec, values: dict[str, Any]) -> sp.Expr:
    """The loss of ``spec`` with explicit matrices ``values`` (by ASCII name; x/y as lists)."""
    notation = NOTATIONS[spec.notation]
    column = notation.layout == "column"
    p = {param.role: values.get(param.ascii) for param in notation.params}
    hidden = functions.ACTIVATIONS[spec.hidden].definition
    xs, ys = values["x"], values["y"]
    m = spec.batch
    h = values.get("h0")
    if h is None:
        h = sp.zeros(spec.n_hidden, m) if column else sp.zeros(m, spec.n_hidden)
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
    n0, n1, n2, m = spec.n_in, spec.n_hidden, spec.n_out, spec.batch

    def mat(rows: int, cols: int, scale: float = 0.6) -> sp.Matrix:
        data = rng.normal(scale=scale, size=(rows, cols))
        return sp.Matrix(rows, cols, [sp.Float(repr(float(v)), DPS) for v in data.ravel()])

    def shaped(units: int) -> tuple[int, int]:
        return (units, m) if column else (m, units)

    shapes = {
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


def _target(spec: ModelSpec, shape: tuple[int, int], rng: np.random.Generator, column: bool) -> sp.Matrix:
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
        return sp.Matrix(shape[0], shape[1], [sp.Integer(int(v)) for v in rng.integers(0, 2, size=shape).ravel()])
    return sp.Matrix(shape[0], shape[1], [sp.Float(repr(float(v)), DPS) for v in rng.normal(size=shape).ravel()])
