"""Per-run ASL workflow: realignment to derivatives, for one BIDS ASL run."""

from __future__ import annotations

import math

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline import drift
from asl_pipeline import sdc as sdc_core
from asl_pipeline.derivatives import derivative_path, raw_uri
from asl_pipeline.interfaces.registration import ApplyTransformChain
from asl_pipeline.interfaces.reports import ComputeQC, ConfoundsTable
from asl_pipeline.templates import template_name
from asl_pipeline.workflows.cbf import CBF_OUTPUTS, init_cbf_wf, is_multi_pld
from asl_pipeline.workflows.outputs import SPACE_MAPS, init_asl_derivatives_wf
from asl_pipeline.workflows.pvc import PVC_OUTPUTS, init_pvc_wf
from asl_pipeline.workflows.sdc import init_sdc_estimate_wf
from asl_pipeline.workflows.spatial import (
    init_asl_hmc_wf,
    init_asl_reg_wf,
    init_nuisance_wf,
    init_resample_wf,
)

MNI_SPACE = "MNI152NLin2009aSym"


def init_asl_preproc_wf(
    *,
    run,
    output_dir: str,
    registration_backend: str = "embedded",
    spm_cmd: str | None = None,
    outlier_method: str = "paocsl",
    outlier_threshold: float | None = None,
    paocsl_spec_rules: bool = False,
    denoise: bool = False,
    dwan_weights: str | None = None,
    dwan_finetune: float = 0.0,
    bold_to_cbf: str | None = None,
    smoothing_fwhm: float = 0.0,
    nuisance_regression: bool = False,
    zigzag_method: str = "detect",
    reslice_mode: str = "volume",
    output_spaces: tuple[str, ...] = ("asl", MNI_SPACE),
    m0_scale: float = 1.0,
    m0_recovery: str = "tissue",
    quant_overrides: dict | None = None,
    multipld_t1: str = "gm-curve",
    multipld_att: str = "auto",
    drift_correction: str = "auto",
    quantification: str = "white-paper",
    pvc: str = "none",
    sdc: bool = True,
    omp_nthreads: int = 1,
    templates: tuple[str, ...] = (),
    seed: int = 1,
    name: str | None = None,
) -> pe.Workflow:
    """Process one ASL run, from the raw series to stored derivatives.

    .. workflow::
        :graph2use: orig
        :simple_form: yes

        from asl_pipeline.workflows.asl import init_asl_preproc_wf
        # ``run`` is an asl_pipeline.bids.ASLRun read from a dataset

    Parameters
    ----------
    run
        The validated :class:`asl_pipeline.bids.ASLRun`.
    output_dir
        Root of the derivatives dataset.
    templates
        Template spaces other than the bundled MNI152NLin2009aSym (TemplateFlow
        names, :mod:`asl_pipeline.templates`); every CBF map is resampled into
        each through ``inputnode.t1w_to_<name>`` onto ``inputnode.<name>_reference``.
    bold_to_cbf
        BOLD-to-ASL weights (``--bold-to-cbf``). Only when given AND the run
        has a BIDS BOLD run (:attr:`~asl_pipeline.bids.ASLRun.bold_file`): the
        BOLD run is motion-corrected, its mean registered to the ASL reference
        and resampled onto the ASL grid (:func:`init_bold_to_cbf_wf`), and the
        CBF the network predicts from it is stored as ``desc-boldpredicted_cbf``.
    sdc
        Susceptibility distortion correction when the run has a PEPOLAR M0
        pair, a phase-difference or a direct field map
        (:func:`asl_pipeline.sdc.field_source`; its sidecars are checked
        here, before anything runs); ``False`` is ``--ignore fieldmaps``.
    drift_correction
        ``auto``, ``trend`` or ``none``, resolved for the run by
        :func:`asl_pipeline.drift.resolve` (``auto``: the trend for single-PLD
        runs without background suppression).
    quant_overrides
        Quantification constants that replace the defaults, by
        :class:`~asl_pipeline.cbf.QuantParams` field (``--blood-t1`` and the
        like; :attr:`asl_pipeline.config.Config.quant_overrides`).
    Other parameters
        As the options of ``asl-pipeline`` (see :class:`asl_pipeline.config.Config`).

    Inputs
    ------
    t1w_preproc, t1w_brain, t1w_mask, gm_t1w, wm_t1w, csf_t1w, t1w_to_mni
        Outputs of the subject's anatomical workflow.
    gm_pv_t1w, wm_pv_t1w
        Its partial-volume fractions (read with ``pvc`` only).
    t1w_to_<name>, <name>_reference
        For each of ``templates``.

    Outputs
    -------
    final_cbf, mean_cbf

    The methods text of the run (its sub-workflows' ``__desc__``) is the
    workflow's ``methods`` attribute; the HTML report is assembled from the
    stored derivatives after the run (:mod:`asl_pipeline.subject_report`).
    """
    source = str(run.asl_file)
    stem = derivative_path(source, suffix="asl", extension="").name
    name = name or "asl_" + stem.replace("-", "_")
    workflow = pe.Workflow(name=name)
    workflow.run_stem = stem.removesuffix(
        "_asl"
    )  # the run's BIDS stem, which names its report sections
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=[
                "t1w_preproc",
                "t1w_brain",
                "t1w_mask",
                "gm_t1w",
                "wm_t1w",
                "csf_t1w",
                "t1w_to_mni",
                "gm_pv_t1w",
                "wm_pv_t1w",
            ]
            + [f for t in templates for f in (f"t1w_to_{t}", f"{t}_reference")]
        ),
        name="inputnode",
    )
    templates = tuple(template_name(t) for t in templates)
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["final_cbf", "mean_cbf"]), name="outputnode"
    )
    source_node = pe.Node(
        niu.IdentityInterface(fields=["asl_file", "aslcontext", "m0_file"]), name="bids_source"
    )
    source_node.inputs.asl_file = source
    source_node.inputs.aslcontext = str(run.aslcontext_file)
    has_m0_file = run.m0_type == "Separate" and run.m0_file is not None
    if has_m0_file:
        source_node.inputs.m0_file = str(run.m0_file)

    n_vol = run.n_volumes
    mem_gb = max(0.5, 4 * n_vol * 8 * math.prod(int(n) for n in run.shape[:3]) / 1e9)
    multi_pld = is_multi_pld(run.plds, run.volume_types)
    n_pairs = len(run.control_label_pairs)
    has_pairs = n_pairs > 0
    outlier = outlier_method if (has_pairs and not multi_pld) else "none"

    pair = sdc_core.field_source(run) if sdc else None
    hmc_wf = init_asl_hmc_wf(
        backend=registration_backend,
        spm_cmd=spm_cmd,
        volume_types=list(run.volume_types),
        has_m0_file=has_m0_file,
        zigzag_method=zigzag_method,
        reslice_mode=reslice_mode,
        sdc=_sdc_inputs(pair, has_m0_file),
        mem_gb=mem_gb,
        omp_nthreads=omp_nthreads,
    )
    sdc_wf = None
    if pair is not None:
        sdc_wf = init_sdc_estimate_wf(
            source=pair, output_dir=str(output_dir), source_file=source, seed=seed, mem_gb=mem_gb
        )
        workflow.connect(sdc_wf, "outputnode.fieldmap", hmc_wf, "inputnode.fieldmap")
    reg_wf = init_asl_reg_wf(
        backend=registration_backend,
        spm_cmd=spm_cmd,
        mem_gb=mem_gb,
        omp_nthreads=omp_nthreads,
        seed=seed,
    )
    processed = has_pairs and (nuisance_regression or smoothing_fwhm > 0)
    cbf_wf = init_cbf_wf(
        description=run.description,
        processed_series=processed,
        multi_pld=multi_pld,
        n_pairs=n_pairs,
        quantification=quantification,
        m0_scale=m0_scale,
        m0_recovery=m0_recovery,
        quant_overrides=quant_overrides,
        t1_tissue_source=multipld_t1,
        att_estimate=multipld_att,
        drift_correction=drift.resolve(
            drift_correction,
            multi_pld=multi_pld,
            background_suppression=run.description.efficiency.background_suppression,
        ),
        outlier_method=outlier,
        outlier_threshold=outlier_threshold,
        screen_repeats=outlier_method != "none",
        paocsl_spec_rules=paocsl_spec_rules,
        denoise=denoise and not multi_pld,
        dwan_weights=dwan_weights,
        dwan_finetune=dwan_finetune,
        seed=seed,
        has_m0_file=has_m0_file,
        mem_gb=mem_gb,
        omp_nthreads=omp_nthreads,
    )
    workflow.connect([
        (source_node, hmc_wf, [("asl_file", "inputnode.asl_file"),
                               ("aslcontext", "inputnode.aslcontext")]),
        (hmc_wf, reg_wf, [("outputnode.ref_image", "inputnode.ref_image")]),
        (inputnode, reg_wf, [("t1w_brain", "inputnode.t1w_brain"),
                             ("t1w_mask", "inputnode.t1w_mask"),
                             ("gm_t1w", "inputnode.gm_t1w"), ("wm_t1w", "inputnode.wm_t1w"),
                             ("csf_t1w", "inputnode.csf_t1w")]),
        (source_node, cbf_wf, [("aslcontext", "inputnode.aslcontext")]),
        (hmc_wf, cbf_wf, [("outputnode.asl_corrected", "inputnode.asl_m0_source"),
                          ("outputnode.asl_corrected", "inputnode.asl_unprocessed"),
                          ("outputnode.motion_params", "inputnode.motion")]),
        (reg_wf, cbf_wf, [("outputnode.asl_mask", "inputnode.mask"),
                          ("outputnode.gm", "inputnode.gm"), ("outputnode.wm", "inputnode.wm"),
                          ("outputnode.csf", "inputnode.csf")]),
        (cbf_wf, outputnode, [("outputnode.final_cbf", "final_cbf"),
                              ("outputnode.mean_cbf", "mean_cbf")]),
    ])  # fmt: skip
    if has_m0_file:
        workflow.connect([
            (source_node, hmc_wf, [("m0_file", "inputnode.m0_file")]),
            (hmc_wf, cbf_wf, [("outputnode.m0_corrected", "inputnode.m0_file")]),
        ])  # fmt: skip

    # nuisance regression and smoothing (options reproducing the source study)
    # act on the series that is quantified; the M0 and the outlier-cleaning
    # decisions always come from the unsmoothed, unregressed series
    if processed:
        nuisance_wf = init_nuisance_wf(
            volume_types=list(run.volume_types),
            regress=nuisance_regression,
            fwhm=smoothing_fwhm,
            mem_gb=mem_gb,
        )
        workflow.connect([
            (hmc_wf, nuisance_wf, [("outputnode.asl_corrected", "inputnode.asl_file"),
                                   ("outputnode.motion_params", "inputnode.motion")]),
            (reg_wf, nuisance_wf, [("outputnode.asl_mask", "inputnode.mask"),
                                   ("outputnode.csf", "inputnode.csf")]),
            (nuisance_wf, cbf_wf, [("outputnode.asl_file", "inputnode.asl_file")]),
        ])  # fmt: skip
    else:
        workflow.connect(hmc_wf, "outputnode.asl_corrected", cbf_wf, "inputnode.asl_file")

    # stored outputs
    stored = {
        "mean_cbf",
        "mean_cbf_json",
        "m0",
        "m0_json",
        "asl_mask",
        "gm",
        "wm",
        "csf",
        "confounds",
        "qc",
        "asl_to_t1w",
        "asl_preproc",
        "asl_ref",
        "aslcontext",
    }
    if multi_pld:
        stored |= {"att", "att_json", "att_failed"}
    else:
        stored |= {"cbf_ts", "cbf_ts_json"}
    if outlier != "none" and n_pairs >= 4:
        stored |= {"cleaned_cbf", "cleaned_cbf_json", "outlier_matrix", "volume_status"}
    if denoise and not multi_pld:
        stored |= {"denoised_cbf", "denoised_cbf_json"}
    if pvc != "none":
        stored |= set(PVC_OUTPUTS)
    if sdc_wf is not None:
        stored.add("asl_ref_distorted")
    mni = MNI_SPACE in output_spaces
    # every stored CBF map in every requested space, under its native desc
    maps = [m for m in SPACE_MAPS if m in stored]
    spaces = {"mni": mni, "t1w": "T1w" in output_spaces} | {f"tpl_{t}": True for t in templates}
    stored |= {f"{key}_{m}" for key, on in spaces.items() if on for m in maps}
    ds_wf = init_asl_derivatives_wf(
        output_dir=str(output_dir),
        source_file=source,
        stored=frozenset(stored),
        anat_source=str(run.t1w_file) if run.t1w_file else None,
        m0_source=str(run.m0_file) if has_m0_file else None,
        metadata=dict(run.metadata),
        outlier_method=outlier,
        anat_xfm_ext=".h5" if registration_backend == "embedded" else ".nii.gz",
        smoothing_fwhm=smoothing_fwhm if processed else 0.0,
        templates=templates,
    )
    cbf_fields = [f for f in CBF_OUTPUTS if f in stored]
    workflow.connect([
        (cbf_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in cbf_fields]),
        (reg_wf, ds_wf, [("outputnode.asl_mask", "inputnode.asl_mask"),
                         ("outputnode.gm", "inputnode.gm"), ("outputnode.wm", "inputnode.wm"),
                         ("outputnode.csf", "inputnode.csf"),
                         ("outputnode.asl_to_t1w", "inputnode.asl_to_t1w")]),
        (hmc_wf, ds_wf, [("outputnode.asl_corrected", "inputnode.asl_preproc"),
                         ("outputnode.ref_image", "inputnode.asl_ref")]),
        (source_node, ds_wf, [("aslcontext", "inputnode.aslcontext")]),
    ])  # fmt: skip
    if sdc_wf is not None:
        workflow.connect(hmc_wf, "outputnode.ref_distorted", ds_wf, "inputnode.asl_ref_distorted")

    if bold_to_cbf and run.bold_file is not None:
        bold_wf = init_bold_to_cbf_wf(
            bold_file=str(run.bold_file),
            weights=str(bold_to_cbf),
            output_dir=str(output_dir),
            source_file=source,
            seed=seed,
            omp_nthreads=omp_nthreads,
        )
        workflow.connect([
            (hmc_wf, bold_wf, [("outputnode.ref_image", "inputnode.asl_ref")]),
            (reg_wf, bold_wf, [("outputnode.asl_mask", "inputnode.asl_mask")]),
        ])  # fmt: skip

    # resampling to MNI (and T1w): one interpolation through the composed transforms
    if mni or "T1w" in output_spaces:
        for field in maps:
            resample = init_resample_wf(
                spaces=[s for s in ("T1w", MNI_SPACE) if s in output_spaces],
                backend=registration_backend,
                spm_cmd=spm_cmd,
                mem_gb=mem_gb,
                omp_nthreads=omp_nthreads,
                name=f"resample_{field.removesuffix('_cbf')}_wf",
            )
            workflow.connect([
                (cbf_wf, resample, [(f"outputnode.{field}", "inputnode.in_file")]),
                (reg_wf, resample, [("outputnode.asl_to_t1w", "inputnode.asl_to_t1w")]),
                (inputnode, resample, [("t1w_to_mni", "inputnode.t1w_to_mni"),
                                       ("t1w_preproc", "inputnode.t1w_reference")]),
            ])  # fmt: skip
            for key, out in (("mni", "mni_file"), ("t1w", "t1w_file")):
                if spaces[key]:
                    workflow.connect(
                        resample, f"outputnode.{out}", ds_wf, f"inputnode.{key}_{field}"
                    )

    # further templates (TemplateFlow): the same single interpolation
    for tpl in templates:
        for field in maps:
            chain = pe.Node(niu.Merge(2), name=f"chain_{tpl}_{field}", run_without_submitting=True)
            to_tpl = pe.Node(
                ApplyTransformChain(interpolation="linear", suffix=f"_space-{tpl}"),
                name=f"to_{tpl}_{field.removesuffix('_cbf')}",
                mem_gb=mem_gb,
                n_procs=omp_nthreads,
            )
            workflow.connect([
                (inputnode, chain, [(f"t1w_to_{tpl}", "in1")]),
                (reg_wf, chain, [("outputnode.asl_to_t1w", "in2")]),
                (chain, to_tpl, [("out", "transforms")]),
                (inputnode, to_tpl, [(f"{tpl}_reference", "reference")]),
                (cbf_wf, to_tpl, [(f"outputnode.{field}", "in_file")]),
                (to_tpl, ds_wf, [("out_file", f"inputnode.tpl_{tpl}_{field}")]),
            ])  # fmt: skip

    # confounds and QC
    confounds = pe.Node(ConfoundsTable(), name="confounds", mem_gb=mem_gb)
    # the QC describes the measured map (cleaned when cleaning ran); the plain
    # mean and the denoised map get their own, labelled columns
    qc_names = ["mean"] + (["denoised"] if denoise and not multi_pld else [])
    qc = pe.Node(ComputeQC(extra_names=qc_names), name="compute_qc", mem_gb=mem_gb)
    qc_maps = pe.Node(niu.Merge(len(qc_names)), name="qc_maps", run_without_submitting=True)
    workflow.connect([
        (hmc_wf, confounds, [("outputnode.asl_corrected", "asl_file"),
                             ("outputnode.confounds", "motion_confounds")]),
        (source_node, confounds, [("aslcontext", "aslcontext")]),
        (reg_wf, confounds, [("outputnode.asl_mask", "mask")]),
        (cbf_wf, qc, [("outputnode.measured_cbf", "cbf")]),
        (cbf_wf, qc_maps, [("outputnode.mean_cbf", "in1")]),
        (qc_maps, qc, [("out", "extra_maps")]),
        (reg_wf, qc, [("outputnode.gm", "gm"), ("outputnode.wm", "wm"),
                      ("outputnode.csf", "csf"), ("outputnode.asl_mask", "asl_mask"),
                      ("outputnode.t1w_mask_asl", "t1w_mask")]),
        (hmc_wf, qc, [("outputnode.ref_image", "ref_image")]),
        (confounds, qc, [("confounds", "confounds")]),
        (confounds, ds_wf, [("confounds", "inputnode.confounds")]),
        (qc, ds_wf, [("qc_file", "inputnode.qc")]),
    ])  # fmt: skip
    if "cleaned_cbf" in stored:
        workflow.connect([
            (cbf_wf, qc, [("outputnode.outlier_matrix", "outlier_matrix")]),
            (cbf_wf, confounds, [("outputnode.volume_status", "volume_status")]),
        ])  # fmt: skip
    if multi_pld:
        workflow.connect([
            (cbf_wf, qc, [("outputnode.att", "att"), ("outputnode.att_failed", "att_failed")]),
        ])  # fmt: skip
    if "denoised_cbf" in stored:
        workflow.connect([
            (cbf_wf, qc_maps, [("outputnode.denoised_cbf", "in2")]),
        ])  # fmt: skip
    if pvc != "none":  # partial-volume correction of the measured map (Asllani 2008)
        pvc_wf = init_pvc_wf(mem_gb=mem_gb)
        workflow.connect([
            (cbf_wf, pvc_wf, [("outputnode.measured_cbf", "inputnode.cbf")]),
            (reg_wf, pvc_wf, [("outputnode.asl_mask", "inputnode.mask"),
                              ("outputnode.asl_to_t1w", "inputnode.asl_to_t1w")]),
            (hmc_wf, pvc_wf, [("outputnode.ref_image", "inputnode.ref_image")]),
            (inputnode, pvc_wf, [("gm_pv_t1w", "inputnode.gm_pv_t1w"),
                                 ("wm_pv_t1w", "inputnode.wm_pv_t1w")]),
            (pvc_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in PVC_OUTPUTS]),
            (pvc_wf, qc, [("outputnode.pvc_gm_cbf", "pvc_gm_cbf"),
                          ("outputnode.pvc_wm_cbf", "pvc_wm_cbf")]),
        ])  # fmt: skip
    after = [workflow.get_node(n) for n in ("resample_mean_wf", "pvc_wf")]
    before = [workflow.get_node("nuisance_wf")]
    workflow.methods = _methods_text(
        *[w for w in [sdc_wf, hmc_wf, reg_wf] + before + [cbf_wf] + after if w is not None]
    )
    if templates:
        workflow.methods += (
            "\n\nThe CBF maps were also resampled into "
            + ", ".join(templates)
            + " (TemplateFlow templates read from the local TemplateFlow folder) through the "
            "T1w-to-template transform (affine then SyN, ANTs via antspyx), in one "
            "interpolation with the ASL-to-T1w transform."
        )
    return workflow


