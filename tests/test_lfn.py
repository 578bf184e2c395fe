"""Realistic pair noise, the on-the-fly learning-from-noise sampler and subject fine-tuning."""

import numpy as np
import pytest
import torch

from asl_pipeline import lfn
from asl_pipeline.errors import ASLInputError
from asl_pipeline.models import DWAN
from asl_pipeline.models.channels import noise_sd_map
from asl_pipeline.simulate import noise
from asl_pipeline.training import masked_loss


def _clean(seed=0, shape=(40, 44, 8)):
    """A small two-tissue subject with the default (real-scan) pair noise."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[5:-5, 5:-5, :] = True
    gm = np.where(mask, rng.uniform(0, 1, shape) > 0.5, 0).astype(np.float32)
    wm = np.where(mask, 1.0 - gm, 0).astype(np.float32)
    cbf = (60 * gm + 25 * wm).astype(np.float32)
    return lfn.CleanSubject(
        "s",
        cbf,
        mask,
        gm,
        wm,
        np.where(mask, 1000.0, 0).astype(np.float32),
        noise.PairNoise(),
        "test",
    )


def test_pair_noise_has_the_real_scan_statistics():
    subj = _clean(shape=(64, 64, 16))
    series = subj.draw_pairs(np.random.default_rng(1), 50)
    stats = noise.noise_statistics(series, subj.mask)
    real = noise.REAL_SCAN_STATISTICS
    assert abs(stats["pair_sd"] - real["pair_sd"]) < 0.15 * real["pair_sd"]
    for key in ("lag1_x", "lag1_y", "lag1_z", "lag1_pairs"):
        assert abs(stats[key] - real[key]) < 0.06, key
    assert stats["excess_kurtosis"] > 15  # heavy tails (Gaussian: 0)
    assert stats["fraction_beyond_4sd"] > 50 * 6.3e-5  # far above the Gaussian 0.0063%
    assert stats["slice_sd_max"] / stats["slice_sd_min"] > 1.6
    assert abs(stats["sd_ratio_high_low"] - 1.0) < 0.1  # additive
    assert 2.5 < stats["global_offset_sd"] < 8.0


def test_noise_map_estimates_the_sd_of_the_mean():
    subj = _clean(shape=(64, 64, 6))
    params = noise.PairNoise(tail_fraction=0.0, global_sd=0.0, slice_centre=1.0, slice_edge=1.0)
    subj.noise = params
    pairs = subj.draw_pairs(np.random.default_rng(2), 10)
    est = noise_sd_map(pairs, subj.mask)[subj.mask]
    assert np.allclose(est, params.sd / np.sqrt(10), rtol=0.1)


def _with_slab_outliers(pairs, rng):
    """``pairs`` with pairs 2 and 5 ruined in slices 1-3 (a slab each); the keep matrix."""
    bad = pairs.copy()
    keep = np.ones((pairs.shape[2], pairs.shape[3]), bool)
    for p in (2, 5):
        bad[:, :, 1:4, p] += rng.normal(-300, 250, bad[:, :, 1:4, p].shape)
        keep[1:4, p] = False
    return bad, keep


def test_noise_map_of_a_cleaned_mean_uses_only_the_kept_pairs():
    subj = _clean(shape=(64, 64, 6))
    params = noise.PairNoise(tail_fraction=0.0, global_sd=0.0, slice_centre=1.0, slice_edge=1.0)
    subj.noise = params
    rng = np.random.default_rng(4)
    pairs = subj.draw_pairs(rng, 12)
    bad, keep = _with_slab_outliers(pairs, rng)
    est = noise_sd_map(bad, subj.mask, keep=keep)
    kept_n = keep.sum(axis=1)  # 10 in the slab, 12 elsewhere
    for z in range(6):
        assert np.allclose(est[:, :, z][subj.mask[:, :, z]], params.sd / np.sqrt(kept_n[z]), 0.1)
    # without the matrix the ruined pairs inflate the slab's noise several times over
    assert (
        noise_sd_map(bad, subj.mask)[:, :, 2][subj.mask[:, :, 2]].mean()
        > 2.5 * est[:, :, 2][subj.mask[:, :, 2]].mean()
    )
    # keeping every pair is the default estimate
    assert np.array_equal(noise_sd_map(pairs, subj.mask, keep=np.ones_like(keep)),
                          noise_sd_map(pairs, subj.mask))  # fmt: skip
    with pytest.raises(ValueError, match="keep is"):
        noise_sd_map(pairs, subj.mask, keep=keep[:, :5])


def test_series_sampler_never_draws_a_removed_pair():
    subj = _clean(shape=(40, 40, 6))
    pairs = subj.draw_pairs(np.random.default_rng(5), 12)
    bad = pairs.copy()
    keep = np.ones((6, 12), bool)
    bad[:, :, 1:4, [2, 5]] = 1e5  # removed by the cleaning: never an input or a target
    keep[1:4, [2, 5]] = False
    sampler = lfn.SeriesSampler(bad, subj.mask, subj.maps(), ("cbf", "noise"), keep=keep)
    gen = torch.Generator()
    gen.manual_seed(0)
    for _ in range(20):
        x, y, _, _ = sampler.batch(8, gen)
        assert float(x[:, 0].abs().max()) < 1e4 and float(y.abs().max()) < 1e4
    held = sampler.whole_slices(range(len(sampler.pairs)), gen, 6)
    assert float(held[0][:, 0].abs().max()) < 1e4 and float(held[1].abs().max()) < 1e4
    # without the matrix they are drawn
    plain = lfn.SeriesSampler(bad, subj.mask, subj.maps(), ("cbf", "noise"))
    assert any(float(plain.batch(8, gen)[1].abs().max()) > 1e4 for _ in range(20))
    # a slice with fewer than 4 kept pairs is not trained on
    few = keep.copy()
    few[0, 3:] = False
    assert len(lfn.SeriesSampler(bad, subj.mask, subj.maps(), ("cbf",), keep=few).pairs) == 5


def test_series_sampler_levels_each_pair_to_the_kept_mean():
    """Whole-pair offsets are not noise a spatial denoiser can learn to remove: levelled,
    pairs that differ only by an offset per pair and slice give input == target."""
    subj = _clean(shape=(40, 40, 4))
    rng = np.random.default_rng(6)
    offsets = rng.normal(0, 30, (1, 1, 4, 10))
    series = (subj.cbf[..., None] + offsets).astype(np.float32)
    keep = np.ones((4, 10), bool)
    keep[2, 7] = False
    series[:, :, 2, 7] += 500  # removed: not part of the level either
    gen = torch.Generator()
    gen.manual_seed(0)
    levelled = lfn.SeriesSampler(series, subj.mask, subj.maps(), ("cbf", "noise"), keep=keep)
    x, y, m, _ = levelled.batch(6, gen)
    assert torch.allclose(x[:, 0:1] * m, y, atol=1e-3)
    _, y, m, _ = levelled.whole_slices(range(4), gen, 5)
    for z in range(4):  # each slice keeps the level of its kept pairs' mean
        level = series[:, :, z][subj.mask[:, :, z]][:, keep[z]].mean()
        assert float(y[z][m[z] > 0].mean()) == pytest.approx(level, rel=1e-4)
    raw = lfn.SeriesSampler(series, subj.mask, subj.maps(), ("cbf",), keep=keep, level=False)
    x, y, m, _ = raw.batch(6, gen)
    assert not torch.allclose(x[:, 0:1] * m, y, atol=1.0)


def test_sampler_gives_independent_noisy_input_and_target():
    subj = _clean()
    subj.noise = noise.PairNoise(tail_fraction=0.0, slice_centre=1.0, slice_edge=1.0)
    sampler = lfn.PairSampler(
        [subj], ("cbf", "noise", "gm", "wm"), patch=32, jitter=False, vary_perfusion=False
    )
    gen = torch.Generator().manual_seed(0)
    x, y, m, n = sampler.batch(16, gen, n=8)
    assert x.shape == (16, 4, 32, 32) and y.shape == m.shape == (16, 1, 32, 32) and n == 8
    inside = m[:, 0] > 0
    # the noise channel is the input's noise level, sd / sqrt(n), constant in the mask
    level = x[:, 1][inside]
    assert abs(float(level.median()) - 52.5 / np.sqrt(8)) < 0.2 * 52.5 / np.sqrt(8)
    # input and target noises (around the same clean map) are uncorrelated
    gmv = x[:, 2]
    truth = 60 * gmv + 25 * (1 - gmv)
    ex, ey = (x[:, 0] - truth)[inside], (y[:, 0] - truth)[inside]
    assert abs(float(torch.corrcoef(torch.stack([ex, ey]))[0, 1])) < 0.1
    assert float(ey.std()) < float(ex.std())  # 32 target pairs, 8 input pairs


def test_perfusion_gain_varies_levels_and_ratios():
    gen = torch.Generator().manual_seed(0)
    gm = torch.zeros(200, 1, 16, 16)
    gm[..., :8] = 1.0
    wm = 1.0 - gm
    gain = lfn._perfusion_gain(gm, wm, gen)
    g, w = gain[..., :8].mean((1, 2, 3)), gain[..., 8:].mean((1, 2, 3))
    assert float(g.min()) < 0.5 < 1.8 < float(g.max())
    ratio = g / w
    assert float(ratio.min()) < 0.8 and float(ratio.max()) > 1.25


def test_texture_gain_is_fine_scale_mean_one_and_bounded():
    gen = torch.Generator().manual_seed(0)
    gain = lfn._texture_gain(256, 48, 1.0, gen, torch.device("cpu"))
    assert gain.shape == (256, 1, 48, 48) and bool((gain > 0).all())
    log_sd = torch.log(gain).std(dim=(1, 2, 3))
    # the SD of each example's log texture is uniform in [0, 1]
    assert float(log_sd.max()) <= 1.0 + 1e-4 and float(log_sd.min()) < 0.1
    assert 0.4 < float(log_sd.mean()) < 0.6
    assert abs(float(gain.mean()) - 1.0) < 0.05  # exp(t h - t^2 / 2): mean 1
    # fine scale: neighbours correlate, voxels ten apart do not
    h = torch.log(gain[log_sd > 0.5])
    h = h - h.mean(dim=(2, 3), keepdim=True)
    near = float((h[..., 1:] * h[..., :-1]).mean() / h.var())
    far = float((h[..., 10:] * h[..., :-10]).mean() / h.var())
    assert near > 0.5 and abs(far) < 0.1


def test_texture_zero_leaves_the_batches_unchanged_and_texture_loosens_the_tissue_link():
    subj = _clean(shape=(48, 48, 6))
    plain = lfn.PairSampler([subj], ("cbf", "noise", "gm", "wm"), patch=32)
    zero = lfn.PairSampler([subj], ("cbf", "noise", "gm", "wm"), patch=32, texture=0.0)
    a = plain.batch(8, torch.Generator().manual_seed(4), n=6)
    b = zero.batch(8, torch.Generator().manual_seed(4), n=6)
    assert all(torch.equal(u, v) for u, v in zip(a[:3], b[:3], strict=True))

    def share(texture):
        sampler = lfn.PairSampler(
            [subj], ("cbf", "noise", "gm", "wm"), patch=32, jitter=False, texture=texture
        )
        _, crops, clean = sampler.clean_examples(64, torch.Generator().manual_seed(5))
        vol = [np.moveaxis(v.numpy(), 0, -1) for v in (clean[:, 0], crops[:, 1], crops[:, 2])]
        cbf, mask, gm = vol
        return noise.tissue_unexplained(cbf, cbf, gm, 1 - gm, mask > 0, min_voxels=100)

    assert share(0.0) < 0.2 < 0.5 < share(1.0)


def test_tissue_unexplained_removes_independent_noise():
    rng = np.random.default_rng(6)
    shape = (40, 40, 6)
    mask = np.ones(shape, bool)
    gm = rng.uniform(0, 1, shape)
    wm = 1 - gm
    texture = rng.standard_normal(shape)
    tissue = 60 * gm + 20 * wm
    assert noise.tissue_unexplained(tissue, tissue, gm, wm, mask) < 1e-6
    # signal: tissue part 20 + 40 gm, variance 1600 / 12; texture of the same variance
    cbf = tissue + np.sqrt(1600 / 12) * texture
    clean = noise.tissue_unexplained(cbf, cbf, gm, wm, mask)
    assert abs(clean - 0.5) < 0.05
    a = cbf + 20 * rng.standard_normal(shape)  # noise variance 1.5 times the signal
    b = cbf + 20 * rng.standard_normal(shape)
    assert abs(noise.tissue_unexplained(a, b, gm, wm, mask) - clean) < 0.1
    with pytest.raises(ValueError, match="mask voxels"):
        noise.tissue_unexplained(cbf, cbf, gm, wm, np.zeros(shape, bool))


def _tiny_model():
    torch.manual_seed(0)
    return DWAN(
        width=8,
        expansion=2,
        depth=1,
        global_dilations=(2,),
        channels=("cbf", "noise", "gm", "wm"),
        scale_by_noise=True,
    )


def test_finetune_on_own_pairs_is_seeded_and_learns():
    subj = _clean(shape=(40, 40, 4))
    series = subj.draw_pairs(np.random.default_rng(3), 12)
    weights = []
    for _ in range(2):
        model = _tiny_model()
        fit = lfn.finetune(
            model, series, subj.mask, subj.maps(), seconds=60, max_steps=15, batch_size=4, lr=1e-3
        )
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert fit["steps"] == 15 and fit["loss_last"] < fit["loss_first"]
    assert torch.equal(weights[0], weights[1])


def test_finetune_early_stopping_keeps_the_best_held_out_weights():
    subj = _clean(shape=(40, 40, 8))
    series = subj.draw_pairs(np.random.default_rng(3), 8)
    model = _tiny_model()
    fit = lfn.finetune(
        model, series, subj.mask, subj.maps(), seconds=60, max_steps=40, batch_size=4, lr=3e-2
    )
    assert fit["steps"] == 40
    assert fit["holdout_best"] <= fit["holdout_first"]
    assert fit["best_step"] % lfn.FINETUNE_CHECK_EVERY == 0
    # re-score the returned weights on the same held-out slices (slices 1 and 5 of 8)
    sampler = lfn.SeriesSampler(series, subj.mask, subj.maps(), model.config["channels"])
    gen = torch.Generator()
    gen.manual_seed(1)
    held = list(range(1, 8, lfn.FINETUNE_HOLDOUT_EVERY))
    examples = [sampler.whole_slices(held, gen, 4) for _ in range(2)]
    with torch.no_grad():
        score = sum(float(masked_loss(model(x), y, m, "l2")) for x, y, m, _ in examples) / len(
            examples
        )
    assert score == pytest.approx(fit["holdout_best"], rel=1e-5)


def test_finetune_without_early_stopping_keeps_the_last_weights():
    subj = _clean(shape=(40, 40, 8))
    series = subj.draw_pairs(np.random.default_rng(3), 8)
    model = _tiny_model()
    fit = lfn.finetune(
        model,
        series,
        subj.mask,
        subj.maps(),
        max_steps=5,
        batch_size=4,
        early_stopping=False,
    )
    assert fit["steps"] == 5 and "best_step" not in fit


def test_finetune_refuses_too_few_pairs():
    subj = _clean(shape=(40, 40, 4))
    model = DWAN(width=8, expansion=2, depth=1, global_dilations=(2,), channels=("cbf", "noise"))
    with pytest.raises(ValueError, match="at least 4"):
        lfn.finetune(model, subj.draw_pairs(np.random.default_rng(0), 3), subj.mask)


def test_clean_subjects_round_trip(tmp_path):
    subj = _clean()
    lfn.save_subjects([subj], tmp_path / "s.npz")
    back = lfn.load_subjects(tmp_path / "s.npz")[0]
    assert back.noise == subj.noise and back.name == "s"
    assert np.allclose(back.cbf, subj.cbf, atol=0.05) and np.array_equal(back.mask, subj.mask)


def _derivatives(root, with_tissue=True):
    import nibabel as nb

    for k in range(2):
        subj = _clean(seed=k, shape=(36, 36, 4))
        series = subj.draw_pairs(np.random.default_rng(k), 8)
        perf = root / f"sub-0{k}" / "perf"
        perf.mkdir(parents=True)
        aff = np.diag([3.0, 3.0, 5.0, 1.0])
        nb.Nifti1Image(series, aff).to_filename(perf / f"sub-0{k}_desc-timeseries_cbf.nii.gz")
        nb.Nifti1Image(subj.mask.astype(np.uint8), aff).to_filename(
            perf / f"sub-0{k}_desc-brain_mask.nii.gz"
        )
        if with_tissue:
            for label, arr in (("GM", subj.gm), ("WM", subj.wm)):
                nb.Nifti1Image(arr, aff).to_filename(
                    perf / f"sub-0{k}_label-{label}_probseg.nii.gz"
                )


def test_asl_train_subject_finetune_on_derivatives(tmp_path, capsys):
    from asl_pipeline.cli.train import main
    from asl_pipeline.models import load_model

    _derivatives(tmp_path / "deriv")
    out = tmp_path / "out"
    # the guided shipped weights cannot be trained on segment means: a clear refusal
    argv = ["--derivatives", str(tmp_path / "deriv"), "--init-weights", "shipped"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    assert "--subject-finetune" in capsys.readouterr().err
    assert main([*argv, "--subject-finetune", "2", "--out", str(out), "--no-progress"]) == 0
    models = sorted(out.glob("*_model.pt"))
    assert len(models) == 2
    _, info = load_model(models[0])
    assert info["metadata"]["scheme"] == "lfn-subject"
    assert info["metadata"]["finetune"]["steps"] >= 1
    assert info["metadata"]["source"]["pairs"] == "all"


def test_derivatives_carry_the_pairs_their_cleaning_kept(tmp_path):
    from asl_pipeline.cli.train import load_derivatives
    from asl_pipeline.interfaces.outliers import _write_matrix

    _derivatives(tmp_path)
    removed = np.zeros((4, 8), bool)
    removed[1:3, 5] = True
    perf = tmp_path / "sub-01" / "perf"
    _write_matrix(str(perf / "sub-01_desc-paocsl_outliers.tsv"), removed)
    (perf / "sub-01_desc-paocslpairs_outliers.tsv").write_text("pair\tstatus\n")  # ignored
    subjects = {s.name: s for s in load_derivatives(tmp_path)}
    assert "keep" not in subjects["sub-00_desc-timeseries_cbf.nii.gz"].info
    assert np.array_equal(subjects["sub-01_desc-timeseries_cbf.nii.gz"].info["keep"], ~removed)
    _write_matrix(str(perf / "sub-01_desc-paocsl_outliers.tsv"), removed[:, :6])
    with pytest.raises(ASLInputError, match="outlier_matrix"):
        load_derivatives(tmp_path)


def test_asl_train_subject_finetune_needs_tissue_maps(tmp_path, capsys):
    from asl_pipeline.cli.train import main

    _derivatives(tmp_path / "deriv", with_tissue=False)
    argv = ["--derivatives", str(tmp_path / "deriv"), "--init-weights", "shipped"]
    assert main([*argv, "--subject-finetune", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "channels" in err and "probseg" in err


def test_axial_keep_uses_whole_pairs_across_other_slices():
    keep = np.ones((4, 6), bool)
    keep[1, 2] = keep[3, 5] = False
    assert lfn.axial_keep(keep, 2, 4) is keep and lfn.axial_keep(None, 0, 9) is None
    across = lfn.axial_keep(keep, 0, 9)  # the cleaning's slices are not the axial ones
    assert across.shape == (9, 6) and across.flags.writeable
    assert np.array_equal(across, np.tile([True, True, False, True, True, False], (9, 1)))
