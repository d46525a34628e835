"""Runtime of a generated composed module against hand-written hoisted NumPy (issue 10).

    python benchmarks/compose.py [--repeats N] [--quick] [--no-jax] [--no-torch]

The model: a 2-layer bidirectional LSTM (the cell file's equations, xh
notation), masked with random lengths, softmax output, cross-entropy summed
over each example's real steps and averaged over the batch, at
(T, m, n_in, n_hidden, n_out) = (50, 32, 64, 128, 64) (``--quick``: T = 12).
Two generated modules are timed: the rolled one (``symbptt.emit_numpy(spec)``,
any T: one loop per unit over the derivation's generic step, written in place,
its arrays of the steps kept between calls; docs/composition.md) and the
unrolled one (``unrolled=True``, straight-line code for T steps).

The baseline, :func:`lstm2_bidirectional`, is written as the gated baselines of
``baselines.py`` are (CS231n-style): per unit, the input projections of every
step in one product before the loop, the local derivatives of every step at
once, the parameter gradients as one product over the stacked steps after the
loop, and what a layer sends to the layer below as one product over all steps.
It is checked first against the generated modules' loss and gradients (to
1e-10) at a small size and at the size timed.

One process, one BLAS thread (threadpoolctl, else the thread variables set
before NumPy is imported), float64, the two taking turns on the same data in
blocks of calls (``benchmarks/timing.py``), the median of many calls each; a
ratio is generated / hand-written
(lower is better), both computing the loss and every parameter gradient.
OpenBLAS settings that slow current NumPy here are removed from this
process's environment before NumPy is imported (../shared/FACTS.md).

Then, where installed, the generated JAX module (rolled: ``jax.lax.scan``)
against ``jax.jit(jax.value_and_grad)`` of the model written by hand with one
scan per unit (:func:`jax_peer_loss`), and the generated torch module
(``loss(...).backward()``) against ``nn.LSTM(num_layers=2, bidirectional=True)``
on packed sequences with ``nn.Linear`` and the masked cross-entropy, autograd
(:func:`torch_peer`): each checked against the NumPy baseline first, one thread
each; the ratio is generated / the framework's autodiff (target <= 1.0).
"""

from __future__ import annotations

import importlib
import importlib.util
import os

for _variable in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_variable, None)
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
THREADPOOLCTL = importlib.util.find_spec("threadpoolctl") is not None
if not THREADPOOLCTL:
    for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_variable] = "1"

import argparse  # noqa: E402 - after the environment settings
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from timing import median_times  # noqa: E402 - benchmarks/timing.py: run as a script

import symbptt  # noqa: E402

Array = NDArray[Any]
SIZES = (50, 32, 64, 128, 64)  # (T, m, n_in, n_hidden, n_out)
QUICK = (12, 32, 64, 128, 64)
CHECK = (5, 4, 3, 4, 3)
GATES = ("o", "i", "f", "c")  # stacked so that the three sigmoid gates are one block
UNITS = ("1f", "1b", "2f", "2b")


def spec(steps: int) -> symbptt.ModelSpec:
    return symbptt.ModelSpec(
        cell="lstm",
        notation="xh",
        steps=steps,
        layers=2,
        direction="bidirectional",
        masked=True,
        output="softmax",
        loss="cross_entropy",
        time_reduction="sum",
        batch_reduction="mean",
    )


def _sigmoid_(a: Array) -> None:
    a *= 0.5
    np.tanh(a, out=a)
    a *= 0.5
    a += 0.5


