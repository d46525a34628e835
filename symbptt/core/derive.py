"""Reverse mode over the graph: the derivation, with every stage kept.

:func:`backprop` walks a list of assignments backwards.  Each assignment's
right-hand side is a small expression tree; the cotangent of its target is
pushed through that tree with the rules of :mod:`symbptt.core.rules` (an explicit
stack, no recursion), and what reaches a symbol is recorded as a
contribution.  When the walk reaches an intermediate symbol, all its
contributions are in (its consumers come later in the forward order), so its
adjoint becomes one named assignment (δ_t = ∂L/∂z_t, ∂L/∂h_t, ∂L/∂o_t) and the
walk goes on with that symbol as the cotangent: expressions stay short.

Shared weights accumulate over t: every step's contribution to a parameter is
a named assignment, and the gradient is their sum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from ..expr import mexpr
from ..model.compose import Unit
from ..model.spec import ModelSpec
from .graph import (
    T_SYMBOL,
    Assignment,
    Graph,
    Symbols,
    _equations,
    build_cell,
    build_graph,
    composed_output,
    loss_weight,
    mask_count,
    t_SYMBOL,
)
from .rules import rule_for

__all__ = ["Derivation", "StepForm", "backprop", "backward_pass", "derive", "instantiate"]

_CONSTANTS = (sp.OneMatrix, sp.ZeroMatrix, sp.Identity)


def _push(expr: Any, ct: Any, out: Any, variables: set[Any], sink: list[tuple[Any, Any]]) -> None:
    """Push ``ct`` through ``expr`` (whose value is ``out``) onto the variables it reads."""
    stack = [(expr, ct, out)]
    while stack:
        node, node_ct, node_out = stack.pop()
        if isinstance(node, (sp.MatrixSymbol, sp.Symbol)):
            if node in variables:
                sink.append((node, node_ct))
            continue
        if isinstance(node, _CONSTANTS) or node.is_number or mexpr.is_zero(node_ct):
            continue
        if not mexpr.is_matrix(node) and not (node.free_symbols & variables):
            continue
        for child, child_ct in reversed(rule_for(node)(node_ct, node_out, node)):
            stack.append((child, child_ct, child))


def _applies_to_expression(expr: Any) -> bool:
    """True for ``f(argument)`` applied elementwise to more than a single symbol."""
    return isinstance(expr, ElementwiseApplyFunction) and not isinstance(expr.expr, sp.MatrixSymbol)


def backprop(
    assignments: tuple[Assignment, ...] | list[Assignment],
    seeds: Mapping[Any, Any],
    leaves: set[Any],
    symbols: Symbols,
    constants: frozenset[Any] = frozenset(),
) -> tuple[list[Assignment], dict[Any, list[tuple[Any, Any]]]]:
    """Reverse mode over ``assignments``.

    ``seeds`` maps symbols to their initial cotangents (the total loss to 1).
    Targets in ``constants`` are walked from their seed but receive nothing
    (their seed is already their whole adjoint).  Returns the adjoint
    assignments in the order they are computed, and for every leaf in
    ``leaves`` its contributions as ``(step, expression)`` in forward step order.
    """
    targets = {a.target for a in assignments} - constants
    variables = targets | set(leaves)
    pending: dict[Any, list[Any]] = {symbol: [ct] for symbol, ct in seeds.items()}
    leaf_parts: dict[Any, list[tuple[Any, Any]]] = {}
    adjoints: list[Assignment] = []
    for assignment in reversed(assignments):
        parts = pending.pop(assignment.target, None)
        if not parts:
            continue
        total = mexpr.add(*reversed(parts))
        if mexpr.is_zero(total):
            continue
        expr, out = assignment.expr, assignment.target
        if mexpr.is_matrix(assignment.target):
            role, step = symbols.meta[assignment.target]
            registry = symbols.registry(assignment.target)  # its unit's, in a composed model
            adjoint = registry.adjoint(role, step)
            if total != adjoint:
                adjoints.append(Assignment(adjoint, total, "adjoint_" + role, step))
            ct = adjoint
            if _applies_to_expression(expr):
                # q = f(a + b ...): name the argument's adjoint (δ^q = dq ⊙ f'), once per step
                pre = registry.pre_adjoint(role, step)
                if assignment.target not in constants:
                    ((_, pre_ct),) = rule_for(expr)(ct, out, expr)
                    adjoints.append(Assignment(pre, pre_ct, "pre_adjoint_" + role, step))
                expr, out, ct = expr.expr, expr.expr, pre
        else:
            ct = total
        sink: list[tuple[Any, Any]] = []
        _push(expr, ct, out, variables, sink)
        for symbol, part in sink:
            if symbol in targets:
                pending.setdefault(symbol, []).append(part)
            else:
                leaf_parts.setdefault(symbol, []).append((assignment.step, part))
    for parts in leaf_parts.values():
        parts.reverse()
    return adjoints, leaf_parts


@dataclass(frozen=True)
class StepForm:
    """The loop body of BPTT for a generic step ``t``, derived once from the equations.

    ``body`` holds the forward assignments of step t and, after them, the
    backward ones.  What the future sends back arrives through the equations
    of step t + 1 that read a state of step t (Elman: z_{t+1} = ... W_hh h_t;
    LSTM: the four gates and c_{t+1}), seeded with those quantities' adjoints
    at t + 1 (δ_{t+1}; di_{t+1}, ..., dc_{t+1}).  For many-to-one models
    ``last`` is the backward pass of the last step (the only one with an
    output); ``body`` then has no output.  Outside the model every adjoint
    after the last step is 0 and a state before the first step is its
    initial value.

    A composed model (``spec.program``: layers, directions, a mask) has every
    unit at step t in ``forward``, in the order they run, then the output
    layer; ``backward`` is the output layer's adjoints, then every unit's, the
    last unit first.  A unit's adjoints at t receive from its own next step
    (t + 1; t - 1 for a backward unit, whose recursion runs the other way),
    from the units of the layer above at t, and from the output layer at t; a
    masked state's carry (``s_t = s_{t-1} + M_t ⊙ (s̄_t − s_{t-1})``) is one more
    equation of the next step that reads it.  A loss weight that sums every
    step's mask reads ``mask_count`` (each example's number of real steps).
    Many-to-one: ``last_forward`` is the output layer at the last step, reading
    each unit of the last layer at its final step (a forward unit's at T, a
    backward unit's at the first step), with those units' equations there;
    ``last_backward`` their backward pass, without a next step (it is outside).
    :meth:`unit_of` says which unit an assignment belongs to;
    :func:`backward_pass` instantiates it all, in an order that works.
    """

    t: sp.Symbol
    forward: tuple[Assignment, ...]
    backward: tuple[Assignment, ...]
    last_forward: tuple[Assignment, ...] | None
    last_backward: tuple[Assignment, ...] | None
    symbols: Symbols
    #: a composed model's units, in the order they run (empty for one cell)
    units: tuple[Unit, ...] = field(default=())

    def unit_of(self, assignment: Assignment) -> int | None:
        """The index in :attr:`units` of the unit ``assignment`` belongs to (None: the
        output layer, or a model of one cell); a contribution belongs to its parameter's."""
        symbols = self.symbols
        symbol = assignment.target
        if assignment.kind == "contribution" and assignment.param in symbols.params:
            symbol = symbols.params[assignment.param]
        registry = symbols.owner.get(symbol)
        if registry is None or registry.unit is None:
            return None
        return self.units.index(registry.unit)

    def part(self, body: tuple[Assignment, ...], unit: int | None) -> tuple[Assignment, ...]:
        """The assignments of ``body`` that belong to ``unit`` (:meth:`unit_of`), in order."""
        return tuple(a for a in body if self.unit_of(a) == unit)


def _contributions(
    symbols: Symbols, leaf_parts: Mapping[Any, list[tuple[Any, Any]]], order: list[tuple[str, Any]]
) -> list[Assignment]:
    """Named per-step contributions of the leaves in ``order`` ((name, symbol) pairs).

    A leaf read by several equations of one step (an LSTM's h_0 by its four
    gates) gets one contribution per step: the sum of its parts.
    """
    out: list[Assignment] = []
    for name, symbol in order:
        by_step: dict[Any, list[Any]] = {}
        for step, part in leaf_parts.get(symbol, []):
            by_step.setdefault(step, []).append(part)
        for step, parts in by_step.items():
            total = mexpr.add(*parts)
            out.append(
                Assignment(symbols.contribution(name, step), total, "contribution", step, name)
            )
    return out


def _next_reads(symbols: Symbols, t: Any) -> tuple[list[Assignment], dict[Any, Any]]:
    """The equations of the next step that read a state of step t, and their seeds.

    The next step is t + 1, or t - 1 for a backward unit of a composed model
    (its registry's unit runs the steps the other way).  With a mask, each
    state's choice at the next step reads the state of step t too.  Each is
    seeded with its target's adjoint at the next step, which the backward
    pass of that step has computed whole.
    """
    cell = symbols.cell
    states = {state.key for state in cell.states}
    way = 1 if symbols.unit is None else symbols.unit.step
    extra: list[Assignment] = []
    seeds: dict[Any, Any] = {}
    nxt = _equations(symbols, t + way, first=False)
    for k, assignment in enumerate(nxt):
        # past the cell's equations: a masked state's choice, which reads the state
        if k < len(cell.equations) and not any(
            key in states and offset < 0 for key, offset in cell.equations[k].reads
        ):
            continue
        extra.append(Assignment(assignment.target, assignment.expr, "next", t + way))
        role = symbols.meta[assignment.target][0]
        seeds[assignment.target] = symbols.registry(assignment.target).adjoint(role, t + way)
    return extra, seeds


def _step_form(spec: ModelSpec, graph: Graph) -> StepForm:
    symbols = Symbols(spec, graph.notation)
    t = t_SYMBOL
    loss_steps = T_SYMBOL if spec.mode == "many_to_many" else sp.Integer(1)
    scale = symbols.loss_scale(loss_steps)
    leaves = set(symbols.params.values())
    cell_model = symbols.cell
    previous = {symbols.series(state.key, t - 1) for state in cell_model.states}

    def cell(
        with_output: bool, with_next: bool
    ) -> tuple[tuple[Assignment, ...], tuple[Assignment, ...]]:
        forward, _, loss = build_cell(symbols, t, with_output)
        seeds: dict[Any, Any] = {}
        extra: list[Assignment] = []
        if loss is not None:
            seeds[loss] = scale
        if with_next:
            extra, next_seeds = _next_reads(symbols, t)
            seeds.update(next_seeds)
        x = symbols.series("input", t)
        constants = frozenset(a.target for a in extra)
        adjoints, parts = backprop(
            forward + extra, seeds, leaves | previous | {x}, symbols, constants
        )
        names = [(name, sym) for name, sym in symbols.params.items()]
        own = {sym: [(at, part) for at, part in found if at == t] for sym, found in parts.items()}
        backward = adjoints + _contributions(symbols, own, names)
        return tuple(forward), tuple(backward)

    if spec.mode == "many_to_many":
        forward, backward = cell(True, True)
        return StepForm(t, forward, backward, None, None, symbols)
    forward, backward = cell(False, True)
    last_forward, last_backward = cell(True, False)
    return StepForm(t, forward, backward, last_forward, last_backward, symbols)


def _final_zeros(
    symbols: Symbols,
    units: tuple[Unit, ...],
    body: tuple[Assignment, ...],
    final: dict[int, Any],
    named: set[Any],
) -> tuple[Assignment, ...]:
    """Zero adjoints of the units' final steps (many-to-one) that ``body`` reads and the
    last part does not name: nothing there sends them back (a masked cell state's adjoint,
    where the output layer reads only h); said so, so each step's reads are defined."""
    zeros: list[Assignment] = []
    for a in body:
        for symbol in sorted(a.expr.free_symbols, key=str):
            role, step = symbols.meta.get(symbol, ("", None))
            owner = symbols.owner.get(symbol)
            if owner is None or owner.unit is None:
                continue
            index = units.index(owner.unit)
            if index not in final or step != t_SYMBOL + units[index].step:
                continue
            if role.startswith("pre_adjoint_"):
                zero = owner.pre_adjoint(role[len("pre_adjoint_") :], final[index])
            elif role.startswith("adjoint_"):
                zero = owner.adjoint(role[len("adjoint_") :], final[index])
            else:
                continue
            if zero not in named:
                named.add(zero)
                zeros.append(Assignment(zero, sp.ZeroMatrix(*zero.shape), role, final[index]))
    return tuple(zeros)


def _composed_step_form(spec: ModelSpec, graph: Graph) -> StepForm:
    """The generic-step form of a composed model (:class:`StepForm`), from its equations."""
    symbols = Symbols(spec, graph.notation)
    t = t_SYMBOL
    many = spec.mode == "many_to_many"
    scale = symbols.loss_scale(T_SYMBOL if many else sp.Integer(1))
    registries = symbols.registries
    units = tuple(registry.unit for registry in registries if registry.unit is not None)
    first = sp.Integer(graph.notation.t0)
    last = T_SYMBOL + first - 1
    names = list(symbols.params.items())
    params = set(symbols.params.values())

    def leaves(at: dict[int, Any]) -> set[Any]:
        """The parameters, and what the units at these steps read from outside them."""
        out = set(params)
        for index, step in at.items():
            registry = registries[index]
            out |= {registry.series(s.key, step - units[index].step) for s in registry.cell.states}
            out.add(symbols.series("input", step))
        return out

    def derive_part(
        forward: list[Assignment], seeds: dict[Any, Any], extra: list[Assignment], at: Any
    ) -> tuple[tuple[Assignment, ...], tuple[Assignment, ...]]:
        steps = dict(at) if isinstance(at, dict) else {index: at for index in range(len(units))}
        constants = frozenset(a.target for a in extra)
        adjoints, parts = backprop(forward + extra, seeds, leaves(steps), symbols, constants)
        own_steps = {a.step for a in forward}
        own = {s: [(k, part) for k, part in found if k in own_steps] for s, found in parts.items()}
        return tuple(forward), tuple(adjoints + _contributions(symbols, own, names))

    forward: list[Assignment] = []
    for registry in registries:
        forward += _equations(registry, t, first=False)
    seeds: dict[Any, Any] = {}
    extra: list[Assignment] = []
    for registry in registries:
        found, found_seeds = _next_reads(registry, t)
        extra += found
        seeds.update(found_seeds)
    if many:
        weight = None
        if spec.masked:
            weight = loss_weight(symbols, symbols.mask(t), mask_count(symbols))
        head, loss = composed_output(symbols, t, first, weight)
        forward += head
        seeds[loss] = scale
    body_forward, body_backward = derive_part(forward, seeds, extra, t)
    if many:
        return StepForm(t, body_forward, body_backward, None, None, symbols, units)
    # many-to-one: the output layer at the last step, and the units it reads at their final step
    final = {i: last if units[i].direction == "forward" else first for i in symbols.program.head}
    last_forward: list[Assignment] = []
    for index, step in final.items():
        last_forward += _equations(registries[index], step, first=False)
    head, loss = composed_output(symbols, last, first)
    last_forward += head
    last_part = derive_part(last_forward, {loss: scale}, [], final)
    zeros = _final_zeros(symbols, units, body_backward, final, {a.target for a in last_part[1]})
    last_backward = tuple(a for a in last_part[1] if a.kind != "contribution") + zeros
    last_backward += tuple(a for a in last_part[1] if a.kind == "contribution")
    return StepForm(t, body_forward, body_backward, last_part[0], last_backward, symbols, units)


#: How a derivation shows itself in Jupyter; :mod:`symbptt.documents` registers its summary
#: here, so that the derivation never imports the documents (imports flow one way).
LATEX_SUMMARY: list[Callable[[Derivation], str]] = []


@dataclass(frozen=True)
class Derivation:
    """Every stage of the derivation of a spec (see the module docstring)."""

    spec: ModelSpec
    graph: Graph
    assignments: tuple[Assignment, ...]
    gradients: dict[str, Any]
    input_gradients: dict[int, Any]
    symbols: dict[str, Any]
    roles: dict[str, str]

    @property
    def notation(self) -> Any:
        return self.graph.notation

    @property
    def adjoints(self) -> tuple[Assignment, ...]:
        """The adjoint recursion (δ_t and the other adjoints), in the order computed."""
        return tuple(a for a in self.assignments if a.kind.startswith(("adjoint_", "pre_adjoint_")))

    @property
    def contributions(self) -> tuple[Assignment, ...]:
        return tuple(a for a in self.assignments if a.kind == "contribution")

    @cached_property
    def step_form(self) -> StepForm:
        """The generic-step form (derived on first use, once)."""
        if self.spec.program.plain:  # batch_reduction="tokens" alone only scales the loss
            return _step_form(self.spec, self.graph)
        return _composed_step_form(self.spec, self.graph)

    @cached_property
    def _expanded(self) -> dict[Any, Any]:
        """Every intermediate symbol written in the leaves only, built in one forward sweep."""
        expanded: dict[Any, Any] = {}
        for assignment in self.graph.assignments + self.assignments:
            expanded[assignment.target] = assignment.expr.xreplace(expanded)
        return expanded

    def gradient(self, name: str, expand: bool = True) -> Any:
        """The gradient of ``name`` (a parameter or the initial state).

        With ``expand`` every intermediate (h_t, δ_t, ...) is substituted, so
        the result is an expression of the parameters, inputs, targets and
        initial state only: anyone can check it by substituting numbers.  The
        sweep is linear in the graph, though the expression is large for big T.
        """
        try:
            gradient = self.gradients[name]
        except KeyError:
            known = ", ".join(self.gradients)
            raise KeyError(f"no gradient named {name!r}; this derivation has {known}") from None
        return gradient.xreplace(self._expanded) if expand else gradient

    @property
    def named(self) -> dict[str, Any]:
        """Every parameter and initial-state symbol by its ASCII name (``symbols`` is by role)."""
        out: dict[str, Any] = dict(self.graph.params)
        for initial in self.graph.initials.values():
            if isinstance(initial, sp.MatrixSymbol):
                out[initial.name] = initial
        return out

    def value_of(self, symbol: Any) -> Any:
        """An intermediate symbol written in the leaves only."""
        return self._expanded.get(symbol, symbol)

    def __repr__(self) -> str:
        """Short whatever T: the spec and what was derived (the expressions are in the fields)."""
        return (
            f"Derivation({self.spec!r}: {len(self.gradients)} gradients "
            f"({', '.join(self.gradients)}), {len(self.assignments)} backward assignments)"
        )

    def _repr_latex_(self) -> str | None:
        """Jupyter's view: the summary the documents stage registers (:data:`LATEX_SUMMARY`)."""
        if self.spec.composed and self.spec.program.plain:  # tokens alone: no document yet
            return None
        return LATEX_SUMMARY[0](self) if LATEX_SUMMARY else None


def derive(spec: ModelSpec | Graph) -> Derivation:
    """Derive every gradient of ``spec`` by matrix-level reverse mode."""
    if not isinstance(spec, (ModelSpec, Graph)):
        raise TypeError(
            f"derive: expected a ModelSpec (or a Graph), got {type(spec).__name__} "
            f"{repr(spec)[:40]}; build one with symbptt.ModelSpec(steps=..., ...) or, from "
            "a dict, symbptt.ModelSpec.from_mapping(d)"
        )
    graph = spec if isinstance(spec, Graph) else build_graph(spec)
    spec = graph.spec
    symbols = graph.symbols
    order: list[tuple[str, Any]] = list(symbols.params.items())
    order += [(initial.name, initial) for initial in graph.initial_inputs.values()]
    leaves = {symbol for _, symbol in order} | set(graph.inputs)
    adjoints, parts = backprop(graph.assignments, {graph.loss: sp.Integer(1)}, leaves, symbols)
    contributions = _contributions(symbols, parts, order)
    inputs = [(symbols.meta[x][1], x) for x in graph.inputs]
    input_gradients = {
        step: mexpr.add(*(part for _, part in parts[x])) if x in parts else sp.ZeroMatrix(*x.shape)
        for step, x in inputs
    }
    gradients: dict[str, Any] = {}
    sums: list[Assignment] = []
    for name, symbol in order:
        terms = [c.expr for c in contributions if c.param == name]
        gradients[name] = mexpr.add(*terms) if terms else sp.ZeroMatrix(*symbol.shape)
        named = [c.target for c in contributions if c.param == name]
        total = mexpr.add(*named) if named else sp.ZeroMatrix(*symbol.shape)
        target = sp.MatrixSymbol("d" + name, *symbol.shape)
        symbols.meta[target] = ("gradient", None)
        sums.append(Assignment(target, total, "gradient", None, name))
    roles = {name: symbols.meta[symbol][0] for name, symbol in symbols.params.items()}
    for initial in graph.initial_inputs.values():
        roles[initial.name] = "initial_state"
    table: dict[str, Any] = {
        role: symbols.params[name] for name, role in roles.items() if name in symbols.params
    }
    table["initial_state"] = graph.initial
    table["inputs"] = list(graph.inputs)
    table["targets"] = list(graph.targets)
    return Derivation(
        spec=spec,
        graph=graph,
        assignments=tuple(adjoints + contributions + sums),
        gradients=gradients,
        input_gradients=input_gradients,
        symbols=table,
        roles=roles,
    )


def instantiate(
    assignments: tuple[Assignment, ...], step_form: StepForm, step: int, graph: Graph
) -> list[Assignment]:
    """The generic-step ``assignments`` at a concrete ``step`` of ``graph``'s model.

    Generic symbols become the graph's symbols of that step; h before the
    first step becomes the initial state, δ after the last step zero, and T
    the number of steps.  In a composed model the same holds in each unit's
    direction (a backward unit's state after the last step is its initial
    state, its adjoints before the first step are zero), anything else outside
    the steps is zero (it only ever multiplies an adjoint that is zero there),
    and ``mask_count`` is the sum of every step's mask.
    """
    if step_form.units:
        mapping = _composed_mapping(step_form, step, graph)
    else:
        mapping = _mapping(step_form, step, graph)
    steps = {step_form.t: step, T_SYMBOL: len(graph.steps)}
    out = []
    for assignment in assignments:
        at = assignment.step
        concrete = int(at.subs(steps)) if isinstance(at, sp.Basic) else at
        out.append(
            Assignment(
                assignment.target.xreplace(mapping),
                mexpr.substitute(assignment.expr, mapping),
                assignment.kind,
                concrete,
                assignment.param,
            )
        )
    return out


def _mapping(step_form: StepForm, step: int, graph: Graph) -> dict[Any, Any]:
    """Generic symbols -> the graph's at ``step`` (a model of one cell)."""
    symbols = graph.symbols
    first, last = graph.steps[0], graph.steps[-1]
    mapping: dict[Any, Any] = {T_SYMBOL: sp.Integer(len(graph.steps))}
    notation = graph.notation
    states = {notation.name_of(key).role: initial for key, initial in graph.initials.items()}
    for generic, (role, at) in step_form.symbols.meta.items():
        if at is None or not isinstance(at, sp.Basic) or not at.free_symbols:
            continue
        k = int(at.subs(step_form.t, step))
        if role in states and k < first:
            mapping[generic] = states[role]
        elif role.startswith(("adjoint_", "pre_adjoint_")) and k > last:
            mapping[generic] = sp.ZeroMatrix(*generic.shape)
        else:
            mapping[generic] = _concrete(symbols, step_form, generic, role, k)
    return mapping


def _concrete(symbols: Symbols, step_form: StepForm, generic: Any, role: str, k: int) -> Any:
    """The symbol of ``symbols`` (a registry) for the generic one of ``role`` at step ``k``."""
    if role == "loss":
        return symbols.root.step_loss(k)
    if role == "mask":
        return symbols.root.mask(k)
    if role.startswith("pre_adjoint_"):
        return symbols.pre_adjoint(role[len("pre_adjoint_") :], k)
    if role.startswith("adjoint_"):
        return symbols.adjoint(role[len("adjoint_") :], k)
    if role == "contribution":
        return symbols.root.contribution(step_form.symbols.contributes_to[generic], k)
    return symbols.series(role, k)


def _composed_mapping(step_form: StepForm, step: int, graph: Graph) -> dict[Any, Any]:
    """Generic symbols -> the graph's at ``step`` (a composed model), each in its unit."""
    symbols = graph.symbols
    first, last = graph.steps[0], graph.steps[-1]
    steps = {step_form.t: step, T_SYMBOL: len(graph.steps)}
    generic_symbols = step_form.symbols
    mapping: dict[Any, Any] = {T_SYMBOL: sp.Integer(len(graph.steps))}
    for generic, (role, at) in generic_symbols.meta.items():
        if role == "mask_count":
            mapping[generic] = mexpr.add(*graph.masks)
            continue
        if at is None or not isinstance(at, (int, sp.Basic)):
            continue
        k = int(sp.sympify(at).subs(steps))
        owner = generic_symbols.owner.get(generic)
        unit = None if owner is None else owner.unit
        registry = symbols if unit is None else symbols.registries[step_form.units.index(unit)]
        if first <= k <= last:
            mapping[generic] = _concrete(registry, step_form, generic, role, k)
            continue
        way = 1 if unit is None else unit.step
        before = first - 1 if way > 0 else last + 1
        key = registry.notation.name_of(role).key if role in _roles(registry) else None
        if k == before and key in registry.initials:
            mapping[generic] = registry.initials[key]
        elif mexpr.is_matrix(generic):
            mapping[generic] = sp.ZeroMatrix(*generic.shape)
    return mapping


def _roles(registry: Symbols) -> set[str]:
    return {entry.role for entry in registry.notation.names}


def backward_pass(step_form: StepForm, graph: Graph) -> list[Assignment]:
    """The backward pass of ``graph``'s model written from the generic-step form alone.

    Every part instantiated at every step, in an order where each adjoint comes
    after what it reads: the output layer's, then each unit from the last one
    down, a forward unit from T to the first step, a backward unit the other
    way; many-to-one takes the last part where the output layer reads a unit.
    """
    steps = graph.steps
    many = step_form.last_backward is None
    if not step_form.units:
        out: list[Assignment] = []
        for step in reversed(steps):
            last = step == steps[-1] and step_form.last_backward is not None
            body = step_form.last_backward if last else step_form.backward
            assert body is not None
            out += instantiate(body, step_form, step, graph)
        return out
    out = []
    if many:
        for step in reversed(steps):
            out += instantiate(step_form.part(step_form.backward, None), step_form, step, graph)
    else:
        assert step_form.last_backward is not None
        head = step_form.part(step_form.last_backward, None)
        out += instantiate(head, step_form, steps[-1], graph)
    read = set(graph.spec.program.head)
    for index in reversed(range(len(step_form.units))):
        unit = step_form.units[index]
        order = steps[::-1] if unit.direction == "forward" else steps
        final = steps[-1] if unit.direction == "forward" else steps[0]
        for step in order:
            body = step_form.backward
            if not many and index in read and step == final:
                assert step_form.last_backward is not None
                body = step_form.last_backward
            out += instantiate(step_form.part(body, index), step_form, step, graph)
    return out
