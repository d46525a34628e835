"""Callable candidates: the arrays they are called with, and the reference they meet."""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import sympy as sp

from ..model.spec import ModelSpec
from .flat import FlatSymbols
from .limits import RTOL_FLOAT
from .namespace import _state_initials
from .points import _close, _Point, _points, _run, _target
from .work import _Work, _work

#: The argument conventions of a callable candidate (``check(..., convention=...)``).
CONVENTIONS = ("time_major", "batch_major")


class CallableFailed(Exception):
    """The callable candidate raised: reported as the check's result, not a traceback."""


def _arrays(
    work: _Work, leaves: Mapping[Any, np.ndarray], convention: str = "time_major"
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray | None]]:
    """A callable's arguments for a point's leaves.

    ``(params, X, Y, initial_states)``: the initial states by keyword, the
    state's key and ``0`` (``h0``, ``c0``), each (m, n) or None when zero.
    ``time_major`` is the generated module's convention: X (T, m, n_in), Y (T,
    m, n_out) (or (m, n_out) for many_to_one), biases (n, 1).  ``batch_major``
    is CS231n's and d2l's: X (m, T, n_in), biases (n,), and for cross-entropy
    integer labels, Y (m, T) (or (m,)); other losses get Y (m, T, n_out).
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
    for keyword, initial in _initial_keywords(work).items():
        given = isinstance(initial, sp.MatrixSymbol)  # an input; a zero start passes None
        initials[keyword] = batch_major(leaves[initial]) if given else None
    if graph.masks:  # (T, m): 1 where an example's step is real
        mask = np.stack([np.asarray(leaves[m], dtype=float).reshape(-1) for m in graph.masks])
        initials["mask"] = mask.T.copy() if convention == "batch_major" else mask
    if convention == "batch_major":
        X = np.swapaxes(X, 0, 1).copy()
        if Y.ndim == 3:
            Y = np.swapaxes(Y, 0, 1).copy()
        if work.spec.loss == "cross_entropy":
            Y = np.argmax(Y, axis=-1)  # the points of a callable have one-hot targets
        for name in _per_unit(work):
            params[name] = params[name][:, 0].copy()
    return params, X, Y, initials


def _initial_keywords(work: _Work) -> dict[str, Any]:
    """The keyword of each initial state (``h0``, ``c0``; a unit's ``h0_1f``) -> its symbol.

    A state that the cell file starts at zero has no keyword (a generated module
    takes none for it); one that starts at zero by the spec's ``initial_state``
    gets None.
    """
    graph = work.graph
    symbols = graph.symbols
    cell = work.spec.model
    if not isinstance(symbols, FlatSymbols):
        return {
            f"{key}0": initial
            for key, initial in graph.initials.items()
            if cell.quantity(key).initial != "zero"
        }
    out = {}
    for registry in symbols.root.registries:
        assert registry.unit is not None
        for state in registry.cell.states:
            if state.initial != "zero":
                out[registry.unit.name(f"{state.key}0")] = registry.initials[state.key]
    return out


def _per_unit(work: _Work) -> list[str]:
    """The ASCII names of the parameters that are per unit (biases, vectors): (n, 1)."""
    symbols = work.graph.symbols
    keys = {p.key for p in symbols.cell.parameters if p.kind in ("bias", "vector")} | {"b_out"}
    return [name for name in work.graph.params if symbols.key_of_param(name) in keys]


def _call(
    fn: Callable[..., Any],
    work: _Work,
    leaves: Mapping[Any, np.ndarray],
    name: str,
    convention: str = "time_major",
    expected: tuple[int, int] | None = None,
) -> Any:
    """The callable's gradient of ``name`` at a point (None where it is not finite).

    Raises:
        CallableFailed: the callable raised.
    """
    params, X, Y, initials = _arrays(work, leaves, convention)
    try:
        result = fn(params, X, Y, **initials)
    except Exception as exc:  # the user's code: any failure is the check's result
        raise CallableFailed(f"{type(exc).__name__}: {exc}") from None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
        result = result[1]
    if isinstance(result, Mapping):
        if name not in result:
            found = ", ".join(map(str, result))
            raise ValueError(f"the callable returned a dict without {name!r} (it has {found})")
        result = result[name]
    try:
        value = np.asarray(result, dtype=float)
    except (TypeError, ValueError) as exc:
        raise CallableFailed(f"it returned {type(result).__name__}, not an array ({exc})") from None
    if (
        convention == "batch_major"
        and expected is not None
        and value.ndim == 1
        and expected[1] == 1
        and value.shape[0] == expected[0]
    ):
        value = value.reshape(expected)  # a 1-D bias gradient
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
        from ..codegen.emit import emit_numpy, load_module
    except ImportError as exc:
        return None, f"code generation is not available: {exc}"
    try:
        return load_module(emit_numpy(spec)), ""
    except Exception as exc:  # any failure of code generation: fall back
        return None, f"code generation failed: {type(exc).__name__}: {exc}"


def _gates(work: _Work) -> dict[str, str]:
    """Parameter (ASCII) -> the quantity whose equation reads it (a gate: ``f``), or the output."""
    symbols = work.graph.symbols
    cell = symbols.cell
    out: dict[str, str] = {}
    if isinstance(symbols, FlatSymbols):  # every unit's gates: f_1f for W_hf_1f
        units = [(r.notation, r.split) for r in symbols.root.registries]
    else:
        units = [(work.notation, {})]
    for notation, split in units:
        by_key: dict[str, list[str]] = {}
        for e in notation.params:
            parts = split.get(e.key)
            by_key[e.key] = [p.name for p, _ in parts] if parts else [e.ascii]
        for eq in cell.equations:
            label = notation.name_of(eq.target).ascii
            for node in ast.walk(eq.tree):
                if isinstance(node, ast.Name) and node.id in by_key:
                    for name in by_key[node.id]:
                        out.setdefault(name, label)
    for name in work.graph.params:
        if symbols.key_of_param(name) in ("W_out", "b_out"):
            out.setdefault(name, "the output layer")
    return out


def _unwrap(result: Any) -> Any:
    """A callable's result without its loss: ``(loss, grads)`` gives ``grads``."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
        return result[1]
    return result


def _differs(value: Any, expected: np.ndarray) -> bool:
    try:
        array = np.asarray(value, dtype=float).reshape(expected.shape)
    except (TypeError, ValueError):
        return True
    return not _close(array, expected, 1e-6)


def _gate_verdict(
    work: _Work, result: Mapping[str, Any], expected: Mapping[str, np.ndarray]
) -> tuple[list[str], list[str], list[str]] | None:
    """(gates right, gates wrong, gradients wrong) of a dict of gradients; None: fewer than two.

    A gate is right when every gradient of its parameters the dict holds is.
    """
    gates = _gates(work)
    right: dict[str, bool] = {}
    wrong_names = []
    for name in work.graph.params:
        if name not in result or name not in gates or name not in expected:
            continue
        ok = not _differs(result[name], expected[name])
        right[gates[name]] = right.get(gates[name], True) and ok
        if not ok:
            wrong_names.append(name)
    if len(right) < 2:
        return None
    return (
        [g for g, ok in right.items() if ok],
        [g for g, ok in right.items() if not ok],
        wrong_names,
    )


def _gates_text(verdict: tuple[list[str], list[str], list[str]]) -> str:
    good, bad, _ = verdict
    return f"gates right: {', '.join(good) or 'none'}; wrong: {', '.join(bad) or 'none'}"


def _cut(
    work: _Work, arrays: tuple[Any, ...], k: int, time_axis: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray | None]]:
    """A callable's arguments for the first ``k`` steps (one target in many_to_one)."""
    params, X, Y, initials = arrays
    params = {key: value.copy() for key, value in params.items()}
    if initials.get("mask") is not None:
        initials = {**initials, "mask": np.take(initials["mask"], range(k), axis=time_axis)}
    X = np.take(X, range(k), axis=time_axis)
    if work.spec.mode == "many_to_many":
        Y = np.take(Y, range(k), axis=time_axis)
    return params, X, Y, initials


