"""symbptt.check for every cell: LSTM, GRU (column and row layouts) and a user's cell file.

The oracles: the derivation (its correct formula printed in the expression
language must check EQUAL, and each classic hand-derivation slip must not),
and, for the hand-written NumPy LSTM, central finite differences of its own
loss.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from symbptt import ExpressionError, ModelSpec, SpecError, derive
from symbptt.check import check, correct_formula, names, names_text, namespace
from symbptt.expr.exprlang import parse
from symbptt.testing import assert_gradient

# A user's cell: the minimal gated unit (Zhou et al. 2016), one gate f.
MGU_CELL = """
name = "mgu"
description = "minimal gated unit: one forget gate"
reference = "G.-B. Zhou, J. Wu, C.-L. Zhang & Z.-H. Zhou, Minimal Gated Unit (2016)"
readout = "h"
equations = [
    "f[t] = sigmoid(W_xf @ x[t] + W_hf @ h[t-1] + b_f)",
    "g[t] = tanh(W_xh @ x[t] + W_hh @ (f[t] * h[t-1]) + b_h)",
    "h[t] = (1 - f[t]) * h[t-1] + f[t] * g[t]",
]

[inputs]
x = "n_in"

[states]
h = "n_hidden"

[parameters]
W_xf = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_hf = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b_f = { shape = ["n_hidden", 1], kind = "bias" }
W_xh = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_hh = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b_h = { shape = ["n_hidden", 1], kind = "bias" }

[notations.xh]
layout = "column"

