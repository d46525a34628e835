"""Mutations of the derivation's own rules: the mistakes people make, for any cell.

Each :class:`Alteration` changes one rule of the derivation at one *site*, read
from the concrete derivation's adjoint assignments and the forward equations,
never from a cell's name or role tags:

* ``dropped_carry``: an adjoint without what the next step sends back (all of
  it, or one term: an LSTM's ``dc[t]`` without ``dc[t+1] * f[t+1]``, its
  ``dh[t]`` without ``W_hf.T @ delta_f[t+1]``; Elman's ``dh[t]`` without
  ``W_hh.T @ delta[t+1]``);
* ``no_derivative``, ``derivative_at_pre_activation``,
  ``derivative_of_output``, ``activation_for_derivative``: one activation's
  local derivative left out, taken at its argument (``1 - z[t]**2``), applied
  to its output (``1 - tanh(h[t])**2``) where ``1 - h[t]**2`` belongs, or the
  activation itself in its place (``sigmoid(f[t])`` for ``f[t] * (1 - f[t])``);
* ``missing_activation``: an activation inside an equation (``tanh(c[t])`` in
  ``h[t] = o[t] * tanh(c[t])``) left out of the whole backward pass: its
  argument where it belongs and its derivative missing;
* ``transposed_weight``: a square weight transposed (or not) in one adjoint;
* ``off_by_one``: a forward quantity one step off in one adjoint
  (``dc[t+1] * f[t]``);
* ``swapped_factor``: one gate's Jacobian factor swapped: another site's
  derivative of the same activation (``(1 - f[t]) * f[t]`` in ``delta_i[t]``),
  another gate's quantity as a factor (``dc[t] * f[t]`` in ``di[t]``), or an
  activation's argument for the activation (``dh[t] * c[t]`` in ``do[t]``);
* ``dropped_target``, ``softmax_diagonal``: the output error of softmax +
  cross-entropy.

An alteration is applied to the concrete assignments in one of three ways
(:data:`FLAVOURS`): at every step, carried through the recursion
(``"every step"``); in each step's formula with the true adjoints of the next
step (``"each step, the recursion right"``: a hand formula that reads the true
``delta[t+1]`` but has one wrong local factor); or at a single step ``s``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from ..core.graph import Assignment
from ..expr import functions, mexpr
from .flat import direction, unit_of
from .language import _base_role, _is_adjoint, _label
from .namespace import _state_initials
from .printer import _Printer, _relative_naming
from .work import _Work

#: How an alteration is applied: at every step (carried), in each step's formula only, at one step.
EVERY, LOCAL, ONE = "every", "local", "one"


@dataclass(frozen=True, eq=False)
class Alteration:
    """One mutation of a rule at one site of the derivation.

    ``rewrite`` gives an assignment's mutated right-hand side, or None where
    the alteration does not touch it.  Alterations with the same ``site`` are
    alternatives (never combined).
    """

    name: str
    site: tuple[Any, ...]
    place: str  # the adjoint it changes, in the language: dc[t]
    text: str  # what is wrong, in the notation's names
    rewrite: Callable[[Assignment], Any | None]
    #: the mutated adjoints must be computed in a new order (a recursion run the other way)
    reorders: bool = False


def _terms(expr: Any) -> tuple[Any, ...]:
    return tuple(expr.args) if isinstance(expr, sp.MatAdd) else (expr,)


def _relative_printer(work: _Work, step: int) -> _Printer:
    """Concrete symbols printed relative to ``step``: ``dc_3`` at step 2 is ``dc[t+1]``."""
    return _Printer(_relative_naming(work.graph.symbols.meta, work.notation, step))


def _place(work: _Work, a: Assignment) -> str:
    return _relative_printer(work, a.step)(a.target)


def _later_adjoints(work: _Work, expr: Any, step: int, kind: str = "") -> frozenset[str]:
    """The adjoint roles ``expr`` (in the adjoint ``kind``) reads from what is carried back.

    An adjoint of a later step in the direction of ``kind``'s unit (step t + 1;
    t - 1 in a backward unit), or of the same step from another unit (the
    layer above, in a stacked model).
    """
    graph = work.graph
    meta = graph.symbols.meta
    way = direction(graph, _base_role(kind)) if kind else 1
    mine = unit_of(graph, _base_role(kind)) if kind else None
    out = set()
    for symbol in expr.free_symbols:
        role, at = meta.get(symbol, ("", None))
        if not _is_adjoint(role) or not isinstance(at, int):
            continue
        theirs = unit_of(graph, _base_role(role))
        if (at - step) * way > 0 or (
            at == step and mine is not None and theirs is not None and theirs != mine
        ):
            out.add(role)
    return frozenset(out)


def _unit(work: _Work, kind: str) -> Any:
    """The unit of an adjoint kind (None in a plain model)."""
    return unit_of(work.graph, _base_role(kind))


def _from_above(work: _Work, kind: str, roles: frozenset[str]) -> str | None:
    """How the unit that sends ``roles`` back is called, when they all come from another unit."""
    graph = work.graph
    mine = unit_of(graph, _base_role(kind))
    units = {unit_of(graph, _base_role(role)) for role in roles}
    if mine is None or None in units or mine in units:
        return None
    layers = sorted({unit.layer for unit in units if unit is not None})
    return f"layer {', '.join(map(str, layers))}"


def _by_kind(work: _Work) -> dict[str, list[Assignment]]:
    out: dict[str, list[Assignment]] = {}
    for a in work.d.adjoints:
        out.setdefault(a.kind, []).append(a)
    return out


# ------------------------------------------------------------------------------- carry
def _carries(work: _Work) -> list[Alteration]:
    out: list[Alteration] = []
    for kind, assignments in _by_kind(work).items():
        keys: list[frozenset[str]] = []
        example: dict[frozenset[str], tuple[Assignment, Any]] = {}
        for a in assignments:
            for term in _terms(a.expr):
                key = _later_adjoints(work, term, a.step, kind)
                if key and key not in keys:
                    keys.append(key)
                    example[key] = (a, term)
        if not keys:
            continue
        choices = [frozenset().union(*keys)] + (keys if len(keys) > 1 else [])
        for chosen in choices:
            a0 = min((example[k][0] for k in keys), key=lambda a: a.step)
            printer = _relative_printer(work, a0.step)
            carried = [(t, _later_adjoints(work, t, a0.step, kind)) for t in _terms(a0.expr)]
            dropped = [t for t, roles in carried if roles and roles <= chosen]
            shown = " + ".join(printer(t) for t in dropped) if dropped else "the carried terms"
            whole = chosen == choices[0]
            state = work.notation.name_of(_base_role(kind)).description or _base_role(kind)
            above = _from_above(work, kind, chosen)
            lead = f"the carry of the {state} is missing" if whole else "a carried term is missing"
            if above is not None:
                lead = f"what {above} above sends back is missing"
            text = f"{lead}: {printer(a0.target)} lacks {shown}"

            def rewrite(
                a: Assignment, chosen: frozenset[str] = chosen, kind: str = kind
            ) -> Any | None:
                if _unit(work, a.kind) != _unit(work, kind):
                    return None  # the unit whose adjoint the text names
                terms = _terms(a.expr)
                kept = [t for t in terms if not (_later_adjoints(work, t, a.step, a.kind) & chosen)]
                if len(kept) == len(terms):
                    return None
                return mexpr.add(*kept) if kept else sp.ZeroMatrix(*a.target.shape)

            out.append(
                Alteration("dropped_carry", ("carry", kind), _place(work, a0), text, rewrite)
            )
    return out


# ------------------------------------------------------------------------- derivatives
def _elementwise_nodes(work: _Work) -> list[tuple[tuple[str, int], int, Any, Any]]:
    """``((role, position), step, out, node)`` for every activation applied in the forward pass."""
    meta = work.graph.symbols.meta
    found = []
    for a in work.forward:
        role, step = meta.get(a.target, ("", None))
        if not isinstance(step, int):
            continue
        position = 0
        stack = [a.expr]
        while stack:
            node = stack.pop()
            if isinstance(node, ElementwiseApplyFunction):
                (var,) = node.function.variables
                if node.function.expr != var:
                    out = a.target if node is a.expr else node
                    found.append(((role, position), step, out, node))
                    position += 1
            if isinstance(node, sp.Basic):
                stack.extend(reversed(node.args))
    return found


def _derivatives(work: _Work) -> list[Alteration]:
    out: list[Alteration] = []
    sites: dict[tuple[str, int], list[tuple[int, Any, Any]]] = {}
    for key, step, node_out, node in _elementwise_nodes(work):
        sites.setdefault(key, []).append((step, node_out, node))
    adjoints = list(work.d.adjoints)
    for key, nodes in sites.items():
        activation = functions.activation_for(nodes[0][2].function)
        derivative, form = activation.derivative
        raw = activation.raw_derivative
        variants: dict[str, dict[Any, Any]] = {
            "no_derivative": {},
            "derivative_at_pre_activation": {},
            "derivative_of_output": {},
            "activation_for_derivative": {},
            "missing_activation": {},
        }
        correct: dict[Any, Any] = {}
        for _, node_out, node in nodes:
            arg = node.expr
            right = activation.derivative_of(node_out, arg)
            correct[right] = node_out
            variants["no_derivative"][right] = sp.OneMatrix(*arg.shape)
            if node_out is node:  # inside an equation (tanh(c[t]) in h[t] = o[t] * tanh(c[t]))
                variants["missing_activation"][right] = sp.OneMatrix(*arg.shape)
                variants["missing_activation"][node] = arg
            if form == "output" and functions.a in derivative.free_symbols:
                wrong = functions.lift(derivative, {functions.a: arg, functions.z: arg}, arg.shape)
                variants["derivative_at_pre_activation"][right] = wrong
            if functions.z in raw.free_symbols:
                wrong = functions.lift(raw, {functions.z: node_out}, arg.shape)
                variants["derivative_of_output"][right] = wrong
            variants["activation_for_derivative"][right] = functions.Apply(
                activation.function, node_out
            )
        holder = next((a for a in adjoints if any(a.expr.has(d) for d in correct)), None)
        if holder is None:
            continue
        right = next(d for d in correct if holder.expr.has(d))
        out += _other_derivatives(work, key, nodes, sites, holder, right)
        printer = _relative_printer(work, holder.step)
        place = printer(holder.target)
        of = printer(correct[right])
        for name, mapping in variants.items():
            if not mapping:
                continue
            if name == "no_derivative":
                text = (
                    f"the derivative {printer(right)} of {activation.name} is missing from {place}"
                )
            elif name == "derivative_at_pre_activation":
                text = (
                    f"the derivative of {activation.name} is taken at its argument in {place}: "
                    f"{printer(mapping[right])} where {printer(right)} belongs"
                )
            elif name == "missing_activation":
                text = (
                    f"the backward pass of a cell without {printer(correct[right])}: "
                    f"{printer(correct[right].expr)} where {printer(correct[right])} belongs "
                    f"and its derivative {printer(right)} missing from {place}"
                )
            elif name == "activation_for_derivative":
                text = (
                    f"{activation.name} itself where its derivative belongs in {place}: "
                    f"{printer(mapping[right])} where {printer(right)} belongs"
                )
            else:
                text = (
                    f"the derivative of {activation.name} is applied to its output in {place}: "
                    f"{printer(mapping[right])} where {printer(right)} belongs ({of} is already "
                    f"{activation.name}'s output)"
                )

            out.append(Alteration(name, ("derivative", key), place, text, _replacing(mapping)))
    return out


def _replacing(mapping: dict[Any, Any]) -> Callable[[Assignment], Any | None]:
    """A rewrite that puts ``mapping``'s values for its keys in every assignment that has one."""

    def rewrite(a: Assignment) -> Any | None:
        if not any(a.expr.has(d) for d in mapping):
            return None
        return a.expr.xreplace(mapping)

    return rewrite


