"""A state's initial value from its cell file (docs/cells.md, "Initial values").

One cell throughout: the LSTM whose file says h starts as an input and c at zero.
Every stage honours it: the graph, the derivation, the scalar proof, the
generated code (only h0 is a keyword with a gradient), the documents and the
checker.  The oracles are the scalar proof, central differences, the rolled
module against the unrolled one, and the same LSTM with c0 given as zeros.
"""

from __future__ import annotations

import inspect
from functools import cache
from types import ModuleType

import numpy as np
import pytest
import sympy as sp

import symbptt
from symbptt import ModelSpec
from symbptt.core.graph import build_graph
from symbptt.model import cell_from_mapping, load_cell
from symbptt.model.spec import SpecError
from symbptt.oracle import verify
from symbptt.oracle.gradcheck import finite_difference_errors, random_problem, relative_error


def pinned_lstm(h: str = "input", c: str = "zero") -> symbptt.model.Cell:
    """The built-in LSTM with ``[states] h = { size = "n_hidden", initial = h }`` and c likewise."""
    mapping = load_cell("lstm").as_mapping()
    mapping["states"] = {
        "h": {"size": "n_hidden", "initial": h},
        "c": {"size": "n_hidden", "initial": c},
    }
    return cell_from_mapping(mapping)


def spec_of(**changes: object) -> ModelSpec:
    fields: dict[str, object] = {"cell": pinned_lstm(), "steps": 3} | changes
    return ModelSpec(**fields)  # type: ignore[arg-type]


@cache
def module_for(spec: ModelSpec, unrolled: bool = False) -> ModuleType:
    return symbptt.load_module(symbptt.emit_numpy(spec, unrolled=unrolled))


# -- the cell file and the spec --------------------------------------------------------
def test_the_cell_file_comes_first_and_the_spec_fills_in_the_rest() -> None:
    for initial_state in ("zero", "input"):
        spec = spec_of(initial_state=initial_state)
        assert (spec.initial_of("h"), spec.initial_of("c")) == ("input", "zero")
        assert spec.initial_inputs == ("h",)
    mapping = load_cell("lstm").as_mapping()
    mapping["states"] = {"h": {"size": "n_hidden", "initial": "input"}, "c": "n_hidden"}
    half = cell_from_mapping(mapping)
    assert ModelSpec(cell=half).initial_inputs == ("h",)
    assert ModelSpec(cell=half, initial_state="input").initial_inputs == ("h", "c")
    assert ModelSpec(cell="lstm").initial_inputs == ()
    assert ModelSpec(cell="lstm", initial_state="input").initial_inputs == ("h", "c")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"size": "n_hidden", "initial": "ones"}, "[states] h has initial 'ones'; expected one of"),
        ({"size": "n_hidden", "start": "zero"}, "[states] h is {'size': 'n_hidden', 'start'"),
        ({"initial": "zero"}, "expected a size name or"),
    ],
)
def test_a_bad_initial_is_named(entry: dict[str, str], message: str) -> None:
    mapping = load_cell("lstm").as_mapping()
    mapping["states"] = {"h": entry, "c": "n_hidden"}
    with pytest.raises(SpecError) as error:
        cell_from_mapping(mapping)
    assert str(error.value).startswith("cell mapping: ") and message in str(error.value)


