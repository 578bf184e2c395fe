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
   probability maps in the T1w space.
"""

from __future__ import annotations

import contextlib
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
class AnatResult:
    """Outputs of :func:`preprocess_t1w` (images on the T1w grid)."""

    t1w_preproc: nib.Nifti1Image  #: bias-corrected T1w (with skull)
    t1w_brain: nib.Nifti1Image  #: bias-corrected T1w, zero outside the brain mask
    t1w_mask: nib.Nifti1Image  #: brain mask (uint8)
    gm: nib.Nifti1Image  #: GM probability
    wm: nib.Nifti1Image  #: WM probability
    csf: nib.Nifti1Image  #: CSF probability
    mni: T1wToMNI  #: transforms and the T1w in MNI space


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

    ``seed`` seeds the random metric sampling of the MNI registration (Atropos
    runs with its own constant seed).
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
    mask_p = template_to_t1w(tpl.brain_mask, pre, reg.mni_to_t1w).get_fdata()
    mask = clean_mask(mask_p > 0.5)
    priors = {
        name: template_to_t1w(getattr(tpl, name), pre, reg.mni_to_t1w).get_fdata()
        for name in ("gm", "wm", "csf")
    }
    probs = segment_tissues(pre, mask, priors, prior_weight=prior_weight)
    data = pre.get_fdata(dtype=np.float32)

    def img(a, dtype=np.float32):
        return nib.Nifti1Image(np.asarray(a, dtype=dtype), pre.affine)

    return AnatResult(
        t1w_preproc=pre,
        t1w_brain=img(data * mask),
        t1w_mask=img(mask, np.uint8),
        gm=img(probs["gm"]),
        wm=img(probs["wm"]),
        csf=img(probs["csf"]),
        mni=reg,
    )
