"""A run stopped by SIGTERM/SIGINT with ``--plugin SLURM`` cancels the jobs it
submitted (``scancel``), so nothing of it stays queued or running."""

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from asl_pipeline.cli import guard, slurmjobs
from asl_pipeline.cli.workflow import _runner


def _script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture(autouse=True)
def _empty_registry():
    slurmjobs.clear_jobs()
    yield
    slurmjobs.clear_jobs()


@pytest.fixture
def fake_scancel(tmp_path, monkeypatch):
    """A ``scancel`` on PATH appending its arguments (one call a line) to a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scancel_calls.txt"
    _script(bin_dir, "scancel", f'echo "$*" >> {calls}\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir, calls


def test_cancel_jobs_runs_scancel_on_exactly_the_ids(fake_scancel, capsys):
    _, calls = fake_scancel
    assert slurmjobs.cancel_jobs([101, 102, 101]) == [101, 102]
    assert calls.read_text() == "101 102\n"
    assert "cancelling 2 SLURM job(s) of this run: scancel 101 102" in capsys.readouterr().err


def test_nothing_is_called_without_jobs(fake_scancel, capsys):
    _, calls = fake_scancel
    assert slurmjobs.cancel_jobs([]) == []
    assert slurmjobs.cancel_submitted() == []
    assert not calls.exists()
    assert capsys.readouterr().err == ""


def test_finished_jobs_are_not_cancelled(fake_scancel):
    _, calls = fake_scancel
    for job in (7, 8, 9):
        slurmjobs.record_job(job)
    slurmjobs.forget_job(8)  # left the queue
    assert slurmjobs.cancel_submitted() == [7, 9]
    assert calls.read_text() == "7 9\n"
    assert slurmjobs.submitted_jobs() == []


def test_missing_scancel_names_the_jobs_to_cancel_by_hand(tmp_path, capsys):
    assert slurmjobs.cancel_jobs([5], scancel=str(tmp_path / "no-scancel")) == [5]
    err = capsys.readouterr().err
    assert "scancel failed" in err and "cancel the jobs by hand: scancel 5" in err


def test_failing_scancel_is_reported(tmp_path, capsys):
    bad = _script(tmp_path, "scancel", 'echo "scancel: error: Invalid job id" >&2; exit 1\n')
    slurmjobs.cancel_jobs([5, 6], scancel=str(bad))
    assert (
        "scancel exited with status 1: scancel: error: Invalid job id" in capsys.readouterr().err
    )


def test_slurm_choice_uses_the_recording_plugin():
    runner = _runner({"plugin": "SLURM", "plugin_args": {"sbatch_args": "--mem=1G"}})
    assert type(runner["plugin"]).__name__ == "CancellableSLURMPlugin"
    assert runner["plugin"].plugin_args == {"sbatch_args": "--mem=1G"}
    multiproc = {"plugin": "MultiProc", "plugin_args": {"n_procs": 2}}
    assert _runner(multiproc) is multiproc


def _add(a):
    return a + 1


def _two_node_workflow(base_dir: Path):
    from nipype import Node, Workflow
    from nipype.interfaces.utility import Function

    wf = Workflow(name="tiny", base_dir=str(base_dir))
    for i in (1, 2):  # independent: both submitted at once
        node = Node(Function(input_names=["a"], output_names=["b"], function=_add),
                    name=f"add{i}")  # fmt: skip
        node.inputs.a = i
        wf.add_nodes([node])
    wf.config["execution"].update({"poll_sleep_duration": 0.2, "crashdump_dir": str(base_dir)})
    return wf


@pytest.fixture
def fake_slurm(fake_scancel, monkeypatch):
    """``sbatch`` numbering jobs from 1001 (logging each submission) and
    ``squeue`` reporting the job as queued (a cluster that is busy)."""
    bin_dir, calls = fake_scancel
    counter = bin_dir / "last_job"
    _script(bin_dir, "sbatch",
            f'n=$(( $(cat {counter} 2>/dev/null || echo 1000) + 1 )); echo $n > {counter}\n'
            'echo "Submitted batch job $n"\n')  # fmt: skip
    _script(bin_dir, "squeue", 'echo "JOBID"; echo "$2"\n')
    monkeypatch.setenv("LOGNAME", os.environ.get("LOGNAME", "tester"))
    return counter, calls


def _sigterm_when(condition, timeout_s=60.0):
    def wait_then_kill():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not condition():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=wait_then_kill, daemon=True)
    thread.start()
    return thread


def test_sigterm_during_a_slurm_run_cancels_its_queued_jobs(fake_slurm, tmp_path, capsys):
    counter, calls = fake_slurm
    wf = _two_node_workflow(tmp_path / "work")
    _sigterm_when(lambda: counter.exists() and counter.read_text().strip() == "1002")
    with pytest.raises(guard.Interrupted), guard.graceful_shutdown():
        wf.run(**_runner({"plugin": "SLURM", "plugin_args": {}}))
    assert calls.read_text() == "1001 1002\n"
    assert "scancel 1001 1002" in capsys.readouterr().err
    assert slurmjobs.submitted_jobs() == []


def test_run_whose_jobs_all_finished_cancels_nothing(fake_scancel, tmp_path, monkeypatch):
    """``sbatch`` that runs the job at once and an empty queue: the jobs are
    forgotten as they finish, and a later SIGTERM has nothing to cancel."""
    bin_dir, calls = fake_scancel
    submitted = bin_dir / "submitted"
    _script(
        bin_dir,
        "sbatch",
        f'echo x >> {submitted}; bash "${{@: -1}}" >/dev/null 2>&1\n'
        'echo "Submitted batch job $(( 2000 + $(wc -l < ' + str(submitted) + ') ))"\n',
    )
    _script(bin_dir, "squeue", 'echo "JOBID"\n')
    monkeypatch.setenv("LOGNAME", os.environ.get("LOGNAME", "tester"))
    wf = _two_node_workflow(tmp_path / "work")
    with pytest.raises(guard.Interrupted), guard.graceful_shutdown():
        wf.run(**_runner({"plugin": "SLURM", "plugin_args": {}}))
        assert slurmjobs.submitted_jobs() == []
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert len(submitted.read_text().split()) == 2
    assert not calls.exists()


def _slurm_running() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return res.returncode == 0 and any(s.startswith(("idle", "mix")) for s in res.stdout.split())


@pytest.mark.slow
@pytest.mark.slurm
def test_sigterm_on_a_real_cluster_leaves_no_job(tmp_path, monkeypatch):
    """Real SLURM: jobs held in the queue (``--hold``) by the plugin, SIGTERM,
    and ``squeue`` no longer lists them."""
    if not _slurm_running():
        pytest.skip("sbatch absent or no SLURM cluster running (../shared/ci/setup-slurm.sh)")
    monkeypatch.setenv("LOGNAME", os.environ.get("LOGNAME", "root"))
    wf = _two_node_workflow(tmp_path / "work")
    seen: list[int] = []

    def two_submitted():
        seen[:] = slurmjobs.submitted_jobs()
        return len(seen) == 2

    _sigterm_when(two_submitted, timeout_s=120)
    with pytest.raises(guard.Interrupted), guard.graceful_shutdown():
        wf.run(**_runner({"plugin": "SLURM", "plugin_args": {"sbatch_args": "--hold"}}))
    assert len(seen) == 2
    ids = ",".join(map(str, seen))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", ids, "-o", "%i %T"],
                               capture_output=True, text=True).stdout  # fmt: skip
        if not queue.strip():
            break
        time.sleep(0.5)
    assert queue.strip() == "", f"jobs still queued: {queue}"


def test_cli_run_stopped_by_sigterm_cancels_its_jobs(fake_slurm, tmp_path, capsys):
    """``asl-pipeline ... --plugin SLURM`` on a small dataset: the first jobs
    stay queued (fake cluster), SIGTERM, and exactly those jobs are cancelled."""
    from asl_pipeline.cli.run import main
    from tests._bidsfactory import make_dataset

    counter, calls = fake_slurm
    dataset = make_dataset(tmp_path / "ds")
    out, work = tmp_path / "out", tmp_path / "work"
    recorded: list[int] = []

    def submitted():
        recorded[:] = slurmjobs.submitted_jobs()
        return bool(recorded)

    _sigterm_when(submitted, timeout_s=120)
    argv = [str(dataset), str(out), "participant", "-w", str(work), "--no-denoise",
            "--skip-bids-validation", "--plugin", "SLURM"]  # fmt: skip
    assert main(argv) == 128 + signal.SIGTERM
    last = int(counter.read_text())
    # every job submitted (1001..last) was still queued, so all are cancelled
    assert recorded and recorded[0] == 1001
    assert calls.read_text() == " ".join(map(str, range(1001, last + 1))) + "\n"
    err = capsys.readouterr().err
    assert f"scancel {' '.join(map(str, range(1001, last + 1)))}" in err
    assert "stopped by SIGTERM" in err
    assert slurmjobs.submitted_jobs() == []
