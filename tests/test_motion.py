"""ASL-aware motion correction: known-answer tests on an analytic phantom.

The phantom is a smooth function of world coordinates, so each moved volume is
evaluated exactly at ``M_k^-1 y`` (no interpolation in the ground truth).
"""

import numpy as np
import pytest

from asl_pipeline import motion as mo
from asl_pipeline.errors import ASLInputError

SHAPE = (48, 48, 16)


def _affine():
    aff = np.diag([4.0, 4.0, 5.0, 1.0])
    aff[:3, 3] = [-94.0, -96.0, -37.5]
    return aff


def _phantom_fn(seed):
    rng = np.random.default_rng(seed)
    blobs = [
        (*rng.uniform([-50, -60, -25], [50, 60, 25]), rng.uniform(6, 14), rng.uniform(-40, 40))
        for _ in range(30)
    ]

    def fn(x, y, z):
        r = np.sqrt((x / 75) ** 2 + (y / 88) ** 2 + (z / 50) ** 2)
        img = 100.0 / (1.0 + np.exp((r - 1.0) / 0.04))
        for cx, cy, cz, s, a in blobs:
            img = img + a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s**2))
        return img

    return fn


def _series(seed=0, n=24, perf_frac=0.03, noise=0.3, motion_sd=(0.15, 0.002)):
    """Moving phantom with a local (GM-like) label/control difference."""
    rng = np.random.default_rng(seed)
    fn = _phantom_fn(seed)
    aff = _affine()
    centre = mo.grid_centre(SHAPE, aff)
    true = np.zeros((n, 6))
    true[:, :3] = np.cumsum(rng.normal(0, motion_sd[0], (n, 3)), axis=0)
    true[:, 3:] = np.cumsum(rng.normal(0, motion_sd[1], (n, 3)), axis=0)
    types = ["control", "label"] * (n // 2)
    zig = mo.zigzag_regressor(types)
    mats = mo.params_to_matrix(true, centre)
    ijk = np.indices(SHAPE).reshape(3, -1)
    xyz = aff[:3, :3] @ ijk + aff[:3, 3:]
    vols = np.empty(SHAPE + (n,), dtype=np.float32)
    for k in range(n):
        inv = np.linalg.inv(mats[k])
        x, y, z = inv[:3, :3] @ xyz + inv[:3, 3:]
        img = fn(x, y, z)
        # perfusion: a cortical-ribbon-like shell loses signal in label images
        r = np.sqrt((x / 75) ** 2 + (y / 88) ** 2 + (z / 50) ** 2)
        shell = np.exp(-(((r - 0.8) / 0.08) ** 2)) * (x > 0)  # one hemisphere only
        if zig[k] < 0:
            img = img - perf_frac * 100.0 * shell
        vols[..., k] = img.reshape(SHAPE) + rng.normal(0, noise, SHAPE)
    return vols, aff, types, true, mats, centre


def _errors(est_params, mats, centre):
    """Translation (mm, at the centre) and rotation (deg) error of each volume.

    Estimates are relative to the first volume (SPM's reference space).
    """
    est = mo.params_to_matrix(est_params, centre)
    first_inv = np.linalg.inv(mats[0])
    out = []
    for k in range(len(est)):
        d = np.linalg.inv(first_inv @ mats[k]) @ est[k]
        ang = np.degrees(np.arccos(np.clip((np.trace(d[:3, :3]) - 1) / 2, -1, 1)))
        out.append((np.linalg.norm(d[:3, :3] @ centre + d[:3, 3] - centre), ang))
    return np.array(out)


def _direct_errors(est_params, ref_params, centre):
    """Pose errors between two parameter sets in the same frame (no re-anchoring)."""
    out = []
    est = mo.params_to_matrix(est_params, centre)
    ref = mo.params_to_matrix(ref_params, centre)
    for e, r in zip(est, ref, strict=True):
        d = np.linalg.inv(r) @ e
        ang = np.degrees(np.arccos(np.clip((np.trace(d[:3, :3]) - 1) / 2, -1, 1)))
        out.append((np.linalg.norm(d[:3, :3] @ centre + d[:3, 3] - centre), ang))
    return np.array(out)


def test_static_series_reads_no_motion_at_the_field_of_view_edge():
    # the head fills the field of view through-plane, so the edge slices carry
    # signal; a volume identical to the reference must read zero motion, with
    # and without the slice down-weighting (the cubic refine once read its
    # edge slices with a boundary mode other than the one it was filtered with)
    vols, aff, _, _, _, centre = _series(seed=4, n=2, motion_sd=(0.0, 0.0), noise=0.0)
    control = vols[..., :1]
    assert control[:, :, 0].mean() > 20 and control[:, :, -1].mean() > 20
    for threshold in (3.0, None):  # two passes: the second is the cubic refine
        params, _ = mo.estimate_motion(
            np.repeat(control, 3, axis=-1),
            aff,
            centre=centre,
            anchor_first=False,
            slice_threshold=threshold,
        )
        assert np.abs(params[:, :3]).max() < 1e-3, params  # mm
        assert np.abs(params[:, 3:]).max() < 1e-5, params  # rad


def test_params_matrix_roundtrip():
    rng = np.random.default_rng(1)
    p = np.column_stack([rng.normal(0, 3, (20, 3)), rng.normal(0, 0.2, (20, 3))])
    c = np.array([1.0, -20.0, 7.0])
    back = mo.matrix_to_params(mo.params_to_matrix(p, c), c)
    np.testing.assert_allclose(back, p, atol=1e-10)
    # translation-only parameters move every point by t
    m = mo.params_to_matrix([1, 2, 3, 0, 0, 0], c)
    np.testing.assert_allclose(m @ [5, 6, 7, 1], [6, 8, 10, 1])
    # the centre is a fixed point of a pure rotation
    m = mo.params_to_matrix([0, 0, 0, 0.1, -0.2, 0.3], c)
    np.testing.assert_allclose((m @ np.r_[c, 1])[:3], c, atol=1e-12)


def test_remove_zigzag_known_answer():
    n = 40
    z = mo.zigzag_regressor(["control", "label"] * (n // 2))
    drift = np.linspace(0, 1, n)
    params = np.column_stack([drift * (i + 1) + 0.3 * i for i in range(6)])
    dirty = params + np.outer(z, [0.05, -0.02, 0.01, 0.001, 0.0, -0.002])
    clean = mo.remove_zigzag(dirty, z)
    # no zig-zag left, intercept (mean) kept
    np.testing.assert_allclose(z @ (clean - clean.mean(0)), 0, atol=1e-10)
    np.testing.assert_allclose(clean.mean(0), dirty.mean(0), atol=1e-12)
    # the residual zig-zag component of a linear drift is tiny but not zero:
    # the projection removes exactly what correlates with z
    zc = z - z.mean()
    expected = dirty - np.outer(zc, zc @ (dirty - dirty.mean(0)) / (zc @ zc))
    np.testing.assert_allclose(clean, expected, atol=1e-12)
    # M0 rows (zero in the regressor) are left as they are
    z2 = np.r_[0.0, z]
    d2 = np.vstack([np.full(6, 9.0), dirty])
    np.testing.assert_array_equal(mo.remove_zigzag(d2, z2)[0], 9.0)


def test_fd_and_rmsd_known_answers():
    p = np.zeros((3, 6))
    p[1, 0] = 1.0  # 1 mm along x
    p[2, 0] = 1.0
    p[2, 3] = 0.01  # 0.01 rad about x
    fd = mo.framewise_displacement(p)
    np.testing.assert_allclose(fd, [0.0, 1.0, 0.5])
    rmsd = mo.rms_displacement(p, centre=np.zeros(3), radius=50.0)
    # pure translation: RMS = |t|; pure small rotation about the sphere centre:
    # sqrt(r^2/5 * tr(A^T A)) with tr = 2 (2 - 2 cos a)
    rot = np.sqrt(50.0**2 / 5 * 2 * (2 - 2 * np.cos(0.01)))
    np.testing.assert_allclose(rmsd, [0.0, 1.0, rot], rtol=1e-6)


def test_realign_recovers_true_motion_and_removes_zigzag():
    vols, aff, types, true, mats, centre = _series(seed=3)
    res = mo.realign_asl(vols, aff, types, zigzag_method="regress")
    err = _errors(res.params_raw, mats, centre)
    assert err[:, 0].max() <= 0.1, err[:, 0].max()
    assert err[:, 1].max() <= 0.1, err[:, 1].max()
    # cleaned = truth (relative to volume 0) with its own zig-zag part removed
    z = res.zigzag
    rel = mo.matrix_to_params(np.linalg.inv(mats[0]) @ mats, centre)
    err = _direct_errors(res.params, mo.remove_zigzag(rel, z), centre)
    assert err[:, 0].max() <= 0.1 and err[:, 1].max() <= 0.1
    # cleaned parameters carry no zig-zag; the raw ones did (perfusion shell)
    np.testing.assert_allclose(z @ (res.params - res.params.mean(0)), 0, atol=1e-9)
    raw_amp = np.abs(z @ (res.params_raw - res.params_raw.mean(0))) / len(z)
    assert raw_amp[:3].max() > 0.005  # mm of spurious zig-zag in the raw fit
    # resliced volumes line up: the corrected series has far less spread
    # across time than the uncorrected one inside the head
    head = vols.mean(-1) > 20
    before = vols[head].std(axis=1).mean()
    after = res.corrected[head].std(axis=1).mean()
    assert after < 0.5 * before
    assert res.fd.shape == (len(types),) and res.fd[0] == 0
    np.testing.assert_allclose(res.fd, mo.framewise_displacement(res.params))


def test_m0_realigned_to_same_reference():
    vols, aff, types, true, mats, centre = _series(seed=5, n=12)
    # separate M0: two extra moved volumes, brighter (no labeling)
    m0 = vols[..., :2] * 1.3
    res = mo.realign_asl(vols[..., 2:], aff, types[2:], m0=m0, m0_affine=aff)
    assert res.m0_corrected.shape == m0.shape
    est = mo.params_to_matrix(res.m0_params, centre)
    # reference space is the first ASL volume (volume 2 of the simulation)
    first_inv = np.linalg.inv(mats[2])
    for k in range(2):
        d = np.linalg.inv(first_inv @ mats[k]) @ est[k]
        assert np.linalg.norm(d[:3, :3] @ centre + d[:3, 3] - centre) < 0.1


def _perfusion_volumes(seed, n, scale=3.0):
    """``n`` noisy ΔM-like volumes (a cortical shell, one hemisphere) on the
    phantom's grid: none of them looks like the phantom itself."""
    rng = np.random.default_rng(seed)
    aff = _affine()
    ijk = np.indices(SHAPE).reshape(3, -1)
    x, y, z = aff[:3, :3] @ ijk + aff[:3, 3:]
    r = np.sqrt((x / 75) ** 2 + (y / 88) ** 2 + (z / 50) ** 2)
    shell = (scale * np.exp(-(((r - 0.8) / 0.08) ** 2)) * (x > 0)).reshape(SHAPE)
    return np.stack([shell + rng.normal(0, 1.0, SHAPE) for _ in range(n)], axis=-1)


@pytest.mark.parametrize("with_pairs", [False, True])
def test_deltam_volumes_are_not_moved(with_pairs):
    """A ΔM volume has the contrast of no other volume: fitted to the series'
    mean it was moved by millimetres (6.7 mm RMS on the README demo turned
    into GE's layout, m0scan then deltam). It keeps the origin's pose, and
    the other volumes are realigned as before."""
    vols, aff, types, true, mats, centre = _series(seed=7, n=8)
    m0 = vols[..., :1] * 1.3  # an M0 at the pose of the series' first volume
    deltam = _perfusion_volumes(7, 2)
    if with_pairs:
        series = np.concatenate([m0, deltam, vols], axis=-1)
        kinds = ["m0scan", "deltam", "DeltaM"] + types
    else:
        series = np.concatenate([m0, deltam], axis=-1)
        kinds = ["m0scan", "deltam", "cbf"]
    res = mo.realign_asl(series, aff, kinds)
    np.testing.assert_array_equal(res.params_raw[1:3], 0.0)
    np.testing.assert_array_equal(res.params[1:3], 0.0)
    # no motion applied: the spline reslice at the identity gives the volumes back
    np.testing.assert_allclose(res.corrected[..., 1:3], deltam, atol=1e-3)
    assert mo.registered_volumes(kinds).tolist() == [0] + list(range(3, len(kinds)))
    if with_pairs:  # the pairs' motion is still found (origin: the M0 at volume 0's pose)
        est = mo.params_to_matrix(res.params_raw[3:], centre)
        first_inv = np.linalg.inv(mats[0])
        for k in range(len(types)):
            d = np.linalg.inv(first_inv @ mats[k]) @ est[k]
            assert np.linalg.norm(d[:3, :3] @ centre + d[:3, 3] - centre) < 0.1

    # a backend's estimate for them (SPM's) is set aside too
    moved = np.zeros((3, 6))
    moved[1:] = [2.2, -5.8, 1.9, -0.04, 0.017, 0.027]  # the demo's bogus pose
    res = mo.apply_realignment(series[..., :3], aff, ["m0scan", "deltam", "cbf"], moved)
    np.testing.assert_array_equal(res.params_raw, 0.0)


@pytest.mark.parametrize(
    "case",
    ["empty", "3d", "rows", "m0_fov", "nan"],
)
def test_bad_input_raises(case):
    vols, aff, types, *_ = _series(seed=0, n=4)
    kwargs = {}
    if case == "empty":
        vols = np.zeros((0, 48, 16, 4))
    elif case == "3d":
        vols = vols[..., 0]
    elif case == "rows":
        types = types[:-1]
    elif case == "m0_fov":
        kwargs = dict(m0=np.ones((40, 48, 16)), m0_file="sub-01_m0scan.nii.gz")
    elif case == "nan":
        vols = vols.copy()
        vols[0, 0, 0, 0] = np.nan
    with pytest.raises(ASLInputError) as exc:
        mo.realign_asl(vols, aff, types, asl_file="sub-01_asl.nii.gz", **kwargs)
    msg = str(exc.value)
    assert "Fix:" in msg
    assert ("m0scan" if case == "m0_fov" else "asl") in msg


@pytest.mark.slow
def test_realign_simulated_subject_against_true_motion():
    """Simulator series (2D readout, slice drops/ghosts, a spike): every volume's raw
    estimate within 0.1 mm and 0.1 deg of the true pose; the cleaned parameters
    equal the truth with its own zig-zag component removed (Wang's correction
    removes whatever part of the true motion follows the zig-zag too)."""
    from asl_pipeline.simulate import simulate_subject
    from asl_pipeline.simulate.motion import motion_matrix

    s = simulate_subject(2, t1w=False, n_pairs=20)
    res = mo.realign_asl(
        s.asl, s.asl_affine, s.aslcontext, m0=s.m0, m0_affine=s.asl_affine, zigzag_method="regress"
    )
    true = np.array([motion_matrix(p, s.asl_affine, s.asl.shape[:3]) for p in s.motion])
    err = _errors(res.params_raw, true, res.centre)
    assert err[:, 0].max() <= 0.1, err[:, 0].max()
    assert err[:, 1].max() <= 0.1, err[:, 1].max()
    z = res.zigzag
    np.testing.assert_allclose(z @ (res.params - res.params.mean(0)), 0, atol=1e-8)
    true_clean = mo.remove_zigzag(mo.matrix_to_params(true, res.centre), z)
    err = _direct_errors(res.params, true_clean, res.centre)
    assert err[:, 0].max() <= 0.1 and err[:, 1].max() <= 0.1
    assert res.m0_corrected.shape[:3] == s.asl.shape[:3]


def test_simulator_and_estimator_share_the_rigid_convention():
    from asl_pipeline.simulate import spm_rigid_matrix

    rng = np.random.default_rng(3)
    centre = (1.5, -20.0, 12.0)
    for _ in range(5):
        params = np.r_[rng.normal(0, 3, 3), rng.normal(0, 0.05, 3)]
        np.testing.assert_allclose(
            spm_rigid_matrix(params, centre), mo.params_to_matrix(params, centre), atol=1e-12
        )


def test_interpolated_pair_trajectory_keeps_drift_and_cancels_bias():
    types = ["control", "label"] * 6
    n = len(types)
    drift = np.outer(np.arange(n), [0.05, -0.02, 0.01, 0.001, 0.0, -0.002])
    bias = np.outer(mo.zigzag_regressor(types), [0.03, 0.01, -0.02, 0.0005, 0.001, 0.0])
    cleaned = mo.clean_params(drift + bias, types, "interpolate")
    inner = slice(1, n - 1)  # the first and last volumes are held at their pair's mean
    np.testing.assert_allclose(cleaned[inner], drift[inner], atol=1e-12)
    # the spec's regression removes the within-pair half of the drift as well
    regressed = mo.clean_params(drift + bias, types, "regress")
    assert np.abs(regressed[inner] - drift[inner]).max() > 0.02


def _trajectory(types, seed, jitter):
    """Drift, two sudden moves (one inside a pair, one between pairs) and jitter."""
    rng = np.random.default_rng(seed)
    n = len(types)
    params = np.outer(np.arange(n), [0.02, -0.01, 0.015, 0.0004, 0.0, -0.0003])
    params[17:] += [1.5, -0.8, 0.6, 0.01, -0.02, 0.005]  # inside pair 8 (volumes 16, 17)
    params[30:] += [-1.0, 0.5, 1.2, -0.015, 0.01, 0.02]  # between pairs 14 and 15
    return params + rng.normal(0, jitter, (n, 6)) * [1, 1, 1, 0.01, 0.01, 0.01]


def test_detect_zigzag_removes_a_real_offset_and_keeps_all_motion():
    types = ["control", "label"] * 20
    z = mo.zigzag_regressor(types)
    offset = np.array([0.05, -0.03, 0.04, 0.0008, -0.0005, 0.0006])
    for seed in range(4):
        motion = _trajectory(types, seed, jitter=0.01)
        cleaned, found = mo.detect_zigzag(motion + np.outer(z, offset), types)
        assert found.removed.all(), found.t
        assert np.all(np.abs(found.amplitude - offset) <= [0.01] * 3 + [2e-4] * 3)
        # drift and both moves stay; what is left is of the order of the jitter (the
        # still pairs are put on the trend through their mean)
        err = np.abs(cleaned - motion)
        assert err[:, :3].max() < 0.05 and err[:, 3:].max() < 1e-3, err.max(0)
        assert found.still_pairs == 15, found.still_pairs  # all but the 5 around the moves
        # the pair-mean interpolation spreads each sudden move over the volumes around it
        interp = mo.clean_params(motion + np.outer(z, offset), types, "interpolate")
        assert np.abs(interp - motion)[:, :3].max() > 0.3


def test_detect_zigzag_leaves_estimates_without_an_offset_alone():
    types = ["label", "control"] * 20  # label first: the trend's sign follows the order
    for seed in range(4):
        exact, found = mo.detect_zigzag(_trajectory(types, seed, 0.0), types)
        assert not found.removed.any(), found.t
        np.testing.assert_allclose(exact, _trajectory(types, seed, 0.0), atol=1e-12)
        # strong motion within pairs: every volume keeps its own estimate
        moving = _trajectory(types, seed, 0.5)
        cleaned, found = mo.detect_zigzag(moving, types)
        assert not found.removed.any() and found.still_pairs == 0, found
        np.testing.assert_array_equal(cleaned, moving)
        # estimation noise only: the control and label of a still pair share the trend
        noisy = _trajectory(types, seed, 0.01)
        cleaned, found = mo.detect_zigzag(noisy, types)
        assert not found.removed.any() and found.still_pairs >= 14, found
        pairs = mo.pair_volumes(types)
        gap = cleaned[pairs[:, 0]] - cleaned[pairs[:, 1]]  # control after label: +drift
        noise = noisy[pairs[:, 0]] - noisy[pairs[:, 1]]
        assert np.median(np.abs(gap[:, 0] - 0.02)) < 0.5 * np.median(np.abs(noise[:, 0] - 0.02))
    # the spec's regression shifts every label against its control by a chance amplitude
    motion = _trajectory(types, 0, 0.5)
    regressed = mo.clean_params(motion, types, "regress")
    assert np.abs(regressed - motion)[:, :3].max() > 0.02
    # too few pairs to measure anything: unchanged
    few = ["control", "label"] * 3
    np.testing.assert_array_equal(mo.clean_params(np.ones((6, 6)), few, "detect"), np.ones((6, 6)))


def test_pair_consistent_params_share_one_transform_per_pair():
    types = ["m0scan", "label", "control", "label", "control"]
    params = np.arange(30, dtype=float).reshape(5, 6)
    out = mo.pair_consistent_params(params, types)
    np.testing.assert_array_equal(out[0], params[0])
    np.testing.assert_array_equal(out[1], (params[1] + params[2]) / 2)
    np.testing.assert_array_equal(out[1], out[2])
    np.testing.assert_array_equal(out[3], out[4])


@pytest.fixture(scope="module")
def static_subject():
    from asl_pipeline.simulate.series import simulate_subject

    return simulate_subject(5, motion=False, outliers=False, t1w=False, n_pairs=20)


def _mean_deltam(series, types):
    idx = {t: [i for i, v in enumerate(types) if v == t] for t in ("control", "label")}
    return (series[..., idx["control"]] - series[..., idx["label"]]).mean(-1)


def _inner_brain(sub):
    mask = sub.brain_mask > 0
    mask[..., :2] = mask[..., -2:] = False  # tissue moves out of the slab's edge slices
    return mask


def test_default_motion_correction_leaves_static_deltam_unchanged(static_subject):
    sub = static_subject
    mask = _inner_brain(sub)
    raw = _mean_deltam(sub.asl, sub.aslcontext)
    res = mo.realign_asl(sub.asl, sub.asl_affine, sub.aslcontext)
    r = np.corrcoef(_mean_deltam(res.corrected, sub.aslcontext)[mask], raw[mask])[0, 1]
    assert r >= 0.999, r


def _moved_series(sub, params, noise_sd, seed):
    from scipy import ndimage

    from asl_pipeline.simulate.motion import resample_moved

    rng = np.random.default_rng(seed)
    images = {"control": sub.static, "label": sub.static - sub.deltam}
    coefs = {t: ndimage.spline_filter(img, order=3) for t, img in images.items()}
    vols = [
        resample_moved(coefs[t], sub.asl_affine, params[k]) for k, t in enumerate(sub.aslcontext)
    ]
    return np.stack(vols, -1) + rng.normal(0, noise_sd, sub.asl.shape)


def _drift_and_jumps(n):
    drift = np.linspace(0, 1, n)[:, None] * np.r_[2.0, 0, 0, np.deg2rad(2.0), 0, 0][None]
    jumps = np.zeros((n, 6))
    jumps[21:, 0] = 1.5  # inside a pair (volumes 20, 21)
    jumps[21:, 4] = np.deg2rad(1.0)
    jumps[30:, 1] = -1.0  # between two pairs
    return {"drift": drift, "jumps": jumps}


@pytest.mark.parametrize("kind", ["drift", "jumps"])
def test_default_motion_correction_beats_no_correction(static_subject, kind):
    """Slow drift (0 -> 2 mm, 0 -> 2 deg) and sudden jumps: the mean ΔM of the
    corrected series correlates better with the true ΔM than the raw one."""
    sub = static_subject
    mask = _inner_brain(sub)
    truth = sub.deltam[mask]
    params = _drift_and_jumps(len(sub.aslcontext))[kind]
    noise_sd = 3 * np.sqrt(2) * 0.5 * np.abs(truth).mean()
    series = _moved_series(sub, params, noise_sd, seed=0)

    def r(s):
        return np.corrcoef(_mean_deltam(s, sub.aslcontext)[mask], truth)[0, 1]

    r_none = r(series)
    r_default = r(mo.realign_asl(series, sub.asl_affine, sub.aslcontext).corrected)
    assert r_default > r_none + 0.02, (r_default, r_none)
    if kind == "jumps":  # pair-mean interpolation spreads each jump over its neighbours
        interp = mo.realign_asl(
            series, sub.asl_affine, sub.aslcontext, zigzag_method="interpolate"
        )
        assert r_default > r(interp.corrected) + 0.005, (r_default, r(interp.corrected))


def test_reference_of_a_deltam_series_is_its_m0():
    """The registration to the T1w starts from the reference: for a series of
    ΔM volumes it is the M0 (in the series or separate), not a perfusion map."""
    vols, aff, types, true, mats, centre = _series(seed=8, n=4)
    m0 = vols[..., :1] * 1.3
    deltam = _perfusion_volumes(8, 2)
    included = mo.realign_asl(
        np.concatenate([deltam, m0], axis=-1), aff, ["deltam"] * 2 + ["m0scan"]
    )
    np.testing.assert_allclose(included.reference, m0[..., 0], rtol=1e-4, atol=1e-2)
    separate = mo.realign_asl(deltam, aff, ["deltam", "deltam"], m0=m0, m0_affine=aff)
    np.testing.assert_allclose(separate.reference, m0[..., 0], rtol=1e-4, atol=1e-2)


def test_m0_with_another_affine_is_read_on_the_series_grid():
    """A separate M0 whose header is shifted (same matrix) passed the
    validation with a warning and then stopped the realignment mid-run. It is
    now read on the series' grid through the two affines and registered."""
    vols, aff, types, true, mats, centre = _series(seed=9, n=6, motion_sd=(0.0, 0.0))
    m0 = vols[..., 0] * 1.3
    # the same world content one voxel further along i: data rolled, affine shifted
    shift = np.eye(4)
    shift[0, 3] = -1.0
    m0_shifted, m0_aff = np.roll(m0, 1, axis=0), aff @ shift
    back = mo.m0_on_grid(m0_shifted, m0_aff, m0.shape, aff)
    # the last plane left the field of view; the background's negative noise is clipped
    np.testing.assert_allclose(back[:-1], np.clip(m0[:-1], 0, None), atol=1e-3)
    assert mo.m0_on_grid(m0, aff, m0.shape, aff) is m0  # the series' own grid: untouched

    res = mo.realign_asl(vols, aff, types, m0=m0_shifted, m0_affine=m0_aff)
    np.testing.assert_allclose(res.m0_params, 0.0, atol=0.05)  # nothing moved
    inner = (slice(2, -2),) * 3
    diff = np.abs(res.m0_corrected[..., 0] - m0)[inner]  # M0 up to 200; noise SD 0.4
    assert diff.mean() < 0.05 and diff.max() < 2.0, (diff.mean(), diff.max())
    with pytest.raises(ASLInputError, match="image dimensions|differs"):
        mo.realign_asl(vols, aff, types, m0=m0[:-1], m0_affine=aff)
