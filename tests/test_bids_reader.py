"""Reader behaviour on synthetic datasets: inheritance, selection, pairing,
per-volume fields and the M0 sources."""

from __future__ import annotations

import numpy as np
import pytest
from _bidsfactory import (
    BASE_SIDECAR,
    NX,
    NY,
    make_dataset,
    write_context,
    write_json,
    write_nifti,
)

from asl_pipeline.bids import collect_runs
from asl_pipeline.errors import ASLInputError


def _run_files(root, sub, *, ses=None, run=None, context=("control", "label") * 2, md=None):
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "perf"
    stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + (f"_run-{run}" if run else "")
    write_context(folder / f"{stem}_aslcontext.tsv", context)
    write_nifti(folder / f"{stem}_asl.nii.gz", (NX, NY, 3, len(context)))
    write_nifti(folder / f"{stem}_m0scan.nii.gz", (NX, NY, 3))
    write_json(folder / f"{stem}_m0scan.json", {"RepetitionTimePreparation": 5.0})
    if md is not None:
        write_json(folder / f"{stem}_asl.json", md)
    anat = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    write_nifti(anat / (f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_T1w.nii.gz"), (6, 6, 6))


def test_top_level_sidecar_is_inherited(tmp_path):
    write_json(tmp_path / "dataset_description.json", {"Name": "x", "BIDSVersion": "1.8.0"})
    shared = {**BASE_SIDECAR, "TotalAcquiredPairs": 2, "LabelingDuration": 1.5}
    write_json(tmp_path / "asl.json", shared)
    _run_files(tmp_path, "01")
    _run_files(tmp_path, "02", md={"PostLabelingDelay": 2.0})  # overrides one field
    runs = collect_runs(tmp_path)
    assert [r.subject for r in runs] == ["01", "02"]
    assert [r.labeling_duration for r in runs] == [1.5, 1.5]
    np.testing.assert_allclose(runs[0].plds, 1.8)
    np.testing.assert_allclose(runs[1].plds, 2.0)
    assert runs[1].sidecar_file == tmp_path / "sub-02" / "perf" / "sub-02_asl.json"


def test_participant_and_session_selection(tmp_path):
    write_json(tmp_path / "dataset_description.json", {"Name": "x", "BIDSVersion": "1.8.0"})
    write_json(tmp_path / "asl.json", {**BASE_SIDECAR, "TotalAcquiredPairs": 2})
    for sub in ("01", "02"):
        for ses in ("pre", "post"):
            _run_files(tmp_path, sub, ses=ses)
    assert len(collect_runs(tmp_path)) == 4
    runs = collect_runs(tmp_path, "sub-02", session="ses-post")
    assert [(r.subject, r.session) for r in runs] == [("02", "post")]
    assert runs[0].t1w_file.name == "sub-02_ses-post_T1w.nii.gz"
    runs = collect_runs(tmp_path, ["01", "sub-02"], session=["pre"])
    assert [(r.subject, r.session) for r in runs] == [("01", "pre"), ("02", "pre")]


def test_several_runs_get_their_own_m0(tmp_path):
    write_json(tmp_path / "dataset_description.json", {"Name": "x", "BIDSVersion": "1.8.0"})
    write_json(tmp_path / "asl.json", {**BASE_SIDECAR, "TotalAcquiredPairs": 2})
    _run_files(tmp_path, "01", run="1")
    _run_files(tmp_path, "01", run="2", context=("label", "control") * 2)
    runs = collect_runs(tmp_path)
    assert [r.run for r in runs] == ["1", "2"]
    assert [r.m0_file.name for r in runs] == ["sub-01_run-1_m0scan.nii.gz",
                                             "sub-01_run-2_m0scan.nii.gz"]  # fmt: skip
    assert [r.label_first for r in runs] == [False, True]


@pytest.mark.parametrize(
    ("context", "pairs", "label_first"),
    [
        (("control", "label", "control", "label"), [[0, 1], [2, 3]], False),
        (("label", "control", "label", "control"), [[1, 0], [3, 2]], True),
        (("label", "control", "control", "label"), [[1, 0], [2, 3]], None),
        (("m0scan", "noRF", "label", "control", "m0scan", "label", "control"),
         [[3, 2], [6, 5]], True),
    ],
    ids=["control-first", "label-first", "mixed", "with-m0-and-noRF"],
)  # fmt: skip
def test_pairing(tmp_path, context, pairs, label_first):
    root = make_dataset(tmp_path, context=context, sidecar={"TotalAcquiredPairs": len(pairs)})
    (run,) = collect_runs(root)
    np.testing.assert_array_equal(run.control_label_pairs, pairs)
    assert run.label_first is label_first
    assert run.m0_volumes == tuple(i for i, t in enumerate(context) if t == "m0scan")
    assert run.norf_volumes == tuple(i for i, t in enumerate(context) if t == "noRF")


def test_deltam_and_cbf_only_series(tmp_path):
    root = make_dataset(tmp_path / "a", context=("deltam",) * 3)
    (run,) = collect_runs(root)
    assert run.control_label_pairs.shape == (0, 2) and run.deltam_volumes == (0, 1, 2)
    assert run.pair_plds.size == 0 and run.perfusion_volumes == (0, 1, 2)
    root = make_dataset(tmp_path / "b", context=("cbf",), n_volumes=0)  # a 3D single map
    (run,) = collect_runs(root)
    assert run.cbf_volumes == (0,) and run.n_volumes == 1 and len(run.shape) == 3


def test_per_volume_pld_and_labeling_duration(tmp_path):
    context = ("m0scan",) + ("label", "control") * 3
    plds = [0.0, 1.0, 1.0, 1.5, 1.5, 2.0, 2.0]
    taus = [0.0, 1.8, 1.8, 1.8, 1.8, 1.8, 1.8]
    root = make_dataset(
        tmp_path,
        context=context,
        sidecar={"M0Type": "Included", "PostLabelingDelay": plds, "LabelingDuration": taus},
        m0=False,
    )
    (run,) = collect_runs(root)
    np.testing.assert_allclose(run.plds, plds)
    np.testing.assert_allclose(run.labeling_duration, taus)
    np.testing.assert_allclose(run.pair_plds, [1.0, 1.5, 2.0])
    assert run.is_multi_pld and run.m0_volumes == (0,)
    assert run.description.labeling.labeling_duration == 1.8


def test_labeling_duration_varying_between_pairs_is_refused(tmp_path):
    """The quantification takes one tau per run: validation refuses more, as it does."""
    context = ("label", "control") * 3
    taus = [1.8, 1.8, 1.6, 1.6, 1.4, 1.4]
    root = make_dataset(tmp_path, context=context, sidecar={"LabelingDuration": taus})
    with pytest.raises(ASLInputError) as err:
        collect_runs(root)
    assert err.value.field == "LabelingDuration" and "varies" in err.value.problem


def test_casl_default_efficiency_and_estimate_m0(tmp_path):
    root = make_dataset(
        tmp_path,
        sidecar={"ArterialSpinLabelingType": "CASL", "M0Type": "Estimate", "M0Estimate": 1234.5},
        m0=False,
    )
    (run,) = collect_runs(root)
    assert run.labeling_type == "CASL" and run.effective_labeling_efficiency == 0.68
    assert run.m0_type == "Estimate" and run.m0_estimate == 1234.5
    assert run.m0_file is None and run.m0_repetition_time is None


def test_absent_m0_without_background_suppression(tmp_path):
    root = make_dataset(tmp_path, sidecar={"M0Type": "absent"}, m0=False)
    (run,) = collect_runs(root)
    assert run.m0_type == "Absent"  # case normalised
    assert run.m0_repetition_time == 4.5  # the control images' own TR


def test_quipss2_pasl(tmp_path):
    md = {
        "ArterialSpinLabelingType": "PASL",
        "PostLabelingDelay": 1.8,
        "BolusCutOffFlag": True,
        "BolusCutOffTechnique": "QUIPSS II",
        "BolusCutOffDelayTime": 0.8,
    }
    root = make_dataset(tmp_path, sidecar=md, drop=("LabelingDuration",))
    (run,) = collect_runs(root)
    assert run.bolus_cutoff_technique == "QUIPSSII"
    assert run.bolus_cutoff_delay_time == (0.8,) and run.bolus_duration == 0.8
    assert run.effective_labeling_efficiency == 0.98


def test_t1w_optional(tmp_path):
    root = make_dataset(tmp_path, t1w=False)
    (run,) = collect_runs(root, require_t1w=False)
    assert run.t1w_file is None


def test_slice_timing_2d(tmp_path):
    times = [0.0, 0.05, 0.1, 0.15]
    root = make_dataset(tmp_path, nz=4, sidecar={"MRAcquisitionType": "2D", "SliceTiming": times})
    (run,) = collect_runs(root)
    np.testing.assert_allclose(run.slice_timing, times)
    assert run.shape == (NX, NY, 4, 6) and run.voxel_size == (3.0, 3.0, 4.0)


def test_requested_participant_without_asl_is_refused(tmp_path):
    from asl_pipeline.errors import ASLInputError

    root = make_dataset(tmp_path)
    write_nifti(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz", (6, 6, 6))
    assert [r.subject for r in collect_runs(root)] == ["01"]
    with pytest.raises(ASLInputError, match="02 have no ASL series") as info:
        collect_runs(root, ["01", "02"])
    assert info.value.field == "participant_label"


def test_fmap_m0_with_bids_uri(tmp_path):
    root = make_dataset(tmp_path)
    fmap = root / "sub-01" / "fmap"
    write_nifti(fmap / "sub-01_dir-PA_m0scan.nii.gz", (NX, NY, 3))
    write_json(
        fmap / "sub-01_dir-PA_m0scan.json",
        {"IntendedFor": ["bids::sub-01/perf/sub-01_m0scan.nii.gz"], "PhaseEncodingDirection": "j"},
    )
    write_nifti(fmap / "sub-01_dir-AP_m0scan.nii.gz", (NX, NY, 3))
    write_json(fmap / "sub-01_dir-AP_m0scan.json", {"IntendedFor": "perf/sub-99_asl.nii.gz"})
    (run,) = collect_runs(root)
    assert run.m0_file.name == "sub-01_m0scan.nii.gz"
    assert [p.name for p in run.m0_pepolar_files] == ["sub-01_dir-PA_m0scan.nii.gz"]


def test_pasl_zero_ti_is_named_by_volume(tmp_path):
    from asl_pipeline.errors import ASLInputError

    md = {
        "ArterialSpinLabelingType": "PASL",
        "M0Type": "Included",
        "PostLabelingDelay": [0.0, 1.0, 1.0, 0.0, 0.0],
        "BolusCutOffFlag": True,
        "BolusCutOffTechnique": "QUIPSSII",
        "BolusCutOffDelayTime": 0.7,
        "TotalAcquiredPairs": 2,
    }
    context = ("m0scan", "label", "control", "label", "control")
    root = make_dataset(tmp_path, context=context, sidecar=md, m0=False)
    with pytest.raises(ASLInputError, match="is 0.0 s for volume 3") as info:
        collect_runs(root)
    assert info.value.field == "PostLabelingDelay"
