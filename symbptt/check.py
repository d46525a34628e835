"""Check a hand-derived BPTT gradient against the derivation.

::

    r = symbptt.check(spec, wrt="W_hy", candidate="sum_t((y_hat[t] - y[t]) @ h[t].T)")
    r.ok           # True or False
    r.explain()    # a short, readable report

Every cell works the same way (the Elman RNN in its four notations, the LSTM,
the GRU, a user's cell file): the names come from the model's symbol registry.

A candidate is one of

* a string in the expression language of :mod:`symbptt.exprlang` over the
  names of the model (:func:`names` lists them; below);
* a SymPy matrix expression in the derivation's symbols (``derive(spec)``:
  parameters, ``graph.symbols.series(key, step)``, the adjoints ``delta_t``,
  ``dc_t``, ``delta_i_t``, ...);
* a Python callable ``f(params, X, Y, **initial_states)`` taking the arrays of
  the generated NumPy module (time-major ``X`` (T, m, n_in), ``Y`` (T, m,
  n_out) or (m, n_out) for many_to_one, ``params`` by ASCII name in the
  notation's shapes with biases (n, 1)) and one keyword per recurrent state,
  its key and ``0`` (``h0``; an LSTM's ``h0`` and ``c0``), each (m, n_hidden)
  or None when the spec's initial state is zero; it returns the gradient of
  ``wrt`` (an initial state's in the notation's shape), or a dict holding it
  under that name, or ``(loss, dict)``.

Verdicts
--------
Expressions are evaluated at ``points`` random instances of the model (sizes
left symbolic in the spec get small distinct values) in 30-digit arithmetic,
with every forward quantity (h, ŷ, ...) and every δ_t computed by the
derivation; the expected value is the derivation's gradient at the same
point.  When the candidate agrees everywhere the checker tries to prove it:
both sides become explicit matrices at those sizes whose entries are
polynomials (over the rationals) in the entries of the parameters, inputs,
targets and forward quantities (and of f(q_t) for a forward quantity q_t, such
as an LSTM's tanh(c_t)), first with the adjoints the correct formula keeps by
name (δ_t) as symbols, then with them expanded (f(z_t) and softmax(o_t) in the
candidate read as h_t and ŷ_t), and they must be the same polynomials; the
report says ``method == "symbolic"`` when that succeeds, else ``"numeric at
N points, 30 digits"`` (the proof gives up on non-polynomial candidates and
past a work budget).  Callables are
compared in float64 (relative tolerance 1e-6) with the generated module (or,
where code generation is not available, with the derivation evaluated in
float64).  A candidate of the wrong shape gets ``method == "shape check"``.

When they differ the report gives a counterexample (the sizes, the numbers,
expected and candidate values), a localisation (which steps' terms differ,
which steps' losses the error involves, which rows and columns differ; with
one-hot targets whether it agrees on the target class's row) and which common
mistake the candidate matches, found by building the mutated correct formulas
and comparing values (never by looking at the text): a transpose, a sign, a
missing 1/T or 1/m factor, a missing recurrent term (only the t == k term),
W_hh where W_hh.T belongs, the activation's derivative taken at the
pre-activation (1 - z**2) or applied to the output (1 - tanh(h)**2) or
missing, an off-by-one step (h[t] for h[t-1]), only the last step's term, a
dropped softmax + cross-entropy target term (-(1 - y_hat) or
-y * (1 - y_hat) where y_hat - y belongs), or the gradient with respect to
another quantity (∂L/∂y_hat_t instead of ∂L/∂W).  The correct formula is
printed in the same language (``sum_t(delta[t] @ h[t-1].T)``, with the δ
recursion).  A candidate whose shape cannot match is reported with both
shapes.  Malformed text raises :class:`~symbptt.exprlang.ExpressionError`
(shape errors inside the formula included); nothing in it is executed.

Names of the expression language
--------------------------------
Every parameter by its ASCII name in the notation (``W_hh``; ``W_xi``, ...);
every initial state by its name (``h_0``; an LSTM's ``h_0`` and ``c_0``);
every step-indexed quantity of the cell and the output layer as ``name[t]``
(Elman xh: ``x z h o y_hat y``; LSTM xh: ``x i f o g c h s y_hat y``); the
adjoint of each, ∂L/∂q[t], by the notation's adjoint name (``dh[t]``,
``dc[t]``; ``delta[t]`` for the Elman pre-activation); and for a quantity
``q[t] = f(a)`` the adjoint of its argument, ``delta_q[t]`` (an LSTM's
``delta_i[t]`` = ∂L/∂(W_xi x[t] + W_hi h[t-1] + b_i)).  For the Elman cell:

=====================  =============  =============  ================  ==============
role                   xh             uvw            layered           aa
=====================  =============  =============  ================  ==============
input weight           ``W_xh``       ``U``          ``W_1``           ``w_ax``
recurrent weight       ``W_hh``       ``W``          ``W_h1``          ``w_aa``
output weight          ``W_hy``       ``V``          ``W_2``           ``w_ya``
hidden bias            ``b_h``        ``b_h``        ``beta_1``        ``b_a``
output bias            ``b_y``        ``b_y``        ``beta_2``        ``b_y``
input                  ``x[t]``       ``x[t]``       ``X[t]``          ``x[t]``
hidden pre-activation  ``z[t]``       ``a[t]``       ``Z1[t]``         ``net_a[t]``
hidden state           ``h[t]``       ``h[t]``       ``H1[t]``         ``a[t]``
output pre-activation  ``o[t]``       ``o[t]``       ``Z2[t]``         ``net_y[t]``
prediction             ``y_hat[t]``   ``y_hat[t]``   ``Y_hat[t]``      ``y[t]``
target                 ``y[t]``       ``y[t]``       ``Y[t]``          ``y_hat[t]``
initial state          ``h_0``        ``h_0``        ``H_init``        ``a_0``
same as                ``h[0]``       ``h[0]``       ``H1[-1]``        ``a[0]``
=====================  =============  =============  ================  ==============

``T`` is the number of steps, ``m`` the batch size and ``n_0``, ``n_1``,
``n_2`` the input, hidden and output sizes; the functions are ``tanh exp log
sigmoid`` (elementwise, and any other function the cell's equations call),
``softmax`` (over the output units), ``ones(rows, cols)`` and
``diag(vector)``; the reducers ``sum_t``, ``sum_k`` and ``prod_j``
(:mod:`symbptt.exprlang`).  Steps run 1..T (0..T-1 in Elman's ``layered``);
a state one step before the first is its initial value, an adjoint one step
after the last is zero (so is one at a step nothing reaches), a cell's
quantity one step after the last may appear only where such a zero adjoint
cancels it (``dc[t+1] * f[t+1]``), and any other step outside the model is
an error.  In many_to_one models only the last step has an output and a
target.  As in its seed, the ``aa`` notation calls the prediction ``y`` and
the target ``y_hat``.

The correct formula keeps by name the adjoints that carry the recursion (read
one step later: δ_{t+1}; an LSTM's dc_{t+1}, δ^i_{t+1}, ...) or that two other
adjoints read (an LSTM's dh_t), each with its line of the recursion; other
adjoints are written out.  The named mistakes below (a missing recurrent term,
the activation's derivative) are searched where the cell's file tags the Elman
roles (hidden, pre_activation, recurrent_weight); for other cells only the
cell-independent ones (transpose, sign and factors, off-by-one step, the last
step only, the output layer's, another quantity's gradient) are, and a
difference no mistake explains says so.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, TypeAlias

import mpmath
import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix

from . import exprlang, functions, mexpr
from .derive import Derivation, StepForm, derive
from .evaluate import Evaluator
from .exprlang import ExpressionError, Namespace
from .graph import T_SYMBOL, Assignment, Graph, Symbols
from .model import load_cell
from .notation import NOTATIONS, Notation
from .spec import MAX_CHECK_STEPS, ModelSpec, SpecError

__all__ = [
    "DPS",
    "CheckResult",
    "Counterexample",
    "Formula",
    "Mistake",
    "NameInfo",
    "check",
    "correct_formula",
    "model_equations",
    "names",
    "names_text",
    "namespace",
]

#: Working precision of the numeric verdict (significant digits).
DPS = 30
#: Relative tolerance of the 30-digit comparison (relative to max(1, |expected|)).
RTOL_MP = 1e-20
#: Relative tolerance of float64 comparisons (callables, screening).
RTOL_FLOAT = 1e-6
#: The largest literal size ``ones(...)`` accepts.
MAX_ONES = 256
#: Arguments of elementwise functions larger than this are refused in 30-digit
#: evaluation (exp(exp(exp(...))) would otherwise run for ever).
_MAX_MP_ARGUMENT = 1e5
#: How many points the mistake search screens (float64).
_SCREEN = 3

_SIZE_FIELDS = (("n_in", "n_0"), ("n_hidden", "n_1"), ("n_out", "n_2"), ("batch", "m"))
_DEFAULT_SIZES = {"n_in": 3, "n_hidden": 4, "n_out": 5, "batch": 2}
_SIZE_POOL = (3, 4, 5, 2, 6, 7, 8, 9)


# =============================================================================== names
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


def _step_roles(d: Derivation) -> list[str]:
    """Every step-indexed role of the model: series in the notation's order, then adjoints."""
    found: set[str] = set()
    for meta in (d.graph.symbols.meta, d.step_form.symbols.meta):
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
    owners.update({name: "reserved" for name in ("t", "k", "j", "T", "sum_t", "sum_k", "prod_j")})
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
}


def names(notation: str | Notation | ModelSpec | Derivation) -> tuple[NameInfo, ...]:
    """The names of the expression language of a model.

    ``notation`` is a spec (any cell), a derivation, or a notation of the Elman
    cell by name (``"aa"``).  The names come from the model's symbol registry:
    every parameter, initial state, step-indexed quantity and adjoint.
    """
    spec = _spec_of(notation)
    d = _generic_derivation(spec.cell, spec.notation)
    nota = d.graph.notation
    cell = d.graph.symbols.cell
    first = nota.t0
    last = "T" if first == 1 else "T-1"
    before = first - 1
    after = "T+1" if first == 1 else "T"
    symbols = d.graph.symbols
    states = {state.key for state in cell.states}
    cell_targets = {eq.target for eq in cell.equations}
    out: list[NameInfo] = []
    for param in nota.params:
        shape = _shape_text(symbols.param_shape(param.key))
        out.append(NameInfo(param.ascii, "parameter", f"{param.description} {shape}"))
    for state in cell.states:
        entry = nota.name_of(state.key)
        out.append(
            NameInfo(
                entry.initial,
                "initial state",
                f"initial {entry.description} = {entry.ascii}[{before}] "
                f"{_shape_text(symbols.series_shape(state.key))} "
                "(zero unless the spec has initial_state='input')",
            )
        )
    for role, label in _labelled_roles(d):
        entry = nota.name_of(_base_role(role))
        shape = _shape_text(symbols.series_shape(entry.key))
        if role == entry.role:
            extra = f"; {entry.ascii}[{before}] is the initial state" if entry.key in states else ""
            text = f"{entry.description} {shape}, t = {first}..{last}{extra}"
            out.append(NameInfo(f"{label}[t]", "series", text))
            continue
        of = f"{entry.ascii}[t]"
        if role.startswith("pre_adjoint_"):
            tree = cell.equation_of(entry.key).tree if entry.key in cell_targets else None
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
        NameInfo("sum_k(...)", "reducer", f"inside sum_t: sum over k = {first}..t"),
        NameInfo(
            "prod_j(...)",
            "reducer",
            "inside sum_k: body(t) @ body(t-1) @ ... @ body(k+1) (identity when k = t)",
        ),
    ]
    return tuple(out)


