"""The project's LaTeX printer: SymPy's ``LatexPrinter`` taught the notations.

:class:`BPTTLatexPrinter` overrides ``_print_<Class>`` methods only; it never
edits printed strings.  What it adds to SymPy's printer:

* every symbol of a derivation printed the way its notation writes it, from a
  map ``symbol -> TeXName`` built from ``symbols.meta`` (:func:`symbol_names`):
  ``h_{3}`` (xh), ``h^{(3)}`` (uvw), ``H_{12}`` (layered), ``a(3)``
  (aa); adjoints as ``\\delta`` and ``\\frac{\\partial L}{\\partial h_{t}}``;
* the Hadamard product as ``\\odot`` (elementwise division as ``\\oslash``),
  a Hadamard square as ``h_{t} \\odot h_{t}`` (or ``h_{t}^{\\odot 2}``);
* an elementwise function as ``\\tanh\\left(z_{t}\\right)``, from the
  activation's ``latex`` field;
* transposes as ``^{\\top}``, merged into a superscript the notation already
  has (``h^{(t-1)\\top}``, as Goodfellow et al. write it);
* the all-ones matrix as ``\\mathbf{1}`` (``\\mathbf{1}^{\\top}`` for a row),
  ``Softmax`` and ``OutputLoss`` (the loss written out from its definition);
* the terms of a sum in the order the notation's seed writes them
  (``W_{xh} x_{t} + W_{hh} h_{t-1} + b_{h}`` in xh, ``W h + U x + b`` in uvw,
  ``\\hat{y} - y``), not SymPy's alphabetical order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.printing.latex import LatexPrinter

from ..core.graph import Symbols
from ..expr import functions, mexpr
from ..model.notation import Notation

__all__ = [
    "BPTTLatexPrinter",
    "TeXName",
    "escape_math_text",
    "escape_tex",
    "param_name",
    "pre_adjoint_name",
    "series_name",
    "state_initial_name",
    "symbol_names",
]


# ---------------------------------------------------------------------------- escaping
_TEX_TEXT = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "%": r"\%",
    "#": r"\#",
    "_": r"\_",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "∂": r"$\partial$",  # the checker's explanations: ∂L/∂b_y
}

_TEX_MATH_TEXT = {
    "\\": r"\backslash ",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "%": r"\%",
    "#": r"\#",
    "_": r"\_",
    "^": r"\hat{}",
    "~": r"\sim ",
}


def _latin1(char: str) -> bool:
    return ord(char) < 0x100


def escape_tex(text: str) -> str:
    """``text`` as TeX text: special characters escaped, control characters dropped.

    Characters beyond Latin-1 (which pdflatex's default input encoding may
    not know) are written as their code point, e.g. ``[U+1F600]``.
    """
    out = []
    for char in text:
        if char in _TEX_TEXT:
            out.append(_TEX_TEXT[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(" ")
        elif not _latin1(char):
            out.append(f"[U+{ord(char):04X}]")
        else:
            out.append(char)
    return "".join(out)


def escape_math_text(text: str) -> str:
    """``text`` for use inside ``\\operatorname{...}`` (math mode, TeX and MathJax)."""
    out = []
    for char in text:
        if char in _TEX_MATH_TEXT:
            out.append(_TEX_MATH_TEXT[char])
        elif char.isascii() and (char.isalnum() or char in " .,;:!?'()[]+-*/=<>|@"):
            out.append(char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(" ")
        elif _latin1(char) and char.isalpha():
            out.append(rf"\text{{{char}}}")
        else:
            out.append(rf"\text{{[U+{ord(char):04X}]}}")
    return "".join(out)


# ---------------------------------------------------------------------------- names
@dataclass(frozen=True)
class TeXName:
    """How a symbol is written: ``head`` and the superscript it already carries.

    Keeping the superscript apart lets a transpose or a power join it
    (``h^{(t)\\top}``) instead of stacking a second one (a TeX error).
    ``compound`` names (fractions such as ``\\frac{\\partial L}{\\partial h_t}``)
    are put in parentheses before a superscript is added.
    """

    head: str
    sup: str = ""
    compound: bool = False

    def tex(self) -> str:
        return f"{self.head}^{{{self.sup}}}" if self.sup else self.head

    def with_sup(self, extra: str) -> str:
        """The name with ``extra`` added to its superscript."""
        if self.compound:
            return rf"\left({self.tex()}\right)^{{{extra}}}"
        if self.sup:
            return f"{self.head}^{{{self.sup}{extra}}}"
        if self.head.endswith(r"\right)"):  # a(t) of the aa notation
            return f"{self.head}^{{{extra}}}"
        return f"{{{self.head}}}^{{{extra}}}" if "^" in self.head else f"{self.head}^{{{extra}}}"

    def entry(self, index: str) -> str:
        """The entry ``index`` (e.g. ``ij``) of the matrix this name stands for."""
        if not index:
            return self.tex()
        if self.sup and not self.compound:
            return f"{self.head}_{{{index}}}^{{{self.sup}}}"
        if not self.compound and "_" not in self.head and not self.head.endswith(")"):
            return f"{self.head}_{{{index}}}"
        if self.compound:
            return rf"\left[{self.tex()}\right]_{{{index}}}"
        return rf"[{self.tex()}]_{{{index}}}"


def _step_tex(step: Any) -> str:
    return sp.latex(step) if isinstance(step, sp.Basic) else str(step)


def _indexed(notation: Notation, base: str, step: Any, layer: str = "") -> TeXName:
    """``base`` at ``step`` in the notation's index style (``Notation.index``), split."""
    if notation.style == "sup":
        return TeXName(base, f"({_step_tex(step)})")
    return TeXName(notation.index(base, step, layer))


