"""Read and validate BIDS ASL runs.

Section 1 of the methods spec (``shared/specs/asl-methods.md``). One
:class:`ASLRun` describes one ``*_asl.nii[.gz]`` with everything the pipeline
needs to process it: the volume types of ``aslcontext.tsv``, the control/label
pairing, the post-labeling delays per volume, the labeling and bolus
parameters, the M0 source, the acquisition geometry and the anatomical
reference. Every problem with the data is raised as an
:class:`~asl_pipeline.errors.ASLInputError` naming the file, the field and the
fix; recoverable oddities (for instance ``RepetitionTimePreparation: 0``) are
recorded in :attr:`ASLRun.warnings` and logged.

The reader only reads: pybids is run without a database file and nothing is
ever written inside the input dataset. Every JSON file is read first by
:func:`read_json_sidecar` (a regular file, at most :data:`MAX_SIDECAR_BYTES`,
a JSON object nested at most :data:`MAX_SIDECAR_DEPTH` levels), links that
show a folder twice (loops) are not indexed, and images are opened through the
header checks of :mod:`asl_pipeline.preflight` (their voxels are read there).

Choices left open by the spec and made here (all documented in the fields):

* Control/label pairing is strictly adjacent: after dropping ``m0scan`` and
  ``noRF`` volumes, the remaining ``control``/``label`` volumes are taken two
  by two, each couple holding exactly one of each, in either order (so
  label-first and control-first series, and a mix, are accepted, and a series
  such as ``control control label label`` is refused as unpaired).
* The two volumes of a pair must share their post-labeling delay (and
  labeling duration): a subtraction across delays is refused.
* A ``MagneticFieldStrength`` that is missing is taken as 3 T with a warning.
* A separate M0 must be on the voxel grid (shape) of the ASL series; an affine
  that differs is only a warning (the M0 is registered to the ASL series).
* An ``m0scan`` in ``fmap/`` whose ``IntendedFor`` names the ASL series or its
  M0, or whose ``B0FieldIdentifier`` is named by the ASL run's
  ``B0FieldSource``, is a reverse phase-encoding reference
  (:attr:`ASLRun.m0_pepolar_files`, sidecars in
  :attr:`ASLRun.m0_pepolar_metadata`); it becomes the M0 itself only when
  ``perf/`` holds none.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asl_pipeline.errors import ASLInputError, ASLInputErrors
from asl_pipeline.kinetics import labeling_efficiency as _labeling_efficiency

LOGGER = logging.getLogger("asl_pipeline.bids")

#: Volume types allowed in ``aslcontext.tsv`` (BIDS 1.5+).
VOLUME_TYPES = ("control", "label", "m0scan", "deltam", "cbf", "noRF")
#: Labeling types of ``ArterialSpinLabelingType``.
LABELING_TYPES = ("PCASL", "CASL", "PASL")
#: Values of ``M0Type``.
M0_TYPES = ("Separate", "Included", "Estimate", "Absent")
#: Values of ``BolusCutOffTechnique`` (spaces and case ignored when read).
BOLUS_CUTOFF_TECHNIQUES = ("QUIPSS", "QUIPSSII", "Q2TIPS")
#: Longest plausible delay or duration (s): PostLabelingDelay, TI,
#: LabelingDuration, BolusCutOffDelayTime.
MAX_TIME_S = 10.0
#: Field strength assumed when ``MagneticFieldStrength`` is missing (T).
DEFAULT_FIELD_STRENGTH = 3.0

#: Largest JSON sidecar read (bytes); real sidecars are a few kB.
MAX_SIDECAR_BYTES = 1 << 20
#: Deepest JSON nesting accepted; real sidecars nest two or three levels.
MAX_SIDECAR_DEPTH = 32

_NIFTI_EXT = (".nii.gz", ".nii")
_SKIP_DIRS = ("derivatives", "sourcedata", "code", "stimuli", "models")


@dataclass(frozen=True, eq=False)
class ASLRun:
    """One validated BIDS ASL run.

    Indices are 0-based volume indices of the ASL series; times are seconds.
    """

    #: Subject label (without ``sub-``).
    subject: str
    #: Session label (without ``ses-``), or None.
    session: str | None
    #: ``run`` entity, or None.
    run: str | None
    #: ``acq`` entity, or None.
    acq: str | None
    #: The ASL series (4D NIfTI).
    asl_file: Path
    #: Its ``aslcontext.tsv``.
    aslcontext_file: Path
    #: The run's own JSON sidecar (the file named in errors about fields).
    sidecar_file: Path
    #: Merged sidecar (BIDS inheritance applied by pybids).
    metadata: dict
    #: Volume type of each volume, in series order.
    volume_types: tuple[str, ...]
    #: Number of volumes (rows of aslcontext, 4th image dimension).
    n_volumes: int
    #: Image shape (4D, or 3D for a single-volume series).
    shape: tuple[int, ...]
    #: Voxel size in mm (first three zooms).
    voxel_size: tuple[float, float, float]
    #: ``(n_pairs, 2)`` int array of ``(control_index, label_index)``, in
    #: aslcontext order; empty ``(0, 2)`` for deltam-/cbf-only series.
    control_label_pairs: np.ndarray
    #: Indices of ``m0scan`` volumes inside the series.
    m0_volumes: tuple[int, ...]
    #: Indices of ``deltam`` volumes.
    deltam_volumes: tuple[int, ...]
    #: Indices of ``cbf`` volumes.
    cbf_volumes: tuple[int, ...]
    #: Indices of ``noRF`` volumes.
    norf_volumes: tuple[int, ...]
    #: Post-labeling delay of each volume (for PASL the inversion time TI).
    plds: np.ndarray
    #: PCASL, CASL or PASL.
    labeling_type: str
    #: ``LabelingDuration`` (tau): a float, a per-volume array, or None (PASL).
    labeling_duration: float | np.ndarray | None
    #: ``BolusCutOffFlag`` (None when absent, as for most (P)CASL sidecars).
    bolus_cutoff_flag: bool | None
    #: QUIPSS, QUIPSSII or Q2TIPS (PASL with bolus cut-off), else None.
    bolus_cutoff_technique: str | None
    #: ``BolusCutOffDelayTime`` as a tuple (one value, or two for Q2TIPS).
    bolus_cutoff_delay_time: tuple[float, ...] | None
    #: Separate, Included, Estimate or Absent.
    m0_type: str
    #: Separate M0 image (Separate only).
    m0_file: Path | None
    #: Merged sidecar of the separate M0 ({} otherwise).
    m0_metadata: dict
    #: ``M0Estimate`` (Estimate only).
    m0_estimate: float | None
    #: Reverse phase-encoding M0 images found in ``fmap/`` for this run.
    m0_pepolar_files: tuple[Path, ...]
    #: ``BackgroundSuppression``.
    background_suppression: bool
    #: ``BackgroundSuppressionNumberPulses`` (0 without background
    #: suppression, None when suppression is on but the count is unknown).
    background_suppression_pulses: int | None
    #: ``LabelingEfficiency`` as given, or None (use the default by type).
    labeling_efficiency: float | None
    #: ``MagneticFieldStrength`` in tesla (3 T assumed when missing).
    field_strength: float
    #: ``MRAcquisitionType``: "2D" or "3D".
    acquisition: str
    #: Slice acquisition times (2D), or None.
    slice_timing: np.ndarray | None
    #: Repetition time of the M0 (s), None when unknown (never 0).
    m0_repetition_time: float | None
    #: ``TotalAcquiredPairs`` or None.
    total_acquired_pairs: int | None
    #: The anatomical reference, or None when not required and absent.
    t1w_file: Path | None
    #: Recoverable oddities found while reading.
    warnings: tuple[str, ...] = field(default_factory=tuple)
    #: Merged sidecars of :attr:`m0_pepolar_files`, in the same order.
    m0_pepolar_metadata: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def n_pairs(self) -> int:
        """Number of control/label pairs."""
        return int(self.control_label_pairs.shape[0])

    @property
    def pair_plds(self) -> np.ndarray:
        """Post-labeling delay of each control/label pair."""
        return self.plds[self.control_label_pairs[:, 1]] if self.n_pairs else np.zeros(0)

    @property
    def perfusion_volumes(self) -> tuple[int, ...]:
        """Indices of all volumes carrying perfusion (control, label, deltam, cbf)."""
        keep = {"control", "label", "deltam", "cbf"}
        return tuple(i for i, t in enumerate(self.volume_types) if t in keep)

    @property
    def unique_plds(self) -> np.ndarray:
        """Distinct post-labeling delays of the perfusion volumes."""
        idx = list(self.perfusion_volumes)
        return np.unique(np.round(self.plds[idx], 6)) if idx else np.zeros(0)

    @property
    def is_multi_pld(self) -> bool:
        """True when the perfusion volumes use more than one delay."""
        return self.unique_plds.size > 1

    @property
    def bolus_duration(self) -> float | None:
        """TI1 for PASL with bolus cut-off (first ``BolusCutOffDelayTime``)."""
        if self.bolus_cutoff_delay_time is None:
            return None
        return float(self.bolus_cutoff_delay_time[0])

    @property
    def effective_labeling_efficiency(self) -> float:
        """Alpha with the background-suppression loss applied (see kinetics)."""
        return _labeling_efficiency(
            self.labeling_type,
            self.labeling_efficiency,
            self.background_suppression_pulses or 0,
        )

    @property
    def label_first(self) -> bool | None:
        """True when every pair starts with its label, False when every pair
        starts with its control, None when mixed or without pairs."""
        if not self.n_pairs:
            return None
        first = self.control_label_pairs[:, 1] < self.control_label_pairs[:, 0]
        if first.all():
            return True
        if not first.any():
            return False
        return None


# --------------------------------------------------------------------------
# Small readers and field checks
# --------------------------------------------------------------------------


def _strip_ext(path: Path) -> str:
    name = path.name
    for ext in _NIFTI_EXT:
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _sibling(asl_file: Path, suffix_ext: str) -> Path:
    """``sub-X_asl.nii.gz`` -> ``sub-X_<suffix_ext>`` in the same folder."""
    base = _strip_ext(asl_file)
    return asl_file.with_name(base[: -len("_asl")] + "_" + suffix_ext)


def _find_nifti(path_without_ext: Path) -> Path | None:
    for ext in _NIFTI_EXT:
        candidate = path_without_ext.with_name(path_without_ext.name + ext)
        if candidate.exists():
            return candidate
    return None


def _did_you_mean(md: dict, key: str) -> str:
    """A hint at a misspelt sidecar key (e.g. PostLabellingDelay)."""
    import difflib

    close = difflib.get_close_matches(key, [k for k in md if k != key], n=1, cutoff=0.8)
    if not close:
        close = [k for k in md if k != key and k.lower() == key.lower()]
    return f' (the sidecar has "{close[0]}": a misspelling of "{key}"?)' if close else ""


def _is_number(value) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _number(
    md,
    key,
    file,
    *,
    what="a number in seconds",
    required=False,
    minimum=None,
    strict_min=False,
    fix=None,
):
    """A scalar numeric sidecar field, validated."""
    if key not in md or md[key] is None:
        if required:
            raise ASLInputError(
                f"is missing; it is required here ({what}).",
                file=file,
                field=key,
                fix=(fix or f'add "{key}" to the sidecar.') + _did_you_mean(md, key),
            )
        return None
    value = md[key]
    if not _is_number(value):
        raise ASLInputError(
            f"must be {what}, got {value!r} ({type(value).__name__}).",
            file=file,
            field=key,
            fix=f"write {key} as a plain JSON number (no quotes, no units).",
        )
    value = float(value)
    if minimum is not None and (value < minimum or (strict_min and value == minimum)):
        bound = f"> {minimum}" if strict_min else f">= {minimum}"
        raise ASLInputError(
            f"must be {bound}, got {value}.",
            file=file,
            field=key,
            fix=fix or f"correct {key} from the scanner protocol.",
        )
    return value


def _per_volume(md, key, file, n_volumes, *, required, fix, n_pairs=0):
    """A field that is a scalar or a list with one value per volume."""
    if key not in md or md[key] is None:
        if required:
            raise ASLInputError(
                "is missing; it is required for this labeling type.",
                file=file,
                field=key,
                fix=fix + _did_you_mean(md, key),
            )
        return None
    value = md[key]
    if isinstance(value, list):
        if len(value) != n_volumes:
            raise ASLInputError(
                f"has {len(value)} values but the series has {n_volumes} volumes.",
                file=file,
                field=key,
                fix=f"give one {key} per volume (aslcontext row), or a single number "
                "when it is the same for all volumes"
                + (
                    " (this list has one value per pair: repeat each value for the "
                    "control and the label)."
                    if n_pairs and len(value) == n_pairs
                    else "."
                ),
            )
        bad = [v for v in value if not _is_number(v)]
        if bad:
            raise ASLInputError(
                f"must contain numbers only, got {bad[0]!r}.",
                file=file,
                field=key,
                fix=f"write every {key} entry as a plain JSON number.",
            )
        return np.asarray(value, dtype=float)
    if not _is_number(value):
        raise ASLInputError(
            f"must be a number or a list of numbers, got {value!r}.",
            file=file,
            field=key,
            fix=f"write {key} as a plain JSON number in seconds (no quotes, no units).",
        )
    return float(value)


def _check_times(values: np.ndarray, volumes, file, key: str) -> None:
    """Refuse a negative time, or one of a perfusion volume outside (0, MAX_TIME_S] s."""
    invalid = values < 0
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


def _boolean(md, key, file):
    if key not in md or md[key] is None:
        return None
    value = md[key]
    if not isinstance(value, bool):
        raise ASLInputError(
            f"must be true or false, got {value!r}.",
            file=file,
            field=key,
            fix=f"write {key} as a JSON boolean: true or false (no quotes).",
        )
    return value


def _read_aslcontext(path: Path, warnings: list[str]) -> tuple[str, ...]:
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
            rows = [r for r in csv.reader(fobj, delimiter="\t") if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ASLInputError(
            f"cannot be read ({exc}).",
            file=path,
            field="volume_type",
            fix="save it as a UTF-8 tab-separated file.",
        ) from None
    header = [c.strip() for c in rows[0]] if rows else []
    if "volume_type" not in header:
        raise ASLInputError(
            f"has no 'volume_type' column (header: {header}).",
            file=path,
            field="volume_type",
            fix="make the first line the header 'volume_type' (tab-separated).",
        )
    col = header.index("volume_type")
    lookup = {t.lower(): t for t in VOLUME_TYPES}
    types = []
    for lineno, row in enumerate(rows[1:], start=2):
        raw = row[col].strip() if col < len(row) else ""
        canonical = lookup.get(raw.lower())
        if canonical is None:
            raise ASLInputError(
                f"line {lineno} has the unknown volume type {raw!r}.",
                file=path,
                field="volume_type",
                fix=f"use one of {', '.join(VOLUME_TYPES)}.",
            )
        if raw != canonical:
            warnings.append(
                f"{path.name} line {lineno}: volume type {raw!r} read as {canonical!r}"
            )
        types.append(canonical)
    if not types:
        raise ASLInputError(
            "lists no volumes.",
            file=path,
            field="volume_type",
            fix="add one row per volume of the ASL series.",
        )
    return tuple(types)


def _pair(types: tuple[str, ...], path: Path) -> np.ndarray:
    """Adjacent control/label pairs, in either order (see module docstring)."""
    seq = [(i, t) for i, t in enumerate(types) if t in ("control", "label")]
    n_control = sum(t == "control" for _, t in seq)
    n_label = len(seq) - n_control
    if n_control != n_label:
        raise ASLInputError(
            f"has {n_control} control and {n_label} label volumes: they cannot be paired.",
            file=path,
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
                file=path,
                field="volume_type",
                fix="order the series so that each label is next to its control "
                "(label-first and control-first orders are both accepted).",
            )
        pairs.append((i, j) if ti == "control" else (j, i))
    return np.asarray(pairs, dtype=int).reshape(-1, 2)


def _load_image(path: Path, role: str):
    """The image (data not read) after the header checks of the pre-flight."""
    from asl_pipeline.preflight import load_header

    return load_header(path, role)


def _intended_for(md: dict) -> list[str]:
    value = md.get("IntendedFor", [])
    return [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]


def _targets(path: Path, root: Path, subject: str) -> set[str]:
    """The spellings IntendedFor may use for ``path``."""
    rel_root = path.relative_to(root).as_posix()
    rel_sub = path.relative_to(root / f"sub-{subject}").as_posix()
    return {rel_root, rel_sub, "bids::" + rel_root}


# --------------------------------------------------------------------------
# Dataset-level access
# --------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _json_error(path: Path, problem: str, field: str, fix: str) -> ASLInputError:
    return ASLInputError(problem, file=path, field=field, fix=fix)


def _json_depth(value) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        depth = max(depth, level)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return depth


def _json_bytes(path: Path) -> bytes:
    """The bytes of a sidecar: a regular file of at most MAX_SIDECAR_BYTES."""
    try:
        info = path.stat()
    except OSError as exc:
        raise _json_error(
            path, f"cannot be read ({exc.strerror}).", "file", "replace the broken link or file."
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise _json_error(
            path,
            "is not a regular file (a device, pipe or folder).",
            "file",
            "replace it with the JSON sidecar written by the converter.",
        )
    if info.st_size > MAX_SIDECAR_BYTES:
        raise _json_error(
            path,
            f"is {info.st_size} bytes; a sidecar holds at most {MAX_SIDECAR_BYTES} bytes.",
            "file size",
            "replace it with the JSON sidecar written by the converter.",
        )
    with path.open("rb") as fobj:
        return fobj.read(MAX_SIDECAR_BYTES + 1)


def read_json_sidecar(path) -> dict:
    """Read one BIDS JSON file with bounded size and nesting; the only JSON reader.

    Raises
    ------
    ASLInputError
        When the file is not a regular file, is larger than
        :data:`MAX_SIDECAR_BYTES`, is not UTF-8 JSON, is not a JSON object or
        is nested deeper than :data:`MAX_SIDECAR_DEPTH`.
    """
    path = Path(path)
    deep = _json_error(
        path,
        f"is nested deeper than {MAX_SIDECAR_DEPTH} levels.",
        "JSON nesting",
        "replace it with the flat JSON sidecar written by the converter.",
    )
    raw = _json_bytes(path)
    try:
        value = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise deep from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _json_error(
            path,
            f"is not valid JSON ({_one_line(exc)}).",
            "JSON syntax",
            "correct the JSON syntax (e.g. check commas and quotes with a JSON linter).",
        ) from None
    if not isinstance(value, dict):
        raise _json_error(
            path,
            f"holds a JSON {type(value).__name__}, not an object.",
            "JSON object",
            'write the sidecar as one JSON object: {"Field": value, ...}.',
        )
    if _json_depth(value) > MAX_SIDECAR_DEPTH:
        raise deep
    return value


@dataclass(frozen=True)
class _Tree:
    """What indexing the dataset will see: its JSON files and the symbolic links
    to folders that would show a folder twice (loops included), to be skipped."""

    json_files: tuple[Path, ...]
    repeated_links: tuple[Path, ...]


def _kept_folders(folder: Path, names, seen: set[str], repeated: list[Path], skip) -> list[str]:
    """Sub-folders to walk: not dot folders nor ``skip``, no link to a folder seen."""
    kept = []
    for name in names:
        path = folder / name
        if name.startswith(".") or name in skip:
            continue
        target = os.path.realpath(path)
        if path.is_symlink() and target in seen:
            repeated.append(path)
            continue
        seen.add(target)
        kept.append(name)
    return kept


def _scan(root: Path) -> _Tree:
    """Walk the dataset as pybids will, following links to folders once."""
    files: list[Path] = []
    repeated: list[Path] = []
    seen = {os.path.realpath(root)}
    for folder, dirs, names in os.walk(root, followlinks=True):
        skip = _SKIP_DIRS if Path(folder) == root else ()  # as pybids: top level only
        dirs[:] = _kept_folders(Path(folder), sorted(dirs), seen, repeated, skip)
        files += [Path(folder) / n for n in names if n.endswith(".json")]
    return _Tree(tuple(sorted(files)), tuple(repeated))


def check_json_files(files) -> None:
    """Read every JSON file (bounded), all problems at once.

    Raises
    ------
    ASLInputErrors
        One error per bad file.
    """
    errors = []
    for path in files:
        try:
            read_json_sidecar(path)
        except ASLInputError as exc:
            errors.append(exc)
    if errors:
        raise ASLInputErrors(errors)


def _layout(bids_dir: Path):
    from bids import BIDSLayout, BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    description = bids_dir / "dataset_description.json"
    if not description.exists():
        raise ASLInputError(
            "is missing: the input is not a BIDS dataset root.",
            file=description,
            field="dataset_description.json",
            fix="point to the dataset root, or add a dataset_description.json with at "
            'least {"Name": ..., "BIDSVersion": "1.8.0"}.',
        )
    tree = _scan(bids_dir)
    check_json_files(tree.json_files)  # pybids parses every sidecar unbounded: check first
    # pybids follows every link to a folder: skip those that repeat a folder
    # (a loop would multiply the runs, or never end).
    ignore = [*DEFAULT_LOCATIONS_TO_IGNORE, *map(str, tree.repeated_links)]
    try:
        # pybids skips derivatives/, sourcedata/, code/ and dot files; no
        # database file is written.
        indexer = BIDSLayoutIndexer(validate=False, ignore=ignore)
        return BIDSLayout(str(bids_dir), validate=False, derivatives=False, indexer=indexer)
    except Exception as exc:  # pybids wraps many failures; report them as input errors
        raise ASLInputError(
            f"cannot be indexed as BIDS ({_one_line(exc)}).",
            file=bids_dir,
            field="dataset",
            fix="check the dataset with the BIDS validator (bids-validator-deno).",
        ) from None


def _unique_files(paths) -> list[str]:
    """Paths in sorted order, one per real file: a symbolic-link loop in the
    dataset shows pybids the same file under many folder names."""
    by_real: dict[str, str] = {}
    for path in sorted(paths, key=lambda p: (len(Path(p).parts), p)):
        by_real.setdefault(os.path.realpath(path), path)
    return sorted(by_real.values())


def _normalise_labels(labels, prefix: str) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        labels = [labels]
    out = []
    for label in labels:
        label = str(label).strip()
        if label.startswith(prefix):
            label = label[len(prefix) :]
        out.append(label)
    return out


def collect_runs(
    bids_dir,
    participant_label=None,
    *,
    session=None,
    require_t1w: bool = True,
    bids_filters: dict | None = None,
) -> list[ASLRun]:
    """Find and validate every ASL run of a BIDS dataset.

    See :func:`validate_dataset` for the parameters; this raises the first
    problem instead of collecting them all.

    Returns
    -------
    list of ASLRun, sorted by file path (subject, session, run).

    Raises
    ------
    ASLInputError
        On the first problem found; nothing is written anywhere.
    """
    runs, errors = validate_dataset(
        bids_dir,
        participant_label,
        session=session,
        require_t1w=require_t1w,
        bids_filters=bids_filters,
    )
    if errors:
        raise errors[0]
    return runs


def validate_dataset(
    bids_dir,
    participant_label=None,
    *,
    session=None,
    require_t1w: bool = True,
    bids_filters: dict | None = None,
) -> tuple[list[ASLRun], list[ASLInputError]]:
    """Read every selected ASL run and collect the problems of each.

    Parameters
    ----------
    bids_dir
        Root of the BIDS dataset (holding ``dataset_description.json``).
    participant_label
        A label or list of labels, with or without ``sub-``; None for all.
    session
        A session label or list of labels, with or without ``ses-``; None for all.
    require_t1w
        Refuse a run whose subject has no T1w image (the pipeline registers
        to it). With False the run gets ``t1w_file=None``.
    bids_filters
        pybids entity filters by query, as read from ``--bids-filter-file``
        (:func:`asl_pipeline.config.read_bids_filters`): ``"asl"`` selects the
        ASL series, ``"t1w"`` the T1w image; a None value means the entity
        must be absent. Participant and session labels take precedence.

    Returns
    -------
    runs, errors
        The valid runs and one :class:`ASLInputError` per invalid run (the
        first problem of that run), both in file-path order.

    Raises
    ------
    ASLInputError
        For problems of the dataset as a whole (no dataset_description.json,
        broken JSON, unknown participant or session, no ASL series). Nothing
        is written anywhere.
    """
    root = Path(bids_dir).expanduser().resolve()
    if not root.is_dir():
        raise ASLInputError(
            "does not exist or is not a directory.",
            file=root,
            field="bids_dir",
            fix="give the path of the BIDS dataset root.",
        )
    layout = _layout(root)
    subjects = sorted(layout.get_subjects())
    wanted = _normalise_labels(participant_label, "sub-")
    if wanted is not None:
        missing = [s for s in wanted if s not in subjects]
        if missing:
            raise ASLInputError(
                f"participant(s) {', '.join(missing)} not found; the dataset has: "
                f"{', '.join(subjects) or 'no subjects'}.",
                file=root,
                field="participant_label",
                fix="pass labels of existing sub-<label> folders (with or without 'sub-').",
            )
    sessions = _normalise_labels(session, "ses-")
    if sessions is not None:
        known = sorted(layout.get_sessions())
        missing = [s for s in sessions if s not in known]
        if missing:
            raise ASLInputError(
                f"session(s) {', '.join(missing)} not found; the dataset has: "
                f"{', '.join(known) or 'no sessions'}.",
                file=root,
                field="session_label",
                fix="pass labels of existing ses-<label> folders (with or without 'ses-').",
            )
    query = {
        **_pybids_filters(bids_filters, "asl"),
        "suffix": "asl",
        "extension": [".nii", ".nii.gz"],
        "datatype": "perf",
    }
    if wanted is not None:
        query["subject"] = wanted
    if sessions is not None:
        query["session"] = sessions
    files = _unique_files(f.path for f in layout.get(**query))
    if not files:
        where = f" for participant(s) {', '.join(wanted)}" if wanted else ""
        where += " matching the BIDS filter file" if bids_filters else ""
        raise ASLInputError(
            f"holds no ASL series (sub-*/[ses-*/]perf/*_asl.nii[.gz]){where}.",
            file=root,
            field="perf/*_asl.nii.gz",
            fix="add the ASL NIfTI files, or point to the right dataset.",
        )
    if wanted is not None:
        found = {layout.parse_file_entities(f)["subject"] for f in files}
        without = [s for s in wanted if s not in found]
        if without:
            raise ASLInputError(
                f"participant(s) {', '.join(without)} have no ASL series "
                "(sub-<label>/[ses-*/]perf/*_asl.nii[.gz]).",
                file=root,
                field="participant_label",
                fix="leave these participants out of --participant-label, or add their ASL data.",
            )
    runs, errors = [], []
    for f in files:
        try:
            runs.append(
                _read_run(
                    layout,
                    root,
                    Path(f),
                    require_t1w=require_t1w,
                    t1w_filters=_pybids_filters(bids_filters, "t1w"),
                )
            )
        except ASLInputError as exc:
            errors.append(exc)
    return runs, errors


def _pybids_filters(bids_filters: dict | None, query: str) -> dict:
    """The entity filters of one query, with null as pybids' "entity absent"."""
    from bids.layout import Query

    entities = (bids_filters or {}).get(query) or {}
    return {key: Query.NONE if value is None else value for key, value in entities.items()}


