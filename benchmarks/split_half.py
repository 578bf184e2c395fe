"""Split-half judge: how close a chain gets with N pairs to the independent rest.

Works on any BIDS ASL dataset, without ground truth (the learning-from-noise
principle): each single-PLD run is cut into its first N control/label pairs
and the remaining pairs (M0 volumes stay in both); ``asl-pipeline`` processes
the first part with the options under test and the rest with the plainest
chain (white-paper mean, no cleaning). The rest's mean is an independent,
unbiased estimate of the perfusion, so a derivative of the first N pairs that
is closer to it (lower RMS difference in the brain mask, on the same native
grid) is closer to the truth. Both parts are quantified as the pipeline
quantifies by default, its gain drift correction included: a drift biases
the two parts alike, so the judge cannot see it (the validation panel
chose that default). The plain N-pair mean and a Gaussian blur of it
are scored alongside as the baselines to beat, and the best mean-preserving
linear filter of the plain mean, fitted to the rest itself, as a bound
(:func:`linear_bounds`).

The rest differs from the first part's truth by more than its own noise
(physiology drifts over a scan; the two parts are resliced separately), so
no map of the first part can reach an RMS of 0. The judge estimates how
low it can go: a map without the first part's pair-to-pair noise (what the
pairs share, such as the M0, stays) would read ``floor = sqrt(RMS_plain^2
- mean(var_N))``, with ``var_N`` the voxel-wise variance of the plain N-pair
mean from its per-pair series (``desc-timeseries_cbf``, sample variance /
N). ``floor ratio`` puts it on the scale of ``ratio``; ``closed`` is the
share of the distance from the plain mean to the floor that a map covers.

Because the perfusion drifts, a map that merely lowers (or raises) the
level of the plain mean can move towards the rest without removing any
noise. ``level`` is a map's in-mask mean over the plain mean's, and
``ratio at plain level`` its ratio once scaled back to the plain mean's
level: read a gain that appears only in ``ratio`` as a level shift.

    python benchmarks/split_half.py BIDS_DIR --out /tmp/sh --n-pairs 10 -- --denoise

Everything after ``--`` is passed to ``asl-pipeline`` for the first part.
Prints one row per run and map: RMS to the rest, RMS of the plain N-pair
mean, their ratio, the map's level and its ratio at the plain mean's level,
the floor's ratio, the share of the way to the floor, and the GM/WM ratio of
the map next to the rest's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from asl_pipeline.smoothing import smooth_in_mask

PAIR_TYPES = ("control", "label")
SIGMAS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # voxels


def read_context(path: Path) -> list[str]:
    lines = path.read_text().split()
    return [v.strip().lower() for v in lines[1:]]


def select_volumes(types: list[str], n_pairs: int, first: bool) -> list[int]:
    """Volumes of the first ``n_pairs`` pairs (or of the rest), plus every non-pair volume."""
    pair_rows = [i for i, t in enumerate(types) if t in PAIR_TYPES]
    cut = 2 * n_pairs
    if cut >= len(pair_rows):
        raise ValueError(f"{len(pair_rows) // 2} pairs: cannot keep {n_pairs} and leave a rest")
    chosen = set(pair_rows[:cut] if first else pair_rows[cut:])
    return [i for i, t in enumerate(types) if t not in PAIR_TYPES or i in chosen]


def subset_sidecar(meta: dict, keep: list[int], n_volumes: int, n_pairs: int) -> dict:
    """Per-volume list fields cut to ``keep``; the pair count set to the part's."""
    out = {}
    for key, value in meta.items():
        if isinstance(value, list) and len(value) == n_volumes:
            value = [value[i] for i in keep]
        out[key] = value
    if "TotalAcquiredPairs" in out:  # BIDS requires it for control/label series
        out["TotalAcquiredPairs"] = n_pairs
    return out


