"""The result of a check: :class:`CheckResult` and its :meth:`~CheckResult.explain`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..model.spec import ModelSpec

if TYPE_CHECKING:
    from .formulas import Formula


@dataclass(frozen=True)
class Mistake:
    """A common mistake the candidate matches: a stable ``name`` and a description."""

    name: str
    description: str
    place: str = ""  # the adjoint it is found in, in the language (dc[t]); "" for the whole
    steps: tuple[int, ...] | None = None  # the steps it is found at; None: every step


@dataclass(frozen=True)
class Counterexample:
    """A point where the candidate and the gradient differ."""

    point: int
    targets: str  # the kind of targets at this point: soft, one-hot, binary, real
    sizes: dict[str, int]
    steps: int
    values: dict[str, np.ndarray]  # the leaves (parameters, inputs, targets), by name
    expected: np.ndarray
    got: np.ndarray | None  # None where the candidate has no finite real value

    @property
    def max_abs_error(self) -> float:
        if self.got is None:
            return float("inf")
        return float(np.max(np.abs(self.got - self.expected)))


@dataclass(frozen=True)
class CheckResult:
    """The verdict of :func:`check`; :meth:`explain` is the readable report.

    Shapes are written in the spec's own sizes (symbols such as ``n_1`` where
    the spec leaves a size open); ``sizes`` are the concrete sizes the check
    used.  The localisation fields are None when they were not computed.
    """

    ok: bool
    wrt: str
    spec: ModelSpec
    method: str
    candidate: str
    formula: Formula
    expected_shape: tuple[Any, Any]
    candidate_shape: tuple[Any, Any] | None  # None: the candidate is a scalar
    shape_mismatch: bool
    sizes: dict[str, int]
    counterexample: Counterexample | None = None
    mistakes: tuple[Mistake, ...] = ()
    differing_terms: tuple[int, ...] | None = None  # steps whose sum_t term differs
    loss_steps: tuple[int, ...] | None = None  # steps whose loss the error involves
    rows: tuple[int, ...] | None = None  # rows that differ at the counterexample
    columns: tuple[int, ...] | None = None  # columns that differ at the counterexample
    #: callables: the first step whose cut sequences give a differing gradient
    first_step: int | None = None
    #: callables returning every gradient: the gates right and wrong at ``first_step``
    gates_right: tuple[str, ...] | None = None
    gates_wrong: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()

    @property
    def mistake_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.mistakes)

    def explain(self, verbose: bool = False) -> str:
        """Verdict, candidate, correct formula, mistakes, localisation and a counterexample."""
        verdict = "EQUAL" if self.ok else "NOT EQUAL"
        lines = [f"∂L/∂{self.wrt}: {verdict} ({self.method})"]
        lines.append(f"  candidate: {self.candidate}")
        lines.append(f"  correct:   {self.formula.gradient}")
        lines += [f"    where {line}" for line in self.formula.where]
        if self.shape_mismatch:
            lines.append(
                f"  shapes cannot match: the gradient of {self.wrt} has shape "
                f"{_shape_text(self.expected_shape)}, the candidate "
                + (_shape_text(self.candidate_shape) if self.candidate_shape else "is a scalar")
            )
        lines += [f"  mistake: {m.description}" for m in self.mistakes]
        if not self.ok and not self.mistakes and self.counterexample is not None:
            lines.append("  mistake: none of the common mistakes explains the difference")
        lines += [f"  - {note}" for note in self.notes]
        sizes = ", ".join(f"{_SIZE_LABEL[k]}={v}" for k, v in self.sizes.items())
        if self.ok:
            lines.append(f"  checked at sizes {sizes}, T={self.spec.steps}")
        example = self.counterexample
        if example is not None:
            lines.append(
                f"  counterexample (point {example.point}, {example.targets} targets, "
                f"sizes {sizes}, T={example.steps}):"
            )
            lines.append(_matrix_lines("expected ", example.expected))
            if example.got is None:
                lines.append("    candidate: no finite real value here")
            else:
                lines.append(_matrix_lines("candidate", example.got))
                lines.append(f"    max |difference| = {example.max_abs_error:.6g}")
            if verbose:
                lines += [_matrix_lines(label, value) for label, value in example.values.items()]
            else:
                lines.append("    (the inputs: .counterexample.values, or explain(verbose=True))")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


_SIZE_LABEL = {"n_in": "n_0", "n_hidden": "n_1", "n_out": "n_2", "batch": "m"}


def _shape_text(shape: tuple[Any, ...] | None) -> str:
    if shape is None:
        return "()"
    return "(" + ", ".join(str(v) for v in shape) + ("," if len(shape) == 1 else "") + ")"


def _matrix_lines(label: str, value: np.ndarray) -> str:
    text = np.array2string(np.asarray(value), precision=6, suppress_small=True, max_line_width=90)
    pad = " " * (len(label) + 6)
    return f"    {label}: " + text.replace("\n", "\n" + pad)
