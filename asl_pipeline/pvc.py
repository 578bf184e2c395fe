"""Partial-volume correction of CBF maps: linear regression (Asllani et al. 2008).

At ASL resolution (3-6 mm) most cortical voxels mix grey matter, white
matter and CSF, so the CBF of a voxel is, with ``P_GM`` / ``P_WM`` its tissue
fractions and CSF taken as unperfused,

    CBF_obs = P_GM * CBF_GM + P_WM * CBF_WM.

One voxel gives one equation for two unknowns. The linear-regression method
of Asllani, Borogovac and Brown (2008, Magn Reson Med 60:1362-1371) assumes
``CBF_GM`` and ``CBF_WM`` constant within a small kernel around each voxel
(default 5 x 5 x 1 voxels, in-plane only) and solves the kernel's equations by
least squares, every kernel voxel weighted equally; the solution is assigned
to the kernel's centre voxel. The CSF fraction enters through the fractions
(``P_GM + P_WM < 1``), not as an unknown.

The 2 x 2 normal equations of all kernels are computed at once as box
filters of the products ``P_GM^2``, ``P_GM P_WM``, ``P_WM^2``, ``P_GM CBF``,
``P_WM CBF`` (:func:`scipy.ndimage.uniform_filter`), so a 64 x 64 x 20 map
takes a few tens of milliseconds.

Ill-conditioned kernels are left unestimated (NaN), never extrapolated:

* fewer than ``min_voxels`` usable voxels (inside the mask, finite CBF);
* less than ``min_tissue`` voxel-equivalents of GM or of WM in the kernel
  (``sum P_GM`` or ``sum P_WM``): that tissue's CBF is not identifiable;
* near-collinear fractions: ``1 - cos^2`` of the angle between the kernel's
  ``P_GM`` and ``P_WM`` vectors (the determinant of the normal matrix over
  the product of its diagonal) below ``min_independence``; the noise of the
  estimates grows as ``1 / sqrt`` of that figure.

Tissue fractions
----------------
The fractions must describe the volume each ASL voxel actually measures: the
T1w tissue probabilities averaged over the voxel and, where the readout
blurs (3D GRASE/stack-of-spirals through-plane T2 decay), convolved with its
point-spread function. ``psf_fwhm`` (voxels, per axis, e.g. ``(0, 0, 1.2)``
for a 3D GRASE readout) blurs the given fractions with a Gaussian of that
width before the regression (:func:`blur_fractions`). Fractions sampled at
the ASL voxel centres from the 1 mm maps (plain interpolation) are sharper
than the true partial volumes and bias the correction (on simulated subjects
GM CBF by about -5%, WM CBF by about +15%); :func:`fine_grid` and
:func:`block_mean` give the voxel averages instead (the workflow's
``TissueFractions`` interface samples the T1w maps on a grid of about 1 mm
inside each ASL voxel and averages them).

Known limits
------------
* The kernel smooths: ``CBF_GM`` and ``CBF_WM`` are kernel averages, so focal
  changes (a small lesion, a sharp regional boundary) are spread over the
  kernel and their contrast reduced; a larger kernel is more stable and
  smoother.
* WM has low CBF and hence low SNR, and WM fractions vary little inside
  deep-WM kernels: ``CBF_WM`` is much noisier than ``CBF_GM`` and can be
  negative; GM estimates are the robust output.
* CSF is assumed unperfused; vessels, the choroid plexus and arterial
  transit artefacts violate the model locally.
* Any misregistration between the ASL and the T1w (or uncorrected EPI
  distortion) moves the fractions against the CBF and biases the solution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from asl_pipeline.smoothing import fwhm_to_sigma

#: Default kernel (voxels along x, y, z): in-plane only, as in Asllani et al.
#: 2008; chosen on simulated subjects (README "Partial-volume correction").
DEFAULT_KERNEL = (5, 5, 1)

#: Threshold on the tissue fraction of the regional means of the QC table.
REGIONAL_THRESHOLD = 0.5


@dataclass(frozen=True)
class PVCResult:
    """Tissue CBF maps of a partial-volume correction.

    ``gm`` / ``wm``: CBF of grey / white matter (same units as the input), NaN
    where not estimated; ``estimated``: where the kernel passed the guards;
    ``n_voxels``: usable voxels in each kernel; ``independence``: ``1 -
    cos^2`` of the angle between the kernel's GM and WM fraction vectors (0 =
    collinear, NaN where there is no tissue).
    """

    gm: np.ndarray
    wm: np.ndarray
    estimated: np.ndarray
    n_voxels: np.ndarray
    independence: np.ndarray


def _check_kernel(kernel) -> tuple[int, int, int]:
    kernel = tuple(int(k) for k in np.atleast_1d(kernel))
    if len(kernel) == 1:
        kernel = kernel * 3
    if len(kernel) != 3 or any(k < 1 or k % 2 == 0 for k in kernel):
        raise ValueError(f"kernel {kernel} must be 3 odd positive sizes (voxels), e.g. (5, 5, 1)")
    if np.prod(kernel) < 3:
        raise ValueError(f"kernel {kernel} has fewer than 3 voxels: two unknowns need more")
    return kernel


def blur_fractions(fraction, fwhm) -> np.ndarray:
    """A tissue-fraction map convolved with a Gaussian point spread.

    ``fwhm`` is in voxels, one value or one per axis (0: no blur along it).
    """
    fwhm = np.broadcast_to(np.asarray(fwhm, float), (3,))
    if np.any(fwhm < 0):
        raise ValueError(f"psf_fwhm {tuple(fwhm)} must be >= 0 voxels")
    fraction = np.asarray(fraction, float)
    if not np.any(fwhm > 0):
        return fraction
    return ndimage.gaussian_filter(fraction, fwhm_to_sigma(fwhm), mode="nearest")


def supersampling(asl_zooms, t1w_zooms, *, most: int = 8) -> tuple[int, int, int]:
    """Sample points per ASL voxel and axis so that they are no further apart
    than the T1w voxels (at most ``most`` per axis)."""
    ratio = np.asarray(asl_zooms[:3], float) / np.asarray(t1w_zooms[:3], float)
    return tuple(int(n) for n in np.clip(np.ceil(ratio - 1e-6), 1, most))


def fine_grid(affine, shape, factors) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of a grid splitting each voxel into ``factors`` sub-voxels.

    Sub-voxel ``f * i + a`` (``a`` in ``0..f-1``) of voxel ``i`` has its
    centre at ``i + (a + 0.5) / f - 0.5`` in the original voxel coordinates, so
    :func:`block_mean` of an image sampled on the fine grid is the voxel average.
    """
    f = np.asarray(factors, float)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(1.0 / f)
    scale[:3, 3] = 0.5 / f - 0.5
    return np.asarray(affine, float) @ scale, tuple(
        int(n * k) for n, k in zip(shape, factors, strict=True)
    )


