"""The project's LaTeX printer: one exact-string test per override, in every notation."""

from __future__ import annotations

from typing import Any

import pytest
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from symbptt import ModelSpec
from symbptt.core import rules
from symbptt.core.graph import Symbols
from symbptt.documents.latex_printer import (
    BPTTLatexPrinter,
    TeXName,
    escape_math_text,
    escape_tex,
    symbol_names,
)
from symbptt.expr import functions, mexpr
from symbptt.model.notation import NOTATIONS


class Model:
    """Symbols of one notation, and a printer that knows them."""

    def __init__(self, notation: str = "xh", **spec: Any) -> None:
        self.spec = ModelSpec(notation=notation, **spec)
        self.notation = NOTATIONS[notation]
        self.symbols = Symbols(self.spec, self.notation)

    def series(self, role: str, step: Any) -> Any:
        return self.symbols.series(role, step)

    def adjoint(self, role: str, step: Any) -> Any:
        return self.symbols.adjoint(role, step)

    def param(self, role: str) -> Any:
        return self.symbols.param(role)

    def printer(self, **settings: Any) -> BPTTLatexPrinter:
        meta = self.symbols.meta
        return BPTTLatexPrinter(
            {
                "names": symbol_names(self.notation, [meta]),
                "roles": dict(meta),
                "recurrent_first": self.notation.recurrent_first,
                **settings,
            }
        )

    def tex(self, expr: Any, **settings: Any) -> str:
        return str(self.printer(**settings).doprint(expr))


# -- symbols ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("notation", "step", "expected"),
    [
        ("xh", 3, "h_{3}"),
        ("uvw", 3, "h^{(3)}"),
        ("layered", 2, "H_{12}"),
        ("layered", 12, "H_{1,12}"),
        ("aa", 3, r"a(3)"),
    ],
)
def test_matrix_symbol_in_each_notation(notation: str, step: int, expected: str) -> None:
    model = Model(notation)
    assert model.tex(model.series("hidden", step)) == expected


@pytest.mark.parametrize(
    ("notation", "expected"),
    [
        ("xh", "h_{t - 1}"),
        ("uvw", "h^{(t - 1)}"),
        ("layered", "H_{1,t - 1}"),
        ("aa", r"a(t - 1)"),
    ],
)
def test_generic_step_symbol(notation: str, expected: str) -> None:
    model = Model(notation)
    t = sp.Symbol("t", integer=True)
    assert model.tex(model.series("hidden", t - 1)) == expected


@pytest.mark.parametrize(
    ("notation", "delta", "partial"),
    [
        ("xh", r"\delta_{3}", r"\frac{\partial L}{\partial h_{3}}"),
        ("uvw", r"\delta^{(3)}", r"\frac{\partial J}{\partial h^{(3)}}"),
        ("layered", r"\delta_{13}", r"\frac{\partial L}{\partial H_{13}}"),
        ("aa", r"\delta(3)", r"\frac{\partial L}{\partial a(3)}"),
    ],
)
def test_adjoints_as_delta_and_partials(notation: str, delta: str, partial: str) -> None:
    model = Model(notation)
    assert model.tex(model.adjoint("pre_activation", 3)) == delta
    assert model.tex(model.adjoint("hidden", 3)) == partial


def test_parameters_losses_contributions_and_gradients() -> None:
    model = Model("xh")
    assert model.tex(model.param("recurrent_weight")) == "W_{hh}"
    assert model.tex(model.symbols.step_loss(2)) == "L_{2}"
    assert model.tex(model.symbols.contribution("W_hh", 2)) == (
        r"\frac{\partial L}{\partial W_{hh}^{(2)}}"
    )
    uvw = Model("uvw")
    assert uvw.tex(uvw.symbols.step_loss(2)) == "J^{(2)}"
    assert uvw.tex(uvw.symbols.contribution("W", 2)) == r"\frac{\partial J}{\partial W^{(2)}}"


def test_initial_state_name() -> None:
    for notation, expected in [("xh", "h_0"), ("uvw", "h^{(0)}"), ("layered", "H_{init}")]:
        model = Model(notation, initial_state="input")
        assert model.tex(model.symbols.initial) == expected


def test_unnamed_symbols_print_as_sympy_does() -> None:
    assert Model().tex(sp.MatrixSymbol("Q_x", 2, 2)) == "Q_{x}"


