"""A figure of one step of a cell: its gates, products, sums and the states' paths.

Read from the cell file's equations (their checked syntax trees, never
executed), so every cell, built-in or a user's, gets its own: the inputs of the
step (x_t and each state at t - 1) on the left, the new states on the right,
and between them one node per operation of the equations: an activation
(σ, tanh, ...), an elementwise product ⊙, a sum +, ``1 −``.  An activation of
an affine sum ``W_x x + W_h h + b`` is one node whose incoming edges carry the
weights; a bias is left out (the equations above the figure hold it).  Edges on
a path from a state at t - 1 to the same state at t through products and sums
only (the LSTM's cell state: the "constant error carousel") are drawn thick.

Two renderings of the same graph: LaTeX ``picture`` commands (no package) with
every edge routed in horizontal and vertical pieces, and a Mermaid flowchart.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from .latex_printer import series_name

#: Picture units (pt): the distance between columns and rows, a node's height.
COLUMN, ROW, HEIGHT = 62, 30, 12
#: The vertical distance between the inputs of one node (room for a weight's label).
PORT = 9
#: The LaTeX of the operations (an activation's is the notation's or its own).
_OPS = {"mul": r"\odot", "add": "+", "one_minus": "1-", "power": r"(\cdot)^{%d}"}
_ACTIVATIONS = {"sigmoid": r"\sigma", "tanh": r"\tanh", "relu": r"\mathrm{relu}"}
#: An operation as the Mermaid chart writes it (and how wide its box is drawn).
_SHOWN = {"sigmoid": "σ", "*": "⊙", "1-": "1 −", "@": "·"}


@dataclass
class Node:
    """A node of the figure: an input, an operation or a new state."""

    ident: str
    kind: str  # "source", "op", "out" or "dummy"
    tex: str  # what is written in it
    ascii: str  # the Mermaid label
    name: str = ""  # an equation's target, written beside it (LaTeX)
    name_ascii: str = ""
    inputs: list[tuple[str, str, str]] = field(default_factory=list)  # (node, TeX, ASCII label)
    column: int = 0
    y: float = 0.0

    @property
    def width(self) -> float:
        if self.kind != "op":
            return 14.0
        shown = _SHOWN.get(self.ascii, self.ascii)  # what the box holds, as Mermaid writes it
        letters = sum(1 for c in shown if not c.isspace()) or 1
        return 12.0 if letters == 1 else 5.0 * letters + 6

    @property
    def height(self) -> float:
        return HEIGHT + PORT * max(len(self.inputs) - 1, 0) if self.kind == "op" else HEIGHT


class _Builder:
    """The graph of one step, built from the equations' syntax trees."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.cell = writer.spec.model
        self.notation = writer.notation
        self.t = writer.t
        self.nodes: dict[str, Node] = {}
        self.defined: dict[str, str] = {}  # an equation's target -> its node
        self.count = 0
        entry = self.notation.name_of
        for q in self.cell.inputs:
            self.add(
                Node(f"in_{q.key}", "source", self.series(q.key, 0), f"{entry(q.key).ascii}[t]")
            )
        for q in self.cell.states:
            ascii_name = f"{entry(q.key).ascii}[t-1]"
            self.add(Node(f"prev_{q.key}", "source", self.series(q.key, -1), ascii_name))
        for eq in self.cell.equations:
            top = self.build(eq.tree)
            if top in self.defined.values() or self.nodes[top].kind == "source":
                top = self.add(Node(self.fresh(), "op", "=", "=", inputs=[(top, "", "")]))
            node = self.nodes[top]
            node.name, node.name_ascii = self.series(eq.target, 0), entry(eq.target).ascii
            self.defined[eq.target] = top
        for q in self.cell.states:
            out = Node(f"out_{q.key}", "out", self.series(q.key, 0), f"{entry(q.key).ascii}[t]")
            out.inputs.append((self.defined[q.key], "", ""))
            self.add(out)

    # -- nodes -------------------------------------------------------------------------
    def series(self, key: str, offset: int) -> str:
        return str(series_name(self.notation, key, self.t + offset).tex())

    def fresh(self) -> str:
        self.count += 1
        return f"op{self.count}"

    def add(self, node: Node) -> str:
        self.nodes[node.ident] = node
        return node.ident

    def op(self, tex: str, ascii_label: str, inputs: list[tuple[str, str, str]]) -> str:
        return self.add(Node(self.fresh(), "op", tex, ascii_label, inputs=inputs))

    def param_tex(self, key: str) -> tuple[str, str]:
        entry = self.notation.name_of(key)
        return entry.latex, entry.ascii

    def is_param(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id in {p.key for p in self.cell.parameters}

    def weighted(self, node: ast.AST) -> tuple[str, str, str] | None:
        """``W @ q`` (the file is in the column layout): (q's node, W's LaTeX and ASCII)."""
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult)):
            return None
        if not isinstance(node.left, ast.Name) or not self.is_param(node.left):
            return None
        tex, ascii_label = self.param_tex(node.left.id)
        return self.build(node.right), tex, ascii_label

    def terms(self, node: ast.AST) -> list[tuple[ast.AST, bool]]:
        """The terms of a sum, each with True where it is subtracted."""
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            right = [
                (n, minus ^ isinstance(node.op, ast.Sub)) for n, minus in self.terms(node.right)
            ]
            return self.terms(node.left) + right
        return [(node, False)]

    def affine(self, node: ast.AST) -> list[tuple[str, str, str]] | None:
        """The weighted inputs of an affine sum (biases left out), or None."""
        found = []
        for term, minus in self.terms(node):
            if minus:
                return None
            if self.is_param(term):
                continue  # a bias
            weighted = self.weighted(term) or self.scaled(term)
            if weighted is None:
                return None
            found.append(weighted)
        return found or None

    def scaled(self, node: ast.AST) -> tuple[str, str, str] | None:
        """``v * q`` with ``v`` a per-unit vector (a peephole): (q's node, v)."""
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)):
            return None
        for vector, other in ((node.left, node.right), (node.right, node.left)):
            if isinstance(vector, ast.Name) and self.is_param(vector):
                tex, ascii_label = self.param_tex(vector.id)
                return self.build(other), tex, ascii_label
        return None

    def build(self, node: ast.AST) -> str:
        """The node computing ``node`` (a new one for each operation)."""
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            key = node.value.id
            previous = isinstance(node.slice, ast.BinOp)  # h[t-1]
            if previous:
                return f"prev_{key}"
            return self.defined.get(key, f"in_{key}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            tex = _ACTIVATIONS.get(name) or self.notation.function_latex(name) or name
            argument = node.args[0]
            affine = self.affine(argument)
            inputs = affine if affine is not None else [(self.build(argument), "", "")]
            return self.op(tex, name, inputs)
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, (ast.Add, ast.Sub)):
                one = isinstance(node.left, ast.Constant) and node.left.value == 1
                if one and isinstance(node.op, ast.Sub):
                    return self.op(_OPS["one_minus"], "1-", [(self.build(node.right), "", "")])
                affine = self.affine(node)
                if affine is not None:
                    return self.op("+", "+", affine)
                inputs = [
                    (self.build(term), "-" if minus else "", "-" if minus else "")
                    for term, minus in self.terms(node)
                    if not self.is_param(term)
                ]
                return self.op("+", "+", inputs)
            if isinstance(node.op, ast.Mult):
                inputs = []
                for side in (node.left, node.right):
                    if self.is_param(side):  # a per-unit vector (a peephole): the edge's label
                        assert isinstance(side, ast.Name)
                        continue
                    if isinstance(side, ast.Constant):
                        continue
                    inputs.append((self.build(side), "", ""))
                labels = [
                    self.param_tex(s.id)
                    for s in (node.left, node.right)
                    if isinstance(s, ast.Name) and self.is_param(s)
                ]
                labels += [
                    (str(s.value), str(s.value))
                    for s in (node.left, node.right)
                    if isinstance(s, ast.Constant)
                ]
                if len(inputs) == 1:  # a scaling: one input, the factor on its edge
                    tex, ascii_label = labels[0] if labels else ("", "")
                    return self.op(r"\odot", "*", [(inputs[0][0], tex, ascii_label)])
                return self.op(r"\odot", "*", inputs)
            if isinstance(node.op, ast.MatMult):
                weighted = self.weighted(node)
                if weighted is not None:
                    return self.op(r"\cdot", "@", [weighted])
                inputs = [(self.build(node.left), "", ""), (self.build(node.right), "", "")]
                return self.op(r"\cdot", "@", inputs)
            if (
                isinstance(node.op, ast.Pow)
                and isinstance(node.right, ast.Constant)
                and isinstance(node.right.value, int)
            ):
                power = node.right.value
                return self.op(
                    _OPS["power"] % power, f"^{power}", [(self.build(node.left), "", "")]
                )
            if isinstance(node.op, ast.Div):
                divisor = ast.unparse(node.right)
                return self.op("/", "/", [(self.build(node.left), f"1/{divisor}", f"1/{divisor}")])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return self.op("-", "-", [(self.build(node.operand), "", "")])
        if isinstance(node, ast.Attribute):  # A.T
            return self.op(r"(\cdot)^{\top}", "T", [(self.build(node.value), "", "")])
        return self.op(ast.unparse(node), ast.unparse(node), [])


