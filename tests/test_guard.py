"""Runs cannot corrupt each other: folder locks, clean stop on signals, one
configuration file per participant set."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from asl_pipeline.cli import guard
from asl_pipeline.cli.run import main
from asl_pipeline.cli.workflow import config_file_name
from tests._bidsfactory import make_dataset, snapshot


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "ds")


def _argv(root, tmp_path, *extra):
    out, work = tmp_path / "out", tmp_path / "work"
    return [str(root), str(out), "participant", "-w", str(work), "--no-denoise",
            "--skip-bids-validation", *extra]  # fmt: skip


def _holder_file(path: Path, pid: int, command="asl-pipeline ds out participant"):
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": socket.gethostname(), "started": "2026-01-01T10:00:00",
              "command": command}  # fmt: skip
    path.write_text(json.dumps(holder))
    return path


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _no_workflow(monkeypatch):
    calls = []

    def fake(config, runs, **_):
        calls.append((config, runs))
        return 0

    monkeypatch.setattr("asl_pipeline.cli.workflow.run_workflow", fake)
    return calls


def test_second_run_on_the_same_subject_is_refused(dataset, tmp_path, capsys, live_pid,
                                                    monkeypatch):  # fmt: skip
    calls = _no_workflow(monkeypatch)
    lock = _holder_file(guard.subject_lock(tmp_path / "out", "01"), live_pid)
    before = snapshot(tmp_path / "out")
    assert main(_argv(dataset, tmp_path)) == 1
    err = capsys.readouterr().err
    assert f"pid {live_pid} on {socket.gethostname()}" in err
    assert "started 2026-01-01T10:00:00" in err and "asl-pipeline ds out participant" in err
    assert str(lock) in err and "Fix:" in err
    assert not calls
    assert snapshot(tmp_path / "out") == before
    assert not (tmp_path / "work").exists()


def test_second_run_on_the_same_work_folder_is_refused(dataset, tmp_path, capsys, live_pid,
                                                       monkeypatch):  # fmt: skip
    calls = _no_workflow(monkeypatch)
    _holder_file(tmp_path / "work" / guard.WORK_LOCK, live_pid)
    assert main(_argv(dataset, tmp_path)) == 1
    assert f"pid {live_pid}" in capsys.readouterr().err
    assert not calls and not (tmp_path / "out").exists()


def test_other_subject_in_the_same_output_folder_proceeds(dataset, tmp_path, live_pid,
                                                          monkeypatch):  # fmt: skip
    calls = _no_workflow(monkeypatch)
    other = _holder_file(guard.subject_lock(tmp_path / "out", "02"), live_pid)
    assert main(_argv(dataset, tmp_path)) == 0
    assert len(calls) == 1
    assert other.exists()  # the other run's lock is left alone
    assert not guard.subject_lock(tmp_path / "out", "01").exists()  # ours is released


def test_stale_lock_is_taken_over_with_a_warning(dataset, tmp_path, capsys, dead_pid,
                                                 monkeypatch):  # fmt: skip
    lock = _holder_file(guard.subject_lock(tmp_path / "out", "01"), dead_pid)
    seen = {}

    def fake(config, runs, **_):
        seen["holder"] = json.loads(lock.read_text())
        return 0

    monkeypatch.setattr("asl_pipeline.cli.workflow.run_workflow", fake)
    assert main(_argv(dataset, tmp_path)) == 0
    err = capsys.readouterr().err
    assert "stale lock" in err and f"pid {dead_pid}" in err
    assert seen["holder"]["pid"] == os.getpid()
    assert "--no-denoise" in seen["holder"]["command"]
    assert not lock.exists()


def test_unreadable_lock_is_stale(tmp_path, capsys):
    lock = tmp_path / "x.lock"
    lock.write_text("not json")
    holder = guard.this_run("test")
    guard.acquire(lock, holder)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    guard.release(lock, holder)
    assert not lock.exists()


def test_sigterm_ends_children_removes_temp_and_releases_locks(dataset, tmp_path, capsys,
                                                                monkeypatch):  # fmt: skip
    seen = {}

    def fake(config, runs, **_):
        seen["tmp"] = Path(tempfile.gettempdir())
        (seen["tmp"] / "asl_itk_x").mkdir()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        seen["child"] = child
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr("asl_pipeline.cli.workflow.run_workflow", fake)
    handler = signal.getsignal(signal.SIGTERM)
    assert main(_argv(dataset, tmp_path)) == 128 + signal.SIGTERM
    assert seen["child"].wait(timeout=10) is not None  # ended, not left running
    assert not seen["tmp"].exists()
    assert seen["tmp"].name.startswith("asl_pipeline_")
    assert not guard.subject_lock(tmp_path / "out", "01").exists()
    assert not (tmp_path / "work" / guard.WORK_LOCK).exists()
    assert signal.getsignal(signal.SIGTERM) == handler
    assert "stopped by SIGTERM" in capsys.readouterr().err


def test_descendants_lists_grandchildren():
    code = "import subprocess, sys, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(50):
            found = guard.descendants()
            if len(found) >= 2:
                break
            subprocess.run(["sleep", "0.1"])
        assert proc.pid in found and len(found) >= 2
    finally:
        guard.end_children(grace_s=2)
    assert proc.wait(timeout=5) is not None
    assert guard.descendants() == []


def test_output_folder_that_is_a_file_refused_before_writing(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("a file")
    argv = [str(dataset), str(out / "deriv"), "participant", "-w", str(tmp_path / "w"),
            "--no-denoise"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "field 'output_dir'" in err and "is a file" in err and "Fix:" in err
    assert not (tmp_path / "w").exists() and out.read_text() == "a file"


def test_unwritable_work_folder_refused_before_writing(dataset, tmp_path, capsys,
                                                       monkeypatch):  # fmt: skip
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    real_access = os.access  # root ignores the mode: make the check see it as a user would
    monkeypatch.setattr(guard.os, "access", lambda p, m: Path(p) != locked and real_access(p, m))
    argv = [str(dataset), str(tmp_path / "out"), "participant", "-w", str(locked / "w"),
            "--no-denoise"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "field 'work_dir'" in err and "not writable" in err
    assert not (tmp_path / "out").exists() and not (locked / "w").exists()


def test_config_file_per_participant_set():
    assert config_file_name(["01"]) == "asl_pipeline_config_sub-01.toml"
    assert config_file_name(["01", "02"]) == "asl_pipeline_config_sub-01_sub-02.toml"
    many = config_file_name([f"{i:02d}" for i in range(10)])
    assert many.startswith("asl_pipeline_config_10subjects-") and many.endswith(".toml")
    assert many != config_file_name([f"{i:02d}" for i in range(1, 11)])


def test_forked_worker_dies_quietly_of_sigterm():
    """A MultiProc worker (forked, so it inherits the handler) dies of SIGTERM
    instead of raising Interrupted and printing a traceback."""
    with guard.graceful_shutdown():
        ready, tell = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker, once running Python code, waits for the signal
            os.write(tell, b"1")
            # not signal.pause(): a SIGTERM that lands between the write and pause()
            # is caught at C level before pause() starts, and pause() then waits forever
            # (it hung a CI-like run for an hour); short sleeps let the handler run
            for _ in range(3000):
                time.sleep(0.01)
            os._exit(0)
        os.read(ready, 1)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


_KILLED_RUN = """
import multiprocessing, os, sys, time
from asl_pipeline.cli import guard

