"""Simulated ASL subjects (full scanner-like series) and fast CBF series.

Signal model (both paths)
-------------------------
For every ASL voxel, tissue fractions ``f_k`` (GM, WM, CSF, skull, scalp) are
the mean of the MNI tissue model over ``subsample`` points inside the voxel,
pulled back through the subject's true mappings (see
:mod:`asl_pipeline.simulate.anatomy`). Then

* true CBF ``= f_GM * CBF_GM(x) + f_WM * CBF_WM(x)`` (mL/100 g/min), with
  ``CBF_GM`` in 40-80 and ``CBF_WM`` in 15-30: a subject level times a smooth
  regional field, optionally times a hypoperfused lesion;
* true ATT = flow-weighted mean of the GM and WM transit times, 0.7-1.8 s,
  longer in WM and posteriorly (+0.4 s and slower flow inside a lesion);
* ``m0_true = g * M0_SCALE * sum_k f_k PD_k`` (fully relaxed equilibrium
  magnetisation of the voxel as the readout sees it, what quantification
  should divide by), ``g`` the susceptibility signal loss of the EPI/GRASE
  readout (1 away from the sinuses and ear canals);
* static (control) signal ``= g * M0_SCALE * sum_k f_k PD_k (1 - exp(-TR/T1_k))``
  times, with background suppression, a residual fraction per tissue
  (:data:`BS_RESIDUAL`) that recovers slice by slice in 2D readouts;
* ΔM from :func:`asl_pipeline.kinetics.pcasl_deltam` /
  :func:`~asl_pipeline.kinetics.pasl_deltam` with the voxel's CBF, ATT and
  ``m0_true``, the slice's PLD (``PLD + SliceTiming[z]`` for 2D readouts) and
  ``alpha = labeling_efficiency(type, LabelingEfficiency, n_BS_pulses)``;
  ``label = control - ΔM``. The T1 after the label's arrival is the apparent
  tissue T1 (Buxton et al. 1998) for multi-PLD runs and blood T1 (the white
  paper's model) for single-PLD runs unless ``t1_after_arrival`` says
  otherwise; multi-PLD runs give each pair its own PLD.

Each volume is then multiplied by ``1 + physiological fluctuation`` (slow
drift, cardiac and respiratory terms whose maps change sign over about 2 cm,
and a small drift of the whole image's gain, :func:`_physio_maps`) and
corrupted by outliers if any, and complex Gaussian noise is added before the
magnitude is taken (Rician). ``noise_scale`` scales the thermal and the
physiological noise together (0 gives noise-free images).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from asl_pipeline import kinetics, sdc
from asl_pipeline.errors import ASLInputError
from asl_pipeline.simulate import anatomy, noise
from asl_pipeline.simulate.anatomy import (
    PROTON_DENSITY,
    T1_3T,
    TISSUES,
    SmoothField,
    SubjectDeformation,
    apply_affine,
    grid_affine,
    load_mni_model,
    rigid_matrix,
)
from asl_pipeline.simulate.motion import (
    displacement_field,
    random_motion,
    resample_moved,
)
from asl_pipeline.smoothing import fwhm_to_sigma

#: M0 of pure CSF in scanner units.
M0_SCALE = 1000.0

#: Fraction of the static signal left by background suppression, per tissue.
BS_RESIDUAL = {"gm": 0.09, "wm": 0.06, "csf": 0.20, "skull": 0.05, "scalp": 0.05}

#: Number of background-suppression pulses written to the sidecar (and used in
#: the true labeling efficiency) when background suppression is on.
BS_PULSES = 2

#: Box (mm, T1w world) the deformation control grid covers.
_DEFORM_BOX = ((-115.0, -150.0, -105.0), (115.0, 120.0, 135.0))

#: MNI point the ASL field of view is centred on (before jitter), and the
#: centre of the head for the T1w field of view.
_ASL_TARGET_MNI = np.array([0.0, -15.0, 14.0])
_HEAD_CENTRE_MNI = np.array([0.0, -18.0, 12.0])

#: Susceptibility signal loss in the ASL/M0 readout: (MNI centre, depth, width
#: in mm) for the orbitofrontal region and both temporal poles / ear canals.
_DROPOUT_MNI = (
    ((0.0, 38.0, -24.0), 0.55, 12.0),
    ((-44.0, -6.0, -30.0), 0.45, 10.0),
    ((44.0, -6.0, -30.0), 0.45, 10.0),
)


#: B0 inhomogeneity (off-resonance, Hz at 3 T) of the distortion option:
#: (MNI centre, amplitude range in Hz, width in mm). Air-tissue interfaces of
#: the frontal sinus / orbits (above the sinus, in the orbitofrontal cortex) and
#: of the ear canals / mastoids (inferior temporal lobes) give the strong,
#: localised fields of real field maps; peak displacements of 1.5-4 ASL voxels
#: in the brain at the simulated readout (TotalReadoutTime 24.5 ms).
_B0_MNI = (
    ((0.0, 45.0, -32.0), (130.0, 170.0), 20.0),
    ((-42.0, -4.0, -42.0), (80.0, 110.0), 16.0),
    ((42.0, -4.0, -42.0), (80.0, 110.0), 16.0),
)

#: Reverse phase-encoding direction written for the reverse-PE M0.
_REVERSE_PE = {"j": "j-", "j-": "j", "i": "i-", "i-": "i", "k": "k-", "k-": "k"}


def b0_field(rng, points_mni) -> np.ndarray:
    """Off-resonance field (Hz) at ``(N, 3)`` MNI points: the blobs of
    :data:`_B0_MNI` (amplitudes drawn from their ranges, centres jittered by
    +-4 mm) plus a gentle linear background (up to +-12 Hz over 100 mm)."""
    pts = np.asarray(points_mni, float)
    field = np.zeros(len(pts))
    for centre, (lo, hi), width in _B0_MNI:
        c = np.asarray(centre) + rng.uniform(-4, 4, 3)
        d2 = ((pts - c) ** 2).sum(1)
        field += rng.uniform(lo, hi) * np.exp(-d2 / (2 * width**2))
    slope = rng.uniform(-0.12, 0.12, 3)
    return field + (pts - np.array([0.0, -18.0, 12.0])) @ slope


def _check_choice(value, choices, field_name):
    v = str(value).upper()
    if v not in choices:
        raise ASLInputError(
            f"{value!r} is not a supported value.",
            field=field_name,
            fix=f"use one of {', '.join(choices)}.",
        )
    return v


@dataclass
class ASLProtocol:
    """Acquisition parameters of a simulated ASL run (the sidecar's content)."""

    labeling: str
    readout: str
    n_pairs: int
    n_slices: int
    pld: float
    labeling_duration: float
    bolus_cutoff: float
    background_suppression: bool
    labeling_efficiency: float | None
    slice_duration: float
    label_first: bool
    m0_tr: float | None = None
    #: Multi-PLD (multi-TI) runs: the distinct PLDs (TIs) in acquisition order,
    #: cycled ``pld_repeats`` times (``pld`` is then their maximum); ``None``
    #: for single-PLD runs.
    plds: tuple[float, ...] | None = None
    pld_repeats: int = 1
    #: T1 after the label's arrival (:data:`asl_pipeline.kinetics.T1_AFTER_ARRIVAL`)
    #: and the tissue T1 (s) of the kinetic model.
    t1_after_arrival: str = "blood"
    t1_tissue: float = kinetics.T1_TISSUE[3.0]

    @property
    def is_multi_pld(self) -> bool:
        return self.plds is not None

    @property
    def pair_pld(self) -> np.ndarray:
        """PLD (TI) of each control/label pair, in acquisition order."""
        if self.plds is None:
            return np.full(self.n_pairs, self.pld)
        return np.tile(np.asarray(self.plds, float), self.pld_repeats)

    @property
    def pair_pld_index(self) -> np.ndarray:
        """Index into ``plds`` of each pair (zeros for single-PLD runs)."""
        if self.plds is None:
            return np.zeros(self.n_pairs, dtype=int)
        return np.tile(np.arange(len(self.plds)), self.pld_repeats)

    @property
    def slice_timing(self) -> np.ndarray:
        if self.readout == "3D":
            return np.zeros(self.n_slices)
        return np.arange(self.n_slices) * self.slice_duration

    @property
    def slice_pld(self) -> np.ndarray:
        """Effective PLD (PCASL) or TI (PASL) of each slice, s."""
        return self.pld + self.slice_timing

    @property
    def readout_time(self) -> float:
        return self.n_slices * self.slice_duration if self.readout == "2D" else 0.6

    @property
    def tr(self) -> float:
        bolus = self.labeling_duration if self.labeling == "PCASL" else 0.0
        return round(bolus + self.pld + self.readout_time + 0.1, 4)

    @property
    def n_bs_pulses(self) -> int:
        return BS_PULSES if self.background_suppression else 0

    @property
    def alpha(self) -> float:
        return kinetics.labeling_efficiency(
            self.labeling, self.labeling_efficiency, self.n_bs_pulses
        )

    @property
    def aslcontext(self) -> list[str]:
        pair = ["label", "control"] if self.label_first else ["control", "label"]
        return pair * self.n_pairs

    def deltam(self, cbf, att, m0, t1b=kinetics.T1_BLOOD[3.0], *, pld=None):
        """ΔM for the protocol at ``pld`` (default ``self.pld``), broadcasting the
        per-slice delay ``pld + SliceTiming`` along z."""
        pld = (self.pld if pld is None else float(pld)) + self.slice_timing[None, None, :]
        kw = {
            "alpha": self.alpha,
            "t1b": t1b,
            "t1_after_arrival": self.t1_after_arrival,
            "t1_tissue": self.t1_tissue,
        }
        if self.labeling == "PCASL":
            return kinetics.pcasl_deltam(cbf, att, pld, self.labeling_duration, m0, **kw)
        return kinetics.pasl_deltam(cbf, att, pld, self.bolus_cutoff, m0, **kw)

    def deltam_per_flow(self, cbf, att, t1b=kinetics.T1_BLOOD[3.0], *, pld=None):
        """ΔM per unit of ``cbf * M0`` at the voxel's own ``cbf`` (the apparent
        tissue T1 depends on the flow; with blood T1 it is ``deltam(1, att, 1)``)."""
        c = np.maximum(np.asarray(cbf, float), 1e-6)
        return self.deltam(c, att, 1.0, t1b, pld=pld) / c

    def metadata(self, voxel_size) -> dict:
        """The ``_asl.json`` sidecar a scanner would write."""
        md = {
            "Manufacturer": "asl_pipeline simulator",
            "ManufacturersModelName": "asl_pipeline.simulate",
            "MagneticFieldStrength": 3,
            "MRAcquisitionType": self.readout,
            "PulseSequenceType": "EPI" if self.readout == "2D" else "GRASE",
            "EchoTime": 0.014 if self.readout == "2D" else 0.0106,
            "FlipAngle": 90,
            "RepetitionTimePreparation": self.tr,
            "ArterialSpinLabelingType": self.labeling,
            "PostLabelingDelay": (
                float(self.pld)
                if self.plds is None
                else [float(p) for p in np.repeat(self.pair_pld, 2)]
            ),
            "BackgroundSuppression": bool(self.background_suppression),
            "M0Type": "Separate",
            "TotalAcquiredPairs": int(self.n_pairs),
            "VascularCrushing": False,
            "AcquisitionVoxelSize": [float(v) for v in voxel_size],
            "LabelingLocationDescription": "simulated, below the circle of Willis",
        }
        if self.readout == "2D":
            md["SliceTiming"] = [round(float(t), 6) for t in self.slice_timing]
            md["SliceEncodingDirection"] = "k"
        md["PhaseEncodingDirection"] = "j"
        md["TotalReadoutTime"] = 0.0245
        if self.labeling == "PCASL":
            md["LabelingDuration"] = float(self.labeling_duration)
            md["PCASLType"] = "balanced"
        else:
            md["PASLType"] = "FAIR"
            md["BolusCutOffFlag"] = True
            md["BolusCutOffTechnique"] = "QUIPSSII"
            md["BolusCutOffDelayTime"] = float(self.bolus_cutoff)
            md["LabelingSlabThickness"] = 100.0
        if self.background_suppression:
            # pulses before the readout of the shortest delay
            bs_pld = self.pld if self.plds is None else min(self.plds)
            md["BackgroundSuppressionNumberPulses"] = self.n_bs_pulses
            md["BackgroundSuppressionPulseTime"] = [
                round(
                    bs_pld * 0.55 + (self.labeling_duration if self.labeling == "PCASL" else 0.0),
                    4,
                ),
                round(
                    bs_pld * 0.85 + (self.labeling_duration if self.labeling == "PCASL" else 0.0),
                    4,
                ),
            ]
        if self.labeling_efficiency is not None:
            md["LabelingEfficiency"] = float(self.labeling_efficiency)
        return md

    def m0_metadata(self, voxel_size) -> dict:
        """The ``_m0scan.json`` sidecar (IntendedFor is added by the writer)."""
        md = {
            "Manufacturer": "asl_pipeline simulator",
            "ManufacturersModelName": "asl_pipeline.simulate",
            "MagneticFieldStrength": 3,
            "MRAcquisitionType": self.readout,
            "PulseSequenceType": "EPI" if self.readout == "2D" else "GRASE",
            "PhaseEncodingDirection": "j",
            "TotalReadoutTime": 0.0245,
            "EchoTime": 0.014 if self.readout == "2D" else 0.0106,
            "FlipAngle": 90,
            "RepetitionTimePreparation": float(self.m0_tr),
            "AcquisitionVoxelSize": [float(v) for v in voxel_size],
        }
        if self.readout == "2D":
            md["SliceTiming"] = [round(float(t), 6) for t in self.slice_timing]
            md["SliceEncodingDirection"] = "k"
        return md


def _check_grid(shape, voxel_size, noise_scale) -> None:
    """Refuse grids and noise levels the simulator cannot honour."""
    shape = tuple(shape)
    voxel_size = tuple(voxel_size)
    if len(shape) != 3 or len(voxel_size) != 3:
        raise ASLInputError(
            f"shape {shape} / voxel_size {voxel_size} must have 3 entries.",
            field="shape",
            fix="pass e.g. shape=(64, 64, 20), voxel_size=(3.4, 3.4, 6.0).",
        )
    if min(int(n) for n in shape) < 4:
        raise ASLInputError(
            f"shape {shape} has fewer than 4 voxels along an axis.",
            field="shape",
            fix="use at least 4 voxels per axis, e.g. shape=(64, 64, 20).",
        )
    if min(float(v) for v in voxel_size) <= 0:
        raise ASLInputError(
            f"voxel_size {voxel_size} must be positive (mm).",
            field="voxel_size",
            fix="pass e.g. voxel_size=(3.4, 3.4, 6.0).",
        )
    if not float(noise_scale) >= 0:
        raise ASLInputError(
            f"noise_scale={noise_scale} must be >= 0.",
            field="noise_scale",
            fix="use 0 for noise-free images, 1 for the calibrated level.",
        )


def _make_protocol(
    *,
    labeling,
    readout,
    n_pairs,
    n_slices,
    pld,
    labeling_duration,
    bolus_cutoff,
    background_suppression,
    labeling_efficiency,
    slice_duration,
    label_first,
    m0_tr,
    plds=None,
    pld_repeats=None,
    t1_after_arrival=None,
    t1_tissue=None,
) -> ASLProtocol:
    labeling = _check_choice(labeling, ("PCASL", "PASL"), "labeling")
    readout = _check_choice(readout, ("2D", "3D"), "readout")
    multi = _check_plds(plds, pld, labeling, bolus_cutoff)
    if multi is not None:
        n_pairs = _check_repeats(n_pairs, pld_repeats, len(multi))
        pld = max(multi)
    if int(n_pairs) < 1:
        raise ASLInputError(
            f"n_pairs={n_pairs} gives no control/label pair.",
            field="n_pairs",
            fix="use n_pairs >= 1.",
        )
    if pld is None:
        pld = 1.8
    if labeling == "PASL" and not 0 < bolus_cutoff < pld:
        raise ASLInputError(
            f"bolus_cutoff={bolus_cutoff} must lie between 0 and the TI ({pld}).",
            field="bolus_cutoff",
            fix="use e.g. bolus_cutoff=0.7 with pld (TI)=1.8.",
        )
    if t1_after_arrival is None:
        t1_after_arrival = "blood" if multi is None else "tissue"
    if t1_after_arrival not in kinetics.T1_AFTER_ARRIVAL:
        raise ASLInputError(
            f"t1_after_arrival={t1_after_arrival!r} is not a supported value.",
            field="t1_after_arrival",
            fix=f"use one of {', '.join(kinetics.T1_AFTER_ARRIVAL)}.",
        )
    if t1_tissue is None:
        t1_tissue = kinetics.T1_TISSUE[3.0]
    if not (np.isfinite(t1_tissue) and t1_tissue > 0):
        raise ASLInputError(
            f"t1_tissue={t1_tissue} must be a positive number of seconds.",
            field="t1_tissue",
            fix="use e.g. t1_tissue=1.4 (3 T).",
        )
    proto = ASLProtocol(
        labeling=labeling,
        readout=readout,
        n_pairs=int(n_pairs),
        n_slices=int(n_slices),
        pld=float(pld),
        labeling_duration=float(labeling_duration),
        bolus_cutoff=float(bolus_cutoff),
        background_suppression=bool(background_suppression),
        labeling_efficiency=labeling_efficiency,
        slice_duration=float(slice_duration),
        label_first=bool(label_first),
        plds=multi,
        pld_repeats=1 if multi is None else int(n_pairs) // len(multi),
        t1_after_arrival=t1_after_arrival,
        t1_tissue=float(t1_tissue),
    )
    proto.m0_tr = float(proto.tr if m0_tr is None else m0_tr)
    return proto


def _check_plds(plds, pld, labeling, bolus_cutoff) -> tuple[float, ...] | None:
    """The distinct PLDs (TIs) of a multi-PLD run, checked; ``None`` without."""
    if plds is None:
        return None
    if pld is not None:
        raise ASLInputError(
            f"both pld={pld} and plds={plds} given.",
            field="plds",
            fix="pass pld for a single-PLD run or plds for a multi-PLD one.",
        )
    try:
        values = tuple(float(p) for p in plds)
    except (TypeError, ValueError):
        values = ()
    if (
        len(values) < 2
        or len(set(values)) != len(values)
        or not all(np.isfinite(v) and v >= 0 for v in values)
    ):
        raise ASLInputError(
            f"plds={plds!r} must be at least two distinct delays >= 0 (s).",
            field="plds",
            fix="pass e.g. plds=[0.5, 1.0, 1.5, 2.0, 2.5], or pld= for a single delay.",
        )
    if labeling == "PASL" and min(values) <= bolus_cutoff:
        raise ASLInputError(
            f"the shortest TI ({min(values)} s) is not after the bolus cut-off "
            f"TI1 = {bolus_cutoff} s (QUIPSS II saturates at TI1, before the readout).",
            field="plds",
            fix="use TIs above bolus_cutoff, e.g. plds=[0.8, 1.2, 1.6, 2.0, 2.4].",
        )
    return values


def _check_repeats(n_pairs, pld_repeats, n_plds) -> int:
    """Pairs of a multi-PLD run: ``pld_repeats`` per PLD, or ``n_pairs`` split evenly."""
    if pld_repeats is None:
        if int(n_pairs) % n_plds:
            raise ASLInputError(
                f"n_pairs={n_pairs} is not a multiple of the {n_plds} PLDs.",
                field="pld_repeats",
                fix=f"pass pld_repeats (pairs per PLD) or n_pairs a multiple of {n_plds}.",
            )
        return int(n_pairs)
    if int(pld_repeats) < 1:
        raise ASLInputError(
            f"pld_repeats={pld_repeats} gives no pair.",
            field="pld_repeats",
            fix="use pld_repeats >= 1.",
        )
    return int(pld_repeats) * n_plds


# --------------------------------------------------------------------------
# anatomy and perfusion on the ASL grid


@dataclass
class _ASLAnatomy:
    affine: np.ndarray
    fractions: dict
    brain_mask: np.ndarray
    cbf: np.ndarray
    att: np.ndarray
    lesion: np.ndarray | None
    deformation: SubjectDeformation
    asl_to_t1w: np.ndarray
    t1w_centre: np.ndarray
    padded: dict = field(default_factory=dict)
    cbf_gm: np.ndarray | None = None  # per-tissue CBF at the voxel centre (partial-volume
    cbf_wm: np.ndarray | None = None  # truth: cbf = gm * cbf_gm + wm * cbf_wm)
    #: ``f(mni_points) -> (cbf_gm, cbf_wm)``: the tissue CBF anywhere in the head
    #: (the same perfusion on another grid, e.g. the BOLD run's)
    perfusion: object = None


def _unit_field(rng, spacing):
    """A smooth field with SD about 1 over the MNI head box."""
    # cubic B-spline interpolation shrinks the coefficient SD by ~0.33
    return SmoothField(rng, (-100, -140, -80), (100, 100, 110), spacing, 3.0)


def _asl_anatomy(
    rng,
    *,
    shape,
    voxel_size,
    resolution,
    subsample,
    lesion,
    pad=(0, 0, 0),
    deformation_sd=4.0,
    susceptibility=True,
    b0_rng=None,
    b0_scale=1.0,
) -> _ASLAnatomy:
    """Tissue fractions, CBF and ATT on the ASL grid (see the module docstring).

    With ``pad``, everything is also computed on a grid extended by ``pad``
    voxels on each side (``padded``: ``affine``, ``fractions``, ``cbf``,
    ``att``), so that resampling for head motion brings real tissue into the
    field of view instead of zeros.
    """
    model = load_mni_model(resolution)
    out_shape = tuple(shape)
    pad = np.asarray(pad, int)
    shape = tuple(int(n) for n in np.asarray(out_shape) + 2 * pad)
    deformation = SubjectDeformation(
        rng, lower=_DEFORM_BOX[0], upper=_DEFORM_BOX[1], sd=deformation_sd
    )
    inv_pose = np.linalg.inv(deformation.affine)
    head_t1w = apply_affine(inv_pose, _HEAD_CENTRE_MNI[None])[0]
    asl_to_t1w = rigid_matrix(
        np.r_[rng.uniform(-6, 6, 3), np.deg2rad(rng.uniform(-5, 5, 3))], head_t1w
    )
    target_t1w = apply_affine(inv_pose, _ASL_TARGET_MNI[None])[0]
    centre = apply_affine(np.linalg.inv(asl_to_t1w), target_t1w[None])[0]
    centre = centre + rng.uniform(-3, 3, 3)
    affine = grid_affine(shape, voxel_size, centre)

    # sub-voxel sample points -> MNI
    offsets = np.stack(
        np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in subsample], indexing="ij"), -1
    ).reshape(-1, 3)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    centres_t1w = apply_affine(asl_to_t1w @ affine, ijk)
    centres_mni = deformation(centres_t1w)
    sums = np.zeros((len(TISSUES) + 1, ijk.shape[0]))
    maps = list(model.maps) + [model.brain]
    for off in offsets:
        pts = deformation(apply_affine(asl_to_t1w @ affine, ijk + off))
        sums += anatomy.sample_model(model, pts, maps=maps)
    sums /= len(offsets)
    fractions = {name: sums[k].reshape(shape).astype(np.float32) for k, name in enumerate(TISSUES)}
    brain_mask = sums[-1].reshape(shape) > 0.5

    # tissue perfusion and transit time, smooth functions of MNI position
    gm_level = rng.uniform(50, 68)
    wm_level = gm_level / rng.uniform(2.2, 2.8)
    field_gm, field_wm, field_att = (_unit_field(rng, s) for s in (30.0, 40.0, 35.0))
    f_gm, f_wm, f_att = (f(centres_mni) for f in (field_gm, field_wm, field_att))
    cbf_gm = np.clip(gm_level * (1 + 0.12 * f_gm), 40, 80)
    cbf_wm = np.clip(wm_level * (1 + 0.10 * f_wm), 15, 30)
    lesion_spec = None
    posterior = np.clip((20.0 - centres_mni[:, 1]) / 120.0, 0, 1)
    att_gm = 0.9 + rng.uniform(-0.1, 0.1) + 0.35 * posterior + 0.06 * f_att
    att_wm = att_gm + 0.3
    # EPI/GRASE signal loss near the sinuses and ear canals: a readout gain
    # multiplying every signal of the voxel (M0 included, so CBF is unchanged)
    gain = np.ones(len(centres_mni))
    if susceptibility:
        for c, amp, width in _DROPOUT_MNI:
            d2 = ((centres_mni - np.asarray(c)) ** 2).sum(1)
            gain -= amp * rng.uniform(0.7, 1.3) * np.exp(-d2 / (2 * width**2))
        gain = np.clip(gain, 0.15, 1.0)
    fractions["gain"] = gain.reshape(shape).astype(np.float32)
    if b0_rng is not None:  # its own generator: the other draws are unchanged
        b0 = float(b0_scale) * b0_field(b0_rng, centres_mni)
        fractions["b0"] = b0.reshape(shape).astype(np.float32)
    lesion_map = None
    crop = tuple(slice(p, p + n) for p, n in zip(pad, out_shape, strict=True))
    if lesion:
        side = rng.choice([-1.0, 1.0])
        c = np.array([side * rng.uniform(30, 50), rng.uniform(-60, 30), rng.uniform(10, 45)])
        radius = rng.uniform(14, 22)
        r = np.linalg.norm(centres_mni - c, axis=1)
        w = 1.0 / (1.0 + np.exp((r - radius) / 3.0))
        depth = rng.uniform(0.5, 0.8)
        lesion_spec = (c, radius, depth)
        cbf_gm = cbf_gm * (1 - depth * w)
        cbf_wm = cbf_wm * (1 - depth * w)
        att_gm = att_gm + 0.4 * w
        att_wm = att_wm + 0.4 * w
        lesion_map = w.reshape(shape).astype(np.float32)[crop]
    att_gm = np.clip(att_gm, 0.7, 1.8)
    att_wm = np.clip(att_wm, 0.7, 1.8)
    g = sums[0]
    w_ = sums[1]
    flow_gm = g * cbf_gm
    flow_wm = w_ * cbf_wm
    cbf = flow_gm + flow_wm
    att = np.where(
        cbf > 1e-6,
        (flow_gm * att_gm + flow_wm * att_wm) / np.maximum(cbf, 1e-12),
        0.5 * (att_gm + att_wm),
    )
    cbf = cbf.reshape(shape)
    att = att.reshape(shape)
    shift = np.eye(4)
    shift[:3, 3] = pad

    def perfusion(points_mni):
        pts = np.atleast_2d(points_mni)
        gm_ = np.clip(gm_level * (1 + 0.12 * field_gm(pts)), 40, 80)
        wm_ = np.clip(wm_level * (1 + 0.10 * field_wm(pts)), 15, 30)
        if lesion_spec is not None:
            c_, r_, d_ = lesion_spec
            w_l = 1.0 / (1.0 + np.exp((np.linalg.norm(pts - c_, axis=1) - r_) / 3.0))
            gm_, wm_ = gm_ * (1 - d_ * w_l), wm_ * (1 - d_ * w_l)
        return gm_, wm_

    return _ASLAnatomy(
        affine=affine @ shift,
        fractions={k: v[crop] for k, v in fractions.items()},
        brain_mask=brain_mask[crop],
        cbf=cbf[crop],
        att=att[crop],
        lesion=lesion_map,
        deformation=deformation,
        asl_to_t1w=asl_to_t1w,
        t1w_centre=head_t1w,
        padded={"affine": affine, "fractions": fractions, "cbf": cbf, "att": att},
        cbf_gm=cbf_gm.reshape(shape)[crop].astype(np.float32),
        cbf_wm=cbf_wm.reshape(shape)[crop].astype(np.float32),
        perfusion=perfusion,
    )


