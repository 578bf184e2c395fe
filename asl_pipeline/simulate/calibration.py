"""Noise and motion figures of the simulator, to check its calibration.

``python -m asl_pipeline.simulate.calibration [n_seeds]`` prints, for a few
acquisition settings, the per-pair GM CBF temporal SD, the voxel-wise RMSE of
the 10- and 40-pair mean CBF against the truth, the control-image temporal
SNR and the framewise displacement, then the wall time of the simulators.
CBF is quantified with the white-paper
formula, written out here (not imported from the pipeline), with the true M0.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from asl_pipeline.kinetics import CBF_UNITS, LAMBDA, t1_blood
from asl_pipeline.simulate.series import simulate_cbf_series, simulate_subject


def framewise_displacement(motion, radius: float = 50.0) -> np.ndarray:
    """Power FD (mm): sum of absolute parameter changes, rotations on a sphere."""
    d = np.abs(np.diff(np.asarray(motion, float), axis=0))
    return d[:, :3].sum(1) + radius * d[:, 3:].sum(1)


def _pair_cbf(sub) -> np.ndarray:
    """Per-pair CBF of a :class:`SimulatedSubject` (white paper, true M0)."""
    md = sub.metadata
    ctx = np.array(sub.aslcontext)
    dm = sub.asl[..., ctx == "control"].astype(float) - sub.asl[..., ctx == "label"]
    t1b = t1_blood(3.0)
    pld = sub.slice_pld[None, None, :, None]
    m0 = sub.m0_true.astype(float)[..., None]
    if md["ArterialSpinLabelingType"] == "PCASL":
        tau = md["LabelingDuration"]
        denom = 2 * sub.alpha * t1b * m0 * (1 - np.exp(-tau / t1b))
    else:
        denom = 2 * sub.alpha * md["BolusCutOffDelayTime"] * m0
    with np.errstate(divide="ignore", invalid="ignore"):
        return CBF_UNITS * LAMBDA * dm * np.exp(pld / t1b) / denom


def subject_figures(seed: int, **kwargs) -> dict:
    """Noise/motion figures of one :func:`simulate_subject` run (GM > 0.7)."""
    sub = simulate_subject(seed, t1w=False, **kwargs)
    cbf = _pair_cbf(sub)
    gm = (sub.gm > 0.7) & sub.brain_mask
    g = cbf[gm]
    truth = sub.cbf[gm]
    ctx = np.array(sub.aslcontext)
    c = sub.asl[..., ctx == "control"][gm]
    fd = framewise_displacement(sub.motion)
    return {
        "pair_sd": float(np.median(g.std(-1))),
        "rmse10": float(np.sqrt(np.mean((g[:, :10].mean(-1) - truth) ** 2))),
        "rmse40": float(np.sqrt(np.mean((g.mean(-1) - truth) ** 2))),
        "gm_truth": float(truth.mean()),
        "tsnr": float(np.median(c.mean(-1) / c.std(-1))),
        "mean_fd": float(fd.mean()),
        "max_fd": float(fd.max()),
        "n_spikes": len(sub.outlier_volumes),
        "n_slices": len(sub.outlier_slices),
    }


def series_figures(seed: int, **kwargs) -> dict:
    """Noise figures of one :func:`simulate_cbf_series` run (GM > 0.7)."""
    s = simulate_cbf_series(seed, **kwargs)
    gm = (s.gm > 0.7) & s.brain_mask
    g = s.cbf_series[gm]
    truth = s.cbf[gm]
    return {
        "pair_sd": float(np.median(g.std(-1))),
        "rmse10": float(np.sqrt(np.mean((g[:, :10].mean(-1) - truth) ** 2))),
        "rmse40": float(np.sqrt(np.mean((g.mean(-1) - truth) ** 2))),
        "gm_truth": float(truth.mean()),
    }


SETTINGS = {
    "PCASL 2D": {},
    "PCASL 2D BS": {"background_suppression": True},
    "PCASL 3D BS": {"readout": "3D", "background_suppression": True},
    "PASL 2D": {"labeling": "PASL"},
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n_seeds = int(argv[0]) if argv else 3
    keys = ("pair_sd", "rmse10", "rmse40", "gm_truth", "tsnr", "mean_fd", "max_fd")
    print(f"simulate_subject, 40 pairs, outliers off, mean over {n_seeds} seeds (GM > 0.7)")
    print(f"{'setting':14s}" + "".join(f"{k:>10s}" for k in keys))
    for name, kw in SETTINGS.items():
        rows = [subject_figures(seed, outliers=False, **kw) for seed in range(n_seeds)]
        print(f"{name:14s}" + "".join(f"{np.mean([r[k] for r in rows]):10.2f}" for k in keys))
    rows = [series_figures(seed, outliers=False) for seed in range(n_seeds)]
    print(
        f"{'cbf_series 2D':14s}"
        + "".join(f"{np.mean([r[k] for r in rows]):10.2f}" for k in keys[:4])
    )
    print("wall time per call, s (templates already loaded; mean over the seeds)")
    for name, fn in (
        ("simulate_cbf_series (64x64x20, 40 pairs)", lambda s: simulate_cbf_series(s)),
        ("simulate_subject without T1w", lambda s: simulate_subject(s, t1w=False)),
        ("simulate_subject with 1 mm T1w", lambda s: simulate_subject(s)),
    ):
        fn(0)
        start = time.perf_counter()
        for seed in range(n_seeds):
            fn(seed)
        print(f"  {name:42s} {(time.perf_counter() - start) / n_seeds:6.2f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
