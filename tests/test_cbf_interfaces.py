"""The CBF interfaces run via ``.run(cwd=tmp_path)`` on small synthetic BIDS runs."""

import json

import nibabel as nb
import numpy as np
import pytest

from asl_pipeline import kinetics as K
from asl_pipeline.errors import ASLInputError
from asl_pipeline.interfaces.cbf import ComputeCBF, ComputeM0, ComputeMultiPLDCBF
from asl_pipeline.rundesc import read_aslcontext

SHAPE = (6, 5, 4)
AFFINE = np.diag([3.0, 3.0, 4.0, 1.0])


def _write_run(root, deltam, vtypes_order, meta, *, m0=None, m0_meta=None, rng):
    """A BIDS perf folder: 4D int16-like series, aslcontext, sidecars, optional M0."""
    perf = root / "sub-01" / "perf"
    perf.mkdir(parents=True)
    n = deltam.shape[3]
    control = rng.uniform(400.0, 600.0, deltam.shape)
    label = control - deltam
    series = np.empty(SHAPE + (2 * n,))
    if vtypes_order == "label-first":
        series[..., 0::2], series[..., 1::2] = label, control
        vtypes = ["label", "control"] * n
    else:
        series[..., 0::2], series[..., 1::2] = control, label
        vtypes = ["control", "label"] * n
    nb.Nifti1Image(series.astype(np.float32), AFFINE).to_filename(perf / "sub-01_asl.nii.gz")
    (perf / "sub-01_aslcontext.tsv").write_text("volume_type\n" + "\n".join(vtypes) + "\n")
    (perf / "sub-01_asl.json").write_text(json.dumps(meta))
    files = {
        "asl_file": str(perf / "sub-01_asl.nii.gz"),
        "aslcontext": str(perf / "sub-01_aslcontext.tsv"),
        "metadata": str(perf / "sub-01_asl.json"),
    }
    if m0 is not None:
        nb.Nifti1Image(m0.astype(np.float32), AFFINE).to_filename(perf / "sub-01_m0scan.nii.gz")
        (perf / "sub-01_m0scan.json").write_text(json.dumps(m0_meta))
        files["m0_file"] = str(perf / "sub-01_m0scan.nii.gz")
        files["m0_metadata"] = str(perf / "sub-01_m0scan.json")
    return files


def _listing(root):
    return sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))


META = {
    "ArterialSpinLabelingType": "PCASL",
    "PostLabelingDelay": 1.8,
    "LabelingDuration": 1.8,
    "M0Type": "Separate",
    "MagneticFieldStrength": 3,
    "MRAcquisitionType": "3D",
    "BackgroundSuppression": True,
    "BackgroundSuppressionNumberPulses": 2,
    "RepetitionTimePreparation": 4.0,
}


@pytest.fixture
def pcasl_run(tmp_path):
    rng = np.random.default_rng(20)
    cbf = rng.uniform(20.0, 80.0, SHAPE)
    m0 = rng.uniform(900.0, 1100.0, SHAPE)
    alpha = 0.85 * 0.95**2
    dm = K.pcasl_deltam(cbf, 1.0, 1.8, 1.8, m0, alpha=alpha, t1b=1.65, t1_after_arrival="blood")
    dm = np.repeat(dm[..., None], 4, axis=3)
    bids = tmp_path / "bids"
    raw_m0 = m0 * (1 - np.exp(-3.0 / 1.4))  # TR 3 s
    files = _write_run(
        bids,
        dm,
        "label-first",
        META,
        m0=raw_m0,
        m0_meta={"RepetitionTimePreparation": 3.0},
        rng=rng,
    )
    mask = np.ones(SHAPE, np.uint8)
    mask[0] = 0
    nb.Nifti1Image(mask, AFFINE).to_filename(tmp_path / "mask.nii.gz")
    return files, str(tmp_path / "mask.nii.gz"), cbf, m0, bids


