"""Susceptibility distortion correction (SDC) from reverse phase-encoded M0 pairs.

EPI and spiral readouts map an off-resonance field ``f`` (Hz) into a shift of
the signal along the phase-encoding (PE) axis only: the tissue at voxel ``x``
is read at ``x + a f(x) e_pe``, ``a = s * TotalReadoutTime`` voxels per Hz,
``s = +1`` for ``PhaseEncodingDirection`` ``i``/``j``/``k`` and ``-1`` for
``i-``/``j-``/``k-`` (the sign convention of BIDS and SDCFlows: a positive
field moves the signal towards the positive end of the PE axis). Where the
shift stretches the image the signal is spread over more voxels and where it
compresses it piles up, so a distorted image ``D`` of the undistorted ``U``
obeys (signal conservation along the PE line)::

    U(x) = D(x + a f(x) e_pe) * (1 + a df/dpe(x))                         (1)

with ``df/dpe`` in Hz per voxel along the PE axis. ``(1 + a df/dpe)`` is the
Jacobian of the one-dimensional mapping; :func:`unwarp` applies (1).

Estimation (PEPOLAR: two images of the same object with opposite PE
directions, the "blip-up/blip-down" pair, here two M0 scans). Both sides of
(1) are the same undistorted image, so the field minimises

    E(f) = 1/2 sum_x [W_1(x) - W_2(x)]^2 + lambda R(f),
    W_k(x) = D_k(x + a_k f(x) e_pe) (1 + a_k df/dpe(x))

the symmetric residual of TOPUP (Andersson et al. 2003) and AFNI 3dQwarp
``-plusminus``, with the Jacobian modulation of TOPUP (so the intensity
pile-ups of the two images are explained, not fought by the regulariser).
Why this and not antspyx SyN restricted to the PE axis: SyN matches
intensities without the Jacobian term and does not tie the two images'
displacements to one field with opposite signs, so pile-ups would have to
be absorbed by the deformation; the model here is the physics of the
readout, and on the simulator it reaches a mean error of about 0.006 voxel
(``benchmarks/sdc.py``). A restricted SyN was not benchmarked. The field
is a tensor-product cubic B-spline (smooth by construction; the B0 field is
smooth away from air-tissue boundaries), its coefficients found with
L-BFGS on the exact gradient of ``E``, coarse to fine (four levels of
image smoothing and control-point spacing, 40 mm to 10 mm), regularised by
a P-spline penalty (squared second differences of the coefficients along
each axis).

Limits (documented in the README): the two images must be on the same voxel
grid and the head must not move between them (no rigid alignment is
estimated between the two; a move of a voxel biases the field near edges);
the field is estimated where there is signal and extrapolated smoothly
elsewhere; signal lost to intra-voxel dephasing is not restored; very
strong fields that fold the image (``|a df/dpe| >= 1``) cannot be unfolded.

Phase-difference and direct (gradient-echo) field maps are read by
:mod:`asl_pipeline.fieldmap`; :func:`field_source` picks the field map of a
run among both kinds.

Nothing here imports nipype: images are arrays and metadata are dicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from asl_pipeline.errors import ASLInputError
from asl_pipeline.smoothing import fwhm_to_sigma

#: ``PhaseEncodingDirection`` -> (array axis, sign).
PE_DIRECTIONS = {
    "i": (0, 1),
    "i-": (0, -1),
    "j": (1, 1),
    "j-": (1, -1),
    "k": (2, 1),
    "k-": (2, -1),
}

#: Longest plausible ``TotalReadoutTime`` (s); EPI readouts are 10-100 ms.
MAX_READOUT_TIME = 0.5

#: Coarse-to-fine schedule of :func:`estimate_pepolar_field`:
#: (Gaussian FWHM of the images in mm, B-spline control-point spacing in mm).
#: The last level (unsmoothed images, 10 mm) and the weaker penalty below
#: took the largest displacement error in the brain from 0.77-1.20 to
#: 0.11-0.21 voxel on six simulated subjects (seeds 3, 11, 19, 5, 23, 31;
#: 16 mm and 0.005 before), and from 0.67-0.78 to 0.32-0.39 with the
#: reverse M0 moved by 0.3 voxel across the phase encoding
#: (``benchmarks/pepolar_levels.py``, ``benchmarks/RESULTS.md``).
DEFAULT_LEVELS = ((12.0, 40.0), (6.0, 24.0), (3.0, 16.0), (0.0, 10.0))

#: Weight of the P-spline penalty (per coefficient, relative to the mean
#: squared residual of one voxel of unit-normalised images).
DEFAULT_SMOOTHNESS = 0.001


@dataclass(frozen=True)
class PhaseEncoding:
    """Phase-encoding geometry of one image (from its sidecar)."""

    #: ``PhaseEncodingDirection`` as written (``i``, ``j-``, ...).
    direction: str
    #: Array axis of the phase encoding (0, 1 or 2).
    axis: int
    #: +1 or -1.
    sign: int
    #: ``TotalReadoutTime`` (s).
    readout_time: float

    @property
    def voxels_per_hz(self) -> float:
        """Signed shift along the PE array axis, in voxels, per Hz of field."""
        return self.sign * self.readout_time


def phase_encoding(metadata: dict, file=None) -> PhaseEncoding:
    """Read ``PhaseEncodingDirection`` and ``TotalReadoutTime`` from a sidecar.

    Raises :class:`~asl_pipeline.errors.ASLInputError` naming ``file`` and the
    field when either is missing or invalid.
    """
    direction = metadata.get("PhaseEncodingDirection")
    if direction not in PE_DIRECTIONS:
        raise ASLInputError(
            "is missing." if direction is None else f"is {direction!r}, not a BIDS direction.",
            file=file,
            field="PhaseEncodingDirection",
            fix="set it to one of i, i-, j, j-, k, k- (dcm2niix writes it), or run with "
            "--ignore fieldmaps to skip distortion correction.",
        )
    trt = metadata.get("TotalReadoutTime")
    if trt is None and metadata.get("EffectiveEchoSpacing") is not None:
        raise ASLInputError(
            "is missing (EffectiveEchoSpacing alone needs the reconstruction matrix, "
            "which is ambiguous with partial Fourier and in-plane acceleration).",
            file=file,
            field="TotalReadoutTime",
            fix="add TotalReadoutTime in seconds (dcm2niix writes it), or run with "
            "--ignore fieldmaps.",
        )
    if (
        isinstance(trt, bool)
        or not isinstance(trt, int | float)
        or not 0 < trt <= MAX_READOUT_TIME
    ):
        raise ASLInputError(
            "is missing." if trt is None else f"is {trt!r}, not a time in (0, 0.5] s.",
            file=file,
            field="TotalReadoutTime",
            fix="add TotalReadoutTime in seconds (e.g. 0.03; dcm2niix writes it), or run "
            "with --ignore fieldmaps to skip distortion correction.",
        )
    axis, sign = PE_DIRECTIONS[direction]
    return PhaseEncoding(direction, axis, sign, float(trt))


@dataclass(frozen=True)
class FieldCorrection:
    """A field map to undo during the motion reslice (:mod:`asl_pipeline.motion`).

    ``field_hz`` is on the ASL grid; ``pe`` is the ASL series' phase encoding
    and ``m0_pe`` the separate M0's (default: ``pe``). ``frame="m0"``: the
    field is in the undistorted space of the M0 scan (estimated from the M0
    pair) and is moved with the M0's motion estimate; ``"reference"``: it is
    already in the reference (first volume's) frame.
    """

    field_hz: np.ndarray
    pe: PhaseEncoding
    m0_pe: PhaseEncoding | None = None
    frame: str = "m0"


# --------------------------------------------------------------------------
# unit conversions


def hz_to_voxels(field_hz, pe: PhaseEncoding) -> np.ndarray:
    """Field (Hz) -> signed displacement along the PE array axis (voxels)."""
    return np.asarray(field_hz, dtype=float) * pe.voxels_per_hz


def voxels_to_hz(displacement, pe: PhaseEncoding) -> np.ndarray:
    """Signed displacement along the PE array axis (voxels) -> field (Hz)."""
    return np.asarray(displacement, dtype=float) / pe.voxels_per_hz


def voxels_to_mm(displacement, pe: PhaseEncoding, zooms) -> np.ndarray:
    """Displacement in voxels -> mm along the PE axis (voxel size ``zooms[axis]``)."""
    return np.asarray(displacement, dtype=float) * float(zooms[pe.axis])


def mm_to_voxels(displacement_mm, pe: PhaseEncoding, zooms) -> np.ndarray:
    """Displacement in mm along the PE axis -> voxels."""
    return np.asarray(displacement_mm, dtype=float) / float(zooms[pe.axis])


# --------------------------------------------------------------------------
# checks of a reverse phase-encoded pair


def check_pepolar_pair(first, second) -> tuple[PhaseEncoding, PhaseEncoding]:
    """Validate a PEPOLAR pair; returns the two :class:`PhaseEncoding`.

    ``first`` / ``second`` are ``(file, metadata, shape, affine)``. Refused
    with an error naming the file, field and fix: a missing or invalid
    ``PhaseEncodingDirection`` or ``TotalReadoutTime``; the same direction
    twice; directions along different axes; different voxel grids.
    """
    (f1, md1, shape1, aff1), (f2, md2, shape2, aff2) = first, second
    pe1, pe2 = phase_encoding(md1, f1), phase_encoding(md2, f2)
    if pe1.axis != pe2.axis:
        raise ASLInputError(
            f"is {pe2.direction!r} but {f1} is encoded along {pe1.direction!r}: a "
            "PEPOLAR pair encodes the same axis in opposite directions.",
            file=f2,
            field="PhaseEncodingDirection",
            fix=f"use a reverse-PE image encoded along {pe1.direction.rstrip('-')}- or "
            f"{pe1.direction.rstrip('-')}, or run with --ignore fieldmaps.",
        )
    if pe1.sign == pe2.sign:
        raise ASLInputError(
            f"is {pe2.direction!r}, the same direction as {f1}: the two images are "
            "distorted alike and give no field.",
            file=f2,
            field="PhaseEncodingDirection",
            fix="pair the M0 with a reverse phase-encoded one (e.g. j and j-); if the "
            "sidecar is wrong, correct it, or run with --ignore fieldmaps.",
        )
    if tuple(shape1[:3]) != tuple(shape2[:3]) or not np.allclose(aff1, aff2, atol=1e-3):
        raise ASLInputError(
            f"has the voxel grid {tuple(shape2[:3])} (or an affine) different from {f1} "
            f"({tuple(shape1[:3])}).",
            file=f2,
            field="image dimensions/affine",
            fix="acquire the reverse-PE M0 with the same matrix, slices and orientation, "
            "or run with --ignore fieldmaps.",
        )
    return pe1, pe2


# --------------------------------------------------------------------------
# B-spline field model


def _bspline3(t):
    t = np.abs(t)
    out = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, 0.0)
    return np.where((t >= 1) & (t < 2), (2 - t) ** 3 / 6, out)


def _bspline3_deriv(t):
    s = np.sign(t)
    t = np.abs(t)
    out = np.where(t < 1, -2 * t + 1.5 * t**2, 0.0)
    out = np.where((t >= 1) & (t < 2), -0.5 * (2 - t) ** 2, out)
    return s * out


def _basis(n: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """``(n, m)`` cubic B-spline basis on voxel centres 0..n-1 and its derivative
    (per voxel); control points ``spacing`` voxels apart, covering the grid."""
    spacing = max(float(spacing), 1.0)
    m = int(np.ceil((n - 1) / spacing)) + 3
    centre = (n - 1) / 2
    knots = centre + (np.arange(m) - (m - 1) / 2) * spacing
    t = (np.arange(n)[:, None] - knots[None, :]) / spacing
    return _bspline3(t), _bspline3_deriv(t) / spacing


class _SplineField:
    """Tensor-product cubic B-spline on a 3D voxel grid (values and PE derivative)."""

    def __init__(self, shape, spacing_vox, axis):
        self.axis = axis
        pairs = [_basis(n, s) for n, s in zip(shape, spacing_vox, strict=True)]
        self.B = [p[0] for p in pairs]
        self.dB = pairs[axis][1]
        self.coef_shape = tuple(b.shape[1] for b in self.B)

    def _mats(self, deriv):
        mats = list(self.B)
        if deriv:
            mats[self.axis] = self.dB
        return mats

    def evaluate(self, coef, deriv=False):
        x, y, z = self._mats(deriv)
        return np.einsum("ia,jb,kc,abc->ijk", x, y, z, coef, optimize=True)

    def adjoint(self, grid, deriv=False):
        x, y, z = self._mats(deriv)
        return np.einsum("ia,jb,kc,ijk->abc", x, y, z, grid, optimize=True)

    def fit(self, values):
        """Least-squares coefficients of a field sampled on the grid (separable)."""
        px, py, pz = (np.linalg.pinv(b) for b in self.B)
        return np.einsum("ai,bj,ck,ijk->abc", px, py, pz, values, optimize=True)


def _penalty(coef):
    """P-spline penalty (sum of squared second differences along each axis) and gradient."""
    value, grad = 0.0, np.zeros_like(coef)
    for ax in range(3):
        if coef.shape[ax] < 3:
            continue
        d2 = np.diff(coef, 2, axis=ax)
        value += float((d2**2).sum())
        # adjoint of the second difference: second difference of the padded array
        pad = [(0, 0)] * 3
        pad[ax] = (2, 2)
        grad += 2 * np.diff(np.pad(d2, pad), 2, axis=ax)
    return value, grad


# --------------------------------------------------------------------------
# warping


def _prefilter_along(image, axis):
    """Cubic B-spline coefficients of ``image`` along ``axis`` only."""
    return ndimage.spline_filter1d(np.asarray(image, float), 3, axis=axis, mode="nearest")


def _sample_along(coef, axis, shift, deriv=False):
    """Cubic B-spline interpolation of every line along ``axis`` at ``x + shift``.

    ``coef`` comes from :func:`_prefilter_along`; positions outside the line
    take the value at its end. Returns the values and, with ``deriv``, the
    derivative of the same interpolant along the axis (exact, so the cost of
    :func:`estimate_pepolar_field` and its gradient agree).
    """
    c = np.moveaxis(coef, axis, -1)
    s = np.moveaxis(np.asarray(shift, float), axis, -1)
    n = c.shape[-1]
    pos = np.clip(np.arange(n) + s, 0.0, n - 1.0)
    base = np.floor(pos).astype(np.intp)
    t = pos - base
    # cubic B-spline weights of the taps base-1 .. base+2 and their derivatives
    w = (
        (1 - t) ** 3 / 6,
        (3 * t**3 - 6 * t**2 + 4) / 6,
        (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
        t**3 / 6,
    )
    dw = (-((1 - t) ** 2) / 2, (3 * t**2 - 4 * t) / 2, (-3 * t**2 + 2 * t + 1) / 2, t**2 / 2)
    val = np.zeros(s.shape)
    der = np.zeros(s.shape) if deriv else None
    for k in range(4):
        # mirror the coefficient indices at the ends (consistent with mode="nearest")
        idx = base + (k - 1)
        idx = np.where(idx < 0, -idx - 1, idx)
        idx = np.where(idx > n - 1, 2 * n - 1 - idx, idx)
        tap = np.take_along_axis(c, idx, axis=-1)
        val += w[k] * tap
        if deriv:
            der += dw[k] * tap
    inside = (np.arange(n) + s >= 0) & (np.arange(n) + s <= n - 1)
    if deriv:
        der = np.where(inside, der, 0.0)
        return np.moveaxis(val, -1, axis), np.moveaxis(der, -1, axis)
    return np.moveaxis(val, -1, axis)


def _warp_image(image, axis, shift, order=3):
    """``image`` read at ``x + shift`` along ``axis`` (cubic or linear)."""
    if order == 3:
        return _sample_along(_prefilter_along(image, axis), axis, shift)
    coords = np.indices(image.shape, dtype=float)
    coords[axis] += shift
    return ndimage.map_coordinates(image, coords, order=order, mode="nearest")


def pe_derivative(field, axis: int) -> np.ndarray:
    """Derivative of a field along the PE array axis (central differences)."""
    field = np.asarray(field, dtype=float)
    if field.shape[axis] < 2:
        return np.zeros_like(field)
    return np.gradient(field, axis=axis)


def unwarp(data, field_hz, pe: PhaseEncoding, *, order: int = 3, jacobian: bool = True):
    """Undistort a 3D or 4D image with equation (1) of the module docstring.

    ``field_hz`` is the field (Hz) on the same (undistorted) voxel grid.
    Every volume is resampled once along the PE axis (cubic by default) and,
    with ``jacobian``, multiplied by ``1 + a df/dpe`` (clipped at 0).
    """
    data = np.asarray(data, dtype=np.float32)
    shift = hz_to_voxels(field_hz, pe)
    jac = jacobian_map(field_hz, pe) if jacobian else 1.0
    vols = data[..., None] if data.ndim == 3 else data
    out = np.empty(vols.shape, np.float32)
    for t in range(vols.shape[-1]):
        out[..., t] = _warp_image(vols[..., t], pe.axis, shift, order) * jac
    return out[..., 0] if data.ndim == 3 else out


def jacobian_map(field_hz, pe: PhaseEncoding) -> np.ndarray:
    """``1 + a df/dpe``: the intensity correction of :func:`unwarp` (>= 0)."""
    return np.maximum(1.0 + pe_derivative(hz_to_voxels(field_hz, pe), pe.axis), 0.0)


def distort(undistorted, field_hz, pe: PhaseEncoding, *, jacobian: bool = True, oversample=4):
    """Forward model: the image a readout with ``pe`` records of ``undistorted``.

    Signal is pushed, not pulled: every undistorted voxel is split into
    ``oversample`` sub-samples along the PE axis, each moved to
    ``x + a f(x)`` and deposited linearly on the grid, so intensity is
    conserved along every PE line (the Jacobian), pile-ups and stretches
    included. ``jacobian=False`` pulls instead (no intensity change). Used
    by the simulator.
    """
    data = np.asarray(undistorted, dtype=float)
    shift = hz_to_voxels(field_hz, pe)
    if not jacobian:
        return _warp_image(data, pe.axis, -shift, order=1)
    ax = pe.axis
    n = data.shape[ax]
    d = np.moveaxis(data, ax, -1).reshape(-1, n)
    s = np.moveaxis(shift, ax, -1).reshape(-1, n)
    out = np.zeros_like(d)
    rows = np.arange(d.shape[0])[:, None]
    for k in range(oversample):
        off = (k + 0.5) / oversample - 0.5
        pos_src = np.arange(n)[None, :] + off
        sh = _interp_rows(s, pos_src[0])  # shift at the sub-samples (linear along the line)
        pos = pos_src + sh
        lo = np.floor(pos).astype(int)
        w = pos - lo
        val = d / oversample
        for idx, wt in ((lo, 1 - w), (lo + 1, w)):
            ok = (idx >= 0) & (idx < n)
            np.add.at(out, (np.broadcast_to(rows, idx.shape)[ok], idx[ok]), (val * wt)[ok])
    out = out.reshape(np.moveaxis(data, ax, -1).shape)
    return np.moveaxis(out, -1, ax)


def _interp_rows(values, positions):
    """Linear interpolation of every row of ``values`` (on 0..n-1) at ``positions``."""
    n = values.shape[1]
    p = np.clip(positions, 0, n - 1)
    lo = np.minimum(np.floor(p).astype(int), n - 2) if n > 1 else np.zeros_like(p, int)
    w = p - lo
    if n == 1:
        return np.repeat(values, len(positions), axis=1)
    return values[:, lo] * (1 - w) + values[:, lo + 1] * w


# --------------------------------------------------------------------------
# estimation


@dataclass
class PepolarFit:
    """Result of :func:`estimate_pepolar_field`."""

    #: Field (Hz) on the images' voxel grid, in the undistorted space.
    field_hz: np.ndarray
    #: Each image undistorted with the field (Jacobian applied).
    corrected: tuple[np.ndarray, np.ndarray]
    #: Mean absolute difference of the two corrected images relative to that of
    #: the two inputs, inside the signal mask (1 = no better than uncorrected).
    residual_ratio: float
    #: Optimiser iterations per level.
    iterations: tuple[int, ...]


def _normalise(a, b):
    scale = np.percentile(np.concatenate([a.ravel(), b.ravel()]), 99)
    scale = scale if scale > 0 else 1.0
    return a / scale, b / scale


def estimate_pepolar_field(
    image1,
    image2,
    pe1: PhaseEncoding,
    pe2: PhaseEncoding,
    zooms,
    *,
    levels=DEFAULT_LEVELS,
    smoothness: float = DEFAULT_SMOOTHNESS,
    max_iter: int = 50,
) -> PepolarFit:
    """Estimate the B0 field (Hz) from two images with opposite phase encoding.

    Parameters
    ----------
    image1, image2
        3D arrays on the same grid (4D: volumes are averaged).
    pe1, pe2
        Their phase encoding (same axis, opposite signs; see
        :func:`check_pepolar_pair`).
    zooms
        Voxel size (mm), for the smoothing and control-point spacing of ``levels``.
    levels
        ``(image FWHM mm, control spacing mm)`` per level, coarse to fine.
    smoothness
        Weight of the P-spline penalty.
    """
    if pe1.axis != pe2.axis or pe1.sign == pe2.sign:
        raise ValueError("a PEPOLAR pair needs the same axis and opposite directions")
    d1 = np.asarray(image1, dtype=float)
    d2 = np.asarray(image2, dtype=float)
    d1 = d1.mean(-1) if d1.ndim == 4 else d1
    d2 = d2.mean(-1) if d2.ndim == 4 else d2
    if d1.shape != d2.shape or d1.ndim != 3:
        raise ValueError(f"images must be 3D on one grid, got {d1.shape} and {d2.shape}")
    d1, d2 = _normalise(np.maximum(d1, 0), np.maximum(d2, 0))
    zooms = np.asarray(zooms, dtype=float)[:3]
    axis = pe1.axis
    # unknown: u = field in units of the first image's voxels (a_1 = +-1)
    ref_t = pe1.readout_time
    a = (pe1.voxels_per_hz / ref_t, pe2.voxels_per_hz / ref_t)
    shape = d1.shape
    coef = None
    spline = None
    iters = []
    n_vox = float(np.prod(shape))
    for fwhm, spacing in levels:
        sigma = fwhm_to_sigma(fwhm, zooms)
        imgs = [ndimage.gaussian_filter(d, sigma, mode="nearest") for d in (d1, d2)]
        coefs = [_prefilter_along(i, axis) for i in imgs]
        new = _SplineField(shape, float(spacing) / zooms, axis)
        coef = np.zeros(new.coef_shape) if spline is None else new.fit(spline.evaluate(coef))
        spline = new
        lam = smoothness * n_vox / np.prod(spline.coef_shape)

        def cost(c, spline=spline, coefs=coefs, lam=lam):
            c = c.reshape(spline.coef_shape)
            u = spline.evaluate(c)
            du = spline.evaluate(c, deriv=True)
            w, dw_u, dw_du = [], [], []
            for k in range(2):
                val, g = _sample_along(coefs[k], axis, a[k] * u, deriv=True)
                jac = 1 + a[k] * du
                w.append(val * jac)
                dw_u.append(a[k] * g * jac)
                dw_du.append(a[k] * val)
            r = w[0] - w[1]
            pen, pen_grad = _penalty(c)
            e = 0.5 * float((r**2).sum()) + 0.5 * lam * pen
            grad = spline.adjoint(r * (dw_u[0] - dw_u[1]))
            grad += spline.adjoint(r * (dw_du[0] - dw_du[1]), deriv=True)
            grad += 0.5 * lam * pen_grad
            return e, grad.ravel()

        res = optimize.minimize(
            cost, coef.ravel(), jac=True, method="L-BFGS-B",
            options={"maxiter": int(max_iter), "gtol": 1e-9, "ftol": 1e-12},
        )  # fmt: skip
        coef = res.x.reshape(spline.coef_shape)
        iters.append(int(res.nit))
    u = spline.evaluate(coef)
    field_hz = u / ref_t  # image k is displaced by a_k u = voxels_per_hz_k * u / ref_t
    c1 = unwarp(image1 if np.ndim(image1) == 3 else np.mean(image1, -1), field_hz, pe1)
    c2 = unwarp(image2 if np.ndim(image2) == 3 else np.mean(image2, -1), field_hz, pe2)
    raw1 = np.asarray(image1, float) if np.ndim(image1) == 3 else np.mean(image1, -1)
    raw2 = np.asarray(image2, float) if np.ndim(image2) == 3 else np.mean(image2, -1)
    mask = (raw1 + raw2) > 0.2 * np.percentile(raw1 + raw2, 99)
    before = np.abs(raw1 - raw2)[mask].mean() if mask.any() else 0.0
    after = np.abs(c1 - c2)[mask].mean() if mask.any() else 0.0
    return PepolarFit(
        field_hz=field_hz.astype(np.float32),
        corrected=(c1, c2),
        residual_ratio=float(after / before) if before > 0 else 0.0,
        iterations=tuple(iters),
    )


# --------------------------------------------------------------------------
# choosing the pair of a BIDS run


@dataclass(frozen=True)
class PepolarPair:
    """The reverse phase-encoded pair of an ASL run, checked (:func:`pepolar_pair`)."""

    #: First image of the pair (the run's M0 scan when it is one of the pair).
    in_file: str
    in_metadata: dict
    #: The image with the reverse phase encoding.
    reverse_file: str
    reverse_metadata: dict
    #: ``"m0"`` when ``in_file`` is the run's M0 (the field is then moved with
    #: the M0's motion estimate), else ``"reference"`` (assumed in register
    #: with the first ASL volume).
    frame: str
    #: Phase encoding of the ASL series and of its separate M0 (or None).
    asl_pe: PhaseEncoding
    m0_pe: PhaseEncoding | None


def _grid(path):
    import nibabel as nib

    img = nib.load(str(path))
    return img.shape, img.affine


def pepolar_pair(run) -> PepolarPair | None:
    """The PEPOLAR pair of an :class:`~asl_pipeline.bids.ASLRun`, or None.

    The run's separate M0 with the first reverse-PE M0 of ``fmap/`` (matched
    by the reader through ``IntendedFor`` or ``B0FieldIdentifier``/
    ``B0FieldSource``) whose direction is opposite; else two ``fmap/`` M0s of
    opposite directions; None without such files. Refuses (naming the file
    and field) sidecars without a valid ``PhaseEncodingDirection`` or
    ``TotalReadoutTime`` (the ASL series' included), pairs encoded the same
    way or on another grid, and an ASL series encoded along another axis.
    """
    files = [str(p) for p in run.m0_pepolar_files]
    metas = list(run.m0_pepolar_metadata) or [{} for _ in files]
    if not files:
        return None
    separate = run.m0_type == "Separate" and run.m0_file is not None
    if separate:
        first = (str(run.m0_file), dict(run.m0_metadata))
        candidates = list(zip(files, metas, strict=True))
        frame = "m0"
    elif len(files) >= 2:
        first, candidates, frame = (
            (files[0], metas[0]),
            list(zip(files[1:], metas[1:], strict=True)),
            "reference",
        )
    else:
        return None
    pe_first = phase_encoding(first[1], first[0])
    # prefer a reverse-direction image; the first candidate otherwise (its error is the message)
    candidates.sort(key=lambda c: PE_DIRECTIONS.get(c[1].get("PhaseEncodingDirection"), (9, 0))
                    != (pe_first.axis, -pe_first.sign))  # fmt: skip
    reverse = candidates[0]
    check_pepolar_pair((*first, *_grid(first[0])), (*reverse, *_grid(reverse[0])))
    asl_pe = phase_encoding(run.metadata, run.sidecar_file)
    if asl_pe.axis != pe_first.axis:
        raise ASLInputError(
            f"is {asl_pe.direction!r} but the field map pair ({first[0]}) is encoded along "
            f"{pe_first.direction!r}: the field cannot be applied along another axis.",
            file=run.sidecar_file,
            field="PhaseEncodingDirection",
            fix="check the sidecars' PhaseEncodingDirection, or run with --ignore fieldmaps.",
        )
    shape, _ = _grid(first[0])
    if tuple(shape[:3]) != tuple(run.shape[:3]):
        raise ASLInputError(
            f"has the grid {tuple(shape[:3])}, the ASL series {tuple(run.shape[:3])}.",
            file=first[0],
            field="image dimensions",
            fix="acquire the M0 pair on the ASL grid, or run with --ignore fieldmaps.",
        )
    return PepolarPair(
        in_file=first[0],
        in_metadata=first[1],
        reverse_file=reverse[0],
        reverse_metadata=reverse[1],
        frame=frame,
        asl_pe=asl_pe,
        m0_pe=pe_first if separate else None,
    )


def field_source(run):
    """The field map that corrects a run: a :class:`PepolarPair`, a
    :class:`~asl_pipeline.fieldmap.FieldmapSource` (phasediff or direct map), or None.

    Both kinds are checked (errors name the file, field and fix). When a run
    has both, the one whose ``B0FieldIdentifier`` the run names in its
    ``B0FieldSource`` wins if only that one is named; otherwise the PEPOLAR
    pair. The choice is logged.
    """
    import logging

    from asl_pipeline.fieldmap import fieldmap_source

    pair = pepolar_pair(run)
    other = fieldmap_source(run)
    if pair is None or other is None:
        return pair if other is None else other
    sources = _ids(run.metadata.get("B0FieldSource"))
    pair_named = bool(sources & (_ids(pair.reverse_metadata.get("B0FieldIdentifier"))
                                 | _ids(pair.in_metadata.get("B0FieldIdentifier"))))  # fmt: skip
    other_named = bool(sources & _ids(other.fmap.metadata.get("B0FieldIdentifier")))
    chosen = other if other_named and not pair_named else pair
    logging.getLogger("nipype.workflow").info(
        "%s: field maps of two kinds (PEPOLAR %s, %s %s); using %s (%s).",
        run.asl_file,
        pair.reverse_file,
        other.fmap.kind,
        other.fmap.file,
        "the " + other.fmap.kind if chosen is other else "the PEPOLAR pair",
        "named by B0FieldSource" if chosen is other else
        ("named by B0FieldSource" if pair_named else "PEPOLAR preferred when B0FieldSource "
         "names neither alone"),
    )  # fmt: skip
    return chosen


def _ids(value) -> set[str]:
    """``B0FieldSource``/``B0FieldIdentifier`` (a string or a list) as a set."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, str)}
    return set()
