"""The JAX backend: printed from the derivation, checked against JAX's own autodiff.

The oracle is ``jax.grad`` of the module's printed forward pass and loss
(``_loss(_forward(...))``): JAX differentiates the forward code itself, so the
generated backward pass is not involved; ``jax.test_util.check_grads``
compares the custom VJP with finite differences of the loss.  The rolled
module's loops are ``jax.lax.scan`` over t.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import symbptt
from symbptt import BackendError, ModelSpec
from symbptt.codegen.jax_printer import JAX_FUNCTIONS, JaxPrinter

from .backend_specs import SPECS

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
jax_test_util = pytest.importorskip("jax.test_util")

jax.config.update("jax_enable_x64", True)

#: The cases of the fast suite; the others are marked slow (they still run in CI).
FAST = {("elman", False), ("lstm", False), ("gru", True)}


def cases() -> list[object]:
    return [
        pytest.param(key, unrolled, marks=() if (key, unrolled) in FAST else pytest.mark.slow)
        for key in SPECS
        for unrolled in (False, True)
    ]


@cache
def module_for(key: str, unrolled: bool = False) -> ModuleType:
    return symbptt.load_module(symbptt.emit(SPECS[key], backend="jax", unrolled=unrolled))


def problem(mod: ModuleType, seed: int = 0, batch: int = 2, steps: int | None = None) -> tuple:
    """Random float64 arrays: params, X, Y (targets the loss accepts), initial states."""
    rng = np.random.default_rng(seed)
    n_in = mod.SIZES["n_in"] or 3
    n_out = mod.SIZES["n_out"] or 3
    params = mod.init_params(n_in, 4, n_out, rng=seed, dtype=jnp.float64)
    params = {  # biases away from zero too
        name: value + 0.3 * rng.standard_normal(value.shape) for name, value in params.items()
    }
    T = steps or mod.STEPS or mod.SPEC["steps"]
    X = rng.standard_normal((T, batch, n_in))
    shape = (T, batch, n_out) if mod.SPEC["mode"] == "many_to_many" else (batch, n_out)
    raw = rng.standard_normal(shape)
    softmax = np.exp(raw) / np.exp(raw).sum(axis=-1, keepdims=True)
    Y = {"cross_entropy": softmax, "binary_cross_entropy": 1.0 * (raw > 0), "squared_error": raw}
    sizes = {"n_hidden": 4, "n_in": n_in, "n_out": n_out}
    states = {
        f"{s}0": 0.5 * rng.standard_normal((batch, sizes[mod.STATE_SIZES[s]])) for s in mod.STATES
    }
    as_jax = {name: jnp.asarray(value) for name, value in params.items()}
    initial = {name: jnp.asarray(value) for name, value in states.items()}
    return as_jax, jnp.asarray(X), jnp.asarray(Y[mod.SPEC["loss"]]), initial


def autodiff_gradients(mod: ModuleType, params: dict, X, Y, states: dict) -> dict:
    """jax.grad of the module's printed forward pass and loss: no generated backward."""

    def plain(params, X, *initial):  # type: ignore[no-untyped-def]
        return mod._loss(mod._forward(params, X, *initial), Y)

    grads = jax.grad(plain, argnums=tuple(range(2 + len(states))))(params, X, *states.values())
    named = dict(grads[0])
    named["dX"] = grads[1]
    named.update({f"d{name}": g for name, g in zip(states, grads[2:], strict=True)})
    return named


def assert_close(actual, expected, name: str) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(
        np.asarray(actual), np.asarray(expected), rtol=1e-10, atol=1e-12, err_msg=name
    )


