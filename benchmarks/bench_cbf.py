"""Benchmark CBF quantification against simple baselines measured in the same run.

1. Single PLD, 64x64x20 voxels x 40 pairs: pairing + M0 + white-paper CBF
   (:mod:`asl_pipeline.cbf`) against a loop over pairs and slices computing the
   same equation (the shape of ASLtbx-style code).
2. Multi-PLD fit of ~30 000 voxels x 6 PLDs (3 repeats each, 2D slice timing,
   noise): :func:`asl_pipeline.cbf.fit_multi_pld` against a per-voxel
   ``scipy.optimize.curve_fit`` loop. The baseline runs on a subset of voxels
   and its time is extrapolated linearly to all voxels (said in the output).

Prints wall time, peak traced memory (tracemalloc: NumPy allocations) and the
ratios; also checks that both sides agree. Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_cbf.py [--subset 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
from scipy.optimize import curve_fit  # noqa: E402

from asl_pipeline import cbf as C  # noqa: E402
from asl_pipeline import kinetics as K  # noqa: E402


def measure(fn, repeats=1):
    """Best wall time over ``repeats`` and the peak traced memory of one call."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, min(times), peak / 2**20


def single_pld(repeats):
    rng = np.random.default_rng(0)
    shape, n_pairs = (64, 64, 20), 40
    params = C.QuantParams(
        labeling_type="PCASL",
        pld=1.8,
        tau=1.8,
        alpha=0.85 * 0.95**2,
        t1b=1.65,
        slice_timing=tuple(np.linspace(0, 0.7, shape[2])),
        m0_tr=4.0,
    )
    cbf = rng.uniform(10, 90, shape)
    m0_true = rng.uniform(800, 1200, shape)
    delays = 1.8 + np.asarray(params.slice_timing)
    dm = K.pcasl_deltam(
        cbf, 1.0, delays, 1.8, m0_true, alpha=params.alpha, t1_after_arrival="blood"
    )
    control = rng.uniform(400, 600, shape + (n_pairs,))
    series = np.empty(shape + (2 * n_pairs,), dtype=np.float32)
    series[..., 0::2] = control
    series[..., 1::2] = control - dm[..., None] + rng.normal(0, 2, control.shape)
    vtypes = ["control", "label"] * n_pairs
    m0_raw = m0_true * (1 - np.exp(-4.0 / params.t1_tissue))

    def ours():
        pairs = C.deltam_series(series, vtypes, plds=params.pld)
        m0 = C.compute_m0(params, m0_volumes=m0_raw)
        return C.cbf_single_pld(pairs.deltam, m0, params, plds=pairs.plds).cbf_ts

    def baseline():
        m0 = m0_raw / (1 - np.exp(-4.0 / params.t1_tissue))
        out = np.zeros(shape + (n_pairs,))
        for k in range(n_pairs):
            d = series[..., 2 * k].astype(float) - series[..., 2 * k + 1]
            for z in range(shape[2]):
                pld = params.pld + params.slice_timing[z]
                num = 6000 * params.lam * d[..., z] * np.exp(pld / params.t1b)
                den = 2 * params.alpha * params.t1b * m0[..., z]
                den = den * (1 - np.exp(-params.tau / params.t1b))
                out[..., z, k] = num / den
        return out

    a, t_ours, mem_ours = measure(ours, repeats)
    b, t_base, mem_base = measure(baseline, repeats)
    print(f"## single PLD, {shape} x {n_pairs} pairs (2D slice timing, Separate M0)")
    print(f"  asl_pipeline.cbf      : {t_ours:7.3f} s   peak {mem_ours:7.1f} MiB")
    print(f"  pair/slice loop (base): {t_base:7.3f} s   peak {mem_base:7.1f} MiB")
    print(f"  speed-up {t_base / t_ours:5.2f}x   max |diff| {np.abs(a - b).max():.2e}")
    print(
        "  (ours also validates the pairs, keeps each pair's control image for the ASLtbx"
        " M0, averages the controls, builds the excluded-voxel mask)"
    )
    err = np.abs(a.mean(axis=3) / cbf - 1)
    print(f"  mean-CBF relative error vs truth (noise 2 a.u.): median {np.median(err):.3f}")


