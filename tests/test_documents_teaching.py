"""The teaching documents' edge cases (issue 12): concrete sizes, T <= 2, zero gradients, glyphs."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess

import pytest

from symbptt import ModelSpec, derive
from symbptt.documents import (
    _writer,
    compile_pdf,
    escape_markdown,
    figure,
    overfull_boxes,
    render_documents,
    render_latex,
)
from symbptt.documents.latex_printer import delta_name, delta_role, escape_tex
from symbptt.oracle.verification import Checks, _numerical_sizes, proof_spec, worked_example
from symbptt.oracle.verify import ScalarProof

from .test_documents import require_pdflatex

NOTATIONS = ("xh", "uvw", "layered", "aa")
#: Concrete sizes with n_hidden != batch (and one of them 1), besides the symbolic ones.
SIZES = (
    {"n_in": 3, "n_hidden": 5, "n_out": 2, "batch": 2},
    {"n_in": 4, "n_hidden": 2, "n_out": 3, "batch": 6},
    {"n_in": 2, "n_hidden": 3, "n_out": 4, "batch": 1},
    {},
)


def _jacobian(tex: str) -> str:
    found = re.search(r"the Jacobian\n\\\[\n(.*)\n\\\]", tex)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize(("notation", "steps"), list(itertools.product(NOTATIONS, (1, 2, 5))))
def test_documents_render_over_a_grid_of_concrete_sizes(notation: str, steps: int) -> None:
    """Concrete sizes give the document the symbolic sizes give, with the sizes stated."""
    symbolic = _jacobian(render_latex(ModelSpec(steps=steps, notation=notation)))
    for sizes in SIZES:
        tex, md = render_documents(ModelSpec(steps=steps, notation=notation, **sizes))
        assert _jacobian(tex) == symbolic
        for key, value in sizes.items():
            symbol = {"n_in": "n_{0}", "n_hidden": "n_{1}", "n_out": "n_{2}", "batch": "m"}[key]
            assert f"${symbol} = {value}$" in tex
        assert md.count("$$") % 2 == 0


# -- 1. the ReLU indicator ------------------------------------------------------------
RELU = ModelSpec(steps=2, hidden="relu", notation="uvw")


def test_relu_indicator_is_a_bracket_the_text_defines() -> None:
    tex, md = render_documents(RELU)
    for text in (tex, md):
        assert r"\mathbb" not in text
        assert "[z > 0]" in text and "(Iverson's) is $1$ where the condition holds" in text
        assert r"\operatorname{diag}([h^{(j)} > 0]) W" in text


@pytest.mark.tex
@pytest.mark.slow
def test_relu_indicator_typesets_as_a_bracket() -> None:
    """The PDF's text holds the bracket, never the glyph amssymb puts for a blackboard 1 (⊮)."""
    require_pdflatex()
    if shutil.which("pdftotext") is None:
        pytest.fail("pdftotext (poppler-utils, installed beside pdftoppm) is missing")
    pdf, log = compile_pdf(render_latex(RELU))
    text = subprocess.run(
        ["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True
    ).stdout.decode("utf-8")
    assert "\u22ae" not in text
    assert "[z > 0]" in text
    assert overfull_boxes(log) == []


# -- 2. the general chain-rule formula holds for every t, whatever T ---------------------
CHAIN_SPECS = [
    ModelSpec(steps=steps, notation=notation, initial_state=initial, mode=mode)
    for notation, steps, initial, mode in itertools.product(
        NOTATIONS, (1, 2, 3), ("zero", "input"), ("many_to_many", "many_to_one")
    )
]


def _direct_steps(spec: ModelSpec, role: str) -> tuple[list[int], list[int], object]:
    """The steps whose pre-activation reads the parameter, and the loss steps (the graph)."""
    graph = derive(spec).graph
    symbol = graph.initial if role == "initial_state" else graph.symbols.param(role)
    direct = [
        a.step
        for a in graph.assignments
        if a.kind == "pre_activation" and symbol in a.expr.free_symbols
    ]
    losses = [a.step for a in graph.assignments if a.kind == "loss"]
    return direct, losses, symbol


@pytest.mark.parametrize(
    "spec", CHAIN_SPECS, ids=lambda s: f"{s.notation}-T{s.steps}-{s.initial_state}-{s.mode}"
)
def test_general_chain_formula_matches_the_graph_at_every_step(spec: ModelSpec) -> None:
    """Instantiated at each loss step t, ∂L_t/∂P sums over exactly the k the graph reads P at."""
    writer = _writer(derive(spec), None, None)
    for param in writer.chain()["params"]:
        if not param["recurrent"]:
            continue
        direct, losses, _ = _direct_steps(spec, param["role"])
        general = param["general"]
        summed = re.search(r"\\sum_\{k=(\d+)\}", general)
        if summed:
            low = int(summed.group(1))
        else:  # one k: the product starts at k + 1
            single = re.search(r"\\prod_\{j=(\d+)\}", general)
            assert single is not None, general
            low = int(single.group(1)) - 1
        for t in losses:
            printed = list(range(low, t + 1)) if summed else [low] * (low <= t)
            assert printed == [k for k in direct if k <= t], (param["ascii"], t, general)


# -- 3. a zero gradient is said to be zero, and why --------------------------------------
@pytest.mark.parametrize(
    "spec", CHAIN_SPECS, ids=lambda s: f"{s.notation}-T{s.steps}-{s.initial_state}-{s.mode}"
)
def test_zero_gradients_have_their_own_true_sentence(spec: ModelSpec) -> None:
    """The sections that say a gradient is zero are those of parameters the forward pass never
    reads; "only through the output" is said of parameters no pre-activation reads."""
    writer = _writer(derive(spec), None, None)
    graph = derive(spec).graph
    tex = render_latex(spec)
    for param in writer.chain()["params"]:
        role, name = param["role"], param["name"]
        symbol = graph.initial if role == "initial_state" else graph.symbols.param(role)
        read = any(symbol in a.expr.free_symbols for a in graph.assignments)
        assert param["zero"] == (not read), param["ascii"]
        section = tex.split(rf"\subsection{{\texorpdfstring{{${name}$}}")[1].split(r"\subsection")[
            0
        ]
        section = section.split(r"\section")[0]
        says_zero = "the gradient is zero" in section and "no path of the graph" in section
        assert says_zero == (not read), (param["ascii"], section)
        through_output = "only through the output" in section
        by_hidden = any(
            symbol in a.expr.free_symbols for a in graph.assignments if a.kind == "pre_activation"
        )
        assert not (through_output and by_hidden), (param["ascii"], section)
        if not read:
            assert "vanishes because the initial state is zero" in section


# -- 4. the settings table says what the loss does ---------------------------------------
@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one"])
def test_time_mean_in_the_table_matches_the_loss(mode: str) -> None:
    spec = ModelSpec(steps=3, mode=mode, time_reduction="mean")
    tex = render_latex(spec)
    (row,) = [line for line in tex.splitlines() if line.startswith("over time &")]
    general = re.search(r"\\\[\n(L = .*)\n\\\]", tex)
    assert general is not None
    # the total loss printed from the graph divides by T exactly when the table says so
    factor = re.match(r"L = \\frac\{1\}\{([^}]*)\}", general.group(1))
    assert factor is not None
    assert ("T" in factor.group(1)) == ("1/T" in row) == (mode == "many_to_many")


# -- 5. "Verified" says at which sizes, and claims nothing more ---------------------------
def _checks(spec: ModelSpec, direction: bool = True) -> Checks:
    """Results as the verifying stage hands them over (the proof's own sizes, no run)."""
    small = proof_spec(spec)
    return Checks(
        small,
        ScalarProof(small, 16, 1e-31, 30, direction=direction),
        None,
        None,
        "not run in this test",
        _numerical_sizes(spec),
        proof_own=small.steps == spec.steps,
    )


@pytest.mark.parametrize(
    ("spec", "larger", "symbolic"),
    [
        (ModelSpec(steps=4), [], ["n_{0}", "n_{1}", "n_{2}", "m"]),
        (ModelSpec(steps=6), ["$T = 6$"], ["n_{0}", "n_{1}", "n_{2}", "m"]),
        (ModelSpec(steps=2, n_in=2, n_hidden=2, n_out=2, batch=2), [], []),
        (
            ModelSpec(steps=10, n_in=6, n_hidden=5, n_out=2, batch=1),
            ["n_{0} = 6", "n_{1} = 5", "T = 10"],
            [],
        ),
    ],
)
@pytest.mark.parametrize("direction", [True, False], ids=["direction", "entries"])
def test_verified_says_which_of_the_documents_sizes_the_proof_ran_at(
    spec: ModelSpec, larger: list[str], symbolic: list[str], direction: bool
) -> None:
    checks = _checks(spec, direction)
    for text in render_documents(spec, checks=checks):
        section = text.split("Scalar differentiation proof")[1].split("Numerical check")[0]
        if direction:
            assert "along one random direction" in section
            own = "from this document's own derivation" in " ".join(section.split())
            assert own is (checks.proof_spec.steps == spec.steps), section
        else:
            assert "random direction" not in section
        sizes = section.split("every entry of")[0]
        for name in ("n_in", "n_hidden", "n_out", "batch", "steps"):
            value = getattr(checks.proof_spec, name)
            assert f"= {value}$" in sizes
        if larger:
            claim = section.split("This document is for")[1].split(":")[0]
            for size in larger:
                assert size.strip("$") in claim
            assert "the proof ran at the smaller sizes above only" in section
        else:
            assert "This document is for" not in section
        if symbolic:
            assert "symbolic; the proof ran at the concrete sizes above" in section
            for size in symbolic:
                assert size in section.split("This document keeps")[1].split("symbolic")[0]
        else:
            assert "This document keeps" not in section


# -- 6. the aa document typesets like a person's -----------------------------------------
def test_aa_names_typeset_as_words_and_calls() -> None:
    tex, md = render_documents(ModelSpec(steps=3, notation="aa"))
    for text in (tex, md):
        # a(t), L(1): \left( after a name spaces it off ("a (t)")
        assert not re.search(r"[A-Za-z}]\\left\((t|\d)", text)
        assert "a(t)" in text and "L(1)" in text
        # net is a word, not the product n e t
        assert re.findall(r"(?<!\\mathrm\{)net_", text) == []
        assert r"\mathrm{net}_a(t)" in text and r"\mathrm{net}_y(t)" in text
    assert r"calls the prediction \texorpdfstring{$y(t)$}" in tex
    assert r"calls the target \texorpdfstring{$\hat{y}(t)$}" in tex
    assert "calls the prediction $y(t)$)" in md


# -- 7. page breaks, bold ones, margins, layered indices ---------------------------------
@pytest.mark.parametrize(
    "spec",
    [ModelSpec(steps=4, n_in=4, n_hidden=4, n_out=4, batch=1), ModelSpec(steps=3, cell="lstm")],
    ids=["xh", "lstm"],
)
def test_a_page_breaks_only_between_equations(spec: ModelSpec) -> None:
    """A row that continues the equation above is joined with \\\\*, which forbids a break."""
    tex = render_latex(spec)
    assert re.findall(r"\\\\\n\s*&", tex) == []  # a breakable \\ before a continuation row
    assert r"&= W_{xh} x_{1} + b_h" in tex or spec.cell == "lstm"
    # one step of the forward pass stays together; steps are apart
    forward = tex.split(r"\section{Forward pass}")[1].split(r"\section")[0]
    assert forward.count(r"\\[4pt]") == spec.steps - 1
    assert re.findall(r"\\\\\n", forward) == []


def test_bold_one_is_said_to_take_the_shape_of_its_place() -> None:
    tex, md = render_documents(ModelSpec(steps=3))
    for text in (tex, md):
        assert r"A bold $\mathbf{1}$ is a vector or matrix of ones and $\mathbf{0}$" in text


def test_layered_steps_from_ten_on_are_set_apart_from_the_layer() -> None:
    """H_{11} is layer 1 at step 1 or step 11: past step 9 every index has its comma."""
    long = render_latex(ModelSpec(steps=12, notation="layered"))
    indices = re.findall(r"(?:H|Z|\\delta)_\{([^}]*)\}", long)  # the layered names
    assert indices and all("," in i or not i[:1].isdigit() or len(i) == 1 for i in indices)
    assert "H_{1,11}" in long and "H_{1,1}" in long and "H_{11}" not in long
    short = render_latex(ModelSpec(steps=3, notation="layered"))
    assert "H_{12}" in short and "H_{1,t - 1}" in short  # the seed's own way below ten


#: The issue's spread of specs: every document compiles with no overfull box over 1 pt.
SPREAD = {
    **{f"{n}_T{t}": ModelSpec(steps=t, notation=n) for n in NOTATIONS for t in (1, 2, 6, 10, 25)},
    "layered_sigmoid_identity_se_T6": ModelSpec(
        steps=6, notation="layered", hidden="sigmoid", output="identity", loss="squared_error"
    ),
    "relu": ModelSpec(steps=3, notation="uvw", hidden="relu"),
    "many_to_one_mean": ModelSpec(
        steps=6, notation="aa", mode="many_to_one", time_reduction="mean"
    ),
    "no_bias": ModelSpec(steps=6, notation="layered", bias=False),
    "initial_input": ModelSpec(steps=6, initial_state="input"),
    "concrete": ModelSpec(steps=5, notation="layered", n_in=3, n_hidden=5, n_out=2, batch=2),
    "lstm_T6": ModelSpec(steps=6, cell="lstm"),
    "gru_layered_T6": ModelSpec(steps=6, cell="gru", notation="layered"),
}


@pytest.mark.tex
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPREAD))
def test_spread_of_documents_fits_the_page(name: str) -> None:
    require_pdflatex()
    _, log = compile_pdf(render_latex(SPREAD[name]))
    assert overfull_boxes(log) == []
    assert "undefined" not in log.lower().replace("undefined control", "")


