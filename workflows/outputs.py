"""Datasinks writing a run's results into the BIDS-derivatives tree."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline.interfaces.bids import DerivativesDataSink

CBF_UNITS = {"Units": "mL/100 g/min"}

#: (inputnode field, suffix, entities, extra metadata, sidecar field or None)
_PERF_OUTPUTS = (
    ("cbf_ts", "cbf", {"desc": "timeseries"}, CBF_UNITS, "cbf_ts_json"),
    ("mean_cbf", "cbf", {"desc": "mean"}, CBF_UNITS, "mean_cbf_json"),
    ("att", "att", {}, {"Units": "s"}, "att_json"),
    ("denoised_cbf", "cbf", {"desc": "denoised"}, CBF_UNITS, "denoised_cbf_json"),
    ("pvc_gm_cbf", "cbf", {"desc": "pvcGM"}, CBF_UNITS, "pvc_gm_cbf_json"),
    ("pvc_wm_cbf", "cbf", {"desc": "pvcWM"}, CBF_UNITS, "pvc_wm_cbf_json"),
    ("m0", "m0scan", {"desc": "preproc"}, {"SkullStripped": False}, "m0_json"),
    ("asl_mask", "mask", {"desc": "brain"}, {"Type": "Brain"}, None),
    ("gm", "probseg", {"label": "GM"}, {}, None),
    ("wm", "probseg", {"label": "WM"}, {}, None),
    ("csf", "probseg", {"label": "CSF"}, {}, None),
    ("confounds", "timeseries", {"desc": "confounds"}, {}, None),
    ("qc", "cbf", {"desc": "qualitycontrol"}, {}, None),
)


def init_asl_derivatives_wf(
    *,
    output_dir: str,
    source_file: str,
    stored: set[str] | frozenset[str],
    outlier_method: str = "paocsl",
    mni_space: str = "MNI152NLin2009aSym",
    smoothing_fwhm: float = 0.0,
    name: str = "asl_derivatives_wf",
) -> pe.Workflow:
    """Store a run's outputs under BIDS-derivative names.

    Parameters
    ----------
    output_dir
        Root of the derivatives dataset.
    source_file
        The run's ``_asl.nii.gz`` (its entities name the outputs).
    stored
        The inputnode fields that will be connected (the run's outputs); a
        sink is made for each of them and no other.
    outlier_method
        Gives the ``desc`` of the cleaned map and outlier tables.
    mni_space
        Name of the template space of the ``mni_*`` fields.
    smoothing_fwhm
        FWHM (mm) of the smoothing applied to the series before quantification
        (0: none). Every CBF map then carries it in its ``desc``
        (``desc-meanSmooth3mm``) and its sidecar (``SmoothingFWHM``), so a
        smoothed map is never mistaken for a quantitative one.

    Inputs
    ------
    One field per output (see ``_PERF_OUTPUTS``) plus ``cleaned_cbf``,
    ``outlier_matrix``, ``volume_status``, ``asl_to_t1w``, ``mni_cbf``,
    ``mni_mean_cbf``, ``t1w_cbf``, ``report`` and ``sources``.
    """
    workflow = pe.Workflow(name=name)
    fields = [o[0] for o in _PERF_OUTPUTS] + [o[4] for o in _PERF_OUTPUTS if o[4]]
    fields += [
        "cleaned_cbf",
        "cleaned_cbf_json",
        "outlier_matrix",
        "volume_status",
        "asl_to_t1w",
        "mni_cbf",
        "mni_mean_cbf",
        "t1w_cbf",
        "report",
        "sources",
    ]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    inputnode.inputs.sources = [source_file]

    def sink(name_, field, suffix, meta=None, sidecar=None, datatype="perf", **entities):
        if field not in stored:
            return None
        node = pe.Node(
            DerivativesDataSink(
                base_directory=str(output_dir),
                source_file=str(source_file),
                suffix=suffix,
                datatype=datatype,
                meta_dict=meta or {},
                **entities,
            ),
            name=name_,
            run_without_submitting=True,
            mem_gb=0.1,
        )
        workflow.connect(inputnode, field, node, "in_file")
        workflow.connect(inputnode, "sources", node, "sources")
        if sidecar and sidecar in stored:
            workflow.connect(inputnode, sidecar, node, "in_meta")
        return node

    smooth = f"Smooth{smoothing_fwhm:g}mm".replace(".", "p") if smoothing_fwhm > 0 else ""
    cbf_units = dict(CBF_UNITS, SmoothingFWHM=smoothing_fwhm) if smooth else CBF_UNITS

    def cbf_desc(desc):
        return desc + smooth

    for field, suffix, entities, meta, sidecar in _PERF_OUTPUTS:
        if suffix == "cbf" and meta is CBF_UNITS:
            entities, meta = dict(entities, desc=cbf_desc(entities["desc"])), cbf_units
        sink(f"ds_{field}", field, suffix, meta, sidecar, **entities)
    if outlier_method != "none":
        sink(
            "ds_cleaned_cbf",
            "cleaned_cbf",
            "cbf",
            cbf_units,
            "cleaned_cbf_json",
            desc=cbf_desc(outlier_method),
        )
        sink("ds_outlier_matrix", "outlier_matrix", "outliers", desc=outlier_method)
        sink("ds_volume_status", "volume_status", "outliers", desc=f"{outlier_method}pairs")
    sink("ds_asl_to_t1w", "asl_to_t1w", "xfm", from_space="asl", to_space="T1w", mode="image")
    space_meta = dict(cbf_units, SpatialReference=mni_space)
    sink("ds_mni_cbf", "mni_cbf", "cbf", space_meta, space=mni_space, desc=cbf_desc("final"))
    sink(
        "ds_mni_mean_cbf",
        "mni_mean_cbf",
        "cbf",
        space_meta,
        space=mni_space,
        desc=cbf_desc("mean"),
    )
    sink("ds_t1w_cbf", "t1w_cbf", "cbf", cbf_units, space="T1w", desc=cbf_desc("final"))
    sink("ds_report", "report", "report", datatype="figures", extension=".html")
    return workflow
