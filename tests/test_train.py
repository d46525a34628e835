"""Training utilities: optimizers, clipping, truncated BPTT, gradient norms."""

from __future__ import annotations

import io
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from symbptt import ModelSpec, emit_numpy, load_module
from symbptt.cli.progress import Progress
from symbptt.model.presets import HELLO, PRESETS
from symbptt.train import (
    SGD,
    Adagrad,
    Adam,
    Optimizer,
    clip_by_norm,
    clip_by_value,
    fit,
    global_norm,
    gradient_norms,
    last_step_module,
    truncated_bptt,
)


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


def test_progress_lines_off_a_terminal() -> None:
    stream, lines = FakeTerminal(tty=False), FakeTerminal(tty=False)
    with Progress(None, "derive", stream=stream, lines=True, line_stream=lines) as bar:
        bar.stage("deriving")
        bar.update(1, "ignored: no bar")
        bar.stage("printing")
    assert lines.getvalue() == "derive: deriving\nderive: printing\n"
    assert stream.getvalue() == ""
    on_stream = FakeTerminal(tty=False)
    with Progress(None, "derive", stream=on_stream, lines=True) as bar:
        bar.stage("deriving")
    assert on_stream.getvalue() == "derive: deriving\n"


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


# -- with generated modules -----------------------------------------------------------
SPECS = {
    "xh": ModelSpec(steps=4),
    "layered_mean": ModelSpec(steps=4, notation="layered", time_reduction="mean"),
    "uvw_sum_batch": ModelSpec(steps=4, notation="uvw", batch_reduction="sum", hidden="sigmoid"),
    "aa_many_to_one": ModelSpec(steps=4, notation="aa", mode="many_to_one"),
    "xh_tokens": ModelSpec(steps=4, batch_reduction="tokens"),
}
SIZES = (3, 5, 4)  # n_in, n_hidden, n_out


@cache
def module_for(key: str) -> ModuleType:
    return load_module(emit_numpy(SPECS[key]))


def data(
    key: str, rng: np.random.Generator, steps: int = 7, batch: int = 2
) -> tuple[ModuleType, dict[str, Any], Any, Any, Any]:
    module = module_for(key)
    n_in, n_hidden, n_out = SIZES
    params = module.init_params(n_in, n_hidden, n_out, rng=rng)
    X = rng.normal(size=(steps, batch, n_in))
    many = SPECS[key].mode == "many_to_many"
    Y = rng.dirichlet(np.ones(n_out), size=(steps, batch) if many else (batch,))
    h0 = rng.normal(scale=0.5, size=(batch, n_hidden))
    return module, params, X, Y, h0


@pytest.mark.parametrize("key", sorted(SPECS))
@pytest.mark.parametrize("k", [7, 8, 100])
def test_truncated_bptt_is_full_bptt_when_k_covers_T(
    key: str, k: int, rng: np.random.Generator
) -> None:
    module, params, X, Y, h0 = data(key, rng)
    loss, grads = module.loss_and_gradients(params, X, Y, h0)
    t_loss, t_grads, h_T = truncated_bptt(module, params, X, Y, k, h0)
    assert t_loss == pytest.approx(loss, rel=1e-12)
    assert sorted(t_grads) == sorted(grads)
    for name in grads:
        np.testing.assert_allclose(t_grads[name], grads[name], rtol=1e-12, atol=1e-14)
    _, _, state = module.loss_and_all_gradients(params, X, Y, h0)
    np.testing.assert_allclose(h_T, state["h_T"], rtol=1e-12)


@pytest.mark.parametrize("key", sorted(SPECS))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_truncated_bptt_windows(key: str, k: int, rng: np.random.Generator) -> None:
    """Short windows: the forward pass (loss, final state) is the whole sequence's; the
    output layer's gradients do not flow through time and are exact; the recurrent
    weight's are truncated, so they differ."""
    module, params, X, Y, h0 = data(key, rng)
    loss, grads = module.loss_and_gradients(params, X, Y, h0)
    t_loss, t_grads, h_T = truncated_bptt(module, params, X, Y, k, h0)
    assert t_loss == pytest.approx(loss, rel=1e-12)
    _, _, state = module.loss_and_all_gradients(params, X, Y, h0)
    np.testing.assert_allclose(h_T, state["h_T"], rtol=1e-12)
    for name, role in module.ROLES.items():
        if role.startswith("output"):
            np.testing.assert_allclose(t_grads[name], grads[name], rtol=1e-10, atol=1e-14)
    recurrent = next(n for n, r in module.ROLES.items() if r == "recurrent_weight")
    assert not np.allclose(t_grads[recurrent], grads[recurrent])