# -- transposes ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("notation", "expected"),
    [
        ("xh", r"h_{2}^{\top}"),
        ("uvw", r"h^{(2)\top}"),
        ("layered", r"H_{12}^{\top}"),
        ("aa", r"a(2)^{\top}"),
    ],
)
def test_transpose_the_way_the_notation_writes_it(notation: str, expected: str) -> None:
    model = Model(notation)
    assert model.tex(sp.Transpose(model.series("hidden", 2))) == expected


def test_transpose_of_compound_and_of_ones() -> None:
    model = Model()
    d = model.adjoint("hidden", 2)
    assert model.tex(sp.Transpose(d)) == r"\left(\frac{\partial L}{\partial h_{2}}\right)^{\top}"
    w, h = model.param("recurrent_weight"), model.series("hidden", 1)
    assert model.tex(sp.Transpose(sp.MatMul(w, h))) == r"(W_{hh} h_{1})^{\top}"
    m = sp.Symbol("m")
    assert model.tex(sp.OneMatrix(m, 1)) == r"\mathbf{1}"
    assert model.tex(sp.OneMatrix(1, m)) == r"\mathbf{1}^{\top}"
    assert model.tex(sp.Transpose(sp.OneMatrix(1, m))) == r"\mathbf{1}"
    assert model.tex(sp.ZeroMatrix(m, m)) == r"\mathbf{0}"


def test_transpose_setting() -> None:
    model = Model()
    h = model.series("hidden", 2)
    assert model.tex(sp.Transpose(h), transpose="T") == "h_{2}^{T}"


# -- products -----------------------------------------------------------------------
def test_hadamard_product_is_odot() -> None:
    model = Model()
    h, d = model.series("hidden", 3), model.adjoint("hidden", 3)
    n, m = h.shape
    expr = sp.HadamardProduct(
        d, mexpr.add(sp.OneMatrix(n, m), mexpr.scale(-1, sp.HadamardPower(h, 2)))
    )
    assert model.tex(expr) == (
        r"\frac{\partial L}{\partial h_{3}} \odot (\mathbf{1} - h_{3} \odot h_{3})"
    )


def test_hadamard_power_product_or_power() -> None:
    model = Model()
    h = model.series("hidden", 3)
    assert model.tex(sp.HadamardPower(h, 2)) == r"h_{3} \odot h_{3}"
    assert model.tex(sp.HadamardPower(h, 2), hadamard_power="power") == r"h_{3}^{\odot 2}"
    assert model.tex(sp.HadamardPower(h, 3)) == r"h_{3}^{\odot 3}"
    uvw = Model("uvw")
    h = uvw.series("hidden", 3)
    assert uvw.tex(sp.HadamardPower(h, 2), hadamard_power="power") == r"h^{(3)\odot 2}"


def test_hadamard_power_invalid_setting() -> None:
    with pytest.raises(ValueError, match="hadamard_power"):
        Model().printer(hadamard_power="square")


def test_elementwise_division_root_and_reciprocal() -> None:
    model = Model()
    y, y_hat = model.series("target", 3), model.series("output", 3)
    lifted = functions.lift(
        functions.LOSSES["cross_entropy"].derivative,
        {functions.a: y_hat, functions.y: y},
        y.shape,
    )
    assert model.tex(lifted) == r"- y_{3} \oslash \hat{y}_{3}"
    assert model.tex(sp.HadamardPower(y, -1)) == r"\mathbf{1} \oslash y_{3}"
    assert model.tex(sp.HadamardPower(y, sp.Rational(1, 2))) == r"\sqrt{y_{3}}"


def test_matrix_product_with_scalar_factor() -> None:
    model = Model("uvw")
    y, y_hat = model.series("target", 3), model.series("output", 3)
    m = model.symbols.sizes["batch"]
    expr = mexpr.scale(1 / (3 * m), mexpr.add(y_hat, mexpr.scale(-1, y)))
    assert model.tex(expr) == r"\frac{1}{3 m} (\hat{y}^{(3)} - y^{(3)})"


def test_nested_products_are_flattened_and_parenthesized() -> None:
    model = Model()
    y_hat = model.series("output", 2)
    g = sp.MatrixSymbol("G", *y_hat.shape)
    expr = rules.softmax_vjp(g, y_hat, 0)
    assert model.tex(expr) == (
        r"\hat{y}_{2} \odot (G - \mathbf{1} \mathbf{1}^{\top} (G \odot \hat{y}_{2}))"
    )


