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
  that differs is only a warning (the M0 is read on the series' grid through
  the two affines, then registered to the series).
* An ``m0scan`` in ``fmap/`` whose ``IntendedFor`` names the ASL series or its
  M0, or whose ``B0FieldIdentifier`` is named by the ASL run's
  ``B0FieldSource``, is a reverse phase-encoding reference
  (:attr:`ASLRun.m0_pepolar_files`, sidecars in
  :attr:`ASLRun.m0_pepolar_metadata`); it becomes the M0 itself only when
  ``perf/`` holds none.
* A ``phasediff``, ``fieldmap`` (or ``phase1``/``phase2``) image in ``fmap/``
  matched the same way is a field map of the run
  (:attr:`ASLRun.fieldmap_files`; checked by :mod:`asl_pipeline.fieldmap`).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asl_pipeline.errors import ASLInputError, ASLInputErrors
from asl_pipeline.rundesc import (  # noqa: F401 (the constants, re-exported)
    BOLUS_CUTOFF_TECHNIQUES,
    DEFAULT_FIELD_STRENGTH,
    LABELING_TYPES,
    M0_TYPES,
    MAX_TIME_S,
    VOLUME_TYPES,
    RunDescription,
    parse_efficiency,
    parse_labeling,
    parse_m0,
    parse_m0_type,
    parse_readout,
    parse_series,
    read_aslcontext,
)

LOGGER = logging.getLogger("asl_pipeline.bids")

#: Largest JSON sidecar read (bytes); real sidecars are a few kB.
MAX_SIDECAR_BYTES = 1 << 20
#: Deepest JSON nesting accepted; real sidecars nest two or three levels.
MAX_SIDECAR_DEPTH = 32

_NIFTI_EXT = (".nii.gz", ".nii")
_SKIP_DIRS = ("derivatives", "sourcedata", "code", "stimuli", "models")