def _steps_text(work: _Work, k: int) -> str:
    steps = work.graph.steps
    of = f"of {len(steps)}" if steps[0] == 1 else f"of {steps[0]}..{steps[-1]}"
    return f"first differs at step {steps[k - 1]} ({of})"


@dataclass(frozen=True)
class Localised:
    """Where a callable goes wrong: notes for the report, and the fields of the result."""

    notes: tuple[str, ...] = ()
    first_step: int | None = None
    gates_right: tuple[str, ...] | None = None
    gates_wrong: tuple[str, ...] | None = None


def localise(
    work: _Work,
    fn: Callable[..., Any],
    convention: str,
    point: _Point,
    name: str,
    reference: _Reference,
) -> Localised:
    """Where a differing callable goes wrong: the first step, and which gates are right.

    The callable is run on the point's sequences cut to their first k = 1, 2,
    ... steps and compared with the generated module of the same model with k
    steps (a model in its own right: its loss is over the k steps, a
    many_to_one model's target stays the last step's); the first k where the
    gradient of ``name`` differs is the step reported.  When the callable
    returns a dict of gradients, the gates whose gradients are right at that
    k (a gate is the quantity whose equation reads the parameter: ``f`` for
    ``W_xf``, ``W_hf``, ``b_f``) and at every step are said too.  Without a
    generated module (a composed model, today) the model of k steps is the
    derivation of k steps, evaluated in float64.
    """
    steps = len(work.graph.steps)
    time_axis = 1 if convention == "batch_major" else 0
    arrays = _arrays(work, point.leaves, convention)
    own = _arrays(work, point.leaves)
    notes: list[str] = []
    first: int | None = None
    first_verdict = None
    for k in range(1, steps):
        params, X, Y, initials = _cut(work, arrays, k, time_axis)
        try:
            result = _unwrap(fn(params, X, Y, **initials))
        except Exception as exc:  # the user's code: say so, then go on without steps
            notes.append(
                f"no step localisation: the callable failed on the sequences cut to "
                f"{k} step{'s' * (k > 1)} ({type(exc).__name__}: {exc})"
            )
            break
        expected = _expected_cut(work, reference, point, own, k)
        if expected is None:
            break  # no reference of k steps: no step is said
        value = result.get(name) if isinstance(result, Mapping) else result
        if value is None or name not in expected:
            break  # nothing to compare: no step is said
        if _differs(value, expected[name]):
            first = k
            if isinstance(result, Mapping):
                first_verdict = _gate_verdict(work, result, expected)
            break
    else:
        first = steps
    full = _unwrap(_safe_call(fn, _arrays(work, point.leaves, convention)))
    if full is not None and not isinstance(full, Mapping):
        notes += _weight_paths(work, fn, convention, name, reference)
    full_verdict = None
    if isinstance(full, Mapping):
        expected = {key: reference.gradient(point, key) for key in work.graph.params}
        full_verdict = _gate_verdict(work, full, expected)
    if first is not None:
        text = _steps_text(work, first)
        verdict = full_verdict if first == steps else first_verdict
        if verdict is not None:
            text += f"; {_gates_text(verdict)}"
            if first < steps:
                text += f" (with the first {first} step{'s' * (first > 1)})"
        notes.append(text)
    if full_verdict is not None and (first is None or first < steps):
        notes.append(f"with all {steps} steps: {_gates_text(full_verdict)}")
    if full_verdict is not None and full_verdict[2]:
        notes.append(f"wrong gradients: {', '.join(full_verdict[2])}")
    if first is None:
        return Localised(tuple(notes))
    verdict = full_verdict if first == steps else first_verdict
    return Localised(
        tuple(notes),
        work.graph.steps[first - 1],
        None if verdict is None else tuple(verdict[0]),
        None if verdict is None else tuple(verdict[1]),
    )


