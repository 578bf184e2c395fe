"""The tissue classes' own kinetics, measured on their mean curves.

:func:`asl_pipeline.cbf.fit_multi_pld` takes one tissue T1 for the apparent
T1 after arrival (Buxton et al. 1998), and the CBF it reads depends on it:
GM made with 1.6 s reads 11-17% high with the 3 T default of 1.4 s, and the
literature's GM T1 at 3 T runs from 1.3 to 1.8 s. A voxel's curve cannot tell
its T1 at 5 delays x 8 repeats, but the mean curve of thousands of GM voxels
can: :func:`fit_tissue_curves` fits one CBF, ATT and tissue T1 to the mean
curves of the clearly GM (and clearly WM) voxels, slice by slice with each
slice's delays. The pipeline then fits every voxel with the GM curve's T1
(:func:`gm_curve_t1`), as it did with the fixed one.

Measured on both generators (``benchmarks/RESULTS.md``, "Multi-PLD: the tissue
T1 from the GM mean curve"): the GM curve's T1 lands within 0.11 s of the
truth on 14 subjects (bootstrap SD over repeats 0.09 s). The WM curve's does not (0.6 to
1.23 s on the phantom, whose WM T1 is 0.83 s: at a third of GM's flow, its
late delays are noise and per-pair fluctuations common to all voxels), so WM
keeps the same T1 as GM.

The ATT of a multi-TI PASL voxel is not fitted voxel by voxel by default:
:func:`fit_smoothed_att` takes it from the curves smoothed inside the brain
and each voxel's CBF at it. While the bolus arrives, a PASL difference grows
with ``f (TI - ATT)``, so at WM's SNR a late ATT and a large CBF explain the
noise as well as the truth does; the voxel-wise fit then read WM CBF 64-123%
high with r 0.15-0.40 on both generators, the smoothed ATT -20..+7% with r
0.56-0.81 (``benchmarks/RESULTS.md``, "Multi-TI PASL: the ATT from smoothed
curves"). On pCASL it loses on the phantom's WM (-17..-36%, its WM T1 error
no longer offset by noise); measured again on three pCASL protocols, its map
correlates better with the truth on every subject and the voxel-wise fit reads
WM 11-64% high where the longest delay is short, so pCASL takes it too
(``benchmarks/RESULTS.md``, "Multi-PLD pCASL: the ATT from smoothed curves on
three protocols").

The GM curve's T1 is only as good as its data: on a phantom with a Siemens
protocol's delays (0.25-1.5 s, GM arriving at 0.8 s) one noise draw read
2.03 s where the truth is 1.33 s. :func:`gm_curve_t1` therefore measures its
T1's standard error by a jackknife over the repeats and keeps the fixed T1
where it exceeds :data:`T1_MAX_SE` (``benchmarks/RESULTS.md``, "Multi-PLD:
the GM curve's T1 kept only where its jackknife error is small").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import least_squares

from asl_pipeline.cbf import (
    QuantParams,
    _model,
    average_repeats,
    delay_groups,
    effective_delays,
    fit_multi_pld,
    low_m0_mask,
)
from asl_pipeline.smoothing import fwhm_to_sigma, smooth_in_mask

#: Voxels of a tissue's mean curve: probability above these, and M0 above this
#: fraction of the brain mean (edge voxels with partial M0 out).
CLASS_THRESHOLDS = {"gm": 0.8, "wm": 0.9}
CLASS_M0_FRACTION = 0.5

#: Fewest voxels for a tissue's mean curve, and per slice within it.
CLASS_MIN_VOXELS = 50
_SLICE_MIN_VOXELS = 5

#: Where a multi-PLD fit's tissue T1 comes from: the GM mean curve
#: (:func:`gm_curve_t1`) or the fixed value by field strength.
T1_TISSUE_SOURCES = ("gm-curve", "fixed")

#: Range (s) of a fitted tissue T1; a fit at either end is not trusted.
T1_BOUNDS = (0.4, 3.0)

#: Largest jackknife standard error (s) of the GM curve's T1 that
#: :func:`gm_curve_t1` keeps; above it the fixed T1 is used. The literature's
#: GM T1 at 3 T spans 1.3-1.8 s, so the fixed value is off by about 0.2 s at
#: worst: a measurement less certain than that is no better than it. In the
#: fit alone no subject of either generator crossed it on three protocols
#: (largest 0.17 s); a run's outliers or noise draw did (0.31-0.56 s). The
#: jackknife does not see bias: on short delays a curve's T1 can be 0.3 s off
#: with an error of 0.05 s (README, Known limitations).
T1_MAX_SE = 0.2

#: Fewest repeats per delay for the jackknife; with fewer the GM curve's T1
#: is used without it.
T1_JACKKNIFE_MIN_REPEATS = 3

#: How a multi-PLD run's ATT is estimated (``--multipld-att``): ``"voxel"``,
#: every voxel's own fit (:func:`asl_pipeline.cbf.fit_multi_pld`);
#: ``"smoothed"``, from the curves smoothed inside the brain
#: (:func:`fit_smoothed_att`); ``"auto"``, the default, smoothed for every
#: labeling (:func:`att_estimate_for`; pCASL and CASL took the voxel-wise fit
#: until 2026-12-07).
ATT_ESTIMATES = ("auto", "voxel", "smoothed")

#: FWHM (voxels) of the in-brain smoothing of :func:`fit_smoothed_att`.
SMOOTHED_ATT_FWHM = 2.0


@dataclass(frozen=True)
class TissueKinetics:
    """What each tissue's mean curve gave (``"gm"``, ``"wm"``).

    ``cbf`` (mL/100 g/min), ``att`` and ``t1_tissue`` (s) are None where the
    curve could not give them; ``t1_fitted`` says whether ``t1_tissue`` was
    fitted (False: the fixed ``params.t1_tissue``); ``voxels`` counts the
    curve's voxels; ``t1_se`` holds the jackknife standard error (s) of a
    fitted T1 where :func:`gm_curve_t1` measured it.
    """

    cbf: dict
    att: dict
    t1_tissue: dict
    t1_fitted: dict
    voxels: dict
    t1_se: dict = field(default_factory=dict)

    def t1_trusted(self, tissue: str) -> bool:
        """Whether ``tissue``'s fitted T1 is used: fitted, and its standard
        error (where measured) at most :data:`T1_MAX_SE`."""
        se = self.t1_se.get(tissue)
        return bool(self.t1_fitted[tissue]) and (se is None or se <= T1_MAX_SE)

    def to_dict(self) -> dict:
        """Per tissue (``"GM"``, ``"WM"``), the values for a JSON sidecar."""
        out = {}
        for t in ("gm", "wm"):
            out[t.upper()] = {
                "CBF": _round(self.cbf[t], 2),
                "ArterialTransitTime": _round(self.att[t], 3),
                "T1Tissue": _round(self.t1_tissue[t], 3),
                "T1TissueFitted": bool(self.t1_fitted[t]),
                "T1TissueStandardError": _round(self.t1_se.get(t), 3),
                "Voxels": int(self.voxels[t]),
            }
        return out


def _round(value, digits):
    return None if value is None else round(float(value), digits)


def _class_curves(mean_dm, delays, m0, region):
    """Per slice with enough voxels: the region's mean ΔM/M0, delays and count."""
    rows = [z for z in range(mean_dm.shape[2]) if region[..., z].sum() >= _SLICE_MIN_VOXELS]
    curves = np.array(
        [(mean_dm[..., z, :][region[..., z]] / m0[..., z][region[..., z]][:, None]).mean(0)
         for z in rows]
    )  # fmt: skip
    counts = np.array([region[..., z].sum() for z in rows], dtype=float)
    return curves, delays[rows], counts