# ----------------------------------------------------------------- swapped factors
def _other_derivatives(
    work: _Work,
    key: tuple[str, int],
    nodes: list[tuple[int, Any, Any]],
    sites: dict[tuple[str, int], list[tuple[int, Any, Any]]],
    holder: Assignment,
    right: Any,
) -> list[Alteration]:
    """``swapped_factor``: the same activation's derivative at another site of the same step.

    ``(1 - f[t]) * f[t]`` in ``delta_i[t]`` where ``(1 - i[t]) * i[t]`` belongs (an
    LSTM's forget gate's sigmoid derivative used for the input gate).
    """
    activation = functions.activation_for(nodes[0][2].function)
    printer = _relative_printer(work, holder.step)
    out = []
    for other, others in sites.items():
        if other == key:
            continue
        if functions.activation_for(others[0][2].function) is not activation:
            continue
        at = {step: (o, n) for step, o, n in others}
        mapping = {}
        for step, node_out, node in nodes:
            if step not in at or tuple(at[step][1].shape) != tuple(node.shape):
                continue
            mine = activation.derivative_of(node_out, node.expr)
            theirs = activation.derivative_of(at[step][0], at[step][1].expr)
            mapping[mine] = theirs
        if right not in mapping:
            continue
        place = printer(holder.target)
        text = (
            f"another gate's Jacobian factor in {place}: {printer(mapping[right])} "
            f"where {printer(right)} belongs (the derivative of {activation.name} at "
            f"{printer(at[holder.step][0]) if holder.step in at else 'another quantity'})"
        )
        out.append(
            Alteration("swapped_factor", ("derivative", key), place, text, _replacing(mapping))
        )
    return out


