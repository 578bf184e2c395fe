"""A simulated resting-state BOLD run of the same head, anatomy and perfusion.

Off by default (``simulate_subject(..., bold=True)``, ``asl-simulate
--bold``); it draws from its own generator (seeded ``[seed, 0xB01D]``), so
every ASL, M0 and T1w output is the same with or without it.

Geometry
--------
The BOLD run has its own axis-aligned grid (``voxel_size`` mm isotropic,
default 3 mm) covering the ASL field of view, centred within +-5 mm of the
ASL centre, and its own head position: a BOLD world point ``y`` (head at BOLD
volume 0) is the tissue point ``x = bold_to_asl @ y`` of the ASL run (head at
ASL volume 0), ``bold_to_asl`` a rigid matrix of up to +-3 mm and +-3 degrees
(the subject moved between the runs). Tissue fractions are the mean of the
MNI tissue model over sub-voxel points pulled back through the subject's true
mappings, as for the ASL run.

Signal model (gradient-echo EPI, TR ``tr`` s, TE ``te`` s)
---------------------------------------------------------
``S(x, t) = static(x) * (1 + a(x) n(x, t) + phys(x, t) + drift(t))`` with

* ``static(x) = M0_SCALE * g(x) * sum_k f_k PD_k (1 - exp(-TR/T1_k))
  exp(-TE * R2*_k(x))`` over the tissues k (GM, WM, CSF, skull, scalp), T2*
  of :data:`T2STAR_3T`, and ``g`` the susceptibility signal loss of a
  gradient echo (the ASL readout's dropout sites, :data:`DROPOUT_FACTOR`
  times deeper);
* perfusion-dependent relaxation: in GM and WM
  ``R2*_k(x) = 1/T2*_k - KAPPA * (CBF_k(x) - CBF_REF_k)``, ``CBF_k`` the
  subject's tissue CBF at that point (the same field as the ASL truth, lesion
  included) and :data:`KAPPA` 0.05 s^-1 per mL/100 g/min: lower perfusion at
  a preserved oxygen consumption leaves less oxygenated venous blood and a
  shorter T2* (a hypoperfused lesion is up to ~6% darker);
* perfusion-dependent fluctuation: ``a(x) = BOLD_AMPLITUDE * CBF(x) /
  CBF_REF_GM`` (1% at a GM CBF of 60), ``CBF(x)`` the voxel's true
  partial-volume CBF, modulating ``n(x, t)``: 4 spatially smooth "networks"
  with band-limited (0.01-0.1 Hz) unit-RMS time courses, normalised to unit
  RMS in every voxel (the resting-state fluctuation amplitude scales with
  the baseline perfusion);
* ``phys``: cardiac and respiratory fluctuation sampled at each slice's time
  (:func:`asl_pipeline.simulate.noise.physio_timecourses`), stronger near CSF,
  RMS :data:`PHYSIO_SD`;
* ``drift``: a scanner drift, linear plus quadratic, up to about 1.5% over the
  run, and a slow physiological random walk;
* a little head motion (:func:`asl_pipeline.simulate.motion.random_motion`
  at ``0.5 * motion_scale``), applied by cubic resampling of the static and
  fluctuating signals;
* Rician thermal noise of SD :data:`THERMAL_SD` ``* M0_SCALE * noise_scale``
  (a GM temporal SNR of about 60).

The truth (``cbf`` on the BOLD grid, head at BOLD volume 0; ``motion``;
``bold_to_asl``) is written under ``derivatives/simulation/sub-XX/func``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from asl_pipeline.simulate import anatomy, noise
from asl_pipeline.simulate.anatomy import (
    PROTON_DENSITY,
    T1_3T,
    TISSUES,
    apply_affine,
    grid_affine,
    load_mni_model,
    rigid_matrix,
)
from asl_pipeline.simulate.motion import random_motion, resample_moved

#: T2* (s) of the tissues at 3 T.
T2STAR_3T = {"gm": 0.050, "wm": 0.045, "csf": 0.100, "skull": 0.010, "scalp": 0.030}

#: Change of R2* (s^-1) per mL/100 g/min of tissue CBF above :data:`CBF_REF`.
KAPPA = 0.05

#: Reference tissue CBF (mL/100 g/min) at which R2* is ``1 / T2STAR_3T``.
CBF_REF = {"gm": 60.0, "wm": 24.0}

#: Fractional amplitude of the neural BOLD fluctuation at a CBF of ``CBF_REF["gm"]``.
BOLD_AMPLITUDE = 0.01

#: RMS of the cardiac and respiratory fluctuation (fraction of the signal).
PHYSIO_SD = {"cardiac": 0.004, "respiratory": 0.003, "drift": 0.004}

#: Thermal noise SD per channel as a fraction of the M0 of pure CSF (noise_scale 1).
THERMAL_SD = 0.005

#: The gradient-echo dropout is this many times deeper than the ASL readout's.
DROPOUT_FACTOR = 1.3

#: Number of resting-state networks of the fluctuation term.
N_NETWORKS = 4


@dataclass
class SimulatedBOLD:
    """A simulated BOLD run and its truth.

    ``data`` ``(x, y, z, t)`` float32 and ``affine`` (RAS+ mm) as the scanner
    writes them; ``metadata`` the sidecar. Truth: ``cbf`` (true CBF on the
    BOLD grid, head at volume 0), ``amplitude`` (``a(x)``, fraction),
    ``static`` (noise-free mean signal), ``motion`` (rows per volume, volume
    0 = 0, the convention of :mod:`asl_pipeline.simulate.motion`) and
    ``bold_to_asl`` (4x4, BOLD world -> ASL world, both heads at volume 0).
    """

    data: np.ndarray
    affine: np.ndarray
    metadata: dict
    cbf: np.ndarray
    amplitude: np.ndarray
    static: np.ndarray
    motion: np.ndarray
    bold_to_asl: np.ndarray


def _bandlimited(rng, n: int, tr: float, lo: float = 0.01, hi: float = 0.1) -> np.ndarray:
    """Unit-RMS Gaussian time course with power only between ``lo`` and ``hi`` Hz."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freq = np.fft.rfftfreq(n, tr)
    spec[(freq < lo) | (freq > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / max(np.sqrt(np.mean(x**2)), 1e-12)


def _bold_grid(rng, anat, asl_shape, voxel_size):
    """BOLD grid (shape, affine) covering the ASL FOV, and the BOLD->ASL pose."""
    asl_vs = np.sqrt((anat.affine[:3, :3] ** 2).sum(0))
    extent = asl_vs * np.asarray(asl_shape, float)
    shape = tuple(int(np.ceil(e / voxel_size)) for e in extent)
    asl_centre = anatomy.voxel_centre_world(anat.affine, asl_shape)
    centre = asl_centre + rng.uniform(-5, 5, 3)
    affine = grid_affine(shape, (voxel_size,) * 3, centre)
    pose = np.r_[rng.uniform(-3, 3, 3), np.deg2rad(rng.uniform(-3, 3, 3))]
    return shape, affine, rigid_matrix(pose, asl_centre)


def _fractions(anat, affine, shape, *, resolution, subsample):
    """Tissue fractions and voxel-centre MNI points of a grid (``affine``: voxel ->
    ASL world)."""
    model = load_mni_model(resolution)
    to_t1w = anat.asl_to_t1w @ affine
    offsets = np.stack(
        np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in subsample], indexing="ij"), -1
    ).reshape(-1, 3)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    sums = np.zeros((len(TISSUES), len(ijk)))
    for off in offsets:
        sums += anatomy.sample_model(model, anat.deformation(apply_affine(to_t1w, ijk + off)))
    sums /= len(offsets)
    fr = {k: sums[i].reshape(shape) for i, k in enumerate(TISSUES)}
    return fr, anat.deformation(apply_affine(to_t1w, ijk))


