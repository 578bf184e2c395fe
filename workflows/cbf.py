"""CBF sub-workflow: M0, quantification, outlier cleaning, denoising."""

from __future__ import annotations

import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline.boilerplate import quantification_text
from asl_pipeline.interfaces.cbf import ComputeCBF, ComputeM0, ComputeMultiPLDCBF
from asl_pipeline.interfaces.denoise import DWANDenoise
from asl_pipeline.interfaces.outliers import CleanCBF
from asl_pipeline.multipld import SMOOTHED_ATT_FWHM, att_estimate_for
from asl_pipeline.rundesc import RunDescription

#: Outputs of :func:`init_cbf_wf` stored as derivatives (with ``final_cbf``,
#: the last map of the chain, they make its outputnode).
CBF_OUTPUTS = (
    "m0", "m0_json", "cbf_ts", "cbf_ts_json", "mean_cbf", "mean_cbf_json", "att", "att_json",
    "att_failed", "cleaned_cbf", "cleaned_cbf_json", "outlier_matrix", "volume_status",
    "denoised_cbf", "denoised_cbf_json",
)  # fmt: skip

#: Fewest label/control pairs for which outlier cleaning is meaningful.
MIN_PAIRS_FOR_CLEANING = 4


def is_multi_pld(plds, volume_types) -> bool:
    """True when the perfusion-weighted volumes were acquired at several PLDs/TIs."""
    plds = np.asarray(plds, dtype=float)
    sel = [i for i, t in enumerate(volume_types) if t in ("control", "label", "deltam")]
    return len(np.unique(np.round(plds[sel], 6))) > 1 if sel else False


