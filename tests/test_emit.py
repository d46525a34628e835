"""The generated modules' contract: API, validation, dtypes, text, determinism, cleanliness."""

from __future__ import annotations

import importlib.util
import inspect
import linecache
import os
import subprocess
import sys
import tempfile
import traceback
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import mpmath
import numpy as np
import pytest
import sympy as sp

import symbptt
from symbptt import ModelSpec
from symbptt.codegen.lines import Lowering, SharedPrinter, fit, layout
from symbptt.expr import functions
from symbptt.model.presets import PRESETS
from symbptt.model.spec import CHOICES, OUTPUT_LOSS_PAIRS
from symbptt.oracle import verify
from symbptt.oracle.gradcheck import finite_difference_errors, random_problem, relative_error

ROOT = Path(__file__).resolve().parent.parent


@cache
def module_for(spec: ModelSpec, unrolled: bool = False) -> ModuleType:
    return symbptt.load_module(symbptt.emit_numpy(spec, unrolled=unrolled))


XH = ModelSpec(steps=3)
LAYERED = ModelSpec(steps=3, notation="layered", mode="many_to_one")


# -- the contract ------------------------------------------------------------------
@pytest.mark.parametrize("unrolled", [False, True])
def test_constants_and_init_params_follow_the_notation(unrolled: bool) -> None:
    column = module_for(XH, unrolled)
    assert column.PARAMETERS == ("W_xh", "W_hh", "W_hy", "b_h", "b_y")
    assert column.ROLES["W_hh"] == "recurrent_weight" and column.LAYOUT == "column"
    params = column.init_params(3, 4, 5, rng=0)
    shapes = {name: value.shape for name, value in params.items()}
    assert shapes == {"W_xh": (4, 3), "W_hh": (4, 4), "W_hy": (5, 4), "b_h": (4, 1), "b_y": (5, 1)}
    row = module_for(LAYERED, unrolled)
    assert row.LAYOUT == "row" and row.PARAMETERS == ("W_1", "W_h1", "W_2", "beta_1", "beta_2")
    params = row.init_params(3, 4, 5, rng=0, dtype=np.float32)
    assert params["W_1"].shape == (3, 4) and params["W_2"].shape == (4, 5)
    assert params["beta_1"].shape == (4, 1) and params["beta_1"].dtype == np.float32
    assert ((3, 3) if unrolled else (None, None)) == (column.STEPS, row.STEPS)


@pytest.mark.parametrize("spec", [XH, LAYERED], ids=["xh", "layered_many_to_one"])
def test_forward_loss_and_gradients_agree(spec: ModelSpec) -> None:
    mod = module_for(spec)
    p = random_problem(mod, steps=5, batch=3)
    predictions, cache_ = mod.forward(*p.args()[:2], p.h0)
    shape = (5, 3, 3) if spec.mode == "many_to_many" else (3, 3)
    assert predictions.shape == shape and isinstance(cache_, dict)
    value = mod.loss(*p.args())
    loss, gradients = mod.loss_and_gradients(*p.args())
    assert isinstance(loss, float) and loss == pytest.approx(value, rel=1e-14)
    assert list(gradients) == list(mod.PARAMETERS)
    for name, gradient in gradients.items():
        assert gradient.shape == p.params[name].shape
    loss2, gradients2, state = mod.loss_and_all_gradients(*p.args())
    assert loss2 == loss
    assert all(np.array_equal(gradients[n], gradients2[n]) for n in gradients)
    assert state["dX"].shape == p.X.shape
    assert state["dh0"].shape == state["h_T"].shape == (3, 4)


def test_h0_none_means_zeros_and_h_T_chains_truncated_bptt() -> None:
    mod = module_for(XH)
    p = random_problem(mod, steps=6)
    zeros = np.zeros_like(p.h0)
    assert mod.loss(p.params, p.X, p.Y) == mod.loss(p.params, p.X, p.Y, zeros)
    whole, _ = mod.forward(p.params, p.X, p.h0)
    _, _, state = mod.loss_and_all_gradients(p.params, p.X[:3], p.Y[:3], p.h0)
    second, _ = mod.forward(p.params, p.X[3:], state["h_T"])
    np.testing.assert_allclose(second, whole[3:], rtol=1e-13, atol=1e-15)


def test_rolled_module_takes_T_from_X_and_unrolled_checks_it() -> None:
    rolled, unrolled = module_for(XH), module_for(XH, True)
    for steps in (1, 2, 7):
        p = random_problem(rolled, steps=steps)
        assert np.isfinite(rolled.loss(*p.args()))
    p = random_problem(rolled, steps=4)
    with pytest.raises(ValueError, match=r"X: expected shape \(T, m, n_in\) with T = 3"):
        unrolled.loss(*p.args())