def _unit_forward(
    inputs: list[Array], W_x: list[Array], W_h: Array, b: Array, M: Array, reverse: bool
) -> dict[str, Array]:
    """One LSTM unit over every step (t = T..1 when ``reverse``), masked; zero initial states.

    ``inputs`` are (T, m, k) arrays the unit reads, ``W_x`` their stacked gate weights
    (4n, k); ``M`` is (T, m, 1).  Returns what the backward pass reads.
    """
    T, m, _ = inputs[0].shape
    n = W_h.shape[1]
    gates = np.empty((T, m, 4 * n))
    flat = gates.reshape(T * m, 4 * n)
    np.matmul(inputs[0].reshape(T * m, -1), W_x[0].T, out=flat)  # every step at once
    for x, w in zip(inputs[1:], W_x[1:], strict=True):
        flat += x.reshape(T * m, -1) @ w.T
    flat += b.T
    h = np.empty((T, m, n))
    c = np.empty((T, m, n))
    h_prev = np.empty((T, m, n))  # the state each step reads (t - 1, or t + 1 in reverse)
    c_prev = np.empty((T, m, n))
    tanh_c = np.empty((T, m, n))  # tanh of each step's candidate cell state
    hp = np.zeros((m, n))
    cp = np.zeros((m, n))
    W_hT = W_h.T
    scratch = np.empty((m, n))
    for t in range(T - 1, -1, -1) if reverse else range(T):
        h_prev[t], c_prev[t] = hp, cp
        a = gates[t]
        a += hp @ W_hT
        o, i, f, g = a[:, :n], a[:, n : 2 * n], a[:, 2 * n : 3 * n], a[:, 3 * n :]
        _sigmoid_(a[:, : 3 * n])
        np.tanh(g, out=g)
        c_new = f * cp
        np.multiply(i, g, out=scratch)
        c_new += scratch
        np.tanh(c_new, out=tanh_c[t])
        h_new = o * tanh_c[t]
        # a padded step carries both states: s_t = s_prev + M_t (s_new - s_prev)
        c_new -= cp
        c_new *= M[t]
        c_new += cp
        h_new -= hp
        h_new *= M[t]
        h_new += hp
        c[t], h[t] = c_new, h_new
        hp, cp = h[t], c[t]
    return {"gates": gates, "h": h, "h_prev": h_prev, "c_prev": c_prev, "tanh_c": tanh_c}


def _unit_backward(
    fw: dict[str, Array], dh_out: Array, W_h: Array, M: Array, reverse: bool
) -> Array:
    """The adjoints of the unit's stacked gate pre-activations, (T, m, 4n), given dL/dh_t
    from above (``dh_out``, every step)."""
    gates, tanh_c, c_prev = fw["gates"], fw["tanh_c"], fw["c_prev"]
    T, m, n = tanh_c.shape
    o, i, f, g = (gates[..., k * n : (k + 1) * n] for k in range(4))
    k = np.empty((T, m, 4 * n))  # the local derivatives of every step at once
    k[..., :n] = tanh_c * o * (1 - o)
    k[..., n : 2 * n] = g * i * (1 - i)
    k[..., 2 * n : 3 * n] = c_prev * f * (1 - f)
    k[..., 3 * n :] = i * (1 - g * g)
    k_c = o * (1 - tanh_c * tanh_c)
    k_ifg = k.reshape(T, m, 4, n)[:, :, 1:]
    d_gates = np.empty((T, m, 4 * n))
    d_ifg = d_gates.reshape(T, m, 4, n)[:, :, 1:]
    dh_carry = np.zeros((m, n))
    dc = np.zeros((m, n))
    for t in range(T) if reverse else range(T - 1, -1, -1):
        dh = dh_out[t] + dh_carry
        dh_new = M[t] * dh  # through the candidate; the rest is carried to the previous state
        dc_new = M[t] * dc
        dc_new += dh_new * k_c[t]
        np.multiply(dh_new, k[t, :, :n], out=d_gates[t, :, :n])
        np.multiply(dc_new[:, None, :], k_ifg[t], out=d_ifg[t])
        dh -= dh_new
        dh_carry = d_gates[t] @ W_h
        dh_carry += dh
        dc -= M[t] * dc
        dc += dc_new * f[t]
    return d_gates


