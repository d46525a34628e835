"""The concrete model a check runs on: the spec with its open sizes filled in, derived."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..core.derive import Derivation, StepForm, derive
from ..core.graph import Assignment, Graph
from ..expr.exprlang import Namespace
from ..model.notation import Notation
from ..model.spec import ModelSpec
from .flat import flatten
from .limits import _DEFAULT_SIZES, _SIZE_FIELDS, _SIZE_POOL
from .namespace import _table, namespace


@dataclass(frozen=True, eq=False)
class _Work:
    """A concrete version of the spec (sizes filled in), derived, with its namespace."""

    spec: ModelSpec
    d: Derivation
    ns: Namespace
    table: dict[tuple[str, int], Any]
    forward: tuple[Assignment, ...]
    sizes: dict[str, int]
    #: the generic step (None for a composed model: the checker reads its steps from the
    #: concrete assignments, whose flat roles its tables use; ``flatten``)
    form: StepForm | None

    @property
    def graph(self) -> Graph:
        return self.d.graph

    @property
    def notation(self) -> Notation:
        return self.d.graph.notation


def _concrete(spec: ModelSpec) -> ModelSpec:
    given = {getattr(spec, key) for key, _ in _SIZE_FIELDS if getattr(spec, key) is not None}
    changes: dict[str, int] = {}
    used = set(given)
    for key, _ in _SIZE_FIELDS:
        if getattr(spec, key) is not None:
            continue
        preferred = _DEFAULT_SIZES[key]
        if preferred in used:
            preferred = next(v for v in _SIZE_POOL if v not in used)
        changes[key] = preferred
        used.add(preferred)
    return ModelSpec.from_mapping({**spec.as_dict(), **changes}) if changes else spec


@lru_cache(maxsize=32)
def _derivation(spec: ModelSpec) -> Derivation:
    """The derivation the checker reads (a composed model's as :func:`flatten` shows it)."""
    return flatten(derive(spec))


@lru_cache(maxsize=32)
def _work(spec: ModelSpec) -> _Work:
    concrete = _concrete(spec)
    d = _derivation(concrete)
    forward = tuple(a for a in d.graph.assignments if a.kind not in ("loss", "total_loss"))
    sizes = {key: getattr(concrete, key) for key, _ in _SIZE_FIELDS}
    form = None if spec.composed else d.step_form
    return _Work(concrete, d, namespace(d), _table(d.graph), forward, sizes, form)


@lru_cache(maxsize=32)
def _namespace_of(spec: ModelSpec) -> Namespace:
    return namespace(_derivation(spec))


def _resolve_wrt(d: Derivation, wrt: str) -> str:
    if wrt in d.gradients:
        return wrt
    holders: dict[str, list[str]] = {}
    for name, role in d.roles.items():
        holders.setdefault(role, []).append(name)
    # a role names a gradient only where one parameter has it (not every unit's W_hh_1f, ...)
    by_role = {role: names[0] for role, names in holders.items() if len(names) == 1}
    if wrt in by_role:
        return by_role[wrt]
    if wrt in holders:
        raise ValueError(
            f"wrt: the role {wrt!r} belongs to several parameters in this model "
            f"({', '.join(holders[wrt])}); name one of them"
        )
    roles = f" (or a role: {', '.join(by_role)})" if by_role else ""
    raise ValueError(
        f"wrt: no gradient named {wrt!r}; this model has {', '.join(d.gradients)}{roles}"
    )
