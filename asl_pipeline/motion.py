"""ASL-aware rigid-body motion correction (methods spec, section 3; Wang 2012).

Label and control images differ slightly in intensity, so a realignment to
their mean picks the difference up as a spurious zig-zag in the motion
parameters. :func:`realign_asl` therefore

1. estimates six rigid-body parameters per volume (two passes as SPM does:
   first against the first volume, then against the mean of the volumes
   realigned by the first pass),
2. removes the zig-zag regressor (+1 control, -1 label) from each parameter
   time course by orthogonal projection, keeping the intercept,
3. reslices every volume once with the cleaned parameters.

Conventions (used by every function in this module)
----------------------------------------------------
``params`` is an ``(n, 6)`` array ``(tx, ty, tz, rx, ry, rz)``: translations
in mm along the world (scanner RAS+) axes, rotations in radians about the world
x, y and z axes through ``centre`` (default: the world coordinate of the
centre of the voxel grid). The rigid matrix is

``M = T(t) @ C @ Rx(rx) @ Ry(ry) @ Rz(rz) @ C^-1``

(``C`` translates by ``centre``; the rotation order is SPM's ``spm_matrix``).
``M`` maps a point ``x`` of the reference (world mm) to where the same piece of
head lies in volume ``k``: ``volume_k(M_k x) = reference(x)``. The parameters
therefore describe how the head moved in the scanner, and reslicing reads
``volume_k`` at ``M_k x`` for every reference voxel ``x``.

Estimation is a Gauss-Newton least-squares fit in the inverse-compositional
form (Baker & Matthews 2004): the Jacobian comes from the gradient of the
smoothed reference, so it and the normal matrix are computed once per pass
and level; every iteration resamples each volume at the informative voxels
only and solves one 6x6 system per volume. Pass 1 runs a two-level pyramid
(half resolution with heavier smoothing, then full resolution, trilinear);
pass 2 refines against the mean with cubic B-splines. Slices whose residual
is far above the volume's median (2D slice drops, ghosts) are down-weighted.
Final poses are expressed relative to the first volume, as SPM does.

SPM's ``rp_*.txt`` holds the inverse matrices about the world origin; see
:func:`spm_rp_to_params`.

Susceptibility distortion correction composes with the reslice: given a
:class:`~asl_pipeline.sdc.FieldCorrection`, volume ``k`` is read at
``A^-1 M_k x + a f(x) e_pe`` (motion, then the shift along the phase-encoding
axis of the acquisition grid, :mod:`asl_pipeline.sdc`) and multiplied by the
Jacobian ``1 + a df/dpe``, so every volume is still interpolated once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from asl_pipeline.errors import ASLInputError
from asl_pipeline.rundesc import pair_volumes
from asl_pipeline.sdc import FieldCorrection, hz_to_voxels, jacobian_map
from asl_pipeline.smoothing import fwhm_to_sigma

#: Radius (mm) of the sphere on which rotations become displacements for the
#: framewise displacement (Power et al. 2012).
FD_RADIUS = 50.0

#: Volume types of ``aslcontext.tsv`` that enter the zig-zag regressor.
ZIGZAG_SIGN = {"control": 1.0, "label": -1.0}

#: Volume types that are not registered: a difference or CBF image (ΔM is
#: about 1% of the signal) has the contrast of no other volume, so a fit to
#: the series' mean moves it by millimetres where nothing moved. They keep the
#: pose of the first volume that is registered (the poses' origin).
UNREGISTERED_TYPES = ("deltam", "cbf")


def registered_volumes(volume_types) -> np.ndarray:
    """Indices of the volumes whose motion is estimated (all but
    :data:`UNREGISTERED_TYPES`)."""
    return np.array(
        [
            i
            for i, t in enumerate(volume_types)
            if str(t).strip().lower() not in UNREGISTERED_TYPES
        ],
        dtype=int,
    )


# --------------------------------------------------------------------------
# Parameter <-> matrix conversions
# --------------------------------------------------------------------------
def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, s], [0, -s, c]], dtype=float)


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=float)


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]], dtype=float)


def params_to_matrix(params, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 world matrix (or an ``(n, 4, 4)`` stack) of rigid parameters.

    See the module docstring for the conventions.
    """
    p = np.asarray(params, dtype=float)
    single = p.ndim == 1
    p = np.atleast_2d(p)
    c = np.asarray(centre, dtype=float)
    out = np.tile(np.eye(4), (len(p), 1, 1))
    for i, (tx, ty, tz, rx, ry, rz) in enumerate(p):
        rot = _rot_x(rx) @ _rot_y(ry) @ _rot_z(rz)
        out[i, :3, :3] = rot
        out[i, :3, 3] = np.array([tx, ty, tz]) + c - rot @ c
    return out[0] if single else out


