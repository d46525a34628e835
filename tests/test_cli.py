"""The ``symbptt`` command: every command's happy path, exit codes, one-line errors."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from symbptt import ModelSpec, __version__, derive, load_module
from symbptt.check import model_equations
from symbptt.cli import commands as cli
from symbptt.cli.commands import UsageError, main, spec_from_options, write_outputs
from symbptt.model.notation import NOTATIONS
from symbptt.model.spec import CHOICES, MAX_BATCH, MAX_CHECK_STEPS, MAX_SIZE, MAX_STEPS, SpecError

COMMANDS = ("derive", "check", "notations", "demo")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert ": error: " in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- top level ------------------------------------------------------------------------
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"symbptt {__version__}"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([command, "--help"], capsys)
    assert code == 0, err
    assert out.startswith(f"usage: symbptt {command}")


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert code == 2
    assert "usage: symbptt" in err


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2
    assert_one_line_error(err, "frobnicate")


def test_unknown_flag_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(["derive", "--out", str(tmp_path), "--hiden", "relu"], capsys)
    assert code == 2
    assert_one_line_error(err, "--hiden")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--hidden", "softsign"], "hidden: got 'softsign'"),
        (["--steps", "0"], "steps: got 0"),
        (["--steps", "three"], "--steps"),
        (["--notation", "abc"], "notation: got 'abc'"),
        (["--loss", "binary_cross_entropy", "--output", "identity"], "cannot follow"),
        (["--n-hidden", "-3"], "n_hidden"),
        (["--preset", "nope"], "--preset"),
    ],
)
def test_bad_flag_values_exit_2_in_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, _, err = run(["derive", *argv, "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, needle)
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--steps", "1000000000"], ("steps: got 1000000000", "at most 1000", "--steps")),
        (["--steps", "99999999999999999999999"], ("steps: got", "at most 1000")),
        (["--steps", "9" * 5000], ("--steps", "5000 digits", "at most 1000")),
        (["--steps", "\u0663"], ("--steps", "digits 0-9")),
        (["--n-hidden", "\u0664"], ("--n-hidden", "digits 0-9")),
        (["--batch", "100000000"], ("batch: got 100000000", "at most 64", "--batch")),
        (["--n-in", "1000000000"], ("n_in: got 1000000000", "at most 64", "--n-in")),
        (["--n-in", "99999999999999999999999"], ("n_in: got", "at most 64")),
        (["--n-out", "65"], ("n_out: got 65", "at most 64")),
    ],
)
def test_limits_are_refused_before_any_work(
    argv: list[str],
    needles: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_work(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("work started before the limits were checked")

    monkeypatch.setattr(cli, "build_artifacts", no_work)
    out = tmp_path / "out"
    for command in (["derive", "--out", str(out)], ["check", "--wrt", "W_hh", "x[1]"]):
        code, _, err = run([*command, *argv], capsys)
        assert code == 2
        assert_one_line_error(err, *needles)
        assert len(err) < 300
    assert not out.exists()


def test_check_refuses_too_many_steps_up_front(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    check_module = importlib.import_module("symbptt.checker.core")

    monkeypatch.setattr(check_module, "_derivation", lambda *a: pytest.fail("work started"))
    argv = ["check", "--steps", "1000", "--wrt", "W_hh", "sum_t(delta[t] @ h[t-1].T)"]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert_one_line_error(err, "steps: got 1000", f"at most {MAX_CHECK_STEPS} steps")
    code, out, _ = run(["check", "--help"], capsys)
    assert f"--steps up to {MAX_CHECK_STEPS}" in " ".join(out.split())


def test_unrolled_is_refused_for_long_sequences_up_front(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "build_artifacts", lambda *a, **k: pytest.fail("work started"))
    steps = str(cli.MAX_UNROLLED_STEPS + 1)
    code, _, err = run(["derive", "--steps", steps, "--unrolled", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line_error(err, "--unrolled", f"at most {cli.MAX_UNROLLED_STEPS}")
    assert list(tmp_path.iterdir()) == []


def test_the_limits_and_defaults_are_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["derive", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    assert f"1 to {MAX_STEPS} (default: {ModelSpec().steps})" in text
    assert f"hidden size, 1 to {MAX_SIZE} (default: symbolic, any size)" in text
    assert f"batch size m, 1 to {MAX_BATCH}" in text
    assert f"(default: {ModelSpec().hidden})" in text


def test_the_largest_sizes_are_accepted(tmp_path: Path) -> None:
    flags = {"steps": MAX_STEPS, "n_in": MAX_SIZE, "n_hidden": MAX_SIZE, "batch": MAX_BATCH}
    spec = spec_from_options(None, flags)
    assert (spec.steps, spec.n_in, spec.batch) == (MAX_STEPS, MAX_SIZE, MAX_BATCH)


# -- config files ---------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_config_then_flags_precedence(tmp_path: Path) -> None:
    config = write(
        tmp_path / "model.toml",
        'steps = 6\nhidden = "relu"\nnotation = "layered"\nbias = false\nn_hidden = 5\n',
    )
    spec = spec_from_options(config, {"steps": 2, "hidden": None, "bias": None})
    assert spec == ModelSpec(steps=2, hidden="relu", notation="layered", bias=False, n_hidden=5)
    spec = spec_from_options(config, {"bias": True, "notation": "aa"})
    assert (spec.steps, spec.bias, spec.notation) == (6, True, "aa")


def test_preset_then_config_then_flags(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "steps = 7\n")
    spec = spec_from_options(config, {"n_hidden": 3}, preset="xh_hello")
    assert (spec.steps, spec.n_in, spec.n_out, spec.n_hidden) == (7, 4, 4, 3)


def test_no_config_no_flags_is_the_default_spec() -> None:
    assert spec_from_options() == ModelSpec()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("steps = \n", "not valid TOML"),
        ("hidden = 'tanh\n", "not valid TOML"),
        ("[spec\n", "not valid TOML"),
        ("steps = 3\nlearning_rate = 0.1\n", "unknown spec field(s) 'learning_rate'"),
        ("time-reduction = 'mean'\n", "unknown spec field(s) 'time-reduction'"),
        ("hidden = 'softsign'\n", "hidden: got 'softsign'"),
        ("steps = '3'\n", "steps: got '3'"),
        ("bias = 'yes'\n", "bias: got 'yes'"),
        ("n_in = 2.5\n", "n_in: got 2.5"),
    ],
)
def test_bad_config_exit_2_in_one_line(
    text: str, needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path / "model.toml", text)
    out = tmp_path / "out"
    code, _, err = run(["derive", str(config), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, needle)
    assert str(config) in err
    assert not out.exists()


def test_unknown_config_keys_use_the_specs_own_message(tmp_path: Path) -> None:
    """The CLI adds where the key came from to ModelSpec.from_mapping's message."""
    config = write(tmp_path / "m.toml", "steps = 3\nlr = 0.1\n")
    with pytest.raises(SpecError) as spec_error:
        ModelSpec.from_mapping({"steps": 3, "lr": 0.1})
    with pytest.raises(UsageError) as usage_error:
        spec_from_options(config, {"hidden": "relu"})
    assert str(usage_error.value) == f"{spec_error.value} (from {config})"


