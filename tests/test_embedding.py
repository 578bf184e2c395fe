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
    return sub, files


def test_embedded_cbf_workflow_runs(subject, tmp_path, capsys):
    sub, f = subject
    example = runpy.run_path(str(EXAMPLE))
    rc = example["main"](
        [
            f["asl"],
            f["aslcontext"],
            f["sidecar"],
            f["m0"],
            f["mask"],
            f["gm"],
            f["wm"],
            f["csf"],
            str(tmp_path),
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    out = dict(ln.split() for ln in lines if ln.startswith(("clean_cbf ", "asltbx_cbf ")))
    cleaned = nib.load(out["clean_cbf"]).get_fdata()
    gm = sub.gm > 0.7
    # the cleaned mean CBF in GM is close to the truth (noise, partial volume)
    ratio = np.median(cleaned[gm]) / np.median(sub.cbf[gm])
    assert 0.85 < ratio < 1.15
    assert Path(out["asltbx_cbf"]).exists()