@pytest.mark.parametrize(("key", "unrolled"), cases())
def test_bptt_equals_jax_autodiff_of_the_same_loss(key: str, unrolled: bool) -> None:
    mod = module_for(key, unrolled)
    params, X, Y, states = problem(mod)
    expected = autodiff_gradients(mod, params, X, Y, states)
    loss, gradients, state = mod.loss_and_all_gradients(params, X, Y, **states)
    assert float(loss) == pytest.approx(float(mod.loss(params, X, Y, **states)), rel=1e-13)
    for name, value in {**gradients, **{k: state[k] for k in state if k.startswith("d")}}.items():
        assert_close(value, expected[name], name)
    # through jax.grad: the custom VJP's backward is the generated BPTT
    n = len(states)
    grads = jax.grad(
        lambda p, X, *initial: mod.loss(p, X, Y, *initial), argnums=tuple(range(2 + n))
    )(params, X, *states.values())
    for name, value in grads[0].items():
        assert_close(value, expected[name], name)
    assert_close(grads[1], expected["dX"], "dX")
    for name, value in zip(states, grads[2:], strict=True):
        assert_close(value, expected[f"d{name}"], f"d{name}")
    value, gradients = mod.loss_and_gradients(params, X, Y, **states)
    assert float(value) == pytest.approx(float(loss), rel=1e-13)
    for name in gradients:
        assert_close(gradients[name], expected[name], name)


@pytest.mark.parametrize(("key", "unrolled"), cases())
def test_check_grads_passes(key: str, unrolled: bool) -> None:
    """Finite differences of the loss against the custom VJP, in random directions."""
    mod = module_for(key, unrolled)
    params, X, Y, states = problem(mod, seed=1)

    def f(params, X, *initial):  # type: ignore[no-untyped-def]
        return mod.loss(params, X, Y, *initial, check=False)

    jax_test_util.check_grads(f, (params, X, *states.values()), order=1, modes=["rev"])


def test_the_loss_works_under_jit_and_in_a_bigger_program() -> None:
    mod = module_for("lstm")
    params, X, Y, states = problem(mod, seed=4)
    expected = autodiff_gradients(mod, params, X, Y, states)

    def program(params):  # type: ignore[no-untyped-def]
        penalty = sum((w**2).sum() for w in params.values())
        return 3 * mod.loss(params, X, Y, **states) + penalty  # check=True: shapes, dtypes

    grads = jax.jit(jax.grad(program))(params)
    for name, value in grads.items():
        assert_close(value, 3 * expected[name] + 2 * params[name], name)
    value, gradients = jax.jit(mod.loss_and_gradients)(params, X, Y, **states)
    assert float(value) == pytest.approx(float(mod.loss(params, X, Y, **states)), rel=1e-13)
    for name, grad in gradients.items():
        assert_close(grad, expected[name], name)


