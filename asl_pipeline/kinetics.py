"""Forward models of the ASL signal and the physical constants they use.

Section 2 of the methods spec (``shared/specs/asl-methods.md``). CBF is in
mL/100 g/min throughout the public API; times are in seconds.

The models are the single-compartment Buxton general kinetic model with the
blood T1 used for the label decay everywhere (the simplification behind the
ASL white paper's single-PLD equations, Alsop et al. 2015), so that the
white-paper quantification inverts them exactly whenever the arterial transit
time is shorter than the post-labeling delay (pCASL/CASL) or than TI - TI1
(PASL).
"""

from __future__ import annotations

import numpy as np

#: Blood-brain partition coefficient, mL/g (white paper).
LAMBDA = 0.9

#: Blood T1 (s) by field strength (T). 3 T and 1.5 T from the white paper.
T1_BLOOD = {1.5: 1.35, 3.0: 1.65, 7.0: 2.087}

#: Grey-matter-like tissue T1 (s) by field strength, used for the M0
#: incomplete-recovery correction (spec: 1.2-1.6 s by field strength).
T1_TISSUE = {1.5: 1.2, 3.0: 1.4, 7.0: 1.6}

#: Default labeling efficiency by labeling type (white paper).
ALPHA_DEFAULT = {"PCASL": 0.85, "CASL": 0.68, "PASL": 0.98}

#: Efficiency factor applied per background-suppression pulse. This is an
#: approximation (each inversion pulse is assumed to leave 95% of the label);
#: the true loss depends on the pulse shape and timing.
ALPHA_BS_PER_PULSE = 0.95

#: Seconds per minute times 100 g: converts mL/g/s into mL/100 g/min.
CBF_UNITS = 6000.0


def _nearest_field(table: dict[float, float], field_strength: float) -> float:
    keys = np.array(sorted(table))
    return table[float(keys[np.argmin(np.abs(keys - float(field_strength)))])]


def t1_blood(field_strength: float) -> float:
    """Blood T1 in seconds at the nearest tabulated field strength."""
    return _nearest_field(T1_BLOOD, field_strength)


def t1_tissue(field_strength: float) -> float:
    """Tissue T1 in seconds at the nearest tabulated field strength."""
    return _nearest_field(T1_TISSUE, field_strength)


def labeling_efficiency(
    labeling_type: str,
    labeling_efficiency: float | None = None,
    n_bs_pulses: int = 0,
) -> float:
    """Effective labeling efficiency alpha.

    ``labeling_efficiency`` (the BIDS ``LabelingEfficiency``) wins over the
    default for the labeling type; each background-suppression pulse then
    multiplies it by :data:`ALPHA_BS_PER_PULSE`.
    """
    key = labeling_type.upper()
    if labeling_efficiency is None:
        if key not in ALPHA_DEFAULT:
            raise ValueError(f"unknown labeling type {labeling_type!r}")
        alpha = ALPHA_DEFAULT[key]
    else:
        alpha = float(labeling_efficiency)
    return alpha * ALPHA_BS_PER_PULSE ** int(n_bs_pulses)


def pcasl_deltam(
    cbf,
    att,
    pld,
    tau: float,
    m0,
    *,
    alpha: float,
    t1b: float = 1.65,
    lam: float = LAMBDA,
):
    """Control - label difference for (p)CASL, Buxton model.

    Parameters
    ----------
    cbf
        Cerebral blood flow, mL/100 g/min.
    att
        Arterial transit time, s.
    pld
        Post-labeling delay, s (per slice for 2D readouts).
    tau
        Labeling duration, s.
    m0
        Equilibrium magnetisation of tissue.
    alpha, t1b, lam
        Labeling efficiency, blood T1 (s), partition coefficient (mL/g).

    All array arguments broadcast against each other.
    """
    f = np.asarray(cbf, dtype=float) / CBF_UNITS
    att = np.asarray(att, dtype=float)
    pld = np.asarray(pld, dtype=float)
    t = pld + tau  # time since the start of labeling
    scale = 2.0 * alpha * np.asarray(m0, dtype=float) * f * t1b / lam * np.exp(-att / t1b)
    during = 1.0 - np.exp(-np.clip(t - att, 0.0, None) / t1b)
    after = np.exp(-np.clip(t - tau - att, 0.0, None) / t1b) * (1.0 - np.exp(-tau / t1b))
    return np.where(t < att, 0.0, np.where(t < att + tau, scale * during, scale * after))


def pasl_deltam(
    cbf,
    att,
    ti,
    ti1: float,
    m0,
    *,
    alpha: float,
    t1b: float = 1.65,
    lam: float = LAMBDA,
):
    """Control - label difference for PASL with a bolus of duration ``ti1``.

    ``ti`` is the inversion time (BIDS ``PostLabelingDelay`` for PASL) and
    ``ti1`` the bolus cut-off time (``BolusCutOffDelayTime``, QUIPSS II /
    Q2TIPS). Units as in :func:`pcasl_deltam`.
    """
    f = np.asarray(cbf, dtype=float) / CBF_UNITS
    att = np.asarray(att, dtype=float)
    ti = np.asarray(ti, dtype=float)
    scale = 2.0 * alpha * np.asarray(m0, dtype=float) * f / lam * np.exp(-ti / t1b)
    bolus = np.clip(ti - att, 0.0, ti1)
    return scale * bolus
