"""The unrolled computation graph: a flat, ordered list of assignments.

Every intermediate quantity (pre-activation, hidden state, output
pre-activation, prediction, per-step loss, total loss) is a named SymPy
symbol with one defining assignment whose right-hand side refers only to
symbols.  The graph is therefore built, stored and walked as a list: no
nested expression grows with T and nothing recurses (T = 1000 is fine).

The same cell builder makes the generic step (symbolic t) that the generic
step form of the derivation is derived from.

A composed model (``spec.program``: stacked layers, two directions, a mask;
``docs/composition.md``) goes through the same builder: each unit has its own
registry (its names carry the unit's tag), runs the cell's equations over its
steps in its direction, and the output layer reads the last layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import sympy as sp

from ..expr import functions, mexpr
from ..model import HEAD_KEYS, Name, Notation, Unit, equations
from ..model.spec import ModelSpec, SpecError

__all__ = [
    "T_SYMBOL",
    "Assignment",
    "Graph",
    "Symbols",
    "build_cell",
    "build_graph",
    "composed_output",
    "t_SYMBOL",
]

#: The generic step and the symbolic number of steps.
t_SYMBOL = sp.Symbol("t", integer=True)
T_SYMBOL = sp.Symbol("T", integer=True, positive=True)


#: The key suffix of a masked state's candidate (the cell's new value before the mask chooses).
CANDIDATE = "_new"


def _unit_notation(notation: Notation, spec: ModelSpec, unit: Unit) -> Notation:
    """``notation`` with the unit's names (see :mod:`symbptt.model.compose`).

    The model's input and the output layer keep their names; a masked model
    adds, for every state s, its candidate s_new (the cell's value before the
    mask chooses between it and the carried state).
    """
    cell = spec.model
    shared = {q.key for q in cell.inputs} | set(HEAD_KEYS)
    names: list[Name] = []
    for entry in notation.names:
        if entry.key in shared:
            names.append(entry)
            continue
        names.append(
            replace(
                entry,
                ascii=unit.name(entry.ascii),
                latex=unit.latex(entry.latex),
                adjoint=unit.name(entry.adjoint) if entry.adjoint else "",
                initial=unit.name(entry.initial) if entry.initial else "",
                initial_latex=unit.latex(entry.initial_latex) if entry.initial_latex else "",
            )
        )
    if spec.masked:
        for state in cell.states:
            entry = notation.name_of(state.key)
            names.append(
                Name(
                    key=state.key + CANDIDATE,
                    kind="series",
                    ascii=unit.name(entry.ascii + CANDIDATE),
                    # a bar: a cell's own candidate is often a tilde (GRU's h~, LSTM's C~)
                    latex=unit.latex(entry.latex, bar=True),
                    description=f"candidate {entry.description} (before the mask)",
                    role=entry.role + CANDIDATE,
                    layer=entry.layer,
                )
            )
    return replace(notation, names=tuple(names))


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

    def __init__(
        self,
        spec: ModelSpec,
        notation: Notation,
        unit: Unit | None = None,
        root: Symbols | None = None,
        initial_override: str = "",
    ) -> None:
        self.spec = spec
        self.cell = spec.model
        self.program = spec.program
        self.unit = unit
        #: "input": every state's initial value an input, whatever the cell file pins
        #: (the generated code's own form; its API then leaves the pinned-zero ones out)
        self.initial_override = initial_override
        self.root = self if root is None else root
        self.notation = notation if unit is None else _unit_notation(notation, spec, unit)
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
        if unit is not None and unit.reads:  # a layer above the first reads hidden states
            self.sizes["n_in"] = self.sizes["n_hidden"]
        if root is None:
            self.meta: dict[Any, tuple[str, Any]] = {}
            self.contributes_to: dict[Any, str] = {}  # a contribution's symbol -> its parameter
            self.params: dict[str, sp.MatrixSymbol] = {}
            self._keys: dict[str, str] = {}  # parameter ASCII name -> key in the cell file
            #: a unit's symbol (series, adjoint) -> the unit's registry
            self.owner: dict[Any, Symbols] = {}
        else:
            self.meta, self.contributes_to = root.meta, root.contributes_to
            self.params, self._keys, self.owner = root.params, root._keys, root.owner
        #: A split input weight's parts: key -> ((weight, index of the unit it reads), ...).
        self.split: dict[str, tuple[tuple[sp.MatrixSymbol, int], ...]] = {}
        self.registries: tuple[Symbols, ...] = ()
        self.initials: dict[str, Any] = {}
        if root is None and not self.program.plain:
            self._compose(notation)
            return
        for entry in notation.params if unit is None else self.notation.params:
            if not spec.bias and self._is_bias(entry.key):
                continue
            if unit is not None and entry.key in ("W_out", "b_out"):
                continue  # the output layer belongs to the whole model
            if unit is not None and len(unit.reads) > 1 and self._reads_input(entry.key):
                self._split_weight(entry)
                continue
            symbol = sp.MatrixSymbol(entry.ascii, *self.param_shape(entry.key))
            self.params[entry.ascii] = symbol
            self._keys[entry.ascii] = entry.key
            self.meta[symbol] = (entry.role, None)
            self._own(symbol)
        for state in self.cell.states:
            entry = self.notation.name_of(state.key)
            shape = self.series_shape(state.key)
            kind = initial_override or spec.initial_of(state.key)
            if kind == "zero":
                self.initials[state.key] = sp.ZeroMatrix(*shape)
            else:
                symbol = sp.MatrixSymbol(entry.initial, *shape)
                self.initials[state.key] = symbol
                self.meta[symbol] = ("initial_state", None)
                self._own(symbol)

    def _own(self, symbol: Any) -> None:
        """Record that this unit named ``symbol`` (nothing for the registry of the whole model)."""
        if self.unit is not None:
            self.owner[symbol] = self

    def _compose(self, notation: Notation) -> None:
        """The registry of a composed program: one registry per unit, then the output layer."""
        program = self.program
        override = self.initial_override
        self.registries = tuple(
            Symbols(self.spec, notation, unit, self, override) for unit in program.units
        )
        for registry in self.registries:
            assert registry.unit is not None
            for key, initial in registry.initials.items():
                self.initials[registry.unit.name(key)] = initial
        read = [program.units[i] for i in program.head]
        for entry in notation.params:
            if entry.key not in ("W_out", "b_out") or (not self.spec.bias and entry.key == "b_out"):
                continue
            shape = self.param_shape(entry.key)
            names = [entry.ascii]
            if entry.key == "W_out" and len(read) > 1:
                names = [f"{entry.ascii}_{unit.direction_tag}" for unit in read]
            for name in names:
                symbol = sp.MatrixSymbol(name, *shape)
                self.params[name] = symbol
                self._keys[name] = entry.key
                self.meta[symbol] = (entry.role, None)

    def _reads_input(self, key: str) -> bool:
        """True for a weight applied to the input (its column-layout shape is (rows, n_in))."""
        if key in ("W_out", "b_out"):
            return False
        shape = self.cell.parameter(key).shape
        if "n_in" in shape and shape[1] != "n_in":
            raise SpecError(
                f"direction: a bidirectional stack splits every weight applied to the input "
                f"in two (one per direction read), but the {self.cell.name} cell's {key} has "
                f"shape {list(shape)}; a weight applied to the input must be (rows, n_in)"
            )
        return bool(shape[1] == "n_in")

    def _split_weight(self, entry: Name) -> None:
        assert self.unit is not None
        sources = [self.program.units[i] for i in self.unit.reads]
        parts = []
        for index, source in zip(self.unit.reads, sources, strict=True):
            name = f"{entry.ascii}_{source.direction_tag}"
            symbol = sp.MatrixSymbol(name, *self.param_shape(entry.key))
            self.params[name] = symbol
            self._keys[name] = entry.key
            self.meta[symbol] = (entry.role, None)
            self._own(symbol)
            parts.append((symbol, index))
        self.split[entry.key] = tuple(parts)

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
        key = key.removesuffix(CANDIDATE) if key.endswith(CANDIDATE) else key
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
        self._own(symbol)
        return symbol

    def registry(self, symbol: Any) -> Symbols:
        """The registry that names ``symbol``'s adjoints (its unit's, in a composed model)."""
        return self.owner.get(symbol, self)

    def mask(self, step: Any) -> sp.MatrixSymbol:
        """The mask of ``step``: 1 where an example's step is real; (1, m) or (m, 1)."""
        batch = self.sizes["batch"]
        shape = (sp.Integer(1), batch) if self.layout == "column" else (batch, sp.Integer(1))
        symbol = sp.MatrixSymbol(f"mask_{self.step_name(step)}", *shape)
        self.meta[symbol] = ("mask", step)
        return symbol

    def spread(self, row: Any, units: Any) -> Any:
        """A per-example row (a mask) repeated over ``units`` units, the series' shape."""
        if self.layout == "column":
            return mexpr.matmul(mexpr.ones(units, 1), row)
        return mexpr.matmul(row, mexpr.ones(1, units))

    def adjoint(self, role: str, step: Any) -> sp.MatrixSymbol:
        """The adjoint dL/d(series) at ``step`` (named as the notation says, e.g. delta)."""
        entry = self.notation.name_of(role)
        name = entry.adjoint_ascii
        symbol = sp.MatrixSymbol(f"{name}_{self.step_name(step)}", *self.series_shape(role))
        self.meta[symbol] = ("adjoint_" + entry.role, step)
        self._own(symbol)
        return symbol

    def pre_adjoint(self, role: str, step: Any) -> sp.MatrixSymbol:
        """The adjoint of the argument of ``q = f(argument)`` (LSTM: δ^i_t for i = σ(...))."""
        entry = self.notation.name_of(role)
        name = "delta_" + entry.ascii
        symbol = sp.MatrixSymbol(f"{name}_{self.step_name(step)}", *self.series_shape(role))
        self.meta[symbol] = ("pre_adjoint_" + entry.role, step)
        self._own(symbol)
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
        if self.registries:
            return self.registries[0].initial
        return self.initials[self.cell.states[0].key]

    def loss_scale(self, loss_steps: Any) -> Any:
        """The factor in front of the sum of per-step losses (time and batch means).

        With a mask and a loss at every step, what depends on the mask (each
        example's own number of real steps, the number of real tokens) is in
        the per-step loss weights (:func:`loss_weights`), not here.
        """
        spec = self.spec
        weighted = spec.masked and spec.mode == "many_to_many"
        factor = sp.Integer(1)
        if spec.time_reduction == "mean" and not weighted:
            factor /= loss_steps
        if spec.batch_reduction == "mean":
            factor /= self.sizes["batch"]
        if spec.batch_reduction == "tokens" and not weighted:
            factor /= loss_steps * self.sizes["batch"]
        return factor