def test_float32_in_float32_out() -> None:
    for unrolled in (False, True):
        mod = module_for(XH, unrolled)
        p = random_problem(mod, dtype=np.float32)
        loss, gradients, state = mod.loss_and_all_gradients(*p.args())
        assert all(g.dtype == np.float32 for g in gradients.values())
        assert {v.dtype for v in state.values()} == {np.dtype(np.float32)}
        assert mod.forward(p.params, p.X)[0].dtype == np.float32
        p64 = random_problem(mod, dtype=np.float64)
        loss64, gradients64 = mod.loss_and_gradients(*p64.args())
        assert loss == pytest.approx(loss64, rel=1e-5)
        for name in gradients:
            assert relative_error(gradients[name], gradients64[name]) < 1e-4


def test_validation_names_the_argument_and_the_shapes() -> None:
    mod = module_for(XH)
    p = random_problem(mod)
    params, X, Y, h0 = p.args()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"params": {k: v for k, v in params.items() if k != "W_hh"}}, "params: missing W_hh"),
        ({"params": {**params, "V": params["W_hh"]}}, "params: unexpected V"),
        (
            {"params": {**params, "W_xh": params["W_xh"][:, :2]}},
            r"W_xh: expected shape \(n_hidden, n_in\) = \(4, 3\), got \(4, 2\)",
        ),
        (
            {"params": {**params, "b_h": params["b_h"].ravel()}},
            r"b_h: expected shape \(n_hidden, 1\) = \(4, 1\), got \(4,\)",
        ),
        ({"X": X[0]}, r"X: expected shape \(T, m, n_in\), got \(2, 3\)"),
        ({"X": X.astype(int)}, "X: expected a float32 or float64 array, got int64"),
        ({"Y": Y[:, :1]}, r"Y: expected shape \(T, m, n_out\) = \(3, 2, 3\), got \(3, 1, 3\)"),
        ({"h0": h0.T}, r"h0: expected shape \(m, n_hidden\) = \(2, 4\), got \(4, 2\)"),
        ({"h0": h0.astype(np.float32)}, "h0: expected dtype float64 .*got float32"),
        (
            {"params": {**params, "W_hy": params["W_hy"].astype(np.float32)}},
            "W_hy: expected dtype float64",
        ),
    ]
    for change, message in cases:
        args = {"params": params, "X": X, "Y": Y, "h0": h0, **change}
        with pytest.raises(ValueError, match=message):
            mod.loss_and_gradients(args["params"], args["X"], args["Y"], args["h0"])


@pytest.mark.parametrize("spec", [XH, ModelSpec(steps=2, cell="lstm", notation="layered")])
def test_non_finite_values_are_refused_naming_the_array(spec: ModelSpec) -> None:
    mod = module_for(spec, False)
    p = random_problem(mod, rng=3)
    names = ["X", "Y", *mod.PARAMETERS, *p.initial]
    assert len(p.initial) == len(mod.STATES)
    for i, name in enumerate(names):
        bad = (np.nan, np.inf, -np.inf)[i % 3]
        params = {k: v.copy() for k, v in p.params.items()}
        args = {"X": p.X.copy(), "Y": p.Y.copy(), **{k: v.copy() for k, v in p.initial.items()}}
        array = params[name] if name in params else args[name]
        array[(0,) * array.ndim] = bad
        message = rf"^{name}: expected finite values, got {bad} at index \(0, 0"
        with pytest.raises(mod.ArgumentError, match=message):
            mod.loss_and_all_gradients(params, **args)
        if name != "Y":
            del args["Y"]
            with pytest.raises(mod.ArgumentError, match=message):
                mod.forward(params, **args)
    # check=False skips the validation: NaN in gives NaN out, as NumPy computes it
    X = p.X.copy()
    X[0, 0, 0] = np.nan
    assert np.isnan(mod.loss_and_gradients(p.params, X, p.Y, check=False)[0])


