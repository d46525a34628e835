"""Tests for symbptt.check: names, verdicts, mistakes, localisation, candidates of every kind."""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import sympy as sp

import symbptt
from symbptt import ExpressionError, ModelSpec, SpecError, derive
from symbptt.check import check, correct_formula, names, names_text, namespace
from symbptt.checker.localise import _rows_columns
from symbptt.expr.exprlang import parse
from symbptt.model.notation import NOTATIONS
from symbptt.model.presets import PRESETS
from symbptt.model.spec import MAX_CHECK_STEPS
from symbptt.testing import assert_gradient

from .test_seeds import cs231n_rnn, min_char_rnn

#: xh, three steps, symbolic sizes (checked at n_0=3, n_1=4, n_2=5, m=2), batch mean.
SPEC = ModelSpec(steps=3)
#: one example, so that diag(...) chains are allowed.
SPEC_1 = ModelSpec(steps=3, batch=1)


# ------------------------------------------------------------------------------ names
@pytest.mark.parametrize("notation", list(NOTATIONS))
def test_names_cover_the_notation_and_parse(notation: str) -> None:
    spec = ModelSpec(steps=3, notation=notation, initial_state="input")
    listed = names(notation)
    kinds = {info.kind for info in listed}
    assert {"parameter", "initial state", "series", "adjoint", "function", "reducer"} <= kinds
    nota = NOTATIONS[notation]
    shown = {info.name for info in listed}
    for param in nota.params:
        assert param.ascii in shown
    for series in nota.series:
        assert f"{series.ascii}[t]" in shown
    assert {"delta[t]", "T", "m", "tanh(A)", "softmax(A)", "ones(r, c)", "diag(v)"} <= shown
    ns = namespace(derive(spec))
    t = nota.t0 + 1
    for info in listed:
        if info.kind in ("parameter", "initial state", "scalar", "size"):
            parse(info.name, ns)
        elif info.kind in ("series", "adjoint"):
            parse(info.name.replace("[t]", f"[{t}]"), ns)
    text = names_text(notation)
    assert nota.params[0].ascii in text and "delta[t]" in text


def test_names_accept_a_spec_and_refuse_unknown_notations() -> None:
    assert names(SPEC) == names("xh")
    with pytest.raises(ValueError, match="unknown notation"):
        names("abc")


def test_aa_notation_calls_the_prediction_y() -> None:
    info = {i.name: i.description for i in names("aa")}
    assert info["y[t]"].startswith("prediction")
    assert info["y_hat[t]"].startswith("target")


# -------------------------------------------------------------------------- namespace
def test_steps_outside_the_model() -> None:
    ns = namespace(derive(SPEC))
    assert parse("h[0]", ns) == sp.ZeroMatrix(*parse("h[1]", ns).shape)
    assert isinstance(parse("delta[T+1]", ns), sp.ZeroMatrix)
    assert parse("h_0", ns) == parse("h[0]", ns)
    for text, where in [
        ("h[-1]", "1..3"),
        ("x[0]", "1..3"),
        ("delta[5]", "delta[4]"),
        ("y[4]", ""),
    ]:
        with pytest.raises(ExpressionError, match="outside the model") as info:
            parse(text, ns)
        assert where in str(info.value)


def test_initial_state_input_is_a_symbol() -> None:
    d = derive(ModelSpec(steps=2, initial_state="input", notation="layered"))
    ns = namespace(d)
    assert parse("H1[-1]", ns) == parse("H_init", ns) == d.graph.initial
    assert isinstance(parse("delta[T]", ns), sp.ZeroMatrix)  # steps 0..T-1


def test_many_to_one_has_outputs_only_at_the_last_step() -> None:
    ns = namespace(derive(ModelSpec(steps=3, mode="many_to_one")))
    parse("y_hat[3] - y[3]", ns)
    with pytest.raises(ExpressionError, match="many_to_one"):
        parse("y_hat[2]", ns)


