"""A second, structurally different ASL generator: a label-map phantom.

The project's own simulator (:mod:`asl_pipeline.simulate.series`) pulls the
nilearn MNI152 2009a tissue *probability* templates through a B-spline
deformation and generates signal with the white-paper kinetic model (blood T1
everywhere, one voxel-wise ATT). Defaults chosen on that simulator alone could
fit its assumptions; this generator differs in every part that a pipeline
stage could exploit:

=======================  ===================================  ==================================
                         ``simulate_subject`` (series.py)     ``simulate_phantom`` (here)
=======================  ===================================  ==================================
anatomy source           MNI152 2009a probability maps        ASL DRO hard label map
                         (nilearn), trilinear partial volume  ``hrgt_icbm_2009a_nls_3t`` (asldro,
                                                              MIT licence); partial volume only
                                                              from sub-voxel sampling of hard
                                                              labels
subject mapping          affine + B-spline (24 mm grid)       rotation/scale + sum of random
                                                              plane waves (40-120 mm)
head outside the brain   template head model                  distance shells: CSF, skull, scalp
tissue parameters        project tables                       the DRO's T1, T2*, M0 per tissue
kinetic model            white paper: blood T1 after arrival  Buxton general kinetic model, GM
                         one ATT per voxel                    and WM compartments each with its
                                                              ATT and apparent tissue T1 after
                                                              arrival ``1/T1app = 1/T1t + f/λ``
static signal            ``1 - exp(-TR/T1)``, BS residual     presaturation at the start of
                         fractions                            labeling, inversion pulses
                                                              simulated (Bloch, per slice time)
motion                   cubic resampling of reference maps   labels re-sampled at the moved
                                                              sub-voxel points (no interpolation)
noise                    white Rician + multiplicative        in-plane correlated complex noise
                         physiological fluctuations           (lag-1 0.4), slice-varying SD,
                                                              heavy-tailed voxel outliers, linear
                                                              drift, per-pair global offset
ASL grid                 64x64x20, 3.4x3.4x6 mm               64x64x24, 3.75x3.75x5 mm
outliers                 global gain + motion jerk; single-   slab dropouts, k-space spikes,
                         slice drop or N/2 ghost              global fluctuations, slab motion
=======================  ===================================  ==================================

The anatomy source, honestly: the DRO's label map is a segmentation of the
ICBM 2009a nonlinear symmetric average, the same population average as
nilearn's MNI152 2009a templates, so the underlying average brain is shared;
what differs is the segmentation (hard GM/WM/CSF labels, only ventricular CSF
labelled), the tissue parameters, the subject warp model and the head model.
Licence: asldro 2.2.0 is MIT licensed (Copyright (c) 2020 Gold Standard
Phantoms LTD; ``asldro-*.dist-info/LICENSE``); the label map is read from the
installed package at run time and not copied into this project.

Signal model
------------
The subject is a hard-label image at ``anatomy_voxel`` mm (1 GM, 2 WM, 3
ventricular CSF from the DRO; 4 sulcal/extra-cerebral CSF, 5 skull, 6 scalp
from distance shells around the DRO brain whose thicknesses vary smoothly). An
ASL voxel is sampled at ``subsample`` points; at each point ``p`` with tissue
``k``:

* ``m0(p) = M0_SCALE * PD_k * exp(-TE / T2*_k)`` (PD_k = the DRO's M0 / 100);
* static (control) signal ``m0(p) * Mz_k(t_read)``: saturation at the start
  of labeling, then free T1_k recovery, each background-suppression pulse an
  ideal inversion; ``t_read`` = labeling duration (PCASL) + PLD (+ the
  slice's time in 2D);
* perfusion ``f(p)`` (GM or WM field, 0 elsewhere) and arrival ``Δt(p)`` (GM
  ~0.9 s, WM ~1.3 s, smooth spatial variation);
* kinetic term ``g(p) = (f/λ) ∫ c(t') r(t - t') dt'`` (Buxton et al. 1998):
  PCASL ``c = exp(-Δt/T1b)`` for ``Δt < t' < Δt + τ``, PASL (QUIPSS II, bolus
  ``TI1``) ``c = exp(-t'/T1b)`` for ``Δt < t' < Δt + TI1``, and
  ``r(s) = exp(-s/T1app)`` with ``T1app`` the apparent tissue T1
  (``t1_after_arrival="tissue"``, default) or the blood T1 (``"blood"``: the
  white-paper simplification).

A voxel's values are means over its points: ``m0_v``, ``static_v``,
``G_v = mean(g)``, and ``ΔM_v = 2 α m0_v G_v`` (α from
:func:`asl_pipeline.kinetics.labeling_efficiency`, BS pulses included), so
with ``t1_after_arrival="blood"`` and every ATT shorter than the PLD the
white-paper equation returns exactly ``cbf = 6000 mean(f)`` from ``ΔM_v`` and
``m0_v`` (tests/test_phantom.py). Truth on the ASL grid (head at volume 0):
CBF = ``6000 mean(f)`` (mL/100 g/min), ATT = flow-weighted mean arrival,
GM/WM/CSF = fractions of points, M0 = ``m0_v``, brain mask = GM+WM+CSF >= 0.5.
``desc-whitepaper_cbf`` is what a perfect white-paper quantification reads
(noise-free ΔM, true M0, longest delay): with the default apparent tissue T1
and the DRO's T1 (GM 1.33 s, WM 0.83 s) it is about 27% below the truth in GM
and 60% in WM for the default 2D PCASL run (PLD 1.8 s plus slice times; GM >
0.7 / WM > 0.9), a model difference no single-PLD white-paper pipeline
removes; compare a pipeline with it to see its own error.

The images: ``|signal x gain + n|``, ``n`` complex Gaussian correlated in
plane (separable 3-tap kernel, lag-1 correlation :data:`NOISE_LAG1`), SD per
slice ``σ (1 + 0.25 cos)``, plus with probability :data:`OUTLIER_VOXEL_RATE`
per voxel a complex Gaussian of 6 σ (heavy tails); ``gain`` = linear drift
(``drift`` over the run) and, on the label volume of each pair, ``1 + o_p``
(``o_p ~ N(0, pair_offset_sd)``, a global ΔM offset). 3D readouts blur the
noise-free signal along z (FWHM 1.5 slices). At ``noise_level=1`` the per-pair
SNR of ΔM in GM (GM > 0.7) is about 0.8 for the default 2D PCASL protocol.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from asl_pipeline import kinetics
from asl_pipeline.errors import ASLInputError
from asl_pipeline.simulate.anatomy import grid_affine
from asl_pipeline.simulate.dataset import (
    _write_bytes,
    _write_json,
    _write_nifti,
    _write_tsv,
    write_dataset,
)
from asl_pipeline.simulate.motion import motion_matrix
from asl_pipeline.simulate.series import M0_SCALE, through_plane_blur

#: The DRO's ground-truth label map (asldro package data).
DRO_FILE = "hrgt_icbm_2009a_nls_3t.nii.gz"

#: Subject label values.
GM, WM, CSF, SULCAL_CSF, SKULL, SCALP = 1, 2, 3, 4, 5, 6

#: Mean arrival times (s) of the GM and WM compartments.
ATT_MEAN = {GM: 0.9, WM: 1.3}

#: Per-channel noise SD as a fraction of ``M0_SCALE`` at ``noise_level=1``.
NOISE_SD = 0.00165

#: Lag-1 in-plane correlation of the complex noise.
NOISE_LAG1 = 0.4

#: Probability that a voxel of a volume gets a heavy-tailed noise outlier.
OUTLIER_VOXEL_RATE = 0.002

#: Through-plane blur of a 3D readout (FWHM in slices): the default for 3D;
#: mirrored at the edge slices (``scipy.ndimage`` boundary mode).
Z_BLUR_FWHM_3D = 1.5
Z_BLUR_MODE = "reflect"

MOTIONS = ("none", "drift", "jumps")
OUTLIER_TYPES = ("slab_dropout", "spikes", "global", "slab_motion")
#: Other spellings accepted for the outlier types.
OUTLIER_ALIASES = {"dropout": "slab_dropout", "spike": "spikes", "slabmotion": "slab_motion"}

_TE = {"2D": 0.014, "3D": 0.0106}
#: Tissues outside the DRO: (PD, T1 s, T2* s, T1w intensity). Scalp is mostly
#: fat, suppressed in the ASL readout; its T1w intensity is that of fat.
_EXTRA = {
    SULCAL_CSF: (None, None, None, 0.18),
    SKULL: (0.05, 0.3, 0.002, 0.07),
    SCALP: (0.30, 0.9, 0.030, 0.85),
}
_T1W_INTENSITY = {0: 0.0, GM: 0.62, WM: 1.0, CSF: 0.18}


# --------------------------------------------------------------------------
# the digital reference object


@dataclass(frozen=True)
class DRO:
    """The ASL DRO label map (padded) and its tissue parameters.

    ``labels`` (uint8, 1 GM / 2 WM / 3 CSF), ``dist`` (mm from the filled brain,
    0 inside), ``affine`` (voxel -> world mm), ``centre`` (brain centroid, mm),
    ``tissue`` (label -> dict of the DRO's ``t1``, ``t2_star``, ``m0``,
    ``perfusion_rate``, ``transit_time``), ``lam`` (λ), ``t1_blood`` (s).
    """

    labels: np.ndarray
    dist: np.ndarray
    affine: np.ndarray
    centre: np.ndarray
    tissue: dict
    lam: float
    t1_blood: float


def _dro_path():
    try:
        return importlib.resources.files("asldro.data") / DRO_FILE
    except ModuleNotFoundError as exc:
        raise ASLInputError(
            "the phantom generator needs the ASL digital reference object's label map, "
            "shipped in the asldro package, which is not installed.",
            field="generator",
            fix="pip install --no-deps asldro==2.2.0 (its pinned 2020 dependencies do not "
            "install).",
        ) from exc


@functools.lru_cache(maxsize=1)
def load_dro(pad: int = 24) -> DRO:
    """Read the DRO once per process (labels padded by ``pad`` mm for the head)."""
    path = _dro_path()
    with importlib.resources.as_file(path) as p:
        img = nib.load(p)
        meta = json.loads(Path(p).with_suffix("").with_suffix(".json").read_text())
        data = np.asarray(img.dataobj, dtype=np.float32)[:, :, :, 0, :]
    names = meta["quantities"]
    labels = data[..., names.index("seg_label")].astype(np.uint8)
    tissue = {}
    for value in meta["segmentation"].values():
        sel = labels == value
        tissue[int(value)] = {
            q: float(np.median(data[..., i][sel])) for i, q in enumerate(names) if q != "seg_label"
        }
    labels = np.pad(labels, pad)
    affine = img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    brain = ndimage.binary_fill_holes(labels > 0)
    dist = ndimage.distance_transform_edt(~brain, sampling=np.abs(np.diag(affine)[:3]))
    centre = (affine @ np.r_[ndimage.center_of_mass(brain), 1.0])[:3]
    params = meta["parameters"]
    return DRO(
        labels=labels,
        dist=dist.astype(np.float32),
        affine=affine,
        centre=centre,
        tissue=tissue,
        lam=float(params["lambda_blood_brain"]),
        t1_blood=float(params["t1_arterial_blood"]),
    )


# --------------------------------------------------------------------------
# smooth random fields and the subject mapping


@dataclass(frozen=True)
class PlaneWaves:
    """Smooth random field ``sum_j a_j cos(k_j . x + φ_j)`` of world points (mm)."""

    k: np.ndarray
    phase: np.ndarray
    amp: np.ndarray

    @classmethod
    def draw(cls, rng, sd: float, wavelength=(40.0, 120.0), n_terms: int = 8):
        d = rng.standard_normal((n_terms, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        k = d * (2 * np.pi / rng.uniform(*wavelength, n_terms))[:, None]
        amp = sd * np.sqrt(2.0 / n_terms) * rng.choice([-1.0, 1.0], n_terms)
        return cls(k, rng.uniform(0, 2 * np.pi, n_terms), amp)

    def __call__(self, points) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        return np.cos(pts @ self.k.T + self.phase) @ self.amp


@dataclass(frozen=True)
class SubjectAnatomy:
    """The subject as a hard-label image in scanner world coordinates.

    ``labels`` on ``affine`` (see the label values above); ``perfusion``,
    ``arrival``: dict label -> (mean, PlaneWaves) giving CBF (mL/100 g/min)
    and ATT (s) as ``mean * (1 + field)`` / ``mean + field``.
    """

    labels: np.ndarray
    affine: np.ndarray
    centre: np.ndarray
    perfusion: dict
    arrival: dict

    def labels_at(self, points) -> np.ndarray:
        """Nearest-neighbour tissue label at ``(N, 3)`` world points."""
        inv = np.linalg.inv(self.affine)
        ijk = np.asarray(points) @ inv[:3, :3].T + inv[:3, 3]
        return ndimage.map_coordinates(self.labels, ijk.T, order=0, mode="constant", cval=0)

    def flow_and_arrival(self, points, labels) -> tuple[np.ndarray, np.ndarray]:
        """Perfusion (mL/g/s) and arrival time (s) at points of the given labels."""
        f = np.zeros(len(labels))
        att = np.zeros(len(labels))
        for k in (GM, WM):
            sel = labels == k
            if sel.any():
                mean, fld = self.perfusion[k]
                f[sel] = mean * (1.0 + fld(points[sel])) / kinetics.CBF_UNITS
                mean_t, fld_t = self.arrival[k]
                att[sel] = mean_t + fld_t(points[sel])
        return f, att


def _dro_labels_at(dro: DRO, y, thickness) -> np.ndarray:
    """DRO labels at DRO-world points ``y``, with head shells of the given thicknesses."""
    inv = np.linalg.inv(dro.affine)
    ijk = (y @ inv[:3, :3].T + inv[:3, 3]).T
    lab = ndimage.map_coordinates(dro.labels, ijk, order=0, mode="constant", cval=0)
    dist = ndimage.map_coordinates(dro.dist, ijk, order=1, mode="constant", cval=1e3)
    out = lab.copy()
    outside = lab == 0
    edges = np.cumsum(thickness, axis=0)
    for value, edge in zip((SCALP, SKULL, SULCAL_CSF), edges[::-1], strict=True):
        out[outside & (dist <= edge)] = value
    return out


def make_anatomy(rng, dro: DRO, *, voxel: float = 1.0) -> SubjectAnatomy:
    """Draw one subject: pose, size, smooth warp, head shells, perfusion and ATT fields."""
    rot = np.deg2rad(rng.uniform(-8, 8, 3))
    cx, cy, cz = np.cos(rot)
    sx, sy, sz = np.sin(rot)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    scale = rng.uniform(0.92, 1.08, 3)
    to_dro = (rx @ ry @ rz) / scale  # subject -> DRO, linear part
    centre = rng.normal(0.0, 4.0, 3) + np.array([0.0, -10.0, 10.0])
    warp = [PlaneWaves.draw(rng, 2.5, (40.0, 120.0), 10) for _ in range(3)]
    shells = (
        _Shift(PlaneWaves.draw(rng, 0.5, (50.0, 150.0), 6), 1.8),
        _Shift(PlaneWaves.draw(rng, 1.2, (50.0, 150.0), 6), 6.5),
        _Shift(PlaneWaves.draw(rng, 1.2, (50.0, 150.0), 6), 5.5),
    )
    half = np.array([105.0, 125.0, 115.0])
    shape = tuple(int(np.ceil(2 * h / voxel)) for h in half)
    affine = grid_affine(shape, (voxel,) * 3, centre)
    # the smooth parts (warp, shell thicknesses) on a 4 mm grid, trilinear to the
    # fine grid: exact for the affine part, < 0.01 mm off for 40 mm waves
    step = 4.0
    cshape = tuple(int(np.ceil(2 * h / step)) + 3 for h in half)
    caff = grid_affine(cshape, (step,) * 3, centre)
    cijk = np.stack(np.meshgrid(*[np.arange(n) for n in cshape], indexing="ij"), -1)
    x = cijk.reshape(-1, 3) @ caff[:3, :3].T + caff[:3, 3]
    y = (x - centre) @ to_dro.T + dro.centre + np.stack([w(x) for w in warp], axis=1)
    coarse = [c.reshape(cshape) for c in y.T] + [sh(y).reshape(cshape) for sh in shells]
    fine_to_coarse = np.linalg.inv(caff) @ affine
    labels = np.zeros(shape, np.uint8)
    ii, jj = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for i in range(shape[0]):  # plane by plane: bounded memory
        ijk = np.stack([np.full(ii.size, i), ii.ravel(), jj.ravel()], axis=1)
        cidx = (ijk @ fine_to_coarse[:3, :3].T + fine_to_coarse[:3, 3]).T
        vals = [ndimage.map_coordinates(c, cidx, order=1, mode="nearest") for c in coarse]
        labels[i] = _dro_labels_at(dro, np.stack(vals[:3], 1), vals[3:]).reshape(shape[1:])
    level = rng.uniform(0.85, 1.15)
    perfusion = {
        GM: (dro.tissue[GM]["perfusion_rate"] * level, PlaneWaves.draw(rng, 0.12)),
        WM: (
            dro.tissue[WM]["perfusion_rate"] * level * rng.uniform(0.9, 1.1),
            PlaneWaves.draw(rng, 0.12),
        ),
    }
    arrival = {
        k: (ATT_MEAN[k] + rng.uniform(-0.05, 0.05), PlaneWaves.draw(rng, 0.12)) for k in (GM, WM)
    }
    return SubjectAnatomy(labels, affine, centre, perfusion, arrival)


@dataclass(frozen=True)
class _Shift:
    """A smooth field plus a constant (a shell thickness, mm, at least 0.5)."""

    field: PlaneWaves
    mean: float

    def __call__(self, points) -> np.ndarray:
        return np.maximum(self.mean + self.field(points), 0.5)


# --------------------------------------------------------------------------
# kinetics and relaxation


def gkm_kernel(f, att, delay, *, labeling, tau, t1b, t1_tissue=None, lam=kinetics.LAMBDA):
    """Buxton general kinetic model per unit ``2 α M0``: ``ΔM / (2 α M0)``.

    ``f`` perfusion (mL/g/s), ``att`` arrival (s), ``delay`` the PLD (PCASL,
    time after the end of labeling) or TI (PASL, time after the labeling
    pulse), ``tau`` labeling duration (PCASL) or bolus duration TI1 (PASL
    QUIPSS II), ``t1b`` blood T1. After arrival the label decays with the
    apparent tissue T1 (``1/T1app = 1/t1_tissue + f/lam``), or with ``t1b``
    when ``t1_tissue`` is None (white-paper simplification, which equals
    :func:`asl_pipeline.kinetics.pcasl_deltam` / ``pasl_deltam``).
    """
    f = np.asarray(f, float)
    att = np.asarray(att, float)
    if t1_tissue is None:
        t1app = np.full(np.broadcast(f, att).shape, float(t1b))
    else:
        t1app = 1.0 / (1.0 / np.asarray(t1_tissue, float) + f / lam)
    if labeling == "PCASL":
        t = np.asarray(delay, float) + tau  # since the start of labeling
        a = np.minimum(att, t)
        b = np.minimum(att + tau, t)
        integral = t1app * (np.exp(-(t - b) / t1app) - np.exp(-(t - a) / t1app))
        return f / lam * np.exp(-att / t1b) * integral
    ti = np.asarray(delay, float)
    a = np.minimum(att, ti)
    b = np.minimum(att + tau, ti)
    k = 1.0 / t1b - 1.0 / t1app
    small = np.abs(k) < 1e-12
    ksafe = np.where(small, 1.0, k)
    span = np.where(small, b - a, -np.expm1(-ksafe * (b - a)) / ksafe)
    return f / lam * np.exp(-a / t1b - (ti - a) / t1app) * span


def mz_after_saturation(t1, t_read, inversions=()) -> np.ndarray:
    """Mz/M0 at ``t_read`` after a saturation at 0 and ideal inversions at ``inversions``."""
    t1 = np.asarray(t1, float)
    t_read = np.asarray(t_read, float)
    m = np.zeros(np.broadcast(t1, t_read).shape)
    t_prev = np.zeros_like(m)
    for tb in sorted(inversions):
        before = tb < t_read
        m_at = 1.0 - (1.0 - m) * np.exp(-(tb - t_prev) / t1)
        m = np.where(before, -m_at, m)
        t_prev = np.where(before, tb, t_prev)
    return 1.0 - (1.0 - m) * np.exp(-(t_read - t_prev) / t1)


# --------------------------------------------------------------------------
# protocol


@dataclass(frozen=True)
class PhantomProtocol:
    """Acquisition of a phantom run; ``plds`` holds one delay (PLD or TI) per pair."""

    labeling: str
    readout: str
    plds: tuple
    n_slices: int
    tau: float
    background_suppression: bool
    slice_duration: float
    m0_tr: float

    @property
    def pld_list(self) -> list:
        return sorted(set(self.plds))

    @property
    def slice_timing(self) -> np.ndarray:
        if self.readout == "3D":
            return np.zeros(self.n_slices)
        return np.arange(self.n_slices) * self.slice_duration

    @property
    def readout_time(self) -> float:
        return self.n_slices * self.slice_duration if self.readout == "2D" else 0.5

    @property
    def tr(self) -> float:
        bolus = self.tau if self.labeling == "PCASL" else 0.0
        return round(bolus + max(self.plds) + self.readout_time + 0.15, 4)

    @property
    def bs_times(self) -> tuple:
        """Inversion times (s after the start of labeling) of the 2 BS pulses."""
        if not self.background_suppression:
            return ()
        pmin = min(self.plds)
        if self.labeling == "PCASL":
            return (round(self.tau + 0.3 * pmin, 4), round(self.tau + 0.8 * pmin, 4))
        return (round(0.2 * pmin, 4), round(0.7 * pmin, 4))

    @property
    def alpha(self) -> float:
        return kinetics.labeling_efficiency(self.labeling, None, len(self.bs_times))

    def read_times(self, delay) -> np.ndarray:
        """Time of each slice's readout after the start of labeling (s)."""
        start = delay + (self.tau if self.labeling == "PCASL" else 0.0)
        return start + self.slice_timing

    def white_paper_factor(self, delay, *, t1b: float, lam: float) -> np.ndarray:
        """Per slice: the white-paper CBF (mL/100 g/min) per unit ``ΔM / (2 α M0)``."""
        d = delay + self.slice_timing
        num = kinetics.CBF_UNITS * lam * np.exp(d / t1b)
        if self.labeling == "PCASL":
            return num / (t1b * -np.expm1(-self.tau / t1b))
        return num / self.tau

    def metadata(self, voxel_size) -> dict:
        multi = len(self.pld_list) > 1
        md = {
            "Manufacturer": "asl_pipeline phantom",
            "ManufacturersModelName": "asl_pipeline.simulate.phantom",
            "MagneticFieldStrength": 3,
            "MRAcquisitionType": self.readout,
            "PulseSequenceType": "EPI" if self.readout == "2D" else "GRASE",
            "EchoTime": _TE[self.readout],
            "FlipAngle": 90,
            "RepetitionTimePreparation": self.tr,
            "ArterialSpinLabelingType": self.labeling,
            "PostLabelingDelay": (
                [float(p) for p in np.repeat(self.plds, 2)] if multi else float(self.plds[0])
            ),
            "BackgroundSuppression": self.background_suppression,
            "M0Type": "Separate",
            "TotalAcquiredPairs": len(self.plds),
            "VascularCrushing": False,
            "AcquisitionVoxelSize": [float(v) for v in voxel_size],
            "LabelingLocationDescription": "simulated phantom, 9 cm below the AC-PC plane",
            "PhaseEncodingDirection": "j",
            "TotalReadoutTime": 0.028,
        }
        if self.readout == "2D":
            md["SliceTiming"] = [round(float(t), 6) for t in self.slice_timing]
            md["SliceEncodingDirection"] = "k"
        if self.labeling == "PCASL":
            md["LabelingDuration"] = self.tau
            md["PCASLType"] = "balanced"
        else:
            md["PASLType"] = "PICORE"
            md["BolusCutOffFlag"] = True
            md["BolusCutOffTechnique"] = "QUIPSSII"
            md["BolusCutOffDelayTime"] = self.tau
            md["LabelingSlabThickness"] = 80.0
        if self.background_suppression:
            md["BackgroundSuppressionNumberPulses"] = len(self.bs_times)
            md["BackgroundSuppressionPulseTime"] = list(self.bs_times)
        return md

    def m0_metadata(self, voxel_size) -> dict:
        md = {
            "Manufacturer": "asl_pipeline phantom",
            "ManufacturersModelName": "asl_pipeline.simulate.phantom",
            "MagneticFieldStrength": 3,
            "MRAcquisitionType": self.readout,
            "PulseSequenceType": "EPI" if self.readout == "2D" else "GRASE",
            "PhaseEncodingDirection": "j",
            "TotalReadoutTime": 0.028,
            "EchoTime": _TE[self.readout],
            "FlipAngle": 90,
            "RepetitionTimePreparation": self.m0_tr,
            "AcquisitionVoxelSize": [float(v) for v in voxel_size],
        }
        if self.readout == "2D":
            md["SliceTiming"] = [round(float(t), 6) for t in self.slice_timing]
            md["SliceEncodingDirection"] = "k"
        return md


