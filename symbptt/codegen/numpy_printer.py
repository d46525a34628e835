"""The project's NumPy printer: matrix expressions of the derivation as NumPy code.

A subclass of SymPy's :class:`~sympy.printing.numpy.NumPyPrinter` that only
overrides ``_print_<Class>`` methods (the stock printer writes ``A.dot(-1)``
for a scaled matrix and knows no elementwise power).  What it prints:

* ``A B`` as ``A @ B``; a broadcast bias ``b 1^T`` / ``1 b^T`` as plain
  broadcasting (``b`` / ``b.T``); ``X 1`` and ``1^T X`` (sums over examples or
  units) as ``X.sum(axis=..., keepdims=True)`` (a column as ``X.sum(axis=0)[:, None]``,
  contiguous);
* Hadamard products as ``*``, Hadamard powers as ``**``, transposes as ``.T``,
  an all-ones matrix inside a sum as the scalar ``1``, scalar coefficients
  such as ``1/m`` as a division;
* an elementwise function through the activation's SymPy definition: a
  registered activation calls a module-level helper (``sigmoid(z)``) whose
  body :func:`helper_source` prints from :func:`safe_form` of the definition
  (a rewrite that cannot overflow, chosen by SymPy); any other elementwise
  function is printed inline (``np.heaviside(z, 0)``, ``np.exp(-h)``);
* ``log(1 + exp(u))`` as ``np.logaddexp(0, u)``, ``log(1 + u)`` as
  ``np.log1p(u)``, ``Heaviside(x, 0)`` as ``np.heaviside(x, 0)``, ``Max`` as
  ``np.maximum``;
* :class:`~symbptt.expr.mexpr.Softmax` and :class:`LogSumExp` as calls of helpers
  that subtract the maximum first, and :class:`~symbptt.expr.mexpr.OutputLoss` as
  the sum of the stable per-unit loss of :func:`stable_unit_loss` (the loss
  composed with the output layer and rewritten by SymPy into log-sum-exp and
  log-sigmoid form).

Spacing follows ``ruff format`` (``a * b``, ``h**2``), so printed statements
need no reformatting.  Symbols print as their names unless ``names`` maps
them to other code (a per-step view, a stacked array).
"""

from __future__ import annotations

import ast
import keyword
import sys
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, ClassVar

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixExpr
from sympy.printing.numpy import NumPyPrinter as _SymPyNumPyPrinter

from ..expr import functions, mexpr
from ..model.spec import SpecError

__all__ = [
    "LSE",
    "LogSumExp",
    "NumPyPrinter",
    "SumEntries",
    "activation_helper",
    "activation_source",
    "flatten_matmul",
    "helper_form",
    "helper_source",
    "is_safe",
    "matmul_form",
    "numpy_code",
    "safe_form",
    "stable_loss_matrix",
    "stable_unit_loss",
]

_ADD, _MUL, _UNARY, _POW, _ATOM = 40, 50, 55, 60, 1000

#: NumPy ufuncs of SymPy functions that the stock printer does not know as such.
_UFUNCS = {"Heaviside": "numpy.heaviside", "Max": "numpy.maximum", "Min": "numpy.minimum"}

#: The log-sum-exp over the output units, in :func:`stable_unit_loss`.
LSE = sp.Symbol("LSE", real=True)


class LogSumExp(mexpr.AxisExpr):
    """log(sum_k exp(X_k)) over the units along ``axis``, repeated along that axis.

    The shape is the argument's, so it adds to the argument without a shape
    error; it prints as the helper ``logsumexp(X, axis=...)`` with the
    reduced axis kept, which broadcasts the same way.
    """


class SumEntries(sp.Expr):  # type: ignore[misc]
    """The sum of all entries of a matrix expression (printed ``X.sum()``)."""

    is_commutative = True
    is_real = True


def _is_reciprocal(expr: Any) -> bool:
    return isinstance(expr, sp.HadamardPower) and bool(expr.exp.is_negative)


# ---------------------------------------------------------------------------- safety
def _is_softplus(expr: sp.Basic) -> bool:
    """``log(1 + exp(u))``, printed as ``np.logaddexp(0, u)``."""
    if not isinstance(expr, sp.log):
        return False
    arg = expr.args[0]
    if not isinstance(arg, sp.Add) or len(arg.args) != 2:
        return False
    one, rest = sorted(arg.args, key=lambda e: 0 if e == 1 else 1)
    return bool(one == 1 and isinstance(rest, sp.exp))


def is_safe(expr: sp.Basic) -> bool:
    """True when evaluating ``expr`` cannot overflow: no ``exp`` outside ``log(1 + exp(u))``.

    Also refused: a division by an expression of a variable (it may vanish).
    """
    stack = [expr]
    while stack:
        node = stack.pop()
        if _is_softplus(node):
            stack.append(_softplus_arg(node))
            continue
        if isinstance(node, sp.exp):
            return False
        if isinstance(node, sp.Pow) and node.exp.is_negative and node.base.free_symbols:
            return False
        stack.extend(node.args)
    return True


