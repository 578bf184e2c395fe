"""Top-level and single-subject workflows of ``asl-pipeline``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline.templates import BUNDLED, NATIVE_SPACES, template_name
from asl_pipeline.workflows.asl import MNI_SPACE, init_asl_preproc_wf
from asl_pipeline.workflows.spatial import init_anat_wf


def init_asl_pipeline_wf(config, runs) -> pe.Workflow:
    """The whole run: one single-subject workflow per participant.

    This is the only workflow that reads the :class:`~asl_pipeline.config.Config`;
    everything below takes plain keyword arguments.

    Parameters
    ----------
    config
        The run configuration.
    runs
        Validated :class:`~asl_pipeline.bids.ASLRun` objects (all subjects).
    """
    workflow = pe.Workflow(name="asl_pipeline_wf")
    workflow.base_dir = str(config.work_dir)
    by_subject = defaultdict(list)
    for run in runs:
        by_subject[run.subject].append(run)
    for subject in sorted(by_subject):
        workflow.add_nodes(
            [
                init_single_subject_wf(
                    subject=subject,
                    runs=by_subject[subject],
                    output_dir=str(config.output_dir),
                    registration_backend=config.registration_backend,
                    spm_cmd=config.spm_cmd,
                    outlier_method=config.outlier_method,
                    outlier_threshold=config.effective_outlier_threshold,
                    paocsl_spec_rules=config.paocsl_spec_rules,
                    denoise=config.denoise,
                    dwan_weights=str(config.dwan_weights) if config.dwan_weights else None,
                    dwan_finetune=config.dwan_finetune,
                    bold_to_cbf=str(config.bold_to_cbf) if config.bold_to_cbf else None,
                    smoothing_fwhm=config.smoothing_fwhm,
                    nuisance_regression=config.nuisance_regression,
                    zigzag_method=config.zigzag_method,
                    reslice_mode=config.reslice_mode,
                    output_spaces=tuple(config.output_spaces),
                    m0_scale=config.m0_scale,
                    m0_recovery=config.m0_recovery,
                    quant_overrides=config.quant_overrides,
                    multipld_t1=config.multipld_t1,
                    multipld_att=config.multipld_att,
                    drift_correction=config.drift_correction,
                    quantification=config.quantification,
                    pvc=config.pvc,
                    sdc=config.sdc,
                    omp_nthreads=config.omp_nthreads,
                    seed=int(config.seed) or 1,  # 0 (the default) uses 1
                )
            ]
        )
    return workflow


def init_single_subject_wf(
    *,
    subject: str,
    runs: list,
    output_dir: str,
    registration_backend: str = "embedded",
    spm_cmd: str | None = None,
    omp_nthreads: int = 1,
    output_spaces: tuple[str, ...] = ("asl", MNI_SPACE),
    seed: int = 1,
    name: str | None = None,
    **asl_options,
) -> pe.Workflow:
    """Anatomical processing once, then every ASL run of one subject.

    .. workflow::
        :graph2use: orig
        :simple_form: yes

        from asl_pipeline.workflows.base import init_single_subject_wf
        # runs: the subject's asl_pipeline.bids.ASLRun objects

    Parameters
    ----------
    subject
        Participant label (without ``sub-``).
    runs
        The subject's validated ASL runs; they share the first run's T1w.
    output_dir
        Root of the derivatives dataset.
    seed
        Random seed of the registrations (an input of their nodes).
    asl_options
        Passed on to :func:`~asl_pipeline.workflows.asl.init_asl_preproc_wf`.
    """
    workflow = pe.Workflow(name=name or f"sub_{subject}_wf")
    t1w_files = {str(r.t1w_file) for r in runs if r.t1w_file is not None}
    t1w = sorted(t1w_files)[0]
    anat_source = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="anat_source")
    anat_source.inputs.t1w = t1w
    anat_wf = init_anat_wf(
        backend=registration_backend,
        spm_cmd=spm_cmd,
        omp_nthreads=omp_nthreads,
        output_dir=output_dir,
        source_file=t1w,
        seed=seed,
    )
    workflow.connect(anat_source, "t1w", anat_wf, "inputnode.t1w")
    fields = [
        "t1w_preproc", "t1w_brain", "t1w_mask", "gm_t1w", "wm_t1w", "csf_t1w", "t1w_to_mni",
        "gm_pv_t1w", "wm_pv_t1w",
    ]  # fmt: skip
    templates = [
        s for s in output_spaces if s not in NATIVE_SPACES and template_name(s) != BUNDLED
    ]
    to_templates = [
        _template_node(space, t1w, output_dir, omp_nthreads, workflow, anat_wf)
        for space in templates
    ]
    methods = []
    for run in runs:
        asl_wf = init_asl_preproc_wf(
            run=run,
            output_dir=output_dir,
            registration_backend=registration_backend,
            spm_cmd=spm_cmd,
            omp_nthreads=omp_nthreads,
            output_spaces=output_spaces,
            templates=tuple(templates),
            seed=seed,
            **asl_options,
        )
        for f in fields:
            workflow.connect(anat_wf, f"outputnode.{f}", asl_wf, f"inputnode.{f}")
        for space, node in zip(templates, to_templates, strict=True):
            name = template_name(space)
            workflow.connect([
                (node, asl_wf, [("t1w_to_template", f"inputnode.t1w_to_{name}"),
                                ("reference", f"inputnode.{name}_reference")]),
            ])  # fmt: skip
        methods.append((asl_wf.run_stem, asl_wf.methods))
    workflow.__desc__ = (
        f"Results of sub-{subject} were produced by asl_pipeline from "
        f"{len(runs)} ASL run(s) and the T1w image {Path(t1w).name}."
    )
    #: methods text: the subject's paragraphs, then each run's (see
    #: asl_pipeline.cli.workflow.methods_texts)
    workflow.methods = {"subject": [workflow.__desc__, anat_wf.__desc__], "runs": methods}
    return workflow


def _template_node(space, t1w, output_dir, omp_nthreads, workflow, anat_wf):
    """Registration of the T1w to a TemplateFlow template, and its stored transform."""
    from asl_pipeline.derivatives import derivative_path
    from asl_pipeline.interfaces.bids import DerivativesDataSink
    from asl_pipeline.interfaces.registration import T1wToTemplate

    name = template_name(space)
    node = pe.Node(
        T1wToTemplate(template=space, n_procs=omp_nthreads),
        name=f"t1w_to_{name}",
        mem_gb=4.0,
        n_procs=omp_nthreads,
    )
    preproc = derivative_path(t1w, suffix="T1w", datatype="anat", desc="preproc")
    sink = pe.Node(
        DerivativesDataSink(
            base_directory=str(output_dir),
            source_file=str(t1w),
            datatype="anat",
            suffix="xfm",
            extension=".h5",
            from_space="T1w",
            to_space=name,
            mode="image",
            meta_dict={"Description": f"Transform from the T1w to {name} (affine + SyN)."},
            sources=[f"bids::{preproc}"],
        ),
        name=f"ds_t1w_to_{name}",
        run_without_submitting=True,
        mem_gb=0.1,
    )
    workflow.connect([
        (anat_wf, node, [("outputnode.t1w_preproc", "t1w_file")]),
        (node, sink, [("t1w_to_template", "in_file")]),
    ])  # fmt: skip
    return node