# -- layout ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """One edge between neighbouring columns (a long edge is a chain of them)."""

    source: str
    target: str
    tex: str  # the label on its last piece (a weight), "" for none
    thick: bool
    port: int  # which input of the target it is


def _carried(nodes: dict[str, Node], cell: Any) -> set[tuple[str, str]]:
    """The edges on a path from a state at t - 1 to the same state at t through ⊙ and +
    only: what the state carries unchanged except for products and sums."""
    linear = {r"\odot", "+"}
    found: set[tuple[str, str]] = set()
    for q in cell.states:
        start, end = f"prev_{q.key}", f"out_{q.key}"
        forward = {start}
        changed = True
        while changed:
            changed = False
            for node in nodes.values():
                if node.ident in forward or not (node.tex in linear or node.ident == end):
                    continue
                if any(source in forward for source, _, _ in node.inputs):
                    forward.add(node.ident)
                    changed = True
        if end not in forward:
            continue
        backward = {end}
        changed = True
        while changed:
            changed = False
            for node in nodes.values():
                if node.ident not in backward:
                    continue
                for source, _, _ in node.inputs:
                    if source in forward and source not in backward:
                        backward.add(source)
                        changed = True
        for node in nodes.values():
            if node.ident in backward:
                found |= {(s, node.ident) for s, _, _ in node.inputs if s in backward}
    return found


