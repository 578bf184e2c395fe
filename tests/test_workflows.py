"""Tier 3: the workflow graph built (not run) for many option combinations."""

import json

import pytest

from asl_pipeline.bids import collect_runs
from asl_pipeline.cli.parser import parse_args
from asl_pipeline.cli.workflow import _set_node_resources
from asl_pipeline.config import Config
from asl_pipeline.rundesc import describe_metadata
from asl_pipeline.workflows.base import init_asl_pipeline_wf
from asl_pipeline.workflows.cbf import init_cbf_wf
from tests._bidsfactory import copy_example, make_dataset

EXAMPLES = ("asl001", "asl002", "asl003", "asl004", "asl005")


def _build(bids, tmp_path, *options):
    args = parse_args(
        [
            str(bids),
            str(tmp_path / "out"),
            "participant",
            "--work-dir",
            str(tmp_path / "work"),
            *options,
        ]
    )
    config = Config.from_args(args)
    runs = collect_runs(config.bids_dir)
    return init_asl_pipeline_wf(config, runs)


def _nodes(workflow):
    return {node.fullname.split(".")[-1]: node for node in workflow._get_all_nodes()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids")
    return make_dataset(root, context=("control", "label") * 6)


def test_default_graph(dataset, tmp_path):
    nodes = _nodes(_build(dataset, tmp_path))
    for name in (
        "asl_realign",
        "t1w_preproc",
        "t1w_tissues",
        "asl_to_t1w",
        "tissues_to_asl",
        "compute_m0",
        "compute_cbf",
        "clean_cbf",
        "compute_qc",
        "ds_mean_cbf",
        "ds_cleaned_cbf",
        "ds_mni_cleaned_cbf",
        "ds_mni_mean_cbf",
        "ds_asl_preproc",
        "ds_asl_ref",
        "ds_aslcontext",
        "ds_confounds",
        "ds_qc",
        "ds_t1w_to_mni",
    ):
        assert name in nodes, name
    # evidence-based defaults: no regression, no smoothing, no denoising
    for name in ("nuisance", "dwan_denoise", "ds_denoised_cbf", "compute_cbf_unprocessed"):
        assert name not in nodes, name
    clean = nodes["clean_cbf"]
    assert clean.inputs.method == "paocsl" and clean.inputs.noise_aware is True
    # the MNI map and its native twin share a desc: the cleaned map is the final one
    assert nodes["ds_mni_cleaned_cbf"].inputs.space == "MNI152NLin2009aSym"
    assert nodes["ds_mni_cleaned_cbf"].inputs.desc == nodes["ds_cleaned_cbf"].inputs.desc
    assert nodes["ds_mean_cbf"].inputs.desc == "mean"
    realign = nodes["asl_realign"]
    assert realign.inputs.zigzag_method == "detect"
    assert realign.inputs.reslice_mode == "volume"
    assert nodes["compute_qc"].inputs.extra_names == ["mean"]


def test_asl_registration_does_not_wait_for_the_segmentation(dataset, tmp_path):
    """The ASL registration needs the brain only, so it runs beside Atropos."""
    wf = _build(dataset, tmp_path)
    assert "t1w_preproc" in _upstream(wf, "asl_to_t1w")
    assert "t1w_tissues" not in _upstream(wf, "asl_to_t1w")
    assert {"t1w_tissues", "asl_to_t1w"} <= _upstream(wf, "tissues_to_asl")
    assert "tissues_to_asl" in _upstream(wf, "compute_cbf")


def _upstream(workflow, node):
    """Every node whose output reaches ``node`` (through sub-workflows)."""
    import networkx as nx
    from nipype.pipeline.engine.utils import _remove_nonjoin_identity_nodes

    flat = _remove_nonjoin_identity_nodes(workflow._create_flat_graph())
    target = next(n for n in flat.nodes if n.fullname.endswith("." + node))

    return {n.fullname.split(".")[-1] for n in nx.ancestors(flat, target)}


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--nuisance-regression"],
        ["--smoothing-fwhm", "3"],
        ["--nuisance-regression", "--smoothing-fwhm", "3"],
    ],
)
def test_regression_and_smoothing_never_reach_the_cleaning_decisions(dataset, tmp_path, options):
    wf = _build(dataset, tmp_path, *options)
    nodes = _nodes(wf)
    clean_cbf_source = _clean_inputs(wf)
    assert ("cbf_ts", "cbf_ts") in clean_cbf_source[1]
    upstream_of_decisions = _upstream(wf, "compute_cbf_unprocessed" if options else "compute_cbf")
    assert "nuisance" not in upstream_of_decisions
    cbf_wf = wf.get_node("sub_01_wf.asl_sub_01_asl.cbf_wf")
    edges = cbf_wf._graph.in_edges(cbf_wf.get_node("clean_cbf"), data=True)
    sources = {(u.name, c) for u, _, d in edges for c in d["connect"]}
    # the cleaned map's sidecar describes the series it is the mean of
    assert ("compute_cbf", ("cbf_ts_json", "cbf_ts_json")) in sources
    if options:
        assert "nuisance" in nodes  # the option still runs, on the quantified series
        assert "nuisance" in _upstream(wf, "clean_cbf")  # ... whose mean is averaged
        assert "nuisance" not in _upstream(wf, "compute_cbf_unprocessed")
        assert ("compute_cbf_unprocessed", ("cbf_ts", "cbf_ts")) in sources
        assert ("compute_cbf", ("cbf_ts", "cbf_ts_apply")) in sources


