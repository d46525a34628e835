"""Tests for symbptt.expr.exprlang: the safe parser of the matrix formula language."""

from __future__ import annotations

import os
import pickle
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from sympy import (
    DiagMatrix,
    HadamardProduct,
    Identity,
    ImmutableMatrix,
    Lambda,
    MatAdd,
    MatMul,
    MatrixSymbol,
    OneMatrix,
    Rational,
    Symbol,
    Transpose,
    ZeroMatrix,
)
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from symbptt.expr.exprlang import (
    MAX_DEPTH,
    MAX_LENGTH,
    ExpressionError,
    Namespace,
    names_used,
    parse,
)
from symbptt.expr.mexpr import HadamardPower

# ---------------------------------------------------------------------------
# A toy model: hidden size 3, input/output size 2, steps 1..3.

z = Symbol("z")
alpha = Symbol("alpha")
W = MatrixSymbol("W", 3, 3)
U = MatrixSymbol("U", 3, 2)
V = MatrixSymbol("V", 2, 3)
b = MatrixSymbol("b", 3, 1)
A_GREEK = Symbol("a")
STEPS = (1, 2, 3)


def _per_step(name: str, rows: int, cols: int = 1) -> Callable[[int], Any]:
    """MatrixSymbols name_1..name_3; a ZeroMatrix outside the model's steps."""

    def at(step: int) -> Any:
        if step in STEPS:
            return MatrixSymbol(f"{name}_{step}", rows, cols)
        return ZeroMatrix(rows, cols)

    return at


def _strict_step(step: int) -> Any:
    if step in STEPS:
        return MatrixSymbol(f"g_{step}", 3, 1)
    raise ExpressionError(f"g has no step {step}")


def _broken_step(step: int) -> Any:
    raise KeyError(step)


def _elementwise(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda A: ElementwiseApplyFunction(Lambda(z, fn(z)), A)


h = _per_step("h", 3)
x = _per_step("x", 2)
y = _per_step("y", 2)
y_hat = _per_step("yhat", 2)
delta = _per_step("delta", 3)
D = _per_step("D", 3, 3)

NS = Namespace(
    constants={"W": W, "U": U, "V": V, "b": b, "alpha": alpha, "α": A_GREEK},
    indexed={
        "h": h,
        "x": x,
        "y": y,
        "y_hat": y_hat,
        "delta": delta,
        "D": D,
        "g": _strict_step,
        "broken": _broken_step,
    },
    functions={
        "tanh": _elementwise(sympy.tanh),
        "exp": _elementwise(sympy.exp),
        "log": _elementwise(sympy.log),
        "ones": lambda r, c: OneMatrix(r, c),
        "diag": lambda v: DiagMatrix(v),
        "step": _elementwise(lambda v: sympy.Heaviside(v, 0)),
    },
    steps=STEPS,
    scalars={"T": 3},
)


def err(text: str, ns: Namespace = NS) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        parse(text, ns)
    return info.value


def neg(a: Any) -> Any:
    return MatMul(-1, a)


# ---------------------------------------------------------------------------
# Correct parses, compared with SymPy objects built by hand


def test_sum_t_outer_product_of_errors() -> None:
    got = parse("sum_t((y_hat[t] - y[t]) @ h[t].T)", NS)
    expected = MatAdd(
        *[MatMul(MatAdd(y_hat(t), neg(y(t))), Transpose(h(t))) for t in STEPS],
    )
    assert got == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("W", W),
        ("+W", W),
        ("-W", MatMul(-1, W)),
        ("-W", -W),
        ("W @ h[1] + b", MatAdd(MatMul(W, h(1)), b)),
        ("W - W.T", MatAdd(W, neg(Transpose(W)))),
        ("W**2", HadamardPower(W, 2)),
        ("h[2]**-1", HadamardPower(h(2), -1)),
        ("W / 2", MatMul(Rational(1, 2), W)),
        ("W / T", MatMul(Rational(1, 3), W)),
        ("W / alpha", MatMul(1 / alpha, W)),
        ("2 * W", MatMul(2, W)),
        ("W * 2", MatMul(2, W)),
        ("alpha * W", MatMul(alpha, W)),
        ("W * W.T", HadamardProduct(W, Transpose(W))),
        ("W / W.T", HadamardProduct(W, HadamardPower(Transpose(W), -1))),
        ("1 / h[1]", HadamardPower(h(1), -1)),
        ("2 / h[1]", MatMul(2, HadamardPower(h(1), -1))),
        ("1 - h[1]**2", MatAdd(OneMatrix(3, 1), neg(HadamardPower(h(1), 2)))),
        ("h[1] + 2", MatAdd(h(1), MatMul(2, OneMatrix(3, 1)))),
        ("U.T @ W", MatMul(Transpose(U), W)),
        ("(U @ V).T", Transpose(MatMul(U, V))),
        ("U @ V @ W", MatMul(MatMul(U, V), W)),
        ("W @ h[1] * b", HadamardProduct(MatMul(W, h(1)), b)),
        ("tanh(W @ h[1] + U @ x[2])", _elementwise(sympy.tanh)(MatAdd(W @ h(1), U @ x(2)))),
        (
            "exp(b) * log(b)",
            HadamardProduct(_elementwise(sympy.exp)(b), _elementwise(sympy.log)(b)),
        ),
        ("ones(3, 1)", OneMatrix(3, 1)),
        ("ones(T, T - 1)", OneMatrix(3, 2)),
        (
            "diag(1 - h[1]**2) @ W",
            MatMul(DiagMatrix(MatAdd(OneMatrix(3, 1), neg(HadamardPower(h(1), 2)))), W),
        ),
        ("h[T]", h(3)),
        ("h[2*T - 3]", h(3)),
        ("h[-(-2)]", h(2)),
        ("T**2 + 1", sympy.Integer(10)),
        ("alpha**2 / 2", alpha**2 / 2),
        ("α * W", MatMul(A_GREEK, W)),
        ("(\n  W\n  @ h[1]\n)", MatMul(W, h(1))),
        ("  W  ", W),
    ],
)
def test_parse_builds_expected_object(text: str, expected: Any) -> None:
    assert parse(text, NS) == expected


