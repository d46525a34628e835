"""Matrix expressions printed in the expression language (the text parses back)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix

from ..core.graph import Symbols
from ..expr import functions, mexpr
from ..model.notation import Notation
from .language import _label


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


def _relative_naming(
    meta: Any, notation: Notation, step: int, base: str = "t", shift: int = 0
) -> Callable[[Any], str]:
    """Concrete symbols named relative to ``step``: ``dc_3`` at step 2 is ``dc[t+1]``.

    ``step`` is called ``base + shift`` (``T - 1`` for the last step of a
    notation whose steps run 0..T-1).
    """

    def name(symbol: Any) -> str:
        role, at = meta.get(symbol, ("", None))
        label = _label(notation, role) if isinstance(at, int) else None
        if label is None:
            return str(symbol.name)
        offset = at - step + shift
        return f"{label}[{base}{offset:+d}]" if offset else f"{label}[{base}]"

    return name