def test_smoothed_maps_are_named_as_such(dataset, tmp_path):
    nodes = _nodes(_build(dataset, tmp_path, "--smoothing-fwhm", "2.5"))
    assert nodes["ds_mean_cbf"].inputs.desc == "meanSmooth2p5mm"
    assert nodes["ds_mean_cbf"].inputs.meta_dict["SmoothingFWHM"] == 2.5
    assert nodes["ds_cleaned_cbf"].inputs.desc == "paocslSmooth2p5mm"
    assert nodes["ds_mni_cleaned_cbf"].inputs.desc == "paocslSmooth2p5mm"


def _clean_inputs(workflow):
    cbf_wf = workflow.get_node("sub_01_wf.asl_sub_01_asl.cbf_wf")
    clean = cbf_wf.get_node("clean_cbf")
    return clean, [c for _, _, d in cbf_wf._graph.in_edges(clean, data=True) for c in d["connect"]]


def test_paocsl_noise_aware_default_has_no_motion_screen(dataset, tmp_path):
    clean, connections = _clean_inputs(_build(dataset, tmp_path))
    assert clean.inputs.noise_aware is True
    assert ("motion", "motion") not in connections


def test_paocsl_spec_rules_use_motion(dataset, tmp_path):
    clean, connections = _clean_inputs(_build(dataset, tmp_path, "--paocsl-spec-rules"))
    assert clean.inputs.noise_aware is False
    assert ("motion", "motion") in connections


@pytest.mark.parametrize(
    "options, from_cleaning",
    [(["--denoise"], True), (["--denoise", "--outlier-method", "none"], False)],
)
def test_denoiser_reads_the_pairs_the_cleaning_kept(dataset, tmp_path, options, from_cleaning):
    """The cleaned map's noise is that of its kept pairs: the denoiser gets the outlier
    matrix of the cleaning whose map it denoises, and none when nothing was cleaned."""
    cbf_wf = _build(dataset, tmp_path, *options).get_node("sub_01_wf.asl_sub_01_asl.cbf_wf")
    dwan = cbf_wf.get_node("dwan_denoise")
    edges = {
        (src.name, c)
        for src, _, d in cbf_wf._graph.in_edges(dwan, data=True)
        for c in d["connect"]
    }
    assert (("clean_cbf", ("outlier_matrix", "outlier_matrix")) in edges) is from_cleaning
    assert (("clean_cbf", ("mean_cbf", "in_file")) in edges) is from_cleaning


