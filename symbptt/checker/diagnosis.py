"""Which common mistake a differing candidate matches, by mutated correct formulas."""

from __future__ import annotations

import heapq
import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy as sp

from ..core.derive import Derivation
from ..core.graph import Assignment
from ..expr import functions, mexpr
from .flat import direction
from .formulas import _contribution_of, _inline, _is_forward, _kept
from .language import _base_role, _is_adjoint, _label
from .mutations import EVERY, LOCAL, ONE, Alteration, _later_adjoints, _shifted, _terms, alterations
from .namespace import _state_initials
from .points import _close, _Eval, _evaluate, _leaves, _other_target, _Point
from .printer import _naming, _Printer, _relative_naming
from .report import Mistake
from .work import _Work

if TYPE_CHECKING:
    from .core import _Checker


#: Contribution-level alternatives: which steps the gradient's terms read.
_STEP_KNOBS = ("off_by_one_later", "off_by_one_earlier", "last_step_only")
#: How many combined alterations the search tries at two and at three at once.
_COMBINATIONS = {2: 600, 3: 600}
#: The flavours of an alteration, most specific first (for the order of the report).
_SPECIFIC = {ONE: 0, LOCAL: 1, EVERY: 2}


@dataclass(frozen=True)
class _Atom:
    """One mistake of a variant: an alteration of the adjoints (with how it is applied),
    a change of the gradient's terms, or the whole result transposed."""

    name: str
    site: tuple[Any, ...]
    text: str
    place: str = ""
    flavour: str = EVERY
    step: int | None = None
    alteration: Alteration | None = None
    data: Any = None


