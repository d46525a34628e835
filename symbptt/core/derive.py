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
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from ..expr import mexpr
from ..model.spec import ModelSpec
from .graph import T_SYMBOL, Assignment, Graph, Symbols, build_cell, build_graph, t_SYMBOL
from .rules import rule_for

__all__ = ["Derivation", "StepForm", "backprop", "derive", "instantiate"]

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
    """The loop body of BPTT for a generic step ``t``, derived once from one cell.

    ``body`` holds the forward assignments of step t and, after them, the
    backward ones.  What the future sends back arrives through the equations
    of step t + 1 that read a state of step t (Elman: z_{t+1} = ... W_hh h_t;
    LSTM: the four gates and c_{t+1}), seeded with those quantities' adjoints
    at t + 1 (δ_{t+1}; di_{t+1}, ..., dc_{t+1}).  For many-to-one models
    ``last`` is the backward pass of the last step (the only one with an
    output); ``body`` then has no output.  Outside the model every adjoint
    after the last step is 0 and a state before the first step is its
    initial value.
    """

    t: sp.Symbol
    forward: tuple[Assignment, ...]
    backward: tuple[Assignment, ...]
    last_forward: tuple[Assignment, ...] | None
    last_backward: tuple[Assignment, ...] | None
    symbols: Symbols


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
    """The equations of step t + 1 that read a state of step t, and their seeds.

    Each is seeded with its target's adjoint at t + 1, which the backward pass
    of step t + 1 has computed whole.
    """
    cell = symbols.cell
    states = {state.key for state in cell.states}
    extra: list[Assignment] = []
    seeds: dict[Any, Any] = {}
    nxt, _, _ = build_cell(symbols, t + 1, with_output=False)
    for eq, assignment in zip(cell.equations, nxt, strict=False):
        if any(key in states and offset < 0 for key, offset in eq.reads):
            extra.append(Assignment(assignment.target, assignment.expr, "next", t + 1))
            role = symbols.meta[assignment.target][0]
            seeds[assignment.target] = symbols.adjoint(role, t + 1)
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
        if not self.spec.program.plain:  # batch_reduction="tokens" alone only scales the loss
            self.spec.require_plain("the generic-step form (the loop body of the generated code)")
        return _step_form(self.spec, self.graph)

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
        if self.spec.composed:  # the documents do not show a composed model yet
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
    the number of steps.
    """
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
        elif role == "loss":
            mapping[generic] = symbols.step_loss(k)
        elif role.startswith("pre_adjoint_"):
            mapping[generic] = symbols.pre_adjoint(role[len("pre_adjoint_") :], k)
        elif role.startswith("adjoint_"):
            mapping[generic] = symbols.adjoint(role[len("adjoint_") :], k)
        elif role == "contribution":
            mapping[generic] = symbols.contribution(step_form.symbols.contributes_to[generic], k)
        else:
            mapping[generic] = symbols.series(role, k)
    out = []
    for assignment in assignments:
        at = assignment.step
        concrete = int(at.subs(step_form.t, step)) if isinstance(at, sp.Basic) else at
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