def _curve_fit(curves, delays, counts, params, t1_after_arrival, att_bounds, cbf_bounds, t1):
    """Least squares of one model on every slice's curve (weighted by its voxels).

    ``t1=None`` fits the tissue T1 too. Returns ``(cbf, att, t1)``; an entry at
    its bound (or a failed fit) is None.
    """
    weight = np.sqrt(counts)[:, None] / max(float(np.abs(curves).max()), 1e-12)
    free_t1 = t1 is None

    def residual(p):
        model_params = replace(params, t1_tissue=p[2] if free_t1 else t1)
        model = _model(model_params, p[0], p[1], delays, t1_after_arrival)
        return (weight * (model - curves)).ravel()

    lo = [cbf_bounds[0], att_bounds[0]] + ([T1_BOUNDS[0]] if free_t1 else [])
    hi = [cbf_bounds[1], att_bounds[1]] + ([T1_BOUNDS[1]] if free_t1 else [])
    start = [float(np.clip(v, a, b)) for v, a, b in zip((50.0, 1.0), lo, hi, strict=False)]
    start += [float(np.clip(params.t1_tissue, *T1_BOUNDS))] if free_t1 else []
    try:
        fit = least_squares(residual, start, bounds=(lo, hi))
    except (ValueError, np.linalg.LinAlgError):
        return None, None, None
    values = []
    for value, low, high in zip(fit.x, lo, hi, strict=True):
        margin = 1e-3 * (high - low)
        ok = fit.success and np.isfinite(value) and low + margin < value < high - margin
        values.append(float(value) if ok else None)
    return values[0], values[1], (values[2] if free_t1 else t1)


