"""The torch and JAX backends of composed models (issue 10): stacked, bidirectional, masked.

Each generated module is checked against oracles that share none of its backward
code: its engine's own autodiff of the unrolled module's printed forward pass and
loss (torch autograd, ``jax.grad``), ``torch.autograd.gradcheck``, the NumPy module of
the same spec (itself checked by central differences in ``test_compose_codegen.py``),
one-hot targets for class labels and, for torch, ``nn.LSTM(num_layers=2,
bidirectional=True)`` on packed sequences (slow).
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

import numpy as np
import pytest

import symbptt
from symbptt import ModelSpec
from symbptt.oracle.gradcheck import Problem, random_problem

ALL_THREE = {"layers": 2, "direction": "bidirectional", "masked": True}

FAST = [
    {"cell": "elman", **ALL_THREE},
    {"cell": "elman", **ALL_THREE, "mode": "many_to_one", "notation": "aa"},
    {"cell": "elman", "layers": 3, "loss": "squared_error", "output": "identity"},
    {"cell": "gru", "batch_reduction": "tokens"},  # one cell: the one-cell schedule
]
SLOW = [
    {"cell": "lstm", **ALL_THREE},
    {"cell": "gru", **ALL_THREE, "notation": "layered", "time_reduction": "mean"},
    {"cell": "lstm", **ALL_THREE, "mode": "many_to_one", "batch_reduction": "tokens"},
]
SPECS = [*FAST, *(pytest.param(f, marks=pytest.mark.slow) for f in SLOW)]


def _id(fields: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in fields.items())


@cache
def _numpy(**fields: Any) -> ModuleType:
    return symbptt.load_module(symbptt.emit_numpy(ModelSpec(**{"steps": 3, **fields})))


@cache
def _module(backend: str, unrolled: bool, **fields: Any) -> ModuleType:
    spec = ModelSpec(**{"steps": 3, **fields})
    return symbptt.load_module(symbptt.emit(spec, backend=backend, unrolled=unrolled))


def _problem(fields: dict[str, Any], rng: int = 1, steps: int = 3) -> Problem:
    """A random float64 problem drawn by the NumPy module (some steps padded when masked)."""
    problem = random_problem(
        _numpy(**fields), steps=steps, batch=3, n_in=2, n_hidden=2, n_out=3, rng=rng
    )
    if problem.mask is not None and steps > 1:
        assert not problem.mask.all(), "the random problem should pad some steps"
    return problem


def _expected(fields: dict[str, Any], problem: Problem) -> tuple[float, dict, dict]:
    """The NumPy module's loss, gradients and state."""
    return _numpy(**fields).loss_and_all_gradients(
        problem.params, problem.X, problem.Y, **problem.keywords(), **problem.initial
    )


# -- torch ------------------------------------------------------------------------------------
def _torch() -> Any:
    return pytest.importorskip("torch")


def _tensors(problem: Problem) -> tuple[dict, Any, Any, dict]:
    """The problem as torch tensors: params, X, Y, and the keywords (mask, initial states)."""
    torch = _torch()
    params = {k: torch.tensor(v) for k, v in problem.params.items()}
    keywords = {k: torch.tensor(v) for k, v in {**problem.keywords(), **problem.initial}.items()}
    return params, torch.tensor(problem.X), torch.tensor(problem.Y), keywords


def _torch_autograd(fields: dict[str, Any], params: dict, X: Any, Y: Any, keywords: dict) -> dict:
    """torch.autograd of the unrolled torch module's own forward pass and loss (out-of-place
    code autograd can follow): no generated backward involved."""
    unrolled = _module("torch", True, **fields)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    X = X.detach().clone().requires_grad_(True)
    mask = keywords.get("mask")
    initial = {
        k: v.detach().clone().requires_grad_(True) for k, v in keywords.items() if k != "mask"
    }
    masks = [] if mask is None else [mask]
    ws = unrolled._workspace(X)
    value = unrolled._loss(unrolled._forward(leaves, X, *masks, *initial.values(), ws), Y, ws)
    value.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["dX"] = X.grad
    grads.update({f"d{k}": v.grad for k, v in initial.items()})
    return grads


@pytest.mark.parametrize("unrolled", [False, True], ids=["rolled", "unrolled"])
@pytest.mark.parametrize("fields", SPECS, ids=_id)
def test_torch_bptt_equals_autograd_and_the_numpy_module(
    fields: dict[str, Any], unrolled: bool
) -> None:
    torch = _torch()
    mod = _module("torch", unrolled, **fields)
    problem = _problem(fields)
    params, X, Y, keywords = _tensors(problem)
    expected = _torch_autograd(fields, params, X, Y, keywords)
    value, gradients, state = mod.loss_and_all_gradients(params, X, Y, **keywords)
    for name, grad in {**gradients, **{k: v for k, v in state.items() if k[0] == "d"}}.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)
    numpy_value, numpy_gradients, numpy_state = _expected(fields, problem)
    assert value == pytest.approx(numpy_value, rel=1e-12)
    assert state.keys() == numpy_state.keys()
    for name, array in {**numpy_gradients, **numpy_state}.items():
        mine = gradients.get(name, state.get(name))
        np.testing.assert_allclose(mine.numpy(), array, rtol=1e-10, atol=1e-14, err_msg=name)
    # through autograd: the Function's backward is the generated BPTT
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    mod.loss(leaves, X, Y, **keywords).backward()
    for name, leaf in leaves.items():
        torch.testing.assert_close(leaf.grad, expected[name], rtol=1e-10, atol=1e-12)
        assert leaf.grad.stride() == leaf.stride(), name  # autograd's gradient layout contract


