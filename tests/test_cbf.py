"""Known answers for CBF quantification (:mod:`asl_pipeline.cbf`).

Data are built with the forward models of :mod:`asl_pipeline.kinetics`; the
expected labeling efficiencies and T1s are written out from the methods spec
so that the tests check the constants too, not only the inversion.
"""

import dataclasses
import json
import warnings

import numpy as np
import pytest

from asl_pipeline import cbf as C
from asl_pipeline import kinetics as K
from asl_pipeline.errors import ASLInputError

SHAPE = (5, 4, 6)
T1B_3T = 1.65
T1T_3T = 1.4


def _meta(**kw):
    meta = {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": 1.8,
        "LabelingDuration": 1.8,
        "M0Type": "Separate",
        "MagneticFieldStrength": 3,
        "MRAcquisitionType": "3D",
        "BackgroundSuppression": False,
        "RepetitionTimePreparation": 4.0,
    }
    meta.update(kw)
    return {k: v for k, v in meta.items() if v is not None}


def _truth(rng, shape=SHAPE):
    cbf = rng.uniform(15.0, 90.0, shape)
    m0 = rng.uniform(800.0, 1200.0, shape)
    return cbf, m0


def _series(deltam, rng, *, order="control-first", control=None, n_pairs=None):
    """Interleave control and label volumes so that control - label = deltam."""
    deltam = np.asarray(deltam, dtype=float)
    if deltam.ndim == 3:
        deltam = np.repeat(deltam[..., None], n_pairs or 3, axis=3)
    n = deltam.shape[3]
    if control is None:
        control = rng.uniform(300.0, 600.0, deltam.shape)
    label = control - deltam
    first, second = (control, label) if order == "control-first" else (label, control)
    series = np.empty(deltam.shape[:3] + (2 * n,))
    series[..., 0::2], series[..., 1::2] = first, second
    kinds = ["control", "label"] if order == "control-first" else ["label", "control"]
    return series, kinds * n


def _recovery(tr, t1=T1T_3T):
    return 1.0 - np.exp(-tr / t1)


# ------------------------------------------------------------------------- single PLD


@pytest.mark.parametrize("ltype, alpha0", [("PCASL", 0.85), ("CASL", 0.68)])
@pytest.mark.parametrize("n_bs", [0, 4])
@pytest.mark.parametrize("order", ["control-first", "label-first"])
def test_casl_pcasl_known_answer(ltype, alpha0, n_bs, order):
    rng = np.random.default_rng(1)
    cbf, m0 = _truth(rng)
    att = rng.uniform(0.5, 1.5, SHAPE)  # < PLD: the white-paper regime
    alpha = alpha0 * 0.95**n_bs
    meta = _meta(
        ArterialSpinLabelingType=ltype,
        BackgroundSuppression=n_bs > 0,
        BackgroundSuppressionNumberPulses=n_bs or None,
    )
    params = C.quant_params_from_metadata(meta, m0_metadata={"RepetitionTimePreparation": 3.0})
    assert params.alpha == pytest.approx(alpha, rel=1e-12)
    assert params.t1b == T1B_3T
    dm = K.pcasl_deltam(cbf, att, 1.8, 1.8, m0, alpha=alpha, t1b=T1B_3T, t1_after_arrival="blood")
    series, vtypes = _series(dm, rng, order=order)
    pairs = C.deltam_series(series, vtypes, plds=params.pld)
    np.testing.assert_allclose(pairs.deltam, np.repeat(dm[..., None], 3, axis=3), rtol=1e-9)
    m0_img = C.compute_m0(params, m0_volumes=m0 * _recovery(3.0))  # TR 3 s: corrected
    res = C.cbf_single_pld(pairs.deltam, m0_img, params, plds=pairs.plds)
    np.testing.assert_allclose(res.mean_cbf, cbf, rtol=1e-6)
    np.testing.assert_allclose(res.cbf_ts[..., 1], cbf, rtol=1e-6)
    assert res.cbf_ts.shape == SHAPE + (3,)
    assert not res.excluded.any()


def test_white_paper_number():
    """One voxel computed by hand from the published equation."""
    params = C.QuantParams(labeling_type="PCASL", pld=1.8, tau=1.8, alpha=0.85, t1b=1.65)
    expected = 6000 * 0.9 * 10.0 * np.exp(1.8 / 1.65) / (2 * 0.85 * 1.65 * 1000.0)
    expected /= 1 - np.exp(-1.8 / 1.65)
    res = C.cbf_single_pld(np.full((1, 1, 1, 1), 10.0), 1000.0, params)
    assert res.mean_cbf[0, 0, 0] == pytest.approx(expected, rel=1e-12)
    # 54000 * e^1.0909 / (2805 * (1 - e^-1.0909)) = 160760 / 1862.8
    assert expected == pytest.approx(86.30, abs=0.01)


