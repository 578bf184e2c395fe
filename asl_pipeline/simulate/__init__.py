"""Realistic ASL simulator: subjects, fast CBF series and BIDS datasets.

Public API
----------
:func:`simulate_subject`
    One subject's ASL series, separate M0, T1w and the full ground truth.
:func:`simulate_cbf_series`
    Fast per-pair CBF maps from the same signal and noise model.
:func:`simulate_dataset`
    A BIDS dataset of simulated subjects plus ``derivatives/simulation``.

Conventions (spaces, motion parameters) are documented in
:mod:`asl_pipeline.simulate.anatomy` and :mod:`asl_pipeline.simulate.motion`.
"""

from asl_pipeline.simulate.anatomy import TEMPLATE_SPACE, rigid_matrix
from asl_pipeline.simulate.dataset import load_true_mapping, simulate_dataset, write_subject
from asl_pipeline.simulate.motion import motion_matrix, resample_moved, spm_rigid_matrix
from asl_pipeline.simulate.series import (
    M0_SCALE,
    SimulatedCBFSeries,
    SimulatedSubject,
    simulate_cbf_series,
    simulate_subject,
)

__all__ = [
    "M0_SCALE",
    "TEMPLATE_SPACE",
    "SimulatedCBFSeries",
    "SimulatedSubject",
    "motion_matrix",
    "resample_moved",
    "rigid_matrix",
    "load_true_mapping",
    "simulate_cbf_series",
    "simulate_dataset",
    "write_subject",
    "simulate_subject",
    "spm_rigid_matrix",
]
