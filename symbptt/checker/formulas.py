"""The correct gradient printed in the expression language from the derivation.

:func:`correct_formula` (the sum over t of the generic step's contribution, with the
adjoint recursion it keeps by name) and :func:`model_equations`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sympy as sp

from ..core.derive import Derivation, derive
from ..core.graph import T_SYMBOL, Assignment, Symbols
from ..expr import exprlang, mexpr
from ..expr.exprlang import ExpressionError
from ..model.notation import Notation
from ..model.spec import ModelSpec
from .flat import direction, flat_symbols
from .language import _base_role, _is_adjoint, _label
from .namespace import _refuse_outside, _state_initials
from .points import _close, _evaluate, _gradient_symbol, _points, _prepare
from .printer import _naming, _Printer, _relative_naming
from .work import _derivation, _namespace_of, _resolve_wrt, _work


@dataclass(frozen=True)
class Formula:
    """The correct gradient in the expression language, with the δ recursion it uses."""

    gradient: str
    where: tuple[str, ...]

    def __str__(self) -> str:
        return "\n".join([self.gradient, *(f"  where {line}" for line in self.where)])


def _is_forward(notation: Notation, role: str) -> bool:
    """A step-indexed quantity of the forward pass (not an adjoint)."""
    return not _is_adjoint(role) and _label(notation, role) is not None


def _kept(d: Derivation) -> tuple[str, ...]:
    """The adjoint roles the formulas keep by name (in the order the step computes them).

    Read from the generic step: an adjoint that the step reads one step later
    (it carries the recursion: δ_{t+1} in Elman, dc_{t+1} and δ^i_{t+1} in an
    LSTM) or that two other adjoints of the step read (dh_t in an LSTM).
    Every other adjoint is written out where it is used.
    """
    if d.spec.composed:
        return _kept_concrete(d)
    form = d.step_form
    meta = form.symbols.meta
    carried: set[str] = set()
    shared: set[str] = set()
    bodies = [form.backward] + ([form.last_backward] if form.last_backward else [])
    for body in bodies:
        readers: dict[str, int] = {}
        for a in body:
            seen: set[str] = set()
            for symbol in a.expr.free_symbols:
                role, step = meta.get(symbol, ("", None))
                if not _is_adjoint(role):
                    continue
                if isinstance(step, sp.Basic) and step != form.t:
                    carried.add(role)
                elif _is_adjoint(a.kind):
                    seen.add(role)
            for role in seen:
                readers[role] = readers.get(role, 0) + 1
        shared |= {role for role, count in readers.items() if count >= 2}
    order: list[str] = []
    for body in bodies:
        for a in body:
            if _is_adjoint(a.kind) and a.kind not in order and a.kind in carried | shared:
                order.append(a.kind)
    return tuple(order)


def _kept_concrete(d: Derivation) -> tuple[str, ...]:
    """:func:`_kept` read from the concrete steps (a composed model, read flat).

    An adjoint read at another step than the one it is computed for (the
    carry, in either direction), or read by two adjoints of one step.
    """
    meta = d.graph.symbols.meta
    carried: set[str] = set()
    readers: dict[tuple[str, Any], int] = {}
    for a in d.adjoints:
        seen: set[str] = set()
        for symbol in a.expr.free_symbols:
            role, step = meta.get(symbol, ("", None))
            if not _is_adjoint(role):
                continue
            if step != a.step:
                carried.add(role)
            else:
                seen.add(role)
        for role in seen:
            readers[(role, a.step)] = readers.get((role, a.step), 0) + 1
    shared = {role for (role, _), count in readers.items() if count >= 2}
    order: list[str] = []
    for a in d.adjoints:
        if a.kind not in order and a.kind in carried | shared:
            order.append(a.kind)
    return tuple(order)


def _inline(assignments: Iterable[Assignment], kept: Iterable[str]) -> dict[Any, Any]:
    """Adjoint and contribution expressions with every adjoint not ``kept`` substituted."""
    keep = set(kept)
    defs: dict[Any, Any] = {}
    out: dict[Any, Any] = {}
    for a in assignments:
        expr = a.expr.xreplace(defs)
        if _is_adjoint(a.kind) and a.kind not in keep:
            defs[a.target] = expr
        out[a.target] = expr
    return out


def _contribution_of(assignments: Iterable[Assignment], name: str) -> Assignment | None:
    for a in assignments:
        if a.kind == "contribution" and a.param == name:
            return a
    return None


def _printers(d: Derivation) -> tuple[_Printer, _Printer, Any]:
    """Printers of the generic step form: at step t, and at the last step (T or T-1)."""
    form = d.step_form
    notation = d.graph.notation
    last_step = T_SYMBOL + notation.t0 - 1
    t = form.t
    printer = _Printer(_naming(form.symbols, notation))
    last_printer = _Printer(
        _naming(
            form.symbols,
            notation,
            lambda _, s: s.subs(t, last_step) if isinstance(s, sp.Basic) else s,
        )
    )
    return printer, last_printer, last_step


def model_equations(model: ModelSpec | Derivation) -> tuple[tuple[str, str], ...]:
    """The model's equations, printed in the expression language from its derivation.

    The forward assignments of the generic step ``t`` (the cell's equations,
    output pre-activation, prediction, the loss of a step) and the total loss,
    as ``(left-hand side, right-hand side)`` pairs.  A composed model's: every
    unit's equations at step t (a masked state's choice too), the output layer
    (many-to-one: at the last step, reading each unit's final state), the loss
    of a step with its weights, and the total.
    """
    d = model if isinstance(model, Derivation) else _derivation(model)
    if d.spec.program.plain:
        form = d.step_form
        printer, _, _ = _printers(d)
        forward: tuple[Assignment, ...] = form.forward
        meta = form.symbols.meta
    else:
        form = derive(d.spec).step_form
        flat = flat_symbols(form.symbols)
        meta = flat.meta
        printer = _Printer(_naming(flat, flat.notation))
        forward = form.forward + (form.part(form.last_forward or (), None))
    notation = d.graph.notation
    rows: list[tuple[str, str]] = []
    step_losses: dict[Any, Any] = {}

    def loss_text(symbol: Any) -> str:
        _, step = meta.get(symbol) or d.graph.symbols.meta[symbol]
        return f"{notation.loss_ascii}[{Symbols.step_name(step)}]"

    for a in forward:
        if a.kind == "loss":
            node = a.expr
            rhs = f"{d.spec.loss}({printer(node.pred)}, {printer(node.target)})"
            if node.weight is not None:
                rhs += f", each unit's weighted by {printer(node.weight)}"
            rows.append((loss_text(a.target), rhs))
        else:
            rows.append((printer(a.target), printer(a.expr)))
    total = d.graph.assignments[-1]
    for symbol in total.expr.free_symbols:
        info = d.graph.symbols.meta.get(symbol)
        if info is not None and info[0] == "loss":
            step_losses[symbol] = sp.Symbol(loss_text(symbol))
    rows.append((str(total.target), printer(total.expr.xreplace(step_losses))))
    return tuple(rows)


def _most_common(texts: list[str]) -> str:
    """The text most steps share; of equally common ones the longest (a boundary step
    drops the terms that read zeros there), then the first."""
    return max(texts, key=lambda text: (texts.count(text), len(text)))


def _composed_recursion(d: Derivation) -> tuple[str, ...]:
    """:func:`_recursion_lines` from the concrete steps of a composed model.

    Each kept adjoint's line is its assignment printed relative to its step, the
    text most steps share; a backward unit's carry reads step t - 1.
    """
    graph = d.graph
    notation = graph.notation
    meta = graph.symbols.meta
    kept = _kept(d)
    defs = _inline(d.adjoints, kept)
    absolute = _Printer(_naming(graph.symbols, notation))
    lines: list[str] = []
    for kind in kept:
        mine = [a for a in d.adjoints if a.kind == kind]
        texts = []
        for a in mine:
            printer = _Printer(_relative_naming(meta, notation, a.step))
            texts.append(f"{printer(a.target)} = {printer(defs[a.target])}")
        common = _most_common(texts)
        template = mine[texts.index(common)]
        template_expr = defs[template.target]
        other = [
            a for a in mine if _moved(d, template_expr, template.step, a.step) != defs[a.target]
        ]
        if other:
            steps = ", ".join(str(step) for step in sorted(a.step for a in mine if a not in other))
            common += f"  (t = {steps})"
        lines.append(common)
        lines += [f"{absolute(a.target)} = {absolute(defs[a.target])}" for a in other]
    outside = []
    for role in kept:
        label = _label(notation, role)
        after = _outside(d, _base_role(role))[1]
        if any(f"{label}[t+1]" in line or f"{label}[t-1]" in line for line in lines):
            outside.append(f"{label}[{after}] = 0")
    for key in graph.initials:
        entry = notation.name_of(key)
        initial = entry.initial if key in d.graph.initial_inputs else "0"
        outside.append(f"{entry.ascii}[{_outside(d, entry.role)[0]}] = {initial}")
    lines.append(", ".join(outside))
    return tuple(lines)


def _moved(d: Derivation, expr: Any, at_step: int, step: int) -> Any:
    """``expr`` (of the step ``at_step``) at ``step``: every symbol moved by the same steps.

    Outside the model a state is its initial value, anything else zero (a
    quantity after the last step only ever multiplies a zero adjoint there).
    """
    graph = d.graph
    meta = graph.symbols.meta
    table = {(role, at): s for s, (role, at) in meta.items() if isinstance(at, int)}
    initials = _state_initials(graph)
    first, last = graph.steps[0], graph.steps[-1]
    mapping: dict[Any, Any] = {}
    for symbol in expr.free_symbols:
        role, at = meta.get(symbol, ("", None))
        if not isinstance(at, int):
            continue
        k = at + step - at_step
        found = table.get((role, k))
        if found is None:
            before = first - 1 if direction(graph, role) > 0 else last + 1
            found = initials[role] if role in initials and k == before else None
        mapping[symbol] = found if found is not None else sp.ZeroMatrix(*symbol.shape)
    return mexpr.substitute(expr, mapping)


def _outside(d: Derivation, role: str) -> tuple[str, str]:
    """The step before the first and after the last in the role's direction, as text."""
    first = d.graph.notation.t0
    forward = (f"{first - 1}", "T+1" if first == 1 else "T")
    return forward if direction(d.graph, role) > 0 else (forward[1], forward[0])


def _composed_formula(d: Derivation, name: str) -> str | None:
    """The gradient as ``sum_t(...)`` from the concrete steps of a composed model.

    Each step's contribution printed relative to its step; the text most steps
    share (the caller checks that it parses back to the gradient's values).  A
    gradient with one term at the last step (a many_to_one output layer) is
    printed at ``T``.
    """
    if name not in d.graph.params:
        return None
    graph = d.graph
    meta = graph.symbols.meta
    defs = _inline((a for a in d.assignments if a.kind != "gradient"), _kept(d))
    terms = [c for c in d.contributions if c.param == name]
    if not terms:
        return None
    last = graph.steps[-1]
    if len(terms) == 1 and terms[0].step == last and len(graph.steps) > 1:
        shift = graph.notation.t0 - 1  # the last step is T (T - 1 where steps start at 0)
        at_last = _relative_naming(meta, graph.notation, last, "T", shift)
        absolute = _naming(graph.symbols, graph.notation)

        def named(symbol: Any) -> str:
            """A backward unit's final state is at the first step: h_b[1], not h_b[T-2]."""
            role, _ = meta.get(symbol, ("", None))
            backward = direction(graph, _base_role(role)) < 0
            return absolute(symbol) if backward else at_last(symbol)

        return _Printer(named)(defs[terms[0].target])
    texts = [
        _Printer(_relative_naming(meta, graph.notation, c.step))(defs[c.target]) for c in terms
    ]
    return f"sum_t({_most_common(texts)})"


def _recursion_lines(d: Derivation) -> tuple[str, ...]:
    """The kept adjoints' recursion in the expression language, and what lies outside."""
    if d.spec.composed:
        return _composed_recursion(d)
    form = d.step_form
    notation = d.graph.notation
    printer, last_printer, last_step = _printers(d)
    kept = _kept(d)
    lines: list[str] = []
    suffix = ""
    if form.last_backward is not None:
        defs = _inline(form.last_backward, kept)
        for a in form.last_backward:
            if a.kind in kept:
                lines.append(f"{last_printer(a.target)} = {last_printer(defs[a.target])}")
        suffix = f"  (t < {Symbols.step_name(last_step)})"
    defs = _inline(form.backward, kept)
    for a in form.backward:
        if a.kind in kept:
            lines.append(f"{printer(a.target)} = {printer(defs[a.target])}{suffix}")
    first = notation.t0
    after = "T+1" if first == 1 else "T"
    outside = [
        f"{label}[{after}] = 0"
        for label in (_label(notation, role) for role in kept)
        if any(f"{label}[t+1]" in line for line in lines)
    ]
    for key in d.graph.initials:
        entry = notation.name_of(key)
        initial = entry.initial if key in d.graph.initial_inputs else "0"
        outside.append(f"{entry.ascii}[{first - 1}] = {initial}")
    lines.append(", ".join(outside))
    return tuple(lines)


def _generic_formula(d: Derivation, name: str) -> str | None:
    """The gradient as ``sum_t(...)`` from the generic step form (None if it has no such form)."""
    if d.spec.composed:
        return _composed_formula(d, name)
    if name not in d.graph.params:
        return None
    form = d.step_form
    kept = _kept(d)
    printer, last_printer, _ = _printers(d)
    body = _contribution_of(form.backward, name)
    if form.last_backward is None:
        if body is None:
            return None
        return f"sum_t({printer(_inline(form.backward, kept)[body.target])})"
    last = _contribution_of(form.last_backward, name)
    if last is None:
        return None
    last_defs = _inline(form.last_backward, kept)
    if body is None:
        return last_printer(last_defs[last.target])
    body_text = printer(_inline(form.backward, kept)[body.target])
    if printer(last_defs[last.target]) != body_text:
        return None
    return f"sum_t({body_text})"


def _unrolled_formula(d: Derivation, name: str) -> str:
    """The gradient as the explicit sum of its per-step contributions."""
    graph = d.graph
    printer = _Printer(_naming(graph.symbols, graph.notation))
    defs = _inline((a for a in d.assignments if a.kind != "gradient"), _kept(d))
    terms = [printer(defs[c.target]) for c in d.contributions if c.param == name]
    if not terms:
        rows, cols = d.gradients[name].shape
        return f"0 * ones({rows}, {cols})"
    if len(terms) == 1:
        return terms[0]
    return " + ".join(f"({t})" if " + " in t or " - " in t else t for t in terms)


@lru_cache(maxsize=64)
def correct_formula(spec: ModelSpec, wrt: str) -> Formula:
    """The correct gradient of ``wrt`` in the expression language of the spec's notation.

    The sum over t printed from the derivation's generic step (checked to
    parse back to the same values), with the δ recursion; for gradients
    without such a form (the initial state's), the explicit sum of the
    per-step contributions.
    """
    d = _derivation(spec)
    name = _resolve_wrt(d, wrt)
    generic = _generic_formula(d, name)
    if generic is None or not _formula_agrees(spec, name, generic):
        generic = _unrolled_formula(d, name)
    return Formula(generic, _recursion_lines(d))


def _formula_agrees(spec: ModelSpec, name: str, text: str) -> bool:
    try:
        _refuse_outside(exprlang.parse(text, _namespace_of(spec)))
        work = _work(spec)
        expr = _prepare(_refuse_outside(exprlang.parse(text, work.ns)))
    except ExpressionError:
        return False
    target = _gradient_symbol(work, name)
    for point in _points(work, 0, 2):
        got = _evaluate(expr, point.env_f, "float")
        if got is None or not _close(got, point.env_f[target], 1e-10):
            return False
    return True
