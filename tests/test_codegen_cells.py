"""Generated NumPy code for every cell: Elman in its notations, LSTM, GRU and users' cells.

Every gradient of every module (parameters, X and every initial state) against
central differences of the module's own loss; the rolled module (a schedule
derived from the step form) against the unrolled one (the derivation's own
assignments); float32; clean and reproducible text; a user's cell file through
the same path; LSTM and GRU against PyTorch autograd when torch is importable.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import symbptt
from symbptt import ModelSpec
from symbptt.model import BUILTIN_CELLS, load_cell
from symbptt.model.spec import CHOICES
from symbptt.oracle.gradcheck import (
    finite_difference_errors,
    initial_arguments,
    random_problem,
    relative_error,
    taylor_test,
)
from symbptt.train import fit, gradient_norms, truncated_bptt

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [("softmax", "cross_entropy"), ("sigmoid", "squared_error")]

#: PyTorch's GRU (the reset gate applied after the recurrent product, with its own bias).
TORCH_GRU = """
name = "torch_gru"
description = "the GRU as torch.nn.GRU computes it"
reference = "PyTorch documentation, torch.nn.GRU"
readout = "h"
equations = [
    "r[t] = sigmoid(W_ir @ x[t] + b_ir + W_hr @ h[t-1] + b_hr)",
    "z[t] = sigmoid(W_iz @ x[t] + b_iz + W_hz @ h[t-1] + b_hz)",
    "n[t] = tanh(W_in @ x[t] + b_in + r[t] * (W_hn @ h[t-1] + b_hn))",
    "h[t] = (1 - z[t]) * n[t] + z[t] * h[t-1]",
]

[inputs]
x = "n_in"

[states]
h = "n_hidden"

[parameters]
W_ir = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_hr = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b_ir = { shape = ["n_hidden", 1], kind = "bias" }
b_hr = { shape = ["n_hidden", 1], kind = "bias" }
W_iz = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_hz = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b_iz = { shape = ["n_hidden", 1], kind = "bias" }
b_hz = { shape = ["n_hidden", 1], kind = "bias" }
W_in = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_hn = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b_in = { shape = ["n_hidden", 1], kind = "bias" }
b_hn = { shape = ["n_hidden", 1], kind = "bias" }

[notations.torch]
title = "torch.nn.GRU's names"
layout = "column"

[notations.torch.names]
W_ir = { ascii = "W_ir", latex = "W_{ir}" }
W_hr = { ascii = "W_hr", latex = "W_{hr}" }
b_ir = { ascii = "b_ir", latex = "b_{ir}" }
b_hr = { ascii = "b_hr", latex = "b_{hr}" }
W_iz = { ascii = "W_iz", latex = "W_{iz}" }
W_hz = { ascii = "W_hz", latex = "W_{hz}" }
b_iz = { ascii = "b_iz", latex = "b_{iz}" }
b_hz = { ascii = "b_hz", latex = "b_{hz}" }
W_in = { ascii = "W_in", latex = "W_{in}" }
W_hn = { ascii = "W_hn", latex = "W_{hn}" }
b_in = { ascii = "b_in", latex = "b_{in}" }
b_hn = { ascii = "b_hn", latex = "b_{hn}" }
W_out = { ascii = "W_hy", latex = "W_{hy}" }
b_out = { ascii = "b_y", latex = "b_y" }
x = { ascii = "x", latex = "x" }
r = { ascii = "r", latex = "r" }
z = { ascii = "z", latex = "z" }
n = { ascii = "n", latex = "n" }
h = { ascii = "h", latex = "h" }
logits = { ascii = "o", latex = "o" }
y_hat = { ascii = "y_hat", latex = '\\hat{y}' }
y = { ascii = "y", latex = "y" }
"""

#: An LSTM with peephole connections (Gers & Schmidhuber 2000): the gates see the cell
#: state through elementwise weights (n x 1, as biases are); the state keys renamed
#: (s and m) and the row layout, so nothing can lean on the built-in LSTM's names.
PEEPHOLE_LSTM = """
name = "peephole"
description = "an LSTM whose gates see the cell state"
reference = "F. A. Gers & J. Schmidhuber, Recurrent nets that time and count, IJCNN (2000)"
readout = "s"
equations = [
    "i[t] = sigmoid(A_i @ x[t] + B_i @ s[t-1] + p_i * m[t-1] + b_i)",
    "f[t] = sigmoid(A_f @ x[t] + B_f @ s[t-1] + p_f * m[t-1] + b_f)",
    "u[t] = tanh(A_u @ x[t] + B_u @ s[t-1] + b_u)",
    "m[t] = f[t] * m[t-1] + i[t] * u[t]",
    "o[t] = sigmoid(A_o @ x[t] + B_o @ s[t-1] + p_o * m[t] + b_o)",
    "s[t] = o[t] * tanh(m[t])",
]

[inputs]
x = "n_in"

[states]
s = "n_hidden"
m = "n_hidden"

