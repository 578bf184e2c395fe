"""Nipype interfaces over :mod:`asl_pipeline.sdc` (PEPOLAR field estimation) and
:mod:`asl_pipeline.fieldmap` (phase-difference and direct field maps)."""

from __future__ import annotations

import json
import logging

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from asl_pipeline import fieldmap, sdc
from asl_pipeline.interfaces.motion import load_4d

LOGGER = logging.getLogger("nipype.interface")


class _EstimatePepolarInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="M0 image (3D or 4D), one PE direction")
    reverse_file = File(
        exists=True, mandatory=True, desc="M0 image with the reverse phase encoding, same grid"
    )
    in_metadata = traits.Dict(
        mandatory=True, desc="sidecar of in_file (PhaseEncodingDirection, TotalReadoutTime)"
    )
    reverse_metadata = traits.Dict(
        mandatory=True, desc="sidecar of reverse_file (PhaseEncodingDirection, TotalReadoutTime)"
    )
    smoothness = traits.Float(
        sdc.DEFAULT_SMOOTHNESS, usedefault=True, desc="weight of the field's smoothness penalty"
    )


class _EstimatePepolarOutputSpec(TraitedSpec):
    fieldmap = File(exists=True, desc="B0 field (Hz) in the undistorted space of in_file")
    fieldmap_json = File(exists=True, desc="JSON record: Units, phase encoding, fit quality")
    corrected = File(exists=True, desc="the two M0 images undistorted (4D: in_file, reverse)")
    residual_ratio = traits.Float(
        desc="mean |difference| of the corrected pair over that of the raw pair (in the head)"
    )


class EstimatePepolarField(SimpleInterface):
    """Field map (Hz) from a reverse phase-encoded M0 pair (:func:`sdc.estimate_pepolar_field`)."""

    input_spec = _EstimatePepolarInputSpec
    output_spec = _EstimatePepolarOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        img1, data1 = load_4d(inp.in_file, "M0")
        img2, data2 = load_4d(inp.reverse_file, "reverse phase-encoded M0")
        pe1, pe2 = sdc.check_pepolar_pair(
            (inp.in_file, inp.in_metadata, img1.shape, img1.affine),
            (inp.reverse_file, inp.reverse_metadata, img2.shape, img2.affine),
        )
        fit = sdc.estimate_pepolar_field(
            data1, data2, pe1, pe2, img1.header.get_zooms()[:3], smoothness=inp.smoothness
        )
        LOGGER.info(
            "PEPOLAR field: %.1f to %.1f Hz, residual ratio %.3f",
            fit.field_hz.min(),
            fit.field_hz.max(),
            fit.residual_ratio,
        )
        out = fname_presuffix(inp.in_file, suffix="_fieldmap", newpath=runtime.cwd)
        hdr = img1.header.copy()
        hdr.set_data_dtype(np.float32)
        if len(hdr.get_data_shape()) == 4:
            hdr.set_data_shape(hdr.get_data_shape()[:3])
        nb.Nifti1Image(fit.field_hz, img1.affine, hdr).to_filename(out)
        corrected = fname_presuffix(inp.in_file, suffix="_sdc_pair", newpath=runtime.cwd)
        stack = np.stack(fit.corrected, -1).astype(np.float32)
        nb.Nifti1Image(stack, img1.affine).to_filename(corrected)
        record = fname_presuffix(
            inp.in_file, suffix="_fieldmap", newpath=runtime.cwd, use_ext=False
        )
        record = record.removesuffix(".nii") + ".json"
        with open(record, "w") as fobj:
            json.dump(
                {
                    "Units": "Hz",
                    "PhaseEncodingDirections": [pe1.direction, pe2.direction],
                    "TotalReadoutTimes": [pe1.readout_time, pe2.readout_time],
                    "ResidualRatio": round(fit.residual_ratio, 4),
                    "Iterations": list(fit.iterations),
                },
                fobj,
                indent=2,
            )
        self._results.update(
            fieldmap=out,
            fieldmap_json=record,
            corrected=corrected,
            residual_ratio=fit.residual_ratio,
        )
        return runtime


