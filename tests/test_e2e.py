"""Tier 4: the whole pipeline on a small simulated BIDS dataset.

One subject runs with MultiProc and is checked against the simulator's ground
truth and the BIDS validator; a second identical run must give byte-identical
images; a run killed half-way must resume to the same derivatives; and two
subjects run through a real SLURM cluster (skipped where none is running).
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.cli.run import main
from asl_pipeline.qc import tissue_cbf_stats
from asl_pipeline.simulate import simulate_dataset
from tests._bidsfactory import snapshot

pytestmark = pytest.mark.slow

#: The simulator's default subject: 2D pCASL, 40 pairs, 64x64x20, 1 mm T1w.
#: (Fewer pairs leave outlier cleaning too little to work with, and a 2 mm T1w
#: breaks the brain extraction: see the README's limitations.)
SIM = {}


def _images(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.nii.gz"))
    }


def _argv(bids, out, work, *extra):
    return [str(bids), str(out), "participant", "--work-dir", str(work), *extra]


def _sub01_argv(bids, base, *extra):
    """Subject 01 only, outputs in ``base/out`` and the work folder ``base/work``."""
    return _argv(bids, base / "out", base / "work", "--participant-label", "01", *extra)


@pytest.fixture(scope="session")
def sim_bids(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e") / "bids"
    simulate_dataset(root, n_subjects=2, seed=21, **SIM)
    return root


@pytest.fixture(scope="session")
def first_run(sim_bids, tmp_path_factory):
    base = tmp_path_factory.mktemp("run1")
    before = snapshot(sim_bids)
    rc = main(_sub01_argv(sim_bids, base, "--nprocs", "2"))
    return {"rc": rc, "out": base / "out", "work": base / "work", "before": before}


EXPECTED = [
    "dataset_description.json",
    ".bidsignore",
    "logs/asl_pipeline_config_sub-01.toml",
    "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz",
    "sub-01/anat/sub-01_desc-brain_mask.nii.gz",
    "sub-01/anat/sub-01_label-GM_probseg.nii.gz",
    "sub-01/anat/sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5",
    "sub-01/perf/sub-01_desc-timeseries_cbf.nii.gz",
    "sub-01/perf/sub-01_desc-mean_cbf.nii.gz",
    "sub-01/perf/sub-01_desc-paocsl_cbf.nii.gz",
    "sub-01/perf/sub-01_desc-paocsl_outliers.tsv",
    "sub-01/perf/sub-01_space-MNI152NLin2009aSym_desc-mean_cbf.nii.gz",
    "sub-01/perf/sub-01_space-MNI152NLin2009aSym_desc-paocsl_cbf.nii.gz",
    "sub-01/perf/sub-01_desc-preproc_asl.nii.gz",
    "sub-01/perf/sub-01_desc-preproc_asl.json",
    "sub-01/perf/sub-01_aslcontext.tsv",
    "sub-01/perf/sub-01_aslref.nii.gz",
    "sub-01/perf/sub-01_desc-preproc_m0scan.nii.gz",
    "sub-01/perf/sub-01_label-GM_probseg.json",
    "sub-01/anat/sub-01_desc-brain_mask.json",
    "sub-01/anat/sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json",
    "sub-01/perf/sub-01_desc-brain_mask.nii.gz",
    "sub-01/perf/sub-01_label-GM_probseg.nii.gz",
    "sub-01/perf/sub-01_from-asl_to-T1w_mode-image_xfm.mat",
    "sub-01/perf/sub-01_desc-confounds_timeseries.tsv",
    "sub-01/perf/sub-01_desc-qualitycontrol_cbf.tsv",
    "sub-01/figures/sub-01_report.html",
]


def test_outputs_complete_and_input_untouched(first_run, sim_bids):
    assert first_run["rc"] == 0
    out = first_run["out"]
    missing = [f for f in EXPECTED if not (out / f).exists()]
    assert not missing, missing
    assert not (out / "sub-02").exists()
    assert snapshot(sim_bids) == first_run["before"]
    meta = json.loads((out / "sub-01/perf/sub-01_desc-mean_cbf.json").read_text())
    assert meta["Units"] == "mL/100 g/min" and meta["Sources"]
    assert not (out / "sub-01/perf/sub-01_desc-denoised_cbf.nii.gz").exists()  # opt-in
    # provenance as BIDS URIs, never a machine path (absolute, work directory)
    for sidecar in (out / "sub-01").rglob("*.json"):
        text = sidecar.read_text()
        assert '"/' not in text and str(first_run["work"]) not in text, sidecar
        assert all(s.startswith("bids:") for s in json.loads(text)["Sources"]), sidecar
    m0 = json.loads((out / "sub-01/perf/sub-01_desc-preproc_m0scan.json").read_text())
    assert m0["Sources"] == ["bids:raw:sub-01/perf/sub-01_m0scan.nii.gz"]
    page = (out / "sub-01/figures/sub-01_report.html").read_text()
    assert page.count("<img") >= 7 and "white paper" in page


def test_cbf_matches_ground_truth(first_run, sim_bids):
    truth = sim_bids / "derivatives/simulation/sub-01/perf"
    true_cbf = nib.load(truth / "sub-01_desc-true_cbf.nii.gz").get_fdata()
    true_gm = nib.load(truth / "sub-01_label-GM_probseg.nii.gz").get_fdata()
    true_gm = true_gm / true_gm.max() > 0.7
    out = first_run["out"] / "sub-01/perf"
    cleaned = nib.load(out / "sub-01_desc-paocsl_cbf.nii.gz").get_fdata()
    ratio = np.median(cleaned[true_gm]) / np.median(true_cbf[true_gm])
    assert 0.85 < ratio < 1.15, ratio
    # tissue figures on the pipeline's own tissue maps, against the truth's
    gm, wm = (nib.load(out / f"sub-01_label-{t}_probseg.nii.gz").get_fdata() for t in ("GM", "WM"))
    expected = tissue_cbf_stats(true_cbf, gm, wm)
    got = tissue_cbf_stats(cleaned, gm, wm)
    assert got["gm_cbf_mean"] == pytest.approx(expected["gm_cbf_mean"], rel=0.15)
    assert got["gm_wm_ratio"] == pytest.approx(expected["gm_wm_ratio"], rel=0.15)
    # the QC table describes the measured (cleaned) map, the plain mean in its own columns
    mean = nib.load(out / "sub-01_desc-mean_cbf.nii.gz").get_fdata()
    qc = (out / "sub-01_desc-qualitycontrol_cbf.tsv").read_text().splitlines()
    row = dict(zip(qc[0].split("\t"), qc[1].split("\t"), strict=True))
    assert float(row["cbf_gm_cbf_mean"]) == pytest.approx(got["gm_cbf_mean"], rel=1e-4)
    assert float(row["mean_gm_cbf_mean"]) == pytest.approx(
        tissue_cbf_stats(mean, gm, wm)["gm_cbf_mean"], rel=1e-4
    )
    assert 0.0 < float(row["cbf_qei"]) <= 1.0


def test_bids_validator_accepts_outputs(first_run):
    validator = shutil.which("bids-validator-deno")
    if validator is None:
        pytest.skip("bids-validator-deno is not installed")
    res = subprocess.run(
        [validator, str(first_run["out"]), "-r", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    issues = json.loads(res.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert not errors, errors


def test_second_run_is_byte_identical(first_run, sim_bids, tmp_path):
    assert main(_sub01_argv(sim_bids, tmp_path, "--nprocs", "2")) == 0
    assert _images(tmp_path / "out") == _images(first_run["out"])


def test_killed_run_resumes_to_identical_outputs(first_run, sim_bids, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "asl_pipeline.cli.run",
        *_sub01_argv(sim_bids, tmp_path, "--plugin", "Linear"),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    # kill as soon as the realignment has finished, well before the end
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if list((tmp_path / "work").rglob("asl_realign/result_asl_realign.pklz")):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out/sub-01/figures/sub-01_report.html").exists()
    assert main(_sub01_argv(sim_bids, tmp_path, "--plugin", "Linear")) == 0
    assert _images(tmp_path / "out") == _images(first_run["out"])


def _slurm_running() -> bool:
    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return res.returncode == 0 and any(
        s.startswith("idle") or s.startswith("mix") for s in res.stdout.split()
    )


@pytest.mark.slurm
def test_two_subjects_on_slurm_then_a_failing_node(sim_bids, tmp_path, monkeypatch, capsys):
    if not _slurm_running():
        pytest.skip("no SLURM cluster is running (start one with ../shared/ci/setup-slurm.sh)")
    monkeypatch.setenv("LOGNAME", os.environ.get("LOGNAME", "root"))
    work, out = tmp_path / "work", tmp_path / "out"
    assert main(_argv(sim_bids, out, work, "--plugin", "SLURM")) == 0
    for sub in ("01", "02"):
        assert (out / f"sub-{sub}/perf/sub-{sub}_desc-paocsl_cbf.nii.gz").exists()
        assert (out / f"sub-{sub}/figures/sub-{sub}_report.html").exists()
    assert list(work.rglob("slurm-*.out")), "nodes did not run as SLURM jobs"
    # weights that pass the start-up check but are corrupted before the denoising
    # node loads them (a file changed on a shared filesystem) make that node fail
    # under SLURM: the run exits non-zero and names the node and its crash file
    weights = tmp_path / "weights.pt"
    shutil.copyfile(files("asl_pipeline.data") / "dwan_lfn_l1.pt", weights)
    out2 = tmp_path / "out2"

    def corrupt_once_started():
        deadline = time.time() + 600
        while time.time() < deadline and not (out2 / "dataset_description.json").exists():
            time.sleep(0.05)
        weights.write_bytes(b"not a model")

    corrupter = threading.Thread(target=corrupt_once_started, daemon=True)
    corrupter.start()
    capsys.readouterr()
    argv = ["--participant-label", "01", "--plugin", "SLURM", "--denoise"]
    rc = main(_argv(sim_bids, out2, work, *argv, "--dwan-weights", str(weights)))
    corrupter.join(timeout=5)
    err = capsys.readouterr().err
    assert rc != 0
    assert "dwan_denoise" in err and "crash-" in err
