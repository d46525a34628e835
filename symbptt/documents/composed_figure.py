"""The unrolled graph of a composed model: every unit's readout state at every step.

Read from the spec's :class:`~symbptt.model.Program` (its units, what each
reads, what the output layer reads), so stacking and directions are data: the
input at the bottom, one row per unit in the order they run (a forward unit
drawn left of its column, a backward one right of it), the prediction and the
loss on top.  A forward unit's state goes on to the next step, a backward
unit's to the step before; a unit reads the units it reads at the same step.
The same graph as a LaTeX ``picture`` (no package: every arrow has a slope
``picture`` draws) and a Mermaid chart.
"""

from __future__ import annotations

import itertools
from typing import Any

from .latex_printer import loss_name, series_name, state_initial_name

#: Picture units (pt): between rows, between steps, a direction's offset from its column
#: (a bidirectional model's steps are wider: a forward and a backward name side by side).
ROW, COLUMN, SIDE = 28, 92, 28
COLUMN_BIDIRECTIONAL = 120
#: How far left (right) of the first (last) step an initial state is written.
STUB = 58
#: Where the first step's column is, and how far an arrow stops short of a name.
FIRST, GAP = 60, 8
#: At most this many columns are drawn (the first steps, a gap, the last), so that the
#: figure fits the page: fewer of the wider bidirectional ones.
SHOWN, SHOWN_BIDIRECTIONAL = 4, 3


def shown(program: Any) -> int:
    """How many columns the figure of ``program`` draws at most."""
    return SHOWN_BIDIRECTIONAL if program.bidirectional else SHOWN


def _steps(steps: tuple[int, ...], shown: int) -> list[int | None]:
    return list(steps) if len(steps) <= shown else [*steps[: shown - 2], None, steps[-1]]


class _Graph:
    """The rows, the nodes' names and the edges of one composed model."""

    def __init__(self, writer: Any) -> None:
        spec = writer.spec
        self.program = spec.program
        self.registries = writer.symbols.registries
        self.notation = writer.notation
        self.cell = spec.model
        self.graph = writer.graph
        self.steps = self.graph.steps
        self.loss_steps = sorted({a.step for a in self.graph.assignments if a.kind == "loss"})
        self.many_to_one = spec.mode == "many_to_one"
        both = self.program.bidirectional
        units = self.program.units
        #: each unit's row (1 up) and horizontal offset from its step's column
        self.row = {i: 1 + i for i in range(len(units))}
        self.side = {
            i: (-SIDE if unit.direction == "forward" else SIDE) if both else 0
            for i, unit in enumerate(units)
        }
        self.top = 1 + len(units)  # the prediction's row; the loss's above it

    def unit_name(self, i: int, step: Any) -> str:
        return str(series_name(self.registries[i].notation, self.cell.readout, step).tex())

    def unit_ascii(self, i: int, step: Any) -> str:
        entry = self.registries[i].notation.name_of(self.cell.readout)
        return f"{entry.ascii}_{step}"

    def initial(self, i: int) -> str:
        if self.cell.readout not in {q.key for q in self.cell.states}:
            return ""
        return str(state_initial_name(self.registries[i].notation, self.cell.readout).tex())

    def reads(self, step: int) -> list[tuple[int, int]]:
        """(unit read, unit reading) at one step; -1 stands for the input x."""
        out = []
        for j, unit in enumerate(self.program.units):
            out += [(i, j) for i in unit.reads] or [(-1, j)]
        return out

    def head(self, step: int) -> list[int]:
        """The units whose state at ``step`` the output layer reads there."""
        if step not in self.loss_steps:
            return []
        if not self.many_to_one:
            return list(self.program.head)
        return [i for i in self.program.head if self.program.units[i].direction == "forward"]