def names_text(notation: str | Notation | ModelSpec | Derivation) -> str:
    """:func:`names` as a block of text, one name a line."""
    spec = _spec_of(notation)
    cell = "" if spec.cell == "elman" else f"{spec.model.name} cell, "
    lines = [f"expression language names ({cell}{spec.notation}):"]
    lines += [f"  {info}" for info in names(spec)]
    lines.append("  operators: @ (matrix product), * (elementwise), / + - ** .T")
    return "\n".join(lines)


# =========================================================================== namespace
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
    if role in initials and step == first - 1:
        return initials[role]
    base = _base_role(role)
    adjoint = base != role
    if adjoint and (step == last + 1 or (first <= step <= last and (base, step) in table)):
        # after the last step, or a step where nothing reaches it: zero
        return sp.ZeroMatrix(*graph.symbols.series_shape(base))
    if step == last + 1 and _base_role(role) == role and _in_cell(graph, role):
        return _after_last(graph, role, label, step)
    if first <= step <= last:
        raise ExpressionError(
            f"{label}[{step}] does not exist: in this many_to_one model only the last step "
            f"({last}) has an output and a target"
        )
    hint = ""
    if role in initials:
        hint = f" ({label}[{first - 1}] is the initial state)"
    elif adjoint:
        hint = f" ({label}[{last + 1}], one step after the last, is zero)"
    raise ExpressionError(
        f"{label}[{step}] is outside the model: its steps are {_steps_text(steps)}{hint}"
    )


#: Stand-ins for a cell's quantity one step after the last, and why each may not stay.
_OUTSIDE: dict[Any, str] = {}


def _in_cell(graph: Graph, role: str) -> bool:
    cell = graph.symbols.cell
    keys = {q.key for q in cell.quantities}
    return graph.notation.name_of(role).key in keys


