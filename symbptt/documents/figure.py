"""The unrolled graph as a figure: LaTeX ``picture`` (no package) and a Mermaid chart.

The edges are read from the step form's forward assignments: a quantity the
figure does not draw (a pre-activation) is passed through, so an edge joins
two drawn quantities (input, states, prediction, loss) and is labelled with
the weights of the terms it goes through.  Every name is the notation's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy as sp

from ..latex_printer import delta_name, loss_name, series_name, state_initial_name
from .layout import _atoms

#: The drawn rows, bottom to top (states in between, in the cell's order).
_BOTTOM, _TOP = ("input",), ("output", "loss")
#: Picture units (pt): the distance between rows and between steps.
ROW, COLUMN, FIRST = 42, 92, 64
#: At most this many steps are drawn (the first ones, a gap, the last).
SHOWN = 4


@dataclass(frozen=True)
class Edge:
    """``source`` (role, step offset: -1 for the previous step) to ``target`` (role, 0)."""

    source: str
    offset: int
    target: str
    labels: tuple[str, ...]  # the weights' TeX names


def edges(writer: Any) -> tuple[list[str], list[Edge]]:
    """The drawn rows (roles, bottom to top) and the edges of one generic step."""
    form = writer.form
    pool = form.last_forward if form.last_forward is not None else form.forward
    meta = form.symbols.meta
    states = [writer.spec.model.role_of(s.key) for s in writer.spec.model.states]
    drawn = [*_BOTTOM, *states, *_TOP]
    biases = {p.key for p in writer.spec.model.parameters if p.kind == "bias"}
    incoming: dict[str, list[tuple[str, int, tuple[str, ...]]]] = {}
    for assignment in pool:
        target = meta[assignment.target][0]
        sources: list[tuple[str, int, tuple[str, ...]]] = []
        if assignment.kind == "loss":
            sources.append((meta[assignment.expr.pred][0], 0, ()))
        else:
            terms = (
                assignment.expr.args
                if isinstance(assignment.expr, sp.MatAdd)
                else (assignment.expr,)
            )
            for term in terms:
                atoms = [(a, meta.get(a, ("", None))) for a in _atoms(term)]
                weights = tuple(
                    writer.tex(a)
                    for a, (role, step) in atoms
                    if step is None and role and role not in biases and "bias" not in role
                )
                for _, (role, step) in atoms:
                    if isinstance(step, sp.Basic) and step.free_symbols:
                        offset = int(step - writer.t)
                        sources.append((role, offset, weights))
        incoming[target] = sources
    found: list[Edge] = []
    for target in drawn:
        stack = [(s, o, w) for s, o, w in incoming.get(target, [])]
        while stack:
            source, offset, weights = stack.pop()
            if source in drawn:
                edge = Edge(source, offset, target, weights)
                if edge not in found:
                    found.append(edge)
                continue
            for inner, inner_offset, inner_weights in incoming.get(source, []):
                stack.append((inner, offset + inner_offset, weights + inner_weights))
    present = {e.source for e in found} | {e.target for e in found}
    return [r for r in drawn if r in present], found


def _steps(writer: Any) -> list[int | None]:
    steps = list(writer.graph.steps)
    return steps if len(steps) <= SHOWN else [*steps[: SHOWN - 2], None, steps[-1]]


def picture(writer: Any) -> dict[str, Any]:
    """The figure as ``picture`` commands, and its size in points."""
    rows, found = edges(writer)
    notation = writer.notation
    loss_steps = {a.step for a in writer.graph.assignments if a.kind == "loss"}
    steps = _steps(writer)
    y = {role: i * ROW for i, role in enumerate(rows)}
    x = {step: FIRST + i * COLUMN for i, step in enumerate(steps)}
    delta_of = writer.k["pre_activation"]
    states = [writer.spec.model.role_of(s.key) for s in writer.spec.model.states]
    lines: list[str] = []

    def node(px: float, py: float, tex: str) -> None:
        lines.append(rf"\put({px:g},{py:g}){{\makebox(0,0){{${tex}$}}}}")

    def has(role: str, step: int) -> bool:
        return role not in ("output", "loss") or step in loss_steps

    for role in states:  # the initial states
        node(0, y[role], state_initial_name(notation, role).tex())
    for step in steps:
        if step is None:
            continue
        for role in rows:
            if has(role, step):
                name = loss_name(notation, step) if role == "loss" else None
                name = name or series_name(notation, role, step)
                node(x[step], y[role], name.tex())
    for i, step in enumerate(steps):
        if step is None:  # the rows that have a quantity at the steps left out
            for role in rows:
                after = steps[i + 1]
                if after is not None and has(role, after - 1):
                    node(FIRST + i * COLUMN, y[role], r"\cdots")
            continue
        for edge in found:
            if not (has(edge.target, step) and has(edge.source, step)):
                continue
            label = ", ".join(edge.labels)
            if edge.offset == 0 and y[edge.target] > y[edge.source]:  # up, within the step
                low, high = y[edge.source] + 8, y[edge.target] - 8
                lines.append(rf"\put({x[step]:g},{low:g}){{\vector(0,1){{{high - low:g}}}}}")
                if label:
                    lines.append(
                        rf"\put({x[step] + 3:g},{(low + high) / 2:g})"
                        rf"{{\makebox(0,0)[l]{{$\scriptstyle {label}$}}}}"
                    )
            elif edge.offset == -1:  # from the step before, along the row
                left = x[steps[i - 1]] if i else 0
                if i and steps[i - 1] is None:
                    left = FIRST + (i - 1) * COLUMN
                row = y[edge.target]
                start, end = left + 12, x[step] - 12
                lines.append(rf"\put({start:g},{row:g}){{\vector(1,0){{{end - start:g}}}}}")
                if label:
                    lines.append(
                        rf"\put({(start + end) / 2:g},{row + 4:g})"
                        rf"{{\makebox(0,0)[b]{{$\scriptstyle {label}$}}}}"
                    )
                if edge.source == edge.target and edge.target in states:
                    # the error flowing back: δ of this step reaches the state before it
                    back = row - 9
                    lines.append(rf"\put({end:g},{back:g}){{\vector(-1,0){{{end - start:g}}}}}")
                    delta = delta_name(notation, step, delta_of).tex()
                    lines.append(
                        rf"\put({(start + end) / 2:g},{back - 3:g})"
                        rf"{{\makebox(0,0)[t]{{$\scriptstyle {delta}$}}}}"
                    )
    width = FIRST + (len(steps) - 1) * COLUMN + 30
    height = (len(rows) - 1) * ROW + 10
    bottom = -14  # the labels of the errors below the lowest state
    return {"commands": lines, "size": f"({width:g},{height - bottom:g})(0,{bottom:g})"}


def mermaid(writer: Any) -> list[str]:
    """The same graph as a Mermaid flowchart (GitHub draws it), with ASCII names."""
    rows, found = edges(writer)
    notation = writer.notation
    loss_steps = {a.step for a in writer.graph.assignments if a.kind == "loss"}
    steps = [s for s in _steps(writer) if s is not None]
    states = [writer.spec.model.role_of(s.key) for s in writer.spec.model.states]

    def ident(role: str, step: int | str | None) -> str:  # by row: the same for any role names
        return f"n{rows.index(role)}_{'init' if step is None else step}"

    def ascii_name(role: str, step: int | None) -> str:
        if role == "loss":
            return f"{notation.loss_ascii}_{step}"
        entry = notation.name_of(role)
        return entry.initial if step is None else f"{entry.ascii}_{step}"

    def has(role: str, step: int) -> bool:
        return role not in ("output", "loss") or step in loss_steps

    lines = ["flowchart BT"]
    for role in states:
        lines.append(f'  {ident(role, None)}["{ascii_name(role, None)}"]')
    for step in steps:
        for role in rows:
            if has(role, step):
                lines.append(f'  {ident(role, step)}["{ascii_name(role, step)}"]')
    names = {writer.tex(s): str(s) for s in writer.graph.params.values()}
    first = writer.graph.steps[0]
    if len(steps) < len(writer.graph.steps):  # the steps left out: one node per row
        for role in states:
            lines.append(f'  {ident(role, "gap")}["..."]')
    for step in steps:
        for edge in found:
            if not (has(edge.target, step) and has(edge.source, step)):
                continue
            label = ", ".join(names.get(w, w) for w in edge.labels)
            arrow = f"-->|{label}|" if label else "-->"
            if edge.offset == 0:
                lines.append(f"  {ident(edge.source, step)} {arrow} {ident(edge.target, step)}")
            elif edge.offset == -1:
                before = step - 1
                if before < first:
                    source = ident(edge.source, None)
                elif before in steps:
                    source = ident(edge.source, before)
                elif edge.source in states:
                    source = ident(edge.source, "gap")
                else:
                    continue
                lines.append(f"  {source} {arrow} {ident(edge.target, step)}")
                if edge.source == edge.target and edge.target in states:
                    delta = notation.name_of(writer.k["pre_activation"]).adjoint_ascii
                    lines.append(f"  {ident(edge.target, step)} -.->|{delta}_{step}| {source}")
    if len(steps) < len(writer.graph.steps):  # into the steps left out
        for edge in found:
            if edge.offset == -1 and edge.source == edge.target and edge.source in states:
                label = ", ".join(names.get(w, w) for w in edge.labels)
                arrow = f"-->|{label}|" if label else "-->"
                lines.append(
                    f"  {ident(edge.source, steps[-2])} {arrow} {ident(edge.target, 'gap')}"
                )
    return lines


#: The plot of the measured gradient norms (pt): width and height of the axes.
PLOT_WIDTH, PLOT_HEIGHT, PLOT_LEFT = 300, 110, 34


def norm_plot(norms: dict[float, tuple[float, ...]], x_label: str = "") -> dict[str, Any]:
    """‖∂L_T/∂h_k‖ over k on a log scale, one series per scale: ``picture`` commands."""
    import math

    series = list(norms.items())
    values = [v for _, vs in series for v in vs if v > 0]
    low = math.floor(math.log10(min(values)))
    high = math.ceil(math.log10(max(values)))
    if high == low:
        high = low + 1
    count = max(len(vs) for _, vs in series)
    dx = PLOT_WIDTH / max(count - 1, 1)

    def y(value: float) -> float:
        return round((math.log10(value) - low) / (high - low) * PLOT_HEIGHT, 1)

    lines = [
        rf"\put({PLOT_LEFT},0){{\vector(1,0){{{PLOT_WIDTH + 14}}}}}",
        rf"\put({PLOT_LEFT},0){{\vector(0,1){{{PLOT_HEIGHT + 10}}}}}",
    ]
    step = max(1, (high - low) // 4)
    for decade in range(low, high + 1, step):
        at = y(10.0**decade)
        lines.append(rf"\put({PLOT_LEFT - 3},{at:g}){{\line(1,0){{3}}}}")
        lines.append(
            rf"\put({PLOT_LEFT - 5},{at:g}){{\makebox(0,0)[r]{{$\scriptstyle 10^{{{decade}}}$}}}}"
        )
    for k in range(0, count, 10 if count > 12 else 1):
        at = round(PLOT_LEFT + k * dx, 1)
        lines.append(rf"\put({at:g},-3){{\line(0,1){{3}}}}")
        lines.append(rf"\put({at:g},-6){{\makebox(0,0)[t]{{$\scriptstyle {k}$}}}}")
    if x_label:
        lines.append(rf"\put({PLOT_LEFT + PLOT_WIDTH + 18},0){{\makebox(0,0)[l]{{${x_label}$}}}}")
    marks = (r"\circle*{3}", r"\circle{3}")
    for (_, vs), mark in zip(series, marks, strict=False):
        for k, value in enumerate(vs):
            if value > 0:
                lines.append(rf"\put({round(PLOT_LEFT + k * dx, 1):g},{y(value):g}){{{mark}}}")
    size = f"({PLOT_LEFT + PLOT_WIDTH + 30},{PLOT_HEIGHT + 28})(0,-18)"
    return {"commands": lines, "size": size}
