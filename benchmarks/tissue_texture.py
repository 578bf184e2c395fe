"""How much of the perfusion do the GM/WM maps explain? Real scan against training data.

A denoiser given GM and WM probability maps learns how closely CBF follows
them. :func:`asl_pipeline.simulate.noise.tissue_unexplained` measures, slice
by slice, the share of a CBF map's spatial signal variance that a linear fit
on the GM and WM fractions leaves unexplained (two independent estimates,
so noise drops out). Printed for

* ``measured`` (with ``--series``): a run's per-pair CBF series written by
  the pipeline (odd against even pairs) with its own GM/WM maps and brain
  mask on the same grid;
* ``truth-mni`` / ``truth-phantom``: the noise-free CBF of a held-out
  subject of each generator (seed 9, as the acceptance benchmarks);
* ``training, texture SD``: the clean maps that ``asl-train --synthetic``
  draws its pairs around (48 x 48 crops with the random perfusion gains;
  ``--texture``: the fine-scale log-normal texture of
  :func:`asl_pipeline.lfn._texture_gain`), stacked as slices.

Usage::

    python benchmarks/tissue_texture.py [--series TIMESERIES_CBF --gm GM --wm WM --mask MASK]
        [--textures 0 0.5 1.0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from asl_pipeline import lfn
from asl_pipeline.simulate.noise import tissue_unexplained


def _load(path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).astype(float)


def training_share(subjects, texture: float, *, n_batches: int = 4, seed: int = 0) -> float:
    """:func:`tissue_unexplained` of the training sampler's clean crops."""
    import torch

    sampler = lfn.PairSampler(subjects, ("cbf", "noise", "gm", "wm"), texture=texture)
    gen = torch.Generator()
    gen.manual_seed(seed)
    planes = {"cbf": [], "mask": [], "gm": [], "wm": []}
    for _ in range(n_batches):
        _, crops, clean = sampler.clean_examples(64, gen)
        planes["cbf"].append(clean[:, 0].numpy())
        for i, key in ((1, "mask"), (2, "gm"), (3, "wm")):
            planes[key].append(crops[:, i].numpy())
    vol = {key: np.moveaxis(np.concatenate(v), 0, -1) for key, v in planes.items()}
    return tissue_unexplained(vol["cbf"], vol["cbf"], vol["gm"], vol["wm"], vol["mask"] > 0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=Path, help="a desc-timeseries_cbf image")
    parser.add_argument("--gm", type=Path, help="its label-GM_probseg image")
    parser.add_argument("--wm", type=Path, help="its label-WM_probseg image")
    parser.add_argument("--mask", type=Path, help="its desc-brain_mask image")
    parser.add_argument("--textures", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    args = parser.parse_args(argv)
    given = [args.series, args.gm, args.wm, args.mask]
    if any(g is None for g in given) and any(g is not None for g in given):
        parser.error("--series, --gm, --wm and --mask go together")
    rows = []
    if args.series is not None:
        series = _load(args.series)
        mask = (_load(args.mask) > 0) & np.all(np.isfinite(series), axis=3)
        share = tissue_unexplained(
            series[..., 0::2].mean(3),
            series[..., 1::2].mean(3),
            _load(args.gm),
            _load(args.wm),
            mask,
        )
        rows.append(("measured (odd vs even pairs)", share))
    held_out = [lfn.mni_subject(9, 0), lfn.phantom_subject(9, 1)]
    for s in held_out:
        rows.append((f"truth-{s.generator}", tissue_unexplained(s.cbf, s.cbf, s.gm, s.wm, s.mask)))
    for tex in args.textures:
        rows.append((f"training, texture SD {tex:g}", training_share(held_out, tex)))
    print("| CBF map | unexplained by GM/WM (median over slices) |")
    print("|---|---:|")
    for name, share in rows:
        print(f"| {name} | {share:.2f} |")


if __name__ == "__main__":
    main()