def test_functions_of_the_namespace() -> None:
    ns = namespace(derive(SPEC))
    assert parse("ones(m, 1)", ns).shape == (sp.Symbol("m", integer=True, positive=True), 1)
    assert (
        parse("sigmoid(h[1]) + exp(h[1]) + log(h[1]) + tanh(h[1])", ns).shape
        == parse("h[1]", ns).shape
    )
    assert parse("softmax(o[1])", ns).shape == parse("o[1]", ns).shape
    with pytest.raises(ExpressionError, match="ones"):
        parse("ones(1000, 1)", ns)
    with pytest.raises(ExpressionError, match="elementwise"):
        parse("diag(h[1])", ns)  # a batch of m columns is not a vector
    with pytest.raises(ExpressionError, match="not a finite real"):
        parse("log(-1) * h[1]", ns)
    ns1 = namespace(derive(SPEC_1))
    assert parse("diag(1 - h[1]**2)", ns1).shape == (parse("h[1]", ns1).shape[0],) * 2


# ---------------------------------------------------------------------- correct formula
SPREAD = [
    ModelSpec(steps=2, notation="xh"),
    ModelSpec(steps=2, notation="uvw", time_reduction="mean"),
    ModelSpec(steps=3, notation="layered", mode="many_to_one"),
    ModelSpec(steps=2, notation="layered", batch_reduction="sum"),
    ModelSpec(steps=2, notation="aa", initial_state="input", batch=1),
    ModelSpec(steps=2, hidden="sigmoid", output="sigmoid", loss="binary_cross_entropy"),
    ModelSpec(steps=2, hidden="relu", output="identity", loss="squared_error", bias=False),
    ModelSpec(steps=2, mode="many_to_one", time_reduction="mean", n_in=2, n_hidden=2, n_out=2),
]


@pytest.mark.parametrize("spec", SPREAD, ids=lambda s: f"{s.notation}-{s.mode}-{s.loss}")
def test_correct_formula_checks_equal(spec: ModelSpec) -> None:
    d = derive(spec)
    for name in d.gradients:
        formula = correct_formula(spec, name)
        result = check(spec, name, formula.gradient, points=3)
        assert result.ok, result.explain()
        assert formula.gradient in result.explain()


def test_correct_formula_reads_like_the_seeds() -> None:
    assert correct_formula(SPEC, "W_hh").gradient == "sum_t(delta[t] @ h[t-1].T)"
    assert correct_formula(SPEC_1, "W_hy").gradient == "sum_t((y_hat[t] - y[t]) @ h[t].T)"
    where = correct_formula(SPEC_1, "W_hh").where
    assert (
        where[0] == "delta[t] = (W_hy.T @ (y_hat[t] - y[t]) + W_hh.T @ delta[t+1]) * (1 - h[t]**2)"
    )
    layered = PRESETS["layered_many_to_one"]
    assert correct_formula(layered, "W_2").gradient == "H1[T-1].T @ ((Y_hat[T-1] - Y[T-1]) / m)"
    assert correct_formula(layered, "W_h1").gradient == "sum_t(H1[t-1].T @ delta[t])"
    # the gradient of the initial state has no sum over t: it is printed step by step
    spec = ModelSpec(steps=2, initial_state="input", batch=1)
    assert correct_formula(spec, "h_0").gradient == "W_hh.T @ delta[1]"


PRINTED = [
    "sum_t(delta[t] @ h[t-1].T)",
    "-(W_hh @ h[1]) * 2",
    "1 - h[1]**2",
    "(h[1] - 2 * h[2]) / m",
    "-h[1] / (T * m) + h[2] * 0.5",
    "tanh(z[1]) * sigmoid(z[2]) - exp(h[1]) + log(1 + h[1]**2)",
    "softmax(o[1]) - y[1]",
    "exp(o[1]) / (ones(n_2, n_2) @ exp(o[1]))",
    "W_hh.T @ (delta[2] * (1 - h[1]**2)) @ ones(m, 1)",
    "h[1]**(-1) + h[1] ** 3",
    "(ones(1, n_1) @ (h[1] @ h[2].T)).T",
    "-W_hh - -W_hh.T",
]


@pytest.mark.parametrize("text", PRINTED)
def test_printer_round_trip(text: str) -> None:
    from symbptt.checker.points import _evaluate, _points, _prepare
    from symbptt.checker.printer import _naming, _Printer
    from symbptt.checker.work import _work

    work = _work(SPEC)
    expr = _prepare(parse(text, work.ns))
    printed = _Printer(_naming(work.graph.symbols, work.notation))(expr)
    again = _prepare(parse(printed, work.ns))
    point = _points(work, 0, 1)[0]
    first, second = _evaluate(expr, point.env_f, "float"), _evaluate(again, point.env_f, "float")
    assert first is not None and second is not None
    np.testing.assert_allclose(first, second, rtol=1e-12, atol=1e-12)


