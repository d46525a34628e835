"""Activations, output layers and losses: each defined once, as SymPy.

An elementwise activation is one table entry: its name, its definition as a
SymPy expression of the scalar ``z`` and the symbol documents write for it.
Everything else follows from the definition:

* the derivative, by ``sympy.diff``, re-expressed through the activation's
  output ``a`` when that is simpler (tanh' = 1 - a**2, sigmoid' = a (1 - a));
* the gradient of an output layer + loss pair with respect to the output
  pre-activation, by ``sympy.diff`` of the composed scalar definitions at a
  small explicit number of units, re-expressed through the outputs (softmax +
  cross-entropy comes out as ``a - y`` given sum_j y_j = 1);
* the matrix forms, by :func:`lift`, which turns a scalar elementwise
  expression into a Hadamard matrix expression.

ReLU's derivative at 0 is 0 (``Heaviside(z, 0)``), as PyTorch does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from . import mexpr

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "OUTPUTS",
    "Activation",
    "Apply",
    "Loss",
    "OutputGradient",
    "SoftmaxOutput",
    "activation_for",
    "elementwise",
    "lift",
    "output_loss_gradient",
    "register_activation",
    "unregister_activation",
]

#: A hook of :func:`lift`: ``(node, recurse) -> matrix form or None``.
Rewrite = Callable[[sp.Basic, Callable[[sp.Basic], Any]], Any]

#: The scalar argument of every activation definition, and its output.
z = sp.Symbol("z", real=True)
a = sp.Symbol("a", real=True)
#: The scalar target of a loss definition.
y = sp.Symbol("y", real=True)

_SAMPLE_POINTS = (sp.Rational(-13, 10), sp.Rational(-2, 5), sp.Rational(3, 10), sp.Rational(17, 10))


def _pytorch_heaviside(expr: sp.Expr) -> sp.Expr:
    """ReLU-type derivatives: Heaviside(0) = 0, as PyTorch does."""
    return expr.replace(sp.Heaviside, lambda arg, *_: sp.Heaviside(arg, 0))


def _agrees(lhs: sp.Expr, rhs: sp.Expr, var: sp.Symbol) -> bool:
    """True when two scalar expressions of ``var`` agree at the sample points."""
    return all(_is_tiny((lhs - rhs).subs(var, point)) for point in _SAMPLE_POINTS)


def _is_tiny(expr: sp.Expr) -> bool:
    value = expr.evalf(30)
    return bool(value.is_number) and abs(complex(value)) < 1e-20


def _tidy(expr: sp.Expr) -> sp.Expr:
    """The shortest of a few equivalent forms: 1 - a**2 rather than -(a - 1)*(a + 1)."""
    factored = sp.factor(expr)
    if isinstance(factored, sp.Mul) and factored.could_extract_minus_sign():
        adds = [f for f in factored.args if isinstance(f, sp.Add)]
        if adds:
            rest = [f for f in (-factored).args if f is not adds[0]]
            factored = sp.Mul(-adds[0], *rest, evaluate=False)
    candidates = [factored, sp.expand(expr)]
    return min(candidates, key=lambda e: (sp.count_ops(e), len(str(e))))


@dataclass(frozen=True)
class Activation:
    """An elementwise activation, defined by ``definition`` (an expression of ``z``)."""

    name: str
    definition: sp.Expr
    latex: str

    @cached_property
    def function(self) -> sp.Lambda:
        """The definition as a ``Lambda`` (what matrix expressions apply elementwise)."""
        return sp.Lambda(z, self.definition)

    @cached_property
    def raw_derivative(self) -> sp.Expr:
        """``d definition / dz`` by ``sympy.diff`` (Heaviside(0) = 0)."""
        return _pytorch_heaviside(sp.diff(self.definition, z))

    @cached_property
    def derivative(self) -> tuple[sp.Expr, str]:
        """The derivative, and ``"output"`` (written in ``a``) or ``"input"`` (in ``z``).

        The output form is used when it is correct (checked at sample points)
        and no longer than the input form; a constant derivative is an
        ``"output"`` form with no symbol in it.
        """
        raw = self.raw_derivative
        if z not in raw.free_symbols:
            return raw, "output"
        for candidate in self._output_forms(raw):
            if z in candidate.free_symbols:
                continue
            if sp.count_ops(candidate) > sp.count_ops(raw):
                continue
            if _agrees(candidate.subs(a, self.definition), raw, z):
                return _tidy(candidate), "output"
        return raw, "input"

    def _output_forms(self, raw: sp.Expr) -> Iterator[sp.Expr]:
        """The derivative rewritten in the output ``a``: by substituting the definition,
        then through each closed-form inverse.  Lazily: ``solve`` and ``simplify`` cost
        about half a second, and tanh and sigmoid need only the first."""
        yield raw.subs(self.definition, a)
        try:
            inverses = sp.solve(sp.Eq(a, self.definition), z)
        except (NotImplementedError, ValueError):  # no closed-form inverse
            inverses = []
        for inverse in inverses:
            yield sp.simplify(raw.subs(z, inverse))

    def derivative_of(self, out: sp.Basic, arg: sp.Basic) -> sp.Basic:
        """The derivative as a matrix expression, given the output and argument matrices."""
        expr, _ = self.derivative
        return lift(expr, {a: out, z: arg}, arg.shape)


#: The activations, by name.  Add one with :func:`register_activation`.
ACTIVATIONS: dict[str, Activation] = {}
_BY_LAMBDA: dict[sp.Lambda, Activation] = {}


def register_activation(name: str, definition: sp.Expr, latex: str | None = None) -> Activation:
    """Add an elementwise activation given only its SymPy definition of ``z``."""
    act = Activation(name, sp.sympify(definition), latex or rf"\operatorname{{{name}}}")
    ACTIVATIONS[name] = act
    _BY_LAMBDA[act.function] = act
    if "OUTPUTS" in globals():  # the built-in ones are listed below, after softmax
        OUTPUTS.setdefault(name, act)
    return act


def unregister_activation(name: str) -> None:
    """Remove an activation added with :func:`register_activation`."""
    act = ACTIVATIONS.pop(name)
    _BY_LAMBDA.pop(act.function, None)
    OUTPUTS.pop(name, None)


register_activation("tanh", sp.tanh(z), r"\tanh")
register_activation("sigmoid", 1 / (1 + sp.exp(-z)), r"\sigma")
register_activation("relu", sp.Max(0, z), r"\operatorname{ReLU}")
register_activation("identity", z, r"\operatorname{id}")


def activation_for(function: sp.Lambda) -> Activation:
    """The registered activation of a ``Lambda``; an unnamed one gets a derived entry."""
    found = _BY_LAMBDA.get(function)
    if found is not None:
        return found
    (var,) = function.variables
    body = function.expr.xreplace({var: z})
    return Activation(str(function.expr.func).lower(), body, rf"\operatorname{{{body.func}}}")


class _Code(sp.Symbol):  # type: ignore[misc]
    """A placeholder that prints as already-printed text (the argument of an :class:`Apply`)."""

    def _latex(self, printer: Any) -> str:
        return str(self.name)

    def _numpycode(self, printer: Any) -> str:
        return str(self.name)


class Apply(ElementwiseApplyFunction):  # type: ignore[misc]
    r"""A function of one variable applied to every entry of a matrix expression.

    SymPy's own node, made first-class for SymPy's printers: ``sympy.latex``
    writes a registered activation by its name as the documents do
    (``\tanh\left(X\right)`` rather than SymPy's ``(z \mapsto \tanh z)_\circ(X)``),
    any other function by its body at the argument; ``NumPyPrinter`` and
    ``lambdify`` print the body as NumPy calls on the argument (``Max`` and
    ``Min`` through ``Piecewise``, which NumPy evaluates elementwise).
    """

    def _body_at(self, printed: str, printer: Any) -> str:
        (var,) = self.function.variables
        body = self.function.expr
        if body.has(sp.Max, sp.Min):
            body = body.rewrite(sp.Piecewise)
        return str(printer._print(body.xreplace({var: _Code(printed, real=True)})))

    def _latex(self, printer: Any) -> str:
        arg = printer._print(self.expr)
        found = _BY_LAMBDA.get(self.function)
        if found is not None:
            return rf"{found.latex}\left({arg}\right)"
        return self._body_at(rf"\left({arg}\right)", printer)

    def _numpycode(self, printer: Any) -> str:
        return f"({self._body_at(f'({printer._print(self.expr)})', printer)})"


def elementwise(function: sp.Lambda | Activation | str, arg: sp.Basic) -> sp.Basic:
    """``function`` applied to every entry of the matrix expression ``arg``."""
    if isinstance(function, str):
        function = ACTIVATIONS[function]
    if isinstance(function, Activation):
        function = function.function
    return Apply(function, arg)


# ---------------------------------------------------------------------------- lifting
def lift(
    expr: sp.Basic,
    mapping: Mapping[sp.Symbol, sp.Basic],
    shape: tuple[Any, Any],
    rewrite: Rewrite | None = None,
) -> Any:
    """Turn a scalar elementwise expression into a matrix expression.

    Symbols in ``mapping`` become those matrices; sums stay sums, products
    become Hadamard products, integer powers Hadamard powers, numbers a
    multiple of the all-ones matrix and a function of one argument an
    elementwise application.  ``rewrite(node, recurse)``, when given, is asked
    first at every node and may return the node's matrix form (lifting its
    parts with ``recurse``) or None.  The scalar expression is small (a
    derivative or a loss), so this recursion is shallow.
    """
    if rewrite is not None:
        done = rewrite(expr, lambda part: lift(part, mapping, shape, rewrite))
        if done is not None:
            return done
    if expr in mapping:
        return mapping[expr]
    if expr.is_number:
        return mexpr.scale(expr, mexpr.ones(*shape))
    if isinstance(expr, sp.Add):
        return mexpr.add(*(lift(arg, mapping, shape, rewrite) for arg in expr.args))
    if isinstance(expr, sp.Mul):
        coeff, factors = expr.as_coeff_mul()
        lifted = [lift(f, mapping, shape, rewrite) for f in factors]
        return mexpr.scale(coeff, mexpr.hadamard(*lifted))
    if isinstance(expr, sp.Pow) and expr.exp.is_Integer:
        return mexpr.hadamard_power(lift(expr.base, mapping, shape, rewrite), int(expr.exp))
    if isinstance(expr, sp.Function) and expr.args:
        inner, *rest = expr.args
        if not any(rest_arg.free_symbols & set(mapping) for rest_arg in rest):
            return Apply(sp.Lambda(z, expr.func(z, *rest)), lift(inner, mapping, shape, rewrite))
    raise TypeError(f"cannot lift {expr!r} to a matrix expression")


# ---------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class SoftmaxOutput:
    """The softmax over the output units, defined on an explicit list of units."""

    name: str = "softmax"
    latex: str = mexpr.Softmax.latex_name

    @staticmethod
    def definition_of(units: list[sp.Expr]) -> list[sp.Expr]:
        """softmax_i(o) = exp(o_i) / sum_k exp(o_k)."""
        total = sp.Add(*(sp.exp(u) for u in units))
        return [sp.exp(u) / total for u in units]

    @property
    def definition(self) -> sp.Expr:
        """The definition written with an index, for documents."""
        i, k, n = sp.symbols("i k n", integer=True, positive=True)
        o = sp.IndexedBase("o")
        return sp.exp(o[i]) / sp.Sum(sp.exp(o[k]), (k, 1, n))


#: Output layers by name: the elementwise activations, plus softmax.
OUTPUTS: dict[str, Activation | SoftmaxOutput] = {
    "softmax": SoftmaxOutput(),
    "sigmoid": ACTIVATIONS["sigmoid"],
    "identity": ACTIVATIONS["identity"],
    "relu": ACTIVATIONS["relu"],
}


def _output_units(output: Activation | SoftmaxOutput, units: list[sp.Expr]) -> list[sp.Expr]:
    if isinstance(output, SoftmaxOutput):
        return output.definition_of(units)
    return [output.definition.xreplace({z: u}) for u in units]


# ---------------------------------------------------------------------------- losses
@dataclass(frozen=True)
class Loss:
    """A loss per output unit, ``definition`` of the prediction ``a`` and target ``y``.

    The loss of one example sums it over the units; ``distribution`` says the
    targets sum to one over the units (cross-entropy's one-hot or soft labels).
    """

    name: str
    definition: sp.Expr
    distribution: bool = False

    @cached_property
    def derivative(self) -> sp.Expr:
        """d loss / d a by ``sympy.diff``."""
        return sp.diff(self.definition, a)


LOSSES: dict[str, Loss] = {
    "cross_entropy": Loss("cross_entropy", -y * sp.log(a), distribution=True),
    "binary_cross_entropy": Loss(
        "binary_cross_entropy", -(y * sp.log(a) + (1 - y) * sp.log(1 - a))
    ),
    "squared_error": Loss("squared_error", (a - y) ** 2 / 2),
}


@dataclass(frozen=True)
class OutputGradient:
    """d loss / d o for one output unit, derived from the output and loss definitions.

    ``fused`` is the derivative written in the unit's own prediction ``a``,
    target ``y`` and pre-activation ``z`` when it depends on nothing else (the
    pair is elementwise after simplification); it is ``None`` when it couples
    the units (softmax + squared error), and the gradient is then the chain of
    the loss's and the output's own rules.
    """

    fused: sp.Expr | None
    derived: sp.Expr  # the raw sympy.diff result for unit 0, before re-expression
    units: int


_UNITS = 3


@cache
def output_loss_gradient(output_name: str, loss_name: str) -> OutputGradient:
    """Derive d(sum_j loss(g(o)_j, y_j)) / d o_0 at three explicit units.

    The derivative is taken by ``sympy.diff`` of the composed definitions,
    then re-expressed through the predictions: for softmax the pre-activations
    are written o_j = log p_j with sum_j p_j = 1 (softmax is shift-invariant),
    for an elementwise output g(o_j) becomes p_j (and o_j its inverse where one
    exists).  For a distribution loss the targets satisfy sum_j y_j = 1.  A
    re-expressed form is kept only if it agrees with the raw derivative at
    sample points; it is ``fused`` when it involves unit 0 alone.
    """
    output = OUTPUTS[output_name]
    loss = LOSSES[loss_name]
    n = _UNITS
    o = sp.symbols(f"o0:{n}", real=True)
    t = sp.symbols(f"y0:{n}", real=True)
    preds = _output_units(output, list(o))
    total = sp.Add(*(loss.definition.xreplace({a: preds[j], y: t[j]}) for j in range(n)))
    derived = _pytorch_heaviside(sp.diff(total, o[0]))
    if isinstance(output, SoftmaxOutput):
        p = sp.symbols(f"p0:{n}", positive=True)
        expr = derived.xreplace({o[j]: sp.log(p[j]) for j in range(n)})
        expr = sp.simplify(expr.xreplace({p[-1]: 1 - sp.Add(*p[:-1])}))
    else:
        p = sp.symbols(f"p0:{n}", real=True)
        expr = derived.subs({preds[j]: p[j] for j in range(n)})
        inverse: list[sp.Expr] = []
        if output.derivative[1] == "output" and output.definition != z:
            try:
                inverse = sp.solve(sp.Eq(a, output.definition), z)
            except (NotImplementedError, ValueError):  # no closed-form inverse
                inverse = []
        if len(inverse) == 1:
            expr = expr.subs({o[j]: inverse[0].xreplace({a: p[j]}) for j in range(n)})
        expr = sp.simplify(expr)
    if loss.distribution:
        expr = sp.simplify(expr.xreplace({t[-1]: 1 - sp.Add(*t[:-1])}))
    if expr.free_symbols <= {p[0], t[0], o[0]} and _fused_agrees(
        expr, derived, output, loss, o, p, t
    ):
        fused = _tidy(expr).xreplace({p[0]: a, t[0]: y, o[0]: z})
        return OutputGradient(_pytorch_heaviside(fused), derived, n)
    return OutputGradient(None, derived, n)


def _fused_agrees(
    expr: sp.Expr,
    derived: sp.Expr,
    output: Activation | SoftmaxOutput,
    loss: Loss,
    o: tuple[sp.Symbol, ...],
    p: tuple[sp.Symbol, ...],
    t: tuple[sp.Symbol, ...],
) -> bool:
    """Check a re-expressed gradient against the raw derivative at sample points."""
    samples = (
        (sp.Rational(-7, 10), sp.Rational(3, 5), sp.Rational(6, 5)),
        (sp.Rational(13, 10), sp.Rational(-2, 5), sp.Rational(1, 10)),
    )
    targets = (sp.Rational(1, 5), sp.Rational(1, 2), sp.Rational(3, 10))
    if not loss.distribution:
        targets = (sp.Rational(1), sp.Rational(0), sp.Rational(7, 10))
    for values in samples:
        point = dict(zip(o, values, strict=True)) | dict(zip(t, targets, strict=True))
        preds = _output_units(output, list(values))
        point |= dict(zip(p, preds, strict=True))
        if not _is_tiny(expr.xreplace(point) - derived.xreplace(point)):
            return False
    return True
