"""Runtime of the generated rolled modules against hand-written NumPy BPTT.

    python benchmarks/runtime.py [--repeats N] [--quick] [--cells elman,lstm,gru]
                                 [--skip-large] [--no-torch]

One process, one BLAS thread, float64 (and float32 for Elman), the
implementations called alternately on the same data, the median of many
calls each; the ratio is generated / hand-written (lower is better), both
computing the loss and every parameter gradient (``loss_and_gradients``).
The baselines live in ``benchmarks/baselines.py`` (``tests/test_baselines.py``
proves them):

* Elman: the xh preset's model (tanh hidden, softmax output, cross-entropy,
  sum over time, mean over the batch) against the per-step BPTT of
  min-char-rnn, batched.  When PyTorch is importable (an optional extra, not a
  dependency), a second interleaved pass times ``torch.nn.RNN`` +
  ``nn.Linear`` + the loss with ``backward()`` (one thread) and prints
  generated / torch: that pass is kept apart because torch's calls evict the
  caches the other two share.
* LSTM and GRU (the cell files' equations, the same head and loss) against
  hoisted CS231n-style NumPy (input projections of all steps in one product
  before the loop, parameter gradients as one product over the stacked steps
  after it, in-place buffers).  Each baseline is first checked against central
  finite differences at a small size, and against the generated module's
  gradients (to 1e-10) at every size timed.  While ``symbptt.emit_numpy``
  cannot emit the cell yet, only the baseline is timed and the script says why.
  With PyTorch, a pass of its own times ``torch.nn.LSTM`` / ``torch.nn.GRU``
  (PyTorch's GRU variant: the same work, not the same function) + the same
  head and loss, and prints generated (else baseline) / torch.

OpenBLAS settings that slow current NumPy on these machines
(``OPENBLAS_CORETYPE``, ``OPENBLAS_L2_SIZE``; ../shared/FACTS.md) are removed
from this process's environment before NumPy is imported: this run only.
One BLAS thread: threadpoolctl when it is installed, else the thread variables
set before NumPy is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

UNSET = [name for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if name in os.environ]
for _variable in UNSET:
    del os.environ[_variable]
THREADPOOLCTL = importlib.util.find_spec("threadpoolctl") is not None
if not THREADPOOLCTL:
    for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_variable] = "1"

import argparse  # noqa: E402 - after the environment settings
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import baselines  # noqa: E402 - benchmarks/baselines.py: run as a script, benchmarks/ is on sys.path
import numpy as np  # noqa: E402
import timing  # noqa: E402 - benchmarks/timing.py

import symbptt  # noqa: E402

Sizes = tuple[int, int, int, int, int]  # (T, m, n_in, n_hidden, n_out)
SIZES: list[Sizes] = [
    (25, 1, 65, 100, 65),
    (50, 32, 64, 128, 64),
    (100, 64, 256, 512, 256),
    (10, 1, 4, 8, 4),
]
TARGETS = {SIZES[0]: 0.25, SIZES[1]: 0.85, SIZES[2]: 0.95, SIZES[3]: 0.35}
SPEC = symbptt.ModelSpec(steps=25, notation="xh", hidden="tanh", output="softmax")
LARGE: Sizes = (100, 64, 256, 512, 256)
#: The gated cells' sizes (T, m, n_in, n_hidden, n_out) and target ratio (issue 9).
GATED_SIZES: list[Sizes] = [(25, 1, 65, 100, 65), (50, 32, 64, 128, 64), LARGE]
GATED_TARGET = 1.0
#: The number of stacked gate blocks of each cell (work per step, for the repeats).
GATES = {"elman": 1, "lstm": 4, "gru": 3}
#: The small size of the finite-difference check of the baselines.
CHECK_SIZE: Sizes = (4, 3, 3, 5, 4)
hand_written = baselines.elman


def torch_step(sizes: Sizes, dtype: Any, cell: str = "elman") -> Callable[[], Any] | None:
    """torch.nn.RNN (LSTM, GRU) + nn.Linear + cross-entropy with backward(), or None
    without torch.  torch's GRU is PyTorch's variant (r_t applied to W_hn h_{t-1} + b_hn):
    the same work, not the same function."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    T, m, n_in, n_hidden, n_out = sizes
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    if cell == "lstm":
        rnn: Any = torch.nn.LSTM(n_in, n_hidden)
    elif cell == "gru":
        rnn = torch.nn.GRU(n_in, n_hidden)
    else:
        rnn = torch.nn.RNN(n_in, n_hidden, nonlinearity="tanh")
    rnn = rnn.to(torch_dtype)
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


