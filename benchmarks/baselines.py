"""Hand-written NumPy BPTT baselines: Elman, LSTM and GRU, forward and backward.

The references the generated modules are timed against (``runtime.py``),
themselves checked (``tests/test_baselines.py``) against central finite
differences, symbptt's derivation evaluated at the same point, and the
generated module's gradients.  Each function takes what a generated
module's ``loss_and_gradients`` takes and returns what it returns::

    loss, grads = lstm(params, X, Y, h0=None, c0=None)
    loss, grads = gru(params, X, Y, h0=None)
    loss, grads = elman(params, X, Y, h0=None)

X is (T, m, n_in) and Y (T, m, n_out), time-major with one example per row
(X[t] is x_t^T); h0 and c0 are (m, n_hidden) or None for zeros.  The model is
in the column layout, the parameters in its shapes (W_xi is (n_hidden, n_in),
b_i is (n_hidden, 1), W_hy is (n_out, n_hidden)) and the equations exactly
those of ``symbptt/model/cells/lstm.toml`` and ``gru.toml``:

    LSTM  i_t = σ(W_xi x_t + W_hi h_{t-1} + b_i)    f_t = σ(W_xf x_t + W_hf h_{t-1} + b_f)
          o_t = σ(W_xo x_t + W_ho h_{t-1} + b_o)    g_t = tanh(W_xc x_t + W_hc h_{t-1} + b_c)
          c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t           h_t = o_t ⊙ tanh(c_t)
    GRU   r_t = σ(W_xr x_t + W_hr h_{t-1} + b_r)    z_t = σ(W_xz x_t + W_hz h_{t-1} + b_z)
          g_t = tanh(W_xh x_t + W_hh (r_t ⊙ h_{t-1}) + b_h)
          h_t = z_t ⊙ h_{t-1} + (1 - z_t) ⊙ g_t

and the head of every cell o_t = W_hy h_t + b_y, ŷ_t = softmax(o_t), loss
L = (1/m) Σ_t Σ_examples -y_t · log ŷ_t (cross-entropy summed over time,
averaged over the batch; each target row sums to 1).

The gated cells are written CS231n-style (``rnn_layers.py``): the gate
weights stacked into one matrix, the input projections of all steps hoisted
into one matrix product before the loop, the output layer and its gradient
for all steps at once, the parameter gradients accumulated after the loop as
one matrix product over the stacked steps, and the loops working in place in
preallocated buffers (kept between calls in ``workspace`` when one is given,
as the generated module keeps its own).  As in the generated module, a
column-layout quantity q_t (units, m) is stored as its transpose, one example
per row, so that W q_t + b is computed as q_t^T W^T + b^T.

``elman`` is the per-step BPTT of min-char-rnn, batched, that ``runtime.py``
has always timed the Elman module against; ``elman_hoisted`` the same model in
the gated cells' (cuDNN's) schedule, which ``peers.py`` times too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]
Workspace = dict[str, Array]

#: The gates of each cell, in the cell file's order; the key is the suffix of the
#: parameter names (W_x<k>, W_h<k>, b_<k>).  LSTM_STACK: the order the LSTM stacks them.
LSTM_GATES = ("i", "f", "o", "c")
LSTM_STACK = ("o", "i", "f", "c")
GRU_GATES = ("r", "z", "h")


def parameter_shapes(cell: str, n_in: int, n_hidden: int, n_out: int) -> dict[str, tuple[int, int]]:
    """The parameters of ``cell`` ("elman", "lstm" or "gru") and their shapes, in order."""
    if cell == "elman":
        gates: tuple[str, ...] = ("h",)
    elif cell == "lstm":
        gates = LSTM_GATES
    elif cell == "gru":
        gates = GRU_GATES
    else:
        raise ValueError(f"cell: expected 'elman', 'lstm' or 'gru', got {cell!r}")
    shapes: dict[str, tuple[int, int]] = {}
    for k in gates:
        shapes[f"W_x{k}"] = (n_hidden, n_in)
        shapes[f"W_h{k}"] = (n_hidden, n_hidden)
        shapes[f"b_{k}"] = (n_hidden, 1)
    shapes["W_hy"] = (n_out, n_hidden)
    shapes["b_y"] = (n_out, 1)
    return shapes


def init_params(
    cell: str,
    n_in: int,
    n_hidden: int,
    n_out: int,
    rng: np.random.Generator | int | None = 0,
    dtype: Any = np.float64,
    bias_scale: float = 0.1,
) -> dict[str, Array]:
    """Random parameters: weights N(0, 1/fan_in), biases N(0, bias_scale²) (not zero, so
    that their gradients are tested away from zero)."""
    rng = np.random.default_rng(rng)
    params = {}
    for name, shape in parameter_shapes(cell, n_in, n_hidden, n_out).items():
        scale = bias_scale if shape[1] == 1 else 1 / np.sqrt(shape[1])
        params[name] = rng.normal(0.0, scale, shape).astype(dtype)
    return params


def random_data(
    T: int, m: int, n_in: int, n_out: int, rng: np.random.Generator | int | None = 0
) -> tuple[Array, Array]:
    """X (T, m, n_in) normal and one-hot targets Y (T, m, n_out), float64."""
    rng = np.random.default_rng(rng)
    X = rng.normal(size=(T, m, n_in))
    Y = np.eye(n_out)[rng.integers(0, n_out, size=(T, m))]
    return X, Y


def central_differences(
    loss: Callable[[dict[str, Array]], float], params: dict[str, Array], eps: float = 1e-6
) -> dict[str, Array]:
    """Central differences (L(p + eps e_k) - L(p - eps e_k)) / 2 eps of every parameter entry.

    ``loss(params)`` is called with the entries of ``params`` changed in place one at a
    time; each is restored before the next.
    """
    gradients = {}
    for name, value in params.items():
        gradient = np.empty_like(value)
        for index in np.ndindex(value.shape):
            saved = value[index]
            value[index] = saved + eps
            plus = loss(params)
            value[index] = saved - eps
            minus = loss(params)
            value[index] = saved
            gradient[index] = (plus - minus) / (2 * eps)
        gradients[name] = gradient
    return gradients


def _buffer(ws: Workspace, name: str, shape: tuple[int, ...], dtype: Any) -> Array:
    """The scratch array ``name`` of ``ws``, made when missing or of another shape."""
    array = ws.get(name)
    if array is None or array.shape != shape or array.dtype != dtype:
        array = ws[name] = np.empty(shape, dtype)
    return array


def _stack(params: dict[str, Array], names: Iterable[str]) -> Array:
    return np.concatenate([params[name] for name in names])


def _sigmoid_(a: Array) -> None:
    """σ(a) in place, as (1 + tanh(a/2)) / 2: no overflow for any a."""
    a *= 0.5
    np.tanh(a, out=a)
    a *= 0.5
    a += 0.5


def _state(value: Array | None, out: Array) -> None:
    """The initial state ``value`` (m, n_hidden), or zeros for None, into ``out``."""
    if value is None:
        out.fill(0.0)
    else:
        out[...] = value


def _head(
    params: dict[str, Array], hs: Array, Y: Array, ws: Workspace
) -> tuple[float, Array, Array, Array]:
    """The output layer and loss for all steps at once, and its backward.

    ``hs`` (T*m, n_hidden) holds h_t^T for every step.  Returns the loss, dW_hy,
    db_y and (W_hy^T dL/do_t)^T for every step, (T*m, n_hidden).
    """
    W_hy, b_y = params["W_hy"], params["b_y"]
    rows = hs.shape[0]
    m = Y.shape[1]
    Y2 = Y.reshape(rows, -1)
    scores = _buffer(ws, "scores", (rows, W_hy.shape[0]), hs.dtype)
    probabilities = _buffer(ws, "probabilities", scores.shape, hs.dtype)
    np.matmul(hs, W_hy.T, out=scores)  # o_t^T = h_t^T W_hy^T + b_y^T, all steps
    scores += b_y.T
    scores -= scores.max(axis=1, keepdims=True)
    np.exp(scores, out=probabilities)
    sums = probabilities.sum(axis=1, keepdims=True)
    probabilities /= sums
    scores -= np.log(sums)  # log ŷ_t
    loss = -float(np.vdot(Y2, scores)) / m
    d_scores = probabilities  # dL/do_t = (ŷ_t - y_t) / m, in place
    d_scores -= Y2
    d_scores /= m
    dW_hy = d_scores.T @ hs
    db_y = d_scores.sum(axis=0).reshape(-1, 1)
    dh_out = _buffer(ws, "dh_out", hs.shape, hs.dtype)
    np.matmul(d_scores, W_hy, out=dh_out)
    return loss, dW_hy, db_y, dh_out


def lstm(
    params: dict[str, Array],
    X: Array,
    Y: Array,
    h0: Array | None = None,
    c0: Array | None = None,
    workspace: Workspace | None = None,
) -> tuple[float, dict[str, Array]]:
    """The LSTM loss and the gradient of every parameter (see the module docstring)."""
    ws: Workspace = {} if workspace is None else workspace
    T, m, n_in = X.shape
    n = params["W_hi"].shape[0]
    dtype = X.dtype
    # the gates stacked as [o; i; f; g]: the three sigmoids are one block, and so are the
    # three local derivatives that multiply dc_t (for δi, δf, δg)
    W_x = _stack(params, [f"W_x{k}" for k in LSTM_STACK])  # (4n, n_in)
    W_h = _stack(params, [f"W_h{k}" for k in LSTM_STACK])  # (4n, n)
    b = _stack(params, [f"b_{k}" for k in LSTM_STACK])  # (4n, 1)
    X2 = X.reshape(T * m, n_in)

    # forward: gates[t] = [o_t; i_t; f_t; g_t]^T, (m, 4n)
    gates = _buffer(ws, "gates", (T, m, 4 * n), dtype)
    np.matmul(X2, W_x.T, out=gates.reshape(T * m, 4 * n))  # W_x x_t + b, every t at once
    gates += b.T
    hs = _buffer(ws, "h", (T + 1, m, n), dtype)  # hs[t] = h_t^T, hs[0] = h_0^T
    cs = _buffer(ws, "c", (T + 1, m, n), dtype)
    tanh_c = _buffer(ws, "tanh_c", (T, m, n), dtype)
    recurrent = _buffer(ws, "recurrent", (m, 4 * n), dtype)
    scratch = _buffer(ws, "scratch", (m, n), dtype)
    _state(h0, hs[0])
    _state(c0, cs[0])
    W_hT = W_h.T
    for t in range(T):
        a = gates[t]
        np.matmul(hs[t], W_hT, out=recurrent)
        a += recurrent
        o, i, f, g = a[:, :n], a[:, n : 2 * n], a[:, 2 * n : 3 * n], a[:, 3 * n :]
        _sigmoid_(a[:, : 3 * n])
        np.tanh(g, out=g)
        c = cs[t + 1]
        np.multiply(f, cs[t], out=c)
        np.multiply(i, g, out=scratch)
        c += scratch
        np.tanh(c, out=tanh_c[t])
        np.multiply(o, tanh_c[t], out=hs[t + 1])

    loss, dW_hy, db_y, dh_out = _head(params, hs[1:].reshape(T * m, n), Y, ws)
    dhs = dh_out.reshape(T, m, n)

    # the local derivatives of every step at once: δo_t = dh_t ⊙ k[t][:, :n],
    # δ[i,f,g]_t = dc_t ⊙ k[t][:, n:], and dc_t gains dh_t ⊙ k_c[t]
    k = _buffer(ws, "local", (T, m, 4 * n), dtype)
    o_all, i_all, f_all, g_all = (
        gates[..., :n],
        gates[..., n : 2 * n],
        gates[..., 2 * n : 3 * n],
        gates[..., 3 * n :],
    )
    k_o, k_i, k_f, k_g = k[..., :n], k[..., n : 2 * n], k[..., 2 * n : 3 * n], k[..., 3 * n :]
    np.subtract(1.0, i_all, out=k_i)  # g_t ⊙ i_t ⊙ (1 - i_t)
    k_i *= i_all
    k_i *= g_all
    np.subtract(1.0, f_all, out=k_f)  # c_{t-1} ⊙ f_t ⊙ (1 - f_t)
    k_f *= f_all
    k_f *= cs[:-1]
    np.multiply(g_all, g_all, out=k_g)  # i_t ⊙ (1 - g_t²)
    np.subtract(1.0, k_g, out=k_g)
    k_g *= i_all
    np.subtract(1.0, o_all, out=k_o)  # tanh(c_t) ⊙ o_t ⊙ (1 - o_t)
    k_o *= o_all
    k_o *= tanh_c
    k_c = _buffer(ws, "local_c", (T, m, n), dtype)  # o_t ⊙ (1 - tanh²(c_t))
    np.multiply(tanh_c, tanh_c, out=k_c)
    np.subtract(1.0, k_c, out=k_c)
    k_c *= o_all
    k_ifg = k.reshape(T, m, 4, n)[:, :, 1:]

    # backward: d_gates[t] = [δo_t; δi_t; δf_t; δg_t]^T, the adjoints of the pre-activations
    d_gates = _buffer(ws, "d_gates", (T, m, 4 * n), dtype)
    d_ifg = d_gates.reshape(T, m, 4, n)[:, :, 1:]
    dh_next = _buffer(ws, "dh_next", (m, n), dtype)  # W_h^T δ_{t+1}
    dc = _buffer(ws, "dc", (m, n), dtype)  # dL/dc_t, carried back as dc ⊙ f
    dh_next.fill(0.0)
    dc.fill(0.0)
    dc3 = dc[:, None, :]
    for t in range(T - 1, -1, -1):
        dh = dhs[t]
        dh += dh_next
        np.multiply(dh, k_c[t], out=scratch)
        dc += scratch
        np.multiply(dh, k_o[t], out=d_gates[t, :, :n])
        np.multiply(dc3, k_ifg[t], out=d_ifg[t])
        if t == 0:
            break  # dL/dh_0 and dL/dc_0 are not asked for
        np.multiply(dc, gates[t, :, 2 * n : 3 * n], out=dc)  # dL/dc_{t-1} through c_t
        np.matmul(d_gates[t], W_h, out=dh_next)  # dL/dh_{t-1} through the gates

    D = d_gates.reshape(T * m, 4 * n)
    dW_x = D.T @ X2  # Σ_t δ_t x_t^T, one product over the stacked steps
    dW_h = D.T @ hs[:-1].reshape(T * m, n)  # Σ_t δ_t h_{t-1}^T
    db = D.sum(axis=0).reshape(-1, 1)
    grads = {}
    for j, key in enumerate(LSTM_STACK):
        rows = slice(j * n, (j + 1) * n)
        grads[f"W_x{key}"] = dW_x[rows]
        grads[f"W_h{key}"] = dW_h[rows]
        grads[f"b_{key}"] = db[rows]
    grads["W_hy"] = dW_hy
    grads["b_y"] = db_y
    return loss, {name: grads[name] for name in parameter_shapes("lstm", 1, 1, 1)}


def gru(
    params: dict[str, Array],
    X: Array,
    Y: Array,
    h0: Array | None = None,
    workspace: Workspace | None = None,
) -> tuple[float, dict[str, Array]]:
    """The GRU loss and the gradient of every parameter (see the module docstring)."""
    ws: Workspace = {} if workspace is None else workspace
    T, m, n_in = X.shape
    n = params["W_hr"].shape[0]
    dtype = X.dtype
    W_x = _stack(params, [f"W_x{k}" for k in GRU_GATES])  # (3n, n_in)
    W_rz = _stack(params, ["W_hr", "W_hz"])  # (2n, n)
    W_hh = params["W_hh"]
    b = _stack(params, [f"b_{k}" for k in GRU_GATES])  # (3n, 1)
    X2 = X.reshape(T * m, n_in)

    # forward: gates[t] = [r_t; z_t; g_t]^T, (m, 3n)
    gates = _buffer(ws, "gates", (T, m, 3 * n), dtype)
    np.matmul(X2, W_x.T, out=gates.reshape(T * m, 3 * n))  # W_x x_t + b, every t at once
    gates += b.T
    hs = _buffer(ws, "h", (T + 1, m, n), dtype)  # hs[t] = h_t^T, hs[0] = h_0^T
    rh = _buffer(ws, "rh", (T, m, n), dtype)  # (r_t ⊙ h_{t-1})^T
    recurrent = _buffer(ws, "recurrent", (m, 2 * n), dtype)
    scratch = _buffer(ws, "scratch", (m, n), dtype)
    _state(h0, hs[0])
    W_rzT, W_hhT = W_rz.T, W_hh.T
    for t in range(T):
        a = gates[t]
        rz, r, z, g = a[:, : 2 * n], a[:, :n], a[:, n : 2 * n], a[:, 2 * n :]
        np.matmul(hs[t], W_rzT, out=recurrent)
        rz += recurrent
        _sigmoid_(rz)
        np.multiply(r, hs[t], out=rh[t])
        np.matmul(rh[t], W_hhT, out=scratch)
        g += scratch
        np.tanh(g, out=g)
        h = hs[t + 1]  # h_t = g_t + z_t ⊙ (h_{t-1} - g_t)
        np.subtract(hs[t], g, out=h)
        h *= z
        h += g

    loss, dW_hy, db_y, dh_out = _head(params, hs[1:].reshape(T * m, n), Y, ws)
    dhs = dh_out.reshape(T, m, n)

    # the local derivatives of every step at once: δ[z,g]_t = dh_t ⊙ k[t][:, n:],
    # δr_t = d(r_t ⊙ h_{t-1}) ⊙ k[t][:, :n]
    k = _buffer(ws, "local", (T, m, 3 * n), dtype)
    R, Z, G, H_prev = gates[..., :n], gates[..., n : 2 * n], gates[..., 2 * n :], hs[:-1]
    k_r, k_z, k_g = k[..., :n], k[..., n : 2 * n], k[..., 2 * n :]
    np.subtract(1.0, Z, out=k_z)
    np.multiply(G, G, out=k_g)  # (1 - z_t) ⊙ (1 - g_t²)
    np.subtract(1.0, k_g, out=k_g)
    k_g *= k_z
    k_z *= Z  # (h_{t-1} - g_t) ⊙ z_t ⊙ (1 - z_t)
    np.subtract(H_prev, G, out=k_r)
    k_z *= k_r
    np.subtract(1.0, R, out=k_r)  # h_{t-1} ⊙ r_t ⊙ (1 - r_t)
    k_r *= R
    k_r *= H_prev
    k_zg = k.reshape(T, m, 3, n)[:, :, 1:]

    # backward: d_gates[t] = [δr_t; δz_t; δg_t]^T, the adjoints of the pre-activations
    d_gates = _buffer(ws, "d_gates", (T, m, 3 * n), dtype)
    d_zg = d_gates.reshape(T, m, 3, n)[:, :, 1:]
    dh_next = _buffer(ws, "dh_next", (m, n), dtype)  # dL/dh_t from step t+1
    d_rh = _buffer(ws, "d_rh", (m, n), dtype)  # dL/d(r_t ⊙ h_{t-1}) = W_hh^T δg_t
    dh_next.fill(0.0)
    for t in range(T - 1, -1, -1):
        dh = dhs[t]
        dh += dh_next
        np.multiply(dh[:, None, :], k_zg[t], out=d_zg[t])
        np.matmul(d_gates[t, :, 2 * n :], W_hh, out=d_rh)
        np.multiply(d_rh, k_r[t], out=d_gates[t, :, :n])
        if t == 0:
            break  # dL/dh_0 is not asked for
        np.matmul(d_gates[t, :, : 2 * n], W_rz, out=dh_next)  # dL/dh_{t-1}: through r_t, z_t,
        np.multiply(dh, gates[t, :, n : 2 * n], out=scratch)  # through z_t ⊙ h_{t-1},
        dh_next += scratch
        np.multiply(d_rh, gates[t, :, :n], out=scratch)  # and through r_t ⊙ h_{t-1}
        dh_next += scratch

    D = d_gates.reshape(T * m, 3 * n)
    dW_x = D.T @ X2  # Σ_t δ_t x_t^T, one product over the stacked steps
    dW_rz = D[:, : 2 * n].T @ hs[:-1].reshape(T * m, n)  # Σ_t [δr_t; δz_t] h_{t-1}^T
    dW_hh = D[:, 2 * n :].T @ rh.reshape(T * m, n)  # Σ_t δg_t (r_t ⊙ h_{t-1})^T
    db = D.sum(axis=0).reshape(-1, 1)
    grads = {}
    for j, key in enumerate(GRU_GATES):
        rows = slice(j * n, (j + 1) * n)
        grads[f"W_x{key}"] = dW_x[rows]
        grads[f"b_{key}"] = db[rows]
    grads["W_hr"] = dW_rz[:n]
    grads["W_hz"] = dW_rz[n:]
    grads["W_hh"] = dW_hh
    grads["W_hy"] = dW_hy
    grads["b_y"] = db_y
    return loss, {name: grads[name] for name in parameter_shapes("gru", 1, 1, 1)}


def elman(
    params: dict[str, Array], X: Array, Y: Array, h0: Array | None = None
) -> tuple[float, dict[str, Array]]:
    """Per-step BPTT in the style of min-char-rnn, batched: columns are examples."""
    W_xh, W_hh, W_hy = params["W_xh"], params["W_hh"], params["W_hy"]
    b_h, b_y = params["b_h"], params["b_y"]
    T, m, _ = X.shape
    xs: dict[int, Array] = {}
    hs: dict[int, Array] = {}
    ps: dict[int, Array] = {}
    hs[-1] = np.zeros((W_hh.shape[0], m), X.dtype) if h0 is None else h0.T
    loss = 0.0
    for t in range(T):
        xs[t] = X[t].T
        hs[t] = np.tanh(W_xh @ xs[t] + W_hh @ hs[t - 1] + b_h)
        o = W_hy @ hs[t] + b_y
        e = np.exp(o - o.max(axis=0, keepdims=True))
        ps[t] = e / e.sum(axis=0, keepdims=True)
        loss -= float(np.sum(Y[t].T * np.log(ps[t])))
    dW_xh, dW_hh, dW_hy = np.zeros_like(W_xh), np.zeros_like(W_hh), np.zeros_like(W_hy)
    db_h, db_y = np.zeros_like(b_h), np.zeros_like(b_y)
    dh_next = np.zeros_like(hs[0])
    for t in reversed(range(T)):
        do = (ps[t] - Y[t].T) / m
        dW_hy += do @ hs[t].T
        db_y += do.sum(axis=1, keepdims=True)
        dh = W_hy.T @ do + dh_next
        dz = (1 - hs[t] * hs[t]) * dh
        db_h += dz.sum(axis=1, keepdims=True)
        dW_xh += dz @ xs[t].T
        dW_hh += dz @ hs[t - 1].T
        dh_next = W_hh.T @ dz
    gradients = {"W_xh": dW_xh, "W_hh": dW_hh, "W_hy": dW_hy, "b_h": db_h, "b_y": db_y}
    return loss / m, gradients


def elman_hoisted(
    params: dict[str, Array],
    X: Array,
    Y: Array,
    h0: Array | None = None,
    workspace: Workspace | None = None,
) -> tuple[float, dict[str, Array]]:
    """The Elman RNN in cuDNN's schedule, written by hand: the input projections of all
    steps in one product before the loop, the output layer, loss and its gradient for all
    steps at once (``_head``), only the recurrence in the loops (in place, ``np.dot`` into
    preallocated buffers), the weight gradients as one product over the stacked steps."""
    ws: Workspace = {} if workspace is None else workspace
    W_xh, W_hh, b_h = params["W_xh"], params["W_hh"], params["b_h"]
    T, m, n_in = X.shape
    n = W_hh.shape[0]
    dtype = X.dtype
    X2 = X.reshape(T * m, n_in)
    hs = _buffer(ws, "h", (T + 1, m, n), dtype)  # hs[t] = h_t^T, hs[0] = h_0^T
    _state(h0, hs[0])
    z = _buffer(ws, "z", (T, m, n), dtype)
    np.dot(X2, W_xh.T, out=z.reshape(T * m, n))  # W_xh x_t + b_h, every t at once
    z += b_h.T
    W_hhT = W_hh.T.copy()
    scratch = _buffer(ws, "scratch", (m, n), dtype)
    for t in range(T):
        np.dot(hs[t], W_hhT, out=scratch)
        scratch += z[t]
        np.tanh(scratch, out=hs[t + 1])
    H = hs[1:].reshape(T * m, n)
    loss, dW_hy, db_y, dh_out = _head(params, H, Y, ws)
    dh = dh_out.reshape(T, m, n)
    local = _buffer(ws, "local", (T, m, n), dtype)  # tanh' = 1 - h_t², every t at once
    np.multiply(hs[1:], hs[1:], out=local)
    np.subtract(1.0, local, out=local)
    delta = _buffer(ws, "delta", (T, m, n), dtype)
    np.multiply(dh[T - 1], local[T - 1], out=delta[T - 1])
    for t in range(T - 2, -1, -1):
        np.dot(delta[t + 1], W_hh, out=scratch)
        scratch += dh[t]
        np.multiply(scratch, local[t], out=delta[t])
    D = delta.reshape(T * m, n)
    gradients = {
        "W_xh": D.T @ X2,
        "W_hh": D.T @ hs[:-1].reshape(T * m, n),
        "W_hy": dW_hy,
        "b_h": D.sum(axis=0).reshape(-1, 1),
        "b_y": db_y,
    }
    return loss, gradients


#: The recurrent matrix products of one step of each cell, by their width in units of
#: n_hidden: the gates stacked (Elman 1, LSTM 4); the GRU's two, as r_t must be known
#: before W_hh (r_t ⊙ h_{t-1}) is formed.
RECURRENT_WIDTHS = {"elman": (1,), "lstm": (4,), "gru": (2, 1)}


def floor(
    cell: str,
    params: dict[str, Array],
    X: Array,
    workspace: Workspace | None = None,
    elementwise: bool = True,
) -> Callable[[], None]:
    """The NumPy calls that any BPTT of ``cell`` (with the softmax head) must make, alone:
    a function that makes them into preallocated arrays, whose time is a lower bound.

    Not a BPTT (the values are not used): the batched products, one each, of the input
    projections (X W_x^T, all steps), the output layer (H W_hy^T) and its adjoint
    (dO W_hy), the weight gradients (D^T X, D^T H_prev, dO^T H); every step's recurrent
    products forward and backward, T - 1 each (h_0 = 0 needs none forward, and
    nothing flows back from step 1 to h_0); and one elementwise call per step each way
    (the nonlinearities of the step's pre-activations forward, the product with their
    derivatives backward), over the (m, gates * n_hidden) block of the step: the
    recurrence gives no way to batch these over the steps.
    Nothing else (biases, softmax, loss, the gates' other elementwise terms) is counted;
    ``elementwise=False`` leaves out the elementwise calls too (the matrix products alone).
    """
    ws: Workspace = {} if workspace is None else workspace
    T, m, n_in = X.shape
    n_out, n = params["W_hy"].shape
    dtype = X.dtype
    widths = [k * n for k in RECURRENT_WIDTHS[cell]]
    G = sum(widths)
    rng = np.random.default_rng(0)

    def array(name: str, shape: tuple[int, ...], scale: float = 0.0) -> Array:
        out = _buffer(ws, name, shape, dtype)
        out[...] = rng.normal(0.0, scale, shape) if scale else 0.5
        return out

    X2 = X.reshape(T * m, n_in)
    W_xT = array("W_xT", (n_in, G), 1 / np.sqrt(n_in))
    W_h = [array(f"W_h{j}", (w, n), 1 / np.sqrt(n)) for j, w in enumerate(widths)]
    W_hT = [w.T.copy() for w in W_h]
    W_hy = params["W_hy"]
    pre = array("pre", (T, m, G))  # the pre-activations, (m, G) a step
    recurrent = [array(f"recurrent{j}", (m, w)) for j, w in enumerate(widths)]
    hs = array("hs", (T + 1, m, n))  # h_0 .. h_T
    scores = array("scores", (T * m, n_out))
    d_scores = array("d_scores", (T * m, n_out), 0.1)
    dh = array("dh", (T, m, n))
    local = array("local", (T, m, G), 0.1)  # the nonlinearities' derivatives
    adjoint = array("adjoint", (T, m, G), 0.1)  # the adjoints of their outputs
    delta = array("delta", (T, m, G), 0.1)
    dh_next = array("dh_next", (m, n))
    dW_xT = array("dW_x", (G, n_in))
    dW_h = array("dW_h", (G, n))
    dW_hy = array("dW_hy", (n_out, n))
    H = hs[1:].reshape(T * m, n)
    H_prev = hs[:-1].reshape(T * m, n)
    D = delta.reshape(T * m, G)
    columns = [slice(sum(widths[:j]), sum(widths[: j + 1])) for j in range(len(widths))]

    def run() -> None:
        np.dot(X2, W_xT, out=pre.reshape(T * m, G))
        for t in range(T):
            if t:
                for W, out in zip(W_hT, recurrent, strict=True):
                    np.dot(hs[t], W, out=out)
            if elementwise:
                np.tanh(pre[t], out=pre[t])
        np.dot(H, W_hy.T, out=scores)
        np.dot(d_scores, W_hy, out=dh.reshape(T * m, n))
        for t in range(T - 1, -1, -1):
            if elementwise:
                np.multiply(adjoint[t], local[t], out=delta[t])
            if t:
                for W, cols in zip(W_h, columns, strict=True):
                    np.dot(delta[t, :, cols], W, out=dh_next)
        np.dot(D.T, X2, out=dW_xT)
        np.dot(D[m:].T, H_prev[m:], out=dW_h)
        np.dot(d_scores.T, H, out=dW_hy)

    return run


#: The hoisted (cuDNN-schedule) baseline of each cell: the gated ones are hoisted already.
HOISTED: dict[str, Callable[..., tuple[float, dict[str, Array]]]] = {
    "elman": elman_hoisted,
    "lstm": lstm,
    "gru": gru,
}


#: The baseline of each cell, by the cell's name.
BASELINES: dict[str, Callable[..., tuple[float, dict[str, Array]]]] = {
    "elman": elman,
    "lstm": lstm,
    "gru": gru,
}


#: How ``symbptt.emit_numpy`` refuses a cell whose code generation is not written yet
#: (issue 9): a role of the Elman cell looked up and not found (KeyError) or a schedule
#: it does not recognise (NotImplementedError).  Nothing else is caught.
NOT_EMITTED = (KeyError, NotImplementedError)


def generated_module(cell: str) -> tuple[Any, str]:
    """The generated rolled module of ``cell`` in the xh notation, with the head and loss
    of these baselines (softmax, cross-entropy, sum over time, mean over the batch).

    Returns ``(module, "")``, or ``(None, why)`` when ``symbptt.emit_numpy`` refuses the
    cell with one of ``NOT_EMITTED`` (``why`` names the exception and its message).
    """
    import symbptt  # here, so that the baselines themselves need NumPy only

    spec = symbptt.ModelSpec(
        cell=cell,
        steps=4,
        notation="xh",
        output="softmax",
        loss="cross_entropy",
        mode="many_to_many",
        time_reduction="sum",
        batch_reduction="mean",
    )
    try:
        source = symbptt.emit_numpy(spec)
    except NOT_EMITTED as error:
        return None, f"symbptt.emit_numpy(cell={cell!r}) raised {type(error).__name__}: {error}"
    return symbptt.load_module(source), ""
