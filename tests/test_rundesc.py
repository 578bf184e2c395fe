"""One description of each run: what --validate-only checked is what the nodes quantify.

Sidecar and aslcontext variants that the BIDS reader accepts (case-folded
volume types and M0Type, MRAcquisitionType inferred from SliceTiming, ...)
give the description of their canonical spelling, the workflow hands that
description to its quantification nodes unchanged, and the CBF those nodes
compute is the same whether they are given the description or read the raw
files themselves. Variants the quantification cannot handle (original QUIPSS,
a labeling duration varying between pairs) are refused by the validation.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

import asl_pipeline
from asl_pipeline import cbf, rundesc
from asl_pipeline.bids import validate_dataset
from asl_pipeline.cli.parser import parse_args
from asl_pipeline.config import Config
from asl_pipeline.errors import ASLInputError
from asl_pipeline.interfaces.cbf import ComputeCBF
from asl_pipeline.rundesc import RunDescription, pair_volumes
from asl_pipeline.workflows.base import init_asl_pipeline_wf
from tests._bidsfactory import make_dataset

PAIRS = ("control", "label") * 3
PASL = {
    "ArterialSpinLabelingType": "PASL",
    "PostLabelingDelay": 1.8,
    "BolusCutOffFlag": True,
    "BolusCutOffDelayTime": 0.7,
}

#: variant id -> (make_dataset kwargs of the variant, of its canonical spelling)
VARIANTS = {
    "volume-types-case": (
        dict(context=("Control", "LABEL") * 3),
        dict(context=PAIRS),
    ),
    "m0type-case": (
        dict(sidecar={"M0Type": "separate"}),
        dict(sidecar={"M0Type": "Separate"}),
    ),
    "labeling-type-case": (
        dict(sidecar={"ArterialSpinLabelingType": "pcasl"}),
        dict(sidecar={"ArterialSpinLabelingType": "PCASL"}),
    ),
    "acquisition-missing-2d": (
        dict(sidecar={"SliceTiming": [0.0, 0.05, 0.1]}, drop=("MRAcquisitionType",)),
        dict(sidecar={"SliceTiming": [0.0, 0.05, 0.1], "MRAcquisitionType": "2D"}),
    ),
    "slice-encoding-reversed": (
        dict(
            sidecar={
                "SliceTiming": [0.1, 0.05, 0.0],
                "SliceEncodingDirection": "k-",
                "MRAcquisitionType": "2D",
            }
        ),
        dict(sidecar={"SliceTiming": [0.0, 0.05, 0.1], "MRAcquisitionType": "2D"}),
    ),
    "slice-encoding-forward": (
        dict(
            sidecar={
                "SliceTiming": [0.0, 0.05, 0.1],
                "SliceEncodingDirection": "k",
                "MRAcquisitionType": "2D",
            }
        ),
        dict(sidecar={"SliceTiming": [0.0, 0.05, 0.1], "MRAcquisitionType": "2D"}),
    ),
    "acquisition-missing-3d": (
        dict(drop=("MRAcquisitionType",)),
        dict(sidecar={"MRAcquisitionType": "3D"}),
    ),
    "included-m0-case": (
        dict(sidecar={"M0Type": "INCLUDED"}, context=("M0Scan",) + PAIRS, m0=False),
        dict(sidecar={"M0Type": "Included"}, context=("m0scan",) + PAIRS, m0=False),
    ),
    "pasl-quipss2-spelling": (
        dict(sidecar={**PASL, "BolusCutOffTechnique": "quipss ii"}, drop=("LabelingDuration",)),
        dict(sidecar={**PASL, "BolusCutOffTechnique": "QUIPSSII"}, drop=("LabelingDuration",)),
    ),
}


def _run(root):
    runs, errors = validate_dataset(root)  # what --validate-only runs
    assert not errors, errors
    (run,) = runs
    return run


def _content(desc: RunDescription) -> RunDescription:
    """The description without the file paths (which differ between datasets)."""
    return dataclasses.replace(
        desc, sidecar=None, aslcontext=None, m0=dataclasses.replace(desc.m0, m0_file=None)
    )


def _workflow_description(root, tmp_path, node_name="compute_cbf") -> dict:
    args = parse_args(
        [str(root), str(tmp_path / "out"), "participant", "--work-dir", str(tmp_path / "w")]
    )
    config = Config.from_args(args)
    wf = init_asl_pipeline_wf(config, [_run(root)])
    (node,) = [n for n in wf._get_all_nodes() if n.name == node_name]
    return node.inputs.run_description


def _cbf(run, cwd: Path, *, raw: bool):
    """ComputeCBF on the run's raw series: given the description, or the raw files."""
    inputs = {"asl_file": str(run.asl_file)}
    if raw:
        inputs.update(metadata=str(run.sidecar_file), aslcontext=str(run.aslcontext_file))
        if run.m0_file is not None:
            inputs["m0_metadata"] = str(run.m0_file).replace(".nii.gz", ".json")
    else:
        inputs["run_description"] = run.description.to_dict()
    if run.m0_file is not None:
        inputs["m0_file"] = str(run.m0_file)
    cwd.mkdir(parents=True)
    out = ComputeCBF(**inputs).run(cwd=str(cwd)).outputs
    sidecar = json.loads(Path(out.mean_cbf_json).read_text())
    return nb.load(out.cbf_ts).get_fdata(), sidecar["QuantificationParameters"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_gives_the_canonical_description_and_cbf(variant, tmp_path):
    spelled, canonical = VARIANTS[variant]
    run = _run(make_dataset(tmp_path / "variant", **spelled))
    ref = _run(make_dataset(tmp_path / "canonical", **canonical))
    assert _content(run.description) == _content(ref.description)

    # the workflow's quantification nodes get the validated description as is
    assert _workflow_description(run.asl_file.parents[2], tmp_path) == run.description.to_dict()
    assert RunDescription.from_dict(run.description.to_dict()) == run.description

    # the node quantifies with what was validated, and reading the raw files
    # itself (the interface used alone) it applies the same rules
    described, params = _cbf(run, tmp_path / "described", raw=False)
    raw, raw_params = _cbf(run, tmp_path / "raw", raw=True)
    expected = cbf.quant_params(ref.description).to_dict()
    assert params == raw_params == expected
    np.testing.assert_array_equal(described, raw)
    canonical_cbf, _ = _cbf(ref, tmp_path / "canonical_cbf", raw=False)
    np.testing.assert_array_equal(described, canonical_cbf)
    assert np.isfinite(described).all() and np.abs(described).max() > 0


@pytest.mark.parametrize(
    ("variant", "field"),
    [
        (
            dict(sidecar={**PASL, "BolusCutOffTechnique": "QUIPSS"}, drop=("LabelingDuration",)),
            "BolusCutOffTechnique",
        ),
        (dict(sidecar={"LabelingDuration": [1.8, 1.8, 1.6, 1.6, 1.4, 1.4]}), "LabelingDuration"),
        (dict(context=("control", "label", "deltam", "cbf")), None),  # pairs + both kinds
    ],
)
def test_what_the_quantification_refuses_validation_refuses(variant, field, tmp_path):
    root = make_dataset(tmp_path, **variant)
    runs, errors = validate_dataset(root)
    if field is None:  # pairs beside deltam/cbf: a warning, the pairs are quantified
        (run,) = runs
        assert run.description.series.kind == "pairs"
        assert any("the pairs are used" in w for w in run.warnings)
        return
    assert not runs and errors[0].field == field
    perf = root / "sub-01" / "perf"
    with pytest.raises(ASLInputError) as err:  # the interface alone: the same refusal
        ComputeCBF(
            asl_file=str(perf / "sub-01_asl.nii.gz"),
            metadata=str(perf / "sub-01_asl.json"),
            aslcontext=str(perf / "sub-01_aslcontext.tsv"),
        ).run(cwd=str(tmp_path))
    assert err.value.field == field


def test_description_round_trips_through_json(tmp_path):
    run = _run(
        make_dataset(
            tmp_path,
            sidecar={
                "MRAcquisitionType": "2D",
                "SliceTiming": [0.0, 0.04, 0.08],
                "BackgroundSuppression": True,
                "BackgroundSuppressionNumberPulses": 4,
                "PostLabelingDelay": [1.5, 1.5, 2.0, 2.0, 2.5, 2.5],
            },
        )
    )
    data = json.loads(json.dumps(run.description.to_dict()))
    back = RunDescription.from_dict(data)
    assert back == run.description and hash(back) == hash(run.description)
    assert back.is_multi_pld and back.readout.slice_timing == (0.0, 0.04, 0.08)
    assert back.alpha == pytest.approx(0.85 * 0.95**4)
    assert cbf.quant_params(back) == cbf.quant_params(run.description)


# --------------------------------------------------------------------------
# One reader, one pairing
# --------------------------------------------------------------------------

ROOT = Path(asl_pipeline.__file__).resolve().parent.parent
SOURCES = [
    p
    for folder in ("asl_pipeline", "interfaces", "workflows")
    for p in sorted((ROOT / folder).rglob("*.py"))
]


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def test_single_aslcontext_reader_and_pairing_function():
    readers, pairers, tsv_readers = [], [], []
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        for fn in _functions(path):
            is_property = any(getattr(d, "id", None) == "property" for d in fn.decorator_list)
            if "aslcontext" in fn.name and not is_property:
                readers.append(f"{rel}:{fn.name}")
            body = ast.unparse(fn)
            # a pairing: control and label volumes taken two by two
            two_by_two = "0::2]" in body or ", 2)" in body
            if "'control'" in body and "'label'" in body and two_by_two:
                pairers.append(f"{rel}:{fn.name}")
            if "csv.reader" in body and "volume_type" in body:
                tsv_readers.append(f"{rel}:{fn.name}")
    assert readers == ["asl_pipeline/rundesc.py:read_aslcontext"]
    assert pairers == ["asl_pipeline/rundesc.py:pair_volumes"]
    assert tsv_readers == ["asl_pipeline/rundesc.py:read_aslcontext"]


def test_every_consumer_pairs_as_the_reader():
    from asl_pipeline import motion, outliers

    types = ["m0scan", "Label", "control", "control", "label", "noRF", "LABEL", "Control"]
    pairs = pair_volumes(types)
    np.testing.assert_array_equal(pairs, [[2, 1], [3, 4], [7, 6]])
    dm = cbf.deltam_series(np.zeros((1, 1, 1, len(types))), types)
    assert [list(v) for v in dm.volumes] == pairs.tolist()
    params = np.arange(len(types) * 6, dtype=float).reshape(-1, 6)
    consistent = motion.pair_consistent_params(params, types)
    for c, lbl in pairs:
        np.testing.assert_array_equal(consistent[c], consistent[lbl])
    assert not hasattr(outliers, "pairs_from_aslcontext")
    from asl_pipeline.interfaces import cbf as icbf

    assert not hasattr(icbf, "read_aslcontext") or icbf.read_aslcontext is rundesc.read_aslcontext
