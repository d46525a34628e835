"""Documents of composed models (stacked, bidirectional, masked; docs/composition.md).

The formulas come from the derivation (a changed assignment changes the
document), every gradient and every unit's adjoint is in it, every parameter
has its own name, the carries of each unit are the ones its adjoints read, the
documents compile, and the verifying stage proves composed models at small sizes.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import sympy as sp

from symbptt import ModelSpec, SpecError, derive
from symbptt.documents import compile_pdf, overfull_boxes, render_documents, render_latex
from symbptt.documents.cells import _writer
from symbptt.documents.composed import _ComposedWriter
from symbptt.oracle import verification
from tests.test_documents import MATHJAX, _math_spans, require_pdflatex

#: Composed specs over the cells, notations, modes and reductions.
SPECS = [
    {"steps": 3, "layers": 2, "direction": "bidirectional", "masked": True},
    {"steps": 3, "layers": 2},
    {"steps": 2, "direction": "bidirectional", "cell": "lstm", "notation": "layered"},
    {"steps": 3, "masked": True, "cell": "gru", "time_reduction": "mean"},
    {"steps": 2, "layers": 2, "direction": "bidirectional", "cell": "lstm", "masked": True},
    {"steps": 3, "direction": "bidirectional", "mode": "many_to_one", "masked": True},
    {"steps": 3, "masked": True, "batch_reduction": "tokens", "notation": "uvw"},
    {"steps": 2, "layers": 2, "notation": "layered", "initial_state": "input", "bias": False},
    {"steps": 12, "layers": 2, "direction": "bidirectional", "n_hidden": 3, "batch": 2},
]
IDS = ["-".join(f"{k}={v}" for k, v in spec.items() if k != "steps") for spec in SPECS]


def _spec(fields: dict[str, object]) -> ModelSpec:
    return ModelSpec(**fields)  # type: ignore[arg-type]


def _writer_of(fields: dict[str, object]) -> _ComposedWriter:
    writer = _writer(derive(_spec(fields)), None, None)
    assert isinstance(writer, _ComposedWriter)
    return writer


@pytest.mark.parametrize("fields", SPECS, ids=IDS)
def test_every_gradient_and_every_unit_is_in_the_document(fields: dict[str, object]) -> None:
    writer = _writer_of(fields)
    d = writer.d
    tex, md = render_documents(d)
    gradients = [a for a in d.assignments if a.kind == "gradient"]
    assert {a.param for a in gradients} == set(d.gradients)
    for text in (tex, md):
        for assignment in gradients:
            assert writer.tex(assignment.target) + " &=" in text, assignment.param
        for unit in d.spec.program.units:
            assert f"Layer {unit.layer}, {unit.direction}" in text
        # every adjoint the backward pass computes at the step shown is printed
        middle = writer._middle()
        for assignment in d.adjoints:
            if assignment.step == middle:
                assert writer.tex(assignment.target) in text
    _check_markdown_math(md)


def _check_markdown_math(md: str) -> None:
    used: set[str] = set()
    for span in _math_spans(md):
        used |= set(re.findall(r"\\([A-Za-z]+)", span))
    arrows = {"overrightarrow", "overleftarrow", "rightarrow", "cdot", "omega", "bar", "overline"}
    assert used <= MATHJAX | arrows, used - MATHJAX


#: A cell whose own candidate is a tilde (GRU's h~, LSTM layered's C~) with a mask's candidate.
NAMED = [*SPECS[:4], {"steps": 2, "masked": True, "cell": "lstm", "notation": "layered"}]


@pytest.mark.parametrize("fields", NAMED, ids=[*IDS[:4], "lstm-layered-masked"])
def test_every_symbol_has_its_own_name(fields: dict[str, object]) -> None:
    writer = _writer_of(fields)
    d = writer.d
    params = [writer.tex(symbol) for symbol in d.graph.params.values()]
    assert len(set(params)) == len(params), params
    adjoints = [writer.tex(a.target) for a in d.adjoints]
    assert len(set(adjoints)) == len(adjoints)
    computed = [writer.tex(a.target) for a in d.graph.assignments]
    assert len(set(computed)) == len(computed), computed
    for assignment in d.graph.assignments + d.assignments:  # named, no ASCII fallback
        assert assignment.target in writer.names, assignment.target


def test_the_formulas_are_printed_from_the_derivation() -> None:
    """Change one gradient's and one adjoint's expression: the document follows."""
    d = derive(_spec(SPECS[0]))
    writer = _writer(d, None, None)
    middle = writer._middle()  # type: ignore[attr-defined]
    changed = []
    swapped = {"adjoint": False, "contribution": False}
    for assignment in d.assignments:
        kind = "adjoint" if assignment.kind.startswith("adjoint_") else assignment.kind
        if kind in swapped and not swapped[kind] and assignment.step == middle:
            swapped[kind] = True
            new = sp.MatrixSymbol("Zmarker", *assignment.target.shape)
            assignment = dataclasses.replace(assignment, expr=new)
        changed.append(assignment)
    assert all(swapped.values())
    tex = render_latex(dataclasses.replace(d, assignments=tuple(changed)))
    assert tex.count("Zmarker") >= 2 and "Zmarker" not in render_latex(d)


@pytest.mark.parametrize("fields", SPECS[:2] + SPECS[4:6], ids=IDS[:2] + IDS[4:6])
def test_carries_are_what_each_units_adjoints_read(fields: dict[str, object]) -> None:
    """Each unit's carries name their source: its next step, the layer above, the output layer."""
    writer = _writer_of(fields)
    spec = writer.spec
    program = spec.program
    backward = writer.composed_backward()
    for unit in backward["units"]:
        index = unit["index"]
        me = program.units[index]
        sources = {carry["source"] for carry in unit["carries"]}
        steps = writer.graph.steps
        middle = writer._middle()
        has_next = steps[0] <= middle + me.step <= steps[-1]
        if has_next:  # its own next step: t + 1 forward, t - 1 backward
            assert f"its own next step, step {middle + me.step}" in sources, sources
        readers = [u for u in program.units if index in u.reads]
        for reader in readers:
            assert f"layer {reader.layer} ({reader.direction}) at the same step" in sources
        if index in program.head and spec.mode == "many_to_many":
            assert "the output layer at the same step" in sources
        if not readers and index not in program.head:
            raise AssertionError(f"unit {index} is read by nothing")


