"""What ``asl-pipeline`` prints while it runs.

Quiet by default: one line per stage of each subject when the stage is done
(steps done, their processing time, overall count, time elapsed and an
estimate of the time left), a ``still running:`` line after a minute without
news (the T1w registration alone takes minutes), warnings and errors as
``asl-pipeline: warning: ...`` lines on stderr. ``-v`` adds nipype's INFO
messages (which node runs where), ``-vv`` debugging messages; ``-q`` leaves
only warnings, errors and the closing lines.

:class:`Progress` is driven by nipype's status callback
(``plugin_args["status_callback"]``), which the Linear, MultiProc and SLURM
plugins call with ``(node, "start" | "end" | "exception")`` for each node of
the execution graph. No nipype import here: the module is usable without it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

#: Plain names of the workflows a stage is named after (others: the workflow
#: name without ``_wf``).
STAGE_NAMES = {
    "anat_wf": "anatomical (T1w)",
    "asl_hmc_wf": "motion correction",
    "asl_reg_wf": "registration to T1w",
    "nuisance_wf": "nuisance regression",
    "cbf_wf": "CBF",
    "asl_derivatives_wf": "derivatives",
}
#: Stage of the nodes that sit directly in a run's workflow.
RUN_STEPS = "QC and report"
_SUBJECT_WF = re.compile(r"sub_(.+)_wf")
_RESAMPLE_WF = re.compile(r"resample_.*_wf")

# --------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------

_VERBOSE_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


class _Stderr(logging.StreamHandler):
    """A handler writing to the current ``sys.stderr`` (not the one at set-up)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it
        pass


#: nipype messages that say nothing to a user beyond the error that follows them.
_NIPYPE_JARGON = ("Storing result file without outputs",)


def _not_jargon(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_NIPYPE_JARGON)


class _Plain(logging.Formatter):
    """``asl-pipeline: warning: <first line of the message>``."""

    def format(self, record):
        lines = record.getMessage().strip().splitlines() or [""]
        return f"asl-pipeline: {record.levelname.lower()}: {lines[0].strip()}"


def log_level(verbosity: int) -> int:
    """Level of the workflow and package loggers for a verbosity (-q -1 ... -vv 2)."""
    if verbosity < 0:
        return logging.ERROR
    return (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)]


def nipype_logging(verbosity: int) -> dict:
    """The ``logging`` section of nipype's configuration for a verbosity."""
    workflow = logging.getLevelName(log_level(verbosity))
    interface = "DEBUG" if verbosity >= 2 else ("ERROR" if verbosity < 0 else "WARNING")
    return {"workflow_level": workflow, "utils_level": workflow, "interface_level": interface}


