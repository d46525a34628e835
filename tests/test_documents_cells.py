"""Derivation documents for every cell: LSTM, GRU and a user's cell file.

The expected names are built from the cell's notation data (its LaTeX names,
its index style), not from the document's printer: every parameter's gradient,
every state's adjoint (with what step t + 1 carries back) and every named
pre-activation adjoint must be in the document, which must compile.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from pathlib import Path

import pytest
import sympy as sp

import symbptt
from symbptt import ModelSpec, derive
from symbptt.core.derive import instantiate
from symbptt.core.graph import t_SYMBOL
from symbptt.documents import (
    _CellWriter,
    _teaching_shape,
    _Writer,
    _writer,
    compile_pdf,
    overfull_boxes,
    render_documents,
    render_latex,
    render_markdown,
)
from symbptt.expr import mexpr
from tests.test_documents import MATHJAX, _math_spans, require_pdflatex

#: A user's cell: a minimal gated unit with two states, in the "sup" and "call" index
#: styles (the built-in gated cells use "sub"), and an Elman-shaped cell whose file
#: tags no roles.
USER_CELL = r"""
name = "mgu2"
title = "Two-state gated unit"
description = "a test cell: one gate, a state and a slow state"
reference = "a test of symbptt"
readout = "h"

equations = [
    "f[t] = sigmoid(W_xf @ x[t] + W_hf @ h[t-1] + b_f)",
    "g[t] = tanh(W_xg @ x[t] + W_hg @ (f[t] * h[t-1]) + b_g)",
    "s[t] = f[t] * s[t-1] + (1 - f[t]) * g[t]",
    "h[t] = tanh(s[t]) * f[t] + h[t-1] * (1 - f[t])",
]

[inputs]
x = "n_in"

[states]
h = "n_hidden"
s = "n_hidden"

[parameters]
W_xf = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_hf = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b_f = { shape = ["n_hidden", 1], kind = "bias" }
W_xg = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_hg = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b_g = { shape = ["n_hidden", 1], kind = "bias" }
"""

_NAMES = r"""
W_xf = { ascii = "W_xf", latex = "W_{xf}", description = "input-to-gate weights" }
W_hf = { ascii = "W_hf", latex = "W_{hf}", description = "hidden-to-gate weights" }
b_f = { ascii = "b_f", latex = "b_f", description = "gate bias" }
W_xg = { ascii = "W_xg", latex = "W_{xg}", description = "input-to-candidate weights" }
W_hg = { ascii = "W_hg", latex = "W_{hg}", description = "hidden-to-candidate weights" }
b_g = { ascii = "b_g", latex = "b_g", description = "candidate bias" }
W_out = { ascii = "V", latex = "V", description = "output weights" }
b_out = { ascii = "c", latex = "c", description = "output bias" }
x = { ascii = "x", latex = "x", description = "input" }
f = { ascii = "f", latex = "f", description = "gate" }
g = { ascii = "g", latex = '\tilde{s}', description = "candidate" }
s = { ascii = "s", latex = "s", description = "slow", initial = "s_0", initial_latex = "s^{(0)}" }
h = { ascii = "h", latex = "h", description = "state", initial = "h_0", initial_latex = "h^{(0)}" }
logits = { ascii = "o", latex = "o", description = "output pre-activation" }
y_hat = { ascii = "y_hat", latex = '\hat{y}', description = "prediction" }
y = { ascii = "y", latex = "y", description = "target" }
"""

USER_CELL += (
    r"""
[notations.sup]
title = "superscript steps"
layout = "column"
first_step = 1
index = "sup"
loss = { ascii = "J", latex = "J" }
functions = { output = "g_2" }

[notations.sup.names]
"""
    + _NAMES
    + r"""
[notations.call]
title = "steps in parentheses, row layout"
layout = "row"
first_step = 0
index = "call"
loss = { ascii = "L", latex = "L" }
functions = { output = "g" }

[notations.call.names]
"""
    + _NAMES.replace('initial_latex = "s^{(0)}"', r"initial_latex = 's\left(-1\right)'").replace(
        'initial_latex = "h^{(0)}"', r"initial_latex = 'h\left(-1\right)'"
    )
)

#: An Elman-shaped cell whose file tags no Elman roles: it gets the general document.
UNTAGGED_ELMAN = r"""
name = "plain"
title = "Untagged Elman cell"
description = "one state through one activation, no role tags"
reference = "a test of symbptt"
readout = "h"
activation = "f"
equations = ["z[t] = W_x @ x[t] + W_h @ h[t-1] + b", "h[t] = f(z[t])"]

