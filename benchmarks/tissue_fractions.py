"""Tissue maps on the ASL grid: read at the voxel centre, or averaged over the voxel.

For each subject of a validation panel run (``benchmarks/validate_chain.py``),
brings the pipeline's own T1w GM and WM maps onto the ASL grid through its
own ASL-to-T1w transform in both ways (:func:`asl_pipeline.registration.to_asl_space`,
centre; :func:`~asl_pipeline.registration.fractions_to_asl_space`, voxel
average) and prints

* the mean absolute GM error against the true fractions where the true GM
  fraction is 0.3-0.7;
* the measured map's mean (the cleaned map where there is one, else the
  plain mean) in the truth's GM > 0.7 / WM > 0.9 masks, and in each
  variant's masks (what the QC table reports), as % of the true CBF there.

Run: ``python benchmarks/tissue_fractions.py --panel /work/panel [--config defaults]
[--subjects demo sim-clean ...]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from asl_pipeline import registration as reg


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).astype(float)


def evaluate(panel: Path, config: str, name: str) -> dict:
    out = panel / "out" / config / name / "sub-01"
    sim = panel / "data" / name / "derivatives" / "simulation" / "sub-01" / "perf"
    ref = nib.load(out / "perf" / "sub-01_aslref.nii.gz")
    xfm = str(out / "perf" / "sub-01_from-asl_to-T1w_mode-image_xfm.mat")
    true_gm = _load(sim / "sub-01_label-GM_probseg.nii.gz")
    true_wm = _load(sim / "sub-01_label-WM_probseg.nii.gz")
    true_cbf = _load(sim / "sub-01_desc-true_cbf.nii.gz")
    measured = out / "perf" / "sub-01_desc-paocsl_cbf.nii.gz"
    if not measured.exists():
        measured = out / "perf" / "sub-01_desc-mean_cbf.nii.gz"
    cbf = np.nan_to_num(_load(measured))
    gm_t, wm_t = true_gm > 0.7, true_wm > 0.9
    row = {
        "subject": name,
        "true_gm": true_cbf[gm_t].mean(),
        "true_wm": true_cbf[wm_t].mean(),
        "truth_masks": (cbf[gm_t].mean(), cbf[wm_t].mean()),
    }
    band = (true_gm > 0.3) & (true_gm < 0.7)
    for how, bring in (("centre", reg.to_asl_space), ("average", reg.fractions_to_asl_space)):
        gm, wm = (
            np.clip(bring(nib.load(out / "anat" / f"sub-01_label-{t}_probseg.nii.gz"), ref, xfm)
                    .get_fdata(), 0, 1)
            for t in ("GM", "WM")
        )  # fmt: skip
        row[how] = (cbf[gm > 0.7].mean(), cbf[wm > 0.9].mean(), np.abs(gm - true_gm)[band].mean())
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--panel", type=Path, required=True)
    parser.add_argument("--config", default="defaults")
    parser.add_argument("--subjects", nargs="+")
    args = parser.parse_args(argv)
    names = args.subjects or sorted(
        p.name for p in (args.panel / "out" / args.config).iterdir() if p.is_dir()
    )
    print(
        "subject           GM err (0.3-0.7) centre/average   map GM % truth masks/centre/average"
        "   map WM % truth masks/centre/average"
    )
    for name in names:
        r = evaluate(args.panel, args.config, name)

        def pct(value, truth):
            return 100 * (value / truth - 1)

        gm = [pct(x, r["true_gm"]) for x in (r["truth_masks"][0], r["centre"][0], r["average"][0])]
        wm = [pct(x, r["true_wm"]) for x in (r["truth_masks"][1], r["centre"][1], r["average"][1])]
        print(
            f"{name:16s}  {r['centre'][2]:.3f} / {r['average'][2]:.3f}"
            f"                  {gm[0]:+6.1f} / {gm[1]:+6.1f} / {gm[2]:+6.1f}"
            f"                  {wm[0]:+6.1f} / {wm[1]:+6.1f} / {wm[2]:+6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
