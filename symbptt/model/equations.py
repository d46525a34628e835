"""Cell equations: from a checked syntax tree to a SymPy matrix expression.

An equation's right-hand side is parsed once by :func:`symbptt.expr.exprlang.syntax_tree`
(a whitelist: nothing is ever executed).  :func:`reads` lists what it reads;
:func:`build` turns it into a matrix expression for one step of one model,
with the mexpr constructors (so a zero initial state or a dropped bias simply
vanishes), in the column layout (``W x``) or the row layout (``X W``: every
product is written the other way round and every parameter is the notation's
transposed one).

The language of a cell equation:

* ``x[t]`` an input at this step; ``h[t-1]`` a state at the previous step;
  ``i[t]``, ``h[t]`` a quantity an earlier equation defined at this step;
* parameters by name (a bias is added to every example);
* ``A @ B`` matrix product, ``A * B`` elementwise product, ``+``, ``-``,
  ``A / c`` and ``c * A`` with a number ``c``, ``A ** n`` with an integer
  ``n >= 1``, ``A.T``, numbers (``1 - z[t]`` is ``ones - z[t]``);
* elementwise functions: the registered activations (``sigmoid``, ``tanh``,
  ``relu``, ``identity``, ...) and the cell's free activation, if it has one.
"""

from __future__ import annotations

import ast
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import sympy as sp

from ..expr import functions, mexpr
from ..expr.exprlang import ExpressionError

__all__ = ["Env", "build", "reads", "step_offset", "weight_operands"]

Error = Callable[[str, ast.AST], ExpressionError]


class Env(Protocol):
    """What :func:`build` needs of a model at one step."""

    layout: str

    def param(self, key: str) -> Any:
        """The parameter (a bias broadcast over the examples), or a zero matrix if dropped."""

    def series(self, key: str, offset: int) -> Any:
        """The quantity at step t + offset (offset 0 or -1)."""

    def function(self, name: str) -> Any:
        """The activation called ``name`` in the equations, or None."""


def step_offset(index: ast.expr, error: Error, what: str) -> int:
    """The offset of a step index ``t``, ``t - k`` or ``t + k``."""
    if isinstance(index, ast.Name) and index.id == "t":
        return 0
    if (
        isinstance(index, ast.BinOp)
        and isinstance(index.op, (ast.Add, ast.Sub))
        and isinstance(index.left, ast.Name)
        and index.left.id == "t"
        and isinstance(index.right, ast.Constant)
        and isinstance(index.right.value, int)
        and not isinstance(index.right.value, bool)
    ):
        k = index.right.value
        return k if isinstance(index.op, ast.Add) else -k
    raise error(f"{what}: a step index must be t, t-1 or t+1 (a whole step relative to t)", index)


def reads(tree: ast.expr, error: Error) -> list[tuple[str, int, ast.AST]]:
    """Every ``name[t + offset]`` the expression reads, in reading order."""
    found: list[tuple[str, int, ast.AST]] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            name = node.value.id
            found.append((name, step_offset(node.slice, error, f"{name}[...]"), node))
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return found


def names_in(tree: ast.expr) -> list[tuple[str, ast.AST]]:
    """The bare names (parameters) the expression uses, with the calls' function names."""
    out: list[tuple[str, ast.AST]] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Subscript):
            continue
        if isinstance(node, ast.Name):
            out.append((node.id, node))
        stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return out


