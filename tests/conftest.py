"""Shared fixtures for the test suite."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def bids_examples_dir() -> Path:
    """The five real ASL example datasets' sidecars (BIDS examples, CC0)."""
    path = SHARED / "data" / "bids-examples-asl"
    if not path.is_dir():
        pytest.skip(f"real BIDS ASL sidecars not found at {path}")
    return path
