"""Validation panel: every stage of the default chain against doing nothing and a blur.

Runs the real ``asl-pipeline`` command (the same code path users run) on a
panel of simulated subjects that no test or default was tuned on, once per
configuration, and scores each CBF derivative in native ASL space against the
simulator's truth:

- GM and WM error (%) of the mean CBF inside GM > 0.7 and WM > 0.9 of the
  true tissue fractions on the ASL grid;
- voxel-wise Pearson r with the true CBF inside the true brain mask;
- for multi-PLD subjects, the GM/WM arterial transit time error (s).

Baselines measured in the same runs: ``desc-mean`` of the plain configuration
(white-paper mean of every pair, nothing else), and a Gaussian blur of it
(FWHM one in-plane voxel). Configurations share one work directory per
subject, so the anatomical and registration steps run once per subject.
A subject's cache and finished runs count only for the code that made them
(``asl_pipeline.cli.workcache``): after a change to the package the cache is
removed and every configuration asked for runs again.

The panel has two generators that differ in anatomy source and signal model:
``sim`` (``asl_pipeline.simulate``: deformed MNI152 anatomy, white-paper
kinetics) and, when it is installed, ``phantom``
(``asl_pipeline.simulate.phantom``); see ``PANEL``.

    python benchmarks/validate_chain.py --out /tmp/panel --jobs 2
    python benchmarks/validate_chain.py --out /tmp/panel --jobs 2 --configs finetune
    python benchmarks/validate_chain.py --out /tmp/panel --report-only   # re-score
    python benchmarks/validate_chain.py --out /tmp/reps --jobs 2 --configs defaults \
        --subjects sim-motion ph-slabmotion --replicates 4   # bias against noise

``--replicates K`` draws each chosen subject again with K - 1 other seeds
(:func:`replicates`), the same generator and settings, and adds a table of
the mean and SD over the K draws of the default cleaned map's and the
oracle's errors: one seed's error is bias plus that seed's noise, and only
the mean over seeds shows the bias.

``finetune`` (``--denoise --dwan-finetune 60``, the README's setting when
denoising) runs only when asked for: it adds 60 s per subject. It reuses the
subject's cached steps up to the denoiser, and its fine-tuning runs on the
one thread a node gets by default (``--omp-nthreads 1``), as a user's would;
with ``--jobs`` no larger than the cores, no two subjects share a core.
The multi-PLD configurations ``multipld-voxel``, ``plain-voxel`` (each
voxel's own ATT fit, with and without the repeat screen) and
``multipld-fixedt1`` (the fixed tissue T1 instead of the GM curve's) run only
when asked for too.

Writes ``OUT/results.tsv`` (one row per subject, configuration and map) and
prints the summary table that goes into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

#: The phantom's single-PLD subjects decay with blood T1 after arrival, the
#: model the white-paper equation inverts, so that the chain's own errors are
#: scored; ``ph-tissuet1`` keeps the apparent tissue T1 (the phantom's default)
#: and shows what that model costs any single-PLD white-paper quantification.
_WP = {"t1_after_arrival": "blood"}

#: Inversion times (s) of the multi-TI PASL subjects.
_TIS = [0.9, 1.4, 1.9, 2.4, 2.9]

#: The multi-PLD pCASL protocol of the Siemens example ``asl004`` (BIDS
#: examples): 6 PLDs up to 1.5 s, 8 repeats each, labeling 1.4 s, 2D.
_SHORT = {"plds": [0.25, 0.5, 0.75, 1.0, 1.25, 1.5], "pld_repeats": 8}

#: Subjects: (name, generator, seed, keyword arguments of the generator). The
#: README demo's subject (seed 1, defaults) comes first; no seed is one the
#: tests use.
PANEL = [
    ("demo", "sim", 1, {}),
    ("sim-3d", "sim", 101, {"readout": "3D"}),
    ("sim-pasl", "sim", 102, {"labeling": "PASL"}),
    ("sim-bs3d", "sim", 103, {"readout": "3D", "background_suppression": True}),
    ("sim-clean", "sim", 104, {"motion": False, "outliers": False}),
    ("sim-motion", "sim", 105, {"motion_scale": 3.0, "spike_rate": 0.06}),
    ("sim-lowsnr", "sim", 106, {"noise_scale": 1.6}),
    ("sim-slabs", "sim", 107, {"noise_scale": 0.7, "slice_outlier_rate": 0.06}),
    ("sim-pasl3d-lf", "sim", 108, {"labeling": "PASL", "readout": "3D", "label_first": True}),
    ("sim-m0incl", "sim", 109, {"m0_type": "Included", "noise_scale": 1.2}),
    ("sim-lesion", "sim", 110, {"lesion": True}),
    (
        "sim-multipld",
        "sim",
        111,
        {
            "plds": [0.5, 1.0, 1.5, 2.0, 2.5],
            "pld_repeats": 8,
            "readout": "3D",
            "background_suppression": True,
        },
    ),
    (
        "sim-multipld-2d",
        "sim",
        112,
        {"plds": [0.5, 1.0, 1.5, 2.0, 2.5], "pld_repeats": 8, "background_suppression": True},
    ),
    (
        "sim-multipld-t1",
        "sim",
        113,
        {
            "plds": [0.5, 1.0, 1.5, 2.0, 2.5],
            "pld_repeats": 8,
            "readout": "3D",
            "background_suppression": True,
            "t1_tissue": 1.6,
        },
    ),
    (
        "sim-pasl-multiti",
        "sim",
        114,
        {"labeling": "PASL", "plds": _TIS, "pld_repeats": 8, "background_suppression": True},
    ),
    (
        "sim-multipld-short",
        "sim",
        115,
        {**_SHORT, "labeling_duration": 1.4, "background_suppression": True},
    ),
    (
        "sim-multipld-short-3d",
        "sim",
        151,
        {**_SHORT, "labeling_duration": 1.4, "background_suppression": True, "readout": "3D"},
    ),
    ("ph-drift", "phantom", 201, {"motion": "drift", "outliers": "none", **_WP}),
    ("ph-jumps", "phantom", 202, {"motion": "jumps", "outliers": "spikes", **_WP}),
    ("ph-slabs", "phantom", 203, {"motion": "none", "outliers": "slab_dropout", **_WP}),
    ("ph-global", "phantom", 204, {"motion": "drift", "outliers": "global", **_WP}),
    ("ph-slabmotion", "phantom", 205, {"readout": "3D", "outliers": "slab_motion", **_WP}),
    ("ph-pasl", "phantom", 206, {"labeling": "PASL", "outliers": "spikes", **_WP}),
    ("ph-multipld", "phantom", 207, {"plds": [0.5, 1.0, 1.5, 2.0, 2.5], "outliers": "none"}),
    ("ph-pasl-multiti", "phantom", 209, {"labeling": "PASL", "plds": _TIS, "outliers": "none"}),
    ("ph-tissuet1", "phantom", 208, {"outliers": "spikes"}),
    ("ph-multipld-short", "phantom", 210, {**_SHORT, "tau": 1.4, "outliers": "none"}),
    (
        "ph-multipld-short-3d",
        "phantom",
        251,
        {**_SHORT, "tau": 1.4, "outliers": "none", "readout": "3D"},
    ),
]

#: Configurations: name -> extra ``asl-pipeline`` options. ``plain`` is the
#: do-nothing baseline (white-paper mean, no cleaning); ``defaults`` is the
#: shipped chain (with --denoise to score the network on the same run).
CONFIGS = {
    "plain": ["--outlier-method", "none"],
    "defaults": ["--denoise"],
    "finetune": ["--denoise", "--dwan-finetune", "60"],  # run on request only
    "smooth3": ["--smoothing-fwhm", "3"],
    "regress": ["--nuisance-regression"],
    "study": ["--nuisance-regression", "--smoothing-fwhm", "3", "--hmc-zigzag", "regress"],
    "hmc-regress": ["--hmc-zigzag", "regress"],
    "hmc-interp": ["--hmc-zigzag", "interpolate"],
    "hmc-none": ["--hmc-reslice", "none"],
    "drift": ["--drift-correction", "trend"],
    # run on request only: multi-PLD ATT estimate, each voxel's own fit, with and
    # without the repeat screen
    "multipld-voxel": ["--multipld-att", "voxel"],
    "plain-voxel": ["--outlier-method", "none", "--multipld-att", "voxel"],
    # run on request only: the multi-PLD fit with the fixed tissue T1 (1.4 s)
    "multipld-fixedt1": ["--multipld-t1", "fixed"],
}

#: Configurations that re-run the realignment and registration (the costly
#: ones) run on the subjects where motion matters; the others on every subject.
MOTION_CONFIGS = ("study", "hmc-regress", "hmc-interp", "hmc-none")
MOTION_SUBJECTS = ("demo", "sim-3d", "sim-motion", "ph-drift", "ph-jumps", "ph-global")
#: Configurations run only when named with --configs (see the module's docstring).
ON_REQUEST = ("finetune", "multipld-voxel", "plain-voxel", "multipld-fixedt1")

GM_THRESHOLD, WM_THRESHOLD = 0.7, 0.9

#: Seed offset of a subject's replicates (:func:`replicates`): far from every
#: panel seed and from the tests' seeds.
REPLICATE_SEED_STEP = 5000


def configs_for(name: str, everything: bool = False, only=None) -> list[str]:
    """The configurations run on subject ``name`` (``only``: a subset chosen by the user)."""
    if everything or name in MOTION_SUBJECTS:
        chosen = list(CONFIGS)
    else:
        chosen = [c for c in CONFIGS if c not in MOTION_CONFIGS]
    if only:
        return [c for c in chosen if c in only]
    return [c for c in chosen if c not in ON_REQUEST]


def replicates(entry, k: int) -> list:
    """``entry`` and its ``k - 1`` replicates: the same generator and settings,
    seed ``seed + i * REPLICATE_SEED_STEP``, named ``NAME-sSEED``."""
    name, generator, seed, kwargs = entry
    out = [entry]
    for i in range(1, k):
        s = seed + i * REPLICATE_SEED_STEP
        out.append((f"{name}-s{s}", generator, s, kwargs))
    return out


def simulate(name: str, generator: str, seed: int, kwargs: dict, root: Path) -> Path | None:
    """Write the subject's BIDS dataset (once); None when the generator is absent."""
    out = root / "data" / name
    if (out / "participants.tsv").exists():
        return out
    if generator == "sim":
        from asl_pipeline.simulate import simulate_dataset
    else:
        try:
            from asl_pipeline.simulate.phantom import simulate_dataset
        except ImportError:
            return None
    try:
        simulate_dataset(out, n_subjects=1, seed=seed, **kwargs)
    except TypeError as exc:  # an option this version of the generator lacks
        print(f"skip {name}: {exc}", file=sys.stderr)
        return None
    return out


