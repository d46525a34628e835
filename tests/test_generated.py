"""Generated gradients are right: finite differences, the derivation, Taylor, golden record."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import symbptt
import symbptt.regenerate
from symbptt import ModelSpec
from symbptt.core.evaluate import Evaluator
from symbptt.model.presets import PRESETS
from symbptt.model.spec import CHOICES, OUTPUT_LOSS_PAIRS
from symbptt.oracle.gradcheck import (
    Problem,
    finite_difference_errors,
    gradcheck,
    random_problem,
    relative_error,
    taylor_test,
)
from symbptt.regenerate import CODE_FILES, regenerate

ROOT = Path(__file__).resolve().parent.parent
PAIRS = OUTPUT_LOSS_PAIRS


@cache
def module_for(spec: ModelSpec, unrolled: bool = False) -> ModuleType:
    return symbptt.load_module(symbptt.emit_numpy(spec, unrolled=unrolled))


def spread() -> list[ModelSpec]:
    """Every output/loss pair in every notation; activations, modes and reductions rotate."""
    specs = []
    for i, (output, loss) in enumerate(PAIRS):
        for j, notation in enumerate(CHOICES["notation"]):
            k = i * len(CHOICES["notation"]) + j
            specs.append(
                ModelSpec(
                    steps=3,
                    hidden=CHOICES["hidden"][k % 4],
                    output=output,
                    loss=loss,
                    notation=notation,
                    mode=CHOICES["mode"][k % 2],
                    time_reduction=CHOICES["time_reduction"][(k // 2) % 2],
                    batch_reduction=CHOICES["batch_reduction"][(k // 4) % 2],
                    initial_state=CHOICES["initial_state"][(k // 3) % 2],
                    bias=k % 5 != 4,
                )
            )
    return specs


SPREAD = spread()


def _id(spec: ModelSpec) -> str:
    return f"{spec.notation}-{spec.hidden}-{spec.output}-{spec.loss}-{spec.mode}"


def symbolic_values(spec: ModelSpec, problem: Problem) -> tuple[float, dict[str, Any]]:
    """The derivation's own loss and gradients, evaluated at the problem's numbers."""
    d = symbptt.derive(spec)
    graph = d.graph
    column = graph.notation.layout == "column"

    def layout(array: Any) -> Any:
        return array.T if column else array

    env: dict[Any, Any] = {symbol: problem.params[name] for name, symbol in graph.params.items()}
    for k, x in enumerate(graph.inputs):
        env[x] = layout(problem.X[k])
    targets = [problem.Y] if spec.mode == "many_to_one" else list(problem.Y)
    for y, value in zip(graph.targets, targets, strict=True):
        env[y] = layout(value)
    if spec.initial_state == "input":
        assert problem.h0 is not None
        env[graph.initial] = layout(problem.h0)
    sizes = {"n_in": problem.X.shape[2], "batch": problem.X.shape[1]}
    sizes["n_hidden"] = problem.params[d.notation.param("recurrent_weight").ascii].shape[0]
    sizes["n_out"] = np.atleast_2d(targets[0]).shape[-1]
    for key, symbol in graph.symbols.sizes.items():
        if isinstance(symbol, sp.Symbol):
            env[symbol] = sizes[key]
    evaluator = Evaluator(env)
    evaluator.run(graph.assignments)
    evaluator.run(d.assignments)
    gradients = {name: evaluator(d.gradients[name]) for name in graph.params}
    return float(evaluator.env[graph.loss]), gradients


@pytest.mark.parametrize("spec", SPREAD, ids=_id)
@pytest.mark.parametrize("unrolled", [False, True], ids=["rolled", "unrolled"])
def test_gradients_equal_finite_differences_and_the_derivation(
    spec: ModelSpec, unrolled: bool
) -> None:
    mod = module_for(spec, unrolled)
    problem = random_problem(mod, initial_state=spec.initial_state == "input", rng=7)
    errors = finite_difference_errors(mod, problem)
    assert max(errors.values()) < 1e-6, errors
    loss, gradients = mod.loss_and_gradients(*problem.args())
    expected_loss, expected = symbolic_values(spec, problem)
    assert abs(loss - expected_loss) <= 1e-12 * abs(expected_loss)
    for name, value in gradients.items():
        assert relative_error(value, expected[name]) < 1e-12, name


@pytest.mark.parametrize("notation", CHOICES["notation"])
def test_rolled_module_passes_a_taylor_test_at_200_steps(notation: str) -> None:
    mode = "many_to_many" if notation in ("xh", "layered") else "many_to_one"
    mod = module_for(ModelSpec(steps=3, notation=notation, mode=mode, time_reduction="mean"))
    problem = random_problem(mod, steps=200, batch=3, scale=0.4, rng=3)
    result = taylor_test(mod, problem, rng=4)
    assert 1.9 < result.slope < 2.1, result
    assert all(1.7 < slope < 2.3 for slope in result.slopes), result
    assert result.directional_error < 1e-6, result


VALID_PAIRS = st.sampled_from(PAIRS)


@st.composite
def specs_and_shapes(draw: st.DrawFn) -> tuple[ModelSpec, bool, dict[str, int]]:
    output, loss = draw(VALID_PAIRS)
    spec = ModelSpec(
        steps=draw(st.integers(1, 5)),
        hidden=draw(st.sampled_from(CHOICES["hidden"])),
        output=output,
        loss=loss,
        mode=draw(st.sampled_from(CHOICES["mode"])),
        time_reduction=draw(st.sampled_from(CHOICES["time_reduction"])),
        # the generated code takes batch_reduction 'tokens' with the composed models (issue 10)
        batch_reduction=draw(st.sampled_from(("mean", "sum"))),
        notation=draw(st.sampled_from(CHOICES["notation"])),
        bias=draw(st.booleans()),
    )
    sizes = {
        "batch": draw(st.integers(1, 3)),
        "n_in": draw(st.integers(1, 4)),
        "n_hidden": draw(st.integers(1, 4)),
        "n_out": draw(st.integers(2, 4)),
    }
    return spec, draw(st.booleans()), sizes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs_and_shapes(), st.integers(0, 2**32 - 1))
def test_property_random_specs_and_shapes(
    case: tuple[ModelSpec, bool, dict[str, int]], seed: int
) -> None:
    spec, unrolled, sizes = case
    mod = module_for(spec, unrolled)
    problem = random_problem(mod, rng=seed, **sizes)
    errors = finite_difference_errors(mod, problem)
    assert max(errors.values()) < 1e-6, errors
    other = module_for(spec, not unrolled)
    a, b = mod.loss_and_gradients(*problem.args()), other.loss_and_gradients(*problem.args())
    assert a[0] == pytest.approx(b[0], rel=1e-12, abs=1e-300)
    for name in a[1]:
        assert relative_error(a[1][name], b[1][name]) < 1e-11, name


def test_generated_folder_is_the_golden_record(tmp_path: Path) -> None:
    """``python -m symbptt.regenerate`` reproduces generated/ byte for byte (code files)."""
    written = regenerate(tmp_path, documents=False)
    assert len(written) == len(PRESETS) * len(CODE_FILES)
    for path in written:
        relative = path.relative_to(tmp_path)
        committed = ROOT / "generated" / relative
        assert committed.is_file(), (
            f"generated/{relative} is missing: run python -m symbptt.regenerate"
        )
        assert path.read_bytes() == committed.read_bytes(), (
            f"generated/{relative} is stale: run python -m symbptt.regenerate"
        )


def test_regenerate_replaces_each_file_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file is written beside its target and renamed over it, never in place."""
    monkeypatch.setattr(symbptt.regenerate, "PRESETS", {"xh_hello": PRESETS["xh_hello"]})

    def fake_documents(spec: ModelSpec, folder: Path, **_: object) -> list[Path]:
        paths = [Path(folder) / "derivation.tex", Path(folder) / "derivation.md"]
        for path in paths:
            path.write_text(f"{path.name} of {spec.hash()}\n")
        return paths

    monkeypatch.setattr(symbptt.regenerate._documents, "write_documents", fake_documents)
    monkeypatch.setattr(symbptt.regenerate, "run_checks", lambda spec: None)  # documents faked
    folder = tmp_path / "xh_hello"
    folder.mkdir()
    # An old file hard-linked elsewhere: a write in place would change the other name too.
    outside = tmp_path / "outside.py"
    outside.write_text("old\n")
    os.link(outside, folder / "gradients.py")
    os.link(outside, folder / "derivation.md")
    written = regenerate(tmp_path)
    assert written == [folder / name for name in CODE_FILES]
    assert outside.read_text() == "old\n"
    committed = ROOT / "generated" / "xh_hello" / "gradients.py"
    assert (folder / "gradients.py").read_bytes() == committed.read_bytes()
    assert (folder / "derivation.md").read_text().startswith("derivation.md of ")
    assert sorted(p.name for p in folder.iterdir()) == [
        "derivation.md",
        "derivation.tex",
        "gradients.py",
        "gradients_unrolled.py",
    ]  # no partial files or staging folders left behind

    # A failed rename leaves the old file and no partial one.
    (folder / "gradients.py").write_text("before\n")

    def fail(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        regenerate(tmp_path, documents=False)
    assert (folder / "gradients.py").read_text() == "before\n"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_gradcheck_summarises_a_spec_or_a_module() -> None:
    spec = PRESETS["layered_many_to_one"]
    result = gradcheck(spec, rng=5)
    assert result.ok and result.max_relative_error < 1e-6
    assert set(result.errors) == {"W_1", "W_h1", "W_2", "beta_1", "beta_2", "X", "h0"}
    assert gradcheck(module_for(spec, True), rng=5).ok
