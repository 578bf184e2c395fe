"""Known answers for the ASL simulator (asl_pipeline.simulate)."""

import numpy as np
import pytest
from scipy import ndimage

from asl_pipeline.errors import ASLInputError
from asl_pipeline.kinetics import LAMBDA, labeling_efficiency, t1_blood
from asl_pipeline.simulate import (
    motion_matrix,
    resample_moved,
    simulate_cbf_series,
    simulate_subject,
)
from asl_pipeline.simulate.anatomy import SmoothField, apply_affine, grid_affine, grid_points

# small and coarse so every test runs in about a second
SMALL = dict(shape=(32, 32, 12), voxel_size=(6.0, 6.0, 10.0), resolution=2, subsample=(1, 1, 2))


def _white_paper_cbf(dm, m0, md, slice_pld, alpha):
    t1b = t1_blood(3.0)
    pld = slice_pld[None, None, :]
    if md["ArterialSpinLabelingType"] == "PCASL":
        tau = md["LabelingDuration"]
        denom = 2 * alpha * t1b * m0 * (1 - np.exp(-tau / t1b))
    else:
        denom = 2 * alpha * md["BolusCutOffDelayTime"] * m0
    with np.errstate(divide="ignore", invalid="ignore"):  # M0 = 0 outside the head
        return 6000 * LAMBDA * dm * np.exp(pld / t1b) / denom


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(labeling="PCASL", readout="2D"),
        dict(
            labeling="PCASL",
            readout="3D",
            background_suppression=True,
            label_first=True,
            z_blur_fwhm=0.0,
        ),
        dict(labeling="PASL", readout="2D"),
    ],
)
def test_noise_free_signal_inverts_with_white_paper(kwargs):
    sub = simulate_subject(
        3,
        n_pairs=2,
        motion=False,
        outliers=False,
        noise_scale=0,
        t1w=False,
        dtype=np.float64,
        **SMALL,
        **kwargs,
    )
    md = sub.metadata
    ctx = sub.aslcontext
    assert ctx[:2] == (["label", "control"] if kwargs.get("label_first") else ["control", "label"])
    control = sub.asl[..., ctx.index("control")]
    label = sub.asl[..., ctx.index("label")]
    n_bs = md.get("BackgroundSuppressionNumberPulses", 0)
    alpha = labeling_efficiency(md["ArterialSpinLabelingType"], None, n_bs)
    assert alpha == pytest.approx(sub.alpha)
    slice_pld = md["PostLabelingDelay"] + np.asarray(md.get("SliceTiming", [0.0] * 12))
    cbf = _white_paper_cbf(control - label, sub.m0_true.astype(float), md, slice_pld, alpha)
    if md["ArterialSpinLabelingType"] == "PCASL":
        arrived = sub.att < slice_pld[None, None, :]
    else:
        arrived = sub.att < slice_pld[None, None, :] - md["BolusCutOffDelayTime"]
    sel = arrived & (sub.cbf > 1.0)
    assert sel.sum() > 100
    rel = np.abs(cbf[sel] - sub.cbf[sel]) / sub.cbf[sel]
    # the truth is stored as float32
    assert rel.max() < 1e-6


def test_cbf_and_att_ranges_and_partial_volume():
    sub = simulate_subject(5, n_pairs=1, t1w=False, **SMALL)
    pure_gm = sub.gm > 0.95
    pure_wm = sub.wm > 0.95
    assert pure_wm.sum() > 20
    # tissue CBF in the published ranges (GM 40-80, WM 15-30), mixed by the
    # partial-volume fractions
    lo = 40 * sub.gm + 15 * sub.wm
    hi = 80 * sub.gm + 30 * sub.wm
    assert np.all(sub.cbf >= lo - 1e-3) and np.all(sub.cbf <= hi + 1e-3)
    assert pure_gm.sum() + (sub.gm > 0.8).sum() > 10
    tissue = (sub.gm + sub.wm) > 0.5
    assert 0.7 <= sub.att[tissue].min() and sub.att[tissue].max() <= 1.8
    # ATT longer in WM than in GM on average
    assert sub.att[sub.wm > 0.8].mean() > sub.att[sub.gm > 0.5].mean()
    # fractions are fractions, and M0 differs between tissues
    total = sub.gm + sub.wm + sub.csf
    assert total.max() <= 1 + 1e-5
    assert sub.m0_true[sub.csf > 0.9].mean() > sub.m0_true[pure_wm].mean()


