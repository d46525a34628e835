"""Hand-written LSTM and GRU backward passes from public tutorials, judged by the checker.

Each fixture adapts a short passage of a public repository's backward pass (cited
with repository, path and commit, or the issue thread) to a callable in the
checker's conventions: the forward pass and the output layer are the
checker's model (the spec's cell, softmax + cross-entropy), the lines that
compute the gates' errors and the gradients are the source's, renamed.  Each is
pinned with its verdict and the mistakes the checker names; the right ones are
also compared with central finite differences of their own loss, an oracle
independent of the derivation.  Nothing here is a value typed by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from symbptt import ModelSpec, derive
from symbptt.check import check


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-a)))


def _softmax_columns(s: np.ndarray) -> np.ndarray:
    p = np.exp(s - s.max(axis=0))
    return np.asarray(p / p.sum(axis=0))


def _finite_differences(fn: Any, params: dict[str, np.ndarray], *args: Any) -> dict[str, Any]:
    out = {}
    eps = 1e-6
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


def _random_params(spec: ModelSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Parameters in the spec's shapes (sizes from the derivation)."""
    d = derive(spec)
    return {
        name: rng.normal(scale=0.5, size=tuple(int(v) for v in symbol.shape))
        for name, symbol in d.graph.params.items()
    }


# ----------------------------------------------------------- hanbt/learn_dl, an LSTM
# hanbt/learn_dl, lstm.py at eff712ea1c79fdc918b35ea990bc86d6c5ab42df (LstmLayer.calc_delta_k,
# calc_gradient, calc_gradient_t): a many_to_one LSTM (the error enters at the last h).
# Three slips, each in the source:
#   - calc_gradient_t: ``bi_grad = self.delta_f_list[t]`` and ``bo_grad = self.delta_f_list[t]``
#     (issue hanbt/learn_dl#53: should be delta_i_list and delta_o_list);
#   - calc_delta_k: every gate's error is ``delta_k * og * (1 - tanh_c * tanh_c) * ...``, from
#     the hidden state's error alone: the cell state's carry dc[t+1] * f[t+1] is never added;
#   - calc_gradient: ``self.Wfx_grad = np.dot(self.delta_f_list[-1], xt)``: the input weights'
#     gradients from the last step only.
# ``fixed`` repairs all three.

SIZES: dict[str, Any] = {"n_in": 3, "n_hidden": 4, "n_out": 5, "batch": 1, "steps": 3}
LEARN_DL = ModelSpec(cell="lstm", mode="many_to_one", **SIZES)


def learn_dl_lstm(
    p: dict[str, np.ndarray],
    X: np.ndarray,
    Y: np.ndarray,
    h0: Any = None,
    c0: Any = None,
    *,
    fixed: bool = False,
) -> tuple[float, dict[str, np.ndarray]]:
    T, m, _ = X.shape
    n_h = p["W_hi"].shape[0]
    h, c = [np.zeros((n_h, m))], [np.zeros((n_h, m))]
    i_l, f_l, o_l, ct_l = [h[0]], [h[0]], [h[0]], [h[0]]
    for t in range(T):
        x = X[t].T

        def gate(k: str, x: np.ndarray = x) -> np.ndarray:
            return np.asarray(p[f"W_x{k}"] @ x + p[f"W_h{k}"] @ h[-1] + p[f"b_{k}"])

        i_l.append(_sigmoid(gate("i")))
        f_l.append(_sigmoid(gate("f")))
        o_l.append(_sigmoid(gate("o")))
        ct_l.append(np.tanh(gate("c")))
        c.append(f_l[-1] * c[-1] + i_l[-1] * ct_l[-1])
        h.append(o_l[-1] * np.tanh(c[-1]))
    probs = _softmax_columns(p["W_hy"] @ h[T] + p["b_y"])
    loss = float(-np.sum(Y.T * np.log(probs))) / m
    ds = (probs - Y.T) / m
    g = {name: np.zeros_like(value) for name, value in p.items()}
    g["W_hy"], g["b_y"] = ds @ h[T].T, ds.sum(axis=1, keepdims=True)
    delta_h = {T: p["W_hy"].T @ ds}
    deltas: dict[str, dict[int, np.ndarray]] = {k: {} for k in "ifoc"}
    dc_next = np.zeros((n_h, m))
    for k in range(T, 0, -1):  # calc_delta_k
        ig, og, fg, ct, tanh_c = i_l[k], o_l[k], f_l[k], ct_l[k], np.tanh(c[k])
        dc = delta_h[k] * og * (1 - tanh_c * tanh_c)
        if fixed:
            dc = dc + dc_next
        deltas["o"][k] = delta_h[k] * tanh_c * og * (1 - og)
        deltas["f"][k] = dc * c[k - 1] * fg * (1 - fg)
        deltas["i"][k] = dc * ct * ig * (1 - ig)
        deltas["c"][k] = dc * ig * (1 - ct * ct)
        delta_h[k - 1] = sum(p[f"W_h{q}"].T @ deltas[q][k] for q in "oifc")
        dc_next = dc * fg
    bias_from = {"i": "i" if fixed else "f", "o": "o" if fixed else "f", "f": "f", "c": "c"}
    for t in range(T, 0, -1):  # calc_gradient_t
        for q in "ifoc":
            g[f"W_h{q}"] += deltas[q][t] @ h[t - 1].T
            g[f"b_{q}"] += deltas[bias_from[q]][t].sum(axis=1, keepdims=True)
    for q in "ifoc":  # calc_gradient: the input weights
        steps = range(1, T + 1) if fixed else [T]
        g[f"W_x{q}"] = sum(deltas[q][t] @ X[t - 1] for t in steps)
    return loss, g