def data(sizes: Sizes, dtype: Any, module: Any) -> tuple[Any, ...]:
    T, m, n_in, n_hidden, n_out = sizes
    rng = np.random.default_rng(0)
    params = module.init_params(n_in, n_hidden, n_out, rng=rng, dtype=dtype)
    params["b_h"][:] = rng.normal(scale=0.1, size=(n_hidden, 1))
    params["b_y"][:] = rng.normal(scale=0.1, size=(n_out, 1))
    X = rng.normal(size=(T, m, n_in)).astype(dtype)
    Y = np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, size=(T, m))]
    h0 = np.zeros((m, n_hidden), dtype)
    return params, X, Y, h0


def max_relative_error(grads: dict[str, Any], reference: dict[str, Any]) -> float:
    """The largest |a - b| / max(1, max |b|) over the parameters (same keys expected)."""
    if set(grads) != set(reference):
        raise AssertionError(f"parameters differ: {sorted(grads)} vs {sorted(reference)}")
    return max(
        float(np.abs(grads[k] - reference[k]).max()) / max(1.0, float(np.abs(reference[k]).max()))
        for k in reference
    )


def check_baseline(cell: str) -> float:
    """The baseline's gradients against central finite differences at CHECK_SIZE."""
    T, m, n_in, n_hidden, n_out = CHECK_SIZE
    rng = np.random.default_rng(1)
    params = baselines.init_params(cell, n_in, n_hidden, n_out, rng=rng, bias_scale=0.5)
    X, Y = baselines.random_data(T, m, n_in, n_out, rng=rng)
    function = baselines.BASELINES[cell]
    _, grads = function(params, X, Y)
    differences = baselines.central_differences(lambda p: function(p, X, Y)[0], params, 1e-5)
    error = max_relative_error(grads, differences)
    if error > 1e-7:
        raise AssertionError(f"{cell} baseline vs finite differences: {error:.1e} > 1e-7")
    return error


def run_elman(base: int, sizes_run: Sequence[Sizes], use_torch: bool) -> list[str]:
    """The Elman table; returns the targets missed."""
    module = symbptt.load_module(symbptt.emit_numpy(SPEC))
    print(f"Elman: {SPEC.notation} notation, {SPEC.hidden}, {SPEC.output}, {SPEC.loss}")
    header = f"{'(T, m, n_in, n_hidden, n_out)':32} {'dtype':8} {'generated':>11} {'by hand':>11}"
    print(header + f" {'ratio':>6} {'target':>6} {'vs torch':>9}")
    missed: list[str] = []
    for sizes in sizes_run:
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

            repeats = timing.repeats_for(sizes, base)
            medians = timing.median_times([generated, by_hand], repeats)
            ratio = medians[0] / medians[1]
            torch_call = torch_step(sizes, dtype) if use_torch else None
            versus = f"{'-':>9}"
            if torch_call is not None:  # a pass of its own: torch's calls evict the caches
                mine, theirs = timing.median_times([generated, torch_call], repeats)
                versus = f"{mine / theirs:9.3f}"
            target = TARGETS[sizes]
            if ratio > target:
                missed.append(f"elman {sizes} {np.dtype(dtype).name}: {ratio:.3f} > {target}")
            print(
                f"{sizes!s:32} {np.dtype(dtype).name:8} {medians[0] * 1e3:9.3f}ms"
                f" {medians[1] * 1e3:9.3f}ms {ratio:6.3f} {target:6.2f} {versus}"
            )
    return missed


