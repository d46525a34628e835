"""The model representation every stage reads: cells as data, with their notations.

``load_cell("lstm")`` and ``load_cell("my_cell.toml")`` go through one code
path (:mod:`symbptt.model.load`); a :class:`Cell` holds the equations and the
:class:`Notation` s; a :class:`Program` says how cells compose (layers,
directions, masks).  See docs/cells.md for the file format.
"""

from .cell import HEAD_KEYS, HEAD_ROLES, Cell, Equation, Name, Notation, Parameter, Quantity
from .compose import Program, Unit, program
from .load import BUILTIN_CELLS, MAX_CELL_BYTES, CellWarning, cell_from_mapping, load_cell

__all__ = [
    "BUILTIN_CELLS",
    "HEAD_KEYS",
    "HEAD_ROLES",
    "MAX_CELL_BYTES",
    "Cell",
    "CellWarning",
    "Equation",
    "Name",
    "Notation",
    "Parameter",
    "Program",
    "Quantity",
    "Unit",
    "cell_from_mapping",
    "load_cell",
    "program",
]