@pytest.mark.parametrize(
    "options, present, absent",
    [
        (["--no-denoise"], ["clean_cbf"], ["dwan_denoise", "ds_denoised_cbf"]),
        (["--denoise"], ["dwan_denoise", "ds_denoised_cbf", "ds_mni_denoised_cbf"], []),
        (
            ["--outlier-method", "none", "--denoise"],
            ["dwan_denoise"],
            ["clean_cbf", "ds_cleaned_cbf"],
        ),
        (["--outlier-method", "score"], ["clean_cbf"], []),
        (["--outlier-method", "aoc", "--outlier-threshold", "0.2"], ["clean_cbf"], []),
        (["--output-spaces", "asl"], ["ds_mean_cbf"], ["ds_mni_cleaned_cbf", "to_mni"]),
        (
            ["--output-spaces", "asl", "T1w"],
            ["ds_t1w_cleaned_cbf", "ds_t1w_mean_cbf"],
            ["ds_mni_cleaned_cbf"],
        ),
        (["--no-nuisance-regression", "--smoothing-fwhm", "0"], ["compute_cbf"], ["nuisance"]),
        (["--nuisance-regression"], ["nuisance", "compute_cbf_unprocessed"], []),
        (["--hmc-reslice", "pair", "--hmc-zigzag", "regress"], ["asl_realign"], []),
        (["--quantification", "asltbx"], ["compute_cbf"], []),
        (["--registration-backend", "spm"], ["compute_cbf"], ["asl_realign"]),
    ],
)
def test_options_switch_stages(dataset, tmp_path, options, present, absent):
    nodes = _nodes(_build(dataset, tmp_path, *options))
    for name in present:
        assert name in nodes, f"{name} missing with {options}"
    for name in absent:
        assert name not in nodes, f"{name} present with {options}"
    if "--outlier-method" in options and "aoc" in options:
        assert nodes["clean_cbf"].inputs.th == 0.2
    if "--quantification" in options:
        assert nodes["compute_cbf"].inputs.quantification == "pairwise-control"


@pytest.mark.parametrize("example", EXAMPLES)
def test_real_sidecars_build(bids_examples_dir, tmp_path, example):
    bids = copy_example(bids_examples_dir / example, tmp_path / example)
    nodes = _nodes(_build(bids, tmp_path))
    assert "compute_m0" in nodes and "compute_qc" in nodes
    if example in ("asl003", "asl004"):  # multi-TI / multi-PLD: kinetic-model fit
        assert "fit_multi_pld" in nodes
        assert "clean_cbf" not in nodes and "dwan_denoise" not in nodes
        # the repeats are screened unless outlier cleaning is switched off
        assert nodes["fit_multi_pld"].inputs.screen_repeats is True
        off = _nodes(_build(bids, tmp_path / "off", "--outlier-method", "none"))
        assert off["fit_multi_pld"].inputs.screen_repeats is False
        # the tissue T1 comes from the GM mean curve, so the tissue maps reach the fit
        assert nodes["fit_multi_pld"].inputs.t1_tissue_source == "gm-curve"
        fixed = _nodes(_build(bids, tmp_path / "fixed", "--multipld-t1", "fixed"))
        assert fixed["fit_multi_pld"].inputs.t1_tissue_source == "fixed"
        # the ATT estimate: the interface picks it by labeling unless told
        assert nodes["fit_multi_pld"].inputs.att_estimate == "auto"
        assert fixed["fit_multi_pld"].inputs.att_estimate == "auto"
        voxel = _nodes(_build(bids, tmp_path / "voxel", "--multipld-att", "voxel"))
        assert voxel["fit_multi_pld"].inputs.att_estimate == "voxel"
    else:
        assert "compute_cbf" in nodes and "fit_multi_pld" not in nodes
    # the gain drift trend: single-PLD runs without background suppression only
    meta = json.loads(next(bids.rglob("*_asl.json")).read_text())
    if "fit_multi_pld" in nodes:
        assert nodes["fit_multi_pld"].inputs.drift_correction == "none"
    else:
        wanted = "none" if meta.get("BackgroundSuppression") else "trend"
        assert nodes["compute_cbf"].inputs.drift_correction == wanted
    if example == "asl001":  # GE deltam only: no pairs to clean
        assert "clean_cbf" not in nodes


def test_slurm_resources(dataset, tmp_path):
    wf = _build(dataset, tmp_path, "--plugin", "SLURM")
    _set_node_resources(wf, "SLURM")
    nodes = _nodes(wf)
    args = nodes["compute_cbf"].plugin_args["sbatch_args"]
    assert "--mem=" in args and "--cpus-per-task=1" in args
    assert not nodes["ds_mean_cbf"].plugin_args  # datasinks run in the main process


