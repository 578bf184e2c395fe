"""Noise and artefact models of the simulator.

* Thermal noise: complex Gaussian added to the (real) signal, then the
  magnitude is taken, so the images are Rician (:func:`rician`).
* Physiological fluctuation: multiplicative on the whole signal of each
  volume, spatially smooth and stronger near CSF (pulsatility), made of a slow
  drift plus cardiac- and respiratory-like components sampled at the
  repetition time, which alias to volume-to-volume fluctuations
  (:func:`physio_timecourses`).
* Outliers: whole-volume spikes (global gain change, with a motion jerk) and
  single-slice corruptions (intensity drop or a N/2 ghost along the phase
  encoding axis, y), see :func:`corrupt_slice`.
"""

from __future__ import annotations

import numpy as np

from asl_pipeline.simulate.anatomy import rician  # noqa: F401  (re-exported)

#: Thermal noise SD per channel, as a fraction of the M0 of pure CSF, at
#: ``noise_scale=1``. With :data:`PHYSIO_SD` it is calibrated so that the
#: per-pair GM CBF temporal SD (GM > 0.7, 3.4 x 3.4 x 6 mm) is about 52
#: mL/100 g/min for 2D PCASL without background suppression (control-image
#: tSNR about 100) and about 38 with it (``python -m
#: asl_pipeline.simulate.calibration`` prints the figures).
THERMAL_SD = 0.0020

#: RMS of the cardiac, respiratory and drift components of the
#: multiplicative physiological fluctuation (fraction of the signal).
PHYSIO_SD = {"cardiac": 0.0020, "respiratory": 0.0015, "drift": 0.008}


def physio_timecourses(rng, n_volumes: int, tr: float, slice_times=None) -> dict:
    """Cardiac, respiratory and drift time courses, each with unit RMS.

    Cardiac ~ 1.1 Hz and respiratory ~ 0.28 Hz with slowly varying rate,
    sampled once per TR (so they alias to near-random volume-to-volume
    values); drift is a smooth random walk (time constant ~ 10 volumes).
    Each course is ``(n_volumes, n_slices)``: with 2D ``slice_times`` (s) each
    slice samples the cardiac and respiratory cycles at its own time, so the
    fluctuation differs between the slices of one volume (one column if
    ``slice_times`` is None).
    """
    st = np.zeros(1) if slice_times is None else np.asarray(slice_times, float)
    out = {}
    for name, f0, jitter in (("cardiac", 1.1, 0.08), ("respiratory", 0.28, 0.04)):
        rate = f0 * (1 + jitter * np.cumsum(rng.standard_normal(n_volumes)) / 5)
        phase = 2 * np.pi * np.cumsum(rate * tr) + rng.uniform(0, 2 * np.pi)
        phase = phase[:, None] + 2 * np.pi * rate[:, None] * st[None, :]
        wave = np.sin(phase) + 0.3 * np.sin(2 * phase + rng.uniform(0, 2 * np.pi))
        out[name] = wave / max(np.sqrt(np.mean(wave**2)), 1e-9)
    walk = np.cumsum(rng.standard_normal(n_volumes))
    kernel = np.exp(-(np.arange(-30, 31) ** 2) / (2 * 10.0**2))
    walk = np.convolve(np.pad(walk, 30, mode="edge"), kernel / kernel.sum(), "valid")
    walk -= walk.mean()
    walk = walk / max(np.sqrt(np.mean(walk**2)), 1e-9)
    out["drift"] = np.repeat(walk[:, None], len(st), axis=1)
    return out


def corrupt_slice(rng, volume, z: int, kind: str) -> None:
    """Corrupt slice ``z`` of a 3D volume in place.

    ``"drop"``: intensity times U(0.85, 0.96) (spin-history / through-slice
    motion); ``"ghost"``: adds U(0.05, 0.15) times the slice shifted by half the
    field of view along y (Nyquist ghost).
    """
    if kind == "drop":
        volume[:, :, z] *= rng.uniform(0.85, 0.96)
    elif kind == "ghost":
        sl = volume[:, :, z]
        volume[:, :, z] = sl + rng.uniform(0.05, 0.15) * np.roll(sl, sl.shape[1] // 2, axis=1)
    else:  # pragma: no cover - internal
        raise ValueError(kind)
