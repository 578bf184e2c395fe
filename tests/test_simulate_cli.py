"""The asl-simulate command line."""

import json

import pytest

from asl_pipeline.cli import simulate as cli


def test_parse_args_defaults_and_options(tmp_path):
    args = cli.parse_args([str(tmp_path / "out")])
    assert args.n_subjects == 3 and args.seed == 0 and args.n_pairs == 40
    assert args.labeling == "pcasl" and args.readout == "2d"
    args = cli.parse_args(
        [
            str(tmp_path),
            "--labeling",
            "PASL",
            "--readout",
            "3d",
            "--no-motion",
            "--lesion",
            "--noise-scale",
            "0.5",
            "--n-pairs",
            "10",
        ]
    )
    assert args.labeling == "pasl" and args.readout == "3d" and args.no_motion
    assert args.lesion and args.noise_scale == 0.5 and args.n_pairs == 10
    assert cli.parse_args([str(tmp_path), "--m0-type", "Included"]).m0_type == "included"


def test_parse_args_multi_pld_options(tmp_path):
    args = cli.parse_args([str(tmp_path), "--plds", "0.5", "1.0", "1.5", "--pld-repeats", "4"])
    assert args.plds == [0.5, 1.0, 1.5] and args.pld_repeats == 4
    assert cli._multi_pld_kwargs(args) == {"plds": [0.5, 1.0, 1.5], "pld_repeats": 4}
    args = cli.parse_args([str(tmp_path), "--plds", "1", "2", "--t1-after-arrival", "Blood"])
    assert cli._multi_pld_kwargs(args) == {"plds": [1.0, 2.0], "t1_after_arrival": "blood"}
    # a single-PLD run passes none of them, so the simulator runs exactly as before
    assert cli._multi_pld_kwargs(cli.parse_args([str(tmp_path)])) == {}


def test_fieldmap_option_needs_distortion_and_reaches_the_simulator(tmp_path):
    args = cli.parse_args([str(tmp_path), "--distortion", "--fieldmap", "PhaseDiff"])
    assert cli._multi_pld_kwargs(args) == {"distortion": True, "fieldmap": "phasediff"}
    # the default writes the PEPOLAR M0 exactly as before: no new keyword
    args = cli.parse_args([str(tmp_path), "--distortion"])
    assert cli._multi_pld_kwargs(args) == {"distortion": True}


def test_impossible_plds_exit_1_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main([str(out), "--n-subjects", "1", "--plds", "1.0"]) == 1
    err = capsys.readouterr().err
    assert "plds" in err and "Fix:" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--n-subjects", "0"],
        ["--labeling", "fair"],
        ["--noise-scale", "-1"],
        ["--pld-repeats", "2"],
        ["--plds", "1", "2", "--pld-repeats", "0"],
        ["--plds", "1", "2", "--t1-after-arrival", "csf"],
        ["--fieldmap", "phasediff"],
        ["--distortion", "--fieldmap", "phase1"],
    ],
)
def test_bad_command_line_exits_2(tmp_path, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main([str(tmp_path / "out"), *argv])
    assert exc.value.code == 2


def test_non_empty_output_is_refused_with_exit_1(tmp_path, capsys):
    (tmp_path / "something.txt").write_text("x")
    assert cli.main([str(tmp_path), "--n-subjects", "1"]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "Fix:" in err


@pytest.mark.slow
def test_cli_writes_a_dataset_with_progress(tmp_path, capsys):
    out = tmp_path / "ds"
    code = cli.main(
        [
            str(out),
            "--n-subjects",
            "1",
            "--n-pairs",
            "2",
            "--seed",
            "4",
            "--labeling",
            "pasl",
            "--readout",
            "3d",
            "--no-outliers",
            "--t1w-voxel-size",
            "2",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "[1/1] sub-01" in printed and "wrote" in printed
    md = json.loads((out / "sub-01/perf/sub-01_asl.json").read_text())
    assert md["ArterialSpinLabelingType"] == "PASL" and md["MRAcquisitionType"] == "3D"
    assert md["TotalAcquiredPairs"] == 2
    assert (out / "sub-01/anat/sub-01_T1w.nii.gz").is_file()
