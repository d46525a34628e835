"""The rolled JAX module's code: the same schedule as NumPy's, printed functionally.

:class:`~symbptt.codegen.numpy_rolled.RolledModule` writes every array in
place (a loop's ``q_t`` is a view of ``q_seq``).  JAX arrays are immutable,
so this subclass changes what a write is, and nothing else:

* a statement is ``q = <expression>`` (split into named parts where long),
  never a NumPy call into ``out=``;
* the arrays of the workspace are only the stacked ones the steps are
  stored into (``q_seq = jnp.zeros(...)``); every other array is the value
  of its statement;
* a loop is one ``jax.lax.scan`` over ``t`` whose carry is the stacked
  arrays the steps store into (``q_seq = jax.lax.dynamic_update_index_in_dim(
  q_seq, q_t, t + 1, 0)``, in place under XLA) and the values one step passes
  to the next (``h_prev`` forward, ``delta_next`` backward), carried as they
  are rather than read back from the stacked array: a step that read and wrote
  one stacked array made XLA copy the whole array at every step.  (Python
  loops traced by ``jax.jit`` were straight-line code T steps long: compiled
  in 26 s for the LSTM at T = 50, and no faster to run.)

JAX prints the plain schedule.  The fused one (blocks of one wide product
written through views) is written in place, through aliasing views, which a
functional printer cannot follow as it stands; XLA fuses the elementwise work
but does not merge the gates' products (the LSTM's optimized HLO has four dots
a step forward and four backward, and 23 in all where JAX autodiff's has 15).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..core.derive import Derivation
from ..model.spec import ModelSpec
from .jax_printer import JaxPrinter
from .lines import Code, SharedPrinter
from .numpy_rolled import RolledModule
from .scan import tuple_line

__all__ = ["JaxRolledModule"]


class JaxRolledModule(RolledModule):
    """The function bodies of the rolled JAX module of one derivation."""

    def __init__(
        self, spec: ModelSpec, d: Derivation, printer: type[SharedPrinter] = JaxPrinter
    ) -> None:
        super().__init__(spec, d, fuse=False, printer=printer)
        if self.s.groups:  # pragma: no cover -- the plain schedule has no groups
            raise AssertionError("the plain schedule has groups")
        self.accumulated: set[str] = set()

    # -- writes -------------------------------------------------------------------
    def buffer(self, code: Code, name: str, shape: str, uses: Iterable[str]) -> None:
        """Zeros for the stacked arrays the steps are stored into; nothing for the others
        (each is the value of the statement that writes it)."""
        if self.stacked_storage(name):
            zeros = self.function("numpy.zeros")
            code.add(f"{name} = {zeros}({shape}, dtype=dtype)", {"dtype", *uses}, name, True)

    def stacked_storage(self, name: str) -> bool:
        """Whether the array ``name`` is the stacked storage of a family (``q_seq``)."""
        return any(name == f"{base}_seq" for base in set(self.s.base.values()))

    def lower(
        self,
        expr: Any,
        target: str,
        context: str,
        code: Code,
        scratch_code: Code,
        extra: Mapping[Any, str] | None = None,
    ) -> None:
        """``target = expr``: a new array (JAX writes none in place)."""
        self.fresh(code, target, expr, context, extra)

    def accumulate(self, expr: Any, target: str, code: Code, before: Code) -> None:
        self.accumulated.add(target)
        super().accumulate(expr, target, code, before)

    # -- steps --------------------------------------------------------------------
    def views(self, body: Code, t: str = "t") -> Code:
        """``q_t = q_seq[t]`` for the step values ``body`` reads before it writes them."""
        read_first: set[str] = set()
        defined: set[str] = set()
        for _, uses, defines, _ in body.entries:
            read_first |= uses - defined
            if defines is not None:
                defined.add(defines)
        views = super().views(body, t)
        return Code([entry for entry in views.entries if entry[2] in read_first])

    def stored_back(self, body: Code, t: str = "t") -> Code:
        """``q_seq = q_seq.at[t].set(q_t)`` for each step value with storage ``body`` wrote."""
        s = self.s
        written = set(body.defines) | (self.accumulated & body.uses)
        out = Code()
        printer = self.new_printer({})
        for symbol, name in sorted(self.names_step.items(), key=lambda kv: kv[1]):
            if name not in written or symbol not in s.base:
                continue
            base = s.base[symbol]
            if base not in self.seq_index or not self.read_again(name):
                continue
            seq = f"{base}_seq"
            index = self.seq_index[base](t, s.offset[symbol])
            line = printer.set_step(seq, index, name)
            if line not in out.lines(0):  # two symbols of one step value: one store
                out.add(line, {seq, name, t}, seq)
        return out

    def read_again(self, name: str) -> bool:
        """Whether the step value ``name``'s storage is read after its own step: by a
        neighbouring step, or after the loops.  A loop statement that adds to a hoisted
        array (an alias: ``z_t = z_pre_t + ...`` into ``z_pre``'s storage) often is not;
        storing it anyway would make XLA copy the whole array at every step."""
        s = self.s
        aliases = [x for x, n in self.names_step.items() if n == name and x in s.alias]
        if not aliases:
            return True
        steps = s.forward_loop + s.backward_last + s.backward_loop + s.looped
        read = {s.base[r] for st in steps for r in s.step_symbols(st.expr) if s.offset[r]}
        read |= {s.base[r] for e in self._after_backward_loop() for r in s.step_symbols(e)}
        forward = {st.target for st in s.forward_loop}
        if any(x in forward for x in aliases):  # read after the forward loop
            read |= self.reads_after()
        return any(s.base[x] in read for x in aliases)

    def read_back_after_loop(self, symbol: Any) -> bool:
        """Also an alias of a hoisted array (``dh_t`` adding into ``dh_all``'s storage)
        that the loop stores into ``q_seq``: ``q_all`` is no view of it here, and the
        code after the loop read the array from before the loop."""
        if symbol not in self.s.alias:
            return True
        return self.read_again(self.names_step[symbol])

    def recurrences(self, views: Code, body: Code, backward: bool) -> dict[str, str]:
        """The step values a loop step reads from what the step before it wrote: read
        name -> the name the step writes it as (``h_prev`` -> ``h_t`` forward,
        ``delta_next`` -> ``delta_t`` backward).

        A read of ``q_seq`` at step ``t`` is a recurrence when the neighbouring step
        (``t - 1`` forward, ``t + 1`` backward) stores ``q_seq`` at that index.  The
        scan carries such a value itself instead of reading it back from the stacked
        array: a step that reads and writes one stacked array made XLA copy the whole
        array at every step (the LSTM's ``h_seq``: one copy of (T + 1, m, n_hidden) a
        step), while one that only writes it updates it in place.
        """
        s = self.s
        written = set(body.defines) | (self.accumulated & body.uses)
        stores: dict[tuple[str, str], str] = {}  # (base, index at step t) -> name stored
        for symbol, name in self.names_step.items():
            if name in written and symbol in s.base and s.base[symbol] in self.seq_index:
                base = s.base[symbol]
                stores[(base, self.seq_index[base]("t", s.offset[symbol]))] = name
        step = -1 if backward else 1  # the next step's t is t + step
        out: dict[str, str] = {}
        read = set(views.defines)
        for symbol, name in self.names_step.items():
            if name not in read or symbol not in s.base or s.base[symbol] not in self.seq_index:
                continue
            base = s.base[symbol]
            index = self.seq_index[base]("t", s.offset[symbol] + step)  # its next step's read
            stored = stores.get((base, index))
            if stored is not None and stored != name and self.read_again(stored):
                out[name] = stored
        return out

    def loop(self, c: Code, body: Code, backward: bool) -> None:
        """The steps as one ``jax.lax.scan`` over ``t`` (backward: ``T - 2, ..., 0``): a
        nested function whose carry is what the steps write and read again (the stacked
        arrays they store into, the gradients they add to) and the values a step passes
        to the next (:meth:`recurrences`: read from the carry, not from the stacked
        array), the step's reads and stores around ``body``.  XLA compiles one step, not
        T of them, and updates the carry in place."""
        views = self.views(body)
        recurrent = self.recurrences(views, body, backward)
        inner = Code()
        inner.extend(Code([entry for entry in views.entries if entry[2] not in recurrent]))
        inner.extend(body)
        inner.extend(self.stored_back(body))
        before = set(c.defines)
        step_names = set(self.names_step.values())
        written = set(inner.defines) | (self.accumulated & body.uses)
        stacked = sorted(name for name in written & before if name not in step_names)
        if not stacked:  # pragma: no cover -- a loop that writes nothing is pruned away
            raise AssertionError("a loop whose steps carry nothing")
        for symbol, name in sorted(self.names_step.items(), key=lambda kv: kv[1]):
            if name in recurrent and symbol in self.s.base:  # the first step's, before the loop
                base = self.s.base[symbol]
                offset = self.s.offset[symbol]
                # the first step: t = T - 2 backward (the index at T - 1, one less), 0 forward
                first = ("T - 1", offset - 1) if backward else ("0", offset)
                index = self.seq_index[base](*first)
                c.add(f"{name} = {base}_seq[{index}]", {f"{base}_seq", "T"}, name)
        carry = stacked + sorted(recurrent)
        returned = stacked + [recurrent[name] for name in sorted(recurrent)]
        step = "backward_step" if backward else "forward_step"
        steps = f"{self.function('numpy.arange')}({'T - 1' if backward else 'T'})"
        reverse = ", reverse=True" if backward else ""
        reads = inner.uses - set(inner.defines) - {"t", *carry}
        after = [name if name in stacked else "_" for name in carry]
        c.add("")
        if len(carry) == 1:
            (name,) = carry
            c.add(f"def {step}({name}, t):", set())
            c.extend(inner, indent=1)
            c.add(f"    return {returned[0]}, None", set())
            c.add("")
            scan = f"jax.lax.scan({step}, {name}, {steps}{reverse})"
            c.add(f"{name}, _ = {scan}", {name, "T", *reads})
            return
        function = Code()
        function.add(tuple_line(carry, "", " = carry", 8), set())
        function.extend(inner)
        function.add(tuple_line(returned, "return ", ", None", 8), set())
        c.add(f"def {step}(carry, t):", set())
        c.extend(function, indent=1)
        c.add("")
        c.add(tuple_line(carry, "carry = ", "", 4), set(carry))
        c.add(f"carry, _ = jax.lax.scan({step}, carry, {steps}{reverse})", {"T", *reads})
        c.add(tuple_line(after, "", " = carry", 4), set())
