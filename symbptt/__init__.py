"""symbptt: Backpropagation Through Time, derived symbolically.

From a short model spec (an Elman RNN) symbptt builds the unrolled graph in
SymPy, derives every gradient by matrix-level reverse mode, proves it against
scalar differentiation, and prints it as documents and NumPy code.
"""

from __future__ import annotations

from .check import CheckResult, check
from .derive import Derivation, derive
from .documents import build_pdf, render_latex, render_markdown
from .emit import emit_numpy, load_module
from .exprlang import ExpressionError
from .graph import build_graph
from .notation import NOTATIONS
from .spec import ModelSpec, SpecError

__version__ = "0.1.0"

__all__ = [
    "NOTATIONS",
    "CheckResult",
    "Derivation",
    "ExpressionError",
    "ModelSpec",
    "SpecError",
    "__version__",
    "build_graph",
    "build_pdf",
    "check",
    "derive",
    "emit_numpy",
    "load_module",
    "render_latex",
    "render_markdown",
]