def _factors(expr: Any, skip: frozenset[Any] = frozenset()) -> list[tuple[Any, Any]]:
    """``(product, factor)`` for every factor of every elementwise product in ``expr``.

    Nothing inside ``skip`` (the activations' derivatives) is looked into.
    """
    out: list[tuple[Any, Any]] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        if node in skip:
            continue
        if isinstance(node, sp.HadamardProduct):
            out.extend((node, arg) for arg in node.args)
        if isinstance(node, sp.Basic):
            stack.extend(node.args)
    return out


def _gate_quantities(work: _Work) -> dict[tuple[str, int], Any]:
    """(role, step) -> symbol of every forward quantity computed by an activation (a gate)."""
    meta = work.graph.symbols.meta
    out = {}
    for a in work.forward:
        role, step = meta.get(a.target, ("", None))
        if (
            isinstance(step, int)
            and isinstance(a.expr, ElementwiseApplyFunction)
            and _label(work.notation, role) is not None
            and role != "output"
        ):
            out[(role, step)] = a.target
    return out


def _swapped_factors(work: _Work) -> list[Alteration]:
    """``swapped_factor``: one factor of an adjoint's elementwise product replaced.

    By another gate's quantity at the same step (``dc[t] * f[t]`` where ``dc[t] *
    g[t]`` belongs in ``di[t]``), or, where the factor is an activation of a
    quantity, by the quantity itself (``dh[t] * c[t]`` where ``dh[t] * tanh(c[t])``
    belongs in ``do[t]``).
    """
    meta = work.graph.symbols.meta
    gates = _gate_quantities(work)
    roles = sorted({role for role, _ in gates})
    skip = _derivative_nodes(work)
    out: list[Alteration] = []
    for kind, assignments in _by_kind(work).items():
        seen: set[tuple[str, ...]] = set()
        for a in assignments:
            for _, factor in _factors(a.expr, skip):
                role, step = meta.get(factor, ("", None))
                if (role, step) in gates:
                    for other in roles:
                        if other == role or (other, step) not in gates:
                            continue
                        if gates[(other, step)].shape != factor.shape:
                            continue
                        gate_site: tuple[str, ...] = ("gate", role, other)
                        if gate_site in seen:
                            continue
                        seen.add(gate_site)
                        out.append(_swap_gate(work, kind, a, role, other, gates, skip))
                elif isinstance(factor, ElementwiseApplyFunction):
                    (var,) = factor.function.variables
                    if factor.function.expr == var:
                        continue
                    shown = _relative_printer(work, a.step)(factor)
                    activation_site: tuple[str, ...] = ("activation", shown)
                    if activation_site in seen:
                        continue
                    seen.add(activation_site)
                    out.append(_drop_activation(work, kind, a, factor, skip))
    return out


