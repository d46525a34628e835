"""A small, safe language for typing matrix formulas such as BPTT gradients.

Formulas are written in Python-like syntax and turned into SymPy matrix
expressions, for example::

    sum_t((y_hat[t] - y[t]) @ h[t].T)
    sum_t(sum_k(W_hy.T @ (y_hat[t] - y[t]) * prod_j(diag(1 - h[j]**2) @ W_hh) @ x[k].T))

The text is never executed: it is parsed with :func:`ast.parse` and only the
constructs listed below are accepted.  Everything else (attribute access other
than ``.T``, lambdas, comprehensions, strings, comparisons, keyword arguments,
double-underscore names, ...) is refused with an :class:`ExpressionError` that
names the offending part and points at it with a caret.

Names
    ``W_hh``, ``b``, ...   model constants (matrices, or scalar symbols);
    ``T``, ...             integer scalars of the model (the number of steps);
    ``h[t]``, ``x[k]``     per-step quantities; they must always carry a step
                           index, e.g. ``h[t]``, ``h[t-1]``, ``delta[t+1]``,
                           ``h[0]``.  A step index is an integer expression
                           built from integers, the bound step variables
                           ``t``, ``k``, ``j``, integer scalars such as ``T``,
                           and ``+``, ``-``, ``*``.

Operators (with Python's precedence: ``.T`` and ``**`` bind tightest, then
unary ``-``, then ``@``, ``*`` and ``/`` (one level, grouped left to right, so
``A @ B * C`` is ``(A @ B) * C``), then ``+`` and ``-``)
    ``A + B``, ``A - B``   sum and difference of matrices of equal shape (or
                           of two scalars); a scalar added to a matrix
                           stands for a constant matrix of that shape, so
                           ``1 - h[t]**2`` means ``ones - h[t]**2``;
    ``A @ B``              matrix product (inner sizes must agree);
    ``A * B``              elementwise (Hadamard) product of two matrices of
                           equal shape; ``c * A`` or ``A * c`` scales by a
                           scalar;
    ``A / c``              division by a scalar; ``A / B`` elementwise
                           division of two matrices of equal shape; ``c / B``
                           is ``c`` times the elementwise reciprocal of ``B``;
    ``-A``, ``+A``         negation;
    ``A ** n``             elementwise power of a matrix by a scalar
                           exponent (ordinary power for scalars);
    ``A.T``                transpose.
    Numbers are integer and decimal literals (``2``, ``0.5``, ``1e-3``).

Functions
    The model's elementwise and helper functions, called with positional
    arguments only, e.g. ``tanh(A)``, ``exp(A)``, ``log(A)``, ``sigmoid(A)``,
    ``softmax(A)``, ``diag(v)``, ``ones(3, 1)`` (the available set depends
    on the model).

Comparisons
    ``(A > 0)``, or ``(0 < A)``, is the step function of ``A`` (1 where an
    entry is positive, else 0: ReLU's derivative), the namespace's
    ``step(A)``; any other comparison is refused.

Reducers
    ``sum_t(body)``   sum of ``body`` over every step ``t`` of the model;
    ``sum_k(body)``   inside ``sum_t``: sum over ``k`` from the first step up
                      to ``t`` (inclusive); outside ``sum_t``: over every
                      step ``k``, with ``t`` the last step (a many_to_one
                      chain, the loss at the last step only);
    ``sum_tau(body)`` inside ``sum_t``: sum over ``tau`` from ``t`` up to the
                      last step (inclusive): d2l's sum over future steps
                      Σ_{i=t}^{T} (``i`` is an LSTM's input gate, hence ``tau``);
    ``prod_j(body)``  inside ``sum_k``: the ordered matrix product
                      ``body(t) @ body(t-1) @ ... @ body(k+1)``, i.e. the
                      Jacobian chain ∂h_t/∂h_k; inside ``sum_tau``:
                      ``body(tau) @ ... @ body(t+1)``, the chain ∂h_tau/∂h_t;
                      when empty (``k == t``, ``tau == t``) it is the
                      identity matrix.  ``sum_k`` and ``sum_tau`` do not nest
                      in each other.
    The names ``t``, ``k``, ``tau`` and ``j`` are reserved: they can only be
    used inside their reducer.

Limits
    At most :data:`MAX_LENGTH` characters and :data:`MAX_DEPTH` levels of
    nesting.

Error offsets are 0-based character positions in the input text (for a
one-line formula that is the column).
"""

from __future__ import annotations

import ast
import bisect
import difflib
import inspect
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import sympy
from sympy.matrices.expressions import (
    HadamardProduct,
    Identity,
    MatAdd,
    MatMul,
    OneMatrix,
    Transpose,
    ZeroMatrix,
)

from .mexpr import HadamardPower

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "ExpressionError",
    "Namespace",
    "names_used",
    "parse",
    "syntax_tree",
]

MAX_LENGTH = 2000
"""Longest accepted input, in characters."""

MAX_DEPTH = 60
"""Deepest accepted nesting (of sub-expressions, and of brackets)."""

MAX_BITS = 20_000
"""Largest exact number (in bits) that scalar arithmetic may produce."""

MAX_EXPONENT = 1000
"""Largest absolute numeric exponent accepted for a scalar power."""

# A SymPy object (matrix expression or scalar); SymPy has no type hints.
Value = Any
Env = Mapping[str, int]

_REDUCERS: dict[str, str] = {"sum_t": "t", "sum_k": "k", "sum_tau": "tau", "prod_j": "j"}
_BOUND: dict[str, str] = {var: reducer for reducer, var in _REDUCERS.items()}

