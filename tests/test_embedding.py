"""The documented example: asl_pipeline inside a user's own Nipype pipeline."""

import json
import runpy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.simulate import simulate_subject

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "embed_in_nipype.py"


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """A motion-free simulated run with its true tissue maps, as files."""
    root = tmp_path_factory.mktemp("embed")
    sub = simulate_subject(
        5, shape=(32, 32, 12), voxel_size=(6.0, 6.0, 8.0), motion=False, outliers=True, t1w=False
    )
    files = {}

    def save(name, data):
        files[name] = str(root / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(data, np.float32), sub.asl_affine), files[name])

    save("asl", sub.asl)
    save("m0", sub.m0)
    save("mask", sub.brain_mask)
    for tissue in ("gm", "wm", "csf"):
        save(tissue, getattr(sub, tissue))
    files["aslcontext"] = str(root / "aslcontext.tsv")
    Path(files["aslcontext"]).write_text("volume_type\n" + "\n".join(sub.aslcontext) + "\n")
    files["sidecar"] = str(root / "asl.json")
    Path(files["sidecar"]).write_text(json.dumps(sub.metadata))
    files["m0_sidecar"] = str(root / "m0scan.json")
    Path(files["m0_sidecar"]).write_text(json.dumps(sub.m0_metadata))
    return sub, files


def _run_example(f, work, capsys, *, m0_sidecar: bool) -> dict:
    example = runpy.run_path(str(EXAMPLE))
    args = [f[k] for k in ("asl", "aslcontext", "sidecar", "m0", "mask", "gm", "wm", "csf")]
    args.append(str(work))
    if m0_sidecar:
        args.append(f["m0_sidecar"])
    assert example["main"](args) == 0
    lines = capsys.readouterr().out.splitlines()
    return dict(ln.split() for ln in lines if ln.startswith(("clean_cbf ", "asltbx_cbf ")))


def _gm_ratio(sub, path) -> float:
    gm = sub.gm > 0.7
    return float(np.median(nib.load(path).get_fdata()[gm]) / np.median(sub.cbf[gm]))


def test_embedded_cbf_workflow_runs(subject, tmp_path, capsys):
    """With the M0's sidecar the cleaned GM CBF is the truth's within noise and
    partial volume (1.01 on this subject)."""
    sub, f = subject
    out = _run_example(f, tmp_path, capsys, m0_sidecar=True)
    assert 0.9 < _gm_ratio(sub, out["clean_cbf"]) < 1.1
    assert Path(out["asltbx_cbf"]).exists()


def test_embedded_workflow_without_the_m0_sidecar_reads_the_unrecovered_m0(
    subject, tmp_path, capsys
):
    """Without the M0's repetition time the M0 is taken as fully relaxed, with a
    warning: the CBF rises by exactly the simulated M0's shortfall (0.90 of the
    relaxed M0 at its TR of 4.12 s, so about 11%)."""
    sub, f = subject
    with_tr = _run_example(f, tmp_path / "a", capsys, m0_sidecar=True)["clean_cbf"]
    with pytest.warns(Warning, match="repetition time of the M0 unknown"):
        without = _run_example(f, tmp_path / "b", capsys, m0_sidecar=False)["clean_cbf"]
    gm = sub.gm > 0.7
    shortfall = np.median(sub.m0_true[gm] / np.asarray(sub.m0)[gm])
    assert shortfall > 1.05
    ratio = _gm_ratio(sub, without) / _gm_ratio(sub, with_tr)
    assert ratio == pytest.approx(shortfall, rel=0.02)