def test_compute_m0_and_cbf(tmp_path, pcasl_run):
    files, mask, cbf, m0, bids = pcasl_run
    before = _listing(bids)
    work = tmp_path / "work"
    work.mkdir()
    res_m0 = ComputeM0(**files, mask=mask).run(cwd=work)
    m0_out = nb.load(res_m0.outputs.m0_file).get_fdata()
    np.testing.assert_allclose(m0_out, m0, rtol=1e-5)  # float32 output
    side = json.loads(open(res_m0.outputs.m0_json).read())
    assert side["M0RecoveryFactor"] == pytest.approx(1 - np.exp(-3.0 / 1.4))
    assert side["RepetitionTimePreparation"] == 3.0

    inputs = {k: v for k, v in files.items() if k != "m0_file"}
    res = ComputeCBF(**inputs, m0_file=res_m0.outputs.m0_file, mask=mask).run(cwd=work)
    out = res.outputs
    mean = nb.load(out.mean_cbf).get_fdata()
    ts = nb.load(out.cbf_ts).get_fdata()
    assert ts.shape == SHAPE + (4,)
    np.testing.assert_allclose(mean[1:], cbf[1:], rtol=1e-5)
    assert np.all(mean[0] == 0)  # outside the mask
    assert np.all(np.isfinite(ts))
    expected_dm = K.pcasl_deltam(
        cbf, 1.0, 1.8, 1.8, m0, alpha=0.85 * 0.95**2, t1b=1.65, t1_after_arrival="blood"
    )
    dm_out = nb.load(out.deltam).get_fdata()
    assert dm_out.shape == SHAPE + (4,)
    np.testing.assert_allclose(dm_out[..., 2], expected_dm, rtol=1e-4)
    side = json.loads(open(out.mean_cbf_json).read())
    assert side["Units"] == "mL/100 g/min"
    q = side["QuantificationParameters"]
    assert q["alpha"] == pytest.approx(0.85 * 0.95**2) and q["tau"] == 1.8 and q["t1b"] == 1.65
    assert side["PostLabelingDelay"] == [1.8] * 4
    assert out.cbf_ts.endswith("sub-01_desc-timeseries_cbf.nii.gz")
    assert _listing(bids) == before  # nothing written in the input dataset


def test_compute_cbf_pairwise_control_refused_with_bs(tmp_path, pcasl_run):
    files, mask, *_ = pcasl_run
    with pytest.raises(ASLInputError, match="BackgroundSuppression"):
        ComputeCBF(**files, quantification="pairwise-control").run(cwd=tmp_path)


def test_compute_cbf_absent_m0_pairwise_control(tmp_path):
    """Without BS and without M0 image: ASLtbx M0 = each pair's control image."""
    rng = np.random.default_rng(21)
    cbf = rng.uniform(20.0, 80.0, SHAPE)
    meta = dict(META, BackgroundSuppression=False, M0Type="Absent", RepetitionTimePreparation=6)
    perf_files = _write_run(
        tmp_path / "bids", np.zeros(SHAPE + (3,)), "control-first", meta, rng=rng
    )
    # rebuild the series so that each pair's control is its own M0
    img = nb.load(perf_files["asl_file"])
    series = img.get_fdata()
    control = series[..., 0::2]
    dm = K.pcasl_deltam(
        cbf[..., None], 1.0, 1.8, 1.8, control, alpha=0.85, t1b=1.65, t1_after_arrival="blood"
    )
    series[..., 1::2] = control - dm
    nb.Nifti1Image(series, AFFINE).to_filename(perf_files["asl_file"])
    res = ComputeCBF(**perf_files, quantification="pairwise-control").run(cwd=tmp_path)
    np.testing.assert_allclose(nb.load(res.outputs.mean_cbf).get_fdata(), cbf, rtol=1e-6)
    side = json.loads(open(res.outputs.cbf_ts_json).read())
    assert side["M0Method"] == "pairwise-control" and side["M0RecoveryFactor"] == 1.0


def _multi_pld_meta(plds):
    """META for one difference per entry of ``plds``, without background suppression,
    M0 1000 everywhere (M0Type Estimate)."""
    meta = dict(
        META,
        PostLabelingDelay=np.repeat(plds, 2).tolist(),
        BackgroundSuppression=False,
        M0Type="Estimate",
        M0Estimate=1000.0,
    )
    meta.pop("BackgroundSuppressionNumberPulses")
    return meta


