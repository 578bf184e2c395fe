"""Console output: stage names, progress lines driven by nipype's status
callback, the step count, and the logging levels of -v/-q."""

from __future__ import annotations

import logging
import re
import time
from types import SimpleNamespace

import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from asl_pipeline.cli.console import (
    RUN_STEPS,
    Progress,
    Stage,
    configure_logging,
    format_duration,
    log_level,
    nipype_logging,
    stage_of,
)
from asl_pipeline.cli.workflow import _with_progress, execution_nodes


def add_one(x):
    return x + 1


def fail(x):
    raise ValueError(f"cannot process {x}")


@pytest.fixture
def restore_logging():
    """configure_logging changes process-wide loggers: put them back."""
    names = ("nipype", "asl_pipeline", "nipype.workflow", "nipype.utils", "nipype.interface")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for name, (level, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers


def _node(name, function=add_one):
    return pe.Node(
        niu.Function(function=function, input_names=["x"], output_names=["out"]), name=name
    )


def _tiny_workflow(base_dir, *, failing=False) -> pe.Workflow:
    """The shape of the pipeline's graph, with four Function nodes.

    asl_pipeline_wf / sub_01_wf / anat_wf: t1w_a -> t1w_b
                                / asl_sub_01_asl / cbf_wf: inputnode -> cbf
                                                 / report
    """
    anat = pe.Workflow(name="anat_wf")
    first, second = _node("t1w_a"), _node("t1w_b")
    first.inputs.x = 1
    anat.connect(first, "out", second, "x")
    cbf_wf = pe.Workflow(name="cbf_wf")
    inputnode = pe.Node(niu.IdentityInterface(fields=["x"]), name="inputnode")
    cbf_wf.connect(inputnode, "x", _node("cbf", fail if failing else add_one), "x")
    run = pe.Workflow(name="asl_sub_01_asl")
    run.connect(cbf_wf, "cbf.out", _node("report"), "x")
    subject = pe.Workflow(name="sub_01_wf")
    subject.connect(anat, "t1w_b.out", run, "cbf_wf.inputnode.x")
    top = pe.Workflow(name="asl_pipeline_wf", base_dir=str(base_dir))
    top.add_nodes([subject])
    top.config["execution"]["crashdump_dir"] = str(base_dir)
    return top


_TIME = re.compile(r"\b\d+ (s|min \d\d s|h \d\d min)\b")


def _lines(text: str) -> list[str]:
    """Lines without their timings (nor the processing time: a tiny step
    may take more or less than the 0.5 s that it needs to be shown)."""
    lines = [re.sub(r", [^;]* of processing;", ";", line) for line in text.splitlines()]
    return [_TIME.sub("T", line) for line in lines]


def test_stage_of_the_pipeline_hierarchy():
    top = "asl_pipeline_wf.sub_01_wf"
    assert stage_of(f"{top}.anat_wf") == Stage("01", None, "anatomical (T1w)")
    assert stage_of(f"{top}.asl_sub_01_asl.asl_hmc_wf") == Stage(
        "01", "sub_01_asl", "motion correction"
    )
    assert stage_of(f"{top}.asl_sub_01_asl.resample_final_wf").name == "resampling"
    assert stage_of(f"{top}.asl_sub_01_asl.resample_mean_wf").name == "resampling"
    assert stage_of(f"{top}.asl_sub_01_asl.cbf_wf.inner_wf").name == "CBF"
    assert stage_of(f"{top}.asl_sub_01_asl") == Stage("01", "sub_01_asl", RUN_STEPS)
    assert stage_of(f"{top}.asl_sub_01_asl.new_thing_wf").name == "new thing"
    assert stage_of("other_wf") == Stage(None, None, "other")
    assert stage_of("") == Stage(None, None, "workflow")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (42.4, "42 s"), (59.6, "1 min 00 s"), (185, "3 min 05 s"),
     (7620, "2 h 07 min")],
)  # fmt: skip
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_step_count_is_the_nodes_that_run(tmp_path):
    """The identity node is not a step (nipype removes it before running)."""
    workflow = _tiny_workflow(tmp_path)
    assert len(workflow._get_all_nodes()) == 5
    names = [name for name, _ in execution_nodes(workflow)]
    assert len(names) == 4 and not any("inputnode" in n for n in names)