def lstm2_bidirectional(
    params: dict[str, Array], X: Array, Y: Array, mask: Array
) -> tuple[float, dict[str, Array]]:
    """The loss and every parameter gradient of the benchmark's model (zero initial states)."""
    T, m, _ = X.shape
    M = mask.astype(X.dtype)[:, :, None]

    def stack(name: str) -> Array:
        return np.concatenate([params[name.format(g=g)] for g in GATES])

    W_h = {u: stack("W_h{g}_" + u) for u in UNITS}
    b = {u: stack("b_{g}_" + u) for u in UNITS}
    W_x = {"1f": [stack("W_x{g}_1f")], "1b": [stack("W_x{g}_1b")]}
    for u in ("2f", "2b"):
        W_x[u] = [stack("W_x{g}_" + u + "_f"), stack("W_x{g}_" + u + "_b")]
    fw: dict[str, dict[str, Array]] = {}
    for u in ("1f", "1b"):
        fw[u] = _unit_forward([X], W_x[u], W_h[u], b[u], M, u.endswith("b"))
    below = [fw["1f"]["h"], fw["1b"]["h"]]
    for u in ("2f", "2b"):
        fw[u] = _unit_forward(below, W_x[u], W_h[u], b[u], M, u.endswith("b"))

    # the output layer and loss, every step at once; a padded step's loss counts zero
    hf, hb = fw["2f"]["h"].reshape(T * m, -1), fw["2b"]["h"].reshape(T * m, -1)
    W_f, W_b = params["W_hy_f"], params["W_hy_b"]
    scores = hf @ W_f.T
    scores += hb @ W_b.T
    scores += params["b_y"].T
    scores -= scores.max(axis=1, keepdims=True)
    probabilities = np.exp(scores)
    sums = probabilities.sum(axis=1, keepdims=True)
    probabilities /= sums
    scores -= np.log(sums)
    Y2 = Y.reshape(T * m, -1)
    M2 = M.reshape(T * m, 1)
    loss = -float(np.vdot(Y2 * M2, scores)) / m
    d_scores = probabilities
    d_scores -= Y2
    d_scores *= M2 / m
    grads = {
        "W_hy_f": d_scores.T @ hf,
        "W_hy_b": d_scores.T @ hb,
        "b_y": d_scores.sum(axis=0)[:, None],
    }
    dh_out = {
        "2f": (d_scores @ W_f).reshape(T, m, -1),
        "2b": (d_scores @ W_b).reshape(T, m, -1),
    }
    D: dict[str, Array] = {}
    for u in ("2f", "2b"):
        D[u] = _unit_backward(fw[u], dh_out[u], W_h[u], M, u.endswith("b")).reshape(T * m, -1)
    for j, u in enumerate(("1f", "1b")):  # what layer 2 sends down, every step at once
        dh_out[u] = (D["2f"] @ W_x["2f"][j] + D["2b"] @ W_x["2b"][j]).reshape(T, m, -1)
        D[u] = _unit_backward(fw[u], dh_out[u], W_h[u], M, u.endswith("b")).reshape(T * m, -1)

    n = W_h["1f"].shape[1]
    for u in UNITS:
        reads = [X] if u.startswith("1") else below
        suffixes = [""] if u.startswith("1") else ["_f", "_b"]
        dW_h = D[u].T @ fw[u]["h_prev"].reshape(T * m, n)
        db = D[u].sum(axis=0)[:, None]
        dW_x = [D[u].T @ x.reshape(T * m, -1) for x in reads]
        for k, gate in enumerate(GATES):
            rows = slice(k * n, (k + 1) * n)
            grads[f"W_h{gate}_{u}"] = dW_h[rows]
            grads[f"b_{gate}_{u}"] = db[rows]
            for suffix, dw in zip(suffixes, dW_x, strict=True):
                grads[f"W_x{gate}_{u}{suffix}"] = dw[rows]
    return loss, grads


def jax_peer_loss(params: dict[str, Any], X: Any, Y: Any, mask: Any) -> Any:
    """The benchmark's model written by hand in JAX, for ``jax.value_and_grad``: one
    ``lax.scan`` per unit (a backward unit's with ``reverse=True``), zero initial states,
    the input projections of every step before the scan."""
    import jax
    import jax.numpy as jnp

    m = X.shape[1]
    M = mask.astype(X.dtype)[:, :, None]

    def stack(name: str) -> Any:
        return jnp.concatenate([params[name.format(g=g)] for g in GATES])

    def unit(inputs: list[tuple[Any, Any]], u: str) -> Any:
        W_h, b = stack("W_h{g}_" + u), stack("b_{g}_" + u)
        n = W_h.shape[1]
        projected = sum(x @ w.T for x, w in inputs) + b.T  # (T, m, 4n)

        def step(carry: Any, at: Any) -> Any:
            h, c = carry
            a, mask_t = at
            a = a + h @ W_h.T
            o, i, f = (jax.nn.sigmoid(a[:, k * n : (k + 1) * n]) for k in range(3))
            c_new = f * c + i * jnp.tanh(a[:, 3 * n :])
            h_new = o * jnp.tanh(c_new)
            h, c = h + mask_t * (h_new - h), c + mask_t * (c_new - c)
            return (h, c), h

        zeros = jnp.zeros((m, n), X.dtype)
        _, h = jax.lax.scan(step, (zeros, zeros), (projected, M), reverse=u.endswith("b"))
        return h

    below = [unit([(X, stack("W_x{g}_" + u))], u) for u in ("1f", "1b")]
    top = [
        unit([(h, stack("W_x{g}_" + u + s)) for h, s in zip(below, ("_f", "_b"), strict=True)], u)
        for u in ("2f", "2b")
    ]
    scores = top[0] @ params["W_hy_f"].T + top[1] @ params["W_hy_b"].T + params["b_y"].T
    return -(M * Y * jax.nn.log_softmax(scores, axis=-1)).sum() / m