def _read_run(
    layout, root: Path, asl_file: Path, *, require_t1w: bool, t1w_filters: dict | None = None
) -> ASLRun:
    warnings: list[str] = []
    entities = layout.parse_file_entities(str(asl_file))
    subject = entities["subject"]
    session = entities.get("session")
    run = entities.get("run")
    run = None if run is None else str(run)
    acq = entities.get("acquisition")
    sidecar = asl_file.with_name(_strip_ext(asl_file) + ".json")
    md = dict(layout.get_metadata(str(asl_file)))
    if not md:
        raise ASLInputError(
            "has no JSON sidecar (none next to it and none inherited).",
            file=sidecar,
            field="sidecar",
            fix="add the sidecar written by the converter (dcm2niix) with the ASL fields.",
        )
    where = _field_source(layout, root, asl_file, sidecar, entities)

    # ---- aslcontext and image -------------------------------------------
    context_file = _sibling(asl_file, "aslcontext.tsv")
    types = _read_aslcontext(context_file, warnings)
    n_rows = len(types)
    img = _load_image(asl_file, "ASL series")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 3 and n_rows > 1:
        raise ASLInputError(
            f"is a 3D image (one volume, shape {shape}) but {context_file.name} lists "
            f"{n_rows} volumes.",
            file=asl_file,
            field="image dimensions",
            fix="store the ASL series as one 4D NIfTI with all volumes (e.g. merge the "
            "3D files with fslmerge -t or nibabel.concat_images).",
        )
    if len(shape) not in (3, 4):
        raise ASLInputError(
            f"has {len(shape)} dimensions (shape {shape}); an ASL series is 4D.",
            file=asl_file,
            field="image dimensions",
            fix="store the ASL series as one 4D NIfTI (x, y, z, volumes).",
        )
    n_volumes = shape[3] if len(shape) == 4 else 1
    if n_volumes != n_rows:
        raise ASLInputError(
            f"lists {n_rows} volumes but {asl_file.name} has {n_volumes}.",
            file=context_file,
            field="volume_type",
            fix="write exactly one aslcontext row per volume of the series, in order.",
        )
    voxel_size = tuple(float(z) for z in img.header.get_zooms()[:3])

    pairs = _pair(types, context_file)
    idx = {t: tuple(i for i, x in enumerate(types) if x == t) for t in VOLUME_TYPES}
    if not (pairs.size or idx["deltam"] or idx["cbf"]):
        raise ASLInputError(
            "has no perfusion volumes (no control/label pair, deltam or cbf).",
            file=context_file,
            field="volume_type",
            fix="check that the aslcontext describes the ASL series and not only its M0.",
        )
    if pairs.size and (idx["deltam"] or idx["cbf"]):
        warnings.append(
            "series mixes control/label pairs with deltam/cbf volumes; the pairs are used"
        )

    # ---- labeling ---------------------------------------------------------
    asl_type = md.get("ArterialSpinLabelingType")
    if asl_type is None:
        raise ASLInputError(
            "is missing.",
            file=where("ArterialSpinLabelingType"),
            field="ArterialSpinLabelingType",
            fix='add "ArterialSpinLabelingType": "PCASL", "CASL" or "PASL".'
            + _did_you_mean(md, "ArterialSpinLabelingType"),
        )
    if not isinstance(asl_type, str) or asl_type.strip().upper() not in LABELING_TYPES:
        raise ASLInputError(
            f"has the unknown value {asl_type!r}.",
            file=where("ArterialSpinLabelingType"),
            field="ArterialSpinLabelingType",
            fix="use one of PCASL, CASL, PASL (pseudo-continuous, continuous, pulsed).",
        )
    labeling_type = asl_type.strip().upper()

    plds = _per_volume(
        md,
        "PostLabelingDelay",
        where("PostLabelingDelay"),
        n_volumes,
        n_pairs=pairs.shape[0],
        required=True,
        fix='add "PostLabelingDelay" in seconds (for PASL: the inversion time TI), '
        "one number or one per volume.",
    )
    plds = np.full(n_volumes, plds) if np.isscalar(plds) else plds
    perf_idx = [i for i, t in enumerate(types) if t not in ("m0scan", "noRF")]
    _check_times(plds, perf_idx, where("PostLabelingDelay"), "PostLabelingDelay")
    if pairs.size:
        differ = np.flatnonzero(~np.isclose(plds[pairs[:, 0]], plds[pairs[:, 1]]))
        if differ.size:
            c, lbl = pairs[differ[0]]
            raise ASLInputError(
                f"differs within a control/label pair (volume {c}: {plds[c]} s, volume "
                f"{lbl}: {plds[lbl]} s).",
                file=where("PostLabelingDelay"),
                field="PostLabelingDelay",
                fix="give both volumes of each pair the same delay, in aslcontext order.",
            )

    tau = None
    if labeling_type in ("PCASL", "CASL"):
        tau = _per_volume(
            md,
            "LabelingDuration",
            where("LabelingDuration"),
            n_volumes,
            n_pairs=pairs.shape[0],
            required=True,
            fix='add "LabelingDuration" in seconds (the duration of the labeling pulse '
            "train, e.g. 1.8).",
        )
        tau_arr = np.full(n_volumes, tau) if np.isscalar(tau) else tau
        _check_times(tau_arr, perf_idx, where("LabelingDuration"), "LabelingDuration")
        if pairs.size and not np.allclose(tau_arr[pairs[:, 0]], tau_arr[pairs[:, 1]]):
            raise ASLInputError(
                "differs within a control/label pair.",
                file=where("LabelingDuration"),
                field="LabelingDuration",
                fix="give both volumes of each pair the same labeling duration.",
            )

    bolus_flag = _boolean(md, "BolusCutOffFlag", where("BolusCutOffFlag"))
    technique = None
    bolus_times = None
    if labeling_type == "PASL":
        if not bolus_flag:
            raise ASLInputError(
                "is false or missing: PASL without bolus cut-off (QUIPSS, QUIPSS II, "
                "Q2TIPS) has an unknown bolus duration and cannot be quantified.",
                file=where("BolusCutOffFlag"),
                field="BolusCutOffFlag",
                fix='if a bolus cut-off was used, set "BolusCutOffFlag": true with '
                '"BolusCutOffTechnique" and "BolusCutOffDelayTime"; otherwise this PASL '
                "data cannot be quantified by this pipeline."
                + _did_you_mean(md, "BolusCutOffFlag"),
            )
        raw = md.get("BolusCutOffTechnique")
        key = raw.replace(" ", "").replace("_", "").upper() if isinstance(raw, str) else None
        if key not in BOLUS_CUTOFF_TECHNIQUES:
            raise ASLInputError(
                f"is {raw!r}; with BolusCutOffFlag true it must be one of "
                f"{', '.join(BOLUS_CUTOFF_TECHNIQUES)}.",
                file=where("BolusCutOffTechnique"),
                field="BolusCutOffTechnique",
                fix='set "BolusCutOffTechnique" to "QUIPSS", "QUIPSSII" or "Q2TIPS".',
            )
        technique = key
        raw_t = md.get("BolusCutOffDelayTime")
        values = raw_t if isinstance(raw_t, list) else [raw_t]
        n_expected = 2 if technique == "Q2TIPS" else 1
        ok = (
            len(values) == n_expected
            and all(_is_number(v) and 0 < v <= MAX_TIME_S for v in values)
            and (n_expected == 1 or values[1] > values[0])
        )
        if not ok:
            shape_txt = (
                "a list [TI1, TI1s] (start and end of the saturation train, "
                f"0 < TI1 < TI1s <= {MAX_TIME_S:g})"
                if technique == "Q2TIPS"
                else f"one number (TI1) in (0, {MAX_TIME_S:g}]"
            )
            raise ASLInputError(
                f"is {raw_t!r}; for {technique} it must be {shape_txt}, in seconds.",
                file=where("BolusCutOffDelayTime"),
                field="BolusCutOffDelayTime",
                fix=f'write "BolusCutOffDelayTime" as {shape_txt}.',
            )
        bolus_times = tuple(float(v) for v in values)

    # ---- background suppression, efficiency, field ------------------------
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
        elif not (_is_number(value) and float(value) >= 0 and float(value).is_integer()):
            raise ASLInputError(
                f"must be a non-negative integer, got {value!r}.",
                file=where("BackgroundSuppressionNumberPulses"),
                field="BackgroundSuppressionNumberPulses",
                fix="write the number of background-suppression pulses as a JSON integer.",
            )
        else:
            n_pulses = int(value)
    efficiency = _number(
        md,
        "LabelingEfficiency",
        where("LabelingEfficiency"),
        what="a fraction between 0 and 1",
        minimum=0,
        strict_min=True,
    )
    if efficiency is not None and efficiency > 1:
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
        minimum=0,
        strict_min=True,
    )
    if field_strength is None:
        field_strength = DEFAULT_FIELD_STRENGTH
        warnings.append(f"MagneticFieldStrength missing: {DEFAULT_FIELD_STRENGTH:g} T assumed")

    # ---- geometry and timing ----------------------------------------------
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
    slice_timing = None
    if "SliceTiming" in md:
        values = md["SliceTiming"]
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise ASLInputError(
                f"must be a list of numbers (seconds), got {values!r}.",
                file=where("SliceTiming"),
                field="SliceTiming",
                fix="write SliceTiming as a JSON list with one time per slice.",
            )
        if acquisition == "2D":
            if len(values) != shape[2]:
                raise ASLInputError(
                    f"has {len(values)} values but {asl_file.name} has {shape[2]} slices.",
                    file=where("SliceTiming"),
                    field="SliceTiming",
                    fix="give one acquisition time per slice (third image dimension).",
                )
            if min(values) < 0:
                raise ASLInputError(
                    "contains negative times.",
                    file=where("SliceTiming"),
                    field="SliceTiming",
                    fix="give slice times in seconds from the start of the readout (>= 0).",
                )
            slice_timing = np.asarray(values, dtype=float)
        else:
            warnings.append("SliceTiming ignored for a 3D acquisition")
    elif acquisition == "2D":
        warnings.append(
            "2D acquisition without SliceTiming: every slice is taken at the nominal "
            "PostLabelingDelay (CBF of later slices will be overestimated)"
        )

    total_pairs = md.get("TotalAcquiredPairs")
    if total_pairs is not None:
        if not (_is_number(total_pairs) and float(total_pairs).is_integer() and total_pairs > 0):
            raise ASLInputError(
                f"must be a positive integer, got {total_pairs!r}.",
                file=where("TotalAcquiredPairs"),
                field="TotalAcquiredPairs",
                fix="write the number of acquired control/label pairs as a JSON integer.",
            )
        total_pairs = int(total_pairs)
        if pairs.size and total_pairs != pairs.shape[0]:
            warnings.append(
                f"TotalAcquiredPairs is {total_pairs} but the series holds {pairs.shape[0]} pairs"
            )

    # ---- M0 ---------------------------------------------------------------
    m0_type_raw = md.get("M0Type")
    lookup = {t.lower(): t for t in M0_TYPES}
    m0_type = lookup.get(m0_type_raw.strip().lower()) if isinstance(m0_type_raw, str) else None
    if m0_type is None:
        raise ASLInputError(
            "is missing." if m0_type_raw is None else f"has the unknown value {m0_type_raw!r}.",
            file=where("M0Type"),
            field="M0Type",
            fix='set "M0Type" to "Separate" (an _m0scan file), "Included" (m0scan volumes '
            'in the series), "Estimate" (with "M0Estimate") or "Absent".'
            + _did_you_mean(md, "M0Type"),
        )
    m0_file = None
    m0_md: dict = {}
    m0_estimate = None
    m0_tr = None
    pepolar = _pepolar_m0(layout, root, subject, session, asl_file, md)
    if m0_type == "Separate":
        m0_file = _find_nifti(_sibling(asl_file, "m0scan"))
        if m0_file is None and pepolar:
            m0_file = pepolar[0][0]
            pepolar = pepolar[1:]
            warnings.append(
                f"no M0 in perf/: using {m0_file.relative_to(root)} (its IntendedFor names "
                "this series)"
            )
        if m0_file is None:
            expected = _sibling(asl_file, "m0scan.nii.gz")
            raise ASLInputError(
                f"is 'Separate' but no M0 image was found (expected {expected.name}).",
                file=where("M0Type"),
                field="M0Type",
                fix=f"add {expected.name} (with its JSON sidecar), or set M0Type to what "
                "was acquired (Included, Estimate or Absent).",
            )
        m0_img = _load_image(m0_file, "M0")
        if len(m0_img.shape) not in (3, 4) or tuple(m0_img.shape[:3]) != shape[:3]:
            raise ASLInputError(
                f"has shape {tuple(m0_img.shape)} but the ASL series has the voxel grid "
                f"{shape[:3]}.",
                file=m0_file,
                field="image dimensions",
                fix="acquire or reconstruct the M0 on the ASL grid (same matrix and slices), "
                "or resample it onto the ASL grid before running the pipeline.",
            )
        if not np.allclose(m0_img.affine, img.affine, atol=1e-3):
            warnings.append(
                f"{m0_file.name} and {asl_file.name} have different affines; the M0 will be "
                "registered to the ASL series"
            )
        m0_md = dict(layout.get_metadata(str(m0_file)))
        m0_sidecar = m0_file.with_name(_strip_ext(m0_file) + ".json")
        m0_tr = _repetition_time(m0_md, m0_sidecar, None, warnings)
    elif m0_type == "Included":
        if not idx["m0scan"]:
            raise ASLInputError(
                "is 'Included' but the aslcontext lists no m0scan volume.",
                file=where("M0Type"),
                field="M0Type",
                fix=f"mark the M0 volumes as 'm0scan' in {context_file.name}, or set M0Type "
                "to Separate, Estimate or Absent.",
            )
        m0_tr = _repetition_time(md, where("RepetitionTimePreparation"), idx["m0scan"], warnings)
    elif m0_type == "Estimate":
        m0_estimate = _number(
            md,
            "M0Estimate",
            where("M0Estimate"),
            what="a positive number (the M0 signal, in the image's units)",
            required=True,
            minimum=0,
            strict_min=True,
            fix='add "M0Estimate" (a single M0 value in the units of the ASL images) or '
            "change M0Type.",
        )
    else:  # Absent
        if bs:
            raise ASLInputError(
                "is 'Absent' with BackgroundSuppression true: without an M0 the control "
                "image stands in for M0, which background suppression makes invalid.",
                file=where("M0Type"),
                field="M0Type",
                fix="provide an M0 (an _m0scan file with M0Type Separate, m0scan volumes "
                "with Included, or M0Estimate); if background suppression was in fact off, "
                "set BackgroundSuppression to false.",
            )
        m0_tr = _repetition_time(md, where("RepetitionTimePreparation"), None, warnings)
    if idx["m0scan"] and m0_type != "Included":
        warnings.append(
            f"{len(idx['m0scan'])} m0scan volume(s) in the series are ignored (M0Type is "
            f"{m0_type})"
        )

    t1w = _find_t1w(layout, subject, session, warnings, t1w_filters)
    if t1w is not None:
        t1w_img = _load_image(t1w, "T1w")
        if len(t1w_img.shape) != 3 and not (len(t1w_img.shape) == 4 and t1w_img.shape[3] == 1):
            raise ASLInputError(
                f"has shape {tuple(t1w_img.shape)}; a T1w image is one 3D volume.",
                file=t1w,
                field="image dimensions",
                fix="keep a single 3D T1w volume (e.g. the first run, or an average).",
            )
    if t1w is None and require_t1w:
        anat = root / f"sub-{subject}" / (f"ses-{session}/anat" if session else "anat")
        raise ASLInputError(
            f"holds no T1-weighted image for sub-{subject}; the pipeline needs one for "
            "registration and tissue segmentation.",
            file=anat,
            field="T1w",
            fix=f"add {anat.relative_to(root)}/sub-{subject}_T1w.nii.gz (from dcm2niix).",
        )

    for message in warnings:
        LOGGER.warning("%s: %s", asl_file.name, message)
    for array in (pairs, plds, slice_timing, tau):
        if isinstance(array, np.ndarray):
            array.flags.writeable = False  # the run description is immutable
    return ASLRun(
        subject=subject,
        session=session,
        run=run,
        acq=acq,
        asl_file=asl_file,
        aslcontext_file=context_file,
        sidecar_file=sidecar,
        metadata=md,
        volume_types=types,
        n_volumes=n_volumes,
        shape=shape,
        voxel_size=voxel_size,
        control_label_pairs=pairs,
        m0_volumes=idx["m0scan"],
        deltam_volumes=idx["deltam"],
        cbf_volumes=idx["cbf"],
        norf_volumes=idx["noRF"],
        plds=plds,
        labeling_type=labeling_type,
        labeling_duration=tau,
        bolus_cutoff_flag=bolus_flag,
        bolus_cutoff_technique=technique,
        bolus_cutoff_delay_time=bolus_times,
        m0_type=m0_type,
        m0_file=m0_file,
        m0_metadata=m0_md,
        m0_estimate=m0_estimate,
        m0_pepolar_files=tuple(p for p, _ in pepolar),
        m0_pepolar_metadata=tuple(m for _, m in pepolar),
        background_suppression=bs,
        background_suppression_pulses=n_pulses,
        labeling_efficiency=efficiency,
        field_strength=field_strength,
        acquisition=acquisition,
        slice_timing=slice_timing,
        m0_repetition_time=m0_tr,
        total_acquired_pairs=total_pairs,
        t1w_file=t1w,
        warnings=tuple(warnings),
    )


