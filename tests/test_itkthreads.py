"""call_with_itk_threads: ANTs work in a fresh process with a set ITK thread count."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline import registration as reg
from asl_pipeline.errors import ASLInputError
from asl_pipeline.itkthreads import ENV_VAR, call_with_itk_threads


def test_worker_sees_the_requested_thread_count(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "2")  # the caller's own setting is not what runs
    assert call_with_itk_threads(3, os.getenv, ENV_VAR) == "3"
    assert call_with_itk_threads(0, os.getenv, ENV_VAR) == "1"
    assert os.environ[ENV_VAR] == "2"


def test_errors_come_back_with_their_message():
    empty = nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4))
    with pytest.raises(ASLInputError, match="ref.nii.gz") as err:
        call_with_itk_threads(
            1, reg.register_asl_to_t1w, empty, empty, "x.mat", ref_file="ref.nii.gz"
        )
    assert any("ANTs worker process" in n for n in err.value.__notes__)


def test_a_worker_that_dies_is_reported():
    with pytest.raises(RuntimeError, match="_exit exited with code 3"):
        call_with_itk_threads(1, os._exit, 3)


def _blob(shape=(40, 40, 30), shift=0.0):
    z, y, x = np.indices(shape, dtype=float)
    c = np.array(shape) / 2.0 + [shift, 0, 0]
    r2 = ((z - c[0]) / 12) ** 2 + ((y - c[1]) / 14) ** 2 + ((x - c[2]) / 10) ** 2
    img = np.exp(-r2 * 2) * 1000 + (r2 < 1) * 300
    return nib.Nifti1Image(img.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))


def test_registration_repeats_exactly_after_ants_ran_with_other_threads(tmp_path, monkeypatch):
    # ITK in this process is set up with 2 threads; the workers still use 1
    monkeypatch.setenv(ENV_VAR, "2")
    reg.register_asl_to_t1w(_blob(shift=1.5), _blob(), str(tmp_path / "warm.mat"))
    mats = []
    for i in range(2):
        out = str(tmp_path / f"run{i}.mat")
        call_with_itk_threads(1, reg.register_asl_to_t1w, _blob(shift=1.5), _blob(), out)
        mats.append(reg.read_itk_affine(out))
    np.testing.assert_array_equal(mats[0], mats[1])
    assert abs(mats[0][0, 3]) > 1.0  # it did register the 3 mm shift


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_worker_does_not_outlive_a_killed_caller(tmp_path):
    """kill -9 of the caller ends the ANTs worker and removes its temporary folder."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    code = "import time; from asl_pipeline.itkthreads import call_with_itk_threads as c; "
    code += "c(1, time.sleep, 120)"
    caller = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (workers := _children(caller.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert workers, "the worker process did not start"
        while not list(tmp_path.glob("asl_itk_*/job.pkl")) and time.monotonic() < deadline:
            time.sleep(0.2)
        caller.send_signal(signal.SIGKILL)
        caller.wait()
        deadline = time.monotonic() + 15
        while Path(f"/proc/{workers[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = Path(f"/proc/{workers[0]}").exists()
        if alive:  # do not leave it behind if the test fails
            os.kill(workers[0], signal.SIGKILL)
        assert not alive, "the ANTs worker outlived its killed caller"
        assert not list(tmp_path.glob("asl_itk_*")), "the worker's temporary folder was left"
    finally:
        if caller.poll() is None:
            caller.kill()
