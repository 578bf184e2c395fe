"""The run configuration of the ``asl-pipeline`` command.

One :class:`Config` is built from the parsed command line
(:meth:`Config.from_args`), handed to the top-level workflow, and written as
TOML next to the outputs (:meth:`Config.to_toml`) so that a run can be
reproduced (:meth:`Config.from_toml`). Only the CLI and the top-level workflow
read it; everything below takes plain keyword arguments.

Importing this module has no side effect (no file, no logging set-up, no
environment change).

Defaults chosen where the methods spec leaves a choice open:

Defaults chosen by the validation panel (``benchmarks/validate_chain.py``,
figures in ``benchmarks/RESULTS.md``):

* ``smoothing_fwhm`` = 0: quantitative maps are unsmoothed (3 mm, the source
  study's value, inflated WM CBF by a quarter); ``nuisance_regression`` =
  False (before cleaning it spreads each outlier pair's error over all pairs);
  ``denoise`` = False (the shipped DWAN lowers GM/WM contrast); motion
  correction removes the label/control bias through interpolated pair means
  (``zigzag_method``) and reslices each volume once (``reslice_mode``).
* ``outlier_threshold`` = None means the method's own default
  (:data:`OUTLIER_THRESHOLDS`): PAOCSL 2 (the study's batch), SCORE 2.5
  (robust SD), AOC 0.17 (correlation).
* ``output_spaces`` = ``["asl", "MNI152NLin2009aSym"]``: CBF in the native
  ASL space and in the MNI template space (nilearn's bundled MNI152); T1w is
  opt-in.
* ``drift_correction`` = "auto": single-PLD runs without background
  suppression get each control/label volume divided by a smooth trend of the
  brain-wide gain before subtraction (:mod:`asl_pipeline.drift`).
* ``quantification`` = "white-paper" (M0 from the M0 source of the run);
  "asltbx" uses each pair's control image as M0, voxel by voxel.
* ``verbosity`` = 0: one console line per stage; each ``-v`` adds one level
  (nipype's INFO, then DEBUG), each ``-q`` removes one (-1: errors only).
* ``bids_filter_file``: a JSON file of pybids entity filters, as fMRIPrep and
  ASLPrep read it (``{"asl": {"acquisition": "pcasl"}}``); only the path is
  stored, :attr:`Config.bids_filters` reads it (:func:`read_bids_filters`).
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

#: Default threshold of each outlier-cleaning method (see the methods spec, §5).
OUTLIER_THRESHOLDS = {"paocsl": 2.0, "score": 2.5, "aoc": 0.17, "none": None}
#: Choices shared with the parser.
PLUGINS = ("Linear", "MultiProc", "SLURM", "SLURMGraph")
ENGINES = ("nipype", "pydra")
REGISTRATION_BACKENDS = ("embedded", "spm")
OUTLIER_METHODS = tuple(OUTLIER_THRESHOLDS)
#: Spaces always available; any other TemplateFlow template name is accepted
#: when the local TemplateFlow folder holds it (:mod:`asl_pipeline.templates`).
OUTPUT_SPACES = ("asl", "T1w", "MNI152NLin2009aSym")
QUANTIFICATIONS = ("white-paper", "asltbx")
#: ``--multipld-t1``: asl_pipeline.multipld.T1_TISSUE_SOURCES, spelled here so
#: that reading the configuration imports no numerics (tests/test_cli.py checks
#: that the two agree).
MULTIPLD_T1_SOURCES = ("gm-curve", "fixed")
#: ``--multipld-att``: asl_pipeline.multipld.ATT_ESTIMATES (checked the same way).
MULTIPLD_ATT_ESTIMATES = ("auto", "voxel", "smoothed")
#: ``--drift-correction``: asl_pipeline.drift.CHOICES (checked the same way).
DRIFT_CORRECTIONS = ("auto", "none", "trend")
PVC_METHODS = ("none", "lr")
#: What ``--ignore`` may switch off (nipreps' spelling).
IGNORE_CHOICES = ("fieldmaps",)
#: Quantification constants a run may set instead of the defaults (and of the
#: sidecar's ``LabelingEfficiency``): the configuration field, the
#: :class:`asl_pipeline.cbf.QuantParams` field it sets, and the range it must
#: lie in with its unit. The ranges catch a value in the wrong unit (a blood T1
#: in ms, an efficiency in %) before any work.
QUANT_OVERRIDES = {
    "blood_t1": ("t1b", 0.5, 3.5, "s"),
    "partition_coefficient": ("lam", 0.5, 1.2, "mL/g"),
    "labeling_efficiency": ("labeling_efficiency", 0.1, 1.0, "(a fraction)"),
}

_PATH_FIELDS = (
    "bids_dir",
    "output_dir",
    "work_dir",
    "plugin_config",
    "dwan_weights",
    "bold_to_cbf",
    "bids_filter_file",
)
#: Queries of a BIDS filter file that the pipeline applies (fMRIPrep's names).
BIDS_FILTER_QUERIES = ("asl", "t1w")


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def read_bids_filters(path) -> dict:
    """Read a BIDS filter file: ``{query: {entity: value(s)}}``.

    ``query`` is one of :data:`BIDS_FILTER_QUERIES`; a value is a string, a
    number, a list of them, or null (the entity must be absent), as in
    fMRIPrep's ``--bids-filter-file``. Raises ValueError saying what is wrong.
    """
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError('must hold a JSON object such as {"asl": {"acquisition": "pcasl"}}')
    for query, entities in data.items():
        _check_filter(query, entities)
    return data


def _check_filter(query, entities) -> None:
    if query not in BIDS_FILTER_QUERIES:
        raise ValueError(
            f"query {query!r} is not used by asl-pipeline (use {', '.join(BIDS_FILTER_QUERIES)})"
        )
    if not isinstance(entities, dict):
        raise ValueError(f'{query!r} must map entities to values, e.g. {{"session": "01"}}')
    for entity, value in entities.items():
        values = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, str | int | float) for v in values):
            raise ValueError(
                f"{query}.{entity}: a value is a string, a number, a list of them or null"
            )


@dataclass
class Config:
    """Settings of one ``asl-pipeline`` run (see the module docstring)."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str = "participant"
    # filtering
    participant_label: list[str] | None = None
    session_label: list[str] | None = None
    bids_filter_file: Path | None = None
    skip_bids_validation: bool = False
    # performance
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    engine: str = "nipype"
    plugin: str = "MultiProc"
    plugin_config: Path | None = None
    plugin_args: dict = field(default_factory=dict)
    stop_on_first_crash: bool = False
    # workflow
    registration_backend: str = "embedded"
    spm_cmd: str | None = None
    outlier_method: str = "paocsl"
    outlier_threshold: float | None = None
    paocsl_spec_rules: bool = False
    denoise: bool = False
    dwan_weights: Path | None = None
    dwan_finetune: float = 0.0
    #: BOLD-to-ASL weights (``--bold-to-cbf``): with a BIDS BOLD run of the
    #: subject, also write ``desc-boldpredicted_cbf`` (off when None).
    bold_to_cbf: Path | None = None
    smoothing_fwhm: float = 0.0
    nuisance_regression: bool = False
    zigzag_method: str = "detect"
    reslice_mode: str = "volume"
    output_spaces: list[str] = field(default_factory=lambda: ["asl", "MNI152NLin2009aSym"])
    m0_scale: float = 1.0
    m0_recovery: str = "tissue"
    #: quantification constants given on the command line (None: the default,
    #: or for the efficiency the sidecar's); see :data:`QUANT_OVERRIDES`
    blood_t1: float | None = None
    partition_coefficient: float | None = None
    labeling_efficiency: float | None = None
    multipld_t1: str = "gm-curve"
    multipld_att: str = "auto"
    drift_correction: str = "auto"
    quantification: str = "white-paper"
    pvc: str = "none"
    ignore: list[str] = field(default_factory=list)
    # other
    work_dir: Path | None = None
    validate_only: bool = False
    boilerplate_only: bool = False
    reports_only: bool = False
    seed: int = 0
    clean_workdir: bool = False
    verbosity: int = 0

    def __post_init__(self):
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        if self.outlier_method not in OUTLIER_THRESHOLDS:
            raise ValueError(f"unknown outlier method {self.outlier_method!r}")
        if self.plugin not in PLUGINS:
            raise ValueError(f"unknown plugin {self.plugin!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}")
        for name, (_, low, high, unit) in QUANT_OVERRIDES.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ValueError(
                    f"{name} {value!r} is outside {low:g}-{high:g} {unit} (check its unit)"
                )
        if self.m0_recovery not in ("tissue", "single"):
            raise ValueError(f"unknown M0 recovery correction {self.m0_recovery!r}")
        if self.multipld_t1 not in MULTIPLD_T1_SOURCES:
            raise ValueError(f"unknown multi-PLD tissue T1 source {self.multipld_t1!r}")
        if self.multipld_att not in MULTIPLD_ATT_ESTIMATES:
            raise ValueError(f"unknown multi-PLD ATT estimate {self.multipld_att!r}")
        if self.drift_correction not in DRIFT_CORRECTIONS:
            raise ValueError(f"unknown gain drift correction {self.drift_correction!r}")
        if self.quantification not in QUANTIFICATIONS:
            raise ValueError(f"unknown quantification {self.quantification!r}")
        if self.pvc not in PVC_METHODS:
            raise ValueError(f"unknown partial-volume correction {self.pvc!r}")
        bad = [i for i in self.ignore if i not in IGNORE_CHOICES]
        if bad:
            raise ValueError(f"unknown --ignore value(s) {bad}")
        if self.registration_backend not in REGISTRATION_BACKENDS:
            raise ValueError(f"unknown registration backend {self.registration_backend!r}")
        if self.denoise and self.smoothing_fwhm:
            raise ValueError(
                "--denoise and --smoothing-fwhm cannot be combined: the network denoises the "
                "unsmoothed mean map it was trained on; drop one of them"
            )
        if not 0 <= self.dwan_finetune <= 3600:
            raise ValueError("--dwan-finetune must be 0-3600 seconds")
        from asl_pipeline.templates import split_space

        for space in self.output_spaces:
            if space not in OUTPUT_SPACES:
                try:
                    split_space(space)
                except ValueError as exc:
                    raise ValueError(f"unknown output space: {exc}") from None

    @property
    def effective_outlier_threshold(self) -> float | None:
        """The threshold given, or the method's default."""
        if self.outlier_threshold is not None:
            return self.outlier_threshold
        return OUTLIER_THRESHOLDS[self.outlier_method]

    @property
    def quant_overrides(self) -> dict:
        """The quantification constants given, by :class:`~asl_pipeline.cbf.QuantParams`
        field (``{"t1b": 1.5}``); empty when every constant is the default."""
        return {
            field_name: float(getattr(self, name))
            for name, (field_name, *_) in QUANT_OVERRIDES.items()
            if getattr(self, name) is not None
        }

    @property
    def sdc(self) -> bool:
        """Susceptibility distortion correction wherever a field map is found."""
        return "fieldmaps" not in self.ignore

    @property
    def bids_filters(self) -> dict:
        """The filters of ``bids_filter_file`` (``{}`` without one)."""
        if self.bids_filter_file is None:
            return {}
        return read_bids_filters(self.bids_filter_file)

    @property
    def plugin_settings(self) -> dict:
        """``{"plugin": ..., "plugin_args": ...}`` for ``Workflow.run(**...)``.

        ``nprocs`` and ``mem_gb`` fill ``n_procs``/``memory_gb`` for MultiProc
        unless the plugin configuration file sets them.
        """
        args = dict(self.plugin_args)
        if self.plugin == "MultiProc":
            args.setdefault("n_procs", self.nprocs)
            if self.mem_gb is not None:
                args.setdefault("memory_gb", self.mem_gb)
        return {"plugin": self.plugin, "plugin_args": args}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        """Build from :func:`asl_pipeline.cli.parser.parse_args` output."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in names}
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain TOML-able values: paths as strings, None left out (TOML has no
        null; :meth:`from_toml` restores the default None)."""
        return _plain(asdict(self))

    def to_toml(self, path) -> Path:
        """Write the configuration as TOML; returns the path written."""
        import tomli_w

        path = Path(path)
        with path.open("wb") as fobj:
            tomli_w.dump({"asl_pipeline": self.to_dict()}, fobj)
        return path

    @classmethod
    def from_toml(cls, path) -> Config:
        """Read a file written by :meth:`to_toml`."""
        with Path(path).open("rb") as fobj:
            data = tomllib.load(fobj)
        section = data.get("asl_pipeline", data)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - names)
        if unknown:
            raise ValueError(f"{path}: unknown configuration key(s) {unknown}")
        return cls(**section)
