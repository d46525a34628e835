"""Generated code for composed models (issue 10): stacked, bidirectional, masked.

The unrolled NumPy module of a composed spec is checked against oracles that do
not share its code: central finite differences of its own loss
(:mod:`symbptt.oracle.gradcheck`), the scalar oracle's loss (:mod:`symbptt.oracle.verify`,
which writes the model out on its own), every example run alone on its
unpadded sequence (a padded batch is the sum of its examples), one-hot targets
for class labels, and PyTorch's ``nn.LSTM`` on packed sequences (slow).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import mpmath
import numpy as np
import pytest
import sympy as sp

import symbptt
from symbptt import ModelSpec
from symbptt.core.graph import Symbols
from symbptt.oracle.gradcheck import finite_difference_errors, gradcheck, random_problem
from symbptt.oracle.verify import DPS, random_values, scalar_loss

ALL_THREE = {"layers": 2, "direction": "bidirectional", "masked": True}


@cache
def _module(**fields: Any) -> ModuleType:
    spec = ModelSpec(**{"steps": 3, **fields})
    return symbptt.load_module(symbptt.emit_numpy(spec, unrolled=True))


def _fd(module: ModuleType, rng: int = 1, batch: int = 3) -> dict[str, float]:
    problem = random_problem(module, batch=batch, n_in=2, n_hidden=2, n_out=3, rng=rng)
    if problem.mask is not None:
        assert not problem.mask.all(), "the random problem should pad some steps"
    return finite_difference_errors(module, problem)


FAST = [
    {"cell": "elman", **ALL_THREE},
    {"cell": "elman", **ALL_THREE, "notation": "layered", "batch_reduction": "tokens"},
    {"cell": "elman", **ALL_THREE, "mode": "many_to_one"},
    {"cell": "elman", "masked": True, "time_reduction": "mean", "notation": "uvw"},
    {"cell": "elman", "layers": 3, "loss": "squared_error", "output": "identity"},
]
SLOW = [
    {"cell": "lstm", **ALL_THREE},
    {"cell": "gru", **ALL_THREE},
    {"cell": "lstm", **ALL_THREE, "notation": "layered", "time_reduction": "mean"},
    {"cell": "gru", **ALL_THREE, "mode": "many_to_one", "batch_reduction": "tokens"},
]


def _id(fields: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in fields.items())


@pytest.mark.parametrize(
    "fields",
    [*FAST, *(pytest.param(f, marks=pytest.mark.slow) for f in SLOW)],
    ids=_id,
)
def test_finite_differences(fields: dict[str, Any]) -> None:
    errors = _fd(_module(**fields))
    assert max(errors.values()) < 1e-6, errors


def test_the_loss_is_the_scalar_oracles(rng: np.random.Generator) -> None:
    """The modules' loss (unrolled and rolled) at the oracle's random values equals the
    oracle's explicit loss."""
    for fields in (
        {**ALL_THREE, "batch_reduction": "tokens"},
        {**ALL_THREE, "notation": "layered", "time_reduction": "mean"},
        {**ALL_THREE, "mode": "many_to_one", "cell": "gru"},
        {"layers": 2, "direction": "bidirectional", "time_reduction": "mean"},  # no mask
    ):
        spec = ModelSpec(
            steps=3, n_in=2, n_hidden=2, n_out=2, batch=3, initial_state="input", **fields
        )
        values = random_values(spec, rng)
        unrolled = symbptt.load_module(symbptt.emit_numpy(spec, unrolled=True))
        rolled = symbptt.load_module(symbptt.emit_numpy(spec))
        module = unrolled
        column = module.LAYOUT == "column"

        def array(matrix: sp.Matrix, transpose: bool = column) -> np.ndarray:
            out = np.array(matrix.tolist(), dtype=float)
            return out.T if transpose else out

        params = {name: array(values[name], False) for name in module.PARAMETERS}
        X = np.stack([array(x) for x in values["x"]])
        Y = np.stack([array(y) for y in values["y"]])
        Y = Y if spec.mode == "many_to_many" else Y[0]
        symbols = Symbols(spec, spec.model.notations[spec.notation])
        initial = {
            module.INITIALS[key]: array(values[s.name]) for key, s in symbols.initials.items()
        }
        if spec.masked:
            initial["mask"] = np.array(values["mask"], dtype=float)
        with mpmath.workdps(DPS):
            oracle = float(sp.N(scalar_loss(spec, values), DPS))
        for module in (unrolled, rolled):
            assert module.loss(params, X, Y, **initial) == pytest.approx(oracle, rel=1e-12)