def _after_last(graph: Graph, role: str, label: str, step: int) -> Any:
    """``f[T+1]``: allowed only where an adjoint one step after the last (zero) cancels it.

    The recursion ``dc[t] = ... + dc[t+1] * f[t+1]`` holds at t = T too because
    dc[T+1] = 0; the stand-in vanishes with that product.  One left in a
    formula is refused by :func:`_refuse_outside`.
    """
    shape = graph.symbols.series_shape(role)
    symbol = sp.MatrixSymbol(f"{label}[{step}]", *shape)
    _OUTSIDE[symbol] = (
        f"{label}[{step}] is outside the model: its steps are {_steps_text(graph.steps)} "
        f"(one step after the last it may appear only multiplied by an adjoint of that "
        f"step, which is zero)"
    )
    return symbol


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
            return ElementwiseApplyFunction(lam, arg)
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

    tanh = functions.ACTIVATIONS["tanh"].function
    sigmoid = functions.ACTIVATIONS["sigmoid"].function
    out: dict[str, Callable[..., Any]] = {
        "tanh": _elementwise_fn("tanh", tanh, sp.tanh),
        "sigmoid": _elementwise_fn("sigmoid", sigmoid, lambda v: 1 / (1 + sp.exp(-v))),
        "exp": _elementwise_fn("exp", sp.Lambda(z, sp.exp(z)), sp.exp),
        "log": _elementwise_fn("log", sp.Lambda(z, sp.log(z)), sp.log),
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
    """The expression language's :class:`~symbptt.exprlang.Namespace` of a derivation.

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


# ============================================================================= printer
class _Printer:
    """Matrix expressions in the expression language (so the text parses back)."""

    def __init__(self, naming: Callable[[Any], str]) -> None:
        self.naming = naming

    def __call__(self, expr: Any) -> str:
        return self._p(expr)[0]

    def _wrap(self, expr: Any, least: int) -> str:
        text, prec = self._p(expr)
        return text if prec >= least else f"({text})"

    def _scalar(self, value: Any) -> tuple[str, int]:
        value = sp.sympify(value)
        if value.is_Symbol:
            return str(value), 4
        if value.is_Integer:
            return (str(value), 4) if value >= 0 else (str(value), 1)
        if isinstance(value, sp.Float):
            return str(value), 4
        num, den = sp.fraction(value)
        if den != 1:
            num_t = self._scalar_wrap(num)
            return f"{num_t} / {self._scalar_wrap(den)}", 2
        if isinstance(value, sp.Mul):
            return " * ".join(self._scalar_wrap(a) for a in value.args), 2
        if isinstance(value, sp.Add):
            return " + ".join(self._scalar(a)[0] for a in value.args), 1
        if isinstance(value, sp.Pow):
            return f"{self._scalar_wrap(value.base)}**{self._scalar_wrap(value.exp)}", 4
        return str(value), 4

    def _scalar_wrap(self, value: Any) -> str:
        text, prec = self._scalar(value)
        return text if prec >= 4 else f"({text})"

    @staticmethod
    def _negated(expr: Any) -> Any | None:
        """``-expr`` when ``expr`` carries a negative coefficient, else None."""
        if isinstance(expr, sp.MatMul):
            coeff, mats = expr.as_coeff_matrices()
            if coeff.could_extract_minus_sign():
                return mexpr.scale(-coeff, mats[0] if len(mats) == 1 else sp.MatMul(*mats))
        return None

    def _p(self, expr: Any) -> tuple[str, int]:
        if not mexpr.is_matrix(expr):
            return self._scalar(expr)
        if isinstance(expr, sp.MatrixSymbol):
            return self.naming(expr), 4
        if isinstance(expr, sp.MatAdd):
            return self._add(expr)
        if isinstance(expr, sp.MatMul):
            return self._mul(expr)
        if isinstance(expr, sp.Transpose):
            return f"{self._wrap(expr.arg, 4)}.T", 4
        if isinstance(expr, sp.HadamardProduct):
            return " * ".join(self._wrap(a, 3) for a in expr.args), 2
        if isinstance(expr, sp.HadamardPower):
            return f"{self._wrap(expr.base, 4)}**{self._scalar_wrap(expr.exp)}", 4
        if isinstance(expr, ElementwiseApplyFunction):
            return self._apply(expr)
        if isinstance(expr, mexpr.Softmax):
            return f"softmax({self(expr.arg)})", 4
        if isinstance(expr, DiagMatrix):
            return f"diag({self(expr.args[0])})", 4
        if isinstance(expr, sp.OneMatrix):
            rows, cols = expr.shape
            return f"ones({self._scalar(rows)[0]}, {self._scalar(cols)[0]})", 4
        if isinstance(expr, sp.ZeroMatrix):
            rows, cols = expr.shape
            return f"0 * ones({self._scalar(rows)[0]}, {self._scalar(cols)[0]})", 2
        if isinstance(expr, sp.Identity):
            return f"diag(ones({self._scalar(expr.shape[0])[0]}, 1))", 4
        return str(expr), 4

    def _apply(self, expr: Any) -> tuple[str, int]:
        body = expr.function.expr
        (var,) = expr.function.variables
        arg = self(expr.expr)
        if body == var:
            return self._p(expr.expr)
        for name in ("tanh", "sigmoid"):
            if expr.function == functions.ACTIVATIONS[name].function:
                return f"{name}({arg})", 4
        if isinstance(body, (sp.exp, sp.log, sp.tanh)) and body.args == (var,):
            return f"{type(body).__name__}({arg})", 4
        known = functions.activation_for(expr.function)
        return f"{known.name}({arg})", 4

    def _add(self, expr: Any) -> tuple[str, int]:
        terms: list[tuple[bool, str]] = []
        has_matrix_term = sum(1 for a in expr.args if not self._is_broadcast(a)) > 0
        for arg in expr.args:
            negated = self._negated(arg)
            body = negated if negated is not None else arg
            if has_matrix_term and self._is_broadcast(body):
                coeff, _ = mexpr.split_scale(body)
                text = self._scalar_wrap(coeff) if coeff != 1 else "1"
            else:
                text = self._wrap(body, 2)
            terms.append((negated is not None, text))
        terms.sort(key=lambda item: item[0])  # a positive term first: 1 - h**2
        first_neg, first_text = terms[0]
        out = ("-" + first_text) if first_neg else first_text
        for neg, text in terms[1:]:
            out += (" - " if neg else " + ") + text
        return out, 1

    @staticmethod
    def _is_broadcast(expr: Any) -> bool:
        _, rest = mexpr.split_scale(expr)
        return isinstance(rest, sp.OneMatrix)

    def _mul(self, expr: Any) -> tuple[str, int]:
        coeff, mats = expr.as_coeff_matrices()
        kept = [
            m
            for m in mats
            if not isinstance(m, sp.Identity)
            and not (isinstance(m, sp.OneMatrix) and m.shape == (1, 1))
        ]
        if not kept:
            kept = mats[:1]
        if len(kept) == 1:
            body, prec = self._p(kept[0])
        else:
            body, prec = " @ ".join(self._wrap(m, 3) for m in kept), 2
        if coeff == 1:
            return body, prec
        negative = coeff.could_extract_minus_sign()
        magnitude = -coeff if negative else coeff
        num, den = sp.fraction(magnitude)
        text = body if prec >= 2 else f"({body})"
        if num != 1:
            text = f"{self._scalar_wrap(num)} * {text}"
        if den != 1:
            text = f"{text} / {self._scalar_wrap(den)}"
        if negative:
            return "-" + text, 1
        return text, 2


def _naming(
    graph_symbols: Any, notation: Notation, shift: Callable[[str, Any], Any] | None = None
) -> Callable[[Any], str]:
    """Symbol -> its name in the expression language (``h[t-1]``, ``delta[3]``, ``W_hh``).

    Read from the registry's ``meta`` (role, step).  ``shift(role, step)`` may
    move the step printed for a role.
    """
    meta = graph_symbols.meta

    def name(symbol: Any) -> str:
        info = meta.get(symbol)
        if info is None:
            return str(symbol.name)
        role, step = info
        label = _label(notation, role) if step is not None else None
        if label is None:
            return str(symbol.name)
        if shift is not None:
            step = shift(role, step)
        return f"{label}[{Symbols.step_name(step)}]"

    return name


# ============================================================================ formulas
@dataclass(frozen=True)
class Formula:
    """The correct gradient in the expression language, with the δ recursion it uses."""

    gradient: str
    where: tuple[str, ...]

    def __str__(self) -> str:
        return "\n".join([self.gradient, *(f"  where {line}" for line in self.where)])


def _is_adjoint(kind: str) -> bool:
    return kind.startswith(("adjoint_", "pre_adjoint_"))


def _is_forward(notation: Notation, role: str) -> bool:
    """A step-indexed quantity of the forward pass (not an adjoint)."""
    return not _is_adjoint(role) and _label(notation, role) is not None


def _has_roles(notation: Notation, roles: Iterable[str]) -> bool:
    return all(any(entry.role == role for entry in notation.names) for role in roles)


def _kept(d: Derivation) -> tuple[str, ...]:
    """The adjoint roles the formulas keep by name (in the order the step computes them).

    Read from the generic step: an adjoint that the step reads one step later
    (it carries the recursion: δ_{t+1} in Elman, dc_{t+1} and δ^i_{t+1} in an
    LSTM) or that two other adjoints of the step read (dh_t in an LSTM).
    Every other adjoint is written out where it is used.
    """
    form = d.step_form
    meta = form.symbols.meta
    carried: set[str] = set()
    shared: set[str] = set()
    bodies = [form.backward] + ([form.last_backward] if form.last_backward else [])
    for body in bodies:
        readers: dict[str, int] = {}
        for a in body:
            seen: set[str] = set()
            for symbol in a.expr.free_symbols:
                role, step = meta.get(symbol, ("", None))
                if not _is_adjoint(role):
                    continue
                if isinstance(step, sp.Basic) and step != form.t:
                    carried.add(role)
                elif _is_adjoint(a.kind):
                    seen.add(role)
            for role in seen:
                readers[role] = readers.get(role, 0) + 1
        shared |= {role for role, count in readers.items() if count >= 2}
    order: list[str] = []
    for body in bodies:
        for a in body:
            if _is_adjoint(a.kind) and a.kind not in order and a.kind in carried | shared:
                order.append(a.kind)
    return tuple(order)


def _inline(assignments: Iterable[Assignment], kept: Iterable[str]) -> dict[Any, Any]:
    """Adjoint and contribution expressions with every adjoint not ``kept`` substituted."""
    keep = set(kept)
    defs: dict[Any, Any] = {}
    out: dict[Any, Any] = {}
    for a in assignments:
        expr = a.expr.xreplace(defs)
        if _is_adjoint(a.kind) and a.kind not in keep:
            defs[a.target] = expr
        out[a.target] = expr
    return out


def _contribution_of(assignments: Iterable[Assignment], name: str) -> Assignment | None:
    for a in assignments:
        if a.kind == "contribution" and a.param == name:
            return a
    return None


def _printers(d: Derivation) -> tuple[_Printer, _Printer, Any]:
    """Printers of the generic step form: at step t, and at the last step (T or T-1)."""
    form = d.step_form
    notation = d.graph.notation
    last_step = T_SYMBOL + notation.t0 - 1
    t = form.t
    printer = _Printer(_naming(form.symbols, notation))
    last_printer = _Printer(
        _naming(
            form.symbols,
            notation,
            lambda _, s: s.subs(t, last_step) if isinstance(s, sp.Basic) else s,
        )
    )
    return printer, last_printer, last_step


def model_equations(model: ModelSpec | Derivation) -> tuple[tuple[str, str], ...]:
    """The model's equations, printed in the expression language from its derivation.

    The forward assignments of the generic step ``t`` (the cell's equations,
    output pre-activation, prediction, the loss of a step) and the total loss,
    as ``(left-hand side, right-hand side)`` pairs.
    """
    d = model if isinstance(model, Derivation) else _derivation(model)
    printer, _, _ = _printers(d)
    notation = d.graph.notation
    rows: list[tuple[str, str]] = []
    step_losses: dict[Any, Any] = {}

    def loss_text(symbol: Any) -> str:
        _, step = d.step_form.symbols.meta.get(symbol) or d.graph.symbols.meta[symbol]
        return f"{notation.loss_ascii}[{Symbols.step_name(step)}]"

    for a in d.step_form.forward:
        if a.kind == "loss":
            node = a.expr
            rhs = f"{d.spec.loss}({printer(node.pred)}, {printer(node.target)})"
            rows.append((loss_text(a.target), rhs))
        else:
            rows.append((printer(a.target), printer(a.expr)))
    total = d.graph.assignments[-1]
    for symbol in total.expr.free_symbols:
        info = d.graph.symbols.meta.get(symbol)
        if info is not None and info[0] == "loss":
            step_losses[symbol] = sp.Symbol(loss_text(symbol))
    rows.append((str(total.target), printer(total.expr.xreplace(step_losses))))
    return tuple(rows)


def _recursion_lines(d: Derivation) -> tuple[str, ...]:
    """The kept adjoints' recursion in the expression language, and what lies outside."""
    form = d.step_form
    notation = d.graph.notation
    printer, last_printer, last_step = _printers(d)
    kept = _kept(d)
    lines: list[str] = []
    suffix = ""
    if form.last_backward is not None:
        defs = _inline(form.last_backward, kept)
        for a in form.last_backward:
            if a.kind in kept:
                lines.append(f"{last_printer(a.target)} = {last_printer(defs[a.target])}")
        suffix = f"  (t < {Symbols.step_name(last_step)})"
    defs = _inline(form.backward, kept)
    for a in form.backward:
        if a.kind in kept:
            lines.append(f"{printer(a.target)} = {printer(defs[a.target])}{suffix}")
    first = notation.t0
    after = "T+1" if first == 1 else "T"
    outside = [
        f"{label}[{after}] = 0"
        for label in (_label(notation, role) for role in kept)
        if any(f"{label}[t+1]" in line for line in lines)
    ]
    for key in d.graph.initials:
        entry = notation.name_of(key)
        initial = "0" if d.spec.initial_state == "zero" else entry.initial
        outside.append(f"{entry.ascii}[{first - 1}] = {initial}")
    lines.append(", ".join(outside))
    return tuple(lines)


def _generic_formula(d: Derivation, name: str) -> str | None:
    """The gradient as ``sum_t(...)`` from the generic step form (None if it has no such form)."""
    if name not in d.graph.params:
        return None
    form = d.step_form
    kept = _kept(d)
    printer, last_printer, _ = _printers(d)
    body = _contribution_of(form.backward, name)
    if form.last_backward is None:
        if body is None:
            return None
        return f"sum_t({printer(_inline(form.backward, kept)[body.target])})"
    last = _contribution_of(form.last_backward, name)
    if last is None:
        return None
    last_defs = _inline(form.last_backward, kept)
    if body is None:
        return last_printer(last_defs[last.target])
    body_text = printer(_inline(form.backward, kept)[body.target])
    if printer(last_defs[last.target]) != body_text:
        return None
    return f"sum_t({body_text})"


def _unrolled_formula(d: Derivation, name: str) -> str:
    """The gradient as the explicit sum of its per-step contributions."""
    graph = d.graph
    printer = _Printer(_naming(graph.symbols, graph.notation))
    defs = _inline((a for a in d.assignments if a.kind != "gradient"), _kept(d))
    terms = [printer(defs[c.target]) for c in d.contributions if c.param == name]
    if not terms:
        rows, cols = d.gradients[name].shape
        return f"0 * ones({rows}, {cols})"
    if len(terms) == 1:
        return terms[0]
    return " + ".join(f"({t})" if " + " in t or " - " in t else t for t in terms)


# ================================================================ work: concrete model
@dataclass(frozen=True, eq=False)
class _Work:
    """A concrete version of the spec (sizes filled in), derived, with its namespace."""

    spec: ModelSpec
    d: Derivation
    ns: Namespace
    table: dict[tuple[str, int], Any]
    forward: tuple[Assignment, ...]
    sizes: dict[str, int]
    form: StepForm

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
    return derive(spec)


@lru_cache(maxsize=32)
def _work(spec: ModelSpec) -> _Work:
    concrete = _concrete(spec)
    d = _derivation(concrete)
    forward = tuple(a for a in d.graph.assignments if a.kind not in ("loss", "total_loss"))
    sizes = {key: getattr(concrete, key) for key, _ in _SIZE_FIELDS}
    return _Work(concrete, d, namespace(d), _table(d.graph), forward, sizes, d.step_form)


@lru_cache(maxsize=32)
def _namespace_of(spec: ModelSpec) -> Namespace:
    return namespace(_derivation(spec))


def _resolve_wrt(d: Derivation, wrt: str) -> str:
    if wrt in d.gradients:
        return wrt
    by_role = {role: name for name, role in d.roles.items()}
    if wrt in by_role:
        return by_role[wrt]
    raise ValueError(
        f"wrt: no gradient named {wrt!r}; this model has {', '.join(d.gradients)} "
        f"(or a role: {', '.join(by_role)})"
    )


@lru_cache(maxsize=64)
def correct_formula(spec: ModelSpec, wrt: str) -> Formula:
    """The correct gradient of ``wrt`` in the expression language of the spec's notation.

    The sum over t printed from the derivation's generic step (checked to
    parse back to the same values), with the δ recursion; for gradients
    without such a form (the initial state's), the explicit sum of the
    per-step contributions.
    """
    d = _derivation(spec)
    name = _resolve_wrt(d, wrt)
    generic = _generic_formula(d, name)
    if generic is None or not _formula_agrees(spec, name, generic):
        generic = _unrolled_formula(d, name)
    return Formula(generic, _recursion_lines(d))


def _formula_agrees(spec: ModelSpec, name: str, text: str) -> bool:
    try:
        _refuse_outside(exprlang.parse(text, _namespace_of(spec)))
        work = _work(spec)
        expr = _prepare(_refuse_outside(exprlang.parse(text, work.ns)))
    except ExpressionError:
        return False
    target = _gradient_symbol(work, name)
    for point in _points(work, 0, 2):
        got = _evaluate(expr, point.env_f, "float")
        if got is None or not _close(got, point.env_f[target], 1e-10):
            return False
    return True


# ============================================================================= points
class _Undefined(ArithmeticError):
    """The candidate has no finite real value at this point."""


class _Eval(Evaluator):
    """The project's evaluator plus the nodes a candidate may hold."""

    def _compute(self, expr: Any) -> Any:
        if isinstance(expr, DiagMatrix):
            vector = self._eval(expr.args[0])
            flat = list(np.asarray(vector).reshape(-1))
            out = self._filled((len(flat), len(flat)), 0)
            for i, v in enumerate(flat):
                out[i, i] = v
            return out
        if isinstance(expr, sp.HadamardPower) and not sp.sympify(expr.exp).is_Integer:
            base = self._eval(expr.base)
            exp = self._eval(expr.exp)
            return base**exp
        if isinstance(expr, ElementwiseApplyFunction) and self.backend == "mp":
            arg = self._eval(expr.expr)
            for v in np.asarray(arg).reshape(-1):
                if not mpmath.isfinite(v) or abs(v) > _MAX_MP_ARGUMENT:
                    raise _Undefined("an elementwise function's argument is too large")
        return super()._compute(expr)


def _evaluate(expr: Any, env: Mapping[Any, Any], backend: str) -> Any | None:
    """``expr`` at a point (None where it has no finite real value)."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            value = _Eval(env, backend=backend, dps=DPS)(expr)
    except (ArithmeticError, ValueError, TypeError):
        return None  # e.g. log of a negative number, or a complex scalar such as (-1)**0.5
    value = np.asarray(value)
    if value.ndim != 2:
        return None
    if not _finite_real(value, backend):
        return None
    return value


def _finite_real(value: Any, backend: str) -> bool:
    if backend == "float":
        return bool(np.all(np.isfinite(value)))
    for v in value.reshape(-1):
        if isinstance(v, mpmath.mpc):
            if v.imag != 0:
                return False
            v = v.real
        if not mpmath.isfinite(v):
            return False
    return True


def _close(got: Any, expected: Any, rtol: float) -> bool:
    if got is None or expected is None or got.shape != expected.shape:
        return False
    diff = _max_abs(got - expected)
    return diff <= rtol * max(1.0, _max_abs(expected))


def _max_abs(value: Any) -> float:
    if value.size == 0:
        return 0.0
    if value.dtype == object:
        return float(max(abs(v) for v in value.reshape(-1)))
    return float(np.max(np.abs(value)))


def _to_float(value: Any) -> np.ndarray:
    if value.dtype != object:
        return np.asarray(value, dtype=float)
    out = np.empty(value.shape, dtype=float)
    for index, v in np.ndenumerate(value):
        out[index] = float(v.real) if isinstance(v, mpmath.mpc) else float(v)
    return out


class _Point:
    """One random instance: the leaves, and every forward and adjoint value."""

    def __init__(self, work: _Work, leaves: dict[Any, np.ndarray], kind: str) -> None:
        self.work = work
        self.leaves = leaves
        self.kind = kind  # "soft", "one-hot", "same-class", "real", "binary"
        self.env_f = _run(work, leaves, "float")
        self._env_mp: dict[Any, Any] | None = None

    @property
    def has_mp(self) -> bool:
        return self._env_mp is not None

    @property
    def env_mp(self) -> dict[Any, Any]:
        if self._env_mp is None:
            self._env_mp = _run(self.work, self.leaves, "mp")
        return self._env_mp


def _run(work: _Work, leaves: Mapping[Any, np.ndarray], backend: str) -> dict[Any, Any]:
    evaluator = _Eval({}, backend=backend, dps=DPS)
    env: dict[Any, Any] = {}
    with mpmath.workdps(DPS):
        for symbol, value in leaves.items():
            env[symbol] = evaluator.array(value) if backend == "mp" else np.array(value)
        if backend == "mp":
            _normalise_mp_targets(work, env)
    evaluator = _Eval(env, backend=backend, dps=DPS)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        evaluator.run(work.forward)
        evaluator.run(work.d.assignments)
    return evaluator.env


def _normalise_mp_targets(work: _Work, env: dict[Any, Any]) -> None:
    """Make cross-entropy targets sum to exactly one over the units in 30 digits."""
    if work.spec.loss != "cross_entropy":
        return
    column = work.notation.layout == "column"
    for target in work.graph.targets:
        value = env[target]
        if column:
            for j in range(value.shape[1]):
                value[-1, j] = 1 - sum(value[:-1, j])
        else:
            for i in range(value.shape[0]):
                value[i, -1] = 1 - sum(value[i, :-1])


def _shape(symbol: Any) -> tuple[int, int]:
    return int(symbol.shape[0]), int(symbol.shape[1])


def _target_value(
    work: _Work, shape: tuple[int, int], rng: np.random.Generator, kind: str, same_class: int = 0
) -> np.ndarray:
    loss = work.spec.loss
    column = work.notation.layout == "column"
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, size=shape).astype(float)
    if loss == "squared_error":
        return rng.normal(size=shape)
    units_axis = 0 if column else 1
    units = shape[units_axis]
    examples = shape[1 - units_axis]
    if kind == "soft":
        raw = rng.random(size=shape) + 0.1
        return np.asarray(raw / raw.sum(axis=units_axis, keepdims=True))
    out = np.zeros(shape)
    for e in range(examples):
        c = same_class if kind == "same-class" else int(rng.integers(0, units))
        if column:
            out[c, e] = 1.0
        else:
            out[e, c] = 1.0
    return out


def _other_target(
    work: _Work, value: np.ndarray, kind: str, rng: np.random.Generator
) -> np.ndarray:
    """A different target of the same kind (a one-hot class moves to the next unit)."""
    if kind in ("one-hot", "same-class"):
        axis = 0 if work.notation.layout == "column" else 1
        return np.roll(value, 1, axis=axis)
    if kind == "binary":
        return 1.0 - value
    return _target_value(work, value.shape, rng, kind)


def _leaves(
    work: _Work, rng: np.random.Generator, kind: str, same_class: int = 0
) -> dict[Any, np.ndarray]:
    graph = work.graph
    leaves: dict[Any, np.ndarray] = {}
    for symbol in graph.params.values():
        leaves[symbol] = rng.normal(scale=0.5, size=_shape(symbol))
    for symbol in graph.inputs:
        leaves[symbol] = rng.normal(size=_shape(symbol))
    for symbol in graph.targets:
        leaves[symbol] = _target_value(work, _shape(symbol), rng, kind, same_class)
    if work.spec.initial_state == "input":
        for initial in graph.initials.values():
            leaves[initial] = rng.normal(scale=0.5, size=_shape(initial))
    return leaves


def _kind(work: _Work, index: int, one_hot: bool) -> str:
    loss = work.spec.loss
    if loss == "cross_entropy":
        return "one-hot" if one_hot or index % 2 == 1 else "soft"
    return "binary" if loss == "binary_cross_entropy" else "real"


@lru_cache(maxsize=16)
def _points_cached(work: _Work, seed: int, count: int, one_hot: bool) -> tuple[_Point, ...]:
    out = []
    for i in range(count):
        kind = _kind(work, i, one_hot)
        rng = np.random.default_rng([seed, i])
        out.append(_Point(work, _leaves(work, rng, kind), kind))
    return tuple(out)


def _points(work: _Work, seed: int, count: int, one_hot: bool = False) -> tuple[_Point, ...]:
    return _points_cached(work, seed, count, one_hot)


def _target(work: _Work, name: str) -> Any:
    return _gradient_symbol(work, name)


def _gradient_symbol(work: _Work, name: str) -> Any:
    for a in work.d.assignments:
        if a.kind == "gradient" and a.param == name:
            return a.target
    raise KeyError(name)  # pragma: no cover - every gradient has its sum


# ========================================================================= candidates
def _prepare(expr: Any) -> Any:
    """Decimal literals as exact rationals (0.1 means 1/10, not the nearest double)."""
    floats = (
        {f: sp.Rational(str(f)) for f in expr.atoms(sp.Float)} if isinstance(expr, sp.Basic) else {}
    )
    return expr.xreplace(floats) if floats else expr


_ALLOWED_NODES: tuple[type, ...] = (
    sp.MatrixSymbol,
    sp.MatAdd,
    sp.MatMul,
    sp.Transpose,
    sp.HadamardProduct,
    sp.HadamardPower,
    ElementwiseApplyFunction,
    mexpr.Softmax,
    DiagMatrix,
    sp.OneMatrix,
    sp.ZeroMatrix,
    sp.Identity,
)


def _from_sympy(work: _Work, orig: Derivation, expr: Any) -> Any:
    """A SymPy candidate on the concrete model: sizes substituted, symbols checked."""
    sizes = orig.graph.symbols.sizes
    mapping: dict[Any, Any] = {
        sizes[key]: sp.Integer(work.sizes[key])
        for key, _ in _SIZE_FIELDS
        if isinstance(sizes[key], sp.Symbol)
    }
    mapping[T_SYMBOL] = sp.Integer(len(work.graph.steps))
    expr = _prepare(expr.xreplace(mapping)) if mapping else _prepare(expr)
    known = set(work.graph.symbols.meta)
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.MatrixSymbol) and node not in known:
            raise ExpressionError(
                f"unknown symbol {node.name} of shape {node.shape} in the candidate: use the "
                f"symbols of derive(spec) (parameters, graph.symbols.series(role, step), delta_t)"
            )
        if mexpr.is_matrix(node) and not isinstance(node, _ALLOWED_NODES):
            raise ExpressionError(
                f"the candidate holds a {type(node).__name__}, which the checker cannot evaluate"
            )
    return expr


# ============================================================================ results
@dataclass(frozen=True)
class Mistake:
    """A common mistake the candidate matches: a stable ``name`` and a description."""

    name: str
    description: str


@dataclass(frozen=True)
class Counterexample:
    """A point where the candidate and the gradient differ."""

    point: int
    targets: str  # the kind of targets at this point: soft, one-hot, binary, real
    sizes: dict[str, int]
    steps: int
    values: dict[str, np.ndarray]  # the leaves (parameters, inputs, targets), by name
    expected: np.ndarray
    got: np.ndarray | None  # None where the candidate has no finite real value

    @property
    def max_abs_error(self) -> float:
        if self.got is None:
            return float("inf")
        return float(np.max(np.abs(self.got - self.expected)))


@dataclass(frozen=True)
class CheckResult:
    """The verdict of :func:`check`; :meth:`explain` is the readable report.

    Shapes are written in the spec's own sizes (symbols such as ``n_1`` where
    the spec leaves a size open); ``sizes`` are the concrete sizes the check
    used.  The localisation fields are None when they were not computed.
    """

    ok: bool
    wrt: str
    spec: ModelSpec
    method: str
    candidate: str
    formula: Formula
    expected_shape: tuple[Any, Any]
    candidate_shape: tuple[Any, Any] | None  # None: the candidate is a scalar
    shape_mismatch: bool
    sizes: dict[str, int]
    counterexample: Counterexample | None = None
    mistakes: tuple[Mistake, ...] = ()
    differing_terms: tuple[int, ...] | None = None  # steps whose sum_t term differs
    loss_steps: tuple[int, ...] | None = None  # steps whose loss the error involves
    rows: tuple[int, ...] | None = None  # rows that differ at the counterexample
    columns: tuple[int, ...] | None = None  # columns that differ at the counterexample
    notes: tuple[str, ...] = ()

    @property
    def mistake_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.mistakes)

    def explain(self, verbose: bool = False) -> str:
        """Verdict, candidate, correct formula, mistakes, localisation and a counterexample."""
        verdict = "EQUAL" if self.ok else "NOT EQUAL"
        lines = [f"∂L/∂{self.wrt}: {verdict} ({self.method})"]
        lines.append(f"  candidate: {self.candidate}")
        lines.append(f"  correct:   {self.formula.gradient}")
        lines += [f"    where {line}" for line in self.formula.where]
        if self.shape_mismatch:
            lines.append(
                f"  shapes cannot match: the gradient of {self.wrt} has shape "
                f"{_shape_text(self.expected_shape)}, the candidate "
                + (_shape_text(self.candidate_shape) if self.candidate_shape else "is a scalar")
            )
        lines += [f"  mistake: {m.description}" for m in self.mistakes]
        if not self.ok and not self.mistakes and not self.shape_mismatch:
            lines.append("  mistake: none of the common mistakes explains the difference")
        lines += [f"  - {note}" for note in self.notes]
        sizes = ", ".join(f"{_SIZE_LABEL[k]}={v}" for k, v in self.sizes.items())
        if self.ok:
            lines.append(f"  checked at sizes {sizes}, T={self.spec.steps}")
        example = self.counterexample
        if example is not None:
            lines.append(
                f"  counterexample (point {example.point}, {example.targets} targets, "
                f"sizes {sizes}, T={example.steps}):"
            )
            lines.append(_matrix_lines("expected ", example.expected))
            if example.got is None:
                lines.append("    candidate: no finite real value here")
            else:
                lines.append(_matrix_lines("candidate", example.got))
                lines.append(f"    max |difference| = {example.max_abs_error:.6g}")
            if verbose:
                lines += [_matrix_lines(label, value) for label, value in example.values.items()]
            else:
                lines.append("    (the inputs: .counterexample.values, or explain(verbose=True))")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


_SIZE_LABEL = {"n_in": "n_0", "n_hidden": "n_1", "n_out": "n_2", "batch": "m"}


def _shape_text(shape: tuple[Any, ...] | None) -> str:
    if shape is None:
        return "()"
    return "(" + ", ".join(str(v) for v in shape) + ("," if len(shape) == 1 else "") + ")"


def _matrix_lines(label: str, value: np.ndarray) -> str:
    text = np.array2string(np.asarray(value), precision=6, suppress_small=True, max_line_width=90)
    pad = " " * (len(label) + 6)
    return f"    {label}: " + text.replace("\n", "\n" + pad)


# =============================================================================== check
Candidate: TypeAlias = "str | sp.Basic | Callable[..., Any]"


def check(
    spec: ModelSpec | Derivation,
    wrt: str,
    candidate: Candidate,
    *,
    points: int = 20,
    rng: np.random.Generator | int | None = None,
) -> CheckResult:
    """Check ``candidate`` as the gradient of the spec's loss with respect to ``wrt``.

    Args:
        spec: the model (a :class:`ModelSpec`, or a :class:`Derivation` of one).
        wrt: a parameter's ASCII name in the spec's notation (``"W_hh"``), its
            role (``"recurrent_weight"``) or the initial state's name.
        candidate: a formula in the expression language, a SymPy matrix
            expression in the derivation's symbols, or a callable
            ``f(params, X, Y, **initial_states)`` (``h0=``, ``c0=``; the module docstring).
        points: how many random instances to compare at.
        rng: a NumPy generator or an integer seed (default: a fixed seed, so
            the same call gives the same report).

    Raises:
        ExpressionError: the candidate text (or SymPy expression) is malformed,
            refers to unknown names or steps, or has inconsistent shapes inside.
        ValueError: ``wrt`` names no gradient of this model.
    """
    if isinstance(spec, Derivation):
        spec = spec.spec
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec: expected a ModelSpec or a Derivation, got {type(spec).__name__}")
    if spec.steps > MAX_CHECK_STEPS:
        raise SpecError(
            f"steps: got {spec.steps}; the checker proves a candidate for at most "
            f"{MAX_CHECK_STEPS} steps (its expressions nest once per step); a sum_t formula "
            "holds for every T, so check it at a smaller T"
        )
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(f"points: got {points!r}; expected a positive integer")
    seed = _seed(rng)
    orig = _derivation(spec)
    name = _resolve_wrt(orig, wrt)
    checker = _Checker(spec, _work(spec), orig, name, correct_formula(spec, name), seed, points)
    if isinstance(candidate, str):
        _refuse_outside(exprlang.parse(candidate, _namespace_of(spec)))  # the spec's sizes
        expr = _prepare(_refuse_outside(exprlang.parse(candidate, checker.work.ns)))
        return checker.check_expression(expr, candidate, text=candidate)
    if isinstance(candidate, sp.Basic):
        return checker.check_expression(
            _from_sympy(checker.work, orig, candidate), _show(orig, candidate), text=None
        )
    if callable(candidate):
        return checker.check_callable(candidate)
    raise TypeError(
        "candidate: expected a formula string, a SymPy expression or a callable, "
        f"got {type(candidate).__name__}"
    )


# ``symbptt.check`` is this function once the package is imported (``from .check import
# check``), so the module's helpers are reachable from it as well:
# ``symbptt.check.names("aa")``.
check.names = names  # type: ignore[attr-defined]
check.names_text = names_text  # type: ignore[attr-defined]
check.correct_formula = correct_formula  # type: ignore[attr-defined]

#: SymPy candidates larger than this (in tree nodes) are not printed in the report.
_MAX_SHOWN_NODES = 400


def _show(d: Derivation, expr: Any) -> str:
    """A SymPy candidate in the expression language (or a summary, when it is large)."""
    for count, _ in enumerate(sp.preorder_traversal(expr)):
        if count > _MAX_SHOWN_NODES:
            return f"a SymPy expression of more than {_MAX_SHOWN_NODES} nodes"
    if not mexpr.is_matrix(expr):
        return str(expr)
    return _Printer(_naming(d.graph.symbols, d.graph.notation))(expr)


def _seed(rng: np.random.Generator | int | None) -> int:
    if rng is None:
        return 0
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return int(rng)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**62))
    raise TypeError(
        f"rng: expected a numpy Generator, an integer seed or None, got {type(rng).__name__}"
    )


@dataclass
class _Checker:
    """One check: the spec, its concrete version, the parameter, the points."""

    spec: ModelSpec
    work: _Work
    orig: Derivation
    name: str
    formula: Formula
    seed: int
    count: int

    @property
    def target(self) -> Any:
        """The gradient's symbol in the concrete derivation."""
        return _gradient_symbol(self.work, self.name)

    @property
    def expected_shape(self) -> tuple[Any, Any]:
        rows, cols = self.orig.gradients[self.name].shape
        return rows, cols

    def spec_shape(self, shape: tuple[Any, Any]) -> tuple[Any, Any]:
        """A concrete shape in the spec's own sizes (n_1 for the size the check chose)."""
        sizes = self.orig.graph.symbols.sizes
        back: dict[int, Any] = {}
        for key, _ in _SIZE_FIELDS:
            if isinstance(sizes[key], sp.Symbol):
                back.setdefault(self.work.sizes[key], sizes[key])
        rows, cols = (int(v) for v in shape)
        return back.get(rows, rows), back.get(cols, cols)

    def result(self, ok: bool, method: str, candidate: str, **extra: Any) -> CheckResult:
        extra.setdefault("candidate_shape", self.expected_shape)
        extra.setdefault("shape_mismatch", False)
        return CheckResult(
            ok=ok,
            wrt=self.name,
            spec=self.spec,
            method=method,
            candidate=candidate,
            formula=self.formula,
            expected_shape=self.expected_shape,
            sizes=dict(self.work.sizes),
            **extra,
        )

    # -- expressions -------------------------------------------------------------------
    def check_expression(self, expr: Any, shown: str, text: str | None) -> CheckResult:
        if not mexpr.is_matrix(expr):
            return self.result(
                False, "shape check", shown, candidate_shape=None, shape_mismatch=True
            )
        if tuple(expr.shape) != tuple(self.target.shape):
            return self.shape_result(expr, shown, "shape check")
        method = f"numeric at {self.count} points, {DPS} digits"
        pts = _points(self.work, self.seed, self.count)
        target = self.target
        float_values = [_evaluate(expr, p.env_f, "float") for p in pts]
        float_ok = [
            _close(value, p.env_f[target], RTOL_FLOAT)
            for p, value in zip(pts, float_values, strict=True)
        ]
        # 30 digits decide, at every point; the points float64 doubts come first
        failing, got = None, None
        for i in sorted(range(len(pts)), key=lambda i: float_ok[i]):
            value = _evaluate(expr, pts[i].env_mp, "mp")
            if not _close(value, pts[i].env_mp[target], RTOL_MP):
                failing, got = i, value
                break
        if failing is None:
            return self.success(expr, shown, method)
        point = pts[failing]
        got = _to_float(got) if got is not None else float_values[failing]

        def value_at(p: _Point) -> Any:
            return _evaluate(expr, p.env_f, "float")

        differing = _term_steps(text, self.work, self.name, point) if text else None
        return self.failure(
            shown, method, failing, point, got, value_at, differing, pts, float_values
        )

    def success(self, expr: Any, shown: str, method: str) -> CheckResult:
        proof = _symbolic_equal(self.work, expr, self.name)
        notes = [f"agrees at {self.count} random points to {DPS} digits"]
        if proof is not None:
            method = "symbolic"
            notes.insert(0, f"proved equal as polynomials in the entries ({proof})")
        if self.work.spec.loss == "cross_entropy":
            notes.append("targets: soft (probabilities) and one-hot, alternating")
        return self.result(True, method, shown, notes=tuple(notes))

    def failure(
        self,
        shown: str,
        method: str,
        index: int,
        point: _Point,
        got: Any,
        value_at: Callable[[_Point], Any],
        differing: tuple[int, ...] | None,
        pts: Sequence[_Point],
        values: Sequence[Any] = (),
        notes: Sequence[str] = (),
    ) -> CheckResult:
        """The report of a candidate that differs at ``point``: mistakes and localisation."""
        diagnosis = _Diagnosis(self, value_at)
        expected = point.env_f[self.target]
        loss_steps = diagnosis.loss_steps(point)
        rows, columns = _rows_columns(got, expected)
        all_notes = list(notes)
        if values:
            all_notes += diagnosis.target_kind_note(values, pts)
        all_notes += _localisation_notes(self, differing, loss_steps, rows, columns)
        all_notes += diagnosis.class_row_note()
        return self.result(
            False,
            method,
            shown,
            counterexample=self.counterexample(index, point, got),
            mistakes=diagnosis.mistakes(pts[:_SCREEN]),
            differing_terms=differing,
            loss_steps=loss_steps,
            rows=rows,
            columns=columns,
            notes=tuple(all_notes),
        )

    def shape_result(self, expr: Any, shown: str, method: str) -> CheckResult:
        rows, cols = (int(v) for v in expr.shape)
        expected = tuple(int(v) for v in self.target.shape)
        mistakes: tuple[Mistake, ...] = ()
        if (rows, cols) == (expected[1], expected[0]):

            def transposed_at(p: _Point) -> Any:
                return _evaluate(sp.Transpose(expr), p.env_f, "float")

            found = _Diagnosis(self, transposed_at).mistakes(
                _points(self.work, self.seed, _SCREEN), allow_exact=True
            )
            transpose = Mistake(
                "transpose", "the candidate has the transposed shape: it is written transposed"
            )
            mistakes = (transpose, *(m for m in found if m.name != "transpose"))
        notes = []
        holders = _quantities_with_shape(self.work, (rows, cols))
        if holders:
            notes.append(
                f"the candidate has the shape of {', '.join(holders)}: a gradient with respect "
                f"to one of those is not ∂L/∂{self.name}"
            )
        return self.result(
            False,
            method,
            shown,
            candidate_shape=self.spec_shape((rows, cols)),
            shape_mismatch=True,
            mistakes=mistakes,
            notes=tuple(notes),
        )

    def counterexample(self, index: int, point: _Point, got: Any) -> Counterexample:
        work = self.work
        naming = _naming(work.graph.symbols, work.notation)
        values = {naming(symbol): np.array(value) for symbol, value in point.leaves.items()}
        expected = point.env_f[self.target]
        if point.has_mp:
            expected = _to_float(point.env_mp[self.target])
        return Counterexample(
            point=index,
            targets=point.kind,
            sizes=dict(work.sizes),
            steps=len(work.graph.steps),
            values=values,
            expected=expected,
            got=got,
        )

    # -- callables ---------------------------------------------------------------------
    def check_callable(self, fn: Callable[..., Any]) -> CheckResult:
        work = self.work
        shown = str(getattr(fn, "__qualname__", None) or repr(fn))
        method = f"numeric at {self.count} points, float64 (relative tolerance {RTOL_FLOAT:g})"
        pts = _points(work, self.seed, self.count, one_hot=True)
        reference = _Reference(work, pts[0], self.name)
        calls: dict[int, Any] = {}

        def value_at(p: _Point) -> Any:
            if id(p) not in calls:
                calls[id(p)] = (p, _call(fn, work, p.leaves, self.name))
            return calls[id(p)][1]

        expected_shape = _shape(self.target)
        notes = [f"reference: {reference.source}"]
        for i, p in enumerate(pts):
            value = value_at(p)
            if value is not None and value.shape != expected_shape:
                if value.ndim == 1:
                    notes.append("biases are (n, 1) columns")
                shape = self.spec_shape(value.shape) if value.ndim == 2 else value.shape
                return self.result(
                    False,
                    method,
                    shown,
                    candidate_shape=shape,
                    shape_mismatch=True,
                    notes=tuple(notes),
                )
            if not _close(value, reference.gradient(p, self.name), RTOL_FLOAT):
                return self.failure(shown, method, i, p, value, value_at, None, pts, notes=notes)
        return self.result(True, method, shown, notes=tuple(notes))


