"""Lines of generated code: statements that fit the line, and in-place lowering.

* :class:`Code` holds lines with the names each reads and defines, so unused
  pure lines (views, workspace arrays) are pruned;
* :func:`fit` prints ``target = expr`` and names subexpressions first while a
  line is longer than :data:`WIDTH`;
* :class:`Lowering` writes an expression into an existing array, one NumPy
  call per line (``np.dot(a, b, out=z)``, ``z += b``): no full-size temporary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.core.symbol import Str
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from ..expr import mexpr
from .numpy_printer import (
    LogSumExp,
    NumPyPrinter,
    SumEntries,
    flatten_matmul,
    helper_form,
    matmul_form,
    stable_loss_matrix,
)

__all__ = [
    "WIDTH",
    "Code",
    "Lowering",
    "SharedPrinter",
    "atomic",
    "fit",
    "fit_lines",
    "layout",
    "spaced_slice",
    "unused_name",
    "wrap_assignment",
]


@dataclass
class Code:
    """Lines of generated code, each with the names it reads and the name it defines.

    A *pure* line only defines its name (a view, a reshape, a workspace
    array): :meth:`prune` drops it when nothing after it reads the name.
    """

    entries: list[tuple[str, frozenset[str], str | None, bool]] = field(default_factory=list)

    def add(
        self, line: str, uses: Iterable[str] = (), defines: str | None = None, pure: bool = False
    ) -> None:
        self.entries.append((line, frozenset(uses), defines, pure))

    def extend(self, other: Code, indent: int = 0) -> None:
        pad = "    " * indent
        self.entries += [
            ("\n".join(pad + part if part else part for part in line.split("\n")), uses, name, pure)
            for line, uses, name, pure in other.entries
        ]

    @property
    def uses(self) -> set[str]:
        return set().union(*(uses for _, uses, _, _ in self.entries)) if self.entries else set()

    @property
    def defines(self) -> list[str]:
        return [d for _, _, d, _ in self.entries if d is not None]

    def prune(self, live: Iterable[str]) -> Code:
        """Drop pure lines whose name nothing later (nor ``live``) reads, and their comments."""
        needed = set(live)
        keep = [True] * len(self.entries)
        for i in reversed(range(len(self.entries))):
            _, uses, defines, pure = self.entries[i]
            if pure and defines is not None and defines not in needed:
                keep[i] = False
                continue
            needed |= uses
        for i, (line, _, _, _) in enumerate(self.entries):
            if line.strip().startswith("#"):
                following = next(
                    (
                        j
                        for j in range(i + 1, len(self.entries))
                        if not self.entries[j][0].strip().startswith("#")
                    ),
                    None,
                )
                keep[i] = following is not None and keep[following]
        return Code([entry for entry, kept in zip(self.entries, keep, strict=True) if kept])

    def lines(self, indent: int = 4) -> list[str]:
        """The lines, each laid out as ``ruff format`` would at ``indent`` more spaces."""
        out = []
        for line, _, _, _ in self.entries:
            for part in line.split("\n"):
                out += layout(part, indent).split("\n")
        return out


def layout(line: str, indent: int = 4) -> str:
    """``line`` (inside a function body: ``indent`` spaces more) within :data:`WIDTH`.

    An assignment ``name = ...`` or a call statement too long is split at its
    last brackets, as ``ruff format`` splits it; comments and other lines stay.
    """
    text = line.lstrip(" ")
    pad = line[: len(line) - len(text)]
    at = indent + len(pad)
    if at + len(text) <= WIDTH or text.startswith("#"):
        return line
    target, sep, rhs = text.partition(" = ")
    if text.startswith("def ") and text.endswith("):"):
        head, _, body = text[:-2].partition("(")
        wrapped = _split_brackets(head + "(", body, "):", at)
    elif text.startswith("return ") and text.endswith("}") and "{" in text:
        head, _, body = text[:-1].rpartition("{")
        wrapped = _split_brackets(head + "{", body, "}", at, explode=True)
    elif sep and all(part.strip().isidentifier() for part in target.split(",")):
        wrapped = wrap_assignment(target, rhs, at)
    elif text.endswith(")") and "(" in text and _callee(text.split("(", 1)[0]):
        head, _, body = text[:-1].partition("(")
        wrapped = _split_brackets(head + "(", body, ")", at)
    else:
        return line
    return "\n".join(pad + part for part in wrapped.split("\n"))


def _callee(head: str) -> bool:
    """``f``, ``a.f`` or ``return a.f``: a call statement ruff format splits at its brackets."""
    return head.removeprefix("return ").replace(".", "").isidentifier()


def fit_lines(source: str) -> str:
    """A rendered module with each line longer than :data:`WIDTH` laid out by :func:`layout`.

    Templates write a signature or a call on one line; a composed model's many
    initial states make some too long, and this splits them as ``ruff format`` does.
    """
    lines = source.split("\n")
    if all(len(line) <= WIDTH for line in lines):
        return source
    return "\n".join(layout(line, 0) if len(line) > WIDTH else line for line in lines)


def _split_brackets(head: str, body: str, close: str, indent: int, explode: bool = False) -> str:
    """``head`` / body / ``close`` on three lines, or the body's items one a line (always
    for a collection literal, ``explode``: ruff format splits a dict one item a line)."""
    if not explode and indent + 4 + len(body) <= WIDTH:
        return "\n".join([head, "    " + body, close])
    lines = [head]
    for part in _items(body):
        if indent + 4 + len(part) + 1 > WIDTH and part[:1] == "[" and part[-1:] == "]":
            # a list too long for its line: its items one a line in turn
            inner = _split_brackets("[", part[1:-1], "],", indent + 4, explode=True)
            lines.extend("    " + line for line in inner.split("\n"))
        else:
            lines.append("    " + part + ",")
    return "\n".join([*lines, close])


def spaced_slice(start: str, stop: str) -> str:
    """``a:b`` spaced as ``ruff format`` spaces it (``n : 2 * n`` around a complex bound)."""
    if " " in start or " " in stop:
        return (
            f"{start} : {stop}".strip()
            if start and stop
            else (f"{start} :" if start else f": {stop}")
        )
    return f"{start}:{stop}"


def wrap_assignment(target: str, rhs: str, indent: int) -> str:
    """``target = rhs``, on several lines as ``ruff format`` lays it out when it is too long.

    The last pair of brackets is split (their content on one line, else one
    item a line with a trailing comma); when even ``target = head(`` is too long
    the right-hand side goes in parentheses.
    """
    line = f"{target} = {rhs}"
    if indent + len(line) <= WIDTH:
        return line
    if rhs[-1:] not in (")", "]"):  # no bracket to split at: the whole in parentheses
        fits = indent + 4 + len(rhs) <= WIDTH
        return "\n".join([f"{target} = (", "    " + rhs, ")"]) if fits else line
    close = rhs[-1]
    opening = {")": "(", "]": "["}[close]
    depth = 0
    for j in range(len(rhs) - 1, -1, -1):
        if rhs[j] in ")]":
            depth += 1
        elif rhs[j] in "([":
            depth -= 1
            if depth == 0:
                break
    if rhs[j] != opening:
        return line
    subscript = close == "]" and j > 0 and (rhs[j - 1].isalnum() or rhs[j - 1] in "_)]")
    if subscript and _operators(rhs[:j]):  # ruff does not split a subscript of an operand
        return _parenthesized(target, rhs, indent)
    head, body = rhs[: j + 1], rhs[j + 1 : -1]
    first = f"{target} = {head}"
    if indent + len(first) <= WIDTH:
        return _split_brackets(first, body, close, indent)
    if indent + 4 + len(rhs) <= WIDTH:
        return "\n".join([f"{target} = (", "    " + rhs, ")"])
    return line


#: Binary operators by how loosely they bind: ``ruff format`` splits at the loosest.
_LOOSEST = ((" + ", " - "), (" * ", " @ ", " / "))


def _operators(text: str) -> list[int]:
    """Where the loosest binary operators of ``text`` at bracket depth 0 stand."""
    depth, found = 0, []
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and char == " ":
            found.append((i, text[i : i + 3]))
    for operators in _LOOSEST:
        chosen = [i for i, op in found if op in operators]
        if chosen:
            return chosen
    return []


def _parenthesized(target: str, rhs: str, indent: int) -> str:
    """``target = (rhs)`` over lines: ``rhs`` on one, else split before each of its loosest
    operators, as ``ruff format`` lays out a long binary expression."""
    if indent + 4 + len(rhs) <= WIDTH:
        return "\n".join([f"{target} = (", "    " + rhs, ")"])
    lines, start = [], 0
    for i in _operators(rhs):
        lines.append(rhs[start:i].strip())
        start = i + 1  # the operator starts the next line
    lines.append(rhs[start:].strip())
    return "\n".join([f"{target} = (", *("    " + part for part in lines), ")"])


def _items(body: str) -> list[str]:
    """The comma-separated items of ``body`` at bracket depth 0."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(body):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(body[start:i].strip())
            start = i + 1
    items.append(body[start:].strip())
    return [item for item in items if item]


class SharedPrinter(NumPyPrinter):
    """The NumPy printer sharing one set of helpers across a module's printers."""

    #: Whether an array of every step made anew at each call costs little: a product over
    #: every step before a loop then beats a product a step in it.  Not for NumPy or
    #: torch on the CPU, whose large new arrays are new pages at every call (JAX's are
    #: XLA's buffers, planned once per compilation).
    cheap_arrays_of_steps = False

    def __init__(self, names: Mapping[Any, str], helpers: set[str] | None = None) -> None:
        super().__init__(names)
        if helpers is not None:
            self.helpers = helpers

    def loops(self, code: Code) -> Code:
        """A function body's ``for t in range(...)`` loops as this backend runs them:
        Python loops, as printed (JAX's: ``jax.lax.scan``)."""
        return code

    def steps_array(self, name: str, shape: str, dtype: str) -> list[tuple[str, set[str]]]:
        """The statements (and the names they read) making ``name``, an array of the steps
        0..T+1 whose steps 1..T the caller writes and whose two ends must be zero: new
        zeros (torch's: an empty array and its ends zeroed)."""
        return [(f"{name} = {self.zeros(shape, dtype)}", set())]


WIDTH = 88  # ruff format's default line length: printed lines never need wrapping


def _trivial(expr: Any) -> bool:
    if not isinstance(expr, sp.Basic) or isinstance(expr, (sp.Lambda, Str)):
        return True
    if isinstance(expr, sp.Transpose):
        return isinstance(expr.arg, (sp.MatrixSymbol, sp.OneMatrix))
    return bool(expr.is_Atom or isinstance(expr, (sp.MatrixSymbol, sp.OneMatrix)))


def _children(expr: Any, trivial: Callable[[Any], bool] = _trivial) -> list[Any]:
    """The subexpressions a long line can be split at (with runs of atoms grouped): each
    one not ``trivial``, else (all are) the first half of a sum's or a product's terms."""
    if isinstance(expr, mexpr.OutputLoss):
        return []
    if isinstance(expr, ElementwiseApplyFunction):
        args = [expr.expr]
    else:
        args = [a for a in expr.args if isinstance(a, sp.Basic)]
    compound = [a for a in args if not trivial(a)]
    if compound or len(args) <= 2:
        return compound
    if isinstance(expr, (sp.MatAdd, sp.Add, sp.HadamardProduct, sp.Mul)):
        return [expr.func(*args[: max(2, len(args) // 2)])]  # one term would be an alias
    return []


def _descendants(expr: Any, trivial: Callable[[Any], bool] = _trivial) -> list[Any]:
    """Every subexpression a long line can be split at, outermost first."""
    out: list[Any] = []
    stack = list(reversed(_children(expr, trivial)))
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed([c for c in _children(node, trivial) if c in node.args]))
    return out


#: How many namings in a row may leave a line no shorter before it is left long (a part
#: of equal length can let a later grouping fit; renaming a part forever cannot).
_MAX_STALLS = 3


def fit(
    target: str,
    expr: Any,
    new_printer: Callable[[dict[Any, str]], SharedPrinter],
    names: dict[Any, str],
    indent: int = 4,
    counter: list[int] | None = None,
) -> list[tuple[str, str, set[str]]]:
    """``target = expr`` as statements ``(name, code, names read)`` that each fit in :data:`WIDTH`.

    While a line is too long, the smallest subexpression whose naming makes it
    fit (else the largest) is assigned first to ``<target>_part<k>``; ``counter``
    (one number in a list) numbers the parts when several calls share a target.
    """
    counter = [0] if counter is None else counter
    if isinstance(expr, sp.Basic):
        losses = expr.atoms(mexpr.OutputLoss)
        expr = expr.xreplace({n: SumEntries(stable_loss_matrix(n)) for n in losses})
    names = dict(names)
    pending = [(target, expr)]
    out: list[tuple[str, str, set[str]]] = []
    stalls: dict[str, tuple[int, int]] = {}  # name -> (its shortest line, namings since)
    while pending:
        name, current = pending.pop()
        printer = new_printer(names)
        code = str(printer.doprint(current))
        excess = indent + len(name) + 3 + len(code) - WIDTH
        part = f"{target}_part{counter[0] + 1}"

        def trivial(e: Any, names: dict[Any, str] = names, part: str = part) -> bool:
            # naming what prints no longer than the part's name cannot shorten the line
            # (it would print an alias, ``x_part5 = x_part3``, or ``x_part2 = b.T``)
            return _trivial(e) or len(str(new_printer(names).doprint(e))) <= len(part)

        candidates = _descendants(current, trivial) if excess > 0 else []
        if not candidates:
            out.append((name, code, set(printer.used)))
            continue
        best, stalled = stalls.get(name, (len(code) + 1, -1))
        stalls[name] = (len(code), 0) if len(code) < best else (best, stalled + 1)
        if stalls[name][1] > _MAX_STALLS:  # naming parts no longer shortens it: it stays long
            out.append((name, code, set(printer.used)))
            continue
        counter[0] += 1
        lengths = [len(str(new_printer(names).doprint(c))) for c in candidates]
        enough = [(length, i) for i, length in enumerate(lengths) if length - len(part) >= excess]
        child = candidates[min(enough)[1] if enough else lengths.index(max(lengths))]
        symbol = sp.MatrixSymbol(part, *child.shape) if mexpr.is_matrix(child) else sp.Symbol(part)
        names[symbol] = part
        if child in current.args or child not in _children(current, trivial):
            replaced = current.xreplace({child: symbol})
        else:  # a run of atoms grouped by _children
            grouped = set(child.args)
            replaced = current.func(symbol, *(a for a in current.args if a not in grouped))
        if replaced == current:
            out.append((name, code, set(printer.used)))
            continue
        pending.append((name, replaced))
        pending.append((part, child))
    return out


def _constant(expr: Any) -> bool:
    """An all-ones matrix times a number: a scalar constant added to every entry."""
    if isinstance(expr, sp.OneMatrix):
        return True
    if isinstance(expr, sp.MatMul):
        _, mats = flatten_matmul(expr)
        return len(mats) == 1 and isinstance(mats[0], sp.OneMatrix)
    return False


def unused_name(wanted: str, taken: set[str]) -> str:
    """``wanted``, or ``wanted2``, ``wanted3``, ... if taken; the name is added to ``taken``."""
    name, k = wanted, 1
    while name in taken:
        k += 1
        name = f"{wanted}{k}"
    taken.add(name)
    return name


def atomic(expr: Any) -> bool:
    """An operand that is printed without computing a new full-size array."""
    if not mexpr.is_matrix(expr) or _constant(expr):
        return True
    if isinstance(expr, (sp.MatrixSymbol, sp.OneMatrix, LogSumExp)):
        return True
    if isinstance(expr, sp.Transpose):
        return isinstance(expr.arg, sp.MatrixSymbol)
    if isinstance(expr, sp.MatMul):
        coeff, mats, axis = matmul_form(expr)
        if coeff != 1:
            return False
        if axis is not None:
            return True
        return len(mats) == 1 and atomic(mats[0])
    return False


def product_parts(expr: Any) -> tuple[str, list[Any]] | None:
    """``("dot", [a, b])`` for ``a @ b``, ``("multiply", [a, b])`` for ``a * b`` of two
    arrays (what a backend may add into an array in one call: the printer's
    ``add_into``), else None."""
    if isinstance(expr, sp.MatMul) and len(expr.args) == 2:
        function = "dot"
    elif isinstance(expr, sp.HadamardProduct) and len(expr.args) == 2:
        function = "multiply"
    else:
        return None
    named = (sp.MatrixSymbol, sp.Transpose)  # arrays, not a broadcast (b 1^T) or a number
    if not all(isinstance(a, named) and atomic(a) for a in expr.args):
        return None
    return function, list(expr.args)


class Lowering:
    """Three-address code: an expression written into an existing array, in place.

    Each line is one NumPy call (``np.dot(a, b, out=z)``, ``z += b``), so no
    full-size temporary is allocated; an operand that is itself compound is
    first written into a scratch array asked of ``scratch(shape)``.  Products
    of 2-D arrays use ``np.dot``: with ``out`` it costs less per call than
    ``np.matmul`` (the loops make many small calls) and calls the same BLAS.
    """

    def __init__(
        self,
        printer: SharedPrinter,
        scratch: Callable[[tuple[Any, Any]], str],
        indent: int = 4,
        strided: frozenset[str] = frozenset(),
    ) -> None:
        self.printer = printer
        self.scratch = scratch
        self.indent = indent
        self.strided = strided  # views np.dot cannot write into (out= must be contiguous)

    def code(self, expr: Any) -> str:
        return str(self.printer.doprint(expr))

    def fresh(self, expr: Any, code: Code) -> str:
        """The code of ``expr``; lines too long are split into named parts first."""
        names = dict(self.printer.names)
        parts = fit(self.stem, expr, self._same_printer, names, self.indent, self.counter)
        for name, text, used in parts[:-1]:
            code.add(f"{name} = {text}", used, name)
            self.printer.used |= used | {name}
        self.printer.used |= parts[-1][2]
        return parts[-1][1]

    def _same_printer(self, names: dict[Any, str]) -> SharedPrinter:
        return type(self.printer)(names, self.printer.helpers)

    def short(self, expr: Any, out: Code) -> str:
        """An atomic operand's code; a long one (a log-sum-exp) is named on a line of its own."""
        code = self.code(expr)
        if len(code) <= 40:
            return code
        text = self.fresh(expr, out)
        self.counter[0] += 1
        name = f"{self.stem}_part{self.counter[0]}"
        out.add(f"{name} = {text}", (), name)
        self.scratches.add(name)
        return name

    def statement(self, expr: Any, target: str) -> Code:
        """Lines writing ``expr`` into the array ``target`` (each line lists what all read)."""
        self.printer.used.clear()
        self.scratches: set[str] = set()
        self.target = target
        # the parts' names: ``q_t_part1`` for the entry ``q[t]``
        self.stem = target.split("[")[0] + ("_t" if "[" in target else "")
        self.counter = [0]
        code = self.assign(expr, target)
        uses = frozenset(self.printer.used | self.scratches | {target})
        return Code([(line, uses, None, False) for line, _, _, _ in code.entries])

    def operand(self, expr: Any, out: Code) -> str:
        if atomic(expr):
            return self.short(expr, out)
        buffer = self.scratch(expr.shape)
        self.scratches.add(buffer)
        out.extend(self.assign(expr, buffer))
        return buffer

    def assign(self, expr: Any, target: str) -> Code:
        code = Code()
        if atomic(expr):
            text = self.short(expr, code)
            if text != target:
                code.add(self.printer.copy_into(target, text))
            return code
        if isinstance(expr, sp.MatMul) and matmul_form(expr)[2] is not None:
            coeff, mats, axis = matmul_form(expr)
            if len(mats) == 1 and not isinstance(mats[0], sp.Transpose):
                inner = self.operand(mats[0], code)
                summed = self.printer.sum_of(inner, axis, keepdims=True)
                code.add(self.printer.assign_into(target, summed))
            else:
                body = sp.MatMul(*flatten_matmul(expr)[1])
                code.add(self.printer.assign_into(target, self.fresh(body, code)))
            self._scale(coeff, target, code)
            return code
        if isinstance(expr, sp.MatMul):
            coeff, mats, axis = matmul_form(expr)
            if axis is None and len(mats) >= 2:
                left = self.operand(mats[0], code)
                for i, factor in enumerate(mats[1:]):
                    right = self.operand(factor, code)
                    into = target
                    if i < len(mats) - 2:
                        into = self.scratch((mats[0].shape[0], factor.shape[1]))
                        self.scratches.add(into)
                    if into in self.strided:
                        code.add(self.printer.assign_into(into, f"{left} @ {right}"))
                    else:
                        code.add(self.printer.call_into("dot", [left, right], into))
                    left = into
            else:
                code.extend(self.assign(mats[0], target))
            self._scale(coeff, target, code)
            return code
        if isinstance(expr, sp.MatAdd):
            self._sum(list(expr.args), target, code)
            return code
        if isinstance(expr, sp.HadamardProduct):
            factors = list(expr.args)
            compound = [f for f in factors if not atomic(f)]
            if compound:
                code.extend(self.assign(compound[0], target))
                rest = [f for f in factors if f is not compound[0]]
            else:
                a, b = factors[0], factors[1]
                a_code, b_code = self.short(a, code), self.short(b, code)
                code.add(self.printer.call_into("multiply", [a_code, b_code], target))
                rest = factors[2:]
            for factor in rest:
                code.add(f"{target} *= {self.operand(factor, code)}")
            return code
        if isinstance(expr, sp.HadamardPower) and expr.exp == 2:
            base = self.operand(expr.base, code) if atomic(expr.base) else None
            if base is None:
                code.extend(self.assign(expr.base, target))
                base = target
            code.add(self.printer.call_into("multiply", [base, base], target))
            return code
        if isinstance(expr, ElementwiseApplyFunction):
            arg = expr.expr
            if atomic(arg):
                arg_code = self.short(arg, code)
            else:
                code.extend(self.assign(arg, target))
                arg_code = target
            call = self.printer.elementwise_into(expr, arg_code, target)
            form = helper_form(expr.function, arg.shape) if call is None else None
            if call is not None:
                code.add(call)
            elif form is not None:  # a helper's body, one NumPy call a line, in place
                placeholder, body = form
                self.printer.names[placeholder] = arg_code
                code.extend(self.assign(body, target))
                del self.printer.names[placeholder]
            else:
                placeholder = sp.MatrixSymbol("_arg", *arg.shape)
                self.printer.names[placeholder] = arg_code
                applied = expr.func(expr.function, placeholder)
                code.add(self.printer.assign_into(target, self.fresh(applied, code)))
                del self.printer.names[placeholder]
            return code
        if isinstance(expr, mexpr.Softmax):
            arg_code = self.operand(expr.arg, code)
            self.printer.helpers.add("softmax")
            code.add(self.printer.softmax_into(arg_code, expr.axis, target))
            return code
        code.add(self.printer.assign_into(target, self.fresh(expr, code)))
        return code

    def _sum(self, terms: list[Any], target: str, code: Code) -> None:
        signed = [
            (
                NumPyPrinter._negative(t),
                NumPyPrinter._negated(t) if NumPyPrinter._negative(t) else t,
            )
            for t in terms
        ]
        compound = [i for i, (_, t) in enumerate(signed) if not atomic(t)]
        if compound:
            positive = [i for i in compound if not signed[i][0]]
            base = positive[0] if positive else compound[0]
            rest = [i for i in range(len(signed)) if i != base]
            code.extend(self.assign(signed[base][1], target))
            if signed[base][0]:
                atoms = [i for i in rest if not signed[i][0] and atomic(signed[i][1])]
                if atoms:
                    first_code = self.short(signed[atoms[0]][1], code)
                    code.add(self.printer.call_into("subtract", [first_code, target], target))
                    rest.remove(atoms[0])
                else:
                    code.add(self.printer.call_into("negative", [target], target))
        else:
            order = sorted(range(len(signed)), key=lambda i: signed[i][0])
            first, second = order[0], order[1]
            a, b = self.short(signed[first][1], code), self.short(signed[second][1], code)
            if signed[first][0]:
                code.add(self.printer.call_into("add", [a, b], target))
                code.add(self.printer.call_into("negative", [target], target))
            else:
                op = "subtract" if signed[second][0] else "add"
                code.add(self.printer.call_into(op, [a, b], target))
            rest = order[2:]
        for i in rest:
            negative, term = signed[i]
            parts = None if negative else product_parts(term)
            if parts is not None:
                args = [self.short(a, code) for a in parts[1]]
                line = self.printer.add_into(parts[0], args, target)
                if line is not None:  # one call, no scratch array (torch: addcmul_)
                    code.add(line)
                    continue
            code.add(f"{target} {'-=' if negative else '+='} {self.operand(term, code)}")

    def _scale(self, coeff: Any, target: str, code: Code) -> None:
        numer, denom = sp.fraction(sp.sympify(coeff))
        if numer == -1:
            code.add(self.printer.call_into("negative", [target], target))
        elif numer != 1:
            code.add(f"{target} *= {self.code(numer)}")
        if denom != 1:
            code.add(f"{target} /= {self.code(denom)}")
