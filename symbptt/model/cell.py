"""The model representation: a recurrent cell as data, and the notations it is written in.

A :class:`Cell` is what a cell file (``symbptt/model/cells/*.toml`` or a user's
own) says: its inputs, recurrent states, parameters and step equations, which
state the output layer reads, and the :class:`Notation` s it can be written
in.  The Elman RNN, the LSTM, the GRU and a user's cell are values of it,
loaded by :func:`symbptt.model.load_cell` through the same code path.

The output layer (head) and the loss are not part of a cell: the spec chooses
them.  Their symbols are named by every notation under the reserved keys
:data:`HEAD_KEYS`.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from ..expr.exprlang import ExpressionError

__all__ = [
    "HEAD_KEYS",
    "HEAD_ROLES",
    "Cell",
    "Equation",
    "Name",
    "Notation",
    "Parameter",
    "Quantity",
]

#: The output layer's keys in a notation's names table, and the role of each.
HEAD_ROLES: dict[str, str] = {
    "W_out": "output_weight",
    "b_out": "output_bias",
    "logits": "output_pre_activation",
    "y_hat": "output",
    "y": "target",
}
HEAD_KEYS = tuple(HEAD_ROLES)


@dataclass(frozen=True)
class Name:
    """How one notation writes one symbol of the model.

    ``key`` is the symbol's name in the cell file (or a head key), ``kind`` is
    ``"param"`` or ``"series"`` (one value per step).  ``role`` is the key
    unless the cell file tags it (see :attr:`Cell.roles`).  ``adjoint`` is the
    ASCII name of the symbol's adjoint (``"d" + ascii`` unless given, e.g.
    ``delta``); ``initial``/``initial_latex`` name a state's initial value.
    """

    key: str
    kind: str
    ascii: str
    latex: str
    description: str
    role: str
    layer: str = ""
    adjoint: str = ""
    initial: str = ""
    initial_latex: str = ""

    @property
    def base(self) -> str:
        """The LaTeX of the symbol without its step index."""
        return self.latex

    @property
    def adjoint_ascii(self) -> str:
        return self.adjoint or "d" + self.ascii


#: Older names of the two kinds of entry.
Param = Name
Series = Name


@dataclass(frozen=True)
class Notation:
    """A way of writing one cell: names, layout, where t starts, index style."""

    name: str
    cell: str
    seed: str
    title: str
    layout: str  # "column" (W x, examples are columns) or "row" (X W)
    t0: int
    style: str  # index style: "sub" x_{t}, "sup" x^{(t)}, "call" x(t)
    names: tuple[Name, ...]
    loss_ascii: str
    loss_latex: str
    functions: tuple[tuple[str, str], ...]  # (name in the equations or "output", LaTeX)
    recurrent_first: bool = False  # W h + U x (uvw, aa) rather than W_xh x + W_hh h
    notes: tuple[str, ...] = ()
    # -- the seed's habits in documents, beyond names -------------------------------
    #: "fraction" (∂L/∂W) or "operator" (002's ∂/∂Ŷ L)
    partials: str = "fraction"
    #: the order the chain-rule section takes the parameters in, by key (000: V, W,
    #: U); empty: output layer, then input, recurrent, bias as the equations have them
    parameter_order: tuple[str, ...] = ()
    #: "assign" (W ← W − η ∂L/∂W) or "delta" (003's ΔW = −η ∂L/∂W, W = W + ΔW)
    updates: str = "assign"
    #: the chain rule goes through the output pre-activation (003's ∂y/∂net_y)
    chain_through_logits: bool = False
    #: a layer and a step always apart (H_{1,1}): for documents with steps >= 10,
    #: where H_{11} could be read as step 11
    comma_steps: bool = False

    # -- look-ups -----------------------------------------------------------------
    @property
    def params(self) -> tuple[Name, ...]:
        return tuple(n for n in self.names if n.kind == "param")

    @property
    def series(self) -> tuple[Name, ...]:
        return tuple(n for n in self.names if n.kind == "series")

    def name_of(self, key_or_role: str) -> Name:
        """The entry whose key or role is ``key_or_role``."""
        for entry in self.names:
            if key_or_role in (entry.role, entry.key):
                return entry
        raise KeyError(key_or_role)

    def param(self, role: str) -> Name:
        entry = self.name_of(role)
        if entry.kind != "param":
            raise KeyError(role)
        return entry

    def series_of(self, role: str) -> Name:
        entry = self.name_of(role)
        if entry.kind != "series":
            raise KeyError(role)
        return entry

    def function_latex(self, name: str) -> str:
        return dict(self.functions).get(name, "")

    @property
    def hidden_fn(self) -> str:
        """LaTeX of the cell's free activation (the first function named), if any."""
        free = [latex for name, latex in self.functions if name != "output"]
        return free[0] if free else ""

    @property
    def output_fn(self) -> str:
        return self.function_latex("output")

    @property
    def states(self) -> tuple[Name, ...]:
        return tuple(n for n in self.names if n.initial)

    @property
    def initial_ascii(self) -> str:
        """The initial value's name of the first state (the readout of a one-state cell)."""
        return self.states[0].initial

    @property
    def initial_latex(self) -> str:
        return self.states[0].initial_latex

    def steps(self, count: int) -> range:
        """The step indices of a model with ``count`` steps."""
        return range(self.t0, self.t0 + count)

    # -- LaTeX --------------------------------------------------------------------
    def index(self, base: str, step: Any, layer: str = "") -> str:
        """``base`` indexed by ``step`` (an int or a SymPy expression such as t - 1)."""
        step_tex = sp.latex(step) if isinstance(step, sp.Basic) else str(step)
        compound = not (isinstance(step, int) or getattr(step, "is_Atom", False))
        if self.style == "sup":
            return f"{base}^{{({step_tex})}}"
        if self.style == "call":
            return f"{base}({step_tex})"  # \left( would space it from its name: a (t)
        if layer:
            wide = isinstance(step, int) and step >= 10
            sep = "," if compound or wide or self.comma_steps else ""
            return f"{base}_{{{layer}{sep}{step_tex}}}"
        return f"{base}_{{{step_tex}}}"

    def latex_of(self, role: str, step: Any) -> str:
        series = self.series_of(role)
        return self.index(series.base, step, series.layer)

    def loss_latex_at(self, step: Any) -> str:
        return self.index(self.loss_latex, step)


