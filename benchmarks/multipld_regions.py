"""Multi-PLD: what the voxel-wise kinetic fit gives a region, on both generators (issue 12).

Simulates multi-PLD subjects (5 delays x 8 repeats) with the MNI simulator
(2D and 3D, background suppressed, no motion, no outliers: the fit alone)
and the phantom generator (its own anatomy and per-tissue T1), runs the core
path ``deltam_series`` -> ``fit_multi_pld`` on the true M0, and prints per
subject and tissue (truth GM > 0.7, WM > 0.9):

- the share of failed fits (``fit_multi_pld``'s mask) and of ATTs at the
  lower bound;
- the error of the regional ATT (s) as the mean over every voxel (what the
  QC table reports), the median, and the mean over converged voxels only;
- the error of the region's ATT and CBF from one fit to the region's mean
  curve, slice by slice (a region-level estimate the map does not give);
- the CBF error (%) of the voxel-wise map's mean.

With ``--tissue-prior`` it prints instead, per subject, the errors of the
map from five fits, all after the pipeline's repeat screen, with the true
GM/WM fractions as tissue maps (:mod:`asl_pipeline.multipld`):

- ``fixed T1``: ``fit_multi_pld`` with the one tissue T1 of 1.4 s;
- ``GM-curve T1``: the same with the T1 of the GM mean curve
  (``multipld.gm_curve_t1``, the pipeline's default since 2026-12-06);
- ``prior, T1 GM+WM``, ``prior, T1 GM``, ``prior, fixed T1``: each voxel
  with its tissue mix's T1 (fitted on both tissues' curves, on GM's only,
  or none) and a Gaussian ATT prior (SD 0.3 s) around its tissue mix's
  curve ATT, a MAP grid fit weighted by each voxel's noise variance from its
  repeats (:func:`tissue_prior_fit`, not in the pipeline).

``--sim-t1 T1`` makes the simulator's tissue T1 (1.4 s by default) another.

With ``--prior MEAN SD`` (s) it prints instead the map's ATT and CBF errors
of a voxel-wise fit with a Gaussian prior on the ATT, as BASIL's default
(1.3 s for pCASL, SD 1.0 s for multi-PLD): a grid search over ATT of the
weighted residual over each voxel's noise variance (from its repeats) plus
the prior's penalty, the CBF in closed form at each ATT.

With ``--smoothed-att`` it prints instead, per subject, the errors of the
map from a two-stage fit next to the voxel-wise one, each with one tissue
T1 (the GM curve's) and with the WM T1 from the literature's 3 T ratio to
it (:data:`WM_GM_T1_RATIO`, each voxel the mix of its GM and WM shares):
the ATT fitted to the mean ΔM smoothed inside the brain (Gaussian, sigma
0.85 voxel: FWHM 2 voxels) and the CBF by least squares at that ATT on the
unsmoothed data (:func:`smoothed_att_fit`; not in the pipeline).

With ``--weighted-delay`` it prints instead, per subject, the errors of the
map from the weighted-delay estimate (Dai et al. 2012, MRM 68:1014): each
voxel's signal-weighted mean delay, mapped to an ATT through the kinetic
model's own weighted delay, then the CBF at that ATT by least squares
(``WD, least squares``) or from the sum of the differences over the model's
sum (``WD, sum``) (:func:`weighted_delay_fit`; not in the pipeline), next
to the voxel-wise fit, all with the GM curve's T1. On the phantom it adds
the rows of three fits with the phantom's own tissue T1 (GM 1.33 s, WM
0.83 s, each voxel the mix of its shares): what the map could read if a
run measured WM's T1.

With ``--t1-error`` it prints instead, per subject, the GM curve's T1
(``multipld.gm_curve_t1``) against the truth, its jackknife standard error
over the repeats and whether the pipeline keeps it (at most
``multipld.T1_MAX_SE``), and the errors of the default fit
(``multipld.fit_smoothed_att``) with the curve's T1 and with the fixed one
(1.4 s at 3 T).

With ``--att-estimates PCASL|PASL`` it prints instead, per subject, the
errors of the pipeline's two ATT estimates (``--multipld-att voxel`` and
``smoothed``: :func:`asl_pipeline.cbf.fit_multi_pld` and
:func:`asl_pipeline.multipld.fit_smoothed_att`), with the GM curve's T1, on
multi-PLD pCASL or multi-TI PASL subjects (TIs :data:`TIS`, or ``--tis``;
PLDs :data:`PLDS`, or ``--plds``, and ``--labeling-duration``).

Usage::

    python benchmarks/multipld_regions.py [--seeds-2d 112 301 302] [--seeds-3d 111 303] \
        [--seeds-phantom 207 401] [--prior 1.3 1.0 | --tissue-prior [--sim-t1 1.6] \
        | --smoothed-att | --weighted-delay | --att-estimates PCASL|PASL | --t1-error] \
        [--tis 0.9 ... | --plds 0.25 ... --labeling-duration 1.4]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
from scipy import ndimage

from asl_pipeline import cbf as quant
from asl_pipeline import multipld, outliers
from asl_pipeline.simulate.phantom import simulate_phantom
from asl_pipeline.simulate.series import simulate_subject

PLDS = [0.5, 1.0, 1.5, 2.0, 2.5]

#: The simulator's tissue T1 (s) unless ``--sim-t1`` sets it.
SIM_T1 = 1.4

#: WM / GM tissue T1 at 3 T, 832 / 1331 ms (Lu et al. 2005, JMRI 22:13).
WM_GM_T1_RATIO = 0.832 / 1.331


#: Inversion times (s) of the multi-TI PASL subjects (``--att-estimates PASL``,
#: ``--tis`` replaces them; QUIPSS II bolus 0.7 s on the simulator, 0.8 s on
#: the phantom).
TIS = [0.9, 1.4, 1.9, 2.4, 2.9]


#: pCASL labeling duration (s) of the subjects, ``None`` for each generator's
#: own (1.8 s on both; ``--labeling-duration`` sets it).
LABELING_DURATION: list[float | None] = [None]


def subject(kind: str, seed: int, sim_t1: float | None = None, labeling: str = "PCASL"):
    delays = TIS if labeling == "PASL" else PLDS
    tau = LABELING_DURATION[0] if labeling == "PCASL" else None
    if kind == "phantom":
        extra = {} if tau is None else {"tau": tau}
        return simulate_phantom(
            seed, plds=delays, pld_repeats=8, labeling=labeling, t1w=False, **extra
        )
    extra = {} if tau is None else {"labeling_duration": tau}
    return simulate_subject(
        seed, plds=delays, pld_repeats=8, readout=kind, background_suppression=True,
        motion=False, outliers=False, t1w=False, t1_tissue=sim_t1, labeling=labeling, **extra,
    )  # fmt: skip


def region_fit(deltam, plds, m0, params, region):
    """CBF and ATT fitted to the region's mean ΔM/M0 curve of each slice
    (slices keep their own delays), averaged with the slices' voxel counts."""
    nz = deltam.shape[2]
    curves = np.zeros((1, 1, nz, deltam.shape[3]))
    fit = np.zeros((1, 1, nz), dtype=bool)
    counts = np.zeros(nz)
    for z in range(nz):
        sel = region[..., z]
        if sel.sum() >= 5:
            curves[0, 0, z] = (deltam[..., z, :][sel] / m0[..., z][sel][:, None]).mean(axis=0)
            fit[0, 0, z] = True
            counts[z] = sel.sum()
    cbf, att, _ = quant.fit_multi_pld(
        curves, plds, np.ones((1, 1, nz)), params, mask=fit, m0_fraction=0.0
    )
    return float(cbf[0, 0] @ counts / counts.sum()), float(att[0, 0] @ counts / counts.sum())


