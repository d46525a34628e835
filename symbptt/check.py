"""The checker's public names (the checker is the package :mod:`symbptt.checker`).

``from symbptt.check import check, names, ...`` keeps working; ``symbptt.check``
itself is the function :func:`symbptt.checker.check`, with ``names``,
``names_text`` and ``correct_formula`` reachable from it.
"""

from __future__ import annotations

from .checker import (
    DPS,
    Candidate,
    CheckResult,
    Counterexample,
    Formula,
    Mistake,
    NameInfo,
    check,
    correct_formula,
    model_equations,
    names,
    names_text,
    namespace,
)

__all__ = [
    "DPS",
    "Candidate",
    "CheckResult",
    "Counterexample",
    "Formula",
    "Mistake",
    "NameInfo",
    "check",
    "correct_formula",
    "model_equations",
    "names",
    "names_text",
    "namespace",
]