_BINOPS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.MatMult: "@",
    ast.Div: "/",
    ast.Pow: "**",
}
_REFUSED_BINOPS: dict[type[ast.operator], str] = {
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
}
_INDEX_BINOPS: dict[type[ast.operator], str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
_UNARY_SYMBOLS: dict[type[ast.unaryop], str] = {
    ast.UAdd: "+",
    ast.USub: "-",
    ast.Not: "not",
    ast.Invert: "~",
}
_DESCRIPTIONS: dict[type[ast.AST], str] = {
    ast.Lambda: "lambda expressions",
    ast.ListComp: "list comprehensions",
    ast.SetComp: "set comprehensions",
    ast.DictComp: "dict comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.Compare: "comparisons",
    ast.BoolOp: "'and' / 'or'",
    ast.IfExp: "conditional expressions (... if ... else ...)",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.Starred: "starred expressions (*x)",
    ast.Slice: "slices",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}

_NEWLINE = re.compile(r"\r\n|\r|\n")


class ExpressionError(ValueError):
    """A problem with the text of a formula.

    Attributes:
        text: the input text.
        offset: 0-based character position of the problem in ``text``, or None.
        message: one-line description, without the caret picture.

    ``str(err)`` is the message followed by the offending input line and a
    caret ``^`` under the offending position.
    """

    def __init__(self, message: str, text: str = "", offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.text = text
        self.offset = offset

    def __str__(self) -> str:
        return self.message + _caret_picture(self.text, self.offset)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.text, self.offset))


@dataclass(frozen=True)
class Namespace:
    """What a formula may refer to.

    Attributes:
        constants: name -> SymPy matrix (e.g. a MatrixSymbol) or scalar symbol.
        indexed: name -> callable that takes a concrete int step and returns the
            SymPy object for that step (it may return a ZeroMatrix, or raise
            ExpressionError, for steps outside the model).
        functions: name -> callable building a SymPy object from its positional
            arguments (e.g. an elementwise tanh of a matrix).
        steps: the concrete step indices of the model, e.g. (1, 2, 3).
        scalars: name -> int, e.g. {"T": 3}.

    When a name appears in several mappings, the lookup order is scalars,
    constants, indexed, functions.  ``t``, ``k``, ``j``, ``sum_t``, ``sum_k`` and
    ``prod_j`` are reserved by the language.
    """

    constants: Mapping[str, sympy.Basic]
    indexed: Mapping[str, Callable[[int], sympy.Basic]]
    functions: Mapping[str, Callable[..., sympy.Basic]]
    steps: tuple[int, ...]
    scalars: Mapping[str, int] = field(default_factory=dict)


def parse(text: str, ns: Namespace) -> sympy.Basic:
    """Parse ``text`` and build its SymPy expression over the namespace ``ns``.

    Raises:
        ExpressionError: for any problem with the text (syntax, unknown names,
            refused constructs, shape mismatches, limits).
    """
    tree, src = _parse_tree(text)
    _validate(tree.body, src, ns)
    return _Evaluator(src, ns).eval(tree.body, {})


def syntax_tree(text: str) -> tuple[ast.expr, Callable[[str, ast.AST], ExpressionError]]:
    """The checked syntax tree of ``text`` and a maker of errors pointing into it.

    The tree has passed the same whitelist as :func:`parse` (no namespace yet):
    other builders (the cell equations of :mod:`symbptt.model`) walk it with
    their own meaning of names, never executing anything.  ``error(message,
    node)`` returns an :class:`ExpressionError` with a caret under ``node``.

    Raises:
        ExpressionError: for syntax, limits and refused constructs.
    """
    tree, src = _parse_tree(text)
    _validate(tree.body, src, None)

    def error(message: str, node: ast.AST) -> ExpressionError:
        pos = src.binop_pos(node) if isinstance(node, ast.BinOp) else src.start(node)
        return src.error(message, pos)

    return tree.body, error


def names_used(text: str) -> frozenset[str]:
    """The identifiers (names, functions, reducers, step variables) used in ``text``.

    The text is checked for syntax, limits and refused constructs first (but
    not against a namespace).

    Raises:
        ExpressionError: as :func:`parse`.
    """
    tree, src = _parse_tree(text)
    _validate(tree.body, src, None)
    return frozenset(node.id for node in ast.walk(tree) if isinstance(node, ast.Name))


# ---------------------------------------------------------------------------
# Source positions and error pictures


def _split_lines(text: str) -> tuple[list[str], list[int]]:
    """Lines (without terminators) and their start offsets, split like Python does."""
    lines: list[str] = []
    starts: list[int] = []
    pos = 0
    for match in _NEWLINE.finditer(text):
        lines.append(text[pos : match.start()])
        starts.append(pos)
        pos = match.end()
    lines.append(text[pos:])
    starts.append(pos)
    return lines, starts


