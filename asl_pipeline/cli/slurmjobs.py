"""SLURM jobs of a run, cancelled when the run is stopped.

With ``--plugin SLURM`` nipype submits one ``sbatch`` job per processing
step. :class:`CancellableSLURMPlugin` (nipype's SLURM plugin) records the id
of every job it submits (a stop signal arriving during ``sbatch`` waits for
the id) and forgets it once the job has left the queue;
:func:`cancel_submitted` (called by :func:`asl_pipeline.cli.guard.graceful_shutdown`
on SIGTERM/SIGINT) runs ``scancel`` on the ids still recorded, so a stopped
run leaves nothing queued or running on the cluster.

The registry and :func:`cancel_jobs` do not import nipype and need no SLURM.
"""

from __future__ import annotations

import subprocess
import sys
import threading

#: Seconds ``scancel`` may take before it is given up.
SCANCEL_TIMEOUT_S = 60.0

_LOCK = threading.Lock()
_SUBMITTED: dict[int, None] = {}  # insertion-ordered set of job ids


def record_job(job_id: int) -> None:
    """Remember a submitted job of this run."""
    with _LOCK:
        _SUBMITTED[int(job_id)] = None


def forget_job(job_id: int) -> None:
    """Forget a job that has left the queue (finished, failed or cancelled)."""
    with _LOCK:
        _SUBMITTED.pop(int(job_id), None)


def submitted_jobs() -> list[int]:
    """Ids of this run's jobs still queued or running, in submission order."""
    with _LOCK:
        return list(_SUBMITTED)


def clear_jobs() -> None:
    """Forget all jobs (at the end of a run)."""
    with _LOCK:
        _SUBMITTED.clear()


def _say(message: str) -> None:
    print(f"asl-pipeline: {message}", file=sys.stderr, flush=True)


def cancel_jobs(
    job_ids, *, scancel: str = "scancel", timeout_s: float = SCANCEL_TIMEOUT_S
) -> list[int]:
    """Run ``scancel`` on ``job_ids``; return the ids it was run on.

    Nothing is run when there are no ids. A missing ``scancel``, a timeout or
    a failing ``scancel`` is reported on stderr with the ids to cancel by
    hand; it does not raise (this runs while the run is being stopped).
    """
    ids = [int(i) for i in dict.fromkeys(job_ids)]
    if not ids:
        return []
    listed = " ".join(map(str, ids))
    _say(f"cancelling {len(ids)} SLURM job(s) of this run: scancel {listed}")
    try:
        done = subprocess.run(
            [scancel, *map(str, ids)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _say(f"error: scancel failed ({exc}); cancel the jobs by hand: scancel {listed}")
        return ids
    if done.returncode != 0:
        _say(
            f"warning: scancel exited with status {done.returncode}: "
            f"{' '.join(done.stderr.split())}; check with: squeue -j {','.join(map(str, ids))}"
        )
    return ids


def cancel_submitted(**kwargs) -> list[int]:
    """Cancel the recorded jobs still queued or running (see :func:`cancel_jobs`)
    and forget them."""
    ids = submitted_jobs()
    cancelled = cancel_jobs(ids, **kwargs)
    for job_id in ids:
        forget_job(job_id)
    return cancelled


def slurm_plugin(plugin_args: dict | None = None):
    """A :class:`CancellableSLURMPlugin` for ``Workflow.run(plugin=...)``."""
    return _plugin_class()(plugin_args=dict(plugin_args or {}))


_CLASS = None


def _plugin_class():
    """nipype's SLURM plugin recording its job ids (nipype imported on first use)."""
    global _CLASS
    if _CLASS is None:
        from nipype.pipeline.plugins.slurm import SLURMPlugin

        from asl_pipeline.cli.guard import signals_deferred

        class CancellableSLURMPlugin(SLURMPlugin):
            """nipype's ``SLURMPlugin`` whose submitted job ids are recorded
            (:func:`record_job`) until the job leaves the queue."""

            def _submit_batchtask(self, scriptfile, node):
                # a SIGTERM/SIGINT during sbatch stops the run once the new
                # job's id is recorded, so that the job is cancelled too
                with signals_deferred():
                    job_id = super()._submit_batchtask(scriptfile, node)
                    record_job(job_id)
                return job_id

            def _clear_task(self, taskid):
                super()._clear_task(taskid)
                forget_job(taskid)

        _CLASS = CancellableSLURMPlugin
    return _CLASS