def _quantities_with_shape(work: _Work, shape: tuple[int, int]) -> list[str]:
    symbols = work.graph.symbols
    out = []
    for role in _step_roles(work.d):
        if tuple(int(v) for v in symbols.series_shape(_base_role(role))) == shape:
            out.append(f"{_label(work.notation, role)}[t]")
    return out


# ================================================================ callables: arrays
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
        from .emit import emit_numpy, load_module
    except ImportError as exc:
        return None, f"code generation is not available: {exc}"
    try:
        return load_module(emit_numpy(spec)), ""
    except Exception as exc:  # any failure of code generation: fall back
        return None, f"code generation failed: {type(exc).__name__}: {exc}"


# ===================================================================== symbolic proof
#: Abandon the proof when a polynomial entry grows past this many terms...
_MAX_TERMS = 20_000
#: ... or when it has multiplied this many pairs of terms (a second or two; rational
#: coefficients are about three times slower than integer ones).
_MAX_WORK = {"ZZ": 250_000, "QQ": 80_000}


def _lengths(values: Any) -> Any:
    return np.vectorize(len, otypes=[int])(values)


def _symbolic_equal(work: _Work, expr: Any, name: str) -> str | None:
    """Prove equality as polynomials in the entries of the model's quantities, if possible.

    Both sides become explicit matrices whose entries are polynomials (over the
    rationals) in the entries of the parameters, inputs, targets and forward
    quantities (h, ŷ, ...), first with δ_t kept as a symbol, then with δ_t
    expanded.  f(z_t) and softmax(o_t) in the candidate are first replaced by
    h_t and ŷ_t.  Returns which form proved it, or None (not polynomial, over
    budget, or not equal as polynomials, which proves nothing).
    """
    graph = work.graph
    forward = [a for a in graph.assignments if a.kind not in ("loss", "total_loss")]
    canonical = {a.expr: a.target for a in forward}
    defs = {a.target: a.expr for a in work.d.assignments}
    if not expr.free_symbols & (set(defs) | {a.target for a in forward}):
        # a candidate in the leaves only (derive(spec).gradient(name, expand=True)): find the
        # forward quantities in it.  Not otherwise: the expanded forms grow fast with T.
        canonical.update({work.d.value_of(a.target): a.target for a in forward})
    expr = expr.xreplace(canonical)
    meta = graph.symbols.meta
    kept = set(_kept(work.d))
    notation = work.notation
    named = {s for s, (role, _) in meta.items() if role in kept}
    labels = ", ".join(f"{_label(notation, role)}[t]" for role in _kept(work.d))
    plural = "as a symbol" if len(kept) == 1 else "as symbols"
    target = _gradient_symbol(work, name)
    levels = [
        (f"with {labels} {plural}", {k: v for k, v in defs.items() if k not in named}),
        (f"with {labels} expanded", defs),
    ]
    for label, level_defs in levels:
        try:
            try:
                explicit = _PolyExplicit(level_defs, [expr, target], sp.ZZ)
                equal = bool(np.all(explicit(expr) == explicit(target)))
            except _NeedRationals:
                explicit = _PolyExplicit(level_defs, [expr, target], sp.QQ)
                equal = bool(np.all(explicit(expr) == explicit(target)))
        except _NotPolynomial:
            return None
        if equal:
            return label
    return None


