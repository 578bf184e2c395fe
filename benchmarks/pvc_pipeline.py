"""Score ``asl-pipeline --pvc lr`` outputs of a simulated subject against the truth.

Separates what the correction adds from what its inputs bring: the pipeline's
measured map (noise, quantification) and its tissue fractions (segmentation
and registration of the T1w). The correction is rerun on every combination of
{measured map, noise-free true CBF} x {true fractions, the pipeline's
partial-volume fractions (``anat/*_label-GM_desc-pv_probseg`` averaged over
each ASL voxel: what ``--pvc lr`` reads), its ASL-space posteriors (the
registration's voxel fractions, stored as ``perf/*_label-GM_probseg``; what it
read before), the T1w posteriors read at the ASL voxel centres}, at voxels with
true GM fraction 0.3-0.7.

    asl-simulate DS --n-subjects 1 --seed 1 --n-pairs 20 --no-motion --no-outliers
    asl-pipeline DS OUT participant -w WORK --pvc lr --output-spaces asl
    python benchmarks/pvc_pipeline.py DS OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from asl_pipeline.pvc import lr_pvc
from asl_pipeline.registration import fractions_to_asl_space, to_asl_space


def _load(path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj, dtype=float)


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"expected one {pattern} under {root}, found {len(found)}")
    return found[0]


def _t1w_maps_in_asl(out: Path, pattern: str, resample) -> tuple[np.ndarray, np.ndarray]:
    """The anatomical GM and WM maps ``pattern`` (with ``{t}``) brought to the ASL
    grid by ``resample(image, ref, xfm)`` through the run's stored transform."""
    anat = out.parent / "anat"
    ref = nib.load(_one(out, "*_aslref.nii.gz"))
    xfm = str(_one(out, "*_from-asl_to-T1w_mode-image_xfm.mat"))
    return tuple(
        resample(nib.load(_one(anat, pattern.format(t=t))), ref, xfm).get_fdata()
        for t in ("GM", "WM")
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="simulated BIDS dataset (with its truth)")
    parser.add_argument("output", type=Path, help="asl-pipeline output directory")
    parser.add_argument("--subject", default="01")
    args = parser.parse_args(argv)
    s = f"sub-{args.subject}"
    truth = args.dataset / "derivatives" / "simulation" / s / "perf"
    out = args.output / s / "perf"
    gm, wm = (
        _load(truth / f"{s}_label-GM_probseg.nii.gz"),
        _load(truth / f"{s}_label-WM_probseg.nii.gz"),
    )
    true_cbf = _load(truth / f"{s}_desc-true_cbf.nii.gz")
    true_gm = _load(truth / f"{s}_desc-trueGM_cbf.nii.gz")
    mask = _load(_one(out, "*_desc-brain_mask.nii.gz")) > 0
    measured = _load(_one(out, "*_desc-paocsl_cbf.nii.gz"))
    measured = np.where(measured != 0, measured, np.nan)
    stored = _load(_one(out, "*_desc-pvcGM_cbf.nii.gz"))
    fractions = {"true": (gm, wm)}
    # the partial volumes averaged over each ASL voxel (what --pvc lr reads), and the
    # posteriors read at the voxel centres (the maps before 870f98a)
    fractions["pipeline partial vol"] = _t1w_maps_in_asl(
        out, "*_label-{t}_desc-pv_probseg.nii.gz", fractions_to_asl_space
    )
    fractions["posteriors voxel-avg"] = tuple(
        _load(_one(out, f"*_label-{t}_probseg.nii.gz")) for t in ("GM", "WM")
    )
    fractions["centre-sampled"] = _t1w_maps_in_asl(out, "*_label-{t}_probseg.nii.gz", to_asl_space)
    band = (true_cbf > 0) & (gm >= 0.3) & (gm <= 0.7) & np.isfinite(measured)
    print(f"{'CBF':10s} {'fractions':20s} {'GM bias':>8s} {'net':>7s} {'coverage':>8s}")
    for cbf_name, cbf in (("measured", measured), ("true", true_cbf)):
        for fr_name, (g, w) in fractions.items():
            res = lr_pvc(cbf, g, w, mask=mask)
            est = band & res.estimated
            own = np.mean(cbf[est]) / np.mean(true_cbf[est])
            bias = np.mean(res.gm[est]) / np.mean(true_gm[est]) - 1
            print(f"{cbf_name:10s} {fr_name:20s} {bias:+8.3f} {(1 + bias) / own - 1:+7.3f} "
                  f"{est.sum() / band.sum():8.2f}")  # fmt: skip
    est = band & (stored != 0)
    own = np.mean(measured[est]) / np.mean(true_cbf[est])
    bias = np.mean(stored[est]) / np.mean(true_gm[est]) - 1
    print(f"stored desc-pvcGM_cbf: GM bias {bias:+.3f}, net {(1 + bias) / own - 1:+.3f}")
    print(f"uncorrected: {np.mean(measured[band]) / np.mean(true_gm[band]) - 1:+.3f}")


if __name__ == "__main__":
    main()
