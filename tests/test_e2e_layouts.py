"""The whole pipeline on GE's product layout: an M0 and one ΔM volume.

GE's product pCASL exports no control/label pairs, only the M0 and the
perfusion-weighted difference (``aslcontext``: ``m0scan``, ``deltam``;
``M0Type: Included``). Motion correction used to fit the ΔM volume to the
series' mean like any other volume and moved it by millimetres (6.7 mm RMS
on the README demo in this layout), so the map no longer followed the
white-paper equation on the data. Here a static subject without outliers is
written in that layout, run as a user runs it, and its map must be the
equation applied to its ΔM and the pipeline's M0, voxel for voxel.
"""

import json

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.cli.run import main
from asl_pipeline.simulate import simulate_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ge_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ge")
    bids = simulate_dataset(
        base / "bids", n_subjects=1, seed=47, motion=False, outliers=False, m0_type="Included"
    )
    perf = bids / "sub-01" / "perf"
    img = nib.load(perf / "sub-01_asl.nii.gz")
    data = img.get_fdata()
    types = (perf / "sub-01_aslcontext.tsv").read_text().split()[1:]

    def of(kind):
        return data[..., [i for i, t in enumerate(types) if t == kind]]

    deltam = (of("control") - of("label")).mean(axis=-1)
    m0 = of("m0scan").mean(axis=-1)
    series = np.stack([m0, deltam], axis=-1).astype(np.float32)
    nib.Nifti1Image(series, img.affine).to_filename(perf / "sub-01_asl.nii.gz")
    (perf / "sub-01_aslcontext.tsv").write_text("volume_type\nm0scan\ndeltam\n")
    argv = [str(bids), str(base / "out"), "participant", "--work-dir", str(base / "work")]
    rc = main([*argv, "--nprocs", "2", "--output-spaces", "asl"])
    return {
        "rc": rc,
        "out": base / "out" / "sub-01" / "perf",
        "truth": bids / "derivatives" / "simulation" / "sub-01" / "perf",
        "deltam": deltam,
        "m0": m0,
    }


def _load(path):
    return nib.load(path).get_fdata()


def test_the_deltam_volume_is_not_moved(ge_run):
    assert ge_run["rc"] == 0
    table = (ge_run["out"] / "sub-01_desc-confounds_timeseries.tsv").read_text().splitlines()
    header = table[0].split("\t")
    motion = [c for c in header if c.startswith(("trans", "rot", "raw_"))]
    assert len(motion) == 12
    for row in table[1:]:
        values = dict(zip(header, row.split("\t"), strict=True))
        assert all(float(values[c]) == 0.0 for c in motion), values
    # the ASL reference is the M0, not the mean of the M0 and a perfusion map
    ref = _load(ge_run["out"] / "sub-01_aslref.nii.gz")
    np.testing.assert_allclose(ref, ge_run["m0"], atol=1e-3 * ge_run["m0"].max())


def test_the_map_is_the_equation_on_the_data(ge_run):
    out = ge_run["out"]
    cbf = _load(out / "sub-01_desc-mean_cbf.nii.gz")
    m0 = _load(out / "sub-01_desc-preproc_m0scan.nii.gz")
    mask = _load(out / "sub-01_desc-brain_mask.nii.gz") > 0
    q = json.loads((out / "sub-01_desc-mean_cbf.json").read_text())["QuantificationParameters"]
    delay = q["pld"] + np.asarray(q["slice_timing"])[None, None, :]
    t1b = q["t1b"]
    with np.errstate(divide="ignore", invalid="ignore"):
        equation = (
            6000 * q["lam"] * ge_run["deltam"] * np.exp(delay / t1b)
            / (2 * q["alpha"] * t1b * m0 * (1 - np.exp(-q["tau"] / t1b)))
        )  # fmt: skip
    quantified = mask & (cbf != 0)
    assert quantified.sum() > 0.9 * mask.sum()
    np.testing.assert_allclose(cbf[quantified], equation[quantified], rtol=1e-4)

    # and against the truth: 40 pairs, no motion, no outliers (prototype: +1.8% / +9.8%)
    truth = _load(ge_run["truth"] / "sub-01_desc-true_cbf.nii.gz")
    gm = _load(ge_run["truth"] / "sub-01_label-GM_probseg.nii.gz") > 0.7
    wm = _load(ge_run["truth"] / "sub-01_label-WM_probseg.nii.gz") > 0.9
    assert abs(cbf[gm].mean() / truth[gm].mean() - 1) < 0.05
    assert abs(cbf[wm].mean() / truth[wm].mean() - 1) < 0.15