def _learn_dl(**kw: Any) -> Any:
    def fn(p: Any, X: Any, Y: Any, h0: Any = None, c0: Any = None) -> Any:
        return learn_dl_lstm(p, X, Y, h0, c0, **kw)

    return fn


def test_learn_dl_lstm_fixed_is_equal() -> None:
    rng = np.random.default_rng(3)
    params = _random_params(LEARN_DL, rng)
    X = rng.normal(size=(3, 1, params["W_xi"].shape[1]))
    Y = np.eye(params["W_hy"].shape[0])[[1]]
    right = _learn_dl(fixed=True)
    numeric = _finite_differences(right, params, X, Y)
    for name, value in right(params, X, Y)[1].items():
        np.testing.assert_allclose(value, numeric[name], rtol=1e-5, atol=1e-8, err_msg=name)
    for name in ("W_xi", "W_hf", "b_i", "b_o", "W_hy"):
        assert check(LEARN_DL, name, right, points=3).ok, name


def test_learn_dl_lstm_as_published_is_not_equal_and_named() -> None:
    wrong = _learn_dl()
    # the output layer does not see any of the three slips
    assert check(LEARN_DL, "W_hy", wrong, points=3).ok
    # hanbt/learn_dl#53: b_i from the forget gate's error, and no cell-state carry
    result = check(LEARN_DL, "b_i", wrong, points=3)
    assert not result.ok
    assert set(result.mistake_names) == {"dropped_carry", "other_gate"}, result.explain()
    assert "b_i is taken from delta_f[t] where delta_i[t] belongs" in result.explain()
    assert "dc[t] lacks dc[t+1] * f[t+1]" in result.explain()
    # with one step there is no carry: only the biases' slip, in the i and o gates
    assert result.first_step == 1, result.explain()
    assert result.gates_wrong == ("i", "o"), result.explain()
    # the hidden weights: the missing carry alone
    result = check(LEARN_DL, "W_hi", wrong, points=3)
    assert result.mistake_names == ("dropped_carry",), result.explain()
    # the input weights: the last step's term only (no carry is needed at the last step)
    result = check(LEARN_DL, "W_xi", wrong, points=3)
    assert result.mistake_names == ("last_step_only",), result.explain()


# ------------------------------------------------------ sooftware/TIL, a GRU in rows
# sooftware/TIL, Deep-Learning-from-Scratch-1_2/LSTM/GRU.py at
# 67fc3aadb412c4d2b3a6714236c25cf79e5b48f5 (GRU.forward, GRU.backward): one step of a GRU
# without biases in the row layout (x @ Wx), as "Deep Learning from Scratch 2" writes it:
# h_next = (1 - z) * h_prev + z * h_hat.  The checker's layered GRU (d2l's) keeps the
# previous state with the update gate, H = Z * H_prev + (1 - Z) * H_tilde, so its Z is the
# source's 1 - z = sigmoid(-(x @ W_xz + h @ W_hz)): the adapter hands the source -W_xz,
# -W_hz and negates their gradients.  As published, the source calls ``np.sigmoid``,
# which NumPy does not have.

