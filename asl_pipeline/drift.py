"""Scanner gain drift of the static signal, removed before control - label subtraction.

The two volumes of a pair are read one TR apart, so a gain that drifts by ``d``
per volume leaves ``d x static signal`` in every control - label difference,
with the same sign in every pair: it does not average out. Without background
suppression the static signal is 100-250 times ΔM (GM, WM), so a drift of 1%
over an 80-volume run reads GM about +2% and WM +6..8% (``benchmarks/RESULTS.md``,
"Scanner drift").

:func:`gain_trend` measures the drift where the control - label zig-zag
cancels, on the pair means:

1. each control and label volume's brain-wide gain: the median, over the mask,
   of its ratio to the voxel-wise median of all of them;
2. each pair's gain: the mean of its two volumes' (a pair's ΔM is then a constant
   offset, or one per delay in a multi-PLD run);
3. ``log(pair gain) = level of the pair's delay + Legendre polynomial of the
   pair's time`` (degree :data:`DEGREE`, no constant term), by least squares;
   pairs beyond :data:`REJECT_MADS` scaled MADs of the fit are left out and the
   fit is repeated (a corrupted volume does not tilt the trend).

:func:`remove_gain_drift` divides each control and label volume by the trend at
its own time, scaled to 1 at the reference: the M0's gain where the M0 is read
from volumes of the series (``M0Type`` Included: the trend's mean at those
volumes, taken at the nearest control/label volume when they lie outside the
pairs), so ΔM and M0 then share one gain; otherwise the run's mean gain, which
keeps the run's mean level and an M0 from the control images (a separate M0's
sidecar does not say when it was read against the run). Other volumes (M0,
deltam, cbf) are left as they are.
The trend is linear in each volume and smooth in time, so a static series
without drift is left within its noise: the trend then has no slope beyond
that of its measured noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.polynomial import legendre

from asl_pipeline.rundesc import pair_volumes

#: Degree of the polynomial trend in time (a quadratic follows a drift that
#: slows down or speeds up; a linear one would leave half of such a drift).
DEGREE = 2
#: Pairs whose measured gain is further from the fit than this many scaled
#: MADs (1.4826 x median absolute residual) are left out of the fit.
REJECT_MADS = 4.0
#: Fewer pairs than this: no trend is fitted (the gains are all 1).
MIN_PAIRS = 6
#: What the interfaces do: ``none`` or divide by the polynomial ``trend``.
METHODS = ("none", "trend")
#: The pipeline's choices: the interfaces' and ``auto`` (:func:`resolve`).
CHOICES = ("auto", *METHODS)
#: Where the corrected series keeps its gain: the control and label volumes'
#: mean, or the gain at the M0 volumes of the series.
REFERENCES = ("run mean", "M0 volumes")


@dataclass(frozen=True)
class GainTrend:
    """The fitted drift of one run.

    ``gain``: one factor per volume of the series (1 for the volumes that are
    not control or label); ``volumes``: the control and label volumes;
    ``pair_gain``: the measured gain of each pair; ``fitted``: whether each
    pair was kept in the fit; ``degree``: of the polynomial, 0 where no trend
    was fitted (all gains 1); ``reference``: where the gain is 1
    (:data:`REFERENCES`); ``change``: the trend from the first to the last
    control/label volume, relative.
    """

    gain: np.ndarray
    volumes: np.ndarray
    pair_gain: np.ndarray
    fitted: np.ndarray
    degree: int
    reference: str = REFERENCES[0]

    @property
    def change(self) -> float:
        if self.volumes.size < 2:
            return 0.0
        return float(self.gain[self.volumes[-1]] / self.gain[self.volumes[0]] - 1.0)

    def to_dict(self) -> dict:
        """The sidecar's description of the correction."""
        return {
            "Method": "trend",
            "Applied": self.degree > 0,
            "PolynomialDegree": self.degree,
            "RelativeChange": round(self.change, 6),
            "PairsFitted": int(self.fitted.sum()),
            "PairsLeftOut": int((~self.fitted).sum()),
            "Reference": self.reference,
        }


def _identity(n_volumes: int, n_pairs: int) -> GainTrend:
    none = np.zeros(0, int)
    return GainTrend(np.ones(n_volumes), none, np.ones(n_pairs), np.zeros(n_pairs, bool), 0)


def _volume_gains(series: np.ndarray, volumes: list[int], mask) -> np.ndarray:
    data = series[..., volumes].astype(float)
    ref = np.median(data, axis=3)
    if mask is None:
        mask = ref > 0.2 * np.percentile(ref, 99)
    inside = np.asarray(mask, bool) & (ref > 0)
    if inside.sum() < 10:
        return np.ones(len(volumes))
    return np.median(data[inside] / ref[inside][:, None], axis=0)


