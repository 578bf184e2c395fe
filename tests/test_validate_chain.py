"""The validation panel's scoring helpers (benchmarks/validate_chain.py)."""

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np

_SPEC = importlib.util.spec_from_file_location(
    "validate_chain", Path(__file__).parents[1] / "benchmarks" / "validate_chain.py"
)
validate_chain = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(validate_chain)


def _sidecar(root: Path, meta: dict) -> Path:
    perf = root / "sub-01" / "perf"
    perf.mkdir(parents=True)
    (perf / "sub-01_asl.json").write_text(json.dumps(meta))
    return root


#: A 2D pCASL sidecar of three slices; each test sets its delays and timing.
_PCASL_2D = {
    "ArterialSpinLabelingType": "PCASL",
    "MRAcquisitionType": "2D",
    "LabelingDuration": 1.8,
    "BackgroundSuppression": False,
    "M0Type": "Separate",
    "MagneticFieldStrength": 3,
    "RepetitionTimePreparation": 4.0,
}

#: QUIPSS II PASL with a 0.8 s bolus, in place of the pCASL labeling.
_PASL = {
    "ArterialSpinLabelingType": "PASL",
    "BolusCutOffFlag": True,
    "BolusCutOffTechnique": "QUIPSSII",
    "BolusCutOffDelayTime": 0.8,
}


def test_att_measurable_follows_each_slice_shortest_delay(tmp_path):
    meta = dict(
        _PCASL_2D, PostLabelingDelay=[1.0, 1.0, 1.5, 1.5, 2.0, 2.0], SliceTiming=[0.0, 0.2, 0.4]
    )
    bids = _sidecar(tmp_path / "pcasl", meta)
    att = np.full((2, 2, 3), 1.3)
    ok = validate_chain.att_measurable(bids, att)
    # shortest effective delays 1.0, 1.2, 1.4 s: 1.3 s is measurable in the first two
    assert ok[..., 0].all() and ok[..., 1].all() and not ok[..., 2].any()

    meta.update(_PASL, MRAcquisitionType="3D")
    meta.pop("SliceTiming")
    meta.pop("LabelingDuration")
    bids = _sidecar(tmp_path / "pasl", meta)
    ok = validate_chain.att_measurable(
        bids, np.stack([np.full((2, 3), 0.1), np.full((2, 3), 0.3)])
    )
    # PASL: the shortest TI (1.0 s) minus TI1 (0.8 s)
    assert not ok[0].any() and ok[1].all()


def test_costly_configurations_run_only_where_asked():
    default = validate_chain.configs_for("sim-clean")
    assert "defaults" in default and "plain" in default
    assert "finetune" not in default  # 60 s of fine-tuning per subject: on request
    assert "study" not in default  # re-runs the realignment: motion subjects only
    assert "study" in validate_chain.configs_for("ph-drift")
    assert validate_chain.configs_for("sim-clean", only=["finetune"]) == ["finetune"]
    assert validate_chain.configs_for("sim-clean", only=["study"]) == []
    assert validate_chain.configs_for("sim-clean", everything=True, only=["study"]) == ["study"]


def _truth(cbf, att):
    cbf = np.asarray(cbf, float)
    return {"cbf": cbf, "att": np.broadcast_to(np.asarray(att, float), cbf.shape)}


def test_whitepaper_floor_is_the_bolus_that_arrived_by_each_slice_readout(tmp_path):
    meta = dict(_PCASL_2D, **_PASL, PostLabelingDelay=1.8, SliceTiming=[0.0, 0.1, 0.4])
    meta.pop("LabelingDuration")
    bids = _sidecar(tmp_path / "pasl", meta)
    floor = validate_chain.whitepaper_floor(bids, _truth(np.full((2, 2, 3), 60.0), 1.2))
    # TI - ATT per slice: 0.6, 0.7 and 1.0 s of a 0.8 s bolus have arrived
    np.testing.assert_allclose(floor[0, 0], [45.0, 52.5, 60.0])

    meta.update(ArterialSpinLabelingType="PCASL", LabelingDuration=1.8, MRAcquisitionType="3D")
    for key in ("BolusCutOffFlag", "BolusCutOffTechnique", "BolusCutOffDelayTime", "SliceTiming"):
        meta.pop(key)
    bids = _sidecar(tmp_path / "pcasl", meta)
    truth = _truth([[[50.0, 0.0, 50.0]]], [[[1.0, 1.0, 2.7]]])
    floor = validate_chain.whitepaper_floor(bids, truth)
    # arrived before the readout: exact; CSF stays 0. ATT 2.7 s: the last 0.9 s of
    # the 1.8 s bolus is still in transit at the readout (3.6 s), and what has
    # arrived decayed for 0.9 s longer in transit than the equation assumes
    assert floor[0, 0, 0] == 50.0 and floor[0, 0, 1] == 0.0
    t1b = 1.65
    arrived = np.exp(-2.7 / t1b) * -np.expm1(-0.9 / t1b)
    assumed = np.exp(-1.8 / t1b) * -np.expm1(-1.8 / t1b)
    np.testing.assert_allclose(floor[0, 0, 2], 50.0 * arrived / assumed)

    meta["PostLabelingDelay"] = [1.0, 1.0, 2.0, 2.0]
    bids = _sidecar(tmp_path / "multi", meta)
    assert validate_chain.whitepaper_floor(bids, truth) is None