@pytest.mark.parametrize("cell", ["elman", pytest.param("lstm", marks=pytest.mark.slow)])
def test_a_padded_batch_is_its_examples_run_alone(cell: str, rng: np.random.Generator) -> None:
    """With sums over time and batch, a padded batch's loss and parameter gradients are
    the sums over its examples, each run alone on its unpadded steps; each example's
    final states are those of its own run (the backward units': after step 1)."""
    fields = {"cell": cell, **ALL_THREE, "batch_reduction": "sum"}
    full = _module(**fields)
    problem = random_problem(full, batch=4, n_in=2, n_hidden=3, n_out=3, rng=rng)
    assert problem.mask is not None
    lengths = problem.mask.sum(axis=0).astype(int)
    value, gradients, state = full.loss_and_all_gradients(
        problem.params, problem.X, problem.Y, mask=problem.mask, **problem.initial
    )
    total = 0.0
    summed = {name: np.zeros_like(g) for name, g in gradients.items()}
    for j, n in enumerate(lengths):
        alone = _module(**{**fields, "steps": int(n)})
        initial = {k: v[j : j + 1] for k, v in problem.initial.items() if v is not None}
        X, Y = problem.X[:n, j : j + 1], problem.Y[:n, j : j + 1]
        one = np.ones((n, 1))
        v, g, s = alone.loss_and_all_gradients(problem.params, X, Y, mask=one, **initial)
        total += v
        for name in summed:
            summed[name] += g[name]
        for key in full.INITIALS:
            np.testing.assert_allclose(state[f"{key}_T"][j], s[f"{key}_T"][0], rtol=1e-12)
        np.testing.assert_allclose(state["dX"][:n, j], s["dX"][:, 0], rtol=1e-10, atol=1e-14)
        assert not state["dX"][n:, j].any()  # a padded step's input gets no gradient
    assert value == pytest.approx(total, rel=1e-12)
    for name, g in gradients.items():
        np.testing.assert_allclose(g, summed[name], rtol=1e-10, atol=1e-14)


def test_padded_inputs_and_targets_change_nothing(rng: np.random.Generator) -> None:
    module = _module(**ALL_THREE)
    problem = random_problem(module, batch=3, n_in=2, n_hidden=2, n_out=3, rng=rng)
    mask = problem.mask
    assert mask is not None
    before = module.loss_and_all_gradients(problem.params, problem.X, problem.Y, mask=mask)
    padded = mask == 0
    X, Y = problem.X.copy(), problem.Y.copy()
    X[padded] = rng.normal(size=X[padded].shape) * 10
    Y[padded] = 0.0  # a padded step's target need not be a distribution
    after = module.loss_and_all_gradients(problem.params, X, Y, mask=mask)
    assert after[0] == before[0]
    for name in module.PARAMETERS:
        np.testing.assert_array_equal(after[1][name], before[1][name])
    np.testing.assert_array_equal(after[2]["dX"], before[2]["dX"])


@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one"])
def test_class_labels_are_one_hot_targets(mode: str, rng: np.random.Generator) -> None:
    module = _module(**ALL_THREE, mode=mode)
    problem = random_problem(module, batch=4, n_in=2, n_hidden=2, n_out=3, rng=rng)
    mask = problem.mask
    labels = rng.integers(0, 3, size=problem.Y.shape[:-1])
    one_hot = np.eye(3)[labels]
    if mode == "many_to_many":
        labels[mask == 0] = -100  # PyTorch's ignore_index at a padded step: ignored
    by_labels = module.loss_and_gradients(problem.params, problem.X, labels, mask=mask)
    by_one_hot = module.loss_and_gradients(problem.params, problem.X, one_hot, mask=mask)
    assert by_labels[0] == by_one_hot[0]
    for name in module.PARAMETERS:
        np.testing.assert_array_equal(by_labels[1][name], by_one_hot[1][name])