def test_truncated_bptt_is_the_sum_of_detached_windows(rng: np.random.Generator) -> None:
    """Each window is the module run from the carried state (the state as a constant)."""
    module, params, X, Y, h0 = data("layered_mean", rng, steps=5)
    _, t_grads, _ = truncated_bptt(module, params, X, Y, 2, h0)
    expected = {name: np.zeros_like(value) for name, value in params.items()}
    h = h0
    for start, stop in ((0, 2), (2, 4), (4, 5)):
        _, grads, state = module.loss_and_all_gradients(params, X[start:stop], Y[start:stop], h)
        for name in expected:
            expected[name] += grads[name] * (stop - start) / 5  # time mean
        h = state["h_T"]
    for name in expected:
        np.testing.assert_allclose(t_grads[name], expected[name], rtol=1e-12)


@pytest.mark.parametrize(
    "reduction",
    [
        {"batch_reduction": "tokens"},
        {"time_reduction": "mean"},
        {"batch_reduction": "sum", "time_reduction": "mean"},
    ],
    ids=["tokens", "time_mean", "time_mean_batch_sum"],
)
@pytest.mark.parametrize("k", [2, 4, 6])
def test_truncated_bptt_masked_means(
    reduction: dict[str, str], k: int, rng: np.random.Generator
) -> None:
    """A masked mean over tokens or over each example's real steps, cut into windows: the
    loss is the whole sequence's, the output layer's gradients are exact (they do not flow
    through time), k >= T is full BPTT. Examples of 6, 5, 5 and 6 real steps: a window's share
    of an example's real steps differs from example to example."""
    module = load_module(emit_numpy(ModelSpec(steps=4, masked=True, **reduction)))
    n_in, n_hidden, n_out = SIZES
    params = module.init_params(n_in, n_hidden, n_out, rng=rng)
    X = rng.normal(size=(6, 4, n_in))
    Y = rng.dirichlet(np.ones(n_out), size=(6, 4))
    mask = np.arange(6)[:, None] < np.array([6, 5, 5, 6])[None, :]
    h0 = rng.normal(scale=0.5, size=(4, n_hidden))
    loss, grads, state = module.loss_and_all_gradients(params, X, Y, mask=mask, h0=h0)
    t_loss, t_grads, h_T = truncated_bptt(module, params, X, Y, k, h0, mask=mask)
    assert t_loss == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(h_T, state["h_T"], rtol=1e-12)
    exact = (
        module.PARAMETERS
        if k >= 6
        else [n for n, r in module.ROLES.items() if r.startswith("output")]
    )
    for name in exact:
        np.testing.assert_allclose(t_grads[name], grads[name], rtol=1e-10, atol=1e-14)


def test_truncated_bptt_bad_window(rng: np.random.Generator) -> None:
    module, params, X, Y, h0 = data("xh", rng)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k: got"):
            truncated_bptt(module, params, X, Y, bad, h0)  # type: ignore[arg-type]


def test_truncated_bptt_needs_a_generated_module(rng: np.random.Generator) -> None:
    with pytest.raises(TypeError, match="emit_numpy"):
        truncated_bptt(np, {}, np.zeros((2, 1, 1)), np.zeros((2, 1, 1)), 1)  # type: ignore[arg-type]


# -- gradient norms -------------------------------------------------------------------
@pytest.mark.parametrize("key", ["xh", "aa_many_to_one", "layered_mean"])
def test_gradient_norms_match_finite_differences(key: str, rng: np.random.Generator) -> None:
    """||dL_T/dh_k|| against central differences of the last step's loss in h_k."""
    module, params, X, Y, h0 = data(key, rng, steps=5)
    norms = gradient_norms(module, params, X, Y, h0)
    assert norms.shape == (5,)
    last = last_step_module(module)
    target = Y if SPECS[key].mode == "many_to_one" else Y[-1]
    eps = 1e-6
    for k in range(5):
        h_k = h0 if k == 0 else truncated_bptt(module, params, X[:k], _prefix(Y, k, key), k, h0)[2]
        grad = np.zeros_like(h_k)
        for index in np.ndindex(*h_k.shape):
            step = np.zeros_like(h_k)
            step[index] = eps
            up = last.loss(params, X[k:], target, h_k + step)
            down = last.loss(params, X[k:], target, h_k - step)
            grad[index] = (up - down) / (2 * eps)
        assert norms[k] == pytest.approx(np.linalg.norm(grad), rel=1e-6)


