"""The user cell files shipped in examples/: they load, and their gradients are proven.

PyTorch's GRU variant and a peephole LSTM go through exactly the path of a
user's own file; their derived gradients equal scalar ``sympy.diff`` of the
explicit unrolled loss built from the file's equations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import symbptt
from symbptt.oracle import verify

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CELLS = {"gru_pytorch.toml": (1, 2), "lstm_peephole.toml": (1, 1)}  # file: (n_in, n_hidden)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_example_cells_load_and_derive(name: str) -> None:
    spec = symbptt.ModelSpec(cell=str(EXAMPLES / name), steps=3)
    d = symbptt.derive(spec)
    cell = spec.model
    names = {entry.ascii for entry in cell.notations[spec.notation].params}
    assert set(d.gradients) == names
    assert all(eq.reads for eq in cell.equations)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CELLS))
def test_example_cells_equal_scalar_diff(name: str, rng: np.random.Generator) -> None:
    n_in, n_hidden = CELLS[name]
    spec = symbptt.ModelSpec(
        cell=str(EXAMPLES / name),
        steps=2,
        n_in=n_in,
        n_hidden=n_hidden,
        n_out=2,
        batch=1,
        initial_state="input",
    )
    proof = verify.scalar_proof(spec, rng)
    assert proof.entries > 0
    assert proof.ok, f"max relative error {proof.max_relative_error:.3e}"


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("unrolled", [False, True])
def test_example_cells_generated_code_equals_finite_differences(name: str, unrolled: bool) -> None:
    spec = symbptt.ModelSpec(cell=str(EXAMPLES / name), steps=3, initial_state="input")
    result = symbptt.oracle.gradcheck.gradcheck(spec, rng=5, unrolled=unrolled)
    assert result.ok, result