# -- 8. the seeds' habits, and small faults -----------------------------------------------
@pytest.mark.parametrize(
    ("notation", "order"),
    [
        ("uvw", ["V", "b_y", "W", "U", "b_h"]),  # 000 goes V, W, U
        ("aa", ["w_{ya}", "b_y", "w_{aa}", "b_a", "w_{ax}"]),  # 003's order
        ("xh", ["W_{hy}", "b_y", "W_{xh}", "W_{hh}", "b_h"]),
    ],
)
def test_chain_sections_in_the_seeds_order(notation: str, order: list[str]) -> None:
    md = render_documents(ModelSpec(steps=3, notation=notation))[1]
    assert re.findall(r"### 4\.\d \$([^$]*)\$", md) == order


def test_aa_updates_through_a_step_as_003_does() -> None:
    tex, md = render_documents(ModelSpec(steps=3, notation="aa"))
    for text in (tex, md):
        assert r"\Delta w_{aa} &= - \eta \frac{\partial L}{\partial w_{aa}}" in text
        assert r"w_{aa} &= w_{aa} + \Delta w_{aa}" in text
    xh = render_latex(ModelSpec(steps=3))
    assert r"\Delta" not in xh and r"W_{hh} &\leftarrow W_{hh} - \eta" in xh


def test_small_faults() -> None:
    tex, md = render_documents(ModelSpec(steps=1, initial_state="input"))
    for text in (tex, md):
        assert "the the" not in text
        assert "$T = 1$ steps" not in text and "$T = 1$ step," in text
        assert "the way the seed writes it" not in text


