"""The ``asl-pipeline`` command (BIDS App).

``main`` parses the command line, builds the :class:`~asl_pipeline.config.Config`
and runs :func:`validate` before any work starts: the BIDS reader (sidecars
read with bounded size and depth, headers), the pre-flight check
(:mod:`asl_pipeline.preflight`: every image read fully), the denoising weights
(:func:`~asl_pipeline.models.io.verify_weights`) and the output folders. It
runs the BIDS validator (unless ``--skip-bids-validation``), prints what it
understood of each run, and then either stops (``--validate-only``), writes the
methods text (``--boilerplate-only``) or hands over to :func:`_run_workflow`,
which holds the locks of :mod:`asl_pipeline.cli.guard` and stops cleanly on
SIGTERM/SIGINT.

Exit status: 0 success, 1 bad input data (one line on stderr per problem,
naming the file, the field and the fix; all problems found in one pass; no run
is processed while any is invalid), a folder held by another run, or a failed
processing step (naming the node and its crash file), 2 usage error, 128 + the
signal number when stopped by SIGTERM/SIGINT.
Nothing is created when validation fails or with ``--validate-only``.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys

EXIT_OK = 0
EXIT_DATA_ERROR = 1
EXIT_USAGE = 2


def _run_group(output_dir) -> int:
    """The dataset level: read the participant outputs, write the group files."""
    from asl_pipeline.errors import ASLInputError
    from asl_pipeline.group import run_group_level

    try:
        out = run_group_level(output_dir)
    except ASLInputError as exc:
        print(f"asl-pipeline: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_DATA_ERROR
    print(f"Group QC table: {out.qc_table}\nGroup report: {out.report}")
    for path in out.regional:
        print(f"Regional CBF: {path}")
    return EXIT_OK


def _reports_only(config) -> int:
    """``--reports-only``: the reports of the subjects already under OUTPUT_DIR,
    from the stored derivatives; nothing is processed."""
    from asl_pipeline.cli.workflow import write_reports
    from asl_pipeline.subject_report import subjects_in

    present = subjects_in(config.output_dir)
    subjects = config.participant_label or present
    missing = [s for s in subjects if s not in present]
    if not subjects or missing:
        which = ", ".join(f"sub-{s}" for s in missing) or "any subject"
        print(
            f"asl-pipeline: error: --reports-only: {config.output_dir} holds no outputs of "
            f"{which}; run the participant level first.",
            file=sys.stderr,
        )
        return EXIT_DATA_ERROR
    reports = write_reports(config.output_dir, subjects, work_dir=config.work_dir)
    for path in reports:
        print(f"Report: {path}")
    return EXIT_OK if len(reports) == len(subjects) else EXIT_DATA_ERROR


def _check_bids(config) -> bool:
    """The BIDS validator's verdict (True without it or with --skip-bids-validation)."""
    from asl_pipeline.cli.bidsvalidator import check_input

    return config.skip_bids_validation or check_input(config.bids_dir, config.participant_label)


def _write_boilerplate(config, runs) -> int:
    from asl_pipeline.cli.workflow import write_boilerplate

    print(f"Methods text: {write_boilerplate(config, runs)}")
    return EXIT_OK


