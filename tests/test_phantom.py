"""The second generator (asl_pipeline.simulate.phantom): physics, noise, outliers, BIDS."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("asldro", reason="the phantom's anatomy is the asldro package's label map")

from asl_pipeline import kinetics  # noqa: E402
from asl_pipeline.bids import collect_runs  # noqa: E402
from asl_pipeline.cbf import (  # noqa: E402
    cbf_single_pld,  # noqa: E402
    compute_m0,
    quant_params_from_metadata,
)
from asl_pipeline.cli.simulate import parse_args  # noqa: E402
from asl_pipeline.simulate import phantom  # noqa: E402

#: A small, fast grid (coarse voxels over the whole brain).
SMALL = dict(
    shape=(30, 34, 12), voxel_size=(7.5, 7.5, 10.0), subsample=(2, 2, 2), anatomy_voxel=2.0
)


def _small(seed=3, **kw):
    args = dict(SMALL, n_pairs=2, t1w=False, dtype=np.float64)
    args.update(kw)
    return phantom.simulate_phantom(seed, **args)


# --------------------------------------------------------------------------
# kinetics and relaxation


@pytest.mark.parametrize("labeling", ["PCASL", "PASL"])
@pytest.mark.parametrize("t1_after_arrival", ["blood", "tissue"])
def test_gkm_matches_the_projects_kinetics(labeling, t1_after_arrival):
    """Same physics as asl_pipeline.kinetics (written independently), both T1 choices."""
    att = np.linspace(0.3, 2.5, 23)[:, None]
    delay = np.linspace(0.9, 3.0, 8)[None, :]
    f = 55.0 / kinetics.CBF_UNITS
    t1t = None if t1_after_arrival == "blood" else 1.33
    g = phantom.gkm_kernel(f, att, delay, labeling=labeling, tau=0.8, t1b=1.65, t1_tissue=t1t)
    model = kinetics.pcasl_deltam if labeling == "PCASL" else kinetics.pasl_deltam
    ref = model(
        55.0,
        att,
        delay,
        0.8,
        1.0,
        alpha=0.5,
        t1b=1.65,
        t1_after_arrival=t1_after_arrival,
        t1_tissue=1.33,
    )
    np.testing.assert_allclose(g, ref, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("labeling", ["PCASL", "PASL"])
def test_gkm_with_tissue_t1_matches_the_convolution_integral(labeling):
    """Buxton 1998: ΔM = (f/λ) ∫ c(t') r(t - t') dt', checked by quadrature."""
    f, att, tau, t1b, t1t, lam = 60.0 / 6000, 0.9, 1.5, 1.65, 1.33, 0.9
    t1app = 1.0 / (1.0 / t1t + f / lam)
    for delay in (0.5, 1.2, 2.0):
        tp = np.linspace(0.0, 6.0, 600001)
        if labeling == "PCASL":
            t = delay + tau
            c = np.where((tp > att) & (tp < att + tau), np.exp(-att / t1b), 0.0)
        else:
            t = delay
            c = np.where((tp > att) & (tp < att + tau), np.exp(-tp / t1b), 0.0)
        integrand = np.where(tp < t, c * np.exp(-(t - tp) / t1app), 0.0)
        ref = f / lam * np.trapezoid(integrand, tp)
        g = phantom.gkm_kernel(
            f, att, delay, labeling=labeling, tau=tau, t1b=t1b, t1_tissue=t1t, lam=lam
        )
        assert g == pytest.approx(ref, rel=2e-4, abs=1e-12)


def test_mz_after_saturation():
    t1, t = 1.3, np.array([0.5, 2.0, 3.6])
    np.testing.assert_allclose(phantom.mz_after_saturation(t1, t), -np.expm1(-t / t1))
    # one inversion at 1.0 s: -(1 - e^{-1/T1}), then recovery
    m1 = -(1.0 - np.exp(-1.0 / t1))
    expect = 1.0 - (1.0 - m1) * np.exp(-(3.6 - 1.0) / t1)
    assert phantom.mz_after_saturation(t1, 3.6, (1.0,)) == pytest.approx(expect)
    # a pulse after the readout does nothing
    assert phantom.mz_after_saturation(t1, 0.5, (1.0,)) == pytest.approx(-np.expm1(-0.5 / t1))


# --------------------------------------------------------------------------
# the white-paper equation recovers the truth where it applies


