"""Build and execute the processing workflow for validated runs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1


def _set_node_resources(workflow, plugin: str) -> None:
    """Give each node's memory and CPU estimate to SLURM as sbatch arguments."""
    if not plugin.startswith("SLURM"):
        return
    for node in workflow._get_all_nodes():
        if getattr(node, "run_without_submitting", False):
            continue
        mem_mb = max(256, int(round(node.mem_gb * 1024)))
        sbatch = f"--mem={mem_mb}M --cpus-per-task={max(1, int(node.n_procs))}"
        args = dict(node.plugin_args or {})
        args["sbatch_args"] = (args.get("sbatch_args", "") + " " + sbatch).strip()
        args.setdefault("overwrite", False)
        node.plugin_args = args


def _crash_report(crash_dir: Path, since: float) -> list[str]:
    """One line per crash file written since ``since``: node name and file."""
    lines = []
    for crash in sorted(crash_dir.glob("crash-*.txt")):
        if crash.stat().st_mtime < since:
            continue
        node, log = "?", None
        for line in crash.read_text(errors="replace").splitlines():
            if line.startswith("Node:"):
                node = line.split(":", 1)[1].strip()
            if "slurm-" in line and ".out" in line and log is None:
                log = line.strip()
        lines.append(f"  node {node}: see {crash}" + (f" ({log})" if log else ""))
    return lines


def config_file_name(subjects) -> str:
    """``asl_pipeline_config_sub-01.toml``: one file per participant set, so the
    jobs of a SLURM array sharing the output folder do not overwrite each other."""
    subjects = list(subjects)
    if len(subjects) <= 3:
        tag = "_".join(f"sub-{s}" for s in subjects)
    else:
        digest = hashlib.sha1(" ".join(subjects).encode()).hexdigest()[:8]
        tag = f"{len(subjects)}subjects-{digest}"
    return f"asl_pipeline_config_{tag}.toml"


def execution_nodes(workflow) -> list[tuple[str, str]]:
    """``(itername, hierarchy)`` of the nodes that ``workflow.run`` executes.

    The execution graph as nipype builds it: flattened, with iterables expanded
    and pass-through IdentityInterface nodes (every ``inputnode``/``outputnode``)
    removed, so the count is that of the steps that actually run.
    """
    from copy import deepcopy

    from nipype.pipeline.engine.utils import generate_expanded_graph

    graph = generate_expanded_graph(deepcopy(workflow._create_flat_graph()))
    return [(node.itername, node._hierarchy or "") for node in graph.nodes()]


def _with_progress(settings: dict, progress) -> dict:
    """Plugin settings with ``progress`` as nipype's status callback (not for
    SLURMGraph, which submits everything at once and takes no callback)."""
    if settings["plugin"] == "SLURMGraph":
        return settings
    return {**settings, "plugin_args": {**settings["plugin_args"], "status_callback": progress}}


def _runner(settings: dict) -> dict:
    """``Workflow.run`` arguments: with ``SLURM``, nipype's SLURM plugin that
    records its job ids, so that a stopped run cancels them
    (:mod:`asl_pipeline.cli.slurmjobs`)."""
    if settings["plugin"] != "SLURM":
        return settings
    from asl_pipeline.cli.slurmjobs import slurm_plugin

    return {"plugin": slurm_plugin(settings["plugin_args"])}


