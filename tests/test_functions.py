"""Activations, outputs and losses: derivatives come from the definitions."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symbptt
from symbptt.expr import functions, mexpr
from symbptt.expr.functions import a, y, z
from symbptt.oracle.verify import scalar_proof


def test_tanh_derivative_is_written_through_the_output() -> None:
    expr, form = functions.ACTIVATIONS["tanh"].derivative
    assert form == "output"
    assert sp.expand(expr - (1 - a**2)) == 0


def test_sigmoid_derivative_is_s_times_one_minus_s() -> None:
    expr, form = functions.ACTIVATIONS["sigmoid"].derivative
    assert form == "output"
    assert sp.expand(expr - a * (1 - a)) == 0


def test_relu_derivative_at_zero_is_zero() -> None:
    expr, _ = functions.ACTIVATIONS["relu"].derivative
    at_zero = expr.subs({a: 0, z: 0})
    assert at_zero == 0
    assert expr.subs({a: sp.Rational(1, 2), z: sp.Rational(1, 2)}) == 1


def test_identity_derivative_is_one() -> None:
    assert functions.ACTIVATIONS["identity"].derivative == (1, "output")


def test_derivatives_agree_with_sympy_diff_of_the_definition() -> None:
    for act in functions.ACTIVATIONS.values():
        expr, form = act.derivative
        as_input = expr.subs(a, act.definition) if form == "output" else expr
        for point in (sp.Rational(-3, 2), sp.Rational(-1, 5), sp.Rational(2, 5), sp.Integer(2)):
            want = sp.diff(act.definition, z).subs(z, point).evalf(30)
            assert abs(as_input.subs(z, point).evalf(30) - want) < 1e-25, act.name


@pytest.mark.parametrize(
    ("output", "loss"),
    [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy")],
)
def test_fused_pairs_come_out_as_prediction_minus_target(output: str, loss: str) -> None:
    result = functions.output_loss_gradient(output, loss)
    # the raw derivative is what sympy.diff gave: not the shortcut itself
    assert sp.simplify(result.derived) != result.fused
    assert result.fused is not None and sp.expand(result.fused - (a - y)) == 0


def test_softmax_squared_error_couples_units_and_is_chained() -> None:
    assert functions.output_loss_gradient("softmax", "squared_error").fused is None


def test_sigmoid_squared_error_is_fused_elementwise() -> None:
    fused = functions.output_loss_gradient("sigmoid", "squared_error").fused
    assert fused is not None and sp.expand(fused - (a - y) * a * (1 - a)) == 0


def test_relu_squared_error_keeps_the_gate() -> None:
    fused = functions.output_loss_gradient("relu", "squared_error").fused
    assert fused is not None
    assert fused.has(sp.Heaviside)


def test_lift_builds_hadamard_expressions() -> None:
    n, m = sp.symbols("n m", integer=True, positive=True)
    H = sp.MatrixSymbol("H", n, m)
    lifted = functions.lift(1 - a**2, {a: H}, (n, m))
    assert lifted == sp.MatAdd(sp.OneMatrix(n, m), sp.MatMul(-1, mexpr.HadamardPower(H, 2)))


def test_new_activation_by_definition_alone_gets_correct_gradients(
    rng: np.random.Generator,
) -> None:
    functions.register_activation("softplus", sp.log(1 + sp.exp(z)))
    try:
        spec = symbptt.ModelSpec(steps=2, hidden="softplus", n_in=2, n_hidden=2, n_out=2, batch=2)
        proof = scalar_proof(spec, rng)
        assert proof.entries == 4 + 4 + 4 + 2 + 2
        assert proof.ok, proof.max_relative_error
        # its derivative was derived, and written through the output: 1 - exp(-a)
        expr, form = functions.ACTIVATIONS["softplus"].derivative
        assert form == "output" and sp.simplify(expr - (1 - sp.exp(-a))) == 0
    finally:
        functions.unregister_activation("softplus")
    with pytest.raises(symbptt.SpecError, match="hidden: got 'softplus'"):
        symbptt.ModelSpec(hidden="softplus")