def _m0_true(fr) -> np.ndarray:
    gain = fr.get("gain", 1.0)
    return M0_SCALE * gain * sum(fr[k].astype(float) * PROTON_DENSITY[k] for k in TISSUES)


def _recovered(fr, tr) -> np.ndarray:
    """Saturation-recovery signal ``M0 (1 - exp(-TR/T1))`` summed over tissues."""
    return (
        M0_SCALE
        * fr.get("gain", 1.0)
        * sum(
            fr[k].astype(float) * PROTON_DENSITY[k] * (1 - np.exp(-tr / T1_3T[k])) for k in TISSUES
        )
    )


def _static_terms(fr, proto: ASLProtocol) -> list:
    """Control signal without ΔM as ``[(map, z_profile or None), ...]``.

    The signal is ``sum(map * z_profile[z])``. With background suppression the
    static tissue is nulled to :data:`BS_RESIDUAL` at the start of the
    readout; in 2D readouts each later slice has recovered for
    ``SliceTiming[z]`` seconds more, ``1 - (1 - residual) exp(-SliceTiming[z]
    / T1)``, a profile per tissue. The maps live in the tissue frame and the
    profiles in the acquisition frame, so head motion resamples the maps only.
    """
    gain = M0_SCALE * fr.get("gain", 1.0)
    sat = {
        k: fr[k].astype(float) * PROTON_DENSITY[k] * (1 - np.exp(-proto.tr / T1_3T[k]))
        for k in TISSUES
    }
    if not proto.background_suppression:
        return [(gain * sum(sat.values()), None)]
    if proto.readout == "3D":
        return [(gain * sum(sat[k] * BS_RESIDUAL[k] for k in TISSUES), None)]
    terms = [(gain * sum(sat.values()), None)]
    for k in TISSUES:
        terms.append(
            (-gain * sat[k] * (1 - BS_RESIDUAL[k]), np.exp(-proto.slice_timing / T1_3T[k]))
        )
    return terms


