"""The command that regenerates a file: printed from the parser's own flags, and it works."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import symbptt
from symbptt import ModelSpec
from symbptt.cli.commands import _spec_from_args, build_parser
from symbptt.documents import render_documents
from symbptt.model.presets import PRESETS
from symbptt.model.spec_flags import REGENERATE_PRESETS, preset_of, regenerate_command
from symbptt.oracle.verification import run_checks

ROOT = Path(__file__).resolve().parent.parent
GRU_FILE = "examples/gru_pytorch.toml"

#: Specs that are not presets, with every kind of field away from its default.
SPECS = [
    ModelSpec(),
    ModelSpec(steps=3, notation="layered", mode="many_to_one", bias=False, n_in=3),
    ModelSpec(
        steps=2,
        cell="lstm",
        output="sigmoid",
        loss="binary_cross_entropy",
        time_reduction="mean",
        batch_reduction="sum",
        initial_state="input",
        n_hidden=5,
        n_out=2,
        batch=3,
    ),
    ModelSpec(steps=2, notation="uvw", hidden="relu", output="identity", loss="squared_error"),
]


def _parsed(command: str) -> ModelSpec:
    """The spec ``symbptt derive`` builds from ``command`` (parsed by the CLI's parser)."""
    words = shlex.split(command)
    assert words[:2] == ["symbptt", "derive"] and words[-2:] == ["--out", "DIR"]
    parser, _ = build_parser()
    args = parser.parse_args(words[1:])
    return _spec_from_args(args, args.config)


@pytest.mark.parametrize("spec", [*SPECS, ModelSpec(steps=2, cell=GRU_FILE)])
@pytest.mark.parametrize("unrolled", [False, True])
def test_the_command_parses_back_to_the_same_spec(spec: ModelSpec, unrolled: bool) -> None:
    command = regenerate_command(spec, unrolled=unrolled)
    assert _parsed(command) == spec
    assert ("--unrolled" in command.split()) == unrolled
    for name in ModelSpec.field_names():  # a flag for every field away from its default only
        if getattr(spec, name) == getattr(ModelSpec(), name):
            assert f"--{name.replace('_', '-')} " not in command


def test_presets_name_the_command_that_rewrites_generated() -> None:
    for name, spec in PRESETS.items():
        assert preset_of(spec) == name
        assert regenerate_command(spec) == REGENERATE_PRESETS == "python -m symbptt.regenerate"
        header = symbptt.emit_numpy(spec).split('"""')[1]
        assert (
            f"Regenerate: python -m symbptt.regenerate (the preset {name}: generated/{name}/)\n"
            in header
        )
        assert "symbptt derive" not in header
    assert all(preset_of(spec) is None for spec in SPECS)


def test_a_user_spec_s_files_name_its_own_command() -> None:
    spec = SPECS[1]
    command = "symbptt derive --steps 3 --mode many_to_one --notation layered --n-in 3 --no-bias"
    header = symbptt.emit_numpy(spec).split('"""')[1]
    assert f"Regenerate: {command} --out DIR\n" in header
    assert "seed" not in header and "symbptt.regenerate" not in header
    unrolled = symbptt.emit_numpy(spec, unrolled=True).split('"""')[1]
    assert f"Regenerate: {command} --unrolled --out DIR\n" in unrolled
    markdown = symbptt.render_markdown(spec, verify=False)
    assert f"regenerate with `{command} --out DIR`" in markdown
    assert "symbptt.regenerate" not in markdown
    tex = symbptt.render_latex(spec, verify=False)
    assert r"--mode many\_to\_one --notation layered --n-in 3 --no-bias --out DIR}" in tex


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [SPECS[1], ModelSpec(steps=1, cell=GRU_FILE, time_reduction="mean", n_out=2)],
    ids=["layered", "cell-file"],
)
def test_running_the_command_reproduces_the_files_byte_for_byte(
    spec: ModelSpec, tmp_path: Path
) -> None:
    command = regenerate_command(spec, unrolled=True)
    words = [*shlex.split(command)[2:-1], str(tmp_path / "out"), "--no-pdf", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "symbptt", "derive", *words],
        capture_output=True,
        text=True,
        cwd=ROOT,  # the cell file's path is relative to where the spec was made
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert (out / "gradients.py").read_text() == symbptt.emit_numpy(spec)
    assert (out / "gradients_unrolled.py").read_text() == symbptt.emit_numpy(spec, unrolled=True)
    derivation = symbptt.derive(spec)  # the checks run once, for both documents
    tex, markdown = render_documents(derivation, checks=run_checks(derivation))
    assert (out / "derivation.tex").read_text() == tex
    assert (out / "derivation.md").read_text() == markdown


def test_another_backend_adds_its_flag() -> None:
    spec = SPECS[2]
    command = regenerate_command(spec, backend="torch")
    assert command.endswith(" --backend torch --out DIR") and "--unrolled" not in command
    unrolled = regenerate_command(spec, unrolled=True, backend="torch")
    assert unrolled.endswith(" --backend torch --unrolled --out DIR")
    assert _parsed(command) == spec
    parser, _ = build_parser()
    assert parser.parse_args(shlex.split(command)[1:]).backend == "torch"
    preset = PRESETS["xh_hello"]  # a preset's torch file is not in generated/: its own command
    assert regenerate_command(preset, backend="torch").startswith("symbptt derive --n-in 4 ")
