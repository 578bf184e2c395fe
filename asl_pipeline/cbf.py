"""CBF quantification: from control/label series to CBF in mL/100 g/min.

Section 2 of the methods spec (``shared/specs/asl-methods.md``). Plain NumPy,
vectorised over voxels; the forward models and constants come from
:mod:`asl_pipeline.kinetics` and are inverted here, never re-derived.

The steps, each a function:

1. :func:`quant_params_from_metadata` reads a BIDS ``_asl.json`` dictionary
   into a frozen :class:`QuantParams` (every constant used, with overrides).
2. :func:`deltam_series` pairs the volumes in ``aslcontext`` order and returns
   ΔM = control - label per pair (or per volume with surround subtraction).
3. :func:`compute_m0` builds the M0 image for the ``M0Type`` (or the ASLtbx
   pair-wise control variant), scaled and corrected for incomplete recovery.
4. :func:`cbf_single_pld` applies the white-paper equations per pair and
   slice; :func:`fit_multi_pld` fits CBF and arterial transit time (ATT) to
   multi-PLD / multi-TI data with the Buxton general kinetic model.

Conventions
-----------
* Arrays are ``(x, y, z)`` images or ``(x, y, z, n)`` series; the slice axis of
  2D readouts is the **third** array axis (``z``), and ``SliceTiming[k]`` is the
  acquisition time of slice ``k`` along that axis, so that slice ``k`` has the
  effective delay ``PLD + SliceTiming[k]``. The BIDS reader puts a sidecar's
  ``SliceTiming`` in that order (it reverses it for ``SliceEncodingDirection``
  ``"k-"``) and refuses a 2D series sliced along ``i`` or ``j``.
* Times are in seconds, CBF in mL/100 g/min.
* Voxels whose M0 is below ``m0_fraction`` times the brain-mask mean M0 (and
  voxels with non-finite data) are not quantified: their CBF is 0 and they are
  reported in a mask, so outputs never contain NaN or inf.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike

import numpy as np

from asl_pipeline import kinetics, rundesc
from asl_pipeline.errors import ASLInputError
from asl_pipeline.rundesc import (  # noqa: F401 (one set of constants, re-exported)
    LABELING_TYPES,
    M0_TYPES,
    VOLUME_TYPES,
    RunDescription,
)

LOGGER = logging.getLogger(__name__)

#: The ASLtbx M0 variant offered as an option, beside the BIDS M0 types.
PAIRWISE_CONTROL = "pairwise-control"

#: Beyond this repetition time (s) the M0 is taken as fully relaxed.
M0_TR_FULL_RECOVERY = 5.0

#: Default fraction of the brain-mean M0 under which a voxel is not quantified.
M0_FRACTION_DEFAULT = 0.1


class InputWarning(UserWarning):
    """An input is incomplete but can still be processed (a default was used)."""


def _warn(message: str) -> None:
    LOGGER.warning(message)
    warnings.warn(message, InputWarning, stacklevel=3)


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantParams:
    """Every constant used to quantify CBF, in SI units (s, T).

    Attributes
    ----------
    labeling_type
        ``"PCASL"``, ``"CASL"`` or ``"PASL"``.
    pld
        Post-labeling delay (s); for PASL the inversion time TI. A float, or a
        tuple with one value per volume of the series (BIDS allows both).
    tau
        Labeling duration (s) for (P)CASL; ``None`` for PASL.
    ti1
        Bolus duration TI1 (s) for PASL (``BolusCutOffDelayTime``; for Q2TIPS,
        whose field is the list ``[start, end]`` of the saturation train, the
        first value is TI1, the time the bolus is cut off); ``None`` otherwise.
    alpha
        Effective labeling efficiency, background-suppression loss included
        (:func:`asl_pipeline.kinetics.labeling_efficiency`).
    t1b
        Blood T1 (s).
    lam
        Blood-brain partition coefficient (mL/g).
    slice_timing
        Per-slice acquisition times (s) along the third array axis for 2D
        readouts; ``None`` for 3D readouts.
    field_strength
        Main field (T).
    tr
        Repetition time of the ASL series (``RepetitionTimePreparation``, s) or
        ``None`` when unknown; used for M0 from the series itself (Included,
        Absent, pair-wise control).
    m0_tr
        Repetition time of the M0 image used for ``m0_type`` (the separate M0
        scan's sidecar for ``Separate``, else the series' TR); ``None`` when
        unknown, in which case no recovery correction is applied.
    t1_tissue
        Tissue T1 (s) for the M0 recovery correction.
    m0_type
        BIDS ``M0Type``.
    m0_estimate
        BIDS ``M0Estimate`` (``Estimate`` only).
    background_suppression, n_bs_pulses
        Whether background suppression was on, and with how many pulses.
    labeling_efficiency
        The labeling efficiency before the background-suppression factor.
    bolus_cutoff_technique
        PASL ``BolusCutOffTechnique``.
    source
        The sidecar the parameters came from (for error messages).
    """

    labeling_type: str
    pld: float | tuple[float, ...]
    alpha: float
    t1b: float
    tau: float | None = None
    ti1: float | None = None
    lam: float = kinetics.LAMBDA
    slice_timing: tuple[float, ...] | None = None
    field_strength: float = 3.0
    tr: float | None = None
    m0_tr: float | None = None
    t1_tissue: float = kinetics.T1_TISSUE[3.0]
    m0_type: str = "Separate"
    m0_estimate: float | None = None
    background_suppression: bool = False
    n_bs_pulses: int = 0
    labeling_efficiency: float | None = None
    bolus_cutoff_technique: str | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self):
        where = {"file": self.source}
        if self.labeling_type not in LABELING_TYPES:
            raise ASLInputError(
                f"unknown labeling type {self.labeling_type!r}.",
                field="ArterialSpinLabelingType",
                fix=f"use one of {', '.join(LABELING_TYPES)}.",
                **where,
            )
        plds = np.atleast_1d(np.asarray(self.pld, dtype=float))
        if plds.size == 0 or np.any(~np.isfinite(plds)) or np.any(plds < 0):
            raise ASLInputError(
                f"post-labeling delay must be finite and >= 0, got {self.pld!r}.",
                field="PostLabelingDelay",
                fix="give the delay in seconds (for PASL: the inversion time TI).",
                **where,
            )
        if self.labeling_type == "PASL":
            if self.ti1 is None or not self.ti1 > 0:
                raise ASLInputError(
                    f"PASL needs a positive bolus duration TI1, got {self.ti1!r}.",
                    field="BolusCutOffDelayTime",
                    fix="use QUIPSS II or Q2TIPS data and set BolusCutOffFlag: true with "
                    "BolusCutOffDelayTime (or pass ti1=...).",
                    **where,
                )
        elif self.tau is None or not self.tau > 0:
            raise ASLInputError(
                f"labeling duration must be > 0 s, got {self.tau!r}.",
                field="LabelingDuration",
                fix="set LabelingDuration (s) to the duration of the labeling train.",
                **where,
            )
        for name, value in (("alpha", self.alpha), ("t1b", self.t1b), ("lam", self.lam)):
            if not (np.isfinite(value) and value > 0):
                raise ASLInputError(
                    f"{name} must be a positive number, got {value!r}.",
                    field="LabelingEfficiency" if name == "alpha" else None,
                    fix=f"pass a positive {name}.",
                    **where,
                )
        if self.alpha > 1:
            raise ASLInputError(
                f"labeling efficiency must be <= 1, got {self.alpha!r}.",
                field="LabelingEfficiency",
                fix="give the efficiency as a fraction (e.g. 0.85), not a percentage.",
                **where,
            )

    @property
    def is_multi_pld(self) -> bool:
        """Whether the series has more than one distinct PLD (TI)."""
        return np.unique(np.atleast_1d(self.pld)).size > 1

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary of the parameters (for sidecars)."""
        out = asdict(self)
        out.pop("source")
        for key in ("pld", "slice_timing"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out


def quant_params(desc: RunDescription, **overrides) -> QuantParams:
    """The quantification parameters of a run description; nothing is parsed again.

    ``overrides`` replace fields of :class:`QuantParams` (``t1b``, ``lam``,
    ``t1_tissue``, ``alpha``, ``m0_tr``, ...); ``labeling_efficiency`` and
    ``n_bs_pulses`` recompute ``alpha``; ``slice_timing=()`` forces 3D.
    """
    return _params(
        desc.labeling,
        desc.efficiency,
        desc.readout,
        desc.m0,
        perfusion=desc.series.perfusion_volumes,
        source=desc.sidecar,
        overrides=overrides,
    )


def _params(labeling, efficiency, readout, m0, *, perfusion, source, overrides) -> QuantParams:
    plds = labeling.plds
    used = {plds[i] for i in perfusion} if perfusion is not None else set(plds)
    field_strength = float(overrides.pop("field_strength", efficiency.field_strength))
    n_bs = overrides.pop("n_bs_pulses", None)
    n_bs = (efficiency.background_suppression_pulses or 0) if n_bs is None else int(n_bs)
    given = overrides.pop("labeling_efficiency", None)
    given = efficiency.labeling_efficiency if given is None else given
    slice_timing = overrides.pop("slice_timing", readout.slice_timing)
    values = {
        "labeling_type": labeling.labeling_type,
        "pld": used.pop() if len(used) == 1 else tuple(plds),
        "alpha": float(kinetics.labeling_efficiency(labeling.labeling_type, given, n_bs)),
        "t1b": kinetics.t1_blood(field_strength),
        "tau": labeling.labeling_duration,
        "ti1": labeling.bolus_duration,
        "lam": kinetics.LAMBDA,
        "slice_timing": tuple(float(t) for t in slice_timing or ()) or None,
        "field_strength": field_strength,
        "tr": m0.series_repetition_time,
        "m0_tr": m0.m0_repetition_time,
        "t1_tissue": kinetics.t1_tissue(field_strength),
        "m0_type": m0.m0_type,
        "m0_estimate": m0.m0_estimate,
        "background_suppression": efficiency.background_suppression,
        "n_bs_pulses": n_bs,
        "labeling_efficiency": given,
        "bolus_cutoff_technique": labeling.bolus_cutoff_technique,
        "source": None if source is None else str(source),
    }
    unknown = set(overrides) - set(values)
    if unknown:
        raise TypeError(f"unknown quantification parameter(s): {sorted(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return QuantParams(**values)


def quant_params_from_metadata(
    metadata: Mapping,
    *,
    m0_metadata: Mapping | None = None,
    source: str | PathLike | None = None,
    m0_source: str | PathLike | None = None,
    **overrides,
) -> QuantParams:
    """The quantification parameters of a BIDS ``_asl.json`` dictionary alone.

    For callers without the run's volume types: the sidecar is read by the
    section parsers of :mod:`asl_pipeline.rundesc`, the rules of the BIDS
    reader (case-folded ``M0Type``, 2D inferred from ``SliceTiming``, ...).
    Its warnings are emitted as :class:`InputWarning`. A run read from a
    dataset uses :func:`quant_params` on its description instead.

    Parameters
    ----------
    metadata
        The ASL sidecar as a dictionary.
    m0_metadata
        The separate M0 scan's sidecar (``M0Type: Separate``), for its
        ``RepetitionTimePreparation``. Without it (and without ``m0_tr``) the
        M0 recovery correction is skipped with a warning.
    source, m0_source
        The sidecars' paths, named in error messages.
    overrides
        As :func:`quant_params`.

    Raises
    ------
    ASLInputError
        Every problem the BIDS reader refuses in a sidecar.
    """
    found: list[str] = []
    where = rundesc.fixed_source(None if source is None else str(source))
    if not isinstance(metadata, Mapping):
        raise ASLInputError(
            "the ASL metadata is not a JSON object.", file=where(""), fix="check the sidecar."
        )
    labeling = rundesc.parse_labeling(metadata, None, where, found)
    efficiency = rundesc.parse_efficiency(metadata, where, found)
    readout = rundesc.parse_readout(metadata, None, where, found)
    m0 = rundesc.parse_m0(
        metadata,
        None,
        where,
        found,
        background_suppression=efficiency.background_suppression,
        m0_metadata=m0_metadata,
        m0_sidecar=m0_source,
    )
    for message in found:
        _warn(f"{source or 'metadata'}: {message}")
    return _params(
        labeling, efficiency, readout, m0, perfusion=None, source=source, overrides=overrides
    )


# --------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaM:
    """Perfusion-weighted differences of a series.

    Attributes
    ----------
    deltam
        ``(x, y, z, n)``: control - label per pair (or per volume with surround
        subtraction), or the series' ``deltam`` / ``cbf`` volumes as given.
    kind
        ``"deltam"`` or ``"cbf"`` (a series of CBF volumes, passed through).
    control
        ``(x, y, z, n)``: the control image of each difference (``None`` when
        the series has no control volumes); the ASLtbx M0.
    mean_control
        ``(x, y, z)``: mean of all control volumes, or ``None``.
    plds
        ``(n,)``: the PLD (TI) of each difference, when ``plds`` was given.
    volumes
        For each difference, the indices of the series volumes it came from.
    """

    deltam: np.ndarray
    kind: str = "deltam"
    control: np.ndarray | None = None
    mean_control: np.ndarray | None = None
    plds: np.ndarray | None = None
    volumes: tuple[tuple[int, ...], ...] = ()


def _volume_types(volume_types, n_volumes, source) -> tuple[str, ...]:
    """The volume types normalised by the one rule (:mod:`asl_pipeline.rundesc`)."""
    vtypes = rundesc.normalise_volume_types(volume_types, source=source)
    if n_volumes is not None and len(vtypes) != n_volumes:
        raise ASLInputError(
            f"{len(vtypes)} rows in aslcontext but {n_volumes} volumes in the series.",
            file=source,
            field="volume_type",
            fix="give one aslcontext row per volume of the 4D ASL image.",
        )
    return vtypes


def _per_volume(values, n_volumes, fieldname, source):
    """Broadcast a scalar or per-volume parameter to one value per volume."""
    arr = np.atleast_1d(np.asarray(values, dtype=float))
    if arr.size == 1:
        return np.full(n_volumes, arr[0])
    if arr.size != n_volumes:
        raise ASLInputError(
            f"{arr.size} values but {n_volumes} volumes in the series.",
            file=source,
            field=fieldname,
            fix="give one value per volume (BIDS) or a single value.",
        )
    return arr


def deltam_series(
    series,
    volume_types: Sequence[str],
    *,
    method: str = "pairwise",
    plds=None,
    source: str | PathLike | None = None,
) -> DeltaM:
    """Control - label differences of an ASL series, in ``aslcontext`` order.

    Parameters
    ----------
    series
        ``(x, y, z, n_volumes)`` array (any numeric dtype; computed in float64).
    volume_types
        One ``aslcontext`` volume type per volume.
    method
        ``"pairwise"``: the control and label volumes (other types skipped) are
        taken two by two in order; each two must be one control and one label,
        in either order (label-first and control-first both work, even mixed).
        ``"surround"``: one difference per control/label volume, that volume
        minus the mean of its two neighbours of the opposite type (one at the
        ends), signed so that it estimates control - label; the control and
        label volumes must alternate.
    plds
        PLD (TI) as a scalar or one value per volume; returned per difference.
        A difference of volumes with different PLDs is an error.
    source
        The ``aslcontext`` file, named in error messages.

    Series of ``deltam`` volumes (GE) or ``cbf`` volumes pass through.
    """
    src = None if source is None else str(source)
    series = np.asarray(series)
    if series.ndim != 4:
        raise ASLInputError(
            f"the ASL series must be 4D (x, y, z, volumes), got shape {series.shape}.",
            file=src,
            fix="pass the 4D ASL image.",
        )
    n_vol = series.shape[3]
    vtypes = _volume_types(volume_types, n_vol, src)
    vol_plds = None if plds is None else _per_volume(plds, n_vol, "PostLabelingDelay", src)
    # the reader's rules: pairs first (deltam/cbf volumes beside them are not
    # used), else the deltam or the cbf volumes
    layout = rundesc.parse_series(vtypes, {}, rundesc.fixed_source(src), [], source=src)
    if layout.kind != "pairs":
        idx = list(layout.indices(layout.kind))
        return DeltaM(
            deltam=series[..., idx].astype(float),
            kind=layout.kind,
            plds=None if vol_plds is None else vol_plds[idx],
            volumes=tuple((i,) for i in idx),
        )
    idx_cl = [i for i, v in enumerate(vtypes) if v in ("control", "label")]

    if method == "pairwise":
        pairs = layout.pairs
        control = series[..., [p[0] for p in pairs]].astype(float)
        deltam = control - series[..., [p[1] for p in pairs]]
        mean_control = control.mean(axis=3)
        volumes = tuple(pairs)
    elif method == "surround":
        kinds = [vtypes[i] for i in idx_cl]
        if len(idx_cl) < 2 or any(k1 == k2 for k1, k2 in zip(kinds[:-1], kinds[1:], strict=True)):
            raise ASLInputError(
                "surround subtraction needs alternating control and label volumes.",
                file=src,
                field="volume_type",
                fix="use method='pairwise' for this series.",
            )
        data = series[..., idx_cl].astype(float)
        n = len(idx_cl)
        prev = np.concatenate([data[..., 1:2], data[..., :-1]], axis=3)
        nxt = np.concatenate([data[..., 1:], data[..., -2:-1]], axis=3)
        neigh = 0.5 * (prev + nxt)
        sign = np.array([1.0 if k == "control" else -1.0 for k in kinds])
        deltam = sign * (data - neigh)
        control = np.where(sign > 0, data, neigh)
        mean_control = data[..., sign > 0].mean(axis=3)
        volumes = tuple(
            tuple(idx_cl[k] for k in (j - 1, j, j + 1) if 0 <= k < n) for j in range(n)
        )
    else:
        raise ValueError(f"method must be 'pairwise' or 'surround', got {method!r}")

    pair_plds = None
    if vol_plds is not None:
        groups = [vol_plds[list(v)] for v in volumes]
        if any(np.ptp(g) > 1e-9 for g in groups):
            raise ASLInputError(
                "a control-label difference mixes volumes with different PLDs.",
                file=src,
                field="PostLabelingDelay",
                fix="check that the per-volume PostLabelingDelay matches aslcontext "
                "(surround subtraction cannot cross a change of PLD: use pairwise).",
            )
        pair_plds = np.array([g[0] for g in groups])
    return DeltaM(
        deltam=deltam,
        control=control,
        mean_control=mean_control,
        plds=pair_plds,
        volumes=volumes,
    )


# --------------------------------------------------------------------------------------
# M0
# --------------------------------------------------------------------------------------


def m0_recovery_factor(tr: float | None, t1_tissue: float) -> float:
    """Factor dividing M0 for incomplete recovery, ``1 - exp(-TR/T1)``.

    1.0 (no correction) when ``tr`` is unknown (``None``/0), or >= 5 s.
    """
    if tr is None or not tr > 0 or tr >= M0_TR_FULL_RECOVERY:
        return 1.0
    return float(1.0 - np.exp(-tr / t1_tissue))


def tissue_recovery_factor(tr: float | None, fractions: dict, field_strength: float):
    """Voxel-wise ``1 - exp(-TR/T1)`` weighted by each tissue's share of the M0.

    ``fractions`` maps ``"gm"``, ``"wm"`` and ``"csf"`` to partial-volume maps
    on the M0 grid. A voxel's M0 is ``sum_k f_k PD_k (1 - exp(-TR/T1_k))``
    (:data:`kinetics.PROTON_DENSITY`, :data:`kinetics.T1_BY_TISSUE`), so the
    factor is that sum over ``sum_k f_k PD_k``. At 4.4 s TR one T1 for all
    tissues (1.4 s) under-corrects GM (T1 about 1.6 s) by 2% and over-corrects
    WM (about 0.9 s) by 4%. Voxels with almost no tissue (the sum of the
    fractions below 0.1) take the single-T1 factor (1.0 at TR >= 5 s). Returns
    1.0 where the TR is unknown.

    Unlike :func:`m0_recovery_factor` (the methods spec's rule), the correction
    is applied at any known TR: at the 5.0-5.2 s M0 TR of the simulated
    multi-PLD runs the spec's cutoff left their GM M0 at 0.93 of the
    equilibrium value (GM T1 1.6 s, CSF 4 s), and their fitted GM CBF +4-7%
    high even without noise; at long TRs the factor tends to 1 by itself.
    """
    if tr is None or not tr > 0:
        return 1.0
    t1 = kinetics.t1_by_tissue(field_strength)
    pd = kinetics.PROTON_DENSITY
    maps = {k: np.clip(np.asarray(fractions[k], dtype=float), 0, 1) for k in ("gm", "wm", "csf")}
    weight = sum(maps[k] * pd[k] for k in maps)
    recovered = sum(maps[k] * pd[k] * (1.0 - np.exp(-tr / t1[k])) for k in maps)
    single = m0_recovery_factor(tr, kinetics.t1_tissue(field_strength))
    tissue = sum(maps.values()) >= 0.1
    return np.where(tissue, recovered / np.where(tissue, weight, 1.0), single)


def compute_m0(
    params: QuantParams,
    *,
    m0_volumes=None,
    series=None,
    volume_types: Sequence[str] | None = None,
    control=None,
    shape: tuple[int, int, int] | None = None,
    method: str | None = None,
    m0_scale: float = 1.0,
    source: str | PathLike | None = None,
    tissue_fractions: dict | None = None,
) -> np.ndarray:
    """The M0 image, scaled and corrected for incomplete recovery.

    Parameters
    ----------
    params
        Quantification parameters (``m0_type``, TRs, tissue T1, BS).
    m0_volumes
        ``Separate``: the (motion-corrected, coregistered) M0 image, 3D or 4D
        (volumes averaged).
    series, volume_types
        ``Included``: the ``m0scan`` volumes of the series are averaged;
        ``Absent``: the control volumes are averaged.
    control
        ``"pairwise-control"``: ``(x, y, z, n)`` control image of each pair
        (:attr:`DeltaM.control`); the M0 is then 4D, one per pair.
    shape
        ``Estimate``: the spatial shape to broadcast ``M0Estimate`` to (taken
        from the other inputs when they are given).
    method
        ``None`` (use ``params.m0_type``), one of the BIDS M0 types, or
        ``"pairwise-control"`` (ASLtbx: each pair's control image, voxel by
        voxel).
    m0_scale
        Multiplier applied to M0 (e.g. a vendor scaling between M0 and ASL
        images).
    source
        The M0 or ASL file, named in error messages.
    tissue_fractions
        ``{"gm", "wm", "csf"}`` partial-volume maps on the M0 grid: the
        recovery factor is then tissue-weighted voxel by voxel
        (:func:`tissue_recovery_factor`) instead of one tissue T1.

    The recovery correction ``M0 / (1 - exp(-TR/T1tissue))`` uses
    ``params.m0_tr`` (``Separate``, ``Included``) or ``params.tr`` (``Absent``,
    pair-wise control); it is skipped, with a warning, when that TR is unknown,
    and, with one tissue T1 (the methods spec's rule), silently when it is
    >= 5 s; the tissue-weighted factor corrects at any known TR. ``Estimate``
    is taken as an equilibrium value and not corrected.
    """
    src = None if source is None else str(source)
    method = params.m0_type if method is None else method
    if not (np.isfinite(m0_scale) and m0_scale > 0):
        raise ASLInputError(
            f"m0_scale must be > 0, got {m0_scale}.",
            field="m0_scale",
            fix="pass a positive value.",
        )
    tr = params.m0_tr
    if method == "Separate":
        if m0_volumes is None:
            raise ASLInputError(
                "M0Type is Separate but no M0 image was given.",
                file=src,
                field="M0Type",
                fix="give the _m0scan image (or the M0 of the pipeline).",
            )
        m0 = np.asarray(m0_volumes, dtype=float)
        if m0.ndim == 4:
            m0 = m0.mean(axis=3)
    elif method in ("Included", "Absent"):
        if series is None or volume_types is None:
            raise ValueError(f"M0Type {method} needs series and volume_types")
        series = np.asarray(series)
        vtypes = _volume_types(volume_types, series.shape[-1], src)
        want = "m0scan" if method == "Included" else "control"
        idx = [i for i, v in enumerate(vtypes) if v == want]
        if not idx:
            raise ASLInputError(
                f"M0Type is {method} but the series has no {want} volume.",
                file=src,
                field="M0Type",
                fix="correct M0Type or aslcontext.",
            )
        if method == "Absent":
            _refuse_bs(params, src)
            tr = params.tr
        m0 = series[..., idx].astype(float).mean(axis=3)
    elif method == "Estimate":
        if params.m0_estimate is None:
            raise ASLInputError(
                "no M0Estimate.", file=src, field="M0Estimate", fix="add M0Estimate."
            )
        for arr in (m0_volumes, series, control):
            if arr is not None:
                shape = np.shape(arr)[:3]
                break
        if shape is None:
            raise ValueError("M0Type Estimate needs the spatial shape (shape=...)")
        return np.full(shape, params.m0_estimate * m0_scale)
    elif method == PAIRWISE_CONTROL:
        if control is None:
            raise ValueError("pairwise-control M0 needs the control images (control=...)")
        _refuse_bs(params, src)
        tr = params.tr
        m0 = np.asarray(control, dtype=float)
    else:
        raise ValueError(f"unknown M0 method {method!r}")

    if not np.any(np.isfinite(m0) & (m0 > 0)):
        raise ASLInputError(
            "the M0 image has no positive value (all zero?).",
            file=src,
            field="M0",
            fix="check the M0 image, its scaling (scl_slope) and M0Type.",
        )
    if tissue_fractions is None:
        factor = m0_recovery_factor(tr, params.t1_tissue)
    else:
        factor = tissue_recovery_factor(tr, tissue_fractions, params.field_strength)
        if m0.ndim == 4 and np.ndim(factor) == 3:
            factor = factor[..., None]
    if tr is None:
        _warn(
            f"{src or 'M0'}: repetition time of the M0 unknown: no correction for "
            "incomplete recovery."
        )
    return m0 * (m0_scale / factor)


def _refuse_bs(params: QuantParams, src):
    if params.background_suppression:
        raise ASLInputError(
            "the control images are not an M0 when background suppression is on.",
            file=src or params.source,
            field="BackgroundSuppression",
            fix="use a separate M0 scan (M0Type Separate/Included) or an M0Estimate.",
        )


def low_m0_mask(m0, mask=None, *, fraction: float = M0_FRACTION_DEFAULT) -> np.ndarray:
    """Voxels whose M0 is too low (or not finite) to divide by.

    True where ``M0 < fraction * mean(M0 in mask)`` or M0 is not finite. The
    mean is over the brain mask (all voxels with positive M0 without one). A
    4D M0 (one per pair) is thresholded volume by volume.
    """
    m0 = np.asarray(m0, dtype=float)
    finite = np.isfinite(m0)
    if mask is None:
        sel = finite & (m0 > 0)
    else:
        mask = np.asarray(mask, dtype=bool)
        sel = finite & (mask[..., None] if m0.ndim == 4 else mask)
    if m0.ndim == 4:
        cnt = sel.sum(axis=(0, 1, 2))
        ref = np.where(sel, m0, 0.0).sum(axis=(0, 1, 2)) / np.maximum(cnt, 1)
    else:
        cnt = sel.sum()
        ref = np.where(sel, m0, 0.0).sum() / max(cnt, 1)
    if np.any(np.asarray(ref) <= 0) or np.any(np.asarray(cnt) == 0):
        raise ASLInputError(
            "the M0 is zero or negative on average in the brain mask.",
            field="M0",
            fix="check the M0 image and the brain mask.",
        )
    with np.errstate(invalid="ignore"):
        return ~finite | (m0 < fraction * ref)


# --------------------------------------------------------------------------------------
# Single PLD
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CBFResult:
    """Single-PLD CBF.

    Attributes
    ----------
    cbf_ts
        ``(x, y, z, n)`` CBF of each difference, mL/100 g/min.
    mean_cbf
        ``(x, y, z)`` mean over the differences.
    excluded
        ``(x, y, z)`` bool: in the mask but not quantified (low or non-finite
        M0, non-finite ΔM); their CBF is 0.
    """

    cbf_ts: np.ndarray
    mean_cbf: np.ndarray
    excluded: np.ndarray

    def __iter__(self):  # allow ``cbf_ts, mean_cbf, excluded = cbf_single_pld(...)``
        return iter((self.cbf_ts, self.mean_cbf, self.excluded))


def effective_delays(params: QuantParams, plds, n_slices: int) -> np.ndarray:
    """``(n_slices, n)`` delay (PLD or TI) of each slice and difference.

    Adds ``params.slice_timing`` along the third array axis for 2D readouts.
    """
    plds = np.atleast_1d(np.asarray(plds, dtype=float))
    if params.slice_timing is None:
        return np.broadcast_to(plds, (n_slices, plds.size))
    st = np.asarray(params.slice_timing, dtype=float)
    if st.size != n_slices:
        raise ASLInputError(
            f"{st.size} slice times but {n_slices} slices along the third image axis.",
            file=params.source,
            field="SliceTiming",
            fix="give one time per slice, and store slices along the third axis.",
        )
    return plds[None, :] + st[:, None]


def quantification_factor(params: QuantParams, delays) -> np.ndarray:
    """CBF per unit ΔM/M0 at the given delays (white paper), mL/100 g/min.

    pCASL/CASL: ``6000 λ exp(PLD/T1b) / (2 α T1b (1 - exp(-τ/T1b)))``;
    PASL (QUIPSS II/Q2TIPS): ``6000 λ exp(TI/T1b) / (2 α TI1)``.
    """
    delays = np.asarray(delays, dtype=float)
    num = kinetics.CBF_UNITS * params.lam * np.exp(delays / params.t1b)
    if params.labeling_type == "PASL":
        return num / (2.0 * params.alpha * params.ti1)
    return num / (2.0 * params.alpha * params.t1b * (1.0 - np.exp(-params.tau / params.t1b)))


def cbf_single_pld(
    deltam,
    m0,
    params: QuantParams,
    *,
    plds=None,
    mask=None,
    control=None,
    m0_fraction: float = M0_FRACTION_DEFAULT,
) -> CBFResult:
    """CBF from single-PLD differences (white paper / QUIPSS II equations).

    Parameters
    ----------
    deltam
        ``(x, y, z, n)`` control - label differences (or ``(x, y, z)``).
    m0
        ``(x, y, z)`` M0 image, ``(x, y, z, n)`` one M0 per difference (ASLtbx
        pair-wise control, see :func:`compute_m0`), or a positive scalar; as
        returned by :func:`compute_m0` (scaled, recovery-corrected). The string
        ``"pairwise-control"`` is a shortcut for
        ``compute_m0(params, control=control, method="pairwise-control")``.
    params
        Quantification parameters.
    plds
        PLD (TI) per difference; default ``params.pld``, which must then be a
        single value. The delays may differ between differences (each is
        quantified at its own), but use :func:`fit_multi_pld` for multi-PLD
        data.
    mask
        Brain mask: CBF is 0 outside it, and the low-M0 threshold is relative
        to the mean M0 inside it.
    control
        ``(x, y, z, n)`` control image of each difference (:attr:`DeltaM.control`),
        for ``m0="pairwise-control"``.
    m0_fraction
        Voxels with M0 below this fraction of the brain-mean M0 get CBF 0 and
        are reported in ``excluded``.

    For PASL, a TI shorter than TI1 is refused: the QUIPSS II equation assumes
    the whole bolus has been delivered (TI > TI1 + ATT).
    """
    dm = np.asarray(deltam, dtype=float)
    if dm.ndim == 3:
        dm = dm[..., None]
    if dm.ndim != 4:
        raise ASLInputError(f"ΔM must be 3D or 4D, got shape {dm.shape}.", field="deltam")
    n = dm.shape[3]
    if plds is None:
        if isinstance(params.pld, tuple) and len(set(params.pld)) > 1:
            raise ASLInputError(
                "several PLDs: pass the PLD of each difference (DeltaM.plds), or fit them "
                "with fit_multi_pld.",
                file=params.source,
                field="PostLabelingDelay",
            )
        plds = np.atleast_1d(params.pld)[0]
    plds = np.atleast_1d(np.asarray(plds, dtype=float))
    if plds.size == 1:
        plds = np.full(n, plds[0])
    if plds.size != n:
        raise ASLInputError(
            f"{plds.size} PLDs for {n} differences.",
            field="PostLabelingDelay",
            fix="give one PLD per difference.",
        )
    if params.labeling_type == "PASL" and np.any(plds < params.ti1):
        raise ASLInputError(
            f"inversion time {plds.min()} s shorter than the bolus duration TI1 "
            f"{params.ti1} s: the single-TI equation does not apply.",
            file=params.source,
            field="PostLabelingDelay",
            fix="use fit_multi_pld for multi-TI data or check the units.",
        )

    if isinstance(m0, str):
        if m0 != PAIRWISE_CONTROL or control is None:
            raise ValueError("m0 must be an array, a scalar or 'pairwise-control' with control=")
        m0 = compute_m0(params, control=control, method=PAIRWISE_CONTROL)
    m0 = np.asarray(m0, dtype=float)
    if m0.ndim == 0:
        if not (np.isfinite(m0) and m0 > 0):
            raise ASLInputError(f"M0 must be > 0, got {float(m0)}.", field="M0")
        m0 = np.full(dm.shape[:3], float(m0))
    if m0.shape not in (dm.shape[:3], dm.shape):
        raise ASLInputError(
            f"M0 shape {m0.shape} does not match ΔM shape {dm.shape}.",
            field="M0",
            fix="resample the M0 image to the ASL grid.",
        )
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != dm.shape[:3]:
            raise ASLInputError(
                f"mask shape {mask.shape} does not match the image shape {dm.shape[:3]}.",
                field="mask",
                fix="resample the brain mask to the ASL grid.",
            )
    # A voxel is excluded (CBF 0 in every difference, so that its mean is not
    # biased) when its M0 is low or non-finite in any difference, or any of
    # its ΔM is non-finite.
    low = low_m0_mask(m0, mask, fraction=m0_fraction)
    finite_dm = np.isfinite(dm)
    bad = low.any(axis=3) if m0.ndim == 4 else low
    if not finite_dm.all():
        bad = bad | ~finite_dm.all(axis=3)
        dm = np.where(finite_dm, dm, 0.0)
    if mask is not None:
        bad &= mask
        keep = mask & ~bad
    else:
        keep = ~bad

    delays = effective_delays(params, plds, dm.shape[2])  # (z, n)
    factor = quantification_factor(params, delays)[None, None]  # (1, 1, z, n)
    if m0.ndim == 3:
        inv_m0 = np.zeros(m0.shape)
        np.divide(1.0, m0, out=inv_m0, where=keep)
        cbf_ts = dm * inv_m0[..., None]
    else:
        inv_m0 = np.zeros(m0.shape)
        np.divide(1.0, m0, out=inv_m0, where=keep[..., None])
        cbf_ts = dm * inv_m0
    cbf_ts *= factor
    return CBFResult(cbf_ts=cbf_ts, mean_cbf=cbf_ts.mean(axis=3), excluded=bad)


# --------------------------------------------------------------------------------------
# Multi-PLD / multi-TI
# --------------------------------------------------------------------------------------


def _model(params: QuantParams, cbf, att, delays, t1_after_arrival: str):
    """ΔM/M0 at ``cbf`` (mL/100 g/min) from the kinetics forward model."""
    kw = {
        "alpha": params.alpha,
        "t1b": params.t1b,
        "lam": params.lam,
        "t1_after_arrival": t1_after_arrival,
        "t1_tissue": params.t1_tissue,
    }
    if params.labeling_type == "PASL":
        return kinetics.pasl_deltam(cbf, att, delays, params.ti1, 1.0, **kw)
    return kinetics.pcasl_deltam(cbf, att, delays, params.tau, 1.0, **kw)


#: CBF (mL/100 g/min) at which the ATT grid search evaluates the model's
#: shape when the T1 after arrival depends on the flow (apparent tissue T1);
#: the Levenberg-Marquardt steps that follow use the exact model.
_GRID_CBF = 50.0


def delay_groups(plds) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct delays of ``plds`` (rounded to 1e-9 s) and, for each, the
    indices of its volumes in acquisition order: ``(unique delays, groups)``."""
    rounded = np.round(np.atleast_1d(np.asarray(plds, dtype=float)), 9)
    uniq, inverse = np.unique(rounded, return_inverse=True)
    return uniq, [np.flatnonzero(inverse == k) for k in range(uniq.size)]


def average_repeats(deltam, plds, keep=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean ΔM at each distinct PLD: ``(mean (x, y, z, k), unique plds, counts)``.

    Least squares on the means weighted by the counts equals least squares on
    all the repeats, so the fit uses these. ``keep``: optional ``(n_slices,
    n)`` bool matrix; a slice's mean at a delay is then over its kept repeats
    (:func:`asl_pipeline.outliers.screen_repeats`), all of them where none is
    kept. The counts stay the numbers of repeats.
    """
    dm = np.asarray(deltam, dtype=float)
    uniq, groups = delay_groups(plds)
    counts = np.array([idx.size for idx in groups])
    means = np.zeros(dm.shape[:3] + (uniq.size,))
    if keep is not None:
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (dm.shape[2], dm.shape[3]):
            raise ValueError(f"keep {keep.shape} must be (slices, volumes) {dm.shape[2:]}")
    for k, idx in enumerate(groups):
        if keep is None:
            means[..., k] = dm[..., idx].sum(axis=3) / idx.size
            continue
        w = keep[:, idx].astype(float)  # (z, repeats)
        w[w.sum(axis=1) == 0] = 1.0
        means[..., k] = np.einsum("xyzr,zr->xyz", dm[..., idx], w) / w.sum(axis=1)
    return means, uniq, counts


def fit_multi_pld(
    deltam,
    plds,
    m0,
    params: QuantParams,
    *,
    mask=None,
    att_bounds: tuple[float, float] = (0.1, 3.0),
    cbf_bounds: tuple[float, float] = (0.0, 500.0),
    att_step: float = 0.01,
    n_iter: int = 30,
    tol: float = 1e-7,
    m0_fraction: float = M0_FRACTION_DEFAULT,
    chunk: int = 16384,
    t1_after_arrival: str = "tissue",
    keep=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit CBF and ATT to multi-PLD (pCASL) or multi-TI (PASL) data.

    The model is the Buxton general kinetic model of :mod:`asl_pipeline.kinetics`
    (``pcasl_deltam`` / ``pasl_deltam``) with the labeling constants of
    ``params``; 2D readouts shift every delay by the slice's time. The T1 that
    governs the label after it has arrived in the tissue is
    ``t1_after_arrival`` (:data:`asl_pipeline.kinetics.T1_AFTER_ARRIVAL`):
    ``"tissue"`` (default), the apparent tissue T1 ``1/T1app = 1/T1tissue +
    f/lambda`` of Buxton et al. 1998 with ``T1tissue = params.t1_tissue``; or
    ``"blood"``, ``params.t1b`` throughout, the white paper's simplification.
    On data made with the tissue model, the blood-T1 fit reads CBF too low
    (the label is taken to decay faster than it does). Vectorised across
    voxels:

    1. repeats at the same PLD are averaged (:func:`average_repeats`) and the
       least-squares problem weighted by their counts;
    2. a grid over ATT (``att_step``) with, at each ATT, the closed-form
       least-squares CBF (clipped to ``cbf_bounds``; with the apparent tissue
       T1, which depends on the flow, the model's shape is taken at
       ``_GRID_CBF``); the best grid point starts
    3. Levenberg-Marquardt on (CBF, ATT) for all voxels at once (2x2 normal
       equations solved in closed form, per-voxel damping, finite-difference
       derivatives), with the bounds enforced by clipping.

    Parameters
    ----------
    deltam
        ``(x, y, z, n)`` differences.
    plds
        ``(n,)`` PLD (TI for PASL) of each difference (:attr:`DeltaM.plds`).
    m0
        ``(x, y, z)`` M0 (or a scalar), as from :func:`compute_m0`.
    params
        Quantification parameters.
    mask
        Voxels to fit (all voxels without one).
    att_bounds, cbf_bounds
        Bounds on ATT (s) and CBF (mL/100 g/min).
    t1_after_arrival
        ``"tissue"`` or ``"blood"``, see above.
    keep
        Optional ``(n_slices, n)`` bool matrix of the repeats' slices to
        average (:func:`average_repeats`; the pipeline's comes from
        :func:`asl_pipeline.outliers.screen_repeats`).

    Returns
    -------
    cbf, att, failed
        ``(x, y, z)`` CBF (mL/100 g/min), ATT (s) and a bool map of failed fits.
        A fit fails (CBF and ATT are still the best values found, finite) when
        it did not converge, ATT or CBF ends at a bound, a value is not finite,
        or ATT is not identifiable from the data (pCASL: ATT shorter than the
        shortest delay; PASL: ATT shorter than the shortest TI - TI1, where
        the signal does not depend on ATT). Voxels of the mask with low M0 or
        non-finite data are not fitted: CBF = ATT = 0 and failed. Outside the
        mask everything is 0.
    """
    dm = np.asarray(deltam, dtype=float)
    if dm.ndim != 4:
        raise ASLInputError(f"ΔM must be 4D, got shape {dm.shape}.", field="deltam")
    plds = np.atleast_1d(np.asarray(plds, dtype=float))
    if plds.size != dm.shape[3]:
        raise ASLInputError(
            f"{plds.size} PLDs for {dm.shape[3]} differences.",
            file=params.source,
            field="PostLabelingDelay",
            fix="give one PLD per difference (DeltaM.plds).",
        )
    shape = dm.shape[:3]
    m0 = np.asarray(m0, dtype=float)
    if m0.ndim == 0:
        m0 = np.full(shape, float(m0))
    if m0.shape != shape:
        raise ASLInputError(
            f"M0 shape {m0.shape} does not match the image shape {shape}.",
            field="M0",
            fix="resample the M0 image to the ASL grid.",
        )
    if mask is None:
        mask = np.ones(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ASLInputError(
            f"mask shape {mask.shape} does not match the image shape {shape}.",
            field="mask",
            fix="resample the brain mask to the ASL grid.",
        )
    if t1_after_arrival not in kinetics.T1_AFTER_ARRIVAL:
        raise ASLInputError(
            f"unknown T1 after arrival {t1_after_arrival!r}.",
            field="t1_after_arrival",
            fix=f"use one of {', '.join(kinetics.T1_AFTER_ARRIVAL)}.",
        )
    lo_a, hi_a = map(float, att_bounds)
    lo_f, hi_f = map(float, cbf_bounds)

    mean_dm, uniq, counts = average_repeats(dm, plds, keep)
    if uniq.size < 2:
        raise ASLInputError(
            "a single PLD: ATT cannot be fitted.",
            file=params.source,
            field="PostLabelingDelay",
            fix="use cbf_single_pld for single-PLD data.",
        )
    w = counts.astype(float)
    low = low_m0_mask(m0, mask, fraction=m0_fraction)
    fit = mask & ~low & np.all(np.isfinite(mean_dm), axis=3)

    cbf = np.zeros(shape)
    att = np.zeros(shape)
    failed = mask & ~fit
    delays = effective_delays(params, uniq, shape[2])  # (z, k)
    grid = np.arange(lo_a, hi_a + 0.5 * att_step, att_step)
    if params.labeling_type == "PASL":
        ident = delays.min(axis=1) - params.ti1  # ATT must exceed this to matter
    else:
        ident = delays.min(axis=1)

    vox = np.argwhere(fit)
    zs = vox[:, 2]
    y_all = mean_dm[fit] / m0[fit][:, None]  # (nvox, k), ΔM/M0
    # voxels sharing a slice share their delays: group by slice, chunk within
    for z in np.unique(zs):
        in_z = np.flatnonzero(zs == z)

        def model(f_, a_, z=z):
            return _model(params, f_[:, None], a_[:, None], delays[z][None, :], t1_after_arrival)

        # per unit CBF, (n_att, k)
        g_grid = model(np.full(grid.size, _GRID_CBF), grid) / _GRID_CBF
        for start in range(0, in_z.size, chunk):
            sel = in_z[start : start + chunk]
            y = y_all[sel]
            f, a, ok = _fit_block(
                model, y, w, g_grid, grid, (lo_f, hi_f), (lo_a, hi_a), n_iter, tol
            )
            f_ok = ok & (a > ident[z] + 0.5 * att_step)
            ijk = tuple(vox[sel].T)
            cbf[ijk] = f
            att[ijk] = a
            failed[ijk] = ~f_ok
    return cbf, att, failed


def _fit_block(model, y, w, g_grid, grid, fbounds, abounds, n_iter, tol):
    """Grid search + Levenberg-Marquardt for voxels sharing their delays.

    ``model(f, a)`` gives ΔM/M0 ``(nvox, k)`` at CBF ``f`` and ATT ``a``;
    ``g_grid`` is its shape per unit CBF at the ATTs of ``grid``.
    """
    lo_f, hi_f = fbounds
    lo_a, hi_a = abounds
    # grid: closed-form CBF at each ATT, residual sum of squares
    num = (y * w) @ g_grid.T  # (nvox, n_att)
    den = (g_grid**2) @ w  # (n_att,)
    f_grid = np.clip(num / np.where(den > 0, den, np.inf), lo_f, hi_f)
    rss_grid = -2.0 * f_grid * num + f_grid**2 * den
    best = np.argmin(rss_grid, axis=1)
    rows = np.arange(y.shape[0])
    f = f_grid[rows, best]
    a = grid[best].astype(float)
    yw2 = (w * y**2).sum(axis=1)

    def rss(y_, f_, a_):
        return (w * (y_ - model(f_, a_)) ** 2).sum(axis=1)

    h = 1e-6
    lam = np.full(y.shape[0], 1e-3)
    cur = rss(y, f, a)
    converged = np.zeros(y.shape[0], dtype=bool)
    for _ in range(n_iter):
        act = np.flatnonzero(~converged)  # iterate only the voxels still moving
        if act.size == 0:
            break
        ya, fa, aa, la = y[act], f[act], a[act], lam[act]
        m = model(fa, aa)
        hf = h * np.maximum(np.abs(fa), 1.0)
        jf = (model(fa + hf, aa) - model(fa - hf, aa)) / (2 * hf)[:, None]
        ja = (model(fa, aa + h) - model(fa, aa - h)) / (2 * h)
        r = ya - m
        aff = (w * jf * jf).sum(1)
        afa = (w * jf * ja).sum(1)
        aaa = (w * ja * ja).sum(1)
        bf = (w * jf * r).sum(1)
        ba = (w * ja * r).sum(1)
        a11 = aff * (1 + la)
        a22 = aaa * (1 + la) + 1e-30
        det = a11 * a22 - afa**2
        det = np.where(np.abs(det) > 1e-300, det, np.inf)
        f_new = np.clip(fa + (a22 * bf - afa * ba) / det, lo_f, hi_f)
        a_new = np.clip(aa + (a11 * ba - afa * bf) / det, lo_a, hi_a)
        new = rss(ya, f_new, a_new)
        better = np.isfinite(new) & (new <= cur[act])
        small = (np.abs(a_new - aa) < tol) & (np.abs(f_new - fa) <= tol * np.maximum(1, fa))
        f[act] = np.where(better, f_new, fa)
        a[act] = np.where(better, a_new, aa)
        cur[act] = np.where(better, new, cur[act])
        lam[act] = np.where(better, la * 0.3, la * 10.0)
        converged[act] = (
            (better & small)
            # the residual is at rounding level
            | (cur[act] <= 1e-24 * np.maximum(yw2[act], 1e-300))
            # no descent left even with heavy damping: a (possibly non-smooth)
            # minimum, e.g. ATT at a kink of the model where it equals a delay
            | (lam[act] > 1e8)
        )
    # variable projection: the CBF is linear in the model's shape at a given
    # ATT (exactly with blood T1; with the apparent tissue T1 the shape is
    # taken at the current CBF), so take the least-squares CBF for that shape
    # and keep it where it lowers the residual
    g = model(np.where(f > 0, f, 1.0), a) / np.where(f > 0, f, 1.0)[:, None]
    gg = (w * g * g).sum(1)
    f_proj = np.clip((w * g * y).sum(1) / np.where(gg > 0, gg, np.inf), lo_f, hi_f)
    f = np.where(rss(y, f_proj, a) <= cur, f_proj, f)
    ok = (
        converged
        & np.isfinite(f)
        & np.isfinite(a)
        & (a > lo_a + 1e-6)
        & (a < hi_a - 1e-6)
        & (f > lo_f)
        & (f < hi_f)
    )
    f = np.where(np.isfinite(f), f, 0.0)
    a = np.where(np.isfinite(a), a, 0.0)
    return f, a, ok