def _choice(value, choices, name):
    v = str(value).strip()
    key = {c.lower(): c for c in choices}.get(v.lower())
    if key is None:
        raise ASLInputError(
            f"{value!r} is not a supported value.", field=name, fix=f"use one of {choices}."
        )
    return key


def _protocol(
    *, labeling, readout, pld, plds, pld_repeats, n_pairs, n_slices, tau, bs, slice_duration, m0_tr
):
    labeling = _choice(labeling, ("PCASL", "PASL"), "labeling")
    readout = _choice(readout, ("2D", "3D"), "readout")
    if int(n_pairs) < 1:
        raise ASLInputError(
            f"n_pairs={n_pairs} gives no pair.", field="n_pairs", fix="use n_pairs >= 1."
        )
    delays = [float(pld)] if plds is None else [float(p) for p in np.atleast_1d(plds)]
    if tau is None:
        tau = 1.8 if labeling == "PCASL" else 0.8
    if not delays or min(delays) <= 0 or (labeling == "PASL" and min(delays) <= tau):
        raise ASLInputError(
            f"delays {delays} must be positive (PASL: longer than the bolus duration {tau} s).",
            field="plds" if plds is not None else "pld",
            fix="use e.g. pld=1.8 (PCASL) or pld=1.8 with tau=0.8 (PASL).",
        )
    if pld_repeats is not None:
        repeats = int(pld_repeats)
    elif int(n_pairs) % len(delays) == 0:
        repeats = int(n_pairs) // len(delays)
    else:
        raise ASLInputError(
            f"n_pairs={n_pairs} is not a multiple of the {len(delays)} delays.",
            field="n_pairs",
            fix=f"use a multiple of {len(delays)}, or give pld_repeats (pairs per delay).",
        )
    if repeats < 1:
        raise ASLInputError(
            f"pld_repeats={pld_repeats} gives no pair.",
            field="pld_repeats",
            fix="use pld_repeats >= 1.",
        )
    # the delays cycled within each repeat, so that drift does not alias into delay
    cycle = tuple(delays) * repeats
    return PhantomProtocol(
        labeling=labeling,
        readout=readout,
        plds=cycle,
        n_slices=int(n_slices),
        tau=float(tau),
        background_suppression=bool(bs),
        slice_duration=float(slice_duration),
        m0_tr=float(m0_tr),
    )


