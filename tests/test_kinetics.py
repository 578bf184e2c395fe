"""Known answers for the forward kinetic models."""

import numpy as np
import pytest
from scipy.integrate import quad

from asl_pipeline import kinetics

LAM = 0.9


def _white_paper_pcasl(cbf, pld, tau, m0, alpha, t1b):
    return (
        2 * alpha * m0 * (cbf / 6000) * t1b / LAM * np.exp(-pld / t1b) * (1 - np.exp(-tau / t1b))
    )


def _t1app(cbf, t1):
    # Buxton et al. 1998: 1/T1app = 1/T1 + f/lambda, f in mL/g/s
    return 1.0 / (1.0 / t1 + cbf / 6000 / LAM)


def test_pcasl_with_blood_t1_matches_white_paper_when_att_below_pld():
    cbf, pld, tau, m0, alpha, t1b = 60.0, 1.8, 1.8, 1000.0, 0.85, 1.65
    expected = _white_paper_pcasl(cbf, pld, tau, m0, alpha, t1b)
    for att in (1.2, 0.5, 1.8):  # the transit time does not matter once the bolus is in
        dm = kinetics.pcasl_deltam(
            cbf, att, pld, tau, m0, alpha=alpha, t1b=t1b, t1_after_arrival="blood"
        )
        assert dm == pytest.approx(expected, rel=1e-12)


def test_pcasl_with_tissue_t1_is_buxtons_formula():
    cbf, att, pld, tau, m0, alpha, t1b, t1 = 60.0, 1.2, 1.8, 1.8, 1000.0, 0.85, 1.65, 1.4
    t1a = _t1app(cbf, t1)
    assert t1a == pytest.approx(1.0 / (1 / 1.4 + 0.01 / 0.9), rel=1e-14)
    assert kinetics.t1_apparent(cbf, t1) == pytest.approx(t1a, rel=1e-14)
    scale = 2 * alpha * m0 * (cbf / 6000) / LAM * t1a * np.exp(-att / t1b)
    after = scale * np.exp(-(pld - att) / t1a) * (1 - np.exp(-tau / t1a))
    dm = kinetics.pcasl_deltam(
        cbf, att, pld, tau, m0, alpha=alpha, t1b=t1b, t1_after_arrival="tissue", t1_tissue=t1
    )
    assert dm == pytest.approx(after, rel=1e-12)
    # the default is the tissue T1, and it differs from the white paper here:
    # the label decays faster in tissue (T1app 1.38 s) than in blood (1.65 s)
    default = kinetics.pcasl_deltam(cbf, att, pld, tau, m0, alpha=alpha)
    assert default == pytest.approx(after, rel=1e-12)
    ratio = after / _white_paper_pcasl(cbf, pld, tau, m0, alpha, t1b)
    assert ratio == pytest.approx(0.8538, abs=1e-4)
    # during the bolus (PLD + tau < att + tau)
    pld_in = 0.5
    during = scale * (1 - np.exp(-(pld_in + tau - att) / t1a))
    dm_in = kinetics.pcasl_deltam(cbf, att, pld_in, tau, m0, alpha=alpha, t1b=t1b, t1_tissue=t1)
    assert dm_in == pytest.approx(during, rel=1e-12)


@pytest.mark.parametrize("choice", ["tissue", "blood"])
def test_pcasl_zero_before_arrival_and_continuous(choice):
    att, tau = 1.5, 1.0
    kw = {"alpha": 0.85, "t1_after_arrival": choice}
    # labeling starts at -tau: no signal until the label has travelled att
    assert kinetics.pcasl_deltam(50, att, att - tau - 0.01, tau, 1.0, **kw) == 0.0
    eps = 1e-9
    for pld in (att - tau, att):  # the label's front arrives; its end arrives
        a = kinetics.pcasl_deltam(50, att, pld - eps, tau, 1.0, **kw)
        b = kinetics.pcasl_deltam(50, att, pld + eps, tau, 1.0, **kw)
        assert a == pytest.approx(b, rel=1e-6, abs=1e-8)


