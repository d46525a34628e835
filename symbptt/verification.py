"""The verifying stage: the checks a derivation document reports, run here and handed over.

A document states what was verified, at which sizes.  The documents print
those results but never run a proof themselves (imports flow one way: this
module imports the oracles and the documents, not the reverse).

* the scalar proof (:func:`symbptt.verify.scalar_proof`): every gradient entry
  against ``sympy.diff`` of the explicit unrolled loss, at small concrete
  sizes and T ≤ 3;
* the numerical check (:func:`symbptt.gradcheck.gradcheck`): the generated
  module against central differences, at the spec's sizes (small defaults for
  sizes it leaves symbolic).

:func:`render_latex`, :func:`render_markdown` and :func:`build_pdf` are the
public ones (``symbptt.render_latex``): they run the checks (``verify=True``)
and render.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import documents, gradcheck
from . import verify as scalar_oracle
from .derive import Derivation
from .spec import ModelSpec

__all__ = ["Checks", "build_pdf", "proof_spec", "render_latex", "render_markdown", "run_checks"]


@dataclass(frozen=True)
class Checks:
    """What was verified: each check's result (or why it could not run) and its sizes."""

    proof_spec: ModelSpec  # the small concrete spec the scalar proof ran at
    proof: scalar_oracle.ScalarProof | None
    proof_error: str | None
    numerical: gradcheck.GradcheckResult | None
    numerical_error: str | None
    numerical_sizes: tuple[tuple[str, int], ...]  # (n_in, n_hidden, n_out, batch, steps)


def proof_spec(spec: ModelSpec) -> ModelSpec:
    """The spec at the small concrete sizes the scalar proof runs at."""
    return replace(
        spec,
        steps=min(spec.steps, 3),
        n_in=min(spec.n_in or 2, 3),
        n_hidden=min(spec.n_hidden or 2, 2),
        n_out=min(spec.n_out or 2, 3),
        batch=min(spec.batch or 2, 2),
    )


def _seed(spec: ModelSpec) -> int:
    return int(spec.hash()[:8], 16)


def _numerical_sizes(spec: ModelSpec) -> tuple[tuple[str, int], ...]:
    """The sizes :func:`gradcheck.gradcheck` runs at: the spec's, else its defaults."""
    problem = inspect.signature(gradcheck.random_problem).parameters
    check = inspect.signature(gradcheck.gradcheck).parameters
    return (
        ("n_in", spec.n_in or problem["n_in"].default),
        ("n_hidden", spec.n_hidden or problem["n_hidden"].default),
        ("n_out", spec.n_out or problem["n_out"].default),
        ("batch", spec.batch or check["batch"].default),
        ("steps", spec.steps),
    )


def run_checks(source: ModelSpec | Derivation) -> Checks:
    """Run both checks for ``source``; a check that fails to run is reported, not hidden."""
    spec = source.spec if isinstance(source, Derivation) else source
    spec.require_plain("the verifying stage")
    small = proof_spec(spec)
    proof = numerical = None
    proof_error = numerical_error = None
    try:
        proof = scalar_oracle.scalar_proof(small, np.random.default_rng(_seed(spec)))
    except Exception as exc:  # reported in the document
        proof_error = f"{type(exc).__name__}: {exc}"
    try:
        numerical = gradcheck.gradcheck(source, np.random.default_rng(_seed(spec)))
    except Exception as exc:  # reported in the document
        numerical_error = f"{type(exc).__name__}: {exc}"
    return Checks(small, proof, proof_error, numerical, numerical_error, _numerical_sizes(spec))


def render_latex(
    spec: ModelSpec | Derivation, *, name: str | None = None, verify: bool = True
) -> str:
    """The derivation of ``spec`` as a LaTeX document; with ``verify``, both checks run
    first and fill its last section (without, it says they were not run)."""
    d = documents.as_derivation(spec)
    return documents.render_latex(d, name=name, checks=run_checks(d) if verify else None)


def render_markdown(
    spec: ModelSpec | Derivation, *, name: str | None = None, verify: bool = True
) -> str:
    """The derivation of ``spec`` as GitHub Markdown (checks as :func:`render_latex`)."""
    d = documents.as_derivation(spec)
    return documents.render_markdown(d, name=name, checks=run_checks(d) if verify else None)


def build_pdf(
    spec: ModelSpec | Derivation,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    verify: bool = True,
) -> Path:
    """Write the derivation of ``spec`` as a PDF to ``path`` (needs pdflatex)."""
    d = documents.as_derivation(spec)
    documents.tex_engine()  # fail before the checks when there is no TeX
    return documents.build_pdf(d, path, name=name, checks=run_checks(d) if verify else None)
