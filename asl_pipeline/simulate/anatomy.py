"""Subject anatomy for the simulator: templates, deformation, tissue maps, T1w.

Spaces and the true spatial relations
-------------------------------------
Three world (scanner, RAS+, mm) spaces are involved:

``MNI``
    The space of nilearn's bundled ICBM 2009a symmetric templates
    (``MNI152NLin2009aSym``): GM/WM probability maps, brain mask.
``T1w``
    The scanner space of the subject's anatomical scan.
``ASL``
    The scanner space of the ASL session, at the head position of the first
    ASL volume (the motion reference).

The true mappings, applied to points (never to images, so there is no
interpolation in the ground truth):

* ``x_t1w = asl_to_t1w @ x_asl`` (rigid, 4x4, not the identity: the head sits
  differently in the two sessions);
* ``x_mni = P @ x_t1w + u(x_t1w)`` with ``P`` an affine (random rigid head pose
  and a global brain-size scale) and ``u`` a smooth random displacement (mm),
  a cubic B-spline on a control grid aligned with the T1w axes
  (:class:`SubjectDeformation`).

An image of the subject in space ``S`` is made by mapping every voxel centre
(or sub-voxel sample point) of ``S`` to MNI and sampling the MNI tissue model
there (pull-back), so tissue fractions and intensities are exact functions of
the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

#: Name of the template space the true subject-to-template mapping targets.
TEMPLATE_SPACE = "MNI152NLin2009aSym"

#: Tissue classes of the head model, in the order of the MNI model maps.
TISSUES = ("gm", "wm", "csf", "skull", "scalp")

#: Apparent proton density per tissue in the ASL/M0 readout (M0 of pure
#: tissue / M0 of pure CSF); scalp fat is mostly suppressed by the EPI/GRASE
#: fat saturation, hence its low value.
PROTON_DENSITY = {"gm": 0.82, "wm": 0.70, "csf": 1.00, "skull": 0.05, "scalp": 0.30}

#: Longitudinal relaxation time T1 (s) per tissue at 3 T.
T1_3T = {"gm": 1.60, "wm": 0.85, "csf": 4.00, "skull": 0.30, "scalp": 0.40}

#: MPRAGE-like T1w intensity per tissue (WM = 1): WM > GM > CSF, dark bone,
#: bright scalp fat.
T1W_INTENSITY = {"gm": 0.62, "wm": 1.00, "csf": 0.18, "skull": 0.06, "scalp": 0.85}

#: Shell model outside the brain mask, distances in mm from the mask surface:
#: subarachnoid CSF, then skull, then scalp.
SHELL_MM = {"csf": (0.0, 2.5), "skull": (2.5, 8.0), "scalp": (8.0, 14.0)}


@dataclass(frozen=True)
class MNIModel:
    """Tissue model of the head in MNI space (one template resolution).

    ``maps`` is ``(len(TISSUES), X, Y, Z)`` float32 fractions summing to at
    most 1; ``brain`` the template brain mask as float32; ``head`` the sum
    of the fractions (where anything is); ``affine`` the voxel-to-MNI affine.
    """

    maps: np.ndarray
    brain: np.ndarray
    head: np.ndarray
    affine: np.ndarray

    @property
    def inv_affine(self) -> np.ndarray:
        return np.linalg.inv(self.affine)


@lru_cache(maxsize=2)
def load_mni_model(resolution: int = 1) -> MNIModel:
    """Build (once per process and resolution) the MNI head model.

    GM and WM come from nilearn's bundled MNI152 templates (no download),
    CSF = brain mask - GM - WM clipped to [0, 1] plus a thin subarachnoid layer
    outside the mask, then a skull and a scalp shell defined by the distance to
    the brain mask (:data:`SHELL_MM`).
    """
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=resolution)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj, np.float32)
    gm = np.asarray(gm_img.dataobj, np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution).dataobj, np.float32)
    gm = np.clip(gm, 0, 1)
    wm = np.clip(wm, 0, 1)
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(brain - gm - wm, 0, 1) * (brain > 0)
    zooms = np.asarray(gm_img.header.get_zooms()[:3], float)
    dist = ndimage.distance_transform_edt(brain < 0.5, sampling=zooms).astype(np.float32)
    outside = brain < 0.5
    shell = {}
    for name, (lo, hi) in SHELL_MM.items():
        shell[name] = (outside & (dist > lo) & (dist <= hi)).astype(np.float32)
    # the GM/WM templates leak slightly outside the brain mask: the shell
    # tissues fill only what GM and WM leave, so fractions sum to <= 1
    rest = np.clip(1 - gm - wm, 0, 1)
    csf = csf + shell["csf"] * rest
    maps = np.stack([gm, wm, csf, shell["skull"] * rest, shell["scalp"] * rest])
    maps = maps.astype(np.float32)
    head = np.clip(maps.sum(0), 0, 1).astype(np.float32)
    return MNIModel(
        maps=maps, brain=(brain > 0.5).astype(np.float32), head=head, affine=gm_img.affine
    )


# --------------------------------------------------------------------------
# geometry helpers


def rotation_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    """3x3 rotation ``Rz @ Ry @ Rx`` (radians; rotation about x applied first)."""
    cx, sx = np.cos(rx), np.sin(rx)
    cy, sy = np.cos(ry), np.sin(ry)
    cz, sz = np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def rigid_matrix(params, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rigid transform from 6 parameters, rotating about ``centre`` (mm).

    ``params = (tx, ty, tz, rx, ry, rz)``, translations in mm, rotations in
    radians; the point ``x`` maps to ``R (x - c) + c + t`` with
    ``R = Rz @ Ry @ Rx``.
    """
    p = np.asarray(params, float)
    c = np.asarray(centre, float)
    mat = np.eye(4)
    rot = rotation_matrix(*p[3:6])
    mat[:3, :3] = rot
    mat[:3, 3] = c - rot @ c + p[:3]
    return mat


