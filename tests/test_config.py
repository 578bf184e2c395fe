"""The run configuration: built from the arguments, TOML round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _bidsfactory import make_dataset

from asl_pipeline.cli.parser import parse_args
from asl_pipeline.config import Config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cfg") / "ds")


def test_from_args_and_toml_round_trip(dataset, tmp_path):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --mem=4G\n  max_jobs: 8\n")
    args = parse_args(
        [str(dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
         "--participant-label", "01", "--plugin-config", str(plugin), "--nprocs", "2",
         "--output-spaces", "asl", "T1w", "--no-denoise", "--seed", "11"]
    )  # fmt: skip
    config = Config.from_args(args)
    assert config.bids_dir == dataset.resolve() and isinstance(config.work_dir, Path)
    assert config.participant_label == ["01"] and config.plugin == "SLURM"
    assert config.plugin_args == {"sbatch_args": "--mem=4G", "max_jobs": 8}
    assert config.mem_gb is None and config.dwan_weights is None
    path = config.to_toml(tmp_path / "asl_pipeline.toml")
    text = path.read_text()
    assert "[asl_pipeline]" in text and "seed = 11" in text and "mem_gb" not in text
    again = Config.from_toml(path)
    assert again == config
    assert again.mem_gb is None and again.output_spaces == ["asl", "T1w"]
    assert again.plugin_config == plugin.resolve()


def test_method_defaults_and_plugin_settings(tmp_path):
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "o")
    assert config.effective_outlier_threshold == 2.0  # PAOCSL, the study's batch
    assert (
        Config(bids_dir="b", output_dir="o", outlier_method="score").effective_outlier_threshold
        == 2.5
    )
    assert (
        Config(bids_dir="b", output_dir="o", outlier_method="aoc").effective_outlier_threshold
        == 0.17
    )
    assert (
        Config(bids_dir="b", output_dir="o", outlier_method="none").effective_outlier_threshold
        is None
    )
    assert (
        Config(bids_dir="b", output_dir="o", outlier_threshold=1.5).effective_outlier_threshold
        == 1.5
    )
    config = Config(bids_dir="b", output_dir="o", nprocs=4, mem_gb=6.0)
    assert config.plugin_settings == {
        "plugin": "MultiProc",
        "plugin_args": {"n_procs": 4, "memory_gb": 6.0},
    }
    config = Config(bids_dir="b", output_dir="o", plugin="MultiProc", plugin_args={"n_procs": 2})
    assert config.plugin_settings["plugin_args"] == {"n_procs": 2}
    config = Config(bids_dir="b", output_dir="o", plugin="Linear", nprocs=4)
    assert config.plugin_settings == {"plugin": "Linear", "plugin_args": {}}
    assert isinstance(Config(bids_dir="b", output_dir="o").bids_dir, Path)


@pytest.mark.parametrize(
    "bad",
    [
        {"outlier_method": "median"},
        {"plugin": "Condor"},
        {"quantification": "fancy"},
        {"registration_backend": "fsl"},
        {"output_spaces": ["fsaverage"]},
    ],
)
def test_invalid_values(bad):
    with pytest.raises(ValueError, match="unknown"):
        Config(bids_dir="b", output_dir="o", **bad)


def test_unknown_toml_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[asl_pipeline]\nbids_dir = "b"\noutput_dir = "o"\nsmoothing = 3\n')
    with pytest.raises(ValueError, match="unknown configuration key"):
        Config.from_toml(path)


def test_import_has_no_side_effects(tmp_path):
    """Importing the config, reader and CLI modules creates no file, sets up no
    logging, and does not pull in nipype (the reader is core code)."""
    code = (
        "import logging, sys\n"
        "import asl_pipeline.config, asl_pipeline.bids, asl_pipeline.cli.run\n"
        "import asl_pipeline.cli.parser\n"
        "assert not logging.getLogger().handlers\n"
        "assert 'nipype' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_option_reaches_the_config(dataset, tmp_path):
    from dataclasses import fields

    args = parse_args([str(dataset), str(tmp_path / "o"), "participant"])
    names = {f.name for f in fields(Config)}
    assert set(vars(args)) <= names, set(vars(args)) - names


def test_nested_nulls_are_dropped_from_toml(tmp_path):
    config = Config(
        bids_dir="b", output_dir="o", plugin="SLURM", plugin_args={"sbatch_args": None, "x": 1}
    )
    again = Config.from_toml(config.to_toml(tmp_path / "c.toml"))
    assert again.plugin_args == {"x": 1} and again.bids_dir == Path("b")


def test_quantification_constants_given_on_the_command_line(dataset, tmp_path):
    argv = [str(dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]
    config = Config.from_args(parse_args(argv))
    assert config.quant_overrides == {}  # the defaults (and the sidecar's efficiency)
    args = parse_args(
        [*argv, "--blood-t1", "1.5", "--partition-coefficient", "0.98",
         "--labeling-efficiency", "0.8"]
    )  # fmt: skip
    config = Config.from_args(args)
    given = {"t1b": 1.5, "lam": 0.98, "labeling_efficiency": 0.8}
    assert config.quant_overrides == given
    again = Config.from_toml(config.to_toml(tmp_path / "c.toml"))
    assert again == config and again.quant_overrides == given
    only = Config.from_args(parse_args([*argv, "--blood-t1", "1.5"]))
    assert only.quant_overrides == {"t1b": 1.5}
    with pytest.raises(ValueError, match="blood_t1 1650.0 is outside 0.5-3.5 s"):
        Config(bids_dir="b", output_dir="o", blood_t1=1650.0)
