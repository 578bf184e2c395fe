"""Whole-pipeline benchmark: per-subject wall time and peak memory, and scaling.

Simulates N subjects (the simulator's default subject: 2D pCASL, 40 pairs,
64x64x20, 1 mm T1w), then runs ``asl-pipeline`` with MultiProc on 1, 2 and 4
of them in fresh work directories, side by side in the same session. Peak
memory is that of the whole process tree (the command and its MultiProc
workers), sampled every 0.2 s from /proc.

    python benchmarks/bench_pipeline.py --subjects 1 2 4 --nprocs 2 --out /tmp/bench_pipeline

Baseline: the 1-subject run; the scaling ratio is wall(N) / (N x wall(1)).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def _tree_rss_kb(pid: int) -> int:
    """Resident memory (kB) of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid = int(fields[1])
            with open(f"/proc/{entry}/statm") as fh:
                pages = int(fh.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE") // 1024
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run(cmd: list[str]) -> tuple[float, float, int]:
    """Run ``cmd``; return (wall seconds, peak tree RSS in GB, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    thread.join()
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return time.perf_counter() - start, peak[0] / 1024**2, proc.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_pipeline"))
    args = parser.parse_args(argv)

    from asl_pipeline.simulate import simulate_dataset

    bids = args.out / "bids"
    if not (bids / "dataset_description.json").exists():
        t0 = time.perf_counter()
        simulate_dataset(bids, n_subjects=max(args.subjects), seed=args.seed)
        print(f"simulated {max(args.subjects)} subjects in {time.perf_counter() - t0:.0f} s")
    print(f"asl-pipeline, MultiProc --nprocs {args.nprocs}, {os.cpu_count()} CPUs")
    print(f"{'subjects':>8} {'wall s':>8} {'s/subject':>10} {'peak GB':>8} {'scaling':>8}")
    base = None
    for n in args.subjects:
        labels = [f"{i + 1:02d}" for i in range(n)]
        tag = f"n{n}"
        cmd = [
            "asl-pipeline", str(bids), str(args.out / f"out_{tag}"), "participant",
            "--participant-label", *labels, "--work-dir", str(args.out / f"work_{tag}"),
            "--nprocs", str(args.nprocs),
        ]  # fmt: skip
        wall, peak, rc = run(cmd)
        if rc:
            print(f"{n:>8} failed (exit {rc})")
            return rc
        base = base or wall
        print(f"{n:>8} {wall:8.0f} {wall / n:10.0f} {peak:8.2f} {wall / (n * base):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
