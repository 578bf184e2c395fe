"""The split-half judge's dataset cutting (benchmarks/split_half.py)."""

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests._bidsfactory import make_dataset

_SPEC = importlib.util.spec_from_file_location(
    "split_half", Path(__file__).resolve().parents[1] / "benchmarks" / "split_half.py"
)
split_half = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(split_half)


def test_select_volumes_keeps_m0_in_both_parts():
    types = ["m0scan"] + ["control", "label"] * 5
    first = split_half.select_volumes(types, 2, first=True)
    rest = split_half.select_volumes(types, 2, first=False)
    assert first == [0, 1, 2, 3, 4]
    assert rest == [0, 5, 6, 7, 8, 9, 10]
    with pytest.raises(ValueError, match="cannot keep 5"):
        split_half.select_volumes(types, 5, first=True)


def test_subset_sidecar_cuts_per_volume_lists():
    meta = {
        "PostLabelingDelay": [0.0, 1.8, 1.8, 1.8, 1.8],
        "LabelingDuration": 1.8,
        "TotalAcquiredPairs": 2,
    }
    out = split_half.subset_sidecar(meta, [0, 3, 4], 5, 1)
    assert out == {
        "PostLabelingDelay": [0.0, 1.8, 1.8],
        "LabelingDuration": 1.8,
        "TotalAcquiredPairs": 1,
    }


def test_split_dataset_writes_consistent_parts(tmp_path):
    bids = make_dataset(tmp_path / "bids", context=("control", "label") * 6)
    ctx = next(bids.rglob("*_aslcontext.tsv"))
    asl = nib.load(ctx.with_name(ctx.name.replace("_aslcontext.tsv", "_asl.nii.gz")))
    original = np.asanyarray(asl.dataobj)
    first = split_half.split_dataset(bids, tmp_path / "first", 2, first=True)
    rest = split_half.split_dataset(bids, tmp_path / "rest", 2, first=False)
    for part, vols in ((first, range(0, 4)), (rest, range(4, 12))):
        c = next(part.rglob("*_aslcontext.tsv"))
        img = nib.load(c.with_name(c.name.replace("_aslcontext.tsv", "_asl.nii.gz")))
        assert split_half.read_context(c) == ["control", "label"] * (len(vols) // 2)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), original[..., list(vols)])
        side = json.loads(c.with_name(c.name.replace("_aslcontext.tsv", "_asl.json")).read_text())
        assert side.get("TotalAcquiredPairs", len(vols) // 2) == len(vols) // 2
    assert np.asanyarray(nib.load(asl.get_filename()).dataobj).shape[-1] == 12  # input untouched
