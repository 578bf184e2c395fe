"""BOLD run -> ASL grid (core, interface, workflow branch)."""

import json

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.bold import bold_to_asl, check_bold, resample_to_reference
from asl_pipeline.errors import ASLInputError
from asl_pipeline.interfaces.bold import BOLDToASLSpace
from asl_pipeline.simulate import simulate_subject

SMALL = dict(
    shape=(40, 40, 14),
    voxel_size=(4.5, 4.5, 7.0),
    n_pairs=4,
    t1w=False,
    bold=True,
    bold_volumes=30,
    bold_voxel_size=4.0,
    resolution=2,
    subsample=(1, 1, 2),
)


@pytest.fixture(scope="module")
def subject():
    return simulate_subject(11, **SMALL)


def _brain_points(sub):
    ijk = np.argwhere(sub.brain_mask)
    return np.c_[ijk @ sub.asl_affine[:3, :3].T + sub.asl_affine[:3, 3], np.ones(len(ijk))]


def test_registers_bold_mean_to_asl_reference_with_known_pose(subject):
    """The simulator knows the BOLD head position relative to the ASL run."""
    b = subject.bold
    res = bold_to_asl(
        nib.Nifti1Image(b.data, b.affine), nib.Nifti1Image(subject.m0, subject.asl_affine)
    )
    pts = _brain_points(subject)
    true = np.linalg.inv(b.bold_to_asl)  # ASL world -> BOLD world
    err = np.linalg.norm((pts @ res.asl_to_bold.T - pts @ true.T)[:, :3], axis=1)
    assert np.linalg.norm(b.bold_to_asl[:3, 3]) > 1.0  # a real offset to recover
    assert err.max() < 4.0  # < 1 BOLD voxel (4 mm) and < 1 ASL voxel (4.5 mm) everywhere
    assert err.mean() < 1.5
    assert res.image.shape == subject.m0.shape
    # the BOLD motion is recovered to a fraction of a millimetre
    assert np.abs(res.realigned.motion[:, :3] - b.motion[:, :3]).max() < 0.5


def test_resample_to_reference_known_shift():
    rng = np.random.default_rng(0)
    img = rng.random((10, 12, 8)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    same = resample_to_reference(img, aff, np.eye(4), img.shape, aff, order=1)
    np.testing.assert_allclose(same, img, atol=1e-6)
    shift = np.eye(4)
    shift[0, 3] = 2.0  # ASL x maps to BOLD x + 2 mm = one voxel further
    out = resample_to_reference(img, aff, shift, img.shape, aff, order=1)
    np.testing.assert_allclose(out[:-1], img[1:], atol=1e-6)
    assert np.all(out[-1] == 0)  # outside the BOLD field of view


def test_check_bold_refuses_a_3d_image(tmp_path):
    with pytest.raises(ASLInputError, match="4-D") as err:
        check_bold(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), "x_bold.nii.gz")
    assert "x_bold.nii.gz" in str(err.value)


def test_interface_writes_bold_mean_on_asl_grid(subject, tmp_path):
    b = subject.bold
    nib.Nifti1Image(b.data, b.affine).to_filename(tmp_path / "sub-01_task-rest_bold.nii.gz")
    nib.Nifti1Image(subject.m0, subject.asl_affine).to_filename(tmp_path / "ref.nii.gz")
    res = BOLDToASLSpace(
        bold_file=str(tmp_path / "sub-01_task-rest_bold.nii.gz"),
        reference=str(tmp_path / "ref.nii.gz"),
    ).run(cwd=tmp_path)
    out = nib.load(res.outputs.out_file)
    assert out.shape == subject.m0.shape and np.allclose(out.affine, subject.asl_affine)
    assert np.loadtxt(res.outputs.out_transform).shape == (4, 4)
    assert json.loads(open(res.outputs.out_report).read())["MeanFD"] >= 0


def test_workflow_branch_only_with_weights(tmp_path):
    from asl_pipeline.workflows.asl import init_bold_to_cbf_wf

    bold = tmp_path / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    bold.parent.mkdir(parents=True)
    for path in (bold, tmp_path / "w.pt"):
        path.write_bytes(b"x")
    wf = init_bold_to_cbf_wf(
        bold_file=str(bold),
        weights=str(tmp_path / "w.pt"),
        output_dir=str(tmp_path / "out"),
        source_file=str(tmp_path / "sub-01" / "perf" / "sub-01_asl.nii.gz"),
    )
    assert {"bold_to_asl", "predict", "ds_boldpredicted_cbf"} <= set(wf.list_node_names())


@pytest.mark.slow
def test_pipeline_writes_bold_predicted_cbf(tmp_path):
    """``--bold-to-cbf`` on a subject with a BOLD run: desc-boldpredicted_cbf on the
    ASL grid, a sidecar naming the model and the BOLD run; nothing without the option."""
    import torch

    from asl_pipeline.cli.run import main
    from asl_pipeline.models import build_model, save_model
    from asl_pipeline.simulate import simulate_dataset

    bids = simulate_dataset(
        tmp_path / "bids", n_subjects=1, seed=3, n_pairs=12, outliers=False,
        bold=True, bold_volumes=20, bold_voxel_size=4.0,
    )  # fmt: skip
    torch.manual_seed(0)
    weights = tmp_path / "bold.pt"  # plumbing only: prediction quality is benchmarked
    save_model(build_model("dwan", input_kind="bold"), weights, metadata={"test": True})
    out = tmp_path / "out"
    argv = [str(bids), str(out), "participant", "--work-dir", str(tmp_path / "work"),
            "--output-spaces", "asl", "--nprocs", "2"]  # fmt: skip
    assert main(argv + ["--bold-to-cbf", str(weights)]) == 0
    perf = out / "sub-01" / "perf"
    pred = perf / "sub-01_desc-boldpredicted_cbf.nii.gz"
    mean = perf / "sub-01_desc-mean_cbf.nii.gz"
    assert pred.is_file() and mean.is_file()
    img, ref = nib.load(pred), nib.load(mean)
    assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
    meta = json.loads(pred.with_name(pred.name.replace(".nii.gz", ".json")).read_text())
    assert meta["PredictedFromBOLD"] is True
    assert "bids:raw:sub-01/func/sub-01_task-rest_bold.nii.gz" in meta["Sources"]