def _softplus_arg(expr: sp.Basic) -> sp.Expr:
    (arg,) = expr.args
    (exp_term,) = [t for t in arg.args if t != 1]
    return exp_term.args[0]


@cache
def safe_form(expr: sp.Expr) -> sp.Expr:
    """An overflow-free form of an elementwise expression, derived by SymPy.

    The expression itself when it is already safe (:func:`is_safe`), else the
    first safe one of its rewrites: through ``tanh`` (the logistic sigmoid
    1/(1 + exp(-z)) becomes tanh(z/2)/2 + 1/2), then through ``expand_log``.
    When no rewrite is safe the expression is kept as it is.
    """
    if is_safe(expr):
        return expr
    candidates = [
        sp.simplify(expr.rewrite(sp.tanh)),
        sp.simplify(sp.expand_log(expr, force=True)),
    ]
    for candidate in candidates:
        if is_safe(candidate):
            return candidate
    return expr


# ---------------------------------------------------------------------------- losses
_UNITS = 3


def _together_logs(expr: sp.Expr) -> sp.Expr:
    """Write every log's argument as one fraction, so expand_log can split it."""
    return expr.replace(lambda e: isinstance(e, sp.log), lambda e: sp.log(sp.together(e.args[0])))


@cache
def stable_unit_loss(output_name: str, loss_name: str) -> sp.Expr:
    """The loss of one output unit in a form that cannot overflow, derived from the definitions.

    The result is an expression of the unit's pre-activation ``z``, its
    prediction ``a``, its target ``y`` (the symbols of
    :mod:`symbptt.expr.functions`) and :data:`LSE`, the log-sum-exp over the units.

    * A loss without a logarithm (squared error) is its definition, in ``a``.
    * Otherwise the loss is composed with the output layer and rewritten by
      SymPy: for softmax, with three explicit units, ``expand_log`` turns
      ``log(exp(o_0) / sum_k exp(o_k))`` into ``o_0 - log(sum_k exp(o_k))`` and
      that log becomes :data:`LSE` (softmax + binary cross-entropy, whose
      log(1 - a) has no such form, is refused by the spec).  For an elementwise output the
      composition is simplified until it is safe (:func:`is_safe`): binary
      cross-entropy of a sigmoid becomes ``log(1 + exp(z)) - y z``.
    """
    a, y, z = functions.a, functions.y, functions.z
    loss = functions.LOSSES[loss_name]
    output = functions.OUTPUTS[output_name]
    if not loss.definition.has(sp.log):
        return loss.definition
    if isinstance(output, functions.SoftmaxOutput):
        o = sp.symbols(f"o0:{_UNITS}", real=True)
        preds = output.definition_of(list(o))
        total = sp.Add(*(sp.exp(u) for u in o))
        expr = loss.definition.xreplace({a: preds[0]})
        expr = sp.expand_log(_together_logs(expr), force=True)
        expr = expr.xreplace({sp.log(total): LSE})
        expr = sp.expand(expr.xreplace({o[0]: z}))
        if expr.free_symbols - {a, y, z, LSE}:
            raise NotImplementedError(f"no stable form of {loss_name} after {output_name}")
        return _shortest(expr)
    composed = loss.definition.xreplace({a: output.definition})
    candidates = [
        composed,
        sp.simplify(sp.expand_log(_together_logs(composed), force=True)),
        sp.expand_log(_together_logs(composed), force=True),
    ]
    for candidate in candidates:
        if is_safe(candidate):
            return _shortest(candidate)
    return loss.definition.xreplace({a: safe_form(output.definition)})


def _shortest(expr: sp.Expr) -> sp.Expr:
    """The expression or its common factors pulled out, whichever has fewer operations."""
    candidates = [expr, sp.factor_terms(expr)]
    return min(candidates, key=lambda e: (sp.count_ops(e), sp.default_sort_key(e)))


def stable_loss_matrix(node: mexpr.OutputLoss) -> Any:
    """The per-entry loss of an :class:`~symbptt.expr.mexpr.OutputLoss` as a matrix expression.

    Its entries sum to the node's value; built by lifting
    :func:`stable_unit_loss` onto the node's matrices, times the node's weight
    (a masked model's) when it has one.
    """
    unit = stable_unit_loss(node.output, node.loss)
    mapping = {
        functions.z: node.pre,
        functions.a: node.pred,
        functions.y: node.target,
        LSE: LogSumExp(node.pre, node.axis),
    }
    entries = functions.lift(unit, mapping, node.pre.shape, _keep_log_forms)
    return entries if node.weight is None else mexpr.hadamard(node.weight, entries)


def _keep_log_forms(expr: sp.Basic, recurse: Callable[[sp.Basic], Any]) -> Any:
    """A :func:`symbptt.expr.functions.lift` hook: ``log(1 + exp(u))``, ``log(1 + u)`` kept."""
    if not isinstance(expr, sp.log) or not expr.free_symbols:
        return None
    (arg,) = expr.args
    if _is_softplus(expr):
        pattern, inner = sp.log(1 + sp.exp(functions.z)), _softplus_arg(expr)
    elif isinstance(arg, sp.Add) and 1 in arg.args:
        pattern, inner = sp.log(1 + functions.z), arg - 1
    else:
        return None
    return functions.Apply(sp.Lambda(functions.z, pattern), recurse(inner))