def _caret_picture(text: str, offset: int | None) -> str:
    if not text:
        return ""
    lines, starts = _split_lines(text)
    if offset is None:
        line, col = lines[0], None
    else:
        offset = min(max(offset, 0), len(text))
        row = bisect.bisect_right(starts, offset) - 1
        line = lines[row]
        col = min(offset - starts[row], len(line))
    width = 100
    begin = 0 if col is None else max(0, col - width // 2)
    end = begin + width
    shown = "".join(ch if ch == "\t" or ch.isprintable() else "?" for ch in line[begin:end])
    lead = "..." if begin > 0 else ""
    tail = "..." if end < len(line) else ""
    picture = f"\n  {lead}{shown}{tail}"
    if col is not None:
        pad = "".join("\t" if ch == "\t" else " " for ch in lead + line[begin:col])
        picture += f"\n  {pad}^"
    return picture


class _Source:
    """The input text plus conversions from AST positions to character offsets."""

    def __init__(self, text: str, shift: int) -> None:
        self.text = text
        self.shift = shift  # leading whitespace removed before parsing
        self.lines, self.starts = _split_lines(text[shift:])

    def error(self, message: str, offset: int | None) -> ExpressionError:
        return ExpressionError(" ".join(message.split()), self.text, offset)

    def _row(self, lineno: int) -> int:
        return min(max(lineno - 1, 0), len(self.lines) - 1)

    def char_offset(self, lineno: int, col: int) -> int:
        """Offset of a (1-based line, 0-based character column) position."""
        row = self._row(lineno)
        col = min(max(col, 0), len(self.lines[row]))
        return self.shift + self.starts[row] + col

    def byte_offset(self, lineno: int, col_bytes: int) -> int:
        """Offset of a (1-based line, 0-based UTF-8 byte column) AST position."""
        row = self._row(lineno)
        encoded = self.lines[row].encode("utf-8", "surrogatepass")
        col = len(encoded[: max(col_bytes, 0)].decode("utf-8", "ignore"))
        return self.shift + self.starts[row] + col

    def start(self, node: ast.AST) -> int:
        lineno = getattr(node, "lineno", None)
        col = getattr(node, "col_offset", None)
        if lineno is None or col is None:
            return self.shift
        return self.byte_offset(lineno, col)

    def end(self, node: ast.AST) -> int:
        lineno = getattr(node, "end_lineno", None)
        col = getattr(node, "end_col_offset", None)
        if lineno is None or col is None:
            return self.start(node)
        return self.byte_offset(lineno, col)

    def find_token(self, begin: int, stop: int, token: str, fallback: int) -> int:
        """Position of ``token`` after ``begin``, skipping blanks, ')' and comments."""
        text = self.text
        i = begin
        while i < min(stop, len(text)):
            if text.startswith(token, i):
                return i
            ch = text[i]
            if ch in " \t\f\r\n)\\":
                i += 1
            elif ch == "#":
                match = _NEWLINE.search(text, i)
                i = match.end() if match else len(text)
            else:
                break
        return fallback

    def binop_pos(self, node: ast.BinOp) -> int:
        symbol = _BINOPS.get(type(node.op)) or _REFUSED_BINOPS.get(type(node.op), "")
        fallback = self.start(node)
        if not symbol:
            return fallback
        return self.find_token(self.end(node.left), self.start(node.right), symbol, fallback)

    def attr_pos(self, node: ast.Attribute) -> int:
        return max(self.start(node), self.end(node) - len(node.attr))


# ---------------------------------------------------------------------------
# Parsing, limits and the whitelist


def _parse_tree(text: str) -> tuple[ast.Expression, _Source]:
    if not isinstance(text, str):
        raise ExpressionError(f"a formula must be a string, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"formula is too long: {len(text)} characters (the limit is {MAX_LENGTH})",
            text,
            MAX_LENGTH,
        )
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ExpressionError(
                    f"formula is nested too deeply: more than {MAX_DEPTH} open brackets",
                    text,
                    i,
                )
        elif ch in ")]}":
            depth = max(depth - 1, 0)
    stripped = text.lstrip(" \t\f\r\n")
    if not stripped.strip():
        raise ExpressionError("empty formula", text, 0)
    src = _Source(text, len(text) - len(stripped))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(stripped, mode="eval")
    except SyntaxError as exc:
        offset = None
        if exc.lineno is not None and exc.offset is not None:
            offset = src.char_offset(exc.lineno, exc.offset - 1)
        near = ""
        if offset is not None and offset < len(text) and not text[offset].isspace():
            near = f" at {text[offset]!r}"
        raise ExpressionError(f"syntax error{near}: {exc.msg}", text, offset) from None
    except UnicodeError as exc:
        start = getattr(exc, "start", None)
        offset = src.shift + start if isinstance(start, int) else None
        raise ExpressionError(f"invalid character in formula: {exc}", text, offset) from None
    except (RecursionError, MemoryError):
        raise ExpressionError("formula is too complex to parse", text, None) from None
    except ValueError as exc:  # e.g. null bytes on some Python versions
        raise ExpressionError(f"cannot parse formula: {exc}", text, None) from None
    _check_depth(tree, src)
    return tree, src


def _check_depth(tree: ast.Expression, src: _Source) -> None:
    """Refuse trees nested deeper than MAX_DEPTH (iteratively, no recursion)."""
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise src.error(
                f"formula is nested too deeply: more than {MAX_DEPTH} levels", src.start(node)
            )
        for child in ast.iter_child_nodes(node):
            stack.append((child, depth + 1 if isinstance(child, ast.expr) else depth))


def _is_dunder(name: str) -> bool:
    return name.startswith("__") or name.endswith("__")


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"an attribute (.{node.attr})"
    if isinstance(node, ast.Call):
        return "the result of a call"
    if isinstance(node, ast.Subscript):
        return "a subscripted expression"
    if isinstance(node, ast.Constant):
        return f"the constant {_short(repr(node.value))}"
    if isinstance(node, ast.BinOp):
        symbol = _BINOPS.get(type(node.op)) or _REFUSED_BINOPS.get(type(node.op), "?")
        return f"the operator {symbol}"
    if isinstance(node, ast.UnaryOp):
        return f"the operator {_UNARY_SYMBOLS.get(type(node.op), '?')}"
    description = _DESCRIPTIONS.get(type(node))
    if description is not None:
        return description
    return f"a {type(node).__name__} expression"


def _allowed_names(ns: Namespace) -> list[str]:
    names = sorted(set(ns.constants) | set(ns.scalars))
    names += [f"{name}[...]" for name in sorted(ns.indexed)]
    names += [f"{name}(...)" for name in sorted(ns.functions)]
    names += [f"{name}(...)" for name in _REDUCERS]
    names += list(_BOUND)
    return names


def _unknown_name(name: str, ns: Namespace, src: _Source, offset: int) -> ExpressionError:
    candidates = (
        list(ns.constants) + list(ns.scalars) + list(ns.indexed) + list(ns.functions)
    ) + list(_REDUCERS)
    close = difflib.get_close_matches(name, candidates, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    allowed = ", ".join(_allowed_names(ns))
    return src.error(
        f"unknown name {_short(repr(name), 60)}{hint}; allowed names: {allowed}", offset
    )


def _check_dunder(name: str, src: _Source, offset: int) -> None:
    if _is_dunder(name):
        raise src.error(
            f"name {name!r} is not allowed: double-underscore names are refused", offset
        )


def _kind_of_name(name: str, ns: Namespace) -> str:
    if name in _BOUND:
        return "bound"
    if name in ns.scalars:
        return "scalar"
    if name in ns.constants:
        return "constant"
    if name in ns.indexed:
        return "indexed"
    if name in ns.functions or name in _REDUCERS:
        return "function"
    return "unknown"


def _validate(root: ast.expr, src: _Source, ns: Namespace | None) -> None:
    """Walk the tree (pre-order, left to right) and refuse anything not whitelisted."""
    stack: list[ast.expr] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Constant):
            _validate_constant(node, src)
        elif isinstance(node, ast.Name):
            _validate_value_name(node, src, ns)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                symbol = _REFUSED_BINOPS.get(type(node.op), type(node.op).__name__)
                raise src.error(
                    f"operator {symbol} is not allowed; use + - * / @ **", src.binop_pos(node)
                )
            stack += [node.right, node.left]
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.UAdd, ast.USub)):
                symbol = _UNARY_SYMBOLS.get(type(node.op), type(node.op).__name__)
                raise src.error(f"operator {symbol!r} is not allowed", src.start(node))
            stack.append(node.operand)
        elif isinstance(node, ast.Attribute):
            if node.attr != "T":
                why = " (double-underscore names are refused)" if _is_dunder(node.attr) else ""
                raise src.error(
                    f"attribute .{node.attr} is not allowed{why}; only .T (transpose) is",
                    src.attr_pos(node),
                )
            stack.append(node.value)
        elif isinstance(node, ast.Subscript):
            _validate_subscript(node, src, ns)
        elif isinstance(node, ast.Call):
            _validate_call(node, src, ns)
            stack += reversed(node.args)
        elif isinstance(node, ast.Compare):
            stack.append(_compared(node, src))
        else:
            raise src.error(f"{_describe(node)} are not allowed", src.start(node))


