"""Noise and artefact models of the simulator.

* Thermal noise: complex Gaussian added to the (real) signal, then the
  magnitude is taken, so the images are Rician (:func:`rician`).
* Physiological fluctuation: multiplicative on the signal of each volume,
  stronger near CSF (pulsatility), made of a slow drift plus cardiac- and
  respiratory-like components sampled at the repetition time, which alias to
  volume-to-volume fluctuations (:func:`physio_timecourses`). Their spatial
  maps change sign over about 2 cm (the drift adds a small gain of the whole
  image), so a region's mean keeps little of them, as in the real scan of
  :data:`REAL_SCAN_STATISTICS`.
* Outliers: whole-volume spikes (global gain change, with a motion jerk) and
  single-slice corruptions (intensity drop or a N/2 ghost along the phase
  encoding axis, y), see :func:`corrupt_slice`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asl_pipeline.simulate.anatomy import rician  # noqa: F401  (re-exported)

#: Thermal noise SD per channel, as a fraction of the M0 of pure CSF, at
#: ``noise_scale=1``. With :data:`PHYSIO_SD` it is calibrated so that the
#: per-pair GM CBF temporal SD (GM > 0.7, 3.4 x 3.4 x 6 mm) is about 50
#: mL/100 g/min for 2D PCASL without background suppression (control-image
#: tSNR about 100) and about 40 with it (``python -m
#: asl_pipeline.simulate.calibration`` prints the figures). Without background
#: suppression the brain-wide offset of one pair's CBF has an SD of about
#: 5 (3D) to 6 (2D) mL/100 g/min; the real scan's is 4.7.
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


# ----------------------------------------------------------------------------
# Additive per-pair CBF noise with the properties of real single-pair maps

#: Single-pair CBF noise measured on a real public 3D-spiral pCASL scan
#: (4 x 3.9 x 6 mm, 50 pairs; the figures of the project's issue 14, measured
#: by :func:`noise_statistics`). They set the defaults of :class:`PairNoise`;
#: the scan itself was never used to train or choose anything else.
REAL_SCAN_STATISTICS = {
    "pair_sd": 52.5,
    "mean_cbf": 42.0,
    "sd_ratio_high_low": 1.0,
    "lag1_x": 0.42,
    "lag1_y": 0.29,
    "lag1_z": 0.05,
    "lag1_pairs": -0.03,
    "global_offset_sd": 4.7,
    "excess_kurtosis": 46.0,
    "fraction_beyond_4sd": 0.008,
    "slice_sd_min": 38.0,
    "slice_sd_max": 83.0,
    "drift": (44.3 - 40.6) / 42.0,
}


@dataclass(frozen=True)
class PairNoise:
    """Additive noise of one control/label pair's CBF map (mL/100 g/min).

    Each pair's noise is white Gaussian noise whose voxels are, with
    probability ``tail_fraction``, ``tail_scale`` times larger (heavy tails:
    spikes, residual motion, flow artefacts), filtered in-plane with a
    separable 3-tap kernel (lag-1 correlations ``lag1`` along x and y, none
    through-plane: the point-spread of a 2D/3D readout), scaled to ``sd``
    times a slice profile that is ``slice_centre`` in the middle slice and
    ``slice_edge`` at the end slices (coil sensitivity; normalised to RMS 1),
    plus a per-pair global offset of SD ``global_sd``. Pairs are independent.
    Over the run the perfusion signal itself drifts by ``drift`` (relative,
    first pair to last: labeling efficiency, physiology). The same SD applies
    to high- and low-CBF voxels (additive). Defaults: the real scan of
    :data:`REAL_SCAN_STATISTICS`.
    """

    sd: float = 52.5
    lag1: tuple = (0.42, 0.29)
    tail_fraction: float = 0.015
    tail_scale: float = 8.5
    slice_centre: float = 0.72
    slice_edge: float = 1.6
    global_sd: float = 4.7
    drift: float = -0.09

    def slice_profile(self, n_slices: int) -> np.ndarray:
        """SD factor of each slice: quadratic from the centre to the edges, RMS 1."""
        u = np.linspace(-1.0, 1.0, n_slices) if n_slices > 1 else np.zeros(1)
        f = self.slice_centre + (self.slice_edge - self.slice_centre) * u**2
        return f / np.sqrt(np.mean(f**2))

    def tail_variance(self) -> float:
        """Variance of one white-noise voxel before the spatial filter."""
        return 1.0 - self.tail_fraction + self.tail_fraction * self.tail_scale**2


def random_pair_noise(rng, *, sd_range=(25.0, 90.0)) -> PairNoise:
    """A :class:`PairNoise` drawn around the real scan's figures (one subject's)."""
    return PairNoise(
        sd=float(rng.uniform(*sd_range)),
        lag1=(float(rng.uniform(0.25, 0.5)), float(rng.uniform(0.15, 0.4))),
        tail_fraction=float(rng.uniform(0.003, 0.015)),
        tail_scale=float(rng.uniform(6.0, 11.0)),
        slice_centre=float(rng.uniform(0.65, 0.9)),
        slice_edge=float(rng.uniform(1.1, 1.8)),
        global_sd=float(rng.uniform(0.0, 8.0)),
        drift=float(rng.uniform(-0.15, 0.05)),
    )


def _three_tap(lag1: float) -> np.ndarray:
    """Unit-energy kernel ``[a, 1, a]``: filtered white noise gets lag-1 correlation ``lag1``."""
    a = (1.0 - np.sqrt(1.0 - 2.0 * lag1**2)) / (2.0 * lag1) if lag1 > 0 else 0.0
    return np.array([a, 1.0, a]) / np.sqrt(1.0 + 2.0 * a * a)


def pair_noise(rng, shape, n_pairs: int, params: PairNoise = PairNoise()) -> np.ndarray:
    """``(x, y, z, n_pairs)`` float32 noise of :class:`PairNoise` (mL/100 g/min), no drift."""
    from scipy import ndimage

    shape = tuple(int(s) for s in shape)
    out = np.empty(shape + (n_pairs,), np.float32)
    kx, ky = (_three_tap(r) for r in params.lag1)
    scale = (
        params.sd / np.sqrt(params.tail_variance()) * params.slice_profile(shape[2])[None, None, :]
    )
    for p in range(n_pairs):
        w = rng.standard_normal(shape)
        w[rng.random(shape) < params.tail_fraction] *= params.tail_scale
        w = ndimage.correlate1d(w, kx, axis=0, mode="wrap")
        w = ndimage.correlate1d(w, ky, axis=1, mode="wrap")
        out[..., p] = w * scale + params.global_sd * rng.standard_normal()
    return out


def drift_gain(n_pairs: int, drift: float) -> np.ndarray:
    """Per-pair gain of the perfusion signal: linear, mean 1, ``drift`` from first to last."""
    if n_pairs < 2:
        return np.ones(n_pairs)
    return 1.0 + drift * (np.linspace(0.0, 1.0, n_pairs) - 0.5)


def noise_statistics(series, mask, *, head: int = 10) -> dict:
    """The statistics of :data:`REAL_SCAN_STATISTICS`, measured on a per-pair CBF series.

    ``series`` is ``(x, y, z, n_pairs)`` (mL/100 g/min), ``mask`` the brain
    mask. The noise is each pair's deviation from the voxel's mean over all
    pairs (scaled by ``sqrt(n / (n - 1))``), pooled over the mask. ``drift``
    compares the mask mean of the first and last ``head`` pairs.
    """
    x = np.asarray(series, dtype=np.float64)
    m = np.asarray(mask, bool)
    n = x.shape[-1]
    mean = x.mean(-1)
    res = (x - mean[..., None]) * np.sqrt(n / (n - 1.0))
    vals = res[m]
    sd = float(vals.std())
    z = vals / sd
    means = mean[m]
    lo, hi = np.quantile(means, [1 / 3, 2 / 3])
    sd_lo = float(res[m & (mean <= lo)].std())
    sd_hi = float(res[m & (mean >= hi)].std())

    m4 = np.broadcast_to(m[..., None], res.shape)

    def lag1(axis):
        a = np.moveaxis(res, axis, 0)
        mm = np.moveaxis(m4, axis, 0)
        both = mm[1:] & mm[:-1]
        u, v = a[1:][both], a[:-1][both]
        return float(np.sum(u * v) / np.sqrt(np.sum(u * u) * np.sum(v * v)))

    pair_means = np.array([x[..., p][m].mean() for p in range(n)])
    slice_sd = [
        float(res[:, :, k][m[:, :, k]].std()) for k in range(m.shape[2]) if m[:, :, k].sum() >= 50
    ]
    first, last = pair_means[:head].mean(), pair_means[-head:].mean()
    return {
        "pair_sd": sd,
        "mean_cbf": float(means.mean()),
        "sd_ratio_high_low": sd_hi / max(sd_lo, 1e-9),
        "lag1_x": lag1(0),
        "lag1_y": lag1(1),
        "lag1_z": lag1(2),
        "lag1_pairs": lag1(3),
        "global_offset_sd": float(np.std(pair_means - np.mean(pair_means), ddof=1)),
        "excess_kurtosis": float(np.mean(z**4) - 3.0),
        "fraction_beyond_4sd": float(np.mean(np.abs(z) > 4)),
        "slice_sd_min": min(slice_sd),
        "slice_sd_max": max(slice_sd),
        "drift": float((first - last) / max(abs(means.mean()), 1e-9)),
    }


def tissue_unexplained(first, second, gm, wm, mask, *, min_voxels: int = 300) -> float:
    """Share of a CBF map's spatial signal variance that GM and WM fractions do not explain.

    ``first`` and ``second`` are two independent estimates of the same map
    (e.g. the means of the odd and even pairs of a run; a noise-free map may
    be passed twice). In each slice with at least ``min_voxels`` voxels of
    ``mask``, their mean is fitted as ``a gm + b wm + c`` by least squares;
    the signal variance is the covariance of the two estimates over the
    slice, and the unexplained variance the covariance of their residuals
    (the noise, independent between the two, drops out of both). Returns the
    median over slices of unexplained / signal variance: about 0.1-0.2 on
    the simulators' perfusion, where CBF follows the tissue maps, and 0.78
    on a real 3D-spiral scan with its pipeline-made tissue maps (RESULTS.md,
    "How much of the CBF do the tissue maps explain").
    """
    a, b = np.asarray(first, float), np.asarray(second, float)
    gm, wm, m = np.asarray(gm, float), np.asarray(wm, float), np.asarray(mask, bool)
    shares = []
    for k in range(m.shape[2]):
        sel = m[:, :, k] & np.isfinite(a[:, :, k]) & np.isfinite(b[:, :, k])
        if sel.sum() < min_voxels:
            continue
        x = np.column_stack([gm[:, :, k][sel], wm[:, :, k][sel], np.ones(int(sel.sum()))])
        u, v = a[:, :, k][sel], b[:, :, k][sel]
        beta, *_ = np.linalg.lstsq(x, 0.5 * (u + v), rcond=None)
        fit = x @ beta
        signal = np.cov(u, v)[0, 1]
        if signal > 0:
            shares.append(np.cov(u - fit, v - fit)[0, 1] / signal)
    if not shares:
        raise ValueError(f"no slice has {min_voxels} mask voxels")
    return float(np.median(shares))
