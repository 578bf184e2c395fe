"""Partial-volume correction sub-workflow (``--pvc lr``)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline.interfaces.pvc import PartialVolumeCorrection, TissueFractions
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
    ref_image, asl_to_t1w
        The ASL reference (the grid) and the registration's transform.
    gm_pv_t1w, wm_pv_t1w
        GM and WM partial-volume fractions in T1w space (the anatomical
        workflow's ``*_pv_t1w``). They are averaged over each ASL voxel
        (:class:`~asl_pipeline.interfaces.pvc.TissueFractions`). The
        segmentation's posteriors, which the rest of the pipeline reads, are
        sharper than partial volumes and read the corrected GM CBF about 10%
        low (:func:`asl_pipeline.segmentation.partial_volumes`).

    Outputs
    -------
    pvc_gm_cbf, pvc_wm_cbf and their JSON sidecars.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["cbf", "mask", "ref_image", "asl_to_t1w", "gm_pv_t1w", "wm_pv_t1w"]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=list(PVC_OUTPUTS)), name="outputnode")
    fractions = pe.Node(TissueFractions(), name="pv_fractions", mem_gb=mem_gb)
    correct = pe.Node(PartialVolumeCorrection(kernel=tuple(kernel)), name="pvc_lr", mem_gb=mem_gb)
    workflow.connect([
        (inputnode, fractions, [("ref_image", "ref_image"), ("asl_to_t1w", "asl_to_t1w"),
                                ("gm_pv_t1w", "gm_t1w"), ("wm_pv_t1w", "wm_t1w")]),
        (inputnode, correct, [("cbf", "cbf_file"), ("mask", "mask")]),
        (fractions, correct, [("gm", "gm"), ("wm", "wm")]),
        (correct, outputnode, [("gm_cbf", "pvc_gm_cbf"), ("gm_cbf_json", "pvc_gm_cbf_json"),
                               ("wm_cbf", "pvc_wm_cbf"), ("wm_cbf_json", "pvc_wm_cbf_json")]),
    ])  # fmt: skip
    size = "x".join(str(int(k)) for k in kernel)
    workflow.__desc__ = (
        "Grey- and white-matter CBF maps were estimated with the linear-regression "
        "partial-volume correction of Asllani et al. (2008) in native ASL space: the "
        "T1w partial-volume fractions (not the segmentation's posteriors, which are "
        "sharper) were averaged over each ASL voxel to give its GM and WM "
        f"fractions, and within a {size}-voxel kernel around each voxel the measured CBF "
        "was modelled as the fraction-weighted sum of a GM and a WM CBF (CSF unperfused), "
        "solved by least squares with the kernel voxels weighted equally."
    )
    return workflow
