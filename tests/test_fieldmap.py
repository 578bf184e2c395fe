"""Phase-difference and direct field maps (asl_pipeline.fieldmap) against known answers."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline import fieldmap as fm
from asl_pipeline import sdc
from asl_pipeline.bids import collect_runs
from asl_pipeline.errors import ASLInputError
from asl_pipeline.simulate import simulate_subject, write_subject
from asl_pipeline.simulate.motion import motion_matrix

TE = {"EchoTime1": 0.00492, "EchoTime2": 0.00738}
DTE = 0.00246
TRT = 0.0245  # TotalReadoutTime of the simulated ASL readout: 1 voxel = 1 / 0.0245 Hz


# --------------------------------------------------------------------------
# conversions to Hz


def test_phasediff_in_radians_to_hz():
    field = np.array([-180.0, -50.0, 0.0, 20.0, 150.0, 200.0])
    hz, how = fm.phasediff_to_hz(2 * np.pi * DTE * field, TE, "x_phasediff.nii.gz")
    assert how == "radians"
    np.testing.assert_allclose(hz, field, atol=1e-9)


def test_siemens_integer_phase_to_hz():
    field = np.linspace(-200.0, 200.0, 41)
    phase = 2 * np.pi * DTE * field
    raw = np.mod(np.round((phase + np.pi) * 4096 / (2 * np.pi)), 4096).astype(np.uint16)
    raw = np.r_[raw, 0, 4095]  # the full range, so that it cannot be read as radians
    hz, how = fm.phasediff_to_hz(raw, TE)
    assert how.startswith("Siemens integers 0..4095")
    # one integer step is 1 / (4096 dTE) = 0.099 Hz: half of it at most
    np.testing.assert_allclose(hz[:-2], field, atol=0.5 / (4096 * DTE) + 1e-9)
    # -4096..4094 (slope 2 and intercept -4096 applied by the reader): pi v / 4096
    scaled = 2.0 * raw - 4096.0
    hz2, how2 = fm.phasediff_to_hz(scaled, TE)
    assert how2.startswith("scaled Siemens phase")
    np.testing.assert_allclose(hz2, hz, atol=1e-9)


def test_phase_beyond_the_unambiguous_range_wraps():
    # +-1 / (2 dTE) = +-203.25 Hz: 250 Hz comes back as 250 - 1/dTE (the
    # conversion alone; prepare_field unwraps in the head mask, see below)
    hz, _ = fm.phasediff_to_hz(np.array([2 * np.pi * DTE * 250.0]), TE)
    assert hz[0] == pytest.approx(250.0 - 1 / DTE)


@pytest.mark.parametrize(
    ("units", "value", "hz"),
    [
        ("Hz", 50.0, 50.0),
        ("rad/s", 2 * np.pi * 50.0, 50.0),
        ("T", 1e-6, 42.577478518),
        ("Tesla", -2e-6, -85.154957036),
    ],
)
def test_direct_field_map_units_to_hz(units, value, hz):
    out, note = fm.field_to_hz(np.array([value]), "fieldmap", {"Units": units})
    assert out[0] == pytest.approx(hz, rel=1e-9)
    assert units in note


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"EchoTime2": 0.00738}, "EchoTime1"),
        ({"EchoTime1": 0.00492}, "EchoTime2"),
        ({"EchoTime1": 0.00738, "EchoTime2": 0.00492}, "EchoTime2"),
        ({"EchoTime1": 0.00492, "EchoTime2": 0.00492}, "EchoTime2"),
        ({"EchoTime1": 4.92, "EchoTime2": 7.38}, "EchoTime2"),  # milliseconds
        ({"EchoTime1": "4.92ms", "EchoTime2": 0.00738}, "EchoTime1"),
    ],
)
def test_bad_echo_times_refused(metadata, field):
    with pytest.raises(ASLInputError) as err:
        fm.echo_time_difference(metadata, "sub-01_phasediff.json")
    assert (err.value.field, err.value.file) == (field, "sub-01_phasediff.json")
    assert "EchoTime" in err.value.fix and "--ignore fieldmaps" in err.value.fix


@pytest.mark.parametrize("units", [None, "ppm", "Hertz", 3])
def test_unknown_units_refused(units):
    md = {} if units is None else {"Units": units}
    with pytest.raises(ASLInputError) as err:
        fm.units_to_hz(md, "sub-01_fieldmap.json")
    assert (err.value.field, err.value.file) == ("Units", "sub-01_fieldmap.json")
    assert '"Hz", "rad/s" or "T"' in err.value.fix


def test_phase_values_that_are_neither_radians_nor_integers_refused():
    with pytest.raises(ASLInputError, match="neither radians") as err:
        fm.phase_to_radians(np.array([0.0, 9000.0]), "sub-01_phasediff.nii.gz")
    assert err.value.file == "sub-01_phasediff.nii.gz"


def test_magnitude_on_another_grid_refused():
    fmap = fm.FieldmapFiles("phasediff", "p.nii.gz", dict(TE), "m.nii.gz")
    grids = {"p.nii.gz": ((8, 8, 4), np.eye(4)), "m.nii.gz": ((8, 8, 4), np.eye(4))}
    fm.check_fieldmap(fmap, grids)  # same grid: accepted
    for other in (((8, 8, 5), np.eye(4)), ((8, 8, 4), np.diag([2.0, 1, 1, 1]))):
        with pytest.raises(ASLInputError, match="magnitude must be on the field map") as err:
            fm.check_fieldmap(fmap, dict(grids, **{"m.nii.gz": other}))
        assert err.value.file == "m.nii.gz" and err.value.field == "image dimensions/affine"
    with pytest.raises(ASLInputError) as err:
        fm.check_fieldmap(fm.FieldmapFiles("fieldmap", "p.nii.gz", {}, "m.nii.gz"), grids)
    assert err.value.field == "Units"


# --------------------------------------------------------------------------
# phase unwrapping


def _wrap(hz, period):
    return (hz + period / 2) % period - period / 2


def test_unwrap_field_recovers_a_field_spanning_several_periods():
    period = 1 / DTE  # 406.5 Hz
    shape = (40, 44, 20)
    x, y, z = np.indices(shape).astype(float)
    # 1100 Hz above the orbits, -300 Hz at the other end: several periods of phase
    true = 1100 * np.exp(-((x - 20) ** 2 + (y - 36) ** 2 + (z - 5) ** 2) / (2 * 8.0**2)) - 7 * y
    true += 150  # the head's median ends up near 0 after the periods are chosen
    mask = ((x - 20) / 17) ** 2 + ((y - 22) / 19) ** 2 + ((z - 10) / 9) ** 2 < 1
    blob = ((x - 20) ** 2 + (y - 3) ** 2 + (z - 17) ** 2) < 4  # not connected to the head
    mask |= blob
    wrapped = _wrap(true, period)
    assert np.abs(wrapped - true)[mask].max() > 1.5 * period  # it wraps more than once
    out, moved = fm.unwrap_field(wrapped, mask, period)
    # the unwrapped field is the truth up to one whole number of periods, and
    # that number puts the head's median nearest 0 Hz
    shift = period * np.round(np.median(true[mask]) / period)
    np.testing.assert_allclose(out[mask], true[mask] - shift, atol=1e-6)
    assert abs(np.median(out[mask])) <= period / 2
    assert moved == int((np.abs(true - shift - wrapped) > period / 2)[mask].sum()) > 0
    np.testing.assert_array_equal(out[~mask], wrapped[~mask])  # outside: as given
    # a field within the unambiguous range comes back as it is
    small = 0.15 * (true - np.median(true[mask]))
    assert np.abs(small[mask]).max() < period / 2
    same, moved = fm.unwrap_field(small, mask, period)
    np.testing.assert_allclose(same, small, atol=1e-6)
    assert moved == 0


@pytest.mark.slow
def test_a_field_beyond_the_unambiguous_range_is_unwrapped_on_the_asl_grid():
    # the simulator's field doubled: up to about 350 Hz in the head, beyond the
    # +-203 Hz of the 2.46 ms phase difference, so the stored phase wraps
    sub = simulate_subject(
        7, n_pairs=2, motion=False, outliers=False, t1w=False, distortion=True,
        fieldmap="phasediff", distortion_scale=2.0,
    )  # fmt: skip
    f = sub.fieldmap
    assert np.abs(f.field_hz).max() > 1 / (2 * DTE)
    brain = sub.brain_mask
    errors = {}
    for unwrap in (False, True):
        res = fm.prepare_field(
            f.data, f.magnitudes[0], f.affine, sub.m0, sub.asl_affine, kind="phasediff",
            metadata=f.metadata, unwrap=unwrap,
        )  # fmt: skip
        errors[unwrap] = np.abs(res.field_hz - sub.field_hz)[brain] * TRT
    # 2026-12-04, seed 7 (field x2.5): wrapped mean 0.23 / p99 9.3 voxel;
    # unwrapped 0.012 / 0.11
    assert np.percentile(errors[False], 99) > 3.0
    assert errors[True].mean() < 0.03 and np.percentile(errors[True], 99) < 0.2
    assert "phase unwrapped" in res.note


# --------------------------------------------------------------------------
# smooth fit and resampling


def test_smooth_fit_recovers_a_smooth_field_and_extrapolates_smoothly():
    shape, zooms = (40, 44, 20), (2.5, 2.5, 4.0)
    x, y, z = (np.indices(shape).T * np.asarray(zooms)).T
    true = 120 * np.exp(-((x - 50) ** 2 + (y - 70) ** 2 + (z - 30) ** 2) / (2 * 18.0**2)) + 0.1 * x
    mask = ((x - 50) / 40) ** 2 + ((y - 55) / 45) ** 2 + ((z - 40) / 30) ** 2 < 1
    noisy = true + np.random.default_rng(0).normal(0, 5.0, shape)
    noisy[~mask] = np.random.default_rng(1).uniform(-400, 400, (~mask).sum())  # noise outside
    fit = fm.fit_smooth_field(noisy, mask, zooms)
    err = np.abs(fit - true)[mask]
    assert err.mean() < 1.5  # noise SD 5 Hz, averaged over the control-point support
    # outside the head: bounded and continuous, not the +-400 Hz garbage
    assert np.abs(fit[~mask]).max() < 1.5 * np.abs(true).max()
    assert np.abs(np.diff(fit, axis=0)).max() < 15


def test_resample_field_through_a_known_rigid_map_reproduces_a_linear_field():
    src_aff = np.diag([2.0, 2.0, 3.0, 1.0])
    src_aff[:3, 3] = (-40, -40, -30)
    idx = np.indices((41, 41, 21)).reshape(3, -1)
    world = (src_aff[:3, :3] @ idx + src_aff[:3, 3:4]).reshape((3, 41, 41, 21))
    slope = np.array([0.5, -1.0, 2.0])
    field = np.tensordot(slope, world, 1) + 10.0
    tgt_aff = np.diag([3.4, 3.4, 6.0, 1.0])
    tgt_aff[:3, 3] = (-20, -20, -15)
    theta = np.deg2rad(3.0)
    move = np.eye(4)
    move[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    move[:3, 3] = (1.5, -2.0, 0.7)
    out = fm.resample_field(field, src_aff, (12, 12, 6), tgt_aff, move)
    idx_t = np.indices((12, 12, 6)).reshape(3, -1)
    pts = (move @ tgt_aff @ np.r_[idx_t, np.ones((1, idx_t.shape[1]))])[:3]
    expected = (slope @ pts + 10.0).reshape((12, 12, 6))
    # exact up to the cubic spline's boundary condition (mirror at the grid's ends)
    np.testing.assert_allclose(out, expected, atol=5e-3)


# --------------------------------------------------------------------------
# against the simulator's true field, through the registration


@pytest.fixture(scope="module", params=["phasediff", "fieldmap"])
def simulated(request):
    # no head motion: the M0 (the fixed image) is at the pose of the first ASL
    # volume, where the true field is written; the field map has its own pose
    sub = simulate_subject(
        7, n_pairs=2, motion=False, outliers=False, t1w=False, distortion=True,
        fieldmap=request.param,
    )  # fmt: skip
    return request.param, sub


def test_field_on_the_asl_grid_matches_the_true_field(simulated):
    kind, sub = simulated
    f = sub.fieldmap
    assert f.data.shape != sub.asl.shape[:3]  # its own grid
    res = fm.prepare_field(
        f.data, f.magnitudes[0], f.affine, sub.m0, sub.asl_affine, kind=kind, metadata=f.metadata
    )
    brain = sub.brain_mask
    err_vox = np.abs(res.field_hz - sub.field_hz)[brain] * TRT
    true_vox = np.abs(sub.field_hz[brain]) * TRT
    # seed 7 (2026-12-04): error mean 0.0050 (phasediff) and 0.0034-0.0044 (fieldmap;
    # ANTs' threads vary it), p99 0.03-0.044, max 0.08-0.11 voxel; the true
    # displacement: mean 0.24, max above 2 voxels
    p99 = np.percentile(err_vox, 99)
    print(f"{kind}: error mean {err_vox.mean():.4f} p99 {p99:.3f} max {err_vox.max():.3f} "
          f"voxel; true displacement mean {true_vox.mean():.3f}")  # fmt: skip
    assert true_vox.max() > 2.0
    assert err_vox.mean() < 0.02 and p99 < 0.1
    # the registration found the field map's own head position (0.8 mm, 1 degree)
    expected = motion_matrix(f.motion, f.affine, f.data.shape)
    ijk = np.argwhere(brain).T
    pts = sub.asl_affine @ np.r_[ijk, np.ones((1, ijk.shape[1]))]
    miss = np.linalg.norm((res.target_to_field @ pts - expected @ pts)[:3], axis=0)
    assert miss.mean() < 0.5  # mm


def test_interface_writes_the_field_on_the_asl_grid(simulated, tmp_path):
    from asl_pipeline.interfaces.sdc import PrepareFieldmap

    kind, sub = simulated
    if kind != "phasediff":
        pytest.skip("one interface run is enough (phasediff, the integer phase)")
    f = sub.fieldmap
    paths = {}
    for name, data, aff in (("phasediff", f.data, f.affine), ("magnitude1", f.magnitudes[0],
                            f.affine), ("m0scan", sub.m0, sub.asl_affine)):  # fmt: skip
        paths[name] = tmp_path / f"sub-01_{name}.nii.gz"
        nib.Nifti1Image(np.asarray(data), aff).to_filename(paths[name])
    res = PrepareFieldmap(
        kind="phasediff", fieldmap_file=str(paths["phasediff"]),
        magnitude_file=str(paths["magnitude1"]), metadata=f.metadata,
        reference_file=str(paths["m0scan"]), frame="m0",
    ).run(cwd=tmp_path)  # fmt: skip
    img = nib.load(res.outputs.fieldmap)
    assert img.shape == sub.asl.shape[:3] and np.allclose(img.affine, sub.asl_affine)
    err = np.abs(img.get_fdata() - sub.field_hz)[sub.brain_mask] * TRT
    assert err.mean() < 0.02
    record = json.loads(open(res.outputs.fieldmap_json).read())
    assert record["Units"] == "Hz" and record["ValuesReadAs"].startswith("Siemens integers")
    # without a separate M0: registered to the first volume of the ASL series
    series = tmp_path / "sub-01_asl.nii.gz"
    nib.Nifti1Image(np.asarray(sub.asl), sub.asl_affine).to_filename(series)
    res = PrepareFieldmap(
        kind="phasediff", fieldmap_file=str(paths["phasediff"]),
        magnitude_file=str(paths["magnitude1"]), metadata=f.metadata,
        reference_file=str(series), frame="reference",
    ).run(cwd=tmp_path)  # fmt: skip
    err = np.abs(nib.load(res.outputs.fieldmap).get_fdata() - sub.field_hz)[sub.brain_mask]
    assert (err * TRT).mean() < 0.02


# --------------------------------------------------------------------------
# finding the field map of a BIDS run


def _small(kind, tmp_path):
    sub = simulate_subject(
        5, n_pairs=2, shape=(24, 24, 8), voxel_size=(6.0, 6.0, 8.0), distortion=True,
        fieldmap=kind, t1w=False,
    )  # fmt: skip
    write_subject(tmp_path, "01", sub)
    (tmp_path / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0"})
    )
    return sub


def _edit(path, **changes):
    md = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            md.pop(key, None)
        else:
            md[key] = value
    path.write_text(json.dumps(md))


def test_written_phasediff_is_found_and_checked(tmp_path):
    _small("phasediff", tmp_path)
    fmap = tmp_path / "sub-01" / "fmap"
    (run,) = collect_runs(tmp_path, require_t1w=False)
    assert [p.name for p, _ in run.fieldmap_files] == ["sub-01_phasediff.nii.gz"]
    assert run.m0_pepolar_files == ()
    source = sdc.field_source(run)
    assert isinstance(source, fm.FieldmapSource)
    assert source.fmap.kind == "phasediff"
    assert source.fmap.magnitude_file.endswith("sub-01_magnitude1.nii.gz")
    assert (source.frame, source.asl_pe.direction) == ("m0", "j")
    assert source.reference_file.endswith("perf/sub-01_m0scan.nii.gz")
    # matched through B0FieldIdentifier/B0FieldSource alone as well
    _edit(fmap / "sub-01_phasediff.json", IntendedFor=None)
    (run,) = collect_runs(tmp_path, require_t1w=False)
    assert [p.name for p, _ in run.fieldmap_files] == ["sub-01_phasediff.nii.gz"]
    # and not at all when neither names the run
    _edit(tmp_path / "sub-01/perf/sub-01_asl.json", B0FieldSource=None)
    (run,) = collect_runs(tmp_path, require_t1w=False)
    assert run.fieldmap_files == () and sdc.field_source(run) is None
    _edit(tmp_path / "sub-01/perf/sub-01_asl.json", B0FieldSource="gre0")
    # refusals, before any work
    _edit(fmap / "sub-01_phasediff.json", EchoTime2=None)
    (run,) = collect_runs(tmp_path, require_t1w=False)
    with pytest.raises(ASLInputError) as err:
        sdc.field_source(run)
    assert err.value.field == "EchoTime2" and err.value.file.endswith("sub-01_phasediff.nii.gz")
    _edit(fmap / "sub-01_phasediff.json", EchoTime2=0.00738)
    _edit(tmp_path / "sub-01/perf/sub-01_asl.json", TotalReadoutTime=None)
    (run,) = collect_runs(tmp_path, require_t1w=False)
    with pytest.raises(ASLInputError) as err:
        sdc.field_source(run)
    assert err.value.field == "TotalReadoutTime" and err.value.file.endswith("sub-01_asl.json")
    _edit(tmp_path / "sub-01/perf/sub-01_asl.json", TotalReadoutTime=TRT)
    # phase values that are neither radians nor the scanner's integers: refused
    # in the pre-flight, not in the node
    phase = fmap / "sub-01_phasediff.nii.gz"
    loaded = nib.load(phase)
    good = nib.Nifti1Image(np.asarray(loaded.dataobj), loaded.affine, loaded.header)  # in memory
    bad = np.asarray(good.dataobj, np.float32) * 10 + 9000.0
    nib.Nifti1Image(bad, good.affine).to_filename(phase)
    (run,) = collect_runs(tmp_path, require_t1w=False)
    with pytest.raises(ASLInputError, match="neither radians") as err:
        sdc.field_source(run)
    assert err.value.field == "data (phase difference)"
    assert err.value.file.endswith("sub-01_phasediff.nii.gz")
    good.to_filename(phase)
    (run,) = collect_runs(tmp_path, require_t1w=False)
    assert sdc.field_source(run).fmap.kind == "phasediff"  # restored: accepted again
    mag = fmap / "sub-01_magnitude1.nii.gz"
    img = nib.load(mag)
    nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine).to_filename(mag)
    (run,) = collect_runs(tmp_path, require_t1w=False)
    with pytest.raises(ASLInputError, match="magnitude must be on") as err:
        sdc.field_source(run)
    assert err.value.file.endswith("sub-01_magnitude1.nii.gz")
    mag.unlink()
    (run,) = collect_runs(tmp_path, require_t1w=False)
    with pytest.raises(ASLInputError, match="no magnitude image") as err:
        sdc.field_source(run)
    assert err.value.field == "magnitude1"


def test_phase1_phase2_maps_refused_by_name(tmp_path):
    _small("phasediff", tmp_path)
    fmap = tmp_path / "sub-01" / "fmap"
    for name in ("phase1", "phase2"):
        shutil.copy(fmap / "sub-01_phasediff.nii.gz", fmap / f"sub-01_{name}.nii.gz")
        shutil.copy(fmap / "sub-01_phasediff.json", fmap / f"sub-01_{name}.json")
    (fmap / "sub-01_phasediff.nii.gz").unlink()
    (fmap / "sub-01_phasediff.json").unlink()
    (run,) = collect_runs(tmp_path, require_t1w=False)
    with pytest.raises(ASLInputError, match="not support") as err:
        sdc.field_source(run)
    assert err.value.file.endswith("sub-01_phase1.nii.gz") and "phasediff" in err.value.fix


def test_direct_field_map_units_checked_before_work(tmp_path):
    _small("fieldmap", tmp_path)
    (run,) = collect_runs(tmp_path, require_t1w=False)
    source = sdc.field_source(run)
    assert source.fmap.kind == "fieldmap"
    assert source.fmap.magnitude_file.endswith("sub-01_magnitude.nii.gz")
    _edit(tmp_path / "sub-01/fmap/sub-01_fieldmap.json", Units="ppm")
    (run,) = collect_runs(tmp_path, require_t1w=False)
    with pytest.raises(ASLInputError) as err:
        sdc.field_source(run)
    assert err.value.field == "Units" and err.value.file.endswith("sub-01_fieldmap.nii.gz")


def test_pepolar_and_phasediff_choice_follows_b0fieldsource(tmp_path, caplog):
    root, other = tmp_path / "a", tmp_path / "b"
    _small("pepolar", root)
    _small("phasediff", other)
    fmap = root / "sub-01" / "fmap"
    for path in (other / "sub-01" / "fmap").iterdir():
        shutil.copy(path, fmap / path.name)
    asl_json = root / "sub-01/perf/sub-01_asl.json"
    assert json.loads(asl_json.read_text())["B0FieldSource"] == "pepolar0"
    (run,) = collect_runs(root, require_t1w=False)
    assert isinstance(sdc.field_source(run), sdc.PepolarPair)  # named by B0FieldSource
    _edit(asl_json, B0FieldSource="gre0")
    (run,) = collect_runs(root, require_t1w=False)
    with caplog.at_level("INFO", logger="nipype.workflow"):
        chosen = sdc.field_source(run)
    assert isinstance(chosen, fm.FieldmapSource) and chosen.fmap.kind == "phasediff"
    assert "using the phasediff (named by B0FieldSource)" in caplog.text
    _edit(asl_json, B0FieldSource=["gre0", "pepolar0"])  # both named: PEPOLAR
    (run,) = collect_runs(root, require_t1w=False)
    assert isinstance(sdc.field_source(run), sdc.PepolarPair)
    _edit(asl_json, B0FieldSource=None)  # neither (matched by IntendedFor): PEPOLAR
    (run,) = collect_runs(root, require_t1w=False)
    assert isinstance(sdc.field_source(run), sdc.PepolarPair)


def test_simulated_field_map_changes_nothing_else():
    kw = dict(n_pairs=2, shape=(24, 24, 8), voxel_size=(6.0, 6.0, 8.0), t1w=False)
    pepolar = simulate_subject(5, distortion=True, **kw)
    gre = simulate_subject(5, distortion=True, fieldmap="phasediff", **kw)
    np.testing.assert_array_equal(pepolar.asl, gre.asl)
    np.testing.assert_array_equal(pepolar.m0, gre.m0)
    assert pepolar.fieldmap is None and gre.m0_reverse is None
    f = gre.fieldmap
    assert f.data.dtype == np.uint16 and f.data.max() < 4096
    assert f.affine[0, 0] == pytest.approx(0.75 * 6.0)  # finer than the ASL grid
    assert not np.allclose(f.affine[:3, 3], pepolar.asl_affine[:3, 3])
    assert f.metadata == {"EchoTime1": 0.00492, "EchoTime2": 0.00738}
    with pytest.raises(ValueError, match="fieldmap must be"):
        simulate_subject(5, distortion=True, fieldmap="phase1", **kw)


def test_without_a_separate_m0_the_first_asl_volume_is_the_reference(tmp_path):
    sub = simulate_subject(
        5, n_pairs=2, shape=(24, 24, 8), voxel_size=(6.0, 6.0, 8.0), distortion=True,
        fieldmap="fieldmap", m0_type="Included", t1w=False,
    )  # fmt: skip
    write_subject(tmp_path, "01", sub)
    (tmp_path / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.10.0"})
    )
    (run,) = collect_runs(tmp_path, require_t1w=False)
    source = sdc.field_source(run)
    assert (source.frame, source.m0_pe) == ("reference", None)
    assert source.reference_file.endswith("perf/sub-01_asl.nii.gz")


def test_report_caption_names_the_kind_of_field_map(tmp_path):
    from asl_pipeline.subject_report import _field_origin

    path = tmp_path / "sub-01_fmapid-auto00000_desc-preproc_fieldmap.nii.gz"
    assert _field_origin(path).startswith("estimated from the reverse phase-encoded M0 pair")
    sidecar = tmp_path / "sub-01_fmapid-auto00000_desc-preproc_fieldmap.json"
    sidecar.write_text(json.dumps({"Units": "Hz", "FieldmapType": "phasediff"}))
    assert _field_origin(path).startswith("measured with the phase-difference field map")
    sidecar.write_text(json.dumps({"Units": "Hz", "FieldmapType": "fieldmap"}))
    assert _field_origin(path).startswith("measured with the B0 field map")