def block_mean(fine, factors) -> np.ndarray:
    """Mean over each ``factors`` block of a fine-grid image (see :func:`fine_grid`)."""
    fine = np.asarray(fine, float)
    shape = tuple(n // k for n, k in zip(fine.shape, factors, strict=True))
    split = [d for n, k in zip(shape, factors, strict=True) for d in (n, k)]
    return fine.reshape(split).mean(axis=(1, 3, 5))


def lr_pvc(
    cbf,
    gm,
    wm,
    *,
    mask=None,
    kernel=DEFAULT_KERNEL,
    psf_fwhm=0.0,
    min_voxels: int | None = None,
    min_tissue: float = 1.0,
    min_independence: float = 0.05,
) -> PVCResult:
    """Linear-regression partial-volume correction (Asllani et al. 2008).

    Parameters
    ----------
    cbf
        ``(x, y, z)`` CBF map (any units; the outputs have the same).
    gm, wm
        GM and WM fractions on the same grid, in [0, 1] (values outside are
        clipped), describing the volume each voxel measures (module docstring).
    mask
        Voxels that may enter a kernel and receive an estimate (default:
        ``gm + wm > 0``). Voxels with non-finite CBF never enter.
    kernel
        Kernel size in voxels along each axis (odd), default 5 x 5 x 1.
    psf_fwhm
        Gaussian FWHM (voxels, scalar or per axis) applied to the fractions
        first, to model the readout's point spread; 0 = none.
    min_voxels
        Fewest usable voxels in a kernel (default: a third of the kernel,
        at least 3).
    min_tissue
        Fewest voxel-equivalents of GM and of WM (``sum P``) in a kernel.
    min_independence
        Smallest ``1 - cos^2`` between the kernel's GM and WM fraction vectors.

    Returns
    -------
    PVCResult
        ``gm`` / ``wm`` CBF maps (NaN outside the mask and where a guard
        fails) and the diagnostics of each kernel.
    """
    cbf = np.asarray(cbf, float)
    if cbf.ndim != 3:
        raise ValueError(f"cbf must be a 3D map, got shape {cbf.shape}")
    gm = np.clip(blur_fractions(gm, psf_fwhm), 0.0, 1.0)
    wm = np.clip(blur_fractions(wm, psf_fwhm), 0.0, 1.0)
    if gm.shape != cbf.shape or wm.shape != cbf.shape:
        raise ValueError(f"fractions {gm.shape}/{wm.shape} do not match the CBF map {cbf.shape}")
    kernel = _check_kernel(kernel)
    size = int(np.prod(kernel))
    if min_voxels is None:
        min_voxels = max(3, size // 3)
    mask = (gm + wm > 0) if mask is None else np.asarray(mask, bool)
    if mask.shape != cbf.shape:
        raise ValueError(f"mask {mask.shape} does not match the CBF map {cbf.shape}")
    use = mask & np.isfinite(cbf)
    y = np.where(use, cbf, 0.0)
    pg = np.where(use, gm, 0.0)
    pw = np.where(use, wm, 0.0)

    def ksum(a):
        return ndimage.uniform_filter(a, size=kernel, mode="constant", cval=0.0) * size

    n = np.rint(ksum(use.astype(float)))
    s_gg, s_gw, s_ww = ksum(pg * pg), ksum(pg * pw), ksum(pw * pw)
    b_g, b_w = ksum(pg * y), ksum(pw * y)
    det = s_gg * s_ww - s_gw * s_gw
    diag = s_gg * s_ww
    with np.errstate(invalid="ignore", divide="ignore"):
        independence = np.where(diag > 0, det / diag, np.nan)
        ok = (
            mask
            & (n >= min_voxels)
            & (ksum(pg) >= min_tissue)
            & (ksum(pw) >= min_tissue)
            & (independence >= min_independence)
        )
        safe = np.where(ok, det, 1.0)
        cbf_gm = np.where(ok, (s_ww * b_g - s_gw * b_w) / safe, np.nan)
        cbf_wm = np.where(ok, (s_gg * b_w - s_gw * b_g) / safe, np.nan)
    return PVCResult(
        gm=cbf_gm,
        wm=cbf_wm,
        estimated=ok,
        n_voxels=n.astype(int),
        independence=independence,
    )


def regional_means(cbf_gm, cbf_wm, gm, wm, *, threshold: float = REGIONAL_THRESHOLD) -> dict:
    """Mean PV-corrected GM and WM CBF over voxels with that tissue's fraction
    above ``threshold`` (estimated voxels only; NaN where there are none)."""
    out = {}
    for key, values, frac in (("pvc_gm_cbf_mean", cbf_gm, gm), ("pvc_wm_cbf_mean", cbf_wm, wm)):
        values = np.asarray(values, float)
        sel = (np.asarray(frac) > threshold) & np.isfinite(values)
        out[key] = float(values[sel].mean()) if sel.any() else float("nan")
    return out