@dataclass(frozen=True, eq=False)
class ASLRun:
    """One validated BIDS ASL run: its files and its :class:`RunDescription`.

    Indices are 0-based volume indices of the ASL series; times are seconds.
    What the nodes need lives in :attr:`description` (passed to them as
    :meth:`RunDescription.to_dict`); the other attributes of the description
    are offered here as read-only properties (arrays for the per-volume values).
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
    #: Merged sidecar (BIDS inheritance applied by pybids), as read.
    metadata: dict
    #: Image shape (4D, or 3D for a single-volume series).
    shape: tuple[int, ...]
    #: Voxel size in mm (first three zooms).
    voxel_size: tuple[float, float, float]
    #: The normalised description of the run (series, labeling, efficiency,
    #: readout, M0), the only thing the nodes are told about the sidecar.
    description: RunDescription
    #: Separate M0 image (Separate only).
    m0_file: Path | None
    #: Merged sidecar of the separate M0 ({} otherwise).
    m0_metadata: dict
    #: Reverse phase-encoding M0 images found in ``fmap/`` for this run.
    m0_pepolar_files: tuple[Path, ...]
    #: The anatomical reference, or None when not required and absent.
    t1w_file: Path | None
    #: Recoverable oddities found while reading.
    warnings: tuple[str, ...] = field(default_factory=tuple)
    #: Merged sidecars of :attr:`m0_pepolar_files`, in the same order.
    m0_pepolar_metadata: tuple[dict, ...] = field(default_factory=tuple)
    #: Phase-difference, direct (and phase1/phase2) field maps in ``fmap/``
    #: matched to this run like :attr:`m0_pepolar_files`, with their merged
    #: sidecars (:func:`asl_pipeline.fieldmap.fieldmap_files` reads them).
    fieldmap_files: tuple[tuple[Path, dict], ...] = field(default_factory=tuple)
    #: The subject's BIDS BOLD runs (``func/*_bold.nii[.gz]``) of the same
    #: session, sorted; empty when there are none (nothing else changes).
    bold_files: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def bold_file(self) -> Path | None:
        """The first of :attr:`bold_files` (the one BOLD-to-ASL reads), or None."""
        return self.bold_files[0] if self.bold_files else None

    # ---- series ---------------------------------------------------------------
    @property
    def volume_types(self) -> tuple[str, ...]:
        """Volume type of each volume, in series order."""
        return self.description.volume_types

    @property
    def n_volumes(self) -> int:
        """Number of volumes (rows of aslcontext, 4th image dimension)."""
        return self.description.series.n_volumes

    @property
    def control_label_pairs(self) -> np.ndarray:
        """``(n_pairs, 2)`` read-only ``(control_index, label_index)``, in aslcontext
        order; empty ``(0, 2)`` for deltam-/cbf-only series."""
        return self.description.pairs

    @property
    def m0_volumes(self) -> tuple[int, ...]:
        """Indices of ``m0scan`` volumes inside the series."""
        return self.description.series.indices("m0scan")

    @property
    def deltam_volumes(self) -> tuple[int, ...]:
        return self.description.series.indices("deltam")

    @property
    def cbf_volumes(self) -> tuple[int, ...]:
        return self.description.series.indices("cbf")

    @property
    def norf_volumes(self) -> tuple[int, ...]:
        return self.description.series.indices("noRF")

    @property
    def total_acquired_pairs(self) -> int | None:
        return self.description.series.total_acquired_pairs

    # ---- labeling -------------------------------------------------------------
    @property
    def plds(self) -> np.ndarray:
        """Post-labeling delay of each volume (for PASL the inversion time TI)."""
        return self.description.plds

    @property
    def labeling_type(self) -> str:
        return self.description.labeling.labeling_type

    @property
    def labeling_duration(self) -> float | np.ndarray | None:
        """``LabelingDuration`` (tau): a float, the per-volume array as given, or None."""
        lab = self.description.labeling
        if lab.labeling_duration_per_volume is not None:
            return _readonly(np.asarray(lab.labeling_duration_per_volume, dtype=float))
        return lab.labeling_duration

    @property
    def bolus_cutoff_flag(self) -> bool | None:
        return self.description.labeling.bolus_cutoff_flag

    @property
    def bolus_cutoff_technique(self) -> str | None:
        return self.description.labeling.bolus_cutoff_technique

    @property
    def bolus_cutoff_delay_time(self) -> tuple[float, ...] | None:
        return self.description.labeling.bolus_cutoff_delay_time

    # ---- efficiency, readout, M0 ---------------------------------------------------
    @property
    def background_suppression(self) -> bool:
        return self.description.efficiency.background_suppression

    @property
    def background_suppression_pulses(self) -> int | None:
        return self.description.efficiency.background_suppression_pulses

    @property
    def labeling_efficiency(self) -> float | None:
        return self.description.efficiency.labeling_efficiency

    @property
    def field_strength(self) -> float:
        return self.description.efficiency.field_strength

    @property
    def acquisition(self) -> str:
        return self.description.readout.acquisition

    @property
    def slice_timing(self) -> np.ndarray | None:
        times = self.description.readout.slice_timing
        return None if times is None else _readonly(np.asarray(times, dtype=float))

    @property
    def m0_type(self) -> str:
        return self.description.m0.m0_type

    @property
    def m0_estimate(self) -> float | None:
        return self.description.m0.m0_estimate

    @property
    def m0_repetition_time(self) -> float | None:
        """Repetition time of the M0 (s), None when unknown (never 0)."""
        return self.description.m0.m0_repetition_time

    # ---- derived --------------------------------------------------------------
    @property
    def n_pairs(self) -> int:
        """Number of control/label pairs."""
        return len(self.description.series.pairs)

    @property
    def pair_plds(self) -> np.ndarray:
        """Post-labeling delay of each control/label pair."""
        return self.plds[self.control_label_pairs[:, 1]] if self.n_pairs else np.zeros(0)

    @property
    def perfusion_volumes(self) -> tuple[int, ...]:
        """Indices of all volumes carrying perfusion (control, label, deltam, cbf)."""
        return self.description.series.perfusion_volumes

    @property
    def unique_plds(self) -> np.ndarray:
        """Distinct post-labeling delays of the perfusion volumes."""
        idx = list(self.perfusion_volumes)
        return np.unique(np.round(self.plds[idx], 6)) if idx else np.zeros(0)

    @property
    def is_multi_pld(self) -> bool:
        """True when the perfusion volumes use more than one delay."""
        return self.description.is_multi_pld

    @property
    def bolus_duration(self) -> float | None:
        """TI1 for PASL with bolus cut-off (first ``BolusCutOffDelayTime``)."""
        return self.description.labeling.bolus_duration

    @property
    def effective_labeling_efficiency(self) -> float:
        """Alpha with the background-suppression loss applied (see kinetics)."""
        return self.description.alpha

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


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


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
    """One run, section by section: series, labeling, efficiency, readout, M0, T1w."""
    warnings: list[str] = []
    entities = layout.parse_file_entities(str(asl_file))
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
    context_file = _sibling(asl_file, "aslcontext.tsv")
    types, img = _read_series_files(asl_file, context_file, warnings)
    shape = tuple(int(s) for s in img.shape)
    series = parse_series(types, md, where, warnings, source=context_file)
    labeling = parse_labeling(md, series, where, warnings)
    efficiency = parse_efficiency(md, where, warnings)
    readout = parse_readout(md, shape[2], where, warnings)
    m0 = _find_m0(layout, root, entities, asl_file, img, md, where, warnings)
    m0_source = parse_m0(
        md,
        series,
        where,
        warnings,
        background_suppression=efficiency.background_suppression,
        m0_metadata=m0.metadata if m0.file is not None else None,
        m0_sidecar=m0.sidecar,
        m0_file=m0.file,
    )
    description = RunDescription(
        series, labeling, efficiency, readout, m0_source, str(sidecar), str(context_file)
    )
    t1w = _read_t1w(layout, root, entities, warnings, t1w_filters, require=require_t1w)
    for message in warnings:
        LOGGER.warning("%s: %s", asl_file.name, message)
    run = entities.get("run")
    return ASLRun(
        subject=entities["subject"],
        session=entities.get("session"),
        run=None if run is None else str(run),
        acq=entities.get("acquisition"),
        asl_file=asl_file,
        aslcontext_file=context_file,
        sidecar_file=sidecar,
        metadata=md,
        shape=shape,
        voxel_size=tuple(float(z) for z in img.header.get_zooms()[:3]),
        description=description,
        m0_file=m0.file,
        m0_metadata=m0.metadata,
        m0_pepolar_files=tuple(p for p, _ in m0.pepolar),
        m0_pepolar_metadata=tuple(m for _, m in m0.pepolar),
        t1w_file=t1w,
        warnings=tuple(warnings),
        bold_files=_find_bold(layout, entities["subject"], entities.get("session"), warnings),
        fieldmap_files=tuple(
            item
            for suffix in FIELDMAP_SUFFIXES
            for item in _matched_fmaps(
                layout, root, entities["subject"], entities.get("session"), asl_file, md, suffix
            )
        ),
    )


def _read_series_files(asl_file: Path, context_file: Path, warnings: list[str]):
    """The volume types and the image of the series, checked against each other."""
    types = read_aslcontext(context_file, warnings)
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
    if min(shape[:3]) < 2:
        raise ASLInputError(
            f"has the voxel grid {shape[:3]}: fewer than 2 voxels along an axis (a single "
            "slice). Motion correction and the registration to the T1w need a volume.",
            file=asl_file,
            field="image dimensions",
            fix="single-slice ASL is not supported; give a multi-slice series, or check "
            "that the image's axes are x, y, z then volumes.",
        )
    n_volumes = shape[3] if len(shape) == 4 else 1
    if n_volumes != n_rows:
        raise ASLInputError(
            f"lists {n_rows} volumes but {asl_file.name} has {n_volumes}.",
            file=context_file,
            field="volume_type",
            fix="write exactly one aslcontext row per volume of the series, in order.",
        )
    return types, img


@dataclass(frozen=True)
class _M0Files:
    """The separate M0 image of a run (with its sidecar) and reverse-PE M0s."""

    file: Path | None
    sidecar: Path | None
    metadata: dict
    pepolar: tuple[tuple[Path, dict], ...]


def _find_m0(layout, root, entities, asl_file, img, md, where, warnings) -> _M0Files:
    """The files of the M0 (M0Type Separate), checked against the series' grid."""
    pepolar = _pepolar_m0(layout, root, entities["subject"], entities.get("session"), asl_file, md)
    if parse_m0_type(md, where) != "Separate":
        return _M0Files(None, None, {}, tuple(pepolar))
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
    shape = tuple(int(s) for s in img.shape)
    if len(m0_img.shape) not in (3, 4) or tuple(m0_img.shape[:3]) != shape[:3]:
        raise ASLInputError(
            f"has shape {tuple(m0_img.shape)} but the ASL series has the voxel grid {shape[:3]}.",
            file=m0_file,
            field="image dimensions",
            fix="acquire or reconstruct the M0 on the ASL grid (same matrix and slices), "
            "or resample it onto the ASL grid before running the pipeline.",
        )
    if not np.allclose(m0_img.affine, img.affine, atol=1e-3):
        warnings.append(
            f"{m0_file.name} and {asl_file.name} have different affines; the M0 is read on "
            "the ASL grid through the two affines, then registered to the series"
        )
    return _M0Files(
        m0_file,
        m0_file.with_name(_strip_ext(m0_file) + ".json"),
        dict(layout.get_metadata(str(m0_file))),
        tuple(pepolar),
    )


