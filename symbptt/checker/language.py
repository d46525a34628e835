"""The names of the expression language of a model: :func:`names`, :func:`names_text`.

Read from the model's symbol registry: every parameter, initial state, step-indexed
quantity and adjoint, in the notation's ASCII names."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..core.derive import Derivation, derive
from ..expr import functions
from ..model import HEAD_KEYS, load_cell
from ..model.notation import NOTATIONS, Notation
from ..model.spec import ModelSpec, SpecError
from .flat import FlatSymbols, direction, flatten, original_key
from .limits import _SIZE_FIELDS
from .report import _shape_text


@dataclass(frozen=True)
class NameInfo:
    """One name of the expression language: how it is written, what kind, what it is."""

    name: str
    kind: str  # parameter, initial state, series, adjoint, scalar, size, function, reducer
    description: str

    def __str__(self) -> str:
        return f"{self.name:<16} {self.description}"


def _spec_of(obj: str | Notation | ModelSpec | Derivation) -> ModelSpec:
    """The spec a :func:`names` argument stands for (a notation name means the Elman cell's)."""
    if isinstance(obj, Derivation):
        return obj.spec
    if isinstance(obj, ModelSpec):
        return obj
    if isinstance(obj, Notation):
        if NOTATIONS.get(obj.name) == obj:
            return ModelSpec(notation=obj.name)
        try:
            cell = load_cell(obj.cell)
        except (SpecError, OSError) as exc:
            raise ValueError(
                f"notation {obj.name!r} of cell {obj.cell!r}: pass the spec (ModelSpec(cell=...)) "
                f"instead ({exc})"
            ) from None
        if cell.notations.get(obj.name) == obj:
            return ModelSpec(cell=obj.cell, notation=obj.name)
        raise ValueError(
            f"notation {obj.name!r} is not one of the cell {obj.cell!r}'s: pass the spec instead"
        )
    if isinstance(obj, str) and obj in NOTATIONS:
        return ModelSpec(notation=obj)
    raise ValueError(f"unknown notation {obj!r}; expected one of {', '.join(NOTATIONS)}")


@lru_cache(maxsize=32)
def _generic_derivation(cell: str, notation: str) -> Derivation:
    """The cell in a notation at symbolic sizes, two steps: its symbols and roles."""
    return derive(ModelSpec(cell=cell, notation=notation, steps=2))


@lru_cache(maxsize=32)
def _composed_derivation(spec: ModelSpec) -> Derivation:
    """A composed model at two steps, as the checker reads it: every unit's symbols."""
    return flatten(derive(ModelSpec.from_mapping({**spec.as_dict(), "steps": 2})))


def _readout(root: Any, index: int) -> str:
    """The readout state of unit ``index`` by its name (``h_1b``)."""
    source = root.registries[index]
    return str(source.notation.name_of(source.cell.readout).ascii)


def _names_derivation(spec: ModelSpec) -> Derivation:
    if spec.composed:
        return _composed_derivation(spec)
    return _generic_derivation(spec.cell, spec.notation)


def _parameter_names(d: Derivation) -> list[NameInfo]:
    """Every parameter of the model, in the order the registries made them."""
    graph = d.graph
    symbols = graph.symbols
    nota = graph.notation
    out = []
    if not isinstance(symbols, FlatSymbols):
        for param in nota.params:
            shape = _shape_text(symbols.param_shape(param.key))
            out.append(NameInfo(param.ascii, "parameter", f"{param.description} {shape}"))
        return out
    root = symbols.root
    program = root.program
    for registry in root.registries:
        unit = registry.unit
        assert unit is not None
        for entry in registry.notation.params:
            if entry.key in HEAD_KEYS:
                continue  # the output layer's: the model's, listed below
            where = [f"layer {unit.layer}"] if program.layers > 1 else []
            if program.bidirectional:
                where.append(f"{unit.direction} direction")
            parts = registry.split.get(entry.key)
            if parts is None:
                found = [(graph.params.get(entry.ascii), "")]
            else:
                found = [
                    (symbol, f", applied to {_readout(root, index)}") for symbol, index in parts
                ]
            for symbol, read in found:
                if symbol is None:
                    continue
                text = (
                    f"{entry.description} ({', '.join(where)}{read})"
                    if where
                    else entry.description
                )
                out.append(
                    NameInfo(symbol.name, "parameter", f"{text} {_shape_text(symbol.shape)}")
                )
    listed = {info.name for info in out}
    for name, symbol in graph.params.items():
        if name not in listed:
            entry = root.notation.name_of(root.key_of_param(name))
            out.append(
                NameInfo(name, "parameter", f"{entry.description} {_shape_text(symbol.shape)}")
            )
    return out


def _label(notation: Notation, role: str) -> str | None:
    """The expression language's name of a step-indexed role (series or adjoint), or None."""
    try:
        entry = notation.name_of(_base_role(role))
    except KeyError:
        return None
    if role.startswith("pre_adjoint_"):
        return "delta_" + entry.ascii
    if role.startswith("adjoint_"):
        return entry.adjoint_ascii
    return entry.ascii if entry.kind == "series" else None


def _base_role(role: str) -> str:
    """The quantity an adjoint role belongs to (``adjoint_h`` -> ``h``)."""
    for prefix in ("pre_adjoint_", "adjoint_"):
        if role.startswith(prefix):
            return role[len(prefix) :]
    return role


def _is_adjoint(kind: str) -> bool:
    return kind.startswith(("adjoint_", "pre_adjoint_"))


def _step_roles(d: Derivation) -> list[str]:
    """Every step-indexed role of the model: series in the notation's order, then adjoints."""
    found: set[str] = set()
    metas = [d.graph.symbols.meta]
    if not d.spec.composed:  # a composed model is read flat: its concrete steps hold every role
        metas.append(d.step_form.symbols.meta)
    for meta in metas:
        for role, step in meta.values():
            if step is not None and _label(d.graph.notation, role) is not None:
                found.add(role)
    order: list[str] = []
    series = [entry.role for entry in d.graph.notation.series]
    for prefix in ("", "adjoint_", "pre_adjoint_"):
        order += [prefix + role for role in series if prefix + role in found]
    return order


def _labelled_roles(d: Derivation) -> list[tuple[str, str]]:
    """``(role, name)`` of every step-indexed role; a name that stands for two things is refused.

    Raises:
        SpecError: two quantities, or a quantity and an adjoint, a parameter, an
            initial state, a size or a function, share a name in the notation.
    """
    graph = d.graph
    notation = graph.notation
    cell = graph.symbols.cell
    owners: dict[str, str] = {name: "a parameter" for name in graph.params}
    owners.update({notation.name_of(key).initial: "an initial state" for key in graph.initials})
    owners.update({label: "a size" for _, label in _SIZE_FIELDS})
    owners.update({name: "a function" for name in (*_FUNCTION_INFO, "softmax", "ones", "diag")})
    owners.update({name: "a function" for name in _function_names(cell)})
    reserved = ("t", "k", "tau", "j", "T", "sum_t", "sum_k", "sum_tau", "prod_j")
    owners.update({name: "reserved" for name in reserved})
    out: list[tuple[str, str]] = []
    for role in _step_roles(d):
        label = _label(notation, role) or role
        base = notation.name_of(_base_role(role))
        what = f"the adjoint of {base.ascii}" if _is_adjoint(role) else f"the series {label}"
        if label in owners:
            raise SpecError(
                f"cell {cell.name}, notation {notation.name}: the name {label!r} stands for "
                f"{what} and for {owners[label]}; give one of them another name in the "
                "notation's names (an adjoint's with adjoint = \"...\")"
            )
        owners[label] = what
        out.append((role, label))
    return out


def _function_names(cell: Any) -> list[str]:
    """The named functions the cell's equations call (besides its free activation)."""
    out: list[str] = []
    for eq in cell.equations:
        for node in ast.walk(eq.tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                name = node.func.id
                if name != cell.activation and name in functions.ACTIVATIONS and name not in out:
                    out.append(name)
    return out


_FUNCTION_INFO = {
    "tanh": "elementwise tanh",
    "sigmoid": "elementwise logistic sigmoid 1/(1+exp(-A))",
    "exp": "elementwise exp",
    "log": "elementwise natural log",
    "step": "elementwise step function: 1 where positive, else 0 (also (A > 0))",
    "heaviside": "the step function, as the derivation prints ReLU's derivative",
}


def names(notation: str | Notation | ModelSpec | Derivation) -> tuple[NameInfo, ...]:
    """The names of the expression language of a model.

    ``notation`` is a spec (any cell), a derivation, or a notation of the Elman
    cell by name (``"aa"``).  The names come from the model's symbol registry:
    every parameter, initial state, step-indexed quantity and adjoint.
    """
    spec = _spec_of(notation)
    d = _names_derivation(spec)
    nota = d.graph.notation
    graph = d.graph
    cell = graph.symbols.cell
    first = nota.t0
    last = "T" if first == 1 else "T-1"
    symbols = graph.symbols

    def outside(role: str) -> tuple[str, str]:
        """The step before the first and after the last, in the role's direction."""
        forward = (f"{first - 1}", "T+1" if first == 1 else "T")
        return forward if direction(graph, role) > 0 else forward[::-1]

    states = {state.key for state in cell.states}
    cell_targets = {eq.target for eq in cell.equations}
    out: list[NameInfo] = list(_parameter_names(d))
    for key in graph.initials:
        entry = nota.name_of(key)
        pinned = cell.quantity(original_key(graph, key)).initial
        if pinned:
            start = "(an input: the cell file)" if pinned == "input" else "(zero: the cell file)"
        else:
            start = "(zero unless the spec has initial_state='input')"
        out.append(
            NameInfo(
                entry.initial,
                "initial state",
                f"initial {entry.description} = {entry.ascii}[{outside(entry.role)[0]}] "
                f"{_shape_text(symbols.series_shape(key))} {start}",
            )
        )
    for role, label in _labelled_roles(d):
        entry = nota.name_of(_base_role(role))
        key = original_key(graph, entry.key)
        before, after = outside(entry.role)
        shape = _shape_text(symbols.series_shape(entry.key))
        if role == entry.role:
            extra = f"; {entry.ascii}[{before}] is the initial state" if key in states else ""
            text = f"{entry.description} {shape}, t = {first}..{last}{extra}"
            out.append(NameInfo(f"{label}[t]", "series", text))
            continue
        of = f"{entry.ascii}[t]"
        if role.startswith("pre_adjoint_"):
            tree = cell.equation_of(key).tree if key in cell_targets else None
            fn = (
                tree.func.id
                if isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)
                else "f"
            )
            of = f"a, where {entry.ascii}[t] = {fn}(a)"
        lead = "δ_t = " if label == "delta" else ""
        out.append(
            NameInfo(f"{label}[t]", "adjoint", f"{lead}∂L/∂{of} {shape}; {label}[{after}] = 0")
        )
    out.append(NameInfo("T", "scalar", "the number of steps"))
    out += [
        NameInfo("m", "size", "the batch size (examples per step)"),
        NameInfo("n_0", "size", "the input size"),
        NameInfo("n_1", "size", "the hidden size"),
        NameInfo("n_2", "size", "the output size"),
    ]
    out += [NameInfo(f"{name}(A)", "function", text) for name, text in _FUNCTION_INFO.items()]
    out += [
        NameInfo(f"{name}(A)", "function", f"elementwise {name}")
        for name in _function_names(cell)
        if name not in _FUNCTION_INFO
    ]
    out += [
        NameInfo("softmax(A)", "function", "softmax over the output units of each example"),
        NameInfo("ones(r, c)", "function", "the r x c matrix of ones (r, c: sizes or integers)"),
        NameInfo("diag(v)", "function", "the diagonal matrix of a vector (batch size 1)"),
        NameInfo("sum_t(...)", "reducer", f"sum over the steps t = {first}..{last}"),
        NameInfo(
            "sum_k(...)",
            "reducer",
            f"inside sum_t: sum over k = {first}..t; outside: over k = {first}..{last}, t = {last}",
        ),
        NameInfo("sum_tau(...)", "reducer", f"inside sum_t: sum over tau = t..{last}"),
        NameInfo(
            "prod_j(...)",
            "reducer",
            "inside sum_k: body(t) @ body(t-1) @ ... @ body(k+1) (identity when k = t); "
            "inside sum_tau: body(tau) @ ... @ body(t+1)",
        ),
    ]
    return tuple(out)


def names_text(notation: str | Notation | ModelSpec | Derivation) -> str:
    """:func:`names` as a block of text, one name a line."""
    spec = _spec_of(notation)
    cell = "" if spec.cell == "elman" else f"{spec.model.name} cell, "
    composed = []
    if spec.layers > 1:
        composed.append(f"{spec.layers} layers")
    if spec.direction != "forward":
        composed.append(spec.direction)
    if spec.masked:
        composed.append("masked")
    more = "".join(f", {part}" for part in composed)
    lines = [f"expression language names ({cell}{spec.notation}{more}):"]
    lines += [f"  {info}" for info in names(spec)]
    lines.append("  operators: @ (matrix product), * (elementwise), / + - ** .T")
    from .formulas import model_equations  # printed from the derivation (formulas reads names)

    rows = model_equations(spec)
    width = max(len(lhs) for lhs, _ in rows)
    lines.append("model equations at a generic step t (printed from the derivation):")
    lines += [f"  {lhs:<{width}} = {rhs}" for lhs, rhs in rows]
    return "\n".join(lines)
