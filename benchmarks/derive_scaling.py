"""How derivation time grows with T (symbolic sizes), against scalar sympy.diff.

    python benchmarks/derive_scaling.py [--repeats 3] [--cells elman,lstm,gru] [--no-baseline]

For each cell (the Elman RNN, the LSTM and the GRU, all with symbolic sizes)
prints the median time of ``symbptt.derive`` and of its generic-step form
(``Derivation.step_form``) for T = 10, 100, 1000, and the ratio
time(1000) / time(100) of the two together (linear growth gives about 10;
the targets: Elman < 15 and T = 1000 under 10 s; LSTM and GRU linear and
T = 1000 under 5 s).  Then, as the baseline measured in the same run, naive
scalar ``sympy.diff`` of the fully explicit unrolled Elman loss with respect
to every recurrent weight at n = 2, which grows about exponentially with T.
The script prints numbers; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import sympy as sp

import symbptt
from symbptt.expr import functions
from symbptt.oracle import verify

CELLS = ("elman", "lstm", "gru")
STEPS = (10, 100, 1000)
#: T = 1000 targets in seconds (issue 9: the gated cells under 5 s).
TARGETS = {"elman": 10.0, "lstm": 5.0, "gru": 5.0}


def time_derive(steps: int, repeats: int, cell: str = "elman") -> float:
    """Median time of ``symbptt.derive`` alone."""
    return time_derive_and_step_form(steps, repeats, cell)[0]


def time_derive_and_step_form(steps: int, repeats: int, cell: str) -> tuple[float, float]:
    """Median times of ``symbptt.derive`` and of its (lazily built) ``step_form``."""
    derive_times, step_form_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        derivation = symbptt.derive(symbptt.ModelSpec(cell=cell, steps=steps))
        middle = time.perf_counter()
        derivation.step_form  # noqa: B018 - a cached property: the access builds it
        derive_times.append(middle - start)
        step_form_times.append(time.perf_counter() - middle)
    return statistics.median(derive_times), statistics.median(step_form_times)


def time_scalar_diff(steps: int) -> float:
    """Naive scalar differentiation: every entry symbolic, diff w.r.t. every W_hh entry."""
    spec = symbptt.ModelSpec(steps=steps, n_in=2, n_hidden=2, n_out=2, batch=1)
    values = {
        "W_xh": sp.Matrix(2, 2, sp.symbols("u0:4")),
        "W_hh": sp.Matrix(2, 2, sp.symbols("w0:4")),
        "W_hy": sp.Matrix(2, 2, sp.symbols("v0:4")),
        "b_h": sp.Matrix(2, 1, sp.symbols("bh0:2")),
        "b_y": sp.Matrix(2, 1, sp.symbols("by0:2")),
        "x": [sp.Matrix(2, 1, sp.symbols(f"x{t}_0:2")) for t in range(steps)],
        "y": [sp.Matrix(2, 1, sp.symbols(f"y{t}_0:2")) for t in range(steps)],
    }
    start = time.perf_counter()
    loss = verify.scalar_loss(spec, values)
    for w in values["W_hh"]:
        sp.diff(loss, w)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cells", default=",".join(CELLS), help="comma-separated cells (default: all three)"
    )
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    cells = [cell.strip() for cell in args.cells.split(",") if cell.strip()]
    unknown = [cell for cell in cells if cell not in CELLS]
    if unknown:
        parser.error(f"--cells: unknown {', '.join(unknown)}; expected some of {', '.join(CELLS)}")

    start = time.perf_counter()
    for output, loss in (("softmax", "cross_entropy"),):
        functions.output_loss_gradient(output, loss)
    print(f"one-time derivation of the output+loss rule: {time.perf_counter() - start:.3f} s")
    start = time.perf_counter()
    for cell in cells:  # warm up: loading the cell file, first-call caches
        symbptt.derive(symbptt.ModelSpec(cell=cell, steps=1)).step_form  # noqa: B018
    print(f"one-time warm-up (each cell at T = 1): {time.perf_counter() - start:.3f} s")

    print(f"{'cell':>6} {'T':>6} {'derive (s)':>11} {'step_form':>10} {'total (s)':>10}")
    summary = []
    for cell in cells:
        totals = {}
        for steps in STEPS:
            derive_s, step_form_s = time_derive_and_step_form(steps, args.repeats, cell)
            totals[steps] = derive_s + step_form_s
            print(
                f"{cell:>6} {steps:>6} {derive_s:>11.3f} {step_form_s:>10.3f}"
                f" {totals[steps]:>10.3f}"
            )
        ratio = totals[1000] / totals[100]
        summary.append(
            f"{cell:>6}: time(1000)/time(100) = {ratio:.1f} (linear: ~10),"
            f" T=1000: {totals[1000]:.2f} s (target < {TARGETS[cell]:.0f} s)"
        )
    print("\n".join(summary))

    if not args.no_baseline:
        print("\nbaseline: scalar sympy.diff of the explicit loss, n=2, all 4 W_hh entries")
        print(f"{'T':>6} {'scalar (s)':>12} {'derive (s)':>12} {'ratio':>8}")
        for steps in (1, 2, 3, 4):
            scalar = time_scalar_diff(steps)
            ours = time_derive(steps, args.repeats)
            print(f"{steps:>6} {scalar:>12.3f} {ours:>12.4f} {scalar / ours:>8.0f}")


if __name__ == "__main__":
    main()