[parameters]
A_i = { shape = ["n_hidden", "n_in"], kind = "weight" }
B_i = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
p_i = { shape = ["n_hidden", 1], kind = "bias" }
b_i = { shape = ["n_hidden", 1], kind = "bias" }
A_f = { shape = ["n_hidden", "n_in"], kind = "weight" }
B_f = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
p_f = { shape = ["n_hidden", 1], kind = "bias" }
b_f = { shape = ["n_hidden", 1], kind = "bias" }
A_u = { shape = ["n_hidden", "n_in"], kind = "weight" }
B_u = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b_u = { shape = ["n_hidden", 1], kind = "bias" }
A_o = { shape = ["n_hidden", "n_in"], kind = "weight" }
B_o = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
p_o = { shape = ["n_hidden", 1], kind = "bias" }
b_o = { shape = ["n_hidden", 1], kind = "bias" }

[notations.rows]
title = "peephole LSTM, rows"
layout = "row"
first_step = 0

[notations.rows.names]
A_i = { ascii = "A_i", latex = "A_i" }
B_i = { ascii = "B_i", latex = "B_i" }
p_i = { ascii = "p_i", latex = "p_i" }
b_i = { ascii = "b_i", latex = "b_i" }
A_f = { ascii = "A_f", latex = "A_f" }
B_f = { ascii = "B_f", latex = "B_f" }
p_f = { ascii = "p_f", latex = "p_f" }
b_f = { ascii = "b_f", latex = "b_f" }
A_u = { ascii = "A_u", latex = "A_u" }
B_u = { ascii = "B_u", latex = "B_u" }
b_u = { ascii = "b_u", latex = "b_u" }
A_o = { ascii = "A_o", latex = "A_o" }
B_o = { ascii = "B_o", latex = "B_o" }
p_o = { ascii = "p_o", latex = "p_o" }
b_o = { ascii = "b_o", latex = "b_o" }
W_out = { ascii = "V", latex = "V" }
b_out = { ascii = "c", latex = "c" }
x = { ascii = "X", latex = "X" }
i = { ascii = "I", latex = "I" }
f = { ascii = "F", latex = "F" }
u = { ascii = "U", latex = "U" }
o = { ascii = "O", latex = "O" }
m = { ascii = "M", latex = "M", initial = "M_init", initial_latex = "M_{init}" }
s = { ascii = "S", latex = "S", initial = "S_init", initial_latex = "S_{init}" }
logits = { ascii = "Z", latex = "Z" }
y_hat = { ascii = "P", latex = "P" }
y = { ascii = "Y", latex = "Y" }
"""


def builtin_specs() -> list[ModelSpec]:
    """Every built-in cell in every notation and mode, with a couple of output/loss pairs;
    Elman's activation, the reductions, the bias and T rotate."""
    specs = []
    k = 0
    for cell in BUILTIN_CELLS:
        for notation in load_cell(cell).notations:
            for mode in CHOICES["mode"]:
                for output, loss in PAIRS:
                    specs.append(
                        ModelSpec(
                            steps=3 if k % 3 else 2,
                            cell=cell,
                            notation=notation,
                            mode=mode,
                            output=output,
                            loss=loss,
                            hidden=CHOICES["hidden"][k % 4] if cell == "elman" else "tanh",
                            time_reduction=CHOICES["time_reduction"][(k // 2) % 2],
                            batch_reduction=CHOICES["batch_reduction"][(k // 3) % 2],
                            bias=k % 5 != 4,
                        )
                    )
                    k += 1
    return specs


SPECS = builtin_specs()


def _id(spec: ModelSpec) -> str:
    return f"{spec.cell}-{spec.notation}-{spec.mode}-{spec.output}-{spec.loss}"


@cache
def module_for(spec: ModelSpec, unrolled: bool = False) -> ModuleType:
    return symbptt.load_module(symbptt.emit_numpy(spec, unrolled=unrolled))


@cache
def user_cell(tmp: str, name: str) -> str:
    path = Path(tmp) / f"{name}.toml"
    path.write_text({"torch_gru": TORCH_GRU, "peephole": PEEPHOLE_LSTM}[name], encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def cell_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = str(tmp_path_factory.mktemp("cells"))
    return {name: user_cell(folder, name) for name in ("torch_gru", "peephole")}


def user_specs(cell_files: dict[str, str]) -> list[ModelSpec]:
    return [
        ModelSpec(steps=3, cell=cell_files["torch_gru"], notation="torch"),
        ModelSpec(
            steps=3,
            cell=cell_files["peephole"],
            notation="rows",
            mode="many_to_one",
            output="sigmoid",
            loss="binary_cross_entropy",
            time_reduction="mean",
        ),
    ]


def check_every_gradient(mod: ModuleType, seed: int) -> None:
    problem = random_problem(mod, rng=seed)
    errors = finite_difference_errors(mod, problem)
    expected = {*mod.PARAMETERS, "X", *initial_arguments(mod)}
    assert set(errors) == expected
    assert max(errors.values()) < 1e-6, errors


def check_rolled_equals_unrolled(spec: ModelSpec, seed: int) -> None:
    rolled, unrolled = module_for(spec), module_for(spec, True)
    problem = random_problem(rolled, rng=seed)
    a = rolled.loss_and_all_gradients(*problem.args())
    b = unrolled.loss_and_all_gradients(*problem.args())
    assert a[0] == pytest.approx(b[0], rel=1e-12)
    assert list(a[1]) == list(b[1]) == list(rolled.PARAMETERS)
    for name in a[1]:
        assert relative_error(a[1][name], b[1][name]) < 1e-12, name
    keys = {"dX", *(f"d{n}" for n in initial_arguments(rolled))}
    keys |= {f"{key}_T" for key in rolled.STATES}
    assert set(a[2]) == set(b[2]) == keys
    for name in keys:
        assert relative_error(a[2][name], b[2][name]) < 1e-12, name


# -- every built-in cell, notation and mode ------------------------------------------
@pytest.mark.parametrize("unrolled", [False, True], ids=["rolled", "unrolled"])
@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_every_gradient_equals_central_differences(spec: ModelSpec, unrolled: bool) -> None:
    check_every_gradient(module_for(spec, unrolled), seed=SPECS.index(spec))


@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_rolled_equals_unrolled(spec: ModelSpec) -> None:
    check_rolled_equals_unrolled(spec, seed=100 + SPECS.index(spec))


@pytest.mark.parametrize("cell", BUILTIN_CELLS)
def test_one_step_and_long_sequences(cell: str) -> None:
    """T = 1 (no loop iteration: the last step only) and a rolled module at T = 40
    against central differences along a direction (Taylor remainder, slope 2)."""
    notation = next(iter(load_cell(cell).notations))
    for mode in CHOICES["mode"]:
        check_rolled_equals_unrolled(
            ModelSpec(steps=1, cell=cell, notation=notation, mode=mode), seed=3
        )
    mod = module_for(ModelSpec(steps=3, cell=cell, notation=notation, time_reduction="mean"))
    problem = random_problem(mod, steps=40, batch=2, scale=0.4, rng=5)
    result = taylor_test(mod, problem, rng=6)
    assert 1.9 < result.slope < 2.1, result
    assert result.directional_error < 1e-6, result


@pytest.mark.parametrize("cell", BUILTIN_CELLS)
def test_float32_in_float32_out(cell: str) -> None:
    for unrolled in (False, True):
        mod = module_for(ModelSpec(steps=3, cell=cell), unrolled)
        p32 = random_problem(mod, dtype=np.float32, rng=1)
        loss, gradients, state = mod.loss_and_all_gradients(*p32.args())
        assert all(g.dtype == np.float32 for g in gradients.values())
        assert {v.dtype for v in state.values()} == {np.dtype(np.float32)}
        assert mod.forward(p32.params, p32.X)[0].dtype == np.float32
        p64 = random_problem(mod, dtype=np.float64, rng=1)
        loss64, gradients64 = mod.loss_and_gradients(*p64.args())
        assert loss == pytest.approx(loss64, rel=1e-5)
        for name in gradients:
            assert relative_error(gradients[name], gradients64[name]) < 1e-4, name


@pytest.mark.parametrize("cell", ["lstm", "gru", "torch_gru", "peephole"])
def test_both_schedules_are_right_and_agree(cell: str, cell_files: dict[str, str]) -> None:
    """A cell with parallel quantities gets two schedules (plain, and fused for small
    steps: ``FUSED_STEP_SIZE``); both against central differences, and each other."""
    if cell in cell_files:
        spec = next(x for x in user_specs(cell_files) if x.cell == cell_files[cell])
    else:
        spec = ModelSpec(steps=3, cell=cell, notation="layered", time_reduction="mean")
    mod = module_for(spec)
    assert mod.FUSED_STEP_SIZE > 0 and "def _forward_fused(" in inspect.getsource(mod)
    default = mod.FUSED_STEP_SIZE
    results = []
    try:
        for limit in (0, 10**9):  # plain, then fused
            mod.FUSED_STEP_SIZE = limit
            check_every_gradient(mod, seed=13)
            problem = random_problem(mod, rng=14, batch=3, n_hidden=5)
            results.append(mod.loss_and_all_gradients(*problem.args()))
    finally:
        mod.FUSED_STEP_SIZE = default
    (l1, g1, s1), (l2, g2, s2) = results
    assert l1 == pytest.approx(l2, rel=1e-12)
    for name in g1:
        assert relative_error(g1[name], g2[name]) < 1e-12, name
    for name in s1:
        assert relative_error(s1[name], s2[name]) < 1e-12, name


def test_one_schedule_for_a_cell_with_nothing_to_fuse() -> None:
    mod = module_for(ModelSpec(steps=3))
    assert not hasattr(mod, "FUSED_STEP_SIZE")
    assert "_fused" not in inspect.getsource(mod)


# -- the module's API for several states ----------------------------------------------
def test_api_names_every_state() -> None:
    mod = module_for(ModelSpec(steps=3, cell="lstm", notation="layered"))
    assert mod.STATES == ("h", "c") and mod.READOUT == "h"
    assert mod.STATE_SIZES == {"h": "n_hidden", "c": "n_hidden"}
    assert mod.LAYOUT == "row" and mod.PARAMETERS[:3] == ("W_xi", "W_hi", "W_xf")
    for function in (mod.forward, mod.loss, mod.loss_and_gradients, mod.loss_and_all_gradients):
        parameters = inspect.signature(function).parameters
        assert parameters["h0"].default is None and parameters["c0"].default is None
    params = mod.init_params(3, 4, 5, rng=0)
    assert params["W_xi"].shape == (3, 4) and params["W_hq"].shape == (4, 5)
    assert params["b_i"].shape == (4, 1) and not params["b_i"].any()
    doc = mod.__doc__ or ""
    assert "C_t = F_t * C_(t-1) + I_t * C_tilde_t" in doc  # printed from the derivation
    assert "H_0 and C_0 the initial states h0 and c0" in doc
    assert "state['dc0']" in doc and "state['c_T']" in doc


def test_initial_states_default_to_zeros_and_chain() -> None:
    mod = module_for(ModelSpec(steps=3, cell="lstm"))
    p = random_problem(mod, steps=6, rng=2)
    h0, c0 = p.initial["h0"], p.initial["c0"]
    assert h0 is not None and c0 is not None
    zeros = {"h0": np.zeros_like(h0), "c0": np.zeros_like(c0)}
    assert mod.loss(p.params, p.X, p.Y) == mod.loss(p.params, p.X, p.Y, **zeros)
    assert mod.loss(p.params, p.X, p.Y, c0=c0) == mod.loss(p.params, p.X, p.Y, zeros["h0"], c0)
    whole, _ = mod.forward(p.params, p.X, h0, c0)
    _, _, state = mod.loss_and_all_gradients(p.params, p.X[:2], p.Y[:2], h0, c0)
    second, _ = mod.forward(p.params, p.X[2:], state["h_T"], state["c_T"])
    np.testing.assert_allclose(second, whole[2:], rtol=1e-13, atol=1e-15)


def test_validation_names_each_state() -> None:
    mod = module_for(ModelSpec(steps=3, cell="lstm"))
    p = random_problem(mod, rng=3)
    params, X, Y = p.params, p.X, p.Y
    h0, c0 = p.initial["h0"], p.initial["c0"]
    assert h0 is not None and c0 is not None
    with pytest.raises(ValueError, match=r"c0: expected shape \(m, n_hidden\) = \(2, 4\)"):
        mod.loss(params, X, Y, h0, c0.T)
    with pytest.raises(ValueError, match="c0: expected dtype float64"):
        mod.loss(params, X, Y, h0, c0.astype(np.float32))
    with pytest.raises(ValueError, match="params: missing W_hf"):
        mod.loss({k: v for k, v in params.items() if k != "W_hf"}, X, Y)
    with pytest.raises(ValueError, match=r"W_xo: expected shape \(n_hidden, n_in\)"):
        mod.loss({**params, "W_xo": params["W_xo"].T}, X, Y)


# -- the schedule -----------------------------------------------------------------------
def loops(source: str) -> list[str]:
    """The statements inside each ``for`` loop of a rolled module (its header left out)."""
    out: list[str] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("    for "):
            i += 1
            continue
        header = ""
        while not (lines[i].endswith(":") and not lines[i].startswith("     ")):
            header += lines[i]
            i += 1  # the header, perhaps on several lines, ends with "):" or ":"
        header += lines[i]
        i += 1
        if "range(T" not in header and "[:T" not in header and "T - 1" not in header:
            continue  # a loop of the API (validation), not a time loop
        body = ""
        while i < len(lines) and (lines[i].startswith("        ") or not lines[i].strip()):
            if lines[i].strip() and not lines[i].strip().startswith("#"):
                body += lines[i].strip() + "\n"
            i += 1
        out.append(body)
    return out


def test_the_loops_hold_only_what_the_states_carry() -> None:
    """LSTM: the input projections before the loop, the weight gradients after it."""
    source = symbptt.emit_numpy(ModelSpec(steps=3, cell="lstm"))
    found = loops(source)
    assert len(found) == 4  # the plain schedule's two loops, then the fused one's
    for body in found:
        for name in ("W_xi", "W_xf", "W_xo", "W_xc", "W_hy", "b_i", "dW", "x_all", "X"):
            assert name not in body, (name, body)
    plain = source.split("def _forward_fused(")[0]
    forward_fn, backward_fn = plain.split("def _forward(")[1], plain.split("def _backward(")[1]
    assert "np.dot(x_all, W_xi.T, out=i_pre_all)" in forward_fn.split("    for ")[0]
    after = backward_fn.split("dh_t += ")[-1]  # after the backward loop
    assert (
        "dW_xi = delta_i_all.T @ x_all" in after and "dW_hi = delta_i_all.T @ h_prev_all" in after
    )


def test_a_step_that_reads_no_state_runs_before_the_loop(tmp_path: Path) -> None:
    """Dependency analysis, not a recognised shape: u_t reads no state, so it is
    computed for every step at once, and so is its part of the adjoint recursion."""
    text = TORCH_GRU.replace('name = "torch_gru"', 'name = "with_u"')
    text = text.replace(
        '    "h[t] = (1 - z[t]) * n[t] + z[t] * h[t-1]",',
        '    "u[t] = tanh(W_in @ x[t])",\n'
        '    "h[t] = (1 - z[t]) * n[t] + z[t] * h[t-1] + u[t] * n[t]",',
    )
    text = text.replace("\nn = { ascii", '\nu = { ascii = "u", latex = "u" }\nn = { ascii')
    path = tmp_path / "with_u.toml"
    path.write_text(text, encoding="utf-8")
    spec = ModelSpec(steps=3, cell=str(path), notation="torch")
    source = symbptt.emit_numpy(spec)
    forward = loops(source)[0]
    before = source.split("for t in range(T):")[0]
    assert 'u_all = _buffer(ws, "u_all"' in before and "np.tanh(u_all, out=u_all)" in before
    assert "u_seq[:T]" in source.split("np.tanh(u_all, out=u_all)")[1]  # views, made before
    assert "out=u_t" not in forward and "u_t[...]" not in forward
    check_every_gradient(module_for(spec), seed=4)
    check_rolled_equals_unrolled(spec, seed=5)


# -- a user's cell file --------------------------------------------------------------
def test_user_cells_through_the_same_path(cell_files: dict[str, str]) -> None:
    for spec in user_specs(cell_files):
        for unrolled in (False, True):
            check_every_gradient(module_for(spec, unrolled), seed=7)
        check_rolled_equals_unrolled(spec, seed=8)
    peephole = module_for(user_specs(cell_files)[1])
    assert peephole.STATES == ("s", "m") and peephole.READOUT == "s"
    assert list(inspect.signature(peephole.loss).parameters)[-3:] == ["s0", "m0", "check"]


# -- the text ----------------------------------------------------------------------------
def _ruff() -> list[str]:
    """Skip without ruff, except under CI (which installs the test extra): there, fail."""
    if importlib.util.find_spec("ruff") is None:
        if os.environ.get("CI"):
            pytest.fail("ruff is missing under CI; install the test extra (pip install -e .[test])")
        pytest.skip("ruff is not installed")
    return [sys.executable, "-m", "ruff"]


def test_generated_code_is_ruff_clean(tmp_path: Path, cell_files: dict[str, str]) -> None:
    ruff = _ruff()
    specs = [s for s in SPECS if s.output == "softmax"] + user_specs(cell_files)
    for i, spec in enumerate(specs):
        for unrolled in (False, True):
            source = symbptt.emit_numpy(spec, unrolled=unrolled)
            (tmp_path / f"module_{i}_{int(unrolled)}.py").write_text(source)
    for command in (["check", "--isolated"], ["format", "--isolated", "--check"]):
        result = subprocess.run([*ruff, *command, str(tmp_path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_same_spec_gives_the_same_bytes_under_any_hash_seed(
    cell_files: dict[str, str],
) -> None:
    script = (
        "import hashlib, sys, symbptt\n"
        "from symbptt import ModelSpec\n"
        "h = hashlib.sha256()\n"
        "specs = [ModelSpec(steps=3, cell='lstm'),"
        " ModelSpec(steps=2, cell='gru', notation='layered', mode='many_to_one'),"
        " ModelSpec(steps=2, cell=sys.argv[1], notation='rows', mode='many_to_one')]\n"
        "for spec in specs:\n"
        "    for unrolled in (False, True):\n"
        "        h.update(symbptt.emit_numpy(spec, unrolled=unrolled).encode())\n"
        "print(h.hexdigest())\n"
    )
    digests = set()
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", script, cell_files["peephole"]],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        digests.add(result.stdout.strip())
    assert len(digests) == 1


# -- training with several states -------------------------------------------------------
def test_truncated_bptt_carries_every_state() -> None:
    mod = module_for(ModelSpec(steps=3, cell="lstm", time_reduction="mean"))
    p = random_problem(mod, steps=7, rng=9)
    h0, c0 = p.initial["h0"], p.initial["c0"]
    loss, grads, state = mod.loss_and_all_gradients(p.params, p.X, p.Y, h0, c0)
    t_loss, t_grads, final = truncated_bptt(mod, p.params, p.X, p.Y, 7, h0, c0=c0)
    assert t_loss == pytest.approx(loss, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(t_grads[name], grads[name], rtol=1e-12, atol=1e-14)
    assert set(final) == {"h0", "c0"}
    np.testing.assert_allclose(final["h0"], state["h_T"], rtol=1e-12)
    np.testing.assert_allclose(final["c0"], state["c_T"], rtol=1e-12)
    # windows of 2: the forward pass (loss and final states) is the whole sequence's
    w_loss, _, w_final = truncated_bptt(mod, p.params, p.X, p.Y, 2, h0, c0=c0)
    assert w_loss == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(w_final["c0"], state["c_T"], rtol=1e-12)
    # and it goes on from there: the next sequence starts from both final states
    more = truncated_bptt(mod, p.params, p.X, p.Y, 3, **w_final)
    assert more[0] == pytest.approx(mod.loss(p.params, p.X, p.Y, **w_final), rel=1e-12)
    with pytest.raises(TypeError, match="unexpected initial state"):
        truncated_bptt(mod, p.params, p.X, p.Y, 2, h0, m0=c0)


def test_gradient_norms_of_the_readout_state_match_finite_differences() -> None:
    mod = module_for(ModelSpec(steps=3, cell="gru", mode="many_to_one"))
    lstm = module_for(ModelSpec(steps=3, cell="lstm"))
    for module in (mod, lstm):
        p = random_problem(module, steps=4, rng=10)
        initial = {k: v for k, v in p.initial.items() if v is not None}
        norms = gradient_norms(module, p.params, p.X, p.Y, **initial)
        assert norms.shape == (4,)
        target = p.Y if module.SPEC["mode"] == "many_to_one" else p.Y[-1]
        last = symbptt.train.last_step_module(module)
        eps = 1e-6
        for k in range(4):
            at_k = initial if k == 0 else _states_after(module, p, k, initial)
            grad = np.zeros_like(at_k["h0"])
            for index in np.ndindex(*grad.shape):
                step = np.zeros_like(grad)
                step[index] = eps
                up = last.loss(p.params, p.X[k:], target, **{**at_k, "h0": at_k["h0"] + step})
                down = last.loss(p.params, p.X[k:], target, **{**at_k, "h0": at_k["h0"] - step})
                grad[index] = (up - down) / (2 * eps)
            assert norms[k] == pytest.approx(np.linalg.norm(grad), rel=1e-6)


def _states_after(module: ModuleType, p: Any, k: int, initial: dict[str, Any]) -> dict[str, Any]:
    _, _, state = module.loss_and_all_gradients(
        p.params, p.X[:k], p.Y if module.SPEC["mode"] == "many_to_one" else p.Y[:k], **initial
    )
    return {f"{key}0": state[f"{key}_T"] for key in module.STATES}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fit_trains_a_gated_cell(cell: str) -> None:
    mod = module_for(ModelSpec(steps=4, cell=cell))
    rng = np.random.default_rng(11)
    params = mod.init_params(4, 8, 4, rng=rng)
    eye = np.eye(4)
    X = eye[[0, 1, 2, 2]][:, None, :]  # "hell"
    Y = eye[[1, 2, 2, 3]][:, None, :]  # "ello"
    losses = fit(mod, params, X, Y, optimizer=symbptt.Adam(lr=0.05), iterations=150)
    assert losses[-1] < 0.1 * losses[0]
    truncated = fit(mod, mod.init_params(4, 8, 4, rng=1), X, Y, iterations=150, truncate=2)
    assert truncated[-1] < 0.5 * truncated[0]


# -- PyTorch autograd of the same equations --------------------------------------------
def _torch() -> Any:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (optional): the autograd comparison needs it")
    import torch

    torch.set_default_dtype(torch.float64)
    return torch


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_cells_equal_torch_autograd(cell: str) -> None:
    torch = _torch()
    mod = module_for(ModelSpec(steps=3, cell=cell))
    p = random_problem(mod, steps=5, rng=12)
    loss, grads, state = mod.loss_and_all_gradients(*p.args())
    P = {k: torch.tensor(v, requires_grad=True) for k, v in p.params.items()}
    X = torch.tensor(p.X, requires_grad=True)
    init = {k: torch.tensor(v, requires_grad=True) for k, v in p.initial.items()}
    sig, tanh = torch.sigmoid, torch.tanh
    h = init["h0"].T
    c = init["c0"].T if "c0" in init else None
    total = torch.zeros(())
    for t in range(X.shape[0]):
        x = X[t].T
        if cell == "lstm":
            i = sig(P["W_xi"] @ x + P["W_hi"] @ h + P["b_i"])
            f = sig(P["W_xf"] @ x + P["W_hf"] @ h + P["b_f"])
            o = sig(P["W_xo"] @ x + P["W_ho"] @ h + P["b_o"])
            g = tanh(P["W_xc"] @ x + P["W_hc"] @ h + P["b_c"])
            c = f * c + i * g
            h = o * tanh(c)
        else:
            r = sig(P["W_xr"] @ x + P["W_hr"] @ h + P["b_r"])
            z = sig(P["W_xz"] @ x + P["W_hz"] @ h + P["b_z"])
            g = tanh(P["W_xh"] @ x + P["W_hh"] @ (r * h) + P["b_h"])
            h = z * h + (1 - z) * g
        logits = P["W_hy"] @ h + P["b_y"]
        total = total - (torch.tensor(p.Y[t].T) * torch.log_softmax(logits, dim=0)).sum()
    value = total / X.shape[1]
    value.backward()
    assert float(value.detach()) == pytest.approx(loss, rel=1e-12)
    for name, tensor in P.items():
        assert relative_error(grads[name], tensor.grad.numpy()) < 1e-10, name
    assert relative_error(state["dX"], X.grad.numpy()) < 1e-10
    for name, tensor in init.items():
        assert relative_error(state[f"d{name}"], tensor.grad.numpy()) < 1e-10, name


# -- a parameter whose name the generated module uses for its own value --------------------

#: The example GRU with its W_in renamed: each name below is one the generated module
#: also gives its own value (an argument, the batch size, a schedule array, an import).
CLASHES = {
    "m": "in _forward(): `T, m, n_in = X.shape`",
    "X": "as an argument of _forward()",
    "params": "as an argument of _forward()",
    "h0": "as an argument of _forward()",
    "gradients": "in _backward(): `gradients = {",
    "h_seq": 'in _forward(): `h_seq = _buffer(ws, "h_seq"',
    "np": "at its top level: `import numpy as np`",
}


def _renamed_gru(tmp_path: Path, name: str) -> Path:
    text = (ROOT / "examples" / "gru_pytorch.toml").read_text()
    path = tmp_path / f"gru_{name}.toml"
    path.write_text(text.replace("W_in", name))
    return path


@pytest.mark.parametrize("name", sorted(CLASHES))
def test_a_parameter_named_like_the_modules_own_values_is_refused_in_one_line(
    tmp_path: Path, name: str
) -> None:
    spec = ModelSpec(steps=3, cell=str(_renamed_gru(tmp_path, name)))
    with pytest.raises(symbptt.SpecError) as info:
        symbptt.emit_numpy(spec)
    message = str(info.value)
    assert message.startswith(f"parameter {name!r}: the generated numpy module already uses")
    assert CLASHES[name] in message
    assert message.endswith("rename the parameter in the cell file")
    assert "\n" not in message


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_the_other_backends_refuse_a_clashing_parameter_too(tmp_path: Path, backend: str) -> None:
    pytest.importorskip(backend)
    spec = ModelSpec(steps=3, cell=str(_renamed_gru(tmp_path, "m")))
    with pytest.raises(
        symbptt.SpecError, match=f"generated {backend} module already uses the name 'm'"
    ):
        symbptt.emit(spec, backend=backend)


def test_a_parameter_named_like_a_value_of_another_function_is_printed_and_right(
    tmp_path: Path,
) -> None:
    """``carry`` is the JAX scan's name, not the NumPy module's: the NumPy module keeps it,
    and its gradients pass central differences (the check refuses only real clashes)."""
    spec = ModelSpec(steps=3, cell=str(_renamed_gru(tmp_path, "carry")))
    mod = symbptt.load_module(symbptt.emit_numpy(spec))
    assert "carry" in mod.PARAMETERS
    errors = finite_difference_errors(mod, random_problem(mod, rng=4))
    assert max(errors.values()) < 1e-6


@pytest.mark.parametrize("name", ["scale", "message"])
def test_a_parameter_named_like_a_local_of_a_function_that_reads_no_parameter_is_kept(
    tmp_path: Path, name: str
) -> None:
    """init_params's ``scale`` and a check's ``message`` are locals of functions that read
    no parameter: every backend prints the module, and NumPy's gradients pass central
    differences."""
    spec = ModelSpec(steps=3, cell=str(_renamed_gru(tmp_path, name)))
    mod = symbptt.load_module(symbptt.emit_numpy(spec))
    assert name in mod.PARAMETERS
    errors = finite_difference_errors(mod, random_problem(mod, rng=4))
    assert max(errors.values()) < 1e-6
    for backend, library in (("torch", "torch"), ("jax", "jax"), ("array_api", "array_api_compat")):
        pytest.importorskip(library)
        assert name in symbptt.load_module(symbptt.emit(spec, backend=backend)).PARAMETERS


#: A recurrent weight named like a Python builtin that the function reading it calls.
BUILTIN_CLASHES = {
    ("zip", "numpy"): "as a Python builtin in _forward(): `for h_prev, r_pre_t",
    ("range", "array_api"): "as a Python builtin in _forward(): `for t in range(T):`",
}


@pytest.mark.parametrize(("name", "backend"), sorted(BUILTIN_CLASHES))
def test_a_parameter_hiding_a_builtin_its_function_calls_is_refused(
    tmp_path: Path, name: str, backend: str
) -> None:
    """``range = params["range"]`` in the function that loops ``for t in range(T)`` would
    call the weight: the module would fail at its first call, far from the cause."""
    path = tmp_path / f"gru_{name}.toml"
    path.write_text((ROOT / "examples" / "gru_pytorch.toml").read_text().replace("W_hn", name))
    with pytest.raises(symbptt.SpecError) as info:
        symbptt.emit(ModelSpec(steps=3, cell=str(path)), backend=backend)
    message = str(info.value)
    assert message.startswith(f"parameter {name!r}: the generated {backend} module already uses")
    assert BUILTIN_CLASHES[name, backend] in message, message
    assert "\n" not in message


def test_a_parameter_named_like_a_builtin_its_functions_do_not_call_is_printed_and_right(
    tmp_path: Path,
) -> None:
    """``float`` is called by ``loss()``, which reads no parameter: the weight hides nothing."""
    spec = ModelSpec(steps=3, cell=str(_renamed_gru(tmp_path, "float")))
    mod = symbptt.load_module(symbptt.emit_numpy(spec))
    assert "float" in mod.PARAMETERS
    errors = finite_difference_errors(mod, random_problem(mod, rng=4))
    assert max(errors.values()) < 1e-6


def test_derive_refuses_a_clashing_parameter_with_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from symbptt import cli

    out = tmp_path / "out"
    argv = ["derive", "--cell", str(_renamed_gru(tmp_path, "m")), "--out", str(out), "--no-pdf"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "parameter 'm': the generated numpy module already uses the name 'm'" in err
    assert err.count("\n") == 1
    assert not out.exists()


POWER_CELL = """
name = "power"
description = "h_t = tanh(W_xh x_t + W_hh h_{t-1}) ** n"
reference = "a cell of the language's A ** n"
readout = "h"
equations = ["h[t] = tanh(W_xh @ x[t] + W_hh @ h[t-1]) ** EXPONENT"]

[inputs]
x = "n_in"

[states]
h = "n_hidden"

[parameters]
W_xh = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_hh = { shape = ["n_hidden", "n_hidden"], kind = "weight" }

[notations.xh.names]
W_xh = { ascii = "W_xh", latex = "W_{xh}" }
W_hh = { ascii = "W_hh", latex = "W_{hh}" }
W_out = { ascii = "W_hy", latex = "W_{hy}" }
b_out = { ascii = "b_y", latex = "b_y" }
x = { ascii = "x", latex = "x" }
h = { ascii = "h", latex = "h" }
logits = { ascii = "o", latex = "o" }
y_hat = { ascii = "y_hat", latex = '\\hat{y}' }
y = { ascii = "y", latex = "y" }
"""


@pytest.mark.parametrize("exponent", [2, 3])
def test_a_cell_s_integer_power_is_differentiated_on_every_backend(
    tmp_path: Path, exponent: int
) -> None:
    """``A ** n`` (docs/cells.md) had no VJP rule: the derivation raised MissingRuleError.
    The NumPy modules equal central differences; the JAX and array API modules, rolled and
    unrolled, equal the NumPy module (the rolled JAX module read a loop's accumulated
    adjoint from before the loop: wrong weight and input gradients)."""
    path = tmp_path / "power.toml"
    path.write_text(POWER_CELL.replace("EXPONENT", str(exponent)), encoding="utf-8")
    spec = ModelSpec(steps=3, cell=str(path))
    for unrolled in (False, True):
        check_every_gradient(module_for(spec, unrolled), seed=exponent)
    reference = module_for(spec)
    problem = random_problem(reference, rng=exponent)
    expected = reference.loss_and_all_gradients(*problem.args())
    backends = {"array_api": pytest.importorskip("array_api_strict").asarray}
    if importlib.util.find_spec("jax") is not None:
        import jax

        jax.config.update("jax_enable_x64", True)
        backends["jax"] = jax.numpy.asarray
    for backend, asarray in backends.items():
        for unrolled in (False, True):
            mod = symbptt.load_module(symbptt.emit(spec, backend=backend, unrolled=unrolled))
            params = {k: asarray(v) for k, v in problem.params.items()}
            initial = {k: asarray(v) for k, v in problem.initial.items()}
            got = mod.loss_and_all_gradients(
                params, asarray(problem.X), asarray(problem.Y), **initial
            )
            assert float(got[0]) == pytest.approx(expected[0], rel=1e-12)
            for part in (1, 2):
                for name, value in expected[part].items():
                    error = relative_error(np.asarray(got[part][name]), value)
                    assert error < 1e-10, (backend, unrolled, name)


def test_a_derived_constant_beyond_float64_is_refused_naming_it(tmp_path: Path) -> None:
    """Each of the cell's numbers is a finite float64, but the derivative multiplies them:
    1e200 * tanh(1e200 * ...) has 1e400, printed as an integer literal that raised
    OverflowError in every call of the generated module (and in symbptt derive's check)."""
    text = POWER_CELL.replace(
        "tanh(W_xh @ x[t] + W_hh @ h[t-1]) ** EXPONENT",
        "1e200 * tanh(1e200 * (W_xh @ x[t] + W_hh @ h[t-1]))",
    )
    path = tmp_path / "huge.toml"
    path.write_text(text, encoding="utf-8")
    spec = ModelSpec(steps=2, cell=str(path))
    message = r"^the derived code has the constant 1\.00E\+400, beyond float64"
    for backend in ("numpy", "torch", "jax", "array_api"):
        for unrolled in (False, True):
            with pytest.raises(symbptt.SpecError, match=message):
                symbptt.emit(spec, backend=backend, unrolled=unrolled)