def test_numbers_keep_literal_precision() -> None:
    assert parse("0.1", NS) == sympy.Float("0.1")
    long = "0.12345678901234567890123456789"
    assert parse(long, NS) == sympy.Float(long)
    assert parse(long, NS) != sympy.Float(float(long))
    assert parse("1_000.5", NS) == sympy.Float("1000.5")
    assert parse("1e-3 * W", NS) == MatMul(sympy.Float("1e-3"), W)
    assert parse("7", NS) == sympy.Integer(7)


def test_zero_matrices_are_dropped() -> None:
    assert parse("h[0]", NS) == ZeroMatrix(3, 1)
    assert parse("W @ h[0]", NS) == ZeroMatrix(3, 1)
    assert parse("W @ h[0] + b", NS) == b
    assert parse("b - h[0]", NS) == b
    assert parse("h[0] - b", NS) == neg(b)
    assert parse("h[0].T", NS) == ZeroMatrix(1, 3)
    assert parse("2 * h[0]", NS) == ZeroMatrix(3, 1)
    assert parse("0 * W", NS) == ZeroMatrix(3, 3)
    assert parse("h[0] * b", NS) == ZeroMatrix(3, 1)
    assert parse("sum_t(W @ h[t-1])", NS) == MatAdd(MatMul(W, h(1)), MatMul(W, h(2)))
    assert parse("sum_t(delta[t+1])", NS) == MatAdd(delta(2), delta(3))
    assert parse("sum_t(h[t-5])", NS) == ZeroMatrix(3, 1)


def test_sum_k_runs_from_first_step_to_t() -> None:
    got = parse("sum_t(sum_k(x[k]))", NS)
    expected = MatAdd(x(1), MatAdd(x(1), x(2)), MatAdd(x(1), x(2), x(3)))
    assert got == expected


def test_prod_j_is_in_jacobian_chain_order_with_identity_when_empty() -> None:
    got = parse("sum_t(sum_k(prod_j(D[j])))", NS)
    eye = Identity(3)
    expected = MatAdd(
        eye,  # t=1: k=1 (empty)
        MatAdd(D(2), eye),  # t=2: k=1, k=2
        MatAdd(MatMul(D(3), D(2)), D(3), eye),  # t=3: k=1, 2, 3
    )
    assert got == expected


