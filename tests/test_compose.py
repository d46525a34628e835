"""Composed models (issue 10): graph, derivation and the scalar proof.

Stacked layers, both directions and masks go through the one graph builder and
reverse mode; every gradient entry is compared with ``sympy.diff`` of the
explicit loss the oracle (``symbptt.oracle.verify``) writes out from the cell
equations on its own (a concatenated input, masks applied column by column).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mpmath
import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symbptt import ModelSpec, SpecError, derive
from symbptt.core.evaluate import Evaluator
from symbptt.core.graph import build_graph
from symbptt.oracle.verify import DPS, _env, random_values, scalar_loss, scalar_proof

SMALL = {"n_in": 2, "n_hidden": 2, "n_out": 2, "batch": 3}


def _spec(**fields: object) -> ModelSpec:
    return ModelSpec(**{"steps": 2, **SMALL, **fields})  # type: ignore[arg-type]


def _graph_loss(spec: ModelSpec, values: dict[str, object]) -> mpmath.mpf:
    """The loss the graph computes (evaluated assignment by assignment) at ``values``."""
    d = derive(spec)
    evaluator = Evaluator(_env(d, values), backend="mp", dps=DPS)
    evaluator.run(d.graph.assignments)
    return evaluator.env[d.graph.loss]


def _oracle_loss(spec: ModelSpec, values: dict[str, object]) -> mpmath.mpf:
    return mpmath.mpf(str(sp.N(scalar_loss(spec, values), DPS)))


COMPOSED = [
    {"layers": 2},
    {"direction": "bidirectional"},
    {"masked": True},
    {"layers": 2, "direction": "bidirectional", "masked": True},
    {"layers": 2, "direction": "bidirectional", "masked": True, "notation": "layered"},
    {"direction": "bidirectional", "masked": True, "mode": "many_to_one"},
    {"masked": True, "time_reduction": "mean", "batch_reduction": "sum"},
    {"masked": True, "batch_reduction": "tokens", "cell": "lstm", "n_hidden": 1},
    {"batch_reduction": "tokens", "direction": "bidirectional", "cell": "gru", "n_hidden": 1},
]


@pytest.mark.parametrize(
    "fields", COMPOSED, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items())
)
def test_graph_loss_equals_the_oracle_loss(
    fields: dict[str, object], rng: np.random.Generator
) -> None:
    spec = _spec(**fields)
    values = random_values(spec, rng)
    with mpmath.workdps(DPS):
        graph, oracle = _graph_loss(spec, values), _oracle_loss(spec, values)
        assert abs(graph - oracle) <= mpmath.mpf(10) ** (5 - DPS) * max(1, abs(oracle))


def test_a_full_mask_is_the_unmasked_model(rng: np.random.Generator) -> None:
    spec = _spec(layers=2, direction="bidirectional", masked=True, time_reduction="mean")
    values = random_values(spec, rng)
    values["mask"] = [[1] * SMALL["batch"] for _ in range(spec.steps)]
    plain = _spec(layers=2, direction="bidirectional", time_reduction="mean")
    with mpmath.workdps(DPS):
        assert abs(_graph_loss(spec, values) - _graph_loss(plain, values)) < mpmath.mpf(10) ** -25
        assert abs(_oracle_loss(spec, values) - _oracle_loss(plain, values)) < mpmath.mpf(10) ** -25


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_a_padded_step_changes_nothing(direction: str, rng: np.random.Generator) -> None:
    """Inputs and targets at a padded step leave the loss alone, and their gradient is 0."""
    spec = _spec(steps=3, layers=2, direction=direction, masked=True, time_reduction="mean")
    values = random_values(spec, rng)
    values["mask"] = [[1, 1, 1], [1, 0, 1], [1, 0, 0]]
    changed = dict(values)
    changed["x"] = [x.copy() for x in values["x"]]
    changed["y"] = [y.copy() for y in values["y"]]
    for k, j in [(1, 1), (2, 1), (2, 2)]:  # every padded (step, example)
        changed["x"][k][:, j] = changed["x"][k][:, j] * 3 + sp.ones(SMALL["n_in"], 1)
        changed["y"][k][:, j] = changed["y"][k][:, j] * 0
    with mpmath.workdps(DPS):
        before = _oracle_loss(spec, values)
        assert abs(_oracle_loss(spec, changed) - before) < mpmath.mpf(10) ** -25
        assert abs(_graph_loss(spec, changed) - before) < mpmath.mpf(10) ** -25
        d = derive(spec)
        evaluate = Evaluator(_env(d, values), backend="mp", dps=DPS)
        for k, step in enumerate(d.graph.steps):
            dx = evaluate(d.input_gradients[step].xreplace(d._expanded))
            for j in range(SMALL["batch"]):
                padded = values["mask"][k][j] == 0
                assert (max(abs(v) for v in dx[:, j]) == 0) == padded


def test_tokens_divide_by_the_number_of_pairs(rng: np.random.Generator) -> None:
    spec = _spec(steps=3, batch_reduction="tokens")
    values = random_values(spec, rng)
    with mpmath.workdps(DPS):
        total = _oracle_loss(_spec(steps=3, batch_reduction="sum"), values)
        assert abs(_oracle_loss(spec, values) - total / (3 * SMALL["batch"])) < 1e-25
        masked = _spec(steps=3, batch_reduction="tokens", masked=True)
        values["mask"] = [[1, 1, 1], [1, 0, 1], [1, 0, 0]]
        summed = _oracle_loss(_spec(steps=3, batch_reduction="sum", masked=True), values)
        assert abs(_graph_loss(masked, values) - summed / 6) < 1e-25


def test_a_cell_reading_its_input_otherwise_cannot_be_split(tmp_path: Path) -> None:
    from tests.test_cells import GRU_CELL

    text = GRU_CELL.replace("sigmoid(W_xz @ x[t]", "sigmoid(W_xz @ sigmoid(x[t])")
    path = tmp_path / "cell.toml"
    path.write_text(text, encoding="utf-8")
    derive(_spec(cell=str(path), layers=2))  # one direction: no split, fine
    with pytest.raises(SpecError, match=r"^direction: .* uses the input otherwise"):
        build_graph(_spec(cell=str(path), layers=2, direction="bidirectional"))


def test_proof_bidirectional_masked_elman(rng: np.random.Generator) -> None:
    spec = _spec(direction="bidirectional", masked=True, n_in=1, n_hidden=1, batch=2)
    proof = scalar_proof(spec, rng)
    assert proof.ok, proof
    assert proof.entries == sum(np.prod(p.shape) for p in build_graph(spec).params.values())


#: Every built-in cell stacked, bidirectional and masked at once, and the Elman cell each
#: way alone too; modes, reductions, notations and initial states varying.  (A two-layer
#: bidirectional LSTM takes about two minutes: the loss is rebuilt for every entry.)
ALL_THREE = {"layers": 2, "direction": "bidirectional", "masked": True}
PROOFS = [
    ("elman", {"layers": 2, "mode": "many_to_one", "initial_state": "input"}),
    ("elman", {"direction": "bidirectional", "time_reduction": "mean", "notation": "layered"}),
    ("elman", {"masked": True, "time_reduction": "mean", "batch_reduction": "sum"}),
    ("elman", {**ALL_THREE, "mode": "many_to_one", "notation": "uvw"}),
    ("elman", {"direction": "bidirectional", "masked": True, "batch_reduction": "tokens"}),
    ("elman", {**ALL_THREE, "notation": "layered", "initial_state": "input"}),
] + [
    (cell, fields)
    for cell in ("elman", "lstm", "gru")
    for fields in (
        ALL_THREE,
        {
            "direction": "bidirectional",
            "masked": True,
            "mode": "many_to_one",
            "notation": "layered",
        },
    )
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cell", "fields"),
    PROOFS,
    ids=[f"{c}-" + "-".join(f"{v}" for v in f.values()) for c, f in PROOFS],
)
def test_proof_composed(cell: str, fields: dict[str, object], rng: np.random.Generator) -> None:
    sizes = {"n_in": 1, "n_hidden": 2 if cell == "elman" else 1, "batch": 2}
    spec = _spec(cell=cell, **{**sizes, **fields})
    proof = scalar_proof(spec, rng)
    assert proof.ok, proof


def test_parameter_names_per_layer_and_direction() -> None:
    from symbptt.core.graph import build_graph

    graph = build_graph(
        ModelSpec(cell="lstm", layers=2, direction="bidirectional", steps=2, notation="layered")
    )
    names = list(graph.params)
    assert names[:3] == ["W_xi_1f", "W_hi_1f", "W_xf_1f"]
    # layer 2 reads both directions of layer 1: its input weights are split in two
    assert {"W_xi_2f_f", "W_xi_2f_b", "W_xi_2b_f", "W_xi_2b_b"} <= set(names)
    assert "W_xi_2f" not in names and "W_hi_2f" in names
    assert names[-3:] == ["W_hq_f", "W_hq_b", "b_q"]
    # stacked, one direction: the output layer keeps the notation's own name
    stacked = build_graph(ModelSpec(layers=2, steps=2))
    head = ["W_hy", "b_y"]
    assert list(stacked.params) == ["W_xh_1", "W_hh_1", "b_h_1", "W_xh_2", "W_hh_2", "b_h_2", *head]


@pytest.mark.slow
def test_stacked_bidirectional_masked_lstm_equals_torch(rng: np.random.Generator) -> None:
    """PyTorch's nn.LSTM(num_layers=2, bidirectional=True) on packed sequences, autograd.

    The same numbers as the derivation: the loss and every gradient, with torch's
    concatenated weights split column-wise and gate-wise into the notation's names.
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (optional): the autograd comparison needs it")
    import torch

    steps, m, n_in, n_h, n_out = 4, 3, 3, 2, 3
    lengths = [4, 2, 3]
    spec = ModelSpec(
        cell="lstm",
        steps=steps,
        layers=2,
        direction="bidirectional",
        masked=True,
        **{"n_in": n_in, "n_hidden": n_h, "n_out": n_out, "batch": m},
    )
    mask = np.array([[1.0 if t < n else 0.0 for n in lengths] for t in range(steps)])
    torch.manual_seed(int(rng.integers(2**31)))
    lstm = torch.nn.LSTM(n_in, n_h, num_layers=2, bidirectional=True, dtype=torch.float64)
    head = torch.nn.Linear(2 * n_h, n_out, dtype=torch.float64)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            p.copy_(torch.zeros_like(p) if name.startswith("bias_hh") else torch.randn_like(p))
    X = torch.tensor(rng.normal(size=(steps, m, n_in)), requires_grad=True)
    labels = rng.integers(0, n_out, size=(steps, m))
    packed = torch.nn.utils.rnn.pack_padded_sequence(X, lengths, enforce_sorted=False)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(lstm(packed)[0], total_length=steps)
    logits = head(out).reshape(-1, n_out)
    ce = torch.nn.functional.cross_entropy(
        logits, torch.tensor(labels.reshape(-1)), reduction="none"
    ).reshape(steps, m)
    loss = (ce * torch.tensor(mask)).sum() / m
    loss.backward()

    def split(get: Any) -> dict[str, np.ndarray]:
        """torch's tensors (``get(parameter)``) under the notation's names."""
        found: dict[str, np.ndarray] = {}
        for layer in (0, 1):
            for tag, suffix in (("f", ""), ("b", "_reverse")):
                unit, where = f"{layer + 1}{tag}", f"l{layer}{suffix}"
                w_ih, w_hh = (
                    get(getattr(lstm, f"{w}_{where}")) for w in ("weight_ih", "weight_hh")
                )
                bias = get(getattr(lstm, f"bias_ih_{where}"))
                for k, gate in enumerate("ifco"):  # torch's order: i, f, g (our c), o
                    rows = slice(k * n_h, (k + 1) * n_h)
                    if layer == 0:
                        found[f"W_x{gate}_{unit}"] = w_ih[rows]
                    else:
                        found[f"W_x{gate}_{unit}_f"] = w_ih[rows, :n_h]
                        found[f"W_x{gate}_{unit}_b"] = w_ih[rows, n_h:]
                    found[f"W_h{gate}_{unit}"] = w_hh[rows]
                    found[f"b_{gate}_{unit}"] = bias[rows][:, None]
        weight, bias = get(head.weight), get(head.bias)
        found |= {"W_hy_f": weight[:, :n_h], "W_hy_b": weight[:, n_h:], "b_y": bias[:, None]}
        return found

    d = derive(spec)
    graph = d.graph
    values = split(lambda p: p.detach().numpy())
    env: dict[Any, Any] = {graph.params[name]: value for name, value in values.items()}
    x = X.detach().numpy()
    for k in range(steps):
        env[graph.inputs[k]] = x[k].T
        env[graph.targets[k]] = np.eye(n_out)[labels[k]].T
        env[graph.masks[k]] = mask[k][None, :]
    evaluate = Evaluator(env)
    evaluate.run(graph.assignments + d.assignments)
    assert evaluate.env[graph.loss] == pytest.approx(loss.item(), rel=1e-12)
    expected = split(lambda p: p.grad.numpy())
    assert set(expected) == set(d.gradients)
    for name, grad in expected.items():
        np.testing.assert_allclose(evaluate(d.gradients[name]), grad, rtol=1e-9, atol=1e-12)
    for k, step in enumerate(graph.steps):
        dx = evaluate(d.input_gradients[step])
        np.testing.assert_allclose(dx.T, X.grad.numpy()[k], rtol=1e-9, atol=1e-12)