@pytest.mark.parametrize(
    "technique, delay, ti1",
    [("QUIPSSII", 0.8, 0.8), ("Q2TIPS", [0.7, 1.6], 0.7)],
)
def test_pasl_known_answer(technique, delay, ti1):
    rng = np.random.default_rng(2)
    cbf, m0 = _truth(rng)
    ti = 2.0
    att = rng.uniform(0.4, ti - ti1 - 0.05, SHAPE)  # whole bolus delivered
    meta = _meta(
        ArterialSpinLabelingType="PASL",
        LabelingDuration=None,
        PostLabelingDelay=ti,
        BolusCutOffFlag=True,
        BolusCutOffTechnique=technique,
        BolusCutOffDelayTime=delay,
        M0Type="Estimate",
        M0Estimate=1.0,
    )
    params = C.quant_params_from_metadata(meta)
    assert params.ti1 == ti1 and params.tau is None and params.alpha == 0.98
    dm = K.pasl_deltam(cbf, att, ti, ti1, m0, alpha=0.98, t1b=T1B_3T, t1_after_arrival="blood")
    res = C.cbf_single_pld(dm, m0, params)
    np.testing.assert_allclose(res.mean_cbf, cbf, rtol=1e-6)


def test_2d_slice_timing_known_answer():
    rng = np.random.default_rng(3)
    cbf, m0 = _truth(rng)
    st = np.linspace(0.0, 0.9, SHAPE[2])
    meta = _meta(MRAcquisitionType="2D", SliceTiming=st.tolist(), PostLabelingDelay=1.5)
    params = C.quant_params_from_metadata(meta, m0_tr=6.0)  # TR >= 5 s: no correction
    att = rng.uniform(0.5, 1.4, SHAPE)
    dm = K.pcasl_deltam(
        cbf, att, 1.5 + st, 1.8, m0, alpha=0.85, t1b=T1B_3T, t1_after_arrival="blood"
    )
    res = C.cbf_single_pld(dm, C.compute_m0(params, m0_volumes=m0), params)
    np.testing.assert_allclose(res.mean_cbf, cbf, rtol=1e-6)
    # ignoring the slice delay biases the last slice by exp(-0.9/1.65)
    flat = C.quant_params_from_metadata(meta, m0_tr=6.0, slice_timing=())
    biased = C.cbf_single_pld(dm, m0, flat).mean_cbf
    np.testing.assert_allclose(biased[..., -1], cbf[..., -1] * np.exp(-0.9 / T1B_3T), rtol=1e-9)


# --------------------------------------------------------------------------------- M0


def test_m0_included_with_tr_correction_and_scale():
    rng = np.random.default_rng(4)
    cbf, m0 = _truth(rng)
    dm = K.pcasl_deltam(cbf, 1.0, 1.8, 1.8, m0, alpha=0.85, t1b=T1B_3T, t1_after_arrival="blood")
    series, vtypes = _series(dm, rng)
    raw = m0 * _recovery(3.0) / 2.0  # stored at half scale, TR 3 s
    m0vols = np.stack([raw - 5.0, raw + 5.0], axis=3)
    series = np.concatenate([m0vols, series], axis=3)
    vtypes = ["m0scan", "m0scan"] + vtypes
    params = C.quant_params_from_metadata(_meta(M0Type="Included", RepetitionTimePreparation=3.0))
    assert params.m0_tr == 3.0
    m0_img = C.compute_m0(params, series=series, volume_types=vtypes, m0_scale=2.0)
    np.testing.assert_allclose(m0_img, m0, rtol=1e-12)
    pairs = C.deltam_series(series, vtypes, plds=params.pld)
    assert pairs.volumes[0] == (2, 3)
    res = C.cbf_single_pld(pairs.deltam, m0_img, params)
    np.testing.assert_allclose(res.mean_cbf, cbf, rtol=1e-6)


def test_m0_estimate_broadcast_not_corrected():
    params = C.quant_params_from_metadata(_meta(M0Type="Estimate", M0Estimate=2500.0))
    m0 = C.compute_m0(params, shape=SHAPE)
    assert m0.shape == SHAPE and np.all(m0 == 2500.0)
    rng = np.random.default_rng(5)
    cbf, _ = _truth(rng)
    dm = K.pcasl_deltam(
        cbf, 1.0, 1.8, 1.8, 2500.0, alpha=0.85, t1b=T1B_3T, t1_after_arrival="blood"
    )
    np.testing.assert_allclose(C.cbf_single_pld(dm, m0, params).mean_cbf, cbf, rtol=1e-6)


