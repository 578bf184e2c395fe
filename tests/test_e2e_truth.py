"""Tier 4: the default chain against the simulator's truth on more seeds.

``tests/test_e2e.py`` checks seed 21 in depth; here the README demo's subject
(seed 1) and one more seed run the default command. The bounds are what the
chain achieves today, as a guard. The issue's targets (cleaned GM within 5%,
WM within 15%) are below the noise floor of these subjects: on seed 1 the
cleaned map reads -4.5% / -18.9%, and a cleaning that removes exactly the
simulator's corrupted entries (the validation panel's oracle,
``benchmarks/validate_chain.py``, RESULTS.md) reads -4.1% / -18.8%, with a
standard error of the 38-pair GM / WM means of 10.7% / 24.1%. The closing
summary line must report the measured map exactly.
"""

import re

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.cli.run import main
from asl_pipeline.qc import tissue_cbf_stats
from asl_pipeline.simulate import simulate_dataset

pytestmark = pytest.mark.slow

SEEDS = (1, 33)  # 1: the README demo's dataset (asl-simulate --n-subjects 1 --seed 1)


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def default_run(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"truth{request.param}")
    bids = simulate_dataset(base / "bids", n_subjects=1, seed=request.param)
    out = base / "out"
    argv = [str(bids), str(out), "participant", "--work-dir", str(base / "work")]
    return {"bids": bids, "out": out, "argv": argv + ["--output-spaces", "asl", "--nprocs", "2"]}


def _load(path):
    return np.asanyarray(nib.load(path).dataobj).astype(float)


def test_default_chain_matches_truth(default_run, capsys):
    assert main(default_run["argv"]) == 0
    printed = capsys.readouterr().out
    truth_dir = default_run["bids"] / "derivatives/simulation/sub-01/perf"
    true_cbf = _load(truth_dir / "sub-01_desc-true_cbf.nii.gz")
    gm = _load(truth_dir / "sub-01_label-GM_probseg.nii.gz") > 0.7
    wm = _load(truth_dir / "sub-01_label-WM_probseg.nii.gz") > 0.9
    perf = default_run["out"] / "sub-01/perf"
    cleaned = _load(perf / "sub-01_desc-paocsl_cbf.nii.gz")
    plain = _load(perf / "sub-01_desc-mean_cbf.nii.gz")
    for tissue, bound in ((gm, 0.10), (wm, 0.40)):
        err = cleaned[tissue].mean() / true_cbf[tissue].mean() - 1
        plain_err = plain[tissue].mean() / true_cbf[tissue].mean() - 1
        assert abs(err) < bound, err
        assert abs(err) < abs(plain_err), (err, plain_err)  # cleaning helps

    # the closing summary line reports the measured map on the pipeline's own
    # tissue maps, and so lands near the truth on those maps
    own_gm, own_wm = (_load(perf / f"sub-01_label-{t}_probseg.nii.gz") for t in ("GM", "WM"))
    measured = tissue_cbf_stats(cleaned, own_gm, own_wm)
    truth = tissue_cbf_stats(true_cbf, own_gm, own_wm)
    line = next(x for x in printed.splitlines() if x.startswith("sub-01: GM "))
    gm_value, wm_value = (float(v) for v in re.findall(r"(?:GM|WM) ([-\d.]+)", line)[:2])
    assert gm_value == pytest.approx(measured["gm_cbf_mean"], abs=0.051), line
    assert wm_value == pytest.approx(measured["wm_cbf_mean"], abs=0.051), line
    assert gm_value == pytest.approx(truth["gm_cbf_mean"], rel=0.10), line
    assert re.search(r"\d+ of 40 pairs removed", line), line
