"""The ``symbptt`` command (also ``python -m symbptt``).

Commands::

    symbptt derive [CONFIG.toml] [spec flags] --out DIR [--unrolled] [--no-pdf] [--force]
    symbptt check [CONFIG.toml] [spec flags] --wrt NAME "EXPR"
    symbptt notations [NAME]
    symbptt demo [--out DIR] [--optimizer adam|sgd|adagrad] [--iterations N] [...]
    symbptt --version

A spec comes from, lowest precedence first: the default ``ModelSpec()``, a
``--preset``, a TOML config file with the spec's field names
(``steps = 4``, ``hidden = "tanh"``, ``bias = true``, ...), then the spec
flags.  Exit status: 0 success (``check``: the candidate is equal), 1
``check``: not equal, 2 bad input; every bad-input error is one line on
stderr, without a traceback.  Outputs are written atomically (a temporary
file in the output folder, then a rename) and only after every output is
ready, so a failure leaves nothing half-written; a file symbptt did not
generate is never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import importlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

try:
    import fcntl
except ImportError:  # Windows: runs into one folder are not locked
    fcntl = None  # type: ignore[assignment]

from .. import __version__
from ..codegen.emit import BACKENDS
from ..files import stage
from ..model.load import read_at_most, special_file
from ..model.presets import PRESETS
from ..model.spec import CHOICES, MAX_CHECK_STEPS, MAX_SIZE, ModelSpec, SpecError
from ..model.spec_flags import SPEC_FLAGS as _SPEC_FLAGS
from ..model.spec_flags import SWITCH_FLAGS
from ..model.spec_flags import add_spec_flags as _add_spec_flags
from ..model.spec_flags import digits as _digits
from ..model.spec_flags import flag as _flag
from .progress import Progress

__all__ = [
    "UsageError",
    "build_artifacts",
    "check_destination",
    "generated_by_symbptt",
    "load_config",
    "main",
    "numerical_check",
    "output_folder",
    "output_lock",
    "run_demo",
    "spec_from_options",
    "write_outputs",
]

PROG = "symbptt"


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


# -- argument parsing -----------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: message``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# -- config and spec ------------------------------------------------------------------
def _toml_module() -> Any:
    try:
        return importlib.import_module("tomllib")
    except ModuleNotFoundError:  # Python 3.10
        try:
            return importlib.import_module("tomli")
        except ModuleNotFoundError:
            raise UsageError(
                "reading a TOML config file needs Python 3.11 or newer, or the tomli "
                "package (pip install tomli)"
            ) from None


#: A config file holds a spec's dozen fields: anything larger is refused unread.
MAX_CONFIG_BYTES = 64 * 1024
#: How many unknown keys an error message names before "and N more".
_UNKNOWN_SHOWN = 3


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The spec fields of a TOML config file; any problem is a one-line :class:`UsageError`.

    A file named ``pyproject.toml`` gives its ``[tool.symbptt]`` table.
    """
    path = Path(path)
    if special_file(path):
        raise UsageError(f"{path}: not a regular file (a config file is a TOML file)")
    try:
        raw = read_at_most(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise UsageError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, not a config file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the config file: {exc.strerror}") from None
    if raw is None:
        raise UsageError(
            f"{path}: too large for a config file (more than {MAX_CONFIG_BYTES // 1024} KiB; "
            "a spec is a few lines)"
        )
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark, as some editors write, is fine
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a TOML file (not UTF-8 text)") from None
    toml = _toml_module()
    try:
        data: dict[str, Any] = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {_one_line(str(exc))}") from None
    if path.name == "pyproject.toml":  # a project's own file: the spec is its [tool.symbptt]
        table = data.get("tool", {}).get("symbptt")
        if not isinstance(table, dict):
            raise UsageError(f"{path}: has no [tool.symbptt] table with the spec's fields")
        return table
    return data


def _one_line(text: str) -> str:
    return " ".join(text.split())


def spec_from_options(
    config: str | os.PathLike[str] | None = None,
    flags: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> ModelSpec:
    """The spec from a preset, a config file and flag values (later ones win).

    ``flags`` maps spec field names to values; ``None`` values are ignored.
    Bad values raise :class:`UsageError` naming the field and where it came from.
    """
    fields: dict[str, Any] = {}
    source: dict[str, str] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(
                f"--preset: got {preset!r}; expected one of {', '.join(map(repr, PRESETS))}"
            )
        fields.update(PRESETS[preset].as_dict())
        source.update(dict.fromkeys(fields, f"--preset {preset}"))
    if config is not None:
        data = load_config(config)
        _refuse_unknown_keys(data, str(config))
        cell = data.get("cell")
        if isinstance(cell, str) and cell.endswith(".toml") and not Path(cell).is_absolute():
            data = {**data, "cell": str(Path(config).parent / cell)}  # beside the config file
        fields.update(data)
        source.update(dict.fromkeys(data, str(config)))
    for name, value in (flags or {}).items():
        if value is not None:
            fields[name] = value
            source[name] = _flag(name)
    try:
        return ModelSpec.from_mapping(fields)
    except SpecError as exc:
        message = _one_line(str(exc))
        name = message.split(":", 1)[0]
        where = source.get(name)
        if where is None:  # unknown fields: the message quotes them before the ";"
            named = message.split(";", 1)[0]
            where = ", ".join(sorted({src for key, src in source.items() if repr(key) in named}))
        raise UsageError(f"{message} (from {where})" if where else message) from None


def _refuse_unknown_keys(data: Mapping[str, Any], where: str) -> None:
    """Unknown keys of a config file, in one short line, in time linear in their number."""
    known = set(ModelSpec.field_names())
    unknown = [key for key in data if key not in known]
    if not unknown:
        return
    shown = heapq.nsmallest(_UNKNOWN_SHOWN, unknown)
    names = ", ".join(_short_repr(key) for key in shown)
    more = f" and {len(unknown) - len(shown)} more" if len(unknown) > len(shown) else ""
    raise UsageError(
        f"unknown spec field(s) {names}{more}; "
        f"expected some of {', '.join(ModelSpec.field_names())} (from {where})"
    )


def _short_repr(value: object, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _spec_from_args(args: argparse.Namespace, config: str | None) -> ModelSpec:
    flags = {name: getattr(args, name) for name, _, _ in _SPEC_FLAGS}
    flags |= {dest: getattr(args, dest) for _, dest, _, _ in SWITCH_FLAGS}
    return spec_from_options(config, flags, args.preset)


# -- writing outputs ------------------------------------------------------------------
#: Lines that every file symbptt writes carries near its top (the generated
#: code's and documents' headers); a file without one is the user's.
_MARKER_WINDOW = 4096
#: Binary files symbptt writes (PDF, PNG) carry the marker in their metadata,
#: anywhere in the file: these are read whole, up to this size.
_BINARY_LIMIT = 64 * 1024 * 1024
_BINARY_MAGIC = (b"%PDF", b"\x89PNG")


def _marker() -> str:
    """The marker line the generated code and documents carry ("Generated by symbptt")."""
    from ..documents import MARKER

    return MARKER


def generated_by_symbptt(path: Path) -> bool:
    """True when ``path`` is a file symbptt wrote (its header or metadata carries the marker)."""
    marker = _marker().encode()
    try:
        with path.open("rb") as handle:
            head = handle.read(_MARKER_WINDOW)
            if marker in head:
                return True
            if head.startswith(_BINARY_MAGIC):
                return marker in head + handle.read(_BINARY_LIMIT)
    except OSError:
        return False
    return False


def check_destination(folder: Path, names: Sequence[str], force: bool = False) -> None:
    """Refuse early (before any work) an output folder :func:`write_outputs` would refuse.

    Nothing is created: a folder that does not exist yet must be creatable,
    which is checked on its nearest existing ancestor.
    """
    try:
        _check_destination(folder, names, force)
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a loop of links
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(
            f"{_short_path(folder)}: cannot use as the output folder: {reason}"
        ) from None


#: The longest file or folder name (in bytes) the usual file systems take.
_NAME_MAX = 255


def _short_path(path: Path, width: int = 80) -> str:
    text = str(path)
    return text if len(text) <= width else f"{text[: width // 2]}...{text[-width // 2 :]}"


def output_folder(text: str) -> Path:
    """The ``--out`` value as a folder; an empty one is refused (not taken as ``.``)."""
    if not text.strip():
        raise UsageError(
            f"--out: got {text!r}; expected a folder name (--out . for the current folder)"
        )
    return Path(text)


def _check_destination(folder: Path, names: Sequence[str], force: bool) -> None:
    for part in folder.parts:
        if len(os.fsencode(part)) > _NAME_MAX:
            raise UsageError(
                f"{_short_path(folder)}: cannot use as the output folder: a name in it is "
                f"{len(os.fsencode(part))} bytes long; at most {_NAME_MAX}"
            )
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"{folder}: exists and is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{folder}: cannot write in the output folder: permission denied")
    else:
        parent = folder.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UsageError(f"{folder}: cannot create the output folder: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{folder}: cannot create the output folder: permission denied")
        return
    foreign: list[str] = []
    for name in names:
        target = folder / name
        if target.is_dir():
            raise UsageError(f"{target}: is a folder where symbptt writes {name}")
        if target.exists() and not force and not generated_by_symbptt(target):
            foreign.append(str(target))
    if foreign:
        raise UsageError(
            f"{', '.join(foreign)}: not written by symbptt; "
            "move it away or pass --force to overwrite it"
        )


@dataclass
class Written:
    """What :func:`write_outputs` did."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)  # earlier runs' outputs not written now


def write_outputs(
    folder: Path,
    files: Mapping[str, bytes],
    force: bool = False,
    replaces: Sequence[str] = (),
) -> Written:
    """Write ``files`` (name -> bytes) into ``folder``, all or nothing, each atomically.

    Before anything is written: the folder is created if needed, and every
    destination is checked (a folder in the way, or a file symbptt did not
    generate without ``force``, is a :class:`UsageError`).  Every file is
    then staged as a temporary file in the folder; only when all are staged
    are they renamed into place.  On failure the staged files are removed.
    Then the files named in ``replaces`` that this run did not write, and
    that an earlier run of symbptt wrote (they carry its marker), are
    removed, so that no output of another spec stays beside the new ones.
    """
    check_destination(folder, list(files), force)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{folder}: exists and is not a folder") from None
    except OSError as exc:
        raise UsageError(f"{folder}: cannot create the output folder: {exc.strerror}") from None
    staged: list[tuple[Path, Path]] = []
    result = Written(folder)
    try:
        for name, data in files.items():
            staged.append((stage(folder, name, data), folder / name))
        for temp, target in staged:
            os.replace(temp, target)
            result.files.append(target)
    except BaseException as exc:  # nothing half-written, not even on Ctrl-C
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            raise UsageError(f"{folder}: cannot write the outputs: {reason}") from None
        raise
    for name in replaces:
        stale = folder / name
        if name not in files and stale.is_file() and generated_by_symbptt(stale):
            try:
                stale.unlink()
            except OSError as exc:
                raise UsageError(
                    f"{stale}: written by an earlier run, cannot remove it: {exc.strerror}"
                ) from None
            result.removed.append(stale)
    return result


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for one run; a second run at once is refused.

    The lock is ``flock`` on the folder itself (no lock file to leave
    behind; released by the system if the process dies).  A folder made
    here for the lock is removed again if the run leaves it empty.  Where
    the system or file system has no ``flock``, runs are not locked.
    """
    made: list[Path] = []
    missing = folder
    while not missing.exists():
        made.append(missing)
        missing = missing.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{folder}: cannot create the output folder: {exc.strerror}") from None
    try:  # a folder we may write in but not read (mode -wx) cannot be opened: no lock
        descriptor: int | None = os.open(folder, os.O_RDONLY)
    except OSError:
        descriptor = None
    try:
        if fcntl is not None and descriptor is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(
                    f"{folder}: another symbptt run is writing into this folder; "
                    "wait for it to finish or choose another --out"
                ) from None
            except OSError:  # no flock here (some network file systems): go on unlocked
                pass
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)
        for path in made:  # innermost first
            try:
                path.rmdir()
            except OSError:  # not empty: the run wrote there
                break


#: Every file name derive and demo write: a run removes the ones of an earlier
#: run (carrying symbptt's marker) that it does not write itself.
_ALL_OUTPUTS = (
    "gradients.py",
    "gradients_unrolled.py",
    *(
        f"gradients_{backend}{form}.py"
        for backend in BACKENDS
        if backend != "numpy"
        for form in ("", "_unrolled")
    ),
    "derivation.tex",
    "derivation.md",
    "derivation.pdf",
    "loss.png",
    "gradient_norms.png",
)


def _output_names(unrolled: bool, pdf: bool, backend: str = "numpy") -> list[str]:
    names = ["gradients.py"]
    if unrolled:
        names.append("gradients_unrolled.py")
    if backend != "numpy":
        names.append(f"gradients_{backend}.py")
        if unrolled:
            names.append(f"gradients_{backend}_unrolled.py")
    names += ["derivation.tex", "derivation.md"]
    if pdf:
        names.append("derivation.pdf")
    return names


# -- output helpers -------------------------------------------------------------------
class _StdoutNow:
    """``sys.stdout`` as it is when written to (tests and callers may replace it)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


#: Progress off a terminal: each stage a line on stdout, flushed, so that a long
#: run piped to a log shows what it is doing (the bar is for terminals only).
_LINES: dict[str, Any] = {"lines": True, "line_stream": _StdoutNow()}


def _print(text: str = "", stream: TextIO | None = None) -> None:
    """One line of output, flushed at once (a piped stdout is not line-buffered)."""
    print(text, file=stream if stream is not None else sys.stdout, flush=True)


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr, flush=True)
    return 2


# -- the parser -----------------------------------------------------------------------
def _derive_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        allow_abbrev=False,
        name="derive",
        usage=(
            "symbptt derive [CONFIG.toml] [spec flags] --out DIR [--unrolled] [--no-pdf] [--force]"
        ),
        help="derive a model: gradient code, LaTeX/Markdown/PDF derivation, numerical check",
        description=(
            "Derive the BPTT gradients of a model and write DIR/gradients.py (plus "
            "gradients_unrolled.py with --unrolled), derivation.tex, derivation.md and, "
            "when a TeX engine is installed, derivation.pdf. The generated code is checked "
            "against central finite differences and the relative error printed."
        ),
    )
    p.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG.toml",
        help="spec fields in TOML (or a pyproject.toml with a [tool.symbptt] table)",
    )
    _add_spec_flags(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    out.add_argument(
        "--unrolled",
        action="store_true",
        help=f"also write gradients_unrolled.py (fixed T, at most {MAX_UNROLLED_STEPS})",
    )
    out.add_argument(
        "--backend",
        default="numpy",
        metavar="NAME",
        help=(
            "numpy (default), torch, jax, cupy or array_api: also write "
            "gradients_<backend>.py (any T; with --unrolled also "
            "gradients_<backend>_unrolled.py): for torch a torch.autograd.Function and "
            "nn.Module (needs PyTorch), for jax a jax.custom_vjp loss (needs JAX), for cupy "
            "the array API module for CuPy arrays (needs CuPy), for array_api the same code "
            "for any array API namespace (needs array-api-compat)"
        ),
    )
    out.add_argument("--no-pdf", action="store_true", help="do not build derivation.pdf")
    out.add_argument(
        "--force", action="store_true", help="overwrite files symbptt did not generate"
    )
    p.add_argument(
        "--check",
        metavar="FILE",
        help=(
            'a TOML file of your own formulas, one per parameter ([formulas] W_hh = "...", '
            "in the expression language of `symbptt check`): each is checked and printed in "
            "the documents with its verdict"
        ),
    )
    _add_report_flags(p)
    return p


def _check_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        allow_abbrev=False,
        name="check",
        usage='symbptt check [CONFIG.toml] [spec flags] (--wrt NAME "EXPR" | --names)',
        help="check a hand-derived gradient (exit 0 equal, 1 not equal, 2 bad input)",
        description=(
            "Check a hand-derived gradient written in the expression language against the "
            "derivation. Exit status 0 when equal, 1 when not, 2 on bad input. "
            "See `symbptt notations` for the names of each notation. "
            f"It takes --steps up to {MAX_CHECK_STEPS} (a sum_t formula holds for every T). "
            "Put -- before an EXPR that starts with '-'."
        ),
    )
    p.add_argument(
        "operands",
        nargs="*",
        metavar="CONFIG.toml EXPR",
        help="an optional config file, then the candidate expression (quoted)",
    )
    p.add_argument("--wrt", metavar="NAME", help="the parameter, e.g. W_hh (required with EXPR)")
    p.add_argument(
        "--names",
        action="store_true",
        help="list the names EXPR may use for this model (any cell: gates, states, adjoints)",
    )
    _add_spec_flags(p)
    _add_report_flags(p)
    return p


def _add_report_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("report (for scripts)").add_mutually_exclusive_group()
    group.add_argument(
        "--quiet",
        dest="report",
        action="store_const",
        const="quiet",
        default="text",
        help="print nothing but warnings and errors (the exit status tells)",
    )
    group.add_argument(
        "--json",
        dest="report",
        action="store_const",
        const="json",
        help="print one JSON object on stdout instead of text",
    )


def _notations_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        allow_abbrev=False,
        name="notations",
        help="a cell's notations: equations and the names the expression language uses",
        description=(
            "List the notations of a cell (the Elman cell's four, one per seed document, "
            "unless --cell names another): their equations, layout, first step and the "
            "names `symbptt check` understands."
        ),
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="show only this notation")
    p.add_argument(
        "--cell",
        default="elman",
        metavar="NAME|FILE",
        help="the cell whose notations to list: elman (default), lstm, gru or a .toml file",
    )
    return p


def _cells_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        allow_abbrev=False,
        name="cells",
        help="the built-in cells (elman, lstm, gru) with their equations; or check a cell file",
        description=(
            "List the built-in recurrent cells: their states, parameters, step equations "
            "(column layout: examples are columns) and notations. Given a .toml cell file, "
            "read it (it is parsed, never executed) and show it the same way, or say in one "
            "line what is wrong with it."
        ),
    )
    p.add_argument("name", nargs="?", metavar="NAME|FILE", help="show only this cell")
    return p


def _demo_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        allow_abbrev=False,
        name="demo",
        help='derive and train the seeds\' "hello" model with the generated code',
        description=(
            'The seeds\' "hello" example (characters h, e, l, o one-hot): derive it, write '
            "its artifacts to ./symbptt-demo/, train it with the generated code, print the "
            'loss and what it predicts after each prefix of "hello", and plot the loss and '
            "the gradient norms against k when matplotlib is installed."
        ),
    )
    p.add_argument("--out", default="symbptt-demo", metavar="DIR", help="default: %(default)s")
    p.add_argument(
        "--optimizer",
        choices=("adam", "sgd", "adagrad"),
        default="adam",
        help="default: %(default)s",
    )
    p.add_argument(
        "--iterations",
        type=_digits("--iterations", MAX_ITERATIONS),
        default=200,
        metavar="N",
        help=f"1 to {MAX_ITERATIONS} (default: %(default)s)",
    )
    p.add_argument(
        "--hidden-units",
        type=_digits("--hidden-units", MAX_SIZE),
        default=8,
        metavar="N",
        help=f"1 to {MAX_SIZE} (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=_digits("--seed", MAX_SEED),
        default=0,
        help=f"random seed, 0 to {MAX_SEED} (default: %(default)s)",
    )
    p.add_argument("--no-pdf", action="store_true", help="do not build derivation.pdf")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.add_argument(
        "--verify",
        action="store_true",
        help="fill the documents' Verified section (the sympy.diff proof: slower)",
    )
    p.add_argument("--force", action="store_true", help="overwrite files symbptt did not generate")
    return p


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = _Parser(
        prog=PROG,
        allow_abbrev=False,
        description=(
            "Backpropagation Through Time derived symbolically: derivation documents in your "
            "notation, verified NumPy gradient code, and a checker for hand derivations."
        ),
        epilog="Run `symbptt COMMAND --help` for a command's options. Try `symbptt demo`.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands = {
        "derive": _derive_parser(sub),
        "check": _check_parser(sub),
        "notations": _notations_parser(sub),
        "cells": _cells_parser(sub),
        "demo": _demo_parser(sub),
    }
    return parser, commands


# -- commands -------------------------------------------------------------------------
@dataclass
class Artifacts:
    """Everything ``derive`` (and ``demo``) writes, in memory, before anything is written."""

    spec: ModelSpec
    files: dict[str, bytes] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # one line each
    failed: bool = False  # something that should have worked did not (exit status 1)


def build_artifacts(
    spec: ModelSpec,
    *,
    unrolled: bool,
    pdf: bool,
    verify: bool = True,
    progress: Progress | None = None,
    backend: str = "numpy",
    user: tuple[Any, ...] = (),
    user_file: str = "",
) -> Artifacts:
    """Derive ``spec`` and print its code and documents (nothing is written here).

    With ``verify`` the documents' closing section is filled by checks run
    now (the scalar ``sympy.diff`` proof and the numerical check of the
    code); without, it says they were not run.  The PDF needs pdflatex:
    without it, a warning says how to install it and the other files are
    still produced.
    """
    from ..codegen.emit import emit, emit_numpy
    from ..core.derive import derive
    from ..documents import TeXError, TeXNotFoundError, compile_pdf

    bar = progress if progress is not None else Progress(None, "", enabled=False)
    out = Artifacts(spec)
    bar.stage("deriving the gradients")
    derivation = derive(spec)
    bar.stage("printing the NumPy code")
    out.files["gradients.py"] = emit_numpy(derivation).encode()
    if unrolled:
        out.files["gradients_unrolled.py"] = emit_numpy(derivation, unrolled=True).encode()
    if backend != "numpy":
        bar.stage(f"printing the {backend} code")
        out.files[f"gradients_{backend}.py"] = emit(derivation, backend=backend).encode()
        if unrolled:
            source = emit(derivation, backend=backend, unrolled=True)
            out.files[f"gradients_{backend}_unrolled.py"] = source.encode()
    if verify:
        bar.stage("printing the documents (proving the derivation by sympy.diff)")
    else:
        bar.stage("printing the documents")
    code = out.files["gradients.py"].decode()
    try:
        tex, md = _render_documents(derivation, verify, code, user, user_file)
    except SpecError as exc:  # a spec the documents do not take: the code is still written
        out.warnings.append(f"derivation.tex, .md and .pdf not written: {_one_line(str(exc))}")
        return out
    out.files["derivation.tex"] = tex.encode()
    out.files["derivation.md"] = md.encode()
    if pdf:
        bar.stage("typesetting derivation.pdf")
        try:
            out.files["derivation.pdf"] = compile_pdf(tex)[0]
        except TeXNotFoundError as exc:
            out.warnings.append(f"derivation.pdf not built: {_one_line(str(exc))}")
        except TeXError as exc:
            first = _one_line(str(exc).splitlines()[0])
            out.warnings.append(f"derivation.pdf not built: {first} (derivation.tex is written)")
            out.failed = True
    return out


def _render_documents(
    derivation: Any,
    verify: bool,
    source: str,
    user: tuple[Any, ...] = (),
    user_file: str = "",
) -> tuple[str, str]:
    """derivation.tex and derivation.md from one rendering (their checks run once, here,
    on ``source``: the generated NumPy module just printed, not printed again; ``user``:
    the verdicts of ``--check FILE``, already run)."""
    from ..codegen.emit import load_module
    from ..documents import render_documents
    from ..oracle.verification import run_checks

    checks = None
    if verify:
        checks = run_checks(derivation, load_module(source), user=user, user_file=user_file)
    return render_documents(derivation, checks=checks)


#: The most steps ``--unrolled`` writes straight-line code for: its numerical check
#: runs at its own T and costs O(T²) (T = 100: about 9 s in all; T = 1000: minutes).
MAX_UNROLLED_STEPS = 100

#: The largest relative error against central differences that passes (float64).
GRADCHECK_TOLERANCE = 1e-6


@dataclass(frozen=True)
class NumericalCheck:
    """The generated code's gradients against central finite differences of its own loss."""

    name: str  # the file checked
    ok: bool
    error: float  # the largest relative error over every gradient
    worst: str  # the gradient it occurs in
    sizes: str
    not_run: str = ""  # why the module could not run here (a CuPy module without a GPU)

    @property
    def text(self) -> str:
        if self.not_run:
            return f"  {self.name:<22} not run: {self.not_run}"
        verdict = "OK" if self.ok else f"FAILED (above {GRADCHECK_TOLERANCE:.0e})"
        return (
            f"  {self.name:<22} max relative error {self.error:.1e} (in d{self.worst})  "
            f"{verdict}   [{self.sizes}]"
        )


def _print_checks(checks: Sequence[NumericalCheck]) -> None:
    if checks:
        _print(
            "numerical check of the generated code against central differences of its loss "
            "(float64; every parameter, X and h0):"
        )
    for check in checks:
        _print(check.text)


#: The rolled module works for any T; its entry-by-entry check runs at most this many steps.
GRADCHECK_MAX_STEPS = 12


def numerical_check(
    name: str, source: str, numpy_source: str | None = None, seed: int = 0
) -> NumericalCheck:
    """Check a generated module's gradients (parameters, X, h0) by central differences.

    A rolled module is checked at ``min(T, GRADCHECK_MAX_STEPS)`` steps (its
    code does not depend on T; central differences of every entry of X cost
    O(T²)); an unrolled one at its own T.  A torch, JAX or array API module is
    called through NumPy arrays (CuPy's for a CuPy module, not run without a GPU);
    its random problem is drawn by the NumPy module ``numpy_source`` of the same spec.
    """
    from ..codegen.emit import load_module
    from ..oracle.gradcheck import (
        cupy_unavailable,
        finite_difference_errors,
        numpy_view,
        random_problem,
    )

    module = load_module(source)
    draws = module
    if getattr(module, "NAMESPACE", None) == "cupy":
        why = cupy_unavailable()
        if why is not None:
            twin = "its functions are the array_api module's: --backend array_api checks them"
            return NumericalCheck(name, True, 0.0, "", "", not_run=f"{why} ({twin})")
    foreign = getattr(module, "torch", None) or getattr(module, "jnp", None)
    if (foreign or hasattr(module, "NAMESPACE")) and numpy_source is not None:
        draws, module = load_module(numpy_source), numpy_view(module)
    steps = module.STEPS or min(int(module.SPEC["steps"]), GRADCHECK_MAX_STEPS)
    problem = random_problem(draws, steps=steps, rng=seed)
    errors = finite_difference_errors(module, problem)
    worst = max(errors, key=lambda key: errors[key])
    steps, batch, n_in = problem.X.shape
    n_hidden = _readout_size(module, problem.params)
    n_out = problem.Y.shape[-1]
    sizes = f"T={steps}, m={batch}, n_in={n_in}, n_hidden={n_hidden}, n_out={n_out}"
    error = float(errors[worst])
    return NumericalCheck(name, error < GRADCHECK_TOLERANCE, error, worst, sizes)


def _readout_size(module: Any, params: Mapping[str, Any]) -> int:
    """The size of the state the output layer reads, from the output weight (every cell has one)."""
    roles: dict[str, str] = module.ROLES
    weight = params[next(name for name, role in roles.items() if role == "output_weight")]
    return int(weight.shape[1] if module.LAYOUT == "column" else weight.shape[0])


def _numerical_checks(artifacts: Artifacts, bar: Progress) -> list[NumericalCheck]:
    checks = []
    for name in (
        "gradients.py",
        "gradients_unrolled.py",
        "gradients_torch.py",
        "gradients_torch_unrolled.py",
        "gradients_jax.py",
        "gradients_jax_unrolled.py",
        "gradients_array_api.py",
        "gradients_array_api_unrolled.py",
        "gradients_cupy.py",
        "gradients_cupy_unrolled.py",
    ):
        if name in artifacts.files:
            bar.stage(f"checking {name} numerically")
            numpy = artifacts.files.get("gradients.py") or artifacts.files["gradients_unrolled.py"]
            reference = numpy.decode()
            checks.append(numerical_check(name, artifacts.files[name].decode(), reference))
    return checks


def _user_formulas(spec: ModelSpec, path: str | None) -> tuple[tuple[Any, ...], str]:
    """``--check FILE``: the file read and each formula checked, before anything is
    derived or written; a bad file, or a formula the checker cannot read, is a UsageError."""
    if path is None:
        return (), ""
    from ..checker.formula_file import FormulaFileError, read_formula_file
    from ..expr.exprlang import ExpressionError
    from ..oracle.verification import formula_checks

    try:
        formulas = read_formula_file(path)
    except FormulaFileError as exc:
        raise UsageError(f"--check {exc}") from None
    verdicts: list[Any] = []
    for wrt, formula in formulas:
        try:
            verdicts += formula_checks(spec, [(wrt, formula)])
        except ExpressionError as exc:
            raise UsageError(f"--check {path}: formulas.{wrt}: {_expression_error(exc)}") from None
        except ValueError as exc:  # not a parameter of this model
            raise UsageError(f"--check {path}: formulas.{wrt}: {_one_line(str(exc))}") from None
    return tuple(verdicts), Path(path).name


def _cmd_derive(args: argparse.Namespace) -> int:
    from ..codegen.emit import BackendError, require_backend

    spec = _spec_from_args(args, args.config)
    user, user_file = _user_formulas(spec, args.check)
    unrolled = args.unrolled
    if unrolled and spec.steps > MAX_UNROLLED_STEPS:
        raise UsageError(
            f"--unrolled: T = {spec.steps} steps; straight-line code is written for at most "
            f"{MAX_UNROLLED_STEPS} (gradients.py takes any T)"
        )
    try:
        backend = require_backend(args.backend)
    except BackendError as exc:
        raise UsageError(f"--backend: {exc}") from None
    folder = output_folder(args.out)
    names = _output_names(unrolled=unrolled, pdf=not args.no_pdf, backend=backend)
    check_destination(folder, names, force=args.force)
    shown = {"enabled": False} if args.report != "text" else _LINES
    with output_lock(folder), Progress(None, "symbptt derive", **shown) as bar:
        artifacts = build_artifacts(
            spec,
            unrolled=unrolled,
            pdf=not args.no_pdf,
            progress=bar,
            backend=backend,
            user=user,
            user_file=user_file,
        )
        bar.stage("writing the files")
        written = write_outputs(folder, artifacts.files, args.force, _ALL_OUTPUTS)
        checks = _numerical_checks(artifacts, bar)
    ok = all(check.ok for check in checks) and not artifacts.failed
    for warning in artifacts.warnings:
        _print(f"warning: {warning}", sys.stderr)
    if args.report == "json":
        _print(
            json.dumps(
                {
                    "ok": ok,
                    "spec": spec.as_dict(),
                    "spec_hash": spec.hash(),
                    "written": [str(path) for path in written.files],
                    "removed": [str(path) for path in written.removed],
                    "warnings": artifacts.warnings,
                    "checks": [dataclasses.asdict(check) for check in checks],
                    "formulas": [
                        {"wrt": v.wrt, "formula": v.formula, "verdict": v.verdict} for v in user
                    ],
                },
                indent=2,
            )
        )
    elif args.report == "text":
        _print(f"{_describe(spec)}")
        for path in written.files:
            _print(f"wrote {path}")
        for path in written.removed:
            _print(f"removed {path} (an earlier run's, not written by this one)")
        _print_checks(checks)
        if user:
            _print(f"your formulas ({user_file}; the documents give each in full):")
            for verdict in user:
                _print(f"  {verdict.wrt:<22} {verdict.verdict}")
    return 0 if ok else 1


def _describe(spec: ModelSpec) -> str:
    sizes = ", ".join(
        f"{label}={value}"
        for label, value in (
            ("n_in", spec.n_in),
            ("n_hidden", spec.n_hidden),
            ("n_out", spec.n_out),
            ("batch", spec.batch),
        )
        if value is not None
    )
    cell = spec.model
    parts = [
        f"{cell.name} cell",
        f"notation {spec.notation}",
        f"T={spec.steps}",
        *([f"{spec.hidden} hidden"] if cell.activation else []),
        f"{spec.output} output",
        spec.loss,
        spec.mode,
        f"{spec.time_reduction} over time",
        f"{spec.batch_reduction} over the batch",
    ]
    if not spec.bias:
        parts.append("no bias")
    if spec.layers > 1:
        parts.append(f"{spec.layers} layers")
    if spec.direction != "forward":
        parts.append(spec.direction)
    if spec.masked:
        parts.append("masked")
    if spec.initial_inputs:
        initial = [f"{key}0" for key in spec.initial_inputs]
        parts.append(
            f"{initial[0]} an input" if len(initial) == 1 else f"{' and '.join(initial)} inputs"
        )
    if sizes:
        parts.append(sizes)
    return f"model: {', '.join(parts)} (spec {spec.hash()})"


def _cmd_check(args: argparse.Namespace) -> int:
    from ..checker import check
    from ..expr.exprlang import ExpressionError

    operands: list[str] = args.operands
    if args.names:
        if len(operands) > 1 or (operands and not operands[0].endswith(".toml")):
            raise UsageError("--names takes no EXPR (only an optional CONFIG.toml)")
        from ..checker import names_text

        _print(names_text(_spec_from_args(args, operands[0] if operands else None)))
        return 0
    if not operands:
        raise UsageError("expected [CONFIG.toml] EXPR (or --names)")
    if args.wrt is None:
        raise UsageError("--wrt NAME is required with EXPR (the parameter, e.g. W_hh)")
    if len(operands) > 2:
        raise UsageError(
            f"expected [CONFIG.toml] EXPR, got {len(operands)} operands "
            f"({' '.join(map(repr, operands))}); quote the expression"
        )
    config, expr = (None, operands[0]) if len(operands) == 1 else operands
    if config is not None and expr.endswith(".toml") and not config.endswith(".toml"):
        config, expr = expr, config  # EXPR given before CONFIG.toml
    spec = _spec_from_args(args, config)
    if not expr.strip():
        raise UsageError("EXPR: the candidate expression is empty")
    try:
        result = check(spec, args.wrt, expr)
    except ExpressionError as exc:
        raise UsageError(f"EXPR: {_expression_error(exc)}") from None
    except ValueError as exc:  # wrt names no gradient of the model
        raise UsageError(str(exc)) from None
    if args.report == "json":
        report = {
            "ok": result.ok,
            "wrt": result.wrt,
            "method": result.method,
            "candidate": result.candidate,
            "correct": str(result.formula),
            "mistakes": list(result.mistake_names),
            "sizes": result.sizes,
            "explanation": result.explain(),
        }
        _print(json.dumps(report, indent=2, default=str))
    elif args.report == "text":
        _print(result.explain())
    return 0 if result.ok else 1


def _expression_error(exc: Any) -> str:
    """An ExpressionError on one line: the message and where in the text."""
    message = _one_line(getattr(exc, "message", str(exc)))
    text: str = getattr(exc, "text", "") or ""
    offset: int | None = getattr(exc, "offset", None)
    if offset is None or not text or "\n" in text:
        return message
    window = text[offset : offset + 24]
    shown = window + ("..." if offset + 24 < len(text) else "")
    return f"{message}; at column {offset + 1}: {shown}"


def _spec_words(spec: ModelSpec) -> str:
    """The spec fields the printed equations depend on, in a few words."""
    hidden = f"{spec.hidden} hidden, " if spec.model.activation else ""
    return (
        f"T = {spec.steps}, {hidden}{spec.output} output, {spec.loss}, "
        f"{spec.batch_reduction} over the batch, {spec.time_reduction} over time"
    )


def _cmd_notations(args: argparse.Namespace) -> int:
    from ..checker import model_equations, names
    from ..model import load_cell

    try:
        cell = load_cell(args.cell)
    except SpecError as exc:
        raise UsageError(_one_line(str(exc))) from None
    notations = cell.notations
    order = [key for key in CHOICES["notation"] if key in notations]  # Elman's seed order
    order += [key for key in notations if key not in order]
    chosen = [args.name] if args.name else order
    for key in chosen:
        if key not in notations:
            raise UsageError(f"NAME: got {key!r}; expected one of {', '.join(map(repr, order))}")
    blocks = []
    for key in chosen:
        notation = notations[key]
        spec = ModelSpec(cell=args.cell, notation=key)
        first = notation.t0
        last = "T" if first == 1 else "T-1"
        layout = (
            "column vectors (examples are columns)"
            if notation.layout == "column"
            else "row-major (a batch of m rows)"
        )
        default = " (the default)" if key == ModelSpec().notation else ""
        states = [notation.name_of(q.key) for q in cell.states]
        starts = ", ".join(f"{entry.initial} = {entry.ascii}[{first - 1}]" for entry in states)
        several = "s" if len(states) > 1 else ""
        seed = f"seed {notation.seed}; " if notation.seed else ""
        lines = [
            f"{key}{default}: {notation.title}",
            f"  {seed}{layout}; t = {first}..{last}; initial state{several} {starts}",
            f"  equations of the default spec in this notation ({_spec_words(spec)}):",
        ]
        rows = model_equations(spec)
        width = max(len(lhs) for lhs, _ in rows)
        lines += [f"    {lhs:<{width}} = {rhs}" for lhs, rhs in rows]
        lines += [f"    note: {_one_line(note)}" for note in notation.notes]
        cell_flag = "" if args.cell == "elman" else f" --cell {args.cell}"
        lines.append(f"  names in `symbptt check{cell_flag} --notation {key}`:")
        own = [info for info in names(spec) if info.kind in _OWN_KINDS]
        lines += [f"    {info}" for info in own]
        blocks.append("\n".join(lines))
    shared = [
        info
        for info in names(ModelSpec(cell=args.cell, notation=chosen[0]))
        if info.kind not in _OWN_KINDS
    ]
    common = [
        "in every notation:",
        "  L[t] is the loss of step t (J[t] in uvw); time_reduction='mean' divides the sum "
        "by the number of steps with a loss, batch_reduction='mean' by m",
        *[f"  {info}" for info in shared],
        "  operators: @ (matrix product), * (elementwise), / + - ** .T; numbers",
    ]
    blocks.append("\n".join(common))
    _print("\n\n".join(blocks))
    return 0


def _cmd_cells(args: argparse.Namespace) -> int:
    from ..model import BUILTIN_CELLS, load_cell

    chosen = [args.name] if args.name else list(BUILTIN_CELLS)
    cells = []
    for name in chosen:
        try:
            cells.append(load_cell(name))
        except SpecError as exc:
            raise UsageError(_one_line(str(exc))) from None
    blocks = []
    for cell in cells:
        default = " (the default)" if cell.name == ModelSpec().cell else ""
        where = "" if cell.source.endswith("(built-in)") else f" from {cell.source}"
        lines = [
            f"{cell.name}{default}: {cell.title}{where}",
            f"  {cell.description}",
            f"  reference: {cell.reference}",
            "  states: "
            + ", ".join(
                f"{q.key} ({q.size}, initial {q.key}0{', ' + q.initial if q.initial else ''})"
                for q in cell.states
            )
            + f"; the output layer reads {cell.readout}",
            "  parameters: "
            + ", ".join(
                f"{p.key} ({p.shape[0]} x {p.shape[1]}, {p.kind})" for p in cell.parameters
            ),
        ]
        if cell.activation:
            lines.append(f"  {cell.activation}: the spec's hidden activation (--hidden)")
        lines.append("  equations (column layout):")
        lines += [f"    {eq.text}" for eq in cell.equations]
        notations = []
        for notation in cell.notations.values():
            shown = ", ".join(entry.ascii for entry in notation.params)
            notations.append(f"    {notation.name} ({notation.layout}): {shown}")
        lines.append("  notations and their parameter names:")
        lines += notations
        blocks.append("\n".join(lines))
    _print("\n\n".join(blocks))
    return 0


#: Kinds of expression-language names that differ between notations.
_OWN_KINDS = ("parameter", "initial state", "series", "adjoint", "reducer")


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(
        output_folder(args.out),
        optimizer=args.optimizer,
        iterations=args.iterations,
        hidden_units=args.hidden_units,
        seed=args.seed,
        pdf=not args.no_pdf,
        plots=not args.no_plots,
        verify=args.verify,
        force=args.force,
    )


_COMMANDS = {
    "derive": _cmd_derive,
    "check": _cmd_check,
    "notations": _cmd_notations,
    "cells": _cmd_cells,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with _scratch_folder():
            return _main(argv)
    except SystemExit as exc:  # argparse's --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BrokenPipeError:  # `symbptt check ... | head`: the reader left, stop quietly
        _silence_stdout()
        return 141


@contextlib.contextmanager
def _scratch_folder() -> Iterator[None]:
    """One temporary folder for the whole command, removed at its end, whatever happens.

    The generated modules loaded to check and train (``load_module``) and the
    TeX runs make their files under :func:`tempfile.gettempdir`; for the
    command it points here, so nothing is left behind in ``/tmp``.
    """
    handler = _exit_on_sigterm()  # before the folder exists, so no signal can orphan it
    previous = tempfile.tempdir
    # The folder's name is recorded before it is made (mkdtemp would return it only
    # after its mkdir: a SIGTERM in between would leave a folder nothing removes).
    made: list[str] = []
    try:
        try:
            base = tempfile.gettempdir()
            while not made:
                made.append(os.path.join(base, "symbptt-run-" + secrets.token_hex(16)))
                try:
                    os.mkdir(made[0], 0o700)
                except FileExistsError:  # 128 random bits: in practice never
                    made.clear()
            tempfile.tempdir = made[0]
        except OSError:  # no usable temporary folder: what needs one says so itself
            made.clear()
        yield
    finally:
        tempfile.tempdir = previous
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _exit_on_sigterm() -> Any:
    """Make SIGTERM (``kill``, ``timeout``) exit through ``finally`` blocks, with status 143.

    Python's default action ends the process at once, leaving the scratch
    folder behind.  Returns the previous handler, or None where none can be set
    (not the main thread).
    """

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # signals can only be set from the main thread
        return None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit raises no second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _main(argv: list[str]) -> int:
    parser, commands = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None or command not in commands:
        # --version, --help, no command, or an unknown one: argparse says which.
        parser.parse_args(argv)
        parser.print_help(sys.stderr)
        return 2
    sub = commands[command]
    rest = argv[:]
    rest.remove(command)
    try:
        args = _parse(sub, rest)
        return _COMMANDS[command](args)
    except (UsageError, SpecError) as exc:
        return _fail(sub.prog, str(exc))
    except KeyboardInterrupt:
        print(f"\n{sub.prog}: interrupted", file=sys.stderr)
        return 130


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Intermixed parsing (CONFIG.toml and EXPR before or after the flags), with ``--``.

    ``parse_intermixed_args`` loses ``--`` (an EXPR like ``-W_hh`` after it
    is read as an unknown flag), so what follows ``--`` is parsed as stand-ins
    that cannot look like flags, then put back.
    """
    if "--" not in argv:
        return parser.parse_intermixed_args(argv)
    cut = argv.index("--")
    operands = argv[cut + 1 :]
    stand_ins = {f"\0operand{i}": text for i, text in enumerate(operands)}
    args = parser.parse_intermixed_args(argv[:cut] + list(stand_ins))
    for key, value in vars(args).items():
        if isinstance(value, str) and value in stand_ins:
            setattr(args, key, stand_ins[value])
        elif isinstance(value, list):
            setattr(args, key, [stand_ins.get(item, item) for item in value])
    return args


# -- the demo -------------------------------------------------------------------------
#: The demo's text, as in 001 and 003: inputs h, e, l, l; targets e, l, l, o.
DEMO_TEXT = "hello"
#: The demo's limits: training iterations (about 0.1 ms each) and the random seed.
MAX_ITERATIONS = 100_000
MAX_SEED = 2**32 - 1
#: A longer text for the gradient-norm picture (the same characters).
DEMO_LONG_TEXT = "hello" * 5
_PLOTS = ("loss.png", "gradient_norms.png")


def _one_hot(text: str, alphabet: str) -> Any:
    import numpy as np

    eye = np.eye(len(alphabet))
    return np.stack([eye[alphabet.index(c)][None, :] for c in text])  # (T, 1, n)


def _optimizer(name: str) -> Any:
    from ..train import SGD, Adagrad, Adam

    return {"adam": Adam(lr=0.02), "sgd": SGD(lr=0.2), "adagrad": Adagrad(lr=0.3)}[name]


def _report_points(count: int) -> list[int]:
    """About a dozen iterations, spaced evenly on a log scale, to print the loss at."""
    points = {1, count}
    value = 1.0
    while value < count:
        points.add(round(value))
        value *= count ** (1 / 11) if count > 1 else 2
    return sorted(point for point in points if 1 <= point <= count)


def run_demo(
    folder: Path,
    *,
    optimizer: str = "adam",
    iterations: int = 200,
    hidden_units: int = 8,
    seed: int = 0,
    pdf: bool = True,
    plots: bool = True,
    verify: bool = False,
    force: bool = False,
) -> int:
    """The seeds' "hello" example, derived, written, trained with its generated code.

    Returns the exit status: 0 when the model learned "hell" -> "o" and the
    numerical check of the generated code passed.
    """
    import numpy as np

    from ..codegen.emit import load_module
    from ..model.presets import HELLO
    from ..train import fit, gradient_norms

    for flag, value, low, high in (
        ("--iterations", iterations, 1, MAX_ITERATIONS),
        ("--hidden-units", hidden_units, 1, MAX_SIZE),
        ("--seed", seed, 0, MAX_SEED),
    ):
        if not low <= value <= high:
            raise UsageError(f"{flag}: got {value}; expected {low} to {high}")
    spec = PRESETS["xh_hello"]
    pyplot = _matplotlib() if plots else None
    names = _output_names(unrolled=True, pdf=pdf)
    if pyplot is not None:
        names += list(_PLOTS)
    check_destination(folder, names, force=force)

    with output_lock(folder):
        inputs, targets = DEMO_TEXT[:-1], DEMO_TEXT[1:]
        _print(
            f'symbptt demo: the seeds\' "{DEMO_TEXT}" example, characters {", ".join(HELLO)} '
            f"one-hot; inputs {' '.join(inputs)}, targets {' '.join(targets)}"
        )
        _print(_describe(spec))
        with Progress(None, "symbptt demo", **_LINES) as bar:
            artifacts = build_artifacts(spec, unrolled=True, pdf=pdf, verify=verify, progress=bar)
            checks = _numerical_checks(artifacts, bar)
        _print_checks(checks)
        for warning in artifacts.warnings:
            _print(f"warning: {warning}", sys.stderr)

        # train with the code just generated: the very source written to the folder
        module = load_module(artifacts.files["gradients.py"].decode())
        X, Y = _one_hot(inputs, HELLO), _one_hot(targets, HELLO)
        params = module.init_params(len(HELLO), hidden_units, len(HELLO), rng=seed)
        long_X = _one_hot(DEMO_LONG_TEXT[:-1], HELLO)
        long_Y = _one_hot(DEMO_LONG_TEXT[1:], HELLO)
        norms_before = gradient_norms(module, params, long_X, long_Y)
        opt = _optimizer(optimizer)
        _print(f"\ntraining {hidden_units} hidden units with {opt!r} (gradients.py):")
        report = set(_report_points(iterations))
        width = len(str(iterations))
        with Progress(iterations, "training") as bar:

            def show(iteration: int, value: float, grads: Any) -> None:
                bar.update(1, f"loss {value:.4f}")
                if iteration in report:
                    bar.close()
                    _print(f"  iteration {iteration:>{width}}   loss {value:8.4f}")

            losses = fit(module, params, X, Y, optimizer=opt, iterations=iterations, callback=show)
        _print(f"  {'trained':<{width + 10}}   loss {module.loss(params, X, Y):8.4f}")

        predictions, _ = module.forward(params, X)
        _print(f'\nwhat it predicts after each prefix of "{DEMO_TEXT}":')
        learned = True
        for t in range(len(inputs)):
            probs = predictions[t, 0]
            guess = HELLO[int(np.argmax(probs))]
            right = guess == targets[t]
            learned = learned and right
            mark = "" if right else f"   wrong: expected {targets[t]!r}"
            prefix = f'"{DEMO_TEXT[: t + 1]}"'
            _print(
                f'  {prefix:<{len(inputs) + 2}} -> "{guess}"   p = {float(np.max(probs)):.3f}{mark}'
            )

        norms_hello = gradient_norms(module, params, X, Y)
        norms_after = gradient_norms(module, params, long_X, long_Y)
        last = len(norms_after) - 1
        _print(
            "\n||dL_T/dh_k||, the last step's loss against the hidden state after k steps, "
            f'on "{inputs}":'
        )
        _print("  " + "   ".join(f"k={k}: {v:.2e}" for k, v in enumerate(norms_hello)))
        _print(
            f'  on "{DEMO_LONG_TEXT[:-1][:10]}..." (T = {last + 1}): from {norms_after[last]:.1e} '
            f"at k = {last} to {norms_after[0]:.1e} at k = 0, "
            f"{_times(norms_after[last] / norms_after[0])} smaller {last} steps back "
            f"(untrained: {_times(norms_before[last] / norms_before[0])}): "
            + (
                "the vanishing gradient"
                if norms_after[0] < norms_after[last]
                else "no vanishing here"
            )
        )

        files = dict(artifacts.files)
        if pyplot is not None:
            files["loss.png"] = _loss_plot(pyplot, losses, opt)
            files["gradient_norms.png"] = _norms_plot(
                pyplot, norms_before, norms_after, DEMO_LONG_TEXT[:-1]
            )
        written = write_outputs(folder, files, force, _ALL_OUTPUTS)
        _print(f"\nwrote {folder}{os.sep}: {', '.join(p.name for p in written.files)}")
        if written.removed:
            removed = ", ".join(p.name for p in written.removed)
            _print(f"removed {removed} (an earlier run's, not written by this one)")
        if pyplot is None and plots:
            _print(
                "plots: loss.png and gradient_norms.png need matplotlib: "
                "pip install 'symbptt[plot]' (or pip install matplotlib), "
                "then run symbptt demo again"
            )
        if not verify:
            _print(
                "derivation.pdf/.md: the sympy.diff proof was skipped to keep the demo quick; "
                "symbptt demo --verify (or symbptt derive) runs it"
            )
        if not learned:
            _print(f'the model did not learn "{inputs}" -> "{targets[-1]}"; try more --iterations')
        ok = all(check.ok for check in checks)
        return 0 if learned and ok and not artifacts.failed else 1


def _times(ratio: float) -> str:
    return f"{ratio:,.0f} times" if ratio >= 10 else f"{ratio:.2g} times"


def _matplotlib() -> Any:
    """matplotlib with the Agg backend, or None when it is not installed."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    return importlib.import_module("matplotlib.pyplot")


def _png(plt: Any, figure: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(
        buffer,
        format="png",
        dpi=110,
        metadata={"Software": f"{_marker()} {__version__}"},
    )
    plt.close(figure)
    return buffer.getvalue()


def _loss_plot(plt: Any, losses: Sequence[float], optimizer: Any) -> bytes:
    figure, axes = plt.subplots(figsize=(6, 4), layout="constrained")
    axes.semilogy(range(1, len(losses) + 1), losses, color="C0")
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss L (log scale)")
    axes.set_title(
        f'Training the "{DEMO_TEXT}" model: {type(optimizer).__name__}, lr = {optimizer.lr:g}'
    )
    axes.grid(True, which="both", alpha=0.3)
    return _png(plt, figure)


def _norms_plot(plt: Any, before: Any, after: Any, text: str) -> bytes:
    figure, axes = plt.subplots(figsize=(6, 4), layout="constrained")
    steps = range(len(after))
    axes.semilogy(steps, before, "o-", color="C1", label="before training", markersize=3)
    axes.semilogy(steps, after, "o-", color="C0", label="after training", markersize=3)
    axes.set_xlabel(r"$k$ (the hidden state $h_k$ after $k$ steps)")
    axes.set_ylabel(r"$\|\partial L_T / \partial h_k\|$ (log scale)")
    axes.set_title(f'How far back the last loss reaches: T = {len(after)}, "{text[:10]}..."')
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _png(plt, figure)
