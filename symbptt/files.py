"""Writing files atomically: the one writer behind derive, regenerate and the documents.

A file is first written whole to a temporary file in the destination folder
(created exclusively, flushed to disk, with the permissions a plain write
would give), then renamed over its destination: a reader sees the old file or
the new one, never half of one, and a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["stage", "umask", "write_atomically"]


def umask() -> int:
    """The process's file-creation mask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stage(folder: Path, name: str, data: bytes) -> Path:
    """``data`` in a new temporary file in ``folder`` (to be renamed to ``name``); its path."""
    fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o666 & ~umask())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target``: staged beside it, then renamed into place."""
    temp = stage(target.parent, target.name, data)
    try:
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
