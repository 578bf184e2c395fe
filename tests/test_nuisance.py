"""Nuisance regression keeps perfusion; smoothing honours the voxel size."""

import numpy as np
import pytest

from asl_pipeline import nuisance as nu
from asl_pipeline.errors import ASLInputError


def _series(seed=0, n=40, shape=(12, 12, 6)):
    rng = np.random.default_rng(seed)
    types = ["control", "label"] * (n // 2)
    zig = np.where(np.array(types) == "control", 1.0, -1.0)
    base = rng.uniform(800, 1200, shape)
    perf = np.zeros(shape)
    perf[3:9, 3:9, 1:5] = rng.uniform(5, 15, (6, 6, 4))  # Delta M / 2
    motion = np.column_stack(
        [np.cumsum(rng.normal(0, 0.05, n)) for _ in range(3)]
        + [np.cumsum(rng.normal(0, 0.001, n)) for _ in range(3)]
    )
    glob = rng.normal(0, 1, n)
    loads_m = rng.normal(0, 20, shape + (6,))
    loads_g = rng.uniform(5, 10, shape)
    series = (
        base[..., None]
        + perf[..., None] * zig
        + np.einsum("xyzk,nk->xyzn", loads_m, motion)
        + loads_g[..., None] * glob
    )
    noise = rng.normal(0, 1.0, series.shape)
    return series + noise, noise, perf, motion, types, zig


def test_regression_keeps_perfusion_and_removes_nuisance():
    series, noise, perf, motion, types, zig = _series()
    mask = np.ones(series.shape[:3], bool)
    cleaned, design, names = nu.denoise_asl(
        series, mask, types, (3.0, 3.0, 5.0), motion_params=motion, fwhm_mm=0.0
    )
    assert names[:6] == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    assert names[-1] == "global_signal"
    # every regressor is orthogonal to the zig-zag
    np.testing.assert_allclose(zig @ (design - design.mean(0)), 0, atol=1e-8)
    # mean control - label difference is exactly preserved
    dm_before = (series * zig).sum(-1) / (len(zig) / 2)
    dm_after = (cleaned * zig).sum(-1) / (len(zig) / 2)
    np.testing.assert_allclose(dm_after, dm_before, atol=1e-8)
    # voxel means kept
    np.testing.assert_allclose(cleaned.mean(-1), series.mean(-1), atol=1e-8)
    # nuisance variance gone: the residual around mean + perfusion is close to
    # the noise (SD 1) while it was far larger before
    model = series.mean(-1, keepdims=True) + perf[..., None] * zig
    before = (series - model).std()
    after = (cleaned - model).std()
    assert before > 5
    assert after < 1.1


def test_csf_regressor_is_used():
    series, *_, types, zig = _series(seed=2)
    csf = np.zeros(series.shape[:3])
    csf[:2] = 1.0
    design, names = nu.build_confounds(
        series, np.ones(series.shape[:3], bool), types, csf_prob=csf, global_signal=False
    )
    assert names == ["csf"]
    raw = series[:2].reshape(-1, len(types)).mean(0)
    zc = zig - zig.mean()
    expected = raw - zc * (zc @ (raw - raw.mean())) / (zc @ zc)
    np.testing.assert_allclose(design[:, 0], expected, atol=1e-9)


def test_smoothing_fwhm_in_mm_with_anisotropic_voxels():
    shape = (41, 41, 21)
    zooms = (2.0, 2.0, 4.0)
    img = np.zeros(shape)
    img[20, 20, 10] = 1.0
    out = nu.smooth(img, zooms, fwhm_mm=8.0, mode="constant")
    np.testing.assert_allclose(out.sum(), 1.0, rtol=1e-6)
    sigma_mm = 8.0 / np.sqrt(8 * np.log(2))
    for axis, zoom in enumerate(zooms):
        prof = out.sum(axis=tuple(a for a in range(3) if a != axis))
        x = (np.arange(shape[axis]) - shape[axis] // 2) * zoom
        np.testing.assert_allclose(np.sqrt((prof * x**2).sum()), sigma_mm, rtol=0.05)


def test_bad_input():
    series, *_, types, _ = _series(n=8)
    with pytest.raises(ASLInputError, match="mask"):
        nu.denoise_asl(series, np.ones((3, 3, 3), bool), types, (3, 3, 5), file="x_asl.nii.gz")
    with pytest.raises(ASLInputError, match="motion"):
        nu.denoise_asl(
            series,
            np.ones(series.shape[:3], bool),
            types,
            (3, 3, 5),
            motion_params=np.zeros((3, 6)),
        )
    with pytest.raises(ASLInputError, match="4D"):
        nu.denoise_asl(series[..., 0], np.ones(series.shape[:3], bool), types, (3, 3, 5))