def _derivative_nodes(work: _Work) -> frozenset[Any]:
    """Every activation's derivative as it appears in the adjoints (``(1 - f[t]) * f[t]``)."""
    out = set()
    for _, _, node_out, node in _elementwise_nodes(work):
        activation = functions.activation_for(node.function)
        out.add(activation.derivative_of(node_out, node.expr))
    return frozenset(out)


def _swap_gate(
    work: _Work,
    kind: str,
    a0: Assignment,
    role: str,
    other: str,
    gates: dict[Any, Any],
    skip: frozenset[Any],
) -> Alteration:
    meta = work.graph.symbols.meta

    def mapping_of(a: Assignment) -> dict[Any, Any]:
        mapping: dict[Any, Any] = {}
        for product, factor in _factors(a.expr, skip):
            r, step = meta.get(factor, ("", None))
            if r == role and (other, step) in gates:
                args = [gates[(other, step)] if arg is factor else arg for arg in product.args]
                mapping[product] = sp.HadamardProduct(*args)
        return mapping

    def rewrite(a: Assignment) -> Any | None:
        if a.kind != kind:
            return None
        mapping = mapping_of(a)
        return a.expr.xreplace(mapping) if mapping else None

    printer = _relative_printer(work, a0.step)
    mapping = mapping_of(a0)
    right = next(iter(mapping))
    text = (
        f"another gate's Jacobian factor in {printer(a0.target)}: {printer(mapping[right])} "
        f"where {printer(right)} belongs"
    )
    site = ("factor", kind, role)
    return Alteration("swapped_factor", site, printer(a0.target), text, rewrite)


