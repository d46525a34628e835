"""Callable candidates: the arrays they are called with, and the reference they meet."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import numpy as np

from ..spec import ModelSpec
from .points import _close, _Point, _target
from .work import _Work


def _arrays(
    work: _Work, leaves: Mapping[Any, np.ndarray]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray | None]]:
    """The generated module's arguments for a point's leaves.

    ``(params, X, Y, initial_states)``: the initial states by keyword, the
    state's key and ``0`` (``h0``, ``c0``), each (m, n) or None when zero.
    """
    graph = work.graph
    column = work.notation.layout == "column"

    def batch_major(value: np.ndarray) -> np.ndarray:
        return np.array(value.T if column else value)

    params = {name: np.array(leaves[symbol]) for name, symbol in graph.params.items()}
    X = np.stack([batch_major(leaves[x]) for x in graph.inputs])
    ys = [batch_major(leaves[y]) for y in graph.targets]
    Y = np.stack(ys) if work.spec.mode == "many_to_many" else ys[0]
    initials: dict[str, np.ndarray | None] = {}
    for key, initial in graph.initials.items():
        given = work.spec.initial_state == "input"
        initials[f"{key}0"] = batch_major(leaves[initial]) if given else None
    return params, X, Y, initials


def _call(fn: Callable[..., Any], work: _Work, leaves: Mapping[Any, np.ndarray], name: str) -> Any:
    params, X, Y, initials = _arrays(work, leaves)
    result = fn(params, X, Y, **initials)
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
        result = result[1]
    if isinstance(result, Mapping):
        if name not in result:
            found = ", ".join(map(str, result))
            raise ValueError(f"the callable returned a dict without {name!r} (it has {found})")
        result = result[name]
    value = np.asarray(result, dtype=float)
    if value.ndim == 2 and not np.all(np.isfinite(value)):
        return None
    return value


class _Reference:
    """The gradients of the generated NumPy module, where code generation works.

    The module is first compared with the derivation at one point; if it cannot
    be built or disagrees, the derivation (evaluated in float64) is the
    reference, and ``source`` says why.
    """

    def __init__(self, work: _Work, probe: _Point, name: str) -> None:
        self.work = work
        self.module, why = _generated_module(work.spec)
        if self.module is not None:
            try:
                agrees = _close(
                    self._module_gradient(probe, name), probe.env_f[_target(work, name)], 1e-9
                )
            except Exception as exc:  # any failure of the generated code: fall back
                agrees, why = False, f"the generated module failed: {type(exc).__name__}: {exc}"
            if not agrees:
                self.module = None
                why = why or "the generated module disagrees with the derivation"
        if self.module is not None:
            self.source = "the generated NumPy module (symbptt.emit_numpy)"
        else:
            self.source = f"the derivation evaluated in float64 ({why})"

    def _module_gradient(self, point: _Point, name: str) -> Any:
        params, X, Y, initials = _arrays(self.work, point.leaves)
        _, grads = self.module.loss_and_gradients(params, X, Y, **initials)
        return np.asarray(grads[name], dtype=float)

    def gradient(self, point: _Point, name: str) -> Any:
        if self.module is None:
            return point.env_f[_target(self.work, name)]
        return self._module_gradient(point, name)


@cache
def _generated_module(spec: ModelSpec) -> tuple[Any, str]:
    """The generated module of ``spec`` and, when there is none, why."""
    try:
        from .. import emit
    except ImportError as exc:
        return None, f"code generation is not available: {exc}"
    try:
        return emit.load_module(emit.emit_numpy(spec)), ""
    except Exception as exc:  # any failure of code generation: fall back
        return None, f"code generation failed: {type(exc).__name__}: {exc}"