@dataclass
class _Builder:
    env: Env
    error: Error

    def number(self, node: ast.AST) -> sp.Expr | None:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, float):
                if not math.isfinite(node.value):
                    raise self.error(f"the number {self.text(node)} is not a finite float64", node)
                value = sp.nsimplify(node.value)
                # nsimplify reads a number below about 1e-300 as 0: its exact decimal instead
                return value if value != 0 else sp.Rational(repr(node.value))
            return self.finite(sp.Integer(node.value), node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = self.number(node.operand)
            if inner is None:
                return None
            return -inner if isinstance(node.op, ast.USub) else inner
        return None

    def text(self, node: ast.AST) -> str:
        """The equation's text of ``node`` (``ast.unparse``: the source is one line)."""
        return ast.unparse(node)

    def finite(self, value: Any, node: ast.AST) -> Any:
        """``value`` (a number), or an error if it is no finite float64 (a real number): the
        generated code computes in float64 (an infinity there is a NaN gradient)."""
        if not (value.is_real and value.is_finite and abs(value) <= sp.Float(sys.float_info.max)):
            raise self.error(f"{self.text(node)} is not a finite float64", node)
        return value

    def power(self, left: Any, right: Any, node: ast.AST) -> Any:
        """``left ** right`` of two numbers, refused before SymPy computes one too large
        (``10 ** 10 ** 10`` has ten billion digits)."""
        try:
            estimate = math.pow(abs(float(left)), float(right))
        except (OverflowError, ValueError, ZeroDivisionError):
            estimate = math.inf
        if not math.isfinite(estimate) or estimate > sys.float_info.max:
            raise self.error(f"{self.text(node)} is not a finite float64", node)
        return self.finite(left**right, node)

    def build(self, node: ast.AST) -> Any:
        constant = self.number(node)
        if constant is not None:
            return constant
        if isinstance(node, ast.Name):
            return self.env.param(node.id)
        if isinstance(node, ast.Subscript):
            assert isinstance(node.value, ast.Name)  # checked by syntax_tree
            name = node.value.id
            return self.env.series(name, step_offset(node.slice, self.error, f"{name}[...]"))
        if isinstance(node, ast.UnaryOp):
            value = self.build(node.operand)
            return mexpr.scale(-1, value) if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Attribute):  # only .T passes syntax_tree
            return self.transpose(self.build(node.value))
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        raise self.error("this is not part of a cell equation's language", node)

    def is_matrix_sum(self, node: ast.BinOp) -> bool:
        """True unless every term of the chain is a plain number."""
        at: ast.AST = node
        while isinstance(at, ast.BinOp) and isinstance(at.op, (ast.Add, ast.Sub)):
            if self.number(at.right) is None:
                return True
            at = at.left
        return self.number(at) is None

    def transpose(self, value: Any) -> Any:
        return mexpr.transpose(value) if mexpr.is_matrix(value) else value

    def call(self, node: ast.Call) -> Any:
        assert isinstance(node.func, ast.Name)  # checked by syntax_tree
        name = node.func.id
        activation = self.env.function(name)
        if activation is None:
            known = ", ".join(sorted(functions.ACTIVATIONS))
            raise self.error(f"unknown function {name!r}; expected one of {known}", node)
        if len(node.args) != 1:
            raise self.error(f"{name}(...) takes one argument, got {len(node.args)}", node)
        arg = self.build(node.args[0])
        if not mexpr.is_matrix(arg):
            raise self.error(f"{name}(...) is applied to a matrix, not to a number", node)
        return functions.elementwise(activation, arg)

    def sum(self, node: ast.BinOp) -> Any:
        """A chain of + and -, as one flat sum (terms that read a state first if the
        notation writes the recurrent term first, as W h + U x)."""
        chain: list[tuple[int, ast.AST]] = []
        at: ast.AST = node
        while isinstance(at, ast.BinOp) and isinstance(at.op, (ast.Add, ast.Sub)):
            chain.append((1 if isinstance(at.op, ast.Add) else -1, at.right))
            at = at.left
        chain.append((1, at))
        chain.reverse()
        if getattr(self.env, "recurrent_first", False):
            chain.sort(key=lambda item: not _reads_previous(item[1], self.error))
        values = [(sign, self.build(term)) for sign, term in chain]
        matrices = [v for _, v in values if mexpr.is_matrix(v)]
        shape = matrices[0].shape
        terms = []
        for sign, value in values:
            if not mexpr.is_matrix(value):
                value = mexpr.scale(value, mexpr.ones(*shape))
            self.same_shape(matrices[0], value, node, "+" if sign > 0 else "-")
            terms.append(value if sign > 0 else mexpr.scale(-1, value))
        return mexpr.add(*terms)

    def binop(self, node: ast.BinOp) -> Any:
        if isinstance(node.op, (ast.Add, ast.Sub)) and self.is_matrix_sum(node):
            return self.sum(node)
        left, right = self.build(node.left), self.build(node.right)
        lm, rm = mexpr.is_matrix(left), mexpr.is_matrix(right)
        op = node.op
        if not (lm or rm):
            if isinstance(op, ast.MatMult):
                raise self.error("@ needs two matrices", node)
            if isinstance(op, ast.Pow):
                return self.power(left, right, node)
            if isinstance(op, ast.Div) and right == 0:
                raise self.error("division by zero", node)
            value = {ast.Add: sp.Add, ast.Sub: lambda a, b: a - b, ast.Mult: sp.Mul}.get(
                type(op), lambda a, b: a / b
            )(left, right)
            return self.finite(value, node)
        if isinstance(op, (ast.Add, ast.Sub)):
            return self.sum(node)
        if isinstance(op, ast.Mult):
            if not lm:
                return mexpr.scale(left, right)
            if not rm:
                return mexpr.scale(right, left)
            self.same_shape(left, right, node, "*")
            return mexpr.hadamard(left, right)
        if isinstance(op, ast.MatMult):
            if not (lm and rm):
                raise self.error("@ needs two matrices; scale by a number with *", node)
            if self.env.layout == "row":
                left, right = right, left
            if not _same(left.shape[1], right.shape[0]):
                raise self.error(
                    f"@ does not fit: {_shape(left)} @ {_shape(right)} (inner sizes differ)", node
                )
            return mexpr.matmul(left, right)
        if isinstance(op, ast.Div):
            if rm:
                raise self.error("division by a matrix is not supported; divide by a number", node)
            if right == 0:
                raise self.error("division by zero", node)
            return mexpr.scale(self.finite(1 / right, node), left)
        if isinstance(op, ast.Pow):
            if rm or not (right.is_Integer and right >= 1):
                raise self.error("a matrix power takes an integer exponent n >= 1", node)
            return mexpr.hadamard_power(left, int(right))
        raise self.error("this operator is not part of a cell equation's language", node)

    def same_shape(self, a: Any, b: Any, node: ast.AST, symbol: str) -> None:
        if not (_same(a.shape[0], b.shape[0]) and _same(a.shape[1], b.shape[1])):
            raise self.error(f"{symbol} needs equal shapes: {_shape(a)} and {_shape(b)}", node)


