"""Derivation documents: LaTeX, Markdown and PDF, printed from the derivation.

:func:`render_latex` and :func:`render_markdown` write the derivation the
seeds write by hand, for the user's model and T, in the chosen notation:

1. the model (equations, a table of symbols and shapes, the activations and
   the loss printed from their SymPy definitions, bias broadcasting);
2. the forward pass unrolled from the initial state;
3. the loss per step and in total;
4. for each parameter, the chain-rule expansion, in general and term by term
   for the chosen T, generated from the paths of the graph;
5. the local derivatives, evaluated for the chosen activations and loss;
6. the compact BPTT form the code computes (the δ recursion, the sums over t);
7. the parameter updates (gradient descent step by step, Adam);
8. what was verified while the document was built.

That is the teaching document, for a cell with one state updated as
``state = f(affine)`` (the Elman RNN in its four notations).  Every other cell
(LSTM, GRU, a user's cell file) gets the general document: the model read from
its equations, the forward pass, the loss, the adjoint recursion per state with
every carry from step t + 1 and the named pre-activation adjoints, the
gradients as sums over the steps, the updates, and what was verified.

Every formula is printed in Python by :class:`~symbptt.documents.latex_printer.BPTTLatexPrinter`
from the derivation's recorded steps; the templates (``derivation.tex.jinja``,
``derivation.md.jinja`` and their ``_derivation_cell_*`` parts) hold prose and
layout only.  A formula too wide for the page is split into rows, or a part of
it is given a short name first.

The package: :mod:`.layout` (escaping, TeX widths, prose), :mod:`.teaching`
(the teaching writer and the sections every cell shares), :mod:`.cells` (the
general writer and the choice between the two); here, the public API, the PDF
and the writing of files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.derive import LATEX_SUMMARY, Derivation, derive
from ..files import write_atomically
from ..model.spec import ModelSpec
from ..templating import render
from .cells import _CellWriter, _teaching_shape, _writer  # noqa: F401 (the tests read them)
from .latex_printer import escape_tex
from .layout import MARKER, REGENERATE, escape_markdown, join_rows, prose, tex_width
from .teaching import _Writer  # noqa: F401 (the tests read it)

if TYPE_CHECKING:  # the results only: documents never run a check
    from ..oracle.verification import Checks

__all__ = [
    "MARKER",
    "REGENERATE",
    "TeXError",
    "TeXNotFoundError",
    "as_derivation",
    "build_pdf",
    "compile_pdf",
    "derivation_summary_latex",
    "escape_markdown",
    "overfull_boxes",
    "prose",
    "render_documents",
    "render_latex",
    "render_markdown",
    "tex_engine",
    "tex_width",
    "write_documents",
]

#: How to get a TeX engine (Debian/Ubuntu), for the error when none is found.
TEX_INSTALL_HINT = (
    "apt-get install texlive-latex-base texlive-latex-recommended latexmk "
    "(Debian/Ubuntu; any TeX Live or MiKTeX with pdflatex works)"
)


# ---------------------------------------------------------------------------- public API
def as_derivation(spec: ModelSpec | Derivation) -> Derivation:
    """``spec`` derived (a Derivation is taken as it is); a clear TypeError for anything else."""
    if isinstance(spec, Derivation):
        return spec
    if isinstance(spec, ModelSpec):
        return derive(spec)
    raise TypeError(f"expected a ModelSpec or a Derivation, got {type(spec).__name__}")


def _context(
    spec: ModelSpec | Derivation, name: str | None, checks: Checks | None
) -> dict[str, Any]:
    derivation = as_derivation(spec)
    return _writer(derivation, name, checks).context()


def _template(context: dict[str, Any], suffix: str) -> str:
    """The template of the context's layout: a composed model has its own."""
    if context["layout"] == "composed":
        return f"derivation_composed.{suffix}.jinja"
    return f"derivation.{suffix}.jinja"