class _StepEnv:
    """One step of the model (of one unit, in a composed model) for :func:`equations.build`."""

    def __init__(self, symbols: Symbols, step: Any, first: bool) -> None:
        self.symbols = symbols
        self.layout = symbols.layout
        self.step = step
        self.first = first
        self.recurrent_first = symbols.notation.recurrent_first
        unit = symbols.unit
        self.direction = 1 if unit is None else unit.step
        self.sources = () if unit is None else unit.reads
        self.states = {state.key for state in symbols.cell.states}
        self.inputs = {q.key for q in symbols.cell.inputs}
        #: a split input's stand-ins: the input and each split weight, by key
        self.stand_ins: dict[Any, str] = {}

    def param(self, key: str) -> Any:
        symbols = self.symbols
        if key in symbols.split:
            stand_in = sp.MatrixSymbol(f"_split_{key}", *symbols.param_shape(key))
            self.stand_ins[stand_in] = key
            return stand_in
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
        symbols = self.symbols
        if offset < 0 and self.first:
            return symbols.initials[key]
        if key in self.inputs and self.sources:
            readouts = [self.readout(index) for index in self.sources]
            if len(readouts) == 1:
                return readouts[0]
            stand_in = sp.MatrixSymbol("_split_input", *readouts[0].shape)
            self.stand_ins[stand_in] = key
            return stand_in
        if offset == 0 and key in self.states and symbols.spec.masked:
            return symbols.series(key + CANDIDATE, self.step)
        return symbols.series(key, self.step + offset * self.direction)

    def readout(self, index: int) -> Any:
        """The readout state of unit ``index`` (a layer below) at this step."""
        source = self.symbols.root.registries[index]
        return source.series(source.cell.readout, self.step)

    def function(self, name: str) -> Any:
        cell = self.symbols.cell
        if name == cell.activation:
            return functions.ACTIVATIONS[self.symbols.spec.hidden]
        return functions.ACTIVATIONS.get(name)

    def split(self, expr: Any, equation: str) -> Any:
        """``expr`` with each ``W @ x`` of a split input written as ``W_f h_f + W_b h_b``."""
        if not self.stand_ins:
            return expr
        symbols = self.symbols
        weights = {s: k for s, k in self.stand_ins.items() if k in symbols.split}
        (stand_in,) = [s for s, k in self.stand_ins.items() if k not in symbols.split]
        column = self.layout == "column"

        def rewrite(node: Any) -> Any:
            if isinstance(node, sp.MatMul):
                coeff, mats = node.as_coeff_matrices()
                for i in range(len(mats) - 1):
                    weight, read = (mats[i], mats[i + 1]) if column else (mats[i + 1], mats[i])
                    if weight in weights and read == stand_in:
                        terms = []
                        for part, index in symbols.split[weights[weight]]:
                            pair = (part, self.readout(index))
                            terms.append(
                                mexpr.matmul(
                                    *mats[:i], *(pair if column else pair[::-1]), *mats[i + 2 :]
                                )
                            )
                        return mexpr.scale(coeff, mexpr.add(*terms))
            if not isinstance(node, sp.Basic) or not node.args or isinstance(node, sp.Lambda):
                return node
            args = [rewrite(arg) for arg in node.args]
            return node if args == list(node.args) else node.func(*args)

        out = rewrite(expr)
        if out.has(*self.stand_ins):
            raise SpecError(
                f"direction: a bidirectional stack reads both directions of the layer below "
                f"through the weights applied to the input, split in two; the "
                f"{symbols.cell.name} cell's equation {equation!r} uses the input otherwise "
                "(it must appear only as W @ x[t] with W a weight of shape (rows, n_in))"
            )
        return out