[inputs]
x = "n_in"

[states]
h = "n_hidden"

[parameters]
W_x = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_h = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b = { shape = ["n_hidden", 1], kind = "bias" }

[notations.xh]
title = "plain"
layout = "column"
first_step = 1
index = "sub"
loss = { ascii = "L", latex = "L" }
functions = { f = "f", output = "g" }

[notations.xh.names]
W_x = { ascii = "W_x", latex = "W_x", description = "input weights" }
W_h = { ascii = "W_h", latex = "W_h", description = "recurrent weights" }
b = { ascii = "b", latex = "b", description = "bias" }
W_out = { ascii = "V", latex = "V", description = "output weights" }
b_out = { ascii = "c", latex = "c", description = "output bias" }
x = { ascii = "x", latex = "x", description = "input" }
z = { ascii = "z", latex = "z", description = "pre-activation" }
h = { ascii = "h", latex = "h", description = "state", initial = "h_0", initial_latex = "h_0" }
logits = { ascii = "o", latex = "o", description = "output pre-activation" }
y_hat = { ascii = "y_hat", latex = '\hat{y}', description = "prediction" }
y = { ascii = "y", latex = "y", description = "target" }
"""


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The test's cell files, written once: name -> path."""
    folder = tmp_path_factory.mktemp("cells")
    out = {}
    for name, text in (("user", USER_CELL), ("plain", UNTAGGED_ELMAN)):
        path = folder / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        out[name] = str(path)
    return out


#: (cell, notation) of every document family tested here.
CELLS = [
    ("lstm", "xh"),
    ("lstm", "layered"),
    ("gru", "xh"),
    ("gru", "layered"),
    ("user", "sup"),
    ("user", "call"),
]

#: Concrete sizes (n_in, n_hidden, n_out, batch) from (1, 2, 3) with n_hidden != batch.
SIZES = [s for s in itertools.product((1, 2, 3), repeat=4) if s[1] != s[3]]


def make_spec(
    cells: dict[str, str],
    cell: str,
    notation: str,
    steps: int,
    sizes: tuple[int, ...] | None,
    **kw: object,
) -> ModelSpec:
    path = cells.get(cell, cell)
    fields: dict[str, object] = {"cell": path, "notation": notation, "steps": steps, **kw}
    if sizes is not None:
        fields.update(zip(("n_in", "n_hidden", "n_out", "batch"), sizes, strict=True))
    return ModelSpec(**fields)  # type: ignore[arg-type]