def test_sum_k_outside_sum_t_is_a_chain_to_the_last_step() -> None:
    """A many_to_one chain: t is the last step."""
    assert parse("sum_k(x[k])", NS) == MatAdd(x(1), x(2), x(3))
    got = parse("sum_k(prod_j(D[j]) @ h[t])", NS)
    expected = MatAdd(
        MatMul(MatMul(D(3), D(2)), h(3)), MatMul(D(3), h(3)), MatMul(Identity(3), h(3))
    )
    assert got == expected


def test_sum_tau_runs_from_t_to_the_last_step() -> None:
    got = parse("sum_t(sum_tau(x[tau]))", NS)
    expected = MatAdd(MatAdd(x(1), x(2), x(3)), MatAdd(x(2), x(3)), x(3))
    assert got == expected


def test_prod_j_inside_sum_tau_is_the_chain_from_tau_down_to_t() -> None:
    """∂h_tau/∂h_t: D[tau] @ ... @ D[t+1], the identity when tau == t."""
    got = parse("sum_t(sum_tau(prod_j(D[j])))", NS)
    eye = Identity(3)
    expected = MatAdd(
        MatAdd(eye, D(2), MatMul(D(3), D(2))),  # t=1: tau=1, 2, 3
        MatAdd(eye, D(3)),  # t=2: tau=2, 3
        eye,  # t=3
    )
    assert got == expected


def test_a_comparison_with_zero_is_the_step_function() -> None:
    step = NS.functions["step"]
    assert parse("(h[1] > 0)", NS) == step(h(1))
    assert parse("0 < h[1]", NS) == step(h(1))
    assert parse("step(h[1])", NS) == step(h(1))
    assert parse("sum_t((h[t] > 0.0) * (W @ h[t]))", NS) == MatAdd(
        *[HadamardProduct(step(h(t)), MatMul(W, h(t))) for t in STEPS]
    )
    without = Namespace(NS.constants, NS.indexed, {}, STEPS, {"T": 3})
    assert "step function" in err("W @ (h[1] > 0)", without).message
    assert err("W @ (h[1] > 0)", without).offset == 5


def test_empty_product_identity_has_the_body_size() -> None:
    assert parse("sum_t(sum_k(prod_j(V @ V.T)))", NS).shape == (2, 2)
    # at t=1 the only term is the empty product:
    ns1 = Namespace(NS.constants, NS.indexed, NS.functions, (1,), {"T": 1})
    assert parse("sum_t(sum_k(prod_j(V @ V.T)))", ns1) == Identity(2)
    assert parse("sum_t(sum_k(prod_j(T)))", ns1) == 1


def _explicit(expr: Any, env: dict[Any, Any]) -> Any:
    """Evaluate a matrix expression with explicit matrices, node by node."""
    if not getattr(expr, "is_Matrix", False):
        return expr
    if expr in env:
        return sympy.Matrix(env[expr])
    args = [_explicit(arg, env) for arg in expr.args]
    if isinstance(expr, MatAdd):
        total = args[0]
        for arg in args[1:]:
            total = total + arg
        return total
    if isinstance(expr, MatMul):
        product: Any = sympy.Integer(1)
        for arg in args:
            product = product * arg
        return product
    if isinstance(expr, HadamardProduct):
        result = args[0]
        for arg in args[1:]:
            result = result.multiply_elementwise(arg)
        return result
    if isinstance(expr, HadamardPower):
        return args[0].applyfunc(lambda e: e ** args[1])
    if isinstance(expr, Transpose):
        return args[0].T
    if isinstance(expr, DiagMatrix):
        return sympy.diag(*args[0])
    if isinstance(expr, ElementwiseApplyFunction):
        return _explicit(expr.expr, env).applyfunc(expr.function)
    if isinstance(expr, (OneMatrix, ZeroMatrix, Identity)):
        return sympy.Matrix(expr.as_explicit())
    raise NotImplementedError(type(expr))


