"""Composed models (issue 10): the spec fields, the program, and the stages that refuse them."""

from __future__ import annotations

from pathlib import Path

import pytest

from symbptt import ModelSpec, SpecError
from symbptt.cli.commands import main, spec_from_options
from symbptt.model import Unit, program
from symbptt.model.spec import COMPOSITION_DEFAULTS, MAX_LAYERS


def test_defaults_leave_the_canonical_text_as_before() -> None:
    spec = ModelSpec()
    assert (spec.layers, spec.direction, spec.masked) == (1, "forward", False)
    assert not spec.composed
    assert not set(COMPOSITION_DEFAULTS) & set(spec.as_dict())
    assert '"layers"' not in spec.canonical()
    assert spec.program.plain


def test_composed_fields_are_in_the_canonical_text_and_round_trip() -> None:
    spec = ModelSpec(cell="gru", layers=2, direction="bidirectional", masked=True)
    assert spec.composed
    assert spec.as_dict()["layers"] == 2 and spec.as_dict()["masked"] is True
    assert ModelSpec.from_mapping(spec.as_dict()) == spec
    assert spec.hash() != ModelSpec(cell="gru").hash()


@pytest.mark.parametrize("layers", [0, -1, MAX_LAYERS + 1, 1.5, True, "2"])
def test_bad_layers(layers: object) -> None:
    with pytest.raises(SpecError, match=r"^layers: got .*expected an integer from 1 to"):
        ModelSpec(layers=layers)  # type: ignore[arg-type]


def test_bad_direction_and_masked() -> None:
    with pytest.raises(SpecError, match=r"^direction: got 'backward'; expected one of 'forward'"):
        ModelSpec(direction="backward")
    with pytest.raises(SpecError, match=r"^masked: got 1; expected True or False"):
        ModelSpec(masked=1)  # type: ignore[arg-type]


def test_tokens_needs_a_time_sum() -> None:
    assert ModelSpec(batch_reduction="tokens").composed
    with pytest.raises(SpecError, match=r"^batch_reduction: 'tokens' .* time_reduction 'sum'"):
        ModelSpec(batch_reduction="tokens", time_reduction="mean")


def test_program_units_tags_and_reads() -> None:
    two_bi = program(2, "bidirectional")
    assert [u.tag for u in two_bi.units] == ["1f", "1b", "2f", "2b"]
    assert [u.reads for u in two_bi.units] == [(), (), (0, 1), (0, 1)]
    assert two_bi.head == (2, 3)
    assert [u.tag for u in program(3).units] == ["1", "2", "3"]
    assert program(3).head == (2,)
    assert [u.tag for u in program(1, "bidirectional").units] == ["f", "b"]
    assert program(1).units == (Unit(1, "forward", ""),)
    assert Unit(2, "backward", "2b").name("W_xi") == "W_xi_2b"
    assert Unit(1, "forward", "").name("W_xi") == "W_xi"


def test_config_file_takes_the_fields(tmp_path: Path) -> None:
    config = tmp_path / "model.toml"
    config.write_text('cell = "gru"\nlayers = 2\ndirection = "bidirectional"\nmasked = true\n')
    spec = spec_from_options(config)
    assert (spec.layers, spec.direction, spec.masked) == (2, "bidirectional", True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layers", "0"], "layers: got 0"),
        (["--layers", "two"], "--layers: got 'two'"),
        (["--batch-reduction", "tokens", "--time-reduction", "mean"], "batch_reduction: 'tokens'"),
    ],
)
def test_cli_exit_2_and_writes_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["derive", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