def run_pipeline(bids: Path, root: Path, name: str, config: str) -> tuple[int, float]:
    from asl_pipeline.cli.workcache import cache_problems, code_stamp, prepare_work_dir

    out = root / "out" / config / name
    done = out / "logs" / "validate_chain.done"
    source = code_stamp()["source_sha256"]
    if done.exists() and source in done.read_text():
        return 0, 0.0  # run by this code
    work = root / "work" / name
    if cache_problems(work):  # a cache of other code: its steps would be reused
        prepare_work_dir(work, clean=True)
    cmd = [
        "asl-pipeline", str(bids), str(out), "participant",
        "--work-dir", str(work),
        "--output-spaces", "asl", "--nprocs", "1",
        *CONFIGS[config],
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        done.write_text(" ".join(cmd) + f"\nsource_sha256 {source}\n")
    else:
        (root / "logs").mkdir(parents=True, exist_ok=True)
        (root / "logs" / f"{name}_{config}.log").write_text(proc.stdout + proc.stderr)
    return proc.returncode, time.perf_counter() - start


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).astype(float)


def truth_of(bids: Path) -> dict:
    sim = bids / "derivatives" / "simulation" / "sub-01" / "perf"
    truth = {
        "cbf": _load(sim / "sub-01_desc-true_cbf.nii.gz"),
        "gm": _load(sim / "sub-01_label-GM_probseg.nii.gz"),
        "wm": _load(sim / "sub-01_label-WM_probseg.nii.gz"),
        "brain": _load(sim / "sub-01_desc-brain_mask.nii.gz") > 0,
    }
    att = sim / "sub-01_desc-true_att.nii.gz"
    truth["att"] = _load(att) if att.exists() else None
    if truth["att"] is not None:
        truth["att_measurable"] = att_measurable(bids, truth["att"])
    return truth


