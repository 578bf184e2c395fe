"""T1w preprocessing: bias correction, brain extraction, GM/WM/CSF maps.

Embedded backend on antspyx, template-driven so it works on real T1w images
(with skull, bias field and a different contrast from the simulator):

1. N4 bias-field correction (:func:`bias_correct`);
2. registration to nilearn's skull-stripped MNI152 template
   (:func:`asl_pipeline.registration.register_t1w_to_mni`): an affine of the
   brain cut out by an intensity-based rough mask
   (:func:`asl_pipeline.registration.rough_brain_mask`), then SyN of the
   brain region; fitting the whole head instead shrank some heads onto the
   brain (brain masks 1.7x too large, benchmarks/RESULTS.md);
3. brain mask = template brain mask pulled back through the inverse
   transform, thresholded at 0.5, holes filled, largest component kept;
4. Atropos (3-class finite mixture with an MRF) inside the mask, initialised
   and guided by the template GM/WM/CSF priors pulled back the same way
   (``prior_weight`` 0.25 as in antsCorticalThickness), giving GM, WM and CSF
   probability maps in the T1w space;
5. partial-volume fractions from the posteriors and the intensities
   (:func:`partial_volumes`), which the partial-volume correction reads.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from asl_pipeline.registration import (
    T1wToMNI,
    Template,
    _ants,
    check_3d,
    from_ants,
    load_template,
    register_t1w_to_mni,
    template_to_t1w,
    to_ants,
)

LOGGER = logging.getLogger("nipype.interface")


def bias_correct(t1w: nib.Nifti1Image, *, shrink_factor: int = 4) -> nib.Nifti1Image:
    """N4 bias-field correction (ANTs), intensities kept positive."""
    ants = _ants()
    img = to_ants(t1w)
    arr = img.numpy()
    floor = np.percentile(arr, 0.5)
    img = img.new_image_like(np.clip(arr - floor, 0, None) + 1e-3 * np.ptp(arr))
    out = ants.n4_bias_field_correction(img, shrink_factor=shrink_factor)
    return from_ants(out)


def clean_mask(mask) -> np.ndarray:
    """Largest connected component with holes filled."""
    m = np.asarray(mask, dtype=bool)
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum(m, lab, index=np.arange(1, n + 1))
        m = lab == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(m)


def segment_tissues(
    t1w: nib.Nifti1Image,
    mask,
    priors,
    *,
    prior_weight: float = 0.25,
    mrf: str = "[0.1,1x1x1]",
    iterations: int = 5,
) -> dict[str, np.ndarray]:
    """Atropos GM/WM/CSF posteriors inside ``mask`` guided by ``priors``.

    ``priors`` is a dict with ``gm``, ``wm``, ``csf`` arrays on the T1w grid.
    Returns ``gm``, ``wm``, ``csf`` probability maps (0 outside the mask) that
    sum to 1 inside it.
    """
    ants = _ants()
    img = to_ants(t1w)
    m = np.asarray(mask, dtype=bool)
    mask_img = img.new_image_like(m.astype(np.float32))
    eps = 1e-3
    prior_imgs = []
    for name in ("csf", "gm", "wm"):
        p = np.clip(np.asarray(priors[name], dtype=np.float32), 0, 1) * m
        prior_imgs.append(img.new_image_like(p + eps * m))
    with _private_tempdir():
        seg = ants.atropos(
            a=img,
            x=mask_img,
            i=prior_imgs,
            m=mrf,
            c=f"[{int(iterations)},0]",
            priorweight=prior_weight,
            r=0,  # --use-random-seed 0: Atropos' constant seed, so reruns are identical
        )
        probs = [p.numpy().astype(np.float32) for p in seg["probabilityimages"]]
    total = np.sum(probs, axis=0)
    total[total == 0] = 1
    out = {name: (p / total) * m for name, p in zip(("csf", "gm", "wm"), probs, strict=True)}
    return {k: out[k].astype(np.float32) for k in ("gm", "wm", "csf")}


#: Order of the classes along the T1w intensity axis (dark to bright).
PV_CLASSES = ("csf", "gm", "wm")


#: Posterior above which a voxel counts as pure when the class intensities
#: are measured (:func:`partial_volumes`).
PURE_POSTERIOR = 0.99
#: Fewest such voxels per class; below it the class's most probable voxels are used.
MIN_PURE_VOXELS = 50


@dataclass
class PartialVolumes:
    """Outputs of :func:`partial_volumes` (arrays on the T1w grid)."""

    gm: np.ndarray  #: GM fraction of each voxel
    wm: np.ndarray  #: WM fraction
    csf: np.ndarray  #: CSF fraction
    means: dict  #: pure-class intensities, ``{"csf", "gm", "wm"}``


def unmix(intensity, means) -> dict[str, np.ndarray]:
    """Fractions of a two-class mixel model between intensity-adjacent classes.

    A voxel darker than the GM mean mixes CSF and GM, a brighter one GM and
    WM; its fraction is where its intensity lies between the two means,
    clipped to [0, 1]. The fractions sum to 1.
    """
    x = np.asarray(intensity, dtype=np.float64)
    mu_csf, mu_gm, mu_wm = (float(means[c]) for c in PV_CLASSES)
    dark = x < mu_gm
    gm_of_dark = np.clip((x - mu_csf) / (mu_gm - mu_csf), 0.0, 1.0)
    wm_of_bright = np.clip((x - mu_gm) / (mu_wm - mu_gm), 0.0, 1.0)
    return {
        "gm": np.where(dark, gm_of_dark, 1.0 - wm_of_bright),
        "wm": np.where(dark, 0.0, wm_of_bright),
        "csf": np.where(dark, 1.0 - gm_of_dark, 0.0),
    }


def partial_volumes(t1w, mask, posteriors, *, pure: float = PURE_POSTERIOR) -> PartialVolumes:
    """Partial-volume fractions of a T1w image from a mixel model.

    A voxel at a tissue border holds two tissues, and its intensity is the
    fraction-weighted sum of the pure tissues' intensities (the mixel model
    behind FSL FAST's partial-volume maps; Tohka et al. 2004). The pure
    intensities are the median intensity of the voxels whose posterior of
    that class is at least ``pure`` (its most probable voxels if fewer than
    :data:`MIN_PURE_VOXELS`); the fractions follow from :func:`unmix`.

    Why: a finite-mixture posterior is a class probability, not a volume
    fraction, and is sharper than the partial volumes. On two subjects of
    each simulator, the GM fraction of the posteriors, averaged over 3-4 mm
    blocks where the true fraction is 0.3-0.7, was 0.10-0.14 from the truth
    (0.03-0.09 with this model); on the simulator the corrected GM CBF of
    the noise-free truth read 9-10% low (+0.5 to +1.0% with this model;
    ``benchmarks/RESULTS.md``, "Partial volumes of the T1w").

    ``t1w``: the bias-corrected image; ``mask``: brain mask; ``posteriors``:
    ``gm``, ``wm``, ``csf`` maps on the same grid. Returns float32 fractions
    (0 outside the mask) and the pure intensities. Three-tissue voxels (thin
    GM between CSF and WM) and deep grey nuclei read as two-tissue mixtures,
    the model's known limit. Raises ``ValueError`` if the intensities are
    not ordered CSF < GM < WM (not a T1-weighted contrast).
    """
    m = np.asarray(mask, dtype=bool)
    x = np.asarray(t1w, dtype=np.float64)[m]
    post = np.stack([np.asarray(posteriors[c], dtype=np.float64)[m] for c in PV_CLASSES], 1)
    means = {}
    for k, c in enumerate(PV_CLASSES):
        core = post[:, k] >= pure
        if core.sum() < MIN_PURE_VOXELS:
            core = post[:, k] >= np.sort(post[:, k])[-MIN_PURE_VOXELS]
        means[c] = float(np.median(x[core]))
    if not means["csf"] < means["gm"] < means["wm"]:
        raise ValueError(
            "the T1w tissue intensities are not ordered CSF < GM < WM ("
            + ", ".join(f"{c} {v:.4g}" for c, v in means.items())
            + "); partial volumes need a T1-weighted image"
        )
    frac = unmix(x, means)
    out = {}
    for c in PV_CLASSES:
        full = np.zeros(m.shape, np.float32)
        full[m] = frac[c]
        out[c] = full
    return PartialVolumes(gm=out["gm"], wm=out["wm"], csf=out["csf"], means=means)


@contextlib.contextmanager
def _private_tempdir():
    """Point ``tempfile`` at a folder removed on exit.

    antspyx's ``atropos`` writes its prior and posterior images under
    ``tempfile.gettempdir()`` and never deletes them (about 3 files of a few MB
    per call). Nodes run one per process, so the process-wide switch is safe.
    """
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="asl_atropos_") as tmp:
        tempfile.tempdir = tmp
        try:
            yield tmp
        finally:
            tempfile.tempdir = previous


@dataclass
class BrainResult:
    """Outputs of :func:`extract_brain` (images on the T1w grid)."""

    t1w_preproc: nib.Nifti1Image  #: bias-corrected T1w (with skull)
    t1w_brain: nib.Nifti1Image  #: bias-corrected T1w, zero outside the brain mask
    t1w_mask: nib.Nifti1Image  #: brain mask (uint8)
    mni: T1wToMNI  #: transforms and the T1w in MNI space


@dataclass
class TissueMaps:
    """Outputs of :func:`tissue_maps` (images on the T1w grid)."""

    gm: nib.Nifti1Image  #: GM probability
    wm: nib.Nifti1Image  #: WM probability
    csf: nib.Nifti1Image  #: CSF probability
    gm_pv: nib.Nifti1Image  #: GM partial-volume fraction
    wm_pv: nib.Nifti1Image  #: WM partial-volume fraction
    csf_pv: nib.Nifti1Image  #: CSF partial-volume fraction


@dataclass
class AnatResult:
    """Outputs of :func:`preprocess_t1w` (images on the T1w grid)."""

    t1w_preproc: nib.Nifti1Image  #: bias-corrected T1w (with skull)
    t1w_brain: nib.Nifti1Image  #: bias-corrected T1w, zero outside the brain mask
    t1w_mask: nib.Nifti1Image  #: brain mask (uint8)
    gm: nib.Nifti1Image  #: GM probability
    wm: nib.Nifti1Image  #: WM probability
    csf: nib.Nifti1Image  #: CSF probability
    mni: T1wToMNI  #: transforms and the T1w in MNI space
    gm_pv: nib.Nifti1Image | None = None  #: GM partial-volume fraction
    wm_pv: nib.Nifti1Image | None = None  #: WM partial-volume fraction
    csf_pv: nib.Nifti1Image | None = None  #: CSF partial-volume fraction


def extract_brain(
    t1w: nib.Nifti1Image,
    out_dir,
    *,
    template: Template | None = None,
    template_resolution: int = 2,
    transform: str = "SyN",
    reg_iterations=(40, 20, 10),
    n4_shrink: int = 4,
    seed: int = 1,
    t1w_file=None,
) -> BrainResult:
    """Steps 1-3: bias correction, MNI registration and the brain mask.

    ``seed`` seeds the random metric sampling of the MNI registration.
    """
    check_3d(t1w, "T1w", t1w_file)
    t1w = nib.Nifti1Image(np.squeeze(np.asarray(t1w.dataobj, dtype=np.float32)), t1w.affine)
    tpl = template or load_template(template_resolution)
    pre = bias_correct(t1w, shrink_factor=n4_shrink)
    reg = register_t1w_to_mni(
        pre,
        out_dir,
        template=tpl,
        template_resolution=template_resolution,
        transform=transform,
        reg_iterations=reg_iterations,
        seed=seed,
        t1w_file=t1w_file,
    )
    mask = clean_mask(template_to_t1w(tpl.brain_mask, pre, reg.mni_to_t1w).get_fdata() > 0.5)
    data = pre.get_fdata(dtype=np.float32)
    return BrainResult(
        t1w_preproc=pre,
        t1w_brain=nib.Nifti1Image(data * mask, pre.affine),
        t1w_mask=nib.Nifti1Image(mask.astype(np.uint8), pre.affine),
        mni=reg,
    )


def tissue_maps(
    t1w_preproc: nib.Nifti1Image,
    mask,
    mni_to_t1w,
    *,
    template: Template | None = None,
    template_resolution: int = 2,
    prior_weight: float = 0.25,
) -> TissueMaps:
    """Steps 4-5: Atropos tissue maps guided by the template priors, and partial volumes.

    ``t1w_preproc`` is the bias-corrected T1w and ``mask`` the brain mask of
    :func:`extract_brain`; ``mni_to_t1w`` is its transform (a file) that pulls
    the template's priors back onto the T1w grid.
    """
    tpl = template or load_template(template_resolution)
    mask = np.asarray(mask, dtype=bool)
    priors = {
        name: template_to_t1w(getattr(tpl, name), t1w_preproc, mni_to_t1w).get_fdata()
        for name in ("gm", "wm", "csf")
    }
    probs = segment_tissues(t1w_preproc, mask, priors, prior_weight=prior_weight)
    try:
        pv = partial_volumes(t1w_preproc.get_fdata(dtype=np.float32), mask, probs)
    except ValueError as err:  # not T1-weighted: no mixel model, so no partial volumes
        LOGGER.warning("%s; the partial-volume maps are the posteriors", err)
        pv = PartialVolumes(gm=probs["gm"], wm=probs["wm"], csf=probs["csf"], means={})

    def img(a):
        return nib.Nifti1Image(np.asarray(a, dtype=np.float32), t1w_preproc.affine)

    return TissueMaps(
        gm=img(probs["gm"]),
        wm=img(probs["wm"]),
        csf=img(probs["csf"]),
        gm_pv=img(pv.gm),
        wm_pv=img(pv.wm),
        csf_pv=img(pv.csf),
    )


def preprocess_t1w(
    t1w: nib.Nifti1Image,
    out_dir,
    *,
    template: Template | None = None,
    template_resolution: int = 2,
    transform: str = "SyN",
    reg_iterations=(40, 20, 10),
    prior_weight: float = 0.25,
    n4_shrink: int = 4,
    seed: int = 1,
    t1w_file=None,
) -> AnatResult:
    """Bias correction, MNI registration, brain extraction and tissue maps.

    :func:`extract_brain` then :func:`tissue_maps` (the pipeline runs them as
    two nodes, so the ASL registration needs only the first). ``seed`` seeds
    the random metric sampling of the MNI registration (Atropos runs with its
    own constant seed).
    """
    tpl = template or load_template(template_resolution)
    brain = extract_brain(
        t1w,
        out_dir,
        template=tpl,
        template_resolution=template_resolution,
        transform=transform,
        reg_iterations=reg_iterations,
        n4_shrink=n4_shrink,
        seed=seed,
        t1w_file=t1w_file,
    )
    maps = tissue_maps(
        brain.t1w_preproc,
        np.asarray(brain.t1w_mask.dataobj, dtype=bool),
        brain.mni.mni_to_t1w,
        template=tpl,
        prior_weight=prior_weight,
    )
    return AnatResult(
        t1w_preproc=brain.t1w_preproc,
        t1w_brain=brain.t1w_brain,
        t1w_mask=brain.t1w_mask,
        gm=maps.gm,
        wm=maps.wm,
        csf=maps.csf,
        mni=brain.mni,
        gm_pv=maps.gm_pv,
        wm_pv=maps.wm_pv,
        csf_pv=maps.csf_pv,
    )