# ---------------------------------------------------------------------------- helpers
def activation_helper(function: sp.Lambda) -> functions.Activation | None:
    """The registered activation whose helper prints ``function``, or None.

    None also when the activation's safe form is a single NumPy call of its
    argument (``np.tanh(z)``): that call is printed inline.
    """
    activation = functions.activation_for(function)
    registered = functions.ACTIVATIONS.get(activation.name)
    if registered is None or registered.function != function:
        return None
    body = safe_form(registered.definition)
    if _single_call(body, functions.z) or body == functions.z:
        return None
    return registered


#: The NumPy functions the printers call by name (elementwise, and the arrays' own makers):
#: each backend that is not NumPy spells every one of them, in a table of its own.
NUMPY_CALLS: tuple[str, ...] = (
    "abs",
    "arange",
    "arccos",
    "arccosh",
    "arcsin",
    "arcsinh",
    "arctan",
    "arctanh",
    "concatenate",
    "cos",
    "cosh",
    "exp",
    "expm1",
    "heaviside",
    "log",
    "log1p",
    "logaddexp",
    "maximum",
    "minimum",
    "sign",
    "sin",
    "sinh",
    "sqrt",
    "stack",
    "tan",
    "tanh",
    "tile",
    "zeros",
    "zeros_like",
)


def helper_form(function: sp.Lambda, shape: tuple[Any, Any]) -> tuple[Any, Any] | None:
    """``(placeholder, matrix expression)``: a helper activation's safe form, lifted.

    For an activation printed through a helper (:func:`activation_helper`), its
    :func:`safe_form` as a matrix expression of ``placeholder`` (a matrix symbol
    of ``shape`` standing for the argument), so that code generation can write
    it into an array one NumPy call at a time (sigmoid: ``z / 2``, ``tanh``,
    ``/ 2``, ``+ 1 / 2``).  None when it has no helper or cannot be lifted.
    """
    helper = activation_helper(function)
    if helper is None:
        return None
    placeholder = sp.MatrixSymbol("_arg", *shape)
    try:
        lifted = functions.lift(safe_form(helper.definition), {functions.z: placeholder}, shape)
    except TypeError:
        return None
    return placeholder, lifted


def _single_call(body: sp.Basic, var: sp.Symbol) -> bool:
    """``f(var, numbers...)`` for a function NumPy has (printed as one call)."""
    if _is_softplus(body):
        return bool(_softplus_arg(body) == var)
    if isinstance(body, sp.log) and isinstance(body.args[0], sp.Add):
        return bool(body.args[0] == 1 + var)
    return bool(
        isinstance(body, (sp.Function, sp.Max, sp.Min))
        and body.args
        and body.args.count(var) == 1
        and all(arg == var or arg.is_number for arg in body.args)
    )


def helper_source(name: str) -> str:
    """The source of a module-level helper the printed code calls.

    ``softmax`` and ``logsumexp`` subtract the maximum before ``np.exp``; an
    activation's helper returns its :func:`safe_form`, printed by
    :class:`NumPyPrinter`.
    """
    if name == "softmax":
        return (
            "def softmax(x, axis, out=None):\n"
            '    """exp(x) / sum(exp(x)) along axis, computed with the maximum subtracted.\n'
            "\n"
            "    One example a row (x 2-D, axis 1), the maximum is read where x.argmax finds\n"
            "    it: x.max(axis=1) reduces each short row by itself, several times slower.\n"
            '    """\n'
            "    if x.ndim == 2 and axis in (1, -1):\n"
            "        top = x[np.arange(x.shape[0]), x.argmax(axis=1)][:, None]\n"
            "    else:\n"
            "        top = x.max(axis=axis, keepdims=True)\n"
            "    out = np.subtract(x, top, out=out)\n"
            "    np.exp(out, out=out)\n"
            "    out /= out.sum(axis=axis, keepdims=True)\n"
            "    return out\n"
        )
    if name == "_steps":
        return (
            "def _steps(ws, name, shape, dtype):\n"
            '    """The array ``name`` of ``ws`` for the steps 0..T+1, its two ends zero (the\n'
            "    caller writes the steps 1..T): kept between calls, as ``_buffer``'s are.\n"
            '    """\n'
            "    array = _buffer(ws, name, shape, dtype)\n"
            "    array[0] = 0\n"
            "    array[-1] = 0\n"
            "    return array\n"
        )
    if name == "logsumexp":
        return (
            "def logsumexp(x, axis, softmax=None):\n"
            '    """log(sum(exp(x))) along axis, kept as a length-1 axis.\n'
            "\n"
            "    softmax_k(x) = exp(x_k) / sum(exp(x)) gives x_k - log(softmax_k(x)) for any k:\n"
            "    given the softmax, that at the largest x_k (no exp); else the maximum is\n"
            "    subtracted before np.exp.  One example a row (x 2-D, axis 1), the largest\n"
            "    x_k is found by x.argmax, several times faster than x.max(axis=1).\n"
            '    """\n'
            "    if x.ndim == 2 and axis in (1, -1):\n"
            "        at = np.arange(x.shape[0]), x.argmax(axis=1)\n"
            "        top = x[at][:, None]\n"
            "        if softmax is not None:\n"
            "            return top - np.log(softmax[at][:, None])\n"
            "    else:\n"
            "        top = x.max(axis=axis, keepdims=True)\n"
            "        if softmax is not None:\n"
            "            return top - np.log(softmax.max(axis=axis, keepdims=True))\n"
            "    return top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))\n"
        )
    return activation_source(name, NumPyPrinter())


