"""Partial-volume correction sub-workflow (``--pvc lr``)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline.interfaces.pvc import PartialVolumeCorrection
from asl_pipeline.pvc import DEFAULT_KERNEL

#: Outputs of :func:`init_pvc_wf` (and inputnode fields of the derivatives workflow).
PVC_OUTPUTS = ("pvc_gm_cbf", "pvc_gm_cbf_json", "pvc_wm_cbf", "pvc_wm_cbf_json")


def init_pvc_wf(
    *,
    kernel: tuple[int, int, int] = DEFAULT_KERNEL,
    mem_gb: float = 1.0,
    name: str = "pvc_wf",
) -> pe.Workflow:
    """GM and WM CBF by linear-regression partial-volume correction in ASL space.

    .. workflow::
        :graph2use: orig
        :simple_form: yes

        from asl_pipeline.workflows.pvc import init_pvc_wf
        wf = init_pvc_wf()

    Parameters
    ----------
    kernel
        Regression kernel in ASL voxels (default 5 x 5 x 1).

    Inputs
    ------
    cbf
        The measured CBF map (ASL space).
    mask
        ASL brain mask.
    gm, wm
        GM and WM fractions of each ASL voxel: the registration workflow's
        ASL-space tissue maps (the T1w probabilities averaged over each voxel,
        :func:`asl_pipeline.registration.fractions_to_asl_space`; the
        :class:`~asl_pipeline.interfaces.pvc.TissueFractions` interface
        computes the same maps for pipelines that have only the transform).

    Outputs
    -------
    pvc_gm_cbf, pvc_wm_cbf and their JSON sidecars.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["cbf", "mask", "gm", "wm"]), name="inputnode"
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=list(PVC_OUTPUTS)), name="outputnode")
    correct = pe.Node(PartialVolumeCorrection(kernel=tuple(kernel)), name="pvc_lr", mem_gb=mem_gb)
    workflow.connect([
        (inputnode, correct, [("cbf", "cbf_file"), ("mask", "mask"), ("gm", "gm"),
                              ("wm", "wm")]),
        (correct, outputnode, [("gm_cbf", "pvc_gm_cbf"), ("gm_cbf_json", "pvc_gm_cbf_json"),
                               ("wm_cbf", "pvc_wm_cbf"), ("wm_cbf_json", "pvc_wm_cbf_json")]),
    ])  # fmt: skip
    size = "x".join(str(int(k)) for k in kernel)
    workflow.__desc__ = (
        "Grey- and white-matter CBF maps were estimated with the linear-regression "
        "partial-volume correction of Asllani et al. (2008) in native ASL space: the "
        "T1w tissue probabilities were averaged over each ASL voxel to give its GM and WM "
        f"fractions, and within a {size}-voxel kernel around each voxel the measured CBF "
        "was modelled as the fraction-weighted sum of a GM and a WM CBF (CSF unperfused), "
        "solved by least squares with the kernel voxels weighted equally."
    )
    return workflow
