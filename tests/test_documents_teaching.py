"""The teaching documents' edge cases (issue 12): concrete sizes, T <= 2, zero gradients, glyphs."""

from __future__ import annotations

import itertools
import re

import pytest

from symbptt import ModelSpec
from symbptt.documents import render_documents, render_latex

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
