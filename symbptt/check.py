"""The checker's public names (the checker is the package :mod:`symbptt.checker`).

``from symbptt.check import check, names, ...`` keeps working; ``symbptt.check``
itself is the function :func:`symbptt.checker.check`, with ``names``,
``names_text`` and ``correct_formula`` reachable from it.
"""

from __future__ import annotations

from . import checker as _checker
from .checker import *  # noqa: F403  (the same public names, listed once)

__all__ = _checker.__all__
