"""Training denoising networks by learning from noise (methods spec, section 6.3).

No clean reference is needed. A subject's per-pair CBF series (one map per
control/label pair, mL/100 g/min) is cut into ``n_segments`` (4) segments of
consecutive pairs; the mean map of segment 1 is an input whose target is the
mean map of segment 2, and likewise 3 -> 4; the swapped roles 2 -> 1 and
4 -> 3 are extra examples. Input and target are independent noisy draws of
the same perfusion, so a network trained with an L2 loss converges to their
mean and one trained with L1 to their median. Targets are never clipped or
rectified (setting negative CBF to zero would bias what the network learns).

The classic scheme (``scheme="pseudo-gt"``) is kept for comparison: the same
segment means as inputs, the pseudo-ground-truth (mean of all pairs after
outlier cleaning, smoothed with a 3 mm FWHM Gaussian) as the target.

BOLD-to-ASL prediction (methods spec, section 6.4; ``input_kind="bold"``):
the same learning from noise with a BOLD-weighted input, the label/control
average of segment k's pairs (``Subject.bold``), and the mean CBF map of a
DIFFERENT segment as the target (k -> k+1 and swapped). A different segment,
because the BOLD image and the CBF of the same pairs share their motion and
physiological fluctuations: the target's noise must be independent of the
input. The network normalises the BOLD slice itself (by its median) and
outputs CBF in mL/100 g/min.

Examples are axial slices (the third voxel axis), set to zero outside the
brain mask; the loss is averaged over the mask voxels only. Subjects, not
slices, are split between training and validation.

The training loop (:func:`train`) uses Adam, writes a checkpoint after every
epoch (weights, optimizer, epoch, history and the random generators' states)
and resumes from it after an interruption with the same result as an
uninterrupted run. Runs are seeded; on the CPU they are bit-reproducible for
a given number of threads.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from asl_pipeline.errors import ASLInputError
from asl_pipeline.metrics import psnr, ssim
from asl_pipeline.models.inference import denoise_volume
from asl_pipeline.smoothing import fwhm_to_sigma, smooth_in_mask

LOGGER = logging.getLogger("asl_pipeline.training")

#: Minimum number of brain-mask voxels for an axial slice to be used.
MIN_MASK_VOXELS = 50


# --------------------------------------------------------------------------- data
def segment_means(series, n_segments: int = 4):
    """Mean maps of ``n_segments`` segments of consecutive pairs.

    ``series`` is ``(x, y, z, n_pairs)``. Each segment holds
    ``n_pairs // n_segments`` pairs; trailing pairs that do not fill a
    segment are left out. Returns ``(n_segments, x, y, z)``.
    """
    series = np.asarray(series, dtype=np.float32)
    if series.ndim != 4:
        raise ASLInputError(
            f"a per-pair CBF series must be 4-D, got shape {series.shape}.",
            field="cbf_series",
            fix="pass one CBF map per control/label pair along the 4th axis",
        )
    per = series.shape[-1] // n_segments
    if per < 1:
        raise ASLInputError(
            f"{series.shape[-1]} pairs cannot be split into {n_segments} segments.",
            field="cbf_series",
            fix=f"use series of at least {n_segments} pairs",
        )
    return np.stack(
        [series[..., k * per : (k + 1) * per].mean(axis=-1) for k in range(n_segments)]
    )


def lfn_pairs(n_segments: int = 4, *, swap: bool = True) -> list[tuple[int, int]]:
    """(input segment, target segment) index pairs: 0->1, 2->3 (and 1->0, 3->2)."""
    pairs = []
    for k in range(0, n_segments - 1, 2):
        pairs.append((k, k + 1))
        if swap:
            pairs.append((k + 1, k))
    return pairs


def pseudo_ground_truth(
    series,
    mask,
    *,
    voxel_size=(1.0, 1.0, 1.0),
    fwhm: float = 3.0,
    gm=None,
    wm=None,
    cleaning: str | None = "auto",
):
    """The classic target: the mean of all pairs, outlier-cleaned and smoothed.

    Parameters
    ----------
    series, mask
        Per-pair CBF series ``(x, y, z, n_pairs)`` and brain mask.
    voxel_size
        Voxel size in mm, for the smoothing kernel.
    fwhm
        Gaussian FWHM in mm (the study: 3 mm); 0 disables smoothing. The
        smoothing is normalised within the brain mask,
        ``smooth(x * m) / smooth(m)``, so the zero background does not darken
        the cortex.
    gm, wm
        GM/WM probability maps, needed by PAOCSL.
    cleaning
        Method of :func:`asl_pipeline.outliers.clean`: ``"paocsl"`` (the
        study's), ``"aoc"``, ``"score"`` or ``"mean"`` (none). ``"auto"``
        picks PAOCSL when tissue maps are given and AOC otherwise.
    """
    from asl_pipeline import outliers

    series = np.asarray(series, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if cleaning == "auto":
        cleaning = "paocsl" if gm is not None and wm is not None else "aoc"
    mean = outliers.clean(cleaning or "mean", series, gm=gm, wm=wm, mask=mask).mean_cbf
    if fwhm and fwhm > 0:
        sigma = fwhm_to_sigma(fwhm, voxel_size)
        mean = np.where(mask, smooth_in_mask(mean, mask, sigma), 0.0)
    return mean.astype(np.float32)


@dataclass
class Subject:
    """One subject's training material.

    ``series`` is the per-pair CBF series ``(x, y, z, n_pairs)`` in
    mL/100 g/min, ``mask`` the brain mask; ``truth`` (the true CBF) is known
    for simulated subjects only and used for validation figures, never for
    the loss. ``bold`` (optional, same shape as ``series``) is the
    label/control average of each pair, ``(control + label) / 2`` in the
    scanner's units: the BOLD-weighted input of BOLD-to-ASL prediction.
    """

    name: str
    series: np.ndarray
    mask: np.ndarray
    voxel_size: tuple = (1.0, 1.0, 1.0)
    truth: np.ndarray | None = None
    gm: np.ndarray | None = None
    wm: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    bold: np.ndarray | None = None


@dataclass
class SliceSet:
    """Axial training slices: ``inputs``, ``targets`` and ``masks`` (lists of 2-D arrays).

    ``scales`` (BOLD inputs only) holds each input slice's divisor
    (:func:`asl_pipeline.models.normalise.bold_scale` of the whole slice),
    passed to the model with every crop of it.
    """

    inputs: list
    targets: list
    masks: list
    scales: list = field(default_factory=list)

    def __len__(self):
        return len(self.inputs)


def build_examples(
    subjects,
    *,
    scheme: str = "lfn",
    n_segments: int = 4,
    fwhm: float = 3.0,
    input_kind: str = "cbf",
):
    """Axial (input, target, mask) slices of ``subjects`` under a training scheme.

    ``scheme="lfn"``: segment k's mean -> segment k+1's mean (and swapped).
    ``scheme="pseudo-gt"``: every segment mean -> the pseudo-ground-truth.
    ``input_kind="bold"``: the inputs are the segments' mean BOLD-weighted
    images (``Subject.bold``) instead of their mean CBF; with ``"lfn"`` the
    target is still another segment's mean CBF, never the same segment's.
    Inputs and targets are set to 0 outside the mask; slices with fewer than
    :data:`MIN_MASK_VOXELS` mask voxels are skipped.
    """
    from asl_pipeline.models.normalise import bold_scale, check_input_kind

    if scheme not in ("lfn", "pseudo-gt"):
        raise ValueError(f"unknown scheme {scheme!r}; use 'lfn' or 'pseudo-gt'")
    check_input_kind(input_kind)
    out = SliceSet([], [], [])
    for subj in subjects:
        mask = np.asarray(subj.mask, dtype=bool)
        segs = segment_means(subj.series, n_segments)
        srcs = segs if input_kind == "cbf" else bold_segment_means(subj, n_segments)
        if scheme == "lfn":
            pairs = [(srcs[i], segs[j]) for i, j in lfn_pairs(n_segments)]
        else:
            pgt = pseudo_ground_truth(
                subj.series, mask, voxel_size=subj.voxel_size, fwhm=fwhm, gm=subj.gm, wm=subj.wm
            )
            pairs = [(src, pgt) for src in srcs]
        for z in range(mask.shape[2]):
            m = mask[:, :, z]
            if m.sum() < MIN_MASK_VOXELS:
                continue
            for src, dst in pairs:
                out.inputs.append(np.where(m, src[:, :, z], 0).astype(np.float32))
                out.targets.append(np.where(m, dst[:, :, z], 0).astype(np.float32))
                out.masks.append(m.copy())
                if input_kind == "bold":
                    out.scales.append(bold_scale(out.inputs[-1]))
    return out


def bold_segment_means(subject, n_segments: int = 4):
    """Mean BOLD-weighted images of a subject's segments (``Subject.bold``).

    Raises :class:`ASLInputError` when the subject has no label/control
    average series or its shape differs from the CBF series'.
    """
    if subject.bold is None:
        raise ASLInputError(
            f"subject {subject.name} has no label/control-averaged (BOLD-weighted) series.",
            file=subject.info.get("file"),
            field="bold",
            fix="load the subject with its label/control average (asl-train --bids or "
            "--simulate with --input bold), or train with --input cbf",
        )
    bold = np.asarray(subject.bold, dtype=np.float32)
    if bold.shape != np.shape(subject.series):
        raise ASLInputError(
            f"the BOLD-weighted series {bold.shape} and the CBF series "
            f"{np.shape(subject.series)} differ in shape.",
            file=subject.info.get("file"),
            field="bold",
            fix="give one label/control average per CBF pair, on the same grid",
        )
    return segment_means(bold, n_segments)


def _crop(arrays, mask, size, rng, min_fraction=0.1, tries=10):
    """A random ``size`` x ``size`` crop (zero-padded when the slice is smaller)."""
    h, w = mask.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        arrays = [np.pad(a, pad) for a in arrays]
        mask = np.pad(mask, pad)
        h, w = mask.shape
    for _ in range(tries):
        i = int(rng.integers(0, h - size + 1))
        j = int(rng.integers(0, w - size + 1))
        m = mask[i : i + size, j : j + size]
        if m.mean() >= min_fraction:
            break
    return [a[i : i + size, j : j + size] for a in arrays], m


def make_batch(slices: SliceSet, indices, *, patch_size=None, rng=None):
    """Stack slices ``indices`` into arrays ``(n, 1, h, w)`` (crops or zero-padded)."""
    xs, ys, ms = [], [], []
    for k in indices:
        x, y, m = slices.inputs[k], slices.targets[k], slices.masks[k]
        if patch_size:
            (x, y), m = _crop([x, y], m, patch_size, rng)
        xs.append(x)
        ys.append(y)
        ms.append(m)
    h = max(a.shape[0] for a in xs)
    w = max(a.shape[1] for a in xs)

    def stack(arrs, dtype):
        out = np.zeros((len(arrs), 1, h, w), dtype=dtype)
        for n, a in enumerate(arrs):
            out[n, 0, : a.shape[0], : a.shape[1]] = a
        return out

    return stack(xs, np.float32), stack(ys, np.float32), stack(ms, np.float32)


# ------------------------------------------------------------------------ training
@dataclass
class TrainConfig:
    """Settings of :func:`train` (the ``asl-train`` options)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    loss: str = "l1"
    scheme: str = "lfn"
    patch_size: int | None = 48
    steps_per_epoch: int | None = None
    seed: int = 0
    device: str = "cpu"
    n_segments: int = 4
    progress: bool = True
    #: ``"constant"`` or ``"cosine"`` (the rate falls from ``lr`` to 0 over all steps).
    lr_schedule: str = "constant"
    #: ``"cbf"`` (denoise segment means) or ``"bold"`` (predict CBF from a BOLD image).
    input_kind: str = "cbf"


def masked_loss(pred, target, mask, kind: str = "l1"):
    """Mean absolute (``l1``) or squared (``l2``) error over the mask voxels."""
    diff = (pred - target) * mask
    err = diff.abs() if kind == "l1" else diff**2
    return err.sum() / mask.sum().clamp(min=1.0)


def _forward(model, slices: SliceSet, indices, x):
    """``model(x)`` for the examples ``indices``, with their scales for BOLD inputs."""
    import torch

    if not slices.scales:
        return model(x)
    scale = torch.tensor([slices.scales[k] for k in indices], dtype=x.dtype, device=x.device)
    return model(x, scale=scale)


def _validate(model, val, subjects, cfg, device):
    """Validation figures: loss on the validation examples, and, per subject,
    PSNR/SSIM of the denoised first segment (BOLD input: the CBF predicted
    from its BOLD image) against the target (LFN: the second segment;
    pseudo-GT: the pseudo-ground-truth) and, when the truth is known
    (simulation), against the truth. ``psnr_input_truth`` is always that of
    the first segment's mean CBF."""
    import torch

    if not subjects:
        return {}
    losses = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(val), 32):
            idx = range(start, min(start + 32, len(val)))
            x, y, m = (torch.from_numpy(a).to(device) for a in make_batch(val, idx))
            loss = masked_loss(_forward(model, val, idx, x), y, m, cfg.loss)
            losses.append(float(loss) * len(x))
    out = {"val_loss": sum(losses) / max(len(val), 1)}
    figures = {"psnr_input_truth": [], "psnr_truth": [], "ssim_truth": []}
    for subj in subjects:
        mask = np.asarray(subj.mask, bool)
        seg0 = segment_means(subj.series, cfg.n_segments)[0]
        src = seg0 if cfg.input_kind == "cbf" else bold_segment_means(subj, cfg.n_segments)[0]
        den = denoise_volume(model, src, mask, device=device)
        if subj.truth is not None:
            figures["psnr_input_truth"].append(psnr(np.where(mask, seg0, 0), subj.truth, mask))
            figures["psnr_truth"].append(psnr(den, subj.truth, mask))
            figures["ssim_truth"].append(ssim(den, subj.truth, mask))
    for key, vals in figures.items():
        if vals:
            out[f"val_{key}"] = float(np.mean(vals))
    return out


