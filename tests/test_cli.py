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
    assert args.zigzag_method == "detect" and args.reslice_mode == "volume"
    # the parser keeps its own (import-free) copy of the core's method names
    from asl_pipeline import drift, motion, multipld
    from asl_pipeline.cli.parser import build_parser

    choices = {a.dest: a.choices for a in build_parser()._actions}
    assert tuple(choices["zigzag_method"]) == motion.ZIGZAG_METHODS
    assert tuple(choices["reslice_mode"]) == motion.RESLICE_MODES
    assert tuple(choices["multipld_t1"]) == multipld.T1_TISSUE_SOURCES
    assert tuple(choices["multipld_att"]) == multipld.ATT_ESTIMATES
    assert tuple(choices["drift_correction"]) == drift.CHOICES
    assert args.drift_correction == "auto"
    assert args.m0_recovery == "tissue" and args.multipld_t1 == "gm-curve"
    assert args.multipld_att == "auto"
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
        (["--output-spaces", "fsaverage"], "is a surface space"),
        (["--output-spaces", "MNI152NLin2009cAsym:cohort-1"], "res-<n>"),
        (["--quantification", "fancy"], "invalid choice"),
        (["--resume", "--clean-workdir"], "not allowed with"),
        (["--dwan-weights", "/nonexistent/w.pt"], "does not exist"),
        (["--plugin-config", "/nonexistent/p.yml"], "does not exist"),
        # a constant in the wrong unit is refused before any work
        (["--blood-t1", "1650"], "outside 0.5-3.5 s: give it in seconds, e.g. 1.65"),
        (["--partition-coefficient", "90"], "outside 0.5-1.2 mL/g"),
        (["--labeling-efficiency", "85"], "as a fraction, e.g. 0.85"),
        (["--labeling-efficiency", "nan"], "outside 0.1-1"),
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
    assert "Quantification constants" not in out  # the defaults: nothing to say
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()
    assert snapshot(dataset) == before
    argv = _argv(dataset, tmp_path, "--validate-only", "--blood-t1", "1.5")
    assert main([*argv, "--labeling-efficiency", "0.8"]) == 0
    out = capsys.readouterr().out
    assert (
        "Quantification constants for every run: blood T1 1.5 s, labeling efficiency 0.8." in out
    )


def test_processing_hands_config_and_runs_to_the_workflow(dataset, tmp_path, monkeypatch):
    seen = {}

    def fake(config, runs, **_):
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


# -- nipreps spellings, units and the abbreviation trap ---------------------


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--mem-g", "8"], "unrecognized arguments: --mem-g"),  # was --mem-gb 8
        (["--nproc", "2"], "unrecognized arguments: --nproc"),
        (["--work", "w"], "unrecognized arguments: --work"),
        (["--skip-bids", "--validate-only"], "unrecognized arguments: --skip-bids"),
    ],
)
def test_abbreviations_are_refused(dataset, tmp_path, capsys, option, words):
    _usage_error(tmp_path, capsys, _argv(dataset, tmp_path, *option), words)


@pytest.mark.parametrize(
    ("text", "gb"),
    [("16000", 16.0), ("500M", 0.5), ("500MB", 0.5), ("8G", 8.0), ("8GB", 8.0),
     ("8gb", 8.0), ("1.5G", 1.5), ("2T", 2000.0), ("2TB", 2000.0), ("4000000K", 4.0)],
)  # fmt: skip
def test_mem_takes_mb_or_units(dataset, tmp_path, text, gb):
    """fMRIPrep's --mem: a bare number is MB; the abbreviation trap read
    `--mem 16000` as 16000 GB."""
    for option in ("--mem", "--mem-mb", "--mem_mb"):
        args = parse_args(_argv(dataset, tmp_path, option, text))
        assert args.mem_gb == pytest.approx(gb), option


def test_mem_gb_stays_in_gb(dataset, tmp_path):
    assert parse_args(_argv(dataset, tmp_path, "--mem-gb", "7.5")).mem_gb == 7.5
    assert parse_args(_argv(dataset, tmp_path, "--mem_gb", "16")).mem_gb == 16.0


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--mem", "8X"], "is not a memory size"),
        (["--mem", "G"], "is not a memory size"),
        (["--mem", "16000B"], "is not a memory size"),
        (["--mem=-8G"], "is not a memory size"),
        (["--mem", "0"], "must be > 0"),
        (["--mem", "8G", "--mem-gb", "8"], "not allowed with"),
    ],
)
def test_mem_usage_errors(dataset, tmp_path, capsys, extra, words):
    _usage_error(tmp_path, capsys, _argv(dataset, tmp_path, *extra), words)