@pytest.mark.parametrize(
    "kw",
    [
        dict(labeling="PCASL", readout="2D", pld=2.2),
        dict(labeling="PCASL", readout="3D", pld=2.2, background_suppression=True),
        dict(labeling="PASL", readout="2D", pld=2.5),
    ],
    ids=["pcasl-2d", "pcasl-3d-bs", "pasl-2d"],
)
def test_white_paper_recovers_truth_noise_free(kw):
    """Blood T1 after arrival and every ATT below the PLD (PASL: TI - TI1): exact."""
    sub = _small(noise_level=0.0, t1_after_arrival="blood", z_blur_fwhm=0.0, m0_tr=40.0, **kw)
    assert sub.att.max() < (2.2 if kw["labeling"] == "PCASL" else 2.5 - 0.8)
    params = quant_params_from_metadata(sub.metadata, m0_metadata=sub.m0_metadata)
    m0 = compute_m0(params, m0_volumes=sub.m0)
    deltam = (sub.asl[..., 0::2] - sub.asl[..., 1::2]).mean(-1)
    res = cbf_single_pld(deltam, m0, params, mask=sub.brain_mask)
    sel = sub.brain_mask & (sub.cbf > 5)
    assert sel.sum() > 300
    np.testing.assert_allclose(res.mean_cbf[sel], sub.cbf[sel], rtol=1e-3)


def test_tissue_t1_after_arrival_reads_as_the_white_paper_map_says():
    """Apparent tissue T1 (default): the white-paper reading is ``cbf_white_paper``, lower."""
    sub = _small(noise_level=0.0, z_blur_fwhm=0.0, m0_tr=40.0, pld=2.2)
    params = quant_params_from_metadata(sub.metadata, m0_metadata=sub.m0_metadata)
    deltam = (sub.asl[..., 0::2] - sub.asl[..., 1::2]).mean(-1)
    res = cbf_single_pld(deltam, compute_m0(params, m0_volumes=sub.m0), params)
    gm = sub.gm > 0.7
    ratio = res.mean_cbf[gm].mean() / sub.cbf[gm].mean()
    assert 0.6 < ratio < 0.85  # T1app (~1.3 s in GM) < T1b: the label decays faster
    sel = sub.brain_mask & (sub.cbf > 5)
    np.testing.assert_allclose(res.mean_cbf[sel], sub.cbf_white_paper[sel], rtol=1e-3)


# --------------------------------------------------------------------------
# noise


def test_correlated_noise_has_target_lag1_and_unit_variance():
    n = phantom.correlated_noise(np.random.default_rng(0), (128, 128, 40))
    assert n.std() == pytest.approx(1.0, abs=0.01)
    for axis in (0, 1):
        a, b = np.moveaxis(n, axis, 0)[:-1], np.moveaxis(n, axis, 0)[1:]
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] == pytest.approx(0.4, abs=0.01)
    a, b = n[..., :-1], n[..., 1:]
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01  # not through-plane


@pytest.fixture(scope="module")
def noisy():
    """The default protocol and grid, no motion, no outliers, 40 pairs."""
    return phantom.simulate_phantom(11, anatomy_voxel=2.0, t1w=False)


def test_per_pair_snr_in_gm(noisy):
    gm = noisy.gm > 0.7
    dm = (noisy.asl[..., 0::2] - noisy.asl[..., 1::2])[gm]
    snr = dm.mean() / dm.std(axis=1, ddof=1).mean()
    assert snr == pytest.approx(0.8, abs=0.12)
    # the mean ΔM is unbiased against the noise-free ΔM (offsets are zero-mean)
    assert dm.mean() == pytest.approx(noisy.deltam[1.8][gm].mean(), rel=0.05)


def test_series_noise_is_correlated_in_plane_and_heavy_tailed(noisy):
    ctrl = noisy.asl[..., 0::2].astype(float)
    t = np.arange(ctrl.shape[-1])
    # remove each voxel's mean and linear drift; keep bright voxels (Rician ~ Gaussian)
    design = np.stack([np.ones_like(t), t], 1).astype(float)
    coef = np.linalg.lstsq(design, ctrl.reshape(-1, len(t)).T, rcond=None)[0]
    res = ctrl - (design @ coef).T.reshape(ctrl.shape)
    bright = noisy.m0_true > 0.5 * noisy.m0_true.max()
    pair = bright[:-1] & bright[1:]
    r = np.corrcoef(res[:-1][pair].ravel(), res[1:][pair].ravel())[0, 1]
    assert r == pytest.approx(0.4, abs=0.06)
    z = res[bright] / res[bright].std()
    assert np.mean(z**4) > 3.3  # heavier tails than a Gaussian (kurtosis 3)
    sd_z = np.array([res[..., k, :][bright[..., k]].std() for k in range(res.shape[2])])
    ok = np.array([bright[..., k].sum() > 50 for k in range(res.shape[2])])
    assert sd_z[ok].max() / sd_z[ok].min() > 1.1  # slice-varying SD


# --------------------------------------------------------------------------
# motion and outliers


def test_drift_reaches_2mm_and_2deg():
    sub = _small(motion="drift", n_pairs=3, noise_level=0.0)
    assert np.all(sub.motion[0] == 0)
    assert np.linalg.norm(sub.motion[-1, :3]) == pytest.approx(2.0)
    assert np.rad2deg(np.linalg.norm(sub.motion[-1, 3:])) == pytest.approx(2.0)