@pytest.mark.parametrize("notation", NOTATIONS)
def test_gradient_sums_in_step_order(notation: str) -> None:
    """δ_1 h_0ᵀ + δ_2 h_1ᵀ + ..., not the printer's δ_2 h_1ᵀ + ... + δ_1 h_0ᵀ."""
    spec = ModelSpec(steps=4, initial_state="input", notation=notation)
    d = derive(spec)
    notation_ = d.notation
    deltas = [delta_name(notation_, step, delta_role(notation_)).tex() for step in d.graph.steps]
    tex = render_latex(spec)
    rows = tex.split("and the gradients are")[1].split(r"\end{align*}")[0]
    checked = 0
    for row in rows.splitlines():
        found = [row.find(delta) for delta in deltas]  # each name ends in } or )
        found = [at for at in found if at >= 0]
        if len(found) > 1:
            assert found == sorted(found), row
            checked += 1
    assert checked >= 3


# -- 9. less repetition --------------------------------------------------------------------
@pytest.mark.parametrize("notation", NOTATIONS)
def test_one_chain_expanded_the_others_refer_to_it(notation: str) -> None:
    tex = render_latex(ModelSpec(steps=3, notation=notation))
    chain = tex.split(r"\section{The chain rule")[1].split(r"\section{Local")[0]
    sections = chain.split(r"\subsection{")[1:]
    expanded = [s for s in sections if "Chain rule:" in s]
    referring = [s for s in sections if "are expanded term by term as for" in s]
    assert len(expanded) == 1 and r"\label{sec:chain-first}" in expanded[0]
    assert len(referring) == 2  # the other two parameters read through the recurrence
    for section in referring:
        assert r"\ref{sec:chain-first}" in section and "Chain rule:" not in section


