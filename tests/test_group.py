"""Dataset level: group QC table, flags, regional CBF, report and the CLI branch.

A tiny derivatives tree is written by hand, so every number is known.
"""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from asl_pipeline.cli.run import main
from asl_pipeline.errors import ASLInputError
from asl_pipeline.group import (
    find_qc_tables,
    flag_runs,
    group_qc_table,
    regional_cbf,
    robust_z,
    run_group_level,
    run_maps,
)

AFFINE = np.diag([3.0, 3.0, 5.0, 1.0])


def _qc(path, *, gm, wm, qei=0.8, fd_max=0.3, removed=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {
        "cbf_gm_cbf_mean": gm,
        "cbf_wm_cbf_mean": wm,
        "cbf_gm_wm_ratio": gm / wm,
        "cbf_qei": qei,
        "mean_gm_cbf_mean": gm + 1,
        "framewise_displacement_mean": fd_max / 3,
        "framewise_displacement_max": fd_max,
        "outlier_volumes_all_slices": removed,
        "outlier_pairs_partial": 1,
        "n_pairs": 40,
        "coreg_dice": 0.9,
    }
    pd.DataFrame([row]).to_csv(path, sep="\t", index=False)


def _tissues():
    """GM in x < 2, WM in x >= 2 (probability 1), CSF nowhere above threshold."""
    gm = np.zeros((4, 4, 3))
    gm[:2] = 1.0
    wm = 1.0 - gm
    csf = np.full((4, 4, 3), 0.5)
    return {"GM": gm, "WM": wm, "CSF": csf}


def _write_run(folder, stem, *, gm_cbf, wm_cbf, **qc):
    folder.mkdir(parents=True, exist_ok=True)
    tissues = _tissues()
    for label, prob in tissues.items():
        nib.save(
            nib.Nifti1Image(prob.astype(np.float32), AFFINE),
            folder / f"{stem}_label-{label}_probseg.nii.gz",
        )
    cbf = np.where(tissues["GM"] > 0.5, gm_cbf, wm_cbf).astype(np.float32)
    for desc, scale in (("mean", 1.0), ("paocsl", 0.5)):
        nib.save(nib.Nifti1Image(cbf * scale, AFFINE), folder / f"{stem}_desc-{desc}_cbf.nii.gz")
    # maps that must not be read as native-space maps
    nib.save(
        nib.Nifti1Image(cbf[..., None].repeat(2, 3), AFFINE),
        folder / f"{stem}_desc-timeseries_cbf.nii.gz",
    )
    nib.save(
        nib.Nifti1Image(cbf, AFFINE),
        folder / f"{stem}_space-MNI152NLin2009aSym_desc-paocsl_cbf.nii.gz",
    )
    _qc(folder / f"{stem}_desc-qualitycontrol_cbf.tsv", gm=gm_cbf * 0.5, wm=wm_cbf * 0.5, **qc)


@pytest.fixture
def tree(tmp_path):
    out = tmp_path / "out"
    _write_run(out / "sub-01/perf", "sub-01", gm_cbf=120.0, wm_cbf=50.0)  # GM 60, WM 25
    _write_run(
        out / "sub-02/ses-1/perf",
        "sub-02_ses-1_run-2",
        gm_cbf=40.0,
        wm_cbf=30.0,  # GM 20, WM 15: GM low and ratio 1.33
        fd_max=1.7,
        qei=0.4,
    )
    (tmp_path / "bids").mkdir()
    return out


def test_group_table_reads_every_run_with_entities(tree):
    table = group_qc_table(find_qc_tables(tree))
    assert list(table["subject"]) == ["01", "02"]
    assert list(table["session"]) == ["n/a", "1"]
    assert list(table["run"]) == ["n/a", "2"]
    assert table["gm_cbf"].tolist() == [60.0, 20.0]
    assert table["wm_cbf"].tolist() == [25.0, 15.0]
    assert table["gm_wm_ratio"].tolist() == pytest.approx([2.4, 20 / 15])
    assert table["fd_max"].tolist() == [0.3, 1.7]
    assert table["pairs_removed"].tolist() == [2, 2]
    assert table["att_gm"].isna().all()  # single-PLD runs: no ATT (multi-PLD: att_gm_mean)


def test_flags_follow_the_documented_limits(tree):
    table = group_qc_table(find_qc_tables(tree))
    assert table["n_flags"].tolist() == [0, 4]
    assert table["flags"][0] == "n/a"
    flags = table["flags"][1].split("; ")
    assert "GM CBF outside 30-90 mL/100 g/min" in flags
    assert "GM/WM CBF ratio below 1.5" in flags
    assert "Maximum framewise displacement above 1 mm" in flags
    assert "Quality evaluation index (QEI) below 0.5" in flags


def test_group_outlier_by_robust_z():
    # six runs within every absolute limit; one GM CBF far from the others
    gm = [50.0, 51.0, 49.0, 50.5, 49.5, 80.0]
    table = pd.DataFrame(
        {"gm_cbf": gm, "gm_wm_ratio": 2.5, "qei": 0.8, "fd_max": 0.2, "wm_cbf": 20.0}
    )
    flagged = flag_runs(table)
    assert flagged["n_flags"].tolist() == [0, 0, 0, 0, 0, 1]
    assert "robust SD from the group" in flagged["flags"].iloc[5]
    # median 50.25, MAD 0.75 -> z = (80 - 50.25) / (1.4826 * 0.75)
    assert robust_z(gm)[5] == pytest.approx(29.75 / (1.4826 * 0.75))


def test_regional_cbf_known_values(tree):
    qc = tree / "sub-01/perf/sub-01_desc-qualitycontrol_cbf.tsv"
    maps, tissues = run_maps(qc)
    assert sorted(maps) == ["mean", "paocsl"]  # no timeseries, no template-space map
    rows = {(r["map"], r["region"]): r for r in regional_cbf(maps, tissues)}
    assert rows["mean", "GM"]["cbf_mean"] == pytest.approx(120.0)
    assert rows["mean", "GM"]["n_voxels"] == 2 * 4 * 3
    assert rows["paocsl", "WM"]["cbf_median"] == pytest.approx(25.0)
    assert rows["mean", "WM"]["cbf_sd"] == pytest.approx(0.0)
    # CSF: no voxel above 0.7, but a weighted mean over the uniform 0.5 map
    assert rows["mean", "CSF"]["n_voxels"] == 0
    assert np.isnan(rows["mean", "CSF"]["cbf_mean"])
    assert rows["mean", "CSF"]["cbf_weighted_mean"] == pytest.approx((120 + 50) / 2)


def test_cli_group_writes_table_report_and_regional(tree, capsys):
    rc = main([str(tree.parent / "bids"), str(tree), "group"])
    assert rc == 0
    table = pd.read_csv(tree / "group_qc.tsv", sep="\t", keep_default_na=False)
    assert len(table) == 2 and table["n_flags"].tolist() == [0, 4]
    sidecar = json.loads((tree / "group_qc.json").read_text())
    assert sidecar["gm_cbf"]["Units"] == "mL/100 g/min"
    report = (tree / "group_report.html").read_text()
    assert report.count("<img ") >= 5
    assert report.count('class="flagged"') == 1
    assert "no installed package ships such an atlas" in report
    regional = pd.read_csv(tree / "sub-02/perf/sub-02_desc-regional_cbf.tsv", sep="\t")
    gm = regional[(regional["map"] == "mean") & (regional["region"] == "GM")]
    assert gm["cbf_mean"].tolist() == [40.0]
    assert gm["session"].tolist() == [1] and gm["run"].tolist() == [2]
    meta = json.loads((tree / "sub-02/perf/sub-02_desc-regional_cbf.json").read_text())
    assert "bids::sub-02/ses-1/perf/sub-02_ses-1_run-2_label-GM_probseg.nii.gz" in meta["Sources"]
    assert "Group report:" in capsys.readouterr().out


def test_group_without_participant_outputs_writes_nothing(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text("{}")
    rc = main([str(tmp_path / "bids"), str(out), "group"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no participant-level outputs" in err and "participant` first" in err
    assert sorted(p.name for p in out.iterdir()) == ["dataset_description.json"]
    with pytest.raises(ASLInputError, match="analysis_level"):
        run_group_level(out)


def test_misaligned_tissue_map_is_a_clear_error(tree):
    probseg = tree / "sub-01/perf/sub-01_label-WM_probseg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), AFFINE), probseg)
    with pytest.raises(ASLInputError, match="not on the grid"):
        run_group_level(tree)
    assert not (tree / "group_qc.tsv").exists()
