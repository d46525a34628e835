"""Code generation from the derivation: a schedule, then a printer and templates per backend.

* :mod:`~symbptt.codegen.schedule` -- the rolled schedule of BPTT for any cell,
  by dependency analysis of the generic step form (what runs once over all
  steps, what stays in the loop); backend-independent;
* :mod:`~symbptt.codegen.rowform` -- every per-step quantity with one example
  per row (column-layout notations transposed symbolically);
* :mod:`~symbptt.codegen.lines` -- lines of code that fit, and in-place lowering;
* the NumPy backend: :mod:`~symbptt.codegen.numpy_rolled` (the schedule
  printed), :mod:`~symbptt.codegen.numpy_unrolled` (straight-line code),
  :mod:`~symbptt.codegen.numpy_module` (the module's text from the templates
  ``templates/gradients*.py.jinja``), with the printer
  :class:`symbptt.codegen.numpy_printer.NumPyPrinter`.
"""

from __future__ import annotations

from .numpy_module import emit_numpy
from .rowform import RowForm

__all__ = ["RowForm", "emit_numpy"]
