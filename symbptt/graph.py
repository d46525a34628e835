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
from .model import Notation, equations
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
    """The symbol registry of one model: (quantity, step) <-> symbol.

    Symbols get the notation's names and the spec's shapes.  Every symbol it
    makes is recorded in ``meta`` as ``(role, step)`` (the role is the cell
    file's key unless the file tags it), so a generic-step symbol (step
    ``t - 1``) can be instantiated at any concrete step and nothing parses
    names back out of strings.
    """

    def __init__(self, spec: ModelSpec, notation: Notation) -> None:
        self.spec = spec
        self.cell = spec.model
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
        self.contributes_to: dict[Any, str] = {}  # a contribution's symbol -> its parameter
        self.params: dict[str, sp.MatrixSymbol] = {}
        self._keys: dict[str, str] = {}  # parameter ASCII name -> key in the cell file
        for entry in notation.params:
            if not spec.bias and self._is_bias(entry.key):
                continue
            symbol = sp.MatrixSymbol(entry.ascii, *self.param_shape(entry.key))
            self.params[entry.ascii] = symbol
            self._keys[entry.ascii] = entry.key
            self.meta[symbol] = (entry.role, None)
        self.initials: dict[str, Any] = {}
        for state in self.cell.states:
            entry = notation.name_of(state.key)
            shape = self.series_shape(state.key)
            if spec.initial_state == "zero":
                self.initials[state.key] = sp.ZeroMatrix(*shape)
            else:
                symbol = sp.MatrixSymbol(entry.initial, *shape)
                self.initials[state.key] = symbol
                self.meta[symbol] = ("initial_state", None)

    # -- shapes -------------------------------------------------------------------
    def _is_bias(self, key: str) -> bool:
        return key == "b_out" or (key != "W_out" and self.cell.parameter(key).kind == "bias")

    def _per_unit(self, key: str) -> bool:
        """A bias or a vector parameter: (n, 1), broadcast over the examples in both layouts."""
        return key == "b_out" or (key != "W_out" and self.cell.parameter(key).per_unit)

    def _size(self, name: str | int) -> Any:
        return sp.Integer(1) if name == 1 else self.sizes[str(name)]

    def units(self, key: str) -> Any:
        """The number of units of a per-step quantity (by key or role)."""
        key = self.notation.name_of(key).key
        if key in ("logits", "y_hat", "y"):
            return self.sizes["n_out"]
        return self.sizes[self.cell.quantity(key).size]

    def series_shape(self, role: str) -> tuple[Any, Any]:
        units, batch = self.units(role), self.sizes["batch"]
        return (units, batch) if self.layout == "column" else (batch, units)

    def param_shape(self, role: str) -> tuple[Any, Any]:
        key = self.notation.name_of(role).key
        if key == "W_out":
            column = (self.sizes["n_out"], self.units(self.cell.readout))
        elif key == "b_out":
            column = (self.sizes["n_out"], sp.Integer(1))
        else:
            rows, cols = self.cell.parameter(key).shape
            column = (self._size(rows), self._size(cols))
        if self.layout == "column" or self._per_unit(key):
            return column
        return (column[1], column[0])

    # -- symbols ------------------------------------------------------------------
    def param(self, role: str) -> Any:
        """The parameter with this key or role, or None for a bias the spec leaves out."""
        entry = self.notation.name_of(role)
        return self.params.get(entry.ascii)

    def key_of_param(self, ascii_name: str) -> str:
        return self._keys[ascii_name]

    @staticmethod
    def step_name(step: Any) -> str:
        return str(step).replace(" ", "")

    def series(self, role: str, step: Any) -> sp.MatrixSymbol:
        entry = self.notation.name_of(role)
        symbol = sp.MatrixSymbol(f"{entry.ascii}_{self.step_name(step)}", *self.series_shape(role))
        self.meta[symbol] = (entry.role, step)
        return symbol

    def adjoint(self, role: str, step: Any) -> sp.MatrixSymbol:
        """The adjoint dL/d(series) at ``step`` (named as the notation says, e.g. delta)."""
        entry = self.notation.name_of(role)
        name = entry.adjoint_ascii
        symbol = sp.MatrixSymbol(f"{name}_{self.step_name(step)}", *self.series_shape(role))
        self.meta[symbol] = ("adjoint_" + entry.role, step)
        return symbol

    def pre_adjoint(self, role: str, step: Any) -> sp.MatrixSymbol:
        """The adjoint of the argument of ``q = f(argument)`` (LSTM: δ^i_t for i = σ(...))."""
        entry = self.notation.name_of(role)
        name = "delta_" + entry.ascii
        symbol = sp.MatrixSymbol(f"{name}_{self.step_name(step)}", *self.series_shape(role))
        self.meta[symbol] = ("pre_adjoint_" + entry.role, step)
        return symbol

    def contribution(self, param: str, step: Any) -> sp.MatrixSymbol:
        if param in self.params:
            shape = self.params[param].shape
        else:
            shape = next(s.shape for s in self.initials.values() if getattr(s, "name", "") == param)
        symbol = sp.MatrixSymbol(f"d{param}_{self.step_name(step)}", *shape)
        self.meta[symbol] = ("contribution", step)
        self.contributes_to[symbol] = param
        return symbol

    def step_loss(self, step: Any) -> sp.Symbol:
        symbol = sp.Symbol(f"{self.notation.loss_ascii}_{self.step_name(step)}", real=True)
        self.meta[symbol] = ("loss", step)
        return symbol

    @property
    def initial(self) -> Any:
        """The initial value of the cell's first state (its only one for Elman)."""
        return self.initials[self.cell.states[0].key]

    def loss_scale(self, loss_steps: Any) -> Any:
        """The factor in front of the sum of per-step losses (time and batch means)."""
        factor = sp.Integer(1)
        if self.spec.time_reduction == "mean":
            factor /= loss_steps
        if self.spec.batch_reduction == "mean":
            factor /= self.sizes["batch"]
        return factor


