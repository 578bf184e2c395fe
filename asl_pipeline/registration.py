"""Registration: ASL reference -> T1w (rigid), T1w -> MNI152 (affine + SyN).

Embedded backend built on antspyx (ANTs registration called from Python, no
command-line tools). Transforms are written in ITK formats: rigid/affine
transforms as ``.mat`` (ITK MatrixOffsetTransform), T1w <-> MNI as ITK
composite ``.h5`` files holding the affine and the SyN displacement field, so
any ANTs/ITK/nitransforms tool reads them.

Direction conventions (ANTs'): a transform named ``a_to_b`` is the one used to
*resample an image of space a into space b*; as a point mapping it takes
points of b to points of a (the "pull" direction). :func:`apply_transforms`
chains ``asl_to_t1w`` and ``t1w_to_mni`` so a map in ASL space is resampled
into MNI space in one interpolation.

The template is nilearn's bundled MNI152 (2009, symmetric, skull-stripped:
zero outside its brain mask), at ``template_resolution`` mm (2 by
default; it ships 1 and 2). Steps of :func:`register_t1w_to_mni`:

1. affine registration (Mattes MI, centre-of-mass start) of the T1w brain
   cut out by an intensity-based rough brain mask (:func:`rough_brain_mask`;
   the template is skull-stripped, and an affine of a whole head to it can
   shrink the head onto the brain),
2. the template brain mask brought back through the affine and dilated by
   ``mask_dilation_mm`` restricts the moving image to the brain region,
3. SyN of the masked T1w to the skull-stripped template, starting from the
   affine, so the skull and scalp (which vary between subjects and are absent
   from the priors) do not drive the non-linear stage.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from asl_pipeline.errors import ASLInputError
from asl_pipeline.qc import largest_component

LOGGER = logging.getLogger("asl_pipeline.registration")


def _ants(seed: int | None = None):
    """antspyx, with ``seed`` for the random metric sampling of its registrations.

    antspyx passes a seed to ANTs only when told to; the registrations below
    are given theirs as an argument (a node input, so that another seed is
    another result), never through the environment.
    """
    import ants  # imported lazily: antspyx is heavy and only the embedded backend needs it

    if seed is not None:
        ants.config._random_seed = int(seed)
    return ants


def to_ants(img: nib.spatialimages.SpatialImage):
    """nibabel image -> ANTsImage (float32, through a temporary NIfTI file)."""
    ants = _ants()
    arr = np.asarray(img.dataobj, dtype=np.float32)
    tmp = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False)
    tmp.close()
    try:
        nib.save(nib.Nifti1Image(arr, img.affine), tmp.name)
        return ants.image_read(tmp.name)
    finally:
        os.unlink(tmp.name)


def from_ants(image) -> nib.Nifti1Image:
    """ANTsImage -> nibabel image (through a temporary NIfTI file)."""
    tmp = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False)
    tmp.close()
    try:
        image.to_file(tmp.name)
        out = nib.load(tmp.name)
        return nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.float32), out.affine)
    finally:
        os.unlink(tmp.name)


# --------------------------------------------------------------------------
# Template
# --------------------------------------------------------------------------
@dataclass
class Template:
    """The MNI152 template and tissue priors shipped with nilearn."""

    t1: nib.Nifti1Image
    brain_mask: nib.Nifti1Image
    gm: nib.Nifti1Image
    wm: nib.Nifti1Image
    csf: nib.Nifti1Image


def load_template(resolution: int = 2) -> Template:
    """nilearn's bundled MNI152 T1 (skull-stripped), brain mask and GM/WM/CSF priors.

    CSF prior = brain mask - GM - WM clipped to [0, 1] (GM and WM rescaled
    where they sum above 1). Nothing is downloaded.
    """
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=resolution)
    mask_img = datasets.load_mni152_brain_mask(resolution=resolution)
    gm = np.clip(np.asarray(datasets.load_mni152_gm_template(resolution=resolution).dataobj), 0, 1)
    wm = np.clip(np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj), 0, 1)
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    brain = np.asarray(mask_img.dataobj, dtype=np.float32)
    csf = np.clip(brain - gm - wm, 0, 1) * (brain > 0)
    aff = t1.affine

    def img(a):
        return nib.Nifti1Image(np.asarray(a, dtype=np.float32), aff)

    return Template(
        t1=img(t1.dataobj),
        brain_mask=img(brain > 0.5),
        gm=img(gm),
        wm=img(wm),
        csf=img(csf),
    )


# --------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------
def check_3d(img, name: str, file=None) -> np.ndarray:
    """Data of a 3D image (a 4D image with one volume is accepted); else ASLInputError."""
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.size == 0 or 0 in data.shape:
        raise ASLInputError(
            f"the {name} image is empty (shape {data.shape}).",
            file=file,
            field="dim",
            fix=f"provide a non-empty 3D {name} image.",
        )
    if data.ndim != 3:
        raise ASLInputError(
            f"the {name} image must be 3D; got shape {data.shape}.",
            file=file,
            field="dim",
            fix=f"provide a single 3D {name} volume (average 4D series first).",
        )
    if min(data.shape) < 4:
        raise ASLInputError(
            f"the {name} image is too small to register ({data.shape}).",
            file=file,
            field="dim",
            fix=f"provide a {name} image with at least 4 voxels along every axis.",
        )
    if not np.isfinite(data).all() or np.ptp(data) == 0:
        raise ASLInputError(
            f"the {name} image is constant or has non-finite values.",
            file=file,
            field="data",
            fix=f"check the {name} file: it carries no image contrast.",
        )
    return data


# --------------------------------------------------------------------------
# Rough brain extraction (initialises the T1w -> MNI affine)
# --------------------------------------------------------------------------
def _otsu(values, nbins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (maximum between-class variance)."""
    hist, edges = np.histogram(values, bins=nbins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(float)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    var = w0 * w1 * (m0 - m1) ** 2
    # empty bins between the modes give a plateau: take its middle
    best = np.flatnonzero(var >= var.max() * (1 - 1e-9))
    return float((centres[best[0]] + centres[best[-1]]) / 2)


def _erode(mask: np.ndarray, radius_mm: float, zooms) -> np.ndarray:
    """Binary erosion by a ball of ``radius_mm`` (Euclidean distance transform)."""
    return ndimage.distance_transform_edt(mask, sampling=zooms) > radius_mm


def _dilate(mask: np.ndarray, radius_mm: float, zooms) -> np.ndarray:
    """Binary dilation by a ball of ``radius_mm`` (Euclidean distance transform)."""
    if not mask.any():
        return mask
    return ndimage.distance_transform_edt(~mask, sampling=zooms) <= radius_mm


def rough_brain_mask(
    data,
    zooms,
    *,
    erode_mm: float = 4.0,
    margin_mm: float = 2.0,
    max_volume_ml: float = 2800.0,
) -> np.ndarray:
    """Intensity-based brain mask of a T1w head image (skull and scalp removed).

    Used to initialise the T1w -> MNI affine: an affine of a whole head
    (skull and scalp on) to the skull-stripped MNI template tends to shrink
    the head onto the brain. Steps: Otsu threshold of the non-background
    intensities -> head (largest component, holes filled); within the head,
    voxels above half of a second Otsu threshold (GM and WM, and bright scalp
    fat; CSF and skull are dark on a T1w); erosion by ``erode_mm`` cuts the
    brain from the scalp through the dark skull; the largest component is
    the brain; it is dilated back by ``erode_mm`` within the bright voxels,
    holes filled (ventricles) and dilated by ``margin_mm`` (sulcal CSF).
    Where the result is larger than ``max_volume_ml`` (an adult brain with
    its CSF is about 1.2-2 L; a result that big still holds scalp, joined to
    the brain through bright tissue such as skull marrow), the erosion is
    repeated 1.5 and 2 times deeper; the last result is returned.
    """
    a = np.asarray(data, dtype=np.float32)
    zooms = np.asarray(zooms, float)[:3]
    t_bg = _otsu(a[a > np.percentile(a, 1)])
    head = ndimage.binary_fill_holes(largest_component(a > 0.5 * t_bg))
    tissue = head & (a > 0.5 * _otsu(a[head]))
    for depth in (erode_mm, 1.5 * erode_mm, 2.0 * erode_mm):
        core = largest_component(_erode(tissue, depth, zooms))
        brain = ndimage.binary_fill_holes(_dilate(core, depth, zooms) & tissue)
        brain = ndimage.binary_fill_holes(_dilate(brain, margin_mm, zooms))
        if brain.sum() * np.prod(zooms) / 1000.0 <= max_volume_ml:
            break
    return brain


# --------------------------------------------------------------------------
# T1w -> MNI
# --------------------------------------------------------------------------
@dataclass
class T1wToMNI:
    """Result of :func:`register_t1w_to_mni` (all paths are files on disk)."""

    t1w_to_mni: str  #: ITK composite (.h5): resamples T1w images into MNI
    mni_to_t1w: str  #: ITK composite (.h5): resamples MNI images into T1w
    affine: str  #: the affine stage alone (.mat)
    warped: nib.Nifti1Image  #: the T1w resampled into MNI space


def register_t1w_to_mni(
    t1w: nib.Nifti1Image,
    out_dir,
    *,
    template: Template | None = None,
    template_resolution: int = 2,
    transform: str = "SyN",
    reg_iterations=(40, 20, 10),
    grad_step: float = 0.3,
    flow_sigma: float = 5.0,
    total_sigma: float = 2.0,
    mask_dilation_mm: float = 6.0,
    skull_strip: bool = True,
    seed: int = 1,
    t1w_file=None,
) -> T1wToMNI:
    """Affine then (``transform="SyN"``) non-linear registration of a T1w to MNI.

    ``transform="Affine"`` stops after the affine stage. ``reg_iterations``
    are SyN's iterations per level (shrink 4, 2, 1; 0 skips a level);
    ``grad_step``, ``flow_sigma`` (update field) and ``total_sigma`` (total
    field) regularise it. The defaults are stiffer than antspyx's
    (0.2, 3, 0): on simulated subjects with a smooth 24 mm-scale deformation
    they roughly halved the error inside the brain (benchmarks/bench_spatial.py).
    ``skull_strip`` (default True) runs the affine stage on the T1w masked by
    :func:`rough_brain_mask`; False registers the whole image (for an input
    that is already skull-stripped, or to reproduce the earlier behaviour,
    which scaled some skull-on heads onto the brain: benchmarks/RESULTS.md).
    """
    ants = _ants(seed)
    data = check_3d(t1w, "T1w", t1w_file)
    if transform not in ("SyN", "Affine"):
        raise ValueError("transform must be 'SyN' or 'Affine'")
    tpl = template or load_template(template_resolution)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fixed = to_ants(tpl.t1)
    moving = to_ants(t1w)
    moving_aff = moving
    if skull_strip:
        zooms = np.asarray(t1w.header.get_zooms()[:3], float)
        rough = rough_brain_mask(data, zooms)
        if rough.sum() >= 0.02 * rough.size:  # else no brain found: the whole image
            moving_aff = moving * moving.new_image_like(rough.astype(np.float32))
    aff = ants.registration(
        fixed,
        moving_aff,
        type_of_transform="Affine",
        outprefix=str(out_dir / "t1w2mni_aff_"),
        aff_random_sampling_rate=0.25,
    )
    affine_mat = str(out_dir / "t1w_to_mni_affine.mat")
    shutil.copy(aff["fwdtransforms"][0], affine_mat)
    if transform == "Affine":
        fwd = str(out_dir / "t1w_to_mni.mat")
        shutil.copy(affine_mat, fwd)
        warped = ants.apply_transforms(fixed, moving, [fwd])
        return T1wToMNI(fwd, fwd, affine_mat, from_ants(warped))

    # brain region of the subject from the template mask through the affine
    tpl_mask = to_ants(tpl.brain_mask)
    sub_mask = ants.apply_transforms(
        moving, tpl_mask, [affine_mat], whichtoinvert=[True], interpolator="linear"
    )
    zooms = np.asarray(t1w.header.get_zooms()[:3], float)
    m = sub_mask.numpy() > 0.5
    iters = max(1, int(round(mask_dilation_mm / zooms.min())))
    m = ndimage.binary_dilation(m, iterations=iters)
    dil_mask = sub_mask.new_image_like(m.astype(np.float32))
    tpl_dil = tpl_mask.new_image_like(
        ndimage.binary_dilation(
            tpl.brain_mask.get_fdata() > 0.5,
            iterations=max(1, int(round(mask_dilation_mm / template_resolution))),
        ).astype(np.float32)
    )
    syn = ants.registration(
        fixed * tpl_dil,
        moving * dil_mask,
        type_of_transform="SyNOnly",
        initial_transform=affine_mat,
        outprefix=str(out_dir / "t1w2mni_syn_"),
        reg_iterations=tuple(reg_iterations),
        grad_step=grad_step,
        flow_sigma=flow_sigma,
        total_sigma=total_sigma,
        write_composite_transform=True,
    )
    fwd = str(out_dir / "t1w_to_mni.h5")
    inv = str(out_dir / "mni_to_t1w.h5")
    shutil.copy(syn["fwdtransforms"], fwd)
    shutil.copy(syn["invtransforms"], inv)
    warped = ants.apply_transforms(fixed, moving, [fwd])
    return T1wToMNI(fwd, inv, affine_mat, from_ants(warped))


def template_to_t1w(
    image: nib.Nifti1Image, t1w: nib.Nifti1Image, mni_to_t1w: str, *, interpolator="linear"
) -> nib.Nifti1Image:
    """Resample a template-space image onto the T1w grid."""
    ants = _ants()
    out = ants.apply_transforms(
        to_ants(t1w), to_ants(image), [mni_to_t1w], interpolator=interpolator
    )
    return from_ants(out)


# --------------------------------------------------------------------------
# ASL -> T1w
# --------------------------------------------------------------------------
def flatten_reference(ref: nib.Nifti1Image, *, ref_file=None) -> nib.Nifti1Image:
    """The ASL reference with its smooth intensity non-uniformity removed (N4).

    One of the images :func:`register_asl_to_t1w` starts from. With
    background suppression and a 2D readout each slice is read at another
    time after the suppression pulses, so the static tissue recovers from
    slice to slice: on the validation panel's 2D multi-PLD subject the
    reference was 4.5 times brighter in the last slice than in the first (in
    units of M0), and the registration of the reference as given matched
    that gradient instead of the anatomy (15 mm mean error; 0.4 mm from the
    flattened reference). A polynomial of the slice time fitted to the slice
    levels was tried instead and rejected: it also removed the anatomy's own
    variation along z. The grid and affine are kept; only the intensities
    change.
    """
    ants = _ants()
    data = np.clip(check_3d(ref, "ASL reference", ref_file), 0, None)  # N4 works on logs
    corrected = ants.n4_bias_field_correction(to_ants(nib.Nifti1Image(data, ref.affine)))
    out = from_ants(corrected)
    return nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.float32), ref.affine)


