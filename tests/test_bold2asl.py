"""BOLD-to-ASL prediction (methods spec 6.4): data, normalisation, training, guards, CLI."""

import json
import tomllib

import nibabel as nb
import numpy as np
import pytest
import torch
from _bidsfactory import SIM_BIDS_SMALL

from asl_pipeline.cli.train import load_bids, main
from asl_pipeline.errors import ASLInputError
from asl_pipeline.interfaces.denoise import BOLDToCBF, DWANDenoise
from asl_pipeline.metrics import psnr
from asl_pipeline.models import DWAN, build_model, load_model, save_model
from asl_pipeline.models.inference import denoise_cbf, denoise_volume, predict_cbf_from_bold
from asl_pipeline.models.io import default_weights_path, file_sha256
from asl_pipeline.models.normalise import bold_scale
from asl_pipeline.simulate import simulate_cbf_series, simulate_dataset
from asl_pipeline.training import (
    Subject,
    TrainConfig,
    build_examples,
    segment_means,
    train,
)


def make_bold_phantom(seed, shape=(32, 32, 4), n_pairs=40, noise=25.0, gain_amp=0.35):
    """A 'brain' (WM core 25, GM rim 60 mL/100 g/min) with a BOLD-like image.

    The BOLD image follows the tissue (GM 1.3 x WM) times a smooth gain field
    (a ramp of +-``gain_amp`` in a random direction, as a receive coil makes)
    and an arbitrary global scale; 2% noise per pair. The gain field makes
    WM at high gain as bright as GM at low gain, so one global line from
    intensity to CBF cannot separate them, while local contrast can.
    """
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    cx, cy = shape[0] / 2 + rng.uniform(-2, 2), shape[1] / 2 + rng.uniform(-2, 2)
    r = np.sqrt(((x - cx) / 13) ** 2 + ((y - cy) / 11) ** 2)
    brain = r < 1
    wm = r < 0.6
    truth2 = np.where(wm, 25.0, 60.0) * brain
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (x - cx) + np.sin(angle) * (y - cy)) / (shape[0] / 2)
    bold2 = np.where(wm, 1.0, 1.3) * (1.0 + gain_amp * ramp) * brain * rng.uniform(200, 2000)
    truth = np.repeat(truth2[..., None], shape[2], 2).astype(np.float32)
    bold = np.repeat(bold2[..., None], shape[2], 2).astype(np.float32)
    mask = np.repeat(brain[..., None], shape[2], 2)
    cbf_noise = noise * rng.standard_normal(shape + (n_pairs,)).astype(np.float32)
    bold_noise = 1.0 + 0.02 * rng.standard_normal(shape + (n_pairs,)).astype(np.float32)
    return Subject(
        f"bold{seed}",
        truth[..., None] + cbf_noise,
        mask,
        truth=truth,
        bold=bold[..., None] * bold_noise,
    )


def tiny(arch="dwan", seed=0, input_kind="bold"):
    torch.manual_seed(seed)
    kw = {
        "dwan": dict(width=8, expansion=2, depth=2, global_dilations=(2, 4)),
        "unet": dict(width=4, levels=2),
        "dilatednet": dict(width=4, depth=2, dilations=(2, 4)),
    }[arch]
    return build_model(arch, input_kind=input_kind, **kw).eval()


# ------------------------------------------------------------------ simulator
def test_simulator_mean_series_is_the_label_control_average_and_draws_nothing():
    kw = dict(n_pairs=4, shape=(24, 24, 8), voxel_size=(8.0, 8.0, 14.0))
    plain = simulate_cbf_series(11, **kw)
    both = simulate_cbf_series(11, mean_series=True, **kw)
    assert plain.mean_series is None and both.mean_series.shape == (24, 24, 8, 4)
    # the random stream is not consumed differently: every other output is identical
    assert np.array_equal(plain.cbf_series, both.cbf_series)
    assert np.array_equal(plain.motion, both.motion)
    assert plain.outlier_pairs == both.outlier_pairs
    assert plain.outlier_slices == both.outlier_slices
    # no noise, motion or outliers: control = static, label = static - dM, so
    # mean + dM / 2 (dM = CBF x sensitivity) is the same static image in every pair
    quiet = simulate_cbf_series(
        11, mean_series=True, noise_scale=0.0, motion_scale=0.0, outliers=False, **kw
    )
    brain = quiet.brain_mask
    deltam = quiet.cbf_series * quiet.sensitivity[..., None]
    control = quiet.mean_series + 0.5 * deltam
    assert np.allclose(control, control[..., :1], rtol=1e-5, atol=1e-3)
    assert np.all(quiet.mean_series[brain] > 0)
    assert np.any(deltam[brain] > 0)  # the label is darker than the control


