"""symbptt: Backpropagation Through Time, derived symbolically.

From a short model spec (an Elman RNN) symbptt builds the unrolled graph in
SymPy, derives every gradient by matrix-level reverse mode, proves it against
scalar differentiation, and prints it as documents and NumPy code.
"""

from __future__ import annotations

from . import testing

# the module symbptt/check.py first, then the name: symbptt.check is the function
from .check import CheckResult, check
from .codegen.emit import BackendError, emit, emit_numpy, load_module
from .core.derive import Derivation, derive
from .core.graph import build_graph
from .expr.exprlang import ExpressionError
from .model.notation import NOTATIONS
from .model.spec import ModelSpec, SpecError
from .oracle.verification import build_pdf, render_latex, render_markdown
from .train import (
    SGD,
    Adagrad,
    Adam,
    clip_by_norm,
    clip_by_value,
    fit,
    gradient_norms,
    truncated_bptt,
)

__version__ = "0.1.0"

__all__ = [
    "NOTATIONS",
    "SGD",
    "Adagrad",
    "Adam",
    "BackendError",
    "CheckResult",
    "Derivation",
    "ExpressionError",
    "ModelSpec",
    "SpecError",
    "__version__",
    "build_graph",
    "build_pdf",
    "check",
    "clip_by_norm",
    "clip_by_value",
    "derive",
    "emit",
    "emit_numpy",
    "fit",
    "gradient_norms",
    "load_module",
    "render_latex",
    "render_markdown",
    "testing",
    "truncated_bptt",
]
