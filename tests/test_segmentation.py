"""T1w brain extraction and tissue segmentation (embedded backend).

Fast tests: the intensity-based rough brain mask that initialises the
T1w -> MNI affine, on a concentric-shell head phantom whose brain is known.
Slow test: :func:`asl_pipeline.segmentation.preprocess_t1w` on two simulated
subjects, one of which (``simulate_dataset(seed=21)``'s first subject) had a
brain mask 1.7x too large before the affine was run on the rough brain
(benchmarks/RESULTS.md, "T1w brain extraction robustness").
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline import registration as reg
from asl_pipeline.qc import dice

#: T1w intensities of the phantom's shells (as in the simulator: bright WM,
#: GM, dark CSF and skull, bright scalp fat) and their outer radii in mm
SHELLS = (("wm", 1.00, 38.0), ("gm", 0.62, 45.0), ("csf", 0.18, 47.5), ("skull", 0.06, 53.0))
SCALP = (0.85, 59.0)


def _phantom(seed: int, voxel: float = 2.0, n: int = 72, scalp_radius: float = SCALP[1]):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-6, 6, 3)
    x = (np.indices((n,) * 3).T * voxel - (n - 1) * voxel / 2).T
    # an ellipsoidal head: stretch y by 1.15, squash z by 0.9
    r = np.sqrt(
        (x[0] - centre[0]) ** 2
        + ((x[1] - centre[1]) / 1.15) ** 2
        + ((x[2] - centre[2]) / 0.9) ** 2
    )
    img = np.full(r.shape, 0.01)
    img[r < scalp_radius] = SCALP[0]
    for _, value, radius in reversed(SHELLS):
        img[r < radius] = value
    img = np.abs(img + rng.normal(0, 0.03, img.shape) + 1j * rng.normal(0, 0.03, img.shape))
    return 1000 * img.astype(np.float32), r < SHELLS[1][2], r >= SHELLS[-1][2]


@pytest.mark.parametrize("seed", [0, 1])
def test_rough_brain_mask_cuts_the_brain_from_the_scalp(seed):
    img, brain, outside_skull = _phantom(seed)
    mask = reg.rough_brain_mask(img, (2.0, 2.0, 2.0))
    # all of the brain, none of the scalp, a margin of about margin_mm (2 mm)
    assert (mask & brain).sum() / brain.sum() > 0.99
    assert not (mask & outside_skull).any()
    assert dice(mask, brain) > 0.93


def test_rough_brain_mask_deeper_erosion_cuts_a_bright_bridge():
    # a scalp 17 mm thick, joined to the brain by a bright rod 10 mm across
    img, brain, outside_skull = _phantom(3, n=90, scalp_radius=70.0)
    x = (np.indices(img.shape).T * 2.0 - 89).T
    rod = (np.hypot(x[1], x[2]) < 5) & (x[0] > 0)
    img[rod & ~brain] = 800
    whole = reg.rough_brain_mask(img, (2.0,) * 3, max_volume_ml=1e6)
    assert (whole & outside_skull).sum() > 1000  # the 4 mm erosion leaves the scalp on
    mask = reg.rough_brain_mask(img, (2.0,) * 3, max_volume_ml=900)
    assert (mask & brain).sum() / brain.sum() > 0.99
    assert (mask & outside_skull & ~rod).sum() == 0
    assert dice(mask, brain) > 0.9


def test_rough_brain_mask_anisotropic_grid():
    img, brain, outside_skull = _phantom(2, voxel=1.5, n=96)
    # keep every other slice along z: 1.5 x 1.5 x 3 mm voxels
    img, brain, outside_skull = img[..., ::2], brain[..., ::2], outside_skull[..., ::2]
    mask = reg.rough_brain_mask(img, (1.5, 1.5, 3.0))
    assert (mask & brain).sum() / brain.sum() > 0.99
    assert not (mask & outside_skull).any()


def test_otsu_threshold_known_answers():
    rng = np.random.default_rng(5)
    # two equal, equally wide modes: the midpoint
    x = np.concatenate([rng.normal(100, 10, 20000), rng.normal(300, 10, 20000)])
    assert abs(reg._otsu(x) - 200) < 10
    # unequal modes: the maximum of the between-class variance, by brute force
    x = np.concatenate([rng.normal(100, 10, 20000), rng.normal(300, 20, 10000)])
    grid = np.linspace(x.min(), x.max(), 801)
    var = [
        (x <= t).mean() * (x > t).mean() * (x[x <= t].mean() - x[x > t].mean()) ** 2
        for t in grid[1:-1]
    ]
    var = np.asarray(var)
    plateau = grid[1:-1][var >= var.max() * (1 - 1e-9)]
    best = (plateau[0] + plateau[-1]) / 2
    assert abs(reg._otsu(x) - best) < np.ptp(x) / 256 * 1.5


@pytest.mark.slow
@pytest.mark.parametrize(
    "seed",
    [
        2366939832,  # simulate_dataset(seed=21) sub-01: brain mask Dice 0.74 before
        1576890651,  # simulate_dataset(seed=3) sub-01
    ],
)
def test_preprocess_t1w_dice_on_simulated_subjects(seed, tmp_path):
    from asl_pipeline.segmentation import preprocess_t1w
    from asl_pipeline.simulate.series import simulate_subject

    s = simulate_subject(seed, n_pairs=4, t1w_voxel_size=2.0)
    res = preprocess_t1w(nib.Nifti1Image(s.t1w, s.t1w_affine), tmp_path)
    mask = res.t1w_mask.get_fdata() > 0
    truth_mask = s.brain_mask_t1w > 0
    assert dice(mask, truth_mask) >= 0.95
    truth = np.argmax(np.stack([s.gm_t1w, s.wm_t1w, s.csf_t1w]), 0)
    est = np.argmax(np.stack([res.gm.get_fdata(), res.wm.get_fdata(), res.csf.get_fdata()]), 0)
    for k, name in enumerate(("gm", "wm")):
        d = dice((est == k) & mask, (truth == k) & truth_mask)
        assert d >= 0.8, (name, d)


def test_segment_tissues_repeats_exactly(tmp_path, monkeypatch):
    """Atropos runs with its constant seed: the same input gives the same maps,
    and it leaves none of its temporary images behind."""
    import tempfile

    from asl_pipeline.segmentation import segment_tissues

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    rng = np.random.default_rng(0)
    label = np.indices((24, 24, 24))[0] // 8
    data = (np.choose(label, [30.0, 60.0, 90.0]) + rng.normal(0, 12, label.shape)).astype(
        np.float32
    )
    img = nib.Nifti1Image(data, np.eye(4))
    mask = np.ones(label.shape, bool)
    priors = {name: (label == k) * 0.8 + 0.1 for k, name in enumerate(("csf", "gm", "wm"))}
    first = segment_tissues(img, mask, priors)
    second = segment_tissues(img, mask, priors)
    for name in ("gm", "wm", "csf"):
        np.testing.assert_array_equal(first[name], second[name])
    assert (first["wm"][label == 2] > 0.5).mean() > 0.9
    assert list(tmp_path.iterdir()) == []
    assert tempfile.tempdir == str(tmp_path)


def _mixed_shells(seed: int, n: int = 48, voxel: float = 2.0, noise: float = 0.02):
    """A brain of WM, GM and CSF shells with true partial volumes at their borders.

    Each voxel's fractions are the share of 4 x 4 x 4 sub-points in each shell,
    its intensity their weighted sum of the shells' intensities plus Gaussian
    noise; the "posteriors" are what a sharp classifier returns: the
    majority tissue gets 0.98.
    """
    rng = np.random.default_rng(seed)
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    centre = (n - 1) * voxel / 2 + rng.uniform(-1, 1, 3)
    radii = {"wm": 30.0, "gm": 36.0, "csf": 40.0}  # outer radii (mm), GM 6 mm thick
    fractions = {t: np.zeros((n,) * 3) for t in radii}
    grid = np.indices((n,) * 3).astype(float) * voxel
    for dx in sub:
        for dy in sub:
            for dz in sub:
                p = grid + np.array([dx, dy, dz])[:, None, None, None] * voxel
                r = np.sqrt(((p - centre[:, None, None, None]) ** 2).sum(0))
                inner = 0.0
                for t in ("wm", "gm", "csf"):
                    fractions[t] += ((r >= inner) & (r < radii[t])) / 64
                    inner = radii[t]
    intensity = {"csf": 180.0, "gm": 620.0, "wm": 1000.0}
    image = sum(fractions[t] * intensity[t] for t in radii) + rng.normal(0, noise * 1000, (n,) * 3)
    brain = sum(fractions.values()) > 0.5
    major = np.argmax(np.stack([fractions[t] for t in ("csf", "gm", "wm")]), 0)
    posteriors = {
        t: np.where(major == k, 0.98, 0.01) * brain for k, t in enumerate(("csf", "gm", "wm"))
    }
    return image, brain, posteriors, fractions, intensity


@pytest.mark.parametrize("seed", [0, 1])
def test_partial_volumes_recover_the_true_fractions(seed):
    from asl_pipeline.segmentation import partial_volumes

    image, brain, posteriors, truth, intensity = _mixed_shells(seed)
    pv = partial_volumes(image, brain, posteriors)
    for t, value in intensity.items():
        assert pv.means[t] == pytest.approx(value, rel=0.03)
    total = pv.gm + pv.wm + pv.csf
    np.testing.assert_allclose(total[brain], 1.0, atol=1e-6)
    assert np.all(total[~brain] == 0)
    # border voxels: the posteriors' GM is off by about 0.3, the mixel model's by < 0.06
    border = brain & (truth["gm"] > 0.2) & (truth["gm"] < 0.8)
    assert border.sum() > 500
    err_pv = np.mean(np.abs(pv.gm[border] - truth["gm"][border]))
    err_post = np.mean(np.abs(posteriors["gm"][border] - truth["gm"][border]))
    assert err_pv < 0.06 and err_post > 0.2, (err_pv, err_post)
    # no bias in the GM volume of the border voxels
    assert pv.gm[border].sum() == pytest.approx(truth["gm"][border].sum(), rel=0.03)


def test_partial_volumes_refuse_a_contrast_that_is_not_t1_weighted():
    from asl_pipeline.segmentation import partial_volumes

    image, brain, posteriors, _, _ = _mixed_shells(0)
    with pytest.raises(ValueError, match="CSF < GM < WM"):
        partial_volumes(2000.0 - image, brain, posteriors)  # T2-like: bright CSF


def test_preprocess_t1w_falls_back_to_the_posteriors_without_t1_contrast(monkeypatch, caplog):
    """A contrast the mixel model cannot read must not stop a run that needs no PVC."""
    from asl_pipeline import segmentation as seg

    image, brain, posteriors, _, _ = _mixed_shells(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image((2000.0 - image).astype(np.float32), affine)  # bright CSF

    class _Reg:
        mni_to_t1w = "identity"

    monkeypatch.setattr(seg, "bias_correct", lambda t1w, shrink_factor: t1w)
    monkeypatch.setattr(seg, "register_t1w_to_mni", lambda *a, **k: _Reg())
    monkeypatch.setattr(
        seg,
        "load_template",
        lambda resolution: type("T", (), dict.fromkeys(("brain_mask", "gm", "wm", "csf")))(),
    )
    monkeypatch.setattr(
        seg,
        "template_to_t1w",
        lambda image, ref, xfm: nib.Nifti1Image(brain.astype(np.float32), affine),
    )
    monkeypatch.setattr(seg, "segment_tissues", lambda *a, **k: posteriors)
    with caplog.at_level("WARNING", logger="nipype.interface"):
        res = seg.preprocess_t1w(img, ".")
    assert "CSF < GM < WM" in caplog.text
    np.testing.assert_array_equal(res.gm_pv.get_fdata(), res.gm.get_fdata())
