"""Quality-control metrics of a processed ASL run (methods spec, section 7).

Plain NumPy functions; the motion figures (FD, RMSD) live in
:mod:`asl_pipeline.motion` and the image-quality metrics used to evaluate
denoising (PSNR, SSIM, ...) in :mod:`asl_pipeline.metrics`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from asl_pipeline.smoothing import fwhm_to_sigma

#: Constants of the quality evaluation index (Dolui et al. 2024).
QEI_CONSTANTS = {
    "alpha": -3.0126,
    "beta": 2.4419,
    "gamma": 0.054,
    "delta": 0.9272,
    "epsilon": 2.8478,
    "zeta": 0.5196,
}


def dice(a, b) -> float:
    """Dice coefficient of two binary masks (1.0 when both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = a.sum() + b.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(a, b).sum() / total)


def intensity_mask(image, *, fraction=0.3):
    """Head mask of an image from its own intensities (no registration).

    Voxels above ``fraction`` of the image's robust maximum (99th percentile),
    the largest connected component kept and its holes filled. On an ASL
    reference or M0 image this outlines the brain (and little scalp: the
    scalp's fat signal is suppressed in ASL readouts), which makes it an
    independent check of the T1w brain mask brought into ASL space.
    """
    image = np.nan_to_num(np.asarray(image, dtype=float))
    if not np.any(image > 0):
        return np.zeros(image.shape, dtype=bool)
    mask = image > fraction * np.percentile(image[image > 0], 99)
    return ndimage.binary_fill_holes(largest_component(mask))


