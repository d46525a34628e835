"""Check a hand-derived BPTT gradient against the derivation.

::

    r = symbptt.check(spec, wrt="W_hy", candidate="sum_t((y_hat[t] - y[t]) @ h[t].T)")
    r.ok           # True or False
    r.explain()    # a short, readable report

A candidate is one of

* a string in the expression language of :mod:`symbptt.exprlang` over the
  names of the spec's notation (:func:`names` lists them; below);
* a SymPy matrix expression in the derivation's symbols (``derive(spec)``:
  parameters, ``graph.symbols.series(role, step)``, the adjoints ``delta_t``);
* a Python callable ``f(params, X, Y, h0)`` taking the arrays of the generated
  NumPy module (time-major ``X`` (T, m, n_in), ``Y`` (T, m, n_out) or
  (m, n_out) for many_to_one, ``params`` by ASCII name in the notation's
  shapes with biases (n, 1), ``h0`` (m, n_hidden) or None) and returning the
  gradient of ``wrt``, or a dict holding it under that name.

Verdicts
--------
Expressions are evaluated at ``points`` random instances of the model (sizes
left symbolic in the spec get small distinct values) in 30-digit arithmetic,
with every forward quantity (h, ŷ, ...) and every δ_t computed by the
derivation; the expected value is the derivation's gradient at the same
point.  When the candidate agrees everywhere the checker tries to prove it:
both sides become explicit matrices at those sizes whose entries are
polynomials (over the rationals) in the entries of the parameters, inputs,
targets and forward quantities, first with δ_t kept as a symbol, then with δ_t
expanded (f(z_t) and softmax(o_t) in the candidate read as h_t and ŷ_t), and
they must be the same polynomials; the report says ``method == "symbolic"``
when that succeeds, else ``"numeric at N points, 30 digits"`` (the proof gives
up on non-polynomial candidates and past a work budget).  Callables are
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

In every notation ``delta[t]`` is δ_t = ∂L/∂(hidden pre-activation at t),
``T`` the number of steps, ``m`` the batch size and ``n_0``, ``n_1``, ``n_2``
the input, hidden and output sizes; the functions are ``tanh exp log sigmoid``
(elementwise), ``softmax`` (over the output units), ``ones(rows, cols)`` and
``diag(vector)``; the reducers ``sum_t``, ``sum_k`` and ``prod_j``
(:mod:`symbptt.exprlang`).  Steps run 1..T (0..T-1 in ``layered``); the step
before the first is the initial state, ``delta`` one step after the last is
zero, and any other step outside the model is an error.  In many_to_one
models only the last step has an output and a target.  As in its seed, the
``aa`` notation calls the prediction ``y`` and the target ``y_hat``.
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
from .notation import NOTATIONS, SERIES_ROLES, Notation
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


def _notation_of(obj: str | Notation | ModelSpec | Derivation) -> Notation:
    if isinstance(obj, Notation):
        return obj
    if isinstance(obj, Derivation):
        return obj.graph.notation
    if isinstance(obj, ModelSpec):
        return NOTATIONS[obj.notation]
    if obj in NOTATIONS:
        return NOTATIONS[obj]
    raise ValueError(f"unknown notation {obj!r}; expected one of {', '.join(NOTATIONS)}")


def _generic_symbols(notation: Notation) -> Symbols:
    """The notation's symbols at symbolic sizes (n_0, n_1, n_2, m)."""
    return Symbols(ModelSpec(notation=notation.name), notation)