@pytest.mark.parametrize("option", ["--nprocs", "--nthreads", "--n-cpus", "--n_cpus"])
def test_nprocs_spellings(dataset, tmp_path, option):
    args = parse_args(_argv(dataset, tmp_path, option, "3", "--omp_nthreads", "2"))
    assert (args.nprocs, args.omp_nthreads) == (3, 2)


def test_work_dir_short_and_long(dataset, tmp_path):
    assert parse_args(_argv(dataset, tmp_path)).work_dir == tmp_path / "w"  # -w
    argv = [str(dataset), str(tmp_path / "o"), "participant", "--work-dir", str(tmp_path / "x")]
    assert parse_args(argv).work_dir == tmp_path / "x"


@pytest.mark.parametrize("labels", [["01"], ["sub-01"], ["sub-01", "01"]])
def test_participant_label_with_or_without_prefix(dataset, tmp_path, labels):
    for option in ("--participant-label", "--participant_label"):
        assert parse_args(_argv(dataset, tmp_path, option, *labels)).participant_label == ["01"]


@pytest.mark.parametrize(
    ("flags", "verbosity"),
    [([], 0), (["-v"], 1), (["-vv"], 2), (["--verbose", "-v"], 2), (["-q"], -1),
     (["-qq"], -2), (["--quiet"], -1), (["-v", "-q"], 0)],
)  # fmt: skip
def test_verbosity(dataset, tmp_path, flags, verbosity):
    args = parse_args(_argv(dataset, tmp_path, *flags))
    assert args.verbosity == verbosity and not hasattr(args, "quiet")


def test_run_control_flags(dataset, tmp_path):
    args = parse_args(_argv(dataset, tmp_path))
    assert not args.stop_on_first_crash and not args.boilerplate_only
    assert not args.skip_bids_validation and args.bids_filter_file is None
    args = parse_args(
        _argv(dataset, tmp_path, "--stop-on-first-crash", "--boilerplate-only",
              "--skip-bids-validation")
    )  # fmt: skip
    assert args.stop_on_first_crash and args.boilerplate_only and args.skip_bids_validation
    args = parse_args(
        _argv(dataset, tmp_path, "--stop_on_first_crash", "--boilerplate_only",
              "--skip_bids_validation")
    )  # fmt: skip
    assert args.stop_on_first_crash and args.boilerplate_only and args.skip_bids_validation


def test_version_matches_the_package(capsys):
    from asl_pipeline import __version__

    with pytest.raises(SystemExit) as exc:
        parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"asl-pipeline {__version__}"


# -- --bids-filter-file ------------------------------------------------------


def _filter_file(tmp_path, data, name="filters.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_bids_filter_file_is_read(dataset, tmp_path):
    from asl_pipeline.config import Config

    data = {"asl": {"acquisition": ["a", "b"], "run": None}, "t1w": {"session": "01"}}
    path = _filter_file(tmp_path, data)
    args = parse_args(_argv(dataset, tmp_path, "--bids-filter-file", str(path)))
    assert args.bids_filter_file == path.resolve()
    config = Config.from_args(args)
    assert config.bids_filters == data
    assert Config.from_toml(config.to_toml(tmp_path / "c.toml")).bids_filter_file == path
    assert Config(bids_dir="b", output_dir="o").bids_filters == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"asl": {"acquisition": "a"}', "is not valid JSON"),
        ('["asl"]', "must hold a JSON object"),
        ('{"bold": {"task": "rest"}}', "query 'bold' is not used by asl-pipeline (use asl, t1w)"),
        ('{"asl": "pcasl"}', "'asl' must map entities to values"),
        ('{"asl": {"acquisition": {"a": 1}}}', "asl.acquisition: a value is a string"),
    ],
)
def test_bad_bids_filter_file(dataset, tmp_path, capsys, text, words):
    path = _filter_file(tmp_path, text)
    argv = _argv(dataset, tmp_path, "--bids-filter-file", str(path))
    _usage_error(tmp_path, capsys, argv, words)
    capsys.readouterr()
    main(argv)
    assert f"--bids-filter-file {path}" in capsys.readouterr().err  # names the file


