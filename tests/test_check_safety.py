"""check() on hostile or random text: ExpressionError or a verdict, never execution."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symbptt import ExpressionError, ModelSpec
from symbptt.check import CheckResult, check

SPEC = ModelSpec(steps=2, n_in=2, n_hidden=3, n_out=2, batch=1)

INJECTIONS = [
    "__import__('os').system('touch {marker}')",
    "__import__",
    "open('{marker}', 'w').write('x')",
    "exec(\"open('{marker}', 'w')\")",
    "eval('1')",
    "compile('1', 'x', 'eval')",
    "globals()",
    "getattr(W_hh, 'T')",
    "W_hh.__class__",
    "W_hh.__class__.__mro__[-1].__subclasses__()",
    "x[1].__class__.__mro__",
    "h[1].T.__dict__",
    "().__class__.__bases__[0].__subclasses__()",
    "(lambda: open('{marker}', 'w'))()",
    "[open('{marker}', 'w') for _ in (1,)]",
    "{{k: 1 for k in (1,)}}",
    "(w := W_hh)",
    "W_hh if T else W_hh",
    "W_hh; import os",
    "import os",
    "f'{{W_hh}}'",
    "'W_hh'",
    "b'x'",
    "W_hh[0]",
    "h[t]",
    "sum_t(h[t], k=1)",
    "tanh(*[W_hh])",
    "W_hh ^ W_hh",
    "not W_hh",
    "W_hh == W_hh",
    "(" * 300 + "W_hh" + ")" * 300,
    "-" * 3000 + "W_hh",
    "sum_t(" * 40 + "h[t]" + ")" * 40,
    "W_hh" + " + W_hh" * 1000,
]


@pytest.mark.parametrize("template", INJECTIONS)
def test_injection_is_refused_and_runs_nothing(template: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    text = template.format(marker=marker)
    with pytest.raises(ExpressionError):
        check(SPEC, "W_hh", text, points=2)
    assert not marker.exists()


_TOKENS = [*"W_hxyzot[]()@*+-/.T0123 ,", "**", "delta", "h[1]", "W_hh", "sum_t(", "tanh(", "__"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    st.one_of(
        st.text(max_size=40),
        st.lists(st.sampled_from(_TOKENS), max_size=24).map("".join),
    )
)
def test_random_text_gives_a_verdict_or_an_expression_error(text: str) -> None:
    try:
        result = check(SPEC, "W_hh", text, points=2)
    except ExpressionError:
        return
    assert isinstance(result, CheckResult)
    result.explain()


_LEAVES = st.sampled_from(
    [
        "W_hh",
        "W_xh",
        "W_hy",
        "b_h",
        "h[t]",
        "h[t-1]",
        "h[1]",
        "z[t]",
        "x[t]",
        "delta[t]",
        "delta[t+1]",
        "y_hat[t]",
        "y[t]",
        "o[t]",
        "T",
        "m",
        "1",
        "0",
        "2.5",
        "ones(n_1, 1)",
        "h_0",
    ]
)


def _formulas() -> st.SearchStrategy[str]:
    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.tuples(children, st.sampled_from(["+", "-", "*", "@", "/", "**"]), children)
        return st.one_of(
            binary.map(lambda p: f"({p[0]} {p[1]} {p[2]})"),
            children.map(lambda c: f"({c}).T"),
            children.map(lambda c: f"-({c})"),
            st.tuples(
                st.sampled_from(["tanh", "exp", "log", "sigmoid", "softmax", "diag"]), children
            ).map(lambda p: f"{p[0]}({p[1]})"),
            children.map(lambda c: f"sum_t({c})"),
            children.map(lambda c: f"sum_t(sum_k({c}))"),
        )

    return st.recursive(_LEAVES, extend, max_leaves=8)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(_formulas(), st.sampled_from(["W_hh", "W_xh", "W_hy", "b_h", "b_y"]))
def test_random_formulas_give_a_verdict_or_an_expression_error(text: str, wrt: str) -> None:
    try:
        result = check(SPEC, wrt, text, points=2)
    except ExpressionError:
        return
    assert isinstance(result, CheckResult)
    assert isinstance(result.ok, bool)
    explained = result.explain()
    assert isinstance(explained, str) and explained
    header = explained.splitlines()[0]
    assert header.startswith(f"∂L/∂{wrt}: ")
    # the verdict in the header agrees with ok
    assert ("NOT EQUAL" in header) is (not result.ok)


def _hidden_vectors() -> st.SearchStrategy[str]:
    """Random formulas with the shape of h[t] (n_1, 1): they reach the numeric verdict."""
    outputs = st.sampled_from(["(y_hat[t] - y[t])", "y_hat[t]", "(1 - y[t])", "o[t]", "y[t]"])
    leaves = st.one_of(
        st.sampled_from(["h[t]", "z[t]", "delta[t]", "delta[t+1]", "b_h", "h[t-1]", "x[t]"]),
        outputs.map(lambda u: f"W_hy.T @ {u}"),
    )

    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.tuples(children, st.sampled_from(["+", "-", "*"]), children)
        return st.one_of(
            binary.map(lambda p: f"({p[0]} {p[1]} {p[2]})"),
            children.map(lambda c: f"W_hh.T @ {c}"),
            children.map(lambda c: f"(1 - {c}**2)"),
            children.map(lambda c: f"tanh({c})"),
            st.tuples(st.sampled_from(["2", "0.5", "T", "-1"]), children).map(
                lambda p: f"{p[0]} * {p[1]}"
            ),
        )

    return st.recursive(leaves, extend, max_leaves=6)


_WRAPPERS = {
    "W_hh": "sum_t({v} @ h[t-1].T)",
    "W_xh": "sum_t({v} @ x[t].T)",
    "b_h": "sum_t({v})",
    "W_hy": "sum_t((y_hat[t] - y[t]) @ ({v}).T)",
}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(_hidden_vectors(), st.sampled_from(sorted(_WRAPPERS)))
def test_random_well_shaped_formulas_get_a_full_report(vector: str, wrt: str) -> None:
    text = _WRAPPERS[wrt].format(v=vector)
    try:
        result = check(SPEC, wrt, text, points=2)
    except ExpressionError:  # x[t] is (n_0, 1): some combinations do not fit
        return
    assert isinstance(result, CheckResult)
    report = result.explain()
    assert ("EQUAL" in report) and (
        result.ok or result.counterexample is not None or result.shape_mismatch
    )


@pytest.mark.parametrize(
    "text",
    [
        "exp(exp(exp(exp(exp(exp(W_hh))))))",
        "1 / (W_hh - W_hh + 0 * W_hh)",
        "log(-W_hh * W_hh - 1)",
        "W_hh ** 0.5",
        "tanh(exp(exp(exp(exp(exp(10 * W_hh))))))",
        "W_hh * T ** 1000",
        "(-1) ** 0.5 * W_hh",
        "ones(n_1, 256) @ ones(256, n_1)",
    ],
)
def test_values_without_a_finite_real_value(text: str) -> None:
    try:
        result = check(SPEC, "W_hh", text, points=2)
    except ExpressionError:
        return
    assert not result.ok
    result.explain()
