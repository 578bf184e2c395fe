"""Benchmark of the spatial stage: realignment and the whole stage for one subject.

Each measurement runs in a fresh child process, so its wall time and peak
resident memory (``ru_maxrss``, which also counts ANTs' C++ allocations) are
its own. The baseline is antspyx's own motion correction
(``ants.motion_correction``, rigid, to the series mean), run side by side on
the same simulated series.

Accuracy is scored against the simulator's truth: for realignment the largest
and mean error over volumes of the pose (translation at the grid centre, mm;
rotation angle, deg), poses expressed relative to volume 0; for the stage the
mean displacement error inside the brain of ASL->T1w and T1w->MNI, and the
Dice of hard GM/WM labels with the true fractions.

Usage::

    OMP_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=2 \\
        python benchmarks/bench_spatial.py [--seed 1] [--no-stage] [--no-ants]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
import time

import numpy as np


def _pose_errors(est_mats, true_mats, centre):
    est = np.linalg.inv(est_mats[0]) @ est_mats
    out = []
    for e, t in zip(est, true_mats, strict=True):
        d = np.linalg.inv(t) @ e
        ang = np.degrees(np.arccos(np.clip((np.trace(d[:3, :3]) - 1) / 2, -1, 1)))
        out.append((np.linalg.norm(d[:3, :3] @ centre + d[:3, 3] - centre), ang))
    return np.array(out)


def _subject(path):
    import pickle

    with open(path, "rb") as fobj:
        return pickle.load(fobj)


class _Series:
    """Just the ASL series and its truth (what the realignment jobs need)."""

    def __init__(self, path):
        with np.load(path.replace(".pkl", "_series.npz")) as f:
            self.asl = f["asl"]
            self.asl_affine = f["asl_affine"]
            self.motion = f["motion"]
            self.aslcontext = [str(v) for v in f["aslcontext"]]


def _true_mats(s):
    from asl_pipeline.simulate.motion import motion_matrix

    return np.array([motion_matrix(p, s.asl_affine, s.asl.shape[:3]) for p in s.motion])


def job_realign(path, variant):
    from asl_pipeline import motion as mo

    s = _Series(path)
    kw = {} if variant == "cubic refine (default)" else {"refine_level": (1, 1.0, 1)}
    t0 = time.perf_counter()
    params, _ = mo.estimate_motion(s.asl, s.asl_affine, **kw)
    t_est = time.perf_counter() - t0
    res = mo.apply_realignment(s.asl, s.asl_affine, s.aslcontext, params)
    wall = time.perf_counter() - t0
    centre = mo.grid_centre(s.asl.shape, s.asl_affine)
    # raw estimates: the zig-zag removal also removes the zig-zag part of the
    # true motion, and the baseline has no such step
    err = _pose_errors(mo.params_to_matrix(res.params_raw, centre), _true_mats(s), centre)
    return dict(wall=wall, estimate=t_est, err=err)


def job_ants(path):
    import ants
    import nibabel as nib

    from asl_pipeline import motion as mo
    from asl_pipeline import registration as reg

    s = _Series(path)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "asl.nii.gz")
        nib.Nifti1Image(s.asl, s.asl_affine).to_filename(path)
        img = ants.image_read(path)
        t0 = time.perf_counter()
        mc = ants.motion_correction(img, type_of_transform="Rigid")
        wall = time.perf_counter() - t0
        # each transform maps points of the fixed (mean) image to the volume
        mats = np.array([reg.read_itk_affine(t[0]) for t in mc["motion_parameters"]])
    centre = mo.grid_centre(s.asl.shape, s.asl_affine)
    err = _pose_errors(mats, _true_mats(s), centre)
    return dict(wall=wall, estimate=wall, err=err)


def job_stage(path):
    import nibabel as nib

    from asl_pipeline import motion as mo
    from asl_pipeline import registration as reg
    from asl_pipeline import segmentation as seg
    from asl_pipeline.qc import dice

    s = _subject(path)
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = mo.realign_asl(s.asl, s.asl_affine, s.aslcontext, m0=s.m0, m0_affine=s.asl_affine)
        times["realign (series + M0)"] = time.perf_counter() - t0
        t = time.perf_counter()
        anat = seg.preprocess_t1w(nib.Nifti1Image(s.t1w, s.t1w_affine), tmp)
        times["T1w: N4, MNI (affine+SyN), mask, Atropos"] = time.perf_counter() - t
        t = time.perf_counter()
        ref = nib.Nifti1Image(res.reference, s.asl_affine)
        xfm = reg.register_asl_to_t1w(ref, anat.t1w_brain, os.path.join(tmp, "a2t.mat"))
        maps = {k: reg.to_asl_space(getattr(anat, k), ref, xfm).get_fdata() for k in ("gm", "wm")}
        reg.to_asl_space(anat.t1w_mask, ref, xfm)
        times["ASL -> T1w + maps to ASL"] = time.perf_counter() - t
        t = time.perf_counter()
        tpl = reg.load_template(2)
        cbf = nib.Nifti1Image(s.cbf.astype(np.float32), s.asl_affine)
        reg.apply_transforms(cbf, tpl.t1, [anat.mni.t1w_to_mni, xfm])
        times["CBF -> MNI (one interpolation)"] = time.perf_counter() - t
        wall = time.perf_counter() - t0
        pts = np.argwhere(s.brain_mask_t1w)[::20] @ s.t1w_affine[:3, :3].T + s.t1w_affine[:3, 3]
        qi = np.linalg.inv(s.asl_to_t1w)
        e_reg = np.linalg.norm(
            reg.points_through([xfm], pts) - (pts @ qi[:3, :3].T + qi[:3, 3]), axis=1
        )
        e_mni = np.linalg.norm(
            reg.points_through([anat.mni.mni_to_t1w], pts) - s.subject_to_mni_points(pts), axis=1
        )
    truth = np.argmax(np.stack([s.gm_t1w, s.wm_t1w, s.csf_t1w]), 0)
    est = np.argmax(np.stack([anat.gm.get_fdata(), anat.wm.get_fdata(), anat.csf.get_fdata()]), 0)
    em, tm = anat.t1w_mask.get_fdata() > 0, s.brain_mask_t1w
    return dict(
        wall=wall,
        times=times,
        asl_t1w=e_reg.mean(),
        t1w_mni=e_mni.mean(),
        t1w_mni_p95=np.percentile(e_mni, 95),
        dice_gm=dice((est == 0) & em, (truth == 0) & tm),
        dice_wm=dice((est == 1) & em, (truth == 1) & tm),
        dice_mask=dice(em, tm),
        dice_gm_asl=dice(maps["gm"] > 0.5, s.gm > 0.5),
        dice_wm_asl=dice(maps["wm"] > 0.5, s.wm > 0.5),
    )


def _child(conn, fn, args):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = fn(*args)
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["base_mb"] = before / 1024
    conn.send(out)


def _noop():
    return {}


def _load_only(path):
    """Peak memory of a child that only imports and loads the data (reference)."""
    import ants  # noqa: F401

    import asl_pipeline.motion  # noqa: F401

    _Series(path)
    return {}


def run(fn, *args):
    # forkserver: children fork from a small server process started before the
    # parent simulated anything, so ru_maxrss (kept across fork/exec) is theirs
    ctx = mp.get_context("forkserver")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, fn, args))
    proc.start()
    out = parent.recv()
    proc.join()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-stage", action="store_true")
    parser.add_argument("--no-ants", action="store_true")
    args = parser.parse_args(argv)

    import pickle

    from asl_pipeline.simulate import simulate_subject

    run(_noop)  # start the fork server while this process is still small
    tmpdir = tempfile.mkdtemp()
    path = os.path.join(tmpdir, "subject.pkl")
    sub = simulate_subject(args.seed, t1w_voxel_size=2.0)
    with open(path, "wb") as fobj:
        pickle.dump(sub, fobj)
    np.savez(
        path.replace(".pkl", "_series.npz"),
        asl=sub.asl,
        asl_affine=sub.asl_affine,
        motion=sub.motion,
        aslcontext=np.array(sub.aslcontext),
    )
    del sub
    print(f"seed {args.seed}; 80 volumes of 64x64x20 (3.4x3.4x6 mm), simulated motion")
    print("(simulated once in the parent; each method runs in a fresh process that loads it)")
    print(f"{'method':34s} {'wall s':>7s} {'peak MB':>8s} {'max mm':>7s} {'max deg':>8s}"
          f" {'mean mm':>8s}")  # fmt: skip
    rows = {}
    for variant in ("cubic refine (default)", "trilinear only"):
        rows[variant] = run(job_realign, path, variant)
    if not args.no_ants:
        rows["ants.motion_correction (baseline)"] = run(job_ants, path)
    idle = run(_load_only, path)
    print(f"(a child that imports antspyx and loads the series peaks at {idle['peak_mb']:.0f} MB)")
    for name, r in rows.items():
        e = r["err"]
        print(f"{name:34s} {r['wall']:7.2f} {r['peak_mb']:8.0f} {e[:, 0].max():7.3f}"
              f" {e[:, 1].max():8.3f} {e[:, 0].mean():8.3f}")  # fmt: skip
    if "ants.motion_correction (baseline)" in rows:
        base = rows["ants.motion_correction (baseline)"]
        ours = rows["cubic refine (default)"]
        ratio = base["err"][:, 0].max() / ours["err"][:, 0].max()
        print(
            f"speed-up vs ants: {base['wall'] / ours['wall']:.1f}x; "
            f"max error ratio (ants/ours): {ratio:.1f}x"
        )
    if not args.no_stage:
        st = run(job_stage, path)
        print(
            f"\nwhole spatial stage (T1w 2 mm): {st['wall']:.1f} s, peak {st['peak_mb']:.0f} MB"
            " (includes the pickled simulated subject with all its truth maps)"
        )
        for k, v in st["times"].items():
            print(f"  {k:42s} {v:6.1f} s")
        print(
            f"  ASL->T1w mean error {st['asl_t1w']:.2f} mm; T1w->MNI mean {st['t1w_mni']:.2f} mm"
            f" (p95 {st['t1w_mni_p95']:.2f}); Dice mask {st['dice_mask']:.3f}, "
            f"GM {st['dice_gm']:.3f}, WM {st['dice_wm']:.3f} (T1w); "
            f"GM {st['dice_gm_asl']:.3f}, WM {st['dice_wm_asl']:.3f} (ASL, >0.5)"
        )


if __name__ == "__main__":
    main()