@pytest.mark.parametrize(
    "fields",
    [FAST[0], pytest.param(SLOW[0], marks=pytest.mark.slow)],
    ids=_id,
)
def test_torch_gradcheck_passes(fields: dict[str, Any]) -> None:
    """gradcheck of the rolled module's loss (BPTT.apply) in float64 at small sizes, with
    respect to X, every initial state and every parameter; the mask is a constant."""
    torch = _torch()
    mod = _module("torch", False, **fields)
    params, X, Y, keywords = _tensors(_problem(fields, rng=2))
    mask = keywords.pop("mask", None)
    names = list(mod.PARAMETERS)
    inputs = (
        X.requires_grad_(True),
        *(v.requires_grad_(True) for v in keywords.values()),
        *(params[n].requires_grad_(True) for n in names),
    )
    k = len(keywords)
    masks = {} if mask is None else {"mask": mask}

    def f(X, *rest):  # type: ignore[no-untyped-def]
        initial = dict(zip(keywords, rest[:k], strict=True))
        return mod.loss(dict(zip(names, rest[k:], strict=True)), X, Y, **masks, **initial)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_torch_rolled_module_at_other_lengths() -> None:
    """Printed from five steps, the rolled module runs any T: at T = 1 and 6 it equals the
    NumPy module."""
    fields = FAST[0]
    mod = _module("torch", False, **fields)
    for steps in (1, 6):
        problem = _problem(fields, rng=steps, steps=steps)
        if steps == 1:
            assert problem.mask is not None and problem.mask.all()
        params, X, Y, keywords = _tensors(problem)
        value, gradients, state = mod.loss_and_all_gradients(params, X, Y, **keywords)
        numpy_value, numpy_gradients, numpy_state = _expected(fields, problem)
        assert value == pytest.approx(numpy_value, rel=1e-12)
        for name, array in {**numpy_gradients, **numpy_state}.items():
            mine = gradients.get(name, state.get(name))
            np.testing.assert_allclose(mine.numpy(), array, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one"])
def test_torch_class_labels_are_one_hot_targets(mode: str) -> None:
    torch = _torch()
    fields = {**ALL_THREE, "mode": mode}
    mod = _module("torch", False, **fields)
    params, X, _, keywords = _tensors(_problem(fields, rng=3))
    rng = np.random.default_rng(3)
    shape = X.shape[:2] if mode == "many_to_many" else X.shape[1:2]
    labels = torch.tensor(rng.integers(0, 3, size=shape))
    one_hot = torch.nn.functional.one_hot(labels, 3).double()
    if mode == "many_to_many":
        labels[keywords["mask"] == 0] = -100  # PyTorch's ignore_index at a padded step
    by_labels = mod.loss_and_gradients(params, X, labels, **keywords)
    by_one_hot = mod.loss_and_gradients(params, X, one_hot, **keywords)
    assert by_labels[0] == by_one_hot[0]
    for name in mod.PARAMETERS:
        torch.testing.assert_close(by_labels[1][name], by_one_hot[1][name], rtol=0, atol=0)
    assert float(mod.loss(params, X, labels, **keywords)) == by_one_hot[0]


def test_torch_bad_masks_and_labels_are_refused() -> None:
    torch = _torch()
    mod = _module("torch", False, **ALL_THREE)
    params, X, Y, keywords = _tensors(_problem(ALL_THREE))
    full = torch.ones((3, 3))
    gap = full.clone()
    gap[1, 2] = 0
    empty = full.clone()
    empty[:, 1] = 0
    half = torch.where(torch.arange(9).reshape(3, 3) == 5, 0.5, 1.0)
    labels = torch.zeros((3, 3), dtype=torch.int64)
    cases = [
        ({"mask": None}, r"^mask: required"),
        ({"mask": full.numpy()}, r"^mask: expected a torch.Tensor, got numpy.ndarray"),
        ({"mask": full[:, :2]}, r"^mask: expected shape \(T, m\) = \(3, 3\), got \(3, 2\)"),
        ({"mask": full.to("meta")}, r"^mask: expected device cpu \(that of X\), got meta"),
        ({"mask": half}, r"^mask: expected 0 or 1, got 0.5 at \(1, 2\)"),
        ({"mask": gap}, r"^mask: example 2 has a real step 2 after a padded step 1"),
        ({"mask": empty}, r"^mask: example 1 has no real step"),
        (
            {"Y": torch.where(torch.arange(9).reshape(3, 3) == 1, 3, labels), "mask": full},
            r"^Y: expected class labels from 0 to 2 \(n_out = 3\), got 3 at index \(0, 1\)",
        ),
        ({"Y": labels[:, :2]}, r"^Y: expected class labels of shape \(T, m\)"),
        ({"Y": labels.bool()}, r"^Y: expected integer class labels or float targets"),
        ({"Y": torch.zeros((3, 3, 3)).double(), "mask": full}, r"^Y: cross_entropy targets"),
    ]
    for change, message in cases:
        arguments = {"Y": Y, **keywords, **change}
        for call in (mod.loss, mod.loss_and_gradients):
            with pytest.raises(mod.ArgumentError, match=message):
                call(params, X, **arguments)


def test_torch_model_trains_a_composed_model() -> None:
    """Model holds every unit's parameters; model(X, Y, mask=...) is the loss, and a torch
    optimizer lowers it."""
    torch = _torch()
    mod = _module("torch", False, cell="gru", **ALL_THREE)
    _, X, Y, keywords = _tensors(_problem({"cell": "gru", **ALL_THREE}, rng=4))
    model = mod.Model(2, 3, 3, rng=0)
    assert sorted(n for n, _ in model.named_parameters()) == sorted(mod.PARAMETERS)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        value = model(X, Y, mask=keywords["mask"])
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.slow
def test_torch_module_equals_torch_lstm_on_packed_sequences() -> None:
    """nn.LSTM(num_layers=2, bidirectional=True) on packed sequences, class labels with
    ignore_index at padded steps, autograd: the same loss, gradients (parameters, X, the
    initial states) and final states h_n, c_n as the generated torch module's, whose
    gradients come from its BPTT (autograd through BPTT.apply)."""
    torch = _torch()
    steps, m, n_in, n_h, n_out = 5, 4, 3, 2, 3
    lengths = [5, 2, 4, 1]
    fields = {"cell": "lstm", **ALL_THREE, "batch_reduction": "tokens"}
    mod = _module("torch", False, **fields)
    mask = torch.tensor([[t < n for n in lengths] for t in range(steps)])
    torch.manual_seed(5)
    lstm = torch.nn.LSTM(n_in, n_h, num_layers=2, bidirectional=True, dtype=torch.float64)
    head = torch.nn.Linear(2 * n_h, n_out, dtype=torch.float64)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            p.copy_(torch.zeros_like(p) if name.startswith("bias_hh") else torch.randn_like(p))
    X = torch.randn((steps, m, n_in), dtype=torch.float64, requires_grad=True)
    h0 = torch.randn((4, m, n_h), dtype=torch.float64, requires_grad=True)
    c0 = torch.randn((4, m, n_h), dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, n_out, (steps, m))
    labels[~mask] = -100
    packed = torch.nn.utils.rnn.pack_padded_sequence(X, lengths, enforce_sorted=False)
    out, (h_n, c_n) = lstm(packed, (h0, c0))
    out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=steps)[0]
    loss = torch.nn.functional.cross_entropy(
        head(out).reshape(-1, n_out), labels.reshape(-1), ignore_index=-100
    )
    loss.backward()
    units = [("1f", "l0"), ("1b", "l0_reverse"), ("2f", "l1"), ("2b", "l1_reverse")]

    def split(get: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}
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

    leaves = {
        k: v.contiguous().requires_grad_(True)
        for k, v in split(lambda p: p.detach().clone()).items()
    }
    x = X.detach().clone().requires_grad_(True)
    initial = {}
    for k, (unit, _) in enumerate(units):
        initial[f"h0_{unit}"] = h0.detach()[k].clone().requires_grad_(True)
        initial[f"c0_{unit}"] = c0.detach()[k].clone().requires_grad_(True)
    value = mod.loss(leaves, x, labels, mask=mask, **initial)
    value.backward()
    torch.testing.assert_close(value, loss, rtol=1e-12, atol=0)
    for name, expected in split(lambda p: p.grad).items():
        torch.testing.assert_close(leaves[name].grad, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x.grad, X.grad, rtol=1e-9, atol=1e-12)
    for k, (unit, _) in enumerate(units):
        torch.testing.assert_close(initial[f"h0_{unit}"].grad, h0.grad[k], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(initial[f"c0_{unit}"].grad, c0.grad[k], rtol=1e-9, atol=1e-12)
    no_grad = {k: v.detach() for k, v in leaves.items()}
    states = {k: v.detach() for k, v in initial.items()}
    _, _, state = mod.loss_and_all_gradients(no_grad, x.detach(), labels, mask=mask, **states)
    for k, (unit, _) in enumerate(units):
        torch.testing.assert_close(state[f"h_{unit}_T"], h_n.detach()[k], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(state[f"c_{unit}_T"], c_n.detach()[k], rtol=1e-12, atol=1e-14)


# -- JAX --------------------------------------------------------------------------------------
def _jax() -> Any:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


def _arrays(problem: Problem) -> tuple[dict, Any, Any, dict]:
    """The problem as jax arrays: params, X, Y, and the keywords (mask, initial states)."""
    jnp = _jax().numpy
    params = {k: jnp.asarray(v) for k, v in problem.params.items()}
    keywords = {k: jnp.asarray(v) for k, v in {**problem.keywords(), **problem.initial}.items()}
    return params, jnp.asarray(problem.X), jnp.asarray(problem.Y), keywords


def _jax_autodiff(mod: ModuleType, params: dict, X: Any, Y: Any, keywords: dict) -> dict:
    """jax.grad of the module's own printed forward pass and loss: no generated backward."""
    jax = _jax()
    mask = keywords.get("mask")
    masks = [] if mask is None else [mask.astype(X.dtype)]
    initial = {k: v for k, v in keywords.items() if k != "mask"}

    def plain(params, X, *states):  # type: ignore[no-untyped-def]
        return mod._loss(mod._forward(params, X, *masks, *states), Y)

    argnums = tuple(range(2 + len(initial)))  # compiled: op by op, JAX takes seconds
    grads = jax.jit(jax.grad(plain, argnums=argnums))(params, X, *initial.values())
    named = dict(grads[0])
    named["dX"] = grads[1]
    named.update({f"d{k}": g for k, g in zip(initial, grads[2:], strict=True)})
    return named


def _close(actual: Any, expected: Any, name: str, rtol: float = 1e-10) -> None:
    np.testing.assert_allclose(
        np.asarray(actual), np.asarray(expected), rtol=rtol, atol=1e-12, err_msg=name
    )


#: JAX compiles every function it runs (seconds each here): one spec in the fast suite.
JAX_SPECS = [FAST[0], *(pytest.param(f, marks=pytest.mark.slow) for f in [*FAST[1:], *SLOW])]


@pytest.mark.parametrize("unrolled", [False, True], ids=["rolled", "unrolled"])
@pytest.mark.parametrize("fields", JAX_SPECS, ids=_id)
def test_jax_bptt_equals_autodiff_and_the_numpy_module(
    fields: dict[str, Any], unrolled: bool
) -> None:
    jax = _jax()
    mod = _module("jax", unrolled, **fields)
    problem = _problem(fields)
    params, X, Y, keywords = _arrays(problem)
    expected = _jax_autodiff(mod, params, X, Y, keywords)
    value, gradients, state = mod.loss_and_all_gradients(params, X, Y, **keywords)
    for name, grad in {**gradients, **{k: v for k, v in state.items() if k[0] == "d"}}.items():
        _close(grad, expected[name], name)
    numpy_value, numpy_gradients, numpy_state = _expected(fields, problem)
    assert float(value) == pytest.approx(numpy_value, rel=1e-12)
    assert state.keys() == numpy_state.keys()
    for name, array in {**numpy_gradients, **numpy_state}.items():
        _close(gradients.get(name, state.get(name)), array, name)
    # through jax.grad: the custom VJP's backward is the generated BPTT
    initial = {k: v for k, v in keywords.items() if k != "mask"}
    masks = {k: v for k, v in keywords.items() if k == "mask"}

    def loss(params, X, states):  # type: ignore[no-untyped-def]
        return mod.loss(params, X, Y, **masks, **states)

    grads = jax.grad(loss, argnums=(0, 1, 2))(params, X, initial)
    for name, grad in grads[0].items():
        _close(grad, expected[name], name)
    _close(grads[1], expected["dX"], "dX")
    for name, grad in grads[2].items():
        _close(grad, expected[f"d{name}"], name)


def test_jax_works_under_jit_inside_a_bigger_program() -> None:
    """jax.jit(jax.grad(f)) of a program that adds a penalty to the loss: the same as
    without jit, and the loss's part is the generated BPTT's gradient."""
    jax = _jax()
    fields = FAST[0]
    mod = _module("jax", False, **fields)
    params, X, Y, keywords = _arrays(_problem(fields, rng=5))

    def program(params):  # type: ignore[no-untyped-def]
        penalty = sum((w**2).sum() for w in params.values())
        return 2.0 * mod.loss(params, X, Y, **keywords) + 0.5 * penalty

    compiled = jax.jit(jax.grad(program))(params)
    eager = jax.grad(program)(params)
    _, gradients = mod.loss_and_gradients(params, X, Y, **keywords)
    for name, grad in compiled.items():
        _close(grad, eager[name], name)
        _close(grad, 2.0 * gradients[name] + params[name], name)
    mask = keywords["mask"]
    rest = {k: v for k, v in keywords.items() if k != "mask"}
    jitted = jax.jit(lambda p, m: mod.loss_and_gradients(p, X, Y, mask=m, **rest))
    value, again = jitted(params, mask)
    assert float(value) == pytest.approx(float(mod.loss(params, X, Y, **keywords)), rel=1e-13)
    for name, grad in again.items():
        _close(grad, gradients[name], name)


def _equations(jaxpr: Any) -> int:
    """The equations of ``jaxpr`` and of every jaxpr inside it (jit, scan, custom_vjp)."""
    count = 0
    for equation in jaxpr.eqns:
        count += 1
        for value in equation.params.values():
            inner = getattr(value, "jaxpr", value)  # a ClosedJaxpr's, or a Jaxpr
            if hasattr(inner, "eqns"):
                count += _equations(inner)
    return count


@pytest.mark.parametrize(
    "fields", [{**ALL_THREE}, {"cell": "lstm"}], ids=["elman-all-three", "lstm"]
)
def test_jax_rolled_module_traces_one_step_whatever_the_length(fields: dict[str, Any]) -> None:
    """The rolled module's loops are jax.lax.scan: what jax.jit traces (and XLA compiles)
    is one step, the same at T = 3 and T = 12; Python loops traced T copies of the step
    (benchmarks/compose.py's two-layer bidirectional masked LSTM at T = 50: 90 s)."""
    jax = _jax()
    mod = _module("jax", False, **fields)
    sizes = []
    for steps in (3, 12):
        problem = random_problem(
            _numpy(**fields), steps=steps, batch=2, n_in=2, n_hidden=2, n_out=3, rng=1
        )
        params, X, Y, keywords = _arrays(problem)

        def call(params, X, Y, keywords):  # type: ignore[no-untyped-def]
            return mod.loss_and_all_gradients(params, X, Y, check=False, **keywords)

        sizes.append(_equations(jax.make_jaxpr(call)(params, X, Y, keywords).jaxpr))
    assert sizes[0] == sizes[1] > 0, sizes


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_backward_step_makes_one_product(backend: str) -> None:
    """A backward step's sum of products by parameters is one product of the operands
    side by side (12 products a step in layer 1 before: its own four gates' adjoints from
    step t + 1, eight from the two units above).  JAX computes what the layer above and
    the output layer send before the loop, one stacked product each (its arrays of every
    step are cheap), and the step's own four in one product."""
    source = symbptt.emit(ModelSpec(steps=2, cell="lstm", **ALL_THREE), backend=backend)
    backward = source.split("\ndef _backward(")[1].split("\ndef ")[0]
    if backend == "jax":
        bodies = re.findall(r"\n    def loop_\d+\(carry, t\):\n((?:        .*\n|\n)*)", backward)
    else:
        bodies = re.findall(r"\n    for t in range\(.*\):\n((?:        .*\n|\n)*)", backward)
    # the four units' loops (torch's dX loop follows them)
    assert len(bodies) == (4 if backend == "jax" else 5)
    for body in bodies[:4]:
        assert body.count(" @ ") == 1 and "_operands @ W_dh_" in body, body
        assert ("_sent[t - 1]" in body) == (backend == "jax")
    if backend == "jax":
        assert "dh_1f_sent_all" in backward and "delta_i_2b_all @ W_xi_2b_f" in backward
    # the forward products of the input: every step's at once (JAX), else one a step
    hoisted = "inputs_W_1f_all = inputs_all @ W_inputs_1f" in source
    assert hoisted == (backend == "jax")


@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one"])
def test_jax_class_labels_are_one_hot_targets(mode: str) -> None:
    jax = _jax()
    jnp = jax.numpy
    fields = {**ALL_THREE, "mode": mode}
    mod = _module("jax", False, **fields)
    params, X, _, keywords = _arrays(_problem(fields, rng=3))
    rng = np.random.default_rng(3)
    shape = X.shape[:2] if mode == "many_to_many" else X.shape[1:2]
    raw = rng.integers(0, 3, size=shape)
    one_hot = jnp.asarray(np.eye(3)[raw])
    if mode == "many_to_many":
        raw[np.asarray(keywords["mask"]) == 0] = -100  # PyTorch's ignore_index at a padded step
    labels = jnp.asarray(raw)
    by_labels = mod.loss_and_gradients(params, X, labels, **keywords)
    by_one_hot = mod.loss_and_gradients(params, X, one_hot, **keywords)
    assert float(by_labels[0]) == float(by_one_hot[0])
    for name in mod.PARAMETERS:
        np.testing.assert_array_equal(by_labels[1][name], by_one_hot[1][name])
    grads = jax.grad(lambda p: mod.loss(p, X, labels, **keywords))(params)
    for name in mod.PARAMETERS:
        _close(grads[name], by_one_hot[1][name], name)


def test_jax_bad_masks_and_labels_are_refused() -> None:
    jnp = _jax().numpy
    mod = _module("jax", False, **ALL_THREE)
    params, X, Y, keywords = _arrays(_problem(ALL_THREE))
    full = np.ones((3, 3))
    gap = full.copy()
    gap[1, 2] = 0
    empty = full.copy()
    empty[:, 1] = 0
    half = np.where(np.arange(9).reshape(3, 3) == 5, 0.5, 1.0)
    labels = np.zeros((3, 3), dtype=int)
    cases = [
        ({"mask": None}, r"^mask: required"),
        ({"mask": full}, r"^mask: expected a jax array, got numpy.ndarray"),
        ({"mask": jnp.asarray(full[:, :2])}, r"^mask: expected shape \(T, m\) = \(3, 3\)"),
        ({"mask": jnp.asarray(half)}, r"^mask: expected 0 or 1, got 0.5 at \(1, 2\)"),
        ({"mask": jnp.asarray(gap)}, r"^mask: example 2 has a real step 2 after a padded step 1"),
        ({"mask": jnp.asarray(empty)}, r"^mask: example 1 has no real step"),
        (
            {
                "Y": jnp.asarray(np.where(np.arange(9).reshape(3, 3) == 1, 3, labels)),
                "mask": jnp.asarray(full),
            },
            r"^Y: expected class labels from 0 to 2 \(n_out = 3\), got 3 at index \(0, 1\)",
        ),
        ({"Y": jnp.asarray(labels[:, :2])}, r"^Y: expected class labels of shape \(T, m\)"),
        ({"Y": jnp.asarray(labels).astype(bool)}, r"^Y: expected integer class labels or float"),
        (
            {"Y": jnp.zeros((3, 3, 3)), "mask": jnp.asarray(full)},
            r"^Y: cross_entropy targets must sum to 1",
        ),
    ]
    for change, message in cases:
        arguments = {"Y": Y, **keywords, **change}
        for call in (mod.loss, mod.loss_and_gradients):
            with pytest.raises(mod.ArgumentError, match=message):
                call(params, X, **arguments)


# -- both -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_derive_writes_the_backend_code_of_a_composed_model(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``symbptt derive --backend B --layers 2 --bidirectional --masked`` writes the rolled and
    unrolled modules of B, each checked by central differences, equal to ``emit``'s text; a time
    mean without a mask the rolled one (it divides by T, not by the derivation's 5 steps)."""
    pytest.importorskip(backend)
    from symbptt.cli import main

    argv = ["--layers", "2", "--bidirectional", "--masked", "--steps", "3", "--no-pdf"]
    out = tmp_path / "out"
    code = main(["derive", *argv, "--backend", backend, "--unrolled", "--out", str(out)])
    text, err = capsys.readouterr()
    assert code == 0, err
    for name in (f"gradients_{backend}.py", f"gradients_{backend}_unrolled.py"):
        assert re.search(rf"{name} +max relative error .* OK", text), text
    spec = ModelSpec(steps=3, **ALL_THREE)
    assert (out / f"gradients_{backend}.py").read_text() == symbptt.emit(spec, backend=backend)
    unrolled = (out / f"gradients_{backend}_unrolled.py").read_text()
    assert unrolled == symbptt.emit(spec, backend=backend, unrolled=True)
    argv = ["--layers", "2", "--time-reduction", "mean", "--steps", "3", "--no-pdf"]
    other = tmp_path / "mean"
    assert main(["derive", *argv, "--backend", backend, "--out", str(other)]) == 0
    text, err = capsys.readouterr()
    written = sorted(p.name for p in other.iterdir())
    assert f"gradients_{backend}.py" in written, written
    assert f"gradients_{backend}_unrolled.py" not in written
    assert re.search(rf"gradients_{backend}.py +max relative error .* OK", text), text


def test_composed_torch_and_jax_code_is_ruff_clean(tmp_path: Path) -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed")
    backends = [b for b in ("torch", "jax") if importlib.util.find_spec(b) is not None]
    for backend in backends:
        for i, fields in enumerate([*FAST, *SLOW]):
            for unrolled in (False, True):
                source = symbptt.emit(
                    ModelSpec(steps=2, **fields), backend=backend, unrolled=unrolled
                )
                path = tmp_path / f"{backend}_{i}_{int(unrolled)}.py"
                path.write_text(source)
    for command in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--isolated", str(tmp_path)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_a_cell_file_pinning_a_state_at_zero_composes_on_every_backend() -> None:
    """A stacked bidirectional masked LSTM whose cell file starts h as an input and c at zero:
    only the h's are keywords (INITIALS), and the NumPy (rolled and unrolled), torch and JAX
    modules give the same loss and gradients, the initial states' included."""
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from symbptt.model import cell_from_mapping, load_cell

    mapping = load_cell("lstm").as_mapping()
    mapping["states"] = {
        "h": {"size": "n_hidden", "initial": "input"},
        "c": {"size": "n_hidden", "initial": "zero"},
    }
    spec = ModelSpec(
        cell=cell_from_mapping(mapping), steps=3, layers=2, direction="bidirectional",
        masked=True, n_in=3, n_hidden=2, n_out=3, batch=2,
    )  # fmt: skip
    numpy_rolled = symbptt.load_module(symbptt.emit(spec, backend="numpy"))
    assert {k: f"h0_{k[2:]}" for k in ("h_1f", "h_1b", "h_2f", "h_2b")} == numpy_rolled.INITIALS
    rng = np.random.default_rng(0)
    params = numpy_rolled.init_params(3, 2, 3)
    X, Y = rng.standard_normal((3, 2, 3)), np.eye(3)[rng.integers(0, 3, (3, 2))]
    M = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    init = {k: rng.standard_normal((2, 2)) for k in numpy_rolled.INITIALS.values()}
    loss, grads, state = numpy_rolled.loss_and_all_gradients(params, X, Y, mask=M, **init)
    assert not any(key.startswith("dc0") for key in state)

    unrolled = symbptt.load_module(symbptt.emit(spec, backend="numpy", unrolled=True))
    other = unrolled.loss_and_all_gradients(params, X, Y, mask=M, **init)
    assert np.isclose(other[0], loss)
    for name in grads:
        np.testing.assert_allclose(other[1][name], grads[name], rtol=1e-10, atol=1e-12)

    t = symbptt.load_module(symbptt.emit(spec, backend="torch"))
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    tp = {k: torch.tensor(v) for k, v in params.items()}
    value = t.loss(tp, torch.tensor(X), torch.tensor(Y), mask=torch.tensor(M), **leaves)
    value.backward()
    assert np.isclose(float(value.detach()), loss)
    for key, leaf in leaves.items():
        np.testing.assert_allclose(leaf.grad.numpy(), state["d" + key], rtol=1e-10, atol=1e-12)

    j = symbptt.load_module(symbptt.emit(spec, backend="jax"))
    as_jax = {k: jnp.asarray(v) for k, v in params.items()}
    jloss, jgrads = j.loss_and_gradients(
        as_jax, jnp.asarray(X), jnp.asarray(Y), mask=jnp.asarray(M),
        **{k: jnp.asarray(v) for k, v in init.items()},
    )  # fmt: skip
    assert np.isclose(float(jloss), loss)
    for name in grads:
        np.testing.assert_allclose(np.asarray(jgrads[name]), grads[name], rtol=1e-10, atol=1e-12)


# -- every backend ----------------------------------------------------------------------------
def _asarray(backend: str) -> Any:
    """A function making the backend's arrays from NumPy's (the test skips without the library)."""
    if backend == "torch":
        return _torch().as_tensor
    if backend == "jax":
        return _jax().numpy.asarray
    if backend == "array_api":
        return pytest.importorskip("array_api_strict").asarray
    return np.asarray


INTEGERS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


@pytest.mark.parametrize("backend", ["numpy", "array_api", "torch", "jax"])
def test_class_labels_of_every_integer_dtype_count_as_int64_labels(backend: str) -> None:
    """Class labels of any integer dtype give the loss and gradients of the same labels as
    int64 (torch compares no uint16/32/64 tensors and the array API standard promotes no
    uint64 with int64: both refused such labels with their library's error); a uint64 label
    past 2**63 is refused by name and value."""
    asarray = _asarray(backend)
    mod = _module(backend, False, **ALL_THREE)
    problem = _problem(ALL_THREE, rng=3)
    params = {k: asarray(v) for k, v in problem.params.items()}
    keywords = {k: asarray(v) for k, v in {**problem.keywords(), **problem.initial}.items()}
    X = asarray(problem.X)
    raw = np.random.default_rng(3).integers(0, 3, size=problem.X.shape[:2])
    expected = mod.loss_and_gradients(params, X, asarray(raw), **keywords)
    for name in INTEGERS:
        loss, grads = mod.loss_and_gradients(params, X, asarray(raw.astype(name)), **keywords)
        assert float(loss) == float(expected[0]), name
        for parameter in mod.PARAMETERS:
            np.testing.assert_array_equal(
                np.asarray(grads[parameter]), np.asarray(expected[1][parameter]), err_msg=name
            )
    huge = raw.astype(np.uint64)
    huge[0, 1] = 2**63 + 5  # step 0 is real in every example
    message = r"^Y: expected class labels from 0 to 2 \(n_out = 3\), got 9223372036854775813 at"
    with pytest.raises(mod.ArgumentError, match=message):
        mod.loss_and_gradients(params, X, asarray(huge), **keywords)


PADDED = {**ALL_THREE, "hidden": "relu", "output": "identity", "loss": "squared_error"}


@pytest.mark.parametrize("unrolled", [False, True], ids=["rolled", "unrolled"])
@pytest.mark.parametrize("backend", ["numpy", "array_api", "torch", "jax"])
def test_padded_steps_hold_anything_finite(backend: str, unrolled: bool) -> None:
    """A padded step's input and target can be anything finite (docs/composition.md): huge
    ones give the loss, gradients and states of zeros there. Before, a padded target of 1e200
    made the squared error's loss NaN (its square overflowed; the mask multiplied it), and a
    padded input of +-half the largest float every answer NaN (its product with the first
    layer's weights overflowed in the candidate state, which the mask multiplied)."""
    if backend == "jax":
        _jax()
    asarray = _asarray(backend)
    mod = _module(backend, unrolled, **PADDED)
    problem = _problem(PADDED, rng=4)
    padded = problem.mask == 0
    keywords = {k: asarray(v) for k, v in {**problem.keywords(), **problem.initial}.items()}
    params = {k: 4 * v if k.startswith("W_xh_1") else v for k, v in problem.params.items()}
    params = {k: asarray(v) for k, v in params.items()}
    huge = np.finfo(np.float64).max / 2 * np.array([1.0, -1.0])
    for what, value in (("X", huge), ("Y", 1e200)):
        answers = []
        for filling in (0.0, value):
            X, Y = problem.X.copy(), problem.Y.copy()
            (X if what == "X" else Y)[padded] = filling
            answers.append(mod.loss_and_all_gradients(params, asarray(X), asarray(Y), **keywords))
        (zero_loss, zero_grads, zero_state), (loss, grads, state) = answers
        assert float(loss) == float(zero_loss), what
        for name, expected in {**zero_grads, **zero_state}.items():
            actual = grads[name] if name in grads else state[name]
            np.testing.assert_array_equal(
                np.asarray(actual), np.asarray(expected), err_msg=f"{what}: {name}"
            )


@pytest.mark.parametrize("unrolled", [False, True], ids=["rolled", "unrolled"])
@pytest.mark.parametrize("backend", ["numpy", "array_api", "torch", "jax"])
@pytest.mark.parametrize("fields", [{"cell": "elman"}, {"cell": "gru", **ALL_THREE}], ids=_id)
def test_targets_of_none_are_refused_naming_Y(
    backend: str, unrolled: bool, fields: dict[str, Any]
) -> None:
    """Y=None to a loss function is refused by name (every backend read it as forward's "no
    targets" and failed in its loss with AttributeError or TypeError); forward takes none."""
    asarray = _asarray(backend)
    mod = _module(backend, unrolled, **fields)
    problem = _problem(fields)
    params = {k: asarray(v) for k, v in problem.params.items()}
    keywords = {k: asarray(v) for k, v in {**problem.keywords(), **problem.initial}.items()}
    X = asarray(problem.X)
    for function in (mod.loss, mod.loss_and_gradients, mod.loss_and_all_gradients):
        with pytest.raises(
            mod.ArgumentError, match=r"^Y: expected an? [a-z. ]*(array|Tensor), got NoneType$"
        ):
            function(params, X, None, **keywords)
    predictions, _ = mod.forward(params, X, **keywords)
    assert tuple(predictions.shape)[-1] == 3


@pytest.mark.parametrize("backend", ["numpy", "array_api", "torch", "jax"])
def test_check_is_true_or_false(backend: str) -> None:
    """``check`` was read for its truth: None or 0 skipped the validation without a word,
    "no" ran it; anything but True or False is refused by name, in every function."""
    asarray = _asarray(backend)
    fields = {"cell": "elman"}
    mod = _module(backend, False, **fields)
    problem = _problem(fields)
    params = {k: asarray(v) for k, v in problem.params.items()}
    X, Y = asarray(problem.X), asarray(problem.Y)
    for check in (None, 0, 1, "no", np.False_):
        message = rf"^check: expected True or False, got {re.escape(repr(check))}$"
        for function in (mod.loss, mod.loss_and_gradients, mod.loss_and_all_gradients):
            with pytest.raises(mod.ArgumentError, match=message):
                function(params, X, Y, check=check)
        with pytest.raises(mod.ArgumentError, match=message):
            mod.forward(params, X, check=check)
    expected = mod.loss_and_gradients(params, X, Y)
    unchecked = mod.loss_and_gradients(params, X, Y, check=False)
    assert float(unchecked[0]) == float(expected[0])


@pytest.mark.parametrize("backend", ["numpy", "array_api", "torch", "jax"])
def test_init_params_takes_positive_integer_sizes(backend: str) -> None:
    """A size of 0, -1, 2.5, "3" or True: NumPy drew weights with no columns (and warned of
    a division by zero), or raised its ValueError or TypeError; torch and the array API
    raised ZeroDivisionError. Each is refused by name; NumPy's integers are sizes."""
    _asarray(backend)  # skips without the library (and sets JAX's float64)
    mod = _module(backend, False, cell="elman")
    for bad in (0, -1, 2.5, "3", True, None):
        message = rf"^n_hidden: expected a positive integer, got {re.escape(repr(bad))}$"
        with pytest.raises(mod.ArgumentError, match=message):
            mod.init_params(3, bad, 2)
    params = mod.init_params(np.int64(3), 4, 2)
    assert tuple(params["W_xh"].shape) == (4, 3)