def test_the_one_sum_of_the_values_refuses_nothing_finite_and_misses_nothing() -> None:
    # The validation reduces all the arguments at once; a sum that is not finite (an
    # overflow of finite values) is looked at array by array, and so is every argument
    # past _CONCATENATED entries in all.
    mod = module_for(XH)
    p = random_problem(mod, rng=4)
    huge = {**p.params, "W_hh": p.params["W_hh"] * 1e160}  # squares overflow; values finite
    checked = mod.loss_and_gradients(huge, p.X, p.Y, **p.initial)
    unchecked = mod.loss_and_gradients(huge, p.X, p.Y, **p.initial, check=False)
    assert checked[0] == unchecked[0]
    assert sum(a.size for a in (p.X, *p.params.values())) < mod._CONCATENATED
    mod._CONCATENATED = 0  # one reduction per argument, as at large sizes (a fresh module)
    assert mod.loss_and_gradients(huge, p.X, p.Y, **p.initial)[0] == checked[0]
    for name in ("X", *mod.PARAMETERS):
        params = {k: v.copy() for k, v in p.params.items()}
        X = p.X.copy()
        array = params.get(name, X)
        array[(-1,) * array.ndim] = np.nan
        with pytest.raises(mod.ArgumentError, match=rf"^{name}: expected finite values"):
            mod.loss_and_gradients(params, X, p.Y, **p.initial)


def test_check_false_gives_the_same_results() -> None:
    for spec in (XH, ModelSpec(steps=2, cell="gru")):
        mod = module_for(spec)
        p = random_problem(mod, rng=5)
        checked = mod.loss_and_all_gradients(*p.args())
        unchecked = mod.loss_and_all_gradients(*p.args(), check=False)
        assert checked[0] == unchecked[0]
        for a, b in zip(checked[1:], unchecked[1:], strict=True):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        without = mod.loss_and_gradients(p.params, p.X, p.Y, check=False)  # zeros for h0
        assert without[0] == mod.loss_and_gradients(p.params, p.X, p.Y)[0]


def test_big_endian_masked_and_foreign_arrays_get_a_clear_message(tmp_path: Path) -> None:
    mod = module_for(XH)
    p = random_problem(mod)
    params, X, Y, h0 = p.args()
    swapped = X.astype(X.dtype.newbyteorder(">" if X.dtype.byteorder != ">" else "<"))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"X": swapped}, r"X: expected the machine's byte order, got >f8"),
        ({"h0": h0.astype(">f8")}, r"h0: expected the machine's byte order, got >f8"),
        ({"params": {**params, "b_y": params["b_y"].astype(">f8")}}, r"b_y: expected the mach"),
        ({"X": np.ma.masked_array(X, mask=X > 0)}, r"X: a masked array, whose mask this module"),
        ({"Y": np.ma.masked_array(Y)}, r"Y: a masked array"),
        ({"params": {**params, "W_hh": np.ma.masked_array(params["W_hh"])}}, r"W_hh: a masked"),
        ({"X": X.tolist()}, r"X: expected a numpy array, got list"),
        ({"h0": memoryview(h0)}, r"h0: expected a numpy array, got memoryview"),
    ]
    for change, message in cases:
        args = {"params": params, "X": X, "Y": Y, "h0": h0, **change}
        with pytest.raises(mod.ArgumentError, match=message):
            mod.loss_and_gradients(args["params"], args["X"], args["Y"], args["h0"])
    # another subclass of ndarray is fine: a memory-mapped X and parameter
    mapped = np.memmap(tmp_path / "X.bin", dtype=X.dtype, mode="w+", shape=X.shape)
    mapped[...] = X
    weights = np.memmap(tmp_path / "W.bin", dtype=X.dtype, mode="w+", shape=params["W_hh"].shape)
    weights[...] = params["W_hh"]
    expected = mod.loss_and_gradients(params, X, Y, h0)
    got = mod.loss_and_gradients({**params, "W_hh": weights}, mapped, Y, h0)
    assert got[0] == expected[0]
    torch = pytest.importorskip("torch")
    with pytest.raises(mod.ArgumentError, match=r"^X: expected a numpy array, got torch.Tensor"):
        mod.loss(params, torch.from_numpy(X), Y)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("unrolled", [False, True], ids=["rolled", "unrolled"])
def test_a_numpy_matrix_is_refused_naming_the_argument(unrolled: bool) -> None:
    """np.matrix (an ndarray subclass whose * is a matrix product and whose rows stay 2-D)
    is refused by name: it passed the checks and failed in the loop with NumPy's ValueError
    (a parameter, an initial state, many-to-one targets, a mask, class labels)."""
    mod = module_for(LAYERED, unrolled)
    p = random_problem(mod)
    params, X, Y, h0 = p.args()
    name = mod.PARAMETERS[0]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"params": {**params, name: np.matrix(params[name])}}, name),
        ({"h0": np.matrix(h0)}, "h0"),
        ({"Y": np.matrix(Y)}, "Y"),
    ]
    for change, argument in cases:
        args = {"params": params, "X": X, "Y": Y, "h0": h0, **change}
        message = rf"^{argument}: expected a numpy array, got numpy.matrix \(np.asarray"
        with pytest.raises(mod.ArgumentError, match=message):
            mod.loss_and_gradients(args["params"], args["X"], args["Y"], args["h0"])
    composed = module_for(ModelSpec(steps=3, layers=2, masked=True), unrolled)
    p = random_problem(composed)
    labels = np.argmax(p.Y, axis=-1)
    for keywords, argument in (({"mask": np.matrix(p.mask)}, "mask"), ({}, "Y")):
        Y = np.matrix(labels) if argument == "Y" else labels
        message = rf"^{argument}: expected a numpy array, got numpy.matrix \(np.asarray"
        with pytest.raises(composed.ArgumentError, match=message):
            composed.loss_and_gradients(
                p.params, p.X, Y, **{"mask": p.mask, **keywords}, **p.initial
            )


