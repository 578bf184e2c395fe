"""Learning from noise with realistic pairs drawn on the fly (methods spec, section 6.3).

The classic scheme (:mod:`asl_pipeline.training`) cuts a fixed series of 40
pairs into 4 segments: every subject gives the network the same few noise
draws, all at one noise level. Here each training example draws fresh pairs:

* a clean map (a simulated subject's noise-free CBF, on its ASL grid, with
  its tissue maps and M0) from either generator: the MNI-template simulator
  (:func:`asl_pipeline.simulate.simulate_cbf_series`) and the digital
  reference object (:mod:`asl_pipeline.simulate.phantom`, a real subject's
  segmentation with sulci and a cortical ribbon of varying thickness);
* ``n`` single-pair noise fields of that subject's
  :class:`~asl_pipeline.simulate.noise.PairNoise` (spatially correlated,
  heavy-tailed, slice-varying, global offsets, signal drift), with ``n``
  drawn between 4 and 48 pairs;
* the input is the mean of those ``n`` pairs and its noise level
  (:func:`asl_pipeline.models.channels.noise_sd_map` of the same pairs);
* the target is the mean of ``m`` OTHER pairs (independent noise, same
  perfusion): a noisy target, never the clean map. An L1 loss converges to
  the median of the target's noise-free value, as in the study.

The clean map enters only as the perfusion the pairs are drawn around, like
the brain a scanner images; the loss never sees it. Validation figures
against it are reported, as for any simulated subject.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from asl_pipeline.simulate.noise import PairNoise, drift_gain, pair_noise, random_pair_noise

LOGGER = logging.getLogger("asl_pipeline.training")

#: Minimum mask voxels of a slice used for training.
MIN_MASK_VOXELS = 50


@dataclass
class CleanSubject:
    """A simulated subject's noise-free maps on its ASL grid, and its noise model."""

    name: str
    cbf: np.ndarray
    mask: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    m0: np.ndarray
    noise: PairNoise
    generator: str
    info: dict = field(default_factory=dict)

    def maps(self) -> dict:
        """The channel maps of :mod:`asl_pipeline.models.channels` (except noise)."""
        return {"gm": self.gm, "wm": self.wm, "m0": self.m0}

    def draw_pairs(self, rng, n_pairs: int) -> np.ndarray:
        """``(x, y, z, n_pairs)`` per-pair CBF: the clean map times the drift, plus noise."""
        gain = drift_gain(n_pairs, self.noise.drift).astype(np.float32)
        series = self.cbf[..., None] * gain + pair_noise(rng, self.cbf.shape, n_pairs, self.noise)
        return np.where(self.mask[..., None], series, 0.0).astype(np.float32)


def mni_subject(seed: int, index: int) -> CleanSubject:
    """Clean maps of the MNI-template simulator (settings as :mod:`asl_pipeline.training`)."""
    from asl_pipeline.simulate import simulate_cbf_series
    from asl_pipeline.training import simulation_settings

    settings = simulation_settings(seed, index)
    settings.update(outliers=False, noise_scale=0.0)
    sim = simulate_cbf_series(seed * 100_000 + index, n_pairs=1, motion_scale=0.0, **settings)
    rng = np.random.default_rng([seed, index, 1])
    return _from_simulation(sim, sim.cbf, "mni", seed, index, rng, _jsonable(settings))


def _from_simulation(sim, cbf, generator, seed, index, rng, settings) -> CleanSubject:
    """A :class:`CleanSubject` of a simulated subject's maps, its pair noise drawn."""
    return CleanSubject(
        name=f"{generator}-{seed}-{index}",
        cbf=np.asarray(cbf, np.float32),
        mask=np.asarray(sim.brain_mask, bool),
        gm=sim.gm.astype(np.float32),
        wm=sim.wm.astype(np.float32),
        m0=sim.m0_true.astype(np.float32),
        noise=random_pair_noise(rng),
        generator=generator,
        info={"seed": seed * 100_000 + index, "settings": settings},
    )