# -------------------------------------------------------------- normalisation
@pytest.mark.parametrize("arch", ["dwan", "unet", "dilatednet"])
def test_bold_model_output_does_not_depend_on_the_global_intensity_scale(arch):
    model = tiny(arch, seed=3)
    rng = np.random.default_rng(0)
    mask = np.zeros((20, 24, 3), bool)
    mask[3:17, 4:20] = True
    bold = np.where(mask, rng.uniform(300, 900, mask.shape), 0).astype(np.float32)
    out = denoise_volume(model, bold, mask)
    out10 = denoise_volume(model, 10 * bold, mask)
    assert np.abs(out[mask]).max() > 0 and np.all(out[~mask] == 0)
    assert np.allclose(out10, out, rtol=1e-5, atol=1e-4)  # x10 input: same CBF
    # the default divisor is each slice's lower median of its non-zero voxels
    x = torch.from_numpy(np.moveaxis(bold, 2, 0)[:, None].copy())
    scales = torch.tensor([bold_scale(bold[:, :, z]) for z in range(3)])
    with torch.no_grad():
        assert torch.equal(model(x), model(x, scale=scales))
        assert float(scales[0]) == float(x[0, 0][x[0, 0] != 0].median())
    # a CBF model is not scale-invariant, and takes no scale
    cbf_model = tiny(arch, seed=3, input_kind="cbf")
    assert not np.allclose(denoise_volume(cbf_model, 10 * bold, mask), out10, rtol=1e-3)
    with pytest.raises(ValueError, match="BOLD inputs only"):
        cbf_model(x, scale=scales)
    with pytest.raises(ValueError, match="input_kind"):
        build_model(arch, input_kind="t1w")


def test_bold_scale_known_values():
    assert bold_scale(np.array([[0, 3.0], [1.0, 2.0]])) == 2.0  # median of 1, 2, 3
    assert bold_scale(np.array([[0, 4.0], [1.0, 2.0], [3.0, 0]])) == 2.0  # lower median
    assert bold_scale(np.zeros((3, 3))) == 1.0


# ------------------------------------------------------------------- examples
def test_bold_examples_take_another_segments_cbf_as_target():
    subj = make_bold_phantom(0, noise=80.0)
    ex = build_examples([subj], input_kind="bold")
    assert len(ex) == 4 * 4 and len(ex.scales) == len(ex)
    m = subj.mask[..., 0]
    bold_segs = segment_means(subj.bold)
    cbf_segs = segment_means(subj.series)
    # input: segment 1's BOLD; target: segment 2's CBF (not segment 1's), then swapped
    assert np.allclose(ex.inputs[0], np.where(m, bold_segs[0][..., 0], 0))
    assert np.allclose(ex.targets[0], np.where(m, cbf_segs[1][..., 0], 0))
    assert np.allclose(ex.inputs[1], np.where(m, bold_segs[1][..., 0], 0))
    assert np.allclose(ex.targets[1], np.where(m, cbf_segs[0][..., 0], 0))
    assert ex.scales[0] == bold_scale(ex.inputs[0])
    assert (np.stack(ex.targets)[np.stack(ex.masks)] < 0).any()  # targets not clipped
    subj.bold = None
    with pytest.raises(ASLInputError, match="no label/control-averaged"):
        build_examples([subj], input_kind="bold")


# ------------------------------------------------------------------- training
def _fit_baselines(subjects):
    """Best constant and global line ``a + b * bold / median``, on the training targets."""
    ex = build_examples(subjects, input_kind="bold")
    xs = np.concatenate([x[m] / s for x, m, s in zip(ex.inputs, ex.masks, ex.scales, strict=True)])
    ys = np.concatenate([y[m] for y, m in zip(ex.targets, ex.masks, strict=True)])
    b, a = np.polyfit(xs, ys, 1)
    return float(ys.mean()), a, b