def _reads_previous(node: ast.AST, error: Error) -> bool:
    return any(offset < 0 for _, offset, _ in reads(node, error))  # type: ignore[arg-type]


def _same(a: Any, b: Any) -> bool:
    return bool(sp.sympify(a) == sp.sympify(b))


def _shape(value: Any) -> str:
    return f"({value.shape[0]}, {value.shape[1]})"


def build(tree: ast.expr, env: Env, error: Error) -> Any:
    """The matrix expression of ``tree`` at one step of one model (see the module docstring)."""
    return _Builder(env, error).build(tree)


def weight_operands(cell: Any) -> dict[str, str]:
    """Each weight of ``cell`` that multiplies something (``P @ operand``), and what:
    ``"recurrent"`` where an operand reads a state at t - 1 (``W_hh @ h[t-1]``,
    ``W_hh @ (r[t] * h[t-1])``), ``"input"`` where it reads only the inputs.
    Read from the equations' syntax trees; a weight that is both is recurrent."""
    params = {parameter.key for parameter in cell.parameters}
    inputs = {quantity.key for quantity in cell.inputs}
    states = {quantity.key for quantity in cell.states}
    found: dict[str, str] = {}
    for equation in cell.equations:
        for node in ast.walk(equation.tree):
            if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult)):
                continue
            if not (isinstance(node.left, ast.Name) and node.left.id in params):
                continue
            operand = [(key, offset) for key, offset, _ in reads(node.right, equation.error)]
            if any(key in states and offset == -1 for key, offset in operand):
                found[node.left.id] = "recurrent"
            elif operand and all(key in inputs for key, _ in operand):
                found.setdefault(node.left.id, "input")
    return found
