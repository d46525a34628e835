"""Generated gradient modules: ``emit_numpy`` (the source) and ``load_module`` (importing it).

The code generator lives in :mod:`symbptt.codegen` (a schedule derived from the
step form, and a printer plus templates per backend); this module is its entry
point:

* ``emit_numpy(spec)`` returns the source of a Python module (the contract is
  in the module docstring it prints, ``templates/gradients.py.jinja``) for any
  cell, rolled (any T: the hoisted schedule of
  :mod:`symbptt.codegen.schedule`) or unrolled (fixed T: the derivation's own
  assignments, one per line);
* ``load_module(source)`` imports such a source from a file, so that
  tracebacks show its lines.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from .codegen import RowForm, emit_numpy
from .codegen.numpy_module import emission_derivation

__all__ = ["RowForm", "emit_numpy", "load_module"]

_emission_derivation = emission_derivation


#: This process's private folder for generated modules (made on first use).
_MODULE_FOLDER: Path | None = None


def _module_folder() -> Path:
    """A folder only this user can read or write, made once per process (mode 0700).

    Private so that no other user can own it, plant a file or link in it, or
    read what is written there; ``tempfile.mkdtemp`` makes it under an
    unpredictable name.  It is left behind, as the tracebacks of the modules
    loaded from it point into it.
    """
    global _MODULE_FOLDER
    if _MODULE_FOLDER is None or not _MODULE_FOLDER.is_dir():
        _MODULE_FOLDER = Path(tempfile.mkdtemp(prefix="symbptt-"))
    return _MODULE_FOLDER


def load_module(source: str, name: str | None = None) -> ModuleType:
    """Import generated source from a file, so that tracebacks show its lines.

    The file is written once per process, under a name made of the hash of the
    source, in a private folder of the temporary directory (see
    :func:`_module_folder`): written whole to a new file, then renamed.
    """
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    folder = _module_folder()
    module_name = name or f"symbptt_generated_{digest}"
    path = folder / f"{module_name}.py"
    if not path.exists() or path.read_text(encoding="utf-8") != source:
        with tempfile.NamedTemporaryFile(
            "w",
            encoding="utf-8",
            dir=folder,
            prefix=f".{module_name}.",
            suffix=".tmp",
            delete=False,
        ) as partial:
            partial.write(source)
        os.replace(partial.name, path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load generated module from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
