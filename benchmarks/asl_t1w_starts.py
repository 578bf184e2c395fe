"""ASL -> T1w registration error against the simulator's truth, per start and kept.

Reads a validation panel written by ``benchmarks/validate_chain.py`` (the
simulated BIDS data with their true ASL -> T1w transform, and a pipeline run
per subject for its ASL reference and preprocessed T1w) and registers each
subject's ASL reference to its T1w brain with
:func:`asl_pipeline.registration.register_asl_to_t1w` under two seeds. The
error is the mean distance, over every 50th T1w brain voxel, between the
points mapped by the estimate and by the truth. With ``--stored`` the
transform stored by the panel run is scored too (the code that ran it).

    python benchmarks/asl_t1w_starts.py --panel /work/panel [--config plain] [--subjects ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from asl_pipeline import registration as reg


def truth_points(panel: Path, name: str, run: Path):
    """T1w brain points and where the true transform puts them in ASL space."""
    truth = np.loadtxt(
        panel / "data" / name / "derivatives" / "simulation" / "sub-01" / "perf"
        / "sub-01_from-ASL_to-T1w_mode-image_xfm.txt"
    )  # fmt: skip
    mask = nib.load(run / "anat" / "sub-01_desc-brain_mask.nii.gz")
    ijk = np.argwhere(np.asanyarray(mask.dataobj) > 0)[::50]
    pts = np.c_[ijk, np.ones(len(ijk))] @ mask.affine.T
    expected = pts @ np.linalg.inv(truth).T
    return pts[:, :3], expected[:, :3]


def error(xfm, pts, expected) -> float:
    return float(np.linalg.norm(reg.points_through([xfm], pts) - expected, axis=1).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", type=Path, required=True)
    parser.add_argument("--config", default="plain", help="panel configuration to read")
    parser.add_argument("--subjects", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--stored", action="store_true", help="score the stored transform too")
    args = parser.parse_args(argv)
    reg.LOGGER.propagate = False  # the starts are read below, not printed
    names = args.subjects or sorted(p.name for p in (args.panel / "out" / args.config).iterdir())
    print("| subject | " + ("stored | " if args.stored else "") + " | ".join(
        f"seed {s} mm (start kept)" for s in args.seeds) + " |")  # fmt: skip
    print("|---|" + ("---:|" if args.stored else "") + "---:|" * len(args.seeds))
    tmp = Path(tempfile.mkdtemp(prefix="asl_t1w_starts_"))
    for name in names:
        run = args.panel / "out" / args.config / name / "sub-01"
        pts, expected = truth_points(args.panel, name, run)
        t1w = nib.load(run / "anat" / "sub-01_desc-preproc_T1w.nii.gz")
        mask = nib.load(run / "anat" / "sub-01_desc-brain_mask.nii.gz")
        brain = nib.Nifti1Image(
            np.asanyarray(t1w.dataobj) * (np.asanyarray(mask.dataobj) > 0), t1w.affine
        )
        ref = nib.load(run / "perf" / "sub-01_aslref.nii.gz")
        cells = []
        if args.stored:
            stored = run / "perf" / "sub-01_from-asl_to-T1w_mode-image_xfm.mat"
            cells.append(f"{error(str(stored), pts, expected):.2f}")
        for seed in args.seeds:
            kept = []
            handler = logging.Handler()
            handler.emit = lambda rec, kept=kept: kept.append(rec.getMessage())
            reg.LOGGER.addHandler(handler)
            reg.LOGGER.setLevel(logging.INFO)
            try:
                xfm = reg.register_asl_to_t1w(
                    ref, brain, tmp / f"{name}_{seed}.mat", t1w_mask=mask, seed=seed
                )
            finally:
                reg.LOGGER.removeHandler(handler)
            start = next((m.rsplit(" ", 1)[-1] for m in kept if "kept" in m), "?")
            cells.append(f"{error(xfm, pts, expected):.2f} ({start})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