def test_each_step_contribution_is_written_once() -> None:
    tex, md = render_documents(ModelSpec(steps=3))
    for text in (tex, md):
        assert text.count(r"\frac{\partial L}{\partial W_{xh}^{(t)}} &=") == 1
        assert "receives the contribution written in" in text
    assert "[Section 5](#contributions)" in md and '<a id="contributions"></a>' in md


# -- a one-page summary ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [ModelSpec(steps=3), ModelSpec(steps=4, mode="many_to_one"), ModelSpec(steps=3, cell="lstm")],
    ids=["xh", "many_to_one", "lstm"],
)
def test_summary_page_holds_the_recursion_and_every_gradient(spec: ModelSpec) -> None:
    d = derive(spec)
    tex, md = render_documents(d)
    summary = tex.split(r"\section{Summary}")[1].split(r"\section{Verified}")[0]
    assert tex.split(r"\section{Summary}")[0].endswith("\\clearpage\n")
    writer = _writer(d, None, None)
    for assignment in d.step_form.backward:
        if assignment.kind.startswith(("adjoint_", "pre_adjoint_")):
            assert f"{writer.tex(assignment.target)} &= " in summary
    for name in d.roles:
        gradient = (
            rf"\frac{{\partial L}}{{\partial {writer._leaf_name(name, d.roles[name]).tex()}}} &="
        )
        assert gradient in summary, name
    assert ". Summary" in md


