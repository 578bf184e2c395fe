"""Build and execute the processing workflow for validated runs."""

from __future__ import annotations

import logging
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


def run_workflow(config, runs) -> int:
    """Create the outputs, build the graph, run it; return the exit status."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    from asl_pipeline.cli.summary import summary_lines
    from asl_pipeline.derivatives import write_dataset_files
    from asl_pipeline.itkthreads import ENV_VAR as ITK_THREADS_VAR
    from asl_pipeline.workflows.base import init_asl_pipeline_wf

    output_dir = Path(config.output_dir)
    work_dir = Path(config.work_dir)
    log_dir = output_dir / "logs"
    for folder in (output_dir, work_dir, log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    write_dataset_files(output_dir, source_dataset=config.bids_dir)
    config.to_toml(log_dir / "asl_pipeline_config.toml")
    if config.plugin.startswith("SLURM"):
        os.environ.setdefault("LOGNAME", os.environ.get("USER", "asl_pipeline"))
    # Reproducibility: ITK (antspyx) registrations sample their metric at random
    # and split sums across threads, so reruns are byte-identical only with a
    # fixed seed and a fixed thread count. The registration interfaces set their
    # count themselves, in a fresh process (asl_pipeline.itkthreads); this
    # default covers the other ITK work (resampling) in the workers and SLURM
    # jobs, which inherit the environment.
    os.environ[ITK_THREADS_VAR] = str(max(1, int(config.omp_nthreads)))
    os.environ["ANTS_RANDOM_SEED"] = str(int(config.seed) or 1)

    nipype_config.update_config({
        "execution": {
            "crashdump_dir": str(log_dir),
            "crashfile_format": "txt",
            "stop_on_first_crash": False,
            "remove_unnecessary_outputs": False,
            "hash_method": "content",
            "poll_sleep_duration": 1,
        },
        "logging": {"workflow_level": "INFO", "interface_level": "WARNING"},
    })  # fmt: skip
    nipype_logging.update_logging(nipype_config)
    logging.getLogger("nipype.workflow").setLevel(logging.INFO)

    workflow = init_asl_pipeline_wf(config, runs)
    workflow.config["execution"]["crashdump_dir"] = str(log_dir)
    settings = config.plugin_settings
    _set_node_resources(workflow, settings["plugin"])
    n_nodes = len(workflow._get_all_nodes())
    subjects = sorted({r.subject for r in runs})
    print(
        f"Running {n_nodes} processing steps for {len(subjects)} subject(s) with the "
        f"{settings['plugin']} plugin; work directory {work_dir}",
        flush=True,
    )
    started = time.time()
    try:
        workflow.run(**settings)
    except Exception as exc:  # nipype raises RuntimeError on node failures
        print(f"asl-pipeline: processing failed: {exc}", file=sys.stderr)
        for line in _crash_report(log_dir, started - 1):
            print(line, file=sys.stderr)
        print(
            f"Fix the cause and run the same command again: finished steps are reused "
            f"from {work_dir}.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    reports = sorted(output_dir.glob("sub-*/figures/*_report.html"))
    print(f"Finished in {time.time() - started:.0f} s. Derivatives: {output_dir}")
    for line in summary_lines(output_dir):
        print(line)
    for rep in reports:
        print(f"Report: {rep}")
    return EXIT_OK
