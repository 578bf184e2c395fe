"""``--seed`` is an input of the nodes that use randomness, so it reaches their hash.

A rerun in the same work directory with another seed must run the ANTs
registrations again (their metric is sampled at random); the same seed must
reuse them. Nipype decides by the hash of a node's inputs, so the seed has to
be one of them rather than an environment variable.
"""

from __future__ import annotations

import pytest

from asl_pipeline.bids import collect_runs
from asl_pipeline.cli.parser import parse_args
from asl_pipeline.config import Config
from asl_pipeline.workflows.base import init_asl_pipeline_wf
from tests._bidsfactory import make_dataset

#: The nodes whose result depends on the seed (embedded backend).
SEEDED = ("t1w_preproc", "asl_to_t1w")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("bids"))


def _hashes(dataset, tmp_path, *seed) -> dict[str, str]:
    args = parse_args(
        [str(dataset), str(tmp_path / "out"), "participant", "--work-dir", str(tmp_path / "w")]
        + (["--seed", str(seed[0])] if seed else [])
    )
    config = Config.from_args(args)
    wf = init_asl_pipeline_wf(config, collect_runs(config.bids_dir))
    nodes = {n.name: n for n in wf._get_all_nodes()}
    return {
        name: nodes[name].inputs.get_hashval(hash_method="content")[1]
        for name in (*SEEDED, "compute_cbf")
    } | {f"{name}.seed": nodes[name].inputs.seed for name in SEEDED}


def test_seed_is_a_node_input_and_changes_the_hash(dataset, tmp_path):
    five = _hashes(dataset, tmp_path, 5)
    seven = _hashes(dataset, tmp_path, 7)
    again = _hashes(dataset, tmp_path, 5)
    for name in SEEDED:
        assert five[f"{name}.seed"] == 5 and seven[f"{name}.seed"] == 7
        assert five[name] != seven[name], f"{name} would be reused with another seed"
        assert five[name] == again[name], f"{name} would rerun with the same seed"
    # a node without randomness is reused whatever the seed
    assert five["compute_cbf"] == seven["compute_cbf"]


def test_default_seed_is_one(dataset, tmp_path):
    default = _hashes(dataset, tmp_path)
    one = _hashes(dataset, tmp_path, 1)
    assert all(default[f"{name}.seed"] == 1 for name in SEEDED)
    assert default == one


def test_registration_takes_its_seed_from_the_argument(monkeypatch):
    from asl_pipeline.registration import _ants

    monkeypatch.setenv("ANTS_RANDOM_SEED", "99")  # ignored: the seed is an argument
    ants = _ants(7)
    assert ants.config._random_seed == 7
