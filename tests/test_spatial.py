"""Spatial stage: interfaces run, workflow graphs of both backends, SPM glue."""

import os
import shutil

import nibabel as nb
import numpy as np
import pytest
from test_motion import _errors, _series

from asl_pipeline import motion as mo
from asl_pipeline import registration as reg
from asl_pipeline.interfaces.motion import ASLRealign
from asl_pipeline.interfaces.nuisance import NuisanceRegression
from asl_pipeline.interfaces.outliers import read_motion
from asl_pipeline.interfaces.registration import ApplyTransformChain
from asl_pipeline.interfaces.spm import (
    SetWorldAffine,
    SPMASLRealign,
    SPMCoregToITK,
    SPMTissues,
    StackForSPM,
)
from asl_pipeline.workflows import spatial

HAS_SPM = bool(os.environ.get("SPM_CMD")) or shutil.which("matlab") is not None


def _write_series(tmp_path, n=12, seed=4, m0=False):
    vols, aff, types, true, mats, centre = _series(seed=seed, n=n)
    asl = tmp_path / "sub-01_asl.nii.gz"
    nb.Nifti1Image(vols, aff).to_filename(asl)
    ctx = tmp_path / "sub-01_aslcontext.tsv"
    ctx.write_text("volume_type\n" + "\n".join(types) + "\n")
    out = dict(asl=asl, ctx=ctx, vols=vols, aff=aff, types=types, mats=mats, centre=centre)
    if m0:
        m0_file = tmp_path / "sub-01_m0scan.nii.gz"
        nb.Nifti1Image(vols[..., 0] * 1.2, aff).to_filename(m0_file)
        out["m0"] = m0_file
    return out


def _tsv(path):
    lines = open(path).read().strip().splitlines()
    head = lines[0].split("\t")
    data = np.array([[float(v) for v in ln.split("\t")] for ln in lines[1:]])
    return head, data


def test_asl_realign_interface(tmp_path, caplog):
    s = _write_series(tmp_path, m0=True)
    with caplog.at_level("INFO", logger="nipype.interface"):
        res = ASLRealign(
            asl_file=str(s["asl"]), aslcontext=str(s["ctx"]), m0_file=str(s["m0"])
        ).run(cwd=tmp_path)
    # the log says what the default zig-zag detection found and removed
    assert "control - label offset of the motion estimates" in caplog.text
    assert "pairs put on the trend" in caplog.text
    out = res.outputs
    assert nb.load(out.asl_corrected).shape == s["vols"].shape
    assert nb.load(out.m0_corrected).shape == s["vols"].shape[:3]
    params = read_motion(out.motion_params)
    err = _errors(read_motion(out.motion_params_raw), s["mats"], s["centre"])
    assert err[:, 0].max() < 0.1 and err[:, 1].max() < 0.1
    head, conf = _tsv(out.confounds)
    assert head[:6] == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    assert {"raw_trans_x", "framewise_displacement", "rmsd"} <= set(head)
    fd = conf[:, head.index("framewise_displacement")]
    np.testing.assert_allclose(fd, mo.framewise_displacement(params), atol=1e-5)
    # the same function of the core gives the same series
    core = mo.realign_asl(s["vols"], s["aff"], s["types"], m0=s["vols"][..., 0] * 1.2)
    np.testing.assert_allclose(nb.load(out.asl_corrected).get_fdata(), core.corrected, atol=1e-3)
    # the default detection's findings travel with the result (what the log reports)
    clean, offset = mo.detect_zigzag(core.params_raw, s["types"])
    np.testing.assert_array_equal(core.params, clean)
    np.testing.assert_array_equal(core.zigzag_offset.amplitude, offset.amplitude)
    assert core.zigzag_offset.still_pairs == offset.still_pairs
    other = mo.apply_realignment(
        s["vols"], s["aff"], s["types"], core.params_raw, zigzag_method="interpolate"
    )
    assert other.zigzag_offset is None


def test_hmc_workflow_embedded_runs(tmp_path):
    s = _write_series(tmp_path, n=8)
    wf = spatial.init_asl_hmc_wf(mem_gb=0.1, omp_nthreads=1)
    wf.base_dir = str(tmp_path / "work")
    wf.inputs.inputnode.asl_file = str(s["asl"])
    wf.inputs.inputnode.aslcontext = str(s["ctx"])
    graph = wf.run()
    # identity nodes are dropped from the executed graph: read the realign node
    node = next(n for n in graph.nodes() if n.name == "asl_realign")
    assert os.path.exists(node.result.outputs.asl_corrected)
    assert read_motion(node.result.outputs.motion_params).shape == (8, 6)