def _configure_nipype(config, log_dir: Path) -> None:
    """Execution and logging settings of nipype, and the environment of the workers."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    from asl_pipeline.cli.console import nipype_logging as logging_levels
    from asl_pipeline.itkthreads import ENV_VAR as ITK_THREADS_VAR

    if config.plugin.startswith("SLURM"):
        os.environ.setdefault("LOGNAME", os.environ.get("USER", "asl_pipeline"))
    # Reproducibility: ITK (antspyx) registrations sample their metric at random
    # and split sums across threads, so reruns are byte-identical only with a
    # fixed seed and a fixed thread count. The seed is an input of the
    # registration nodes (so another seed reruns them); the registration
    # interfaces set their thread count themselves, in a fresh process
    # (asl_pipeline.itkthreads); this default covers the other ITK work
    # (resampling) in the workers and SLURM jobs, which inherit the environment.
    os.environ[ITK_THREADS_VAR] = str(max(1, int(config.omp_nthreads)))
    nipype_config.update_config({
        "execution": {
            "crashdump_dir": str(log_dir),
            "crashfile_format": "txt",
            "stop_on_first_crash": bool(config.stop_on_first_crash),
            "remove_unnecessary_outputs": False,
            "hash_method": "content",
            "poll_sleep_duration": 1,
        },
        "logging": logging_levels(config.verbosity),
    })  # fmt: skip
    nipype_logging.update_logging(nipype_config)


def _report_failure(exc: Exception, log_dir: Path, work_dir: Path, started: float) -> None:
    print(f"asl-pipeline: processing failed: {exc}", file=sys.stderr)
    for line in _crash_report(log_dir, started - 1):
        print(line, file=sys.stderr)
    print(
        f"Fix the cause and run the same command again: finished steps are reused "
        f"from {work_dir}.",
        file=sys.stderr,
    )


def run_workflow(config, runs, *, command: str = "asl-pipeline") -> int:
    """Create the outputs, build the graph, run it, write the reports; return
    the exit status. The reports are written after a failure too (their Errors
    section names the crash files)."""
    started = time.time()
    status = _run(config, runs, command)
    subjects = sorted({r.subject for r in runs})
    write_reports(config.output_dir, subjects, work_dir=config.work_dir)
    if status == EXIT_OK:
        _finished(Path(config.output_dir), subjects, started)
    return status


def _run(config, runs, command: str) -> int:
    from asl_pipeline.cli.console import Progress
    from asl_pipeline.cli.workcache import prepare_work_dir
    from asl_pipeline.derivatives import write_dataset_files
    from asl_pipeline.workflows.base import init_asl_pipeline_wf

    output_dir = Path(config.output_dir)
    work_dir = Path(config.work_dir)
    log_dir = output_dir / "logs"
    for folder in (output_dir, work_dir, log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    removed = prepare_work_dir(work_dir, clean=config.clean_workdir)
    if removed and config.verbosity >= 0:
        print(f"Removed the old cache from {work_dir}: {', '.join(removed)}", flush=True)
    write_dataset_files(output_dir, source_dataset=config.bids_dir)
    config.to_toml(log_dir / config_file_name(sorted({r.subject for r in runs})))
    _configure_nipype(config, log_dir)
    workflow = init_asl_pipeline_wf(config, runs)
    write_provenance(config, workflow, command)
    if config.engine == "pydra":
        started = time.time()
        if _run_pydra(config, runs, work_dir, started) != EXIT_OK:
            return EXIT_FAILED
        return EXIT_OK

    workflow.config["execution"]["crashdump_dir"] = str(log_dir)
    settings = config.plugin_settings
    _set_node_resources(workflow, settings["plugin"])
    progress = Progress(execution_nodes(workflow))
    if config.verbosity >= 0:
        subjects = sorted({r.subject for r in runs})
        print(
            f"Running {progress.total} processing steps for {len(subjects)} subject(s) with "
            f"the {settings['plugin']} plugin; work directory {work_dir}",
            flush=True,
        )
        settings = _with_progress(settings, progress)
    started = time.time()
    heartbeat = progress.heartbeat() if config.verbosity >= 0 else contextlib.nullcontext()
    try:
        with heartbeat:
            workflow.run(**_runner(settings))
    except Exception as exc:  # nipype raises RuntimeError on node failures
        _report_failure(exc, log_dir, work_dir, started)
        return EXIT_FAILED
    return EXIT_OK


def _finished(output_dir: Path, subjects, started: float) -> int:
    from asl_pipeline.cli.summary import summary_lines
    from asl_pipeline.subject_report import REPORT_NAME

    print(f"Finished in {time.time() - started:.0f} s. Derivatives: {output_dir}")
    for line in summary_lines(output_dir):
        print(line)
    for subject in subjects:
        rep = output_dir / f"sub-{subject}" / "figures" / REPORT_NAME.format(subject=subject)
        if rep.exists():
            print(f"Report: {rep}")
    return EXIT_OK


def _run_pydra(config, runs, work_dir: Path, started: float) -> int:
    """The same graph on Pydra (asl_pipeline.engines.pydra); its cache is
    ``WORK_DIR/pydra``, and a failed task leaves ``_error.pklz`` in its folder."""
    from asl_pipeline.engines.pydra import init_pydra_wf, run_pydra

    cache_dir = work_dir / "pydra"
    workflow = init_pydra_wf(config, runs, payload_dir=work_dir / "pydra_nodes")
    if config.verbosity >= 0:
        print(
            f"Running the workflow with Pydra's {config.plugin} worker; cache {cache_dir}",
            flush=True,
        )
    try:
        run_pydra(workflow, config.plugin, config.nprocs, cache_dir, config.plugin_args)
    except Exception as exc:  # pydra raises on a failed task
        print(f"asl-pipeline: processing failed: {exc}", file=sys.stderr)
        for error in sorted(cache_dir.rglob("_error.pklz")):
            if error.stat().st_mtime >= started - 1:
                print(f"  see {error}", file=sys.stderr)
        print(
            f"Fix the cause and run the same command again: finished steps are reused "
            f"from {cache_dir}.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def subject_methods(workflow) -> dict[str, dict]:
    """``{subject: {"subject": [paragraphs], "runs": {run stem: [paragraphs]}}}``:
    the methods text of each single-subject workflow of a built graph (the
    ``__desc__`` of the sub-workflows that will run)."""
    out = {}
    for node in workflow._graph.nodes():
        methods = getattr(node, "methods", None)
        if not isinstance(methods, dict):
            continue
        subject = node.name.removeprefix("sub_").removesuffix("_wf")
        runs = {
            stem: [p for p in text.split("\n\n") if p.strip()] for stem, text in methods["runs"]
        }
        out[subject] = {"subject": [p for p in methods["subject"] if p], "runs": runs}
    return out


def methods_texts(workflow) -> dict[str, list[str]]:
    """The methods paragraphs of a built workflow: text -> runs that share it
    (the text each subject's HTML report shows, built from the workflow that runs)."""
    texts: dict[str, list[str]] = {}
    for methods in subject_methods(workflow).values():
        for stem, paragraphs in methods["runs"].items():
            text = "\n\n".join(methods["subject"][1:] + paragraphs).strip()
            texts.setdefault(text, []).append(stem)
    return texts


def write_provenance(config, workflow, command: str) -> list[Path]:
    """``logs/asl_pipeline_run_sub-<label>.json`` per subject: version, command,
    date, platform, configuration file and methods text, read by the report."""
    import platform

    from asl_pipeline import __version__
    from asl_pipeline.subject_report import PROVENANCE

    written = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    subjects = subject_methods(workflow)
    for subject, methods in subjects.items():
        path = Path(config.output_dir) / PROVENANCE.format(subject=subject)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "subject": subject,
                    "version": __version__,
                    "command": command,
                    "started": started,
                    "platform": platform.platform(),
                    "python": sys.version.split()[0],
                    "engine": config.engine,
                    "config_file": config_file_name(sorted(subjects)),
                    "methods": methods,
                },
                indent=2,
            )
            + "\n"
        )
        written.append(path)
    return written