def matrix_to_params(matrix, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Inverse of :func:`params_to_matrix` (rotations within +-pi/2)."""
    m = np.asarray(matrix, dtype=float)
    single = m.ndim == 2
    m = m.reshape(-1, 4, 4)
    c = np.asarray(centre, dtype=float)
    out = np.zeros((len(m), 6))
    for i, mat in enumerate(m):
        rot = mat[:3, :3]
        # rot = Rx Ry Rz: rot[0, 2] = sin(ry); rot[0,:2] and rot[1:,2] give rz, rx
        ry = np.arcsin(np.clip(rot[0, 2], -1.0, 1.0))
        rz = np.arctan2(rot[0, 1], rot[0, 0])
        rx = np.arctan2(rot[1, 2], rot[2, 2])
        t = mat[:3, 3] - c + rot @ c
        out[i] = [*t, rx, ry, rz]
    return out[0] if single else out


def grid_centre(shape, affine) -> np.ndarray:
    """World coordinate (mm) of the centre of a voxel grid."""
    ijk = (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0
    return (np.asarray(affine, dtype=float) @ np.r_[ijk, 1.0])[:3]


# --------------------------------------------------------------------------
# Zig-zag regressor and its removal
# --------------------------------------------------------------------------
def zigzag_regressor(volume_types) -> np.ndarray:
    """+1 for control, -1 for label, 0 for every other volume type."""
    return np.array([ZIGZAG_SIGN.get(str(v).strip().lower(), 0.0) for v in volume_types])


def remove_zigzag(params, zigzag) -> np.ndarray:
    """Project the zig-zag out of each column of ``params``, keeping the intercept.

    Only rows with a non-zero zig-zag value (control and label volumes) take
    part in the fit and are changed; M0 and other volumes are returned as they
    are. The design is ``[1, z]``; the fitted ``z`` component is subtracted
    (the intercept stays), which is the orthogonal projection onto the
    complement of the zig-zag within the span of ``[1, z]``.
    """
    p = np.asarray(params, dtype=float)
    z = np.asarray(zigzag, dtype=float)
    if z.shape[0] != p.shape[0]:
        raise ValueError("zigzag and params must have the same number of rows")
    rows = z != 0
    out = p.copy()
    if rows.sum() < 3 or np.ptp(z[rows]) == 0:
        return out
    design = np.column_stack([np.ones(rows.sum()), z[rows]])
    beta, *_ = np.linalg.lstsq(design, p[rows], rcond=None)
    out[rows] = p[rows] - np.outer(z[rows], beta[1])
    return out


def orthogonalize(regressors, against) -> np.ndarray:
    """Columns of ``regressors`` made orthogonal to ``[1, against]``'s zig-zag part.

    Removes the least-squares fit of the (centred) ``against`` columns from
    every regressor, keeping each regressor's mean.
    """
    x = np.asarray(regressors, dtype=float)
    a = np.atleast_2d(np.asarray(against, dtype=float).T).T
    a = a - a.mean(axis=0)
    keep = np.linalg.norm(a, axis=0) > 0
    if not keep.any():
        return x.copy()
    a = a[:, keep]
    beta, *_ = np.linalg.lstsq(a, x - x.mean(axis=0), rcond=None)
    return x - a @ beta


# --------------------------------------------------------------------------
# Displacement summaries
# --------------------------------------------------------------------------
def framewise_displacement(params, radius: float = FD_RADIUS) -> np.ndarray:
    """Power et al. (2012) framewise displacement, mm; 0 for the first volume.

    Sum of the absolute backward differences of the three translations (mm)
    and of the three rotations (rad) times ``radius`` (mm).
    """
    p = np.asarray(params, dtype=float)
    d = np.abs(np.diff(p, axis=0))
    fd = d[:, :3].sum(axis=1) + radius * d[:, 3:].sum(axis=1)
    return np.r_[0.0, fd]


def rms_displacement(params, centre=(0.0, 0.0, 0.0), radius: float = FD_RADIUS, relative=True):
    """Jenkinson (2002) RMS displacement over a sphere of ``radius`` mm.

    The sphere is centred on ``centre`` (the rotation centre). With
    ``relative=True`` the displacement is between consecutive volumes (0 for
    the first); otherwise against the reference (zero parameters).
    """
    mats = params_to_matrix(np.atleast_2d(params), centre)
    c = np.asarray(centre, dtype=float)
    out = np.zeros(len(mats))
    for i, m in enumerate(mats):
        if relative:
            if i == 0:
                continue
            d = m @ np.linalg.inv(mats[i - 1]) - np.eye(4)
        else:
            d = m - np.eye(4)
        a, t = d[:3, :3], d[:3, 3] + d[:3, :3] @ c
        out[i] = np.sqrt(radius**2 / 5.0 * np.trace(a.T @ a) + t @ t)
    return out


# --------------------------------------------------------------------------
# Resampling helpers
# --------------------------------------------------------------------------
def _voxel_matrix(world, affine, step=1):
    """Voxel-to-voxel matrix: reference grid voxel (with ``step``) -> source voxel."""
    inv = np.linalg.inv(affine)
    scale = np.diag([step, step, step, 1.0])
    return inv @ world @ affine @ scale


#: Boundary mode of the cubic-spline reads of the estimation and the reslice.
#: The spline coefficients must be filtered with the same mode they are read
#: with: filtered as "mirror" and read as "nearest", the edge slices read up
#: to 5% of the signal off even at the identity, which biased every pose.
SPLINE_BOUNDARY = "nearest"


def _sample(volume, vox_matrix, out_shape, order=1, cval=np.nan, mode="constant", prefilter=None):
    return ndimage.affine_transform(
        volume,
        vox_matrix[:3, :3],
        offset=vox_matrix[:3, 3],
        output_shape=out_shape,
        order=order,
        mode=mode,
        cval=cval,
        prefilter=(order > 1) if prefilter is None else prefilter,
    )


def _small_rigid(dp, centre):
    """Rigid matrix of a small update (same parameterisation)."""
    return params_to_matrix(dp, centre)


@dataclass
class _Level:
    step: int
    fwhm_mm: float


def _gauss_newton(
    vols,
    ref,
    affine,
    centre,
    init,
    *,
    step,
    max_iter,
    tol,
    slice_threshold=3.0,
    order=1,
    grad_fraction=0.1,
    point_stride=1,
):
    """Inverse-compositional Gauss-Newton of every volume against ``ref``.

    ``vols`` (n, x, y, z) and ``ref`` are already smoothed. Returns the
    world matrices (n, 4, 4).

    Robustness to slice artefacts (signal drops, ghosts of 2D readouts): from
    the second iteration on, a slice (third voxel axis) of a volume whose mean
    squared residual exceeds ``slice_threshold`` times the median over that
    volume's slices gets the weight ``(threshold * median / msr) ** 2``
    (``None`` disables the weighting).
    """
    sub = ref[::step, ::step, ::step]
    out_shape = sub.shape
    grad_vox = np.stack(np.gradient(ref, *[1.0] * 3), axis=-1)[::step, ::step, ::step]
    # world gradient: dR/dy = A^-T dR/dijk
    a_inv = np.linalg.inv(affine[:3, :3])
    grad = grad_vox.reshape(-1, 3) @ a_inv
    ijk = np.indices(out_shape).reshape(3, -1).T * step
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3] - centre
    # d/d rotation about axis e of R(x): grad . (e x (x - c)) == ((x-c) x grad) . e
    jac = np.concatenate([grad, np.cross(xyz, grad)], axis=1)  # (N, 6)
    # spm_matrix's Rx and Rz turn against the right-hand rule, Ry with it:
    # flip the x and z rotation columns accordingly.
    jac[:, 3] *= -1.0
    jac[:, 5] *= -1.0
    r_flat = sub.reshape(-1)
    # only voxels with structure inform the fit (flat background and flat
    # interior have ~zero Jacobian): sample those points alone
    gnorm = np.linalg.norm(grad, axis=1)
    weight = gnorm > grad_fraction * np.percentile(gnorm, 99)
    if point_stride > 1:  # a regular subset of the informative voxels
        keep = np.flatnonzero(weight)
        weight = np.zeros_like(weight)
        weight[keep[::point_stride]] = True
    jac = jac[weight]
    r_flat = r_flat[weight]
    pts = np.c_[ijk[weight], np.ones(int(weight.sum()))].T  # homogeneous full-grid voxels
    zidx = (ijk[weight, 2] // step).astype(np.intp)
    n_slices = out_shape[2]
    outer = np.einsum("ni,nj->nij", jac, jac).reshape(len(jac), 36)

    if order > 1:  # spline coefficients once per volume, not per iteration
        vols = [ndimage.spline_filter(v, order=order, mode=SPLINE_BOUNDARY) for v in vols]
    inv_aff = np.linalg.inv(affine)
    upper = (np.asarray(ref.shape, dtype=float) - 1)[:, None]
    mats = init.copy()
    active = np.ones(len(vols), dtype=bool)
    for it in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        for k in idx:
            q = inv_aff @ mats[k] @ affine
            coords = (q @ pts)[:3]
            warped = ndimage.map_coordinates(
                vols[k], coords, order=order, mode=SPLINE_BOUNDARY, prefilter=False
            )
            valid = np.all((coords >= 0) & (coords <= upper), axis=0)
            res = np.where(valid, warped - r_flat, 0.0)
            w = valid.astype(float)
            if slice_threshold is not None and it > 0:
                cnt = np.bincount(zidx, weights=w, minlength=n_slices)
                msr = np.bincount(zidx, weights=res**2, minlength=n_slices) / np.maximum(cnt, 1)
                med = np.median(msr[cnt > 0]) if (cnt > 0).any() else 0.0
                lim = slice_threshold * med
                ws = np.where(msr > lim, (lim / np.maximum(msr, 1e-30)) ** 2, 1.0)
                w = w * ws[zidx]
            h = (w @ outer).reshape(6, 6)
            g = jac.T @ (w * res)
            try:
                dp = np.linalg.solve(h, g)
            except np.linalg.LinAlgError:
                active[k] = False
                continue
            mats[k] = mats[k] @ np.linalg.inv(_small_rigid(dp, centre))
            # convergence: largest displacement of the update on a 50 mm sphere
            if np.abs(dp[:3]).max() + FD_RADIUS * np.abs(dp[3:]).max() < tol:
                active[k] = False
    return mats


def estimate_motion(
    volumes,
    affine,
    *,
    reference=None,
    centre=None,
    n_passes: int = 2,
    fwhm_mm: float | None = None,
    levels=((2, 2.0, 1), (1, 1.0, 1)),
    refine_level=(1, 1.0, 3),
    max_iter: int = 20,
    tol: float = 1e-3,
    init=None,
    slice_threshold: float | None = 3.0,
    grad_fraction: float = 0.1,
    anchor_first: bool = True,
    refine_stride: int = 2,
):
    """Rigid-body parameters of every volume of a 4D series.

    Parameters
    ----------
    volumes
        ``(x, y, z, n)`` array on the grid of ``affine``.
    affine
        4x4 voxel-to-world matrix (mm).
    reference
        3D reference image; ``None`` gives SPM's two-pass scheme: the first
        volume, then the mean of the series realigned by the first pass.
    centre
        Rotation centre (world mm); default the centre of the grid.
    n_passes
        Passes when ``reference`` is None (1: first volume only).
    fwhm_mm
        Base smoothing of the images before estimation (mm); default 0.75
        times the in-plane voxel size (better than 1.0 or 1.5 times on
        simulated subjects). ``levels`` multiplies it per pyramid level.
    levels
        ``(step, fwhm_factor[, order])`` per pyramid level, coarse to fine:
        voxel subsampling, smoothing factor, interpolation order (1
        trilinear, 3 cubic spline), for the first pass.
    refine_level
        The level of the last pass (when there are two or more), started from
        the previous estimates. Cubic splines there (the default) halved the
        largest error on simulated subjects compared with trilinear
        throughout, for about twice the time (``benchmarks/bench_spatial.py``).
    max_iter, tol
        Gauss-Newton iterations per level and convergence threshold (mm of
        displacement on a 50 mm sphere).
    slice_threshold
        Down-weighting of artefacted slices (see :func:`_gauss_newton`);
        ``None`` gives the plain least-squares fit.
    refine_stride
        The refine pass samples every ``refine_stride``-th informative voxel
        (2: a quarter faster, same accuracy on simulated subjects).
    anchor_first
        Return the poses relative to the first volume (its parameters are 0).
    grad_fraction
        Only voxels whose reference gradient exceeds this fraction of the
        99th percentile are sampled (flat regions carry no information).
    init
        Optional ``(n, 6)`` starting parameters.

    Returns
    -------
    params : ``(n, 6)`` array (see the module docstring for conventions)
    reference : the 3D reference image of the last pass
    """
    data = np.asarray(volumes, dtype=np.float32)
    if data.ndim != 4:
        raise ValueError("volumes must be 4D (x, y, z, n)")
    affine = np.asarray(affine, dtype=float)
    if centre is None:
        centre = grid_centre(data.shape, affine)
    centre = np.asarray(centre, dtype=float)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if fwhm_mm is None:
        fwhm_mm = 0.75 * float(min(zooms[:2]))
    vols = np.moveaxis(data, -1, 0)
    n = len(vols)
    # normalise the global intensity of every volume (label/control and M0
    # differ in mean intensity; the fit is a plain least squares)
    means = np.array([v[v > 0.1 * v.max()].mean() if v.max() > 0 else 1.0 for v in vols])
    vols = vols / means[:, None, None, None].astype(np.float32)

    mats = (
        np.tile(np.eye(4), (n, 1, 1))
        if init is None
        else params_to_matrix(np.atleast_2d(init), centre)
    )
    passes = [reference] if reference is not None else [None] * max(1, n_passes)
    ref_img = None
    for i_pass, ref in enumerate(passes):
        if ref is not None:
            ref_img = np.asarray(ref, dtype=np.float32)
            ref_img = ref_img / ref_img[ref_img > 0.1 * ref_img.max()].mean()
        elif i_pass == 0:
            ref_img = vols[0]
        else:
            ref_img = np.mean(
                [
                    _reslice_one(v, _voxel_matrix(m, affine), 3)
                    for v, m in zip(vols, mats, strict=True)
                ],
                axis=0,
            )
            # pass 2 reference is in the space of the first volume; keep the
            # pass-1 estimates as a starting point
        # later passes start from the previous estimates: the refine level only
        last = i_pass == len(passes) - 1 and len(passes) > 1
        for level in [refine_level] if last else levels:
            step, factor, order = (*level, 1)[:3]
            sigma = fwhm_to_sigma(fwhm_mm * factor, zooms)
            svols = np.stack([ndimage.gaussian_filter(v, sigma) for v in vols])
            sref = ndimage.gaussian_filter(ref_img, sigma)
            mats = _gauss_newton(
                svols,
                sref,
                affine,
                centre,
                mats,
                step=step,
                max_iter=max_iter,
                tol=tol,
                slice_threshold=slice_threshold,
                order=order,
                grad_fraction=grad_fraction,
                point_stride=refine_stride if last else 1,
            )
    if anchor_first:
        # express every pose relative to the first volume (as SPM does): the
        # mean of pass 2 is only approximately in its space
        mats = np.linalg.inv(mats[0]) @ mats
    return matrix_to_params(mats, centre), ref_img * 1.0


def reslice(
    volumes, affine, params, *, centre=None, order: int = 3, field_hz=None, pe=None
) -> np.ndarray:
    """Reslice each volume of ``(x, y, z, n)`` once onto the reference grid.

    ``out[..., k](x) = volumes[..., k](M_k x)``; points outside the field of
    view take the nearest edge value (no zeros appear at the borders, which
    would otherwise show up in control - label differences). With
    ``field_hz`` (Hz, reference grid) and ``pe`` (:class:`~asl_pipeline.sdc.PhaseEncoding` of
    the volumes) the distortion is undone in the same interpolation:
    ``out(x) = volume(A^-1 M_k A x + a f(x) e_pe) * (1 + a df/dpe(x))``.
    """
    data = np.asarray(volumes, dtype=np.float32)
    affine = np.asarray(affine, dtype=float)
    if centre is None:
        centre = grid_centre(data.shape, affine)
    mats = params_to_matrix(np.atleast_2d(params), centre)
    warp = None
    if field_hz is not None:
        warp = (pe.axis, hz_to_voxels(field_hz, pe), jacobian_map(field_hz, pe))
    out = np.empty(data.shape, dtype=np.float32)
    for k in range(data.shape[-1]):
        out[..., k] = _reslice_one(data[..., k], _voxel_matrix(mats[k], affine), order, warp)
    return out


def _reslice_one(volume, vox_matrix, order, warp=None):
    """One volume through a voxel matrix, float32 throughout (edge: nearest);
    ``warp = (axis, shift, jacobian)`` adds the distortion shift (voxels along
    the array ``axis``) to the sampling points and multiplies by the Jacobian."""
    vol = np.ascontiguousarray(volume, dtype=np.float32)
    if order > 1:
        vol = ndimage.spline_filter(vol, order=order, mode=SPLINE_BOUNDARY, output=np.float32)
    if warp is not None:
        axis, shift, jac = warp
        grid = np.indices(vol.shape, dtype=np.float32).reshape(3, -1)
        coords = vox_matrix[:3, :3] @ grid + vox_matrix[:3, 3:4]
        coords[axis] += shift.reshape(-1)
        out = ndimage.map_coordinates(
            vol, coords, order=order, mode=SPLINE_BOUNDARY, prefilter=False, output=np.float32
        )
        return (out.reshape(vol.shape) * jac).astype(np.float32)
    return ndimage.affine_transform(
        vol,
        vox_matrix[:3, :3],
        offset=vox_matrix[:3, 3],
        output_shape=vol.shape,
        order=order,
        mode=SPLINE_BOUNDARY,
        prefilter=False,
        output=np.float32,
    )


@dataclass
class RealignResult:
    """Outputs of :func:`realign_asl`."""

    corrected: np.ndarray  #: (x, y, z, n) resliced ASL series
    m0_corrected: np.ndarray | None  #: (x, y, z, n_m0) resliced separate M0, or None
    #: 3D reference: the mean of the realigned control and label volumes; without them,
    #: of the M0 (or noRF) volumes, else of the separate M0, else of every volume
    reference: np.ndarray
    params_raw: np.ndarray  #: (n, 6) estimated parameters
    params: np.ndarray  #: (n, 6) parameters after zig-zag removal
    m0_params: np.ndarray | None  #: (n_m0, 6) parameters of the separate M0
    zigzag: np.ndarray  #: (n,) +1 control, -1 label, 0 other
    fd: np.ndarray  #: (n,) framewise displacement (mm) of the cleaned params
    rmsd: np.ndarray  #: (n,) relative RMS displacement (mm) of the cleaned params
    centre: np.ndarray  #: rotation centre (world mm)
    #: with a field correction: the reference of the series resliced for motion only,
    #: still distorted (the "before" of the correction); None without one
    reference_distorted: np.ndarray | None = None
    #: what ``zigzag_method="detect"`` measured and removed; None with another method
    zigzag_offset: ZigzagOffset | None = None


def _check_image(data, name, file, ndim):
    if data.size == 0 or 0 in data.shape:
        raise ASLInputError(
            f"the {name} image is empty (shape {data.shape}).",
            file=file,
            field="dim",
            fix=f"provide a non-empty {ndim}D NIfTI {name} image.",
        )
    if not np.isfinite(data).all():
        raise ASLInputError(
            f"the {name} image contains NaN or infinite values.",
            file=file,
            field="data",
            fix="replace non-finite voxels (e.g. with 0) or re-export the image.",
        )


#: How the label/control zig-zag is taken out of the motion estimates:
#: ``"detect"`` (default: the control - label offset of the estimates is
#: measured on each pair's difference after the local trend of the pair
#: means is taken out, and subtracted only from the parameters where it
#: exceeds :data:`ZIGZAG_THRESHOLD` robust standard errors; each volume
#: otherwise keeps its own estimate, so motion within a pair is corrected),
#: ``"interpolate"`` (each pair's mean parameters, linearly interpolated to
#: the acquisition index of every volume: the bias cancels, but motion within
#: a pair is lost and a sudden move is spread over the two volumes around
#: it), ``"regress"`` (the methods spec's step 2, Wang 2012: the fitted
#: zig-zag component is subtracted from every parameter; with large motion
#: the fitted amplitude is mostly chance and shifts every label against its
#: control) or ``"none"`` (the raw estimates). On 19 of 20 simulated panel
#: subjects of both generators the estimates' true control - label offset
#: was below 0.03 mm and 0.01 deg, while true motion within a pair was
#: 0.3-1.7 mm (rms) on the simulator's moving subjects. Against the pair
#: means, the cleaned map's r with the truth rose from 0.540 to 0.761 on the
#: strong-motion subject and from 0.835 to 0.894 on the jump phantom, and
#: fell from 0.871 to 0.830 on the slab-motion phantom, the 20th subject
#: (``benchmarks/RESULTS.md``, "Motion: each volume keeps its own estimate").
ZIGZAG_METHODS = ("detect", "interpolate", "regress", "none")

#: Robust t above which ``"detect"`` removes a parameter's control - label offset
#: (4, not 3: the median-absolute-deviation error of 20 pairs is itself
#: uncertain, and a chance offset removed from every pair shifts each label
#: against its control; on a static simulated series a t of 3.1 on one
#: rotation did so and lowered r with the uncorrected mean ΔM to 0.9987).
ZIGZAG_THRESHOLD = 4.0

#: Displacement (mm, 50 mm sphere) of a pair's control - label motion beyond
#: the trend below which ``"detect"`` treats the pair as still: on static
#: simulated series the estimates' own noise reached 0.07-0.11 mm and
#: reslicing each volume with it lowered r with the uncorrected mean ΔM to
#: 0.995; moving simulated subjects had 0.13 mm or more in 90% of pairs.
STILL_PAIR_FD = 0.15

#: How the series is resliced: ``"volume"`` (each volume with its own cleaned
#: parameters), ``"pair"`` (both volumes of a control/label pair with the
#: pair's mean cleaned parameters, so static tissue is interpolated
#: identically in the two) or ``"none"`` (motion is estimated and reported,
#: the series is not resliced: the do-nothing baseline of the harness).
RESLICE_MODES = ("volume", "pair", "none")


def _pair_means(params, pairs) -> np.ndarray:
    return np.asarray(params, dtype=float)[pairs].mean(axis=1)


def interpolate_pair_trajectory(params, volume_types) -> np.ndarray:
    """Motion with the label/control bias removed through pair means.

    Each control/label pair's mean parameters are placed at the pair's mean
    volume index and linearly interpolated (held constant beyond the first
    and last pair) at the index of every control and label volume. A constant
    label/control bias (+e, -e) cancels exactly in the pair mean; a linear
    drift passes through unchanged. Other volumes keep their parameters.
    """
    out = np.array(params, dtype=float, copy=True)
    pairs = pair_volumes(volume_types)
    if not len(pairs):
        return out
    centres = pairs.mean(axis=1)
    means = _pair_means(out, pairs)
    rows = pairs.ravel()
    for j in range(out.shape[1]):
        out[rows, j] = np.interp(rows, centres, means[:, j])
    return out


def pair_consistent_params(params, volume_types) -> np.ndarray:
    """Give both volumes of every control/label pair the pair's mean parameters.

    Reslicing the control and the label of a pair with one transform
    interpolates the static tissue (about 100x the perfusion signal) in the
    same way in both, so it cancels exactly in ΔM; motion *within* the pair
    is then left uncorrected. Other volumes keep their own parameters.
    """
    out = np.array(params, dtype=float, copy=True)
    pairs = pair_volumes(volume_types)
    if len(pairs):
        out[pairs[:, 0]] = out[pairs[:, 1]] = _pair_means(out, pairs)
    return out


@dataclass(frozen=True)
class ZigzagOffset:
    """The control - label offset of motion estimates (:func:`detect_zigzag`)."""

    amplitude: np.ndarray  #: (6,) half the median detrended control - label difference
    t: np.ndarray  #: (6,) amplitude over its robust standard error
    removed: np.ndarray  #: (6,) bool: subtracted (|t| above the threshold)
    still_pairs: int  #: pairs put on the trend (no motion beyond it)


def detect_zigzag(
    params, volume_types, threshold: float = ZIGZAG_THRESHOLD, still_fd: float = STILL_PAIR_FD
):
    """Measure the label/control offset of ``params`` and remove it where it is real.

    For each control/label pair ``k`` the difference ``d_k = p_control -
    p_label`` holds twice the offset ``e`` (the zig-zag regressor is +1 on
    controls, -1 on labels) plus the motion between the two volumes. The
    smooth part of that motion is the local slope of the pair means (their
    gradient over the pair centres) times the index gap of the pair; it is
    subtracted, and ``e`` is half the median of what remains, with a robust
    standard error (1.2533 x 1.4826 x MAD / sqrt(n), halved). Where ``|e|``
    exceeds ``threshold`` standard errors, ``e * z`` is subtracted from the
    control and label rows of that parameter.

    Pairs that did not move beyond the trend (what remains of ``d_k``, as a
    displacement on a 50 mm sphere, below ``still_fd`` mm) take the trend
    through their pair mean for both volumes, so the estimates' own noise
    does not reslice the control and the label differently; every other
    volume keeps its own estimate, so drift, sudden moves and motion within a
    pair stay in the estimates. Returns ``(cleaned, ZigzagOffset)``.
    """
    p = np.asarray(params, dtype=float)
    out = p.copy()
    n_par = p.shape[1]
    pairs = pair_volumes(volume_types)
    if len(pairs) < 4:
        none = ZigzagOffset(np.zeros(n_par), np.zeros(n_par), np.zeros(n_par, bool), 0)
        return out, none
    control, label = pairs[:, 0], pairs[:, 1]
    centres = pairs.mean(axis=1)
    gap = (control - label)[:, None]
    means = _pair_means(p, pairs)  # the offset removed below cancels in them
    slope = np.gradient(means, centres, axis=0)
    resid = (p[control] - p[label]) - slope * gap
    amplitude = np.median(resid, axis=0) / 2
    mad = np.median(np.abs(resid - np.median(resid, axis=0)), axis=0)
    se = 1.2533 * 1.4826 * mad / np.sqrt(len(pairs)) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, amplitude / se, np.where(amplitude != 0, np.inf, 0.0))
    removed = np.abs(t) > threshold
    zig = zigzag_regressor(volume_types)
    rows = zig != 0
    out[rows] -= np.outer(zig[rows], np.where(removed, amplitude, 0.0))
    # pairs still beyond the trend: both volumes on the trend through the pair mean
    moved = resid - 2 * np.where(removed, amplitude, 0.0)
    fd = np.abs(moved[:, :3]).sum(axis=1) + FD_RADIUS * np.abs(moved[:, 3:]).sum(axis=1)
    still = fd < still_fd
    for idx in (control, label):
        out[idx[still]] = means[still] + slope[still] * (idx - centres)[still, None]
    return out, ZigzagOffset(amplitude, t, removed, int(still.sum()))


def clean_params(params, volume_types, method: str = "detect") -> np.ndarray:
    """The label/control zig-zag taken out of ``params`` (:data:`ZIGZAG_METHODS`)."""
    if method == "detect":
        return detect_zigzag(params, volume_types)[0]
    if method == "none":
        return np.array(params, dtype=float, copy=True)
    if method == "interpolate":
        return interpolate_pair_trajectory(params, volume_types)
    if method == "regress":
        return remove_zigzag(params, zigzag_regressor(volume_types))
    raise ValueError(f"zig-zag method must be one of {ZIGZAG_METHODS}, not {method!r}")


def m0_on_grid(m0, m0_affine, shape, affine, *, file=None, order: int = 3) -> np.ndarray:
    """An M0 ``(x, y, z[, n])`` on the grid of the ASL series (``shape``,
    ``affine``), for both backends' realignment.

    Its matrix must be the series' (else :class:`ASLInputError`, naming
    ``file``). An affine that differs (a shifted or rotated header) is read
    on the series' grid through the two affines (world mm; cubic spline, 0
    outside its field of view, negative ringing clipped); on the series'
    grid already, the M0 is returned as is. The realignment then registers
    it like any volume."""
    m0 = np.asarray(m0)
    if m0.shape[:3] != tuple(shape[:3]):
        raise ASLInputError(
            f"the M0 grid (shape {m0.shape[:3]}) differs from the ASL series' "
            f"(shape {tuple(shape[:3])}).",
            file=file,
            field="image dimensions",
            fix="acquire or reconstruct the M0 on the ASL grid (same matrix and slices), "
            "or resample it onto the ASL grid before running the pipeline.",
        )
    m0_affine, affine = np.asarray(m0_affine, float), np.asarray(affine, float)
    if np.allclose(m0_affine, affine, atol=1e-3):
        return m0
    to_m0 = np.linalg.inv(m0_affine) @ affine  # series voxel -> M0 voxel
    vols = m0[..., None] if m0.ndim == 3 else m0
    out = np.stack(
        [
            ndimage.affine_transform(
                np.asarray(vols[..., k], dtype=np.float32),
                to_m0[:3, :3],
                to_m0[:3, 3],
                output_shape=vols.shape[:3],
                order=order,
                mode="constant",
                cval=0.0,
            )
            for k in range(vols.shape[-1])
        ],
        axis=-1,
    )
    out = np.clip(out, 0.0, None)
    return out[..., 0] if m0.ndim == 3 else out


def realign_asl(
    asl,
    affine,
    volume_types,
    *,
    m0=None,
    m0_affine=None,
    asl_file=None,
    m0_file=None,
    aslcontext_file=None,
    n_passes: int = 2,
    fwhm_mm: float | None = None,
    order: int = 3,
    remove_zigzag_from_params: bool = True,
    zigzag_method: str = "detect",
    reslice_mode: str = "volume",
    fd_radius: float = FD_RADIUS,
    sdc: FieldCorrection | None = None,
) -> RealignResult:
    """ASL-aware realignment of a series (and of a separate M0) to one reference.

    Parameters
    ----------
    asl
        4D array ``(x, y, z, n)``.
    affine
        Its voxel-to-world matrix.
    volume_types
        ``aslcontext`` volume types, one per volume.
    m0, m0_affine
        Optional separate M0 image (3D or 4D) on the same grid.
    asl_file, m0_file, aslcontext_file
        File names used only in error messages.
    n_passes, fwhm_mm
        See :func:`estimate_motion`.
    order
        Spline order of the final reslice (1 trilinear, 3 cubic).
    remove_zigzag_from_params
        Apply the ASL-aware correction (Wang 2012); ``False`` reslices with
        the raw estimates (plain realignment).
    zigzag_method
        ``"detect"`` (default), ``"interpolate"``, ``"regress"`` or ``"none"``,
        see :data:`ZIGZAG_METHODS`.
    reslice_mode
        ``"volume"`` (default), ``"pair"`` or ``"none"``, see :data:`RESLICE_MODES`.
    fd_radius
        Sphere radius (mm) for FD and RMSD.
    sdc
        Susceptibility distortion correction applied in the same reslice
        (see :func:`apply_realignment`); motion is estimated on the distorted
        images.
    """
    data = np.asarray(asl)
    _check_image(data, "ASL", asl_file, 4)
    if data.ndim != 4:
        raise ASLInputError(
            f"the ASL series must be 4D (x, y, z, volumes); got {data.ndim}D {data.shape}.",
            file=asl_file,
            field="dim",
            fix="provide the ASL run as one 4D NIfTI with one volume per aslcontext row.",
        )
    volume_types = list(volume_types)
    if len(volume_types) != data.shape[-1]:
        raise ASLInputError(
            f"aslcontext has {len(volume_types)} rows but the ASL series has "
            f"{data.shape[-1]} volumes.",
            file=aslcontext_file or asl_file,
            field="volume_type",
            fix="write one aslcontext row per volume, in acquisition order.",
        )
    if min(data.shape[:3]) < 2:
        raise ASLInputError(
            f"the ASL volumes are too small to realign ({data.shape[:3]}).",
            file=asl_file,
            field="dim",
            fix="provide 3D volumes with at least 2 voxels along every axis.",
        )
    affine = np.asarray(affine, dtype=float)
    m0_data = None
    if m0 is not None:
        m0_data = np.asarray(m0)
        _check_image(m0_data, "M0", m0_file, 3)
        if m0_data.ndim == 3:
            m0_data = m0_data[..., None]
        if m0_data.ndim != 4:
            raise ASLInputError(
                f"the M0 image must be 3D or 4D; got {m0_data.ndim}D.",
                file=m0_file,
                field="dim",
                fix="provide the M0 scan as a 3D or 4D NIfTI.",
            )
        m0_aff = affine if m0_affine is None else m0_affine
        m0_data = m0_on_grid(m0_data, m0_aff, data.shape, affine, file=m0_file)

    centre = grid_centre(data.shape, affine)
    registered = registered_volumes(volume_types)
    series = data[..., registered].astype(np.float32)
    if m0_data is not None:
        series = np.concatenate([series, m0_data.astype(np.float32)], axis=-1)
    n = data.shape[-1]
    params = np.zeros((n, 6))
    m0_params = None if m0_data is None else np.zeros((m0_data.shape[-1], 6))
    if series.shape[-1] > 1:
        estimated, _ = estimate_motion(
            series, affine, centre=centre, n_passes=n_passes, fwhm_mm=fwhm_mm
        )
        params[registered] = estimated[: registered.size]
        if m0_params is not None:
            m0_params = estimated[registered.size :]
    return apply_realignment(
        data,
        affine,
        volume_types,
        params,
        m0=m0_data,
        m0_params=m0_params,
        centre=centre,
        order=order,
        remove_zigzag_from_params=remove_zigzag_from_params,
        zigzag_method=zigzag_method,
        reslice_mode=reslice_mode,
        fd_radius=fd_radius,
        sdc=sdc,
    )


def apply_realignment(
    data,
    affine,
    volume_types,
    params_raw,
    *,
    m0=None,
    m0_params=None,
    centre=None,
    order: int = 3,
    remove_zigzag_from_params: bool = True,
    zigzag_method: str = "detect",
    reslice_mode: str = "volume",
    fd_radius: float = FD_RADIUS,
    sdc: FieldCorrection | None = None,
) -> RealignResult:
    """Steps 2-3 of the ASL-aware correction from estimated parameters.

    Removes the zig-zag from ``params_raw`` (``(n, 6)`` in this module's
    convention about ``centre``), reslices the series (and the M0 with its
    own parameters) once and computes FD/RMSD. ``zigzag_method`` and
    ``reslice_mode``: see :data:`ZIGZAG_METHODS` and :data:`RESLICE_MODES`;
    the parameters reported (and FD/RMSD) are the cleaned per-volume ones.
    Shared by the embedded and the
    SPM backends (the latter converts SPM's ``rp_*.txt`` with
    :func:`spm_rp_to_params` first).
    """
    data = np.asarray(data)
    affine = np.asarray(affine, dtype=float)
    if centre is None:
        centre = grid_centre(data.shape, affine)
    zig = zigzag_regressor(volume_types)
    raw = np.array(params_raw, dtype=float)
    # a ΔM or CBF volume keeps the origin's pose whatever a backend estimated
    registered = registered_volumes(volume_types)
    raw[np.setdiff1d(np.arange(len(raw)), registered)] = 0.0
    offset = None
    if not remove_zigzag_from_params:
        clean = raw.copy()
    elif zigzag_method == "detect":  # keep what the detection found, for the log
        clean, offset = detect_zigzag(raw, volume_types)
    else:
        clean = clean_params(raw, volume_types, zigzag_method)
    if reslice_mode not in RESLICE_MODES:
        raise ValueError(f"reslice_mode must be one of {RESLICE_MODES}, not {reslice_mode!r}")
    field, asl_pe, m0_pe = None, None, None
    if sdc is not None:
        field = field_in_reference(sdc, affine, m0_params, centre)
        asl_pe, m0_pe = sdc.pe, sdc.m0_pe or sdc.pe
    if reslice_mode == "none" and field is None:
        corrected = data.astype(np.float32)
    else:
        if reslice_mode == "none":
            applied = np.zeros_like(clean)
        elif reslice_mode == "pair":
            applied = pair_consistent_params(clean, volume_types)
        else:
            applied = clean
        corrected = reslice(
            data, affine, applied, centre=centre, order=order, field_hz=field, pe=asl_pe
        )
    m0_corr = None
    if m0 is not None:
        m0 = np.asarray(m0)
        m0 = m0[..., None] if m0.ndim == 3 else m0
        m0_corr = reslice(
            m0, affine, m0_params, centre=centre, order=order, field_hz=field, pe=m0_pe
        )
    # the reference averages the control and label volumes; without them the
    # volumes of the series' anatomy (M0, noRF), else the separate M0: a ΔM or
    # CBF image is the last choice for the registration to the T1w
    volumes = np.flatnonzero(zig != 0)
    if not volumes.size:
        volumes = registered
    from_m0 = not volumes.size and m0_corr is not None
    if from_m0:
        ref = m0_corr.mean(axis=-1)
    else:
        volumes = volumes if volumes.size else np.arange(data.shape[-1])
        ref = corrected[..., volumes].mean(axis=-1)
    ref_distorted = None
    if field is not None and from_m0:
        ref_distorted = reslice(m0, affine, m0_params, centre=centre, order=order).mean(axis=-1)
    elif field is not None:
        ref_distorted = (
            data[..., volumes].astype(np.float32)
            if reslice_mode == "none"
            else reslice(data[..., volumes], affine, applied[volumes], centre=centre, order=order)
        ).mean(axis=-1)
    return RealignResult(
        corrected=corrected,
        m0_corrected=m0_corr,
        reference=ref,
        params_raw=raw,
        params=clean,
        m0_params=None if m0_params is None else np.asarray(m0_params, dtype=float),
        zigzag=zig,
        fd=framewise_displacement(clean, fd_radius),
        rmsd=rms_displacement(clean, centre, fd_radius),
        centre=centre,
        reference_distorted=ref_distorted,
        zigzag_offset=offset,
    )


def field_in_reference(sdc: FieldCorrection, affine, m0_params, centre) -> np.ndarray:
    """The field of ``sdc`` on the reference grid (Hz).

    A field estimated from the M0 pair (``sdc.frame == "m0"``) lives in the
    undistorted space of the M0 scan, whose head sits at ``M_m0`` relative to
    the reference: ``f_ref(x) = f_m0(M_m0 x)`` (first M0 volume's pose,
    trilinear: the field is smooth). Otherwise it is taken as given.
    """
    field = np.asarray(sdc.field_hz, dtype=np.float32)
    if sdc.frame != "m0" or m0_params is None or not np.any(m0_params):
        return field
    mat = params_to_matrix(np.atleast_2d(m0_params)[:1], centre)[0]
    return _reslice_one(field, _voxel_matrix(mat, affine), 1)


def spm_rp_to_params(rp, centre) -> np.ndarray:
    """SPM ``rp_*.txt`` rows -> this module's parameters about ``centre``.

    SPM (``spm_realign``) uses the same matrix builder (``spm_matrix``:
    T Rx Ry Rz, same signs) about the world origin, but its row ``j`` is
    ``spm_imatrix(mat_j / mat_1)`` of the realigned headers, and the realigned
    header is ``M_j^-1 @ A`` in this module's terms: SPM's matrix is the
    *inverse* of ours (volume world -> reference world). Hence
    ``M_j = inv(spm_matrix(rp_j))``, re-expressed about ``centre``.
    """
    mats = np.linalg.inv(params_to_matrix(np.atleast_2d(rp), (0.0, 0.0, 0.0)))
    return matrix_to_params(mats, centre)