def _combine(terms) -> np.ndarray:
    """Sum ``map * z_profile`` over the terms of :func:`_static_terms`."""
    out = 0.0
    for m, prof in terms:
        out = out + (m if prof is None else m * prof[None, None, :])
    return out


def _static(fr, proto: ASLProtocol) -> np.ndarray:
    """Noise-free control signal without ΔM on the fractions' own grid."""
    return _combine(_static_terms(fr, proto))


#: Length scale (mm) over which the physiological fluctuations change sign
#: (:func:`_physio_maps`).
PHYSIO_SCALE_MM = 20.0

#: Share of the slow drift that is a gain of the whole image (the rest changes
#: sign over :data:`PHYSIO_SCALE_MM`), see :func:`_physio_maps`.
DRIFT_GLOBAL_SHARE = 0.2

#: Through-plane blur of a 3D readout (FWHM in slices), the GRASE T2 decay
#: along the echo train: :func:`simulate_cbf_series`'s default for 3D; its
#: edge slices repeat (``scipy.ndimage`` boundary mode).
Z_BLUR_FWHM_3D = 1.2
Z_BLUR_MODE = "nearest"


def through_plane_blur(volume: np.ndarray, fwhm: float, mode: str = Z_BLUR_MODE) -> np.ndarray:
    """The readout's Gaussian blur along z (FWHM in slices; ``mode`` at the edges)."""
    if fwhm <= 0:
        return volume
    sigma = float(fwhm_to_sigma(fwhm, 1.0))
    return ndimage.gaussian_filter1d(volume, sigma, axis=2, mode=mode)


