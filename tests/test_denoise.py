"""Inference: whole-subject denoising and the DWANDenoise interface."""

import json

import nibabel as nb
import numpy as np
import pytest
import torch

from asl_pipeline.errors import ASLInputError
from asl_pipeline.interfaces.denoise import DWANDenoise
from asl_pipeline.models import DWAN, save_model
from asl_pipeline.models.inference import axial_axis, denoise_volume
from asl_pipeline.models.io import default_weights_path, file_sha256


def _subject(seed=0, shape=(28, 30, 6)):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[4:-4, 5:-5, 1:-1] = True
    cbf = np.where(mask, 50.0 + rng.normal(0, 15, shape), 0.0).astype(np.float32)
    return cbf, mask


def _model(seed=0):
    torch.manual_seed(seed)
    return DWAN(width=8, expansion=2, depth=2, global_dilations=(2, 4)).eval()


def test_whole_subject_inference_is_deterministic_and_masked():
    cbf, mask = _subject()
    model = _model()
    a = denoise_volume(model, cbf, mask, batch_size=4)
    assert np.array_equal(a, denoise_volume(model, cbf, mask, batch_size=4))
    b = denoise_volume(model, cbf, mask, batch_size=3)  # batching: rounding only
    assert np.allclose(a, b, atol=1e-5)
    assert np.all(a[~mask] == 0) and np.any(a[mask] != cbf[mask])
    # input outside the mask is ignored (it is zeroed, as in training)
    noisy_bg = np.where(mask, cbf, 1000.0)
    assert np.array_equal(denoise_volume(model, noisy_bg, mask, batch_size=4), a)
    # the axial axis can be any voxel axis
    moved = denoise_volume(model, np.moveaxis(cbf, 2, 0), np.moveaxis(mask, 2, 0), axis=0)
    assert np.allclose(np.moveaxis(moved, 0, 2), a, atol=1e-5)


def test_axial_axis_from_affine():
    assert axial_axis(np.eye(4)) == 2
    aff = np.array([[0, 0, 2, 0], [2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1.0]])  # y -> S
    assert axial_axis(aff) == 1


def _write(tmp_path, cbf, mask, affine):
    nb.Nifti1Image(cbf, affine).to_filename(tmp_path / "sub-01_cbf.nii.gz")
    nb.Nifti1Image(mask.astype(np.uint8), affine).to_filename(tmp_path / "sub-01_mask.nii.gz")
    return str(tmp_path / "sub-01_cbf.nii.gz"), str(tmp_path / "sub-01_mask.nii.gz")


def test_interface_runs_and_sidecar_names_the_model(tmp_path):
    cbf, mask = _subject(1)
    model = _model(2)
    weights = tmp_path / "weights.pt"
    sha = save_model(model, weights, metadata={"scheme": "lfn", "loss": "l1", "command": "x"})
    # a y-axial image: the interface must denoise along voxel axis 1
    aff = np.array([[0, 0, 3, 0], [3, 0, 0, 0], [0, 4, 0, 0], [0, 0, 0, 1.0]])
    in_file, mask_file = _write(tmp_path, cbf, mask, aff)
    res = DWANDenoise(
        in_file=in_file, mask_file=mask_file, weights=str(weights), batch_size=5
    ).run(cwd=tmp_path)
    out = nb.load(res.outputs.out_file)
    assert out.get_fdata().shape == cbf.shape and np.allclose(out.affine, aff)
    expected = denoise_volume(model, cbf, mask, axis=1)
    assert np.allclose(out.get_fdata(), expected, atol=1e-6)
    side = json.loads(open(res.outputs.out_sidecar).read())
    assert side["Denoised"] is True and side["Units"] == "mL/100 g/min"
    assert side["DenoisingModel"]["Sha256"] == sha == file_sha256(weights)
    assert side["DenoisingModel"]["File"] == "weights.pt"
    assert res.outputs.out_file == str(tmp_path / "sub-01_cbf_denoised.nii.gz")


def test_interface_refuses_bad_inputs(tmp_path):
    cbf, mask = _subject(2)
    weights = tmp_path / "w.pt"
    save_model(_model(), weights)
    in_file, mask_file = _write(tmp_path, cbf, mask, np.eye(4))
    nb.Nifti1Image(mask[:-1].astype(np.uint8), np.eye(4)).to_filename(tmp_path / "small.nii.gz")
    with pytest.raises(ASLInputError, match="mask shape"):
        DWANDenoise(
            in_file=in_file, mask_file=str(tmp_path / "small.nii.gz"), weights=str(weights)
        ).run(cwd=tmp_path)
    nb.Nifti1Image(np.stack([cbf, cbf], -1), np.eye(4)).to_filename(tmp_path / "4d.nii.gz")
    with pytest.raises(ASLInputError, match="must be 3-D"):
        DWANDenoise(
            in_file=str(tmp_path / "4d.nii.gz"), mask_file=mask_file, weights=str(weights)
        ).run(cwd=tmp_path)


def test_interface_default_weights_are_the_shipped_dwan(tmp_path):
    cbf, mask = _subject(3, shape=(40, 40, 4))
    in_file, mask_file = _write(tmp_path, cbf, mask, np.diag([3.0, 3.0, 5.0, 1.0]))
    res = DWANDenoise(in_file=in_file, mask_file=mask_file).run(cwd=tmp_path)
    side = json.loads(open(res.outputs.out_sidecar).read())
    assert side["DenoisingModel"]["File"] == "dwan_lfn_l1.pt"
    assert side["DenoisingModel"]["Sha256"] == file_sha256(default_weights_path())
    out = nb.load(res.outputs.out_file).get_fdata()
    # denoising a noisy uniform 50 region: the output is smoother and keeps the level
    inner = mask.copy()
    inner[:8], inner[-8:], inner[:, :8], inner[:, -8:] = False, False, False, False
    assert out[inner].std() < cbf[inner].std()
    assert abs(out[inner].mean() - 50.0) < 10.0