def test_m0_absent_uses_mean_control_and_refuses_bs():
    rng = np.random.default_rng(6)
    cbf, m0 = _truth(rng)
    dm = K.pcasl_deltam(cbf, 1.0, 1.8, 1.8, m0, alpha=0.85, t1b=T1B_3T, t1_after_arrival="blood")
    control = np.repeat((m0 * _recovery(4.0))[..., None], 3, axis=3)
    series, vtypes = _series(dm, rng, control=control)
    params = C.quant_params_from_metadata(_meta(M0Type="Absent"))
    m0_img = C.compute_m0(params, series=series, volume_types=vtypes)
    np.testing.assert_allclose(m0_img, m0, rtol=1e-12)
    res = C.cbf_single_pld(C.deltam_series(series, vtypes).deltam, m0_img, params)
    np.testing.assert_allclose(res.mean_cbf, cbf, rtol=1e-6)
    # refused when the sidecar is read (as by the BIDS reader), and by compute_m0
    bs_meta = _meta(
        M0Type="Absent", BackgroundSuppression=True, BackgroundSuppressionNumberPulses=2
    )
    with pytest.raises(ASLInputError, match="BackgroundSuppression") as err:
        C.quant_params_from_metadata(bs_meta)
    assert err.value.field == "M0Type"
    bs = dataclasses.replace(params, background_suppression=True, n_bs_pulses=2)
    with pytest.raises(ASLInputError, match="BackgroundSuppression"):
        C.compute_m0(bs, series=series, volume_types=vtypes)


@pytest.mark.parametrize("tr", [0, None])
def test_unknown_tr_warns_and_never_divides(tr):
    meta = _meta(RepetitionTimePreparation=tr, M0Type="Included")
    with pytest.warns(C.InputWarning, match="RepetitionTimePreparation"):
        params = C.quant_params_from_metadata(meta)
    assert params.tr is None and params.m0_tr is None
    assert C.m0_recovery_factor(params.m0_tr, params.t1_tissue) == 1.0
    series = np.concatenate([np.full(SHAPE + (1,), 700.0), np.ones(SHAPE + (2,))], axis=3)
    with pytest.warns(C.InputWarning, match="no correction"):
        m0 = C.compute_m0(params, series=series, volume_types=["m0scan", "control", "label"])
    np.testing.assert_array_equal(m0, 700.0)  # uncorrected, finite, not zero


def test_separate_m0_tr_from_m0_sidecar():
    params = C.quant_params_from_metadata(_meta(), m0_metadata={"RepetitionTimePreparation": 2.0})
    m0 = C.compute_m0(params, m0_volumes=np.full(SHAPE + (2,), 100.0))
    np.testing.assert_allclose(m0, 100.0 / _recovery(2.0), rtol=1e-12)


def test_asltbx_pairwise_control_m0():
    rng = np.random.default_rng(7)
    cbf, _ = _truth(rng)
    control = rng.uniform(500.0, 1500.0, SHAPE + (4,))  # differs pair by pair
    m0_true = control / _recovery(4.0)
    dm = K.pcasl_deltam(
        cbf[..., None], 1.0, 1.8, 1.8, m0_true, alpha=0.85, t1b=T1B_3T, t1_after_arrival="blood"
    )
    series, vtypes = _series(dm, rng, control=control, order="label-first")
    params = C.quant_params_from_metadata(_meta(M0Type="Absent"))
    pairs = C.deltam_series(series, vtypes)
    m0 = C.compute_m0(params, control=pairs.control, method=C.PAIRWISE_CONTROL)
    assert m0.shape == SHAPE + (4,)
    res = C.cbf_single_pld(pairs.deltam, m0, params)
    np.testing.assert_allclose(res.cbf_ts, np.repeat(cbf[..., None], 4, axis=3), rtol=1e-6)
    short = C.cbf_single_pld(pairs.deltam, "pairwise-control", params, control=pairs.control)
    np.testing.assert_array_equal(short.cbf_ts, res.cbf_ts)


def test_surround_subtraction_cancels_linear_drift():
    rng = np.random.default_rng(8)
    dm = rng.uniform(5.0, 15.0, SHAPE)
    n_pairs = 5
    t = np.arange(2 * n_pairs, dtype=float)
    baseline = 500.0 + 3.0 * t  # linear drift per volume
    series = baseline[None, None, None, :] + np.zeros(SHAPE + (1,))
    series[..., 1::2] -= dm[..., None]  # control, label, control, label, ...
    vtypes = ["control", "label"] * n_pairs
    sur = C.deltam_series(series, vtypes, method="surround")
    assert sur.deltam.shape == SHAPE + (2 * n_pairs,)
    np.testing.assert_allclose(sur.deltam[..., 1:-1], np.broadcast_to(dm[..., None], SHAPE + (8,)))
    pair = C.deltam_series(series, vtypes)
    for res in (sur, pair):
        np.testing.assert_allclose(res.mean_control, series[..., 0::2].mean(axis=3))
    np.testing.assert_allclose(pair.deltam, np.broadcast_to(dm[..., None] - 3.0, SHAPE + (5,)))


