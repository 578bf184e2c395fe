"""Known answers for the forward kinetic models."""

import numpy as np
import pytest

from asl_pipeline import kinetics


def test_pcasl_matches_white_paper_when_att_below_pld():
    cbf, pld, tau, m0, alpha, t1b = 60.0, 1.8, 1.8, 1000.0, 0.85, 1.65
    dm = kinetics.pcasl_deltam(cbf, 1.2, pld, tau, m0, alpha=alpha, t1b=t1b)
    expected = (
        2 * alpha * m0 * (cbf / 6000) * t1b / 0.9 * np.exp(-pld / t1b) * (1 - np.exp(-tau / t1b))
    )
    assert dm == pytest.approx(expected, rel=1e-12)
    # the transit time does not matter once the whole bolus has arrived
    dm2 = kinetics.pcasl_deltam(cbf, 0.5, pld, tau, m0, alpha=alpha, t1b=t1b)
    assert dm2 == pytest.approx(expected, rel=1e-12)


def test_pcasl_zero_before_arrival_and_continuous():
    att = 1.5
    assert kinetics.pcasl_deltam(50, att, 0.0, 1.0, 1.0, alpha=0.85) == 0.0
    # continuity at t = att + tau
    eps = 1e-9
    tau = 1.0
    a = kinetics.pcasl_deltam(50, att, att - eps, tau, 1.0, alpha=0.85)
    b = kinetics.pcasl_deltam(50, att, att + eps, tau, 1.0, alpha=0.85)
    assert a == pytest.approx(b, rel=1e-6)


def test_pasl_matches_white_paper():
    cbf, ti, ti1, m0, alpha, t1b = 50.0, 1.8, 0.8, 500.0, 0.98, 1.65
    dm = kinetics.pasl_deltam(cbf, 0.7, ti, ti1, m0, alpha=alpha, t1b=t1b)
    expected = 2 * alpha * m0 * (cbf / 6000) * ti1 / 0.9 * np.exp(-ti / t1b)
    assert dm == pytest.approx(expected, rel=1e-12)
    # before full delivery the bolus is partial
    partial = kinetics.pasl_deltam(cbf, 1.5, ti, ti1, m0, alpha=alpha, t1b=t1b)
    assert partial == pytest.approx(expected * (ti - 1.5) / ti1, rel=1e-12)


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