def test_outlier_table_lists_exactly_the_corrupted_slices():
    kw = dict(noise_level=0.0, n_pairs=6, z_blur_fwhm=0.0)
    clean = _small(**kw)
    bad = _small(outliers="all", outlier_rate=0.4, **kw)
    assert {k for _, _, k in bad.outliers} == set(phantom.OUTLIER_TYPES)
    listed = {}
    for t, z, _, _kind in bad.outlier_rows:
        listed.setdefault(t, set()).update(range(clean.asl.shape[2]) if z == "n/a" else {z})
    diff = np.abs(bad.asl - clean.asl).max(axis=(0, 1)) > 1e-6  # (z, t)
    has_signal = clean.asl.max(axis=(0, 1, 3)) > 1.0
    for t in range(bad.asl.shape[3]):
        changed = set(np.flatnonzero(diff[:, t]))
        assert changed <= listed.get(t, set()), t
        assert changed == listed.get(t, set()) & set(np.flatnonzero(has_signal)), t
    assert 0 not in listed


def test_multi_pld_pairs_cycle_the_delays():
    sub = _small(plds=[0.5, 1.5, 2.5], n_pairs=6, noise_level=0.0)
    assert sub.plds == (0.5, 1.5, 2.5, 0.5, 1.5, 2.5)
    assert sub.metadata["PostLabelingDelay"][:4] == [0.5, 0.5, 1.5, 1.5]
    single = _small(plds=[2.0], n_pairs=2, noise_level=0.0)
    assert single.metadata["PostLabelingDelay"] == 2.0


def test_deterministic_per_seed():
    a = _small(seed=5, motion="jumps", outliers="spikes,dropout")
    b = _small(seed=5, motion="jumps", outliers="spikes,dropout")
    np.testing.assert_array_equal(a.asl, b.asl)
    np.testing.assert_array_equal(a.m0, b.m0)
    assert a.outliers == b.outliers
    c = _small(seed=6, motion="jumps", outliers="spikes,dropout")
    assert not np.array_equal(a.asl, c.asl)


def test_bad_options_name_the_field():
    from asl_pipeline.errors import ASLInputError

    with pytest.raises(ASLInputError, match="motion"):
        _small(motion="wobble")
    with pytest.raises(ASLInputError, match="outliers"):
        _small(outliers="gremlins")
    with pytest.raises(ASLInputError, match="pld"):
        _small(labeling="PASL", pld=0.5)
    with pytest.raises(ASLInputError, match="n_pairs"):
        _small(plds=[1.0, 2.0], n_pairs=3)


# --------------------------------------------------------------------------
# BIDS layout and the project's reader


def test_dataset_layout_and_reader(tmp_path):
    root = phantom.simulate_phantom_dataset(
        tmp_path / "ds",
        n_subjects=1,
        seed=2,
        plds=[0.8, 1.6, 2.4],
        pld_repeats=1,
        outliers="slab_dropout",
        t1w_voxel_size=3.0,
        **SMALL,
    )
    s = "sub-01"
    for rel in (
        f"{s}/anat/{s}_T1w.nii.gz",
        f"{s}/anat/{s}_T1w.json",
        f"{s}/perf/{s}_asl.nii.gz",
        f"{s}/perf/{s}_asl.json",
        f"{s}/perf/{s}_aslcontext.tsv",
        f"{s}/perf/{s}_m0scan.nii.gz",
    ):
        assert (root / rel).is_file(), rel
    m0_md = json.loads((root / s / "perf" / f"{s}_m0scan.json").read_text())
    assert m0_md["IntendedFor"] == f"bids::{s}/perf/{s}_asl.nii.gz"
    truth = root / "derivatives" / "simulation" / s / "perf"
    for name in (
        "desc-true_cbf",
        "desc-true_att",
        "label-GM_probseg",
        "label-WM_probseg",
        "label-CSF_probseg",
        "desc-brain_mask",
        "desc-whitepaper_cbf",
    ):
        assert (truth / f"{s}_{name}.nii.gz").is_file(), name
    with open(truth / f"{s}_desc-true_outliers.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert rows and all(r["type"] == "slab_dropout" for r in rows)

    (run,) = collect_runs(root)
    assert run.shape[:3] == SMALL["shape"]
    assert run.n_volumes == 6
    np.testing.assert_allclose(sorted(set(run.plds)), [0.8, 1.6, 2.4])
    assert run.m0_type == "Separate"


def test_cli_phantom_options():
    args = parse_args(
        ["out", "--generator", "phantom", "--plds", "1.0", "2.0", "--motion", "drift"]
    )
    assert args.t1w_voxel_size == 1.5 and args.plds == [1.0, 2.0]
    assert parse_args(["out"]).t1w_voxel_size == 1.0
    with pytest.raises(SystemExit):
        parse_args(["out", "--motion", "drift"])  # phantom-only flag
    with pytest.raises(SystemExit):
        parse_args(["out", "--generator", "phantom", "--lesion"])