def picture(writer: Any) -> dict[str, Any]:
    """The figure as ``picture`` commands and its size (pt)."""
    g = _Graph(writer)
    both = g.program.bidirectional
    steps = _steps(g.steps, shown(g.program))
    column = COLUMN_BIDIRECTIONAL if both else COLUMN
    x = {step: FIRST + k * column for k, step in enumerate(steps)}
    lines: list[str] = []

    def node(px: float, py: float, tex: str) -> None:
        lines.append(rf"\put({px:g},{py:g}){{\makebox(0,0){{${tex}$}}}}")

    def arrow(a: tuple[float, float], b: tuple[float, float]) -> None:
        """An arrow from name a to name b (b above a), stopping short of both."""
        dx, dy = b[0] - a[0], b[1] - a[1]
        s = GAP / dy
        start = (a[0] + dx * s, a[1] + dy * s)
        if dx == 0:
            lines.append(
                rf"\put({start[0]:g},{start[1]:g}){{\vector(0,1){{{dy * (1 - 2 * s):g}}}}}"
            )
            return
        rise = round(2 * dy / abs(dx))  # dy / |dx| in halves: 1, 2, 3, 4 (SIDE = ROW)
        run, up = (1, rise // 2) if rise % 2 == 0 else (2, rise)
        sign = 1 if dx > 0 else -1
        length = abs(dx) * (1 - 2 * s)
        lines.append(
            rf"\put({start[0]:g},{start[1]:g}){{\vector({sign * run},{up}){{{length:g}}}}}"
        )

    input_key = g.cell.inputs[0].key
    for step in steps:
        if step is None:
            for i in g.row:
                node(x[step] + g.side[i], g.row[i] * ROW, r"\cdots")
            continue
        node(x[step], 0, str(series_name(g.notation, input_key, step).tex()))
        for i in g.row:
            node(x[step] + g.side[i], g.row[i] * ROW, g.unit_name(i, step))
        for source, target in g.reads(step):
            a = (x[step], 0.0) if source < 0 else (x[step] + g.side[source], g.row[source] * ROW)
            arrow(a, (x[step] + g.side[target], g.row[target] * ROW))
        if step in g.loss_steps:
            node(x[step], g.top * ROW, str(series_name(g.notation, "y_hat", step).tex()))
            node(x[step], (g.top + 1) * ROW, loss_name(g.notation, step).tex())
            arrow((x[step], g.top * ROW), (x[step], (g.top + 1) * ROW))
            for i in g.head(step):
                arrow((x[step] + g.side[i], g.row[i] * ROW), (x[step], g.top * ROW))
    # along the rows: a forward unit to the next step, a backward one to the step before
    ends = [FIRST - STUB, *x.values(), x[steps[-1]] + STUB]
    for i, unit in enumerate(g.program.units):
        y = g.row[i] * ROW
        for left, right in itertools.pairwise(ends):
            start, stop = left + g.side[i] + 16, right + g.side[i] - 16
            if unit.direction == "forward":
                lines.append(rf"\put({start:g},{y:g}){{\vector(1,0){{{stop - start:g}}}}}")
            else:
                lines.append(rf"\put({stop:g},{y:g}){{\vector(-1,0){{{stop - start:g}}}}}")
        initial = g.initial(i)
        if initial:
            at = ends[0] if unit.direction == "forward" else ends[-1]
            node(at + g.side[i], y, initial)
    if g.many_to_one and g.program.bidirectional:  # the backward units' state after step 1
        first, last = x[steps[0]], x[steps[-1]]
        above = (g.top + 1) * ROW + 14
        for i in g.program.head:
            if g.program.units[i].direction != "backward":
                continue
            px, y = first + g.side[i], g.row[i] * ROW
            lines.append(rf"\put({px + 10:g},{y + 6:g}){{\line(0,1){{{above - y - 6:g}}}}}")
            # past the loss's name, down beside the prediction's
            lines.append(rf"\put({px + 10:g},{above:g}){{\line(1,0){{{last + 14 - px - 10:g}}}}}")
            lines.append(
                rf"\put({last + 14:g},{above:g}){{\vector(0,-1){{{above - g.top * ROW - 4:g}}}}}"
            )
    left = ends[0] + min(g.side.values()) - 14
    width = ends[-1] + max(g.side.values()) + 14 - left
    height = (g.top + 1) * ROW + 24
    return {"commands": lines, "size": f"({width:g},{height + 10:g})({left:g},-10)"}


def mermaid(writer: Any) -> list[str]:
    """The same graph as a Mermaid flowchart (GitHub draws it), with ASCII names."""
    g = _Graph(writer)
    steps = [s for s in _steps(g.steps, shown(g.program)) if s is not None]
    input_entry = g.notation.name_of(g.cell.inputs[0].key)
    lines = ["flowchart BT"]
    for step in steps:
        lines.append(f'  x_{step}["{input_entry.ascii}_{step}"]')
        for i in g.row:
            lines.append(f'  u{i}_{step}["{g.unit_ascii(i, step)}"]')
        if step in g.loss_steps:
            lines.append(f'  y_{step}["{g.notation.name_of("y_hat").ascii}_{step}"]')
            lines.append(f'  L_{step}["{g.notation.loss_ascii}_{step}"]')
    for step in steps:
        for source, target in g.reads(step):
            origin = f"x_{step}" if source < 0 else f"u{source}_{step}"
            lines.append(f"  {origin} --> u{target}_{step}")
        if step in g.loss_steps:
            lines += [f"  u{i}_{step} --> y_{step}" for i in g.head(step)]
            lines.append(f"  y_{step} --> L_{step}")
    for i, unit in enumerate(g.program.units):
        order = steps if unit.direction == "forward" else steps[::-1]
        for a, b in itertools.pairwise(order):
            gap = " -.->|...| " if abs(b - a) > 1 else " --> "
            lines.append(f"  u{i}_{a}{gap}u{i}_{b}")
    if g.many_to_one and g.program.bidirectional:
        last = steps[-1]
        for i in g.program.head:
            if g.program.units[i].direction == "backward":
                lines.append(f"  u{i}_{steps[0]} --> y_{last}")
    return lines