def activation_source(name: str, printer: Any, namespace: tuple[str, str] | None = None) -> str:
    """An activation's module-level helper: its :func:`safe_form` printed by ``printer``
    (the NumPy printer or a backend's), its definition in the docstring.

    ``namespace``: (name, expression) of the namespace the printed code calls through,
    bound before the return when the code calls through it (the array API module's
    ``("xp", "array_namespace(z)")``).
    """
    activation = functions.ACTIVATIONS[name]
    body = safe_form(activation.definition)
    code = printer.doprint(body)
    definition = sp.sstr(activation.definition)
    note = "" if body == activation.definition else f", evaluated as {sp.sstr(body)}"
    setup = ""
    if namespace is not None and f"{namespace[0]}." in code:
        setup = f"    {namespace[0]} = {namespace[1]}\n"
    return f'def {name}(z):\n    """{name}(z) = {definition}{note}."""\n{setup}    return {code}\n'


# ---------------------------------------------------------------------------- printer
def _leads_with_power(code: str) -> bool:
    """Whether a unary minus put before the product ``code`` would apply to a power
    (``-x**2 * y``): Python reads that as ``-(x**2) * y`` and ``ruff format`` writes
    the parentheses, so the printer writes ``-(x**2 * y)``, the same value."""
    node = ast.parse(code, mode="eval").body
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Div | ast.MatMult):
        node = node.left
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)


def _is_ones(expr: Any) -> bool:
    return isinstance(expr, sp.OneMatrix)


def flatten_matmul(expr: Any) -> tuple[Any, list[Any]]:
    """The scalar coefficient and the matrix factors of a (nested) MatMul."""
    coeff = sp.Integer(1)
    mats: list[Any] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, sp.MatMul):
            stack.extend(reversed(node.args))
        elif getattr(node, "is_Matrix", False):
            mats.append(node)
        else:
            coeff *= node
    return coeff, mats


def matmul_form(expr: Any) -> tuple[Any, list[Any], int | None]:
    """``(coeff, factors, axis)``: ones factors that only broadcast are dropped, a sum
    over an axis (``X 1`` or ``1^T X``) is reported as ``axis`` (None for a product)."""
    coeff, mats = flatten_matmul(expr)
    if len(mats) >= 2 and _is_ones(mats[0]) and 1 not in mats[0].shape:
        rows, cols = mats[0].shape  # 1_(r x c) = 1_(r x 1) 1_(1 x c)
        mats = [sp.OneMatrix(rows, 1), sp.OneMatrix(1, cols), *mats[1:]]
    if len(mats) >= 2 and _is_ones(mats[-1]) and 1 not in mats[-1].shape:
        rows, cols = mats[-1].shape
        mats = [*mats[:-1], sp.OneMatrix(rows, 1), sp.OneMatrix(1, cols)]
    changed = True
    while changed and len(mats) >= 2:
        changed = False
        first, last = mats[0], mats[-1]
        if _is_ones(first) and first.shape[1] == 1 and mats[1].shape[0] == 1:
            mats, changed = mats[1:], True  # 1 r: r repeated down the rows
        elif _is_ones(last) and last.shape[0] == 1 and mats[-2].shape[1] == 1:
            mats, changed = mats[:-1], True  # c 1^T: c repeated along the columns
    if len(mats) >= 2 and _is_ones(mats[0]) and mats[0].shape[0] == 1:
        return coeff, mats[1:], 0
    if len(mats) >= 2 and _is_ones(mats[-1]) and mats[-1].shape[1] == 1:
        return coeff, mats[:-1], 1
    return coeff, mats, None


def _is_simple_power_operand(code: str) -> bool:
    """ruff format hugs ``**`` between names, numbers and attribute chains."""
    body = code[1:] if code.startswith("-") else code
    return bool(body) and all(part.isidentifier() or part.isdigit() for part in body.split("."))


