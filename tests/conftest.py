from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """The one seeded random generator of the test suite."""
    return np.random.default_rng(20261122)
