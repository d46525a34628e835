"""Matrix-level reverse-mode rules: one vector-Jacobian product (VJP) per op.

A rule takes the cotangent ``ct`` of a node, the node's output ``out`` (the
assigned symbol when the node is a whole right-hand side, else the node
itself) and the node, and returns ``(child, cotangent)`` pairs.  Rules are
registered in :data:`VJP` with the :func:`vjp` decorator; a node with no rule
raises :class:`MissingRuleError` naming its op (there is no fallback).

The output layer + loss rule uses the gradient SymPy derives from the two
definitions (:func:`symbptt.expr.functions.output_loss_gradient`): softmax +
cross-entropy and sigmoid + binary cross-entropy come out as ``a - y``; a
pair that couples the units (softmax + squared error) chains the loss's
derivative and the output's own rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from ..expr import functions, mexpr

__all__ = ["VJP", "MissingRuleError", "vjp"]

Pairs = list[tuple[Any, Any]]
Rule = Callable[[Any, Any, Any], Pairs]

#: The rule table: SymPy node class -> VJP rule.
VJP: dict[type, Rule] = {}


class MissingRuleError(NotImplementedError):
    """A node of the graph has no VJP rule."""


def vjp(*types: type) -> Callable[[Rule], Rule]:
    """Register a rule for the given node classes."""

    def register(rule: Rule) -> Rule:
        for cls in types:
            VJP[cls] = rule
        return rule

    return register


def rule_for(node: Any) -> Rule:
    try:
        return VJP[type(node)]
    except KeyError:
        raise MissingRuleError(
            f"differentiation rule for {type(node).__name__!r} not implemented"
        ) from None


@vjp(sp.MatAdd, sp.Add)
def _sum(ct: Any, out: Any, node: Any) -> Pairs:
    return [(arg, ct) for arg in node.args]


@vjp(sp.MatMul)
def _matmul(ct: Any, out: Any, node: Any) -> Pairs:
    """Bilinear: for A B C, d(B) = A^T ct C^T (and likewise for each factor)."""
    coeff, mats = node.as_coeff_matrices()
    pairs: Pairs = []
    for i, factor in enumerate(mats):
        if isinstance(factor, (sp.OneMatrix, sp.ZeroMatrix, sp.Identity)):
            continue
        left = [mexpr.transpose(f) for f in reversed(mats[:i])]
        right = [mexpr.transpose(f) for f in reversed(mats[i + 1 :])]
        pairs.append((factor, mexpr.scale(coeff, mexpr.matmul(*left, ct, *right))))
    return pairs


@vjp(sp.Mul)
def _scalar_mul(ct: Any, out: Any, node: Any) -> Pairs:
    args = node.args
    return [(arg, ct * sp.Mul(*(args[:i] + args[i + 1 :]))) for i, arg in enumerate(args)]


@vjp(sp.Transpose)
def _transpose(ct: Any, out: Any, node: Any) -> Pairs:
    return [(node.arg, mexpr.transpose(ct))]


@vjp(sp.HadamardProduct)
def _hadamard(ct: Any, out: Any, node: Any) -> Pairs:
    args = node.args
    return [(arg, mexpr.hadamard(ct, *(args[:i] + args[i + 1 :]))) for i, arg in enumerate(args)]


@vjp(sp.HadamardPower, mexpr.HadamardPower)
def _hadamard_power(ct: Any, out: Any, node: Any) -> Pairs:
    """d(A∘n) = ct ⊙ n A∘(n-1) (a cell's integer power n >= 1)."""
    base, exp = node.base, node.exp
    return [(base, mexpr.hadamard(ct, mexpr.scale(exp, mexpr.hadamard_power(base, exp - 1))))]


@vjp(ElementwiseApplyFunction, functions.Apply)
def _elementwise(ct: Any, out: Any, node: Any) -> Pairs:
    """d(f(Z)) = ct ⊙ f'(Z), with f' written through the output where simpler."""
    activation = functions.activation_for(node.function)
    return [(node.expr, mexpr.hadamard(ct, activation.derivative_of(out, node.expr)))]


def softmax_vjp(ct: Any, out: Any, axis: int) -> Any:
    """d(softmax) = Y ⊙ (ct - 1 1^T (ct ⊙ Y)), the sum running over the units."""
    rows, cols = out.shape
    weighted = mexpr.hadamard(ct, out)
    if axis == 0:  # units along rows: sum each column, spread it down the rows
        spread = mexpr.matmul(mexpr.ones(rows, 1), mexpr.matmul(mexpr.ones(1, rows), weighted))
    else:
        spread = mexpr.matmul(mexpr.matmul(weighted, mexpr.ones(cols, 1)), mexpr.ones(1, cols))
    return mexpr.hadamard(out, mexpr.add(ct, mexpr.scale(-1, spread)))


@vjp(mexpr.Softmax)
def _softmax(ct: Any, out: Any, node: Any) -> Pairs:
    return [(node.arg, softmax_vjp(ct, out, node.axis))]


@vjp(mexpr.OutputLoss)
def _output_loss(ct: Any, out: Any, node: Any) -> Pairs:
    """Output layer + loss: d(pre-activation) from the derived gradient (times the weight)."""
    if node.weight is not None:
        ct = mexpr.hadamard(mexpr.scale(ct, mexpr.ones(*node.pre.shape)), node.weight)
    return _unweighted(ct, node)


def _unweighted(ct: Any, node: Any) -> Pairs:
    pre, pred, target = node.pre, node.pred, node.target
    shape = pre.shape
    derived = functions.output_loss_gradient(node.output, node.loss)
    if derived.fused is not None:
        mapping = {functions.a: pred, functions.y: target, functions.z: pre}
        return [(pre, _times(ct, functions.lift(derived.fused, mapping, shape)))]
    loss = functions.LOSSES[node.loss]
    d_pred = _times(
        ct, functions.lift(loss.derivative, {functions.a: pred, functions.y: target}, shape)
    )
    output = functions.OUTPUTS[node.output]
    if isinstance(output, functions.SoftmaxOutput):
        return [(pre, softmax_vjp(d_pred, pred, node.axis))]
    return [(pre, mexpr.hadamard(d_pred, output.derivative_of(pred, pre)))]


def _times(ct: Any, expr: Any) -> Any:
    """``ct * expr``: a scalar cotangent scales, a per-unit one (a weighted loss) multiplies."""
    return mexpr.hadamard(ct, expr) if mexpr.is_matrix(ct) else mexpr.scale(ct, expr)