def _blob(shape, affine, centre_mm, width=8.0):
    pts = grid_points(affine, shape)
    d2 = ((pts - centre_mm) ** 2).sum(1)
    return np.exp(-d2 / (2 * width**2)).reshape(shape)


def test_motion_convention_moves_a_point_as_recorded():
    shape = (48, 48, 40)
    affine = grid_affine(shape, (2.0, 2.0, 2.5), (5.0, -10.0, 20.0))
    p = np.array([20.0, 5.0, 30.0])
    params = np.array([2.0, -1.5, 3.0, 0.08, -0.05, 0.1])
    img = _blob(shape, affine, p)
    moved = resample_moved(img, affine, params, prefiltered=False)
    # centroid of the moved blob = T @ p
    pts = grid_points(affine, shape)
    w = moved.ravel() / moved.sum()
    centroid = (pts * w[:, None]).sum(0)
    expected = apply_affine(motion_matrix(params, affine, shape), p[None])[0]
    np.testing.assert_allclose(centroid, expected, atol=0.05)
    # and the blob re-created at the moved point is the resampled image
    np.testing.assert_allclose(moved, _blob(shape, affine, expected), atol=2e-3)


def test_subject_motion_matches_recorded_parameters():
    # 3D readout: the TR does not depend on the number of slices
    kw = dict(
        n_pairs=4,
        outliers=False,
        noise_scale=0,
        t1w=False,
        motion_scale=4.0,
        readout="3D",
        z_blur_fwhm=0.0,
        **SMALL,
    )
    sub = simulate_subject(11, motion=True, **kw)
    # the same subject without motion on a grid padded by 3 voxels (same voxel
    # centres, same anatomy): the reference head position, including the
    # tissue just outside the FOV that motion brings in
    kw["shape"] = tuple(n + 6 for n in SMALL["shape"])
    ref = simulate_subject(11, motion=False, **kw)
    np.testing.assert_allclose(ref.asl_affine[:3, :3], sub.asl_affine[:3, :3])
    coef = ndimage.spline_filter(ref.static, 3, mode="nearest")
    assert np.all(sub.motion[0] == 0)
    for t in range(2, 8, 2):  # control volumes
        assert np.abs(sub.motion[t]).max() > 0.2
        predicted = resample_moved(
            coef,
            ref.asl_affine,
            sub.motion[t],
            mode="nearest",
            out_shape=sub.asl.shape[:3],
            out_affine=sub.asl_affine,
        )
        predicted = np.maximum(predicted, 0)  # signals are clipped at 0
        # the recorded parameters reproduce the moved volume (float32 storage)
        scale = np.abs(predicted).max()
        assert np.abs(predicted - sub.asl[..., t]).max() < 1e-5 * scale
        # and the motion is not negligible
        assert np.abs(ref.static[3:-3, 3:-3, 3:-3] - sub.asl[..., t]).max() > 0.05 * scale


def test_determinism_and_seed_dependence():
    a = simulate_cbf_series(7, n_pairs=4, **SMALL)
    b = simulate_cbf_series(7, n_pairs=4, **SMALL)
    c = simulate_cbf_series(8, n_pairs=4, **SMALL)
    np.testing.assert_array_equal(a.cbf_series, b.cbf_series)
    np.testing.assert_array_equal(a.motion, b.motion)
    assert a.outlier_slices == b.outlier_slices
    assert not np.array_equal(a.cbf, c.cbf)


def test_cbf_series_mean_converges_to_truth():
    n = 400
    s = simulate_cbf_series(21, n_pairs=n, outliers=False, **SMALL)
    sel = (s.gm > 0.6) & s.brain_mask
    assert sel.sum() > 30
    mean = s.cbf_series[..., :n].mean(-1)
    sd = s.cbf_series.std(-1)
    # per-pair noise in the advertised range
    assert 25 < np.median(sd[sel]) < 80
    # the error of the mean is what the SD predicts (no bias): z-scores ~ N(0, 1)
    z = (mean[sel] - s.cbf[sel]) / (sd[sel] / np.sqrt(n))
    assert abs(np.mean(z)) < 1.0
    assert np.sqrt(np.mean(z**2)) < 2.0
    # and the regional mean is within 4 standard errors of the truth; the
    # physiological noise is spatially coherent, so the SE comes from the
    # per-pair regional means
    regional = s.cbf_series[sel].mean(0)
    se = regional.std() / np.sqrt(n)
    assert abs(regional.mean() - s.cbf[sel].mean()) < 4 * se
    assert se < 0.05 * s.cbf[sel].mean()