def split_dataset(bids: Path, out: Path, n_pairs: int, first: bool) -> Path:
    """Copy ``bids`` to ``out`` with every ASL run cut to one part."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bids, out, ignore=shutil.ignore_patterns("derivatives", "sourcedata"))
    for ctx in sorted(out.rglob("*_aslcontext.tsv")):
        stem = ctx.name.removesuffix("_aslcontext.tsv")
        asl = ctx.with_name(f"{stem}_asl.nii.gz")
        side = ctx.with_name(f"{stem}_asl.json")
        types = read_context(ctx)
        keep = select_volumes(types, n_pairs, first)
        img = nib.load(asl)
        data = np.asanyarray(img.dataobj)[..., keep]
        nib.Nifti1Image(data, img.affine, img.header).to_filename(asl)
        ctx.write_text("volume_type\n" + "\n".join(types[i] for i in keep) + "\n")
        if side.exists():
            meta = json.loads(side.read_text())
            n_kept = sum(types[i] in PAIR_TYPES for i in keep) // 2
            side.write_text(json.dumps(subset_sidecar(meta, keep, len(types), n_kept), indent=2))
    return out


def run(bids: Path, out: Path, work: Path, options: list[str]) -> None:
    cmd = ["asl-pipeline", str(bids), str(out), "participant", "--work-dir", str(work)]
    cmd += ["--output-spaces", "asl", *options]
    subprocess.run(cmd, check=True)


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).astype(float)


def rms(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    sel = mask & np.isfinite(a) & np.isfinite(b)
    return float(np.sqrt(np.mean((a[sel] - b[sel]) ** 2)))


def gm_wm(cbf: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> float:
    g, w = gm > 0.7, wm > 0.9
    return float(np.nanmean(cbf[g]) / np.nanmean(cbf[w]))


def gaussian_baselines(plain: np.ndarray, rest: np.ndarray, mask: np.ndarray) -> dict:
    """Gaussian blurs of the plain N-pair mean: the baselines a denoiser must beat.

    ``blur sigma 0.5`` is a fixed in-plane and through-plane sigma of half a
    voxel; ``blur best`` is the sigma of :data:`SIGMAS` closest to the rest,
    chosen on the very reference it is judged against (so an upper bound on
    what a blur can do, not a usable setting).
    """
    filled = np.nan_to_num(plain)
    blurred = {s: smooth_in_mask(filled, mask, s, floor=1e-3) for s in SIGMAS}
    best = min(SIGMAS, key=lambda s: rms(blurred[s], rest, mask))
    return {"blur sigma 0.5": blurred[0.5], f"blur best (sigma {best})": blurred[best]}


def _neighbour(img: np.ndarray, mask: np.ndarray, shift: tuple) -> np.ndarray:
    """``img`` shifted by ``shift`` voxels; where the neighbour is outside ``mask``
    (or the grid), the voxel's own value, so a kernel never reads across the edge."""
    out = img.copy()
    src = tuple(slice(max(-d, 0), n - max(d, 0)) for d, n in zip(shift, img.shape, strict=True))
    dst = tuple(slice(max(d, 0), n - max(-d, 0)) for d, n in zip(shift, img.shape, strict=True))
    out[dst] = np.where(mask[src], img[src], img[dst])
    return out


def linear_bounds(plain: np.ndarray, rest: np.ndarray, mask: np.ndarray, radius=(2, 2, 1)) -> dict:
    """The best mean-preserving linear filters of the plain mean, fitted to the rest.

    A kernel of ``2 radius + 1`` voxels whose weights sum to 1 (a denoiser of
    the first part cannot know the rest's level, which drifts), its weights
    chosen by least squares against the rest itself: no linear filter of that
    size does better on this run. ``linear oracle`` fits all slices at once;
    ``linear cross-slice`` applies to the even slices the kernel fitted on the
    odd ones and back, so it is not fitted to the voxels it is judged on.
    Like ``blur best``, both are bounds to read a denoiser against, not
    settings.
    """
    sel = mask & np.isfinite(plain) & np.isfinite(rest)
    x = np.where(sel, plain, 0.0)
    shifts = [
        (dx, dy, dz)
        for dx in range(-radius[0], radius[0] + 1)
        for dy in range(-radius[1], radius[1] + 1)
        for dz in range(-radius[2], radius[2] + 1)
        if (dx, dy, dz) != (0, 0, 0)
    ]
    xs = x[sel]
    # weights summing to 1: rest - x regressed on (neighbour - x), no intercept
    design = np.stack([_neighbour(x, sel, d)[sel] - xs for d in shifts], axis=1)
    target = rest[sel] - xs
    odd = np.nonzero(sel)[2] % 2 == 1
    every = np.ones_like(odd)
    splits = {  # (voxels the kernel is fitted on, voxels it is applied to)
        "linear oracle": [(every, every)],
        "linear cross-slice": [(odd, ~odd), (~odd, odd)],
    }
    out = {}
    for name, parts in splits.items():
        cbf = np.full(plain.shape, np.nan)
        fitted = xs.copy()
        for fit_on, apply_to in parts:
            w = np.linalg.lstsq(design[fit_on], target[fit_on], rcond=None)[0]
            fitted[apply_to] += design[apply_to] @ w
        cbf[sel] = fitted
        out[name] = cbf
    return out


def noise_floor(
    plain: np.ndarray, plain_file: Path, rest: np.ndarray, mask: np.ndarray
) -> float | None:
    """The RMS to the rest of a first-part map without its pair-to-pair noise (module doc).

    ``plain`` is the plain mean read from ``plain_file``; ``None`` where its
    per-pair series is not beside that file. The mean variance, not the
    per-slice median of :func:`asl_pipeline.models.channels.noise_sd_map`:
    the floor needs the noise power itself, heavy tails included.
    """
    series_file = plain_file.with_name(plain_file.name.replace("_desc-mean_", "_desc-timeseries_"))
    if not series_file.exists():
        return None
    series = _load(series_file)
    n = np.sum(np.isfinite(series), axis=3)
    var_mean = np.nanvar(series, axis=3, ddof=1) / np.maximum(n, 1)
    sel = mask & np.isfinite(plain) & np.isfinite(rest) & (n >= 2)
    if not sel.any():
        return None
    total = np.mean((plain[sel] - rest[sel]) ** 2)
    return float(np.sqrt(max(total - np.mean(var_mean[sel]), 0.0)))


