"""Outlier cleaning of CBF time series: PAOCSL, with SCORE, AOC and the plain mean.

Section 5 of the methods spec (``shared/specs/asl-methods.md``). Every method
takes a CBF time series with one map per control/label pair, shaped
``(x, y, z, n_pairs)`` with slices along the third axis, and returns a
:class:`CleaningResult`: the cleaned mean CBF map, the slice x pair outlier
matrix, the status of every pair, counts and the parameters used.

PAOCSL (Li, Dolui, Xie, Wang, J Neurosci Methods 2018) removes pairs slice by
slice; SCORE (Dolui et al., JMRI 2017) and AOC (Wang et al., NeuroImage
Clinical 2013) remove whole pairs, so their outlier matrices repeat the same
row in every slice.

Choices the spec leaves open, and how they are made here (each is a
parameter where it makes sense):

Motion
    ``motion`` holds the 6 rigid-body parameters of every *volume*
    (``n_volumes x 6``: 3 translations, then 3 rotations, as written by SPM's
    ``rp_*.txt`` or fMRIPrep's ``trans_*``/``rot_*`` columns). A pair's
    "control-label difference" is ``|motion[control] - motion[label]|`` per
    parameter, so it does not depend on whether the label or the control
    comes first. ``motion_pairs`` gives the two row indices of every pair;
    by default pair ``i`` is rows ``2i`` and ``2i + 1``, which requires
    exactly ``2 * n_pairs`` rows (otherwise the rows are ambiguous and an
    :class:`~asl_pipeline.errors.ASLInputError` asks for ``motion_pairs``;
    :func:`asl_pipeline.rundesc.pair_volumes` builds it from the BIDS ``aslcontext``).
Non-finite voxels
    A voxel that is NaN or infinite in any pair is left out of every
    statistic (correlations, global CBF, tissue SDs); its output value is the
    mean over the retained pairs where it is finite.
PAOCSL slab
    Slice ``s`` uses slices ``max(0, s - 2) .. min(n_slices - 1, s + 2)``:
    the slab is truncated at the ends of the volume, never shifted (the
    reference code shifts it asymmetrically near the ends and is off by one
    for slice 4).
PAOCSL slice order
    The reference cleans slices one after another, so each slice sees the
    already cleaned means of the slices below it and the raw means of those
    above: its result depends on the slice order. Here every slice of a pass
    sees the *same* neighbour means (a Jacobi-style update), so the result
    does not depend on the order, and reversing the slice axis reverses the
    result exactly. Pass 1 uses the means after the whole-volume
    pre-rejection; every further pass uses the means the previous pass
    produced (after consolidation), which is what "their current, already
    cleaned means" asks for. The slice-wise flags accumulate from pass to
    pass (each slice's greedy search starts from the pairs it still keeps),
    so the passes cannot oscillate between two neighbouring slices that each
    hide the other's outlier (plain Jacobi updates do); they stop when a pass
    adds no flag, after at most ``n_passes`` (default 5).
PAOCSL evaluated slices and consolidation
    A slice is *evaluated* when it is not skipped (>= ``min_mask_voxels``
    brain voxels and mean CBF >= ``min_slice_cbf``) and its own slice holds
    GM- or WM-mask voxels: otherwise removing a pair from it cannot change
    the cost ``J`` and nothing is ever flagged there. The GM/WM masks leave
    out the ``n_edge_slices`` outermost slices at each end (spec), so these
    slices are never evaluated. The consolidation fractions (90 %, 20 %) are
    fractions of the *evaluated* slices (``fraction_of="evaluated"``); with
    ``"all"`` they are fractions of all slices as in the reference code,
    where a pair corrupted everywhere can then never reach 90 %. Rules, in
    this order (the reference's order): flagged in more than
    ``all_slices_frac`` of the slices -> outlier in every slice, skipped and
    edge slices included; flagged in fewer than ``min_slices`` slices -> kept
    everywhere; flagged in fewer than ``max(min_slices, ceil(isolated_frac *
    n))`` slices none of which are adjacent -> kept everywhere. Everything
    else stays an outlier of the slices that flagged it only. Skipped and
    edge slices average every pair that is not an outlier of all slices.
    Note that with the spec's ``min_slices=2`` a corruption confined to a
    single slice is always released; ``min_slices=1`` keeps such flags.
PAOCSL skipped slices
    "Mean CBF under 5" is the mean over the slice's brain voxels of the
    voxel-wise *median* over the pre-rejected pairs
    (``skip_statistic="median"``): the mean over pairs is moved by the very
    outliers to be removed and, without background suppression, by
    physiological noise, and skipped good slices that way in simulations;
    ``"mean"`` is the reference's statistic.
PAOCSL stopping rule (optional, not in the spec)
    The spec removes pairs while ``J`` drops at all. On noise alone some
    removal nearly always lowers ``J`` (a pair whose noise happens to add
    spatial variance), so the spec rule flags several clean pairs per slice
    at realistic SNR and biases the map towards lower spatial variance;
    the consolidation rules then have to release isolated flags, which also
    releases true single-slice corruptions. ``min_drop_z`` (default ``None``
    = spec) asks in addition that the best drop exceed the median drop over
    all pairs still kept by ``min_drop_z`` robust SDs (1.4826 MAD); with it,
    ``min_slices=1, isolated_frac=0`` keep single-slice detections
    (:data:`PAOCSL_NOISE_AWARE`). ``benchmarks/bench_outliers.py`` compares
    both.
PAOCSL slice screen (optional, not in the spec)
    The greedy search removes one pair at a time, so two outliers of
    opposite sign in the same slice that partly cancel in its mean stay
    (removing either one alone raises ``J``), and slices in the
    ``n_edge_slices`` at each end are never searched. On the validation
    panel (``benchmarks/validate_chain.py``) such slices held corrupted
    pairs at 10-15 times the true CBF. ``slice_sd`` (default ``None`` =
    spec) adds a symmetric screen before the search: in every slice with
    ``min_mask_voxels`` brain voxels or more, edge and skipped slices
    included, a pair whose mean CBF over the slice's brain voxels lies more
    than ``slice_sd`` robust SDs (1.4826 MAD over the pairs kept by the
    whole-volume step) from the median is an outlier of that slice. The
    greedy search then starts from the remaining pairs.
PAOCSL whole-volume threshold
    ``global_sd=None`` sets the whole-volume threshold from the number of
    pairs ``n``: the robust z that a pair of a clean Gaussian series exceeds
    with probability 5 % / ``n`` (3.23 SD for 40 pairs, 3.42 for 80), so a
    clean run loses a pair with about 5 % probability. A fixed 3 SD removes
    a clean pair in about one run in ten at 40 pairs, and that pair is always
    an extreme one, which biases the mean.
PAOCSL candidates
    Correlations with the prior use every brain-mask voxel of the slab
    (edge slices included, as the reference does); a slab with
    ``min_mask_voxels`` voxels or fewer, or a flat prior, makes every pair a
    candidate. A pair whose map is flat over the slab has no correlation and
    is a candidate.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from asl_pipeline.cbf import delay_groups
from asl_pipeline.errors import ASLInputError

#: Status of a pair in :attr:`CleaningResult.status`.
KEPT = "kept"
REMOVED = "removed"
PARTIAL = "removed_in_some_slices"

METHODS = ("paocsl", "score", "aoc", "mean")

#: PAOCSL settings with the noise-aware stop and no release of single-slice
#: flags (module docstring); the defaults of :func:`paocsl` follow the spec.
PAOCSL_NOISE_AWARE = {
    "min_drop_z": 4.0,
    "min_slices": 1,
    "isolated_frac": 0.0,
    "global_statistic": "robust",
    "global_sd": None,
    "slice_sd": 5.0,
}


@dataclass
class CleaningResult:
    """What an outlier-cleaning method found and the mean CBF it produced.

    Attributes
    ----------
    method
        ``"paocsl"``, ``"score"``, ``"aoc"`` or ``"mean"``.
    mean_cbf
        Cleaned mean CBF map, ``(x, y, z)``, in the units of the input
        (mL/100 g/min for CBF).
    outliers
        Boolean ``(n_slices, n_pairs)`` matrix: True where the pair was left
        out of that slice's mean.
    status
        One string per pair: :data:`KEPT`, :data:`REMOVED` (left out of every
        slice) or :data:`PARTIAL` (left out of some slices only).
    parameters
        Every parameter used, JSON-serialisable.
    details
        Intermediate results, JSON-serialisable lists (pre-rejected pairs,
        the raw slice-wise flags before consolidation, evaluated slices...).
    """

    method: str
    mean_cbf: np.ndarray
    outliers: np.ndarray
    status: list[str]
    parameters: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict:
        """Numbers of pairs and slice-pairs kept and removed."""
        n_slices, n_pairs = self.outliers.shape
        return {
            "n_pairs": int(n_pairs),
            "n_slices": int(n_slices),
            "n_pairs_kept": int(sum(s == KEPT for s in self.status)),
            "n_pairs_removed": int(sum(s == REMOVED for s in self.status)),
            "n_pairs_removed_in_some_slices": int(sum(s == PARTIAL for s in self.status)),
            "n_slice_pairs_removed": int(self.outliers.sum()),
            "fraction_slice_pairs_kept": float(1.0 - self.outliers.mean()),
        }

    @property
    def removed_pairs(self) -> np.ndarray:
        """Indices of the pairs removed from every slice."""
        return np.flatnonzero(np.array(self.status) == REMOVED)


# --------------------------------------------------------------------------
# Input handling


def _as_series(cbf_ts) -> np.ndarray:
    data = np.asarray(cbf_ts)
    if data.ndim != 4:
        raise ASLInputError(
            f"the CBF time series must be 4-D (x, y, z, pairs), got {data.ndim}-D",
            field="cbf_ts",
            fix="pass one CBF map per control/label pair stacked along the 4th axis",
        )
    if data.shape[3] < 2:
        raise ASLInputError(
            f"the CBF time series has {data.shape[3]} map; outlier cleaning needs at least 2",
            field="cbf_ts",
            fix="pass the pair-wise CBF series, not its mean, or skip outlier cleaning",
        )
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise ASLInputError(
            f"the CBF time series has dtype {data.dtype}",
            field="cbf_ts",
            fix="pass real-valued CBF maps",
        )
    data = data.astype(np.float64, copy=False)
    if not np.isfinite(data).any():
        raise ASLInputError(
            "the CBF time series holds no finite value (all NaN or infinite)",
            field="cbf_ts",
            fix="check the CBF computation that produced it (M0, scaling)",
        )
    return data


def _as_map(arr, shape, name: str, *, probability: bool) -> np.ndarray:
    if arr is None:
        raise ASLInputError(f"the {name} map is missing", field=name, fix=f"pass the {name} map")
    a = np.asarray(arr)
    if a.ndim == 4 and a.shape[3] == 1:
        a = a[..., 0]
    if a.shape != tuple(shape):
        raise ASLInputError(
            f"the {name} map has shape {a.shape}, the CBF maps {tuple(shape)}",
            field=name,
            fix=f"resample the {name} map into the ASL (CBF) space first",
        )
    if probability:
        a = np.nan_to_num(a.astype(np.float64), nan=0.0)
        lo, hi = float(a.min()), float(a.max())
        if lo < -1e-6 or hi > 1.0 + 1e-6:
            raise ASLInputError(
                f"the {name} probability map ranges over [{lo:g}, {hi:g}], not [0, 1]",
                field=name,
                fix="pass tissue probabilities between 0 and 1 (divide percentages by 100)",
            )
        return np.clip(a, 0.0, 1.0)
    return a


def _as_mask(mask, shape, finite: np.ndarray) -> np.ndarray:
    m = _as_map(mask, shape, "mask", probability=False)
    m = np.nan_to_num(m.astype(np.float64), nan=0.0) > 0
    if not m.any():
        raise ASLInputError("the brain mask is empty", field="mask", fix="pass a non-empty mask")
    m &= finite
    if not m.any():
        raise ASLInputError(
            "no voxel of the brain mask is finite in every CBF map",
            field="cbf_ts",
            fix="check the CBF maps for NaN inside the brain (e.g. M0 of zero)",
        )
    return m


def pair_motion(motion, n_pairs: int, motion_pairs=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair control-label motion difference and mean position.

    Parameters
    ----------
    motion
        ``(n_volumes, 6)`` rigid-body parameters of every volume.
    n_pairs
        Number of pairs (maps) in the CBF series.
    motion_pairs
        ``(n_pairs, 2)`` row indices of the control and label volume of every
        pair; default rows ``2i`` and ``2i + 1``.

    Returns
    -------
    difference, average
        ``(n_pairs, 6)`` arrays: ``|control - label|`` and
        ``(control + label) / 2``.
    """
    params = np.asarray(motion, dtype=np.float64)
    if params.ndim != 2 or params.shape[1] < 6:
        raise ASLInputError(
            f"motion parameters must be n_volumes rows x 6 columns, got shape {params.shape}",
            field="motion",
            fix="pass the 6 rigid-body parameters (3 translations, 3 rotations) of every volume",
        )
    params = params[:, :6]
    if not np.isfinite(params).all():
        raise ASLInputError(
            "motion parameters contain NaN or infinite values",
            field="motion",
            fix="re-run motion correction or leave the motion parameters out",
        )
    if motion_pairs is None:
        if params.shape[0] != 2 * n_pairs:
            raise ASLInputError(
                f"{params.shape[0]} motion rows for {n_pairs} pairs: expected {2 * n_pairs} "
                "(control and label interleaved)",
                field="motion",
                fix="pass motion_pairs (e.g. from asl_pipeline.rundesc.pair_volumes) to say "
                "which rows belong to which pair",
            )
        idx = np.arange(2 * n_pairs).reshape(n_pairs, 2)
    else:
        idx = np.asarray(motion_pairs, dtype=int)
        if idx.shape != (n_pairs, 2):
            raise ASLInputError(
                f"motion_pairs has shape {idx.shape}, expected ({n_pairs}, 2)",
                field="motion_pairs",
                fix="give one (control, label) row pair per CBF map",
            )
        if idx.min() < 0 or idx.max() >= params.shape[0]:
            raise ASLInputError(
                f"motion_pairs refers to rows outside the {params.shape[0]} motion rows",
                field="motion",
                fix="pass the motion parameters of every volume of the ASL series",
            )
    a, b = params[idx[:, 0]], params[idx[:, 1]]
    return np.abs(a - b), (a + b) / 2.0


