"""Runs that cannot corrupt each other, and a clean stop on SIGTERM/SIGINT.

* :func:`folder_locks` takes one lock file per subject in the output folder
  and one on the work folder. A second run on the same subjects or the same
  work folder is refused with the holder's pid, host, start time and command;
  runs on other subjects (a SLURM job array sharing the output folder, each
  job with its own work folder) proceed side by side. A lock left by a dead
  process on this host is taken over with a warning.
* :func:`graceful_shutdown` turns SIGTERM and SIGINT into
  :class:`Interrupted`, ends the run's child processes (workers, ANTs
  subprocesses), and removes the run's temporary folder (``TMPDIR`` of the
  run, so the children's temporary files go there too). Its multiprocessing
  workers also end when the run is killed with SIGKILL
  (:func:`die_with_parent`). The SLURM jobs the run submitted and that are
  still queued or running are cancelled (``scancel``, see
  :mod:`asl_pipeline.cli.slurmjobs`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing.util
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from asl_pipeline.errors import ASLInputError

#: Lock file of a work folder.
WORK_LOCK = ".asl_pipeline.lock"
#: Seconds a child process gets to end after SIGTERM before SIGKILL.
TERMINATE_GRACE_S = 5.0


@dataclass(frozen=True)
class Holder:
    """The run that holds a lock."""

    pid: int
    host: str
    started: str
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}: {self.command}"


def this_run(command: str) -> Holder:
    """The :class:`Holder` describing the current process."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return Holder(os.getpid(), socket.gethostname(), started, command)


def subject_lock(output_dir: Path, subject: str) -> Path:
    """Lock file of one subject's outputs."""
    return Path(output_dir) / f".asl_pipeline_sub-{subject}.lock"


def _read_holder(path: Path) -> Holder | None:
    """The holder recorded in ``path``; None when unreadable or malformed."""
    try:
        return Holder(**json.loads(path.read_text()[:10_000]))
    except (OSError, ValueError, TypeError):
        return None


def _alive(holder: Holder | None) -> bool:
    """Whether the holder may still run (a process on another host always may)."""
    if holder is None:
        return False
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _create(path: Path, holder: Holder) -> bool:
    """Write ``path`` if it does not exist yet (atomically); False when it does."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fobj:
        json.dump(asdict(holder), fobj)
    return True


def _busy(path: Path, holder: Holder | None) -> ASLInputError:
    return ASLInputError(
        f"is held by another asl-pipeline run ({holder or 'unknown run'}).",
        file=path,
        field="lock",
        fix="wait for that run to finish, or use other output/work folders; if it is not "
        f"running any more, delete {path}.",
    )


def acquire(path: Path, holder: Holder) -> None:
    """Take the lock ``path`` for ``holder``, taking over a stale one.

    Raises
    ------
    ASLInputError
        When a live run holds it.
    """
    if _create(path, holder):
        return
    previous = _read_holder(path)
    if _alive(previous):
        raise _busy(path, previous)
    print(
        f"asl-pipeline: warning: {path}: stale lock of a run that is not running any more "
        f"({previous or 'unreadable'}); taken over.",
        file=sys.stderr,
        flush=True,
    )
    path.unlink(missing_ok=True)
    if not _create(path, holder):
        raise _busy(path, _read_holder(path))


def release(path: Path, holder: Holder) -> None:
    """Remove the lock ``path`` if ``holder`` still holds it."""
    current = _read_holder(path)
    if current is not None and current.pid == holder.pid and current.host == holder.host:
        path.unlink(missing_ok=True)


def _lock_paths(output_dir: Path, work_dir: Path, subjects) -> list[Path]:
    return [Path(work_dir) / WORK_LOCK] + [subject_lock(output_dir, s) for s in subjects]


def held_by_others(output_dir: Path, work_dir: Path, subjects) -> list[ASLInputError]:
    """The locks a live run holds, checked without writing anything."""
    found = []
    for path in _lock_paths(output_dir, work_dir, subjects):
        holder = _read_holder(path) if path.exists() else None
        if path.exists() and _alive(holder):
            found.append(_busy(path, holder))
    return found


@contextlib.contextmanager
def folder_locks(output_dir: Path, work_dir: Path, subjects, *, command: str):
    """Hold the work folder's lock and one lock per subject in the output folder.

    Refuses (:class:`ASLInputError`) before creating anything when a live run
    holds one of them; the locks are released on exit.
    """
    busy = held_by_others(output_dir, work_dir, sorted(set(subjects)))
    if busy:
        raise busy[0]
    holder = this_run(command)
    taken: list[Path] = []
    try:
        for path in _lock_paths(output_dir, work_dir, sorted(set(subjects))):
            path.parent.mkdir(parents=True, exist_ok=True)
            acquire(path, holder)
            taken.append(path)
        yield holder
    finally:
        for path in taken:
            release(path, holder)


class Interrupted(BaseException):  # noqa: N818 - a signal, not an error of the program
    """Raised in the main thread on SIGTERM or SIGINT."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class _Deferral(threading.local):
    depth = 0
    pending: int | None = None


_DEFERRAL = _Deferral()