def test_compute_cbf_refuses_multi_pld_and_multi_pld_interface(tmp_path):
    rng = np.random.default_rng(22)
    plds = np.repeat([0.5, 1.0, 1.5, 2.0, 2.5], 2)
    cbf = np.where(np.arange(SHAPE[0])[:, None, None] < 3, 60.0, 20.0) * np.ones(SHAPE)
    att = np.where(cbf > 30, 1.2, 1.6)
    m0 = np.full(SHAPE, 1000.0)
    dm = K.pcasl_deltam(cbf[..., None], att[..., None], plds, 1.8, m0[..., None], alpha=0.85)
    files = _write_run(tmp_path / "bids", dm, "control-first", _multi_pld_meta(plds), rng=rng)
    with pytest.raises(ASLInputError, match="ComputeMultiPLDCBF"):
        ComputeCBF(**files).run(cwd=tmp_path)
    # each voxel's own fit reads the two ATTs back exactly (the default, the ATT of
    # the smoothed curves, would blur the step between them)
    voxel = {"att_estimate": "voxel"}
    res = ComputeMultiPLDCBF(**files, **voxel).run(cwd=tmp_path)
    # the series is stored as float32: ~1e-5 relative rounding of small differences
    np.testing.assert_allclose(nb.load(res.outputs.cbf).get_fdata(), cbf, rtol=1e-4)
    np.testing.assert_allclose(nb.load(res.outputs.att).get_fdata(), att, rtol=1e-4)
    assert not nb.load(res.outputs.failed_mask).get_fdata().any()
    assert json.loads(open(res.outputs.att_json).read())["Units"] == "s"
    sidecar = json.loads(open(res.outputs.cbf_json).read())
    assert sidecar["Units"] == "mL/100 g/min"
    # the kinetic model's T1 after arrival is recorded: the apparent tissue T1 by default
    assert sidecar["T1AfterArrival"] == "tissue"
    assert sidecar["T1Tissue"] == 1.4 and sidecar["T1Blood"] == 1.65
    assert "apparent tissue T1" in sidecar["Model"]
    assert sidecar["ATTEstimate"]["Method"] == "voxel"
    (tmp_path / "blood").mkdir()
    blood = ComputeMultiPLDCBF(**files, **voxel, t1_after_arrival="blood").run(
        cwd=tmp_path / "blood"
    )
    sidecar = json.loads(open(blood.outputs.cbf_json).read())
    assert sidecar["T1AfterArrival"] == "blood" and "white paper" in sidecar["Model"]
    # the white-paper simplification reads the Buxton (tissue-T1) data low
    assert np.all(nb.load(blood.outputs.cbf).get_fdata() < 0.97 * cbf)
    # a longer tissue T1 than the data's (1.4 s) lets the label last longer and so
    # reads them low; the value used is recorded
    (tmp_path / "t1").mkdir()
    longer = ComputeMultiPLDCBF(**files, **voxel, t1_tissue=1.6).run(cwd=tmp_path / "t1")
    assert json.loads(open(longer.outputs.cbf_json).read())["T1Tissue"] == 1.6
    assert np.all(nb.load(longer.outputs.cbf).get_fdata() < 0.97 * cbf)


def test_multi_pld_pcasl_takes_the_smoothed_att_by_default(tmp_path):
    """pCASL, like PASL, takes the ATT of the curves smoothed inside the mask by
    default; with one ATT everywhere it reads every voxel's CBF and the ATT back."""
    rng = np.random.default_rng(23)
    plds = np.repeat([0.5, 1.0, 1.5, 2.0, 2.5], 2)
    cbf = rng.uniform(20.0, 80.0, SHAPE)
    dm = K.pcasl_deltam(cbf[..., None], 1.3, plds, 1.8, 1000.0, alpha=0.85)
    files = _write_run(tmp_path / "bids", dm, "control-first", _multi_pld_meta(plds), rng=rng)
    res = ComputeMultiPLDCBF(**files, t1_tissue=1.4).run(cwd=tmp_path)
    sidecar = json.loads(open(res.outputs.cbf_json).read())
    assert sidecar["ATTEstimate"]["Method"] == "smoothed"
    assert sidecar["ATTEstimate"]["SmoothingFWHMVoxels"] == 2.0
    np.testing.assert_allclose(nb.load(res.outputs.cbf).get_fdata(), cbf, rtol=0.01)
    np.testing.assert_allclose(nb.load(res.outputs.att).get_fdata(), 1.3, atol=0.01)
    assert not nb.load(res.outputs.failed_mask).get_fdata().any()


