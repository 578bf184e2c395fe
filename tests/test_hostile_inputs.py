"""Malformed and hostile inputs: a clear error, nothing written, input untouched.

Every case builds a small BIDS dataset in ``tmp_path`` (``_bidsfactory``),
breaks one thing, hashes the input tree, runs the command-line entry point in
the same process and asserts: a non-zero exit status, one stderr line naming
the file, the field and the fix, no output or work folder, and the input tree
byte for byte unchanged. Most cases use ``--validate-only`` (the same checks
run before any work); :data:`FULL_RUN` repeats some without it to prove that
the processing path writes nothing either.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import torch

from asl_pipeline.cli.run import main
from asl_pipeline.models import DWAN, save_model
from tests._bidsfactory import NX, NY, make_dataset, snapshot, write_json

PERF = "sub-01/perf"
ASL_JSON = f"{PERF}/sub-01_asl.json"
ASL_NII = f"{PERF}/sub-01_asl.nii.gz"
CONTEXT = f"{PERF}/sub-01_aslcontext.tsv"
M0_NII = f"{PERF}/sub-01_m0scan.nii.gz"
M0_JSON = f"{PERF}/sub-01_m0scan.json"
T1W = "sub-01/anat/sub-01_T1w.nii.gz"
DESCRIPTION = "dataset_description.json"
ASL_SHAPE = (NX, NY, 3, 6)
PASL = {
    "ArterialSpinLabelingType": "PASL",
    "BolusCutOffFlag": True,
    "BolusCutOffTechnique": "QUIPSSII",
    "BolusCutOffDelayTime": 0.7,
    "PostLabelingDelay": 1.8,
}


# ---------------------------------------------------------------- editors


def _text(rel, text):
    def edit(root: Path):
        (root / rel).write_text(text)

    return edit


def _bytes(rel, data: bytes):
    def edit(root: Path):
        (root / rel).write_bytes(data)

    return edit


def _json(rel, **changes):
    def edit(root: Path):
        path = root / rel
        md = json.loads(path.read_text())
        md.update(changes)
        path.write_text(json.dumps(md))

    return edit


def _symlink(rel, target):
    def edit(root: Path):
        (root / rel).unlink()
        os.symlink(target, root / rel)

    return edit


def _fifo(rel):
    def edit(root: Path):
        (root / rel).unlink()
        os.mkfifo(root / rel)

    return edit


def _save(root: Path, rel, data, *, zooms=None, slope=None):
    img = nb.Nifti1Image(data, np.diag([3.0, 3.0, 4.0, 1.0]))
    if zooms is not None:
        img.header.set_zooms(zooms)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nb.save(img, str(root / rel))


def _image(rel, make, **kwargs):
    def edit(root: Path):
        _save(root, rel, make(), **kwargs)

    return edit


def _truncate(rel, fraction):
    def edit(root: Path):
        path = root / rel
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return edit


def _flip_middle(rel):
    def edit(root: Path):
        path = root / rel
        data = bytearray(path.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 16):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))

    return edit


def _dims(rel, dims):
    """Rewrite the header's ``dim`` (a size the data does not have)."""

    def edit(root: Path):
        path = root / rel
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[40:56] = struct.pack("<8h", len(dims), *dims, *[1] * (7 - len(dims)))
        path.write_bytes(gzip.compress(bytes(raw)))

    return edit


def _uncompressed_truncated(root: Path):
    """The ASL series as an uncompressed .nii, cut short."""
    src = root / ASL_NII
    img = nb.load(str(src))
    dst = src.with_name("sub-01_asl.nii")
    nb.save(nb.Nifti1Image(np.asanyarray(img.dataobj), img.affine), str(dst))
    src.unlink()
    dst.write_bytes(dst.read_bytes()[:-200])


def _both(*edits):
    def edit(root: Path):
        for e in edits:
            e(root)

    return edit