def _output_activation(symbols: Symbols, pre: Any) -> Any:
    spec = symbols.spec
    if spec.output == "softmax":
        return mexpr.Softmax(pre, 0 if symbols.layout == "column" else 1)
    return functions.elementwise(spec.output, pre)


def _head(symbols: Symbols, readout: Any, reads: Any = None) -> Any:
    """``W_out r + b_out 1^T`` (column) or ``R W_out + 1 b_out^T`` (row).

    ``reads`` gives (weight, readout) pairs where the output layer reads two
    units (a bidirectional model): ``W_f r_f + W_b r_b + b_out 1^T``.
    """
    pairs = reads if reads is not None else [(symbols.param("W_out"), readout)]
    column = symbols.layout == "column"
    product = mexpr.add(*(mexpr.matmul(w, r) if column else mexpr.matmul(r, w) for w, r in pairs))
    bias = symbols.param("b_out")
    if bias is None:
        return product
    return mexpr.add(product, mexpr.broadcast_bias(bias, symbols.layout, symbols.sizes["batch"]))


def _equations(symbols: Symbols, step: Any, first: bool) -> list[Assignment]:
    """The cell's equations at one step (of one unit), with the mask's choice of each state."""
    cell = symbols.cell
    env = _StepEnv(symbols, step, first)
    out = []
    for eq in cell.equations:
        target = env.series(eq.target, 0)
        expr = env.split(equations.build(eq.tree, env, eq.error), eq.text)
        out.append(Assignment(target, expr, symbols.meta[target][0], step))
    if symbols.spec.masked:
        for state in cell.states:
            new = symbols.series(state.key + CANDIDATE, step)
            previous = env.series(state.key, -1)
            chosen = mexpr.hadamard(
                symbols.spread(symbols.root.mask(step), symbols.units(state.key)),
                mexpr.add(new, mexpr.scale(-1, previous)),
            )
            target = symbols.series(state.key, step)
            out.append(
                Assignment(target, mexpr.add(previous, chosen), symbols.meta[target][0], step)
            )
    return out


