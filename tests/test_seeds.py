"""The seeds' own gradient formulas, transcribed into the expression language, with verdicts.

Each seed derives BPTT gradients by hand.  Their per-parameter results are
written here in the checker's expression language, in the seed's own notation,
and each verdict symbptt gives is pinned: ``equal`` (with how it was shown),
``not equal`` (with the mistakes the explanation must name) or ``refused``
(an :class:`ExpressionError`: shapes that cannot fit, a step outside the model).

Transcription rules, where a seed leaves room:

* The seeds write chains of Jacobians (∂J/∂ŷ ∂ŷ/∂h ∏ ∂h_j/∂h_{j-1} ∂h_k/∂W).
  The output layer is softmax with cross-entropy, as the presets say, so
  ∂L_t/∂ŷ_t ∂ŷ_t/∂o_t is ŷ_t − y_t; ∂h_j/∂h_{j−1} is diag(1 − h_j²) W for
  tanh; a vector-by-matrix factor ∂h_k/∂W contracts to δ_k h_{k−1}ᵀ.  The
  product ∏_{j=k+1}^{t} is ordered j = t, ..., k+1, which is what ``prod_j``
  builds.
* Column vectors without a batch (000, 001, 003) are single examples:
  batch=1.  002 writes batches (X_t is m × n_0) and no 1/m, so its models sum
  over the batch (batch_reduction="sum"); its many-to-many chains use diag(...)
  and are checked with batch=1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

from symbptt import ExpressionError, ModelSpec
from symbptt.check import check
from symbptt.model.presets import PRESETS

# ---------------------------------------------------------------------------- models
#: 000: U, V, W, J = 1/T sum_t J^(t); h^(t) column vectors, one example.
SPEC_000 = replace(PRESETS["uvw_mean"], batch=1)
#: 001: the "hello" model, W_xh W_hh W_hy, one-hot h, e, l, o.
SPEC_001 = PRESETS["xh_hello"]
#: 002: sequence to vector and sequence to sequence over 3 steps, t = 0, 1, 2.
SPEC_002_M2O = replace(PRESETS["layered_many_to_one"], batch_reduction="sum")
SPEC_002_M2M = replace(PRESETS["layered_many_to_many"], batch_reduction="sum", batch=1)
#: 003: "hello" in the a(t), w_aa notation (y(t) is the prediction, ŷ(t) the target).
SPEC_003 = PRESETS["aa_hello"]


@dataclass(frozen=True)
class Seed:
    """One per-parameter result of a seed, transcribed."""

    id: str
    spec: ModelSpec
    wrt: str
    formula: str
    verdict: str  # "equal", "not equal" or "refused"
    mistakes: tuple[str, ...] = ()  # names the explanation must hold (not equal)
    says: tuple[str, ...] = ()  # phrases the explanation (or the error) must hold
    method: str | None = None  # "symbolic" or None (any) for equal


# 002, many to one: the seed's bracket [∂H_12/∂β_1 + ∂H_12/∂H_11 ∂H_11/∂β_1 + ...]
# written out for t = 2, 1, 0 with the batch kept (elementwise f' instead of diag).
_G2 = "((Y_hat[2] - Y[2]) @ W_2.T)"  # ∂L_2/∂Ŷ_2 ∂Ŷ_2/∂H_12 (through Z2)
_D2 = f"({_G2} * (1 - H1[2]**2))"  # the H_12 term
_D1 = f"(({_D2} @ W_h1.T) * (1 - H1[1]**2))"  # ∂H_12/∂H_11 ∂H_11/∂(.)
_D0 = f"(({_D1} @ W_h1.T) * (1 - H1[0]**2))"  # ∂H_12/∂H_11 ∂H_11/∂H_10 ∂H_10/∂(.)

# 002, many to many, one example: sum over t of the chain from L_t back to step k.
_CHAIN_002 = "(Y_hat[t] - Y[t]) @ W_2.T @ prod_j(diag(1 - H1[j]**2) @ W_h1.T) * (1 - H1[k]**2)"

SEEDS: tuple[Seed, ...] = (
    # ------------------------------------------------------------------ 000 (uvw)
    # J = 1/T sum_t J^(t) and dJ/dV = 1/T sum_t dJ^(t)/dyhat dyhat/dV.
    Seed(
        "000-V",
        SPEC_000,
        "V",
        "sum_t((y_hat[t] - y[t]) @ h[t].T) / T",
        "equal",
        method="symbolic",
    ),
    # dJ^(3)/dW = sum_{k=1}^{3} dJ3/dyhat3 dyhat3/dh3 (prod_{j=k+1}^{3} dh_j/dh_{j-1}) dh_k/dW,
    # the seed's t = 3 example taken for every t, with the 1/T of J.
    Seed(
        "000-W",
        SPEC_000,
        "W",
        "sum_t(sum_k(((prod_j(diag(1 - h[j]**2) @ W).T @ V.T @ (y_hat[t] - y[t]))"
        " * (1 - h[k]**2)) @ h[k-1].T)) / T",
        "equal",
        method="symbolic",
    ),
    Seed(
        "000-U",
        SPEC_000,
        "U",
        "sum_t(sum_k(((prod_j(diag(1 - h[j]**2) @ W).T @ V.T @ (y_hat[t] - y[t]))"
        " * (1 - h[k]**2)) @ x[k].T)) / T",
        "equal",
        method="symbolic",
    ),
    # ------------------------------------------------------------------ 001 (xh)
    # "W_new = W_old - eta dL/dy_t": the update uses the gradient with respect to the
    # output y_t (the seed's output, our y_hat[t]) at the last step, t = T.  Read as
    # dL/dy_hat_T of softmax + cross-entropy, -y[T] / y_hat[T].  (The seed's loss is
    # only "(y - y_hat)"; the preset's cross-entropy is used.)
    Seed(
        "001-update-W_hh",
        SPEC_001,
        "W_hh",
        "-y[T] / y_hat[T]",
        "not equal",
        says=("shapes cannot match", "y_hat[t]"),
    ),
    Seed(
        "001-update-W_hy",
        SPEC_001,
        "W_hy",
        "-y[T] / y_hat[T]",
        "not equal",
        says=("shapes cannot match",),
    ),
    # b_y has the shape of y_t, so the shapes fit; the value is dL/dy_hat_T.
    Seed(
        "001-update-b_y",
        SPEC_001,
        "b_y",
        "-y[T] / y_hat[T]",
        "not equal",
        mistakes=("wrong_quantity",),
        says=("∂L/∂y_hat[4]",),
    ),
    # The other reading, dL/dy_t as the output error dL/do_T = y_hat[T] - y[T]: the
    # last step's term only.
    Seed(
        "001-update-b_y-output-error",
        SPEC_001,
        "b_y",
        "y_hat[T] - y[T]",
        "not equal",
        mistakes=("last_step_only",),
        says=("losses at steps 1, 2, 3",),
    ),
    # ------------------------------------------------------- 002 (layered), many to one
    # "Output layer gradients are only from the final time step": dL/dW_2 = dL_2/dW_2.
    Seed(
        "002-m2o-W_2",
        SPEC_002_M2O,
        "W_2",
        "H1[2].T @ (Y_hat[2] - Y[2])",
        "equal",
        method="symbolic",
    ),
    Seed(
        "002-m2o-beta_2",
        SPEC_002_M2O,
        "beta_2",
        "(ones(1, m) @ (Y_hat[2] - Y[2])).T",
        "equal",
        method="symbolic",
    ),
    # dL/dbeta_1 = dL_2/dYhat_2 dYhat_2/dH_12 [dH_12/dbeta_1 + dH_12/dH_11 dH_11/dbeta_1
    #              + dH_12/dH_11 dH_11/dH_10 dH_10/dbeta_1]; beta_1 is n_1 x 1.
    Seed(
        "002-m2o-beta_1",
        SPEC_002_M2O,
        "beta_1",
        f"(ones(1, m) @ ({_D2} + {_D1} + {_D0})).T",
        "equal",
        method="symbolic",
    ),
    Seed(
        "002-m2o-W_1",
        SPEC_002_M2O,
        "W_1",
        f"X[2].T @ {_D2} + X[1].T @ {_D1} + X[0].T @ {_D0}",
        "equal",
        method="symbolic",
    ),
    # The last term has dH_10/dW_h1 = H_init^T (...) with H_init = 0 ("the initial
    # hidden state is zero"): H1[-1] is the initial state.
    Seed(
        "002-m2o-W_h1",
        SPEC_002_M2O,
        "W_h1",
        f"H1[1].T @ {_D2} + H1[0].T @ {_D1} + H1[-1].T @ {_D0}",
        "equal",
        method="symbolic",
    ),
    # ------------------------------------------------------ 002 (layered), many to many
    # "Output layer gradients are summed from each time step".
    Seed(
        "002-m2m-W_2",
        SPEC_002_M2M,
        "W_2",
        "sum_t(H1[t].T @ (Y_hat[t] - Y[t]))",
        "equal",
        method="symbolic",
    ),
    Seed("002-m2m-beta_2", SPEC_002_M2M, "beta_2", "sum_t((Y_hat[t] - Y[t]).T)", "equal"),
    # dL/dbeta_1 = dL_0/dbeta_1 + dL_1/dbeta_1 + dL_2/dbeta_1, each the bracketed chain.
    Seed(
        "002-m2m-beta_1",
        SPEC_002_M2M,
        "beta_1",
        f"sum_t(sum_k(({_CHAIN_002}).T))",
        "equal",
        method="symbolic",
    ),
    Seed(
        "002-m2m-W_1",
        SPEC_002_M2M,
        "W_1",
        f"sum_t(sum_k(X[k].T @ ({_CHAIN_002})))",
        "equal",
        method="symbolic",
    ),
    Seed(
        "002-m2m-W_h1",
        SPEC_002_M2M,
        "W_h1",
        f"sum_t(sum_k(H1[k-1].T @ ({_CHAIN_002})))",
        "equal",
        method="symbolic",
    ),
    # "L = sum_{t=0}^{T} L_t": with T the number of steps (3 here, steps 0, 1, 2) the
    # sum has one term too many.  (If the seed's T is the last index, it is right.)
    Seed(
        "002-sum-to-T",
        SPEC_002_M2M,
        "W_2",
        "sum_t(H1[t].T @ (Y_hat[t] - Y[t])) + H1[T].T @ (Y_hat[T] - Y[T])",
        "refused",
        says=("outside the model", "0..2", "off by one: Y_hat[3] is one step past the last"),
    ),
    # -------------------------------------------------------------------- 003 (aa)
    # The seed's y(t) is the prediction and yhat(t) the target.  Its a(t) after a
    # column factor is read as a(t)^T (the only reading with the shape of w_ya).  The
    # scanned "[a(m)]^~", "(a(t))^N" are read as squares, "1/pi" as the product
    # prod_{m=k+1}^{i}, and its scalar w_aa [1 - a(m)^2] as the Jacobian
    # da(m)/da(m-1) = diag(1 - a(m)^2) w_aa.
    # "dL(t)/dw_ya = -yhat(t)(1 - y(t)) a(t)", summed over t: the softmax Jacobian's
    # diagonal only.
    Seed(
        "003-w_ya-per-step",
        SPEC_003,
        "w_ya",
        "-sum_t((y_hat[t] * (1 - y[t])) @ a[t].T)",
        "not equal",
        mistakes=("softmax_diagonal",),
        says=("agrees on the target class's row",),
    ),
    # "dL/dw_ya = -sum_t (1 - y(t)) a(t)": the target dropped.
    Seed(
        "003-w_ya",
        SPEC_003,
        "w_ya",
        "-sum_t((1 - y[t]) @ a[t].T)",
        "not equal",
        mistakes=("dropped_target",),
        says=("-(1 - y[t])", "y[t] - y_hat[t]"),
    ),
    # "dL/db_y = -sum_t yhat(t)(1 - y(t))".
    Seed(
        "003-b_y",
        SPEC_003,
        "b_y",
        "-sum_t(y_hat[t] * (1 - y[t]))",
        "not equal",
        mistakes=("softmax_diagonal",),
    ),
    # "Delta b_y = n sum_t (1 - y(t))", i.e. dL/db_y = -sum_t (1 - y(t)).
    Seed(
        "003-b_y-update",
        SPEC_003,
        "b_y",
        "-sum_t(1 - y[t])",
        "not equal",
        mistakes=("dropped_target",),
    ),
    # "dL/dw_aa = -sum_i (1 - y(i)) w_ya sum_k [prod_m w_aa (1 - a(m)^2)] a(k-1)(1 - a(k)^2)"
    # as written (no transposes, w_ya after the output error): the shapes do not fit.
    Seed(
        "003-w_aa-as-written",
        SPEC_003,
        "w_aa",
        "-sum_t(sum_k((1 - y[t]) @ w_ya @ prod_j(w_aa @ diag(1 - a[j]**2))"
        " @ a[k-1] * (1 - a[k]**2)))",
        "refused",
        says=("do not fit for @", "(4, 1)", "(4, n_1)"),
    ),
    # The same with the transposes restored (w_ya^T, the chain transposed, a(k-1)^T):
    # only the dropped target remains.
    Seed(
        "003-w_aa",
        SPEC_003,
        "w_aa",
        "-sum_t(sum_k(((prod_j(diag(1 - a[j]**2) @ w_aa).T @ w_ya.T @ (1 - y[t]))"
        " * (1 - a[k]**2)) @ a[k-1].T))",
        "not equal",
        mistakes=("dropped_target",),
    ),
    # "dL/db_a = -sum_t (1 - y(t)) (1 - tanh(a(t))^2) w_ya" as written: shapes.
    Seed(
        "003-b_a-as-written",
        SPEC_003,
        "b_a",
        "-sum_t((1 - y[t]) * (1 - tanh(a[t])**2) * w_ya)",
        "refused",
        says=("do not fit",),
    ),
    # ... with w_ya^T: the target dropped, no recurrence (only dL(t)/db_a through a(t)),
    # and tanh' applied to a(t), which is already tanh(net_a).
    Seed(
        "003-b_a",
        SPEC_003,
        "b_a",
        "-sum_t((1 - tanh(a[t])**2) * (w_ya.T @ (1 - y[t])))",
        "not equal",
        mistakes=("dropped_target", "dropped_carry", "derivative_of_output"),
        says=("1 - tanh(a[t])**2 where 1 - a[t]**2",),
    ),
    # "Delta b_a = eta sum_t (1 - y(t)) (1 - (a(t))^2) w_ya": the derivative right.
    Seed(
        "003-b_a-update",
        SPEC_003,
        "b_a",
        "-sum_t((1 - a[t]**2) * (w_ya.T @ (1 - y[t])))",
        "not equal",
        mistakes=("dropped_target", "dropped_carry"),
    ),
    # "dL/dw_ax = -sum_t (1 - y(t)) (1 - (a(t))^2) w_ya x(t)".
    Seed(
        "003-w_ax",
        SPEC_003,
        "w_ax",
        "-sum_t(((1 - a[t]**2) * (w_ya.T @ (1 - y[t]))) @ x[t].T)",
        "not equal",
        mistakes=("dropped_target", "dropped_carry"),
        says=("w_aa.T @ delta[t+1]",),
    ),
    # 003's chain for w_aa with its mistakes corrected (target restored): equal.
    Seed(
        "003-w_aa-corrected",
        SPEC_003,
        "w_aa",
        "sum_t(sum_k(((prod_j(diag(1 - a[j]**2) @ w_aa).T @ w_ya.T @ (y[t] - y_hat[t]))"
        " * (1 - a[k]**2)) @ a[k-1].T))",
        "equal",
        method="symbolic",
    ),
)


@pytest.mark.parametrize("seed", SEEDS, ids=[s.id for s in SEEDS])
def test_seed_formula_verdict(seed: Seed) -> None:
    if seed.verdict == "refused":
        with pytest.raises(ExpressionError) as info:
            check(seed.spec, seed.wrt, seed.formula)
        for phrase in seed.says:
            assert phrase in str(info.value)
        return
    result = check(seed.spec, seed.wrt, seed.formula)
    report = result.explain()
    assert result.ok is (seed.verdict == "equal"), report
    if seed.method is not None:
        assert result.method == seed.method, report
    for name in seed.mistakes:
        assert name in result.mistake_names, report
    assert (
        len(result.mistakes) == len(seed.mistakes) or seed.verdict == "equal" or not seed.mistakes
    )
    for phrase in seed.says:
        assert phrase in report, report


def test_the_package_holds_these_formulas() -> None:
    """The verifying stage checks the package's copy (symbptt.checker.seed_formulas) for the
    documents: the same id, spec, parameter and formula as every fixture here."""
    from symbptt.checker.seed_formulas import SEED_FORMULAS

    mine = [(s.id, s.spec, s.wrt, s.formula) for s in SEEDS]
    assert [(f.id, f.spec, f.wrt, f.formula) for f in SEED_FORMULAS] == mine


@pytest.mark.parametrize("seed", ["000", "001", "002", "003"])
def test_every_seeds_formulas_are_in_its_presets_documents(seed: str) -> None:
    """Each seed's formulas are shown by the documents of the presets of its model (000's
    one-example and 002's no-1/m variants too, checked at their own spec and saying so)."""
    from symbptt.checker.seed_formulas import SEED_FORMULAS, for_spec

    mine = [f for f in SEED_FORMULAS if f.seed == seed]
    shown = {f.id for preset in {f.preset for f in mine} for f in for_spec(PRESETS[preset])}
    assert mine and {f.id for f in mine} <= shown
    for preset in {f.preset for f in mine}:  # and no other seed's
        assert {f.seed for f in for_spec(PRESETS[preset])} == {seed}


