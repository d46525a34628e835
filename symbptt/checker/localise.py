"""Where a differing candidate goes wrong: steps, losses, rows and columns."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy as sp

from ..expr import exprlang, mexpr
from ..expr.exprlang import ExpressionError
from .namespace import _refuse_outside
from .points import _close, _evaluate, _gradient_symbol, _Point, _prepare, _shape
from .work import _Work

if TYPE_CHECKING:
    from .core import _Checker


def _rows_columns(got: Any, expected: Any) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    if got is None:
        return None, None
    diff = np.abs(np.asarray(got, dtype=float) - np.asarray(expected, dtype=float))
    tol = 1e-7 * max(1.0, float(np.max(np.abs(expected))))
    rows = tuple(int(i) for i in np.nonzero(diff.max(axis=1) > tol)[0])
    cols = tuple(int(j) for j in np.nonzero(diff.max(axis=0) > tol)[0])
    return rows, cols


def _ranges(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values)


def _losses_at(steps: Sequence[int]) -> str:
    if len(steps) == 1:
        return f"loss at step {steps[0]}"
    return f"losses at steps {_ranges(steps)}"


def _localisation_notes(
    context: _Checker,
    differing: tuple[int, ...] | None,
    loss_steps: tuple[int, ...] | None,
    rows: tuple[int, ...] | None,
    columns: tuple[int, ...] | None,
) -> list[str]:
    steps = context.work.graph.steps
    notes = []
    if differing is not None:
        agree = [s for s in steps if s not in differing]
        text = (
            f"the sum_t terms differ at t = {_ranges(differing)}"
            if differing
            else "every sum_t term agrees with its step's contribution"
        )
        if differing and agree:
            text += f" (agree at t = {_ranges(agree)})"
        notes.append(text)
    if loss_steps is not None:
        target_steps = [context.work.graph.symbols.meta[y][1] for y in context.work.graph.targets]
        if loss_steps:
            fine = [s for s in target_steps if s not in loss_steps]
            text = f"the error involves the {_losses_at(loss_steps)}"
            if fine:
                verb = "is" if len(fine) == 1 else "are"
                text += f" (the {_losses_at(fine)} {verb} handled right)"
            notes.append(text)
        else:
            notes.append("the difference does not change with the targets")
    if rows is not None and columns is not None:
        shape = tuple(int(v) for v in context.target.shape)
        if len(rows) < shape[0] or len(columns) < shape[1]:
            notes.append(
                f"differs in rows {_ranges(rows)} and columns {_ranges(columns)} "
                f"(NumPy indices, of {shape[0]} x {shape[1]})"
            )
        else:
            notes.append("differs in every row and column")
    return notes


def _term_steps(text: str, work: _Work, name: str, point: _Point) -> tuple[int, ...] | None:
    """For a candidate ``c * sum_t(body)``: the steps whose term differs from the contribution.

    Uses the parser's own tree and evaluator (exprlang internals) to build the
    body at each step; returns None when the text is not of that form.
    """
    try:
        tree, src = exprlang._parse_tree(text)
        exprlang._validate(tree.body, src, work.ns)
    except ExpressionError:  # pragma: no cover - the text parsed before
        return None
    node: ast.expr = tree.body
    factor = sp.Integer(1)
    evaluator = exprlang._Evaluator(src, work.ns)
    while True:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            factor *= -1 if isinstance(node.op, ast.USub) else 1
            node = node.operand
            continue
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
            try:
                right = evaluator.eval(node.right, {})
                left = None if isinstance(node.op, ast.Div) else evaluator.eval(node.left, {})
            except ExpressionError:
                return None
            if isinstance(node.op, ast.Div) and not mexpr.is_matrix(right):
                factor /= right
                node = node.left
                continue
            if left is not None and not mexpr.is_matrix(left):
                factor *= left
                node = node.right
                continue
            if not mexpr.is_matrix(right):
                factor *= right
                node = node.left
                continue
            return None
        break
    if not (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sum_t"
    ):
        return None
    contributions = {c.step: c.target for c in work.d.contributions if c.param == name}
    target = _gradient_symbol(work, name)
    differing = []
    for step in work.graph.steps:
        try:
            term = _prepare(_refuse_outside(evaluator.eval(node.args[0], {"t": step})))
        except ExpressionError:
            return None
        if not mexpr.is_matrix(term):
            return None
        value = _evaluate(mexpr.scale(factor, term), point.env_f, "float")
        expected = (
            point.env_f.get(contributions.get(step))
            if step in contributions
            else np.zeros(_shape(target))
        )
        if value is None or not _close(value, expected, 1e-7):
            differing.append(step)
    return tuple(differing)
