"""The ATT smoothing benchmark's noise-free reference (benchmarks/att_smoothing.py)."""

import importlib.util
from pathlib import Path

import numpy as np

_SPEC = importlib.util.spec_from_file_location(
    "att_smoothing", Path(__file__).parents[1] / "benchmarks" / "att_smoothing.py"
)
att_smoothing = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(att_smoothing)


def _truth(att_gm: float, att_wm: float) -> dict:
    # a slab of GM (flow 60) next to a slab of WM (flow 20), each 6 voxels thick
    shape = (12, 8, 8)
    gm = np.zeros(shape)
    gm[:6] = 1.0
    wm = 1.0 - gm
    return {
        "gm": gm,
        "wm": wm,
        "cbf": 60.0 * gm + 20.0 * wm,
        "att": att_gm * gm + att_wm * wm,
    }


def test_a_uniform_arrival_has_no_resolution_error():
    truth = _truth(1.0, 1.0)
    shift = att_smoothing.resolution_shift(truth, np.ones(truth["gm"].shape, bool), 2.0)
    np.testing.assert_allclose(shift, (0.0, 0.0), atol=1e-12)


def test_smoothing_pulls_wm_arrival_towards_gm_weighted_by_flow():
    truth = _truth(0.9, 1.3)
    mask = np.ones(truth["gm"].shape, bool)
    gm_shift, wm_shift = att_smoothing.resolution_shift(truth, mask, 2.0)
    # WM reads early, GM late; WM moves more because its GM neighbours carry 3x its flow
    assert wm_shift < 0 < gm_shift
    assert abs(wm_shift) > 2 * gm_shift
    # the slabs' inner voxels are beyond the kernel's reach, so the shift stays a fraction
    # of the 0.4 s difference
    assert abs(wm_shift) < 0.2
    wider = att_smoothing.resolution_shift(truth, mask, 3.0)
    assert wider[1] < wm_shift  # a wider kernel reaches further
