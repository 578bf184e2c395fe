"""Nipype interfaces over :mod:`asl_pipeline.registration` and ``segmentation``.

Embedded backend (antspyx). Transforms are ITK files: ``asl_to_t1w.mat``
(rigid) and ``t1w_to_mni.h5`` / ``mni_to_t1w.h5`` (composite affine + SyN);
``a_to_b`` resamples images of space *a* into space *b* (ANTs convention).
"""

from __future__ import annotations

import logging
import os

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from asl_pipeline import registration as reg
from asl_pipeline import segmentation as seg
from asl_pipeline.itkthreads import call_with_itk_threads

LOGGER = logging.getLogger("nipype.interface")


def signal_mask(ref, *, fraction: float = 0.15) -> np.ndarray:
    """Voxels with signal in an ASL reference: above ``fraction`` of its 98th percentile."""
    data = np.asarray(ref, dtype=float)
    thr = fraction * np.percentile(data[data > 0], 98) if (data > 0).any() else 0.0
    return seg.clean_mask(data > thr)


class _T1wBrainInputSpec(BaseInterfaceInputSpec):
    t1w_file = File(exists=True, mandatory=True, desc="T1-weighted image (with skull)")
    template_resolution = traits.Enum(
        2, 1, usedefault=True, desc="resolution (mm) of nilearn's MNI152 template"
    )
    transform = traits.Enum(
        "SyN", "Affine", usedefault=True, desc="T1w -> MNI model: affine + SyN, or affine"
    )
    reg_iterations = traits.List(
        traits.Int, [40, 20, 10], usedefault=True, desc="SyN iterations per level (shrink 4, 2, 1)"
    )
    n_procs = traits.Int(1, usedefault=True, desc="ITK threads")
    seed = traits.Range(
        low=1,
        value=1,
        usedefault=True,
        desc="random seed of the ANTs metric sampling (a node input: another seed reruns "
        "the registration)",
    )


class _AtroposInputSpec(BaseInterfaceInputSpec):
    prior_weight = traits.Float(
        0.25, usedefault=True, desc="Atropos weight of the template tissue priors"
    )


class _T1wPreprocInputSpec(_T1wBrainInputSpec, _AtroposInputSpec):
    pass


class _T1wBrainOutputSpec(TraitedSpec):
    t1w_preproc = File(exists=True, desc="bias-corrected T1w")
    t1w_brain = File(exists=True, desc="bias-corrected, skull-stripped T1w")
    t1w_mask = File(exists=True, desc="T1w brain mask")
    t1w_to_mni = File(exists=True, desc="ITK transform resampling T1w images into MNI")
    mni_to_t1w = File(exists=True, desc="ITK transform resampling MNI images into T1w")
    t1w_mni = File(exists=True, desc="the T1w resampled into MNI space")


class _T1wTissuesOutputSpec(TraitedSpec):
    gm_t1w = File(exists=True, desc="GM probability map, T1w space")
    wm_t1w = File(exists=True, desc="WM probability map, T1w space")
    csf_t1w = File(exists=True, desc="CSF probability map, T1w space")
    gm_pv_t1w = File(exists=True, desc="GM partial-volume fraction, T1w space")
    wm_pv_t1w = File(exists=True, desc="WM partial-volume fraction, T1w space")
    csf_pv_t1w = File(exists=True, desc="CSF partial-volume fraction, T1w space")


class _T1wPreprocOutputSpec(_T1wBrainOutputSpec, _T1wTissuesOutputSpec):
    pass


class T1wBrain(SimpleInterface):
    """N4, MNI registration and the brain mask: what the ASL registration needs.

    :class:`T1wTissues` makes the tissue maps from its outputs; the pipeline
    runs the two as separate nodes so that the ASL registration runs beside
    the segmentation.
    """

    input_spec = _T1wBrainInputSpec
    output_spec = _T1wBrainOutputSpec

    @staticmethod
    def _worker():
        return extract_brain_to_files

    def _options(self) -> dict:
        inp = self.inputs
        return dict(
            template_resolution=inp.template_resolution,
            transform=inp.transform,
            reg_iterations=tuple(inp.reg_iterations),
            seed=inp.seed,
        )

    def _run_interface(self, runtime):
        # in a fresh process, so ITK uses n_procs threads whatever ran before;
        # the worker writes the images and returns their paths
        self._results.update(
            call_with_itk_threads(
                self.inputs.n_procs,
                self._worker(),
                self.inputs.t1w_file,
                runtime.cwd,
                **self._options(),
            )
        )
        return runtime