class NumPyPrinter(_SymPyNumPyPrinter):  # type: ignore[misc]
    """SymPy's NumPy printer with the overrides listed in the module docstring.

    ``names`` maps symbols (MatrixSymbols, Symbols) to the code that holds
    their value.  ``helpers`` collects the module-level helpers the printed
    code calls (activation names, ``softmax``, ``logsumexp``).
    """

    printmethod = "_symbptt_numpy"
    _default_settings: ClassVar[dict[str, Any]] = {
        **_SymPyNumPyPrinter._default_settings,
        "fully_qualified_modules": True,
    }

    def __init__(
        self, names: Mapping[Any, str] | None = None, settings: dict[str, Any] | None = None
    ) -> None:
        super().__init__(settings=settings)
        # SymPy's NumPyPrinter sets ``printmethod = "_numpycode"`` on the instance;
        # ours is its own, so that a node's ``_numpycode`` (what SymPy's printer
        # and lambdify call) never replaces the generated code's forms.
        self.printmethod = type(self).printmethod
        self.names: dict[Any, str] = dict(names or {})
        self.helpers: set[str] = set()
        self.used: set[str] = set()

    def _print(self, expr: Any, **kwargs: Any) -> str:
        if isinstance(expr, MatrixExpr) and not isinstance(expr, sp.MatrixSymbol):
            code = self.names.get(expr)
            if code is not None:
                self.used.add(code)
                return code
        return str(super()._print(expr, **kwargs))

    # -- modules ------------------------------------------------------------------
    #: Another backend's spelling of each NumPy function the code calls (``numpy.tanh``
    #: -> ``torch.tanh``), and that backend's name; None: NumPy's own, as ``np.tanh``.
    spellings: ClassVar[Mapping[str, str] | None] = None
    backend: ClassVar[str] = "numpy"

    def _module_format(self, fqn: str, register: bool = True) -> str:
        spellings = self.spellings
        if fqn.startswith("numpy.") and spellings is None:
            fqn = "np." + fqn[len("numpy.") :]
        elif fqn.startswith("numpy.") and spellings is not None:  # no fallback: an error
            spelled = spellings.get(fqn)
            if spelled is None:
                table = f"{self.backend.upper()}_FUNCTIONS"
                raise NotImplementedError(
                    f"the {self.backend} backend has no spelling of {fqn} (add it to {table})"
                )
            fqn = spelled
        if register and "." in fqn:
            module, _, name = fqn.rpartition(".")
            self.module_imports[module].add(name)
        return fqn

    # -- statements of the in-place lowering (codegen.lines) --------------------------
    def call_into(self, function: str, args: list[str], out: str) -> str:
        """``np.<function>(args..., out=out)``: one call writing into the array ``out``."""
        return f"{self._module_format('numpy.' + function)}({', '.join(args)}, out={out})"

    def add_into(self, function: str, args: list[str], out: str) -> str | None:
        """``out += function(*args)`` as one call, or None where it takes two (NumPy: a
        call into a scratch array, then ``+=``)."""
        return None

    def steps_reversed(self, code: str) -> str:
        """The steps of a stacked array (its first axis), last first, as views."""
        return f"{code}[::-1]"

    def copy_of(self, code: str) -> str:
        """A fresh copy of an array (C-ordered)."""
        return f"{code}.copy()"

    def assign_into(self, target: str, code: str) -> str:
        """The statement writing the value ``code`` into the array ``target`` (the lowering's)."""
        return f"{target}[...] = {code}"

    def copy_into(self, target: str, code: str) -> str:
        """The statement writing a copy of the array ``code`` into the array ``target``."""
        return self.assign_into(target, code)

    def softmax_into(self, code: str, axis: int, target: str) -> str:
        """The statement writing the softmax of ``code`` along ``axis`` into ``target``."""
        return f"softmax({code}, axis={axis}, out={target})"

    def item(self, array: str, index: str) -> str:
        """``array[index]``: the step(s) ``index`` of a stacked array (its first axis)."""
        return f"{array}[{index}]"

    def transposed_operand(self, name: str) -> str:
        """``name.T`` as the loops' products read it: a C-ordered copy (OpenBLAS's ``h @ W``
        beats ``h @ W.T`` of a view; benchmarks/runtime.py)."""
        return self.copy_of(f"{name}.T")

    def concatenate(self, parts: list[Any], axis: int) -> str:
        """The parameters ``parts`` side by side along ``axis``, made once per call."""
        function = self._module_format("numpy.concatenate")
        return f"{function}([{', '.join(self._print(p) for p in parts)}], axis={axis})"

    def set_item(self, array: str, index: str, value: str) -> str:
        """The statement writing ``value`` into the step ``index`` of ``array``."""
        return f"{array}[{index}] = {value}"

    def set_step(self, array: str, index: str, value: str) -> str:
        """The statement storing a loop step's ``value`` at ``index`` (in bounds by
        construction): :meth:`set_item`'s, unless a backend has a cheaper one (JAX)."""
        return self.set_item(array, index, value)

    def add_item(self, array: str, index: str, value: str) -> str:
        """The statement adding ``value`` to the step ``index`` of ``array``."""
        return f"{array}[{index}] += {value}"

    def zeros(self, shape: str, dtype: str) -> str:
        """The expression of a new array of zeros (``shape`` and ``dtype`` are code)."""
        return f"{self._module_format('numpy.zeros')}({shape}, {dtype})"

    def sum_of(self, code: str, axis: int | None = None, keepdims: bool = False) -> str:
        """The sum of the array ``code`` (an atom), of all entries or along ``axis``."""
        if axis is None:
            return f"{code}.sum()"
        return f"{code}.sum(axis={axis}{', keepdims=True' if keepdims else ''})"

    def reshape(self, code: str, shape: str) -> str:
        """The array ``code`` (an atom) in the shape ``shape`` (code without parentheses)."""
        return f"{code}.reshape({shape})"

    # -- precedence ---------------------------------------------------------------
    def _prec(self, expr: Any) -> int:
        if expr in self.names:
            return _ATOM
        if isinstance(expr, (sp.Add, sp.MatAdd)):
            return _ADD
        if isinstance(expr, sp.MatMul):
            coeff, mats, axis = matmul_form(expr)
            if coeff != 1:
                return _MUL
            if axis is not None:
                return _ATOM
            return self._prec(mats[0]) if len(mats) == 1 else _MUL
        if isinstance(expr, sp.Mul):
            coeff, factors = expr.as_coeff_mul()
            if coeff == -1 and len(factors) == 1 and self._prec(factors[0]) >= _POW:
                return _UNARY
            return _MUL
        if isinstance(expr, sp.HadamardProduct):
            return _MUL
        if isinstance(expr, (sp.Pow, sp.HadamardPower)):
            exp = expr.exp
            return _MUL if exp.is_negative or (exp.is_Rational and not exp.is_Integer) else _POW
        if isinstance(expr, sp.Rational) and not expr.is_Integer:
            return _MUL
        if getattr(expr, "is_Number", False) and expr.is_negative:
            return _UNARY
        if isinstance(expr, ElementwiseApplyFunction):
            helper = activation_helper(expr.function)
            if helper is None:
                (var,) = expr.function.variables
                body = safe_form(expr.function.expr)
                if body == var:
                    return self._prec(expr.expr)
                if not _single_call(body, var):
                    return self._prec(body.xreplace({var: sp.Symbol("_")}))
        return _ATOM

    def _paren(self, expr: Any, level: int, strict: bool = False) -> str:
        code = self._print(expr)
        prec = self._prec(expr)
        if prec < level or (strict and prec == level):
            return f"({code})"
        return code

    @staticmethod
    def _negative(expr: Any) -> bool:
        if getattr(expr, "is_Matrix", False):
            coeff, _ = flatten_matmul(expr) if isinstance(expr, sp.MatMul) else (1, [])
            return bool(sp.sympify(coeff).could_extract_minus_sign())
        return bool(expr.could_extract_minus_sign())

    @staticmethod
    def _negated(expr: Any) -> Any:
        if getattr(expr, "is_Matrix", False):
            coeff, mats = flatten_matmul(expr)
            body = mats[0] if len(mats) == 1 else sp.MatMul(*mats)
            return body if coeff == -1 else sp.MatMul(-coeff, body)
        return -expr

    # -- atoms --------------------------------------------------------------------
    def _print_name(self, expr: Any) -> str:
        if expr in self.names:
            self.used.add(self.names[expr])
            return self.names[expr]
        name = str(expr.name)
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"symbol {name!r} is not a Python name; map it in `names`")
        self.used.add(name)
        return name

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return self._print_name(expr)

    _print_Dummy = _print_Symbol

    def _print_MatrixSymbol(self, expr: sp.MatrixSymbol) -> str:
        return self._print_name(expr)

    def _print_Integer(self, expr: sp.Integer) -> str:
        _expect_float64(expr)
        return str(expr.p)

    def _print_Rational(self, expr: sp.Rational) -> str:
        _expect_float64(expr)
        if expr.q == 1:
            return str(expr.p)
        return f"{expr.p} / {expr.q}"

    def _print_Half(self, expr: sp.Rational) -> str:
        return self._print_Rational(expr)

    def _print_Float(self, expr: sp.Float) -> str:
        return repr(float(expr))

    def _print_OneMatrix(self, expr: sp.OneMatrix) -> str:
        return "1"

    def _print_ZeroMatrix(self, expr: sp.ZeroMatrix) -> str:
        return "0"

    # -- sums and products --------------------------------------------------------
    def _print_terms(self, terms: list[Any]) -> str:
        positive = [t for t in terms if not self._negative(t)]
        negative = [t for t in terms if self._negative(t)]
        out = ""
        for i, term in enumerate(positive + negative):
            if self._negative(term):
                body = self._paren(self._negated(term), _MUL if i == 0 else _ADD, strict=i > 0)
                if i == 0:
                    out += f"-({body})" if _leads_with_power(body) else f"-{body}"
                else:
                    out += f" - {body}"
            else:
                out += self._paren(term, _ADD) if i == 0 else f" + {self._paren(term, _ADD)}"
        return out

    def _print_Add(self, expr: sp.Add, order: Any = None) -> str:
        return self._print_terms(list(self._as_ordered_terms(expr, order=None)))

    def _print_MatAdd(self, expr: sp.MatAdd) -> str:
        return self._print_terms(list(expr.args))

    def _print_scaled(self, coeff: sp.Expr, body: str, body_prec: int) -> str:
        """``coeff * body`` with the coefficient's denominator as a division."""
        numer, denom = sp.fraction(sp.sympify(coeff))
        sign = ""
        if numer.could_extract_minus_sign():
            sign, numer = "-", -numer
        if body_prec < _MUL:
            body = f"({body})"
        parts = [] if numer == 1 else [self._paren(numer, _MUL)]
        code = " * ".join([*parts, body])
        if denom != 1:
            code += f" / {self._paren(denom, _MUL, strict=True)}"
        if sign and (body_prec == _UNARY or code.startswith("-") or _leads_with_power(code)):
            return f"-({code})"
        return sign + code

    def _print_Mul(self, expr: sp.Mul) -> str:
        coeff, factors = expr.as_coeff_mul()
        numer: list[Any] = []
        denom: list[Any] = []
        for factor in factors:
            if isinstance(factor, sp.Pow) and factor.exp.is_Rational and factor.exp.is_negative:
                denom.append(factor.base if factor.exp == -1 else sp.Pow(factor.base, -factor.exp))
            else:
                numer.append(factor)
        scale = coeff * sp.Mul(*(sp.Integer(1) / d for d in denom), evaluate=False)
        if not numer:
            return self._print_scaled(scale, "1", _ATOM) if coeff != 1 or denom else "1"
        if len(numer) == 1:
            body, prec = self._print(numer[0]), self._prec(numer[0])
        else:
            body, prec = " * ".join(self._paren(f, _MUL) for f in numer), _MUL
        return self._print_scaled(sp.Mul(coeff, *(1 / d for d in denom)), body, prec)

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        base, exp = expr.base, expr.exp
        if exp == sp.Rational(1, 2):
            return f"{self._module_format('numpy.sqrt')}({self._print(base)})"
        if exp.is_negative:
            return f"1 / {self._paren(sp.Pow(base, -exp), _MUL, strict=True)}"
        return self._power(base, exp)

    def _power(self, base: Any, exp: Any) -> str:
        base_code = self._paren(base, _POW, strict=True)
        exp_code = self._paren(exp, _POW)
        if _is_simple_power_operand(base_code) and _is_simple_power_operand(exp_code):
            return f"{base_code}**{exp_code}"
        return f"{base_code} ** {exp_code}"

    def _print_HadamardPower(self, expr: sp.HadamardPower) -> str:
        base, exp = expr.base, expr.exp
        if exp.is_negative:
            inverse = base if exp == -1 else sp.HadamardPower(base, -exp)
            return f"1 / {self._paren(inverse, _MUL, strict=True)}"
        return self._power(base, exp)

    def _print_HadamardProduct(self, expr: sp.HadamardProduct) -> str:
        numer = [a for a in expr.args if not _is_reciprocal(a)]
        denom = [
            a.base if a.exp == -1 else sp.HadamardPower(a.base, -a.exp)
            for a in expr.args
            if _is_reciprocal(a)
        ]
        code = " * ".join(self._paren(arg, _MUL) for arg in numer) if numer else "1"
        if not denom:
            return code
        if len(denom) == 1:
            return f"{code} / {self._paren(denom[0], _MUL, strict=True)}"
        return f"{code} / ({' * '.join(self._paren(arg, _MUL) for arg in denom)})"

    def _print_SumEntries(self, expr: SumEntries) -> str:
        return self.sum_of(self._paren(expr.args[0], _ATOM))

    def _print_MatMul(self, expr: sp.MatMul) -> str:
        coeff, mats, axis = matmul_form(expr)
        if len(mats) == 1 and _is_ones(mats[0]):
            return self._print(coeff)
        if len(mats) == 1:
            body, prec = self._print(mats[0]), self._prec(mats[0])
        else:
            body = " @ ".join(self._paren(m, _MUL, strict=i > 0) for i, m in enumerate(mats))
            prec = _MUL
        if axis is not None and len(mats) == 1 and isinstance(mats[0], sp.Transpose):
            inner = self._paren(mats[0].arg, _ATOM)
            # the transpose as a new axis, so the result is contiguous (a gradient of a
            # contiguous parameter in its own layout; DDP's buckets expect that layout)
            index = "[:, None]" if axis == 1 else "[None, :]"
            body, prec = f"{self.sum_of(inner, 1 - axis)}{index}", _ATOM
        elif axis is not None:
            inner = f"({body})" if prec < _ATOM else body
            body, prec = self.sum_of(inner, axis, keepdims=True), _ATOM
        if coeff == 1:
            return body
        return self._print_scaled(coeff, body, prec)

    def _print_Transpose(self, expr: sp.Transpose) -> str:
        if isinstance(expr.arg, sp.MatMul):  # (1^T X)^T, (X 1)^T: a sum as a new axis
            coeff, mats, axis = matmul_form(expr.arg)
            if axis is not None and len(mats) == 1 and not _is_ones(mats[0]):
                index = "[:, None]" if axis == 0 else "[None, :]"
                body = f"{self.sum_of(self._paren(mats[0], _ATOM), axis)}{index}"
                return body if coeff == 1 else self._print_scaled(coeff, body, _ATOM)
        return f"{self._paren(expr.arg, _ATOM)}.T"

    # -- functions ----------------------------------------------------------------
    def _print_log(self, expr: sp.log) -> str:
        if _is_softplus(expr):
            return (
                f"{self._module_format('numpy.logaddexp')}(0, {self._print(_softplus_arg(expr))})"
            )
        (arg,) = expr.args
        if isinstance(arg, sp.Add) and 1 in arg.args:
            return f"{self._module_format('numpy.log1p')}({self._print(arg - 1)})"
        return f"{self._module_format('numpy.log')}({self._print(arg)})"

    def _print_Heaviside(self, expr: sp.Heaviside) -> str:
        at_zero = expr.args[1] if len(expr.args) > 1 else sp.S.Half
        func = self._module_format("numpy.heaviside")
        return f"{func}({self._print(expr.args[0])}, {self._print(at_zero)})"

    def _print_Max(self, expr: sp.Max) -> str:
        return self._reduce("numpy.maximum", list(expr.args))

    def _print_Min(self, expr: sp.Min) -> str:
        return self._reduce("numpy.minimum", list(expr.args))

    def _reduce(self, fqn: str, args: list[Any]) -> str:
        args = sorted(args, key=lambda a: (not a.is_number, sp.default_sort_key(a)))
        code = self._print(args[0])
        for arg in args[1:]:
            code = f"{self._module_format(fqn)}({code}, {self._print(arg)})"
        return code

    def _print_ElementwiseApplyFunction(self, expr: ElementwiseApplyFunction) -> str:
        helper = activation_helper(expr.function)
        if helper is not None:
            self.helpers.add(helper.name)
            return f"{helper.name}({self._print(expr.expr)})"
        (var,) = expr.function.variables
        body = safe_form(expr.function.expr)
        placeholder = sp.Dummy("arg")
        arg = expr.expr
        self.names[placeholder] = (
            self._print(arg) if _single_call(body, var) else self._paren(arg, _ATOM)
        )
        try:
            return self._print(body.xreplace({var: placeholder}))
        finally:
            del self.names[placeholder]

    def elementwise_into(self, expr: ElementwiseApplyFunction, arg: str, out: str) -> str | None:
        """``expr`` as one NumPy ufunc call of ``arg`` into ``out``, when its body is one call."""
        if activation_helper(expr.function) is not None:
            return None
        (var,) = expr.function.variables
        body = safe_form(expr.function.expr)
        if not _single_call(body, var):
            return None
        if _is_softplus(body):
            return f"{self._module_format('numpy.logaddexp')}(0, {arg}, out={out})"
        if isinstance(body, sp.log) and body.args[0] == 1 + var:
            return f"{self._module_format('numpy.log1p')}({arg}, out={out})"
        fqn = _UFUNCS.get(type(body).__name__) or self._kf.get(type(body).__name__)
        if fqn is None or not fqn.startswith("numpy."):
            return None
        args = list(body.args)
        if isinstance(body, (sp.Max, sp.Min)):
            args.sort(key=lambda a: a != 0)
        printed = [arg if a == var else self._print(a) for a in args]
        return f"{self._module_format(fqn)}({', '.join(printed)}, out={out})"

    def _print_Softmax(self, expr: mexpr.Softmax) -> str:
        self.helpers.add("softmax")
        return f"softmax({self._print(expr.arg)}, axis={expr.axis})"

    def _print_LogSumExp(self, expr: LogSumExp) -> str:
        """``logsumexp(o, axis=k)``, given ``softmax(o)`` when it is at hand (in ``names``)."""
        self.helpers.add("logsumexp")
        softmax = self.names.get(mexpr.Softmax(expr.arg, expr.axis))
        given = ""
        if softmax is not None:
            self.used.add(softmax)
            given = f", softmax={softmax}"
        return f"logsumexp({self._print(expr.arg)}, axis={expr.axis}{given})"

    def _print_OutputLoss(self, expr: mexpr.OutputLoss) -> str:
        return self._print(SumEntries(stable_loss_matrix(expr)))


def numpy_code(expr: Any, names: Mapping[Any, str] | None = None) -> str:
    """``expr`` printed by :class:`NumPyPrinter`."""
    return str(NumPyPrinter(names).doprint(expr))


def _expect_float64(number: sp.Rational) -> None:
    """SpecError for a constant no float64 holds: each of a cell's numbers is finite, but
    the derivative multiplies them (1e200 * tanh(1e200 * z) has 1e400), and its printed
    integer made every call of the module raise OverflowError."""
    if abs(number.p) > abs(number.q) * _FLOAT64_MAX:
        raise SpecError(
            f"the derived code has the constant {sp.Float(number, 3)}, beyond float64 "
            "(a product of the cell's numbers); use smaller numbers"
        )


_FLOAT64_MAX = int(sys.float_info.max)
