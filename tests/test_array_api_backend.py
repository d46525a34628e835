"""The CuPy backend, through the Python array API standard.

``emit(spec, backend="cupy")`` and ``backend="array_api"`` print the same
functions, written against the array API standard in the namespace ``xp`` of
the arguments (``array_api_compat``); the CuPy module only refuses arrays of
another namespace.  No GPU here: the printed code runs on ``array_api_strict``
(a strict CPU implementation of the standard that refuses every call outside
it), float64, and is compared with the NumPy module (rolled) and with central
finite differences of the module's own loss.  The test on real CuPy runs where
cupy imports and a GPU is present, and is skipped with the reason otherwise.
"""

from __future__ import annotations

import re
from functools import cache
from types import ModuleType

import array_api_strict
import numpy as np
import pytest
from array_api_compat import array_namespace

import symbptt
from symbptt import BackendError, ModelSpec
from symbptt.codegen.array_api_printer import ARRAY_API_FUNCTIONS, ArrayApiPrinter
from symbptt.codegen.numpy_module import emit_array_api
from symbptt.oracle.gradcheck import cupy_unavailable

from .backend_specs import SPECS

#: The cases of the fast suite; the others are marked slow (they still run in CI).
FAST = {("elman", False), ("lstm", False), ("gru", True), ("lstm_peephole", False)}


def cases() -> list[object]:
    return [
        pytest.param(key, unrolled, marks=() if (key, unrolled) in FAST else pytest.mark.slow)
        for key in SPECS
        for unrolled in (False, True)
    ]


@cache
def module_for(key: str, unrolled: bool = False, backend: str = "array_api") -> ModuleType:
    return symbptt.load_module(emit_array_api(SPECS[key], unrolled=unrolled, backend=backend))


@cache
def numpy_module(key: str) -> ModuleType:
    return symbptt.load_module(symbptt.emit_numpy(SPECS[key]))


def problem(mod: ModuleType, seed: int = 0, batch: int = 2) -> tuple:
    """Random float64 NumPy arrays: params, X, Y (targets the loss accepts), initial states."""
    rng = np.random.default_rng(seed)
    n_in = mod.SIZES["n_in"] or 3
    n_out = mod.SIZES["n_out"] or 3
    params = numpy_module_params(mod, n_in, n_out, seed)
    T = mod.STEPS or mod.SPEC["steps"]
    X = rng.standard_normal((T, batch, n_in))
    shape = (T, batch, n_out) if mod.SPEC["mode"] == "many_to_many" else (batch, n_out)
    raw = rng.standard_normal(shape)
    softmax = np.exp(raw) / np.exp(raw).sum(axis=-1, keepdims=True)
    Y = {"cross_entropy": softmax, "binary_cross_entropy": 1.0 * (raw > 0), "squared_error": raw}
    sizes = {"n_hidden": 4, "n_in": n_in, "n_out": n_out}
    states = {
        f"{s}0": 0.5 * rng.standard_normal((batch, sizes[mod.STATE_SIZES[s]])) for s in mod.STATES
    }
    return params, X, Y[mod.SPEC["loss"]], states


def numpy_module_params(mod: ModuleType, n_in: int, n_out: int, seed: int) -> dict:
    rng = np.random.default_rng(seed + 1)
    params = mod.init_params(n_in, 4, n_out, rng=seed, xp=array_api_strict)
    # biases away from zero too; back to NumPy (the arrays of the oracle)
    return {
        name: np.asarray(value) + 0.3 * rng.standard_normal(value.shape)
        for name, value in params.items()
    }


def strict(tree: dict) -> dict:
    return {name: array_api_strict.asarray(value) for name, value in tree.items()}


