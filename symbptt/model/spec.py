"""The model spec: what the user asks for, validated once, frozen.

`ModelSpec` is the single input of the pipeline (spec -> graph -> derive ->
latex | emit -> verify).  Every field is checked in ``__post_init__``; a bad
value raises :class:`SpecError` naming the field, the value and what is
allowed, and combinations that make no sense are refused with the reason.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "CHOICES",
    "COMPOSITION_DEFAULTS",
    "MAX_BATCH",
    "MAX_CHECK_STEPS",
    "MAX_LAYERS",
    "MAX_SIZE",
    "MAX_STEPS",
    "OUTPUT_LOSS_PAIRS",
    "ModelSpec",
    "SpecError",
]


class SpecError(ValueError):
    """A model spec field has a value symbptt does not accept."""


#: Allowed values of the categorical fields, in the order documents list them.
CHOICES: dict[str, tuple[str, ...]] = {
    "hidden": ("tanh", "relu", "sigmoid", "identity"),
    "output": ("softmax", "sigmoid", "identity", "relu"),
    "loss": ("cross_entropy", "binary_cross_entropy", "squared_error"),
    "mode": ("many_to_many", "many_to_one"),
    "time_reduction": ("sum", "mean"),
    "batch_reduction": ("mean", "sum", "tokens"),
    "direction": ("forward", "bidirectional"),
    "notation": ("xh", "uvw", "layered", "aa"),
    "initial_state": ("zero", "input"),
}

#: Which output activations each loss accepts, and why.
_LOSS_OUTPUTS: dict[str, tuple[tuple[str, ...], str]] = {
    "cross_entropy": (
        ("softmax",),
        "cross_entropy takes the log of a probability distribution over the output units, "
        "which only a softmax output gives",
    ),
    "binary_cross_entropy": (
        ("sigmoid",),
        "binary_cross_entropy scores each output unit as an independent probability, "
        "which a sigmoid output gives; after a softmax (units that sum to 1) its "
        "log(1 - y_hat) has no overflow-free form in the generated code (NaN once a unit "
        "saturates, at logits of 30 in float32), so that pair is refused: for one class "
        "per example use softmax with cross_entropy",
    ),
    "squared_error": ((), ""),  # any output
}

#: Every (output, loss) pair a spec accepts, in the order of CHOICES.
OUTPUT_LOSS_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (output, loss)
    for loss in CHOICES["loss"]
    for output in CHOICES["output"]
    if not _LOSS_OUTPUTS[loss][0] or output in _LOSS_OUTPUTS[loss][0]
)

_SIZE_FIELDS = ("n_in", "n_hidden", "n_out", "batch")

#: The most layers a spec may stack (every layer's parameters are perturbed by the
#: numerical check; deeper stacks are the same code path).
MAX_LAYERS = 8

#: The fields of a composed model (issue 10) and their defaults: a spec at these
#: defaults is today's one-layer, one-direction, unmasked model, and its canonical
#: text (so its hash and every generated file) leaves them out.
COMPOSITION_DEFAULTS: dict[str, Any] = {"layers": 1, "direction": "forward", "masked": False}

#: The most time steps a spec may ask for: ``derive`` at T = 1000 takes about
#: 30 s (the symbolic step form does not grow with T, the unrolled parts do).
MAX_STEPS = 1000
#: The most time steps ``check`` takes: its symbolic comparison walks expressions
#: nested once per step (T = 200 passes Python's recursion limit for some
#: models; T = 100 takes a few seconds for every model).
MAX_CHECK_STEPS = 100
#: The largest fixed size of a layer (n_in, n_hidden, n_out): the numerical
#: check of the generated code perturbs every weight, which at 64 takes about a
#: minute.  Leave a size out (symbolic) for larger layers.
MAX_SIZE = 64
#: The largest fixed batch size m (the same reason as MAX_SIZE).
MAX_BATCH = 64


def _choices() -> dict[str, tuple[str, ...]]:
    """CHOICES, with activations registered at run time allowed as hidden or output layers."""
    from ..expr.functions import ACTIVATIONS

    extra = tuple(name for name in ACTIVATIONS if name not in CHOICES["hidden"])
    return CHOICES | {
        "hidden": CHOICES["hidden"] + extra,
        "output": CHOICES["output"] + extra,
    }


def _integer(value: object) -> int | None:
    """``value`` as a Python int when it is an integer (numpy's too), never a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _shown(value: object) -> str:
    """``repr(value)``, cut to a few dozen characters (a huge number stays a short line)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class ModelSpec:
    """An Elman RNN unrolled for ``steps`` time steps.

    Sizes left as ``None`` stay symbolic (n_0, n_1, n_2 and m, as in the
    layered seed).  Cross-entropy targets are probability distributions over
    the output units (one-hot or soft); binary cross-entropy targets are 0/1
    per unit; squared-error targets are reals.

    Composition (issue 10; ``docs/composition.md``): ``layers`` stacked cells,
    each layer read by the next at the same step; ``direction="bidirectional"``
    gives every layer a forward and a backward cell; ``masked`` takes a (T, m)
    0/1 mask (each example's real steps first): a masked step carries every
    state unchanged and its loss counts zero.
    """

    steps: int = 4
    hidden: str = "tanh"
    output: str = "softmax"
    loss: str = "cross_entropy"
    mode: str = "many_to_many"
    time_reduction: str = "sum"
    batch_reduction: str = "mean"
    notation: str = "xh"
    bias: bool = True
    initial_state: str = "zero"
    n_in: int | None = None
    n_hidden: int | None = None
    n_out: int | None = None
    batch: int | None = None
    cell: Any = "elman"  # a built-in name, a .toml path, a mapping or a Cell
    layers: int = 1
    direction: str = "forward"
    masked: bool = False

    def __post_init__(self) -> None:
        steps = _integer(self.steps)
        if steps is None or not 1 <= steps <= MAX_STEPS:
            raise SpecError(
                f"steps: got {_shown(self.steps)}; expected an integer T >= 1 "
                f"and at most {MAX_STEPS}"
            )
        object.__setattr__(self, "steps", steps)
        model = self._check_cell()
        for name, allowed in _choices().items():
            if name == "notation":  # a cell's own notations, checked below
                continue
            value = getattr(self, name)
            if value not in allowed:
                raise SpecError(
                    f"{name}: got {value!r}; expected one of {', '.join(map(repr, allowed))}"
                )
        if not isinstance(self.bias, bool):
            raise SpecError(f"bias: got {self.bias!r}; expected True or False")
        self._check_composition()
        for name in _SIZE_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            size = _integer(value)
            limit = MAX_BATCH if name == "batch" else MAX_SIZE
            if size is None or not 1 <= size <= limit:
                raise SpecError(
                    f"{name}: got {_shown(value)}; expected a positive integer of at most "
                    f"{limit}, or None (symbolic: the generated code then takes any size)"
                )
            object.__setattr__(self, name, size)
        outputs, why = _LOSS_OUTPUTS[self.loss]
        if outputs and self.output not in outputs:
            raise SpecError(
                f"loss: {self.loss!r} cannot follow output {self.output!r}: {why} "
                f"(allowed outputs for it: {', '.join(map(repr, outputs))})"
            )
        if self.notation not in model.notations:
            raise SpecError(
                f"notation: got {self.notation!r}; the {model.name} cell is written in "
                f"{', '.join(map(repr, model.notations))}"
            )
        if model.activation is None and self.hidden != "tanh":
            raise SpecError(
                f"hidden: got {self.hidden!r}; the {model.name} cell fixes its own activations "
                "in its equations, so hidden stays at its default 'tanh'"
            )

    def _check_composition(self) -> None:
        layers = _integer(self.layers)
        if layers is None or not 1 <= layers <= MAX_LAYERS:
            raise SpecError(
                f"layers: got {_shown(self.layers)}; expected an integer from 1 to {MAX_LAYERS} "
                "(the number of stacked recurrent layers)"
            )
        object.__setattr__(self, "layers", layers)
        if not isinstance(self.masked, bool):
            raise SpecError(
                f"masked: got {_shown(self.masked)}; expected True or False (True: the model "
                "takes a (T, m) mask of 0/1, each example's real steps first)"
            )
        if self.batch_reduction == "tokens" and self.time_reduction != "sum":
            raise SpecError(
                f"batch_reduction: 'tokens' divides the sum over every (step, example) pair by "
                f"their number, so it needs time_reduction 'sum' (got {self.time_reduction!r})"
            )

    @property
    def composed(self) -> bool:
        """True for a model of issue 10: stacked, bidirectional, masked or token-averaged."""
        return (
            any(getattr(self, name) != value for name, value in COMPOSITION_DEFAULTS.items())
            or self.batch_reduction == "tokens"
        )

    def initial_of(self, state: str) -> str:
        """A state's initial value, ``"zero"`` or ``"input"`` (docs/cells.md).

        What the cell file says for the state (``h = { size = "n_hidden",
        initial = "input" }``) comes first; a state whose file says nothing takes
        the spec's ``initial_state``.  ``state`` is a key of the cell's states.
        """
        pinned = self.model.quantity(state).initial
        return str(pinned or self.initial_state)

    @property
    def initial_inputs(self) -> tuple[str, ...]:
        """The keys of the cell's states whose initial value is an input (gets a gradient)."""
        return tuple(q.key for q in self.model.states if self.initial_of(q.key) == "input")

    @property
    def program(self) -> Any:
        """How this spec's layers and directions compose (:class:`symbptt.model.Program`)."""
        from .compose import program

        return program(self.layers, self.direction, self.masked)

    def _check_cell(self) -> Any:
        from . import Cell, cell_from_mapping, load_cell

        cell = self.cell
        if hasattr(cell, "__fspath__"):
            cell = str(cell.__fspath__())
            object.__setattr__(self, "cell", cell)
        if isinstance(cell, Mapping):
            cell = cell_from_mapping(cell)
            object.__setattr__(self, "cell", cell)
        if isinstance(cell, Cell):
            if not cell.definition:
                raise SpecError(
                    "cell: a Cell object built by hand; expected one from "
                    "symbptt.model.cell_from_mapping or load_cell"
                )
            return cell
        if not isinstance(cell, str):
            raise SpecError(
                f"cell: got {_shown(cell)}; expected a built-in cell name, a .toml file path, "
                "a mapping with a cell file's keys or a Cell"
            )
        return load_cell(cell)

    @property
    def model(self) -> Any:
        """The :class:`~symbptt.model.Cell` this spec's ``cell`` names (loaded once, cached)."""
        from . import load_cell

        if not isinstance(self.cell, str):
            return self.cell
        return load_cell(self.cell)

    # -- identity -----------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (the TOML config file uses these names).

        A cell given as a mapping or :class:`~symbptt.model.Cell` is its mapping,
        so that ``ModelSpec(**spec.as_dict()) == spec``.  The composition fields
        (``layers``, ``direction``, ``masked``) appear only when they differ from
        their defaults, so a one-layer model's canonical text, hash and generated
        files are what they were before those fields existed.
        """
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if not isinstance(self.cell, str):
            data["cell"] = self.cell.as_mapping()
        for name, value in COMPOSITION_DEFAULTS.items():
            if data[name] == value:
                del data[name]
        return data

    def canonical(self) -> str:
        """A canonical JSON text of the spec: sorted keys, no spaces."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        """The first 12 hex digits of the SHA-256 of :meth:`canonical`."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:12]

    def _repr_markdown_(self) -> str:
        """Jupyter's view: the settings as a short table (values escaped as code)."""

        def cell(value: Any) -> str:  # a path may hold | or `
            return "`" + str(value).replace("`", "'").replace("|", "\\|") + "`"

        rows = [f"| `{name}` | {cell(value)} |" for name, value in self.as_dict().items()]
        head = f"**ModelSpec** `{self.hash()}` (`{self.model.title}`, notation `{self.notation}`)"
        return "\n".join([head, "", "| field | value |", "|---|---|", *rows])

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ModelSpec:
        """Build a spec from a mapping (a parsed config file), refusing unknown keys."""
        known = set(cls.field_names())
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(
                f"unknown spec field(s) {', '.join(map(repr, unknown))}; "
                f"expected some of {', '.join(cls.field_names())}"
            )
        return cls(**data)
