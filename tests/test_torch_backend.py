"""The torch backend: printed from the derivation, checked against torch's own autograd."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

import symbptt
from symbptt import BackendError, ModelSpec
from symbptt.codegen.torch_printer import TORCH_FUNCTIONS, TorchPrinter

from .backend_specs import SPECS

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent


@cache
def module_for(key: str, unrolled: bool = False) -> ModuleType:
    return symbptt.load_module(symbptt.emit(SPECS[key], backend="torch", unrolled=unrolled))


def problem(mod: ModuleType, seed: int = 0, batch: int = 2, device: str = "cpu") -> tuple:
    """Random float64 tensors: params, X, Y (targets the loss accepts), initial states."""
    g = torch.Generator().manual_seed(seed)
    n_in = mod.SIZES["n_in"] or 3
    n_out = mod.SIZES["n_out"] or 3
    params = mod.init_params(n_in, 4, n_out, rng=seed)
    for name, value in params.items():  # biases away from zero too
        params[name] = value + 0.3 * torch.randn(value.shape, generator=g, dtype=value.dtype)
    T = mod.STEPS or mod.SPEC["steps"]
    X = torch.randn((T, batch, n_in), generator=g, dtype=torch.float64)
    shape = (T, batch, n_out) if mod.SPEC["mode"] == "many_to_many" else (batch, n_out)
    raw = torch.randn(shape, generator=g, dtype=torch.float64)
    Y = {
        "cross_entropy": torch.softmax(raw, dim=-1),
        "binary_cross_entropy": (raw > 0).to(torch.float64),
        "squared_error": raw,
    }[mod.SPEC["loss"]]
    sizes = {"n_hidden": 4, "n_in": n_in, "n_out": n_out}
    states = {
        f"{s}0": 0.5 * torch.randn((batch, sizes[mod.STATE_SIZES[s]]), generator=g).double()
        for s in mod.STATES
    }
    move = {k: v.to(device) for k, v in params.items()}
    return move, X.to(device), Y.to(device), {k: v.to(device) for k, v in states.items()}


def autograd_gradients(mod: ModuleType, params: dict, X, Y, states: dict) -> dict:
    """torch.autograd of the unrolled module's forward pass and loss (out-of-place code that
    autograd can follow): no generated backward involved."""
    unrolled = module_for(next(k for k, s in SPECS.items() if s.as_dict() == mod.SPEC), True)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    X = X.detach().clone().requires_grad_(True)
    initial = {k: v.detach().clone().requires_grad_(True) for k, v in states.items()}
    value = unrolled._loss(unrolled._forward(leaves, X, *initial.values(), {}), Y, {})
    value.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["dX"] = X.grad
    grads.update({f"d{k}": v.grad for k, v in initial.items()})
    return grads


@pytest.mark.parametrize("unrolled", [False, True], ids=["rolled", "unrolled"])
@pytest.mark.parametrize("key", list(SPECS))
def test_bptt_equals_torch_autograd_of_the_same_loss(key: str, unrolled: bool) -> None:
    mod = module_for(key, unrolled)
    params, X, Y, states = problem(mod)
    expected = autograd_gradients(mod, params, X, Y, states)
    loss, gradients, state = mod.loss_and_all_gradients(params, X, Y, **states)
    assert loss == pytest.approx(float(mod.loss(params, X, Y, **states)))
    for name, value in {**gradients, **{k: state[k] for k in state if k.startswith("d")}}.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-10, atol=1e-12, msg=name)
    # through autograd: the Function's backward is the generated BPTT
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    mod.loss(leaves, X, Y, **states).backward()
    for name, leaf in leaves.items():
        torch.testing.assert_close(leaf.grad, expected[name], rtol=1e-10, atol=1e-12)
        assert leaf.grad.stride() == leaf.stride(), name  # autograd's gradient layout contract


@pytest.mark.parametrize("unrolled", [False, True], ids=["rolled", "unrolled"])
@pytest.mark.parametrize("key", ["elman", "lstm", "gru", "gru_pytorch"])
def test_gradcheck_passes(key: str, unrolled: bool) -> None:
    mod = module_for(key, unrolled)
    params, X, Y, states = problem(mod, seed=1, batch=2)
    names = list(mod.PARAMETERS)
    inputs = (
        X.requires_grad_(True),
        *(v.requires_grad_(True) for v in states.values()),
        *(params[n].requires_grad_(True) for n in names),
    )
    k = len(states)

    def f(X, *rest):  # type: ignore[no-untyped-def]
        initial = dict(zip(states, rest[:k], strict=True))
        return mod.loss(dict(zip(names, rest[k:], strict=True)), X, Y, **initial)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("key", ["elman", "lstm", "gru_pytorch", "elman_relu_bce"])
def test_torch_agrees_with_the_numpy_module(key: str) -> None:
    mod = module_for(key)
    numpy_mod = symbptt.load_module(symbptt.emit_numpy(SPECS[key]))
    params, X, Y, states = problem(mod, seed=2)
    loss, gradients, state = mod.loss_and_all_gradients(params, X, Y, **states)
    as_np = {k: v.numpy() for k, v in params.items()}
    initial = {k: v.numpy() for k, v in states.items()}
    loss_np, gradients_np, state_np = numpy_mod.loss_and_all_gradients(
        as_np, X.numpy(), Y.numpy(), **initial
    )
    assert loss == pytest.approx(loss_np, rel=1e-12)
    for name in gradients_np:
        np.testing.assert_allclose(gradients[name].numpy(), gradients_np[name], rtol=1e-9)
    for name in state_np:
        np.testing.assert_allclose(state[name].numpy(), state_np[name], rtol=1e-9, atol=1e-14)


def test_the_module_trains_in_a_torch_loop() -> None:
    mod = module_for("lstm")
    _, X, Y, _ = problem(mod, seed=3)
    model = mod.Model(3, 6, 3, rng=0)
    assert sorted(n for n, _ in model.named_parameters()) == sorted(mod.PARAMETERS)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        value = model(X, Y)
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.9 * losses[0]  # soft targets: the loss cannot reach 0


def test_float32_in_float32_out() -> None:
    mod = module_for("elman")
    params, X, Y, states = problem(mod)
    params32 = {k: v.float() for k, v in params.items()}
    _, gradients = mod.loss_and_gradients(params32, X.float(), Y.float(), h0=states["h0"].float())
    assert {g.dtype for g in gradients.values()} == {torch.float32}


def test_bad_arguments_name_what_is_wrong() -> None:
    mod = module_for("elman")
    params, X, Y, states = problem(mod)
    h0 = states["h0"]
    nan = X.clone()
    nan[1, 0, 2] = float("nan")
    cases = [
        ({"X": X.numpy()}, r"^X: expected a torch.Tensor, got numpy.ndarray"),
        ({"h0": h0.float()}, r"^h0: expected torch.float64 \(the dtype of X\), got torch.float32"),
        ({"h0": h0.to("meta")}, r"^h0: expected device cpu \(that of X\), got meta"),
        ({"X": nan}, r"^X: expected finite values, got nan at index \(1, 0, 2\)"),
        ({"params": {**params, "W_hh": params["W_hh"].T[:, :3]}}, r"^W_hh: expected shape"),
    ]
    for change, message in cases:
        args = {"params": params, "X": X, "Y": Y, "h0": h0, **change}
        for call in (mod.loss, mod.loss_and_gradients):
            with pytest.raises(mod.ArgumentError, match=message):
                call(args["params"], args["X"], args["Y"], args["h0"])


def assert_gradients(leaves: dict, expected: dict) -> None:
    for name, leaf in leaves.items():
        torch.testing.assert_close(leaf.grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("key", ["elman", "lstm"])
def test_a_call_s_scratch_tensors_serve_another_only_once_nothing_reads_them(key: str) -> None:
    mod = module_for(key)
    mod.clear_workspace()
    params, X, Y, states = problem(mod, seed=4)
    expected = autograd_gradients(mod, params, X, Y, states)
    other = problem(mod, seed=5)  # the same shapes, other values
    other_expected = autograd_gradients(mod, *other)

    def other_calls() -> None:
        # one call through autograd, whose node is freed at once, and one without
        leaves = {k: v.clone().requires_grad_(True) for k, v in other[0].items()}
        mod.loss(leaves, *other[1:3], **other[3]).backward()
        assert_gradients(leaves, other_expected)
        _, gradients = mod.loss_and_gradients(*other[:3], **other[3])
        assert_gradients({k: SimpleNamespace(grad=v) for k, v in gradients.items()}, other_expected)

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    value = mod.loss(leaves, X, Y, **states)
    first = value.item()
    other_calls()  # while value's node lives, its workspace is its own
    assert value.item() == first
    value.backward(retain_graph=True)
    assert_gradients(leaves, expected)
    other_calls()
    for leaf in leaves.values():
        leaf.grad = None
    value.backward()  # the node kept: its backward runs again on the same tensors
    assert_gradients(leaves, expected)
    (key_x,) = mod._SPARE  # the other calls' workspace, handed back
    before = mod._SPARE[key_x]
    del value  # freeing the node hands its workspace on, in place of theirs
    spare = mod._SPARE[key_x]
    assert spare is not before
    other_calls()
    assert mod._SPARE[key_x] is spare  # taken by the next call and handed back
    for batch in range(3, 3 + mod._SPARE_SHAPES + 2):  # other shapes: a bounded number kept
        mod.loss_and_gradients(*problem(mod, batch=batch)[:3], **problem(mod, batch=batch)[3])
    assert len(mod._SPARE) == mod._SPARE_SHAPES
    mod.clear_workspace()
    assert not mod._SPARE


@pytest.mark.parametrize("key", ["elman", "lstm"])
def test_a_call_in_inference_mode_leaves_no_workspace_to_a_call_outside_it(key: str) -> None:
    """Tensors made under torch.inference_mode() are inference tensors, which no code
    outside it may write: such a call's workspace serves only calls in that mode."""
    mod = module_for(key)
    mod.clear_workspace()
    params, X, Y, states = problem(mod, seed=6)
    expected = autograd_gradients(mod, params, X, Y, states)
    for _ in range(2):
        with torch.inference_mode():
            value, gradients = mod.loss_and_gradients(params, X, Y, **states)
            mod.loss(params, X, Y, **states)
        assert_gradients({k: SimpleNamespace(grad=v) for k, v in gradients.items()}, expected)
        assert mod.loss_and_gradients(params, X, Y, **states)[0] == value
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        mod.loss(leaves, X, Y, **states).backward()
        assert_gradients(leaves, expected)
    mod.clear_workspace()