@pytest.mark.parametrize(("key", "unrolled"), cases())
def test_gradients_equal_numpy_and_finite_differences(key: str, unrolled: bool) -> None:
    mod = module_for(key, unrolled)
    params, X, Y, states = problem(mod)
    loss, grads, state = mod.loss_and_all_gradients(
        strict(params), array_api_strict.asarray(X), array_api_strict.asarray(Y), **strict(states)
    )
    assert all(array_namespace(g) is array_api_strict for g in grads.values())
    reference = numpy_module(key)
    ref_loss, ref_grads, ref_state = reference.loss_and_all_gradients(params, X, Y, **states)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name in mod.PARAMETERS:
        assert grads[name].shape == params[name].shape
        np.testing.assert_allclose(np.asarray(grads[name]), ref_grads[name], rtol=1e-10, atol=1e-12)
    for name, value in ref_state.items():
        np.testing.assert_allclose(np.asarray(state[name]), value, rtol=1e-10, atol=1e-12)
    # central finite differences of the module's own loss, entry by entry
    eps = 1e-6
    for name in mod.PARAMETERS:
        numeric = np.zeros_like(params[name])
        for index in np.ndindex(params[name].shape):
            values = []
            for sign in (1, -1):
                moved = {k: v.copy() for k, v in params.items()}
                moved[name][index] += sign * eps
                values.append(
                    mod.loss(
                        strict(moved),
                        array_api_strict.asarray(X),
                        array_api_strict.asarray(Y),
                        **strict(states),
                    )
                )
            numeric[index] = (values[0] - values[1]) / (2 * eps)
        np.testing.assert_allclose(np.asarray(grads[name]), numeric, rtol=1e-5, atol=1e-7)


def test_forward_predictions_equal_numpy() -> None:
    mod = module_for("lstm")
    params, X, _, states = problem(mod)
    predictions, _ = mod.forward(strict(params), array_api_strict.asarray(X), **strict(states))
    expected, _ = numpy_module("lstm").forward(params, X, **states)
    np.testing.assert_allclose(np.asarray(predictions), expected, rtol=1e-12)


def test_cupy_module_is_the_array_api_module_with_its_namespace_fixed() -> None:
    """The code CuPy runs is the code the tests run on array_api_strict: the modules
    differ only in NAMESPACE, the header and docstring, and init_params's default."""
    for unrolled in (False, True):
        cupy_source = emit_array_api(SPECS["lstm"], unrolled=unrolled, backend="cupy")
        any_source = emit_array_api(SPECS["lstm"], unrolled=unrolled, backend="array_api")

        def body(source: str) -> str:
            return source[source.index("\ndef forward(") :]

        assert body(cupy_source) == body(any_source)
        assert 'NAMESPACE = "cupy"' in cupy_source
        assert "NAMESPACE = None" in any_source


def test_cupy_module_refuses_numpy_arrays() -> None:
    mod = module_for("elman", backend="cupy")
    params, X, Y, _ = problem(module_for("elman"))
    with pytest.raises(mod.ArgumentError, match=r"^X: expected a cupy array .*numpy\.ndarray$"):
        mod.loss_and_gradients(params, X, Y)
    with pytest.raises(mod.ArgumentError, match=r"^X: expected a cupy array"):
        mod.loss_and_gradients(strict(params), array_api_strict.asarray(X), Y)


def test_bad_arguments_are_named() -> None:
    mod = module_for("elman")
    params, X, Y, _ = problem(mod)
    sp, sX, sY = strict(params), array_api_strict.asarray(X), array_api_strict.asarray(Y)
    mixed = {**sp, "W_hh": params["W_hh"]}
    with pytest.raises(mod.ArgumentError, match=r"^W_hh: expected an array of the namespace of X"):
        mod.loss(mixed, sX, sY)
    with pytest.raises(mod.ArgumentError, match=r"^Y: expected an array of the namespace of X"):
        mod.loss(sp, sX, Y)
    with pytest.raises(mod.ArgumentError, match=r"^X: expected an array, got list"):
        mod.loss(sp, X.tolist(), sY)
    single = {k: array_api_strict.astype(v, array_api_strict.float32) for k, v in sp.items()}
    with pytest.raises(
        mod.ArgumentError, match=r"^W_xh: expected array_api_strict\.float64 \(the dtype of X\)"
    ):
        mod.loss(single, sX, sY)
    ints = array_api_strict.asarray(np.ones(X.shape, dtype=np.int64))
    with pytest.raises(mod.ArgumentError, match=r"^X: expected a float32 or float64 array"):
        mod.loss(sp, ints, sY)
    with pytest.raises(mod.ArgumentError, match=r"^Y: expected shape \(T, m, n_out\)"):
        mod.loss(sp, sX, sY[:, :1, :])
    with pytest.raises(mod.ArgumentError, match=r"^h0: expected shape \(m, n_hidden\)"):
        mod.loss(sp, sX, sY, h0=array_api_strict.zeros((5, 4), dtype=array_api_strict.float64))
    bad = X.copy()
    bad[1, 0, 2] = np.nan
    with pytest.raises(mod.ArgumentError, match=r"^X: expected finite values, got nan at index"):
        mod.loss(sp, array_api_strict.asarray(bad), sY)
    # check=False skips the validation, and gives the same loss
    assert mod.loss(sp, sX, sY, check=False) == mod.loss(sp, sX, sY)