#: Starting points of :func:`register_asl_to_t1w`: (image registered, initial transform).
REGISTRATION_STARTS = (
    ("reference", "com"),
    ("reference", "identity"),
    ("flattened", "com"),
    ("flattened", "identity"),
)


def register_asl_to_t1w(
    ref: nib.Nifti1Image,
    t1w_brain: nib.Nifti1Image,
    out_file,
    *,
    t1w_mask: nib.Nifti1Image | None = None,
    metric: str = "mattes",
    iterations=(200, 100, 50),
    ref_file=None,
    seed: int = 1,
    starts=REGISTRATION_STARTS,
) -> str:
    """Rigid registration (6 dof, Mattes MI) of the ASL reference and the T1w brain.

    The metric is sampled on the (coarse) ASL grid: the T1w brain is the
    moving image and the exact inverse of the rigid result is written. On a
    simulated subject this was 5x faster and more accurate (0.13 vs 0.28 mm
    mean error in the brain) than sampling the 2 mm T1w grid.
    ``iterations`` are per level (shrink 4, 2, 1).

    One optimisation can stop in a local optimum several mm from the truth:
    on the validation panel a 2D background-suppressed reference (brighter
    from slice to slice) ended 15 mm off, and a 3D one 7-8 mm off from some
    starts. The registration therefore runs from each of ``starts``: the
    reference as given or :func:`flatten_reference`'s, started from the
    centres of intensity mass (``"com"``, ANTs' default) or from the scanner
    coordinates (``"identity"``: ASL and T1w of one session share them). The
    result kept is the one whose T1w brain, resampled onto the ASL grid,
    has the highest mutual information with the flattened reference (the
    quantity the starts optimise, scored on one image so the values compare;
    scored on the reference as given, a slice-to-slice gradient made a
    5 mm-off result look best).

    ``out_file`` receives the ITK ``.mat``: it resamples ASL-space images into
    T1w space (apply it inverted to bring T1w-space maps into ASL space).
    """
    ants = _ants(seed)
    check_3d(ref, "ASL reference", ref_file)
    unknown = [s for s in starts if s[0] not in ("reference", "flattened")]
    unknown += [s for s in starts if s[1] not in ("com", "identity")]
    if not starts or unknown:
        raise ValueError(f"starts must be (reference|flattened, com|identity) pairs: {starts}")
    fixed = {
        "reference": to_ants(ref),
        "flattened": to_ants(flatten_reference(ref, ref_file=ref_file)),
    }
    moving = to_ants(t1w_brain)
    kwargs = {}
    if t1w_mask is not None:
        kwargs["moving_mask"] = to_ants(t1w_mask)
    best = None
    for image, initial in starts:
        prefix = f"{Path(out_file).with_suffix('')}_{image}_{initial}_"
        out = ants.registration(
            fixed[image],
            moving,
            type_of_transform="Rigid",
            outprefix=prefix,
            aff_metric=metric,
            aff_random_sampling_rate=1.0,
            aff_iterations=tuple(iterations),
            aff_shrink_factors=(4, 2, 1)[-len(iterations) :],
            aff_smoothing_sigmas=(2, 1, 0)[-len(iterations) :],
            initial_transform=["Identity"] if initial == "identity" else None,
            **kwargs,
        )
        # ANTs reports the metric as a cost: lower is more mutual information
        cost = ants.image_mutual_information(fixed["flattened"], out["warpedmovout"])
        LOGGER.info("ASL -> T1w from %s/%s: MI cost %.4f", image, initial, cost)
        if best is None or cost < best[0]:
            best = (cost, out["fwdtransforms"][0], image, initial)
    LOGGER.info("ASL -> T1w: kept the start %s/%s", best[2], best[3])
    # the result resamples T1w into ASL (maps ASL points to T1w points);
    # asl_to_t1w is its inverse
    t1w_to_asl = read_itk_affine(best[1])
    return write_itk_affine(np.linalg.inv(t1w_to_asl), out_file)