def grid_affine(shape, voxel_size, centre) -> np.ndarray:
    """Axis-aligned RAS+ voxel-to-world affine whose FOV centre is ``centre``."""
    vs = np.asarray(voxel_size, float)
    aff = np.diag(np.r_[vs, 1.0])
    aff[:3, 3] = np.asarray(centre, float) - vs * (np.asarray(shape, float) - 1) / 2
    return aff


def voxel_centre_world(affine, shape) -> np.ndarray:
    """World coordinates (mm) of the centre of the field of view."""
    return (affine @ np.r_[(np.asarray(shape, float) - 1) / 2, 1.0])[:3]


def apply_affine(mat, points) -> np.ndarray:
    """Apply a 4x4 affine to ``(N, 3)`` points."""
    pts = np.asarray(points, float)
    return pts @ mat[:3, :3].T + mat[:3, 3]


# --------------------------------------------------------------------------
# smooth random fields


class SmoothField:
    """A smooth random scalar field: a cubic B-spline on a regular control grid.

    Parameters
    ----------
    rng
        Random generator.
    lower, upper
        Corners (mm) of the box the field must cover; the control grid extends
        two nodes beyond it on each side.
    spacing
        Control-point spacing (mm): the length scale of the variations.
    sd
        Standard deviation of the control coefficients (field amplitude).
    taper
        If True, the outer two rings of control points are zero, so the field
        decays to exactly 0 outside the box (used for deformations).
    """

    def __init__(self, rng, lower, upper, spacing: float, sd: float, *, taper: bool = False):
        lower = np.asarray(lower, float)
        upper = np.asarray(upper, float)
        pad = 2 + (2 if taper else 0)
        self.origin = lower - pad * spacing
        shape = np.ceil((upper - lower) / spacing).astype(int) + 1 + 2 * pad
        self.spacing = float(spacing)
        coef = rng.standard_normal(tuple(shape)) * sd
        if taper:
            coef[:2] = coef[-2:] = 0
            coef[:, :2] = coef[:, -2:] = 0
            coef[:, :, :2] = coef[:, :, -2:] = 0
        self.coef = coef

    def _index(self, points) -> np.ndarray:
        return ((np.asarray(points, float) - self.origin) / self.spacing).T

    def __call__(self, points) -> np.ndarray:
        """Field values at ``(N, 3)`` points (mm)."""
        return ndimage.map_coordinates(
            self.coef, self._index(points), order=3, prefilter=False, mode="grid-constant"
        )

    def on_grid(self, affine, shape) -> np.ndarray:
        """Field values at the voxel centres of an axis-aligned grid.

        Exactly equal to ``self(points)`` at the voxel centres but evaluated as
        a separable tensor product, so 1 mm grids cost a fraction of a second.
        """
        if np.count_nonzero(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))):
            pts = grid_points(affine, shape)
            return self(pts).reshape(shape)
        weights = []
        for axis in range(3):
            pos = affine[axis, 3] + affine[axis, axis] * np.arange(shape[axis])
            idx = (pos - self.origin[axis]) / self.spacing
            weights.append(_bspline_weights(idx, self.coef.shape[axis]))
        out = np.einsum("ia,abc->ibc", weights[0], self.coef, optimize=True)
        out = np.einsum("jb,ibc->ijc", weights[1], out, optimize=True)
        return np.einsum("kc,ijc->ijk", weights[2], out, optimize=True)