def fit_tissue_curves(
    mean_dm,
    delays,
    m0,
    gm,
    wm,
    mask,
    params: QuantParams,
    *,
    t1_after_arrival: str = "tissue",
    att_bounds: tuple[float, float] = (0.1, 3.0),
    cbf_bounds: tuple[float, float] = (0.0, 500.0),
    fit_t1: tuple[str, ...] = ("gm", "wm"),
) -> TissueKinetics:
    """CBF, ATT and tissue T1 of the clearly GM and clearly WM voxels' mean curves.

    ``mean_dm`` ``(x, y, z, k)``: mean ΔM at each distinct delay
    (:func:`asl_pipeline.cbf.average_repeats`); ``delays`` ``(z, k)``: each
    slice's delays (:func:`asl_pipeline.cbf.effective_delays`). A tissue's
    voxels: probability above :data:`CLASS_THRESHOLDS`, in the mask, M0 above
    :data:`CLASS_M0_FRACTION` of the brain mean; each slice with at least 5 of
    them contributes its mean ΔM/M0 curve, and one model (the kinetic model
    with ``t1_after_arrival``) is fitted to all of them. The tissue T1 is
    fitted with ``t1_after_arrival="tissue"`` and 3 delays or more; where
    that fit fails or ends at a bound of :data:`T1_BOUNDS`, CBF and ATT are
    fitted with ``params.t1_tissue``. ``wm=None`` leaves WM out.
    """
    mask = np.asarray(mask, dtype=bool)
    usable = mask & ~low_m0_mask(m0, mask, fraction=CLASS_M0_FRACTION)
    can_fit_t1 = t1_after_arrival == "tissue" and mean_dm.shape[3] >= 3
    out = {"cbf": {}, "att": {}, "t1_tissue": {}, "t1_fitted": {}, "voxels": {}}
    for tissue, prob in (("gm", gm), ("wm", wm)):
        if prob is None:
            prob = np.zeros(mask.shape)
        region = usable & (np.asarray(prob) > CLASS_THRESHOLDS[tissue])
        out["voxels"][tissue] = int(region.sum())
        cbf = att = t1 = None
        fitted = False
        if region.sum() >= CLASS_MIN_VOXELS:
            curves, d, counts = _class_curves(mean_dm, delays, m0, region)
            bounds = (params, t1_after_arrival, att_bounds, cbf_bounds)
            if can_fit_t1 and tissue in fit_t1:
                cbf, att, t1 = _curve_fit(curves, d, counts, *bounds, None)
                fitted = None not in (cbf, att, t1)
            if not fitted:
                cbf, att, t1 = _curve_fit(curves, d, counts, *bounds, params.t1_tissue)
        out["cbf"][tissue] = cbf
        out["att"][tissue] = att
        out["t1_tissue"][tissue] = t1 if fitted else params.t1_tissue
        out["t1_fitted"][tissue] = fitted
    return TissueKinetics(**out)


def gm_curve_t1(
    deltam, plds, m0, params: QuantParams, gm, mask, *, keep=None,
    t1_after_arrival: str = "tissue",
) -> tuple[float, TissueKinetics]:  # fmt: skip
    """The tissue T1 (s) of the GM mean curve, ``params.t1_tissue`` where it
    fails or is uncertain.

    ``deltam`` ``(x, y, z, n)`` with one PLD per difference, ``keep`` the
    repeat screen's matrix (:func:`asl_pipeline.cbf.average_repeats`), ``gm``
    the GM probability map on the same grid.

    With :data:`T1_JACKKNIFE_MIN_REPEATS` repeats per delay or more, the T1's
    standard error is the delete-one-repeat jackknife's: the curve is fitted
    again without the ``j``-th repeat of every delay, for each ``j``. A T1
    whose error exceeds :data:`T1_MAX_SE` gives way to ``params.t1_tissue``.
    Returns the T1 and what the GM curve gave (:class:`TissueKinetics`,
    without WM; its ``t1_se`` holds the error).
    """
    kin = _gm_curve(deltam, plds, m0, params, gm, mask, keep, t1_after_arrival)
    if kin.t1_fitted["gm"]:
        se = _jackknife_t1_se(deltam, plds, m0, params, gm, mask, keep, t1_after_arrival)
        kin = replace(kin, t1_se={"gm": se} if se is not None else {})
    return (kin.t1_tissue["gm"] if kin.t1_trusted("gm") else params.t1_tissue), kin