@pytest.mark.parametrize("unrolled", [False, True], ids=["rolled", "unrolled"])
def test_numpy_s_masked_and_byte_swapped_arrays_are_refused_naming_them(unrolled: bool) -> None:
    """On NumPy arrays, a masked array (whose mask the module ignored: a silent wrong loss,
    or NumPy's broadcasting ValueError in the loop) and an array in the other byte order
    (X's message said "expected a float32 or float64 array, got >f8") are refused as the
    NumPy module refuses them."""
    spec = ModelSpec(steps=3, layers=2, masked=True)
    mod = symbptt.load_module(emit_array_api(spec, unrolled=unrolled))
    params, X, Y, _ = problem(mod, seed=2, batch=3)
    states = {"h0_1": np.full((3, 4), 0.5)}
    mask = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=np.float64)
    name = mod.PARAMETERS[0]
    masked = "a masked array, whose mask this module would ignore"
    swapped = "expected the machine's byte order, got >f8"
    cases = [
        ({"X": np.ma.masked_array(X, mask=X > 0)}, f"X: {masked}"),
        ({"mask": np.ma.masked_array(mask)}, f"mask: {masked}"),
        ({name: np.ma.masked_array(params[name])}, f"{name}: {masked}"),
        ({"X": X.astype(">f8")}, f"X: {swapped}"),
        ({"Y": Y.astype(">f8")}, f"Y: {swapped}"),
        ({"h0_1": states["h0_1"].astype(">f8")}, f"h0_1: {swapped}"),
    ]
    for change, message in cases:
        args = {"X": X, "Y": Y, "mask": mask, **states, **change}
        call = {k: v for k, v in args.items() if k not in params}
        call["params"] = {k: args.get(k, v) for k, v in params.items()}
        with pytest.raises(mod.ArgumentError, match="^" + re.escape(message)):
            mod.loss_and_gradients(**call)


def test_printer_spells_only_the_standard() -> None:
    """Every spelling is a function of array_api_strict's namespace, and a NumPy function
    without one is an error naming it."""
    for spelled in ARRAY_API_FUNCTIONS.values():
        assert hasattr(array_api_strict, spelled.removeprefix("xp."))
    with pytest.raises(NotImplementedError, match=r"no spelling of numpy\.heaviside_not"):
        ArrayApiPrinter({})._module_format("numpy.heaviside_not")
    source = emit_array_api(SPECS["lstm"])
    kernels = source[source.index("\ndef _forward(") :]
    assert not re.search(r"\bnp\.|out=|(?<!xp)\.(sum|reshape|copy|max)\(", kernels)


@pytest.mark.skipif(cupy_unavailable() is not None, reason=str(cupy_unavailable()))
@pytest.mark.parametrize("key", ["elman", "lstm", "gru", "lstm_peephole"])
def test_on_cupy_gradients_equal_numpy(key: str) -> None:
    import cupy

    mod = module_for(key, backend="cupy")
    params, X, Y, states = problem(module_for(key))
    on_gpu = {name: cupy.asarray(value) for name, value in params.items()}
    gpu_states = {name: cupy.asarray(value) for name, value in states.items()}
    loss, grads = mod.loss_and_gradients(on_gpu, cupy.asarray(X), cupy.asarray(Y), **gpu_states)
    ref_loss, ref_grads = numpy_module(key).loss_and_gradients(params, X, Y, **states)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name in mod.PARAMETERS:
        assert isinstance(grads[name], cupy.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(grads[name]), ref_grads[name], rtol=1e-10)
    with pytest.raises(mod.ArgumentError, match=r"^X: expected a cupy array"):
        mod.loss_and_gradients(params, X, Y)