def test_progress_lines_from_a_linear_run(tmp_path, capsys):
    workflow = _tiny_workflow(tmp_path)
    progress = Progress(execution_nodes(workflow))
    settings = _with_progress({"plugin": "Linear", "plugin_args": {}}, progress)
    workflow.run(**settings)
    captured = capsys.readouterr()
    assert _lines(captured.out) == [
        "sub-01 anatomical (T1w): 2/2 steps done; 2/4 overall, T elapsed, about T left",
        "sub-01 CBF: 1/1 steps done; 3/4 overall, T elapsed, about T left",
        "sub-01 QC and report: 1/1 steps done; 4/4 overall, T elapsed",
    ]
    assert captured.err == ""
    assert progress.done == progress.total == 4


def test_rerun_from_cache_counts_every_step(tmp_path, capsys):
    _tiny_workflow(tmp_path).run(plugin="Linear")
    workflow = _tiny_workflow(tmp_path)
    progress = Progress(execution_nodes(workflow))
    workflow.run(plugin="Linear", plugin_args={"status_callback": progress})
    last = capsys.readouterr().out.splitlines()[-1]  # cached: no processing time
    assert _TIME.sub("T", last) == "sub-01 QC and report: 1/1 steps done; 4/4 overall, T elapsed"


def test_a_failed_step_is_named(tmp_path, capsys):
    workflow = _tiny_workflow(tmp_path, failing=True)
    progress = Progress(execution_nodes(workflow))
    with pytest.raises(RuntimeError):
        workflow.run(plugin="Linear", plugin_args={"status_callback": progress})
    captured = capsys.readouterr()
    assert "asl-pipeline: error: sub-01 CBF: step cbf failed; the steps that need its " in (
        captured.err
    )
    assert _lines(captured.out) == [
        "sub-01 anatomical (T1w): 2/2 steps done; 2/4 overall, T elapsed, about T left"
    ]


def test_progress_arithmetic_with_a_fake_clock():
    """Processing time = summed step times (start to end; 0 for a cached step
    reported without start); ETA = elapsed / done x steps left."""
    now = [100.0]
    hierarchy = "asl_pipeline_wf.sub_01_wf"
    nodes = [
        ("a", f"{hierarchy}.anat_wf"),
        ("b", f"{hierarchy}.anat_wf"),
        ("c", f"{hierarchy}.asl_sub_01_asl.cbf_wf"),
        ("d", f"{hierarchy}.asl_sub_01_asl.cbf_wf"),
    ]
    lines = _Lines()
    progress = Progress(nodes, out=lines, clock=lambda: now[0])

    def event(name, status, at):
        now[0] = at
        progress(SimpleNamespace(itername=name), status)

    event("a", "start", 110)
    event("a", "end", 130)
    event("b", "end", 160)  # cached: no start
    event("zz", "end", 170)  # not in the graph (a map node's subnode): ignored
    event("c", "start", 170)
    event("c", "end", 200)
    event("c", "end", 205)  # twice: counted once
    event("d", "end", 220)
    assert lines == [
        "sub-01 anatomical (T1w): 2/2 steps done, 20 s of processing; 2/4 overall, "
        "1 min 00 s elapsed, about 1 min 00 s left",
        "sub-01 CBF: 2/2 steps done, 30 s of processing; 4/4 overall, 2 min 00 s elapsed",
    ]


class _Lines(list):
    """A stream that keeps the lines written to it."""

    def write(self, text):
        self.extend(text.splitlines())

    def flush(self):
        pass


def _fake_progress(now):
    top = "asl_pipeline_wf.sub_01_wf"
    nodes = [("a", f"{top}.anat_wf"), ("b", f"{top}.anat_wf"), ("c", f"{top}.asl_x_asl.cbf_wf")]
    lines = _Lines()
    progress = Progress(nodes, out=lines, clock=lambda: now[0])
    return progress, lines


def test_still_running_line():
    now = [100.0]
    progress, lines = _fake_progress(now)
    assert progress.running_line() is None
    for name, at in (("b", 105), ("a", 110), ("c", 170)):
        now[0] = at
        progress(SimpleNamespace(itername=name), "start")
    now[0] = 180
    progress(SimpleNamespace(itername="b"), "end")
    now[0] = 400
    assert progress.running_line() == (
        "still running: sub-01 anatomical (T1w): a (4 min 50 s), sub-01 CBF: c (3 min 50 s); "
        "1/3 overall, 5 min 00 s elapsed"
    )