def test_multi_ti_pasl_takes_the_smoothed_att_by_default(tmp_path):
    """Multi-TI PASL: the ATT comes from the smoothed curves unless the voxel-wise
    fit is asked for; on noise-free data with one ATT both read every voxel's CBF,
    and the sidecar and failed mask say which estimate ran."""
    rng = np.random.default_rng(24)
    tis = np.repeat([0.9, 1.4, 1.9, 2.4, 2.9], 2)
    cbf = rng.uniform(20.0, 80.0, SHAPE)
    meta = dict(_multi_pld_meta(tis), ArterialSpinLabelingType="PASL", BolusCutOffFlag=True,
                BolusCutOffTechnique="Q2TIPS", BolusCutOffDelayTime=[0.7, 1.6])  # fmt: skip
    meta.pop("LabelingDuration")
    alpha = 0.98
    dm = K.pasl_deltam(cbf[..., None], 1.1, tis, 0.7, 1000.0, alpha=alpha, t1_tissue=1.4)
    files = _write_run(tmp_path / "bids", dm, "control-first", meta, rng=rng)
    for estimate in ("auto", "voxel"):
        (tmp_path / estimate).mkdir()
        res = ComputeMultiPLDCBF(**files, att_estimate=estimate, t1_tissue=1.4).run(
            cwd=tmp_path / estimate
        )
        sidecar = json.loads(open(res.outputs.cbf_json).read())
        method = "smoothed" if estimate == "auto" else "voxel"
        assert sidecar["ATTEstimate"]["Method"] == method
        assert ("SmoothingFWHMVoxels" in sidecar["ATTEstimate"]) == (method == "smoothed")
        np.testing.assert_allclose(nb.load(res.outputs.cbf).get_fdata(), cbf, rtol=0.01)
        np.testing.assert_allclose(nb.load(res.outputs.att).get_fdata(), 1.1, atol=0.01)
        assert not nb.load(res.outputs.failed_mask).get_fdata().any()


def test_multi_pld_tissue_t1_from_the_gm_curve(tmp_path):
    """Data made with a tissue T1 of 1.6 s: the GM mean curve finds it and the fit
    reads CBF right, where the fixed 1.4 s reads it high; the sidecar says which."""
    rng = np.random.default_rng(23)
    plds = np.repeat([0.5, 1.0, 1.5, 2.0, 2.5], 2)
    gm_share = (np.arange(SHAPE[0])[:, None, None] < 4) * np.ones(SHAPE)
    cbf = np.where(gm_share > 0, 60.0, 20.0)
    att = np.where(gm_share > 0, rng.uniform(0.9, 1.2, SHAPE), 1.5)
    m0 = np.full(SHAPE, 1000.0)
    dm = K.pcasl_deltam(
        cbf[..., None], att[..., None], plds, 1.8, m0[..., None], alpha=0.85, t1_tissue=1.6
    )
    files = _write_run(tmp_path / "bids", dm, "control-first", _multi_pld_meta(plds), rng=rng)
    nb.Nifti1Image(gm_share.astype(np.float32), AFFINE).to_filename(tmp_path / "gm.nii.gz")
    files["gm"] = str(tmp_path / "gm.nii.gz")
    runs = {}
    for label, extra in (("curve", {}), ("fixed", {"t1_tissue_source": "fixed"})):
        (tmp_path / label).mkdir()
        res = ComputeMultiPLDCBF(**files, **extra).run(cwd=tmp_path / label)
        sidecar = json.loads(open(res.outputs.cbf_json).read())
        runs[label] = (nb.load(res.outputs.cbf).get_fdata(), sidecar)
    gm = gm_share > 0
    found, sidecar = runs["curve"]
    assert sidecar["T1TissueSource"] == "GM mean curve"
    assert abs(sidecar["T1Tissue"] - 1.6) < 0.02
    assert sidecar["QuantificationParameters"]["t1_tissue"] == sidecar["T1Tissue"]
    assert sidecar["GMCurve"]["Voxels"] == int(gm.sum())
    assert abs(sidecar["GMCurve"]["ArterialTransitTime"] - att[gm].mean()) < 0.05
    np.testing.assert_allclose(found[gm].mean(), 60.0, rtol=0.01)
    fixed, sidecar = runs["fixed"]
    assert sidecar["T1Tissue"] == 1.4 and sidecar["T1TissueSource"].startswith("fixed")
    assert fixed[gm].mean() > 1.08 * 60.0
    # without tissue maps the fit keeps the fixed T1 and says why
    (tmp_path / "nomaps").mkdir()
    files.pop("gm")
    res = ComputeMultiPLDCBF(**files).run(cwd=tmp_path / "nomaps")
    sidecar = json.loads(open(res.outputs.cbf_json).read())
    assert sidecar["T1Tissue"] == 1.4 and sidecar["T1TissueSource"] == "fixed (no GM map)"