def test_pepolar_m0_turns_sdc_on(bids_examples_dir, tmp_path):
    """asl004's reverse-PE M0 (fmap/, IntendedFor its M0) gives an SDC branch by default."""
    import json

    from asl_pipeline.errors import ASLInputError

    root = copy_example(bids_examples_dir / "asl004", tmp_path / "ds")
    nodes = _nodes(_build(root, tmp_path))
    assert {"pepolar_field", "ds_fieldmap"} <= set(nodes)
    realign = nodes["asl_realign"]
    assert (realign.inputs.pe_direction, realign.inputs.m0_pe_direction) == ("j-", "j-")
    for flag in (["--no-sdc"], ["--ignore", "fieldmaps"]):
        assert "pepolar_field" not in _nodes(_build(root, tmp_path, *flag))
    sidecar = root / "sub-Sub1" / "fmap" / "sub-Sub1_dir-pa_m0scan.json"
    md = json.loads(sidecar.read_text())
    del md["TotalReadoutTime"]
    sidecar.write_text(json.dumps(md))
    with pytest.raises(ASLInputError) as err:
        _build(root, tmp_path)
    assert err.value.field == "TotalReadoutTime" and "dir-pa_m0scan" in err.value.file
    assert "pepolar_field" not in _nodes(_build(root, tmp_path, "--no-sdc"))


def test_phasediff_fieldmap_turns_sdc_on(tmp_path):
    """A phase-difference map in fmap/ (IntendedFor the run) gives the field-map branch."""
    import json

    from asl_pipeline.errors import ASLInputError
    from asl_pipeline.simulate import simulate_subject, write_subject

    root = tmp_path / "ds"
    sub = simulate_subject(
        5, n_pairs=2, shape=(24, 24, 8), voxel_size=(6.0, 6.0, 8.0), distortion=True,
        fieldmap="phasediff",
    )  # fmt: skip
    write_subject(root, "01", sub)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0"})
    )
    wf = _build(root, tmp_path)
    nodes = _nodes(wf)
    assert {"phasediff_field", "ds_fieldmap"} <= set(nodes)
    assert "pepolar_field" not in nodes
    assert nodes["phasediff_field"].inputs.frame == "m0"
    (files,) = [
        n.inputs for n in wf._get_all_nodes() if n.fullname.endswith("sdc_estimate_wf.inputnode")
    ]
    assert files.fieldmap_file.endswith("fmap/sub-01_phasediff.nii.gz")
    assert files.magnitude_file.endswith("fmap/sub-01_magnitude1.nii.gz")
    assert files.reference_file.endswith("perf/sub-01_m0scan.nii.gz")
    realign = nodes["asl_realign"]
    assert (realign.inputs.pe_direction, realign.inputs.fieldmap_frame) == ("j", "m0")
    assert nodes["ds_fieldmap"].inputs.sources == [
        "bids:raw:sub-01/fmap/sub-01_phasediff.nii.gz",
        "bids:raw:sub-01/fmap/sub-01_magnitude1.nii.gz",
        "bids:raw:sub-01/perf/sub-01_m0scan.nii.gz",
    ]
    for flag in (["--no-sdc"], ["--ignore", "fieldmaps"]):
        assert "phasediff_field" not in _nodes(_build(root, tmp_path, *flag))
    sidecar = root / "sub-01" / "fmap" / "sub-01_phasediff.json"
    md = json.loads(sidecar.read_text())
    del md["EchoTime1"]
    sidecar.write_text(json.dumps(md))
    with pytest.raises(ASLInputError) as err:
        _build(root, tmp_path)
    assert err.value.field == "EchoTime1" and err.value.file.endswith("sub-01_phasediff.nii.gz")
    assert "phasediff_field" not in _nodes(_build(root, tmp_path, "--no-sdc"))


def test_multi_pld_fit_reads_the_tissue_maps():
    """The GM mean curve's T1 needs the GM map at the fit node."""
    meta = {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": [0.5, 0.5, 1.0, 1.0, 2.0, 2.0],
        "LabelingDuration": 1.8,
        "M0Type": "Estimate",
        "M0Estimate": 1000.0,
        "BackgroundSuppression": False,
    }
    desc = describe_metadata(meta, ["control", "label"] * 3)
    wf = init_cbf_wf(description=desc, multi_pld=True, n_pairs=3, denoise=False)
    inputnode, fit = wf.get_node("inputnode"), wf.get_node("fit_multi_pld")
    connected = wf._graph.get_edge_data(inputnode, fit)["connect"]
    assert ("gm", "gm") in connected
