"""Partial-volume correction (Asllani 2008 linear regression): core, interfaces, workflow."""

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from asl_pipeline import pvc
from asl_pipeline.interfaces.pvc import PartialVolumeCorrection, TissueFractions
from asl_pipeline.interfaces.reports import ComputeQC
from asl_pipeline.simulate.series import simulate_subject

SHAPE = (32, 32, 6)


def _fractions(seed=0, shape=SHAPE):
    """Smooth random GM/WM/CSF fractions summing to 1 (a mixed 'cortex')."""
    rng = np.random.default_rng(seed)
    raw = [ndimage.gaussian_filter(rng.random(shape), (1, 1, 0.7)) for _ in range(3)]
    raw = [np.clip(4 * (r - r.mean()) + 0.5, 0.02, None) for r in raw]
    total = sum(raw)
    gm, wm, csf = (r / total for r in raw)
    return gm, wm, csf


# ------------------------------------------------------------------ core: known answers


def test_known_answer_phantom_recovers_tissue_cbf():
    gm, wm, _ = _fractions()
    cbf = gm * 60.0 + wm * 20.0
    res = pvc.lr_pvc(cbf, gm, wm)
    assert res.estimated.mean() > 0.9  # smooth mixed fractions: well conditioned
    np.testing.assert_allclose(res.gm[res.estimated], 60.0, atol=1e-6)
    np.testing.assert_allclose(res.wm[res.estimated], 20.0, atol=1e-6)
    assert np.all(np.isnan(res.gm[~res.estimated]))


def test_recovery_is_local_to_the_kernel():
    """Tissue CBF changing across the image: exact wherever the kernel sees one value."""
    gm, wm, _ = _fractions(1)
    x = np.indices(SHAPE)[0]
    cbf_gm = np.where(x < 16, 70.0, 45.0)
    cbf_wm = np.where(x < 16, 25.0, 15.0)
    res = pvc.lr_pvc(gm * cbf_gm + wm * cbf_wm, gm, wm, kernel=(5, 5, 1))
    far = res.estimated & (np.abs(x - 15.5) > 3)  # kernel half-width 2 from the edge
    np.testing.assert_allclose(res.gm[far], cbf_gm[far], atol=1e-6)
    np.testing.assert_allclose(res.wm[far], cbf_wm[far], atol=1e-6)
    near = res.estimated & (np.abs(x - 15.5) < 1)
    # at a sharp change the one-value-per-kernel model is wrong: errors, even overshoots
    assert np.abs(res.gm[near] - cbf_gm[near]).max() > 5.0


def test_point_spread_of_the_fractions():
    gm, wm, _ = _fractions(2, shape=(24, 24, 12))
    psf = (0.0, 0.0, 1.2)
    cbf = pvc.blur_fractions(gm, psf) * 60.0 + pvc.blur_fractions(wm, psf) * 20.0
    res = pvc.lr_pvc(cbf, gm, wm, psf_fwhm=psf)
    np.testing.assert_allclose(res.gm[res.estimated], 60.0, atol=1e-6)
    blurred = pvc.blur_fractions(gm, psf)
    np.testing.assert_array_equal(pvc.blur_fractions(gm, 0.0), gm)
    np.testing.assert_allclose(blurred.sum(axis=2), gm.sum(axis=2), rtol=0.05)
    assert not np.allclose(blurred, gm)


def test_ill_conditioned_kernels_are_left_unestimated():
    gm, wm, _ = _fractions(3)
    wm[:, :16] = 0.0  # no WM in the left half
    gm[:, 16:] = 0.5 * wm[:, 16:]  # GM proportional to WM: collinear
    cbf = gm * 60.0 + wm * 20.0
    mask = np.ones(SHAPE, bool)
    mask[..., 0] = False
    res = pvc.lr_pvc(cbf, gm, wm, mask=mask)
    assert not res.estimated[:, 2:14].any()  # too little WM (kernel 5 wide)
    assert not res.estimated[:, 18:].any()  # collinear fractions
    assert np.all(res.independence[:, 18:, 1:] < 1e-9)
    assert np.all(np.isnan(res.gm[..., 0]))  # outside the mask
    # non-finite CBF never enters a kernel
    gm2, wm2, _ = _fractions(4)
    cbf2 = gm2 * 60.0 + wm2 * 20.0
    cbf2[5, 5, 3] = np.nan
    res2 = pvc.lr_pvc(cbf2, gm2, wm2)
    assert res2.n_voxels[5, 5, 3] == 24
    np.testing.assert_allclose(res2.gm[res2.estimated], 60.0, atol=1e-6)


