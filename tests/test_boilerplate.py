"""The methods text states the run's quantification constants with its own values."""

import json

import pytest

from asl_pipeline.boilerplate import quantification_text
from asl_pipeline.cli.workflow import methods_texts
from asl_pipeline.rundesc import describe_metadata
from asl_pipeline.subject_report import cite
from asl_pipeline.workflows.cbf import init_cbf_wf
from tests._bidsfactory import M0_SIDECAR, make_dataset
from tests.test_workflows import _build

PAIRS = ("control", "label") * 6


def _methods(bids, tmp_path, *options) -> str:
    texts = methods_texts(_build(bids, tmp_path, *options))
    assert len(texts) == 1, texts
    return next(iter(texts))


def test_pcasl_2d_background_suppression_separate_m0(tmp_path):
    bids = make_dataset(
        tmp_path / "bids",
        context=PAIRS,
        sidecar={
            "MRAcquisitionType": "2D",
            "SliceTiming": [0.0, 0.045, 0.09],
            "PostLabelingDelay": 1.5,
            "LabelingDuration": 1.65,
            "BackgroundSuppression": True,
            "BackgroundSuppressionNumberPulses": 2,
        },
    )
    m0_json = bids / "sub-01" / "perf" / "sub-01_m0scan.json"
    m0_json.write_text(json.dumps({**M0_SIDECAR, "RepetitionTimePreparation": 4.0}))
    text = _methods(bids, tmp_path)
    assert "pCASL, labeling duration 1.65 s, post-labeling delay (PLD) 1.5 s" in text
    assert "2D readout, slice timing corrected per slice" in text
    assert "SliceTiming, 3 slices, 0 to 0.09 s" in text
    # 0.85 x 0.95^2 = 0.767
    assert "labeling efficiency 0.85 (the white paper's value for pCASL) × 0.95^2" in text
    assert "2 background-suppression pulses" in text and "α = 0.767" in text
    assert "blood T1 1.65 s (at 3 T)" in text and "λ 0.9 mL/g" in text
    assert "separate M0 scan" in text
    assert "with TR 4 s and a tissue-weighted T1" in text
    assert "GM 1.6 s, WM 0.9 s, CSF 4 s at 3 T" in text
    # cited: the white paper is in the reference list
    _, refs = cite([text])
    assert any("Alsop DC" in r for r in refs)


def test_pcasl_3d_given_efficiency_single_t1_and_full_recovery(tmp_path):
    bids = make_dataset(
        tmp_path / "bids",
        context=PAIRS,
        sidecar={"LabelingEfficiency": 0.72, "MagneticFieldStrength": 1.5},
    )
    text = _methods(bids, tmp_path)
    assert "3D readout" in text and "2D readout" not in text
    assert "labeling efficiency 0.72 (LabelingEfficiency of the sidecar)" in text
    assert "background-suppression" not in text
    assert "blood T1 1.35 s (at 1.5 T)" in text
    # the factory's M0 scan has TR 6 s: the tissue-weighted correction applies at any
    # known TR; the spec's single-T1 rule takes it as fully recovered
    assert "with TR 6 s and a tissue-weighted T1" in text and "fully recovered" not in text
    single = _methods(bids, tmp_path, "--m0-recovery", "single")
    assert "repetition time of 6 s" in single and "fully recovered" in single

    m0_json = bids / "sub-01" / "perf" / "sub-01_m0scan.json"
    m0_json.write_text(json.dumps({**M0_SIDECAR, "RepetitionTimePreparation": 3.2}))
    text = _methods(bids, tmp_path, "--m0-recovery", "single", "--m0-scale", "10")
    assert "multiplied by 10" in text
    assert "with TR 3.2 s and a single tissue T1 of 1.2 s" in text