def _rng_state_json(rng):
    return json.dumps(rng.bit_generator.state)


def train(model, train_subjects, val_subjects, cfg: TrainConfig, out_dir, *, resume=False):
    """Train ``model`` on ``train_subjects``; validate on ``val_subjects`` every epoch.

    Writes ``out_dir/checkpoint.pt`` after every epoch and
    ``out_dir/history.json``. With ``resume=True`` and a checkpoint present,
    continues from it (weights, optimizer, epoch, history, random states).

    Returns the history: one dict of figures per epoch.
    """
    import torch
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":  # reproducible cuDNN kernels (CPU kernels already are)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    rng = np.random.default_rng(cfg.seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; use 'constant' or 'cosine'")
    model_kind = getattr(model, "config", {}).get("input_kind", "cbf")
    if model_kind != cfg.input_kind:
        raise ValueError(
            f"the model takes input_kind {model_kind!r} but the training is set for "
            f"{cfg.input_kind!r}; build the model with input_kind={cfg.input_kind!r}"
        )
    examples = dict(scheme=cfg.scheme, n_segments=cfg.n_segments, input_kind=cfg.input_kind)
    slices = build_examples(train_subjects, **examples)
    if len(slices) == 0:
        raise ASLInputError(
            f"no training slices: every brain mask slice has fewer than {MIN_MASK_VOXELS} voxels.",
            field="brain_mask",
            fix="check the brain masks of the training data",
        )
    val = build_examples(val_subjects, **examples)
    n_steps = cfg.steps_per_epoch or math.ceil(len(slices) / cfg.batch_size)
    total_steps = n_steps * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
            if cfg.lr_schedule == "cosine"
            else 1.0
        ),
    )
    history, start_epoch = [], 0
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if "scheduler" in ckpt:
            scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt["epoch"])
        history = json.loads(ckpt["history"])
        rng.bit_generator.state = json.loads(ckpt["numpy_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        LOGGER.info("resumed from %s at epoch %d", ckpt_path, start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        order = rng.permutation(len(slices))
        pos, total, seen = 0, 0.0, 0
        bar = tqdm(
            range(n_steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress
        )
        for _ in bar:
            if pos + cfg.batch_size > len(order):
                order, pos = np.concatenate([order[pos:], rng.permutation(len(slices))]), 0
            idx = order[pos : pos + cfg.batch_size]
            pos += cfg.batch_size
            x, y, m = (
                torch.from_numpy(a).to(device)
                for a in make_batch(slices, idx, patch_size=cfg.patch_size, rng=rng)
            )
            optimizer.zero_grad()
            loss = masked_loss(_forward(model, slices, idx, x), y, m, cfg.loss)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.3f}")
        record = {
            "epoch": epoch + 1,
            "train_loss": total / seen,
            "train_seconds": time.perf_counter() - t0,
            "slices": seen,
            "lr": optimizer.param_groups[0]["lr"],
        }
        record.update(_validate(model, val, val_subjects, cfg, device))
        history.append(record)
        LOGGER.info("epoch %d: %s", epoch + 1, record)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "history": json.dumps(history),
                "numpy_rng": _rng_state_json(rng),
                "torch_rng": torch.get_rng_state(),
                "config": json.dumps(asdict(cfg)),
            },
            ckpt_path.with_suffix(".tmp"),
        )
        ckpt_path.with_suffix(".tmp").replace(ckpt_path)
        (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    return history


def split_subjects(subjects, val_fraction: float, seed: int):
    """Split subjects (not slices) into training and validation sets, seeded."""
    n = len(subjects)
    n_val = int(round(val_fraction * n)) if n > 1 else 0
    if val_fraction > 0 and n > 1:
        n_val = max(n_val, 1)
    order = np.random.default_rng(seed).permutation(n)
    val = [subjects[i] for i in sorted(order[:n_val])]
    train_ = [subjects[i] for i in sorted(order[n_val:])]
    return train_, val


# ---------------------------------------------------------------------- simulation
#: Acquisition grids (shape, voxel size in mm) drawn for simulated training subjects.
SIM_GRIDS = (
    ((64, 64, 20), (3.4, 3.4, 6.0)),
    ((80, 80, 24), (3.0, 3.0, 5.0)),
    ((48, 48, 16), (4.5, 4.5, 7.0)),
    ((88, 88, 30), (2.5, 2.5, 4.0)),
)

#: Offset of the subject seeds of held-out test subjects (never used for training:
#: training subjects use ``seed * 100_000 + i``; keep ``seed < 9``).
TEST_SEED_OFFSET = 900_000


def simulation_settings(seed: int, index: int) -> dict:
    """Acquisition settings of simulated subject ``index`` (drawn, seeded).

    Varies the grid (:data:`SIM_GRIDS`), labeling (pCASL 70%, PASL 30%),
    readout (2D/3D), noise level (``noise_scale`` 0.5-1.5), outliers (on for
    70%), background suppression (50%) and lesions (20%).
    """
    rng = np.random.default_rng([seed, index])
    shape, voxel = SIM_GRIDS[int(rng.integers(len(SIM_GRIDS)))]
    return {
        "shape": shape,
        "voxel_size": voxel,
        "labeling": "PASL" if rng.random() < 0.3 else "PCASL",
        "readout": "3D" if rng.random() < 0.5 else "2D",
        "noise_scale": float(rng.choice([0.5, 0.75, 1.0, 1.5])),
        "outliers": bool(rng.random() < 0.7),
        "background_suppression": bool(rng.random() < 0.5),
        "lesion": bool(rng.random() < 0.2),
    }


def simulate_subject_series(
    subject_seed: int, n_pairs: int = 40, *, bold: bool = False, **settings
) -> Subject:
    """One simulated subject (:func:`asl_pipeline.simulate.simulate_cbf_series`).

    ``bold=True`` also fills ``Subject.bold`` with each pair's label/control
    average (the same CBF series either way).
    """
    from asl_pipeline.simulate import simulate_cbf_series

    sim = simulate_cbf_series(int(subject_seed), n_pairs=n_pairs, mean_series=bold, **settings)
    return Subject(
        name=f"sim-{subject_seed}",
        series=sim.cbf_series,
        mask=np.asarray(sim.brain_mask, bool),
        voxel_size=tuple(float(v) for v in settings.get("voxel_size", (3.4, 3.4, 6.0))),
        truth=sim.cbf,
        gm=sim.gm,
        wm=sim.wm,
        info={
            "seed": int(subject_seed),
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
            "outlier_pairs": [int(p) for p in sim.outlier_pairs],
        },
        bold=sim.mean_series,
    )


def simulate_subjects(
    n: int, *, seed: int = 0, n_pairs: int = 40, progress: bool = False, bold: bool = False
):
    """``n`` varied simulated training subjects, seeds ``seed * 100_000 + i``.

    ``bold=True``: with their label/control-averaged series (``Subject.bold``).
    """
    from tqdm.auto import tqdm

    return [
        simulate_subject_series(
            seed * 100_000 + i, n_pairs, bold=bold, **simulation_settings(seed, i)
        )
        for i in tqdm(range(n), desc="simulating", disable=not progress)
    ]
