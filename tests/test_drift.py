"""Scanner gain drift (asl_pipeline.drift) and its option on the CBF interfaces."""

import json

import nibabel as nb
import numpy as np
import pytest

from asl_pipeline import cbf, drift
from asl_pipeline.interfaces.cbf import ComputeCBF
from tests.test_cbf import _meta as pcasl_sidecar

SHAPE = (8, 8, 4)
N_PAIRS = 40


def _series(rng, gain, *, order="control-first", static=None, deltam=None, noise=0.0):
    """Control/label series whose static signal carries the per-volume ``gain``.

    The static signal is 250 times ΔM (WM without background suppression)."""
    n_vol = 2 * N_PAIRS
    static = rng.uniform(800.0, 1200.0, SHAPE) if static is None else static
    deltam = static / 250.0 if deltam is None else deltam
    first, second = ("control", "label") if order == "control-first" else ("label", "control")
    vtypes = [first, second] * N_PAIRS
    series = np.empty(SHAPE + (n_vol,))
    for t, kind in enumerate(vtypes):
        signal = static if kind == "control" else static - deltam
        series[..., t] = signal * gain[t] + noise * rng.standard_normal(SHAPE)
    return series, vtypes, deltam


def _mean_deltam(series, vtypes):
    return cbf.deltam_series(series, vtypes).deltam.mean(axis=3)


@pytest.mark.parametrize("order", ["control-first", "label-first"])
def test_a_linear_drift_biases_every_pair_alike_and_the_trend_removes_it(order):
    rng = np.random.default_rng(3)
    gain = 1.0 - 0.01 * np.linspace(0.0, 1.0, 2 * N_PAIRS)  # -1% over the run
    series, vtypes, true = _series(rng, gain, order=order)
    level = true * gain.mean()  # the run's mean gain is kept: the reference
    before = _mean_deltam(series, vtypes) / level - 1
    # the second volume of a pair reads 1% / 79 of the static signal lower: the
    # difference is off by 250 times that, 3.2% of ΔM (negative when label first)
    sign = 1 if order == "control-first" else -1
    np.testing.assert_allclose(before, sign * 0.01 / 79 * 250, rtol=0.02)

    trend = drift.gain_trend(series, vtypes)
    assert trend.change == pytest.approx(-0.01, abs=2e-4)
    after = _mean_deltam(drift.remove_gain_drift(series, trend), vtypes) / level - 1
    assert np.abs(after).max() < 0.002
    assert trend.to_dict()["PairsFitted"] == N_PAIRS


def test_a_drift_that_slows_down_is_followed():
    rng = np.random.default_rng(4)
    x = np.linspace(0.0, 1.0, 2 * N_PAIRS)
    gain = 1.0 + 0.02 * (1 - (1 - x) ** 2)  # +2%, most of it early
    series, vtypes, true = _series(rng, gain)
    trend = drift.gain_trend(series, vtypes)
    np.testing.assert_allclose(trend.gain / trend.gain[0], gain / gain[0], atol=2e-4)
    after = _mean_deltam(drift.remove_gain_drift(series, trend), vtypes) / (true * gain.mean())
    assert np.abs(after - 1).max() < 0.002


def test_without_drift_the_series_keeps_its_mean_within_its_noise():
    rng = np.random.default_rng(5)
    series, vtypes, true = _series(rng, np.ones(2 * N_PAIRS), noise=8.0)
    trend = drift.gain_trend(series, vtypes)
    assert abs(trend.change) < 2e-3
    plain = _mean_deltam(series, vtypes)
    corrected = _mean_deltam(drift.remove_gain_drift(series, trend), vtypes)
    se = 8.0 * np.sqrt(2 / N_PAIRS)  # per voxel, of the 40-pair mean
    assert np.abs(corrected - plain).max() < 0.1 * se