def multi_pld(subset, repeats):
    rng = np.random.default_rng(1)
    shape = (40, 38, 20)  # 30 400 voxels
    plds = np.repeat([0.25, 0.5, 0.75, 1.0, 1.25, 1.5], 3)
    st = np.linspace(0, 1.0, shape[2])
    params = C.QuantParams(
        labeling_type="PCASL",
        pld=tuple(plds),
        tau=1.4,
        alpha=0.88 * 0.95**2,
        t1b=1.65,
        slice_timing=tuple(st),
    )
    gm = rng.random(shape) < 0.5
    cbf = np.where(gm, rng.normal(60, 8, shape), rng.normal(22, 4, shape))
    att = np.where(gm, rng.normal(1.2, 0.15, shape), rng.normal(1.6, 0.15, shape))
    m0 = rng.uniform(800, 1200, shape)
    delays = plds[None, None, None, :] + st[None, None, :, None]
    dm = K.pcasl_deltam(cbf[..., None], att[..., None], delays, 1.4, m0[..., None], alpha=0.7942)
    sigma = 0.02 * dm.max()
    dm = dm + rng.normal(0, sigma, dm.shape)
    nvox = int(np.prod(shape))

    def ours():
        return C.fit_multi_pld(dm, plds, m0, params)

    (f, a, failed), t_ours, mem_ours = measure(ours, repeats)

    # baseline: per-voxel curve_fit on the repeated data, same model, bounds, start
    idx = rng.choice(nvox, size=subset, replace=False)
    ijk = np.unravel_index(idx, shape)

    def fit_voxel(i):
        z = ijk[2][i]
        y = dm[ijk[0][i], ijk[1][i], z] / m0[ijk[0][i], ijk[1][i], z]

        def model(p, c, t):
            return K.pcasl_deltam(c, t, p + st[z], 1.4, 1.0, alpha=0.7942)

        try:
            p, _ = curve_fit(model, plds, y, p0=(50.0, 1.3), bounds=([0, 0.1], [500, 3.0]))
        except RuntimeError:
            p = (np.nan, np.nan)
        return p

    def baseline(n=subset):
        return np.array([fit_voxel(i) for i in range(n)])

    # best of `repeats` untraced runs, like ours; memory from a traced run on 100
    # voxels (a per-voxel loop's peak does not grow with the number of voxels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref = baseline()
        times.append(time.perf_counter() - t0)
    t_base = min(times)
    tracemalloc.start()
    baseline(min(100, subset))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t_base_all = t_base * nvox / subset

    print(f"## multi-PLD fit, {nvox} voxels x 6 PLDs x 3 repeats (2D, noise 2% of max)")
    print(f"  fit_multi_pld (all voxels)     : {t_ours:7.3f} s   peak {mem_ours:7.1f} MiB")
    print(
        f"  curve_fit loop on {subset} voxels: {t_base:7.3f} s   peak {peak / 2**20:7.1f} MiB"
        f" (traced on {min(100, subset)} voxels)"
        f"\n    -> extrapolated to {nvox} voxels: {t_base_all:7.1f} s (linear, not run)"
    )
    print(f"  speed-up (extrapolated) {t_base_all / t_ours:7.1f}x")
    ours_sub = np.stack([f[ijk], a[ijk]], axis=1)

    def rss(p, i):
        z = ijk[2][i]
        y = dm[ijk[0][i], ijk[1][i], z] / m0[ijk[0][i], ijk[1][i], z]
        mod = K.pcasl_deltam(p[0], p[1], plds + st[z], 1.4, 1.0, alpha=0.7942)
        return np.sum((y - mod) ** 2)

    ok = np.all(np.isfinite(ref), axis=1)
    r_ours = np.array([rss(ours_sub[i], i) for i in range(subset)])
    r_ref = np.array([rss(ref[i], i) if ok[i] else np.inf for i in range(subset)])
    print(
        f"  on the subset: RSS(ours) <= RSS(curve_fit)*(1+1e-6) in "
        f"{np.mean(r_ours <= r_ref * (1 + 1e-6)) * 100:.1f}% of voxels; "
        f"curve_fit failures {np.sum(~ok)}"
    )
    good = ~failed
    e_cbf = np.abs(f / cbf - 1)[good]
    e_att = np.abs(a / att - 1)[good]
    print(
        f"  vs truth (non-failed {good.mean() * 100:.1f}%): median |rel err| CBF "
        f"{np.median(e_cbf):.3f}, ATT {np.median(e_att):.3f}"
    )
    # noise-free check of the same problem
    clean = K.pcasl_deltam(
        cbf[..., None], att[..., None], delays, 1.4, m0[..., None], alpha=0.7942
    )
    fc, ac, fail_c = C.fit_multi_pld(clean, plds, m0, params)
    sel = ~fail_c
    print(f"  noise-free: {fail_c.mean() * 100:.1f}% flagged (ATT < shortest delay of the slice)")
    print(
        "  noise-free: max |rel err| CBF "
        f"{np.abs(fc / cbf - 1)[sel].max():.1e}, ATT {np.abs(ac / att - 1)[sel].max():.1e}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=1000, help="voxels for curve_fit")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best kept)")
    args = parser.parse_args(argv)
    print(f"numpy {np.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    single_pld(args.repeats)
    multi_pld(args.subset, args.repeats)


if __name__ == "__main__":
    main()