def test_sizes_fixed_by_the_spec_are_checked() -> None:
    mod = module_for(PRESETS["xh_hello"])
    assert mod.SIZES == {"n_in": 4, "n_hidden": None, "n_out": 4, "m": 1}
    p = random_problem(mod)
    assert p.X.shape[1:] == (1, 4)
    assert np.isfinite(mod.loss(*p.args()))
    with pytest.raises(ValueError, match="m = 1"):
        mod.loss(p.params, np.zeros((4, 2, 4)), np.zeros((4, 2, 4)))
    with pytest.raises(ValueError, match="n_in: expected 4"):
        mod.init_params(3, 5, 4)


def test_the_workspace_is_reused_and_can_be_cleared() -> None:
    mod = module_for(XH)
    small, large = random_problem(mod, steps=2), random_problem(mod, steps=5, batch=4)
    first = mod.loss_and_gradients(*small.args())
    mod.loss_and_gradients(*large.args())
    again = mod.loss_and_gradients(*small.args())
    assert first[0] == again[0]
    assert all(np.array_equal(first[1][n], again[1][n]) for n in first[1])
    mod.clear_workspace()
    assert mod.loss_and_gradients(*small.args())[0] == first[0]


@pytest.mark.parametrize("unrolled", ["no", "", 0, 1, None, np.bool_(True)])
def test_unrolled_is_a_bool(unrolled: object) -> None:
    with pytest.raises(TypeError, match=r"unrolled: expected True or False, got "):
        symbptt.emit_numpy(XH, unrolled=unrolled)  # type: ignore[arg-type]


def test_a_derivation_is_accepted_in_place_of_its_spec() -> None:
    derivation = symbptt.derive(XH)
    assert symbptt.emit_numpy(derivation) == symbptt.emit_numpy(XH)
    assert symbptt.emit_numpy(derivation, unrolled=True) == symbptt.emit_numpy(XH, unrolled=True)


# -- printed from the derivation ---------------------------------------------------
def test_an_activation_defined_only_in_sympy_yields_correct_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(functions, "ACTIVATIONS", dict(functions.ACTIVATIONS))
    monkeypatch.setattr(functions, "_BY_LAMBDA", dict(functions._BY_LAMBDA))
    functions.register_activation("softplus", sp.log(1 + sp.exp(functions.z)))
    for notation in ("xh", "layered"):
        spec = ModelSpec(steps=3, hidden="softplus", notation=notation)
        for unrolled in (False, True):
            source = symbptt.emit_numpy(spec, unrolled=unrolled)
            assert "np.logaddexp(0, z" in source or "np.logaddexp(0, Z1" in source
            mod = symbptt.load_module(source)
            errors = finite_difference_errors(mod, random_problem(mod))
            assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize(
    ("output", "loss"),
    OUTPUT_LOSS_PAIRS,
)
def test_logits_of_plus_minus_1000_give_finite_losses_and_gradients(output: str, loss: str) -> None:
    spec = ModelSpec(steps=3, output=output, loss=loss, notation="uvw")
    for unrolled in (False, True):
        mod = module_for(spec, unrolled)
        p = random_problem(mod)
        p.params["b_y"][:, 0] = [1000.0, -1000.0, 1000.0]
        if loss == "cross_entropy":
            p.Y[:] = np.array([0.0, 1.0, 0.0])
        value, gradients, state = mod.loss_and_all_gradients(*p.args())
        assert np.isfinite(value)
        assert all(np.isfinite(g).all() for g in [*gradients.values(), *state.values()])
        assert value > 900 if loss != "squared_error" or output == "identity" else True