_COMPARISONS: dict[type[ast.cmpop], str] = {
    ast.Gt: ">",
    ast.Lt: "<",
    ast.GtE: ">=",
    ast.LtE: "<=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}


def _is_zero_literal(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Constant)
        and not isinstance(node.value, bool)
        and isinstance(node.value, (int, float))
        and node.value == 0
    )


def _compared(node: ast.Compare, src: _Source) -> ast.expr:
    """The side of ``A > 0`` (or ``0 < A``) that is not zero: the step function's argument.

    Any other comparison is refused, pointing at its operator.
    """
    first = node.comparators[0]
    op_pos = _operator_pos(src, node.left, first, src.start(node))
    if len(node.ops) != 1:
        second = _operator_pos(src, first, node.comparators[1], src.start(node))
        raise src.error(
            "chained comparisons are not allowed; only (A > 0), the step function", second
        )
    op = node.ops[0]
    symbol = _COMPARISONS.get(type(op), type(op).__name__)
    if isinstance(op, ast.Gt) and _is_zero_literal(first):
        return node.left
    if isinstance(op, ast.Lt) and _is_zero_literal(node.left):
        return first
    raise src.error(
        f"the comparison {symbol} is not allowed here; only (A > 0) or (0 < A), the step "
        "function of A (1 where A is positive, else 0; also written step(A))",
        op_pos,
    )


def _operator_pos(src: _Source, left: ast.expr, right: ast.expr, fallback: int) -> int:
    """The position of the operator between ``left`` and ``right`` (the first non-blank)."""
    text = src.text
    i = src.end(left)
    while i < min(src.start(right), len(text)) and text[i] in " \t\f\r\n)":
        i += 1
    return i if i < len(text) else fallback


def _validate_constant(node: ast.Constant, src: _Source) -> None:
    value = node.value
    if isinstance(value, bool) or value is None or value is Ellipsis:
        raise src.error(f"{value!r} is not allowed; only numbers", src.start(node))
    if isinstance(value, (str, bytes)):
        kind = "string" if isinstance(value, str) else "bytes"
        raise src.error(f"{kind} literals are not allowed", src.start(node))
    if isinstance(value, complex):
        raise src.error("complex numbers are not allowed", src.start(node))
    if not isinstance(value, (int, float)):
        raise src.error(f"the constant {_short(repr(value))} is not allowed", src.start(node))


def _validate_value_name(node: ast.Name, src: _Source, ns: Namespace | None) -> None:
    offset = src.start(node)
    _check_dunder(node.id, src, offset)
    if ns is None:
        return
    kind = _kind_of_name(node.id, ns)
    if kind == "indexed":
        raise src.error(f"{node.id} needs a step index, e.g. {node.id}[t]", offset)
    if kind == "function":
        raise src.error(f"{node.id} is a function; call it, e.g. {node.id}(...)", offset)
    if kind == "unknown":
        raise _unknown_name(node.id, ns, src, offset)


