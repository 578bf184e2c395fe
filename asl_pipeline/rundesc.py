"""One normalised, immutable description of an ASL run.

The BIDS reader (:mod:`asl_pipeline.bids`) builds one :class:`RunDescription`
per run; the workflow hands it (as :meth:`RunDescription.to_dict`) to the
nodes that quantify, which rebuild it with :meth:`RunDescription.from_dict`
and parse nothing again. So ``--validate-only`` and the quantification read
the sidecar under the same rules: the rules live here, once.

The description is made of small sections, each with its own parser working
on a sidecar dictionary (no files, no pybids):

* :class:`Series` (:func:`parse_series`): volume types and control/label pairs;
* :class:`Labeling` (:func:`parse_labeling`): labeling type, delays (PLD or TI)
  per volume, labeling duration, PASL bolus cut-off;
* :class:`Efficiency` (:func:`parse_efficiency`): background suppression,
  labeling efficiency, field strength;
* :class:`Readout` (:func:`parse_readout`): 2D/3D and slice timing;
* :class:`M0Source` (:func:`parse_m0`): M0Type, included volumes, estimate,
  repetition times.

There is one ``aslcontext.tsv`` reader (:func:`read_aslcontext`), one
normalisation of volume types (:func:`normalise_volume_types`: case-folded,
``Control`` is ``control``) and one pairing function (:func:`pair_volumes`).

Errors are :class:`~asl_pipeline.errors.ASLInputError` naming the file
(``where(field)``: the sidecar the field comes from under BIDS inheritance),
the field and the fix; recoverable oddities are appended to ``warnings``.
"""

from __future__ import annotations

import csv
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from asl_pipeline.errors import ASLInputError
from asl_pipeline.kinetics import labeling_efficiency as _labeling_efficiency

#: Volume types allowed in ``aslcontext.tsv`` (BIDS 1.5+).
VOLUME_TYPES = ("control", "label", "m0scan", "deltam", "cbf", "noRF")
#: Volume types carrying perfusion.
PERFUSION_TYPES = ("control", "label", "deltam", "cbf")
#: Labeling types of ``ArterialSpinLabelingType``.
LABELING_TYPES = ("PCASL", "CASL", "PASL")
#: Values of ``M0Type``.
M0_TYPES = ("Separate", "Included", "Estimate", "Absent")
#: Values of ``BolusCutOffTechnique`` (spaces, underscores and case ignored).
#: Original QUIPSS (saturation of the imaging slab) is not among them: the
#: QUIPSS II / Q2TIPS equation of the methods spec does not apply to it.
BOLUS_CUTOFF_TECHNIQUES = ("QUIPSSII", "Q2TIPS")
#: Longest plausible delay or duration (s): PostLabelingDelay, TI,
#: LabelingDuration, BolusCutOffDelayTime.
MAX_TIME_S = 10.0
#: Field strength assumed when ``MagneticFieldStrength`` is missing (T).
DEFAULT_FIELD_STRENGTH = 3.0

#: ``where(field)`` -> the file to name in an error about that field.
Where = Callable[[str], "Path | str | None"]


def fixed_source(source) -> Where:
    """A ``where`` naming one file for every field."""
    return lambda _key: source


# --------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------


def did_you_mean(md: Mapping, key: str) -> str:
    """A hint at a misspelt sidecar key (e.g. PostLabellingDelay)."""
    close = difflib.get_close_matches(key, [k for k in md if k != key], n=1, cutoff=0.8)
    if not close:
        close = [k for k in md if k != key and k.lower() == key.lower()]
    return f' (the sidecar has "{close[0]}": a misspelling of "{key}"?)' if close else ""


def is_number(value) -> bool:
    """A finite JSON number (not a boolean)."""
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool | np.bool_)
        and math.isfinite(float(value))
    )


def _number(
    md, key, file, *, what="a number in seconds", required=False, positive=False, fix=None
):
    """A scalar numeric sidecar field, validated (None when absent)."""
    if md.get(key) is None:
        if required:
            raise ASLInputError(
                f"is missing; it is required here ({what}).",
                file=file,
                field=key,
                fix=(fix or f'add "{key}" to the sidecar.') + did_you_mean(md, key),
            )
        return None
    value = md[key]
    if not is_number(value):
        raise ASLInputError(
            f"must be {what}, got {value!r} ({type(value).__name__}).",
            file=file,
            field=key,
            fix=f"write {key} as a plain JSON number (no quotes, no units).",
        )
    value = float(value)
    if positive and value <= 0:
        raise ASLInputError(
            f"must be > 0, got {value}.",
            file=file,
            field=key,
            fix=fix or f"correct {key} from the scanner protocol.",
        )
    return value


