"""The reader on the five real BIDS ASL example datasets (sidecars from
bids-examples, NIfTI images written here with the implied shapes)."""

from pathlib import Path

import numpy as np
import pytest
from _bidsfactory import copy_example, snapshot

from asl_pipeline.bids import collect_runs, describe
from asl_pipeline.kinetics import ALPHA_BS_PER_PULSE


@pytest.fixture(scope="module")
def examples(bids_examples_dir, tmp_path_factory):
    """Each example copied once and read once: name -> (root, run)."""
    out = {}
    base = tmp_path_factory.mktemp("examples")
    for name in ("asl001", "asl002", "asl003", "asl004", "asl005"):
        root = copy_example(bids_examples_dir / name, base / name)
        before = snapshot(root)
        runs = collect_runs(root)
        assert snapshot(root) == before, "the reader must not write into the dataset"
        assert len(runs) == 1
        out[name] = (root, runs[0])
    return out


def test_ge_deltam_with_included_m0(examples):
    root, run = examples["asl001"]
    assert run.subject == "Sub103" and run.session is None and run.run is None
    assert run.volume_types == ("m0scan", "deltam")
    assert run.n_volumes == 2 and run.shape == (4, 5, 3, 2)
    assert run.control_label_pairs.shape == (0, 2)
    assert run.deltam_volumes == (1,) and run.m0_volumes == (0,)
    assert run.m0_type == "Included" and run.m0_file is None
    assert run.labeling_type == "PCASL" and run.acquisition == "3D"
    np.testing.assert_allclose(run.plds, [2.025, 2.025])
    assert run.labeling_duration == pytest.approx(1.45)
    assert run.background_suppression and run.background_suppression_pulses == 4
    assert run.effective_labeling_efficiency == pytest.approx(0.85 * ALPHA_BS_PER_PULSE**4)
    # the ASL sidecar's RepetitionTimePreparation applies to the included M0
    assert run.m0_repetition_time == pytest.approx(4.886)
    assert run.slice_timing is None
    assert run.t1w_file == root / "sub-Sub103" / "anat" / "sub-Sub103_T1w.nii.gz"
    assert run.metadata["Manufacturer"] == "GE"


def test_philips_2d_control_first(examples):
    root, run = examples["asl002"]
    assert run.n_volumes == 70 and run.n_pairs == 35
    np.testing.assert_array_equal(run.control_label_pairs[:, 0], np.arange(0, 70, 2))
    np.testing.assert_array_equal(run.control_label_pairs[:, 1], np.arange(1, 70, 2))
    assert run.label_first is False
    assert run.acquisition == "2D"
    assert run.slice_timing.shape == (20,)
    assert run.slice_timing[1] == pytest.approx(0.0385)
    assert run.slice_timing[-1] == pytest.approx(0.7315)
    np.testing.assert_allclose(run.pair_plds, 2.0)
    assert not run.is_multi_pld
    assert run.labeling_duration == pytest.approx(1.8)
    assert run.m0_type == "Separate"
    assert run.m0_file == root / "sub-Sub103" / "perf" / "sub-Sub103_m0scan.nii.gz"
    assert run.m0_repetition_time == pytest.approx(9.0)
    assert run.m0_pepolar_files == ()
    assert run.background_suppression_pulses == 2
    assert run.total_acquired_pairs == 35
    assert run.warnings == ()


def test_siemens_pasl_q2tips_multi_ti(examples):
    _, run = examples["asl003"]
    assert run.labeling_type == "PASL"
    assert run.labeling_duration is None
    assert run.bolus_cutoff_flag is True
    assert run.bolus_cutoff_technique == "Q2TIPS"
    assert run.bolus_cutoff_delay_time == (0.7, 1.6)
    assert run.bolus_duration == pytest.approx(0.7)
    # label first: (control, label) = (1, 0), (3, 2), ...
    np.testing.assert_array_equal(run.control_label_pairs[:3], [[1, 0], [3, 2], [5, 4]])
    assert run.label_first is True
    np.testing.assert_allclose(run.pair_plds, np.arange(1, 11) * 0.3)
    assert run.is_multi_pld and run.unique_plds.size == 10
    assert run.m0_repetition_time == pytest.approx(6.0)
    assert run.effective_labeling_efficiency == pytest.approx(0.98 * 0.95**2)


def test_siemens_multi_pld_with_reverse_pe_m0(examples):
    root, run = examples["asl004"]
    assert run.n_volumes == 96 and run.n_pairs == 48 and run.label_first is True
    np.testing.assert_allclose(run.unique_plds, [0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    np.testing.assert_allclose(run.pair_plds, np.repeat([0.25, 0.5, 0.75, 1.0, 1.25, 1.5], 8))
    assert run.labeling_efficiency == pytest.approx(0.88)
    assert run.effective_labeling_efficiency == pytest.approx(0.88 * 0.95**2)
    assert run.labeling_duration == pytest.approx(1.4)
    assert run.slice_timing.shape == (24,) and run.shape[2] == 24
    perf = root / "sub-Sub1" / "perf"
    assert run.m0_file == perf / "sub-Sub1_m0scan.nii.gz"
    assert run.m0_pepolar_files == (root / "sub-Sub1" / "fmap" / "sub-Sub1_dir-pa_m0scan.nii.gz",)
    assert run.m0_repetition_time == pytest.approx(4.8)


def test_siemens_3d_grase(examples):
    _, run = examples["asl005"]
    assert run.n_volumes == 16 and run.n_pairs == 8 and run.label_first is False
    assert run.acquisition == "3D" and run.slice_timing is None
    assert run.m0_repetition_time == pytest.approx(4.95)
    assert run.background_suppression_pulses == 4
    assert run.field_strength == 3.0


def test_describe_names_what_matters(examples):
    text = describe(examples["asl004"][1])
    assert "sub-Sub1" in text and "PCASL" in text and "2D" in text
    assert "48 control/label pairs (label first)" in text
    assert "multi-delay" in text and "sub-Sub1_dir-pa_m0scan.nii.gz" in text
    text = describe(examples["asl003"][1])
    assert "TI:" in text and "Q2TIPS at 0.7, 1.6 s" in text
    text = describe(examples["asl001"][1])
    assert "1 deltam" in text and "1 m0scan" in text and "Included (volumes 0)" in text
    assert "from 3 acquired pairs" in text


def test_fmap_m0_used_when_perf_has_none(bids_examples_dir, tmp_path):
    """An M0 only in fmap/ whose IntendedFor names the series becomes the M0."""
    root = copy_example(bids_examples_dir / "asl004", tmp_path / "ds")
    perf = root / "sub-Sub1" / "perf"
    for name in ("sub-Sub1_m0scan.nii.gz", "sub-Sub1_m0scan.json"):
        (perf / name).unlink()
    fmap_json = root / "sub-Sub1" / "fmap" / "sub-Sub1_dir-pa_m0scan.json"
    fmap_json.write_text(
        fmap_json.read_text().replace("perf/sub-Sub1_m0scan.nii.gz", "perf/sub-Sub1_asl.nii.gz")
    )
    (run,) = collect_runs(root)
    assert run.m0_file == root / "sub-Sub1" / "fmap" / "sub-Sub1_dir-pa_m0scan.nii.gz"
    assert run.m0_pepolar_files == ()
    assert any("fmap" in w for w in run.warnings)


def test_path_is_accepted_as_str(examples):
    root, _ = examples["asl005"]
    (run,) = collect_runs(str(root), "sub-Sub103")
    assert isinstance(run.asl_file, Path) and run.subject == "Sub103"