def _masked_mean(data: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean over the pairs in ``keep`` (last axis), ignoring NaN."""
    sub = data[..., keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(sub, axis=-1)


def _status(outliers: np.ndarray) -> list[str]:
    n_flag = outliers.sum(axis=0)
    n_slices = outliers.shape[0]
    return [KEPT if k == 0 else REMOVED if k == n_slices else PARTIAL for k in n_flag]


def _volume_result(method, data, removed, parameters, details) -> CleaningResult:
    keep = ~removed
    mean = _masked_mean(data, keep)
    outl = np.repeat(removed[None, :], data.shape[2], axis=0)
    return CleaningResult(method, mean, outl, _status(outl), parameters, details)


def _corr_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of vector ``x`` (n,) with every column of ``y`` (n, t).

    Flat columns give NaN.
    """
    xc = x - x.mean()
    yc = y - y.mean(axis=0)
    den = np.sqrt((xc**2).sum()) * np.sqrt((yc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc @ yc) / den
    r[~np.isfinite(r)] = np.nan
    return r


# --------------------------------------------------------------------------
# Plain mean


def plain_mean(cbf_ts, mask=None) -> CleaningResult:
    """Mean over all pairs, no cleaning (the baseline of the comparisons).

    ``mask`` is only checked for shape; the mean is computed everywhere.
    """
    data = _as_series(cbf_ts)
    if mask is not None:
        _as_mask(mask, data.shape[:3], np.isfinite(data).all(-1))
    removed = np.zeros(data.shape[3], bool)
    return _volume_result("mean", data, removed, {}, {})


# --------------------------------------------------------------------------
# SCORE


def score(
    cbf_ts,
    gm,
    wm,
    csf,
    mask,
    *,
    tissue_threshold: float = 0.9,
    gm_sd: float = 2.5,
) -> CleaningResult:
    """SCORE, structural correlation based outlier rejection (Dolui et al. 2017).

    1. Tissue masks are the probability maps ``>= tissue_threshold`` inside
       the brain mask (the original code's default is 0.95 for native-space
       segmentations; 0.9, ASLPrep's choice, keeps enough voxels at ASL
       resolution). Pairs whose mean GM CBF lies more than ``gm_sd`` robust
       SDs (median absolute deviation / 0.675) from the median are rejected.
    2. With ``R`` the mean of the kept pairs and
       ``V = sum_k (n_k - 1) var(R in tissue k)`` (GM, WM, CSF; sample
       variance; tissues with fewer than 2 voxels left out), the pair most
       correlated with ``R`` over the union of the tissue masks is removed
       while that lowers ``V``; the removal that raises ``V`` is undone.
       Pairs rejected earlier are skipped when the correlations are computed,
       and the search goes on over all later pairs (a widely used port stops
       at the first rejected pair, ``break`` for ``continue``, so pairs after
       it are never considered).
    """
    data = _as_series(cbf_ts)
    shape = data.shape[:3]
    finite = np.isfinite(data).all(-1)
    brain = _as_mask(mask, shape, finite)
    tissues = []
    for name, tpm in (("gm", gm), ("wm", wm), ("csf", csf)):
        p = _as_map(tpm, shape, name, probability=True)
        tissues.append((p >= tissue_threshold) & brain)
    if not tissues[0].any():
        raise ASLInputError(
            f"no brain voxel has a GM probability >= {tissue_threshold}",
            field="gm",
            fix="check the GM map's registration to ASL space or lower tissue_threshold",
        )
    n = data.shape[3]
    gm_cbf = data[tissues[0]].mean(axis=0)
    med = np.median(gm_cbf)
    robust_sd = np.median(np.abs(gm_cbf - med)) / 0.675
    step1 = np.abs(gm_cbf - med) > gm_sd * robust_sd
    union = np.logical_or.reduce(tissues)
    vox = data[union]  # (n_vox, n)
    tissue_in_union = [t[union] for t in tissues]
    sizes = [int(t.sum()) for t in tissue_in_union]

    def pooled(keep):
        r = vox[:, keep].mean(axis=1)
        v = 0.0
        for t, nk in zip(tissue_in_union, sizes, strict=True):
            if nk > 1:
                v += (nk - 1) * r[t].var(ddof=1)
        return r, v

    removed = step1.copy()
    step2 = np.zeros(n, bool)
    r, v = pooled(~removed)
    v_prev = np.inf
    n_iter = 0
    while v < v_prev and (~removed).sum() > 1:
        v_prev, prev = v, removed.copy()
        cc = np.full(n, -np.inf)
        kept_idx = np.flatnonzero(~removed)
        cc[kept_idx] = np.nan_to_num(_corr_rows(r, vox[:, kept_idx]), nan=-np.inf)
        worst = int(np.argmax(cc))
        removed[worst] = True
        step2[worst] = True
        r, v = pooled(~removed)
        n_iter += 1
        if not v < v_prev:
            removed = prev
            step2[worst] = False
    params = {"tissue_threshold": float(tissue_threshold), "gm_sd": float(gm_sd)}
    details = {
        "rejected_gm_threshold": np.flatnonzero(step1).tolist(),
        "rejected_structural_correlation": np.flatnonzero(step2).tolist(),
        "tissue_voxels": dict(zip(("gm", "wm", "csf"), sizes, strict=True)),
        "mean_gm_cbf_per_pair": gm_cbf.round(4).tolist(),
    }
    return _volume_result("score", data, removed, params, details)


# --------------------------------------------------------------------------
# AOC


def aoc(
    cbf_ts,
    mask,
    motion=None,
    *,
    th: float = 0.17,
    n_iter: int = 2,
    th_step: float = 0.01,
    motion_pairs=None,
    rotation_units: str = "rad",
    motion_diff_sd: float = 1.0,
    motion_mean_sd: float = 2.0,
    min_global_cbf: float = 5.0,
    max_global_cbf: float = 120.0,
) -> CleaningResult:
    """AOC, adaptive outlier cleaning (Wang et al. 2013, ASLtbx ``ASLtbx_aoc``).

    Pre-screens, as in the reference implementation:

    * motion (when given): per pair, the mean over the 6 parameters of
      ``|control - label|`` above its mean + ``motion_diff_sd`` SD, or the
      mean of ``|(control + label) / 2|`` above its mean + ``motion_mean_sd``
      SD (rotations converted to degrees first when ``rotation_units`` is
      ``"rad"``, as the reference does with SPM's radians);
    * global CBF (mean over the brain mask) below ``min_global_cbf``, or
      above ``max_global_cbf`` and above the series mean + 1 SD.

    Then ``n_iter`` times: the reference is the mean of the pre-screened pairs
    minus the outliers found so far; every pair whose correlation with it
    (over the brain mask) is below ``th`` is an outlier; stop when none is;
    lower ``th`` by ``th_step``. The outliers are those of the last
    evaluation, so a pair flagged against a contaminated reference can be
    released later (the reference code's intent: "keep the number of outliers
    minimal").
    """
    data = _as_series(cbf_ts)
    n = data.shape[3]
    brain = _as_mask(mask, data.shape[:3], np.isfinite(data).all(-1))
    if rotation_units not in ("rad", "deg"):
        raise ASLInputError(
            f"rotation_units must be 'rad' or 'deg', got {rotation_units!r}",
            field="rotation_units",
            fix="say in which units the rotations of the motion parameters are",
        )
    vox = data[brain]
    prescreen_motion = np.zeros(n, bool)
    if motion is not None:
        diff, avg = pair_motion(motion, n, motion_pairs)
        if rotation_units == "rad":
            diff[:, 3:] = np.degrees(diff[:, 3:])
            avg[:, 3:] = np.degrees(avg[:, 3:])
        rel = diff.mean(axis=1)
        pos = np.abs(avg).mean(axis=1)
        prescreen_motion = (rel > rel.mean() + motion_diff_sd * rel.std(ddof=1)) | (
            pos > pos.mean() + motion_mean_sd * pos.std(ddof=1)
        )
    gs = vox.mean(axis=0)
    prescreen_global = (gs < min_global_cbf) | (
        (gs > max_global_cbf) & (gs > gs.mean() + gs.std(ddof=1))
    )
    base = ~(prescreen_motion | prescreen_global)
    if base.sum() < 1:
        base = np.ones(n, bool)  # nothing left to build a reference from
    flagged = np.zeros(n, bool)
    thr = float(th)
    thresholds = []
    for _ in range(int(n_iter)):
        keep = base & ~flagged
        if not keep.any():
            break
        ref = vox[:, keep].mean(axis=1)
        cc = np.nan_to_num(_corr_rows(ref, vox), nan=-1.0)
        flagged = cc < thr
        thresholds.append(thr)
        if not flagged.any():
            break
        thr -= th_step
    removed = ~base | flagged
    if removed.all():
        removed = ~base
    params = {
        "th": float(th),
        "n_iter": int(n_iter),
        "th_step": float(th_step),
        "rotation_units": rotation_units,
        "motion_diff_sd": float(motion_diff_sd),
        "motion_mean_sd": float(motion_mean_sd),
        "min_global_cbf": float(min_global_cbf),
        "max_global_cbf": float(max_global_cbf),
        "motion_used": motion is not None,
    }
    details = {
        "prescreen_motion": np.flatnonzero(prescreen_motion).tolist(),
        "prescreen_global": np.flatnonzero(prescreen_global).tolist(),
        "correlation_outliers": np.flatnonzero(flagged & base).tolist(),
        "thresholds_used": thresholds,
        "iterations": len(thresholds),
    }
    return _volume_result("aoc", data, removed, params, details)


# --------------------------------------------------------------------------
# PAOCSL


class _SliceGreedy:
    """Greedy removal for one slice: cost J = SD(GM values) + SD(WM values).

    The values are the slab's voxels of the mean CBF map; neighbour slices are
    fixed, the centre slice's mean changes with the set of pairs kept.
    """

    def __init__(self, centre: list[np.ndarray], neighbours: list[np.ndarray]):
        # centre[k]: (n_vox_k, n_pairs) data of tissue k in the centre slice
        # neighbours[k]: (m_k,) neighbour slices' current mean values of tissue k
        self.centre = centre
        self.nb = [(len(v), float(v.sum()), float((v**2).sum())) for v in neighbours]

    def _sd(self, k: int, mean_vals: np.ndarray) -> np.ndarray:
        """SD over centre values (n_vox, c) and the neighbour values, per column."""
        m, s_nb, q_nb = self.nb[k]
        n_tot = mean_vals.shape[0] + m
        if n_tot < 2:
            return np.zeros(mean_vals.shape[1])
        s = mean_vals.sum(axis=0) + s_nb
        q = (mean_vals**2).sum(axis=0) + q_nb
        var = (q - s**2 / n_tot) / (n_tot - 1)
        return np.sqrt(np.clip(var, 0.0, None))

    def cost(self, sums: list[np.ndarray], k_kept: int, minus: np.ndarray | None = None):
        """J for the current set, or for the set minus each pair in ``minus``."""
        total = 0.0
        for k, x in enumerate(self.centre):
            if minus is None:
                vals = (sums[k] / k_kept)[:, None]
            else:
                vals = (sums[k][:, None] - x[:, minus]) / (k_kept - 1)
            total = total + self._sd(k, vals)
        return total

    def run(self, kept, candidates, min_drop_z: float | None) -> np.ndarray:
        kept = kept.copy()
        cand = np.array([c for c in candidates if kept[c]], dtype=int)
        sums = [x[:, kept].sum(axis=1) for x in self.centre]
        n_kept = int(kept.sum())
        removed = []
        while cand.size and n_kept > 2:
            j_now = float(self.cost(sums, n_kept)[0])
            j_new = self.cost(sums, n_kept, cand)
            drop = j_now - j_new
            best = int(np.argmax(drop))
            if not drop[best] > 1e-12 * max(j_now, 1e-300):
                break
            if min_drop_z is not None:
                # Null distribution: the drops of removing each kept pair, most
                # of which are clean; the best drop must stand out of it.
                every = j_now - self.cost(sums, n_kept, np.flatnonzero(kept))
                med, rsd = _median_robust_sd(every)
                if not drop[best] > med + min_drop_z * rsd:
                    break
            v = int(cand[best])
            kept[v] = False
            removed.append(v)
            n_kept -= 1
            for k, x in enumerate(self.centre):
                sums[k] = sums[k] - x[:, v]
            cand = np.delete(cand, best)
        return np.array(removed, dtype=int)


def _consolidate(raw, evaluated, *, all_slices_frac, min_slices, isolated_frac, fraction_of):
    """Apply the consolidation rules of step 5 to the raw slice-wise flags."""
    n_slices, n = raw.shape
    denom = int(evaluated.sum()) if fraction_of == "evaluated" else n_slices
    count = raw.sum(axis=0)
    everywhere = count > all_slices_frac * denom
    release = count < min_slices
    iso_limit = max(min_slices, math.ceil(isolated_frac * denom))
    adjacent = (raw[1:] & raw[:-1]).any(axis=0)
    release |= (count < iso_limit) & ~adjacent
    out = raw.copy()
    out[:, everywhere] = True
    out[:, release] = False
    return out, {
        "everywhere": np.flatnonzero(everywhere & ~release).tolist(),
        "released": np.flatnonzero(release & (count > 0)).tolist(),
        "isolated_limit": iso_limit,
        "denominator": denom,
    }


def paocsl(
    cbf_ts,
    gm,
    wm,
    mask,
    motion=None,
    *,
    th: float = 2.0,
    motion_pairs=None,
    gm_threshold: float = 0.4,
    wm_threshold: float = 0.8,
    gm_wm_ratio: float = 1.8,
    n_edge_slices: int = 2,
    slab_half_width: int = 2,
    global_sd: float | None = 3.0,
    global_statistic: str = "mean",
    motion_sd: float = 3.0,
    min_mask_voxels: int = 10,
    min_slice_cbf: float = 5.0,
    all_slices_frac: float = 0.9,
    min_slices: int = 2,
    isolated_frac: float = 0.2,
    fraction_of: str = "evaluated",
    n_passes: int = 5,
    min_drop_z: float | None = None,
    skip_statistic: str = "median",
    slice_sd: float | None = None,
) -> CleaningResult:
    """PAOCSL, prior-guided slice-wise adaptive outlier cleaning (Li et al. 2018).

    Parameters
    ----------
    cbf_ts
        ``(x, y, z, n_pairs)`` CBF maps, one per pair; slices along axis 2.
    gm, wm
        GM and WM probability maps in the same space, ``(x, y, z)``.
    mask
        Brain mask, ``(x, y, z)``.
    motion
        ``(n_volumes, 6)`` rigid-body parameters of every volume, or ``None``
        to skip the motion pre-rejection. See ``motion_pairs`` and the module
        docstring.
    th
        Candidate threshold: a pair is a candidate in a slice when its
        correlation with the prior over the slab is <= 0 or <= mean +
        ``th`` SD of the positive correlations (spec; the study used 2).
    gm_threshold, wm_threshold, gm_wm_ratio
        GM mask = GM > 0.4, WM mask = WM > 0.8, prior = 1.8 GM + WM.
    n_edge_slices
        Slices left out of the GM/WM masks at each end of the volume.
    slab_half_width
        Neighbour slices on each side in a slab.
    global_sd, motion_sd
        Whole-volume pre-rejection: global CBF more than ``global_sd`` SD
        from the series mean (brain mask without the edge slices), or a
        control-label motion difference above median + ``motion_sd`` SD of
        that parameter. ``global_sd=None``: the threshold a clean series of
        this many pairs crosses with 5 % probability (module docstring).
    global_statistic
        ``"mean"`` (spec): distance from the series mean in SDs. ``"robust"``:
        distance from the median in robust SDs (1.4826 MAD). With the mean
        and SD one large spike inflates the SD and masks a second one, and
        with n pairs no pair can lie more than (n - 1)/sqrt(n) SDs from the
        mean (3.0 SDs are out of reach for n <= 10).
    min_mask_voxels, min_slice_cbf
        Slices with fewer brain voxels, or a lower mean CBF, are skipped.
    all_slices_frac, min_slices, isolated_frac, fraction_of
        Consolidation rules (module docstring).
    n_passes
        Most Jacobi passes over the slices (module docstring); 1 uses the
        pre-rejected means of the neighbours only.
    min_drop_z
        ``None`` (spec): remove while ``J`` drops. A number: the best drop
        must also exceed the median drop over the kept pairs by this many
        robust SDs (module docstring; 4 gave ~0.5 % false slice flags on
        Gaussian noise).
    skip_statistic
        ``"median"`` or ``"mean"``: the pair statistic behind "mean CBF under
        ``min_slice_cbf``" (module docstring).
    slice_sd
        ``None`` (spec): no slice screen. A number: a pair whose mean over a
        slice's brain voxels lies more than this many robust SDs from the
        median over the pairs is an outlier of that slice (module docstring).
    """
    if fraction_of not in ("evaluated", "all"):
        raise ASLInputError(
            f"fraction_of must be 'evaluated' or 'all', got {fraction_of!r}",
            field="fraction_of",
            fix="use 'evaluated' (default) or 'all' (reference behaviour)",
        )
    if skip_statistic not in ("median", "mean"):
        raise ASLInputError(
            f"skip_statistic must be 'median' or 'mean', got {skip_statistic!r}",
            field="skip_statistic",
            fix="use 'median' (default) or 'mean' (reference behaviour)",
        )
    if int(n_passes) < 1:
        raise ASLInputError(
            f"n_passes must be >= 1, got {n_passes}", field="n_passes", fix="use 1 or more"
        )
    data = _as_series(cbf_ts)
    nx, ny, nz, n = data.shape
    shape = (nx, ny, nz)
    finite = np.isfinite(data).all(-1)
    brain = _as_mask(mask, shape, finite)
    gmp = _as_map(gm, shape, "gm", probability=True)
    wmp = _as_map(wm, shape, "wm", probability=True)
    inner = brain.copy()
    e = int(n_edge_slices)
    if e > 0:
        inner[:, :, :e] = False
        inner[:, :, max(nz - e, 0) :] = False
    gm_mask = (gmp > gm_threshold) & inner
    wm_mask = (wmp > wm_threshold) & inner
    if not (gm_mask.any() or wm_mask.any()):
        raise ASLInputError(
            f"no brain voxel outside the {e} edge slices at each end has GM > {gm_threshold} "
            f"or WM > {wm_threshold}",
            field="gm",
            fix="check the tissue maps' registration to ASL space, or lower n_edge_slices "
            "for slabs with few slices",
        )
    prior = gm_wm_ratio * gmp + wmp

    # Step 2: whole-volume pre-rejection.
    glob_vox = inner if inner.any() else brain
    gcbf = data[glob_vox].mean(axis=0)
    if global_statistic == "robust":
        centre, sd = _median_robust_sd(gcbf)
    elif global_statistic == "mean":
        centre, sd = gcbf.mean(), gcbf.std(ddof=1)
    else:
        raise ASLInputError(
            f"global_statistic must be 'mean' or 'robust', got {global_statistic!r}",
            field="global_statistic",
            fix="use 'mean' (spec) or 'robust' (median and MAD)",
        )
    if global_sd is None:
        global_sd = family_threshold(n)
    rej_global = np.abs(gcbf - centre) > global_sd * sd
    rej_motion = np.zeros(n, bool)
    if motion is not None:
        diff, _ = pair_motion(motion, n, motion_pairs)
        limit = np.median(diff, axis=0) + motion_sd * diff.std(axis=0, ddof=1)
        rej_motion = (diff > limit).any(axis=1)
    kept0 = ~(rej_global | rej_motion)
    if not kept0.any():  # cannot happen with SD-based limits; never leave nothing
        kept0[:] = True

    # Step 3: per-slice candidates (they depend on the prior only, not on the pass).
    h = int(slab_half_width)
    slabs = [np.arange(max(0, s - h), min(nz, s + h + 1)) for s in range(nz)]
    start_mean = _masked_mean(data, kept0)
    if skip_statistic == "median":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            level = np.nanmedian(data[..., kept0], axis=-1)
    else:
        level = start_mean
    evaluated = np.zeros(nz, bool)
    candidates: list[np.ndarray] = []
    skip_reason: dict[int, str] = {}
    for s in range(nz):
        sl_mask = brain[:, :, s]
        if sl_mask.sum() < min_mask_voxels:
            skip_reason[s] = "few_voxels"
        elif float(level[:, :, s][sl_mask].mean()) < min_slice_cbf:
            skip_reason[s] = "low_cbf"
        elif not (gm_mask[:, :, s].any() or wm_mask[:, :, s].any()):
            skip_reason[s] = "no_tissue"
        evaluated[s] = s not in skip_reason
        slab = slabs[s]
        smask = brain[:, :, slab]
        idx0 = np.flatnonzero(kept0)
        if smask.sum() <= min_mask_voxels:
            candidates.append(idx0)
            continue
        p = prior[:, :, slab][smask]
        if np.ptp(p) == 0:
            candidates.append(idx0)
            continue
        r = _corr_rows(p, data[:, :, slab, :][smask][:, idx0])
        pos = r[np.isfinite(r) & (r > 0)]
        if pos.size < 2:
            candidates.append(idx0)
            continue
        limit = pos.mean() + th * pos.std(ddof=1)
        cand = ~np.isfinite(r) | (r <= 0) | (r <= limit)
        candidates.append(idx0[cand])

    # Steps 4-5, in Jacobi passes whose slice-wise flags accumulate, after the
    # optional slice screen.
    neighbour_mean = start_mean
    raw = np.zeros((nz, n), bool)
    if slice_sd is not None:
        raw = _slice_screen(data, brain, kept0, float(slice_sd), min_mask_voxels)
    screened = raw.copy()
    everywhere = np.zeros(n, bool)
    final, info = raw.copy(), {}
    passes_run = 0
    for _ in range(int(n_passes)):
        passes_run += 1
        new_raw = raw.copy()
        for s in np.flatnonzero(evaluated):
            slab = slabs[s]
            others = slab[slab != s]
            centre, nbs = [], []
            for tmask in (gm_mask, wm_mask):
                centre.append(data[:, :, s, :][tmask[:, :, s]])
                nbs.append(neighbour_mean[:, :, others][tmask[:, :, others]])
            start = kept0 & ~raw[s] & ~everywhere
            removed = _SliceGreedy(centre, nbs).run(start, candidates[s], min_drop_z)
            new_raw[s, removed] = True
        converged = np.array_equal(new_raw, raw) and passes_run > 1
        raw = new_raw
        final, info = _consolidate(
            raw,
            evaluated,
            all_slices_frac=all_slices_frac,
            min_slices=min_slices,
            isolated_frac=isolated_frac,
            fraction_of=fraction_of,
        )
        final[:, ~kept0] = True
        everywhere = final.all(axis=0)
        neighbour_mean = _slice_means(data, final, kept0)
        if converged:
            break

    params = {
        "th": float(th),
        "gm_threshold": float(gm_threshold),
        "wm_threshold": float(wm_threshold),
        "gm_wm_ratio": float(gm_wm_ratio),
        "n_edge_slices": e,
        "slab_half_width": int(slab_half_width),
        "global_sd": round(float(global_sd), 4),
        "slice_sd": None if slice_sd is None else float(slice_sd),
        "global_statistic": global_statistic,
        "motion_sd": float(motion_sd),
        "min_mask_voxels": int(min_mask_voxels),
        "min_slice_cbf": float(min_slice_cbf),
        "all_slices_frac": float(all_slices_frac),
        "min_slices": int(min_slices),
        "isolated_frac": float(isolated_frac),
        "fraction_of": fraction_of,
        "n_passes": int(n_passes),
        "min_drop_z": None if min_drop_z is None else float(min_drop_z),
        "skip_statistic": skip_statistic,
        "motion_used": motion is not None,
    }
    details = {
        "prerejected_global": np.flatnonzero(rej_global).tolist(),
        "prerejected_motion": np.flatnonzero(rej_motion).tolist(),
        "evaluated_slices": np.flatnonzero(evaluated).tolist(),
        "passes_run": passes_run,
        "skipped_slices": {str(k): v for k, v in skip_reason.items()},
        "raw_slice_flags": [np.flatnonzero(row).tolist() for row in raw],
        "slice_screen_flags": [np.flatnonzero(row).tolist() for row in screened],
        "removed_everywhere_by_consolidation": info["everywhere"],
        "released_by_consolidation": info["released"],
        "consolidation_denominator": info["denominator"],
        "isolated_limit": info["isolated_limit"],
    }
    return CleaningResult("paocsl", neighbour_mean, final, _status(final), params, details)


def family_threshold(n: int, alpha: float = 0.05) -> float:
    """Robust z that any of ``n`` clean Gaussian pairs exceeds (two-sided) with
    probability about ``alpha``: the whole-volume threshold of ``global_sd=None``."""
    from scipy.special import ndtri

    return float(ndtri(1.0 - alpha / (2.0 * max(int(n), 1))))


def _median_robust_sd(values) -> tuple[float, float]:
    """Median and robust SD (1.4826 x the median absolute deviation) of ``values``."""
    centre = np.median(values)
    return centre, 1.4826 * np.median(np.abs(values - centre))


def _slice_screen(data, brain, kept, slice_sd: float, min_voxels: int) -> np.ndarray:
    """Slice x pair flags: a pair's mean over a slice's brain voxels more than
    ``slice_sd`` robust SDs from the median over the ``kept`` pairs."""
    nz, n = data.shape[2], data.shape[3]
    flags = np.zeros((nz, n), bool)
    idx = np.flatnonzero(kept)
    if idx.size < 3:
        return flags
    for s in range(nz):
        inside = brain[:, :, s]
        if inside.sum() < min_voxels:
            continue
        values = data[:, :, s, :][inside][:, idx].mean(axis=0)
        centre, spread = _median_robust_sd(values)
        if spread > 0:
            flags[s, idx[np.abs(values - centre) > slice_sd * spread]] = True
    return flags


def _slice_means(data: np.ndarray, outliers: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    out = np.empty(data.shape[:3])
    for s in range(data.shape[2]):
        keep = ~outliers[s]
        if not keep.any():  # cannot happen with the default rules; be safe
            keep = fallback
        out[:, :, s] = _masked_mean(data[:, :, s, :], keep)
    return out


def apply_outliers(cbf_ts, outliers) -> np.ndarray:
    """Mean of ``cbf_ts`` over the pairs each slice keeps in an outlier matrix.

    ``outliers`` is a :attr:`CleaningResult.outliers` matrix found on another
    series of the same run (e.g. the unregressed, unsmoothed one), so that
    the decisions of the cleaning and the series averaged can differ.
    """
    data = _as_series(cbf_ts)
    outliers = np.asarray(outliers, dtype=bool)
    if outliers.shape != (data.shape[2], data.shape[3]):
        raise ASLInputError(
            f"an outlier matrix of {outliers.shape[0]} slices x {outliers.shape[1]} pairs "
            f"cannot be applied to a series of {data.shape[2]} slices and {data.shape[3]} pairs",
            field="cbf_ts",
            fix="apply the matrix to a CBF series of the same run and grid",
        )
    return _slice_means(data, outliers, np.ones(data.shape[3], dtype=bool))


def read_outlier_matrix(path, shape=None) -> np.ndarray:
    """The slice x pair outlier TSV (header row, ``slice`` column, 1 = removed) that
    the cleaning interfaces write, as booleans (True = removed).

    ``shape``: the ``(slices, pairs)`` of the CBF series it must describe
    (:func:`check_outlier_matrix`); a file that is not such a table raises
    :class:`ASLInputError` naming the file.
    """
    try:
        mat = np.loadtxt(path, delimiter="\t", skiprows=1, ndmin=2)[:, 1:]
    except ValueError as exc:
        raise ASLInputError(
            f"the outlier matrix cannot be read ({exc}).",
            file=path,
            field="outlier_matrix",
            fix="pass the *_desc-paocsl_outliers.tsv (or CleanCBF's outlier_matrix) as written",
        ) from exc
    if shape is not None:
        check_outlier_matrix(mat, shape, file=path)
    return mat > 0


def check_outlier_matrix(matrix, shape, *, file=None) -> None:
    """Raise :class:`ASLInputError` unless ``matrix`` is ``shape``, the ``(slices, pairs)``
    of the CBF series it must describe."""
    if np.shape(matrix) != tuple(shape):
        rows, cols = np.shape(matrix)
        raise ASLInputError(
            f"the outlier matrix is {rows} slices x {cols} pairs; the CBF series is "
            f"{shape[0]} slices x {shape[1]} pairs.",
            file=file,
            field="outlier_matrix",
            fix="pass the outlier matrix that the cleaning wrote for this same series",
        )


def clean(method: str, cbf_ts, *, gm=None, wm=None, csf=None, mask=None, motion=None, **kwargs):
    """Run one of :data:`METHODS` with the inputs it uses (dispatcher for interfaces)."""
    method = str(method).lower()
    if method == "paocsl":
        return paocsl(cbf_ts, gm, wm, mask, motion, **kwargs)
    if method == "score":
        return score(cbf_ts, gm, wm, csf, mask, **kwargs)
    if method == "aoc":
        return aoc(cbf_ts, mask, motion, **kwargs)
    if method == "mean":
        return plain_mean(cbf_ts, mask)
    raise ASLInputError(
        f"unknown outlier-cleaning method {method!r}",
        field="method",
        fix=f"use one of {', '.join(METHODS)}",
    )


@dataclass
class RepeatScreen:
    """Outputs of :func:`screen_repeats`."""

    keep: np.ndarray  #: (n_slices, n) bool: the volume's slice enters its PLD's mean
    #: per screened delay, the robust z above which a slice of a repeat was dropped
    thresholds: tuple

    @property
    def groups(self) -> int:
        """Delays with enough repeats to be screened."""
        return len(self.thresholds)


def screen_repeats(
    deltam,
    plds,
    mask,
    *,
    threshold: float | None = None,
    min_repeats: int = 4,
    min_voxels: int = 20,
) -> RepeatScreen:
    """Slices of multi-PLD repeats that disagree with the other repeats of their delay.

    PAOCSL and its baselines need one CBF map per pair; at several delays the
    repeats of each delay are what can be compared. For every delay with at
    least ``min_repeats`` repeats, each repeat's deviation from the voxel-wise
    median of that delay's repeats is measured slice by slice (RMS over the
    slice's ``mask`` voxels, as a log ratio to the slice's median over the
    repeats, so slices of different noise compare). A slice of a repeat is
    dropped where that ratio exceeds the delay's median by more than
    ``threshold`` robust SDs (default :func:`family_threshold` of the number
    of repeat-slices); never more than half the repeats of a slice. A clean
    series loses a few: 1-3 of 320 repeat-slices on ten Gaussian test series
    (5 delays x 8 repeats x 8 slices), 6 of 800 on a simulated subject.

    ``deltam``: ``(x, y, z, n)``; ``plds``: ``(n,)`` delay of each volume
    (rounded to 1e-9 s to group); ``mask``: brain mask. Non-finite voxels are
    left out of the statistics. Returns the slice x volume ``keep`` matrix
    and the threshold of each screened delay.
    """
    dm = np.asarray(deltam, dtype=float)
    plds = np.asarray(plds, dtype=float)
    if dm.ndim != 4 or plds.shape != (dm.shape[3],):
        raise ValueError(f"deltam {dm.shape} and plds {plds.shape} do not match")
    brain = np.asarray(mask, dtype=bool)
    nz, n = dm.shape[2], dm.shape[3]
    keep = np.ones((nz, n), dtype=bool)
    thresholds = []
    for idx in delay_groups(plds)[1]:
        if idx.size < min_repeats:
            continue
        ratios = {}
        for s in range(nz):
            inside = brain[:, :, s] & np.all(np.isfinite(dm[:, :, s][:, :, idx]), axis=2)
            if inside.sum() < min_voxels:
                continue
            x = dm[:, :, s][inside][:, idx]  # (voxels, repeats)
            rms = np.sqrt(np.mean((x - np.median(x, axis=1, keepdims=True)) ** 2, axis=0))
            if np.all(rms > 0):
                ratios[s] = np.log(rms / np.median(rms))
        if not ratios:
            continue
        values = np.concatenate(list(ratios.values()))
        centre, spread = _median_robust_sd(values)
        used = family_threshold(values.size) if threshold is None else float(threshold)
        thresholds.append(used)
        if spread <= 0:
            continue
        for s, r in ratios.items():
            bad = (r - centre) / spread > used
            if bad.sum() <= idx.size // 2:
                keep[s, idx[bad]] = False
    return RepeatScreen(keep=keep, thresholds=tuple(thresholds))