FROM_SCRATCH = ModelSpec(cell="gru", notation="layered", bias=False, **{**SIZES, "batch": 2})


def _published_sigmoid(a: np.ndarray) -> np.ndarray:
    return np.asarray(np.sigmoid(a))  # type: ignore[attr-defined]  # as published


def from_scratch_gru(
    p: dict[str, np.ndarray],
    X: np.ndarray,
    Y: np.ndarray,
    h0: Any = None,
    *,
    sigmoid: Any = _sigmoid,
    adapt_z: bool = True,
) -> tuple[float, dict[str, np.ndarray]]:
    T, m, _ = X.shape
    sign = -1.0 if adapt_z else 1.0
    Wxz, Whz, Wxr, Whr = sign * p["W_xz"], sign * p["W_hz"], p["W_xr"], p["W_hr"]
    Wx, Wh = p["W_xh"], p["W_hh"]
    h_prev = np.zeros((m, Wh.shape[0]))
    caches, probs = [], []
    for t in range(T):  # GRU.forward
        x = X[t]
        z = sigmoid(np.dot(x, Wxz) + np.dot(h_prev, Whz))
        r = sigmoid(np.dot(x, Wxr) + np.dot(h_prev, Whr))
        h_hat = np.tanh(np.dot(x, Wx) + np.dot(r * h_prev, Wh))
        h_next = (1 - z) * h_prev + z * h_hat
        caches.append((x, h_prev, z, r, h_hat, h_next))
        s = h_next @ p["W_hq"]
        e = np.exp(s - s.max(axis=1, keepdims=True))
        probs.append(e / e.sum(axis=1, keepdims=True))
        h_prev = h_next
    loss = float(sum(-np.sum(Y[t] * np.log(probs[t])) for t in range(T))) / m
    g = {name: np.zeros_like(value) for name, value in p.items()}
    dh_carry = np.zeros_like(h_prev)
    for t in reversed(range(T)):
        x, h_prev, z, r, h_hat, h_next = caches[t]
        dO = (probs[t] - Y[t]) / m
        g["W_hq"] += h_next.T @ dO
        dh_next = dO @ p["W_hq"].T + dh_carry
        # GRU.backward
        dh_hat = dh_next * z
        dh_prev = dh_next * (1 - z)
        dt = dh_hat * (1 - h_hat**2)
        g["W_hh"] += np.dot((r * h_prev).T, dt)
        dhr = np.dot(dt, Wh.T)
        g["W_xh"] += np.dot(x.T, dt)
        dh_prev += r * dhr
        dz = dh_next * h_hat - dh_next * h_prev
        dt = dz * z * (1 - z)
        g["W_hz"] += sign * np.dot(h_prev.T, dt)
        dh_prev += np.dot(dt, Whz.T)
        g["W_xz"] += sign * np.dot(x.T, dt)
        dr = dhr * h_prev
        dt = dr * r * (1 - r)
        g["W_hr"] += np.dot(h_prev.T, dt)
        dh_prev += np.dot(dt, Whr.T)
        g["W_xr"] += np.dot(x.T, dt)
        dh_carry = dh_prev
    return loss, g


def _from_scratch(**kw: Any) -> Any:
    def fn(p: Any, X: Any, Y: Any, h0: Any = None) -> Any:
        return from_scratch_gru(p, X, Y, h0, **kw)

    return fn


def test_from_scratch_gru_is_equal_once_it_has_a_sigmoid() -> None:
    rng = np.random.default_rng(4)
    params = _random_params(FROM_SCRATCH, rng)
    X = rng.normal(size=(3, 2, params["W_xr"].shape[0]))
    Y = np.eye(params["W_hq"].shape[1])[rng.integers(0, params["W_hq"].shape[1], size=(3, 2))]
    right = _from_scratch()
    numeric = _finite_differences(right, params, X, Y)
    for name, value in right(params, X, Y)[1].items():
        np.testing.assert_allclose(value, numeric[name], rtol=1e-5, atol=1e-8, err_msg=name)
    for name in derive(FROM_SCRATCH).gradients:
        assert check(FROM_SCRATCH, name, right, points=3).ok, name


