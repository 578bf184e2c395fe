"""Registration and segmentation against known transforms (embedded backend).

One simulated subject (the simulator's anatomy model: a T1w with skull, bias
field and Rician noise, pulled back from MNI through a known affine + smooth
deformation) is processed once per module; the tests compare the estimated
transforms with the true ones inside the brain and the tissue maps with the
true fractions.
"""

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline import registration as reg
from asl_pipeline import segmentation as seg
from asl_pipeline.errors import ASLInputError
from asl_pipeline.motion import params_to_matrix
from asl_pipeline.qc import dice

anatomy = pytest.importorskip("asl_pipeline.simulate.anatomy")

ASL_SHAPE = (64, 64, 20)
ASL_ZOOMS = (3.5, 3.5, 5.0)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    rng = np.random.default_rng(7)
    model = anatomy.load_mni_model(2)
    deform = anatomy.SubjectDeformation(
        rng, lower=np.array([-90.0, -110, -90]), upper=np.array([90.0, 110, 90])
    )
    img, aff, probs = anatomy.synthesize_t1w(rng, deform, model, voxel_size=2.0)
    out = tmp_path_factory.mktemp("anat")
    res = seg.preprocess_t1w(nib.Nifti1Image(img, aff), out)
    return dict(img=img, aff=aff, probs=probs, deform=deform, res=res, out=out)


def _asl_reference(probs, t1w_aff, q, rng):
    """Mean-control-like image (GM bright, WM darker, CSF brightest) on an ASL grid.

    ``q`` maps ASL world points to T1w world points (the true pose).
    """
    from scipy import ndimage

    aff = np.diag([*ASL_ZOOMS, 1.0])
    aff[:3, 3] = -(np.asarray(ASL_SHAPE) - 1) * ASL_ZOOMS / 2 + [0, -10, 10]
    ijk = np.indices(ASL_SHAPE).reshape(3, -1)
    world = q[:3, :3] @ (aff[:3, :3] @ ijk + aff[:3, 3:]) + q[:3, 3:]
    vox = np.linalg.inv(t1w_aff)[:3, :3] @ world + np.linalg.inv(t1w_aff)[:3, 3:]
    contrast = 1.0 * probs["gm"] + 0.65 * probs["wm"] + 1.2 * probs["csf"]
    contrast = ndimage.gaussian_filter(contrast, 1.0)  # EPI point-spread
    ref = ndimage.map_coordinates(contrast, vox, order=1).reshape(ASL_SHAPE) * 1000
    ref += rng.normal(0, 15, ref.shape)
    return nib.Nifti1Image(ref.astype(np.float32), aff)


@pytest.mark.slow
def test_t1w_to_mni_displacement_error_below_1mm(subject):
    aff, probs, deform, res = subject["aff"], subject["probs"], subject["deform"], subject["res"]
    pts = np.argwhere(probs["brain_mask"])[::40] @ aff[:3, :3].T + aff[:3, 3]
    # mni_to_t1w, as a point mapping, takes T1w points to MNI points
    est = reg.points_through([res.mni.mni_to_t1w], pts)
    err = np.linalg.norm(est - deform(pts), axis=1)
    assert err.mean() < 1.0, err.mean()


@pytest.mark.slow
def test_brain_mask_and_tissue_dice(subject):
    probs, res = subject["probs"], subject["res"]
    assert dice(res.t1w_mask.get_fdata() > 0, probs["brain_mask"]) > 0.95
    truth = np.argmax(np.stack([probs["gm"], probs["wm"], probs["csf"]]), 0)
    est = np.argmax(np.stack([res.gm.get_fdata(), res.wm.get_fdata(), res.csf.get_fdata()]), 0)
    inside_t = probs["brain_mask"]
    inside_e = res.t1w_mask.get_fdata() > 0
    for k, name in enumerate(("gm", "wm")):
        d = dice((est == k) & inside_e, (truth == k) & inside_t)
        assert d >= 0.8, (name, d)
    total = res.gm.get_fdata() + res.wm.get_fdata() + res.csf.get_fdata()
    np.testing.assert_allclose(total[inside_e], 1.0, atol=1e-4)
    # the brain image has no skull left
    assert np.all(res.t1w_brain.get_fdata()[~inside_e] == 0)