# -------------------------------------------------------------------------- verdicts
def test_equal_symbolic_and_report() -> None:
    result = check(SPEC, "W_hh", "sum_t(delta[t] @ h[t-1].T)")
    assert result.ok and result.method == "symbolic"
    assert result.counterexample is None and not result.mistakes
    report = result.explain()
    assert report.startswith("∂L/∂W_hh: EQUAL (symbolic)")
    assert "correct:   sum_t(delta[t] @ h[t-1].T)" in report
    assert str(result) == report


def test_equal_with_delta_expanded_and_tanh_of_z() -> None:
    chain = "prod_j(diag(1 - tanh(z[j])**2) @ W_hh).T @ W_hy.T @ (y_hat[t] - y[t])"
    result = check(SPEC_1, "W_xh", f"sum_t(sum_k(({chain} * (1 - h[k]**2)) @ x[k].T))")
    assert result.ok and result.method == "symbolic", result.explain()


def test_equal_but_not_a_polynomial_is_numeric() -> None:
    softmax = "exp(o[t]) / (ones(n_2, n_2) @ exp(o[t]))"
    result = check(SPEC, "W_hy", f"sum_t(({softmax} - y[t]) @ h[t].T) / m", points=6)
    assert result.ok, result.explain()
    assert result.method == "numeric at 6 points, 30 digits"


def test_decimal_literals_are_exact() -> None:
    result = check(SPEC, "W_hh", "0.1 * sum_t(delta[t] @ h[t-1].T) * 10")
    assert result.ok, result.explain()


def test_reports_are_reproducible() -> None:
    text = "sum_t(delta[t] @ h[t].T)"
    assert check(SPEC, "W_hh", text).explain() == check(SPEC, "W_hh", text).explain()
    seeded = check(SPEC, "W_hh", text, rng=np.random.default_rng(5))
    assert seeded.counterexample is not None


def test_wrt_by_role_and_bad_wrt() -> None:
    assert check(SPEC, "recurrent_weight", "sum_t(delta[t] @ h[t-1].T)").wrt == "W_hh"
    with pytest.raises(ValueError, match="no gradient named 'W'"):
        check(SPEC, "W", "W_hh")
    with pytest.raises(ValueError, match="points"):
        check(SPEC, "W_hh", "W_hh", points=0)
    with pytest.raises(TypeError, match="candidate"):
        check(SPEC, "W_hh", 3)