def test_from_scratch_gru_as_published_and_unadapted() -> None:
    # as published: np.sigmoid does not exist; reported, not a traceback
    result = check(FROM_SCRATCH, "W_hz", _from_scratch(sigmoid=_published_sigmoid), points=3)
    assert not result.ok and result.method == "call", result.explain()
    assert "AttributeError" in result.explain() and "sigmoid" in result.explain()
    # with a sigmoid but without the adapter: the source's z is the checker's 1 - Z
    unadapted = _from_scratch(adapt_z=False)
    result = check(FROM_SCRATCH, "W_hz", unadapted, points=3)
    assert not result.ok and result.mistakes == (), result.explain()
    assert "none of the common mistakes explains the difference" in result.explain()
    # another model, not a slip of the backward pass: even the output layer is wrong;
    # with h[0] = 0 the step-1 term H[0].T @ delta_Z[1] is zero either way
    assert result.first_step == 2 and result.gates_right == (), result.explain()
    assert result.gates_wrong is not None and "the output layer" in result.gates_wrong


# ------------------------------------------------------------ nicodjimenez/lstm
# nicodjimenez/lstm, lstm.py at 1785a9d1f195f59e3384ccba5d80b75782fc0917 (LstmNode.top_diff_is):
# the backward pass of its own cell, whose hidden state is ``h = s * o`` (no tanh of the
# cell state s).  Judged against a cell file with that equation it is right; copied into
# the usual LSTM, h = o * tanh(c), it keeps ``do = s * top_diff_h`` (c[t] where tanh(c[t])
# belongs) and ``ds = o * top_diff_h + top_diff_s`` (no derivative of that tanh).


def nico_lstm(
    p: dict[str, np.ndarray],
    X: np.ndarray,
    Y: np.ndarray,
    h0: Any = None,
    c0: Any = None,
    *,
    tanh_in_forward: bool = True,
) -> tuple[float, dict[str, np.ndarray]]:
    T, m, _ = X.shape
    n_h = p["W_hi"].shape[0]
    h, s = np.zeros((n_h, m)), np.zeros((n_h, m))
    nodes, loss = [], 0.0
    for t in range(T):
        x = X[t].T
        pre = {k: p[f"W_x{k}"] @ x + p[f"W_h{k}"] @ h + p[f"b_{k}"] for k in "ifoc"}
        i, f, o, g = _sigmoid(pre["i"]), _sigmoid(pre["f"]), _sigmoid(pre["o"]), np.tanh(pre["c"])
        s_prev, h_prev = s, h
        s = g * i + s_prev * f
        h = o * (np.tanh(s) if tanh_in_forward else s)
        probs = _softmax_columns(p["W_hy"] @ h + p["b_y"])
        loss += float(-np.sum(Y[t].T * np.log(probs))) / m
        nodes.append((x, h_prev, s_prev, i, f, o, g, s, h, probs))
    grads = {name: np.zeros_like(value) for name, value in p.items()}
    diff_h_next, diff_s = np.zeros((n_h, m)), np.zeros((n_h, m))
    for t in reversed(range(T)):  # LstmNetwork.y_list_is, then top_diff_is
        x, h_prev, s_prev, i, f, o, g, s, h, probs = nodes[t]
        dy = (probs - Y[t].T) / m
        grads["W_hy"] += dy @ h.T
        grads["b_y"] += dy.sum(axis=1, keepdims=True)
        top_diff_h = p["W_hy"].T @ dy + diff_h_next
        ds = o * top_diff_h + diff_s
        do = s * top_diff_h
        di = g * ds
        dg = i * ds
        df = s_prev * ds
        inputs = {
            "i": (1.0 - i) * i * di,
            "f": (1.0 - f) * f * df,
            "o": (1.0 - o) * o * do,
            "c": (1.0 - g**2) * dg,
        }
        diff_h_next = np.zeros((n_h, m))
        for k, d in inputs.items():
            grads[f"W_x{k}"] += d @ x.T
            grads[f"W_h{k}"] += d @ h_prev.T
            grads[f"b_{k}"] += d.sum(axis=1, keepdims=True)
            diff_h_next += p[f"W_h{k}"].T @ d
        diff_s = ds * f
    return loss, grads