def test_multi_pld_uncertain_gm_curve_t1_keeps_the_fixed_one(tmp_path):
    """Six noisy repeats: the GM curve's T1 varies more than 0.2 s between
    jackknife refits, so the fit keeps the fixed T1, and the sidecar says why
    and gives the curve's T1 and its error."""
    rng = np.random.default_rng(24)
    plds = np.tile([0.5, 1.0, 1.5, 2.0, 2.5], 6)
    gm_share = (np.arange(SHAPE[0])[:, None, None] < 4) * np.ones(SHAPE)
    cbf = np.where(gm_share > 0, 60.0, 20.0)
    m0 = np.full(SHAPE, 1000.0)
    dm = K.pcasl_deltam(cbf[..., None], 1.0, plds, 1.8, m0[..., None], alpha=0.85, t1_tissue=1.6)
    dm = dm + 30.0 * rng.standard_normal(dm.shape)
    files = _write_run(tmp_path / "bids", dm, "control-first", _multi_pld_meta(plds), rng=rng)
    nb.Nifti1Image(gm_share.astype(np.float32), AFFINE).to_filename(tmp_path / "gm.nii.gz")
    (tmp_path / "run").mkdir()
    res = ComputeMultiPLDCBF(**files, gm=str(tmp_path / "gm.nii.gz")).run(cwd=tmp_path / "run")
    sidecar = json.loads(open(res.outputs.cbf_json).read())
    curve = sidecar["GMCurve"]
    assert curve["T1TissueFitted"] and curve["T1TissueStandardError"] > 0.2
    assert sidecar["T1Tissue"] == 1.4
    assert sidecar["T1TissueSource"].startswith("fixed (the GM mean curve's T1")
    assert f"{curve['T1Tissue']:.2f} s" in sidecar["T1TissueSource"]


def test_read_aslcontext_errors(tmp_path):
    bad = tmp_path / "sub-01_aslcontext.tsv"
    bad.write_text("type\ncontrol\nlabel\n")
    with pytest.raises(ASLInputError, match="volume_type") as err:
        read_aslcontext(bad)
    assert str(bad) in str(err.value)
    good = tmp_path / "ok_aslcontext.tsv"
    good.write_text("volume_type\r\nm0scan\r\ndeltam\r\n\r\n")
    assert read_aslcontext(good) == ("m0scan", "deltam")


def test_ge_deltam_with_included_m0_int16(tmp_path):
    """GE layout (asl001): one m0scan and a deltam volume, int16 with a scale factor."""
    rng = np.random.default_rng(23)
    cbf = rng.uniform(20.0, 80.0, SHAPE)
    m0 = rng.uniform(900.0, 1100.0, SHAPE)
    alpha = 0.85 * 0.95**4
    tr = 4.886
    dm = K.pcasl_deltam(cbf, 1.0, 2.025, 1.45, m0, alpha=alpha, t1b=1.65, t1_after_arrival="blood")
    series = np.stack([m0 * (1 - np.exp(-tr / 1.4)), dm], axis=3)
    img = nb.Nifti1Image(np.round(series / 0.05).astype(np.int16), AFFINE)
    img.header.set_slope_inter(0.05, 0.0)
    perf = tmp_path / "bids" / "sub-01" / "perf"
    perf.mkdir(parents=True)
    img.to_filename(perf / "sub-01_asl.nii.gz")
    (perf / "sub-01_aslcontext.tsv").write_text("volume_type\nm0scan\ndeltam\n")
    meta = dict(
        META,
        PostLabelingDelay=2.025,
        LabelingDuration=1.45,
        BackgroundSuppressionNumberPulses=4,
        M0Type="Included",
        RepetitionTimePreparation=tr,
    )
    files = {
        "asl_file": str(perf / "sub-01_asl.nii.gz"),
        "aslcontext": str(perf / "sub-01_aslcontext.tsv"),
        "metadata": meta,
    }
    stored = nb.load(files["asl_file"]).get_fdata()  # what the int16 file really holds
    res = ComputeCBF(**files).run(cwd=tmp_path)
    m0_used = stored[..., 0] / (1 - np.exp(-tr / 1.4))
    expected = stored[..., 1] / m0_used * 6000 * 0.9 * np.exp(2.025 / 1.65)
    expected /= 2 * alpha * 1.65 * (1 - np.exp(-1.45 / 1.65))
    out = nb.load(res.outputs.mean_cbf).get_fdata()
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_allclose(out, cbf, rtol=0.02)  # int16 rounding of ΔM only
    assert nb.load(res.outputs.cbf_ts).shape == SHAPE + (1,)


