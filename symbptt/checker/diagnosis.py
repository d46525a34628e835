"""Which common mistake a differing candidate matches, by mutated correct formulas."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy as sp

from .. import functions, mexpr
from ..derive import Derivation
from ..graph import Assignment
from .formulas import _contribution_of, _has_roles, _inline, _is_forward, _kept
from .language import _base_role, _is_adjoint, _label
from .namespace import _state_initials
from .points import _close, _Eval, _evaluate, _leaves, _other_target, _Point
from .printer import _naming, _Printer
from .report import Mistake
from .work import _Work

if TYPE_CHECKING:
    from .core import _Checker


_OUT_KNOBS = ("ok", "dropped_target", "softmax_diagonal")


_REC_KNOBS = ("ok", "no_recurrence", "untransposed_recurrence")


_DER_KNOBS = ("ok", "derivative_at_pre_activation", "derivative_of_output", "no_derivative")


_STEP_KNOBS = ("ok", "off_by_one_later", "off_by_one_earlier", "last_step_only")


_FINAL_KNOBS = ("ok", "transpose")


class _Diagnosis:
    """Which mutated correct formula the candidate equals, and where it differs."""

    def __init__(self, checker: _Checker, value_at: Callable[[_Point], Any]) -> None:
        self.checker = checker
        self.work = checker.work
        self.name = checker.name
        self.value_at = value_at

    # -- mutations ---------------------------------------------------------------------
    def _adjoint_variants(self) -> list[tuple[tuple[str, str, str], list[Assignment]]]:
        work = self.work
        spec = work.spec
        adjoints = list(work.d.adjoints)
        out_knobs: Sequence[str] = ("ok",)
        if spec.output == "softmax" and spec.loss == "cross_entropy":
            out_knobs = _OUT_KNOBS
        # The recurrence and activation mistakes are written for a cell whose file tags a
        # hidden state, its pre-activation and a recurrent weight (the Elman roles); other
        # cells get no such mistake named (a later issue names gated cells' mistakes).
        uses_delta = self._uses_delta() and _has_roles(
            work.notation, ("pre_activation", "hidden", "recurrent_weight")
        )
        rec_knobs: Sequence[str] = _REC_KNOBS if uses_delta else ("ok",)
        der_knobs: Sequence[str] = ("ok",)
        if uses_delta and spec.hidden != "identity" and work.graph.symbols.cell.activation:
            der_knobs = _DER_KNOBS
        variants = []
        for out_k in out_knobs:
            for rec_k in rec_knobs:
                for der_k in der_knobs:
                    knobs = (out_k, rec_k, der_k)
                    variants.append((knobs, [self._mutate(a, knobs) for a in adjoints]))
        return variants

    def _uses_delta(self) -> bool:
        meta = self.work.graph.symbols.meta
        for c in self.work.d.contributions:
            if c.param != self.name:
                continue
            for s in c.expr.free_symbols:
                if meta.get(s, ("",))[0] in ("adjoint_pre_activation", "adjoint_hidden"):
                    return True
        return False

    def _mutate(self, a: Assignment, knobs: tuple[str, str, str]) -> Assignment:
        out_k, rec_k, der_k = knobs
        work = self.work
        table = work.table
        step = a.step
        expr = a.expr
        if a.kind == "adjoint_output_pre_activation" and out_k != "ok":
            target = table[("target", step)]
            pred = table[("output", step)]
            coeff, _ = mexpr.split_scale(expr)
            ones = sp.OneMatrix(*target.shape)
            if out_k == "dropped_target":
                expr = mexpr.scale(coeff, sp.MatAdd(pred, sp.MatMul(-1, ones)))
            else:
                expr = mexpr.scale(
                    coeff, sp.HadamardProduct(target, sp.MatAdd(pred, sp.MatMul(-1, ones)))
                )
        elif a.kind == "adjoint_hidden" and rec_k != "ok":
            if rec_k == "no_recurrence":
                deltas = {
                    s: sp.ZeroMatrix(*s.shape)
                    for s in expr.free_symbols
                    if work.graph.symbols.meta.get(s, ("",))[0] == "adjoint_pre_activation"
                }
                expr = expr.xreplace(deltas)
            else:
                w = work.graph.params[work.notation.param("recurrent_weight").ascii]
                expr = expr.xreplace({sp.Transpose(w): w})
        elif a.kind == "adjoint_pre_activation" and der_k != "ok":
            expr = self._derivative_variant(a, der_k)
        if expr is a.expr:
            return a
        return Assignment(a.target, expr, a.kind, a.step, a.param)

    def _derivative_variant(self, a: Assignment, knob: str) -> Any:
        work = self.work
        table = work.table
        step = a.step
        h = table[("hidden", step)]
        z = table[("pre_activation", step)]
        dh = table.get(("adjoint_hidden", step))
        if dh is None:
            return a.expr
        activation = functions.ACTIVATIONS[work.spec.hidden]
        derivative, form = activation.derivative
        if knob == "no_derivative":
            return dh
        if knob == "derivative_at_pre_activation":
            if form != "output" or functions.a not in derivative.free_symbols:
                return a.expr
            wrong = functions.lift(derivative, {functions.a: z}, z.shape)
        else:
            raw = activation.raw_derivative
            if functions.z not in raw.free_symbols:
                return a.expr
            wrong = functions.lift(raw, {functions.z: h}, h.shape)
        return mexpr.hadamard(dh, wrong)

    def _contributions(self, knob: str) -> list[Any]:
        work = self.work
        if knob == "last_step_only":
            last = work.graph.steps[-1]
            return [c.expr for c in work.d.contributions if c.param == self.name and c.step == last]
        if knob == "ok":
            return [c.expr for c in work.d.contributions if c.param == self.name]
        return self._generic_terms(1 if knob == "off_by_one_later" else -1)

    def _generic_terms(self, offset: int) -> list[Any]:
        """The generic step's term at every step, its forward quantities shifted by ``offset``."""
        work = self.work
        form = work.form
        graph = work.graph
        first, last = graph.steps[0], graph.steps[-1]
        out = []
        for step in graph.steps:
            body = form.backward
            if form.last_backward is not None and step == last:
                body = form.last_backward
            contribution = _contribution_of(body, self.name)
            if contribution is None:
                continue
            mapping: dict[Any, Any] = {}
            initials = _state_initials(graph)
            for symbol in contribution.expr.free_symbols:
                role, at = form.symbols.meta.get(symbol, ("", None))
                if not isinstance(at, sp.Basic):
                    continue
                k = int(at.subs(form.t, step))
                if _is_forward(work.notation, role):
                    k += offset
                found = work.table.get((role, k))
                if found is None and role in initials and k == first - 1:
                    found = initials[role]
                mapping[symbol] = found if found is not None else sp.ZeroMatrix(*symbol.shape)
            out.append(contribution.expr.xreplace(mapping))
        return out

    def _variant_values(self, points: Sequence[_Point]) -> list[tuple[tuple[str, ...], list[Any]]]:
        """(knobs, value at each point) for every mutation of the correct gradient."""
        square = self.checker.target.shape[0] == self.checker.target.shape[1]
        step_knobs: Sequence[str] = _STEP_KNOBS
        if self.work.spec.mode == "many_to_one":
            step_knobs = ("ok", "off_by_one_later", "off_by_one_earlier")
        final_knobs: Sequence[str] = _FINAL_KNOBS if square else ("ok",)
        results: list[tuple[tuple[str, ...], list[Any]]] = []
        variants = self._adjoint_variants()
        envs: dict[tuple[str, str, str], list[dict[Any, Any]]] = {}
        for knobs, assignments in variants:
            per_point = []
            for p in points:
                evaluator = _Eval(p.env_f, backend="float")
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    evaluator.run(assignments)
                per_point.append(evaluator.env)
            envs[knobs] = per_point
        for step_k in step_knobs:
            terms = self._contributions(step_k)
            total = mexpr.add(*terms) if terms else sp.ZeroMatrix(*self.checker.target.shape)
            for knobs, per_point in envs.items():
                values = [_evaluate(total, env, "float") for env in per_point]
                for final_k in final_knobs:
                    shown = [v.T if final_k == "transpose" and v is not None else v for v in values]
                    results.append(((*knobs, step_k, final_k), shown))
        results += self._wrong_quantities(points)
        return results

    def _wrong_quantities(
        self, points: Sequence[_Point]
    ) -> list[tuple[tuple[str, ...], list[Any]]]:
        """∂L/∂(something else): o_t, h_t, δ_t, and ∂L/∂ŷ_t, at every step."""
        work = self.work
        shape = tuple(self.checker.target.shape)
        out: list[tuple[tuple[str, ...], list[Any]]] = []
        notation = work.notation
        for (role, step), symbol in sorted(
            work.table.items(), key=lambda item: (item[0][0], item[0][1])
        ):
            if not _is_adjoint(role) or tuple(symbol.shape) != shape:
                continue
            label = _label(notation, role)
            values = [p.env_f.get(symbol) for p in points]
            base = notation.name_of(_base_role(role)).ascii
            shown = f"∂L/∂{base}[{step}]" if role.startswith("adjoint_") else f"{label}[{step}]"
            if label == "delta":
                shown = f"delta[{step}]"
            out.append((("wrong_quantity", shown), values))
        loss = functions.LOSSES[work.spec.loss]
        for step in work.graph.steps:
            pred = work.table.get(("output", step))
            target = work.table.get(("target", step))
            if pred is None or target is None or tuple(pred.shape) != shape:
                continue
            derivative = functions.lift(
                loss.derivative, {functions.a: pred, functions.y: target}, pred.shape
            )
            values = [_evaluate(derivative, p.env_f, "float") for p in points]
            label = notation.name_of("output").ascii
            out.append((("wrong_quantity", f"∂L/∂{label}[{step}]"), values))
        return out

    def mistakes(self, points: Sequence[_Point], allow_exact: bool = False) -> tuple[Mistake, ...]:
        got = [self.value_at(p) for p in points]
        if any(g is None for g in got):
            return ()
        best: tuple[int, tuple[str, ...], float] | None = None
        for knobs, values in self._variant_values(points):
            factor = _common_factor(got, values)
            if factor is None:
                continue
            changed = sum(1 for k in knobs if k != "ok") if knobs[0] != "wrong_quantity" else 1
            unit = abs(factor - 1) < 1e-9
            score = changed + (0 if unit else 1)
            if score == 0 and not allow_exact:
                continue
            if best is None or score < best[0]:
                best = (score, knobs, factor)
        if best is None:
            return ()
        _, knobs, factor = best
        return self._describe(knobs, factor)

    # -- descriptions ------------------------------------------------------------------
    def _describe(self, knobs: tuple[str, ...], factor: float) -> tuple[Mistake, ...]:
        out: list[Mistake] = []
        if knobs[0] == "wrong_quantity":
            out.append(
                Mistake(
                    "wrong_quantity",
                    f"this is {knobs[1]} (the gradient with respect to another quantity), "
                    f"not ∂L/∂{self.name}",
                )
            )
        else:
            texts = _KnobText(self.work, self.checker.orig, self.name)
            for knob in knobs:
                if knob != "ok":
                    out.append(Mistake(_KNOB_NAMES.get(knob, knob), texts.describe(knob)))
        if abs(factor - 1) > 1e-9:
            out.append(self._factor_mistake(factor))
        return tuple(out)

    def _factor_mistake(self, factor: float) -> Mistake:
        return _factor_mistake(self.work, factor)

    # -- localisation ------------------------------------------------------------------
    def loss_steps(self, point: _Point) -> tuple[int, ...] | None:
        """Steps whose target changes the difference: the losses the error involves."""
        work = self.work
        target = self.checker.target
        base = self.value_at(point)
        if base is None:
            return None
        diff = base - point.env_f[target]
        scale = max(1.0, float(np.max(np.abs(point.env_f[target]))))
        involved = []
        rng = np.random.default_rng([self.checker.seed, 7919])
        for symbol in work.graph.targets:
            step = work.graph.symbols.meta[symbol][1]
            leaves = dict(point.leaves)
            leaves[symbol] = _other_target(work, point.leaves[symbol], point.kind, rng)
            moved = _Point(work, leaves, point.kind)
            value = self.value_at(moved)
            if value is None:
                return None
            moved_diff = value - moved.env_f[target]
            if float(np.max(np.abs(moved_diff - diff))) > 1e-7 * scale:
                involved.append(step)
        return tuple(involved)

    def target_kind_note(self, values: Sequence[Any], points: Sequence[_Point]) -> list[str]:
        target = self.checker.target
        by_kind: dict[str, list[bool]] = {}
        for value, p in zip(values, points, strict=True):
            by_kind.setdefault(p.kind, []).append(_close(value, p.env_f[target], 1e-6))
        if all(by_kind.get("one-hot", [False])) and not any(by_kind.get("soft", [True])):
            return ["agrees when the targets are one-hot, differs for soft (probability) targets"]
        return []

    def class_row_note(self) -> list[str]:
        """With the same one-hot class at every step: does it agree on that class's row?"""
        work = self.work
        spec = work.spec
        if spec.loss != "cross_entropy":
            return []
        role = work.d.roles.get(self.name)
        if role not in ("output_weight", "output_bias"):
            return []
        column = work.notation.layout == "column"
        axis = 0 if (column or role == "output_bias") else 1
        rng = np.random.default_rng([self.checker.seed, 104729])
        leaves = _leaves(work, rng, "same-class", same_class=1)
        point = _Point(work, leaves, "same-class")
        got = self.value_at(point)
        if got is None:
            return []
        diff = np.abs(got - point.env_f[self.checker.target])
        scale = 1e-7 * max(1.0, float(np.max(np.abs(point.env_f[self.checker.target]))))
        per_unit = diff.max(axis=1 - axis)
        word = "row" if axis == 0 else "column"
        others = [i for i in range(per_unit.shape[0]) if i != 1]
        on_class = per_unit[1] <= scale
        off_class = all(per_unit[i] <= scale for i in others)
        lead = "with a one-hot target (the same class at every step):"
        if on_class and not off_class:
            return [f"{lead} agrees on the target class's {word}, differs on the others"]
        if off_class and not on_class:
            return [f"{lead} differs on the target class's {word} only"]
        return []