def names(notation: str | Notation | ModelSpec | Derivation) -> tuple[NameInfo, ...]:
    """The names of the expression language in a notation (a name, a spec or a derivation)."""
    nota = _notation_of(notation)
    first = nota.t0
    last = "T" if first == 1 else "T-1"
    before = first - 1
    after = "T+1" if first == 1 else "T"
    symbols = _generic_symbols(nota)
    hidden_shape = _shape_text(symbols.series_shape("hidden"))  # also the pre-activation's
    out: list[NameInfo] = []
    for param in nota.params:
        shape = _shape_text(symbols.param_shape(param.role))
        out.append(NameInfo(param.ascii, "parameter", f"{param.description} {shape}"))
    hidden = nota.series_of("hidden").ascii
    out.append(
        NameInfo(
            nota.initial_ascii,
            "initial state",
            f"initial hidden state = {hidden}[{before}] {hidden_shape} "
            "(zero unless the spec has initial_state='input')",
        )
    )
    for role in SERIES_ROLES:
        series = nota.series_of(role)
        extra = ""
        if role == "hidden":
            extra = f"; {series.ascii}[{before}] is the initial state"
        out.append(
            NameInfo(
                f"{series.ascii}[t]",
                "series",
                f"{series.description} {_shape_text(symbols.series_shape(role))}, "
                f"t = {first}..{last}{extra}",
            )
        )
    pre = nota.series_of("pre_activation").ascii
    out.append(
        NameInfo(
            "delta[t]",
            "adjoint",
            f"δ_t = ∂L/∂{pre}[t] {hidden_shape}; delta[{after}] = 0",
        )
    )
    out.append(NameInfo("T", "scalar", "the number of steps"))
    out += [
        NameInfo("m", "size", "the batch size (examples per step)"),
        NameInfo("n_0", "size", "the input size"),
        NameInfo("n_1", "size", "the hidden size"),
        NameInfo("n_2", "size", "the output size"),
    ]
    out += [
        NameInfo("tanh(A)", "function", "elementwise tanh"),
        NameInfo("sigmoid(A)", "function", "elementwise logistic sigmoid 1/(1+exp(-A))"),
        NameInfo("exp(A)", "function", "elementwise exp"),
        NameInfo("log(A)", "function", "elementwise natural log"),
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
    nota = _notation_of(notation)
    lines = [f"expression language names ({nota.name}):"]
    lines += [f"  {info}" for info in names(nota)]
    lines.append("  operators: @ (matrix product), * (elementwise), / + - ** .T")
    return "\n".join(lines)


# =========================================================================== namespace
def _table(graph: Graph) -> dict[tuple[str, int], Any]:
    """(role, step) -> the graph's symbol, for the series and the adjoints."""
    table: dict[tuple[str, int], Any] = {}
    for symbol, (role, step) in graph.symbols.meta.items():
        if isinstance(step, int) and (role in SERIES_ROLES or role.startswith("adjoint_")):
            table[(role, step)] = symbol
    return table


def _steps_text(steps: tuple[int, ...]) -> str:
    return f"{steps[0]}..{steps[-1]}"


def _series_at(
    graph: Graph, table: Mapping[tuple[str, int], Any], role: str, label: str, step: int
) -> Any:
    steps = graph.steps
    first, last = steps[0], steps[-1]
    found = table.get((role, step))
    if found is not None:
        return found
    if role == "hidden" and step == first - 1:
        return graph.initial
    if role == "adjoint_pre_activation":
        if step == last + 1:
            return sp.ZeroMatrix(*graph.symbols.series_shape("pre_activation"))
        if first <= step <= last:
            return sp.ZeroMatrix(*graph.symbols.series_shape("pre_activation"))
    if first <= step <= last:
        raise ExpressionError(
            f"{label}[{step}] does not exist: in this many_to_one model only the last step "
            f"({last}) has an output and a target"
        )
    hint = ""
    if role == "hidden":
        hint = f" ({label}[{first - 1}] is the initial state)"
    elif role == "adjoint_pre_activation":
        hint = f" (delta[{last + 1}], one step after the last, is zero)"
    raise ExpressionError(
        f"{label}[{step}] is outside the model: its steps are {_steps_text(steps)}{hint}"
    )


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


def _functions(layout: str, sizes: Iterable[Any]) -> dict[str, Callable[..., Any]]:
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
    return {
        "tanh": _elementwise_fn("tanh", tanh, sp.tanh),
        "sigmoid": _elementwise_fn("sigmoid", sigmoid, lambda v: 1 / (1 + sp.exp(-v))),
        "exp": _elementwise_fn("exp", sp.Lambda(z, sp.exp(z)), sp.exp),
        "log": _elementwise_fn("log", sp.Lambda(z, sp.log(z)), sp.log),
        "softmax": softmax,
        "ones": ones,
        "diag": diag,
    }


def namespace(d: Derivation) -> Namespace:
    """The expression language's :class:`~symbptt.exprlang.Namespace` of a derivation."""
    graph = d.graph
    notation = graph.notation
    table = _table(graph)
    constants: dict[str, Any] = dict(graph.params)
    sizes = graph.symbols.sizes
    for key, label in _SIZE_FIELDS:
        constants[label] = sizes[key]
    constants.setdefault(notation.initial_ascii, graph.initial)
    indexed: dict[str, Callable[[int], Any]] = {}
    for role in SERIES_ROLES:
        label = notation.series_of(role).ascii
        indexed[label] = _bind_series(graph, table, role, label)
    indexed["delta"] = _bind_series(graph, table, "adjoint_pre_activation", "delta")
    return Namespace(
        constants=constants,
        indexed=indexed,
        functions=_functions(notation.layout, sizes.values()),
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

    ``shift(role, step)`` may move the step printed for a role.
    """
    meta = graph_symbols.meta

    def name(symbol: Any) -> str:
        info = meta.get(symbol)
        if info is None:
            return str(symbol.name)
        role, step = info
        if step is None:
            if role == "initial_state":
                return notation.initial_ascii
            return str(symbol.name)
        if shift is not None:
            step = shift(role, step)
        if role == "adjoint_pre_activation":
            label = "delta"
        elif role in SERIES_ROLES:
            label = notation.series_of(role).ascii
        else:
            return str(symbol.name)
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


def _inline(assignments: Iterable[Assignment]) -> dict[Any, Any]:
    """Adjoint and contribution expressions with every adjoint but δ substituted."""
    defs: dict[Any, Any] = {}
    out: dict[Any, Any] = {}
    for a in assignments:
        expr = a.expr.xreplace(defs)
        if a.kind in ("adjoint_output_pre_activation", "adjoint_hidden"):
            defs[a.target] = expr
        out[a.target] = expr
    return out


def _contribution_of(assignments: Iterable[Assignment], name: str) -> Assignment | None:
    for a in assignments:
        if a.kind == "contribution" and a.param == name:
            return a
    return None


def _delta_of(assignments: Iterable[Assignment]) -> Assignment | None:
    for a in assignments:
        if a.kind == "adjoint_pre_activation":
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

    The forward assignments of the generic step ``t`` (pre-activation, hidden
    state, output pre-activation, prediction, the loss of a step) and the
    total loss, as ``(left-hand side, right-hand side)`` pairs.
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


def _delta_lines(d: Derivation) -> tuple[str, ...]:
    """The δ recursion in the expression language, and what lies outside the steps."""
    form = d.step_form
    notation = d.graph.notation
    printer, last_printer, last_step = _printers(d)
    lines: list[str] = []
    delta_body = _delta_of(form.backward)
    if form.last_backward is None:
        if delta_body is not None:
            lines.append(f"delta[t] = {printer(_inline(form.backward)[delta_body.target])}")
    else:
        delta_last = _delta_of(form.last_backward)
        if delta_last is not None:
            value = last_printer(_inline(form.last_backward)[delta_last.target])
            lines.append(f"delta[{Symbols.step_name(last_step)}] = {value}")
        if delta_body is not None:
            value = printer(_inline(form.backward)[delta_body.target])
            lines.append(f"delta[t] = {value}  (t < {Symbols.step_name(last_step)})")
    first = notation.t0
    hidden = notation.series_of("hidden").ascii
    initial = "0" if d.spec.initial_state == "zero" else notation.initial_ascii
    after = "T+1" if first == 1 else "T"
    lines.append(f"delta[{after}] = 0, {hidden}[{first - 1}] = {initial}")
    return tuple(lines)


def _generic_formula(d: Derivation, name: str) -> str | None:
    """The gradient as ``sum_t(...)`` from the generic step form (None if it has no such form)."""
    if name not in d.graph.params:
        return None
    form = d.step_form
    printer, last_printer, _ = _printers(d)
    body = _contribution_of(form.backward, name)
    if form.last_backward is None:
        if body is None:
            return None
        return f"sum_t({printer(_inline(form.backward)[body.target])})"
    last = _contribution_of(form.last_backward, name)
    if last is None:
        return None
    last_defs = _inline(form.last_backward)
    if body is None:
        return last_printer(last_defs[last.target])
    body_text = printer(_inline(form.backward)[body.target])
    if printer(last_defs[last.target]) != body_text:
        return None
    return f"sum_t({body_text})"


def _unrolled_formula(d: Derivation, name: str) -> str:
    """The gradient as the explicit sum of its per-step contributions."""
    graph = d.graph
    printer = _Printer(_naming(graph.symbols, graph.notation))
    defs = _inline(a for a in d.assignments if a.kind != "gradient")
    terms = [printer(defs[c.target]) for c in d.contributions if c.param == name]
    if not terms:
        rows, cols = d.gradients[name].shape
        return f"0 * ones({rows}, {cols})"
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
    return Formula(generic, _delta_lines(d))


def _formula_agrees(spec: ModelSpec, name: str, text: str) -> bool:
    try:
        exprlang.parse(text, _namespace_of(spec))
        work = _work(spec)
        expr = _prepare(exprlang.parse(text, work.ns))
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
        leaves[graph.initial] = rng.normal(scale=0.5, size=_shape(graph.initial))
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
            ``f(params, X, Y, h0)`` (see the module docstring).
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
        exprlang.parse(candidate, _namespace_of(spec))  # shapes in the spec's own sizes
        expr = _prepare(exprlang.parse(candidate, checker.work.ns))
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
    notation = work.notation
    symbols = work.graph.symbols
    out = []
    for role in SERIES_ROLES:
        if tuple(int(v) for v in symbols.series_shape(role)) == shape:
            out.append(f"{notation.series_of(role).ascii}[t]")
    if tuple(int(v) for v in symbols.series_shape("pre_activation")) == shape:
        out.append("delta[t]")
    return out


# ================================================================ callables: arrays
def _arrays(
    work: _Work, leaves: Mapping[Any, np.ndarray]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray | None]:
    """The generated module's arguments (params, X, Y, h0) for a point's leaves."""
    graph = work.graph
    column = work.notation.layout == "column"

    def batch_major(value: np.ndarray) -> np.ndarray:
        return np.array(value.T if column else value)

    params = {name: np.array(leaves[symbol]) for name, symbol in graph.params.items()}
    X = np.stack([batch_major(leaves[x]) for x in graph.inputs])
    ys = [batch_major(leaves[y]) for y in graph.targets]
    Y = np.stack(ys) if work.spec.mode == "many_to_many" else ys[0]
    h0 = None
    if work.spec.initial_state == "input":
        h0 = batch_major(leaves[graph.initial])
    return params, X, Y, h0


def _call(fn: Callable[..., Any], work: _Work, leaves: Mapping[Any, np.ndarray], name: str) -> Any:
    params, X, Y, h0 = _arrays(work, leaves)
    result = fn(params, X, Y, h0)
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
        params, X, Y, h0 = _arrays(self.work, point.leaves)
        _, grads = self.module.loss_and_gradients(params, X, Y, h0)
        return np.asarray(grads[name], dtype=float)

    def gradient(self, point: _Point, name: str) -> Any:
        if self.module is None:
            return point.env_f[_target(self.work, name)]
        return self._module_gradient(point, name)


@cache
def _generated_module(spec: ModelSpec) -> tuple[Any, str]:
    """The generated module of ``spec`` and, when there is none, why."""
    try:
        from . import emit
    except ImportError as exc:
        return None, f"code generation is not available: {exc}"
    try:
        return emit.load_module(emit.emit_numpy(spec)), ""
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
    forward = [
        a
        for a in graph.assignments
        if a.kind in ("pre_activation", "hidden", "output_pre_activation", "output")
    ]
    canonical = {a.expr: a.target for a in forward}
    canonical.update({work.d.value_of(a.target): a.target for a in forward})
    expr = expr.xreplace(canonical)
    meta = graph.symbols.meta
    defs = {a.target: a.expr for a in work.d.assignments}
    deltas = {s for s, (role, _) in meta.items() if role == "adjoint_pre_activation"}
    target = _gradient_symbol(work, name)
    levels = (
        ("with delta[t] as a symbol", {k: v for k, v in defs.items() if k not in deltas}),
        ("with delta[t] expanded", defs),
    )
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


class _NotPolynomial(Exception):
    """The expression is not a polynomial in the entries (or too big to expand)."""


class _NeedRationals(Exception):
    """A coefficient is not an integer: redo the expansion over the rationals."""


class _PolyExplicit:
    """Matrix expressions as NumPy object arrays of polynomials in their leaves' entries."""

    def __init__(self, defs: Mapping[Any, Any], roots: Sequence[Any], domain: Any) -> None:
        self.defs = defs
        self.domain = domain
        leaves = sorted(self._leaves(roots), key=lambda s: str(s.name))
        gens: list[sp.Symbol] = []
        self.index: dict[Any, list[list[int]]] = {}
        for leaf in leaves:
            rows, cols = int(leaf.shape[0]), int(leaf.shape[1])
            self.index[leaf] = [
                [len(gens) + i * cols + j for j in range(cols)] for i in range(rows)
            ]
            gens += [sp.Symbol(f"{leaf.name}[{i},{j}]") for i in range(rows) for j in range(cols)]
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
            index = self.index[expr]
            out = np.empty((len(index), len(index[0])), dtype=object)
            for i, row in enumerate(index):
                for j, k in enumerate(row):
                    out[i, j] = self.gens[k]
            return out
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
        adjoints = [a for a in work.d.assignments if a.kind.startswith("adjoint_")]
        out_knobs: Sequence[str] = ("ok",)
        if spec.output == "softmax" and spec.loss == "cross_entropy":
            out_knobs = _OUT_KNOBS
        uses_delta = self._uses_delta()
        rec_knobs: Sequence[str] = _REC_KNOBS if uses_delta else ("ok",)
        der_knobs: Sequence[str] = ("ok",)
        if uses_delta and spec.hidden != "identity":
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
            for symbol in contribution.expr.free_symbols:
                role, at = form.symbols.meta.get(symbol, ("", None))
                if not isinstance(at, sp.Basic):
                    continue
                k = int(at.subs(form.t, step))
                if role in ("hidden", "input"):
                    k += offset
                found = work.table.get((role, k))
                if found is None:
                    found = graph.initial if role == "hidden" and k == first - 1 else None
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
            if not role.startswith("adjoint_") or tuple(symbol.shape) != shape:
                continue
            base = role[len("adjoint_") :]
            label = "delta" if base == "pre_activation" else notation.series_of(base).ascii
            values = [p.env_f.get(symbol) for p in points]
            out.append(
                (
                    (
                        "wrong_quantity",
                        f"∂L/∂{label}[{step}]" if label != "delta" else f"delta[{step}]",
                    ),
                    values,
                )
            )
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
            label = notation.series_of("output").ascii
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
        self.pred = notation.series_of("output").ascii
        self.target = notation.series_of("target").ascii
        self.h = notation.series_of("hidden").ascii
        self.z = notation.series_of("pre_activation").ascii
        self.w = notation.param("recurrent_weight").ascii
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
        """The generic step's term of the gradient, its h and x moved by ``offset`` steps."""
        form = self.orig.step_form
        contribution = _contribution_of(form.backward, self.name)
        if contribution is None:
            return ""

        def shift(role: str, step: Any) -> Any:
            if role in ("hidden", "input") and isinstance(step, sp.Basic):
                return step + offset
            return step

        defs = _inline(form.backward)
        printer = _Printer(_naming(form.symbols, self.orig.graph.notation, shift))
        return printer(defs[contribution.target])


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
            term = _prepare(evaluator.eval(node.args[0], {"t": step}))
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