def _per_volume(md, key, file, n_volumes, *, fix, n_pairs=0) -> tuple[float, ...]:
    """A required field that is a scalar or a list with one value per volume.

    Returns one value per volume (a 1-tuple for a scalar when ``n_volumes`` is
    None, i.e. when the series is not known).
    """
    if md.get(key) is None:
        raise ASLInputError(
            "is missing; it is required for this labeling type.",
            file=file,
            field=key,
            fix=fix + did_you_mean(md, key),
        )
    value = md[key]
    if isinstance(value, list):
        if not value:
            raise ASLInputError(
                "is an empty list.",
                file=file,
                field=key,
                fix=f"give {key} as one number, or one number per volume.",
            )
        if n_volumes is not None and len(value) != n_volumes:
            per_pair = n_pairs and len(value) == n_pairs
            raise ASLInputError(
                f"has {len(value)} values but the series has {n_volumes} volumes.",
                file=file,
                field=key,
                fix=f"give one {key} per volume (aslcontext row), or a single number "
                "when it is the same for all volumes"
                + (
                    " (this list has one value per pair: repeat each value for the "
                    "control and the label)."
                    if per_pair
                    else "."
                ),
            )
        bad = [v for v in value if not is_number(v)]
        if bad:
            raise ASLInputError(
                f"must contain numbers only, got {bad[0]!r}.",
                file=file,
                field=key,
                fix=f"write every {key} entry as a plain JSON number.",
            )
        return tuple(float(v) for v in value)
    if not is_number(value):
        raise ASLInputError(
            f"must be a number or a list of numbers, got {value!r}.",
            file=file,
            field=key,
            fix=f"write {key} as a plain JSON number in seconds (no quotes, no units).",
        )
    return (float(value),) * (n_volumes or 1)


def _check_times(values: Sequence[float], volumes, file, key: str) -> None:
    """Refuse a negative time, or one of a perfusion volume outside (0, MAX_TIME_S] s."""
    values = np.asarray(values, dtype=float)
    invalid = values < 0
    volumes = list(volumes)
    invalid[volumes] |= (values[volumes] <= 0) | (values[volumes] > MAX_TIME_S)
    if not invalid.any():
        return
    bad = int(np.flatnonzero(invalid)[0])
    unit = (
        " (milliseconds must be divided by 1000)"
        if values[bad] > MAX_TIME_S
        else " (check for a sign error or a missing value)"
    )
    raise ASLInputError(
        f"is {values[bad]} s for volume {bad}: it must be in (0, {MAX_TIME_S:g}] s for "
        "labeled and control volumes (for PASL the inversion time TI).",
        file=file,
        field=key,
        fix=f"give {key} as a positive number of seconds, at most {MAX_TIME_S:g}{unit}.",
    )


def _boolean(md, key, file) -> bool | None:
    if md.get(key) is None:
        return None
    value = md[key]
    if not isinstance(value, bool | np.bool_):
        raise ASLInputError(
            f"must be true or false, got {value!r}.",
            file=file,
            field=key,
            fix=f"write {key} as a JSON boolean: true or false (no quotes).",
        )
    return bool(value)


# --------------------------------------------------------------------------
# aslcontext: the one reader, the one normalisation, the one pairing
# --------------------------------------------------------------------------


def normalise_volume_types(
    raw: Sequence[str], *, source=None, warnings: list | None = None, first_line: int | None = None
) -> tuple[str, ...]:
    """Volume types in their BIDS spelling (case and spaces ignored).

    ``first_line``: the TSV line of ``raw[0]`` (named in messages), or None
    for a list given in memory.
    """
    lookup = {t.lower(): t for t in VOLUME_TYPES}
    types = []
    for k, value in enumerate(raw):
        text = str(value).strip()
        where = f"line {first_line + k}" if first_line is not None else f"volume {k}"
        canonical = lookup.get(text.lower())
        if canonical is None:
            raise ASLInputError(
                f"{where} has the unknown volume type {text!r}.",
                file=source,
                field="volume_type",
                fix=f"use one of {', '.join(VOLUME_TYPES)}.",
            )
        if text != canonical and warnings is not None:
            name = Path(source).name if source is not None else "aslcontext"
            warnings.append(f"{name} {where}: volume type {text!r} read as {canonical!r}")
        types.append(canonical)
    return tuple(types)