def test_multi_pld_states_every_delay_and_cites_buxton():
    meta = {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": [0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 0.0],
        "LabelingDuration": 1.8,
        "M0Type": "Included",
        "BackgroundSuppression": False,
        "MRAcquisitionType": "3D",
        "MagneticFieldStrength": 3,
        "RepetitionTimePreparation": 4.5,
    }
    vtypes = ["control", "label"] * 3 + ["m0scan"]
    desc = describe_metadata(meta, vtypes)
    wf = init_cbf_wf(description=desc, multi_pld=True, n_pairs=3, denoise=False)
    text = wf.__desc__
    assert "post-labeling delays (PLDs) 0.5, 1, 2 s" in text
    assert "a tissue T1 fitted, with CBF and ATT, to the mean curve of the GM voxels" in text
    fixed = init_cbf_wf(
        description=desc, multi_pld=True, n_pairs=3, denoise=False, t1_tissue_source="fixed"
    )
    assert "tissue T1 1.4 s (for the apparent T1 after arrival)" in fixed.__desc__
    assert "the mean of the 1 M0 volume included in the series" in text
    assert "with TR 4.5 s and a tissue-weighted T1" in text
    _, refs = cite([text])
    assert any("Buxton RB" in r for r in refs) and any("Alsop DC" in r for r in refs)


@pytest.mark.parametrize("labeling", ["PCASL", "PASL"])
def test_multi_pld_states_how_the_att_was_estimated(labeling):
    meta = {
        "ArterialSpinLabelingType": labeling,
        "PostLabelingDelay": [1.0, 1.0, 1.5, 1.5, 2.0, 2.0],
        "M0Type": "Estimate",
        "M0Estimate": 1.0,
        "BackgroundSuppression": False,
        "MRAcquisitionType": "3D",
        "MagneticFieldStrength": 3,
    }
    meta |= (
        {"LabelingDuration": 1.8}
        if labeling == "PCASL"
        else {"BolusCutOffFlag": True, "BolusCutOffTechnique": "Q2TIPS",
              "BolusCutOffDelayTime": [0.7, 1.6]}
    )  # fmt: skip
    desc = describe_metadata(meta, ["control", "label"] * 3)
    smoothed = "smoothed inside the brain (Gaussian, FWHM 2 voxels)"
    by_voxel = "estimated voxel by voxel"
    texts = {
        choice: init_cbf_wf(
            description=desc, multi_pld=True, n_pairs=3, denoise=False, att_estimate=choice
        ).__desc__
        for choice in ("auto", "voxel", "smoothed")
    }
    assert smoothed in texts["auto"]  # the default for every labeling
    assert by_voxel in texts["voxel"] and smoothed not in texts["voxel"]
    assert smoothed in texts["smoothed"]
    delays = "inversion times" if labeling == "PASL" else "post-labeling delays,"
    assert f"differences at all {delays}" in texts["smoothed"]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            {"BackgroundSuppression": True},
            "number of pulses not given: no efficiency loss applied",
        ),
        ({"M0Type": "Estimate", "M0Estimate": 120.0}, "M0Estimate = 120"),
    ],
)
def test_other_efficiency_and_m0_cases(extra, expected):
    meta = {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": 1.8,
        "LabelingDuration": 1.8,
        "M0Type": "Separate",
        "BackgroundSuppression": False,
        "MRAcquisitionType": "3D",
        "MagneticFieldStrength": 3,
        **extra,
    }
    desc = describe_metadata(meta, ["control", "label"] * 2)
    assert expected in quantification_text(desc)


