"""Susceptibility distortion correction: the PEPOLAR field-map estimation branch."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline.interfaces.sdc import EstimatePepolarField

#: Outputs of :func:`init_pepolar_estimate_wf`.
SDC_OUTPUTS = ("fieldmap", "fieldmap_json", "corrected")

#: ``fmapid`` of the stored field map (SDCFlows' automatic identifiers).
FMAP_ID = "auto00000"


def init_pepolar_estimate_wf(
    *,
    in_metadata: dict,
    reverse_metadata: dict,
    output_dir: str | None = None,
    source_file: str | None = None,
    sources: list[str] | None = None,
    mem_gb: float = 1.0,
    name: str = "sdc_estimate_wf",
) -> pe.Workflow:
    """B0 field (Hz) from a reverse phase-encoded M0 pair, stored as a BIDS field map.

    .. workflow::
        :graph2use: orig
        :simple_form: yes

        from asl_pipeline.workflows.sdc import init_pepolar_estimate_wf
        wf = init_pepolar_estimate_wf(
            in_metadata={"PhaseEncodingDirection": "j", "TotalReadoutTime": 0.03},
            reverse_metadata={"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.03},
        )

    Parameters
    ----------
    in_metadata, reverse_metadata
        Sidecars of the two images (``PhaseEncodingDirection``, ``TotalReadoutTime``).
    output_dir, source_file, sources
        When given, the field map is stored as
        ``sub-X[_ses-Y]..._fmapid-auto00000_desc-preproc_fieldmap.nii.gz`` in ``fmap/``
        of ``output_dir`` (entities from ``source_file``, the ASL run), with
        ``Units: Hz`` and ``Sources`` (BIDS URIs of the pair) in its sidecar.

    Inputs
    ------
    in_file, reverse_file
        The two M0 images (same grid, opposite phase encoding).

    Outputs
    -------
    fieldmap (Hz, undistorted space of ``in_file``), fieldmap_json, corrected
    (the pair undistorted, for the report)
    """
    workflow = pe.Workflow(name=name)
    dirs = (
        in_metadata.get("PhaseEncodingDirection"),
        reverse_metadata.get("PhaseEncodingDirection"),
    )
    workflow.__desc__ = (
        "Susceptibility distortion was estimated from the M0 images acquired with opposite "
        f"phase-encoding directions ({dirs[0]} and {dirs[1]}; PEPOLAR) by asl_pipeline.sdc: "
        "a smooth B0 field (tensor-product cubic B-spline, coarse to fine over three levels "
        "of image smoothing and control-point spacing, P-spline smoothness penalty) that "
        "makes the two images identical once each is unwarped along the phase-encoding axis "
        "with its own displacement (field x TotalReadoutTime, opposite signs) and Jacobian "
        "intensity correction, the symmetric model of TOPUP (Andersson et al. 2003). The "
        "field was stored as a BIDS field map (Hz)."
    )
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["in_file", "reverse_file"]), name="inputnode"
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=list(SDC_OUTPUTS)), name="outputnode")
    estimate = pe.Node(
        EstimatePepolarField(
            in_metadata=dict(in_metadata), reverse_metadata=dict(reverse_metadata)
        ),
        name="pepolar_field",
        mem_gb=mem_gb,
        n_procs=1,
    )
    workflow.connect([
        (inputnode, estimate, [("in_file", "in_file"), ("reverse_file", "reverse_file")]),
        (estimate, outputnode, [(f, f) for f in SDC_OUTPUTS]),
    ])  # fmt: skip
    if output_dir and source_file:
        from asl_pipeline.interfaces.bids import DerivativesDataSink

        ds = pe.Node(
            DerivativesDataSink(
                base_directory=str(output_dir),
                source_file=str(source_file),
                datatype="fmap",
                fmapid=FMAP_ID,
                desc="preproc",
                suffix="fieldmap",
                meta_dict={
                    "Units": "Hz",
                    "Description": "B0 field (off-resonance) estimated from the reverse "
                    "phase-encoded M0 pair, in the undistorted space of the first M0 image.",
                },
                sources=list(sources or []),
            ),
            name="ds_fieldmap",
            run_without_submitting=True,
            mem_gb=0.1,
        )
        workflow.connect([
            (estimate, ds, [("fieldmap", "in_file"), ("fieldmap_json", "in_meta")]),
        ])  # fmt: skip
    return workflow
