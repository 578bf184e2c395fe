"""``asl-train``: train a CBF denoising network by learning from noise.

Sources of per-pair CBF series (exactly one):

``--derivatives DIR``
    The pipeline's derivatives: 4-D per-pair CBF NIfTIs (``*_cbf.nii.gz`` or
    ``*desc-timeseries*.nii[.gz]``, found recursively), each with a brain mask
    next to it (``*mask.nii[.gz]`` sharing the subject/session/run prefix).
``--bids DIR``
    A raw BIDS ASL dataset (read and validated as ``asl-pipeline`` does; no
    T1w needed). Each single-PLD run is realigned ASL-aware (section 3),
    subtracted pair by pair and quantified with its own sidecar and M0
    (section 2), in its native grid, inside a brain mask drawn from the M0
    intensities. Nothing is written inside ``DIR``. Multi-PLD runs are
    skipped (their pairs are not repeated draws of one perfusion map).
``--simulate N``
    ``N`` subjects from :func:`asl_pipeline.simulate.simulate_cbf_series`,
    with varied resolutions, SNR, readouts, labeling and outliers.

``--derivatives`` uses the pipeline's own preprocessing (T1w-based brain
mask, nuisance regression, MNI space): run ``asl-pipeline`` first when that
matters more than the shortcut of ``--bids``.

``--input bold`` trains BOLD-to-ASL prediction (methods spec, section 6.4)
instead of denoising: the network's input is the label/control average of a
segment of pairs (a BOLD-weighted image in the scanner's units), its target
the mean CBF of a different segment. ``--bids`` computes that average from
each realigned run, ``--simulate`` takes it from the simulator; derivatives
hold no such series, so ``--derivatives`` refuses ``--input bold``. Apply
the result with :func:`asl_pipeline.models.inference.predict_cbf_from_bold`
or the ``BOLDToCBF`` interface. No BOLD-input weights are shipped.

Examples::

    asl-train --simulate 40 --epochs 20 --out dwan_run
    asl-train --bids /data/my_study --init-weights shipped --lr 1e-4 \
        --epochs 5 --out my_lab_dwan        # fine-tune on raw BIDS data
    asl-train --derivatives derivatives/asl_pipeline --init-weights shipped \\
        --epochs 5 --out finetuned          # adapt the shipped weights
    asl-train --bids /data/my_study --input bold --epochs 20 \\
        --out bold2cbf                      # predict CBF from BOLD-weighted images

Outputs in ``--out``: ``model.pt`` (final weights, loadable with
:func:`asl_pipeline.models.load_model`), ``checkpoint.pt`` (for
``--resume``), ``history.json`` (per-epoch figures), ``train_config.toml``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from asl_pipeline.errors import ASLInputError

LOGGER = logging.getLogger("asl_pipeline.training")

#: Glob patterns of per-pair CBF series in a derivatives folder (4-D files only are used).
TIMESERIES_PATTERNS = ("*_cbf.nii*", "*desc-timeseries*.nii*")


def lfn_texture_default() -> float:
    """:attr:`asl_pipeline.lfn.SynthConfig.texture`, without importing torch at parse time."""
    from asl_pipeline.lfn import SynthConfig

    return SynthConfig.texture


def get_parser() -> argparse.ArgumentParser:
    """The ``asl-train`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="asl-train",
        description="Train a CBF denoising network (DWAN, U-Net, DilatedNet) from noisy "
        "per-pair CBF series, without clean references (learning from noise); with "
        "--input bold, a network predicting CBF from BOLD-weighted images.",
    )
    src = parser.add_argument_group("training data (exactly one)")
    ex = src.add_mutually_exclusive_group(required=True)
    ex.add_argument(
        "--derivatives",
        type=Path,
        help="folder with 4-D per-pair CBF NIfTIs (*_cbf.nii.gz, *desc-timeseries*) "
        "and their brain masks",
    )
    ex.add_argument(
        "--bids",
        type=Path,
        metavar="BIDS_DIR",
        help="raw BIDS ASL dataset: per-pair CBF is computed from each run (read only)",
    )
    ex.add_argument(
        "--simulate",
        type=int,
        metavar="N",
        help="train on N simulated subjects (asl_pipeline.simulate)",
    )
    ex.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="train on fresh realistic pairs drawn around N simulated subjects of both "
        "generators (asl_pipeline.lfn; the shipped weights' recipe)",
    )
    ex.add_argument(
        "--synthetic-file",
        type=Path,
        metavar="NPZ",
        help="as --synthetic, with subjects saved earlier by --save-synthetic",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=("dwan", "unet", "dilatednet"), default="dwan")
    model.add_argument(
        "--input",
        choices=("cbf", "bold"),
        default="cbf",
        help="network input: cbf (denoise a segment's mean CBF) or bold (predict CBF from "
        "the label/control-averaged, BOLD-weighted image of a segment; --simulate and "
        "--bids only)",
    )
    model.add_argument(
        "--init-weights",
        help="start from these weights (a model file, or 'shipped' for the default DWAN); "
        "the architecture comes from the file",
    )
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--scheme", choices=("lfn", "pseudo-gt"), default="lfn")
    opt.add_argument("--loss", choices=("l1", "l2"), default="l1")
    opt.add_argument("--epochs", type=int, default=20)
    opt.add_argument("--batch-size", type=int, default=64)
    opt.add_argument("--lr", type=float, default=1e-3)
    opt.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="learning rate over the run: constant, or cosine decay from --lr to 0 "
        "(averages out the noisy targets' gradient noise at the end of training)",
    )
    opt.add_argument(
        "--patch-size",
        type=int,
        default=48,
        help="train on random square crops of this side (0: whole slices)",
    )
    opt.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="optimizer steps per epoch (default: one pass over the training slices)",
    )
    opt.add_argument("--val-fraction", type=float, default=0.1)
    opt.add_argument("--seed", type=int, default=0)
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    run.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ...")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    bids = parser.add_argument_group("BIDS input (--bids)")
    bids.add_argument(
        "--participant-label",
        nargs="+",
        help="subjects to use (default: all), with or without sub-",
    )
    bids.add_argument(
        "--no-realign", action="store_true", help="skip the ASL-aware motion correction"
    )
    syn = parser.add_argument_group("realistic pairs drawn on the fly (--synthetic)")
    syn.add_argument(
        "--channels",
        default="cbf,noise,gm,wm",
        help="input channels of a new model, comma-separated from cbf, noise, gm, wm, m0 "
        "(default cbf,noise,gm,wm; asl_pipeline.models.channels); with a noise channel the "
        "model works in signal-to-noise units (DWAN scale_by_noise)",
    )
    syn.add_argument("--steps", type=int, default=4000, help="optimizer steps (4000)")
    syn.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    syn.add_argument(
        "--pairs",
        default="4-48",
        help="range of the number of pairs averaged in an input, LO-HI (4-48)",
    )
    syn.add_argument(
        "--target-pairs", type=int, default=32, help="pairs averaged in a target (32)"
    )
    syn.add_argument(
        "--texture",
        type=float,
        default=lfn_texture_default(),
        metavar="SD",
        help="multiply each example's clean map by a fine-scale log-normal texture of SD "
        "up to this (default %(default)s, the shipped weights' second stage; 0: none), so "
        "that the GM/WM channels do not determine the perfusion (asl_pipeline.lfn.PairSampler)",
    )
    syn.add_argument(
        "--save-synthetic", type=Path, metavar="NPZ", help="also write the simulated subjects"
    )
    fine = parser.add_argument_group("subject-level learning from noise (--bids, --derivatives)")
    fine.add_argument(
        "--subject-finetune",
        type=float,
        metavar="SECONDS",
        help="fine-tune --init-weights on each run's own pairs (those its outlier matrix, "
        "*_desc-<method>_outliers.tsv beside the series, marks as kept, if any; each slice "
        "levelled to their mean) for at most this long, keeping the weights that score "
        "best on held-out slices; one model per run (<out>/<run>_model.pt)",
    )
    sim = parser.add_argument_group("simulation (--simulate)")
    sim.add_argument(
        "--sim-n-pairs", type=int, default=40, help="pairs per simulated subject (40)"
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the command line."""
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.simulate is not None and args.simulate < 2:
        parser.error("--simulate needs at least 2 subjects (one for validation)")
    if (args.simulate or args.synthetic) is not None and not 0 <= args.seed <= 6:
        parser.error(
            "--seed must be 0-6 with --simulate/--synthetic (seeds 7-9 are the validation "
            "and test subjects)"
        )
    if (args.synthetic or args.synthetic_file) is not None and (
        args.model != "dwan" or args.input != "cbf"
    ):
        parser.error("--synthetic trains a CBF-denoising DWAN (--model dwan --input cbf)")
    if args.synthetic is not None and args.synthetic < 2:
        parser.error("--synthetic needs at least 2 subjects (one for validation)")
    try:
        from asl_pipeline.models.channels import check_channels

        args.channels = check_channels(c.strip() for c in args.channels.split(","))
        lo, hi = (int(v) for v in args.pairs.split("-"))
        if not 2 <= lo <= hi:
            raise ValueError
        args.pairs = (lo, hi)
    except ValueError as exc:
        parser.error(f"--channels/--pairs: {exc or 'use LO-HI with 2 <= LO <= HI'}")
    if args.subject_finetune is not None and (args.bids or args.derivatives) is None:
        parser.error("--subject-finetune needs --bids or --derivatives (a run's own pairs)")
    if args.subject_finetune is not None and not args.init_weights:
        parser.error("--subject-finetune needs --init-weights (e.g. shipped)")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error("--val-fraction must be in [0, 1)")
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be positive")
    return args


def _mask_for(path: Path) -> Path:
    """The brain mask next to a per-pair CBF NIfTI (same entity prefix)."""
    name = path.name
    prefix = re.split(r"_(?:desc|space|res|cbf)[-_.]", name, maxsplit=1)[0]
    candidates = sorted(p for p in path.parent.glob(f"{prefix}_*mask.nii*") if p != path)
    space = re.search(r"_space-[A-Za-z0-9]+", name)
    if space:
        same = [p for p in candidates if space.group(0) in p.name]
        candidates = same or candidates
    brain = [p for p in candidates if "brain" in p.name]
    if brain or candidates:
        return (brain or candidates)[0]
    raise ASLInputError(
        "no brain mask found next to the per-pair CBF series.",
        file=path,
        field="brain mask",
        fix=f"write the mask as {prefix}_desc-brain_mask.nii.gz in the same folder",
    )


def _axial_layout(img):
    """The axial voxel axis of ``img`` and its voxel size with that axis moved third.

    Training subjects keep their slices along the third array axis
    (``np.moveaxis(data, axis, 2)``); the voxel size follows the same order.
    """
    from asl_pipeline.models.inference import axial_axis

    axis = axial_axis(img.affine)
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    zooms.insert(2, zooms.pop(axis))
    return axis, tuple(zooms)


def _kept_pairs(path: Path, prefix: str, shape, axis: int):
    """The ``(slices, pairs)`` pairs that the run's outlier cleaning kept, with the
    slices along the axial axis (``axis`` moved third), or None when no cleaning's
    matrix lies next to the native-space series ``path``. The matrix's slices are
    the array's third axis; along another axial axis only whole pairs are kept."""
    from asl_pipeline.lfn import axial_keep
    from asl_pipeline.outliers import read_outlier_matrix

    if "_space-" in path.name:
        return None
    found = [
        p
        for p in sorted(path.parent.glob(f"{prefix}_desc-*_outliers.tsv"))
        if not p.name.endswith("pairs_outliers.tsv")  # the per-pair status table
    ]
    if len(found) != 1:
        return None
    return axial_keep(~read_outlier_matrix(found[0], (shape[2], shape[3])), axis, shape[axis])


def load_derivatives(root) -> list:
    """Subjects (:class:`~asl_pipeline.training.Subject`) from a derivatives folder."""
    import nibabel as nb

    from asl_pipeline.training import Subject

    root = Path(root)
    if not root.is_dir():
        raise ASLInputError(
            "derivatives folder not found.",
            file=root,
            field="--derivatives",
            fix="pass the output folder of asl-pipeline",
        )
    files = sorted({p for pat in TIMESERIES_PATTERNS for p in root.rglob(pat)})
    subjects = []
    for path in files:
        img = nb.load(path)
        if img.ndim != 4 or img.shape[3] < 4:
            continue  # a mean CBF map, not a per-pair series
        mask_path = _mask_for(path)
        mimg = nb.load(mask_path)
        if mimg.shape[:3] != img.shape[:3]:
            raise ASLInputError(
                f"mask shape {mimg.shape[:3]} differs from the series' {img.shape[:3]}.",
                file=mask_path,
                field="shape",
                fix="resample the mask to the CBF series' grid",
            )
        axis, voxel_size = _axial_layout(img)
        series = np.moveaxis(np.asarray(img.dataobj, dtype=np.float32), axis, 2)
        mask = np.moveaxis(np.asarray(mimg.dataobj) > 0, axis, 2)
        tissue = {}
        prefix = re.split(r"_(?:desc|space|res|cbf)[-_.]", path.name, maxsplit=1)[0]
        for label in ("GM", "WM"):  # the run's tissue maps on its grid, when written
            found = sorted(path.parent.glob(f"{prefix}_label-{label}_probseg.nii*"))
            if found and nb.load(found[0]).shape[:3] == img.shape[:3]:
                data = np.asarray(nb.load(found[0]).dataobj, dtype=np.float32)
                tissue[label.lower()] = np.moveaxis(data, axis, 2)
        info = {"file": str(path), "mask": str(mask_path)}
        keep = _kept_pairs(path, prefix, img.shape, axis)
        if keep is not None:
            info["keep"] = keep
        subjects.append(
            Subject(
                name=path.name,
                series=np.nan_to_num(series),
                mask=mask,
                voxel_size=voxel_size,
                info=info,
                **tissue,
            )
        )
    if len(subjects) < 2:
        raise ASLInputError(
            f"found {len(subjects)} 4-D per-pair CBF series (at least 2 are needed).",
            file=root,
            field="--derivatives",
            fix="point --derivatives at a folder holding *_cbf.nii.gz or "
            "*desc-timeseries* 4-D NIfTIs of several subjects",
        )
    return subjects


def run_to_subject(run, *, realign: bool = True, bold: bool = False):
    """Per-pair CBF series of one BIDS ASL run (:class:`~asl_pipeline.bids.ASLRun`).

    Realigns the series (ASL-aware, with the separate M0 when there is one),
    subtracts each control/label pair, and quantifies every difference with
    the run's sidecar and M0 (white-paper model, section 2). The brain mask
    is drawn from the M0 intensities (:func:`asl_pipeline.qc.intensity_mask`).
    With ``bold=True`` the subject also gets each pair's label/control
    average, ``(control + label) / 2 = control - ΔM / 2`` of the realigned
    volumes (``Subject.bold``, the BOLD-weighted input of ``--input bold``);
    a run without control volumes (ΔM or CBF series) is then refused.
    Returns a :class:`~asl_pipeline.training.Subject` with its slices along
    the third array axis; raises :class:`ASLInputError` naming the file when
    the run cannot be used.
    """
    import nibabel as nb

    from asl_pipeline import cbf as quant
    from asl_pipeline.motion import realign_asl
    from asl_pipeline.qc import intensity_mask
    from asl_pipeline.training import Subject

    if run.is_multi_pld:
        raise ASLInputError(
            f"multi-PLD run (PLDs {run.unique_plds.tolist()}): its pairs are not repeated "
            "draws of one perfusion map.",
            file=run.asl_file,
            field="PostLabelingDelay",
            fix="train on single-PLD runs (multi-PLD runs are skipped with --bids)",
        )
    img = nb.load(run.asl_file)
    series = np.asarray(img.dataobj, dtype=np.float32)
    if series.ndim != 4:
        raise ASLInputError(
            f"the ASL series is {series.ndim}-D; a per-pair series needs a 4-D run.",
            file=run.asl_file,
            field="dim",
            fix="use runs with one volume per aslcontext row",
        )
    m0_vols = None
    if run.m0_type == "Separate" and run.m0_file is not None:
        m0_img = nb.load(run.m0_file)
        m0_vols = np.asarray(m0_img.dataobj, dtype=np.float32)
    if realign and len(run.control_label_pairs):
        res = realign_asl(
            series,
            img.affine,
            run.volume_types,
            m0=m0_vols,
            m0_affine=None if m0_vols is None else m0_img.affine,
            asl_file=run.asl_file,
            m0_file=run.m0_file,
            aslcontext_file=run.aslcontext_file,
        )
        series, m0_vols = res.corrected, res.m0_corrected
    elif m0_vols is not None and m0_vols.shape[:3] != series.shape[:3]:
        raise ASLInputError(
            f"the M0 grid {m0_vols.shape[:3]} differs from the ASL grid {series.shape[:3]}.",
            file=run.m0_file,
            field="dim",
            fix="resample the M0 to the ASL grid, or run asl-pipeline and train on its "
            "derivatives",
        )
    params = quant.quant_params(run.description)
    dm = quant.deltam_series(series, run.volume_types, plds=params.pld, source=run.aslcontext_file)
    if dm.kind == "cbf":
        cbf_ts = dm.deltam
        mask = intensity_mask(np.abs(cbf_ts).mean(axis=3), fraction=0.1)
    else:
        m0 = quant.compute_m0(
            params,
            m0_volumes=m0_vols,
            series=series,
            volume_types=run.volume_types,
            control=dm.control,
            source=run.m0_file or run.asl_file,
        )
        mask = intensity_mask(m0)
        cbf_ts = quant.cbf_single_pld(dm.deltam, m0, params, plds=dm.plds, mask=mask).cbf_ts
    cbf_ts = np.nan_to_num(np.asarray(cbf_ts, dtype=np.float32))
    if cbf_ts.shape[3] < 4:
        raise ASLInputError(
            f"only {cbf_ts.shape[3]} perfusion-weighted volumes; learning from noise needs "
            "at least 4 (one per segment).",
            file=run.aslcontext_file,
            field="volume_type",
            fix="train on runs with several control/label pairs",
        )
    mean_ts = None
    if bold:
        if dm.control is None:
            raise ASLInputError(
                f"the run holds {dm.kind} volumes, no control/label images, so it has no "
                "label/control average (BOLD-weighted image) to learn from.",
                file=run.aslcontext_file,
                field="volume_type",
                fix="train --input bold on runs with control and label volumes, or use "
                "--input cbf",
            )
        mean_ts = np.nan_to_num(np.asarray(dm.control - 0.5 * dm.deltam, dtype=np.float32))
    axis, voxel_size = _axial_layout(img)
    name = run.asl_file.name.split("_asl.nii")[0]
    return Subject(
        name=name,
        series=np.moveaxis(cbf_ts, axis, 2),
        mask=np.moveaxis(mask, axis, 2),
        voxel_size=voxel_size,
        info={"file": str(run.asl_file), "pairs": int(cbf_ts.shape[3])},
        bold=None if mean_ts is None else np.moveaxis(mean_ts, axis, 2),
    )


def load_bids(
    root,
    participant_label=None,
    *,
    realign: bool = True,
    progress: bool = True,
    bold: bool = False,
):
    """Subjects (:class:`~asl_pipeline.training.Subject`) from a raw BIDS ASL dataset.

    Every run is read and validated like ``asl-pipeline`` reads it (the first
    problem is raised). Multi-PLD runs are skipped with a log line. Nothing is
    written inside ``root``. ``bold=True``: with each pair's label/control
    average (see :func:`run_to_subject`).
    """
    from tqdm.auto import tqdm

    from asl_pipeline.bids import collect_runs

    runs = collect_runs(root, participant_label, require_t1w=False)
    subjects = []
    for run in tqdm(runs, desc="per-pair CBF", disable=not progress):
        if run.is_multi_pld:
            LOGGER.warning("%s: multi-PLD run skipped", run.asl_file)
            continue
        subjects.append(run_to_subject(run, realign=realign, bold=bold))
    if len(subjects) < 2:
        raise ASLInputError(
            f"found {len(subjects)} usable single-PLD ASL runs (at least 2 are needed: "
            "training and validation).",
            file=root,
            field="--bids",
            fix="add subjects, or check --participant-label",
        )
    return subjects


def _hardware(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _command(argv) -> str:
    return "asl-train " + shlex.join(sys.argv[1:] if argv is None else list(argv))


def _main_synthetic(args, argv, model, init) -> int:
    """``--synthetic``/``--synthetic-file``: fresh realistic pairs around simulated subjects."""
    import torch

    from asl_pipeline import lfn
    from asl_pipeline.models import save_model

    t0 = time.time()
    if args.synthetic_file is not None:
        subjects = lfn.load_subjects(args.synthetic_file)
    else:
        subjects = lfn.clean_subjects(
            args.synthetic, seed=args.seed, progress=not args.no_progress
        )
    if args.save_synthetic is not None:
        lfn.save_subjects(subjects, args.save_synthetic)
    n_val = max(1, int(round(args.val_fraction * len(subjects)))) if args.val_fraction else 0
    train_subj, val_subj = subjects[n_val:], subjects[:n_val]
    cfg = lfn.SynthConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        loss=args.loss,
        patch_size=args.patch_size or 48,
        n_pairs=args.pairs,
        target_pairs=args.target_pairs,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        time_limit=args.time_limit,
        texture=args.texture,
    )
    prep = time.time() - t0
    history = lfn.train_synthetic(model, train_subj, val_subj, cfg, args.out, resume=args.resume)
    metadata = {
        "command": _command(argv),
        "arch": model.arch,
        "input_kind": "cbf",
        "channels": list(model.config.get("channels") or ["cbf"]),
        "scheme": "lfn-synthetic",
        "loss": args.loss,
        "steps": history[-1]["step"] if history else 0,
        "seed": args.seed,
        "texture": args.texture,
        "source": {
            "synthetic": [s.name for s in subjects],
            "file": None if args.synthetic_file is None else str(args.synthetic_file),
            "init_weights": init,
        },
        "train_subjects": [s.name for s in train_subj],
        "val_subjects": [s.name for s in val_subj],
        "hardware": _hardware(args.device),
        "train_seconds": round(history[-1]["seconds"], 1) if history else 0.0,
        "data_seconds": round(prep, 1),
        "validation": history[-1] if history else {},
        "torch": torch.__version__,
    }
    model.to("cpu")
    sha = save_model(model, args.out / "model.pt", metadata=metadata)
    (args.out / "model.json").write_text(json.dumps({"sha256": sha, **metadata}, indent=2))
    print(f"wrote {args.out / 'model.pt'} (sha256 {sha})")
    return 0


def _main_subject_finetune(args, argv, subjects, init) -> int:
    """``--subject-finetune``: one model per run, fine-tuned on that run's own pairs."""
    from asl_pipeline import lfn
    from asl_pipeline.models import load_model, save_model

    for subj in subjects:
        model, _ = load_model(init["path"], device=args.device)
        missing = [
            c
            for c in ("gm", "wm")
            if c in (model.config.get("channels") or ()) and getattr(subj, c) is None
        ]
        if missing:
            raise ASLInputError(
                f"the weights take the {missing} channels but no such tissue maps were found "
                "next to the run.",
                file=subj.info.get("file"),
                field="channels",
                fix="fine-tune on asl-pipeline derivatives (--derivatives, which hold "
                "*_label-GM_probseg / *_label-WM_probseg on the ASL grid), or use "
                "asl-pipeline --denoise --dwan-finetune SECONDS",
            )
        fit = lfn.finetune(
            model,
            subj.series,
            subj.mask,
            {"gm": subj.gm, "wm": subj.wm},
            seconds=args.subject_finetune,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            keep=subj.info.get("keep"),
        )
        metadata = {
            "command": _command(argv),
            "scheme": "lfn-subject",
            "subject": subj.name,
            "source": {
                "run": subj.info.get("file"),
                "init_weights": init,
                "pairs": "kept by the outlier cleaning" if "keep" in subj.info else "all",
            },
            "finetune": fit,
        }
        model.to("cpu")
        path = args.out / f"{subj.name}_model.pt"
        sha = save_model(model, path, metadata=metadata)
        print(f"wrote {path} (sha256 {sha}; {fit['steps']} steps in {fit['seconds']} s)")
    return 0


def main(argv=None) -> int:
    """Entry point of ``asl-train``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import tomli_w
    import torch

    from asl_pipeline.models import build_model, load_model, save_model
    from asl_pipeline.training import TrainConfig, split_subjects, train

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    try:
        # the model first: a wrong --init-weights fails before minutes of data preparation
        init = None
        if args.init_weights:
            path = None if args.init_weights == "shipped" else args.init_weights
            model, init_info = load_model(path, device="cpu")
            if init_info["input_kind"] != args.input:
                raise ASLInputError(
                    f"the initial weights take input_kind {init_info['input_kind']!r}, "
                    f"not {args.input!r}.",
                    file=init_info["path"],
                    field="input_kind",
                    fix=f"pass --input {init_info['input_kind']}, or initial weights "
                    f"trained with --input {args.input}",
                )
            init = {"path": init_info["path"], "sha256": init_info["sha256"]}
        elif args.synthetic is not None or args.synthetic_file is not None:
            model = build_model(
                args.model, channels=args.channels, scale_by_noise="noise" in args.channels
            )
        else:
            model = build_model(args.model, input_kind=args.input)
        if args.synthetic is not None or args.synthetic_file is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            return _main_synthetic(args, argv, model, init)
        if args.simulate is not None:
            from asl_pipeline.training import simulate_subjects

            subjects = simulate_subjects(
                args.simulate,
                seed=args.seed,
                n_pairs=args.sim_n_pairs,
                progress=not args.no_progress,
                bold=args.input == "bold",
            )
            source = {
                "simulate": args.simulate,
                "subject_seeds": [s.info["seed"] for s in subjects],
            }
        elif args.bids is not None:
            subjects = load_bids(
                args.bids,
                args.participant_label,
                realign=not args.no_realign,
                progress=not args.no_progress,
                bold=args.input == "bold",
            )
            source = {"bids": str(args.bids), "runs": [s.info["file"] for s in subjects]}
        else:
            if args.input == "bold":
                raise ASLInputError(
                    "derivatives hold per-pair CBF series but no label/control-averaged "
                    "(BOLD-weighted) series, which --input bold learns from.",
                    file=args.derivatives,
                    field="--input",
                    fix="train --input bold from the raw data with --bids (the average of "
                    "each pair is computed from the realigned run), or use --input cbf",
                )
            subjects = load_derivatives(args.derivatives)
            source = {"derivatives": str(args.derivatives)}
        if init is not None:
            source["init_weights"] = init
    except ASLInputError as err:
        print(f"asl-train: error: {err}", file=sys.stderr)
        return 2
    prep_seconds = time.time() - t0
    if args.subject_finetune is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        try:
            return _main_subject_finetune(args, argv, subjects, init)
        except ASLInputError as err:
            print(f"asl-train: error: {err}", file=sys.stderr)
            return 2
    if model.config.get("channels"):
        print(
            "asl-train: error: the initial weights take the input channels "
            f"{model.config['channels']} (noise level, tissue maps), which the segment "
            "scheme of --bids/--derivatives/--simulate does not provide. Fix: fine-tune them "
            "on each run's own pairs with --subject-finetune SECONDS (or asl-pipeline "
            "--dwan-finetune), or train new weights with --synthetic.",
            file=sys.stderr,
        )
        return 2
    train_subj, val_subj = split_subjects(subjects, args.val_fraction, args.seed)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        loss=args.loss,
        scheme=args.scheme,
        patch_size=args.patch_size or None,
        steps_per_epoch=args.steps_per_epoch,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        input_kind=args.input,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "train_config.toml").write_text(
        tomli_w.dumps({k: v for k, v in settings.items() if v is not None})
    )
    history = train(model, train_subj, val_subj, cfg, args.out, resume=args.resume)
    seconds = sum(r["train_seconds"] for r in history)
    metadata = {
        "command": _command(argv),
        "arch": model.arch,
        "input_kind": args.input,
        "scheme": args.scheme,
        "loss": args.loss,
        "epochs": args.epochs,
        "seed": args.seed,
        "source": source,
        "train_subjects": [s.name for s in train_subj],
        "val_subjects": [s.name for s in val_subj],
        "hardware": _hardware(args.device),
        "train_seconds": round(seconds, 1),
        "data_seconds": round(prep_seconds, 1),
        "validation": history[-1] if history else {},
        "torch": torch.__version__,
    }
    sha = save_model(model, args.out / "model.pt", metadata=metadata)
    (args.out / "model.json").write_text(json.dumps({"sha256": sha, **metadata}, indent=2))
    print(f"wrote {args.out / 'model.pt'} (sha256 {sha})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