def render_latex(
    spec: ModelSpec | Derivation, *, name: str | None = None, checks: Checks | None = None
) -> str:
    """The derivation of ``spec`` as a complete LaTeX document.

    ``name`` (a title given by the user) is escaped.  ``checks`` are the
    results of the verifying stage (:func:`symbptt.oracle.verification.run_checks`):
    they fill the last section; without them it says the checks were not run.
    ``symbptt.render_latex`` runs them first.
    """
    context = _context(spec, name, checks)
    return render(_template(context, "tex"), esc=escape_tex, join_rows=join_rows, **context)


def render_markdown(
    spec: ModelSpec | Derivation, *, name: str | None = None, checks: Checks | None = None
) -> str:
    """The derivation of ``spec`` as GitHub Markdown (``$…$`` and ``$$…$$`` math only)."""
    context = _context(spec, name, checks)
    return _tidy_markdown(render(_template(context, "md"), esc=escape_markdown, **context))


def render_documents(
    spec: ModelSpec | Derivation, *, name: str | None = None, checks: Checks | None = None
) -> tuple[str, str]:
    """``(LaTeX, Markdown)`` from one derivation and one set of check results."""
    context = _context(spec, name, checks)
    tex = render(_template(context, "tex"), esc=escape_tex, join_rows=join_rows, **context)
    md = _tidy_markdown(render(_template(context, "md"), esc=escape_markdown, **context))
    return tex, md


def _tidy_markdown(text: str) -> str:
    """At most one blank line in a row (the math blocks bring their own)."""
    lines: list[str] = []
    for line in text.splitlines():
        if not line.strip() and (not lines or not lines[-1].strip()):
            continue
        lines.append(line.rstrip())
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------- PDF
class TeXNotFoundError(RuntimeError):
    """No TeX engine (pdflatex) is installed."""


