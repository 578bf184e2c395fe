"""Partial-volume correction against the simulator's tissue CBF; kernel choice.

For single-PLD subjects of the validation panel (``validate_chain.PANEL``:
same seeds and acquisition options, here without motion and outliers so that
only partial volume and noise remain), the measured CBF is the mean of the
noisy control - label differences divided by the voxel's true model
sensitivity (``deltam / cbf`` of the noise-free truth), i.e. what a perfect
quantification gives. :func:`asl_pipeline.pvc.lr_pvc` then runs with the
kernels 3x3x1, 5x5x1 and 7x7x1 and three sources of tissue fractions:

``true``
    the simulator's voxel fractions (mean of the tissue model over the voxel);
``t1w-avg``
    the subject's 1 mm T1w tissue maps averaged over each ASL voxel (3x3x5
    sample points per voxel through the true ASL -> T1w transform): what a
    partial-volume-aware resampling gives;
``t1w-point``
    the same maps interpolated at the ASL voxel centres only (what plain
    linear resampling onto the ASL grid gives).

3D readouts are blurred through-plane by the simulator (FWHM 1.2 voxels);
there the fractions get the same point spread (``psf_fwhm=(0, 0, 1.2)``).

At voxels with true GM fraction 0.3-0.7 inside the brain, it reports the
regional bias of the uncorrected CBF and of the PV-corrected GM CBF against
the true GM CBF (``mean(estimate) / mean(truth) - 1`` over the voxels the
correction estimated), the per-voxel median absolute error of the corrected
GM CBF, the coverage (estimated / all such voxels), and the WM bias at WM
fraction 0.3-0.7. The measured map has its own regional error
(``measured_error``: thermal and physiological noise; the simulator's
physiological fluctuation is not averaged out by 40 pairs and changes the
regional mean by up to tens of percent), which no partial-volume correction
can remove: the ``*_net`` columns divide it out (see :func:`score`).

    python benchmarks/pvc_kernel.py --out /tmp/pvc            # table + TSV
    python benchmarks/pvc_kernel.py --out /tmp/pvc --figure docs/pvc.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from asl_pipeline.pvc import lr_pvc
from asl_pipeline.simulate.series import simulate_subject

#: (name, seed, simulator options): the single-PLD "sim" subjects of the panel.
SUBJECTS = [
    ("demo", 1, {}),
    ("sim-3d", 101, {"readout": "3D"}),
    ("sim-pasl", 102, {"labeling": "PASL"}),
    ("sim-clean", 104, {}),
    ("sim-lowsnr", 106, {"noise_scale": 1.6}),
    ("sim-lesion", 110, {"lesion": True}),
]
KERNELS = [(3, 3, 1), (5, 5, 1), (7, 7, 1)]
FRACTIONS = ("true", "t1w-avg", "t1w-point")
BAND = (0.3, 0.7)


def simulate(seed, **options):
    """A subject without motion or outliers, and its perfectly quantified mean CBF."""
    sub = simulate_subject(seed, motion=False, outliers=False, **options)
    ctx = np.array(sub.aslcontext)
    diff = sub.asl[..., ctx == "control"].mean(-1) - sub.asl[..., ctx == "label"].mean(-1)
    good = sub.brain_mask & (sub.cbf > 1.0)
    sens = np.where(good, sub.deltam / np.where(good, sub.cbf, 1.0), np.nan)
    return sub, np.where(good, diff / sens, np.nan)


def t1w_fractions(sub, *, points=(3, 3, 5)) -> dict:
    """T1w tissue maps on the ASL grid: voxel averages and centre samples."""
    shape = sub.cbf.shape
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    to_vox = np.linalg.inv(sub.t1w_affine) @ sub.asl_to_t1w @ sub.asl_affine
    offsets = np.stack(
        np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in points], indexing="ij"), -1
    ).reshape(-1, 3)
    out = {"t1w-avg": {}, "t1w-point": {}}
    for name in ("gm", "wm"):
        img = getattr(sub, f"{name}_t1w")

        def sample(pts, img=img):
            vox = pts @ to_vox[:3, :3].T + to_vox[:3, 3]
            return ndimage.map_coordinates(img, vox.T, order=1, mode="constant")

        out["t1w-point"][name] = sample(ijk.astype(float)).reshape(shape)
        avg = sum(sample(ijk + off) for off in offsets) / len(offsets)
        out["t1w-avg"][name] = avg.reshape(shape)
    return out


def score(sub, cbf_obs, res, res_truth) -> dict:
    """Regional and voxel-wise errors in the GM (and WM) fraction band.

    ``*_net`` figures divide out the measured map's own error in the band
    (``measured_error``, from noise and physiological fluctuation, which
    no partial-volume correction can undo): ``(1 + bias) / (1 + measured) - 1``.
    ``pvc_gm_bias_noisefree`` is the correction of the noise-free true CBF
    (partial-volume model and kernel smoothing only).
    """
    band = sub.brain_mask & (sub.gm >= BAND[0]) & (sub.gm <= BAND[1]) & np.isfinite(cbf_obs)
    est = band & res.estimated
    wm_band = sub.brain_mask & (sub.wm >= BAND[0]) & (sub.wm <= BAND[1]) & np.isfinite(cbf_obs)
    wm_est = wm_band & res.estimated
    truth = sub.cbf_gm

    def ratio(values, ref, sel):
        return float(values[sel].mean() / ref[sel].mean() - 1)

    measured = ratio(cbf_obs, sub.cbf, est)
    measured_wm = ratio(cbf_obs, sub.cbf, wm_est)
    row = {
        "n_band": int(band.sum()),
        "coverage": float(est.sum() / band.sum()),
        "measured_error": measured,
        "uncorrected_bias": ratio(cbf_obs, truth, band),
        "pvc_gm_bias": ratio(res.gm, truth, est),
        "pvc_gm_median_abs_err": float(np.median(np.abs(res.gm[est] / truth[est] - 1))),
        "pvc_wm_bias": ratio(res.wm, sub.cbf_wm, wm_est),
        "pvc_gm_bias_noisefree": ratio(res_truth.gm, truth, band & res_truth.estimated),
        # voxel level: the correction is linear, so res - res_truth is the correction of
        # the measurement error alone (noise), res_truth - truth the model/kernel error
        "pvc_gm_noise_sd": float(np.std((res.gm[est] - res_truth.gm[est]) / truth[est])),
        "pvc_gm_kernel_err": float(np.median(np.abs(res_truth.gm[est] / truth[est] - 1))),
    }
    row["uncorrected_bias_net"] = (1 + row["uncorrected_bias"]) / (1 + measured) - 1
    row["pvc_gm_bias_net"] = (1 + row["pvc_gm_bias"]) / (1 + measured) - 1
    row["pvc_wm_bias_net"] = (1 + row["pvc_wm_bias"]) / (1 + measured_wm) - 1
    return row


def run(subjects=SUBJECTS, kernels=KERNELS):
    rows = []
    for name, seed, options in subjects:
        sub, cbf_obs = simulate(seed, **options)
        fractions = {"true": {"gm": sub.gm, "wm": sub.wm}, **t1w_fractions(sub)}
        psf = (0, 0, 1.2) if options.get("readout") == "3D" else 0.0
        for source in FRACTIONS:
            for kernel in kernels:
                fr = fractions[source]
                t0 = time.perf_counter()
                res = lr_pvc(cbf_obs, fr["gm"], fr["wm"], mask=sub.brain_mask, kernel=kernel,
                             psf_fwhm=psf)  # fmt: skip
                seconds = time.perf_counter() - t0
                res_truth = lr_pvc(sub.cbf, fr["gm"], fr["wm"], mask=sub.brain_mask,
                                   kernel=kernel, psf_fwhm=psf)  # fmt: skip
                row = {"subject": name, "seed": seed, "fractions": source,
                       "kernel": "x".join(map(str, kernel)), "seconds": seconds}  # fmt: skip
                row.update(score(sub, cbf_obs, res, res_truth))
                rows.append(row)
                print("\t".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                                for v in row.values()), flush=True)  # fmt: skip
    return rows


def summary(rows) -> str:
    """Markdown table: per fractions source and kernel, mean (min..max) over subjects."""
    keys = [
        "measured_error",
        "uncorrected_bias",
        "pvc_gm_bias",
        "uncorrected_bias_net",
        "pvc_gm_bias_net",
        "pvc_gm_bias_noisefree",
        "pvc_gm_median_abs_err",
        "pvc_gm_noise_sd",
        "pvc_gm_kernel_err",
        "pvc_wm_bias_net",
        "coverage",
    ]
    lines = [
        "| fractions | kernel | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for source in FRACTIONS:
        for kernel in sorted({r["kernel"] for r in rows}):
            sel = [r for r in rows if r["fractions"] == source and r["kernel"] == kernel]
            if not sel:
                continue
            cells = []
            for k in keys:
                v = np.array([r[k] for r in sel]) * 100
                cells.append(f"{v.mean():+.1f}% ({v.min():+.1f}..{v.max():+.1f})")
            lines.append(f"| {source} | {kernel} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(path, seed=1, kernel=(5, 5, 1)):
    """GM CBF against GM fraction: truth, uncorrected, PV-corrected (README demo seed).

    The true voxel fractions bin the voxels and feed the correction; the last
    curve uses the T1w maps sampled at the voxel centres instead.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub, cbf_obs = simulate(seed)
    res = lr_pvc(cbf_obs, sub.gm, sub.wm, mask=sub.brain_mask, kernel=kernel)
    edges = np.linspace(0.1, 0.9, 9)
    mids = 0.5 * (edges[1:] + edges[:-1])
    sel = sub.brain_mask & np.isfinite(cbf_obs)
    point = t1w_fractions(sub)["t1w-point"]
    res_point = lr_pvc(cbf_obs, point["gm"], point["wm"], mask=sub.brain_mask, kernel=kernel)
    curves = {
        "true GM CBF": sub.cbf_gm,
        "uncorrected CBF": cbf_obs,
        "PV-corrected GM CBF (voxel fractions)": res.gm,
        "PV-corrected, fractions sampled at voxel centres": res_point.gm,
    }
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for label, values in curves.items():
        means = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            m = sel & (sub.gm >= lo) & (sub.gm < hi) & np.isfinite(values)
            means.append(values[m].mean() if m.any() else np.nan)
        style = "--" if "centres" in label else "-"
        ax.plot(mids, means, style, marker="o", label=label)
    ax.axvspan(*BAND, color="0.9", zorder=0)
    ax.set_xlabel("GM fraction of the voxel")
    ax.set_ylabel("CBF (mL/100 g/min)")
    ax.set_title(f"Simulated subject (seed {seed}), LR PVC {'x'.join(map(str, kernel))}")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.tsv")
    parser.add_argument("--figure", type=Path, help="also write the README figure here")
    parser.add_argument("--subjects", nargs="+", help="names of SUBJECTS to run (default all)")
    args = parser.parse_args(argv)
    subjects = [s for s in SUBJECTS if not args.subjects or s[0] in args.subjects]
    rows = run(subjects)
    args.out.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    lines = ["\t".join(keys)] + [
        "\t".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
        for r in rows
    ]
    (args.out / "results.tsv").write_text("\n".join(lines) + "\n")
    print(summary(rows))
    if args.figure:
        figure(args.figure)


if __name__ == "__main__":
    main()