class _T1wTissuesInputSpec(_AtroposInputSpec):
    t1w_preproc = File(exists=True, mandatory=True, desc="bias-corrected T1w (T1wBrain)")
    t1w_mask = File(exists=True, mandatory=True, desc="T1w brain mask (T1wBrain)")
    mni_to_t1w = File(
        exists=True, mandatory=True, desc="ITK transform resampling MNI images into T1w"
    )
    template_resolution = traits.Enum(
        2, 1, usedefault=True, desc="resolution (mm) of the template the transform was fitted to"
    )
    n_procs = traits.Int(1, usedefault=True, desc="ITK threads")


class T1wTissues(SimpleInterface):
    """Atropos GM/WM/CSF maps guided by the template priors, and partial volumes."""

    input_spec = _T1wTissuesInputSpec
    output_spec = _T1wTissuesOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        self._results.update(
            call_with_itk_threads(
                inp.n_procs,
                tissue_maps_to_files,
                inp.t1w_preproc,
                inp.t1w_mask,
                inp.mni_to_t1w,
                runtime.cwd,
                template_resolution=inp.template_resolution,
                prior_weight=inp.prior_weight,
            )
        )
        return runtime


class T1wPreprocess(T1wBrain):
    """N4, MNI registration, brain extraction, Atropos tissue maps and partial volumes.

    :class:`T1wBrain` and :class:`T1wTissues` in one step.
    """

    input_spec = _T1wPreprocInputSpec
    output_spec = _T1wPreprocOutputSpec

    @staticmethod
    def _worker():
        return preprocess_t1w_to_files

    def _options(self) -> dict:
        return super()._options() | {"prior_weight": self.inputs.prior_weight}


#: Output name and file-name suffix of each T1w-grid image.
_BRAIN_FILES = (
    ("t1w_preproc", "_preproc"),
    ("t1w_brain", "_brain"),
    ("t1w_mask", "_mask"),
    ("t1w_mni", "_space-MNI"),
)
_TISSUE_FILES = (
    ("gm_t1w", "_label-GM_probseg"),
    ("wm_t1w", "_label-WM_probseg"),
    ("csf_t1w", "_label-CSF_probseg"),
    ("gm_pv_t1w", "_label-GM_desc-pv_probseg"),
    ("wm_pv_t1w", "_label-WM_desc-pv_probseg"),
    ("csf_pv_t1w", "_label-CSF_desc-pv_probseg"),
)


def _write(images: dict, named, source_file, out_dir) -> dict:
    """Write ``images[field]`` under ``source_file``'s name plus the suffix in ``named``."""
    paths = {}
    for field, suffix in named:
        paths[field] = fname_presuffix(source_file, suffix=suffix, newpath=out_dir)
        images[field].to_filename(paths[field])
    return paths


def _brain_files(brain: seg.BrainResult, t1w_file, out_dir) -> dict:
    images = {f: getattr(brain, f) for f in ("t1w_preproc", "t1w_brain", "t1w_mask")}
    images["t1w_mni"] = brain.mni.warped
    return {"t1w_to_mni": brain.mni.t1w_to_mni, "mni_to_t1w": brain.mni.mni_to_t1w} | _write(
        images, _BRAIN_FILES, t1w_file, out_dir
    )


def _tissue_images(maps) -> dict:
    return {f: getattr(maps, f.removesuffix("_t1w")) for f, _ in _TISSUE_FILES}


def extract_brain_to_files(t1w_file, out_dir, **options) -> dict:
    """:func:`segmentation.extract_brain` of a file; outputs written to ``out_dir``.

    Returns the paths under :class:`T1wBrain`'s output names.
    """
    brain = seg.extract_brain(nb.load(t1w_file), out_dir, t1w_file=t1w_file, **options)
    return _brain_files(brain, t1w_file, out_dir)


def tissue_maps_to_files(t1w_preproc, t1w_mask, mni_to_t1w, out_dir, **options) -> dict:
    """:func:`segmentation.tissue_maps` of files; outputs written to ``out_dir``.

    Returns the paths under :class:`T1wTissues`'s output names.
    """
    maps = seg.tissue_maps(
        nb.load(t1w_preproc),
        np.asarray(nb.load(t1w_mask).dataobj, dtype=bool),
        mni_to_t1w,
        **options,
    )
    return _write(_tissue_images(maps), _TISSUE_FILES, t1w_preproc, out_dir)


def preprocess_t1w_to_files(t1w_file, out_dir, **options) -> dict:
    """:func:`segmentation.preprocess_t1w` of a file; outputs written to ``out_dir``.

    Returns the paths under :class:`T1wPreprocess`'s output names.
    """
    res = seg.preprocess_t1w(nb.load(t1w_file), out_dir, t1w_file=t1w_file, **options)
    return _brain_files(res, t1w_file, out_dir) | _write(
        _tissue_images(res), _TISSUE_FILES, t1w_file, out_dir
    )


