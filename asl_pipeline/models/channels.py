"""Input channels of the denoisers: what a network is given besides the noisy map.

A CBF denoiser's ``channels`` (saved in its config) name, in order, the maps
stacked as its input. The first is always ``"cbf"``, the map to denoise:

``"cbf"``
    The noisy CBF map (mL/100 g/min): the mean of ``n`` control/label pairs.
``"noise"``
    The noise level of that map (mL/100 g/min), constant within each slice:
    :func:`noise_sd_map`, estimated from the pairs that were averaged. It tells
    the network how much to smooth, so one model serves 5 pairs and 50.
``"gm"``, ``"wm"``
    Grey- and white-matter probability (0-1) in the map's grid: anatomical
    guidance (a PV-weighted CBF prior), from the T1w segmentation.
``"m0"``
    The M0 image, divided by each slice's median in-mask value (scanner units
    do not matter): tissue contrast and coil sensitivity at the ASL resolution.

Inside the network (:func:`normalise_channels`) CBF and noise are divided by
the model's ``cbf_scale``, the probabilities are used as they are and M0 by
its slice median. Outside the brain mask every channel is zero, as in
training.
"""

from __future__ import annotations

import numpy as np

#: Channels a denoiser may take.
CHANNELS = ("cbf", "noise", "gm", "wm", "m0")


def check_channels(channels) -> tuple:
    """``channels`` as a tuple if valid: known names, no repeats, ``"cbf"`` first."""
    channels = tuple(channels)
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or not channels or channels[0] != "cbf" or len(set(channels)) != len(channels):
        raise ValueError(
            f"invalid channels {channels!r}: the first must be 'cbf', the others distinct "
            f"names from {CHANNELS}"
        )
    return channels


def median_variance_factor(n: int) -> float:
    """Median of a chi-square with ``n - 1`` degrees of freedom over ``n - 1``.

    The median over voxels of the per-voxel sample variance of ``n`` Gaussian
    values is this factor times the true variance (median, not mean: robust to
    the heavy-tailed voxels of real data).
    """
    from scipy import stats

    if n < 2:
        raise ValueError("the noise of a mean needs at least 2 pairs")
    return float(stats.chi2.median(n - 1) / (n - 1))


def noise_sd_map(pairs, mask, *, n_averaged: int | None = None, keep=None) -> np.ndarray:
    """Noise SD of the mean of ``pairs`` (mL/100 g/min), one value per slice.

    ``pairs`` is ``(x, y, z, n)``: per-pair CBF maps. In each axial slice the
    single-pair SD is the square root of the median (over mask voxels) of the
    per-voxel sample variance, corrected by :func:`median_variance_factor`;
    the map's SD is that over ``sqrt(n_averaged)`` (default ``n``, the mean of
    all the pairs; ignored with ``keep``). ``keep``, a ``(z, n)`` boolean
    matrix (False: the pair was removed from that slice, as in an outlier
    matrix), gives each slice the noise of the mean of its kept pairs: their
    variance over the square root of their number. Without it, the removed
    outliers inflate the variance several times over (``benchmarks/RESULTS.md``,
    "The noise channel of a cleaned map").
    Slices with fewer than 10 mask voxels (or 2 kept pairs) take the median of
    the others. Zero outside ``mask``.
    """
    pairs = np.asarray(pairs, dtype=np.float64)
    mask = np.asarray(mask, bool)
    n = pairs.shape[-1]
    if keep is None:
        keep = np.ones((mask.shape[2], n), bool)
        n_mean = np.full(mask.shape[2], n if n_averaged is None else n_averaged)
    else:
        keep = np.asarray(keep, bool)
        if keep.shape != (mask.shape[2], n):
            raise ValueError(f"keep is {keep.shape}, the series has {(mask.shape[2], n)}")
        n_mean = keep.sum(axis=1)
    sd = np.full(mask.shape[2], np.nan)
    for z in range(mask.shape[2]):
        kept = keep[z]
        if mask[:, :, z].sum() >= 10 and kept.sum() >= 2:
            var = pairs[:, :, z][mask[:, :, z]][:, kept].var(axis=-1, ddof=1)
            sd[z] = np.sqrt(np.median(var) / median_variance_factor(int(kept.sum())))
    if np.all(np.isnan(sd)):  # no slice qualifies: pool the mask over the pairs kept everywhere
        cols = keep.all(axis=0)
        cols = cols if cols.sum() >= 2 else np.ones(n, bool)
        sd[:] = 0.0
        if mask.any():
            var = pairs[mask][:, cols].var(axis=-1, ddof=1)
            sd[:] = np.sqrt(np.median(var) / median_variance_factor(int(cols.sum())))
    sd = np.where(np.isnan(sd), np.nanmedian(sd), sd)
    sd = sd / np.sqrt(np.maximum(n_mean, 1))
    return np.where(mask, sd[None, None, :], 0.0).astype(np.float32)


def stack_channels(channels, mask, **maps) -> np.ndarray:
    """``(len(channels), x, y, z)`` float32 input of a model, zero outside ``mask``.

    ``maps`` holds one 3-D array per channel name (``cbf=..., noise=...``).
    """
    from asl_pipeline.errors import ASLInputError

    mask = np.asarray(mask, bool)
    missing = [c for c in channels if maps.get(c) is None]
    if missing:
        raise ASLInputError(
            f"the denoising model takes the input channels {list(channels)}; "
            f"{missing} were not given.",
            field="channels",
            fix="run the denoiser where those maps exist (tissue maps and M0 in ASL space), "
            "or use weights trained with fewer channels (asl-train --channels cbf,noise)",
        )
    out = []
    for c in channels:
        a = np.asarray(maps[c], dtype=np.float32)
        if a.shape != mask.shape:
            raise ValueError(f"channel {c!r} has shape {a.shape}, the mask {mask.shape}")
        out.append(np.where(mask, a, 0.0))
    return np.stack(out).astype(np.float32)


def normalise_channels(x, channels, cbf_scale):
    """Divide a batch ``(n, c, h, w)`` channel by channel (see the module docstring)."""
    import torch

    parts = []
    for k, name in enumerate(channels):
        c = x[:, k : k + 1]
        if name in ("cbf", "noise"):
            c = c / cbf_scale
        elif name == "m0":
            med = torch.stack(
                [s[s != 0].median() if bool((s != 0).any()) else s.new_ones(()) for s in c[:, 0]]
            )
            c = c / med.clamp(min=1e-6).reshape(-1, 1, 1, 1)
        parts.append(c)
    return torch.cat(parts, dim=1)
