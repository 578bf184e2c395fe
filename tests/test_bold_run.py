"""The simulated BOLD run (simulator, dataset writer, reader)."""

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.bids import collect_runs
from asl_pipeline.simulate import bold as sim_bold
from asl_pipeline.simulate import simulate_dataset, simulate_subject

TINY = dict(
    n_pairs=3,
    shape=(24, 24, 8),
    voxel_size=(8.0, 8.0, 14.0),
    resolution=2,
    subsample=(1, 1, 1),
    t1w_voxel_size=4.0,
)
BOLD = dict(bold=True, bold_volumes=20, bold_voxel_size=6.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("simbold") / "ds"
    return simulate_dataset(root, n_subjects=1, seed=5, **TINY, **BOLD)


def test_bold_off_by_default_and_leaves_asl_unchanged():
    plain = simulate_subject(4, t1w=False, **TINY)
    with_bold = simulate_subject(4, t1w=False, **TINY, **BOLD)
    assert plain.bold is None
    np.testing.assert_array_equal(plain.asl, with_bold.asl)
    np.testing.assert_array_equal(plain.m0, with_bold.m0)
    b = with_bold.bold
    assert b.data.shape[3] == 20
    assert np.allclose(np.diag(b.affine)[:3], 6.0)  # its own grid, not the ASL grid
    assert b.data.shape[:3] != with_bold.asl.shape[:3]
    # the BOLD head position differs from the ASL one (a rigid, non-identity matrix)
    r = b.bold_to_asl[:3, :3]
    assert np.allclose(r @ r.T, np.eye(3)) and not np.allclose(b.bold_to_asl, np.eye(4))


def test_static_signal_depends_on_perfusion_as_documented():
    """Known answer: a GM voxel with CBF c is exp(TE*KAPPA*(c-60)) times brighter."""
    fr = {k: np.zeros(2) for k in sim_bold.TISSUES}
    fr["gm"][:] = 1.0
    cbf_gm = np.array([60.0, 80.0])
    s = sim_bold.static_signal(fr, cbf_gm, np.zeros(2), 1.0, te=0.03, tr=2.0, m0_scale=1000.0)
    assert s[1] / s[0] == pytest.approx(np.exp(0.03 * sim_bold.KAPPA * 20.0), rel=1e-12)
    expected = 1000 * 0.82 * (1 - np.exp(-2.0 / 1.6)) * np.exp(-0.03 / 0.050)
    assert s[0] == pytest.approx(expected, rel=1e-12)


def test_fluctuation_amplitude_follows_cbf():
    sub = simulate_subject(7, t1w=False, **TINY, **BOLD)
    b = sub.bold
    np.testing.assert_allclose(
        b.amplitude, sim_bold.BOLD_AMPLITUDE * b.cbf / 60.0, rtol=1e-5, atol=1e-9
    )


def test_dataset_writes_a_bold_run(dataset):
    func = dataset / "sub-01" / "func"
    img = nib.load(func / "sub-01_task-rest_bold.nii.gz")
    md = json.loads((func / "sub-01_task-rest_bold.json").read_text())
    assert img.ndim == 4 and img.shape[3] == 20
    assert img.header.get_zooms()[3] == pytest.approx(md["RepetitionTime"])
    assert md["TaskName"] == "rest" and md["EchoTime"] == pytest.approx(0.03)
    truth = dataset / "derivatives" / "simulation" / "sub-01" / "func"
    assert (truth / "sub-01_task-rest_desc-true_cbf.nii.gz").is_file()
    xfm = np.loadtxt(truth / "sub-01_task-rest_from-bold_to-ASL_mode-image_xfm.txt")
    assert xfm.shape == (4, 4)


def test_reader_finds_the_bold_run(dataset):
    (run,) = collect_runs(dataset)
    assert run.bold_file == dataset / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"


def test_reader_without_bold_run(tmp_path):
    root = simulate_dataset(tmp_path / "ds", n_subjects=1, seed=5, **TINY)
    assert not (root / "sub-01" / "func").exists()
    (run,) = collect_runs(root)
    assert run.bold_file is None and run.bold_files == ()


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None, reason="validator absent")
@pytest.mark.parametrize("sub", ["", "derivatives/simulation"])
def test_bold_dataset_passes_bids_validator(dataset, sub):
    proc = subprocess.run(
        ["bids-validator-deno", "--format", "json", str(dataset / sub)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == [], errors