def layout(writer: Any) -> tuple[dict[str, Node], list[Segment]]:
    """The nodes with their columns and heights, and the edges split at every column."""
    builder = _Builder(writer)
    nodes = builder.nodes
    order = list(nodes)
    for ident in order:  # the inputs come first (the equations are in order)
        node = nodes[ident]
        if node.kind == "op":
            node.column = 1 + max((nodes[s].column for s, _, _ in node.inputs), default=0)
    last = 1 + max(node.column for node in nodes.values())
    for node in nodes.values():
        if node.kind == "out":
            node.column = last
    thick = _carried(nodes, builder.cell)
    segments: list[Segment] = []
    for ident in order:
        node = nodes[ident]
        for port, (source, tex, _) in enumerate(node.inputs):
            heavy = (source, ident) in thick
            previous = source
            for column in range(nodes[source].column + 1, node.column):
                dummy = f"d{len(nodes)}"
                nodes[dummy] = Node(dummy, "dummy", "", "", column=column)
                nodes[dummy].inputs.append((previous, "", ""))
                segments.append(Segment(previous, dummy, "", heavy, 0))
                previous = dummy
            segments.append(Segment(previous, ident, tex, heavy, port))
    columns: dict[int, list[str]] = {}
    for ident, node in nodes.items():
        columns.setdefault(node.column, []).append(ident)
    rank: dict[str, float] = {}
    for column in sorted(columns):
        members = columns[column]
        if column:  # the barycentre of what feeds each node, then the file's order

            def centre(ident: str) -> float:
                fed = [rank[s.source] for s in segments if s.target == ident]
                return sum(fed) / len(fed) if fed else 0.0

            first = {ident: i for i, ident in enumerate(members)}
            members.sort(key=lambda ident: (centre(ident), first[ident]))
        for i, ident in enumerate(members):
            rank[ident] = float(i)
        total = sum(max(nodes[i].height, HEIGHT) + ROW - HEIGHT for i in members)
        y = total / 2
        for ident in members:
            space = max(nodes[ident].height, HEIGHT) + ROW - HEIGHT
            nodes[ident].y = y - space / 2
            y -= space
    return nodes, segments


#: The widest figure (pt); a wider one is drawn with a smaller unit length.
MAX_WIDTH = 440
#: Half the width of a name (an input or a new state) at its node.
_TEXT_HALF = 9


def _half(node: Node) -> float:
    if node.kind == "dummy":
        return 0.0
    return node.width / 2 if node.kind == "op" else _TEXT_HALF


