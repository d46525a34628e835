"""How the benchmarks time a call: one place for peers.py, runtime.py and compose.py.

:func:`median_times` gives the median time of one call of each of several functions
that compute the same thing.  The functions take turns, so that a drift of the
machine's speed (another process, the clock) falls on all of them alike; each turn
is a *block* of consecutive calls of one function, as a training loop makes them, and
a call's time is its block's time over the block's calls.

Why blocks, not one call a turn: the first call after a change of function pays for
the change, and not evenly.  Measured here (2 cores, one thread each, JAX 0.10, the
JAX module of the Elman model at (T, m, n_in, n_hidden, n_out) = (10, 1, 4, 8, 4),
float64, 3000 turns): the generated module called right after
``jax.jit(jax.value_and_grad(...))`` took 57 µs a call, the same module called right
after another copy of itself 35-40 µs, while the peer took 46-50 µs after either.
Taking turns call by call charged the module ~20 µs a call that a loop calling it
alone never pays (peers.py printed 1.05-1.24 there; in blocks, 0.8-1.0).  A block of
:data:`BLOCK_SECONDS` shares such a cost among its calls; a call longer than that is
its own block, where the cost is a small part of it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

#: A block of calls lasts about this long (the second warm-up call's time sets how many).
BLOCK_SECONDS = 1e-3
#: At least this many blocks each, up to ``repeats`` calls in all.
MIN_BLOCKS = 15


def median_times(functions: Sequence[Callable[[], Any]], repeats: int) -> list[float]:
    """The median time of one call of each function (see the module docstring).

    Each function is called twice first (caches, workspaces, compilation) and the
    second call's time sets its block: as many calls as last :data:`BLOCK_SECONDS`,
    at least one.  Then ``repeats // calls`` blocks each, at least
    ``min(repeats, MIN_BLOCKS)``, taken in turn; the result is the median over a
    function's blocks of its block time over its calls.
    """
    sizes = []
    for function in functions:
        function()
        start = time.perf_counter()
        function()
        elapsed = time.perf_counter() - start
        sizes.append(max(1, math.ceil(BLOCK_SECONDS / max(elapsed, 1e-9))))
    blocks = max(repeats // min(sizes), min(repeats, MIN_BLOCKS))
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(blocks):
        for i, function in enumerate(functions):
            calls = sizes[i]
            start = time.perf_counter()
            for _ in range(calls):
                function()
            times[i].append((time.perf_counter() - start) / calls)
    return [statistics.median(t) for t in times]


def repeats_for(sizes: tuple[int, ...], base: int, gates: int = 1) -> int:
    """How many calls to time at (T, m, n_in, n_hidden, n_out): ``base`` for small
    models, fewer (at least 7) as the work of a call grows past 2e5 multiply-adds."""
    T, m, n_in, n_hidden, n_out = sizes
    work = T * m * n_hidden * (gates * (n_in + n_hidden) + n_out)
    return max(7, min(base, int(base * 2e5 / max(work, 1))))