def prior_fit(deltam, plds, m0, params, mask, mean, sd, step=0.01, bounds=(0.1, 3.0)):
    """Voxel-wise MAP fit with a Gaussian ATT prior (grid over ATT, CBF in closed form)."""
    mean_dm, delays_uniq, counts = quant.average_repeats(deltam, plds, None)
    w = counts.astype(float)
    scale = np.where(m0 > 0, m0, np.inf)
    # each voxel's variance of one difference (over M0^2), pooled over the delays
    ss, dof = np.zeros(deltam.shape[:3]), 0
    for delay in delays_uniq:
        x = deltam[..., np.isclose(plds, delay)]
        ss += ((x - x.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
        dof += x.shape[-1] - 1
    var = ss / dof / scale**2
    delays = quant.effective_delays(params, delays_uniq, deltam.shape[2])
    grid = np.arange(bounds[0], bounds[1] + step / 2, step)
    cbf, att = np.zeros(deltam.shape[:3]), np.zeros(deltam.shape[:3])
    fit = mask & (m0 > 0) & (var > 0)
    for z in range(deltam.shape[2]):
        sel = fit[..., z]
        if not sel.any():
            continue
        y = mean_dm[..., z, :][sel] / m0[..., z][sel][:, None]
        per_unit = quant._GRID_CBF
        shape = quant._model(
            params, np.full((grid.size, 1), per_unit), grid[:, None], delays[z][None, :],
            "tissue",
        ) / per_unit  # fmt: skip
        num, den = (y * w) @ shape.T, (shape**2) @ w
        f = np.clip(num / den, 0.0, 500.0)
        rss = (w * y**2).sum(axis=1)[:, None] - 2 * f * num + f**2 * den
        cost = rss / var[..., z][sel][:, None] + ((grid - mean) / sd) ** 2
        best = np.argmin(cost, axis=1)
        rows = np.arange(y.shape[0])
        cbf[..., z][sel], att[..., z][sel] = f[rows, best], grid[best]
    return cbf, att


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds-2d", type=int, nargs="*", default=[112, 301, 302])
    ap.add_argument("--seeds-3d", type=int, nargs="*", default=[111, 303])
    ap.add_argument("--seeds-phantom", type=int, nargs="*", default=[207, 401])
    ap.add_argument("--prior", type=float, nargs=2, metavar=("MEAN", "SD"))
    ap.add_argument("--sim-t1", type=float, help="the simulator's tissue T1 (s)")
    ap.add_argument("--tissue-prior", action="store_true", help="the two fits of the map")
    ap.add_argument("--smoothed-att", action="store_true", help="the two-stage fits")
    ap.add_argument("--weighted-delay", action="store_true", help="the weighted-delay fits")
    ap.add_argument(
        "--att-estimates", choices=("PCASL", "PASL"),
        help="the pipeline's two ATT estimates on multi-PLD pCASL or multi-TI PASL subjects",
    )  # fmt: skip
    ap.add_argument(
        "--t1-error", action="store_true",
        help="the GM curve's T1, its jackknife error, and the fit with it and with the fixed T1",
    )  # fmt: skip
    ap.add_argument("--tis", type=float, nargs="+", help="the PASL subjects' TIs (s)")
    ap.add_argument("--plds", type=float, nargs="+", help="the pCASL subjects' PLDs (s)")
    ap.add_argument(
        "--labeling-duration", type=float, help="the pCASL subjects' labeling duration (s)"
    )
    args = ap.parse_args(argv)
    if args.tis:
        TIS[:] = args.tis
    if args.plds:
        PLDS[:] = args.plds
    LABELING_DURATION[0] = args.labeling_duration
    runs = [("2D", s) for s in args.seeds_2d] + [("3D", s) for s in args.seeds_3d]
    runs += [("phantom", s) for s in args.seeds_phantom]
    if args.prior:
        return _with_prior(runs, *args.prior)
    if args.tissue_prior:
        return _tissue_fits(runs, args.sim_t1)
    if args.smoothed_att:
        return _smoothed_fits(runs)
    if args.weighted_delay:
        return _weighted_delay_fits(runs)
    if args.att_estimates:
        return _att_estimates(runs, args.att_estimates)
    if args.t1_error:
        return _t1_errors(runs, args.sim_t1)
    print(
        "| generator | seed | tissue | failed % | at lower bound % | ATT err: mean | median "
        "| converged mean | region fit | CBF err %: map mean | region fit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, seed in runs:
        s, params, dm = _prepare(kind, seed)
        cbf, att, failed = quant.fit_multi_pld(
            dm.deltam, dm.plds, s.m0_true, params, mask=s.brain_mask
        )
        for tissue, region in (("GM", s.gm > 0.7), ("WM", s.wm > 0.9)):
            a, t, f = att[region], s.att[region], failed[region]
            true_cbf = s.cbf[region].mean()
            roi_cbf, roi_att = region_fit(dm.deltam, dm.plds, s.m0_true, params, region)
            lower = 100 * np.mean(a < 0.1 + 1e-6)
            print(
                f"| {kind} | {seed} | {tissue} | {100 * f.mean():.0f} | {lower:.0f} "
                f"| {a.mean() - t.mean():+.2f} | {np.median(a) - np.median(t):+.2f} "
                f"| {a[~f].mean() - t[~f].mean():+.2f} | {roi_att - t.mean():+.2f} "
                f"| {100 * (cbf[region].mean() / true_cbf - 1):+.1f} "
                f"| {100 * (roi_cbf / true_cbf - 1):+.1f} |",
                flush=True,
            )
    return 0


def _prepare(kind: str, seed: int, sim_t1: float | None = None, labeling: str = "PCASL"):
    s = subject(kind, seed, sim_t1, labeling)
    params = quant.quant_params_from_metadata(s.metadata, m0_metadata=s.m0_metadata)
    return s, params, quant.deltam_series(s.asl.astype(float), s.aslcontext, plds=params.pld)


def gm_share(gm, wm) -> np.ndarray:
    """Each voxel's GM share ``gm / (gm + wm)`` (0.5 where both are 0)."""
    gm = np.asarray(gm, dtype=float)
    total = gm + np.asarray(wm, dtype=float)
    return np.where(total > 1e-3, gm / np.where(total > 1e-3, total, 1.0), 0.5)


def t1_bins(t1_map, step: float) -> np.ndarray:
    """``t1_map`` rounded to multiples of ``step`` s: the T1s the fits run one by one."""
    return np.round(t1_map / step) * step


def tissue_maps(kin: multipld.TissueKinetics, gm, wm, default_t1: float):
    """Each voxel's tissue T1 and ATT prior mean from its GM and WM shares.

    The GM share is ``gm / (gm + wm)`` (0.5 where both are 0). Returns
    ``(t1 map, prior mean map or None)``; a tissue without an ATT takes the
    other's, and without any there is no prior.
    """
    share = gm_share(gm, wm)
    t1 = {t: kin.t1_tissue[t] if kin.t1_tissue[t] is not None else default_t1 for t in kin.att}
    t1_map = share * t1["gm"] + (1.0 - share) * t1["wm"]
    att = dict(kin.att)
    if att["gm"] is None and att["wm"] is None:
        return t1_map, None
    att["gm"] = att["gm"] if att["gm"] is not None else att["wm"]
    att["wm"] = att["wm"] if att["wm"] is not None else att["gm"]
    return t1_map, share * att["gm"] + (1.0 - share) * att["wm"]


def repeat_variance(deltam, plds, keep=None) -> np.ndarray:
    """Each voxel's variance of one difference, pooled over the delays' repeats.

    Deviations of the kept repeats (``keep``: ``(z, n)`` as
    :func:`asl_pipeline.cbf.average_repeats`) from their delay's mean, summed
    over the delays, over the degrees of freedom (repeats - 1 per delay).
    NaN in slices with no delay repeated.
    """
    dm = np.asarray(deltam, dtype=float)
    plds = np.asarray(plds, dtype=float)
    nz = dm.shape[2]
    keep = np.ones((nz, dm.shape[3]), bool) if keep is None else np.asarray(keep, bool)
    ss = np.zeros(dm.shape[:3])
    dof = np.zeros(nz)
    for delay in np.unique(np.round(plds, 9)):
        idx = np.flatnonzero(np.isclose(plds, delay))
        w = keep[:, idx].astype(float)  # (z, repeats)
        w[w.sum(axis=1) == 0] = 1.0
        n = w.sum(axis=1)
        x = dm[..., idx]
        mean = np.einsum("xyzr,zr->xyz", x, w) / n
        ss += np.einsum("xyzr,zr->xyz", (x - mean[..., None]) ** 2, w)
        dof += n - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(dof > 0, ss / dof, np.nan)


def tissue_prior_fit(
    deltam,
    plds,
    m0,
    params: quant.QuantParams,
    gm,
    wm,
    *,
    mask=None,
    keep=None,
    att_bounds: tuple[float, float] = (0.1, 3.0),
    cbf_bounds: tuple[float, float] = (0.0, 500.0),
    att_step: float = 0.01,
    m0_fraction: float = quant.M0_FRACTION_DEFAULT,
    t1_after_arrival: str = "tissue",
    att_prior_sd: float = 0.3,
    fit_t1: tuple[str, ...] = ("gm", "wm"),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, multipld.TissueKinetics]:
    """CBF and ATT with each tissue's T1 and an ATT prior from its mean curve.

    Each voxel takes the T1 and, as its ATT prior's mean, the curve ATT of its
    tissue mix (:func:`tissue_maps`); its ATT is the maximum a posteriori over
    a grid, its residual over its noise variance (:func:`repeat_variance`)
    plus the Gaussian penalty, with the CBF in closed form at each ATT.
    Inputs, bounds and outputs are those of
    :func:`asl_pipeline.cbf.fit_multi_pld`, plus ``gm`` and ``wm``
    (probability maps on the same grid) and ``att_prior_sd`` (s; ``inf``
    switches the prior off and keeps the tissue T1s). A voxel's fit fails
    (its values are kept) when the ATT or CBF ends at a bound, or the ATT is
    shorter than the slice's shortest delay (PASL: TI - TI1), where the data
    do not depend on it and the prior alone sets it. Without repeats to
    measure a voxel's noise, the residual of its best fit without the prior
    (over the delays less two) stands in for it.

    Returns ``cbf, att, failed, kinetics`` (:class:`multipld.TissueKinetics`).
    """
    dm, plds = np.asarray(deltam, float), np.asarray(plds, float)
    m0, mask = np.asarray(m0, float), np.asarray(mask, bool)
    mean_dm, uniq, counts = quant.average_repeats(dm, plds, keep)
    shape = m0.shape
    delays = quant.effective_delays(params, uniq, shape[2])  # (z, k)
    kin = multipld.fit_tissue_curves(
        mean_dm, delays, m0, gm, wm, mask, params,
        t1_after_arrival=t1_after_arrival, att_bounds=att_bounds, cbf_bounds=cbf_bounds,
        fit_t1=fit_t1,
    )  # fmt: skip
    t1_map, prior = tissue_maps(kin, gm, wm, params.t1_tissue)
    sd = float(att_prior_sd)
    if prior is None:
        prior, sd = np.zeros(shape), np.inf

    w = counts.astype(float)
    var = repeat_variance(dm, plds, keep) / np.where(m0 > 0, m0, np.inf) ** 2
    low = quant.low_m0_mask(m0, mask, fraction=m0_fraction)
    fit = mask & ~low & np.all(np.isfinite(mean_dm), axis=3)
    cbf, att = np.zeros(shape), np.zeros(shape)
    failed = mask & ~fit
    lo_a, hi_a = map(float, att_bounds)
    lo_f, hi_f = map(float, cbf_bounds)
    grid = np.arange(lo_a, hi_a + 0.5 * att_step, att_step)
    ident = delays.min(axis=1) - (params.ti1 if params.labeling_type == "PASL" else 0.0)
    bins = t1_bins(t1_map, 0.02)
    for z in range(shape[2]):
        in_z = fit[..., z]
        for t1 in np.unique(bins[..., z][in_z]):
            sel = in_z & (bins[..., z] == t1)
            model_params = replace(params, t1_tissue=float(t1))
            y = mean_dm[..., z, :][sel] / m0[..., z][sel][:, None]  # ΔM/M0 (nvox, k)
            per_unit = quant._model(
                model_params, np.full((grid.size, 1), quant._GRID_CBF), grid[:, None],
                delays[z][None, :], t1_after_arrival,
            ) / quant._GRID_CBF  # fmt: skip
            num = (y * w) @ per_unit.T
            den = (per_unit**2) @ w
            f_grid = np.clip(num / np.where(den > 0, den, np.inf), lo_f, hi_f)
            rss = (w * y**2).sum(axis=1)[:, None] - 2 * f_grid * num + f_grid**2 * den
            noise = var[..., z][sel]
            free = rss.min(axis=1) / max(w.sum() - 2.0, 1.0)
            noise = np.where(np.isfinite(noise) & (noise > 0), noise, free)
            noise = np.where(noise > 0, noise, np.inf)
            cost = rss / noise[:, None] + ((grid[None, :] - prior[..., z][sel][:, None]) / sd) ** 2
            best = np.argmin(cost, axis=1)
            rows = np.arange(y.shape[0])
            a, f = grid[best], f_grid[rows, best]
            # the apparent T1 depends on the flow: CBF in closed form for the
            # model's shape at the voxel's own CBF, where that fits better
            unit = np.where(f > 0, f, 1.0)[:, None]
            g = quant._model(model_params, unit, a[:, None], delays[z][None, :], t1_after_arrival)
            g = g / unit
            gg = (w * g * g).sum(axis=1)
            f_proj = np.clip((w * g * y).sum(axis=1) / np.where(gg > 0, gg, np.inf), lo_f, hi_f)
            resid_proj = (w * (y - f_proj[:, None] * g) ** 2).sum(axis=1)
            f = np.where(resid_proj <= rss[rows, best], f_proj, f)
            cbf[..., z][sel] = f
            att[..., z][sel] = a
            bad = (
                (a <= lo_a + 0.5 * att_step)
                | (a >= hi_a - 0.5 * att_step)
                | (f <= lo_f)
                | (f >= hi_f)
                | (a <= ident[z] + 0.5 * att_step)
                | ~np.isfinite(f)
            )
            failed[..., z][sel] = bad
    cbf = np.where(np.isfinite(cbf), cbf, 0.0)
    return cbf, att, failed, kin


def _tissue_fits(runs, sim_t1: float | None) -> int:
    print("| generator | seed | fit | GM / WM CBF err % | r | GM / WM ATT err s | T1 GM / WM s |")
    print("|---|---|---|---|---|---|---|")
    for kind, seed in runs:
        s, params, dm = _prepare(kind, seed, sim_t1)
        keep = outliers.screen_repeats(dm.deltam, dm.plds, s.brain_mask).keep
        args = (dm.deltam, dm.plds, s.m0_true)
        fits = {}
        cbf, att, _ = quant.fit_multi_pld(*args, params, mask=s.brain_mask, keep=keep)
        fits["fixed T1"] = (cbf, att, f"{params.t1_tissue:.2f}")
        t1, _ = multipld.gm_curve_t1(*args, params, s.gm, s.brain_mask, keep=keep)
        fitted = replace(params, t1_tissue=t1)
        cbf, att, _ = quant.fit_multi_pld(*args, fitted, mask=s.brain_mask, keep=keep)
        fits["GM-curve T1"] = (cbf, att, f"{t1:.2f}")
        for name, tissues in (("GM+WM", ("gm", "wm")), ("GM", ("gm",)), ("fixed", ())):
            cbf, att, _, kin = tissue_prior_fit(
                *args, params, s.gm, s.wm, mask=s.brain_mask, keep=keep, fit_t1=tissues
            )
            t1s = " / ".join(f"{kin.t1_tissue[t]:.2f}" for t in ("gm", "wm"))
            fits[f"prior, T1 {name}"] = (cbf, att, t1s)
        for name, (cbf, att, t1s) in fits.items():
            print(f"| {kind} | {seed} | {name} | {_scores(s, cbf, att)} | {t1s} |", flush=True)
    return 0


def _scores(s, cbf, att) -> str:
    """``GM / WM CBF err % | r | GM / WM ATT err s`` of a map against the subject's truth."""
    gm, wm, brain = s.gm > 0.7, s.wm > 0.9, s.brain_mask
    err = [100 * (cbf[m].mean() / s.cbf[m].mean() - 1) for m in (gm, wm)]
    att_err = [att[m].mean() - s.att[m].mean() for m in (gm, wm)]
    r = np.corrcoef(cbf[brain], s.cbf[brain])[0, 1]
    return f"{err[0]:+.1f} / {err[1]:+.1f} | {r:.3f} | {att_err[0]:+.2f} / {att_err[1]:+.2f}"


def smooth_in_mask(series, mask, sigma: float) -> np.ndarray:
    """Each volume of ``series`` (x, y, z, k) blurred inside ``mask`` (Gaussian,
    ``sigma`` voxels; normalised by the blurred mask so the edge keeps its level)."""
    weight = ndimage.gaussian_filter(mask.astype(float), sigma)
    weight = np.where(weight > 1e-3, weight, np.inf)
    out = np.empty(series.shape)
    for k in range(series.shape[3]):
        out[..., k] = ndimage.gaussian_filter(np.where(mask, series[..., k], 0.0), sigma) / weight
    return out


def t1_share_map(gm, wm, t1_gm: float, ratio: float) -> np.ndarray:
    """Each voxel's tissue T1: GM's ``t1_gm`` and WM's ``ratio * t1_gm`` mixed by
    the GM share ``gm / (gm + wm)`` (0.5 where both are 0)."""
    share = gm_share(gm, wm)
    return t1_gm * (share + (1.0 - share) * ratio)


#: Width (s) of the T1 bins of :func:`fit_by_t1` and :func:`smoothed_att_fit`.
T1_STEP = 0.05


def fit_by_t1(deltam, plds, m0, params, mask, t1_map, keep=None):
    """``fit_multi_pld`` with each voxel's tissue T1 (``t1_map`` in bins of :data:`T1_STEP`)."""
    cbf, att = np.zeros(m0.shape), np.zeros(m0.shape)
    bins = t1_bins(t1_map, T1_STEP)
    for t1 in np.unique(bins[mask]):
        sel = mask & (bins == t1)
        fitted = replace(params, t1_tissue=float(t1))
        c, a, _ = quant.fit_multi_pld(deltam, plds, m0, fitted, mask=sel, keep=keep)
        cbf[sel], att[sel] = c[sel], a[sel]
    return cbf, att


def smoothed_att_fit(deltam, plds, m0, params, mask, t1_map, keep=None, sigma=0.85):
    """ATT from the smoothed mean ΔM, then each voxel's least-squares CBF at it."""
    mean_dm, uniq, counts = quant.average_repeats(deltam, plds, keep)
    smooth = np.repeat(smooth_in_mask(mean_dm, mask, sigma), counts, axis=3)
    _, att = fit_by_t1(smooth, np.repeat(uniq, counts), m0, params, mask, t1_map)
    w = counts.astype(float)
    delays = quant.effective_delays(params, uniq, m0.shape[2])
    cbf = np.zeros(m0.shape)
    fit = mask & ~quant.low_m0_mask(m0, mask)
    bins = t1_bins(t1_map, T1_STEP)
    for z in range(m0.shape[2]):
        sel = fit[..., z]
        y = mean_dm[..., z, :][sel] / m0[..., z][sel][:, None]
        cbf[..., z][sel] = cbf_at_att(y, w, att[..., z][sel], bins[..., z][sel], params, delays[z])
    return cbf, att


#: How :func:`cbf_at_att` takes the CBF at a voxel's ATT.
CBF_RULES = ("least squares", "sum")


def cbf_at_att(y, w, att, t1s, params, delays, rule="least squares") -> np.ndarray:
    """Each voxel's CBF (mL/100 g/min) given its ATT and tissue T1.

    ``y`` ``(n, k)`` mean ΔM/M0 at the ``k`` ``delays``, ``w`` their numbers
    of repeats, ``att`` and ``t1s`` ``(n,)``. ``rule``: ``"least squares"``
    (weighted by ``w``) or ``"sum"`` (the differences' sum over the model's).
    The apparent T1 depends on the flow, so the model's shape is iterated with
    the CBF (three times, from 50 mL/100 g/min; clipped to 0.001-500).
    """
    if rule not in CBF_RULES:
        raise ValueError(f"rule must be one of {', '.join(CBF_RULES)}, got {rule!r}")
    f = np.full(att.size, quant._GRID_CBF)
    for _ in range(3):
        g = np.empty_like(y)
        for t1 in np.unique(t1s):
            i = t1s == t1
            shape = replace(params, t1_tissue=float(t1))
            g[i] = quant._model(shape, f[i, None], att[i, None], delays[None, :], "tissue")
            g[i] /= f[i, None]
        if rule == "least squares":
            f = (w * g * y).sum(1) / np.maximum((w * g * g).sum(1), 1e-300)
        else:
            f = (w * y).sum(1) / np.maximum((w * g).sum(1), 1e-300)
        f = np.clip(f, 1e-3, 500.0)
    return f


def _screened(kind: str, seed: int, labeling: str = "PCASL", sim_t1: float | None = None):
    """A subject, its parameters, the fit's inputs, the repeat screen, the T1
    the pipeline would use and what the GM curve gave (``gm_curve_t1``)."""
    s, params, dm = _prepare(kind, seed, sim_t1, labeling=labeling)
    keep = outliers.screen_repeats(dm.deltam, dm.plds, s.brain_mask).keep
    args = (dm.deltam, dm.plds, s.m0_true)
    t1, kin = multipld.gm_curve_t1(*args, params, s.gm, s.brain_mask, keep=keep)
    return s, params, args, keep, t1, kin


def _print_header(t1_column: str) -> None:
    print(f"| generator | seed | {t1_column} | fit | GM / WM CBF err % | r | GM / WM ATT err s |")
    print("|---|---|---|---|---|---|---|")


def _print_fits(s, kind: str, seed: int, t1_label: str, fits: dict) -> None:
    """One row per fit (name -> (CBF, ATT) maps), scored by :func:`_scores`."""
    for name, (cbf, att) in fits.items():
        print(f"| {kind} | {seed} | {t1_label} | {name} | {_scores(s, cbf, att)} |", flush=True)


def _smoothed_fits(runs) -> int:
    _print_header("WM T1")
    for kind, seed in runs:
        s, params, args, keep, t1, _ = _screened(kind, seed)
        brain = s.brain_mask
        for label, ratio in (("= GM", 1.0), ("literature", WM_GM_T1_RATIO)):
            t1_map = t1_share_map(s.gm, s.wm, t1, ratio)
            fits = {
                "voxel-wise": fit_by_t1(*args, params, brain, t1_map, keep),
                "smoothed ATT": smoothed_att_fit(*args, params, brain, t1_map, keep),
            }
            _print_fits(s, kind, seed, label, fits)
    return 0


#: The phantom's tissue T1 (s), GM and WM: the DRO's 3 T values (Lu et al. 2005).
PHANTOM_T1 = (1.33, 0.83)


def weighted_delay_fit(deltam, plds, m0, params, mask, t1_map, keep=None, cbf="least squares"):
    """ATT from each voxel's signal-weighted delay, then the CBF at that ATT.

    The weighted delay ``sum_i w_i d_i y_i / sum_i w_i y_i`` (``y_i`` the mean
    ΔM/M0 at delay ``d_i``, ``w_i`` its number of repeats) of the kinetic
    model (pCASL) rises with the ATT from the slice's shortest delay on (below
    it the curve has one shape whatever the ATT); each voxel's is mapped back
    to an ATT by interpolation on a grid of the model's (the shortest delay to
    3.0 s, the voxel's slice delays and T1 bin, the model's shape at 50 mL/100
    g/min). A voxel whose weighted delay lies below the grid's takes the
    shortest delay; one whose differences sum to zero or less, the longest.
    The CBF at that ATT is :func:`cbf_at_att`'s with the rule ``cbf``
    (:data:`CBF_RULES`).
    """
    if cbf not in CBF_RULES:
        raise ValueError(f"rule must be one of {', '.join(CBF_RULES)}, got {cbf!r}")
    mean_dm, uniq, counts = quant.average_repeats(deltam, plds, keep)
    w = counts.astype(float)
    delays = quant.effective_delays(params, uniq, m0.shape[2])
    out_cbf, out_att = np.zeros(m0.shape), np.zeros(m0.shape)
    fit = mask & ~quant.low_m0_mask(m0, mask)
    bins = t1_bins(t1_map, T1_STEP)
    for z in range(m0.shape[2]):
        d = delays[z]
        grid = np.arange(d.min(), 3.0 + 1e-9, 0.005)
        for t1 in np.unique(bins[..., z][fit[..., z]]):
            sel = fit[..., z] & (bins[..., z] == t1)
            y = mean_dm[..., z, :][sel] / m0[..., z][sel][:, None]
            unit = np.full((grid.size, 1), quant._GRID_CBF)
            shape = replace(params, t1_tissue=float(t1))
            g = quant._model(shape, unit, grid[:, None], d[None, :], "tissue")
            model_wd = (g * w * d).sum(1) / (g * w).sum(1)
            num, den = (y * w * d).sum(1), (y * w).sum(1)
            wd = np.where(den > 0, num / np.where(den > 0, den, 1.0), d.max())
            wd = np.clip(wd, d.min(), d.max())
            att = np.interp(wd, model_wd, grid)
            t1s = np.full(att.size, t1)
            out_cbf[..., z][sel] = cbf_at_att(y, w, att, t1s, params, d, cbf)
            out_att[..., z][sel] = att
    return out_cbf, out_att


def _weighted_delay_fits(runs) -> int:
    _print_header("T1")
    for kind, seed in runs:
        s, params, args, keep, t1, _ = _screened(kind, seed)
        brain = s.brain_mask
        t1_maps = {f"GM curve {t1:.2f}": np.full(brain.shape, t1)}
        if kind == "phantom":
            t1_gm, t1_wm = PHANTOM_T1
            t1_maps["the phantom's own"] = t1_share_map(s.gm, s.wm, t1_gm, t1_wm / t1_gm)
        for label, t1_map in t1_maps.items():
            fits = {"voxel-wise": fit_by_t1(*args, params, brain, t1_map, keep)}
            if label == "the phantom's own":  # one T1: "Multi-PLD: the ATT from smoothed curves"
                fits["smoothed ATT"] = smoothed_att_fit(*args, params, brain, t1_map, keep)
            for how in CBF_RULES:
                fits[f"WD, {how}"] = weighted_delay_fit(*args, params, brain, t1_map, keep, how)
            _print_fits(s, kind, seed, label, fits)
    return 0


def _att_estimates(runs, labeling: str) -> int:
    _print_header("T1")
    for kind, seed in runs:
        s, params, args, keep, t1, _ = _screened(kind, seed, labeling)
        fitted = replace(params, t1_tissue=float(t1))
        brain = s.brain_mask
        voxel = quant.fit_multi_pld(*args, fitted, mask=brain, keep=keep)
        smoothed = multipld.fit_smoothed_att(*args, fitted, mask=brain, keep=keep)
        fits = {"voxel": voxel[:2], "smoothed": smoothed[:2]}
        _print_fits(s, f"{kind} {labeling}", seed, f"GM curve {t1:.2f}", fits)
    return 0


def _t1_errors(runs, sim_t1: float | None) -> int:
    """Per subject: the GM curve's T1 against the truth, its jackknife error,
    whether :func:`multipld.gm_curve_t1` keeps it, and the default fit's
    errors with that T1 and with the fixed one."""
    print(
        "| generator | seed | T1 truth | GM curve T1 | jackknife SE | kept "
        "| curve T1: GM / WM CBF err % | r | GM / WM ATT err s "
        "| fixed T1: GM / WM CBF err % | r | GM / WM ATT err s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, seed in runs:
        s, params, args, keep, _, kin = _screened(kind, seed, sim_t1=sim_t1)
        truth = PHANTOM_T1[0] if kind == "phantom" else (sim_t1 or SIM_T1)
        scores = []
        for t1 in (kin.t1_tissue["gm"], params.t1_tissue):
            fit = replace(params, t1_tissue=float(t1))
            cbf, att, _ = multipld.fit_smoothed_att(*args, fit, mask=s.brain_mask, keep=keep)
            scores.append(_scores(s, cbf, att))
        se = kin.t1_se.get("gm")
        print(
            f"| {kind} | {seed} | {truth:.2f} | {kin.t1_tissue['gm']:.2f} "
            f"| {'-' if se is None else f'{se:.3f}'} | {'yes' if kin.t1_trusted('gm') else 'no'} "
            f"| {scores[0]} | {scores[1]} |",
            flush=True,
        )
    return 0


def _with_prior(runs, mean: float, sd: float) -> int:
    print(f"ATT prior {mean:g} s, SD {sd:g} s: errors of the map's mean over each mask\n")
    print("| generator | seed | GM ATT err s | WM ATT err s | GM CBF err % | WM CBF err % |")
    print("|---|---|---|---|---|---|")
    for kind, seed in runs:
        s, params, dm = _prepare(kind, seed)
        cbf, att = prior_fit(dm.deltam, dm.plds, s.m0_true, params, s.brain_mask, mean, sd)
        cells = []
        for region in (s.gm > 0.7, s.wm > 0.9):
            cells.append(f"{att[region].mean() - s.att[region].mean():+.2f}")
        for region in (s.gm > 0.7, s.wm > 0.9):
            cells.append(f"{100 * (cbf[region].mean() / s.cbf[region].mean() - 1):+.1f}")
        print(f"| {kind} | {seed} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
