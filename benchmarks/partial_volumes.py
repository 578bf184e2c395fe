"""Tissue fractions of the T1w segmentation against the truth of both simulators.

For each subject the embedded T1w preprocessing runs on the simulated T1w
(:func:`asl_pipeline.segmentation.preprocess_t1w`); its Atropos posteriors and
its partial-volume fractions (:func:`asl_pipeline.segmentation.partial_volumes`)
are compared with the generator's true fractions on the T1w grid, averaged
over blocks about the size of an ASL voxel's in-plane side (4 voxels of the
simulator's 1 mm T1w, 3 of the phantom's 1.5 mm one), where the true GM
fraction is 0.3-0.7 and the block lies inside the brain mask: mean signed and
absolute error, and the slope of estimated on true fraction over all brain
blocks. On the simulator (which knows each voxel's GM and WM CBF) the
linear-regression PVC (5 x 5 x 1) is then run on the noise-free true CBF with
each set of fractions brought to the ASL grid through the true transform
(:func:`asl_pipeline.registration.fractions_to_asl_space`), and the corrected GM
CBF is compared with the true GM CBF at voxels with true GM fraction 0.3-0.7.

    python benchmarks/partial_volumes.py --sim 1 3 --phantom 1 2

About 2 minutes per subject on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile

import nibabel as nib
import numpy as np

from asl_pipeline.pvc import lr_pvc
from asl_pipeline.registration import fractions_to_asl_space, write_itk_affine
from asl_pipeline.segmentation import preprocess_t1w
from asl_pipeline.simulate import phantom as ph
from asl_pipeline.simulate.series import simulate_subject


def _phantom_truth(seed: int, shape, affine) -> dict:
    """The phantom's true fractions on its T1w grid (2 x 2 x 2 points, as its T1w)."""
    anat = ph.make_anatomy(np.random.default_rng(seed), ph.load_dro(), voxel=1.0)
    offs = ph._subsample_offsets((2, 2, 2))
    truth = {k: np.zeros(shape, np.float32) for k in ("gm", "wm", "csf")}
    ii, jj = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for i in range(shape[0]):
        ijk = np.stack([np.full(ii.size, i), ii.ravel(), jj.ravel()], axis=1)
        pts = (ijk[:, None, :] + offs[None]).reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
        lab = anat.labels_at(pts).reshape(-1, len(offs))
        truth["gm"][i] = (lab == ph.GM).mean(1).reshape(shape[1:])
        truth["wm"][i] = (lab == ph.WM).mean(1).reshape(shape[1:])
        truth["csf"][i] = np.isin(lab, (ph.CSF, ph.SULCAL_CSF)).mean(1).reshape(shape[1:])
    return truth


def _blocks(a, b: int) -> np.ndarray:
    sh = [n // b * b for n in a.shape]
    a = a[: sh[0], : sh[1], : sh[2]]
    return a.reshape(sh[0] // b, b, sh[1] // b, b, sh[2] // b, b).mean((1, 3, 5))


def _score(est, truth, mask, b: int) -> tuple[float, float, float]:
    e, t, m = _blocks(est, b), _blocks(truth, b), _blocks(mask.astype(float), b) > 0.99
    band = (t > 0.3) & (t < 0.7) & m
    slope = np.polyfit(t[m], e[m], 1)[0]
    return float(np.mean(e[band] - t[band])), float(np.mean(np.abs(e[band] - t[band]))), slope


def _pvc_bias(sub, maps, affine, xfm) -> tuple[float, float]:
    ref = nib.Nifti1Image(np.zeros(sub.gm.shape, np.float32), sub.asl_affine)
    gm, wm = (
        fractions_to_asl_space(
            nib.Nifti1Image(maps[t].astype(np.float32), affine), ref, xfm
        ).get_fdata()
        for t in ("gm", "wm")
    )
    res = lr_pvc(sub.cbf, gm, wm, mask=sub.brain_mask)
    band = (sub.gm > 0.3) & (sub.gm < 0.7) & sub.brain_mask
    sel = band & np.isfinite(res.gm)
    return float(np.mean(res.gm[sel]) / np.mean(sub.cbf_gm[sel]) - 1), float(
        sel.sum() / band.sum()
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", type=int, nargs="*", default=[1, 3], help="simulator seeds")
    parser.add_argument("--phantom", type=int, nargs="*", default=[1, 2], help="phantom seeds")
    args = parser.parse_args(argv)
    print(
        "| subject | fractions | GM err (band) | GM abs err | GM slope | WM err (band) "
        "| WM abs err | PVC GM bias (noise-free) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    subjects = [("sim", s) for s in args.sim] + [("phantom", s) for s in args.phantom]
    for kind, seed in subjects:
        if kind == "sim":
            sub = simulate_subject(seed, n_pairs=2)
            truth = {"gm": sub.gm_t1w, "wm": sub.wm_t1w}
        else:
            sub = ph.simulate_phantom(seed, n_pairs=2)
            truth = _phantom_truth(seed, sub.t1w.shape, sub.t1w_affine)
        block = 4 if abs(sub.t1w_affine[0, 0]) < 1.2 else 3
        with tempfile.TemporaryDirectory() as tmp:
            res = preprocess_t1w(nib.Nifti1Image(sub.t1w, sub.t1w_affine), tmp)
            mask = res.t1w_mask.get_fdata() > 0
            sets = {
                "posteriors": {t: getattr(res, t).get_fdata() for t in ("gm", "wm")},
                "partial volumes": {t: getattr(res, f"{t}_pv").get_fdata() for t in ("gm", "wm")},
            }
            if kind == "sim":
                sets["truth"] = truth
                # the ANTs file for asl_to_t1w maps T1w points to ASL points
                xfm = write_itk_affine(np.linalg.inv(sub.asl_to_t1w), f"{tmp}/asl_to_t1w.mat")
            for label, maps in sets.items():
                g = _score(maps["gm"], truth["gm"], mask, block)
                w = _score(maps["wm"], truth["wm"], mask, block)
                pvc = "-"
                if kind == "sim":
                    bias, cover = _pvc_bias(sub, maps, sub.t1w_affine, xfm)
                    pvc = f"{bias:+.1%} ({cover:.0%} of voxels)"
                print(
                    f"| {kind} {seed} | {label} | {g[0]:+.3f} | {g[1]:.3f} | {g[2]:.2f} "
                    f"| {w[0]:+.3f} | {w[1]:.3f} | {pvc} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
