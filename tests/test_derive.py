"""The graph and the derivation: structure, generic-step form, scale."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
import sympy as sp

import symbptt
from symbptt.core.derive import instantiate
from symbptt.core.evaluate import Evaluator
from symbptt.core.rules import MissingRuleError, rule_for
from symbptt.expr import mexpr

NOTATIONS = ["xh", "uvw", "layered", "aa"]


def _concrete_env(d: symbptt.Derivation, rng: np.random.Generator) -> dict[Any, Any]:
    """Random values for every leaf of a derivation with concrete sizes."""
    graph = d.graph
    leaves = list(graph.params.values()) + list(graph.inputs) + list(graph.targets)
    if d.spec.initial_state == "input":
        leaves.append(graph.initial)
    env: dict[Any, Any] = {}
    for symbol in leaves:
        env[symbol] = rng.normal(scale=0.5, size=tuple(int(s) for s in symbol.shape))
    for target in graph.targets:  # distributions over the units for cross-entropy
        raw = np.abs(env[target]) + 0.1
        axis = 0 if graph.notation.layout == "column" else 1
        env[target] = raw / raw.sum(axis=axis, keepdims=True)
    return env


@pytest.mark.parametrize("notation", NOTATIONS)
def test_gradients_have_the_parameters_shapes(notation: str) -> None:
    d = symbptt.derive(symbptt.ModelSpec(steps=3, notation=notation, initial_state="input"))
    for name, gradient in d.gradients.items():
        symbol = d.graph.params.get(name, d.graph.initial)
        assert gradient.shape == symbol.shape, name
    names = [p.ascii for p in d.notation.params] + [d.notation.initial_ascii]
    assert list(d.gradients) == names


def test_layered_names_follow_the_seed() -> None:
    d = symbptt.derive(symbptt.ModelSpec(steps=3, notation="layered"))
    assert list(d.gradients) == ["W_1", "W_h1", "W_2", "beta_1", "beta_2"]
    assert [str(x) for x in d.symbols["inputs"]] == ["X_0", "X_1", "X_2"]
    n0, n1, m = sp.symbols("n_0 n_1 m", integer=True, positive=True)
    assert d.graph.params["W_1"].shape == (n0, n1)
    assert d.symbols["inputs"][0].shape == (m, n0)
    assert d.graph.params["beta_1"].shape == (n1, 1)


def test_symbols_table_has_every_role() -> None:
    d = symbptt.derive(symbptt.ModelSpec(steps=2, mode="many_to_one"))
    for role in ("input_weight", "recurrent_weight", "output_weight", "hidden_bias", "output_bias"):
        assert isinstance(d.symbols[role], sp.MatrixSymbol)
    assert len(d.symbols["inputs"]) == 2 and len(d.symbols["targets"]) == 1
    assert isinstance(d.symbols["initial_state"], sp.ZeroMatrix)
    assert d.roles == {
        "W_xh": "input_weight",
        "W_hh": "recurrent_weight",
        "W_hy": "output_weight",
        "b_h": "hidden_bias",
        "b_y": "output_bias",
    }


def test_no_bias_means_no_bias_gradients() -> None:
    d = symbptt.derive(symbptt.ModelSpec(steps=2, bias=False))
    assert list(d.gradients) == ["W_xh", "W_hh", "W_hy"]


def test_delta_is_assigned_at_every_step_in_reverse_order() -> None:
    d = symbptt.derive(symbptt.ModelSpec(steps=4))
    deltas = [a.step for a in d.adjoints if a.kind == "adjoint_pre_activation"]
    assert deltas == [4, 3, 2, 1]
    assert all(
        str(a.target) == f"delta_{a.step}"
        for a in d.adjoints
        if a.step in deltas and a.kind == "adjoint_pre_activation"
    )


def test_shared_weights_accumulate_over_steps() -> None:
    d = symbptt.derive(symbptt.ModelSpec(steps=3))
    contributions = [a for a in d.contributions if a.param == "W_xh"]
    assert [a.step for a in contributions] == [1, 2, 3]
    assert d.gradients["W_xh"] == sp.MatAdd(*(a.expr for a in contributions))
    # the recurrent weight gets nothing from step 1 when h_0 = 0
    assert [a.step for a in d.contributions if a.param == "W_hh"] == [2, 3]


def test_many_to_one_has_one_loss_and_output_gradients_from_the_last_step() -> None:
    d = symbptt.derive(symbptt.ModelSpec(steps=3, notation="layered", mode="many_to_one"))
    losses = [a for a in d.graph.assignments if a.kind == "loss"]
    assert [a.step for a in losses] == [2]
    assert [a.step for a in d.contributions if a.param == "W_2"] == [2]
    assert [a.step for a in d.contributions if a.param == "W_1"] == [0, 1, 2]


def test_expanded_gradient_is_in_leaves_only() -> None:
    d = symbptt.derive(symbptt.ModelSpec(steps=3, initial_state="input"))
    leaves = set(d.graph.params.values()) | set(d.graph.inputs) | set(d.graph.targets)
    leaves.add(d.graph.initial)
    for name in d.gradients:
        expanded = d.gradient(name)
        matrices = {s for s in expanded.atoms(sp.MatrixSymbol)}
        assert matrices <= leaves, name
    with pytest.raises(KeyError, match="no gradient named 'nope'"):
        d.gradient("nope")


def test_thousand_steps_build_and_derive_without_recursion() -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(300)  # the graph is walked iteratively; deep recursion would fail
    try:
        d = symbptt.derive(symbptt.ModelSpec(steps=1000))
    finally:
        sys.setrecursionlimit(limit)
    assert len(d.graph.assignments) == 5 * 1000 + 1
    assert len(d.gradients["W_hh"].args) == 999


def test_missing_rule_names_the_op() -> None:
    with pytest.raises(MissingRuleError, match="'Trace'"):
        rule_for(sp.Trace(sp.MatrixSymbol("A", 2, 2)))


def _check_step_form(spec: symbptt.ModelSpec, rng: np.random.Generator) -> None:
    d = symbptt.derive(spec)
    form = d.step_form
    env = _concrete_env(d, rng)
    reference = Evaluator(env)
    reference.run(d.graph.assignments)
    reference.run(d.assignments)
    rebuilt = Evaluator(env)
    rebuilt.run(d.graph.assignments)
    for step in reversed(d.graph.steps):
        last = step == d.graph.steps[-1] and form.last_backward is not None
        body = form.last_backward if last else form.backward
        assert body is not None
        for assignment in instantiate(body, form, step, d.graph):
            rebuilt.run([assignment])
            want = reference.env[assignment.target]
            np.testing.assert_allclose(rebuilt.env[assignment.target], want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("notation", NOTATIONS)
@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one"])
def test_generic_step_applied_T_times_equals_the_unrolled_derivation(
    notation: str, mode: str, rng: np.random.Generator
) -> None:
    for steps in (1, 3):
        spec = symbptt.ModelSpec(
            steps=steps,
            notation=notation,
            mode=mode,
            time_reduction="mean",
            n_in=2,
            n_hidden=3,
            n_out=2,
            batch=2,
            initial_state="input",
        )
        _check_step_form(spec, rng)


def test_generic_step_is_written_with_the_next_delta() -> None:
    form = symbptt.derive(symbptt.ModelSpec(steps=3)).step_form
    dh = next(a for a in form.backward if a.kind == "adjoint_hidden")
    names = {str(s) for s in dh.expr.atoms(sp.MatrixSymbol)}
    assert names == {"W_hh", "delta_t+1", "W_hy", "do_t"}


def test_bias_broadcast_is_a_product_with_ones() -> None:
    d = symbptt.derive(symbptt.ModelSpec(steps=1, notation="layered"))
    z = d.graph.assignments[0].expr
    assert any(
        isinstance(arg, sp.MatMul)
        and arg.args[0] == sp.OneMatrix(sp.Symbol("m", integer=True, positive=True), 1)
        for arg in z.args
    )
    db = next(a for a in d.contributions if a.param == "beta_1")
    assert db.expr.shape == d.graph.params["beta_1"].shape
    assert mexpr.is_matrix(db.expr)


@pytest.mark.parametrize("value", [{"steps": 2}, "xh", None, 3])
def test_derive_of_something_else_is_a_type_error_naming_what_it_expects(value: object) -> None:
    with pytest.raises(TypeError, match=r"^derive: expected a ModelSpec \(or a Graph\), got ") as e:
        symbptt.derive(value)  # type: ignore[arg-type]
    assert type(value).__name__ in str(e.value) and "ModelSpec.from_mapping" in str(e.value)