def att_measurable(bids: Path, att: np.ndarray) -> np.ndarray:
    """Voxels whose true ATT the protocol can measure.

    A pCASL signal does not depend on an ATT shorter than the slice's
    shortest effective delay (PASL: shortest TI - TI1), so no fit can recover
    it there (``fit_multi_pld`` flags such fits as failed). Chosen from the
    truth and the protocol, not the fit, so noise does not select voxels.
    """
    from asl_pipeline.cbf import effective_delays

    params, plds = _protocol(bids)
    shortest = effective_delays(params, plds, att.shape[2]).min(axis=1)
    if params.labeling_type == "PASL":
        shortest = shortest - params.ti1
    return att > shortest[None, None, :]


def _protocol(bids: Path):
    """The subject's quantification parameters and its distinct delays (s)."""
    from asl_pipeline.cbf import quant_params_from_metadata

    meta = json.loads((bids / "sub-01" / "perf" / "sub-01_asl.json").read_text())
    plds = np.unique(np.round(np.atleast_1d(meta["PostLabelingDelay"]).astype(float), 9))
    return quant_params_from_metadata(meta), plds


def readout_blur(generator: str, kwargs: dict):
    """The generator's through-plane readout blur for a subject (a function of a
    volume), None for 2D readouts."""
    from asl_pipeline.simulate import phantom, series

    if kwargs.get("readout") != "3D":
        return None
    module = series if generator == "sim" else phantom
    fwhm = kwargs.get("z_blur_fwhm", module.Z_BLUR_FWHM_3D)
    return functools.partial(series.through_plane_blur, fwhm=fwhm, mode=module.Z_BLUR_MODE)