@pytest.mark.parametrize("kernel", [(4, 5, 1), (5, 5), (0, 1, 1), (1, 1, 1)])
def test_bad_kernels_are_refused(kernel):
    gm, wm, _ = _fractions()
    with pytest.raises(ValueError, match="kernel"):
        pvc.lr_pvc(gm * 60, gm, wm, kernel=kernel)


def test_fractions_must_match_the_map():
    gm, wm, _ = _fractions()
    with pytest.raises(ValueError, match="do not match"):
        pvc.lr_pvc(gm[:-1] * 60, gm, wm)


def test_fine_grid_block_mean_is_the_voxel_average():
    """A linear function sampled on the fine grid averages to its value at the centre."""
    affine = np.array([[3.4, 0, 0.3, -50], [0.2, 3.4, 0, -60], [0, 0, 6.0, -20], [0, 0, 0, 1]])
    shape, factors = (5, 4, 3), (4, 4, 6)
    fine_affine, fine_shape = pvc.fine_grid(affine, shape, factors)
    assert fine_shape == (20, 16, 18)

    def f(ijk, aff):
        xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
        return xyz @ np.array([0.5, -1.0, 2.0]) + 3.0

    fine_ijk = np.indices(fine_shape).reshape(3, -1).T.astype(float)
    coarse_ijk = np.indices(shape).reshape(3, -1).T.astype(float)
    fine = f(fine_ijk, fine_affine).reshape(fine_shape)
    np.testing.assert_allclose(
        pvc.block_mean(fine, factors), f(coarse_ijk, affine).reshape(shape), atol=1e-9
    )
    assert pvc.supersampling((3.4, 3.4, 6.0), (1.0, 1.0, 1.0)) == (4, 4, 6)
    assert pvc.supersampling((2.0, 2.0, 20.0), (1.0, 1.0, 1.0)) == (2, 2, 8)


def test_regional_means():
    gm = np.array([0.9, 0.6, 0.2, 0.1])
    wm = 1 - gm
    means = pvc.regional_means(
        np.array([60.0, 62.0, 50.0, np.nan]), np.array([20.0, np.nan, 22.0, 24.0]), gm, wm
    )
    assert means == {"pvc_gm_cbf_mean": 61.0, "pvc_wm_cbf_mean": 23.0}


# ------------------------------------------------------------------ simulated subjects


def _measured(sub):
    """Mean control - label over the true model sensitivity: a perfect quantification."""
    ctx = np.array(sub.aslcontext)
    diff = sub.asl[..., ctx == "control"].mean(-1) - sub.asl[..., ctx == "label"].mean(-1)
    good = sub.brain_mask & (sub.cbf > 1.0)
    return np.where(good, diff * sub.cbf / np.where(good, sub.deltam, 1.0), np.nan)


@pytest.mark.parametrize("seed", [1, 104])  # the README demo's seed and the panel's clean one
def test_simulated_subject_gm_cbf(seed):
    """Issue 16's acceptance at voxels with GM fraction 0.3-0.7 (noise, no motion).

    The measured map carries its own regional error from thermal and
    physiological noise (the same for any correction); the PV-corrected GM CBF
    is scored against the true GM CBF with that error divided out, and the
    noise-free true CBF is corrected too (partial-volume model and kernel only).
    """
    sub = simulate_subject(
        seed, motion=False, outliers=False, t1w=False, resolution=2, subsample=(2, 2, 2)
    )
    assert np.allclose(sub.gm * sub.cbf_gm + sub.wm * sub.cbf_wm, sub.cbf, atol=1e-3)
    measured = _measured(sub)
    res = pvc.lr_pvc(measured, sub.gm, sub.wm, mask=sub.brain_mask)
    band = sub.brain_mask & (sub.gm >= 0.3) & (sub.gm <= 0.7) & np.isfinite(measured)
    est = band & res.estimated
    assert est.sum() > 0.9 * band.sum()
    truth = sub.cbf_gm
    own_error = measured[est].mean() / sub.cbf[est].mean()
    uncorrected = measured[band].mean() / truth[band].mean() - 1
    corrected = res.gm[est].mean() / (own_error * truth[est].mean()) - 1
    assert uncorrected < -0.15
    assert abs(corrected) < 0.05
    noise_free = pvc.lr_pvc(sub.cbf, sub.gm, sub.wm, mask=sub.brain_mask)
    sel = band & noise_free.estimated
    assert abs(noise_free.gm[sel].mean() / truth[sel].mean() - 1) < 0.02


