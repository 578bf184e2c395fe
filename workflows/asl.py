"""Per-run ASL workflow: realignment to derivatives, for one BIDS ASL run."""

from __future__ import annotations

import math

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline.derivatives import derivative_path
from asl_pipeline.interfaces.reports import ComputeQC, ConfoundsTable, SubjectReport
from asl_pipeline.workflows.cbf import CBF_OUTPUTS, init_cbf_wf, is_multi_pld
from asl_pipeline.workflows.outputs import SPACE_MAPS, init_asl_derivatives_wf
from asl_pipeline.workflows.pvc import PVC_OUTPUTS, init_pvc_wf
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
    smoothing_fwhm: float = 0.0,
    nuisance_regression: bool = False,
    zigzag_method: str = "interpolate",
    reslice_mode: str = "volume",
    output_spaces: tuple[str, ...] = ("asl", MNI_SPACE),
    m0_scale: float = 1.0,
    m0_recovery: str = "tissue",
    quantification: str = "white-paper",
    pvc: str = "none",
    omp_nthreads: int = 1,
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
    Other parameters
        As the options of ``asl-pipeline`` (see :class:`asl_pipeline.config.Config`).

    Inputs
    ------
    t1w_preproc, t1w_brain, t1w_mask, gm_t1w, wm_t1w, csf_t1w, t1w_to_mni
        Outputs of the subject's anatomical workflow.

    Outputs
    -------
    final_cbf, mean_cbf, report
    """
    source = str(run.asl_file)
    stem = derivative_path(source, suffix="asl", extension="").name
    name = name or "asl_" + stem.replace("-", "_")
    workflow = pe.Workflow(name=name)
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
            ]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["final_cbf", "mean_cbf", "report"]), name="outputnode"
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

    hmc_wf = init_asl_hmc_wf(
        backend=registration_backend,
        spm_cmd=spm_cmd,
        volume_types=list(run.volume_types),
        has_m0_file=has_m0_file,
        zigzag_method=zigzag_method,
        reslice_mode=reslice_mode,
        mem_gb=mem_gb,
        omp_nthreads=omp_nthreads,
    )
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
        outlier_method=outlier,
        outlier_threshold=outlier_threshold,
        paocsl_spec_rules=paocsl_spec_rules,
        denoise=denoise and not multi_pld,
        dwan_weights=dwan_weights,
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
        "report",
        "asl_preproc",
        "asl_ref",
        "aslcontext",
    }
    if multi_pld:
        stored |= {"att", "att_json"}
    else:
        stored |= {"cbf_ts", "cbf_ts_json"}
    if outlier != "none" and n_pairs >= 4:
        stored |= {"cleaned_cbf", "cleaned_cbf_json", "outlier_matrix", "volume_status"}
    if denoise and not multi_pld:
        stored |= {"denoised_cbf", "denoised_cbf_json"}
    if pvc != "none":
        stored |= set(PVC_OUTPUTS)
    mni = MNI_SPACE in output_spaces
    # every stored CBF map in every requested space, under its native desc
    maps = [m for m in SPACE_MAPS if m in stored]
    final = maps[-1]  # the end of the chain: denoised (opt-in), else cleaned, else mean
    spaces = {"mni": mni, "t1w": "T1w" in output_spaces}
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

    # confounds, QC and report
    confounds = pe.Node(ConfoundsTable(), name="confounds", mem_gb=mem_gb)
    # the QC describes the measured map (cleaned when cleaning ran); the plain
    # mean and the denoised map get their own, labelled columns
    qc_names = ["mean"] + (["denoised"] if denoise and not multi_pld else [])
    qc = pe.Node(ComputeQC(extra_names=qc_names), name="compute_qc", mem_gb=mem_gb)
    qc_maps = pe.Node(niu.Merge(len(qc_names)), name="qc_maps", run_without_submitting=True)
    report = pe.Node(
        SubjectReport(
            subject=run.subject,
            run_name=stem,
            warnings=list(run.warnings),
            final_label=(
                "DWAN-denoised"
                if denoise and not multi_pld
                else ("outlier-cleaned" if "cleaned_cbf" in stored else "mean")
            ),
            methods=_methods_text(workflow, cbf_wf, hmc_wf, reg_wf),
        ),
        name="report",
        mem_gb=mem_gb,
    )
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
        (cbf_wf, report, [("outputnode.mean_cbf", "mean_cbf")]),
        (hmc_wf, report, [("outputnode.ref_image", "ref_image"),
                          ("outputnode.asl_corrected", "asl_series")]),
        (reg_wf, report, [("outputnode.t1w_mask_asl", "t1w_mask_asl"),
                          ("outputnode.asl_mask", "asl_mask")]),
        (confounds, report, [("confounds", "confounds")]),
        (qc, report, [("qc_json", "qc_json")]),
        (report, ds_wf, [("out_report", "inputnode.report")]),
        (report, outputnode, [("out_report", "report")]),
    ])  # fmt: skip
    if "cleaned_cbf" in stored:
        workflow.connect([
            (cbf_wf, qc, [("outputnode.outlier_matrix", "outlier_matrix")]),
            (cbf_wf, confounds, [("outputnode.volume_status", "volume_status")]),
            (cbf_wf, report, [("outputnode.cleaned_cbf", "cleaned_cbf"),
                              ("outputnode.outlier_matrix", "outlier_matrix")]),
        ])  # fmt: skip
    if "denoised_cbf" in stored:
        workflow.connect([
            (cbf_wf, report, [("outputnode.denoised_cbf", "denoised_cbf")]),
            (cbf_wf, qc_maps, [("outputnode.denoised_cbf", "in2")]),
        ])  # fmt: skip
    if mni:
        resample_final = workflow.get_node(f"resample_{final.removesuffix('_cbf')}_wf")
        workflow.connect(resample_final, "outputnode.mni_file", report, "mni_cbf")
    if pvc != "none":  # partial-volume correction of the measured map (Asllani 2008)
        pvc_wf = init_pvc_wf(mem_gb=mem_gb)
        workflow.connect([
            (cbf_wf, pvc_wf, [("outputnode.measured_cbf", "inputnode.cbf")]),
            (reg_wf, pvc_wf, [("outputnode.asl_mask", "inputnode.mask"),
                              ("outputnode.asl_to_t1w", "inputnode.asl_to_t1w")]),
            (hmc_wf, pvc_wf, [("outputnode.ref_image", "inputnode.ref_image")]),
            (inputnode, pvc_wf, [("gm_t1w", "inputnode.gm_t1w"), ("wm_t1w", "inputnode.wm_t1w")]),
            (pvc_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in PVC_OUTPUTS]),
            (pvc_wf, qc, [("outputnode.pvc_gm_cbf", "pvc_gm_cbf"),
                          ("outputnode.pvc_wm_cbf", "pvc_wm_cbf")]),
        ])  # fmt: skip
        report.inputs.methods = "\n\n".join(filter(None, [report.inputs.methods,
                                                            pvc_wf.__desc__]))  # fmt: skip
    return workflow


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