@pytest.mark.parametrize("key", ["lstm", "gru", "gru_pytorch"])
def test_both_schedules_of_a_gated_cell_equal_autograd(key: str) -> None:
    mod = module_for(key)
    assert mod.FUSED_STEP_SIZE > 0  # the fused schedule runs at these small sizes
    params, X, Y, states = problem(mod, seed=7)
    expected = autograd_gradients(mod, params, X, Y, states)
    default = mod.FUSED_STEP_SIZE
    try:
        for limit in (0, 10**9):  # plain, then fused
            mod.FUSED_STEP_SIZE = limit
            _, gradients, state = mod.loss_and_all_gradients(params, X, Y, **states)
            for name, value in gradients.items():
                torch.testing.assert_close(value, expected[name], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(state["dX"], expected["dX"], rtol=1e-10, atol=1e-12)
    finally:
        mod.FUSED_STEP_SIZE = default


def test_the_unrolled_module_takes_its_own_T_only() -> None:
    mod = module_for("elman", True)
    params, X, Y, states = problem(mod)
    with pytest.raises(mod.ArgumentError, match=r"^X: expected shape \(T, m, n_in\) with T = 3"):
        mod.loss(params, X[:2], Y[:2], **states)
    rolled = module_for("elman")
    assert rolled.STEPS is None and mod.STEPS == 3
    longer = problem(rolled, seed=6)  # T = 3 by the spec; any other T works too
    X5 = torch.cat([longer[1], longer[1][:2]])
    Y5 = torch.cat([longer[2], longer[2][:2]])
    value, gradients = rolled.loss_and_gradients(longer[0], X5, Y5)
    numpy_mod = symbptt.load_module(symbptt.emit_numpy(SPECS["elman"]))
    as_np = {k: v.numpy() for k, v in longer[0].items()}
    expected = numpy_mod.loss_and_gradients(as_np, X5.numpy(), Y5.numpy())
    assert value == pytest.approx(expected[0], rel=1e-12)
    for name, grad in gradients.items():
        np.testing.assert_allclose(grad.numpy(), expected[1][name], rtol=1e-10, atol=1e-14)


def test_emit_refuses_unknown_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ModelSpec(steps=2)
    with pytest.raises(BackendError, match=r"^backend: got 'tensorflow'; expected one of 'numpy'"):
        symbptt.emit(spec, backend="tensorflow")
    with pytest.raises(TypeError, match="unrolled: expected True, False or None"):
        symbptt.emit(spec, backend="torch", unrolled="yes")  # type: ignore[arg-type]
    assert symbptt.emit(spec) == symbptt.emit_numpy(spec)
    assert symbptt.emit(spec, unrolled=True) == symbptt.emit_numpy(spec, unrolled=True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    with pytest.raises(BackendError, match=r"needs torch.*pip install 'symbptt\[torch\]'"):
        symbptt.emit(spec, backend="torch")


def test_the_printer_spells_each_function_for_torch() -> None:
    import sympy as sp

    z = sp.Symbol("z")
    cases = {
        sp.tanh(z): "torch.tanh(z)",
        sp.Max(z, 0): "torch.clamp_min(z, 0)",
        sp.Min(z, 1): "torch.clamp_max(z, 1)",
        sp.Heaviside(z, 0): "torch.heaviside(z, z.new_tensor(0))",
        sp.log(1 + sp.exp(z)): "torch.nn.functional.softplus(z)",
        sp.log(1 + z): "torch.log1p(z)",
        sp.exp(-z): "torch.exp(-z)",
    }
    for expr, code in cases.items():
        assert TorchPrinter({}).doprint(expr) == code
    assert all(name.startswith("numpy.") for name in TORCH_FUNCTIONS)
    with pytest.raises(NotImplementedError, match=r"no spelling of numpy.cbrt"):
        TorchPrinter({})._module_format("numpy.cbrt")


def test_generated_torch_code_is_ruff_clean(tmp_path: Path) -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed")
    for key in SPECS:
        for unrolled in (False, True):
            source = symbptt.emit(SPECS[key], backend="torch", unrolled=unrolled)
            (tmp_path / f"{key}_{int(unrolled)}.py").write_text(source)
    for command in (["check", "--isolated"], ["format", "--isolated", "--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, str(tmp_path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_tensors_give_the_cpu_gradients() -> None:
    mod = module_for("lstm")
    params, X, Y, states = problem(mod, seed=4)
    _, expected = mod.loss_and_gradients(params, X, Y, **states)
    cuda = problem(mod, seed=4, device="cuda")
    leaves = {k: v.requires_grad_(True) for k, v in cuda[0].items()}
    mod.loss(leaves, cuda[1], cuda[2], **cuda[3]).backward()
    for name, value in expected.items():
        torch.testing.assert_close(leaves[name].grad.cpu(), value, rtol=1e-9, atol=1e-12)


_DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
import symbptt
rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
mod = symbptt.load_module(open(sys.argv[5]).read())
g = torch.Generator().manual_seed(0)
X = torch.randn((3, 4, 3), generator=g, dtype=torch.float64)
Y = torch.softmax(torch.randn((3, 4, 3), generator=g, dtype=torch.float64), dim=-1)
model = mod.Model(3, 5, 3, rng=0)
ddp = torch.nn.parallel.DistributedDataParallel(model)
share = 4 // world
ddp(X[:, rank * share : (rank + 1) * share], Y[:, rank * share : (rank + 1) * share]).backward()
if rank == 0:
    torch.save({n: p.grad for n, p in model.named_parameters()}, out)
dist.barrier()  # no process leaves while another still talks to it
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_distributed_data_parallel_gives_the_gradients_of_one_process(tmp_path: Path) -> None:
    """Two CPU processes on gloo, each with half the batch: DDP averages their gradients,
    which for a batch-mean loss are the one-process gradients of the whole batch."""
    source = tmp_path / "gradients_torch.py"
    source.write_text(symbptt.emit(SPECS["lstm"], backend="torch"))
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    results = {}
    for world in (1, 2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        out = tmp_path / f"grads_{world}.pt"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        processes = [
            subprocess.Popen(
                [sys.executable, str(script), str(r), str(world), port, str(out), str(source)],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in range(world)
        ]
        for p in processes:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            assert "strides" not in err, err  # the gradients come in their parameters' layout
        results[world] = torch.load(out)
    for name, value in results[1].items():
        torch.testing.assert_close(results[2][name], value, rtol=1e-12, atol=1e-14)


def test_derive_backend_torch_writes_and_checks_the_torch_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from symbptt.cli import main
    from symbptt.model.spec_flags import regenerate_command

    spec = ModelSpec(steps=2, cell="gru")
    out = tmp_path / "out"
    assert main(["derive", "--steps", "2", "--cell", "gru", "--backend", "torch", "--unrolled",
                 "--out", str(out), "--no-pdf"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "gradients_torch.py     max relative error" in text and "FAILED" not in text
    assert "gradients_torch_unrolled.py max relative error" in text
    source = (out / "gradients_torch.py").read_text()
    assert source == symbptt.emit(spec, backend="torch")
    unrolled = (out / "gradients_torch_unrolled.py").read_text()
    assert unrolled == symbptt.emit(spec, backend="torch", unrolled=True)
    assert f"Regenerate: {regenerate_command(spec, True, 'torch')}\n" in unrolled
    command = regenerate_command(spec, backend="torch")
    assert command == "symbptt derive --steps 2 --cell gru --backend torch --out DIR"
    assert f"Regenerate: {command}\n" in source
    assert main(["derive", "--steps", "2", "--cell", "gru", "--out", str(out), "--no-pdf"]) == 0
    assert not (out / "gradients_torch.py").exists()  # an earlier run's files, removed
    assert not (out / "gradients_torch_unrolled.py").exists()
    for backend, needle in (("tf", "got 'tf'; expected"),):
        code = main(["derive", "--backend", backend, "--out", str(tmp_path / "no")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and needle in err, err
        assert not (tmp_path / "no").exists()


def test_the_printer_writes_the_lowering_s_statements_for_torch() -> None:
    p = TorchPrinter({})
    assert p.call_into("dot", ["a", "b"], "z") == "torch.mm(a, b, out=z)"
    assert p.call_into("multiply", ["a", "b"], "z") == "torch.mul(a, b, out=z)"
    assert p.call_into("subtract", ["1", "x"], "x") == "torch.neg(x, out=x).add_(1)"
    assert p.call_into("subtract", ["a", "x"], "x") == "torch.sub(a, x, out=x)"
    assert p.call_into("add", ["1", "x"], "z") == "torch.add(x, 1, out=z)"
    assert p.call_into("negative", ["x"], "x") == "torch.neg(x, out=x)"
    assert p.steps_reversed("d_seq[1:T]") == "d_seq[1:T].unbind(0)[::-1]"
    assert p.copy_of("W.T") == "W.T.clone(memory_format=torch.contiguous_format)"


def test_an_activation_torch_computes_natively_is_one_call() -> None:
    """An activation whose definition is one of TORCH_NATIVE's (matched by its definition,
    not its name) is one torch call, in place and as its helper; another keeps its safe
    form."""
    import sympy as sp

    from symbptt.codegen.torch_printer import TORCH_NATIVE, native_call, torch_helper_source
    from symbptt.expr import functions

    z = functions.z
    applied = sp.MatrixSymbol("a", 3, 2).applyfunc(sp.Lambda(z, 1 / (1 + sp.exp(-z))))
    p = TorchPrinter({})
    assert p.elementwise_into(applied, "a", "b") == "torch.sigmoid(a, out=b)"
    x = sp.Symbol("x")
    assert native_call(sp.Lambda(x, 1 / (1 + sp.exp(-x)))) == "torch.sigmoid"
    assert native_call(sp.Lambda(x, sp.tanh(x))) is None
    assert "return torch.sigmoid(z)" in torch_helper_source("sigmoid")
    assert set(TORCH_NATIVE) == {"torch.sigmoid"}
    torch = pytest.importorskip("torch")
    values = torch.linspace(-800.0, 800.0, 9, dtype=torch.float64)
    exact = [1 / (1 + sp.exp(-sp.Float(float(v), 30))) for v in values]
    expected = torch.tensor([float(e) for e in exact], dtype=torch.float64)
    assert torch.allclose(torch.sigmoid(values), expected, rtol=1e-15, atol=0)


def test_a_product_added_into_an_array_is_one_torch_call() -> None:
    p = TorchPrinter({})
    assert p.add_into("dot", ["a", "b"], "z") == "z.addmm_(a, b)"
    assert p.add_into("multiply", ["a", "b"], "z") == "z.addcmul_(a, b)"
    assert p.add_into("subtract", ["a", "b"], "z") is None
    source = symbptt.emit(SPECS["lstm"], backend="torch")
    assert "c_t.addcmul_(i_t, g_t)" in source
    assert "oifg_t.addmm_(h_prev, W_h_oifc)" in source
    assert "addmm_(1," not in source  # a broadcast bias is no product
