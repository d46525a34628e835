"""The document of any cell, and the choice between it and the teaching document.

:class:`_CellWriter` reads the cell's equations, states and parameters from the
derivation's step form: the model, the forward pass, the adjoint recursion
per state with every carry from step t + 1 and the named pre-activation
adjoints, the gradients as sums over the steps.  :func:`_writer` gives the
teaching writer to a cell of the one-state ``f(affine)`` shape
(:func:`_teaching_shape`) and this one to every other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from ..core.derive import Derivation
from ..expr import functions
from ..model.spec import SpecError
from . import cell_figure, figure
from .latex_printer import (
    TeXName,
    loss_name,
    param_name,
    partial_name,
    series_name,
    state_initial_name,
)
from .layout import ROW_WIDTH, UNROLL_LIMIT, _atoms, prose, tex_width
from .teaching import _Writer, teaching_roles

if TYPE_CHECKING:  # the results only: documents never run a check
    from ..oracle.verification import Checks


def _teaching_shape(derivation: Derivation) -> bool:
    """True when the cell is one state updated as ``state = f(affine)``.

    The teaching sections (the chain rule path by path, the general formula
    with its product of step Jacobians, the local derivatives) are derived for
    exactly that shape, read off the equations by
    :func:`~.teaching.teaching_roles`: one state, read by the output layer,
    whose first equation is an affine sum of the input and the previous state
    and whose second applies the spec's free activation to it.  Every other
    cell gets the general document.
    """
    return teaching_roles(derivation) is not None


# ---------------------------------------------------------------------------- every cell
#: The kinds of the output layer's assignments (the rest of a step is the cell).
_HEAD_KINDS = ("output_pre_activation", "output", "loss")


class _CellWriter(_Writer):
    """The document of any cell, read from its equations, states and parameters.

    Sections: the model (the cell's equations at step t, printed from the step
    form, the output layer, the functions the cell applies, the symbols), the
    forward pass unrolled, the loss, the adjoint recursion per state with
    every carry from step t + 1 and the named pre-activation adjoints, the
    gradients as sums over the steps, the updates, and what was verified.
    """

    #: A little narrower than the teaching writer's rows: a cell's sums carry wider terms
    #: (``(r_t \odot h_{t-1})^\top \delta^{\tilde{h}}_t``) than ``tex_width`` reckons.
    row_width = ROW_WIDTH - 6.0

    def context(self) -> dict[str, Any]:
        context: dict[str, Any] = {
            "layout": "cell",
            "meta": self.meta(),
            "model": self.cell_model(),
            "forward": self.cell_forward(),
            "loss": self.loss(),
            "backward": self.backward(),
            "bptt": self.cell_bptt(),
            "updates": self.updates(),
            "verified": self.verified(),
        }
        context["summary"] = self.summary(context["bptt"])  # printed last: names stay as they were
        return context

    def cell_bptt(self) -> dict[str, Any]:
        found = self.bptt()
        found["sums"] = self._paired(found["sums"])
        found["unrolled"] = self._unrolled()
        return found

    # -- names --------------------------------------------------------------------
    def _boundary(self) -> str:
        """Every adjoint the step after the last one would send back."""
        carried = [self._at(symbol, self.T_last) for symbol in self._carried()]
        if not carried:  # nothing read from step t + 1: name the readout state's adjoint
            after = self.gen.adjoint(self.spec.model.readout, self.T_last + 1)
            self._register(after, self.gen.meta[after])
            carried = [after]
        return " = ".join(self.tex(symbol) for symbol in carried)

    def _zero_tex(self) -> str:
        return r"\mathbf{0}"

    def _carried(self) -> list[Any]:
        """The adjoints of step t + 1 the backward pass of step t reads, in reading order."""
        t = self.t
        found: list[Any] = []
        pools = [
            self.form.backward,
            *([self.form.last_backward] if self.form.last_backward else []),
        ]
        for pool in pools:
            for assignment in pool:
                for atom in _atoms(assignment.expr):
                    role, at = self.roles.get(atom, ("", None))
                    carried = role.startswith(("adjoint_", "pre_adjoint_")) and at == t + 1
                    if carried and atom not in found:
                        found.append(atom)
        return found

    # -- 1. the model -------------------------------------------------------------
    def _pool(self) -> tuple[Any, ...]:
        """The forward assignments of a generic step with an output."""
        form = self.form
        return form.last_forward if form.last_forward is not None else form.forward

    def cell_model(self) -> dict[str, Any]:
        cell, notation, spec = self.spec.model, self.notation, self.spec
        pool = self._pool()
        equations: list[str] = []
        for assignment in pool:
            if assignment.kind in _HEAD_KINDS:
                continue
            equations += self.rows(self.tex(assignment.target), assignment.expr)
        head: list[str] = []
        for assignment in pool:
            if assignment.kind not in _HEAD_KINDS:
                continue
            if assignment.kind == "loss":
                node = assignment.expr
                via = rf"\ell({self.tex(node.pred)}, {self.tex(node.target)})"
                head += self.rows(self.tex(assignment.target), node, via=via)
            elif assignment.kind == "output" and notation.output_fn:
                pre = next(a.target for a in pool if a.kind == "output_pre_activation")
                fn = self._function_symbol(notation.output_fn, pre)
                lhs, rhs = self.tex(assignment.target), self.tex(assignment.expr)
                head.append(rf"{lhs} &= {self.tex(fn)} = {rhs}")
            else:
                head += self.rows(self.tex(assignment.target), assignment.expr)
        states = []
        for state in cell.states:
            entry = notation.name_of(state.key)
            states.append(
                {
                    "name": series_name(notation, state.key, self.t).tex(),
                    "previous": series_name(notation, state.key, self.t - 1).tex(),
                    "initial": state_initial_name(notation, state.key).tex(),
                    "meaning": prose(entry.description),
                }
            )
        defs = self.function_defs()
        return {
            "title": cell.title,
            "description": cell.description,
            "reference": cell.reference,
            "source": cell.source,
            "equations": equations,
            "head": head,
            "states": states,
            "readout": series_name(notation, cell.readout, self.t).tex(),
            "t_range": self.t_range(),
            "table": self.cell_table(),
            "sizes": self.sizes(),
            "activations": self.cell_functions(),
            "functions": defs,
            "output_fn": self._fn_name(notation.output_fn) if notation.output_fn else "",
            "output": spec.output,
            "loss": spec.loss.replace("_", " "),
            "row": notation.layout == "row",
            "bias": spec.bias,
            "initial_zero": not self.d.graph.initial_inputs,
            "notes": list(notation.notes),
            "cell_figure": cell_figure.picture(self),
            "cell_mermaid": cell_figure.mermaid(self),
        }

    def cell_functions(self) -> list[dict[str, str]]:
        """The elementwise functions of the cell's equations: definition and derivative."""
        seen: list[Any] = []
        for assignment in self._pool():
            if assignment.kind in _HEAD_KINDS:
                continue
            stack = [assignment.expr]
            while stack:
                node = stack.pop()
                if isinstance(node, ElementwiseApplyFunction):
                    activation = functions.activation_for(node.function)
                    if activation.name not in [a.name for a in seen]:
                        seen.append(activation)
                if isinstance(node, sp.Basic):
                    stack.extend(reversed(node.args))
        out = []
        z = functions.z
        for activation in seen:
            name = self.printer.activation_name(activation)
            applied = self.tex(
                functions.elementwise(activation.function, sp.MatrixSymbol("z", 1, 1))
            )
            expr, written_in = activation.derivative
            a_ph = sp.Dummy("a")
            printer = self.printer.with_names({a_ph: TeXName(applied)})
            derivative = str(printer.doprint(expr.xreplace({functions.a: a_ph})))
            definition = self.tex(activation.definition)
            out.append(
                {
                    "name": name,
                    "ascii": activation.name,
                    # tanh is its own definition: nothing to say but its derivative
                    "definition": "" if definition == applied else rf"{applied} = {definition}",
                    "derivative": rf"{name}'({self.tex(z)}) = {derivative}",
                    "through_output": written_in == "output",
                }
            )
        return out

    def cell_table(self) -> list[dict[str, Any]]:
        """Every symbol of the model with its shape and meaning, in the notation's names."""
        cell, notation, symbols, t = self.spec.model, self.notation, self.graph.symbols, self.t

        def shape_tex(shape: tuple[Any, Any]) -> tuple[str, str]:
            rows_, cols = shape
            kind = "vector" if cols == 1 else "matrix"
            return rf"{self.tex(rows_)} \times {self.tex(cols)}", kind

        def row(symbol: str, shape: tuple[Any, Any], meaning: list[tuple[str, bool]]) -> Any:
            shape_text, kind = shape_tex(shape)
            return {"symbol": symbol, "shape": shape_text, "kind": kind, "meaning": meaning}

        rows: list[dict[str, Any]] = []
        keys = [q.key for q in cell.quantities] + ["logits", "y_hat", "y"]
        for key in keys:
            entry = notation.name_of(key)
            rows.append(
                row(
                    series_name(notation, key, t).tex(),
                    symbols.series_shape(key),
                    prose(entry.description),
                )
            )
        for name in symbols.params:
            key = symbols.key_of_param(name)
            entry = notation.name_of(key)
            rows.append(
                row(
                    param_name(notation, key).tex(),
                    symbols.param_shape(key),
                    prose(entry.description),
                )
            )
        for state in cell.states:
            how = " (zero)" if self.spec.initial_of(state.key) == "zero" else " (an input)"
            entry = notation.name_of(state.key)
            rows.append(
                row(
                    state_initial_name(notation, state.key).tex(),
                    symbols.series_shape(state.key),
                    prose("initial " + entry.description + how),
                )
            )
        for assignment in self.form.backward:
            if assignment.kind.startswith("pre_adjoint_"):
                role = assignment.kind[len("pre_adjoint_") :]
                entry = notation.name_of(role)
                rows.append(
                    row(
                        self.tex(assignment.target),
                        assignment.target.shape,
                        [
                            ("error at the argument of ", False),
                            (series_name(notation, role, t).tex(), True),
                        ],
                    )
                )
        rows.append(
            {
                "symbol": loss_name(notation, t).tex(),
                "shape": r"1 \times 1",
                "kind": "scalar",
                "meaning": [("loss of step ", False), ("t", True)],
            }
        )
        rows.append(
            {
                "symbol": loss_name(notation).tex(),
                "shape": r"1 \times 1",
                "kind": "scalar",
                "meaning": prose("total loss"),
            }
        )
        return rows

    # -- 2. forward pass ----------------------------------------------------------
    def cell_forward(self) -> dict[str, Any]:
        graph, spec = self.graph, self.spec
        by_step = self._forward_by_step()
        groups: list[dict[str, Any]] = []
        for step in self._elide(graph.steps):
            if step is None:
                groups.append({"step": None, "rows": [r"&\;\;\vdots"]})
                continue
            rows: list[str] = []
            for assignment in by_step[step]:
                rows += self.rows(self.tex(assignment.target), assignment.expr)
            groups.append({"step": step, "rows": rows})
        paired = self._paired_groups([group["rows"] for group in groups])
        for group, rows in zip(groups, paired, strict=True):
            group["rows"] = rows
        return {
            "groups": groups,
            "figure": figure.picture(self),
            "mermaid": figure.mermaid(self),
            "initial": self._initial_tex(),
            "initial_zero": not graph.initial_inputs,
            **self._initial_parts(),
            "first": self.first,
            "last": self.last,
            "elided": len(graph.steps) > UNROLL_LIMIT,
            "many_to_one": spec.mode == "many_to_one",
        }

    # -- 4. the adjoint recursion ------------------------------------------------
    def backward(self) -> dict[str, Any]:
        cell, notation, form = self.spec.model, self.notation, self.form
        t = self.t

        def recursion(pool: tuple[Any, ...]) -> list[str]:
            kinds = ("adjoint_", "pre_adjoint_")
            return self._adjoint_rows([a for a in pool if a.kind.startswith(kinds)])

        def contributions(pool: tuple[Any, ...]) -> list[str]:
            rows: list[str] = []
            for assignment in pool:
                if assignment.kind == "contribution":
                    rows += self.rows(self.tex(assignment.target), assignment.expr)
            return rows

        states = []
        for state in cell.states:
            role = cell.role_of(state.key)
            adjoint = next((a for a in form.backward if a.kind == "adjoint_" + role), None)
            carries: list[str] = []
            if adjoint is not None:
                terms = (
                    adjoint.expr.args if isinstance(adjoint.expr, sp.MatAdd) else (adjoint.expr,)
                )
                for term in terms:
                    if any(self.roles.get(a, ("", None))[1] == t + 1 for a in _atoms(term)):
                        carries.append(self.tex(term))
            states.append(
                {
                    "name": series_name(notation, state.key, t).tex(),
                    "adjoint": self.tex(adjoint.target) if adjoint is not None else "",
                    "carries": carries,
                }
            )
        pre = []
        for assignment in form.backward:
            if assignment.kind.startswith("pre_adjoint_"):
                role = assignment.kind[len("pre_adjoint_") :]
                pre.append(
                    {
                        "name": self.tex(assignment.target),
                        "of": series_name(notation, role, t).tex(),
                    }
                )
        last = form.last_backward
        return {
            "rows": recursion(form.backward),
            "last_rows": recursion(last) if last is not None else [],
            "contributions": self._paired(contributions(form.backward)),
            "last_contributions": self._paired(contributions(last)) if last is not None else [],
            "states": states,
            "pre": pre,
            "boundary": self._boundary(),
            "many_to_one": self.spec.mode == "many_to_one",
            "last_step": self.step_tex(self.T_last),
            "copy_mark": f"({self.tex(t)})",
            "next": self.tex(t + 1),
            "after": self.tex(self.T_last + 1),
            "at_last": self.tex(sp.Eq(t, self.T_last, evaluate=False)),
            "example": self._example(),
        }

    def _paired(self, rows: list[str]) -> list[str]:
        """One-line rows two to a line (``a &= b & c &= d``) when the columns fit the width."""
        return self._paired_groups([rows])[0]

    def _paired_groups(self, groups: list[list[str]]) -> list[list[str]]:
        """The rows of every group paired (within its group), or all left as they are.

        An ``align`` makes every column as wide as its widest entry, so the
        rows are paired only when the widest left pair and the widest right
        pair of all the groups fit side by side.
        """
        rows = [row for group in groups for row in group]
        if len(rows) < 2 or any(row.count("&") != 1 for row in rows):
            return groups
        halves = [[row.split("&", 1) for row in group] for group in groups]

        def widest(part: int, parity: int) -> float:
            return max(
                (tex_width(half[part]) for group in halves for half in group[parity::2]),
                default=0.0,
            )

        total = sum(widest(part, parity) for part in (0, 1) for parity in (0, 1))
        if total + 8.0 > self.row_width:
            return groups
        out = []
        for group in groups:
            paired = [f"{a} & {b}" for a, b in zip(group[::2], group[1::2], strict=False)]
            out.append(paired + ([group[-1]] if len(group) % 2 else []))
        return out

    def _adjoint_rows(self, assignments: list[Any]) -> list[str]:
        """Adjoint rows, a quantity's ``dq`` and its argument's ``δ^q`` side by side.

        The two share a line (``a &= b \\qquad c = d``; only the first is
        aligned) when the block's widest left-hand side and both fit the
        width; otherwise every row has its own line.
        """
        paired: list[str] = []
        single: list[str] = []
        k = 0
        while k < len(assignments):
            now = assignments[k]
            if now is None:  # steps left out
                paired.append(r"&\;\;\vdots")
                single.append(r"&\;\;\vdots")
                k += 1
                continue
            first = self.rows(self.tex(now.target), now.expr)
            single += first
            after = assignments[k + 1] if k + 1 < len(assignments) else None
            if after is not None and after.kind == "pre_" + now.kind:
                second = self.rows(self.tex(after.target), after.expr)
                single += second
                k += 2
                if len(first) == 1 and len(second) == 1:
                    paired.append(first[0] + r" \qquad " + second[0].replace("&=", "=", 1))
                else:
                    paired += first + second
                continue
            paired += first
            k += 1
        column = max((tex_width(row.split("&", 1)[0]) for row in paired), default=0.0)
        if any(column + tex_width(row.split("&", 1)[-1]) > self.row_width for row in paired):
            return single
        return paired

    def _unrolled(self) -> list[str]:
        """The backward pass at this T, step by step (middle steps left out for long T)."""
        by_step: dict[int, list[Any]] = {}
        for assignment in self.d.adjoints:
            by_step.setdefault(assignment.step, []).append(assignment)
        flat: list[Any] = []
        for step in self._elide(sorted(by_step, reverse=True)):
            flat += [None] if step is None else by_step[step]
        return self._adjoint_rows(flat)

    def _example(self) -> dict[str, str]:
        """The placeholders the prose of the adjoint section speaks of: q, ∂L/∂q, q = φ(a), δ^q."""
        q, a = sp.MatrixSymbol("q", 1, 1), sp.MatrixSymbol("a", 1, 1)
        phi = self._function_symbol(r"\phi", a)
        return {
            "q": self.tex(q),
            "adjoint": partial_name(self.notation, TeXName(self.tex(q))).tex(),
            "applied": self.tex(sp.Eq(q, phi, evaluate=False)),
            "delta": TeXName(r"\delta", self.tex(q)).tex(),
        }


def _writer(derivation: Derivation, name: str | None, checks: Checks | None) -> _Writer:
    """The teaching writer for a one-state ``f(affine)`` cell, the general one otherwise;
    a composed model (layers, directions, a mask) has its own."""
    if derivation.spec.composed:
        from .composed import _ComposedWriter

        if derivation.spec.program.plain:  # batch_reduction="tokens" alone
            raise SpecError(
                "the documents: batch_reduction='tokens' without a mask, layers or directions "
                "is not supported yet; it is the mean over all T*m (step, example) pairs, "
                "the same loss as time_reduction='mean' with batch_reduction='mean'"
            )

        return _ComposedWriter(derivation, name, checks)
    if _teaching_shape(derivation):
        return _Writer(derivation, name, checks)
    return _CellWriter(derivation, name, checks)
