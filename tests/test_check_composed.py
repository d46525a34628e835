"""The checker on composed models: stacked layers, two directions, masks (issue 10).

The oracle is the derivation (``derive``; its gradients are proved against scalar
``sympy.diff`` in ``tests/test_compose.py``): a verdict is the checker comparing a
candidate with it, and every mistake named is a mutation of it that reproduces
the candidate's values.  No value here is typed by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import symbptt
from symbptt import ModelSpec, derive
from symbptt.checker import names, names_text
from symbptt.cli import main
from symbptt.expr.exprlang import ExpressionError

from .test_compose import composed_specs

STACKED = ModelSpec(steps=3, layers=2)
BIDIRECTIONAL = ModelSpec(steps=3, direction="bidirectional")
MASKED = ModelSpec(steps=3, masked=True)


def _names(spec: ModelSpec) -> set[str]:
    return {info.name for info in names(spec)}


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(steps=3, cell="lstm", layers=2, direction="bidirectional", masked=True),
        ModelSpec(steps=3, cell="gru", layers=2),
        ModelSpec(steps=3, notation="layered", direction="bidirectional"),
    ],
    ids=["lstm-2-bi-masked", "gru-2", "layered-bi"],
)
def test_names_list_every_unit(spec: ModelSpec) -> None:
    """Every gradient of the derivation, every unit's quantities and adjoints, the mask."""
    listed = _names(spec)
    d = derive(spec)
    assert set(d.gradients) <= listed
    root = d.graph.symbols
    for registry in root.registries:
        notation = registry.notation
        for state in registry.cell.states:
            entry = notation.name_of(state.key)
            assert f"{entry.ascii}[t]" in listed
            assert f"{entry.adjoint_ascii}[t]" in listed
            if spec.initial_state == "zero":
                assert entry.initial in listed
    assert ("M[t]" in listed) == spec.masked


@pytest.mark.parametrize(
    "fields",
    [
        {"layers": 2, "direction": "bidirectional", "masked": True},
        {"cell": "lstm", "direction": "bidirectional", "masked": True, "notation": "layered"},
        {"cell": "gru", "layers": 2, "mode": "many_to_one", "direction": "bidirectional"},
    ],
    ids=["elman-2-bi-masked", "lstm-bi-masked-layered", "gru-2-bi-many_to_one"],
)
def test_names_print_the_model_equations_at_a_generic_step(
    fields: dict[str, Any], rng: np.random.Generator
) -> None:
    """Each equation of ``--names`` (from the generic-step form), at a concrete step, read
    back by the checker's parser and evaluated, is the graph's quantity at that step."""
    from symbptt.checker import model_equations
    from symbptt.checker.work import _namespace_of
    from symbptt.core.evaluate import Evaluator
    from symbptt.expr import exprlang
    from symbptt.oracle.verify import _env, random_values

    sizes = {"n_in": 2, "n_hidden": 2, "n_out": 2, "batch": 3}
    spec = ModelSpec(steps=3, **sizes, **fields)
    rows = model_equations(spec)
    text = names_text(spec)
    assert all(f"= {rhs}" in text for _, rhs in rows)
    d = derive(spec)
    evaluator = Evaluator(_env(d, random_values(spec, rng)), backend="mp", dps=30)
    evaluator.run(d.graph.assignments)
    ns = _namespace_of(spec)
    checked = 0
    loss = d.graph.notation.loss_ascii
    for lhs, rhs in rows:
        if "[t" not in lhs or lhs.startswith(f"{loss}["):  # the total; a step's loss
            continue  # (a many-to-one output layer is at the last step)
        for step in d.graph.steps:
            target = exprlang.parse(lhs.replace("[t", f"[{step}"), ns)
            expr = exprlang.parse(rhs.replace("[t", f"[{step}"), ns)
            got = np.array(evaluator(expr), dtype=float)
            want = np.array(evaluator.env[target], dtype=float)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
            checked += 1
    # every unit's every equation at every step (and the output layer's, many-to-many)
    assert checked >= len(spec.program.units) * len(spec.model.equations) * len(d.graph.steps)


