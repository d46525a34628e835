"""The unrolled computation graph: a flat, ordered list of assignments.

Every intermediate quantity (pre-activation, hidden state, output
pre-activation, prediction, per-step loss, total loss) is a named SymPy
symbol with one defining assignment whose right-hand side refers only to
symbols.  The graph is therefore built, stored and walked as a list: no
nested expression grows with T and nothing recurses (T = 1000 is fine).

The same cell builder makes the generic step (symbolic t) that the generic
step form of the derivation is derived from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from . import functions, mexpr
from .notation import NOTATIONS, PARAM_ROLES, Notation
from .spec import ModelSpec

__all__ = ["T_SYMBOL", "Assignment", "Graph", "Symbols", "build_cell", "build_graph", "t_SYMBOL"]

#: The generic step and the symbolic number of steps.
t_SYMBOL = sp.Symbol("t", integer=True)
T_SYMBOL = sp.Symbol("T", integer=True, positive=True)


@dataclass(frozen=True)
class Assignment:
    """``target = expr``; ``kind`` says what it is, ``step`` when, ``param`` for which parameter."""

    target: Any
    expr: Any
    kind: str
    step: Any = None
    param: str | None = None


class Symbols:
    """Makes the model's symbols with the notation's names and the spec's shapes.

    Every symbol it makes is recorded in ``meta`` as ``(role, step)``, so a
    generic-step symbol (step ``t - 1``) can be instantiated at any concrete
    step.
    """

    def __init__(self, spec: ModelSpec, notation: Notation) -> None:
        self.spec = spec
        self.notation = notation
        self.layout = notation.layout

        def size(value: int | None, name: str) -> Any:
            if value is None:
                return sp.Symbol(name, integer=True, positive=True)
            return sp.Integer(value)

        self.sizes = {
            "n_in": size(spec.n_in, "n_0"),
            "n_hidden": size(spec.n_hidden, "n_1"),
            "n_out": size(spec.n_out, "n_2"),
            "batch": size(spec.batch, "m"),
        }
        self.meta: dict[Any, tuple[str, Any]] = {}
        self.params: dict[str, sp.MatrixSymbol] = {}
        for role in PARAM_ROLES:
            if not spec.bias and role.endswith("_bias"):
                continue
            param = notation.param(role)
            symbol = sp.MatrixSymbol(param.ascii, *self.param_shape(role))
            self.params[param.ascii] = symbol
            self.meta[symbol] = (role, None)

    # -- shapes -------------------------------------------------------------------
    def _units(self, role: str) -> Any:
        n = self.sizes
        return {
            "input": n["n_in"],
            "pre_activation": n["n_hidden"],
            "hidden": n["n_hidden"],
            "output_pre_activation": n["n_out"],
            "output": n["n_out"],
            "target": n["n_out"],
        }[role]

    def series_shape(self, role: str) -> tuple[Any, Any]:
        units, batch = self._units(role), self.sizes["batch"]
        return (units, batch) if self.layout == "column" else (batch, units)

    def param_shape(self, role: str) -> tuple[Any, Any]:
        n0, n1, n2 = self.sizes["n_in"], self.sizes["n_hidden"], self.sizes["n_out"]
        column = {
            "input_weight": (n1, n0),
            "recurrent_weight": (n1, n1),
            "output_weight": (n2, n1),
            "hidden_bias": (n1, sp.Integer(1)),
            "output_bias": (n2, sp.Integer(1)),
        }[role]
        if self.layout == "column" or role.endswith("_bias"):
            return column
        return (column[1], column[0])

    # -- symbols ------------------------------------------------------------------
    def param(self, role: str) -> Any:
        if not self.spec.bias and role.endswith("_bias"):
            return None
        return self.params[self.notation.param(role).ascii]

    @staticmethod
    def step_name(step: Any) -> str:
        return str(step).replace(" ", "")

    def series(self, role: str, step: Any) -> sp.MatrixSymbol:
        ascii_name = self.notation.series_of(role).ascii
        symbol = sp.MatrixSymbol(f"{ascii_name}_{self.step_name(step)}", *self.series_shape(role))
        self.meta[symbol] = (role, step)
        return symbol

    def adjoint(self, role: str, step: Any) -> sp.MatrixSymbol:
        """The adjoint dL/d(series) at ``step``; the hidden pre-activation's is delta."""
        name = "delta" if role == "pre_activation" else "d" + self.notation.series_of(role).ascii
        symbol = sp.MatrixSymbol(f"{name}_{self.step_name(step)}", *self.series_shape(role))
        self.meta[symbol] = ("adjoint_" + role, step)
        return symbol

    def contribution(self, param: str, step: Any) -> sp.MatrixSymbol:
        shape = self.params[param].shape if param in self.params else self.initial.shape
        symbol = sp.MatrixSymbol(f"d{param}_{self.step_name(step)}", *shape)
        self.meta[symbol] = ("contribution", step)
        return symbol

    def step_loss(self, step: Any) -> sp.Symbol:
        symbol = sp.Symbol(f"{self.notation.loss_ascii}_{self.step_name(step)}", real=True)
        self.meta[symbol] = ("loss", step)
        return symbol

    @property
    def initial(self) -> Any:
        if self.spec.initial_state == "zero":
            return sp.ZeroMatrix(*self.series_shape("hidden"))
        symbol = sp.MatrixSymbol(self.notation.initial_ascii, *self.series_shape("hidden"))
        self.meta[symbol] = ("initial_state", None)
        return symbol

    def loss_scale(self, loss_steps: Any) -> Any:
        """The factor in front of the sum of per-step losses (time and batch means)."""
        factor = sp.Integer(1)
        if self.spec.time_reduction == "mean":
            factor /= loss_steps
        if self.spec.batch_reduction == "mean":
            factor /= self.sizes["batch"]
        return factor