def whitepaper_floor(bids: Path, truth: dict, blur=None) -> np.ndarray | None:
    """What a perfect single-PLD white-paper quantification reads on this subject.

    The white-paper equation assumes that the whole bolus has arrived by the
    readout (ATT shorter than the delay; PASL: shorter than TI - TI1) and
    decays with blood T1 after arrival. Where the generator breaks either
    assumption, no single-PLD pipeline can read the true CBF: the floor is the
    true CBF times the generator's signal over the signal the equation
    assumes. The phantom writes it (``desc-whitepaper_cbf``, from its
    sub-voxel signals). For the simulator it is computed here from each
    voxel's true CBF and ATT (an approximation where a voxel mixes arrival
    times), the sidecar's protocol (2D: each slice's delay) and the
    generator's T1 after arrival (``desc-true_kinetics.json``; blood T1
    without one, the simulator's single-PLD default). None for multi-PLD
    subjects or without a true ATT.

    ``blur`` (:func:`readout_blur`, 3D readouts): the generators blur every
    image along z, ΔM and the M0 scan alike, so a perfect quantification of
    the images reads blur(floor x M0) / blur(M0), with the true M0
    (``desc-true_m0``). GM spills into the WM beside it through-plane.
    """
    sim = bids / "derivatives" / "simulation" / "sub-01" / "perf"
    params, plds = _protocol(bids)
    if plds.size != 1 or truth["att"] is None:
        return None
    written = sim / "sub-01_desc-whitepaper_cbf.nii.gz"
    floor = _load(written) if written.exists() else _model_floor(sim, truth, params, plds)
    if blur is None:
        return floor
    m0 = _load(sim / "sub-01_desc-true_m0.nii.gz")
    with np.errstate(invalid="ignore", divide="ignore"):
        blurred = blur(floor * m0) / blur(m0)
    return np.where(m0 > 0, np.nan_to_num(blurred), 0.0)