@dataclass(frozen=True)
class Parameter:
    """A parameter: its shape in the column layout (size names or 1) and its kind."""

    key: str
    shape: tuple[str | int, str | int]
    kind: str  # "weight", "bias" or "vector" (bias and vector are per unit, for every example)

    @property
    def per_unit(self) -> bool:
        """A column vector applied to every example (a bias, or a peephole's diagonal weights)."""
        return self.kind in ("bias", "vector")


@dataclass(frozen=True)
class Quantity:
    """A per-step quantity of the cell: an input, a state or an intermediate."""

    key: str
    kind: str  # "input", "state" or "intermediate"
    size: str  # a size name ("n_in", "n_hidden")
    #: a state's initial value as the cell file pins it: "zero", "input", or ""
    #: (the spec's ``initial_state`` decides; see :meth:`ModelSpec.initial_of`)
    initial: str = ""


@dataclass(frozen=True)
class Equation:
    """``target[t] = text``, from line ``line`` of the cell file.

    ``tree`` is the right-hand side's checked syntax tree (never executed);
    ``reads`` lists what it reads as ``(key, offset)`` with offset 0 for
    step t and -1 for step t - 1.
    """

    target: str
    text: str
    line: int
    tree: ast.expr = field(compare=False, repr=False)
    error: Callable[[str, ast.AST], ExpressionError] = field(compare=False, repr=False)
    reads: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Cell:
    """A recurrent cell as data (see the module docstring and docs/cells.md)."""

    name: str
    title: str
    description: str
    reference: str
    source: str  # "built-in" or the file's path
    inputs: tuple[Quantity, ...]
    states: tuple[Quantity, ...]
    intermediates: tuple[Quantity, ...]
    parameters: tuple[Parameter, ...]
    equations: tuple[Equation, ...]
    readout: str
    activation: str | None  # the function name that stands for the spec's hidden activation
    notations: dict[str, Notation] = field(compare=False)
    roles: tuple[tuple[str, str], ...] = ()
    #: The JSON of the mapping the cell was read from (a parsed file or a Python
    #: mapping), in its order (the order of parameters and notations is the
    #: outputs' order): what a spec holding this cell object hashes and records.
    definition: str = ""

    def as_mapping(self) -> dict[str, Any]:
        """The mapping this cell was read from; :func:`~symbptt.model.cell_from_mapping`
        of it gives this cell again."""
        return json.loads(self.definition)  # type: ignore[no-any-return]

    @property
    def quantities(self) -> tuple[Quantity, ...]:
        return self.inputs + self.states + self.intermediates

    def quantity(self, key: str) -> Quantity:
        for q in self.quantities:
            if q.key == key:
                return q
        raise KeyError(key)

    def parameter(self, key: str) -> Parameter:
        for p in self.parameters:
            if p.key == key:
                return p
        raise KeyError(key)

    def equation_of(self, key: str) -> Equation:
        for eq in self.equations:
            if eq.target == key:
                return eq
        raise KeyError(key)

    def role_of(self, key: str) -> str:
        return dict(self.roles).get(key, HEAD_ROLES.get(key, key))