[notations.xh.names]
W_xf = { ascii = "W_xf", latex = "W_{xf}" }
W_hf = { ascii = "W_hf", latex = "W_{hf}" }
b_f = { ascii = "b_f", latex = "b_f" }
W_xh = { ascii = "W_xh", latex = "W_{xh}" }
W_hh = { ascii = "W_hh", latex = "W_{hh}" }
b_h = { ascii = "b_h", latex = "b_h" }
W_out = { ascii = "W_hy", latex = "W_{hy}" }
b_out = { ascii = "b_y", latex = "b_y" }
x = { ascii = "x", latex = "x" }
f = { ascii = "f", latex = "f" }
g = { ascii = "g", latex = "g" }
h = { ascii = "h", latex = "h" }
logits = { ascii = "s", latex = "s" }
y_hat = { ascii = "y_hat", latex = '\\hat{y}' }
y = { ascii = "y", latex = "y" }
"""


@pytest.fixture(scope="module")
def mgu_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cells") / "mgu.toml"
    path.write_text(MGU_CELL, encoding="utf-8")
    return path


def _spec(cell: str, notation: str, mgu: Path, **fields: Any) -> ModelSpec:
    return ModelSpec(cell=str(mgu) if cell == "mgu" else cell, notation=notation, **fields)


CASES = [("lstm", "xh"), ("lstm", "layered"), ("gru", "xh"), ("gru", "layered"), ("mgu", "xh")]
IDS = [f"{cell}-{notation}" for cell, notation in CASES]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: The shipped example cell files (PyTorch's GRU, a peephole LSTM with vector weights) too.
ALL_CASES = CASES + [(str(path), "xh") for path in sorted(EXAMPLES.glob("*.toml"))]
ALL_IDS = IDS + [Path(cell).stem for cell, _ in ALL_CASES[len(CASES) :]]


# ------------------------------------------------------------------------------ names
@pytest.mark.parametrize(("cell", "notation"), ALL_CASES, ids=ALL_IDS)
def test_names_list_every_quantity_and_adjoint_and_parse(
    cell: str, notation: str, mgu_path: Path
) -> None:
    spec = _spec(cell, notation, mgu_path, steps=3, initial_state="input")
    d = derive(spec)
    nota = d.graph.notation
    listed = {info.name: info for info in names(spec)}
    for entry in nota.params:
        assert entry.ascii in listed
    for entry in nota.series:
        assert f"{entry.ascii}[t]" in listed
    for state in spec.model.states:
        assert nota.name_of(state.key).initial in listed
    # every adjoint the derivation names is a name of the language
    roles = {role for role, step in d.graph.symbols.meta.values() if isinstance(step, int)}
    adjoints = {r for r in roles if r.startswith(("adjoint_", "pre_adjoint_"))}
    assert len([i for i in listed.values() if i.kind == "adjoint"]) == len(adjoints)
    ns = namespace(d)
    for name, info in listed.items():
        if info.kind in ("parameter", "initial state", "series", "adjoint"):
            parse(name.replace("[t]", "[2]"), ns)
    assert names_text(spec).startswith("expression language names (")
    assert f"{notation}):" in names_text(spec).splitlines()[0]


def test_a_name_for_two_things_is_refused(tmp_path: Path) -> None:
    # the candidate g written "m": the batch size has the same name
    path = tmp_path / "clash.toml"
    path.write_text(MGU_CELL.replace('g = { ascii = "g"', 'g = { ascii = "m"'), encoding="utf-8")
    spec = ModelSpec(cell=str(path), steps=2)
    with pytest.raises(SpecError, match=r"'m' stands for the series m and for a size"):
        check(spec, "W_hf", "W_hf")
    with pytest.raises(SpecError, match="another name in the notation"):
        names(spec)
    # g written "dh" works once the adjoint of h is named otherwise in the notation
    h_entry = 'h = { ascii = "h", latex = "h" }'
    renamed = MGU_CELL.replace('g = { ascii = "g"', 'g = { ascii = "dh"').replace(
        h_entry, h_entry[:-2] + ', adjoint = "gh" }'
    )
    path = tmp_path / "renamed.toml"
    path.write_text(renamed, encoding="utf-8")
    spec = ModelSpec(cell=str(path), steps=2)
    assert {"dh[t]", "gh[t]"} <= {info.name for info in names(spec)}
    assert check(spec, "W_hf", correct_formula(spec, "W_hf").gradient, points=2).ok


def test_lstm_names_and_steps_outside_the_model() -> None:
    spec = ModelSpec(cell="lstm", steps=3)
    shown = {info.name for info in names(spec)}
    for name in ("i[t]", "f[t]", "o[t]", "g[t]", "c[t]", "h[t]", "dh[t]", "dc[t]"):
        assert name in shown
    assert {"delta_i[t]", "delta_f[t]", "delta_o[t]", "delta_g[t]", "h_0", "c_0"} <= shown
    ns = namespace(derive(spec))
    assert parse("c[0]", ns) == parse("c_0", ns)
    assert parse("dc[4] * f[4]", ns).is_ZeroMatrix  # the carry vanishes after the last step
    for text, message in [("c[-1]", "outside the model"), ("dc[5]", "outside the model")]:
        with pytest.raises(ExpressionError, match=message):
            parse(text, ns)
    with pytest.raises(ExpressionError, match=r"f\[4\] is outside the model"):
        check(spec, "b_f", "sum_t(f[t+1] @ ones(m, 1))")


# ---------------------------------------------------------------------- correct formula
@pytest.mark.parametrize(("cell", "notation"), ALL_CASES, ids=ALL_IDS)
def test_correct_formula_of_every_parameter_is_equal(
    cell: str, notation: str, mgu_path: Path
) -> None:
    spec = _spec(cell, notation, mgu_path, steps=3)
    for name in derive(spec).gradients:
        formula = correct_formula(spec, name)
        result = check(spec, name, formula.gradient, points=3)
        assert result.ok, result.explain()
        assert formula.gradient in result.explain()


def test_correct_formula_of_the_initial_states_and_many_to_one() -> None:
    spec = ModelSpec(cell="lstm", steps=3, initial_state="input", mode="many_to_one")
    d = derive(spec)
    assert {"h_0", "c_0"} <= set(d.gradients)
    for name in d.gradients:
        result = check(spec, name, correct_formula(spec, name).gradient, points=3)
        assert result.ok, (name, result.explain())


# -------------------------------------------------------------------------- mistakes
def _words(spec: ModelSpec) -> dict[str, str]:
    """Placeholders of the formulas below: each key's name, its adjoint and δ."""
    nota = spec.model.notations[spec.notation]
    out = {"m": "m"}
    for entry in nota.series:
        out[entry.key] = entry.ascii
        out["d" + entry.key] = entry.adjoint_ascii
        out["delta_" + entry.key] = "delta_" + entry.ascii
    return out


