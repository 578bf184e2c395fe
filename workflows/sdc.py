"""Susceptibility distortion correction: the field-map branch (PEPOLAR M0 pair,
phase-difference or direct field map), giving the field (Hz) on the ASL grid."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline.interfaces.sdc import EstimatePepolarField, PrepareFieldmap

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
        "a smooth B0 field (tensor-product cubic B-spline, coarse to fine over four levels "
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
        ds = _fieldmap_sink(
            output_dir,
            source_file,
            sources,
            "B0 field (off-resonance) estimated from the reverse phase-encoded M0 pair, in "
            "the undistorted space of the first M0 image.",
        )
        workflow.connect([
            (estimate, ds, [("fieldmap", "in_file"), ("fieldmap_json", "in_meta")]),
        ])  # fmt: skip
    return workflow


def _fieldmap_sink(output_dir, source_file, sources, description) -> pe.Node:
    """The node storing the field map (Hz) as ``fmap/*_fmapid-auto00000_desc-preproc_fieldmap``."""
    from asl_pipeline.interfaces.bids import DerivativesDataSink

    return pe.Node(
        DerivativesDataSink(
            base_directory=str(output_dir),
            source_file=str(source_file),
            datatype="fmap",
            fmapid=FMAP_ID,
            desc="preproc",
            suffix="fieldmap",
            meta_dict={"Units": "Hz", "Description": description},
            sources=list(sources or []),
        ),
        name="ds_fieldmap",
        run_without_submitting=True,
        mem_gb=0.1,
    )


#: Outputs of :func:`init_fieldmap_prepare_wf`.
FIELDMAP_OUTPUTS = ("fieldmap", "fieldmap_json", "magnitude")


def init_fieldmap_prepare_wf(
    *,
    kind: str,
    metadata: dict,
    frame: str = "m0",
    output_dir: str | None = None,
    source_file: str | None = None,
    sources: list[str] | None = None,
    seed: int = 1,
    mem_gb: float = 1.0,
    name: str = "sdc_estimate_wf",
) -> pe.Workflow:
    """B0 field (Hz) on the ASL grid from a phase-difference or direct field map.

    .. workflow::
        :graph2use: orig
        :simple_form: yes

        from asl_pipeline.workflows.sdc import init_fieldmap_prepare_wf
        wf = init_fieldmap_prepare_wf(
            kind="phasediff", metadata={"EchoTime1": 0.00492, "EchoTime2": 0.00738}
        )

    Parameters
    ----------
    kind
        ``"phasediff"`` or ``"fieldmap"`` (BIDS suffix).
    metadata
        Sidecar of the field map image (``EchoTime1``/``EchoTime2`` or ``Units``).
    frame
        ``"m0"``: the reference is the separate M0 (the field is then in its
        space and moved with its motion estimate); ``"reference"``: the ASL
        series, whose first volume is the realignment reference.
    output_dir, source_file, sources
        As :func:`init_pepolar_estimate_wf`: the field on the ASL grid is
        stored as the run's ``fmap/*_fmapid-auto00000_desc-preproc_fieldmap``.

    Inputs
    ------
    fieldmap_file, magnitude_file, reference_file

    Outputs
    -------
    fieldmap (Hz, ASL grid), fieldmap_json, magnitude (on the ASL grid)
    """
    workflow = pe.Workflow(name=name)
    what = {
        "phasediff": "the phase-difference map of two gradient echoes (field = phase "
        "difference / (2 pi (EchoTime2 - EchoTime1)), the phase unwrapped in 3D inside the "
        "head mask of the magnitude image with the reliability-guided algorithm of "
        "Abdul-Rahman et al. 2007, scikit-image)",
        "fieldmap": "the B0 field map (converted to Hz from its Units)",
    }[kind]
    workflow.__desc__ = (
        f"Susceptibility distortion was corrected with {what}: the field was fitted "
        "inside the head mask of the field map's magnitude image with a smooth "
        "tensor-product cubic B-spline (P-spline penalty; asl_pipeline.fieldmap), which "
        "extrapolates it smoothly outside the head, the magnitude was registered rigidly "
        "(6 dof, Mattes mutual information, ANTs via antspyx) to the "
        + ("M0 image" if frame == "m0" else "first ASL volume")
        + ", and the field was resampled onto the ASL grid through that transform and "
        "stored as a BIDS field map (Hz)."
    )
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["fieldmap_file", "magnitude_file", "reference_file"]),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=list(FIELDMAP_OUTPUTS)), name="outputnode")
    prepare = pe.Node(
        PrepareFieldmap(kind=kind, metadata=dict(metadata), frame=frame, seed=seed),
        name=f"{kind}_field",
        mem_gb=mem_gb,
        n_procs=1,
    )
    workflow.connect([
        (inputnode, prepare, [("fieldmap_file", "fieldmap_file"),
                              ("magnitude_file", "magnitude_file"),
                              ("reference_file", "reference_file")]),
        (prepare, outputnode, [(f, f) for f in FIELDMAP_OUTPUTS]),
    ])  # fmt: skip
    if output_dir and source_file:
        ds = _fieldmap_sink(
            output_dir,
            source_file,
            sources,
            f"B0 field (off-resonance) from the {kind} field map, registered to the "
            + ("M0 image" if frame == "m0" else "first ASL volume")
            + " and resampled onto the ASL grid.",
        )
        workflow.connect([
            (prepare, ds, [("fieldmap", "in_file"), ("fieldmap_json", "in_meta")]),
        ])  # fmt: skip
    return workflow


def init_sdc_estimate_wf(
    *,
    source,
    output_dir: str | None = None,
    source_file: str | None = None,
    seed: int = 1,
    mem_gb: float = 1.0,
) -> pe.Workflow:
    """The estimation branch for ``source`` (:func:`asl_pipeline.sdc.field_source`),
    its inputs set; ``outputnode.fieldmap`` is the field (Hz) on the ASL grid."""
    from asl_pipeline.derivatives import raw_uri
    from asl_pipeline.sdc import PepolarPair

    if isinstance(source, PepolarPair):
        wf = init_pepolar_estimate_wf(
            in_metadata=source.in_metadata,
            reverse_metadata=source.reverse_metadata,
            output_dir=output_dir,
            source_file=source_file,
            sources=[raw_uri(source.in_file), raw_uri(source.reverse_file)],
            mem_gb=mem_gb,
        )
        wf.inputs.inputnode.in_file = source.in_file
        wf.inputs.inputnode.reverse_file = source.reverse_file
        return wf
    fmap = source.fmap
    wf = init_fieldmap_prepare_wf(
        kind=fmap.kind,
        metadata=fmap.metadata,
        frame=source.frame,
        output_dir=output_dir,
        source_file=source_file,
        sources=[raw_uri(fmap.file), raw_uri(fmap.magnitude_file), raw_uri(source.reference_file)],
        seed=seed,
        mem_gb=mem_gb,
    )
    wf.inputs.inputnode.fieldmap_file = fmap.file
    wf.inputs.inputnode.magnitude_file = fmap.magnitude_file
    wf.inputs.inputnode.reference_file = source.reference_file
    return wf