def phantom_subject(seed: int, index: int) -> CleanSubject:
    """Clean maps of the digital reference object: what white-paper quantification reads.

    The clean map is the phantom's ``cbf_white_paper`` (the noise-free map a
    single-PLD pipeline measures; the phantom's kinetic model differs from
    the white paper's), so the network learns to denoise measured maps.
    """
    from asl_pipeline.simulate.phantom import simulate_phantom

    rng = np.random.default_rng([seed, index, 2])
    settings = {
        "labeling": "PASL" if rng.random() < 0.3 else "PCASL",
        "readout": "3D" if rng.random() < 0.5 else "2D",
        "background_suppression": bool(rng.random() < 0.5),
    }
    sim = simulate_phantom(
        seed * 100_000 + index, n_pairs=1, noise_level=0.0, t1w=False, **settings
    )
    return _from_simulation(sim, sim.cbf_white_paper, "phantom", seed, index, rng, settings)


def clean_subjects(n: int, *, seed: int = 0, progress: bool = False) -> list[CleanSubject]:
    """``n`` subjects, alternating the two generators (even index: MNI, odd: phantom)."""
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(n), desc="simulating subjects", disable=not progress):
        out.append(mni_subject(seed, i) if i % 2 == 0 else phantom_subject(seed, i))
    return out


def save_subjects(subjects, path) -> None:
    """Write clean subjects to one compressed ``.npz`` (float16 maps, JSON noise/info)."""
    arrays = {}
    meta = []
    for k, s in enumerate(subjects):
        for key in ("cbf", "gm", "wm", "m0"):
            arrays[f"{k}_{key}"] = getattr(s, key).astype(np.float16)
        arrays[f"{k}_mask"] = s.mask
        meta.append(
            {"name": s.name, "generator": s.generator, "noise": asdict(s.noise), "info": s.info}
        )
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(path, **arrays)


def load_subjects(path) -> list[CleanSubject]:
    """Read subjects written by :func:`save_subjects`."""
    with np.load(path) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        out = []
        for k, m in enumerate(meta):
            noise = dict(m["noise"])
            noise["lag1"] = tuple(noise["lag1"])
            out.append(
                CleanSubject(
                    name=m["name"],
                    cbf=data[f"{k}_cbf"].astype(np.float32),
                    mask=data[f"{k}_mask"].astype(bool),
                    gm=data[f"{k}_gm"].astype(np.float32),
                    wm=data[f"{k}_wm"].astype(np.float32),
                    m0=data[f"{k}_m0"].astype(np.float32),
                    noise=PairNoise(**noise),
                    generator=m["generator"],
                    info=m["info"],
                )
            )
    return out


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ---------------------------------------------------------------------------
# on-the-fly examples (torch)