def jax_pass(sizes: tuple[int, ...], repeats: int, data: tuple[Any, ...]) -> None:
    """The generated JAX module (rolled: ``jax.lax.scan``) against JAX autodiff of
    :func:`jax_peer_loss`: each checked against the NumPy baseline first, then its first
    call (``jax.jit`` tracing and XLA compiling) and the median of its calls."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    module = symbptt.load_module(symbptt.emit(spec(sizes[0]), backend="jax"))
    params, X, Y, mask = data
    reference = lstm2_bidirectional(params, X, Y, mask)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    x, y, k = jnp.asarray(X), jnp.asarray(Y), jnp.asarray(mask)
    peer = jax.jit(jax.value_and_grad(jax_peer_loss))
    calls = {
        "generated JAX module": lambda: module.loss_and_gradients(p, x, y, mask=k),
        "jit(value_and_grad) by hand": lambda: peer(p, x, y, k),
    }
    firsts = []
    for name, call in calls.items():
        start = time.perf_counter()
        loss, grads = jax.block_until_ready(call())
        firsts.append(time.perf_counter() - start)
        worst = abs(float(loss) - reference[0]) / abs(reference[0])
        for key, g in reference[1].items():
            error = float(np.abs(np.asarray(grads[key]) - g).max())
            worst = max(worst, error / max(float(np.abs(g).max()), 1e-300))
        if worst > 1e-10:
            raise SystemExit(f"{name} differs from the baseline: {worst:.1e}")
    steps = [lambda c=c: jax.block_until_ready(c()) for c in calls.values()]
    times = median_times(steps, repeats)
    print(f"JAX (one XLA thread), the same model and sizes, median of {repeats}:")
    for name, first, seconds in zip(calls, firsts, times, strict=True):
        print(f"  {name:<28} {seconds * 1e3:8.2f} ms   first call {first:6.1f} s")
    print(f"  (ratio: generated / autodiff {times[0] / times[1]:.2f}; target <= 1.0)")


#: nn.LSTM's gate order (i, f, g, o), g being the cell file's c
TORCH_GATES = ("i", "f", "c", "o")


def torch_peer(params: dict[str, Any], X: Any, Y: Any, mask: Any) -> tuple[Any, Any]:
    """(step, gradients): ``nn.LSTM(num_layers=2, bidirectional=True)`` on the packed
    sequences, ``nn.Linear`` and the masked cross-entropy with ``backward()``, holding
    ``params`` (the second recurrent biases zero), and its gradients in the module's names."""
    import torch

    T, m, n_in = X.shape
    n = params["W_hi_1f"].shape[0]
    lstm = torch.nn.LSTM(n_in, n, num_layers=2, bidirectional=True, dtype=torch.float64)
    head = torch.nn.Linear(2 * n, params["W_hy_f"].shape[0], dtype=torch.float64)
    where = {"1f": "l0", "1b": "l0_reverse", "2f": "l1", "2b": "l1_reverse"}

    def blocks(unit: str, kind: str) -> Any:
        if kind == "x" and unit.startswith("2"):  # the two directions below, side by side
            return np.concatenate(
                [
                    np.hstack([params[f"W_x{g}_{unit}_f"], params[f"W_x{g}_{unit}_b"]])
                    for g in TORCH_GATES
                ]
            )
        if kind == "bias":
            return np.concatenate([params[f"b_{g}_{unit}"][:, 0] for g in TORCH_GATES])
        return np.concatenate([params[f"W_{kind}{g}_{unit}"] for g in TORCH_GATES])

    with torch.no_grad():
        for unit, suffix in where.items():
            getattr(lstm, f"weight_ih_{suffix}").copy_(torch.from_numpy(blocks(unit, "x")))
            getattr(lstm, f"weight_hh_{suffix}").copy_(torch.from_numpy(blocks(unit, "h")))
            getattr(lstm, f"bias_ih_{suffix}").copy_(torch.from_numpy(blocks(unit, "bias")))
            getattr(lstm, f"bias_hh_{suffix}").zero_()
        head.weight.copy_(torch.from_numpy(np.hstack([params["W_hy_f"], params["W_hy_b"]])))
        head.bias.copy_(torch.from_numpy(params["b_y"][:, 0]))
    x = torch.from_numpy(X)
    lengths = torch.from_numpy(mask.sum(axis=0).astype(np.int64))
    labels = torch.from_numpy(Y.argmax(axis=-1))
    labels[torch.from_numpy(mask == 0)] = -100  # padded steps: no loss

    def step() -> Any:
        lstm.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out = torch.nn.utils.rnn.pad_packed_sequence(lstm(packed)[0], total_length=T)[0]
        scores = head(out).reshape(T * m, -1)
        loss = (
            torch.nn.functional.cross_entropy(
                scores, labels.reshape(-1), ignore_index=-100, reduction="sum"
            )
            / m
        )
        loss.backward()
        return loss

    def gradients() -> tuple[float, dict[str, Any]]:
        loss = float(step().detach())
        grads: dict[str, Any] = {}
        for unit, suffix in where.items():
            w_ih, w_hh, bias = (
                getattr(lstm, f"{w}_{suffix}").grad.numpy()
                for w in ("weight_ih", "weight_hh", "bias_ih")
            )
            for k, g in enumerate(TORCH_GATES):
                rows = slice(k * n, (k + 1) * n)
                if unit.startswith("1"):
                    grads[f"W_x{g}_{unit}"] = w_ih[rows]
                else:
                    grads[f"W_x{g}_{unit}_f"], grads[f"W_x{g}_{unit}_b"] = (
                        w_ih[rows, :n],
                        w_ih[rows, n:],
                    )
                grads[f"W_h{g}_{unit}"] = w_hh[rows]
                grads[f"b_{g}_{unit}"] = bias[rows, None]
        weight = head.weight.grad.numpy()
        grads |= {
            "W_hy_f": weight[:, :n],
            "W_hy_b": weight[:, n:],
            "b_y": head.bias.grad.numpy()[:, None],
        }
        return loss, grads

    return step, gradients