def _exact_loss_and_output_bias_gradient(
    spec: ModelSpec, p: Any, logits_bias: np.ndarray
) -> tuple[float, np.ndarray]:
    """The loss and d loss / d b_y by sympy.diff of the explicit unrolled loss.

    The arrays' values enter as exact rationals and the expressions are evaluated
    by mpmath with 1,200 digits: 1 - sigmoid(1000) = exp(-1000) survives the
    subtraction (SymPy's evalf at fixed precision gives log(0) or noise there).
    """
    symbols = sp.symbols(f"b0:{len(logits_bias)}", real=True)

    def exact(array: np.ndarray) -> sp.Matrix:
        return sp.Matrix(array.astype(np.float64).tolist()).applyfunc(
            lambda v: sp.Rational(float(v))
        )

    values: dict[str, Any] = {name: exact(value) for name, value in p.params.items()}
    values["b_y"] = sp.Matrix(symbols)
    values["x"] = [exact(x.T) for x in p.X]
    values["y"] = [exact(target.T) for target in p.Y]
    loss = verify.scalar_loss(spec, values)
    exprs = [loss, *(sp.diff(loss, b) for b in symbols)]
    evaluate = sp.lambdify(symbols, exprs, modules="mpmath")
    with mpmath.workdps(1200):
        value, *grads = evaluate(*(mpmath.mpf(float(v)) for v in logits_bias))
        return float(value), np.array([float(g) for g in grads])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("output", "loss"),
    OUTPUT_LOSS_PAIRS,
)
def test_saturated_logits_give_the_exact_loss_and_gradient(
    output: str, loss: str, dtype: Any
) -> None:
    """At logits of ±30, ±100 and ±1000 the module's loss and d/db_y equal the 50-digit values."""
    spec = ModelSpec(steps=2, n_in=2, n_hidden=2, n_out=3, batch=2, output=output, loss=loss)
    mod = module_for(spec)
    for size in (30.0, 100.0, 1000.0):
        # a logit of that size is known to within a few ulps of it, no better
        tolerance = 1e-12 if dtype == np.float64 else 8 * size * float(np.finfo(dtype).eps)
        p = random_problem(mod, dtype=dtype, initial_state=False)
        logits_bias = np.array([size, -size, size], dtype=dtype)
        p.params["b_y"][:, 0] = logits_bias
        if loss == "cross_entropy":
            p.Y[:] = np.array([0.0, 1.0, 0.0], dtype=dtype)
        value, gradients = mod.loss_and_gradients(*p.args())
        exact_value, expected = _exact_loss_and_output_bias_gradient(spec, p, logits_bias)
        assert gradients["b_y"].dtype == dtype
        assert float(value) == pytest.approx(exact_value, rel=tolerance), (size, dtype)
        got = gradients["b_y"][:, 0].astype(np.float64)
        assert np.allclose(got, expected, rtol=tolerance, atol=tolerance), (size, got, expected)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 6])
def test_rolled_and_unrolled_agree(steps: int) -> None:
    specs = [
        ModelSpec(steps=steps, notation="xh", time_reduction="mean"),
        ModelSpec(steps=steps, notation="layered", mode="many_to_one", hidden="relu"),
        ModelSpec(steps=steps, notation="aa", output="sigmoid", loss="binary_cross_entropy"),
        ModelSpec(steps=steps, notation="uvw", output="softmax", loss="squared_error", bias=False),
    ]
    for spec in specs:
        rolled, unrolled = module_for(spec), module_for(spec, True)
        p = random_problem(rolled)
        a, b = rolled.loss_and_all_gradients(*p.args()), unrolled.loss_and_all_gradients(*p.args())
        assert a[0] == pytest.approx(b[0], rel=1e-12)
        for name in a[1]:
            assert relative_error(a[1][name], b[1][name]) < 1e-12, (spec, name)
        for name in ("dX", "dh0", "h_T"):
            assert relative_error(a[2][name], b[2][name]) < 1e-12, (spec, name)


# -- lines -------------------------------------------------------------------------
def test_a_helper_activation_is_written_in_place_one_call_a_line() -> None:
    z = sp.MatrixSymbol("z", *sp.symbols("n m", integer=True, positive=True))
    lowering = Lowering(SharedPrinter({}), lambda shape: "tmp")
    code = lowering.statement(functions.elementwise("sigmoid", z), "out")
    assert code.lines() == [
        "out[...] = z",
        "out /= 2",
        "np.tanh(out, out=out)",
        "out /= 2",
        "out += 1 / 2",
    ]


def test_a_long_sum_is_split_without_aliases() -> None:
    """Naming a part that prints no longer than its new name cannot shorten a line: the
    split names a run of terms, not one term again and again (``x_part2 = x_part1``)."""
    a, b, c = (sp.MatrixSymbol(n, 4, 4) for n in "abc")
    long = "a_quantity_with_a_long_name_t"
    names = {a: f"{long}_part3", b: f"{long}_part2", c: "b_i.T"}
    out = fit("a_quantity", a + b + c, SharedPrinter, names, indent=8)
    assert [(name, code) for name, code, _ in out] == [
        ("a_quantity_part1", f"{long}_part3 + {long}_part2"),
        ("a_quantity", "a_quantity_part1 + b_i.T"),
    ]


