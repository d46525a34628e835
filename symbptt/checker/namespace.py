"""The expression language's :class:`~symbptt.expr.exprlang.Namespace` of a derivation.

What each name of :mod:`symbptt.checker.language` stands for: a parameter, an initial
state, a quantity or adjoint at a step (with the rules for steps outside the model),
the functions and the sizes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sympy as sp
from sympy.matrices.expressions.diagonal import DiagMatrix

from ..core.derive import Derivation
from ..core.graph import Graph
from ..expr import functions, mexpr
from ..expr.exprlang import ExpressionError, Namespace
from .flat import direction, original_key
from .language import _base_role, _function_names, _label, _labelled_roles
from .limits import _SIZE_FIELDS, MAX_ONES


def _table(graph: Graph) -> dict[tuple[str, int], Any]:
    """(role, step) -> the graph's symbol, for the series and the adjoints."""
    table: dict[tuple[str, int], Any] = {}
    notation = graph.notation
    for symbol, (role, step) in graph.symbols.meta.items():
        if isinstance(step, int) and _label(notation, role) is not None:
            table[(role, step)] = symbol
    return table


def _steps_text(steps: tuple[int, ...]) -> str:
    return f"{steps[0]}..{steps[-1]}"


def _state_initials(graph: Graph) -> dict[str, Any]:
    """Role of each state -> its initial value (a symbol, or zero)."""
    notation = graph.notation
    return {notation.name_of(key).role: value for key, value in graph.initials.items()}


def _series_at(
    graph: Graph, table: Mapping[tuple[str, int], Any], role: str, label: str, step: int
) -> Any:
    steps = graph.steps
    first, last = steps[0], steps[-1]
    found = table.get((role, step))
    if found is not None:
        return found
    initials = _state_initials(graph)
    base = _base_role(role)
    before, after = _outside_steps(graph, base)
    if role in initials and step == before:
        return initials[role]
    adjoint = base != role
    if adjoint and (step == after or (first <= step <= last and (base, step) in table)):
        # after the last step (of the unit's direction), or a step nothing reaches: zero
        return sp.ZeroMatrix(*graph.symbols.series_shape(base))
    if step == after and base == role and (_in_cell(graph, role) or role == "mask"):
        return _after_last(graph, role, label, step)
    if first <= step <= last:
        raise ExpressionError(
            f"{label}[{step}] does not exist: in this many_to_one model only the last step "
            f"({last}) has an output and a target"
        )
    hint = ""
    if direction(graph, base) < 0:
        hint = f" ({_backward_hint(graph, role, label)}"
        hint += f"; {label}[{after}] is zero)" if adjoint else ")"
    elif role in initials:
        hint = f" ({label}[{before}] is the initial state)"
    elif adjoint:
        hint = f" ({label}[{after}], one step after the last, is zero)"
    elif step == after:  # a sum to T where the steps end at T - 1 (or the other way)
        hint = f" (off by one: {label}[{step}] is one step past the last)"
    raise ExpressionError(
        f"{label}[{step}] is outside the model: its steps are {_steps_text(steps)}{hint}"
    )


#: Stand-ins for a cell's quantity one step after the last, and why each may not stay.
_OUTSIDE: dict[Any, str] = {}


def _outside_steps(graph: Graph, role: str) -> tuple[int, int]:
    """The step before the first and the one after the last, in the role's direction.

    A backward unit runs t = T..1: its initial state is at T + 1 and an adjoint
    "one step after the last" is at 0.
    """
    first, last = graph.steps[0], graph.steps[-1]
    if direction(graph, role) < 0:
        return last + 1, first - 1
    return first - 1, last + 1


def _in_cell(graph: Graph, role: str) -> bool:
    cell = graph.symbols.cell
    keys = {q.key for q in cell.quantities}
    return original_key(graph, graph.notation.name_of(role).key) in keys


def _after_last(graph: Graph, role: str, label: str, step: int) -> Any:
    """``f[T+1]``: allowed only where an adjoint one step after the last (zero) cancels it.

    The recursion ``dc[t] = ... + dc[t+1] * f[t+1]`` holds at t = T too because
    dc[T+1] = 0; the stand-in vanishes with that product.  One left in a
    formula is refused by :func:`_refuse_outside`.
    """
    shape = graph.symbols.series_shape(role)
    symbol = sp.MatrixSymbol(f"{label}[{step}]", *shape)
    why = (
        "one step after the last it may appear only multiplied by an adjoint of that "
        "step, which is zero"
    )
    if direction(graph, role) < 0:
        why = f"{_backward_hint(graph, role, label)}; {label}[{step}] may appear only " + (
            "multiplied by an adjoint of that step, which is zero"
        )
    _OUTSIDE[symbol] = (
        f"{label}[{step}] is outside the model: its steps are {_steps_text(graph.steps)} ({why})"
    )
    return symbol


def _backward_hint(graph: Graph, role: str, label: str) -> str:
    """How a backward unit's steps run, for a message about a step outside them."""
    first, last = graph.steps[0], graph.steps[-1]
    text = f"{label} belongs to a backward direction, which runs t = {last}..{first}"
    if role in _state_initials(graph):
        text += f": the state before step t is {label}[t+1], {label}[{last + 1}] the initial one"
    return text