def _model_floor(sim: Path, truth: dict, params, plds) -> np.ndarray:
    """The simulator's floor: true CBF x the generator's signal / the assumed one."""
    from asl_pipeline import kinetics
    from asl_pipeline.cbf import effective_delays

    kinetic = sim / "sub-01_desc-true_kinetics.json"
    model = json.loads(kinetic.read_text()) if kinetic.exists() else {}
    delay = effective_delays(params, plds, truth["att"].shape[2])[:, 0][None, None, :]
    cbf = np.maximum(truth["cbf"], 1.0)  # the ratio only; CSF's zero flow stays zero
    common = {"m0": 1.0, "alpha": 1.0, "t1b": float(model.get("T1Blood", params.t1b))}
    true_t1 = {
        "t1_after_arrival": model.get("T1AfterArrival", "blood"),
        "t1_tissue": float(model.get("T1Tissue", params.t1_tissue)),
    }
    if params.labeling_type == "PASL":
        signal, bolus = kinetics.pasl_deltam, {"ti1": params.ti1}
    else:
        signal, bolus = kinetics.pcasl_deltam, {"tau": params.tau}
    true = signal(cbf, truth["att"], delay, **bolus, **common, **true_t1)
    assumed = signal(cbf, 0.0, delay, **bolus, **common, t1_after_arrival="blood")
    return truth["cbf"] * true / assumed


def score_map(cbf: np.ndarray, truth: dict) -> dict:
    finite = np.isfinite(cbf)
    gm = (truth["gm"] > GM_THRESHOLD) & finite
    wm = (truth["wm"] > WM_THRESHOLD) & finite
    brain = truth["brain"] & finite
    t = truth["cbf"]
    row = {
        "gm": cbf[gm].mean(),
        "wm": cbf[wm].mean(),
        "gm_err_pct": 100 * (cbf[gm].mean() / t[gm].mean() - 1),
        "wm_err_pct": 100 * (cbf[wm].mean() / t[wm].mean() - 1),
        "r": np.corrcoef(cbf[brain], t[brain])[0, 1],
    }
    row["gmwm"] = row["gm"] / row["wm"] if row["wm"] else np.nan
    return row


def _maps(out: Path, config: str) -> dict[str, Path]:
    perf = out / "sub-01" / "perf"
    found = {}
    for desc in ("mean", "paocsl", "denoised"):
        hits = sorted(perf.glob(f"sub-01*_desc-{desc}*_cbf.nii.gz"))
        if hits:
            found[desc] = hits[0]
    return found


def direct_paocsl(perf: Path) -> np.ndarray | None:
    """``outliers.paocsl`` called directly on the run's realigned, unsmoothed CBF series
    with the workflow's settings: the reference the in-workflow cleaning must match."""
    from asl_pipeline import outliers

    series = sorted(perf.glob("sub-01*_desc-timeseries_cbf.nii.gz"))
    if not series:
        return None
    maps = {t: _load(perf / f"sub-01_label-{t.upper()}_probseg.nii.gz") for t in ("gm", "wm")}
    mask = _load(perf / "sub-01_desc-brain_mask.nii.gz") > 0
    result = outliers.paocsl(
        _load(series[0]),
        maps["gm"],
        maps["wm"],
        mask,
        None,
        n_passes=2,
        **outliers.PAOCSL_NOISE_AWARE,
    )
    return result.mean_cbf


def true_outliers(bids: Path, n_slices: int, n_pairs: int) -> np.ndarray | None:
    """Slice x pair matrix of the generator's corrupted entries (1 = corrupted):
    a whole-volume corruption marks every slice of its pair."""
    table = bids / "derivatives/simulation/sub-01/perf/sub-01_desc-true_outliers.tsv"
    if not table.exists():
        return None
    matrix = np.zeros((n_slices, n_pairs), bool)
    with table.open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            pair = int(row["pair"])
            if row["slice"] == "n/a":
                matrix[:, pair] = True
            else:
                matrix[int(row["slice"]), pair] = True
    return matrix