def test_nuisance_interface(tmp_path):
    rng = np.random.default_rng(0)
    n, shape = 10, (6, 6, 4)
    types = ["control", "label"] * (n // 2)
    zig = mo.zigzag_regressor(types)
    glob = rng.normal(0, 3, n)
    data = 100 + 5 * zig + glob + rng.normal(0, 0.1, shape + (n,))
    asl = tmp_path / "asl.nii.gz"
    mask = tmp_path / "mask.nii.gz"
    nb.Nifti1Image(data.astype(np.float32), np.diag([3.0, 3.0, 4.0, 1.0])).to_filename(asl)
    nb.Nifti1Image(np.ones(shape, np.uint8), np.diag([3.0, 3.0, 4.0, 1.0])).to_filename(mask)
    res = NuisanceRegression(asl_file=str(asl), mask=str(mask), volume_types=types, fwhm=0.0).run(
        cwd=tmp_path
    )
    out = nb.load(res.outputs.asl_file).get_fdata()
    # the global fluctuation is gone, the zig-zag of amplitude 5 is kept
    resid = out - out.mean(-1, keepdims=True) - 5 * (zig - zig.mean())
    assert np.abs(resid).max() < 0.6
    head, _ = _tsv(res.outputs.design)
    assert head == ["global_signal"]


def test_itk_affine_roundtrip_and_resampling(tmp_path):
    q = mo.params_to_matrix([3.0, -2.0, 5.0, 0.05, -0.03, 0.1], (0, 0, 0))
    path = reg.write_itk_affine(q, tmp_path / "x.mat")
    np.testing.assert_allclose(reg.read_itk_affine(path), q, atol=1e-6)
    pts = np.random.default_rng(0).uniform(-50, 50, (20, 3))
    np.testing.assert_allclose(
        reg.points_through([path], pts), pts @ q[:3, :3].T + q[:3, 3], atol=1e-4
    )
    # resampling through a pure 4 mm shift moves the image content by 4 mm
    img = np.zeros((20, 20, 20), np.float32)
    img[8:12, 8:12, 8:12] = 1
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    src = tmp_path / "src.nii.gz"
    nb.Nifti1Image(img, aff).to_filename(src)
    shift = np.eye(4)
    shift[0, 3] = 4.0  # output point x samples the input at x + 4
    xfm = reg.write_itk_affine(shift, tmp_path / "shift.mat")
    res = ApplyTransformChain(in_file=str(src), reference=str(src), transforms=[xfm]).run(
        cwd=tmp_path
    )
    out = nb.load(res.outputs.out_file).get_fdata()
    np.testing.assert_allclose(out, np.roll(img, -2, axis=0), atol=1e-5)


def test_spm_realign_glue_known_answer(tmp_path):
    s = _write_series(tmp_path, n=8)
    true_rel = []
    first_inv = np.linalg.inv(s["mats"][0])
    for m in s["mats"]:
        true_rel.append(first_inv @ m)
    params = mo.matrix_to_params(np.array(true_rel), s["centre"])
    # SPM's rp row j is spm_imatrix(mat_j / mat_1) of the realigned headers,
    # mat_j = M_j^-1 A: the inverse of our matrix, about the world origin
    rp = mo.matrix_to_params(np.linalg.inv(np.array(true_rel)), (0, 0, 0))
    rp_file = tmp_path / "rp_asl.txt"
    np.savetxt(rp_file, rp)
    np.testing.assert_allclose(mo.spm_rp_to_params(rp, s["centre"]), params, atol=1e-10)
    res = SPMASLRealign(
        asl_file=str(s["asl"]), aslcontext=str(s["ctx"]), realignment_parameters=str(rp_file)
    ).run(cwd=tmp_path)
    np.testing.assert_allclose(read_motion(res.outputs.motion_params_raw), params, atol=1e-6)
    clean = read_motion(res.outputs.motion_params)
    expected = mo.clean_params(params, s["types"], "detect")
    np.testing.assert_allclose(clean, expected, atol=1e-5)


def test_spm_stack_and_coreg_glue(tmp_path):
    s = _write_series(tmp_path, n=4, m0=True)
    stacked = StackForSPM(asl_file=str(s["asl"]), m0_file=str(s["m0"])).run(cwd=tmp_path)
    assert stacked.outputs.out_file.endswith(".nii")
    assert nb.load(stacked.outputs.out_file).shape[-1] == 5

    # SPM Coregister (estimate) only changes the header: new = q @ old
    q = mo.params_to_matrix([5.0, 1.0, -3.0, 0.02, 0.04, -0.05], (0, 0, 0))
    ref = np.random.default_rng(1).random((8, 8, 8)).astype(np.float32)
    aff = np.diag([3.0, 3.0, 4.0, 1.0])
    src, moved = tmp_path / "ref.nii", tmp_path / "rref.nii"
    nb.Nifti1Image(ref, aff).to_filename(src)
    nb.Nifti1Image(ref, q @ aff).to_filename(moved)
    res = SPMCoregToITK(source_file=str(src), coregistered_source=str(moved)).run(cwd=tmp_path)
    pts = np.random.default_rng(2).uniform(-40, 40, (10, 3))
    qinv = np.linalg.inv(q)
    # asl_to_t1w, as a point map, takes T1w points to ASL points
    np.testing.assert_allclose(
        reg.points_through([res.outputs.asl_to_t1w], pts),
        pts @ qinv[:3, :3].T + qinv[:3, 3],
        atol=1e-4,
    )
    back = SetWorldAffine(in_file=str(src), asl_to_t1w=res.outputs.asl_to_t1w).run(cwd=tmp_path)
    np.testing.assert_allclose(nb.load(back.outputs.out_file).affine, q @ aff, atol=1e-4)


def test_spm_tissues_glue(tmp_path):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    shape = (10, 10, 10)
    c = np.zeros((3, *shape), np.float32)
    c[0, 2:8, 2:8, 2:8] = 0.6
    c[1, 2:8, 2:8, 2:8] = 0.4
    c[2, 1, 1, 1] = 0.9  # isolated voxel: dropped from the mask
    files = []
    for k in range(3):
        f = tmp_path / f"c{k + 1}t1.nii"
        nb.Nifti1Image(c[k], aff).to_filename(f)
        files.append([str(f)])
    t1 = tmp_path / "t1.nii"
    nb.Nifti1Image(np.full(shape, 7.0, np.float32), aff).to_filename(t1)
    res = SPMTissues(t1w_file=str(t1), native_class_images=files).run(cwd=tmp_path)
    mask = nb.load(res.outputs.t1w_mask).get_fdata() > 0
    assert mask.sum() == 216 and not mask[1, 1, 1]
    assert nb.load(res.outputs.t1w_brain).get_fdata()[mask].min() == 7.0
    np.testing.assert_allclose(nb.load(res.outputs.gm_t1w).get_fdata(), c[0])


# --------------------------------------------------------------------------
# workflow graphs (built, not run)
# --------------------------------------------------------------------------
def _node(wf, name):
    return wf.get_node(name)


@pytest.mark.parametrize("backend", ["embedded", "spm"])
@pytest.mark.parametrize("has_m0", [False, True])
def test_hmc_graph_contract(backend, has_m0):
    wf = spatial.init_asl_hmc_wf(
        backend=backend, has_m0_file=has_m0, spm_cmd="matlab -nodesktop -nosplash", mem_gb=0.1
    )
    assert set(_node(wf, "inputnode").inputs.copyable_trait_names()) == {
        "asl_file",
        "aslcontext",
        "m0_file",
    }
    assert set(spatial.HMC_OUTPUTS) <= set(_node(wf, "outputnode").inputs.copyable_trait_names())
    assert wf.__desc__
    # with a field map the realignment also undoes the distortion, in the same reslice
    sdc_inputs = {"pe_direction": "j-", "readout_time": 0.03, "fieldmap_frame": "m0"}
    wf_sdc = spatial.init_asl_hmc_wf(backend=backend, has_m0_file=has_m0, sdc=sdc_inputs)
    assert "fieldmap" in _node(wf_sdc, "inputnode").inputs.copyable_trait_names()
    realign = _node(wf_sdc, "spm_asl_realign" if backend == "spm" else "asl_realign")
    assert (realign.inputs.pe_direction, realign.inputs.readout_time) == ("j-", 0.03)
    assert "resampled once" in wf_sdc.__desc__
    if backend == "spm":
        est = _node(wf, "spm_realign")
        assert est.inputs.jobtype == "estimate"
        assert est.inputs.register_to_mean is True
        assert est.interface.inputs.matlab_cmd == "matlab -nodesktop -nosplash"
        conns = {
            (u.name, v.name, src, dst)
            for u, v, d in wf._graph.edges(data=True)
            for src, dst in d["connect"]
        }
        assert ("spm_realign", "spm_asl_realign", "realignment_parameters",
                "realignment_parameters") in conns  # fmt: skip
        assert (("inputnode", "stack_for_spm", "m0_file", "m0_file") in conns) == has_m0
    else:
        node = _node(wf, "asl_realign")
        assert node.inputs.remove_zigzag is True
        assert node.n_procs == 1 and node.mem_gb > 0


@pytest.mark.parametrize("backend", ["embedded", "spm"])
def test_anat_reg_resample_graph_contract(backend):
    anat = spatial.init_anat_wf(
        backend=backend,
        spm_cmd="/opt/spm12/run_spm12.sh /opt/mcr script",
        use_mcr=True,
        output_dir="/tmp/derivs",
        source_file="/data/sub-01/anat/sub-01_T1w.nii.gz",
    )
    assert set(spatial.ANAT_OUTPUTS) <= set(
        _node(anat, "outputnode").inputs.copyable_trait_names()
    )
    assert _node(anat, "ds_t1w_to_mni").inputs.to_space == spatial.TEMPLATE
    # every output is connected (the PVC reads the partial volumes with both backends)
    connected = {
        dst for u, v, d in anat._graph.edges(data=True) if v.name == "outputnode"
        for _, dst in d["connect"]
    }  # fmt: skip
    assert set(spatial.ANAT_OUTPUTS) <= connected
    for t in ("GM", "WM", "CSF"):
        ds = _node(anat, f"ds_{t.lower()}_pv_t1w")
        assert (ds.inputs.label, ds.inputs.desc, ds.inputs.suffix) == (t, "pv", "probseg")
    asl_reg = spatial.init_asl_reg_wf(backend=backend, spm_cmd="matlab")
    assert set(spatial.REG_OUTPUTS) <= set(
        _node(asl_reg, "outputnode").inputs.copyable_trait_names()
    )
    res = spatial.init_resample_wf(backend=backend, spaces=["T1w", "MNI152NLin2009aSym"])
    assert {"mni_file", "t1w_file"} <= set(_node(res, "outputnode").inputs.copyable_trait_names())
    if backend == "spm":
        seg = _node(anat, "spm_segment")
        assert seg.inputs.write_deformation_fields == [True, True]
        assert seg.interface.inputs.use_mcr is True
        assert _node(asl_reg, "spm_coregister").inputs.jobtype == "estimate"
        assert _node(res, "spm_normalise_write").inputs.jobtype == "write"
    else:
        assert _node(anat, "t1w_preproc").inputs.transform == "SyN"
        assert "chain_transforms" in res.list_node_names()
        only_t1w = spatial.init_resample_wf(backend=backend, spaces=["T1w"])
        assert "to_mni" not in only_t1w.list_node_names()


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        spatial.init_asl_hmc_wf(backend="fsl")


@pytest.mark.spm
@pytest.mark.skipif(not HAS_SPM, reason="SPM12/MATLAB not installed (set SPM_CMD to run)")
def test_spm_hmc_runs(tmp_path):  # pragma: no cover - needs SPM
    s = _write_series(tmp_path, n=8)
    wf = spatial.init_asl_hmc_wf(
        backend="spm",
        spm_cmd=os.environ.get("SPM_CMD"),
        use_mcr=bool(os.environ.get("SPM_USE_MCR")),
        mem_gb=0.5,
    )
    wf.base_dir = str(tmp_path / "work")
    wf.inputs.inputnode.asl_file = str(s["asl"])
    wf.inputs.inputnode.aslcontext = str(s["ctx"])
    graph = wf.run()
    node = next(n for n in graph.nodes() if n.name == "spm_asl_realign")
    err = _errors(read_motion(node.result.outputs.motion_params), s["mats"], s["centre"])
    assert err[:, 0].max() < 0.2 and err[:, 1].max() < 0.2