def _sdc_inputs(pair, has_m0_file: bool) -> dict | None:
    """Realignment inputs that apply the field of ``pair`` (None without a pair)."""
    if pair is None:
        return None
    inputs = {
        "pe_direction": pair.asl_pe.direction,
        "readout_time": pair.asl_pe.readout_time,
        "fieldmap_frame": pair.frame,
    }
    if has_m0_file and pair.m0_pe is not None:
        inputs.update(
            m0_pe_direction=pair.m0_pe.direction, m0_readout_time=pair.m0_pe.readout_time
        )
    return inputs


def _methods_text(*workflows) -> str:
    """Methods paragraph built from the ``__desc__`` of the sub-workflows."""
    seen, parts = set(), []
    for wf in workflows:
        for node in [wf] + [wf.get_node(n) for n in wf.list_node_names() if "." not in n]:
            desc = getattr(node, "__desc__", None)
            if desc and desc not in seen:
                seen.add(desc)
                parts.append(desc)
    return "\n\n".join(parts)


def init_bold_to_cbf_wf(
    *,
    bold_file: str,
    weights: str,
    output_dir: str,
    source_file: str,
    seed: int = 1,
    omp_nthreads: int = 1,
    name: str = "bold_to_cbf_wf",
) -> pe.Workflow:
    """CBF predicted from the subject's BIDS BOLD run (methods spec 6.4).

    The BOLD run is motion-corrected (rigid), its temporal mean registered
    (rigid, mutual information) to the ASL reference and resampled onto the
    ASL grid (:func:`asl_pipeline.bold.bold_to_asl`); a network trained by
    learning from noise (``benchmarks/bold2asl_runs.py``: the BOLD mean on the
    ASL grid as input, noisy single-segment mean CBF of the ASL run as
    targets) predicts CBF from it inside the ASL brain mask. Stored as
    ``desc-boldpredicted_cbf`` (a prediction, never the measured map).

    Inputs
    ------
    asl_ref, asl_mask
        ASL reference image and brain mask (ASL grid).

    Outputs
    -------
    bold_cbf
        The predicted CBF map (ASL grid).
    """
    from asl_pipeline.interfaces.bids import DerivativesDataSink
    from asl_pipeline.interfaces.bold import BOLDToASLSpace
    from asl_pipeline.interfaces.denoise import BOLDToCBF

    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        "The subject's BOLD run was realigned (rigid), its temporal mean registered to the "
        "ASL reference (rigid, mutual information) and resampled onto the ASL grid, and a "
        "network trained by learning from noise predicted a CBF map from it "
        "(desc-boldpredicted; a prediction, not a measurement)."
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["asl_ref", "asl_mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["bold_cbf"]), name="outputnode")
    to_asl = pe.Node(BOLDToASLSpace(bold_file=bold_file, seed=seed), name="bold_to_asl",
                     mem_gb=2.0)  # fmt: skip
    predict = pe.Node(BOLDToCBF(weights=weights, num_threads=omp_nthreads), name="predict",
                      n_procs=omp_nthreads, mem_gb=1.0)  # fmt: skip
    sink = pe.Node(
        DerivativesDataSink(
            base_directory=str(output_dir),
            source_file=source_file,
            suffix="cbf",
            desc="boldpredicted",
            extension=".nii.gz",
            meta_dict={"Units": "mL/100 g/min"},
            sources=[raw_uri(bold_file)],
            description="CBF predicted from the subject's BOLD run (methods spec 6.4).",
        ),
        name="ds_boldpredicted_cbf",
        run_without_submitting=True,
        mem_gb=0.1,
    )
    workflow.connect([
        (inputnode, to_asl, [("asl_ref", "reference")]),
        (to_asl, predict, [("out_file", "in_file")]),
        (inputnode, predict, [("asl_mask", "mask_file")]),
        (predict, sink, [("out_file", "in_file"), ("out_sidecar", "in_meta")]),
        (predict, outputnode, [("out_file", "bold_cbf")]),
    ])  # fmt: skip
    return workflow