def oracle(series: np.ndarray, matrix: np.ndarray, truth: dict) -> tuple[np.ndarray, dict]:
    """The cleaning that knows the truth: each slice's mean over its uncorrupted pairs.

    Its error against the truth is what no outlier cleaning can remove (noise,
    physiological fluctuation, motion, segmentation). Also returns the standard
    error (%) of its GM and WM means: the SD over pairs of each pair's tissue mean
    (uncorrupted slices only) over the square root of the number of pairs.
    """
    from asl_pipeline import outliers

    out = outliers.apply_outliers(series, matrix)
    se = {}
    for tissue, threshold in (("gm", GM_THRESHOLD), ("wm", WM_THRESHOLD)):
        inside = truth[tissue] > threshold
        values = [
            series[..., p][inside & ~matrix[:, p][None, None, :]].mean()
            for p in range(series.shape[3])
            if not matrix[:, p].all()
        ]
        true_mean = truth["cbf"][inside].mean()
        se[f"{tissue}_se_pct"] = 100 * np.std(values, ddof=1) / np.sqrt(len(values)) / true_mean
    return out, se


def score_subject(root: Path, entry, bids: Path) -> list[dict]:
    name, generator, _, kwargs = entry
    truth = truth_of(bids)
    rows = []
    perf = root / "out" / "defaults" / name / "sub-01" / "perf"
    direct = direct_paocsl(perf) if perf.exists() else None
    if direct is not None:
        rows.append({"subject": name, "config": "direct", "map": "paocsl",
                     **score_map(direct, truth)})  # fmt: skip
        series = _load(next(perf.glob("sub-01*_desc-timeseries_cbf.nii.gz")))
        matrix = true_outliers(bids, *series.shape[2:])
        if matrix is not None:
            best, se = oracle(series, matrix, truth)
            rows.append({"subject": name, "config": "oracle", "map": "cleaned",
                         **score_map(best, truth), **se})  # fmt: skip
    floor = whitepaper_floor(bids, truth, readout_blur(generator, kwargs))
    if floor is not None:
        rows.append({"subject": name, "config": "floor", "map": "whitepaper",
                     **score_map(floor, truth)})  # fmt: skip
    for config in CONFIGS:
        out = root / "out" / config / name
        maps = _maps(out, config)
        for desc, path in maps.items():
            img = nib.load(path)
            cbf = np.asanyarray(img.dataobj).astype(float)
            rows.append({"subject": name, "config": config, "map": desc, **score_map(cbf, truth)})
            if config == "plain" and desc == "mean":  # the simplest baseline: a blur
                sigma = 1.0 / 2.3548  # FWHM of one voxel, in voxels
                blurred = ndimage.gaussian_filter(np.nan_to_num(cbf), (sigma, sigma, 0))
                rows.append(
                    {
                        "subject": name,
                        "config": "plain",
                        "map": "blur",
                        **score_map(blurred, truth),
                    }
                )
        att = sorted((out / "sub-01" / "perf").glob("sub-01*_att.nii.gz"))
        if att and truth["att"] is not None:
            a = _load(att[0])
            gm = truth["gm"] > GM_THRESHOLD
            wm = truth["wm"] > WM_THRESHOLD
            ok = truth["att_measurable"]
            for desc, g, w in (("att", gm, wm), ("att-measurable", gm & ok, wm & ok)):
                rows.append({
                    "subject": name, "config": config, "map": desc,
                    "gm": np.nanmean(a[g]), "wm": np.nanmean(a[w]),
                    "gm_err_pct": np.nanmean(a[g]) - truth["att"][g].mean(),
                    "wm_err_pct": np.nanmean(a[w]) - truth["att"][w].mean(),
                    "r": np.nan, "gmwm": np.nan,
                    "gm_share": g.sum() / max(gm.sum(), 1),
                    "wm_share": w.sum() / max(wm.sum(), 1),
                })  # fmt: skip
    return rows


def process(root: Path, entry, everything: bool = False, only=None) -> tuple[str, list[str]]:
    name, generator, seed, kwargs = entry
    bids = simulate(name, generator, seed, kwargs, root)
    if bids is None:
        return name, ["skipped (generator unavailable)"]
    lines = []
    for config in configs_for(name, everything, only):
        rc, wall = run_pipeline(bids, root, name, config)
        lines.append(f"{config}: exit {rc}, {wall:.0f} s")
    return name, lines


def write_table(rows: list[dict], path: Path) -> None:
    keys = ["subject", "config", "map", "gm", "wm", "gmwm", "gm_err_pct", "wm_err_pct", "r"]
    with path.open("w") as fh:
        fh.write("\t".join(keys) + "\n")
        for row in rows:
            fh.write("\t".join(_fmt(row[k]) for k in keys) + "\n")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float | np.floating) else str(value)