# --------------------------------------------------------------------------
# the ASL grid: per-voxel sample points and their signals


@dataclass(frozen=True)
class _Grid:
    shape: tuple
    affine: np.ndarray
    points: np.ndarray  # (n_active, n_sub, 3) world mm, head at volume 0
    active: np.ndarray  # flat indices of voxels that can hold tissue


def _subsample_offsets(subsample) -> np.ndarray:
    axes = [(np.arange(n) + 0.5) / n - 0.5 for n in subsample]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return g


def _asl_grid(anat: SubjectAnatomy, rng, shape, voxel_size, subsample) -> _Grid:
    centre = anat.centre + np.array([0.0, 0.0, 4.0]) + rng.normal(0, 2.0, 3)
    affine = grid_affine(shape, voxel_size, centre)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    ijk = ijk.reshape(-1, 1, 3) + _subsample_offsets(subsample)[None]
    pts = ijk @ affine[:3, :3].T + affine[:3, 3]
    lab = anat.labels_at(pts.reshape(-1, 3)).reshape(pts.shape[:2])
    head = (lab > 0).any(axis=1).reshape(shape)
    # room for the head to move in (motion up to a few mm / degrees)
    head = ndimage.binary_dilation(head, iterations=3)
    active = np.flatnonzero(head)
    return _Grid(tuple(shape), affine, pts[active], active)


