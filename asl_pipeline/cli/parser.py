"""Command-line parser of the ``asl-pipeline`` BIDS App.

``asl-pipeline bids_dir output_dir participant [options]``, with the argument
groups BIDS-App users expect (filtering, performance, workflow, other).
:func:`parse_args` validates the arguments and calls ``parser.error`` (exit
status 2, one line on stderr) on a usage error: a nonexistent ``bids_dir``, an
output or work directory inside the input dataset (``derivatives/`` excepted),
a participant label holding a path separator or ``..``, an unreadable
``--plugin-config``. It reads files but never creates any.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path

from asl_pipeline.config import (
    DRIFT_CORRECTIONS,
    ENGINES,
    IGNORE_CHOICES,
    MULTIPLD_ATT_ESTIMATES,
    MULTIPLD_T1_SOURCES,
    OUTLIER_METHODS,
    OUTPUT_SPACES,
    PLUGINS,
    PVC_METHODS,
    QUANT_OVERRIDES,
    QUANTIFICATIONS,
    REGISTRATION_BACKENDS,
    read_bids_filters,
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _output_space(text: str) -> str:
    """An output space: asl, T1w or a template name (checked for presence later)."""
    from asl_pipeline.templates import split_space

    if text in OUTPUT_SPACES:
        return text
    try:
        split_space(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _float(minimum: float, strict: bool):
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'>' if strict else '>='} {minimum:g}"
            )
        return value

    return convert


def _constant(name: str, example: str):
    """A quantification constant of :data:`QUANT_OVERRIDES` ``name``, in its range."""
    _, low, high, unit = QUANT_OVERRIDES[name]

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(
                f"{text!r} is outside {low:g}-{high:g} {unit}: give it {example}"
            )
        return value

    return convert


_MEMORY_UNITS = {None: 1e-3, "k": 1e-6, "m": 1e-3, "g": 1.0, "t": 1e3}
_MEMORY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])b?)?\s*", re.IGNORECASE)


def memory_gb(text: str) -> float:
    """A memory size in GB: a bare number is MB (fMRIPrep's ``--mem``); units K,
    M, G, T with an optional B, decimal as in fMRIPrep (16000 = 16G = 16 GB)."""
    match = _MEMORY.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size: give MB (16000) or a unit (500M, 8G, 8GB, 2T)"
        )
    number, unit = match.groups()
    value = float(number) * _MEMORY_UNITS[unit and unit.lower()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file {text!r} does not exist")
    return path.resolve()


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where it says something (not None, not a flag's bool)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or isinstance(default, bool)
            or (default is argparse.SUPPRESS)
        ):
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (no validation across arguments: see parse_args)."""
    from asl_pipeline import __version__

    parser = _Parser(
        prog="asl-pipeline",
        description="ASL perfusion MRI pipeline: BIDS ASL in, CBF (mL/100 g/min) out.",
        formatter_class=_Formatter,
        allow_abbrev=False,  # `--mem 16000` must never be read as another option
    )
    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset")
    parser.add_argument(
        "output_dir",
        type=Path,
        help="where the derivatives go (outside bids_dir, or under its derivatives/)",
    )
    parser.add_argument(
        "analysis_level",
        choices=["participant", "group"],
        help="participant: process each subject; group: gather the participant outputs "
        "under output_dir into group_qc.tsv, group_report.html and regional CBF tables "
        "(nothing is re-run)",
    )
    parser.add_argument("--version", action="version", version=f"asl-pipeline {__version__}")

    g = parser.add_argument_group("filtering")
    g.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        metavar="LABEL",
        help="subjects to process, with or without 'sub-' (default: all)",
    )
    g.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        metavar="LABEL",
        help="sessions to process, with or without 'ses-' (default: all)",
    )
    g.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        dest="bids_filter_file",
        type=_existing_file,
        default=None,
        metavar="FILE",
        help='JSON file of pybids entity filters, as in fMRIPrep: {"asl": {"acquisition": '
        '"pcasl"}, "t1w": {"session": "01"}}; null means the entity must be absent',
    )
    g.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        dest="skip_bids_validation",
        action="store_true",
        help="do not run bids-validator-deno on the input (by default it runs when installed "
        "and its errors stop the command)",
    )

    g = parser.add_argument_group("performance")
    g.add_argument(
        "--nprocs",
        "--nthreads",
        "--n-cpus",
        "--n_cpus",
        dest="nprocs",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="processes in parallel (MultiProc; default: all CPUs)",
    )
    g.add_argument(
        "--omp-nthreads",
        "--omp_nthreads",
        dest="omp_nthreads",
        type=_positive_int,
        default=None,
        help="threads per process (default 1: byte-identical reruns; more threads speed up "
        "the ANTs registrations but their randomly sampled metrics then differ run to run)",
    )
    mem = g.add_mutually_exclusive_group()
    mem.add_argument(
        "--mem",
        "--mem-mb",
        "--mem_mb",
        dest="mem_gb",
        type=memory_gb,
        default=None,
        metavar="SIZE",
        help="memory limit of the run: a bare number is MB as in fMRIPrep (16000), or give "
        "a unit: 500M, 8G, 8GB, 2T",
    )
    mem.add_argument(
        "--mem-gb",
        "--mem_gb",
        dest="mem_gb",
        type=_float(0, True),
        default=None,
        metavar="GB",
        help="memory limit of the run, GB",
    )
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="nipype",
        help="workflow engine: nipype (default) or pydra (pydra==0.25; --plugin MultiProc "
        "runs Pydra's cf worker, SLURM its slurm worker, Linear its serial worker)",
    )
    g.add_argument(
        "--plugin",
        choices=PLUGINS,
        default=None,
        help="nipype execution plugin (default: the --plugin-config's, else MultiProc)",
    )
    g.add_argument(
        "--stop-on-first-crash",
        "--stop_on_first_crash",
        dest="stop_on_first_crash",
        action="store_true",
        help="stop at the first failed step (default: run every step that does not "
        "depend on it, then report all failures)",
    )
    g.add_argument(
        "--plugin-config",
        "--use-plugin",
        "--nipype-plugin-file",
        "--nipype_plugin_file",
        dest="plugin_config",
        type=_existing_file,
        default=None,
        metavar="FILE",
        help="YAML or JSON file with the plugin arguments, either a mapping of "
        "plugin_args or {plugin: ..., plugin_args: {...}}",
    )

    g = parser.add_argument_group("workflow")
    g.add_argument(
        "--registration-backend",
        choices=REGISTRATION_BACKENDS,
        default="embedded",
        help="motion correction/registration engine: embedded (Python) or spm (SPM12)",
    )
    g.add_argument(
        "--spm-cmd",
        default=None,
        help="command that runs SPM12 for the spm backend, e.g. "
        "'/opt/spm12/run_spm12.sh /opt/mcr/v97 script' (default: nipype's, i.e. "
        "'matlab' with SPM12 on its path)",
    )
    g.add_argument(
        "--outlier-method",
        choices=OUTLIER_METHODS,
        default="paocsl",
        help="outlier cleaning of the CBF series",
    )
    g.add_argument(
        "--outlier-threshold",
        type=_float(0, False),
        default=None,
        help="threshold of the outlier method (default: paocsl 2, score 2.5, aoc 0.17)",
    )
    g.add_argument(
        "--denoise",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="apply DWAN to the cleaned mean CBF and write desc-denoised maps next to the "
        "measured ones (default off: on the validation panel the shipped weights lower "
        "GM/WM contrast, see README 'Defaults and the evidence for them')",
    )
    g.add_argument(
        "--dwan-weights",
        type=_existing_file,
        default=None,
        metavar="FILE",
        help="DWAN weights (.pt) instead of the packaged ones",
    )
    g.add_argument(
        "--bold-to-cbf",
        type=_existing_file,
        default=None,
        metavar="WEIGHTS",
        help="BOLD-to-ASL prediction (methods spec 6.4): for runs whose subject has a BIDS "
        "BOLD run (func/*_bold.nii.gz, same session), motion-correct it, register its mean "
        "to the ASL reference and write desc-boldpredicted_cbf with these weights "
        "(benchmarks/bold2asl_runs.py); a prediction, never a measurement (default off)",
    )
    g.add_argument(
        "--dwan-finetune",
        type=_float(0, False),
        default=0.0,
        metavar="SECONDS",
        help="with --denoise: first fine-tune the weights on the run's own pairs (those the "
        "outlier cleaning kept, each slice levelled to their mean) for at most this long, "
        "keeping the weights that score best on held-out slices (subject-level learning "
        "from noise; default 0: off)",
    )
    g.add_argument(
        "--smoothing-fwhm",
        type=_float(0, False),
        default=0.0,
        help="Gaussian smoothing FWHM in mm of the series before quantification, as in the "
        "source study (3); default 0: quantitative maps are unsmoothed. The smoothed maps "
        "carry the FWHM in their desc and sidecar; outlier cleaning still decides on "
        "unsmoothed data",
    )
    g.add_argument(
        "--paocsl-spec-rules",
        action="store_true",
        help="run PAOCSL with the methods spec's literal stop and consolidation rules and "
        "its motion pre-rejection (default: the noise-aware stop rule, no motion screen)",
    )
    g.add_argument(
        "--nuisance-regression",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="regress motion, CSF and global signals out of the series before quantification "
        "(the source study's step; default off: it spreads each outlier pair's error over "
        "all pairs). Outlier cleaning always decides on the unregressed series",
    )
    g.add_argument(
        "--hmc-zigzag",
        dest="zigzag_method",
        choices=("detect", "interpolate", "regress", "none"),
        default="detect",
        help="how the label/control bias is removed from the motion estimates: detect "
        "(default: the control - label offset, measured on each pair after the trend, is "
        "subtracted only where it exceeds 4 robust standard errors and pairs that did not move "
        "beyond the trend share it, so motion within a pair is corrected), interpolate pair "
        "means (loses motion within a pair), regress the zig-zag (the source study, Wang "
        "2012) or none (raw estimates)",
    )
    g.add_argument(
        "--hmc-reslice",
        dest="reslice_mode",
        choices=("volume", "pair", "none"),
        default="volume",
        help="reslice each volume with its own parameters (default), both volumes of a pair "
        "with the pair's mean, or not at all (motion still estimated and reported)",
    )
    g.add_argument(
        "--output-spaces",
        nargs="+",
        type=_output_space,
        default=["asl", "MNI152NLin2009aSym"],
        metavar="SPACE",
        help="spaces of the CBF outputs: asl, T1w, MNI152NLin2009aSym (nilearn's bundled "
        "template) and any TemplateFlow template (e.g. MNI152NLin2009cAsym, optionally "
        ":res-2) found in the local TemplateFlow folder ($TEMPLATEFLOW_HOME); nothing is "
        "downloaded",
    )
    g.add_argument(
        "--m0-scale",
        "--m0_scale",
        dest="m0_scale",
        type=_float(0, True),
        default=1.0,
        help="factor applied to M0 (e.g. a vendor scaling between M0 and ASL images)",
    )
    g.add_argument(
        "--m0-recovery",
        choices=("tissue", "single"),
        default="tissue",
        help="M0 incomplete-recovery correction (M0 TR known): tissue (default: each voxel's "
        "T1 from its GM/WM/CSF fractions, at any TR) or single (one tissue T1 and no "
        "correction from 5 s on, as in the methods spec)",
    )
    g.add_argument(
        "--multipld-t1",
        choices=MULTIPLD_T1_SOURCES,
        default="gm-curve",
        help="multi-PLD fit's tissue T1 (the apparent T1 after arrival): gm-curve (default: "
        "fitted with CBF and ATT to the mean curve of the GM voxels, the fixed value where "
        "that fit fails) or fixed (1.4 s at 3 T)",
    )
    g.add_argument(
        "--multipld-att",
        choices=MULTIPLD_ATT_ESTIMATES,
        default="auto",
        help="multi-PLD ATT estimate: voxel (each voxel's own fit of CBF and ATT), smoothed "
        "(the ATT fitted to the curves smoothed inside the brain, FWHM 2 voxels, and each "
        "voxel's CBF at it) or auto (default: smoothed for every labeling; the voxel-wise "
        "fit reads WM CBF too high at WM's SNR)",
    )
    g.add_argument(
        "--drift-correction",
        choices=DRIFT_CORRECTIONS,
        default="auto",
        help="scanner gain drift: trend (divide each control and label volume by a smooth "
        "trend of the brain-wide gain fitted to the pair means, before subtraction), none, "
        "or auto (default: trend for single-PLD runs without background suppression, "
        "none otherwise)",
    )
    g.add_argument(
        "--quantification",
        choices=QUANTIFICATIONS,
        default="white-paper",
        help="white-paper: M0 from the run's M0; asltbx: each pair's control image as M0",
    )
    g.add_argument(
        "--pvc",
        choices=PVC_METHODS,
        default="none",
        help="partial-volume correction of the measured CBF: lr = linear regression "
        "(Asllani et al. 2008, 5x5x1-voxel kernel) writing desc-pvcGM/desc-pvcWM maps; "
        "none (default)",
    )
    g.add_argument(
        "--ignore",
        nargs="+",
        choices=IGNORE_CHOICES,
        default=[],
        help="ignore parts of the data, as fMRIPrep: fieldmaps = no susceptibility "
        "distortion correction even when fmap/ holds a reverse phase-encoded M0 (by default "
        "SDC runs whenever a PEPOLAR M0 pair is found)",
    )
    g.add_argument(
        "--no-sdc",
        dest="ignore",
        action="append_const",
        const="fieldmaps",
        help="same as --ignore fieldmaps",
    )

    g = parser.add_argument_group(
        "quantification constants",
        "replace the defaults (the ASL white paper's values) for every run; "
        "the CBF sidecars record the values used (QuantificationParameters) and which were "
        "given here (QuantificationOverrides)",
    )
    g.add_argument(
        "--blood-t1",
        metavar="SECONDS",
        type=_constant("blood_t1", "in seconds, e.g. 1.65"),
        help="T1 of arterial blood (default by field strength: 1.35 s at 1.5 T, 1.65 s at "
        "3 T, 2.087 s at 7 T); e.g. a value for the subjects' hematocrit",
    )
    g.add_argument(
        "--partition-coefficient",
        metavar="ML_PER_G",
        type=_constant("partition_coefficient", "in mL/g, e.g. 0.9"),
        help="blood-brain partition coefficient lambda (default 0.9 mL/g)",
    )
    g.add_argument(
        "--labeling-efficiency",
        metavar="ALPHA",
        type=_constant("labeling_efficiency", "as a fraction, e.g. 0.85"),
        help="labeling efficiency before background suppression, over the sidecar's "
        "LabelingEfficiency (default: pCASL 0.85, CASL 0.68, PASL 0.98); each "
        "background-suppression pulse still multiplies it by 0.95",
    )

    g = parser.add_argument_group("other")
    g.add_argument(
        "-w", "--work-dir", type=Path, default=None, help="working directory (default: ./work)"
    )
    g.add_argument(
        "--validate-only",
        action="store_true",
        help="check the input and print what was understood, then stop",
    )
    g.add_argument(
        "--boilerplate-only",
        "--boilerplate_only",
        dest="boilerplate_only",
        action="store_true",
        help="write the methods text of the run to OUTPUT_DIR/logs/CITATION.md, then stop",
    )
    g.add_argument(
        "--reports-only",
        "--reports_only",
        dest="reports_only",
        action="store_true",
        help="regenerate the HTML reports of OUTPUT_DIR from its stored derivatives (and "
        "the crash files of the work directory) without processing anything",
    )
    g.add_argument(
        "--seed",
        "--random-seed",
        dest="seed",
        type=_nonneg_int,
        default=0,
        help="random seed of the ANTs registrations (0 uses 1)",
    )
    resume = g.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        dest="clean_workdir",
        action="store_false",
        help="reuse results cached in the work directory (default)",
    )
    resume.add_argument(
        "--clean-workdir",
        dest="clean_workdir",
        action="store_true",
        help="remove the pipeline's cache (asl_pipeline_wf, pydra, pydra_nodes) from the "
        "work directory before running; needed when the cache was made by other code",
    )
    parser.set_defaults(clean_workdir=False)
    g.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="count",
        default=0,
        help="more output: -v adds nipype's INFO messages, -vv debugging messages",
    )
    g.add_argument(
        "-q",
        "--quiet",
        dest="quiet",
        action="count",
        default=0,
        help="less output: -q prints only warnings, errors and the closing lines",
    )
    return parser


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _load_plugin_config(path: Path) -> dict:
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("it must hold a mapping")
    return data


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and validate ``argv`` (default ``sys.argv[1:]``).

    Paths come back absolute; ``participant_label``/``session_label`` without
    their ``sub-``/``ses-`` prefixes; ``plugin_args`` holds the parsed plugin
    configuration; ``verbosity`` is the number of ``-v`` less the number of
    ``-q``. Usage errors exit with status 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_paths(parser, args)
    _clean_labels(parser, args)
    _check_bids_filters(parser, args)
    _set_plugin(parser, args)
    if args.engine == "pydra" and args.plugin == "SLURMGraph":
        parser.error("--plugin SLURMGraph is Nipype's; with --engine pydra use SLURM")
    _check_threads(parser, args)
    args.verbosity -= args.quiet
    del args.quiet
    return args