# -- Jupyter -----------------------------------------------------------------------------------
def test_plain_repr_stays_short_and_the_spec_shows_a_table() -> None:
    spec = ModelSpec(steps=100)
    derivation = derive(spec)
    assert len(repr(derivation)) < 600 and repr(spec) in repr(derivation)
    assert "5 gradients (W_xh, W_hh, W_hy, b_h, b_y)" in repr(derivation)
    table = spec._repr_markdown_()
    assert spec.hash() in table
    for name, value in spec.as_dict().items():
        assert f"| `{name}` | `{value}` |" in table


# -- a figure of the unrolled graph ----------------------------------------------------------
def _reads(spec: ModelSpec) -> dict[str, set[str]]:
    """ASCII name of each forward quantity -> the names it reads, through anything (the graph)."""
    graph = derive(spec).graph
    direct: dict[str, set[str]] = {}
    for a in graph.assignments:
        expr = a.expr
        atoms = {expr.pred} if a.kind == "loss" else expr.free_symbols
        direct[str(a.target)] = {str(s) for s in atoms if hasattr(s, "shape")}
    closure: dict[str, set[str]] = {}
    for name in direct:
        seen: set[str] = set()
        stack = [name]
        while stack:
            for child in direct.get(stack.pop(), set()):
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        closure[name] = seen
    return closure