def _tissue_tables(dro: DRO, te: float) -> tuple[np.ndarray, np.ndarray]:
    """Per label: M0 at the echo (scanner units) and T1 (s)."""
    m0 = np.zeros(7)
    t1 = np.ones(7)
    for k in (GM, WM, CSF):
        p = dro.tissue[k]
        m0[k] = M0_SCALE * p["m0"] / 100.0 * np.exp(-te / p["t2_star"])
        t1[k] = p["t1"]
    m0[SULCAL_CSF], t1[SULCAL_CSF] = m0[CSF], t1[CSF]
    for k in (SKULL, SCALP):
        pd, t1k, t2s, _ = _EXTRA[k]
        m0[k] = M0_SCALE * pd * np.exp(-te / t2s)
        t1[k] = t1k
    return m0, t1


@dataclass
class _Signals:
    """Noise-free voxel signals (flat over active voxels) at one head position."""

    m0: np.ndarray
    static: dict  # delay -> (n_active,) control signal
    kinetic: dict  # delay -> (n_active,) mean g over the voxel's points
    cbf: np.ndarray | None = None
    att: np.ndarray | None = None
    fractions: dict | None = None


def _signals(anat, grid, proto, tables, pts, *, t1_mode, dro, delays, truth=False) -> _Signals:
    """Voxel means of m0, static and kinetic terms of points ``pts`` (n_active, n_sub, 3)."""
    m0_tab, t1_tab = tables
    n_act, n_sub = pts.shape[:2]
    flat = pts.reshape(-1, 3)
    lab = anat.labels_at(flat)
    f, att = anat.flow_and_arrival(flat, lab)
    t1 = t1_tab[lab]
    m0 = m0_tab[lab]
    z = np.repeat(grid.active % grid.shape[2], n_sub)
    t1_tissue = None if t1_mode == "blood" else t1
    out = _Signals(m0=m0.reshape(n_act, n_sub).mean(1), static={}, kinetic={})
    for delay in delays:
        t_read = proto.read_times(delay)[z]
        mz = mz_after_saturation(t1, t_read, proto.bs_times)
        out.static[delay] = (m0 * mz).reshape(n_act, n_sub).mean(1)
        g = gkm_kernel(
            f,
            att,
            delay + proto.slice_timing[z],
            labeling=proto.labeling,
            tau=proto.tau,
            t1b=dro.t1_blood,
            t1_tissue=t1_tissue,
            lam=dro.lam,
        )
        out.kinetic[delay] = g.reshape(n_act, n_sub).mean(1)
    if truth:
        fs = f.reshape(n_act, n_sub)
        out.cbf = kinetics.CBF_UNITS * fs.mean(1)
        flow = fs.sum(1)
        out.att = np.where(
            flow > 0, (fs * att.reshape(n_act, n_sub)).sum(1) / np.where(flow > 0, flow, 1), 0.0
        )
        labs = lab.reshape(n_act, n_sub)
        out.fractions = {
            "gm": (labs == GM).mean(1),
            "wm": (labs == WM).mean(1),
            "csf": ((labs == CSF) | (labs == SULCAL_CSF)).mean(1),
        }
    return out