def test_heartbeat_speaks_only_after_a_silence():
    now = [100.0]
    progress, lines = _fake_progress(now)
    now[0] = 110
    progress(SimpleNamespace(itername="a"), "start")
    now[0] = 150
    progress.beat(60)  # 50 s of silence: nothing yet
    assert lines == []
    now[0] = 170
    progress.beat(60)
    assert lines == ["still running: sub-01 anatomical (T1w): a (1 min 00 s); 0/3 overall, "
                     "1 min 10 s elapsed"]  # fmt: skip
    now[0] = 200
    progress.beat(60)  # 30 s after the last line
    assert len(lines) == 1


def test_heartbeat_thread(capsys):
    """The thread prints while the block runs, and stops with it."""
    progress = Progress([("a", "asl_pipeline_wf.sub_01_wf.anat_wf")])
    with progress.heartbeat(interval=0.05):
        progress(SimpleNamespace(itername="a"), "start")
        time.sleep(0.5)
    out = capsys.readouterr().out
    assert out.startswith("still running: sub-01 anatomical (T1w): a (")
    time.sleep(0.2)
    assert capsys.readouterr().out == ""


def test_several_runs_of_a_subject_are_told_apart():
    top = "asl_pipeline_wf.sub_01_wf"
    progress = Progress(
        [("a", f"{top}.asl_sub_01_run_1_asl.cbf_wf"), ("b", f"{top}.asl_sub_01_run_2_asl.cbf_wf")]
    )
    assert progress.label(stage_of(f"{top}.asl_sub_01_run_2_asl.cbf_wf")) == (
        "sub-01 sub_01_run_2_asl CBF"
    )
    single = Progress([("a", f"{top}.asl_sub_01_asl.cbf_wf")])
    assert single.label(stage_of(f"{top}.asl_sub_01_asl.cbf_wf")) == "sub-01 CBF"


def test_slurm_graph_takes_no_callback():
    settings = {"plugin": "SLURMGraph", "plugin_args": {"max_jobs": 2}}
    assert _with_progress(settings, print) == settings
    settings = _with_progress({"plugin": "MultiProc", "plugin_args": {"n_procs": 2}}, print)
    assert settings["plugin_args"] == {"n_procs": 2, "status_callback": print}


@pytest.mark.parametrize(
    ("verbosity", "workflow", "interface"),
    [(-1, "ERROR", "ERROR"), (0, "WARNING", "WARNING"), (1, "INFO", "WARNING"),
     (2, "DEBUG", "DEBUG"), (3, "DEBUG", "DEBUG")],
)  # fmt: skip
def test_log_levels(verbosity, workflow, interface):
    levels = nipype_logging(verbosity)
    assert levels == {
        "workflow_level": workflow,
        "utils_level": workflow,
        "interface_level": interface,
    }
    assert logging.getLevelName(log_level(verbosity)) == workflow


def test_quiet_by_default_nipype_info_with_v(tmp_path, capsys, restore_logging):
    configure_logging(0)
    _tiny_workflow(tmp_path / "quiet").run(plugin="Linear")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    logging.getLogger("nipype.workflow").warning("disk almost full\n  details")
    assert capsys.readouterr().err == "asl-pipeline: warning: disk almost full\n"
    logging.getLogger("nipype.workflow").warning("Storing result file without outputs")
    assert capsys.readouterr().err == ""  # jargon that precedes the error itself

    configure_logging(1)
    _tiny_workflow(tmp_path / "verbose").run(plugin="Linear")
    err = capsys.readouterr().err
    assert "nipype.workflow INFO" in err and "[Node] Executing" in err
    assert len(logging.getLogger("nipype").handlers) == 1  # replaced, not stacked


def test_steps_reported_without_start_have_no_processing_time():
    """MultiProc reports cached steps and those it runs in the main process
    (the DataSinks) with "end" only."""
    now = [100.0]
    progress, lines = _fake_progress(now)
    now[0] = 130
    progress(SimpleNamespace(itername="a"), "end")
    progress(SimpleNamespace(itername="b"), "end")
    assert lines == [
        "sub-01 anatomical (T1w): 2/2 steps done; 2/3 overall, 30 s elapsed, about 15 s left"
    ]
