"""The rolled NumPy module of a composed model (layers, directions, a mask): any T.

Printed from the derivation of the same spec unrolled for five steps.  Its
middle step is the generic step t of every unit (its neighbours are steps
too, so no term of what they send is a symbolic zero of a boundary, as the
cell state's adjoint at the last step is): what a unit reads at t - 1
(t + 1 for a backward unit) is the previous iteration's, what a layer reads
from the layer below and what the output layer sends down are at t; the
adjoints read the same way in the other direction.  Each per-step quantity
``q`` that another step, the output layer or a sum over the steps reads is an
array ``q[0 .. T + 1]`` with step t at index t: a forward unit's initial
state sits at index 0, a backward unit's at T + 1, and the adjoints' entries
beyond the steps stay zero, so that the first and last iterations are the
generic step too (what the step beyond would send back is zero).  One that
only its own step reads is a variable of the loop, ``q_t``
(:meth:`ComposedRolledModule._local_bases`).

A sum over every step's mask (each example's number of real steps, in a loss
averaged over time or over the real tokens) is the one quantity of the
five-step derivation that is not at a step: it is named ``mask_count``.
What happens only at a boundary (the initial states' gradients; the output
layer of a many-to-one model, at the last step, and the first iteration of
the backward loop of the units it reads) is printed from the first or the
last of the five steps, with T in place of 5.

Outside the loops, what is row-local runs over every step at once, the steps
stacked by rows (``q_all``, (T m, units) views): the output layer and its
gradient, and each parameter's gradient as one product (a contribution
``A_t^T B_t`` summed over t is ``A_all^T B_all``).  Inside, each iteration
runs the step's assignments as the derivation writes them; NumPy's are
written in place into ``q[t]`` (:class:`~symbptt.codegen.lines.Lowering`, one
call a line, scratch arrays made before the loop), and NumPy's arrays of the
steps that the loops write at every step are the workspace's, kept between
calls (``_steps``), not new arrays of zeros: those cost the first write of
each of their pages at every call, which was most of what the module lost to
the hand-written one (``benchmarks/compose.py``, a 2-layer bidirectional LSTM
at m = 32).  A forward step's products of one operand by several parameters
(the gates') are one product with the parameters side by side
(:meth:`ComposedRolledModule._fuse_products`): no faster in NumPy, but XLA
runs each dot as its own thunk (the JAX module: 1.15 -> 1.08 of autodiff).
Measured there and left out: the input projections hoisted out of the loops
(one product over all steps costs what the per-step ones do: the products
are bound by arithmetic, and the stacked arrays are new pages again) and the
local derivatives hoisted (slower).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import sympy as sp

from ..core.derive import Derivation
from ..core.graph import T_SYMBOL, Assignment, Graph, Symbols
from ..expr import mexpr
from ..model.compose import Unit
from ..model.spec import ModelSpec
from .lines import Code, Lowering, SharedPrinter, fit, layout, spaced_slice, unused_name
from .module_parts import assemble, size_names
from .numpy_unrolled import initial_arguments
from .rowform import RowForm, transpose

__all__ = ["ComposedRolledModule", "five_step_graph", "rolled_steps"]

#: The index of a loop's step in a stacked array: t or a neighbour (t - 1, t + 1).
_AT_STEP = re.compile(r"t( [+-] 1)?")

#: The arrays of the arguments by step (index t is step t), named apart from the arguments.
_ARRAYS = {"input": "inputs", "target": "targets", "mask": "masks"}

#: The steps of the derivation a rolled composed module is printed from.
rolled_steps = 5
_MIDDLE = 3  # the position (1-based) of the generic step among the five
_LAST = rolled_steps


def five_step_graph(graph: Graph) -> Graph:
    """``graph`` (of five steps) with its loss scaled for T steps, not five.

    Without a mask, a mean over time or over all tokens divides by the number of
    steps with a loss: the derivation's adjoints then carry ``1 / T`` where the
    five-step graph has ``1 / 5`` (with a mask the per-step weights carry the
    means, and a many-to-one model has one loss step: the scale is the same).
    """
    spec = graph.spec
    steps = T_SYMBOL if spec.mode == "many_to_many" else sp.Integer(1)
    total = graph.assignments[-1]
    if total.kind != "total_loss":
        raise ValueError("expected the total loss last")
    losses = [a.target for a in graph.assignments if a.kind == "loss"]
    scale = graph.symbols.loss_scale(steps)
    if scale == graph.symbols.loss_scale(len(losses)):
        return graph
    rescaled = dataclasses.replace(total, expr=scale * sp.Add(*losses))
    return dataclasses.replace(graph, assignments=(*graph.assignments[:-1], rescaled))


def _unit(registry: Symbols) -> Unit:
    """The unit a composed model's registry names."""
    assert registry.unit is not None
    return registry.unit


