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

from .latex_printer import delta_name, loss_name, partial_name, series_name, state_initial_name
from .layout import tex_width

#: The drawn rows, bottom to top (states in between, in the cell's order).
_BOTTOM, _TOP = ("input",), ("output", "loss")
#: Picture units (pt): the distance between rows and between steps.
ROW, COLUMN, FIRST = 42, 92, 64
#: How far left of its column an arrow past a row is drawn (pt).
SKIP = 16
#: The distance between rows for a cell with several states (pt).
ROW_STATES = 60
#: At most this many steps are drawn (the first ones, a gap, the last).
SHOWN = 4
#: Points per letter of ``layout.tex_width`` (generous: a label is given room to spare).
POINTS = 7.0


@dataclass(frozen=True)
class Edge:
    """``source`` (role, step offset: -1 for the previous step) to ``target`` (role, 0)."""

    source: str
    offset: int
    target: str
    labels: tuple[str, ...]  # the weights' TeX names


def _reads(term: Any, meta: Any, biases: set[str]) -> list[tuple[Any, tuple[Any, ...]]]:
    """The series a term reads, each with the weights that multiply it (a matrix product)."""
    found: list[tuple[Any, tuple[Any, ...]]] = []

    def weight(atom: Any) -> bool:
        role, step = meta.get(atom, ("", None))
        return step is None and bool(role) and role not in biases and "bias" not in role

    stack = [(term, ())]  # (node, the weights of the products it sits in)
    while stack:
        node, weights = stack.pop()
        if isinstance(node, sp.MatMul):
            mine = tuple(a for a in node.args if weight(a))
            weights = weights + mine
        if node in meta and meta[node][1] is not None:
            found.append((node, weights))
            continue
        if isinstance(node, sp.Basic) and not node.is_Atom:
            stack.extend((arg, weights) for arg in reversed(node.args))
    return found


def edges(writer: Any) -> tuple[list[str], list[Edge]]:
    """The drawn rows (roles, bottom to top) and the edges of one generic step.

    An edge is labelled with the weights that multiply its source on the way
    (W_xh for x_t -> h_t); the edges between two quantities are one, their
    labels joined.  The states are drawn in the order the cell computes them
    (an LSTM's c below h).
    """
    form = writer.form
    pool = form.last_forward if form.last_forward is not None else form.forward
    meta = form.symbols.meta
    computed = [meta[a.target][0] for a in pool]
    keys = [writer.spec.model.role_of(s.key) for s in writer.spec.model.states]
    states = sorted(keys, key=lambda role: computed.index(role) if role in computed else 0)
    drawn = [*_BOTTOM, *states, *_TOP]
    biases = {p.key for p in writer.spec.model.parameters if p.kind == "bias"}
    incoming: dict[str, list[tuple[str, int, tuple[str, ...]]]] = {}
    for assignment in pool:
        target = meta[assignment.target][0]
        sources: list[tuple[str, int, tuple[str, ...]]] = []
        if assignment.kind == "loss":
            sources.append((meta[assignment.expr.pred][0], 0, ()))
        else:
            for atom, weights in _reads(assignment.expr, meta, biases):
                role, step = meta[atom]
                if isinstance(step, sp.Basic) and step.free_symbols:
                    labels = tuple(writer.tex(w) for w in weights)
                    sources.append((role, int(step - writer.t), labels))
        incoming[target] = sources
    merged: dict[tuple[str, int, str], list[str]] = {}
    for target in drawn:
        stack = [(s, o, w) for s, o, w in incoming.get(target, [])]
        seen: set[tuple[str, int, tuple[str, ...]]] = set()
        while stack:
            source, offset, weights = stack.pop()
            if (source, offset, weights) in seen:
                continue
            seen.add((source, offset, weights))
            if source in drawn:
                joined = merged.setdefault((source, offset, target), [])
                joined += [w for w in weights if w not in joined]
                continue
            for inner, inner_offset, inner_weights in incoming.get(source, []):
                stack.append((inner, offset + inner_offset, inner_weights + weights))
    found = [Edge(s, o, t, tuple(labels)) for (s, o, t), labels in merged.items()]
    present = {e.source for e in found} | {e.target for e in found}
    return [r for r in drawn if r in present], found


