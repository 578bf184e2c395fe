"""The whole pipeline on a simulated multi-PLD subject (3D pCASL, background
suppressed, 5 delays x 8 repeats, the simulator's motion and outliers).

The multi-PLD branch (repeat screen, kinetic-model fit) is checked end to end
against the simulator's truth: the ATT map, the fit's failure mask as a
derivative, the QC table's ATT columns and the closing summary line.
"""

import contextlib
import io
import json

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.cli.run import main
from asl_pipeline.simulate import simulate_dataset
from tests._bidsfactory import snapshot

pytestmark = pytest.mark.slow

PLDS = [0.5, 1.0, 1.5, 2.0, 2.5]


@pytest.fixture(scope="module")
def multipld_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("multipld")
    bids = simulate_dataset(
        base / "bids",
        n_subjects=1,
        seed=37,
        plds=PLDS,
        pld_repeats=8,
        readout="3D",
        background_suppression=True,
    )
    before = snapshot(bids)
    argv = [str(bids), str(base / "out"), "participant", "--work-dir", str(base / "work")]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(argv + ["--output-spaces", "asl", "--nprocs", "2"])
    return {"rc": rc, "bids": bids, "out": base / "out", "before": before, "stdout": stdout}


def _load(path):
    return np.asanyarray(nib.load(path).dataobj).astype(float)


def test_multipld_outputs_and_input_untouched(multipld_run):
    assert multipld_run["rc"] == 0
    assert snapshot(multipld_run["bids"]) == multipld_run["before"]
    perf = multipld_run["out"] / "sub-01" / "perf"
    failed = perf / "sub-01_desc-fitfailed_mask.nii.gz"
    assert (perf / "sub-01_att.nii.gz").exists() and failed.exists()
    assert set(np.unique(_load(failed))) <= {0.0, 1.0}
    meta = json.loads(failed.with_name("sub-01_desc-fitfailed_mask.json").read_text())
    assert "kinetic-model fit failed" in meta["Description"]
    assert "bids::sub-01/perf/sub-01_desc-preproc_asl.nii.gz" in meta["Sources"]
    assert not (perf / "sub-01_desc-timeseries_cbf.nii.gz").exists()  # no pairs to clean


def test_multipld_qc_reads_att_against_the_truth(multipld_run):
    perf = multipld_run["out"] / "sub-01" / "perf"
    qc_file = perf / "sub-01_desc-qualitycontrol_cbf.tsv"
    header, values = qc_file.read_text().splitlines()[:2]
    qc = {k: float(v) for k, v in zip(header.split("\t"), values.split("\t"), strict=True)}
    truth = multipld_run["bids"] / "derivatives" / "simulation" / "sub-01" / "perf"
    true_att = _load(truth / "sub-01_desc-true_att.nii.gz")
    gm = _load(perf / "sub-01_label-GM_probseg.nii.gz") > 0.7  # the QC table's mask
    assert qc["att_gm_mean"] == pytest.approx(true_att[gm].mean(), abs=0.15)
    failed = _load(perf / "sub-01_desc-fitfailed_mask.nii.gz") > 0
    # the table holds 6 significant digits
    assert qc["att_gm_failed_percent"] == pytest.approx(100 * failed[gm].mean(), abs=1e-3)
    assert qc["att_gm_failed_percent"] < 25.0
    assert 0.0 <= qc["att_wm_failed_percent"] <= 100.0


def test_multipld_summary_line_names_the_att(multipld_run):
    lines = multipld_run["stdout"].getvalue().splitlines()
    summary = [ln for ln in lines if ln.startswith("sub-01: GM ")]
    assert len(summary) == 1 and "; ATT GM " in summary[0] and "fit failed in" in summary[0]