def _volume(sig: _Signals, delay, is_label, alpha, grid) -> np.ndarray:
    vol = np.zeros(int(np.prod(grid.shape)))
    s = sig.static[delay]
    if is_label:
        s = s - 2.0 * alpha * sig.m0 * sig.kinetic[delay]
    vol[grid.active] = s
    return vol.reshape(grid.shape)


def _to_grid(values, grid) -> np.ndarray:
    vol = np.zeros(int(np.prod(grid.shape)))
    vol[grid.active] = values
    return vol.reshape(grid.shape)


# --------------------------------------------------------------------------
# noise, motion and outliers


def correlated_noise(rng, shape, lag1: float = NOISE_LAG1) -> np.ndarray:
    """Unit-variance Gaussian noise with lag-1 correlation ``lag1`` along x and y.

    Separable 3-tap kernel ``[a, 1, a]`` with ``2a / (1 + 2a²) = lag1``.
    """
    a = (1.0 - np.sqrt(1.0 - 2.0 * lag1**2)) / (2.0 * lag1) if lag1 > 0 else 0.0
    w = np.array([a, 1.0, a]) / np.sqrt(1.0 + 2.0 * a * a)
    n = rng.standard_normal(shape)
    n = ndimage.correlate1d(n, w, axis=0, mode="wrap")
    return ndimage.correlate1d(n, w, axis=1, mode="wrap")


def _noise_profile(n_slices) -> np.ndarray:
    """Slice-varying noise SD factor (coil sensitivity falls off at the FOV ends)."""
    z = np.linspace(-1.0, 1.0, n_slices)
    return 1.0 + 0.25 * (1.0 - np.cos(np.pi * z)) - 0.125


def _magnitude(rng, signal, sigma_z) -> np.ndarray:
    sd = np.asarray(sigma_z)[None, None, :]
    re = signal + sd * correlated_noise(rng, signal.shape)
    im = sd * correlated_noise(rng, signal.shape)
    hit = rng.random(signal.shape) < OUTLIER_VOXEL_RATE
    if hit.any():
        big = 6.0 * np.broadcast_to(sd, signal.shape)[hit]
        re[hit] += big * rng.standard_normal(hit.sum())
        im[hit] += big * rng.standard_normal(hit.sum())
    return np.sqrt(re * re + im * im)


def _motion_params(rng, kind, n_vol) -> np.ndarray:
    params = np.zeros((n_vol, 6))
    if kind == "drift":
        d = rng.standard_normal(3)
        r = rng.standard_normal(3)
        ramp = np.linspace(0.0, 1.0, n_vol)[:, None]
        params[:, :3] = ramp * 2.0 * d / np.linalg.norm(d)
        params[:, 3:] = ramp * np.deg2rad(2.0) * r / np.linalg.norm(r)
    elif kind == "jumps":
        n_jumps = int(rng.integers(2, 4))
        at = np.sort(rng.choice(np.arange(2, n_vol), min(n_jumps, n_vol - 2), replace=False))
        for t in at:
            step = np.r_[rng.uniform(-2, 2, 3), np.deg2rad(rng.uniform(-2, 2, 3))]
            params[t:] += step
    return params


