"""Runtime of the generated rolled module against a hand-written per-step NumPy BPTT.

    python benchmarks/runtime.py [--repeats N] [--quick]

One process, one BLAS thread (set before NumPy is imported), the two
implementations called alternately on the same data, the median of many
calls each; the ratio is generated / hand-written (lower is better), both
computing the loss and every parameter gradient (``loss_and_gradients``).
The model is the xh preset's (tanh hidden, softmax output, cross-entropy,
sum over time, mean over the batch), column layout as in min-char-rnn.
When PyTorch is importable (an optional extra, not a dependency), a second
interleaved pass times ``torch.nn.RNN`` + ``nn.Linear`` + the loss with
``backward()`` (one thread) and prints generated / torch: that pass is kept
apart because torch's calls evict the caches the other two share.
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402 - after the thread settings
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import symbptt  # noqa: E402

SIZES = [(25, 1, 65, 100, 65), (50, 32, 64, 128, 64), (100, 64, 256, 512, 256), (10, 1, 4, 8, 4)]
TARGETS = {SIZES[0]: 0.25, SIZES[1]: 0.85, SIZES[2]: 0.95, SIZES[3]: 0.35}
SPEC = symbptt.ModelSpec(steps=25, notation="xh", hidden="tanh", output="softmax")


def hand_written(params: dict[str, Any], X: Any, Y: Any, h0: Any) -> tuple[float, dict[str, Any]]:
    """Per-step BPTT in the style of min-char-rnn, batched: columns are examples."""
    W_xh, W_hh, W_hy = params["W_xh"], params["W_hh"], params["W_hy"]
    b_h, b_y = params["b_h"], params["b_y"]
    T, m, _ = X.shape
    xs, hs, ps = {}, {}, {}
    hs[-1] = h0.T
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


def torch_step(sizes: tuple[int, ...], dtype: Any) -> Callable[[], Any] | None:
    """torch.nn.RNN + nn.Linear + cross-entropy with backward(), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    T, m, n_in, n_hidden, n_out = sizes
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    rnn = torch.nn.RNN(n_in, n_hidden, nonlinearity="tanh").to(torch_dtype)
    linear = torch.nn.Linear(n_hidden, n_out).to(torch_dtype)
    x = torch.randn(T, m, n_in, dtype=torch_dtype)
    labels = torch.randint(0, n_out, (T * m,))
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

    def step() -> Any:
        rnn.zero_grad(set_to_none=True)
        linear.zero_grad(set_to_none=True)
        out, _ = rnn(x)
        loss = loss_fn(linear(out).reshape(T * m, n_out), labels) / m
        loss.backward()
        return loss

    return step


def data(sizes: tuple[int, ...], dtype: Any, module: Any) -> tuple[Any, ...]:
    T, m, n_in, n_hidden, n_out = sizes
    rng = np.random.default_rng(0)
    params = module.init_params(n_in, n_hidden, n_out, rng=rng, dtype=dtype)
    params["b_h"][:] = rng.normal(scale=0.1, size=(n_hidden, 1))
    params["b_y"][:] = rng.normal(scale=0.1, size=(n_out, 1))
    X = rng.normal(size=(T, m, n_in)).astype(dtype)
    Y = np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, size=(T, m))]
    h0 = np.zeros((m, n_hidden), dtype)
    return params, X, Y, h0


def median_times(functions: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Median wall time of each function, calling them in turn (interleaved)."""
    times: list[list[float]] = [[] for _ in functions]
    for function in functions:  # warm up: caches, workspaces
        function()
    for _ in range(repeats):
        for i, function in enumerate(functions):
            start = time.perf_counter()
            function()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def repeats_for(sizes: tuple[int, ...], base: int) -> int:
    T, m, n_in, n_hidden, n_out = sizes
    work = T * m * n_hidden * (n_in + n_hidden + n_out)
    return max(7, min(base, int(base * 2e5 / max(work, 1))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="calls per size (at most)")
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke test")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    args = parser.parse_args()
    base = 10 if args.quick else args.repeats
    module = symbptt.load_module(symbptt.emit_numpy(SPEC))
    print(f"symbptt {symbptt.__version__}, NumPy {np.__version__}, one BLAS thread")
    print(f"model: {SPEC.notation} notation, {SPEC.hidden}, {SPEC.output}, {SPEC.loss}")
    header = f"{'(T, m, n_in, n_hidden, n_out)':32} {'dtype':8} {'generated':>11} {'by hand':>11}"
    print(header + f" {'ratio':>6} {'target':>6} {'vs torch':>9}")
    failed = False
    for sizes in SIZES:
        for dtype in (np.float64, np.float32):
            params, X, Y, h0 = data(sizes, dtype, module)
            loss, grads = module.loss_and_gradients(params, X, Y, h0)
            ref_loss, ref_grads = hand_written(params, X, Y, h0)
            tol = 1e-9 if dtype == np.float64 else 1e-3
            assert abs(loss - ref_loss) <= tol * abs(ref_loss), (loss, ref_loss)
            for name, value in grads.items():
                scale = np.abs(ref_grads[name]).max() + 1e-30
                assert np.abs(value - ref_grads[name]).max() <= tol * 10 * scale, name
            data_args = (params, X, Y, h0)

            def generated(a: tuple[Any, ...] = data_args) -> Any:
                return module.loss_and_gradients(*a)

            def by_hand(a: tuple[Any, ...] = data_args) -> Any:
                return hand_written(*a)

            repeats = repeats_for(sizes, base)
            medians = median_times([generated, by_hand], repeats)
            ratio = medians[0] / medians[1]
            torch_call = None if args.no_torch else torch_step(sizes, dtype)
            versus = f"{'-':>9}"
            if torch_call is not None:  # a pass of its own: torch's calls evict the caches
                mine, theirs = median_times([generated, torch_call], repeats)
                versus = f"{mine / theirs:9.3f}"
            target = TARGETS[sizes]
            failed |= ratio > target
            print(
                f"{sizes!s:32} {np.dtype(dtype).name:8} {medians[0] * 1e3:9.3f}ms"
                f" {medians[1] * 1e3:9.3f}ms {ratio:6.3f} {target:6.2f} {versus}"
            )
    print("all targets met" if not failed else "some targets missed")


if __name__ == "__main__":
    main()