def _bspline3(x):
    ax = np.abs(x)
    return np.where(
        ax < 1,
        2.0 / 3.0 - ax**2 + ax**3 / 2.0,
        np.where(ax < 2, (2.0 - ax) ** 3 / 6.0, 0.0),
    )


def _bspline_weights(idx, n) -> np.ndarray:
    """Matrix ``W[i, k] = beta3(idx[i] - k)`` for ``k`` in ``range(n)``."""
    return _bspline3(idx[:, None] - np.arange(n)[None, :])


def grid_points(affine, shape) -> np.ndarray:
    """World coordinates ``(N, 3)`` of all voxel centres, C order."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return apply_affine(affine, ijk.reshape(-1, 3))


# --------------------------------------------------------------------------
# subject deformation


class SubjectDeformation:
    """The true mapping from the subject's T1w world space to MNI space.

    ``x_mni = P @ x + u(x)``: ``P`` (4x4, attribute ``affine``) is the inverse
    head pose times a global scale, ``u`` a smooth random displacement in mm
    (three tapered :class:`SmoothField` components on a grid aligned with the
    T1w axes, so ``u`` is 0 far outside the head).
    """

    def __init__(
        self, rng, *, lower, upper, spacing=24.0, sd=3.0, pose_deg=6.0, pose_mm=8.0, scale_sd=0.04
    ):
        scale = float(np.clip(1 + scale_sd * rng.standard_normal(), 0.9, 1.1))
        rot = np.deg2rad(rng.uniform(-pose_deg, pose_deg, 3))
        trans = rng.uniform(-pose_mm, pose_mm, 3)
        pose = rigid_matrix(np.r_[trans, rot])
        self.affine = np.diag([scale, scale, scale, 1.0]) @ pose
        self.fields = [SmoothField(rng, lower, upper, spacing, sd, taper=True) for _ in range(3)]

    def displacement(self, points) -> np.ndarray:
        """``u(x)`` in mm at ``(N, 3)`` T1w-world points."""
        return np.stack([f(points) for f in self.fields], -1)

    def __call__(self, points) -> np.ndarray:
        """Map ``(N, 3)`` T1w-world points (mm) to MNI (mm)."""
        pts = np.asarray(points, float)
        return apply_affine(self.affine, pts) + self.displacement(pts)

    def displacement_on_grid(self, affine, shape) -> np.ndarray:
        """``u`` at the voxel centres of an axis-aligned T1w grid, ``(*shape, 3)``."""
        return np.stack([f.on_grid(affine, shape) for f in self.fields], -1)


def sample_model(model: MNIModel, mni_points, *, order: int = 1, maps=None) -> np.ndarray:
    """Sample the MNI tissue maps at ``(N, 3)`` MNI points.

    Returns ``(len(maps), N)``; points outside the template are 0.
    """
    idx = apply_affine(model.inv_affine, mni_points).T
    data = model.maps if maps is None else maps
    return np.stack(
        [ndimage.map_coordinates(m, idx, order=order, mode="constant", cval=0.0) for m in data]
    )


# --------------------------------------------------------------------------
# T1-weighted image


def synthesize_t1w(
    rng,
    deformation: SubjectDeformation,
    model: MNIModel,
    *,
    voxel_size: float = 1.0,
    fov=(180.0, 220.0, 180.0),
    centre=(0.0, 0.0, 0.0),
    wm_intensity: float = 800.0,
    noise_sd: float = 0.02,
    bias_sd: float = 0.08,
):
    """MPRAGE-like T1w image of the subject on an axis-aligned grid.

    Intensity = sum over tissues of fraction x :data:`T1W_INTENSITY` x
    ``wm_intensity``, with a fine within-tissue texture (+-2%), times a smooth
    multiplicative bias field (``exp`` of a 60 mm-scale field of SD
    ``bias_sd``), plus Rician noise of SD ``noise_sd * wm_intensity``. Fractions
    come from pulling the MNI model back through ``deformation`` (trilinear).

    Returns ``(image, affine, probs)`` where ``probs`` has ``gm``, ``wm``,
    ``csf`` (float32 fractions) and ``brain_mask`` (bool).
    """
    vs = float(voxel_size)
    shape = tuple(int(round(f / vs)) for f in fov)
    affine = grid_affine(shape, (vs, vs, vs), centre)
    disp = deformation.displacement_on_grid(affine, shape).astype(np.float32)
    # voxel -> model voxel index, as a linear part plus the displacement
    lin = model.inv_affine @ deformation.affine @ affine
    minv = model.inv_affine[:3, :3].astype(np.float32)
    ii = [np.arange(s, dtype=np.float32) for s in shape]
    idx = []
    for k in range(3):
        comp = (
            lin[k, 0] * ii[0][:, None, None]
            + lin[k, 1] * ii[1][None, :, None]
            + lin[k, 2] * ii[2][None, None, :]
            + lin[k, 3]
        ).astype(np.float32)
        comp += disp @ minv[k]
        idx.append(comp.ravel())
    del disp
    idx = np.stack(idx)

    def _sample(vol, sel):
        return ndimage.map_coordinates(vol, idx[:, sel], order=1, mode="constant", cval=0.0)

    n = idx.shape[1]
    head = ndimage.map_coordinates(model.head, idx, order=1, mode="constant", cval=0.0)
    in_head = np.flatnonzero(head > 0)
    fr = {}
    for name, m in zip(TISSUES, model.maps, strict=True):
        vals = np.zeros(n, np.float32)
        vals[in_head] = _sample(m, in_head)
        fr[name] = vals
    brain = np.zeros(n, np.float32)
    sel = in_head[(fr["gm"][in_head] + fr["wm"][in_head] + fr["csf"][in_head]) > 0]
    brain[sel] = _sample(model.brain, sel)

    intensity = np.zeros(n, np.float32)
    for name in TISSUES:
        intensity += T1W_INTENSITY[name] * fr[name]
    intensity = intensity.reshape(shape) * np.float32(wm_intensity)
    box_lo = np.asarray(centre, float) - np.asarray(fov, float) / 2
    box_hi = np.asarray(centre, float) + np.asarray(fov, float) / 2
    bias = SmoothField(rng, box_lo, box_hi, 60.0, 3.0 * bias_sd).on_grid(affine, shape)
    texture = SmoothField(rng, box_lo, box_hi, 8.0, 0.06).on_grid(affine, shape)
    intensity *= np.exp(bias + texture).astype(np.float32)
    image = rician(rng, intensity, noise_sd * wm_intensity)
    probs = {
        "gm": fr["gm"].reshape(shape),
        "wm": fr["wm"].reshape(shape),
        "csf": fr["csf"].reshape(shape),
        "brain_mask": brain.reshape(shape) > 0.5,
    }
    return image, affine, probs


def rician(rng, signal, sigma) -> np.ndarray:
    """Magnitude of ``signal + sigma * (n1 + i n2)`` (float32; no noise if 0)."""
    sig = np.asarray(signal)
    if sigma == 0:
        return np.abs(sig)
    s = sig.dtype.type(sigma) if sig.dtype.kind == "f" else float(sigma)
    dt = sig.dtype if sig.dtype in (np.float32, np.float64) else np.float32
    re = sig + s * rng.standard_normal(sig.shape, dtype=dt)
    im = s * rng.standard_normal(sig.shape, dtype=dt)
    return np.sqrt(re * re + im * im)