def _pick_outliers(rng, kinds, n_vol, n_slices, brain_slices, rate):
    """``[(volume, slices, kind)]``: a few corrupted volumes, never volume 0."""
    if not kinds:
        return []
    n = min(n_vol - 1, max(len(kinds), int(round(rate * n_vol))))
    vols = np.sort(rng.choice(np.arange(1, n_vol), n, replace=False))
    out = []
    lo, hi = int(brain_slices.min()), int(brain_slices.max())
    for i, t in enumerate(vols):
        kind = kinds[i % len(kinds)]
        if kind == "global":
            slices = []
        elif kind == "spikes":
            slices = [int(rng.integers(lo, hi + 1))]
        elif kind == "slab_dropout":
            width = int(rng.integers(2, 5))
            z0 = int(rng.integers(lo, max(lo + 1, hi - width + 2)))
            slices = list(range(z0, min(z0 + width, n_slices)))
        else:  # slab_motion: the head moves while slice z0 is acquired
            z0 = int(rng.integers(lo + 1, hi))
            slices = list(range(z0, n_slices))
        out.append((int(t), slices, kind))
    return out


def _corrupt(rng, vol, slices, kind, static_mean) -> None:
    if kind == "global":
        vol *= 1.0 + rng.choice([-1, 1]) * rng.uniform(0.04, 0.08)
    elif kind == "slab_dropout":
        vol[:, :, slices] *= rng.uniform(0.4, 0.7)
    elif kind == "spikes":
        z = slices[0]
        nx, ny = vol.shape[:2]
        kx, ky = rng.integers(1, nx // 4), rng.integers(1, ny // 4)
        xx, yy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
        wave = np.cos(2 * np.pi * (kx * xx / nx + ky * yy / ny) + rng.uniform(0, 2 * np.pi))
        vol[:, :, z] += rng.uniform(0.15, 0.3) * static_mean * wave


# --------------------------------------------------------------------------
# subject


@dataclass(frozen=True)
class _Readout:
    """Through-plane blur (3D readouts, FWHM in slices) and the magnitude with noise."""

    sigma: np.ndarray  # per slice; all zero for noise-free images
    z_fwhm: float

    def __call__(self, rng, vol) -> np.ndarray:
        vol = through_plane_blur(vol, self.z_fwhm, mode=Z_BLUR_MODE)
        if np.any(self.sigma > 0):
            return _magnitude(rng, vol, self.sigma)
        return np.abs(vol)


def _m0_scan(anat, grid, tables, m0_tr) -> np.ndarray:
    """Noise-free M0 scan: saturation recovery over ``m0_tr``, no BS, head at volume 0."""
    m0_tab, t1_tab = tables
    lab = anat.labels_at(grid.points.reshape(-1, 3))
    rec = (m0_tab[lab] * -np.expm1(-m0_tr / t1_tab[lab])).reshape(grid.points.shape[:2])
    return _to_grid(rec.mean(1), grid)


@dataclass
class PhantomSubject:
    """One phantom subject: scanner images, sidecars and the truth (ASL grid).

    Same field names as :class:`asl_pipeline.simulate.series.SimulatedSubject`
    where they mean the same. ``outliers``: ``[(volume, slices, kind)]``
    (``slices`` empty for a whole-volume corruption); ``deltam`` /
    ``static``: noise-free ΔM and control per distinct delay (dict).
    ``cbf_white_paper``: what the white-paper equation (sidecar α, blood T1
    1.65 s, λ 0.9) reads from the noise-free ΔM and ``m0_true`` at the longest
    delay; equal to ``cbf`` when ``t1_after_arrival="blood"`` and every ATT is
    below the PLD, lower with the apparent tissue T1 (the model difference a
    white-paper pipeline cannot remove, about -27% in GM and -60% in WM for
    the default 2D PCASL run with the DRO's T1 of 1.33 / 0.83 s).
    """

    asl: np.ndarray
    aslcontext: list
    m0: np.ndarray
    asl_affine: np.ndarray
    metadata: dict
    m0_metadata: dict
    cbf: np.ndarray
    att: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    m0_true: np.ndarray
    cbf_white_paper: np.ndarray
    motion: np.ndarray
    outliers: list
    t1w: np.ndarray | None
    t1w_affine: np.ndarray | None
    alpha: float
    plds: tuple
    deltam: dict = field(default_factory=dict)
    static: dict = field(default_factory=dict)
    seed: int = 0

    @property
    def outlier_rows(self) -> list:
        """Rows ``(volume, slice or "n/a", pair, type)`` of the outlier table."""
        rows = []
        for t, slices, kind in self.outliers:
            if not slices:
                rows.append((t, "n/a", t // 2, kind))
            rows += [(t, z, t // 2, kind) for z in slices]
        return rows


def _t1w(rng, anat: SubjectAnatomy, voxel: float, noise: bool):
    """MPRAGE-like T1w of the whole head, ``voxel`` mm, 2x2x2 points per voxel."""
    fov = np.array([180.0, 222.0, 195.0])
    shape = tuple(int(round(f / voxel)) for f in fov)
    affine = grid_affine(shape, (voxel,) * 3, anat.centre + np.array([0.0, -5.0, -8.0]))
    intens = np.zeros(7)
    for k, v in _T1W_INTENSITY.items():
        intens[k] = v
    for k, (*_, v) in _EXTRA.items():
        intens[k] = v
    offs = _subsample_offsets((2, 2, 2))
    img = np.zeros(shape, np.float32)
    ii, jj = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for i in range(shape[0]):
        ijk = np.stack([np.full(ii.size, i), ii.ravel(), jj.ravel()], axis=1)
        pts = (ijk[:, None, :] + offs[None]).reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
        lab = anat.labels_at(pts)
        img[i] = intens[lab].reshape(-1, len(offs)).mean(1).reshape(shape[1:])
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    bias = PlaneWaves.draw(rng, 0.08, (80.0, 200.0), 6)
    world = ijk.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
    img *= np.exp(bias(world)).reshape(shape).astype(np.float32)
    img *= 900.0
    if noise:
        sd = 0.025 * 900.0
        re = img + sd * rng.standard_normal(shape, dtype=np.float32)
        im = sd * rng.standard_normal(shape, dtype=np.float32)
        img = np.sqrt(re * re + im * im)
    return img, affine


def simulate_phantom(
    seed: int,
    *,
    labeling: str = "PCASL",
    readout: str = "2D",
    pld: float = 1.8,
    plds=None,
    pld_repeats: int | None = None,
    tau: float | None = None,
    n_pairs: int = 40,
    background_suppression: bool = False,
    noise_level: float = 1.0,
    motion: str = "none",
    outliers=(),
    outlier_rate: float = 0.06,
    t1_after_arrival: str = "tissue",
    shape=(64, 64, 24),
    voxel_size=(3.75, 3.75, 5.0),
    subsample=(2, 2, 3),
    slice_duration: float = 0.04,
    m0_tr: float = 6.0,
    drift: float = -0.01,
    pair_offset_sd: float = 0.001,
    z_blur_fwhm: float | None = None,
    anatomy_voxel: float = 1.0,
    t1w: bool = True,
    t1w_voxel_size: float = 1.5,
    dtype=np.float32,
) -> PhantomSubject:
    """Simulate one phantom subject (see the module docstring for the model).

    ``pld``: the delay of a single-PLD run (PASL: the TI); ``plds``: the delays
    of a multi-PLD run (one value gives a single-PLD run at it), cycled within
    each repeat, ``pld_repeats`` pairs per delay or else ``n_pairs`` in all (a
    multiple of their number), as for ``simulate_subject``. ``tau``: labeling
    duration (PCASL, default 1.8 s) or QUIPSS II bolus TI1 (PASL, 0.8 s).
    ``motion``: "none", "drift" (linear 0 -> 2 mm and 0 -> 2 degrees over the
    run, random axes) or "jumps" (2-3 persistent steps of up to 2 mm / 2
    degrees per axis). ``outliers``: "none", or any of "slab_dropout" (a 2-4
    slice slab at 40-70%), "spikes" (a k-space spike: a plane wave in one
    slice), "global" (whole-volume gain 4-8%) and "slab_motion" (the slices
    from z0 on acquired after a 3-5 mm / 3-5 degree move; 2D-like, in 3D the
    readout blur spreads it by a slice), or "all", as a list or a
    comma-separated string; about ``outlier_rate`` of the
    volumes (at least one per kind). ``noise_level`` scales the thermal noise
    and the pair offsets (0: noise-free images, no drift). ``z_blur_fwhm``
    (slices): through-plane blur of the readout, default 1.5 for 3D, 0 for 2D.
    ``dtype``: of ``asl`` and ``m0`` (float64 for exact tests).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ASLInputError(
            f"shape {shape} needs 3 axes of at least 4 voxels.",
            field="shape",
            fix="use e.g. shape=(64, 64, 24).",
        )
    if not noise_level >= 0:
        raise ASLInputError(
            f"noise_level={noise_level} must be >= 0.", field="noise_level", fix="use e.g. 1.0."
        )
    motion = _choice(motion, MOTIONS, "motion")
    t1_mode = _choice(t1_after_arrival, ("tissue", "blood"), "t1_after_arrival")
    kinds = _outlier_kinds(outliers)
    proto = _protocol(
        labeling=labeling,
        readout=readout,
        pld=pld,
        plds=plds,
        pld_repeats=pld_repeats,
        n_pairs=n_pairs,
        n_slices=shape[2],
        tau=tau,
        bs=background_suppression,
        slice_duration=slice_duration,
        m0_tr=m0_tr,
    )
    dro = load_dro()
    anat = make_anatomy(rng, dro, voxel=anatomy_voxel)
    grid = _asl_grid(anat, rng, shape, voxel_size, subsample)
    tables = _tissue_tables(dro, _TE[proto.readout])
    ref = _signals(
        anat,
        grid,
        proto,
        tables,
        grid.points,
        t1_mode=t1_mode,
        dro=dro,
        delays=proto.pld_list,
        truth=True,
    )
    alpha = proto.alpha
    n_vol = 2 * len(proto.plds)
    params = _motion_params(rng, motion, n_vol)
    brain = _to_grid(ref.fractions["gm"] + ref.fractions["wm"] + ref.fractions["csf"], grid)
    brain_slices = np.flatnonzero((brain >= 0.5).sum((0, 1)) >= 10)
    if brain_slices.size == 0:
        brain_slices = np.arange(shape[2])
    corrupt = _pick_outliers(rng, kinds, n_vol, shape[2], brain_slices, outlier_rate)
    offsets = rng.normal(0.0, pair_offset_sd * noise_level, len(proto.plds))
    offsets -= offsets.mean()  # zero over the run: the mean ΔM keeps its truth
    readout = _Readout(
        sigma=NOISE_SD * M0_SCALE * noise_level * _noise_profile(shape[2]),
        z_fwhm=(Z_BLUR_FWHM_3D if proto.readout == "3D" else 0.0)
        if z_blur_fwhm is None
        else z_blur_fwhm,
    )

    def signals_at(p, delay):
        if not np.any(p):
            return ref
        mat_inv = np.linalg.inv(motion_matrix(p, grid.affine, shape))
        pts = grid.points @ mat_inv[:3, :3].T + mat_inv[:3, 3]
        return _signals(anat, grid, proto, tables, pts, t1_mode=t1_mode, dro=dro, delays=[delay])

    asl = np.empty(shape + (n_vol,), dtype=dtype)
    static_mean = float(np.mean(ref.static[proto.pld_list[0]][ref.m0 > 0.3 * ref.m0.max()]))
    by_volume = {t: (slices, kind) for t, slices, kind in corrupt}
    for t in range(n_vol):
        delay, label = proto.plds[t // 2], t % 2 == 1
        vol = _volume(signals_at(params[t], delay), delay, label, proto.alpha, grid)
        slices, kind = by_volume.get(t, ([], None))
        if kind == "slab_motion":
            trans = rng.uniform(3, 5, 3) * rng.choice([-1, 1], 3)
            rot = np.deg2rad(rng.uniform(3, 5, 3) * rng.choice([-1, 1], 3))
            p = params[t] + np.r_[trans, rot]
            vol[:, :, slices] = _volume(signals_at(p, delay), delay, label, proto.alpha, grid)[
                :, :, slices
            ]
        if noise_level > 0:
            vol = vol * (1.0 + drift * t / max(n_vol - 1, 1) + (offsets[t // 2] if label else 0))
        if kind in ("global", "slab_dropout", "spikes"):
            _corrupt(rng, vol, slices, kind, static_mean)
        asl[..., t] = readout(rng, vol)
    m0_img = readout(rng, _m0_scan(anat, grid, tables, proto.m0_tr))

    deltam = {d: _to_grid(2 * alpha * ref.m0 * ref.kinetic[d], grid) for d in proto.pld_list}
    longest = proto.pld_list[-1]
    wp = _to_grid(ref.kinetic[longest], grid) * proto.white_paper_factor(
        longest, t1b=dro.t1_blood, lam=dro.lam
    )
    subject = PhantomSubject(
        asl=asl,
        aslcontext=["control", "label"] * len(proto.plds),
        m0=m0_img.astype(dtype),
        asl_affine=grid.affine,
        metadata=proto.metadata(voxel_size),
        m0_metadata=proto.m0_metadata(voxel_size),
        cbf=_to_grid(ref.cbf, grid).astype(np.float32),
        att=_to_grid(ref.att, grid).astype(np.float32),
        gm=_to_grid(ref.fractions["gm"], grid).astype(np.float32),
        wm=_to_grid(ref.fractions["wm"], grid).astype(np.float32),
        csf=_to_grid(ref.fractions["csf"], grid).astype(np.float32),
        brain_mask=brain >= 0.5,
        m0_true=_to_grid(ref.m0, grid).astype(np.float32),
        cbf_white_paper=wp.astype(np.float32),
        motion=params,
        outliers=corrupt,
        t1w=None,
        t1w_affine=None,
        alpha=alpha,
        plds=proto.plds,
        deltam=deltam,
        static={d: _to_grid(ref.static[d], grid) for d in proto.pld_list},
        seed=int(seed),
    )
    if t1w:
        subject.t1w, subject.t1w_affine = _t1w(rng, anat, t1w_voxel_size, noise_level > 0)
    return subject


def _outlier_kinds(outliers) -> list:
    if outliers is None or outliers is False:
        return []
    items = [outliers] if isinstance(outliers, str) else list(outliers)
    kinds = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip().lower()
            if part in ("", "none"):
                continue
            if part == "all":
                kinds += [k for k in OUTLIER_TYPES if k not in kinds]
                continue
            kinds.append(_choice(OUTLIER_ALIASES.get(part, part), OUTLIER_TYPES, "outliers"))
    return list(dict.fromkeys(kinds))


# --------------------------------------------------------------------------
# BIDS writing (the layout of asl_pipeline.simulate.dataset)


def write_phantom_subject(out_dir, label: str, sub: PhantomSubject) -> list[Path]:
    """Write one phantom subject with the names of :func:`~.dataset.write_subject`."""
    root = Path(out_dir)
    s = f"sub-{label}"
    perf = root / s / "perf"
    dp = root / "derivatives" / "simulation" / s / "perf"
    written = []

    def nii(path, data, affine, dtype, **kw):
        _write_nifti(path, data, affine, dtype=dtype, **kw)
        written.append(path)

    def js(path, obj):
        _write_json(path, obj)
        written.append(path)

    aff = sub.asl_affine
    nii(
        perf / f"{s}_asl.nii.gz",
        sub.asl,
        aff,
        np.int16,
        tr=sub.metadata["RepetitionTimePreparation"],
    )
    js(perf / f"{s}_asl.json", sub.metadata)
    _write_tsv(perf / f"{s}_aslcontext.tsv", ["volume_type"], [[c] for c in sub.aslcontext])
    nii(perf / f"{s}_m0scan.nii.gz", sub.m0, aff, np.int16)
    js(
        perf / f"{s}_m0scan.json",
        {**sub.m0_metadata, "IntendedFor": f"bids::{s}/perf/{s}_asl.nii.gz"},
    )
    if sub.t1w is not None:
        nii(root / s / "anat" / f"{s}_T1w.nii.gz", sub.t1w, sub.t1w_affine, np.int16)
        js(
            root / s / "anat" / f"{s}_T1w.json",
            {
                "Manufacturer": "asl_pipeline phantom",
                "ManufacturersModelName": "asl_pipeline.simulate.phantom",
                "MagneticFieldStrength": 3,
                "MRAcquisitionType": "3D",
                "PulseSequenceType": "MPRAGE",
                "RepetitionTime": 2.3,
                "EchoTime": 0.00296,
                "InversionTime": 0.9,
                "FlipAngle": 9,
            },
        )
    nii(dp / f"{s}_desc-true_cbf.nii.gz", sub.cbf, aff, np.float32)
    nii(dp / f"{s}_desc-true_att.nii.gz", sub.att, aff, np.float32)
    nii(dp / f"{s}_desc-true_m0.nii.gz", sub.m0_true, aff, np.float32)
    nii(dp / f"{s}_desc-whitepaper_cbf.nii.gz", sub.cbf_white_paper, aff, np.float32)
    for name in ("gm", "wm", "csf"):
        nii(dp / f"{s}_label-{name.upper()}_probseg.nii.gz", getattr(sub, name), aff, np.float32)
    nii(dp / f"{s}_desc-brain_mask.nii.gz", sub.brain_mask.astype(np.uint8), aff, np.uint8)
    cols = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    _write_tsv(
        dp / f"{s}_desc-true_motion.tsv", cols, [[f"{v:.9f}" for v in r] for r in sub.motion]
    )
    _write_json(
        dp / f"{s}_desc-true_motion.json",
        {
            "Description": (
                "True head motion of each ASL volume relative to volume 0, in the "
                "convention of asl_pipeline.simulate.motion.motion_matrix (SPM signs, "
                "rotation about FOVCentre); the M0 scan is at the position of volume 0."
            ),
            "FOVCentre": [
                float(v) for v in (aff @ np.r_[(np.array(sub.asl.shape[:3]) - 1) / 2, 1])[:3]
            ],
            "M0ScanMotion": [0.0] * 6,
            **{c: {"Units": "mm"} for c in cols[:3]},
            **{c: {"Units": "rad"} for c in cols[3:]},
        },
    )
    _write_tsv(
        dp / f"{s}_desc-true_outliers.tsv", ["volume", "slice", "pair", "type"], sub.outlier_rows
    )
    xfm = dp / f"{s}_from-ASL_to-T1w_mode-image_xfm.txt"
    _write_bytes(
        xfm, ("\n".join(" ".join(f"{v:.12g}" for v in r) for r in np.eye(4)) + "\n").encode()
    )
    written += [dp / f"{s}_desc-true_motion.tsv", dp / f"{s}_desc-true_outliers.tsv", xfm]
    return written


def simulate_phantom_dataset(
    out_dir,
    n_subjects: int = 1,
    seed: int = 0,
    *,
    overwrite: bool = False,
    progress=None,
    **subject_kwargs,
) -> Path:
    """Simulate ``n_subjects`` phantom subjects as a BIDS dataset with the truth.

    Subject ``i`` is ``simulate_phantom(subject_seed(seed, i), **subject_kwargs)``;
    the layout and the overwrite rule are those of
    :func:`asl_pipeline.simulate.simulate_dataset`.
    """
    call = ", ".join(f"{k}={v!r}" for k, v in sorted(subject_kwargs.items()))
    return write_dataset(
        out_dir,
        n_subjects,
        seed,
        simulate=simulate_phantom,
        write=write_phantom_subject,
        title="Simulated ASL dataset (asl_pipeline phantom generator)",
        author="asl_pipeline phantom generator",
        description=(
            f"simulate_phantom_dataset(seed={int(seed)}, n_subjects={int(n_subjects)}"
            + (f", {call})" if call else ")")
        ),
        readme=(
            "Simulated arterial spin labeling dataset written by "
            f"asl_pipeline.simulate.phantom (seed {int(seed)}).\nAnatomy from the label map "
            "of the ASL digital reference object (asldro, MIT licence; a segmentation of "
            "ICBM 2009a), warped per subject; signal from the Buxton general kinetic model "
            "with the apparent tissue T1. Ground truth in derivatives/simulation.\n"
        ),
        overwrite=overwrite,
        progress=progress,
        **subject_kwargs,
    )


#: The name ``benchmarks/validate_chain.py`` calls, as in :mod:`asl_pipeline.simulate`.
simulate_dataset = simulate_phantom_dataset
