"""Outlier cleaning on simulated subjects: plain mean, AOC, SCORE, PAOCSL.

Every subject is simulated twice with the same seed by
:func:`asl_pipeline.simulate.simulate_cbf_series` (fast path, 40 pairs):
with outliers (whole-volume spikes and single-slice drops/ghosts, indexed in
pairs) and without. For every method the script prints, averaged over the
subjects:

* RMSE of the cleaned mean CBF against the true CBF inside the brain mask,
  and its ratio to the plain mean's and to SCORE's (ratio of the mean RMSEs;
  the median of the per-subject ratios in brackets);
* GM mean bias: mean over GM (probability > 0.5, in the brain) of the cleaned
  minus the true CBF;
* precision and recall of the corrupted slice-pairs (brain slices only; a
  spike pair is corrupted in all of them);
* fraction of the clean slice-pairs kept;
* run time per subject of the method alone (simulation excluded).

Usage::

    OMP_NUM_THREADS=1 nice python benchmarks/bench_outliers.py --subjects 20

Numbers depend only on the seeds (0 .. subjects-1), not on the machine, apart
from the run times.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from asl_pipeline import outliers as ol
from asl_pipeline.rundesc import pair_volumes
from asl_pipeline.simulate import simulate_cbf_series

#: Methods compared: label -> (core method, keyword arguments).
METHODS = {
    "mean": ("mean", {}),
    "AOC": ("aoc", {}),
    "SCORE": ("score", {}),
    "PAOCSL (spec)": ("paocsl", {}),
    "PAOCSL noise-aware": ("paocsl", ol.PAOCSL_NOISE_AWARE),
    "PAOCSL noise-aware, no motion": ("paocsl", {**ol.PAOCSL_NOISE_AWARE, "motion": None}),
}


def truth_matrix(sim, brain_slices) -> np.ndarray:
    """Corrupted slice-pairs: spike pairs in every slice, plus single slices."""
    n_slices, n_pairs = sim.cbf_series.shape[2], sim.cbf_series.shape[3]
    truth = np.zeros((n_slices, n_pairs), bool)
    truth[:, list(sim.outlier_pairs)] = True
    for pair, z in sim.outlier_slices:
        truth[z, pair] = True
    return truth[brain_slices]


def score_one(sim, method, kwargs):
    pairs = pair_volumes(sim.aslcontext)
    inputs = {"gm": sim.gm, "wm": sim.wm, "csf": sim.csf, "mask": sim.brain_mask}
    kwargs = dict(kwargs)
    if method in ("paocsl", "aoc") and kwargs.pop("motion", True) is not None:
        inputs["motion"] = sim.motion
        kwargs["motion_pairs"] = pairs
    t0 = time.perf_counter()
    res = ol.clean(method, sim.cbf_series, **inputs, **kwargs)
    seconds = time.perf_counter() - t0
    brain = sim.brain_mask.astype(bool)
    gm = (sim.gm > 0.5) & brain
    err = res.mean_cbf - sim.cbf
    brain_slices = np.flatnonzero(brain.sum((0, 1)) >= 10)
    truth = truth_matrix(sim, brain_slices)
    pred = res.outliers[brain_slices]
    tp = int((pred & truth).sum())
    return {
        "rmse": float(np.sqrt(np.mean(err[brain] ** 2))),
        "gm_bias": float(err[gm].mean()),
        "tp": tp,
        "fp": int((pred & ~truth).sum()),
        "fn": int((~pred & truth).sum()),
        "clean_kept": float((~pred & ~truth).sum() / max((~truth).sum(), 1)),
        "seconds": seconds,
    }


def summarise(rows: dict[str, list[dict]], title: str, with_detection: bool) -> None:
    base = np.array([r["rmse"] for r in rows["mean"]])
    score = np.array([r["rmse"] for r in rows["SCORE"]])
    print(f"\n### {title}\n")
    head = "| method | RMSE | vs mean | vs SCORE | GM bias |"
    line = "|---|---|---|---|---|"
    if with_detection:
        head += " precision | recall |"
        line += "---|---|"
    head += " clean kept | s/subject |"
    line += "---|---|"
    print(head)
    print(line)
    for name, rs in rows.items():
        rmse = np.array([r["rmse"] for r in rs])
        cells = [
            name,
            f"{rmse.mean():.2f}",
            f"{rmse.mean() / base.mean():.3f} ({np.median(rmse / base):.3f})",
            f"{rmse.mean() / score.mean():.3f} ({np.median(rmse / score):.3f})",
            f"{np.mean([r['gm_bias'] for r in rs]):+.2f}",
        ]
        if with_detection:
            tp = sum(r["tp"] for r in rs)
            fp = sum(r["fp"] for r in rs)
            fn = sum(r["fn"] for r in rs)
            cells += [f"{tp / max(tp + fp, 1):.3f}", f"{tp / max(tp + fn, 1):.3f}"]
        cells += [
            f"{np.mean([r['clean_kept'] for r in rs]):.4f}",
            f"{np.mean([r['seconds'] for r in rs]):.3f}",
        ]
        print("| " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20, help="number of seeds (>= 20)")
    parser.add_argument("--n-pairs", type=int, default=40, help="pairs per subject")
    args = parser.parse_args(argv)
    results = {True: {k: [] for k in METHODS}, False: {k: [] for k in METHODS}}
    n_out = {"spike_pairs": 0, "slices": 0, "slice_pairs": 0}
    t_sim = 0.0
    for seed in range(args.subjects):
        for with_outliers in (True, False):
            t0 = time.perf_counter()
            sim = simulate_cbf_series(seed, n_pairs=args.n_pairs, outliers=with_outliers)
            t_sim += time.perf_counter() - t0
            if with_outliers:
                n_out["spike_pairs"] += len(sim.outlier_pairs)
                n_out["slices"] += len(sim.outlier_slices)
                brain = np.flatnonzero(sim.brain_mask.sum((0, 1)) >= 10)
                n_out["slice_pairs"] += len(brain) * args.n_pairs
            for name, (method, kwargs) in METHODS.items():
                results[with_outliers][name].append(score_one(sim, method, kwargs))
        print(f"subject {seed} done", flush=True)
    print(
        f"\n{args.subjects} subjects x {args.n_pairs} pairs; with outliers: "
        f"{n_out['spike_pairs']} spike pairs "
        f"({n_out['spike_pairs'] / (args.subjects * args.n_pairs):.1%} of pairs), "
        f"{n_out['slices']} single-slice corruptions "
        f"({n_out['slices'] / n_out['slice_pairs']:.1%} of brain slice-pairs); "
        f"simulation {t_sim:.0f} s in all"
    )
    summarise(results[True], "With outliers", with_detection=True)
    summarise(results[False], "Without outliers", with_detection=False)


if __name__ == "__main__":
    main()
