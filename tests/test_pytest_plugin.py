"""The pytest plugin: ``assert_gradient`` as a fixture, run in an inner pytest."""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

USER_TESTS = """
import symbptt

SPEC = symbptt.ModelSpec(steps=2, n_in=2, n_hidden=2, n_out=2, batch=1)


def test_right(assert_gradient):
    assert_gradient(SPEC, "W_hh", "sum_t(delta[t] @ h[t-1].T)")


def test_wrong(assert_gradient):
    assert_gradient(SPEC, "W_hh", "sum_t(delta[t] @ h[t].T)")
"""


def _plugin_arguments() -> list[str]:
    """Load the plugin by its entry point when installed (CI installs it); else by name."""
    installed = entry_points(group="pytest11").select(name="symbptt")
    if os.environ.get("CI"):
        assert installed, "the pytest11 entry point is missing; pip install -e .[test]"
    return [] if installed else ["-p", "symbptt_pytest"]


def test_the_entry_point_names_the_plugin_module() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '[project.entry-points.pytest11]\nsymbptt = "symbptt_pytest"\n' in text


def test_the_fixture_passes_a_right_formula_and_fails_a_wrong_one_with_the_report(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(*_plugin_arguments(), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_wrong*", "*NOT EQUAL*"])
    assert "symbptt/testing.py" not in result.stdout.str()  # the traceback stops at the test


def test_the_points_option_is_checked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(*_plugin_arguments(), "--symbptt-points", "0")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--symbptt-points: got '0'; expected a whole number*"])


def test_a_run_without_the_fixture_does_not_import_sympy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="import sys\n\ndef test_plain():\n    assert 'sympy' not in sys.modules\n"
    )
    result = pytester.runpytest_subprocess(*_plugin_arguments(), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