@pytest.fixture(scope="module")
def nico_cell(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """The LSTM's own cell file with nicodjimenez/lstm's hidden state, h = o * c."""
    from symbptt.model import load

    source = Path(load.__file__).parent / "cells" / "lstm.toml"
    text = source.read_text(encoding="utf-8")
    assert '"h[t] = o[t] * tanh(c[t])"' in text and 'name = "lstm"' in text
    text = text.replace('"h[t] = o[t] * tanh(c[t])"', '"h[t] = o[t] * c[t]"')
    text = text.replace('name = "lstm"', 'name = "lstm_no_tanh"')
    path = tmp_path_factory.mktemp("cells") / "lstm_no_tanh.toml"
    path.write_text(text, encoding="utf-8")
    return ModelSpec(cell=str(path), **{**SIZES, "batch": 2})


def _nico(**kw: Any) -> Any:
    def fn(p: Any, X: Any, Y: Any, h0: Any = None, c0: Any = None) -> Any:
        return nico_lstm(p, X, Y, h0, c0, **kw)

    return fn


def test_nico_lstm_is_equal_for_its_own_cell(nico_cell: ModelSpec) -> None:
    rng = np.random.default_rng(5)
    params = _random_params(nico_cell, rng)
    X = rng.normal(size=(3, 2, params["W_xi"].shape[1]))
    Y = np.eye(params["W_hy"].shape[0])[rng.integers(0, params["W_hy"].shape[0], size=(3, 2))]
    own = _nico(tanh_in_forward=False)
    numeric = _finite_differences(own, params, X, Y)
    for name, value in own(params, X, Y)[1].items():
        np.testing.assert_allclose(value, numeric[name], rtol=1e-5, atol=1e-8, err_msg=name)
    for name in ("W_xo", "W_hf", "b_i", "b_c", "W_hy"):
        assert check(nico_cell, name, own, points=3).ok, name


def test_nico_lstm_in_the_usual_lstm_is_not_equal() -> None:
    spec = ModelSpec(cell="lstm", **{**SIZES, "batch": 2})
    copied = _nico()
    assert check(spec, "W_hy", copied, points=3).ok
    for name in ("W_ho", "W_hf"):
        result = check(spec, name, copied, points=3)
        assert not result.ok
        assert result.mistake_names == ("missing_activation",), result.explain()
        assert (
            "a cell without tanh(c[t]): c[t] where tanh(c[t]) belongs and its derivative "
            "1 - tanh(c[t])**2 missing from dc[t]"
        ) in result.explain()
    # one step: the output gate reads c[t] for tanh(c[t]) and the cell error lacks tanh's
    # derivative, but W_h* read h[0] = 0; with two steps every gate is wrong
    assert result.first_step == 2 and result.gates_right == ("the output layer",)


# ---------------------------------------------------------- ddbourgin/numpy-ml, #42
# ddbourgin/numpy-ml, numpy_ml/neural_nets/layers/layers.py (LSTMCell._bwd; the fixed text at
# 4aacd9203db19ee97fc10a53847f2ea8273133e3): the backward pass recomputes each gate's input,
# ``_Gf = Zt @ Wf + bf``, to evaluate the gates' derivatives there.  Issue ddbourgin/numpy-ml#42
# reports the copy-paste slip ``_Gf = Zt @ Wf + bo`` and ``_Gu = Zt @ Wu + bo``: the forget and
# update (input) gates' derivatives taken at the output gate's bias.  Rows are examples
# (Zt = [A_prev, Xt], here split into W_h* and W_x*), biases are rows: the checker's batch-major
# convention, with d2l's row layout.

NUMPY_ML = ModelSpec(cell="lstm", notation="layered", **{**SIZES, "batch": 2})


def _sigmoid_grad(a: np.ndarray) -> np.ndarray:
    return _sigmoid(a) * (1 - _sigmoid(a))


def numpy_ml_lstm(
    p: dict[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    h0: Any = None,
    c0: Any = None,
    *,
    issue_42: bool = False,
) -> tuple[float, dict[str, np.ndarray]]:
    m, T, _ = X.shape
    n_h = p["W_hi"].shape[0]
    gate = {"o": "o", "f": "f", "u": "i", "c": "c"}  # numpy-ml's gate -> the checker's suffix

    def pre(k: str, A: np.ndarray, Xt: np.ndarray, bias: str | None = None) -> np.ndarray:
        q = gate[k]
        b = p[f"b_{gate[bias or k]}"]
        return np.asarray(A @ p[f"W_h{q}"] + Xt @ p[f"W_x{q}"] + b)

    A, C = [np.zeros((m, n_h))], [np.zeros((m, n_h))]
    G: dict[str, list[np.ndarray]] = {k: [] for k in gate}
    probs, loss = [], 0.0
    for t in range(T):
        Xt = X[:, t]
        for k in ("o", "f", "u"):
            G[k].append(_sigmoid(pre(k, A[-1], Xt)))
        G["c"].append(np.tanh(pre("c", A[-1], Xt)))
        C.append(G["f"][-1] * C[-1] + G["u"][-1] * G["c"][-1])
        A.append(G["o"][-1] * np.tanh(C[-1]))
        s = A[-1] @ p["W_hq"] + p["b_q"]
        e = np.exp(s - s.max(axis=1, keepdims=True))
        probs.append(e / e.sum(axis=1, keepdims=True))
        loss -= float(np.sum(np.log(probs[-1][np.arange(m), y[:, t]]))) / m
    g = {name: np.zeros_like(value) for name, value in p.items()}
    dA_acc, dC_acc = np.zeros((m, n_h)), np.zeros((m, n_h))
    for t in reversed(range(T)):
        Xt, A_prev, C_prev, Ct = X[:, t], A[t], C[t], C[t + 1]
        dZ2 = probs[t].copy()
        dZ2[np.arange(m), y[:, t]] -= 1
        dZ2 /= m
        g["W_hq"] += A[t + 1].T @ dZ2
        g["b_q"] += dZ2.sum(axis=0)
        dLdAt = dZ2 @ p["W_hq"].T
        # LSTMCell._bwd
        dA = dLdAt + dA_acc
        dC = dC_acc + dA * G["o"][t] * (1 - np.tanh(Ct) ** 2)
        _Go = pre("o", A_prev, Xt)
        _Gf = pre("f", A_prev, Xt, "o" if issue_42 else None)
        _Gu = pre("u", A_prev, Xt, "o" if issue_42 else None)
        _Gc = pre("c", A_prev, Xt)
        d = {
            "o": dA * np.tanh(Ct) * _sigmoid_grad(_Go),
            "c": dC * G["u"][t] * (1 - np.tanh(_Gc) ** 2),
            "u": dC * G["c"][t] * _sigmoid_grad(_Gu),
            "f": dC * C_prev * _sigmoid_grad(_Gf),
        }
        dA_acc = np.zeros((m, n_h))
        for k, dk in d.items():
            q = gate[k]
            g[f"W_h{q}"] += A_prev.T @ dk
            g[f"W_x{q}"] += Xt.T @ dk
            g[f"b_{q}"] += dk.sum(axis=0)
            dA_acc += dk @ p[f"W_h{q}"].T
        dC_acc = G["f"][t] * dC
    return loss, g


def _numpy_ml(**kw: Any) -> Any:
    def fn(p: Any, X: Any, y: Any, h0: Any = None, c0: Any = None) -> Any:
        return numpy_ml_lstm(p, X, y, h0, c0, **kw)

    return fn


def test_numpy_ml_lstm_is_equal_in_the_batch_major_convention() -> None:
    right = _numpy_ml()
    for name in derive(NUMPY_ML).gradients:
        result = check(NUMPY_ML, name, right, points=3, convention="batch_major")
        assert result.ok, result.explain()


def test_numpy_ml_issue_42_is_not_equal_and_localised() -> None:
    wrong = _numpy_ml(issue_42=True)
    assert check(NUMPY_ML, "W_hq", wrong, points=3, convention="batch_major").ok
    # a derivative taken at another pre-activation: no mutation of the catalogue
    result = check(NUMPY_ML, "b_f", wrong, points=3, convention="batch_major")
    assert not result.ok and result.mistakes == (), result.explain()
    # the forget gate reads c[0] = 0 at the first step: its slip shows from the second
    assert result.first_step == 2, result.explain()
    # the update gate's slip shows at once, in its own gate only
    result = check(NUMPY_ML, "b_i", wrong, points=3, convention="batch_major")
    assert not result.ok and result.first_step == 1, result.explain()
    assert result.gates_wrong == ("I",), result.explain()
    assert (
        "first differs at step 1 (of 3); gates right: F, O, C_tilde, the output layer; wrong: I"
        in (result.explain())
    )