def _flow(writer: Any, role: str, step: Any) -> str:
    """The name of the error flowing back into the state ``role``: δ in the teaching
    document, the state's adjoint ∂L/∂h_t for every other cell."""
    delta_of = writer.k["pre_activation"]
    try:
        return delta_name(writer.notation, step, delta_of).tex()
    except KeyError:
        return partial_name(writer.notation, series_name(writer.notation, role, step)).tex()


def _flow_ascii(writer: Any, role: str) -> str:
    try:
        return str(writer.notation.name_of(writer.k["pre_activation"]).adjoint_ascii)
    except KeyError:
        return str(writer.notation.name_of(role).adjoint_ascii)


def _steps(writer: Any) -> list[int | None]:
    steps = list(writer.graph.steps)
    return steps if len(steps) <= SHOWN else [*steps[: SHOWN - 2], None, steps[-1]]


def _points(tex: str) -> float:
    """A generous width in points of a label or name (``layout.tex_width`` letters)."""
    return POINTS * tex_width(tex)


def picture(writer: Any) -> dict[str, Any]:
    """The figure as ``picture`` commands, and its size in points.

    The distances follow the labels: a column is as wide as its longest label along
    a row needs, the first arrow starts clear of the widest initial state, a label up
    an arrow that would reach the next step's error is set low beside it, and an
    arrow past a row (an LSTM's x_t -> h_t past c_t) breaks where it crosses the row's
    arrows and turns onto its target clear of the errors' arrows.
    """
    rows, found = edges(writer)
    notation = writer.notation
    loss_steps = {a.step for a in writer.graph.assignments if a.kind == "loss"}
    steps = _steps(writer)
    states = [writer.spec.model.role_of(s.key) for s in writer.spec.model.states]
    shown = next(s for s in steps if s is not None)
    flows = {role: _flow(writer, role, shown) for role in states}
    #: more room between the rows of a cell with several states or with tall errors'
    #: labels (a state's adjoint, ∂L/∂h_t, is a fraction)
    tall = len(states) > 1 or any(r"\frac" in flow for flow in flows.values())
    row_height = ROW_STATES if tall else ROW
    flow_width = max(_points(flow) for flow in flows.values())
    first_start = max(
        12.0, max(_points(state_initial_name(notation, r).tex()) for r in states) / 2 + 5
    )
    along = [", ".join(e.labels) for e in found if e.offset == -1 and e.source == e.target]
    along_width = max((_points(label) for label in along), default=0.0)
    #: how far from a node's centre an arrow along its row ends: clear of a wide name, a(t)
    gap = {
        role: max(
            [12.0]
            + [
                _points(series_name(notation, role, s).tex()) / 2 + 4
                for s in steps
                if s is not None
            ]
        )
        for role in states
    }
    clearance = max(gap.values())
    column = max(COLUMN, along_width + 2 * clearance + 8)
    first = max(FIRST, first_start + along_width + 8 + clearance)
    y = {role: i * row_height for i, role in enumerate(rows)}
    x = {step: first + i * column for i, step in enumerate(steps)}
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
                    node(first + i * column, y[role], r"\cdots")
            continue
        for edge in found:
            if not (has(edge.target, step) and has(edge.source, step)):
                continue
            label = ", ".join(edge.labels)
            if edge.offset == 0 and y[edge.target] > y[edge.source]:  # up, within the step
                low, high = y[edge.source] + 8, y[edge.target] - 8
                if y[edge.target] - y[edge.source] > row_height:
                    lines += _past(x[step], low, y[edge.target], row_height, label)
                    continue
                at = x[step]
                lines.append(rf"\put({at:g},{low:g}){{\vector(0,1){{{high - low:g}}}}}")
                if label:
                    # beside the arrow, halfway up; low, clear of the errors' labels
                    # under the row above, when it would reach the next step's
                    middle = (low + high) / 2
                    if _points(label) + 6 > column / 2 - flow_width / 2 - 3:
                        middle = low + 8
                    lines.append(
                        rf"\put({at + 3:g},{middle:g})"
                        rf"{{\makebox(0,0)[l]{{$\scriptstyle {label}$}}}}"
                    )
            elif edge.offset == -1 and edge.source != edge.target:  # across rows (h_{t-1} -> c_t)
                # unlabelled (the caption names its weights), below the errors' labels
                rise = (y[edge.target] - y[edge.source]) // row_height
                sign = 1 if rise > 0 else -1
                start_y = y[edge.source] + (8 if rise > 0 else -26)
                end_y = y[edge.target] - 8 * sign
                dy = abs(end_y - start_y)
                dx = dy * 3 / (2 * abs(rise))  # the slopes picture draws: (3, 2) or (3, 4)
                end = x[step] - 12
                lines.append(rf"\put({end - dx:g},{start_y:g}){{\vector(3,{2 * rise}){{{dx:g}}}}}")
            elif edge.offset == -1:  # from the step before, along the row
                left = x[steps[i - 1]] if i else 0
                if i and steps[i - 1] is None:
                    left = first + (i - 1) * column
                row = y[edge.target]
                clear = gap[edge.target]
                start, end = (left + clear if i else first_start), x[step] - clear
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
                    delta = _flow(writer, edge.target, step)
                    lines.append(
                        rf"\put({(start + end) / 2:g},{back - 3:g})"
                        rf"{{\makebox(0,0)[t]{{$\scriptstyle {delta}$}}}}"
                    )
    width = first + (len(steps) - 1) * column + 30
    height = (len(rows) - 1) * row_height + 10
    bottom = -14  # the labels of the errors below the lowest state
    across = [
        {
            "edge": _name(writer, e.source, writer.t - 1)
            + r" \to "
            + _name(writer, e.target, writer.t),
            "labels": list(e.labels),
        }
        for e in found
        if e.offset == -1 and e.source != e.target and e.labels
    ]
    return {
        "commands": lines,
        "size": f"({width:g},{height - bottom:g})(0,{bottom:g})",
        "across": across,
    }