# -------------------------------------------------------------------------- mistakes
MISTAKES: list[tuple[ModelSpec, str, str, set[str]]] = [
    (SPEC, "W_hh", "sum_t(h[t-1] @ delta[t].T)", {"transpose"}),
    (SPEC, "W_hh", "-sum_t(delta[t] @ h[t-1].T)", {"sign"}),
    (SPEC, "W_hh", "sum_t(delta[t] @ h[t].T)", {"off_by_one"}),
    (SPEC, "W_hy", "sum_t((y_hat[t] - y[t]) @ h[t-1].T) / m", {"off_by_one"}),
    (
        SPEC,
        "W_hh",
        "sum_t(((W_hy.T @ (y_hat[t] - y[t]) / m) * (1 - h[t]**2)) @ h[t-1].T)",
        {"dropped_carry"},
    ),
    (
        SPEC,
        "W_xh",
        "sum_t(((W_hy.T @ (y_hat[t] - y[t]) / m) * (1 - z[t]**2)) @ x[t].T)",
        {"dropped_carry", "derivative_at_pre_activation"},
    ),
    (
        SPEC_1,
        "W_xh",
        "sum_t(sum_k(((prod_j(diag(1 - z[j]**2) @ W_hh).T @ W_hy.T @ (y_hat[t] - y[t]))"
        " * (1 - z[k]**2)) @ x[k].T))",
        {"derivative_at_pre_activation"},
    ),
    (
        SPEC_1,
        "W_xh",
        "sum_t(sum_k((prod_j(W_hh).T @ W_hy.T @ (y_hat[t] - y[t])) @ x[k].T))",
        {"no_derivative"},
    ),
    (
        SPEC_1,
        "W_xh",
        "sum_t(sum_k(((prod_j(diag(1 - h[j]**2) @ W_hh.T).T @ W_hy.T @ (y_hat[t] - y[t]))"
        " * (1 - h[k]**2)) @ x[k].T))",
        {"transposed_weight"},
    ),
    # the true delta[t+1], one wrong local factor in the recursion (the two misses of issue 13)
    (
        SPEC,
        "W_hh",
        "sum_t(((W_hy.T @ (y_hat[t] - y[t]) / m + W_hh @ delta[t+1]) * (1 - h[t]**2)) @ h[t-1].T)",
        {"transposed_weight"},
    ),
    (
        SPEC,
        "W_hh",
        "sum_t(((W_hy.T @ (y_hat[t] - y[t]) / m + W_hh.T @ delta[t+1]) * (1 - tanh(h[t])**2))"
        " @ h[t-1].T)",
        {"derivative_of_output"},
    ),
    (SPEC, "W_hy", "sum_t((y_hat[t] - y[t]) @ h[t].T)", {"missing_factor"}),
    (SPEC, "W_hy", "sum_t((y_hat[t] - y[t]) @ h[t].T) / m / m", {"extra_factor"}),
    (SPEC, "W_hy", "sum_t((y_hat[t] - 1) @ h[t].T) / m", {"dropped_target"}),
    (SPEC, "W_hy", "-sum_t((y[t] * (1 - y_hat[t])) @ h[t].T) / m", {"softmax_diagonal"}),
    (SPEC, "W_hy", "(y_hat[T] - y[T]) @ h[T].T / m", {"last_step_only"}),
    (SPEC, "W_hy", "1.5 * sum_t((y_hat[t] - y[t]) @ h[t].T) / m", {"factor"}),
    (
        PRESETS["uvw_mean"],
        "V",
        "sum_t((y_hat[t] - y[t]) @ h[t].T) / m",
        {"missing_factor"},
    ),
    (SPEC_1, "b_y", "-y[T] / y_hat[T]", {"wrong_quantity"}),
]


@pytest.mark.parametrize(
    ("spec", "wrt", "text", "expected"), MISTAKES, ids=[f"{m[1]}:{m[2]}" for m in MISTAKES]
)
def test_mistake_is_named(spec: ModelSpec, wrt: str, text: str, expected: set[str]) -> None:
    result = check(spec, wrt, text, points=6)
    report = result.explain()
    assert not result.ok, report
    assert set(result.mistake_names) == expected, report
    for mistake in result.mistakes:
        assert mistake.description in report
    assert result.counterexample is not None
    assert "correct:" in report and "counterexample" in report


def test_mistake_descriptions_use_the_notation() -> None:
    result = check(PRESETS["layered_many_to_many"], "W_h1", "sum_t(H1[t].T @ delta[t])")
    assert "H1[t].T @ delta[t] where H1[t-1].T @ delta[t] belongs" in result.explain()
    result = check(SPEC, "W_hy", "sum_t((y_hat[t] - y[t]) @ h[t].T)")
    assert "missing 1/m factor (the loss is the mean over the batch; m = 2 here)" in (
        result.explain()
    )
    aa = check(PRESETS["aa_hello"], "b_y", "sum_t(y[t] - 1)")
    assert "-(1 - y[t]) (= y[t] - 1) where y[t] - y_hat[t] belongs" in aa.explain()
    # only what the term reads moves a step: not the output error written out into it
    late = check(SPEC, "W_hy", "sum_t((y_hat[t] - y[t]) @ h[t-1].T) / m")
    wrong, right = "((y_hat[t] - y[t]) / m) @ h[t-1].T", "((y_hat[t] - y[t]) / m) @ h[t].T"
    assert f"off-by-one step: {wrong} where {right} belongs" in late.explain()


def test_no_common_mistake() -> None:
    result = check(SPEC, "W_hh", "W_hh", points=3)
    assert not result.ok and not result.mistakes
    assert "none of the common mistakes" in result.explain()


# ----------------------------------------------------------------------- localisation
def test_localisation_by_step() -> None:
    text = "sum_t(((W_hy.T @ (y_hat[t] - y[t]) / m) * (1 - h[t]**2)) @ x[t].T)"
    result = check(SPEC, "W_xh", text)
    assert result.differing_terms == (1, 2)  # the last step has no recurrent term
    assert result.loss_steps == (2, 3)  # L_1 only reaches step 1, where it is right
    report = result.explain()
    assert "the sum_t terms differ at t = 1, 2 (agree at t = 3)" in report
    assert "the error involves the losses at steps 2, 3 (the loss at step 1 is handled right)" in (
        report
    )