def test_missing_bids_filter_file(dataset, tmp_path, capsys):
    argv = _argv(dataset, tmp_path, "--bids-filter-file", str(tmp_path / "none.json"))
    _usage_error(tmp_path, capsys, argv, "does not exist")


def _two_acquisitions(root):
    """A second ASL run, acq-b, with its own M0 and a second T1w, acq-hi."""
    perf = root / "sub-01" / "perf"
    for name in ("asl.nii.gz", "asl.json", "aslcontext.tsv", "m0scan.nii.gz"):
        shutil.copy(perf / f"sub-01_{name}", perf / f"sub-01_acq-b_{name}")
    m0 = json.loads((perf / "sub-01_m0scan.json").read_text())
    m0["IntendedFor"] = "perf/sub-01_acq-b_asl.nii.gz"
    (perf / "sub-01_acq-b_m0scan.json").write_text(json.dumps(m0))
    anat = root / "sub-01" / "anat"
    shutil.copy(anat / "sub-01_T1w.nii.gz", anat / "sub-01_acq-hi_T1w.nii.gz")
    return root


@pytest.mark.parametrize(
    ("filters", "asl", "t1w"),
    [
        (None, ["sub-01_acq-b_asl.nii.gz", "sub-01_asl.nii.gz"], "sub-01_T1w.nii.gz"),
        ({"asl": {"acquisition": "b"}}, ["sub-01_acq-b_asl.nii.gz"], "sub-01_T1w.nii.gz"),
        ({"asl": {"acquisition": None}}, ["sub-01_asl.nii.gz"], "sub-01_T1w.nii.gz"),
        ({"t1w": {"acquisition": "hi"}}, None, "sub-01_acq-hi_T1w.nii.gz"),
    ],
)
def test_bids_filters_select_runs(tmp_path, filters, asl, t1w):
    from asl_pipeline.bids import validate_dataset

    root = _two_acquisitions(make_dataset(tmp_path / "ds"))
    runs, errors = validate_dataset(root, bids_filters=filters)
    assert errors == []
    if asl is not None:
        assert sorted(r.asl_file.name for r in runs) == asl
    assert {r.t1w_file.name for r in runs} == {t1w}