def _leaf_name(leaf: Any) -> str:
    return str(leaf.name) if isinstance(leaf, sp.MatrixSymbol) else str(leaf)


def _function_of_leaf(node: Any, defs: Mapping[Any, Any]) -> bool:
    """``f(q)`` applied elementwise to a symbol the proof does not expand (tanh(c_t))."""
    if not isinstance(node, ElementwiseApplyFunction):
        return False
    (var,) = node.function.variables
    inner = node.expr
    return node.function.expr != var and isinstance(inner, sp.MatrixSymbol) and inner not in defs


class _NotPolynomial(Exception):
    """The expression is not a polynomial in the entries (or too big to expand)."""


class _NeedRationals(Exception):
    """A coefficient is not an integer: redo the expansion over the rationals."""


class _PolyExplicit:
    """Matrix expressions as NumPy object arrays of polynomials in their leaves' entries."""

    def __init__(self, defs: Mapping[Any, Any], roots: Sequence[Any], domain: Any) -> None:
        self.defs = defs
        self.domain = domain
        leaves = sorted(self._leaves(roots), key=_leaf_name)
        gens: list[sp.Symbol] = []
        self.index: dict[Any, list[list[int]]] = {}
        for leaf in leaves:
            rows, cols = int(leaf.shape[0]), int(leaf.shape[1])
            self.index[leaf] = [
                [len(gens) + i * cols + j for j in range(cols)] for i in range(rows)
            ]
            label = _leaf_name(leaf)
            gens += [sp.Symbol(f"{label}[{i},{j}]") for i in range(rows) for j in range(cols)]
        if not gens:
            gens = [sp.Symbol("_")]
        self.ring, *self.gens = sp.ring(gens, domain)
        self.memo: dict[Any, Any] = {}
        self.work = 0  # term products spent so far (a deterministic budget)

    def _leaves(self, roots: Sequence[Any]) -> set[Any]:
        seen: set[Any] = set()
        leaves: set[Any] = set()
        stack = list(roots)
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if isinstance(node, sp.MatrixSymbol):
                if node in self.defs:
                    stack.append(self.defs[node])
                else:
                    leaves.add(node)
            elif _function_of_leaf(node, self.defs):
                leaves.add(node)  # tanh(c_t): its entries are variables of their own
            elif isinstance(node, sp.Basic):
                stack.extend(node.args)
        return leaves

    def __call__(self, expr: Any) -> Any:
        if expr in self.memo:
            return self.memo[expr]
        value = self._compute(expr)
        if (
            isinstance(value, np.ndarray)
            and value.size
            and max(len(v) for v in value.flat) > _MAX_TERMS
        ):
            raise _NotPolynomial("too many terms")
        self.memo[expr] = value
        return value

    def _generators(self, leaf: Any) -> Any:
        index = self.index[leaf]
        out = np.empty((len(index), len(index[0])), dtype=object)
        for i, row in enumerate(index):
            for j, k in enumerate(row):
                out[i, j] = self.gens[k]
        return out

    def _spend(self, amount: Any) -> None:
        self.work += int(amount)
        if self.work > _MAX_WORK[str(self.domain)]:
            raise _NotPolynomial("over the budget of the proof")

    def _scalar(self, value: Any) -> Any:
        value = sp.sympify(value)
        if not value.is_Rational:
            raise _NotPolynomial(f"the scalar {value} is not a rational number")
        if not value.is_Integer and self.domain == sp.ZZ:
            raise _NeedRationals
        return self.ring(value)

    def _filled(self, rows: int, cols: int, fill: Any) -> Any:
        out = np.empty((rows, cols), dtype=object)
        for index in np.ndindex(rows, cols):
            out[index] = fill
        return out

    def _compute(self, expr: Any) -> Any:
        if not mexpr.is_matrix(expr):
            return self._scalar(expr)
        if isinstance(expr, sp.MatrixSymbol):
            if expr in self.defs:
                return self(self.defs[expr])
            return self._generators(expr)
        rows, cols = int(expr.shape[0]), int(expr.shape[1])
        if isinstance(expr, sp.ZeroMatrix):
            return self._filled(rows, cols, self.ring.zero)
        if isinstance(expr, sp.OneMatrix):
            return self._filled(rows, cols, self.ring.one)
        if isinstance(expr, sp.Identity):
            out = self._filled(rows, rows, self.ring.zero)
            for i in range(rows):
                out[i, i] = self.ring.one
            return out
        if isinstance(expr, sp.MatAdd):
            total = self(expr.args[0])
            for arg in expr.args[1:]:
                total = total + self(arg)
            return total
        if isinstance(expr, sp.MatMul):
            coeff, mats = expr.as_coeff_matrices()
            value = self(mats[0])
            for m in mats[1:]:
                right = self(m)
                self._spend((_lengths(value).sum(axis=0) * _lengths(right).sum(axis=1)).sum())
                value = np.dot(value, right)
            return value * self._scalar(coeff) if coeff != 1 else value
        if isinstance(expr, sp.Transpose):
            return self(expr.arg).T
        if isinstance(expr, sp.HadamardProduct):
            value = self(expr.args[0])
            for arg in expr.args[1:]:
                right = self(arg)
                self._spend((_lengths(value) * _lengths(right)).sum())
                value = value * right
            return value
        if isinstance(expr, sp.HadamardPower):
            exp = sp.sympify(expr.exp)
            if not (exp.is_Integer and 0 <= int(exp) <= 16):
                raise _NotPolynomial("a power that is not a small non-negative integer")
            base = self(expr.base)
            out = self._filled(rows, cols, self.ring.one)
            for _ in range(int(exp)):
                out = out * base
            return out
        if isinstance(expr, ElementwiseApplyFunction):
            (var,) = expr.function.variables
            if expr.function.expr == var:
                return self(expr.expr)
            if expr in self.index:
                return self._generators(expr)
            raise _NotPolynomial("an elementwise function")
        if isinstance(expr, DiagMatrix):
            vector = list(self(expr.args[0]).reshape(-1))
            out = self._filled(len(vector), len(vector), self.ring.zero)
            for i, v in enumerate(vector):
                out[i, i] = v
            return out
        raise _NotPolynomial(type(expr).__name__)


