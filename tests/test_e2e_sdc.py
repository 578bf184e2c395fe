"""Tier 4: SDC end to end through the CLI on a small simulated distorted subject."""

import json

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.cli.run import main
from asl_pipeline.simulate import simulate_dataset

pytestmark = pytest.mark.slow

#: TotalReadoutTime of the simulated readout (s): 1 voxel = 1 / 0.0245 Hz.
TRT = 0.0245


def _load(path):
    return np.asanyarray(nib.load(path).dataobj).astype(float)


@pytest.mark.parametrize("seed", [7])
def test_cli_corrects_a_distorted_subject(tmp_path, seed):
    bids = simulate_dataset(
        tmp_path / "bids", n_subjects=1, seed=seed, distortion=True, n_pairs=12, outliers=False
    )
    out = tmp_path / "out"
    argv = [str(bids), str(out), "participant", "--work-dir", str(tmp_path / "work")]
    assert main(argv + ["--output-spaces", "asl", "--nprocs", "2"]) == 0

    fmap = out / "sub-01" / "fmap" / "sub-01_fmapid-auto00000_desc-preproc_fieldmap.nii.gz"
    meta = json.loads(fmap.with_name(fmap.name.replace(".nii.gz", ".json")).read_text())
    assert meta["Units"] == "Hz"
    assert meta["Sources"] == [
        "bids:raw:sub-01/perf/sub-01_m0scan.nii.gz",
        "bids:raw:sub-01/fmap/sub-01_dir-AP_m0scan.nii.gz",
    ]
    truth = bids / "derivatives/simulation/sub-01"
    true_field = _load(truth / "fmap/sub-01_desc-true_fieldmap.nii.gz")
    brain = _load(truth / "perf/sub-01_desc-brain_mask.nii.gz") > 0
    err = np.abs(_load(fmap) - true_field)[brain] * TRT
    true_disp = np.abs(true_field[brain]) * TRT
    # seed 7 (2026-12-04): error mean 0.030, p99 0.40, max 0.85 voxel, against a true
    # displacement of mean 0.24, p99 2.27 voxel (an uncorrected run's error)
    assert err.mean() < 0.06 and np.percentile(err, 99) < 0.5
    assert err.mean() < 0.25 * true_disp.mean()

    report = next((out / "sub-01" / "figures").glob("*_report.html")).read_text()
    assert "PEPOLAR" in report and "resampled once" in report
    assert "<h3>Susceptibility distortion correction</h3>" in report
    assert "Figures that could not be drawn" not in report
    for svg in ("desc-fieldmap_aslref.svg", "desc-sdc_aslrefa.svg", "desc-sdc_aslrefb.svg"):
        assert f"sub-01_{svg}" in report, svg
    # the reference before the correction is stored, and is the flicker's first frame
    before = out / "sub-01/perf/sub-01_desc-hmc_aslref.nii.gz"
    side = json.loads(before.with_name(before.name.replace(".nii.gz", ".json")).read_text())
    assert side["Description"].startswith("ASL reference before susceptibility distortion")
    assert "before the correction (sub-01_desc-hmc_aslref.nii.gz)" in report
    after = _load(out / "sub-01/perf/sub-01_aslref.nii.gz")
    assert _load(before).shape == after.shape and not np.allclose(_load(before), after)
    cbf = _load(out / "sub-01/perf/sub-01_desc-mean_cbf.nii.gz")
    true_cbf = _load(truth / "perf/sub-01_desc-true_cbf.nii.gz")
    # seed 7: r = 0.61 (12 noisy pairs)
    assert np.corrcoef(cbf[brain], true_cbf[brain])[0, 1] > 0.5


@pytest.mark.parametrize("seed", [7])
def test_cli_corrects_with_a_phasediff_field_map(tmp_path, seed):
    """The same subject with a phase-difference map (own grid and head position)."""
    bids = simulate_dataset(
        tmp_path / "bids", n_subjects=1, seed=seed, distortion=True, fieldmap="phasediff",
        n_pairs=12, outliers=False,
    )  # fmt: skip
    assert not (bids / "sub-01/fmap/sub-01_dir-AP_m0scan.nii.gz").exists()
    out = tmp_path / "out"
    argv = [str(bids), str(out), "participant", "--work-dir", str(tmp_path / "work")]
    assert main(argv + ["--output-spaces", "asl", "--nprocs", "2"]) == 0

    fmap = out / "sub-01" / "fmap" / "sub-01_fmapid-auto00000_desc-preproc_fieldmap.nii.gz"
    meta = json.loads(fmap.with_name(fmap.name.replace(".nii.gz", ".json")).read_text())
    assert meta["Units"] == "Hz" and meta["FieldmapType"] == "phasediff"
    assert meta["Sources"] == [
        "bids:raw:sub-01/fmap/sub-01_phasediff.nii.gz",
        "bids:raw:sub-01/fmap/sub-01_magnitude1.nii.gz",
        "bids:raw:sub-01/perf/sub-01_m0scan.nii.gz",
    ]
    truth = bids / "derivatives/simulation/sub-01"
    true_field = _load(truth / "fmap/sub-01_desc-true_fieldmap.nii.gz")
    brain = _load(truth / "perf/sub-01_desc-brain_mask.nii.gz") > 0
    stored = nib.load(fmap)
    assert stored.shape == true_field.shape  # on the ASL grid, not the field map's
    err = np.abs(_load(fmap) - true_field)[brain] * TRT
    true_disp = np.abs(true_field[brain]) * TRT
    print(f"phasediff e2e: error mean {err.mean():.4f} p99 {np.percentile(err, 99):.3f} "
          f"max {err.max():.3f} voxel; true displacement mean {true_disp.mean():.3f}")  # fmt: skip
    # seed 7 (2026-12-04): error mean 0.0062, p99 0.065, max 0.16 voxel, against a true
    # displacement of mean 0.24 voxel (the M0 pair's estimate above: 0.030 mean)
    assert err.mean() < 0.05 and np.percentile(err, 99) < 0.3
    assert err.mean() < 0.25 * true_disp.mean()

    report = next((out / "sub-01" / "figures").glob("*_report.html")).read_text()
    assert "phase-difference map" in report and "resampled once" in report
    assert "measured with the phase-difference field map" in report
    assert "<h3>Susceptibility distortion correction</h3>" in report
    assert "Figures that could not be drawn" not in report
    for svg in ("desc-fieldmap_aslref.svg", "desc-sdc_aslrefa.svg", "desc-sdc_aslrefb.svg"):
        assert f"sub-01_{svg}" in report, svg
    before = _load(out / "sub-01/perf/sub-01_desc-hmc_aslref.nii.gz")
    after = _load(out / "sub-01/perf/sub-01_aslref.nii.gz")
    assert before.shape == after.shape and not np.allclose(before, after)
    cbf = _load(out / "sub-01/perf/sub-01_desc-mean_cbf.nii.gz")
    true_cbf = _load(truth / "perf/sub-01_desc-true_cbf.nii.gz")
    assert np.corrcoef(cbf[brain], true_cbf[brain])[0, 1] > 0.5