def to_asl_space(
    image: nib.Nifti1Image, ref: nib.Nifti1Image, asl_to_t1w: str, *, interpolator="linear"
) -> nib.Nifti1Image:
    """Resample a T1w-space image onto the ASL grid (inverse of ``asl_to_t1w``)."""
    ants = _ants()
    out = ants.apply_transforms(
        to_ants(ref),
        to_ants(image),
        [asl_to_t1w],
        whichtoinvert=[True],
        interpolator=interpolator,
    )
    return from_ants(out)


def fractions_to_asl_space(
    image: nib.Nifti1Image, ref: nib.Nifti1Image, asl_to_t1w: str, *, points=None
) -> nib.Nifti1Image:
    """A T1w-space probability map as the fraction of each ASL voxel.

    The map is resampled (linear, through the inverse of ``asl_to_t1w``) onto
    a grid that splits each ASL voxel into ``points`` sub-voxels (default: as
    many per axis as T1w voxels fit, :func:`asl_pipeline.pvc.supersampling`),
    then averaged per voxel (:func:`asl_pipeline.pvc.block_mean`), clipped
    to [0, 1]. The result describes the volume each ASL voxel measures, where
    :func:`to_asl_space` reads the map at the voxel's centre only. On eight
    simulated panel subjects (both generators; 3.4 x 3.4 x 6 mm and
    3.75 x 3.75 x 5 mm voxels) the GM fraction of voxels whose true fraction
    is 0.3-0.7 was 0.11-0.13 from the truth on average here and 0.24-0.28 at
    the centre (``benchmarks/RESULTS.md``, "Tissue maps on the ASL grid").
    """
    from asl_pipeline import pvc

    if points is None:
        points = pvc.supersampling(ref.header.get_zooms()[:3], image.header.get_zooms()[:3])
    shape = ref.shape[:3]
    fine_affine, fine_shape = pvc.fine_grid(ref.affine, shape, points)
    fine_ref = nib.Nifti1Image(np.zeros(fine_shape, np.float32), fine_affine)
    fine = to_asl_space(image, fine_ref, asl_to_t1w).get_fdata()
    frac = np.clip(pvc.block_mean(fine, points), 0.0, 1.0).astype(np.float32)
    return nib.Nifti1Image(frac, ref.affine)


