"""Glue between nipype's SPM12 interfaces and the pipeline's common contract.

The SPM backend runs SPM for the estimation steps (Realign, Coregister,
Segment) and keeps the ASL-specific parts and the output contract of the
embedded backend:

* :class:`SPMASLRealign` reads SPM's ``rp_*.txt`` (converted with
  :func:`asl_pipeline.motion.spm_rp_to_params`: SPM's matrix is the inverse of
  ours and rotates about the world origin), removes
  the zig-zag and reslices every volume once, exactly as the embedded backend;
* :class:`SPMCoregToITK` turns the header change written by SPM Coregister
  (``jobtype='estimate'``) into an ITK ``asl_to_t1w.mat``;
* :class:`SPMTissues` turns SPM's native ``c1/c2/c3`` maps into the GM/WM/CSF
  probability maps, brain mask and skull-stripped T1w;
* :class:`SetWorldAffine` gives an ASL-space map the coregistered header so
  that SPM's Normalise (write) brings it to MNI in one interpolation.
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

from asl_pipeline import motion as core
from asl_pipeline.interfaces.motion import (
    ResliceOptionsInputSpec,
    field_correction,
    load_4d,
    log_zigzag_offset,
    write_m0_corrected,
    write_realign_outputs,
)
from asl_pipeline.registration import read_itk_affine, write_itk_affine
from asl_pipeline.rundesc import read_aslcontext
from asl_pipeline.segmentation import clean_mask

LOGGER = logging.getLogger("nipype.interface")


class _StackInputSpec(BaseInterfaceInputSpec):
    asl_file = File(exists=True, mandatory=True, desc="4D ASL series")
    m0_file = File(exists=True, desc="separate M0 (3D/4D) appended after the series")


class _StackOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="uncompressed 4D NIfTI for SPM (series, then M0)")


class StackForSPM(SimpleInterface):
    """One uncompressed 4D NIfTI (SPM reads no .nii.gz) of the series and the M0."""

    input_spec = _StackInputSpec
    output_spec = _StackOutputSpec

    def _run_interface(self, runtime):
        img, data = load_4d(self.inputs.asl_file)
        if isdefined(self.inputs.m0_file):
            m0_img, m0 = load_4d(self.inputs.m0_file, "M0")
            m0 = m0[..., None] if m0.ndim == 3 else m0
            m0 = core.m0_on_grid(
                m0, m0_img.affine, data.shape, img.affine, file=self.inputs.m0_file
            )
            data = np.concatenate([data, m0], axis=-1)
        out = os.path.join(runtime.cwd, "asl_for_spm.nii")
        nb.Nifti1Image(data.astype(np.float32), img.affine).to_filename(out)
        self._results["out_file"] = out
        return runtime


class _SPMRealignInputSpec(ResliceOptionsInputSpec):
    asl_file = File(exists=True, mandatory=True, desc="original 4D ASL series")
    aslcontext = File(exists=True, mandatory=True, desc="BIDS aslcontext.tsv")
    m0_file = File(exists=True, desc="original separate M0, stacked after the series for SPM")
    realignment_parameters = File(
        exists=True, mandatory=True, desc="SPM rp_*.txt of the stacked series"
    )
    interp_order = traits.Int(3, usedefault=True, desc="spline order of the final reslice")
    remove_zigzag = traits.Bool(True, usedefault=True, desc="remove the label/control zig-zag")


class _SPMRealignOutputSpec(TraitedSpec):
    asl_corrected = File(exists=True, desc="realigned 4D ASL series (resliced once)")
    m0_corrected = File(desc="realigned M0, when an M0 file was given")
    ref_image = File(
        exists=True,
        desc="mean of the realigned control/label volumes (without them, of the M0 volumes)",
    )
    ref_distorted = File(
        desc="with a field map: the reference resliced for motion only (before the "
        "distortion correction)"
    )
    motion_params_raw = File(exists=True, desc="TSV of SPM's parameters (our centre convention)")
    motion_params = File(exists=True, desc="TSV of the parameters after zig-zag removal")
    confounds = File(exists=True, desc="TSV: parameters, raw_* parameters, FD, RMSD")


class SPMASLRealign(SimpleInterface):
    """Zig-zag removal and single reslice from SPM Realign's estimates."""

    input_spec = _SPMRealignInputSpec
    output_spec = _SPMRealignOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        img, data = load_4d(inp.asl_file)
        types = read_aslcontext(inp.aslcontext)
        rp = np.atleast_2d(np.loadtxt(inp.realignment_parameters))
        centre = core.grid_centre(data.shape, img.affine)
        params = core.spm_rp_to_params(rp, centre)
        n = data.shape[-1]
        m0 = None
        if isdefined(inp.m0_file):
            m0_img, m0 = load_4d(inp.m0_file, "M0")
            # as StackForSPM stacked it
            m0 = core.m0_on_grid(m0, m0_img.affine, data.shape, img.affine, file=inp.m0_file)
        res = core.apply_realignment(
            data,
            img.affine,
            types,
            params[:n],
            m0=m0,
            m0_params=params[n:] if m0 is not None else None,
            centre=centre,
            order=inp.interp_order,
            remove_zigzag_from_params=inp.remove_zigzag,
            zigzag_method=inp.zigzag_method,
            reslice_mode=inp.reslice_mode,
            sdc=field_correction(inp),
        )
        log_zigzag_offset(res)
        self._results.update(write_realign_outputs(res, inp.asl_file, img, runtime.cwd))
        if res.m0_corrected is not None:
            self._results["m0_corrected"] = write_m0_corrected(res, m0_img, img, runtime.cwd)
        return runtime