def _field_source(layout, root: Path, asl_file: Path, own: Path, entities: dict):
    """``where(key)``: the sidecar a field comes from under BIDS inheritance.

    The most specific ``*asl.json`` holding ``key``, from the run's folder up to
    the dataset root; the run's own sidecar when no file holds it (that is where
    a missing field belongs).
    """
    keep = {"subject", "session", "run", "acquisition", "direction", "reconstruction"}
    chain = []
    folder = asl_file.parent
    while True:
        found = []
        for path in folder.glob("*asl.json"):
            ents = layout.parse_file_entities(str(path))
            ents = {k: str(v) for k, v in ents.items() if k in keep}
            if ents.items() <= {k: str(v) for k, v in entities.items()}.items():
                found.append((-len(ents), path))
        chain += [p for _, p in sorted(found)]
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    cache: dict[Path, dict] = {}

    def where(key: str) -> Path:
        for path in chain:
            if path not in cache:
                cache[path] = read_json_sidecar(path)
            if key in cache[path]:
                return path
        return own

    return where


def _repetition_time(md, file, volumes, warnings) -> float | None:
    """The M0's repetition time; None (with a warning) when unknown or 0.

    ``RepetitionTimePreparation`` wins over ``RepetitionTime``; a per-volume
    list is read at ``volumes`` (the included M0 volumes).
    """
    key = "RepetitionTimePreparation" if "RepetitionTimePreparation" in md else "RepetitionTime"
    value = md.get(key)
    if isinstance(value, list) and volumes is not None and len(value) > max(volumes):
        value = [value[i] for i in volumes]
    if isinstance(value, list):
        if not value or not all(_is_number(v) for v in value):
            raise ASLInputError(
                f"must be a number or a list of numbers, got {value!r}.",
                file=file,
                field=key,
                fix=f"write {key} in seconds as a plain JSON number.",
            )
        if len(set(value)) > 1:
            warnings.append(f"{key} differs between M0 volumes {sorted(set(value))}: unknown")
            return None
        value = value[0]
    if value is None:
        warnings.append(
            f"M0 repetition time unknown ({file.name} has no RepetitionTimePreparation): "
            "no correction for incomplete M0 recovery"
        )
        return None
    if not _is_number(value):
        raise ASLInputError(
            f"must be a number in seconds, got {value!r}.",
            file=file,
            field=key,
            fix=f"write {key} as a plain JSON number (no quotes, no units).",
        )
    if value <= 0:
        warnings.append(
            f"{key} is {value} in {file.name}: treated as unknown, no correction for "
            "incomplete M0 recovery"
        )
        return None
    return float(value)