class PairSampler:
    """Batches of (input channels, noisy target, mask) crops with fresh noise.

    Parameters
    ----------
    subjects
        :class:`CleanSubject` list.
    channels
        The model's input channels (:mod:`asl_pipeline.models.channels`).
    patch
        Crop side in voxels (slices are zero-padded to it when smaller).
    n_pairs
        ``(low, high)``: the number of pairs averaged in the input is drawn
        log-uniformly in this range for each batch.
    target_pairs
        Pairs averaged in the (independent) target.
    jitter
        Shift the tissue and M0 channels by up to two voxels in-plane for half
        the examples (:func:`_misregister`): on real data they come from a
        registered T1w and never align perfectly.
    vary_perfusion
        Multiply each example's clean map by :func:`_perfusion_gain` (a global
        level, separate GM and WM levels and a smooth regional field), so the
        network cannot learn typical CBF values or a fixed GM/WM ratio and
        must read the perfusion from the data.
    texture
        Largest SD of the fine-scale log-normal texture that multiplies each
        example's clean map (:func:`_texture_gain`; 0: none). On the
        simulators the GM and WM fractions explain about 90% of the true
        CBF's spatial variance; on a real scan, 22%
        (:func:`asl_pipeline.simulate.noise.tissue_unexplained`; RESULTS.md,
        "How much of the CBF do the tissue maps explain"). The texture makes
        the tissue channels a hint, not the answer.
    """

    def __init__(
        self,
        subjects,
        channels=("cbf", "noise"),
        *,
        patch: int = 48,
        n_pairs=(4, 48),
        target_pairs: int = 32,
        device="cpu",
        jitter: bool = True,
        vary_perfusion: bool = True,
        texture: float = 0.0,
    ):
        import torch

        from asl_pipeline.models.channels import check_channels

        self.channels = check_channels(channels)
        self.jitter = bool(jitter)
        self.vary_perfusion = bool(vary_perfusion)
        self.texture = float(texture)
        self.patch = int(patch)
        self.n_pairs = tuple(int(v) for v in n_pairs)
        self.target_pairs = int(target_pairs)
        self.device = torch.device(device)
        size = max(max(s.cbf.shape[:2]) for s in subjects)
        self.size = max(size, self.patch)
        slabs, params = [], []
        for s in subjects:
            prof = s.noise.slice_profile(s.cbf.shape[2])
            for z in range(s.cbf.shape[2]):
                m = s.mask[:, :, z]
                if m.sum() < MIN_MASK_VOXELS:
                    continue
                planes = [s.cbf[:, :, z], m, s.gm[:, :, z], s.wm[:, :, z], s.m0[:, :, z]]
                slabs.append(np.stack([self._pad(p) for p in planes]))
                n = s.noise
                params.append(
                    [
                        n.sd * prof[z],
                        *n.lag1,
                        n.tail_fraction,
                        n.tail_scale,
                        n.global_sd,
                        n.drift,
                    ]
                )
        if not slabs:
            raise ValueError("no slice with enough brain voxels to train on")
        self.slabs = torch.from_numpy(np.stack(slabs).astype(np.float32)).to(self.device)
        self.params = torch.tensor(params, dtype=torch.float32, device=self.device)

    def _pad(self, plane):
        h, w = plane.shape
        out = np.zeros((self.size, self.size), np.float32)
        i, j = (self.size - h) // 2, (self.size - w) // 2
        out[i : i + h, j : j + w] = plane
        return out

    def __len__(self):
        return len(self.slabs)

    def _noise(self, gen, k, n):
        """``(b, n, p, p)`` unit-SD-scaled noise fields for the examples ``k``."""
        import torch

        p = self.params[k]
        b, size = len(k), self.patch + 2
        w = torch.randn((b, n, size, size), generator=gen, device=self.device)
        tail = torch.rand((b, n, size, size), generator=gen, device=self.device)
        frac, scale = p[:, 3].view(-1, 1, 1, 1), p[:, 4].view(-1, 1, 1, 1)
        w = torch.where(tail < frac, w * scale, w)

        def taps(lag):
            a = torch.where(
                lag > 0, (1 - torch.sqrt(1 - 2 * lag**2)) / (2 * lag.clamp(min=1e-6)), 0 * lag
            )
            return a.view(-1, 1, 1, 1), torch.sqrt(1 + 2 * a * a).view(-1, 1, 1, 1)

        ax, nx = taps(p[:, 1])
        w = (w[:, :, 1:-1, :] + ax * (w[:, :, :-2, :] + w[:, :, 2:, :])) / nx
        ay, ny = taps(p[:, 2])
        w = (w[:, :, :, 1:-1] + ay * (w[:, :, :, :-2] + w[:, :, :, 2:])) / ny
        tail_var = 1 - frac + frac * scale**2
        sd = p[:, 0].view(-1, 1, 1, 1) / torch.sqrt(tail_var)
        offset = p[:, 5].view(-1, 1, 1, 1) * torch.randn(
            (b, n, 1, 1), generator=gen, device=self.device
        )
        return w * sd + offset

    def clean_examples(self, batch_size: int, gen):
        """Random crops and their clean maps, before any noise.

        Returns the slab indices ``k``, the crops ``(b, 5, p, p)`` (clean
        CBF as simulated, mask, GM, WM, M0) and the clean map ``(b, 1, p, p)``
        the example's pairs are drawn around (perfusion gain and texture
        applied).
        """
        import torch

        k = torch.randint(len(self.slabs), (batch_size,), generator=gen, device=self.device)
        slab = self.slabs[k]
        top, left = _crop_corners(self.size, self.patch, batch_size, gen, self.device)
        crops = torch.stack(
            [
                slab[b, :, top[b] : top[b] + self.patch, left[b] : left[b] + self.patch]
                for b in range(batch_size)
            ]
        )
        clean = crops[:, 0:1]
        if self.vary_perfusion:
            clean = clean * _perfusion_gain(crops[:, 2:3], crops[:, 3:4], gen)
        if self.texture > 0:
            clean = clean * _texture_gain(len(clean), self.patch, self.texture, gen, self.device)
        return k, crops, clean

    def batch(self, batch_size: int, gen, n: int | None = None):
        """One batch: ``x (b, c, p, p)``, ``y (b, 1, p, p)``, ``mask (b, 1, p, p)``, and ``n``."""
        import torch

        if n is None:
            lo, hi = self.n_pairs
            u = float(torch.rand((), generator=gen, device=self.device))
            n = int(round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))))
        k, crops, clean = self.clean_examples(batch_size, gen)
        mask = crops[:, 1:2]
        drift = self.params[k, 6].view(-1, 1, 1, 1)
        # input and target pairs come from different, random parts of the run
        g_in = 1 + drift * (
            torch.rand((batch_size, 1, 1, 1), generator=gen, device=self.device) - 0.5
        )
        g_t = 1 + drift * (
            torch.rand((batch_size, 1, 1, 1), generator=gen, device=self.device) - 0.5
        )
        pairs = clean * g_in + self._noise(gen, k, n)
        x_cbf = pairs.mean(1, keepdim=True)
        var = pairs.var(1, unbiased=True).masked_fill(mask[:, 0] <= 0, float("nan"))
        median_var = torch.nan_to_num(torch.nanmedian(var.flatten(1), dim=1).values, nan=0.0)
        sd = _mean_noise_sd(median_var, n).view(-1, 1, 1, 1)
        target = clean * g_t + self._noise(gen, k, self.target_pairs).mean(1, keepdim=True)
        anat = _misregister(crops[:, 2:5], gen) if self.jitter else crops[:, 2:5]
        x = _input_channels(self.channels, x_cbf, sd.expand_as(x_cbf), anat, mask)
        return x, target * mask, mask, n