def _outer(spec: ModelSpec, left: str, right: str) -> str:
    """``left @ right.T`` in the notation's layout (row: ``right.T @ left``)."""
    column = spec.model.notations[spec.notation].layout == "column"
    return f"({left}) @ {right}.T" if column else f"{right}.T @ ({left})"


def _bias(spec: ModelSpec, term: str) -> str:
    column = spec.model.notations[spec.notation].layout == "column"
    return f"({term}) @ ones(m, 1)" if column else f"(ones(1, m) @ ({term})).T"


#: Per cell: (bias, the same bias's δ with the state's carry forgotten, the carried
#: adjoint's own expression), the ungated adjoint of a sigmoid gate, two biases of
#: different gates, and a weight reading h[t-1].
SLIPS: dict[str, dict[str, Any]] = {
    "lstm": {
        # delta_i = dc * g * i(1 - i), with dc lacking + dc[t+1] * f[t+1]
        "carry": ("b_i", "(({dc}[t] - {dc}[t+1] * {f}[t+1]) * {g}[t]) * {i}[t] * (1 - {i}[t])"),
        "sigmoid": ("b_i", "{di}[t]"),
        "gate": ("b_f", "{delta_i}[t]"),
        "off_by_one": ("W_hi", "{delta_i}[t]", "{h}[t]"),
    },
    "gru": {
        # delta_z = dh * (h[t-1] - g) * z(1 - z), with dh lacking + dh[t+1] * z[t+1]
        "carry": (
            "b_z",
            "(({dh}[t] - {dh}[t+1] * {z}[t+1]) * ({h}[t-1] - {g}[t])) * {z}[t] * (1 - {z}[t])",
        ),
        "sigmoid": ("b_z", "{dz}[t]"),
        "gate": ("b_r", "{delta_z}[t]"),
        "off_by_one": ("W_hz", "{delta_z}[t]", "{h}[t]"),
    },
    "mgu": {
        # delta_g = dh * f * (1 - g²), with dh lacking + dh[t+1] * (1 - f[t+1])
        "carry": (
            "b_h",
            "(({dh}[t] - {dh}[t+1] * (1 - {f}[t+1])) * {f}[t]) * (1 - {g}[t]**2)",
        ),
        "sigmoid": ("b_f", "{df}[t]"),
        "gate": ("b_f", "{delta_g}[t]"),
        "off_by_one": ("W_hf", "{delta_f}[t]", "{h}[t]"),
    },
}


@pytest.mark.parametrize(("cell", "notation"), CASES, ids=IDS)
def test_classic_slips_are_not_equal_and_localised(
    cell: str, notation: str, mgu_path: Path
) -> None:
    spec = _spec(cell, notation, mgu_path, steps=3)
    words = _words(spec)
    steps = derive(spec).graph.steps
    slips = SLIPS[cell]

    def run(wrt: str, text: str) -> Any:
        result = check(spec, wrt, text.format(**words), points=4)
        assert not result.ok, result.explain()
        assert result.counterexample is not None
        return result

    # a forgotten carry: every step's term is wrong but the last (nothing comes after it)
    wrt, delta = slips["carry"]
    result = run(wrt, f"sum_t({_bias(spec, delta)})")
    assert result.differing_terms == steps[:-1], result.explain()
    assert result.loss_steps == steps[1:], result.explain()
    # the true dc[t] (or dh[t]) without its carry, in the formula the gradient reads
    assert result.mistake_names == ("dropped_carry",), result.explain()
    assert "the recursion behind it is right" in result.explain()
    # the sigmoid's derivative left out, a wrong gate's bias: wrong at every step
    for kind, name in (("sigmoid", "no_derivative"), ("gate", "other_gate")):
        wrt, delta = slips[kind]
        result = run(wrt, f"sum_t({_bias(spec, delta)})")
        assert result.differing_terms == steps, (kind, result.explain())
        assert result.mistake_names == (name,), (kind, result.explain())
    # h[t] where h[t-1] belongs: named, as the correct formula with its steps moved
    wrt, delta, h = slips["off_by_one"]
    result = run(wrt, f"sum_t({_outer(spec, delta, h)})")
    assert result.differing_terms == steps, result.explain()
    assert result.mistake_names == ("off_by_one",), result.explain()
    assert "off-by-one step" in result.explain()
    # the carried adjoint, as the derivation names it, makes the first slip right
    wrt, delta = slips["carry"]
    carried = "dc" if cell == "lstm" else "dh"
    fixed = delta.replace(f"{{{carried}}}[t+1] *", f"0 * {{{carried}}}[t+1] *")
    assert_gradient(spec, wrt, f"sum_t({_bias(spec, fixed)})".format(**words), points=3)


