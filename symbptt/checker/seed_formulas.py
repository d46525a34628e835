"""The seeds' own per-parameter gradient formulas, transcribed into the checker's language.

Each seed (``../shared/seeds``: 000 uvw, 001 xh "hello", 002 layered, 003 aa
"hello") derives BPTT gradients by hand.  Their per-parameter results are
written here in the expression language of :mod:`symbptt.checker`, in the
seed's own notation, with the preset and the fields the transcription needs
(a seed without a batch is one example: ``batch=1``; 002 writes no 1/m:
``batch_reduction="sum"``).  How each was read is told beside it in
``tests/test_seeds.py``, which pins every verdict; the verifying stage checks
the ones a document shows (:func:`for_spec`: those of its spec, and in a
preset's own document its seed's variants, 000's one example and 002's sum
over the batch, each checked at its own spec) and the document prints each
with its verdict, the setting it was checked in, and the correct formula.
"""

# ruff: noqa: E501 - each transcribed formula is data, kept whole on one line

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..model.presets import PRESETS
from ..model.spec import ModelSpec

__all__ = ["SEED_FORMULAS", "SeedFormula", "for_spec"]


@dataclass(frozen=True)
class SeedFormula:
    """One per-parameter result of a seed, transcribed."""

    id: str  # "<seed>-<what>", e.g. "003-w_ya"
    preset: str  # the preset of the seed's model
    fields: tuple[tuple[str, Any], ...]  # the spec fields that differ from the preset
    wrt: str  # the parameter, in the seed's notation
    formula: str  # in the checker's expression language

    @property
    def seed(self) -> str:
        return self.id.split("-", 1)[0]

    @property
    def spec(self) -> ModelSpec:
        return replace(PRESETS[self.preset], **dict(self.fields))