def _read_t1w(layout, root, entities, warnings, filters, *, require: bool) -> Path | None:
    """The subject's T1w image (one 3D volume), or None when not required."""
    subject, session = entities["subject"], entities.get("session")
    t1w = _find_t1w(layout, subject, session, warnings, filters)
    if t1w is not None:
        t1w_img = _load_image(t1w, "T1w")
        if len(t1w_img.shape) != 3 and not (len(t1w_img.shape) == 4 and t1w_img.shape[3] == 1):
            raise ASLInputError(
                f"has shape {tuple(t1w_img.shape)}; a T1w image is one 3D volume.",
                file=t1w,
                field="image dimensions",
                fix="keep a single 3D T1w volume (e.g. the first run, or an average).",
            )
    if t1w is None and require:
        anat = root / f"sub-{subject}" / (f"ses-{session}/anat" if session else "anat")
        raise ASLInputError(
            f"holds no T1-weighted image for sub-{subject}; the pipeline needs one for "
            "registration and tissue segmentation.",
            file=anat,
            field="T1w",
            fix=f"add {anat.relative_to(root)}/sub-{subject}_T1w.nii.gz (from dcm2niix).",
        )
    return t1w


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
    return _matched_fmaps(layout, root, subject, session, asl_file, asl_md, "m0scan")