def _refuse_outside(expr: Any) -> Any:
    """``expr``, unless a quantity after the last step stayed in it (ExpressionError)."""
    if isinstance(expr, sp.Basic):
        for node in sorted(expr.atoms(sp.MatrixSymbol), key=str):
            if node in _OUTSIDE:
                raise ExpressionError(_OUTSIDE[node])
    return expr


def _elementwise_fn(
    name: str, lam: sp.Lambda, scalar: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    def build(arg: Any) -> Any:
        if mexpr.is_matrix(arg):
            return functions.Apply(lam, arg)
        value = scalar(arg)
        if value.has(sp.zoo, sp.nan, sp.oo, -sp.oo) or value.is_extended_real is False:
            raise ExpressionError(f"{name}({arg}) is not a finite real number")
        return value

    build.__name__ = name
    return build


def _functions(
    layout: str, sizes: Iterable[Any], extra: Iterable[str] = ()
) -> dict[str, Callable[..., Any]]:
    z = functions.z
    size_set = {s for s in sizes if not isinstance(s, sp.Integer)}

    def softmax(arg: Any) -> Any:
        if not mexpr.is_matrix(arg):
            raise ExpressionError("softmax(...) needs a matrix, not a scalar")
        return mexpr.Softmax(arg, 0 if layout == "column" else 1)

    def ones(rows: Any, cols: Any) -> Any:
        for value in (rows, cols):
            if value in size_set:
                continue
            if not (isinstance(value, sp.Integer) and 1 <= int(value) <= MAX_ONES):
                raise ExpressionError(
                    f"ones(rows, cols) takes sizes of the model (m, n_0, n_1, n_2) or integers "
                    f"1..{MAX_ONES}, not {value}"
                )
        return sp.OneMatrix(rows, cols)

    def diag(vector: Any) -> Any:
        if not mexpr.is_matrix(vector):
            raise ExpressionError("diag(...) needs a vector, not a scalar")
        rows, cols = vector.shape
        if cols == 1 or rows == 1:
            return DiagMatrix(vector)
        raise ExpressionError(
            f"diag(...) needs a column or row vector, not a matrix of shape ({rows}, {cols}); "
            "with a batch of several examples use the elementwise * instead of diag(...) @"
        )

    # ReLU's derivative: 1 where the argument is positive, else 0 (as the derivation's)
    step = sp.Lambda(z, sp.Heaviside(z, 0))
    tanh = functions.ACTIVATIONS["tanh"].function
    sigmoid = functions.ACTIVATIONS["sigmoid"].function
    out: dict[str, Callable[..., Any]] = {
        "tanh": _elementwise_fn("tanh", tanh, sp.tanh),
        "sigmoid": _elementwise_fn("sigmoid", sigmoid, lambda v: 1 / (1 + sp.exp(-v))),
        "exp": _elementwise_fn("exp", sp.Lambda(z, sp.exp(z)), sp.exp),
        "log": _elementwise_fn("log", sp.Lambda(z, sp.log(z)), sp.log),
        "step": _elementwise_fn("step", step, lambda v: sp.Heaviside(v, 0)),
        "heaviside": _elementwise_fn("heaviside", step, lambda v: sp.Heaviside(v, 0)),
        "softmax": softmax,
        "ones": ones,
        "diag": diag,
    }
    for name in extra:  # a function a cell's equations call (relu, softplus, ...)
        if name not in out:
            activation = functions.ACTIVATIONS[name]
            scalar = sp.Lambda(z, activation.definition)
            out[name] = _elementwise_fn(name, activation.function, scalar)
    return out


def namespace(d: Derivation) -> Namespace:
    """The expression language's :class:`~symbptt.expr.exprlang.Namespace` of a derivation.

    Built from the graph's symbol registry: the parameters, the initial
    states, every step-indexed quantity and every adjoint, in the notation's
    names (``h[t]``, ``c[t]``, ``dc[t]``, ``delta_f[t]``, ``delta[t]``).
    """
    graph = d.graph
    notation = graph.notation
    table = _table(graph)
    constants: dict[str, Any] = dict(graph.params)
    sizes = graph.symbols.sizes
    for key, label in _SIZE_FIELDS:
        constants[label] = sizes[key]
    for key, value in graph.initials.items():
        constants.setdefault(notation.name_of(key).initial, value)
    indexed: dict[str, Callable[[int], Any]] = {}
    for role, label in _labelled_roles(d):
        indexed[label] = _bind_series(graph, table, role, label)
    return Namespace(
        constants=constants,
        indexed=indexed,
        functions=_functions(notation.layout, sizes.values(), _function_names(graph.symbols.cell)),
        steps=graph.steps,
        scalars={"T": len(graph.steps)},
    )


def _bind_series(
    graph: Graph, table: Mapping[tuple[str, int], Any], role: str, label: str
) -> Callable[[int], Any]:
    def at(step: int) -> Any:
        return _series_at(graph, table, role, label, step)

    return at