def _past(at: float, low: float, top: float, row_height: float, label: str) -> list[str]:
    """An arrow up the column at ``at`` from ``low`` to the node at height ``top``, past
    the rows in between: it runs SKIP to the left, broken where it crosses each row's
    arrows (and the arrow that reaches that row's node from the step before), and
    turns onto the node below the errors' arrow of the row above; its label sits beside
    its first piece, between a label set low and the errors' labels of the row it
    passes."""
    left = at - SKIP
    out: list[str] = []
    bottom = low
    for row in range(int(low - 8 + row_height), int(top), int(row_height)):
        out.append(rf"\put({left:g},{bottom:g}){{\line(0,1){{{row - 13 - bottom:g}}}}}")
        bottom = row + 14
    turn = top - 20  # then up and right at 45 degrees, below the errors' arrow at top - 9
    out.append(rf"\put({left:g},{bottom:g}){{\line(0,1){{{turn - bottom:g}}}}}")
    out.append(rf"\put({left:g},{turn:g}){{\vector(1,1){{{SKIP - 7:g}}}}}")
    if label:  # halfway up the first piece: above a label set low beside an arrow up
        middle = (low + low - 8 + row_height - 13) / 2
        out.append(rf"\put({left - 3:g},{middle:g}){{\makebox(0,0)[r]{{$\scriptstyle {label}$}}}}")
    return out


def _name(writer: Any, role: str, step: Any) -> str:
    return str(series_name(writer.notation, role, step).tex())


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
                    delta = _flow_ascii(writer, edge.target)
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
