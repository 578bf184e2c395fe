"""The asl-pipeline command: argument parsing, validation and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from _bidsfactory import make_dataset, snapshot

from asl_pipeline.cli import run as cli_run
from asl_pipeline.cli.parser import parse_args
from asl_pipeline.cli.run import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cli") / "ds")


def _argv(dataset, tmp_path, *extra):
    return [str(dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"), *extra]


def test_defaults(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse_args([str(dataset), "out", "participant"])
    assert args.bids_dir == dataset.resolve() and args.output_dir == tmp_path / "out"
    assert args.work_dir == tmp_path / "work"
    assert args.participant_label is None and args.session_label is None
    assert args.plugin == "MultiProc" and args.plugin_args == {}
    assert args.omp_nthreads == 1  # reproducible ANTs registrations
    assert args.registration_backend == "embedded" and args.outlier_method == "paocsl"
    assert args.outlier_threshold is None
    # evidence-based defaults (benchmarks/RESULTS.md, "Validation panel")
    assert not args.denoise and not args.nuisance_regression and args.smoothing_fwhm == 0.0
    assert args.zigzag_method == "interpolate" and args.reslice_mode == "volume"
    assert args.output_spaces == ["asl", "MNI152NLin2009aSym"]
    assert args.m0_scale == 1.0 and args.quantification == "white-paper"
    assert not args.validate_only and args.seed == 0 and not args.clean_workdir
    assert args.verbosity == 0


def test_options(dataset, tmp_path):
    args = parse_args(
        _argv(dataset, tmp_path)
        + ["--participant-label", "sub-01", "02", "01", "--session_label", "ses-a",
           "--nprocs", "4", "--omp-nthreads", "2", "--mem-gb", "7.5", "--plugin", "Linear",
           "--outlier-method", "score", "--outlier-threshold", "2.5", "--no-denoise",
           "--smoothing-fwhm", "0", "--no-nuisance-regression", "--output-spaces", "asl",
           "MNI152NLin2009aSym", "--m0-scale", "10", "--quantification", "asltbx",
           "--validate-only", "--seed", "7", "--clean-workdir", "-vv"]
    )  # fmt: skip
    assert args.participant_label == ["01", "02"] and args.session_label == ["a"]
    assert (args.nprocs, args.omp_nthreads, args.mem_gb, args.plugin) == (4, 2, 7.5, "Linear")
    assert args.outlier_method == "score" and args.outlier_threshold == 2.5
    assert not args.denoise and not args.nuisance_regression and args.smoothing_fwhm == 0
    assert args.output_spaces == ["asl", "MNI152NLin2009aSym"]
    assert args.m0_scale == 10 and args.quantification == "asltbx"
    assert args.validate_only and args.seed == 7 and args.clean_workdir
    assert args.verbosity == 2


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("args.yml", "plugin: SLURM\nplugin_args:\n  sbatch_args: --mem=4G\n"),
        ("args.json", json.dumps({"plugin": "SLURM", "plugin_args": {"sbatch_args": "--mem=4G"}})),
        ("flat.yaml", "sbatch_args: --mem=4G\n"),
    ],
)
def test_plugin_config(dataset, tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    plugin = [] if name != "flat.yaml" else ["--plugin", "SLURM"]
    args = parse_args(_argv(dataset, tmp_path, "--plugin-config", str(path), *plugin))
    assert args.plugin == "SLURM"
    assert args.plugin_args == {"sbatch_args": "--mem=4G"}


def test_command_line_plugin_wins_over_file(dataset, tmp_path):
    path = tmp_path / "p.yml"
    path.write_text("plugin: SLURM\nplugin_args: {n_procs: 3}\n")
    args = parse_args(_argv(dataset, tmp_path, "--plugin-config", str(path), "--plugin", "Linear"))
    assert args.plugin == "Linear" and args.plugin_args == {"n_procs": 3}


def _usage_error(tmp_path, capsys, argv, words):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("asl-pipeline: error:"), err
    assert words in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--participant-label", "../02"], "without path separators or '..'"),
        (["--participant-label", "sub-01/anat"], "without path separators"),
        (["--session-label", "a..b"], "'..'"),
        (["--nprocs", "0"], "must be >= 1"),
        (["--omp-nthreads", "4", "--nprocs", "2"], "exceeds --nprocs"),
        (["--mem-gb", "-1"], "must be > 0"),
        (["--m0-scale", "0"], "must be > 0"),
        (["--smoothing-fwhm", "nan"], "must be >= 0"),
        (["--outlier-method", "median"], "invalid choice"),
        (["--output-spaces", "fsaverage"], "invalid choice"),
        (["--quantification", "fancy"], "invalid choice"),
        (["--resume", "--clean-workdir"], "not allowed with"),
        (["--dwan-weights", "/nonexistent/w.pt"], "does not exist"),
        (["--plugin-config", "/nonexistent/p.yml"], "does not exist"),
    ],
)
def test_usage_errors(dataset, tmp_path, capsys, extra, words):
    _usage_error(tmp_path, capsys, _argv(dataset, tmp_path, *extra), words)


def test_broken_plugin_config(dataset, tmp_path, capsys):
    path = tmp_path / "p.yml"
    path.write_text("plugin: [unclosed\n")
    _usage_error(
        tmp_path, capsys, _argv(dataset, tmp_path, "--plugin-config", str(path)), "cannot be read"
    )
    path.write_text("plugin: Condor\n")
    _usage_error(
        tmp_path, capsys, _argv(dataset, tmp_path, "--plugin-config", str(path)), "unknown plugin"
    )


def test_missing_bids_dir(tmp_path, capsys):
    argv = [
        str(tmp_path / "nope"),
        str(tmp_path / "out"),
        "participant",
        "-w",
        str(tmp_path / "w"),
    ]
    _usage_error(tmp_path, capsys, argv, "does not exist")


def test_analysis_level_is_participant_or_group(dataset, tmp_path, capsys):
    argv = [str(dataset), str(tmp_path / "out"), "session", "-w", str(tmp_path / "w")]
    _usage_error(tmp_path, capsys, argv, "invalid choice")
    # the group level parses; without participant outputs it stops (tests/test_group.py)
    assert main([str(dataset), str(tmp_path / "out"), "group"]) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["output", "work", "same", "parent"])
def test_outputs_inside_the_input_are_refused(tmp_path, capsys, where):
    root = make_dataset(tmp_path / "ds")
    before = snapshot(root)
    out, work = tmp_path / "out", tmp_path / "w"
    if where == "output":
        out = root / "sub-01" / "out"
    elif where == "work":
        work = root / "work"
    elif where == "same":
        out = root
    else:
        out = tmp_path
    capsys.readouterr()
    assert main([str(root), str(out), "participant", "-w", str(work)]) == 2
    words = "contains the input dataset" if where == "parent" else "inside the input dataset"
    assert words in capsys.readouterr().err
    assert snapshot(root) == before
    assert not (root / "sub-01" / "out").exists() and not (root / "work").exists()


def test_output_under_derivatives_is_allowed(tmp_path):
    root = make_dataset(tmp_path / "ds")
    out = root / "derivatives" / "asl_pipeline"
    args = parse_args([str(root), str(out), "participant", "-w", str(tmp_path / "w")])
    assert args.output_dir == out
    assert main([str(root), str(out), "participant", "--validate-only"]) == 0
    assert not out.exists()


def test_spm_backend(dataset, tmp_path):
    args = parse_args(_argv(dataset, tmp_path, "--registration-backend", "spm"))
    assert args.registration_backend == "spm" and args.spm_cmd is None
    cmd = "/opt/spm12/run_spm12.sh /opt/mcr/v97 script"
    args = parse_args(_argv(dataset, tmp_path, "--registration-backend", "spm", "--spm-cmd", cmd))
    assert args.spm_cmd == cmd


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    assert "filtering" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert "asl-pipeline 0.1.0" in capsys.readouterr().out


def test_validate_only_prints_and_creates_nothing(dataset, tmp_path, capsys):
    before = snapshot(dataset)
    assert main(_argv(dataset, tmp_path, "--validate-only", "--participant-label", "sub-01")) == 0
    out = capsys.readouterr().out
    assert "sub-01:" in out and "3 control/label pairs (control first)" in out
    assert "1 ASL run(s) valid, 0 warning(s)." in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()
    assert snapshot(dataset) == before


def test_processing_hands_config_and_runs_to_the_workflow(dataset, tmp_path, monkeypatch):
    seen = {}

    def fake(config, runs):
        seen.update(config=config, runs=runs)
        return 0

    monkeypatch.setattr(cli_run, "_run_workflow", fake)
    assert main(_argv(dataset, tmp_path, "--outlier-method", "aoc", "--seed", "3")) == 0
    assert seen["config"].outlier_method == "aoc" and seen["config"].seed == 3
    assert seen["config"].effective_outlier_threshold == 0.17
    assert [r.subject for r in seen["runs"]] == ["01"]


def test_unexpected_error_is_one_line(dataset, tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk\nfull")

    monkeypatch.setattr("asl_pipeline.bids.validate_dataset", boom)
    assert main(_argv(dataset, tmp_path)) == 1
    err = capsys.readouterr().err
    assert err == "asl-pipeline: error: RuntimeError: disk full (run with -vv for the traceback)\n"


@pytest.mark.skipif(shutil.which("asl-pipeline") is None, reason="entry point not installed")
def test_console_script(dataset, tmp_path):
    proc = subprocess.run(
        [shutil.which("asl-pipeline"), *_argv(dataset, tmp_path, "--validate-only")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sub-01:" in proc.stdout


def test_module_is_runnable(dataset, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "asl_pipeline.cli.run", str(dataset), str(tmp_path / "o"),
         "participant", "--participant-label", "nope", "-w", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "participant(s) nope not found" in proc.stderr and "Traceback" not in proc.stderr


def test_asltbx_with_background_suppression_warns(tmp_path, capsys):
    root = make_dataset(
        tmp_path / "ds",
        sidecar={"BackgroundSuppression": True, "BackgroundSuppressionNumberPulses": 2},
    )
    argv = [str(root), str(tmp_path / "o"), "participant", "--validate-only"]
    assert main(argv + ["--quantification", "asltbx"]) == 0
    assert "CBF will be overestimated" in capsys.readouterr().err
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