class _Diagnosis:
    """Which mutated correct formula the candidate equals, and where it differs."""

    def __init__(self, checker: _Checker, value_at: Callable[[_Point], Any]) -> None:
        self.checker = checker
        self.work = checker.work
        self.name = checker.name
        self.value_at = value_at
        self.adjoints = list(self.work.d.adjoints)
        self.contribs = [c for c in self.work.d.contributions if c.param == self.name]
        #: the atoms of every variant that reproduces the candidate (after :meth:`mistakes`)
        self.found: list[tuple[_Atom, ...]] = []

    # -- atoms ---------------------------------------------------------------------------
    def _adjoint_atoms(self) -> list[_Atom]:
        """Every alteration at every step, in each step's formula, and at each single step."""
        steps = self.work.graph.steps
        out = []
        for alt in alterations(self.work):
            out.append(_Atom(alt.name, alt.site, alt.text, alt.place, EVERY, None, alt))
        for alt in alterations(self.work):
            out.append(_Atom(alt.name, alt.site, alt.text, alt.place, LOCAL, None, alt))
        for alt in alterations(self.work):
            for step in steps:
                out.append(_Atom(alt.name, alt.site, alt.text, alt.place, ONE, step, alt))
        return out

    def _term_atoms(self) -> list[_Atom]:
        """Changes of the gradient's own terms: steps moved, the last only, another gate's."""
        out = []
        knobs: Sequence[str] = _STEP_KNOBS
        if self.work.spec.mode == "many_to_one" and not self._reads_every_step():
            knobs = _STEP_KNOBS[:2]  # one term (the output layer's): the last is all of it
        texts = _KnobText(self.work, self.checker.orig, self.name)
        for knob in knobs:
            out.append(
                _Atom(_KNOB_NAMES.get(knob, knob), ("terms",), texts.describe(knob), data=knob)
            )
        roles = self._forward_roles()
        if len(roles) > 1:
            for role in roles:
                for offset in (1, -1):
                    text = texts.describe_role(role, offset)
                    out.append(_Atom("off_by_one", ("terms",), text, data=(role, offset)))
        if any(direction(self.work.graph, role) < 0 for role in roles):
            text = texts.describe_reflected()
            out.append(_Atom("off_by_one", ("terms",), text, data="reflected"))
        out += self._gate_atoms()
        return out

    def _reads_every_step(self) -> bool:
        """The gradient has a term at more than one step (an input weight of many_to_one)."""
        return len({c.step for c in self.contribs}) > 1

    def _forward_roles(self) -> list[str]:
        """The forward quantities the generic step's term of the gradient reads."""
        form = self.work.form
        if form is None:  # a composed model: the concrete steps' terms
            return _forward_roles_of(self.work, self.contribs)
        body = _contribution_of(form.backward, self.name)
        if body is None and form.last_backward is not None:
            body = _contribution_of(form.last_backward, self.name)
        if body is None:
            return []
        roles = []
        for symbol in sorted(body.expr.free_symbols, key=str):
            role, at = form.symbols.meta.get(symbol, ("", None))
            if (
                isinstance(at, sp.Basic)
                and _is_forward(self.work.notation, role)
                and role not in roles
            ):
                roles.append(role)
        return roles

    def _gate_atoms(self) -> list[_Atom]:
        """The gradient's terms reading another adjoint of the same shape (another gate's)."""
        meta = self.work.graph.symbols.meta
        notation = self.work.notation
        read: list[str] = []
        for c in self.contribs:
            for symbol in c.expr.free_symbols:
                role, _ = meta.get(symbol, ("", None))
                if _is_adjoint(role) and role not in read:
                    read.append(role)
        if len(read) != 1:
            return []
        (own,) = read
        shape = tuple(self.work.graph.symbols.series_shape(_base_role(own)))
        kinds = sorted({a.kind for a in self.adjoints})
        prefix = "pre_adjoint_" if own.startswith("pre_adjoint_") else "adjoint_"
        out = []
        for other in kinds:
            if other == own or not other.startswith(prefix):
                continue
            if tuple(self.work.graph.symbols.series_shape(_base_role(other))) != shape:
                continue
            wrong, right = _label(notation, other), _label(notation, own)
            text = (
                f"the gradient of {self.name} is taken from {wrong}[t] where {right}[t] "
                f"belongs (another gate's adjoint)"
            )
            out.append(_Atom("other_gate", ("terms",), text, data=(own, other)))
        return out

    # -- values --------------------------------------------------------------------------
    def _mutated(self, atoms: Sequence[_Atom], step: int | None = None) -> list[Assignment]:
        """The adjoint assignments with the atoms' alterations (only ``step``'s, if given)."""
        out = []
        for a in self.adjoints:
            current = a
            for atom in atoms:
                alt = atom.alteration
                if alt is None or (atom.flavour == ONE and a.step != atom.step):
                    continue
                if step is not None and a.step != step:
                    continue
                new = alt.rewrite(current)
                if new is not None:
                    current = Assignment(a.target, new, a.kind, a.step, a.param)
            out.append(current)
        return out

    def _run(self, env: Mapping[Any, Any], assignments: Sequence[Assignment]) -> dict[Any, Any]:
        evaluator = _Eval(env, backend="float")
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            evaluator.run(assignments)
        return evaluator.env

    def _envs(self, atoms: Sequence[_Atom], points: Sequence[_Point]) -> list[Any] | None:
        """Per point: the environment with the altered adjoints (None: nothing changes).

        For the ``local`` flavour, a list of one environment per step instead.
        """
        if not any(atom.alteration for atom in atoms):
            return [p.env_f for p in points]
        local = any(atom.flavour == LOCAL for atom in atoms)
        if not local:
            mutated = self._mutated(atoms)
            if any(atom.alteration.reorders for atom in atoms if atom.alteration):
                ordered = _dependency_order(mutated)
                return [self._run(p.env_f, ordered) for p in points]
            first = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(mutated, self.adjoints, strict=True))
                    if a is not b
                ),
                None,
            )
            if first is None:
                return None
            return [self._run(p.env_f, mutated[first:]) for p in points]
        per_point = []
        for p in points:
            by_step = {}
            for step in self.work.graph.steps:
                mutated = self._mutated(atoms, step)
                changed = [
                    i
                    for i, (a, b) in enumerate(zip(mutated, self.adjoints, strict=True))
                    if a is not b
                ]
                if not changed:
                    by_step[step] = p.env_f
                    continue
                rest = [a for a in mutated[changed[0] :] if a.step == step]
                by_step[step] = self._run(p.env_f, rest)
            per_point.append(by_step)
        return per_point

    def _total(self, atoms: Sequence[_Atom]) -> Any:
        """The gradient's expression under the atoms' changes of its terms."""
        terms_atom = next((a for a in atoms if a.site == ("terms",)), None)
        if terms_atom is None:
            terms = [c.expr for c in self.contribs]
        elif terms_atom.name == "other_gate":
            own, other = terms_atom.data
            terms = self._generic_terms(0, swap=(own, other))
        elif terms_atom.data == "reflected":
            terms = self._reflected_terms()
        elif isinstance(terms_atom.data, tuple):
            role, offset = terms_atom.data
            terms = self._generic_terms(offset, role)
        else:
            terms = self._contributions(terms_atom.data)
        return mexpr.add(*terms) if terms else sp.ZeroMatrix(*self.checker.target.shape)

    def _values(self, atoms: Sequence[_Atom], points: Sequence[_Point]) -> list[Any] | None:
        envs = self._envs(atoms, points)
        if envs is None:
            return None
        transposed = any(a.name == "transpose" for a in atoms)
        if any(atom.flavour == LOCAL for atom in atoms if atom.alteration):
            values = []
            for by_step in envs:
                total = None
                for c in self.contribs:
                    part = _evaluate(c.expr, by_step[c.step], "float")
                    if part is None:
                        return None
                    total = part if total is None else total + part
                values.append(total)
        else:
            total_expr = self._total(atoms)
            if total_expr is None:
                return None
            values = [_evaluate(total_expr, env, "float") for env in envs]
        if transposed:
            values = [v.T if v is not None else v for v in values]
        return values

    def _contributions(self, knob: str) -> list[Any]:
        work = self.work
        if knob == "last_step_only":
            last = work.graph.steps[-1]
            return [c.expr for c in self.contribs if c.step == last]
        return self._generic_terms(1 if knob == "off_by_one_later" else -1)

    def _generic_terms(
        self, offset: int, only: str | None = None, swap: tuple[str, str] | None = None
    ) -> list[Any]:
        """The generic step's term at every step, its forward quantities shifted by ``offset``.

        With ``only``, just that quantity moves (``h`` in ``delta_g @ (r * h[t-1]).T``);
        with ``swap = (own, other)`` the adjoint ``other`` is read where ``own`` belongs.
        """
        work = self.work
        form = work.form
        if form is None:
            return self._concrete_terms(offset, only, swap)
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
                if _is_forward(work.notation, role) and (only is None or role == only):
                    k += offset
                if swap is not None and role == swap[0]:
                    role = swap[1]
                found = work.table.get((role, k))
                if found is None and role in initials and k == first - 1:
                    found = initials[role]
                mapping[symbol] = found if found is not None else sp.ZeroMatrix(*symbol.shape)
            out.append(contribution.expr.xreplace(mapping))
        return out

    def _concrete_terms(
        self,
        offset: int,
        only: str | None = None,
        swap: tuple[str, str] | None = None,
        reflect: bool = False,
    ) -> list[Any]:
        """:meth:`_generic_terms` from the concrete steps (a composed model, read flat).

        The term of the step that reads the most quantities is moved to every
        step (every symbol by the same number of steps; outside the model an
        initial state, else zero) with its forward quantities shifted by
        ``offset`` (only ``only``'s, if given), the adjoint ``swap[1]`` read
        for ``swap[0]``, or (``reflect``) a backward unit's steps taken the
        forward way: t + 1 for t - 1.
        """
        work = self.work
        meta = work.graph.symbols.meta
        if not self.contribs:
            return []
        template = max(self.contribs, key=lambda c: (len(c.expr.free_symbols), -c.step))
        steps = work.graph.steps if len(self.contribs) > 1 else (template.step,)
        out = []
        for step in steps:
            mapping: dict[Any, Any] = {}
            for symbol in template.expr.free_symbols:
                role, at = meta.get(symbol, ("", None))
                if not isinstance(at, int):
                    continue
                k = at + step - template.step
                if _is_forward(work.notation, role) and (only is None or role == only):
                    k += offset
                if reflect and direction(work.graph, _base_role(role)) < 0:
                    k = 2 * step - k
                if swap is not None and role == swap[0]:
                    role = swap[1]
                found = _shifted(work, role, k)
                mapping[symbol] = found if found is not None else sp.ZeroMatrix(*symbol.shape)
            out.append(template.expr.xreplace(mapping))
        return out

    def _reflected_terms(self) -> list[Any]:
        """The terms with a backward unit's steps taken the forward way: t + 1 <-> t - 1."""
        return self._concrete_terms(0, reflect=True)

    def _wrong_quantities(
        self, points: Sequence[_Point]
    ) -> list[tuple[tuple[_Atom, ...], list[Any]]]:
        """∂L/∂(something else): o_t, h_t, δ_t, and ∂L/∂ŷ_t, at every step."""
        work = self.work
        shape = tuple(self.checker.target.shape)
        shown_values: list[tuple[str, list[Any]]] = []
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
            shown_values.append((shown, values))
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
            shown_values.append((f"∂L/∂{label}[{step}]", values))
        out: list[tuple[tuple[_Atom, ...], list[Any]]] = []
        for shown, values in shown_values:
            text = (
                f"this is {shown} (the gradient with respect to another quantity), "
                f"not ∂L/∂{self.name}"
            )
            out.append(((_Atom("wrong_quantity", ("quantity",), text),), values))
        return out

    def mistakes(self, points: Sequence[_Point], allow_exact: bool = False) -> tuple[Mistake, ...]:
        """Every mutation the candidate matches with the fewest changes, most specific first.

        A variant matches when the candidate is a constant multiple of it at every
        screening point; its score is its number of mistakes, one more for a
        factor other than 1.  Level 0 is the correct gradient; level 1 one
        mistake (an alteration, a change of the gradient's terms, a transpose,
        another quantity's gradient); levels 2 and 3 combine alterations applied
        at every step with one change of the terms and a transpose, up to
        :data:`_COMBINATIONS` each.  Each variant is screened at the first point
        before it is evaluated at the others; one equal to a variant found
        before is skipped.
        """
        got = [self.value_at(p) for p in points]
        if any(g is None for g in got):
            return ()
        first = points[:1]
        correct_first = self._values((), first)
        assert correct_first is not None
        found: list[tuple[tuple[_Atom, ...], float]] = []
        seen: list[list[Any]] = []
        best: list[int] = []

        def consider(level: int, atoms: tuple[_Atom, ...], values: list[Any] | None) -> None:
            if values is None or any(_same(values, other) for other in seen):
                return
            factor = _common_factor(got, values)
            if factor is None:
                return
            seen.append(values)
            score = level + (0 if abs(factor - 1) < 1e-9 else 1)
            if score == 0 and not allow_exact:
                return
            if not best or score < best[0]:
                best[:] = [score]
                found.clear()
            if score == best[0]:
                found.append((atoms, factor))

        def screened(atoms: tuple[_Atom, ...]) -> list[Any] | None:
            """The values at every point, if the first point does not rule the variant out."""
            head = self._values(atoms, first)
            if head is None or _common_factor(got[:1], head) is None:
                return None
            return self._values(atoms, points)

        consider(0, (), self._values((), points))
        square = self.checker.target.shape[0] == self.checker.target.shape[1]
        final = [_Atom("transpose", ("final",), _KnobText.TRANSPOSE)] if square else []
        singles: list[_Atom] = []
        heads: list[Any] = []
        for atom in [*self._adjoint_atoms(), *self._term_atoms(), *final]:
            head = self._values((atom,), first)
            if head is None or _same(head, correct_first):
                continue  # changes nothing this gradient reads
            if atom.flavour == EVERY:
                singles.append(atom)
                heads.append(head[0])
            if _common_factor(got[:1], head) is not None:
                consider(1, (atom,), self._values((atom,), points))
        for atoms, values in self._wrong_quantities(points):
            consider(1, atoms, values)
        for level in (2, 3):
            if best and best[0] <= level:
                break
            tried = 0
            for combo in _ranked_combinations(singles, heads, correct_first[0], got[0], level):
                if len({a.site for a in combo}) < level:
                    continue
                if tried >= _COMBINATIONS[level]:
                    break
                tried += 1
                consider(level, combo, screened(combo))
        found.sort(key=lambda item: min((_rank(a) for a in item[0]), default=3))
        self.found = [atoms for atoms, _ in found]
        out: list[Mistake] = []
        for atoms, factor in found:
            for mistake in self._describe(atoms, factor):
                if mistake not in out:
                    out.append(mistake)
        return tuple(out)

    # -- descriptions ------------------------------------------------------------------
    def _describe(self, atoms: tuple[_Atom, ...], factor: float) -> tuple[Mistake, ...]:
        out: list[Mistake] = []
        for atom in atoms:
            text = atom.text
            steps: tuple[int, ...] | None = None
            if atom.flavour == LOCAL:
                text += " (in the formula the gradient reads; the recursion behind it is right)"
            elif atom.flavour == ONE and atom.step is not None:
                text += f" (at step {atom.step} only)"
                steps = (atom.step,)
            out.append(Mistake(atom.name, text, atom.place, steps))
        if abs(factor - 1) > 1e-9:
            out.append(self._factor_mistake(factor))
        return tuple(out)

    def _factor_mistake(self, factor: float) -> Mistake:
        return _factor_mistake(self.work, factor)

    # -- which state's carry ---------------------------------------------------------------
    def _carries(self) -> dict[str, Assignment]:
        """Each state's adjoint kind that carries a term back -> its first such assignment."""
        work = self.work
        states = set(_state_initials(work.graph))
        out: dict[str, Assignment] = {}
        for a in self.adjoints:
            if not a.kind.startswith("adjoint_") or _base_role(a.kind) not in states:
                continue
            if a.kind not in out and any(
                _later_adjoints(work, t, a.step, a.kind) for t in _terms(a.expr)
            ):
                out[a.kind] = a
        return out

    def _carry_changed(self, alt: Alteration) -> tuple[str, bool, str] | None:
        """(the adjoint kind whose carried terms ``alt`` changes, whether it drops them, which).

        None when it changes anything else.  The assignment it changes most
        terms of decides (a boundary step may have fewer).
        """
        best: tuple[int, Assignment, list[Any]] | None = None
        for a in self.adjoints:
            new = alt.rewrite(a)
            if new is None:
                continue
            new_terms = set(_terms(new))
            removed = [t for t in _terms(a.expr) if t not in new_terms]
            if removed and (best is None or len(removed) > best[0]):
                best = (len(removed), a, removed)
        if best is None:
            return None
        _, a, removed = best
        if not all(_later_adjoints(self.work, t, a.step, a.kind) for t in removed):
            return None
        printer = _Printer(
            _relative_naming(self.work.graph.symbols.meta, self.work.notation, a.step)
        )
        shown = " + ".join(printer(t) for t in removed)
        return a.kind, alt.name == "dropped_carry", shown

    def carry_note(self) -> list[str]:
        """Which state's carry is wrong and which is right, as the matching variants say.

        Said only when every variant that reproduces the candidate changes the
        same states' carries (and nothing is said of a state none of them
        changes unless there is one): "the carry of c (dc[t+1] * f[t+1]) is
        missing; h's is right".
        """
        carries = self._carries()
        if not carries or not self.found:
            return []
        verdicts = []
        for atoms in self.found:
            changed: dict[str, tuple[bool, str]] = {}
            for atom in atoms:
                if atom.alteration is None:
                    continue
                hit = self._carry_changed(atom.alteration)
                if hit is not None and hit[0] in carries:
                    changed.setdefault(hit[0], (hit[1], hit[2]))
            verdicts.append(changed)
        if any(v.keys() != verdicts[0].keys() for v in verdicts) or not verdicts[0]:
            return []
        changed = verdicts[0]
        notation = self.work.notation
        parts = []
        for kind in carries:
            if kind not in changed:
                continue
            label = notation.name_of(_base_role(kind)).ascii
            state = "missing" if all(v[kind][0] for v in verdicts) else "wrong"
            parts.append(f"the carry of {label} ({changed[kind][1]}) is {state}")
        right = [
            f"{notation.name_of(_base_role(kind)).ascii}'s"
            for kind in carries
            if kind not in changed
        ]
        text = "; ".join(parts)
        if right:
            text += f"; {', '.join(right)} {'is' if len(right) == 1 else 'are'} right"
        return [f"carry: {text}"]

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
    """Descriptions of the changes of a gradient's terms, in the notation's own names."""

    TRANSPOSE = "transposed: the candidate is the transpose of the gradient"

    def __init__(self, work: _Work, orig: Derivation, name: str) -> None:
        self.work = work
        self.orig = orig
        self.name = name

    def describe(self, knob: str) -> str:
        if knob in ("off_by_one_later", "off_by_one_earlier"):
            offset = 1 if knob == "off_by_one_later" else -1
            wrong, right = self._contribution_text(offset), self._contribution_text(0)
            if wrong and right:
                return f"off-by-one step: {wrong} where {right} belongs"
            later = "later" if offset > 0 else "earlier"
            return f"off-by-one step: the forward quantities are taken one step {later}"
        if knob == "last_step_only":
            return "only the last step's term: the sum over t is missing"
        return knob

    def describe_role(self, role: str, offset: int) -> str:
        """Only ``role`` one step off in the gradient's term."""
        wrong, right = self._contribution_text(offset, role), self._contribution_text(0)
        label = _label(self.work.notation, role)
        later = "later" if offset > 0 else "earlier"
        if wrong and right:
            return f"off-by-one step: {wrong} where {right} belongs ({label} one step {later})"
        return f"off-by-one step: {label} is taken one step {later}"

    def _contribution_text(self, offset: int, only: str | None = None) -> str:
        """The generic step's term of the gradient, the quantities it reads moved by ``offset``.

        Only the forward quantities the contribution itself reads move (h[t-1] in
        δ_t h_{t-1}^T), as in the mutation :meth:`_Diagnosis._generic_terms`
        compares with; the adjoints written out into it do not.
        """
        if self.orig.spec.composed:
            return self._concrete_text(offset, only)
        form = self.orig.step_form
        contribution = _contribution_of(form.backward, self.name)
        if contribution is None:
            return ""
        notation = self.orig.graph.notation
        meta = form.symbols.meta
        moved: dict[Any, Any] = {}
        for symbol in contribution.expr.free_symbols:
            role, step = meta.get(symbol, ("", None))
            if (
                _is_forward(notation, role)
                and isinstance(step, sp.Basic)
                and (only is None or role == only)
            ):
                moved[symbol] = form.symbols.series(role, step + offset)
        defs = _inline(form.backward, _kept(self.orig))
        written_out = {
            a.target: defs[a.target]
            for a in form.backward
            if _is_adjoint(a.kind) and a.kind not in _kept(self.orig)
        }
        expr = contribution.expr.xreplace(moved).xreplace(written_out)
        return _Printer(_naming(form.symbols, notation))(expr)

    def describe_reflected(self) -> str:
        """A backward unit's steps taken the forward way in the gradient's term."""
        wrong, right = self._concrete_text(0, reflect=True), self._concrete_text(0)
        lead = "off-by-one step in the wrong direction: a backward direction runs t = T..1"
        if wrong and right:
            return f"{lead}, its previous state is at t+1: {wrong} where {right} belongs"
        return f"{lead}: its previous step is t+1, not t-1"

    def _concrete_text(self, offset: int, only: str | None = None, reflect: bool = False) -> str:
        """:meth:`_contribution_text` from a middle step of the concrete derivation."""
        work = self.work
        graph = work.graph
        meta = graph.symbols.meta
        steps = graph.steps
        contributions = [c for c in work.d.contributions if c.param == self.name]
        if not contributions:
            return ""
        middle = steps[len(steps) // 2]
        contribution = next((c for c in contributions if c.step == middle), contributions[-1])
        step = contribution.step
        moved: dict[Any, Any] = {}
        for symbol in contribution.expr.free_symbols:
            role, at = meta.get(symbol, ("", None))
            if not isinstance(at, int) or not _is_forward(graph.notation, role):
                continue
            k = at + offset if only is None or role == only else at
            if reflect and direction(graph, role) < 0:
                k = 2 * step - at
            if k == at:
                continue
            found = work.table.get((role, k))
            if found is None:
                return ""
            moved[symbol] = found
        kept = _kept(work.d)
        defs = _inline(work.d.adjoints, kept)
        written_out = {a.target: defs[a.target] for a in work.d.adjoints if a.kind not in kept}
        expr = contribution.expr.xreplace(moved).xreplace(written_out)
        return _Printer(_relative_naming(meta, graph.notation, step))(expr)


def _forward_roles_of(work: _Work, contribs: Sequence[Assignment]) -> list[str]:
    """The forward quantities the concrete terms of a gradient read."""
    meta = work.graph.symbols.meta
    roles: list[str] = []
    for c in contribs:
        for symbol in sorted(c.expr.free_symbols, key=str):
            role, at = meta.get(symbol, ("", None))
            if isinstance(at, int) and _is_forward(work.notation, role) and role not in roles:
                roles.append(role)
    return roles


#: How many of the best pairs are extended by a third mutation when ranking triples.
_PAIRS_EXTENDED = 60


def _ranked_combinations(
    singles: Sequence[_Atom], heads: Sequence[Any], correct: Any, got: Any, level: int
) -> list[tuple[_Atom, ...]]:
    """Combinations of ``level`` single mutations, the likeliest first.

    Each mutation's change of the gradient at the first point is ``head -
    correct``; a combination's change is taken as the sum of its parts', and
    the combinations are tried in the order of how far that sum is from the
    candidate's change.  This only orders the search: a combination is
    reported when its own values match.  Pairs are ranked among all pairs;
    triples extend the best :data:`_PAIRS_EXTENDED` pairs by a third.
    """
    count = len(singles)
    if count < level:
        return []
    try:
        changes = np.stack([np.asarray(h - correct, dtype=float).ravel() for h in heads])
        target = np.asarray(got - correct, dtype=float).ravel()
    except ValueError:  # a transposed head of another shape: keep the plain order
        return list(itertools.combinations(singles, level))
    with np.errstate(all="ignore"):
        pair = changes[:, None, :] + changes[None, :, :] - target
        pair_cost = np.nan_to_num(np.linalg.norm(pair, axis=2), nan=np.inf, posinf=np.inf)
    upper = [(i, j) for i in range(count) for j in range(i + 1, count)]
    upper.sort(key=lambda ij: (pair_cost[ij], ij))
    if level == 2:
        return [(singles[i], singles[j]) for i, j in upper]
    seen: set[tuple[int, ...]] = set()
    triples: list[tuple[float, tuple[int, ...]]] = []
    for i, j in upper[:_PAIRS_EXTENDED]:
        with np.errstate(all="ignore"):
            rest = changes + (changes[i] + changes[j] - target)
            costs = np.nan_to_num(np.linalg.norm(rest, axis=1), nan=np.inf, posinf=np.inf)
        for k in range(count):
            key = tuple(sorted((i, j, k)))
            if k in (i, j) or key in seen:
                continue
            seen.add(key)
            triples.append((float(costs[k]), key))
    triples.sort()
    return [tuple(singles[n] for n in key) for _, key in triples]


def _dependency_order(assignments: Sequence[Assignment]) -> list[Assignment]:
    """``assignments`` in an order where each comes after those whose targets it reads.

    Stable (the first ready in the given order goes first); a recursion that a
    mutation runs the other way (a backward unit's, from t = T down) is computed
    in its own order.  Left as given if it has a cycle.
    """
    index = {a.target: i for i, a in enumerate(assignments)}
    needs = [
        {index[s] for s in a.expr.free_symbols if s in index and index[s] != i}
        for i, a in enumerate(assignments)
    ]
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(needs):
        for j in deps:
            users.setdefault(j, []).append(i)
    waiting = [len(deps) for deps in needs]
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in users.get(i, []):
            waiting[k] -= 1
            if waiting[k] == 0:
                heapq.heappush(ready, k)
    if len(order) != len(assignments):
        return list(assignments)
    return [assignments[i] for i in order]


def _same(values: Sequence[Any], others: Sequence[Any]) -> bool:
    """The same values at every point (None only where both are None)."""
    for v, o in zip(values, others, strict=True):
        if v is None or o is None:
            if v is not o:
                return False
            continue
        if v.shape != o.shape:
            return False
        scale = max(1.0, float(np.max(np.abs(o))) if o.size else 1.0)
        if float(np.max(np.abs(v - o))) > 1e-10 * scale if v.size else False:
            return False
    return True


def _rank(atom: _Atom) -> int:
    """Most specific first: one step, each step's formula, every step, then the rest."""
    return _SPECIFIC.get(atom.flavour, 2) if atom.alteration is not None else 2


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