def torch_pass(sizes: tuple[int, ...], repeats: int, data: tuple[Any, ...]) -> None:
    """The generated torch module (``loss(...).backward()``: its BPTT as the backward of a
    ``torch.autograd.Function``) against torch autograd of :func:`torch_peer`: each checked
    against the NumPy baseline first, then the median of their calls."""
    import torch

    torch.set_num_threads(1)
    module = symbptt.load_module(symbptt.emit(spec(sizes[0]), backend="torch"))
    params, X, Y, mask = data
    reference = lstm2_bidirectional(params, X, Y, mask)
    leaves = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in params.items()}
    x, y, k = torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(mask)

    def generated() -> Any:
        for leaf in leaves.values():
            leaf.grad = None
        loss = module.loss(leaves, x, y, mask=k)
        loss.backward()
        return loss

    def generated_gradients() -> tuple[float, dict[str, Any]]:
        loss = float(generated().detach())
        return loss, {name: leaf.grad.numpy() for name, leaf in leaves.items()}

    peer, peer_gradients = torch_peer(params, X, Y, mask)
    for name, gradients in (
        ("generated torch module", generated_gradients),
        ("torch autograd", peer_gradients),
    ):
        loss, grads = gradients()
        worst = abs(loss - reference[0]) / abs(reference[0])
        for key, g in reference[1].items():
            error = float(np.abs(grads[key] - g).max())
            worst = max(worst, error / max(float(np.abs(g).max()), 1e-300))
        if worst > 1e-10:
            raise SystemExit(f"{name} differs from the baseline: {worst:.1e}")
    times = median_times([generated, peer], repeats)
    print(f"torch (one thread), the same model and sizes, median of {repeats}:")
    print(f"  {'generated torch module':<28} {times[0] * 1e3:8.2f} ms")
    print(f"  {'nn.LSTM + autograd':<28} {times[1] * 1e3:8.2f} ms")
    print(f"  (ratio: generated / autograd {times[0] / times[1]:.2f}; target <= 1.0)")