def test_bptt_formula_matches_explicit_computation() -> None:
    rng = random.Random(1)

    def rand(r: int, c: int) -> ImmutableMatrix:
        return ImmutableMatrix(r, c, [rng.randint(-3, 3) for _ in range(r * c)])

    env: dict[Any, Any] = {W: rand(3, 3), V: rand(2, 3)}
    for t in STEPS:
        env[h(t)] = rand(3, 1)
        env[x(t)] = rand(2, 1)
        env[y(t)] = rand(2, 1)
        env[y_hat(t)] = rand(2, 1)
    text = (
        "sum_t(sum_k(diag(1 - h[k]**2) @ prod_j(W.T @ diag(1 - h[j]**2)).T"
        " @ V.T @ (y_hat[t] - y[t]) @ x[k].T))"
    )
    got = _explicit(parse(text, NS), env)

    def jac(j: int) -> Any:  # W.T @ diag(1 - h_j**2)
        hj = env[h(j)]
        return env[W].T * sympy.diag(*[1 - e**2 for e in hj])

    expected = sympy.zeros(3, 2)
    for t in STEPS:
        err_t = env[V].T * (env[y_hat(t)] - env[y(t)])
        for k in STEPS:
            if k > t:
                continue
            chain = sympy.eye(3)
            for j in range(t, k, -1):  # body(t) @ body(t-1) @ ... @ body(k+1)
                chain = chain * jac(j)
            hk = env[h(k)]
            expected += sympy.diag(*[1 - e**2 for e in hk]) * chain.T * err_t * env[x(k)].T
    assert sympy.Matrix(got) == expected


def test_elementwise_ops_match_explicit_computation() -> None:
    M = ImmutableMatrix([[1, 2, 3], [4, 5, 6], [7, 8, 10]])
    v = ImmutableMatrix([1, 2, 4])
    got = _explicit(
        parse("(W * W.T) / 2 + W / W.T - 1 + W**2 @ h[1] @ h[1].T", NS), {W: M, h(1): v}
    )
    expected = sympy.Matrix(
        3, 3, lambda i, j: M[i, j] * M[j, i] / 2 + Rational(M[i, j], M[j, i]) - 1
    )
    expected += M.applyfunc(lambda e: e**2) * v * v.T
    assert sympy.Matrix(got) == expected


def test_names_used() -> None:
    assert names_used("sum_t(W @ h[t])") == frozenset({"sum_t", "W", "h", "t"})
    assert names_used("tanh(q) + T") == frozenset({"tanh", "q", "T"})
    with pytest.raises(ExpressionError):
        names_used("W.__class__")
    with pytest.raises(ExpressionError):
        names_used("'a'")


# ---------------------------------------------------------------------------
# Errors: offsets and messages


def test_error_is_a_value_error_with_caret_picture() -> None:
    e = err("W @ U.T")
    assert isinstance(e, ValueError)
    assert e.text == "W @ U.T"
    assert e.offset == 2
    assert e.message == "shapes (3, 3) and (2, 3) do not fit for @: inner sizes 3 and 2 differ"
    assert str(e) == e.message + "\n  W @ U.T\n    ^"
    again = pickle.loads(pickle.dumps(e))
    assert (again.message, again.text, again.offset) == (e.message, e.text, e.offset)


def test_unknown_name() -> None:
    e = err("W @ foo")
    assert e.offset == 4
    assert "'foo'" in e.message
    assert "allowed names" in e.message and "W" in e.message and "h[...]" in e.message
    assert "tanh(...)" in e.message and "sum_t(...)" in e.message
    assert "\n" not in e.message
    assert "did you mean 'W'" in err("Ww").message
    assert err("sum_t(hh[t])").offset == 6
    assert err("frob(W)").offset == 0
    assert err("h[i]").offset == 2


@pytest.mark.parametrize(
    ("text", "offset", "pieces"),
    [
        ("W @ U.T", 2, ["(3, 3)", "(2, 3)", "@"]),
        ("(W) @ (V)", 4, ["(3, 3)", "(2, 3)", "inner sizes 3 and 2"]),
        ("h[1] + x[1]", 5, ["(3, 1)", "(2, 1)", "+"]),
        ("h[1] - x[1]", 5, ["(3, 1)", "(2, 1)", "-"]),
        ("W * U", 2, ["(3, 3)", "(3, 2)", "*"]),
        ("W / U", 2, ["(3, 3)", "(3, 2)", "/"]),
        ("sum_t(h[t] @ h[t])", 11, ["(3, 1)", "(3, 1)", "@"]),
        ("(W\n @ U.T)", 4, ["(3, 3)", "(2, 3)"]),
        ("α * W @ U.T", 6, ["(3, 3)", "(2, 3)"]),
    ],
)
def test_shape_mismatch(text: str, offset: int, pieces: list[str]) -> None:
    e = err(text)
    assert e.offset == offset, str(e)
    for piece in pieces:
        assert piece in e.message