def test_a_cell_file_on_disk_says_it(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    import pathlib

    text = (pathlib.Path(symbptt.__file__).parent / "model" / "cells" / "lstm.toml").read_text()
    plain = 'h = "n_hidden"\nc = "n_hidden"'
    assert plain in text
    text = text.replace(plain, 'h = { size = "n_hidden", initial = "input" }\nc = "n_hidden"')
    path = pathlib.Path(str(tmp_path)) / "lstm_h.toml"
    path.write_text(text, encoding="utf-8")
    spec = ModelSpec(cell=str(path))
    assert spec.initial_inputs == ("h",)
    from symbptt.cli import commands as cli

    assert cli.main(["cells", str(path)]) == 0
    out = capsys.readouterr().out
    assert "states: h (n_hidden, initial h0, input), c (n_hidden, initial c0)" in out


# -- graph, derivation, proof ------------------------------------------------------------
def test_the_graph_starts_h_at_an_input_and_c_at_zero() -> None:
    graph = build_graph(spec_of())
    assert isinstance(graph.initials["h"], sp.MatrixSymbol) and graph.initials["h"].name == "h_0"
    assert isinstance(graph.initials["c"], sp.ZeroMatrix)
    assert list(graph.initial_inputs) == ["h"]
    every = build_graph(spec_of(), initial_override="input")
    assert list(every.initial_inputs) == ["h", "c"]


def test_the_derivation_has_a_gradient_for_h0_only() -> None:
    d = symbptt.derive(spec_of())
    assert "h_0" in d.gradients and "c_0" not in d.gradients
    assert d.symbols["initial_state"].name == "h_0"


@pytest.mark.slow
@pytest.mark.parametrize("notation", ["xh", "layered"])
def test_every_entry_equals_scalar_diff(notation: str) -> None:
    spec = spec_of(steps=2, notation=notation, n_in=1, n_hidden=2, n_out=2, batch=1)
    proof = verify.scalar_proof(spec, np.random.default_rng(5))
    d = symbptt.derive(spec)
    assert proof.entries == sum(int(g.shape[0] * g.shape[1]) for g in d.gradients.values())
    assert proof.ok, f"max relative error {proof.max_relative_error:.3e}"


def test_the_scalar_loss_starts_c_at_zero() -> None:
    """The explicit loss with c_0 pinned is the plain LSTM's with c_0 = 0 and h_0 given."""
    sizes = {"n_in": 1, "n_hidden": 2, "n_out": 2, "batch": 1, "steps": 2}
    pinned = spec_of(**sizes)
    plain = ModelSpec(cell="lstm", initial_state="input", **sizes)  # type: ignore[arg-type]
    values = verify.random_values(pinned, np.random.default_rng(3))
    assert "h_0" in values and "c_0" not in values
    both = {**values, "c_0": sp.zeros(2, 1)}
    assert sp.simplify(verify.scalar_loss(pinned, values) - verify.scalar_loss(plain, both)) == 0


# -- generated code --------------------------------------------------------------------
@pytest.mark.parametrize("unrolled", [False, True], ids=["rolled", "unrolled"])
def test_only_an_input_state_gets_a_keyword_and_a_gradient(unrolled: bool) -> None:
    mod = module_for(spec_of(), unrolled)
    assert mod.STATES == ("h", "c") and mod.INITIALS == {"h": "h0"}
    for function in (mod.forward, mod.loss, mod.loss_and_gradients, mod.loss_and_all_gradients):
        parameters = inspect.signature(function).parameters
        assert "h0" in parameters and "c0" not in parameters
    assert "c_0 = 0 (the cell file)" in (mod.__doc__ or "")
    problem = random_problem(mod, rng=1)
    assert set(problem.initial) == {"h0"}
    errors = finite_difference_errors(mod, problem)
    assert set(errors) == {*mod.PARAMETERS, "X", "h0"}
    assert max(errors.values()) < 1e-6, errors
    _, _, state = mod.loss_and_all_gradients(*problem.args())
    assert set(state) == {"dX", "dh0", "h_T", "c_T"}


def test_rolled_equals_unrolled_and_the_plain_lstm_with_zero_c0() -> None:
    spec = spec_of()
    rolled, unrolled = module_for(spec), module_for(spec, True)
    plain = module_for(ModelSpec(cell="lstm", steps=3))
    problem = random_problem(rolled, rng=4)
    h0 = problem.initial["h0"]
    a = rolled.loss_and_all_gradients(problem.params, problem.X, problem.Y, h0)
    b = unrolled.loss_and_all_gradients(problem.params, problem.X, problem.Y, h0=h0)
    c = plain.loss_and_all_gradients(
        problem.params, problem.X, problem.Y, h0=h0, c0=np.zeros_like(h0)
    )
    for other in (b, c):
        assert a[0] == pytest.approx(other[0], rel=1e-12)
        for name in a[1]:
            assert relative_error(a[1][name], other[1][name]) < 1e-12, name
        for name in a[2]:
            assert relative_error(a[2][name], other[2][name]) < 1e-12, name


# -- the checker -----------------------------------------------------------------------
def test_the_checker_takes_the_generated_module_and_names_h0_only() -> None:
    spec = spec_of(steps=2)
    mod = module_for(spec)

    def generated(wrt: str):  # type: ignore[no-untyped-def]
        def f(params, X, Y, **initial):  # type: ignore[no-untyped-def]
            assert set(initial) == {"h0"}  # no c0: the cell file starts c at zero
            _, grads, state = mod.loss_and_all_gradients(params, X, Y, **initial)
            found = {**grads, **state}[wrt]
            return found.T if wrt == "dh0" else found  # (m, n) -> the notation's (n, m)

        return f

    for wrt in ("W_hc", "h_0"):
        result = symbptt.check(spec, wrt, generated(wrt if wrt != "h_0" else "dh0"), points=3)
        assert result.ok, result.explain()
    wrong = symbptt.check(spec, "W_hc", generated("W_hi"), points=3)
    assert not wrong.ok
    with pytest.raises(Exception, match="c_0"):
        symbptt.check(spec, "c_0", "c[0]")


def test_the_checker_reads_h0_and_a_zero_c0_in_formulas() -> None:
    spec = spec_of(steps=2)
    d = symbptt.derive(spec)
    result = symbptt.check(d, "h_0", d.gradients["h_0"], points=3)
    assert result.ok, result.explain()
    explained = symbptt.check(d, "W_hc", "sum_t(delta_g[t] @ h[t-1].T)", points=3).explain()
    assert "h[0] = h_0" in explained and "c[0] = 0" in explained


# -- documents ---------------------------------------------------------------------------
def test_the_document_says_which_state_starts_where() -> None:
    from symbptt.documents import render_documents

    tex, md = render_documents(spec_of())
    for text in (tex, md):
        assert (
            "h_0$, an input of the model (its gradient is computed too), and $c_0$, which is zero"
            in text
        )
        assert "initial hidden state (an input)" in text and "initial cell state (zero)" in text
    # the gradient of h_0 is in the document, none of c_0
    assert r"\frac{\partial L}{\partial h_0}" in tex and r"\partial c_0}" not in tex
    assert "The initial state $h_0$ is an input of the model" in md


@pytest.mark.tex
@pytest.mark.parametrize("notation", ["xh", "layered"])
def test_the_document_compiles_without_overfull_boxes(notation: str) -> None:
    from symbptt.documents import compile_pdf, overfull_boxes, render_latex
    from tests.test_documents import require_pdflatex

    require_pdflatex()
    pdf, log = compile_pdf(render_latex(spec_of(notation=notation)))
    assert pdf.startswith(b"%PDF")
    assert overfull_boxes(log) == []
