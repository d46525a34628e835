"""The seeds' own models and the gated cells': what ``generated/`` holds, one folder each."""

from __future__ import annotations

from .spec import ModelSpec

__all__ = ["HELLO", "PRESETS"]

#: The characters of the "hello" example (001 and 003): one-hot over h, e, l, o.
HELLO = "helo"

PRESETS: dict[str, ModelSpec] = {
    # 000: U, V, W with the mean over time, J = 1/T sum_t J^(t)
    "uvw_mean": ModelSpec(steps=3, notation="uvw", mode="many_to_many", time_reduction="mean"),
    # 001: "hello", characters h, e, l, o one-hot; tanh, softmax, cross-entropy
    "xh_hello": ModelSpec(
        steps=4,
        notation="xh",
        hidden="tanh",
        output="softmax",
        loss="cross_entropy",
        n_in=4,
        n_out=4,
        batch=1,
    ),
    # 002: sequence to sequence and sequence to vector over 3 steps
    "layered_many_to_many": ModelSpec(steps=3, notation="layered", mode="many_to_many"),
    "layered_many_to_one": ModelSpec(steps=3, notation="layered", mode="many_to_one"),
    # the gated cells (issue 9): "hello" through an LSTM; a GRU in d2l's row layout
    "lstm_hello": ModelSpec(
        cell="lstm",
        steps=4,
        notation="xh",
        output="softmax",
        loss="cross_entropy",
        n_in=4,
        n_out=4,
        batch=1,
    ),
    "gru_layered": ModelSpec(cell="gru", steps=3, notation="layered"),
    # 003: "hello" in the a(t) notation
    "aa_hello": ModelSpec(
        steps=4,
        notation="aa",
        hidden="tanh",
        output="softmax",
        loss="cross_entropy",
        n_in=4,
        n_out=4,
        batch=1,
    ),
}
