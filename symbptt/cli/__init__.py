"""The ``symbptt`` command (also ``python -m symbptt``)."""

from .commands import main

__all__ = ["main"]
