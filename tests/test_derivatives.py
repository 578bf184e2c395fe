"""Derivative naming and the derivatives data sink."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.derivatives import derivative_path, parse_entities, write_dataset_files
from asl_pipeline.interfaces.bids import DerivativesDataSink


def test_parse_entities():
    ent = parse_entities("/x/sub-01_ses-pre_acq-pcasl_run-2_asl.nii.gz")
    assert ent == {"sub": "01", "ses": "pre", "acq": "pcasl", "run": "2"}


def test_derivative_path_order():
    src = "sub-01_ses-pre_run-2_asl.nii.gz"
    assert str(derivative_path(src, suffix="cbf", desc="mean", space="MNI152NLin2009aSym")) == (
        "sub-01/ses-pre/perf/sub-01_ses-pre_run-2_space-MNI152NLin2009aSym_desc-mean_cbf.nii.gz"
    )
    xfm = derivative_path(src, suffix="xfm", extension=".txt", from_="asl", to="T1w", mode="image")
    assert xfm.name == "sub-01_ses-pre_run-2_from-asl_to-T1w_mode-image_xfm.txt"
    with pytest.raises(ValueError, match="unknown"):
        derivative_path(src, suffix="cbf", flavour="x")
    with pytest.raises(ValueError, match="not a BIDS"):
        derivative_path("scan.nii.gz", suffix="cbf")


def test_sink_gzips_deterministically(tmp_path):
    img = nib.Nifti1Image(np.arange(27, dtype=np.float32).reshape(3, 3, 3), np.eye(4))
    nib.save(img, tmp_path / "in.nii")
    outs = []
    for i in range(2):
        res = DerivativesDataSink(
            base_directory=str(tmp_path / f"out{i}"),
            source_file="sub-01_asl.nii.gz",
            in_file=str(tmp_path / "in.nii"),
            suffix="cbf",
            desc="mean",
            meta_dict={"Units": "mL/100 g/min"},
            sources=["bids::sub-01/perf/sub-01_asl.nii.gz"],
        ).run(cwd=tmp_path)
        outs.append(res.outputs.out_file)
    assert outs[0].endswith("sub-01/perf/sub-01_desc-mean_cbf.nii.gz")
    data = [open(p, "rb").read() for p in outs]
    assert data[0] == data[1]
    assert gzip.decompress(data[0]) == (tmp_path / "in.nii").read_bytes()
    meta = json.loads(open(outs[0].replace(".nii.gz", ".json")).read())
    assert meta == {"Units": "mL/100 g/min", "Sources": ["bids::sub-01/perf/sub-01_asl.nii.gz"]}


def test_dataset_files(tmp_path):
    write_dataset_files(tmp_path, source_dataset=tmp_path)
    desc = json.loads((tmp_path / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "asl_pipeline"
    assert "*_cbf.nii.gz" in (tmp_path / ".bidsignore").read_text()