def test_dataset_writes_the_tissue_cbf_truth(tmp_path):
    from asl_pipeline.simulate import simulate_dataset

    tiny = dict(n_pairs=2, shape=(24, 24, 8), voxel_size=(8.0, 8.0, 14.0), resolution=2)
    root = simulate_dataset(
        tmp_path / "ds", n_subjects=1, seed=3, subsample=(1, 1, 1), t1w_voxel_size=4.0, **tiny
    )
    perf = root / "derivatives" / "simulation" / "sub-01" / "perf"
    maps = {
        name: nib.load(perf / f"sub-01_{name}.nii.gz").get_fdata()
        for name in ("desc-true_cbf", "desc-trueGM_cbf", "desc-trueWM_cbf",
                     "label-GM_probseg", "label-WM_probseg")
    }  # fmt: skip
    mixed = maps["label-GM_probseg"] * maps["desc-trueGM_cbf"]
    mixed += maps["label-WM_probseg"] * maps["desc-trueWM_cbf"]
    np.testing.assert_allclose(mixed, maps["desc-true_cbf"], atol=1e-3)


# ------------------------------------------------------------------ interfaces


@pytest.fixture
def phantom_files(tmp_path):
    gm, wm, csf = _fractions(5)
    affine = np.diag([3.4, 3.4, 6.0, 1.0])
    mask = np.ones(SHAPE)
    mask[:2] = 0
    cbf = gm * 60.0 + wm * 20.0
    cbf[10, 10, 2] = 0.0  # not quantified (e.g. low M0): missing, not zero flow
    arrays = dict(gm=gm, wm=wm, csf=csf, mask=mask, cbf=cbf)
    files = {}
    for name, arr in arrays.items():
        files[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), files[name])
    return files


def test_pvc_interface(phantom_files, tmp_path):
    res = PartialVolumeCorrection(
        cbf_file=phantom_files["cbf"],
        gm=phantom_files["gm"],
        wm=phantom_files["wm"],
        mask=phantom_files["mask"],
        kernel=(3, 3, 1),
    ).run(cwd=tmp_path)
    out = res.outputs
    gm_cbf = nib.load(out.gm_cbf).get_fdata()
    wm_cbf = nib.load(out.wm_cbf).get_fdata()
    assert out.gm_cbf.startswith(str(tmp_path)) and out.wm_cbf.startswith(str(tmp_path))
    est = gm_cbf != 0
    assert est.mean() > 0.5
    assert not est[:2].any()  # outside the mask: not estimated, written as 0
    assert np.isfinite(gm_cbf).all() and np.isfinite(wm_cbf).all()
    np.testing.assert_allclose(gm_cbf[est], 60.0, atol=1e-4)  # float32 files
    np.testing.assert_allclose(wm_cbf[est], 20.0, atol=1e-4)
    meta = json.loads(open(out.gm_cbf_json).read())
    assert meta["Units"] == "mL/100 g/min"
    assert "Asllani" in meta["PartialVolumeCorrectionMethod"]
    assert meta["PartialVolumeCorrectionKernel"] == [3, 3, 1]
    assert meta["NotEstimatedValue"] == 0.0
    assert json.loads(open(out.wm_cbf_json).read())["Description"].startswith("White")


