"""Regenerate ``generated/``: the seeds' own models, one folder each.

    python -m symbptt.regenerate [OUTDIR]

writes, for every entry of :data:`symbptt.presets.PRESETS`,
``OUTDIR/<name>/gradients.py`` (rolled: any number of steps) and
``OUTDIR/<name>/gradients_unrolled.py`` (straight-line code for the preset's
steps), then the documents of the derivation when
``symbptt.documents.write_documents`` is available.  OUTDIR defaults to
``generated`` in the current directory.  The output depends on the presets
only: running it twice, or under another hash seed, writes the same bytes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .emit import emit_numpy
from .presets import PRESETS

__all__ = ["CODE_FILES", "main", "regenerate"]

#: The code files of each preset's folder, and whether each is unrolled.
CODE_FILES = {"gradients.py": False, "gradients_unrolled.py": True}


def _document_writer() -> Callable[[Any, Path], Any] | None:
    """``symbptt.documents.write_documents`` when that module provides it."""
    try:
        from . import documents
    except ImportError:  # the documents need optional packages
        return None
    writer = getattr(documents, "write_documents", None)
    return writer if callable(writer) else None


def regenerate(outdir: str | Path = "generated", documents: bool = True) -> list[Path]:
    """Write the generated files of every preset under ``outdir``; returns the code files.

    ``documents=False`` writes the code files only.
    """
    root = Path(outdir)
    written: list[Path] = []
    write_documents = _document_writer() if documents else None
    for name in sorted(PRESETS):
        spec = PRESETS[name]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for filename, unrolled in CODE_FILES.items():
            path = folder / filename
            path.write_bytes(emit_numpy(spec, unrolled=unrolled).encode("utf-8"))
            written.append(path)
        if write_documents is not None:
            write_documents(spec, folder)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print("usage: python -m symbptt.regenerate [OUTDIR]", file=sys.stderr)
        return 2
    for path in regenerate(args[0] if args else "generated"):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
