"""Does a denoiser follow the data, or paint its training prior? (issue 14)

On held-out clean subjects (``--test``, written by
:func:`asl_pipeline.lfn.save_subjects`), the clean map is changed before 10
realistic pairs are drawn: WM x1.6, GM x0.6, everything x2 or x0.5. Prints,
per model and change, the mean error of the denoised map's GM (> 0.7) and WM
(> 0.9) means against the changed truth, next to the plain 10-pair mean's,
and the worst subject.

Usage::

    python benchmarks/dwan_levels.py --test test.npz MODEL.pt [MODEL.pt ...]
"""

from __future__ import annotations

import argparse

import numpy as np

from asl_pipeline import lfn
from asl_pipeline.models.inference import denoise_run

CHANGES = {
    "as simulated": lambda s: s.cbf,
    "WM x1.6": lambda s: s.cbf * (1 + 0.6 * s.wm),
    "GM x0.6": lambda s: s.cbf * (1 - 0.4 * s.gm),
    "x2": lambda s: s.cbf * 2,
    "x0.5": lambda s: s.cbf * 0.5,
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", required=True)
    ap.add_argument("models", nargs="+")
    args = ap.parse_args(argv)
    subjects = lfn.load_subjects(args.test)
    for weights in args.models:
        for label, change in CHANGES.items():
            rows = []
            for s in subjects:
                gm, wm = (s.gm > 0.7) & s.mask, (s.wm > 0.9) & s.mask
                cbf = change(s).astype(np.float32)
                moved = lfn.CleanSubject(s.name, cbf, s.mask, s.gm, s.wm, s.m0, s.noise, "")
                pairs = moved.draw_pairs(np.random.default_rng(0), 10)
                out, _, _ = denoise_run(
                    pairs.mean(-1), s.mask, series=pairs, gm=s.gm, wm=s.wm, weights=weights
                )
                mean = pairs.mean(-1)
                rows.append(
                    [
                        100 * (img[t].mean() / cbf[t].mean() - 1)
                        for img in (out, mean)
                        for t in (gm, wm)
                    ]
                )
            a = np.array(rows)
            m, worst = a.mean(0), np.abs(a[:, :2]).max(0)
            print(
                f"{weights}  {label:13s} denoised GM {m[0]:+6.1f}% WM {m[1]:+6.1f}%"
                f" | mean10 GM {m[2]:+6.1f}% WM {m[3]:+6.1f}%"
                f" | worst denoised |GM| {worst[0]:.1f}% |WM| {worst[1]:.1f}%"
            )


if __name__ == "__main__":
    main()
