"""Gaussian kernels shared by the stages.

:func:`fwhm_to_sigma` turns a FWHM into the sigma that
:func:`scipy.ndimage.gaussian_filter` takes, and :func:`smooth_in_mask`
smooths inside a mask without fading at its edge. Motion, nuisance
smoothing, QC, partial volumes, distortion correction, the multi-PLD ATT
and the simulator all take their kernels from here. The module imports only
numpy and scipy, so any of them can use it without an import cycle.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: A Gaussian's FWHM over its sigma, ``sqrt(8 ln 2)`` (about 2.3548).
FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))


def fwhm_to_sigma(fwhm, zooms=1.0) -> np.ndarray:
    """Gaussian sigma in voxels, per axis, of a FWHM.

    ``fwhm`` is one value or one per axis, in the unit of ``zooms`` (the voxel
    sizes, mm); with ``zooms`` 1 (the default) it is in voxels.
    """
    return np.asarray(fwhm, dtype=float) / FWHM_PER_SIGMA / np.asarray(zooms, dtype=float)


def smooth_in_mask(volume, mask, sigma, *, floor: float = 1e-6) -> np.ndarray:
    """Gaussian smoothing of ``volume`` normalised by the smoothed ``mask``.

    Voxels outside the mask do not enter, and the edge of the mask does not
    fade: each voxel is the Gaussian-weighted mean of the mask voxels around
    it. ``sigma`` is in voxels (a number or one per axis); the mask's
    smoothed weight is floored at ``floor``. Returned on the whole grid
    (outside the mask it extrapolates from the nearest mask voxels).
    """
    mask = np.asarray(mask, dtype=bool)
    num = ndimage.gaussian_filter(np.where(mask, volume, 0.0), sigma)
    den = ndimage.gaussian_filter(mask.astype(float), sigma)
    return num / np.maximum(den, floor)