def _drop_activation(
    work: _Work, kind: str, a0: Assignment, factor0: Any, skip: frozenset[Any]
) -> Alteration:
    printer0 = _relative_printer(work, a0.step)
    shown = printer0(factor0)

    def mapping_of(a: Assignment) -> dict[Any, Any]:
        printer = _relative_printer(work, a.step)
        mapping: dict[Any, Any] = {}
        for product, factor in _factors(a.expr, skip):
            if isinstance(factor, ElementwiseApplyFunction) and printer(factor) == shown:
                args = [factor.expr if arg is factor else arg for arg in product.args]
                mapping[product] = sp.HadamardProduct(*args)
        return mapping

    def rewrite(a: Assignment) -> Any | None:
        if a.kind != kind:
            return None
        mapping = mapping_of(a)
        return a.expr.xreplace(mapping) if mapping else None

    mapping = mapping_of(a0)
    right = next(iter(mapping))
    name = functions.activation_for(factor0.function).name
    text = (
        f"a Jacobian factor without its {name} in {printer0(a0.target)}: "
        f"{printer0(mapping[right])} where {printer0(right)} belongs"
    )
    site = ("factor", kind, shown)
    return Alteration("swapped_factor", site, printer0(a0.target), text, rewrite)


# ----------------------------------------------------------------------------- weights
def _weights(work: _Work) -> list[Alteration]:
    out: list[Alteration] = []
    params = work.graph.params
    square = {s for s in params.values() if s.shape[0] == s.shape[1]}
    for kind, assignments in _by_kind(work).items():
        for w in sorted(square, key=lambda s: s.name):
            holder = next((a for a in assignments if w in a.expr.free_symbols), None)
            if holder is None:
                continue
            mapping = {sp.Transpose(w): w, w: sp.Transpose(w)}
            printer = _relative_printer(work, holder.step)
            terms = [t for t in _terms(holder.expr) if w in t.free_symbols]
            wrong = " + ".join(printer(t.xreplace(mapping)) for t in terms)
            right = " + ".join(printer(t) for t in terms)
            text = f"{wrong} where {right} belongs (in {printer(holder.target)})"

            def rewrite(
                a: Assignment, w: Any = w, mapping: dict[Any, Any] = mapping, kind: str = kind
            ) -> Any | None:
                if a.kind != kind or w not in a.expr.free_symbols:
                    return None  # one adjoint: the one the text names
                return a.expr.xreplace(mapping)

            place = printer(holder.target)
            out.append(Alteration("transposed_weight", ("weight", kind, w), place, text, rewrite))
    return out


# ------------------------------------------------------------------------------- steps
def _shifted(work: _Work, role: str, step: int) -> Any:
    found = work.table.get((role, step))
    if found is not None:
        return found
    initials = _state_initials(work.graph)
    graph = work.graph
    before = graph.steps[0] - 1 if direction(graph, role) > 0 else graph.steps[-1] + 1
    if role in initials and step == before:
        return initials[role]
    return None