def largest_component(mask) -> np.ndarray:
    """The largest connected component (face connectivity) of a binary mask.

    A mask with one component or none is returned as it is (as booleans);
    between equal sizes the first label wins.
    """
    labels, n = ndimage.label(mask)
    if n <= 1:
        return np.asarray(mask, dtype=bool)
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def dvars(series, mask, *, percent=True):
    """DVARS of a 4D series: RMS over the mask of the volume-to-volume change.

    Parameters
    ----------
    series
        4D array (x, y, z, t).
    mask
        3D brain mask.
    percent
        Express the change in percent of the series' mean in the mask, which
        makes the figure comparable across scanners and intensity scalings.

    Returns
    -------
    ndarray of length t; the first value is 0 (no previous volume).

    Notes
    -----
    On an ASL series the change from a control to a label volume contains the
    perfusion signal itself, so DVARS carries a small baseline zig-zag; spikes
    well above it mark motion or artefacts.
    """
    series = np.asarray(series, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    data = series[mask]  # (n_voxels, t)
    diff = np.diff(data, axis=1)
    out = np.zeros(series.shape[-1])
    out[1:] = np.sqrt(np.mean(diff**2, axis=0))
    if percent:
        scale = np.abs(data.mean())
        out = 100.0 * out / scale if scale > 0 else out
    return out


def tissue_masks(gm, wm, gm_threshold=0.7, wm_threshold=0.9) -> tuple[np.ndarray, np.ndarray]:
    """The GM and WM masks of the QC figures: probabilities above the thresholds
    (see :func:`tissue_cbf_stats` for why 0.7 and 0.9)."""
    return np.asarray(gm) > gm_threshold, np.asarray(wm) > wm_threshold


def tissue_cbf_stats(cbf, gm, wm, *, gm_threshold=0.7, wm_threshold=0.9):
    """Mean GM and WM CBF, their ratio, and the percentage of negative GM CBF.

    Tissue masks are probability maps above the thresholds: GM > 0.7 (the
    cortical ribbon is thinner than an ASL voxel, so purer GM barely exists)
    and WM > 0.9 (at 0.7 the WM mask takes in enough GM partial volume to
    read WM CBF about 40% high on the validation panel's demo subject).
    """
    cbf = np.asarray(cbf, dtype=float)
    gm_mask, wm_mask = tissue_masks(gm, wm, gm_threshold, wm_threshold)
    gm_mean = float(cbf[gm_mask].mean()) if gm_mask.any() else float("nan")
    wm_mean = float(cbf[wm_mask].mean()) if wm_mask.any() else float("nan")
    ratio = gm_mean / wm_mean if wm_mask.any() and wm_mean != 0 else float("nan")
    neg = 100.0 * float((cbf[gm_mask] < 0).mean()) if gm_mask.any() else float("nan")
    return {
        "gm_cbf_mean": gm_mean,
        "wm_cbf_mean": wm_mean,
        "gm_wm_ratio": ratio,
        "gm_negative_percent": neg,
    }


def tissue_att_stats(att, gm, wm, failed=None, *, gm_threshold=0.7, wm_threshold=0.9):
    """Mean GM and WM arterial transit time (s) and the share of failed fits.

    The masks are :func:`tissue_masks`, as for the CBF figures. The means take every
    voxel of the mask, failed fits included (their ATT is the best value the
    fit found), like the CBF means of the same map. With ``failed`` (the
    fit's failure mask) the failed percentages say how much of each mean
    rests on fits that did not converge, ended at a bound or put the ATT
    below the shortest delay, where the data do not determine it
    (:func:`asl_pipeline.cbf.fit_multi_pld`). At 5 delays x 8 repeats a tenth
    to a half of WM voxels fail on the two generators (benchmarks/RESULTS.md,
    "Multi-PLD: what the voxel-wise fit gives a region"); their ATTs sit
    mostly at the lower bound and the converged ones run high, so neither
    part alone is the regional figure.
    """
    att = np.asarray(att, dtype=float)
    out = {}
    masks = tissue_masks(gm, wm, gm_threshold, wm_threshold)
    for name, sel in zip(("gm", "wm"), masks, strict=True):
        out[f"{name}_mean"] = float(np.nanmean(att[sel])) if sel.any() else float("nan")
        if failed is not None:
            share = 100.0 * float((np.asarray(failed)[sel] > 0).mean()) if sel.any() else np.nan
            out[f"{name}_failed_percent"] = float(share)
    return out


def qei(cbf, gm, wm, csf, *, zooms=(1.0, 1.0, 1.0), gm_wm_ratio=2.5, threshold=0.9):
    """Quality evaluation index of a CBF map (Dolui et al. 2024), in [0, 1].

    ``QEI = cbrt((1 - exp(alpha * rho**beta)) * exp(-(gamma * DI**delta
    + epsilon * nGM**zeta)))`` on the CBF map smoothed with a 5 mm FWHM
    Gaussian, where ``rho`` is the spatial correlation with the tissue-based
    pseudo-CBF ``gm_wm_ratio * GM + WM`` inside the tissue, ``DI`` the
    dispersion index (pooled within-tissue variance of CBF over the absolute
    mean GM CBF) and ``nGM`` the fraction of negative GM voxels. Tissue masks
    are the probability maps above ``threshold``. A negative correlation
    counts as zero structure.
    """
    c = QEI_CONSTANTS
    cbf = ndimage.gaussian_filter(
        np.nan_to_num(np.asarray(cbf, dtype=float)), fwhm_to_sigma(5.0, zooms)
    )
    gm = np.asarray(gm, dtype=float)
    wm = np.asarray(wm, dtype=float)
    csf = np.asarray(csf, dtype=float)
    tissue = (gm + wm + csf) > threshold
    pseudo = gm_wm_ratio * gm + wm
    rho = max(float(np.corrcoef(cbf[tissue], pseudo[tissue])[0, 1]), 0.0)
    pooled, dof = 0.0, 0
    for prob in (gm, wm, csf):
        sel = prob > threshold
        n = int(sel.sum())
        if n > 1:
            pooled += (n - 1) * float(np.var(cbf[sel], ddof=1))
            dof += n - 1
    gm_sel = gm > threshold
    if dof == 0 or not gm_sel.any():
        return float("nan")
    gm_mean = abs(float(cbf[gm_sel].mean()))
    di = (pooled / dof) / gm_mean if gm_mean > 0 else np.inf
    n_gm = float((cbf[gm_sel] < 0).mean())
    structure = 1.0 - np.exp(c["alpha"] * rho ** c["beta"])
    penalty = np.exp(-(c["gamma"] * di ** c["delta"] + c["epsilon"] * n_gm ** c["zeta"]))
    return float(np.cbrt(structure * penalty))