def test_localisation_without_a_sum() -> None:
    result = check(SPEC, "W_hy", "(y_hat[T] - y[T]) @ h[T].T / m")
    assert result.differing_terms is None
    assert result.loss_steps == (1, 2)


def test_localisation_target_class_row() -> None:
    result = check(PRESETS["aa_hello"], "w_ya", "-sum_t((y_hat[t] * (1 - y[t])) @ a[t].T)")
    assert "agrees on the target class's row, differs on the others" in result.explain()
    row_layout = check(
        PRESETS["layered_many_to_many"], "W_2", "sum_t(H1[t].T @ (Y_hat[t] - 1)) / m"
    )
    assert "agrees on the target class's column, differs on the others" in row_layout.explain()


def test_localisation_rows_and_columns() -> None:
    expected = np.zeros((3, 4))
    got = expected.copy()
    got[1, 2] = 1.0
    got[2, 0] = -1e-3
    assert _rows_columns(got, expected) == ((1, 2), (0, 2))
    result = check(SPEC_1, "W_hh", "sum_t(delta[t] @ h[t-1].T) * (1 + diag(ones(n_1, 1)))")
    assert not result.ok
    assert result.rows == result.columns == (0, 1, 2, 3)  # the diagonal: every row and column
    assert "differs in every row and column" in result.explain()


def test_one_hot_only_candidate() -> None:
    # y**2 == y for one-hot targets only
    result = check(SPEC, "W_hy", "sum_t((y_hat[t] - y[t]**2) @ h[t].T) / m", points=6)
    assert not result.ok
    assert "agrees when the targets are one-hot, differs for soft" in result.explain()


# ------------------------------------------------------------------------------ shapes
def test_transposed_shape() -> None:
    result = check(SPEC, "W_xh", "sum_t(x[t] @ delta[t].T)")
    assert not result.ok and result.shape_mismatch
    assert result.expected_shape == (sp.Symbol("n_1", integer=True, positive=True),) * 1 + (
        sp.Symbol("n_0", integer=True, positive=True),
    )
    assert result.mistake_names == ("transpose",)
    report = result.explain()
    assert (
        "shapes cannot match: the gradient of W_xh has shape (n_1, n_0), the candidate (n_0, n_1)"
        in (report)
    )


def test_transposed_shape_with_another_mistake() -> None:
    result = check(SPEC, "W_xh", "-sum_t(x[t] @ delta[t].T)")
    assert result.mistake_names == ("transpose", "sign")


def test_shape_of_another_quantity_and_scalars() -> None:
    result = check(SPEC_1, "W_hh", "y_hat[T] - y[T]")
    assert result.shape_mismatch and "y_hat[t]" in result.explain()
    scalar = check(SPEC, "W_hh", "T + 1")
    assert scalar.shape_mismatch and scalar.candidate_shape is None
    assert "the candidate is a scalar" in scalar.explain()


def test_inner_shape_errors_raise() -> None:
    with pytest.raises(ExpressionError, match=r"\(n_1, n_1\) and \(n_2, 1\)"):
        check(SPEC, "W_hh", "W_hh @ b_y")


# ---------------------------------------------------------------------- SymPy candidates
def test_sympy_candidates() -> None:
    spec = ModelSpec(steps=2)
    d = derive(spec)
    for name in d.gradients:
        assert check(spec, name, d.gradients[name], points=3).ok
    expanded = check(spec, "W_hh", d.gradient("W_hh", expand=True), points=3)
    assert expanded.ok and expanded.method == "symbolic"
    wrong = check(spec, "W_hh", -d.gradients["W_hh"], points=3)
    assert wrong.mistake_names == ("sign",)
    assert wrong.candidate == "-delta[2] @ h[1].T"


def test_sympy_candidate_with_unknown_symbols() -> None:
    with pytest.raises(ExpressionError, match="unknown symbol Q"):
        check(SPEC, "W_hh", sp.MatrixSymbol("Q", 4, 4))