def _validate_subscript(node: ast.Subscript, src: _Source, ns: Namespace | None) -> None:
    value = node.value
    if not isinstance(value, ast.Name):
        pos = src.find_token(src.end(value), src.start(node.slice), "[", src.start(node))
        raise src.error(
            f"only per-step names such as h[t] can be indexed, not {_describe(value)}", pos
        )
    offset = src.start(value)
    _check_dunder(value.id, src, offset)
    if ns is not None:
        kind = _kind_of_name(value.id, ns)
        if kind == "unknown":
            raise _unknown_name(value.id, ns, src, offset)
        if kind != "indexed":
            per_step = ", ".join(sorted(ns.indexed)) or "none"
            raise src.error(
                f"{value.id} cannot be indexed; only per-step names ({per_step}) take a step [...]",
                offset,
            )
    index = node.slice
    if isinstance(index, (ast.Slice, ast.Tuple)):
        what = "slices" if isinstance(index, ast.Slice) else "several indices"
        raise src.error(f"{what} are not allowed in {value.id}[...]", src.start(index))
    _validate_index(index, src, ns)


def _index_help(ns: Namespace | None) -> str:
    scalars = sorted(ns.scalars) if ns is not None else ["T"]
    return ", ".join([*list(_BOUND), *scalars, "integers", "+ - *"])


def _validate_index(root: ast.expr, src: _Source, ns: Namespace | None) -> None:
    stack = [root]
    while stack:
        node = stack.pop()
        offset = src.start(node)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int):
                raise src.error(
                    f"a step index must be an integer, not {_short(repr(node.value))}; "
                    f"use {_index_help(ns)}",
                    offset,
                )
        elif isinstance(node, ast.Name):
            _check_dunder(node.id, src, offset)
            if ns is None or node.id in _BOUND or node.id in ns.scalars:
                continue
            if _kind_of_name(node.id, ns) == "unknown":
                raise _unknown_name(node.id, ns, src, offset)
            raise src.error(
                f"{node.id} cannot be used in a step index; use {_index_help(ns)}", offset
            )
        elif isinstance(node, ast.BinOp) and type(node.op) in _INDEX_BINOPS:
            stack += [node.right, node.left]
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            stack.append(node.operand)
        else:
            pos = src.binop_pos(node) if isinstance(node, ast.BinOp) else offset
            raise src.error(
                f"{_describe(node)} cannot be used in a step index; use {_index_help(ns)}", pos
            )


def _validate_call(node: ast.Call, src: _Source, ns: Namespace | None) -> None:
    func = node.func
    if not isinstance(func, ast.Name):
        raise src.error(
            f"only named functions such as tanh(...) can be called, not {_describe(func)}",
            src.start(func),
        )
    offset = src.start(func)
    _check_dunder(func.id, src, offset)
    if ns is not None:
        kind = _kind_of_name(func.id, ns)
        if kind == "unknown":
            raise _unknown_name(func.id, ns, src, offset)
        if kind != "function":
            raise src.error(f"{func.id} is not a function and cannot be called", offset)
    if node.keywords:
        keyword = node.keywords[0]
        what = f"keyword argument {keyword.arg}=" if keyword.arg else "**keyword arguments"
        raise src.error(
            f"{what} is not allowed in {func.id}(...); pass arguments by position",
            src.start(keyword),
        )
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise src.error(f"*arguments are not allowed in {func.id}(...)", src.start(arg))
    if func.id in _REDUCERS and len(node.args) != 1:
        raise src.error(f"{func.id}(...) takes exactly one argument, got {len(node.args)}", offset)


# ---------------------------------------------------------------------------
# Building the SymPy expression


def _is_matrix(value: Value) -> bool:
    return bool(getattr(value, "is_Matrix", False))


def _is_zero_matrix(value: Value) -> bool:
    return isinstance(value, ZeroMatrix)


def _is_zero_scalar(value: Value) -> bool:
    return getattr(value, "is_zero", None) is True


def _shape_str(value: Value) -> str:
    rows, cols = value.shape
    return f"({rows}, {cols})"


def _same_dim(a: Any, b: Any) -> bool:
    if a == b:
        return True
    a = sympy.Integer(a) if isinstance(a, int) else a
    b = sympy.Integer(b) if isinstance(b, int) else b
    if getattr(a, "is_Integer", False) and getattr(b, "is_Integer", False):
        return False
    try:
        return bool(sympy.simplify(a - b) == 0)
    except (TypeError, ValueError, AttributeError):
        return False


def _same_shape(a: Value, b: Value) -> bool:
    return _same_dim(a.shape[0], b.shape[0]) and _same_dim(a.shape[1], b.shape[1])


def _max_bits(value: Value) -> int:
    bits = 0
    atoms = value.atoms(sympy.Rational) if isinstance(value, sympy.Basic) else ()
    for number in atoms:
        bits = max(bits, int(number.p).bit_length(), int(number.q).bit_length())
    return bits


def _broadcast(scalar: Value, shape: tuple[Any, Any]) -> Value:
    """The scalar as a constant matrix of the given shape (for ``1 - h[t]**2``)."""
    if _is_zero_scalar(scalar):
        return ZeroMatrix(*shape)
    ones = OneMatrix(*shape)
    return ones if scalar == 1 else MatMul(scalar, ones)


