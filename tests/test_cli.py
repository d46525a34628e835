"""The ``symbptt`` command: every command's happy path, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from symbptt import ModelSpec, __version__, cli
from symbptt.cli import UsageError, main, spec_from_options, write_outputs

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
        ("steps = 3\nlearning_rate = 0.1\n", "unknown key(s) 'learning_rate'"),
        ("time-reduction = 'mean'\n", "unknown key(s) 'time-reduction'"),
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


def test_bad_value_names_its_source(tmp_path: Path) -> None:
    config = write(tmp_path / "m.toml", "hidden = 'nope'\n")
    with pytest.raises(UsageError, match=r"\(from .*m\.toml\)$"):
        spec_from_options(config)
    with pytest.raises(UsageError, match=r"\(from --hidden\)$"):
        spec_from_options(None, {"hidden": "nope"})


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


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere"
)
def test_writer_unwritable_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="cannot write"):
            write_outputs(folder, {"x.py": MARKED})
    finally:
        folder.chmod(0o700)


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
