"""Methods text of the quantification: the constants and parameters of a run.

The CBF workflow's ``__desc__`` (:func:`asl_pipeline.workflows.cbf.init_cbf_wf`)
states what was used to turn the run into CBF, with the run's own values: the
labeling (type, duration or bolus, delays), the readout (2D slice timing or
3D), the labeling efficiency with its background-suppression factor, blood T1,
the partition coefficient, and the M0 (source, scaling, recovery correction).
The values come from the same :func:`asl_pipeline.cbf.quant_params` the
quantification nodes use, so the text cannot drift from the numbers.
"""

from __future__ import annotations

from asl_pipeline import kinetics
from asl_pipeline.cbf import M0_TR_FULL_RECOVERY, PAIRWISE_CONTROL, quant_params
from asl_pipeline.multipld import T1_MAX_SE
from asl_pipeline.rundesc import RunDescription

_LABELING_NAMES = {"PCASL": "pCASL", "CASL": "CASL", "PASL": "PASL"}
_BOLUS_CUTOFF_NAMES = {"QUIPSSII": "QUIPSS II", "Q2TIPS": "Q2TIPS"}


def _s(value: float) -> str:
    """Seconds, at most 3 decimals, no trailing zeros (1.8, 0.665)."""
    return f"{round(float(value), 3):g}"


def _times(values) -> str:
    values = sorted({round(float(v), 3) for v in values})
    return ", ".join(_s(v) for v in values) + " s"


def labeling_text(desc: RunDescription, *, multi_pld: bool) -> str:
    """Labeling type, its duration or bolus, and the delay(s)."""
    lab = desc.labeling
    name = _LABELING_NAMES.get(lab.labeling_type, lab.labeling_type)
    delays = desc.perfusion_plds
    if lab.labeling_type == "PASL":
        technique = _BOLUS_CUTOFF_NAMES.get(
            lab.bolus_cutoff_technique or "", lab.bolus_cutoff_technique or "bolus cut-off"
        )
        parts = [f"{technique} bolus cut-off, bolus duration TI1 {_s(lab.bolus_duration)} s"]
        what = "inversion times TI" if multi_pld else "inversion time TI"
    else:
        durations = lab.labeling_duration_per_volume
        if durations is not None:
            used = [durations[i] for i in desc.series.perfusion_volumes]
            tau = _times(used)
            plural = len({round(v, 3) for v in used}) > 1
        else:
            tau, plural = f"{_s(lab.labeling_duration)} s", False
        parts = [f"labeling duration{'s' if plural else ''} {tau}"]
        what = "post-labeling delays (PLDs)" if multi_pld else "post-labeling delay (PLD)"
    parts.append(f"{what} {_times(delays)}")
    return f"{name}, " + ", ".join(parts)


def readout_text(desc: RunDescription) -> str:
    """2D with slice timing (each slice's own delay), 2D without, or 3D."""
    readout = desc.readout
    if readout.acquisition == "3D":
        return "3D readout (one delay for the whole volume)"
    if readout.slice_timing:
        times = readout.slice_timing
        return (
            f"2D readout, slice timing corrected per slice: each slice's delay was the "
            f"nominal one plus its acquisition time (SliceTiming, {len(times)} slices, "
            f"{_s(min(times))} to {_s(max(times))} s)"
        )
    return (
        "2D readout without SliceTiming: every slice was quantified at the nominal delay "
        "(later slices' CBF is overestimated)"
    )


def efficiency_text(desc: RunDescription, overrides: dict | None = None) -> str:
    """Labeling efficiency, its source and the background-suppression factor.

    ``overrides``: as :func:`asl_pipeline.cbf.quant_params`'s (a
    ``labeling_efficiency`` there replaces the sidecar's and the default)."""
    lab, eff = desc.labeling, desc.efficiency
    overrides = overrides or {}
    alpha = quant_params(desc, **overrides).alpha
    if overrides.get("labeling_efficiency") is not None:
        base = f"{overrides['labeling_efficiency']:g} (set by the user)"
    elif eff.labeling_efficiency is not None:
        base = f"{eff.labeling_efficiency:g} (LabelingEfficiency of the sidecar)"
    else:
        name = _LABELING_NAMES.get(lab.labeling_type, lab.labeling_type)
        base = (
            f"{kinetics.ALPHA_DEFAULT[lab.labeling_type.upper()]:g} "
            f"(the white paper's value for {name})"
        )
    text = f"labeling efficiency {base}"
    n = eff.background_suppression_pulses
    if eff.background_suppression and n:
        text += (
            f" × {kinetics.ALPHA_BS_PER_PULSE:g}^{n} for {n} background-suppression "
            f"pulse{'s' if n > 1 else ''} (an approximation: each pulse assumed to leave "
            f"{100 * kinetics.ALPHA_BS_PER_PULSE:g}% of the label), α = {alpha:.3g}"
        )
    elif eff.background_suppression and n is None:
        text += (
            " (background suppression on, number of pulses not given: no efficiency loss "
            "applied for it)"
        )
    elif eff.background_suppression:
        text += " (background suppression with 0 pulses: no efficiency loss)"
    return text