def series_name(notation: Notation, role: str, step: Any) -> TeXName:
    """The name of a step-indexed quantity (``hidden``, ``output``, ...) at ``step``."""
    series = notation.series_of(role)
    return _indexed(notation, series.base, step, series.layer)


def param_name(notation: Notation, role: str) -> TeXName:
    """A parameter's name, by its key or role (``W_{xh}``, ``W_{xi}``)."""
    return TeXName(notation.param(role).latex)


def delta_name(notation: Notation, step: Any, role: str) -> TeXName:
    """``\\delta_t``: the adjoint of the quantity ``role`` (Elman's z) at ``step``."""
    layer = notation.series_of(role).layer
    return _indexed(notation, r"\delta", step, layer)


def loss_name(notation: Notation, step: Any = None) -> TeXName:
    if step is None:
        return TeXName(notation.loss_latex)
    return _indexed(notation, notation.loss_latex, step)


def initial_name(notation: Notation, role: str) -> TeXName:
    """The initial value of the state ``role``."""
    return state_initial_name(notation, role)


def partial_name(notation: Notation, of: TeXName) -> TeXName:
    r"""``\frac{\partial L}{\partial of}``, L being the notation's total loss."""
    return TeXName(
        rf"\frac{{\partial {notation.loss_latex}}}{{\partial {of.tex()}}}", compound=True
    )


def pre_adjoint_name(notation: Notation, role: str, step: Any) -> TeXName:
    r"""The adjoint of the argument of ``q = f(argument)``: ``\delta^{q}_{t}``.

    The quantity's LaTeX name is the superscript, the step the notation's index
    (``\delta^{i}_{t}`` for the LSTM input gate; ``\delta_{i}^{(t)}`` in the
    ``sup`` style, where the superscript holds the step).
    """
    entry = notation.name_of(role)
    if notation.style == "sup":
        return TeXName(rf"\delta_{{{entry.latex}}}", f"({_step_tex(step)})")
    if notation.style == "call":
        return TeXName(rf"\delta^{{{entry.latex}}}({_step_tex(step)})")
    return TeXName(notation.index(r"\delta", step, entry.layer), entry.latex)


def state_initial_name(notation: Notation, key: str) -> TeXName:
    """The initial value of the state ``key`` (``h_0``, ``c_0``, ``H_{init}``)."""
    state = notation.name_of(key)
    before = notation.t0 - 1
    if notation.index(state.base, before, state.layer) == state.initial_latex:
        return _indexed(notation, state.base, before, state.layer)
    return TeXName(state.initial_latex)


def _initial_of(notation: Notation, ascii_name: str) -> TeXName | None:
    """The initial value named ``ascii_name`` (any state's), or None."""
    for state in notation.states:
        if state.initial == ascii_name:
            return state_initial_name(notation, state.key)
    return None


def delta_role(notation: Notation) -> str:
    """The role of the quantity whose adjoint the notation calls ``delta`` (its names'
    ``adjoint = "delta"``, Elman's pre-activation), written ``\\delta``; "" if none."""
    for entry in notation.series:
        if entry.adjoint == "delta":
            return entry.role
    return ""


