"""QC and confounds interfaces run on small synthetic images (the report's
interface: tests/test_subject_report.py)."""

import json

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.interfaces.reports import ComputeQC, ConfoundsTable


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(1)
    shape = (12, 12, 6)
    affine = np.diag([3.0, 3.0, 5.0, 1.0])
    x = np.indices(shape)[0]
    gm = (x % 4 < 2).astype(float)
    wm = 1 - gm
    csf = np.zeros(shape)
    mask = np.ones(shape)
    cbf = 60 * gm + 20 * wm + rng.normal(0, 2, shape)
    series = 1000 + rng.normal(0, 5, shape + (8,))
    files = {}
    for name, arr in dict(gm=gm, wm=wm, csf=csf, mask=mask, cbf=cbf, series=series).items():
        files[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), files[name])
    files["motion"] = str(tmp_path / "motion.tsv")
    with open(files["motion"], "w") as fh:
        fh.write("trans_x\ttrans_y\ttrans_z\trot_x\trot_y\trot_z\tframewise_displacement\trmsd\n")
        for i in range(8):
            fh.write("\t".join(["0.1"] * 6 + ["n/a" if i == 0 else "0.2", "0.3"]) + "\n")
    files["aslcontext"] = str(tmp_path / "aslcontext.tsv")
    with open(files["aslcontext"], "w") as fh:
        fh.write("volume_type\n" + "control\nlabel\n" * 4)
    files["outliers"] = str(tmp_path / "outliers.tsv")
    mat = np.zeros((6, 4), int)
    mat[2, 1] = 1
    mat[:, 3] = 1
    with open(files["outliers"], "w") as fh:
        fh.write("slice\t" + "\t".join(f"pair_{i}" for i in range(4)) + "\n")
        for z in range(6):
            fh.write(f"{z}\t" + "\t".join(map(str, mat[z])) + "\n")
    return files


def test_qc_and_report(images, tmp_path):
    status = tmp_path / "status.tsv"
    status.write_text(
        "pair\tcontrol_volume\tlabel_volume\tstatus\tn_slices_removed\n"
        "0\t0\t1\tkept\t0\n1\t2\t3\tremoved_in_some_slices\t1\n"
        "2\t4\t5\tkept\t0\n3\t6\t7\tremoved\t6\n"
    )
    conf = ConfoundsTable(
        asl_file=images["series"],
        mask=images["mask"],
        motion_confounds=images["motion"],
        aslcontext=images["aslcontext"],
        volume_status=str(status),
    ).run(cwd=tmp_path)
    lines = open(conf.outputs.confounds).read().splitlines()
    header = lines[0].split("\t")
    assert "dvars" in header and "framewise_displacement" in header
    rows = [dict(zip(header, ln.split("\t"), strict=True)) for ln in lines[1:]]
    assert [r["outlier_removed"] for r in rows] == ["0", "0", "0", "0", "0", "0", "1", "1"]
    assert [r["outlier_slices_removed"] for r in rows][2:4] == ["1", "1"]

    res = ComputeQC(
        cbf=images["cbf"],
        gm=images["gm"],
        wm=images["wm"],
        csf=images["csf"],
        asl_mask=images["mask"],
        t1w_mask=images["mask"],
        ref_image=images["series"].replace("series", "cbf"),
        confounds=conf.outputs.confounds,
        outlier_matrix=images["outliers"],
    ).run(cwd=tmp_path)
    qc = json.loads(open(res.outputs.qc_json).read())
    assert qc["cbf_gm_cbf_mean"] == pytest.approx(60, abs=1)
    assert qc["cbf_wm_cbf_mean"] == pytest.approx(20, abs=1)
    assert qc["coreg_dice"] > 0.9  # the intensity mask of the reference vs the mask
    assert qc["framewise_displacement_mean"] == pytest.approx(0.2)
    assert qc["outlier_slice_volumes"] == 7
    assert qc["outlier_volumes_all_slices"] == 1
    assert not any(k.startswith("att_") for k in qc)  # single-PLD: no ATT columns


def test_qc_of_a_multi_pld_fit(images, tmp_path):
    """The ATT map and the fit's failure mask give the att_ columns."""
    gm = nib.load(images["gm"])
    att = np.where(gm.get_fdata() > 0.5, 0.9, 1.4)
    failed = np.zeros(att.shape, np.uint8)
    failed[:, :6] = gm.get_fdata()[:, :6] < 0.5  # half of the WM voxels
    for name, arr in (("att", att), ("failed", failed)):
        nib.save(nib.Nifti1Image(arr, gm.affine), tmp_path / f"{name}.nii.gz")
    common = dict(cbf=images["cbf"], gm=images["gm"], wm=images["wm"], csf=images["csf"])
    res = ComputeQC(
        **common,
        asl_mask=images["mask"],
        att=str(tmp_path / "att.nii.gz"),
        att_failed=str(tmp_path / "failed.nii.gz"),
    ).run(cwd=tmp_path)
    qc = json.loads(open(res.outputs.qc_json).read())
    assert qc["att_gm_mean"] == pytest.approx(0.9)
    assert qc["att_wm_mean"] == pytest.approx(1.4)
    assert qc["att_gm_failed_percent"] == 0.0
    assert qc["att_wm_failed_percent"] == pytest.approx(50.0)
