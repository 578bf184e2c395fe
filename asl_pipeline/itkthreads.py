"""Run ANTs (ITK) work with a known number of threads, in a fresh process.

ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process, the first
time ANTs runs, and keeps that count for the life of the process. A process
that has already used antspyx (a forked Nipype MultiProc worker, a test
session, a notebook) therefore ignores the variable when it is set later, and
antspyx offers no other way to set the count. The count matters: ANTs
registration results change with it, and with more than one thread they differ
slightly from run to run.

:func:`call_with_itk_threads` runs a function in a new Python interpreter that
starts with the variable set, so the count is the one asked for. The function,
its arguments and its result travel by pickle through a temporary folder; a
new interpreter (not ``multiprocessing``'s spawn) is used because spawn
re-executes the parent's main script, and the scripts Nipype writes for SLURM
jobs have no ``__main__`` guard.

The worker does not outlive its caller: on Linux it asks the kernel for a
SIGTERM when the caller dies (``PR_SET_PDEATHSIG``, even after ``kill -9``),
and everywhere it watches its parent's pid; either way it removes its
temporary folder and exits.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ENV_VAR = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def call_with_itk_threads(n_threads: int, func, /, *args, **kwargs):
    """``func(*args, **kwargs)`` in a fresh interpreter whose ITK uses ``n_threads``.

    ``func`` must be importable (a module-level function) and its arguments and
    result picklable. An exception raised by ``func`` is raised here, with the
    worker's traceback added as a note.
    """
    with tempfile.TemporaryDirectory(prefix="asl_itk_") as tmp:
        job, result = Path(tmp, "job.pkl"), Path(tmp, "result.pkl")
        with job.open("wb") as fh:
            pickle.dump((func, args, kwargs), fh)
        env = {**os.environ, ENV_VAR: str(max(1, int(n_threads)))}
        proc = subprocess.run(
            [sys.executable, "-m", __name__, str(job), str(result), str(os.getpid())],
            env=env,
            check=False,
        )
        if not result.exists():
            raise RuntimeError(
                f"the ANTs worker process for {func.__module__}.{func.__qualname__} "
                f"exited with code {proc.returncode} before returning a result"
            )
        with result.open("rb") as fh:
            ok, value = pickle.load(fh)
    if ok:
        return value
    raise value


#: Seconds between two checks of the caller's pid by the worker.
PARENT_POLL_S = 1.0
_PR_SET_PDEATHSIG = 1


def _leave(folder: Path) -> None:
    """The caller is gone: remove the job's folder and exit at once."""
    shutil.rmtree(folder, ignore_errors=True)
    os._exit(1)


def _die_with_parent(folder: Path, parent: int) -> None:
    """End the worker (and its temporary folder) when the caller dies."""
    signal.signal(signal.SIGTERM, lambda *_: _leave(folder))
    try:  # Linux: the kernel sends SIGTERM when the parent dies, even by SIGKILL
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # died before prctl took effect
        _leave(folder)

    def watch():  # elsewhere (and as a fallback): poll the parent's pid
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        _leave(folder)

    threading.Thread(target=watch, daemon=True, name="asl-itk-parent-watch").start()


def _worker(job: str, result: str, parent: int | None = None) -> None:
    if parent is not None:
        _die_with_parent(Path(job).parent, parent)
    with open(job, "rb") as fh:
        func, args, kwargs = pickle.load(fh)
    try:
        out = (True, func(*args, **kwargs))
    except Exception as exc:  # travels back to the caller, which raises it
        exc.add_note("in the ANTs worker process:\n" + traceback.format_exc())
        out = (False, exc)
    try:
        payload = pickle.dumps(out)
    except Exception:  # an exception that does not pickle: keep its text
        payload = pickle.dumps((False, RuntimeError(traceback.format_exc())))
    with open(result, "wb") as fh:
        fh.write(payload)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
