"""Evaluation of BOLD-to-ASL prediction on held-out simulated subjects (spec 6.4).

Trains a DWAN with a BOLD-weighted input (``asl-train --input bold``): the
label/control average of a segment of 10 pairs as input, a DIFFERENT
segment's mean CBF as the learning-from-noise target (L1 loss), with a short
CPU budget. Then evaluates, on test subjects never used for training
(simulator seeds from :data:`asl_pipeline.training.TEST_SEED_OFFSET`, 40
pairs, the simulator's default pCASL 2D grid; one set with simulated
outliers, one without, as in ``eval_dwan.py``):

* ``bold2cbf``: the network's CBF predicted from the label/control average
  of the first 10 pairs;
* ``global_linear``: ``a + b * bold / median``, one straight line fitted by
  least squares on the training subjects (the network's own inputs and
  targets, in-mask voxels): a baseline that knows nothing spatial;
* ``constant``: the mean training target, the same everywhere in the brain;
* ``mean10``: the measured CBF, mean of the first 10 pairs;
* ``mean40``: the measured CBF, mean of all 40 pairs (for reference);
* ``truth``: the true CBF (its GM/WM contrast is the one to reach).

Figures: PSNR/SSIM inside the brain mask against the true CBF, the spatial
Pearson r with the truth inside the mask (per subject, averaged), GM/WM
contrast, and the voxel-wise correlation with the truth across test subjects
(median r in the common mask).

Usage (the figures in benchmarks/RESULTS.md)::

    OMP_NUM_THREADS=1 python benchmarks/eval_bold2asl.py --out /tmp/b2a \\
        --train-subjects 32 --steps 300 --test-subjects 12 --threads 1

``--skip-train`` re-evaluates a model already in ``--out/models``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from eval_dwan import TEST_SETTINGS, base_parser  # benchmarks/ is sys.path[0] when run

MODEL = "dwan_bold_lfn_l1"


def bold_model_and_config(args):
    """A fresh BOLD-input DWAN (seeded) and its learning-from-noise L1 training set-up,
    from the ``--epochs --steps --batch-size --patch-size --seed`` options."""
    import torch

    from asl_pipeline.models import build_model
    from asl_pipeline.training import TrainConfig

    torch.manual_seed(args.seed)
    model = build_model("dwan", input_kind="bold")
    cfg = TrainConfig(
        epochs=args.epochs,
        steps_per_epoch=args.steps // args.epochs,
        batch_size=args.batch_size,
        patch_size=args.patch_size,
        loss="l1",
        scheme="lfn",
        seed=args.seed,
        progress=False,
        input_kind="bold",
    )
    return model, cfg


def train_model(args, train_subj, val_subj, path: Path) -> None:
    from asl_pipeline.models import save_model
    from asl_pipeline.training import train

    model, cfg = bold_model_and_config(args)
    t0 = time.time()
    hist = train(model, train_subj, val_subj, cfg, path.parent / f"{MODEL}_run", resume=True)
    save_model(
        model,
        path,
        metadata={
            "arch": "dwan",
            "input_kind": "bold",
            "scheme": "lfn",
            "loss": "l1",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "patch_size": args.patch_size,
            "train_subjects": [s.name for s in train_subj],
            "train_seconds": round(sum(h["train_seconds"] for h in hist), 1),
            "history": hist,
            "command": "benchmarks/eval_bold2asl.py",
        },
    )
    print(f"{MODEL}: {time.time() - t0:.0f} s, last epoch {hist[-1]}")


def fit_global_linear(subjects):
    """Least-squares ``cbf = a + b * bold / slice median`` and the constant (mean) baseline.

    Pooled over the in-mask voxels of the training examples (segment k's
    BOLD -> segment k+1's CBF, and swapped), exactly what the network saw.
    """
    from asl_pipeline.training import build_examples

    ex = build_examples(subjects, scheme="lfn", input_kind="bold")
    xs = np.concatenate([x[m] / s for x, m, s in zip(ex.inputs, ex.masks, ex.scales, strict=True)])
    ys = np.concatenate([y[m] for y, m in zip(ex.targets, ex.masks, strict=True)])
    b, a = np.polyfit(xs.astype(float), ys.astype(float), 1)
    return {"a": float(a), "b": float(b), "constant": float(ys.mean()), "voxels": int(xs.size)}


def apply_global_linear(bold, mask, fit):
    """The fitted line applied slice by slice (the same per-slice median normalisation)."""
    from asl_pipeline.models.normalise import bold_scale

    out = np.zeros(bold.shape, np.float32)
    for z in range(bold.shape[2]):
        m = mask[:, :, z]
        if m.any():
            sl = np.where(m, bold[:, :, z], 0)
            out[:, :, z] = np.where(m, fit["a"] + fit["b"] * sl / bold_scale(sl), 0)
    return out


def _metrics(est, subj, mask):
    from asl_pipeline.metrics import gm_wm_contrast, psnr, ssim

    gm, wm = subj.gm > 0.7, subj.wm > 0.7
    return {
        "psnr_truth": psnr(est, subj.truth, mask),
        "ssim_truth": ssim(est, subj.truth, mask),
        "r_spatial": float(np.corrcoef(est[mask], subj.truth[mask])[0, 1])
        if np.std(est[mask]) > 0
        else float("nan"),
        "gm_wm": gm_wm_contrast(est, gm & mask, wm & mask),
    }


def evaluate(args, model, fit, outliers: bool):
    from asl_pipeline.metrics import voxelwise_correlation
    from asl_pipeline.models.inference import denoise_volume
    from asl_pipeline.training import TEST_SEED_OFFSET, segment_means, simulate_subject_series

    per, maps, truths, masks = {}, {}, [], []
    offset = TEST_SEED_OFFSET + (0 if outliers else 50_000)
    for k in range(args.test_subjects):
        subj = simulate_subject_series(
            offset + k, 40, bold=True, outliers=outliers, **TEST_SETTINGS
        )
        mask = subj.mask
        subj.truth = np.where(mask, subj.truth, 0.0)
        bold10 = np.where(mask, subj.bold[..., :10].mean(-1), 0.0)
        estimates = {
            "truth": subj.truth,
            "bold2cbf": denoise_volume(model, bold10, mask),
            "global_linear": apply_global_linear(bold10, mask, fit),
            "constant": np.where(mask, fit["constant"], 0.0),
            "mean10": np.where(mask, segment_means(subj.series)[0], 0.0),
            "mean40": np.where(mask, subj.series.mean(-1), 0.0),
        }
        for name, est in estimates.items():
            per.setdefault(name, []).append(_metrics(est, subj, mask))
            maps.setdefault(name, []).append(est)
        truths.append(subj.truth)
        masks.append(mask)
    common = np.logical_and.reduce(masks)
    rows = {}
    for name, vals in per.items():
        row = {}
        for key in vals[0]:
            vs = np.array([v[key] for v in vals], float)
            finite = vs[np.isfinite(vs)] if not np.isinf(vs).all() else vs
            row[key] = float(finite.mean()) if finite.size else float("nan")
            row[f"{key}_sd"] = float(finite.std()) if finite.size else float("nan")
        if name != "constant" and len(truths) >= 3:
            r = voxelwise_correlation(np.stack(maps[name]), np.stack(truths), common)
            row["corr_median"] = float(np.nanmedian(r[common]))
        rows[name] = row
    return rows


def markdown(rows: dict, title: str) -> str:
    head = (
        f"**{title}**\n\n"
        "| method | PSNR vs truth | SSIM vs truth | spatial r | GM/WM | voxel r (median) |\n"
        "|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, r in rows.items():
        corr = f"{r['corr_median']:.2f}" if "corr_median" in r else "-"
        spatial = "-" if np.isnan(r["r_spatial"]) else f"{r['r_spatial']:.2f}"
        lines.append(
            f"| {name} | {r['psnr_truth']:.2f} ± {r['psnr_truth_sd']:.2f} "
            f"| {r['ssim_truth']:.3f} | {spatial} | {r['gm_wm']:.2f} | {corr} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)

    import torch

    from asl_pipeline.models import load_model
    from asl_pipeline.training import simulate_subjects, split_subjects

    torch.set_num_threads(args.threads)
    path = args.out / "models" / f"{MODEL}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    subjects = simulate_subjects(args.train_subjects, seed=args.seed, progress=True, bold=True)
    train_subj, val_subj = split_subjects(subjects, 0.1, args.seed)
    print(f"simulated {len(subjects)} training subjects in {time.time() - t0:.0f} s")
    if not args.skip_train and not path.is_file():
        train_model(args, train_subj, val_subj, path)
    model, info = load_model(path)
    fit = fit_global_linear(train_subj)
    del subjects, train_subj, val_subj
    print("global-linear fit:", fit)
    results, text = {}, ""
    for outliers in (True, False):
        t0 = time.time()
        rows = evaluate(args, model, fit, outliers)
        key = "with_outliers" if outliers else "without_outliers"
        results[key] = rows
        title = (
            f"{args.test_subjects} held-out subjects, 40 pairs, pCASL 2D 64x64x20, "
            f"{'with' if outliers else 'without'} simulated outliers"
        )
        text += markdown(rows, title) + "\n"
        print(f"evaluated ({key}) in {time.time() - t0:.0f} s")
    meta = info["metadata"]
    results.update(
        {
            "global_linear_fit": fit,
            "model": {"path": info["path"], "sha256": info["sha256"]},
            "budget": {
                k: meta.get(k) for k in ("steps", "batch_size", "patch_size", "train_seconds")
            },
            "validation": meta.get("history", [{}])[-1],
            "settings": {k: str(v) for k, v in vars(args).items()},
        }
    )
    (args.out / "eval_bold2asl.json").write_text(json.dumps(results, indent=2))
    (args.out / "eval_bold2asl.md").write_text(text)
    print(text)
    print("budget:", json.dumps(results["budget"]))


if __name__ == "__main__":
    main()
