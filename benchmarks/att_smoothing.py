"""Multi-PLD: the smoothed-ATT fit refitted on a panel run's own inputs (issue 12).

For each subject of a ``validate_chain.py`` output directory, the default
run's preprocessed series, M0, brain mask and GM map are read back; the
repeats are screened as the pipeline does; then
:func:`asl_pipeline.multipld.fit_smoothed_att` is refitted

* with the smoothing width of the ATT stage set to each of ``--fwhm``
  (voxels; 0 is the voxel-wise ATT), and
* with the ATT smoothed separately inside the voxels with GM probability
  >= 0.5 and < 0.5 (``partitioned``: a WM voxel's curve then takes no
  GM neighbour's earlier, larger signal),
* with the voxel-wise ATT map smoothed instead of the curves (``ATT map``,
  ``--map-fwhm``; its converged voxels), and
* with each curve scaled by its smoothed amplitude before the smoothing
  (``amplitude-normalised``, ``--normalised-fwhm``),

each at the tissue T1s of ``--t1`` (s), at the run's own (the GM curve's,
or the fixed one where its jackknife error is too large) and, where the
guard set it aside, at the GM curve's. It prints the GM / WM CBF error (%),
r and the GM / WM ATT error (s) against the truth (GM > 0.7, WM > 0.9),
scored as ``validate_chain.py`` scores.
A ``flow-weighted truth`` row per width gives the ATT error that the
smoothing makes without noise: the true ATT averaged over the same kernel,
each neighbour weighted by its true flow, as a smoothed curve weighs it.

Usage::

    python benchmarks/att_smoothing.py /work/panel13 sim-pasl-multiti ph-pasl-multiti \
        [--fwhm 0 1 2 3] [--map-fwhm 2] [--normalised-fwhm 2] [--t1 1.4]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import validate_chain as vc  # noqa: E402

from asl_pipeline import cbf as quant  # noqa: E402
from asl_pipeline import multipld, outliers  # noqa: E402
from asl_pipeline.cbf import average_repeats  # noqa: E402
from asl_pipeline.smoothing import fwhm_to_sigma, smooth_in_mask  # noqa: E402

#: The GM probability that splits the two partitions of ``partitioned``.
PARTITION_GM = 0.5


def run_inputs(root: Path, subject: str) -> dict:
    """The default run's inputs to the multi-PLD fit, screened as the pipeline screens."""
    perf = root / "out" / "defaults" / subject / "sub-01" / "perf"
    meta = json.loads((perf / "sub-01_desc-preproc_asl.json").read_text())
    m0_meta = json.loads((perf / "sub-01_desc-preproc_m0scan.json").read_text())
    context = pd.read_csv(perf / "sub-01_aslcontext.tsv", sep="\t")["volume_type"].tolist()
    params = quant.quant_params_from_metadata(meta, m0_metadata=m0_meta)
    series = vc._load(perf / "sub-01_desc-preproc_asl.nii.gz")
    dm = quant.deltam_series(series, context, plds=params.pld)
    mask = vc._load(perf / "sub-01_desc-brain_mask.nii.gz") > 0
    keep = outliers.screen_repeats(dm.deltam, dm.plds, mask).keep
    return {
        "deltam": dm.deltam,
        "plds": dm.plds,
        "m0": vc._load(perf / "sub-01_desc-preproc_m0scan.nii.gz"),
        "mask": mask,
        "gm": vc._load(perf / "sub-01_label-GM_probseg.nii.gz"),
        "params": params,
        "keep": keep,
        # (mean at each delay, the delays, repeats per delay): the refits' common start
        "means": average_repeats(dm.deltam, dm.plds, keep),
    }


def normalised_fit(inputs: dict, params, fwhm: float) -> tuple[np.ndarray, np.ndarray]:
    """The ATT from curves smoothed after each is scaled by its smoothed amplitude.

    A curve's amplitude is its delays' weighted sum, smoothed (same width); each
    curve is divided by it (times the brain's mean), so a GM neighbour's larger
    signal weighs no more than a WM voxel's own in the smoothed shape."""
    mean_dm, uniq, counts = inputs["means"]
    mask = inputs["mask"] & np.all(np.isfinite(mean_dm), axis=3)
    sigma = fwhm_to_sigma(fwhm, 1.0)
    amp = smooth_in_mask(np.nan_to_num(mean_dm) @ counts / counts.sum(), mask, sigma)
    floor = 0.1 * np.median(amp[mask])
    scale = np.median(amp[mask]) / np.maximum(amp, floor)
    shaped = np.nan_to_num(mean_dm) * scale[..., None]
    smooth = (
        np.stack([smooth_in_mask(shaped[..., k], mask, sigma) for k in range(uniq.size)], axis=3)
        / scale[..., None]
    )
    _, att, _ = quant.fit_multi_pld(
        np.repeat(smooth, counts, axis=3), np.repeat(uniq, counts), inputs["m0"], params,
        mask=mask,
    )  # fmt: skip
    return multipld.cbf_map_at_att(*inputs["means"], inputs["m0"], att, params), att