# ========================================================================= diagnosis
_OUT_KNOBS = ("ok", "dropped_target", "softmax_diagonal")
_REC_KNOBS = ("ok", "no_recurrence", "untransposed_recurrence")
_DER_KNOBS = ("ok", "derivative_at_pre_activation", "derivative_of_output", "no_derivative")
_STEP_KNOBS = ("ok", "off_by_one_later", "off_by_one_earlier", "last_step_only")
_FINAL_KNOBS = ("ok", "transpose")


class _Diagnosis:
    """Which mutated correct formula the candidate equals, and where it differs."""

    def __init__(self, checker: _Checker, value_at: Callable[[_Point], Any]) -> None:
        self.checker = checker
        self.work = checker.work
        self.name = checker.name
        self.value_at = value_at

    # -- mutations ---------------------------------------------------------------------
    def _adjoint_variants(self) -> list[tuple[tuple[str, str, str], list[Assignment]]]:
        work = self.work
        spec = work.spec
        adjoints = list(work.d.adjoints)
        out_knobs: Sequence[str] = ("ok",)
        if spec.output == "softmax" and spec.loss == "cross_entropy":
            out_knobs = _OUT_KNOBS
        # The recurrence and activation mistakes are written for a cell whose file tags a
        # hidden state, its pre-activation and a recurrent weight (the Elman roles); other
        # cells get no such mistake named (a later issue names gated cells' mistakes).
        uses_delta = self._uses_delta() and _has_roles(
            work.notation, ("pre_activation", "hidden", "recurrent_weight")
        )
        rec_knobs: Sequence[str] = _REC_KNOBS if uses_delta else ("ok",)
        der_knobs: Sequence[str] = ("ok",)
        if uses_delta and spec.hidden != "identity" and work.graph.symbols.cell.activation:
            der_knobs = _DER_KNOBS
        variants = []
        for out_k in out_knobs:
            for rec_k in rec_knobs:
                for der_k in der_knobs:
                    knobs = (out_k, rec_k, der_k)
                    variants.append((knobs, [self._mutate(a, knobs) for a in adjoints]))
        return variants

    def _uses_delta(self) -> bool:
        meta = self.work.graph.symbols.meta
        for c in self.work.d.contributions:
            if c.param != self.name:
                continue
            for s in c.expr.free_symbols:
                if meta.get(s, ("",))[0] in ("adjoint_pre_activation", "adjoint_hidden"):
                    return True
        return False

    def _mutate(self, a: Assignment, knobs: tuple[str, str, str]) -> Assignment:
        out_k, rec_k, der_k = knobs
        work = self.work
        table = work.table
        step = a.step
        expr = a.expr
        if a.kind == "adjoint_output_pre_activation" and out_k != "ok":
            target = table[("target", step)]
            pred = table[("output", step)]
            coeff, _ = mexpr.split_scale(expr)
            ones = sp.OneMatrix(*target.shape)
            if out_k == "dropped_target":
                expr = mexpr.scale(coeff, sp.MatAdd(pred, sp.MatMul(-1, ones)))
            else:
                expr = mexpr.scale(
                    coeff, sp.HadamardProduct(target, sp.MatAdd(pred, sp.MatMul(-1, ones)))
                )
        elif a.kind == "adjoint_hidden" and rec_k != "ok":
            if rec_k == "no_recurrence":
                deltas = {
                    s: sp.ZeroMatrix(*s.shape)
                    for s in expr.free_symbols
                    if work.graph.symbols.meta.get(s, ("",))[0] == "adjoint_pre_activation"
                }
                expr = expr.xreplace(deltas)
            else:
                w = work.graph.params[work.notation.param("recurrent_weight").ascii]
                expr = expr.xreplace({sp.Transpose(w): w})
        elif a.kind == "adjoint_pre_activation" and der_k != "ok":
            expr = self._derivative_variant(a, der_k)
        if expr is a.expr:
            return a
        return Assignment(a.target, expr, a.kind, a.step, a.param)

    def _derivative_variant(self, a: Assignment, knob: str) -> Any:
        work = self.work
        table = work.table
        step = a.step
        h = table[("hidden", step)]
        z = table[("pre_activation", step)]
        dh = table.get(("adjoint_hidden", step))
        if dh is None:
            return a.expr
        activation = functions.ACTIVATIONS[work.spec.hidden]
        derivative, form = activation.derivative
        if knob == "no_derivative":
            return dh
        if knob == "derivative_at_pre_activation":
            if form != "output" or functions.a not in derivative.free_symbols:
                return a.expr
            wrong = functions.lift(derivative, {functions.a: z}, z.shape)
        else:
            raw = activation.raw_derivative
            if functions.z not in raw.free_symbols:
                return a.expr
            wrong = functions.lift(raw, {functions.z: h}, h.shape)
        return mexpr.hadamard(dh, wrong)

    def _contributions(self, knob: str) -> list[Any]:
        work = self.work
        if knob == "last_step_only":
            last = work.graph.steps[-1]
            return [c.expr for c in work.d.contributions if c.param == self.name and c.step == last]
        if knob == "ok":
            return [c.expr for c in work.d.contributions if c.param == self.name]
        return self._generic_terms(1 if knob == "off_by_one_later" else -1)

    def _generic_terms(self, offset: int) -> list[Any]:
        """The generic step's term at every step, its forward quantities shifted by ``offset``."""
        work = self.work
        form = work.form
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
                if _is_forward(work.notation, role):
                    k += offset
                found = work.table.get((role, k))
                if found is None and role in initials and k == first - 1:
                    found = initials[role]
                mapping[symbol] = found if found is not None else sp.ZeroMatrix(*symbol.shape)
            out.append(contribution.expr.xreplace(mapping))
        return out

    def _variant_values(self, points: Sequence[_Point]) -> list[tuple[tuple[str, ...], list[Any]]]:
        """(knobs, value at each point) for every mutation of the correct gradient."""
        square = self.checker.target.shape[0] == self.checker.target.shape[1]
        step_knobs: Sequence[str] = _STEP_KNOBS
        if self.work.spec.mode == "many_to_one":
            step_knobs = ("ok", "off_by_one_later", "off_by_one_earlier")
        final_knobs: Sequence[str] = _FINAL_KNOBS if square else ("ok",)
        results: list[tuple[tuple[str, ...], list[Any]]] = []
        variants = self._adjoint_variants()
        envs: dict[tuple[str, str, str], list[dict[Any, Any]]] = {}
        for knobs, assignments in variants:
            per_point = []
            for p in points:
                evaluator = _Eval(p.env_f, backend="float")
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    evaluator.run(assignments)
                per_point.append(evaluator.env)
            envs[knobs] = per_point
        for step_k in step_knobs:
            terms = self._contributions(step_k)
            total = mexpr.add(*terms) if terms else sp.ZeroMatrix(*self.checker.target.shape)
            for knobs, per_point in envs.items():
                values = [_evaluate(total, env, "float") for env in per_point]
                for final_k in final_knobs:
                    shown = [v.T if final_k == "transpose" and v is not None else v for v in values]
                    results.append(((*knobs, step_k, final_k), shown))
        results += self._wrong_quantities(points)
        return results

    def _wrong_quantities(
        self, points: Sequence[_Point]
    ) -> list[tuple[tuple[str, ...], list[Any]]]:
        """∂L/∂(something else): o_t, h_t, δ_t, and ∂L/∂ŷ_t, at every step."""
        work = self.work
        shape = tuple(self.checker.target.shape)
        out: list[tuple[tuple[str, ...], list[Any]]] = []
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
            out.append((("wrong_quantity", shown), values))
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
            out.append((("wrong_quantity", f"∂L/∂{label}[{step}]"), values))
        return out

    def mistakes(self, points: Sequence[_Point], allow_exact: bool = False) -> tuple[Mistake, ...]:
        got = [self.value_at(p) for p in points]
        if any(g is None for g in got):
            return ()
        best: tuple[int, tuple[str, ...], float] | None = None
        for knobs, values in self._variant_values(points):
            factor = _common_factor(got, values)
            if factor is None:
                continue
            changed = sum(1 for k in knobs if k != "ok") if knobs[0] != "wrong_quantity" else 1
            unit = abs(factor - 1) < 1e-9
            score = changed + (0 if unit else 1)
            if score == 0 and not allow_exact:
                continue
            if best is None or score < best[0]:
                best = (score, knobs, factor)
        if best is None:
            return ()
        _, knobs, factor = best
        return self._describe(knobs, factor)

    # -- descriptions ------------------------------------------------------------------
    def _describe(self, knobs: tuple[str, ...], factor: float) -> tuple[Mistake, ...]:
        out: list[Mistake] = []
        if knobs[0] == "wrong_quantity":
            out.append(
                Mistake(
                    "wrong_quantity",
                    f"this is {knobs[1]} (the gradient with respect to another quantity), "
                    f"not ∂L/∂{self.name}",
                )
            )
        else:
            texts = _KnobText(self.work, self.checker.orig, self.name)
            for knob in knobs:
                if knob != "ok":
                    out.append(Mistake(_KNOB_NAMES.get(knob, knob), texts.describe(knob)))
        if abs(factor - 1) > 1e-9:
            out.append(self._factor_mistake(factor))
        return tuple(out)

    def _factor_mistake(self, factor: float) -> Mistake:
        return _factor_mistake(self.work, factor)

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
    """Descriptions of the mutations in the notation's own names."""

    def __init__(self, work: _Work, orig: Derivation, name: str) -> None:
        self.work = work
        self.orig = orig
        self.name = name
        notation = work.notation

        def ascii_of(role: str) -> str:
            # the Elman roles exist only where the recurrence mistakes are searched
            return notation.name_of(role).ascii if _has_roles(notation, (role,)) else role

        self.pred = ascii_of("output")
        self.target = ascii_of("target")
        self.h = ascii_of("hidden")
        self.z = ascii_of("pre_activation")
        self.w = ascii_of("recurrent_weight")
        self.column = notation.layout == "column"

    def _derivative_text(self, form: str) -> str:
        activation = functions.ACTIVATIONS[self.work.spec.hidden]
        derivative, _ = activation.derivative
        h = sp.MatrixSymbol("__h", 2, 1)
        z = sp.MatrixSymbol("__z", 2, 1)
        names = {"__h": f"{self.h}[t]", "__z": f"{self.z}[t]"}
        printer = _Printer(lambda s: names.get(s.name, s.name))
        if form == "correct":
            mapping = {functions.a: h, functions.z: z}
            return printer(functions.lift(derivative, mapping, h.shape))
        if form == "at_pre":
            return printer(functions.lift(derivative, {functions.a: z, functions.z: z}, z.shape))
        return printer(functions.lift(activation.raw_derivative, {functions.z: h}, h.shape))

    def describe(self, knob: str) -> str:
        pred, target, h, w = self.pred, self.target, self.h, self.w
        back = f"{w}.T @ delta[t+1]" if self.column else f"delta[t+1] @ {w}.T"
        if knob == "dropped_target":
            return (
                f"dropped the target from the output error: -(1 - {pred}[t]) (= {pred}[t] - 1) "
                f"where {pred}[t] - {target}[t] belongs (softmax + cross-entropy)"
            )
        if knob == "softmax_diagonal":
            return (
                f"kept only the diagonal of the softmax Jacobian: -{target}[t] * (1 - {pred}[t]) "
                f"where {pred}[t] - {target}[t] belongs; with a one-hot target it is right on the "
                "target class's row and wrong on the others"
            )
        if knob == "no_recurrence":
            return (
                f"missing recurrent term: delta[t] lacks {back}, so only the t == k term of the "
                "sum over k is kept (no gradient flows back through time)"
            )
        if knob == "untransposed_recurrence":
            wrong = f"{w} @ delta[t+1]" if self.column else f"delta[t+1] @ {w}"
            return f"{wrong} where {back} belongs (a missing transpose in the δ recursion)"
        if knob == "derivative_at_pre_activation":
            wrong, right = self._derivative_text("at_pre"), self._derivative_text("correct")
            return (
                "the activation's derivative is taken at the pre-activation: "
                f"{wrong} where {right} belongs"
            )
        if knob == "derivative_of_output":
            return (
                f"the activation's derivative is applied to the hidden state: "
                f"{self._derivative_text('of_output')} where {self._derivative_text('correct')} "
                f"belongs ({h}[t] is already the activation's output)"
            )
        if knob == "no_derivative":
            correct = self._derivative_text("correct")
            return f"the activation's derivative {correct} is missing from delta[t]"
        if knob in ("off_by_one_later", "off_by_one_earlier"):
            offset = 1 if knob == "off_by_one_later" else -1
            wrong, right = self._contribution_text(offset), self._contribution_text(0)
            if wrong and right:
                return f"off-by-one step: {wrong} where {right} belongs"
            later = "later" if offset > 0 else "earlier"
            return f"off-by-one step: the forward quantities are taken one step {later}"
        if knob == "last_step_only":
            return "only the last step's term: the sum over t is missing"
        if knob == "transpose":
            return "transposed: the candidate is the transpose of the gradient"
        return knob

    def _contribution_text(self, offset: int) -> str:
        """The generic step's term of the gradient, the quantities it reads moved by ``offset``.

        Only the forward quantities the contribution itself reads move (h[t-1] in
        δ_t h_{t-1}^T), as in the mutation :meth:`_Diagnosis._generic_terms`
        compares with; the adjoints written out into it do not.
        """
        form = self.orig.step_form
        contribution = _contribution_of(form.backward, self.name)
        if contribution is None:
            return ""
        notation = self.orig.graph.notation
        meta = form.symbols.meta
        moved: dict[Any, Any] = {}
        for symbol in contribution.expr.free_symbols:
            role, step = meta.get(symbol, ("", None))
            if _is_forward(notation, role) and isinstance(step, sp.Basic):
                moved[symbol] = form.symbols.series(role, step + offset)
        defs = _inline(form.backward, _kept(self.orig))
        written_out = {
            a.target: defs[a.target]
            for a in form.backward
            if _is_adjoint(a.kind) and a.kind not in _kept(self.orig)
        }
        expr = contribution.expr.xreplace(moved).xreplace(written_out)
        return _Printer(_naming(form.symbols, notation))(expr)


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