class _StepEnv:
    """One step of the model for :func:`symbptt.model.equations.build`."""

    def __init__(self, symbols: Symbols, step: Any, first: bool) -> None:
        self.symbols = symbols
        self.layout = symbols.layout
        self.step = step
        self.first = first
        self.recurrent_first = symbols.notation.recurrent_first

    def param(self, key: str) -> Any:
        symbols = self.symbols
        symbol = symbols.param(key)
        if symbols._per_unit(key):
            rows = symbols.param_shape(key)[0]
            batch = symbols.sizes["batch"]
            if symbol is None:
                return (
                    sp.ZeroMatrix(rows, batch)
                    if self.layout == "column"
                    else sp.ZeroMatrix(batch, rows)
                )
            return mexpr.broadcast_bias(symbol, self.layout, batch)
        return symbol

    def series(self, key: str, offset: int) -> Any:
        if offset < 0 and self.first:
            return self.symbols.initials[key]
        return self.symbols.series(key, self.step + offset)

    def function(self, name: str) -> Any:
        cell = self.symbols.cell
        if name == cell.activation:
            return functions.ACTIVATIONS[self.symbols.spec.hidden]
        return functions.ACTIVATIONS.get(name)


def _output_activation(symbols: Symbols, pre: Any) -> Any:
    spec = symbols.spec
    if spec.output == "softmax":
        return mexpr.Softmax(pre, 0 if symbols.layout == "column" else 1)
    return functions.elementwise(spec.output, pre)


def _head(symbols: Symbols, readout: Any) -> Any:
    """``W_out r + b_out 1^T`` (column) or ``R W_out + 1 b_out^T`` (row)."""
    weight = symbols.param("W_out")
    if symbols.layout == "column":
        product = mexpr.matmul(weight, readout)
    else:
        product = mexpr.matmul(readout, weight)
    bias = symbols.param("b_out")
    if bias is None:
        return product
    return mexpr.add(product, mexpr.broadcast_bias(bias, symbols.layout, symbols.sizes["batch"]))


def build_cell(
    symbols: Symbols, step: Any, with_output: bool, first: bool = False
) -> tuple[list[Assignment], Any, Any]:
    """The assignments of one step, from the cell's equations and the spec's output layer.

    Returns them, the readout symbol and the step loss (or None).  At the
    ``first`` step, states at t - 1 are the initial states.
    """
    spec = symbols.spec
    cell = symbols.cell
    env = _StepEnv(symbols, step, first)
    out = []
    for eq in cell.equations:
        target = symbols.series(eq.target, step)
        expr = equations.build(eq.tree, env, eq.error)
        out.append(Assignment(target, expr, symbols.meta[target][0], step))
    readout = symbols.series(cell.readout, step)
    if not with_output:
        return out, readout, None
    axis = 0 if symbols.layout == "column" else 1
    o = symbols.series("logits", step)
    y_hat = symbols.series("y_hat", step)
    y = symbols.series("y", step)
    loss = symbols.step_loss(step)
    out += [
        Assignment(o, _head(symbols, readout), "output_pre_activation", step),
        Assignment(y_hat, _output_activation(symbols, o), "output", step),
        Assignment(loss, mexpr.OutputLoss(o, y_hat, y, spec.output, spec.loss, axis), "loss", step),
    ]
    return out, readout, loss


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
    initials: dict[str, Any] = field(default_factory=dict)  # state key -> initial value

    @property
    def params(self) -> dict[str, sp.MatrixSymbol]:
        return self.symbols.params


def build_graph(spec: ModelSpec) -> Graph:
    """Unroll ``spec`` for ``spec.steps`` steps (iteratively)."""
    notation = spec.model.notations[spec.notation]
    symbols = Symbols(spec, notation)
    steps = tuple(notation.steps(spec.steps))
    assignments: list[Assignment] = []
    losses: list[Any] = []
    targets: list[Any] = []
    for step in steps:
        with_output = spec.mode == "many_to_many" or step == steps[-1]
        cell, _, loss = build_cell(symbols, step, with_output, first=step == steps[0])
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
        initial=symbols.initial,
        definitions={a.target: a.expr for a in assignments},
        initials=dict(symbols.initials),
    )