def test_offsets_count_characters_of_the_whole_text() -> None:
    assert err("   W @ U.T").offset == 5
    assert err("\n\tW @ U.T").offset == 4
    e = err("\tW @ U.T")
    assert str(e).endswith("\n  \tW @ U.T\n  \t  ^")
    assert err("(é\n + W)").offset == 1
    assert err("(α *\n W @ U.T)").offset == 8
    assert err("(W  # comment @\n   @ U.T)").offset == 19


def test_plain_error_without_text() -> None:
    e = ExpressionError("g has no step 9")
    assert str(e) == "g has no step 9"
    assert e.text == "" and e.offset is None
    assert str(ExpressionError("bad", "W @ U")) == "bad\n  W @ U"


def test_multiline_caret_shows_the_offending_line() -> None:
    e = err("(W\n @ U.T)")
    assert str(e).endswith("\n   @ U.T)\n   ^")


@pytest.mark.parametrize(
    ("text", "offset", "name"),
    [
        ("h[t]", 2, "t"),
        ("W @ t", 4, "t"),
        ("sum_t(h[t]) + h[t]", 16, "t"),
        ("sum_t(x[k])", 8, "k"),
        ("sum_t(sum_k(h[j]))", 14, "j"),
    ],
)
def test_bound_variables_only_inside_their_reducer(text: str, offset: int, name: str) -> None:
    e = err(text)
    assert e.offset == offset
    assert e.message.startswith(f"{name} can only be used inside")


@pytest.mark.parametrize(
    ("text", "offset", "piece"),
    [
        ("sum_tau(x[tau])", 0, "sum_tau"),
        ("sum_t(sum_k(sum_tau(x[tau])))", 12, "sum_tau(...) cannot be used inside sum_k"),
        ("sum_t(sum_tau(sum_k(x[k])))", 14, "sum_k(...) cannot be used inside sum_tau"),
        ("h[1] >= 0", 5, ">="),
        ("h[1] > 1", 5, "only (A > 0)"),
        ("0 > h[1]", 2, "only (A > 0)"),
        ("h[1] == 0", 5, "=="),
        ("0 < h[1] < 1", 9, "chained"),
        ("h[1] in W", 5, "in"),
        ("sum_t(prod_j(W))", 6, "prod_j"),
        ("sum_t(sum_t(h[t]))", 6, "sum_t"),
        ("sum_t(h[t], h[t])", 0, "one argument"),
        ("sum_t()", 0, "one argument"),
        ("sum_t(sum_k(prod_j(U)))", 12, "(3, 2)"),
        ("sum_t", 0, "sum_t"),
        ("h", 0, "h[t]"),
        ("W + tanh", 4, "tanh"),
        ("W(1)", 0, "W is not a function"),
        ("t(1)", 0, "t is not a function"),
        ("T.T", 2, ".T"),
        ("2 @ W", 2, "@"),
        ("W @ 2", 2, "@"),
        ("W / 0", 2, "division by zero"),
        ("alpha / (1 - 1)", 6, "division by zero"),
        ("W ** W", 2, "exponent"),
        ("W // 2", 2, "//"),
        ("W % 2", 2, "%"),
        ("W | W", 2, "|"),
        ("~W", 0, "~"),
        ("not W", 0, "not"),
        ("tanh(W, W)", 0, "tanh"),
        ("ones(-1, 2)", 0, "ones"),
        ("diag(W, 1)", 0, "diag"),
        ("h[0.5]", 2, "integer"),
        ("h[W]", 2, "W"),
        ("h[t**2]", 3, "**"),
        ("2**10**10", 1, "exponent"),
        ("(2*alpha)**1000**1000", 9, "exponent"),
        ("0**-1", 1, "non-finite"),
        ("W @ g[9]", 4, "g has no step 9"),
        ("broken[1]", 0, "broken[1]"),
        ("W.T.T.dot", 6, ".dot"),
        ("1j * W", 0, "complex"),
        ("W @ h[1] @", 0, "syntax error"),
        ("W @ (U", 4, "syntax error"),
        ("W $ U", 2, "syntax error"),
        ("", 0, "empty"),
        ("   ", 0, "empty"),
    ],
)
def test_errors_point_at_the_offender(text: str, offset: int, piece: str) -> None:
    e = err(text)
    assert e.offset == offset, str(e)
    assert piece in e.message, str(e)
    assert "\n" not in e.message