def test_jax_grad_runs_the_generated_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = module_for("elman")
    params, X, Y, states = problem(mod, seed=5)
    calls = []
    backward = mod._backward

    def counted(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        return backward(*args)

    monkeypatch.setattr(mod, "_backward", counted)
    jax.grad(lambda p: mod.bptt(p, X, Y, **states))(params)
    assert calls == [1]


@pytest.mark.parametrize("key", ["elman", "lstm", "gru_pytorch", "elman_relu_bce"])
def test_jax_agrees_with_the_numpy_module(key: str) -> None:
    mod = module_for(key)
    numpy_mod = symbptt.load_module(symbptt.emit_numpy(SPECS[key]))
    params, X, Y, states = problem(mod, seed=2, steps=6)  # any T: not the spec's
    loss, gradients, state = mod.loss_and_all_gradients(params, X, Y, **states)
    as_np = {k: np.asarray(v) for k, v in params.items()}
    initial = {k: np.asarray(v) for k, v in states.items()}
    loss_np, gradients_np, state_np = numpy_mod.loss_and_all_gradients(
        as_np, np.asarray(X), np.asarray(Y), **initial
    )
    assert float(loss) == pytest.approx(loss_np, rel=1e-12)
    for name in gradients_np:
        np.testing.assert_allclose(gradients[name], gradients_np[name], rtol=1e-9, atol=1e-14)
    for name in state_np:
        np.testing.assert_allclose(state[name], state_np[name], rtol=1e-9, atol=1e-14)
    predictions, _ = mod.forward(params, X, **states)
    expected, _ = numpy_mod.forward(as_np, np.asarray(X), **initial)
    np.testing.assert_allclose(predictions, expected, rtol=1e-12)


def test_the_module_trains_with_jax_grad() -> None:
    mod = module_for("lstm")
    _, X, Y, _ = problem(mod, seed=3)
    params = mod.init_params(3, 6, 3, rng=0, dtype=jnp.float64)
    step = jax.jit(lambda p: jax.tree.map(lambda w, g: w - 0.5 * g, p, jax.grad(mod.loss)(p, X, Y)))
    losses = []
    for _ in range(30):
        losses.append(float(mod.loss(params, X, Y)))
        params = step(params)
    assert losses[-1] < 0.9 * losses[0]  # soft targets: the loss cannot reach 0


def test_float32_in_float32_out() -> None:
    mod = module_for("elman")
    params, X, Y, states = problem(mod)
    params32 = {k: v.astype(jnp.float32) for k, v in params.items()}
    h0 = states["h0"].astype(jnp.float32)
    value, gradients = mod.loss_and_gradients(
        params32, X.astype(jnp.float32), Y.astype(jnp.float32), h0=h0
    )
    assert value.dtype == jnp.float32
    assert {g.dtype for g in gradients.values()} == {jnp.dtype(jnp.float32)}


def test_bad_arguments_name_what_is_wrong() -> None:
    mod = module_for("elman")
    params, X, Y, states = problem(mod)
    h0 = states["h0"]
    nan = X.at[1, 0, 2].set(jnp.nan)
    cases = [
        ({"X": np.asarray(X)}, r"^X: expected a jax array, got numpy.ndarray"),
        ({"h0": h0.astype(jnp.float32)}, r"^h0: expected float64 \(the dtype of X\), got float32"),
        ({"X": nan}, r"^X: expected finite values, got nan at index \(1, 0, 2\)"),
        ({"params": {**params, "W_hh": params["W_hh"].T[:, :3]}}, r"^W_hh: expected shape"),
        ({"params": [1]}, r"^params: expected a dict of arrays, got list"),
    ]
    for change, message in cases:
        args = {"params": params, "X": X, "Y": Y, "h0": h0, **change}
        for call in (mod.loss, mod.loss_and_gradients):
            with pytest.raises(mod.ArgumentError, match=message):
                call(args["params"], args["X"], args["Y"], args["h0"])
    with pytest.raises(mod.ArgumentError, match=r"^Y: cross_entropy targets must sum to 1"):
        mod.loss(params, X, 2 * Y, h0)
    with pytest.raises(mod.ArgumentError, match=r"^dtype: expected float32 or float64"):
        mod.init_params(3, 4, 3, dtype=jnp.int32)


def test_shapes_are_checked_when_compiling_and_types_at_every_call() -> None:
    """Shapes and dtypes are jax.jit's cache key: the compiled functions check them when
    they trace (with check=False too); the types, which the key leaves out, are checked
    at every call, also once compiled code exists for the same shapes."""
    mod = symbptt.load_module(symbptt.emit(SPECS["elman"], backend="jax"))  # its own jit cache
    params, X, Y, states = problem(mod)
    h0 = states["h0"]
    mod.loss_and_gradients(params, X, Y, h0)  # compiled for these shapes
    numpy_params = {**params, "W_hh": np.asarray(params["W_hh"])}
    with pytest.raises(mod.ArgumentError, match=r"^W_hh: expected a jax array, got numpy"):
        mod.loss_and_gradients(numpy_params, X, Y, h0)
    wrong = {**params, "W_hh": params["W_hh"][:, :3]}
    for check in (True, False):
        with pytest.raises(mod.ArgumentError, match=r"^W_hh: expected shape"):
            mod.loss_and_gradients(wrong, X, Y, h0, check=check)
    X32, Y32 = X.astype(jnp.float32), Y.astype(jnp.float32)
    params32 = {k: v.astype(jnp.float32) for k, v in params.items()}
    nan = X32.at[1, 0, 2].set(jnp.nan)  # float32: the finite check sums each argument
    with pytest.raises(mod.ArgumentError, match=r"^X: expected finite values, got nan"):
        mod.loss_and_gradients(params32, nan, Y32, h0.astype(jnp.float32))


@pytest.mark.parametrize("concatenated", [0, 2**16])
def test_the_finite_check_by_sums_and_by_concatenation(concatenated: int) -> None:
    """The compiled check concatenates the arguments up to ``_CONCATENATED`` entries, else
    sums each (a finite sum has finite terms); a sum that overflows sends the call to the
    closer look, which finds every entry finite and refuses nothing."""
    mod = symbptt.load_module(symbptt.emit(SPECS["elman"], backend="jax"))  # its own jit cache
    mod._CONCATENATED = concatenated
    params, X, Y, states = problem(mod)
    huge = X.at[0, 0, 0].set(1e308).at[0, 1, 0].set(1e308)
    assert not np.isfinite(float(huge.sum()))
    mod.loss(params, huge, Y, states["h0"])  # no ArgumentError
    with pytest.raises(mod.ArgumentError, match=r"^W_hh: expected finite values, got inf"):
        mod.loss_and_gradients({**params, "W_hh": params["W_hh"].at[1, 2].set(jnp.inf)}, X, Y)
    assert np.isfinite(float(mod.loss(params, X, Y, states["h0"])))


def test_the_unrolled_module_takes_its_own_T_only() -> None:
    mod = module_for("elman", True)
    params, X, Y, states = problem(mod)
    with pytest.raises(mod.ArgumentError, match=r"^X: expected shape \(T, m, n_in\) with T = 3"):
        mod.loss(params, X[:2], Y[:2], **states)
    assert module_for("elman").STEPS is None and mod.STEPS == 3


def test_emit_jax_and_a_missing_jax(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ModelSpec(steps=2)
    source = symbptt.emit(spec, backend="jax")
    assert "import jax.numpy as jnp" in source and "out=" not in source
    assert "backend='jax'" in source
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a)
    )
    with pytest.raises(BackendError, match=r"needs jax.*pip install 'symbptt\[jax\]'"):
        symbptt.emit(spec, backend="jax")


