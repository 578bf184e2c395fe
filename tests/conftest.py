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


@pytest.fixture(autouse=True)
def _restore_package_loggers():
    """Give every test the package loggers as it found them.

    A command run in-process (``main([... "-q"])``) sets the ``asl_pipeline``
    and ``nipype`` loggers' levels and handlers; without this a later test in
    the same worker would see its warnings filtered out, depending on the order
    xdist happens to give.
    """
    import logging

    names = ["asl_pipeline", "nipype", "nipype.workflow", "nipype.utils", "nipype.interface"]
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
    yield
    for name, (level, handlers, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.disabled = disabled
