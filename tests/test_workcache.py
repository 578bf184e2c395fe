"""The work folder's cache is stamped with the code that made it (asl_pipeline.cli.workcache)."""

from __future__ import annotations

import json

from _bidsfactory import make_dataset, snapshot

from asl_pipeline.cli import workcache
from asl_pipeline.cli.run import EXIT_DATA_ERROR, main


def _stale(work):
    """A work folder stamped by other code, with a cache in it."""
    (work / "asl_pipeline_wf" / "sub_01_wf").mkdir(parents=True)
    stamp = dict(workcache.code_stamp(), source_sha256="0" * 64)
    (work / workcache.STAMP_NAME).write_text(json.dumps(stamp))


def test_stamp_follows_the_source(tmp_path, monkeypatch):
    src = tmp_path / "module.py"
    src.write_text("X = 1\n")
    monkeypatch.setattr(workcache, "_package_files", lambda: [("asl_pipeline/module.py", src)])
    workcache.code_stamp.cache_clear()
    try:
        first = workcache.code_stamp()
        workcache.code_stamp.cache_clear()
        assert workcache.code_stamp() == first  # the same source, the same stamp
        src.write_text("X = 2\n")
        workcache.code_stamp.cache_clear()
        assert workcache.code_stamp()["source_sha256"] != first["source_sha256"]
    finally:
        workcache.code_stamp.cache_clear()


def test_the_installed_package_is_hashed():
    names = [name for name, _ in workcache._package_files()]
    for expected in (
        "asl_pipeline/outliers.py",
        "asl_pipeline.workflows/asl.py",
        "asl_pipeline.interfaces/registration.py",
        "asl_pipeline/data/dwan_lfn_l1.pt",
    ):
        assert expected in names
    assert not any("__pycache__" in name for name in names)


def test_matching_stamp_empty_folder_and_clean_are_fine(tmp_path):
    work = tmp_path / "w"
    assert workcache.cache_problems(work) == []  # not there yet
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    assert workcache.cache_problems(work) == []  # nothing cached
    assert workcache.prepare_work_dir(work) == []
    assert json.loads((work / workcache.STAMP_NAME).read_text()) == workcache.code_stamp()
    (work / "asl_pipeline_wf").mkdir()
    assert workcache.cache_problems(work) == []  # stamped by this code


def test_other_code_is_refused_and_clean_removes_only_the_cache(tmp_path):
    work = tmp_path / "w"
    _stale(work)
    (work / "notes.txt").write_text("mine")
    (problem,) = workcache.cache_problems(work)
    text = str(problem)
    assert workcache.STAMP_NAME in text and "source_sha256" in text
    assert "--clean-workdir" in text and "--work-dir" in text
    assert workcache.cache_problems(work, clean=True) == []
    assert workcache.prepare_work_dir(work, clean=True) == ["asl_pipeline_wf"]
    assert not (work / "asl_pipeline_wf").exists()
    assert (work / "notes.txt").read_text() == "mine"
    assert workcache.cache_problems(work) == []


def test_a_cache_without_a_stamp_is_refused(tmp_path):
    work = tmp_path / "w"
    (work / "pydra").mkdir(parents=True)
    (problem,) = workcache.cache_problems(work)
    assert "did not stamp its code" in str(problem) and "pydra" in str(problem)


def test_the_command_refuses_a_stale_work_folder_before_any_work(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    work, out = tmp_path / "w", tmp_path / "out"
    _stale(work)
    before_input, before_work = snapshot(root), snapshot(work)
    capsys.readouterr()
    assert main([str(root), str(out), "participant", "-w", str(work)]) == EXIT_DATA_ERROR
    err = capsys.readouterr().err
    assert workcache.STAMP_NAME in err and "--clean-workdir" in err
    assert not out.exists()
    assert snapshot(root) == before_input and snapshot(work) == before_work
    # the check is part of the validation, so --validate-only (which writes no cache) skips it
    assert main([str(root), str(out), "participant", "-w", str(work), "--validate-only"]) == 0
