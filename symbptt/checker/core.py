"""The entry point :func:`check` and the one check it runs (:class:`_Checker`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import sympy as sp

from ..core.derive import Derivation
from ..expr import exprlang, mexpr
from ..model.spec import MAX_CHECK_STEPS, ModelSpec, SpecError
from .callables import CONVENTIONS, CallableFailed, _call, _Reference, localise
from .diagnosis import _Diagnosis
from .formulas import Formula, correct_formula
from .language import _base_role, _label, _step_roles, names, names_text
from .limits import _SCREEN, _SIZE_FIELDS, DPS, RTOL_FLOAT, RTOL_MP
from .localise import _localisation_notes, _rows_columns, _term_steps
from .namespace import _refuse_outside
from .points import (
    _close,
    _evaluate,
    _from_sympy,
    _gradient_symbol,
    _Point,
    _points,
    _prepare,
    _shape,
    _to_float,
)
from .printer import _naming, _Printer
from .prover import _symbolic_equal
from .report import CheckResult, Counterexample, Mistake
from .work import _derivation, _namespace_of, _resolve_wrt, _Work, _work

Candidate: TypeAlias = "str | sp.Basic | Callable[..., Any]"


def check(
    spec: ModelSpec | Derivation,
    wrt: str,
    candidate: Candidate,
    *,
    points: int = 20,
    rng: np.random.Generator | int | None = None,
    convention: str = "time_major",
) -> CheckResult:
    """Check ``candidate`` as the gradient of the spec's loss with respect to ``wrt``.

    Args:
        spec: the model (a :class:`ModelSpec`, or a :class:`Derivation` of one).
        wrt: a parameter's ASCII name in the spec's notation (``"W_hh"``), its
            role (``"recurrent_weight"``) or the initial state's name.
        candidate: a formula in the expression language, a SymPy matrix
            expression in the derivation's symbols, or a callable
            ``f(params, X, Y, **initial_states)`` (``h0=``, ``c0=``; the module docstring).
        points: how many random instances to compare at.
        rng: a NumPy generator or an integer seed (default: a fixed seed, so
            the same call gives the same report).
        convention: how a callable takes its arrays: ``"time_major"`` (the
            generated module's: X (T, m, n_in), biases (n, 1)) or
            ``"batch_major"`` (CS231n's, d2l's: X (m, T, n_in), biases (n,),
            integer labels for cross-entropy); see :mod:`symbptt.checker.callables`.

    Raises:
        ExpressionError: the candidate text (or SymPy expression) is malformed,
            refers to unknown names or steps, or has inconsistent shapes inside.
        ValueError: ``wrt`` names no gradient of this model.
    """
    if isinstance(spec, Derivation):
        spec = spec.spec
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec: expected a ModelSpec or a Derivation, got {type(spec).__name__}")
    if spec.steps > MAX_CHECK_STEPS:
        raise SpecError(
            f"steps: got {spec.steps}; the checker proves a candidate for at most "
            f"{MAX_CHECK_STEPS} steps (its expressions nest once per step); a sum_t formula "
            "holds for every T, so check it at a smaller T"
        )
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(f"points: got {points!r}; expected a positive integer")
    seed = _seed(rng)
    if convention not in CONVENTIONS:
        raise ValueError(
            f"convention: got {convention!r}; expected one of {', '.join(map(repr, CONVENTIONS))}"
        )
    orig = _derivation(spec)
    name = _resolve_wrt(orig, wrt)
    checker = _Checker(spec, _work(spec), orig, name, correct_formula(spec, name), seed, points)
    if isinstance(candidate, str):
        _refuse_outside(exprlang.parse(candidate, _namespace_of(spec)))  # the spec's sizes
        expr = _prepare(_refuse_outside(exprlang.parse(candidate, checker.work.ns)))
        return checker.check_expression(expr, candidate, text=candidate)
    if isinstance(candidate, sp.Basic):
        return checker.check_expression(
            _from_sympy(checker.work, orig, candidate), _show(orig, candidate), text=None
        )
    if callable(candidate):
        return checker.check_callable(candidate, convention)
    raise TypeError(
        "candidate: expected a formula string, a SymPy expression or a callable, "
        f"got {type(candidate).__name__}"
    )


# ``symbptt.check`` is this function once the package is imported (``from .check import
# check``), so the module's helpers are reachable from it as well:
# ``symbptt.check.names("aa")``.
check.names = names  # type: ignore[attr-defined]


check.names_text = names_text  # type: ignore[attr-defined]


check.correct_formula = correct_formula  # type: ignore[attr-defined]


#: SymPy candidates larger than this (in tree nodes) are not printed in the report.
_MAX_SHOWN_NODES = 400


def _show(d: Derivation, expr: Any) -> str:
    """A SymPy candidate in the expression language (or a summary, when it is large)."""
    for count, _ in enumerate(sp.preorder_traversal(expr)):
        if count > _MAX_SHOWN_NODES:
            return f"a SymPy expression of more than {_MAX_SHOWN_NODES} nodes"
    if not mexpr.is_matrix(expr):
        return str(expr)
    return _Printer(_naming(d.graph.symbols, d.graph.notation))(expr)


def _seed(rng: np.random.Generator | int | None) -> int:
    if rng is None:
        return 0
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return int(rng)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**62))
    raise TypeError(
        f"rng: expected a numpy Generator, an integer seed or None, got {type(rng).__name__}"
    )


@dataclass
class _Checker:
    """One check: the spec, its concrete version, the parameter, the points."""

    spec: ModelSpec
    work: _Work
    orig: Derivation
    name: str
    formula: Formula
    seed: int
    count: int

    @property
    def target(self) -> Any:
        """The gradient's symbol in the concrete derivation."""
        return _gradient_symbol(self.work, self.name)

    @property
    def expected_shape(self) -> tuple[Any, Any]:
        rows, cols = self.orig.gradients[self.name].shape
        return rows, cols

    def spec_shape(self, shape: tuple[Any, Any]) -> tuple[Any, Any]:
        """A concrete shape in the spec's own sizes (n_1 for the size the check chose)."""
        sizes = self.orig.graph.symbols.sizes
        back: dict[int, Any] = {}
        for key, _ in _SIZE_FIELDS:
            if isinstance(sizes[key], sp.Symbol):
                back.setdefault(self.work.sizes[key], sizes[key])
        rows, cols = (int(v) for v in shape)
        return back.get(rows, rows), back.get(cols, cols)

    def result(self, ok: bool, method: str, candidate: str, **extra: Any) -> CheckResult:
        extra.setdefault("candidate_shape", self.expected_shape)
        extra.setdefault("shape_mismatch", False)
        return CheckResult(
            ok=ok,
            wrt=self.name,
            spec=self.spec,
            method=method,
            candidate=candidate,
            formula=self.formula,
            expected_shape=self.expected_shape,
            sizes=dict(self.work.sizes),
            **extra,
        )

    # -- expressions -------------------------------------------------------------------
    def check_expression(self, expr: Any, shown: str, text: str | None) -> CheckResult:
        if not mexpr.is_matrix(expr):
            return self.result(
                False, "shape check", shown, candidate_shape=None, shape_mismatch=True
            )
        if tuple(expr.shape) != tuple(self.target.shape):
            return self.shape_result(expr, shown, "shape check")
        method = f"numeric at {self.count} points, {DPS} digits"
        pts = _points(self.work, self.seed, self.count)
        target = self.target
        float_values = [_evaluate(expr, p.env_f, "float") for p in pts]
        float_ok = [
            _close(value, p.env_f[target], RTOL_FLOAT)
            for p, value in zip(pts, float_values, strict=True)
        ]
        # 30 digits decide, at every point; the points float64 doubts come first
        failing, got = None, None
        for i in sorted(range(len(pts)), key=lambda i: float_ok[i]):
            value = _evaluate(expr, pts[i].env_mp, "mp")
            if not _close(value, pts[i].env_mp[target], RTOL_MP):
                failing, got = i, value
                break
        if failing is None:
            return self.success(expr, shown, method)
        point = pts[failing]
        got = _to_float(got) if got is not None else float_values[failing]

        def value_at(p: _Point) -> Any:
            return _evaluate(expr, p.env_f, "float")

        differing = _term_steps(text, self.work, self.name, point) if text else None
        return self.failure(
            shown, method, failing, point, got, value_at, differing, pts, float_values
        )

    def success(self, expr: Any, shown: str, method: str) -> CheckResult:
        proof = _symbolic_equal(self.work, expr, self.name)
        notes = [f"agrees at {self.count} random points to {DPS} digits"]
        if proof is not None:
            method = "symbolic"
            notes.insert(0, f"proved equal as polynomials in the entries ({proof})")
        if self.work.spec.loss == "cross_entropy":
            notes.append("targets: soft (probabilities) and one-hot, alternating")
        return self.result(True, method, shown, notes=tuple(notes))

    def failure(
        self,
        shown: str,
        method: str,
        index: int,
        point: _Point,
        got: Any,
        value_at: Callable[[_Point], Any],
        differing: tuple[int, ...] | None,
        pts: Sequence[_Point],
        values: Sequence[Any] = (),
        notes: Sequence[str] = (),
        **extra: Any,
    ) -> CheckResult:
        """The report of a candidate that differs at ``point``: mistakes and localisation."""
        diagnosis = _Diagnosis(self, value_at)
        expected = point.env_f[self.target]
        loss_steps = diagnosis.loss_steps(point)
        rows, columns = _rows_columns(got, expected)
        all_notes = list(notes)
        if values:
            all_notes += diagnosis.target_kind_note(values, pts)
        mistakes = diagnosis.mistakes(pts[:_SCREEN])
        all_notes += diagnosis.carry_note()
        all_notes += _localisation_notes(self, differing, loss_steps, rows, columns)
        all_notes += diagnosis.class_row_note()
        return self.result(
            False,
            method,
            shown,
            counterexample=self.counterexample(index, point, got),
            mistakes=mistakes,
            differing_terms=differing,
            loss_steps=loss_steps,
            rows=rows,
            columns=columns,
            notes=tuple(all_notes),
            **extra,
        )

    def shape_result(self, expr: Any, shown: str, method: str) -> CheckResult:
        rows, cols = (int(v) for v in expr.shape)
        expected = tuple(int(v) for v in self.target.shape)
        mistakes: tuple[Mistake, ...] = ()
        if (rows, cols) == (expected[1], expected[0]):

            def transposed_at(p: _Point) -> Any:
                return _evaluate(sp.Transpose(expr), p.env_f, "float")

            found = _Diagnosis(self, transposed_at).mistakes(
                _points(self.work, self.seed, _SCREEN), allow_exact=True
            )
            transpose = Mistake(
                "transpose", "the candidate has the transposed shape: it is written transposed"
            )
            mistakes = (transpose, *(m for m in found if m.name != "transpose"))
        notes = []
        holders = _quantities_with_shape(self.work, (rows, cols))
        if holders:
            notes.append(
                f"the candidate has the shape of {', '.join(holders)}: a gradient with respect "
                f"to one of those is not ∂L/∂{self.name}"
            )
        return self.result(
            False,
            method,
            shown,
            candidate_shape=self.spec_shape((rows, cols)),
            shape_mismatch=True,
            mistakes=mistakes,
            notes=tuple(notes),
        )

    def counterexample(self, index: int, point: _Point, got: Any) -> Counterexample:
        work = self.work
        naming = _naming(work.graph.symbols, work.notation)
        values = {naming(symbol): np.array(value) for symbol, value in point.leaves.items()}
        expected = point.env_f[self.target]
        if point.has_mp:
            expected = _to_float(point.env_mp[self.target])
        return Counterexample(
            point=index,
            targets=point.kind,
            sizes=dict(work.sizes),
            steps=len(work.graph.steps),
            values=values,
            expected=expected,
            got=got,
        )

    # -- callables ---------------------------------------------------------------------
    def check_callable(self, fn: Callable[..., Any], convention: str) -> CheckResult:
        work = self.work
        shown = str(getattr(fn, "__qualname__", None) or repr(fn))
        method = f"numeric at {self.count} points, float64 (relative tolerance {RTOL_FLOAT:g})"
        pts = _points(work, self.seed, self.count, one_hot=True)
        reference = _Reference(work, pts[0], self.name)
        calls: dict[int, Any] = {}
        expected_shape = _shape(self.target)

        def value_at(p: _Point) -> Any:
            if id(p) not in calls:
                value = _call(fn, work, p.leaves, self.name, convention, expected_shape)
                calls[id(p)] = (p, value)
            return calls[id(p)][1]

        notes = [f"reference: {reference.source}"]
        if convention != "time_major":
            notes.append(f"called in the {convention.replace('_', '-')} convention")
        try:
            for i, p in enumerate(pts):
                value = value_at(p)
                if value is not None and value.shape != expected_shape:
                    if value.ndim == 1:
                        notes.append("biases are (n, 1) columns")
                    shape = self.spec_shape(value.shape) if value.ndim == 2 else value.shape
                    return self.result(
                        False,
                        method,
                        shown,
                        candidate_shape=shape,
                        shape_mismatch=True,
                        notes=tuple(notes),
                    )
                if not _close(value, reference.gradient(p, self.name), RTOL_FLOAT):
                    where = localise(work, fn, convention, p, self.name, reference)
                    return self.failure(
                        shown,
                        method,
                        i,
                        p,
                        value,
                        value_at,
                        None,
                        pts,
                        notes=[*notes, *where.notes],
                        first_step=where.first_step,
                        gates_right=where.gates_right,
                        gates_wrong=where.gates_wrong,
                    )
        except CallableFailed as exc:
            notes.insert(0, f"the callable failed: {exc}")
            return self.result(False, "call", shown, notes=tuple(notes))
        return self.result(True, method, shown, notes=tuple(notes))


def _quantities_with_shape(work: _Work, shape: tuple[int, int]) -> list[str]:
    symbols = work.graph.symbols
    out = []
    for role in _step_roles(work.d):
        if tuple(int(v) for v in symbols.series_shape(_base_role(role))) == shape:
            out.append(f"{_label(work.notation, role)}[t]")
    return out