def _bad(module: ModuleType, message: str, **change: Any) -> None:
    problem = random_problem(module, batch=3, n_in=2, n_hidden=2, n_out=3, rng=0)
    arguments = {"Y": problem.Y, "mask": problem.mask, **change}
    with pytest.raises(module.ArgumentError, match=message):
        module.loss_and_gradients(problem.params, problem.X, **arguments)


def test_bad_masks_and_labels_are_refused() -> None:
    module = _module(**ALL_THREE)
    full = np.ones((3, 3))
    _bad(module, r"^mask: required", mask=None)
    _bad(module, r"^mask: expected a numpy array, got list", mask=full.tolist())
    _bad(module, r"^mask: expected shape \(T, m\) = \(3, 3\), got \(3, 2\)", mask=full[:, :2])
    _bad(
        module,
        r"^mask: expected 0/1 of a bool, int or float dtype, got <U32",
        mask=full.astype(str),
    )
    _bad(
        module,
        r"^mask: expected 0 or 1, got 0.5 at \(1, 2\)",
        mask=np.where(np.arange(9).reshape(3, 3) == 5, 0.5, 1.0),
    )
    gap = full.copy()
    gap[1, 2] = 0
    _bad(module, r"^mask: example 2 has a real step 2 after a padded step 1", mask=gap)
    empty = full.copy()
    empty[:, 1] = 0
    _bad(module, r"^mask: example 1 has no real step", mask=empty)
    labels = np.zeros((3, 3), dtype=int)
    _bad(
        module,
        r"^Y: expected class labels from 0 to 2 \(n_out = 3\), got 3 at index \(0, 1\)",
        Y=np.where(np.arange(9).reshape(3, 3) == 1, 3, labels),
        mask=full,
    )
    _bad(module, r"^Y: expected class labels of shape \(T, m\)", Y=labels[:, :2])
    _bad(module, r"^Y: expected integer class labels or float targets", Y=labels.astype(bool))
    _bad(module, r"^Y: cross_entropy targets must sum to 1", Y=np.zeros((3, 3, 3)), mask=full)


def test_keywords_states_and_gradients_are_named_per_unit() -> None:
    module = _module(cell="lstm", **ALL_THREE)
    assert {
        f"{s}_{u}": f"{s}0_{u}" for u in ("1f", "1b", "2f", "2b") for s in ("h", "c")
    } == module.INITIALS
    problem = random_problem(module, batch=2, n_in=2, n_hidden=2, n_out=3, rng=0)
    assert set(problem.initial) == set(module.INITIALS.values())
    _, _, state = module.loss_and_all_gradients(
        problem.params, problem.X, problem.Y, mask=problem.mask, **problem.initial
    )
    assert set(state) == {"dX"} | {f"d{a}" for a in module.INITIALS.values()} | {
        f"{k}_T" for k in module.INITIALS
    }


def test_gradcheck_takes_a_composed_spec() -> None:
    spec = ModelSpec(steps=3, n_in=2, n_hidden=2, n_out=2, **ALL_THREE)
    assert gradcheck(spec, unrolled=True, batch=3).ok


# -- the rolled module -------------------------------------------------------------------------
@cache
def _rolled(**fields: Any) -> ModuleType:
    return symbptt.load_module(symbptt.emit_numpy(ModelSpec(**{"steps": 3, **fields})))