# -- composed models: stacked, bidirectional, masked ---------------------------------------
ALL_THREE = {"layers": 2, "direction": "bidirectional", "masked": True}
COMPOSED = [
    {"cell": "elman", **ALL_THREE},
    {"cell": "elman", **ALL_THREE, "mode": "many_to_one", "notation": "aa"},
    {"cell": "gru", "batch_reduction": "tokens"},
    pytest.param({"cell": "lstm", **ALL_THREE}, marks=pytest.mark.slow),
    pytest.param(
        {"cell": "gru", **ALL_THREE, "notation": "layered", "time_reduction": "mean"},
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("unrolled", [False, True])
@pytest.mark.parametrize(
    "fields", COMPOSED, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items())
)
def test_composed_gradients_equal_numpy(fields: dict, unrolled: bool) -> None:
    """A composed model's array API module, on array_api_strict, against the NumPy module
    (itself checked by central differences in test_compose_codegen.py); the mask and the
    initial states as arrays of the namespace, class labels as integers."""
    from symbptt.oracle.gradcheck import random_problem

    spec = ModelSpec(**{"steps": 3, **fields})
    reference = symbptt.load_module(symbptt.emit_numpy(spec))
    mod = symbptt.load_module(emit_array_api(spec, unrolled=unrolled))
    problem = random_problem(reference, steps=3, batch=3, n_in=2, n_hidden=2, n_out=3, rng=1)
    keywords = {**problem.keywords(), **problem.initial}
    targets = [problem.Y]
    if spec.loss == "cross_entropy":  # class labels too
        targets.append(np.argmax(problem.Y, axis=-1))
    for Y in targets:
        expected = reference.loss_and_all_gradients(problem.params, problem.X, Y, **keywords)
        loss, grads, state = mod.loss_and_all_gradients(
            strict(problem.params),
            array_api_strict.asarray(problem.X),
            array_api_strict.asarray(Y),
            **strict({k: v for k, v in keywords.items() if v is not None}),
        )
        assert loss == pytest.approx(expected[0], rel=1e-12)
        for name, value in expected[1].items():
            np.testing.assert_allclose(np.asarray(grads[name]), value, rtol=1e-9, atol=1e-12)
        for name, value in expected[2].items():
            np.testing.assert_allclose(np.asarray(state[name]), value, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [bool, np.int64, np.float32])
def test_a_mask_of_any_real_dtype_is_taken_as_numpy_s_module_takes_it(dtype: type) -> None:
    """A bool mask too: the standard compares no bool array with 0 or 1, so the checks
    read it as numbers (with class labels and with distributions, both masked)."""
    spec = ModelSpec(steps=3, masked=True)
    reference = symbptt.load_module(symbptt.emit_numpy(spec))
    mod = symbptt.load_module(emit_array_api(spec))
    params, X, Y, _ = problem(mod, seed=2, batch=3)
    mask = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=dtype)
    for targets in (Y, np.argmax(Y, axis=-1)):
        expected = reference.loss_and_gradients(params, X, targets, mask=mask)
        loss, grads = mod.loss_and_gradients(
            strict(params),
            array_api_strict.asarray(X),
            array_api_strict.asarray(targets),
            mask=array_api_strict.asarray(mask),
        )
        assert loss == pytest.approx(expected[0], rel=1e-12)
        for name, value in expected[1].items():
            np.testing.assert_allclose(np.asarray(grads[name]), value, rtol=1e-10, atol=1e-12)
    late = array_api_strict.asarray(np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1]], dtype=dtype))
    with pytest.raises(mod.ArgumentError, match=r"^mask: example 0 has a real step 2 after"):
        mod.loss(
            strict(params), array_api_strict.asarray(X), array_api_strict.asarray(Y), mask=late
        )