def test_the_carry_written_inline_is_equal() -> None:
    """dc[t] = ... + dc[t+1] * f[t+1] may be written out: at t = T it vanishes with dc[T+1]."""
    spec = ModelSpec(cell="lstm", steps=3)
    dh = (
        "W_hy.T @ ((y_hat[t] - y[t]) / m) + W_hi.T @ delta_i[t+1] + W_hf.T @ delta_f[t+1]"
        " + W_ho.T @ delta_o[t+1] + W_hc.T @ delta_g[t+1]"
    )
    dc = f"({dh}) * o[t] * (1 - tanh(c[t])**2) + dc[t+1] * f[t+1]"
    result = check(spec, "W_xi", f"sum_t((({dc}) * g[t] * i[t] * (1 - i[t])) @ x[t].T)", points=4)
    assert result.ok, result.explain()


# ---------------------------------------------------------------- a hand-written LSTM
def _sigmoid(a: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-a)))


GATES = ("i", "f", "o", "c")  # parameter suffixes: W_x?, W_h?, b_? (c: the candidate g)


def numpy_lstm(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    Y: np.ndarray,
    h0: np.ndarray | None = None,
    c0: np.ndarray | None = None,
    *,
    carry: bool = True,
    carry_h: bool = True,
    forget_factor: str = "derivative",
) -> tuple[float, dict[str, np.ndarray]]:
    """A CS231n-style LSTM forward and backward, column layout, softmax + cross-entropy.

    X is (T, m, n_in), Y (T, m, n_out) one-hot or soft; h0, c0 are (m, n_h) or None.
    The loss is summed over time and averaged over the batch.  ``carry=False`` is
    the classic bug: dc_next is never carried back through the forget gate;
    ``carry_h=False`` never carries dh_next either.  ``forget_factor="sigmoid"``
    multiplies the forget gate's error by sigmoid(f) where f * (1 - f) belongs.
    Both bugs are CaptainE/RNN-LSTM-in-numpy issue #1 (its notebook's backward
    pass: ``df = sigmoid(f[t]) * df``, and dh_next / dC_next never updated).
    """
    T, m, _ = X.shape
    n_h = params["W_hi"].shape[0]
    h = np.zeros((n_h, m)) if h0 is None else h0.T.copy()
    c = np.zeros((n_h, m)) if c0 is None else c0.T.copy()
    cache = []
    loss = 0.0
    for t in range(T):
        x = X[t].T
        a = {k: params[f"W_x{k}"] @ x + params[f"W_h{k}"] @ h + params[f"b_{k}"] for k in GATES}
        i, f, o, g = _sigmoid(a["i"]), _sigmoid(a["f"]), _sigmoid(a["o"]), np.tanh(a["c"])
        c_next = f * c + i * g
        h_next = o * np.tanh(c_next)
        s = params["W_hy"] @ h_next + params["b_y"]
        p = np.exp(s - s.max(axis=0))
        p /= p.sum(axis=0)
        loss += float(-np.sum(Y[t].T * np.log(p))) / m
        cache.append((x, h, c, i, f, o, g, c_next, h_next, p))
        h, c = h_next, c_next
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    dh_next = np.zeros((n_h, m))
    dc_next = np.zeros((n_h, m))
    for t in reversed(range(T)):
        x, h_prev, c_prev, i, f, o, g, c_t, h_t, p = cache[t]
        ds = (p - Y[t].T) / m
        grads["W_hy"] += ds @ h_t.T
        grads["b_y"] += ds.sum(axis=1, keepdims=True)
        dh = params["W_hy"].T @ ds + dh_next
        tc = np.tanh(c_t)
        dc = dh * o * (1 - tc**2) + (dc_next if carry else 0.0)
        da = {
            "i": dc * g * i * (1 - i),
            "f": dc * c_prev * (f * (1 - f) if forget_factor == "derivative" else _sigmoid(f)),
            "o": dh * tc * o * (1 - o),
            "c": dc * i * (1 - g**2),
        }
        dh_next = np.zeros((n_h, m))
        for k in GATES:
            grads[f"W_x{k}"] += da[k] @ x.T
            grads[f"W_h{k}"] += da[k] @ h_prev.T
            grads[f"b_{k}"] += da[k].sum(axis=1, keepdims=True)
            dh_next += params[f"W_h{k}"].T @ da[k]
        if not carry_h:
            dh_next = np.zeros((n_h, m))
        dc_next = dc * f
    grads["h_0"] = dh_next
    grads["c_0"] = dc_next
    return loss, grads


