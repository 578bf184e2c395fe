"""Simulated gradient-echo field maps (``asl-simulate --distortion --fieldmap ...``).

A phase-difference map (BIDS case 1: ``phasediff`` + ``magnitude1``/``2``,
``EchoTime1``/``EchoTime2``) or a direct field map (case 3: ``fieldmap`` in Hz
+ ``magnitude``) of the same head-fixed B0 field that distorts the simulated
ASL series, acquired on its **own grid** (finer in-plane, thinner slices,
field of view shifted) and at its **own head position** (a small rigid move
from the first ASL volume), so a pipeline has to register the magnitude and
resample the field. The field and magnitude are resampled (trilinear and
cubic) from the simulator's ASL-resolution anatomy, so they carry no detail
finer than the ASL grid. The phase difference is written as Siemens integers
0..4095 (``-pi + 2 pi v / 4096``), with phase noise ``sigma / magnitude``
(random phase outside the head) and wrapped, as scanners write it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asl_pipeline.simulate.anatomy import PROTON_DENSITY, TISSUES, grid_affine, rician
from asl_pipeline.simulate.motion import resample_moved

#: Kinds of ``--fieldmap`` (``pepolar``: the reverse phase-encoded M0 instead).
FIELDMAP_KINDS = ("pepolar", "phasediff", "fieldmap")

#: Echo times (s) of the simulated phase-difference map (Siemens defaults at 3 T).
ECHO_TIMES = (0.00492, 0.00738)

#: Field-map voxel size relative to the ASL voxel size, and FOV extent relative
#: to the ASL FOV.
VOXEL_RATIO = (0.75, 0.75, 0.75)
FOV_RATIO = 1.1


@dataclass
class SimulatedFieldmap:
    """A simulated field map: images on their own grid and the BIDS sidecar."""

    #: ``"phasediff"`` or ``"fieldmap"``.
    kind: str
    #: Phase difference (uint16, 0..4095) or field (float32, Hz).
    data: np.ndarray
    #: Magnitude images (``magnitude1``, ``magnitude2``; or ``magnitude`` alone).
    magnitudes: tuple
    affine: np.ndarray
    #: Sidecar fields of the field image (EchoTime1/2 or Units).
    metadata: dict
    #: Head position of the field map relative to the first ASL volume (motion row).
    motion: np.ndarray
    #: The true field (Hz) on the field map's grid.
    field_hz: np.ndarray


def fieldmap_grid(asl_shape, asl_affine, rng) -> tuple[tuple[int, ...], np.ndarray]:
    """The field map's grid: finer voxels, a slightly larger FOV, shifted centre."""
    zooms = np.sqrt((asl_affine[:3, :3] ** 2).sum(0))
    vox = zooms * np.asarray(VOXEL_RATIO)
    shape = tuple(
        int(np.ceil(FOV_RATIO * n * z / v))
        for n, z, v in zip(asl_shape[:3], zooms, vox, strict=True)
    )
    centre = (asl_affine @ np.r_[(np.asarray(asl_shape[:3], float) - 1) / 2, 1.0])[:3]
    centre = centre + rng.uniform(-0.5, 0.5, 3) * vox + np.array([0.4, -0.3, 0.5]) * vox
    return shape, grid_affine(shape, vox, centre)


def simulate_fieldmap(
    kind: str, seed: int, padded_fractions: dict, padded_b0, padded_affine, shape_asl,
    asl_affine, sigma: float,
) -> SimulatedFieldmap:  # fmt: skip
    """Field map of ``kind`` of the head described on the padded ASL grid.

    ``padded_b0`` is the head-fixed field (Hz) and ``padded_fractions`` the
    tissue fractions on the grid of ``padded_affine``; ``sigma`` the thermal
    noise SD of the magnitude.
    """
    if kind not in FIELDMAP_KINDS[1:]:
        raise ValueError(f"kind must be one of {FIELDMAP_KINDS[1:]}, not {kind!r}")
    rng = np.random.default_rng([int(seed), 0xF3])  # its own stream: nothing else changes
    shape, affine = fieldmap_grid(shape_asl, asl_affine, rng)
    motion = np.r_[rng.uniform(-1.0, 1.0, 3), np.deg2rad(rng.uniform(-1.0, 1.0, 3))]

    def move(img, order):
        return resample_moved(
            np.asarray(img, float), padded_affine, motion, order=order, prefiltered=False,
            mode="nearest", out_shape=shape, out_affine=affine,
        )  # fmt: skip

    field = move(padded_b0, 1)
    # gradient-echo magnitude: proton density (no EPI dropout), fat of the scalp bright
    pd = dict(PROTON_DENSITY, scalp=0.9)
    magnitude = np.maximum(
        move(sum(padded_fractions[k].astype(float) * pd[k] for k in TISSUES), 3), 0.0
    )
    magnitude *= 1000.0
    mags = (rician(rng, magnitude, sigma), rician(rng, 0.85 * magnitude, sigma))
    delta = ECHO_TIMES[1] - ECHO_TIMES[0]
    phase_sd = np.minimum(sigma / np.maximum(mags[0], 1e-3), 1.0)
    noise = rng.normal(0.0, 1.0, shape) * phase_sd
    if kind == "fieldmap":  # as computed from the same two echoes by the scanner
        noisy = field + noise / (2 * np.pi * delta)
        return SimulatedFieldmap(
            kind, noisy.astype(np.float32), mags[:1], affine, {"Units": "Hz"}, motion,
            field.astype(np.float32),
        )  # fmt: skip
    phase = 2 * np.pi * delta * field + noise
    background = mags[0] < 0.1 * np.percentile(mags[0], 99)
    phase = np.where(background, rng.uniform(-np.pi, np.pi, shape), phase)
    wrapped = np.angle(np.exp(1j * phase))
    data = np.mod(np.round((wrapped + np.pi) * 4096 / (2 * np.pi)), 4096).astype(np.uint16)
    md = {"EchoTime1": ECHO_TIMES[0], "EchoTime2": ECHO_TIMES[1]}
    return SimulatedFieldmap(kind, data, mags, affine, md, motion, field.astype(np.float32))