def _physio_maps(rng, fr, affine, shape):
    """Spatial weights of the physiological components (stronger near CSF).

    Each map has unit RMS (times ``1 + 2 CSF``) and changes sign over
    :data:`PHYSIO_SCALE_MM`: pulsatility, breathing and slow physiological
    changes move and modulate the signal locally, so a region's mean keeps
    little of them. The slow drift adds a gain of the whole image,
    :data:`DRIFT_GLOBAL_SHARE` of its RMS. Calibrated on the real scan of
    :data:`~asl_pipeline.simulate.noise.REAL_SCAN_STATISTICS`: its control
    images' brain-wide gain drifts by 0.13% (RMS after a 5-volume smoothing)
    while each voxel's control signal varies by about 4% over the run
    (control tSNR 24), and the brain-wide offset of one pair's CBF has an SD
    of 4.7-5.0 mL/100 g/min with no persistence from pair to pair (lag-1
    -0.19). With positive maps every pair of a scan without background
    suppression carried a brain-wide offset of SD 14-35, and a 40-pair GM
    mean with the true M0 missed the truth by up to 30% (WM 74%); with these
    maps the offset's SD is 2.2-6.2 and the GM miss at most 3.4% on ten
    panel seeds (-8.4% on the PASL label-first 3D one: its bolus and readout
    blur), ``benchmarks/physio_realism.py``.
    """
    lo = apply_affine(affine, np.zeros((1, 3)))[0] - 10
    hi = apply_affine(affine, np.asarray(shape, float)[None] - 1)[0] + 10
    weight = 1.0 + 2.0 * fr["csf"]

    def signed():
        f = SmoothField(rng, lo, hi, PHYSIO_SCALE_MM, 1.0).on_grid(affine, shape)
        return f / max(float(np.sqrt(np.mean(f**2))), 1e-9)

    maps = {"cardiac": signed(), "respiratory": signed()}
    gain = np.clip(1 + 0.3 * SmoothField(rng, lo, hi, 40.0, 3.0).on_grid(affine, shape), 0.2, None)
    maps["drift"] = DRIFT_GLOBAL_SHARE * gain + signed()
    return {name: (weight * f).astype(np.float32) for name, f in maps.items()}


def _pick_outliers(rng, n_units, n_slices, brain_slices, spike_rate, slice_rate, first=1):
    """Spike units and (unit, slice, kind) single-slice corruptions."""
    units = np.arange(first, n_units)
    n_spk = min(len(units), max(1, rng.binomial(n_units, spike_rate)))
    spikes = sorted(int(u) for u in rng.choice(units, n_spk, replace=False))
    free = [u for u in units if u not in spikes]
    cand = [(int(u), int(z)) for u in free for z in brain_slices]
    n_sl = min(len(cand), max(1, rng.binomial(n_units * len(brain_slices), slice_rate)))
    picks = sorted(cand[i] for i in rng.choice(len(cand), n_sl, replace=False)) if cand else []
    kinds = [str(rng.choice(["drop", "ghost"])) for _ in picks]
    return spikes, [(u, z, k) for (u, z), k in zip(picks, kinds, strict=True)]


# --------------------------------------------------------------------------
# full subject