class _PrepareFieldmapInputSpec(BaseInterfaceInputSpec):
    kind = traits.Enum(*fieldmap.KINDS, mandatory=True, desc="phasediff or fieldmap (BIDS suffix)")
    fieldmap_file = File(exists=True, mandatory=True, desc="phase-difference or field map image")
    magnitude_file = File(
        exists=True, mandatory=True, desc="magnitude image on the field map's grid"
    )
    metadata = traits.Dict(
        mandatory=True, desc="sidecar of fieldmap_file (EchoTime1/EchoTime2, or Units)"
    )
    reference_file = File(
        exists=True, mandatory=True, desc="fixed image on the ASL grid: the M0 or the ASL series"
    )
    frame = traits.Enum(
        "m0",
        "reference",
        usedefault=True,
        desc="m0: reference_file is the M0 (its volumes averaged); reference: the ASL "
        "series (its first volume)",
    )
    seed = traits.Int(1, usedefault=True, desc="seed of the registration's metric sampling")
    unwrap = traits.Bool(
        True,
        usedefault=True,
        desc="unwrap a phase difference inside the magnitude's head mask "
        "(asl_pipeline.fieldmap.unwrap_field); ignored for a direct field map",
    )


class _PrepareFieldmapOutputSpec(TraitedSpec):
    fieldmap = File(exists=True, desc="B0 field (Hz) on the ASL grid, in the reference's space")
    fieldmap_json = File(exists=True, desc="JSON record: Units, how the values were read")
    magnitude = File(exists=True, desc="field map magnitude resampled onto the ASL grid")


class PrepareFieldmap(SimpleInterface):
    """Field (Hz) on the ASL grid from a phasediff or direct field map
    (:func:`asl_pipeline.fieldmap.prepare_field`)."""

    input_spec = _PrepareFieldmapInputSpec
    output_spec = _PrepareFieldmapOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        fmap_img = nb.load(inp.fieldmap_file)
        mag_img = nb.load(inp.magnitude_file)
        ref_img, ref = load_4d(inp.reference_file, "field map reference")
        if ref.ndim == 4:
            ref = ref.mean(-1) if inp.frame == "m0" else ref[..., 0]
        res = fieldmap.prepare_field(
            np.asanyarray(fmap_img.dataobj),
            np.asanyarray(mag_img.dataobj, dtype=np.float32),
            fmap_img.affine,
            ref,
            ref_img.affine,
            kind=inp.kind,
            metadata=inp.metadata,
            file=inp.fieldmap_file,
            register=lambda *a: fieldmap.register_magnitude(*a, seed=inp.seed),
            unwrap=inp.unwrap,
        )
        LOGGER.info(
            "%s: %s; field on the ASL grid %.1f to %.1f Hz",
            inp.fieldmap_file,
            res.note,
            res.field_hz.min(),
            res.field_hz.max(),
        )
        out = fname_presuffix(inp.fieldmap_file, suffix="_hz", newpath=runtime.cwd)
        nb.Nifti1Image(res.field_hz, ref_img.affine).to_filename(out)
        mag = fname_presuffix(inp.magnitude_file, suffix="_aslgrid", newpath=runtime.cwd)
        nb.Nifti1Image(res.magnitude, ref_img.affine).to_filename(mag)
        record = out.removesuffix(".gz").removesuffix(".nii") + ".json"
        with open(record, "w") as fobj:
            json.dump(
                {
                    "Units": "Hz",
                    "FieldmapType": inp.kind,
                    "ValuesReadAs": res.note,
                    "RegistrationToReference": np.round(res.target_to_field, 5).tolist(),
                },
                fobj,
                indent=2,
            )
        self._results.update(fieldmap=out, fieldmap_json=record, magnitude=mag)
        return runtime