def _run_workflow(config, runs, *, command: str = "asl-pipeline") -> int:
    """Build and run the processing workflow for validated ``runs``.

    Under the locks of :mod:`asl_pipeline.cli.guard` (one run per subject and
    work folder) and with a clean stop on SIGTERM/SIGINT.
    """
    from asl_pipeline.cli.guard import Interrupted, folder_locks, graceful_shutdown
    from asl_pipeline.cli.workflow import run_workflow
    from asl_pipeline.errors import ASLInputError

    subjects = sorted({r.subject for r in runs})
    try:
        with (
            folder_locks(config.output_dir, config.work_dir, subjects, command=command),
            graceful_shutdown(),
        ):
            return run_workflow(config, runs, command=command)
    except ASLInputError as exc:
        print(f"asl-pipeline: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_DATA_ERROR
    except Interrupted as exc:
        print(
            f"asl-pipeline: stopped by {exc}; worker processes ended, locks released. "
            f"Run the same command again to resume from {config.work_dir}.",
            file=sys.stderr,
        )
        return exc.exit_status


@contextlib.contextmanager
def _quiet_reader(verbosity: int):
    """Hold back the reader's logged warnings: :func:`describe` prints them."""
    logger = logging.getLogger("asl_pipeline.bids")
    previous = logger.level
    if verbosity <= 0:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _read_runs(config) -> tuple[list, list]:
    """The BIDS reader's valid runs and its problems (dataset-wide ones included)."""
    from asl_pipeline.bids import validate_dataset
    from asl_pipeline.errors import ASLInputError

    try:
        with _quiet_reader(config.verbosity):
            return validate_dataset(
                config.bids_dir,
                config.participant_label,
                session=config.session_label,
                bids_filters=config.bids_filters,
            )
    except ASLInputError as exc:  # problems of the whole dataset
        return [], list(getattr(exc, "errors", [exc]))


def _weights_problems(config) -> list:
    """The DWAN weights that denoising will use, checked as the denoising step will."""
    from asl_pipeline.errors import ASLInputError
    from asl_pipeline.models.io import verify_weights

    problems = []
    for wanted, weights in ((config.denoise, config.dwan_weights),
                            (config.bold_to_cbf is not None, config.bold_to_cbf)):  # fmt: skip
        if not wanted:
            continue
        try:
            verify_weights(weights)
        except ASLInputError as exc:
            problems.append(exc)
    return problems


def validate(config) -> tuple[list, list]:
    """Every check before work starts, all problems in one pass: ``(runs, problems)``.

    The reader validates the sidecars and headers, the pre-flight check reads
    every image of the valid runs fully, and the denoising weights are
    verified. Nothing is written anywhere.
    """
    from asl_pipeline.cli.guard import folder_problems
    from asl_pipeline.cli.workcache import cache_problems
    from asl_pipeline.preflight import check_runs
    from asl_pipeline.templates import check_spaces

    runs, problems = _read_runs(config)
    problems += check_runs(runs, mem_gb=config.mem_gb)
    problems += _weights_problems(config)
    problems += check_spaces(config.output_spaces)
    if not config.validate_only:
        problems += folder_problems(output_dir=config.output_dir, work_dir=config.work_dir)
        problems += cache_problems(config.work_dir, clean=config.clean_workdir)
    return runs, problems


#: How the summary names a quantification constant given on the command line.
_CONSTANT_TEXT = {
    "t1b": "blood T1 {:g} s",
    "lam": "partition coefficient {:g} mL/g",
    "labeling_efficiency": "labeling efficiency {:g}",
}


def _report(runs, config) -> None:
    from asl_pipeline.cli.console import print_runs

    print_runs(runs, config.verbosity)
    suppressed = [r.asl_file.name for r in runs if r.background_suppression]
    if config.quantification == "asltbx" and suppressed:
        print(
            "asl-pipeline: warning: --quantification asltbx takes each pair's control image "
            "as M0, but background suppression lowers the control signal of "
            f"{', '.join(suppressed)}: CBF will be overestimated; prefer white-paper.",
            file=sys.stderr,
        )
    n_warn = sum(len(r.warnings) for r in runs)
    print(f"{len(runs)} ASL run(s) valid, {n_warn} warning(s).")
    if config.quant_overrides:
        said = ", ".join(
            _CONSTANT_TEXT[name].format(value) for name, value in config.quant_overrides.items()
        )
        print(f"Quantification constants for every run: {said}.")


def main(argv=None) -> int:
    """Entry point; ``argv`` defaults to ``sys.argv[1:]``. Returns the exit status."""
    from asl_pipeline.cli.console import configure_logging
    from asl_pipeline.cli.parser import parse_args
    from asl_pipeline.config import Config

    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    config = Config.from_args(args)
    configure_logging(config.verbosity)
    if config.analysis_level == "group":  # reads the participant outputs, re-runs nothing
        return _run_group(config.output_dir)
    if config.reports_only:  # reads the participant outputs, re-runs nothing
        return _reports_only(config)
    try:
        runs, problems = validate(config)
    except Exception as exc:  # an unexpected failure: one line unless -vv
        if config.verbosity > 1:
            raise
        print(
            f"asl-pipeline: error: {type(exc).__name__}: {_one_line(exc)} "
            "(run with -vv for the traceback)",
            file=sys.stderr,
        )
        return EXIT_DATA_ERROR
    if problems:  # every problem at once, one line each; nothing is processed
        for exc in problems:
            print(f"asl-pipeline: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_DATA_ERROR
    if not _check_bids(config):
        return EXIT_DATA_ERROR
    _report(runs, config)
    if config.validate_only:
        return EXIT_OK
    if config.boilerplate_only:
        return _write_boilerplate(config, runs)
    argv = sys.argv[1:] if argv is None else list(argv)
    return _run_workflow(config, runs, command=shlex.join(["asl-pipeline", *map(str, argv)]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