def grid() -> list[tuple[str, str, int, tuple[int, ...] | None, str, str]]:
    """Every cell x T = 1..4, symbolic sizes and a cycle through the concrete ones, both modes."""
    out = []
    k = 0
    for (cell, notation), steps in itertools.product(CELLS, (1, 2, 3, 4)):
        for sizes in (None, SIZES[(7 * k) % len(SIZES)]):
            mode = ("many_to_many", "many_to_one")[k % 2]
            initial = ("zero", "input")[(k // 2) % 2]
            out.append((cell, notation, steps, sizes, mode, initial))
            k += 1
    return out


GRID = grid()


def ids(case: tuple[object, ...]) -> str:
    cell, notation, steps, sizes, mode, initial = case
    size = "sym" if sizes is None else "x".join(map(str, sizes))  # type: ignore[arg-type]
    return f"{cell}-{notation}-T{steps}-{size}-{mode}-{initial}"


# -- what must be in the document ---------------------------------------------------------
def expected_names(spec: ModelSpec) -> dict[str, list[str]]:
    """From the notation's data: the gradients, state adjoints and pre-adjoints, in LaTeX."""
    d = derive(spec)
    notation = d.notation
    loss = notation.loss_latex
    t = t_SYMBOL

    def indexed(latex: str, step: object, layer: str = "") -> str:
        if notation.style == "sup":
            return f"{latex}^{{({sp.latex(step)})}}"
        return notation.index(latex, step, layer)

    def partial(of: str) -> str:
        return rf"\frac{{\partial {loss}}}{{\partial {of}}}"

    gradients = []
    for name in d.gradients:
        entry = next((p for p in notation.params if p.ascii == name), None)
        if entry is not None:
            gradients.append(partial(entry.latex) + " &=")
        else:  # an initial state
            state = next(s for s in notation.states if s.initial == name)
            before = notation.t0 - 1
            latex = (
                indexed(state.latex, before, state.layer)
                if notation.index(state.latex, before, state.layer) == state.initial_latex
                else state.initial_latex
            )
            gradients.append(partial(latex) + " &=")
    states = []
    carries = []
    for state in spec.model.states:
        entry = notation.name_of(state.key)
        states.append(partial(indexed(entry.latex, t, entry.layer)) + " &=")
        carries.append(indexed(entry.latex, t + 1, entry.layer))
    pre = []
    for a in d.step_form.backward:
        if a.kind.startswith("pre_adjoint_"):
            entry = notation.name_of(a.kind[len("pre_adjoint_") :])
            pre.append(entry.latex)
    return {"gradients": gradients, "states": states, "carries": carries, "pre": pre}


@pytest.mark.parametrize("case", GRID, ids=ids)
def test_every_gradient_and_adjoint_is_in_the_document(
    case: tuple[object, ...], cells: dict[str, str]
) -> None:
    cell, notation, steps, sizes, mode, initial = case
    spec = make_spec(cells, cell, notation, steps, sizes, mode=mode, initial_state=initial)  # type: ignore[arg-type]
    tex, md = render_documents(spec)
    names = expected_names(spec)
    for text in (tex, md):
        for gradient in names["gradients"]:
            assert gradient in text, gradient
        for adjoint in names["states"]:
            assert adjoint in text, adjoint
        for latex in names["pre"]:
            assert r"\delta" in text and f"{{{latex}}}" in text, latex
    assert "The adjoint recursion" in tex and "Gradients" in tex
    assert "chain rule, parameter by parameter" not in tex  # the Elman teaching sections
    _check_github_math(md)


@pytest.mark.parametrize(("cell", "notation"), CELLS)
def test_state_adjoints_name_what_step_t_plus_1_carries(
    cell: str, notation: str, cells: dict[str, str]
) -> None:
    spec = make_spec(cells, cell, notation, 3, None)
    writer = _writer(derive(spec), None, None)
    assert isinstance(writer, _CellWriter)
    backward = writer.backward()
    names = expected_names(spec)
    assert len(backward["states"]) == len(spec.model.states)
    for state in backward["states"]:
        # every state is read by step t + 1, so its adjoint receives something from there
        assert state["carries"], state
    # and the rows of the recursion hold those terms (every state's t + 1 name appears)
    rows = " ".join(backward["rows"])
    assert any(carry in rows for carry in names["carries"])
    assert backward["boundary"]


def test_lstm_recursion_has_every_carry_and_named_pre_adjoint() -> None:
    """dh_t gets W_h*^T δ^*_{t+1} from the four gates, dc_t gets dc_{t+1} ⊙ f_{t+1}."""
    spec = ModelSpec(cell="lstm", steps=4)
    tex = render_latex(spec)
    d = derive(spec)
    dh = next(a for a in d.step_form.backward if a.kind == "adjoint_h")
    dc = next(a for a in d.step_form.backward if a.kind == "adjoint_c")
    # as many t + 1 terms in the document's dh_t row as the derivation has
    row_h = next(
        line
        for line in tex.splitlines()
        if line.startswith(r"\frac{\partial L}{\partial h_{t}} &=")
    )
    row_c = next(
        line
        for line in tex.splitlines()
        if line.startswith(r"\frac{\partial L}{\partial c_{t}} &=")
    )
    assert row_h.count("_{t + 1}") == sum(
        1 for term in dh.expr.args if "t + 1" in str(term) or "t+1" in str(term)
    )
    assert r"\frac{\partial L}{\partial c_{t + 1}} \odot f_{t + 1}" in row_c
    assert len(dc.expr.args) == 2
    for gate in ("i", "f", "o", "g"):
        assert re.search(rf"\\delta_{{t}}\^{{{gate}}} &?= ", tex), gate
        assert rf"\delta_{{t + 1}}^{{{gate}}}" in row_h


def test_the_teaching_sections_are_chosen_by_the_equations(cells: dict[str, str]) -> None:
    """One state updated as f(affine): teaching sections, tagged or not; anything else: general."""
    assert _teaching_shape(derive(ModelSpec(steps=2)))
    for name in ("lstm", "gru"):
        assert not _teaching_shape(derive(ModelSpec(cell=name, steps=2)))
    assert not _teaching_shape(derive(ModelSpec(cell=cells["user"], notation="sup", steps=2)))
    plain = ModelSpec(cell=cells["plain"], steps=3)
    assert _teaching_shape(derive(plain))
    assert type(_writer(derive(plain), None, None)) is _Writer
    assert type(_writer(derive(ModelSpec(cell="gru", steps=2)), None, None)) is _CellWriter
    tex = render_latex(plain)
    assert "The chain rule, parameter by parameter" in tex
    assert r"\frac{\partial L}{\partial W_h} &= \sum_{t=2}^{T} \delta_{t} h_{t - 1}^{\top}" in tex


def _untagged(text: str) -> str:
    """A cell file with its Elman role tags taken out (the [roles] table, role = ...)."""
    text = re.sub(r", role = \"[a-z_]+\"", "", text)
    return re.sub(r"\[roles\]\n(?:#.*\n)*(?:[a-z]+ = \"[a-z_]+\"\n)+", "", text)


@pytest.mark.parametrize(
    "fields",
    [
        {"notation": "xh", "steps": 3},
        {"notation": "layered", "steps": 2, "mode": "many_to_one", "initial_state": "input"},
        {"notation": "uvw", "steps": 4, "bias": False, "hidden": "relu"},
        {"notation": "aa", "steps": 1, "time_reduction": "mean"},
        # a composed document names Elman's δ from the notation (adjoint = "delta"), not a tag
        {"notation": "xh", "steps": 2, "layers": 2},
    ],
    ids=str,
)
def test_an_untagged_elman_cell_file_reads_as_the_tagged_one(
    fields: dict[str, object], tmp_path: Path
) -> None:
    """The teaching document read off the equations equals the one read off the role tags."""
    import symbptt.model

    source = Path(symbptt.model.__file__).parent / "cells" / "elman.toml"
    text = source.read_text(encoding="utf-8")
    untagged = _untagged(text)
    assert "role" not in untagged.replace("roles", "").split("[notations")[0]
    path = tmp_path / "elman_untagged.toml"
    path.write_text(untagged, encoding="utf-8")
    tagged = render_documents(ModelSpec(**fields))  # type: ignore[arg-type]
    plain = render_documents(ModelSpec(cell=str(path), **fields))  # type: ignore[arg-type]

    def body(text: str) -> list[str]:  # the spec's hash and command name the cell file
        return [
            line
            for line in text.splitlines()
            if "hash" not in line and "regenerate" not in line.lower()
        ]

    for ours, theirs in zip(plain, tagged, strict=True):  # LaTeX, Markdown
        assert body(ours) == body(theirs)


@pytest.mark.parametrize(("cell", "notation"), CELLS)
def test_markdown_renders_inline_math_github_style(
    cell: str, notation: str, cells: dict[str, str]
) -> None:
    md = render_markdown(make_spec(cells, cell, notation, 3, None, mode="many_to_one"))
    _check_github_math(md)


def _check_github_math(md: str) -> None:
    """$x$ spans without inner spaces, $$ on its own line after a blank one, MathJax only."""
    spans = _math_spans(md)
    used: set[str] = set()
    for span in spans:
        used |= set(re.findall(r"\\([A-Za-z]+)", span))
        for env in re.findall(r"\\begin\{([^}]*)\}", span):
            assert env == "aligned"
    assert used <= MATHJAX | {"tilde", "phi"}, used - MATHJAX
    outside = "".join(md.split("$$")[::2])
    for forbidden in ("\\section", "\\texttt", "\\label", "\\ref", "\\begin", "\\[", "\\]"):
        assert forbidden not in outside, forbidden
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("$$"):
            assert line == "$$"
        if line == "$$" and lines[i + 1].startswith("\\begin"):
            assert lines[i - 1].strip() == ""


def test_same_spec_same_bytes(cells: dict[str, str]) -> None:
    spec = make_spec(cells, "user", "sup", 3, None)
    assert render_latex(spec) == render_latex(spec)


@pytest.mark.slow
def test_verified_section_states_what_was_checked() -> None:
    spec = ModelSpec(cell="gru", steps=1, n_hidden=2, batch=1)
    tex = symbptt.render_latex(spec)  # the checks run, then render
    verified = tex[tex.index(r"\section{Verified}") :]
    assert "passed" in verified.split(r"\paragraph{Numerical")[0]
    assert "T = 1" in verified
    for name in expected_names(spec)["gradients"]:
        assert name.removesuffix(" &=") in verified


# -- TeX ------------------------------------------------------------------------------
@pytest.mark.tex
@pytest.mark.parametrize(("cell", "notation"), CELLS)
def test_cell_documents_compile_without_overfull_boxes(
    cell: str, notation: str, cells: dict[str, str]
) -> None:
    require_pdflatex()
    pdf, log = compile_pdf(render_latex(make_spec(cells, cell, notation, 3, None)))
    assert pdf.startswith(b"%PDF")
    assert overfull_boxes(log) == []


@pytest.mark.tex
@pytest.mark.slow
@pytest.mark.parametrize("case", GRID[1::2], ids=ids)
def test_cell_documents_compile_at_concrete_sizes(
    case: tuple[object, ...], cells: dict[str, str]
) -> None:
    require_pdflatex()
    cell, notation, steps, sizes, mode, initial = case
    spec = make_spec(cells, cell, notation, steps, sizes, mode=mode, initial_state=initial)  # type: ignore[arg-type]
    _, log = compile_pdf(render_latex(spec))
    assert overfull_boxes(log) == []


ELMAN_SPECS = [
    ModelSpec(steps=2),
    ModelSpec(steps=1),
    ModelSpec(steps=3, mode="many_to_one", notation="layered"),
    ModelSpec(steps=2, mode="many_to_one", initial_state="input", notation="aa"),
]


def _check_sums(spec: ModelSpec) -> None:
    """Each gradient's general form is the derivation's gradient at this T and at T + 1.

    The forms are read at ``spec.steps``; a form that holds only for that T (a
    sum written as its last term) fails at T + 1.
    """
    d = derive(spec)
    writer = _writer(d, None, None)
    forms = writer.gradient_forms()
    assert set(forms) == set(d.gradients)
    for later in (d, derive(replace(spec, steps=spec.steps + 1))):
        last = later.graph.steps[-1]
        for name, (kind, lo, assignment) in forms.items():
            gradient = later.gradients[name]
            if kind == "sum":
                terms = [
                    instantiate((assignment,), d.step_form, k, later.graph)[0].expr
                    for k in range(lo, last + 1)
                ]
                total = mexpr.add(*terms) if terms else sp.ZeroMatrix(*gradient.shape)
                assert total == gradient, (name, later.spec.steps)
            elif kind == "last":
                expr = instantiate((assignment,), d.step_form, last, later.graph)[0].expr
                assert expr == gradient, (name, later.spec.steps)
            elif kind == "zero":
                assert isinstance(gradient, sp.ZeroMatrix)
            else:
                assert kind == "concrete" and name not in d.graph.params


@pytest.mark.parametrize("case", GRID, ids=ids)
def test_general_sums_instantiate_to_the_gradients(
    case: tuple[object, ...], cells: dict[str, str]
) -> None:
    cell, notation, steps, sizes, mode, initial = case
    _check_sums(make_spec(cells, cell, notation, steps, sizes, mode=mode, initial_state=initial))  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ELMAN_SPECS, ids=str)
def test_general_sums_instantiate_to_the_gradients_for_elman(spec: ModelSpec) -> None:
    """T = 2: W_hh contributes at the last step only, and is still a sum over t >= 2."""
    _check_sums(spec)


@pytest.mark.tex
@pytest.mark.slow
@pytest.mark.parametrize(("cell", "notation"), CELLS)
def test_long_sequences_are_elided_and_compile(
    cell: str, notation: str, cells: dict[str, str]
) -> None:
    require_pdflatex()
    spec = make_spec(
        cells, cell, notation, 10, None, bias=False, time_reduction="mean", initial_state="input"
    )
    tex = render_latex(spec)
    assert r"\vdots" in tex and r"\dots" in tex
    _, log = compile_pdf(tex)
    assert overfull_boxes(log) == []


@pytest.mark.parametrize(("cell", "notation"), CELLS)
def test_repr_latex_summary_for_every_cell(cell: str, notation: str, cells: dict[str, str]) -> None:
    spec = make_spec(cells, cell, notation, 2, None)
    summary = derive(spec)._repr_latex_()
    assert summary.startswith("$$\\begin{aligned}") and summary.endswith("\\end{aligned}$$")
    names = expected_names(spec)
    for row in names["states"] + names["gradients"]:
        assert row in summary


# -- the figure of the unrolled graph, read from the cell's equations --------------------
@pytest.mark.parametrize(("cell", "notation"), CELLS)
def test_the_figure_has_every_weight_and_every_state(
    cell: str, notation: str, cells: dict[str, str]
) -> None:
    """Every weight of the cell labels an arrow, every state is a row with its carry and its
    error flowing back, and the mermaid chart draws the same."""
    from symbptt.documents import figure

    spec = make_spec(cells, cell, notation, 3, None)
    writer = _writer(derive(spec), None, None)
    rows, found = figure.edges(writer)
    cell_model = spec.model
    states = [cell_model.role_of(s.key) for s in cell_model.states]
    assert set(states) <= set(rows)
    for role in states:  # each state's own carry from the step before
        assert any(e.source == e.target == role and e.offset == -1 for e in found), role
    symbols = writer.graph.symbols
    weights = {
        writer.tex(symbol)
        for name, symbol in writer.graph.params.items()
        if symbols.param_shape(symbols.key_of_param(name))[1] != 1  # a bias is a column
    }
    labels = {label for e in found for label in e.labels}
    assert weights == labels, weights ^ labels
    picture = figure.picture(writer)
    drawn = "\n".join(picture["commands"])
    for role in states:  # the error flowing back along it, named
        assert figure._flow(writer, role, writer.graph.steps[1]) in drawn, role
    for cross in picture["across"]:
        assert cross["labels"] and r"\to" in cross["edge"]
    chart = "\n".join(figure.mermaid(writer))
    for name, symbol in writer.graph.params.items():
        if writer.tex(symbol) in weights:
            assert name in chart, name


def test_a_notations_document_habits_are_data(tmp_path: Path) -> None:
    """The seeds' habits (002's operator partials, 003's Δw updates, 000's parameter
    order) are keys of a notation, so a user's cell file may take them too."""
    habits = (
        'partials = "operator"\nupdates = "delta"\n'
        'parameter_order = ["b", "W_h", "W_x", "W_out", "b_out"]\n'
    )
    text = UNTAGGED_ELMAN.replace("[notations.xh.names]", habits + "\n[notations.xh.names]")
    tex = render_latex(ModelSpec(cell=_cell_file(tmp_path, text, "habits"), steps=3))
    plain = render_latex(ModelSpec(cell=_cell_file(tmp_path, UNTAGGED_ELMAN), steps=3))
    chain = tex[tex.index("The chain rule, parameter by parameter") :]
    headings = re.findall(r"\\subsection\{\\texorpdfstring\{\$([^$]*)\$", chain)
    assert headings[:5] == ["b", "W_h", "W_x", "V", "c"]
    assert r"\frac{\partial}{\partial b} L_{1}" in tex
    assert r"\Delta W_x &= - \eta \frac{\partial L}{\partial W_x}" in tex
    assert r"W_x &= W_x + \Delta W_x" in tex
    # without the habits: fractions, W ← W − η ∂L/∂W, the output layer first
    default = plain[plain.index("The chain rule, parameter by parameter") :]
    assert re.findall(r"\\subsection\{\\texorpdfstring\{\$([^$]*)\$", default)[:5] == [
        "V",
        "c",
        "W_x",
        "W_h",
        "b",
    ]
    assert r"\frac{\partial L_{1}}{\partial b}" in plain
    assert r"\Delta W_x" not in plain


def _cell_file(folder: Path, text: str, name: str = "plain") -> str:
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_constant_wider_than_a_row_is_laid_out_on_its_row(tmp_path: Path) -> None:
    """A factor no naming can narrow (a 61-digit constant): the layout named the named
    part again and again (a MatrixSymbol is no SymPy atom) until RecursionError."""
    wide = "1" + "0" * 60
    text = UNTAGGED_ELMAN.replace('"h[t] = f(z[t])"', f'"h[t] = {wide} * f(z[t])"')
    assert wide in text
    tex, md = render_documents(ModelSpec(steps=2, cell=_cell_file(tmp_path, text)))
    assert wide in tex
    assert wide in md