class ComposedRolledModule:
    """The function bodies of a composed model's rolled module (see the module docstring)."""

    def __init__(
        self, spec: ModelSpec, d: Derivation, printer: type[SharedPrinter] = SharedPrinter
    ) -> None:
        if len(d.graph.steps) != rolled_steps:
            raise ValueError(f"expected a derivation of {rolled_steps} steps")
        self.spec, self.d = spec, d
        self.printer_class = printer
        self.helpers: set[str] = set()
        graph = d.graph
        self.symbols: Symbols = graph.symbols
        self.column = graph.notation.layout == "column"
        self.position = {step: k + 1 for k, step in enumerate(graph.steps)}
        self.many_to_one = spec.mode == "many_to_one"
        # each example's number of real steps, where a loss weight sums every step's mask
        masks = graph.masks
        self.count = None
        self._count_of: dict[Any, Any] = {}
        if masks:
            self.count = sp.MatrixSymbol("mask_count", *masks[0].shape)  # not at a step
            self._count_of = {sp.MatAdd(*masks): self.count}
        self.rf = RowForm(self.symbols)
        self.sizes = {**size_names(self.symbols), T_SYMBOL: "T"}  # T: a mean's 1 / T
        self.param_names = {symbol: name for name, symbol in graph.params.items()}
        self._view_reads: dict[str, set[str]] = {}  # a stacked view -> the names it reads
        self.bases: dict[Any, str] = {}
        self._taken: set[str] = {*self.param_names.values(), *self.sizes.values(), "t"}
        #: NumPy's loops write in place (JAX's arrays are immutable; torch prints as before)
        self._in_place = printer.backend == "numpy"
        self._scratch: Code | None = None  # where a loop's scratch arrays are made
        for symbol, (role, step) in self.rf.meta.items():
            if step in self.position and isinstance(symbol, sp.MatrixSymbol | sp.Symbol):
                suffix = "_" + Symbols.step_name(step)
                # the model's input, targets and mask by step: not the arguments X, Y, mask
                self.bases[symbol] = _ARRAYS.get(role, str(symbol.name)[: -len(suffix)])
        self._taken |= set(self.bases.values())
        self.local = self._local_bases()
        self._buffers: set[str] = set()  # NumPy: the loop's buffers of its local quantities

    # -- names --------------------------------------------------------------------
    def _local_bases(self) -> set[str]:
        """The per-step quantities that only their own loop's step reads: no array of the
        steps, a variable of the step (a stored step costs JAX and torch an update a step).

        A quantity is local when every expression that reads it is an assignment of the
        same loop (a unit's forward or backward pass) at the same step: not the next
        step's (a state, an adjoint sent back), not the output layer's, not a
        parameter's gradient summed over the steps (a δ), not dX or an initial state's
        gradient.  The derivation's assignments say which, for any cell.
        """
        d = self.d
        where: dict[str, set[Any]] = {}  # base -> the loops that write or read it
        outside: set[str] = set()  # read outside any loop, or at another step

        def loop_of(a: Assignment, backward: bool) -> Any:
            unit = self._unit_of(a) if backward else self._owner(a.target)
            if unit is None or a.kind in ("loss", "total_loss", "contribution", "gradient"):
                return None
            return (unit, backward)

        def visit(target: Any, expr: Any, step: Any, loop: Any) -> None:
            base = self.bases.get(self.rf.symbol(target)) if target is not None else None
            if base is not None:
                where.setdefault(base, set()).add(loop)
            if not isinstance(expr, sp.Basic):
                return
            for symbol in expr.free_symbols:
                row = self.rf.symbol(symbol)
                read = self.bases.get(row)
                if read is None:
                    continue
                where.setdefault(read, set()).add(loop)
                if loop is None or self.rf.meta[row][1] != step:
                    outside.add(read)

        for a in d.graph.assignments:
            visit(a.target, a.expr, a.step, loop_of(a, False))
        for a in d.assignments:
            visit(a.target, a.expr, a.step, loop_of(a, True))
        for value in (*d.input_gradients.values(), *d.gradients.values()):
            visit(None, value, None, None)
        return {
            base
            for base, loops in where.items()
            if base not in outside and len(loops) == 1 and None not in loops
        }

    def _local_name(self, base: str, position: int) -> str:
        """A local quantity's variable: ``q_t`` in a loop, ``q_first`` / ``q_last`` at a
        boundary step (a many-to-one model's last step)."""
        suffix = {_MIDDLE: "t", 1: "first", _LAST: "last"}.get(position, f"step{position}")
        return f"{base}_{suffix}"

    def _names(self, index: Callable[[int], str]) -> dict[Any, str]:
        """Names of per-step symbols as entries ``q[index(position)]`` (a local quantity's:
        its variable)."""
        names: dict[Any, str] = {**self.sizes, **self.param_names}
        if self.count is not None:
            names[self.rf.symbol(self.count)] = "mask_count"
        for symbol, base in self.bases.items():
            position = self.position[self.rf.meta[symbol][1]]
            if base in self.local:
                names[symbol] = self._local_name(base, position)
                continue
            names[symbol] = self._printer({}).item(base, index(position))
        return names

    def _generic(self) -> dict[Any, str]:
        """The middle position is step ``t``; its neighbours ``t - 1`` and ``t + 1``."""

        def index(k: int) -> str:
            offset = k - _MIDDLE
            return "t" if offset == 0 else f"t {'+' if offset > 0 else '-'} {abs(offset)}"

        return self._names(index)

    def _stacked(self, used: dict[str, str]) -> dict[Any, str]:
        """Per-step symbols as every step stacked by rows, ``(T m, units)`` views.

        ``h_1f_prev_all`` is ``h_1f[0:T]`` (step t - 1 of every t), ``h_1f_all``
        ``h_1f[1:T+1]``, ``h_1f_next_all`` ``h_1f[2:T+2]``; ``used`` collects the
        definitions of the views a printed expression names.
        """
        names: dict[Any, str] = {**self.sizes, **self.param_names}
        if self.count is not None:  # (m, 1): the same for every step
            names[self.rf.symbol(self.count)] = "mask_count_all"
            tile = str(self._printer({})._module_format("numpy.tile"))
            used.setdefault("mask_count_all", f"mask_count_all = {tile}(mask_count, (T, 1))")
            self._view_reads["mask_count_all"] = {"mask_count", "T"}
        for symbol, base in self.bases.items():
            offset = self.position[self.rf.meta[symbol][1]] - _MIDDLE
            if abs(offset) > 1 or base in self.local:
                continue
            name = base + {-1: "_prev_all", 0: "_all", 1: "_next_all"}[offset]
            rows = {-1: ":-2", 0: "1:-1", 1: "2:"}[offset]
            names[symbol] = name
            printer = self._printer({})
            reshaped = printer.reshape(printer.item(base, rows), "T * m, -1")
            used.setdefault(name, f"{name} = {reshaped}")
            self._view_reads[name] = {base, "T", "m"}
        return names

    def _emit_stacked(
        self,
        code: Code,
        target: str,
        expr: Any,
        views: dict[str, str],
        reshape: str = "",
        extra: Mapping[Any, str] | None = None,
    ) -> None:
        """``target = expr`` over every step stacked by rows (the views it reads first);
        with ``reshape``, the result becomes ``reshape``, (T, m, units); ``extra`` names
        what is not a step's quantity or a parameter (a concatenation of parameters)."""
        used: dict[str, str] = {}
        names = {**self._stacked(used), **(extra or {})}
        fitted = fit(target, expr, self._printer, names)
        reads = {name.split("[")[0] for _, _, u in fitted for name in u}
        for name in sorted(n for n in reads if n in used and n not in views):
            views[name] = used[name]
            code.add(used[name], self._view_reads[name], name)
        for part, text, u in fitted:
            code.add(f"{part} = {text}", {n.split("[")[0] for n in u}, part)
        if reshape:
            array = reshape.split("[")[0]
            line = self._write(reshape, self._printer({}).reshape(target, "T, m, -1"))
            code.add(line, {target, "T", "m", array}, reshape)

    def _row_local(self, expr: Any) -> bool:
        """True when ``expr``'s rows depend only on the same rows of what it reads.

        Evaluated on every step stacked by rows it is then every step's value
        stacked: no transposed per-step quantity, no sum over the examples.
        """
        batch = self.symbols.sizes["batch"]
        for node in sp.preorder_traversal(expr):
            if isinstance(node, sp.Transpose) and node.arg in self.bases:
                return False
            if isinstance(node, sp.OneMatrix) and node.shape[1] == batch:
                return False
        return True

    def _boundary(self) -> dict[Any, str]:
        """The first positions are steps 1, 2; the last ones T - 1, T."""

        def index(k: int) -> str:
            return str(k) if k < _MIDDLE else "T" if k == _LAST else f"T - {_LAST - k}"

        return self._names(index)

    def _row(self, a: Assignment) -> Assignment:
        expr = a.expr.xreplace(self._count_of) if self._count_of else a.expr
        return self.rf.assignment(dataclasses.replace(a, expr=expr))

    def _printer(self, names: Mapping[Any, str]) -> SharedPrinter:
        return self.printer_class(names, self.helpers)

    def _emit(
        self, code: Code, a: Assignment, names: dict[Any, str], indent: int, add: bool = False
    ) -> None:
        """``a`` (row form) as lines of ``code``: its target an entry ``q[t]``, or ``+=``."""
        pad = " " * (indent - 4)
        target = names.get(a.target) or str(self._printer(names).doprint(a.target))
        identifier = self.bases.get(a.target) or str(a.target.name)
        expr = a.expr
        if isinstance(expr, mexpr.OutputLoss) and expr.output == "softmax":
            names = {**names, mexpr.Softmax(expr.pre, expr.axis): names[expr.pred]}
        array = target.split("[")[0]
        local = identifier in self.local
        in_place = self._scratch is not None and ("[" in target or local) and not add
        if in_place and not isinstance(expr, mexpr.OutputLoss):
            if local and target not in self._buffers:  # the step's variable: one buffer
                self._buffers.add(target)
                self._buffer(target, a.target.shape[1])
            self._lower(code, expr, target, names, indent)
            return
        # fit lays ``identifier_t = ...`` out: the entry (and ``+=``) may be longer
        wider = max(0, len(self._write(target, "", add)) - len(identifier) - 5)
        fitted = fit(identifier + "_t", expr, self._printer, names, indent=indent + wider)
        for part, text, used in fitted:
            reads = {name.split("[")[0] for name in used} | {"t"}
            if part != identifier + "_t":
                code.add(f"{pad}{part} = {text}", reads, part)
            else:
                code.add(pad + self._write(target, text, add), reads | {array}, array)

    def _lower(
        self, code: Code, expr: Any, target: str, names: Mapping[Any, str], indent: int
    ) -> None:
        """``target = expr`` written in place, one NumPy call a line (:class:`Lowering`);
        a compound operand goes to a scratch array made before the loop."""
        assert self._scratch is not None
        scratch_code = self._scratch

        def scratch(shape: tuple[Any, Any]) -> str:
            name = self._fresh("scratch")
            units = str(self._printer(self.sizes).doprint(shape[1]))
            empty = str(self._printer({})._module_format("numpy.empty"))
            scratch_code.add(f"{name} = {empty}((m, {units}), dtype)", {"m", "dtype", units}, name)
            return name

        lowering = Lowering(self._printer(dict(names)), scratch, indent)
        pad = " " * (indent - 4)
        for line, uses, _, _ in lowering.statement(expr, target).entries:
            text = "\n".join(pad + part for part in line.split("\n"))
            code.add(text, {name.split("[")[0] for name in uses} | {"t"})

    def _loop(self, code: Code, header: str, emit: Callable[[Code], None]) -> None:
        """``header`` and the loop body ``emit`` writes, the scratch arrays it asks for first."""
        body, self._scratch = Code(), (Code() if self._in_place else None)
        self._buffers = set()
        emit(body)
        if self._scratch is not None:
            code.extend(self._scratch)
        self._scratch = None
        code.add(header, {"T"})
        code.extend(body)

    def _write(self, target: str, value: str, add: bool = False) -> str:
        """``target = value`` (``+=`` with ``add``); an entry ``q[i]`` as the printer writes
        into an array (JAX's arrays are immutable: ``q = q.at[i].set(value)``)."""
        if "[" not in target:
            return f"{target} {'+=' if add else '='} {value}"
        array, _, index = target[:-1].partition("[")
        printer = self._printer({})
        if add:
            return printer.add_item(array, index, value)
        if _AT_STEP.fullmatch(index):  # a loop's step: in bounds, T + 2 entries
            return printer.set_step(array, index, value)
        return printer.set_item(array, index, value)

    def _zeros(self, shape: str, dtype: str = "dtype") -> str:
        return self._printer({}).zeros(shape, dtype)

    def _fresh(self, wanted: str) -> str:
        """A name no array, parameter or earlier scratch array has (one counter)."""
        return unused_name(wanted, self._taken)

    # -- the three parts ------------------------------------------------------------
    def _units(self) -> list[Unit]:
        return [_unit(registry) for registry in self.symbols.registries]

    def _owner(self, symbol: Any) -> Any:
        registry = self.symbols.owner.get(symbol)
        return None if registry is None else registry.unit

    def _unit_of(self, a: Assignment) -> Any:
        """The unit an assignment belongs to (None: the output layer)."""
        unit = self._owner(a.target)
        if unit is None and a.kind == "contribution":  # the unit whose adjoint it reads
            reads = [
                self._owner(s)
                for s in a.expr.free_symbols
                if self.symbols.meta.get(s, ("",))[0].startswith(("adjoint_", "pre_adjoint_"))
            ]
            unit = next((u for u in reads if u is not None), None)
        return unit

    def _arrays(self, code: Code, symbols: list[Any], every: set[str]) -> None:
        """``q = np.zeros((T + 2, m, units), dtype)`` for each array a part writes.

        NumPy's arrays that are written at every step (the names in ``every``) are
        the workspace's, kept between calls (``_steps``: the ends zeroed, the steps
        written by the loops): new arrays of zeros this size cost the first write of
        every page (measured on a 2-layer bidirectional LSTM, benchmarks/compose.py).
        """
        seen: set[str] = set()
        for symbol in symbols:
            row = self.rf.symbol(symbol)
            base = self.bases.get(row)
            if base is None or base in seen or base in self.local:
                continue
            if not isinstance(row, sp.MatrixSymbol):
                continue
            seen.add(base)
            units = str(self._printer(self.sizes).doprint(row.shape[1]))
            self._steps_array(code, base, units, base in every)

    def _base(self, a: Assignment) -> str:
        return self.bases.get(self.rf.symbol(a.target), "")

    def _every_step(self, adjoints: list[Assignment]) -> set[str]:
        """The adjoints the backward loops write at every step: each unit's generic step;
        a many-to-one model's only where the unit's first iteration (from the output
        layer, at a boundary) writes them too, not its output layer's (the last step)."""
        graph = self.d.graph
        middle = graph.steps[_MIDDLE - 1]
        every = {self._base(a) for a in adjoints if a.step == middle}
        if not self.many_to_one:
            return every
        head_reads = {self.symbols.registries[i].unit for i in self.symbols.program.head}
        first: set[str] = set()
        for a in adjoints:
            unit = self._unit_of(a)
            if unit is None or unit not in head_reads:
                continue
            at = graph.steps[_LAST - 1] if unit.direction == "forward" else graph.steps[0]
            if a.step == at:
                first.add(self._base(a))
        heads = {self._base(a) for a in adjoints if self._unit_of(a) is None}
        reading = {self._base(a) for a in adjoints if self._unit_of(a) in head_reads}
        return (every - heads) - (reading - first)

    def _steps_array(self, code: Code, base: str, units: str, every: bool) -> None:
        """``base``: an array of the steps 0..T+1 (see :meth:`_arrays`)."""
        shape = f"(T + 2, m, {units})"
        reads = {"T", "m", "dtype", units}
        if every and self._in_place:  # NumPy: the workspace's, kept between calls
            self.helpers |= {"_steps"}
            code.add(f'{base} = _steps(ws, "{base}", {shape}, dtype)', reads | {"ws"}, base)
        elif every:
            for line, uses in self._printer({}).steps_array(base, shape, "dtype"):
                code.add(line, reads | uses | {base}, base)
        else:
            code.add(f"{base} = {self._zeros(shape)}", reads, base)

    def forward_code(self) -> Code:
        graph = self.d.graph
        code = Code()
        code.add("T, m, n_in = X.shape", {"X"})
        code.add("dtype = X.dtype", {"X"}, "dtype")
        for size, source in self._size_sources().items():
            code.add(f"{size} = {source}", {"params"}, size)
        if graph.masks:
            self._steps_array(code, "masks", "1", True)
            code.add(self._write("masks[1:-1]", "mask[:, :, None]"), {"mask", "masks"}, "masks")
            code.add(
                f"mask_count = {self._printer({}).sum_of('mask', 0)}[:, None]",
                {"mask"},
                "mask_count",
                True,
            )
        self._steps_array(code, "inputs", "n_in", True)
        if graph.masks:  # a padded step's input is anything finite: zero, the mask decides
            value = f"X * {self._printer({}).item('masks', '1:-1')}"
            code.add(self._write("inputs[1:-1]", value), {"X", "masks", "inputs"}, "inputs")
        else:
            code.add(self._write("inputs[1:-1]", "X"), {"X", "inputs"}, "inputs")
        units = self._units()
        body = [a for a in graph.assignments if a.kind not in ("loss", "total_loss")]
        # what the generic step writes; a many-to-one model's output layer: the last step
        every = {
            self._base(a)
            for a in body
            if a.step == graph.steps[_MIDDLE - 1]
            and (not self.many_to_one or self._owner(a.target) is not None)
        }
        self._arrays(code, [a.target for a in body], every)
        arguments = initial_arguments(graph)
        for registry in self.symbols.registries:
            unit = _unit(registry)
            for key in registry.initials:
                state = self.bases[self.rf.symbol(registry.series(key, graph.steps[0]))]
                index = "0" if unit.direction == "forward" else "-1"
                argument = arguments[unit.name(key)]
                code.add(self._write(f"{state}[{index}]", argument), {argument, state}, state)
        generic = self._generic()
        views: dict[str, str] = {}
        for unit in units:
            rows = [
                self._row(a)
                for a in body
                if a.step == graph.steps[_MIDDLE - 1] and self._owner(a.target) is unit
            ]
            loop = "range(1, T + 1)" if unit.direction == "forward" else "range(T, 0, -1)"
            rows, products, names = self._fuse_products(code, unit, rows, generic, views)

            def emit_rows(
                into: Code,
                rows: list[Assignment] = rows,
                products: list[Assignment] = products,
                names: dict[Any, str] = names,
            ) -> None:
                for product in products:
                    self._emit_product(into, product, names)
                for row in rows:
                    self._emit(into, row, names, 8)

            self._loop(code, f"for t in {loop}:", emit_rows)
        head = [a for a in body if self._owner(a.target) is None]
        if self.many_to_one:
            for a in head:
                self._emit(code, self._row(a), self._boundary(), 4)
        else:
            middle = [self._row(a) for a in head if a.step == graph.steps[_MIDDLE - 1]]
            self._stacked_or_loop(code, middle, views)
        return code

    def _by_parameter(self, node: Any, written: set[Any]) -> bool:
        """``A @ P``: a step's quantity ``A`` that is none of ``written`` (what the step
        itself computes) times a parameter ``P`` or its transpose."""
        if not isinstance(node, sp.MatMul) or len(node.args) != 2:
            return False
        operand, leaf = node.args
        parameter = leaf.arg if isinstance(leaf, sp.Transpose) else leaf
        return operand in self.bases and operand not in written and parameter in self.param_names

    def _fuse_products(
        self,
        code: Code,
        unit: Unit,
        rows: list[Assignment],
        names: dict[Any, str],
        views: dict[str, str],
    ) -> tuple[list[Assignment], list[Assignment], dict[Any, str]]:
        """A unit's step with the products of one operand by several parameters as one.

        ``A @ P_1``, ``A @ P_2``, ... (``A`` a step's quantity the loop does not write at
        its own step: the input, the layer below's state, the unit's previous state;
        ``P_k`` a parameter or its transpose) become one product ``A @ [P_1, P_2, ...]``
        at the top of the step, with the parameters side by side once per call (a line of
        ``code``, before the loop), and each ``A @ P_k`` its block of columns: an LSTM's
        four gates read ``h_{t-1}`` through one product, not four.  Returns the rows, the
        products the step computes first and the names that print the blocks.

        Where arrays of every step are cheap (``cheap_arrays_of_steps``: JAX), an operand
        the loop does not write at all (the input, the layer below's state) is multiplied
        for every step at once before the loop, one large product (``inputs_W_1f``) read
        at ``t`` (JAX side by side: 2-4 % faster); NumPy's and torch's stacked arrays are
        new pages at every call (torch: 4 % slower).
        """
        written = {row.target for row in rows}
        found: dict[Any, list[Any]] = {}  # operand -> its parameters, in the order read
        for row in rows:
            for node in sp.preorder_traversal(row.expr):
                if self._by_parameter(node, written):
                    operand, leaf = node.args
                    leaves = found.setdefault(operand, [])
                    if leaf not in leaves:
                        leaves.append(leaf)
        names = dict(names)
        replace: dict[Any, Any] = {}
        products: list[Assignment] = []
        sizes = self._printer(self.sizes)
        loop = {self.bases[target] for target in written}
        for operand, leaves in found.items():
            hoisted = self.printer_class.cheap_arrays_of_steps and self.bases[operand] not in loop
            if len(leaves) < 2 and not hoisted:
                continue
            base = self.bases[operand]
            offset = self.position[self.rf.meta[operand][1]] - _MIDDLE
            tail = "" if base.endswith("_" + unit.tag) else "_" + unit.tag
            stem = f"{base}{'_prev' if offset else ''}"
            product = self._fresh(f"{stem}_W{tail}")
            columns = sp.Add(*(leaf.shape[1] for leaf in leaves))
            extra: dict[Any, str] = {}  # the parameters side by side, where several
            weight_symbol = leaves[0]
            if len(leaves) > 1:
                weight = self._fresh(f"W_{stem}{tail}")
                printer = self._printer(names)
                concat = printer.concatenate(list(leaves), 1)
                code.add(f"{weight} = {concat}", set(printer.used), weight)
                weight_symbol = sp.MatrixSymbol(weight, operand.shape[1], columns)
                extra[weight_symbol] = names[weight_symbol] = weight
            product_symbol = sp.MatrixSymbol(product, operand.shape[0], columns)
            names[product_symbol] = product
            entry = product
            if hoisted:  # every step's at once, before the loop
                every = sp.MatMul(operand, weight_symbol)
                entry = self._before_loop(code, product, every, views, extra)
            else:
                products.append(
                    Assignment(product_symbol, sp.MatMul(operand, weight_symbol), "product")
                )
            start: Any = sp.Integer(0)
            for leaf in leaves:
                stop = start + leaf.shape[1]
                first = "" if start == 0 else str(sizes.doprint(start))
                last = "" if stop == columns else str(sizes.doprint(stop))
                block = sp.MatrixSymbol(
                    f"{product}_{len(replace)}", operand.shape[0], leaf.shape[1]
                )
                columns_of = "" if len(leaves) == 1 else f"[:, {spaced_slice(first, last)}]"
                names[block] = entry + columns_of
                replace[sp.MatMul(operand, leaf)] = block
                start = stop
        if not replace:
            return rows, [], names
        fused = [dataclasses.replace(row, expr=row.expr.xreplace(replace)) for row in rows]
        return fused, products, names

    def _hoist_sent(
        self, code: Code, rows: list[Assignment], names: dict[Any, str], views: dict[str, str]
    ) -> tuple[list[Assignment], dict[Any, str]]:
        """A backward step's rows with what other units and the output layer send computed
        for every step before the loop.

        The terms of an adjoint's sum that are products reading nothing this loop writes
        (``δ_(2f)_t @ W_x*`` sent down by the layer above, ``ds_t @ W_hy`` by the output
        layer) are known before the loop: their sum over every step stacked by rows is
        one line of products before it (``dh_1f_sent``), read at ``t`` in the loop, not
        a product per term and step.  Only where arrays of every step are cheap
        (``cheap_arrays_of_steps``: JAX, which runs each product of a step as its own
        call; side by side in one process, 1.03 -> 0.97-1.04 of autodiff): NumPy's and
        torch's new arrays are new pages at every call, which cost more than the
        per-step products they save (``benchmarks/compose.py``: NumPy 0.86 -> 1.03 of
        the hand-written baseline, torch 10 % slower).
        """
        if not self.printer_class.cheap_arrays_of_steps:
            return rows, names
        written = {self.bases[row.target] for row in rows}
        names = dict(names)
        out = []
        for row in rows:
            terms = row.expr.args if isinstance(row.expr, sp.MatAdd) else ()
            sent = [
                term
                for term in terms
                if term.has(sp.MatMul)
                and self._row_local(term)
                and not {self.bases.get(s) for s in term.free_symbols} & written
            ]
            if not sent:
                out.append(row)
                continue
            base = self._fresh(f"{self.bases[row.target]}_sent")
            symbol = sp.MatrixSymbol(base, *row.target.shape)
            names[symbol] = self._before_loop(code, base, sp.MatAdd(*sent), views)
            rest = [term for term in terms if term not in sent]
            out.append(dataclasses.replace(row, expr=sp.MatAdd(symbol, *rest)))
        return out, names

    def _before_loop(
        self,
        code: Code,
        name: str,
        expr: Any,
        views: dict[str, str],
        extra: Mapping[Any, str] | None = None,
    ) -> str:
        """``name``: ``expr`` of every step at once, before a loop (the steps stacked by
        rows, then (T, m, units)); returns what the loop reads at step t."""
        stacked = self._fresh(f"{name}_all")
        self._emit_stacked(code, stacked, expr, views, extra=extra)
        reshaped = self._printer({}).reshape(stacked, "T, m, -1")
        code.add(f"{name} = {reshaped}", {stacked, "T", "m"}, name)
        return self._printer({}).item(name, "t - 1")

    def _fuse_sums(
        self, code: Code, rows: list[Assignment], names: dict[Any, str]
    ) -> tuple[list[Assignment], dict[Any, str], dict[int, list[tuple[str, set[str], str]]]]:
        """A backward step's sums of products ``Σ_k A_k @ P_k`` (the unit's gates' adjoints
        from step t + 1 times their recurrent weights) as one product, the operands side by
        side times the parameters stacked (``[δ_i, δ_f, ...] @ [W_hi; W_hf; ...]``, the
        parameters stacked once per call, before the loop).  For JAX and torch, which run
        each product of a step as its own call; NumPy's in-place products would pay a copy
        of the operands a step for it.  Returns the rows, the names and, by row, the
        lines that come before it.
        """
        first: dict[int, list[tuple[str, set[str], str]]] = {}
        if self._in_place:
            return rows, names, first
        written = {row.target for row in rows}
        names = dict(names)
        out = []
        for k, row in enumerate(rows):
            terms = row.expr.args if isinstance(row.expr, sp.MatAdd) else ()
            products = [term for term in terms if self._by_parameter(term, written)]
            if len(products) < 2:
                out.append(row)
                continue
            base = self.bases[row.target]
            operands = self._fresh(f"{base}_operands")
            weight = self._fresh(f"W_{base}_operands")
            product = self._fresh(f"{base}_products")
            printer = self._printer(names)
            stacked = printer.concatenate([p.args[1] for p in products], 0)
            code.add(f"{weight} = {stacked}", set(printer.used), weight)
            side = self._printer(names)
            beside = side.concatenate([p.args[0] for p in products], 1)
            reads = {name.split("[")[0] for name in side.used}
            first[k] = [
                (f"{operands} = {beside}", reads, operands),
                (f"{product} = {operands} @ {weight}", {operands, weight}, product),
            ]
            symbol = sp.MatrixSymbol(product, *row.target.shape)
            names[symbol] = product
            rest = [term for term in terms if term not in products]
            out.append(dataclasses.replace(row, expr=sp.MatAdd(symbol, *rest)))
        return out, names, first

    def _emit_product(self, code: Code, product: Assignment, names: dict[Any, str]) -> None:
        """A fused product at the top of the step: NumPy's into an array made before the
        loop, the other backends' as a new array."""
        name = names[product.target]
        if self._scratch is None:
            self._emit(code, product, names, 8)
            return
        self._buffer(name, product.target.shape[1])
        self._lower(code, product.expr, name, names, 8)

    def _buffer(self, name: str, units: Any) -> None:
        """``name = np.empty((m, units), dtype)`` before the loop (NumPy writes in place)."""
        assert self._scratch is not None
        empty = str(self._printer({})._module_format("numpy.empty"))
        size = str(self._printer(self.sizes).doprint(units))
        self._scratch.add(f"{name} = {empty}((m, {size}), dtype)", {"m", "dtype", size}, name)

    def _stacked_or_loop(self, code: Code, rows: list[Assignment], views: dict[str, str]) -> None:
        """The output layer's assignments of every step: at once over the steps stacked by
        rows where each is row-local, else in a loop over t."""
        if all(self._row_local(row.expr) for row in rows):
            for row in rows:
                base = self.bases[row.target]
                self._emit_stacked(code, f"{base}_all", row.expr, views, f"{base}[1:-1]")
                views[f"{base}_all"] = ""  # computed: later reads take it as it is
            return
        code.add("for t in range(1, T + 1):", {"T"})
        for row in rows:
            self._emit(code, row, self._generic(), 8)

    def _size_sources(self) -> dict[str, str]:
        from .numpy_module import _api

        return {
            size: f'params["{name}"].shape[{axis}]'
            for size, (name, axis) in _api(self.d)["size_sources"].items()
        }

    def _targets(self, code: Code) -> None:
        """``targets[0 .. T + 1]``: Y at the steps that have a loss, zero elsewhere."""
        target = next(a for a in self.d.graph.assignments if a.kind == "loss")
        n_out = str(self._printer(self.sizes).doprint(self.rf.symbol(target.expr.target).shape[1]))
        zeros = self._zeros(f"(T + 2, m, {n_out})", "Y.dtype")
        code.add(f"targets = {zeros}", {"T", "m", n_out, "Y"}, "targets")
        if self.many_to_one:
            code.add(self._write("targets[-2]", "Y"), {"Y", "targets"}, "targets")
        elif self.d.graph.masks:  # a padded step's target is anything finite: zero
            value = f"Y * {self._printer({}).item('masks', '1:-1')}"
            code.add(self._write("targets[1:-1]", value), {"Y", "masks", "targets"}, "targets")
        else:
            code.add(self._write("targets[1:-1]", "Y"), {"Y", "targets"}, "targets")

    def loss_code(self) -> Code:
        graph = self.d.graph
        code = Code()
        loss_name = graph.notation.loss_ascii
        self._targets(code)
        losses = [a for a in graph.assignments if a.kind == "loss"]
        total = next(a for a in graph.assignments if a.kind == "total_loss")
        scale = sp.simplify(total.expr / sp.Add(*[a.target for a in losses]))
        steps = sp.Symbol("_steps")
        if self.many_to_one:
            last = self.rf.symbol(losses[-1].target)
            summed = self.bases[last] + "_last"
            self._emit(code, self._row(losses[-1]), {**self._boundary(), last: summed}, 4)
        else:
            code.add("loss_sum = 0.0", set(), "loss_sum")
            code.add("for t in range(1, T + 1):", {"T"})
            middle = next(a for a in losses if a.step == graph.steps[_MIDDLE - 1])
            names = self._generic()
            identifier = self.bases[self.rf.symbol(middle.target)] + "_t"
            names[self.rf.symbol(middle.target)] = identifier
            self._emit(code, self._row(middle), names, 8)
            code.add(f"    loss_sum += {identifier}", {identifier, "loss_sum"}, "loss_sum")
            summed = "loss_sum"
        printer = self._printer({**self.sizes, steps: summed})
        code.add(f"{loss_name} = {printer.doprint(scale * steps)}", {summed}, loss_name)
        return code

    def backward_code(self) -> tuple[Code, Code, dict[str, str]]:
        d, graph = self.d, self.d.graph
        code, extras = Code(), Code()
        zeros_like = str(self._printer({})._module_format("numpy.zeros_like"))
        self._targets(code)
        middle_step = graph.steps[_MIDDLE - 1]
        adjoints = [a for a in d.assignments if a.kind not in ("contribution", "gradient")]
        contributions = [a for a in d.assignments if a.kind == "contribution"]
        self._arrays(code, [a.target for a in adjoints], self._every_step(adjoints))
        gradients: dict[str, str] = {}
        params = set(graph.params)
        stacked = {  # each parameter's contribution at the middle step: the same at every step
            a.param: a for a in contributions if a.step == middle_step and a.param in params
        }
        for name in graph.params:
            if name not in stacked:  # the output layer of a many-to-one model: at T only
                code.add(f"d{name} = {zeros_like}({name})", {name}, f"d{name}")
            gradients[name] = f"d{name}"
        generic = self._generic()
        units = self._units()
        head_reads = {self.symbols.registries[i].unit for i in self.symbols.program.head}

        def emit_step(
            unit: Any, at: int, names: dict[Any, str], indent: int, into: Code = code
        ) -> None:
            step = graph.steps[at - 1]
            for a in adjoints:
                if a.step == step and self._unit_of(a) is unit:
                    self._emit(into, self._row(a), names, indent)
            if at != _MIDDLE and unit is None:  # the output layer of a many-to-one model
                for a in contributions:
                    if a.step == step and a.param in params and self._unit_of(a) is None:
                        row = self._row(a)
                        row = dataclasses.replace(row, target=sp.Symbol(f"d{a.param}"))
                        self._emit(code, row, {**names, row.target: f"d{a.param}"}, indent, True)

        views: dict[str, str] = {}
        if self.many_to_one:
            emit_step(None, _LAST, self._boundary(), 4)
        else:
            head = [a for a in adjoints if a.step == middle_step and self._unit_of(a) is None]
            self._stacked_or_loop(code, [self._row(a) for a in head], views)
        for unit in reversed(units):
            forward = unit.direction == "forward"
            if self.many_to_one and unit in head_reads:
                emit_step(unit, _LAST if forward else 1, self._boundary(), 4)
                steps = "range(T - 1, 0, -1)" if forward else "range(2, T + 1)"
            else:
                steps = "range(T, 0, -1)" if forward else "range(1, T + 1)"

            rows = [
                self._row(a) for a in adjoints if a.step == middle_step and self._unit_of(a) is unit
            ]
            rows, names = self._hoist_sent(code, rows, generic, views)
            rows, names, first = self._fuse_sums(code, rows, names)

            def generic_step(
                into: Code,
                rows: list[Assignment] = rows,
                names: dict[Any, str] = names,
                first: dict[int, list[tuple[str, set[str], str]]] = first,
            ) -> None:
                for k, row in enumerate(rows):
                    for line, reads, defines in first.get(k, []):
                        into.add(layout("    " + line, 4), reads | {"t"}, defines)
                    self._emit(into, row, names, 8)

            self._loop(code, f"for t in {steps}:", generic_step)
        # every parameter's gradient: its contribution summed over the steps, as one
        # product over the steps stacked by rows (a contribution is a sum over rows)
        for name, a in stacked.items():
            self._emit_stacked(code, f"d{name}", self._row(a).expr, views)
        # the gradients of X and of the initial states
        extras.add(f"dX = {self._zeros('(T, m, n_in)')}", {"T", "m", "n_in", "dtype"}, "dX")
        extras.add("for t in range(1, T + 1):", {"T"})
        value = d.input_gradients[middle_step]
        if not mexpr.is_zero(value):
            row = transpose(self.rf.expr(value)) if self.column else value
            self._emit(
                extras,
                Assignment(sp.Symbol("dX_t"), row, "input"),
                {**generic, sp.Symbol("dX_t"): "dX[t - 1]"},
                8,
            )
        else:
            extras.add("    pass", set())
        arguments = initial_arguments(self.d.graph)
        for registry in self.symbols.registries:
            for key, initial in registry.initials.items():
                argument = arguments[_unit(registry).name(key)]
                name = f"d{argument}"
                value = d.gradients.get(initial.name)
                if value is None or mexpr.is_zero(value):
                    extras.add(f"{name} = {zeros_like}({argument})", {argument}, name)
                    continue
                expr = value.xreplace(self._count_of) if self._count_of else value
                row = transpose(self.rf.expr(expr)) if self.column else expr
                target = sp.Symbol(name)
                self._emit(
                    extras,
                    Assignment(target, row, "initial"),
                    {**self._boundary(), target: name},
                    4,
                )
        return code, extras, gradients

    def build(self) -> dict[str, Any]:
        loops = self._printer({}).loops  # Python loops, or JAX's scans
        forward = loops(self.forward_code())
        loss = loops(self.loss_code())
        backward, extras, gradients = self.backward_code()
        backward, extras = loops(backward), loops(extras)
        graph = self.d.graph
        output = graph.symbols.series("output", graph.steps[-1])
        prediction = self.bases[self.rf.symbol(output)]
        finals: dict[str, tuple[str, str]] = {}
        for registry in self.symbols.registries:
            unit = _unit(registry)
            for key in registry.initials:
                state = self.bases[self.rf.symbol(registry.series(key, graph.steps[0]))]
                finals[unit.name(key)] = (state, "-2" if unit.direction == "forward" else "1")
        arguments = list(initial_arguments(graph).values())
        outputs = [f"d{a}" for a in arguments]
        parts = assemble(
            forward,
            loss,
            backward,
            extras,
            gradients,
            self.param_names.values(),
            graph.notation.loss_ascii,
            {prediction, *(state for state, _ in finals.values())},
            outputs,
            arguments + (["mask"] if graph.masks else []),
        )
        return parts | {"prediction": prediction, "finals": finals}