def configure_logging(verbosity: int) -> None:
    """Send nipype's and asl_pipeline's messages to stderr at the level of ``verbosity``.

    Plain one-line messages without ``-v``, timestamped records with it. The
    handler replaces nipype's own (which prints to stdout), so nipype adds none
    when it is imported later; calling this again replaces the handler. The
    loggers still propagate, to a root logger the command leaves without
    handlers.
    """
    handler = _Stderr()
    handler.setFormatter(_Plain() if verbosity <= 0 else logging.Formatter(_VERBOSE_FORMAT))
    if verbosity <= 0:
        handler.addFilter(_not_jargon)
    handler.asl_console = True
    for name in ("nipype", "asl_pipeline"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if name == "nipype" or getattr(old, "asl_console", False):
                logger.removeHandler(old)
        logger.addHandler(handler)
    logging.getLogger("asl_pipeline").setLevel(log_level(verbosity))
    levels = nipype_logging(verbosity)
    for name in ("workflow", "utils", "interface"):
        logging.getLogger(f"nipype.{name}").setLevel(levels[f"{name}_level"])


def print_runs(runs, verbosity: int) -> None:
    """What the reader understood of each run (stdout); with ``-q`` only its
    warnings, as ``asl-pipeline: warning:`` lines on stderr."""
    from asl_pipeline.bids import describe

    for run in runs:
        if verbosity >= 0:
            print(describe(run))
            continue
        for warning in run.warnings:
            print(f"asl-pipeline: warning: {run.asl_file.name}: {warning}", file=sys.stderr)


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass(frozen=True, order=True)
class Stage:
    """Where a node belongs: subject (or None), run workflow (or None), stage name."""

    subject: str | None
    run: str | None
    name: str


def _stage_name(workflow: str) -> str:
    if workflow in STAGE_NAMES:
        return STAGE_NAMES[workflow]
    if _RESAMPLE_WF.fullmatch(workflow):
        return "resampling"
    return workflow.removesuffix("_wf").replace("_", " ")


def stage_of(hierarchy: str) -> Stage:
    """The stage of a node from its workflow path (``node._hierarchy``).

    ``asl_pipeline_wf.sub_01_wf.anat_wf`` is stage "anatomical (T1w)" of
    sub-01; ``...sub_01_wf.asl_sub_01_asl.cbf_wf`` stage "CBF" of run
    ``sub_01_asl``; a node directly in a run's workflow belongs to
    :data:`RUN_STEPS`.
    """
    parts = hierarchy.split(".") if hierarchy else []
    index = next((i for i, p in enumerate(parts) if _SUBJECT_WF.fullmatch(p)), None)
    if index is None:
        return Stage(None, None, _stage_name(parts[-1]) if parts else "workflow")
    subject = _SUBJECT_WF.fullmatch(parts[index]).group(1)
    below = parts[index + 1 :]
    run = None
    if below and below[0].startswith("asl_") and not below[0].endswith("_wf"):
        run, below = below[0].removeprefix("asl_"), below[1:]
        if not below:
            return Stage(subject, run, RUN_STEPS)
    return Stage(subject, run, _stage_name(below[0]) if below else "subject")


class Progress:
    """Console progress of a workflow run, as nipype's ``status_callback``.

    Parameters
    ----------
    nodes
        ``(itername, hierarchy)`` of every node of the execution graph (the
        nodes that run; see :func:`asl_pipeline.cli.workflow.execution_nodes`).
    out, err
        Streams of the stage lines and of the failure lines (default: the
        current ``sys.stdout``/``sys.stderr``).
    clock
        Seconds, monotonic (a fake one in tests).
    """

    def __init__(self, nodes, *, out=None, err=None, clock=time.monotonic):
        self._stage = {name: stage_of(hierarchy) for name, hierarchy in nodes}
        self._total = Counter(self._stage.values())
        self._done: Counter = Counter()
        self._seen: set[str] = set()
        self._running: dict[str, float] = {}  # step -> when it started
        self._failures = 0
        self._busy: Counter = Counter()  # stage -> summed time of its steps
        self._out, self._err, self._clock = out, err, clock
        self._started = self._last_line = clock()
        self._lock = threading.Lock()
        runs = {(s.subject, s.run) for s in self._total if s.run is not None}
        per_subject = Counter(subject for subject, _ in runs)
        self._multi_run = {subject for subject, n in per_subject.items() if n > 1}

    @property
    def total(self) -> int:
        """Number of nodes that will run (or be found in the cache)."""
        return len(self._stage)

    @property
    def done(self) -> int:
        return len(self._seen)

    def __call__(self, node, status: str) -> None:
        name = getattr(node, "itername", None) or getattr(node, "fullname", str(node))
        stage = self._stage.get(name)
        if stage is None or name in self._seen:  # map-node subnodes, repeats
            return
        if status == "start":
            self._running[name] = self._clock()
        elif status == "exception":
            self._failures += 1
            self._failed(stage, name)
        elif status == "end" and (name in self._running or not self._failures):
            # Linear reports the steps it skips after a failure as "end" without
            # "start"; MultiProc reports a cached step that way too (counted
            # while nothing has failed).
            self._seen.add(name)
            self._done[stage] += 1
            self._busy[stage] += self._clock() - self._running.get(name, self._clock())
            if self._done[stage] == self._total[stage]:
                self._print(self.stage_line(stage), self._stdout())

    def label(self, stage: Stage) -> str:
        """``sub-01 CBF``, or ``sub-01 sub_01_run_2_asl CBF`` for a subject of several runs."""
        words = [f"sub-{stage.subject}"] if stage.subject is not None else []
        if stage.run is not None and stage.subject in self._multi_run:
            words.append(stage.run)
        return " ".join([*words, stage.name])

    def stage_line(self, stage: Stage) -> str:
        now = self._clock()
        elapsed = now - self._started
        left = self.total - self.done
        # steps found in the cache, or run in the main process by MultiProc,
        # report no start: no processing time is known for them
        busy = self._busy[stage]
        line = (
            f"{self.label(stage)}: {self._done[stage]}/{self._total[stage]} steps done"
            + (f", {format_duration(busy)} of processing" if busy >= 0.5 else "")
            + f"; {self.done}/{self.total} overall, {format_duration(elapsed)} elapsed"
        )
        if left and self.done:
            line += f", about {format_duration(elapsed / self.done * left)} left"
        return line

    def _failed(self, stage: Stage, name: str) -> None:
        step = name.split(".")[-1]
        self._print(
            f"asl-pipeline: error: {self.label(stage)}: step {step} failed; the steps that "
            "need its result are skipped (details at the end)",
            self._stderr(),
        )

    def _stdout(self):
        return sys.stdout if self._out is None else self._out

    def _stderr(self):
        return sys.stderr if self._err is None else self._err

    def _print(self, line: str, stream) -> None:
        with self._lock:  # the heartbeat thread prints too
            self._last_line = self._clock()
            stream.write(line + "\n")
            stream.flush()

    def running_line(self) -> str | None:
        """``still running: sub-01 anatomical (T1w): t1w_preproc (3 min 05 s); ...``:
        the steps started and not finished, the longest-running first."""
        now = self._clock()
        running = sorted(
            (start, name) for name, start in list(self._running.items()) if name not in self._seen
        )
        if not running:
            return None
        steps = [
            f"{self.label(self._stage[name])}: {name.split('.')[-1]} "
            f"({format_duration(now - start)})"
            for start, name in running[:3]
        ]
        more = f" and {len(running) - 3} more" if len(running) > 3 else ""
        return (
            f"still running: {', '.join(steps)}{more}; {self.done}/{self.total} overall, "
            f"{format_duration(now - self._started)} elapsed"
        )

    def beat(self, interval: float) -> None:
        """Print :meth:`running_line` when nothing was printed for ``interval`` s."""
        if self._clock() - self._last_line >= interval:
            line = self.running_line()
            if line is not None:
                self._print(line, self._stdout())

    @contextlib.contextmanager
    def heartbeat(self, interval: float = 60.0):
        """While the block runs, a background thread calls :meth:`beat` so that a
        long step (the T1w registration takes minutes) does not leave the
        console silent."""
        stop = threading.Event()

        def loop():
            while not stop.wait(interval / 4):
                self.beat(interval)

        thread = threading.Thread(target=loop, name="asl-pipeline-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
