"""True head motion for the simulator: parameters, matrices, resampling.

Convention (the one every ``motion`` array of :mod:`asl_pipeline.simulate`
follows, identical to :mod:`asl_pipeline.motion`'s so true and estimated
parameters compare directly): a row ``(tx, ty, tz, rx, ry, rz)`` holds
translations in mm along the scanner (RAS+) x, y, z axes and rotations in
radians about the x, y, z axes through the centre ``c`` of the volume's field
of view (world coordinate of the voxel-grid centre). It defines the 4x4 world
transform

    ``T = spm_rigid_matrix(row, c)``:  ``x -> R (x - c) + c + t``,
    ``R = Rx(rx) @ Ry(ry) @ Rz(rz)``

with SPM's ``spm_matrix`` rotation matrices
``Rx = [[1, 0, 0], [0, cos, sin], [0, -sin, cos]]``,
``Ry = [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]``,
``Rz = [[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]]``.
``T`` maps the head's reference position (volume 0, whose row is all zeros)
to its moved position: the tissue that sat at world point ``x`` in the
reference sits at ``T @ x`` in the moved volume, so the moved image is
``I_t(x) = I_0(T^{-1} x)``. Equivalently, the moved volume shows the reference
head through the voxel-to-world affine ``T^{-1} @ A`` (``A`` the image affine):
realigning volume ``t`` to volume 0 means resampling it through ``T``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from asl_pipeline.simulate.anatomy import voxel_centre_world


def spm_rigid_matrix(params, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rigid transform ``x -> R (x - c) + c + t``, ``R = Rx @ Ry @ Rz`` (SPM signs).

    The same convention as :func:`asl_pipeline.motion.params_to_matrix`, but
    written out on purpose rather than imported: the ground truth must not
    share code with the estimator it checks (a test asserts they agree).
    """
    tx, ty, tz, rx, ry, rz = np.asarray(params, float)
    cx, sx = np.cos(rx), np.sin(rx)
    cy, sy = np.cos(ry), np.sin(ry)
    cz, sz = np.cos(rz), np.sin(rz)
    rot = (
        np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
    )
    c = np.asarray(centre, float)
    mat = np.eye(4)
    mat[:3, :3] = rot
    mat[:3, 3] = np.array([tx, ty, tz]) + c - rot @ c
    return mat


def motion_matrix(params, affine, shape) -> np.ndarray:
    """World transform (4x4) of one motion row, about the FOV centre."""
    return spm_rigid_matrix(params, voxel_centre_world(affine, shape))


def resample_moved(
    coef,
    affine,
    params,
    *,
    order=3,
    cval=0.0,
    prefiltered=True,
    mode="constant",
    out_shape=None,
    out_affine=None,
):
    """Resample a reference-position image as seen after the head moved.

    Parameters
    ----------
    coef
        The reference image, or its spline coefficients
        (``scipy.ndimage.spline_filter(img, order)``) if ``prefiltered``.
    affine
        Voxel-to-world affine of ``coef``.
    params
        One motion row (see the module docstring).
    out_shape, out_affine
        The grid of the moved image (default: the input grid); the rotation
        centre is the centre of this grid. A reference image on a grid padded
        around the output grid lets tissue move into the field of view.
    """
    out_shape = tuple(coef.shape) if out_shape is None else tuple(out_shape)
    out_affine = affine if out_affine is None else out_affine
    mat = motion_matrix(params, out_affine, out_shape)
    # voxel of the moved image -> world -> reference world -> reference voxel
    vox = np.linalg.inv(affine) @ np.linalg.inv(mat) @ out_affine
    return ndimage.affine_transform(
        coef,
        vox[:3, :3],
        offset=vox[:3, 3],
        output_shape=out_shape,
        order=order,
        mode=mode,
        cval=cval,
        prefilter=not prefiltered,
    )


def random_motion(
    rng,
    n_volumes: int,
    *,
    drift_mm: float = 0.6,
    drift_deg: float = 0.5,
    jitter_mm: float = 0.04,
    jitter_deg: float = 0.03,
    jerk_rate: float = 1 / 60,
    spike_volumes=(),
    scale: float = 1.0,
):
    """Realistic rigid motion: slow drift, small jitter, step jerks and spikes.

    Drift is a smoothed random walk whose largest excursion is about
    ``drift_mm`` / ``drift_deg``; jerks are persistent steps (0.3-1 mm,
    0.2-0.6 deg) that happen at random volumes with probability ``jerk_rate``;
    each volume of ``spike_volumes`` gets a transient displacement (1-3 mm,
    0.5-1.5 deg) for that volume only. Row 0 is all zeros (reference). Returns
    ``(params, jerk_volumes)``.
    """
    n = int(n_volumes)
    params = np.zeros((n, 6))
    if n == 0:
        return params, []
    walk = np.cumsum(rng.standard_normal((n, 6)), axis=0)
    walk = ndimage.gaussian_filter1d(walk, sigma=3.0, axis=0, mode="nearest")
    walk -= walk[0]
    peak = np.maximum(np.abs(walk).max(axis=0), 1e-9)
    amp = np.r_[[drift_mm] * 3, [np.deg2rad(drift_deg)] * 3] * rng.uniform(0.3, 1.0, 6)
    params += walk / peak * amp
    params += rng.standard_normal((n, 6)) * np.r_[[jitter_mm] * 3, [np.deg2rad(jitter_deg)] * 3]
    jerks = [int(t) for t in np.flatnonzero(rng.random(n) < jerk_rate) if t > 0]
    for t in jerks:
        step = np.r_[
            rng.uniform(0.3, 1.0, 3) * rng.choice([-1, 1], 3),
            np.deg2rad(rng.uniform(0.2, 0.6, 3)) * rng.choice([-1, 1], 3),
        ] * rng.uniform(0.2, 1.0, 6)
        params[t:] += step
    for t in spike_volumes:
        spike = np.r_[
            rng.uniform(1.0, 3.0, 3) * rng.choice([-1, 1], 3),
            np.deg2rad(rng.uniform(0.5, 1.5, 3)) * rng.choice([-1, 1], 3),
        ] * rng.uniform(0.3, 1.0, 6)
        params[int(t)] += spike
    params *= scale
    params -= params[0]
    return params, jerks


def displacement_field(params, affine, shape, world=None) -> np.ndarray:
    """``T^{-1} x - x`` (mm, ``(*shape, 3)``): where each voxel's tissue came from.

    ``world`` optionally passes the precomputed voxel-centre coordinates
    ``(*shape, 3)`` of the grid.
    """
    mat = np.linalg.inv(motion_matrix(params, affine, shape))
    if world is None:
        ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
        world = ijk @ affine[:3, :3].T + affine[:3, 3]
    return world @ (mat[:3, :3] - np.eye(3)).T + mat[:3, 3]
