"""The hand-written baselines of benchmarks/runtime.py are themselves right.

Their gradients equal central finite differences of their own loss (the oracle)
at a small size, with nonzero initial states and biases; their loss and
gradients equal symbptt's derivation evaluated at the same point (so the
forward pass is the cell file's, and the two independent derivations agree);
and they equal the generated module's gradients whenever ``symbptt.emit_numpy``
can emit the cell.  Their parameters are the cell files' plus the xh head.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import symbptt
from benchmarks import baselines
from symbptt.core.evaluate import Evaluator
from symbptt.model import load_cell

CELLS = ("elman", "lstm", "gru")
SIZES = {"n_in": 3, "n_hidden": 5, "n_out": 4}
T, M = 4, 3


def problem(cell: str, rng: np.random.Generator) -> tuple[Any, ...]:
    n_in, n_hidden, n_out = SIZES["n_in"], SIZES["n_hidden"], SIZES["n_out"]
    params = baselines.init_params(cell, n_in, n_hidden, n_out, rng=rng, bias_scale=0.5)
    X, Y = baselines.random_data(T, M, n_in, n_out, rng=rng)
    initial = {"h0": rng.normal(scale=0.5, size=(M, n_hidden))}
    if cell == "lstm":
        initial["c0"] = rng.normal(scale=0.5, size=(M, n_hidden))
    return params, X, Y, initial


@pytest.mark.parametrize("cell", CELLS)
def test_parameters_are_the_cell_files(cell: str) -> None:
    model = load_cell(cell)
    names = model.notations["xh"]
    expected = {}
    for parameter in model.parameters:
        shape = tuple(SIZES[d] if isinstance(d, str) else d for d in parameter.shape)
        expected[names.name_of(parameter.key).ascii] = shape
    expected[names.name_of("W_out").ascii] = (SIZES["n_out"], SIZES["n_hidden"])
    expected[names.name_of("b_out").ascii] = (SIZES["n_out"], 1)
    assert baselines.parameter_shapes(cell, **SIZES) == expected


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_equal_finite_differences(cell: str, rng: np.random.Generator) -> None:
    params, X, Y, initial = problem(cell, rng)
    function = baselines.BASELINES[cell]
    loss, grads = function(params, X, Y, **initial)
    assert set(grads) == set(params)
    differences = baselines.central_differences(
        lambda p: function(p, X, Y, **initial)[0], params, eps=1e-5
    )
    assert function(params, X, Y, **initial)[0] == loss  # the parameters were restored
    for name, expected in differences.items():
        assert grads[name].shape == params[name].shape, name
        scale = max(1.0, float(np.abs(expected).max()))
        error = float(np.abs(grads[name] - expected).max())
        assert error <= 1e-7 * scale, (name, error)


@pytest.mark.parametrize("cell", CELLS)
def test_loss_and_gradients_equal_the_derivation(cell: str, rng: np.random.Generator) -> None:
    params, X, Y, initial = problem(cell, rng)
    loss, grads = baselines.BASELINES[cell](params, X, Y, **initial)
    spec = symbptt.ModelSpec(
        cell=cell,
        steps=T,
        batch=M,
        n_in=SIZES["n_in"],
        n_hidden=SIZES["n_hidden"],
        n_out=SIZES["n_out"],
        notation="xh",
        output="softmax",
        loss="cross_entropy",
        mode="many_to_many",
        time_reduction="sum",
        batch_reduction="mean",
        initial_state="input",
    )
    derivation = symbptt.derive(spec)
    graph = derivation.graph
    env: dict[object, object] = {graph.params[name]: value for name, value in params.items()}
    env.update({x: X[k].T for k, x in enumerate(graph.inputs)})  # column layout: x_t (n_in, m)
    env.update({y: Y[k].T for k, y in enumerate(graph.targets)})
    env.update({symbol: initial[f"{key}0"].T for key, symbol in graph.initials.items()})
    evaluate = Evaluator(env)
    evaluate.run(graph.assignments + derivation.assignments)
    assert float(evaluate.env[graph.loss]) == pytest.approx(loss, rel=1e-12)
    for name, value in grads.items():
        np.testing.assert_allclose(
            value, evaluate(derivation.gradients[name]), rtol=1e-10, atol=1e-12, err_msg=name
        )


@pytest.mark.parametrize("cell", ("lstm", "gru"))
def test_workspace_reuse_gives_the_same_gradients(cell: str, rng: np.random.Generator) -> None:
    params, X, Y, initial = problem(cell, rng)
    function = baselines.BASELINES[cell]
    fresh_loss, fresh = function(params, X, Y, **initial)
    workspace: dict[str, Any] = {}
    function(params, 2 * X, Y, workspace=workspace)  # leaves other values in the buffers
    loss, grads = function(params, X, Y, **initial, workspace=workspace)
    assert loss == fresh_loss
    for name, value in fresh.items():
        np.testing.assert_array_equal(grads[name], value, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_equal_the_generated_module(cell: str, rng: np.random.Generator) -> None:
    module, why = baselines.generated_module(cell)
    if module is None:
        pytest.skip(f"no generated module to compare with yet: {why}")
    params, X, Y, initial = problem(cell, rng)
    loss, grads = module.loss_and_gradients(params, X, Y, **initial)
    ref_loss, ref_grads = baselines.BASELINES[cell](params, X, Y, **initial)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert set(grads) == set(ref_grads)
    for name, value in ref_grads.items():
        error = float(np.abs(grads[name] - value).max())
        assert error <= 1e-10 * max(1.0, float(np.abs(value).max())), (name, error)


def test_the_hoisted_elman_equals_finite_differences_and_the_per_step_one(
    rng: np.random.Generator,
) -> None:
    params, X, Y, initial = problem("elman", rng)
    hoisted = baselines.HOISTED["elman"]
    loss, grads = hoisted(params, X, Y, **initial)
    differences = baselines.central_differences(
        lambda p: hoisted(p, X, Y, **initial)[0], params, eps=1e-5
    )
    ref_loss, ref_grads = baselines.elman(params, X, Y, **initial)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    workspace: dict[str, Any] = {}
    hoisted(params, 2 * X, Y, workspace=workspace)  # leaves other values in the buffers
    again = hoisted(params, X, Y, **initial, workspace=workspace)
    for name, expected in differences.items():
        scale = max(1.0, float(np.abs(expected).max()))
        assert float(np.abs(grads[name] - expected).max()) <= 1e-7 * scale, name
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(again[1][name], grads[name])