def write_reports(output_dir, subjects, *, work_dir=None) -> list[Path]:
    """Assemble each subject's HTML report from the stored derivatives; a
    subject whose report fails is named on stderr, the others still get theirs."""
    from asl_pipeline.subject_report import write_subject_report

    written = []
    for subject in subjects:
        try:
            written.append(write_subject_report(output_dir, subject, work_dir=work_dir))
        except Exception as exc:  # a report must never hide the processing's outcome
            print(
                f"asl-pipeline: error: report of sub-{subject} not written: "
                f"{type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
    return written


def boilerplate_markdown(texts: dict[str, list[str]], version: str) -> str:
    """``CITATION.md``: one section per distinct methods text."""
    lines = [
        "# Methods",
        "",
        f"*Text generated by asl-pipeline {version} from the workflow of this run; "
        "it may be copied into a manuscript's methods section.*",
        "",
    ]
    for text, runs in texts.items():
        if len(texts) > 1:
            lines += [f"## {', '.join(runs)}", ""]
        lines += [text, ""]
    # the works the texts cite (the report numbers them; here they are listed)
    from asl_pipeline.subject_report import cite

    _, references = cite(list(texts))
    if references:
        lines += ["## References", ""] + [f"- {ref}" for ref in references] + [""]
    return "\n".join(lines)


def write_boilerplate(config, runs) -> Path:
    """Build the workflow (without running it) and write its methods text to
    ``OUTPUT_DIR/logs/CITATION.md``; nothing else is written."""
    from asl_pipeline import __version__
    from asl_pipeline.workflows.base import init_asl_pipeline_wf

    texts = methods_texts(init_asl_pipeline_wf(config, runs))
    path = Path(config.output_dir) / "logs" / "CITATION.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(boilerplate_markdown(texts, __version__), encoding="utf-8")
    return path
