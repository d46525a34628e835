"""The specs every backend's tests run (torch, JAX, the array API): one table."""

from __future__ import annotations

from symbptt import ModelSpec

#: Elman, LSTM, GRU and the example cells, in both layouts and modes.
SPECS = {
    "elman": ModelSpec(steps=3),
    "elman_relu_bce": ModelSpec(
        steps=2, notation="uvw", hidden="relu", output="sigmoid", loss="binary_cross_entropy"
    ),
    "lstm": ModelSpec(steps=3, cell="lstm"),
    "gru": ModelSpec(steps=3, cell="gru", notation="layered", mode="many_to_one"),
    "gru_pytorch": ModelSpec(steps=3, cell="examples/gru_pytorch.toml", time_reduction="mean"),
    "lstm_peephole": ModelSpec(
        steps=2, cell="examples/lstm_peephole.toml", output="identity", loss="squared_error"
    ),
}