def test_3d_floor_spills_through_plane_as_the_readout_blurs_the_images(tmp_path):
    meta = dict(_PCASL_2D, MRAcquisitionType="3D", PostLabelingDelay=1.8)
    bids = _sidecar(tmp_path / "pcasl3d", meta)
    sim = bids / "derivatives" / "simulation" / "sub-01" / "perf"
    sim.mkdir(parents=True)
    affine = np.eye(4)

    def with_m0(m0):
        nib.save(nib.Nifti1Image(np.asarray(m0, np.float32), affine),
                 sim / "sub-01_desc-true_m0.nii.gz")  # fmt: skip

    blur = validate_chain.readout_blur("sim", {"readout": "3D"})
    # a uniform flow reads uniform whatever the M0 (ΔM and M0 blur alike)
    with_m0(np.broadcast_to([1.0, 3.0, 1.0, 2.0, 5.0, 1.0, 1.0], (2, 2, 7)))
    floor = validate_chain.whitepaper_floor(bids, _truth(np.full((2, 2, 7), 50.0), 1.0), blur)
    np.testing.assert_allclose(floor, 50.0, rtol=1e-6)
    # GM in one slice among WM under a uniform M0: the GM reads low, the WM beside
    # it high by the same amount of flow, and the flow through-plane is kept
    with_m0(np.ones((2, 2, 7)))
    cbf = np.broadcast_to([20.0, 20.0, 20.0, 60.0, 20.0, 20.0, 20.0], (2, 2, 7))
    floor = validate_chain.whitepaper_floor(bids, _truth(cbf, 1.0), blur)
    assert floor[0, 0, 3] < 60.0 and floor[0, 0, 2] == floor[0, 0, 4] > 20.0
    np.testing.assert_allclose(floor[0, 0].sum(), cbf[0, 0].sum(), rtol=1e-6)
    assert validate_chain.whitepaper_floor(bids, _truth(cbf, 1.0))[0, 0, 2] == 20.0


def test_readout_blur_is_each_generators_own():
    from asl_pipeline.simulate import phantom, series

    assert validate_chain.readout_blur("sim", {}) is None
    assert validate_chain.readout_blur("phantom", {"readout": "2D"}) is None
    edge = np.zeros((1, 1, 9))
    edge[0, 0, 0] = 1.0  # at the edge slice, where the two generators differ
    for generator, module, fwhm in (("sim", series, 1.2), ("phantom", phantom, 1.5)):
        blurred = validate_chain.readout_blur(generator, {"readout": "3D"})(edge)
        own = series.through_plane_blur(edge, fwhm, mode=module.Z_BLUR_MODE)
        np.testing.assert_array_equal(blurred, own)
        assert 0.4 < blurred[0, 0, 0] < 1.0
    assert (series.Z_BLUR_MODE, phantom.Z_BLUR_MODE) == ("nearest", "reflect")


def test_replicates_keep_the_subject_and_change_only_the_seed():
    entry = ("sim-slabs", "sim", 107, {"noise_scale": 0.7})
    reps = validate_chain.replicates(entry, 3)
    assert reps[0] == entry
    assert [r[2] for r in reps] == [107, 5107, 10107]
    assert [r[0] for r in reps[1:]] == ["sim-slabs-s5107", "sim-slabs-s10107"]
    assert all(r[1] == "sim" and r[3] == entry[3] for r in reps)
    seeds = {p[2] for p in validate_chain.PANEL}
    assert not seeds & {r[2] for r in reps[1:]}


def test_replicate_table_gives_mean_and_spread_over_the_draws():
    reps = validate_chain.replicates(("sim-slabs", "sim", 107, {}), 3)
    rows = []
    for (name, *_), (gm, wm) in zip(reps, [(-6.0, 10.0), (2.0, 20.0), (1.0, 12.0)], strict=True):
        for config, desc in (("defaults", "paocsl"), ("oracle", "cleaned")):
            rows.append(
                {"subject": name, "config": config, "map": desc, "gm_err_pct": gm,
                 "wm_err_pct": wm}
            )  # fmt: skip
    table = validate_chain.replicate_table(rows, {"sim-slabs": [r[0] for r in reps]})
    line = table.splitlines()[-1]
    # mean GM -1.0 (SD 4.4), WM +14.0 (SD 5.3); GM within 5% in 2 draws, WM within 15% in 2
    assert line.startswith("| sim-slabs | 3 | -1.0 (4.4) | +14.0 (5.3) | 2 / 2 |")
