"""Nipype interface over :mod:`asl_pipeline.nuisance` (spec section 4)."""

from __future__ import annotations

import logging

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from asl_pipeline import nuisance as core
from asl_pipeline.interfaces.outliers import read_motion

LOGGER = logging.getLogger("nipype.interface")


class _NuisanceInputSpec(BaseInterfaceInputSpec):
    asl_file = File(exists=True, mandatory=True, desc="motion-corrected 4D ASL series")
    volume_types = traits.List(
        traits.Str, mandatory=True, desc="aslcontext volume types, one per volume"
    )
    mask = File(exists=True, mandatory=True, desc="brain mask in ASL space")
    csf = File(exists=True, desc="CSF probability in ASL space (CSF regressor)")
    motion = File(exists=True, desc="TSV of the cleaned motion parameters (trans_x .. rot_z)")
    regress = traits.Bool(True, usedefault=True, desc="run the nuisance regression")
    global_signal = traits.Bool(True, usedefault=True, desc="include the global signal")
    fwhm = traits.Float(3.0, usedefault=True, desc="Gaussian smoothing FWHM (mm); 0 disables")


class _NuisanceOutputSpec(TraitedSpec):
    asl_file = File(exists=True, desc="regressed and smoothed 4D ASL series")
    design = File(exists=True, desc="TSV of the regressors actually used (zig-zag orthogonal)")


class NuisanceRegression(SimpleInterface):
    """Zig-zag-orthogonal nuisance regression, then Gaussian smoothing."""

    input_spec = _NuisanceInputSpec
    output_spec = _NuisanceOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        img = nb.load(inp.asl_file)
        data = np.asarray(img.dataobj, dtype=np.float64)
        mask = np.asarray(nb.load(inp.mask).dataobj) > 0
        zooms = img.header.get_zooms()[:3]
        if inp.regress:
            motion = read_motion(inp.motion) if isdefined(inp.motion) else None
            csf = np.asarray(nb.load(inp.csf).dataobj) if isdefined(inp.csf) else None
            out, design, names = core.denoise_asl(
                data,
                mask,
                list(inp.volume_types),
                zooms,
                motion_params=motion,
                csf_prob=csf,
                global_signal=inp.global_signal,
                fwhm_mm=inp.fwhm,
                file=inp.asl_file,
            )
        else:
            out = core.smooth(data, zooms, inp.fwhm)
            design, names = np.zeros((data.shape[-1], 0)), []
        LOGGER.info("nuisance regressors: %s; FWHM %.1f mm", names, inp.fwhm)
        path = fname_presuffix(inp.asl_file, suffix="_nuisance", newpath=runtime.cwd)
        hdr = img.header.copy()
        hdr.set_data_dtype(np.float32)
        nb.Nifti1Image(out.astype(np.float32), img.affine, hdr).to_filename(path)
        self._results["asl_file"] = path
        dpath = f"{runtime.cwd}/nuisance_design.tsv"
        with open(dpath, "w") as fobj:
            fobj.write("\t".join(names) + "\n")
            for row in design:
                fobj.write("\t".join(f"{v:.8g}" for v in row) + "\n")
        self._results["design"] = dpath
        return runtime