def test_one_by_one_ones_matrix_is_dropped() -> None:
    model = Model(batch=1)
    b = model.param("hidden_bias")
    assert model.tex(mexpr.broadcast_bias(b, "column", sp.Integer(1))) == "b_h"


# -- sums: the seeds' order ---------------------------------------------------------
@pytest.mark.parametrize(
    ("notation", "expected"),
    [
        ("xh", r"W_{xh} x_{2} + W_{hh} h_{1} + b_h \mathbf{1}^{\top}"),
        ("uvw", r"W h^{(1)} + U x^{(2)} + b_h \mathbf{1}^{\top}"),
        ("layered", r"X_{1} W_1 + H_{10} W_{h1} + \mathbf{1} \beta_1^{\top}"),
        ("aa", r"w_{aa} a(1) + w_{ax} x(2) + b_a \mathbf{1}^{\top}"),
    ],
)
def test_pre_activation_terms_in_the_seeds_order(notation: str, expected: str) -> None:
    from symbptt.core.graph import build_graph
    from symbptt.documents.teaching import term_classes

    graph = build_graph(ModelSpec(notation=notation, steps=3))
    step = graph.steps[1]
    z = next(a for a in graph.assignments if a.kind == "pre_activation" and a.step == step)
    meta = graph.symbols.meta
    printer = BPTTLatexPrinter(
        {
            "names": symbol_names(graph.notation, [meta]),
            "roles": dict(meta),
            "recurrent_first": graph.notation.recurrent_first,
            "classes": term_classes(graph.spec.model),  # read from the cell's equations
        }
    )
    assert printer.doprint(z.expr) == expected


def test_prediction_before_target_and_losses_by_step() -> None:
    model = Model()
    y, y_hat = model.series("target", 3), model.series("output", 3)
    assert model.tex(sp.MatAdd(mexpr.scale(-1, y), y_hat)) == r"\hat{y}_{3} - y_{3}"
    losses = [model.symbols.step_loss(k) for k in (10, 2, 1)]
    assert model.tex(sp.Add(*losses)) == "L_{1} + L_{2} + L_{10}"


def test_signed_terms() -> None:
    model = Model()
    y, y_hat = model.series("target", 3), model.series("output", 3)
    printer = model.printer()
    assert printer.signed_terms(sp.MatAdd(mexpr.scale(-1, y), y_hat)) == [
        ("+", r"\hat{y}_{3}"),
        ("-", "y_{3}"),
    ]


def test_scalar_coefficient_with_a_sum_keeps_its_sign() -> None:
    model = Model()
    rho = sp.Symbol("rho")
    s = sp.MatrixSymbol("s", 2, 2)
    assert model.tex(sp.MatMul(1 - rho, s)) == r"(1 - \rho) s"


# -- functions ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("activation", "expected"),
    [
        ("tanh", r"\tanh(z_{3})"),
        ("sigmoid", r"\sigma(z_{3})"),
        ("relu", r"\operatorname{ReLU}(z_{3})"),
        ("identity", r"\operatorname{id}(z_{3})"),
    ],
)
def test_elementwise_function(activation: str, expected: str) -> None:
    model = Model()
    z = model.series("pre_activation", 3)
    assert model.tex(functions.elementwise(activation, z)) == expected


def test_elementwise_function_of_a_tall_argument() -> None:
    model = Model()
    d = model.adjoint("hidden", 3)
    assert model.tex(functions.elementwise("tanh", d)) == (
        r"\tanh\left(\frac{\partial L}{\partial h_{3}}\right)"
    )


def test_elementwise_step_undefined_and_other_functions() -> None:
    model = Model()
    z, h = model.series("pre_activation", 3), model.series("hidden", 3)
    relu_prime = functions.ACTIVATIONS["relu"].derivative_of(h, z)
    assert model.tex(relu_prime) == r"[h_{3} > 0]"
    f = ElementwiseApplyFunction(sp.Lambda(functions.z, sp.Function("f_1")(functions.z)), z)
    assert model.tex(f) == "f_{1}(z_{3})"
    exp = ElementwiseApplyFunction(sp.Lambda(functions.z, sp.exp(functions.z)), z)
    assert model.tex(exp) == "e^{(z_{3})}"