#: How many points the weight-path test of a single array uses.
_PATH_POINTS = 3


def _recurrent_weights(work: _Work) -> dict[str, list[str]]:
    """Gate -> the parameters of its equation that read a state of the step before.

    Read from the derivation: a parameter whose contribution reads a state at
    another step than its own (``W_hf``: ``delta_f[t] @ h[t-1].T``).
    """
    graph = work.graph
    meta = graph.symbols.meta
    states = set(_state_initials(graph))
    gates = _gates(work)
    out: dict[str, list[str]] = {}
    for c in work.d.contributions:
        name = c.param
        if name not in gates or name in out.get(gates[name], []):
            continue
        for symbol in c.expr.free_symbols:
            role, at = meta.get(symbol, ("", None))
            if role in states and isinstance(at, int) and at != c.step:
                out.setdefault(gates[name], []).append(name)
                break
    return out


def _weight_paths(
    work: _Work, fn: Callable[..., Any], convention: str, name: str, reference: _Reference
) -> list[str]:
    """For a callable returning one array: the gate whose recurrent weights, set to zero,
    make it agree (the difference comes through what that gate carries back).

    Each gate's recurrent weights are zeroed in turn at a few points where the
    callable differs, and the callable is compared with the reference there.
    Said only when exactly one gate does it (and some other gate does not).
    """
    weights = _recurrent_weights(work)
    if len(weights) < 2:
        return []
    rows, cols = _target(work, name).shape
    expected_shape = (int(rows), int(cols))
    differing = []
    for p in _points(work, 1, _PATH_POINTS, one_hot=True):
        try:
            value = _call(fn, work, p.leaves, name, convention, expected_shape)
        except (CallableFailed, ValueError):
            return []
        if value is None or not _close(value, reference.gradient(p, name), RTOL_FLOAT):
            differing.append(p)
    if not differing:
        return []
    fixing = []
    for gate, names in weights.items():
        agrees = True
        for p in differing:
            leaves = dict(p.leaves)
            for weight in names:
                symbol = work.graph.params[weight]
                leaves[symbol] = np.zeros_like(leaves[symbol])
            at = _Point(work, leaves, p.kind)
            try:
                value = _call(fn, work, leaves, name, convention, expected_shape)
            except (CallableFailed, ValueError):
                return []
            if value is None or not _close(value, reference.gradient(at, name), RTOL_FLOAT):
                agrees = False
                break
        if agrees:
            fixing.append(gate)
    if len(fixing) != 1:
        return []
    (gate,) = fixing
    zeroed = ", ".join(weights[gate])
    others = ", ".join(w for g, names in weights.items() if g != gate for w in names)
    return [
        f"paths: with {zeroed} = 0 it agrees (at {len(differing)} points where it differs): "
        f"the difference comes through what the {gate} gate carries back to the step before "
        f"(through {zeroed}); with {others} = 0 in turn it still differs"
    ]


