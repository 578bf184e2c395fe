"""The simulated BIDS dataset: validity, determinism, ground-truth files."""

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.errors import ASLInputError
from asl_pipeline.simulate import load_true_mapping, simulate_dataset, simulate_subject
from asl_pipeline.simulate.dataset import subject_seed

TINY = dict(
    n_pairs=3,
    shape=(24, 24, 8),
    voxel_size=(8.0, 8.0, 14.0),
    resolution=2,
    subsample=(1, 1, 1),
    t1w_voxel_size=4.0,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "ds"
    return simulate_dataset(root, n_subjects=1, seed=5, **TINY)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_dataset_layout_and_sidecars(dataset):
    files = {str(p) for p in _files(dataset)}
    for name in (
        "dataset_description.json",
        "README",
        "participants.tsv",
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_T1w.json",
        "sub-01/perf/sub-01_asl.nii.gz",
        "sub-01/perf/sub-01_asl.json",
        "sub-01/perf/sub-01_aslcontext.tsv",
        "sub-01/perf/sub-01_m0scan.nii.gz",
        "sub-01/perf/sub-01_m0scan.json",
        "derivatives/simulation/dataset_description.json",
        "derivatives/simulation/sub-01/perf/sub-01_desc-true_cbf.nii.gz",
        "derivatives/simulation/sub-01/perf/sub-01_desc-true_att.nii.gz",
        "derivatives/simulation/sub-01/perf/sub-01_desc-true_motion.tsv",
        "derivatives/simulation/sub-01/perf/sub-01_desc-true_outliers.tsv",
        "derivatives/simulation/sub-01/perf/sub-01_from-ASL_to-T1w_mode-image_xfm.txt",
        "derivatives/simulation/sub-01/anat/sub-01_label-GM_probseg.nii.gz",
        "derivatives/simulation/sub-01/anat/"
        "sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json",
    ):
        assert name in files, name
    deriv = json.loads((dataset / "derivatives/simulation/dataset_description.json").read_text())
    assert deriv["DatasetType"] == "derivative" and deriv["GeneratedBy"]
    m0 = json.loads((dataset / "sub-01/perf/sub-01_m0scan.json").read_text())
    assert m0["IntendedFor"] == "bids::sub-01/perf/sub-01_asl.nii.gz"
    ctx = (dataset / "sub-01/perf/sub-01_aslcontext.tsv").read_text().split()
    assert ctx == ["volume_type"] + ["control", "label"] * 3


def test_dataset_matches_in_memory_subject(dataset):
    sub = simulate_subject(subject_seed(5, 0), **TINY)
    asl = nib.load(dataset / "sub-01/perf/sub-01_asl.nii.gz")
    assert asl.get_data_dtype() == np.int16
    data = asl.get_fdata()
    # int16 with scaling: quantisation below 1e-4 of the maximum
    assert np.abs(data - sub.asl).max() <= 1e-4 * np.abs(sub.asl).max()
    np.testing.assert_allclose(asl.affine, sub.asl_affine, atol=1e-5)
    assert asl.header.get_zooms()[3] == pytest.approx(sub.metadata["RepetitionTimePreparation"])
    cbf = nib.load(dataset / "derivatives/simulation/sub-01/perf/sub-01_desc-true_cbf.nii.gz")
    np.testing.assert_array_equal(cbf.get_fdata(dtype=np.float32), sub.cbf)
    motion = np.loadtxt(
        dataset / "derivatives/simulation/sub-01/perf/sub-01_desc-true_motion.tsv", skiprows=1
    )
    np.testing.assert_allclose(motion, sub.motion, atol=1e-8)
    xfm = np.loadtxt(
        dataset / "derivatives/simulation/sub-01/perf/sub-01_from-ASL_to-T1w_mode-image_xfm.txt"
    )
    np.testing.assert_allclose(xfm, sub.asl_to_t1w, atol=1e-9)
    mapping = load_true_mapping(
        dataset / "derivatives/simulation/sub-01/anat/"
        "sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json"
    )
    pts = np.random.default_rng(0).uniform(-60, 60, (50, 3))
    np.testing.assert_allclose(mapping(pts), sub.subject_to_mni_points(pts), atol=1e-6)
    rows = (
        (dataset / "derivatives/simulation/sub-01/perf/sub-01_desc-true_outliers.tsv")
        .read_text()
        .strip()
        .splitlines()[1:]
    )
    assert len(rows) == len(sub.outlier_volumes) + len(sub.outlier_slices)


def test_dataset_is_deterministic(dataset, tmp_path):
    again = simulate_dataset(tmp_path / "again", n_subjects=1, seed=5, **TINY)
    files = _files(dataset)
    assert files == _files(again)
    for rel in files:
        assert (dataset / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_refuses_non_empty_output(dataset, tmp_path):
    with pytest.raises(ASLInputError, match="not empty"):
        simulate_dataset(dataset, n_subjects=1, **TINY)
    # even with overwrite, a dataset it did not write is never touched
    real = tmp_path / "real"
    real.mkdir()
    (real / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    with pytest.raises(ASLInputError, match="GeneratedBy"):
        simulate_dataset(real, n_subjects=1, overwrite=True, **TINY)
    assert sorted(p.name for p in real.iterdir()) == ["dataset_description.json"]


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None, reason="validator absent")
@pytest.mark.parametrize("sub", ["", "derivatives/simulation"])
def test_dataset_passes_bids_validator(dataset, sub):
    """No errors in the raw dataset nor in derivatives/simulation.

    The derivative is validated on its own: the validator's --recursive mode
    ignores the derivative's .bidsignore (which lists the ground-truth files
    the BIDS derivatives specification does not cover).
    """
    proc = subprocess.run(
        ["bids-validator-deno", "--format", "json", str(dataset / sub)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == [], errors
    assert proc.returncode == 0


def test_m0_included_dataset_has_no_m0scan_files(tmp_path):
    root = simulate_dataset(tmp_path / "inc", n_subjects=1, seed=2, m0_type="Included", **TINY)
    perf = root / "sub-01" / "perf"
    assert not (perf / "sub-01_m0scan.nii.gz").exists()
    ctx = (perf / "sub-01_aslcontext.tsv").read_text().split()
    assert ctx[:2] == ["volume_type", "m0scan"] and len(ctx) == 1 + 1 + 6
    assert nib.load(perf / "sub-01_asl.nii.gz").shape[3] == 7
    md = json.loads((perf / "sub-01_asl.json").read_text())
    assert md["M0Type"] == "Included"
    if shutil.which("bids-validator-deno"):
        proc = subprocess.run(
            ["bids-validator-deno", "--format", "json", str(root)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        issues = json.loads(proc.stdout)["issues"]["issues"]
        assert [i for i in issues if i["severity"] == "error"] == []


def test_overwrite_replaces_a_previous_simulation(tmp_path):
    first = simulate_dataset(tmp_path / "ds", n_subjects=1, seed=1, **TINY)
    before = (first / "sub-01/perf/sub-01_asl.nii.gz").read_bytes()
    simulate_dataset(first, n_subjects=1, seed=2, overwrite=True, **TINY)
    assert (first / "sub-01/perf/sub-01_asl.nii.gz").read_bytes() != before