# ------------------------------------------------------------ classic backward passes
def min_char_rnn(params: dict[str, Any], X: Any, Y: Any, h0: Any) -> dict[str, Any]:
    """The backward pass of Karpathy's min-char-rnn ``lossFun`` (without its clipping).

    One example (m = 1); targets are class indices there, the argmax of Y here.
    """
    Wxh, Whh, Why = params["W_xh"], params["W_hh"], params["W_hy"]
    bh, by = params["b_h"], params["b_y"]
    xs: dict[int, Any] = {}
    hs: dict[int, Any] = {-1: np.zeros((Whh.shape[0], 1)) if h0 is None else h0.T.copy()}
    ps: dict[int, Any] = {}
    for t in range(X.shape[0]):
        xs[t] = X[t].T
        hs[t] = np.tanh(np.dot(Wxh, xs[t]) + np.dot(Whh, hs[t - 1]) + bh)
        ys = np.dot(Why, hs[t]) + by
        ps[t] = np.exp(ys) / np.sum(np.exp(ys))
    dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
    dbh, dby = np.zeros_like(bh), np.zeros_like(by)
    dhnext = np.zeros_like(hs[0])
    for t in reversed(range(X.shape[0])):
        dy = np.copy(ps[t])
        dy[int(np.argmax(Y[t, 0]))] -= 1  # backprop into y
        dWhy += np.dot(dy, hs[t].T)
        dby += dy
        dh = np.dot(Why.T, dy) + dhnext  # backprop into h
        dhraw = (1 - hs[t] * hs[t]) * dh  # backprop through tanh nonlinearity
        dbh += dhraw
        dWxh += np.dot(dhraw, xs[t].T)
        dWhh += np.dot(dhraw, hs[t - 1].T)
        dhnext = np.dot(Whh.T, dhraw)
    return {"W_xh": dWxh, "W_hh": dWhh, "W_hy": dWhy, "b_h": dbh, "b_y": dby}


