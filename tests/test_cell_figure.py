"""The figure of a cell's inside (documents/cell_figure.py), drawn from its equations.

The oracle: the figure's graph, run as a computation (each box its operation,
each labelled arrow its weight), gives the same new states as the generated
module's step (biases off: the figure leaves them out), for the built-in gated
cells, Elman and the example cell files. Then what the figure must show (every
weight once, every equation's quantity, the thick carry of the LSTM's c and the
GRU's h), and that the documents that hold it compile without overfull boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import symbptt
from symbptt import ModelSpec
from symbptt.documents import _writer, cell_figure, render_documents
from symbptt.expr.functions import ACTIVATIONS
from symbptt.oracle.gradcheck import random_problem

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CELLS = [
    ("lstm", "xh"),
    ("lstm", "layered"),
    ("gru", "xh"),
    ("gru", "layered"),
    ("elman", "xh"),
    ("elman", "layered"),
    (str(EXAMPLES / "gru_pytorch.toml"), "xh"),
    (str(EXAMPLES / "lstm_peephole.toml"), "xh"),
]


def writer_of(spec: ModelSpec) -> Any:
    return _writer(symbptt.derive(spec), None, None)


def _activation(name: str, spec: ModelSpec) -> Any:
    if name == spec.model.activation:
        name = spec.hidden
    function = ACTIVATIONS[name].function
    return np.vectorize(lambda v: float(function(v)))


def run_figure(spec: ModelSpec, params: dict[str, Any], x: Any, previous: dict[str, Any]) -> Any:
    """The new states, computed box by box from the figure's graph (column layout)."""
    writer = writer_of(spec)
    nodes = cell_figure._Builder(writer).nodes
    row = spec.model.notations[spec.notation].layout == "row"
    weights = {
        name: (value.T if row and value.shape[1] != 1 else value) for name, value in params.items()
    }
    values: dict[str, Any] = {f"in_{spec.model.inputs[0].key}": x}
    values |= {f"prev_{key}": value for key, value in previous.items()}
    for ident, node in nodes.items():
        if node.kind == "source":
            continue
        args = []
        for source, _, label in node.inputs:
            value = values[source]
            if label in weights and weights[label].shape[1] != 1:
                value = weights[label] @ value
            elif label in weights:  # a per-unit vector (a peephole) scales entry by entry
                value = weights[label] * value
            elif label == "-":
                value = -value
            elif label and node.ascii == "*":
                value = float(label) * value
            args.append(value)
        if node.kind == "out" or node.ascii == "=":
            values[ident] = args[0]
        elif node.ascii == "+" or (node.ascii == "@" and len(args) == 1):
            values[ident] = sum(args)
        elif node.ascii == "*":
            values[ident] = np.prod(args, axis=0)
        elif node.ascii == "1-":
            values[ident] = 1 - args[0]
        else:
            values[ident] = _activation(node.ascii, spec)(sum(args))
    return {key: values[f"out_{key}"] for key in previous}


@pytest.mark.parametrize(("cell", "notation"), CELLS, ids=str)
def test_the_figure_computes_the_cells_step(cell: str, notation: str) -> None:
    spec = ModelSpec(cell=cell, notation=notation, steps=1, bias=False, initial_state="input")
    module = symbptt.load_module(symbptt.emit_numpy(spec))
    problem = random_problem(module, steps=1, rng=7)
    _, _, state = module.loss_and_all_gradients(*problem.args())
    x = problem.X[0].T  # (n_in, m): the figure is drawn in the column layout
    previous = {key: problem.initial[f"{key}0"].T for key in module.STATES}
    computed = run_figure(spec, problem.params, x, previous)
    for key in module.STATES:
        np.testing.assert_allclose(computed[key], state[f"{key}_T"].T, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("cell", "notation"), CELLS, ids=str)
def test_every_weight_and_quantity_is_shown_once(cell: str, notation: str) -> None:
    spec = ModelSpec(cell=cell, notation=notation, steps=2)
    writer = writer_of(spec)
    nodes = cell_figure._Builder(writer).nodes
    names = spec.model.notations[notation]
    labels = [label for node in nodes.values() for _, _, label in node.inputs if label]
    for p in spec.model.parameters:
        shown = labels.count(names.name_of(p.key).ascii)
        assert shown == (0 if p.kind == "bias" else 1), p.key
    named = [node.name_ascii for node in nodes.values() if node.name_ascii]
    assert sorted(named) == sorted(names.name_of(eq.target).ascii for eq in spec.model.equations)
    assert [n.ident for n in nodes.values() if n.kind == "out"] == [
        f"out_{q.key}" for q in spec.model.states
    ]


def test_the_thick_arrows_are_the_carried_states() -> None:
    lstm = writer_of(ModelSpec(cell="lstm", steps=2))
    nodes = cell_figure._Builder(lstm).nodes
    carried = cell_figure._carried(nodes, lstm.spec.model)
    tail = {source for source, _ in carried} | {target for _, target in carried}
    assert "prev_c" in tail and "out_c" in tail and "prev_h" not in tail and "out_h" not in tail
    assert {nodes[i].ascii for i in tail if nodes[i].kind == "op"} == {"*", "+"}
    gru = writer_of(ModelSpec(cell="gru", steps=2))
    nodes = cell_figure._Builder(gru).nodes
    carried = cell_figure._carried(nodes, gru.spec.model)
    assert ("prev_h", next(t for s, t in carried if s == "prev_h")) in carried
    assert any(t == "out_h" for _, t in carried)
    elman = writer_of(ModelSpec(steps=2))  # an activation on the only path: nothing carried
    assert cell_figure._carried(cell_figure._Builder(elman).nodes, elman.spec.model) == set()


def test_the_documents_hold_the_figure_and_the_chart() -> None:
    tex, md = render_documents(ModelSpec(cell="lstm", steps=3))
    assert r"\subsection*{Inside the cell}" in tex and r"\linethickness{1.2pt}" in tex
    assert "### Inside the cell" in md and "flowchart LR" in md
    assert '  op1(["σ: i[t]"])' in md and "  in_x -->|W_xi| op1" in md and "prev_c ==> " in md


@pytest.mark.tex
@pytest.mark.parametrize(("cell", "notation"), [c for c in CELLS if c[0] != "elman"], ids=str)
def test_the_figure_compiles_without_overfull_boxes(cell: str, notation: str) -> None:
    from symbptt.documents import compile_pdf, overfull_boxes, render_latex
    from tests.test_documents import require_pdflatex

    require_pdflatex()
    pdf, log = compile_pdf(render_latex(ModelSpec(cell=cell, notation=notation, steps=3)))
    assert pdf.startswith(b"%PDF")
    assert overfull_boxes(log) == []
