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


def _save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)).to_filename(path)


def test_judge_scores_maps_against_the_rest_and_skips_the_t1w_mask(tmp_path):
    rng = np.random.default_rng(0)
    shape = (16, 16, 6)
    truth = np.full(shape, 40.0)
    truth[:8] = 80.0  # "GM" half at twice the "WM" half
    gm = np.zeros(shape)
    gm[:8] = 1.0
    first, rest = tmp_path / "first" / "sub-01" / "perf", tmp_path / "rest" / "sub-01" / "perf"
    stem = "sub-01"
    noisy = truth + rng.normal(0, 10, shape)
    for folder, cbf in ((first, noisy), (rest, truth + rng.normal(0, 1, shape))):
        _save(folder / f"{stem}_desc-mean_cbf.nii.gz", cbf)
    _save(first / f"{stem}_desc-brain_mask.nii.gz", np.ones(shape))
    _save(first / f"{stem}_label-GM_probseg.nii.gz", gm)
    _save(first / f"{stem}_label-WM_probseg.nii.gz", 1 - gm)
    _save(first / f"{stem}_desc-oracle_cbf.nii.gz", truth)
    _save(first / f"{stem}_desc-shrunk_cbf.nii.gz", 0.9 * noisy)
    # the anatomical mask has no CBF beside it: not a run to judge
    _save(first.parent / "anat" / f"{stem}_desc-brain_mask.nii.gz", np.ones((4, 4, 4)))
    rows = {r["map"]: r for r in split_half.judge(tmp_path / "first", tmp_path / "rest")}
    assert rows["mean"]["ratio"] == pytest.approx(1.0)
    assert rows["oracle"]["ratio"] < 0.2  # the truth is closest to the rest
    assert rows["oracle"]["gmwm"] == pytest.approx(2.0)
    best = next(k for k in rows if k.startswith("blur best"))
    assert rows[best]["rms"] <= rows["blur sigma 0.5"]["rms"] + 1e-9
    assert rows[best]["rms"] < rows["mean"]["rms"]  # blurring white noise helps
    # a lower level is no less noise: scaled back, the shrunk mean is the mean
    assert rows["shrunk"]["level"] == pytest.approx(0.9)
    assert rows["shrunk"]["ratio_at_plain_level"] == pytest.approx(1.0)
    assert rows["oracle"]["ratio_at_plain_level"] < 0.2


def test_judge_reads_the_plain_mean_of_another_run_when_smoothed(tmp_path):
    shape = (8, 8, 4)
    perf = "sub-01/perf/sub-01"
    ones = np.ones(shape)
    for name in ("smooth", "plain"):
        _save(tmp_path / name / f"{perf}_desc-brain_mask.nii.gz", ones)
        _save(tmp_path / name / f"{perf}_label-GM_probseg.nii.gz", ones)
        _save(tmp_path / name / f"{perf}_label-WM_probseg.nii.gz", ones)
    _save(tmp_path / "smooth" / f"{perf}_desc-meanSmooth3mm_cbf.nii.gz", 52 * ones)
    _save(tmp_path / "plain" / f"{perf}_desc-mean_cbf.nii.gz", 60 * ones)
    _save(tmp_path / "rest" / f"{perf}_desc-mean_cbf.nii.gz", 50 * ones)
    with pytest.raises(FileNotFoundError, match="--label plain"):
        split_half.judge(tmp_path / "smooth", tmp_path / "rest")
    rows = {
        r["map"]: r
        for r in split_half.judge(tmp_path / "smooth", tmp_path / "rest", tmp_path / "plain")
    }
    assert rows["meanSmooth3mm"]["rms"] == pytest.approx(2.0)
    assert rows["meanSmooth3mm"]["rms_plain"] == pytest.approx(10.0)


def test_noise_floor_is_the_distance_of_the_noise_free_map(tmp_path):
    """The floor is what the first part's truth reads against the rest: the
    rest's own noise and the drift between the parts, not the N-pair noise."""
    rng = np.random.default_rng(3)
    shape, n_pairs = (48, 48, 16), 10
    truth = 40 + 10 * rng.standard_normal(shape)
    drift = 3 * rng.standard_normal(shape)  # the perfusion moves between the parts
    series = truth[..., None] + rng.normal(0, 30, shape + (n_pairs,))
    rest = truth + drift + rng.normal(0, 5, shape)
    perf = tmp_path / "first" / "sub-01" / "perf"
    _save(perf / "sub-01_desc-mean_cbf.nii.gz", series.mean(axis=3))
    _save(perf / "sub-01_desc-timeseries_cbf.nii.gz", series)
    _save(perf / "sub-01_desc-truth_cbf.nii.gz", truth)
    _save(perf / "sub-01_desc-brain_mask.nii.gz", np.ones(shape))
    _save(perf / "sub-01_label-GM_probseg.nii.gz", np.ones(shape))
    _save(perf / "sub-01_label-WM_probseg.nii.gz", np.ones(shape))
    _save(tmp_path / "rest" / "sub-01" / "perf" / "sub-01_desc-mean_cbf.nii.gz", rest)
    rows = {r["map"]: r for r in split_half.judge(tmp_path / "first", tmp_path / "rest")}
    expected = np.hypot(3, 5)  # what the truth itself reads
    assert rows["truth"]["rms"] == pytest.approx(expected, rel=0.05)
    assert rows["mean"]["rms_floor"] == pytest.approx(expected, rel=0.1)
    assert rows["truth"]["closed"] == pytest.approx(1.0, abs=0.05)
    assert rows["mean"]["closed"] == 0.0


def test_linear_bounds_keep_the_level_and_find_a_smoothing_kernel():
    """The bound's kernel sums to 1 (it cannot copy the rest's level) and,
    where the truth is smooth and the noise white, it smooths."""
    rng = np.random.default_rng(5)
    shape = (40, 40, 12)
    mask = np.zeros(shape, bool)
    mask[4:36, 4:36, 1:11] = True
    # a constant map: nothing to learn but the rest's 10% lower level, which it must not
    flat = np.full(shape, 50.0)
    bounds = split_half.linear_bounds(flat, 45 + rng.normal(0, 5, shape), mask)
    for cbf in bounds.values():
        np.testing.assert_allclose(cbf[mask], 50.0)
        assert np.isnan(cbf[~mask]).all()
    # a smooth truth under white noise: the kernel averages neighbours
    x, y = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    truth = np.repeat((40 + 20 * np.sin(x / 6.0) * np.cos(y / 7.0))[..., None], 12, axis=2)
    plain = truth + rng.normal(0, 10, shape)
    rest = truth + rng.normal(0, 3, shape)
    bounds = split_half.linear_bounds(plain, rest, mask)
    base = split_half.rms(plain, rest, mask)
    oracle = split_half.rms(bounds["linear oracle"], rest, mask) / base
    cross = split_half.rms(bounds["linear cross-slice"], rest, mask) / base
    assert oracle < 0.5  # 75 neighbours' average of white noise
    # fitted to the voxels it is judged on, the oracle reads optimistic; from the
    # other slices, pessimistic (74 weights estimated from half the voxels)
    assert oracle <= cross < oracle * 1.2
