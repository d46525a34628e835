"""The generic-step form of composed models (issue 10): stacked, bidirectional, masked.

``Derivation.step_form`` of a composed model is derived once from the equations,
every unit at a generic step t.  Here it is instantiated at every concrete step
(``symbptt.core.derive.backward_pass``) and compared with two oracles: the
unrolled derivation's own per-step adjoints and contributions (30 digits), and
``sympy.diff`` of the explicit unrolled loss the scalar oracle writes out from
the cell equations on its own (``symbptt.oracle.verify.scalar_loss``).
"""

from __future__ import annotations

from typing import Any

import mpmath
import numpy as np
import pytest
import sympy as sp

from symbptt import ModelSpec, derive
from symbptt.core.derive import backward_pass
from symbptt.core.evaluate import Evaluator
from symbptt.oracle.verify import DPS, _env, random_values, scalar_loss

SMALL = {"n_in": 2, "n_hidden": 2, "n_out": 2, "batch": 3}
#: every example's real steps first; the second pads after one step, the third after two
MASK = [[1, 1, 1], [1, 0, 1], [1, 0, 0]]

COMPOSED = [
    {"layers": 2},
    {"direction": "bidirectional"},
    {"masked": True},
    {"layers": 2, "direction": "bidirectional", "masked": True},
    {"layers": 2, "direction": "bidirectional", "masked": True, "notation": "layered"},
    {"layers": 2, "direction": "bidirectional", "notation": "uvw", "initial_state": "input"},
    {"direction": "bidirectional", "masked": True, "mode": "many_to_one"},
    {"layers": 2, "direction": "bidirectional", "mode": "many_to_one", "notation": "aa"},
    {"layers": 2, "masked": True, "time_reduction": "mean", "batch_reduction": "sum"},
    {"direction": "bidirectional", "time_reduction": "mean"},
    {"masked": True, "batch_reduction": "tokens", "direction": "bidirectional"},
    {"layers": 2, "direction": "bidirectional", "masked": True, "cell": "lstm", "n_hidden": 1},
    {"layers": 2, "direction": "bidirectional", "masked": True, "cell": "gru", "n_hidden": 1},
    {
        "layers": 2,
        "direction": "bidirectional",
        "masked": True,
        "cell": "lstm",
        "notation": "layered",
        "mode": "many_to_one",
        "n_hidden": 1,
    },
    {"direction": "bidirectional", "masked": True, "cell": "gru", "mode": "many_to_one"},
]


def _spec(**fields: object) -> ModelSpec:
    return ModelSpec(**{**SMALL, **fields})  # type: ignore[arg-type]


def _values(spec: ModelSpec, rng: np.random.Generator) -> dict[str, Any]:
    values = random_values(spec, rng)
    if spec.masked:
        values["mask"] = [row[: int(spec.batch or 0)] for row in MASK[: spec.steps]]
    return values


def _close(got: Any, want: Any) -> bool:
    got, want = np.array(got, dtype=object), np.array(want, dtype=object)
    if got.shape != want.shape:
        return False
    tolerance = mpmath.mpf(10) ** (6 - DPS)
    pairs = zip(got.ravel(), want.ravel(), strict=True)
    return all(abs(a - b) <= tolerance * max(1, abs(b)) for a, b in pairs)


def _zero(value: Any) -> bool:
    return all(x == 0 for x in np.array(value, dtype=object).ravel())


@pytest.mark.parametrize(
    "fields", COMPOSED, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items())
)
def test_the_generic_step_at_every_step_is_the_unrolled_derivation(
    fields: dict[str, object], rng: np.random.Generator
) -> None:
    for steps in (1, 3):
        _check_against_the_unrolled_derivation(_spec(steps=steps, **fields), rng)