def test_low_m0_and_nonfinite_voxels_are_excluded_not_inf():
    rng = np.random.default_rng(9)
    cbf, m0 = _truth(rng)
    dm = K.pcasl_deltam(cbf, 1.0, 1.8, 1.8, m0, alpha=0.85, t1b=T1B_3T, t1_after_arrival="blood")[
        ..., None
    ]
    m0[0, 0, 0] = 0.0
    m0[1, 0, 0] = 50.0  # < 0.1 x mean
    m0[2, 0, 0] = np.nan
    dm[3, 0, 0, 0] = np.inf
    mask = np.ones(SHAPE, bool)
    mask[4, 3, 5] = False
    params = C.QuantParams(labeling_type="PCASL", pld=1.8, tau=1.8, alpha=0.85, t1b=1.65)
    res = C.cbf_single_pld(dm, m0, params, mask=mask)
    assert np.all(np.isfinite(res.cbf_ts)) and np.all(np.isfinite(res.mean_cbf))
    expected = np.zeros(SHAPE, bool)
    expected[:4, 0, 0] = True
    np.testing.assert_array_equal(res.excluded, expected)
    assert np.all(res.mean_cbf[expected] == 0) and res.mean_cbf[4, 3, 5] == 0
    good = ~expected & mask
    np.testing.assert_allclose(res.mean_cbf[good], cbf[good], rtol=1e-6)


def test_deltam_and_cbf_series_pass_through():
    rng = np.random.default_rng(10)
    data = rng.normal(size=SHAPE + (3,))
    ge = C.deltam_series(data, ["m0scan", "deltam", "deltam"], plds=2.025)
    assert ge.kind == "deltam" and ge.control is None
    np.testing.assert_array_equal(ge.deltam, data[..., 1:])
    np.testing.assert_array_equal(ge.plds, [2.025, 2.025])
    cb = C.deltam_series(data, ["cbf", "cbf", "noRF"])
    assert cb.kind == "cbf"
    np.testing.assert_array_equal(cb.deltam, data[..., :2])


# ------------------------------------------------------------------- real sidecars

EXPECTED = {
    # dataset: type, alpha, tau, ti1, plds (unique), n slices, m0 type, m0 TR, ASL TR
    "asl001": ("PCASL", 0.85 * 0.95**4, 1.45, None, [2.025], None, "Included", 4.886, 4.886),
    "asl002": ("PCASL", 0.85 * 0.95**2, 1.8, None, [2.0], 20, "Separate", 9.0, 4.5716811),
    "asl003": (
        "PASL",
        0.98 * 0.95**2,
        None,
        0.7,
        [0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1, 2.4, 2.7, 3.0],
        None,
        "Separate",
        6.0,
        3.5,
    ),
    "asl004": (
        "PCASL",
        0.88 * 0.95**2,
        1.4,
        None,
        [0.25, 0.5, 0.75, 1.0, 1.25, 1.5],
        24,
        "Separate",
        4.8,
        4.05,
    ),
    "asl005": ("PCASL", 0.85 * 0.95**4, 1.8, None, [2.0], None, "Separate", 4.95, 4.95),
}


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_real_sidecars(bids_examples_dir, dataset):
    from asl_pipeline.interfaces.cbf import read_aslcontext

    (asl_json,) = sorted((bids_examples_dir / dataset).glob("sub-*/perf/*_asl.json"))
    m0_json = asl_json.with_name(asl_json.name.replace("_asl.json", "_m0scan.json"))
    ctx = asl_json.with_name(asl_json.name.replace("_asl.json", "_aslcontext.tsv"))
    meta = json.loads(asl_json.read_text())
    m0_meta = json.loads(m0_json.read_text()) if m0_json.exists() else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these sidecars are complete: no fallback
        p = C.quant_params_from_metadata(meta, m0_metadata=m0_meta, source=asl_json)
    ltype, alpha, tau, ti1, plds, nsl, m0_type, m0_tr, tr = EXPECTED[dataset]
    assert p.labeling_type == ltype and p.m0_type == m0_type
    assert p.alpha == pytest.approx(alpha, rel=1e-12)
    assert p.tau == tau and p.ti1 == ti1
    assert p.t1b == 1.65 and p.lam == 0.9 and p.t1_tissue == 1.4
    assert p.m0_tr == pytest.approx(m0_tr) and p.tr == pytest.approx(tr)
    assert (p.slice_timing is None) if nsl is None else len(p.slice_timing) == nsl
    # pairing the real aslcontext gives one PLD per difference
    vtypes = read_aslcontext(ctx)
    pairs = C.deltam_series(np.zeros((1, 1, 1, len(vtypes))), vtypes, plds=p.pld)
    uniq, counts = np.unique(pairs.plds, return_counts=True)
    np.testing.assert_allclose(uniq, plds)
    assert len(set(counts)) == 1  # every PLD repeated equally often
    assert p.is_multi_pld == (len(plds) > 1)


