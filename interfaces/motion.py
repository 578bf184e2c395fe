"""Nipype interfaces over :mod:`asl_pipeline.motion` (ASL-aware realignment)."""

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

from asl_pipeline import motion as core
from asl_pipeline import sdc
from asl_pipeline.errors import ASLInputError
from asl_pipeline.rundesc import read_aslcontext

LOGGER = logging.getLogger("nipype.interface")

#: Column names of the motion TSVs (BIDS/fMRIPrep confounds names).
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def write_motion_tsv(path, params, extra=None) -> str:
    """Write ``(n, 6)`` parameters (and extra named columns) as a TSV with a header."""
    cols = {name: np.asarray(params)[:, i] for i, name in enumerate(MOTION_COLUMNS)}
    cols.update(extra or {})
    names = list(cols)
    n = len(cols[names[0]])
    with open(path, "w") as fobj:
        fobj.write("\t".join(names) + "\n")
        for i in range(n):
            fobj.write("\t".join(f"{float(cols[c][i]):.8g}" for c in names) + "\n")
    return str(path)


def load_4d(path, what="ASL"):
    """Image and float32 data; empty or unreadable files raise ASLInputError."""
    try:
        img = nb.load(path)
    except Exception as err:  # nibabel raises several types for broken files
        raise ASLInputError(
            f"cannot read the {what} image ({err}).",
            file=path,
            field="file",
            fix=f"provide a valid NIfTI {what} image.",
        ) from err
    return img, np.asarray(img.dataobj, dtype=np.float32)


class ResliceOptionsInputSpec(BaseInterfaceInputSpec):
    """How the motion estimates are cleaned and applied (both backends)."""

    zigzag_method = traits.Enum(
        *core.ZIGZAG_METHODS,
        usedefault=True,
        desc="detect: subtract the control - label offset (measured on the detrended pair "
        "differences) only where it exceeds 4 robust standard errors, and put pairs that did "
        "not move beyond the trend on it; interpolate: pair-mean "
        "parameters interpolated to each volume (loses motion within a pair); regress: "
        "subtract the fitted zig-zag (methods spec, Wang 2012); none: raw estimates",
    )
    reslice_mode = traits.Enum(
        *core.RESLICE_MODES,
        usedefault=True,
        desc="volume: each volume with its own cleaned parameters; pair: both volumes of a "
        "control/label pair with the pair's mean parameters; none: parameters estimated and "
        "reported, series not resliced",
    )

    fieldmap = File(
        exists=True,
        desc="B0 field (Hz) on the ASL grid: susceptibility distortion is undone in the same "
        "reslice as the motion (with the Jacobian)",
    )
    fieldmap_frame = traits.Enum(
        "m0",
        "reference",
        usedefault=True,
        desc="m0: the field is in the undistorted space of the M0 scan (estimated from the M0 "
        "pair) and is moved with the M0's motion estimate; reference: it is in the space of "
        "the first volume",
    )
    pe_direction = traits.Enum(
        *sdc.PE_DIRECTIONS, desc="PhaseEncodingDirection of the ASL series (needed with fieldmap)"
    )
    readout_time = traits.Float(desc="TotalReadoutTime of the ASL series, s (with fieldmap)")
    m0_pe_direction = traits.Enum(
        *sdc.PE_DIRECTIONS, desc="PhaseEncodingDirection of the M0 (default: the series')"
    )
    m0_readout_time = traits.Float(desc="TotalReadoutTime of the M0, s (default: the series')")


def field_correction(inputs) -> sdc.FieldCorrection | None:
    """The :class:`~asl_pipeline.sdc.FieldCorrection` the reslice inputs describe."""
    if not isdefined(inputs.fieldmap):
        return None
    pe = sdc.phase_encoding(
        {"PhaseEncodingDirection": inputs.pe_direction or None,
         "TotalReadoutTime": inputs.readout_time or None},
        file=inputs.fieldmap,
    )  # fmt: skip
    m0_pe = None
    if isdefined(inputs.m0_pe_direction):
        m0_pe = sdc.phase_encoding(
            {"PhaseEncodingDirection": inputs.m0_pe_direction,
             "TotalReadoutTime": inputs.m0_readout_time or None},
            file=inputs.fieldmap,
        )  # fmt: skip
    field = np.asarray(nb.load(inputs.fieldmap).dataobj, dtype=np.float32)
    return sdc.FieldCorrection(field, pe, m0_pe, inputs.fieldmap_frame)


class _ASLRealignInputSpec(ResliceOptionsInputSpec):
    asl_file = File(exists=True, mandatory=True, desc="4D ASL series (NIfTI)")
    aslcontext = File(exists=True, mandatory=True, desc="BIDS aslcontext.tsv of the series")
    m0_file = File(exists=True, desc="separate M0 scan on the ASL grid (3D or 4D), optional")
    n_passes = traits.Int(
        2, usedefault=True, desc="estimation passes (2: first volume, then mean)"
    )
    fwhm = traits.Float(desc="smoothing before estimation (mm); default one in-plane voxel size")
    interp_order = traits.Int(
        3, usedefault=True, desc="spline order of the single final reslice (1 trilinear, 3 cubic)"
    )
    remove_zigzag = traits.Bool(
        True, usedefault=True, desc="regress the label/control zig-zag out of the parameters"
    )
    fd_radius = traits.Float(50.0, usedefault=True, desc="sphere radius (mm) for FD and RMSD")


