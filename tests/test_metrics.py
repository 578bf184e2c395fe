"""Known-answer tests of the denoising evaluation metrics."""

import numpy as np
import pytest
from scipy import ndimage

from asl_pipeline.metrics import (
    best_slice,
    gm_wm_contrast,
    psnr,
    snr,
    ssim,
    ssim_map,
    voxelwise_correlation,
)


def test_psnr_known_answer_and_mask():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 10, (20, 20, 3))
    ref[0, 0, 0], ref[1, 1, 1] = 0.0, 10.0  # range exactly 10
    est = ref + 1.0  # MSE = 1 -> PSNR = 20 log10(10) = 20 dB
    assert psnr(est, ref) == pytest.approx(20.0)
    mask = np.zeros(ref.shape, bool)
    mask[:10] = True
    mask[0, 0, 0] = mask[1, 1, 1] = True
    est2 = est.copy()
    est2[~mask] += 100.0  # errors outside the mask do not count
    assert psnr(est2, ref, mask) == pytest.approx(20.0)
    assert psnr(est, ref, data_range=100.0) == pytest.approx(40.0)
    assert psnr(ref, ref) == np.inf


def test_ssim_constant_images_closed_form():
    a, b, peak = 40.0, 30.0, 100.0
    smap = ssim_map(np.full((31, 31), a), np.full((31, 31), b), data_range=peak)
    c1 = (0.01 * peak) ** 2
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)  # variance terms give (c2/c2) = 1
    assert smap[15, 15] == pytest.approx(expected, rel=1e-9)


def test_ssim_matches_brute_force_window():
    rng = np.random.default_rng(1)
    x = rng.normal(50, 10, (25, 25))
    y = x + rng.normal(0, 5, x.shape)
    peak = 80.0
    smap = ssim_map(x, y, data_range=peak, sigma=1.5)
    # explicit Gaussian-weighted window at one interior pixel
    r = int(3.5 * 1.5 + 0.5)
    g = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    i, j = 12, 13
    px = x[i - r : i + r + 1, j - r : j + r + 1]
    py = y[i - r : i + r + 1, j - r : j + r + 1]
    mx, my = (w * px).sum(), (w * py).sum()
    vx = (w * px * px).sum() - mx**2
    vy = (w * py * py).sum() - my**2
    cxy = (w * px * py).sum() - mx * my
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert smap[i, j] == pytest.approx(expected, rel=1e-9)


def test_ssim_identity_noise_and_slicewise():
    rng = np.random.default_rng(2)
    ref = ndimage.gaussian_filter(rng.normal(50, 20, (30, 30, 4)), (2, 2, 0))
    mask = np.zeros(ref.shape, bool)
    mask[5:25, 5:25] = True
    assert ssim(ref, ref, mask) == pytest.approx(1.0)
    low = ssim(ref + rng.normal(0, 2, ref.shape), ref, mask)
    high = ssim(ref + rng.normal(0, 10, ref.shape), ref, mask)
    assert 1.0 > low > high > 0.0
    # slice-wise: the SSIM of a volume is the mask-weighted mean of its slices' SSIMs
    est = ref + rng.normal(0, 5, ref.shape)
    peak = float(ref[mask].max() - ref[mask].min())
    per = [ssim(est[..., k], ref[..., k], mask[..., k], data_range=peak) for k in range(4)]
    assert ssim(est, ref, mask) == pytest.approx(np.mean(per))


def test_snr_and_contrast_known_answers():
    img = np.zeros((10, 10, 3))
    gm = np.zeros(img.shape, bool)
    wm = np.zeros(img.shape, bool)
    gm[:5, :, 1] = True
    wm[5:, :, 1] = True
    img[gm] = 60.0
    img[5:, :, 1] = np.where(np.arange(10) % 2, 18.0, 22.0)  # WM mean 20, deviations +-2
    n = wm.sum()
    sd = 2.0 * np.sqrt(n / (n - 1))
    assert best_slice(gm, wm) == 1
    assert snr(img, gm, wm) == pytest.approx(60.0 / sd)
    assert snr(img[:, :, 1], gm[:, :, 1], wm[:, :, 1]) == pytest.approx(60.0 / sd)
    assert gm_wm_contrast(img, gm, wm) == pytest.approx(3.0)
    # probability maps are thresholded (0.7 by default)
    assert gm_wm_contrast(img, gm * 0.9, wm * 0.8) == pytest.approx(3.0)


def test_voxelwise_correlation_known_answers():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 4, 5))
    y = np.empty_like(x)
    y[:, :2] = 2.0 * x[:, :2] + 1.0
    y[:, 2:] = -x[:, 2:]
    r = voxelwise_correlation(x, y)
    assert np.allclose(r[:2], 1.0) and np.allclose(r[2:], -1.0)
    z = rng.normal(size=x.shape)
    r2 = voxelwise_correlation(x, z, mask=np.arange(20).reshape(4, 5) < 10)
    assert r2[1, 2] == pytest.approx(np.corrcoef(x[:, 1, 2], z[:, 1, 2])[0, 1])
    assert np.isnan(r2[3, 4])
    with pytest.raises(ValueError):
        voxelwise_correlation(x[:2], y[:2])
