"""Image-quality metrics of the denoising evaluation (methods spec, section 6.5).

Plain NumPy/SciPy functions on CBF maps (mL/100 g/min):

- :func:`psnr` and :func:`ssim` of an estimate against a reference inside a
  brain mask (the study used the 40-pair pseudo-ground-truth as reference;
  with simulated data the true CBF is used);
- :func:`snr`: mean of a GM region over the SD of a WM region, on one slice;
- :func:`gm_wm_contrast`: mean GM CBF over mean WM CBF;
- :func:`voxelwise_correlation`: Pearson's r per voxel across subjects.

Choices the spec leaves open (parameters, defaults documented):

- PSNR's peak is the range (max - min) of the reference inside the mask;
- SSIM uses the Gaussian window of Wang et al. 2004 (sigma 1.5 px, K1 0.01,
  K2 0.03), computed in 2-D on each axial slice of a volume, on images set to
  zero outside the mask, and averaged over the mask voxels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from asl_pipeline.qc import tissue_cbf_stats


def _mask(mask, shape):
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {shape}")
    return mask


def _pair(estimate, reference):
    estimate = np.asarray(estimate, dtype=float)
    reference = np.asarray(reference, dtype=float)
    if estimate.shape != reference.shape:
        raise ValueError(f"shapes differ: {estimate.shape} vs {reference.shape}")
    return estimate, reference


def _data_range(reference, mask, data_range):
    if data_range is not None:
        return float(data_range)
    values = reference[mask]
    return float(values.max() - values.min())


def psnr(estimate, reference, mask=None, *, data_range=None) -> float:
    """Peak signal-to-noise ratio (dB) of ``estimate`` against ``reference`` in ``mask``.

    ``10 log10(peak**2 / MSE)`` with the MSE over the mask voxels and ``peak``
    = ``data_range`` (default: max - min of the reference in the mask).
    Returns ``inf`` for identical images.
    """
    estimate, reference = _pair(estimate, reference)
    mask = _mask(mask, reference.shape)
    mse = float(np.mean((estimate[mask] - reference[mask]) ** 2))
    peak = _data_range(reference, mask, data_range)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(peak**2 / mse))


def ssim_map(estimate, reference, *, data_range, sigma=1.5, k1=0.01, k2=0.03, axis=2):
    """Local SSIM (Wang et al. 2004) with a Gaussian window.

    For 3-D images the window is 2-D, in the plane orthogonal to ``axis``
    (slice-wise SSIM); pass ``axis=None`` for a full 3-D window.
    """
    estimate, reference = _pair(estimate, reference)
    sig = [sigma] * estimate.ndim
    if estimate.ndim == 3 and axis is not None:
        sig[axis] = 0.0

    def blur(a):
        return ndimage.gaussian_filter(a, sig, mode="constant", truncate=3.5)

    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x, mu_y = blur(estimate), blur(reference)
    sxx = blur(estimate * estimate) - mu_x**2
    syy = blur(reference * reference) - mu_y**2
    sxy = blur(estimate * reference) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return num / den


def ssim(estimate, reference, mask=None, *, data_range=None, sigma=1.5, axis=2) -> float:
    """Structural similarity of ``estimate`` and ``reference`` averaged inside ``mask``.

    Both images are set to zero outside the mask first (so that tissue outside
    the brain does not enter the local statistics); the SSIM map is then
    averaged over the mask voxels. ``data_range`` as in :func:`psnr`.
    """
    estimate, reference = _pair(estimate, reference)
    mask = _mask(mask, reference.shape)
    peak = _data_range(reference, mask, data_range)
    smap = ssim_map(
        np.where(mask, estimate, 0.0),
        np.where(mask, reference, 0.0),
        data_range=peak,
        sigma=sigma,
        axis=axis,
    )
    return float(smap[mask].mean())


def _tissue(prob, threshold):
    prob = np.asarray(prob)
    return prob > threshold if prob.dtype != bool else prob


def best_slice(gm, wm, *, axis=2, threshold=0.7) -> int:
    """Index of the slice along ``axis`` with the most voxels of its scarcer tissue."""
    gm = _tissue(gm, threshold)
    wm = _tissue(wm, threshold)
    other = tuple(a for a in range(gm.ndim) if a != axis)
    counts = np.minimum(gm.sum(axis=other), wm.sum(axis=other))
    return int(np.argmax(counts))


def snr(image, gm, wm, *, slice_index=None, axis=2, threshold=0.7) -> float:
    """Mean CBF of the GM region over the SD of the WM region, on one slice.

    ``gm``/``wm`` are masks or probability maps (thresholded at
    ``threshold``). ``slice_index`` defaults to :func:`best_slice`. The WM SD
    is the sample SD (ddof 1) of the WM voxels of that slice; in a WM region
    of uniform true flow it measures the noise.
    """
    image = np.asarray(image, dtype=float)
    gm = _tissue(gm, threshold)
    wm = _tissue(wm, threshold)
    if image.ndim == 3:
        if slice_index is None:
            slice_index = best_slice(gm, wm, axis=axis)
        take = [slice(None)] * 3
        take[axis] = slice_index
        image, gm, wm = image[tuple(take)], gm[tuple(take)], wm[tuple(take)]
    if gm.sum() < 1 or wm.sum() < 2:
        return float("nan")
    return float(image[gm].mean() / image[wm].std(ddof=1))


def gm_wm_contrast(image, gm, wm, *, threshold=0.7) -> float:
    """Mean GM CBF over mean WM CBF (masks or probability maps above ``threshold``)."""
    gm = _tissue(gm, threshold).astype(float)
    wm = _tissue(wm, threshold).astype(float)
    return tissue_cbf_stats(image, gm, wm, gm_threshold=0.5, wm_threshold=0.5)["gm_wm_ratio"]


def voxelwise_correlation(estimates, references, mask=None):
    """Pearson's r per voxel, across subjects.

    Parameters
    ----------
    estimates, references
        Arrays ``(n_subjects, ...)`` in a common space.
    mask
        Optional mask of the voxel grid; voxels outside get NaN.

    Returns
    -------
    ndarray of the voxel grid's shape; NaN where either series is constant.
    """
    x, y = _pair(estimates, references)
    if x.shape[0] < 3:
        raise ValueError("voxel-wise correlation needs at least 3 subjects")
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    den = np.sqrt((xc**2).sum(axis=0) * (yc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (xc * yc).sum(axis=0) / np.where(den > 0, den, 1.0), np.nan)
    if mask is not None:
        r = np.where(_mask(mask, r.shape), r, np.nan)
    return r
