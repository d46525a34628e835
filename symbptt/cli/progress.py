"""A one-line progress display for long derivations and trainings.

It draws only when its stream is a terminal (``isatty()``), so logs, pipes
and CI stay free of carriage returns and partial lines; there, with
``lines=True``, each stage is one whole line instead, flushed at once, so a
long run piped to a log shows what it is doing.  No dependency: the line is
redrawn in place at most every ``interval`` seconds and erased when the work
is done, leaving the terminal as it was.

>>> with Progress(total=300, label="training") as bar:
...     for i in range(300):
...         bar.update(1, f"loss {0.5:.3f}")
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "on_terminal"]


def on_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is an interactive terminal (and ``TERM`` is not ``dumb``)."""
    isatty = getattr(stream, "isatty", None)
    try:
        interactive = bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):  # a closed or detached stream
        return False
    return interactive and os.environ.get("TERM", "") != "dumb"


class Progress:
    """``label [#####.....] done/total info``, redrawn in place on a terminal only.

    ``total`` may be ``None`` for work of unknown length (then only the count
    and the info are shown).  ``enabled`` forces the display on or off; by
    default it is on exactly when ``stream`` is a terminal.  With ``lines``,
    while the display is off, each :meth:`stage` is written as one line
    (``label: info``) to ``line_stream`` (default: ``stream``) and flushed.
    """

    def __init__(
        self,
        total: int | None,
        label: str,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.1,
        width: int = 24,
        lines: bool = False,
        line_stream: TextIO | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = on_terminal(self.stream) if enabled is None else enabled
        self.interval = interval
        self.width = width
        self.lines = lines
        self.line_stream = line_stream if line_stream is not None else self.stream
        self.done = 0
        self.info = ""
        self._last_draw = 0.0
        self._drawn = 0  # characters on the line now

    # -- updates ------------------------------------------------------------------
    def update(self, advance: int = 1, info: str | None = None) -> None:
        """Advance by ``advance`` units; ``info`` replaces the text after the count."""
        self.done += advance
        if info is not None:
            self.info = info
        if not self.enabled:
            return
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if finished or now - self._last_draw >= self.interval:
            self._draw()
            self._last_draw = now

    def stage(self, info: str) -> None:
        """Say what is happening now without advancing (drawn at once)."""
        self.info = info
        if self.enabled:
            self._draw()
            self._last_draw = time.monotonic()
        elif self.lines:
            self.line_stream.write(f"{self.label}: {info}\n")
            self.line_stream.flush()

    def close(self) -> None:
        """Erase the line (the caller prints the lasting result)."""
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- drawing ------------------------------------------------------------------
    def line(self) -> str:
        """The text of the progress line as it would be drawn now."""
        if self.total:
            filled = min(self.width, self.width * self.done // self.total)
            bar = "#" * filled + "." * (self.width - filled)
            text = f"{self.label} [{bar}] {self.done}/{self.total}"
        else:
            text = f"{self.label} {self.done}" if self.done else self.label
        if self.info:
            text += f"  {self.info}"
        columns = shutil.get_terminal_size((80, 24)).columns
        return text[: max(10, columns - 1)]

    def _draw(self) -> None:
        text = self.line()
        pad = max(0, self._drawn - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._drawn = len(text)
