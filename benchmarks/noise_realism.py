"""Single-pair noise of the simulators next to the real scan's (issue 14's figures).

Measures :func:`asl_pipeline.simulate.noise.noise_statistics` on 50-pair
series of

* ``real``: the public 3D-spiral pCASL scan's figures as quoted in issue 14
  (:data:`asl_pipeline.simulate.noise.REAL_SCAN_STATISTICS`; the scan itself
  is not read here);
* ``pairs-mni`` / ``pairs-phantom``: the default
  :class:`~asl_pipeline.simulate.noise.PairNoise` drawn around a clean
  subject of each generator (what ``asl-train --synthetic`` learns from);
* ``rician-mni``: the image-domain thermal + physiological noise of
  ``simulate_cbf_series`` (what the earlier shipped weights learned from);
* ``measured``, with ``--series``: a per-pair CBF series written by the
  pipeline (``desc-timeseries_cbf``, motion-corrected and resliced) and its
  ``desc-brain_mask``, e.g. of that same scan.

Usage::

    python benchmarks/noise_realism.py [--series TIMESERIES_CBF --mask BRAIN_MASK]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from asl_pipeline import lfn
from asl_pipeline.simulate import noise, simulate_cbf_series


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=Path, help="a desc-timeseries_cbf image")
    parser.add_argument("--mask", type=Path, help="its desc-brain_mask image")
    args = parser.parse_args(argv)
    if (args.series is None) != (args.mask is None):
        parser.error("--series and --mask go together")
    cols = {"real": noise.REAL_SCAN_STATISTICS}
    if args.series is not None:
        series = np.asanyarray(nib.load(args.series).dataobj).astype(float)
        mask = np.asanyarray(nib.load(args.mask).dataobj) > 0
        cols["measured"] = noise.noise_statistics(np.nan_to_num(series), mask)
    rng = np.random.default_rng(0)
    for name, subj in (
        ("pairs-mni", lfn.mni_subject(9, 0)),
        ("pairs-phantom", lfn.phantom_subject(9, 1)),
    ):
        subj.noise = noise.PairNoise()
        cols[name] = noise.noise_statistics(subj.draw_pairs(rng, 50), subj.mask)
    sim = simulate_cbf_series(900_000, n_pairs=50, outliers=False, motion_scale=0.0, readout="3D")
    cols["rician-mni"] = noise.noise_statistics(sim.cbf_series, sim.brain_mask)
    keys = list(noise.REAL_SCAN_STATISTICS)
    print("| statistic | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{cols[c][k]:.3g}" for c in cols) + " |")


if __name__ == "__main__":
    main()
