"""Known answers for the QC metrics."""

import numpy as np
import pytest

from asl_pipeline import qc


def test_dice():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert qc.dice(a, b) == pytest.approx(0.5)
    assert qc.dice(a, a) == 1.0
    assert qc.dice(np.zeros(3), np.zeros(3)) == 1.0


def test_dvars_known_answer():
    series = np.ones((2, 2, 1, 3)) * 100.0
    series[..., 2] += 3.0  # every voxel up by 3 at t=2
    mask = np.ones((2, 2, 1), bool)
    raw = qc.dvars(series, mask, percent=False)
    np.testing.assert_allclose(raw, [0.0, 0.0, 3.0])
    pct = qc.dvars(series, mask)
    np.testing.assert_allclose(pct, [0.0, 0.0, 300.0 / 101.0])


def test_tissue_stats():
    gm = np.array([1.0, 1.0, 0.0, 0.0])
    wm = 1 - gm
    cbf = np.array([60.0, -10.0, 20.0, 20.0])
    s = qc.tissue_cbf_stats(cbf, gm, wm)
    assert s["gm_cbf_mean"] == 25.0
    assert s["wm_cbf_mean"] == 20.0
    assert s["gm_wm_ratio"] == 1.25
    assert s["gm_negative_percent"] == 50.0


def test_tissue_att_stats():
    gm = np.array([0.8, 0.8, 0.0, 0.0, 0.5])
    wm = np.array([0.0, 0.0, 0.95, 0.95, 0.5])  # the last voxel is in neither mask
    att = np.array([0.8, 1.2, 0.1, 1.5, 9.0])
    failed = np.array([0, 0, 1, 0, 1])
    s = qc.tissue_att_stats(att, gm, wm, failed)
    assert s["gm_mean"] == pytest.approx(1.0)
    assert s["wm_mean"] == pytest.approx(0.8)  # failed fits count, at their best value
    assert s["gm_failed_percent"] == 0.0
    assert s["wm_failed_percent"] == 50.0
    assert set(qc.tissue_att_stats(att, gm, wm)) == {"gm_mean", "wm_mean"}
    empty = qc.tissue_att_stats(att, np.zeros(5), wm, failed)
    assert np.isnan(empty["gm_mean"]) and np.isnan(empty["gm_failed_percent"])


def _tissue_phantom():
    rng = np.random.default_rng(0)
    shape = (24, 24, 12)
    x = np.indices(shape)[0]
    gm = np.clip((x % 8) / 4.0 - 0.5, 0, 1)
    wm = np.clip(1 - gm - 0.05, 0, 1)
    csf = np.clip(1 - gm - wm, 0, 1)
    return rng, gm, wm, csf


def test_qei_orders_maps_by_quality():
    rng, gm, wm, csf = _tissue_phantom()
    clean = 60 * gm + 22 * wm
    noisy = clean + rng.normal(0, 40, gm.shape)
    garbage = rng.normal(0, 40, gm.shape)
    q_clean = qc.qei(clean, gm, wm, csf, zooms=(3, 3, 3))
    q_noisy = qc.qei(noisy, gm, wm, csf, zooms=(3, 3, 3))
    q_garbage = qc.qei(garbage, gm, wm, csf, zooms=(3, 3, 3))
    assert 0.0 <= q_garbage < q_noisy < q_clean <= 1.0


def test_qei_formula_components():
    # a perfectly structured map with no dispersion and no negative GM gives
    # cbrt(1 - exp(alpha)) when CBF equals the pseudo-CBF in every tissue and
    # tissues are pure (no within-tissue variance after smoothing a constant)
    shape = (10, 10, 10)
    gm = np.zeros(shape)
    gm[:5] = 1.0
    wm = 1.0 - gm
    csf = np.zeros(shape)
    cbf = 2.5 * gm + wm
    # smoothing blurs the boundary; the index stays close to the ideal value
    ideal = np.cbrt(1 - np.exp(qc.QEI_CONSTANTS["alpha"]))
    assert qc.qei(cbf * 20, gm, wm, csf) == pytest.approx(ideal, abs=0.05)


def test_intensity_mask_finds_the_bright_object():
    rng = np.random.default_rng(3)
    img = rng.normal(5, 1, (30, 30, 10))
    x, y, z = np.indices(img.shape)
    ball = (x - 15) ** 2 + (y - 15) ** 2 + 4 * (z - 5) ** 2 < 100
    img[ball] += 100
    img[ball & (x == 15) & (y == 15)] = 0  # a dark hole inside is filled
    img[2, 2, 2] = 150  # an isolated bright voxel is dropped
    mask = qc.intensity_mask(img)
    assert qc.dice(mask, ball) > 0.99
    assert not mask[2, 2, 2]
