"""The project's own checks: lint, types, and a wheel that works outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> list[str]:
    """Run a tool from this environment; missing is a failure under CI, a skip elsewhere."""
    if shutil.which(name) is None and not (Path(sys.executable).parent / name).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
        pytest.skip(f"{name} is not installed")
    return [sys.executable, "-m", name]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_check_is_clean() -> None:
    result = _run([*_tool("ruff"), "check", "."])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _run([*_tool("ruff"), "format", "--check", "."])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_on_the_package() -> None:
    result = _run([*_tool("mypy")])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    """Build a wheel, install it into a fresh venv, and use it from another folder."""
    wheels = tmp_path / "wheels"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(ROOT)])
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("symbptt-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "symbptt/py.typed" in names  # PEP 561: the package's annotations are used
    assert any(name.endswith("licenses/LICENSE") for name in names), names
    assert "symbptt_pytest/__init__.py" in names  # the pytest plugin
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        assert "[pytest11]\nsymbptt = symbptt_pytest" in archive.read(entry_points).decode()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import symbptt, symbptt.templating as t\n"
        "assert 'site-packages' in str(t.templates_dir()), t.templates_dir()\n"
        "spec = symbptt.ModelSpec(steps=2)\n"
        "mod = symbptt.load_module(symbptt.emit_numpy(spec))\n"
        "assert 'begin{document}' in symbptt.render_latex(spec, verify=False)\n"
        "print(mod.PARAMETERS)\n"
    )
    run = subprocess.run(
        [str(python), "-c", script], cwd=elsewhere, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "W_xh" in run.stdout
    cli = subprocess.run(
        [str(env_dir / "bin" / "symbptt"), "--version"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0 and "0.1.0" in cli.stdout + cli.stderr


def test_license_file_matches_pyproject() -> None:
    from symbptt.cli.commands import _toml_module  # tomllib, or tomli on Python 3.10

    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    declared = _toml_module().loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert declared["project"]["license"] == {"text": "MIT"}
    assert license_text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in license_text


def test_the_package_is_typed() -> None:
    assert (ROOT / "symbptt" / "py.typed").is_file()


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_regenerate_help(flag: str) -> None:
    done = _run([sys.executable, "-m", "symbptt.regenerate", flag])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m symbptt.regenerate [OUTDIR]\n")
    assert "gradients_unrolled.py" in done.stdout and done.stderr == ""
    assert not (ROOT / flag).exists()


def test_regenerate_bad_arguments_are_one_line() -> None:
    done = _run([sys.executable, "-m", "symbptt.regenerate", "--bogus"])
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "usage:" in done.stderr


def test_regenerate_help_into_a_closed_pipe_is_quiet() -> None:
    reader, writer = os.pipe()
    os.close(reader)  # the reader left (`... --help | head -0`)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "symbptt.regenerate", "--help"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
    finally:
        os.close(writer)
    assert done.returncode == 141 and "Traceback" not in done.stderr, done.stderr
