"""Evaluation of CBF denoising on held-out simulated subjects (spec section 6.5).

Trains the comparison models with EQUAL short budgets (same training
subjects, optimizer steps, batch and crop size), then evaluates every method
on test subjects that were never used for training (simulator seeds from
:data:`asl_pipeline.training.TEST_SEED_OFFSET`), each with 40 pairs:

* 10-pair mean (the input of every network: mean of the first 10 pairs);
* 40-pair mean, outlier-cleaned (PAOCSL) and smoothed (FWHM 3 mm): the
  study's pseudo-ground-truth;
* U-Net, DilatedNet and DWAN trained by learning from noise (LFN) and with
  the pseudo-ground-truth target (L1 loss), and DWAN-LFN with the L2 loss;
* the shipped DWAN weights (longer training, see data_manifest.json).

Figures: PSNR/SSIM inside the brain mask against the true CBF and against
the 40-pair pseudo-ground-truth, SNR (GM mean / WM SD on one slice), GM/WM
contrast, voxel-wise correlation with the truth across test subjects (median
r in the common mask, and the fraction of voxels with r > 0.3). Test sets
with and without simulated outliers are reported separately.

Usage (the figures in benchmarks/RESULTS.md)::

    python benchmarks/eval_dwan.py --out /tmp/dwan_eval --train-subjects 32 \\
        --steps 300 --test-subjects 12 --threads 1

``--skip-train`` re-evaluates models already in ``--out/models``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

#: Comparison models: (name, architecture, scheme, loss).
CONFIGS = (
    ("dwan_lfn_l1", "dwan", "lfn", "l1"),
    ("dwan_lfn_l2", "dwan", "lfn", "l2"),
    ("dwan_pgt_l1", "dwan", "pseudo-gt", "l1"),
    ("unet_lfn_l1", "unet", "lfn", "l1"),
    ("unet_pgt_l1", "unet", "pseudo-gt", "l1"),
    ("dilatednet_lfn_l1", "dilatednet", "lfn", "l1"),
    ("dilatednet_pgt_l1", "dilatednet", "pseudo-gt", "l1"),
)

#: Acquisition of the test subjects (the simulator's default grid, pCASL 2D).
TEST_SETTINGS = {
    "shape": (64, 64, 20),
    "voxel_size": (3.4, 3.4, 6.0),
    "labeling": "PCASL",
    "readout": "2D",
    "noise_scale": 1.0,
}


def train_models(args, out_models: Path) -> dict:
    import torch

    from asl_pipeline.models import build_model, save_model
    from asl_pipeline.training import TrainConfig, simulate_subjects, split_subjects, train

    t0 = time.time()
    subjects = simulate_subjects(args.train_subjects, seed=args.seed, progress=True)
    train_subj, val_subj = split_subjects(subjects, 0.1, args.seed)
    print(f"simulated {len(subjects)} training subjects in {time.time() - t0:.0f} s")
    times = {}
    for name, arch, scheme, loss in CONFIGS:
        path = out_models / f"{name}.pt"
        if path.is_file():
            print(f"{name}: exists, skipped")
            continue
        torch.manual_seed(args.seed)
        model = build_model(arch)
        cfg = TrainConfig(
            epochs=args.epochs,
            steps_per_epoch=args.steps // args.epochs,
            batch_size=args.batch_size,
            patch_size=args.patch_size,
            loss=loss,
            scheme=scheme,
            seed=args.seed,
            progress=False,
        )
        t1 = time.time()
        hist = train(model, train_subj, val_subj, cfg, out_models / f"{name}_run", resume=True)
        times[name] = time.time() - t1
        save_model(
            model,
            path,
            metadata={
                "arch": arch,
                "scheme": scheme,
                "loss": loss,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "patch_size": args.patch_size,
                "train_seconds": round(sum(h["train_seconds"] for h in hist), 1),
                "history": hist,
                "command": "benchmarks/eval_dwan.py (comparison model)",
            },
        )
        print(f"{name}: {times[name]:.0f} s, last epoch {hist[-1]}")
    return times


def _metrics(est, subj, pgt, mask):
    from asl_pipeline.metrics import gm_wm_contrast, psnr, snr, ssim

    gm, wm = subj.gm > 0.7, subj.wm > 0.7
    return {
        "psnr_truth": psnr(est, subj.truth, mask),
        "ssim_truth": ssim(est, subj.truth, mask),
        "psnr_pgt": psnr(est, pgt, mask),
        "ssim_pgt": ssim(est, pgt, mask),
        "snr": snr(est, gm & mask, wm & mask),
        "gm_wm": gm_wm_contrast(est, gm & mask, wm & mask),
    }


def evaluate(args, models: dict, outliers: bool):
    """Figures of every method on the test subjects (with or without outliers)."""
    from asl_pipeline.metrics import voxelwise_correlation
    from asl_pipeline.models.inference import denoise_volume
    from asl_pipeline.training import (
        TEST_SEED_OFFSET,
        pseudo_ground_truth,
        segment_means,
        simulate_subject_series,
    )

    per = {}
    maps = {}
    truths, masks = [], []
    offset = TEST_SEED_OFFSET + (0 if outliers else 50_000)
    for k in range(args.test_subjects):
        subj = simulate_subject_series(offset + k, 40, outliers=outliers, **TEST_SETTINGS)
        mask = subj.mask
        truth = np.where(mask, subj.truth, 0.0)
        subj.truth = truth
        pgt = pseudo_ground_truth(
            subj.series, mask, voxel_size=subj.voxel_size, fwhm=3.0, gm=subj.gm, wm=subj.wm
        )
        inp = np.where(mask, segment_means(subj.series)[0], 0.0)
        estimates = {"truth": truth, "mean10": inp, "mean40_clean_smooth": pgt}
        for name, model in models.items():
            estimates[name] = denoise_volume(model, inp, mask)
        for name, est in estimates.items():
            per.setdefault(name, []).append(_metrics(est, subj, pgt, mask))
            maps.setdefault(name, []).append(est)
        truths.append(truth)
        masks.append(mask)
    common = np.logical_and.reduce(masks)
    rows = {}
    for name, vals in per.items():
        row = {key: float(np.mean([v[key] for v in vals])) for key in vals[0]}
        row.update({f"{key}_sd": float(np.std([v[key] for v in vals])) for key in vals[0]})
        r = voxelwise_correlation(np.stack(maps[name]), np.stack(truths), common)
        row["corr_median"] = float(np.nanmedian(r[common]))
        row["corr_frac_gt_0.3"] = float(np.mean(r[common] > 0.3))
        # paired per-subject PSNR difference against the 40-pair pseudo-ground-truth
        diff = np.array([v["psnr_truth"] for v in vals]) - np.array(
            [v["psnr_truth"] for v in per["mean40_clean_smooth"]]
        )
        row["paired_vs_mean40"] = {
            "mean": float(diff.mean()),
            "se": float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan"),
            "wins": int((diff > 0).sum()),
            "n": int(diff.size),
            "min": float(diff.min()),
            "max": float(diff.max()),
        }
        rows[name] = row
    return rows


def markdown(rows: dict, title: str) -> str:
    head = (
        f"**{title}**\n\n"
        "| method | PSNR vs truth | SSIM vs truth | PSNR vs 40-pair | SSIM vs 40-pair "
        "| SNR | GM/WM | voxel r (median) | r > 0.3 |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['psnr_truth']:.2f} ± {r['psnr_truth_sd']:.2f} "
            f"| {r['ssim_truth']:.3f} | {r['psnr_pgt']:.2f} | {r['ssim_pgt']:.3f} "
            f"| {r['snr']:.2f} | {r['gm_wm']:.2f} | {r['corr_median']:.2f} "
            f"| {100 * r['corr_frac_gt_0.3']:.0f}% |"
        )
    return head + "\n".join(lines) + "\n"


def paired_markdown(rows: dict) -> str:
    """Per-subject PSNR (vs truth) differences against the 40-pair mean, one line each."""
    lines = ["PSNR vs truth minus the 40-pair mean's, paired by subject:", ""]
    for name, r in rows.items():
        if name in ("truth", "mean40_clean_smooth"):
            continue
        p = r["paired_vs_mean40"]
        lines.append(
            f"* {name}: {p['mean']:+.2f} dB (SE {p['se']:.2f}), better on {p['wins']} of "
            f"{p['n']} subjects, range {p['min']:+.2f} to {p['max']:+.2f}"
        )
    return "\n".join(lines) + "\n"


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options shared by the evaluation scripts: output, training budget, test set."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-subjects", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per model")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--test-subjects", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-train", action="store_true")
    return parser


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--shipped", default="shipped", help="shipped weights ('' to skip)")
    args = parser.parse_args(argv)

    import torch

    from asl_pipeline.models import load_model

    torch.set_num_threads(args.threads)
    out_models = args.out / "models"
    out_models.mkdir(parents=True, exist_ok=True)
    if not args.skip_train:
        train_models(args, out_models)
    models, info = {}, {}
    for name, *_ in CONFIGS:
        path = out_models / f"{name}.pt"
        if path.is_file():
            models[name], info[name] = load_model(path)
    if args.shipped:
        path = None if args.shipped == "shipped" else args.shipped
        try:
            models["dwan_lfn_l1_shipped"], info["dwan_lfn_l1_shipped"] = load_model(path)
        except Exception as err:  # the weights may not be built yet
            print(f"shipped weights not evaluated: {err}")
    results = {}
    text = ""
    for outliers in (True, False):
        t0 = time.time()
        rows = evaluate(args, models, outliers)
        key = "with_outliers" if outliers else "without_outliers"
        results[key] = rows
        title = (
            f"{args.test_subjects} held-out subjects, 40 pairs, "
            f"{'with' if outliers else 'without'} simulated outliers"
        )
        text += markdown(rows, title) + "\n" + paired_markdown(rows) + "\n"
        print(f"evaluated ({key}) in {time.time() - t0:.0f} s")
    budgets = {
        name: {
            k: i["metadata"].get(k) for k in ("steps", "batch_size", "patch_size", "train_seconds")
        }
        for name, i in info.items()
    }
    results["budgets"] = budgets
    results["settings"] = {k: str(v) for k, v in vars(args).items()}
    (args.out / "eval_dwan.json").write_text(json.dumps(results, indent=2))
    (args.out / "eval_dwan.md").write_text(text)
    print(text)
    print("budgets:", json.dumps(budgets, indent=1))


if __name__ == "__main__":
    main()