def _perfusion_gain(gm, wm, gen):
    """Multiplicative gain ``(b, 1, p, p)`` of the clean maps of a batch.

    A global level log-uniform in [0.5, 2], GM and WM levels log-uniform in
    [0.7, 1.4] each (so GM/WM ratios from half to twice the simulators'), and
    a smooth regional field (a 4 x 4 grid of log-normal values, SD 0.2,
    interpolated): hypo- and hyperperfused territories.
    """
    import torch
    import torch.nn.functional as F

    b, dev = len(gm), gm.device

    def logu(lo, hi):
        u = torch.rand((b, 1, 1, 1), generator=gen, device=dev)
        return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))

    rest = (1 - gm - wm).clamp(min=0)
    tissue = logu(0.7, 1.4) * gm + logu(0.7, 1.4) * wm + rest
    coarse = 0.2 * torch.randn((b, 1, 4, 4), generator=gen, device=dev)
    field = F.interpolate(coarse, size=gm.shape[-2:], mode="bicubic", align_corners=True)
    return logu(0.5, 2.0) * tissue * torch.exp(field)


#: In-plane correlation lengths (Gaussian SD, voxels) of the fine-scale texture.
TEXTURE_SIGMAS = (0.7, 1.0, 1.5)


def _texture_gain(b: int, size: int, max_sd: float, gen, device):
    """Fine-scale multiplicative texture ``(b, 1, size, size)``, mean 1.

    White noise blurred in-plane with a Gaussian of one of
    :data:`TEXTURE_SIGMAS` (one per batch), scaled to unit SD per example,
    then ``exp(t h - t^2 / 2)`` with ``t`` uniform in ``[0, max_sd]`` per
    example: perfusion structure that the tissue maps do not predict
    (vessels, within-tissue heterogeneity, the readout's blur of both).
    """
    import torch
    import torch.nn.functional as F

    pick = int(torch.randint(len(TEXTURE_SIGMAS), (1,), generator=gen, device=device))
    sigma = TEXTURE_SIGMAS[pick]
    r = int(math.ceil(3 * sigma))
    offsets = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    taps = taps / taps.sum()
    h = torch.randn((b, 1, size + 2 * r, size + 2 * r), generator=gen, device=device)
    h = F.conv2d(h, taps.view(1, 1, -1, 1))
    h = F.conv2d(h, taps.view(1, 1, 1, -1))
    h = (h - h.mean(dim=(2, 3), keepdim=True)) / h.std(dim=(2, 3), keepdim=True).clamp(min=1e-6)
    t = max_sd * torch.rand((b, 1, 1, 1), generator=gen, device=device)
    return torch.exp(t * h - 0.5 * t * t)


