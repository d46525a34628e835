"""The teaching writer: the derivation as the seeds write it, for a one-state cell.

:class:`_Writer` prints every formula of one derivation into the templates'
context.  Its sections (the chain rule path by path, the general formula with
its product of step Jacobians, the local derivatives) are derived for a cell
with one state updated as ``state = f(affine)``; the sections every cell
shares (loss, the recursion as computed, the sums, updates, what was verified)
are read from the step form and are used by :class:`~.cells._CellWriter` too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix

from ..core import rules
from ..core.derive import Derivation
from ..core.graph import T_SYMBOL, Symbols
from ..expr import functions, mexpr
from ..model import equations
from ..model.notation import PARAM_ROLES, Notation
from ..model.spec_flags import preset_of
from ..optimizers import Adam
from . import figure
from .latex_printer import (
    BPTTLatexPrinter,
    TeXName,
    delta_name,
    initial_name,
    loss_name,
    param_name,
    partial_name,
    series_name,
    state_initial_name,
    symbol_names,
)
from .layout import (
    CHAIN_LIMIT,
    MARKER,
    ROW_WIDTH,
    UNIT_LOSS,
    UNROLL_LIMIT,
    _atoms,
    _decimal,
    _elide,
    _numbers,
    _pack,
    _sci,
    prose,
    regenerate_command,
    tex_width,
)

if TYPE_CHECKING:  # the results only: documents never run a check
    from ..oracle.verification import Checks, SeedVerdict


#: How the documents write the spec's sizes.
_SIZE_SYMBOLS = {"n_in": "n_0", "n_hidden": "n_1", "n_out": "n_2", "batch": "m", "steps": "T"}


def term_classes(cell: Any) -> dict[str, tuple[str, int]]:
    """Where the terms of a cell's sums go when printed (see ``BPTTLatexPrinter``).

    Read from the cell's equations: an input is an input, a weight that multiplies
    the previous step's state is recurrent (it leads the sum in a notation that puts
    the recurrence first), a weight that multiplies only inputs is an input weight;
    a state and its adjoint are recurrent, and so is an intermediate (a
    pre-activation, a gate) with its adjoint; a bias is a bias; the named
    pre-activation adjoints (δ^i, δ^f, ...) come in the order of the equations.
    """
    states = {quantity.key for quantity in cell.states}
    classes: dict[str, tuple[str, int]] = {}
    for quantity in cell.inputs:
        classes[cell.role_of(quantity.key)] = ("input", 0)
    for state in cell.states:
        role = cell.role_of(state.key)
        classes[role] = ("recurrent", 1)
        classes["adjoint_" + role] = ("recurrent", 4)
    for k, equation in enumerate(cell.equations):
        role = cell.role_of(equation.target)
        if equation.target not in states:
            classes[role] = ("recurrent", 5)
            classes["adjoint_" + role] = ("recurrent", 3)
        classes["pre_adjoint_" + role] = ("recurrent", 10 + k)
    for weight, operand in equations.weight_operands(cell).items():
        classes[cell.role_of(weight)] = ("recurrent", 0) if operand == "recurrent" else ("input", 1)
    for parameter in cell.parameters:
        if parameter.kind == "bias":
            classes[cell.role_of(parameter.key)] = ("bias", 0)
    return classes


#: The order the chain-rule section takes the parameters in, by the roles of the
#: teaching sections, where the notation names none (its ``parameter_order``).
_DEFAULT_CHAIN_ORDER = (
    "output_weight",
    "output_bias",
    "input_weight",
    "recurrent_weight",
    "hidden_bias",
)

#: The quantities the teaching sections speak of, by their Elman role names.
TEACHING_ROLES = ("pre_activation", "hidden", "input_weight", "recurrent_weight", "hidden_bias")


def teaching_roles(derivation: Derivation) -> dict[str, str] | None:
    """The cell's roles of the quantities the teaching sections speak of, or None.

    Read from the equations: a cell with one state, read by the output layer,
    whose first equation is an affine sum ``z = W_x x + W_h h_{t-1} + b`` (each
    term a weight times the input or the previous state, or a bias) and whose
    second applies the spec's hidden activation to it, ``h = f(z)``.  Returns
    ``{"pre_activation": role of z, "hidden": role of h, "input_weight": ...,
    "recurrent_weight": ..., "hidden_bias": ...}`` (the Elman cell file's tags,
    or the keys of a cell file that tags nothing); None for any other cell.
    """
    cell, spec = derivation.spec.model, derivation.spec
    if len(cell.states) != 1 or len(cell.equations) != 2 or cell.activation is None:
        return None
    state = cell.states[0].key
    if cell.equations[1].target != state or cell.readout != state:
        return None
    first, second = derivation.step_form.forward[:2]
    hidden_fn = functions.ACTIVATIONS[spec.hidden].function
    applies = isinstance(second.expr, ElementwiseApplyFunction) and second.expr.expr == first.target
    if not applies or second.expr.function != hidden_fn:
        return None
    meta = derivation.step_form.symbols.meta
    found = {
        "pre_activation": cell.role_of(cell.equations[0].target),
        "hidden": cell.role_of(state),
    }
    biases = [p.key for p in cell.parameters if p.kind == "bias"]
    if len(biases) > 1:
        return None
    if biases:
        found["hidden_bias"] = cell.role_of(biases[0])
    terms = first.expr.args if isinstance(first.expr, sp.MatAdd) else (first.expr,)
    for term in terms:
        atoms = [meta.get(a, ("", None)) for a in _atoms(term)]
        series = [role for role, step in atoms if step is not None]
        params = [role for role, step in atoms if step is None and role]
        if not isinstance(term, sp.MatMul) or len(params) != 1 or len(series) > 1:
            return None
        if series == ["input"]:
            found["input_weight"] = params[0]
        elif series == [found["hidden"]]:
            found["recurrent_weight"] = params[0]
        elif series or params[0] != found.get("hidden_bias"):
            return None
    found.setdefault("hidden_bias", "hidden_bias")  # no bias at all: nothing is looked up
    if "input_weight" not in found or "recurrent_weight" not in found:
        return None
    return found


# ---------------------------------------------------------------------------- the writer
class _Writer:
    """Prints every formula of one derivation into the templates' context."""

    #: The widest row, in units of about one math letter (see ``tex_width``).
    row_width = ROW_WIDTH

    def __init__(self, derivation: Derivation, name: str | None, checks: Checks | None) -> None:
        self.d = derivation
        self.spec = derivation.spec
        self.graph = derivation.graph
        notation: Notation = derivation.notation
        if self.graph.steps[-1] >= 10:  # H_{11} would read as layer 1, step 11: H_{1,1}
            notation = dataclasses.replace(notation, comma_steps=True)
        self.notation = notation
        self.form = derivation.step_form
        self.name = name
        self.checks = checks
        self.operator = self.notation.partials == "operator"
        self.gen = Symbols(self.spec, self.notation)  # symbols made here (generic j, k, ...)
        metas = [self.graph.symbols.meta, self.form.symbols.meta]
        roles: dict[Any, tuple[str, Any]] = {}
        for meta in metas:
            roles.update(meta)
        #: the cell's roles of the teaching sections' quantities (Elman's names as keys)
        self.k = teaching_roles(derivation) or {role: role for role in TEACHING_ROLES}
        self.names = symbol_names(self.notation, metas, self.k["pre_activation"])
        self.roles = roles
        self.classes = term_classes(self.spec.model)
        self.printer = self._make_printer()
        self._aux = 0
        self.t = self.form.t
        self.first = self.graph.steps[0]
        self.last = self.graph.steps[-1]
        #: the generic last step: T (t0 = 1) or T - 1 (t0 = 0)
        self.T_last = T_SYMBOL + self.notation.t0 - 1

    def _param_roles(self) -> tuple[str, ...]:
        """The parameters' roles in the order the documents list them (Elman's PARAM_ROLES)."""
        return tuple(self.k.get(role, role) for role in PARAM_ROLES)

    # -- printing ---------------------------------------------------------------------
    def _make_printer(self) -> BPTTLatexPrinter:
        return BPTTLatexPrinter(
            {
                "names": self.names,
                "roles": self.roles,
                "recurrent_first": self.notation.recurrent_first,
                "classes": self.classes,
            }
        )

    def tex(self, expr: Any) -> str:
        return str(self.printer.doprint(expr))

    def sym(self, role: str, step: Any) -> Any:
        """A series symbol at ``step`` (made here, named and given its role)."""
        symbol = self.gen.series(role, step)
        self._register(symbol, self.gen.meta[symbol])
        return symbol

    def example_sym(self, role: str, step: Any) -> Any:
        """A series symbol at ``step`` for one example: one column (or row) of it."""
        rows, cols = self.graph.symbols.series_shape(role)
        shape = (rows, 1) if self.notation.layout == "column" else (1, cols)
        symbol = sp.MatrixSymbol(self.gen.series(role, step).name + "_example", *shape)
        self._register(symbol, (self.notation.name_of(role).role, step))
        return symbol

    def _register(self, symbol: Any, meta: tuple[str, Any]) -> None:
        self.roles[symbol] = meta
        found = symbol_names(self.notation, [{symbol: meta}], self.k["pre_activation"])
        self.names.update(found)
        self.printer = self._make_printer()

    def named(self, symbol: Any) -> TeXName:
        return self.printer.name(symbol)

    def partial(self, num: TeXName | str, den: TeXName | str) -> str:
        """∂num/∂den in the notation's style (fraction, or operator for 002)."""
        num_tex = num.tex() if isinstance(num, TeXName) else num
        den_tex = den.tex() if isinstance(den, TeXName) else den
        if self.operator:
            return rf"\frac{{\partial}}{{\partial {den_tex}}} {num_tex}"
        return rf"\frac{{\partial {num_tex}}}{{\partial {den_tex}}}"

    def step_tex(self, step: Any) -> str:
        return sp.latex(step) if isinstance(step, sp.Basic) else str(step)

    # -- rows -------------------------------------------------------------------------
    def rows(self, lhs: str, expr: Any, rel: str = "=", via: str = "") -> list[str]:
        """``lhs = [via =] expr`` as align rows (split, or with named parts, when too wide)."""
        if via:
            lhs_rows = self._fit(lhs, expr, rel, via)
            return lhs_rows
        return self._fit(lhs, expr, rel)

    def _fit(self, lhs: str, expr: Any, rel: str, via: str = "") -> list[str]:
        text = self.tex(expr)
        budget = self.row_width - tex_width(lhs) - 2.0
        if via and tex_width(text) + tex_width(via) + 2.0 <= budget:
            return [rf"{lhs} &{rel} {via} = {text}"]
        if via:
            return [rf"{lhs} &{rel} {via}", *self._fit("", expr, "=")]
        if tex_width(text) <= budget:
            return [rf"{lhs} &{rel} {text}"]
        if isinstance(expr, (sp.MatAdd, sp.Add)):
            return self._split_terms(lhs, expr, rel)
        return self._name_parts(lhs, expr, rel)

    def _split_terms(self, lhs: str, expr: Any, rel: str) -> list[str]:
        return self.terms_rows(lhs, self.printer.signed_terms(expr), rel)

    def _step_of(self, term: Any) -> float:
        """The earliest step a term reads (the initial state before the first step)."""
        steps = []
        for atom in _atoms(term):
            role, step = self.roles.get(atom, ("", None))
            if role == "initial_state":
                steps.append(self.first - 1)
            elif isinstance(step, int):
                steps.append(step)
        return min(steps, default=math.inf)

    def long_sum_rows(self, lhs: str, expr: Any) -> list[str]:
        """A sum with one term per step, in step order: the middle left out for long ones."""
        args = list(expr.args) if isinstance(expr, sp.MatAdd) else [expr]
        if all(self._step_of(a) < math.inf for a in args):
            ordered = sorted(args, key=self._step_of)  # stable: the printer's order otherwise
            terms = [self.printer.signed_term(a) for a in ordered]
        else:
            terms = self.printer.signed_terms(expr)
        if len(terms) > UNROLL_LIMIT:
            terms = [*terms[:3], ("+", r"\dots"), *terms[-2:]]
        return self.terms_rows(lhs, terms, "=")

    def terms_rows(self, lhs: str, terms: list[tuple[str, str]], rel: str) -> list[str]:
        """``lhs = t1 ± t2 ...`` on as many rows as the width needs."""
        out: list[str] = []
        line = ""
        budget = self.row_width - tex_width(lhs) - 2.0
        for sign, term in terms:
            piece = term if not line and not out and sign == "+" else f"{sign} {term}"
            if not line and not out and sign == "-":
                piece = f"- {term}"
            candidate = f"{line} {piece}".strip()
            if line and tex_width(candidate) > budget:
                out.append(line)
                line = piece if piece.startswith(("+", "-")) else f"+ {piece}"
            else:
                line = candidate
        out.append(line)
        rows = [rf"{lhs} &{rel} {out[0]}"]
        rows += [rf"&\quad {rest}" for rest in out[1:]]
        return rows

    def _name_parts(self, lhs: str, expr: Any, rel: str) -> list[str]:
        """Give the widest argument of ``expr`` a short name, define it first, repeat (a
        name, a MatrixSymbol though no SymPy atom, is not named again: a factor no name
        narrows, such as a wide constant, stays on its row)."""
        args = [
            a
            for a in expr.args
            if mexpr.is_matrix(a) and not a.is_Atom and not isinstance(a, sp.MatrixSymbol)
        ]
        if not args:
            return [rf"{lhs} &{rel} {self.tex(expr)}"]
        widest = max(args, key=lambda a: tex_width(self.tex(a)))
        self._aux += 1
        aux = sp.MatrixSymbol(f"A_{self._aux}", *widest.shape)
        self.names[aux] = TeXName(rf"A_{{{self._aux}}}")
        self.printer = self._make_printer()
        before = self._fit(self.tex(aux), widest, "=")
        return before + self._fit(lhs, expr.xreplace({widest: aux}), rel)

    def product_rows(
        self,
        lhs: str,
        factors: Sequence[str],
        rel: str = "=",
        lead: str = "",
        column: float | None = None,
    ) -> list[str]:
        """``lhs = f1 f2 ...`` broken into rows when too wide.

        ``lead`` replaces ``lhs &=`` on the first row (a continuation such as
        ``&\\quad +``); ``column`` is the width of the block's left column
        (its widest left-hand side), which every row is indented by.
        """
        indent = tex_width(lhs) if column is None else column
        lines = _pack(list(factors), self.row_width - indent - 4.0 - tex_width(lead))
        first = f"{lead} {lines[0]}" if lead else rf"{lhs} &{rel} {lines[0]}"
        return [first] + [rf"&\qquad {rest}" for rest in lines[1:]]

    # -- context ----------------------------------------------------------------------
    def context(self) -> dict[str, Any]:
        context: dict[str, Any] = {
            "layout": "teaching",
            "meta": self.meta(),
            "model": self.model(),
            "forward": self.forward(),
            "loss": self.loss(),
            "chain": self.chain(),
            "local": self.local(),
            "bptt": self.bptt(),
            "updates": self.updates(),
            "verified": self.verified(),
        }
        context["summary"] = self.summary(context["bptt"])  # printed last: names stay as they were
        context["bptt"]["origin"] = self.origin()
        context["example"] = self.example()
        return context

    # -- header -----------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        from .. import __version__

        spec, notation = self.spec, self.notation
        words = {
            "many_to_many": "many-to-many (an output and a loss at every step)",
            "many_to_one": "many-to-one (an output and a loss at the last step only)",
        }
        cell = spec.model
        items = [
            ("cell", cell.title),
            ("time steps", f"T = {spec.steps}"),
            *([("hidden activation", spec.hidden)] if cell.activation else []),
            ("output layer", spec.output),
            ("loss", spec.loss.replace("_", " ")),
            ("mode", words[spec.mode]),
            ("over time", self._time_reduction_words()),
            ("over the batch", "sum" if spec.batch_reduction == "sum" else "mean (1/m)"),
            ("biases", "yes" if spec.bias else "no"),
            ("initial state", self._initial_words()),
        ]
        return {
            "name": self.name,
            "cell": cell.title,
            "notation": notation.name,
            # the seed file is named for the presets, the seeds' own models, only
            "seed": notation.seed if preset_of(spec) is not None else None,
            "layout": notation.layout,
            "hash": spec.hash(),
            "version": __version__,
            "sympy": sp.__version__,
            "regenerate": regenerate_command(
                spec, check=self.checks.user_file if self.checks is not None else ""
            ),
            "marker": MARKER,
            "items": items,
            "steps": spec.steps,
            "many_to_one": spec.mode == "many_to_one",
            # the symbols the prose names, printed like the formulas
            "T": self.tex(T_SYMBOL),
            "t": self.tex(self.t),
            "T_is": self.tex(sp.Eq(T_SYMBOL, spec.steps, evaluate=False)),
            "steps_word": "step" if spec.steps == 1 else "steps",
            "copy_mark": f"({self.tex(self.t)})",
            # bold 1 and 0 stand for several shapes: said once, next to the sizes
            "ones": self.tex(sp.OneMatrix(sp.Symbol("p"), sp.Symbol("q"))),
            "zeros": self.tex(sp.ZeroMatrix(sp.Symbol("p"), sp.Symbol("q"))),
        }

    def _time_reduction_words(self) -> str:
        """The table's "over time": a mean divides by the number of steps with a loss."""
        if self.spec.time_reduction == "sum":
            return "sum"
        if self.spec.mode == "many_to_one":  # one step has a loss: the mean divides by 1
            return "mean over the one step with a loss (no factor)"
        return f"mean (1/{T_SYMBOL})"

    # -- 1. the model -----------------------------------------------------------------
    def _function_symbol(self, fn_latex: str, arg: Any) -> Any:
        """``f(arg)`` with the notation's name of the function (f, g_1, ...)."""
        z = functions.z
        undefined = sp.Function(fn_latex)
        return functions.Apply(sp.Lambda(z, undefined(z)), arg)

    def _generic(self, kind: str, last: bool = True) -> Any:
        """The generic-step assignment of ``kind`` (from the step form)."""
        form = self.form
        pool = form.forward
        if form.last_forward is not None and last:
            pool = form.last_forward
        for assignment in pool:
            if assignment.kind == kind:
                return assignment
        raise KeyError(kind)

    def model(self) -> dict[str, Any]:
        notation, spec = self.notation, self.spec
        z = self._generic(self.k["pre_activation"])
        h = self._generic(self.k["hidden"])
        o = self._generic("output_pre_activation")
        y_hat = self._generic("output")
        loss = self._generic("loss")
        target = loss.expr.target
        f = notation.hidden_fn
        g = notation.output_fn
        ell = rf"\ell({self.tex(y_hat.target)}, {self.tex(target)})"
        equations = []
        equations += self.rows(self.tex(z.target), z.expr)
        equations.append(
            rf"{self.tex(h.target)} &= {self.tex(self._function_symbol(f, z.target))}"
            rf" = {self.tex(h.expr)}"
        )
        equations += self.rows(self.tex(o.target), o.expr)
        equations.append(
            rf"{self.tex(y_hat.target)} &= {self.tex(self._function_symbol(g, o.target))}"
            rf" = {self.tex(y_hat.expr)}"
        )
        equations += self.rows(self.tex(loss.target), loss.expr, via=ell)
        # the seed's compact form: h_t = f(W_xh x_t + W_hh h_{t-1} + b_h)
        seed_form = rf"{self.tex(h.target)} = {self._fn_name(f)}({self._seed_sum(z.expr)})"
        out_form = rf"{self.tex(y_hat.target)} = {self._fn_name(g)}({self._seed_sum(o.expr)})"
        return {
            "equations": equations,
            "seed_form": [seed_form, out_form],
            "table": self.symbol_table(),
            "sizes": self.sizes(),
            "functions": self.function_defs(),
            "broadcast": self.broadcast(z.expr, o.expr),
            "t0": notation.t0,
            "t_range": self.t_range(),
            "hidden_fn": f,
            "output_fn": g,
            "hidden": spec.hidden,
            "output": spec.output,
            "loss": spec.loss.replace("_", " "),
            "recurrent_first": notation.recurrent_first,
            "notes": list(notation.notes),
            "seed": notation.seed,
            "initial": initial_name(notation, self.k["hidden"]).tex(),
            "initial_zero": self.initial_zero,
            "layout": notation.layout,
        }

    def _fn_name(self, fn_latex: str) -> str:
        return self.tex(sp.Symbol(fn_latex))

    def _seed_sum(self, expr: Any) -> str:
        """The affine sum as the seeds write it: the bias without its ones vector."""
        terms = list(expr.args) if isinstance(expr, sp.MatAdd) else [expr]
        plain = []
        for term in terms:
            biases = (self.k["hidden_bias"], "output_bias")
            bias = [a for a in _atoms(term) if self.roles.get(a, ("",))[0] in biases]
            plain.append(bias[0] if bias else term)
        return self.printer.sum_of(plain)

    def t_range(self) -> str:
        t0 = self.notation.t0
        return rf"t = {t0}, \dots, {self.step_tex(self.T_last)}"

    def symbol_table(self) -> list[dict[str, Any]]:
        symbols, notation, t = self.graph.symbols, self.notation, self.t
        rows: list[dict[str, Any]] = []

        def shape_tex(shape: tuple[Any, Any]) -> tuple[str, str]:
            rows_, cols = shape
            kind = "vector" if cols == 1 else "matrix"
            return rf"{self.tex(rows_)} \times {self.tex(cols)}", kind

        k = self.k
        for role in ("input", k["pre_activation"], k["hidden"], "output_pre_activation", "output"):
            series = notation.series_of(role)
            shape, kind = shape_tex(symbols.series_shape(role))
            rows.append(
                {
                    "symbol": series_name(notation, role, t).tex(),
                    "shape": shape,
                    "kind": kind,
                    "meaning": prose(series.description),
                }
            )
        target = notation.series_of("target")
        shape, kind = shape_tex(symbols.series_shape("target"))
        rows.append(
            {
                "symbol": series_name(notation, "target", t).tex(),
                "shape": shape,
                "kind": kind,
                "meaning": prose(target.description),
            }
        )
        for role in self._param_roles():
            if symbols.param(role) is None:
                continue
            param = notation.param(role)
            shape, kind = shape_tex(symbols.param_shape(role))
            rows.append(
                {
                    "symbol": param_name(notation, role).tex(),
                    "shape": shape,
                    "kind": kind,
                    "meaning": prose(param.description),
                }
            )
        shape, kind = shape_tex(symbols.series_shape(self.k["hidden"]))
        rows.append(
            {
                "symbol": initial_name(notation, self.k["hidden"]).tex(),
                "shape": shape,
                "kind": kind,
                "meaning": prose(
                    "initial hidden state" + (" (zero)" if self.initial_zero else " (an input)")
                ),
            }
        )
        shape, kind = shape_tex(symbols.series_shape(self.k["pre_activation"]))
        rows.append(
            {
                "symbol": delta_name(notation, t, self.k["pre_activation"]).tex(),
                "shape": shape,
                "kind": kind,
                "meaning": prose("error at the hidden pre-activation"),
            }
        )
        rows.append(
            {
                "symbol": loss_name(notation, t).tex(),
                "shape": "1 \\times 1",
                "kind": "scalar",
                "meaning": [("loss of step ", False), ("t", True)],
            }
        )
        rows.append(
            {
                "symbol": loss_name(notation).tex(),
                "shape": "1 \\times 1",
                "kind": "scalar",
                "meaning": prose("total loss"),
            }
        )
        return rows

    def sizes(self) -> list[dict[str, str]]:
        meanings = {
            "n_in": "number of input features",
            "n_hidden": "number of hidden units",
            "n_out": "number of output units",
            "batch": "number of examples in a batch",
        }
        out = []
        for key, size in self.graph.symbols.sizes.items():
            value = getattr(self.spec, key)
            symbol = {"n_in": "n_0", "n_hidden": "n_1", "n_out": "n_2", "batch": "m"}[key]
            out.append(
                {
                    "symbol": self.tex(sp.Symbol(symbol)),
                    "meaning": meanings[key],
                    "value": "" if value is None else self.tex(size),
                }
            )
        return out

    def function_defs(self) -> dict[str, Any]:
        notation, spec = self.notation, self.spec
        z = functions.z
        zt = self.tex(z)
        defs: dict[str, Any] = {}
        if notation.hidden_fn:  # the cell's free activation, the spec's hidden one
            hidden = functions.ACTIVATIONS[spec.hidden]
            f = self._fn_name(notation.hidden_fn)
            defs["hidden"] = rf"{f}({zt}) = {self.tex(hidden.definition)}"
            defs["hidden_latex"] = rf"{f} = {self.printer.activation_name(hidden)}"
        g = self._fn_name(notation.output_fn)
        output = functions.OUTPUTS[spec.output]
        o_base = self.notation.series_of("output_pre_activation").base
        y_base = self.notation.series_of("output").base
        t_base = self.notation.series_of("target").base
        if isinstance(output, functions.SoftmaxOutput):
            definition = output.definition
            i, k, n = sp.symbols("i k n", integer=True, positive=True)
            o = sp.IndexedBase("o")
            oi = sp.Symbol("o_i_entry")
            ok = sp.Symbol("o_k_entry")
            printer = self.printer.with_names(
                {oi: TeXName(TeXName(o_base).entry("i")), ok: TeXName(TeXName(o_base).entry("k"))}
            )
            body = definition.xreplace({o[i]: oi, o[k]: ok, n: self.graph.symbols.sizes["n_out"]})
            defs["output"] = (
                rf"{g}({o_base})_{{i}} = {TeXName(y_base).entry('i')} = {printer.doprint(body)}"
            )
        else:
            defs["output"] = rf"{g}({zt}) = {self.tex(output.definition)}"
        loss = functions.LOSSES[spec.loss]
        a_ph, y_ph = sp.Dummy("a"), sp.Dummy("y")
        printer = self.printer.with_names({a_ph: TeXName(y_base), y_ph: TeXName(t_base)})
        body = loss.definition.xreplace({functions.a: a_ph, functions.y: y_ph})
        defs["loss"] = rf"\ell({y_base}, {t_base}) = {printer.doprint(body)}"
        defs["distribution"] = loss.distribution
        defs["pred_base"] = y_base
        defs["target_base"] = t_base
        return defs

    def broadcast(self, z_expr: Any, o_expr: Any) -> dict[str, Any]:
        if not self.spec.bias:
            return {"bias": False}
        symbols = self.gen
        hidden_bias = symbols.param(self.k["hidden_bias"])
        terms = list(z_expr.args) if isinstance(z_expr, sp.MatAdd) else [z_expr]
        rest = [term for term in terms if hidden_bias not in _atoms(term)]
        bias_term = next(term for term in terms if hidden_bias in _atoms(term))
        batch = self.graph.symbols.sizes["batch"]
        return {
            "bias": True,
            "hidden_bias": param_name(self.notation, self.k["hidden_bias"]).tex(),
            "output_bias": param_name(self.notation, "output_bias").tex(),
            "bias_term": self.tex(bias_term),
            "rest": self.tex(mexpr.add(*rest)),
            "ones": self.tex(sp.OneMatrix(batch, 1)),
            "m": self.tex(batch),
            "single": batch == 1,
            "single_m": self.tex(sp.Eq(sp.Symbol("m"), batch, evaluate=False)),
            "row": self.notation.layout == "row",
        }

    # -- 2. forward pass --------------------------------------------------------------
    def _elide(self, steps: Sequence[int]) -> list[int | None]:
        """The steps to list, ``None`` where some are left out."""
        if len(steps) <= UNROLL_LIMIT:
            return list(steps)
        return [*steps[:3], None, *steps[-2:]]

    def _forward_by_step(self) -> dict[int, list[Any]]:
        """The forward assignments of each step (the loss terms left out), in order."""
        by_step: dict[int, list[Any]] = {}
        for assignment in self.graph.assignments:
            if assignment.step is not None and assignment.kind != "loss":
                by_step.setdefault(assignment.step, []).append(assignment)
        return by_step

    def forward(self) -> dict[str, Any]:
        graph, spec = self.graph, self.spec
        by_step = self._forward_by_step()
        groups: list[dict[str, Any]] = []
        for step in self._elide(graph.steps):
            if step is None:
                groups.append({"step": None, "rows": [r"&\;\;\vdots"]})
                continue
            rows: list[str] = []
            for assignment in by_step[step]:
                if assignment.kind == self.k["pre_activation"] and step == self.first:
                    rows += self._first_step(assignment)
                else:
                    rows += self.rows(self.tex(assignment.target), assignment.expr)
            groups.append({"step": step, "rows": rows})
        return {
            "groups": groups,
            "figure": figure.picture(self),
            "mermaid": figure.mermaid(self),
            "initial": initial_name(self.notation, self.k["hidden"]).tex(),
            "initial_zero": self.initial_zero,
            **self._initial_parts(),
            "first": self.first,
            "last": self.last,
            "elided": len(graph.steps) > UNROLL_LIMIT,
            "many_to_one": spec.mode == "many_to_one",
        }

    def _first_step(self, assignment: Any) -> list[str]:
        """z at the first step, written from the generic cell with the initial state."""
        generic = self._generic(self.k["pre_activation"], last=len(self.graph.steps) == 1)
        mapping = self._instantiate_map(self.first)
        lhs = self.tex(assignment.target)
        general = generic.expr.xreplace(mapping)
        rows = self.rows(lhs, general)
        if self.initial_zero:
            rows += self.rows("", assignment.expr)
        return rows

    def _instantiate_map(self, step: int) -> dict[Any, Any]:
        """Generic symbols of the step form -> symbols at ``step`` (the initial state by name)."""
        mapping: dict[Any, Any] = {}
        for generic, (role, at) in self.form.symbols.meta.items():
            if not isinstance(at, sp.Basic) or not at.free_symbols:
                continue
            k = int(at.subs(self.t, step))
            if role == self.k["hidden"] and k < self.first:
                initial = sp.MatrixSymbol(self.notation.initial_ascii, *generic.shape)
                self._register(initial, ("initial_state", None))
                mapping[generic] = initial
            elif role in ("input", self.k["hidden"], self.k["pre_activation"], "output", "target"):
                mapping[generic] = self.sym(role, k)
        return mapping

    # -- 3. loss ----------------------------------------------------------------------
    def loss(self) -> dict[str, Any]:
        graph, notation, spec = self.graph, self.notation, self.spec
        loss_rows: list[str] = []
        losses = [a for a in graph.assignments if a.kind == "loss"]
        loss_steps = [a.step for a in losses]
        shown = self._elide(loss_steps)
        by_step = {a.step: a for a in losses}
        for step in shown:
            if step is None:
                loss_rows.append(r"&\;\;\vdots")
                continue
            a = by_step[step]
            pred, target = a.expr.pred, a.expr.target
            via = rf"\ell({self.tex(pred)}, {self.tex(target)})"
            loss_rows += self.rows(self.tex(a.target), a.expr, via=via)
        total = graph.assignments[-1]
        loss_terms = _elide([loss_name(notation, step).tex() for step in loss_steps])
        total_rows = self._sum_rows(
            self.tex(total.target),
            ""
            if self.graph.symbols.loss_scale(len(loss_steps)) == 1
            else self.tex(self.graph.symbols.loss_scale(len(loss_steps))),
            loss_terms,
        )
        count = T_SYMBOL if spec.mode == "many_to_many" else sp.Integer(1)
        scale = self.graph.symbols.loss_scale(count)
        general = self._scaled_sum(scale)
        mean_time_form = self._scaled_sum(1 / T_SYMBOL, batch=False)
        without = _elide([str(s) for s in graph.steps if s not in loss_steps], r"\dots")
        return {
            "rows": loss_rows,
            "total_rows": total_rows,
            "general": general,
            "generic_rows": self.rows(
                loss_name(notation, self.t).tex(),
                self._generic("loss").expr,
                via=rf"\ell({series_name(notation, 'output', self.t).tex()}, "
                rf"{series_name(notation, 'target', self.t).tex()})",
            ),
            "mean_time": spec.time_reduction == "mean",
            "mean_time_form": mean_time_form,
            "mean_batch": spec.batch_reduction == "mean",
            "many_to_one": spec.mode == "many_to_one",
            "without": [
                r"\dots" if s == r"\dots" else loss_name(notation, int(s)).tex() for s in without
            ],
            "without_steps": without,
            "last": loss_name(notation, self.last).tex(),
            "last_step": self.last,
            "total": loss_name(notation).tex(),
            "m": self.tex(self.graph.symbols.sizes["batch"]),
            "single": self.graph.symbols.sizes["batch"] == 1,
        }

    def _scaled_sum(self, scale: Any, batch: bool = True) -> str:
        """L = c Σ_t L_t for the generic T (just the last step for many-to-one).

        ``batch=False`` sums over the steps of the generic T whatever the mode.
        """
        notation = self.notation
        lhs = self.tex(self.graph.assignments[-1].target)
        coeff = "" if scale == 1 else self.tex(scale) + " "
        if self.spec.mode == "many_to_one" and batch:
            return rf"{lhs} = {coeff}{loss_name(notation, self.T_last).tex()}"
        t = self.t
        return (
            rf"{lhs} = {coeff}\sum_{{{self.tex(t)}={notation.t0}}}^{{{self.tex(self.T_last)}}} "
            rf"{loss_name(notation, t).tex()}"
        )

    # -- 4. chain rule ----------------------------------------------------------------
    def _dependencies(self) -> dict[Any, list[Any]]:
        """target -> the symbols its right-hand side reads (a loss reads its prediction)."""
        deps: dict[Any, list[Any]] = {}
        for assignment in self.graph.assignments:
            if isinstance(assignment.expr, mexpr.OutputLoss):
                deps[assignment.target] = [assignment.expr.pred]
            else:
                deps[assignment.target] = _atoms(assignment.expr)
        return deps

    def _paths(self, deps: dict[Any, list[Any]], start: Any, leaf: Any) -> list[list[Any]]:
        """Every path from ``start`` to ``leaf`` (iterative), projected on the seeds' nodes."""
        keep = {"loss", "output", self.k["hidden"], "initial_state", *self._param_roles()}
        if self.notation.chain_through_logits:
            keep.add("output_pre_activation")
        found: list[list[Any]] = []
        stack: list[tuple[Any, list[Any]]] = [(start, [start])]
        while stack:
            node, path = stack.pop()
            if node == leaf:
                projected = [n for n in path if self.roles.get(n, ("",))[0] in keep]
                if projected not in found:
                    found.append(projected)
                continue
            for child in reversed(deps.get(node, [])):
                if child in deps or child == leaf:
                    stack.append((child, [*path, child]))
        found.sort(key=len)
        return found

    def _factor(self, upper: Any, lower: Any) -> str:
        return self.partial(self.named(upper), self.named(lower))

    def chain(self) -> dict[str, Any]:
        deps = self._dependencies()
        graph = self.graph
        losses = [a for a in graph.assignments if a.kind == "loss"]
        leaves: list[tuple[str, Any, TeXName]] = []
        cell = self.spec.model
        if self.notation.parameter_order:  # the seed's own order
            order = [cell.role_of(key) for key in self.notation.parameter_order]
        else:
            order = [self.k.get(role, role) for role in _DEFAULT_CHAIN_ORDER]
        for role in order:
            symbol = graph.symbols.param(role)
            if symbol is not None:
                leaves.append((role, symbol, param_name(self.notation, role)))
        if not self.initial_zero:
            leaves.append(
                ("initial_state", graph.initial, initial_name(self.notation, self.k["hidden"]))
            )
        count = T_SYMBOL if self.spec.mode == "many_to_many" else sp.Integer(1)
        scale = self.graph.symbols.loss_scale(count)
        concrete_scale = self.graph.symbols.loss_scale(len(losses))
        # a long sequence: the first two steps and the last, whose long chain shows the
        # product of step Jacobians that vanishes or explodes
        shown = losses if len(losses) <= CHAIN_LIMIT else [*losses[:2], losses[-1]]
        params: list[dict[str, Any]] = []
        for role, symbol, name in leaves:
            per_step = []
            for assignment in shown:
                paths = self._paths(deps, assignment.target, symbol)
                per_step.append((assignment.step, assignment.target, paths))
            targets = [assignment.target for assignment in losses]
            params.append(
                self._chain_param(role, symbol, name, per_step, targets, scale, concrete_scale)
            )
        # the first parameter reached through the recurrence is expanded term by term;
        # the others refer to it and show their chains grouped only
        first = next((p for p in params if p["recurrent"] and not p["zero"]), None)
        for index, param in enumerate(params, start=1):
            param["expand"] = param is first or first is None
            if first is not None:
                param["expanded_as"] = first["name"]
                param["expanded_index"] = params.index(first) + 1
            param["index"] = index
        return {
            "params": params,
            "total": loss_name(self.notation).tex(),
            "operator": self.operator,
            # how the document writes a partial derivative, on two placeholders A and B
            "example": {
                "partial": self.partial(TeXName("A"), TeXName("B")),
                "num": TeXName("A").tex(),
                "den": TeXName("B").tex(),
            },
            "limit": CHAIN_LIMIT,
            "k": self.tex(sp.Symbol("k", integer=True)),
            "elided": len(losses) > CHAIN_LIMIT,
        }

    def _chain_param(
        self,
        role: str,
        symbol: Any,
        name: TeXName,
        per_step: list[tuple[int, Any, list[list[Any]]]],
        targets: list[Any],
        scale: Any,
        concrete_scale: Any,
    ) -> dict[str, Any]:
        notation = self.notation
        total = loss_name(notation)
        recurrent = self._through_hidden(role, symbol)
        # the sum over the loss steps, generic and for the chosen T
        coeff = "" if scale == 1 else self.tex(scale) + " "
        t = self.t
        if self.spec.mode == "many_to_one":
            over_t = rf"{coeff}{self.partial(loss_name(notation, self.T_last), name)}"
        else:
            over_t = (
                rf"{coeff}\sum_{{{self.tex(t)}={notation.t0}}}^{{{self.tex(self.T_last)}}} "
                rf"{self.partial(loss_name(notation, t), name)}"
            )
        concrete_terms = _elide([self.partial(self.named(target), name) for target in targets])
        concrete_coeff = "" if concrete_scale == 1 else self.tex(concrete_scale)
        sum_rows = self._sum_rows(self.partial(total, name), concrete_coeff, concrete_terms)
        general = self._general(role, symbol, name, per_step, recurrent)
        steps = []
        for step, target, paths in per_step:
            steps.append(self._chain_step(step, target, name, paths, recurrent))
        missing = self._not_direct(symbol, name, role)
        ascii_name = (
            self.notation.initial_ascii
            if role == "initial_state"
            else self.notation.param(role).ascii
        )
        gradient = self.d.gradients[ascii_name]
        zero = mexpr.is_zero(gradient)
        return {
            "role": role,
            "name": name.tex(),
            "ascii": ascii_name,
            "recurrent": recurrent,
            # no path leads from a loss to the parameter at this T (W_hh at T = 1, h_0 = 0)
            "zero": zero,
            "zero_rows": self.rows(self.partial(total, name), gradient) if zero else [],
            "over_t": rf"{self.partial(total, name)} &= {over_t}",
            "sum_rows": sum_rows,
            "general": general,
            "steps": steps,
            "all_rows": [row for step in steps for row in step["rows"]],
            "missing": missing,
            "description": prose(self._param_description(role)),
        }

    def _param_description(self, role: str) -> str:
        if role == "initial_state":
            return "initial state"
        return self.notation.param(role).description

    def _sum_rows(self, lhs: str, coeff: str, terms: list[str]) -> list[str]:
        body_terms = terms
        if coeff and len(terms) > 1:
            inner = " + ".join(body_terms)
            candidate = rf"{coeff} \left({inner}\right)"
        elif coeff:
            candidate = rf"{coeff} {body_terms[0]}"
        else:
            candidate = " + ".join(body_terms)
        if tex_width(candidate) + tex_width(lhs) + 2 <= self.row_width:
            return [rf"{lhs} &= {candidate}"]
        rows = [rf"{lhs} &= {coeff} \biggl({body_terms[0]}" if coeff else rf"{lhs} &= {terms[0]}"]
        for term in body_terms[1:-1]:
            rows.append(rf"&\qquad + {term}")
        rows.append(rf"&\qquad + {body_terms[-1]}" + (r" \biggr)" if coeff else ""))
        return rows

    def _through_hidden(self, role: str, symbol: Any) -> bool:
        """Whether ``symbol`` reaches the loss through the hidden states, for any T.

        Read from the step form: the generic pre-activation reads it (a weight or
        bias of the recurrence), or it is the initial state.
        """
        if role == "initial_state":
            return True
        return symbol in _atoms(self._generic(self.k["pre_activation"], last=False).expr)

    def _reads_at_first_step(self, symbol: Any) -> bool:
        """Whether the first step's pre-activation reads ``symbol`` (not W h_0 with h_0 = 0)."""
        return any(
            a.kind == self.k["pre_activation"] and a.step == self.first and symbol in _atoms(a.expr)
            for a in self.graph.assignments
        )

    def _general(
        self,
        role: str,
        symbol: Any,
        name: TeXName,
        per_step: list[tuple[int, Any, list[list[Any]]]],
        recurrent: bool,
    ) -> str:
        """∂L_t/∂P for every t and T, its shape read off the graph and the step form.

        The steps k whose hidden state reads the parameter directly are the
        same for every T: all of them (a weight or bias the generic step reads),
        all but the first (the recurrent weight when the initial state is zero:
        its first term vanishes), or the first alone (the initial state).  The
        sum over k is empty where no k is at most t (the gradient is zero there).
        """
        notation = self.notation
        t = self.T_last if self.spec.mode == "many_to_one" else self.t
        k, j = sp.Symbol("k", integer=True), sp.Symbol("j", integer=True)
        lhs = self.partial(loss_name(notation, t), name)

        def generic(node_role: str, step: Any) -> TeXName:
            if node_role == "loss":
                return loss_name(notation, step)
            return series_name(notation, node_role, step)

        step, target, paths = per_step[0]
        if not recurrent:
            if not paths:
                return rf"{lhs} &= 0"
            nodes = [*[generic(self.roles[n][0], t) for n in paths[0][:-1]], name]
            factors = [self.partial(a, b) for a, b in pairwise(nodes)]
            return rf"{lhs} &= " + " ".join(factors)
        hidden = self.k["hidden"]
        # the nodes from the loss of step t down to the hidden state of step t
        deps = self._dependencies()
        (to_hidden, *_) = self._paths(deps, target, self.sym(hidden, step))
        head = [*[generic(self.roles[n][0], t) for n in to_hidden[:-1]]]
        head.append(series_name(notation, hidden, t))
        factors = [self.partial(a, b) for a, b in pairwise(head)]
        t0 = sp.Integer(notation.t0)
        single_k = role == "initial_state"
        k_low = t0 if single_k or self._reads_at_first_step(symbol) else t0 + 1
        k_sym = k_low if single_k else k
        step_jacobian = self.partial(
            series_name(notation, hidden, j), series_name(notation, hidden, j - 1)
        )
        prod = (
            rf"\left(\prod_{{{self.tex(j)}={self.tex(k_sym + 1)}}}^{{{self.tex(t)}}} "
            rf"{step_jacobian}\right)"
        )
        direct = self.partial(series_name(notation, hidden, k_sym), name)
        body = " ".join([*factors, prod, direct])
        if single_k:
            return rf"{lhs} &= {body}"
        return rf"{lhs} &= \sum_{{{self.tex(k)}={k_low}}}^{{{self.tex(t)}}} {body}"

    def _chain_step(
        self, step: int, target: Any, name: TeXName, paths: list[list[Any]], recurrent: bool
    ) -> dict[str, Any]:
        lhs = self.partial(self.named(target), name)
        rows: list[str] = []
        products = []
        elided = len(paths) > UNROLL_LIMIT  # then the middle paths are left out
        if elided:
            paths = [*paths[:3], *paths[-1:]]
        for path in paths:
            nodes = [self.named(n) for n in path[:-1]] + [name]
            products.append([self.partial(a, b) for a, b in pairwise(nodes)])
        if not products:
            return {"step": step, "rows": [rf"{lhs} &= 0"], "notes": [], "factored": []}
        column = tex_width(lhs)
        for i, factors in enumerate(products):
            if i == 0:
                rows += self.product_rows(lhs, factors)
                continue
            if elided and i == len(products) - 1:
                rows.append(r"&\quad + \dots")
            rows += self.product_rows("", factors, lead=r"&\quad +", column=column)
        factored: list[str] = []
        if len(products) > 1:
            prefix_len = 0
            while all(
                len(p) > prefix_len + 1 and p[prefix_len] == products[0][prefix_len]
                for p in products
            ):
                prefix_len += 1
            prefix = products[0][:prefix_len]
            rests = [p[prefix_len:] for p in products]
            if elided:
                rests.insert(len(rests) - 1, [r"\dots"])
            factored = self._bracket_rows(lhs, " ".join(prefix), rests)
        notes = self._notes(paths, name)
        return {"step": step, "rows": rows, "notes": notes, "factored": factored}

    def _bracket_rows(self, lhs: str, prefix: str, rests: list[list[str]]) -> list[str]:
        """``lhs = prefix [r1 + r2 + ...]``, each rest a list of factors, packed into rows."""
        pieces = [rf"{prefix} \biggl["]
        for i, rest in enumerate(rests):
            pieces += [*(["+"] if i else []), *rest]
        pieces[-1] += r" \biggr]"
        lines = _pack(pieces, self.row_width - tex_width(lhs) - 6.0)
        return [rf"{lhs} &= {lines[0]}"] + [rf"&\qquad {line}" for line in lines[1:]]

    def _notes(self, paths: list[list[Any]], name: TeXName) -> list[dict[str, Any]]:
        """The seeds' notes ("H_{12} depends on H_{11}"), read off the paths."""
        depends: dict[Any, list[str]] = {}
        order: list[Any] = []
        for path in paths:
            hidden = [n for n in path if self.roles.get(n, ("",))[0] == self.k["hidden"]]
            for a, b in zip(hidden, [*hidden[1:], None], strict=False):
                if a not in depends:
                    depends[a] = []
                    order.append(a)
                on = name.tex() if b is None else self.named(b).tex()
                if on not in depends[a]:
                    depends[a].append(on)
        order.sort(key=lambda n: -int(self.roles[n][1]))
        notes = [{"node": self.named(n).tex(), "on": depends[n]} for n in order]
        if len(notes) > UNROLL_LIMIT:
            notes = [*notes[:3], {"node": r"\dots", "on": []}, *notes[-2:]]
        return notes

    def _not_direct(self, symbol: Any, name: TeXName, role: str) -> list[dict[str, str]]:
        """Hidden states whose pre-activation does not read the parameter (and why)."""
        k = self.k
        if role not in (
            k["input_weight"],
            k["recurrent_weight"],
            k["hidden_bias"],
            "initial_state",
        ):
            return []
        out = []
        for assignment in self.graph.assignments:
            if assignment.kind != self.k["pre_activation"]:
                continue
            if symbol in _atoms(assignment.expr):
                continue
            hidden = self.sym(self.k["hidden"], assignment.step)
            why = ""
            if role == self.k["recurrent_weight"] and self.initial_zero:
                why = "zero_initial"
            if role == "initial_state":
                why = "later"
            out.append({"node": self.named(hidden).tex(), "why": why})
        if role == "initial_state":
            return []
        return out

    # -- 5. local derivatives ---------------------------------------------------------
    def local(self) -> dict[str, Any]:
        notation, spec = self.notation, self.spec
        t = self.t
        loss_assignment = self._generic("loss")
        node = loss_assignment.expr
        pred, target, pre = node.pred, node.target, node.pre
        loss = functions.LOSSES[spec.loss]
        output = functions.OUTPUTS[spec.output]
        mapping = {functions.a: pred, functions.y: target, functions.z: pre}
        shape = pre.shape
        lt = self.named(loss_assignment.target)
        rows: list[str] = []
        # ∂L_t/∂ŷ_t from the loss definition
        d_loss = functions.lift(loss.derivative, mapping, shape)
        rows += self.rows(self.partial(lt, self.named(pred)), d_loss)
        # ∂ŷ_t/∂o_t
        g_sym = sp.MatrixSymbol("G_t", *shape)
        self.names[g_sym] = TeXName("G")
        if isinstance(output, functions.SoftmaxOutput):
            output_rule = rules.softmax_vjp(g_sym, pred, node.axis)
            output_kind = "softmax"
            output_derivative = ""
        else:
            derivative = output.derivative_of(pred, pre)
            output_rule = mexpr.hadamard(g_sym, derivative)
            output_kind = "elementwise"
            a_ph = sp.Dummy("a")
            printer = self.printer.with_names({a_ph: TeXName(notation.series_of("output").base)})
            expr, _ = output.derivative
            output_derivative = str(printer.doprint(expr.xreplace({functions.a: a_ph})))
        self._refresh()
        vjp_rows = self.rows("G", output_rule, rel=r"\mapsto")
        # the fused gradient derived by SymPy
        derived = functions.output_loss_gradient(spec.output, spec.loss)
        fused_rows: list[str] = []
        scalar = ""
        if derived.fused is not None:
            fused = functions.lift(derived.fused, mapping, shape)
            fused_rows = self.rows(
                rf"{self.partial(lt, self.named(pred))} "
                rf"{self.partial(self.named(pred), self.named(pre))} = "
                rf"{self.partial(lt, self.named(pre))}",
                fused,
            )
            y_base = notation.series_of("output").base
            t_base = notation.series_of("target").base
            pre_base = notation.series_of("output_pre_activation").base
            a_ph, y_ph, z_ph = sp.Dummy("a"), sp.Dummy("y"), sp.Dummy("z")
            printer = self.printer.with_names(
                {
                    a_ph: TeXName(TeXName(y_base).entry("i")),
                    y_ph: TeXName(TeXName(t_base).entry("i")),
                    z_ph: TeXName(TeXName(pre_base).entry("i")),
                }
            )
            body = derived.fused.xreplace({functions.a: a_ph, functions.y: y_ph, functions.z: z_ph})
            scalar = str(printer.doprint(body))
        else:
            pairs = rules.rule_for(node)(sp.Integer(1), loss_assignment.target, node)
            fused_rows = self.rows(self.partial(lt, self.named(pre)), pairs[0][1])
        adjoint_o = [a for a in self.form_backward() if a.kind == "adjoint_output_pre_activation"]
        scaled_rows = (
            self.rows(self.tex(adjoint_o[0].target), adjoint_o[0].expr) if adjoint_o else []
        )
        # ∂h/∂... : the activation's derivative
        hidden = functions.ACTIVATIONS[spec.hidden]
        j = sp.Symbol("j", integer=True)
        hidden_role, pre_role = self.k["hidden"], self.k["pre_activation"]
        # one example: a column (column layout) or a row (row layout) of the hidden state
        h_j, z_j = self.example_sym(hidden_role, j), self.example_sym(pre_role, j)
        h_prev = series_name(notation, hidden_role, j - 1)
        f_prime = hidden.derivative_of(h_j, z_j)
        # ∂h_j/∂h_{j-1}: diag(f') times the factor multiplying h_{j-1} in the pre-activation
        left, right = self._factor_of(self._generic(pre_role).expr, hidden_role, t - 1)
        diag = DiagMatrix(f_prime)
        jacobian = sp.MatMul(diag, *left) if left else sp.MatMul(*right, diag)
        jac_lhs = self.partial(self.named(h_j), h_prev)
        # ∂o_t/∂h_t: the factor multiplying h_t in the output pre-activation
        o_left, o_right = self._factor_of(
            self._generic("output_pre_activation").expr, hidden_role, t
        )
        o_factors = o_left or o_right
        o_h = o_factors[0] if len(o_factors) == 1 else sp.MatMul(*o_factors)
        a_ph = sp.Dummy("a")
        h_t_sym, z_t_sym = self.sym(hidden_role, t), self.sym(pre_role, t)
        printer = self.printer.with_names({a_ph: self.named(h_t_sym)})
        expr, written_in = hidden.derivative
        f = self._fn_name(notation.hidden_fn)
        derivative = {
            "raw": rf"{f}'({self.tex(functions.z)}) = {self.tex(hidden.raw_derivative)}",
            "output_form": rf"{f}'({self.tex(z_t_sym)}) = "
            + str(printer.doprint(expr.xreplace({functions.a: a_ph}))),
            "through": self.tex(
                sp.Eq(h_t_sym, self._function_symbol(notation.hidden_fn, z_t_sym), evaluate=False)
            ),
            "written_in": written_in,
            # an Iverson bracket in the derivative (ReLU): what it means, said once
            "indicator": self.tex(sp.Heaviside(functions.z, 0))
            if hidden.raw_derivative.has(sp.Heaviside)
            else "",
        }
        h_t = self.named(h_t_sym)
        o_t = self.named(self.sym("output_pre_activation", t))
        pre_entry = TeXName(notation.series_of("output_pre_activation").base).entry("i")
        return {
            "loss_rows": rows,
            "output_kind": output_kind,
            "output_derivative": output_derivative,
            "vjp_rows": vjp_rows,
            "fused": derived.fused is not None,
            "fused_rows": fused_rows,
            "scalar": scalar,
            "distribution": loss.distribution,
            "scaled_rows": scaled_rows,
            "jacobian": rf"{jac_lhs} = {self.tex(jacobian)}",
            "vanishing": self._vanishing(jacobian, j),
            "j": self.tex(j),
            "g": self.tex(g_sym),
            "ones": self.tex(sp.OneMatrix(shape[0], 1)),
            "o_h": rf"{self.partial(o_t, h_t)} = {self.tex(o_h)}",
            "derivative": derivative,
            "f_prime_j": self.tex(f_prime),
            "hidden_fn": f,
            "row": notation.layout == "row",
            "pre": self.named(pre).tex(),
            "pre_entry": pre_entry,
            "scalar_equation": f"{self.partial(UNIT_LOSS, pre_entry)} = {scalar}",
            "pred": self.named(pred).tex(),
            "target": self.named(target).tex(),
            "contributions": self._contribution_rows(),
            "delta_rows": self._delta_rows(),
        }

    def _vanishing(self, jacobian: Any, j: Any) -> dict[str, Any]:
        """The product of step Jacobians from step k to step t, and the bound on its norm."""
        notation, t = self.notation, self.t
        k = sp.Symbol("k", integer=True)
        hidden = self.k["hidden"]
        h_t, h_k = series_name(notation, hidden, t), series_name(notation, hidden, k)
        lhs = self.partial(h_t, h_k)
        step = self.partial(series_name(notation, hidden, j), series_name(notation, hidden, j - 1))
        over = rf"\prod_{{{self.tex(j)}={self.tex(k + 1)}}}^{{{self.tex(t)}}}"
        # the factors of one step Jacobian: diag(f'(z_j)) and the recurrent weight
        factors = [self.tex(f) for f in jacobian.args]
        diag = next(f for f in jacobian.args if isinstance(f, DiagMatrix))
        weight = [f for f in jacobian.args if f is not diag]
        f = self._fn_name(self.notation.hidden_fn)
        gamma = sp.Symbol("gamma")
        z = functions.z

        def norm(tex: str) -> str:
            return rf"\left\lVert {tex} \right\rVert"

        weight_tex = self.tex(sp.MatMul(*weight)) if len(weight) > 1 else self.tex(weight[0])
        distance = f"{self.tex(t)} - {self.tex(k)}"
        rows = [
            rf"{lhs} &= {over} {step} = {over} " + " ".join(factors),
            rf"{norm(lhs)} &\leq {over} {norm(self.tex(diag))} \, {norm(weight_tex)}"
            rf" \leq \left({self.tex(gamma)} \, {norm(weight_tex)}\right)^{{{distance}}}",
        ]
        return {
            "rows": rows,
            "gamma": rf"{self.tex(gamma)} = \max_{{{self.tex(z)}}} "
            rf"\lvert {f}'({self.tex(z)}) \rvert",
            "vanishes": rf"{self.tex(gamma)} \, {norm(weight_tex)} < 1",
            "distance": distance,
            "left": f"{self.tex(j)} = {self.tex(t)}",
            "right": f"{self.tex(j)} = {self.tex(k + 1)}",
            "weight": weight_tex,
            "window": self.tex(sp.Symbol("K")),
            "limit": self.tex(sp.Symbol("c")),
            "row": self.notation.layout == "row",
        }

    def _factor_of(self, expr: Any, role: str, step: Any) -> tuple[list[Any], list[Any]]:
        """The factors left and right of the series ``role`` at ``step`` in an affine sum."""
        terms = expr.args if isinstance(expr, sp.MatAdd) else (expr,)
        for term in terms:
            factors = list(term.args) if isinstance(term, sp.MatMul) else [term]
            for k, factor in enumerate(factors):
                if self.roles.get(factor) == (role, step):
                    return factors[:k], factors[k + 1 :]
        raise KeyError(f"no {role} at step {step} in {expr}")

    def _refresh(self) -> None:
        self.printer = self._make_printer()

    def form_backward(self) -> tuple[Any, ...]:
        form = self.form
        return form.last_backward if form.last_backward is not None else form.backward

    def _contribution_rows(self) -> list[str]:
        rows: list[str] = []
        for assignment in self.form_backward():
            if assignment.kind == "contribution":
                rows += self.rows(self.tex(assignment.target), assignment.expr)
        return rows

    def _delta_rows(self) -> list[str]:
        rows: list[str] = []
        for assignment in self.form_backward():
            if assignment.kind == "adjoint_" + self.k["pre_activation"]:
                rows += self.rows(self.tex(assignment.target), assignment.expr)
        return rows

    # -- 6. compact BPTT --------------------------------------------------------------
    def bptt(self) -> dict[str, Any]:
        form, notation, d = self.form, self.notation, self.d
        # the adjoints; each parameter's contribution is written once, in Section 5
        body_rows: list[str] = []
        for assignment in form.backward:
            if assignment.kind != "contribution":
                body_rows += self.rows(self.tex(assignment.target), assignment.expr)
        last_rows: list[str] = []
        if form.last_backward is not None:
            for assignment in form.last_backward:
                if assignment.kind != "contribution":
                    last_rows += self.rows(self.tex(assignment.target), assignment.expr)
        boundary = self._boundary()
        sums: list[str] = []
        for name, (kind, lo, assignment) in self.gradient_forms().items():
            gradient = partial_name(notation, self._leaf_name(name, self.d.roles[name])).tex()
            if kind == "zero":
                sums.append(rf"{gradient} &= \mathbf{{0}}")
            elif kind == "last":
                sums += self.rows(gradient, self._at(assignment.expr, self.T_last))
            elif kind == "concrete":
                sums += self.rows(gradient, d.gradients[name])
            else:
                sums.append(
                    rf"{gradient} &= \sum_{{{self.tex(self.t)}={lo}}}^{{{self.tex(self.T_last)}}} "
                    rf"{self._paren_sum(assignment.expr)}"
                )
        unrolled: list[str] = []
        adjoints = list(d.adjoints)
        by_step: dict[int, list[Any]] = {}
        for a in adjoints:
            by_step.setdefault(a.step, []).append(a)
        for step in self._elide(sorted(by_step, reverse=True)):
            if step is None:
                unrolled.append(r"&\;\;\vdots")
                continue
            for a in by_step[step]:
                unrolled += self.rows(self.tex(a.target), a.expr)
        gradient_rows: list[str] = []
        for name, role in d.roles.items():
            gradient_rows += self.long_sum_rows(
                partial_name(notation, self._leaf_name(name, role)).tex(), d.gradients[name]
            )
        return {
            "body_rows": body_rows,
            "last_rows": last_rows,
            "many_to_one": self.spec.mode == "many_to_one",
            "boundary": boundary,
            "boundary_row": rf"{boundary} = {self._zero_tex()}",
            "sums": sums,
            "unrolled": unrolled,
            "gradient_rows": gradient_rows,
            "elided": len(self.graph.steps) > UNROLL_LIMIT,
            "initial": self._initial_tex(),
            "initial_zero": self.initial_zero,
            "last_step": self.step_tex(self.T_last),
        }

    def summary(self, bptt: dict[str, Any]) -> dict[str, Any]:
        """The page a student keeps: the adjoint recursion and every gradient as a sum over t."""
        form = self.form

        def adjoints(assignments: Sequence[Any]) -> list[str]:
            rows: list[str] = []
            for assignment in assignments:
                if assignment.kind.startswith(("adjoint_", "pre_adjoint_")):
                    rows += self.rows(self.tex(assignment.target), assignment.expr)
            return rows

        return {
            "last_rows": adjoints(form.last_backward) if form.last_backward is not None else [],
            "rows": adjoints(form.backward),
            "boundary_row": bptt["boundary_row"],
            "sums": bptt["sums"],
            "t": self.tex(self.t),
            "last_step": bptt["last_step"],
        }

    def origin(self) -> dict[str, Any]:
        """Where the δ recursion comes from: the hidden state's descendants, read off the step.

        h_t is read by the equations of its own step (the output layer) and by
        the pre-activation of step t + 1; the chain rule sums over them.
        """
        hidden, pre = self.k["hidden"], self.k["pre_activation"]
        form, t = self.form, self.t
        pool = form.last_forward if form.last_forward is not None else form.forward
        h_t = self.sym(hidden, t)
        children = [a.target for a in pool if a.kind != "loss" and h_t in _atoms(a.expr)]
        if self.sym(hidden, t - 1) in _atoms(self._generic(pre, last=False).expr):
            children.append(self.sym(pre, t + 1))
        h_name = self.named(h_t)
        total = loss_name(self.notation)
        terms = []

        def fraction(num: TeXName, den: TeXName) -> str:  # as the adjoints below are named
            return rf"\frac{{\partial {num.tex()}}}{{\partial {den.tex()}}}"

        for child in children:
            jacobian = fraction(self.named(child), h_name)
            adjoint = fraction(total, self.named(child))
            if self.notation.layout == "row":
                terms.append(rf"{adjoint} {jacobian}")
            else:
                terms.append(rf"\left({jacobian}\right)^{{\top}} {adjoint}")
        return {
            "state": h_name.tex(),
            "children": [self.tex(c) for c in children],
            "rows": [rf"{fraction(total, h_name)} &= " + " + ".join(terms)],
            "row": self.notation.layout == "row",
            "example": fraction(TeXName("a"), TeXName("b")),
            "next": self.tex(self.sym(pre, t + 1)),
            "next_delta": delta_name(self.notation, t + 1, pre).tex(),
            "next_is": rf"{fraction(total, self.named(self.sym(pre, t + 1)))} = "
            + delta_name(self.notation, t + 1, pre).tex(),
        }

    def example(self) -> dict[str, Any] | None:
        """The worked example of the verifying stage, printed: its numbers, and their check."""
        found = self.checks.example if self.checks is not None else None
        if found is None:
            return None
        values = found.values

        def vector(symbol: Any, digits: int = 3) -> str:  # a column as its transpose
            value = np.asarray(values[symbol], dtype=float)
            if value.size == 1:
                return rf"{self.tex(symbol)} &= {float(value.reshape(-1)[0]):.{digits}f}"
            if value.shape[1] == 1 and value.shape[0] > 1:
                return rf"{self.tex(sp.Transpose(symbol))} &= {_numbers(value.T, digits)}"
            return rf"{self.tex(symbol)} &= {_numbers(value, digits)}"

        params = [vector(symbol, 1) for symbol in self.graph.params.values()]
        forward: list[str] = []
        show = (self.k["hidden"], "output", "loss")
        for assignment in self.graph.assignments:
            if assignment.kind in show:
                forward.append(vector(assignment.target))
        total = self.graph.assignments[-1].target
        forward.append(rf"{self.tex(total)} &= {found.loss:.3f}")
        backward = [
            vector(a.target)
            for a in self.d.assignments
            if a.kind == "adjoint_" + self.k["pre_activation"]
        ]
        gradients = [
            rf"{partial_name(self.notation, self._leaf_name(name, role)).tex()} &= "
            + _numbers(found.gradients[name], 3)
            for name, role in self.d.roles.items()
        ]
        steps = [
            {
                "t": str(step),
                "x": found.text[i],
                "y": found.text[i + 1],
            }
            for i, step in enumerate(self.graph.steps)
        ]
        return {
            "text": found.text,
            "sizes": [rf"{self.tex(size)} = {value}" for size, value in found.sizes.items()],
            "steps": steps,
            "params": params,
            "forward": forward,
            "backward": backward,
            "gradients": gradients,
            "x": series_name(self.notation, "input", self.t).tex(),
            "y": series_name(self.notation, "target", self.t).tex(),
            "error": _sci(found.module_error),
            "grid": f"{found.grid:g}",
            "norms": self._norms(found),
        }

    def _norms(self, found: Any) -> dict[str, Any] | None:
        """The measured ‖∂L_T/∂h_k‖ of the example's weights: a plot and a few values."""
        if not found.norms or not found.recurrent:
            return None
        scales = list(found.norms)
        count = len(found.norms[scales[0]])
        hidden = self.k["hidden"]
        k = sp.Symbol("k", integer=True)
        T = sp.Symbol("T")
        weight = self.tex(self.graph.params[found.recurrent])
        reach = self.partial(loss_name(self.notation, T), series_name(self.notation, hidden, k))
        rows = [
            {"k": str(i), "values": [_sci(found.norms[s][i]) for s in scales]}
            for i in range(0, count, 5)
        ]
        if (count - 1) % 5:
            rows.append(
                {"k": str(count - 1), "values": [_sci(found.norms[s][count - 1]) for s in scales]}
            )
        return {
            "plot": figure.norm_plot(found.norms, self.tex(k)),
            "norm": rf"\left\lVert {reach} \right\rVert",
            "k": self.tex(k),
            "T_is": self.tex(sp.Eq(T, count, evaluate=False)),
            "scales": [f"{s:g}" for s in scales],
            "weight": weight,
            "scaled": rf"{scales[-1]:g} \, {weight}",
            "rows": rows,
        }

    def gradient_forms(self) -> dict[str, tuple[str, int, Any]]:
        """How each gradient is written for a general T: ``(kind, first step, assignment)``.

        ``"sum"``: the loop body's contribution summed from the first step that
        contributes to the last; ``"last"``: the last step's contribution alone
        (an output parameter of a many-to-one model); ``"zero"``; ``"concrete"``:
        no generic form (an initial state), the gradient at this T.
        """
        form, d = self.form, self.d
        out: dict[str, tuple[str, int, Any]] = {}
        for name in d.roles:
            contributions = [c for c in d.contributions if c.param == name]
            body = [a for a in form.backward if a.param == name]
            last = [a for a in (form.last_backward or ()) if a.param == name]
            steps = sorted({c.step for c in contributions})
            if not contributions and not body:
                out[name] = ("zero", 0, None)
            elif not body and last:
                out[name] = ("last", self.last, last[0])
            elif not body:
                out[name] = ("concrete", 0, None)
            else:
                # the first step that contributes; none here (T = 1, a zero initial state in
                # the term): the general sum starts one step later and is empty for this T
                out[name] = ("sum", steps[0] if steps else self.first + 1, body[0])
        return out

    def _boundary(self) -> str:
        """What is zero after the last step (the δ of the step after it)."""
        return delta_name(self.notation, self.T_last + 1, self.k["pre_activation"]).tex()

    def _zero_tex(self) -> str:
        return self.tex(sp.ZeroMatrix(*self.graph.symbols.series_shape(self.k["pre_activation"])))

    @property
    def initial_zero(self) -> bool:
        """No state starts at an input (the cell file's ``initial``, or the spec's)."""
        return not self.graph.initial_inputs

    def _initial_parts(self) -> dict[str, Any]:
        """Where each state starts, for a forward pass whose states start differently
        (the cell file's ``initial``): each initial state's LaTeX and whether it is zero."""
        inputs = self.graph.initial_inputs
        return {
            "initial_parts": [
                {
                    "tex": state_initial_name(self.notation, state.key).tex(),
                    "zero": state.key not in inputs,
                }
                for state in self.spec.model.states
            ],
            "initial_mixed": 0 < len(inputs) < len(self.graph.initials),
        }

    def _initial_words(self) -> str:
        """The settings table's "initial state": zero, an input, or each state's own."""
        inputs = self.graph.initial_inputs
        if len(inputs) in (0, len(self.graph.initials)):
            return "zero" if self.initial_zero else "an input"
        return ", ".join(
            f"{self.notation.name_of(key).description}: {'an input' if key in inputs else 'zero'}"
            for key in self.graph.initials
        )

    def _initial_tex(self, inputs_only: bool = False) -> str:
        """The initial state(s), comma-separated (``inputs_only``: those that are inputs)."""
        return ", ".join(
            state_initial_name(self.notation, state.key).tex()
            for state in self.spec.model.states
            if not inputs_only or state.key in self.graph.initial_inputs
        )

    def _at(self, expr: Any, step: Any) -> Any:
        """A generic-step expression at ``step`` (an expression of T, say)."""
        mapping: dict[Any, Any] = {}
        for generic, (role, at) in self.form.symbols.meta.items():
            if not isinstance(at, sp.Basic) or not at.free_symbols:
                continue
            k = at.subs(self.t, step)
            if role.startswith("pre_adjoint_"):
                symbol = self.gen.pre_adjoint(role[len("pre_adjoint_") :], k)
            elif role.startswith("adjoint_"):
                symbol = self.gen.adjoint(role[len("adjoint_") :], k)
            elif role in ("loss", "contribution", "gradient", "total_loss", "initial_state"):
                continue
            else:
                symbol = self.gen.series(role, k)
            self._register(symbol, self.gen.meta[symbol])
            mapping[generic] = symbol
        return expr.xreplace(mapping)

    def _paren_sum(self, expr: Any) -> str:
        text = self.tex(expr)
        if isinstance(expr, sp.MatAdd):
            return rf"\left({text}\right)"
        return text

    def _leaf_name(self, name: str, role: str) -> TeXName:
        """The TeX name of a parameter or initial state, by its ASCII ``name`` and role."""
        if role == "initial_state":
            for state in self.spec.model.states:
                entry = self.notation.name_of(state.key)
                if entry.initial == name:
                    return state_initial_name(self.notation, state.key)
        return param_name(self.notation, role)

    # -- 7. updates -------------------------------------------------------------------
    def updates(self) -> dict[str, Any]:
        notation = self.notation
        eta = sp.Symbol("eta")
        rows: list[str] = []
        names: list[str] = []
        for name, role in self.d.roles.items():
            if role == "initial_state":
                continue
            symbol = self.graph.symbols.params[name]
            gradient = sp.MatrixSymbol("d" + name, *symbol.shape)
            self.names[gradient] = partial_name(notation, self._leaf_name(name, role))
            self.roles[gradient] = ("gradient", None)
            self._refresh()
            step = sp.MatMul(-eta, gradient)
            if self.notation.updates == "delta":  # 003's Δw = −η ∂L/∂w, w = w + Δw
                delta = sp.MatrixSymbol("Delta_" + name, *symbol.shape)
                self.names[delta] = TeXName(rf"\Delta {self.tex(symbol)}")
                self._refresh()
                rows += self.rows(self.tex(delta), step)
                rows += self.rows(self.tex(symbol), sp.MatAdd(symbol, delta))
            else:
                update = sp.MatAdd(symbol, step)
                rows += self.rows(self.tex(symbol), update, rel=r"\leftarrow")
            names.append(self.tex(symbol))
        # Adam (Goodfellow et al., Algorithm 8.7), elementwise, for any parameter θ
        shape = (sp.Symbol("p"), sp.Symbol("q"))
        theta, g, s, r = (sp.MatrixSymbol(n, *shape) for n in ("theta", "g", "s", "r"))
        s_hat, r_hat = sp.MatrixSymbol("s_hat", *shape), sp.MatrixSymbol("r_hat", *shape)
        rho1, rho2, tau, eps = sp.symbols("rho_1 rho_2 tau epsilon")
        # the defaults of the optimiser symbptt.train runs (its beta1, beta2, eps)
        defaults = Adam()
        adam_defaults = [
            self.tex(sp.Eq(rho1, _decimal(defaults.beta1), evaluate=False)),
            self.tex(sp.Eq(rho2, _decimal(defaults.beta2), evaluate=False)),
            self.tex(sp.Eq(eps, _decimal(defaults.eps), evaluate=False)),
        ]
        adam_names = {
            theta: TeXName(r"\theta"),
            g: TeXName("g"),
            s: TeXName("s"),
            r: TeXName("r"),
            s_hat: TeXName(r"\hat{s}"),
            r_hat: TeXName(r"\hat{r}"),
        }
        printer = self.printer.with_names(adam_names)
        ones = sp.OneMatrix(*shape)
        adam = [
            ("g", self.partial(loss_name(notation), TeXName(r"\theta")), "="),
            (
                "s",
                printer.doprint(sp.MatAdd(sp.MatMul(rho1, s), sp.MatMul(1 - rho1, g))),
                r"\leftarrow",
            ),
            (
                "r",
                printer.doprint(
                    sp.MatAdd(sp.MatMul(rho2, r), sp.MatMul(1 - rho2, sp.HadamardProduct(g, g)))
                ),
                r"\leftarrow",
            ),
            (r"\hat{s}", printer.doprint(sp.MatMul(1 / (1 - rho1**tau), s)), "="),
            (r"\hat{r}", printer.doprint(sp.MatMul(1 / (1 - rho2**tau), r)), "="),
            (
                r"\theta",
                printer.doprint(
                    sp.MatAdd(
                        theta,
                        sp.MatMul(
                            -eta,
                            sp.HadamardProduct(
                                s_hat,
                                sp.HadamardPower(
                                    sp.MatAdd(
                                        sp.HadamardPower(r_hat, sp.Rational(1, 2)), eps * ones
                                    ),
                                    -1,
                                ),
                            ),
                        ),
                    )
                ),
                r"\leftarrow",
            ),
        ]
        adam_rows = [rf"{lhs} &{rel} {rhs}" for lhs, rhs, rel in adam]
        return {
            "rows": rows,
            "params": names,
            "adam_rows": adam_rows,
            "adam_defaults": adam_defaults,
            "adam_symbols": {
                "theta": str(printer.doprint(theta)),
                "s": str(printer.doprint(s)),
                "r": str(printer.doprint(r)),
                "count": rf"{self.tex(tau)} = 1, 2, \dots",
            },
            "eta": self.tex(eta),
            "initial_input": not self.initial_zero,
            "initial": self._initial_tex(inputs_only=True),
            "initial_count": len(self.graph.initial_inputs),
        }

    # -- 8. verified ------------------------------------------------------------------
    def verified(self) -> dict[str, Any]:
        if self.checks is None:
            return {"ran": False, "scalar": None, "numerical": None, "seeds": [], "user": []}
        return {
            "ran": True,
            "scalar": self._scalar_check(),
            "numerical": self._numerical_check(),
            "seeds": self._seed_checks(self.checks.seeds),
            "user": self._seed_checks(self.checks.user),
            "user_file": self.checks.user_file,
        }

    def _seed_checks(self, verdicts: Sequence[SeedVerdict]) -> list[dict[str, Any]]:
        """Formulas (the seed's own, or the user's ``--check`` file) and the checker's
        verdicts, in order."""
        out = []
        for found in verdicts:
            name = self._leaf_name(found.wrt, self.d.roles.get(found.wrt, ""))
            out.append(
                {
                    "wrt": partial_name(self.notation, name).tex(),
                    "formula": found.formula,
                    "verdict": found.verdict,
                    "correct": found.correct,
                    "where": list(found.where),
                    "mistakes": list(found.mistakes),
                    "reason": found.reason,
                    "setting": self._seed_setting(found.setting),
                }
            )
        return out

    def _seed_setting(self, fields: Sequence[tuple[str, Any]]) -> list[str]:
        """The fields a seed formula was checked with that differ from this document's spec,
        in words (math in ``$…$``, the same in LaTeX and Markdown)."""
        words = []
        for field, value in fields:
            if field in _SIZE_SYMBOLS:
                words.append(f"${self._sizes_tex([(field, value)])[0]}$")
            elif field == "batch_reduction" and value == "sum":
                words.append(r"the losses summed over the batch (no $1/m$)")
            else:
                words.append(f"{field} = {value}")
        return words

    def _sizes_tex(self, sizes: Sequence[tuple[str, int | None]]) -> list[str]:
        return [rf"{self.tex(sp.Symbol(_SIZE_SYMBOLS[n]))} = {v}" for n, v in sizes]

    def _scalar_check(self) -> dict[str, Any]:
        checks = self.checks
        assert checks is not None
        proof, small = checks.proof, checks.proof_spec
        if proof is None:
            return {"ran": False, "error": checks.proof_error}
        sizes = [(name, getattr(small, name)) for name in _SIZE_SYMBOLS]
        # the document's own sizes the proof did not run at (its T, a concrete size)
        larger = [
            (name, getattr(self.spec, name))
            for name, value in sizes
            if getattr(self.spec, name) is not None and getattr(self.spec, name) != value
        ]
        symbolic = [name for name in _SIZE_SYMBOLS if getattr(self.spec, name) is None]
        return {
            "ran": True,
            "sizes": self._sizes_tex(sizes),
            "larger": self._sizes_tex(larger),
            "symbolic": [self.tex(sp.Symbol(_SIZE_SYMBOLS[n])) for n in symbolic],
            "entries": proof.entries,
            "gradients": [
                partial_name(self.notation, self._leaf_name(name, role)).tex()
                for name, role in self.d.roles.items()
            ],
            "error": _sci(proof.max_relative_error),
            "digits": proof.digits,
            "tolerance": rf"10^{{-{proof.digits - 5}}}",
            "ok": proof.ok,
            "direction": proof.direction,  # one random direction, not entry by entry
            "own": checks.proof_own,  # this document's derivation, not one at the proof's T
        }

    def _numerical_check(self) -> dict[str, Any]:
        checks = self.checks
        assert checks is not None
        result = checks.numerical
        if result is None:
            return {"ran": False, "error": checks.numerical_error}
        return {
            "ran": True,
            "sizes": self._sizes_tex(checks.numerical_sizes),
            "error": _sci(float(result.max_relative_error)),
            "ok": bool(result.ok),
        }