def test_long_lines_are_laid_out_as_ruff_format_lays_them_out() -> None:
    name = "x_long_name_here_abcdefghijklmno"
    line = f'{name} = _buffer(ws, "{name}", (T, m, 4 * n_hidden), dtype)'
    assert layout(line) == (f'{name} = _buffer(\n    ws, "{name}", (T, m, 4 * n_hidden), dtype\n)')
    call = (
        "    np.multiply(dc_t[:, None, :], blocks_abcdefghij[t, :, 1:4], "
        "out=deltas_abcdefghij[t, :, 1:4])"
    )
    assert layout(call) == (
        "    np.multiply(\n        dc_t[:, None, :],\n        blocks_abcdefghij[t, :, 1:4],\n"
        "        out=deltas_abcdefghij[t, :, 1:4],\n    )"
    )
    assert layout("short = 1") == "short = 1"
    # a list too long for its line inside a split call: its items one a line too
    items = [f"delta_{g}_2b[t - 1, ...]" for g in "ifog"]
    call = f"    operands = xp.concat([{', '.join(items)}], axis=1)"
    assert layout(call, 4) == "\n".join(
        ["    operands = xp.concat(", "        ["]
        + [f"            {item}," for item in items]
        + ["        ],", "        axis=1,", "    )"]
    )
    # a subscript that ends a binary expression is not split: the whole is parenthesized
    a, b = "inputs_W_1f[:, n_hidden : 2 * n_hidden]", "h_1f_previous_W[:, n_hidden : 2 * n_hidden]"
    assert layout(f"        f_1f_t_part2 = {a} + {b}", 8) == (
        f"        f_1f_t_part2 = (\n            {a}\n            + {b}\n        )"
    )


# -- the text ----------------------------------------------------------------------
def test_header_docstring_and_comments() -> None:
    source = symbptt.emit_numpy(XH)
    header = source.split('"""')[1]
    assert "do not edit" in header
    assert "Regenerate: symbptt derive --steps 3 --out DIR\n" in header
    assert f"Spec hash {XH.hash()}; SymPy {sp.__version__}" in header
    assert "z_t = W_xh @ x_t + W_hh @ h_(t-1) + b_h" in header
    assert "W_xh (n_hidden, n_in)" in header and "sum over time, mean over the batch" in header
    assert "Layout: column vectors" in header
    assert "# grad of: o_t = h_t @ W_hy.T + b_y.T" in source
    assert "# grad of: h_t = np.tanh(z_t)" in source
    assert "/tmp" not in source and str(ROOT) not in source
    unrolled = symbptt.emit_numpy(LAYERED, unrolled=True)
    assert "unrolled for T = 3 steps" in unrolled
    assert "Z1_1 = X_1 @ W_1 + H1_0 @ W_h1 + beta_1.T" in unrolled


def test_the_rolled_loop_holds_only_the_recurrence() -> None:
    source = symbptt.emit_numpy(XH)
    forward, backward = loops(source)
    assert "np.dot(h_prev, W_hh_T, out=" in forward and "np.tanh(z_t, out=h_t)" in forward
    assert "W_xh" not in forward and "W_hy" not in forward
    assert "np.dot(delta_next, W_hh, out=" in backward
    assert "W_xh" not in backward and "W_hy" not in backward and "dW" not in backward
    assert "np.dot(x_all, W_xh.T, out=z_all)" in source
    assert "dW_xh = delta_all.T @ x_all" in source


def loops(source: str) -> list[str]:
    """The statements inside each ``for`` loop of a rolled module (its header left out)."""
    out: list[str] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("    for "):
            i += 1
            continue
        header = ""
        while not (lines[i].endswith(":") and not lines[i].startswith("     ")):
            header += lines[i]
            i += 1  # the header, perhaps on several lines, ends with "):" or ":"
        header += lines[i]
        i += 1
        if "range(T" not in header and "[:T" not in header and "T - 1" not in header:
            continue  # a loop of the API (validation), not a time loop
        body = ""
        while i < len(lines) and (lines[i].startswith("        ") or not lines[i].strip()):
            if lines[i].strip() and not lines[i].strip().startswith("#"):
                body += lines[i].strip() + "\n"
            i += 1
        out.append(body)
    return out