def test_tissue_fractions_interface_averages_over_the_voxel(tmp_path):
    """A GM half-space at 1 mm: the ASL voxel (4 mm) straddling its edge gets its share."""
    pytest.importorskip("ants")
    from asl_pipeline.registration import write_itk_affine

    t1_shape = (60, 40, 40)
    t1_affine = np.eye(4)
    t1_affine[:3, 3] = [-30.0, -20.0, -20.0]  # voxel centres at integer mm
    x = np.arange(t1_shape[0])[:, None, None] - 30.0 + np.zeros(t1_shape)
    gm = (x < 0.0).astype(np.float32)  # interpolated: 1 up to x=-1, -x on [-1, 0], then 0
    files = {}
    for name, arr in (("gm", gm), ("wm", 1 - gm)):
        files[name] = str(tmp_path / f"{name}_t1w.nii.gz")
        nib.save(nib.Nifti1Image(arr, t1_affine), files[name])
    ref_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    ref_affine[:3, 3] = [-12.0, -8.0, -8.0]  # voxel 3 centred at x = 0 mm
    ref = str(tmp_path / "ref.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 5, 5), np.float32), ref_affine), ref)
    xfm = write_itk_affine(np.eye(4), tmp_path / "identity.mat")
    out = TissueFractions(
        ref_image=ref, asl_to_t1w=xfm, gm_t1w=files["gm"], wm_t1w=files["wm"]
    ).run(cwd=tmp_path)
    frac = nib.load(out.outputs.gm).get_fdata()[:, 2, 2]
    # voxel 3 covers x in [-2, 2]: samples at -1.5, -0.5, 0.5, 1.5 see 1, 0.5, 0, 0
    # (GM over [-2, -0.5] of its 4 mm: 0.375); its centre alone would say 0
    np.testing.assert_allclose(frac, [1, 1, 1, 0.375, 0, 0, 0, 0], atol=1e-5)
    wm_frac = nib.load(out.outputs.wm).get_fdata()[:, 2, 2]
    np.testing.assert_allclose(frac + wm_frac, 1.0, atol=1e-5)


def test_pipeline_tissue_maps_on_the_asl_grid_are_voxel_fractions(tmp_path):
    """The registration's ASL-space maps (QC masks, cleaning, M0, DWAN) are the
    same voxel fractions as the PVC's, and the brain mask is read at the centres."""
    pytest.importorskip("ants")
    from asl_pipeline.interfaces.registration import TissuesToASL
    from asl_pipeline.registration import write_itk_affine

    t1_shape = (60, 40, 40)
    t1_affine = np.eye(4)
    t1_affine[:3, 3] = [-30.0, -20.0, -20.0]
    x = np.arange(t1_shape[0])[:, None, None] - 30.0 + np.zeros(t1_shape)
    gm = (x < 0.0).astype(np.float32)
    files = {}
    for name, arr in (("gm", gm), ("wm", 1 - gm), ("csf", np.zeros(t1_shape, np.float32)),
                      ("mask", np.ones(t1_shape, np.float32))):  # fmt: skip
        files[name] = str(tmp_path / f"{name}_t1w.nii.gz")
        nib.save(nib.Nifti1Image(arr, t1_affine), files[name])
    ref_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    ref_affine[:3, 3] = [-12.0, -8.0, -8.0]
    ref = str(tmp_path / "ref.nii.gz")
    nib.save(nib.Nifti1Image(np.full((8, 5, 5), 100.0, np.float32), ref_affine), ref)
    xfm = write_itk_affine(np.eye(4), tmp_path / "identity.mat")
    out = TissuesToASL(
        ref_image=ref, asl_to_t1w=xfm, t1w_mask=files["mask"], gm_t1w=files["gm"],
        wm_t1w=files["wm"], csf_t1w=files["csf"],
    ).run(cwd=tmp_path).outputs  # fmt: skip
    frac = nib.load(out.gm).get_fdata()[:, 2, 2]
    # as TissueFractions above: the voxel straddling the edge holds 0.375 GM,
    # where the map read at its centre held 0
    np.testing.assert_allclose(frac, [1, 1, 1, 0.375, 0, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(frac + nib.load(out.wm).get_fdata()[:, 2, 2], 1.0, atol=1e-5)
    assert nib.load(out.t1w_mask_asl).get_fdata().all()


def test_qc_table_gains_pvc_columns(phantom_files, tmp_path):
    pvc_out = PartialVolumeCorrection(
        cbf_file=phantom_files["cbf"],
        gm=phantom_files["gm"],
        wm=phantom_files["wm"],
        mask=phantom_files["mask"],
    ).run(cwd=tmp_path)
    (tmp_path / "qc").mkdir()
    qc = ComputeQC(
        cbf=phantom_files["cbf"],
        gm=phantom_files["gm"],
        wm=phantom_files["wm"],
        csf=phantom_files["csf"],
        asl_mask=phantom_files["mask"],
        pvc_gm_cbf=pvc_out.outputs.gm_cbf,
        pvc_wm_cbf=pvc_out.outputs.wm_cbf,
    ).run(cwd=tmp_path / "qc")
    row = json.loads(open(qc.outputs.qc_json).read())
    assert row["pvc_gm_cbf_mean"] == pytest.approx(60.0, abs=1e-4)
    assert row["pvc_wm_cbf_mean"] == pytest.approx(20.0, abs=1e-4)
    header = open(qc.outputs.qc_file).readline().split("\t")
    assert "pvc_gm_cbf_mean" in header


def test_qc_table_without_pvc_has_no_pvc_columns(phantom_files, tmp_path):
    qc = ComputeQC(
        cbf=phantom_files["cbf"],
        gm=phantom_files["gm"],
        wm=phantom_files["wm"],
        csf=phantom_files["csf"],
        asl_mask=phantom_files["mask"],
    ).run(cwd=tmp_path)
    assert "pvc_gm_cbf_mean" not in json.loads(open(qc.outputs.qc_json).read())


# ------------------------------------------------------------------ workflow graph


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests._bidsfactory import make_dataset

    return make_dataset(tmp_path_factory.mktemp("bids"), context=("control", "label") * 6)


def _build(bids, tmp_path, *options):
    from asl_pipeline.bids import collect_runs
    from asl_pipeline.cli.parser import parse_args
    from asl_pipeline.config import Config
    from asl_pipeline.workflows.base import init_asl_pipeline_wf

    argv = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work")]
    config = Config.from_args(parse_args(argv + list(options)))
    return config, init_asl_pipeline_wf(config, collect_runs(config.bids_dir))


def _nodes(workflow):
    return {node.fullname.split(".")[-1]: node for node in workflow._get_all_nodes()}


def _methods(workflow) -> str:
    """The methods text of the (one) run, as its report shows it."""
    from asl_pipeline.cli.workflow import methods_texts

    return "\n\n".join(methods_texts(workflow))


def test_pvc_is_off_by_default(dataset, tmp_path):
    config, wf = _build(dataset, tmp_path)
    assert config.pvc == "none"
    nodes = _nodes(wf)
    for name in ("pvc_lr", "ds_pvc_gm_cbf", "ds_pvc_wm_cbf"):
        assert name not in nodes, name
    assert "Asllani" not in _methods(wf)


def test_pvc_lr_graph(dataset, tmp_path):
    config, wf = _build(dataset, tmp_path, "--pvc", "lr")
    assert config.pvc == "lr"
    nodes = _nodes(wf)
    for name in ("pvc_lr", "ds_pvc_gm_cbf", "ds_pvc_wm_cbf"):
        assert name in nodes, name
    assert nodes["pvc_lr"].inputs.kernel == pvc.DEFAULT_KERNEL
    assert nodes["ds_pvc_gm_cbf"].inputs.desc == "pvcGM"
    assert nodes["ds_pvc_wm_cbf"].inputs.desc == "pvcWM"
    assert nodes["ds_pvc_gm_cbf"].inputs.meta_dict["Units"] == "mL/100 g/min"
    assert "Asllani et al. (2008)" in _methods(wf)

    import networkx as nx
    from nipype.pipeline.engine.utils import _remove_nonjoin_identity_nodes

    flat = _remove_nonjoin_identity_nodes(wf._create_flat_graph())
    by_name = {n.fullname.split(".")[-1]: n for n in flat.nodes}
    # the measured map is corrected (cleaned mean: PAOCSL by default), then stored
    # and summarised in the QC table
    assert "clean_cbf" in {n.name for n in nx.ancestors(flat, by_name["pvc_lr"])}
    for sink in ("ds_pvc_gm_cbf", "ds_pvc_wm_cbf", "compute_qc"):
        assert by_name["pvc_lr"] in set(flat.predecessors(by_name[sink])), sink
    edges = flat.get_edge_data(by_name["pvc_lr"], by_name["compute_qc"])["connect"]
    assert ("gm_cbf", "pvc_gm_cbf") in edges and ("wm_cbf", "pvc_wm_cbf") in edges
    # the fractions are the anatomical workflow's partial volumes (not the posteriors
    # the rest of the pipeline reads) averaged over each ASL voxel, through the
    # registration's transform, onto the ASL reference
    pv = flat.get_edge_data(by_name["t1w_tissues"], by_name["pv_fractions"])["connect"]
    assert ("gm_pv_t1w", "gm_t1w") in pv and ("wm_pv_t1w", "wm_t1w") in pv
    xfm = flat.get_edge_data(by_name["asl_to_t1w"], by_name["pv_fractions"])["connect"]
    assert ("asl_to_t1w", "asl_to_t1w") in xfm
    fractions = flat.get_edge_data(by_name["pv_fractions"], by_name["pvc_lr"])["connect"]
    assert ("gm", "gm") in fractions and ("wm", "wm") in fractions
    assert not flat.has_edge(by_name["asl_to_t1w"], by_name["pvc_lr"]) or (
        ("gm", "gm") not in flat.get_edge_data(by_name["asl_to_t1w"], by_name["pvc_lr"])["connect"]
    )


def test_pvc_option_is_checked(dataset, tmp_path):
    with pytest.raises(SystemExit):
        _build(dataset, tmp_path, "--pvc", "gtm")
    from asl_pipeline.config import Config

    with pytest.raises(ValueError, match="partial-volume"):
        Config(bids_dir=dataset, output_dir=tmp_path, pvc="gtm")
