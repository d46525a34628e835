"""The torch backend's printer: the NumPy printer with PyTorch's spellings.

The derivation's expressions print the same way for both engines (``@``,
``*``, ``.T``, ``.sum(axis=..., keepdims=True)``, which torch accepts too);
what differs is the module of the elementwise functions and a few calls whose
torch form takes other arguments.  Those are overridden here, one
``_print_<Class>`` each; a NumPy function without a torch spelling in
:data:`TORCH_FUNCTIONS` is an error that names it, never a silent fallback.
"""

from __future__ import annotations

from typing import Any, ClassVar

import sympy as sp

from ..expr import functions
from .lines import SharedPrinter
from .numpy_printer import _is_softplus, _softplus_arg, activation_source, safe_form

__all__ = ["TORCH_FUNCTIONS", "TORCH_NATIVE", "TorchPrinter", "torch_helper_source"]

#: NumPy function -> its torch spelling (the same mathematics, elementwise).
TORCH_FUNCTIONS: dict[str, str] = {
    "numpy.abs": "torch.abs",
    "numpy.arccos": "torch.acos",
    "numpy.arccosh": "torch.acosh",
    "numpy.arcsin": "torch.asin",
    "numpy.arcsinh": "torch.asinh",
    "numpy.arctan": "torch.atan",
    "numpy.arctanh": "torch.atanh",
    "numpy.concatenate": "torch.cat",
    "numpy.cos": "torch.cos",
    "numpy.cosh": "torch.cosh",
    "numpy.exp": "torch.exp",
    "numpy.expm1": "torch.expm1",
    "numpy.log": "torch.log",
    "numpy.log1p": "torch.log1p",
    "numpy.sign": "torch.sign",
    "numpy.sin": "torch.sin",
    "numpy.sinh": "torch.sinh",
    "numpy.sqrt": "torch.sqrt",
    "numpy.stack": "torch.stack",
    "numpy.tan": "torch.tan",
    "numpy.tanh": "torch.tanh",
    "numpy.tile": "torch.tile",
    "numpy.zeros_like": "torch.zeros_like",
}


#: Elementwise functions torch computes in one (overflow-free) call, by their definition in
#: the activation variable ``functions.z``: an activation whose definition is one of these
#: is printed as that call, not as its safe form's several (sigmoid: ``z / 2``, ``tanh``,
#: ``/ 2``, ``+ 1 / 2``; an in-place torch call with a Python number costs about 5 us on
#: one CPU thread here, one with tensors alone under 1 us).
TORCH_NATIVE: dict[str, sp.Expr] = {
    "torch.sigmoid": 1 / (1 + sp.exp(-functions.z)),
}


def native_call(function: sp.Lambda) -> str | None:
    """The torch function of :data:`TORCH_NATIVE` whose definition ``function`` is, or None."""
    (var,) = function.variables
    body = function.expr.xreplace({var: functions.z})
    return next((name for name, d in TORCH_NATIVE.items() if body == d), None)


#: The in-place NumPy calls of the lowering and their torch names (others keep NumPy's
#: name through :data:`TORCH_FUNCTIONS`).
_INTO = {
    "add": "torch.add",
    "dot": "torch.mm",
    "multiply": "torch.mul",
    "negative": "torch.neg",
    "subtract": "torch.sub",
}


def _is_number(code: str) -> bool:
    try:
        float(code)
    except ValueError:
        return False
    return True