def _gm_curve(deltam, plds, m0, params, gm, mask, keep, t1_after_arrival) -> TissueKinetics:
    mean_dm, uniq, _ = average_repeats(deltam, plds, keep)
    delays = effective_delays(params, uniq, np.shape(deltam)[2])
    return fit_tissue_curves(
        mean_dm, delays, m0, gm, None, mask, params, t1_after_arrival=t1_after_arrival,
        fit_t1=("gm",),
    )  # fmt: skip


def _jackknife_t1_se(deltam, plds, m0, params, gm, mask, keep, t1_after_arrival):
    """The delete-one-repeat jackknife standard error (s) of the GM curve's T1;
    None with too few repeats. A refit whose T1 fails counts as the upper
    bound of :data:`T1_BOUNDS`, so failures read as uncertainty."""
    groups = delay_groups(plds)[1]
    n = min(g.size for g in groups)
    if n < T1_JACKKNIFE_MIN_REPEATS:
        return None
    base = np.ones(np.shape(deltam)[2:], bool) if keep is None else np.asarray(keep, bool)
    values = []
    for j in range(n):
        dropped = base.copy()
        for g in groups:
            dropped[:, g[j]] = False
        kin = _gm_curve(deltam, plds, m0, params, gm, mask, dropped, t1_after_arrival)
        t1 = kin.t1_tissue["gm"] if kin.t1_fitted["gm"] else None
        values.append(t1 if t1 is not None else max(T1_BOUNDS))
    values = np.asarray(values)
    return float(np.sqrt((n - 1) / n * ((values - values.mean()) ** 2).sum()))


def att_estimate_for(choice: str) -> str:
    """The ATT estimate ``"voxel"`` or ``"smoothed"`` that ``choice`` (one of
    :data:`ATT_ESTIMATES`) gives a run.

    ``"auto"`` is ``"smoothed"`` for PASL, pCASL and CASL alike: on three
    pCASL protocols and both generators its CBF map correlates better with
    the truth on every subject, and the voxel-wise fit reads WM CBF 11-64%
    high where the longest delay is short (``benchmarks/RESULTS.md``, "Multi-PLD
    pCASL: the ATT from smoothed curves on three protocols").
    """
    if choice not in ATT_ESTIMATES:
        raise ValueError(f"ATT estimate must be one of {', '.join(ATT_ESTIMATES)}, got {choice!r}")
    return "smoothed" if choice == "auto" else choice


def cbf_at_att(
    y, w, att, params: QuantParams, delays, *, t1_after_arrival: str = "tissue",
    cbf_bounds: tuple[float, float] = (0.0, 500.0), n_iter: int = 3,
) -> np.ndarray:  # fmt: skip
    """Each voxel's least-squares CBF (mL/100 g/min) at a given ATT.

    ``y`` ``(n, k)``: mean ΔM/M0 at the ``k`` ``delays`` (one slice's), ``w``
    ``(k,)`` their numbers of repeats (the weights), ``att`` ``(n,)`` in s.
    With the apparent tissue T1, which depends on the flow, the model's shape
    is taken again at each estimate (``n_iter`` times, from 50 mL/100 g/min);
    with blood T1 the first estimate is exact. Clipped to ``cbf_bounds``.
    """
    y = np.asarray(y, dtype=float)
    att = np.asarray(att, dtype=float)
    w = np.asarray(w, dtype=float)
    f = np.full(att.size, 50.0)
    for _ in range(n_iter if t1_after_arrival == "tissue" else 1):
        unit = np.maximum(f, 1e-3)
        g = _model(params, unit[:, None], att[:, None], delays[None, :], t1_after_arrival)
        g = g / unit[:, None]
        f = (w * g * y).sum(axis=1) / np.maximum((w * g * g).sum(axis=1), 1e-300)
        f = np.clip(f, *cbf_bounds)
    return f