def m0_text(
    desc: RunDescription,
    *,
    quantification: str = "white-paper",
    m0_scale: float = 1.0,
    m0_recovery: str = "tissue",
    tissue_maps: bool = True,
) -> str:
    """Where the M0 came from, its scaling and its recovery correction."""
    params = quant_params(desc)
    m0_type = params.m0_type
    pairwise = quantification in (PAIRWISE_CONTROL, "asltbx")
    if pairwise:
        source = "each pair's own control image, voxel by voxel (ASLtbx)"
        tr, tissue = params.tr, False
    elif m0_type == "Separate":
        source = "a separate M0 scan (the mean of its volumes)"
        tr, tissue = params.m0_tr, m0_recovery == "tissue" and tissue_maps
    elif m0_type == "Included":
        n = len(desc.m0.m0_volumes)
        source = f"the mean of the {n} M0 volume{'s' if n != 1 else ''} included in the series"
        tr, tissue = params.m0_tr, m0_recovery == "tissue" and tissue_maps
    elif m0_type == "Estimate":
        source = f"the single value M0Estimate = {params.m0_estimate:g} of the sidecar"
        tr, tissue = None, False
    else:  # Absent
        source = "the mean control image (M0Type Absent, no background suppression)"
        tr, tissue = params.tr, m0_recovery == "tissue" and tissue_maps
    text = f"M0 was taken from {source}"
    if m0_scale != 1.0:
        text += f", multiplied by {m0_scale:g} (M0 scaling factor)"
    if m0_type == "Estimate" and not pairwise:
        return text + ", taken as an equilibrium value (no recovery correction)"
    if tr is None or not tr > 0:
        return text + ", not corrected for incomplete recovery (its repetition time is unknown)"
    if tr >= M0_TR_FULL_RECOVERY and not tissue:
        return text + (
            f"; with a repetition time of {_s(tr)} s (≥ {M0_TR_FULL_RECOVERY:g} s) it was taken "
            "as fully recovered (no recovery correction)"
        )
    text += f", corrected for incomplete recovery, M0 / (1 − exp(−TR/T1)), with TR {_s(tr)} s and "
    if tissue:
        t1 = kinetics.t1_by_tissue(params.field_strength)
        pd = kinetics.PROTON_DENSITY
        return text + (
            f"a tissue-weighted T1: each voxel's GM, WM and CSF fractions weighted by their "
            f"proton densities ({pd['gm']:g}, {pd['wm']:g}, {pd['csf']:g}) and T1s "
            f"(GM {_s(t1['gm'])} s, WM {_s(t1['wm'])} s, CSF {_s(t1['csf'])} s at "
            f"{params.field_strength:g} T)"
        )
    return text + f"a single tissue T1 of {_s(params.t1_tissue)} s"


def quantification_text(
    desc: RunDescription,
    *,
    multi_pld: bool = False,
    quantification: str = "white-paper",
    m0_scale: float = 1.0,
    m0_recovery: str = "tissue",
    tissue_maps: bool = True,
    t1_after_arrival: str = "tissue",
    t1_tissue_source: str = "gm-curve",
    overrides: dict | None = None,
) -> str:
    """The sentences stating the run's acquisition and quantification constants.

    ``quantification``: ``"white-paper"`` or ``"pairwise-control"``/``"asltbx"``
    (each pair's control image as M0); ``m0_recovery``: ``"tissue"`` or
    ``"single"``; ``tissue_maps``: whether GM/WM/CSF maps reach the M0 node
    (the tissue-weighted correction needs them); ``t1_tissue_source``: the
    multi-PLD fit's tissue T1, ``"gm-curve"`` (fitted to the GM voxels' mean
    curve) or ``"fixed"``; ``overrides``: constants that replace the defaults, as
    :func:`asl_pipeline.cbf.quant_params`'s (each is said to be set by the user).
    """
    overrides = overrides or {}
    params = quant_params(desc, **overrides)
    if desc.series.kind == "cbf":
        return (
            "The series held CBF volumes computed on the scanner "
            f"({labeling_text(desc, multi_pld=multi_pld)}), which were used as given."
        )
    given = " (set by the user)"
    t1b = (
        f"blood T1 {_s(params.t1b)} s "
        + (given.strip() if "t1b" in overrides else f"(at {params.field_strength:g} T)")
        + f", blood-brain partition coefficient λ {params.lam:g} mL/g"
        + (given if "lam" in overrides else "")
    )
    apparent = multi_pld and t1_after_arrival == "tissue"
    if apparent and t1_tissue_source == "gm-curve" and tissue_maps:
        t1b += (
            ", and for the apparent T1 after arrival a tissue T1 fitted, with CBF and ATT, to "
            "the mean curve of the GM voxels (GM probability above 0.8; "
            f"{_s(params.t1_tissue)} s where that fit failed or its jackknife standard error "
            f"over the repeats exceeded {T1_MAX_SE:g} s)"
        )
    elif apparent:
        t1b += f", tissue T1 {_s(params.t1_tissue)} s (for the apparent T1 after arrival)"
    refs = "Alsop et al. 2015" + ("; Buxton et al. 1998" if multi_pld else "")
    return (
        f"The ASL data were acquired with {labeling_text(desc, multi_pld=multi_pld)}, "
        f"and a {readout_text(desc)}. "
        f"CBF was quantified with a {efficiency_text(desc, overrides)}, {t1b} ({refs}). "
        + m0_text(
            desc,
            quantification=quantification,
            m0_scale=m0_scale,
            m0_recovery=m0_recovery,
            tissue_maps=tissue_maps,
        )
        + "."
    )


__all__ = [
    "efficiency_text",
    "labeling_text",
    "m0_text",
    "quantification_text",
    "readout_text",
]