class TorchPrinter(SharedPrinter):
    """Prints for ``import torch``: the overrides below, and :data:`TORCH_FUNCTIONS`."""

    printmethod = "_symbptt_torch"
    _default_settings: ClassVar[dict[str, Any]] = dict(SharedPrinter._default_settings)
    spellings = TORCH_FUNCTIONS
    backend = "torch"

    # -- statements of the in-place lowering -----------------------------------------
    def call_into(self, function: str, args: list[str], out: str) -> str:
        """``torch.mm(a, b, out=z)``, ``torch.mul``, ...; torch's ``sub`` and ``add`` take a
        tensor first: ``1 + x`` is ``add(x, 1)``, ``1 - x`` is ``neg(x).add_(1)``, into z."""
        if function == "add" and _is_number(args[0]):
            return f"torch.add({args[1]}, {args[0]}, out={out})"
        if function == "subtract" and _is_number(args[0]):
            return f"torch.neg({args[1]}, out={out}).add_({args[0]})"
        name = _INTO.get(function) or self._module_format("numpy." + function)
        return f"{name}({', '.join(args)}, out={out})"

    def add_into(self, function: str, args: list[str], out: str) -> str | None:
        """``out += a @ b`` as ``out.addmm_(a, b)``, ``out += a * b`` as ``out.addcmul_(a, b)``:
        one torch call instead of two (and no scratch tensor)."""
        method = {"dot": "addmm_", "multiply": "addcmul_"}.get(function)
        return f"{out}.{method}({', '.join(args)})" if method else None

    def steps_reversed(self, code: str) -> str:
        """Tensors take no negative step: the views of ``unbind``, last first."""
        return f"{code}.unbind(0)[::-1]"

    def copy_of(self, code: str) -> str:
        return f"{code}.clone(memory_format=torch.contiguous_format)"

    def transposed_operand(self, name: str) -> str:
        """``W.T`` as a view: MKL's ``h @ W.T`` of a view is as fast as of a C-ordered copy
        or faster (one CPU thread here: 0.90 of its time for (64, 512) @ (512, 512) in
        float64, 0.93 for (32, 128) @ (128, 512) in float32), and the copy costs a call."""
        return f"{name}.T"

    def concatenate(self, parts: list[Any], axis: int) -> str:
        """Transposes side by side as the transpose of the parameters stacked (a view): the
        loop's product then reads the parameters' own rows, as with ``transposed_operand``."""
        if axis == 1 and parts and all(isinstance(p, sp.Transpose) for p in parts):
            stacked = ", ".join(self._print(p.arg) for p in parts)
            return f"torch.cat([{stacked}], axis=0).T"
        return super().concatenate(parts, axis)

    def zeros(self, shape: str, dtype: str) -> str:
        """Zeros on the call's device: the workspace ``ws`` of the function knows it."""
        return f"torch.zeros({shape}, dtype={dtype}, device=ws[_DEVICE])"

    def steps_array(self, name: str, shape: str, dtype: str) -> list[tuple[str, set[str]]]:
        """An empty array and its two ends zeroed: filling the whole with zeros, which the
        loop then overwrites, was 11 % of a call of the composed LSTM of
        ``benchmarks/compose.py`` (``aten::fill_``, torch's profiler)."""
        empty = f"torch.empty({shape}, dtype={dtype}, device=ws[_DEVICE])"
        return [
            (f"{name} = {empty}", {"ws"}),
            (f"{name}[0] = 0", set()),
            (f"{name}[-1] = 0", set()),
        ]

    def elementwise_into(self, expr: Any, arg: str, out: str) -> str | None:
        """NumPy's one-call form, where torch has the same call with ``out=``; else None
        (the caller then assigns the printed expression)."""
        native = native_call(expr.function)
        if native is not None:
            return f"{native}({arg}, out={out})"
        body = safe_form(expr.function.expr)
        if _is_softplus(body) or isinstance(body, (sp.Max, sp.Min, sp.Heaviside)):
            return None
        return super().elementwise_into(expr, arg, out)

    def _print_log(self, expr: sp.log) -> str:
        """``log(1 + exp(u))`` as ``softplus(u)`` (torch's logaddexp takes no number)."""
        if _is_softplus(expr):
            return f"torch.nn.functional.softplus({self._print(_softplus_arg(expr))})"
        return str(super()._print_log(expr))

    def _print_Heaviside(self, expr: sp.Heaviside) -> str:
        """``torch.heaviside(x, values)`` takes its value at 0 as a tensor of x's dtype."""
        x = self._paren(expr.args[0], 1000)
        at_zero = expr.args[1] if len(expr.args) > 1 else sp.S.Half
        return f"torch.heaviside({x}, {x}.new_tensor({self._print(at_zero)}))"

    def _print_Max(self, expr: sp.Max) -> str:
        return self._bound(expr, "torch.maximum", "torch.clamp_min")

    def _print_Min(self, expr: sp.Min) -> str:
        return self._bound(expr, "torch.minimum", "torch.clamp_max")

    def _bound(self, expr: Any, both: str, clamp: str) -> str:
        """A maximum or minimum: ``clamp_min(x, 0)`` against a number (torch.maximum takes
        tensors only), else the tensors reduced pairwise."""
        numbers = [a for a in expr.args if a.is_number]
        others = sorted((a for a in expr.args if not a.is_number), key=sp.default_sort_key)
        code = self._print(others[0])
        for arg in others[1:]:
            code = f"{both}({code}, {self._print(arg)})"
        for number in numbers:
            code = f"{clamp}({code}, {self._print(number)})"
        return code


def torch_helper_source(name: str) -> str:
    """The source of a module-level helper of the torch module (as :func:`helper_source`).

    ``softmax`` and ``logsumexp`` are torch's own (both subtract the maximum);
    ``logsumexp`` given the softmax takes the largest entry's form, as NumPy's does.
    An activation's helper is its :func:`safe_form` printed by :class:`TorchPrinter`.
    """
    if name == "softmax":
        return (
            "def softmax(x, axis, out=None):\n"
            '    """exp(x) / sum(exp(x)) along axis, computed with the maximum subtracted."""\n'
            "    if out is None:\n"
            "        return torch.softmax(x, dim=axis)\n"
            "    return out.copy_(torch.softmax(x, dim=axis))\n"
        )
    if name == "logsumexp":
        return (
            "def logsumexp(x, axis, softmax=None):\n"
            '    """log(sum(exp(x))) along axis, kept as a length-1 axis.\n'
            "\n"
            "    softmax_k(x) = exp(x_k) / sum(exp(x)) gives x_k - log(softmax_k(x)) for any k:\n"
            "    given the softmax, that at the largest x_k (no exp); else torch.logsumexp.\n"
            '    """\n'
            "    if softmax is not None:\n"
            "        top = x.amax(dim=axis, keepdim=True)\n"
            "        return top - torch.log(softmax.amax(dim=axis, keepdim=True))\n"
            "    return torch.logsumexp(x, dim=axis, keepdim=True)\n"
        )
    activation = functions.ACTIVATIONS[name]
    native = native_call(activation.function)
    if native is not None:
        definition = sp.sstr(activation.definition)
        return f'def {name}(z):\n    """{name}(z) = {definition}."""\n    return {native}(z)\n'
    return activation_source(name, TorchPrinter({}))
