"""The ``asl-pipeline`` command (BIDS App).

``main`` parses the command line, builds the :class:`~asl_pipeline.config.Config`,
reads and validates every selected ASL run before any work starts, runs the
BIDS validator (unless ``--skip-bids-validation``), prints what it understood
of each run, and then either stops (``--validate-only``), writes the methods
text (``--boilerplate-only``) or hands over to :func:`_run_workflow`.

Exit status: 0 success, 1 bad input data (one line on stderr per invalid run,
naming the file, the field and the fix; no run is processed while any is
invalid) or a failed processing step (naming the node and its crash file),
2 usage error.
Nothing is created when validation fails or with ``--validate-only``.
"""

from __future__ import annotations

import contextlib
import logging
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


def _check_bids(config) -> bool:
    """The BIDS validator's verdict (True without it or with --skip-bids-validation)."""
    from asl_pipeline.cli.bidsvalidator import check_input

    return config.skip_bids_validation or check_input(config.bids_dir, config.participant_label)


def _write_boilerplate(config, runs) -> int:
    from asl_pipeline.cli.workflow import write_boilerplate

    print(f"Methods text: {write_boilerplate(config, runs)}")
    return EXIT_OK


def _run_workflow(config, runs) -> int:
    """Build and run the processing workflow for validated ``runs``."""
    from asl_pipeline.cli.workflow import run_workflow

    return run_workflow(config, runs)


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


def main(argv=None) -> int:
    """Entry point; ``argv`` defaults to ``sys.argv[1:]``. Returns the exit status."""
    from asl_pipeline.bids import validate_dataset
    from asl_pipeline.cli.console import configure_logging, print_runs
    from asl_pipeline.cli.parser import parse_args
    from asl_pipeline.config import Config
    from asl_pipeline.errors import ASLInputError

    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    config = Config.from_args(args)
    configure_logging(config.verbosity)
    if config.analysis_level == "group":  # reads the participant outputs, re-runs nothing
        return _run_group(config.output_dir)
    try:
        with _quiet_reader(config.verbosity):
            runs, errors = validate_dataset(
                config.bids_dir,
                config.participant_label,
                session=config.session_label,
                bids_filters=config.bids_filters,
            )
    except ASLInputError as exc:  # a problem of the whole dataset
        runs, errors = [], [exc]
    except Exception as exc:  # an unexpected failure: one line unless -vv
        if config.verbosity > 1:
            raise
        print(
            f"asl-pipeline: error: {type(exc).__name__}: {_one_line(exc)} "
            "(run with -vv for the traceback)",
            file=sys.stderr,
        )
        return EXIT_DATA_ERROR
    if errors:  # every invalid run at once, one line each; nothing is processed
        for exc in errors:
            print(f"asl-pipeline: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_DATA_ERROR
    if not _check_bids(config):
        return EXIT_DATA_ERROR

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
    if config.validate_only:
        return EXIT_OK
    if config.boilerplate_only:
        return _write_boilerplate(config, runs)
    return _run_workflow(config, runs)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