def apply_transforms(
    image: nib.Nifti1Image,
    reference: nib.Nifti1Image,
    transforms,
    *,
    interpolator: str = "linear",
) -> nib.Nifti1Image:
    """Resample ``image`` onto ``reference`` through a chain, in one interpolation.

    ``transforms`` lists the transforms in ANTs' order (the one applied to the
    image first comes last), e.g. ``[t1w_to_mni, asl_to_t1w]`` to bring an
    ASL-space map into MNI space. 4D images are resampled volume by volume.
    """
    ants = _ants()
    ref = to_ants(reference)
    data = np.asarray(image.dataobj, dtype=np.float32)
    vols = [data] if data.ndim == 3 else [data[..., k] for k in range(data.shape[-1])]
    out = []
    for v in vols:
        moved = ants.apply_transforms(
            ref,
            to_ants(nib.Nifti1Image(v, image.affine)),
            [str(t) for t in transforms],
            interpolator=interpolator,
        )
        out.append(moved.numpy())
    arr = out[0] if data.ndim == 3 else np.stack(out, axis=-1)
    return nib.Nifti1Image(arr.astype(np.float32), reference.affine)


def points_through(transforms, points_world) -> np.ndarray:
    """Map ``(N, 3)`` RAS world points through an ANTs transform chain.

    With ``[asl_to_t1w]`` it maps T1w points to ASL points (ANTs' pull
    direction, see the module docstring). Used to measure registration
    accuracy against a known transform.
    """
    import pandas as pd

    ants = _ants()
    pts = np.asarray(points_world, dtype=float) * [-1, -1, 1]  # RAS -> ITK LPS
    df = pd.DataFrame(pts, columns=["x", "y", "z"])
    out = ants.apply_transforms_to_points(3, df, [str(t) for t in transforms])
    return out[["x", "y", "z"]].to_numpy() * [-1, -1, 1]


_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_itk_affine(point_map, path) -> str:
    """Write a 4x4 RAS point mapping as an ITK affine ``.mat``.

    The point mapping is ANTs' transform direction: the file written for
    ``asl_to_t1w`` maps T1w points to ASL points.
    """
    ants = _ants()
    lps = _LPS @ np.asarray(point_map, dtype=float) @ _LPS
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=lps[:3, :3], offset=lps[:3, 3]
    )
    ants.write_transform(tx, str(path))
    return str(path)


def read_itk_affine(path) -> np.ndarray:
    """4x4 RAS point mapping of an ITK affine/rigid ``.mat`` (inverse of the writer)."""
    ants = _ants()
    tx = ants.read_transform(str(path))
    par = np.asarray(tx.parameters, dtype=float)
    centre = np.asarray(tx.fixed_parameters, dtype=float)
    a = par[:9].reshape(3, 3)
    t = par[9:12]
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = t + centre - a @ centre
    return _LPS @ lps @ _LPS
