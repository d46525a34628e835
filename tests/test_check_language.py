"""What hand derivations need from the expression language, checked against the derivation.

The step function of ReLU's derivative (``step(z[t])``, ``(z[t] > 0)``), a sum
over future steps (``sum_tau``, τ from t to T as d2l writes Σ_{i=t}^{T}), a
many_to_one chain (``sum_k`` outside ``sum_t``) and gate names: each right
formula is EQUAL to the derivation's gradient, each wrong one NOT EQUAL with
the mutation that reproduces it named.  No expected value is typed here: the
checker compares with the derivation.
"""

from __future__ import annotations

import pytest

from symbptt import ExpressionError, ModelSpec
from symbptt.check import check, correct_formula

RELU = ModelSpec(hidden="relu", steps=3, batch=1)
#: ∂h_tau/∂h_t of ReLU's Elman cell, one example: diag(step(z[j])) @ W_hh, j = tau .. t+1
CHAIN = "prod_j(diag(step(z[j])) @ W_hh)"
#: ∂L/∂h_t: every later loss sent back along the chain (d2l's sum over i from t to T)
DH = f"sum_tau(({CHAIN}).T @ W_hy.T @ (y_hat[tau] - y[tau]))"


@pytest.mark.parametrize("step", ["step(z[t])", "(z[t] > 0)", "(0 < z[t])", "heaviside(h[t])"])
def test_relu_derivative_as_a_step_function_is_equal(step: str) -> None:
    result = check(RELU, "W_hh", f"sum_t(({step} * {DH}) @ h[t-1].T)", points=5)
    assert result.ok, result.explain()


def test_the_printed_relu_formula_parses_and_is_equal() -> None:
    formula = correct_formula(RELU, "W_hh")
    assert "heaviside(h[t])" in str(formula)
    delta = "(W_hy.T @ ((y_hat[t] - y[t]) / m) + W_hh.T @ delta[t+1]) * heaviside(h[t])"
    assert check(RELU, "W_hh", f"sum_t(({delta}) @ h[t-1].T)", points=5).ok


def test_relu_without_its_step_function_is_named() -> None:
    result = check(RELU, "W_hh", f"sum_t(({DH}) @ h[t-1].T)", points=5)
    assert not result.ok
    assert result.mistake_names == ("no_derivative",), result.explain()
    assert "the recursion behind it is right" in result.explain()


def test_a_sum_over_future_steps_is_equal_and_a_transposed_chain_is_named() -> None:
    spec = ModelSpec(steps=3, batch=1)
    chain = "prod_j(diag(1 - h[j]**2) @ W_hh)"
    dh = f"sum_tau(({chain}).T @ W_hy.T @ (y_hat[tau] - y[tau]))"
    right = f"sum_t(((1 - h[t]**2) * {dh}) @ x[t].T)"
    assert check(spec, "W_xh", right, points=5).ok
    wrong = right.replace("@ W_hh)", "@ W_hh.T)")
    result = check(spec, "W_xh", wrong, points=5)
    assert not result.ok
    assert result.mistake_names == ("transposed_weight",), result.explain()


MANY_TO_ONE = ModelSpec(steps=3, batch=1, mode="many_to_one")
#: the seeds' chain: ∂L/∂W_hh = Σ_k (∂h_T/∂h_k)^T ∂L/∂h_T, t standing for the last step
SEED = "sum_k((diag(1 - h[k]**2) @ ({chain}).T @ W_hy.T @ (y_hat[T] - y[T])) @ h[{k}].T)"
M2O_CHAIN = "prod_j(diag(1 - h[j]**2) @ W_hh)"


def test_sum_k_in_a_many_to_one_chain_is_equal() -> None:
    result = check(MANY_TO_ONE, "W_hh", SEED.format(chain=M2O_CHAIN, k="k-1"), points=5)
    assert result.ok, result.explain()


def test_sum_k_in_a_many_to_one_chain_off_by_one_is_named() -> None:
    result = check(MANY_TO_ONE, "W_hh", SEED.format(chain=M2O_CHAIN, k="k"), points=5)
    assert not result.ok
    assert result.mistake_names == ("off_by_one",), result.explain()


GATED = ModelSpec(cell="lstm", steps=3)
DC = (
    "(W_hy.T @ ds[t] + W_hi.T @ delta_i[t+1] + W_hf.T @ delta_f[t+1] + W_ho.T @ delta_o[t+1]"
    " + W_hc.T @ delta_g[t+1]) * o[t] * (1 - tanh(c[t])**2) + dc[t+1] * f[t+1]"
)


def test_gate_names_written_out_are_equal() -> None:
    right = f"sum_t((({DC}) * c[t-1] * f[t] * (1 - f[t])) @ h[t-1].T)"
    assert check(GATED, "W_hf", right, points=4).ok


def test_another_gates_derivative_in_a_formula_is_named() -> None:
    """sigma'(i) where sigma'(f) belongs: one gate's Jacobian factor swapped."""
    wrong = f"sum_t((({DC}) * c[t-1] * i[t] * (1 - i[t])) @ h[t-1].T)"
    result = check(GATED, "W_hf", wrong, points=4)
    assert not result.ok
    assert result.mistake_names == ("swapped_factor",), result.explain()
    assert "(1 - i[t]) * i[t] where (1 - f[t]) * f[t] belongs" in result.explain()


@pytest.mark.parametrize(
    ("text", "offset", "piece"),
    [
        ("sum_t(((z[t] >= 0) * delta[t]) @ h[t-1].T)", 13, ">="),
        ("sum_t(((z[t] > 1) * delta[t]) @ h[t-1].T)", 13, "only (A > 0)"),
        ("sum_tau(delta[tau] @ h[tau-1].T)", 0, "sum_tau(...) can only be used inside sum_t"),
        ("sum_t(delta[tau] @ h[t-1].T)", 12, "tau can only be used inside sum_tau"),
    ],
)
def test_bad_formulas_are_one_expression_error_at_the_place(
    text: str, offset: int, piece: str
) -> None:
    with pytest.raises(ExpressionError) as info:
        check(RELU, "W_hh", text)
    assert info.value.offset == offset, str(info.value)
    assert piece in info.value.message, str(info.value)