def _affine(symbols: Symbols, weight_role: str, inputs: Any, bias_role: str) -> Any:
    """``W x + b 1^T`` (column) or ``X W + 1 b^T`` (row)."""
    weight = symbols.param(weight_role)
    product = (
        mexpr.matmul(weight, inputs) if symbols.layout == "column" else mexpr.matmul(inputs, weight)
    )
    bias = symbols.param(bias_role)
    if bias is None:
        return product
    return mexpr.add(product, mexpr.broadcast_bias(bias, symbols.layout, symbols.sizes["batch"]))


def _pre_activation(symbols: Symbols, x: Any, prev: Any) -> Any:
    layout = symbols.layout
    w_in, w_rec = symbols.param("input_weight"), symbols.param("recurrent_weight")
    if layout == "column":
        from_input, from_state = mexpr.matmul(w_in, x), mexpr.matmul(w_rec, prev)
    else:
        from_input, from_state = mexpr.matmul(x, w_in), mexpr.matmul(prev, w_rec)
    terms = (
        [from_state, from_input] if symbols.notation.recurrent_first else [from_input, from_state]
    )
    bias = symbols.param("hidden_bias")
    if bias is not None:
        terms.append(mexpr.broadcast_bias(bias, layout, symbols.sizes["batch"]))
    return mexpr.add(*terms)


def _output_activation(symbols: Symbols, pre: Any) -> Any:
    spec = symbols.spec
    if spec.output == "softmax":
        return mexpr.Softmax(pre, 0 if symbols.layout == "column" else 1)
    return functions.elementwise(spec.output, pre)


def build_cell(
    symbols: Symbols, step: Any, prev: Any, with_output: bool
) -> tuple[list[Assignment], Any, Any]:
    """The assignments of one step; returns them, the hidden state and the step loss (or None)."""
    spec = symbols.spec
    x = symbols.series("input", step)
    z = symbols.series("pre_activation", step)
    h = symbols.series("hidden", step)
    out = [
        Assignment(z, _pre_activation(symbols, x, prev), "pre_activation", step),
        Assignment(h, functions.elementwise(spec.hidden, z), "hidden", step),
    ]
    if not with_output:
        return out, h, None
    axis = 0 if symbols.layout == "column" else 1
    o = symbols.series("output_pre_activation", step)
    y_hat = symbols.series("output", step)
    y = symbols.series("target", step)
    loss = symbols.step_loss(step)
    out += [
        Assignment(
            o, _affine(symbols, "output_weight", h, "output_bias"), "output_pre_activation", step
        ),
        Assignment(y_hat, _output_activation(symbols, o), "output", step),
        Assignment(loss, mexpr.OutputLoss(o, y_hat, y, spec.output, spec.loss, axis), "loss", step),
    ]
    return out, h, loss


@dataclass(frozen=True)
class Graph:
    """The unrolled forward computation of a spec."""

    spec: ModelSpec
    notation: Notation
    symbols: Symbols
    assignments: tuple[Assignment, ...]
    loss: sp.Symbol
    steps: tuple[int, ...]
    inputs: tuple[Any, ...]
    targets: tuple[Any, ...]
    initial: Any
    definitions: dict[Any, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, sp.MatrixSymbol]:
        return self.symbols.params


def build_graph(spec: ModelSpec) -> Graph:
    """Unroll ``spec`` for ``spec.steps`` steps (iteratively)."""
    notation = NOTATIONS[spec.notation]
    symbols = Symbols(spec, notation)
    steps = notation.steps(spec.steps)
    initial = symbols.initial
    prev = initial
    assignments: list[Assignment] = []
    losses: list[Any] = []
    targets: list[Any] = []
    for step in steps:
        with_output = spec.mode == "many_to_many" or step == steps[-1]
        cell, prev, loss = build_cell(symbols, step, prev, with_output)
        assignments += cell
        if loss is not None:
            losses.append(loss)
            targets.append(symbols.series("target", step))
    total = sp.Symbol(notation.loss_ascii, real=True)
    symbols.meta[total] = ("total_loss", None)
    scale = symbols.loss_scale(len(losses))
    assignments.append(Assignment(total, scale * sp.Add(*losses), "total_loss"))
    return Graph(
        spec=spec,
        notation=notation,
        symbols=symbols,
        assignments=tuple(assignments),
        loss=total,
        steps=steps,
        inputs=tuple(symbols.series("input", step) for step in steps),
        targets=tuple(targets),
        initial=initial,
        definitions={a.target: a.expr for a in assignments},
    )
