"""The Pydra engine (asl_pipeline.engines.pydra): the interface adapter, a task
embedded in a user's own Pydra workflow, and (slow) a simulated subject through
both engines with identical derivative images."""

import hashlib
import importlib.util
import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

pydra = pytest.importorskip("pydra", reason="the Pydra engine needs pydra==0.25")

from _bidsfactory import SIM_BIDS_SMALL  # noqa: E402

from asl_pipeline.engines.pydra import interface_task, m0_task  # noqa: E402
from asl_pipeline.interfaces.cbf import ComputeM0  # noqa: E402
from asl_pipeline.simulate import simulate_dataset  # noqa: E402
from tests.test_cbf_interfaces import pcasl_run as _pcasl_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pcasl_run = _pcasl_run  # the CBF interface tests' small synthetic run (a fixture)


def test_interface_task_has_the_interface_fields():
    task = interface_task(ComputeM0, asl_file="a.nii.gz")
    names = {f[0] for f in task.input_spec.fields}
    assert {"asl_file", "aslcontext", "metadata", "m0_file", "m0_scale", "recovery"} <= names
    assert [f[0] for f in task.output_spec.fields] == ["m0_file", "m0_json"]
    assert task.inputs.asl_file == "a.nii.gz" and task.inputs.m0_scale is None


def test_m0_task_runs_the_nipype_interface(tmp_path, pcasl_run):
    files, mask, _, m0, _ = pcasl_run
    task = m0_task(**files, mask=mask, cache_dir=tmp_path / "cache")
    with pydra.Submitter(plugin="serial") as sub:
        sub(task)
    out = task.result().output
    # the same answer as the interface's own test: M0 recovered from TR 3 s
    np.testing.assert_allclose(nb.load(out.m0_file).get_fdata(), m0, rtol=1e-5)
    side = json.loads(Path(out.m0_json).read_text())
    assert side["M0RecoveryFactor"] == pytest.approx(1 - np.exp(-3.0 / 1.4))
    # and byte for byte what Nipype's run of the interface writes
    direct = ComputeM0(**files, mask=mask).run(cwd=tmp_path).outputs
    assert Path(out.m0_file).read_bytes() == Path(direct.m0_file).read_bytes()
    assert Path(out.m0_file).parent.parent == tmp_path / "cache"  # the task's own folder


