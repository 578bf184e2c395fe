"""The tissue classes' mean curves (asl_pipeline.multipld): known answers."""

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from asl_pipeline import kinetics as K
from asl_pipeline import multipld
from asl_pipeline.cbf import average_repeats, fit_multi_pld, quant_params
from asl_pipeline.rundesc import describe_metadata

PLDS = [0.5, 1.0, 1.5, 2.0, 2.5]
SHAPE = (12, 10, 4)


def _params(plds=PLDS, **sidecar):
    """Quantification parameters of a PCASL run at ``plds``; ``sidecar`` adds or
    replaces fields of its metadata."""
    meta = {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": np.repeat(plds, 2).tolist(),
        "LabelingDuration": 1.8,
        "M0Type": "Estimate",
        "M0Estimate": 1.0,
        "BackgroundSuppression": False,
        "MRAcquisitionType": "3D",
        "MagneticFieldStrength": 3,
    } | sidecar
    return quant_params(describe_metadata(meta, ["control", "label"] * len(plds)))


def _subject(t1_tissue, *, plds=PLDS, repeats=4, noise=0.0, seed=0):
    """GM in the first half of x (CBF 60, ATT 0.8-1.3 s), WM elsewhere (CBF 20,
    ATT 1.2-1.6 s); every voxel decays with ``t1_tissue`` after arrival."""
    rng = np.random.default_rng(seed)
    gm = np.zeros(SHAPE)
    gm[: SHAPE[0] // 2] = 1.0
    wm = 1.0 - gm
    cbf = np.where(gm > 0, 60.0, 20.0)
    att = np.where(gm > 0, rng.uniform(0.8, 1.3, SHAPE), rng.uniform(1.2, 1.6, SHAPE))
    delays = np.repeat(plds, repeats)
    dm = K.pcasl_deltam(
        cbf[..., None], att[..., None], delays, 1.8, 1.0, alpha=0.85, t1_tissue=t1_tissue
    )
    dm = dm + noise * rng.standard_normal(dm.shape)
    return dm, delays, gm, wm, cbf


@pytest.mark.parametrize("t1", [1.2, 1.6])
def test_gm_curve_finds_the_t1_the_data_decay_with(t1):
    dm, delays, gm, wm, cbf = _subject(t1, noise=2e-4)
    params = _params()
    mask = np.ones(SHAPE, bool)
    found, kin = multipld.gm_curve_t1(dm, delays, np.ones(SHAPE), params, gm, mask)
    assert kin.t1_fitted["gm"] and abs(found - t1) < 0.05
    # no WM curve is fitted
    assert kin.voxels == {"gm": int(gm.sum()), "wm": 0} and kin.att["wm"] is None
    assert kin.to_dict()["GM"]["T1TissueFitted"] is True
    # four repeats per delay: the jackknife measured the T1's error, and it is small
    assert 0.0 < kin.t1_se["gm"] < 0.02 and kin.t1_trusted("gm")
    # with that T1 the voxel fit reads GM CBF right; with the fixed 1.4 s it does not
    right, _, _ = fit_multi_pld(dm, delays, 1.0, replace(params, t1_tissue=found))
    fixed, _, _ = fit_multi_pld(dm, delays, 1.0, params)
    g = gm > 0
    assert abs(right[g].mean() / 60.0 - 1) < 0.02
    assert abs(fixed[g].mean() / 60.0 - 1) > 0.05


def test_fit_tissue_curves_fits_both_tissues_on_request():
    dm, delays, gm, wm, _ = _subject(1.5)
    params = _params()
    from asl_pipeline.cbf import effective_delays

    mean, uniq, _ = average_repeats(dm, delays)
    kin = multipld.fit_tissue_curves(
        mean, effective_delays(params, uniq, SHAPE[2]), np.ones(SHAPE), gm, wm,
        np.ones(SHAPE, bool), params, fit_t1=("gm", "wm"),
    )  # fmt: skip
    # WM's arrivals (1.2-1.6 s) straddle the 1.5 s delay: its mean curve is not
    # quite one model's, and its T1 reads 2% long
    for tissue, cbf, tol in (("gm", 60.0, 0.01), ("wm", 20.0, 0.05)):
        assert kin.t1_fitted[tissue] and abs(kin.t1_tissue[tissue] - 1.5) < tol
        assert abs(kin.cbf[tissue] / cbf - 1) < 0.03


def test_too_few_gm_voxels_or_delays_keep_the_fixed_t1():
    dm, delays, gm, wm, _ = _subject(1.6)
    params = _params()
    mask = np.ones(SHAPE, bool)
    few = np.zeros(SHAPE)
    few[0, :4, :] = 1.0  # 16 voxels, under CLASS_MIN_VOXELS
    t1, kin = multipld.gm_curve_t1(dm, delays, np.ones(SHAPE), params, few, mask)
    assert t1 == params.t1_tissue and not kin.t1_fitted["gm"] and kin.cbf["gm"] is None
    # two delays cannot show a T1 beside CBF and ATT
    dm, delays, gm, wm, _ = _subject(1.6, plds=[1.0, 2.0])
    t1, kin = multipld.gm_curve_t1(dm, delays, np.ones(SHAPE), _params([1.0, 2.0]), gm, mask)
    assert t1 == params.t1_tissue and not kin.t1_fitted["gm"]
    assert kin.att["gm"] is not None  # CBF and ATT still come from the curve


def test_jackknife_error_matches_the_t1_spread_over_noise_draws():
    """The delete-one-repeat jackknife's standard error is what a T1 would vary
    by if the scan were repeated: over 20 noise draws its median is within a
    factor 1.5 of the draws' standard deviation."""
    params, mask = _params(), np.ones(SHAPE, bool)
    t1s, errors = [], []
    for seed in range(20):
        dm, delays, gm, _, _ = _subject(1.6, noise=8e-3, seed=seed, repeats=6)
        _, kin = multipld.gm_curve_t1(dm, delays, np.ones(SHAPE), params, gm, mask)
        assert kin.t1_fitted["gm"]
        t1s.append(kin.t1_tissue["gm"])
        errors.append(kin.t1_se["gm"])
    ratio = np.median(errors) / np.std(t1s, ddof=1)
    assert 1 / 1.5 < ratio < 1.5


def test_an_uncertain_gm_curve_t1_gives_way_to_the_fixed_one():
    params, mask = _params(), np.ones(SHAPE, bool)
    dm, delays, gm, _, _ = _subject(1.6, noise=3e-2, seed=0, repeats=6)
    t1, kin = multipld.gm_curve_t1(dm, delays, np.ones(SHAPE), params, gm, mask)
    assert kin.t1_fitted["gm"] and kin.t1_se["gm"] > multipld.T1_MAX_SE
    assert not kin.t1_trusted("gm") and t1 == params.t1_tissue
    assert kin.to_dict()["GM"]["T1TissueStandardError"] > multipld.T1_MAX_SE
    # two repeats per delay are too few for the jackknife: the fitted T1 is used
    dm, delays, gm, _, _ = _subject(1.6, noise=2e-4, repeats=2)
    t1, kin = multipld.gm_curve_t1(dm, delays, np.ones(SHAPE), params, gm, mask)
    assert kin.t1_se == {} and kin.t1_trusted("gm") and t1 == kin.t1_tissue["gm"]
    assert kin.to_dict()["GM"]["T1TissueStandardError"] is None


def test_blood_t1_after_arrival_fits_no_tissue_t1():
    dm, delays, gm, wm, _ = _subject(1.6)
    params = _params()
    t1, kin = multipld.gm_curve_t1(
        dm, delays, np.ones(SHAPE), params, gm, np.ones(SHAPE, bool), t1_after_arrival="blood",
    )  # fmt: skip
    assert t1 == params.t1_tissue and not kin.t1_fitted["gm"]


_SPEC = importlib.util.spec_from_file_location(
    "multipld_regions", Path(__file__).parents[1] / "benchmarks" / "multipld_regions.py"
)
multipld_regions = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(multipld_regions)


def _slice_timed_curves(seed, att_range, m0=1.0):
    """Noise-free 2D pCASL curves at :data:`PLDS` x 3 repeats, each slice with
    its own delays, tissue T1 1.3 s after arrival: CBF uniform in 15-80 and
    ATT in ``att_range``, voxel by voxel. Returns ``(dm, plds, delays, params,
    cbf, att)``, ``delays`` (z, n) the slices' effective delays."""
    rng = np.random.default_rng(seed)
    slice_times = np.linspace(0.0, 0.12, SHAPE[2])
    params = replace(
        _params(MRAcquisitionType="2D", SliceTiming=slice_times.tolist()), t1_tissue=1.3
    )
    cbf = rng.uniform(15.0, 80.0, SHAPE)
    att = rng.uniform(*att_range, SHAPE)
    plds = np.repeat(PLDS, 3)
    delays = plds + slice_times[:, None]
    dm = K.pcasl_deltam(
        cbf[..., None], att[..., None], delays, 1.8, np.asarray(m0)[..., None],
        alpha=params.alpha, t1_tissue=1.3,
    )  # fmt: skip
    return dm, plds, delays, params, cbf, att


@pytest.mark.parametrize("rule", multipld_regions.CBF_RULES)
def test_weighted_delay_of_the_benchmark_reads_noise_free_curves_back(rule):
    """benchmarks/multipld_regions.py's weighted-delay estimate (Dai et al. 2012)
    on noise-free curves of the kinetic model, each slice with its own delays
    (2D): every voxel's ATT and CBF come back. The ATTs lie above every slice's
    shortest delay; below it a pCASL curve has one shape whatever the ATT."""
    dm, plds, delays, params, cbf, att = _slice_timed_curves(3, (0.7, 1.9))
    got_cbf, got_att = multipld_regions.weighted_delay_fit(
        dm, plds, np.ones(SHAPE), params, np.ones(SHAPE, bool), np.full(SHAPE, 1.3), cbf=rule
    )
    assert np.abs(got_att - att).max() < 0.01
    assert np.abs(got_cbf / cbf - 1).max() < 0.01
    with pytest.raises(ValueError, match="least squares, sum"):
        multipld_regions.cbf_at_att(
            dm[0, 0], np.ones(15), att[0, 0], np.full(4, 1.3), params, delays[0], rule="median"
        )


def test_cbf_map_at_att_reads_each_voxel_back_at_its_true_att():
    """Noise-free 2D curves (each slice with its own delays), decaying with the
    apparent tissue T1 after arrival, scaled by a varying M0: at each voxel's
    true ATT its CBF comes back; a voxel with ATT 0 (not fitted) reads 0."""
    m0 = np.random.default_rng(5).uniform(800.0, 1200.0, SHAPE)
    dm, plds, _, params, cbf, att = _slice_timed_curves(4, (0.5, 1.9), m0)
    mean_dm, delays, counts = average_repeats(dm, plds)
    att[2, 3, 1] = 0.0
    got = multipld.cbf_map_at_att(mean_dm, delays, counts, m0, att, params)
    fitted = att > 0
    assert np.abs(got[fitted] / cbf[fitted] - 1).max() < 0.002
    assert got[2, 3, 1] == 0.0
    # the same curves read with one slice's delays for every slice are wrong
    flat = multipld.cbf_map_at_att(mean_dm, delays, counts, m0, att, _params())
    assert np.abs(flat[..., -1][fitted[..., -1]] / cbf[..., -1][fitted[..., -1]] - 1).max() > 0.05


def _pasl_params(tis):
    meta = {
        "ArterialSpinLabelingType": "PASL",
        "PostLabelingDelay": np.repeat(tis, 2).tolist(),
        "BolusCutOffFlag": True,
        "BolusCutOffTechnique": "Q2TIPS",
        "BolusCutOffDelayTime": [0.7, 1.6],
        "M0Type": "Estimate",
        "M0Estimate": 1.0,
        "BackgroundSuppression": False,
        "MRAcquisitionType": "3D",
        "MagneticFieldStrength": 3,
    }
    return quant_params(describe_metadata(meta, ["control", "label"] * len(tis)))


TIS = [0.9, 1.4, 1.9, 2.4, 2.9]


def _pasl_subject(*, noise, seed, repeats=8, shape=(16, 16, 4)):
    """Multi-TI PASL (Q2TIPS, TI1 0.7 s): GM in the first half of x (CBF 60,
    ATT 0.9 s), WM elsewhere (CBF 20, ATT 1.2 s), tissue T1 1.4 s."""
    rng = np.random.default_rng(seed)
    gm = np.zeros(shape, bool)
    gm[: shape[0] // 2] = True
    cbf = np.where(gm, 60.0, 20.0)
    att = np.where(gm, 0.9, 1.2)
    tis = np.repeat(TIS, repeats)
    dm = K.pasl_deltam(cbf[..., None], att[..., None], tis, 0.7, 1.0, alpha=0.98)
    return dm + noise * rng.standard_normal(dm.shape), tis, gm, cbf, att


def test_att_estimate_choice():
    assert multipld.att_estimate_for("auto") == "smoothed"
    assert multipld.att_estimate_for("voxel") == "voxel"
    assert multipld.att_estimate_for("smoothed") == "smoothed"
    with pytest.raises(ValueError, match="auto, voxel, smoothed"):
        multipld.att_estimate_for("median")


def test_smoothed_att_reads_noise_free_data_back():
    """One ATT everywhere, CBF varying voxel by voxel: smoothing leaves the
    curves' shape, so the ATT and every voxel's CBF come back; the voxels of
    the mask's edge and a hole in it included."""
    rng = np.random.default_rng(5)
    shape = (10, 9, 3)
    cbf = rng.uniform(15.0, 80.0, shape)
    tis = np.repeat(TIS, 2)
    params = _pasl_params(TIS)
    dm = K.pasl_deltam(
        cbf[..., None], 1.1, tis, 0.7, 1.0, alpha=params.alpha, t1_after_arrival="blood"
    )
    mask = np.ones(shape, bool)
    mask[4, 4, 1] = False
    got, att, failed = multipld.fit_smoothed_att(
        dm, tis, np.ones(shape), params, mask=mask, t1_after_arrival="blood"
    )
    assert np.abs(att[mask] - 1.1).max() < 0.005
    np.testing.assert_allclose(got[mask], cbf[mask], rtol=0.01)
    assert not failed[mask].any()
    assert got[4, 4, 1] == 0 and att[4, 4, 1] == 0  # outside the mask: not fitted


def test_smoothed_att_keeps_wm_cbf_where_the_voxel_fit_inflates_it():
    """Multi-TI PASL at a WM SNR where each voxel's own fit trades a late ATT
    for a large CBF: the voxel-wise map's WM mean reads far above the truth,
    the smoothed ATT's within 10%; GM within 5% for both."""
    # WM's single differences at SNR 0.3-0.5 at their peak
    dm, tis, gm, cbf, att = _pasl_subject(noise=3e-3, seed=10)
    params = _pasl_params(TIS)
    m0 = np.ones(gm.shape)
    voxel, _, _ = fit_multi_pld(dm, tis, m0, params)
    smoothed, s_att, _ = multipld.fit_smoothed_att(dm, tis, m0, params)
    wm = ~gm
    wm[gm.shape[0] // 2 : gm.shape[0] // 2 + 2] = False  # away from the GM border
    assert voxel[wm].mean() > 1.25 * 20.0  # +34%
    assert abs(smoothed[wm].mean() / 20.0 - 1) < 0.10  # +5%
    core = gm.copy()
    core[gm.shape[0] // 2 - 2 :] = False  # GM away from the WM border
    for fit in (voxel, smoothed):
        assert abs(fit[core].mean() / 60.0 - 1) < 0.05
    assert abs(np.median(s_att[wm]) - 1.2) < 0.1