#: ``fmap/`` suffixes of the field maps that are not PEPOLAR M0s (``phase1``/
#: ``phase2`` are found so that they can be refused by name).
FIELDMAP_SUFFIXES = ("phasediff", "fieldmap", "phase1", "phase2")


def _matched_fmaps(layout, root, subject, session, asl_file, asl_md, suffix):
    """Images with ``suffix`` in ``fmap/`` matched to the series as PEPOLAR M0s are:
    ``IntendedFor`` names the series or its M0, or ``B0FieldIdentifier`` is named
    by the series' ``B0FieldSource``."""
    query = {
        "subject": subject,
        "suffix": suffix,
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


def _find_bold(layout, subject, session, warnings) -> tuple[Path, ...]:
    """The subject's BOLD runs in ``func/`` of the ASL run's session (sorted)."""
    query = {"subject": subject, "suffix": "bold", "datatype": "func",
             "extension": [".nii", ".nii.gz"]}  # fmt: skip
    if session:
        query["session"] = session
    files = _unique_files(f.path for f in layout.get(**query))
    if len(files) > 1:
        names = ", ".join(Path(f).name for f in files)
        warnings.append(f"several BOLD runs ({names}): BOLD-to-ASL uses the first")
    return tuple(Path(f) for f in files)


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
    if run.fieldmap_files:
        m0 += "; field map: " + ", ".join(p.name for p, _ in run.fieldmap_files)
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
