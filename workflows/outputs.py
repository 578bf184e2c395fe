"""Datasinks writing a run's results into the BIDS-derivatives tree.

Every stored file gets a JSON sidecar whose ``Sources`` are BIDS URIs: the
files of the input dataset it was made from (``bids:raw:...``) or the stored
derivatives it was computed from (``bids::...``, the chain A -> B -> C of the
BIDS specification). The names are known before the workflow runs, so the
URIs are built here from the same :func:`~asl_pipeline.derivatives.derivative_path`
the sinks use.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline.derivatives import derivative_path, raw_uri
from asl_pipeline.interfaces.bids import DerivativesDataSink

CBF_UNITS = {"Units": "mL/100 g/min"}

#: CBF maps resampled into every requested space, with the ``desc`` of their
#: native twin (inputnode fields ``mni_<map>`` and ``t1w_<map>``).
SPACE_MAPS = ("mean_cbf", "cleaned_cbf", "denoised_cbf")
#: Inputnode prefix of each output space other than the ASL one.
SPACE_FIELDS = {"T1w": "t1w"}

#: ``Description`` of each stored file (the sidecar's first line for a reader).
DESCRIPTIONS = {
    "asl_preproc": "ASL series realigned for head motion, on its native grid; its volumes "
    "are those of the raw series (aslcontext).",
    "asl_ref": "ASL reference: mean of the realigned control and label volumes, the image "
    "registered to the T1w.",
    "asl_ref_distorted": "ASL reference before susceptibility distortion correction: mean of "
    "the control and label volumes realigned for head motion only, on the same grid.",
    "m0": "M0 image used for quantification (as M0Type says), multiplied by M0Scale and "
    "divided by M0RecoveryFactor for incomplete recovery.",
    "cbf_ts": "CBF of every label/control pair.",
    "mean_cbf": "Mean CBF over all pairs, before outlier cleaning (multi-PLD: CBF fitted "
    "with the general kinetic model).",
    "att": "Arterial transit time fitted with the general kinetic model.",
    "att_failed": "Voxels whose kinetic-model fit failed (1): it did not converge, a "
    "parameter ended at a bound, or the ATT came out below the shortest delay, where the "
    "data do not determine it. CBF and ATT hold the best values found there.",
    "cleaned_cbf": "Mean CBF after outlier cleaning: the measured map.",
    "denoised_cbf": "Outlier-cleaned mean CBF denoised with DWAN (opt-in).",
    "pvc_gm_cbf": "Grey-matter CBF of the measured map after linear-regression partial-volume "
    "correction (Asllani et al. 2008; opt-in); 0 = not estimated.",
    "pvc_wm_cbf": "White-matter CBF of the measured map after linear-regression partial-volume "
    "correction (Asllani et al. 2008; opt-in); 0 = not estimated.",
    "asl_to_t1w": "Rigid transform from the ASL reference to the T1w (ITK).",
    "asl_mask": "Brain mask in ASL space (T1w brain mask where the ASL image has signal).",
    "gm": "Grey-matter fraction of each ASL voxel: the T1w probability averaged over the "
    "voxel's volume.",
    "wm": "White-matter fraction of each ASL voxel: the T1w probability averaged over the "
    "voxel's volume.",
    "csf": "CSF fraction of each ASL voxel: the T1w probability averaged over the voxel's volume.",
    "confounds": "Per volume: motion parameters, framewise displacement, RMSD, DVARS and "
    "the outlier cleaning's decisions.",
    "qc": "Quality-control figures of the run (one row; cbf_ columns describe the measured map).",
    "outlier_matrix": "Outlier matrix, slice x label/control pair (1 = removed).",
    "volume_status": "Status of each label/control pair after outlier cleaning.",
}


def init_asl_derivatives_wf(
    *,
    output_dir: str,
    source_file: str,
    stored: set[str] | frozenset[str],
    anat_source: str | None = None,
    m0_source: str | None = None,
    metadata: dict | None = None,
    outlier_method: str = "paocsl",
    mni_space: str = "MNI152NLin2009aSym",
    anat_xfm_ext: str = ".h5",
    smoothing_fwhm: float = 0.0,
    templates: tuple[str, ...] = (),
    name: str = "asl_derivatives_wf",
) -> pe.Workflow:
    """Store a run's outputs under BIDS-derivative names, each with a sidecar.

    Parameters
    ----------
    output_dir
        Root of the derivatives dataset.
    source_file
        The run's ``_asl.nii.gz`` (its entities name the outputs).
    stored
        The inputnode fields that will be connected (the run's outputs); a
        sink is made for each of them and no other.
    anat_source, m0_source
        The subject's T1w and the run's separate M0 scan (input dataset), for
        the ``Sources`` of the maps made from them.
    metadata
        The run's ASL sidecar (merged, as read): the preprocessed series keeps it.
    outlier_method
        Gives the ``desc`` of the cleaned map and outlier tables.
    mni_space
        Name of the template space of the ``mni_*`` fields.
    templates
        Further template spaces (TemplateFlow names, :mod:`asl_pipeline.templates`):
        inputnode fields ``tpl_<name>_<map>`` for each map of :data:`SPACE_MAPS`.
    anat_xfm_ext
        Extension of the stored T1w -> template transform (``.h5`` for the
        embedded backend, ``.nii.gz`` for SPM's deformation field).
    smoothing_fwhm
        FWHM (mm) of the smoothing applied to the series before quantification
        (0: none). Every CBF map then carries it in its ``desc``
        (``desc-meanSmooth3mm``) and its sidecar (``SmoothingFWHM``), so a
        smoothed map is never mistaken for a quantitative one.

    Inputs
    ------
    asl_preproc, asl_ref, asl_ref_distorted, aslcontext, cbf_ts, mean_cbf, att, cleaned_cbf,
    denoised_cbf, pvc_gm_cbf, pvc_wm_cbf, m0 (each map with its ``<field>_json``
    sidecar from the interface), att_failed, asl_mask, gm, wm, csf, confounds, qc,
    outlier_matrix, volume_status, asl_to_t1w, ``mni_<map>`` and ``t1w_<map>`` for each
    map of :data:`SPACE_MAPS`, report.
    """
    workflow = pe.Workflow(name=name)
    source_file = str(source_file)
    smooth = f"Smooth{smoothing_fwhm:g}mm".replace(".", "p") if smoothing_fwhm > 0 else ""
    cbf_meta = dict(CBF_UNITS, SmoothingFWHM=smoothing_fwhm) if smooth else CBF_UNITS
    method = outlier_method if outlier_method != "none" else "cleaned"

    def anat(suffix, ext=".nii.gz", **entities):
        if anat_source is None:
            return None
        rel = derivative_path(
            anat_source, suffix=suffix, extension=ext, datatype="anat", **entities
        )
        return f"bids::{rel.as_posix()}"

    #: field -> (suffix, entities, metadata, sources, extension); sources name
    #: other fields (stored derivatives) or are URIs already
    outputs = {
        "asl_preproc": (
            "asl",
            {"desc": "preproc"},
            dict(metadata or {}, MotionCorrected=True, SkullStripped=False),
            [raw_uri(source_file)],
            ".nii.gz",
        ),
        "asl_ref": ("aslref", {}, {}, ["asl_preproc"], ".nii.gz"),
        "asl_ref_distorted": ("aslref", {"desc": "hmc"}, {}, [raw_uri(source_file)], ".nii.gz"),
        "m0": (
            "m0scan",
            {"desc": "preproc"},
            {"SkullStripped": False},
            [raw_uri(m0_source or source_file)],
            ".nii.gz",
        ),
        "cbf_ts": (
            "cbf",
            {"desc": "timeseries" + smooth},
            cbf_meta,
            ["asl_preproc", "m0"],
            ".nii.gz",
        ),
        "mean_cbf": (
            "cbf",
            {"desc": "mean" + smooth},
            cbf_meta,
            ["cbf_ts"] if "cbf_ts" in stored else ["asl_preproc", "m0"],
            ".nii.gz",
        ),
        "att": ("att", {}, {"Units": "s"}, ["asl_preproc", "m0"], ".nii.gz"),
        "att_failed": ("mask", {"desc": "fitfailed"}, {}, ["asl_preproc", "m0"], ".nii.gz"),
        "asl_to_t1w": (
            "xfm",
            {"from_": "asl", "to": "T1w", "mode": "image"},
            {},
            ["asl_ref", anat("T1w", desc="preproc")],
            ".mat",
        ),
        "asl_mask": (
            "mask",
            {"desc": "brain"},
            {"Type": "Brain"},
            [anat("mask", desc="brain"), "asl_to_t1w", "asl_ref"],
            ".nii.gz",
        ),
        "confounds": (
            "timeseries",
            {"desc": "confounds"},
            {},
            ["asl_preproc", "asl_mask"],
            ".tsv",
        ),
    }
    for label in ("GM", "WM", "CSF"):
        outputs[label.lower()] = (
            "probseg",
            {"label": label},
            {},
            [anat("probseg", label=label), "asl_to_t1w"],
            ".nii.gz",
        )
    cleaning_inputs = ["cbf_ts", "asl_mask", "gm", "wm", "csf"]
    outputs["cleaned_cbf"] = (
        "cbf",
        {"desc": method + smooth},
        cbf_meta,
        cleaning_inputs,
        ".nii.gz",
    )
    outputs["outlier_matrix"] = ("outliers", {"desc": method}, {}, cleaning_inputs, ".tsv")
    outputs["volume_status"] = (
        "outliers",
        {"desc": f"{method}pairs"},
        {},
        cleaning_inputs,
        ".tsv",
    )
    best = "cleaned_cbf" if "cleaned_cbf" in stored else "mean_cbf"
    # everything DWANDenoise reads: the map, its pairs (only the kept ones), tissue and M0
    pairs = ["cbf_ts", "outlier_matrix"] if best == "cleaned_cbf" else ["cbf_ts"]
    outputs["denoised_cbf"] = (
        "cbf",
        {"desc": "denoised" + smooth},
        cbf_meta,
        [best, *pairs, "gm", "wm", "m0", "asl_mask"],
        ".nii.gz",
    )
    for tissue in ("GM", "WM"):  # partial-volume correction of the measured map
        outputs[f"pvc_{tissue.lower()}_cbf"] = (
            "cbf",
            {"desc": f"pvc{tissue}" + smooth},
            cbf_meta,
            [best, anat("probseg", label="GM"), anat("probseg", label="WM"), "asl_to_t1w",
             "asl_mask"],
            ".nii.gz",
        )  # fmt: skip
    outputs["qc"] = (  # cbf_ columns: the measured map; mean_/denoised_: the others
        "cbf",
        {"desc": "qualitycontrol"},
        {},
        [best, "mean_cbf", "denoised_cbf", "pvc_gm_cbf", "pvc_wm_cbf", "att", "att_failed",
         "gm", "wm", "csf", "asl_mask", "confounds"],
        ".tsv",
    )  # fmt: skip
    to_template = {
        space: anat("xfm", ext=anat_xfm_ext if space == mni_space else ".h5", from_="T1w",
                    to=space, mode="image")
        for space in (mni_space, *templates)
    }  # fmt: skip
    for space, prefix in _space_prefixes(mni_space, templates).items():
        for field in SPACE_MAPS:
            suffix, entities, meta, _, ext = outputs[field]
            via = ["asl_to_t1w"] + ([to_template[space]] if space in to_template else [])
            outputs[f"{prefix}_{field}"] = (
                suffix,
                dict(entities, space=space),
                meta,
                [field, *via],
                ext,
            )

    fields = list(outputs) + [f"{f}_json" for f in outputs] + ["aslcontext", "report"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")

    def uri(key):
        if key is None or key.startswith("bids:"):
            return key
        suffix, entities, _, _, ext = outputs[key]
        return f"bids::{derivative_path(source_file, suffix=suffix, extension=ext, **entities)}"

    def sink(node_name, field, **kwargs):
        node = pe.Node(
            DerivativesDataSink(base_directory=str(output_dir), source_file=source_file, **kwargs),
            name=node_name,
            run_without_submitting=True,
            mem_gb=0.1,
        )
        workflow.connect(inputnode, field, node, "in_file")
        if f"{field}_json" in stored:
            workflow.connect(inputnode, f"{field}_json", node, "in_meta")
        return node

    # the quantifying interfaces name the M0 they used (a work-directory file)
    file_keys = {"M0File": uri("m0")} if "m0" in stored else {}
    for field, (suffix, entities, meta, sources, ext) in outputs.items():
        if field not in stored:
            continue
        # a source that is not stored in this run (e.g. no separate M0) is left out
        uris = [uri(s) for s in sources if s is None or s.startswith("bids:") or s in stored]
        uris = list(dict.fromkeys(uris))
        sink(
            f"ds_{field}",
            field,
            suffix=suffix,
            extension=ext,
            meta_dict=meta,
            description=_description(field, mni_space, templates),
            sources=[u for u in uris if u],
            file_keys=file_keys,
            **_sink_entities(entities),
        )
    if "aslcontext" in stored:  # the raw aslcontext holds for the preprocessed series
        sink("ds_aslcontext", "aslcontext", suffix="aslcontext", extension=".tsv",
             write_sidecar=False)  # fmt: skip
    if "report" in stored:
        sink(
            "ds_report",
            "report",
            suffix="report",
            datatype="figures",
            extension=".html",
            write_sidecar=False,
        )
    return workflow


def _space_prefixes(mni_space: str, templates=()) -> dict[str, str]:
    """Output space -> inputnode prefix of its maps (``mni``, ``t1w``, ``tpl_<name>``)."""
    return {mni_space: "mni"} | SPACE_FIELDS | {t: f"tpl_{t}" for t in templates}


def _description(field: str, mni_space: str, templates=()) -> str:
    for space, prefix in _space_prefixes(mni_space, templates).items():
        native = field.removeprefix(prefix + "_")
        if native != field and native in SPACE_MAPS:
            return f"{DESCRIPTIONS[native]} Resampled into {space}."
    return DESCRIPTIONS[field]


def _sink_entities(entities: dict) -> dict:
    """:func:`derivative_path`'s entity arguments as DerivativesDataSink inputs."""
    rename = {"from_": "from_space", "to": "to_space"}
    return {rename.get(k, k): v for k, v in entities.items()}
