"""The document of a composed model: stacked layers, two directions, a mask.

A composed spec (``ModelSpec(layers=L, direction="bidirectional", masked=True)``,
see docs/composition.md) runs one cell per (layer, direction), a *unit*.
:class:`_ComposedWriter` prints, from the derivation and the spec's program:

1. the structure: which unit reads which, in which order of the steps, the
   cell's equations of every unit at a generic step t (a backward unit's
   previous state is the one of step t + 1), the output layer reading the last
   layer (two weights, PyTorch's one weight on the concatenation split
   column-wise), and with a mask the choice of each state and the loss weights;
2. the loss;
3. the adjoint recursion of every unit with its carries (from its own next
   step, t + 1 forward and t - 1 backward; from the layer above at the same
   step; from the output layer), at one step and unrolled for this T;
4. the gradients as sums of the per-step contributions;
5. what was verified, at which sizes.

Every formula is printed from the derivation's assignments (the unrolled
graph and reverse mode); the cell's equations at the generic step come from the
same builder the graph uses (:func:`symbptt.core.graph._equations`), with a fresh
registry so the derivation's own is not touched.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import sympy as sp

from ..core.derive import Derivation
from ..core.graph import T_SYMBOL, Symbols, _equations, _output_step, loss_weights, t_SYMBOL
from ..expr import mexpr
from . import composed_figure
from .latex_printer import (
    BPTTLatexPrinter,
    TeXName,
    _indexed,
    _name_for,
    delta_role,
    partial_name,
    series_name,
    state_initial_name,
)
from .layout import UNROLL_LIMIT, _atoms
from .teaching import _Writer, term_classes

if TYPE_CHECKING:  # the results only: documents never run a check
    from ..oracle.verification import Checks

#: The arrows a direction is written with (the unit's names carry the same).
_ARROW = {"forward": r"\rightarrow", "backward": r"\leftarrow"}


class _ComposedWriter(_Writer):
    """Prints a composed model's derivation into the composed templates' context."""

    row_width = _Writer.row_width - 6.0

    def __init__(self, derivation: Derivation, name: str | None, checks: Checks | None) -> None:
        self.d = derivation
        self.spec = derivation.spec
        self.graph = derivation.graph
        notation = derivation.notation
        if self.graph.steps[-1] >= 10:  # H_{11} would read as layer 1, step 11: H_{1,1}
            notation = dataclasses.replace(notation, comma_steps=True)
        self.notation = notation
        self.name = name
        self.checks = checks
        self.operator = False
        self.symbols = self.graph.symbols
        self.program = self.spec.program
        self.t = t_SYMBOL
        self.first = self.graph.steps[0]
        self.last = self.graph.steps[-1]
        self.T_last = T_SYMBOL + notation.t0 - 1
        #: a fresh registry for the generic step (the derivation's is not touched)
        self.gen = Symbols(self.spec, notation)
        self.roles: dict[Any, tuple[str, Any]] = {}
        self.names: dict[Any, TeXName] = {}
        self.classes = term_classes(self.spec.model)
        self._aux = 0
        self._name_all(self.symbols)
        self._name_all(self.gen)
        self.printer = self._make_printer()

    # -- names ------------------------------------------------------------------------
    def _unit_of(self, registry: Symbols, symbol: Any) -> Symbols:
        """The registry (unit) that named ``symbol``; a contribution goes with its parameter."""
        param = registry.contributes_to.get(symbol)
        if param is not None:
            symbol = self._leaf(registry, param)
        return registry.registry(symbol)

    def _leaf(self, registry: Symbols, name: str) -> Any:
        """The parameter or initial state named ``name``."""
        if name in registry.params:
            return registry.params[name]
        return next(s for s in registry.initials.values() if getattr(s, "name", "") == name)

    def _param_tex(self, registry: Symbols, name: str) -> TeXName:
        """A parameter's name: the unit's, and for a split weight the direction it reads."""
        symbol = registry.params[name]
        owner = registry.registry(symbol)
        for parts in owner.split.values():
            for part, index in parts:
                if part == symbol:
                    unit, read = owner.unit, registry.program.units[index]
                    assert unit is not None
                    key = registry.key_of_param(name)
                    base = registry.notation.param(key).latex
                    arrow = r"\overrightarrow" if unit.direction == "forward" else r"\overleftarrow"
                    return TeXName(f"{arrow}{{{base}}}", f"({unit.layer}),{_ARROW[read.direction]}")
        if owner is registry and len(registry.program.head) > 1:  # W_out split in two
            key = registry.key_of_param(name)
            if key == "W_out":
                unit = next(
                    registry.program.units[i]
                    for i in registry.program.head
                    if name.endswith("_" + registry.program.units[i].direction_tag)
                )
                return TeXName(registry.notation.param(key).latex, _ARROW[unit.direction])
        return TeXName(owner.notation.param(registry.key_of_param(name)).latex)

    def _name_all(self, registry: Symbols) -> None:
        """Name every symbol ``registry`` recorded, in the notation of the unit that made it."""
        params = {symbol: name for name, symbol in registry.params.items()}
        delta_of = delta_role(self.notation)  # the cell's names (a unit's renames its adjoints)
        for symbol, (role, step) in list(registry.meta.items()):
            self.roles[symbol] = (role, step)
            owner = self._unit_of(registry, symbol)
            found: TeXName | None
            if symbol in params:
                found = self._param_tex(registry, params[symbol])
            elif role in ("contribution", "gradient"):
                param = registry.contributes_to.get(symbol) or str(symbol.name)[1:]
                leaf = self._leaf(registry, param)
                base = self.names.get(leaf) or self._param_tex(registry, param)
                if step is not None:
                    base = TeXName(f"{{{base.tex()}}}", f"({self.step_tex(step)})")
                found = partial_name(owner.notation, base)
            elif role == "mask":
                found = _indexed(self.notation, "M", step)
            else:
                try:
                    found = _name_for(owner.notation, symbol, role, step, delta_of)
                except KeyError:
                    found = None
            if found is not None and delta_of and role == "adjoint_" + delta_of and owner.unit:
                found = _indexed(self.notation, owner.unit.latex(r"\delta"), step)
            if found is not None:
                self.names[symbol] = found

    def _make_printer(self) -> BPTTLatexPrinter:
        return BPTTLatexPrinter(
            {
                "names": self.names,
                "roles": self.roles,
                "recurrent_first": self.notation.recurrent_first,
                "classes": self.classes,
            }
        )

    def _unit_title(self, index: int) -> dict[str, Any]:
        unit = self.program.units[index]
        registry = self.symbols.registries[index]
        readout = series_name(registry.notation, registry.cell.readout, self.t).tex()
        return {"index": index, "layer": unit.layer, "direction": unit.direction, "state": readout}

    # -- the context ------------------------------------------------------------------
    def context(self) -> dict[str, Any]:
        return {
            "layout": "composed",
            "meta": self.composed_meta(),
            "structure": self.structure(),
            "loss": self.composed_loss(),
            "backward": self.composed_backward(),
            "generic": self.generic_recursion(),
            "gradients": self.composed_gradients(),
            "verified": self.verified(),
        }

    def composed_meta(self) -> dict[str, Any]:
        meta = self.meta()
        spec = self.spec
        items = list(meta["items"])
        items.insert(2, ("layers", str(spec.layers)))
        items.insert(3, ("direction", spec.direction))
        items.insert(4, ("mask", "yes (padded steps)" if spec.masked else "no"))
        if spec.batch_reduction == "tokens":
            items = [
                ("over the batch", "per real token") if label == "over the batch" else (label, v)
                for label, v in items
            ]
        meta["items"] = items
        return meta

    def _time_reduction_words(self) -> str:
        if self.spec.masked and self.spec.mode == "many_to_many":
            if self.spec.time_reduction == "mean":
                return "mean over each example's real steps"
            return "sum over each example's real steps"
        return super()._time_reduction_words()

    # -- 1. structure -----------------------------------------------------------------
    def structure(self) -> dict[str, Any]:
        spec, gen, t = self.spec, self.gen, self.t
        x = self.tex(gen.series("input", t))
        units = []
        for index, (unit, registry) in enumerate(
            zip(self.program.units, gen.registries, strict=True)
        ):
            reads = [
                series_name(gen.registries[i].notation, gen.registries[i].cell.readout, t).tex()
                for i in unit.reads
            ] or [x]
            equations = _equations(registry, t, first=False)
            self._name_all(gen)  # the symbols the equations just made
            self.printer = self._make_printer()
            rows: list[str] = []
            for assignment in equations:
                rows += self.rows(self.tex(assignment.target), assignment.expr)
            states = [
                {
                    "name": series_name(registry.notation, s.key, t).tex(),
                    "initial": state_initial_name(registry.notation, s.key).tex(),
                    "candidate": (
                        series_name(registry.notation, s.key + "_new", t).tex()
                        if spec.masked
                        else ""
                    ),
                }
                for s in registry.cell.states
            ]
            first, last = self.step_tex(self.first), self.step_tex(self.last)
            order = (
                rf"{self.tex(t)} = {first}, \dots, {last}"
                if unit.direction == "forward"
                else rf"{self.tex(t)} = {last}, \dots, {first}"
            )
            previous = t - 1 if unit.direction == "forward" else t + 1
            units.append(
                {
                    **self._unit_title(index),
                    "reads": reads,
                    "order": order,
                    "previous": self.tex(previous),
                    "equations": rows,
                    "states": states,
                    "split": bool(registry.split),
                }
            )
        head = self._head()
        return {
            "units": units,
            "figure": composed_figure.picture(self),
            "mermaid": composed_figure.mermaid(self),
            "elided": len(self.graph.steps) > composed_figure.shown(self.spec.program),
            "bidirectional": self.program.bidirectional,
            "layers": self.program.layers,
            "masked": spec.masked,
            "head": head,
            "mask": self.tex(gen.mask(t)) if spec.masked else "",
            "input": x,
            "t": self.tex(t),
            "title": spec.model.title,
            "many_to_one": spec.mode == "many_to_one",
            "ones": self.tex(sp.OneMatrix(sp.Symbol("p"), sp.Symbol("q"))),
        }

    def _head(self) -> dict[str, Any]:
        """The output layer at a generic step t (many-to-many) or at the last step (many-to-one)."""
        gen, t, spec = self.gen, self.t, self.spec
        read = [(self.program.units[i], gen.registries[i]) for i in self.program.head]
        name = gen.notation.name_of("W_out").ascii
        weights = (
            [gen.params[f"{name}_{unit.direction_tag}"] for unit, _ in read]
            if len(read) > 1
            else [gen.param("W_out")]
        )
        many = spec.mode == "many_to_many"
        step = t if many else self.last
        pairs = []
        for weight, (unit, registry) in zip(weights, read, strict=True):
            at = step if many or unit.direction == "forward" else self.first
            pairs.append((weight, registry.series(registry.cell.readout, at)))
        weight = None
        omega: list[str] = []
        if spec.masked and many:
            weight = sp.MatrixSymbol("omega_t", *gen.mask(t).shape)
            self.names[weight] = _indexed(self.notation, r"\omega", t)
            self.roles[weight] = ("mask", t)
            weights_at = loss_weights(gen, self.graph.steps)
            omega_step = self.graph.steps[0]
            symbol = sp.MatrixSymbol(f"omega_{omega_step}", *gen.mask(t).shape)
            self.names[symbol] = _indexed(self.notation, r"\omega", omega_step)
            self._name_all(gen)
            self.printer = self._make_printer()
            omega = self.rows(self.tex(symbol), weights_at[omega_step])
        assignments, _ = _output_step(gen, step, pairs[0][1], pairs, weight)
        self._name_all(gen)
        self.printer = self._make_printer()
        rows: list[str] = []
        for assignment in assignments:
            if assignment.kind == "loss":
                node = assignment.expr
                via = rf"\ell({self.tex(node.pred)}, {self.tex(node.target)})"
                rows += self.rows(self.tex(assignment.target), node, via=via)
            else:
                rows += self.rows(self.tex(assignment.target), assignment.expr)
        return {
            "rows": rows,
            "reads": [self.tex(r) for _, r in pairs],
            "weights": [self.tex(w) for w in weights],
            "omega": omega,
            "omega_name": self.tex(weight) if weight is not None else "",
            "mean": spec.time_reduction == "mean",
            "tokens": spec.batch_reduction == "tokens",
        }

    # -- 2. loss ----------------------------------------------------------------------
    def composed_loss(self) -> dict[str, Any]:
        total = self.graph.assignments[-1]
        return {
            "rows": self.rows(self.tex(total.target), total.expr),
            "output": self.spec.output,
            "loss": self.spec.loss.replace("_", " "),
            "functions": self.function_defs(),
        }

    # -- 3. adjoints ------------------------------------------------------------------
    def _middle(self) -> int:
        steps = self.graph.steps
        return steps[len(steps) // 2]

    def _owner_index(self, symbol: Any) -> int | None:
        """The index of the unit that named ``symbol`` (None: the output layer)."""
        registry = self.symbols.registry(symbol)
        if registry.unit is None:
            return None
        return int(self.program.units.index(registry.unit))

    def _source_words(self, index: int, atom: Any, step: int) -> str | None:
        """Where the adjoint ``atom`` read by unit ``index`` at ``step`` comes from, or None."""
        role, at = self.roles.get(atom, ("", None))
        if not role.startswith(("adjoint_", "pre_adjoint_")):
            return None
        owner = self._owner_index(atom)
        if owner is None:
            return "the output layer at the same step"
        if owner == index and at != step:
            return f"its own next step, step {self.step_tex(at)}"
        if owner != index:
            other = self.program.units[owner]
            return f"layer {other.layer} ({other.direction}) at the same step"
        return None

    def composed_backward(self) -> dict[str, Any]:
        middle = self._middle()
        by_unit: dict[int | None, list[Any]] = {}
        for assignment in self.d.adjoints:
            by_unit.setdefault(self._owner_index(assignment.target), []).append(assignment)
        head = by_unit.get(None, [])
        units = []
        for index, unit in enumerate(self.program.units):
            assignments = by_unit.get(index, [])
            at_middle = [a for a in assignments if a.step == middle]
            carries: list[dict[str, str]] = []
            for assignment in at_middle:
                expr = assignment.expr
                terms = expr.args if isinstance(expr, sp.MatAdd) else (expr,)
                for term in terms:
                    sources = {self._source_words(index, a, middle) for a in _atoms(term)}
                    sources.discard(None)
                    for source in sorted(s for s in sources if s is not None):
                        carries.append(
                            {
                                "into": self.tex(assignment.target),
                                "term": self.tex(term),
                                "source": source,
                            }
                        )
            rows: list[str] = []
            for assignment in at_middle:
                rows += self.rows(self.tex(assignment.target), assignment.expr)
            unrolled: list[str] = []
            order = [a.step for a in assignments]
            steps = list(dict.fromkeys(order))
            for step in self._elide(steps) if len(steps) > UNROLL_LIMIT else steps:
                if step is None:
                    unrolled.append(r"&\;\;\vdots")
                    continue
                for assignment in assignments:
                    if assignment.step == step:
                        unrolled += self.rows(self.tex(assignment.target), assignment.expr)
            units.append(
                {
                    **self._unit_title(index),
                    "rows": rows,
                    "carries": carries,
                    "unrolled": unrolled,
                    "next": self.step_tex(middle + unit.step),
                }
            )
        head_rows: list[str] = []
        for assignment in head:
            if assignment.step in (middle, None):
                head_rows += self.rows(self.tex(assignment.target), assignment.expr)
        return {
            "middle": self.step_tex(middle),
            "units": units[::-1],  # in the order the backward pass runs them: the top layer first
            "head": head_rows,
            "masked": self.spec.masked,
        }

    def generic_recursion(self) -> dict[str, Any]:
        """The generic-step form (``Derivation.step_form``): the output layer's adjoints and
        every unit's at a step t (the last layer first), its next step's adjoints read by
        name; many-to-one also the last part, at each unit's final step; and the copy of
        every parameter used at step t."""
        form = self.d.step_form
        self._name_all(form.symbols)
        self.printer = self._make_printer()

        def part(body: tuple[Any, ...], unit: int | None) -> list[str]:
            rows: list[str] = []
            for assignment in form.part(body, unit):
                if assignment.kind != "contribution" and not mexpr.is_zero(assignment.expr):
                    rows += self.rows(self.tex(assignment.target), assignment.expr)
            return rows

        def units(body: tuple[Any, ...]) -> list[dict[str, Any]]:
            out = []
            for index in reversed(range(len(self.program.units))):
                rows = part(body, index)
                if rows:
                    out.append({**self._unit_title(index), "rows": rows})
            return out

        contributions: list[str] = []
        bodies = [form.backward] + ([form.last_backward] if form.last_backward else [])
        for body in bodies:
            for assignment in body:
                if assignment.kind == "contribution":
                    contributions += self.rows(self.tex(assignment.target), assignment.expr)
        last = form.last_backward or ()
        return {
            "t": self.tex(self.t),
            "head": part(form.backward, None),
            "units": units(form.backward),
            "last_head": part(last, None),
            "last_units": units(last),
            "contributions": contributions,
        }

    # -- 4. gradients -----------------------------------------------------------------
    def composed_gradients(self) -> dict[str, Any]:
        middle = self._middle()
        sums: list[str] = []
        for assignment in self.d.assignments:
            if assignment.kind == "gradient":
                sums += self.long_sum_rows(self.tex(assignment.target), assignment.expr)
        at_middle: list[str] = []
        for assignment in self.d.contributions:
            if assignment.step == middle:
                at_middle += self.rows(self.tex(assignment.target), assignment.expr)
        return {"sums": sums, "at_middle": at_middle, "middle": self.step_tex(middle)}

    # -- 5. verified ------------------------------------------------------------------
    def _leaf_name(self, name: str, role: str) -> TeXName:
        symbol = self.d.named[name]
        return self.names.get(symbol) or TeXName(name)

    def verified(self) -> dict[str, Any]:
        found = super().verified()
        if found["ran"] and found["scalar"]["ran"]:
            found["scalar"]["gradients"] = [
                partial_name(self.notation, self._leaf_name(name, "")).tex()
                for name in self.d.gradients
            ]
        return found


def composed_summary_latex(derivation: Derivation) -> str:
    """Jupyter's view of a composed model: the generic step's recursion (the output layer,
    then every unit, the last layer first; many-to-one's last step) and every gradient as a
    sum over the steps, in one ``aligned`` block."""
    writer = _ComposedWriter(derivation, None, None)
    generic = writer.generic_recursion()
    rows = list(generic["head"])
    for unit in generic["units"]:
        rows += unit["rows"]
    last = list(generic["last_head"])
    for unit in generic["last_units"]:
        last += unit["rows"]
    rows += [rf"{row} && \text{{(final step)}}" for row in last]
    for assignment in derivation.assignments:
        if assignment.kind == "gradient":
            rows += writer.long_sum_rows(writer.tex(assignment.target), assignment.expr)
    return "$$\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}$$"