def test_cbf_series_outlier_bookkeeping_matches_corruption():
    s = simulate_cbf_series(
        4,
        n_pairs=30,
        noise_scale=0,
        motion_scale=0,
        spike_rate=0.1,
        slice_outlier_rate=0.03,
        **SMALL,
    )
    err = np.abs(s.cbf_series - s.cbf[..., None])
    err[~s.brain_mask] = 0
    bad = err.max(axis=(0, 1)) > 1e-2  # (slice, pair)
    found = {(int(p), int(z)) for z, p in zip(*np.nonzero(bad), strict=True)}
    expected = {(p, z) for p, z in s.outlier_slices}
    nz = s.cbf_series.shape[2]
    brain_slices = {z for z in range(nz) if s.brain_mask[..., z].any()}
    expected |= {(p, z) for p in s.outlier_pairs for z in brain_slices}
    assert found == expected
    assert s.outlier_pairs and s.outlier_slices
    # spikes coincide with motion jerks (volume units: 2 per pair)
    motion = s.motion
    assert motion.shape == (60, 6)


def test_cbf_series_spikes_coincide_with_jerks():
    s = simulate_cbf_series(4, n_pairs=30, spike_rate=0.1, **SMALL)
    step = np.abs(np.diff(s.motion[:, :3], axis=0)).max(1)
    for p in s.outlier_pairs:
        assert max(step[max(0, 2 * p - 1) : 2 * p + 2]) > 0.3


def test_subject_outlier_bookkeeping():
    sub = simulate_subject(
        9,
        n_pairs=12,
        motion=False,
        noise_scale=0,
        t1w=False,
        spike_rate=0.1,
        slice_outlier_rate=0.03,
        **SMALL,
    )
    is_label = np.array([c == "label" for c in sub.aslcontext])
    clean = sub.static[..., None] - is_label * sub.deltam[..., None]
    err = np.abs(sub.asl - clean)
    bad = err.max(axis=(0, 1)) > 1e-2  # (slice, volume)
    found = {(int(t), int(z)) for z, t in zip(*np.nonzero(bad), strict=True)}
    vol_bad = {t for t in range(sub.asl.shape[3]) if bad[:, t].sum() > 3}
    assert vol_bad == set(sub.outlier_volumes)
    expected = set(sub.outlier_slices)
    assert {(t, z) for t, z in found if t not in vol_bad} == expected
    assert len(sub.outlier_slice_kinds) == len(sub.outlier_slices)


def test_metadata_is_scanner_like():
    sub = simulate_subject(1, n_pairs=3, t1w=False, **SMALL)
    md = sub.metadata
    for key in (
        "ArterialSpinLabelingType",
        "PostLabelingDelay",
        "LabelingDuration",
        "M0Type",
        "BackgroundSuppression",
        "MagneticFieldStrength",
        "MRAcquisitionType",
        "SliceTiming",
        "RepetitionTimePreparation",
        "TotalAcquiredPairs",
    ):
        assert key in md
    assert md["TotalAcquiredPairs"] == 3 and md["M0Type"] == "Separate"
    assert len(md["SliceTiming"]) == 12
    assert sub.asl.shape == (32, 32, 12, 6) and sub.asl.dtype == np.float32
    assert sub.m0.shape == (32, 32, 12)
    assert sub.m0_metadata["RepetitionTimePreparation"] > 0
    pasl = simulate_subject(1, n_pairs=1, t1w=False, labeling="PASL", readout="3D", **SMALL)
    assert pasl.metadata["BolusCutOffFlag"] is True
    assert "SliceTiming" not in pasl.metadata and "LabelingDuration" not in pasl.metadata


