"""The brain-wide fluctuation figures of benchmarks/physio_realism.py."""

import importlib.util
from pathlib import Path

import numpy as np

_SPEC = importlib.util.spec_from_file_location(
    "physio_realism", Path(__file__).parents[1] / "benchmarks" / "physio_realism.py"
)
physio_realism = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(physio_realism)


def test_figures_recover_a_known_brain_wide_gain():
    """Controls and labels with a known gain per volume: the pair offset is
    ``static x (gain_control - gain_label)`` on the white-paper scale, and a
    gain that alternates pair by pair has lag-1 -1."""
    rng = np.random.default_rng(0)
    n_pairs = 20
    static = rng.uniform(900.0, 1100.0, (6, 6, 4))
    m0 = static.copy()
    mask = np.ones(static.shape, bool)
    dm = 0.01 * m0
    sign = np.where(np.arange(n_pairs) % 2 == 0, 1.0, -1.0)
    gain_c = 1.0 + 0.001 * sign  # the label keeps gain 1
    vols, types = [], []
    for p in range(n_pairs):
        vols += [static * gain_c[p], static - dm]
        types += ["control", "label"]
    series = np.stack(vols, -1)
    out = physio_realism.figures(series, types, m0, mask)
    offsets = physio_realism.SCALE * (0.01 + 0.001 * sign)
    assert np.isclose(out["offset_sd"], np.std(offsets, ddof=1))
    assert np.isclose(out["offset_lag1"], -1.0 * (n_pairs - 1) / n_pairs)
    assert out["gain_slow"] < 1e-4  # the alternation averages out over 5 volumes