def test_too_long_input() -> None:
    text = "W+" * 1000 + "W"
    assert len(text) > MAX_LENGTH
    e = err(text)
    assert e.offset == MAX_LENGTH
    assert "too long" in e.message and str(MAX_LENGTH) in e.message
    assert len(str(e).splitlines()[1]) < 200  # the picture is trimmed


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("(" * 500 + "W" + ")" * 500, MAX_DEPTH),
        ("-" * 1000 + "W", MAX_DEPTH),
        ("W" + ".T" * 100, None),
        ("tanh(" * 100 + "W" + ")" * 100, None),
        ("h[" * 100 + "1" + "]" * 100, None),
    ],
)
def test_too_deep_input(text: str, offset: int | None) -> None:
    e = err(text)
    assert "too deeply" in e.message
    if offset is not None:
        assert e.offset == offset


def test_deep_but_allowed_input() -> None:
    assert parse("(" * MAX_DEPTH + "W" + ")" * MAX_DEPTH, NS) == W
    assert parse("+" * (MAX_DEPTH - 1) + "W", NS) == W
    assert err("+" * MAX_DEPTH + "W").offset == MAX_DEPTH


def test_long_operator_chains_count_as_nesting() -> None:
    # a + b + c is ((a + b) + c): a chain of n operands is n levels deep
    assert isinstance(parse(" + ".join(["W"] * MAX_DEPTH), NS), MatAdd)
    assert "too deeply" in err(" + ".join(["W"] * (MAX_DEPTH + 1))).message


def test_very_long_unary_chain_is_refused() -> None:
    e = err("-" * 5000 + "W")
    assert isinstance(e, ExpressionError)


def test_indexed_error_keeps_its_own_offset_when_it_has_one() -> None:
    def picky(step: int) -> Any:
        raise ExpressionError("nope", "q[9]", 1)

    ns = Namespace(NS.constants, {"q": picky}, {}, STEPS)
    assert err("W + q[9]", ns).offset == 4  # offset refers to another text: ours is used
    assert err("q[9]", ns).offset == 1


# ---------------------------------------------------------------------------
# Injection attempts: refused, and nothing runs


INJECTIONS = [
    "__import__('os').system('echo hacked')",
    "x.__class__.__mro__[-1].__subclasses__()",
    "W.__class__.__mro__[-1].__subclasses__()",
    "(lambda: 1)()",
    "[a for a in ()]",
    "{a: 1 for a in ()}",
    "(a for a in ())",
    "W.__class__",
    "getattr(W, 'T')",
    "open('f')",
    '"a"',
    "b'a'",
    "W if T else U",
    "T and W",
    "T or W",
    "W == W",
    "f'{W}'",
    'f\'{__import__("os").system("echo hacked")}\'',
    "W[0]",
    "h[0:1]",
    "h[1, 2]",
    "h[t].T.T.__dict__",
    "tanh(A=W)",
    "tanh(*[W])",
    "tanh(**{'A': W})",
    "tanh(W)(W)",
    "tanh.__call__(W)",
    "(x := W)",
    "None",
    "True",
    "...",
    "[W]",
    "(W, U)",
    "{W}",
    "W.T[0]",
    "h[1][0]",
    "__builtins__",
    "h[__import__('os').getpid()]",
    "sum_t(__import__)",
    "ones(3, 1).__class__",
    "(yield)",
    "await W",
    "exec('1')",
    "eval('1')",
    "W.T.__init__.__globals__",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_is_refused_and_nothing_runs(
    text: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[Any] = []

    def fake_system(*args: Any) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr(os, "system", fake_system)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExpressionError):
        parse(text, NS)
    _check_total(text)
    assert calls == []
    assert list(tmp_path.iterdir()) == []


def test_file_creation_attempt_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    for text in [
        f"open({str(target)!r}, 'w')",
        f"__import__('pathlib').Path({str(target)!r}).touch()",
        f"__import__('os').system('touch {target}')",
    ]:
        with pytest.raises(ExpressionError):
            parse(text, NS)
    assert not target.exists()


def test_validation_happens_before_any_namespace_callable_runs() -> None:
    seen: list[int] = []

    def spy(step: int) -> Any:
        seen.append(step)
        return MatrixSymbol(f"s_{step}", 3, 1)

    ns = Namespace({"W": W}, {"s": spy}, {}, STEPS)
    for text in ["s[1] + W.__class__", "s[1] + open('f')", "s[2] @ (lambda: 0)()"]:
        with pytest.raises(ExpressionError):
            parse(text, ns)
    assert seen == []


# ---------------------------------------------------------------------------
# Fuzzing: only sympy results or ExpressionError, never anything else


def _check_total(text: str) -> None:
    try:
        result = parse(text, NS)
    except ExpressionError as e:
        assert isinstance(e.message, str) and "\n" not in e.message
        assert e.message.strip(), "an ExpressionError must say what is wrong"
        assert e.offset is None or 0 <= e.offset <= len(text)
        shown = str(e)
        assert shown.startswith(e.message)  # the message names the problem first
        if e.offset is not None and text.strip() and "\n" not in text and e.text == text:
            # the caret line points inside (or just past) the offending text
            caret = shown.split("\n")[-1]
            assert caret.strip() == "^"
    else:
        assert isinstance(result, sympy.Basic)
    try:
        names = names_used(text)
    except ExpressionError:
        pass
    else:
        assert all(isinstance(n, str) for n in names)


ALPHABET_TOKENS = [
    *"WUVbhxyTtkj0123456789.+-*/@()[], _",
    "y_hat",
    "delta",
    "alpha",
    ".T",
    "**",
    "tanh(",
    "exp(",
    "log(",
    "diag(",
    "ones(",
    "sum_t(",
    "sum_k(",
    "prod_j(",
    "__",
    "'",
    "lambda",
    ":",
    "=",
    "\n",
    "#",
    "1e",
    "é",
]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_fuzz_arbitrary_text(text: str) -> None:
    _check_total(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET_TOKENS), max_size=40).map("".join))
