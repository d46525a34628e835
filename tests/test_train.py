"""Training utilities: optimizers, clipping, truncated BPTT, gradient norms."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from symbptt.progress import Progress
from symbptt.train import SGD, Adagrad, Adam, Optimizer, clip_by_norm, clip_by_value, global_norm


# -- optimizers on a quadratic bowl ---------------------------------------------------
def bowl(params: dict[str, Any], target: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    grads = {name: params[name] - target[name] for name in params}
    return 0.5 * sum(float(np.sum(g * g)) for g in grads.values()), grads


@pytest.mark.parametrize(
    "optimizer", [SGD(lr=0.1), Adam(lr=0.05), Adagrad(lr=0.5)], ids=["sgd", "adam", "adagrad"]
)
def test_optimizers_descend_a_bowl(optimizer: Optimizer, rng: np.random.Generator) -> None:
    target = {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=(3, 1))}
    params = {"W": np.zeros((3, 2)), "b": np.zeros((3, 1))}
    arrays = {name: id(value) for name, value in params.items()}
    first, _ = bowl(params, target)
    for _ in range(200):
        _, grads = bowl(params, target)
        optimizer.step(params, grads)
    last, _ = bowl(params, target)
    assert last < 1e-3 * first
    # updated in place: the caller's arrays are the ones that moved
    assert {name: id(value) for name, value in params.items()} == arrays


def test_sgd_is_002s_step_4() -> None:
    params = {"W": np.array([[1.0, 2.0]])}
    SGD(lr=0.5).step(params, {"W": np.array([[4.0, -2.0]])})
    np.testing.assert_array_equal(params["W"], [[-1.0, 3.0]])


def test_adam_first_step_moves_by_lr() -> None:
    # with bias correction the first step is lr * g / |g| (up to eps)
    params = {"W": np.zeros(3)}
    Adam(lr=0.01).step(params, {"W": np.array([5.0, -0.1, 2e-3])})
    np.testing.assert_allclose(params["W"], [-0.01, 0.01, -0.01], rtol=1e-4)


def test_adagrad_accumulates_squares() -> None:
    params = {"w": np.zeros(1)}
    opt = Adagrad(lr=1.0, eps=1e-12)
    opt.step(params, {"w": np.array([3.0])})
    opt.step(params, {"w": np.array([4.0])})
    np.testing.assert_allclose(params["w"], [-1.0 - 4.0 / 5.0])


def test_optimizers_keep_float32(rng: np.random.Generator) -> None:
    for opt in (SGD(), Adam(), Adagrad()):
        params = {"W": rng.normal(size=(2, 2)).astype(np.float32)}
        opt.step(params, {"W": np.ones((2, 2), dtype=np.float32)})
        assert params["W"].dtype == np.float32


def test_missing_or_misshapen_gradient() -> None:
    params = {"W": np.zeros((2, 2)), "b": np.zeros((2, 1))}
    with pytest.raises(KeyError, match="no gradient for parameter"):
        SGD().step(params, {"W": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"gradient of b: shape \(2,\)"):
        SGD().step(params, {"W": np.zeros((2, 2)), "b": np.zeros(2)})


def test_extra_gradients_are_ignored() -> None:
    params = {"W": np.zeros((1, 1))}
    SGD(lr=1.0).step(params, {"W": np.ones((1, 1)), "h_0": np.ones((1, 4))})
    assert params == {"W": pytest.approx(-np.ones((1, 1)))}


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_learning_rates(bad: float) -> None:
    for cls in (SGD, Adam, Adagrad):
        with pytest.raises(ValueError, match="lr: got"):
            cls(lr=bad)


# -- clipping -------------------------------------------------------------------------
def test_clip_by_value() -> None:
    grads = {"a": np.array([-3.0, 0.5, 2.0])}
    clipped = clip_by_value(grads, 1.0)
    np.testing.assert_array_equal(clipped["a"], [-1.0, 0.5, 1.0])
    np.testing.assert_array_equal(grads["a"], [-3.0, 0.5, 2.0])  # input unchanged


def test_clip_by_norm_scales_all_together() -> None:
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0], [4.0]])}
    assert global_norm(grads) == pytest.approx(5.0)
    clipped = clip_by_norm(grads, 1.0)
    assert global_norm(clipped) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0])
    np.testing.assert_allclose(clipped["b"], [[0.0], [0.8]])
    same = clip_by_norm(grads, 10.0)
    np.testing.assert_array_equal(same["a"], grads["a"])
    assert same["a"] is not grads["a"]


def test_clip_keeps_dtype() -> None:
    grads = {"a": np.full(4, 10.0, dtype=np.float32)}
    assert clip_by_norm(grads, 1.0)["a"].dtype == np.float32
    assert clip_by_value(grads, 1.0)["a"].dtype == np.float32


# -- progress -------------------------------------------------------------------------
class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_is_silent_off_a_terminal() -> None:
    stream = FakeTerminal(tty=False)
    with Progress(10, "training", stream=stream) as bar:
        for _ in range(10):
            bar.update(1, "loss 0.1")
    assert stream.getvalue() == ""


def test_progress_draws_and_erases_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    stream = FakeTerminal(tty=True)
    with Progress(4, "training", stream=stream, interval=0.0) as bar:
        bar.update(2, "loss 0.5")
        assert bar.line().startswith("training [############............] 2/4  loss 0.5")
    text = stream.getvalue()
    assert "\rtraining [" in text
    assert text.endswith("\r")  # the line is erased when done
    assert "\n" not in text


def test_progress_respects_dumb_terminals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    stream = FakeTerminal(tty=True)
    with Progress(None, "deriving", stream=stream) as bar:
        bar.stage("emitting code")
    assert stream.getvalue() == ""