class _ASLToT1wInputSpec(BaseInterfaceInputSpec):
    ref_image = File(exists=True, mandatory=True, desc="ASL reference (mean control or M0)")
    t1w_brain = File(exists=True, mandatory=True, desc="skull-stripped T1w")
    t1w_mask = File(exists=True, desc="T1w brain mask")
    gm_t1w = File(exists=True, desc="GM probability, T1w space")
    wm_t1w = File(exists=True, desc="WM probability, T1w space")
    csf_t1w = File(exists=True, desc="CSF probability, T1w space")
    n_procs = traits.Int(1, usedefault=True, desc="ITK threads")
    seed = traits.Range(
        low=1,
        value=1,
        usedefault=True,
        desc="random seed of the ANTs metric sampling (a node input: another seed reruns "
        "the registration)",
    )


class _ASLToT1wOutputSpec(TraitedSpec):
    asl_to_t1w = File(exists=True, desc="ITK rigid transform resampling ASL images into T1w")
    gm = File(exists=True, desc="GM probability, ASL space")
    wm = File(exists=True, desc="WM probability, ASL space")
    csf = File(exists=True, desc="CSF probability, ASL space")
    t1w_mask_asl = File(exists=True, desc="T1w brain mask resampled into ASL space")
    asl_mask = File(
        exists=True,
        desc="CBF brain mask: T1w brain mask in ASL space where the ASL has signal",
    )


#: The T1w-space maps :class:`ASLToT1w` and :class:`TissuesToASL` bring into ASL space.
T1W_MAPS = ("t1w_mask", "gm_t1w", "wm_t1w", "csf_t1w")


class ASLToT1w(SimpleInterface):
    """Rigid ASL -> T1w registration; tissue maps and brain mask into ASL space.

    Without the maps (all four left out) only the transform is computed; the
    pipeline does that and brings the maps over with :class:`TissuesToASL`,
    so the registration need not wait for the segmentation.
    """

    input_spec = _ASLToT1wInputSpec
    output_spec = _ASLToT1wOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        given = [isdefined(getattr(inp, f)) for f in T1W_MAPS]
        if any(given) and not all(given):
            missing = ", ".join(f for f, g in zip(T1W_MAPS, given, strict=True) if not g)
            raise ValueError(
                f"ASLToT1w: give all of {', '.join(T1W_MAPS)} or none of them (missing: {missing})"
            )
        ref = nb.load(inp.ref_image)
        xfm = call_with_itk_threads(
            inp.n_procs,
            reg.register_asl_to_t1w,
            ref,
            nb.load(inp.t1w_brain),
            os.path.join(runtime.cwd, "asl_to_t1w.mat"),
            ref_file=inp.ref_image,
            seed=inp.seed,
        )
        self._results["asl_to_t1w"] = xfm
        if all(given):
            self._results.update(maps_to_asl(inp, ref, xfm, runtime.cwd))
        return runtime


def maps_to_asl(inp, ref, xfm, cwd) -> dict:
    """Bring tissue maps and the T1w mask into ASL space (shared with the SPM backend).

    The tissue maps become the fraction of each ASL voxel (the T1w
    probabilities averaged over the voxel, :func:`asl_pipeline.registration.
    fractions_to_asl_space`), the brain mask is read at the voxel centres.
    """
    out = {}
    for field, src in (("gm", inp.gm_t1w), ("wm", inp.wm_t1w), ("csf", inp.csf_t1w)):
        img = reg.fractions_to_asl_space(nb.load(src), ref, xfm)
        path = fname_presuffix(inp.ref_image, suffix=f"_label-{field.upper()}", newpath=cwd)
        img.to_filename(path)
        out[field] = path
    mask = reg.to_asl_space(nb.load(inp.t1w_mask), ref, xfm).get_fdata() > 0.5
    path = fname_presuffix(inp.ref_image, suffix="_desc-t1w_mask", newpath=cwd)
    nb.Nifti1Image(mask.astype(np.uint8), ref.affine).to_filename(path)
    out["t1w_mask_asl"] = path
    ref_data = np.asarray(ref.dataobj, dtype=float)
    ref_data = ref_data[..., 0] if ref_data.ndim == 4 else ref_data
    brain = mask & signal_mask(ref_data)
    path = fname_presuffix(inp.ref_image, suffix="_desc-brain_mask", newpath=cwd)
    nb.Nifti1Image(brain.astype(np.uint8), ref.affine).to_filename(path)
    out["asl_mask"] = path
    return out


class _TissuesToASLInputSpec(BaseInterfaceInputSpec):
    ref_image = File(exists=True, mandatory=True, desc="ASL reference (target grid)")
    asl_to_t1w = File(exists=True, mandatory=True, desc="ITK transform ASL -> T1w")
    t1w_mask = File(exists=True, mandatory=True, desc="T1w brain mask")
    gm_t1w = File(exists=True, mandatory=True, desc="GM probability, T1w space")
    wm_t1w = File(exists=True, mandatory=True, desc="WM probability, T1w space")
    csf_t1w = File(exists=True, mandatory=True, desc="CSF probability, T1w space")