@st.composite
def composed_specs(draw: st.DrawFn) -> ModelSpec:
    cell = draw(st.sampled_from(("elman", "lstm", "gru")))
    time_reduction = draw(st.sampled_from(("sum", "mean")))
    reductions = ("mean", "sum", "tokens") if time_reduction == "sum" else ("mean", "sum")
    notations = ("xh", "uvw", "layered", "aa") if cell == "elman" else ("xh", "layered")
    return ModelSpec(
        cell=cell,
        steps=draw(st.integers(1, 3)),
        layers=draw(st.integers(1, 2)),
        direction=draw(st.sampled_from(("forward", "bidirectional"))),
        masked=draw(st.booleans()),
        mode=draw(st.sampled_from(("many_to_many", "many_to_one"))),
        time_reduction=time_reduction,
        batch_reduction=draw(st.sampled_from(reductions)),
        notation=draw(st.sampled_from(notations)),
        bias=draw(st.booleans()),
        initial_state=draw(st.sampled_from(("zero", "input"))),
        n_in=draw(st.integers(1, 2)),
        n_hidden=draw(st.integers(1, 2)),
        n_out=2,
        batch=draw(st.integers(1, 3)),
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(composed_specs(), st.integers(0, 2**32 - 1))
def test_property_graph_loss_equals_the_oracle_loss(spec: ModelSpec, seed: int) -> None:
    values = random_values(spec, np.random.default_rng(seed))
    with mpmath.workdps(DPS):
        graph, oracle = _graph_loss(spec, values), _oracle_loss(spec, values)
        assert abs(graph - oracle) <= mpmath.mpf(10) ** (5 - DPS) * max(1, abs(oracle))
