"""Bad input: every case raises an ASLInputError naming the file, the field and
the fix, the CLI exits 1 with one line on stderr, nothing is created and the
input is left untouched. Recoverable oddities are warnings, not errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _bidsfactory import (
    NX,
    NY,
    make_dataset,
    snapshot,
    write_context,
    write_json,
    write_nifti,
)

from asl_pipeline.bids import collect_runs, validate_dataset
from asl_pipeline.cli.run import main, validate
from asl_pipeline.errors import ASLInputError

PERF = "sub-01/perf"
ASL_JSON = f"{PERF}/sub-01_asl.json"
ASL_NII = f"{PERF}/sub-01_asl.nii.gz"
CONTEXT = f"{PERF}/sub-01_aslcontext.tsv"
M0_NII = f"{PERF}/sub-01_m0scan.nii.gz"
PASL = {"ArterialSpinLabelingType": "PASL"}


def _edit_json(rel, **changes):
    def edit(root: Path):
        path = root / rel
        md = json.loads(path.read_text())
        md.update(changes)
        path.write_text(json.dumps(md))

    return edit


def _write(rel, text):
    def edit(root: Path):
        (root / rel).write_text(text)

    return edit


def _inherit_bad_pld(root: Path):
    """The subject sidecar lacks PostLabelingDelay; a top-level asl.json has a bad one."""
    path = root / ASL_JSON
    md = json.loads(path.read_text())
    del md["PostLabelingDelay"]
    path.write_text(json.dumps(md))
    write_json(root / "asl.json", {"PostLabelingDelay": -2.0})


def _image(rel, shape, **kwargs):
    def edit(root: Path):
        write_nifti(root / rel, shape, **kwargs)

    return edit


def _remove_subject(root: Path):
    for path in sorted((root / "sub-01").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "sub-01").rmdir()


# id, make_dataset kwargs, extra edit, participant label, file (relative), field, fix words
CASES = [
    ("context-length", dict(n_volumes=5), None, None, CONTEXT, "volume_type",
     "one aslcontext row"),
    ("unknown-volume-type", dict(context=("control", "labl") * 3), None, None, CONTEXT,
     "volume_type", "use one of"),
    ("unpaired-count", dict(context=("control", "label", "control")), None, None, CONTEXT,
     "volume_type", "as many control as label"),
    ("unpaired-order", dict(context=("control", "control", "label", "label")), None, None,
     CONTEXT, "volume_type", "next to its control"),
    ("context-no-header", dict(), _write(CONTEXT, "type\ncontrol\nlabel\n"), None, CONTEXT,
     "volume_type", "header 'volume_type'"),
    ("context-missing", dict(context=None, n_volumes=6), None, None, CONTEXT, "volume_type",
     "add a TSV"),
    ("only-m0-volumes", dict(context=("m0scan", "m0scan"), sidecar={"M0Type": "Included"}),
     None, None, CONTEXT, "volume_type", "not only its M0"),
    ("pasl-without-bolus-cutoff", dict(sidecar=PASL, drop=("LabelingDuration",)), None, None,
     ASL_JSON, "BolusCutOffFlag", "BolusCutOffFlag"),
    ("q2tips-scalar-delay", dict(sidecar={**PASL, "BolusCutOffFlag": True,
     "BolusCutOffTechnique": "Q2TIPS", "BolusCutOffDelayTime": 0.7}), None, None, ASL_JSON,
     "BolusCutOffDelayTime", "[TI1, TI1s]"),
    ("pasl-unknown-technique", dict(sidecar={**PASL, "BolusCutOffFlag": True,
     "BolusCutOffTechnique": "QUIPS3", "BolusCutOffDelayTime": 0.7}), None, None, ASL_JSON,
     "BolusCutOffTechnique", "QUIPSSII"),
    ("absent-m0-with-bs", dict(sidecar={"M0Type": "Absent", "BackgroundSuppression": True},
     m0=False), None, None, ASL_JSON, "M0Type", "provide an M0"),
    ("separate-without-m0scan", dict(m0=False), None, None, ASL_JSON, "M0Type",
     "sub-01_m0scan.nii.gz"),
    ("included-without-m0-volumes", dict(sidecar={"M0Type": "Included"}), None, None, ASL_JSON,
     "M0Type", "'m0scan'"),
    ("estimate-without-value", dict(sidecar={"M0Type": "Estimate"}, m0=False), None, None,
     ASL_JSON, "M0Estimate", "M0Estimate"),
    ("m0type-missing", dict(drop=("M0Type",)), None, None, ASL_JSON, "M0Type", "Separate"),
    ("m0-other-grid", dict(m0_shape=(NX, NY, 4)), None, None, M0_NII, "image dimensions",
     "ASL grid"),
    ("pld-wrong-length", dict(sidecar={"PostLabelingDelay": [1.8] * 5}), None, None, ASL_JSON,
     "PostLabelingDelay", "one PostLabelingDelay per volume"),
    ("pld-negative", dict(sidecar={"PostLabelingDelay": -1.8}), None, None, ASL_JSON,
     "PostLabelingDelay", "positive"),
    ("pld-missing", dict(drop=("PostLabelingDelay",)), None, None, ASL_JSON, "PostLabelingDelay",
     "add \"PostLabelingDelay\""),
    ("pld-typo", dict(drop=("PostLabelingDelay",), sidecar={"PostLabellingDelay": 1.8}), None,
     None, ASL_JSON, "PostLabelingDelay", 'has "PostLabellingDelay": a misspelling'),
    ("inherited-field", dict(), _inherit_bad_pld, None, "asl.json", "PostLabelingDelay",
     "positive"),
    ("pld-one-per-pair", dict(sidecar={"PostLabelingDelay": [1.5, 1.8, 2.0]}), None, None,
     ASL_JSON, "PostLabelingDelay", "repeat each value for the control and the label"),
    ("pld-differs-in-pair", dict(sidecar={"PostLabelingDelay": [1.5, 1.8] * 3}), None, None,
     ASL_JSON, "PostLabelingDelay", "same delay"),
    ("labeling-duration-missing", dict(drop=("LabelingDuration",)), None, None, ASL_JSON,
     "LabelingDuration", "add \"LabelingDuration\""),
    ("non-numeric-value", dict(sidecar={"LabelingDuration": "1.8 s"}), None, None, ASL_JSON,
     "LabelingDuration", "plain JSON number"),
    ("non-numeric-field-strength", dict(sidecar={"MagneticFieldStrength": "3T"}), None, None,
     ASL_JSON, "MagneticFieldStrength", "plain JSON number"),
    ("non-boolean-bs", dict(sidecar={"BackgroundSuppression": "yes"}), None, None, ASL_JSON,
     "BackgroundSuppression", "true or false"),
    ("pld-ms", dict(sidecar={"PostLabelingDelay": 1800}), None, None, ASL_JSON,
     "PostLabelingDelay", "divided by 1000"),
    ("pld-zero", dict(sidecar={"PostLabelingDelay": 0}), None, None, ASL_JSON,
     "PostLabelingDelay", "positive number of seconds"),
    ("efficiency-percent", dict(sidecar={"LabelingEfficiency": 85}), None, None, ASL_JSON,
     "LabelingEfficiency", "0.85, not 85"),
    ("unknown-labeling-type", dict(sidecar={"ArterialSpinLabelingType": "FAIR"}), None, None,
     ASL_JSON, "ArterialSpinLabelingType", "PCASL, CASL, PASL"),
    ("unknown-acquisition-type", dict(sidecar={"MRAcquisitionType": "4D"}), None, None, ASL_JSON,
     "MRAcquisitionType", "\"2D\""),
    ("slice-timing-length", dict(sidecar={"MRAcquisitionType": "2D", "SliceTiming": [0, 0.1]}),
     None, None, ASL_JSON, "SliceTiming", "one acquisition time per slice"),
    ("missing-t1w", dict(t1w=False), None, None, "sub-01/anat", "T1w", "sub-01_T1w.nii.gz"),
    ("3d-image", dict(n_volumes=0), None, None, ASL_NII, "image dimensions", "4D NIfTI"),
    ("t1w-4d", dict(), _image("sub-01/anat/sub-01_T1w.nii.gz", (6, 6, 6, 2)), None,
     "sub-01/anat/sub-01_T1w.nii.gz", "image dimensions", "single 3D T1w"),
    ("nan-in-m0", dict(), _image(M0_NII, (NX, NY, 3), nan=True), None, M0_NII, "image data",
     "re-export"),
    ("nan-in-asl", dict(nan=True), None, None, ASL_NII, "image data", "re-export"),
    ("corrupt-nifti", dict(), _write(ASL_NII, "not a nifti"), None, ASL_NII, "image",
     "valid NIfTI"),
    ("invalid-json", dict(), _write(ASL_JSON, '{"PostLabelingDelay": 1.8,}'), None, ASL_JSON,
     "JSON syntax", "JSON syntax"),
    ("unknown-participant", dict(), None, "02", ".", "participant_label", "existing sub-"),
    ("empty-dataset", dict(), _remove_subject, None, ".", "perf/*_asl.nii.gz",
     "add the ASL NIfTI"),
    ("no-dataset-description", dict(), lambda r: (r / "dataset_description.json").unlink(), None,
     "dataset_description.json", "dataset_description.json", "BIDSVersion"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "edit", "label", "rel", "field", "fix"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_input(tmp_path, capsys, monkeypatch, kwargs, edit, label, rel, field, fix):
    root = make_dataset(tmp_path / "ds", **kwargs)
    if edit is not None:
        edit(root)
    before = snapshot(root)

    # Run the CLI once (indexing with pybids is the slow part) and catch the
    # reader's error on its way to the command line.
    raised = []

    def spy(config):
        runs, problems = validate(config)
        raised.extend(problems)  # reader, pre-flight and weights problems
        return runs, problems

    monkeypatch.setattr("asl_pipeline.cli.run.validate", spy)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(root), str(out), "participant", "-w", str(work), "--no-denoise"]
    if label:
        argv += ["--participant-label", label]
    capsys.readouterr()
    assert main(argv) == 1
    stderr = capsys.readouterr().err

    (err,) = raised
    expected_file = (root / rel).resolve()
    assert Path(err.file) == expected_file, str(err)
    assert err.field == field
    assert fix in err.fix, err.fix
    message = str(err)
    assert str(expected_file) in message and field in message and "Fix:" in message

    assert stderr == f"asl-pipeline: error: {' '.join(message.split())}\n"
    assert not out.exists() and not work.exists()
    assert snapshot(root) == before


def test_at_least_twenty_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 20


# ---- warnings: recoverable oddities are recorded, never fatal ---------------


def _one(root, **kwargs):
    (run,) = collect_runs(root, **kwargs)
    return run


def test_repetition_time_zero_is_unknown_not_a_divisor(tmp_path):
    root = make_dataset(tmp_path)
    write_json(root / PERF / "sub-01_m0scan.json", {"RepetitionTimePreparation": 0})
    run = _one(root)
    assert run.m0_repetition_time is None
    assert any("RepetitionTimePreparation is 0" in w for w in run.warnings)


def test_repetition_time_missing_is_unknown(tmp_path):
    root = make_dataset(tmp_path)
    write_json(root / PERF / "sub-01_m0scan.json", {})
    run = _one(root)
    assert run.m0_repetition_time is None
    assert any("repetition time unknown" in w for w in run.warnings)


def test_included_m0_repetition_time_from_per_volume_list(tmp_path):
    context = ("m0scan", "control", "label", "control", "label")
    tr = [10.0, 4.0, 4.0, 4.0, 4.0]
    root = make_dataset(
        tmp_path,
        context=context,
        sidecar={"M0Type": "Included", "RepetitionTimePreparation": tr, "TotalAcquiredPairs": 2},
        m0=False,
    )
    run = _one(root)
    assert run.m0_repetition_time == 10.0 and run.m0_volumes == (0,)
    np.testing.assert_array_equal(run.control_label_pairs, [[1, 2], [3, 4]])
    assert run.warnings == ()


def test_2d_without_slice_timing_warns(tmp_path):
    root = make_dataset(tmp_path, sidecar={"MRAcquisitionType": "2D"})
    run = _one(root)
    assert run.slice_timing is None and run.acquisition == "2D"
    assert any("without SliceTiming" in w for w in run.warnings)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(drop=("MagneticFieldStrength",)), "3 T assumed"),
        (dict(sidecar={"TotalAcquiredPairs": 4}), "TotalAcquiredPairs is 4"),
        (dict(sidecar={"BackgroundSuppression": True}), "not corrected for background"),
        (dict(drop=("BackgroundSuppression",)), "BackgroundSuppression missing"),
        (dict(sidecar={"SliceTiming": [0, 0.1, 0.2]}), "ignored for a 3D"),
        (dict(drop=("MRAcquisitionType",)), "MRAcquisitionType missing: 3D assumed"),
        (
            dict(context=("m0scan",) + ("control", "label") * 3),
            "m0scan volume(s) in the series are ignored",
        ),
    ],
    ids=["no-field", "pairs-count", "bs-pulses", "bs-missing", "3d-slicetiming", "no-acq",
         "m0-volumes-ignored"],
)  # fmt: skip
def test_recoverable_oddities_warn(tmp_path, kwargs, expected):
    run = _one(make_dataset(tmp_path, **kwargs))
    assert any(expected in w for w in run.warnings), run.warnings


def test_defaults_behind_the_warnings(tmp_path):
    run = _one(make_dataset(tmp_path, drop=("MagneticFieldStrength", "BackgroundSuppression")))
    assert run.field_strength == 3.0 and run.background_suppression is False
    assert run.background_suppression_pulses == 0


def test_m0_with_other_affine_warns(tmp_path):
    root = make_dataset(tmp_path)
    write_nifti(root / M0_NII, (NX, NY, 3), affine=np.diag([3.0, 3.0, 4.5, 1.0]))
    run = _one(root)
    assert any("different affines" in w for w in run.warnings)
    # what the warning promises: the realignment runs (it used to stop there)
    import nibabel as nb

    from asl_pipeline.interfaces.motion import ASLRealign

    res = ASLRealign(
        asl_file=str(run.asl_file), aslcontext=str(run.aslcontext_file), m0_file=str(run.m0_file)
    ).run(cwd=str(tmp_path))
    m0 = nb.load(res.outputs.m0_corrected)
    assert np.allclose(m0.affine, nb.load(run.asl_file).affine)
    assert m0.shape[:3] == (NX, NY, 3)


def test_volume_type_case_is_tolerated(tmp_path):
    root = make_dataset(tmp_path)
    write_context(root / CONTEXT, ("Control", "label") * 3)
    run = _one(root)
    assert run.volume_types == ("control", "label") * 3
    assert any("'Control' read as 'control'" in w for w in run.warnings)


def test_cli_validates_with_warnings_and_exit_zero(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", sidecar={"MRAcquisitionType": "2D"})
    out = tmp_path / "out"
    # the BIDS validator refuses 2D ASL without SliceTiming (test_cli tests that);
    # the pipeline's reader accepts it with a warning
    argv = [str(root), str(out), "participant", "--validate-only", "--skip-bids-validation"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "WARNING: 2D acquisition without SliceTiming" in stdout
    assert "1 ASL run(s) valid, 1 warning(s)." in stdout
    assert not out.exists()


def test_several_t1w_warn_and_first_is_used(tmp_path):
    root = make_dataset(tmp_path)
    write_nifti(root / "sub-01" / "anat" / "sub-01_run-2_T1w.nii.gz", (6, 6, 6))
    run = _one(root)
    assert run.t1w_file.name == "sub-01_T1w.nii.gz"
    assert any("several T1w images" in w for w in run.warnings)


def test_run_arrays_are_read_only(tmp_path):
    run = _one(make_dataset(tmp_path, sidecar={"PostLabelingDelay": [1.8] * 6}))
    with pytest.raises(ValueError):
        run.plds[0] = 0.0
    with pytest.raises(ValueError):
        run.control_label_pairs[0, 0] = 1


def test_every_invalid_run_is_reported_at_once(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", subject="01")
    make_dataset(root, subject="02", drop=("M0Type",))
    make_dataset(root, subject="03", n_volumes=5)
    runs, errors = validate_dataset(root)
    assert [r.subject for r in runs] == ["01"]
    assert [e.field for e in errors] == ["M0Type", "volume_type"]
    assert "sub-02_asl.json" in errors[0].file and "sub-03_aslcontext.tsv" in errors[1].file
    with pytest.raises(ASLInputError, match="M0Type"):
        collect_runs(root)
    assert main([str(root), str(tmp_path / "o"), "participant", "--validate-only"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 2 and all(x.startswith("asl-pipeline: error: ") for x in lines)
    assert "sub-01:" not in captured.out  # no partial report, nothing processed
