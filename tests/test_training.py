"""Learning-from-noise datasets, the training loop and the asl-train command."""

import json
import shutil

import nibabel as nb
import numpy as np
import pytest
import torch
from _bidsfactory import SIM_BIDS_SMALL, make_dataset
from scipy import ndimage

from asl_pipeline.cli.train import load_bids, main, parse_args
from asl_pipeline.errors import ASLInputError
from asl_pipeline.metrics import psnr
from asl_pipeline.models import DWAN, load_model
from asl_pipeline.models.inference import denoise_volume
from asl_pipeline.simulate import simulate_dataset
from asl_pipeline.training import (
    Subject,
    TrainConfig,
    build_examples,
    lfn_pairs,
    masked_loss,
    pseudo_ground_truth,
    segment_means,
    split_subjects,
    train,
)


def make_phantom(seed, shape=(32, 32, 4), n_pairs=40, noise=25.0):
    """A piecewise-constant 'brain' (WM 25, GM 60, hot spots 80) with Gaussian pair noise."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    cx, cy = shape[0] / 2 + rng.uniform(-2, 2), shape[1] / 2 + rng.uniform(-2, 2)
    r = np.sqrt(((x - cx) / 13) ** 2 + ((y - cy) / 11) ** 2)
    brain = r < 1
    truth2 = np.where(r < 0.75, 25.0, 60.0)
    for _ in range(3):
        bx, by = rng.uniform(8, 24, 2)
        truth2[(x - bx) ** 2 + (y - by) ** 2 < 9] = 80.0
    truth2 *= brain
    truth = np.repeat(truth2[..., None], shape[2], 2).astype(np.float32)
    mask = np.repeat(brain[..., None], shape[2], 2)
    noise_arr = noise * rng.standard_normal(shape + (n_pairs,)).astype(np.float32)
    return Subject(f"phantom{seed}", truth[..., None] + noise_arr, mask, truth=truth)


def tiny_dwan(seed=0):
    torch.manual_seed(seed)
    return DWAN(width=8, expansion=2, depth=2, global_dilations=(2, 4))


def test_segment_means_and_pairs_known_answer():
    series = np.broadcast_to(np.arange(42, dtype=float), (2, 3, 4, 42))
    segs = segment_means(series)  # 10 pairs per segment; pairs 40, 41 left out
    assert segs.shape == (4, 2, 3, 4)
    assert np.allclose(segs[:, 0, 0, 0], [4.5, 14.5, 24.5, 34.5])
    assert lfn_pairs() == [(0, 1), (1, 0), (2, 3), (3, 2)]
    assert lfn_pairs(swap=False) == [(0, 1), (2, 3)]
    with pytest.raises(ASLInputError, match="cannot be split"):
        segment_means(series[..., :3])


def test_lfn_examples_are_masked_and_not_clipped():
    subj = make_phantom(0, noise=80.0)
    ex = build_examples([subj], scheme="lfn")
    assert len(ex) == 4 * 4  # 4 slices x (1->2, 2->1, 3->4, 4->3)
    tgt = np.stack(ex.targets)
    msk = np.stack(ex.masks)
    assert (tgt[msk] < 0).any()  # negative CBF kept: no asymmetric clipping
    assert np.all(tgt[~msk] == 0) and np.all(np.stack(ex.inputs)[~msk] == 0)
    segs = segment_means(subj.series)
    assert np.allclose(ex.inputs[0], np.where(subj.mask[..., 0], segs[0][..., 0], 0))
    assert np.allclose(ex.targets[0], np.where(subj.mask[..., 0], segs[1][..., 0], 0))


def test_pseudo_ground_truth_of_noiseless_constant_is_exact():
    mask = np.zeros((16, 16, 6), bool)
    mask[3:13, 3:13, 1:5] = True
    series = np.where(mask[..., None], 50.0, 0.0) * np.ones(40)
    pgt = pseudo_ground_truth(series, mask, voxel_size=(3, 3, 4), cleaning="mean")
    assert np.allclose(pgt[mask], 50.0, atol=1e-4) and np.all(pgt[~mask] == 0)
    ex = build_examples([Subject("s", series, mask)], scheme="pseudo-gt")
    assert len(ex) == 4 * 4 and np.allclose(ex.targets[0][mask[..., 1]], 50.0, atol=1e-4)


def test_pseudo_ground_truth_drops_outlier_pairs():
    rng = np.random.default_rng(4)
    mask = np.zeros((20, 20, 6), bool)
    mask[4:16, 4:16, :] = True
    series = np.where(mask[..., None], 50.0 + rng.normal(0, 5, (20, 20, 6, 40)), 0.0)
    series[..., 7] += np.where(mask, 400.0, 0.0)  # a corrupted pair
    plain = pseudo_ground_truth(series, mask, fwhm=0, cleaning="mean")
    clean = pseudo_ground_truth(series, mask, fwhm=0, cleaning="aoc")
    assert abs(plain[mask].mean() - 60.0) < 1.0  # 50 + 400 / 40
    assert abs(clean[mask].mean() - 50.0) < 1.0


def test_masked_loss_known_values():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 100.0]]]])
    tgt = torch.zeros_like(pred)
    mask = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    assert float(masked_loss(pred, tgt, mask, "l1")) == pytest.approx(2.0)
    assert float(masked_loss(pred, tgt, mask, "l2")) == pytest.approx(14.0 / 3.0)


def test_split_by_subject():
    subjects = [make_phantom(s, shape=(12, 12, 2), n_pairs=4) for s in range(10)]
    tr, va = split_subjects(subjects, 0.2, seed=3)
    names_tr, names_va = {s.name for s in tr}, {s.name for s in va}
    assert len(names_va) == 2 and not names_tr & names_va and len(names_tr | names_va) == 10
    assert split_subjects(subjects, 0.2, seed=3)[1][0].name == va[0].name


def _gauss_in_mask(vol, mask, sigma):
    num = ndimage.gaussian_filter(np.where(mask, vol, 0.0), (sigma, sigma, 0))
    den = ndimage.gaussian_filter(mask.astype(float), (sigma, sigma, 0))
    return np.where(mask, num / np.maximum(den, 1e-6), 0.0)


def test_training_learns_denoising_beyond_gaussian_smoothing(tmp_path):
    torch.set_num_threads(1)
    model = tiny_dwan()
    cfg = TrainConfig(
        epochs=6, batch_size=8, patch_size=None, steps_per_epoch=40, seed=0, progress=False
    )
    hist = train(model, [make_phantom(s) for s in range(4)], [make_phantom(100)], cfg, tmp_path)
    assert hist[-1]["train_loss"] < 0.6 * hist[0]["train_loss"]
    assert hist[-1]["val_psnr_truth"] > hist[-1]["val_psnr_input_truth"] + 2.0
    test = make_phantom(200)  # unseen subject: denoise the mean of its first 10 pairs
    seg = segment_means(test.series)[0]
    noisy = psnr(np.where(test.mask, seg, 0), test.truth, test.mask)
    den = psnr(denoise_volume(model, seg, test.mask), test.truth, test.mask)
    best_gauss = max(
        psnr(_gauss_in_mask(seg, test.mask, s), test.truth, test.mask)
        for s in (0.5, 0.75, 1.0, 1.5, 2.0)
    )
    assert den > best_gauss + 1.0 and den > noisy + 2.5


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_gives_the_uninterrupted_result(tmp_path, monkeypatch, schedule):
    torch.set_num_threads(1)
    data = [make_phantom(s, shape=(24, 24, 2)) for s in range(3)]
    val = [make_phantom(50, shape=(24, 24, 2))]
    kw = dict(batch_size=4, patch_size=16, steps_per_epoch=5, seed=7, progress=False, loss="l2")
    kw["lr_schedule"] = schedule
    full = tiny_dwan(1)
    hist_full = train(full, data, val, TrainConfig(epochs=3, **kw), tmp_path / "full")
    # cosine: the rate falls to 0 at the last step; constant: it stays at lr
    assert hist_full[-1]["lr"] == pytest.approx(0.0 if schedule == "cosine" else 1e-3, abs=1e-12)
    if schedule == "cosine":
        assert 0 < hist_full[0]["lr"] < 1e-3
    # interrupt the same 3-epoch run during epoch 3 (before its checkpoint is written)
    import asl_pipeline.training as training

    real_validate, calls = training._validate, []

    def validate_then_die(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_validate(*args)

    monkeypatch.setattr(training, "_validate", validate_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_dwan(1), data, val, TrainConfig(epochs=3, **kw), tmp_path / "part")
    monkeypatch.setattr(training, "_validate", real_validate)
    resumed = tiny_dwan(99)  # different init: everything must come from the checkpoint
    hist = train(resumed, data, val, TrainConfig(epochs=3, **kw), tmp_path / "part", resume=True)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def _write_derivatives(root, n=3):
    for s in range(n):
        subj = make_phantom(10 + s, shape=(24, 24, 3), n_pairs=8)
        d = root / f"sub-{s:02d}" / "perf"
        d.mkdir(parents=True)
        aff = np.diag([3.0, 3.0, 4.0, 1.0])
        nb.Nifti1Image(subj.series, aff).to_filename(d / f"sub-{s:02d}_desc-timeseries_cbf.nii.gz")
        nb.Nifti1Image(subj.mask.astype(np.uint8), aff).to_filename(
            d / f"sub-{s:02d}_desc-brain_mask.nii.gz"
        )
        nb.Nifti1Image(subj.truth, aff).to_filename(d / f"sub-{s:02d}_cbf.nii.gz")  # 3-D: skipped


def test_cli_trains_and_finetunes_from_derivatives(tmp_path, capsys):
    torch.set_num_threads(1)
    root = tmp_path / "derivatives"
    _write_derivatives(root)
    common = ["--derivatives", str(root), "--epochs", "1", "--batch-size", "4", "--no-progress"]
    common += ["--steps-per-epoch", "2", "--patch-size", "16", "--val-fraction", "0.34"]
    out = tmp_path / "run"
    assert main([*common, "--model", "unet", "--loss", "l2", "--out", str(out)]) == 0
    model, info = load_model(out / "model.pt")
    meta = info["metadata"]
    assert meta["arch"] == "unet" and meta["loss"] == "l2" and meta["epochs"] == 1
    assert len(meta["train_subjects"]) == 2 and len(meta["val_subjects"]) == 1
    assert meta["command"].startswith("asl-train --derivatives")
    assert (out / "train_config.toml").is_file() and (out / "checkpoint.pt").is_file()
    assert json.loads((out / "history.json").read_text())[0]["epoch"] == 1
    # fine-tune from those weights: the architecture comes from the file
    out2 = tmp_path / "ft"
    args = [*common, "--init-weights", str(out / "model.pt"), "--out", str(out2)]
    assert main(args) == 0
    _, info2 = load_model(out2 / "model.pt")
    assert info2["arch"] == "unet"
    assert info2["metadata"]["source"]["init_weights"]["sha256"] == info["sha256"]
    assert "wrote" in capsys.readouterr().out


def test_cli_errors_name_file_and_fix(tmp_path, capsys):
    root = tmp_path / "d"
    d = root / "sub-01" / "perf"
    d.mkdir(parents=True)
    nb.Nifti1Image(np.zeros((8, 8, 2, 8), np.float32), np.eye(4)).to_filename(
        d / "sub-01_desc-timeseries_cbf.nii.gz"
    )
    assert main(["--derivatives", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "sub-01_desc-timeseries_cbf.nii.gz" in err and "brain mask" in err and "Fix:" in err
    with pytest.raises(SystemExit):
        parse_args(["--simulate", "1", "--out", "x"])
    with pytest.raises(SystemExit):
        parse_args(["--simulate", "4", "--seed", "9", "--out", "x"])
    args = parse_args(["--simulate", "4", "--out", "x", "--scheme", "pseudo-gt"])
    assert args.scheme == "pseudo-gt" and args.lr == 1e-3 and args.loss == "l1"


@pytest.mark.slow
def test_simulated_subjects_vary_and_feed_the_lfn_dataset():
    from asl_pipeline.training import (
        SIM_GRIDS,
        TEST_SEED_OFFSET,
        simulate_subject_series,
        simulation_settings,
    )

    settings = [simulation_settings(0, i) for i in range(40)]
    assert settings[3] == simulation_settings(0, 3)  # seeded
    assert {s["labeling"] for s in settings} == {"PCASL", "PASL"}
    assert {s["readout"] for s in settings} == {"2D", "3D"}
    assert {s["outliers"] for s in settings} == {True, False}
    assert len({s["shape"] for s in settings}) == len(SIM_GRIDS)
    assert len({s["noise_scale"] for s in settings}) > 2
    assert TEST_SEED_OFFSET >= 9 * 100_000  # seeds < 9: training seeds stay below it
    subj = simulate_subject_series(3, 8, shape=(24, 24, 8), voxel_size=(8.0, 8.0, 14.0))
    assert subj.series.shape == (24, 24, 8, 8) and subj.truth.shape == (24, 24, 8)
    gm_cbf = subj.truth[subj.gm > 0.7]
    assert gm_cbf.size == 0 or 20 < gm_cbf.mean() < 100  # mL/100 g/min
    ex = build_examples([subj], scheme="lfn")
    assert len(ex) == 4 * int((subj.mask.sum((0, 1)) >= 50).sum())


# ----------------------------------------------------------------- raw BIDS input
@pytest.fixture(scope="module")
def tiny_bids(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids") / "ds"
    return simulate_dataset(root, n_subjects=3, seed=3, noise_scale=0.01, **SIM_BIDS_SMALL)


def _snapshot(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_bids_input_quantifies_each_pair_against_the_truth(tiny_bids):
    before = _snapshot(tiny_bids)
    subjects = load_bids(tiny_bids, progress=False)
    assert [s.name for s in subjects] == ["sub-01", "sub-02", "sub-03"]
    for subj in subjects:
        label = subj.name
        truth = nb.load(
            tiny_bids / f"derivatives/simulation/{label}/perf/{label}_desc-true_cbf.nii.gz"
        ).get_fdata()
        assert subj.series.shape == (40, 40, 14, 8)  # one CBF map per pair
        assert subj.voxel_size == (5.0, 5.0, 9.0)
        core = ndimage.binary_erosion(subj.mask)  # edge voxels: low M0, partial volume
        assert core.sum() > 2000
        mean = subj.series.mean(axis=3)
        # nearly noise-free data: the quantified CBF is the true CBF, in mL/100 g/min
        assert np.corrcoef(mean[core], truth[core])[0, 1] > 0.95
        assert np.median(mean[core] / np.maximum(truth[core], 1.0)) == pytest.approx(1.0, abs=0.03)
    assert _snapshot(tiny_bids) == before  # read only


def test_cli_trains_from_bids_and_names_its_runs(tiny_bids, tmp_path):
    torch.set_num_threads(1)
    before = _snapshot(tiny_bids)
    out = tmp_path / "run"
    args = ["--bids", str(tiny_bids), "--participant-label", "01", "sub-02", "--epochs", "1"]
    args += ["--batch-size", "4", "--steps-per-epoch", "2", "--patch-size", "16"]
    args += ["--val-fraction", "0.5", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    meta = load_model(out / "model.pt")[1]["metadata"]
    assert meta["source"]["bids"] == str(tiny_bids)
    assert [p.rsplit("/", 1)[1] for p in meta["source"]["runs"]] == [
        "sub-01_asl.nii.gz",
        "sub-02_asl.nii.gz",
    ]
    assert sorted(meta["train_subjects"] + meta["val_subjects"]) == ["sub-01", "sub-02"]
    assert _snapshot(tiny_bids) == before


def test_cli_bids_errors(tiny_bids, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["--bids", str(tiny_bids), "--participant-label", "01", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "at least 2" in err and "--bids" in err and "Fix:" in err
    assert main(["--bids", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (out / "model.pt").exists()


def test_bids_input_skips_multi_pld_runs(tiny_bids, tmp_path, caplog):
    root = tmp_path / "ds"
    shutil.copytree(tiny_bids, root)
    plds = [1.0, 1.0, 1.5, 1.5, 2.0, 2.0]
    sidecar = {"PostLabelingDelay": plds, "M0Type": "Estimate", "M0Estimate": 100.0}
    make_dataset(root, subject="04", sidecar=sidecar, m0=False, t1w=False)
    with caplog.at_level("WARNING", logger="asl_pipeline"):
        subjects = load_bids(root, progress=False)
    assert [s.name for s in subjects] == ["sub-01", "sub-02", "sub-03"]
    assert "sub-04_asl.nii.gz: multi-PLD run skipped" in caplog.text
