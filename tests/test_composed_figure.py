"""The figure of a composed model's unrolled graph (documents/composed_figure.py).

Its edges are drawn from the spec's Program; the oracle reads them off the
derivation's own assignments instead: each unit at a step is the set of its
states there, the output layer at a step its pre-activation and prediction,
and an edge joins two drawn quantities (an input, a unit at a step, the output
layer, a loss) where one's definition reads the other through quantities the
figure does not draw.
"""

from __future__ import annotations

from typing import Any

import pytest

from symbptt import ModelSpec, derive
from symbptt.documents import _writer, compile_pdf, composed_figure, overfull_boxes
from tests.test_documents import require_pdflatex

SPECS = [
    {"steps": 3, "layers": 2, "direction": "bidirectional"},
    {"steps": 3, "layers": 3, "cell": "lstm"},
    {"steps": 3, "direction": "bidirectional", "mode": "many_to_one", "notation": "uvw"},
    {"steps": 3, "layers": 2, "masked": True, "cell": "gru", "notation": "layered"},
    {"steps": 2, "layers": 2, "direction": "bidirectional", "cell": "lstm", "masked": True},
]
IDS = ["-".join(f"{k}={v}" for k, v in spec.items() if k != "steps") for spec in SPECS]


def oracle_edges(d: Any) -> set[tuple[str, str]]:
    """The Mermaid chart's edges, read off the derivation's assignments."""
    graph = d.graph
    symbols = graph.symbols
    cell = d.spec.model
    drawn: dict[Any, str] = {}
    for x, step in zip(graph.inputs, graph.steps, strict=True):
        drawn[x] = f"x_{step}"
    for i, registry in enumerate(symbols.registries):
        for step in graph.steps:
            for state in cell.states:
                drawn[registry.series(state.key, step)] = f"u{i}_{step}"
    for assignment in graph.assignments:
        if assignment.kind == "loss":
            drawn[assignment.target] = f"L_{assignment.step}"
        elif assignment.kind in ("output", "output_pre_activation"):  # the output layer
            drawn[assignment.target] = f"y_{assignment.step}"
    definitions = graph.definitions
    reached: dict[Any, set[str]] = {}

    def reads(symbol: Any) -> set[str]:  # the drawn quantities a definition reaches
        if symbol in reached:
            return reached[symbol]
        found: set[str] = set()
        expr = definitions.get(symbol)
        for atom in getattr(expr, "free_symbols", set()):
            if atom in drawn:
                found.add(drawn[atom])
            elif atom in definitions:
                found |= reads(atom)
        reached[symbol] = found
        return found

    edges = set()
    for symbol, name in drawn.items():
        if symbol in definitions:
            edges |= {(source, name) for source in reads(symbol) if source != name}
    return edges


def chart_edges(lines: list[str]) -> set[tuple[str, str]]:
    edges = set()
    for line in lines[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[1].startswith(("-->", "-.->")):
            edges.add((parts[0], parts[-1]))
    return edges


@pytest.mark.parametrize("fields", SPECS, ids=IDS)
def test_the_chart_has_the_derivations_edges(fields: dict[str, Any]) -> None:
    d = derive(ModelSpec(**fields))
    lines = composed_figure.mermaid(_writer(d, None, None))
    assert chart_edges(lines) == oracle_edges(d)


@pytest.mark.parametrize("fields", SPECS, ids=IDS)
def test_the_picture_names_every_unit_at_every_step(fields: dict[str, Any]) -> None:
    d = derive(ModelSpec(**fields))
    writer = _writer(d, None, None)
    commands = "\n".join(composed_figure.picture(writer)["commands"])
    graph = composed_figure._Graph(writer)
    for i in range(len(d.spec.program.units)):
        for step in d.graph.steps:
            assert f"${graph.unit_name(i, step)}$" in commands
    slopes = [c.split(r"\vector(")[1].split(")")[0] for c in commands.splitlines() if "vector" in c]
    for slope in slopes:  # what picture draws without a package
        dx, dy = (abs(int(v)) for v in slope.split(","))
        assert dx <= 4 and dy <= 4, slope


@pytest.mark.tex
@pytest.mark.parametrize("fields", SPECS, ids=IDS)
def test_the_picture_compiles_without_overfull_boxes(fields: dict[str, Any]) -> None:
    require_pdflatex()
    writer = _writer(derive(ModelSpec(**fields)), None, None)
    figure = composed_figure.picture(writer)
    _assert_fits_the_page(figure)


@pytest.mark.tex
@pytest.mark.parametrize(
    "fields",
    [
        {"steps": 6, "layers": 2, "direction": "bidirectional", "cell": "lstm"},
        {"steps": 6, "layers": 2, "direction": "bidirectional", "mode": "many_to_one"},
        {"steps": 6, "layers": 3},
    ],
    ids=["bidirectional", "bidirectional-many-to-one", "stacked"],
)
def test_a_long_sequence_is_elided_to_fit_the_page(fields: dict[str, Any]) -> None:
    """Past its columns the figure draws the first steps, a gap and the last step; the
    wider bidirectional columns are fewer, so every picture fits between the margins."""
    require_pdflatex()
    spec = ModelSpec(**fields)
    writer = _writer(derive(spec), None, None)
    figure = composed_figure.picture(writer)
    commands = "\n".join(figure["commands"])
    graph = composed_figure._Graph(writer)
    drawn = [s for s in graph.steps if f"${graph.unit_name(0, s)}$" in commands]
    assert drawn == [*graph.steps[: composed_figure.shown(spec.program) - 2], graph.steps[-1]]
    assert r"\cdots" in commands
    _assert_fits_the_page(figure)


def _assert_fits_the_page(figure: dict[str, Any]) -> None:
    """The picture alone on an A4 page with the documents' margins: no overfull box."""
    tex = "\n".join(
        [
            r"\documentclass{article}\usepackage[margin=2.5cm]{geometry}\usepackage{amsmath}",
            r"\begin{document}\begin{center}\setlength{\unitlength}{1pt}",
            rf"\begin{{picture}}{figure['size']}",
            *figure["commands"],
            r"\end{picture}\end{center}\end{document}",
        ]
    )
    _, log = compile_pdf(tex)
    assert overfull_boxes(log) == []
