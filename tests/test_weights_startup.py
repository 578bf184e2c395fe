"""Denoising weights are verified at start-up, before any work, also from a wheel.

The shipped DWAN weights must match ``data_manifest.json``, which ships as
package data; an explicit ``--dwan-weights`` file must load with
``weights_only=True`` and carry an architecture config that builds the
stored tensors. Every failure is an :class:`ASLInputError` naming the file.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asl_pipeline.cli.run import main
from asl_pipeline.errors import ASLInputError
from asl_pipeline.models import DWAN, save_model
from asl_pipeline.models.io import (
    default_weights_path,
    file_sha256,
    find_manifest,
    verify_weights,
)
from tests._bidsfactory import make_dataset, snapshot

REPO = Path(__file__).resolve().parents[1]


def _small(path: Path) -> Path:
    save_model(DWAN(width=4, expansion=1, depth=1, global_dilations=(2,)), path)
    return path


def _rewrite(path: Path, **changes) -> Path:
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    torch.save(payload, path)
    return path


def test_packaged_manifest_is_the_repository_manifest():
    packaged = REPO / "asl_pipeline" / "data" / "data_manifest.json"
    assert packaged.read_bytes() == (REPO / "data_manifest.json").read_bytes()


def test_manifest_found_as_package_data(monkeypatch):
    monkeypatch.delenv("ASL_PIPELINE_MANIFEST", raising=False)
    manifest = find_manifest()
    assert manifest is not None
    assert manifest.parent == default_weights_path().parent
    entry = json.loads(manifest.read_text())["assets"][0]
    assert entry["sha256"] == file_sha256(default_weights_path())


def test_shipped_weights_verify():
    assert verify_weights() == file_sha256(default_weights_path())


def test_shipped_file_missing_from_manifest_refused(tmp_path, monkeypatch):
    fake = tmp_path / "data_manifest.json"
    fake.write_text(json.dumps({"assets": []}))
    monkeypatch.setenv("ASL_PIPELINE_MANIFEST", str(fake))
    with pytest.raises(ASLInputError, match="not listed in data_manifest.json"):
        verify_weights()


MALFORMED = [
    ("negative-width", dict(config={"width": -4, "expansion": 1, "depth": 1})),
    ("huge-width", dict(config={"width": 10**12, "expansion": 10**6, "depth": 1})),
    ("string-depth", dict(config={"depth": "four"})),
    ("list-config", dict(config=[1, 2, 3])),
    ("unknown-key", dict(config={"dropout": 0.1})),
    ("dilations-length", dict(config={"width": 4, "depth": 2, "global_dilations": [2]})),
    ("unknown-arch", dict(arch="transformer")),
    ("arch-not-string", dict(arch=["dwan"])),
    ("shape-mismatch", dict(config={"width": 8, "expansion": 1, "depth": 1,
                                    "global_dilations": [2]})),
]  # fmt: skip


@pytest.mark.parametrize("changes", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_config_is_an_input_error(tmp_path, changes):
    path = _rewrite(_small(tmp_path / "w.pt"), **changes)
    started = time.perf_counter()
    with pytest.raises(ASLInputError) as info:
        verify_weights(path)
    assert time.perf_counter() - started < 30  # no giant allocation
    assert info.value.file == str(path)
    assert info.value.field == "config"
    assert "asl-train" in info.value.fix


class _Code:  # pickled as a global: torch refuses it with weights_only=True
    pass


def test_pickled_code_refused_without_torch_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "asl_pipeline.model/1", "obj": _Code()}, path)
    with pytest.raises(ASLInputError) as info:
        verify_weights(path)
    assert "weights_only=False" not in str(info.value)
    assert info.value.field == "weights"


def test_state_dict_not_tensors_refused(tmp_path):
    path = _rewrite(_small(tmp_path / "w.pt"), state_dict={"a": [1, 2]})
    with pytest.raises(ASLInputError, match="checksum"):
        verify_weights(path)


def _cli(tmp_path, *extra):
    root = make_dataset(tmp_path / "ds")
    before = snapshot(root)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(root), str(out), "participant", "-w", str(work), *extra]
    code = main(argv)
    assert snapshot(root) == before
    assert not out.exists() and not work.exists()
    return code


def test_cli_refuses_tampered_weights_before_work(tmp_path, capsys):
    path = _small(tmp_path / "w.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert _cli(tmp_path, "--denoise", "--dwan-weights", str(path)) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "Fix:" in err


def test_cli_refuses_malformed_config_before_work(tmp_path, capsys):
    path = _rewrite(_small(tmp_path / "w.pt"), config={"width": "wide"})
    assert _cli(tmp_path, "--denoise", "--dwan-weights", str(path)) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "field 'config'" in err and "Traceback" not in err


def test_cli_without_denoising_skips_the_weights(tmp_path, capsys):
    path = _rewrite(_small(tmp_path / "w.pt"), config={"width": "wide"})
    assert _cli(tmp_path, "--dwan-weights", str(path), "--no-denoise", "--validate-only") == 0


# ------------------------------------------------------------- installed wheel

_SOURCES = ("asl_pipeline", "interfaces", "workflows")
_FILES = ("setup.cfg", "pyproject.toml", "README.rst", "data_manifest.json")

_CHECK = """
import sys
from pathlib import Path
import asl_pipeline
from asl_pipeline.errors import ASLInputError
from asl_pipeline.models import DWAN, save_model
from asl_pipeline.models.io import default_weights_path, find_manifest, verify_weights
assert Path(asl_pipeline.__file__).is_relative_to(sys.prefix), asl_pipeline.__file__
manifest = find_manifest()
assert manifest is not None and manifest.is_relative_to(sys.prefix), manifest
verify_weights()
save_model(DWAN(), default_weights_path())  # a random network over the shipped file
try:
    verify_weights()
except ASLInputError as exc:
    print("REFUSED:", exc)
else:
    raise SystemExit("tampered weights accepted")
"""


def _build_wheel(tmp_path: Path) -> Path:
    """Build offline (no build isolation): needs setuptools >= 70.1 (bdist_wheel built in)."""
    src = tmp_path / "src"
    for name in _SOURCES:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in _FILES:
        shutil.copy2(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(src), "-w", str(wheels)],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("asl_pipeline-*.whl")
    return wheel


def _venv_with(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    deps = Path(np.__file__).parents[1]  # numpy, torch, nibabel... of this interpreter
    (Path(purelib) / "zz_deps.pth").write_text(f"{deps}\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True
    )
    return python


def test_installed_wheel_refuses_tampered_weights(tmp_path):
    wheel = _build_wheel(tmp_path)
    python = _venv_with(tmp_path, wheel)
    res = subprocess.run([str(python), "-c", _CHECK], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "REFUSED:" in res.stdout and "corrupted or was replaced" in res.stdout
    assert "dwan_lfn_l1.pt" in res.stdout
