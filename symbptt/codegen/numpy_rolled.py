"""The rolled NumPy module's code: a :class:`~symbptt.codegen.schedule.Schedule` printed.

Arrays ``q_all`` hold a quantity of every step stacked by rows ((T m) x n,
step t in rows t m .. t m + m - 1) and ``q_seq`` is the same memory as
(T, m, n); a state's ``q_seq`` has T + 1 entries, the initial value first.
In a loop ``q_t``, ``q_prev`` and ``q_next`` are views of the steps t, t - 1
and t + 1.  A row-local expression of per-step quantities evaluated on the
stacked arrays is the stack of its per-step values, and a product
``A_t^T B_t`` of stacked arrays is the sum over the steps.  Every array a
loop writes is asked of the workspace (``_buffer``) and written in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from ..core.derive import Derivation
from ..core.graph import T_SYMBOL
from ..expr import mexpr
from ..model.notation import Notation
from ..model.spec import ModelSpec
from .lines import WIDTH, Code, Lowering, SharedPrinter, atomic, fit, product_parts, spaced_slice
from .module_parts import assemble, size_names
from .numpy_printer import stable_loss_matrix
from .rowform import transpose
from .schedule import Hoisted, Repeat, Schedule, Stmt, build_schedule

__all__ = ["RolledModule"]

_STEP_SUFFIX = {-1: "_prev", 0: "_t", 1: "_next"}
_ALL_SUFFIX = {-1: "_prev_all", 0: "_all", 1: "_next_all"}


def _for_lines(targets: list[str], iterable: str, items: list[str]) -> str:
    """``for a, b in zip(x, y):`` as ``ruff format`` lays it out (4 spaces of function body)."""
    one = f"for {', '.join(targets)} in {iterable}:"
    if 4 + len(one) <= WIDTH:
        return one
    head = f"for {', '.join(targets)} in zip("
    inner = ", ".join(items)
    if 4 + len(head) <= WIDTH:
        lines = [head]
    else:
        lines = ["for (", *(f"    {t}," for t in targets), ") in zip("]
    if 8 + len(inner) <= WIDTH and 4 + len(head) <= WIDTH:
        lines.append(f"    {inner}")
    else:
        lines += [f"    {item}," for item in items]
    return "\n".join([*lines, "):"])


@dataclass
class _Buffers:
    """Arrays of the workspace a function asks for, in order of first use."""

    shapes: dict[str, str] = field(default_factory=dict)
    counter: list[int] = field(default_factory=lambda: [0])

    def line(self, name: str, shape: str) -> str:
        self.shapes[name] = shape
        return f'{name} = _buffer(ws, "{name}", {shape}, dtype)'

    def scratch_name(self) -> str:
        self.counter[0] += 1
        return f"tmp{self.counter[0]}"


class RolledModule:
    """The function bodies of the rolled module of one derivation."""

    def __init__(
        self,
        spec: ModelSpec,
        d: Derivation,
        fuse: bool = False,
        printer: type[SharedPrinter] = SharedPrinter,
    ) -> None:
        self.spec, self.d = spec, d
        self.printer_class = printer  # NumPy's, or a backend's subclass of it
        self.notation: Notation = d.notation
        self.s: Schedule = build_schedule(d, fuse=fuse)
        s = self.s
        self.m2o = s.many_to_one
        sf = d.step_form
        self.sizes = size_names(sf.symbols)
        self.param_names = dict(s.params)
        self.names_all: dict[Any, str] = {**self.sizes, **s.params}
        self.names_step: dict[Any, str] = {**self.sizes, **s.params}
        for symbol, base in s.base.items():
            offset = s.offset[symbol]
            self.names_step[symbol] = base + _STEP_SUFFIX[offset]
            self.names_all[symbol] = base + _ALL_SUFFIX[offset]
        self.concat_names = {c.symbol: str(c.symbol.name) for c in s.concats}
        for names in (self.names_all, self.names_step):
            names.update(self.concat_names)
        self.names_loop = dict(self.names_step)
        for symbol, name in {**s.params, **self.concat_names}.items():
            self.names_loop[sp.Transpose(symbol)] = f"{name}_T"
        self.buffers = _Buffers()
        self.helpers: set[str] = set()
        self.seq_index: dict[str, Callable[[str, int], str]] = {}
        #: per-step views with no symbol of their own: name -> (code at step "@", names read)
        self.extra_views: dict[str, tuple[str, set[str]]] = {}
        self.scratch_families: set[str] = set()

    # -- printing -----------------------------------------------------------------
    def new_printer(self, names: Mapping[Any, str]) -> SharedPrinter:
        return self.printer_class(names, self.helpers)

    def reshape(self, code: str, shape: str) -> str:
        """``code.reshape(shape)`` as the printer spells it (``xp.reshape(code, (shape))``)."""
        return self.new_printer({}).reshape(code, shape)

    def function(self, fqn: str) -> str:
        """A NumPy function's name in the printed code (``np.concatenate``, ``torch.cat``)."""
        return str(self.new_printer({})._module_format(fqn))

    def names(self, context: str) -> dict[Any, str]:
        return {"all": self.names_all, "step": self.names_step, "loop": self.names_loop}[context]

    def printer(self, context: str, extra: Mapping[Any, str] | None = None) -> SharedPrinter:
        return self.new_printer({**self.names(context), **(extra or {})})

    def fresh(
        self,
        code: Code,
        target: str,
        expr: Any,
        context: str,
        extra: Mapping[Any, str] | None = None,
    ) -> None:
        """``target = expr`` as a new array (split into parts when the line is long)."""
        indent = 8 if context == "loop" else 4
        names = {**self.names(context), **(extra or {})}
        for part, text, used in fit(target, expr, self.new_printer, names, indent):
            code.add(f"{part} = {text}", used, part, True)

    def code_of(self, expr: Any, context: str) -> tuple[str, set[str]]:
        printer = self.printer(context)
        return str(printer.doprint(expr)), set(printer.used)

    def shape_code(
        self, shape: tuple[Any, Any], stacked: bool, steps: str = "T"
    ) -> tuple[str, set[str]]:
        """A shape as code, ``(T * m, n_hidden)`` for a stacked array, and the names it reads."""
        printer = self.new_printer(self.sizes)
        dims = []
        for dim in shape:
            if dim == self.s.batch:
                dims.append(f"{steps} * m" if stacked else "m")
                printer.used |= {"T", "m"} if stacked else {"m"}
            else:
                dims.append(str(printer.doprint(dim)))
        return f"({dims[0]}, {dims[1]})", printer.used

    def seq_shape(self, symbol: Any, extra: int = 0) -> tuple[str, set[str]]:
        """``(T, m, n)`` (or ``(T + 1, m, n)``) for the per-step storage of ``symbol``."""
        printer = self.new_printer(self.sizes)
        units = str(printer.doprint(symbol.shape[1]))
        steps = "T" if not extra else f"T + {extra}"
        return f"({steps}, m, {units})", {"T", "m"} | printer.used

    def units_code(self, symbol: Any) -> tuple[str, set[str]]:
        printer = self.new_printer(self.sizes)
        return str(printer.doprint(symbol.shape[1])), set(printer.used)

    def line_of(self, statement: Stmt, shift: int = 0) -> str:
        """The forward assignment as a line of per-step code, for comments."""
        names = dict(self.names_step)
        if shift:
            for symbol, base in self.s.base.items():
                offset = self.s.offset[symbol] + shift
                names[symbol] = base + _STEP_SUFFIX.get(offset, f"_{offset:+d}")
        printer = self.new_printer(names)
        return f"{printer.doprint(statement.target)} = {printer.doprint(statement.expr)}"

    def lower(
        self,
        expr: Any,
        target: str,
        context: str,
        code: Code,
        scratch_code: Code,
        extra: Mapping[Any, str] | None = None,
    ) -> None:
        """``expr`` written into ``target`` in place; scratch arrays go to ``scratch_code``."""
        stacked = context == "all"

        def scratch(shape: tuple[Any, Any]) -> str:
            name = self.buffers.scratch_name()
            self.buffer(scratch_code, name, *self.shape_code(shape, stacked))
            return name

        lowering = Lowering(
            self.printer(context, extra), scratch, 8 if context == "loop" else 4, self.strided()
        )
        code.extend(lowering.statement(expr, target))

    def buffer(self, code: Code, name: str, shape: str, uses: Iterable[str]) -> None:
        """Ask the workspace for the array ``name``."""
        code.add(self.buffers.line(name, shape), {"ws", "dtype", *uses}, name, True)

    def accumulate(self, expr: Any, target: str, code: Code, before: Code) -> None:
        """``target += expr`` in a loop, through a scratch array (no allocation)."""
        if atomic(expr):
            text, used = self.code_of(expr, "loop")
            code.add(f"{target} += {text}", used | {target})
            return
        if self.add_product(expr, target, code):
            return
        name = self.buffers.scratch_name()
        self.buffer(before, name, *self.shape_code(expr.shape, False))
        self.lower(expr, name, "loop", code, before)
        code.add(f"{target} += {name}", {target, name})

    def add_product(self, expr: Any, target: str, code: Code) -> bool:
        """``target += a @ b`` or ``target += a * b`` of two operands as one call, where the
        backend has one (the printer's ``add_into``: torch's ``addmm_``, ``addcmul_``)."""
        parts = product_parts(expr)
        if parts is None:
            return False
        texts, uses = [], {target}
        for arg in parts[1]:
            text, used = self.code_of(arg, "loop")
            texts.append(text)
            uses |= used
        line = self.new_printer({}).add_into(parts[0], texts, target)
        if line is None:
            return False
        code.add(line, uses)
        return True

    # -- storage ------------------------------------------------------------------
    def _seq(self, base: str, shift: int = 0) -> None:
        """Register ``base_seq`` as the per-step storage of ``base`` (index t + shift + offset)."""

        def index(t: str, offset: int) -> str:
            k = offset + shift
            if t in ("t", "@"):
                return t if k == 0 else f"{t} + {k}" if k > 0 else f"{t} - {-k}"
            if t == "T - 1":
                k -= 1
                return "T" if k == 0 else f"T + {k}" if k > 0 else f"T - {-k}"
            return str(int(t) + k)

        self.seq_index[base] = index

    def stored(self, base: str) -> bool:
        """Whether the family ``base`` has per-step storage (its own or a group's blocks)."""
        return base in self.seq_index or base in self.s.blocks

    def view_code(self, symbol: Any, t: str) -> tuple[str, set[str]] | None:
        """The code of ``symbol``'s value at step ``t`` (a view of its storage), or None."""
        s = self.s
        base, offset = s.base[symbol], s.offset[symbol]
        block = s.blocks.get(base)
        storage = block.group if block is not None else base
        if storage not in self.seq_index:
            return None
        seq = f"{storage}_seq"
        index = self.seq_index[storage](t, offset)
        if block is None or not self.columns(block):
            return self.new_printer({}).item(seq, index), {seq}
        if block.stop - block.start == 1:  # one block: a single subscript of the 4-D view
            return f"{storage}_blocks[{index}, :, {block.start}]", {f"{storage}_blocks"}
        return f"{seq}[{index}, {self.columns(block)[1:-1]}]", {seq, *self.columns_uses(block)}

    def columns(self, block: Any) -> str:
        """``[:, a:b]`` for a block that is not its whole group, else ``""``."""
        group = self.s.groups[block.group]
        if (block.start, block.stop) == (0, group.count):
            return ""
        printer = self.new_printer(self.sizes)
        start = str(printer.doprint(block.start * group.width)) if block.start else ""
        stop = str(printer.doprint(block.stop * group.width)) if block.stop < group.count else ""
        return f"[:, {spaced_slice(start, stop)}]"

    def columns_uses(self, block: Any) -> set[str]:
        if block is None:
            return set()
        group = self.s.groups[block.group]
        printer = self.new_printer(self.sizes)
        printer.doprint(group.width)
        return set(printer.used)

    def strided(self) -> frozenset[str]:
        """Names of block views that are not a whole group array (np.dot cannot write them)."""
        s = self.s
        out = set()
        for symbol, base in s.base.items():
            block = s.blocks.get(base)
            if block is not None and self.columns(block):
                out |= {self.names_step[symbol], self.names_all[symbol]}
        return frozenset(out)

    def views(self, body: Code, t: str = "t") -> Code:
        """``q_t = q_seq[t]`` for the per-step names ``body`` reads, in order of first use."""
        views = Code()
        seen: set[str] = set()
        s = self.s
        for _, uses, _, _ in body.entries:
            for symbol, name in sorted(self.names_step.items(), key=lambda kv: kv[1]):
                if name not in uses or name in seen or symbol not in s.base:
                    continue
                found = self.view_code(symbol, t)
                if found is None:
                    continue
                code, used = found
                seen.add(name)
                uses_t = used | ({"t"} if t == "t" else {"T"})
                views.add(f"{name} = {code}", uses_t, name, True)
            for name, (code, used) in sorted(self.extra_views.items()):
                if name in uses and name not in seen:
                    seen.add(name)
                    views.add(f"{name} = {code.replace('@', t)}", used | {t}, name, True)
        return views

    def stored_back(self, body: Code, t: str = "t") -> Code:
        """Lines storing the step values ``body`` wrote back into their stacked arrays:
        none here, as ``q_t`` is a view of ``q_seq`` (a functional backend's are copies)."""
        return Code()

    def read_back_after_loop(self, symbol: Any) -> bool:
        """Whether ``q_all`` of the backward loop's target ``symbol`` is bound again to
        ``q_seq`` after the loop: not for an alias of a hoisted array, whose ``q_all`` the
        loop's views wrote through (a functional backend's loop stores into ``q_seq``)."""
        return symbol not in self.s.alias

    def loop(self, c: Code, body: Code, backward: bool) -> None:
        """``for t, q_t, ... in zip(range(...), q_seq[...], ...):`` and ``body``.

        The per-step views of the arrays the body reads come from iterating over
        the arrays (made in C) rather than from indexing them at every step.  The
        forward loop runs t = 0, ..., T - 1, the backward one t = T - 2, ..., 0.
        """
        s = self.s
        targets: list[str] = []
        sources: list[str] = []
        uses: set[str] = {"T"}
        seen: set[str] = set()
        for _, entry_uses, _, _ in body.entries:
            candidates = [
                (name, self.view_code(symbol, "@"))
                for symbol, name in sorted(self.names_step.items(), key=lambda kv: kv[1])
                if symbol in s.base
            ]
            candidates += sorted(self.extra_views.items())
            for name, found in candidates:
                if name not in entry_uses or name in seen or found is None:
                    continue
                code, used = found
                seen.add(name)
                head, _, rest = code.partition("[@")
                index, _, tail = rest.partition("]")  # "@ + 1, :, 2" -> the step and the rest
                k = int(index.replace(" ", "").split(",")[0] or 0)
                extra = index.split(",", 1)[1] if "," in index else ""
                if backward:
                    span = spaced_slice(str(k) if k else "", f"T - {1 - k}" if k < 1 else "T")
                    steps = f"{head}[{span}{',' + extra if extra else ''}]{tail}"
                    source = self.new_printer({}).steps_reversed(steps)
                else:
                    span = spaced_slice(str(k) if k else "", f"T + {k}" if k else "T")
                    source = f"{head}[{span}{',' + extra if extra else ''}]{tail}"
                targets.append(name)
                sources.append(source)
                uses |= used
        steps = "range(T - 2, -1, -1)" if backward else "range(T)"
        if any("t" in entry_uses for _, entry_uses, _, _ in body.entries) or not targets:
            targets.insert(0, "t")
            sources.insert(0, steps)
        if targets == ["t"]:
            c.add(f"for t in {steps}:", uses)
        else:
            c.add(_for_lines(targets, f"zip({', '.join(sources)})", sources), uses)
        c.extend(body, indent=1)

    def group_code(self, c: Code, phase: str) -> None:
        """The group arrays made in ``phase``, and stacked views of their blocks."""
        s = self.s
        for name, group in s.groups.items():
            if group.phase != phase:
                continue
            printer = self.new_printer(self.sizes)
            units = printer.doprint(group.count * group.width)
            uses = {"T", "m", *printer.used}
            self.buffer(c, f"{name}_seq", f"(T, m, {units})", uses)
            c.add(
                f"{name}_all = {self.reshape(f'{name}_seq', f'T * m, {units}')}",
                {f"{name}_seq", *uses},
                f"{name}_all",
                True,
            )
            self._seq(name)
            width = printer.doprint(group.width)
            c.add(
                f"{name}_blocks = {self.reshape(f'{name}_seq', f'T, m, {group.count}, {width}')}",
                {f"{name}_seq", *uses},
                f"{name}_blocks",
                True,
            )
            for symbol, base in sorted(s.base.items(), key=lambda kv: kv[1]):
                block = s.blocks.get(base)
                if block is None or block.group != name or s.offset[symbol] != 0:
                    continue
                if not self.columns(block):
                    continue
                all_name = self.names_all[symbol]
                c.add(
                    f"{all_name} = {name}_all{self.columns(block)}",
                    {f"{name}_all", *self.columns_uses(block)},
                    all_name,
                    True,
                )

    def transposed_params(self, before: Code) -> None:
        """``W.T`` copied once before a loop: a C-ordered operand (BLAS's faster ``h @ W``
        to ``h @ W.T`` of a view, at every size measured; benchmarks/runtime.py)."""
        for name in [*self.param_names.values(), *self.concat_names.values()]:
            copy = self.new_printer({}).transposed_operand(name)
            before.add(f"{name}_T = {copy}", {name}, f"{name}_T", True)

    def reads_after(self) -> set[str]:
        """The families that something after the forward loop reads."""
        s = self.s
        exprs: list[Any] = [st.expr for st in s.forward_post]
        exprs += [s.loss.expr] if s.loss is not None else []
        exprs += [h.expr for h in s.backward_pre]
        exprs += [st.expr for st in s.backward_last + s.backward_loop]
        exprs += [st.expr for st in s.summed + s.last_only + s.looped]
        exprs += [e for e in [s.dx, *s.initial_gradients.values()] if e is not None]
        return {s.base[r] for e in exprs for r in s.step_symbols(e)}

    # -- comments -----------------------------------------------------------------
    def comment_for(self, expr: Any, loss_line: str, shift: int = 0) -> list[str]:
        """``# grad of: <forward line>`` for each forward assignment whose adjoint is read."""
        s = self.s
        lines = []
        symbols = sorted(
            (x for x in s.step_symbols(expr) if s.is_adjoint(x)),
            key=lambda x: (s.offset[x], str(x)),
        )
        groups = sorted(
            (x for x in s.step_symbols(expr) if s.role[x].startswith("group:")),
            key=lambda x: (s.offset[x], str(x)),
        )
        for symbol in groups:  # blocks of adjoints: the comments of each
            block = s.blocks[s.base[symbol]]
            for member in self.members(block, s.offset[symbol]):
                found = self.comment_for(member, loss_line, shift)
                lines += [line for line in found if line not in lines and "grad of: L" not in line]
        for symbol in symbols:
            role = s.role[symbol]
            if role.startswith("adjoint_shared:"):  # a stored product of adjoints: its own
                shared = s.family(symbol, 0)
                source = next(st for st in s.backward_loop if st.target == shared)
                found = self.comment_for(source.expr, loss_line, s.offset[symbol])
                lines += [line for line in found if line not in lines]
                continue
            primal_role = role[len("pre_adjoint_") :] if role.startswith("pre_") else role[8:]
            primal = s.index.get((primal_role, 0))
            statement = next((f for f in s.forward if f.target == primal), None)
            if statement is not None:
                line = f"# grad of: {self.line_of(statement, s.offset[symbol] + shift)}"
                if line not in lines:
                    lines.append(line)
        if not lines:
            lines.append(f"# grad of: {loss_line}")
        return lines

    def members(self, block: Any, offset: int) -> list[Any]:
        """The symbols (at ``offset``) of the one-block families inside ``block``."""
        s = self.s
        out = []
        for k in range(block.start, block.stop):
            for symbol, base in s.base.items():
                b = s.blocks.get(base)
                if (
                    b == type(block)(block.group, k, k + 1)
                    and s.offset[symbol] == offset
                    and not s.role[symbol].startswith("group:")
                ):
                    out.append(symbol)
        return out

    def reading(self, symbols: set[Any]) -> list[Stmt]:
        """The forward statements (of the cell) that read any of ``symbols``."""
        return [
            f
            for f in self.s.forward
            if f.kind not in ("output_pre_activation", "output", "loss")
            and f.expr.free_symbols & symbols
        ]

    # -- forward ------------------------------------------------------------------
    def sizes_code(self, c: Code) -> None:
        """``n_hidden = h0.shape[1]``, ``n_out = W.shape[k]``: sizes from the arguments."""
        s = self.s
        known = self.sizes
        found: dict[str, tuple[str, str]] = {}
        for state in s.states:
            name = known.get(state.now.shape[1])
            if name not in (None, "n_in", "m") and name not in found:
                found[name] = (f"{state.argument}.shape[1]", state.argument)
        for symbol, pname in s.params.items():
            for axis, dim in enumerate(symbol.shape):
                name = known.get(dim)
                if name not in (None, "n_in", "m") and name not in found:
                    found[name] = (f"{pname}.shape[{axis}]", pname)
        for name in ("n_hidden", "n_out"):
            if name in found:
                text, uses = found[name]
                c.add(f"{name} = {text}", {uses}, name, True)

    def forward_code(self) -> Code:
        s = self.s
        c = Code()
        c.add("T, m, n_in = X.shape", {"X"})
        self.sizes_code(c)
        c.add("dtype = X.dtype", {"X"}, "dtype", True)
        x = s.index[("input", 0)]
        xb = s.base[x]
        c.add(
            f"{xb}_all = {self.reshape('X', 'T * m, n_in')}",
            {"X", "T", "m", "n_in"},
            f"{xb}_all",
            True,
        )
        c.add(f"{xb}_seq = X", {"X"}, f"{xb}_seq", True)
        self._seq(xb)
        for state in s.states:
            b = s.base[state.now]
            self.buffer(c, f"{b}_seq", *self.seq_shape(state.now, 1))
            first = self.new_printer({}).set_item(f"{b}_seq", "0", state.argument)
            c.add(first, {f"{b}_seq", state.argument})
            self._seq(b, shift=1)
        after = self.reads_after()
        printer = self.new_printer(self.names_all)
        for concat in s.concats:
            name = self.concat_names[concat.symbol]
            c.add(
                f"{name} = {printer.concatenate(list(concat.parts), concat.axis)}",
                {self.param_names[x] for x in concat.symbol.free_symbols if x in self.param_names}
                | {
                    self.s.params[p]
                    for part in concat.parts
                    for p in part.free_symbols
                    if p in s.params
                },
                name,
                True,
            )
        self.group_code(c, "forward")
        self.hoisted_code(s.forward_pre, c, "")
        loop, before = Code(), Code()
        self.transposed_params(before)
        loop_targets = {st.target for st in s.forward_loop}
        for st in s.forward_loop:
            b = s.base[st.target]
            if st.target in s.alias or s.is_state(st.target) or self.stored(b):
                continue
            if b in after or any(s.family(st.target, k) is not None for k in (-1, 1)):
                self.buffer(before, f"{b}_seq", *self.seq_shape(st.target))
                self._seq(b)
            else:
                self.buffer(before, f"{b}_t", *self.shape_code(st.target.shape, False))
                self.scratch_families.add(b)
        commented: set[str] = set()
        for st in s.forward_loop:
            for line in self.fused_comments(st, commented):
                loop.add(line)
            if st.kind not in ("accumulate", "apply"):
                loop.add(f"# {self.line_of(self._source(st))}")
            self.emit_loop_statement(st, loop, before)
        c.extend(before)
        self.loop(c, loop, backward=False)
        for state in s.states:
            b = s.base[state.now]
            units, uses = self.units_code(state.now)
            item = self.new_printer({}).item
            c.add(
                f"{b}_all = {self.reshape(item(f'{b}_seq', '1:'), f'T * m, {units}')}",
                {f"{b}_seq", "T", "m", *uses},
                f"{b}_all",
                True,
            )
            c.add(
                f"{b}_prev_all = {self.reshape(item(f'{b}_seq', ':-1'), f'T * m, {units}')}",
                {f"{b}_seq", "T", "m", *uses},
                f"{b}_prev_all",
                True,
            )
        for st in s.forward_loop:
            b = s.base[st.target]
            if st.target in loop_targets and b in self.seq_index and not s.is_state(st.target):
                if st.target in s.alias or b in s.blocks:
                    continue
                units, uses = self.units_code(st.target)
                c.add(
                    f"{b}_all = {self.reshape(f'{b}_seq', f'T * m, {units}')}",
                    {f"{b}_seq", "T", "m", *uses},
                    f"{b}_all",
                    True,
                )
        if not self.m2o:
            for st in s.forward_post:
                name = self.names_all[st.target]
                self.buffer(c, name, *self.shape_code(st.target.shape, True))
                c.add(f"# {self.line_of(st)}")
                self.lower(st.expr, name, "all", c, c)
                self._seq_view(c, st.target)
        else:
            last = Code()
            for st in s.forward_post:
                last.add(f"# {self.line_of(st)}")
                self.fresh(last, self.names_step[st.target], st.expr, "step")
            c.add("t = T - 1", {"T"}, "t", True)
            c.extend(self.views(last))
            c.extend(last)
            c.extend(self.stored_back(last))
        return c

    def _source(self, st: Stmt) -> Stmt:
        return next((f for f in self.s.forward if f.target == st.target), st)

    def _seq_view(self, c: Code, symbol: Any) -> None:
        """``q_seq = q_all.reshape(T, m, n)``: per-step views of a stacked array."""
        b = self.s.base[symbol]
        units, uses = self.units_code(symbol)
        c.add(
            f"{b}_seq = {self.reshape(f'{b}_all', f'T, m, {units}')}",
            {f"{b}_all", "T", "m", *uses},
            f"{b}_seq",
            True,
        )
        self._seq(b)

    def hoisted_code(self, hoisted: list[Hoisted], c: Code, loss_line: str) -> None:
        """Arrays computed for every step at once, before a loop."""
        s = self.s
        for h in hoisted:
            name = self.names_all[h.symbol]
            block = s.blocks.get(s.base[h.symbol])
            if block is None:
                self.buffer(c, name, *self.shape_code(h.symbol.shape, True))
            whole = h.alias is not None or h.symbol == h.source.target
            members = s.fused.get(block.group, []) if block is not None else []
            if members and not self.columns(block):  # a group's parts, all of them at once
                for member in members:
                    source = self._source(member)
                    moving = sorted(
                        {self.names_step[r] for r in s.step_symbols(source.expr)}
                        - {self.names_step[r] for r in s.step_symbols(member.expr)}
                    )
                    c.add(f"# {self.line_of(source)}, without {', '.join(moving)}")
                c.add("# (all steps at once, every part in its block)")
            elif loss_line:
                lines = self.comment_for(h.expr if whole else h.source.expr, loss_line)
                if not whole:
                    lines[-1] += ", the factor without the loop's values"
                for line in lines:
                    c.add(line)
            else:
                source = self._source(h.source)
                moving = sorted(
                    {self.names_step[r] for r in s.step_symbols(source.expr)}
                    - {self.names_step[r] for r in s.step_symbols(h.expr)}
                )
                what = f", without {', '.join(moving)}" if moving else ""
                c.add(f"# {self.line_of(source)}{what}: all steps")
            self.lower(h.expr, name, "all", c, c)
            if block is None:
                self._seq_view(c, h.symbol)

    def broadcast(self, st: Stmt, code: Code) -> None:
        """``Repeat(F, j) ⊙ K`` into blocks of a group: F broadcast over the j blocks."""
        s = self.s
        (repeat,) = [a for a in st.expr.args if isinstance(a, Repeat)]
        (blocks,) = [a for a in st.expr.args if not isinstance(a, Repeat)]
        moving, uses = self.code_of(repeat.arg, "loop")
        parts = []
        for symbol in (blocks, st.target):
            block = s.blocks[s.base[symbol]]
            group = s.groups[block.group]
            index = self.seq_index[block.group]("@", s.offset[symbol])
            span = f"{block.start}:{block.stop}" if block.stop - block.start < group.count else ":"
            name = f"{self.names_step[symbol]}3"  # the blocks as (m, blocks, units)
            self.extra_views[name] = (
                f"{block.group}_blocks[{index}, :, {span}]",
                {f"{block.group}_blocks"},
            )
            parts.append(name)
            uses.add(name)
        into = self.new_printer({}).call_into(
            "multiply", [f"{moving}[:, None, :]", parts[0]], parts[1]
        )
        code.add(into, uses)

    def fused_comments(self, st: Stmt, done: set[str]) -> list[str]:
        """The members' equations, before the first fused statement of their group."""
        s = self.s
        block = s.blocks.get(s.base.get(st.target, ""))
        if st.kind not in ("accumulate", "apply") or block is None or block.group in done:
            return []
        if block.group not in s.fused:
            return []
        done.add(block.group)
        return [f"# {self.line_of(self._source(member))}" for member in s.fused[block.group]]

    def emit_loop_statement(self, st: Stmt, code: Code, before: Code) -> None:
        """A loop statement: in place into its storage (accumulated into a hoisted array)."""
        s = self.s
        target = self.names_step[st.target]
        if st.kind == "accumulate":
            self.accumulate(st.expr, target, code, before)
            return
        if st.kind == "broadcast":
            self.broadcast(st, code)
            return
        alias = s.alias.get(st.target)
        if alias is not None:
            terms = list(st.expr.args) if isinstance(st.expr, sp.MatAdd) else [st.expr]
            rest = [term for term in terms if term != alias]
            if len(rest) < len(terms):
                if rest:
                    self.accumulate(mexpr.add(*rest), target, code, before)
                return
        self.lower(st.expr, target, "loop", code, before)

    # -- loss ---------------------------------------------------------------------
    def total_loss(self) -> tuple[Stmt, Any]:
        assert self.s.loss is not None
        steps = sp.Integer(1) if self.m2o else T_SYMBOL
        return self.s.loss, self.d.step_form.symbols.loss_scale(steps)

    def loss_line(self) -> str:
        loss, scale = self.total_loss()
        total = sp.Symbol("_total")
        printer = self.new_printer(
            {
                **self.names_step,
                total: f"sum({self.names_step[loss.target]} for t in range(T))"
                if not self.m2o
                else self.names_step[loss.target],
            }
        )
        return f"{self.notation.loss_ascii} = {printer.doprint(scale * total)}"

    def loss_code(self) -> Code:
        c = Code()
        loss, scale = self.total_loss()
        y = self.s.index[("target", 0)]
        name = self.notation.loss_ascii
        total = sp.Symbol("_total")
        c.add(f"# {self.line_of(loss)}")
        node = loss.expr
        softmax = mexpr.Softmax(node.pre, node.axis)
        known = {softmax: self.names_step[node.pred]} if node.output == "softmax" else {}
        if self.m2o:
            c.add(f"{self.names_step[y]} = Y", {"Y"}, self.names_step[y], True)
            self.fresh(c, name, scale * loss.expr, "step", known)
        else:
            y_all = self.names_all[y]
            c.add(
                f"{y_all} = {self.reshape('Y', 'T * m, n_out')}",
                {"Y", "T", "m", "n_out"},
                y_all,
                True,
            )
            terms = f"{self.notation.loss_ascii}_terms"
            matrix = stable_loss_matrix(loss.expr)
            self.buffer(c, terms, *self.shape_code(matrix.shape, True))
            known = {softmax: self.names_all[node.pred]} if node.output == "softmax" else {}
            self.lower(matrix, terms, "all", c, c, known)
            c.add(f"# {self.loss_line()}")
            printer = self.new_printer({total: self.new_printer({}).sum_of(terms)})
            c.add(
                f"{name} = {printer.doprint(scale * total)}",
                {terms} | self._size_uses(scale),
                name,
                True,
            )
        return c

    def _size_uses(self, expr: Any) -> set[str]:
        return {self.sizes[x] for x in sp.sympify(expr).free_symbols if x in self.sizes}

    # -- backward -----------------------------------------------------------------
    def backward_code(self) -> tuple[Code, Code, dict[str, str]]:
        """The backward pass, the extra gradients (states, X), each parameter's gradient."""
        s = self.s
        c = Code()
        y = s.index[("target", 0)]
        if self.m2o:
            c.add(f"{self.names_step[y]} = Y", {"Y"}, self.names_step[y], True)
        else:
            y_all = self.names_all[y]
            c.add(
                f"{y_all} = {self.reshape('Y', 'T * m, n_out')}",
                {"Y", "T", "m", "n_out"},
                y_all,
                True,
            )
        loss_line = self.loss_line()
        # what does not depend on the adjoints carried back from step t + 1: all steps at once
        self.group_code(c, "backward")
        self.hoisted_code(s.backward_pre, c, loss_line)
        # the loop's storage
        after = {s.base[r] for e in self._after_backward_loop() for r in s.step_symbols(e)}
        carried = {s.base[x] for x in s.carried_backward}
        storage = Code()
        for st in s.backward_loop:
            b = s.base[st.target]
            if st.target in s.alias or self.stored(b) or b in self.scratch_families:
                continue
            if b in after or b in carried:
                self.buffer(storage, f"{b}_seq", *self.seq_shape(st.target))
                self._seq(b)
            else:
                self.buffer(storage, f"{b}_t", *self.shape_code(st.target.shape, False))
                self.scratch_families.add(b)
        c.extend(storage)

        # gradients: summed over the steps by one product, at the last step, or in the loop
        gradients: dict[str, str] = {}
        contributed = {st.param for st in s.summed + s.last_only + s.looped}
        printer = self.new_printer(self.sizes)
        for name in self.param_names.values():
            split = s.splits.get(name)
            if split is not None:
                a = str(printer.doprint(split.index * split.width)) if split.index else ""
                b = str(printer.doprint((split.index + 1) * split.width))
                rows = spaced_slice(a, b) if split.axis == 0 else f":, {spaced_slice(a, b)}"
                gradients[name] = f"{split.symbol.name}[{rows}]"
            elif name in contributed:
                gradients[name] = "d" + name
            else:
                gradients[name] = f"{self.function('numpy.zeros_like')}({name})"

        # the last step (t = T - 1): no adjoint from step t + 1
        block = Code()
        for st in s.backward_last:
            for line in self.comment_for(st.expr, loss_line):
                block.add(line)
            b = s.base[st.target]
            if st.kind == "broadcast":
                self.broadcast(st, block)
            elif self.stored(b) or b in self.scratch_families:
                self.lower(st.expr, self.names_step[st.target], "step", block, c)
            else:
                self.fresh(block, self.names_step[st.target], st.expr, "step")
        previous: list[str] = []
        looped = {str(st.param) for st in s.looped}
        for st in s.last_only:
            comments = self.comment_for(st.expr, loss_line)
            for line in comments if comments != previous else []:
                block.add(line)
            previous = comments
            self.fresh(block, gradients[str(st.param)], st.expr, "step")
        for name in sorted(looped - {str(st.param) for st in s.last_only}):
            zeros = self.function("numpy.zeros_like")
            block.add(f"d{name} = {zeros}({name})", {name}, f"d{name}")
        c.add("# the last step: no adjoint from step t + 1")
        c.add("t = T - 1", {"T"}, "t", True)
        c.extend(self.views(block))
        c.extend(block)
        c.extend(self.stored_back(block))

        # the loop, t = T - 2, ..., 0
        loop, before = Code(), Code()
        self.transposed_params(before)
        for st in s.backward_loop:
            for line in self.comment_for(st.expr, loss_line):
                loop.add(line)
            self.emit_loop_statement(st, loop, before)
        for st in s.looped:
            for line in self.comment_for(st.expr, loss_line):
                loop.add(line)
            self.accumulate(st.expr, f"d{st.param}", loop, before)
        c.extend(before)
        self.loop(c, loop, backward=True)
        for st in s.backward_loop:
            b = s.base[st.target]
            if not self.read_back_after_loop(st.target):
                continue
            if b not in self.seq_index or b in s.blocks:
                continue
            units, uses = self.units_code(st.target)
            line = f"{b}_all = {self.reshape(f'{b}_seq', f'T * m, {units}')}"
            if line not in c.lines():
                c.add(line, {f"{b}_seq", "T", "m", *uses}, f"{b}_all", True)
        groups: dict[str, list[Stmt]] = {}
        for st in s.summed:
            comment = "\n".join(self.comment_for(st.expr, loss_line))
            groups.setdefault(comment, []).append(st)
        for comment, statements in groups.items():
            for line in comment.split("\n"):
                c.add(line)
            for st in statements:
                target = gradients[str(st.param)] if st.param else str(st.target.name)
                self.fresh(c, target, self._summed_form(st.expr), "all")
        return c, self.extras_code(), gradients

    def _summed_form(self, expr: Any) -> Any:
        """``(A ⊙ B)^T C`` rather than ``(A^T ⊙ B^T) C`` for the printed sum over the steps."""
        terms = list(expr.args) if isinstance(expr, sp.MatAdd) else [expr]
        out = []
        for term in terms:
            coeff, mats = mexpr.split_scale(term)
            if isinstance(mats, sp.MatMul):
                factors = list(mats.args)
                if not isinstance(factors[0], (sp.Transpose, sp.MatrixSymbol)):
                    factors[0] = sp.Transpose(transpose(factors[0]))
                out.append(mexpr.scale(coeff, mexpr.matmul(*factors)))
            else:
                out.append(term)
        return mexpr.add(*out)

    def _after_backward_loop(self) -> list[Any]:
        s = self.s
        exprs = [st.expr for st in s.summed]
        exprs += [e for e in [s.dx, *s.initial_gradients.values()] if e is not None]
        return exprs

    def extras_code(self) -> Code:
        """dX (all steps at once) and the initial states' gradients (at the first step)."""
        s = self.s
        extras = Code()
        x = s.index[("input", 0)]
        for f in self.reading({x}):
            extras.add(f"# grad of: {self.line_of(f)}, of {self.names_step[x]}")
        if s.dx is None:
            extras.add(f"dX = {self.function('numpy.zeros_like')}(X)", {"X"}, "dX", True)
        else:
            printer = self.new_printer(self.names_all)
            text = f"dX = {self.reshape(f'({printer.doprint(s.dx)})', 'T, m, n_in')}"
            if len(text) + 4 <= WIDTH:
                extras.add(text, printer.used | {"T", "m", "n_in"}, "dX", True)
            else:
                self.fresh(extras, "dX_all", s.dx, "all")
                extras.add(
                    f"dX = {self.reshape('dX_all', 'T, m, n_in')}",
                    {"dX_all", "T", "m", "n_in"},
                    "dX",
                    True,
                )
        for state in s.states:
            name = f"d{state.argument}"
            for f in self.reading({state.prev}):
                extras.add(f"# grad of: {self.line_of(f)} at the first step, of {state.argument}")
            value = s.initial_gradients.get(state.key)
            if value is None:
                seq = f"{s.base[state.now]}_seq"
                zeros = self.function("numpy.zeros_like")
                extras.add(f"{name} = {zeros}({seq}[0])", {seq}, name, True)
                continue
            names = dict(self.names_step)
            uses: set[str] = set()
            for symbol in s.step_symbols(value):
                found = self.view_code(symbol, "0")
                if found is not None:
                    names[symbol], used = found
                    uses |= used
            for part, text, used in fit(name, value, self.new_printer, names):
                extras.add(f"{part} = {text}", used | uses, part, True)
        return extras

    # -- the module ---------------------------------------------------------------
    def build(self) -> dict[str, Any]:
        forward = self.forward_code()
        loss = self.loss_code()
        backward, extras, gradients = self.backward_code()
        loss_name = self.notation.loss_ascii
        s = self.s
        output = s.index[("output", 0)]
        prediction = self.names_step[output] if self.m2o else self.names_all[output]
        finals = {state.key: f"{s.base[state.now]}_seq" for state in s.states}
        outputs = [f"d{state.argument}" for state in s.states]
        parts = assemble(
            forward,
            loss,
            backward,
            extras,
            gradients,
            self.param_names.values(),
            loss_name,
            {prediction, *finals.values()},
            outputs,
        )
        return parts | {
            "prediction": prediction,
            "prediction_stacked": not self.m2o,
            "finals": finals,
        }
