"""Nipype interface over :func:`asl_pipeline.bold.bold_to_asl`.

``BOLDToASLSpace`` motion-corrects a BIDS BOLD run, registers its temporal
mean to the ASL reference (rigid, mutual information) and writes the mean
resampled onto the ASL grid, the rigid transform and the BOLD motion
parameters. Its output is the input of ``BOLDToCBF`` (methods spec 6.4).
"""

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

LOGGER = logging.getLogger("nipype.interface")


class _BOLDToASLSpaceInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="BIDS BOLD run (4-D func/*_bold.nii.gz)")
    reference = File(
        exists=True, mandatory=True, desc="ASL reference image (3-D, ASL grid) to register to"
    )
    seed = traits.Int(1, usedefault=True, desc="seed of the registration's metric sampling")


class _BOLDToASLSpaceOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="motion-corrected BOLD mean on the ASL grid")
    out_transform = File(
        exists=True, desc="4x4 RAS+ point mapping ASL world -> BOLD world (text, mm)"
    )
    out_motion = File(exists=True, desc="BOLD rigid motion parameters (TSV, mm and rad)")
    out_report = File(exists=True, desc="JSON summary: mean/max BOLD framewise displacement")


class BOLDToASLSpace(SimpleInterface):
    """Bring a BOLD run's realigned mean onto the ASL grid."""

    input_spec = _BOLDToASLSpaceInputSpec
    output_spec = _BOLDToASLSpaceOutputSpec

    def _run_interface(self, runtime):
        from asl_pipeline.bold import bold_to_asl
        from asl_pipeline.motion import framewise_displacement

        bold = nb.load(self.inputs.bold_file)
        ref = nb.load(self.inputs.reference)
        res = bold_to_asl(bold, ref, seed=self.inputs.seed, bold_file=self.inputs.bold_file)
        out_file = fname_presuffix(
            self.inputs.reference, suffix="_boldmean", newpath=runtime.cwd, use_ext=True
        )
        nb.Nifti1Image(res.image, ref.affine).to_filename(out_file)
        xfm = fname_presuffix("bold_to_asl.txt", newpath=runtime.cwd)
        np.savetxt(xfm, res.asl_to_bold, fmt="%.12g")
        motion = fname_presuffix("bold_motion.tsv", newpath=runtime.cwd)
        cols = "trans_x\ttrans_y\ttrans_z\trot_x\trot_y\trot_z"
        np.savetxt(motion, res.realigned.motion, fmt="%.9f", delimiter="\t", header=cols,
                   comments="")  # fmt: skip
        fd = framewise_displacement(res.realigned.motion)
        report = fname_presuffix("bold_to_asl.json", newpath=runtime.cwd)
        with open(report, "w") as fh:
            summary = {"BOLDFile": str(self.inputs.bold_file), "MeanFD": float(np.mean(fd)),
                       "MaxFD": float(np.max(fd))}  # fmt: skip
            json.dump(summary, fh, indent=2)
        LOGGER.info("BOLD run on the ASL grid (mean FD %.3f mm)", float(np.mean(fd)))
        self._results.update(
            out_file=out_file, out_transform=xfm, out_motion=motion, out_report=report
        )
        return runtime
