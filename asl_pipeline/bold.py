"""A BIDS BOLD run brought onto the ASL grid: the input of BOLD-to-ASL prediction.

Methods spec section 6.4 predicts CBF from a BOLD image. This module makes
that image from a real BOLD run (``func/*_bold.nii[.gz]``, found by
:attr:`asl_pipeline.bids.ASLRun.bold_file`), in three steps, each a function:

1. :func:`realigned_mean`: rigid motion correction of the BOLD series
   (:func:`asl_pipeline.motion.estimate_motion`, one pass to the first
   volume then one to the mean, as for the ASL series) and the temporal mean
   of the realigned volumes. The mean is the BOLD-derived image: it carries
   the anatomy (GM/WM/CSF T2*-weighted contrast) and the perfusion-dependent
   part of T2* (methods spec 6.4: "mean BOLD of a window").
2. :func:`register_to_reference`: rigid registration (6 dof, Mattes mutual
   information, ANTs through antspyx) of the BOLD mean to the ASL reference
   (M0 or mean control image), sampled on the ASL grid.
3. :func:`resample_to_reference`: the BOLD mean resampled onto the ASL grid
   through that rigid transform (cubic B-spline, one interpolation).

:func:`bold_to_asl` runs the three. The rigid transform is returned as a 4x4
RAS+ point mapping ``asl_to_bold``: ``y_bold = asl_to_bold @ x_asl`` (world
mm), the inverse of the simulator's ``bold_to_asl``.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from asl_pipeline.errors import ASLInputError


@dataclass(frozen=True)
class RealignedBOLD:
    """Motion-corrected BOLD series summary: temporal ``mean`` (3-D, BOLD grid)
    and the rigid ``motion`` parameters ``(n, 6)`` of every volume (mm, rad)."""

    mean: np.ndarray
    motion: np.ndarray


@dataclass(frozen=True)
class BOLDOnASL:
    """The BOLD-derived image on the ASL grid (``image``), the realignment
    (``realigned``) and the rigid point mapping ``asl_to_bold`` (4x4)."""

    image: np.ndarray
    realigned: RealignedBOLD
    asl_to_bold: np.ndarray


def check_bold(img, file=None) -> np.ndarray:
    """The 4-D float32 data of a BOLD run, or :class:`ASLInputError` naming the file."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim != 4 or data.shape[3] < 2:
        raise ASLInputError(
            f"a BOLD run must be a 4-D series of at least 2 volumes, got shape {data.shape}.",
            file=file,
            field="dim",
            fix="pass the func/*_bold.nii.gz series as acquired",
        )
    if not np.isfinite(data).all():
        raise ASLInputError(
            "the BOLD series holds NaN or infinite values.",
            file=file,
            field="data",
            fix="re-export the series from the scanner (dcm2niix)",
        )
    return data


def realigned_mean(data, affine) -> RealignedBOLD:
    """Rigid motion correction of a BOLD series ``(x, y, z, n)`` and its temporal mean."""
    from asl_pipeline.motion import estimate_motion, reslice

    params = estimate_motion(data, affine)
    params = np.asarray(params[0] if isinstance(params, tuple) else params, float)
    mean = reslice(data, affine, params, order=1).mean(axis=3)
    return RealignedBOLD(mean=mean.astype(np.float32), motion=params)


def register_to_reference(
    bold_mean: nib.Nifti1Image,
    reference: nib.Nifti1Image,
    *,
    seed: int = 1,
    iterations=(200, 100, 50),
) -> np.ndarray:
    """Rigid registration of the BOLD mean to the ASL reference.

    Returns the 4x4 RAS+ point mapping ``asl_to_bold`` (ASL world mm ->
    BOLD world mm). Mattes mutual information (the two contrasts differ),
    centre-of-mass start, shrink factors 4, 2, 1; ``seed`` seeds the metric
    sampling.
    """
    import tempfile
    from pathlib import Path

    from asl_pipeline.registration import _ants, read_itk_affine, to_ants

    ants = _ants(seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = ants.registration(
            to_ants(reference),
            to_ants(bold_mean),
            type_of_transform="Rigid",
            outprefix=str(Path(tmp) / "bold2asl_"),
            aff_metric="mattes",
            aff_random_sampling_rate=1.0,
            aff_iterations=tuple(iterations),
            aff_shrink_factors=(4, 2, 1)[-len(iterations) :],
            aff_smoothing_sigmas=(2, 1, 0)[-len(iterations) :],
        )
        # ANTs' forward transform pulls the moving image: it maps fixed (ASL)
        # points to moving (BOLD) points
        return read_itk_affine(out["fwdtransforms"][0])


def resample_to_reference(
    image, affine, asl_to_bold, ref_shape, ref_affine, *, order: int = 3
) -> np.ndarray:
    """``image`` (on the grid ``affine``) sampled at the ASL grid's voxel centres
    mapped through ``asl_to_bold``; 0 outside the BOLD field of view."""
    vox = np.linalg.inv(affine) @ np.asarray(asl_to_bold, float) @ np.asarray(ref_affine, float)
    out = ndimage.affine_transform(
        np.asarray(image, np.float32),
        vox[:3, :3],
        offset=vox[:3, 3],
        output_shape=tuple(ref_shape[:3]),
        order=order,
        mode="constant",
        cval=0.0,
    )
    return np.maximum(out, 0.0).astype(np.float32)


def bold_to_asl(bold_img, reference, *, seed: int = 1, bold_file=None) -> BOLDOnASL:
    """Motion-correct a BOLD run, register its mean to the ASL reference and
    resample it onto the ASL grid (see the module docstring)."""
    data = check_bold(bold_img, bold_file)
    realigned = realigned_mean(data, bold_img.affine)
    ref = nib.Nifti1Image(np.asarray(reference.dataobj, np.float32), reference.affine)
    if ref.ndim == 4:
        ref = nib.Nifti1Image(np.asarray(ref.dataobj).mean(3), ref.affine)
    mean_img = nib.Nifti1Image(realigned.mean, bold_img.affine)
    asl_to_bold = register_to_reference(mean_img, ref, seed=seed)
    image = resample_to_reference(
        realigned.mean, bold_img.affine, asl_to_bold, ref.shape, ref.affine
    )
    return BOLDOnASL(image=image, realigned=realigned, asl_to_bold=asl_to_bold)
