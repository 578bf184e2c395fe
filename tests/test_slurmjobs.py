"""A stopped SLURM run cancels the jobs it submitted (asl_pipeline.cli.slurmjobs)."""

import os
import signal
import stat

import pytest

from asl_pipeline.cli import guard, slurmjobs


def _fake(bin_dir, name, body):
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch answering job 4242; scancel writing its arguments to a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "scancel.log"
    _fake(bin_dir, "sbatch", 'echo "Submitted batch job 4242"\n')
    _fake(bin_dir, "scancel", f'echo "$@" >> {log}\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LOGNAME", "tester")
    slurmjobs.SUBMITTED.clear()
    yield log
    slurmjobs.SUBMITTED.clear()


class _Node:
    plugin_args: dict = {}
    _hierarchy = "wf"
    _id = "step"

    def __init__(self, path):
        self.path = path

    def output_dir(self):
        return str(self.path)


def test_submitted_jobs_are_recorded_and_cancelled(fake_slurm, tmp_path):
    plugin = slurmjobs.TrackedSLURMPlugin(plugin_args={})
    script = tmp_path / "batch.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    assert plugin._submit_batchtask(str(script), _Node(tmp_path)) == 4242
    assert slurmjobs.SUBMITTED == [4242]
    assert slurmjobs.cancel_submitted() == [4242]
    assert fake_slurm.read_text().split() == ["4242"]
    assert slurmjobs.SUBMITTED == []


def test_nothing_is_cancelled_without_submitted_jobs(fake_slurm):
    assert slurmjobs.cancel_submitted() == []
    assert not fake_slurm.exists()


def test_sigterm_during_a_run_cancels_its_jobs(fake_slurm):
    slurmjobs.SUBMITTED.extend([7, 8])
    with pytest.raises(guard.Interrupted):
        with guard.graceful_shutdown():
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("the signal should have interrupted the run")
    assert fake_slurm.read_text().split() == ["7", "8"]


_DRIVER = """
import sys
from nipype.interfaces.base import CommandLine
from nipype.pipeline import engine as pe
from asl_pipeline.cli import guard
from asl_pipeline.cli.slurmjobs import TrackedSLURMPlugin

wf = pe.Workflow(name="slurm_cancel", base_dir=sys.argv[1])
wf.add_nodes([pe.Node(CommandLine("sleep", args="600", resource_monitor=False), name="nap")])
try:
    with guard.graceful_shutdown():
        wf.run(plugin=TrackedSLURMPlugin(plugin_args={"poll_sleep_duration": 1}))
except guard.Interrupted as exc:
    sys.exit(exc.exit_status())
"""


@pytest.mark.slow
def test_real_slurm_job_is_cancelled_when_the_run_is_stopped(tmp_path):
    import shutil
    import subprocess
    import sys
    import time

    if (
        shutil.which("sbatch") is None
        or subprocess.run(["sinfo"], capture_output=True, timeout=20).returncode
    ):
        pytest.skip("no SLURM controller here (CI starts one with shared/ci/setup-slurm.sh)")
    env = {**os.environ, "LOGNAME": os.environ.get("LOGNAME", "root")}
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(tmp_path)], env=env, cwd=tmp_path
    )

    def queued():
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=20
        ).stdout
        return [line for line in out.splitlines() if "slurm_cancel" in line]

    deadline = time.time() + 120
    while not queued() and time.time() < deadline:
        time.sleep(1)
    assert queued(), "the job was never submitted"
    driver.send_signal(signal.SIGTERM)
    driver.wait(timeout=120)
    deadline = time.time() + 60
    while queued() and time.time() < deadline:
        time.sleep(1)
    assert not queued()
