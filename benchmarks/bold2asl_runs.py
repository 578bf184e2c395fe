"""BOLD-to-ASL from BOLD runs: train by learning from noise, evaluate against the truth.

Each simulated subject (:func:`asl_pipeline.simulate.simulate_cbf_series`
with ``bold=True``: 40 pCASL pairs on the 64x64x20 grid and a resting BOLD
run on its own grid, see :mod:`asl_pipeline.simulate.bold`) gives one input
image, the BOLD run motion-corrected, its mean registered to the ASL
reference (the noise-free M0 of the ASL grid) and resampled onto the ASL grid
(:func:`asl_pipeline.bold.bold_to_asl`, what ``asl-pipeline --bold-to-cbf``
runs). Targets (methods spec 6.4, learning from noise): the mean CBF of each
of the 4 segments of 10 pairs, i.e. 4 independent noisy targets for the same
input (``Subject.bold`` is the BOLD image repeated for every pair, so
:func:`asl_pipeline.training.build_examples` pairs it with every segment).
A DWAN with ``input_kind="bold"`` is trained with an L1 loss on CPU.

Held-out subjects (seeds from :data:`asl_pipeline.training.TEST_SEED_OFFSET`
+ 70_000, simulated without outliers so that the plain means are not
handicapped) are scored inside the brain mask against the true CBF: the
prediction from the BOLD run, the mean of the first 10 pairs and of all 40.
Training subjects keep the simulator's outliers (spikes, slice corruptions).

Usage (the figures in benchmarks/RESULTS.md)::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bold2asl_runs.py --out /tmp/b2r \\
        --train-subjects 8 --test-subjects 4 --steps 240 --threads 1

The model is written to ``--out/dwan_boldrun_lfn_l1.pt``; copy it to
``asl_pipeline/data`` only if the table shows it beats the 10-pair mean.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from eval_bold2asl import bold_model_and_config  # benchmarks/ is sys.path[0] when run

MODEL = "dwan_boldrun_lfn_l1"
ASL = {"shape": (64, 64, 20), "voxel_size": (3.4, 3.4, 6.0), "labeling": "PCASL", "readout": "2D"}
BOLD = {"bold": True, "bold_volumes": 40, "bold_voxel_size": 4.0}


def bold_subject(seed: int, *, outliers: bool = True):
    """A training/test :class:`~asl_pipeline.training.Subject` with its BOLD image."""
    from asl_pipeline.bold import bold_to_asl
    from asl_pipeline.simulate import simulate_cbf_series
    from asl_pipeline.training import Subject

    sim = simulate_cbf_series(int(seed), n_pairs=40, outliers=outliers, **ASL, **BOLD)
    res = bold_to_asl(
        nib.Nifti1Image(sim.bold.data, sim.bold.affine), nib.Nifti1Image(sim.m0_true, sim.affine)
    )
    mask = np.asarray(sim.brain_mask, bool)
    image = np.where(mask, res.image, 0.0).astype(np.float32)
    return Subject(
        name=f"simbold-{seed}",
        series=sim.cbf_series,
        mask=mask,
        voxel_size=ASL["voxel_size"],
        truth=np.where(mask, sim.cbf, 0.0),
        gm=sim.gm,
        wm=sim.wm,
        info={"seed": int(seed)},
        bold=np.broadcast_to(image[..., None], sim.cbf_series.shape),
    )


def metrics(est, subj):
    from asl_pipeline.metrics import gm_wm_contrast, psnr

    mask = subj.mask
    gm, wm = (subj.gm > 0.7) & mask, (subj.wm > 0.9) & mask
    return {"psnr": psnr(est, subj.truth, mask), "gm_wm": gm_wm_contrast(est, gm, wm)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-subjects", type=int, default=8)
    parser.add_argument("--test-subjects", type=int, default=4)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from asl_pipeline.models import save_model
    from asl_pipeline.models.inference import denoise_volume
    from asl_pipeline.training import TEST_SEED_OFFSET, segment_means, train

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    subjects = [bold_subject(args.seed * 100_000 + 70_000 + i) for i in range(args.train_subjects)]
    sim_seconds = time.time() - t0
    print(f"simulated and registered {len(subjects)} training subjects in {sim_seconds:.0f} s")
    model, cfg = bold_model_and_config(args)
    t0 = time.time()
    hist = train(model, subjects[1:], subjects[:1], cfg, args.out / f"{MODEL}_run")
    train_seconds = time.time() - t0
    path = args.out / f"{MODEL}.pt"
    sha = save_model(
        model,
        path,
        metadata={
            "arch": "dwan",
            "input_kind": "bold",
            "input": "motion-corrected BOLD-run mean on the ASL grid (asl_pipeline.bold)",
            "scheme": "lfn",
            "loss": "l1",
            "target": "mean CBF of one segment of 10 pairs",
            "train_subjects": [s.name for s in subjects],
            "train_seconds": round(train_seconds, 1),
            "history": hist,
            "command": "benchmarks/bold2asl_runs.py " + " ".join(argv or []),
        },
    )
    del subjects
    rows: dict[str, list] = {}
    for k in range(args.test_subjects):
        subj = bold_subject(TEST_SEED_OFFSET + 70_000 + k, outliers=False)
        image = subj.bold[..., 0]
        est = {
            "bold-predicted": denoise_volume(model, image, subj.mask),
            "mean10": np.where(subj.mask, segment_means(subj.series)[0], 0.0),
            "mean40": np.where(subj.mask, subj.series.mean(-1), 0.0),
            "truth": subj.truth,
        }
        for name, e in est.items():
            rows.setdefault(name, []).append(metrics(e, subj))
    table = "| map | PSNR vs truth (dB) | GM/WM |\n|---|---|---|\n"
    summary = {}
    for name, vals in rows.items():
        p = np.array([v["psnr"] for v in vals], float)
        g = np.array([v["gm_wm"] for v in vals], float)
        summary[name] = {"psnr": float(np.mean(p[np.isfinite(p)])) if np.isfinite(p).any()
                         else float("inf"), "psnr_sd": float(np.std(p)),
                         "gm_wm": float(np.mean(g))}  # fmt: skip
        ps = "-" if name == "truth" else f"{np.mean(p):.2f} ± {np.std(p):.2f}"
        table += f"| {name} | {ps} | {np.mean(g):.2f} |\n"
    result = {
        "summary": summary,
        "model": {"path": str(path), "sha256": sha},
        "simulate_seconds": round(sim_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out / "bold2asl_runs.json").write_text(json.dumps(result, indent=2))
    (args.out / "bold2asl_runs.md").write_text(table)
    print(table)
    print(json.dumps({k: result[k] for k in ("simulate_seconds", "train_seconds", "model")}))


if __name__ == "__main__":
    main()
