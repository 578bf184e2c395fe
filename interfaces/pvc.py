"""Nipype interfaces over :mod:`asl_pipeline.pvc`: tissue fractions and LR correction."""

from __future__ import annotations

import json
import logging
from pathlib import Path

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

from asl_pipeline import pvc
from asl_pipeline import registration as reg
from asl_pipeline.interfaces.cbf import CBF_UNITS, _image

LOGGER = logging.getLogger("nipype.interface")

METHOD_NAME = "linear regression (Asllani, Borogovac and Brown 2008, Magn Reson Med 60:1362)"


class _FractionsInputSpec(BaseInterfaceInputSpec):
    ref_image = File(exists=True, mandatory=True, desc="ASL reference image (the target grid)")
    asl_to_t1w = File(exists=True, mandatory=True, desc="ITK rigid transform ASL -> T1w")
    gm_t1w = File(exists=True, mandatory=True, desc="GM probability map, T1w space")
    wm_t1w = File(exists=True, mandatory=True, desc="WM probability map, T1w space")
    csf_t1w = File(exists=True, desc="CSF probability map, T1w space")
    points = traits.Tuple(
        traits.Int,
        traits.Int,
        traits.Int,
        desc="sample points per ASL voxel along each axis (default: ASL voxel size over "
        "T1w voxel size, rounded up, at most 8)",
    )


class _FractionsOutputSpec(TraitedSpec):
    gm = File(exists=True, desc="GM fraction of each ASL voxel")
    wm = File(exists=True, desc="WM fraction of each ASL voxel")
    csf = File(desc="CSF fraction of each ASL voxel (when csf_t1w is given)")


class TissueFractions(SimpleInterface):
    """Tissue fractions of each ASL voxel: T1w probabilities averaged over the voxel.

    The maps are resampled (linear, through the inverse of ``asl_to_t1w``)
    onto a grid splitting each ASL voxel into ``points`` sub-voxels, then
    averaged per voxel, so that the fractions describe the volume the voxel
    measures rather than its centre (plain resampling to the voxel centres
    gives sharper maps that bias the partial-volume correction).
    """

    input_spec = _FractionsInputSpec
    output_spec = _FractionsOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        ref, _ = _image(inp.ref_image, ndim=(3,), what="ASL reference")
        pairs = [("gm", inp.gm_t1w), ("wm", inp.wm_t1w)]
        if isdefined(inp.csf_t1w):
            pairs.append(("csf", inp.csf_t1w))
        points = inp.points if isdefined(inp.points) else None
        for name, path in pairs:
            img = nb.load(path)
            if points is None:
                points = pvc.supersampling(ref.header.get_zooms(), img.header.get_zooms())
            frac = reg.fractions_to_asl_space(img, ref, inp.asl_to_t1w, points=points)
            out = fname_presuffix(
                inp.ref_image, suffix=f"_label-{name.upper()}_frac", newpath=runtime.cwd
            )
            frac.to_filename(out)
            self._results[name] = out
        LOGGER.info("tissue fractions averaged over %s points per ASL voxel", points)
        return runtime


class _PVCInputSpec(BaseInterfaceInputSpec):
    cbf_file = File(exists=True, mandatory=True, desc="CBF map to correct (mL/100 g/min)")
    gm = File(exists=True, mandatory=True, desc="GM fraction of each voxel, same grid")
    wm = File(exists=True, mandatory=True, desc="WM fraction of each voxel, same grid")
    mask = File(exists=True, desc="brain mask: only its voxels enter a kernel and are estimated")
    kernel = traits.Tuple(
        pvc.DEFAULT_KERNEL,
        traits.Int,
        traits.Int,
        traits.Int,
        usedefault=True,
        desc="regression kernel in voxels (x, y, z; odd sizes)",
    )
    psf_fwhm = traits.Tuple(
        (0.0, 0.0, 0.0),
        traits.Float,
        traits.Float,
        traits.Float,
        usedefault=True,
        desc="Gaussian point spread (FWHM, voxels per axis) applied to the fractions first, "
        "e.g. (0, 0, 1.2) for a 3D GRASE readout's through-plane blur; 0 = none",
    )


class _PVCOutputSpec(TraitedSpec):
    gm_cbf = File(exists=True, desc="partial-volume corrected GM CBF (0 = not estimated)")
    wm_cbf = File(exists=True, desc="partial-volume corrected WM CBF (0 = not estimated)")
    gm_cbf_json = File(exists=True, desc="sidecar of gm_cbf: method, kernel, units")
    wm_cbf_json = File(exists=True, desc="sidecar of wm_cbf: method, kernel, units")


class PartialVolumeCorrection(SimpleInterface):
    """GM and WM CBF maps by linear-regression partial-volume correction.

    Calls :func:`asl_pipeline.pvc.lr_pvc`. Voxels of the CBF map that are
    exactly 0 (not quantified) never enter a kernel. Voxels left unestimated
    (NaN: outside the mask, ill-conditioned kernels) are written as 0, as the
    sidecar says, so that the maps hold no NaN.
    """

    input_spec = _PVCInputSpec
    output_spec = _PVCOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        img, cbf = _image(inp.cbf_file, ndim=(3,), what="CBF map")
        # the quantification writes 0 where it computed nothing (low M0, outside its
        # mask): such voxels are missing data, not zero perfusion
        cbf = np.where(cbf != 0, cbf, np.nan)
        gm = _image(inp.gm, ndim=(3,), what="GM fraction map")[1]
        wm = _image(inp.wm, ndim=(3,), what="WM fraction map")[1]
        mask = (
            _image(inp.mask, ndim=(3,), what="brain mask")[1] > 0.5
            if isdefined(inp.mask)
            else None
        )
        res = pvc.lr_pvc(
            cbf, gm, wm, mask=mask, kernel=tuple(inp.kernel), psf_fwhm=tuple(inp.psf_fwhm)
        )
        n_est = int(res.estimated.sum())
        LOGGER.info("PVC (LR, kernel %s): %d voxels estimated", tuple(inp.kernel), n_est)
        names = {"GM": "Grey-matter", "WM": "White-matter"}
        for tissue, values in (("GM", res.gm), ("WM", res.wm)):
            out = str(Path(runtime.cwd) / f"desc-pvc{tissue}_cbf.nii.gz")
            data = np.where(res.estimated, values, 0.0).astype(np.float32)
            nb.Nifti1Image(data, img.affine).to_filename(out)
            meta = {
                "Units": CBF_UNITS,
                "Description": f"{names[tissue]} CBF after linear-regression partial-volume "
                "correction (Asllani et al. 2008); 0 = not estimated.",
                "PartialVolumeCorrection": True,
                "PartialVolumeCorrectionMethod": METHOD_NAME,
                "PartialVolumeCorrectionKernel": [int(k) for k in inp.kernel],
                "PartialVolumeCorrectionKernelUnits": "voxels",
                "PartialVolumeCorrectionPSFFWHM": [float(f) for f in inp.psf_fwhm],
                "CSFPerfusionAssumed": 0.0,
                "NotEstimatedValue": 0.0,
                "EstimatedVoxels": n_est,
            }
            sidecar = Path(runtime.cwd) / f"desc-pvc{tissue}_cbf.json"
            sidecar.write_text(json.dumps(meta, indent=2) + "\n")
            key = tissue.lower() + "_cbf"
            self._results[key] = out
            self._results[key + "_json"] = str(sidecar)
        return runtime