def rnn_step_forward(x: Any, prev_h: Any, Wx: Any, Wh: Any, b: Any) -> tuple[Any, Any]:
    """CS231n ``rnn_step_forward``: next_h = tanh(prev_h Wh + x Wx + b)."""
    next_h = np.tanh(prev_h @ Wh + x @ Wx + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h: Any, cache: Any) -> tuple[Any, Any, Any, Any, Any]:
    """CS231n ``rnn_step_backward``: dx, dprev_h, dWx, dWh, db."""
    x, prev_h, Wx, Wh, next_h = cache
    dtanh = dnext_h * (1 - next_h**2)
    return dtanh @ Wx.T, dtanh @ Wh.T, x.T @ dtanh, prev_h.T @ dtanh, dtanh.sum(axis=0)


def cs231n_rnn(params: dict[str, Any], X: Any, Y: Any, h0: Any) -> dict[str, Any]:
    """CS231n's RNN captioning backward pass: rnn_backward's step loop, temporal
    affine and temporal softmax loss (summed over time, divided by the batch N).
    Batch-major there ((N, T, D)), so the layered notation's row layout."""
    x = X.transpose(1, 0, 2)
    labels = Y.argmax(axis=2).T
    N, T, _ = x.shape
    Wx, Wh, b = params["W_1"], params["W_h1"], params["beta_1"][:, 0]
    W_vocab, b_vocab = params["W_2"], params["beta_2"][:, 0]
    H = Wh.shape[0]
    prev = np.zeros((N, H)) if h0 is None else h0
    hs, caches = np.zeros((N, T, H)), []
    for t in range(T):
        prev, cache = rnn_step_forward(x[:, t, :], prev, Wx, Wh, b)
        hs[:, t, :] = prev
        caches.append(cache)
    scores = hs.reshape(N * T, H) @ W_vocab + b_vocab  # temporal_affine_forward
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))  # temporal_softmax_loss
    probs /= probs.sum(axis=1, keepdims=True)
    dscores = probs.copy()
    dscores[np.arange(N * T), labels.reshape(N * T)] -= 1
    dscores /= N
    dW_vocab = hs.reshape(N * T, H).T @ dscores  # temporal_affine_backward
    db_vocab = dscores.sum(axis=0)
    dh = (dscores @ W_vocab.T).reshape(N, T, H)
    dWx, dWh, db = np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)
    dprev_h = np.zeros((N, H))
    for t in reversed(range(T)):  # rnn_backward
        _, dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(dh[:, t, :] + dprev_h, caches[t])
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return {
        "W_1": dWx,
        "W_h1": dWh,
        "W_2": dW_vocab,
        "beta_1": db[:, None],
        "beta_2": db_vocab[:, None],
    }


#: min-char-rnn: one example, tanh, softmax + cross-entropy summed over time.
SPEC_MIN_CHAR = PRESETS["xh_hello"]
#: CS231n: batches (row-major), tanh, softmax + cross-entropy summed over time and
#: divided by N (the batch mean).
SPEC_CS231N = PRESETS["layered_many_to_many"]


@pytest.mark.parametrize("wrt", ["W_xh", "W_hh", "W_hy", "b_h", "b_y"])
def test_min_char_rnn_backward_is_equal(wrt: str) -> None:
    result = check(SPEC_MIN_CHAR, wrt, min_char_rnn)
    assert result.ok, result.explain()
    assert result.method.startswith("numeric at 20 points, float64")


@pytest.mark.parametrize("wrt", ["W_1", "W_h1", "W_2", "beta_1", "beta_2"])
def test_cs231n_rnn_backward_is_equal(wrt: str) -> None:
    result = check(SPEC_CS231N, wrt, cs231n_rnn)
    assert result.ok, result.explain()
