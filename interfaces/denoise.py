"""Nipype interface over :func:`asl_pipeline.models.inference.denoise_cbf`.

``DWANDenoise`` denoises a mean CBF map (3-D NIfTI, mL/100 g/min, native or
template space) with a trained network, axial slice by axial slice inside a
brain mask. The default weights are the shipped DWAN trained by learning from
noise (``asl_pipeline/data/dwan_lfn_l1.pt``); their sha256 is checked against
``data_manifest.json`` before use. The JSON sidecar says the map is denoised
and names the model file and its sha256.
"""

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

from asl_pipeline.errors import ASLInputError

LOGGER = logging.getLogger("nipype.interface")


class _DWANDenoiseInputSpec(BaseInterfaceInputSpec):
    in_file = File(
        exists=True, mandatory=True, desc="mean CBF map (3-D NIfTI, mL/100 g/min) to denoise"
    )
    mask_file = File(
        exists=True, mandatory=True, desc="brain mask on the CBF map's grid (nonzero = brain)"
    )
    weights = File(
        exists=True,
        desc="model file written by asl-train (default: the shipped DWAN, learning from "
        "noise, L1 loss)",
    )
    device = traits.Str("cpu", usedefault=True, desc="torch device: cpu, cuda, cuda:1 ...")
    batch_size = traits.Int(16, usedefault=True, desc="axial slices per forward pass")
    num_threads = traits.Int(1, usedefault=True, desc="CPU threads torch may use")


class _DWANDenoiseOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="denoised CBF map (mL/100 g/min), zero outside the mask")
    out_sidecar = File(exists=True, desc="JSON sidecar: model file, its sha256, Denoised: true")


class DWANDenoise(SimpleInterface):
    """Denoise a CBF map with DWAN (or another network trained by ``asl-train``)."""

    input_spec = _DWANDenoiseInputSpec
    output_spec = _DWANDenoiseOutputSpec

    def _run_interface(self, runtime):
        import torch

        from asl_pipeline.models.inference import denoise_cbf

        torch.set_num_threads(max(1, self.inputs.num_threads))
        img = nb.load(self.inputs.in_file)
        data = np.asanyarray(img.dataobj).astype(np.float32)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ASLInputError(
                f"the CBF map must be 3-D, got shape {data.shape}.",
                file=self.inputs.in_file,
                field="shape",
                fix="pass the mean CBF map, not the per-pair series",
            )
        mask = np.asanyarray(nb.load(self.inputs.mask_file).dataobj)
        mask = (mask[..., 0] if mask.ndim == 4 else mask) > 0
        if mask.shape != data.shape:
            raise ASLInputError(
                f"mask shape {mask.shape} differs from the CBF map's {data.shape}.",
                file=self.inputs.mask_file,
                field="shape",
                fix="resample the brain mask to the CBF map's grid",
            )
        weights = self.inputs.weights if isdefined(self.inputs.weights) else None
        out, info = denoise_cbf(
            np.nan_to_num(data),
            mask,
            weights=weights,
            affine=img.affine,
            device=self.inputs.device,
            batch_size=self.inputs.batch_size,
        )
        LOGGER.info("denoised %s with %s", self.inputs.in_file, info["path"])
        out_file = fname_presuffix(
            self.inputs.in_file, suffix="_denoised", newpath=runtime.cwd, use_ext=True
        )
        hdr = img.header.copy()
        hdr.set_data_dtype(np.float32)
        new = nb.Nifti1Image(out.astype(np.float32), img.affine, hdr)
        new.header.set_slope_inter(1.0, 0.0)
        new.to_filename(out_file)
        meta = info["metadata"]
        sidecar = {
            "Description": f"CBF map denoised by the {info['arch'].upper()} network "
            "(slice-wise in the axial plane, inside the brain mask; zero outside).",
            "Denoised": True,
            "Units": "mL/100 g/min",
            "Sources": [str(self.inputs.in_file), str(self.inputs.mask_file)],
            "DenoisingModel": {
                "File": Path(info["path"]).name,
                "Path": info["path"],
                "Sha256": info["sha256"],
                "Architecture": info["arch"],
                "Config": info["config"],
                "TrainingScheme": meta.get("scheme"),
                "TrainingLoss": meta.get("loss"),
                "TrainingCommand": meta.get("command"),
            },
        }
        side_file = out_file.removesuffix(".gz").removesuffix(".nii") + ".json"
        Path(side_file).write_text(json.dumps(sidecar, indent=2) + "\n")
        self._results["out_file"] = out_file
        self._results["out_sidecar"] = side_file
        return runtime
