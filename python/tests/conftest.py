"""Fixtures every Python test file shares."""

import os

import numpy as np
import pytest

# One seed per run, printed by every test that draws from it (pytest shows it on failure).
SEED = int(os.environ.get("W4A16_TEST_SEED", np.random.SeedSequence().entropy % (1 << 32)))


@pytest.fixture
def rng():
    print(f"random seed {SEED} (replay with W4A16_TEST_SEED={SEED})")
    return np.random.default_rng(SEED)
