"""How cells compose into a model: layers, directions and masks, as data.

A :class:`Program` is the list of recurrent *units* a spec runs -- one cell
per (layer, direction) -- and what the output layer reads.  Every stage reads
it; nothing branches on a built-in cell.  The default program (one layer,
forward, unmasked) has a single unit with an empty tag, which names every
symbol exactly as the notation does.

Naming (one rule, for every notation): a unit's tag is its layer number when
there are several layers, ``f``/``b`` for its direction when the model is
bidirectional, or both (``1f``, ``2b``).  A unit's parameters, states,
intermediates, their adjoints and initial states carry ``_<tag>`` after the
notation's ASCII name (``W_xi_2``, ``h_1f_3``, ``delta_2b_3``, ``h_0_2f``).
Where a unit reads two units (layer ℓ > 1 of a bidirectional model, and the
output layer of one), the weight applied to its input is split in two, one
per direction read, with that direction's tag appended (``W_xh_2f_f``,
``W_xh_2f_b``; the output layer's ``W_hy_f``, ``W_hy_b``): the same as
PyTorch's weight applied to the concatenation [h→; h←], split column-wise.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DIRECTIONS", "Program", "Unit", "program"]

#: A unit's direction: forward runs t = 1..T, backward t = T..1.
DIRECTIONS = ("forward", "backward")


@dataclass(frozen=True)
class Unit:
    """One recurrent cell of the model: its layer, direction, tag and what it reads.

    ``reads`` holds the indices (in :attr:`Program.units`) of the units whose
    readout state is this unit's input at the same step; empty for the first
    layer, which reads the model's input x.
    """

    layer: int
    direction: str
    tag: str
    reads: tuple[int, ...] = ()

    @property
    def step(self) -> int:
        """+1 for the forward direction, -1 for the backward one (where t - 1 looks)."""
        return 1 if self.direction == "forward" else -1

    @property
    def direction_tag(self) -> str:
        """``f`` or ``b``: the tag a weight reading this unit's state adds."""
        return self.direction[0]

    def name(self, ascii_name: str) -> str:
        """``ascii_name`` of this unit (unchanged for the one unit of a plain model)."""
        return f"{ascii_name}_{self.tag}" if self.tag else ascii_name

    def latex(self, base: str, bar: bool = False) -> str:
        """The LaTeX of ``base`` for this unit: an arrow for its direction, ^{(ℓ)} for its layer.

        ``bar`` marks a candidate (the state before the mask): a bar over the arrow,
        where a bar under it would hide in the arrow's line.
        """
        out = base
        if self.tag.endswith(("f", "b")):
            arrow = r"\overrightarrow" if self.direction == "forward" else r"\overleftarrow"
            out = f"{arrow}{{{out}}}"
            if bar:
                out = rf"\overline{{{out}}}"
        elif bar:
            out = rf"\bar{{{out}}}"
        if self.tag.rstrip("fb"):
            out = f"{{{out}}}^{{({self.layer})}}"
        return out


@dataclass(frozen=True)
class Program:
    """The units of a model in the order they run, what the output layer reads, the mask."""

    units: tuple[Unit, ...]
    head: tuple[int, ...]
    masked: bool

    @property
    def plain(self) -> bool:
        """One unit, unmasked: today's model, named as the notation names it."""
        return len(self.units) == 1 and not self.masked

    @property
    def bidirectional(self) -> bool:
        return any(unit.direction == "backward" for unit in self.units)

    @property
    def layers(self) -> int:
        return max(unit.layer for unit in self.units)


def program(layers: int = 1, direction: str = "forward", masked: bool = False) -> Program:
    """The program of ``layers`` stacked layers in ``direction`` ("forward" or "bidirectional")."""
    directions = ("forward", "backward") if direction == "bidirectional" else ("forward",)
    units: list[Unit] = []
    previous: tuple[int, ...] = ()
    for layer in range(1, layers + 1):
        mine: list[int] = []
        for way in directions:
            tag = (str(layer) if layers > 1 else "") + (way[0] if len(directions) > 1 else "")
            mine.append(len(units))
            units.append(Unit(layer, way, tag, previous))
        previous = tuple(mine)
    return Program(tuple(units), previous, masked)