def _check_paths(parser, args) -> None:
    """Absolute paths; outputs outside the input (its derivatives/ excepted)."""
    bids_dir = args.bids_dir.expanduser().resolve()
    if not bids_dir.is_dir():
        parser.error(f"bids_dir {args.bids_dir} does not exist or is not a directory")
    args.bids_dir = bids_dir
    args.output_dir = args.output_dir.expanduser().resolve()
    args.work_dir = (args.work_dir or Path("work")).expanduser().resolve()
    derivatives = bids_dir / "derivatives"
    for name in ("output_dir", "work_dir"):
        path = getattr(args, name)
        if _inside(path, bids_dir) and not (path != derivatives and _inside(path, derivatives)):
            parser.error(
                f"{name} {path} is inside the input dataset {bids_dir}: the input must stay "
                f"untouched; use a folder outside it, or under {derivatives}/<name>"
            )
    if _inside(bids_dir, args.output_dir):
        parser.error(f"output_dir {args.output_dir} contains the input dataset {bids_dir}")


def _clean_labels(parser, args) -> None:
    """Labels without their ``sub-``/``ses-`` prefix, deduplicated, no paths."""
    for name, prefix in (("participant_label", "sub-"), ("session_label", "ses-")):
        labels = getattr(args, name)
        if labels is None:
            continue
        clean = []
        for label in labels:
            label = label.strip()
            label = label[len(prefix) :] if label.startswith(prefix) else label
            if not label or "/" in label or "\\" in label or ".." in label:
                parser.error(
                    f"--{name.replace('_', '-')} {label!r}: a label is alphanumeric, "
                    "without path separators or '..'"
                )
            clean.append(label)
        setattr(args, name, list(dict.fromkeys(clean)))