def test_a_missing_library_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without cupy (or array-api-compat): BackendError naming the extra, in Python and as
    one line (exit 2, nothing written) on the command line."""
    import importlib.util
    from pathlib import Path

    from symbptt.cli import main

    real = importlib.util.find_spec
    missing = {"cupy", "array_api_compat"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    for backend, module, extra in (
        ("cupy", "cupy", "cupy"),
        ("array_api", "array_api_compat", "array-api"),
    ):
        needle = f"backend '{backend}' needs {module}, which is not installed: "
        needle += f"pip install 'symbptt[{extra}]'"
        with pytest.raises(BackendError, match=f"^{re.escape(needle)}$"):
            symbptt.emit(SPECS["elman"], backend=backend)
        out = Path(str(tmp_path)) / backend
        code = main(["derive", "--backend", backend, "--out", str(out), "--no-pdf"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and needle in err, err
        assert not out.exists()
    # CuPy installed without array-api-compat, which its module imports
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "cupy" else None if name in missing else real(name),
    )
    needle = "backend 'cupy' needs array_api_compat, which is not installed: "
    with pytest.raises(BackendError, match=f"^{re.escape(needle)}"):
        symbptt.emit(SPECS["elman"], backend="cupy")


def test_derive_writes_the_array_api_module_and_checks_it(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    from symbptt.cli import main

    out = Path(str(tmp_path))
    args = ["derive", "--steps", "2", "--backend", "array_api", "--unrolled", "--no-pdf"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("gradients_array_api.py", "gradients_array_api_unrolled.py"):
        line = next(line for line in printed.splitlines() if line.strip().startswith(name + " "))
        assert "max relative error" in line and " OK " in line, line
    spec = ModelSpec(steps=2)
    assert (out / "gradients_array_api.py").read_text() == symbptt.emit(spec, backend="array_api")
    unrolled = (out / "gradients_array_api_unrolled.py").read_text()
    assert unrolled == symbptt.emit(spec, backend="array_api", unrolled=True)


def test_generated_array_api_code_is_ruff_clean(tmp_path: object) -> None:
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed")
    folder = Path(str(tmp_path))
    specs = {**SPECS, "composed": ModelSpec(steps=3, **ALL_THREE)}
    for key, spec in specs.items():
        for unrolled in (False, True):
            for backend in ("array_api", "cupy"):
                source = emit_array_api(spec, unrolled=unrolled, backend=backend)
                (folder / f"{key}_{int(unrolled)}_{backend}.py").write_text(source)
    for command in (["check", "--isolated"], ["format", "--isolated", "--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, str(folder)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("key", ["lstm", "elman_relu_bce"])
def test_float32_in_float32_out(key: str) -> None:
    """float32 arguments give float32 gradients (no Python number promotes them), near the
    float64 ones."""
    mod = module_for(key)
    params, X, Y, states = problem(mod)

    def single(tree: dict) -> dict:
        return {
            k: array_api_strict.asarray(v, dtype=array_api_strict.float32) for k, v in tree.items()
        }

    loss, grads = mod.loss_and_gradients(
        single(params), *single({"X": X, "Y": Y}).values(), **single(states)
    )
    expected_loss, expected = numpy_module(key).loss_and_gradients(params, X, Y, **states)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for name, value in expected.items():
        assert grads[name].dtype == array_api_strict.float32
        np.testing.assert_allclose(np.asarray(grads[name]), value, rtol=1e-3, atol=1e-5)


def test_a_cupy_modules_check_runs_on_cupy_or_says_why_not() -> None:
    """``derive --backend cupy`` checks the module on CuPy where a GPU is; elsewhere its line
    says that it did not run and why (never a traceback, never a pass it did not earn)."""
    from symbptt.cli.commands import numerical_check

    spec = SPECS["lstm"]
    check = numerical_check(
        "gradients_cupy.py", emit_array_api(spec, backend="cupy"), symbptt.emit_numpy(spec)
    )
    why = cupy_unavailable()
    if why is None:
        assert check.ok and not check.not_run and check.error < 1e-6
    else:
        assert check.not_run.startswith(why)
        assert check.text.strip().startswith("gradients_cupy.py") and "not run: " in check.text