def test_names_say_where_a_backward_unit_starts() -> None:
    text = names_text(BIDIRECTIONAL)
    assert "bidirectional" in text.splitlines()[0]
    listed = text.split("\nmodel equations")[0]  # the names, before the model's equations
    lines = {line.split()[0]: line for line in listed.splitlines()[1:]}
    assert "h_b[T+1] is the initial state" in lines["h_b[t]"]
    assert "delta_b[0] = 0" in lines["delta_b[t]"]
    assert "h_f[0] is the initial state" in lines["h_f[t]"]


@pytest.mark.parametrize(
    "spec",
    [STACKED, BIDIRECTIONAL, MASKED, ModelSpec(steps=3, cell="lstm", direction="bidirectional")],
    ids=["stacked", "bidirectional", "masked", "lstm-bi"],
)
def test_every_gradient_of_the_derivation_is_equal(spec: ModelSpec) -> None:
    """The derivation's own gradient (a SymPy candidate) and its printed formula are EQUAL."""
    d = derive(spec)
    for name, gradient in d.gradients.items():
        r = symbptt.check(spec, name, gradient, points=3)
        assert r.ok, r.explain()
        formula = symbptt.check.correct_formula(spec, name)
        r = symbptt.check(spec, name, formula.gradient, points=3)
        assert r.ok, r.explain()


@pytest.mark.parametrize(
    ("spec", "wrt", "candidate"),
    [
        (STACKED, "W_hh_1", "sum_t(delta_1[t] @ h_1[t-1].T)"),
        (STACKED, "W_xh_2", "sum_t(delta_2[t] @ h_1[t].T)"),
        (BIDIRECTIONAL, "W_hh_b", "sum_t(delta_b[t] @ h_b[t+1].T)"),
        (
            BIDIRECTIONAL,
            "W_hh_b",
            "sum_t(((W_hh_b.T @ delta_b[t-1] + W_hy_b.T @ do[t]) * (1 - h_b[t]**2)) @ h_b[t+1].T)",
        ),
        (
            ModelSpec(steps=3, layers=2, direction="bidirectional"),
            "W_xh_2f_b",
            "sum_t(delta_2f[t] @ h_1b[t].T)",
        ),
        (MASKED, "b_y", "sum_t(((ones(n_2, 1) @ M[t]) * (y_hat[t] - y[t])) @ ones(m, 1)) / m"),
    ],
)
def test_hand_formulas_with_unit_names(spec: ModelSpec, wrt: str, candidate: str) -> None:
    r = symbptt.check(spec, wrt, candidate)
    assert r.ok and r.method == "symbolic", r.explain()


def _mistakes(r: Any) -> list[tuple[str, str]]:
    return [(m.name, m.description) for m in r.mistakes]


def test_a_dropped_recurrence_in_layer_one() -> None:
    r = symbptt.check(
        STACKED, "W_hh_1", "sum_t(((W_xh_2.T @ delta_2[t]) * (1 - h_1[t]**2)) @ h_1[t-1].T)"
    )
    assert not r.ok
    found = _mistakes(r)
    assert found[0][0] == "dropped_carry"
    assert "dh_1[t] lacks W_hh_1.T @ delta_1[t+1]" in found[0][1]
    assert "carry: the carry of h_1 (W_hh_1.T @ delta_1[t+1]) is missing; h_2's is right" in r.notes
    assert r.differing_terms is not None and r.differing_terms


def test_a_dropped_carry_from_the_layer_above() -> None:
    """The true delta_1[t+1], without what layer 2 sends back at the same step."""
    r = symbptt.check(
        STACKED, "W_hh_1", "sum_t(((W_hh_1.T @ delta_1[t+1]) * (1 - h_1[t]**2)) @ h_1[t-1].T)"
    )
    assert not r.ok
    texts = [text for name, text in _mistakes(r) if name == "dropped_carry"]
    assert any(
        "what layer 2 above sends back is missing: dh_1[t] lacks W_xh_2.T @ delta_2[t]" in t
        and "the recursion behind it is right" in t
        for t in texts
    ), r.explain()


def test_a_dropped_backward_carry() -> None:
    r = symbptt.check(
        BIDIRECTIONAL, "W_hh_b", "sum_t(((W_hy_b.T @ do[t]) * (1 - h_b[t]**2)) @ h_b[t+1].T)"
    )
    assert not r.ok
    (first, *_) = r.mistakes
    assert first.name == "dropped_carry" and first.place == "dh_b[t]"
    assert "lacks W_hh_b.T @ delta_b[t-1]" in first.description
    assert any(
        n.startswith("carry: the carry of h_b (W_hh_b.T @ delta_b[t-1]) is missing")
        for n in r.notes
    )