def test_real_sidecar_2d_slice_delays(bids_examples_dir):
    (asl_json,) = sorted((bids_examples_dir / "asl002").glob("sub-*/perf/*_asl.json"))
    p = C.quant_params_from_metadata(json.loads(asl_json.read_text()), m0_tr=9.0)
    delays = C.effective_delays(p, [2.0], 20)
    assert delays[0, 0] == 2.0 and delays[19, 0] == pytest.approx(2.7315)
    assert C.m0_recovery_factor(9.0, 1.4) == 1.0  # TR >= 5 s: fully relaxed


# ------------------------------------------------------------------------ multi-PLD

PLDS_4 = np.repeat([0.25, 0.5, 0.75, 1.0, 1.25, 1.5], 3)  # asl004-like, 3 repeats


def _tissues(n=4):
    """GM-like and WM-like voxels: CBF (mL/100 g/min), ATT (s)."""
    cbf = np.array([60.0] * n + [20.0] * n).reshape(2, n, 1)
    att = np.array([1.2, 1.0, 1.35, 1.1] * 1 + [1.6, 1.8, 1.5, 1.7]).reshape(2, n, 1)
    return cbf, att


@pytest.mark.parametrize("two_d", [False, True])
def test_multi_pld_pcasl_recovers_gm_wm(two_d):
    cbf, att = _tissues()
    shape = cbf.shape[:2] + (3,)
    cbf, att = np.broadcast_to(cbf, shape), np.broadcast_to(att, shape)
    m0 = np.full(shape, 1000.0)
    st = np.array([0.0, 0.2, 0.4])
    delays = PLDS_4 + (st[None, None, :, None] if two_d else 0.0)
    dm = K.pcasl_deltam(
        cbf[..., None], att[..., None], delays, 1.4, m0[..., None], alpha=0.7942, t1b=1.65
    )
    params = C.QuantParams(
        labeling_type="PCASL",
        pld=tuple(PLDS_4),
        tau=1.4,
        alpha=0.7942,
        t1b=1.65,
        slice_timing=tuple(st) if two_d else None,
    )
    f, a, failed = C.fit_multi_pld(dm, PLDS_4, m0, params)
    assert np.all(np.abs(f / cbf - 1) < 0.01)
    assert np.all(np.abs(a / att - 1) < 0.02)
    np.testing.assert_allclose(f, cbf, rtol=1e-6)  # noise-free: exact in fact
    assert not failed.any()


def test_multi_ti_pasl_recovers_gm_wm():
    cbf, att = _tissues()
    att = att - 0.5  # PASL transit times are shorter
    tis = np.repeat(np.arange(0.3, 3.01, 0.3), 2)
    m0 = np.full(cbf.shape, 1000.0)
    dm = K.pasl_deltam(cbf[..., None], att[..., None], tis, 0.7, m0[..., None], alpha=0.88)
    params = C.QuantParams(labeling_type="PASL", pld=tuple(tis), ti1=0.7, alpha=0.88, t1b=1.65)
    f, a, failed = C.fit_multi_pld(dm, tis, m0, params)
    np.testing.assert_allclose(f, cbf, rtol=1e-6)
    np.testing.assert_allclose(a, att, rtol=1e-6)
    assert not failed.any()


PLDS_5 = np.repeat([0.5, 1.0, 1.5, 2.0, 2.5], 2)  # the white paper's multi-PLD range


def _grid_truth(n=6):
    """CBF 15-90 by ATT 0.6-2.0 s: GM- and WM-like voxels and beyond."""
    cbf, att = np.meshgrid(np.linspace(15, 90, n), np.linspace(0.6, 2.0, n), indexing="ij")
    return cbf[..., None], att[..., None]


@pytest.mark.parametrize("choice", ["tissue", "blood"])
@pytest.mark.parametrize("labeling", ["PCASL", "PASL"])
def test_multi_pld_fit_recovers_the_model_it_assumes(choice, labeling):
    """Noise-free curves made with either T1 after arrival are recovered to 1e-3
    when fitted with the same choice (T1tissue 1.4 s, T1b 1.65 s at 3 T)."""
    cbf, att = _grid_truth()
    m0 = np.full(cbf.shape, 1000.0)
    kw = {"alpha": 0.85, "t1b": T1B_3T, "t1_after_arrival": choice, "t1_tissue": T1T_3T}
    if labeling == "PCASL":
        delays = PLDS_5
        dm = K.pcasl_deltam(cbf[..., None], att[..., None], delays, 1.8, m0[..., None], **kw)
        params = C.QuantParams(
            labeling_type="PCASL", pld=tuple(delays), tau=1.8, alpha=0.85, t1b=T1B_3T
        )
    else:
        delays = np.repeat(np.arange(0.8, 3.21, 0.3), 2)  # TIs, all after TI1
        dm = K.pasl_deltam(cbf[..., None], att[..., None], delays, 0.7, m0[..., None], **kw)
        params = C.QuantParams(
            labeling_type="PASL", pld=tuple(delays), ti1=0.7, alpha=0.85, t1b=T1B_3T
        )
    assert params.t1_tissue == T1T_3T  # the fit's tissue T1 is the sidecar's default
    f, a, failed = C.fit_multi_pld(dm, delays, m0, params, t1_after_arrival=choice)
    assert not failed.any()
    np.testing.assert_allclose(f, cbf, rtol=1e-3)
    np.testing.assert_allclose(a, att, rtol=1e-3)


