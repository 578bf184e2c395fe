"""Derivative naming and the derivatives data sink."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.derivatives import (
    BIDSIGNORE,
    bids_uri,
    derivative_path,
    parse_entities,
    portable_metadata,
    raw_uri,
    sidecar_text,
    write_dataset_files,
)
from asl_pipeline.interfaces.bids import DerivativesDataSink
from asl_pipeline.workflows.outputs import init_asl_derivatives_wf


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


def _raw_dataset(tmp_path):
    raw = tmp_path / "raw"
    (raw / "sub-01/perf").mkdir(parents=True)
    desc = {"Name": "Study X", "BIDSVersion": "1.10.0", "License": "CC0", "DatasetDOI": "10.1/x"}
    (raw / "dataset_description.json").write_text(json.dumps(desc))
    return raw


def test_dataset_files(tmp_path, monkeypatch):
    raw = _raw_dataset(tmp_path)
    monkeypatch.setenv("ASL_PIPELINE_CONTAINER", "docker://asl_pipeline:0.1.0")
    out = tmp_path / "out"
    write_dataset_files(out, source_dataset=raw)
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    generated = desc["GeneratedBy"][0]
    assert generated["Name"] == "asl_pipeline" and generated["Version"]
    assert generated["Container"] == {"Type": "docker", "Tag": "asl_pipeline:0.1.0"}
    assert desc["DatasetLinks"] == {"raw": "../raw"}  # relative: the pair can move together
    assert desc["SourceDatasets"] == [{"URL": "bids:raw:", "DOI": "10.1/x"}]
    assert desc["License"] == "CC0"  # the data's license carries over to its derivatives
    assert "Study X" in desc["Name"]
    assert "cite" in desc["HowToAcknowledge"]
    assert "file://" not in json.dumps(desc) and str(tmp_path) not in json.dumps(desc)


def test_bidsignore_justifies_each_pattern(tmp_path):
    write_dataset_files(tmp_path)
    lines = (tmp_path / ".bidsignore").read_text().splitlines()
    assert lines[0].startswith("# ")
    patterns = [line for line in lines if not line.startswith("#")]
    assert len(lines) - len(patterns) == len(BIDSIGNORE)  # one comment per group
    # files the schema names are not hidden: T1w-space masks and probsegs, the
    # preprocessed ASL series and M0
    assert "*_mask.nii.gz" not in patterns and "*_probseg.nii.gz" not in patterns
    assert not {"*_asl.nii.gz", "*_asl.json", "*_m0scan.nii.gz", "*_m0scan.json"} & set(patterns)
    assert "**/perf/*_mask.*" in patterns


def test_bids_uris(tmp_path):
    raw = _raw_dataset(tmp_path)
    asl = raw / "sub-01/perf/sub-01_asl.nii.gz"
    assert raw_uri(asl) == "bids:raw:sub-01/perf/sub-01_asl.nii.gz"
    roots = {"": tmp_path / "out", "raw": raw}
    assert bids_uri(tmp_path / "out/sub-01/x.nii.gz", roots) == "bids::sub-01/x.nii.gz"
    assert bids_uri("/elsewhere/x.nii.gz", roots) is None
    meta = {"a": [str(asl), "/work/w/node/m0.nii.gz"], "b": {"Path": "/opt/w.pt"}, "c": "text"}
    assert portable_metadata(meta, roots) == {
        "a": ["bids:raw:sub-01/perf/sub-01_asl.nii.gz", "m0.nii.gz"],
        "b": {"Path": "w.pt"},
        "c": "text",
    }
    with pytest.raises(ValueError, match="not inside a BIDS dataset"):
        raw_uri(tmp_path / "loose.nii.gz")


def test_sink_sidecar_has_bids_uris_and_no_machine_paths(tmp_path):
    raw = _raw_dataset(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    img = nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4))
    nib.save(img, work / "cbf.nii.gz")
    interface_meta = {
        "Sources": [str(work / "asl_corrected.nii.gz")],
        "M0File": str(work / "quant_m0scan.nii.gz"),
        "DenoisingModel": {"Path": "/usr/lib/python3/site-packages/asl_pipeline/data/dwan.pt"},
        "Units": "mL/100 g/min",
    }
    (work / "cbf.json").write_text(json.dumps(interface_meta))
    out = tmp_path / "out"
    m0_uri = "bids::sub-01/perf/sub-01_desc-preproc_m0scan.nii.gz"
    res = DerivativesDataSink(
        base_directory=str(out),
        source_file=str(raw / "sub-01/perf/sub-01_asl.nii.gz"),
        in_file=str(work / "cbf.nii.gz"),
        in_meta=str(work / "cbf.json"),
        suffix="cbf",
        desc="mean",
        sources=["bids::sub-01/perf/sub-01_desc-timeseries_cbf.nii.gz"],
        file_keys={"M0File": m0_uri, "NotThere": "bids::x"},
    ).run(cwd=work)
    meta = json.loads(open(res.outputs.out_meta).read())
    assert meta["Sources"] == ["bids::sub-01/perf/sub-01_desc-timeseries_cbf.nii.gz"]
    assert meta["M0File"] == m0_uri
    assert "NotThere" not in meta
    assert meta["DenoisingModel"] == {"Path": "dwan.pt"}
    assert str(tmp_path) not in json.dumps(meta) and '"/' not in json.dumps(meta)


def test_sink_without_sidecar(tmp_path):
    raw = _raw_dataset(tmp_path)
    (tmp_path / "ctx.tsv").write_text("volume_type\ncontrol\nlabel\n")
    res = DerivativesDataSink(
        base_directory=str(tmp_path / "out"),
        source_file=str(raw / "sub-01/perf/sub-01_asl.nii.gz"),
        in_file=str(tmp_path / "ctx.tsv"),
        suffix="aslcontext",
        write_sidecar=False,
    ).run(cwd=tmp_path)
    assert res.outputs.out_file.endswith("sub-01/perf/sub-01_aslcontext.tsv")
    assert not list((tmp_path / "out/sub-01/perf").glob("*.json"))


def _sinks(tmp_path, stored, **kwargs):
    raw = _raw_dataset(tmp_path)
    wf = init_asl_derivatives_wf(
        output_dir=str(tmp_path / "out"),
        source_file=str(raw / "sub-01/perf/sub-01_asl.nii.gz"),
        stored=frozenset(stored),
        anat_source=str(raw / "sub-01/anat/sub-01_T1w.nii.gz"),
        **kwargs,
    )
    return {n: wf.get_node(n) for n in wf.list_node_names() if n.startswith("ds_")}


def test_every_sink_names_its_sources(tmp_path):
    stored = {
        "m0", "cbf_ts", "mean_cbf", "cleaned_cbf", "asl_preproc", "asl_ref", "asl_mask",
        "gm", "qc", "confounds", "asl_to_t1w", "mni_cleaned_cbf", "mni_mean_cbf",
    }  # fmt: skip
    m0 = tmp_path / "raw/sub-01/perf/sub-01_m0scan.nii.gz"
    sinks = _sinks(tmp_path, stored, m0_source=str(m0), metadata={"M0Type": "Separate"})
    sources = {name[3:]: node.inputs.sources for name, node in sinks.items()}
    # the preprocessed M0 comes from the M0 scan, not from the ASL series
    assert sources["m0"] == ["bids:raw:sub-01/perf/sub-01_m0scan.nii.gz"]
    assert sources["asl_preproc"] == ["bids:raw:sub-01/perf/sub-01_asl.nii.gz"]
    assert sinks["ds_asl_preproc"].inputs.meta_dict["M0Type"] == "Separate"
    assert sources["asl_ref"] == ["bids::sub-01/perf/sub-01_desc-preproc_asl.nii.gz"]
    assert sources["mean_cbf"] == ["bids::sub-01/perf/sub-01_desc-timeseries_cbf.nii.gz"]
    assert sources["gm"] == [
        "bids::sub-01/anat/sub-01_label-GM_probseg.nii.gz",
        "bids::sub-01/perf/sub-01_from-asl_to-T1w_mode-image_xfm.mat",
    ]
    # the MNI map and its native twin share a desc; its Sources chain back to the twin
    mni = sinks["ds_mni_cleaned_cbf"].inputs
    assert (mni.space, mni.desc) == ("MNI152NLin2009aSym", sinks["ds_cleaned_cbf"].inputs.desc)
    assert sources["mni_cleaned_cbf"] == [
        "bids::sub-01/perf/sub-01_desc-paocsl_cbf.nii.gz",
        "bids::sub-01/perf/sub-01_from-asl_to-T1w_mode-image_xfm.mat",
        "bids::sub-01/anat/sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5",
    ]
    # the quantifying interfaces' M0File becomes the stored M0
    assert sinks["ds_cbf_ts"].inputs.file_keys == {
        "M0File": "bids::sub-01/perf/sub-01_desc-preproc_m0scan.nii.gz"
    }
    for name, node in sinks.items():
        assert node.inputs.sources, name
        assert all(s.startswith("bids:") for s in node.inputs.sources), name


def test_m0_from_the_series_names_the_series(tmp_path):
    sinks = _sinks(tmp_path, {"m0"})
    assert sinks["ds_m0"].inputs.sources == ["bids:raw:sub-01/perf/sub-01_asl.nii.gz"]


def test_denoised_map_names_every_input_of_the_denoiser(tmp_path):
    stored = {"m0", "cbf_ts", "cleaned_cbf", "outlier_matrix", "denoised_cbf", "gm", "wm",
              "asl_mask"}  # fmt: skip
    sources = _sinks(tmp_path, stored)["ds_denoised_cbf"].inputs.sources
    perf = "bids::sub-01/perf/sub-01_"
    assert sources == [
        perf + "desc-paocsl_cbf.nii.gz",
        perf + "desc-timeseries_cbf.nii.gz",
        perf + "desc-paocsl_outliers.tsv",  # the denoiser sees only the kept pairs
        perf + "label-GM_probseg.nii.gz",
        perf + "label-WM_probseg.nii.gz",
        perf + "desc-preproc_m0scan.nii.gz",
        perf + "desc-brain_mask.nii.gz",
    ]
    # without a cleaning the mean of every pair is denoised; no outlier matrix exists
    sources = _sinks(tmp_path / "plain", {"cbf_ts", "mean_cbf", "denoised_cbf"})
    assert sources["ds_denoised_cbf"].inputs.sources == [
        perf + "desc-mean_cbf.nii.gz",
        perf + "desc-timeseries_cbf.nii.gz",
    ]


def test_sidecars_write_numpy_values_as_plain_json():
    text = sidecar_text({"Mean": np.float32(1.5), "Pairs": np.arange(3), "Kept": np.bool_(True)})
    assert text.endswith("\n")
    assert json.loads(text) == {"Mean": 1.5, "Pairs": [0, 1, 2], "Kept": True}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        sidecar_text({"Path": object()})