class _CoregInputSpec(BaseInterfaceInputSpec):
    source_file = File(exists=True, mandatory=True, desc="ASL reference before Coregister")
    coregistered_source = File(
        exists=True, mandatory=True, desc="the same image after SPM Coregister (estimate)"
    )


class _CoregOutputSpec(TraitedSpec):
    asl_to_t1w = File(exists=True, desc="ITK rigid transform resampling ASL images into T1w")
    world_matrix = File(exists=True, desc="4x4 text: ASL world -> T1w world point map")


class SPMCoregToITK(SimpleInterface):
    """ITK transform from the header change made by SPM Coregister (estimate)."""

    input_spec = _CoregInputSpec
    output_spec = _CoregOutputSpec

    def _run_interface(self, runtime):
        old = nb.load(self.inputs.source_file).affine
        new = nb.load(self.inputs.coregistered_source).affine
        q = new @ np.linalg.inv(old)  # old world point -> T1w world point
        mat = os.path.join(runtime.cwd, "asl_to_t1w_world.txt")
        np.savetxt(mat, q)
        # ANTs' transform that resamples ASL into T1w maps T1w points to ASL points
        self._results["asl_to_t1w"] = write_itk_affine(
            np.linalg.inv(q), os.path.join(runtime.cwd, "asl_to_t1w.mat")
        )
        self._results["world_matrix"] = mat
        return runtime


class _TissuesInputSpec(BaseInterfaceInputSpec):
    t1w_file = File(exists=True, mandatory=True, desc="T1w given to SPM Segment")
    native_class_images = traits.List(
        traits.List(File(exists=True)), mandatory=True, desc="SPM Segment native c1..cN images"
    )
    bias_corrected = File(exists=True, desc="SPM's bias-corrected T1w (m*.nii), optional")


class _TissuesOutputSpec(TraitedSpec):
    t1w_preproc = File(exists=True, desc="bias-corrected T1w")
    t1w_brain = File(exists=True, desc="skull-stripped T1w")
    t1w_mask = File(exists=True, desc="brain mask: GM + WM + CSF > 0.5, filled")
    gm_t1w = File(exists=True, desc="GM probability (c1)")
    wm_t1w = File(exists=True, desc="WM probability (c2)")
    csf_t1w = File(exists=True, desc="CSF probability (c3)")


class SPMTissues(SimpleInterface):
    """GM/WM/CSF maps, brain mask and brain image from SPM Segment's outputs."""

    input_spec = _TissuesInputSpec
    output_spec = _TissuesOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        classes = [nb.load(c[0]) for c in inp.native_class_images[:3]]
        probs = [np.asarray(c.dataobj, dtype=np.float32) for c in classes]
        mask = clean_mask(np.sum(probs, axis=0) > 0.5)
        src = inp.bias_corrected if isdefined(inp.bias_corrected) else inp.t1w_file
        t1 = nb.load(src)
        data = np.asarray(t1.dataobj, dtype=np.float32)
        outs = {
            "t1w_preproc": data,
            "t1w_brain": data * mask,
            "t1w_mask": mask.astype(np.uint8),
            "gm_t1w": probs[0],
            "wm_t1w": probs[1],
            "csf_t1w": probs[2],
        }
        for field, arr in outs.items():
            path = fname_presuffix(inp.t1w_file, suffix=f"_{field}", newpath=runtime.cwd)
            path = path.replace(".nii.gz", ".nii") if path.endswith(".nii.gz") else path
            nb.Nifti1Image(arr, t1.affine).to_filename(path)
            self._results[field] = path
        return runtime


class _SetAffineInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="ASL-space image")
    asl_to_t1w = File(exists=True, mandatory=True, desc="ITK rigid transform ASL -> T1w")


class _SetAffineOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="same voxels, header aligned to T1w (uncompressed)")


class SetWorldAffine(SimpleInterface):
    """Put the coregistration into the header (no resampling), for SPM Normalise."""

    input_spec = _SetAffineInputSpec
    output_spec = _SetAffineOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.in_file)
        # the ITK file maps T1w points to ASL points; the header needs ASL -> T1w
        q = np.linalg.inv(read_itk_affine(self.inputs.asl_to_t1w))
        out = fname_presuffix(self.inputs.in_file, suffix="_coreg", newpath=runtime.cwd)
        out = out[:-3] if out.endswith(".nii.gz") else out
        nb.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), q @ img.affine).to_filename(out)
        self._results["out_file"] = out
        return runtime


class _GunzipInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="NIfTI files")


class _GunzipOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="uncompressed copies (.nii)")
    out_file = File(exists=True, desc="the first uncompressed copy")


class UncompressNifti(SimpleInterface):
    """Uncompressed .nii copies (SPM cannot read .nii.gz)."""

    input_spec = _GunzipInputSpec
    output_spec = _GunzipOutputSpec

    def _run_interface(self, runtime):
        outs = []
        for f in self.inputs.in_files:
            img = nb.load(f)
            base = os.path.basename(f).replace(".nii.gz", "").replace(".nii", "")
            out = os.path.join(runtime.cwd, base + ".nii")
            nb.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header).to_filename(out)
            outs.append(out)
        self._results["out_files"] = outs
        self._results["out_file"] = outs[0]
        return runtime
