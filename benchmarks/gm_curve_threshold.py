"""Multi-PLD: the GM curve's T1 against the GM probability threshold of its voxels (issue 12).

:func:`asl_pipeline.multipld.fit_tissue_curves` takes the mean curve of the
voxels with GM probability above ``CLASS_THRESHOLDS["gm"]`` (0.8). On short
delays a partial-volume voxel's WM share, still arriving at the last delay,
changes the curve's shape, and the one-compartment fit can pass that to the
T1. For each subject (the fit alone: no motion or outliers, true M0 and
tissue maps, after the repeat screen; subjects as in
``benchmarks/multipld_regions.py``) this prints the error (s) of the GM
curve's T1 and its voxel count at each threshold.

Usage::

    python benchmarks/gm_curve_threshold.py [--plds 0.25 0.5 ... --labeling-duration 1.4] \
        [--sim-t1 1.6] [--seeds-2d 112 ...] [--seeds-3d 111 ...] [--seeds-phantom 207 ...] \
        [--thresholds 0.8 0.9 0.95]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import multipld_regions as mr  # noqa: E402

from asl_pipeline import multipld, outliers  # noqa: E402
from asl_pipeline.cbf import average_repeats, effective_delays  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds-2d", type=int, nargs="*", default=[112, 116, 119])
    ap.add_argument("--seeds-3d", type=int, nargs="*", default=[111, 122, 123])
    ap.add_argument("--seeds-phantom", type=int, nargs="*", default=[207, 401])
    ap.add_argument("--sim-t1", type=float, help="the simulator's tissue T1 (s)")
    ap.add_argument("--plds", type=float, nargs="+", help="the PLDs (s)")
    ap.add_argument("--labeling-duration", type=float, help="the labeling duration (s)")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    args = ap.parse_args(argv)
    if args.plds:
        mr.PLDS[:] = args.plds
    mr.LABELING_DURATION[0] = args.labeling_duration
    runs = [("2D", s) for s in args.seeds_2d] + [("3D", s) for s in args.seeds_3d]
    runs += [("phantom", s) for s in args.seeds_phantom]
    cols = " | ".join(f"GM > {t:g}: T1 err s (voxels)" for t in args.thresholds)
    print(f"| generator | seed | T1 truth | {cols} |")
    print("|---|---|---|" + "---|" * len(args.thresholds))
    default = multipld.CLASS_THRESHOLDS["gm"]
    for kind, seed in runs:
        s, params, dm = mr._prepare(kind, seed, args.sim_t1)
        keep = outliers.screen_repeats(dm.deltam, dm.plds, s.brain_mask).keep
        mean_dm, uniq, _ = average_repeats(dm.deltam, dm.plds, keep)
        delays = effective_delays(params, uniq, dm.deltam.shape[2])
        truth = mr.PHANTOM_T1[0] if kind == "phantom" else (args.sim_t1 or mr.SIM_T1)
        cells = []
        try:
            for threshold in args.thresholds:
                multipld.CLASS_THRESHOLDS["gm"] = threshold
                kin = multipld.fit_tissue_curves(
                    mean_dm, delays, s.m0_true, s.gm, None, s.brain_mask, params,
                    fit_t1=("gm",),
                )  # fmt: skip
                err = kin.t1_tissue["gm"] - truth if kin.t1_fitted["gm"] else float("nan")
                cells.append(f"{err:+.2f} ({kin.voxels['gm']})")
        finally:
            multipld.CLASS_THRESHOLDS["gm"] = default
        print(f"| {kind} | {seed} | {truth:.2f} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