def test_bids_filter_file_reaches_the_reader(tmp_path, capsys):
    root = _two_acquisitions(make_dataset(tmp_path / "ds"))
    path = _filter_file(tmp_path, {"asl": {"acquisition": "b"}})
    argv = [str(root), str(tmp_path / "o"), "participant", "--validate-only",
            "--skip-bids-validation"]  # fmt: skip
    assert main(argv) == 0
    assert "2 ASL run(s) valid" in capsys.readouterr().out
    assert main([*argv, "--bids-filter-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 ASL run(s) valid" in out and "sub-01_acq-b_asl.nii.gz" in out
    path = _filter_file(tmp_path, {"asl": {"acquisition": "c"}})
    assert main([*argv, "--bids-filter-file", str(path)]) == 1
    assert "matching the BIDS filter file" in capsys.readouterr().err


# -- the BIDS validator --------------------------------------------------------

needs_validator = pytest.mark.skipif(
    shutil.which("bids-validator-deno") is None, reason="bids-validator-deno is not installed"
)


@needs_validator
def test_bids_validator_errors_stop_the_command(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", drop=("EchoTime",))  # REQUIRED by BIDS for ASL
    argv = [str(root), str(tmp_path / "o"), "participant", "-w", str(tmp_path / "w")]
    before = snapshot(root)
    assert main(argv) == 1
    err = capsys.readouterr().err
    asl = root / "sub-01" / "perf" / "sub-01_asl.nii.gz"
    assert f"asl-pipeline: error: {asl}: SIDECAR_KEY_REQUIRED (EchoTime):" in err
    assert "--skip-bids-validation" in err and "found 1 error(s)" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()
    assert snapshot(root) == before
    assert main([*argv, "--validate-only", "--skip-bids-validation"]) == 0
    assert capsys.readouterr().err == ""


@needs_validator
def test_bids_validator_ignores_subjects_left_out(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    make_dataset(root, subject="02", drop=("EchoTime",))
    argv = [str(root), str(tmp_path / "o"), "participant", "--validate-only"]
    assert main(argv) == 1
    assert "sub-02_asl.nii.gz: SIDECAR_KEY_REQUIRED" in capsys.readouterr().err
    assert main([*argv, "--participant-label", "01"]) == 0
    assert capsys.readouterr().err == ""


@needs_validator
def test_valid_dataset_passes_the_validator(dataset, tmp_path, capsys):
    from asl_pipeline.cli.bidsvalidator import validator_errors

    assert validator_errors(dataset) == []


def test_without_the_validator_one_line_says_so(dataset, tmp_path, capsys, monkeypatch):
    from asl_pipeline.cli import bidsvalidator

    monkeypatch.setattr(bidsvalidator.shutil, "which", lambda name: None)
    assert main(_argv(dataset, tmp_path, "--validate-only")) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "BIDS validation skipped: bids-validator-deno is not installed" in err
    assert "pip install bids-validator-deno" in err
    assert main(_argv(dataset, tmp_path, "--validate-only", "--skip-bids-validation")) == 0
    assert capsys.readouterr().err == ""


# -- --boilerplate-only, -q ----------------------------------------------------


def test_boilerplate_only_writes_the_methods_text(dataset, tmp_path, capsys):
    from asl_pipeline.bids import validate_dataset
    from asl_pipeline.config import Config
    from asl_pipeline.workflows.base import init_asl_pipeline_wf

    before = snapshot(dataset)
    assert main(_argv(dataset, tmp_path, "--boilerplate-only", "--no-denoise")) == 0
    citation = tmp_path / "out" / "logs" / "CITATION.md"
    assert f"Methods text: {citation}" in capsys.readouterr().out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [
        citation.parent.parent.relative_to(tmp_path),
        citation.parent.relative_to(tmp_path),
        citation.relative_to(tmp_path),
    ]  # nothing else: no work directory, no derivatives
    assert snapshot(dataset) == before
    text = citation.read_text()
    assert text.startswith("# Methods\n")
    # the report's methods text of the same workflow, and it follows the options
    config = Config.from_args(parse_args(_argv(dataset, tmp_path, "--no-denoise")))
    workflow = init_asl_pipeline_wf(config, validate_dataset(dataset)[0])
    run_methods = next(iter(workflow._graph.nodes())).methods["runs"][0][1]
    assert run_methods.strip() in text
    assert "DWAN" not in text and "Head motion" in text
    # the quantification constants of the run, and the works cited
    assert "labeling duration 1.8 s, post-labeling delay (PLD) 1.8 s" in text
    assert "## References" in text and "- Alsop DC, Detre JA" in text


def test_quiet_prints_no_run_summary(dataset, tmp_path, capsys):
    assert main(_argv(dataset, tmp_path, "--validate-only", "-q")) == 0
    out = capsys.readouterr().out
    assert "sub-01:" not in out and "1 ASL run(s) valid" in out


def test_quiet_keeps_the_reader_warnings(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", sidecar={"MRAcquisitionType": "2D"})
    argv = [str(root), str(tmp_path / "o"), "participant", "--validate-only", "-q",
            "--skip-bids-validation"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "asl-pipeline: warning: sub-01_asl.nii.gz: 2D acquisition without SliceTiming" in (
        captured.err
    )


@pytest.mark.parametrize("flag", [True, False])
def test_stop_on_first_crash_reaches_nipype(dataset, tmp_path, monkeypatch, flag):
    from nipype import config as nipype_config

    from asl_pipeline.cli.workflow import _configure_nipype
    from asl_pipeline.config import Config
    from asl_pipeline.itkthreads import ENV_VAR

    monkeypatch.setenv(ENV_VAR, "1")  # _configure_nipype sets it
    saved = nipype_config.get("execution", "stop_on_first_crash")
    extra = ["--stop-on-first-crash"] if flag else []
    try:
        _configure_nipype(Config.from_args(parse_args(_argv(dataset, tmp_path, *extra))), tmp_path)
        assert nipype_config.get("execution", "stop_on_first_crash") == str(flag)
    finally:
        nipype_config.set("execution", "stop_on_first_crash", saved)


def test_more_nipreps_spellings(dataset, tmp_path):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: Linear\n")
    for option in ("--use-plugin", "--nipype-plugin-file", "--nipype_plugin_file"):
        args = parse_args(_argv(dataset, tmp_path, option, str(plugin)))
        assert args.plugin_config == plugin.resolve() and args.plugin == "Linear"
    args = parse_args(_argv(dataset, tmp_path, "--random-seed", "5", "--m0_scale", "10"))
    assert args.seed == 5 and args.m0_scale == 10.0
