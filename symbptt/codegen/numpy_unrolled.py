"""The unrolled NumPy module's code: the derivation's own assignments, one per line, for T steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.derive import Derivation
from ..core.graph import Assignment, Graph
from ..expr import mexpr
from ..model.notation import Notation
from ..model.spec import ModelSpec
from .lines import Code, SharedPrinter, fit
from .module_parts import assemble, size_names
from .rowform import RowForm, transpose
from .schedule import Stmt

__all__ = ["UnrolledModule", "final_states", "initial_arguments"]

_ADJOINT = ("adjoint_", "pre_adjoint_")


def initial_arguments(graph: Graph) -> dict[str, str]:
    """Each initial state's keyword: ``h0``, ``c0``; a unit's adds its tag (``h0_1f``), as
    the checker's callables take them (the state key ``h_1f`` -> ``h0_1f``)."""
    if not graph.symbols.registries:
        return {key: f"{key}0" for key in graph.initials}
    out = {}
    for registry in graph.symbols.registries:
        assert registry.unit is not None
        for key in registry.initials:
            out[registry.unit.name(key)] = registry.unit.name(f"{key}0")
    return out


def final_states(graph: Graph) -> dict[str, Any]:
    """Each state's final value: at the last step (a backward unit's: at the first step).

    With a mask a padded step carries the state, so a forward unit's last value is
    each example's state at its last real step, as PyTorch's ``h_n``.
    """
    symbols = graph.symbols
    if not symbols.registries:
        return {key: symbols.series(key, graph.steps[-1]) for key in graph.initials}
    finals = {}
    for registry in symbols.registries:
        assert registry.unit is not None
        last = graph.steps[-1] if registry.unit.direction == "forward" else graph.steps[0]
        for key in registry.initials:
            finals[registry.unit.name(key)] = registry.series(key, last)
    return finals