# --------------------------------------------------------------------------- callables
def test_callable_wrong_in_a_known_way() -> None:
    def transposed(params: dict[str, Any], X: Any, Y: Any, h0: Any) -> Any:
        return 2 * min_char_rnn(params, X, Y, h0)["W_hh"].T

    result = check(PRESETS["xh_hello"], "W_hh", transposed)
    assert not result.ok
    assert set(result.mistake_names) == {"transpose", "factor"}
    assert "transposed" in result.explain()


def test_callable_without_the_recurrent_term() -> None:
    def no_dhnext(params: dict[str, Any], X: Any, Y: Any, h0: Any) -> Any:
        Wxh, Why = params["W_xh"], params["W_hy"]
        grads = np.zeros_like(Wxh)
        hs = {-1: np.zeros((params["W_hh"].shape[0], 1))}
        for t in range(X.shape[0]):
            hs[t] = np.tanh(Wxh @ X[t].T + params["W_hh"] @ hs[t - 1] + params["b_h"])
            o = Why @ hs[t] + params["b_y"]
            p = np.exp(o) / np.exp(o).sum()
            dh = Why.T @ (p - Y[t].T)
            grads += ((1 - hs[t] ** 2) * dh) @ X[t]
        return grads

    result = check(PRESETS["xh_hello"], "W_xh", no_dhnext)
    assert result.mistake_names == ("dropped_carry",), result.explain()


def test_callable_shapes_and_dicts() -> None:
    def flat_bias(params: dict[str, Any], X: Any, Y: Any, h0: Any) -> Any:
        return cs231n_rnn(params, X, Y, h0)["beta_2"][:, 0]

    result = check(PRESETS["layered_many_to_many"], "beta_2", flat_bias)
    assert result.shape_mismatch and "biases are (n, 1) columns" in result.explain()

    def loss_and_grads(params: dict[str, Any], X: Any, Y: Any, h0: Any) -> Any:
        return 0.0, cs231n_rnn(params, X, Y, h0)

    assert check(PRESETS["layered_many_to_many"], "W_2", loss_and_grads, points=3).ok
    with pytest.raises(ValueError, match="without 'W_hh'"):
        check(PRESETS["xh_hello"], "W_hh", lambda p, X, Y, h0: {"x": 1})


# ----------------------------------------------------------------- the pytest helper
def test_assert_gradient() -> None:
    result = assert_gradient(SPEC, "W_hh", "sum_t(delta[t] @ h[t-1].T)")
    assert result.ok
    with pytest.raises(AssertionError) as info:
        assert_gradient(SPEC, "W_hh", "sum_t(delta[t] @ h[t].T)")
    assert "NOT EQUAL" in str(info.value) and "off-by-one step" in str(info.value)
    with pytest.raises(ExpressionError):
        assert_gradient(SPEC, "W_hh", "W_hh @")


def test_top_level_exports() -> None:
    assert symbptt.check is check
    assert issubclass(symbptt.ExpressionError, ValueError)
    result = symbptt.check(replace(SPEC, steps=2), "W_hy", "sum_t((y_hat[t] - y[t]) @ h[t].T) / m")
    assert isinstance(result, symbptt.CheckResult) and result.ok
    assert symbptt.check.names("aa") == names("aa")  # type: ignore[attr-defined]


# -- the longest sequence -------------------------------------------------------------
def test_check_refuses_more_steps_than_it_can_prove_up_front(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check_module = importlib.import_module("symbptt.checker.core")

    monkeypatch.setattr(check_module, "_derivation", lambda *a: pytest.fail("work started"))
    spec = ModelSpec(steps=MAX_CHECK_STEPS + 1)
    with pytest.raises(SpecError, match=rf"^steps: got {MAX_CHECK_STEPS + 1}; .* at most 100"):
        check(spec, "W_hh", "sum_t(delta[t] @ h[t-1].T)")
    with pytest.raises(SpecError, match=r"^steps: got 1000"):
        check(ModelSpec(steps=1000), "W_hh", "W_hh")


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields",
    [{}, {"notation": "layered", "mode": "many_to_one", "initial_state": "input"}],
    ids=["xh", "layered_many_to_one_h0"],
)
def test_check_works_at_the_most_steps(fields: dict[str, Any]) -> None:
    spec = ModelSpec(steps=MAX_CHECK_STEPS, **fields)
    for name in derive(ModelSpec(steps=2, **fields)).gradients:
        assert check(spec, name, correct_formula(spec, name).gradient).ok, name