def picture(writer: Any) -> dict[str, Any]:
    """The figure as ``picture`` commands, its size and unit length (pt)."""
    nodes, segments = layout(writer)
    x = {ident: node.column * COLUMN for ident, node in nodes.items()}
    lines: list[str] = []

    def put(px: float, py: float, what: str) -> None:
        lines.append(rf"\put({px:g},{py:g}){{{what}}}")

    for node in nodes.values():
        px, py = x[node.ident], node.y
        if node.kind == "op":
            w, h = node.width, node.height
            put(px - w / 2, py - h / 2, rf"\framebox({w:g},{h:g}){{$\scriptstyle {node.tex}$}}")
            if node.name:
                put(px, py + h / 2 + 2, rf"\makebox(0,0)[b]{{$\scriptstyle {node.name}$}}")
        elif node.kind in ("source", "out"):
            put(px, py, rf"\makebox(0,0){{${node.tex}$}}")

    def port_y(segment: Segment) -> float:
        node = nodes[segment.target]
        if node.kind != "op":
            return node.y
        return node.y + (len(node.inputs) - 1) * PORT / 2 - segment.port * PORT

    # one vertical channel per source in each gap between columns, left to right by height
    channels: dict[tuple[int, str], float] = {}
    for column in sorted({nodes[s.source].column for s in segments}):
        sources = sorted(
            {
                s.source
                for s in segments
                if nodes[s.source].column == column and abs(nodes[s.source].y - port_y(s)) > 0.5
            },
            key=lambda ident: -nodes[ident].y,
        )
        left = column * COLUMN + max(
            (_half(n) for n in nodes.values() if n.column == column), default=0
        )
        right = (column + 1) * COLUMN - max(
            (_half(n) for n in nodes.values() if n.column == column + 1), default=0
        )
        for k, ident in enumerate(sources):
            channels[(column, ident)] = round(
                left + 4 + k * min(6, (right - left - 22) / max(len(sources), 1)), 1
            )
    for segment in segments:
        source, target = nodes[segment.source], nodes[segment.target]
        x0, y0 = x[source.ident] + _half(source), source.y
        x1, y1 = x[target.ident] - _half(target), port_y(segment)
        if segment.thick:
            lines.append(r"\linethickness{1.2pt}")
        arrow = target.kind != "dummy"
        if abs(y0 - y1) <= 0.5:
            start = x0
        else:
            start = channels[(source.column, source.ident)]
            if start > x0:
                put(x0, y0, rf"\line(1,0){{{start - x0:g}}}")
            sign = 1 if y1 > y0 else -1
            put(start, y0, rf"\line(0,{sign}){{{abs(y1 - y0):g}}}")
        if x1 > start:
            piece = r"\vector(1,0)" if arrow else r"\line(1,0)"
            put(start, y1, rf"{piece}{{{x1 - start:g}}}")
        if segment.thick:
            lines.append(r"\thinlines")
        if segment.tex:
            # baseline 2.5 pt above the wire: its subscripts clear it, the next port 9 pt up too
            put(x1 - 2, y1 + 2.5, rf"\makebox(0,0)[br]{{$\scriptscriptstyle {segment.tex}$}}")
    columns = max(node.column for node in nodes.values())
    top = max(node.y + node.height / 2 + 10 for node in nodes.values())
    bottom = min(node.y - node.height / 2 for node in nodes.values()) - 2
    left, width = -_TEXT_HALF - 2, columns * COLUMN + 2 * _TEXT_HALF + 4
    unit = min(1.0, MAX_WIDTH / width)
    return {
        "commands": lines,
        "size": f"({width:g},{top - bottom:g})({left:g},{bottom:g})",
        "unit": f"{unit:.2f}pt",
        "carried": any(segment.thick for segment in segments),
    }


def mermaid(writer: Any) -> list[str]:
    """The same graph as a Mermaid flowchart (GitHub draws it), with ASCII names."""
    builder = _Builder(writer)
    nodes = builder.nodes
    thick = _carried(nodes, builder.cell)
    lines = ["flowchart LR"]
    for node in nodes.values():
        if node.kind == "op":
            label = _SHOWN.get(node.ascii, node.ascii)
            if node.name_ascii:
                label += f": {node.name_ascii}[t]"
            lines.append(f'  {node.ident}(["{label}"])')
        else:
            lines.append(f'  {node.ident}["{node.ascii}"]')
    for node in nodes.values():
        for source, _, ascii_label in node.inputs:
            arrow = "==>" if (source, node.ident) in thick else "-->"
            lines.append(
                f"  {source} {arrow}|{ascii_label}| {node.ident}"
                if ascii_label
                else f"  {source} {arrow} {node.ident}"
            )
    return lines
