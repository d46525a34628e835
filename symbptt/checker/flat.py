"""The checker's view of a composed model: one role per (unit, quantity).

A composed model (``docs/composition.md``) runs one cell per (layer,
direction); every unit's registry names its symbols with the unit's tag
(``h_1f``, ``delta_2b``), but the roles in the shared ``meta`` are the cell's
(every unit's hidden state has the role of ``h``).  The checker reads
``(role, step)`` everywhere (its names, its tables, its mutations), so
:func:`flatten` gives it a derivation whose registry and notation have one role
per unit and quantity, read from the registries (``symbols.registries``,
``symbols.owner``), never from the names: the unit's role is the cell's role
with the unit's tag (``hidden_1f``), its key the unit's name of the key
(``h_1f``, as ``graph.initials`` has it).  The input, the output layer and the
targets keep their roles; the mask of a masked model is ``M[t]``.

A plain model is returned as it is.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import sympy as sp

from ..core.derive import Derivation
from ..core.graph import Assignment, Graph, Symbols
from ..model import HEAD_KEYS, Name, Notation, Unit

__all__ = ["MASK", "FlatSymbols", "direction", "flat_symbols", "flatten", "unit_of"]

#: The expression language's name of the mask (1 where an example's step is real).
MASK = "M"

_PREFIXES = ("pre_adjoint_", "adjoint_")


def _split(role: str) -> tuple[str, str]:
    for prefix in _PREFIXES:
        if role.startswith(prefix):
            return prefix, role[len(prefix) :]
    return "", role


def _qualified(role: str, unit: Unit) -> str:
    prefix, base = _split(role)
    return prefix + unit.name(base)


class FlatSymbols:
    """The registry a check reads: the composed model's symbols, one role per unit.

    It answers what the checker asks a :class:`~symbptt.core.graph.Symbols` (``meta``,
    ``series_shape``, ``cell``, ``sizes``, ...) and, besides, which unit a role
    belongs to and in which direction that unit runs.
    """

    def __init__(self, root: Symbols, notation: Notation, meta: dict[Any, tuple[str, Any]]):
        self.root = root
        self.notation = notation
        self.meta = meta
        self.cell = root.cell
        self.spec = root.spec
        self.sizes = root.sizes
        self.layout = root.layout
        self.params = root.params
        self.initials = root.initials
        self.contributes_to = root.contributes_to
        self.key_of_param = root.key_of_param
        self.step_name = Symbols.step_name
        #: a unit's role (``hidden_1f``) -> (its registry, its entry in the unit's notation)
        self._units: dict[str, tuple[Symbols, Name]] = {}
        for registry in root.registries:
            assert registry.unit is not None
            for entry in registry.notation.names:
                if entry.kind == "series" and entry.key not in _shared_keys(root):
                    self._units[_qualified(entry.role, registry.unit)] = (registry, entry)

    def unit_of(self, role: str) -> Unit | None:
        """The unit of a role (an adjoint's: its quantity's unit); None for the shared ones."""
        found = self._units.get(_split(role)[1])
        return found[0].unit if found is not None else None

    def original_key(self, role: str) -> str:
        """The cell's key of a unit's role (``hidden_1f`` -> ``h``; ``h_new`` for a candidate)."""
        found = self._units.get(_split(role)[1])
        return found[1].key if found is not None else self.notation.name_of(role).key

    def series_shape(self, role: str) -> tuple[Any, Any]:
        entry = self.notation.name_of(role)
        if entry.role == "mask":
            batch, one = self.sizes["batch"], sp.Integer(1)
            return (one, batch) if self.layout == "column" else (batch, one)
        found = self._units.get(entry.role)
        if found is not None:
            return found[0].series_shape(found[1].role)
        return self.root.series_shape(entry.role)


def _shared_keys(root: Symbols) -> set[str]:
    """The keys every unit shares: the model's input and the output layer's."""
    return {q.key for q in root.cell.inputs} | set(HEAD_KEYS)


def unit_of(graph: Graph, role: str) -> Unit | None:
    """The unit a role of ``graph`` belongs to (None in a plain model, or a shared role)."""
    symbols = graph.symbols
    return symbols.unit_of(role) if isinstance(symbols, FlatSymbols) else None


def direction(graph: Graph, role: str) -> int:
    """+1 where the role's unit runs t = 1..T, -1 where it runs back (t = T..1)."""
    unit = unit_of(graph, role)
    return 1 if unit is None else unit.step


def original_key(graph: Graph, key: str) -> str:
    """The cell file's key of a unit's key (``h_1f`` -> ``h``)."""
    symbols = graph.symbols
    if not isinstance(symbols, FlatSymbols):
        return key
    return symbols.original_key(graph.notation.name_of(key).role)


def _notation(root: Symbols) -> Notation:
    """The notation of the flat view: the shared names, every unit's series, the mask."""
    names: list[Name] = []
    for registry in root.registries:
        unit = registry.unit
        assert unit is not None
        where = _unit_text(unit, root.program.layers, root.program.bidirectional)
        for entry in registry.notation.names:
            if entry.kind != "series" or entry.key in _shared_keys(root):
                continue
            names.append(
                replace(
                    entry,
                    key=unit.name(entry.key),
                    role=_qualified(entry.role, unit),
                    description=f"{entry.description}{where}",
                )
            )
    shared = [e for e in root.notation.names if e.kind == "series" and e.key in _shared_keys(root)]
    params = [e for e in root.notation.names if e.kind == "param"]
    extra: list[Name] = []
    if root.spec.masked:
        extra.append(
            Name(
                key="mask",
                kind="series",
                ascii=MASK,
                latex="M",
                description="the mask: 1 where the example's step is real, 0 where padded",
                role="mask",
            )
        )
    return replace(root.notation, names=tuple(params + shared + names + extra))


def _unit_text(unit: Unit, layers: int, bidirectional: bool) -> str:
    parts = []
    if layers > 1:
        parts.append(f"layer {unit.layer}")
    if bidirectional:
        parts.append(f"{unit.direction} direction")
    return f" ({', '.join(parts)})" if parts else ""


def flat_symbols(root: Symbols) -> FlatSymbols:
    """The flat view of a composed model's registry (one role per unit and quantity): the
    derivation's (:func:`flatten`) or its generic step's (``step_form.symbols``)."""
    keys = _shared_keys(root)
    shared = {e.role for e in root.notation.names if e.key in keys}
    meta: dict[Any, tuple[str, Any]] = {}
    for symbol, (role, step) in root.meta.items():
        owner = root.owner.get(symbol)
        if owner is not None and owner.unit is not None and _split(role)[1] not in shared:
            role = _qualified(role, owner.unit)
        meta[symbol] = (role, step)
    return FlatSymbols(root, _notation(root), meta)


def flatten(d: Derivation) -> Derivation:
    """``d`` with one role per (unit, quantity) (see the module docstring); plain: ``d``."""
    root = d.graph.symbols
    if not root.registries:
        return d
    symbols = flat_symbols(root)
    notation, meta = symbols.notation, symbols.meta

    def renamed(assignments: tuple[Assignment, ...]) -> tuple[Assignment, ...]:
        out = []
        for a in assignments:
            if a.target in meta and a.kind == root.meta[a.target][0]:
                a = replace(a, kind=meta[a.target][0])
            out.append(a)
        return tuple(out)

    graph = replace(
        d.graph,
        notation=notation,
        symbols=symbols,  # type: ignore[arg-type]
        assignments=renamed(d.graph.assignments),
    )
    return replace(d, graph=graph, assignments=renamed(d.assignments))