def _factor_mistake(work: _Work, factor: float) -> Mistake:
    """Name a constant factor between the candidate and the gradient: T, m, a sign."""
    spec = work.spec
    loss_steps = len(work.graph.steps) if spec.mode == "many_to_many" else 1
    m = work.sizes["batch"]
    for sign in (1, -1):
        for a in (0, 1, -1):
            for b in (0, 1, -1):
                if (a and loss_steps == 1) or (b and m == 1) or (sign == 1 and a == b == 0):
                    continue
                if a * b < 0:  # T/m or m/T: a coincidence more likely than a mistake
                    continue
                value = sign * float(loss_steps) ** a * float(m) ** b
                if abs(factor - value) > 1e-9 * max(1.0, abs(value)):
                    continue
                parts = []
                if a:
                    mean = spec.time_reduction == "mean"
                    parts.append(_factor_text("T", loss_steps, a, mean, "time"))
                if b:
                    mean = spec.batch_reduction == "mean"
                    parts.append(_factor_text("m", m, b, mean, "the batch"))
                if sign < 0:
                    parts.append("the sign is flipped")
                name = (
                    "sign" if a == b == 0 else ("missing_factor" if a + b > 0 else "extra_factor")
                )
                return Mistake(name, "; ".join(parts))
    return Mistake("factor", f"off by a constant factor {factor:.6g}")