def _level(cbf: np.ndarray, mask: np.ndarray) -> float:
    return float(np.nanmean(np.where(mask, cbf, np.nan)))


def judge(first_out: Path, rest_out: Path, plain_out: Path | None = None) -> list[dict]:
    """One row per run and CBF map of ``first_out``, scored against ``rest_out``.

    The plain N-pair mean (``desc-mean``) is read from ``first_out``, or, for a
    configuration that writes none (smoothing renames it), from ``plain_out``.
    """
    rows = []
    for mask_file in sorted(first_out.rglob("*_desc-brain_mask.nii.gz")):
        stem = mask_file.name.removesuffix("_desc-brain_mask.nii.gz")
        if not any(mask_file.parent.glob(f"{stem}_desc-*_cbf.nii.gz")):
            continue  # the T1w's mask in anat/
        rel = mask_file.parent.relative_to(first_out)
        rest = _load(rest_out / rel / f"{stem}_desc-mean_cbf.nii.gz")
        mask = _load(mask_file) > 0
        gm = _load(mask_file.with_name(f"{stem}_label-GM_probseg.nii.gz"))
        wm = _load(mask_file.with_name(f"{stem}_label-WM_probseg.nii.gz"))
        plain_file = mask_file.with_name(f"{stem}_desc-mean_cbf.nii.gz")
        if not plain_file.exists() and plain_out is not None:
            plain_file = plain_out / rel / plain_file.name
        if not plain_file.exists():
            raise FileNotFoundError(
                f"{plain_file}: no plain {stem} mean to compare with; run the "
                "configuration with --label plain -- --outlier-method none first"
            )
        plain = _load(plain_file)
        base = rms(plain, rest, mask)
        floor = noise_floor(plain, plain_file, rest, mask)
        maps = gaussian_baselines(plain, rest, mask) | linear_bounds(plain, rest, mask)
        for path in sorted(mask_file.parent.glob(f"{stem}_desc-*_cbf.nii.gz")):
            desc = path.name.split("_desc-")[1].removesuffix("_cbf.nii.gz")
            if nib.load(path).ndim == 3:  # not the per-pair series
                maps[desc] = _load(path)
        plain_level = _level(plain, mask)
        for desc, cbf in maps.items():
            value = rms(cbf, rest, mask)
            level = _level(cbf, mask) / plain_level
            rows.append({
                "run": stem, "map": desc, "rms": value, "rms_plain": base,
                "ratio": value / base, "level": level,
                "ratio_at_plain_level": rms(cbf / level, rest, mask) / base,
                "gmwm": gm_wm(cbf, gm, wm),
                "gmwm_rest": gm_wm(rest, gm, wm), "rms_floor": floor,
                "ratio_floor": None if floor is None else floor / base,
                "closed": None if floor is None or floor >= base
                else (base - value) / (base - floor),
            })  # fmt: skip
    return rows


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-pairs", type=int, default=10)
    parser.add_argument(
        "--label",
        default="",
        help="name of this configuration: several labels under one --out share the cut "
        "datasets, the rest's run and the first part's work directory (the anatomical "
        "and registration steps run once)",
    )
    args = parser.parse_args(argv)
    out = args.out.resolve()
    suffix = f"-{args.label}" if args.label else ""
    first = split_dataset(args.bids_dir, out / "bids_first", args.n_pairs, first=True)
    rest = split_dataset(args.bids_dir, out / "bids_rest", args.n_pairs, first=False)
    run(first, out / f"out_first{suffix}", out / "work_first", extra)
    run(rest, out / "out_rest", out / "work_rest", ["--outlier-method", "none"])
    plain_out = out / "out_first-plain"
    rows = judge(out / f"out_first{suffix}", out / "out_rest", plain_out)
    print(
        "| run | map | RMS to rest | RMS plain | ratio | level | ratio at plain level "
        "| floor ratio | closed | GM/WM | GM/WM rest |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        floor = "n/a" if r["ratio_floor"] is None else f"{r['ratio_floor']:.3f}"
        closed = "n/a" if r["closed"] is None else f"{100 * r['closed']:.0f}%"
        print(
            f"| {r['run']} | {r['map']} | {r['rms']:.2f} | {r['rms_plain']:.2f} | "
            f"{r['ratio']:.3f} | {r['level']:.3f} | {r['ratio_at_plain_level']:.3f} | "
            f"{floor} | {closed} | {r['gmwm']:.2f} | {r['gmwm_rest']:.2f} |"
        )
    (out / f"split_half{suffix}.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