@pytest.mark.slow
def test_asl_to_t1w_rigid_and_one_step_mni_resampling(subject, tmp_path):
    rng = np.random.default_rng(11)
    probs, aff, res = subject["probs"], subject["aff"], subject["res"]
    q = params_to_matrix([4.0, -6.0, 3.0, 0.06, -0.04, 0.08], (0, 0, 0))
    ref = _asl_reference(probs, aff, q, rng)
    xfm = reg.register_asl_to_t1w(ref, res.t1w_brain, tmp_path / "asl_to_t1w.mat")
    pts = np.argwhere(probs["brain_mask"])[::40] @ aff[:3, :3].T + aff[:3, 3]
    est = reg.points_through([xfm], pts)  # T1w points -> ASL points
    true = pts @ np.linalg.inv(q)[:3, :3].T + np.linalg.inv(q)[:3, 3]
    err = np.linalg.norm(est - true, axis=1)
    assert err.mean() < 1.0, err.mean()

    # tissue maps in ASL space agree with the truth resampled with the true pose
    gm_asl = reg.to_asl_space(res.gm, ref, xfm).get_fdata()
    gm_true = reg.to_asl_space(
        nib.Nifti1Image(probs["gm"], aff), ref, _write_rigid(q, tmp_path / "true.mat")
    ).get_fdata()
    assert np.corrcoef(gm_asl.ravel(), gm_true.ravel())[0, 1] > 0.85

    # ASL -> MNI in one step equals the known composition: a map that is the
    # world x coordinate of T1w space becomes, in MNI, the x coordinate that
    # the true deformation's inverse gives; check through the point mapping
    tpl = reg.load_template(2)
    cbf = nib.Nifti1Image(gm_asl.astype(np.float32) * 60, ref.affine)
    mni = reg.apply_transforms(cbf, tpl.t1, [res.mni.t1w_to_mni, xfm])
    assert mni.shape == tpl.t1.shape
    gm_mni_prior = tpl.gm.get_fdata()
    r = np.corrcoef(mni.get_fdata().ravel(), gm_mni_prior.ravel())[0, 1]
    assert r > 0.7, r


def _write_rigid(q, path):
    """An ITK .mat for the rigid ``q`` (ASL world -> T1w world point map)."""
    import ants

    # ANTs' transform resampling ASL into T1w maps T1w points to ASL points (q^-1),
    # in LPS coordinates
    inv = np.linalg.inv(q)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ inv @ flip
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        dimension=3,
        matrix=lps[:3, :3],
        offset=lps[:3, 3],
    )
    ants.write_transform(tx, str(path))
    return str(path)


def test_check_3d_errors():
    aff = np.eye(4)
    with pytest.raises(ASLInputError, match="empty"):
        reg.check_3d(nib.Nifti1Image(np.zeros((0, 3, 3), np.float32), aff), "T1w", "t1.nii")
    with pytest.raises(ASLInputError, match="3D"):
        reg.check_3d(nib.Nifti1Image(np.ones((5, 5, 5, 3), np.float32), aff), "T1w", "t1.nii")
    with pytest.raises(ASLInputError, match="constant"):
        reg.check_3d(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), aff), "T1w", "t1.nii")
    data = reg.check_3d(
        nib.Nifti1Image(np.arange(512, dtype=np.float32).reshape(8, 8, 8, 1), aff), "T1w"
    )
    assert data.shape == (8, 8, 8)


def test_template_priors_are_probabilities():
    tpl = reg.load_template(2)
    total = tpl.gm.get_fdata() + tpl.wm.get_fdata() + tpl.csf.get_fdata()
    assert total.max() <= 1.0 + 1e-5
    inside = tpl.brain_mask.get_fdata() > 0
    np.testing.assert_allclose(total[inside], 1.0, atol=1e-5)


def test_clean_mask_keeps_largest_component_and_fills_holes():
    m = np.zeros((20, 20, 20), bool)
    m[2:12, 2:12, 2:12] = True
    m[6, 6, 6] = False  # hole
    m[15:17, 15:17, 15:17] = True  # small island
    out = seg.clean_mask(m)
    assert out[6, 6, 6] and not out[16, 16, 16]
    assert out.sum() == 1000