def _factor_text(size: str, value: int, power: int, mean: bool, over: str) -> str:
    here = f"{size} = {value} here"
    if power > 0 and mean:
        return f"missing 1/{size} factor (the loss is the mean over {over}; {here})"
    if power > 0:
        return f"a factor {size} too many (the loss is a sum over {over}, not a mean; {here})"
    if mean:
        return f"an extra 1/{size} factor (the mean over {over} is already counted; {here})"
    return f"an extra 1/{size} factor (the loss is a sum over {over}, not a mean; {here})"


_KNOB_NAMES = {
    "off_by_one_later": "off_by_one",
    "off_by_one_earlier": "off_by_one",
}


class _KnobText:
    """Descriptions of the mutations in the notation's own names."""

    def __init__(self, work: _Work, orig: Derivation, name: str) -> None:
        self.work = work
        self.orig = orig
        self.name = name
        notation = work.notation

        def ascii_of(role: str) -> str:
            # the Elman roles exist only where the recurrence mistakes are searched
            return notation.name_of(role).ascii if _has_roles(notation, (role,)) else role

        self.pred = ascii_of("output")
        self.target = ascii_of("target")
        self.h = ascii_of("hidden")
        self.z = ascii_of("pre_activation")
        self.w = ascii_of("recurrent_weight")
        self.column = notation.layout == "column"

    def _derivative_text(self, form: str) -> str:
        activation = functions.ACTIVATIONS[self.work.spec.hidden]
        derivative, _ = activation.derivative
        h = sp.MatrixSymbol("__h", 2, 1)
        z = sp.MatrixSymbol("__z", 2, 1)
        names = {"__h": f"{self.h}[t]", "__z": f"{self.z}[t]"}
        printer = _Printer(lambda s: names.get(s.name, s.name))
        if form == "correct":
            mapping = {functions.a: h, functions.z: z}
            return printer(functions.lift(derivative, mapping, h.shape))
        if form == "at_pre":
            return printer(functions.lift(derivative, {functions.a: z, functions.z: z}, z.shape))
        return printer(functions.lift(activation.raw_derivative, {functions.z: h}, h.shape))

    def describe(self, knob: str) -> str:
        pred, target, h, w = self.pred, self.target, self.h, self.w
        back = f"{w}.T @ delta[t+1]" if self.column else f"delta[t+1] @ {w}.T"
        if knob == "dropped_target":
            return (
                f"dropped the target from the output error: -(1 - {pred}[t]) (= {pred}[t] - 1) "
                f"where {pred}[t] - {target}[t] belongs (softmax + cross-entropy)"
            )
        if knob == "softmax_diagonal":
            return (
                f"kept only the diagonal of the softmax Jacobian: -{target}[t] * (1 - {pred}[t]) "
                f"where {pred}[t] - {target}[t] belongs; with a one-hot target it is right on the "
                "target class's row and wrong on the others"
            )
        if knob == "no_recurrence":
            return (
                f"missing recurrent term: delta[t] lacks {back}, so only the t == k term of the "
                "sum over k is kept (no gradient flows back through time)"
            )
        if knob == "untransposed_recurrence":
            wrong = f"{w} @ delta[t+1]" if self.column else f"delta[t+1] @ {w}"
            return f"{wrong} where {back} belongs (a missing transpose in the δ recursion)"
        if knob == "derivative_at_pre_activation":
            wrong, right = self._derivative_text("at_pre"), self._derivative_text("correct")
            return (
                "the activation's derivative is taken at the pre-activation: "
                f"{wrong} where {right} belongs"
            )
        if knob == "derivative_of_output":
            return (
                f"the activation's derivative is applied to the hidden state: "
                f"{self._derivative_text('of_output')} where {self._derivative_text('correct')} "
                f"belongs ({h}[t] is already the activation's output)"
            )
        if knob == "no_derivative":
            correct = self._derivative_text("correct")
            return f"the activation's derivative {correct} is missing from delta[t]"
        if knob in ("off_by_one_later", "off_by_one_earlier"):
            offset = 1 if knob == "off_by_one_later" else -1
            wrong, right = self._contribution_text(offset), self._contribution_text(0)
            if wrong and right:
                return f"off-by-one step: {wrong} where {right} belongs"
            later = "later" if offset > 0 else "earlier"
            return f"off-by-one step: the forward quantities are taken one step {later}"
        if knob == "last_step_only":
            return "only the last step's term: the sum over t is missing"
        if knob == "transpose":
            return "transposed: the candidate is the transpose of the gradient"
        return knob

    def _contribution_text(self, offset: int) -> str:
        """The generic step's term of the gradient, the quantities it reads moved by ``offset``.

        Only the forward quantities the contribution itself reads move (h[t-1] in
        δ_t h_{t-1}^T), as in the mutation :meth:`_Diagnosis._generic_terms`
        compares with; the adjoints written out into it do not.
        """
        form = self.orig.step_form
        contribution = _contribution_of(form.backward, self.name)
        if contribution is None:
            return ""
        notation = self.orig.graph.notation
        meta = form.symbols.meta
        moved: dict[Any, Any] = {}
        for symbol in contribution.expr.free_symbols:
            role, step = meta.get(symbol, ("", None))
            if _is_forward(notation, role) and isinstance(step, sp.Basic):
                moved[symbol] = form.symbols.series(role, step + offset)
        defs = _inline(form.backward, _kept(self.orig))
        written_out = {
            a.target: defs[a.target]
            for a in form.backward
            if _is_adjoint(a.kind) and a.kind not in _kept(self.orig)
        }
        expr = contribution.expr.xreplace(moved).xreplace(written_out)
        return _Printer(_naming(form.symbols, notation))(expr)


def _common_factor(got: Sequence[Any], values: Sequence[Any]) -> float | None:
    """c with got ≈ c * values at every point (c from the first point), else None."""
    first_v = values[0]
    if first_v is None or any(
        v is None or v.shape != g.shape for v, g in zip(values, got, strict=True)
    ):
        return None
    denom = float(np.sum(first_v * first_v))
    if denom < 1e-24:
        return None
    c = float(np.sum(got[0] * first_v)) / denom
    if abs(c) < 1e-12:
        return None
    for g, v in zip(got, values, strict=True):
        scale = max(1.0, float(np.max(np.abs(g))), float(np.max(np.abs(c * v))))
        if float(np.max(np.abs(g - c * v))) > 1e-8 * scale:
            return None
    return c