def _loss(symbols: Symbols, step: Any, o: Any, y_hat: Any, y: Any, weight: Any) -> Any:
    spec = symbols.spec
    axis = 0 if symbols.layout == "column" else 1
    if weight is None:
        return mexpr.OutputLoss(o, y_hat, y, spec.output, spec.loss, axis)
    spread = symbols.spread(weight, symbols.sizes["n_out"])
    return mexpr.OutputLoss(o, y_hat, y, spec.output, spec.loss, axis, spread)


def _output_step(
    symbols: Symbols, step: Any, readout: Any, reads: Any = None, weight: Any = None
) -> tuple[list[Assignment], Any]:
    """The output layer and the loss at one step."""
    o = symbols.series("logits", step)
    y_hat = symbols.series("y_hat", step)
    y = symbols.series("y", step)
    loss = symbols.step_loss(step)
    return [
        Assignment(o, _head(symbols, readout, reads), "output_pre_activation", step),
        Assignment(y_hat, _output_activation(symbols, o), "output", step),
        Assignment(loss, _loss(symbols, step, o, y_hat, y, weight), "loss", step),
    ], loss


def build_cell(
    symbols: Symbols, step: Any, with_output: bool, first: bool = False
) -> tuple[list[Assignment], Any, Any]:
    """The assignments of one step, from the cell's equations and the spec's output layer.

    Returns them, the readout symbol and the step loss (or None).  At the
    ``first`` step, states at t - 1 are the initial states.
    """
    out = _equations(symbols, step, first)
    readout = symbols.series(symbols.cell.readout, step)
    if not with_output:
        return out, readout, None
    head, loss = _output_step(symbols, step, readout)
    return out + head, readout, loss