def test_corrupted_volumes_do_not_tilt_the_trend():
    rng = np.random.default_rng(6)
    gain = 1.0 - 0.01 * np.linspace(0.0, 1.0, 2 * N_PAIRS)
    series, vtypes, _ = _series(rng, gain, noise=2.0)
    series[..., 76] *= 0.85  # a late control: a global dip of the whole volume
    series[:, :, :2, 70] *= 0.5  # a slab dropout of a label
    trend = drift.gain_trend(series, vtypes)
    assert trend.change == pytest.approx(-0.01, abs=1e-3)
    assert not trend.fitted[38]  # the pair of volume 76
    assert trend.fitted.sum() >= N_PAIRS - 2


def test_multi_pld_levels_are_not_taken_for_drift():
    # background suppression leaves a different static signal at each delay
    rng = np.random.default_rng(7)
    plds = np.repeat(np.tile([0.5, 1.0, 1.5, 2.0], N_PAIRS // 4), 2)
    level = {0.5: 0.2, 1.0: 0.35, 1.5: 0.5, 2.0: 0.6}
    gain = 1.0 + 0.015 * np.linspace(0.0, 1.0, 2 * N_PAIRS)
    series, vtypes, _ = _series(rng, gain)
    for t, p in enumerate(plds):
        series[..., t] *= level[p]
    trend = drift.gain_trend(series, vtypes, plds=plds)
    assert trend.change == pytest.approx(0.015, abs=3e-4)
    # read as one level, the delays' cycle would be fitted as a trend
    assert abs(drift.gain_trend(series, vtypes).change - 0.015) > 3e-4


def test_series_without_enough_pairs_are_left_alone():
    rng = np.random.default_rng(8)
    series = rng.uniform(1.0, 2.0, SHAPE + (6,))
    for vtypes in (["deltam"] * 6, ["control", "label"] * 3):
        trend = drift.gain_trend(series, vtypes)
        assert np.all(trend.gain == 1.0) and trend.change == 0.0
        assert not trend.to_dict()["Applied"]
        np.testing.assert_array_equal(drift.remove_gain_drift(series, trend), series)


def test_auto_is_the_trend_for_single_pld_runs_without_background_suppression():
    assert drift.resolve("auto", multi_pld=False, background_suppression=False) == "trend"
    assert drift.resolve("auto", multi_pld=False, background_suppression=True) == "none"
    assert drift.resolve("auto", multi_pld=True, background_suppression=False) == "none"
    assert drift.resolve("trend", multi_pld=True, background_suppression=True) == "trend"
    with pytest.raises(ValueError, match="drift correction"):
        drift.resolve("linear", multi_pld=False, background_suppression=False)


def test_compute_cbf_removes_the_drift_on_request_and_says_so(tmp_path):
    rng = np.random.default_rng(9)
    gain = 1.0 - 0.01 * np.linspace(0.0, 1.0, 2 * N_PAIRS)
    series, vtypes, _ = _series(rng, gain)
    affine = np.diag([3.0, 3.0, 4.0, 1.0])
    asl = tmp_path / "sub-01_asl.nii.gz"
    nb.Nifti1Image(series.astype(np.float32), affine).to_filename(asl)
    m0 = tmp_path / "m0.nii.gz"
    nb.Nifti1Image(np.full(SHAPE, 1000.0, np.float32), affine).to_filename(m0)
    (tmp_path / "ctx.tsv").write_text("volume_type\n" + "\n".join(vtypes) + "\n")
    meta = pcasl_sidecar()  # 3D pCASL, no background suppression
    means = {}
    for method in ("none", "trend"):
        cwd = tmp_path / method
        cwd.mkdir()
        node = ComputeCBF(
            asl_file=str(asl),
            m0_file=str(m0),
            metadata=meta,
            aslcontext=str(tmp_path / "ctx.tsv"),
            drift_correction=method,
        )
        out = node.run(cwd=str(cwd)).outputs
        means[method] = np.asanyarray(nb.load(out.mean_cbf).dataobj)
        sidecar = json.loads(open(out.mean_cbf_json).read())
        assert ("GainDriftCorrection" in sidecar) == (method == "trend")
    assert sidecar["GainDriftCorrection"]["RelativeChange"] == pytest.approx(-0.01, abs=2e-4)
    ratio = means["none"] / means["trend"]
    np.testing.assert_allclose(ratio, 1 + 0.01 / 79 * 250, rtol=2e-3)


def _with_m0_volumes(series, vtypes, gain_m0, m0, *, last=False):
    """``series`` with M0 volumes in front (or at the end), read at the gains ``gain_m0``."""
    m0_vols = np.stack([m0 * g for g in gain_m0], axis=3)
    m0_types = ["m0scan"] * len(gain_m0)
    if last:
        return np.concatenate([series, m0_vols], axis=3), vtypes + m0_types
    return np.concatenate([m0_vols, series], axis=3), m0_types + vtypes


@pytest.mark.parametrize("m0_read", ["first", "last"])
def test_an_m0_read_within_the_series_sets_the_reference_gain(m0_read):
    # M0Type Included: the M0 volumes carry the gain of their own time, so the
    # differences must be put on that gain, not on the run's mean one
    rng = np.random.default_rng(10)
    n_vol = 2 + 2 * N_PAIRS
    gain = 1.0 - 0.02 * np.linspace(0.0, 1.0, n_vol)  # -2% over the run
    at_m0 = [0, 1] if m0_read == "first" else [n_vol - 2, n_vol - 1]
    at_pairs = np.setdiff1d(np.arange(n_vol), at_m0)
    static = rng.uniform(800.0, 1200.0, SHAPE)
    pairs, vtypes, true = _series(rng, gain[at_pairs], static=static)
    series, vtypes = _with_m0_volumes(pairs, vtypes, gain[at_m0], static, last=m0_read == "last")
    m0 = series[..., at_m0].mean(axis=3)
    truth = true / static
    # the run's mean gain is 1% off the M0's: that reference read CBF 1% off
    run_mean_bias = gain[at_pairs].mean() / gain[at_m0].mean() - 1
    assert abs(run_mean_bias) == pytest.approx(0.01, abs=5e-4)

    for m0_volumes, expected_bias in ((None, run_mean_bias), (at_m0, 0.0)):
        trend = drift.gain_trend(series, vtypes, m0_volumes=m0_volumes)
        assert np.all(trend.gain[at_m0] == 1.0)  # the M0 volumes are not divided
        ratio = _mean_deltam(drift.remove_gain_drift(series, trend), vtypes) / m0 / truth
        # the trend is read at the pair volume next to the M0's: 0.04% of gain off here
        np.testing.assert_allclose(ratio - 1, expected_bias, atol=4e-4)
    assert trend.to_dict()["Reference"] == "M0 volumes"


def test_compute_cbf_puts_the_differences_on_the_gain_of_included_m0_volumes(tmp_path):
    rng = np.random.default_rng(11)
    n_vol = 2 + 2 * N_PAIRS
    static = rng.uniform(800.0, 1200.0, SHAPE)
    affine = np.diag([3.0, 3.0, 4.0, 1.0])
    meta = pcasl_sidecar(M0Type="Included")
    maps = {}
    for name, slope, method in (("steady", 0.0, "none"), ("drifting", -0.02, "trend")):
        gain = 1.0 + slope * np.linspace(0.0, 1.0, n_vol)
        pairs, vtypes, _ = _series(np.random.default_rng(12), gain[2:], static=static)
        series, vtypes = _with_m0_volumes(pairs, vtypes, gain[:2], static)
        asl = tmp_path / f"{name}_asl.nii.gz"
        nb.Nifti1Image(series.astype(np.float32), affine).to_filename(asl)
        context = tmp_path / f"{name}_aslcontext.tsv"
        context.write_text("volume_type\n" + "\n".join(vtypes) + "\n")
        cwd = tmp_path / name
        cwd.mkdir()
        node = ComputeCBF(
            asl_file=str(asl), metadata=meta, aslcontext=str(context), drift_correction=method
        )
        out = node.run(cwd=str(cwd)).outputs
        maps[name] = np.asanyarray(nb.load(out.mean_cbf).dataobj)
        sidecar = json.loads(open(out.mean_cbf_json).read())
    assert sidecar["GainDriftCorrection"]["Reference"] == "M0 volumes"
    np.testing.assert_allclose(maps["drifting"] / maps["steady"], 1.0, atol=6e-4)