@pytest.mark.parametrize(
    "spec",
    [ModelSpec(steps=3), ModelSpec(steps=3, notation="layered"), ModelSpec(steps=2, notation="aa")],
    ids=["xh", "layered", "aa"],
)
def test_figure_edges_are_paths_of_the_graph(spec: ModelSpec) -> None:
    writer = _writer(derive(spec), None, None)
    chart = figure.mermaid(writer)
    labels = dict(re.findall(r'  (\w+)\["([^"]+)"\]', "\n".join(chart)))
    reads = _reads(spec)
    weights: set[str] = set()
    forward = [re.fullmatch(r"  (\w+) -->(?:\|([^|]*)\|)? (\w+)", line) for line in chart]
    for found in filter(None, forward):
        source, label, target = labels[found.group(1)], found.group(2), labels[found.group(3)]
        if source in ("h_0", "H_init", "a_0"):  # the zero initial state: drawn, not in the graph
            continue
        assert source in reads[target], (source, target)
        for weight in (label or "").split(", "):
            if weight:
                assert weight in reads[target]
                weights.add(weight)
    params = derive(spec).graph.params
    assert weights == {n for n in params if not n.startswith(("b", "beta"))}
    backward = [line for line in chart if "-.->" in line]
    assert len(backward) == spec.steps


def test_figure_in_both_documents() -> None:
    tex, md = render_documents(ModelSpec(steps=3))
    assert r"\begin{picture}" in tex and r"\put(" in tex
    assert "```mermaid\nflowchart BT\n" in md


# -- where the δ recursion comes from ----------------------------------------------------------
@pytest.mark.parametrize("notation", NOTATIONS)
def test_the_recursion_is_derived_from_the_states_descendants(notation: str) -> None:
    """The descendants named are the equations that read h_t: its own step's, and step t + 1's."""
    spec = ModelSpec(steps=3, notation=notation)
    d = derive(spec)
    writer = _writer(d, None, None)
    origin = writer.origin()
    form = d.step_form
    hidden = next(a.target for a in form.forward if a.kind == "hidden")
    readers = [a for a in form.forward if hidden in a.expr.free_symbols]
    assert [writer.tex(a.target) for a in readers] == origin["children"][:-1]
    # and the pre-activation of the next step, which reads the previous state
    previous = writer.sym("hidden", form.t - 1)
    assert previous in form.forward[0].expr.free_symbols
    assert origin["children"][-1] == writer.tex(writer.sym("pre_activation", form.t + 1))
    tex = render_latex(spec)
    assert origin["rows"][0] in tex and "numerator layout" in tex


# -- vanishing and exploding gradients ----------------------------------------------------------
@pytest.mark.parametrize("notation", NOTATIONS)
def test_vanishing_bound_uses_the_step_jacobian(notation: str) -> None:
    """The product is of the Jacobian printed in Section 5; the bound names its recurrent weight."""
    spec = ModelSpec(steps=3, notation=notation)
    tex = render_latex(spec)
    jacobian = _jacobian(tex).split(" = ", 1)[1]
    section = tex.split(r"\subsection*{Vanishing and exploding gradients}")[1].split(r"\section")[0]
    assert jacobian in section
    weight = derive(spec).notation.param("recurrent_weight").latex
    assert rf"\left\lVert {weight} \right\rVert\right)^{{t - k}}" in section
    assert r"\texttt{truncated\_bptt}" in section and r"\texttt{clip\_by\_norm}" in section


# -- a worked example with numbers ---------------------------------------------------------------
def test_worked_example_gradients_equal_finite_differences() -> None:
    """The example's gradients (the evaluator's) against central differences of the generated
    module's loss at the same numbers; the document prints them."""
    from dataclasses import replace

    import numpy as np

    from symbptt.codegen.emit import emit_numpy, load_module
    from symbptt.model.presets import HELLO, PRESETS

    spec = PRESETS["xh_hello"]
    d = derive(spec)
    example = worked_example(d)
    assert example is not None and example.text == "hello"
    assert example.module_error < 1e-12
    module = load_module(emit_numpy(replace(spec, n_hidden=3)))
    params = {name: np.array(example.values[s]) for name, s in d.graph.params.items()}
    eye = np.eye(len(HELLO))
    X = np.array([eye[[HELLO.index(c)]] for c in example.text[:-1]])
    Y = np.array([eye[[HELLO.index(c)]] for c in example.text[1:]])
    assert module.loss(params, X, Y) == pytest.approx(example.loss, rel=1e-12)
    eps = 1e-6
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            up, down = value.copy(), value.copy()
            up[index] += eps
            down[index] -= eps
            plus = module.loss({**params, name: up}, X, Y)
            minus = module.loss({**params, name: down}, X, Y)
            numeric[index] = (plus - minus) / (2 * eps)
        assert np.allclose(example.gradients[name], numeric, atol=1e-8), name
    # "o" is never read: its column of dL/dW_xh is zero
    assert np.all(example.gradients["W_xh"][:, HELLO.index("o")] == 0)
    checks = Checks(spec, None, "not run", None, "not run", (), example)
    tex, md = render_documents(d, checks=checks)
    for text in (tex, md):
        assert "A worked example" in text
        assert f"L &= {example.loss:.3f}" in text
        assert "largest relative difference" in text


