"""The teaching documents' edge cases (issue 12): concrete sizes, T <= 2, zero gradients, glyphs."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess

import pytest

from symbptt import ModelSpec
from symbptt.documents import compile_pdf, overfull_boxes, render_documents, render_latex

from .test_documents import require_pdflatex

NOTATIONS = ("xh", "uvw", "layered", "aa")
#: Concrete sizes with n_hidden != batch (and one of them 1), besides the symbolic ones.
SIZES = (
    {"n_in": 3, "n_hidden": 5, "n_out": 2, "batch": 2},
    {"n_in": 4, "n_hidden": 2, "n_out": 3, "batch": 6},
    {"n_in": 2, "n_hidden": 3, "n_out": 4, "batch": 1},
    {},
)


def _jacobian(tex: str) -> str:
    found = re.search(r"the Jacobian\n\\\[\n(.*)\n\\\]", tex)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize(("notation", "steps"), itertools.product(NOTATIONS, (1, 2, 5)))
def test_documents_render_over_a_grid_of_concrete_sizes(notation: str, steps: int) -> None:
    """Concrete sizes give the document the symbolic sizes give, with the sizes stated."""
    symbolic = _jacobian(render_latex(ModelSpec(steps=steps, notation=notation)))
    for sizes in SIZES:
        tex, md = render_documents(ModelSpec(steps=steps, notation=notation, **sizes))
        assert _jacobian(tex) == symbolic
        for key, value in sizes.items():
            symbol = {"n_in": "n_{0}", "n_hidden": "n_{1}", "n_out": "n_{2}", "batch": "m"}[key]
            assert f"${symbol} = {value}$" in tex
        assert md.count("$$") % 2 == 0


# -- 1. the ReLU indicator ------------------------------------------------------------
RELU = ModelSpec(steps=2, hidden="relu", notation="uvw")


def test_relu_indicator_is_a_bracket_the_text_defines() -> None:
    tex, md = render_documents(RELU)
    for text in (tex, md):
        assert r"\mathbb" not in text
        assert "[z > 0]" in text and "(Iverson's) is $1$ where the condition holds" in text
        assert r"\operatorname{diag}([h^{(j)} > 0]) W" in text


@pytest.mark.tex
@pytest.mark.slow
def test_relu_indicator_typesets_as_a_bracket() -> None:
    """The PDF's text holds the bracket, never the glyph amssymb puts for a blackboard 1 (⊮)."""
    require_pdflatex()
    if shutil.which("pdftotext") is None:
        pytest.fail("pdftotext (poppler-utils, installed beside pdftoppm) is missing")
    pdf, log = compile_pdf(render_latex(RELU))
    text = subprocess.run(
        ["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True
    ).stdout.decode("utf-8")
    assert "\u22ae" not in text
    assert "[z > 0]" in text
    assert overfull_boxes(log) == []