def test_fuzz_language_alphabet(text: str) -> None:
    _check_total(text)


NAMES = ["W", "U", "V", "b", "T", "alpha", "t", "k", "j", "q", "h", "tanh"]
INDEXED = ["h", "x", "y", "y_hat", "delta", "D", "g", "W"]
INDICES = ["t", "t-1", "t+1", "k", "k+1", "j", "j-1", "0", "1", "T", "2*t-1", "5", "T-t", "q"]
NUMBERS = ["0", "1", "2", "0.5", "1e-3", "3", "1000", "-1"]
BAD = ["'s'", "W.__class__", "(lambda: W)", "[W]", "W[0]", "None", "W if T else U", "W.dot"]

leaves = st.one_of(
    st.sampled_from(NAMES),
    st.builds(lambda n, i: f"{n}[{i}]", st.sampled_from(INDEXED), st.sampled_from(INDICES)),
    st.sampled_from(NUMBERS),
    st.sampled_from(["ones(3, 1)", "ones(2, 3)", "ones(T, T)"]),
    st.sampled_from(BAD),
)


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(
            lambda a, op, c: f"{a} {op} {c}",
            children,
            st.sampled_from(["+", "-", "*", "/", "@", "**", "@", "*"]),
            children,
        ),
        st.builds(lambda a: f"({a})", children),
        st.builds(lambda a: f"-{a}", children),
        st.builds(lambda a: f"{a}.T", children),
        st.builds(
            lambda f, a: f"{f}({a})",
            st.sampled_from(["tanh", "exp", "log", "diag", "sum_t", "sum_k", "prod_j", "q"]),
            children,
        ),
        st.builds(lambda a, c: f"ones({a}, {c})", children, children),
    )


expressions = st.recursive(leaves, _extend, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(expressions)
def test_fuzz_grammar(text: str) -> None:
    _check_total(text)


@settings(max_examples=200, deadline=None)
@given(expressions, st.integers(min_value=0, max_value=200), st.text(string.printable, max_size=3))
def test_fuzz_grammar_with_corruption(text: str, pos: int, noise: str) -> None:
    pos = min(pos, len(text))
    _check_total(text[:pos] + noise + text[pos:])


def test_surrogates_and_null_bytes() -> None:
    for text in ["\ud800W", "W\x00", "W @ \x00", "\x0bW"]:
        _check_total(text)
        with pytest.raises(ExpressionError):
            parse(text, NS)