def _finite_differences(
    fn: Callable[..., tuple[float, dict[str, np.ndarray]]],
    params: dict[str, np.ndarray],
    args: tuple[Any, ...],
    eps: float = 1e-6,
) -> dict[str, np.ndarray]:
    out = {}
    for name, value in params.items():
        grad = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            saved = value[index]
            value[index] = saved + eps
            up = fn(params, *args)[0]
            value[index] = saved - eps
            down = fn(params, *args)[0]
            value[index] = saved
            grad[index] = (up - down) / (2 * eps)
        out[name] = grad
    return out


def test_hand_written_numpy_lstm_is_equal_and_its_bug_is_not() -> None:
    spec = ModelSpec(cell="lstm", steps=4, initial_state="input")
    rng = np.random.default_rng(0)
    n_in, n_h, n_out, m, T = 3, 4, 5, 2, 4
    params = {}
    for k in GATES:
        params[f"W_x{k}"] = rng.normal(scale=0.5, size=(n_h, n_in))
        params[f"W_h{k}"] = rng.normal(scale=0.5, size=(n_h, n_h))
        params[f"b_{k}"] = rng.normal(scale=0.5, size=(n_h, 1))
    params["W_hy"] = rng.normal(scale=0.5, size=(n_out, n_h))
    params["b_y"] = rng.normal(scale=0.5, size=(n_out, 1))
    X = rng.normal(size=(T, m, n_in))
    Y = np.eye(n_out)[rng.integers(0, n_out, size=(T, m))]
    h0, c0 = rng.normal(size=(m, n_h)), rng.normal(size=(m, n_h))
    # the hand-written backward agrees with finite differences of its own loss
    _, grads = numpy_lstm(params, X, Y, h0, c0)
    numeric = _finite_differences(numpy_lstm, params, (X, Y, h0, c0))
    for name, value in numeric.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-5, atol=1e-8, err_msg=name)
    # ... and the checker agrees with the derivation, for every gradient, h_0 and c_0 too
    for name in derive(spec).gradients:
        result = check(spec, name, numpy_lstm, points=4)
        assert result.ok, (name, result.explain())

    def forgot_dc_next(p: Any, X: Any, Y: Any, h0: Any = None, c0: Any = None) -> Any:
        return numpy_lstm(p, X, Y, h0, c0, carry=False)

    np.testing.assert_raises(
        AssertionError,
        np.testing.assert_allclose,
        forgot_dc_next(params, X, Y, h0, c0)[1]["W_hf"],
        numeric["W_hf"],
        rtol=1e-5,
    )
    result = check(spec, "W_hf", forgot_dc_next, points=4)
    assert not result.ok and result.counterexample is not None
    steps = derive(spec).graph.steps
    assert result.loss_steps == steps[1:], result.explain()  # the first loss has no carry
    assert result.mistake_names == ("dropped_carry",), result.explain()
    assert "dc[t] lacks dc[t+1] * f[t+1]" in result.explain()
    # the gradient of the output layer does not see the bug
    assert check(spec, "W_hy", forgot_dc_next, points=4).ok

    # localised: right on the first step alone; with two, dc[1] lacks dc[2] * f[2], which
    # the i, f and g gates read and the o gate does not
    assert result.first_step == 2, result.explain()
    assert result.gates_right == ("o", "the output layer"), result.explain()
    assert result.gates_wrong == ("i", "f", "g"), result.explain()
    assert "first differs at step 2 (of 4); gates right: o, the output layer; wrong: i, f, g" in (
        result.explain()
    )

    def only_w_hf(p: Any, X: Any, Y: Any, h0: Any = None, c0: Any = None) -> Any:
        return forgot_dc_next(p, X, Y, h0, c0)[1]["W_hf"]

    result = check(spec, "W_hf", only_w_hf, points=4)  # one array: the step, no gates
    assert (result.first_step, result.gates_wrong) == (2, None), result.explain()

    # CaptainE/RNN-LSTM-in-numpy issue #1: neither dh_next nor dC_next carried back
    def forgot_both(p: Any, X: Any, Y: Any, h0: Any = None, c0: Any = None) -> Any:
        return numpy_lstm(p, X, Y, h0, c0, carry=False, carry_h=False)

    result = check(spec, "W_xf", forgot_both, points=4)
    assert not result.ok
    assert result.mistake_names == ("dropped_carry", "dropped_carry"), result.explain()
    assert {m.place for m in result.mistakes} == {"dh[t]", "dc[t]"}, result.explain()

    # ... and its forget gate: df = sigmoid(f[t]) * df, the activation for its derivative
    def sigmoid_for_derivative(p: Any, X: Any, Y: Any, h0: Any = None, c0: Any = None) -> Any:
        return numpy_lstm(p, X, Y, h0, c0, forget_factor="sigmoid")

    result = check(spec, "b_f", sigmoid_for_derivative, points=4)
    assert result.mistake_names == ("activation_for_derivative",), result.explain()
    assert "sigmoid(f[t]) where (1 - f[t]) * f[t] belongs" in result.explain()
    assert check(spec, "W_hy", sigmoid_for_derivative, points=4).ok  # the output layer: right