def _name_for(
    notation: Notation, symbol: Any, role: str, step: Any, delta_of: str | None = None
) -> TeXName | None:
    if delta_of is None:
        delta_of = delta_role(notation)
    if step is None and role in {n.role for n in notation.params}:
        return param_name(notation, role)
    if role == "initial_state":
        return _initial_of(notation, str(getattr(symbol, "name", "")))
    if role.startswith("pre_adjoint_"):
        return pre_adjoint_name(notation, role[len("pre_adjoint_") :], step)
    if role == "loss":
        return loss_name(notation, step)
    if role == "total_loss":
        return loss_name(notation)
    if delta_of and role == "adjoint_" + delta_of:
        return delta_name(notation, step, delta_of)
    if role.startswith("adjoint_"):
        return partial_name(notation, series_name(notation, role[len("adjoint_") :], step))
    if role in ("contribution", "gradient"):
        target = _param_of(notation, symbol.name[1:] if step is None else _strip_step(symbol, step))
        if target is None:
            return None
        if step is None:
            return partial_name(notation, target)
        # the copy of the parameter used at ``step`` (Goodfellow et al.'s W^{(t)})
        copy = target if target.sup else TeXName(target.head, f"({_step_tex(step)})")
        return partial_name(notation, copy)
    try:
        return series_name(notation, role, step)
    except KeyError:
        return None


def _strip_step(symbol: Any, step: Any) -> str:
    suffix = "_" + Symbols.step_name(step)
    name = str(symbol.name)
    return name[1 : -len(suffix)] if name.endswith(suffix) else name[1:]


def _param_of(notation: Notation, ascii_name: str) -> TeXName | None:
    for param in notation.params:
        if param.ascii == ascii_name:
            return TeXName(param.latex)
    return _initial_of(notation, ascii_name)


def symbol_names(
    notation: Notation,
    metas: Iterable[Mapping[Any, tuple[str, Any]]],
    delta_of: str | None = None,
) -> dict[Any, TeXName]:
    """``symbol -> TeXName`` for every symbol recorded in the ``meta`` maps (role, step).

    The adjoint of the quantity whose role is ``delta_of`` (by default the one the
    notation calls ``delta``: :func:`delta_role`) is written ``\\delta``; every other
    adjoint as a partial derivative.
    """
    names: dict[Any, TeXName] = {}
    for meta in metas:
        for symbol, (role, step) in meta.items():
            name = _name_for(notation, symbol, role, step, delta_of)
            if name is not None:
                names[symbol] = name
    return names


# ---------------------------------------------------------------------------- term order
# Where a term of a sum goes: (class, rank within the class).  Sums are printed in
# the order the seeds write them: 1 - h ⊙ h, ŷ - y, W_hy^T ∂L/∂o + W_hh^T δ,
# W_xh x + W_hh h + b (W h + U x + b when the notation puts the recurrence first).
# This table holds the roles every model shares (the output layer, the input, the
# initial state, a gradient); a cell's own quantities get their places from its
# equations (``classes``, see ``documents.teaching.term_classes``).
_SHARED_CLASS: dict[str, tuple[str, int]] = {
    "output": ("output", 0),
    "target": ("output", 1),
    "output_weight": ("output", 2),
    "adjoint_output_pre_activation": ("output", 3),
    "adjoint_output": ("output", 4),
    "output_pre_activation": ("output", 5),
    "input": ("input", 0),
    "initial_state": ("recurrent", 2),
    "output_bias": ("bias", 1),
    "gradient": ("gradient", 0),
}
_CLASS_ORDER = {
    False: {
        "const": 0,
        "output": 1,
        "input": 2,
        "recurrent": 3,
        "other": 5,
        "spread": 6,
        "bias": 8,
        "gradient": 9,
    },
    True: {
        "const": 0,
        "recurrent": 1,
        "output": 2,
        "input": 3,
        "other": 5,
        "spread": 6,
        "bias": 8,
        "gradient": 9,
    },
}