def test_multi_pld_blood_t1_fit_reads_tissue_model_data_low():
    """The white paper's simplification on Buxton (tissue-T1) data reads CBF too
    low: its label decays with blood T1 (1.65 s) after arrival, more slowly than
    the data's (T1app 1.38 s), so less flow explains the same signal."""
    cbf, att = _grid_truth()
    m0 = np.full(cbf.shape, 1000.0)
    dm = K.pcasl_deltam(cbf[..., None], att[..., None], PLDS_5, 1.8, m0[..., None], alpha=0.85)
    params = C.QuantParams(
        labeling_type="PCASL", pld=tuple(PLDS_5), tau=1.8, alpha=0.85, t1b=T1B_3T
    )
    f_default, _, _ = C.fit_multi_pld(dm, PLDS_5, m0, params)
    f_blood, _, _ = C.fit_multi_pld(dm, PLDS_5, m0, params, t1_after_arrival="blood")
    np.testing.assert_allclose(f_default, cbf, rtol=1e-3)  # the default is the tissue T1
    assert np.all(f_blood < 0.97 * cbf)
    with pytest.raises(ASLInputError, match="t1_after_arrival"):
        C.fit_multi_pld(dm, PLDS_5, m0, params, t1_after_arrival="apparent")


def test_multi_pld_flags_unidentifiable_and_bounds():
    plds = PLDS_4
    params = C.QuantParams(labeling_type="PCASL", pld=tuple(plds), tau=1.4, alpha=0.85, t1b=1.65)
    cbf = np.array([50.0, 50.0, 50.0, 0.0]).reshape(4, 1, 1)
    att = np.array([0.15, 1.2, 3.5, 1.0]).reshape(4, 1, 1)  # < min PLD, ok, > bound, no flow
    dm = K.pcasl_deltam(cbf[..., None], att[..., None], plds, 1.4, 1000.0, alpha=0.85)
    f, a, failed = C.fit_multi_pld(dm, plds, 1000.0, params)
    np.testing.assert_array_equal(failed.ravel(), [True, False, True, True])
    assert f[0, 0, 0] == pytest.approx(50.0, rel=1e-6)  # CBF still right below min PLD
    assert a[1, 0, 0] == pytest.approx(1.2, rel=1e-6)
    assert np.all(np.isfinite(f)) and np.all(np.isfinite(a))


def test_multi_pld_reaches_least_squares_optimum_with_noise():
    """On noisy data the vectorised fit is as good as a per-voxel curve_fit."""
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(11)
    n = 30
    plds = PLDS_4
    params = C.QuantParams(labeling_type="PCASL", pld=tuple(plds), tau=1.4, alpha=0.85, t1b=1.65)
    cbf = rng.uniform(30, 70, (n, 1, 1))
    att = rng.uniform(0.8, 1.8, (n, 1, 1))
    dm = K.pcasl_deltam(cbf[..., None], att[..., None], plds, 1.4, 1.0, alpha=0.85)
    dm = dm + rng.normal(0, 0.0005, dm.shape)
    f, a, failed = C.fit_multi_pld(dm, plds, 1.0, params)

    def model(p, c, t):
        return K.pcasl_deltam(c, t, p, 1.4, 1.0, alpha=0.85)

    for i in range(n):
        y = dm[i, 0, 0]
        ours = np.sum((y - model(plds, f[i, 0, 0], a[i, 0, 0])) ** 2)
        (c_ref, t_ref), _ = curve_fit(model, plds, y, p0=(50.0, 1.2), bounds=([0, 0.1], [500, 3]))
        ref = np.sum((y - model(plds, c_ref, t_ref)) ** 2)
        assert ours <= ref * (1 + 1e-6)
    assert np.median(np.abs(f / cbf - 1)) < 0.1