SEED_FORMULAS: tuple[SeedFormula, ...] = (
    SeedFormula("000-V", "uvw_mean", (("batch", 1),), "V", "sum_t((y_hat[t] - y[t]) @ h[t].T) / T"),
    SeedFormula(
        "000-W",
        "uvw_mean",
        (("batch", 1),),
        "W",
        "sum_t(sum_k(((prod_j(diag(1 - h[j]**2) @ W).T @ V.T @ (y_hat[t] - y[t])) * (1 - h[k]**2)) @ h[k-1].T)) / T",
    ),
    SeedFormula(
        "000-U",
        "uvw_mean",
        (("batch", 1),),
        "U",
        "sum_t(sum_k(((prod_j(diag(1 - h[j]**2) @ W).T @ V.T @ (y_hat[t] - y[t])) * (1 - h[k]**2)) @ x[k].T)) / T",
    ),
    SeedFormula("001-update-W_hh", "xh_hello", (), "W_hh", "-y[T] / y_hat[T]"),
    SeedFormula("001-update-W_hy", "xh_hello", (), "W_hy", "-y[T] / y_hat[T]"),
    SeedFormula("001-update-b_y", "xh_hello", (), "b_y", "-y[T] / y_hat[T]"),
    SeedFormula("001-update-b_y-output-error", "xh_hello", (), "b_y", "y_hat[T] - y[T]"),
    SeedFormula(
        "002-m2o-W_2",
        "layered_many_to_one",
        (("batch_reduction", "sum"),),
        "W_2",
        "H1[2].T @ (Y_hat[2] - Y[2])",
    ),
    SeedFormula(
        "002-m2o-beta_2",
        "layered_many_to_one",
        (("batch_reduction", "sum"),),
        "beta_2",
        "(ones(1, m) @ (Y_hat[2] - Y[2])).T",
    ),
    SeedFormula(
        "002-m2o-beta_1",
        "layered_many_to_one",
        (("batch_reduction", "sum"),),
        "beta_1",
        "(ones(1, m) @ ((((Y_hat[2] - Y[2]) @ W_2.T) * (1 - H1[2]**2)) + (((((Y_hat[2] - Y[2]) @ W_2.T) * (1 - H1[2]**2)) @ W_h1.T) * (1 - H1[1]**2)) + (((((((Y_hat[2] - Y[2]) @ W_2.T) * (1 - H1[2]**2)) @ W_h1.T) * (1 - H1[1]**2)) @ W_h1.T) * (1 - H1[0]**2)))).T",
    ),
    SeedFormula(
        "002-m2o-W_1",
        "layered_many_to_one",
        (("batch_reduction", "sum"),),
        "W_1",
        "X[2].T @ (((Y_hat[2] - Y[2]) @ W_2.T) * (1 - H1[2]**2)) + X[1].T @ (((((Y_hat[2] - Y[2]) @ W_2.T) * (1 - H1[2]**2)) @ W_h1.T) * (1 - H1[1]**2)) + X[0].T @ (((((((Y_hat[2] - Y[2]) @ W_2.T) * (1 - H1[2]**2)) @ W_h1.T) * (1 - H1[1]**2)) @ W_h1.T) * (1 - H1[0]**2))",
    ),
    SeedFormula(
        "002-m2o-W_h1",
        "layered_many_to_one",
        (("batch_reduction", "sum"),),
        "W_h1",
        "H1[1].T @ (((Y_hat[2] - Y[2]) @ W_2.T) * (1 - H1[2]**2)) + H1[0].T @ (((((Y_hat[2] - Y[2]) @ W_2.T) * (1 - H1[2]**2)) @ W_h1.T) * (1 - H1[1]**2)) + H1[-1].T @ (((((((Y_hat[2] - Y[2]) @ W_2.T) * (1 - H1[2]**2)) @ W_h1.T) * (1 - H1[1]**2)) @ W_h1.T) * (1 - H1[0]**2))",
    ),
    SeedFormula(
        "002-m2m-W_2",
        "layered_many_to_many",
        (("batch_reduction", "sum"), ("batch", 1)),
        "W_2",
        "sum_t(H1[t].T @ (Y_hat[t] - Y[t]))",
    ),
    SeedFormula(
        "002-m2m-beta_2",
        "layered_many_to_many",
        (("batch_reduction", "sum"), ("batch", 1)),
        "beta_2",
        "sum_t((Y_hat[t] - Y[t]).T)",
    ),
    SeedFormula(
        "002-m2m-beta_1",
        "layered_many_to_many",
        (("batch_reduction", "sum"), ("batch", 1)),
        "beta_1",
        "sum_t(sum_k(((Y_hat[t] - Y[t]) @ W_2.T @ prod_j(diag(1 - H1[j]**2) @ W_h1.T) * (1 - H1[k]**2)).T))",
    ),
    SeedFormula(
        "002-m2m-W_1",
        "layered_many_to_many",
        (("batch_reduction", "sum"), ("batch", 1)),
        "W_1",
        "sum_t(sum_k(X[k].T @ ((Y_hat[t] - Y[t]) @ W_2.T @ prod_j(diag(1 - H1[j]**2) @ W_h1.T) * (1 - H1[k]**2))))",
    ),
    SeedFormula(
        "002-m2m-W_h1",
        "layered_many_to_many",
        (("batch_reduction", "sum"), ("batch", 1)),
        "W_h1",
        "sum_t(sum_k(H1[k-1].T @ ((Y_hat[t] - Y[t]) @ W_2.T @ prod_j(diag(1 - H1[j]**2) @ W_h1.T) * (1 - H1[k]**2))))",
    ),
    SeedFormula(
        "002-sum-to-T",
        "layered_many_to_many",
        (("batch_reduction", "sum"), ("batch", 1)),
        "W_2",
        "sum_t(H1[t].T @ (Y_hat[t] - Y[t])) + H1[T].T @ (Y_hat[T] - Y[T])",
    ),
    SeedFormula(
        "003-w_ya-per-step", "aa_hello", (), "w_ya", "-sum_t((y_hat[t] * (1 - y[t])) @ a[t].T)"
    ),
    SeedFormula("003-w_ya", "aa_hello", (), "w_ya", "-sum_t((1 - y[t]) @ a[t].T)"),
    SeedFormula("003-b_y", "aa_hello", (), "b_y", "-sum_t(y_hat[t] * (1 - y[t]))"),
    SeedFormula("003-b_y-update", "aa_hello", (), "b_y", "-sum_t(1 - y[t])"),
    SeedFormula(
        "003-w_aa-as-written",
        "aa_hello",
        (),
        "w_aa",
        "-sum_t(sum_k((1 - y[t]) @ w_ya @ prod_j(w_aa @ diag(1 - a[j]**2)) @ a[k-1] * (1 - a[k]**2)))",
    ),
    SeedFormula(
        "003-w_aa",
        "aa_hello",
        (),
        "w_aa",
        "-sum_t(sum_k(((prod_j(diag(1 - a[j]**2) @ w_aa).T @ w_ya.T @ (1 - y[t])) * (1 - a[k]**2)) @ a[k-1].T))",
    ),
    SeedFormula(
        "003-b_a-as-written",
        "aa_hello",
        (),
        "b_a",
        "-sum_t((1 - y[t]) * (1 - tanh(a[t])**2) * w_ya)",
    ),
    SeedFormula(
        "003-b_a", "aa_hello", (), "b_a", "-sum_t((1 - tanh(a[t])**2) * (w_ya.T @ (1 - y[t])))"
    ),
    SeedFormula(
        "003-b_a-update", "aa_hello", (), "b_a", "-sum_t((1 - a[t]**2) * (w_ya.T @ (1 - y[t])))"
    ),
    SeedFormula(
        "003-w_ax",
        "aa_hello",
        (),
        "w_ax",
        "-sum_t(((1 - a[t]**2) * (w_ya.T @ (1 - y[t]))) @ x[t].T)",
    ),
    SeedFormula(
        "003-w_aa-corrected",
        "aa_hello",
        (),
        "w_aa",
        "sum_t(sum_k(((prod_j(diag(1 - a[j]**2) @ w_aa).T @ w_ya.T @ (y[t] - y_hat[t])) * (1 - a[k]**2)) @ a[k-1].T))",
    ),
)


def for_spec(spec: ModelSpec) -> tuple[SeedFormula, ...]:
    """The seed formulas a document of ``spec`` shows: those written for exactly ``spec``,
    and, for a preset's own document, those of its seed written for a variant of it
    (000 and 002 write one example or no 1/m: each is checked at its own ``spec``, and
    the document says with which fields)."""
    return tuple(entry for entry in SEED_FORMULAS if spec in (entry.spec, PRESETS[entry.preset]))