def test_the_printer_spells_each_function_for_jax() -> None:
    import sympy as sp

    z = sp.Symbol("z")
    cases = {
        sp.tanh(z): "jnp.tanh(z)",
        sp.Max(z, 0): "jnp.maximum(0, z)",
        sp.Heaviside(z, 0): "jnp.heaviside(z, 0)",
        sp.log(1 + sp.exp(z)): "jnp.logaddexp(0, z)",
        sp.log(1 + z): "jnp.log1p(z)",
        sp.exp(-z): "jnp.exp(-z)",
    }
    for expr, code in cases.items():
        assert JaxPrinter({}).doprint(expr) == code
    assert all(name.startswith("numpy.") for name in JAX_FUNCTIONS)
    assert JaxPrinter({}).set_item("h_seq", "t + 1", "h_t") == "h_seq = h_seq.at[t + 1].set(h_t)"
    assert JaxPrinter({}).copy_of("W.T") == "W.T"
    with pytest.raises(NotImplementedError, match=r"no spelling of numpy.cbrt"):
        JaxPrinter({})._module_format("numpy.cbrt")
    with pytest.raises(NotImplementedError, match=r"writes no array in place"):
        JaxPrinter({}).call_into("dot", ["a", "b"], "z")


def test_generated_jax_code_is_ruff_clean(tmp_path: Path) -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed")
    for key in ("elman", "lstm", "gru", "lstm_peephole"):
        for unrolled in (False, True):
            source = symbptt.emit(SPECS[key], backend="jax", unrolled=unrolled)
            (tmp_path / f"{key}_{int(unrolled)}.py").write_text(source)
    for command in (["check", "--isolated"], ["format", "--isolated", "--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, str(tmp_path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_derive_backend_jax_writes_and_checks_the_jax_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from symbptt.cli import main

    spec = ModelSpec(steps=2, cell="gru")
    out = tmp_path / "out"
    assert main(["derive", "--steps", "2", "--cell", "gru", "--backend", "jax", "--unrolled",
                 "--out", str(out), "--no-pdf"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert re.search(r"gradients_jax.py +max relative error .* OK", text), text
    assert re.search(r"gradients_jax_unrolled.py +max relative error .* OK", text), text
    assert "FAILED" not in text
    assert (out / "gradients_jax.py").read_text() == symbptt.emit(spec, backend="jax")
    unrolled = (out / "gradients_jax_unrolled.py").read_text()
    assert unrolled == symbptt.emit(spec, backend="jax", unrolled=True)
    command = "symbptt derive --steps 2 --cell gru --backend jax --out DIR"
    assert f"Regenerate: {command}\n" in (out / "gradients_jax.py").read_text()