def _short(value: Value, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scalar_name(value: Value) -> str:
    return f"the scalar {_short(value)}"


class _Evaluator:
    def __init__(self, src: _Source, ns: Namespace) -> None:
        self.src = src
        self.ns = ns

    def fail(self, message: str, offset: int | None) -> NoReturn:
        raise self.src.error(message, offset)

    def _rethrow(self, err: ExpressionError, offset: int) -> NoReturn:
        """Re-raise an ExpressionError from a namespace callable against our text."""
        keep = err.offset is not None and err.text == self.src.text
        raise self.src.error(err.message, err.offset if keep else offset) from err

    # -- dispatch ----------------------------------------------------------

    def eval(self, node: ast.expr, env: Env) -> Value:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node, env)
        if isinstance(node, ast.BinOp):
            return self._binop(node, env)
        if isinstance(node, ast.UnaryOp):
            value = self.eval(node.operand, env)
            if isinstance(node.op, ast.UAdd):
                return value
            return self._guard(lambda: self._neg(value), "-", self.src.start(node))
        if isinstance(node, ast.Attribute):
            value = self.eval(node.value, env)
            pos = self.src.attr_pos(node)
            if not _is_matrix(value):
                self.fail(f".T needs a matrix, but got {_scalar_name(value)}", pos)
            if _is_zero_matrix(value):
                return ZeroMatrix(value.shape[1], value.shape[0])
            return self._guard(lambda: Transpose(value), ".T", pos)
        if isinstance(node, ast.Subscript):
            return self._subscript(node, env)
        if isinstance(node, ast.Call):
            return self._call(node, env)
        if isinstance(node, ast.Compare):
            return self._step(node, env)
        # Unreachable after _validate; refuse defensively.
        self.fail(f"{_describe(node)} are not allowed", self.src.start(node))

    def _guard(self, build: Callable[[], Value], what: str, offset: int) -> Value:
        """Run a SymPy constructor, turning its exceptions into ExpressionError."""
        try:
            return build()
        except ExpressionError:
            raise
        except (TypeError, ValueError, AttributeError, ArithmeticError, NotImplementedError) as e:
            raise self.src.error(f"cannot build {what}: {e}", offset) from e

    def _check_scalar(self, value: Value, what: str, offset: int) -> Value:
        if _is_matrix(value):
            return value
        if isinstance(value, sympy.Basic) and value.has(
            sympy.S.ComplexInfinity, sympy.S.NaN, sympy.S.Infinity, sympy.S.NegativeInfinity
        ):
            self.fail(f"{what} gives the non-finite value {_short(value)}", offset)
        if _max_bits(value) > MAX_BITS:
            self.fail(f"{what} gives a number that is too large (over {MAX_BITS} bits)", offset)
        return value

    # -- leaves ------------------------------------------------------------

    def _constant(self, node: ast.Constant) -> Value:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"the constant {_short(repr(value))} is not allowed", self.src.start(node))
        if isinstance(value, int):
            return sympy.Integer(value)
        literal = self.src.text[self.src.start(node) : self.src.end(node)].replace("_", "")
        try:
            return sympy.Float(literal)
        except (TypeError, ValueError):
            return sympy.Float(repr(value))

    def _name(self, node: ast.Name, env: Env) -> Value:
        name = node.id
        offset = self.src.start(node)
        if name in _BOUND:
            if name not in env:
                self.fail(self._unbound_message(name), offset)
            return sympy.Integer(env[name])
        if name in self.ns.scalars:
            return self._scalar_value(name, offset)
        if name in self.ns.constants:
            return self.ns.constants[name]
        # Unreachable after _validate.
        raise _unknown_name(name, self.ns, self.src, offset)

    def _scalar_value(self, name: str, offset: int) -> Value:
        value = self.ns.scalars[name]
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"scalar {name} is not an integer in this model", offset)
        return sympy.Integer(value)

    @staticmethod
    def _unbound_message(name: str) -> str:
        reducer = _BOUND[name]
        if name == "t":
            where = "sum_t(...) or sum_k(...)"
        elif name == "k":
            where = "sum_k(...)"
        elif name == "tau":
            where = "sum_tau(...) (inside sum_t(...))"
        else:
            where = "prod_j(...) (inside sum_k(...) or sum_tau(...))"
        return f"{name} can only be used inside {where}; it is bound by {reducer}"

    def _index(self, node: ast.expr, env: Env) -> int:
        offset = self.src.start(node)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int):
                self.fail(
                    f"a step index must be an integer, not {_short(repr(node.value))}", offset
                )
            return node.value
        if isinstance(node, ast.Name):
            if node.id in _BOUND:
                if node.id not in env:
                    self.fail(self._unbound_message(node.id), offset)
                return env[node.id]
            if node.id in self.ns.scalars:
                return int(self._scalar_value(node.id, offset))
            self.fail(f"{node.id} cannot be used in a step index", offset)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            value = self._index(node.operand, env)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _INDEX_BINOPS:
            left = self._index(node.left, env)
            right = self._index(node.right, env)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            return left * right
        self.fail(f"{_describe(node)} cannot be used in a step index", offset)

    def _subscript(self, node: ast.Subscript, env: Env) -> Value:
        if not isinstance(node.value, ast.Name):  # unreachable after _validate
            self.fail("only per-step names such as h[t] can be indexed", self.src.start(node))
        name = node.value.id
        offset = self.src.start(node)
        step = self._index(node.slice, env)
        if name not in self.ns.indexed:  # unreachable after _validate
            self.fail(f"{name} cannot be indexed", offset)
        try:
            value = self.ns.indexed[name](step)
        except ExpressionError as err:
            self._rethrow(err, offset)
        except Exception as exc:  # a namespace callable failed on this step
            raise self.src.error(f"{name}[{step}] cannot be built: {exc}", offset) from exc
        if not isinstance(value, sympy.Basic):
            self.fail(f"{name}[{step}] is not a SymPy expression", offset)
        return value

    # -- calls and reducers --------------------------------------------------

    def _call(self, node: ast.Call, env: Env) -> Value:
        if not isinstance(node.func, ast.Name):  # unreachable after _validate
            self.fail("only named functions can be called", self.src.start(node))
        name = node.func.id
        offset = self.src.start(node)
        if name in _REDUCERS:
            return self._reduce(name, node, env)
        if name not in self.ns.functions:  # unreachable after _validate
            self.fail(f"{name} is not a function", offset)
        function = self.ns.functions[name]
        args = [self.eval(arg, env) for arg in node.args]
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            try:
                signature.bind(*args)
            except TypeError as exc:
                self.fail(f"wrong arguments for {name}(...): {exc}", offset)
        try:
            value = function(*args)
        except ExpressionError as err:
            self._rethrow(err, offset)
        except Exception as exc:  # a namespace callable refused these arguments
            described = ", ".join(
                f"matrix {_shape_str(a)}" if _is_matrix(a) else f"scalar {_short(a)}" for a in args
            )
            raise self.src.error(f"{name}({described}) cannot be built: {exc}", offset) from exc
        if not isinstance(value, sympy.Basic):
            self.fail(f"{name}(...) did not give a SymPy expression", offset)
        return value

    def _step(self, node: ast.Compare, env: Env) -> Value:
        """``(A > 0)``: the namespace's step function of ``A``."""
        offset = self.src.start(node)
        argument = _compared(node, self.src)
        function = self.ns.functions.get("step")
        if function is None:
            self.fail("(A > 0) is the step function, which this namespace does not define", offset)
        value = self.eval(argument, env)
        try:
            result = function(value)
        except ExpressionError as err:
            self._rethrow(err, offset)
        except Exception as exc:  # a namespace callable refused this argument
            raise self.src.error(f"(... > 0) cannot be built: {exc}", offset) from exc
        if not isinstance(result, sympy.Basic):  # pragma: no cover - a namespace's bug
            self.fail("(... > 0) did not give a SymPy expression", offset)
        return result

    def _reduce(self, name: str, node: ast.Call, env: Env) -> Value:
        var = _REDUCERS[name]
        offset = self.src.start(node)
        body = node.args[0]
        steps = self.ns.steps
        if var in env:
            self.fail(f"{name}(...) cannot be nested inside another {name}(...)", offset)
        if name == "sum_t":
            values = list(steps)
            if not values:
                self.fail("sum_t(...) is empty: the model has no steps", offset)
        elif name == "sum_k":
            if "tau" in env:
                self.fail("sum_k(...) cannot be used inside sum_tau(...)", offset)
            if "t" not in env:  # a many_to_one chain: t is the last step
                if not steps:
                    self.fail("sum_k(...) is empty: the model has no steps", offset)
                env = {**env, "t": steps[-1]}
            values = [s for s in steps if steps[0] <= s <= env["t"]]
            if not values:
                self.fail(f"sum_k(...) is empty for t={env['t']}", offset)
        elif name == "sum_tau":
            if "t" not in env:
                self.fail("sum_tau(...) can only be used inside sum_t(...)", offset)
            if "k" in env:
                self.fail("sum_tau(...) cannot be used inside sum_k(...)", offset)
            values = [s for s in steps if env["t"] <= s <= steps[-1]]
            if not values:
                self.fail(f"sum_tau(...) is empty for t={env['t']}", offset)
        else:
            if "t" not in env or ("k" not in env and "tau" not in env):
                self.fail("prod_j(...) can only be used inside sum_k(...) or sum_tau(...)", offset)
            # the chain from the later step down to the earlier one's next step:
            # t, ..., k+1 inside sum_k; tau, ..., t+1 inside sum_tau
            top, bottom = (env["t"], env["k"]) if "k" in env else (env["tau"], env["t"])
            values = list(range(top, bottom, -1))
            if not values:
                return self._empty_product(body, {**env, "j": top}, offset)
        terms = [self.eval(body, {**env, var: value}) for value in values]
        if name == "prod_j":
            return self._product(terms, values, offset)
        return self._sum(name, var, terms, values, offset)

    def _sum(self, name: str, var: str, terms: list[Value], values: list[int], pos: int) -> Value:
        first = terms[0]
        for term, value in zip(terms, values, strict=True):
            if _is_matrix(term) != _is_matrix(first):
                self.fail(f"{name}(...) mixes matrices and scalars ({var}={value})", pos)
            if _is_matrix(term) and not _same_shape(term, first):
                self.fail(
                    f"{name}(...) terms have different shapes: {_shape_str(first)} at "
                    f"{var}={values[0]} and {_shape_str(term)} at {var}={value}",
                    pos,
                )
        if not _is_matrix(first):
            return self._check_scalar(
                self._guard(lambda: sympy.Add(*terms), name, pos), f"{name}(...)", pos
            )
        nonzero = [term for term in terms if not _is_zero_matrix(term)]
        if not nonzero:
            return ZeroMatrix(*first.shape)
        if len(nonzero) == 1:
            return nonzero[0]
        return self._guard(lambda: MatAdd(*nonzero), name, pos)

    def _product(self, factors: list[Value], values: list[int], pos: int) -> Value:
        first = factors[0]
        for factor, value in zip(factors, values, strict=True):
            if _is_matrix(factor) != _is_matrix(first):
                self.fail(f"prod_j(...) mixes matrices and scalars (j={value})", pos)
        if not _is_matrix(first):
            return self._check_scalar(
                self._guard(lambda: sympy.Mul(*factors), "prod_j", pos), "prod_j(...)", pos
            )
        for i in range(len(factors) - 1):
            left, right = factors[i], factors[i + 1]
            if not _same_dim(left.shape[1], right.shape[0]):
                self.fail(
                    f"prod_j(...) factors do not fit for @: {_shape_str(left)} at j={values[i]} "
                    f"and {_shape_str(right)} at j={values[i + 1]}",
                    pos,
                )
        if any(_is_zero_matrix(f) for f in factors):
            return ZeroMatrix(first.shape[0], factors[-1].shape[1])
        if len(factors) == 1:
            return first
        return self._guard(lambda: MatMul(*factors), "prod_j", pos)

    def _empty_product(self, body: ast.expr, env: Env, pos: int) -> Value:
        """prod_j(...) with k == t: the identity of the body's size (probed at j=t)."""
        probe = self.eval(body, env)
        if not _is_matrix(probe):
            return sympy.Integer(1)
        rows, cols = probe.shape
        if not _same_dim(rows, cols):
            self.fail(
                f"prod_j(...) is empty for j={env['j']} and its body has the non-square shape "
                f"{_shape_str(probe)}, so there is no identity to use",
                pos,
            )
        return Identity(rows)

    # -- operators -------------------------------------------------------------

    def _binop(self, node: ast.BinOp, env: Env) -> Value:
        left = self.eval(node.left, env)
        right = self.eval(node.right, env)
        symbol = _BINOPS.get(type(node.op))
        pos = self.src.binop_pos(node)
        if symbol is None:  # unreachable after _validate
            self.fail(f"operator {type(node.op).__name__} is not allowed", pos)
        operation: dict[str, Callable[[Value, Value, int], Value]] = {
            "+": self._add,
            "-": self._sub,
            "*": self._mul,
            "@": self._matmul,
            "/": self._div,
            "**": self._pow,
        }
        result = self._guard(lambda: operation[symbol](left, right, pos), symbol, pos)
        return self._check_scalar(result, f"{symbol}", pos)

    def _neg(self, value: Value) -> Value:
        if _is_zero_matrix(value):
            return value
        if _is_matrix(value):
            return MatMul(sympy.S.NegativeOne, value)
        return -value

    def _mismatch(self, a: Value, b: Value, symbol: str, why: str, pos: int) -> NoReturn:
        self.fail(f"shapes {_shape_str(a)} and {_shape_str(b)} do not fit for {symbol}: {why}", pos)

    def _add(self, a: Value, b: Value, pos: int, symbol: str = "+") -> Value:
        if _is_matrix(a) and _is_matrix(b):
            if not _same_shape(a, b):
                self._mismatch(a, b, symbol, "they must be equal", pos)
            term = b if symbol == "+" else self._neg(b)
            if _is_zero_matrix(term):
                return a
            if _is_zero_matrix(a):
                return term
            return MatAdd(a, term)
        if _is_matrix(a):
            return self._add(a, _broadcast(b, a.shape), pos, symbol)
        if _is_matrix(b):
            return self._add(_broadcast(a, b.shape), b, pos, symbol)
        return a + b if symbol == "+" else a - b

    def _sub(self, a: Value, b: Value, pos: int) -> Value:
        return self._add(a, b, pos, "-")

    def _matmul(self, a: Value, b: Value, pos: int) -> Value:
        for side, value in (("left", a), ("right", b)):
            if not _is_matrix(value):
                self.fail(
                    f"@ needs matrices on both sides, but the {side} side is "
                    f"{_scalar_name(value)}; use * to scale",
                    pos,
                )
        if not _same_dim(a.shape[1], b.shape[0]):
            self._mismatch(a, b, "@", f"inner sizes {a.shape[1]} and {b.shape[0]} differ", pos)
        if _is_zero_matrix(a) or _is_zero_matrix(b):
            return ZeroMatrix(a.shape[0], b.shape[1])
        return MatMul(a, b)

    def _mul(self, a: Value, b: Value, pos: int) -> Value:
        if _is_matrix(a) and _is_matrix(b):
            if not _same_shape(a, b):
                self._mismatch(a, b, "* (elementwise)", "they must be equal", pos)
            if _is_zero_matrix(a) or _is_zero_matrix(b):
                return ZeroMatrix(*a.shape)
            return HadamardProduct(a, b)
        if _is_matrix(a) or _is_matrix(b):
            matrix = a if _is_matrix(a) else b
            scalar = b if _is_matrix(a) else a
            if _is_zero_matrix(matrix) or _is_zero_scalar(scalar):
                return ZeroMatrix(*matrix.shape)
            return MatMul(scalar, matrix)
        return a * b

    def _div(self, a: Value, b: Value, pos: int) -> Value:
        if _is_matrix(b):
            if not _is_matrix(a):
                if _is_zero_scalar(a):
                    return ZeroMatrix(*b.shape)
                reciprocal = HadamardPower(b, sympy.S.NegativeOne)
                return reciprocal if a == 1 else MatMul(a, reciprocal)
            if not _same_shape(a, b):
                self._mismatch(a, b, "/ (elementwise)", "they must be equal", pos)
            if _is_zero_matrix(a):
                return a
            return HadamardProduct(a, HadamardPower(b, sympy.S.NegativeOne))
        if _is_zero_scalar(b):
            self.fail("division by zero", pos)
        if _is_matrix(a):
            if _is_zero_matrix(a):
                return a
            return MatMul(sympy.S.One / b, a)
        return a / b

    def _pow(self, a: Value, b: Value, pos: int) -> Value:
        if _is_matrix(b):
            self.fail(
                f"the exponent of ** must be a scalar, not a matrix of shape {_shape_str(b)}", pos
            )
        if _is_matrix(a):
            if _is_zero_matrix(a) and getattr(b, "is_positive", None) is True:
                return a
            return HadamardPower(a, b)
        if getattr(b, "is_Number", False):
            if abs(b) > MAX_EXPONENT:
                self.fail(f"exponent {_short(b)} is too large (the limit is {MAX_EXPONENT})", pos)
            bits = _max_bits(a)
            if bits > 1 and bits * abs(b) > MAX_BITS:
                self.fail(f"{_short(a)}**{_short(b)} is too large (over {MAX_BITS} bits)", pos)
        return a**b