def _check_against_the_unrolled_derivation(spec: ModelSpec, rng: np.random.Generator) -> None:
    d = derive(spec)
    form = d.step_form
    assert form.units == spec.program.units
    values = _values(spec, rng)
    with mpmath.workdps(DPS):
        reference = Evaluator(_env(d, values), backend="mp", dps=DPS)
        reference.run(d.graph.assignments)
        reference.run(d.assignments)
        rebuilt = Evaluator(_env(d, values), backend="mp", dps=DPS)
        rebuilt.run(d.graph.assignments)  # the forward pass only; the adjoints from the form
        written = set()
        for assignment in backward_pass(form, d.graph):
            rebuilt.run([assignment])
            got = rebuilt.env[assignment.target]
            written.add(assignment.target)
            if assignment.target in reference.env:
                assert _close(got, reference.env[assignment.target]), assignment.target
            else:  # a step the unrolled derivation has no term for (a zero initial state)
                assert _zero(got), assignment.target
    # every adjoint and every parameter's term (an initial state's gradient is not a
    # term of the generic step, as in a model of one cell)
    unrolled = {
        a.target
        for a in d.assignments
        if a.kind != "gradient" and (a.kind != "contribution" or a.param in d.graph.params)
    }
    assert unrolled <= written, sorted(map(str, unrolled - written))


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields",
    [
        {"layers": 2, "direction": "bidirectional", "masked": True},
        {"layers": 2, "direction": "bidirectional", "masked": True, "notation": "layered"},
        {"direction": "bidirectional", "masked": True, "cell": "lstm", "mode": "many_to_one"},
        {"direction": "bidirectional", "masked": True, "cell": "gru", "time_reduction": "mean"},
    ],
    ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()),
)
def test_the_generic_step_gradients_equal_sympy_diff(
    fields: dict[str, object], rng: np.random.Generator
) -> None:
    """Every gradient entry, summed from the instantiated generic step's contributions
    alone, against ``sympy.diff`` of the oracle's explicit loss (entry by entry)."""
    spec = ModelSpec(steps=2, n_in=1, n_hidden=1, n_out=2, batch=2, **fields)  # type: ignore[arg-type]
    d = derive(spec)
    values = _values(spec, rng)
    with mpmath.workdps(DPS):
        evaluator = Evaluator(_env(d, values), backend="mp", dps=DPS)
        evaluator.run(d.graph.assignments)
        sums: dict[str, Any] = {}
        for assignment in backward_pass(d.step_form, d.graph):
            evaluator.run([assignment])
            if assignment.kind == "contribution":
                value = evaluator.env[assignment.target]
                sums[assignment.param] = value + sums.get(assignment.param, 0 * value)
        assert set(sums) == set(d.graph.params)
        w = sp.Symbol("w", real=True)
        for name, derived in sums.items():
            original = values[name]
            for i in range(original.shape[0]):
                for j in range(original.shape[1]):
                    changed = original.copy()
                    changed[i, j] = w
                    loss = scalar_loss(spec, {**values, name: changed})
                    exact = sp.diff(loss, w).xreplace({w: original[i, j]}).evalf(DPS)
                    assert _close(derived[i, j], mpmath.mpf(str(exact))), (name, i, j)


def _names(assignment: Any) -> set[str]:
    return {str(s) for s in assignment.expr.atoms(sp.MatrixSymbol)}


def test_a_backward_unit_receives_from_step_t_minus_1_and_from_the_layer_above() -> None:
    form = derive(ModelSpec(steps=3, layers=2, direction="bidirectional")).step_form
    dh = {a.target.name: a for a in form.backward if a.kind == "adjoint_hidden"}
    # layer 2 (the last): its own next step (t + 1 forward, t - 1 backward) and the output layer
    assert _names(dh["dh_2f_t"]) == {"W_hh_2f", "delta_2f_t+1", "W_hy_f", "do_t"}
    assert _names(dh["dh_2b_t"]) == {"W_hh_2b", "delta_2b_t-1", "W_hy_b", "do_t"}
    # layer 1: its own next step and both units of layer 2 at the same step, through the
    # split weights on its state
    assert _names(dh["dh_1b_t"]) == {
        "W_hh_1b",
        "delta_1b_t-1",
        "W_xh_2f_b",
        "delta_2f_t",
        "W_xh_2b_b",
        "delta_2b_t",
    }
    assert form.unit_of(next(a for a in form.backward if a.target.name == "dh_1b_t")) == 1


def test_a_masked_step_carries_the_state_and_its_adjoint() -> None:
    form = derive(ModelSpec(steps=3, masked=True, direction="bidirectional")).step_form
    chosen = {a.target.name: a for a in form.forward if a.kind == "hidden"}
    assert _names(chosen["h_f_t"]) == {"h_f_t-1", "h_new_f_t", "mask_t"}
    assert _names(chosen["h_b_t"]) == {"h_b_t+1", "h_new_b_t", "mask_t"}
    dh = {a.target.name: a for a in form.backward if a.kind == "adjoint_hidden"}
    # what the next step's choice sends back: dh_{t+1} - M_{t+1} * dh_{t+1}, the carry
    assert {"dh_f_t+1", "mask_t+1"} <= _names(dh["dh_f_t"])
    assert {"dh_b_t-1", "mask_t-1"} <= _names(dh["dh_b_t"])


def test_a_mean_over_each_examples_real_steps_reads_mask_count() -> None:
    spec = ModelSpec(steps=3, masked=True, time_reduction="mean")
    form = derive(spec).step_form
    loss = next(a for a in form.forward if a.kind == "loss")
    assert "mask_count" in {str(s) for s in loss.expr.atoms(sp.MatrixSymbol)}
