"""One op, every table: each node class with a differentiation rule (``rules.VJP``) has an
evaluation (``evaluate.EVALUATE``) and its own printing in the NumPy, torch, JAX and
LaTeX printers; the NumPy code printed for it computes what the evaluator computes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from symbptt.codegen.jax_printer import JaxPrinter
from symbptt.codegen.numpy_printer import NumPyPrinter, helper_source
from symbptt.codegen.torch_printer import TorchPrinter
from symbptt.core.evaluate import EVALUATE, Evaluator, evaluates
from symbptt.core.rules import VJP
from symbptt.documents.latex_printer import BPTTLatexPrinter
from symbptt.expr import functions, mexpr

A, B = sp.MatrixSymbol("A", 3, 2), sp.MatrixSymbol("B", 3, 2)
C, Y = sp.MatrixSymbol("C", 2, 4), sp.MatrixSymbol("Y", 3, 2)
s, u = sp.Symbol("s", real=True), sp.Symbol("u", real=True)

#: An instance of each op (a new op in the rule table needs one here: the test says so).
EXAMPLES: dict[type, Callable[[], Any]] = {
    sp.MatAdd: lambda: sp.MatAdd(A, B),
    sp.Add: lambda: s + u,
    sp.MatMul: lambda: sp.MatMul(A, C),
    sp.Mul: lambda: s * u,
    sp.Transpose: lambda: sp.Transpose(A),
    sp.HadamardProduct: lambda: sp.HadamardProduct(A, B),
    sp.HadamardPower: lambda: sp.HadamardPower(A, 3),
    mexpr.HadamardPower: lambda: mexpr.HadamardPower(A, 2),
    ElementwiseApplyFunction: lambda: ElementwiseApplyFunction(
        sp.Lambda(functions.z, sp.tanh(functions.z)), A
    ),
    functions.Apply: lambda: functions.elementwise("sigmoid", A),
    mexpr.Softmax: lambda: mexpr.Softmax(A, 0),
    mexpr.OutputLoss: lambda: mexpr.OutputLoss(A, B, Y, "softmax", "cross_entropy", 0),
}

#: Classes whose printing is SymPy's catch-all, not a printing of the op.
GENERIC = {sp.Basic, sp.Expr, sp.MatrixExpr, sp.Atom, object}


def _handler(printer: type, op: type) -> type | None:
    """The class whose ``_print_<name>`` the printer uses for ``op`` (None: only a catch-all)."""
    if printer.printmethod in vars(op):
        return op
    for cls in op.__mro__:
        if cls in GENERIC:
            return None
        if hasattr(printer, f"_print_{cls.__name__}"):
            return cls
    return None


def test_every_op_with_a_rule_has_an_example_here() -> None:
    assert set(VJP) <= set(EXAMPLES), sorted(c.__name__ for c in set(VJP) - set(EXAMPLES))


@pytest.mark.parametrize("printer", [NumPyPrinter, TorchPrinter, JaxPrinter, BPTTLatexPrinter])
@pytest.mark.parametrize("op", list(VJP), ids=lambda op: op.__name__)
def test_every_printer_prints_every_op(op: type, printer: type) -> None:
    assert _handler(printer, op) is not None, f"{printer.__name__} has no printing of {op}"


@pytest.mark.parametrize("op", list(VJP), ids=lambda op: op.__name__)
def test_every_op_evaluates_as_its_numpy_code_computes(op: type) -> None:
    expr = EXAMPLES[op]()
    assert type(expr) is op
    assert any(cls in EVALUATE for cls in op.__mro__ if cls not in GENERIC)
    rng = np.random.default_rng(0)
    symbols = sorted(expr.free_symbols, key=sp.default_sort_key)
    env = {
        sym: rng.uniform(0.1, 1.0, sym.shape) if sym.is_Matrix else rng.uniform(0.1, 1.0)
        for sym in symbols
    }
    expected = Evaluator(env)(expr)
    printer = NumPyPrinter({sym: str(sym) for sym in symbols})
    code = printer.doprint(expr)
    namespace: dict[str, Any] = {"np": np}
    for helper in sorted(printer.helpers):
        exec(helper_source(helper), namespace)  # the project's own printed helpers
    value = eval(code, namespace, {str(sym): value for sym, value in env.items()})
    np.testing.assert_allclose(value, expected, rtol=1e-13)


def test_an_op_without_an_evaluation_is_named() -> None:
    class Unknown(sp.MatrixExpr):  # type: ignore[misc]
        shape = (1, 1)

    with pytest.raises(TypeError, match=r"no evaluation for 'Unknown'"):
        Evaluator({})(Unknown())
    assert evaluates(Unknown)(lambda ev, expr: 0) is not None
    try:
        assert Evaluator({})(Unknown()) == 0  # registered: the table is the one place
    finally:
        del EVALUATE[Unknown]