def problem(module: Any, sizes: tuple[int, ...], rng: np.random.Generator) -> tuple[Any, ...]:
    T, m, n_in, n_h, n_out = sizes
    params = module.init_params(n_in, n_h, n_out, rng=rng)
    params = {k: rng.normal(scale=0.3, size=v.shape) for k, v in params.items()}
    X = rng.normal(size=(T, m, n_in))
    labels = rng.integers(0, n_out, size=(T, m))
    Y = np.eye(n_out)[labels]
    lengths = rng.integers(1, T + 1, size=m)
    lengths[0] = T
    mask = (np.arange(T)[:, None] < lengths[None, :]).astype(float)
    return params, X, Y, mask


def check(module: Any, sizes: tuple[int, ...], rng: np.random.Generator) -> float:
    """The largest relative difference of the baseline from the generated module."""
    params, X, Y, mask = problem(module, sizes, rng)
    loss, grads = module.loss_and_gradients(params, X, Y, mask=mask)
    mine, my_grads = lstm2_bidirectional(params, X, Y, mask)
    assert set(grads) == set(my_grads), set(grads) ^ set(my_grads)
    worst = abs(mine - loss) / abs(loss)
    for name, g in grads.items():
        scale = max(float(np.abs(g).max()), 1e-300)
        worst = max(worst, float(np.abs(my_grads[name] - g).max()) / scale)
    if worst > 1e-10:
        raise SystemExit(f"the baseline differs from the generated module: {worst:.1e}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help=f"T = {QUICK[0]} instead")
    parser.add_argument("--no-jax", action="store_true", help="leave the JAX pass out")
    parser.add_argument("--no-torch", action="store_true", help="leave the torch pass out")
    args = parser.parse_args()
    if THREADPOOLCTL:
        importlib.import_module("threadpoolctl").threadpool_limits(limits=1)
        threads = "one BLAS thread (threadpoolctl)"
    else:
        threads = "one BLAS thread (environment variables; threadpoolctl is not installed)"
    sizes = QUICK if args.quick else SIZES
    rng = np.random.default_rng(0)
    print(f"{threads}; float64")
    rolled = symbptt.load_module(symbptt.emit_numpy(spec(sizes[0])))
    small = symbptt.load_module(symbptt.emit_numpy(spec(CHECK[0]), unrolled=True))
    for name, module in (("rolled", rolled), ("unrolled", small)):
        difference = check(module, CHECK, rng)
        print(f"baseline vs {name} at {CHECK}: max relative difference {difference:.1e}")
    start = time.perf_counter()
    unrolled = symbptt.load_module(symbptt.emit_numpy(spec(sizes[0]), unrolled=True))
    emitted = time.perf_counter() - start
    print(f"emitting and loading the unrolled module for T = {sizes[0]}: {emitted:.1f} s")
    for name, module in (("rolled", rolled), ("unrolled", unrolled)):
        difference = check(module, sizes, rng)
        print(f"baseline vs {name} at {sizes}: max relative difference {difference:.1e}")
    params, X, Y, mask = problem(rolled, sizes, rng)
    times = median_times(
        [
            lambda: rolled.loss_and_gradients(params, X, Y, mask=mask),
            lambda: unrolled.loss_and_gradients(params, X, Y, mask=mask),
            lambda: lstm2_bidirectional(params, X, Y, mask),
        ],
        args.repeats,
    )
    print(
        f"2-layer bidirectional masked LSTM {sizes} (T, m, n_in, n_hidden, n_out), "
        f"median of {args.repeats}:"
    )
    baseline = times[-1]
    for name, seconds in zip(("generated rolled", "generated unrolled"), times, strict=False):
        print(f"  {name:<28} {seconds * 1e3:8.2f} ms   ratio {seconds / baseline:.2f}")
    print(f"  {'hand-written hoisted NumPy':<28} {baseline * 1e3:8.2f} ms")
    print("  (ratio: generated / hand-written, lower is better; target <= 1.0)")
    data = (params, X, Y, mask)
    if args.no_jax:
        pass
    elif importlib.util.find_spec("jax") is None:
        print("JAX: not timed (not installed)")
    else:
        jax_pass(sizes, args.repeats, data)
    if args.no_torch:
        return
    if importlib.util.find_spec("torch") is None:
        print("torch: not timed (not installed)")
        return
    torch_pass(sizes, args.repeats, data)


if __name__ == "__main__":
    main()