def run_gated(cell: str, base: int, sizes_run: Sequence[Sizes], use_torch: bool) -> list[str]:
    """The table of a gated cell; returns the targets missed."""
    start = time.perf_counter()
    error = check_baseline(cell)
    seconds = time.perf_counter() - start
    print(f"\n{cell.upper()}: baseline vs central differences at {CHECK_SIZE}: {error:.1e}")
    print(f"  ({seconds:.1f} s; relative to max(1, |gradient|))")
    module, why = baselines.generated_module(cell)
    if module is None:
        print(f"  generated module not available: {why}")
        print("  timing the baseline alone")
    header = f"{'(T, m, n_in, n_hidden, n_out)':32} {'dtype':8} {'generated':>11} {'baseline':>11}"
    print(header + f" {'ratio':>6} {'target':>6} {'max diff':>9} {'vs torch':>9}")
    missed: list[str] = []
    function = baselines.BASELINES[cell]
    for sizes in sizes_run:
        T, m, n_in, n_hidden, n_out = sizes
        rng = np.random.default_rng(0)
        params = baselines.init_params(cell, n_in, n_hidden, n_out, rng=rng)
        X, Y = baselines.random_data(T, m, n_in, n_out, rng=rng)
        workspace: dict[str, Any] = {}  # the baseline keeps its buffers, as the module does

        def by_hand(p: Any = params, x: Any = X, y: Any = Y, ws: Any = workspace) -> Any:
            return function(p, x, y, workspace=ws)

        calls: list[Callable[[], Any]] = [by_hand]
        agreement = f"{'-':>9}"
        if module is not None:

            def generated(p: Any = params, x: Any = X, y: Any = Y) -> Any:
                return module.loss_and_gradients(p, x, y)

            loss, grads = generated()
            ref_loss, ref_grads = function(params, X, Y)
            difference = max_relative_error(grads, ref_grads)
            if difference > 1e-10 or abs(loss - ref_loss) > 1e-10 * max(1.0, abs(ref_loss)):
                raise AssertionError(
                    f"{cell} {sizes}: generated vs baseline differ: gradients {difference:.1e},"
                    f" loss {loss!r} vs {ref_loss!r}"
                )
            agreement = f"{difference:9.1e}"
            calls = [generated, by_hand]
        medians = timing.median_times(calls, timing.repeats_for(sizes, base, GATES[cell]))
        torch_call = torch_step(sizes, np.float64, cell) if use_torch else None
        versus = f"{'-':>9}"
        if torch_call is not None:  # a pass of its own: torch's calls evict the caches
            repeats = timing.repeats_for(sizes, base, GATES[cell])
            ours, theirs = timing.median_times([calls[0], torch_call], repeats)
            versus = f"{ours / theirs:9.3f}"
        if module is None:
            mine, ratio_text = f"{'-':>11}", f"{'-':>6}"
        else:
            ratio = medians[0] / medians[1]
            if ratio > GATED_TARGET:
                missed.append(f"{cell} {sizes} float64: {ratio:.3f} > {GATED_TARGET}")
            mine, ratio_text = f"{medians[0] * 1e3:9.3f}ms", f"{ratio:6.3f}"
        print(
            f"{sizes!s:32} {'float64':8} {mine} {medians[-1] * 1e3:9.3f}ms"
            f" {ratio_text} {GATED_TARGET:6.2f} {agreement} {versus}"
        )
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="calls per size (at most)")
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke test")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument(
        "--cells", default="elman,lstm,gru", help="comma-separated cells (default: all three)"
    )
    parser.add_argument(
        "--skip-large", action="store_true", help=f"leave out the largest size {LARGE}"
    )
    args = parser.parse_args()
    cells = [cell.strip() for cell in args.cells.split(",") if cell.strip()]
    unknown = [cell for cell in cells if cell not in GATES]
    if unknown:
        parser.error(f"--cells: unknown {', '.join(unknown)}; expected some of elman, lstm, gru")
    base = 10 if args.quick else args.repeats

    if THREADPOOLCTL:
        importlib.import_module("threadpoolctl").threadpool_limits(limits=1)
        threads = "one BLAS thread (threadpoolctl)"
    else:
        threads = "one BLAS thread (environment variables; threadpoolctl is not installed)"
    print(f"symbptt {symbptt.__version__}, NumPy {np.__version__}, {threads}")
    print(f"unset for this run: {', '.join(UNSET) if UNSET else 'nothing'}")
    missed: list[str] = []
    if "elman" in cells:
        sizes = [s for s in SIZES if not (args.skip_large and s == LARGE)]
        missed += run_elman(base, sizes, not args.no_torch)
    for cell in cells:
        if cell != "elman":
            sizes = [s for s in GATED_SIZES if not (args.skip_large and s == LARGE)]
            missed += run_gated(cell, base, sizes, not args.no_torch)
    print("\nall targets met" if not missed else "\ntargets missed:\n  " + "\n  ".join(missed))


if __name__ == "__main__":
    main()