def test_no_worked_example_where_it_does_not_fit() -> None:
    from symbptt.model.presets import PRESETS

    for name in ("uvw_mean", "layered_many_to_one", "lstm_hello"):
        assert worked_example(derive(PRESETS[name])) is None


def test_measured_gradient_norms_are_plotted_and_listed() -> None:
    from symbptt.documents.layout import _sci
    from symbptt.model.presets import PRESETS
    from symbptt.oracle.verification import NORM_SCALES, NORM_STEPS

    d = derive(PRESETS["xh_hello"])
    example = worked_example(d)
    assert example is not None and example.norms is not None
    assert example.recurrent == "W_hh" and tuple(example.norms) == NORM_SCALES
    for values in example.norms.values():
        assert len(values) == NORM_STEPS and all(v > 0 for v in values)
    # the example's weights: the last step's loss reaches back less and less (vanishing)
    weak = example.norms[NORM_SCALES[0]]
    assert weak[0] < 1e-6 * weak[-1]
    tex, md = render_documents(d, checks=Checks(d.spec, None, "-", None, "-", (), example))
    plot = tex.split(r"\begin{picture}")[-1].split(r"\end{picture}")[0]
    assert plot.count(r"\circle*{3}") == NORM_STEPS and plot.count(r"\circle{3}") == NORM_STEPS
    strong = example.norms[NORM_SCALES[1]]
    assert f"| 0 | ${_sci(weak[0])}$ | ${_sci(strong[0])}$ |" in md
    assert r"\left\lVert \frac{\partial L_{T}}{\partial h_{k}} \right\rVert" in md


# -- the seed's own formulas, checked ----------------------------------------------------
@pytest.mark.parametrize(
    "preset",
    ["xh_hello", "aa_hello", "uvw_mean", "layered_many_to_many", "layered_many_to_one"],
)
def test_the_seeds_formulas_are_printed_with_the_checkers_verdicts(preset: str) -> None:
    """Every formula the seed writes for this preset, with the verdict symbptt.check gives
    at the formula's own spec (000: one example, 002: no 1/m; the document says so), and
    the correct formula beside every one that is not equal or refused."""
    from dataclasses import replace

    from symbptt.check import check
    from symbptt.checker.seed_formulas import for_spec
    from symbptt.model.presets import PRESETS
    from symbptt.oracle.verification import seed_checks

    spec = PRESETS[preset]
    found = seed_checks(spec)
    entries = for_spec(spec)
    assert [f.formula for f in found] == [e.formula for e in entries] and entries
    checks = replace(_checks(spec), seeds=found)
    tex, md = render_documents(spec, checks=checks)
    for text, esc, code in ((tex, escape_tex, escape_tex), (md, escape_markdown, str)):
        verified = text[text.index("Verified") :]
        items = verified.split(r"\item[")[1:] if text is tex else verified.split("\n- ")[1:]
        assert len(items) == len(found)
        for seed, item in zip(found, items, strict=True):
            assert f"{seed.verdict}" in item and code(seed.formula) in item, seed.id
            for mistake in seed.mistakes:
                assert esc(mistake) in item
            assert ("Correct:" in item) is (seed.verdict != "EQUAL"), item
            assert ("Checked on this model with" in item) is bool(seed.setting), item
            if ("batch", 1) in seed.setting:
                assert "$m = 1$" in item
            if ("batch_reduction", "sum") in seed.setting:
                assert "summed over the batch" in item
    # the verdicts are the checker's own (EQUAL where it proves the formula), each at the
    # formula's own spec: the document's, or the seed's variant of it
    for seed, entry in zip(found, entries, strict=True):
        assert seed.setting == (() if entry.spec == spec else entry.fields)
        if seed.verdict != "REFUSED":
            assert (seed.verdict == "EQUAL") is check(entry.spec, entry.wrt, entry.formula).ok