def _steps(work: _Work) -> list[Alteration]:
    """A forward quantity one step off in one adjoint (``dc[t+1] * f[t]``)."""
    out: list[Alteration] = []
    meta = work.graph.symbols.meta
    for kind, assignments in _by_kind(work).items():
        roles: list[str] = []
        for a in assignments:
            for symbol in sorted(a.expr.free_symbols, key=str):
                role, at = meta.get(symbol, ("", None))
                if (
                    isinstance(at, int)
                    and not _is_adjoint(role)
                    and _label(work.notation, role) is not None
                    and role not in roles
                    and role not in ("target", "mask")
                ):
                    roles.append(role)
        for role in roles:
            for offset in (1, -1):

                def mapping_of(
                    a: Assignment, role: str = role, offset: int = offset
                ) -> dict[Any, Any]:
                    mapping = {}
                    for symbol in a.expr.free_symbols:
                        r, at = meta.get(symbol, ("", None))
                        if r == role and isinstance(at, int):
                            moved = _shifted(work, role, at + offset)
                            mapping[symbol] = (
                                moved if moved is not None else sp.ZeroMatrix(*symbol.shape)
                            )
                    return mapping

                def rewrite(
                    a: Assignment, mapping_of: Any = mapping_of, kind: str = kind
                ) -> Any | None:
                    if a.kind != kind:
                        return None  # one adjoint: the one the text names
                    mapping = mapping_of(a)
                    return mexpr.substitute(a.expr, mapping) if mapping else None

                held = [a for a in assignments if mapping_of(a)]
                inside = [
                    a
                    for a in held
                    if not any(isinstance(v, sp.ZeroMatrix) for v in mapping_of(a).values())
                ]
                holder = (inside or held)[0]
                printer = _relative_printer(work, holder.step)
                right = printer(holder.expr)
                wrong = printer(mexpr.substitute(holder.expr, mapping_of(holder)))
                label = _label(work.notation, role)
                text = (
                    f"{label} one step {'later' if offset > 0 else 'earlier'} in "
                    f"{printer(holder.target)}: {wrong} where {right} belongs"
                )
                place = printer(holder.target)
                out.append(Alteration("off_by_one", ("shift", kind, role), place, text, rewrite))
    return out


# ------------------------------------------------------------------------------ output
def _output(work: _Work) -> list[Alteration]:
    spec = work.spec
    if not (spec.output == "softmax" and spec.loss == "cross_entropy"):
        return []
    notation = work.notation
    pred_name = notation.name_of("output").ascii
    target_name = notation.name_of("target").ascii
    out = []
    for name in ("dropped_target", "softmax_diagonal"):

        def rewrite(a: Assignment, name: str = name) -> Any | None:
            if a.kind != "adjoint_output_pre_activation":
                return None
            target = work.table[("target", a.step)]
            pred = work.table[("output", a.step)]
            coeff, _ = mexpr.split_scale(a.expr)
            ones = sp.OneMatrix(*target.shape)
            wrong = sp.MatAdd(pred, sp.MatMul(-1, ones))
            if name == "softmax_diagonal":
                wrong = sp.HadamardProduct(target, wrong)
            return mexpr.scale(coeff, wrong)

        pred, target = f"{pred_name}[t]", f"{target_name}[t]"
        if name == "dropped_target":
            text = (
                f"dropped the target from the output error: -(1 - {pred}) (= {pred} - 1) "
                f"where {pred} - {target} belongs (softmax + cross-entropy)"
            )
        else:
            text = (
                f"kept only the diagonal of the softmax Jacobian: -{target} * (1 - {pred}) "
                f"where {pred} - {target} belongs; with a one-hot target it is right on the "
                "target class's row and wrong on the others"
            )
        out.append(Alteration(name, ("output",), "", text, rewrite))
    return out