def test_config_with_a_byte_order_mark(tmp_path: Path) -> None:
    config = tmp_path / "bom.toml"
    config.write_bytes(b"\xef\xbb\xbfsteps = 3\nhidden = 'relu'\n")
    spec = spec_from_options(config)
    assert (spec.steps, spec.hidden) == (3, "relu")


@pytest.mark.parametrize("source", ["big"])  # /dev/zero: not a regular file (below)
def test_config_size_is_bounded(
    source: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if source == "big":
        path = tmp_path / "big.toml"
        path.write_text("# padding\n" * (cli.MAX_CONFIG_BYTES // 10 + 1) + "steps = 3\n")
    else:
        path = Path(source)
        if not path.exists():
            pytest.fail("/dev/zero is missing on this system")
    code, _, err = run(["derive", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line_error(err, str(path), "too large for a config file", "64 KiB")


@pytest.mark.parametrize("option", ["config", "--check"])
@pytest.mark.parametrize("source", ["fifo", "big", "/dev/zero"])
def test_a_config_or_formula_file_is_a_regular_file_of_bounded_size(
    option: str, source: str, tmp_path: Path
) -> None:
    """A named pipe (a config or a --check file) blocked the command for ever, and --check
    read /dev/zero or a huge file whole (unbounded memory); the cell file refused both.
    Run in a process of its own with a timeout, so that a hang fails instead of waiting."""
    if source == "fifo":
        path = tmp_path / "pipe.toml"
        os.mkfifo(path)
        needle = "not a regular file"
    elif source == "big":
        path = tmp_path / "big.toml"
        path.write_text("# padding\n" * (300 * 1024 // 10) + "[formulas]\n")  # > both limits
        needle = "too large"
    else:
        path = Path(source)
        needle = "not a regular file"
    if option == "config":
        args = ["derive", str(path), "--no-pdf", "--out", str(tmp_path / "o")]
    else:
        args = ["derive", *QUICK, "--no-pdf", "--check", str(path), "--out", str(tmp_path / "o")]
    done = subprocess.run(
        [sys.executable, "-m", "symbptt", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, str(path), needle)
    assert not (tmp_path / "o").exists()


def test_many_unknown_keys_are_fast_and_short(tmp_path: Path) -> None:
    count = 5000  # the most that fit in the size limit with short names
    config = write(tmp_path / "keys.toml", "".join(f"k{i} = 1\n" for i in range(count)))
    assert config.stat().st_size <= cli.MAX_CONFIG_BYTES
    started = time.perf_counter()
    with pytest.raises(UsageError) as error:
        spec_from_options(config, {"hidden": "relu"})
    assert time.perf_counter() - started < 2.0
    message = str(error.value)
    assert message.startswith("unknown spec field(s) 'k0', 'k1', 'k10' and 4997 more; ")
    assert message.endswith(f"(from {config})")
    assert len(message) < 400


def test_a_long_unknown_key_is_shortened(tmp_path: Path) -> None:
    config = write(tmp_path / "long.toml", f"{'x' * 10000} = 1\n")
    with pytest.raises(UsageError) as error:
        spec_from_options(config)
    assert "'xxxx" in str(error.value) and len(str(error.value)) < 400


def test_pyproject_tool_symbptt_is_a_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    pyproject = write(
        project / "pyproject.toml",
        '[project]\nname = "mine"\n\n[tool.symbptt]\nsteps = 3\nhidden = "relu"\n',
    )
    spec = spec_from_options(pyproject, {"steps": 5})
    assert (spec.steps, spec.hidden) == (5, "relu")
    code, _, err = run(["check", str(pyproject), "--wrt", "W_hh", "x"], capsys)
    assert code == 2  # "x" is no name: the spec was read, the expression refused
    assert_one_line_error(err, "EXPR")
    bare = write(project / "pyproject.toml", '[project]\nname = "mine"\n')
    with pytest.raises(UsageError, match=r"has no \[tool\.symbptt\] table"):
        spec_from_options(bare)


def test_bad_value_names_its_source(tmp_path: Path) -> None:
    config = write(tmp_path / "m.toml", "hidden = 'nope'\n")
    with pytest.raises(UsageError, match=r"\(from .*m\.toml\)$"):
        spec_from_options(config)
    with pytest.raises(UsageError, match=r"\(from --hidden\)$"):
        spec_from_options(None, {"hidden": "nope"})


def test_config_without_a_toml_reader(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.10 without tomli: a clear one-line error, not an ImportError."""
    real = importlib.import_module

    def no_toml(name: str, *args: Any) -> Any:
        if name in ("tomllib", "tomli"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(cli.importlib, "import_module", no_toml)
    config = write(tmp_path / "m.toml", "steps = 3\n")
    code, _, err = run(["derive", str(config), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line_error(err, "Python 3.11", "pip install tomli")


def test_missing_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(["derive", str(tmp_path / "none.toml"), "--out", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line_error(err, "none.toml", "not found")


def test_config_is_a_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(["derive", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line_error(err, "is a folder")


def test_binary_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "bin.toml"
    config.write_bytes(b"\xff\xfe\x00steps")
    code, _, err = run(["derive", str(config), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line_error(err, "bin.toml")


# -- the writer -----------------------------------------------------------------------
MARKED = b"# Generated by symbptt; do not edit.\n"


def test_writer_creates_folder_and_files(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    written = write_outputs(
        folder, {"x.py": MARKED + b"x = 1\n", "y.md": b"<!-- Generated by symbptt -->\n"}
    )
    assert [p.name for p in written.files] == ["x.py", "y.md"]
    assert (folder / "x.py").read_bytes() == MARKED + b"x = 1\n"
    assert sorted(p.name for p in folder.iterdir()) == ["x.py", "y.md"]


def test_writer_overwrites_its_own_files(tmp_path: Path) -> None:
    write_outputs(tmp_path, {"x.py": MARKED + b"x = 1\n"})
    write_outputs(tmp_path, {"x.py": MARKED + b"x = 2\n"})
    assert (tmp_path / "x.py").read_bytes() == MARKED + b"x = 2\n"


def test_writer_never_overwrites_a_users_file_without_force(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("my notes\n")
    with pytest.raises(UsageError, match=r"notes\.md: not written by symbptt.*--force"):
        write_outputs(tmp_path, {"code.py": MARKED, "notes.md": MARKED})
    # nothing written at all, not even the file that was free
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]
    assert (tmp_path / "notes.md").read_text() == "my notes\n"
    write_outputs(tmp_path, {"code.py": MARKED, "notes.md": MARKED}, force=True)
    assert (tmp_path / "notes.md").read_bytes() == MARKED


def test_refused_destination_leaves_no_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check_destination runs before the folder is created: a refusal leaves nothing behind."""

    def refuse(folder: Path, names: object, force: bool = False) -> None:
        assert not folder.exists(), "the folder was created before the destination was checked"
        raise UsageError(f"{folder}: refused")

    monkeypatch.setattr(cli, "check_destination", refuse)
    with pytest.raises(UsageError, match="refused"):
        write_outputs(tmp_path / "new" / "out", {"x.py": MARKED})
    assert list(tmp_path.iterdir()) == []
    # and a real refusal: the output folder would sit under a file
    (tmp_path / "blocker").write_text("a file, not a folder\n")
    monkeypatch.undo()
    with pytest.raises(UsageError, match="cannot create the output folder"):
        write_outputs(tmp_path / "blocker" / "out", {"x.py": MARKED})
    assert [p.name for p in tmp_path.iterdir()] == ["blocker"]


def test_a_folder_in_the_way_leaves_no_new_folder(tmp_path: Path) -> None:
    """A destination refused for its contents: the parents made for it would stay behind."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.py").mkdir()  # a folder where symbptt writes x.py
    with pytest.raises(UsageError, match="is a folder where symbptt writes"):
        write_outputs(out, {"x.py": MARKED})
    assert [p.name for p in out.iterdir()] == ["x.py"]


def test_writer_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.py").write_bytes(MARKED + b"old = 1\n")
    calls = []
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(cli.os, "fsync", failing_fsync)
    with pytest.raises(UsageError, match="No space left on device"):
        write_outputs(tmp_path, {"a.py": MARKED + b"new = 1\n", "b.py": MARKED})
    # the old file is untouched, the new one absent, no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.py"]
    assert (tmp_path / "a.py").read_bytes() == MARKED + b"old = 1\n"


def test_writer_cleans_up_on_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(tmp_path, {"a.py": MARKED})
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_a_folder_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "x.py").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        write_outputs(tmp_path, {"x.py": MARKED}, force=True)


def test_writer_output_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        write_outputs(tmp_path / "file", {"x.py": MARKED})
    with pytest.raises(UsageError, match="cannot create the output folder"):
        write_outputs(tmp_path / "file" / "sub", {"x.py": MARKED})


def test_writer_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.geteuid() == 0:  # root writes anyway: make the file system refuse as it would

        def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        with pytest.raises(UsageError, match="cannot write"):
            write_outputs(folder, {"x.py": MARKED})
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []


def test_written_files_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_outputs(tmp_path, {"x.py": MARKED})
    finally:
        os.umask(old)
    assert (tmp_path / "x.py").stat().st_mode & 0o777 == 0o644


# -- subprocess -----------------------------------------------------------------------
def test_python_dash_m_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "symbptt", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"symbptt {__version__}"


# -- derive ---------------------------------------------------------------------------
#: A spec whose document proof is quick (identity layers, squared error, T = 2).
QUICK = ["--steps", "2", "--hidden", "identity", "--output", "identity", "--loss", "squared_error"]
DOCS = ("gradients.py", "derivation.tex", "derivation.md")


def test_derive_writes_code_and_documents(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(["derive", *QUICK, "--out", str(out), "--unrolled", "--no-pdf"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted([*DOCS, "gradients_unrolled.py"])
    for name in (*DOCS, "gradients_unrolled.py"):
        assert f"wrote {out / name}" in stdout
    assert "numerical check of the generated code" in stdout
    assert "max relative error" in stdout and stdout.count("  OK") == 2
    assert "T=2, identity hidden" in stdout
    # the code works and is the spec's
    module = load_module((out / "gradients.py").read_text())
    assert module.SPEC["steps"] == 2 and module.SPEC["loss"] == "squared_error"
    assert "Generated by symbptt" in (out / "derivation.md").read_text()
    # derive again over its own files: fine without --force
    code, _, err = run(["derive", *QUICK, "--out", str(out), "--no-pdf"], capsys)
    assert code == 0, err


def test_derive_derives_each_spec_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's spec and the code's (symbolic sizes, h0 an input): each derived once;
    the scalar proof runs on the user's own derivation (its T is small: its symbolic
    sizes are set to the proof's), and the numerical check on the code just printed."""
    stage = sys.modules["symbptt.core.derive"]
    real, calls = stage.derive, []

    def counted(spec: ModelSpec, *args: Any, **kwargs: Any) -> Any:
        calls.append(spec.canonical())
        return real(spec, *args, **kwargs)

    for module in list(sys.modules.values()):
        if module is not None and getattr(module, "derive", None) is real:
            monkeypatch.setattr(module, "derive", counted)
    code, _, err = run(["derive", *QUICK, "--out", str(tmp_path / "out"), "--no-pdf"], capsys)
    assert code == 0, err
    assert len(calls) == 2 and len(set(calls)) == 2, calls


def test_derive_from_config_with_flag_override(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(
        tmp_path / "model.toml",
        'steps = 3\nhidden = "identity"\noutput = "identity"\nloss = "squared_error"\n'
        'notation = "layered"\n',
    )
    out = tmp_path / "out"
    code, stdout, err = run(
        ["derive", str(config), "--steps", "2", "--out", str(out), "--no-pdf"], capsys
    )
    assert code == 0, err
    module = load_module((out / "gradients.py").read_text())
    assert (module.SPEC["steps"], module.SPEC["notation"]) == (2, "layered")
    assert "notation layered, T=2" in stdout


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs pdflatex")
@pytest.mark.tex
def test_derive_builds_the_pdf(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(["derive", *QUICK, "--out", str(out)], capsys)
    assert code == 0, err
    pdf = (out / "derivation.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    assert cli.generated_by_symbptt(out / "derivation.pdf")
    assert f"wrote {out / 'derivation.pdf'}" in stdout


def test_derive_without_tex_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    out = tmp_path / "out"
    code, _, err = run(["derive", *QUICK, "--out", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(DOCS)
    warning = [line for line in err.splitlines() if "derivation.pdf" in line]
    assert len(warning) == 1 and "install" in warning[0] and "pdflatex" in warning[0]


def fake_pdflatex(folder: Path) -> Path:
    """A pdflatex that hangs, with a child process that would keep a pipe open."""
    folder.mkdir()
    script = folder / "pdflatex"
    script.write_text("#!/bin/sh\nsleep 60 &\nsleep 60\n", encoding="utf-8")
    script.chmod(0o755)
    return folder


def test_a_hanging_pdflatex_is_stopped_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from symbptt.documents import TeXError, compile_pdf

    bin_dir = fake_pdflatex(tmp_path / "bin")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    started = time.monotonic()
    with pytest.raises(TeXError, match=r"^pdflatex did not finish within 1 s and was stopped"):
        compile_pdf("\\documentclass{article}\\begin{document}x\\end{document}", timeout=1)
    assert time.monotonic() - started < 10
    assert list(scratch.iterdir()) == []


def test_derive_with_a_hanging_pdflatex_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from symbptt import documents

    bin_dir = fake_pdflatex(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(documents, "TEX_TIMEOUT", 1.0)
    out = tmp_path / "out"
    code, _, err = run(["derive", *QUICK, "--out", str(out)], capsys)
    assert code == 1
    warning = [line for line in err.splitlines() if "derivation.pdf" in line]
    assert len(warning) == 1 and "did not finish within 1 s" in warning[0], err
    assert "derivation.tex" in {p.name for p in out.iterdir()}


@pytest.mark.parametrize(
    "argv",
    [
        ["derive", *QUICK, "--unrolled", "--out", "{out}"],
        ["demo", "--iterations", "1", "--no-plots", "--out", "{out}"],
    ],
    ids=["derive", "demo"],
)
def test_commands_leave_nothing_in_the_temporary_folder(argv: list[str], tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    args = [arg.replace("{out}", str(tmp_path / "out")) for arg in argv]
    done = subprocess.run(
        [sys.executable, "-m", "symbptt", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert done.returncode in (0, 1), done.stderr
    assert (tmp_path / "out" / "gradients.py").exists()
    assert list(scratch.iterdir()) == []


def test_a_terminated_command_leaves_nothing_in_the_temporary_folder(tmp_path: Path) -> None:
    """SIGTERM (kill, timeout) exits through the cleanup: status 143, the scratch folder gone."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "symbptt", "derive", *QUICK, "--out", str(tmp_path / "out")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    deadline = time.monotonic() + 120
    while not list(scratch.iterdir()) and process.poll() is None:
        assert time.monotonic() < deadline, "the command made no scratch folder"
        time.sleep(0.05)
    assert process.poll() is None, "the command ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert list(scratch.iterdir()) == []


def test_sigterm_right_after_the_scratch_folder_is_made_still_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal arriving just after the folder's mkdir (as it may under load): the
    command exits with 143 and the folder is gone, its name was recorded first."""
    import threading

    from symbptt.cli import commands

    assert threading.current_thread() is threading.main_thread()  # signals reach it
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made: list[str] = []
    real = os.mkdir

    def mkdir_then_terminated(path: str, *args: Any) -> None:
        real(path, *args)
        made.append(path)
        os.kill(os.getpid(), signal.SIGTERM)  # Python raises at the next bytecode

    monkeypatch.setattr(os, "mkdir", mkdir_then_terminated)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info, commands._scratch_folder():
        pytest.fail("SIGTERM was not raised")
    assert info.value.code == 143
    assert made and not Path(made[0]).exists()
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_an_unusable_temporary_folder_does_not_stop_notations(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    code, out, err = run(["notations", "xh"], capsys)
    assert code == 0, err
    assert out.startswith("xh (the default)")


def test_derive_never_overwrites_a_users_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "derivation.md"
    mine.write_text("# my own notes\n")
    code, _, err = run(["derive", *QUICK, "--out", str(out), "--no-pdf"], capsys)
    assert code == 2
    assert_one_line_error(err, "derivation.md", "not written by symbptt", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["derivation.md"]  # nothing written
    assert mine.read_text() == "# my own notes\n"
    code, _, err = run(["derive", *QUICK, "--out", str(out), "--no-pdf", "--force"], capsys)
    assert code == 0, err
    assert "Generated by symbptt" in mine.read_text()


def test_derive_into_an_unusable_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        code, _, err = run(["derive", *QUICK, "--out", str(out), "--no-pdf"], capsys)
        assert code == 2
        assert_one_line_error(err, str(out))
    assert blocker.read_text() == "x"


def test_derive_leaves_nothing_half_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    calls: list[int] = []
    real_fsync = os.fsync

    def disk_full_at_the_third_file(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(cli.os, "fsync", disk_full_at_the_third_file)
    code, _, err = run(["derive", *QUICK, "--out", str(out), "--no-pdf"], capsys)
    assert code == 2
    assert_one_line_error(err, "No space left on device")
    assert not out.exists()  # not even the folder, made for this run, is left


@pytest.mark.parametrize("command", ["derive", "demo"])
@pytest.mark.parametrize("out", ["", " "])
def test_empty_out_is_refused(
    command: str,
    out: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run([command, "--out", out, "--no-pdf"], capsys)
    assert code == 2
    assert_one_line_error(err, "--out: got", "folder name")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["derive", "demo"])
@pytest.mark.parametrize("shape", ["long", "long/inner", "new/long/inner"])
def test_too_long_folder_name_is_one_line(
    command: str,
    shape: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "build_artifacts", lambda *a, **k: pytest.fail("work started"))
    out = tmp_path / shape.replace("long", "a" * 300)
    code, _, err = run([command, "--out", str(out), "--no-pdf"], capsys)
    assert code == 2
    assert_one_line_error(err, "output folder", "300 bytes")
    assert len(err) < 300
    assert list(tmp_path.iterdir()) == []


def test_a_later_run_removes_what_an_earlier_one_wrote_and_this_one_does_not(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, _, err = run(["derive", *QUICK, "--unrolled", "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "gradients_unrolled.py").exists()
    earlier = {p.name for p in out.iterdir()}
    fake_pdf = out / "derivation.pdf"  # as an earlier run with TeX would have left it
    fake_pdf.write_bytes(b"%PDF-1.5\n% " + cli._marker().encode() + b"\n%%EOF\n")
    users = out / "notes.txt"
    users.write_text("mine\n", encoding="utf-8")
    code, out_text, err = run(
        ["derive", *QUICK, "--steps", "3", "--no-pdf", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted([*DOCS, "notes.txt"])
    assert f"removed {out / 'gradients_unrolled.py'}" in out_text
    assert f"removed {fake_pdf}" in out_text
    assert "gradients_unrolled.py" in earlier


def test_a_later_run_removes_an_earlier_run_s_module_of_every_backend(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The names a run may remove were a list typed by hand that missed cupy's and
    array_api's modules: a run with another backend left them beside its own outputs."""
    out = tmp_path / "out"
    ours = out / "gradients_array_api.py", out / "gradients_array_api_unrolled.py"
    code, _, err = run(
        ["derive", *QUICK, "--no-pdf", "--backend", "array_api", "--unrolled", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    assert all(path.exists() for path in ours)
    (out / "gradients_cupy.py").write_bytes(ours[0].read_bytes())  # as a run with CuPy wrote
    code, out_text, err = run(["derive", *QUICK, "--no-pdf", "--out", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(DOCS)
    for name in ("gradients_array_api.py", "gradients_array_api_unrolled.py", "gradients_cupy.py"):
        assert f"removed {out / name}" in out_text


def test_a_users_file_with_an_output_name_is_kept(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "gradients_unrolled.py"
    mine.write_text("# my own code\n", encoding="utf-8")
    code, _, err = run(["derive", *QUICK, "--out", str(out)], capsys)
    assert code == 0, err
    assert mine.read_text(encoding="utf-8") == "# my own code\n"


def test_a_second_run_into_a_locked_folder_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fcntl = pytest.importorskip("fcntl", reason="flock is POSIX-only")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(cli, "build_artifacts", lambda *a, **k: pytest.fail("work started"))
    holder = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a first run holds it
        for command in (["derive", *QUICK], ["demo", "--no-plots"]):
            code, _, err = run([*command, "--out", str(out)], capsys)
            assert code == 2
            assert_one_line_error(err, str(out), "another symbptt run is writing")
    finally:
        os.close(holder)
    assert list(out.iterdir()) == []


def test_a_folder_that_cannot_be_read_is_still_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock needs the folder opened for reading; without that, the run goes on unlocked."""
    out = tmp_path / "out"
    out.mkdir()
    real_open = os.open

    def no_read(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path) == out and not flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)  # rmtree passes dir_fd=

    monkeypatch.setattr(cli.os, "open", no_read)  # os.open itself: every caller sees it
    code, _, err = run(["derive", *QUICK, "--no-pdf", "--out", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(DOCS)


def test_a_second_derive_process_is_refused_while_the_folder_is_locked(tmp_path: Path) -> None:
    """The lock holds across processes: a run started while this one holds it is refused."""
    fcntl = pytest.importorskip("fcntl", reason="flock is POSIX-only")
    out = tmp_path / "out"
    out.mkdir()
    holder = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = symbptt_process("derive", *QUICK, "--no-pdf", "--out", str(out))
    finally:
        os.close(holder)
    assert refused.returncode == 2
    assert len(refused.stderr.splitlines()) == 1
    assert "another symbptt run is writing into this folder" in refused.stderr
    after = symbptt_process("derive", *QUICK, "--no-pdf", "--out", str(out))
    assert after.returncode == 0, after.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(DOCS)


def test_derive_needs_out(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["derive"], capsys)
    assert code == 2
    assert_one_line_error(err, "--out")


# -- check ----------------------------------------------------------------------------
def test_check_equal_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", "--wrt", "W_hh", "sum_t(delta[t] @ h[t-1].T)"], capsys)
    assert code == 0
    assert out.startswith("∂L/∂W_hh: EQUAL")


def test_check_not_equal_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", "--wrt", "W_hh", "sum_t(delta[t] @ h[t].T)"], capsys)
    assert code == 1
    assert out.startswith("∂L/∂W_hh: NOT EQUAL")
    assert "off-by-one" in out


def test_check_with_config_and_flags_in_any_order(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path / "layered.toml", 'notation = "layered"\nsteps = 5\n')
    expr = "sum_t(H1[t-1].T @ delta[t])"
    code, out, _ = run(["check", str(config), "--steps", "3", "--wrt", "W_h1", expr], capsys)
    assert code == 0, out
    assert "T=3" in out
    code, out, _ = run(["check", "--wrt", "W_h1", str(config), expr, "--steps", "2"], capsys)
    assert code == 0, out
    assert "T=2" in out
    code, out, _ = run(["check", "--wrt", "W_h1", expr, str(config)], capsys)
    assert code == 0, out
    assert "T=5" in out


def test_check_expression_starting_with_minus(capsys: pytest.CaptureFixture[str]) -> None:
    expr = "-sum_t((y[t] - y_hat[t]) @ h[t].T) / m"
    code, out, _ = run(["check", "--steps", "2", "--wrt", "W_hy", "--", expr], capsys)
    assert code == 0, out


@pytest.mark.parametrize(
    "argv",
    [
        ["--wrt", "W_hh", "--", "-W_hh"],
        ["--", "-W_hh", "--wrt"],  # after --, everything is an operand: EXPR, then an extra
        ["--wrt", "W_hh", "--steps", "2", "--", "-W_hh"],
    ],
)
def test_check_double_dash_then_an_expression_like_a_flag(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(["check", *argv], capsys)
    if argv[0] == "--":
        assert code == 2
        assert_one_line_error(err, "--wrt")
        return
    assert code == 1, err  # -W_hh is a wrong gradient, but it is read and checked
    assert "candidate: -W_hh" in out


def test_check_double_dash_with_a_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path / "model.toml", "steps = 2\n")
    expr = "-sum_t((y[t] - y_hat[t]) @ h[t].T) / m"
    code, out, err = run(["check", str(config), "--wrt", "W_hy", "--", expr], capsys)
    assert code == 0, err
    assert "T=2" in out
    code, out, err = run(["check", "--wrt", "W_hy", "--", str(config), "-W_hy"], capsys)
    assert code == 1, err
    assert "T=2" in out and "candidate: -W_hy" in out


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--wrt", "W_hh", "sum_t(delta[t] @ hh[t-1].T)"], ("EXPR", "unknown name 'hh'", "column")),
        (["--wrt", "W_hh", "__import__('os')"], ("EXPR",)),
        (["--wrt", "W_hh", "sum_t(delta[t] @ h[t-1].T"], ("EXPR",)),
        (["--wrt", "W_hh", "   "], ("EXPR", "empty")),
        (["--wrt", "V", "sum_t(delta[t] @ h[t-1].T)"], ("wrt", "'V'")),
        (["--wrt", "W_hh", "a", "b", "c"], ("3 operands",)),
        (["--wrt", "W_hh", "--hidden", "gelu", "x[1]"], ("hidden: got 'gelu'", "--hidden")),
        (["sum_t(delta[t] @ h[t-1].T)"], ("--wrt",)),
    ],
)
def test_check_bad_input_exits_2(
    argv: list[str], needles: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["check", *argv], capsys)
    assert code == 2
    assert out == ""
    assert_one_line_error(err, *needles)


def test_check_bad_config_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path / "bad.toml", "stepz = 3\n")
    code, _, err = run(["check", str(config), "--wrt", "W_hh", "x[1]"], capsys)
    assert code == 2
    assert_one_line_error(err, "bad.toml", "unknown spec field(s) 'stepz'")


# -- notations ------------------------------------------------------------------------
def test_notations_lists_the_four_presets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["notations"], capsys)
    assert code == 0
    for key, seed in (("uvw", "000_"), ("xh", "001_"), ("layered", "002_"), ("aa", "003_")):
        assert f"\n{key}" in "\n" + out
        assert seed in out
    for name in ("W_xh", "W_hh", "U", "W_h1", "beta_1", "H1[t]", "w_aa", "net_a[t]", "delta[t]"):
        assert name in out
    assert "z[t]     = W_xh @ x[t] + W_hh @ h[t-1] + b_h @ ones(1, m)" in out
    assert "Z1[t]    = X[t] @ W_1 + H1[t-1] @ W_h1 + ones(m, 1) @ beta_1.T" in out
    assert "sum_t(...)" in out and "softmax(A)" in out


@pytest.mark.parametrize("key", ["xh", "uvw", "layered", "aa"])
def test_notations_equations_are_printed_from_the_derivation(
    key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every equation `notations` shows is the derivation's, in the checker's language."""
    code, out, _ = run(["notations", key], capsys)
    assert code == 0
    spec = ModelSpec(notation=key)
    for lhs, rhs in model_equations(spec):
        assert re.search(rf"\n    {re.escape(lhs)} +\= {re.escape(rhs)}\n", out), (lhs, rhs)
    d = derive(spec)
    total = d.graph.assignments[-1]
    assert f"{total.target} " in out and "/ m\n" in out  # the total loss, mean over the batch
    hidden = NOTATIONS[key].series_of("hidden").ascii
    pre = NOTATIONS[key].series_of("pre_activation").ascii
    assert f"{hidden}[t]" in out and f"= {spec.hidden}({pre}[t])" in out
    assert "f(z[t])" not in out and "sum_t L[t]" not in out


def test_notations_equations_parse_in_the_expression_language() -> None:
    """The printed right-hand sides are formulas `check` reads (those of matrices)."""
    from symbptt.check import namespace
    from symbptt.expr.exprlang import parse

    for key in ("xh", "layered"):
        spec = ModelSpec(notation=key, n_in=2, n_hidden=3, n_out=2, batch=1)
        ns = namespace(derive(spec))
        for _lhs, rhs in model_equations(spec)[:4]:
            parse(rhs.replace("[t-1]", "[1]").replace("[t]", "[2]"), ns)


def test_notations_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["notations", "aa"], capsys)
    assert code == 0
    assert out.startswith("aa: ")
    assert "W_xh" not in out
    code, _, err = run(["notations", "abc"], capsys)
    assert code == 2
    assert_one_line_error(err, "'abc'")
    # the choices in CHOICES' order (xh, the default, first)
    expected = ", ".join(map(repr, CHOICES["notation"]))
    assert f"expected one of {expected}" in err


def test_every_notations_name_is_accepted_by_check(capsys: pytest.CaptureFixture[str]) -> None:
    """The names `notations` lists are the ones `check` reads (layered shown here)."""
    code, out, _ = run(
        [
            "check",
            "--notation",
            "layered",
            "--wrt",
            "beta_2",
            "sum_t((Y_hat[t] - Y[t]).T @ ones(m, 1)) / m",
        ],
        capsys,
    )
    assert code == 0, out


# -- demo -----------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_learns_hello(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    code, out, err = run(["demo", "--no-pdf"], capsys)
    assert code == 0, out + err
    assert '"hell" -> "o"' in out
    for prefix, guess in (("h", "e"), ("he", "l"), ("hel", "l")):
        assert f'"{prefix}"'.ljust(6) + f' -> "{guess}"' in out
    losses = [float(line.split()[-1]) for line in out.splitlines() if "iteration" in line]
    assert len(losses) >= 5 and losses[-1] < 0.05 * losses[0]
    assert "numerical check of the generated code" in out and "  OK" in out
    assert "||dL_T/dh_k||" in out and "the vanishing gradient" in out
    assert "pip install 'symbptt[plot]'" in out
    folder = tmp_path / "symbptt-demo"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*DOCS, "gradients_unrolled.py"])
    # a second run overwrites its own files
    code, _, err = run(["demo", "--no-pdf", "--iterations", "60"], capsys)
    assert code in (0, 1), err


@pytest.mark.slow
def test_demo_writes_plots(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    code, stdout, err = run(["demo", "--out", str(out), "--no-pdf", "--iterations", "100"], capsys)
    assert code == 0, stdout + err
    for name in ("loss.png", "gradient_norms.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG")
        assert cli.generated_by_symbptt(out / name)
    assert "pip install" not in stdout


def test_demo_protects_a_users_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "gradients.py").write_text("print('mine')\n")
    code, stdout, err = run(["demo", "--out", str(out)], capsys)
    assert code == 2
    assert stdout == ""  # refused before any work
    assert_one_line_error(err, "gradients.py", "--force")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--iterations", "0"], "--iterations"),
        (["--hidden-units", "0"], "--hidden-units"),
        (["--optimizer", "rmsprop"], "--optimizer"),
        (["--iterations", "100001"], "--iterations: got 100001; expected 1 to 100000"),
        (["--hidden-units", "65"], "--hidden-units: got 65; expected 1 to 64"),
        (["--hidden-units", "9" * 100], "--hidden-units"),
        (["--seed", "-1"], "--seed: got -1"),
        (["--seed", "\u0663"], "digits 0-9"),
    ],
)
def test_demo_bad_options(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(["demo", "--out", str(tmp_path / "d"), *argv], capsys)
    assert code == 2
    assert_one_line_error(err, needle)
    assert not (tmp_path / "d").exists()


# -- as a user runs it ----------------------------------------------------------------
def symbptt_process(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "symbptt", *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def test_subprocess_check_exit_codes() -> None:
    equal = symbptt_process("check", "--wrt", "W_hh", "sum_t(delta[t] @ h[t-1].T)")
    assert equal.returncode == 0, equal.stderr
    wrong = symbptt_process("check", "--wrt", "W_hh", "sum_t(delta[t] @ h[t].T)")
    assert wrong.returncode == 1, wrong.stderr
    bad = symbptt_process("check", "--wrt", "W_hh", "sum_t(")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_subprocess_bad_config_is_one_line(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "steps = [1, 2\n")
    result = symbptt_process("derive", str(config), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "not valid TOML" in result.stderr


def test_subprocess_reader_leaves_early() -> None:
    """`symbptt notations | head -1`: no BrokenPipeError traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "symbptt", "notations"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before anything is written
    error = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=60) == 141
    assert "Traceback" not in error


def test_derive_json_and_quiet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text, err = run(["derive", *QUICK, "--no-pdf", "--out", str(out), "--json"], capsys)
    assert code == 0, err
    report = json.loads(text)  # the whole of stdout is one JSON object
    assert report["ok"] is True and report["spec"]["steps"] == 2
    assert report["spec_hash"] == ModelSpec(**report["spec"]).hash()
    assert sorted(Path(name).name for name in report["written"]) == sorted(DOCS)
    assert [check["name"] for check in report["checks"]] == ["gradients.py"]
    assert report["checks"][0]["ok"] is True and report["removed"] == []
    code, text, err = run(["derive", *QUICK, "--no-pdf", "--out", str(out), "--quiet"], capsys)
    assert code == 0 and text == "" and err == ""


def test_check_json_and_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    wrong = ["check", "--wrt", "W_hh", "sum_t(delta[t] @ h[t].T)"]
    code, text, _ = run([*wrong, "--json"], capsys)
    assert code == 1
    report = json.loads(text)
    assert report["ok"] is False and report["wrt"] == "W_hh"
    assert "off_by_one" in report["mistakes"] and "NOT EQUAL" in report["explanation"]
    code, text, err = run([*wrong, "--quiet"], capsys)
    assert (code, text, err) == (1, "", "")
    code, _, err = run([*wrong, "--quiet", "--json"], capsys)
    assert code == 2
    assert_one_line_error(err, "--json", "--quiet")


def test_progress_lines_reach_a_pipe_while_the_run_goes_on(tmp_path: Path) -> None:
    """Off a terminal each stage is a whole line on stdout, flushed at once (no bar)."""
    command = [sys.executable, "-m", "symbptt", "derive", "--steps", "40", "--unrolled"]
    process = subprocess.Popen(
        [*command, "--no-pdf", "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    still_running = process.poll() is None
    rest, err = process.communicate(timeout=300)
    assert first == "symbptt derive: deriving the gradients\n"
    assert still_running, "the first progress line came only when the run ended"
    assert "symbptt derive: checking gradients_unrolled.py numerically\n" in rest
    assert "\r" not in first + rest and err == ""
    assert process.returncode == 0


@pytest.mark.slow
def test_subprocess_derive(tmp_path: Path) -> None:
    result = symbptt_process("derive", *QUICK, "--out", "out", "--no-pdf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress line off a terminal
    assert (tmp_path / "out" / "gradients.py").exists()


def test_check_names_lists_every_cells_names(capsys: pytest.CaptureFixture[str]) -> None:
    from symbptt.check import names_text

    code, out, _ = run(["check", "--cell", "lstm", "--names"], capsys)
    assert code == 0 and out.strip() == names_text(ModelSpec(cell="lstm")).strip()
    assert "dc[t]" in out and "delta_f[t]" in out
    code, _, err = run(["check", "--cell", "gru", "x[1]"], capsys)
    assert code == 2
    assert_one_line_error(err, "--wrt NAME is required")
    code, _, err = run(["check", "--names", "x[1]"], capsys)
    assert code == 2
    assert_one_line_error(err, "--names takes no EXPR")


# -- derive --check FILE: the user's own formulas in the documents --------------------------
def test_derive_check_prints_each_formula_with_its_verdict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    formulas = write(
        tmp_path / "mine.toml",
        '[formulas]\nW_hh = "sum_t(delta[t] @ h[t-1].T)"\nb_h = "sum_t(delta[t]) / 2"\n',
    )
    out = tmp_path / "out"
    argv = ["derive", *QUICK, "--out", str(out), "--no-pdf", "--check", str(formulas)]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "your formulas (mine.toml" in stdout
    assert re.search(r"W_hh +EQUAL\n", stdout) and re.search(r"b_h +NOT EQUAL\n", stdout)
    from symbptt.check import check

    spec = ModelSpec(steps=2, hidden="identity", output="identity", loss="squared_error")
    wrong = check(spec, "b_h", "sum_t(delta[t]) / 2")  # the checker's own verdict
    assert not wrong.ok and check(spec, "W_hh", "sum_t(delta[t] @ h[t-1].T)").ok
    md = (out / "derivation.md").read_text()
    mine = md.split("**Your formulas.**")[1]
    assert "`mine.toml`" in mine
    assert "**EQUAL**. `sum_t(delta[t] @ h[t-1].T)`" in mine
    assert "**NOT EQUAL**. `sum_t(delta[t]) / 2`" in mine
    assert f"Correct: `{wrong.formula.gradient}`" in mine
    tex = (out / "derivation.tex").read_text()
    assert r"\paragraph{Your formulas.}" in tex and r"\texttt{mine.toml}" in tex
    # the JSON report carries the verdicts too
    out2 = tmp_path / "out2"
    argv = ["derive", *QUICK, "--out", str(out2), "--no-pdf", "--check", str(formulas)]
    code, stdout, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    verdicts = [(f["wrt"], f["verdict"]) for f in json.loads(stdout)["formulas"]]
    assert verdicts == [("W_hh", "EQUAL"), ("b_h", "NOT EQUAL")]


@pytest.mark.parametrize("preset", [None, "aa_hello"])
def test_derive_check_documents_name_the_command_that_writes_them_again(
    preset: str | None,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --check FILE the documents' header gives --check with the file's name (a
    preset's too: python -m symbptt.regenerate writes none); run from the file's folder,
    that command writes the same documents again, byte for byte."""
    import shlex

    formulas = write(tmp_path / "mine.toml", '[formulas]\nb_y = "sum_t(y_hat[t] - y[t])"\n')
    spec = QUICK if preset is None else ["--preset", preset, "--steps", "2"]
    argv = ["derive", *spec, "--out", str(tmp_path / "a"), "--no-pdf", "--check", str(formulas)]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    md = (tmp_path / "a" / "derivation.md").read_text()
    command = re.search(r"regenerate with `([^`]+)`", md)
    assert command is not None and "--check mine.toml --out DIR" in command.group(1), md[:600]
    tex = (tmp_path / "a" / "derivation.tex").read_text()
    assert f"regenerate with `{command.group(1)}`" in tex
    again = shlex.split(command.group(1).replace("DIR", str(tmp_path / "b")))
    assert again[:2] == ["symbptt", "derive"]
    monkeypatch.chdir(tmp_path)
    code, _, err = run([*again[1:], "--no-pdf"], capsys)
    assert code == 0, err
    for name in ("derivation.md", "derivation.tex", "gradients.py"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (None, ("cannot be read",)),
        ("[formulas\n", ("not TOML",)),
        ('W_hh = "h[1]"\n', ("unexpected key 'W_hh'", "[formulas]")),
        ("[other]\n", ("unexpected key 'other'",)),
        ("[formulas]\n", ("[formulas] is empty",)),
        ("[formulas]\nW_hh = 3\n", ("formulas.W_hh", "expected a string", "got int")),
        ('[formulas]\nW_hh = "  "\n', ("formulas.W_hh", "empty")),
        ('[formulas]\nW_zz = "h[1]"\n', ("formulas.W_zz", "no gradient named 'W_zz'")),
        ('[formulas]\nW_hh = "sum_t(h[t"\n', ("formulas.W_hh", "syntax error")),
        ("[formulas]\nW_hh = \"__import__('os')\"\n", ("formulas.W_hh",)),
        (b'[formulas]\nW_hh = "\xff"\n', ("cannot be read",)),
    ],
    ids=[
        "missing",
        "not-toml",
        "no-table",
        "other-table",
        "empty",
        "not-a-string",
        "blank",
        "no-such-parameter",
        "syntax",
        "code",
        "not-utf8",
    ],
)
def test_derive_check_bad_file_is_one_line_exit_2_nothing_written(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    text: str | bytes | None,
    needles: tuple[str, ...],
) -> None:
    path = tmp_path / "formulas.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        write(path, text)
    out = tmp_path / "out"
    argv = ["derive", *QUICK, "--out", str(out), "--no-pdf", "--check", str(path)]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert_one_line_error(err, "--check", *needles)
    assert not out.exists()


def test_derive_check_of_a_composed_model_prints_each_formula_in_its_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A bidirectional masked model's formulas, named with the units' tags, each with the
    checker's own verdict, in the command's report, the JSON and both documents."""
    formulas = write(
        tmp_path / "units.toml",
        "[formulas]\n"
        'W_hh_b = "sum_t(delta_b[t] @ h_b[t+1].T)"\n'
        'W_hh_f = "sum_t(delta_f[t] @ h_f[t].T)"\n',
    )
    composed = [*QUICK, "--bidirectional", "--masked"]
    out = tmp_path / "out"
    argv = ["derive", *composed, "--out", str(out), "--no-pdf", "--check", str(formulas)]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    from symbptt.check import check

    spec = ModelSpec(
        steps=2,
        hidden="identity",
        output="identity",
        loss="squared_error",
        direction="bidirectional",
        masked=True,
    )
    right = check(spec, "W_hh_b", "sum_t(delta_b[t] @ h_b[t+1].T)")  # the checker's verdicts
    wrong = check(spec, "W_hh_f", "sum_t(delta_f[t] @ h_f[t].T)")
    assert right.ok and not wrong.ok
    assert re.search(r"W_hh_b +EQUAL\n", stdout) and re.search(r"W_hh_f +NOT EQUAL\n", stdout)
    md = (out / "derivation.md").read_text()
    mine = md.split("**Your formulas.**")[1]
    assert "`units.toml`" in mine
    assert "**EQUAL**. `sum_t(delta_b[t] @ h_b[t+1].T)`" in mine
    assert "**NOT EQUAL**. `sum_t(delta_f[t] @ h_f[t].T)`" in mine
    assert f"Correct: `{wrong.formula.gradient}`" in mine
    tex = (out / "derivation.tex").read_text()
    assert r"\paragraph{Your formulas.}" in tex and r"\texttt{units.toml}" in tex
    assert tex.index(r"\paragraph{Your formulas.}") < tex.index(r"\end{document}")
    out2 = tmp_path / "out2"
    argv = ["derive", *composed, "--out", str(out2), "--no-pdf", "--check", str(formulas)]
    code, stdout, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    verdicts = [(f["wrt"], f["verdict"]) for f in json.loads(stdout)["formulas"]]
    assert verdicts == [("W_hh_b", "EQUAL"), ("W_hh_f", "NOT EQUAL")]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('[formulas]\nW_hh = "sum_t(delta[t] @ h[t-1].T)"\n', ("formulas.W_hh", "W_hh_b")),
        (
            '[formulas]\nW_hh_b = "sum_t(delta_b[t] @ h_b[t-1].T)"\n',
            ("formulas.W_hh_b", "h_b[0] is outside the model", "backward direction"),
        ),
        ('[formulas]\nW_hh_b = "sum_t(delta_2b[t])"\n', ("formulas.W_hh_b", "delta_2b")),
    ],
    ids=["one-cell-name", "backward-state-outside", "no-such-unit"],
)
def test_derive_check_of_a_composed_model_refuses_what_it_cannot_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, needles: tuple[str, ...]
) -> None:
    path = write(tmp_path / "f.toml", text)
    out = tmp_path / "out"
    argv = ["derive", *QUICK, "--bidirectional", "--masked", "--out", str(out), "--no-pdf"]
    code, _, err = run([*argv, "--check", str(path)], capsys)
    assert code == 2
    assert_one_line_error(err, "--check", *needles)
    assert not out.exists()