# -------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "meta, field",
    [
        (_meta(LabelingDuration=0), "LabelingDuration"),
        (_meta(LabelingDuration=-1.0), "LabelingDuration"),
        (_meta(LabelingDuration=None), "LabelingDuration"),
        (_meta(PostLabelingDelay=-0.5), "PostLabelingDelay"),
        (_meta(PostLabelingDelay=[1.8, -1.8]), "PostLabelingDelay"),
        (_meta(PostLabelingDelay="1.8"), "PostLabelingDelay"),
        (_meta(LabelingEfficiency="high"), "LabelingEfficiency"),
        (_meta(LabelingEfficiency=85), "LabelingEfficiency"),
        (_meta(ArterialSpinLabelingType="FAIR"), "ArterialSpinLabelingType"),
        (_meta(ArterialSpinLabelingType="PASL"), "BolusCutOffFlag"),
        (
            _meta(ArterialSpinLabelingType="PASL", BolusCutOffFlag=False),
            "BolusCutOffFlag",
        ),
        (
            _meta(ArterialSpinLabelingType="PASL", BolusCutOffFlag=True),
            "BolusCutOffTechnique",
        ),
        (
            _meta(
                ArterialSpinLabelingType="PASL",
                BolusCutOffFlag=True,
                BolusCutOffTechnique="QUIPSSII",
            ),
            "BolusCutOffDelayTime",
        ),
        (  # original QUIPSS: refused by the reader's rule, as by the quantifier
            _meta(
                ArterialSpinLabelingType="PASL",
                BolusCutOffFlag=True,
                BolusCutOffTechnique="QUIPSS",
                BolusCutOffDelayTime=0.7,
            ),
            "BolusCutOffTechnique",
        ),
        (_meta(M0Type="Estimate"), "M0Estimate"),
        (_meta(M0Type="estimate"), "M0Estimate"),  # case-folded, as by the reader
        (_meta(M0Type="Fancy"), "M0Type"),
        (_meta(LabelingDuration=[1.8, 1.6]), "LabelingDuration"),
        (_meta(BackgroundSuppression="true"), "BackgroundSuppression"),
        (_meta(RepetitionTimePreparation="4"), "RepetitionTimePreparation"),
    ],
)
def test_malformed_sidecar_names_field(meta, field):
    with pytest.raises(ASLInputError) as err:
        C.quant_params_from_metadata(meta, source="sub-01_asl.json")
    assert err.value.field == field
    assert "sub-01_asl.json" in str(err.value) and "Fix:" in str(err.value)


def test_2d_without_slice_timing_warns_as_the_reader():
    """One rule: a 2D readout without SliceTiming is quantified at the nominal delay."""
    with pytest.warns(C.InputWarning, match="without SliceTiming"):
        params = C.quant_params_from_metadata(_meta(MRAcquisitionType="2D"), m0_tr=4.0)
    assert params.slice_timing is None


def test_case_folded_m0type_and_inferred_2d():
    with pytest.warns(C.InputWarning, match="MRAcquisitionType missing: 2D assumed"):
        params = C.quant_params_from_metadata(
            _meta(M0Type="separate", MRAcquisitionType=None, SliceTiming=[0.0, 0.1]), m0_tr=4.0
        )
    assert params.m0_type == "Separate" and params.slice_timing == (0.0, 0.1)


def test_malformed_arrays():
    params = C.quant_params_from_metadata(_meta(), m0_tr=4.0)
    dm = np.ones(SHAPE + (2,))
    with pytest.raises(ASLInputError, match="M0"):
        C.compute_m0(params, m0_volumes=np.zeros(SHAPE))
    with pytest.raises(ASLInputError, match="M0"):
        C.cbf_single_pld(dm, np.zeros(SHAPE), params)
    with pytest.raises(ASLInputError, match="shape"):
        C.cbf_single_pld(dm, np.ones((5, 4, 5)), params)
    with pytest.raises(ASLInputError, match="mask"):
        C.cbf_single_pld(dm, np.ones(SHAPE), params, mask=np.ones((5, 4)))
    with pytest.raises(ASLInputError, match="volume_type"):
        C.deltam_series(np.ones(SHAPE + (4,)), ["control", "label", "control"])
    with pytest.raises(ASLInputError, match="pair"):
        C.deltam_series(np.ones(SHAPE + (4,)), ["control", "control", "label", "label"])
    with pytest.raises(ASLInputError, match="unknown volume type"):
        C.deltam_series(np.ones(SHAPE + (2,)), ["Kontrol", "label"])
    with pytest.raises(ASLInputError, match="PostLabelingDelay"):
        C.deltam_series(np.ones(SHAPE + (4,)), ["control", "label"] * 2, plds=[1, 2, 3])
    with pytest.raises(ASLInputError, match="SliceTiming"):
        p2d = C.quant_params_from_metadata(
            _meta(MRAcquisitionType="2D", SliceTiming=[0, 0.1]), m0_tr=4.0
        )
        C.cbf_single_pld(dm, np.ones(SHAPE), p2d)
    with pytest.raises(ASLInputError, match="PostLabelingDelay"):
        C.fit_multi_pld(dm, [1.0, 1.0], np.ones(SHAPE), params)  # single PLD
    with pytest.raises(ASLInputError, match="TI1"):
        pasl = C.QuantParams(labeling_type="PASL", pld=0.5, ti1=0.7, alpha=0.98, t1b=1.65)
        C.cbf_single_pld(dm, np.ones(SHAPE), pasl)