def test_split_weights_are_pytorch_column_blocks_in_the_text() -> None:
    tex = render_latex(_spec(SPECS[0]))
    assert "split column-wise" in tex and "bidirectional=True" in tex
    writer = _writer_of(SPECS[0])
    head = writer.structure()["head"]
    assert len(head["weights"]) == 2 and head["weights"][0] != head["weights"][1]


def test_many_to_one_reads_the_backward_unit_at_the_first_step() -> None:
    writer = _writer_of(SPECS[5])
    head = writer.structure()["head"]
    first = writer.step_tex(writer.first)
    last = writer.step_tex(writer.last)
    forward, backward = head["reads"]
    assert forward.endswith(f"_{{{last}}}") and backward.endswith(f"_{{{first}}}")


def test_tokens_alone_is_refused_with_the_equivalent_spec() -> None:
    with pytest.raises(
        SpecError, match=r"^the documents: batch_reduction='tokens'.*time_reduction='mean'"
    ):
        render_latex(_spec({"steps": 2, "batch_reduction": "tokens"}))


def test_same_spec_same_bytes() -> None:
    assert render_latex(_spec(SPECS[0])) == render_latex(_spec(SPECS[0]))


# -- TeX ------------------------------------------------------------------------------
@pytest.mark.tex
@pytest.mark.parametrize("fields", SPECS[:1] + SPECS[4:5], ids=IDS[:1] + IDS[4:5])
def test_composed_documents_compile_without_overfull_boxes(fields: dict[str, object]) -> None:
    require_pdflatex()
    pdf, log = compile_pdf(render_latex(_spec(fields)))
    assert pdf.startswith(b"%PDF")
    assert overfull_boxes(log) == []
    assert "undefined" not in log.lower()


@pytest.mark.tex
@pytest.mark.slow
@pytest.mark.parametrize("fields", SPECS[1:4] + SPECS[5:], ids=IDS[1:4] + IDS[5:])
def test_every_composed_document_compiles(fields: dict[str, object]) -> None:
    require_pdflatex()
    _, log = compile_pdf(render_latex(_spec(fields)))
    assert overfull_boxes(log) == []
    assert "undefined" not in log.lower()


@pytest.mark.tex
def test_your_formulas_in_a_composed_document_compile() -> None:
    """``symbptt derive --check``'s verdicts (one EQUAL, one NOT EQUAL with its correct
    formula and recursion) in a composed document: printed, and the PDF compiles."""
    require_pdflatex()
    spec = _spec({"steps": 2, "direction": "bidirectional", "masked": True})
    user = verification.formula_checks(
        spec,
        [("W_hh_b", "sum_t(delta_b[t] @ h_b[t+1].T)"), ("W_hh_f", "sum_t(delta_f[t] @ h_f[t].T)")],
    )
    assert [v.verdict for v in user] == ["EQUAL", "NOT EQUAL"]
    checks = dataclasses.replace(verification.run_checks(spec), user=user, user_file="my_f.toml")
    tex, md = render_documents(spec, checks=checks)
    from symbptt.documents.latex_printer import escape_tex

    assert r"\paragraph{Your formulas.}" in tex and escape_tex(user[1].correct) in tex
    assert "**Your formulas.**" in md and f"Correct: `{user[1].correct}`" in md
    pdf, log = compile_pdf(tex)
    assert pdf.startswith(b"%PDF") and "undefined" not in log.lower()
    assert overfull_boxes(log) == []


