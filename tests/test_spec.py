from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from symbptt import ModelSpec, SpecError
from symbptt.model.spec import CHOICES, MAX_BATCH, MAX_SIZE, MAX_STEPS


def test_defaults_are_the_xh_hello_style_model() -> None:
    spec = ModelSpec()
    assert (spec.notation, spec.hidden, spec.output, spec.loss) == (
        "xh",
        "tanh",
        "softmax",
        "cross_entropy",
    )
    assert spec.time_reduction == "sum" and spec.batch_reduction == "mean"


def test_spec_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelSpec().steps = 3  # type: ignore[misc]


@pytest.mark.parametrize("field", sorted(CHOICES))
def test_bad_choice_names_field_value_and_allowed(field: str) -> None:
    with pytest.raises(SpecError) as err:
        ModelSpec(**{field: "bogus"})
    message = str(err.value)
    assert message.startswith(f"{field}: got 'bogus'")
    for allowed in CHOICES[field]:
        assert repr(allowed) in message


@pytest.mark.parametrize("steps", [0, -1, 2.5, True, "3"])
def test_bad_steps(steps: object) -> None:
    with pytest.raises(SpecError, match=r"^steps: got .*T >= 1"):
        ModelSpec(steps=steps)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["n_in", "n_hidden", "n_out", "batch"])
@pytest.mark.parametrize("value", [0, -2, 1.5, False])
def test_bad_sizes(field: str, value: object) -> None:
    with pytest.raises(SpecError, match=rf"^{field}: got"):
        ModelSpec(**{field: value})


def test_bias_must_be_bool() -> None:
    with pytest.raises(SpecError, match=r"^bias: got 1"):
        ModelSpec(bias=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("output", "loss"),
    [
        ("relu", "binary_cross_entropy"),
        ("identity", "binary_cross_entropy"),
        ("sigmoid", "cross_entropy"),
        ("identity", "cross_entropy"),
        ("relu", "cross_entropy"),
        ("softmax", "binary_cross_entropy"),
    ],
)
def test_senseless_pairs_refused_with_reason(output: str, loss: str) -> None:
    with pytest.raises(SpecError) as err:
        ModelSpec(output=output, loss=loss)
    message = str(err.value)
    assert loss in message and output in message and "allowed outputs" in message


def test_softmax_binary_cross_entropy_refused_for_its_instability() -> None:
    """No overflow-free form of log(1 - softmax): refused, pointing at the pairs that work."""
    with pytest.raises(SpecError) as err:
        ModelSpec(output="softmax", loss="binary_cross_entropy")
    message = str(err.value)
    assert "overflow" in message and "softmax with cross_entropy" in message
    assert "'sigmoid'" in message


def test_spec_error_is_value_error() -> None:
    assert issubclass(SpecError, ValueError)


def test_hash_is_stable_and_canonical() -> None:
    a, b = ModelSpec(steps=3), ModelSpec(steps=3)
    assert a.hash() == b.hash() and len(a.hash()) == 12
    assert a.hash() != ModelSpec(steps=4).hash()
    assert a.canonical().startswith('{"batch":null')


def test_from_mapping_refuses_unknown_keys() -> None:
    assert ModelSpec.from_mapping({"steps": 2}).steps == 2
    with pytest.raises(SpecError, match=r"unknown spec field.*'stepz'"):
        ModelSpec.from_mapping({"stepz": 2})


# -- bounds and integer types ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("steps", MAX_STEPS),
        ("n_in", MAX_SIZE),
        ("n_hidden", MAX_SIZE),
        ("n_out", MAX_SIZE),
        ("batch", MAX_BATCH),
    ],
)
def test_limits_are_inclusive_and_named_in_the_message(field: str, limit: int) -> None:
    assert getattr(ModelSpec(**{field: limit}), field) == limit
    for value in (limit + 1, 10**9, 99999999999999999999999, 10**500):
        with pytest.raises(SpecError) as err:
            ModelSpec(**{field: value})
        message = str(err.value)
        assert message.startswith(f"{field}: got ") and f"at most {limit}" in message
        assert len(message) < 200


@pytest.mark.parametrize("kind", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64])
def test_numpy_integers_are_accepted_as_python_ints(kind: type) -> None:
    spec = ModelSpec(steps=kind(3), n_in=kind(4), n_hidden=kind(5), n_out=kind(2), batch=kind(1))
    for name in ("steps", "n_in", "n_hidden", "n_out", "batch"):
        assert type(getattr(spec, name)) is int
    assert spec == ModelSpec(steps=3, n_in=4, n_hidden=5, n_out=2, batch=1)
    assert spec.hash() == ModelSpec(steps=3, n_in=4, n_hidden=5, n_out=2, batch=1).hash()


@pytest.mark.parametrize("value", [np.bool_(True), np.float64(3.0), np.int64(0), np.int64(-1)])
def test_numpy_non_integers_and_bad_integers_are_refused(value: object) -> None:
    with pytest.raises(SpecError, match=r"^steps: got"):
        ModelSpec(steps=value)  # type: ignore[arg-type]