def test_a_batch_major_lstm_with_integer_labels_and_1d_biases() -> None:
    """CS231n's and d2l's convention: X (N, T, D), labels (N, T), biases (n,); gates localised."""
    spec = ModelSpec(cell="lstm", steps=3, initial_state="input")

    def batch_major(p: Any, X: Any, y: Any, h0: Any = None, c0: Any = None, **kw: Any) -> Any:
        assert X.ndim == 3 and y.ndim == 2 and y.dtype.kind == "i", (X.shape, y.dtype)
        assert all(p[f"b_{k}"].ndim == 1 for k in GATES) and p["b_y"].ndim == 1
        columns = {k: (v[:, None] if v.ndim == 1 else v) for k, v in p.items()}
        n_out = columns["W_hy"].shape[0]
        Y = np.eye(n_out)[y.T]  # (T, N, n_out) one-hot
        loss, grads = numpy_lstm(columns, np.swapaxes(X, 0, 1), Y, h0, c0, **kw)
        return loss, {k: (g[:, 0] if k.startswith("b_") else g) for k, g in grads.items()}

    for name in ("W_xf", "b_f", "b_y", "c_0"):
        result = check(spec, name, batch_major, points=3, convention="batch_major")
        assert result.ok, result.explain()
    # time-major arrays given to a batch-major function: reported, not a traceback
    result = check(spec, "W_xf", batch_major, points=3)
    assert not result.ok and "the callable failed: AssertionError" in result.explain()

    def forget_bug(p: Any, X: Any, y: Any, h0: Any = None, c0: Any = None) -> Any:
        return batch_major(p, X, y, h0, c0, forget_factor="sigmoid")

    result = check(spec, "W_hf", forget_bug, points=3, convention="batch_major")
    assert "activation_for_derivative" in result.mistake_names, result.explain()
    # with one step only the forget gate is wrong; it feeds dh[t-1], so with all three
    # steps every gate is, the output layer right
    assert result.first_step == 1 and result.gates_wrong == ("f",), result.explain()
    assert (
        "first differs at step 1 (of 3); gates right: i, o, g, the output layer; wrong: f"
        in result.explain()
    )
    assert "with all 3 steps: gates right: the output layer; wrong: i, f, o, g" in result.explain()
    with pytest.raises(ValueError, match="convention"):
        check(spec, "W_hf", forget_bug, convention="rows")