def fit_smoothed_att(
    deltam, plds, m0, params: QuantParams, *, mask=None, keep=None,
    fwhm_voxels: float = SMOOTHED_ATT_FWHM, t1_after_arrival: str = "tissue",
    cbf_bounds: tuple[float, float] = (0.0, 500.0), **fit_kwargs,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """CBF and ATT with the ATT taken from the curves smoothed inside the brain.

    1. The mean ΔM at each delay (:func:`asl_pipeline.cbf.average_repeats`,
       ``keep`` the repeat screen's matrix) is smoothed inside ``mask``
       (Gaussian of ``fwhm_voxels`` voxels, normalised by the smoothed mask,
       so the brain's edge keeps its level).
    2. :func:`asl_pipeline.cbf.fit_multi_pld` fits CBF and ATT to the
       smoothed curves (same weights as the repeats'); its ATT is kept.
    3. Each voxel's CBF is the least-squares CBF of its own unsmoothed curve
       at that ATT (:func:`cbf_at_att`).

    Returns ``(cbf, att, failed)`` as :func:`~asl_pipeline.cbf.fit_multi_pld`
    does; ``failed`` marks the voxels whose smoothed fit failed (their CBF is
    still the one at the ATT found) or whose CBF ends at a bound.
    ``fit_kwargs`` go to ``fit_multi_pld`` (``att_bounds``, ``m0_fraction``).
    """
    dm = np.asarray(deltam, dtype=float)
    plds = np.atleast_1d(np.asarray(plds, dtype=float))
    shape = dm.shape[:3]
    mask = np.ones(shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    mean_dm, uniq, counts = average_repeats(dm, plds, keep)
    finite = np.all(np.isfinite(mean_dm), axis=3)
    sigma = fwhm_to_sigma(fwhm_voxels)
    smooth = np.stack(
        [smooth_in_mask(np.nan_to_num(mean_dm[..., k]), mask & finite, sigma)
         for k in range(uniq.size)], axis=3,
    )  # fmt: skip
    smooth[~finite] = np.nan  # a voxel without data stays unfitted
    _, att, failed = fit_multi_pld(
        np.repeat(smooth, counts, axis=3), np.repeat(uniq, counts), m0, params, mask=mask,
        t1_after_arrival=t1_after_arrival, cbf_bounds=cbf_bounds, **fit_kwargs,
    )  # fmt: skip
    cbf = cbf_map_at_att(
        mean_dm, uniq, counts, m0, att, params,
        t1_after_arrival=t1_after_arrival, cbf_bounds=cbf_bounds,
    )  # fmt: skip
    failed |= (att > 0) & ((cbf <= cbf_bounds[0]) | (cbf >= cbf_bounds[1]))
    return cbf, att, failed


def cbf_map_at_att(
    mean_dm, delays, counts, m0, att, params: QuantParams, *,
    t1_after_arrival: str = "tissue", cbf_bounds: tuple[float, float] = (0.0, 500.0),
) -> np.ndarray:  # fmt: skip
    """Each voxel's least-squares CBF (mL/100 g/min) of its own curve at an ATT map.

    ``mean_dm`` ``(x, y, z, k)``: the mean ΔM at each of the ``k`` distinct
    ``delays`` with ``counts`` repeats (:func:`asl_pipeline.cbf.average_repeats`);
    each slice takes its own effective delays. ``att`` in s; voxels whose ATT
    is not positive (not fitted) read 0. The CBF is :func:`cbf_at_att`'s.
    """
    shape = att.shape
    cbf = np.zeros(shape)
    fitted = att > 0
    m0 = np.broadcast_to(np.asarray(m0, dtype=float), shape)
    slice_delays = effective_delays(params, delays, shape[2])
    for z in np.unique(np.nonzero(fitted)[2]):
        sel = fitted[..., z]
        y = mean_dm[..., z, :][sel] / m0[..., z][sel][:, None]
        cbf[..., z][sel] = cbf_at_att(
            y, counts, att[..., z][sel], params, slice_delays[z],
            t1_after_arrival=t1_after_arrival, cbf_bounds=cbf_bounds,
        )  # fmt: skip
    return cbf
