"""The pytest plugin: ``assert_gradient`` as a fixture in a user's tests.

Installed with symbptt (entry point ``pytest11``), so that with symbptt in the
environment a test reads::

    def test_my_lstm_backward(assert_gradient):
        assert_gradient(symbptt.ModelSpec(cell="lstm", steps=3), "W_hf", my_backward)

The fixture is :func:`symbptt.testing.assert_gradient` with its random points
drawn from a seed made of the test's id, so a failure repeats on the next run;
``--symbptt-points N`` sets how many points each check takes (default 20).
The plugin is a package of its own, outside ``symbptt`` (whose import loads
SymPy): a test run that does not ask for the fixture does not load SymPy.
Disable it with ``-p no:symbptt``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["assert_gradient", "pytest_addoption"]

_DEFAULT_POINTS = 20


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("symbptt", "symbptt gradient checks")
    group.addoption(
        "--symbptt-points",
        type=_positive,
        default=_DEFAULT_POINTS,
        metavar="N",
        help=f"random points per assert_gradient check (default {_DEFAULT_POINTS})",
    )


def _positive(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise pytest.UsageError(
            f"--symbptt-points: got {text!r}; expected a whole number from 1 to 1000"
        )
    return value


@pytest.fixture
def assert_gradient(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``assert_gradient(spec, wrt, candidate)``: fail with the checker's report unless
    ``candidate`` (a formula or a callable) is the gradient of ``wrt``."""
    from symbptt import testing

    points = request.config.getoption("symbptt_points")
    seed = int.from_bytes(hashlib.sha256(request.node.nodeid.encode()).digest()[:8], "big")

    def check(spec: Any, wrt: str, candidate: Any, **options: Any) -> Any:
        __tracebackhide__ = True  # pytest shows the test's line
        options.setdefault("points", points)
        options.setdefault("rng", seed)
        return testing.assert_gradient(spec, wrt, candidate, **options)

    return check