def resolution_shift(truth: dict, mask: np.ndarray, fwhm: float) -> tuple[float, float]:
    """GM / WM ATT error (s) of the true ATT smoothed as a smoothed curve carries it:
    each neighbour weighted by its flow (the part of the error no noise makes)."""
    sigma = fwhm_to_sigma(fwhm, 1.0)
    flows = mask & (truth["cbf"] > 0)
    weight = smooth_in_mask(truth["cbf"], flows, sigma)
    att = smooth_in_mask(truth["att"] * truth["cbf"], flows, sigma) / np.maximum(weight, 1e-6)
    gm, wm = truth["gm"] > vc.GM_THRESHOLD, truth["wm"] > vc.WM_THRESHOLD
    return tuple(float(att[m].mean() - truth["att"][m].mean()) for m in (gm, wm))


def refit(
    inputs: dict, t1: float, fwhm: float | None, smooth: str = "curves"
) -> tuple[np.ndarray, np.ndarray]:
    """CBF and ATT at tissue T1 ``t1``; ``fwhm`` None: the partitioned smoothing (2 voxels).
    ``smooth="map"``: the voxel-wise ATT map (its converged fits) smoothed inside the mask."""
    params = replace(inputs["params"], t1_tissue=t1)
    args = (inputs["deltam"], inputs["plds"], inputs["m0"], params)
    mask, keep = inputs["mask"], inputs["keep"]
    if smooth == "normalised":
        return normalised_fit(inputs, params, fwhm)
    if smooth == "map":
        _, att, failed = multipld.fit_smoothed_att(*args, mask=mask, keep=keep, fwhm_voxels=1e-3)
        ok = mask & (att > 0) & ~failed
        smoothed = smooth_in_mask(np.where(ok, att, 0.0), ok, fwhm_to_sigma(fwhm, 1.0))
        att = np.where(mask, smoothed, 0.0)
        att = np.where(np.isfinite(att), att, 0.0)
        return multipld.cbf_map_at_att(*inputs["means"], inputs["m0"], att, params), att
    if fwhm is not None:
        cbf, att, _ = multipld.fit_smoothed_att(
            *args, mask=mask, keep=keep, fwhm_voxels=max(fwhm, 1e-3)
        )
        return cbf, att
    cbf, att = np.zeros(mask.shape), np.zeros(mask.shape)
    for part in (inputs["gm"] >= PARTITION_GM, inputs["gm"] < PARTITION_GM):
        inside = mask & part
        c, a, _ = multipld.fit_smoothed_att(*args, mask=inside, keep=keep)
        cbf[inside], att[inside] = c[inside], a[inside]
    return cbf, att


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a validate_chain.py --out directory")
    ap.add_argument("subjects", nargs="+")
    ap.add_argument("--fwhm", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0])
    ap.add_argument("--map-fwhm", type=float, nargs="*", default=[2.0])
    ap.add_argument("--normalised-fwhm", type=float, nargs="*", default=[2.0])
    ap.add_argument("--t1", type=float, nargs="*", default=[1.4], help="tissue T1s (s)")
    args = ap.parse_args(argv)
    methods = [("curves", f) for f in [*args.fwhm, None]]
    methods += [("map", f) for f in args.map_fwhm]
    methods += [("normalised", f) for f in args.normalised_fwhm]
    print("| subject | T1 (s) | ATT smoothing | GM / WM CBF % | r | GM / WM ATT s |")
    print("|---|---|---|---|---|---|")
    for subject in args.subjects:
        inputs = run_inputs(args.root, subject)
        truth = vc.truth_of(args.root / "data" / subject)
        gm, wm = truth["gm"] > vc.GM_THRESHOLD, truth["wm"] > vc.WM_THRESHOLD
        curve_t1, kin = multipld.gm_curve_t1(
            inputs["deltam"], inputs["plds"], inputs["m0"], inputs["params"], inputs["gm"],
            inputs["mask"], keep=inputs["keep"],
        )  # fmt: skip
        for fwhm in [f for f in args.fwhm if f > 0]:
            shift = resolution_shift(truth, inputs["mask"], fwhm)
            print(
                f"| {subject} | truth | flow-weighted truth, FWHM {fwhm:g} voxels | - | - | "
                f"{shift[0]:+.2f} / {shift[1]:+.2f} |"
            )
        t1s = [(t1, f"{t1:.2f}") for t1 in args.t1] + [(curve_t1, f"{curve_t1:.2f} (the run's)")]
        if kin.t1_fitted["gm"] and not kin.t1_trusted("gm"):  # the guard set the curve aside
            t1s.append((kin.t1_tissue["gm"], f"{kin.t1_tissue['gm']:.2f} (GM curve, set aside)"))
        for t1, label in t1s:
            for smooth, fwhm in methods:
                cbf, att = refit(inputs, t1, fwhm, smooth)
                s = vc.score_map(cbf, truth)
                att = np.where(att > 0, att, np.nan)
                errs = [np.nanmean(att[m]) - truth["att"][m].mean() for m in (gm, wm)]
                how = "partitioned, 2 voxels" if fwhm is None else f"FWHM {fwhm:g} voxels"
                how = f"ATT map, {how}" if smooth == "map" else how
                how = f"amplitude-normalised, {how}" if smooth == "normalised" else how
                print(
                    f"| {subject} | {label} | {how} | {s['gm_err_pct']:+.1f} / "
                    f"{s['wm_err_pct']:+.1f} | {s['r']:.3f} | {errs[0]:+.2f} / {errs[1]:+.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
