"""Regenerate ``generated/``: the seeds' own models, one folder each.

    python -m symbptt.regenerate [OUTDIR]

writes, for every entry of :data:`symbptt.model.presets.PRESETS`,
``OUTDIR/<name>/gradients.py`` (rolled: any number of steps) and
``OUTDIR/<name>/gradients_unrolled.py`` (straight-line code for the preset's
steps), then the documents of the derivation (``symbptt.documents``).
OUTDIR defaults to ``generated`` in the current directory.  Each file is
replaced atomically (written whole beside it, then renamed over it), so an
interrupted run leaves every file either old or new.  The output depends on
the presets only: running it twice, or under another hash seed, writes the
same bytes.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import documents as _documents
from .cli.commands import _silence_stdout
from .codegen.emit import emit_numpy
from .files import write_atomically
from .model.presets import PRESETS
from .model.spec import ModelSpec
from .oracle.verification import run_checks

__all__ = ["CODE_FILES", "main", "regenerate"]

#: The code files of each preset's folder, and whether each is unrolled.
CODE_FILES = {"gradients.py": False, "gradients_unrolled.py": True}


def _write_documents_atomic(spec: ModelSpec, folder: Path) -> None:
    """The derivation documents of ``spec``, each renamed into ``folder`` once written."""
    staging = Path(tempfile.mkdtemp(prefix=".regenerate-", dir=folder))
    try:
        checks = run_checks(spec)  # the verifying stage; the documents print its results
        for path in _documents.write_documents(spec, staging, checks=checks):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def regenerate(outdir: str | Path = "generated", documents: bool = True) -> list[Path]:
    """Write the generated files of every preset under ``outdir``; returns the code files.

    ``documents=False`` writes the code files only.  Each file is replaced
    atomically.
    """
    root = Path(outdir)
    written: list[Path] = []
    for name in sorted(PRESETS):
        spec = PRESETS[name]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for filename, unrolled in CODE_FILES.items():
            path = folder / filename
            write_atomically(path, emit_numpy(spec, unrolled=unrolled).encode("utf-8"))
            written.append(path)
        if documents:
            _write_documents_atomic(spec, folder)
    return written


USAGE = "usage: python -m symbptt.regenerate [OUTDIR]"
HELP = """\
Rewrite the generated files of every preset model (symbptt.model.presets.PRESETS):
OUTDIR/<preset>/gradients.py, gradients_unrolled.py, derivation.tex,
derivation.md and derivation.pdf (the PDF needs pdflatex). OUTDIR defaults to
./generated. Each file is replaced atomically; the same presets give the same
bytes."""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `python -m symbptt.regenerate --help | head`: stop quietly
        _silence_stdout()
        return 141


def _main(args: list[str]) -> int:
    if args in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{HELP}")
        return 0
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print(f"{USAGE} (--help: what it writes)", file=sys.stderr)
        return 2
    for path in regenerate(args[0] if args else "generated"):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