def _matrix_atoms(expr: Any) -> list[Any]:
    """The MatrixSymbols and scalar Symbols of ``expr`` (iteratively, in a fixed order)."""
    out: list[Any] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, (sp.MatrixSymbol, sp.Symbol)):
            out.append(node)
            continue
        if isinstance(node, (sp.OneMatrix, sp.ZeroMatrix, sp.Identity)):
            continue  # constants: their arguments are the shape
        if isinstance(node, sp.Basic):
            stack.extend(reversed(node.args))
    return out


# ---------------------------------------------------------------------------- printer
class BPTTLatexPrinter(LatexPrinter):  # type: ignore[misc]
    """SymPy's LaTeX printer with the notations of symbptt (see the module docstring).

    Settings (besides SymPy's own):

    ``names``
        ``symbol -> TeXName`` (:func:`symbol_names`); unnamed symbols print as SymPy does.
    ``roles``
        ``symbol -> (role, step)`` (``symbols.meta``), for ordering the terms of sums.
    ``recurrent_first``
        put the recurrent term before the input term (the uvw and aa seeds do).
    ``hadamard_power``
        ``"product"`` prints a Hadamard square as ``h \\odot h``; ``"power"`` as ``h^{\\odot 2}``.
    ``transpose``
        the superscript of a transpose (``\\top``).
    ``classes``
        ``role -> (class, rank)`` for the cell's own roles, where a term of a sum goes
        (``"input"``, ``"recurrent"``, ``"output"``, ``"bias"``, ...; the roles every
        model shares are in ``_SHARED_CLASS``): read from the cell's equations.
    """

    printmethod = "_symbptt_latex"
    _default_settings: ClassVar[dict[str, Any]] = {
        **LatexPrinter._default_settings,
        "names": None,
        "roles": None,
        "recurrent_first": False,
        "hadamard_power": "product",
        "transpose": r"\top",
        "classes": None,
    }

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self._names: dict[Any, TeXName] = dict(self._settings["names"] or {})
        self._roles: dict[Any, tuple[str, Any]] = dict(self._settings["roles"] or {})
        self._classes: dict[str, tuple[str, int]] = {
            **(self._settings["classes"] or {}),
            **_SHARED_CLASS,
        }
        if self._settings["hadamard_power"] not in ("product", "power"):
            raise ValueError(
                f"hadamard_power: got {self._settings['hadamard_power']!r}; "
                "expected 'product' or 'power'"
            )

    def with_names(self, extra: Mapping[Any, TeXName]) -> BPTTLatexPrinter:
        """A printer like this one that also knows the names in ``extra``."""
        settings = dict(self._settings)
        settings["names"] = {**self._names, **extra}
        settings["roles"] = self._roles
        settings["classes"] = self._settings["classes"]
        for key in list(settings):
            if key not in self._default_settings:
                del settings[key]
        return BPTTLatexPrinter(settings)

    def name(self, symbol: Any) -> TeXName:
        """The TeXName of ``symbol`` (its printed form when it has none)."""
        found = self._names.get(symbol)
        return found if found is not None else TeXName(self._print(symbol))

    def _tall(self, expr: Any) -> bool:
        """True when ``expr`` prints taller than a line: a fraction, a sum, a ∂ name."""
        stack = [expr]
        while stack:
            node = stack.pop()
            found = self._names.get(node) if isinstance(node, sp.Basic) else None
            if found is not None:
                if found.compound:
                    return True
                continue
            if isinstance(node, (sp.MatrixSymbol, sp.OneMatrix, sp.ZeroMatrix, sp.Identity)):
                continue
            if isinstance(node, sp.Sum):
                return True
            if isinstance(node, sp.Rational) and not node.is_Integer:
                return True
            if (
                isinstance(node, sp.Pow)
                and node.exp.is_negative
                and not isinstance(node, sp.Symbol)
            ):
                return True
            if isinstance(node, sp.Basic):
                stack.extend(node.args)
        return False

    def paren(self, expr: Any, tex: str | None = None) -> str:
        """``expr`` in parentheses: ``\\left( \\right)`` only when it is tall."""
        body = self._print(expr) if tex is None else tex
        if self._tall(expr):
            return rf"\left({body}\right)"
        return f"({body})"

    # -- symbols ------------------------------------------------------------------
    def _print_Symbol(self, expr: Any, style: str = "plain") -> str:
        found = self._names.get(expr)
        if found is not None:
            return found.tex()
        return super()._print_Symbol(expr, style=style)  # type: ignore[no-any-return]

    def _print_MatrixSymbol(self, expr: Any) -> str:
        found = self._names.get(expr)
        if found is not None:
            return found.tex()
        return super()._print_MatrixSymbol(expr)  # type: ignore[no-any-return]

    def _print_OneMatrix(self, expr: Any) -> str:
        rows, cols = expr.shape
        if rows == 1 and cols != 1:
            return rf"\mathbf{{1}}^{{{self._settings['transpose']}}}"
        return r"\mathbf{1}"

    def _print_ZeroMatrix(self, expr: Any) -> str:
        return r"\mathbf{0}"

    def _print_Identity(self, expr: Any) -> str:
        return "I"

    # -- transposes, products, powers -----------------------------------------------
    def _print_Transpose(self, expr: Any) -> str:
        arg, top = expr.arg, self._settings["transpose"]
        if isinstance(arg, (sp.OneMatrix, sp.ZeroMatrix)):
            return str(self._print(type(arg)(arg.shape[1], arg.shape[0])))
        if isinstance(arg, (sp.MatrixSymbol, sp.Symbol)):
            return self.name(arg).with_sup(top)
        return f"{self.paren(arg)}^{{{top}}}"

    @staticmethod
    def _flatten(expr: Any) -> tuple[Any, list[Any]]:
        """(scalar coefficient, matrix factors) of a possibly nested MatMul."""
        coeff: Any = sp.Integer(1)
        factors: list[Any] = []
        if isinstance(expr, sp.MatMul) and all(
            isinstance(arg, sp.OneMatrix) and arg.shape == (1, 1) for arg in expr.args
        ):
            return coeff, [expr.args[0]]
        stack = [expr]
        while stack:
            node = stack.pop()
            if isinstance(node, sp.MatMul):
                stack.extend(reversed(node.args))
            elif isinstance(node, sp.OneMatrix) and node.shape == (1, 1):
                continue  # a 1 x 1 matrix of ones (one example): the number 1
            elif mexpr.is_matrix(node):
                factors.append(node)
            else:
                coeff *= node
        return coeff, factors

    def _factor(self, arg: Any, alone: bool) -> str:
        """A factor of a matrix product, in parentheses when it binds looser.

        ``alone``: the only factor, with no coefficient (or just a sign).
        """
        tex = self._print(arg)
        if isinstance(arg, sp.MatAdd):
            return self.paren(arg, tex)
        hadamard = isinstance(arg, sp.HadamardProduct) or (
            isinstance(arg, sp.HadamardPower) and self._hadamard_power_is_product(arg)
        )
        if hadamard and not alone:
            return self.paren(arg, tex)
        return str(tex)

    def _scalar(self, coeff: Any) -> str:
        tex = self._print(coeff)
        if isinstance(coeff, sp.Add):
            return self.paren(coeff, tex)
        return str(tex)

    @staticmethod
    def _negative(coeff: Any) -> bool:
        """A coefficient written with a leading minus (-2, -η; not 1 - ρ)."""
        if isinstance(coeff, sp.Add):
            return False
        number, _ = coeff.as_coeff_Mul()
        return bool(number.is_negative)

    def _product(self, coeff: Any, factors: list[Any]) -> str:
        sign = ""
        if self._negative(coeff):
            sign, coeff = "- ", -coeff
        alone = len(factors) == 1 and coeff == 1
        body = " ".join(self._factor(f, alone) for f in factors)
        if coeff == 1:
            return sign + body
        return f"{sign}{self._scalar(coeff)} {body}"

    def _print_MatMul(self, expr: Any) -> str:
        coeff, factors = self._flatten(expr)
        return self._product(coeff, factors)

    def _hadamard_power_is_product(self, expr: Any) -> bool:
        return bool(expr.exp == 2 and self._settings["hadamard_power"] == "product")

    def _elementwise_operand(self, arg: Any) -> str:
        tex = self._print(arg)
        if isinstance(arg, (sp.MatAdd, sp.MatMul, sp.HadamardProduct)):
            return self.paren(arg, tex)
        return str(tex)

    def _print_HadamardProduct(self, expr: Any) -> str:
        top: list[str] = []
        bottom: list[str] = []
        for arg in expr.args:
            if isinstance(arg, sp.HadamardPower) and arg.exp == -1:
                bottom.append(self._elementwise_operand(arg.base))
            else:
                top.append(self._elementwise_operand(arg))
        tex = r" \odot ".join(top) if top else r"\mathbf{1}"
        for denominator in bottom:
            tex += rf" \oslash {denominator}"
        return tex

    def _print_HadamardPower(self, expr: Any) -> str:
        base, exp = expr.base, expr.exp
        if exp == -1:
            return rf"\mathbf{{1}} \oslash {self._elementwise_operand(base)}"
        if exp == sp.Rational(1, 2):
            return rf"\sqrt{{{self._print(base)}}}"
        if self._hadamard_power_is_product(expr):
            operand = self._elementwise_operand(base)
            return rf"{operand} \odot {operand}"
        sup = rf"\odot {self._print(exp)}"
        if isinstance(base, (sp.MatrixSymbol, sp.Symbol)):
            return self.name(base).with_sup(sup)
        return f"{self.paren(base)}^{{{sup}}}"

    # -- sums -----------------------------------------------------------------------
    def _term_key(self, term: Any) -> tuple[int, int, int]:
        order = _CLASS_ORDER[bool(self._settings["recurrent_first"])]
        best = (order["other"], 0)
        step_key = 0
        atoms = _matrix_atoms(term)
        if not atoms:
            return (order["const"], 0, 0)
        for atom in atoms:
            role, step = self._roles.get(atom, ("", None))
            klass, rank = self._classes.get(role, ("other", 0))
            if role == "contribution":
                klass = "other"
            key = (order[klass], rank)
            best = min(best, key)
            if isinstance(step, int):
                step_key = max(step_key, step)
        if best[0] < order["bias"] and self._spreads(term):
            best = (order["spread"], best[1])
        return (best[0], best[1], step_key)

    def _spreads(self, term: Any) -> bool:
        """A product with a vector of ones (a sum over units or examples, spread back)."""
        if not isinstance(term, sp.MatMul):
            return False
        _, factors = self._flatten(term)
        return any(isinstance(f, sp.OneMatrix) for f in factors)

    def _ordered(self, terms: list[Any]) -> list[Any]:
        keyed = sorted(enumerate(terms), key=lambda it: (self._term_key(it[1]), it[0]))
        return [term for _, term in keyed]

    def _term(self, term: Any) -> tuple[bool, str]:
        """(negative, the term printed without its sign)."""
        if isinstance(term, sp.MatMul):
            coeff, factors = self._flatten(term)
            negative = self._negative(coeff)
            return negative, self._product(-coeff if negative else coeff, factors)
        negative = bool(not mexpr.is_matrix(term) and term.could_extract_minus_sign())
        magnitude = -term if negative else term
        body = self._print(magnitude)
        if not mexpr.is_matrix(term) and isinstance(magnitude, sp.Add):
            body = self.paren(magnitude, body)
        return negative, body

    def _signed_terms(self, terms: list[Any]) -> str:
        tex = ""
        for i, term in enumerate(terms):
            negative, body = self._term(term)
            if i == 0:
                tex = f"- {body}" if negative else body
            else:
                tex += f" - {body}" if negative else f" + {body}"
        return tex

    def signed_terms(self, expr: Any) -> list[tuple[str, str]]:
        """The terms of a sum in print order, as ``(sign, term)`` with sign ``+`` or ``-``."""
        terms = list(expr.args) if isinstance(expr, (sp.MatAdd, sp.Add)) else [expr]
        out = []
        for term in self._ordered(terms):
            negative, body = self._term(term)
            out.append(("-" if negative else "+", body))
        return out

    def signed_term(self, term: Any) -> tuple[str, str]:
        """One term of a sum as ``(sign, term)``, for a caller that orders the terms itself."""
        negative, body = self._term(term)
        return ("-" if negative else "+", body)

    def sum_of(self, terms: list[Any]) -> str:
        """``terms`` printed as a sum, in the notation's order (without building it)."""
        return self._signed_terms(self._ordered(list(terms)))

    def _print_MatAdd(self, expr: Any) -> str:
        return self._signed_terms(self._ordered(list(expr.args)))

    def _print_Add(self, expr: Any, order: Any = None) -> str:
        terms = list(expr.args)
        if all(t in self._roles for t in terms):  # a sum of named scalars: L_1 + L_2 + ...
            return self._signed_terms(self._ordered(terms))
        return super()._print_Add(expr, order=order)  # type: ignore[no-any-return]

    # -- functions ------------------------------------------------------------------
    def activation_name(self, activation: functions.Activation) -> str:
        """The LaTeX name of an activation; a default ``\\operatorname`` name is escaped."""
        if activation.latex == rf"\operatorname{{{activation.name}}}":
            return rf"\operatorname{{{escape_math_text(activation.name)}}}"
        return activation.latex

    def _activation_tex(self, function: sp.Lambda) -> str | None:
        """The LaTeX name of a registered activation, or None."""
        act = functions.activation_for(function)
        registered = functions.ACTIVATIONS.get(act.name)
        if registered is None or registered.function != function:
            return None
        return self.activation_name(registered)

    def _print_ElementwiseApplyFunction(self, expr: Any) -> str:
        function = expr.function
        (var,) = function.variables
        body = function.expr
        arg = self.paren(expr.expr)
        if isinstance(body, AppliedUndef) and body.args == (var,):
            return rf"{self._print(sp.Symbol(body.func.__name__))}{arg}"
        if isinstance(body, sp.Heaviside) and body.args[0] == var:
            inside = self._print(expr.expr)
            return self._iverson(inside, tall=self._tall(expr.expr))
        name = self._activation_tex(function)
        if name is not None:
            return f"{name}{arg}"
        placeholder = sp.Dummy("arg")
        inner = self.with_names({placeholder: TeXName(arg)})
        return inner._print(body.xreplace({var: placeholder}))  # type: ignore[no-any-return]

    @staticmethod
    def _iverson(inside: str, tall: bool = False) -> str:
        """``[x > 0]``, Iverson's bracket: 1 where it holds, else 0.

        Not ``\\mathbb{1}``: amssymb has no blackboard digit one and pdflatex
        silently prints "does not force" (⊮) in its place.
        """
        if tall:
            return rf"\left[{inside} > 0\right]"
        return rf"[{inside} > 0]"

    def _print_Heaviside(self, expr: Any, exp: Any = None) -> str:
        tex = self._iverson(self._print(expr.args[0]))
        return rf"{tex}^{{{exp}}}" if exp is not None else tex

    def _print_log(self, expr: Any, exp: Any = None) -> str:
        arg = expr.args[0]
        if isinstance(arg, (sp.Symbol, sp.Indexed)) or (arg.is_Atom and not arg.is_negative):
            tex = rf"\log {self._print(arg)}"
        else:
            tex = rf"\log {self.paren(arg)}"
        return rf"({tex})^{{{exp}}}" if exp is not None else tex

    def _print_tanh(self, expr: Any, exp: Any = None) -> str:
        power = f"^{{{exp}}}" if exp is not None else ""
        return rf"\tanh{power}{self.paren(expr.args[0])}"

    def _print_Max(self, expr: Any, exp: Any = None) -> str:
        args = ", ".join(self._print(arg) for arg in expr.args)
        tex = rf"\max({args})"
        return rf"{tex}^{{{exp}}}" if exp is not None else tex

    def _print_DiagMatrix(self, expr: Any) -> str:
        return rf"\operatorname{{diag}}{self.paren(expr.args[0])}"

    def _print_Softmax(self, expr: Any) -> str:
        softmax = functions.SoftmaxOutput()
        return f"{softmax.latex}{self.paren(expr.arg)}"

    def _print_OutputLoss(self, expr: Any) -> str:
        """The loss of one step written out: the loss definition summed over units and examples."""
        loss = functions.LOSSES[expr.loss]
        rows, cols = expr.pred.shape
        i, j = sp.symbols("i j", integer=True, positive=True)
        bounds = [(index, size) for index, size in ((i, rows), (j, cols)) if size != 1]
        index = "".join(str(index) for index, _ in bounds)
        pred, target = sp.Dummy("pred"), sp.Dummy("target")
        inner = self.with_names(
            {
                pred: TeXName(self.name(expr.pred).entry(index)),
                target: TeXName(self.name(expr.target).entry(index)),
            }
        )
        body = loss.definition.xreplace({functions.a: pred, functions.y: target})
        sign = ""
        if body.could_extract_minus_sign():
            sign, body = "-", -body
        tex = inner._print(body)
        if isinstance(body, sp.Add):
            tex = inner.paren(body, tex)
        sums = "".join(
            rf"\sum_{{{self._print(index_symbol)}=1}}^{{{self._print(size)}}} "
            for index_symbol, size in bounds
        )
        return f"{sign}{sums}{tex}"
