"""Helpers for users' own test suites.

::

    from symbptt.testing import assert_gradient

    def test_my_derivation():
        assert_gradient(spec, "W_hh", "sum_t(delta[t] @ h[t-1].T)")

Any cell works: ``assert_gradient(ModelSpec(cell="lstm"), "W_hf",
"sum_t(delta_f[t] @ h[t-1].T)")``, or a hand-written backward pass as a
callable ``f(params, X, Y, h0=None, c0=None)``.  A wrong candidate fails with
the checker's report (counterexample, the steps and losses where it differs,
the mistake it matches where one does, the correct formula); a malformed one
raises :class:`~symbptt.expr.exprlang.ExpressionError`.
"""

from __future__ import annotations

import numpy as np

from .checker import Candidate, CheckResult, check
from .core.derive import Derivation
from .model.spec import ModelSpec

__all__ = ["assert_gradient"]


def assert_gradient(
    spec: ModelSpec | Derivation,
    wrt: str,
    candidate: Candidate,
    *,
    points: int = 20,
    rng: np.random.Generator | int | None = None,
) -> CheckResult:
    """Fail with the checker's report unless ``candidate`` is the gradient of ``wrt``.

    Takes the arguments of :func:`symbptt.check` and returns its result when
    the candidate is right.

    Raises:
        AssertionError: the candidate is not the gradient; the message is
            ``CheckResult.explain()``.
        ExpressionError: the candidate is malformed.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    result = check(spec, wrt, candidate, points=points, rng=rng)
    if not result.ok:
        raise AssertionError(result.explain())
    return result
