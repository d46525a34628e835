"""Generated gradient modules: ``emit_numpy`` (the source) and ``load_module`` (importing it).

The code generator lives in :mod:`symbptt.codegen` (a schedule derived from the
step form, and a printer plus templates per backend); this module is its entry
point:

* ``emit_numpy(spec)`` returns the source of a Python module (the contract is
  in the module docstring it prints, ``templates/gradients.py.jinja``) for any
  cell, rolled (any T: the hoisted schedule of
  :mod:`symbptt.codegen.schedule`) or unrolled (fixed T: the derivation's own
  assignments, one per line);
* ``load_module(source)`` imports such a source, so that tracebacks show its
  lines (registered in :mod:`linecache`; no file is written).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import linecache
import sys
from types import CodeType, ModuleType

from ..core.derive import Derivation
from ..model.spec import ModelSpec
from . import RowForm, emit_numpy
from .numpy_module import (
    ARRAY_API_BACKENDS,
    emission_derivation,
    emit_array_api,
    emit_jax,
    emit_torch,
)

__all__ = [
    "BACKENDS",
    "BackendError",
    "RowForm",
    "emit",
    "emit_numpy",
    "load_module",
    "require_backend",
]


class BackendError(ValueError):
    """A backend symbptt does not print, or whose library is not installed."""


#: backend -> (the modules its code imports, the extra that installs them)
BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "numpy": (("numpy",), ""),
    "torch": (("torch",), "torch"),
    "jax": (("jax",), "jax"),
    "cupy": (("cupy", "array_api_compat"), "cupy"),
    "array_api": (("array_api_compat",), "array-api"),
}


def require_backend(backend: object) -> str:
    """``backend`` when symbptt prints it and its libraries are installed, else BackendError."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise BackendError(
            f"backend: got {backend!r}; expected one of {', '.join(map(repr, BACKENDS))}"
        )
    modules, extra = BACKENDS[backend]
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise BackendError(
                f"backend {backend!r} needs {module}, which is not installed: "
                f"pip install 'symbptt[{extra}]'"
            )
    return backend


def emit(spec: ModelSpec | Derivation, backend: str = "numpy", unrolled: bool | None = None) -> str:
    """The source of a gradient module of ``spec`` for ``backend`` (numpy, torch, jax, cupy
    or array_api).

    ``unrolled`` False (or None) gives the rolled module (any T), True
    straight-line code for ``spec.steps`` steps.  An unknown backend, or one whose
    library is not installed, raises :class:`BackendError` in one line.
    """
    require_backend(backend)
    if unrolled is not None and not isinstance(unrolled, bool):
        raise TypeError(f"unrolled: expected True, False or None, got {unrolled!r}")
    if backend == "torch":
        return emit_torch(spec, unrolled=bool(unrolled))
    if backend == "jax":
        return emit_jax(spec, unrolled=bool(unrolled))
    if backend in ARRAY_API_BACKENDS:
        return emit_array_api(spec, unrolled=bool(unrolled), backend=backend)
    return emit_numpy(spec, unrolled=bool(unrolled))


_emission_derivation = emission_derivation

#: The pseudo-folder of the generated modules' file names: no file is written, the
#: lines are registered in ``linecache`` (and served by the module's loader).
SOURCE_FOLDER = "<symbptt-generated>"


class _SourceLoader(importlib.abc.InspectLoader):
    """Loads a module from source text held in memory, under a stable pseudo-file name.

    ``get_source`` lets ``linecache`` (and so tracebacks and ``inspect``) find the
    lines again even after its cache is cleared.
    """

    def __init__(self, source: str, filename: str) -> None:
        self.source = source
        self.filename = filename

    def get_source(self, fullname: str) -> str:
        return self.source

    def get_code(self, fullname: str) -> CodeType:
        return compile(self.source, self.filename, "exec", dont_inherit=True)

    def exec_module(self, module: ModuleType) -> None:
        exec(self.get_code(module.__name__), module.__dict__)  # the text symbptt printed


def load_module(source: str, name: str | None = None) -> ModuleType:
    """Import generated source, so that tracebacks show its lines; nothing is written.

    The source is compiled under the pseudo-file name
    ``<symbptt-generated>/<name>.py`` (``name`` defaults to
    ``symbptt_generated_`` and a hash of the source), and its lines are
    registered in :mod:`linecache` (entries without a modification time are
    never invalidated), so tracebacks and ``inspect.getsource`` show the
    generated lines.  The module is registered in ``sys.modules`` under its name.
    """
    if not isinstance(source, str):
        raise TypeError(f"source: expected the module's text (a str), got {type(source).__name__}")
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    module_name = name or f"symbptt_generated_{digest}"
    filename = f"{SOURCE_FOLDER}/{module_name}.py"
    loader = _SourceLoader(source, filename)
    spec = importlib.util.spec_from_loader(module_name, loader, origin=filename)
    if spec is None:  # pragma: no cover -- spec_from_loader returns a spec for a loader
        raise ImportError(f"cannot load generated module {module_name}")
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = filename
    sys.modules[module_name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
