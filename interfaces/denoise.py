"""Nipype interfaces over :mod:`asl_pipeline.models.inference`.

``DWANDenoise`` (over :func:`~asl_pipeline.models.inference.denoise_cbf`)
denoises a mean CBF map (3-D NIfTI, mL/100 g/min, native or template space)
with a trained network, axial slice by axial slice inside a brain mask. The
default weights are the shipped DWAN trained by learning from noise
(``asl_pipeline/data/dwan_lfn_l1.pt``); their sha256 is checked against
``data_manifest.json`` before use. The JSON sidecar says the map is denoised
and names the model file and its sha256. A BOLD-input model is refused.

``BOLDToCBF`` (over :func:`~asl_pipeline.models.inference.predict_cbf_from_bold`)
predicts a CBF map from a BOLD-weighted image (methods spec, section 6.4: the
label/control average of a window of pairs) with a network trained by
``asl-train --input bold``. No such weights are shipped, so ``weights`` is
mandatory; a CBF-input model is refused. Its sidecar names the model and its
sha256 too.
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


class _NetworkRunInputSpec(BaseInterfaceInputSpec):
    """Where and how a network runs (shared by the interfaces of this module)."""

    device = traits.Str("cpu", usedefault=True, desc="torch device: cpu, cuda, cuda:1 ...")
    batch_size = traits.Int(16, usedefault=True, desc="axial slices per forward pass")
    num_threads = traits.Int(1, usedefault=True, desc="CPU threads torch may use")


class _DWANDenoiseInputSpec(_NetworkRunInputSpec):
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
    cbf_ts = File(
        exists=True,
        desc="per-pair CBF series (4-D) whose mean is in_file: the noise level of the map "
        "and the pairs of subject-level fine-tuning",
    )
    gm_file = File(exists=True, desc="GM probability on the CBF map's grid (guided models)")
    wm_file = File(exists=True, desc="WM probability on the CBF map's grid (guided models)")
    m0_file = File(exists=True, desc="M0 on the CBF map's grid (models with an m0 channel)")
    finetune_seconds = traits.Float(
        0.0,
        usedefault=True,
        desc="fine-tune the weights on the run's own pairs for this long first (0: off)",
    )
    seed = traits.Int(0, usedefault=True, desc="random seed of the fine-tuning")
    outlier_matrix = File(
        exists=True,
        desc="slice x pair TSV of the cleaning that made in_file (1 = removed; CleanCBF's "
        "outlier_matrix): the noise level and the fine-tuning then use only the kept pairs",
    )


class _DWANDenoiseOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="denoised CBF map (mL/100 g/min), zero outside the mask")
    out_sidecar = File(exists=True, desc="JSON sidecar: model file, its sha256, Denoised: true")


class DWANDenoise(SimpleInterface):
    """Denoise a CBF map with DWAN (or another network trained by ``asl-train``)."""

    input_spec = _DWANDenoiseInputSpec
    output_spec = _DWANDenoiseOutputSpec

    def _run_interface(self, runtime):
        import torch

        from asl_pipeline.models.inference import denoise_run
        from asl_pipeline.outliers import read_outlier_matrix

        torch.set_num_threads(max(1, self.inputs.num_threads))
        img, data, mask = _load_volume_and_mask(
            self.inputs.in_file,
            self.inputs.mask_file,
            "CBF map",
            mean_4d=False,
            fix_4d="pass the mean CBF map, not the per-pair series",
        )

        def optional(name):
            value = getattr(self.inputs, name)
            if not isdefined(value):
                return None
            return np.asanyarray(nb.load(value).dataobj).astype(np.float32)

        weights = self.inputs.weights if isdefined(self.inputs.weights) else None
        series = optional("cbf_ts")
        keep = None
        if isdefined(self.inputs.outlier_matrix) and series is not None:
            keep = ~read_outlier_matrix(self.inputs.outlier_matrix, series.shape[2:])
        out, info, fit = denoise_run(
            data,
            mask,
            series=series,
            gm=optional("gm_file"),
            wm=optional("wm_file"),
            m0=optional("m0_file"),
            weights=weights,
            affine=img.affine,
            finetune_seconds=self.inputs.finetune_seconds,
            seed=self.inputs.seed,
            device=self.inputs.device,
            batch_size=self.inputs.batch_size,
            keep=keep,
        )
        LOGGER.info("denoised %s with %s", self.inputs.in_file, info["path"])
        out_file = fname_presuffix(
            self.inputs.in_file, suffix="_denoised", newpath=runtime.cwd, use_ext=True
        )
        _write_like(img, out, out_file)
        sidecar = {
            "Description": f"CBF map denoised by the {info['arch'].upper()} network "
            "(slice-wise in the axial plane, inside the brain mask; zero outside).",
            "Denoised": True,
            "Units": "mL/100 g/min",
            "Sources": [str(self.inputs.in_file), str(self.inputs.mask_file)],
            "DenoisingModel": _model_record(info),
        }
        if keep is not None:
            sidecar["Description"] += (
                " The noise level and any fine-tuning used only the pairs the outlier "
                "cleaning kept in each slice."
            )
            sidecar["Sources"].append(str(self.inputs.outlier_matrix))
        if fit is not None:
            sidecar["SubjectFineTuning"] = fit
        self._results["out_file"] = out_file
        self._results["out_sidecar"] = _write_sidecar(out_file, sidecar)
        return runtime


def _model_record(info: dict) -> dict:
    """The sidecar's description of a model (from ``load_model``'s info)."""
    meta = info["metadata"]
    return {
        "File": Path(info["path"]).name,
        "Path": info["path"],
        "Sha256": info["sha256"],
        "Architecture": info["arch"],
        "Config": info["config"],
        "InputKind": info["input_kind"],
        "TrainingScheme": meta.get("scheme"),
        "TrainingLoss": meta.get("loss"),
        "TrainingCommand": meta.get("command"),
    }


def _write_sidecar(out_file: str, sidecar: dict) -> str:
    side_file = out_file.removesuffix(".gz").removesuffix(".nii") + ".json"
    Path(side_file).write_text(json.dumps(sidecar, indent=2) + "\n")
    return side_file


def _load_volume_and_mask(in_file, mask_file, what: str, *, mean_4d: bool, fix_4d: str):
    """A 3-D image (4-D averaged over volumes when ``mean_4d``) and its mask, checked."""
    img = nb.load(in_file)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    if data.ndim == 4 and (data.shape[3] == 1 or mean_4d):
        data = data.mean(axis=3)
    if data.ndim != 3:
        raise ASLInputError(
            f"the {what} must be 3-D, got shape {data.shape}.",
            file=in_file,
            field="shape",
            fix=fix_4d,
        )
    mask = np.asanyarray(nb.load(mask_file).dataobj)
    mask = (mask[..., 0] if mask.ndim == 4 else mask) > 0
    if mask.shape != data.shape:
        raise ASLInputError(
            f"mask shape {mask.shape} differs from the {what}'s {data.shape}.",
            file=mask_file,
            field="shape",
            fix=f"resample the brain mask to the {what}'s grid",
        )
    return img, np.nan_to_num(data), mask


def _write_like(img, data, out_file):
    hdr = img.header.copy()
    hdr.set_data_dtype(np.float32)
    if len(hdr.get_data_shape()) == 4:
        hdr.set_data_shape(data.shape)
    new = nb.Nifti1Image(data.astype(np.float32), img.affine, hdr)
    new.header.set_slope_inter(1.0, 0.0)
    new.to_filename(out_file)


class _BOLDToCBFInputSpec(_NetworkRunInputSpec):
    in_file = File(
        exists=True,
        mandatory=True,
        desc="BOLD-weighted image, any units: the label/control average of a window of "
        "pairs (3-D, or a 4-D series of control and label volumes, averaged over time)",
    )
    mask_file = File(
        exists=True, mandatory=True, desc="brain mask on the image's grid (nonzero = brain)"
    )
    weights = File(
        exists=True,
        mandatory=True,
        desc="model file written by asl-train --input bold (none is shipped)",
    )


class _BOLDToCBFOutputSpec(TraitedSpec):
    out_file = File(
        exists=True, desc="CBF map (mL/100 g/min) predicted from the image, zero outside the mask"
    )
    out_sidecar = File(exists=True, desc="JSON sidecar: model file, its sha256, source image")


class BOLDToCBF(SimpleInterface):
    """Predict CBF from a BOLD-weighted image (a network of ``asl-train --input bold``)."""

    input_spec = _BOLDToCBFInputSpec
    output_spec = _BOLDToCBFOutputSpec

    def _run_interface(self, runtime):
        import torch

        from asl_pipeline.models.inference import predict_cbf_from_bold

        torch.set_num_threads(max(1, self.inputs.num_threads))
        img, data, mask = _load_volume_and_mask(
            self.inputs.in_file,
            self.inputs.mask_file,
            "BOLD-weighted image",
            mean_4d=True,
            fix_4d="pass a 3-D image or a 4-D series (averaged over its volumes)",
        )
        out, info = predict_cbf_from_bold(
            data,
            mask,
            weights=self.inputs.weights,
            affine=img.affine,
            device=self.inputs.device,
            batch_size=self.inputs.batch_size,
        )
        LOGGER.info("predicted CBF from %s with %s", self.inputs.in_file, info["path"])
        out_file = fname_presuffix(
            self.inputs.in_file, suffix="_predcbf", newpath=runtime.cwd, use_ext=True
        )
        _write_like(img, out, out_file)
        sidecar = {
            "Description": f"CBF map predicted from a BOLD-weighted image by the "
            f"{info['arch'].upper()} network (methods spec 6.4; slice-wise in the axial "
            "plane, inside the brain mask; zero outside). Not a measurement of perfusion.",
            "PredictedFromBOLD": True,
            "Units": "mL/100 g/min",
            "Sources": [str(self.inputs.in_file), str(self.inputs.mask_file)],
            "PredictionModel": _model_record(info),
        }
        self._results["out_file"] = out_file
        self._results["out_sidecar"] = _write_sidecar(out_file, sidecar)
        return runtime