def test_cbf_volumes_pass_through(tmp_path):
    rng = np.random.default_rng(24)
    vols = rng.uniform(10.0, 90.0, SHAPE + (3,))
    perf = tmp_path / "bids"
    perf.mkdir()
    nb.Nifti1Image(vols.astype(np.float32), AFFINE).to_filename(perf / "sub-01_asl.nii.gz")
    (perf / "sub-01_aslcontext.tsv").write_text("volume_type\ncbf\ncbf\ncbf\n")
    res = ComputeCBF(
        asl_file=str(perf / "sub-01_asl.nii.gz"),
        aslcontext=str(perf / "sub-01_aslcontext.tsv"),
        metadata=dict(META, M0Type="Estimate", M0Estimate=1.0),
    ).run(cwd=tmp_path)
    np.testing.assert_allclose(
        nb.load(res.outputs.mean_cbf).get_fdata(), vols.mean(axis=3), rtol=1e-6
    )


def _white_paper_factor(t1b, lam, alpha, pld=1.8, tau=1.8):
    """CBF per unit ΔM/M0 of the white paper's pCASL equation."""
    return 6000 * lam * np.exp(pld / t1b) / (2 * alpha * t1b * (1 - np.exp(-tau / t1b)))


def test_quantification_constants_given_replace_the_defaults(tmp_path):
    """Data made with a blood T1, partition coefficient and labeling efficiency
    other than the defaults: read with the defaults it is off by the equation's
    ratio; with them as ``quant_overrides`` it reads back exactly, single- and
    multi-PLD, and the sidecars say which constants were given."""
    rng = np.random.default_rng(23)
    cbf = rng.uniform(20.0, 80.0, SHAPE)
    m0 = np.full(SHAPE, 1000.0)
    given = {"t1b": 1.5, "lam": 0.98, "labeling_efficiency": 0.8}
    bs = 0.95**2  # META's two background-suppression pulses
    dm = K.pcasl_deltam(
        cbf, 1.0, 1.8, 1.8, m0, alpha=0.8 * bs, t1b=1.5, lam=0.98, t1_after_arrival="blood"
    )
    meta = dict(META, M0Type="Estimate", M0Estimate=1000.0)
    files = _write_run(
        tmp_path / "bids", np.repeat(dm[..., None], 3, axis=3), "control-first", meta, rng=rng
    )
    for name in ("default", "given"):
        (tmp_path / name).mkdir()
    default = ComputeCBF(**files).run(cwd=tmp_path / "default").outputs
    ratio = _white_paper_factor(1.65, 0.9, 0.85 * bs) / _white_paper_factor(1.5, 0.98, 0.8 * bs)
    assert abs(ratio - 1) > 0.1  # the defaults would read these data 26% low
    np.testing.assert_allclose(nb.load(default.mean_cbf).get_fdata(), cbf * ratio, rtol=1e-4)
    assert "QuantificationOverrides" not in json.loads(open(default.mean_cbf_json).read())

    res = ComputeCBF(**files, quant_overrides=given).run(cwd=tmp_path / "given").outputs
    np.testing.assert_allclose(nb.load(res.mean_cbf).get_fdata(), cbf, rtol=1e-4)
    side = json.loads(open(res.mean_cbf_json).read())
    assert side["QuantificationOverrides"] == given
    q = side["QuantificationParameters"]
    assert q["t1b"] == 1.5 and q["lam"] == 0.98 and q["alpha"] == pytest.approx(0.8 * bs)
    with pytest.raises(TypeError, match="t1_blood"):
        ComputeCBF(**files, quant_overrides={"t1_blood": 1.5}).run(cwd=tmp_path / "given")

    plds = np.repeat([0.5, 1.0, 1.5, 2.0, 2.5], 2)
    dm = K.pcasl_deltam(
        cbf[..., None], 1.2, plds, 1.8, m0[..., None], alpha=0.8, t1b=1.5, lam=0.98
    )
    multi = _write_run(tmp_path / "multi", dm, "control-first", _multi_pld_meta(plds), rng=rng)
    fit = ComputeMultiPLDCBF(**multi, att_estimate="voxel", quant_overrides=given).run(
        cwd=tmp_path / "multi"
    )
    np.testing.assert_allclose(nb.load(fit.outputs.cbf).get_fdata(), cbf, rtol=1e-4)
    side = json.loads(open(fit.outputs.cbf_json).read())
    assert side["T1Blood"] == 1.5 and side["QuantificationOverrides"] == given