# ------------------------------------------------------------------ other candidates
def test_sympy_candidates_of_a_gated_cell() -> None:
    spec = ModelSpec(cell="gru", steps=2)
    d = derive(spec)
    for name in d.gradients:
        assert check(spec, name, d.gradients[name], points=3).ok, name
    wrong = check(spec, "W_hz", -d.gradients["W_hz"], points=3)
    assert wrong.mistake_names == ("sign",), wrong.explain()
    assert wrong.candidate.startswith("-delta_z[")


def test_names_of_a_cell_notation_and_bad_names() -> None:
    spec = ModelSpec(cell="lstm", notation="layered")
    nota = spec.model.notations["layered"]
    assert names(nota) == names(spec)
    shown = {info.name for info in names(nota)}
    assert {"H[t]", "C[t]", "C_tilde[t]", "dC[t]", "delta_C_tilde[t]", "H_0", "C_0"} <= shown
    with pytest.raises(ValueError, match="unknown notation"):
        names("lstm")
    with pytest.raises(ExpressionError, match="unknown name 'delta'"):
        check(ModelSpec(cell="lstm", steps=2), "W_hf", "sum_t(delta[t] @ h[t-1].T)")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_check_works_at_the_most_steps(cell: str) -> None:
    from symbptt.model.spec import MAX_CHECK_STEPS

    fields: dict[str, Any] = {"cell": cell, "mode": "many_to_one", "initial_state": "input"}
    spec = ModelSpec(steps=MAX_CHECK_STEPS, **fields)
    for name in derive(ModelSpec(steps=2, **fields)).gradients:
        result = check(spec, name, correct_formula(spec, name).gradient, points=3)
        assert result.ok, result.explain()