def test_registered_activation_name_is_escaped() -> None:
    name = "my_act#1"
    functions.register_activation(name, sp.log(1 + sp.exp(functions.z)))
    try:
        model = Model()
        z = model.series("pre_activation", 3)
        assert model.tex(functions.elementwise(name, z)) == r"\operatorname{my\_act\#1}(z_{3})"
    finally:
        functions.unregister_activation(name)


def test_scalar_functions() -> None:
    model = Model()
    z, a = functions.z, functions.a
    assert model.tex(1 - sp.tanh(z) ** 2) == r"1 - \tanh^{2}(z)"
    assert model.tex(sp.Max(0, z)) == r"\max(0, z)"
    assert model.tex(sp.Heaviside(a, 0)) == r"[a > 0]"
    assert model.tex(-functions.y * sp.log(a)) == r"- y \log a"
    assert model.tex(sp.log(1 - a)) == r"\log (1 - a)"


def test_softmax_and_diag() -> None:
    model = Model()
    o = model.series("output_pre_activation", 3)
    assert model.tex(mexpr.Softmax(o, 0)) == r"\operatorname{softmax}(o_{3})"
    v = sp.MatrixSymbol("v", 3, 1)
    assert model.tex(sp.DiagMatrix(v)) == r"\operatorname{diag}(v)"


# -- the loss, written out from its definition --------------------------------------
@pytest.mark.parametrize(
    ("notation", "loss", "output", "expected"),
    [
        (
            "xh",
            "cross_entropy",
            "softmax",
            r"-\sum_{i=1}^{n_{2}} \sum_{j=1}^{m} [y_{3}]_{ij} \log [\hat{y}_{3}]_{ij}",
        ),
        (
            "uvw",
            "cross_entropy",
            "softmax",
            r"-\sum_{i=1}^{n_{2}} \sum_{j=1}^{m} y_{ij}^{(3)} \log \hat{y}_{ij}^{(3)}",
        ),
        (
            "layered",
            "squared_error",
            "identity",
            r"\sum_{i=1}^{m} \sum_{j=1}^{n_{2}} "
            r"\frac{\left([\hat{Y}_{3}]_{ij} - [Y_{3}]_{ij}\right)^{2}}{2}",
        ),
    ],
)
def test_output_loss_written_out(notation: str, loss: str, output: str, expected: str) -> None:
    model = Model(notation, loss=loss, output=output)
    axis = 0 if model.notation.layout == "column" else 1
    o = model.series("output_pre_activation", 3)
    y_hat, y = model.series("output", 3), model.series("target", 3)
    node = mexpr.OutputLoss(o, y_hat, y, output, loss, axis)
    assert model.tex(node) == expected


def test_output_loss_binary_cross_entropy_one_example() -> None:
    model = Model(loss="binary_cross_entropy", output="sigmoid", batch=1, n_out=3)
    o = model.series("output_pre_activation", 3)
    y_hat, y = model.series("output", 3), model.series("target", 3)
    node = mexpr.OutputLoss(o, y_hat, y, "sigmoid", "binary_cross_entropy", 0)
    assert model.tex(node) == (
        r"-\sum_{i=1}^{3} ([y_{3}]_{i} \log [\hat{y}_{3}]_{i} "
        r"+ \left(1 - [y_{3}]_{i}\right) \log (1 - [\hat{y}_{3}]_{i}))"
    )


# -- names and escaping -------------------------------------------------------------
def test_texname_superscripts_and_entries() -> None:
    assert TeXName("h", "(3)").with_sup(r"\top") == r"h^{(3)\top}"
    assert TeXName("h_{3}").with_sup(r"\top") == r"h_{3}^{\top}"
    assert TeXName(r"\frac{a}{b}", compound=True).with_sup("T") == r"\left(\frac{a}{b}\right)^{T}"
    assert TeXName("h", "(3)").entry("ij") == "h_{ij}^{(3)}"
    assert TeXName("y").entry("i") == "y_{i}"
    assert TeXName("net_y").entry("i") == "[net_y]_{i}"


def test_escape_tex() -> None:
    assert escape_tex(r"a_b & 50% #1 {x} ~ ^ \ <>|$") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{} "
        r"\textless{}\textgreater{}\textbar{}\$"
    )
    assert escape_tex("café \U0001f600") == "café [U+1F600]"
    assert escape_tex("a\nb") == "a b"