def test_t1w_contrast_and_true_mapping():
    sub = simulate_subject(2, n_pairs=1, t1w_voxel_size=2.0, **SMALL)
    t1 = sub.t1w
    assert t1 is not None and sub.t1w_affine[0, 0] == 2.0
    wm = t1[sub.wm_t1w > 0.9].mean()
    gm = t1[sub.gm_t1w > 0.9].mean() if (sub.gm_t1w > 0.9).any() else t1[sub.gm_t1w > 0.7].mean()
    csf = t1[(sub.csf_t1w > 0.9) & sub.brain_mask_t1w].mean()
    assert wm > gm > csf
    # non-brain tissue (scalp) around the brain
    outside = ~sub.brain_mask_t1w & (t1 > 0.5 * wm)
    assert outside.sum() > 1000
    # the ASL -> T1w relation is not the identity
    assert not np.allclose(sub.asl_to_t1w, np.eye(4))
    # the true mapping is smooth, non-linear and matches the maps: the MNI
    # image of brain-mask voxels lies inside the MNI brain box
    pts = grid_points(sub.t1w_affine, t1.shape)[sub.brain_mask_t1w.ravel()]
    mni = sub.subject_to_mni_points(pts)
    assert np.all(np.abs(mni[:, 0]) < 80)
    lin = apply_affine(sub.t1w_to_mni_affine, pts)
    disp = np.linalg.norm(mni - lin, axis=1)
    assert 0.5 < disp.mean() < 10


def test_smooth_field_grid_evaluation_is_exact():
    rng = np.random.default_rng(0)
    f = SmoothField(rng, (-20, -20, -20), (20, 20, 20), 10.0, 1.0, taper=True)
    shape = (9, 7, 5)
    affine = grid_affine(shape, (4.0, 5.0, 6.0), (1.0, 2.0, 3.0))
    np.testing.assert_allclose(
        f.on_grid(affine, shape).ravel(), f(grid_points(affine, shape)), atol=1e-10
    )


def test_bad_arguments_raise_asl_input_error():
    with pytest.raises(ASLInputError, match="labeling"):
        simulate_cbf_series(0, labeling="FAIR", **SMALL)
    with pytest.raises(ASLInputError, match="readout"):
        simulate_subject(0, readout="4D", **SMALL)
    with pytest.raises(ASLInputError, match="n_pairs"):
        simulate_cbf_series(0, n_pairs=0, **SMALL)
    small = {k: v for k, v in SMALL.items() if k != "voxel_size"}
    with pytest.raises(ASLInputError, match="voxel_size"):
        simulate_subject(0, voxel_size=(3.0, -3.0, 5.0), **small)
    with pytest.raises(ASLInputError, match="noise_scale"):
        simulate_cbf_series(0, noise_scale=-1, **SMALL)
    with pytest.raises(ASLInputError, match="bolus_cutoff"):
        simulate_cbf_series(0, labeling="PASL", bolus_cutoff=2.5, **SMALL)


def test_lesion_is_hypoperfused_and_delayed():
    kw = dict(n_pairs=1, t1w=False, motion=False, outliers=False, **SMALL)
    healthy = simulate_subject(6, **kw)
    ill = simulate_subject(6, lesion=True, **kw)
    assert healthy.lesion is None
    core = (ill.lesion > 0.3) & (healthy.cbf > 5)
    far = ill.lesion < 1e-3
    assert core.sum() > 5
    # CBF is scaled by 1 - depth * weight, with one depth in [0.5, 0.8]
    depth = (1 - ill.cbf[core] / healthy.cbf[core]) / ill.lesion[core]
    assert np.ptp(depth) < 1e-3
    assert 0.5 <= depth.mean() <= 0.8
    np.testing.assert_allclose(ill.cbf[far], healthy.cbf[far], rtol=1e-3)
    assert np.all(ill.att[core] > healthy.att[core])


