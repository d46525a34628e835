"""The array API backends' printer and rolled schedule: code for any namespace ``xp``.

The CuPy module (``backend="cupy"``) and the array API module
(``backend="array_api"``) print the same code, written against the Python
array API standard (https://data-apis.org/array-api/): the namespace ``xp``
of the arguments (``array_api_compat.array_namespace``) is a parameter of
every function of the schedule, so the same lines run on CuPy arrays (through
``array_api_compat.cupy``), on NumPy arrays, and on ``array_api_strict`` (a
strict CPU implementation of the standard, which refuses every call outside
it: the tests' proof that the code uses only standard calls).

What the standard lacks, and NumPy's module uses, is spelled here:

* no ``out=``, and no array written through a view is guaranteed to write the
  array it views: a statement binds its name to a new array (``z = a @ b``)
  and writes into it in place (``z += b``, ``z /= 2``: standard), and a step's
  values are stored into their stacked arrays (``q_seq[t, ...] = q_t``), as
  :class:`~symbptt.codegen.jax_rolled.JaxRolledModule` stores them;
* no methods but ``.T``: ``xp.sum(q, axis=0)``, ``xp.reshape(q, shape)``;
* an index names every axis (``q_seq[t, ...]``, not ``q_seq[t]``);
* NumPy's names the standard changed (``concatenate`` -> ``concat``,
  ``arccos`` -> ``acos``; :data:`ARRAY_API_FUNCTIONS`), and no ``heaviside``
  (a comparison cast to the dtype).

A NumPy function without an entry in :data:`ARRAY_API_FUNCTIONS` is an error
that names it, never a silent fallback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import sympy as sp

from .jax_rolled import JaxRolledModule
from .lines import Code, SharedPrinter
from .numpy_printer import (
    NUMPY_CALLS,
    _single_call,
    activation_helper,
    activation_source,
    safe_form,
)
from .numpy_rolled import RolledModule

__all__ = [
    "ARRAY_API_FUNCTIONS",
    "ArrayApiPrinter",
    "ArrayApiRolledModule",
    "array_api_helper_source",
]

#: The standard's names where NumPy's differ; it has no heaviside (printed as a comparison,
#: :meth:`ArrayApiPrinter._print_Heaviside`).
_STANDARD_NAMES = {
    "arccos": "acos",
    "arccosh": "acosh",
    "arcsin": "asin",
    "arcsinh": "asinh",
    "arctan": "atan",
    "arctanh": "atanh",
    "concatenate": "concat",
}

#: NumPy function -> its spelling in the array API standard (2023.12), in the namespace xp.
ARRAY_API_FUNCTIONS: dict[str, str] = {
    f"numpy.{name}": f"xp.{_STANDARD_NAMES.get(name, name)}"
    for name in NUMPY_CALLS
    if name != "heaviside"
}


#: The lowering's calls that are Python operators on arrays (``np.dot`` -> ``@``).
_OPERATORS = {"dot": "@", "multiply": "*", "add": "+", "subtract": "-", "negative": "-"}


class ArrayApiPrinter(SharedPrinter):
    """Prints for the namespace ``xp``: functional statements, :data:`ARRAY_API_FUNCTIONS`."""

    printmethod = "_symbptt_array_api"
    _default_settings: ClassVar[dict[str, Any]] = dict(SharedPrinter._default_settings)
    spellings = ARRAY_API_FUNCTIONS
    backend = "array_api"

    # -- statements of the lowering (codegen.lines): no out=, so a call's result is bound
    # to the name, and the statements after it write into that new array in place
    def call_into(self, function: str, args: list[str], out: str) -> str:
        """``out = a @ b``, ``out = a * b``, ``out = -a``, ``out = xp.tanh(a)``, ...: a new
        array (the standard has no ``out=``); ``out`` may be one of the operands."""
        operator = _OPERATORS.get(function)
        if operator is None:
            name = self._module_format("numpy." + function)
            return f"{out} = {name}({', '.join(args)})"
        if len(args) == 1:
            return f"{out} = {operator}{args[0]}"
        return f"{out} = {args[0]} {operator} {args[1]}"

    def elementwise_into(self, expr: Any, arg: str, out: str) -> str | None:
        """``out = xp.tanh(arg)``: a function the standard computes in one call, else None
        (the lowering then writes a helper's body, or assigns the printed expression)."""
        if activation_helper(expr.function) is not None:
            return None
        (var,) = expr.function.variables
        body = safe_form(expr.function.expr)
        if not _single_call(body, var):
            return None
        placeholder = sp.Dummy("arg")
        self.names[placeholder] = arg
        try:
            return f"{out} = {self._print(body.xreplace({var: placeholder}))}"
        finally:
            del self.names[placeholder]

    def assign_into(self, target: str, code: str) -> str:
        """``target = code``: the value, a new array (no array is written through ``[...]``)."""
        return f"{target} = {code}"

    def copy_into(self, target: str, code: str) -> str:
        """A copy, as the statements after it write into ``target`` in place."""
        return f"{target} = xp.asarray({code}, copy=True)"

    def softmax_into(self, code: str, axis: int, target: str) -> str:
        return f"{target} = softmax({code}, axis={axis})"

    def copy_of(self, code: str) -> str:
        """No copy: the arrays made once per call are only read (a transposed weight)."""
        return code

    def zeros(self, shape: str, dtype: str) -> str:
        """Zeros on the device of the call's arrays (``device``, a parameter of the schedule)."""
        return f"xp.zeros({shape}, dtype={dtype}, device=device)"

    def item(self, array: str, index: str) -> str:
        """Every axis indexed: ``q_seq[t, ...]`` (the standard leaves ``q_seq[t]`` of a
        3-D array unspecified, and array_api_strict refuses it)."""
        return f"{array}[{index}, ...]" if not index.endswith("...") else f"{array}[{index}]"

    def set_item(self, array: str, index: str, value: str) -> str:
        return f"{self.item(array, index)} = {value}"

    def add_item(self, array: str, index: str, value: str) -> str:
        return f"{self.item(array, index)} += {value}"

    def sum_of(self, code: str, axis: int | None = None, keepdims: bool = False) -> str:
        """``xp.sum(code, ...)``: a function, so ``code`` needs no parentheses of its own."""
        if axis is None:
            return f"xp.sum({_bare(code)})"
        return f"xp.sum({_bare(code)}, axis={axis}{', keepdims=True' if keepdims else ''})"

    def reshape(self, code: str, shape: str) -> str:
        return f"xp.reshape({_bare(code)}, ({shape}))"

    # -- functions ----------------------------------------------------------------------
    def _print_Heaviside(self, expr: sp.Heaviside) -> str:
        """The step as a comparison cast to the argument's dtype (no ``heaviside`` in the
        standard): ``xp.astype(x > 0, x.dtype)``, plus ``v`` where ``x == 0``."""
        x = self._paren(expr.args[0], 1000)
        at_zero = expr.args[1] if len(expr.args) > 1 else sp.S.Half
        step = f"xp.astype({x} > 0, {x}.dtype)"
        if at_zero == 0:
            return step
        value = self._print(at_zero)
        return f"({step} + {value} * xp.astype({x} == 0, {x}.dtype))"


def array_api_helper_source(name: str) -> str:
    """The source of a module-level helper of the array API module (as :func:`helper_source`).

    A helper finds the namespace of its argument (``array_namespace``); ``softmax``
    and ``logsumexp`` subtract the maximum before ``xp.exp``.  An activation's helper
    is its :func:`safe_form` printed by :class:`ArrayApiPrinter`.
    """
    if name == "softmax":
        return (
            "def softmax(x, axis):\n"
            '    """exp(x) / sum(exp(x)) along axis, computed with the maximum subtracted."""\n'
            "    xp = array_namespace(x)\n"
            "    out = xp.exp(x - xp.max(x, axis=axis, keepdims=True))\n"
            "    out /= xp.sum(out, axis=axis, keepdims=True)\n"
            "    return out\n"
        )
    if name == "logsumexp":
        return (
            "def logsumexp(x, axis, softmax=None):\n"
            '    """log(sum(exp(x))) along axis, kept as a length-1 axis.\n'
            "\n"
            "    softmax_k(x) = exp(x_k) / sum(exp(x)) gives x_k - log(softmax_k(x)) for any k:\n"
            "    given the softmax, that at the largest x_k (no exp); else the maximum is\n"
            "    subtracted before xp.exp.\n"
            '    """\n'
            "    xp = array_namespace(x)\n"
            "    top = xp.max(x, axis=axis, keepdims=True)\n"
            "    if softmax is not None:\n"
            "        return top - xp.log(xp.max(softmax, axis=axis, keepdims=True))\n"
            "    return top + xp.log(xp.sum(xp.exp(x - top), axis=axis, keepdims=True))\n"
        )
    return activation_source(name, ArrayApiPrinter({}), namespace=("xp", "array_namespace(z)"))


class ArrayApiRolledModule(JaxRolledModule):
    """The rolled schedule with JAX's writes, NumPy's lowering and Python loops.

    JAX's subclass of :class:`~symbptt.codegen.numpy_rolled.RolledModule` reads a
    step's values from their stacked arrays before the step and stores what it
    wrote back after it (``q_seq[t + 1, ...] = q_t``, the printer's ``set_item``),
    so nothing relies on a view writing through (the standard leaves that to the
    library).  Here a statement is NumPy's lowering (:meth:`lower`: a new array,
    then in-place updates of it), a loop is ``for t in range(T)`` (not
    ``lax.scan``), and the workspace is zeros on the call's device.
    """

    def __init__(self, spec: Any, d: Any) -> None:
        super().__init__(spec, d, printer=ArrayApiPrinter)

    def lower(
        self,
        expr: Any,
        target: str,
        context: str,
        code: Code,
        scratch_code: Code,
        extra: Mapping[Any, str] | None = None,
    ) -> None:
        """``expr`` into ``target`` one operation a line, as NumPy's module writes it
        (:class:`~symbptt.codegen.lines.Lowering`), its first line binding a new array
        (``z = a @ b``) and the others writing into it (``z += b``, ``z /= 2``): one new
        array per call the standard makes, not one per operation.  Each line defines
        the name it binds or updates and reads what it names besides."""
        lowered = Code()
        RolledModule.lower(self, expr, target, context, lowered, scratch_code, extra)
        bound: set[str] = set()
        for line, uses, _, _ in lowered.entries:
            name, operator = _written(line)
            reads = uses - bound - ({name} if operator == "=" else set())
            code.add(line, reads, name)
            bound.add(name)

    def buffer(self, code: Code, name: str, shape: str, uses: Iterable[str]) -> None:
        if self.stacked_storage(name):
            zeros = self.new_printer({}).zeros(shape, "dtype")
            code.add(f"{name} = {zeros}", {"dtype", *uses}, name, True)

    def loop(self, c: Code, body: Code, backward: bool) -> None:
        """``for t in range(T):`` (backward: ``T - 2, ..., 0``) around the step's reads,
        ``body`` and the stores of what it wrote."""
        inner = Code()
        inner.extend(self.views(body))
        inner.extend(body)
        inner.extend(self.stored_back(body))
        steps = "range(T - 2, -1, -1)" if backward else "range(T)"
        reads = inner.uses - set(inner.defines) - {"t"}
        c.add(f"for t in {steps}:", {"T", *reads})
        c.extend(inner, indent=1)


def _written(line: str) -> tuple[str, str]:
    """The name a statement of the lowering binds or updates, and its operator (``=``,
    ``+=``, ...)."""
    found = re.match(r"(\w+) (=|\+=|-=|\*=|/=) ", line)
    if found is None:  # pragma: no cover -- the lowering writes only these statements
        raise AssertionError(f"not a statement the lowering writes: {line!r}")
    return found.group(1), found.group(2)


def _bare(code: str) -> str:
    """``code`` without the parentheses around all of it that a method call needed."""
    if not (code.startswith("(") and code.endswith(")")):
        return code
    depth = 0
    for i, char in enumerate(code):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return code[1:-1] if i == len(code) - 1 else code
    return code  # pragma: no cover -- printed code has balanced parentheses
