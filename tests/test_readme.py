"""Every code snippet of README.md runs, as a reader would run it.

The ```python blocks run in order in one namespace (later ones use the names
of earlier ones), in a fresh folder.  Every line of the ```bash blocks runs
with bash in a fresh folder, ``symbptt`` being the installed command; a line
whose comment says ``exit N`` must exit with N, any other with 0.  Commands
that install the package or run this very test suite are not run here: each
is named in :data:`RUN_ELSEWHERE` with the place that runs it, and that place
is checked to run it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import symbptt

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: Commands of the README that cannot run inside the test suite, and where they run:
#: "ci" (.ci/run runs this exact line) or a test, "tests/file.py::name".
RUN_ELSEWHERE = {
    "pip install .": "tests/test_packaging.py::test_wheel_installs_and_runs_outside_the_checkout",
    'pip install -e ".[test]"': "ci",
    "python -m pytest -n auto": "ci",
}

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text("utf-8")) if lang == language]


def commands(block: str) -> list[tuple[str, int]]:
    """Each command of a bash block (``&&`` chains split), with its expected exit status."""
    found = []
    for line in block.splitlines():
        command, _, comment = line.partition("  #")
        command = command.strip()
        if not command or command.startswith("#"):
            continue
        status = re.search(r"\bexit (\d+)", comment)
        for part in command.split(" && "):
            found.append((part.strip(), int(status.group(1)) if status else 0))
    return found


def all_commands() -> list[tuple[str, int]]:
    return [found for block in blocks("bash") for found in commands(block)]


def test_the_readme_has_snippets_of_both_kinds() -> None:
    assert len(blocks("python")) >= 3
    assert len(all_commands()) >= 8
    fenced = {lang for lang, _ in FENCE.findall(README.read_text("utf-8"))}
    # the toml block is a cell file: tests/test_cells.py loads and derives it
    assert fenced <= {"python", "bash", "toml"}, f"README blocks of another kind: {fenced}"


def test_commands_run_elsewhere_are_run_there() -> None:
    ci = (ROOT / ".ci" / "run").read_text("utf-8")
    listed = {command for command, _ in all_commands()}
    for command, where in RUN_ELSEWHERE.items():
        assert command in listed, f"{command!r} is no longer in the README: drop it here"
        if where == "ci":
            assert command in ci, f".ci/run does not run {command!r}"
        else:
            path, name = where.split("::")
            assert f"def {name}(" in (ROOT / path).read_text("utf-8"), where


def test_python_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for number, block in enumerate(blocks("python"), 1):
        code = compile(block, f"README.md python block {number}", "exec")
        exec(code, namespace)  # the README's own text, as a reader would paste it
    assert namespace["symbptt"] is symbptt
    losses = namespace["losses"]
    assert isinstance(losses, list) and losses[-1] < losses[0]


def bash_blocks() -> list[object]:
    """The bash blocks' numbers; one that regenerates generated/ (sympy.diff proofs) is slow."""
    return [
        pytest.param(n, marks=pytest.mark.slow) if "symbptt.regenerate" in block else n
        for n, block in enumerate(blocks("bash"))
    ]


@pytest.mark.parametrize("number", bash_blocks(), ids=lambda n: f"block{n + 1}")
def test_bash_snippets_run(number: int, tmp_path: Path) -> None:
    """One block's commands in order, in one fresh folder (a later line may read a file)."""
    if shutil.which("symbptt") is None:
        pytest.fail("the symbptt command is not installed (pip install -e '.[test]')")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # a reader works in a clone
    for command, expected in commands(blocks("bash")[number]):
        if command in RUN_ELSEWHERE:
            continue
        command = re.sub(r"^python ", f"{sys.executable} ", command)
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        assert done.returncode == expected, f"{command}\n{done.stdout[-2000:]}{done.stderr}"
        assert "Traceback" not in done.stderr, f"{command}\n{done.stderr}"