def test_2d_background_suppression_recovers_along_the_slices():
    from asl_pipeline.simulate.anatomy import PROTON_DENSITY, T1_3T
    from asl_pipeline.simulate.series import BS_RESIDUAL, M0_SCALE

    sub = simulate_subject(
        8,
        n_pairs=1,
        t1w=False,
        motion=False,
        outliers=False,
        noise_scale=0,
        background_suppression=True,
        **SMALL,
    )
    st = np.asarray(sub.metadata["SliceTiming"])
    tr = sub.metadata["RepetitionTimePreparation"]
    expected = 0.0
    for name in ("gm", "wm", "csf"):
        sat = PROTON_DENSITY[name] * (1 - np.exp(-tr / T1_3T[name]))
        bs = 1 - (1 - BS_RESIDUAL[name]) * np.exp(-st / T1_3T[name])
        expected = expected + getattr(sub, name) * sat * bs[None, None, :]
    expected = expected * M0_SCALE * sub.readout_gain
    brain_only = (sub.gm + sub.wm + sub.csf) > 0.999
    assert brain_only.sum() > 100
    # (up to 0.1% of skull/scalp left in those voxels)
    np.testing.assert_allclose(sub.static[brain_only], expected[brain_only], rtol=1e-3)
    # later slices are less suppressed
    ratio = sub.static / np.maximum(sub.m0_true, 1e-6)
    first, last = (
        np.median(ratio[..., 2][brain_only[..., 2]]),
        np.median(ratio[..., -3][brain_only[..., -3]]),
    )
    assert last > 1.5 * first


def test_m0_included_is_the_first_volume_and_indices_shift():
    kw = dict(n_pairs=6, t1w=False, spike_rate=0.2, **SMALL)
    sep = simulate_subject(12, **kw)
    inc = simulate_subject(12, m0_type="Included", **kw)
    assert inc.aslcontext == ["m0scan"] + sep.aslcontext
    assert inc.metadata["M0Type"] == "Included" and inc.m0_metadata is None
    np.testing.assert_array_equal(inc.asl[..., 0], sep.m0)
    np.testing.assert_array_equal(inc.asl[..., 1:], sep.asl)
    np.testing.assert_array_equal(inc.motion[1:], sep.motion)
    np.testing.assert_array_equal(inc.motion[0], sep.m0_motion)
    assert inc.outlier_volumes == [t + 1 for t in sep.outlier_volumes]
    assert inc.outlier_slices == [(t + 1, z) for t, z in sep.outlier_slices]
    # pair units do not depend on the M0 volume
    assert inc.outlier_pairs == sep.outlier_pairs == sorted({t // 2 for t in sep.outlier_volumes})
    assert inc.outlier_pair_slices == sep.outlier_pair_slices


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(labeling="PCASL"),
        dict(labeling="PASL", readout="3D", z_blur_fwhm=0.0, background_suppression=True),
        dict(labeling="PCASL", m0_type="Included", label_first=True),
    ],
)
def test_pipeline_quantification_reads_the_simulated_sidecars(kwargs):
    """Contract with asl_pipeline.cbf: the sidecar alone gives back the truth."""
    from asl_pipeline import cbf as cbf_mod

    sub = simulate_subject(
        3,
        n_pairs=2,
        motion=False,
        outliers=False,
        noise_scale=0,
        t1w=False,
        dtype=np.float64,
        **SMALL,
        **kwargs,
    )
    params = cbf_mod.quant_params_from_metadata(sub.metadata, m0_metadata=sub.m0_metadata)
    deltam = cbf_mod.deltam_series(sub.asl, sub.aslcontext).deltam
    res = cbf_mod.cbf_single_pld(deltam, sub.m0_true.astype(float), params)
    arrived = sub.att < sub.slice_pld[None, None, :] - (
        sub.metadata.get("BolusCutOffDelayTime", 0.0) if kwargs["labeling"] == "PASL" else 0.0
    )
    sel = arrived & (sub.cbf > 1) & ~res.excluded
    assert sel.sum() > 100
    np.testing.assert_allclose(res.mean_cbf[sel], sub.cbf[sel], rtol=1e-6)


def test_motion_convention_is_the_pipelines():
    """True parameters compare directly with asl_pipeline.motion's estimates."""
    from asl_pipeline import motion as pipeline_motion

    rng = np.random.default_rng(3)
    shape = (40, 40, 16)
    affine = grid_affine(shape, (3.4, 3.4, 6.0), (2.0, -20.0, 15.0))
    centre = pipeline_motion.grid_centre(shape, affine)
    for _ in range(5):
        params = np.r_[rng.normal(0, 2, 3), rng.normal(0, 0.05, 3)]
        np.testing.assert_allclose(
            motion_matrix(params, affine, shape),
            pipeline_motion.params_to_matrix(params, centre),
            atol=1e-12,
        )
