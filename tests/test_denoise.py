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


def _tissue_run(seed=3, shape=(40, 40, 6), n_pairs=10, sd=40.0):
    """Two-tissue phantom (GM 60, WM 25 mL/100 g/min) and a noisy per-pair series."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[4:-4, 4:-4, 1:-1] = True
    x = np.arange(shape[0])[:, None, None]
    gm = np.where(mask & ((x // 4) % 2 == 0), 1.0, 0.0) * np.ones(shape)
    wm = np.where(mask, 1.0 - gm, 0.0)
    truth = (60.0 * gm + 25.0 * wm).astype(np.float32)
    series = truth[..., None] + rng.normal(0, sd, shape + (n_pairs,))
    return truth, mask, gm.astype(np.float32), wm.astype(np.float32), series.astype(np.float32)


def _run_files(tmp_path, cbf, mask, series, gm, wm):
    """The map, mask, per-pair series and tissue maps of a run as NIfTI files: the
    DWANDenoise inputs (in_file, mask_file, cbf_ts, gm_file, wm_file)."""
    aff = np.diag([3.0, 3.0, 5.0, 1.0])
    in_file, mask_file = _write(tmp_path, cbf, mask, aff)
    inputs = {"in_file": in_file, "mask_file": mask_file}
    for field, name, arr in (
        ("cbf_ts", "ts", series),
        ("gm_file", "gm", gm),
        ("wm_file", "wm", wm),
    ):
        inputs[field] = str(tmp_path / f"sub-01_{name}.nii.gz")
        nb.Nifti1Image(arr, aff).to_filename(inputs[field])
    return inputs


def test_interface_default_weights_are_the_shipped_dwan(tmp_path):
    truth, mask, gm, wm, series = _tissue_run()
    inputs = _run_files(tmp_path, series.mean(-1), mask, series, gm, wm)
    res = DWANDenoise(**inputs).run(cwd=tmp_path)
    side = json.loads(open(res.outputs.out_sidecar).read())
    assert side["DenoisingModel"]["File"] == "dwan_lfn_l1.pt"
    assert side["DenoisingModel"]["Sha256"] == file_sha256(default_weights_path())
    out = nb.load(res.outputs.out_file).get_fdata()
    inner = mask.copy()
    inner[:8], inner[-8:], inner[:, :8], inner[:, -8:] = False, False, False, False
    mean = series.mean(-1)
    # the denoised map is closer to the truth than the 10-pair mean, and keeps both levels
    err = np.sqrt(np.mean((out[inner] - truth[inner]) ** 2))
    err_mean = np.sqrt(np.mean((mean[inner] - truth[inner]) ** 2))
    assert err < 0.5 * err_mean
    g, w = inner & (gm > 0.5), inner & (wm > 0.5)
    assert abs(out[g].mean() - 60.0) < 6.0 and abs(out[w].mean() - 25.0) < 8.0


def test_interface_guided_weights_need_the_series(tmp_path):
    truth, mask, gm, wm, series = _tissue_run()
    in_file, mask_file = _write(tmp_path, series.mean(-1), mask, np.diag([3.0, 3.0, 5.0, 1.0]))
    with pytest.raises(ASLInputError, match="per-pair CBF series") as err:
        DWANDenoise(in_file=in_file, mask_file=mask_file).run(cwd=tmp_path)
    assert "channels" in str(err.value) and "Fix:" in str(err.value)


def _write_matrix(path, removed):
    rows = ["slice\t" + "\t".join(f"pair_{i}" for i in range(removed.shape[1]))]
    rows += [f"{z}\t" + "\t".join(map(str, r.astype(int))) for z, r in enumerate(removed)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_interface_reads_the_noise_of_the_cleaned_pairs(tmp_path):
    """A cleaned map is denoised at the noise of the pairs the cleaning kept: given the
    outlier matrix, the shipped DWAN is closer to the truth, voxel-wise and in its tissue
    levels, than when it reads the noise of every pair, outliers included."""
    truth, mask, gm, wm, series = _tissue_run(n_pairs=12, sd=20.0)
    rng = np.random.default_rng(8)
    removed = np.zeros((series.shape[2], series.shape[3]), bool)
    removed[1:5, [3, 8]] = True  # two slab dropouts, removed by the cleaning
    series[:, :, 1:5, [3, 8]] -= rng.normal(250, 150, series[:, :, 1:5, [3, 8]].shape)
    cleaned = np.where(~removed[None, None], series, np.nan)
    cleaned = np.nanmean(cleaned, axis=-1).astype(np.float32)
    inputs = _run_files(tmp_path, cleaned, mask, series, gm, wm)
    matrix = _write_matrix(tmp_path / "outliers.tsv", removed)
    inner = mask.copy()
    inner[:8], inner[-8:], inner[:, :8], inner[:, -8:] = False, False, False, False
    g, w = inner & (gm > 0.5), inner & (wm > 0.5)
    results = {}
    for label, extra in (("all", {}), ("kept", {"outlier_matrix": matrix})):
        (tmp_path / label).mkdir()
        res = DWANDenoise(**inputs, **extra).run(cwd=tmp_path / label)
        out = nb.load(res.outputs.out_file).get_fdata()
        side = json.loads(open(res.outputs.out_sidecar).read())
        results[label] = (np.sqrt(np.mean((out[inner] - truth[inner]) ** 2)), out, side)
    (err_all, out_all, side_all), (err_kept, out_kept, side_kept) = results.values()
    assert err_kept < 0.8 * err_all
    levels = [abs(o[g].mean() - 60.0) + abs(o[w].mean() - 25.0) for o in (out_kept, out_all)]
    assert levels[0] < levels[1] and abs(out_kept[g].mean() - 60.0) < 3.0
    assert matrix in side_kept["Sources"] and matrix not in side_all["Sources"]
    assert "kept" in side_kept["Description"]
    # a matrix of another series is refused, naming the file and the field
    other = _write_matrix(tmp_path / "other.tsv", removed[:, :10])
    with pytest.raises(ASLInputError, match="outlier_matrix") as err:
        DWANDenoise(**inputs, outlier_matrix=other).run(cwd=tmp_path)
    assert "other.tsv" in str(err.value) and "10 pairs" in str(err.value)


def test_shipped_denoiser_follows_the_perfusion_level():
    """Twice the perfusion under the same noise reads twice the CBF (no learned prior)."""
    from asl_pipeline.models.inference import denoise_run

    truth, mask, gm, wm, series = _tissue_run(sd=20.0)
    noise = series - truth[..., None]
    inner = mask.copy()
    inner[:8], inner[-8:], inner[:, :8], inner[:, -8:] = False, False, False, False
    levels = []
    for gain in (1.0, 2.0):
        pairs = gain * truth[..., None] + noise
        out, _, _ = denoise_run(pairs.mean(-1), mask, series=pairs, gm=gm, wm=wm)
        levels.append([out[inner & (gm > 0.5)].mean(), out[inner & (wm > 0.5)].mean()])
    ratio = np.array(levels[1]) / np.array(levels[0])
    assert np.all(np.abs(ratio - 2.0) < 0.2), ratio


def test_noise_scaled_model_is_positively_homogeneous():
    model = DWAN(
        width=8,
        expansion=2,
        depth=2,
        global_dilations=(2, 4),
        channels=("cbf", "noise", "gm"),
        scale_by_noise=True,
    ).eval()
    x = torch.randn(2, 3, 24, 24)
    x[:, 1] = 4.0
    x[:, 2] = torch.rand(2, 24, 24)
    y = model(x)
    x3 = x.clone()
    x3[:, :2] *= 3.0  # CBF and its noise level scaled, tissue maps unchanged
    assert torch.allclose(model(x3), 3.0 * y, atol=1e-4)
    with pytest.raises(ValueError, match="noise"):
        DWAN(channels=("cbf", "gm"), scale_by_noise=True)