def _spread() -> list[tuple[ModelSpec, bool]]:
    out = []
    for notation in CHOICES["notation"]:
        for mode in CHOICES["mode"]:
            for unrolled in (False, True):
                out.append((ModelSpec(steps=3, notation=notation, mode=mode), unrolled))
    pairs = [("sigmoid", "binary_cross_entropy"), ("softmax", "squared_error")]
    pairs += [("sigmoid", "squared_error"), ("relu", "squared_error")]
    for (output, loss), hidden in zip(pairs, ("sigmoid", "relu", "identity", "tanh"), strict=True):
        spec = ModelSpec(steps=2, output=output, loss=loss, hidden=hidden, notation="aa")
        out += [(spec, False), (spec, True)]
    return out


def _ruff() -> list[str]:
    """Skip without ruff, except under CI (which installs the dev extras): there, fail."""
    if importlib.util.find_spec("ruff") is None:
        if os.environ.get("CI"):
            pytest.fail("ruff is missing under CI; install the dev extras (pip install -e .[dev])")
        pytest.skip("ruff is not installed")
    return [sys.executable, "-m", "ruff"]


def test_generated_code_is_ruff_clean(tmp_path: Path) -> None:
    ruff = _ruff()
    for i, (spec, unrolled) in enumerate(_spread()):
        (tmp_path / f"module_{i}.py").write_text(symbptt.emit_numpy(spec, unrolled=unrolled))
    for command in (["check", "--isolated"], ["format", "--isolated", "--check"]):
        result = subprocess.run([*ruff, *command, str(tmp_path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_same_spec_gives_the_same_bytes_under_any_hash_seed() -> None:
    script = (
        "import hashlib, symbptt\n"
        "from symbptt import ModelSpec\n"
        "h = hashlib.sha256()\n"
        "for spec in [ModelSpec(steps=3), ModelSpec(steps=2, notation='layered',"
        " mode='many_to_one', output='softmax', loss='squared_error', hidden='relu')]:\n"
        "    for unrolled in (False, True):\n"
        "        h.update(symbptt.emit_numpy(spec, unrolled=unrolled).encode())\n"
        "print(h.hexdigest())\n"
    )
    digests = set()
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT
        )
        assert result.returncode == 0, result.stderr
        digests.add(result.stdout.strip())
    assert len(digests) == 1


def test_load_module_tracebacks_show_the_generated_lines() -> None:
    mod = symbptt.load_module("def boom():\n    raise RuntimeError('from generated code')\n")
    assert mod.__file__ is not None and mod.__file__.startswith("<symbptt-generated>/")
    for clear in (False, True):
        if clear:  # the loader serves the lines again once linecache forgot them
            linecache.clearcache()
        with pytest.raises(RuntimeError) as info:
            mod.boom()
        frames = traceback.extract_tb(info.value.__traceback__)
        assert frames[-1].filename == mod.__file__
        assert frames[-1].line == "raise RuntimeError('from generated code')"
    assert "raise RuntimeError" in inspect.getsource(mod.boom)


def test_a_generated_function_s_traceback_shows_its_line() -> None:
    mod = module_for(XH)
    p = random_problem(mod)
    with pytest.raises(KeyError) as info:  # a cache without its arrays, past the validation
        mod._backward(p.params, {"T": 3}, p.Y, {}, False)
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert frame.filename == mod.__file__ and frame.name == "_backward"
    assert frame.line is not None and frame.line.startswith(("m = cache[", "T = cache["))


def test_load_module_leaves_nothing_in_the_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = set(os.listdir(tempfile.gettempdir()))
    first = symbptt.load_module("VALUE = 1\n")
    second = symbptt.load_module("VALUE = 2\n")
    module_for.cache_clear()
    assert module_for(XH).loss(*random_problem(module_for(XH)).args()) > 0
    assert (first.VALUE, second.VALUE) == (1, 2)
    assert first.__file__ != second.__file__
    assert set(os.listdir(tempfile.gettempdir())) == before == set()
    again = symbptt.load_module("VALUE = 1\n")  # the same source: the same name
    assert again.__file__ == first.__file__


def test_unrolled_emission_is_not_cubic_in_the_steps() -> None:
    # Looking up adjoints and primals by scanning every symbol made T = 100
    # take ~25 s and T = 1000 hang; with indexes, T = 300 takes a few seconds.
    source = symbptt.emit_numpy(ModelSpec(steps=300), unrolled=True)
    assert "STEPS = 300" in source


@pytest.mark.parametrize("unrolled", [False, True])
@pytest.mark.parametrize("spec", [XH, LAYERED], ids=["many_to_many", "many_to_one"])
def test_cross_entropy_targets_must_sum_to_one_over_the_units(
    spec: ModelSpec, unrolled: bool
) -> None:
    # The generated gradient softmax - Y holds only for targets that sum to 1.
    mod = module_for(spec, unrolled)
    assert "Targets: cross_entropy needs each target to sum to 1" in (mod.__doc__ or "")
    for dtype, slack, off in ((np.float64, 1e-9, 1e-4), (np.float32, 1e-5, 1e-2)):
        p = random_problem(mod, dtype=dtype)
        params, X, Y, h0 = p.args()
        np.testing.assert_allclose(Y.sum(axis=-1), 1, rtol=0, atol=slack)
        mod.loss_and_gradients(params, X, Y, h0)  # distributions pass
        one_hot = np.zeros_like(Y)
        one_hot[..., 0] = 1
        mod.loss_and_gradients(params, X, one_hot, h0)
        nearly = Y.copy()
        nearly[..., 0] += slack  # within the dtype's tolerance
        mod.loss_and_gradients(params, X, nearly, h0)
        message = "Y: cross_entropy targets must sum to 1 over the n_out units"
        for bad, sums in ((Y * 2, "2.0 to 2.0"), (Y + off, ""), (np.zeros_like(Y), "0.0 to 0.0")):
            for call in (mod.loss, mod.loss_and_gradients, mod.loss_and_all_gradients):
                with pytest.raises(mod.ArgumentError, match=message) as info:
                    call(params, X, bad, h0)
                assert f"(one-hot or probabilities); got sums from {sums}" in str(info.value)
        with pytest.raises(ValueError, match="Y: expected finite values, got nan"):
            mod.loss(params, X, np.full_like(Y, np.nan), h0)
        mod.forward(params, X, h0)  # no targets, no check


def test_the_one_product_of_the_targets_misses_no_bad_row() -> None:
    # The usual case sums the targets with one matrix-vector product; a row off by more
    # than the tolerance, a NaN or an infinity anywhere (here the last row, in a Y of
    # many rows, and a non-contiguous view) still fails, and the message's sums are
    # Y.sum(axis=-1)'s.
    mod = module_for(XH)
    p = random_problem(mod, rng=6)
    params, X, _, h0 = p.args()
    n_out = params["W_hy"].shape[0]
    rng = np.random.default_rng(6)
    for dtype, off in ((np.float64, 2e-6), (np.float32, 2e-3)):
        params_d = {k: v.astype(dtype) for k, v in params.items()}
        X_d, h0_d = X.astype(dtype), h0.astype(dtype)
        wide = rng.random((X.shape[0], X.shape[1], 2 * n_out)).astype(dtype)
        wide /= wide[..., ::2].sum(axis=-1, keepdims=True)
        Y = wide[..., ::2]  # every other column: a view, not contiguous
        assert not Y.flags.c_contiguous
        mod.loss_and_gradients(params_d, X_d, Y, h0_d)
        for bad in (1 + off, np.nan, np.inf, -np.inf):
            Y_bad = Y.copy()
            if bad == 1 + off:
                Y_bad[-1, -1] *= bad
            else:
                Y_bad[-1, -1, -1] = bad
            with pytest.raises(mod.ArgumentError) as info:
                mod.loss_and_gradients(params_d, X_d, Y_bad, h0_d)
            if bad == 1 + off:
                sums = Y_bad.sum(axis=-1)
                expected = f"got sums from {np.min(sums)} to {np.max(sums)}"
                assert str(info.value).endswith(expected)
            else:
                assert str(info.value).startswith(f"Y: expected finite values, got {bad}")


def test_losses_without_distribution_targets_accept_any_targets() -> None:
    spec = ModelSpec(steps=2, output="sigmoid", loss="squared_error")
    assert not functions.LOSSES[spec.loss].distribution
    source = symbptt.emit_numpy(spec)
    assert "must sum to 1" not in source and "Targets:" not in source
    mod = module_for(spec)
    p = random_problem(mod)
    mod.loss_and_gradients(p.params, p.X, p.Y * 5, p.h0)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "array_api"])
def test_every_module_level_name_of_a_printed_module_is_bound_once(backend: str) -> None:
    """The shared templates (_module_constants, _kernels) and each backend's own lay out
    disjoint parts: no constant or function of a module is defined twice."""
    import ast

    pytest.importorskip({"array_api": "array_api_compat"}.get(backend, backend))
    spec = ModelSpec(steps=3, cell="lstm")
    for unrolled in (False, True):
        tree = ast.parse(symbptt.emit(spec, backend=backend, unrolled=unrolled))
        names = []
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.append(node.name)
            elif isinstance(node, ast.Assign):
                names += [
                    n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)
                ]
        twice = sorted({name for name in names if names.count(name) > 1})
        assert not twice, (backend, unrolled, twice)