def summarise(rows: list[dict]) -> str:
    """Median |error| and r per configuration and map, over the panel's subjects."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if not row["map"].startswith("att"):
            groups.setdefault((row["config"], row["map"]), []).append(row)
    lines = [
        "| configuration | map | n | median abs GM err % | median abs WM err % | "
        "worst abs GM err % | median r |",
        "|---|---|---|---|---|---|---|",
    ]
    for (config, desc), group in sorted(groups.items()):
        gm = np.abs([g["gm_err_pct"] for g in group])
        wm = np.abs([g["wm_err_pct"] for g in group])
        r = [g["r"] for g in group]
        lines.append(
            f"| {config} | {desc} | {len(group)} | {np.median(gm):.1f} | {np.median(wm):.1f} "
            f"| {gm.max():.1f} | {np.median(r):.3f} |"
        )
    return "\n".join(lines)


def against_oracle(rows: list[dict]) -> str:
    """Per cleaned map: how far it lands from the oracle (median over subjects of
    |GM - oracle GM| and |WM - oracle WM| in % of the truth, and of r - oracle r)."""
    by = {(r["subject"], r["config"], r["map"]): r for r in rows}
    groups: dict[tuple[str, str], list[tuple]] = {}
    for row in rows:
        best = by.get((row["subject"], "oracle", "cleaned"))
        skip = (
            row["map"].startswith("att")
            or row["map"] == "blur"
            or row["config"] in ("oracle", "floor")
        )
        if best is None or skip:
            continue
        groups.setdefault((row["config"], row["map"]), []).append(
            (
                abs(row["gm_err_pct"] - best["gm_err_pct"]),
                abs(row["wm_err_pct"] - best["wm_err_pct"]),
                row["r"] - best["r"],
            )
        )
    lines = [
        "| configuration | map | n | median abs GM - oracle % | median abs WM - oracle % | "
        "worst abs GM - oracle % | median r - oracle r |",
        "|---|---|---|---|---|---|---|",
    ]
    for (config, desc), group in sorted(groups.items()):
        g = np.array(group)
        lines.append(
            f"| {config} | {desc} | {len(g)} | {np.median(g[:, 0]):.1f} | "
            f"{np.median(g[:, 1]):.1f} | {g[:, 0].max():.1f} | {np.median(g[:, 2]):+.3f} |"
        )
    return "\n".join(lines)


def per_subject(rows: list[dict]) -> str:
    """GM/WM error (%) and r of the plain mean, the white-paper floor
    (:func:`whitepaper_floor`), the oracle (with the standard error of
    its GM/WM means), the default cleaned map and the denoised map (as shipped and
    fine-tuned on the run, ``finetune``) per subject; ATT
    error (s) of multi-PLD subjects, over the tissue masks and over their voxels whose
    true ATT the protocol can measure (:func:`att_measurable`)."""
    by = {(r["subject"], r["config"], r["map"]): r for r in rows}
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    lines = [
        "| subject | plain mean GM / WM % (r) | white-paper floor GM / WM % | "
        "oracle GM / WM % (r) | oracle SE GM / WM % | "
        "defaults cleaned GM / WM % (r) | denoised GM / WM % (r) | "
        "fine-tuned denoised GM / WM % (r) | ATT GM / WM error s | "
        "ATT error where measurable s (share of GM / WM) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(key):
        r = by.get(key)
        if r is None:
            return "-"
        return f"{r['gm_err_pct']:+.1f} / {r['wm_err_pct']:+.1f} ({r['r']:.2f})"

    for name in subjects:
        att = by.get((name, "defaults", "att"))
        att_text = f"{att['gm_err_pct']:+.2f} / {att['wm_err_pct']:+.2f}" if att else "-"
        part = by.get((name, "defaults", "att-measurable"))
        measurable = (
            f"{part['gm_err_pct']:+.2f} / {part['wm_err_pct']:+.2f} "
            f"({part['gm_share']:.0%} / {part['wm_share']:.0%})"
            if part
            else "-"
        )
        best = by.get((name, "oracle", "cleaned"))
        se = f"{best['gm_se_pct']:.1f} / {best['wm_se_pct']:.1f}" if best else "-"
        low = by.get((name, "floor", "whitepaper"))
        floor = f"{low['gm_err_pct']:+.1f} / {low['wm_err_pct']:+.1f}" if low else "-"
        lines.append(
            f"| {name} | {cell((name, 'plain', 'mean'))} | {floor} "
            f"| {cell((name, 'oracle', 'cleaned'))} "
            f"| {se} | {cell((name, 'defaults', 'paocsl'))} "
            f"| {cell((name, 'defaults', 'denoised'))} "
            f"| {cell((name, 'finetune', 'denoised'))} | {att_text} | {measurable} |"
        )
    return "\n".join(lines)


def replicate_table(rows: list[dict], groups: dict[str, list[str]]) -> str:
    """Mean and SD over each subject's draws (``groups``: panel name -> the names
    of its draws, :func:`replicates`) of the default cleaned map's and the
    oracle's GM/WM errors (%), and how many draws meet the issue's thresholds
    (cleaned GM within 5%, WM within 15% of the truth)."""
    by = {(r["subject"], r["config"], r["map"]): r for r in rows}
    lines = [
        "| subject | draws | defaults cleaned GM err % mean (SD) | WM err % mean (SD) | "
        "draws within 5% GM / 15% WM | oracle GM err % mean (SD) | oracle WM err % mean (SD) |",
        "|---|---|---|---|---|---|---|",
    ]
    for base, names in groups.items():
        if len(names) < 2:
            continue
        cells = []
        for config, desc in (("defaults", "paocsl"), ("oracle", "cleaned")):
            found = [by[(n, config, desc)] for n in names if (n, config, desc) in by]
            gm = np.array([r["gm_err_pct"] for r in found])
            wm = np.array([r["wm_err_pct"] for r in found])
            if gm.size < 2:
                cells.append(("-", "-", "-"))
                continue
            within = f"{int(np.sum(np.abs(gm) <= 5))} / {int(np.sum(np.abs(wm) <= 15))}"
            cells.append(
                (
                    f"{gm.mean():+.1f} ({gm.std(ddof=1):.1f})",
                    f"{wm.mean():+.1f} ({wm.std(ddof=1):.1f})",
                    within,
                )
            )
        (dg, dw, within), (og, ow, _) = cells
        lines.append(f"| {base} | {len(names)} | {dg} | {dw} | {within} | {og} | {ow} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1, help="subjects processed at once")
    parser.add_argument("--subjects", nargs="+", help="panel names to run (default: all)")
    parser.add_argument("--report-only", action="store_true", help="score existing runs only")
    parser.add_argument(
        "--all-configs",
        action="store_true",
        help=f"run {', '.join(MOTION_CONFIGS)} on every subject, not only {MOTION_SUBJECTS}",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        help="configurations to run (default: all that apply to each subject)",
    )
    parser.add_argument(
        "--replicates",
        type=int,
        default=1,
        metavar="K",
        help="draw each subject K times with other seeds (default 1: the panel's seed only)",
    )
    args = parser.parse_args(argv)
    root = args.out.resolve()
    chosen = [p for p in PANEL if not args.subjects or p[0] in args.subjects]
    draws = {entry[0]: replicates(entry, max(args.replicates, 1)) for entry in chosen}
    panel = [draw for entry in chosen for draw in draws[entry[0]]]
    if not args.report_only:
        with cf.ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [
                pool.submit(process, root, e, args.all_configs, args.configs) for e in panel
            ]
            for done in cf.as_completed(futures):
                name, lines = done.result()
                print(f"{name}: " + "; ".join(lines), flush=True)
    rows = []
    for entry in panel:
        bids = root / "data" / entry[0]
        if (bids / "participants.tsv").exists():
            rows += score_subject(root, entry, bids)
    write_table(rows, root / "results.tsv")
    (root / "panel.json").write_text(json.dumps({p[0]: p[1:] for p in panel}, indent=1))
    print(summarise(rows))
    print()
    print(against_oracle(rows))
    print()
    print(per_subject(rows))
    if args.replicates > 1:
        print()
        print(replicate_table(rows, {k: [d[0] for d in v] for k, v in draws.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