def gain_trend(
    series,
    volume_types,
    *,
    mask=None,
    plds=None,
    degree: int = DEGREE,
    m0_volumes=None,
    source=None,
) -> GainTrend:
    """The brain-wide gain drift of the control and label volumes (see the module).

    ``series``: ``(x, y, z, n_volumes)``; ``volume_types``: one ``aslcontext``
    type per volume; ``mask``: brain mask (default: voxels of the median volume
    above a fifth of its 99th percentile); ``plds``: scalar or one per volume
    (multi-PLD runs get one level per delay); ``m0_volumes``: indices of the
    volumes the M0 is read from, whose gain becomes the reference (None or
    empty: the run's mean gain). A series without control/label pairs, or with fewer
    than :data:`MIN_PAIRS`, gets gains of 1.
    """
    series = np.asarray(series)
    n_vol = series.shape[3]
    pairs = [tuple(p) for p in pair_volumes(volume_types, source=source).tolist()]
    if len(pairs) < MIN_PAIRS:
        return _identity(n_vol, len(pairs))
    volumes = sorted({v for p in pairs for v in p})
    gains = dict(zip(volumes, _volume_gains(series, volumes, mask), strict=True))
    if min(gains.values()) <= 0:
        return _identity(n_vol, len(pairs))
    pair_gain = np.array([0.5 * (gains[c] + gains[lab]) for c, lab in pairs])
    pair_time = np.array([0.5 * (c + lab) for c, lab in pairs])
    if plds is None or np.ndim(plds) == 0:
        level = np.zeros(len(pairs), int)
    else:
        per_volume = np.asarray(plds, float)
        _, level = np.unique(np.round(per_volume[[c for c, _ in pairs]], 6), return_inverse=True)
    n_levels = int(level.max()) + 1
    degree = int(min(degree, len(pairs) - n_levels - 2))
    if degree < 1:
        return _identity(n_vol, len(pairs))

    t0, t1 = min(volumes), max(volumes)

    def basis(t):
        x = 2.0 * (np.asarray(t, float) - t0) / max(t1 - t0, 1) - 1.0
        return legendre.legvander(x, degree)[:, 1:]

    design = np.hstack([np.eye(n_levels)[level], basis(pair_time)])
    y = np.log(pair_gain)
    keep = np.ones(len(pairs), bool)
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(design[keep], y[keep], rcond=None)
        resid = y - design @ coef
        scale = 1.4826 * np.median(np.abs(resid[keep]))
        new = np.abs(resid) <= REJECT_MADS * scale if scale > 0 else np.ones(len(pairs), bool)
        if new.sum() < design.shape[1] + 2 or np.array_equal(new, keep):
            break
        keep = new
    else:  # the last selection, fitted
        coef, *_ = np.linalg.lstsq(design[keep], y[keep], rcond=None)
    trend = np.exp(basis(volumes) @ coef[n_levels:])
    if m0_volumes is None or len(m0_volumes) == 0:
        level, reference = trend.mean(), REFERENCES[0]
    else:  # no extrapolation of the polynomial beyond the pairs
        at_m0 = np.clip(np.asarray(m0_volumes, float), t0, t1)
        level, reference = np.exp(basis(at_m0) @ coef[n_levels:]).mean(), REFERENCES[1]
    gain = np.ones(n_vol)
    gain[volumes] = trend / level
    return GainTrend(gain, np.asarray(volumes), pair_gain, keep, degree, reference)


def resolve(choice: str, *, multi_pld: bool, background_suppression: bool) -> str:
    """The method a run gets: ``auto`` is ``trend`` for single-PLD runs without
    background suppression and ``none`` otherwise.

    Without suppression the static signal is 100-250 times ΔM, so the pair
    means measure the gain and a drift biases every pair most; with it both
    shrink, and ΔM's own changes over the run reach the pair means. On the
    validation panel (``benchmarks/RESULTS.md``, "Scanner drift") the trend
    lowered the single-PLD WM error on both generators, was neutral with
    background suppression and raised the WM error of the multi-PLD fits.
    """
    if choice not in CHOICES:
        raise ValueError(f"drift correction must be one of {CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice
    return "none" if multi_pld or background_suppression else "trend"


def remove_gain_drift(series, trend: GainTrend) -> np.ndarray:
    """``series`` (float64) with each volume divided by its gain."""
    return np.asarray(series, float) / trend.gain[None, None, None, :]
