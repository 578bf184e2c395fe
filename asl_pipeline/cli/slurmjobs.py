"""The SLURM jobs a run submitted, so that a stopped run leaves none behind.

Nipype's SLURM plugin submits one ``sbatch`` job per processing step and
polls them; when the main process is stopped (SIGTERM from ``scancel`` of the
driving job, Ctrl-C), those jobs would keep running or stay queued.
:class:`TrackedSLURMPlugin` records every job id it submits, and
:func:`cancel_submitted` (called by :func:`asl_pipeline.cli.guard.graceful_shutdown`
on SIGTERM/SIGINT) cancels the ones of this process with ``scancel``.

The ``SLURMGraph`` plugin submits its jobs from a shell script whose job ids
never reach Python; they are not tracked (the README says so).
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from nipype.pipeline.plugins.slurm import SLURMPlugin

LOGGER = logging.getLogger("asl_pipeline.cli")

#: Job ids submitted by this process, in submission order.
SUBMITTED: list[int] = []


class TrackedSLURMPlugin(SLURMPlugin):
    """Nipype's SLURM plugin, recording each submitted job id in :data:`SUBMITTED`."""

    def _submit_batchtask(self, scriptfile, node):
        taskid = super()._submit_batchtask(scriptfile, node)
        SUBMITTED.append(int(taskid))
        return taskid


def cancel_submitted(*, scancel: str = "scancel") -> list[int]:
    """``scancel`` every job this process submitted; returns their ids.

    Jobs that already ended are harmless to cancel (``scancel`` ignores them).
    Without submitted jobs nothing is run; without ``scancel`` on the PATH a
    warning names the jobs left behind.
    """
    ids = list(dict.fromkeys(SUBMITTED))
    SUBMITTED.clear()
    if not ids:
        return []
    exe = shutil.which(scancel)
    if exe is None:
        LOGGER.warning("scancel not found: SLURM jobs %s may still run", ids)
        return []
    res = subprocess.run(
        [exe, *(str(i) for i in ids)], capture_output=True, text=True, timeout=60, check=False
    )
    if res.returncode:
        LOGGER.warning("scancel %s: %s", ids, res.stderr.strip())
    print(f"Cancelled {len(ids)} submitted SLURM job(s): {' '.join(map(str, ids))}", flush=True)
    return ids