def _prefix(Y: Any, k: int, key: str) -> Any:
    return Y if SPECS[key].mode == "many_to_one" else Y[:k]


def test_last_step_module_is_many_to_one() -> None:
    module = module_for("xh")
    last = last_step_module(module)
    assert last.SPEC == {**module.SPEC, "mode": "many_to_one"}
    assert last_step_module(last) is last
    assert last_step_module(module) is last  # emitted once per spec


def test_vanishing_and_exploding(rng: np.random.Generator) -> None:
    """A small recurrent weight makes the norms fall geometrically going back from T;
    a large one with an identity activation makes them grow."""
    spec_vanish = ModelSpec(steps=4, notation="xh")
    spec_explode = ModelSpec(steps=4, notation="xh", hidden="identity")
    for spec, scale in ((spec_vanish, 0.2), (spec_explode, 1.6)):
        module = load_module(emit_numpy(spec))
        params = module.init_params(3, 4, 3, rng=rng)
        params["W_hh"] = scale * np.eye(4)
        X = rng.normal(size=(12, 1, 3))
        Y = rng.dirichlet(np.ones(3), size=(12, 1))
        norms = gradient_norms(module, params, X, Y)
        ratios = norms[:-1] / norms[1:]  # ||dL_T/dh_k|| / ||dL_T/dh_{k+1}||
        if scale < 1:
            assert np.all(ratios < 0.2 + 1e-12)  # |tanh'| <= 1: at most the weight's scale
            assert norms[0] < 1e-6 * norms[-1]
        else:
            np.testing.assert_allclose(ratios, scale, rtol=1e-10)  # identity: exactly W_hh^T
            assert norms[0] > 100 * norms[-1]


# -- training the demo's model --------------------------------------------------------
def hello() -> tuple[ModuleType, Any, Any]:
    module = load_module(emit_numpy(PRESETS["xh_hello"]))
    eye = np.eye(len(HELLO))
    X = np.stack([eye[HELLO.index(c)][None] for c in "hell"])
    Y = np.stack([eye[HELLO.index(c)][None] for c in "ello"])
    return module, X, Y


@pytest.mark.parametrize(
    "optimizer",
    [SGD(lr=0.5), Adam(lr=0.05), Adagrad(lr=0.3)],
    ids=["sgd", "adam", "adagrad"],
)
def test_optimizers_decrease_the_demo_loss(optimizer: Optimizer) -> None:
    module, X, Y = hello()
    params = module.init_params(4, 8, 4, rng=0)
    losses = fit(module, params, X, Y, optimizer=optimizer, iterations=150)
    assert losses[-1] < 0.1 * losses[0]
    assert module.loss(params, X, Y) < losses[-1]


def test_fit_with_clipping_and_truncation() -> None:
    module, X, Y = hello()
    params = module.init_params(4, 8, 4, rng=1)
    seen: list[float] = []

    def callback(iteration: int, value: float, grads: Any) -> None:
        seen.append(global_norm(grads))

    losses = fit(
        module,
        params,
        X,
        Y,
        optimizer=Adam(lr=0.05),
        iterations=200,
        truncate=2,
        clip_norm=1.0,
        clip_value=0.5,
        callback=callback,
    )
    assert len(losses) == len(seen) == 200
    assert max(seen) <= 1.0 + 1e-9
    assert losses[-1] < 0.2 * losses[0]


def test_fit_rejects_bad_iterations() -> None:
    module, X, Y = hello()
    with pytest.raises(ValueError, match="iterations"):
        fit(module, module.init_params(4, 2, 4), X, Y, iterations=-1)


@pytest.mark.parametrize("bad", [None, 3.0, [[[]]]], ids=["None", "scalar", "list"])
def test_fit_names_an_X_that_is_no_array(bad: Any) -> None:
    """fit read X's length before the module checked X: None or a number was an IndexError
    (a list of lists passed it); the module's own ArgumentError names X."""
    module, _, Y = hello()
    with pytest.raises(module.ArgumentError, match=r"^X: expected a numpy array, got"):
        fit(module, module.init_params(4, 2, 4), bad, Y, iterations=1)