def _example():
    spec = importlib.util.spec_from_file_location(
        "embed_in_pydra", ROOT / "examples/embed_in_pydra.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embed_in_pydra_example(tmp_path, pcasl_run, capsys):
    files, mask, cbf, _, _ = pcasl_run
    argv = [files[k] for k in ("asl_file", "aslcontext", "metadata", "m0_file", "m0_metadata")]
    cache = tmp_path / "cache"
    assert _example().main([*argv, mask, str(cache)]) == 0
    printed = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    mean = nb.load(printed["mean_cbf"]).get_fdata()
    # the known answer of the CBF interface test: the simulated CBF inside the mask
    np.testing.assert_allclose(mean[1:], cbf[1:], rtol=1e-5)
    assert np.all(mean[0] == 0)
    assert Path(printed["mean_cbf"]).is_relative_to(cache)
    # a rerun with the same cache reuses the results: same files, not rewritten
    stamp = Path(printed["mean_cbf"]).stat().st_mtime_ns
    assert _example().main([*argv, mask, str(cache)]) == 0
    again = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert again == printed and Path(printed["mean_cbf"]).stat().st_mtime_ns == stamp


def test_example_usage_without_arguments(capsys):
    assert _example().main([]) == 2
    assert "embed_in_pydra.py" in capsys.readouterr().out


def test_engine_option_and_slurmgraph_refused(tmp_path):
    from asl_pipeline.cli.parser import parse_args

    bids = tmp_path / "bids"
    bids.mkdir()
    assert parse_args([str(bids), str(tmp_path / "o"), "participant"]).engine == "nipype"
    args = parse_args([str(bids), str(tmp_path / "o"), "participant", "--engine", "pydra"])
    assert args.engine == "pydra"
    with pytest.raises(SystemExit):
        parse_args(
            [str(bids), str(tmp_path / "o"), "participant", "--engine", "pydra"]
            + ["--plugin", "SLURMGraph"]
        )


def test_pydra_workflow_is_the_nipype_execution_graph(tmp_path):
    """Two multi-PLD subjects: one Pydra sub-workflow each, one task per node
    of Nipype's execution graph, fed by the tasks of the node's sources."""
    from asl_pipeline.bids import collect_runs
    from asl_pipeline.config import Config
    from asl_pipeline.engines.pydra import _task_name, execution_graph, init_pydra_wf
    from asl_pipeline.workflows.base import init_asl_pipeline_wf

    small = dict(shape=(24, 28, 8), voxel_size=(6.0, 6.0, 12.0), resolution=2)
    simulate_dataset(
        tmp_path / "bids", n_subjects=2, seed=3, plds=[1.0, 1.5, 2.0], pld_repeats=2, **small
    )
    runs = collect_runs(tmp_path / "bids")
    config = Config(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", engine="pydra")
    graph = execution_graph(init_asl_pipeline_wf(config, runs))
    wf = init_pydra_wf(config, runs, tmp_path / "nodes")
    assert sorted(wf.name2obj) == ["sub_01_wf", "sub_02_wf"]
    assert {"fit_multi_pld", "to_mni"} <= {n.name for n in graph.nodes()}
    for node in graph.nodes():
        sub = wf.name2obj[node.itername.split(".")[1]]
        task = sub.name2obj[_task_name(node)]
        fed_by = {
            getattr(task.inputs, f).name for f in attrs_names(task.inputs) if f.startswith("in_")
        }
        assert fed_by == {_task_name(src) for src in graph.predecessors(node)}
    assert sum(len(wf.name2obj[s].nodes) for s in wf.name2obj) == len(graph.nodes())


def attrs_names(inputs) -> list[str]:
    import attr

    return [f.name for f in attr.fields(type(inputs))]


def _images(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.nii.gz"))
    }


@pytest.mark.slow
def test_simulated_subject_same_images_with_both_engines(tmp_path):
    from asl_pipeline.cli.run import main

    bids = tmp_path / "bids"
    # the small grid and a 4 mm T1w: the engines' equality does not need the
    # 1 mm anatomy, whose registration and segmentation took most of the time
    small = {**SIM_BIDS_SMALL, "n_pairs": 12, "motion": True, "outliers": True}
    simulate_dataset(bids, n_subjects=1, seed=7, **small)
    common = ["participant", "--output-spaces", "asl", "--nprocs", "2"]

    def run(engine, base):
        argv = [str(bids), str(base / "out"), *common, "--work-dir", str(base / "work")]
        assert main([*argv, "--engine", engine]) == 0
        return _images(base / "out")

    nipype_images = run("nipype", tmp_path / "nipype")
    pydra_images = run("pydra", tmp_path / "pydra")
    assert len(nipype_images) >= 10
    # byte for byte: the same interfaces on the same inputs (ITK seeded and
    # its thread count fixed by run_workflow for both engines)
    assert pydra_images == nipype_images
    # resume: the same command again reuses every task from the Pydra cache
    results = sorted((tmp_path / "pydra/work/pydra").rglob("_result.pklz"))
    stamps = [p.stat().st_mtime_ns for p in results]
    assert run("pydra", tmp_path / "pydra") == nipype_images
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert sorted((tmp_path / "pydra/work/pydra").rglob("_result.pklz")) == results


def _slurm_running() -> bool:
    import shutil
    import subprocess

    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return res.returncode == 0 and any(s.startswith(("idle", "mix")) for s in res.stdout.split())


@pytest.mark.slurm
def test_slurm_worker_runs_the_tasks_as_jobs(tmp_path, pcasl_run, monkeypatch):
    """run_pydra's SLURM choice: each task an sbatch job, same answer as above."""
    from asl_pipeline.engines.pydra import run_pydra

    if not _slurm_running():
        pytest.skip("no SLURM cluster is running (start one with ../shared/ci/setup-slurm.sh)")
    monkeypatch.setenv("LOGNAME", "root")
    files, mask, cbf, _, _ = pcasl_run
    argv = [files[k] for k in ("asl_file", "aslcontext", "metadata", "m0_file", "m0_metadata")]
    cache = tmp_path / "cache"
    wf = _example().build_workflow(*argv, mask, cache)
    result = run_pydra(wf, "SLURM", 1, cache, {"sbatch_args": "--mem=1G"})
    mean = nb.load(result.output.mean_cbf).get_fdata()
    np.testing.assert_allclose(mean[1:], cbf[1:], rtol=1e-5)
    # the slurm worker leaves its sbatch scripts and job logs in the cache
    assert list(cache.rglob("slurm-*.out")), "the tasks did not run as SLURM jobs"


def test_failed_task_raises_and_leaves_its_traceback(tmp_path, pcasl_run):
    from asl_pipeline.engines.pydra import run_pydra

    files, mask, _, _, _ = pcasl_run
    missing = str(tmp_path / "missing_asl.nii.gz")
    task = m0_task(**{**files, "asl_file": missing}, mask=mask)
    with pytest.raises(Exception, match="'asl_file' trait .* existing file"):
        run_pydra(task, "Linear", 1, tmp_path / "cache")
    (error,) = (tmp_path / "cache").rglob("_error.pklz")
    assert error.parent.parent == tmp_path / "cache"


def test_run_pydra_refuses_a_plugin_without_worker(tmp_path):
    from asl_pipeline.engines.pydra import run_pydra

    with pytest.raises(ValueError, match="SLURMGraph has no Pydra worker"):
        run_pydra(m0_task(), "SLURMGraph", 1, tmp_path)
