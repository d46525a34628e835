"""The derivation's expressions are first-class SymPy: ``as_explicit``, ``lambdify``,
SymPy's own ``NumPyPrinter`` and ``sympy.latex`` work on every gradient."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from sympy.printing.numpy import NumPyPrinter

import symbptt
from symbptt.expr import functions, mexpr

X = sp.MatrixSymbol("X", 2, 3)


def test_sympy_latex_writes_an_activation_by_its_name() -> None:
    assert sp.latex(functions.elementwise("tanh", X)) == r"\tanh\left(X\right)"
    assert sp.latex(functions.elementwise("sigmoid", X)) == r"\sigma\left(X\right)"
    assert sp.latex(mexpr.Softmax(X, 0)) == r"\operatorname{softmax}\left(X\right)"


def test_sympy_latex_writes_an_unnamed_function_by_its_body() -> None:
    z = functions.z
    derivative = functions.Apply(sp.Lambda(z, 1 - sp.tanh(z) ** 2), X)
    assert sp.latex(derivative) == r"1 - \tanh^{2}{\left(\left(X\right) \right)}"


def test_sympy_numpy_printer_prints_softmax_with_the_maximum_subtracted() -> None:
    shifted = "numpy.exp(X - numpy.amax(X, axis=0, keepdims=True))"
    expected = f"({shifted} / numpy.sum({shifted}, axis=0, keepdims=True))"
    assert NumPyPrinter().doprint(mexpr.Softmax(X, 0)) == expected
    assert NumPyPrinter().doprint(functions.elementwise("tanh", X)) == "(numpy.tanh((X)))"


def test_sympy_numpy_printer_prints_an_elementwise_power() -> None:
    assert NumPyPrinter().doprint(mexpr.hadamard_power(X, 2)) == "numpy.power(X, 2)"


def test_softmax_entries_are_its_definition() -> None:
    A = sp.MatrixSymbol("A", 2, 1)
    explicit = mexpr.Softmax(A, 0).as_explicit()
    assert explicit[0, 0] == sp.exp(A[0, 0]) / (sp.exp(A[0, 0]) + sp.exp(A[1, 0]))
    values = {A: sp.Matrix([[1000], [-1000]])}
    code = sp.lambdify([A], mexpr.Softmax(A, 0), "numpy")
    assert np.all(np.isfinite(code(np.array([[1000.0], [-1000.0]]))))
    assert explicit.xreplace(values)[1, 0] == sp.exp(-1000) / (sp.exp(1000) + sp.exp(-1000))


CASES = [
    ("tanh", "softmax", "cross_entropy"),
    ("relu", "softmax", "cross_entropy"),
    ("sigmoid", "sigmoid", "binary_cross_entropy"),
    ("tanh", "identity", "squared_error"),
    ("tanh", "relu", "squared_error"),
]


@pytest.mark.parametrize(("hidden", "output", "loss"), CASES)
def test_every_gradient_lambdifies_to_its_explicit_value(
    hidden: str, output: str, loss: str
) -> None:
    """lambdify (SymPy's NumPy printer) and as_explicit (the nodes' entries) agree."""
    spec = symbptt.ModelSpec(
        steps=2, n_in=1, n_hidden=2, n_out=2, batch=1, hidden=hidden, output=output, loss=loss
    )
    d = symbptt.derive(spec)
    rng = np.random.default_rng(0)
    for name in d.gradients:
        gradient = d.gradient(name)
        assert r"\mapsto" not in sp.latex(gradient)
        arguments = sorted(gradient.free_symbols, key=str)
        values = [rng.normal(size=a.shape) for a in arguments]
        numeric = sp.lambdify(arguments, gradient, "numpy")(*values)
        explicit = gradient.as_explicit().xreplace(
            {a: sp.Matrix(v) for a, v in zip(arguments, values, strict=True)}
        )
        expected = np.array(explicit.evalf(), dtype=float)
        assert numeric.shape == expected.shape
        assert np.allclose(numeric, expected, rtol=1e-12, atol=1e-14), (name, numeric, expected)