def _expected_cut(
    work: _Work, reference: _Reference, point: _Point, own: tuple[Any, ...], k: int
) -> dict[str, np.ndarray] | None:
    """Every gradient of the model cut to its first ``k`` steps, at ``point`` cut the same way.

    From the generated module of k steps where the reference is the generated
    module, else from the derivation of k steps evaluated in float64 (a
    composed model's, until code generation takes one).
    """
    cut = ModelSpec.from_mapping({**work.spec.as_dict(), "steps": k})
    if reference.module is not None:
        module, _ = _generated_module(cut)
        if module is None:
            return None
        rp, rX, rY, rinit = _cut(work, own, k, 0)
        try:
            _, expected = module.loss_and_gradients(rp, rX, rY, **rinit)
        except Exception:  # the generated module of k steps failed
            return None
        return {key: np.asarray(value, dtype=float) for key, value in expected.items()}
    small = _work(cut)
    graph, full = small.graph, work.graph
    leaves = {symbol: point.leaves[full.params[name]] for name, symbol in graph.params.items()}
    pairs = [(graph.inputs, full.inputs), (graph.masks, full.masks)]
    pairs.append((graph.targets, full.targets if len(full.targets) > 1 else full.targets[-1:]))
    for mine, theirs in pairs:
        leaves.update({a: point.leaves[b] for a, b in zip(mine, theirs, strict=False)})
    for key, initial in graph.initials.items():
        if full.initials[key] in point.leaves:  # initial_state = "input"
            leaves[initial] = point.leaves[full.initials[key]]
    env = _run(small, leaves, "float")
    return {name: np.asarray(env[_target(small, name)], dtype=float) for name in graph.params}


def _safe_call(fn: Callable[..., Any], arrays: tuple[Any, ...]) -> Any:
    params, X, Y, initials = arrays
    try:
        return fn(params, X, Y, **initials)
    except Exception:  # reported where the gradient itself is computed
        return None