def test_training_predicts_cbf_from_bold_better_than_global_baselines(tmp_path):
    torch.set_num_threads(1)
    model = tiny(seed=0)
    data = [make_bold_phantom(s) for s in range(4)]
    cfg = TrainConfig(
        epochs=4,
        batch_size=8,
        patch_size=24,
        steps_per_epoch=40,
        seed=0,
        progress=False,
        input_kind="bold",
    )
    hist = train(model, data, [make_bold_phantom(100)], cfg, tmp_path)
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    assert np.isfinite(hist[-1]["val_psnr_truth"])
    const, a, b = _fit_baselines(data)
    test = make_bold_phantom(200)  # unseen subject, other gain direction and scale
    bold10 = segment_means(test.bold)[0]
    mask, truth = test.mask, test.truth
    pred = denoise_volume(model, bold10, mask)
    line = np.zeros_like(bold10)
    for z in range(bold10.shape[2]):
        sl = np.where(mask[:, :, z], bold10[:, :, z], 0)
        line[:, :, z] = np.where(mask[:, :, z], a + b * sl / bold_scale(sl), 0)
    p_net = psnr(pred, truth, mask)
    p_const = psnr(np.where(mask, const, 0), truth, mask)
    p_line = psnr(line, truth, mask)
    assert p_net > max(p_const, p_line) + 2.0, (p_net, p_const, p_line)


# ---------------------------------------------------------------- file format
def test_bold_model_save_load_round_trip_exact(tmp_path):
    model = tiny(seed=5)
    path = tmp_path / "bold.pt"
    sha = save_model(model, path, metadata={"input_kind": "bold"})
    loaded, info = load_model(path)
    assert info["sha256"] == sha and info["input_kind"] == "bold"
    assert loaded.config == model.config and loaded.config["input_kind"] == "bold"
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    x = torch.rand(2, 1, 20, 24) * 500
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_shipped_weights_still_load_as_a_cbf_denoiser():
    assert default_weights_path().is_file()
    model, info = load_model()
    assert info["input_kind"] == "cbf" and model.config["input_kind"] == "cbf"
    assert info["config"]["channels"][0] == "cbf"


# ----------------------------------------------------------------- guards
def _volume(seed=0, shape=(28, 30, 6)):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[4:-4, 5:-5, 1:-1] = True
    return np.where(mask, rng.uniform(400, 800, shape), 0).astype(np.float32), mask


def test_models_are_refused_in_the_other_mode(tmp_path):
    vol, mask = _volume()
    bold_w, cbf_w = tmp_path / "bold.pt", tmp_path / "cbf.pt"
    save_model(tiny(input_kind="bold"), bold_w)
    save_model(DWAN(width=4, expansion=1, depth=1, global_dilations=(2,)), cbf_w)
    with pytest.raises(ASLInputError, match="not a CBF denoiser") as err:
        denoise_cbf(vol, mask, weights=bold_w)
    assert str(bold_w) in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(ASLInputError, match="takes a CBF map") as err:
        predict_cbf_from_bold(vol, mask, weights=cbf_w)
    assert str(cbf_w) in str(err.value)
    out, info = predict_cbf_from_bold(vol, mask, weights=bold_w)
    assert info["input_kind"] == "bold" and out.shape == vol.shape
    # training a model of the other kind is a programming error
    with pytest.raises(ValueError, match="input_kind"):
        train(tiny(input_kind="cbf"), [], [], TrainConfig(input_kind="bold"), tmp_path / "t")


def _write(tmp_path, vol, mask, affine, name="sub-01_bold.nii.gz"):
    nb.Nifti1Image(vol, affine).to_filename(tmp_path / name)
    nb.Nifti1Image(mask.astype(np.uint8), affine).to_filename(tmp_path / "sub-01_mask.nii.gz")
    return str(tmp_path / name), str(tmp_path / "sub-01_mask.nii.gz")


def test_dwan_denoise_refuses_a_bold_model_naming_the_file(tmp_path):
    vol, mask = _volume(1)
    weights = tmp_path / "bold_model.pt"
    save_model(tiny(), weights)
    in_file, mask_file = _write(tmp_path, vol, mask, np.eye(4))
    with pytest.raises(ASLInputError, match="not a CBF denoiser") as err:
        DWANDenoise(in_file=in_file, mask_file=mask_file, weights=str(weights)).run(cwd=tmp_path)
    assert "bold_model.pt" in str(err.value)