# -- the verifying stage ----------------------------------------------------------------
@pytest.mark.slow
def test_verifying_stage_proves_a_composed_model_and_the_document_says_so() -> None:
    spec = _spec({**SPECS[0], "n_hidden": 2, "batch": 2})
    checks = verification.run_checks(spec)
    assert checks.proof is not None and checks.proof.ok, checks.proof_error
    small = checks.proof_spec
    assert (small.layers, small.direction, small.masked) == (2, "bidirectional", True)
    assert small.steps == 2 and checks.proof.entries == sum(
        int(np.prod([int(n) for n in derive(small).graph.params[name].shape]))
        for name in derive(small).gradients
    )
    assert checks.numerical is not None and checks.numerical.ok, checks.numerical_error
    tex = render_latex(spec, checks=checks)
    verified = tex[tex.index(r"\section{Verified}") :]
    assert "passed" in verified and f"{checks.proof.entries} entries" in verified
    assert "T = 3" in verified  # the document's own T, which the proof did not run at
    assert "central finite differences" in verified and "Could not be run" not in verified


@pytest.mark.parametrize("fields", SPECS, ids=IDS)
def test_the_summary_page_holds_every_recursion_and_gradient(fields: dict[str, object]) -> None:
    """The summary re-prints the derivation's rows: every unit's recursion at the middle step,
    every parameter's contribution there and every gradient's sum, after a page break."""
    spec = _spec(fields)
    context = _writer(derive(spec), None, None).context()
    tex, md = render_documents(spec)
    summary_tex = tex.split(r"\section{Summary}\label{sec:summary}")[1].split(
        r"\section{Verified}"
    )[0]
    summary_md = md.split("## 5. Summary")[1].split("## 6. Verified")[0]
    assert tex.split(r"\section{Summary}")[0].rstrip().endswith(r"\clearpage")
    rows = [*context["backward"]["head"], *context["gradients"]["at_middle"]]
    rows += [row for unit in context["backward"]["units"] for row in unit["rows"]]
    rows += context["gradients"]["sums"]
    for row in rows:
        assert row in summary_tex and row in summary_md
    for unit in context["backward"]["units"]:
        assert f"then layer {unit['layer']}, {unit['direction']}, computes" in summary_md


@pytest.mark.parametrize("fields", SPECS, ids=IDS)
def test_the_generic_step_is_printed_from_the_step_form(fields: dict[str, object]) -> None:
    """'At any step t' prints every adjoint of the generic-step form (``d.step_form``), each
    unit's own next step at t + 1 (forward) or t - 1 (backward); the Jupyter view too."""
    spec = _spec(fields)
    d = derive(spec)
    writer = _writer(d, None, None)
    assert isinstance(writer, _ComposedWriter)
    generic = writer.generic_recursion()
    form = d.step_form
    tex, md = render_documents(d)
    section_tex = tex.split(r"\subsection*{At any step $t$}")[1].split(r"\subsection*")[0]
    section_md = md.split("### At any step $t$")[1].split("###")[0]
    bodies = [form.backward] + ([form.last_backward] if form.last_backward else [])
    for body in bodies:
        for assignment in body:
            if assignment.kind == "contribution" or assignment.expr.is_ZeroMatrix:
                continue
            lhs = writer.tex(assignment.target) + " &="
            assert lhs in section_tex and lhs in section_md, assignment.target
    summary = d._repr_latex_()
    assert summary.startswith("$$\\begin{aligned}") and summary.endswith("\\end{aligned}$$")
    for unit in generic["units"]:
        for row in unit["rows"]:
            assert row in summary
    for assignment in d.assignments:
        if assignment.kind == "gradient":
            assert writer.tex(assignment.target) + " &=" in summary
    meta = form.symbols.meta
    for index, unit in enumerate(spec.program.units):  # its own next step, in its direction
        carried = {
            symbol
            for a in form.part(form.backward, index)
            for symbol in a.expr.free_symbols
            if meta.get(symbol, ("", None))[0].startswith("adjoint_")
            and meta[symbol][1] == form.t + unit.step
            and form.symbols.owner[symbol].unit == unit
        }
        assert carried, unit
        assert all(writer.tex(symbol) in section_tex for symbol in carried)
    if spec.mode == "many_to_one":
        assert r"\text{(final step)}" in summary


def test_a_derivation_of_tokens_alone_shows_no_summary() -> None:
    assert derive(_spec({"steps": 2, "batch_reduction": "tokens"}))._repr_latex_() is None