def _rows_columns(got: Any, expected: Any) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    if got is None:
        return None, None
    diff = np.abs(np.asarray(got, dtype=float) - np.asarray(expected, dtype=float))
    tol = 1e-7 * max(1.0, float(np.max(np.abs(expected))))
    rows = tuple(int(i) for i in np.nonzero(diff.max(axis=1) > tol)[0])
    cols = tuple(int(j) for j in np.nonzero(diff.max(axis=0) > tol)[0])
    return rows, cols


def _ranges(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values)


def _losses_at(steps: Sequence[int]) -> str:
    if len(steps) == 1:
        return f"loss at step {steps[0]}"
    return f"losses at steps {_ranges(steps)}"


def _localisation_notes(
    context: _Checker,
    differing: tuple[int, ...] | None,
    loss_steps: tuple[int, ...] | None,
    rows: tuple[int, ...] | None,
    columns: tuple[int, ...] | None,
) -> list[str]:
    steps = context.work.graph.steps
    notes = []
    if differing is not None:
        agree = [s for s in steps if s not in differing]
        text = (
            f"the sum_t terms differ at t = {_ranges(differing)}"
            if differing
            else "every sum_t term agrees with its step's contribution"
        )
        if differing and agree:
            text += f" (agree at t = {_ranges(agree)})"
        notes.append(text)
    if loss_steps is not None:
        target_steps = [context.work.graph.symbols.meta[y][1] for y in context.work.graph.targets]
        if loss_steps:
            fine = [s for s in target_steps if s not in loss_steps]
            text = f"the error involves the {_losses_at(loss_steps)}"
            if fine:
                verb = "is" if len(fine) == 1 else "are"
                text += f" (the {_losses_at(fine)} {verb} handled right)"
            notes.append(text)
        else:
            notes.append("the difference does not change with the targets")
    if rows is not None and columns is not None:
        shape = tuple(int(v) for v in context.target.shape)
        if len(rows) < shape[0] or len(columns) < shape[1]:
            notes.append(
                f"differs in rows {_ranges(rows)} and columns {_ranges(columns)} "
                f"(NumPy indices, of {shape[0]} x {shape[1]})"
            )
        else:
            notes.append("differs in every row and column")
    return notes