def test_pasl_and_asltbx_m0():
    meta = {
        "ArterialSpinLabelingType": "PASL",
        "PostLabelingDelay": 1.8,
        "BolusCutOffFlag": True,
        "BolusCutOffTechnique": "QUIPSSII",
        "BolusCutOffDelayTime": 0.7,
        "M0Type": "Absent",
        "BackgroundSuppression": False,
        "MRAcquisitionType": "2D",
        "MagneticFieldStrength": 3,
        "RepetitionTimePreparation": 3.0,
    }
    desc = describe_metadata(meta, ["control", "label"] * 2)
    text = quantification_text(desc, quantification="asltbx", m0_scale=2.0)
    assert "PASL, QUIPSS II bolus cut-off, bolus duration TI1 0.7 s" in text
    assert "inversion time TI 1.8 s" in text
    assert "2D readout without SliceTiming" in text
    assert "labeling efficiency 0.98" in text
    assert "each pair's own control image" in text and "multiplied by 2" in text
    assert "with TR 3 s and a single tissue T1 of 1.4 s" in text


def test_asltbx_m0_gets_the_m0_scale_it_states(tmp_path):
    """With each pair's control image as M0, the CBF node computes the M0 itself:
    it must apply --m0-scale, as the methods text says."""
    from tests.test_workflows import _nodes

    bids = make_dataset(tmp_path / "bids", context=PAIRS)
    wf = _build(bids, tmp_path, "--quantification", "asltbx", "--m0-scale", "10")
    assert _nodes(wf)["compute_cbf"].inputs.m0_scale == 10
    text = next(iter(methods_texts(wf)))
    assert "each pair's own control image" in text and "multiplied by 10" in text


@pytest.mark.parametrize(
    ("m0_type", "reference"),
    [
        ("Included", "the gain of the M0 volumes of the series"),
        ("Separate", "the run's mean gain"),
    ],
)
def test_the_drift_correction_states_its_reference_gain(m0_type, reference):
    meta = {
        "ArterialSpinLabelingType": "PCASL",
        "PostLabelingDelay": 1.8,
        "LabelingDuration": 1.8,
        "M0Type": m0_type,
        "BackgroundSuppression": False,
        "MRAcquisitionType": "3D",
        "MagneticFieldStrength": 3,
        "RepetitionTimePreparation": 4.5,
    }
    vtypes = (["m0scan"] if m0_type == "Included" else []) + list(PAIRS)
    desc = describe_metadata(meta, vtypes)
    wf = init_cbf_wf(description=desc, n_pairs=6, denoise=False, drift_correction="trend")
    assert "quadratic trend of the brain-wide signal gain" in wf.__desc__
    assert f"scaled to {reference}." in wf.__desc__
    plain = init_cbf_wf(description=desc, n_pairs=6, denoise=False)
    assert "quadratic trend" not in plain.__desc__


def test_constants_given_on_the_command_line_are_stated_as_such(tmp_path):
    """``--blood-t1``, ``--partition-coefficient`` and ``--labeling-efficiency``
    reach every quantification node, and the methods text gives their values as
    set by the user (the efficiency still times the background-suppression factor)."""
    bids = make_dataset(
        tmp_path / "bids",
        context=PAIRS,
        sidecar={
            "LabelingEfficiency": 0.72,
            "BackgroundSuppression": True,
            "BackgroundSuppressionNumberPulses": 2,
        },
    )
    options = ("--blood-t1", "1.5", "--partition-coefficient", "0.98")
    options += ("--labeling-efficiency", "0.8")
    workflow = _build(bids, tmp_path, *options)
    text = next(iter(methods_texts(workflow)))
    # 0.8 x 0.95^2 = 0.722, over the sidecar's 0.72
    assert "labeling efficiency 0.8 (set by the user) × 0.95^2" in text and "α = 0.722" in text
    assert "blood T1 1.5 s (set by the user)" in text
    assert "λ 0.98 mL/g (set by the user)" in text
    cbf_wf = workflow.get_node("sub_01_wf.asl_sub_01_asl.cbf_wf")
    given = {"t1b": 1.5, "lam": 0.98, "labeling_efficiency": 0.8}
    assert cbf_wf.get_node("compute_cbf").inputs.quant_overrides == given
    # the M0 does not depend on them: its node (and its cache) is shared with a run
    # that keeps the defaults
    assert not cbf_wf.get_node("compute_m0").inputs.quant_overrides