def init_cbf_wf(
    *,
    description: RunDescription,
    multi_pld: bool = False,
    processed_series: bool = False,
    t1_after_arrival: str = "tissue",
    t1_tissue_source: str = "gm-curve",
    att_estimate: str = "auto",
    drift_correction: str = "none",
    n_pairs: int,
    quantification: str = "white-paper",
    m0_scale: float = 1.0,
    m0_recovery: str = "tissue",
    quant_overrides: dict | None = None,
    outlier_method: str = "paocsl",
    outlier_threshold: float | None = None,
    screen_repeats: bool = True,
    paocsl_spec_rules: bool = False,
    denoise: bool = True,
    dwan_weights: str | None = None,
    dwan_finetune: float = 0.0,
    seed: int = 0,
    has_m0_file: bool = True,
    mem_gb: float = 1.0,
    omp_nthreads: int = 1,
    name: str = "cbf_wf",
) -> pe.Workflow:
    """Quantify CBF, clean outliers and denoise.

    .. workflow::
        :graph2use: orig
        :simple_form: yes

        from asl_pipeline.workflows.cbf import init_cbf_wf
        from asl_pipeline.rundesc import describe_metadata
        meta = {"ArterialSpinLabelingType": "PCASL", "PostLabelingDelay": 1.8,
                "LabelingDuration": 1.8, "M0Type": "Separate", "BackgroundSuppression": False}
        wf = init_cbf_wf(description=describe_metadata(meta, ["control", "label"] * 40),
                         n_pairs=40)

    Parameters
    ----------
    description
        The run's :class:`~asl_pipeline.rundesc.RunDescription`, built by the
        BIDS reader (:attr:`asl_pipeline.bids.ASLRun.description`); the nodes
        receive it as a dictionary and parse no sidecar again.
    t1_after_arrival
        Multi-PLD fit: the T1 governing the label after it reaches tissue,
        ``"tissue"`` (apparent tissue T1, Buxton et al. 1998) or ``"blood"``
        (the white-paper simplification).
    t1_tissue_source
        Multi-PLD fit with the apparent tissue T1: ``"gm-curve"``, the tissue
        T1 fitted to the mean curve of the GM voxels
        (:func:`asl_pipeline.multipld.gm_curve_t1`), or ``"fixed"``, by field
        strength (1.4 s at 3 T).
    att_estimate
        Multi-PLD fit: ``"voxel"`` (each voxel's own ATT), ``"smoothed"`` (the
        ATT of the curves smoothed inside the brain,
        :func:`asl_pipeline.multipld.fit_smoothed_att`) or ``"auto"``
        (smoothed, for every labeling).
    drift_correction
        ``"trend"``: each control and label volume is divided by a smooth
        trend of the brain-wide gain before subtraction
        (:mod:`asl_pipeline.drift`); ``"none"`` leaves the series as is.
    processed_series
        ``inputnode.asl_file`` was regressed and/or smoothed (the source
        study's options): the outlier cleaning then decides on the CBF series
        of ``inputnode.asl_unprocessed`` and its outlier matrix is applied to
        the processed series, so that no regression or smoothing reaches the
        cleaning's decisions.
    multi_pld
        Fit the general kinetic model (CBF and ATT) instead of the single-PLD
        equation; outlier cleaning and denoising are then skipped (both are
        defined on single-PLD pair series).
    n_pairs
        Number of label/control pairs; cleaning needs at least
        :data:`MIN_PAIRS_FOR_CLEANING`.
    quantification
        ``"white-paper"`` or ``"asltbx"`` (each pair's control image as M0).
    m0_recovery
        Correction of the M0 for incomplete recovery (when its TR is known):
        ``"tissue"`` (each voxel's T1 from its GM/WM/CSF fractions, at any TR)
        or ``"single"`` (one tissue T1, none from 5 s on: the methods spec's).
    quant_overrides
        Constants that replace the defaults (and the sidecar's efficiency), by
        :class:`~asl_pipeline.cbf.QuantParams` field: ``t1b``, ``lam``,
        ``labeling_efficiency`` (``asl-pipeline --blood-t1`` ...). Every
        quantification node and the methods text use them.
    outlier_method, outlier_threshold
        ``paocsl``, ``score``, ``aoc`` or ``none``; threshold None = the
        method's default.
    screen_repeats
        Multi-PLD: drop the slices of repeats that disagree with the other
        repeats of their delay before the fit
        (:func:`asl_pipeline.outliers.screen_repeats`; the pipeline sets it
        unless ``--outlier-method none``).
    paocsl_spec_rules
        Run PAOCSL with the methods spec's literal rules (greedy removal while
        the cost drops at all, consolidation of single-slice flags, motion
        pre-rejection). By default the noise-aware stop rule is used and the
        motion pre-screen is off: on simulated data with known outliers the
        literal rules flag clean pairs in most slices and release true
        single-slice corruptions (see benchmarks/RESULTS.md).
    denoise, dwan_weights
        Apply DWAN to the cleaned mean CBF, with the shipped or given weights.
    dwan_finetune, seed
        Seconds of subject-level fine-tuning on the run's own pairs before
        denoising (0: none), and its random seed.
    has_m0_file
        Whether a separate M0 image is connected to ``inputnode.m0_file``.

    Inputs
    ------
    asl_file
        Motion-corrected 4D ASL series to quantify (regressed and/or smoothed
        when ``processed_series``).
    asl_unprocessed
        The motion-corrected series before any regression or smoothing (used
        only when ``processed_series``).
    asl_m0_source
        Motion-corrected series used for the M0 (no smoothing or regression).
    aslcontext, m0_file, mask, gm, wm, csf, motion
        Volume types (for the outlier cleaning's motion rows), realigned M0,
        ASL brain mask, tissue maps in ASL space, motion parameters TSV.

    Outputs
    -------
    m0, cbf_ts, mean_cbf, att, cleaned_cbf, outlier_matrix, volume_status,
    denoised_cbf, the JSON sidecars of the maps, measured_cbf (the cleaned map,
    or the mean when no cleaning ran) and final_cbf (the denoised map when
    denoising ran, else measured_cbf).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=[
                "asl_file",
                "asl_unprocessed",
                "asl_m0_source",
                "aslcontext",
                "m0_file",
                "mask",
                "gm",
                "wm",
                "csf",
                "motion",
            ]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=list(CBF_OUTPUTS) + ["measured_cbf", "final_cbf"]),
        name="outputnode",
    )
    run = description.to_dict()
    overrides = dict(quant_overrides or {})
    # the run's constants (labeling, delays, readout, efficiency, T1s, M0), stated
    # with the values the quantification nodes read from the same description
    constants = quantification_text(
        description,
        multi_pld=multi_pld,
        quantification=quantification,
        m0_scale=m0_scale,
        m0_recovery=m0_recovery,
        t1_after_arrival=t1_after_arrival,
        t1_tissue_source=t1_tissue_source,
        overrides=overrides,
    )
    if drift_correction == "trend":
        constants += (
            " Before subtraction, each control and label image was divided by a quadratic "
            "trend of the brain-wide signal gain, fitted to the means of the pairs "
            "(scanner drift would otherwise add the same offset to every difference), "
            + (
                "scaled to the gain of the M0 volumes of the series."
                if description.m0.m0_volumes  # M0Type Included
                else "scaled to the run's mean gain."
            )
        )
    compute_m0 = pe.Node(
        ComputeM0(run_description=run, m0_scale=m0_scale, recovery=m0_recovery),
        name="compute_m0",
        mem_gb=mem_gb,
    )
    workflow.connect([
        (inputnode, compute_m0, [("asl_m0_source", "asl_file"), ("mask", "mask"),
                                 ("gm", "gm"), ("wm", "wm"), ("csf", "csf")]),
        (compute_m0, outputnode, [("m0_file", "m0"), ("m0_json", "m0_json")]),
    ])  # fmt: skip
    if has_m0_file:
        workflow.connect(inputnode, "m0_file", compute_m0, "m0_file")

    if multi_pld:
        fit = pe.Node(
            ComputeMultiPLDCBF(
                run_description=run,
                quant_overrides=overrides,
                t1_after_arrival=t1_after_arrival,
                t1_tissue_source=t1_tissue_source,
                att_estimate=att_estimate,
                screen_repeats=screen_repeats,
                drift_correction=drift_correction,
            ),
            name="fit_multi_pld",
            mem_gb=2 * mem_gb,
        )
        labeling_type = description.labeling.labeling_type
        delays = "inversion times" if labeling_type == "PASL" else "post-labeling delays"
        estimate = att_estimate_for(att_estimate)
        workflow.__desc__ = (
            (
                "CBF and arterial transit time (ATT) were estimated voxel by voxel by fitting "
                "the general kinetic model (Buxton et al. 1998) to the control-label "
                f"differences at all {delays}."
                if estimate == "voxel"
                else "Arterial transit time (ATT) was estimated by fitting the general "
                "kinetic model (Buxton et al. 1998) to the control-label differences at all "
                f"{delays}, smoothed inside the brain (Gaussian, FWHM "
                f"{SMOOTHED_ATT_FWHM:g} voxels); each voxel's CBF was then fitted to its own "
                "unsmoothed differences at that ATT."
            )
            + " The label decayed with the blood T1 during transit and "
            + (
                "with the apparent tissue T1 (1/T1app = 1/T1tissue + f/lambda) after arrival."
                if t1_after_arrival == "tissue"
                else "after arrival (the white-paper simplification)."
            )
            + (
                " Before the fit, the slices of repeats that disagreed with the other "
                "repeats of their delay (root-mean-square deviation from their voxel-wise "
                "median, robust z-score over the delay's repeats and slices above the "
                "family-wise threshold) were left out of that delay's mean."
                if screen_repeats
                else ""
            )
            + " "
            + constants
        )
        workflow.connect([
            (inputnode, fit, [("asl_file", "asl_file"), ("mask", "mask"), ("gm", "gm")]),
            (compute_m0, fit, [("m0_file", "m0_file")]),
            (fit, outputnode, [("cbf", "mean_cbf"), ("cbf_json", "mean_cbf_json"),
                               ("att", "att"), ("att_json", "att_json"),
                               ("failed_mask", "att_failed"),
                               ("cbf", "measured_cbf"), ("cbf", "final_cbf")]),
        ])  # fmt: skip
        return workflow

    quant = "white-paper" if quantification == "white-paper" else "pairwise-control"
    compute_cbf = pe.Node(
        ComputeCBF(
            run_description=run,
            quant_overrides=overrides,
            quantification=quant,
            m0_scale=m0_scale,
            drift_correction=drift_correction,
        ),
        name="compute_cbf",
        mem_gb=mem_gb,
    )
    workflow.connect([
        (inputnode, compute_cbf, [("asl_file", "asl_file"), ("mask", "mask")]),
        (compute_m0, compute_cbf, [("m0_file", "m0_file")]),
        (compute_cbf, outputnode, [("cbf_ts", "cbf_ts"), ("cbf_ts_json", "cbf_ts_json"),
                                   ("mean_cbf", "mean_cbf"),
                                   ("mean_cbf_json", "mean_cbf_json")]),
    ])  # fmt: skip
    desc = (
        "Perfusion-weighted images were obtained by pair-wise control-label subtraction "
        "and converted to CBF (mL/100 g/min) with the single-compartment model of the ASL "
        "white paper (Alsop et al. 2015)"
        + (", using each pair's control image as M0 (ASLtbx)" if quant != "white-paper" else "")
        + ". "
        + constants
    )
    best = (compute_cbf, "mean_cbf")

    if outlier_method != "none" and n_pairs >= MIN_PAIRS_FOR_CLEANING:
        kwargs = {} if outlier_threshold is None else {"th": float(outlier_threshold)}
        noise_aware = outlier_method == "paocsl" and not paocsl_spec_rules
        if noise_aware:
            kwargs["noise_aware"] = True
        clean = pe.Node(CleanCBF(method=outlier_method, **kwargs), name="clean_cbf", mem_gb=mem_gb)
        decide_on = compute_cbf
        if processed_series:  # cleaning decides on the unprocessed series' CBF
            decide_on = pe.Node(
                ComputeCBF(
                    run_description=run,
                    quant_overrides=overrides,
                    quantification=quant,
                    m0_scale=m0_scale,
                    drift_correction=drift_correction,
                ),
                name="compute_cbf_unprocessed",
                mem_gb=mem_gb,
            )
            workflow.connect([
                (inputnode, decide_on, [("asl_unprocessed", "asl_file"), ("mask", "mask")]),
                (compute_m0, decide_on, [("m0_file", "m0_file")]),
                (compute_cbf, clean, [("cbf_ts", "cbf_ts_apply")]),
            ])  # fmt: skip
        if not noise_aware:  # the noise-aware PAOCSL runs without the motion pre-screen
            workflow.connect(inputnode, "motion", clean, "motion")
        workflow.connect([
            (inputnode, clean, [("gm", "gm"), ("wm", "wm"), ("csf", "csf"), ("mask", "mask"),
                                ("aslcontext", "aslcontext")]),
            (decide_on, clean, [("cbf_ts", "cbf_ts")]),
            (compute_cbf, clean, [("cbf_ts_json", "cbf_ts_json")]),
            (clean, outputnode, [("mean_cbf", "cleaned_cbf"),
                                 ("mean_cbf_json", "cleaned_cbf_json"),
                                 ("outlier_matrix", "outlier_matrix"),
                                 ("volume_status", "volume_status")]),
        ])  # fmt: skip
        names = {
            "paocsl": "PAOCSL, the prior-guided slice-wise adaptive outlier cleaning "
            "(Li et al. 2018)",
            "score": "SCORE (Dolui et al. 2017)",
            "aoc": "adaptive outlier cleaning (AOC, Wang 2013)",
        }
        desc += f" Outlier label/control pairs were removed with {names[outlier_method]}"
        if noise_aware:
            desc += (
                " (a pair was removed from every slice when its global CBF lay further from "
                "the median than a clean series of that many pairs reaches with 5% "
                "probability, in robust SDs; from one slice when its mean over the slice "
                "lay more than 5 robust SDs from the median; then slice by slice by the "
                "greedy search, stopped when the best removal no longer stood out of the "
                "removals of clean pairs by 4 robust SDs)"
            )
        desc += (
            ", decided on the CBF series of the unregressed, unsmoothed data and applied to "
            "the processed series."
            if processed_series
            else "."
        )
        best = (clean, "mean_cbf")

    workflow.connect(best[0], best[1], outputnode, "measured_cbf")
    if denoise:
        kwargs = {"weights": str(dwan_weights)} if dwan_weights else {}
        if dwan_finetune:
            kwargs["finetune_seconds"] = float(dwan_finetune)
        dwan = pe.Node(
            DWANDenoise(num_threads=omp_nthreads, seed=int(seed), **kwargs),
            name="dwan_denoise",
            mem_gb=2.0,
            n_procs=omp_nthreads,
        )
        workflow.connect([
            (best[0], dwan, [(best[1], "in_file")]),
            (inputnode, dwan, [("mask", "mask_file"), ("gm", "gm_file"), ("wm", "wm_file")]),
            (compute_cbf, dwan, [("cbf_ts", "cbf_ts")]),
            (compute_m0, dwan, [("m0_file", "m0_file")]),
            (dwan, outputnode, [("out_file", "denoised_cbf"),
                                ("out_sidecar", "denoised_cbf_json")]),
        ])  # fmt: skip
        cleaned = best[0] is not compute_cbf
        if cleaned:  # the cleaned map: its noise is that of the kept pairs
            workflow.connect(best[0], "outlier_matrix", dwan, "outlier_matrix")
        desc += (
            " The unsmoothed mean CBF map was denoised slice by slice with DWAN, a dilated "
            "wide-activation network trained from noisy data alone (learning from noise), "
            "given the map's noise level (estimated from the per-pair series"
            + (", over the pairs the outlier cleaning kept in each slice" if cleaned else "")
            + ") and the GM/WM probability maps as extra input channels"
            + (
                f", after up to {float(dwan_finetune):g} s of fine-tuning on the run's own "
                + ("kept " if cleaned else "")
                + "pairs (subject-level learning from noise), keeping the weights that scored "
                "best on held-out slices."
                if dwan_finetune
                else "."
            )
        )
        best = (dwan, "out_file")
    workflow.connect(best[0], best[1], outputnode, "final_cbf")
    workflow.__desc__ = desc
    return workflow
