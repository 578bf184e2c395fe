"""Subject-level learning from noise: does fine-tuning on a run's own pairs help? (issue 14)

For each held-out subject (``--test``, from :func:`asl_pipeline.lfn.save_subjects`),
draws ``--pairs`` realistic pairs, denoises their mean with the shipped
weights as they are and after ``--seconds`` of fine-tuning on those same
pairs (:func:`asl_pipeline.lfn.finetune`; random subsets of the run's pairs
predict the mean of the others), and prints PSNR against the clean map and
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
        before = denoise_volume(model, mean, s.mask, extra=extra)
        fit = lfn.finetune(model, pairs, s.mask, s.maps(), seconds=args.seconds)
        after = denoise_volume(model, mean, s.mask, extra=extra)
        c0 = contrast(s.cbf, s)
        row = [psnr(x, s.cbf, s.mask) for x in (mean, before, after)]
        row += [100 * contrast(x, s) / c0 for x in (mean, before, after)]
        rows.append(row)
        print(
            f"{s.name}: PSNR mean {row[0]:.2f}, shipped {row[1]:.2f}, fine-tuned {row[2]:.2f} dB "
            f"({fit['steps']} steps in {fit['seconds']} s); GM/WM % {row[3]:.1f} / "
            f"{row[4]:.1f} / {row[5]:.1f}",
            flush=True,
        )
    a = np.array(rows).mean(0)
    print(
        f"mean of {len(rows)}: PSNR {a[0]:.2f} / {a[1]:.2f} / {a[2]:.2f} dB, "
        f"GM/WM % {a[3]:.1f} / {a[4]:.1f} / {a[5]:.1f} (plain mean / shipped / fine-tuned)"
    )


if __name__ == "__main__":
    main()
