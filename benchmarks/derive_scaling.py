"""How derivation time grows with T (symbolic sizes), against scalar sympy.diff.

    python benchmarks/derive_scaling.py [--repeats 3] [--no-baseline]

Prints the median time of ``symbptt.derive`` for T = 10, 100, 1000 with
symbolic sizes (n_0, n_1, n_2, m), the ratio time(1000) / time(100) (linear
growth gives about 10; the target is < 15, and T = 1000 under 10 s), and, as
the baseline measured in the same run, naive scalar ``sympy.diff`` of the
fully explicit unrolled loss with respect to every recurrent weight at n = 2,
which grows about exponentially with T.
"""

from __future__ import annotations

import argparse
import statistics
import time

import sympy as sp

import symbptt
from symbptt import functions, verify


def time_derive(steps: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        symbptt.derive(symbptt.ModelSpec(steps=steps))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()

    start = time.perf_counter()
    for output, loss in (("softmax", "cross_entropy"),):
        functions.output_loss_gradient(output, loss)
    print(f"one-time derivation of the output+loss rule: {time.perf_counter() - start:.3f} s")

    results = {steps: time_derive(steps, args.repeats) for steps in (10, 100, 1000)}
    print(f"{'T':>6} {'derive (s)':>12}")
    for steps, seconds in results.items():
        print(f"{steps:>6} {seconds:>12.3f}")
    ratio = results[1000] / results[100]
    print(f"time(1000)/time(100) = {ratio:.1f}  (linear: ~10; target < 15)")
    print(f"T=1000: {results[1000]:.2f} s  (target < 10 s)")

    if not args.no_baseline:
        print("\nbaseline: scalar sympy.diff of the explicit loss, n=2, all 4 W_hh entries")
        print(f"{'T':>6} {'scalar (s)':>12} {'derive (s)':>12} {'ratio':>8}")
        for steps in (1, 2, 3, 4):
            scalar = time_scalar_diff(steps)
            ours = time_derive(steps, args.repeats)
            print(f"{steps:>6} {scalar:>12.3f} {ours:>12.4f} {scalar / ours:>8.0f}")


if __name__ == "__main__":
    main()