def numpy_gru_rows(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    Y: np.ndarray,
    h0: np.ndarray | None = None,
    *,
    carry: bool = True,
) -> tuple[float, dict[str, np.ndarray]]:
    """A d2l-style GRU in the row layout (X_t W_xr + H_{t-1} W_hr + b_r), hand-written.

    Biases are (n, 1) columns, broadcast over the rows of the batch.  ``carry=False``
    drops the direct path dH_{t+1} * Z_{t+1} from dH_t.
    """
    T, m, _ = X.shape
    n_h = params["W_hr"].shape[0]
    H = np.zeros((m, n_h)) if h0 is None else h0.copy()
    cache = []
    loss = 0.0
    for t in range(T):
        x = X[t]
        R = _sigmoid(x @ params["W_xr"] + H @ params["W_hr"] + params["b_r"].T)
        Z = _sigmoid(x @ params["W_xz"] + H @ params["W_hz"] + params["b_z"].T)
        G = np.tanh(x @ params["W_xh"] + (R * H) @ params["W_hh"] + params["b_h"].T)
        H_next = Z * H + (1 - Z) * G
        S = H_next @ params["W_hq"] + params["b_q"].T
        P = np.exp(S - S.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        loss += float(-np.sum(Y[t] * np.log(P))) / m
        cache.append((x, H, R, Z, G, H_next, P))
        H = H_next
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    dH_next = np.zeros((m, n_h))
    for t in reversed(range(T)):
        x, H_prev, R, Z, G, H_t, P = cache[t]
        dO = (P - Y[t]) / m
        grads["W_hq"] += H_t.T @ dO
        grads["b_q"] += dO.sum(axis=0)[:, None]
        dH = dO @ params["W_hq"].T + dH_next
        dG = dH * (1 - Z) * (1 - G**2)
        dZ = dH * (H_prev - G) * Z * (1 - Z)
        dRH = dG @ params["W_hh"].T
        dR = dRH * H_prev * R * (1 - R)
        for gate, d, h_in in (("r", dR, H_prev), ("z", dZ, H_prev), ("h", dG, R * H_prev)):
            grads[f"W_x{gate}"] += x.T @ d
            grads[f"W_h{gate}"] += h_in.T @ d
            grads[f"b_{gate}"] += d.sum(axis=0)[:, None]
        dH_next = dR @ params["W_hr"].T + dZ @ params["W_hz"].T + dRH * R
        if carry:
            dH_next += dH * Z
    grads["H_0"] = dH_next
    return loss, grads


def test_hand_written_numpy_gru_in_rows_is_equal_and_its_bug_is_not() -> None:
    spec = ModelSpec(cell="gru", notation="layered", steps=3, initial_state="input")
    rng = np.random.default_rng(1)
    n_in, n_h, n_out, m, T = 3, 4, 5, 2, 3
    params = {}
    for gate in ("r", "z", "h"):
        params[f"W_x{gate}"] = rng.normal(scale=0.5, size=(n_in, n_h))
        params[f"W_h{gate}"] = rng.normal(scale=0.5, size=(n_h, n_h))
        params[f"b_{gate}"] = rng.normal(scale=0.5, size=(n_h, 1))
    params["W_hq"] = rng.normal(scale=0.5, size=(n_h, n_out))
    params["b_q"] = rng.normal(scale=0.5, size=(n_out, 1))
    X = rng.normal(size=(T, m, n_in))
    Y = np.eye(n_out)[rng.integers(0, n_out, size=(T, m))]
    h0 = rng.normal(size=(m, n_h))
    _, grads = numpy_gru_rows(params, X, Y, h0)
    numeric = _finite_differences(numpy_gru_rows, params, (X, Y, h0))
    for name, value in numeric.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-5, atol=1e-8, err_msg=name)
    for name in derive(spec).gradients:
        result = check(spec, name, numpy_gru_rows, points=4)
        assert result.ok, (name, result.explain())

    def no_direct_path(p: Any, X: Any, Y: Any, h0: Any = None) -> Any:
        return numpy_gru_rows(p, X, Y, h0, carry=False)

    result = check(spec, "W_hz", no_direct_path, points=4)
    assert not result.ok and result.mistake_names == ("dropped_carry",), result.explain()
    assert "dH[t] lacks dH[t+1] * Z[t+1]" in result.explain()
    assert result.loss_steps == derive(spec).graph.steps[1:], result.explain()
    second = derive(spec).graph.steps[1]
    assert result.first_step == second, result.explain()
    assert f"first differs at step {second} (of " in result.explain()
    assert result.gates_wrong == ("R", "Z", "H_tilde"), result.explain()

    def only_three_steps(p: Any, X: Any, Y: Any, h0: Any = None) -> Any:
        assert X.shape[0] == 3, "written for T = 3"
        return no_direct_path(p, X, Y, h0)

    result = check(spec, "W_hz", only_three_steps, points=4)
    assert not result.ok and result.first_step is None, result.explain()
    assert "no step localisation: the callable failed on the sequences cut to 1 step" in (
        result.explain()
    )


def test_one_array_is_localised_to_the_gate_whose_carry_is_wrong() -> None:
    """A single array has no gates' verdicts; zeroing each gate's recurrent weights in
    turn says which gate's carry the difference comes through (where exactly one does)."""
    spec = ModelSpec(cell="lstm", steps=4)

    def forget_gate_bug(p: Any, X: Any, Y: Any, h0: Any = None, c0: Any = None) -> Any:
        return numpy_lstm(p, X, Y, h0, c0, forget_factor="sigmoid")[1]["W_hi"]

    result = check(spec, "W_hi", forget_gate_bug, points=4)
    assert not result.ok and result.gates_wrong is None
    assert (
        "paths: with W_hf = 0 it agrees (at 3 points where it differs): the difference comes "
        "through what the f gate carries back to the step before (through W_hf); with W_hi, "
        "W_ho, W_hc = 0 in turn it still differs"
    ) in result.notes, result.explain()

    def no_cell_carry(p: Any, X: Any, Y: Any, h0: Any = None, c0: Any = None) -> Any:
        return numpy_lstm(p, X, Y, h0, c0, carry=False)[1]["W_hf"]

    result = check(spec, "W_hf", no_cell_carry, points=4)  # c's carry: no weight carries it
    assert not any(note.startswith("paths:") for note in result.notes), result.explain()
    assert "carry: the carry of c (dc[t+1] * f[t+1]) is missing; h's is right" in result.notes