def test_an_off_by_one_step_in_a_backward_unit() -> None:
    r = symbptt.check(BIDIRECTIONAL, "W_hh_b", "sum_t(delta_b[t] @ h_b[t].T)")
    assert not r.ok
    assert (
        "off_by_one",
        "off-by-one step: delta_b[t] @ h_b[t].T where delta_b[t] @ h_b[t+1].T belongs",
    ) in _mistakes(r)


def test_the_forward_direction_taken_for_a_backward_unit() -> None:
    """h_b[t-1] where h_b[t+1] belongs: in a formula it is refused at the boundary,
    with how the backward direction runs; as values (a SymPy expression whose
    h_b[0] is the zero of hand code) it is the mistake "off-by-one step in the wrong
    direction"."""
    with pytest.raises(
        ExpressionError,
        match=r"h_b\[0\] is outside the model.*backward direction, which runs t = 3\.\.1: "
        r"the state before step t is h_b\[t\+1\]",
    ):
        symbptt.check(BIDIRECTIONAL, "W_hh_b", "sum_t(delta_b[t] @ h_b[t-1].T)")
    d = derive(BIDIRECTIONAL)
    backward = d.graph.symbols.registries[1]
    candidate = sum(
        (backward.adjoint("z", t) * backward.series("h", t - 1).T for t in (2, 3)),
        start=0 * d.gradients["W_hh_b"],
    )
    r = symbptt.check(BIDIRECTIONAL, "W_hh_b", candidate)
    assert not r.ok
    texts = [text for name, text in _mistakes(r) if name == "off_by_one"]
    assert any(
        "wrong direction" in text and "h_b[t-1]" in text and "h_b[t+1]" in text for text in texts
    ), r.explain()


def test_a_mask_forgotten_in_the_output_error() -> None:
    r = symbptt.check(MASKED, "b_y", "sum_t((y_hat[t] - y[t]) @ ones(m, 1)) / m")
    assert not r.ok
    # the padded steps' losses (which count zero); step 1 is real for every example
    assert r.loss_steps and 1 not in r.loss_steps
    assert "forgotten_mask" in [m.name for m in r.mistakes]


def test_masked_points_pad_a_step() -> None:
    """Every point of a masked model has a padded step (else a forgotten mask is EQUAL)."""
    from symbptt.checker.points import _points
    from symbptt.checker.work import _work

    work = _work(MASKED)
    for point in _points(work, 0, 5):
        masks = np.concatenate([point.leaves[m].reshape(-1) for m in work.graph.masks])
        assert 0.0 in masks and masks[: work.sizes["batch"]].all()


