"""A file of the user's own formulas, one per parameter (``symbptt derive --check FILE``).

TOML, one table::

    [formulas]
    W_hh = "sum_t(delta[t] @ h[t-1].T)"
    b_y = "sum_t(y_hat[t] - y[t])"

Each key names a parameter in the model's notation (as ``symbptt check --wrt``
does), each value is a formula in the checker's expression language
(``docs/checking.md``).  The file is read as TOML (no code is run);
anything else in it is an error that names the file and the key.
"""

from __future__ import annotations

import os
from pathlib import Path

# tomllib: the standard library's, or tomli on Python 3.10
from ..model.load import read_at_most, special_file, tomllib

__all__ = ["FormulaFileError", "read_formula_file"]


#: The most a formula file may hold: a formula is at most 2000 characters, a model's
#: parameters a few dozen; anything larger is refused unread.
MAX_FORMULA_FILE_BYTES = 256 * 1024


class FormulaFileError(ValueError):
    """The file cannot be read as a table of formulas; the message is one line."""


def read_formula_file(path: str | os.PathLike[str]) -> tuple[tuple[str, str], ...]:
    """The ``(parameter, formula)`` pairs of the file, in the file's order."""
    where = str(path)
    if special_file(Path(path)):
        raise FormulaFileError(f"{where}: not a regular file (a formula file is a TOML file)")
    try:
        raw = read_at_most(path, MAX_FORMULA_FILE_BYTES)
        if raw is None:
            raise FormulaFileError(
                f"{where}: too large for a formula file (more than "
                f"{MAX_FORMULA_FILE_BYTES // 1024} KiB)"
            )
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise FormulaFileError(f"{where}: cannot be read: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FormulaFileError(f"{where}: not TOML: {exc}") from None
    other = sorted(key for key in data if key != "formulas")
    if other:
        raise FormulaFileError(
            f"{where}: unexpected key {other[0]!r}: the file holds one table, [formulas]"
        )
    table = data.get("formulas")
    if not isinstance(table, dict):
        raise FormulaFileError(
            f'{where}: expected a [formulas] table (e.g. W_hh = "sum_t(delta[t] @ h[t-1].T)")'
        )
    if not table:
        raise FormulaFileError(f"{where}: [formulas] is empty: give one formula per parameter")
    out = []
    for name, formula in table.items():
        if not isinstance(formula, str):
            raise FormulaFileError(
                f"{where}: formulas.{name}: expected a string (a formula in the checker's "
                f"expression language), got {type(formula).__name__}"
            )
        if not formula.strip():
            raise FormulaFileError(f"{where}: formulas.{name}: the formula is empty")
        out.append((name, formula))
    return tuple(out)
