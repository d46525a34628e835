"""The unrolled graph's figure (``documents/figure.py``) as geometry: its ``picture``
commands read back as line segments and label boxes, no two labels overlap, no line
runs through a label, and no two lines cross (an arrow past a row is broken there)."""

from __future__ import annotations

import re

import pytest

from symbptt import ModelSpec, derive
from symbptt.documents import _writer, figure
from symbptt.documents.layout import tex_width
from symbptt.model.presets import PRESETS

#: Points per ``tex_width`` letter of a label as pdflatex sets it, measured on the PDFs:
#: ``W_{xr}, W_{hh}, W_{xh}, W_{xz}`` in scriptstyle is about 75 pt (11.1 letters),
#: ``H_{init}`` about 20 pt (3.8); a node is given a little more room than it takes.
SCRIPT, TEXT = 6.0, 7.0

_PUT = re.compile(r"\\put\(([-\d.]+),([-\d.]+)\)\{(.*)\}$")
_LINE = re.compile(r"\\(?:line|vector)\((-?\d+),(-?\d+)\)\{([\d.]+)\}")
_BOX = re.compile(r"\\makebox\(0,0\)(?:\[(\w)\])?\{\$(.*)\$\}")

Box = tuple[float, float, float, float]  # left, bottom, right, top
Segment = tuple[float, float, float, float]  # x0, y0, x1, y1


def _geometry(commands: list[str]) -> tuple[list[Segment], list[tuple[Box, str]]]:
    segments: list[Segment] = []
    boxes: list[tuple[Box, str]] = []
    for command in commands:
        put = _PUT.match(command)
        assert put is not None, command
        x, y, body = float(put.group(1)), float(put.group(2)), put.group(3)
        line = _LINE.fullmatch(body)
        if line is not None:
            dx, dy, length = int(line.group(1)), int(line.group(2)), float(line.group(3))
            # picture's length is the horizontal extent, or the vertical one when dx = 0
            ex, ey = (
                (0.0, length * (1 if dy > 0 else -1))
                if dx == 0
                else (length * (1 if dx > 0 else -1), length * dy / abs(dx))
            )
            segments.append((x, y, x + ex, y + ey))
            continue
        box = _BOX.fullmatch(body)
        assert box is not None, command
        where, tex = box.group(1) or "", box.group(2)
        script = tex.startswith(r"\scriptstyle")
        width = (SCRIPT if script else TEXT) * tex_width(tex.removeprefix(r"\scriptstyle "))
        height = 14.0 if r"\frac" in tex else (7.0 if script else 9.0)
        left = (
            x - width / 2 if where not in "lr" or not where else (x if where == "l" else x - width)
        )
        bottom = {"b": y, "t": y - height}.get(where, y - height / 2)
        boxes.append(((left, bottom, left + width, bottom + height), tex))
    return segments, boxes


def _overlap(a: Box, b: Box, margin: float = 0.5) -> bool:
    return (
        a[0] + margin < b[2]
        and b[0] + margin < a[2]
        and a[1] + margin < b[3]
        and b[1] + margin < a[3]
    )


def _through(segment: Segment, box: Box) -> bool:
    """Whether the segment runs through the box (shrunk by a point: touching is allowed)."""
    x0, y0, x1, y1 = segment
    left, bottom, right, top = box[0] + 1, box[1] + 1, box[2] - 1, box[3] - 1
    for k in range(101):  # sampled: the segments are short
        px, py = x0 + (x1 - x0) * k / 100, y0 + (y1 - y0) * k / 100
        if left < px < right and bottom < py < top:
            return True
    return False


def _cross(a: Segment, b: Segment) -> bool:
    """Whether two segments cross at a point inside both (not at an end of either)."""
    (x1, y1, x2, y2), (x3, y3, x4, y4) = a, b
    d = (x2 - x1) * (y4 - y3) - (y2 - y1) * (x4 - x3)
    if d == 0:
        return False
    s = ((x3 - x1) * (y4 - y3) - (y3 - y1) * (x4 - x3)) / d
    t = ((x3 - x1) * (y2 - y1) - (y3 - y1) * (x2 - x1)) / d
    return 0.02 < s < 0.98 and 0.02 < t < 0.98


SPECS = {
    **{name: PRESETS[name] for name in PRESETS},
    "lstm-layered": ModelSpec(cell="lstm", notation="layered", steps=3),
    "gru-xh-T10": ModelSpec(cell="gru", steps=10),
    "layered-T10": ModelSpec(notation="layered", steps=10),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_figure_has_no_crossings_and_no_overlaps(name: str) -> None:
    writer = _writer(derive(SPECS[name]), None, None)
    segments, boxes = _geometry(figure.picture(writer)["commands"])
    for i, (a, tex_a) in enumerate(boxes):
        for b, tex_b in boxes[i + 1 :]:
            assert not _overlap(a, b), (tex_a, a, tex_b, b)
    for segment in segments:
        for box, tex in boxes:
            assert not _through(segment, box), (segment, tex, box)
    for i, a in enumerate(segments):
        for b in segments[i + 1 :]:
            assert not _cross(a, b), (a, b)