def _bidirectional_bptt(forward_habit: bool = False, backward_pass_from_t: bool = False) -> Any:
    """A hand-written NumPy BPTT of a one-layer bidirectional Elman RNN (softmax,
    cross-entropy, mean over the batch), examples as rows; with ``forward_habit``
    the backward unit's recurrent gradient reads h_b[t-1] where h_b[t+1] belongs; with
    ``backward_pass_from_t`` its backward pass runs from t = T down, carrying from t + 1."""
    previous = -1 if forward_habit else 1

    def grads(
        params: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray, **_: Any
    ) -> dict[str, np.ndarray]:
        T, m, _ = X.shape
        n = params["W_hh_f"].shape[0]
        hf = np.zeros((T + 2, m, n))
        hb = np.zeros((T + 2, m, n))
        for t in range(1, T + 1):
            hf[t] = np.tanh(
                X[t - 1] @ params["W_xh_f"].T + hf[t - 1] @ params["W_hh_f"].T + params["b_h_f"].T
            )
        for t in range(T, 0, -1):
            hb[t] = np.tanh(
                X[t - 1] @ params["W_xh_b"].T + hb[t + 1] @ params["W_hh_b"].T + params["b_h_b"].T
            )
        out = {k: np.zeros_like(v) for k, v in params.items()}
        do = []
        for t in range(1, T + 1):
            o = hf[t] @ params["W_hy_f"].T + hb[t] @ params["W_hy_b"].T + params["b_y"].T
            p = np.exp(o - o.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            do.append((p - Y[t - 1]) / m)
            out["W_hy_f"] += do[-1].T @ hf[t]
            out["W_hy_b"] += do[-1].T @ hb[t]
            out["b_y"] += do[-1].sum(axis=0)[:, None]
        carry = np.zeros((m, n))
        for t in range(T, 0, -1):
            dz = (do[t - 1] @ params["W_hy_f"] + carry) * (1 - hf[t] ** 2)
            out["W_xh_f"] += dz.T @ X[t - 1]
            out["W_hh_f"] += dz.T @ hf[t - 1]
            out["b_h_f"] += dz.sum(axis=0)[:, None]
            carry = dz @ params["W_hh_f"]
        carry = np.zeros((m, n))
        for t in range(T, 0, -1) if backward_pass_from_t else range(1, T + 1):
            dz = (do[t - 1] @ params["W_hy_b"] + carry) * (1 - hb[t] ** 2)
            out["W_xh_b"] += dz.T @ X[t - 1]
            out["W_hh_b"] += dz.T @ hb[t + previous]
            out["b_h_b"] += dz.sum(axis=0)[:, None]
            carry = dz @ params["W_hh_b"]
        return out

    return grads


def test_a_callable_of_a_bidirectional_model() -> None:
    right = _bidirectional_bptt(forward_habit=False)
    for name in derive(BIDIRECTIONAL).gradients:
        r = symbptt.check(BIDIRECTIONAL, name, right, points=3)
        assert r.ok, r.explain()
    wrong = _bidirectional_bptt(forward_habit=True)
    r = symbptt.check(BIDIRECTIONAL, "W_hh_b", wrong, points=3)
    assert not r.ok
    assert any(m.name == "off_by_one" and "wrong direction" in m.description for m in r.mistakes), (
        r.explain()
    )
    assert "with all 3 steps: gates right: z_f, the output layer; wrong: z_b" in r.notes
    r = symbptt.check(BIDIRECTIONAL, "W_xh_b", _bidirectional_bptt(backward_pass_from_t=True))
    assert not r.ok
    assert [m.name for m in r.mistakes] == ["off_by_one"], r.explain()
    assert r.mistakes[0].description == (
        "off-by-one step in the wrong direction in dh_b[t]: W_hh_b.T @ delta_b[t+1] where "
        "W_hh_b.T @ delta_b[t-1] belongs (a backward direction's adjoints carry from step t-1: "
        "its backward pass runs t = 1..T)"
    )


def test_cli_checks_a_composed_model(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["check", "--layers", "2", "--bidirectional", "--steps", "3"]
    assert main([*args, "--wrt", "W_hh_1f", "sum_t(delta_1f[t] @ h_1f[t-1].T)"]) == 0
    assert "EQUAL" in capsys.readouterr().out
    assert main([*args, "--wrt", "W_hh_1b", "sum_t(delta_1b[t] @ h_1b[t].T)"]) == 1
    assert "off-by-one step: delta_1b[t] @ h_1b[t].T where" in capsys.readouterr().out
    assert main([*args, "--names"]) == 0
    assert "W_xh_2f_b" in capsys.readouterr().out
    assert main([*args, "--wrt", "W_hh_1b", "sum_t(delta_1b[t] @ h_1b[t-1].T)"]) == 2
    err = capsys.readouterr().err
    assert "backward direction" in err and "Traceback" not in err


def _masked_bptt(
    honour_mask_in_loss: bool = True, carry_padded_steps: bool = True, many_to_one: bool = False
) -> Any:
    """A hand-written NumPy BPTT of a masked Elman RNN (softmax, cross-entropy, mean
    over the batch), examples as rows: a padded step carries the state; without
    ``honour_mask_in_loss`` the padded steps' losses are counted too, without
    ``carry_padded_steps`` the backward pass runs through the cell at a padded step;
    ``many_to_one``: one loss, of the final state (each example's last real one)."""

    def grads(
        params: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray, h0: Any, mask: np.ndarray
    ) -> dict[str, np.ndarray]:
        assert h0 is None
        T, m, _ = X.shape
        W, U, b = params["W_xh"], params["W_hh"], params["b_h"]
        V, c = params["W_hy"], params["b_y"]
        n = U.shape[0]
        h = np.zeros((T + 1, m, n))
        new = np.zeros((T + 1, m, n))
        for t in range(1, T + 1):
            new[t] = np.tanh(X[t - 1] @ W.T + h[t - 1] @ U.T + b.T)
            keep = mask[t - 1][:, None]
            h[t] = h[t - 1] + keep * (new[t] - h[t - 1])
        out = {k: np.zeros_like(v) for k, v in params.items()}
        carry = np.zeros((m, n))
        for t in range(T, 0, -1):
            o = h[t] @ V.T + c.T
            p = np.exp(o - o.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            keep = mask[t - 1][:, None]
            if many_to_one:
                do = (p - Y) / m if t == T else np.zeros_like(p)
            else:
                do = (p - Y[t - 1]) / m * (keep if honour_mask_in_loss else 1.0)
            out["W_hy"] += do.T @ h[t]
            out["b_y"] += do.sum(axis=0)[:, None]
            dh = do @ V + carry
            if not carry_padded_steps:
                keep = np.ones_like(keep)
            dz = dh * keep * (1 - new[t] ** 2)
            out["W_xh"] += dz.T @ X[t - 1]
            out["W_hh"] += dz.T @ h[t - 1]
            out["b_h"] += dz.sum(axis=0)[:, None]
            carry = dh * (1 - keep) + dz @ U
        return out

    return grads


def test_a_callable_of_a_masked_model() -> None:
    right = _masked_bptt()
    for name in derive(MASKED).gradients:
        r = symbptt.check(MASKED, name, right, points=3)
        assert r.ok, r.explain()
    r = symbptt.check(MASKED, "W_hy", _masked_bptt(honour_mask_in_loss=False), points=3)
    assert not r.ok
    # the padded steps' losses (which count zero); step 1 is real for every example
    assert r.loss_steps and 1 not in r.loss_steps
    assert [m.name for m in r.mistakes] == ["forgotten_mask"]
    assert "the padded steps' losses are counted" in r.mistakes[0].description
    assert r.first_step == 2  # the model cut to one step (all real) agrees
    # many-to-many, a padded step's adjoint is zero (its loss counts zero, and so is
    # every later step's): only a loss that reads a carried state shows the carry
    one = ModelSpec(steps=3, masked=True, mode="many_to_one")
    assert symbptt.check(one, "W_hh", _masked_bptt(many_to_one=True), points=3).ok
    r = symbptt.check(one, "W_hh", _masked_bptt(False, False, many_to_one=True), points=3)
    assert not r.ok
    assert [m.name for m in r.mistakes] == ["forgotten_mask"], r.explain()
    assert "goes through the cell instead of being carried" in r.mistakes[0].description


def test_a_many_to_one_formula_says_its_exceptional_steps() -> None:
    """The backward unit's final state (step 1) feeds the output: its line at step 1
    is not the recursion of the other steps, and the output weight reads h_b[1]."""
    spec = ModelSpec(steps=3, direction="bidirectional", mode="many_to_one")
    formula = symbptt.check.correct_formula(spec, "W_hh_b")
    assert "delta_b[t] = (W_hh_b.T @ delta_b[t-1]) * (1 - h_b[t]**2)  (t = 2, 3)" in formula.where
    assert "delta_b[1] = (W_hy_b.T @ do[3]) * (1 - h_b[1]**2)" in formula.where
    assert symbptt.check.correct_formula(spec, "W_hy_b").gradient == "do[T] @ h_b[1].T"
    for name in derive(spec).gradients:
        assert symbptt.check(spec, name, symbptt.check.correct_formula(spec, name).gradient).ok


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(composed_specs())
def test_property_the_printed_formula_of_every_gradient_is_equal(spec: ModelSpec) -> None:
    """Any composed spec: every gradient's formula, printed from the concrete steps,
    parses in the unit's names and equals the derivation's gradient."""
    for name in derive(spec).gradients:
        formula = symbptt.check.correct_formula(spec, name)
        r = symbptt.check(spec, name, formula.gradient, points=2)
        assert r.ok, r.explain()


def test_a_role_of_several_units_names_no_gradient() -> None:
    with pytest.raises(
        ValueError, match=r"the role 'recurrent_weight' belongs to several .*W_hh_1, W_hh_2"
    ):
        symbptt.check(STACKED, "recurrent_weight", "0")
    assert symbptt.check(
        STACKED, "output_bias", symbptt.check.correct_formula(STACKED, "b_y").gradient
    ).ok