def test_bold_to_cbf_interface_and_sidecar(tmp_path):
    vol, mask = _volume(2)
    model = tiny(seed=4)
    weights = tmp_path / "w.pt"
    sha = save_model(model, weights, metadata={"scheme": "lfn", "loss": "l1", "command": "x"})
    aff = np.array([[0, 0, 3, 0], [3, 0, 0, 0], [0, 4, 0, 0], [0, 0, 0, 1.0]])  # y is axial
    in_file, mask_file = _write(tmp_path, vol, mask, aff)
    res = BOLDToCBF(in_file=in_file, mask_file=mask_file, weights=str(weights)).run(cwd=tmp_path)
    out = nb.load(res.outputs.out_file).get_fdata()
    assert np.allclose(out, denoise_volume(model, vol, mask, axis=1), atol=1e-5)
    assert res.outputs.out_file == str(tmp_path / "sub-01_bold_predcbf.nii.gz")
    side = json.loads(open(res.outputs.out_sidecar).read())
    assert side["PredictedFromBOLD"] is True and side["Units"] == "mL/100 g/min"
    assert side["PredictionModel"]["Sha256"] == sha == file_sha256(weights)
    assert side["PredictionModel"]["File"] == "w.pt"
    assert side["PredictionModel"]["InputKind"] == "bold"
    # a 4-D series (x3 intensity here) is averaged over its volumes; the scale does not matter
    series = np.stack([2 * vol, 4 * vol], -1)
    in4, _ = _write(tmp_path, series, mask, aff, name="sub-01_series.nii.gz")
    res4 = BOLDToCBF(in_file=in4, mask_file=mask_file, weights=str(weights)).run(cwd=tmp_path)
    assert np.allclose(nb.load(res4.outputs.out_file).get_fdata(), out, rtol=1e-5, atol=1e-4)
    cbf_w = tmp_path / "cbf.pt"
    save_model(tiny(input_kind="cbf"), cbf_w)
    with pytest.raises(ASLInputError, match="takes a CBF map"):
        BOLDToCBF(in_file=in_file, mask_file=mask_file, weights=str(cbf_w)).run(cwd=tmp_path)


# ------------------------------------------------------------------------ CLI
TINY_TRAIN = ["--epochs", "1", "--batch-size", "2", "--steps-per-epoch", "2"]
TINY_TRAIN += ["--patch-size", "16", "--no-progress"]


def test_cli_simulate_bold_records_the_input_kind(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    args = ["--simulate", "2", "--sim-n-pairs", "4", "--seed", "5", "--input", "bold"]
    args += ["--val-fraction", "0.5"]  # seed 5: the two smallest simulated grids
    assert main([*args, *TINY_TRAIN, "--out", str(out)]) == 0
    model, info = load_model(out / "model.pt")
    assert info["input_kind"] == "bold" and info["config"]["input_kind"] == "bold"
    assert info["metadata"]["input_kind"] == "bold"
    assert "--input bold" in info["metadata"]["command"]
    toml = tomllib.loads((out / "train_config.toml").read_text())
    assert toml["input"] == "bold"
    assert json.loads((out / "model.json").read_text())["input_kind"] == "bold"
    # fine-tuning it as a CBF denoiser is refused, naming the file
    bad = ["--simulate", "2", "--init-weights", str(out / "model.pt"), *TINY_TRAIN]
    assert main([*bad, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "model.pt" in err and "input_kind" in err and "--input bold" in err


def test_cli_refuses_bold_input_from_derivatives(tmp_path, capsys):
    root = tmp_path / "derivatives"
    root.mkdir()
    assert main(["--derivatives", str(root), "--input", "bold", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(root) in err and "--input" in err and "--bids" in err and "Fix:" in err


@pytest.fixture(scope="module")
def bold_bids(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids") / "ds"
    settings = {**SIM_BIDS_SMALL, "n_pairs": 4}
    return simulate_dataset(root, n_subjects=2, seed=3, noise_scale=0.01, **settings)


def test_bids_bold_is_the_average_of_each_pair(bold_bids):
    subjects = load_bids(bold_bids, realign=False, progress=False, bold=True)
    for subj in subjects:
        raw = nb.load(bold_bids / subj.name / "perf" / f"{subj.name}_asl.nii.gz").get_fdata()
        ctx = (bold_bids / subj.name / "perf" / f"{subj.name}_aslcontext.tsv").read_text()
        types = ctx.split()[1:]
        cl = [i for i, t in enumerate(types) if t in ("control", "label")]
        expected = np.stack(
            [(raw[..., cl[2 * p]] + raw[..., cl[2 * p + 1]]) / 2 for p in range(len(cl) // 2)],
            -1,
        )
        assert subj.bold.shape == subj.series.shape == expected.shape  # axial axis is 2
        assert np.allclose(subj.bold, expected, rtol=1e-5, atol=1e-3)
    assert load_bids(bold_bids, realign=False, progress=False)[0].bold is None


def test_cli_bids_bold_runs(bold_bids, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    args = ["--bids", str(bold_bids), "--input", "bold", "--val-fraction", "0.5"]
    assert main([*args, *TINY_TRAIN, "--out", str(out)]) == 0
    info = load_model(out / "model.pt")[1]
    assert info["input_kind"] == "bold" and info["metadata"]["input_kind"] == "bold"
    assert sorted(info["metadata"]["train_subjects"] + info["metadata"]["val_subjects"]) == [
        "sub-01",
        "sub-02",
    ]