def loss_weights(symbols: Symbols, steps: tuple[int, ...]) -> dict[int, Any]:
    """Each step's per-example loss weights in a masked many-to-many model.

    The mask itself (time sum), divided by each example's number of real steps
    (time mean), or by the number of real (step, example) pairs (tokens).
    """
    masks = {step: symbols.mask(step) for step in steps}
    real = mexpr.add(*masks.values())  # each example's number of real steps
    return {step: loss_weight(symbols, mask, real) for step, mask in masks.items()}


def loss_weight(symbols: Symbols, mask: Any, real: Any) -> Any:
    """One step's per-example loss weights (:func:`loss_weights`), from its ``mask`` and
    ``real``, each example's number of real steps (the sum of every step's mask; the
    generic step names it ``mask_count``, :func:`mask_count`)."""
    spec = symbols.spec
    batch = symbols.sizes["batch"]
    column = symbols.layout == "column"
    if spec.time_reduction == "mean":
        divide = real
    elif spec.batch_reduction == "tokens":
        if column:
            divide = mexpr.matmul(real, mexpr.ones(batch, 1), mexpr.ones(1, batch))
        else:
            divide = mexpr.matmul(mexpr.ones(batch, 1), mexpr.ones(1, batch), real)
    else:
        return mask
    return mexpr.hadamard(mask, mexpr.hadamard_power(divide, -1))