@pytest.mark.parametrize(
    "fields",
    [*FAST, *(pytest.param(f, marks=pytest.mark.slow) for f in SLOW)],
    ids=_id,
)
def test_the_rolled_module_equals_the_unrolled_one(fields: dict[str, Any]) -> None:
    rolled, unrolled = _rolled(**fields), _module(**fields)
    problem = random_problem(unrolled, batch=3, n_in=2, n_hidden=2, n_out=3, rng=2)
    arguments = (problem.params, problem.X, problem.Y)
    keywords = {**problem.keywords(), **problem.initial}
    value, gradients, state = rolled.loss_and_all_gradients(*arguments, **keywords)
    expected = unrolled.loss_and_all_gradients(*arguments, **keywords)
    assert value == pytest.approx(expected[0], rel=1e-13)
    for mine, theirs in ((gradients, expected[1]), (state, expected[2])):
        assert mine.keys() == theirs.keys()
        for name, array in theirs.items():
            np.testing.assert_allclose(mine[name], array, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(
        rolled.forward(problem.params, problem.X, **keywords)[0],
        unrolled.forward(problem.params, problem.X, **keywords)[0],
        rtol=1e-13,
    )


ROLLED = [
    {"cell": "elman", **ALL_THREE},
    {"cell": "elman", **ALL_THREE, "mode": "many_to_one", "notation": "aa"},
    pytest.param({"cell": "lstm", **ALL_THREE}, marks=pytest.mark.slow),
    pytest.param(
        {"cell": "gru", **ALL_THREE, "notation": "layered", "time_reduction": "mean"},
        marks=pytest.mark.slow,
    ),
    pytest.param(
        {"cell": "lstm", **ALL_THREE, "mode": "many_to_one", "batch_reduction": "tokens"},
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize(
    "fields",
    [
        {"cell": "elman", **ALL_THREE},
        {"cell": "elman", **ALL_THREE, "mode": "many_to_one", "notation": "aa"},
        pytest.param(
            {"cell": "lstm", **ALL_THREE, "mode": "many_to_one", "batch_reduction": "tokens"},
            marks=pytest.mark.slow,
        ),
    ],
    ids=_id,
)
def test_the_rolled_module_keeps_nothing_of_a_call_but_its_arrays(fields: dict[str, Any]) -> None:
    """The rolled NumPy module keeps its arrays of the steps between calls (the workspace):
    after a call on other values, of the same shapes, it still equals the unrolled module."""
    rolled = _rolled(**fields)
    for steps, rng in ((2, 5), (2, 6), (3, 5), (3, 6)):
        unrolled = _module(**fields, steps=steps)
        problem = random_problem(unrolled, batch=3, n_in=2, n_hidden=2, n_out=3, rng=rng)
        arguments = (problem.params, problem.X, problem.Y)
        keywords = {**problem.keywords(), **problem.initial}
        value, gradients, state = rolled.loss_and_all_gradients(*arguments, **keywords)
        expected = unrolled.loss_and_all_gradients(*arguments, **keywords)
        assert value == pytest.approx(expected[0], rel=1e-13)
        for mine, theirs in ((gradients, expected[1]), (state, expected[2])):
            for name, array in theirs.items():
                np.testing.assert_allclose(mine[name], array, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("fields", ROLLED, ids=_id)
def test_the_rolled_module_at_any_length(fields: dict[str, Any]) -> None:
    """Central differences at T = 1, 2 and 6 (the module was printed from five steps)."""
    module = _rolled(**fields)
    for steps in (1, 2, 6):
        problem = random_problem(module, steps=steps, batch=3, n_in=2, n_hidden=2, n_out=3)
        errors = finite_difference_errors(module, problem)
        assert max(errors.values()) < 1e-6, (steps, errors)


@pytest.mark.parametrize(
    "fields",
    [
        {"cell": "elman", "layers": 2, "time_reduction": "mean"},
        {"cell": "elman", "layers": 2, "direction": "bidirectional", "batch_reduction": "tokens"},
        pytest.param(
            {"cell": "gru", "layers": 2, "direction": "bidirectional", "time_reduction": "mean"},
            marks=pytest.mark.slow,
        ),
    ],
    ids=_id,
)
def test_the_rolled_module_of_a_mean_without_a_mask(fields: dict[str, Any]) -> None:
    """A mean over time or tokens without a mask divides by T, not the derivation's 5:
    central differences at T = 1, 2 and 6, and equal to the unrolled module at T = 3."""
    module = _rolled(**fields)
    for steps in (1, 2, 6):
        problem = random_problem(module, steps=steps, batch=3, n_in=2, n_hidden=2, n_out=3)
        errors = finite_difference_errors(module, problem)
        assert max(errors.values()) < 1e-6, (steps, errors)
    unrolled = _module(**fields)
    problem = random_problem(unrolled, batch=3, n_in=2, n_hidden=2, n_out=3, rng=2)
    arguments = (problem.params, problem.X, problem.Y)
    value, gradients, state = module.loss_and_all_gradients(*arguments, **problem.initial)
    expected = unrolled.loss_and_all_gradients(*arguments, **problem.initial)
    assert value == pytest.approx(expected[0], rel=1e-13)
    for mine, theirs in ((gradients, expected[1]), (state, expected[2])):
        assert mine.keys() == theirs.keys()
        for name, array in theirs.items():
            np.testing.assert_allclose(mine[name], array, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize(("cell", "own"), [("lstm", 0), ("gru", 1), ("elman", 0)])
def test_a_units_step_reads_each_operand_through_one_product(cell: str, own: int) -> None:
    """The gates' products of one operand (the input, the layer below's state, the unit's
    previous state) are one product with the parameters side by side, whatever the cell;
    ``own`` counts the products of what the step itself computes (a GRU's r * h_prev)."""
    source = symbptt.emit_numpy(ModelSpec(steps=2, cell=cell, **ALL_THREE))
    forward = source.split("def _forward(")[1].split("\ndef ")[0]
    loops = re.split(r"\n    for t in range\(.*\):\n", forward)[1:]
    assert len(loops) == 4  # 1f, 1b, 2f, 2b
    for k, loop in enumerate(loops):
        body = "\n".join(line for line in loop.split("\n") if line.startswith("        "))
        # layer 1 reads the input and its previous state; layer 2 the two directions
        # below and its previous state
        assert body.count("np.dot(") == (2 if k < 2 else 3) + own, body
    if cell != "elman":  # one product per operand, no parameters to put side by side
        assert "W_h_1f_prev = np.concatenate(" in forward


def test_what_only_its_own_step_reads_has_no_array_of_the_steps() -> None:
    """A pre-activation (z), a candidate state (h_new) or an intermediate adjoint (dg) is
    read by its own step only: a variable of the loop, not an array kept for every step;
    what the next step, the output layer or a gradient sum reads keeps its array."""
    source = symbptt.emit_numpy(ModelSpec(steps=2, cell="lstm", **ALL_THREE))
    for local in ("h_new_1f", "dg_2b", "dh_new_1b"):
        assert (
            f'"{local}"' not in source and f"{local}_t = np.empty((m, n_hidden), dtype)" in source
        )
    for kept in ("h_1f", "c_1f", "c_new_2f", "i_2b", "delta_g_1f", "dc_new_1f", "dh_2f"):
        assert f'{kept} = _steps(ws, "{kept}", (T + 2, m, n_hidden), dtype)' in source, kept


def test_composed_modules_are_ruff_clean(tmp_path: Path) -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed")
    for i, fields in enumerate([*FAST, *SLOW]):
        for unrolled in (True, False):
            source = symbptt.emit_numpy(ModelSpec(steps=2, **fields), unrolled=unrolled)
            (tmp_path / f"module_{i}_{int(unrolled)}.py").write_text(source)
    for command in (["check", "--isolated"], ["format", "--isolated", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, str(tmp_path)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


# -- symbptt derive ---------------------------------------------------------------------------
def _derive(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from symbptt.cli import main

    code = main(["derive", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_derive_writes_the_unrolled_code_of_a_composed_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--layers", "2", "--bidirectional", "--masked", "--steps", "3", "--out", str(tmp_path)]
    code, out, err = _derive([*argv, "--unrolled"], capsys)
    assert code == 0, err
    written = ["derivation.md", "derivation.pdf", "derivation.tex", "gradients.py"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [*written, "gradients_unrolled.py"]
    assert "2 layers, bidirectional, masked" in out
    assert re.search(r"gradients.py +max relative error .* OK", out)
    assert re.search(r"gradients_unrolled.py +max relative error .* OK", out)
    assert err == ""
    # the document's numerical check ran on the module written beside it
    verified = (tmp_path / "derivation.md").read_text().split("Verified")[-1]
    assert "central finite differences" in verified and "(passed)" in verified.split("finite")[1]
    for name in ("gradients.py", "gradients_unrolled.py"):
        module = symbptt.load_module((tmp_path / name).read_text())
        assert gradcheck(module, batch=3).ok


def test_derive_writes_the_rolled_code_of_a_mean_without_a_mask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--time-reduction", "mean", "--layers", "2", "--steps", "101", "--no-pdf"]
    code, out, err = _derive([*argv, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert re.search(r"gradients.py +max relative error .* OK", out)
    assert not (tmp_path / "gradients_unrolled.py").exists()
    code, _, err = _derive([*argv, "--unrolled", "--out", str(tmp_path / "more")], capsys)
    assert code == 2
    assert "straight-line code is written for at most 100 (gradients.py takes any T)" in err
    assert not (tmp_path / "more").exists()


# -- PyTorch ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_generated_module_equals_torch_lstm_on_packed_sequences(
    rng: np.random.Generator,
) -> None:
    """nn.LSTM(num_layers=2, bidirectional=True) on packed sequences, class labels with
    ignore_index at padded steps, autograd: the same loss, gradients (parameters, X, the
    initial states) and final states h_n, c_n as the generated module's."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (optional): the autograd comparison needs it")
    import torch

    steps, m, n_in, n_h, n_out = 5, 4, 3, 2, 3
    lengths = [5, 2, 4, 1]
    module = _module(cell="lstm", **ALL_THREE, steps=steps, batch_reduction="tokens")
    mask = np.array([[t < n for n in lengths] for t in range(steps)])
    torch.manual_seed(int(rng.integers(2**31)))
    lstm = torch.nn.LSTM(n_in, n_h, num_layers=2, bidirectional=True, dtype=torch.float64)
    head = torch.nn.Linear(2 * n_h, n_out, dtype=torch.float64)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            p.copy_(torch.zeros_like(p) if name.startswith("bias_hh") else torch.randn_like(p))
    X = torch.tensor(rng.normal(size=(steps, m, n_in)), requires_grad=True)
    h0 = torch.tensor(rng.normal(size=(4, m, n_h)), requires_grad=True)
    c0 = torch.tensor(rng.normal(size=(4, m, n_h)), requires_grad=True)
    labels = rng.integers(0, n_out, size=(steps, m))
    labels[~mask] = -100
    packed = torch.nn.utils.rnn.pack_padded_sequence(X, lengths, enforce_sorted=False)
    out, (h_n, c_n) = lstm(packed, (h0, c0))
    out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=steps)[0]
    loss = torch.nn.functional.cross_entropy(
        head(out).reshape(-1, n_out), torch.tensor(labels.reshape(-1)), ignore_index=-100
    )
    loss.backward()
    units = [("1f", "l0"), ("1b", "l0_reverse"), ("2f", "l1"), ("2b", "l1_reverse")]

    def split(get: Any) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for unit, where in units:
            w_ih, w_hh = (get(getattr(lstm, f"{w}_{where}")) for w in ("weight_ih", "weight_hh"))
            bias = get(getattr(lstm, f"bias_ih_{where}"))
            for k, gate in enumerate("ifco"):  # torch's order: i, f, g (our c), o
                rows = slice(k * n_h, (k + 1) * n_h)
                if unit.startswith("1"):
                    found[f"W_x{gate}_{unit}"] = w_ih[rows]
                else:
                    found[f"W_x{gate}_{unit}_f"] = w_ih[rows, :n_h]
                    found[f"W_x{gate}_{unit}_b"] = w_ih[rows, n_h:]
                found[f"W_h{gate}_{unit}"] = w_hh[rows]
                found[f"b_{gate}_{unit}"] = bias[rows][:, None]
        weight, bias = get(head.weight), get(head.bias)
        return found | {"W_hy_f": weight[:, :n_h], "W_hy_b": weight[:, n_h:], "b_y": bias[:, None]}

    params = split(lambda p: p.detach().numpy().copy())
    initial = {}
    for k, (unit, _) in enumerate(units):
        initial[f"h0_{unit}"] = h0.detach().numpy()[k].copy()
        initial[f"c0_{unit}"] = c0.detach().numpy()[k].copy()
    x = X.detach().numpy()
    value, gradients, state = module.loss_and_all_gradients(params, x, labels, mask=mask, **initial)
    assert value == pytest.approx(loss.item(), rel=1e-12)
    for name, expected in split(lambda p: p.grad.numpy()).items():
        np.testing.assert_allclose(gradients[name], expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(state["dX"], X.grad.numpy(), rtol=1e-9, atol=1e-12)
    for k, (unit, _) in enumerate(units):
        np.testing.assert_allclose(state[f"dh0_{unit}"], h0.grad.numpy()[k], atol=1e-12)
        np.testing.assert_allclose(state[f"dc0_{unit}"], c0.grad.numpy()[k], atol=1e-12)
        np.testing.assert_allclose(state[f"h_{unit}_T"], h_n.detach().numpy()[k], rtol=1e-12)
        np.testing.assert_allclose(state[f"c_{unit}_T"], c_n.detach().numpy()[k], rtol=1e-12)


# -- truncated BPTT ----------------------------------------------------------------------------
def test_truncated_bptt_carries_every_units_state(rng: np.random.Generator) -> None:
    """Windows of k steps over a stacked masked LSTM: the loss is the whole sequence's,
    the gradients the sum of the windows', each window started from the states the
    previous one ended in (every unit's h and c); k >= T is full BPTT."""
    from symbptt.train import truncated_bptt

    module = _rolled(cell="lstm", layers=2, masked=True)
    problem = random_problem(module, steps=6, batch=3, n_in=2, n_hidden=2, n_out=3, rng=rng)
    mask = np.ones((6, 3))
    mask[5:, 1] = 0  # example 1 ends at step 5, in the last window
    params, X, Y = problem.params, problem.X, problem.Y
    initial = problem.initial
    full = module.loss_and_all_gradients(params, X, Y, mask=mask, **initial)
    loss, grads, final = truncated_bptt(module, params, X, Y, 6, mask=mask, **initial)
    assert loss == pytest.approx(full[0], rel=1e-13)
    for name, g in full[1].items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-12)
    for key, keyword in module.INITIALS.items():
        np.testing.assert_allclose(final[keyword], full[2][f"{key}_T"], rtol=1e-13)

    loss, grads, final = truncated_bptt(module, params, X, Y, 4, mask=mask, **initial)
    assert loss == pytest.approx(full[0], rel=1e-12)  # the forward pass is exact
    first = module.loss_and_all_gradients(params, X[:4], Y[:4], mask=mask[:4], **initial)
    carried = {kw: first[2][f"{key}_T"] for key, kw in module.INITIALS.items()}
    second = module.loss_and_all_gradients(params, X[4:], Y[4:], mask=mask[4:], **carried)
    for name in module.PARAMETERS:
        np.testing.assert_allclose(grads[name], first[1][name] + second[1][name], rtol=1e-12)
    for key, keyword in module.INITIALS.items():
        np.testing.assert_allclose(final[keyword], full[2][f"{key}_T"], rtol=1e-12)


def test_truncated_bptt_refuses_what_windows_cannot_carry(rng: np.random.Generator) -> None:
    from symbptt.train import truncated_bptt

    module = _rolled(**ALL_THREE)
    problem = random_problem(module, steps=4, batch=2, n_in=2, n_hidden=2, n_out=3, rng=rng)
    args = (module, problem.params, problem.X, problem.Y)
    with pytest.raises(ValueError, match=r"^k: a bidirectional model's backward direction"):
        truncated_bptt(*args, 2, mask=np.ones((4, 2)))
    stacked = _rolled(layers=2, masked=True)
    problem = random_problem(stacked, steps=4, batch=2, n_in=2, n_hidden=2, n_out=3, rng=rng)
    mask = np.ones((4, 2))
    mask[2:, 1] = 0
    with pytest.raises(ValueError, match=r"^mask: example 1 has no real step in the window"):
        truncated_bptt(stacked, problem.params, problem.X, problem.Y, 2, mask=mask)
    with pytest.raises(TypeError, match=r"^mask: required"):
        truncated_bptt(stacked, problem.params, problem.X, problem.Y, 2)


def test_fit_trains_a_masked_stacked_model(rng: np.random.Generator) -> None:
    """fit passes the mask to every call: its first loss is the module's loss with the mask,
    each update is the optimizer's on the module's own gradients, and the loss falls; without the
    mask, or with one for an unmasked module, one error names it."""
    from symbptt.optimizers import SGD
    from symbptt.train import fit

    module = _rolled(cell="gru", layers=2, masked=True)
    problem = random_problem(module, steps=5, batch=3, n_in=2, n_hidden=3, n_out=3, rng=rng)
    mask = np.ones((5, 3))
    mask[4:, 2] = 0  # example 2: four real steps
    params = {k: v.copy() for k, v in problem.params.items()}
    start = module.loss(params, problem.X, problem.Y, mask=mask, **problem.initial)
    expected = {k: v.copy() for k, v in params.items()}
    _, grads = module.loss_and_gradients(
        expected, problem.X, problem.Y, mask=mask, **problem.initial
    )
    for name, g in grads.items():
        expected[name] -= 0.1 * g
    losses = fit(
        module,
        params,
        problem.X,
        problem.Y,
        optimizer=SGD(lr=0.1),
        iterations=1,
        mask=mask,
        **problem.initial,
    )
    assert losses == [pytest.approx(start, rel=1e-14)]
    for name, value in expected.items():
        np.testing.assert_allclose(params[name], value, rtol=1e-14)
    losses = fit(module, params, problem.X, problem.Y, iterations=30, mask=mask, **problem.initial)
    assert losses[-1] < losses[0]
    before = module.loss(params, problem.X, problem.Y, mask=mask, **problem.initial)
    truncated = fit(
        module,
        params,
        problem.X,
        problem.Y,
        iterations=1,
        truncate=3,
        mask=mask,
        **problem.initial,
    )  # windows of steps 1-3 and 4-5: each gives example 2 a real step
    assert truncated == [pytest.approx(before, rel=1e-13)]  # the forward pass is exact
    with pytest.raises(TypeError, match=r"^mask: required"):
        fit(module, params, problem.X, problem.Y, iterations=1)
    plain = _rolled(layers=2)
    other = random_problem(plain, steps=3, batch=2, n_in=2, n_hidden=2, n_out=3, rng=rng)
    with pytest.raises(TypeError, match=r"^mask: this module is not masked"):
        fit(plain, other.params, other.X, other.Y, iterations=1, mask=np.ones((3, 2)))


def test_gradient_norms_of_a_stacked_model_match_finite_differences() -> None:
    """A stacked model's curve is of the last layer's state (the one the output layer
    reads): at k = 0, the norm of central differences of L_T in that layer's initial state;
    a masked or a bidirectional model is refused in one line."""
    from symbptt.train import gradient_norms, last_step_module

    module = _rolled(cell="lstm", layers=2)
    problem = random_problem(module, steps=4, batch=2, n_in=2, n_hidden=3, n_out=3, rng=3)
    initial = problem.initial
    norms = gradient_norms(module, problem.params, problem.X, problem.Y, **initial)
    assert norms.shape == (4,)
    last = last_step_module(module)
    h0 = initial["h0_2"]
    assert h0 is not None
    grad = np.zeros_like(h0)
    eps = 1e-6
    for index in np.ndindex(*h0.shape):
        step = np.zeros_like(h0)
        step[index] = eps
        up, down = (
            last.loss(problem.params, problem.X, problem.Y[-1], **{**initial, "h0_2": h0 + s})
            for s in (step, -step)
        )
        grad[index] = (up - down) / (2 * eps)
    assert norms[0] == pytest.approx(np.linalg.norm(grad), rel=1e-6)
    for fields, what in (({"masked": True}, "masked"), ({"direction": "bidirectional"}, "bid")):
        other = _rolled(**fields)
        p = random_problem(other, steps=3, batch=2, n_in=2, n_hidden=2, n_out=3, rng=0)
        with pytest.raises(ValueError, match=rf"^gradient_norms: not defined for a {what}"):
            gradient_norms(other, p.params, p.X, p.Y, **p.initial)
