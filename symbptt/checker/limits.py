"""The checker's working precision, tolerances and the sizes it fills in."""

from __future__ import annotations

#: Working precision of the numeric verdict (significant digits).
DPS = 30


#: Relative tolerance of the 30-digit comparison (relative to max(1, |expected|)).
RTOL_MP = 1e-20


#: Relative tolerance of float64 comparisons (callables, screening).
RTOL_FLOAT = 1e-6


#: The largest literal size ``ones(...)`` accepts.
MAX_ONES = 256


#: Arguments of elementwise functions larger than this are refused in 30-digit
#: evaluation (exp(exp(exp(...))) would otherwise run for ever).
_MAX_MP_ARGUMENT = 1e5


#: How many points the mistake search screens (float64).
_SCREEN = 3


_SIZE_FIELDS = (("n_in", "n_0"), ("n_hidden", "n_1"), ("n_out", "n_2"), ("batch", "m"))


_DEFAULT_SIZES = {"n_in": 3, "n_hidden": 4, "n_out": 5, "batch": 2}


_SIZE_POOL = (3, 4, 5, 2, 6, 7, 8, 9)