@pytest.mark.parametrize("field, t1b, t1t", [(1.5, 1.35, 1.2), (3, 1.65, 1.4), (7, 2.087, 1.6)])
def test_field_strength_constants_and_overrides(field, t1b, t1t):
    p = C.quant_params_from_metadata(_meta(MagneticFieldStrength=field), m0_tr=4.0)
    assert (p.t1b, p.t1_tissue, p.field_strength) == (t1b, t1t, field)
    q = C.quant_params_from_metadata(
        _meta(MagneticFieldStrength=field, LabelingEfficiency=0.9),
        m0_tr=4.0,
        t1b=1.5,
        lam=0.98,
        n_bs_pulses=3,
    )
    assert (q.t1b, q.lam) == (1.5, 0.98) and q.alpha == pytest.approx(0.9 * 0.95**3)
    with pytest.warns(C.InputWarning, match="MagneticFieldStrength"):
        r = C.quant_params_from_metadata(_meta(MagneticFieldStrength=None), m0_tr=4.0)
    assert r.t1b == 1.65


def test_tissue_recovery_factor_known_answers():
    tr = 4.4
    t1 = K.t1_by_tissue(3.0)
    pd = K.PROTON_DENSITY
    one = np.ones((2, 1, 1))
    zero = np.zeros((2, 1, 1))
    pure_gm = C.tissue_recovery_factor(tr, {"gm": one, "wm": zero, "csf": zero}, 3.0)
    np.testing.assert_allclose(pure_gm, 1 - np.exp(-tr / t1["gm"]))
    half = np.full((1, 1, 1), 0.5)
    mixed = C.tissue_recovery_factor(tr, {"gm": half, "wm": zero[:1], "csf": half}, 3.0)
    expected = (
        pd["gm"] * (1 - np.exp(-tr / t1["gm"])) + pd["csf"] * (1 - np.exp(-tr / t1["csf"]))
    ) / (pd["gm"] + pd["csf"])
    np.testing.assert_allclose(mixed, expected)
    # no tissue: the single-T1 factor; unknown TR: no correction
    empty = C.tissue_recovery_factor(tr, {"gm": zero, "wm": zero, "csf": zero}, 3.0)
    np.testing.assert_allclose(empty, C.m0_recovery_factor(tr, K.t1_tissue(3.0)))
    # at any known TR, unlike the spec's single-T1 rule (1.0 from 5 s on)
    at_6s = C.tissue_recovery_factor(6.0, {"gm": one, "wm": zero, "csf": zero}, 3.0)
    np.testing.assert_allclose(at_6s, 1 - np.exp(-6.0 / 1.6))
    assert C.m0_recovery_factor(6.0, 1.4) == 1.0
    assert C.tissue_recovery_factor(None, {"gm": one, "wm": zero, "csf": zero}, 3.0) == 1.0


def test_compute_m0_tissue_weighted_recovers_relaxed_m0():
    """An M0 made with per-tissue T1s at TR 3 s is recovered exactly by the
    tissue-weighted correction; one tissue T1 leaves GM and WM biased."""
    rng = np.random.default_rng(0)
    shape = (6, 5, 4)
    gm = rng.uniform(0, 1, shape)
    wm = (1 - gm) * rng.uniform(0, 1, shape)
    csf = 1 - gm - wm
    fr = {"gm": gm, "wm": wm, "csf": csf}
    t1, pd = K.t1_by_tissue(3.0), K.PROTON_DENSITY
    relaxed = sum(fr[k] * pd[k] for k in fr) * 1000.0
    acquired = sum(fr[k] * pd[k] * (1 - np.exp(-3.0 / t1[k])) for k in fr) * 1000.0
    params = C.QuantParams(
        labeling_type="PCASL", pld=1.8, alpha=0.85, t1b=1.65, tau=1.8, m0_tr=3.0
    )
    m0 = C.compute_m0(params, m0_volumes=acquired, tissue_fractions=fr)
    np.testing.assert_allclose(m0, relaxed, rtol=1e-10)
    single = C.compute_m0(params, m0_volumes=acquired)
    assert np.abs(single / relaxed - 1).max() > 0.02


def test_delay_groups_and_repeat_means_group_by_rounded_delay():
    # delays read from sidecars carry float noise; repeats of one delay stay one group,
    # in acquisition order, and the means are over each group's volumes
    plds = np.array([1.5, 0.5 + 1e-12, 1.5 - 1e-12, 0.5, 2.0, 0.5])
    uniq, groups = C.delay_groups(plds)
    np.testing.assert_allclose(uniq, [0.5, 1.5, 2.0])
    assert [g.tolist() for g in groups] == [[1, 3, 5], [0, 2], [4]]
    dm = np.broadcast_to(np.arange(6.0), (2, 2, 1, 6))
    means, uniq2, counts = C.average_repeats(dm, plds)
    np.testing.assert_allclose(means[0, 0, 0], [3.0, 1.0, 4.0])
    assert counts.tolist() == [3, 2, 1] and np.array_equal(uniq, uniq2)