def _term_steps(text: str, work: _Work, name: str, point: _Point) -> tuple[int, ...] | None:
    """For a candidate ``c * sum_t(body)``: the steps whose term differs from the contribution.

    Uses the parser's own tree and evaluator (exprlang internals) to build the
    body at each step; returns None when the text is not of that form.
    """
    try:
        tree, src = exprlang._parse_tree(text)
        exprlang._validate(tree.body, src, work.ns)
    except ExpressionError:  # pragma: no cover - the text parsed before
        return None
    node: ast.expr = tree.body
    factor = sp.Integer(1)
    evaluator = exprlang._Evaluator(src, work.ns)
    while True:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            factor *= -1 if isinstance(node.op, ast.USub) else 1
            node = node.operand
            continue
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
            try:
                right = evaluator.eval(node.right, {})
                left = None if isinstance(node.op, ast.Div) else evaluator.eval(node.left, {})
            except ExpressionError:
                return None
            if isinstance(node.op, ast.Div) and not mexpr.is_matrix(right):
                factor /= right
                node = node.left
                continue
            if left is not None and not mexpr.is_matrix(left):
                factor *= left
                node = node.right
                continue
            if not mexpr.is_matrix(right):
                factor *= right
                node = node.left
                continue
            return None
        break
    if not (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sum_t"
    ):
        return None
    contributions = {c.step: c.target for c in work.d.contributions if c.param == name}
    target = _gradient_symbol(work, name)
    differing = []
    for step in work.graph.steps:
        try:
            term = _prepare(_refuse_outside(evaluator.eval(node.args[0], {"t": step})))
        except ExpressionError:
            return None
        if not mexpr.is_matrix(term):
            return None
        value = _evaluate(mexpr.scale(factor, term), point.env_f, "float")
        expected = (
            point.env_f.get(contributions.get(step))
            if step in contributions
            else np.zeros(_shape(target))
        )
        if value is None or not _close(value, expected, 1e-7):
            differing.append(step)
    return tuple(differing)
