"""The project's NumPy printer: one exact-string test per override (as SymPy's test_numpy.py)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from symbptt.codegen.numpy_printer import (
    LSE,
    LogSumExp,
    NumPyPrinter,
    SumEntries,
    activation_helper,
    helper_form,
    helper_source,
    is_safe,
    numpy_code,
    safe_form,
    stable_unit_loss,
)
from symbptt.expr import functions, mexpr

n, k, m, T = sp.symbols("n k m T", integer=True, positive=True)
A = sp.MatrixSymbol("A", n, m)
B = sp.MatrixSymbol("B", n, m)
W = sp.MatrixSymbol("W", n, k)
x = sp.MatrixSymbol("x", k, m)
b = sp.MatrixSymbol("b", n, 1)
z, a, y = functions.z, functions.a, functions.y


def ew(name: str, arg: sp.Basic) -> sp.Basic:
    return functions.elementwise(name, arg)


# -- products, sums, broadcasting --------------------------------------------------
def test_matmul_prints_at() -> None:
    assert numpy_code(W * x) == "W @ x"
    assert numpy_code(W * x * x.T) == "W @ x @ x.T"
    x2 = sp.MatrixSymbol("x2", k, m)
    assert numpy_code(W * (x + x2)) == "W @ (x + x2)"


def test_bias_broadcast_prints_plain_broadcasting() -> None:
    column = mexpr.add(W * x, mexpr.broadcast_bias(b, "column", m))
    assert numpy_code(column) == "W @ x + b"
    X = sp.MatrixSymbol("X", m, k)
    V = sp.MatrixSymbol("V", k, n)
    row = mexpr.add(X * V, mexpr.broadcast_bias(b, "row", m))
    assert numpy_code(row) == "X @ V + b.T"


def test_sum_over_examples_and_units_prints_sum_with_keepdims() -> None:
    assert numpy_code(mexpr.sum_columns(A, "column")) == "A.sum(axis=1, keepdims=True)"
    rows = sp.MatrixSymbol("R", m, n)
    assert numpy_code(mexpr.sum_columns(rows, "row")) == "R.sum(axis=0)[:, None]"
    assert numpy_code(sp.OneMatrix(1, n) * A) == "A.sum(axis=0, keepdims=True)"
    spread = mexpr.matmul(sp.OneMatrix(n, 1), mexpr.matmul(sp.OneMatrix(1, n), A))
    assert numpy_code(mexpr.add(B, mexpr.scale(-1, spread))) == "B - A.sum(axis=0, keepdims=True)"
    square = sp.OneMatrix(n, n) * A  # SymPy folds 1 1^T into an n x n block of ones
    assert numpy_code(mexpr.add(B, mexpr.scale(-1, square))) == "B - A.sum(axis=0, keepdims=True)"
    assert numpy_code(mexpr.add(B, A * sp.OneMatrix(m, m))) == "B + A.sum(axis=1, keepdims=True)"


def test_hadamard_product_power_and_transpose() -> None:
    assert numpy_code(sp.HadamardProduct(A, B)) == "A * B"
    assert numpy_code(sp.HadamardProduct(A, sp.HadamardPower(B, -1))) == "A / B"
    assert numpy_code(sp.HadamardPower(A, 2)) == "A**2"
    assert numpy_code(sp.HadamardPower(A + B, 2)) == "(A + B) ** 2"
    assert numpy_code(sp.HadamardPower(A, -1)) == "1 / A"
    assert numpy_code(sp.Transpose(A)) == "A.T"
    assert numpy_code(sp.Transpose(A + B)) == "(A + B).T"


def test_all_ones_matrix_in_a_sum_is_the_scalar_one() -> None:
    expr = mexpr.add(sp.OneMatrix(n, m), mexpr.scale(-1, sp.HadamardPower(A, 2)))
    assert numpy_code(expr) == "1 - A**2"
    assert numpy_code(mexpr.scale(3, sp.OneMatrix(n, m))) == "3"


def test_scalar_coefficients_print_as_division() -> None:
    assert numpy_code(mexpr.scale(1 / m, A + B)) == "(A + B) / m"
    assert numpy_code(mexpr.scale(1 / (T * m), A)) == "A / (T * m)"
    assert numpy_code(mexpr.scale(-1, A)) == "-A"
    assert numpy_code(mexpr.scale(2, W * x)) == "2 * W @ x"
    assert numpy_code(mexpr.add(A, mexpr.scale(-1, B))) == "A - B"
    assert numpy_code(mexpr.add(mexpr.scale(-1, B), A)) == "A - B"


def test_scalar_expressions_follow_ruff_spacing() -> None:
    assert numpy_code(z / 2) == "z / 2"
    assert numpy_code(-z / 2) == "-z / 2"
    assert numpy_code(1 - z**2) == "1 - z**2"
    assert numpy_code((1 - z) ** 2) == "(1 - z) ** 2"
    assert numpy_code(2 * y * z / m) == "2 * y * z / m"
    assert numpy_code(sp.Rational(1, 2)) == "1 / 2"


def test_a_unary_minus_before_a_power_is_parenthesised_as_ruff_writes_it() -> None:
    """``-z**2`` is ``-(z**2)`` in Python; ``ruff format`` writes the parentheses, so the
    printer does (a composed JAX module failed the ruff check with ``-h[t] ** 2``)."""
    H = sp.MatrixSymbol("H", 2, 3)
    assert numpy_code(-(z**2)) == "-(z**2)"
    assert numpy_code(-(z**2) / y) == "-(z**2 / y)"
    assert numpy_code(-((1 - z) ** 2)) == "-((1 - z) ** 2)"
    assert numpy_code(mexpr.scale(-1, sp.HadamardPower(H, 2))) == "-(H**2)"
    assert numpy_code(-2 * z**2) == "-2 * z**2"  # the minus is the number's
    assert numpy_code(y - z**2) == "y - z**2"


# -- functions ---------------------------------------------------------------------
def test_elementwise_functions_print_from_their_definitions() -> None:
    assert numpy_code(ew("tanh", A)) == "np.tanh(A)"
    assert numpy_code(ew("relu", A)) == "np.maximum(0, A)"
    assert numpy_code(ew("identity", A)) == "A"
    printer = NumPyPrinter()
    assert printer.doprint(ew("sigmoid", A)) == "sigmoid(A)"
    assert printer.helpers == {"sigmoid"}
    heaviside = ElementwiseApplyFunction(sp.Lambda(z, sp.Heaviside(z, 0)), A)
    assert numpy_code(heaviside) == "np.heaviside(A, 0)"
    exp = ElementwiseApplyFunction(sp.Lambda(z, sp.exp(z)), mexpr.scale(-1, A))
    assert numpy_code(exp) == "np.exp(-A)"
    square = ElementwiseApplyFunction(sp.Lambda(z, z**2 + z), A + B)
    assert numpy_code(square) == "(A + B) ** 2 + (A + B)"


def test_elementwise_into_writes_one_ufunc_call() -> None:
    printer = NumPyPrinter()
    assert printer.elementwise_into(ew("tanh", A), "z_t", "h_t") == "np.tanh(z_t, out=h_t)"
    assert printer.elementwise_into(ew("relu", A), "z", "h") == "np.maximum(0, z, out=h)"
    assert printer.elementwise_into(ew("sigmoid", A), "z", "h") is None


def test_logs_print_stably() -> None:
    assert numpy_code(sp.log(1 + sp.exp(-z))) == "np.logaddexp(0, -z)"
    assert numpy_code(sp.log(1 - a)) == "np.log1p(-a)"
    assert numpy_code(sp.log(a)) == "np.log(a)"
    assert numpy_code(sp.Heaviside(z)) == "np.heaviside(z, 1 / 2)"
    assert numpy_code(sp.Max(z, 0)) == "np.maximum(0, z)"


def test_softmax_and_log_sum_exp_call_helpers() -> None:
    printer = NumPyPrinter()
    assert printer.doprint(mexpr.Softmax(A, 0)) == "softmax(A, axis=0)"
    assert printer.doprint(LogSumExp(A, 1)) == "logsumexp(A, axis=1)"
    assert printer.helpers == {"softmax", "logsumexp"}
    given = NumPyPrinter({mexpr.Softmax(A, 1): "P"})
    assert given.doprint(LogSumExp(A, 1)) == "logsumexp(A, axis=1, softmax=P)"


def test_output_loss_prints_the_stable_sum() -> None:
    P, Y = sp.MatrixSymbol("P", n, m), sp.MatrixSymbol("Y", n, m)
    ce = mexpr.OutputLoss(A, P, Y, "softmax", "cross_entropy", 0)
    assert numpy_code(ce) == "(Y * (logsumexp(A, axis=0) - A)).sum()"
    bce = mexpr.OutputLoss(A, P, Y, "sigmoid", "binary_cross_entropy", 0)
    assert numpy_code(bce) == "(np.logaddexp(0, A) - Y * A).sum()"
    se = mexpr.OutputLoss(A, P, Y, "identity", "squared_error", 0)
    assert numpy_code(se) == "((P - Y) ** 2 / 2).sum()"
    assert numpy_code(SumEntries(A + B)) == "(A + B).sum()"


def test_names_map_symbols_to_code() -> None:
    h_prev = sp.MatrixSymbol("h_t-1", n, m)
    assert numpy_code(W.T * h_prev, {h_prev: "h_prev"}) == "W.T @ h_prev"
    assert numpy_code(sp.Transpose(W), {sp.Transpose(W): "W_T"}) == "W_T"
    with pytest.raises(ValueError, match="h_t-1"):
        numpy_code(h_prev)


def test_imports_are_numpy_as_np() -> None:
    printer = NumPyPrinter()
    printer.doprint(sp.tanh(z) + sp.exp(z))
    assert dict(printer.module_imports) == {"np": {"tanh", "exp"}}


# -- stable forms, derived ---------------------------------------------------------
def test_sigmoid_safe_form_is_equal_and_cannot_overflow() -> None:
    definition = functions.ACTIVATIONS["sigmoid"].definition
    safe = safe_form(definition)
    assert not is_safe(definition)
    assert is_safe(safe)
    assert sp.simplify((safe - definition).rewrite(sp.exp)) == 0
    assert safe == sp.tanh(z / 2) / 2 + sp.Rational(1, 2)


def test_safety_rules() -> None:
    assert is_safe(sp.tanh(z))
    assert is_safe(sp.log(1 + sp.exp(z)))
    assert not is_safe(sp.exp(z))
    assert not is_safe(1 / (1 + z**2))
    assert safe_form(sp.log(1 + sp.exp(z))) == sp.log(1 + sp.exp(z))


def test_helper_of_an_activation_is_printed_from_its_safe_form() -> None:
    assert helper_source("sigmoid") == (
        "def sigmoid(z):\n"
        '    """sigmoid(z) = 1/(1 + exp(-z)), evaluated as tanh(z/2)/2 + 1/2."""\n'
        "    return np.tanh(z / 2) / 2 + 1 / 2\n"
    )
    assert activation_helper(functions.ACTIVATIONS["tanh"].function) is None
    assert activation_helper(functions.ACTIVATIONS["relu"].function) is None
    assert "np.exp(x - top)" in helper_source("logsumexp")
    assert "x.max(axis=axis, keepdims=True)" in helper_source("softmax")


def test_softmax_and_logsumexp_helpers_equal_the_maximum_forms_bit_for_bit() -> None:
    # One example a row, the helpers find the largest entry with argmax (NumPy's
    # x.max(axis=1) is several times slower along short rows): the same values as the
    # x.max forms, NaN and infinities included; other layouts take x.max itself.
    space: dict[str, object] = {"np": np}
    exec(helper_source("softmax") + helper_source("logsumexp"), space)
    softmax, logsumexp = space["softmax"], space["logsumexp"]

    def by_max(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        top = x.max(axis=axis, keepdims=True)
        e = np.exp(x - top)
        p = e / e.sum(axis=axis, keepdims=True)
        given = top - np.log(p.max(axis=axis, keepdims=True))
        return p, given, top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))

    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        x = (rng.normal(size=(9, 5)) * 30).astype(dtype)
        x[1] = x[1, 0]  # ties: every entry the largest
        x[2, 3] = np.inf
        x[3, 1] = -np.inf
        x[4, 2] = np.nan
        x[5] = -np.inf
        for array, axis in ((x, 1), (x, -1), (x.T, 0), (x[None], 2)):
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                expected = by_max(array, axis)
                p = softmax(array, axis)
                got = (p, logsumexp(array, axis, softmax=p), logsumexp(array, axis))
                assert softmax(array, axis, out=np.empty_like(array)) is not None
            for a, b in zip(got, expected, strict=True):
                assert a.shape == b.shape and a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)


def test_stable_losses_equal_their_definitions() -> None:
    o = sp.symbols("o0:3", real=True)
    t = sp.symbols("t0:3", positive=True)
    total = sp.log(sum(sp.exp(u) for u in o))
    softmax = [sp.exp(u) / sum(sp.exp(v) for v in o) for u in o]
    ce = stable_unit_loss("softmax", "cross_entropy")
    assert ce == y * (LSE - z)
    point = dict(zip(o, (sp.Rational(3, 10), sp.Rational(-7, 5), 2), strict=True))
    point.update(zip(t, (sp.Rational(1, 5), sp.Rational(1, 2), sp.Rational(3, 10)), strict=True))
    for i in range(3):
        stable = ce.xreplace({z: o[i], y: t[i], LSE: total})
        direct = functions.LOSSES["cross_entropy"].definition.xreplace({a: softmax[i], y: t[i]})
        assert abs(sp.N((stable - direct).xreplace(point), 30)) < 1e-25
    bce = stable_unit_loss("sigmoid", "binary_cross_entropy")
    assert is_safe(bce)
    sigmoid = functions.ACTIVATIONS["sigmoid"].definition
    direct = functions.LOSSES["binary_cross_entropy"].definition.xreplace({a: sigmoid})
    assert sp.simplify(sp.expand_log(bce - direct, force=True)) == 0
    assert stable_unit_loss("identity", "squared_error") == (a - y) ** 2 / 2


def test_stable_forms_stay_finite_at_extreme_logits() -> None:
    bce = stable_unit_loss("sigmoid", "binary_cross_entropy")
    code = numpy_code(bce, {z: "u", y: "t"})
    u = np.array([-1000.0, 0.0, 1000.0])
    t = np.array([1.0, 0.0, 0.0])
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        values = eval(code, {"np": np, "u": u, "t": t})
    assert np.all(np.isfinite(values))
    assert values[0] == pytest.approx(1000.0) and values[2] == pytest.approx(1000.0)


# -- helper activations written in place --------------------------------------------
def test_helper_form_lifts_an_activations_safe_form() -> None:
    form = functions.ACTIVATIONS["sigmoid"].function
    found = helper_form(form, (n, m))
    assert found is not None
    placeholder, body = found
    assert numpy_code(body, {placeholder: "z"}) == "1 / 2 + np.tanh(z / 2) / 2"
    assert helper_form(functions.ACTIVATIONS["tanh"].function, (n, m)) is None  # one np call


def test_the_lowering_s_statements_for_numpy() -> None:
    p = NumPyPrinter()
    assert p.call_into("dot", ["a", "b"], "z") == "np.dot(a, b, out=z)"
    assert p.call_into("subtract", ["1", "x"], "x") == "np.subtract(1, x, out=x)"
    assert p.steps_reversed("d_seq[1:T]") == "d_seq[1:T][::-1]"
    assert p.copy_of("W.T") == "W.T.copy()"