def work():
    print(os.getpid(), flush=True)  # after multiprocessing's after-fork hooks
    time.sleep(60)

with guard.graceful_shutdown():
    worker = multiprocessing.get_context("fork").Process(target=work)
    worker.start()
    time.sleep(60)
"""


def test_workers_end_when_the_run_is_killed(tmp_path):
    run = subprocess.Popen([sys.executable, "-c", _KILLED_RUN], stdout=subprocess.PIPE, text=True)
    worker = int(run.stdout.readline())
    run.kill()  # SIGKILL: no handler runs in the run itself
    run.wait()
    for _ in range(50):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        subprocess.run(["sleep", "0.1"])
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived the killed run")


_MULTIPROC_DRIVER = """
import sys
from nipype.interfaces.base import CommandLine
from nipype.pipeline import engine as pe
from asl_pipeline.cli import guard

wf = pe.Workflow(name="k9", base_dir=sys.argv[1])
wf.add_nodes([
    pe.Node(CommandLine("sleep", args=sys.argv[2], resource_monitor=False), name=f"nap{i}")
    for i in range(2)
])
with guard.graceful_shutdown():
    wf.run(plugin="MultiProc", plugin_args={"n_procs": 2})
"""


@pytest.mark.slow
def test_kill_9_of_the_run_leaves_no_step_program_running(tmp_path):
    """MultiProc workers die with the run and take the programs they started along."""
    import subprocess
    import sys
    import time

    tag = f"{time.time_ns() % 10**6 + 3000}"  # a unique sleep length to find our processes
    run = subprocess.Popen([sys.executable, "-c", _MULTIPROC_DRIVER, str(tmp_path), tag])

    def ours():
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if f"sleep {tag}" in line]

    deadline = time.time() + 60
    while len(ours()) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ours(), "the steps never started"
    run.kill()
    run.wait()
    deadline = time.time() + 20
    while ours() and time.time() < deadline:
        time.sleep(0.5)
    assert not ours()
