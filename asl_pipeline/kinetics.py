"""Forward models of the ASL signal and the physical constants they use.

Section 2 of the methods spec (``shared/specs/asl-methods.md``). CBF is in
mL/100 g/min throughout the public API; times are in seconds.

The models are the single-compartment Buxton general kinetic model (Buxton et
al. 1998, MRM 40:383). The label decays with blood T1 on its way to the tissue
(the arterial transit time) and, once it has arrived, with a T1 chosen by
``t1_after_arrival`` (:data:`T1_AFTER_ARRIVAL`): the apparent tissue T1
``1/T1app = 1/T1tissue + f/lambda`` by default, as Buxton et al., or blood T1
everywhere, the simplification behind the ASL white paper's single-PLD
equations (Alsop et al. 2015), which then invert the model exactly whenever
the arterial transit time is shorter than the post-labeling delay
(pCASL/CASL) or than TI - TI1 (PASL). Single-PLD quantification
(:func:`asl_pipeline.cbf.cbf_single_pld`) stays the white paper's (methods
spec section 2); the choice matters for multi-PLD fits, whose early delays see
the label before most of its decay.
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


#: Choices of the T1 that governs the label's decay once it has reached the
#: tissue (``t1_after_arrival`` of the forward models and of
#: :func:`asl_pipeline.cbf.fit_multi_pld`):
#:
#: ``"tissue"``
#:     the apparent tissue T1, ``1/T1app = 1/T1tissue + f/lambda`` (Buxton et
#:     al. 1998, MRM 40:383): the label exchanges into the tissue water and
#:     relaxes with its T1, while venous outflow (``f/lambda``) removes it;
#: ``"blood"``
#:     blood T1 everywhere, the simplification behind the ASL white paper's
#:     single-PLD equations (Alsop et al. 2015), which those equations invert
#:     exactly.
T1_AFTER_ARRIVAL = ("tissue", "blood")


def _nearest_field(table: dict[float, float], field_strength: float) -> float:
    keys = np.array(sorted(table))
    return table[float(keys[np.argmin(np.abs(keys - float(field_strength)))])]


def t1_blood(field_strength: float) -> float:
    """Blood T1 in seconds at the nearest tabulated field strength."""
    return _nearest_field(T1_BLOOD, field_strength)


#: T1 (s) of each tissue class by field strength, for the tissue-weighted M0
#: recovery correction: typical in-vivo values from the relaxometry
#: literature (GM/WM/CSF); the single ``T1_TISSUE`` stays the fallback.
T1_BY_TISSUE = {
    1.5: {"gm": 1.2, "wm": 0.7, "csf": 4.0},
    3.0: {"gm": 1.6, "wm": 0.9, "csf": 4.0},
    7.0: {"gm": 1.9, "wm": 1.2, "csf": 4.4},
}

#: Relative proton density (water content) of each tissue class, which weights
#: each class's share of a voxel's M0.
PROTON_DENSITY = {"gm": 0.8, "wm": 0.7, "csf": 1.0}


def t1_by_tissue(field_strength: float) -> dict[str, float]:
    """Per-tissue T1 (s) at the nearest tabulated field strength."""
    return _nearest_field(T1_BY_TISSUE, field_strength)


def t1_tissue(field_strength: float) -> float:
    """Tissue T1 in seconds at the nearest tabulated field strength."""
    return _nearest_field(T1_TISSUE, field_strength)


def t1_apparent(cbf, t1_tissue: float, lam: float = LAMBDA):
    """Apparent tissue T1 (s): ``1/T1app = 1/T1tissue + f/lambda`` (Buxton 1998).

    ``cbf`` in mL/100 g/min (``f = cbf / 6000`` in mL/g/s), ``lam`` in mL/g.
    """
    return 1.0 / (1.0 / float(t1_tissue) + np.asarray(cbf, dtype=float) / CBF_UNITS / lam)


def t1_after_arrival_of(
    cbf, *, t1_after_arrival: str, t1b: float, t1_tissue: float, lam: float = LAMBDA
):
    """The T1 (s) governing the label after it arrives, for a choice of
    :data:`T1_AFTER_ARRIVAL` (blood T1, or the apparent tissue T1 at ``cbf``)."""
    if t1_after_arrival == "blood":
        return float(t1b)
    if t1_after_arrival == "tissue":
        return t1_apparent(cbf, t1_tissue, lam)
    raise ValueError(
        f"t1_after_arrival must be one of {', '.join(T1_AFTER_ARRIVAL)}, got {t1_after_arrival!r}"
    )


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
    t1b: float = T1_BLOOD[3.0],
    lam: float = LAMBDA,
    t1_after_arrival: str = "tissue",
    t1_tissue: float = T1_TISSUE[3.0],
):
    """Control - label difference for (p)CASL, Buxton general kinetic model.

    With ``t = PLD + tau`` the time since labeling started, ``f = cbf/6000``
    and ``T1a`` the T1 after arrival (:func:`t1_after_arrival_of`)::

        t < att:              0
        att <= t < att + tau: 2 alpha M0 f/lam T1a exp(-att/T1b) (1 - exp(-(t - att)/T1a))
        t >= att + tau:       2 alpha M0 f/lam T1a exp(-att/T1b) exp(-(PLD - att)/T1a)
                                  (1 - exp(-tau/T1a))

    The label decays with blood T1 during the transit ``att`` and with
    ``T1a`` once in the tissue. With ``t1_after_arrival="blood"`` and
    ``PLD >= att`` this is the white paper's forward model
    ``2 alpha M0 f/lam T1b exp(-PLD/T1b) (1 - exp(-tau/T1b))``.

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
    t1_after_arrival
        ``"tissue"`` (default: apparent tissue T1 from ``t1_tissue``, Buxton
        et al. 1998) or ``"blood"`` (``t1b``, the white-paper simplification);
        see :data:`T1_AFTER_ARRIVAL`.
    t1_tissue
        Tissue T1 (s) for ``t1_after_arrival="tissue"``.

    All array arguments broadcast against each other.
    """
    f = np.asarray(cbf, dtype=float) / CBF_UNITS
    att = np.asarray(att, dtype=float)
    pld = np.asarray(pld, dtype=float)
    t1a = t1_after_arrival_of(
        cbf, t1_after_arrival=t1_after_arrival, t1b=t1b, t1_tissue=t1_tissue, lam=lam
    )
    t = pld + tau  # time since the start of labeling
    scale = 2.0 * alpha * np.asarray(m0, dtype=float) * f * t1a / lam * np.exp(-att / t1b)
    during = 1.0 - np.exp(-np.clip(t - att, 0.0, None) / t1a)
    after = np.exp(-np.clip(t - tau - att, 0.0, None) / t1a) * (1.0 - np.exp(-tau / t1a))
    return np.where(t < att, 0.0, np.where(t < att + tau, scale * during, scale * after))


def pasl_deltam(
    cbf,
    att,
    ti,
    ti1: float,
    m0,
    *,
    alpha: float,
    t1b: float = T1_BLOOD[3.0],
    lam: float = LAMBDA,
    t1_after_arrival: str = "tissue",
    t1_tissue: float = T1_TISSUE[3.0],
):
    """Control - label difference for PASL with a bolus of duration ``ti1``.

    ``ti`` is the inversion time (BIDS ``PostLabelingDelay`` for PASL) and
    ``ti1`` the bolus cut-off time (``BolusCutOffDelayTime``, QUIPSS II /
    Q2TIPS). Blood labeled at inversion (time 0) arrives at times ``u`` from
    ``att`` to ``att + ti1``, having decayed with blood T1, and then decays
    with ``T1a`` (Buxton et al. 1998, with ``k = 1/T1b - 1/T1a``)::

        2 alpha M0 f/lam exp(-TI/T1b) * integral over u in [att, min(TI, att + ti1)]
                                             of exp(k (TI - u)) du

    which is ``2 alpha M0 f/lam exp(-TI/T1b) min(TI - att, ti1)`` (0 before
    arrival) with ``t1_after_arrival="blood"`` (``k = 0``), the QUIPSS II
    forward model of the white paper. Units and ``t1_after_arrival`` /
    ``t1_tissue`` as in :func:`pcasl_deltam`.
    """
    f = np.asarray(cbf, dtype=float) / CBF_UNITS
    att = np.asarray(att, dtype=float)
    ti = np.asarray(ti, dtype=float)
    scale = 2.0 * alpha * np.asarray(m0, dtype=float) * f / lam * np.exp(-ti / t1b)
    bolus = np.clip(ti - att, 0.0, ti1)  # duration of the bolus delivered by TI
    if t1_after_arrival == "blood":
        return scale * bolus
    t1a = t1_after_arrival_of(
        cbf, t1_after_arrival=t1_after_arrival, t1b=t1b, t1_tissue=t1_tissue, lam=lam
    )
    k = 1.0 / t1b - 1.0 / t1a
    # the integral of exp(k s) over s in [TI - att - bolus, TI - att]: the last
    # arrival has spent s_last = max(TI - att - ti1, 0) in the tissue
    s_last = np.clip(ti - att - ti1, 0.0, None)
    k_safe = np.where(k == 0, 1.0, k)
    integral = np.where(k == 0, bolus, np.exp(k * s_last) * np.expm1(k * bolus) / k_safe)
    return scale * integral