class UnrolledModule:
    """The unrolled module's code: the derivation's assignments, one per line, for T steps."""

    def __init__(
        self, spec: ModelSpec, d: Derivation, printer: type[SharedPrinter] = SharedPrinter
    ) -> None:
        self.spec, self.d = spec, d
        self.printer_class = printer  # NumPy's, or a backend's subclass of it
        self.notation: Notation = d.notation
        self.column = self.notation.layout == "column"
        graph = d.graph
        self.rf = RowForm(graph.symbols)
        self.sizes = size_names(graph.symbols)
        self.param_names = {symbol: name for name, symbol in graph.params.items()}
        self.names: dict[Any, str] = {**self.sizes, **self.param_names}
        self.forward = [self._statement(a) for a in graph.assignments]
        self.backward = [self._statement(a) for a in d.assignments]
        self.helpers: set[str] = set()
        # (role, step) -> symbol, built once: ``comments`` looks adjoints and
        # primals up for every pair of statements, and a scan of ``rf.meta``
        # per look-up made unrolled emission cubic in the number of steps.
        self._by_role: dict[tuple[str, Any], Any] = {}
        for symbol, (role, step) in self.rf.meta.items():
            self._by_role.setdefault((role, step), symbol)
        self._forward_reads = [f.expr.free_symbols for f in self.forward]
        self._forwards_by_adjoint: dict[Any, list[int]] = {}
        for index, forward in enumerate(self.forward):
            if forward.kind not in ("loss", "total_loss"):
                for prefix in ("adjoint_", "pre_adjoint_"):
                    adjoint = self._adjoint_of(forward.target, prefix)
                    if adjoint is not None:
                        self._forwards_by_adjoint.setdefault(adjoint, []).append(index)
        self._comment_lines: dict[int, str] = {}

    def new_printer(self, names: Mapping[Any, str]) -> SharedPrinter:
        return self.printer_class(names, self.helpers)

    def function(self, fqn: str) -> str:
        """A NumPy function's name in the printed code (``np.zeros_like``, ``torch.stack``)."""
        return str(self.new_printer({})._module_format(fqn))

    def _statement(self, assignment: Assignment) -> Stmt:
        row = self.rf.assignment(assignment)
        return Stmt(row.target, row.expr, assignment.kind, assignment.param)

    def code_of(self, expr: Any) -> tuple[str, set[str]]:
        printer = self.new_printer(self.names)
        return str(printer.doprint(expr)), set(printer.used)

    def line_of(self, statement: Stmt) -> str:
        printer = self.new_printer(self.names)
        return f"{printer.doprint(statement.target)} = {printer.doprint(statement.expr)}"

    def assign(self, code: Code, statement: Stmt, name: str | None = None) -> None:
        target = name or str(self.new_printer(self.names).doprint(statement.target))
        for part, text, used in fit(target, statement.expr, self.new_printer, self.names):
            code.add(f"{part} = {text}", used, part, True)

    def comments(self, statement: Stmt) -> list[str]:
        """``# grad of: ...`` for the forward assignments a backward assignment comes from."""
        reads = statement.expr.free_symbols
        lines = []
        primal = None
        if statement.kind.startswith(_ADJOINT) or statement.kind == "contribution":
            primal = self._primal_of(statement.target)
            # Only the forward assignments whose adjoint this one reads can
            # match; taken in forward order, as a scan of them all would.
            candidates = sorted(
                index
                for s in reads
                if self.rf.meta.get(s, ("",))[0].startswith(_ADJOINT)
                for index in self._forwards_by_adjoint.get(s, ())
            )
            for index in candidates:
                reads_of_forward = self._forward_reads[index]
                if (
                    statement.param in {str(p) for p in reads_of_forward}
                    if statement.kind == "contribution"
                    else primal in reads_of_forward
                ):
                    lines.append(self._forward_comment(index))
        if not lines and primal is not None:
            for index, forward in enumerate(self.forward):
                if forward.kind == "loss" and primal in self._forward_reads[index]:
                    lines.append(self._forward_comment(index))
        return lines

    def _forward_comment(self, index: int) -> str:
        if index not in self._comment_lines:
            self._comment_lines[index] = f"# grad of: {self.line_of(self.forward[index])}"
        return self._comment_lines[index]

    def _adjoint_of(self, symbol: Any, prefix: str = "adjoint_") -> Any:
        role, step = self.rf.meta.get(symbol, (None, None))
        return self._by_role.get((f"{prefix}{role}", step))

    def _primal_of(self, symbol: Any) -> Any:
        role, step = self.rf.meta.get(symbol, ("", None))
        for prefix in _ADJOINT:
            if role.startswith(prefix):
                return self._by_role.get((role[len(prefix) :], step))
        return None

    def build(self) -> dict[str, Any]:
        d, graph = self.d, self.d.graph
        forward, loss, backward, extras = Code(), Code(), Code(), Code()
        forward.add("T, m, n_in = X.shape", {"X"})
        forward.add("dtype = X.dtype", {"X"}, "dtype", True)
        printer = self.new_printer(self.names)
        masks = [str(printer.doprint(self.rf.symbol(mask))) for mask in graph.masks]
        for i, name in enumerate(masks):  # (m, 1) in the code's row layout
            forward.add(f"{name} = {printer.item('mask', str(i))}[:, None]", {"mask"}, name, True)
        for i, x in enumerate(graph.inputs):
            name = str(printer.doprint(self.rf.symbol(x)))
            if masks:  # a padded step's input is anything finite: zero, the mask decides
                masked = f"{printer.item('X', str(i))} * {masks[i]}"
                forward.add(f"{name} = {masked}", {"X", masks[i]}, name, True)
            else:
                forward.add(f"{name} = {printer.item('X', str(i))}", {"X"}, name, True)
        arguments = initial_arguments(graph)
        for key, initial in graph.initials.items():
            name = str(printer.doprint(self.rf.symbol(initial)))
            if name != arguments[key]:  # a composed model's argument is the symbol's name
                forward.add(f"{name} = {arguments[key]}", {arguments[key]}, name, True)
        many_to_one = self.spec.mode == "many_to_one"
        for i, y in enumerate(graph.targets):
            name = str(printer.doprint(self.rf.symbol(y)))
            target, reads = ("Y", {"Y"}) if many_to_one else (printer.item("Y", str(i)), {"Y"})
            if masks and not many_to_one:  # a padded step's target is anything finite: zero
                target, reads = f"{target} * {masks[i]}", {"Y", masks[i]}
            loss.add(f"{name} = {target}", reads, name, True)
            backward.add(f"{name} = {target}", reads, name, True)
        for s in self.forward:
            if s.kind in ("loss", "total_loss"):
                node = s.expr
                if isinstance(node, mexpr.OutputLoss) and node.output == "softmax":
                    softmax = mexpr.Softmax(node.pre, node.axis)
                    self.names[softmax] = str(self.new_printer(self.names).doprint(node.pred))
                self.assign(loss, s)
                self.names = {
                    k: v for k, v in self.names.items() if not isinstance(k, mexpr.Softmax)
                }
            else:
                self.assign(forward, s)
        previous: list[str] = []
        for s in self.backward:
            comments = self.comments(s) if s.kind != "gradient" else ["# sum over the steps"]
            if comments != previous:
                for line in comments:
                    backward.add(line)
            previous = comments
            self.assign(backward, s)
        names: list[str] = []
        for step in graph.steps:
            name = f"dx_{step}"
            value = d.input_gradients[step]
            if mexpr.is_zero(value):
                zeros = self.function("numpy.zeros_like")
                extras.add(f"{name} = {zeros}({printer.item('X', '0')})", {"X"}, name, True)
                continue
            self.assign(extras, Stmt(None, self._row(value), "input"), name)
            names.append(name)
        stack = self.function("numpy.stack")
        extras.add(f"dX = {stack}([{', '.join(names)}])", set(names), "dX", True)
        outputs = []
        for key, initial in graph.initials.items():
            name = f"d{arguments[key]}"
            outputs.append(name)
            value = d.gradients.get(initial.name)
            if value is None or mexpr.is_zero(value):
                held = str(printer.doprint(self.rf.symbol(initial)))
                zeros = self.function("numpy.zeros_like")
                extras.add(f"{name} = {zeros}({held})", {held}, name, True)
                continue
            self.assign(extras, Stmt(None, self._row(value), "initial"), name)
        loss_name = self.notation.loss_ascii
        gradients = {name: f"d{name}" for name in self.param_names.values()}
        output = graph.symbols.series("output", graph.steps[-1])
        prediction = str(printer.doprint(self.rf.symbol(output)))
        predictions = [
            str(printer.doprint(self.rf.symbol(graph.symbols.series("output", step))))
            for step in graph.steps
        ]
        finals = {
            key: str(printer.doprint(self.rf.symbol(symbol)))
            for key, symbol in final_states(graph).items()
        }
        returned = set(predictions if not many_to_one else [prediction]) | set(finals.values())
        parts = assemble(
            forward,
            loss,
            backward,
            extras,
            gradients,
            self.param_names.values(),
            loss_name,
            returned,
            outputs,
            [a for key, a in arguments.items() if a == str(graph.initials[key])],
        )
        return parts | {
            "prediction": prediction,
            "predictions": predictions,
            "prediction_stacked": False,
            "finals": finals,
        }

    def _row(self, expr: Any) -> Any:
        return transpose(self.rf.expr(expr)) if self.column else expr