@contextlib.contextmanager
def signals_deferred():
    """Hold back :class:`Interrupted` until the block has ended.

    Under :func:`graceful_shutdown`, a SIGTERM/SIGINT arriving inside the block
    is raised when it ends, so that a step the stop must not split (an
    ``sbatch`` submission and the recording of its job id) is completed first.
    """
    _DEFERRAL.depth += 1
    try:
        yield
    finally:
        _DEFERRAL.depth -= 1
        if _DEFERRAL.depth == 0 and _DEFERRAL.pending is not None:
            signum, _DEFERRAL.pending = _DEFERRAL.pending, None
            raise Interrupted(signum)  # noqa: B012 - the stop takes over


def _handler(main_pid: int):
    """Raise :class:`Interrupted` in the run's process (after a
    :func:`signals_deferred` block); forked workers, which inherit the
    handler, die of the signal quietly as they would without it."""

    def handle(signum, _frame):
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if _DEFERRAL.depth > 0:
            _DEFERRAL.pending = signum
            return
        raise Interrupted(signum)

    return handle


def _parents() -> dict[int, int]:
    """pid -> parent pid of every running process (Linux /proc; empty elsewhere).

    Zombies (ended, not yet reaped by their parent) are left out.
    """
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        if state != "Z":
            parents[int(stat.parent.name)] = int(ppid)
    return parents


def descendants(pid: int | None = None) -> list[int]:
    """The processes started, directly or not, by ``pid`` (default: this process)."""
    root = os.getpid() if pid is None else pid
    parents = _parents()
    found, frontier = [], [root]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _signal_all(pids, signum) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def end_children(grace_s: float = TERMINATE_GRACE_S) -> list[int]:
    """SIGTERM this process's descendants, then SIGKILL those left after ``grace_s``."""
    pids = descendants()
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and set(pids) & set(descendants()):
        time.sleep(0.1)
    _signal_all(set(pids) & set(descendants()), signal.SIGKILL)
    return pids


@contextlib.contextmanager
def _run_tmpdir():
    """A temporary folder for the run and its children (``TMPDIR``), removed on exit."""
    previous_env, previous_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    tmp = tempfile.mkdtemp(prefix="asl_pipeline_")
    os.environ["TMPDIR"] = tempfile.tempdir = tmp
    try:
        yield Path(tmp)
    finally:
        tempfile.tempdir = previous_dir
        if previous_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous_env
        shutil.rmtree(tmp, ignore_errors=True)


#: ``prctl`` option: the signal a process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> bool:
    """Ask Linux to send this process SIGTERM when its parent dies, even of SIGKILL.

    Run in every multiprocessing worker of the run (nipype's MultiProc pool),
    so a ``kill -9`` of the run does not leave its workers computing. When the
    ``parent`` pid is given and has already gone, the process ends at once.
    False where ``prctl`` is not available.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0
    except (OSError, AttributeError):
        return False
    if done and parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # the run died before the request
    return done


def _end_own_group(signum, _frame):
    """SIGTERM in a worker: end it and every process it started (its group)."""
    try:
        os.killpg(os.getpid(), signal.SIGKILL)
    finally:
        os._exit(128 + signum)


def worker_setup(parent: int) -> None:
    """Run in every multiprocessing worker of the run (after fork).

    The worker leads its own process group, so the programs a step starts
    (SPM/MATLAB, any command line) are in it; SIGTERM (from the run's clean
    shutdown, or from Linux when the run dies even of SIGKILL:
    :func:`die_with_parent`) ends the whole group, so no step's program is
    left orphaned.
    """
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    else:
        signal.signal(signal.SIGTERM, _end_own_group)
    die_with_parent(parent)


class _AfterFork:
    """Anchor of the after-fork hook (multiprocessing keeps a weak reference)."""


_AFTER_FORK = _AfterFork()


def _ignore_signals():
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def graceful_shutdown():
    """SIGTERM/SIGINT raise :class:`Interrupted` in the main thread; on it the
    run's child processes are ended and the SLURM jobs it submitted cancelled
    (:mod:`asl_pipeline.cli.slurmjobs`); the run's temporary folder goes on any exit."""
    from asl_pipeline.cli import slurmjobs

    run_pid = os.getpid()
    multiprocessing.util.register_after_fork(_AFTER_FORK, lambda _: worker_setup(run_pid))
    handle = _handler(run_pid)
    handlers = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _run_tmpdir() as tmp:
            try:
                yield tmp
            except Interrupted:
                _ignore_signals()  # a second Ctrl-C must not cut the clean-up short
                # the worker pool breaks as its processes end: that is expected here
                logging.getLogger("concurrent.futures").disabled = True
                slurmjobs.cancel_submitted()
                end_children()
                raise
    finally:
        slurmjobs.clear_jobs()
        _DEFERRAL.pending = None
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _writable_parent(path: Path) -> Path:
    """The nearest existing folder at or above ``path``."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def folder_problems(**folders) -> list[ASLInputError]:
    """Output folders that are files or cannot be created or written (name=path)."""
    problems = []
    for name, folder in folders.items():
        existing = _writable_parent(Path(folder))
        if not existing.is_dir():
            problem = f"is a file ({existing}), not a folder."
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = f"cannot be written ({existing} is not writable by this user)."
        else:
            continue
        problems.append(
            ASLInputError(
                problem,
                file=folder,
                field=name,
                fix=f"give --{name.replace('_', '-')} a folder you can write to.",
            )
        )
    return problems