def _as_set(value) -> set[str]:
    """A string or a list of strings as a set (other values: empty)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, str)}
    return set()


def _pepolar_m0(layout, root, subject, session, asl_file, asl_md) -> list[tuple[Path, dict]]:
    """M0 images in ``fmap/`` whose IntendedFor names this series or its M0, or
    whose ``B0FieldIdentifier`` the series names in its ``B0FieldSource``."""
    query = {
        "subject": subject,
        "suffix": "m0scan",
        "datatype": "fmap",
        "extension": [".nii", ".nii.gz"],
    }
    if session:
        query["session"] = session
    targets = _targets(asl_file, root, subject)
    m0 = _find_nifti(_sibling(asl_file, "m0scan"))
    if m0 is not None:
        targets |= _targets(m0, root, subject)
    sources = _as_set(asl_md.get("B0FieldSource"))
    found = []
    for path in _unique_files(f.path for f in layout.get(**query)):
        md = layout.get_metadata(path)
        named = sources & _as_set(md.get("B0FieldIdentifier"))
        if targets & set(_intended_for(md)) or named:
            found.append((Path(path), dict(md)))
    return found


def _find_t1w(layout, subject, session, warnings, filters=None) -> Path | None:
    query = {
        **(filters or {}),
        "subject": subject,
        "suffix": "T1w",
        "datatype": "anat",
        "extension": [".nii", ".nii.gz"],
    }
    files = []
    if session and "session" not in query:  # a filter's session wins
        files = layout.get(session=session, **query)
    if not files:
        files = layout.get(**query)
    files = _unique_files(f.path for f in files)
    if len(files) > 1:
        names = ", ".join(Path(f).name for f in files)
        warnings.append(f"several T1w images ({names}): the first is used")
    return Path(files[0]) if files else None


# --------------------------------------------------------------------------
# Human summary
# --------------------------------------------------------------------------


def _fmt_times(values) -> str:
    values = np.unique(np.round(np.asarray(values, dtype=float), 4))
    if values.size == 1:
        return f"{values[0]:g} s"
    if values.size <= 6:
        return ", ".join(f"{v:g}" for v in values) + " s"
    return f"{values.min():g}-{values.max():g} s ({values.size} values)"


def describe(run: ASLRun) -> str:
    """A few lines that tell a user what the pipeline understood of a run."""
    ident = f"sub-{run.subject}"
    for key, value in (("ses", run.session), ("acq", run.acq), ("run", run.run)):
        if value is not None:
            ident += f"_{key}-{value}"
    grid = "x".join(str(s) for s in run.shape[:3])
    vox = "x".join(f"{v:g}" for v in run.voxel_size)
    lines = [f"{ident}: {run.asl_file}"]
    lines.append(
        f"  {run.labeling_type}, {run.acquisition}, {run.field_strength:g} T, {grid} voxels "
        f"of {vox} mm, {run.n_volumes} volumes"
    )
    content = []
    if run.n_pairs:
        order = {True: "label first", False: "control first", None: "mixed order"}
        content.append(f"{run.n_pairs} control/label pairs ({order[run.label_first]})")
    for name, idx in (
        ("deltam", run.deltam_volumes),
        ("cbf", run.cbf_volumes),
        ("m0scan", run.m0_volumes),
        ("noRF", run.norf_volumes),
    ):
        if idx:
            content.append(f"{len(idx)} {name}")
    if run.total_acquired_pairs and not run.n_pairs:
        content.append(f"from {run.total_acquired_pairs} acquired pairs")
    lines.append("  volumes: " + ", ".join(content))
    perf = list(run.perfusion_volumes)
    pld_name = "TI" if run.labeling_type == "PASL" else "PLD"
    timing = f"  {pld_name}: {_fmt_times(run.plds[perf])}"
    if run.is_multi_pld:
        timing += " (multi-delay)"
    if run.labeling_duration is not None:
        tau = np.asarray(run.labeling_duration, dtype=float)
        timing += f"; labeling duration {_fmt_times(tau if tau.ndim == 0 else tau[perf])}"
    if run.bolus_cutoff_technique:
        times = ", ".join(f"{t:g}" for t in run.bolus_cutoff_delay_time)
        timing += f"; bolus cut-off {run.bolus_cutoff_technique} at {times} s"
    if run.slice_timing is not None:
        timing += f"; slice times 0-{run.slice_timing.max():g} s"
    lines.append(timing)
    m0 = f"  M0: {run.m0_type}"
    if run.m0_file is not None:
        m0 += f" ({run.m0_file.name})"
    elif run.m0_type == "Included":
        m0 += f" (volumes {', '.join(map(str, run.m0_volumes))})"
    elif run.m0_estimate is not None:
        m0 += f" (M0Estimate {run.m0_estimate:g})"
    tr = run.m0_repetition_time
    m0 += f", TR {tr:g} s" if tr is not None else ", TR unknown"
    if run.m0_pepolar_files:
        m0 += "; reverse-PE M0: " + ", ".join(p.name for p in run.m0_pepolar_files)
    lines.append(m0)
    bs = (
        (
            f"{run.background_suppression_pulses} pulses"
            if run.background_suppression_pulses is not None
            else "pulses unknown"
        )
        if run.background_suppression
        else "none"
    )
    given = "" if run.labeling_efficiency is None else f"given {run.labeling_efficiency:g}, "
    lines.append(
        f"  background suppression: {bs}; labeling efficiency {given}"
        f"effective {run.effective_labeling_efficiency:.3f}"
    )
    lines.append(f"  T1w: {run.t1w_file if run.t1w_file is not None else 'none'}")
    for message in run.warnings:
        lines.append(f"  WARNING: {message}")
    return "\n".join(lines)