def _include_m0(sub, proto) -> None:
    """Move the M0 scan into the series as its first volume (M0Type Included).

    Everything indexing volumes then indexes the full series: ``motion`` gains
    the M0's row first (so the all-zero reference row is row 1), and the
    outlier and jerk volume indices shift by one.
    """
    sub.asl = np.concatenate([sub.m0[..., None].astype(sub.asl.dtype), sub.asl], axis=3)
    sub.aslcontext = ["m0scan"] + list(sub.aslcontext)
    sub.motion = np.vstack([sub.m0_motion[None], sub.motion])
    sub.outlier_volumes = [t + 1 for t in sub.outlier_volumes]
    sub.outlier_slices = [(t + 1, z) for t, z in sub.outlier_slices]
    sub.motion_jerks = [t + 1 for t in sub.motion_jerks]
    md = dict(sub.metadata)
    md["M0Type"] = "Included"
    if isinstance(md["PostLabelingDelay"], list):  # one delay per volume: 0 for the M0
        md["PostLabelingDelay"] = [0.0] + md["PostLabelingDelay"]
    if abs(proto.m0_tr - proto.tr) > 1e-9:
        md["RepetitionTimePreparation"] = [float(proto.m0_tr)] + [float(proto.tr)] * (
            2 * proto.n_pairs
        )
    sub.metadata = md
    sub.m0_metadata = None