def _rand(shape, seed=0):
    return (100 + 10 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _with(shape, index, value):
    def make():
        data = _rand(shape)
        data[index] = value
        return data

    return make


def _remove(rel):
    def edit(root: Path):
        (root / rel).unlink()

    return edit


# ------------------------------------------------------------------ cases
# (id, make_dataset kwargs, edit, file named (relative), field named, extra argv)

CASES = [
    # sidecars: shape, size and nesting of the JSON itself
    ("json-array", {}, _text(ASL_JSON, "[1, 2, 3]"), ASL_JSON, "JSON object"),
    ("json-string", {}, _text(ASL_JSON, '"PCASL"'), ASL_JSON, "JSON object"),
    ("json-number", {}, _text(ASL_JSON, "42"), ASL_JSON, "JSON object"),
    ("json-null", {}, _text(ASL_JSON, "null"), ASL_JSON, "JSON object"),
    ("json-deep-200k", {}, _text(ASL_JSON, '{"a": ' + "[" * 200_000 + "]" * 200_000 + "}"),
     ASL_JSON, "JSON nesting"),
    ("json-deep-40", {}, _text(ASL_JSON, '{"a": ' + "[" * 40 + "]" * 40 + "}"), ASL_JSON,
     "JSON nesting"),
    ("json-dev-zero", {}, _symlink(ASL_JSON, "/dev/zero"), ASL_JSON, "file"),
    ("json-fifo", {}, _fifo(ASL_JSON), ASL_JSON, "file"),
    ("json-broken-link", {}, _symlink(ASL_JSON, "/nonexistent/x.json"), ASL_JSON, "file"),
    ("json-2mib", {}, _text(ASL_JSON, json.dumps({"Pad": "x" * (2 << 20)})), ASL_JSON,
     "file size"),
    ("json-not-utf8", {}, _bytes(ASL_JSON, b'{"M0Type": "\xff\xfe"}'), ASL_JSON, "JSON syntax"),
    ("json-trailing-comma", {}, _text(ASL_JSON, '{"M0Type": "Separate",}'), ASL_JSON,
     "JSON syntax"),
    ("json-empty", {}, _text(ASL_JSON, ""), ASL_JSON, "JSON syntax"),
    ("m0-json-array", {}, _text(M0_JSON, "[]"), M0_JSON, "JSON object"),
    ("description-array", {}, _text(DESCRIPTION, "[]"), DESCRIPTION, "JSON object"),
    # physically impossible or malformed parameters
    ("pld-zero", {"sidecar": {"PostLabelingDelay": 0}}, None, ASL_JSON, "PostLabelingDelay"),
    ("pld-ms", {"sidecar": {"PostLabelingDelay": 1800}}, None, ASL_JSON, "PostLabelingDelay"),
    ("pld-negative", {"sidecar": {"PostLabelingDelay": -1.8}}, None, ASL_JSON,
     "PostLabelingDelay"),
    ("pld-10.5", {"sidecar": {"PostLabelingDelay": 10.5}}, None, ASL_JSON, "PostLabelingDelay"),
    ("pld-nan", {}, _text(ASL_JSON, '{"ArterialSpinLabelingType": "PCASL", '
                                    '"PostLabelingDelay": NaN}'), ASL_JSON, "PostLabelingDelay"),
    ("pld-infinity", {}, _text(ASL_JSON, '{"ArterialSpinLabelingType": "PCASL", '
                                         '"PostLabelingDelay": Infinity}'),
     ASL_JSON, "PostLabelingDelay"),
    ("pld-string", {"sidecar": {"PostLabelingDelay": "1.8"}}, None, ASL_JSON,
     "PostLabelingDelay"),
    ("pld-boolean", {"sidecar": {"PostLabelingDelay": True}}, None, ASL_JSON,
     "PostLabelingDelay"),
    ("pld-list-length", {"sidecar": {"PostLabelingDelay": [1.8, 1.8]}}, None, ASL_JSON,
     "PostLabelingDelay"),
    ("pld-list-ms", {"sidecar": {"PostLabelingDelay": [1.8] * 5 + [1800]}}, None, ASL_JSON,
     "PostLabelingDelay"),
    ("pld-missing", {"drop": ("PostLabelingDelay",)}, None, ASL_JSON, "PostLabelingDelay"),
    ("tau-zero", {"sidecar": {"LabelingDuration": 0}}, None, ASL_JSON, "LabelingDuration"),
    ("tau-ms", {"sidecar": {"LabelingDuration": 1800}}, None, ASL_JSON, "LabelingDuration"),
    ("tau-missing", {"drop": ("LabelingDuration",)}, None, ASL_JSON, "LabelingDuration"),
    ("efficiency-zero", {"sidecar": {"LabelingEfficiency": 0}}, None, ASL_JSON,
     "LabelingEfficiency"),
    ("efficiency-1.5", {"sidecar": {"LabelingEfficiency": 1.5}}, None, ASL_JSON,
     "LabelingEfficiency"),
    ("efficiency-percent", {"sidecar": {"LabelingEfficiency": 85}}, None, ASL_JSON,
     "LabelingEfficiency"),
    ("efficiency-negative", {"sidecar": {"LabelingEfficiency": -0.5}}, None, ASL_JSON,
     "LabelingEfficiency"),
    ("pasl-ti-zero", {"sidecar": {**PASL, "PostLabelingDelay": 0}, "drop": ("LabelingDuration",)},
     None, ASL_JSON, "PostLabelingDelay"),
    ("pasl-ti-ms", {"sidecar": {**PASL, "PostLabelingDelay": 1800},
                    "drop": ("LabelingDuration",)}, None, ASL_JSON, "PostLabelingDelay"),
    ("pasl-ti1-zero", {"sidecar": {**PASL, "BolusCutOffDelayTime": 0},
                       "drop": ("LabelingDuration",)}, None, ASL_JSON, "BolusCutOffDelayTime"),
    ("pasl-ti1-ms", {"sidecar": {**PASL, "BolusCutOffDelayTime": 700},
                     "drop": ("LabelingDuration",)}, None, ASL_JSON, "BolusCutOffDelayTime"),
    ("q2tips-reversed", {"sidecar": {**PASL, "BolusCutOffTechnique": "Q2TIPS",
                                     "BolusCutOffDelayTime": [1.6, 0.7]},
                         "drop": ("LabelingDuration",)}, None, ASL_JSON, "BolusCutOffDelayTime"),
    ("pasl-no-cutoff", {"sidecar": {**PASL, "BolusCutOffFlag": False},
                        "drop": ("LabelingDuration",)}, None, ASL_JSON, "BolusCutOffFlag"),
    ("m0type-missing", {"drop": ("M0Type",)}, None, ASL_JSON, "M0Type"),
    ("m0type-unknown", {"sidecar": {"M0Type": "Both"}}, None, ASL_JSON, "M0Type"),
    ("labeling-missing", {"drop": ("ArterialSpinLabelingType",)}, None, ASL_JSON,
     "ArterialSpinLabelingType"),
    ("labeling-unknown", {"sidecar": {"ArterialSpinLabelingType": "FAIR"}}, None, ASL_JSON,
     "ArterialSpinLabelingType"),
    ("field-strength-text", {"sidecar": {"MagneticFieldStrength": "3T"}}, None, ASL_JSON,
     "MagneticFieldStrength"),
    ("field-strength-negative", {"sidecar": {"MagneticFieldStrength": -3}}, None, ASL_JSON,
     "MagneticFieldStrength"),
    ("background-yes", {"sidecar": {"BackgroundSuppression": "yes"}}, None, ASL_JSON,
     "BackgroundSuppression"),
    ("slice-timing-length", {"sidecar": {"MRAcquisitionType": "2D", "SliceTiming": [0, 0.1]}},
     None, ASL_JSON, "SliceTiming"),
    ("slice-encoding-axis", {"sidecar": {"MRAcquisitionType": "2D", "SliceTiming": [0, 0.1, 0.2],
                                         "SliceEncodingDirection": "j"}},
     None, ASL_JSON, "SliceEncodingDirection"),
    ("slice-encoding-unknown", {"sidecar": {"MRAcquisitionType": "2D",
                                            "SliceTiming": [0, 0.1, 0.2],
                                            "SliceEncodingDirection": "z"}},
     None, ASL_JSON, "SliceEncodingDirection"),
    ("pairs-fraction", {"sidecar": {"TotalAcquiredPairs": 2.5}}, None, ASL_JSON,
     "TotalAcquiredPairs"),
    ("m0-estimate-missing", {"sidecar": {"M0Type": "Estimate"}, "m0": False}, None, ASL_JSON,
     "M0Estimate"),
    # aslcontext
    ("context-missing", {"context": None, "n_volumes": 6}, None, CONTEXT, "volume_type"),
    ("context-unknown-type", {"context": ("control", "tag") * 3}, None, CONTEXT, "volume_type"),
    ("context-no-header", {}, _text(CONTEXT, "control\nlabel\n"), CONTEXT, "volume_type"),
    ("context-row-count", {"n_volumes": 4}, None, CONTEXT, "volume_type"),
    ("context-unpaired", {"context": ("control", "control", "label", "label", "control",
                                      "label")}, None, CONTEXT, "volume_type"),
    ("context-only-m0", {"context": ("m0scan",) * 6}, None, CONTEXT, "volume_type"),
    ("context-binary", {}, _bytes(CONTEXT, b"\xff\xfe\x00\x01" * 10), CONTEXT, "volume_type"),
    # images: unreadable, truncated, absurd headers
    ("asl-single-slice", {"nz": 1}, None, ASL_NII, "image dimensions"),
    ("asl-garbage", {}, _text(ASL_NII, "not a nifti"), ASL_NII, "image"),
    ("asl-empty-file", {}, _bytes(ASL_NII, b""), ASL_NII, "image"),
    ("asl-truncated-gz", {}, _truncate(ASL_NII, 0.6), ASL_NII, "image data"),
    ("asl-corrupt-gz", {}, _flip_middle(ASL_NII), ASL_NII, "image data"),
    ("asl-truncated-nii", {}, _uncompressed_truncated, f"{PERF}/sub-01_asl.nii", "image data"),
    ("asl-8000x8000x20", {}, _dims(ASL_NII, (8000, 8000, 20, 6)), ASL_NII, "dim"),
    ("asl-volumes-30000", {"context": ("control", "label") * 15_000},
     _dims(ASL_NII, (NX, NY, 3, 30_000)), ASL_NII, "dim"),
    ("asl-over-mem-gb", {"sidecar": {"M0Type": "Estimate", "M0Estimate": 1000}, "m0": False},
     _dims(ASL_NII, (1000, 1000, 500, 6)), ASL_NII, "dim",
     ("--mem-gb", "4")),
    ("asl-voxel-1000mm", {}, _image(ASL_NII, lambda: _rand(ASL_SHAPE),
                                    zooms=(1000.0, 3.0, 4.0, 1.0)), ASL_NII, "pixdim"),
    ("asl-5d", {}, _image(ASL_NII, lambda: _rand(ASL_SHAPE + (2,))), ASL_NII,
     "image dimensions"),
    ("asl-3d-many-rows", {"n_volumes": 0}, None, ASL_NII, "image dimensions"),
    ("m0-truncated-gz", {}, _truncate(M0_NII, 0.6), M0_NII, "image"),
    ("m0-garbage", {}, _text(M0_NII, "garbage"), M0_NII, "image"),
    ("m0-grid-mismatch", {"m0_shape": (NX + 1, NY, 3)}, None, M0_NII, "image dimensions"),
    ("m0-missing", {"m0": False}, None, ASL_JSON, "M0Type"),
    ("t1w-truncated-gz", {}, _truncate(T1W, 0.6), T1W, "image"),
    ("t1w-4d", {}, _image(T1W, lambda: _rand((6, 6, 6, 2))), T1W, "image dimensions"),
    ("t1w-missing", {"t1w": False}, None, "sub-01/anat", "T1w"),
    # images: values that carry no signal or overflow
    ("asl-all-zero", {}, _image(ASL_NII, lambda: np.zeros(ASL_SHAPE, np.float32)), ASL_NII,
     "image data"),
    ("asl-constant", {}, _image(ASL_NII, lambda: np.full(ASL_SHAPE, 7, np.int16)), ASL_NII,
     "image data"),
    ("asl-nan", {"nan": True}, None, ASL_NII, "image data"),
    ("asl-inf", {}, _image(ASL_NII, _with(ASL_SHAPE, (0, 0, 0, 2), np.inf)), ASL_NII,
     "image data"),
    ("asl-scl-slope-overflow", {}, _image(ASL_NII, lambda: np.full(ASL_SHAPE, 30000, np.int16)
                                          - np.arange(6, dtype=np.int16), slope=1e38),
     ASL_NII, "scl_slope"),
    ("m0-all-zero", {}, _image(M0_NII, lambda: np.zeros((NX, NY, 3), np.float32)), M0_NII,
     "image data"),
    ("m0-inf", {}, _image(M0_NII, _with((NX, NY, 3), (1, 1, 1), -np.inf)), M0_NII,
     "image data"),
    ("t1w-all-zero", {}, _image(T1W, lambda: np.zeros((6, 6, 6), np.float32)), T1W,
     "image data"),
    ("t1w-nan", {}, _image(T1W, _with((6, 6, 6), (2, 2, 2), np.nan)), T1W, "image data"),
    # dataset level
    ("no-description", {}, _remove(DESCRIPTION), DESCRIPTION, "dataset_description.json"),
    ("unknown-participant", {}, None, ".", "participant_label", ("--participant-label", "02")),
    ("no-asl-series", {}, _both(_remove(ASL_NII), _remove(ASL_JSON), _remove(CONTEXT)), ".",
     "perf/*_asl.nii.gz"),
]  # fmt: skip

IDS = [c[0] for c in CASES]


def _case(case_id):
    case = CASES[IDS.index(case_id)]
    return case[1], case[2], case[3], case[4], (case[5] if len(case) > 5 else ())


def _run(tmp_path, capsys, case_id, *mode):
    kwargs, edit, rel, field, extra = _case(case_id)
    root = make_dataset(tmp_path / "ds", **kwargs)
    if edit is not None:
        edit(root)
    before = snapshot(root)
    out, work = tmp_path / "out", tmp_path / "work"
    capsys.readouterr()
    code = main([str(root), str(out), "participant", "-w", str(work), *mode, *extra])
    stderr = capsys.readouterr().err
    assert code != 0, stderr
    expected = str(root.resolve() / rel) if rel != "." else str(root.resolve())
    lines = [ln for ln in stderr.splitlines() if ln.startswith("asl-pipeline: error: ")]
    assert any(f"{expected}: field '{field}'" in ln and " Fix: " in ln for ln in lines), (
        f"no line names {expected}, field {field!r} and a fix:\n{stderr}"
    )
    assert "Traceback" not in stderr
    assert not out.exists() and not work.exists()
    assert snapshot(root) == before
    return lines


def test_at_least_sixty_hostile_cases():
    assert len(set(IDS)) == len(IDS) >= 60


@pytest.mark.parametrize("case_id", IDS)
def test_hostile_input_validate_only(tmp_path, capsys, case_id):
    _run(tmp_path, capsys, case_id, "--validate-only")


FULL_RUN = ["asl-all-zero", "pld-ms", "asl-truncated-gz", "asl-8000x8000x20", "json-deep-200k",
            "m0-truncated-gz"]  # fmt: skip


@pytest.mark.parametrize("case_id", FULL_RUN)
def test_hostile_input_full_run_writes_nothing(tmp_path, capsys, case_id, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("processing started on invalid input")

    monkeypatch.setattr("asl_pipeline.cli.workflow.run_workflow", never)
    _run(tmp_path, capsys, case_id)


# -------------------------------------------------------- weights and output paths


def _weights(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "w.pt"
    save_model(DWAN(width=4, expansion=1, depth=1, global_dilations=(2,)), path)
    if changes:
        payload = torch.load(path, weights_only=True)
        payload.update(changes)
        torch.save(payload, path)
    return path


class _Code:  # pickled as a global: refused by weights_only=True
    pass


def _bad_weights(folder: Path, name: str) -> Path:
    if name == "config-negative-width":
        return _weights(folder, config={"width": -1})
    if name == "config-huge":
        return _weights(folder, config={"width": 10**9, "expansion": 10**6})
    if name == "config-list":
        return _weights(folder, config=[1])
    if name == "config-unknown-arch":
        return _weights(folder, arch="gpt")
    path = folder / "w.pt"
    if name == "pickled-code":
        torch.save({"x": _Code()}, path)
    elif name == "truncated":
        path.write_bytes(_weights(folder).read_bytes()[:5000])
    else:  # zeros, not a zip archive
        path.write_bytes(b"\x00" * 400)
    return path


WEIGHTS = ["config-negative-width", "config-huge", "config-list", "config-unknown-arch",
           "pickled-code", "truncated", "zeros"]  # fmt: skip


@pytest.mark.parametrize("name", WEIGHTS)
def test_bad_weights_refused_before_work(tmp_path, capsys, name):
    (tmp_path / "weights").mkdir()
    path = _bad_weights(tmp_path / "weights", name)
    root = make_dataset(tmp_path / "ds")
    before = snapshot(root)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(root), str(out), "participant", "-w", str(work), "--denoise", "--dwan-weights"]
    argv.append(str(path))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{path}: field '" in err and " Fix: " in err, err
    assert "weights_only=False" not in err and "Traceback" not in err
    assert not out.exists() and not work.exists()
    assert snapshot(root) == before


# -------------------------------------------------------------- one pass, loops


def test_all_problems_of_a_dataset_in_one_pass(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    make_dataset(root, subject="02", sidecar={"PostLabelingDelay": 0})
    _save(root, M0_NII, np.zeros((NX, NY, 3), np.float32))
    _image(T1W, _with((6, 6, 6), (2, 2, 2), np.nan))(root)
    write_json(root / "sub-03" / "anat" / "x.json", {})  # a valid extra file
    before = snapshot(root)
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "--validate-only"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines
    named = " ".join(lines)
    assert "sub-02_asl.json: field 'PostLabelingDelay'" in named
    assert "sub-01_m0scan.nii.gz: field 'image data'" in named
    assert "sub-01_T1w.nii.gz: field 'image data'" in named
    assert snapshot(root) == before and not out.exists()


def test_all_bad_sidecars_in_one_pass(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    (root / ASL_JSON).write_text("[]")
    (root / M0_JSON).write_text("{")
    assert main([str(root), str(tmp_path / "out"), "participant", "--validate-only"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "JSON object" in lines[0] and "JSON syntax" in lines[1]


def test_symlink_loop_does_not_multiply_runs(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    os.symlink("..", root / PERF / "loop")
    os.symlink("../..", root / "sub-01" / "anat" / "up")
    argv = [str(root), str(tmp_path / "out"), "participant", "--validate-only", "--no-denoise"]
    argv.append("--skip-bids-validation")  # bids-validator-deno runs out of memory on loops
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 ASL run(s) valid, 0 warning(s)." in out
