"""Subject-level learning from noise: does fine-tuning on a run's own pairs help? (issue 14)

For each held-out subject (``--test``, from :func:`asl_pipeline.lfn.save_subjects`),
draws ``--pairs`` realistic pairs, denoises their mean with the shipped
weights as they are and after ``--seconds`` of fine-tuning on those same
pairs (:func:`asl_pipeline.lfn.finetune`; random subsets of the run's pairs
predict the mean of the others), without and with its early stopping on
held-out slices, and prints PSNR against the clean map and
GM/WM as % of the clean map's, next to the plain mean. The fine-tuning runs
on the CPU with the threads given (the issue's budget: 60 s on 2 cores).

Usage::

    python benchmarks/dwan_finetune.py --test test.npz --seconds 60 --threads 2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from asl_pipeline import lfn
from asl_pipeline.metrics import psnr
from asl_pipeline.models import load_model
from asl_pipeline.models.channels import noise_sd_map
from asl_pipeline.models.inference import denoise_volume


def contrast(img, s):
    gm, wm = (s.gm > 0.7) & s.mask, (s.wm > 0.9) & s.mask
    return float(img[gm].mean() / img[wm].mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", required=True)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=4, help="subjects (first N of --test)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for i, s in enumerate(lfn.load_subjects(args.test)[: args.n]):
        pairs = s.draw_pairs(np.random.default_rng([7, i]), args.pairs)
        mean = pairs.mean(-1)
        extra = {**s.maps(), "noise": noise_sd_map(pairs, s.mask)}
        model, _ = load_model()
        maps = [mean, denoise_volume(model, mean, s.mask, extra=extra)]
        notes = []
        for early in (False, True):  # side by side, from the same shipped weights
            model, _ = load_model()
            fit = lfn.finetune(
                model, pairs, s.mask, s.maps(), seconds=args.seconds, early_stopping=early
            )
            maps.append(denoise_volume(model, mean, s.mask, extra=extra))
            kept = f", kept step {fit['best_step']}" if early else ""
            notes.append(f"{fit['steps']} steps{kept}")
        c0 = contrast(s.cbf, s)
        row = [psnr(x, s.cbf, s.mask) for x in maps]
        row += [100 * contrast(x, s) / c0 for x in maps]
        rows.append(row)
        print(
            f"{s.name}: PSNR {' / '.join(f'{v:.2f}' for v in row[:4])} dB; GM/WM % "
            f"{' / '.join(f'{v:.1f}' for v in row[4:])} ({'; '.join(notes)})",
            flush=True,
        )
    a = np.array(rows).mean(0)
    print(
        f"mean of {len(rows)}: PSNR {' / '.join(f'{v:.2f}' for v in a[:4])} dB, GM/WM % "
        f"{' / '.join(f'{v:.1f}' for v in a[4:])} (plain mean / shipped / fine-tuned / "
        "fine-tuned with early stopping)"
    )


if __name__ == "__main__":
    main()