# ---------------------------------------------------------------------- directions
def _reflections(work: _Work) -> list[Alteration]:
    """``off_by_one`` in the wrong direction: a backward unit's adjoint run the forward way.

    Every quantity of the unit read at another step than the adjoint's is read
    on the other side (``delta_b[t+1]`` for ``delta_b[t-1]``, ``f_b[t+1]`` for
    ``f_b[t-1]``; outside the model an initial state, else zero): the recursion
    of a hand-written loop that runs a backward unit's backward pass from t = T
    down, as a forward unit's.  Its values are computed in the order the mutated
    recursion needs (:attr:`Alteration.reorders`).
    """
    graph = work.graph
    meta = graph.symbols.meta
    out: list[Alteration] = []
    for kind, assignments in _by_kind(work).items():
        unit = _unit(work, kind)
        if unit is None or unit.step > 0:
            continue

        # the step that reads the most (an inner one: a boundary step reads zeros)
        template = max(assignments, key=lambda a: (len(a.expr.free_symbols), -a.step))
        if not _later_adjoints(work, template.expr, template.step, kind):
            continue

        def mapping_of(step: int, unit: Any = unit, template: Assignment = template) -> Any:
            """The template moved to ``step``, the unit's other steps on the other side."""
            mapping = {}
            for symbol in template.expr.free_symbols:
                role, at = meta.get(symbol, ("", None))
                if not isinstance(at, int):
                    continue
                offset = at - template.step
                if offset and _unit(work, role) == unit:
                    offset = -offset
                found = _shifted(work, role, step + offset)
                mapping[symbol] = found if found is not None else sp.ZeroMatrix(*symbol.shape)
            return mapping

        def rewrite(
            a: Assignment, kind: str = kind, mapping_of: Any = mapping_of, template: Any = template
        ) -> Any | None:
            if a.kind != kind:
                return None
            return mexpr.substitute(template.expr, mapping_of(a.step))

        holder = template
        printer = _relative_printer(work, holder.step)
        carried = [t for t in _terms(holder.expr) if _later_adjoints(work, t, holder.step, kind)]
        right = " + ".join(printer(t) for t in carried)
        reflected = mapping_of(holder.step)
        wrong = " + ".join(printer(mexpr.substitute(t, reflected)) for t in carried)
        place = printer(holder.target)
        text = (
            f"off-by-one step in the wrong direction in {place}: {wrong} where {right} belongs "
            "(a backward direction's adjoints carry from step t-1: its backward pass runs "
            "t = 1..T)"
        )
        out.append(Alteration("off_by_one", ("reflect", kind), place, text, rewrite, reorders=True))
    return out


# -------------------------------------------------------------------------------- masks
def _masks(work: _Work) -> list[Alteration]:
    """``forgotten_mask``: a masked model's backward pass without the mask, in one place.

    In the output error (the padded steps' losses counted: ``y_hat[t] - y[t]``
    where ``M[t] * (y_hat[t] - y[t])`` belongs), or in the states' adjoints (a
    padded step not carried: the state's adjoint goes on through the cell).
    """
    graph = work.graph
    if not graph.masks:
        return []
    ones = {mask: sp.OneMatrix(*mask.shape) for mask in graph.masks}
    out = []
    for in_loss in (True, False):

        def rewrite(a: Assignment, in_loss: bool = in_loss) -> Any | None:
            if (a.kind == "adjoint_output_pre_activation") != in_loss:
                return None
            if not any(mask in a.expr.free_symbols for mask in ones):
                return None
            return a.expr.xreplace(ones)

        if in_loss:
            place = "do[t]"
            holder = next((a for a in work.d.adjoints if rewrite(a) is not None), None)
            if holder is None:
                continue
            place = _place(work, holder)
            text = (
                f"the mask is forgotten in the output error {place}: the padded steps' "
                "losses are counted"
            )
        else:
            holder = next((a for a in work.d.adjoints if rewrite(a) is not None), None)
            if holder is None:
                continue
            place = _place(work, holder)
            text = (
                f"the mask is forgotten in the states' adjoints ({place}, ...): a padded step's "
                "adjoint goes through the cell instead of being carried past it"
            )
        out.append(Alteration("forgotten_mask", ("mask", in_loss), place, text, rewrite))
    return out


def alterations(work: _Work) -> list[Alteration]:
    """Every alteration of the derivation's rules at every site, in a fixed order."""
    return (
        _output(work)
        + _carries(work)
        + _derivatives(work)
        + _swapped_factors(work)
        + _weights(work)
        + _steps(work)
        + _reflections(work)
        + _masks(work)
    )