class _ASLRealignOutputSpec(TraitedSpec):
    asl_corrected = File(exists=True, desc="realigned 4D ASL series (resliced once)")
    m0_corrected = File(desc="realigned M0 (same reference), when an M0 file was given")
    ref_image = File(
        exists=True,
        desc="reference: mean of the realigned control/label volumes (without them, of "
        "the M0 volumes)",
    )
    ref_distorted = File(
        desc="with a field map: the reference resliced for motion only (before the "
        "distortion correction)"
    )
    motion_params_raw = File(
        exists=True, desc="TSV of the estimated parameters (trans mm, rot rad)"
    )
    motion_params = File(exists=True, desc="TSV of the parameters after zig-zag removal")
    confounds = File(
        exists=True,
        desc="TSV: cleaned parameters, raw_* parameters, framewise_displacement, rmsd",
    )


class ASLRealign(SimpleInterface):
    """ASL-aware rigid realignment (Wang 2012), embedded backend."""

    input_spec = _ASLRealignInputSpec
    output_spec = _ASLRealignOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        img, data = load_4d(inp.asl_file)
        types = read_aslcontext(inp.aslcontext)
        m0 = m0_aff = None
        if isdefined(inp.m0_file):
            m0_img, m0 = load_4d(inp.m0_file, "M0")
            m0_aff = m0_img.affine
        res = core.realign_asl(
            data,
            img.affine,
            types,
            m0=m0,
            m0_affine=m0_aff,
            asl_file=inp.asl_file,
            m0_file=inp.m0_file if isdefined(inp.m0_file) else None,
            aslcontext_file=inp.aslcontext,
            n_passes=inp.n_passes,
            fwhm_mm=inp.fwhm if isdefined(inp.fwhm) else None,
            order=inp.interp_order,
            remove_zigzag_from_params=inp.remove_zigzag,
            zigzag_method=inp.zigzag_method,
            reslice_mode=inp.reslice_mode,
            fd_radius=inp.fd_radius,
            sdc=field_correction(inp),
        )
        LOGGER.info(
            "realigned %d volumes: max FD %.3f mm, mean |zig-zag| removed %s",
            data.shape[-1],
            res.fd.max(),
            np.round(np.abs(res.params_raw - res.params).mean(0), 5),
        )
        log_zigzag_offset(res)
        self._results.update(write_realign_outputs(res, inp.asl_file, img, runtime.cwd))
        if res.m0_corrected is not None:
            self._results["m0_corrected"] = write_m0_corrected(res, m0_img, img, runtime.cwd)
        return runtime


def log_zigzag_offset(res: core.RealignResult) -> None:
    """Log what ``--hmc-zigzag detect`` found in the raw estimates and removed."""
    offset = res.zigzag_offset
    if offset is None:
        return
    LOGGER.info(
        "control - label offset of the motion estimates (tx ty tz mm, rx ry rz rad): "
        "%s, t %s; removed on %d of 6 parameters; %d pairs put on the trend",
        np.round(offset.amplitude, 5),
        np.round(offset.t, 1),
        int(offset.removed.sum()),
        offset.still_pairs,
    )


def write_m0_corrected(res: core.RealignResult, m0_img, img, cwd) -> str:
    """Write the realigned M0 (as 3D or 4D as its file was) on the series' grid:
    the series' affine, since an M0 whose own differed was read there."""
    out = fname_presuffix(m0_img.get_filename(), suffix="_hmc", newpath=cwd)
    arr = res.m0_corrected if m0_img.ndim == 4 else res.m0_corrected[..., 0]
    hdr = m0_img.header.copy()
    hdr.set_data_dtype(np.float32)  # int16 storage would truncate the reslice
    nb.Nifti1Image(arr, img.affine, hdr).to_filename(out)
    return out


def write_realign_outputs(res: core.RealignResult, asl_file, img, cwd) -> dict:
    """Write the series, reference and parameter tables of a realignment."""
    hdr = img.header.copy()
    hdr.set_data_dtype(np.float32)
    out = {}
    out["asl_corrected"] = fname_presuffix(asl_file, suffix="_hmc", newpath=cwd)
    nb.Nifti1Image(res.corrected, img.affine, hdr).to_filename(out["asl_corrected"])
    out["ref_image"] = fname_presuffix(asl_file, suffix="_hmcref", newpath=cwd)
    nb.Nifti1Image(res.reference.astype(np.float32), img.affine).to_filename(out["ref_image"])
    if res.reference_distorted is not None:
        out["ref_distorted"] = fname_presuffix(asl_file, suffix="_hmcref_distorted", newpath=cwd)
        nb.Nifti1Image(res.reference_distorted.astype(np.float32), img.affine).to_filename(
            out["ref_distorted"]
        )
    out["motion_params_raw"] = write_motion_tsv(f"{cwd}/motion_params_raw.tsv", res.params_raw)
    out["motion_params"] = write_motion_tsv(f"{cwd}/motion_params.tsv", res.params)
    extra = {f"raw_{c}": res.params_raw[:, i] for i, c in enumerate(MOTION_COLUMNS)}
    extra["framewise_displacement"] = res.fd
    extra["rmsd"] = res.rmsd
    out["confounds"] = write_motion_tsv(f"{cwd}/motion_confounds.tsv", res.params, extra)
    return out