def _misregister(anat, gen):
    """``anat`` ``(b, c, p, p)`` with half the examples rolled by up to two voxels in-plane."""
    import torch

    out = anat.clone()
    shifts = torch.randint(-2, 3, (len(anat), 2), generator=gen, device=anat.device).tolist()
    keep = (torch.rand(len(anat), generator=gen, device=anat.device) < 0.5).tolist()
    for b in range(len(anat)):
        if not keep[b] and any(shifts[b]):
            out[b] = torch.roll(anat[b], shifts=tuple(shifts[b]), dims=(1, 2))
    return out


class SeriesSampler:
    """Batches from a real per-pair series: random disjoint subsets of its own pairs.

    Subject-level learning from noise (:func:`finetune`): each example takes
    ``n`` random pairs of the run as the input (and their noise level) and
    the mean of the other pairs as the target, both noisy, independent draws
    of the same perfusion. Tissue/M0 channels are the run's own maps.
    ``keep``, a ``(z, n)`` boolean matrix (False: removed from that slice by
    the outlier cleaning), limits each slice's draws to its kept pairs; a
    slice needs 4 of them to be drawn.

    With ``level`` (the default) each pair's slice is first shifted so that
    its brain mean is that of the kept pairs' mean. Pairs fluctuate as a
    whole (global and slice-wise offsets, on the simulators up to half the
    GM CBF); a bias-free network trained to predict one noisy offset from
    another learns to shrink the map towards zero, and read GM CBF 20-34%
    low on a clean simulated run (``benchmarks/RESULTS.md``, "The noise
    channel of a cleaned map"). Levelled, the examples teach local denoising
    and the output keeps its input's level.
    """

    def __init__(
        self,
        series,
        mask,
        maps,
        channels,
        *,
        patch: int = 48,
        device="cpu",
        keep=None,
        level: bool = True,
    ):
        import torch

        from asl_pipeline.models.channels import check_channels

        self.channels = check_channels(channels)
        series = np.asarray(series, np.float32)
        mask = np.asarray(mask, bool)
        n_pairs = series.shape[-1]
        if n_pairs < 4:
            raise ValueError(f"{n_pairs} pairs: subject-level fine-tuning needs at least 4")
        self.n_max = n_pairs
        self.device = torch.device(device)
        self.size = max(max(mask.shape[:2]), patch)
        self.patch = int(patch)
        keep = np.ones((mask.shape[2], n_pairs), bool) if keep is None else np.asarray(keep, bool)
        if keep.shape != (mask.shape[2], n_pairs):
            raise ValueError(f"keep is {keep.shape}, the series has {(mask.shape[2], n_pairs)}")
        zs = [
            z
            for z in range(mask.shape[2])
            if mask[:, :, z].sum() >= MIN_MASK_VOXELS and keep[z].sum() >= 4
        ]
        if not zs:
            raise ValueError("no slice with enough brain voxels and kept pairs to train on")
        self.kept = [torch.as_tensor(np.flatnonzero(keep[z]), device=self.device) for z in zs]
        if level:
            series = _levelled(series, mask, keep, zs)
        pad = PairSampler._pad
        planes = []
        for z in zs:
            extra = [np.zeros(mask.shape[:2], np.float32)] * 3
            for i, key in enumerate(("gm", "wm", "m0")):
                if maps.get(key) is not None:
                    extra[i] = np.asarray(maps[key], np.float32)[:, :, z]
            planes.append(np.stack([pad(self, p) for p in [mask[:, :, z], *extra]]))
        self.anat = torch.from_numpy(np.stack(planes)).to(self.device)
        pairs = np.stack([[pad(self, series[:, :, z, p]) for p in range(n_pairs)] for z in zs])
        self.pairs = torch.from_numpy(pairs.astype(np.float32)).to(self.device)

    def batch(self, batch_size: int, gen, n: int | None = None, slices=None):
        """As :meth:`PairSampler.batch`, from the run's own pairs.

        ``slices``: indices (into the sampler's brain slices) to draw from;
        default all.
        """
        import torch

        if n is None:
            n = int(
                torch.randint(
                    2, max(3, self.n_max // 2 + 1), (), generator=gen, device=self.device
                )
            )
        pool = torch.as_tensor(
            list(range(len(self.pairs))) if slices is None else list(slices), device=self.device
        )
        k = pool[torch.randint(len(pool), (batch_size,), generator=gen, device=self.device)]
        top, left = _crop_corners(self.size, self.patch, batch_size, gen, self.device)
        return self._examples(k.tolist(), top, left, self.patch, n, gen)

    def whole_slices(self, slices, gen, n: int):
        """One example per slice of ``slices``: the whole (padded) slice, ``n`` random
        pairs in, the mean of the others as the target. For validation."""
        zeros = [0] * len(slices)
        return self._examples(list(slices), zeros, zeros, self.size, n, gen)

    def _examples(self, k, top, left, patch, n, gen):
        import torch

        xs, ys, ms, anats = [], [], [], []
        for b in range(len(k)):
            sl = (slice(top[b], top[b] + patch), slice(left[b], left[b] + patch))
            kept = self.kept[k[b]]
            order = kept[torch.randperm(len(kept), generator=gen, device=self.device)]
            n_in = min(n, len(kept) // 2)
            pairs = self.pairs[k[b]][:, sl[0], sl[1]]
            inp, rest = pairs[order[:n_in]], pairs[order[n_in:]]
            mask = self.anat[k[b], 0][sl]
            var = inp.var(0, unbiased=True)
            sd = _mean_noise_sd(
                var[mask > 0].median() if bool((mask > 0).any()) else var.new_zeros(()), n_in
            )
            xs.append(torch.stack([inp.mean(0), sd.expand_as(mask)]))
            ys.append(rest.mean(0, keepdim=True))
            ms.append(mask[None])
            anats.append(self.anat[k[b], 1:][:, sl[0], sl[1]])
        x, y, m, anat = (torch.stack(a) for a in (xs, ys, ms, anats))
        return _input_channels(self.channels, x[:, 0:1], x[:, 1:2], anat, m), y * m, m, n


def axial_keep(keep, axis: int, n_axial: int):
    """A cleaning's ``(slices, pairs)`` keep matrix (its slices: the array's third axis)
    for the ``n_axial`` slices along voxel axis ``axis``: itself when that is the third
    axis (or None), else the pairs kept in every slice, for each axial slice."""
    if keep is None or axis == 2:
        return keep
    keep = np.asarray(keep, bool)
    return np.broadcast_to(keep.all(axis=0), (n_axial, keep.shape[1])).copy()


def _levelled(series, mask, keep, zs):
    """``series`` with each pair's slice ``z`` in ``zs`` shifted, inside the mask, so that
    its mean over the slice's mask is the mean of the slice's kept pairs."""
    out = series.copy()
    for z in zs:
        inside = mask[:, :, z]
        values = series[:, :, z][inside]  # (voxels, pairs)
        means = values.mean(axis=0)
        shift = means - means[keep[z]].mean()
        out[:, :, z][inside] = values - shift[None, :]
    return out


def _crop_corners(size: int, patch: int, batch_size: int, gen, device):
    """Random top and left corners (lists) of ``batch_size`` crops of a padded slice."""
    import torch

    top = torch.randint(size - patch + 1, (batch_size,), generator=gen, device=device)
    left = torch.randint(size - patch + 1, (batch_size,), generator=gen, device=device)
    return top.tolist(), left.tolist()


def _mean_noise_sd(median_var, n: int):
    """Noise SD of an ``n``-pair mean from the median over the brain of the pairs'
    voxel-wise variance (the ``noise`` channel, :mod:`asl_pipeline.models.channels`)."""
    import torch

    from asl_pipeline.models.channels import median_variance_factor

    return torch.sqrt(median_var / median_variance_factor(n) / n)


def _input_channels(channels, cbf, noise, anat, mask):
    """The model input ``(b, c, p, p)``: the named channels in the model's order, masked.
    ``anat`` holds GM, WM and M0 in its channels 0-2."""
    import torch

    named = {
        "cbf": cbf,
        "noise": noise,
        "gm": anat[:, 0:1],
        "wm": anat[:, 1:2],
        "m0": anat[:, 2:3],
    }
    return torch.cat([named[c] for c in channels], dim=1) * mask


#: Every how many fine-tuning steps the held-out slices are scored.
FINETUNE_CHECK_EVERY = 10
#: Every how many brain slices one is held out to score the fine-tuning.
FINETUNE_HOLDOUT_EVERY = 4


def finetune(
    model,
    series,
    mask,
    maps=None,
    *,
    seconds: float = 60.0,
    lr: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    device="cpu",
    max_steps: int = 10_000,
    early_stopping: bool = True,
    keep=None,
):
    """Fine-tune ``model`` in place on one run's own pairs for at most ``seconds``.

    Subject-level learning from noise: :class:`SeriesSampler` examples, L1
    loss over the mask, Adam at ``lr``. With ``early_stopping`` (and at least
    4 brain slices) every :data:`FINETUNE_HOLDOUT_EVERY`-th slice is held out
    of the training: every :data:`FINETUNE_CHECK_EVERY` steps the model is
    scored there (squared error of its output for half the pairs against the
    mean of the other half: both noisy and independent, so the score is the
    error against the truth plus a constant) and the best weights, the
    starting ones included, are kept. On a few pairs the fine-tuning starts
    to fit their noise after a few hundred steps (a real 10-pair run:
    ``benchmarks/RESULTS.md``, "A real scan"); the held-out score stops it.
    ``keep``: the pairs of each slice the outlier cleaning kept
    (:class:`SeriesSampler`); the removed ones are neither inputs nor targets.

    Returns ``{"steps", "seconds", "loss_first", "loss_last"}`` and, with
    early stopping, ``"best_step"``, ``"holdout_first"`` and ``"holdout_best"``.
    Seeded: the same run, seed and number of steps give the same weights.
    """
    import torch

    from asl_pipeline.training import masked_loss

    channels = model.config.get("channels") or ("cbf",)
    sampler = SeriesSampler(series, mask, maps or {}, channels, device=device, keep=keep)
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    n_slices = len(sampler.pairs)
    held = []
    if early_stopping and n_slices >= 4:
        held = list(range(1, n_slices, FINETUNE_HOLDOUT_EVERY))
    train = [k for k in range(n_slices) if k not in held]
    holdout = None
    if held:
        val_gen = torch.Generator(device=torch.device(device))
        val_gen.manual_seed(seed + 1)
        holdout = [sampler.whole_slices(held, val_gen, sampler.n_max // 2) for _ in range(2)]

    def score():
        model.eval()
        with torch.no_grad():
            total = sum(masked_loss(model(x), y, m, "l2") for x, y, m, _ in holdout)
        model.train()
        return float(total) / len(holdout)

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.to(device).train()
    record = {}
    if holdout:
        best = score()
        record = {"best_step": 0, "holdout_first": best, "holdout_best": best}
        best_state = copy.deepcopy(model.state_dict())
    start, losses, step = time.monotonic(), [], 0
    while step < max_steps and time.monotonic() - start < seconds:
        x, y, m, _ = sampler.batch(batch_size, gen, slices=train)
        loss = masked_loss(model(x), y, m, "l1")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if holdout and step % FINETUNE_CHECK_EVERY == 0:
            value = score()
            if value < record["holdout_best"]:
                record.update(best_step=step, holdout_best=value)
                best_state = copy.deepcopy(model.state_dict())
    if holdout:
        model.load_state_dict(best_state)
    model.eval()
    return {
        "steps": step,
        "seconds": round(time.monotonic() - start, 1),
        "loss_first": losses[0] if losses else None,
        "loss_last": float(np.mean(losses[-10:])) if losses else None,
        **record,
    }


# ---------------------------------------------------------------------------
# training


@dataclass
class SynthConfig:
    """Settings of :func:`train_synthetic` (``asl-train --synthetic``)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    loss: str = "l1"
    patch_size: int = 48
    n_pairs: tuple = (4, 48)
    target_pairs: int = 32
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 250
    progress: bool = True
    time_limit: float | None = None
    #: Largest SD of the training maps' fine-scale texture (:class:`PairSampler`).
    texture: float = 1.0


def evaluate(model, subjects, *, n_pairs: int = 10, seed: int = 12345, device="cpu") -> dict:
    """Mean PSNR against the clean map: the ``n_pairs`` mean and the model's output."""
    from asl_pipeline.metrics import psnr
    from asl_pipeline.models.channels import noise_sd_map
    from asl_pipeline.models.inference import denoise_volume

    rng = np.random.default_rng(seed)
    rows = []
    for s in subjects:
        pairs = s.draw_pairs(rng, n_pairs)
        mean = pairs.mean(-1)
        extra = {**s.maps(), "noise": noise_sd_map(pairs, s.mask)}
        den = denoise_volume(model, mean, s.mask, device=device, extra=extra)
        rows.append((psnr(mean, s.cbf, s.mask), psnr(den, s.cbf, s.mask)))
    a = np.array(rows)
    return {"psnr_mean": float(a[:, 0].mean()), "psnr_denoised": float(a[:, 1].mean())}


def train_synthetic(model, train, val, cfg: SynthConfig, out_dir, *, resume=False) -> list:
    """Train ``model`` on :class:`PairSampler` batches; checkpoint and validate as it goes.

    The learning rate falls from ``lr`` to 0 along a cosine over the run: over
    ``steps``, or over ``time_limit`` seconds when that comes first (such a
    run's step count depends on the hardware; its metadata records it).
    Writes ``out_dir/checkpoint.pt`` every ``checkpoint_every`` steps (weights,
    optimizer, step, history, generator state) and resumes from it with
    ``resume=True``. Returns the history (one dict per checkpoint).
    """
    import torch
    from tqdm.auto import tqdm

    from asl_pipeline.training import masked_loss

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    channels = model.config.get("channels") or ("cbf",)
    sampler = PairSampler(
        train,
        channels,
        patch=cfg.patch_size,
        n_pairs=cfg.n_pairs,
        target_pairs=cfg.target_pairs,
        device=device,
        texture=cfg.texture,
    )
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, history, spent = 0, [], 0.0
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"].cpu())
        step, history = int(state["step"]), json.loads(state["history"])
        spent = history[-1]["seconds"] if history else 0.0
    start = time.monotonic() - spent

    def progress():
        """Fraction of the run done: by steps, or by time when that runs out first."""
        frac = step / cfg.steps
        if cfg.time_limit:
            frac = max(frac, (time.monotonic() - start) / cfg.time_limit)
        return min(frac, 1.0)

    bar = tqdm(total=cfg.steps, initial=step, desc="training", disable=not cfg.progress)
    losses = []
    while step < cfg.steps:
        model.train()
        for group in opt.param_groups:  # cosine decay to 0 over the run
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * progress()))
        x, y, m, _ = sampler.batch(cfg.batch_size, gen)
        loss = masked_loss(model(x), y, m, cfg.loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        out_of_time = bool(cfg.time_limit) and time.monotonic() - start > cfg.time_limit
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            rec = {
                "step": step,
                "train_loss": float(np.mean(losses)),
                "lr": opt.param_groups[0]["lr"],
            }
            rec["seconds"] = time.monotonic() - start
            if val:
                rec.update({f"val_{k}": v for k, v in evaluate(model, val, device=device).items()})
            history.append(rec)
            losses = []
            LOGGER.info("step %d: %s", step, rec)
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "generator": gen.get_state().cpu(),
                    "step": step,
                    "history": json.dumps(history),
                },
                ckpt,
            )
            (out_dir / "history.json").write_text(json.dumps(history, indent=1))
        if out_of_time:
            break
    bar.close()
    return history
