"""symbptt: Backpropagation Through Time, derived symbolically.

From a short model spec (an Elman RNN) symbptt builds the unrolled graph in
SymPy, derives every gradient by matrix-level reverse mode, proves it against
scalar differentiation, and prints it as documents and NumPy code.
"""

from __future__ import annotations

from .derive import Derivation, derive
from .documents import build_pdf, render_latex, render_markdown
from .graph import build_graph
from .notation import NOTATIONS
from .spec import ModelSpec, SpecError

__version__ = "0.1.0"

__all__ = [
    "NOTATIONS",
    "Derivation",
    "ModelSpec",
    "SpecError",
    "__version__",
    "build_graph",
    "build_pdf",
    "derive",
    "render_latex",
    "render_markdown",
]