def test_escape_math_text() -> None:
    assert escape_math_text("soft_plus#2") == r"soft\_plus\#2"
    assert escape_math_text("x^y~z") == r"x\hat{}y\sim z"
    assert escape_math_text("é") == r"\text{é}"


# -- every cell: pre-activation adjoints, initial states, term classes ---------------
def _cell_printer(cell: str, notation: str, **settings: Any) -> tuple[Symbols, BPTTLatexPrinter]:
    spec = ModelSpec(cell=cell, notation=notation, initial_state="input")
    symbols = Symbols(spec, spec.model.notations[notation])
    return symbols, BPTTLatexPrinter(
        {"names": symbol_names(symbols.notation, [symbols.meta]), "roles": symbols.meta, **settings}
    )


@pytest.mark.parametrize(
    ("cell", "notation", "role", "expected"),
    [
        ("lstm", "xh", "i", r"\delta_{t}^{i}"),
        ("lstm", "layered", "g", r"\delta_{t}^{\tilde{C}}"),
        ("gru", "xh", "g", r"\delta_{t}^{\tilde{h}}"),
    ],
)
def test_pre_adjoint_is_delta_with_the_quantity_as_superscript(
    cell: str, notation: str, role: str, expected: str
) -> None:
    symbols, _ = _cell_printer(cell, notation)
    symbol = symbols.pre_adjoint(role, sp.Symbol("t", integer=True))
    printer = BPTTLatexPrinter({"names": symbol_names(symbols.notation, [symbols.meta])})
    assert printer.doprint(symbol) == expected
    head, sup = expected.rsplit("^", 1)
    assert printer.doprint(symbol.T) == f"{head}^{{{sup[1:-1]}\\top}}"


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("sup", r"\delta_{i}^{(t)}"),
        ("call", r"\delta^{i}(t)"),
        ("sub", r"\delta_{t}^{i}"),
    ],
)
def test_pre_adjoint_name_in_every_index_style(style: str, expected: str) -> None:
    from dataclasses import replace

    from symbptt.documents.latex_printer import pre_adjoint_name

    notation = replace(ModelSpec(cell="lstm").model.notations["xh"], style=style)
    assert pre_adjoint_name(notation, "i", sp.Symbol("t")).tex() == expected


def test_every_initial_state_is_named() -> None:
    symbols, printer = _cell_printer("lstm", "xh")
    assert printer.doprint(symbols.initials["h"]) == "h_0"
    assert printer.doprint(symbols.initials["c"]) == "c_0"
    symbols, printer = _cell_printer("lstm", "layered")
    assert printer.doprint(symbols.initials["c"]) == "C_0"


def test_term_classes_order_a_cells_sums() -> None:
    """Input before state before bias, and the gates' δ in the order of the equations."""
    from symbptt.documents.teaching import term_classes
    from symbptt.model import load_cell

    t = sp.Symbol("t", integer=True)
    symbols, _ = _cell_printer("lstm", "xh")
    x, h = symbols.series("input", t), symbols.series("h", t - 1)
    w_x, w_h, b = symbols.param("W_xi"), symbols.param("W_hi"), symbols.param("b_i")
    batch = symbols.sizes["batch"]
    expr = sp.MatAdd(w_h * h, mexpr.broadcast_bias(b, "column", batch), w_x * x)
    deltas = [symbols.pre_adjoint(q, t + 1) for q in ("i", "f", "o", "g")]
    weights = [symbols.param(f"W_h{q}") for q in ("i", "f", "o", "c")]
    carry = sp.MatAdd(*(w.T * d for w, d in zip(weights, deltas, strict=True)))
    classes = term_classes(load_cell("lstm"))  # read from the cell's equations
    assert classes["W_hi"] == ("recurrent", 0) and classes["W_xi"] == ("input", 1)
    printer = BPTTLatexPrinter(
        {
            "names": symbol_names(symbols.notation, [symbols.meta]),
            "roles": symbols.meta,
            "classes": classes,
        }
    )
    assert printer.doprint(expr) == r"W_{xi} x_{t} + W_{hi} h_{t - 1} + b_i \mathbf{1}^{\top}"
    assert printer.doprint(carry) == (
        r"W_{hi}^{\top} \delta_{t + 1}^{i} + W_{hf}^{\top} \delta_{t + 1}^{f} + "
        r"W_{ho}^{\top} \delta_{t + 1}^{o} + W_{hc}^{\top} \delta_{t + 1}^{g}"
    )