class _TissuesToASLOutputSpec(TraitedSpec):
    gm = File(exists=True, desc="GM probability, ASL space")
    wm = File(exists=True, desc="WM probability, ASL space")
    csf = File(exists=True, desc="CSF probability, ASL space")
    t1w_mask_asl = File(exists=True, desc="T1w brain mask resampled into ASL space")
    asl_mask = File(exists=True, desc="CBF brain mask: T1w mask in ASL space with ASL signal")


class TissuesToASL(SimpleInterface):
    """Tissue maps and brain mask into ASL space through a given ASL -> T1w transform."""

    input_spec = _TissuesToASLInputSpec
    output_spec = _TissuesToASLOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        ref = nb.load(inp.ref_image)
        self._results.update(maps_to_asl(inp, ref, inp.asl_to_t1w, runtime.cwd))
        return runtime


class _ResampleInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image to resample (3D or 4D)")
    reference = File(exists=True, mandatory=True, desc="image defining the target grid")
    transforms = InputMultiObject(
        File(exists=True),
        mandatory=True,
        desc="ITK transforms in ANTs order (applied last to first), e.g. "
        "[t1w_to_mni, asl_to_t1w] for ASL -> MNI",
    )
    interpolation = traits.Enum(
        "linear", "bSpline", "nearestNeighbor", usedefault=True, desc="interpolator"
    )
    suffix = traits.Str("_resampled", usedefault=True, desc="suffix of the output file name")


class _ResampleOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the image resampled onto the reference grid")


class ApplyTransformChain(SimpleInterface):
    """Resample an image through a chain of ITK transforms in one interpolation."""

    input_spec = _ResampleInputSpec
    output_spec = _ResampleOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        out = reg.apply_transforms(
            nb.load(inp.in_file),
            nb.load(inp.reference),
            list(inp.transforms),
            interpolator=inp.interpolation,
        )
        path = fname_presuffix(inp.in_file, suffix=inp.suffix, newpath=runtime.cwd)
        out.to_filename(path)
        self._results["out_file"] = path
        return runtime


class _TemplateInputSpec(BaseInterfaceInputSpec):
    resolution = traits.Enum(2, 1, usedefault=True, desc="template resolution (mm)")


class _TemplateOutputSpec(TraitedSpec):
    t1 = File(exists=True, desc="MNI152 T1 template (nilearn)")
    brain_mask = File(exists=True, desc="MNI152 brain mask (nilearn)")


class MNITemplate(SimpleInterface):
    """Write nilearn's bundled MNI152 template and brain mask (no download)."""

    input_spec = _TemplateInputSpec
    output_spec = _TemplateOutputSpec

    def _run_interface(self, runtime):
        tpl = reg.load_template(self.inputs.resolution)
        for field, img in (("t1", tpl.t1), ("brain_mask", tpl.brain_mask)):
            path = os.path.join(
                runtime.cwd, f"tpl-MNI152_res-{self.inputs.resolution}_{field}.nii.gz"
            )
            img.to_filename(path)
            self._results[field] = path
        return runtime


class _T1wToTemplateInputSpec(BaseInterfaceInputSpec):
    t1w_file = File(exists=True, mandatory=True, desc="bias-corrected T1w (with skull)")
    template = traits.Str(
        mandatory=True,
        desc="template space by its TemplateFlow name (found in the local TemplateFlow "
        "folder, $TEMPLATEFLOW_HOME; nothing is downloaded)",
    )
    n_procs = traits.Int(1, usedefault=True, desc="ITK threads")


class _T1wToTemplateOutputSpec(TraitedSpec):
    t1w_to_template = File(
        exists=True, desc="ITK composite (.h5) resampling T1w into the template"
    )
    template_to_t1w = File(
        exists=True, desc="ITK composite (.h5) resampling the template into T1w"
    )
    reference = File(exists=True, desc="the template's T1w image (resampling reference)")
    t1w_template = File(exists=True, desc="the T1w resampled into the template")


class T1wToTemplate(SimpleInterface):
    """Affine + SyN registration of the T1w to a TemplateFlow template (antspyx)."""

    input_spec = _T1wToTemplateInputSpec
    output_spec = _T1wToTemplateOutputSpec

    def _run_interface(self, runtime):
        from asl_pipeline.templates import register_to_template

        self._results.update(
            call_with_itk_threads(
                self.inputs.n_procs,
                register_to_template,
                self.inputs.t1w_file,
                runtime.cwd,
                self.inputs.template,
            )
        )
        return runtime