def _gain(rng, centres_mni, dropout) -> np.ndarray:
    gain = np.ones(len(centres_mni))
    for c, amp, width in dropout:
        d2 = ((centres_mni - np.asarray(c)) ** 2).sum(1)
        gain -= DROPOUT_FACTOR * amp * rng.uniform(0.7, 1.3) * np.exp(-d2 / (2 * width**2))
    return np.clip(gain, 0.05, 1.0)


def static_signal(fr, cbf_gm, cbf_wm, gain, te: float, tr: float, m0_scale: float):
    """``static(x)`` of the module docstring (noise-free mean BOLD signal)."""
    out = 0.0
    for k in TISSUES:
        r2 = 1.0 / T2STAR_3T[k]
        if k == "gm":
            r2 = r2 - KAPPA * (cbf_gm - CBF_REF["gm"])
        elif k == "wm":
            r2 = r2 - KAPPA * (cbf_wm - CBF_REF["wm"])
        out = out + fr[k] * PROTON_DENSITY[k] * (1 - np.exp(-tr / T1_3T[k])) * np.exp(-te * r2)
    return m0_scale * gain * out


def simulate_bold(
    seed: int,
    anat,
    asl_shape,
    *,
    dropout=(),
    m0_scale: float = 1000.0,
    n_volumes: int = 120,
    voxel_size: float = 3.0,
    tr: float = 2.0,
    te: float = 0.030,
    noise_scale: float = 1.0,
    motion: bool = True,
    motion_scale: float = 1.0,
    resolution: int = 1,
    subsample=(2, 2, 2),
    slice_duration: float | None = None,
    dtype=np.float32,
) -> SimulatedBOLD:
    """Simulate the BOLD run of a subject whose ASL anatomy is ``anat``.

    ``anat`` is the subject's ``_ASLAnatomy`` (its mappings and its
    ``perfusion`` function); ``asl_shape`` the ASL grid's shape. See the
    module docstring for the model.
    """
    rng = np.random.default_rng([int(seed), 0xB01D])
    shape, affine, bold_to_asl = _bold_grid(rng, anat, asl_shape, float(voxel_size))
    pad = 3
    pshape = tuple(n + 2 * pad for n in shape)
    shift = np.eye(4)
    shift[:3, 3] = -pad
    paffine = affine @ shift
    fr, mni = _fractions(
        anat, bold_to_asl @ paffine, pshape, resolution=resolution, subsample=subsample
    )
    cbf_gm, cbf_wm = (c.reshape(pshape) for c in anat.perfusion(mni))
    cbf = fr["gm"] * cbf_gm + fr["wm"] * cbf_wm
    gain = _gain(rng, mni, dropout).reshape(pshape)
    static = static_signal(fr, cbf_gm, cbf_wm, gain, te, tr, m0_scale)
    amplitude = BOLD_AMPLITUDE * cbf / CBF_REF["gm"]

    # resting-state networks: smooth positive weights, unit RMS per voxel
    lo = apply_affine(paffine, np.zeros((1, 3)))[0] - 10
    hi = apply_affine(paffine, np.asarray(pshape, float)[None] - 1)[0] + 10
    weights = np.stack(
        [
            np.clip(
                1 + anatomy.SmoothField(rng, lo, hi, 30.0, 3.0).on_grid(paffine, pshape), 0, None
            )
            for _ in range(N_NETWORKS)
        ]
    )
    weights /= np.maximum(np.sqrt((weights**2).sum(0)), 1e-6)
    courses = np.stack([_bandlimited(rng, n_volumes, tr) for _ in range(N_NETWORKS)])

    n_slices = shape[2]
    sd = slice_duration if slice_duration is not None else tr / n_slices
    slice_times = np.arange(n_slices) * sd
    physio = noise.physio_timecourses(rng, n_volumes, tr, slice_times)
    weight_csf = 1.0 + 2.0 * fr["csf"]
    t = np.linspace(-1, 1, n_volumes)
    drift = rng.uniform(-0.01, 0.01) * t + rng.uniform(-0.005, 0.005) * (t**2 - 1 / 3)
    params = (
        random_motion(rng, n_volumes, scale=0.5 * motion_scale)[0]
        if motion
        else np.zeros((n_volumes, 6))
    )

    crop = (slice(pad, pad + shape[0]), slice(pad, pad + shape[1]), slice(pad, pad + shape[2]))
    coef_static = ndimage.spline_filter(static, 3, mode="nearest")
    coef_fluct = ndimage.spline_filter(static * amplitude, 3, mode="nearest")
    sigma = THERMAL_SD * m0_scale * noise_scale
    data = np.empty(shape + (n_volumes,), dtype=dtype)
    w_c = weights[(slice(None),) + crop]
    w_phys = weight_csf[crop]
    for k in range(n_volumes):
        if np.any(params[k]):
            kw = dict(mode="nearest", out_shape=shape, out_affine=affine)
            s_k = np.maximum(resample_moved(coef_static, paffine, params[k], **kw), 0.0)
            f_k = resample_moved(coef_fluct, paffine, params[k], **kw)
        else:
            s_k = static[crop]
            f_k = (static * amplitude)[crop]
        net = np.tensordot(courses[:, k], w_c, axes=1)
        phys = sum(PHYSIO_SD[c] * physio[c][k][None, None, :] for c in physio) * w_phys
        signal = s_k * (1 + noise_scale * (phys + drift[k])) + f_k * net
        data[..., k] = anatomy.rician(rng, np.asarray(signal, dtype), sigma)

    metadata = {
        "TaskName": "rest",
        "RepetitionTime": float(tr),
        "EchoTime": float(te),
        "FlipAngle": 77,
        "SliceTiming": [float(round(v, 6)) for v in slice_times],
        "MagneticFieldStrength": 3,
        "Manufacturer": "asl_pipeline simulator",
        "ManufacturersModelName": "asl_pipeline.simulate",
        "MRAcquisitionType": "2D",
        "PulseSequenceType": "Gradient-echo EPI",
    }
    return SimulatedBOLD(
        data=data,
        affine=affine,
        metadata=metadata,
        cbf=cbf[crop].astype(np.float32),
        amplitude=amplitude[crop].astype(np.float32),
        static=static[crop].astype(np.float32),
        motion=params,
        bold_to_asl=bold_to_asl,
    )