def read_aslcontext(path, warnings: list | None = None) -> tuple[str, ...]:
    """The volume types of a BIDS ``aslcontext.tsv``, normalised; the only reader."""
    path = Path(path)
    if not path.exists():
        raise ASLInputError(
            "is missing: every ASL series needs its aslcontext.tsv.",
            file=path,
            field="volume_type",
            fix="add a TSV with a 'volume_type' column and one row per volume "
            "(control, label, m0scan, deltam, cbf or noRF).",
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as fobj:
            rows = [
                (n, r)
                for n, r in enumerate(csv.reader(fobj, delimiter="\t"), start=1)
                if any(c.strip() for c in r)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ASLInputError(
            f"cannot be read ({exc}).",
            file=path,
            field="volume_type",
            fix="save it as a UTF-8 tab-separated file.",
        ) from None
    header = [c.strip() for c in rows[0][1]] if rows else []
    if "volume_type" not in header:
        raise ASLInputError(
            f"has no 'volume_type' column (header: {header}).",
            file=path,
            field="volume_type",
            fix="make the first line the header 'volume_type' (tab-separated).",
        )
    col = header.index("volume_type")
    types = []
    for lineno, row in rows[1:]:
        raw = row[col] if col < len(row) else ""
        types += normalise_volume_types([raw], source=path, warnings=warnings, first_line=lineno)
    if not types:
        raise ASLInputError(
            "lists no volumes.",
            file=path,
            field="volume_type",
            fix="add one row per volume of the ASL series.",
        )
    return tuple(types)


def pair_volumes(volume_types: Sequence[str], *, source=None) -> np.ndarray:
    """``(n_pairs, 2)`` indices ``(control, label)``: the one pairing rule.

    After dropping every volume that is not ``control`` or ``label``, the rest
    are taken two by two, each couple holding one of each, in either order
    (label-first, control-first and a mix are accepted; ``control control
    label label`` is refused). Empty ``(0, 2)`` for a series without pairs.
    """
    types = normalise_volume_types(volume_types, source=source)
    seq = [(i, t) for i, t in enumerate(types) if t in ("control", "label")]
    n_control = sum(t == "control" for _, t in seq)
    n_label = len(seq) - n_control
    if n_control != n_label:
        raise ASLInputError(
            f"has {n_control} control and {n_label} label volumes: they cannot be paired.",
            file=source,
            field="volume_type",
            fix="list as many control as label volumes, each label next to its control "
            "(drop the unpaired volume from the series and from aslcontext).",
        )
    pairs = []
    for k in range(0, len(seq), 2):
        (i, ti), (j, tj) = seq[k], seq[k + 1]
        if ti == tj:
            raise ASLInputError(
                f"volumes {i} and {j} are both '{ti}': control and label volumes must "
                "alternate to form pairs.",
                file=source,
                field="volume_type",
                fix="order the series so that each label is next to its control "
                "(label-first and control-first orders are both accepted).",
            )
        pairs.append((i, j) if ti == "control" else (j, i))
    return np.asarray(pairs, dtype=int).reshape(-1, 2)


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """The volumes of the series: types in order and control/label pairs."""

    #: Volume type of each volume (BIDS spelling).
    volume_types: tuple[str, ...]
    #: ``(control, label)`` volume indices of each pair, in aslcontext order.
    pairs: tuple[tuple[int, int], ...]
    #: ``TotalAcquiredPairs`` (deltam/cbf series averaged on the scanner), or None.
    total_acquired_pairs: int | None = None

    @property
    def n_volumes(self) -> int:
        return len(self.volume_types)

    def indices(self, kind: str) -> tuple[int, ...]:
        """Indices of the volumes of one type."""
        return tuple(i for i, t in enumerate(self.volume_types) if t == kind)

    @property
    def perfusion_volumes(self) -> tuple[int, ...]:
        """Indices of the control, label, deltam and cbf volumes."""
        return tuple(i for i, t in enumerate(self.volume_types) if t in PERFUSION_TYPES)

    @property
    def kind(self) -> str:
        """What is quantified: ``"pairs"``, ``"deltam"`` or ``"cbf"``."""
        if self.pairs:
            return "pairs"
        return "deltam" if self.indices("deltam") else "cbf"


def parse_series(
    volume_types: Sequence[str], md: Mapping, where: Where, warnings: list, *, source=None
) -> Series:
    """Pairs and perfusion content of the series (``source``: the aslcontext)."""
    types = normalise_volume_types(volume_types, source=source, warnings=warnings)
    pairs = pair_volumes(types, source=source)
    n_dm, n_cbf = types.count("deltam"), types.count("cbf")
    if not (pairs.size or n_dm or n_cbf):
        raise ASLInputError(
            "has no perfusion volumes (no control/label pair, deltam or cbf).",
            file=source,
            field="volume_type",
            fix="check that the aslcontext describes the ASL series and not only its M0.",
        )
    if not pairs.size and n_dm and n_cbf:
        raise ASLInputError(
            "mixes deltam and cbf volumes: one kind of perfusion volume is quantified.",
            file=source,
            field="volume_type",
            fix="keep either the deltam or the cbf volumes in the series and its aslcontext.",
        )
    if pairs.size and (n_dm or n_cbf):
        warnings.append(
            "series mixes control/label pairs with deltam/cbf volumes; the pairs are used"
        )
    total = md.get("TotalAcquiredPairs")
    if total is not None:
        if not (is_number(total) and float(total).is_integer() and total > 0):
            raise ASLInputError(
                f"must be a positive integer, got {total!r}.",
                file=where("TotalAcquiredPairs"),
                field="TotalAcquiredPairs",
                fix="write the number of acquired control/label pairs as a JSON integer.",
            )
        total = int(total)
        if pairs.size and total != pairs.shape[0]:
            warnings.append(
                f"TotalAcquiredPairs is {total} but the series holds {pairs.shape[0]} pairs"
            )
    return Series(types, tuple((int(c), int(lb)) for c, lb in pairs), total)


@dataclass(frozen=True)
class Labeling:
    """How the blood was labeled and when it was imaged."""

    #: PCASL, CASL or PASL.
    labeling_type: str
    #: Post-labeling delay of each volume (PASL: the inversion time TI).
    plds: tuple[float, ...]
    #: ``LabelingDuration`` (tau, s) of the perfusion volumes, one value; None for PASL.
    labeling_duration: float | None
    #: ``LabelingDuration`` as given per volume (None when given as one number or PASL).
    labeling_duration_per_volume: tuple[float, ...] | None
    #: ``BolusCutOffFlag`` (None when absent).
    bolus_cutoff_flag: bool | None
    #: QUIPSSII or Q2TIPS (PASL), else None.
    bolus_cutoff_technique: str | None
    #: ``BolusCutOffDelayTime``: (TI1,) or, for Q2TIPS, (TI1, TI1s).
    bolus_cutoff_delay_time: tuple[float, ...] | None

    @property
    def bolus_duration(self) -> float | None:
        """TI1 (PASL with bolus cut-off): the first ``BolusCutOffDelayTime``."""
        return None if self.bolus_cutoff_delay_time is None else self.bolus_cutoff_delay_time[0]


def _labeling_type(md, where) -> str:
    value = md.get("ArterialSpinLabelingType")
    if value is None:
        raise ASLInputError(
            "is missing.",
            file=where("ArterialSpinLabelingType"),
            field="ArterialSpinLabelingType",
            fix='add "ArterialSpinLabelingType": "PCASL", "CASL" or "PASL".'
            + did_you_mean(md, "ArterialSpinLabelingType"),
        )
    if not isinstance(value, str) or value.strip().upper() not in LABELING_TYPES:
        raise ASLInputError(
            f"has the unknown value {value!r}.",
            file=where("ArterialSpinLabelingType"),
            field="ArterialSpinLabelingType",
            fix="use one of PCASL, CASL, PASL (pseudo-continuous, continuous, pulsed).",
        )
    return value.strip().upper()


def _same_within_pairs(values, pairs, file, key, what) -> None:
    values = np.asarray(values, dtype=float)
    if not len(pairs) or values.size == 1:
        return
    pairs = np.asarray(pairs)
    differ = np.flatnonzero(~np.isclose(values[pairs[:, 0]], values[pairs[:, 1]]))
    if differ.size:
        c, lbl = pairs[differ[0]]
        raise ASLInputError(
            f"differs within a control/label pair (volume {c}: {values[c]} s, volume "
            f"{lbl}: {values[lbl]} s).",
            file=file,
            field=key,
            fix=f"give both volumes of each pair the same {what}, in aslcontext order.",
        )


def _labeling_duration(md, series, where, perf) -> tuple[float, tuple[float, ...] | None]:
    file = where("LabelingDuration")
    n_volumes = None if series is None else series.n_volumes
    taus = _per_volume(
        md,
        "LabelingDuration",
        file,
        n_volumes,
        n_pairs=0 if series is None else len(series.pairs),
        fix='add "LabelingDuration" in seconds (the duration of the labeling pulse '
        "train, e.g. 1.8).",
    )
    _check_times(taus, perf if series is not None else range(len(taus)), file, "LabelingDuration")
    used = np.unique(np.asarray(taus)[list(perf)]) if series is not None else np.unique(taus)
    if used.size > 1:
        raise ASLInputError(
            f"varies between the perfusion volumes ({', '.join(f'{t:g}' for t in used)} s): "
            "one labeling duration per run is quantified.",
            file=file,
            field="LabelingDuration",
            fix="split the series into one run per labeling duration.",
        )
    per_volume = taus if isinstance(md["LabelingDuration"], list) else None
    return float(used[0]), per_volume


def _bolus_cutoff(md, where) -> tuple[str, tuple[float, ...]]:
    raw = md.get("BolusCutOffTechnique")
    key = raw.replace(" ", "").replace("_", "").upper() if isinstance(raw, str) else None
    if key == "QUIPSS":
        raise ASLInputError(
            "is 'QUIPSS' (original QUIPSS, saturation of the imaging slab at TI1): the "
            "QUIPSS II / Q2TIPS equation of the pipeline does not apply to it.",
            file=where("BolusCutOffTechnique"),
            field="BolusCutOffTechnique",
            fix="quantify original-QUIPSS data with a dedicated model; if the sequence was "
            'in fact QUIPSS II, set "BolusCutOffTechnique" to "QUIPSSII".',
        )
    if key not in BOLUS_CUTOFF_TECHNIQUES:
        raise ASLInputError(
            f"is {raw!r}; with BolusCutOffFlag true it must be one of "
            f"{', '.join(BOLUS_CUTOFF_TECHNIQUES)}.",
            file=where("BolusCutOffTechnique"),
            field="BolusCutOffTechnique",
            fix='set "BolusCutOffTechnique" to "QUIPSSII" or "Q2TIPS".'
            + did_you_mean(md, "BolusCutOffTechnique"),
        )
    raw_t = md.get("BolusCutOffDelayTime")
    values = raw_t if isinstance(raw_t, list) else [raw_t]
    n_expected = 2 if key == "Q2TIPS" else 1
    ok = (
        len(values) == n_expected
        and all(is_number(v) and 0 < v <= MAX_TIME_S for v in values)
        and (n_expected == 1 or values[1] > values[0])
    )
    if not ok:
        shape_txt = (
            "a list [TI1, TI1s] (start and end of the saturation train, "
            f"0 < TI1 < TI1s <= {MAX_TIME_S:g})"
            if key == "Q2TIPS"
            else f"one number (TI1) in (0, {MAX_TIME_S:g}]"
        )
        raise ASLInputError(
            f"is {raw_t!r}; for {key} it must be {shape_txt}, in seconds.",
            file=where("BolusCutOffDelayTime"),
            field="BolusCutOffDelayTime",
            fix=f'write "BolusCutOffDelayTime" as {shape_txt}.'
            + did_you_mean(md, "BolusCutOffDelayTime"),
        )
    return key, tuple(float(v) for v in values)


def parse_labeling(md: Mapping, series: Series | None, where: Where, warnings: list) -> Labeling:
    """Labeling type, delays, labeling duration and PASL bolus cut-off.

    ``series`` None (the volume types are not known) checks the sidecar alone:
    every listed delay is then taken as a perfusion volume's.
    """
    labeling_type = _labeling_type(md, where)
    n_volumes = None if series is None else series.n_volumes
    plds = _per_volume(
        md,
        "PostLabelingDelay",
        where("PostLabelingDelay"),
        n_volumes,
        n_pairs=0 if series is None else len(series.pairs),
        fix='add "PostLabelingDelay" in seconds (for PASL: the inversion time TI), '
        "one number or one per volume.",
    )
    # without the volume types a zero delay may be an M0 volume's: only the
    # nonzero delays are then known to be perfusion volumes'
    perf = (
        series.perfusion_volumes
        if series is not None
        else [k for k, v in enumerate(plds) if v != 0 or len(plds) == 1]
    )
    _check_times(plds, perf, where("PostLabelingDelay"), "PostLabelingDelay")
    pairs = () if series is None else series.pairs
    _same_within_pairs(plds, pairs, where("PostLabelingDelay"), "PostLabelingDelay", "delay")
    tau, tau_per_volume = None, None
    if labeling_type in ("PCASL", "CASL"):
        tau, tau_per_volume = _labeling_duration(md, series, where, perf)
    flag = _boolean(md, "BolusCutOffFlag", where("BolusCutOffFlag"))
    technique, times = None, None
    if labeling_type == "PASL":
        if not flag:
            raise ASLInputError(
                "is false or missing: PASL without bolus cut-off (QUIPSS II, Q2TIPS) has "
                "an unknown bolus duration and cannot be quantified.",
                file=where("BolusCutOffFlag"),
                field="BolusCutOffFlag",
                fix='if a bolus cut-off was used, set "BolusCutOffFlag": true with '
                '"BolusCutOffTechnique" and "BolusCutOffDelayTime"; otherwise this PASL '
                "data cannot be quantified by this pipeline."
                + did_you_mean(md, "BolusCutOffFlag"),
            )
        technique, times = _bolus_cutoff(md, where)
    return Labeling(labeling_type, plds, tau, tau_per_volume, flag, technique, times)


@dataclass(frozen=True)
class Efficiency:
    """Labeling efficiency and what changes it, and the field strength."""

    #: ``BackgroundSuppression`` (false when missing, with a warning).
    background_suppression: bool
    #: ``BackgroundSuppressionNumberPulses``: 0 without suppression, None when on
    #: but unknown (no efficiency loss applied then).
    background_suppression_pulses: int | None
    #: ``LabelingEfficiency`` as given, or None (the default by labeling type).
    labeling_efficiency: float | None
    #: ``MagneticFieldStrength`` (T), 3 T when missing.
    field_strength: float

    def effective(self, labeling_type: str) -> float:
        """Alpha with the background-suppression loss applied (see kinetics)."""
        return _labeling_efficiency(
            labeling_type, self.labeling_efficiency, self.background_suppression_pulses or 0
        )


def parse_efficiency(md: Mapping, where: Where, warnings: list) -> Efficiency:
    """Background suppression, labeling efficiency and field strength."""
    bs = _boolean(md, "BackgroundSuppression", where("BackgroundSuppression"))
    if bs is None:
        warnings.append("BackgroundSuppression missing: assumed false")
        bs = False
    n_pulses: int | None = 0
    if bs:
        value = md.get("BackgroundSuppressionNumberPulses")
        if value is None:
            n_pulses = None
            warnings.append(
                "BackgroundSuppressionNumberPulses missing: labeling efficiency not "
                "corrected for background suppression"
            )
        elif not (is_number(value) and float(value) >= 0 and float(value).is_integer()):
            raise ASLInputError(
                f"must be a non-negative integer, got {value!r}.",
                file=where("BackgroundSuppressionNumberPulses"),
                field="BackgroundSuppressionNumberPulses",
                fix="write the number of background-suppression pulses as a JSON integer.",
            )
        else:
            n_pulses = int(value)
    efficiency = _number(
        md, "LabelingEfficiency", where("LabelingEfficiency"), what="a fraction between 0 and 1"
    )
    if efficiency is not None and not 0 < efficiency <= 1:
        raise ASLInputError(
            f"must be a fraction in (0, 1], got {efficiency}.",
            file=where("LabelingEfficiency"),
            field="LabelingEfficiency",
            fix="write the efficiency as a fraction (0.85, not 85), or remove the field "
            "to use the default for the labeling type.",
        )
    field_strength = _number(
        md,
        "MagneticFieldStrength",
        where("MagneticFieldStrength"),
        what="a number in tesla",
        positive=True,
    )
    if field_strength is None:
        field_strength = DEFAULT_FIELD_STRENGTH
        warnings.append(f"MagneticFieldStrength missing: {DEFAULT_FIELD_STRENGTH:g} T assumed")
    return Efficiency(bs, n_pulses, efficiency, field_strength)


@dataclass(frozen=True)
class Readout:
    """The readout: 2D (slice by slice, each slice later) or 3D."""

    #: "2D" or "3D" (``MRAcquisitionType``; inferred when missing).
    acquisition: str
    #: Acquisition time of each slice (2D), or None (3D, or 2D without SliceTiming).
    slice_timing: tuple[float, ...] | None


def parse_readout(md: Mapping, n_slices: int | None, where: Where, warnings: list) -> Readout:
    """``MRAcquisitionType`` and ``SliceTiming`` (``n_slices``: the third image dimension)."""
    acquisition = md.get("MRAcquisitionType")
    if acquisition is None:
        acquisition = "2D" if "SliceTiming" in md else "3D"
        warnings.append(f"MRAcquisitionType missing: {acquisition} assumed")
    elif not isinstance(acquisition, str) or acquisition.strip().upper() not in ("2D", "3D"):
        raise ASLInputError(
            f"has the unknown value {acquisition!r}.",
            file=where("MRAcquisitionType"),
            field="MRAcquisitionType",
            fix='use "2D" (slice by slice, e.g. EPI) or "3D" (e.g. GRASE, spiral).',
        )
    acquisition = acquisition.strip().upper()
    reversed_timing = _slice_encoding_reversed(md, acquisition, where)
    if "SliceTiming" not in md:
        if acquisition == "2D":
            warnings.append(
                "2D acquisition without SliceTiming: every slice is taken at the nominal "
                "PostLabelingDelay (CBF of later slices will be overestimated)"
            )
        return Readout(acquisition, None)
    values = md["SliceTiming"]
    file = where("SliceTiming")
    if not isinstance(values, list) or not values or not all(is_number(v) for v in values):
        raise ASLInputError(
            f"must be a list of numbers (seconds), got {values!r}.",
            file=file,
            field="SliceTiming",
            fix="write SliceTiming as a JSON list with one time per slice.",
        )
    if acquisition == "3D":
        warnings.append("SliceTiming ignored for a 3D acquisition")
        return Readout(acquisition, None)
    if n_slices is not None and len(values) != n_slices:
        raise ASLInputError(
            f"has {len(values)} values but the series has {n_slices} slices.",
            file=file,
            field="SliceTiming",
            fix="give one acquisition time per slice (third image dimension).",
        )
    if min(values) < 0:
        raise ASLInputError(
            "contains negative times.",
            file=file,
            field="SliceTiming",
            fix="give slice times in seconds from the start of the readout (>= 0).",
        )
    if reversed_timing:
        values = values[::-1]
    return Readout(acquisition, tuple(float(v) for v in values))


def _slice_encoding_reversed(md: Mapping, acquisition: str, where: Where) -> bool:
    """Whether ``SliceTiming`` runs from the last slice to the first (``"k-"``).

    BIDS: the slices lie along the axis ``SliceEncodingDirection`` names, and
    with a ``-`` the first ``SliceTiming`` entry is the slice of the largest
    index. The pipeline takes slices along the third axis (``k``); a 2D
    readout sliced along ``i`` or ``j`` would be quantified and cleaned along
    the wrong axis, so it is refused (a 3D readout has no slice timing)."""
    value = md.get("SliceEncodingDirection")
    if value is None:
        return False
    if value not in ("i", "j", "k", "i-", "j-", "k-"):
        raise ASLInputError(
            f"has the unknown value {value!r}.",
            file=where("SliceEncodingDirection"),
            field="SliceEncodingDirection",
            fix='use "k" or "k-" (slices along the third image axis, "-" when SliceTiming '
            "starts at the last slice), or remove the field.",
        )
    if value[0] != "k" and acquisition == "2D":
        raise ASLInputError(
            f"is {value!r}: the slices lie along the image's "
            f"{'first' if value[0] == 'i' else 'second'} axis, and the slice timing and the "
            "slice-wise outlier cleaning work along the third.",
            file=where("SliceEncodingDirection"),
            field="SliceEncodingDirection",
            fix="reorient the series (and its M0) so that the slices lie along the third "
            'axis (e.g. dcm2niix\'s default output), and set "SliceEncodingDirection" to "k".',
        )
    return value == "k-"


@dataclass(frozen=True)
class M0Source:
    """Where the M0 comes from, and the repetition times that correct it."""

    #: Separate, Included, Estimate or Absent (BIDS spelling).
    m0_type: str
    #: Separate: the M0 image (set by the BIDS reader), else None.
    m0_file: str | None
    #: Included: the m0scan volumes of the series.
    m0_volumes: tuple[int, ...]
    #: Estimate: ``M0Estimate``.
    m0_estimate: float | None
    #: Repetition time of the M0 used (s); None when unknown or for Estimate.
    m0_repetition_time: float | None
    #: Repetition time of the control volumes of the series (s), None when
    #: unknown: the M0 of Absent and of the pair-wise control quantification.
    series_repetition_time: float | None


def parse_m0_type(md: Mapping, where: Where) -> str:
    """``M0Type`` in its BIDS spelling (case and spaces ignored)."""
    raw = md.get("M0Type")
    lookup = {t.lower(): t for t in M0_TYPES}
    m0_type = lookup.get(raw.strip().lower()) if isinstance(raw, str) else None
    if m0_type is None:
        raise ASLInputError(
            "is missing." if raw is None else f"has the unknown value {raw!r}.",
            file=where("M0Type"),
            field="M0Type",
            fix='set "M0Type" to "Separate" (an _m0scan file), "Included" (m0scan volumes '
            'in the series), "Estimate" (with "M0Estimate") or "Absent".'
            + did_you_mean(md, "M0Type"),
        )
    return m0_type


def repetition_time(md: Mapping, file, volumes, warnings: list | None) -> float | None:
    """A repetition time (s); None, with a warning, when unknown or 0.

    ``RepetitionTimePreparation`` wins over ``RepetitionTime``; a per-volume
    list is read at ``volumes`` (all when None) and is unknown when it varies.
    ``warnings`` None: no warning (the value is not needed).
    """
    key = "RepetitionTimePreparation" if "RepetitionTimePreparation" in md else "RepetitionTime"
    value = md.get(key)
    name = Path(file).name if file is not None else "the sidecar"
    note = warnings.append if warnings is not None else (lambda _m: None)
    if isinstance(value, list):
        if not value or not all(is_number(v) for v in value):
            raise ASLInputError(
                f"must be a number or a list of numbers, got {value!r}.",
                file=file,
                field=key,
                fix=f"write {key} in seconds as a plain JSON number.",
            )
        if volumes is not None and len(value) > max(volumes, default=-1):
            value = [value[i] for i in volumes] or value
        if len(set(value)) > 1:
            note(f"{key} differs between the volumes used {sorted(set(value))}: unknown")
            return None
        value = value[0]
    if value is None:
        note(
            f"repetition time unknown ({name} has no RepetitionTimePreparation): "
            "no correction for incomplete M0 recovery"
        )
        return None
    if not is_number(value):
        raise ASLInputError(
            f"must be a number in seconds, got {value!r}.",
            file=file,
            field=key,
            fix=f"write {key} as a plain JSON number (no quotes, no units).",
        )
    if value <= 0:
        note(
            f"{key} is {value} in {name}: treated as unknown, no correction for "
            "incomplete M0 recovery"
        )
        return None
    return float(value)


def parse_m0(
    md: Mapping,
    series: Series | None,
    where: Where,
    warnings: list,
    *,
    background_suppression: bool,
    m0_metadata: Mapping | None = None,
    m0_sidecar=None,
    m0_file=None,
) -> M0Source:
    """M0 type, included volumes, estimate and repetition times.

    The separate M0's file (found by the BIDS reader) and its sidecar are
    given as ``m0_file``, ``m0_metadata`` and ``m0_sidecar``.
    """
    m0_type = parse_m0_type(md, where)
    m0_volumes = () if series is None else series.indices("m0scan")
    controls = None if series is None else series.indices("control") or None
    tr_file = where("RepetitionTimePreparation")
    series_tr = repetition_time(md, tr_file, controls, warnings if m0_type == "Absent" else None)
    estimate, m0_tr = None, None
    if m0_type == "Separate":
        if m0_metadata is not None:  # else unknown (compute_m0 warns when it skips)
            m0_tr = repetition_time(m0_metadata, m0_sidecar, None, warnings)
    elif m0_type == "Included":
        if series is not None and not m0_volumes:
            raise ASLInputError(
                "is 'Included' but the aslcontext lists no m0scan volume.",
                file=where("M0Type"),
                field="M0Type",
                fix="mark the M0 volumes as 'm0scan' in the aslcontext, or set M0Type to "
                "Separate, Estimate or Absent.",
            )
        m0_tr = repetition_time(md, tr_file, m0_volumes or None, warnings)
    elif m0_type == "Estimate":
        estimate = _number(
            md,
            "M0Estimate",
            where("M0Estimate"),
            what="a positive number (the M0 signal, in the image's units)",
            required=True,
            positive=True,
            fix='add "M0Estimate" (a single M0 value in the units of the ASL images) or '
            "change M0Type.",
        )
    else:  # Absent: the control images stand in for M0
        if background_suppression:
            raise ASLInputError(
                "is 'Absent' with BackgroundSuppression true: without an M0 the control "
                "image stands in for M0, which background suppression makes invalid.",
                file=where("M0Type"),
                field="M0Type",
                fix="provide an M0 (an _m0scan file with M0Type Separate, m0scan volumes "
                "with Included, or M0Estimate); if background suppression was in fact off, "
                "set BackgroundSuppression to false.",
            )
        m0_tr = series_tr
    if m0_volumes and m0_type != "Included":
        warnings.append(
            f"{len(m0_volumes)} m0scan volume(s) in the series are ignored (M0Type is {m0_type})"
        )
        m0_volumes = ()
    return M0Source(
        m0_type,
        None if m0_file is None else str(m0_file),
        m0_volumes,
        estimate,
        m0_tr,
        series_tr,
    )


# --------------------------------------------------------------------------
# The description
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDescription:
    """Everything the nodes need to know about a run, read and checked once."""

    series: Series
    labeling: Labeling
    efficiency: Efficiency
    readout: Readout
    m0: M0Source
    #: The run's JSON sidecar (named in messages), or None.
    sidecar: str | None = None
    #: The run's aslcontext.tsv, or None.
    aslcontext: str | None = None

    # ---- derived quantities -------------------------------------------------
    @property
    def volume_types(self) -> tuple[str, ...]:
        return self.series.volume_types

    @property
    def pairs(self) -> np.ndarray:
        """``(n_pairs, 2)`` read-only array of ``(control, label)`` indices."""
        return _readonly(np.asarray(self.series.pairs, dtype=int).reshape(-1, 2))

    @property
    def plds(self) -> np.ndarray:
        """Read-only delay of each volume (PASL: TI)."""
        return _readonly(np.asarray(self.labeling.plds, dtype=float))

    @property
    def perfusion_plds(self) -> np.ndarray:
        """Delays of the perfusion volumes."""
        return self.plds[list(self.series.perfusion_volumes)]

    @property
    def is_multi_pld(self) -> bool:
        return np.unique(np.round(self.perfusion_plds, 6)).size > 1

    @property
    def alpha(self) -> float:
        """Effective labeling efficiency (background-suppression loss applied)."""
        return self.efficiency.effective(self.labeling.labeling_type)

    # ---- serialisation (node inputs) ----------------------------------------
    def to_dict(self) -> dict:
        """A JSON-serialisable dictionary (lists for tuples); see :meth:`from_dict`."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping) -> RunDescription:
        """The description written by :meth:`to_dict` (a node input)."""
        sections = {}
        for f in fields(cls):
            value = data.get(f.name)
            section = _SECTIONS.get(f.name)
            sections[f.name] = _section(section, value) if section else value
        return cls(**sections)


_SECTIONS = {
    "series": Series,
    "labeling": Labeling,
    "efficiency": Efficiency,
    "readout": Readout,
    "m0": M0Source,
}


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _tuples(value):
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def _section(cls, value: Mapping):
    return cls(**{f.name: _tuples(value[f.name]) for f in fields(cls)})


def describe_metadata(
    metadata: Mapping,
    volume_types: Sequence[str],
    *,
    n_slices: int | None = None,
    m0_metadata: Mapping | None = None,
    m0_file=None,
    sidecar=None,
    m0_sidecar=None,
    aslcontext=None,
    where: Where | None = None,
    warnings: list | None = None,
) -> RunDescription:
    """The description of a run from its sidecar and volume types.

    The BIDS reader calls this with ``where`` (field -> the sidecar it comes
    from under inheritance); an interface given a sidecar dictionary instead of
    a description calls it too, so the rules are the same.
    """
    where = where or fixed_source(sidecar)
    warnings = [] if warnings is None else warnings
    if not isinstance(metadata, Mapping):
        raise ASLInputError(
            f"holds a {type(metadata).__name__}, not a JSON object.",
            file=sidecar,
            field="JSON object",
            fix='write the sidecar as one JSON object: {"Field": value, ...}.',
        )
    series = parse_series(volume_types, metadata, where, warnings, source=aslcontext)
    labeling = parse_labeling(metadata, series, where, warnings)
    efficiency = parse_efficiency(metadata, where, warnings)
    readout = parse_readout(metadata, n_slices, where, warnings)
    m0 = parse_m0(
        metadata,
        series,
        where,
        warnings,
        background_suppression=efficiency.background_suppression,
        m0_metadata=m0_metadata,
        m0_sidecar=m0_sidecar,
        m0_file=m0_file,
    )
    return RunDescription(
        series=series,
        labeling=labeling,
        efficiency=efficiency,
        readout=readout,
        m0=m0,
        sidecar=None if sidecar is None else str(sidecar),
        aslcontext=None if aslcontext is None else str(aslcontext),
    )