def test_pasl_with_blood_t1_matches_white_paper():
    cbf, ti, ti1, m0, alpha, t1b = 50.0, 1.8, 0.8, 500.0, 0.98, 1.65
    kw = {"alpha": alpha, "t1b": t1b, "t1_after_arrival": "blood"}
    dm = kinetics.pasl_deltam(cbf, 0.7, ti, ti1, m0, **kw)
    expected = 2 * alpha * m0 * (cbf / 6000) * ti1 / LAM * np.exp(-ti / t1b)
    assert dm == pytest.approx(expected, rel=1e-12)
    # before full delivery the bolus is partial
    partial = kinetics.pasl_deltam(cbf, 1.5, ti, ti1, m0, **kw)
    assert partial == pytest.approx(expected * (ti - 1.5) / ti1, rel=1e-12)


@pytest.mark.parametrize("att", [0.4, 1.3, 2.0])  # bolus fully in, partly in, not arrived
def test_pasl_with_tissue_t1_is_buxtons_formula(att):
    cbf, ti, ti1, m0, alpha, t1b, t1 = 50.0, 1.8, 0.8, 500.0, 0.98, 1.65, 1.3
    t1a = _t1app(cbf, t1)
    k = 1 / t1b - 1 / t1a
    pre = 2 * alpha * m0 * (cbf / 6000) / LAM * np.exp(-ti / t1b)
    # Buxton et al. 1998, eq. 5 and the q_p(t) of their appendix
    if ti < att:
        expected = 0.0
    elif ti < att + ti1:
        expected = pre * np.exp(k * ti) * (np.exp(-k * att) - np.exp(-k * ti)) / k
    else:
        expected = pre * np.exp(k * ti) * (np.exp(-k * att) - np.exp(-k * (att + ti1))) / k
    # and as the arrival integral: label arriving at u decays with T1b, then T1app
    integral = (
        quad(lambda u: np.exp(-u / t1b) * np.exp(-(ti - u) / t1a), att, min(ti, att + ti1))[0]
        if ti > att
        else 0.0
    )
    dm = kinetics.pasl_deltam(
        cbf, att, ti, ti1, m0, alpha=alpha, t1b=t1b, t1_after_arrival="tissue", t1_tissue=t1
    )
    assert dm == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert dm == pytest.approx(2 * alpha * m0 * (cbf / 6000) / LAM * integral, rel=1e-9)


def test_t1_after_arrival_equal_t1s_agree_and_bad_choice_raises():
    # with T1app equal to T1b (k = 0 in the PASL integral) both choices agree
    cbf, t1b = 40.0, 1.65
    t1 = 1.0 / (1.0 / t1b - cbf / 6000 / LAM)
    for fn, dur in ((kinetics.pcasl_deltam, 1.8), (kinetics.pasl_deltam, 0.8)):
        kw = {"alpha": 0.9, "t1b": t1b, "t1_tissue": t1}
        tissue = fn(cbf, 0.9, np.array([0.5, 1.2, 2.0]), dur, 1.0, t1_after_arrival="tissue", **kw)
        blood = fn(cbf, 0.9, np.array([0.5, 1.2, 2.0]), dur, 1.0, t1_after_arrival="blood", **kw)
        np.testing.assert_allclose(tissue, blood, rtol=1e-9)
    with pytest.raises(ValueError, match="t1_after_arrival"):
        kinetics.pcasl_deltam(50, 1.0, 1.8, 1.8, 1.0, alpha=0.85, t1_after_arrival="csf")
    with pytest.raises(ValueError, match="t1_after_arrival"):
        kinetics.pasl_deltam(50, 1.0, 1.8, 0.8, 1.0, alpha=0.98, t1_after_arrival="Tissue")


def test_constants():
    assert kinetics.t1_blood(3.0) == 1.65
    assert kinetics.t1_blood(1.5) == 1.35
    assert kinetics.t1_blood(2.9) == 1.65
    assert kinetics.labeling_efficiency("pcasl") == 0.85
    assert kinetics.labeling_efficiency("PASL") == 0.98
    assert kinetics.labeling_efficiency("CASL") == 0.68
    assert kinetics.labeling_efficiency("PCASL", 0.72) == 0.72
    assert kinetics.labeling_efficiency("PCASL", None, 4) == pytest.approx(0.85 * 0.95**4)
    with pytest.raises(ValueError):
        kinetics.labeling_efficiency("FAIR")
