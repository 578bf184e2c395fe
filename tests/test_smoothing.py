"""The shared Gaussian kernels: a FWHM's sigma, and smoothing inside a mask."""

import numpy as np
import pytest
from scipy import ndimage

from asl_pipeline.smoothing import FWHM_PER_SIGMA, fwhm_to_sigma, smooth_in_mask


def _measured_fwhm(profile) -> float:
    """Full width at half maximum (samples) of a peaked profile, by linear
    interpolation of its two half-maximum crossings."""
    half = profile.max() / 2.0
    above = np.nonzero(profile >= half)[0]
    lo, hi = above[0], above[-1]
    left = lo - 1 + (half - profile[lo - 1]) / (profile[lo] - profile[lo - 1])
    right = hi + (profile[hi] - half) / (profile[hi] - profile[hi + 1])
    return right - left


def test_fwhm_to_sigma_gives_a_kernel_of_that_width_in_mm():
    assert FWHM_PER_SIGMA == pytest.approx(2.354820045)
    zooms = (1.0, 1.25, 2.0)
    sigma = fwhm_to_sigma(8.0, zooms)
    np.testing.assert_allclose(sigma, 8.0 / 2.354820045 / np.array(zooms))
    impulse = np.zeros((81, 81, 41))
    impulse[40, 40, 20] = 1.0
    blurred = ndimage.gaussian_filter(impulse, sigma, truncate=6.0)
    widths_mm = [
        _measured_fwhm(blurred[:, 40, 20]) * zooms[0],
        _measured_fwhm(blurred[40, :, 20]) * zooms[1],
        _measured_fwhm(blurred[40, 40, :]) * zooms[2],
    ]
    np.testing.assert_allclose(widths_mm, 8.0, rtol=0.01)  # sampled, so within 1%


def test_fwhm_to_sigma_takes_one_fwhm_per_axis_in_voxels_by_default():
    np.testing.assert_allclose(fwhm_to_sigma((2.0, 2.0, 0.0)), [0.8493218, 0.8493218, 0.0])
    assert float(fwhm_to_sigma(2.0)) == pytest.approx(0.8493218)


def test_smooth_in_mask_keeps_a_constant_and_ignores_the_outside():
    mask = np.zeros((12, 12, 6), bool)
    mask[3:9, 3:9, 1:5] = True
    volume = np.where(mask, 50.0, 1000.0)  # a bright outside must not leak in
    out = smooth_in_mask(volume, mask, 1.5)
    np.testing.assert_allclose(out[mask], 50.0)  # no fading at the mask's edge
    step = np.where(mask, np.where(np.arange(12)[:, None, None] < 6, 40.0, 60.0), 0.0)
    blurred = smooth_in_mask(step, mask, (1.0, 1.0, 0.0))
    assert 40.0 < blurred[5, 5, 2] < 50.0 < blurred[6, 5, 2] < 60.0
    np.testing.assert_allclose(blurred[:, :, 2][mask[:, :, 2]].mean(), 50.0, atol=1e-9)
