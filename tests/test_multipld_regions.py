"""The weighted-delay estimate of the multi-PLD benchmark (benchmarks/multipld_regions.py)."""

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from asl_pipeline import kinetics as K
from asl_pipeline.cbf import quant_params
from asl_pipeline.rundesc import describe_metadata

_SPEC = importlib.util.spec_from_file_location(
    "multipld_regions", Path(__file__).parents[1] / "benchmarks" / "multipld_regions.py"
)
multipld_regions = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(multipld_regions)

PLDS = [0.5, 1.0, 1.5, 2.0, 2.5]
SHAPE = (8, 6, 3)


def _params():
    meta = {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": np.repeat(PLDS, 2).tolist(),
        "LabelingDuration": 1.8,
        "M0Type": "Estimate",
        "M0Estimate": 1.0,
        "BackgroundSuppression": False,
        "MRAcquisitionType": "2D",
        "SliceTiming": [0.0, 0.04, 0.08],
        "MagneticFieldStrength": 3,
    }
    return quant_params(describe_metadata(meta, ["control", "label"] * len(PLDS)))


@pytest.mark.parametrize("how", ["least squares", "sum"])
def test_weighted_delay_reads_noise_free_curves_back(how):
    """Noise-free curves of the kinetic model, each slice with its own delays:
    the weighted delay gives back every voxel's ATT and CBF."""
    rng = np.random.default_rng(3)
    params = replace(_params(), t1_tissue=1.3)
    cbf = rng.uniform(15.0, 80.0, SHAPE)
    att = rng.uniform(0.6, 1.9, SHAPE)
    plds = np.repeat(PLDS, 3)
    delays = plds[None, None, None, :] + np.asarray([0.0, 0.04, 0.08])[None, None, :, None]
    dm = K.pcasl_deltam(
        cbf[..., None], att[..., None], delays, 1.8, 1.0, alpha=params.alpha, t1_tissue=1.3
    )
    mask = np.ones(SHAPE, bool)
    got_cbf, got_att = multipld_regions.weighted_delay_fit(
        dm, plds, np.ones(SHAPE), params, mask, np.full(SHAPE, 1.3), cbf=how
    )
    assert np.abs(got_att - att).max() < 0.01
    assert np.abs(got_cbf / cbf - 1).max() < 0.01


def test_weighted_delay_refuses_an_unknown_cbf_rule():
    with pytest.raises(ValueError, match="least squares, sum"):
        multipld_regions.weighted_delay_fit(
            np.zeros(SHAPE + (5,)), PLDS, np.ones(SHAPE), _params(), np.ones(SHAPE, bool),
            np.full(SHAPE, 1.3), cbf="median",
        )  # fmt: skip
