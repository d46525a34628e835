"""The command line and cells: `symbptt cells`, `--cell` and `cell` in a config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from symbptt.cli import commands as cli
from symbptt.model import load_cell

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_cells_lists_the_builtin_cells_with_their_equations(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["cells"]) == 0
    out = capsys.readouterr().out
    for name in ("elman", "lstm", "gru"):
        cell = load_cell(name)
        assert f"{name}" in out
        for eq in cell.equations:
            assert eq.text in out
        for notation in cell.notations:
            assert f"    {notation} (" in out


def test_cells_reads_a_user_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cells", str(EXAMPLES / "lstm_peephole.toml")]) == 0
    out = capsys.readouterr().out
    assert "lstm_peephole: LSTM with peepholes from" in out
    assert "w_ci (n_hidden x 1, vector)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cells", "tree"], "cell: got 'tree'; expected one of elman, lstm, gru"),
        (["cells", "nothere.toml"], "cell file nothere.toml: cannot be read"),
        (
            ["check", "--cell", "lstm", "--notation", "aa", "--wrt", "W_hf", "W_hf"],
            "the lstm cell is written in",
        ),
        (
            ["check", "--cell", "gru", "--hidden", "relu", "--wrt", "W_hz", "W_hz"],
            "fixes its own activations",
        ),
    ],
)
def test_bad_cells_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_a_bad_cell_file_is_one_line_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (EXAMPLES / "gru_pytorch.toml").read_text().replace("h[t-1] + b_hn", "h[t+1] + b_hn")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert cli.main(["cells", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"cell file {path}, line " in err
    assert "h[t+1] reads a future step" in err
    assert err.count("\n") == 1


def test_a_config_file_names_its_cell_beside_itself(tmp_path: Path) -> None:
    (tmp_path / "my_cell.toml").write_text((EXAMPLES / "gru_pytorch.toml").read_text())
    config = tmp_path / "model.toml"
    config.write_text('cell = "my_cell.toml"\nsteps = 3\n')
    spec = cli.spec_from_options(config)
    assert spec.cell == str(tmp_path / "my_cell.toml")
    assert spec.model.name == "gru_pytorch"
    flagged = cli.spec_from_options(config, {"cell": "lstm"})
    assert flagged.cell == "lstm"


@pytest.mark.slow  # the documents' sympy.diff proof of an LSTM
def test_derive_writes_and_checks_an_lstm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lstm"
    argv = ["derive", "--cell", "lstm", "--steps", "2", "--initial-state", "input"]
    assert cli.main([*argv, "--unrolled", "--no-pdf", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model: lstm cell, notation xh, T=2, softmax output" in text
    assert "h0 and c0 inputs" in text
    assert "tanh hidden" not in text
    for name in ("gradients.py", "gradients_unrolled.py", "derivation.tex", "derivation.md"):
        assert (out / name).is_file()
    checks = [line for line in text.splitlines() if "max relative error" in line]
    assert len(checks) == 2
    assert all(line.split()[-6] == "OK" or " OK " in line for line in checks)


# -- `symbptt notations --cell`: any cell's notations, read from its file -----------------
@pytest.mark.parametrize("cell", ["lstm", "gru", str(EXAMPLES / "gru_pytorch.toml")])
def test_notations_lists_any_cells_notations(cell: str, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from symbptt import ModelSpec
    from symbptt.checker import model_equations, names

    assert cli.main(["notations", "--cell", cell]) == 0
    out = capsys.readouterr().out
    model = load_cell(cell)
    for key, notation in model.notations.items():
        assert f"\n{key}" in "\n" + out and notation.title in out
        spec = ModelSpec(cell=cell, notation=key)
        for lhs, rhs in model_equations(spec):
            assert re.search(rf"\n    {re.escape(lhs)} +\= {re.escape(rhs)}\n", out), (lhs, rhs)
        for info in names(spec):
            assert f"  {info}" in out
        starts = ", ".join(
            f"{notation.name_of(q.key).initial} = {notation.name_of(q.key).ascii}"
            f"[{notation.t0 - 1}]"
            for q in model.states
        )
        assert starts in out
    assert " hidden, " not in out  # a gated cell fixes its activations: no spec.hidden
    assert "seed " not in out  # no seed document behind these notations


def test_notations_of_a_cell_file_say_where_each_state_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (EXAMPLES / "lstm_peephole.toml").read_text(encoding="utf-8")
    plain = 'h = "n_hidden"\nc = "n_hidden"'
    assert plain in text
    pinned = (
        'h = { size = "n_hidden", initial = "input" }\nc = { size = "n_hidden", initial = "zero" }'
    )
    path = tmp_path / "pinned.toml"
    path.write_text(text.replace(plain, pinned), encoding="utf-8")
    assert cli.main(["notations", "--cell", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(an input: the cell file)" in out and "(zero: the cell file)" in out


def test_notations_of_an_unknown_cell_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["notations", "--cell", "nope"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'nope'" in err and "Traceback" not in err
    assert cli.main(["notations", "--cell", "lstm", "uvw"]) == 2
    err = capsys.readouterr().err
    assert "expected one of 'xh', 'layered'" in err