class TeXError(RuntimeError):
    """pdflatex failed; the message holds the end of its log."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


def _engine() -> list[str]:
    pdflatex = shutil.which("pdflatex")
    if pdflatex is not None:
        return [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape"]
    latexmk = shutil.which("latexmk")
    if latexmk is not None:  # latexmk without pdflatex cannot work either, but say so clearly
        raise TeXNotFoundError(
            f"latexmk was found but not pdflatex; install it: {TEX_INSTALL_HINT}"
        )
    raise TeXNotFoundError(
        f"building the PDF needs pdflatex, which was not found on PATH; install it: "
        f"{TEX_INSTALL_HINT}"
    )


#: How long pdflatex may take, both passes together, before it is stopped (seconds).
#: A derivation compiles in a few seconds; a TeX installation that waits for a
#: missing font to be generated, or for input, would otherwise be waited on for ever.
TEX_TIMEOUT = 300.0


def compile_pdf(tex: str, *, timeout: float | None = None) -> tuple[bytes, str]:
    """Compile a LaTeX document with pdflatex; returns the PDF bytes and the log.

    The PDF is reproducible: ``SOURCE_DATE_EPOCH`` is fixed and the documents
    set ``\\pdfinfoomitdate`` and ``\\pdftrailerid{}``.  Raises
    :class:`TeXNotFoundError` without pdflatex and :class:`TeXError` when
    LaTeX fails or takes longer than ``timeout`` seconds (default
    :data:`TEX_TIMEOUT`; then pdflatex and everything it started are stopped).
    Its working folder is removed in every case.
    """
    command = _engine()
    timeout = TEX_TIMEOUT if timeout is None else timeout
    env = dict(os.environ)
    env.update({"SOURCE_DATE_EPOCH": "0", "FORCE_SOURCE_DATE": "1", "TZ": "UTC"})
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="symbptt-tex-") as folder:
        path = Path(folder) / "derivation.tex"
        path.write_text(tex, encoding="utf-8")
        log = ""
        for _ in range(2):  # twice: the table of contents and references settle
            returncode = _run_tex([*command, "derivation.tex"], folder, env, deadline, timeout)
            log_path = Path(folder) / "derivation.log"
            log = log_path.read_text(encoding="latin-1") if log_path.exists() else ""
            if returncode != 0:
                tail = "\n".join(log.splitlines()[-30:])
                raise TeXError(f"pdflatex failed (exit {returncode}):\n{tail}", log)
        return (Path(folder) / "derivation.pdf").read_bytes(), log


def _run_tex(
    command: list[str], folder: str, env: dict[str, str], deadline: float, timeout: float
) -> int:
    """Run one pdflatex pass in its own process group; stop the whole group at the deadline.

    No pipes: a program pdflatex starts (mktexpk) could hold them open after
    pdflatex is killed.  The log file is what is read.
    """
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return process.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        raise TeXError(
            f"pdflatex did not finish within {timeout:g} s and was stopped "
            "(is the TeX installation waiting for input or making fonts?)",
            "",
        ) from None
    finally:
        if process.poll() is None:  # timed out, or interrupted (Ctrl-C)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def overfull_boxes(log: str, threshold_pt: float = 1.0) -> list[str]:
    """The ``Overfull \\hbox`` lines of a LaTeX log wider than ``threshold_pt``."""
    found = []
    for line in log.splitlines():
        if line.startswith("Overfull \\hbox ("):
            amount = line[len("Overfull \\hbox (") :].split("pt", 1)[0]
            try:
                if float(amount) > threshold_pt:
                    found.append(line)
            except ValueError:
                found.append(line)
    return found


def build_pdf(
    spec: ModelSpec | Derivation,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    checks: Checks | None = None,
) -> Path:
    """Write the derivation of ``spec`` as a PDF to ``path`` (needs pdflatex)."""
    _engine()  # fail before the work when there is no TeX
    pdf, _ = compile_pdf(render_latex(spec, name=name, checks=checks))
    target = Path(path)
    target.write_bytes(pdf)
    return target


def write_documents(
    spec: ModelSpec | Derivation,
    folder: str | os.PathLike[str],
    pdf: bool = True,
    *,
    name: str | None = None,
    checks: Checks | None = None,
) -> list[Path]:
    """Write derivation.tex, derivation.md and (with ``pdf``) derivation.pdf in ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tex, md = render_documents(spec, name=name, checks=checks)
    pdf_bytes = compile_pdf(tex)[0] if pdf else None
    files: list[tuple[str, bytes]] = [
        ("derivation.tex", tex.encode("utf-8")),
        ("derivation.md", md.encode("utf-8")),
    ]
    if pdf_bytes is not None:
        files.append(("derivation.pdf", pdf_bytes))
    written = []
    for file_name, data in files:
        target = out / file_name
        write_atomically(target, data)
        written.append(target)
    return written


# ---------------------------------------------------------------------------- Jupyter
def derivation_summary_latex(derivation: Derivation) -> str:
    """A short summary for Jupyter: the δ recursion and every gradient as a sum over t
    (the documents' Summary section, in one ``aligned`` block); a composed model's: the
    generic step of every unit (:func:`symbptt.documents.composed.composed_summary_latex`)."""
    if derivation.spec.composed and not derivation.spec.program.plain:
        from .composed import composed_summary_latex

        return composed_summary_latex(derivation)
    writer = _writer(derivation, None, None)
    summary = writer.summary(writer.bptt())
    rows = [rf"{row} && \text{{(last step)}}" for row in summary["last_rows"]]
    rows += summary["rows"]
    rows.append(summary["boundary_row"].replace(" = ", " &= ", 1))
    rows += summary["sums"]
    return "$$\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}$$"


def tex_engine() -> list[str]:
    """The TeX command documents are typeset with; :class:`TeXNotFoundError` without one."""
    return _engine()


LATEX_SUMMARY.append(derivation_summary_latex)  # Derivation._repr_latex_ shows it in Jupyter