def _check_bids_filters(parser, args) -> None:
    if args.bids_filter_file is None:
        return
    try:
        read_bids_filters(args.bids_filter_file)
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        parser.error(f"--bids-filter-file {args.bids_filter_file}: {msg}")


def _set_plugin(parser, args) -> None:
    """``plugin``/``plugin_args`` from --plugin and --plugin-config (--plugin wins)."""
    args.plugin_args = {}
    if args.plugin_config is not None:
        try:
            data = _load_plugin_config(args.plugin_config)
        except Exception as exc:  # yaml and json errors
            msg = " ".join(str(exc).split())
            parser.error(f"--plugin-config {args.plugin_config} cannot be read: {msg}")
        if "plugin_args" in data or "plugin" in data:
            if args.plugin is None and data.get("plugin") is not None:
                if data["plugin"] not in PLUGINS:
                    parser.error(
                        f"--plugin-config {args.plugin_config}: unknown plugin "
                        f"{data['plugin']!r} (choose from {', '.join(PLUGINS)})"
                    )
                args.plugin = data["plugin"]
            data = data.get("plugin_args") or {}
            if not isinstance(data, dict):
                parser.error(f"--plugin-config {args.plugin_config}: plugin_args is no mapping")
        args.plugin_args = data
    if args.plugin is None:
        args.plugin = "MultiProc"


def _check_threads(parser, args) -> None:
    if args.omp_nthreads is None:
        args.omp_nthreads = 1
    elif args.omp_nthreads > args.nprocs:
        parser.error(
            f"--omp-nthreads {args.omp_nthreads} exceeds --nprocs {args.nprocs}: a process "
            "cannot use more threads than the run has CPUs"
        )