def test_a_document_without_seed_formulas_has_no_such_paragraph() -> None:
    spec = ModelSpec(steps=3)
    tex = render_latex(spec, checks=_checks(spec))
    assert "seed's own formulas" not in tex


@pytest.mark.parametrize("preset", ["xh_hello", "gru_layered"])
def test_the_users_formulas_are_printed_after_the_seeds(preset: str) -> None:
    """``symbptt derive --check FILE``: the user's formulas in every cell's document, each
    with the checker's verdict, in their own paragraph after the seed's."""
    from dataclasses import replace

    from symbptt.model.presets import PRESETS
    from symbptt.oracle.verification import formula_checks

    spec = PRESETS[preset]
    wrt, right = ("W_hh", "sum_t(delta[t] @ h[t-1].T)")
    if preset == "gru_layered":
        wrt, right = ("b_z", "(ones(1, m) @ sum_t(delta_Z[t])).T")
    user = formula_checks(spec, [(wrt, right), (wrt, f"2 * {right}")])
    assert [u.verdict for u in user] == ["EQUAL", "NOT EQUAL"]
    checks = replace(_checks(spec), user=user, user_file="mine.toml")
    for text, code in zip(render_documents(spec, checks=checks), (escape_tex, str), strict=True):
        mine = text.split("Your formulas.")[1]
        assert "mine.toml" in mine and code(right) in mine and code(f"2 * {right}") in mine
        assert "EQUAL" in mine and "NOT EQUAL" in mine and "Correct:" in mine
        assert text.index("Your formulas.") > text.index("Numerical check of the generated code")
    assert "Your formulas" not in render_documents(spec, checks=_checks(spec))[1]


def test_no_worked_example_when_the_cell_file_makes_the_state_an_input() -> None:
    """The worked example starts from h = 0: a cell file pinning h as an input (the spec
    saying zero) gets none, rather than a missing value for h_0."""
    import dataclasses

    from symbptt.model import cell_from_mapping, load_cell
    from symbptt.model.presets import PRESETS

    mapping = load_cell("elman").as_mapping()
    mapping["states"] = {"h": {"size": "n_hidden", "initial": "input"}}
    spec = dataclasses.replace(PRESETS["xh_hello"], cell=cell_from_mapping(mapping))
    assert spec.initial_state == "zero" and spec.initial_inputs == ("h",)
    assert worked_example(derive(spec)) is None
    assert worked_example(derive(PRESETS["xh_hello"])) is not None


def test_the_norms_follow_the_weight_on_the_previous_state_not_a_role_tag() -> None:
    """The recurrent weight of the gradient-norm plot is read from the equations:
    an Elman cell with its role tags taken out measures the same weight."""
    import dataclasses

    from symbptt.model import cell_from_mapping, load_cell
    from symbptt.model.presets import PRESETS

    mapping = load_cell("elman").as_mapping()
    mapping.pop("roles", None)
    for entry in mapping["parameters"].values():
        entry.pop("role", None)
    spec = dataclasses.replace(PRESETS["xh_hello"], cell=cell_from_mapping(mapping))
    assert "recurrent_weight" not in derive(spec).roles.values()
    untagged = worked_example(derive(spec))
    tagged = worked_example(derive(PRESETS["xh_hello"]))
    assert untagged is not None and tagged is not None
    assert untagged.recurrent == tagged.recurrent == "W_hh"
    assert untagged.norms == tagged.norms


def test_a_non_finite_number_is_written_not_raised() -> None:
    """A gradient norm or relative error that overflowed (an exploding cell, a NaN
    check): the document's number writer raised OverflowError or ValueError."""
    from symbptt.documents.layout import _sci

    assert _sci(float("inf")) == r"\infty"
    assert _sci(-float("inf")) == r"-\infty"
    assert _sci(float("nan")) == r"\mathrm{NaN}"
    assert _sci(6.5e-32) == r"6.5 \times 10^{-32}"
