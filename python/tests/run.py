"""Runs the Python tests under pytest; exits 77 (CTest's skip) when numpy or pytest is missing."""

import os
import sys

try:
    import numpy  # noqa: F401
    import pytest
except ImportError as error:
    print(f"skipping the Python tests: {error}")
    sys.exit(77)

sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", os.path.dirname(os.path.abspath(__file__))]))