@dataclass
class SimulatedSubject:
    """A simulated subject: the images a scanner gives plus the ground truth.

    Images are ``x, y, z[, t]`` arrays; ``asl_affine`` / ``t1w_affine`` are
    RAS+ voxel-to-world (mm). ``motion`` follows the convention of
    :mod:`asl_pipeline.simulate.motion` (rows per ASL volume, volume 0 = 0).
    ``outlier_volumes`` and ``outlier_slices`` index ASL volumes (not pairs).
    Use :meth:`subject_to_mni_points` (T1w world mm -> MNI mm) and
    :meth:`asl_to_mni_points` to score registrations by displacement error.

    Scanner data: ``asl`` (float32, with motion, noise, outliers),
    ``aslcontext``, ``m0`` (separate M0 scan, TR ``m0_metadata
    ["RepetitionTimePreparation"]``, head at ``m0_motion`` relative to ASL
    volume 0), ``metadata`` / ``m0_metadata`` (sidecars), ``t1w`` (1 mm).

    Truth in ASL space (head at volume 0): ``cbf`` (mL/100 g/min), ``att``
    (s), ``gm`` / ``wm`` / ``csf`` fractions, ``brain_mask``, ``m0_true``
    (fully relaxed M0 times ``readout_gain``: what a perfect M0 correction
    gives), ``readout_gain`` (susceptibility signal loss, 1 = none), ``deltam``
    (noise-free control - label), ``static`` (noise-free control), ``alpha``
    (effective labeling efficiency), ``slice_pld`` (s, per slice),
    ``lesion`` (0-1 weight, or None), ``cbf_gm`` / ``cbf_wm`` (the tissue
    CBF of the voxel, ``cbf = gm * cbf_gm + wm * cbf_wm``: partial-volume
    truth). Multi-PLD runs: ``plds`` (the distinct
    delays, s; None for single-PLD runs), ``deltam`` ``(x, y, z, len(plds))``
    and ``slice_pld`` ``(z, len(plds))``, one per delay. Kinetic model of
    ``deltam``: ``t1_after_arrival`` ("tissue" or "blood") and ``t1_tissue`` (s),
    see :mod:`asl_pipeline.kinetics`. Truth in T1w space: ``gm_t1w``,
    ``wm_t1w``, ``csf_t1w``, ``brain_mask_t1w``. Relations: ``asl_to_t1w``
    (4x4, ASL world -> T1w world), ``deformation`` (T1w world -> MNI, see
    :class:`~asl_pipeline.simulate.anatomy.SubjectDeformation`).
    Corruptions: ``outlier_volumes`` (spike volumes), ``outlier_slices``
    ``(volume, slice)`` with ``outlier_slice_kinds`` ("drop"/"ghost"),
    ``motion_jerks`` (volumes where a persistent motion step starts; not
    counted as outliers, although the pair they split is degraded).
    Distortion (``distortion=True`` only): ``field_hz`` (true off-resonance
    field, Hz, ASL space at the head position of volume 0, undistorted),
    ``m0_reverse`` (the M0 scan acquired with the reverse phase encoding, same
    head position as ``m0``) and ``m0_reverse_metadata`` (its sidecar).
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
    motion: np.ndarray
    m0_motion: np.ndarray
    outlier_volumes: list
    outlier_slices: list
    outlier_slice_kinds: list
    motion_jerks: list
    asl_to_t1w: np.ndarray
    deformation: SubjectDeformation
    t1w: np.ndarray | None = None
    t1w_affine: np.ndarray | None = None
    gm_t1w: np.ndarray | None = None
    wm_t1w: np.ndarray | None = None
    csf_t1w: np.ndarray | None = None
    brain_mask_t1w: np.ndarray | None = None
    lesion: np.ndarray | None = None
    readout_gain: np.ndarray | None = None
    deltam: np.ndarray | None = None
    static: np.ndarray | None = None
    alpha: float = 0.85
    slice_pld: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seed: int = 0
    plds: tuple | None = None
    t1_after_arrival: str = "blood"
    t1_tissue: float = kinetics.T1_TISSUE[3.0]
    cbf_gm: np.ndarray | None = None
    cbf_wm: np.ndarray | None = None
    field_hz: np.ndarray | None = None
    m0_reverse: np.ndarray | None = None
    m0_reverse_metadata: dict | None = None
    #: SimulatedFieldmap (``distortion`` with ``fieldmap`` phasediff/fieldmap only)
    fieldmap: object = None
    bold: object = None  # SimulatedBOLD (``bold=True`` only)

    def _pair_of(self, volume: int) -> int:
        """Pair index of an ASL volume (an included M0 volume comes first)."""
        first = min(self.aslcontext.index("control"), self.aslcontext.index("label"))
        return (int(volume) - first) // 2

    @property
    def outlier_pairs(self) -> list:
        """Pairs holding a spike volume (PAIR units, as in SimulatedCBFSeries)."""
        return sorted({self._pair_of(t) for t in self.outlier_volumes})

    @property
    def outlier_pair_slices(self) -> list:
        """``(pair, slice)`` of the single-slice corruptions (PAIR units)."""
        return sorted({(self._pair_of(t), z) for t, z in self.outlier_slices})

    @property
    def t1w_to_mni_affine(self) -> np.ndarray:
        """Affine part ``P`` of the T1w -> MNI mapping."""
        return self.deformation.affine

    def subject_to_mni_points(self, xyz_mm) -> np.ndarray:
        """True T1w-world -> MNI mapping of ``(N, 3)`` points (mm)."""
        return self.deformation(np.atleast_2d(xyz_mm))

    def asl_to_mni_points(self, xyz_mm) -> np.ndarray:
        """True ASL-world (reference head position) -> MNI mapping (mm)."""
        return self.deformation(apply_affine(self.asl_to_t1w, np.atleast_2d(xyz_mm)))


def simulate_subject(
    seed: int,
    *,
    labeling: str = "PCASL",
    n_pairs: int = 40,
    shape=(64, 64, 20),
    voxel_size=(3.4, 3.4, 6.0),
    readout: str = "2D",
    motion: bool = True,
    outliers: bool = True,
    lesion: bool = False,
    noise_scale: float = 1.0,
    background_suppression: bool = False,
    t1w: bool = True,
    label_first: bool = False,
    pld: float | None = None,
    labeling_duration: float = 1.8,
    bolus_cutoff: float = 0.7,
    labeling_efficiency: float | None = None,
    slice_duration: float = 0.035,
    m0_tr: float | None = None,
    motion_scale: float = 1.0,
    spike_rate: float = 0.03,
    slice_outlier_rate: float = 0.02,
    z_blur_fwhm: float | None = None,
    deformation_sd: float = 4.0,
    susceptibility: bool = True,
    m0_type: str = "Separate",
    t1w_voxel_size: float = 1.0,
    t1w_fov=(180.0, 220.0, 180.0),
    resolution: int = 1,
    subsample=(2, 2, 3),
    dtype=np.float32,
    plds=None,
    pld_repeats: int | None = None,
    t1_after_arrival: str | None = None,
    t1_tissue: float | None = None,
    distortion: bool = False,
    distortion_scale: float = 1.0,
    fieldmap: str = "pepolar",
    bold: bool = False,
    bold_volumes: int = 120,
    bold_voxel_size: float = 3.0,
) -> SimulatedSubject:
    """Simulate one subject's ASL run, separate M0 scan and T1w image.

    Model: see the module docstring. Acquisition: PCASL (``LabelingDuration``
    ``labeling_duration``, default 1.8 s, PLD 1.8 s) or PASL QUIPSS II
    (``pld`` is the TI, default 1.8 s; ``bolus_cutoff`` TI1 = 0.7 s), 2D
    ascending slices ``slice_duration`` apart (per-slice PLD) or 3D, optional
    background suppression (2 pulses), control first unless ``label_first``.
    ``m0_type="Included"`` puts the M0 scan into the series as its first
    volume (``aslcontext`` "m0scan"; volume indices then count it, and
    ``m0_metadata`` is None). The M0 scan has TR ``m0_tr`` (default: the ASL TR, so a pipeline
    must correct for incomplete recovery), no background suppression, its own
    small head position (``m0_motion``) and its own noise.

    Multi-PLD (pCASL) / multi-TI (PASL) runs: ``plds`` (e.g. ``[0.5, 1.0,
    1.5, 2.0, 2.5]``; TIs for PASL, all after ``bolus_cutoff``) instead of
    ``pld``, ``pld_repeats`` pairs per delay (default ``n_pairs // len(plds)``,
    ``n_pairs`` is then ``pld_repeats * len(plds)``), acquired as repeats of
    the whole list of delays, a control/label pair per delay. The sidecar's
    ``PostLabelingDelay`` gives each volume its delay; the TR is the same for
    all volumes (that of the longest delay).

    Kinetic model: the Buxton general kinetic model of
    :mod:`asl_pipeline.kinetics` with the T1 after the label's arrival
    ``t1_after_arrival``: ``"tissue"`` (the apparent tissue T1,
    ``1/T1app = 1/t1_tissue + f/lambda``, ``t1_tissue`` default 1.4 s) or
    ``"blood"``. The default is ``"tissue"`` for multi-PLD runs (so a
    pipeline that assumed blood T1 would read them biased, as on real data)
    and ``"blood"`` for single-PLD runs (the white paper's model, which their
    quantification inverts exactly; their output is unchanged by these
    options).

    Motion (``motion``): drift, jitter, persistent jerks and one transient
    jerk per spike volume (:func:`~asl_pipeline.simulate.motion.random_motion`,
    scaled by ``motion_scale``), applied by cubic resampling of the reference
    static image, of CBF x M0 and of ATT, so the ΔM of a moved voxel uses the
    PLD of the slice it is acquired in.

    Outliers (``outliers``): about ``spike_rate`` of the volumes get a global
    gain change of 3-8% plus a motion jerk; about ``slice_outlier_rate`` of
    the (volume, brain slice) pairs get a slice intensity drop or a N/2 ghost
    (counts are binomial draws, at least one of each; a brain slice has at
    least 10 brain-mask voxels). Volume 0 is never corrupted (it is the
    motion reference).

    3D readouts blur through-plane (GRASE T2 decay along the echo train): a
    Gaussian along z of FWHM ``z_blur_fwhm`` voxels (default 1.2 for 3D, 0 for
    2D) is applied to every noise-free volume and to the M0 scan; the truth
    maps are not blurred.

    Noise: Rician thermal noise (SD :data:`~asl_pipeline.simulate.noise.THERMAL_SD`
    x ``M0_SCALE`` per channel) and multiplicative physiological fluctuation,
    both times ``noise_scale``.

    Anatomy: the MNI templates pulled back through a random affine (head
    pose, +-4% brain size) and a smooth displacement whose B-spline
    coefficients (24 mm apart) have SD ``deformation_sd`` mm; the default
    4.0 gives a mean displacement of about 2 mm and a maximum of about 6 mm
    over the head.

    ``susceptibility``: signal loss of the EPI/GRASE readout near the
    sinuses and ear canals (up to ~55% orbitofrontally, ~45% in the temporal
    poles), a gain ``readout_gain`` applied to every signal of the voxel, M0
    and ``m0_true`` included, so quantification with the measured M0 is
    unaffected but the SNR drops there (and M0-based masks lose voxels).

    ``distortion``: B0-induced geometric distortion of the EPI/GRASE readout
    (off by default). A smooth off-resonance field (:func:`b0_field`: strong
    orbitofrontal and inferior temporal fields, 80-170 Hz at the air-tissue
    interfaces, and a gentle linear background), fixed to the head, shifts
    the signal of every ASL volume and of the M0 along the declared phase
    encoding (``PhaseEncodingDirection`` j, ``TotalReadoutTime`` 24.5 ms:
    ``f * 0.0245`` voxels) with the Jacobian intensity change
    (:func:`asl_pipeline.sdc.distort`), before the noise; a second M0
    (``m0_reverse``, phase encoding j-) gives the PEPOLAR pair. The field and
    the reverse M0's noise come from their own generator, so every other
    output is the same as without distortion except the distorted images.
    Truth maps stay in the undistorted space. ``fieldmap`` ("pepolar", the
    default, as described; "phasediff" or "fieldmap"): instead of the reverse
    M0, a gradient-echo field map of the same field on its own grid and head
    position (``fieldmap`` attribute, :mod:`asl_pipeline.simulate.fieldmap`).
    ``distortion_scale`` multiplies the field (e.g. 2 for fields up to about
    350 Hz, beyond the +-203 Hz a 2.46 ms phase difference holds unwrapped).

    ``bold``: also a resting-state BOLD run (``bold`` attribute, a
    :class:`~asl_pipeline.simulate.bold.SimulatedBOLD`) of ``bold_volumes``
    volumes on its own ``bold_voxel_size`` mm grid, with the same anatomy and
    perfusion (model: :mod:`asl_pipeline.simulate.bold`). Off by default; its
    own generator, so every other output is the same with or without it.

    ``resolution`` (1 or 2 mm) picks the MNI templates, ``subsample`` the
    sub-voxel sample points per ASL voxel for partial volume; ``dtype`` is the
    dtype of ``asl`` and ``m0`` (float64 for exact known-answer tests).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    _check_grid(shape, voxel_size, noise_scale)
    m0_type = _check_choice(m0_type, ("SEPARATE", "INCLUDED"), "m0_type")
    proto = _make_protocol(
        labeling=labeling,
        readout=readout,
        n_pairs=n_pairs,
        n_slices=shape[2],
        pld=pld,
        labeling_duration=labeling_duration,
        bolus_cutoff=bolus_cutoff,
        background_suppression=background_suppression,
        labeling_efficiency=labeling_efficiency,
        slice_duration=slice_duration,
        label_first=label_first,
        m0_tr=m0_tr,
        plds=plds,
        pld_repeats=pld_repeats,
        t1_after_arrival=t1_after_arrival,
        t1_tissue=t1_tissue,
    )
    if fieldmap not in ("pepolar", "phasediff", "fieldmap"):
        raise ValueError(f"fieldmap must be pepolar, phasediff or fieldmap, not {fieldmap!r}")
    anat = _asl_anatomy(
        rng,
        shape=shape,
        voxel_size=voxel_size,
        resolution=resolution,
        subsample=subsample,
        lesion=lesion,
        pad=(3, 3, 3) if motion else (0, 0, 0),
        deformation_sd=deformation_sd,
        susceptibility=susceptibility,
        b0_rng=np.random.default_rng([int(seed), 0xB0]) if distortion else None,
        b0_scale=distortion_scale,
    )
    fr = anat.fractions
    pe = sdc.phase_encoding(proto.metadata(voxel_size)) if distortion else None
    m0_true = _m0_true(fr)
    static = _static(fr, proto)
    if proto.is_multi_pld:  # one noise-free ΔM per distinct delay
        deltam = np.stack(
            [proto.deltam(anat.cbf, anat.att, m0_true, pld=p) for p in proto.plds], -1
        )
    else:
        deltam = proto.deltam(anat.cbf, anat.att, m0_true)
    n_vol = 2 * proto.n_pairs
    is_label = np.array([c == "label" for c in proto.aslcontext])
    # the delay of each volume (index into proto.plds)
    vol_pld = np.repeat(proto.pair_pld_index, 2)

    # outliers and motion
    brain_slices = np.flatnonzero(anat.brain_mask.sum((0, 1)) >= 10)
    if outliers:
        spikes, slices = _pick_outliers(
            rng, n_vol, shape[2], brain_slices, spike_rate, slice_outlier_rate
        )
    else:
        spikes, slices = [], []
    if motion:
        params, jerks = random_motion(rng, n_vol, spike_volumes=spikes, scale=motion_scale)
        m0_motion = np.r_[rng.uniform(-0.5, 0.5, 3), np.deg2rad(rng.uniform(-0.3, 0.3, 3))]
        m0_motion *= motion_scale
    else:
        params, jerks = np.zeros((n_vol, 6)), []
        m0_motion = np.zeros(6)

    physio_maps = _physio_maps(rng, fr, anat.affine, shape)
    courses = noise.physio_timecourses(rng, n_vol, proto.tr, proto.slice_timing)
    sigma = noise.THERMAL_SD * M0_SCALE * noise_scale

    if z_blur_fwhm is None:
        z_blur_fwhm = Z_BLUR_FWHM_3D if proto.readout == "3D" else 0.0

    def _field_at(t_params):
        """The head-fixed B0 field seen with the head at ``t_params``."""
        if not np.any(t_params):
            return fr["b0"]
        return resample_moved(
            anat.padded["fractions"]["b0"], anat.padded["affine"], t_params, order=1,
            prefiltered=False, mode="nearest", out_shape=shape, out_affine=anat.affine,
        )  # fmt: skip

    def _readout(vol):
        return through_plane_blur(vol, z_blur_fwhm)

    moving = bool(np.any(params))
    if moving:
        # reference images on the padded grid, so tissue moves into the FOV
        pad_fr = anat.padded["fractions"]
        pad_aff = anat.padded["affine"]
        static_c = [
            (ndimage.spline_filter(m, 3, mode="nearest"), prof)
            for m, prof in _static_terms(pad_fr, proto)
        ]
        flow_c = ndimage.spline_filter(anat.padded["cbf"] * _m0_true(pad_fr), 3, mode="nearest")
        att_c = anat.padded["att"]
        cbf_c = anat.padded["cbf"]

        def _move(img, t, **kw):
            return resample_moved(
                img,
                pad_aff,
                params[t],
                mode="nearest",
                out_shape=shape,
                out_affine=anat.affine,
                **kw,
            )

    asl = np.empty(shape + (n_vol,), dtype=dtype)
    for t in range(n_vol):
        if moving and np.any(params[t]):
            # cubic resampling undershoots at sharp edges: signals are >= 0
            s_t = np.maximum(_combine([(_move(c, t), prof) for c, prof in static_c]), 0.0)
            if is_label[t]:
                flow_t = np.maximum(_move(flow_c, t), 0.0)
                att_t = _move(att_c, t, order=1, prefiltered=False)
                if proto.t1_after_arrival == "blood":  # ΔM is linear in the flow
                    s_t = s_t - proto.deltam(flow_t, att_t, 1.0, pld=proto.pair_pld[t // 2])
                else:  # the apparent tissue T1 depends on the voxel's own flow
                    cbf_t = _move(cbf_c, t, order=1, prefiltered=False)
                    per_flow = proto.deltam_per_flow(cbf_t, att_t, pld=proto.pair_pld[t // 2])
                    s_t = s_t - flow_t * per_flow
        elif proto.is_multi_pld:
            s_t = static - deltam[..., vol_pld[t]] if is_label[t] else static.copy()
        else:
            s_t = static - deltam if is_label[t] else static.copy()
        if noise_scale:
            phys = sum(
                noise.PHYSIO_SD[k] * courses[k][t][None, None, :] * physio_maps[k] for k in courses
            )
            s_t = s_t * (1.0 + noise_scale * phys)
        if t in spikes:
            s_t = s_t * (1.0 + rng.choice([-1, 1]) * rng.uniform(0.03, 0.08))
        for u, z, kind in slices:
            if u == t:
                noise.corrupt_slice(rng, s_t, z, kind)
        if pe is not None:
            s_t = sdc.distort(s_t, _field_at(params[t]), pe)
        asl[..., t] = anatomy.rician(rng, np.asarray(_readout(s_t), dtype), sigma)

    m0_ref = _recovered(fr, proto.m0_tr)
    if np.any(m0_motion):
        m0_ref = resample_moved(
            _recovered(anat.padded["fractions"], proto.m0_tr),
            anat.padded["affine"],
            m0_motion,
            prefiltered=False,
            mode="nearest",
            out_shape=shape,
            out_affine=anat.affine,
        )
    m0_ref = np.maximum(m0_ref, 0.0)
    m0_reverse = m0_reverse_md = fmap = None
    if pe is not None and fieldmap != "pepolar":
        from asl_pipeline.simulate.fieldmap import simulate_fieldmap

        fmap = simulate_fieldmap(
            fieldmap, seed, anat.padded["fractions"], anat.padded["fractions"]["b0"],
            anat.padded["affine"], shape, anat.affine, sigma,
        )  # fmt: skip
        m0_ref = sdc.distort(m0_ref, _field_at(m0_motion), pe)
    elif pe is not None:
        field_m0 = _field_at(m0_motion)
        reverse = sdc.PhaseEncoding(_REVERSE_PE[pe.direction], pe.axis, -pe.sign, pe.readout_time)
        m0_reverse = anatomy.rician(
            np.random.default_rng([int(seed), 0xB1]),  # its own noise stream
            np.asarray(_readout(sdc.distort(m0_ref, field_m0, reverse)), dtype),
            sigma,
        )
        m0_reverse_md = dict(
            proto.m0_metadata(voxel_size), PhaseEncodingDirection=reverse.direction
        )
        m0_ref = sdc.distort(m0_ref, field_m0, pe)
    m0 = anatomy.rician(rng, np.asarray(_readout(m0_ref), dtype), sigma)

    sub = SimulatedSubject(
        asl=asl,
        aslcontext=proto.aslcontext,
        m0=m0,
        asl_affine=anat.affine,
        metadata=proto.metadata(voxel_size),
        m0_metadata=proto.m0_metadata(voxel_size),
        cbf=anat.cbf.astype(np.float32),
        att=anat.att.astype(np.float32),
        gm=fr["gm"],
        wm=fr["wm"],
        csf=fr["csf"],
        brain_mask=anat.brain_mask,
        m0_true=m0_true.astype(np.float32),
        motion=params,
        m0_motion=m0_motion,
        outlier_volumes=list(spikes),
        outlier_slices=[(u, z) for u, z, _ in slices],
        outlier_slice_kinds=[k for _, _, k in slices],
        motion_jerks=jerks,
        asl_to_t1w=anat.asl_to_t1w,
        deformation=anat.deformation,
        lesion=anat.lesion,
        readout_gain=fr["gain"],
        deltam=deltam,
        static=static,
        alpha=proto.alpha,
        slice_pld=(
            proto.slice_pld
            if not proto.is_multi_pld
            else np.asarray(proto.plds)[None, :] + proto.slice_timing[:, None]
        ),
        seed=int(seed),
        plds=proto.plds,
        t1_after_arrival=proto.t1_after_arrival,
        t1_tissue=proto.t1_tissue,
        cbf_gm=anat.cbf_gm,
        cbf_wm=anat.cbf_wm,
        field_hz=fr.get("b0"),
        m0_reverse=m0_reverse,
        m0_reverse_metadata=m0_reverse_md,
        fieldmap=fmap,
    )
    if bold:
        from asl_pipeline.simulate.bold import simulate_bold

        sub.bold = simulate_bold(
            seed,
            anat,
            shape,
            dropout=_DROPOUT_MNI if susceptibility else (),
            m0_scale=M0_SCALE,
            n_volumes=bold_volumes,
            voxel_size=bold_voxel_size,
            noise_scale=noise_scale,
            motion=motion,
            motion_scale=motion_scale,
            resolution=resolution,
            dtype=dtype,
        )
    if m0_type == "INCLUDED":
        _include_m0(sub, proto)
    if t1w:
        img, aff, probs = anatomy.synthesize_t1w(
            rng,
            anat.deformation,
            load_mni_model(resolution),
            voxel_size=t1w_voxel_size,
            fov=t1w_fov,
            centre=np.round(anat.t1w_centre, 1),
            noise_sd=0.02 * max(noise_scale, 0.0) if noise_scale else 0.0,
        )
        sub.t1w, sub.t1w_affine = img, aff
        sub.gm_t1w, sub.wm_t1w, sub.csf_t1w = probs["gm"], probs["wm"], probs["csf"]
        sub.brain_mask_t1w = probs["brain_mask"]
    return sub


def _simulate_bold(seed, anat, shape, susceptibility, n_volumes, voxel_size, noise_scale,
                   motion_scale, resolution):  # fmt: skip
    """The BOLD run of the fast path (see :mod:`asl_pipeline.simulate.bold`)."""
    from asl_pipeline.simulate.bold import simulate_bold

    return simulate_bold(
        seed, anat, shape, dropout=_DROPOUT_MNI if susceptibility else (), m0_scale=M0_SCALE,
        n_volumes=n_volumes, voxel_size=voxel_size, noise_scale=noise_scale or 1.0,
        motion_scale=motion_scale, resolution=resolution, subsample=(1, 1, 1),
    )  # fmt: skip


# --------------------------------------------------------------------------
# fast per-pair CBF series


@dataclass
class SimulatedCBFSeries:
    """Per-pair CBF maps and their ground truth (fast path).

    ``cbf_series`` is ``(x, y, z, n_pairs)`` in mL/100 g/min. Outliers are
    indexed in PAIR units: ``outlier_pairs`` are pairs corrupted in every
    slice, ``outlier_slices`` lists ``(pair, slice)``. ``motion`` has one row
    per volume (``2 * n_pairs``), same convention as :class:`SimulatedSubject`;
    the spike pairs coincide with motion jerks. ``mean_series`` (only when
    asked for) is ``(x, y, z, n_pairs)``: the label/control average of each
    pair, ``(control + label) / 2`` of the magnitude images (arbitrary units,
    M0- and BOLD-weighted, with the same motion, physiological noise and
    outliers as the pair's CBF). ``cbf_gm`` / ``cbf_wm``: the tissue CBF of
    each voxel, ``cbf = gm * cbf_gm + wm * cbf_wm``.
    """

    cbf_series: np.ndarray
    cbf: np.ndarray
    att: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    motion: np.ndarray
    outlier_pairs: list
    outlier_slices: list
    affine: np.ndarray
    m0_true: np.ndarray | None = None
    sensitivity: np.ndarray | None = None
    lesion: np.ndarray | None = None
    outlier_slice_kinds: list = field(default_factory=list)
    aslcontext: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    seed: int = 0
    mean_series: np.ndarray | None = None
    cbf_gm: np.ndarray | None = None
    cbf_wm: np.ndarray | None = None
    bold: object = None  # SimulatedBOLD (``bold=True`` only)


def simulate_cbf_series(
    seed: int,
    *,
    n_pairs: int = 40,
    shape=(64, 64, 20),
    voxel_size=(3.4, 3.4, 6.0),
    outliers: bool = True,
    noise_scale: float = 1.0,
    labeling: str = "PCASL",
    readout: str = "2D",
    lesion: bool = False,
    background_suppression: bool = False,
    motion_scale: float = 1.0,
    spike_rate: float = 0.03,
    slice_outlier_rate: float = 0.02,
    pld: float | None = None,
    labeling_duration: float = 1.8,
    bolus_cutoff: float = 0.7,
    slice_duration: float = 0.035,
    deformation_sd: float = 4.0,
    susceptibility: bool = True,
    resolution: int = 2,
    subsample=(1, 1, 2),
    mean_series: bool = False,
    pair_noise: noise.PairNoise | None = None,
    bold: bool = False,
    bold_volumes: int = 120,
    bold_voxel_size: float = 3.0,
) -> SimulatedCBFSeries:
    """Per-pair CBF maps from the same signal and noise model, fast.

    Same anatomy, perfusion, physiological and thermal noise model as
    :func:`simulate_subject` (2 mm templates, fewer sub-voxel samples), but
    motion is not resampled: it enters to first order as
    ``-grad(static) . d(x)`` with ``d`` the voxel displacement of each
    volume's motion. Each pair's CBF is ``(control - label) / s`` with
    ``s = ΔM(CBF=1, true ATT, slice PLD, true M0)`` the voxel's model
    sensitivity, so ``E[cbf_series] = cbf`` wherever no outlier hits. Voxels
    with ``s`` below 1e-3 of its brain maximum (outside the head) are 0.

    ``readout="3D"`` drops the slice timing (one PLD) but, unlike
    :func:`simulate_subject`, applies no through-plane blur, which would make
    the expected per-pair CBF differ from the truth.

    Outliers, in pair units: about ``spike_rate`` of the pairs get a global
    gain change of 2-6% on one of their two volumes plus a transient motion
    jerk of that volume; about ``slice_outlier_rate`` of the (pair, brain
    slice) combinations get a slice drop or ghost in one of the two volumes
    (binomial counts, at least one of each; spike pairs get no slice
    corruption). The slice drop (4-15% of the static signal) and ghost (5-15%)
    are strong: every recorded outlier is far above the per-pair noise.

    ``mean_series=True`` also returns each pair's label/control average
    (the BOLD-weighted input of methods spec section 6.4); it consumes no
    random numbers, so every other output is the same with or without it.

    ``pair_noise`` (a :class:`~asl_pipeline.simulate.noise.PairNoise`)
    replaces the thermal and physiological noise of the images by additive
    per-pair CBF noise with the statistics of real single-pair maps
    (spatially correlated, heavy-tailed, slice-varying, global offsets) and a
    drift of the perfusion signal over the run; motion and outliers are kept.

    ``bold``: also the subject's resting BOLD run (``bold`` attribute, as in
    :func:`simulate_subject`; its own generator, nothing else changes).
    """
    rng = np.random.default_rng(seed)
    _check_grid(shape, voxel_size, noise_scale)
    if pair_noise is not None:
        noise_scale = 0.0
    shape = tuple(int(s) for s in shape)
    proto = _make_protocol(
        labeling=labeling,
        readout=readout,
        n_pairs=n_pairs,
        n_slices=shape[2],
        pld=pld,
        labeling_duration=labeling_duration,
        bolus_cutoff=bolus_cutoff,
        background_suppression=background_suppression,
        labeling_efficiency=None,
        slice_duration=slice_duration,
        label_first=False,
        m0_tr=None,
    )
    anat = _asl_anatomy(
        rng,
        shape=shape,
        voxel_size=voxel_size,
        resolution=resolution,
        subsample=subsample,
        lesion=lesion,
        deformation_sd=deformation_sd,
        susceptibility=susceptibility,
    )
    fr = anat.fractions
    m0_true = _m0_true(fr)
    static = _static(fr, proto).astype(np.float32)
    sens = proto.deltam(1.0, anat.att, m0_true)
    deltam = (anat.cbf * sens).astype(np.float32)
    n_vol = 2 * proto.n_pairs
    brain_slices = np.flatnonzero(anat.brain_mask.sum((0, 1)) >= 10)
    if outliers:
        spike_pairs, slices = _pick_outliers(
            rng,
            proto.n_pairs,
            shape[2],
            brain_slices,
            spike_rate,
            slice_outlier_rate,
            first=0,
        )
    else:
        spike_pairs, slices = [], []
    # the corrupted volume of a spike pair (never volume 0, the motion reference)
    spike_vols = [max(1, 2 * p + int(rng.integers(2))) for p in spike_pairs]
    params, _ = random_motion(rng, n_vol, spike_volumes=spike_vols, scale=motion_scale)
    grad = np.stack(np.gradient(static, *np.asarray(voxel_size, float)), -1)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = (ijk @ anat.affine[:3, :3].T + anat.affine[:3, 3]).astype(np.float32)

    physio_maps = _physio_maps(rng, fr, anat.affine, shape)
    courses = noise.physio_timecourses(rng, n_vol, proto.tr, proto.slice_timing)
    sigma = noise.THERMAL_SD * M0_SCALE * noise_scale
    vols = np.empty((2,) + shape, np.float32)
    series = np.empty(shape + (proto.n_pairs,), np.float32)
    means = np.empty(shape + (proto.n_pairs,), np.float32) if mean_series else None
    good = sens > 1e-3 * sens[anat.brain_mask].max() if anat.brain_mask.any() else sens > 0
    inv_sens = np.where(good, 1.0 / np.where(good, sens, 1.0), 0.0).astype(np.float32)
    slice_map = {}
    for p, z, kind in slices:
        slice_map.setdefault(p, []).append((z, kind))
    for p in range(proto.n_pairs):
        for j in range(2):
            t = 2 * p + j
            s_t = static.copy()
            if j == 1:
                s_t -= deltam
            if np.any(params[t]):
                disp = displacement_field(params[t], anat.affine, shape, world)
                s_t += np.einsum("...k,...k->...", grad, disp)
            if noise_scale:
                phys = sum(
                    noise.PHYSIO_SD[k] * courses[k][t][None, None, :] * physio_maps[k]
                    for k in courses
                )
                s_t *= 1.0 + noise_scale * phys
            if t in spike_vols:
                s_t *= 1.0 + rng.choice([-1, 1]) * rng.uniform(0.02, 0.06)
            vols[j] = s_t
        for z, kind in slice_map.get(p, []):
            noise.corrupt_slice(rng, vols[int(rng.integers(2))], z, kind)
        mag = anatomy.rician(rng, vols, sigma)
        series[..., p] = (mag[0] - mag[1]) * inv_sens
        if means is not None:
            means[..., p] = 0.5 * (mag[0] + mag[1])
    if pair_noise is not None:
        gain = noise.drift_gain(proto.n_pairs, pair_noise.drift).astype(np.float32)
        added = noise.pair_noise(rng, shape, proto.n_pairs, pair_noise)
        series = np.where(good[..., None], series * gain + added, 0.0).astype(np.float32)
    return SimulatedCBFSeries(
        cbf_series=series,
        cbf=anat.cbf.astype(np.float32),
        att=anat.att.astype(np.float32),
        gm=fr["gm"],
        wm=fr["wm"],
        csf=fr["csf"],
        brain_mask=anat.brain_mask,
        motion=params,
        outlier_pairs=list(spike_pairs),
        outlier_slices=[(p, z) for p, z, _ in slices],
        outlier_slice_kinds=[k for _, _, k in slices],
        affine=anat.affine,
        m0_true=m0_true.astype(np.float32),
        sensitivity=sens.astype(np.float32),
        lesion=anat.lesion,
        aslcontext=proto.aslcontext,
        metadata=proto.metadata(voxel_size),
        seed=int(seed),
        mean_series=means,
        cbf_gm=anat.cbf_gm,
        cbf_wm=anat.cbf_wm,
        bold=None
        if not bold
        else _simulate_bold(
            seed,
            anat,
            shape,
            susceptibility,
            bold_volumes,
            bold_voxel_size,
            noise_scale,
            motion_scale,
            resolution,
        ),
    )