def mask_count(symbols: Symbols) -> sp.MatrixSymbol:
    """Each example's number of real steps as one symbol, the mask's shape (not at a step):
    what a generic step's loss weight reads where the unrolled graph sums every mask."""
    batch = symbols.sizes["batch"]
    shape = (sp.Integer(1), batch) if symbols.layout == "column" else (batch, sp.Integer(1))
    symbol = sp.MatrixSymbol("mask_count", *shape)
    symbols.meta[symbol] = ("mask_count", None)
    return symbol


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
    #: state key -> initial value (a composed model: the unit's name of the key, h_1f)
    initials: dict[str, Any] = field(default_factory=dict)
    masks: tuple[Any, ...] = ()  # the mask of every step, in a masked model

    @property
    def initial_inputs(self) -> dict[str, sp.MatrixSymbol]:
        """The initial states that are inputs (symbols with a gradient), by state key;
        a state that starts at zero is left out."""
        return {k: v for k, v in self.initials.items() if isinstance(v, sp.MatrixSymbol)}

    @property
    def params(self) -> dict[str, sp.MatrixSymbol]:
        return self.symbols.params


def build_graph(spec: ModelSpec, initial_override: str = "") -> Graph:
    """Unroll ``spec`` for ``spec.steps`` steps (iteratively).

    Each state starts at zero or at an input symbol as :meth:`ModelSpec.initial_of`
    says; ``initial_override="input"`` makes every one an input (the generated
    code's internal form).
    """
    notation = spec.model.notations[spec.notation]
    symbols = Symbols(spec, notation, initial_override=initial_override)
    steps = tuple(notation.steps(spec.steps))
    if symbols.registries:
        assignments, losses = _composed(symbols, steps)
    else:
        assignments, losses = [], []
        for step in steps:
            with_output = spec.mode == "many_to_many" or step == steps[-1]
            cell, _, loss = build_cell(symbols, step, with_output, first=step == steps[0])
            assignments += cell
            if loss is not None:
                losses.append(loss)
    targets = [symbols.series("target", symbols.meta[loss][1]) for loss in losses]
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
        masks=tuple(symbols.mask(step) for step in steps) if spec.masked else (),
    )


def _composed(symbols: Symbols, steps: tuple[int, ...]) -> tuple[list[Assignment], list[Any]]:
    """The assignments of a composed program: every unit over its steps, then the output layer.

    Units run layer by layer (a layer reads the one below at the same step), a
    backward unit from the last step to the first.  The output layer reads the
    last layer's units; a many-to-one model reads each unit's final state (the
    forward one's at the last step, the backward one's at the first).
    """
    spec = symbols.spec
    program = symbols.program
    assignments: list[Assignment] = []
    for unit, registry in zip(program.units, symbols.registries, strict=True):
        order = steps if unit.direction == "forward" else steps[::-1]
        for step in order:
            assignments += _equations(registry, step, first=step == order[0])
    many = spec.mode == "many_to_many"
    loss_steps = steps if many else steps[-1:]
    weighting = loss_weights(symbols, steps) if spec.masked and many else {}
    losses = []
    for step in loss_steps:
        head, loss = composed_output(symbols, step, steps[0], weighting.get(step))
        assignments += head
        losses.append(loss)
    return assignments, losses


def composed_output(
    symbols: Symbols, step: Any, first: Any, weight: Any = None
) -> tuple[list[Assignment], Any]:
    """The output layer and the loss of a composed model at ``step``.

    It reads the last layer's units at ``step`` (many-to-many); a many-to-one
    model reads each unit's final state: a forward unit's at ``step`` (the last),
    a backward unit's at ``first``.  ``weight``: the step's loss weights (a mask).
    """
    program = symbols.program
    read = [(program.units[i], symbols.registries[i]) for i in program.head]
    weights = [symbols.param("W_out")] if len(read) == 1 else []
    if len(read) > 1:
        name = symbols.notation.name_of("W_out").ascii
        weights = [symbols.params[f"{name}_{unit.direction_tag}"] for unit, _ in read]
    many = symbols.spec.mode == "many_to_many"
    pairs = []
    for w, (unit, registry) in zip(weights, read, strict=True):
        at = step if many or unit.direction == "forward" else first
        pairs.append((w, registry.series(registry.cell.readout, at)))
    return _output_step(symbols, step, pairs[0][1], pairs, weight)
