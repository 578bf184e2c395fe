"""``asl-simulate``: write a simulated ASL BIDS dataset with its ground truth.

Exit codes: 0 success, 1 bad input (message names the file, field and fix),
2 bad command line (argparse).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def get_parser() -> argparse.ArgumentParser:
    """The command-line parser (testable without a subprocess)."""
    parser = argparse.ArgumentParser(
        prog="asl-simulate",
        description=(
            "Simulate realistic ASL subjects (ASL series, M0 scan, T1w) and write them "
            "as a BIDS dataset, with the ground truth (CBF, ATT, tissue maps, motion, "
            "outliers, transforms) under OUTPUT_DIR/derivatives/simulation."
        ),
    )
    parser.add_argument("output_dir", type=Path, help="new or empty directory to create")
    parser.add_argument(
        "--generator",
        choices=["mni", "phantom"],
        default="mni",
        type=str.lower,
        help="mni (default): deformed MNI152 templates; phantom: the ASL DRO hard "
        "labels, per-tissue Buxton kinetics, correlated noise (needs asldro; see "
        "asl_pipeline.simulate.phantom)",
    )
    g = parser.add_argument_group("dataset")
    g.add_argument("--n-subjects", type=int, default=3, help="number of subjects (default 3)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="allow a non-empty OUTPUT_DIR (files of a previous simulation are replaced)",
    )
    a = parser.add_argument_group("acquisition")
    a.add_argument("--labeling", choices=["pcasl", "pasl"], default="pcasl", type=str.lower)
    a.add_argument("--readout", choices=["2d", "3d"], default="2d", type=str.lower)
    a.add_argument("--n-pairs", type=int, default=40, help="control/label pairs (default 40)")
    a.add_argument(
        "--plds",
        type=float,
        nargs="+",
        metavar="S",
        help="multi-PLD (pCASL) / multi-TI (PASL) run with these delays in seconds, e.g. "
        "--plds 0.5 1.0 1.5 2.0 2.5 (PASL: TIs above the 0.7 s bolus cut-off); the pairs "
        "cycle through them, --n-pairs in all (a multiple of their number) unless "
        "--pld-repeats is given",
    )
    a.add_argument(
        "--pld-repeats",
        type=int,
        metavar="N",
        help="control/label pairs per delay of --plds (then --n-pairs is not used)",
    )
    a.add_argument(
        "--t1-after-arrival",
        choices=["tissue", "blood"],
        type=str.lower,
        help="T1 of the label after it reaches the tissue in the simulated signal: the "
        "apparent tissue T1 (Buxton et al. 1998; default with --plds) or blood T1 (the white "
        "paper's model; default for single-PLD runs)",
    )
    a.add_argument(
        "--background-suppression", action="store_true", help="simulate background suppression"
    )
    a.add_argument("--label-first", action="store_true", help="label/control order")
    a.add_argument(
        "--m0-type",
        choices=["separate", "included"],
        default="separate",
        type=str.lower,
        help="separate _m0scan files (default) or the M0 as the first ASL volume",
    )
    a.add_argument(
        "--t1w-voxel-size",
        type=float,
        default=None,
        help="isotropic T1w voxel size in mm (default 1.0; 1.5 with --generator phantom)",
    )
    s = parser.add_argument_group("subject")
    s.add_argument("--no-motion", action="store_true", help="no head motion")
    s.add_argument("--no-outliers", action="store_true", help="no spikes or slice corruptions")
    s.add_argument("--lesion", action="store_true", help="add a hypoperfused lesion")
    s.add_argument(
        "--distortion",
        action="store_true",
        help="B0-induced EPI distortion along the phase encoding (strong orbitofrontal and "
        "temporal fields) in the ASL series and M0, a reverse phase-encoded M0 in fmap/ "
        "(PEPOLAR) and the true field map with the ground truth",
    )
    s.add_argument(
        "--fieldmap",
        choices=["pepolar", "phasediff", "fieldmap"],
        default="pepolar",
        type=str.lower,
        help="with --distortion, the field map written to fmap/: pepolar (default; the "
        "reverse phase-encoded M0), phasediff (phasediff + magnitude1/2, EchoTime1/2, "
        "Siemens 0..4095 phase) or fieldmap (fieldmap in Hz + magnitude); phasediff and "
        "fieldmap are on their own, finer grid and head position",
    )
    s.add_argument(
        "--bold",
        action="store_true",
        help="also write a resting-state BOLD run per subject (func/sub-XX_task-rest_bold.nii.gz, "
        "3 mm, 120 volumes, its own grid and head position; T2* and fluctuation amplitude "
        "depend on the same anatomy and perfusion, see asl_pipeline.simulate.bold)",
    )
    s.add_argument(
        "--noise-scale", type=float, default=1.0, help="multiplies thermal and physiological noise"
    )
    p = parser.add_argument_group(
        "phantom generator only (--generator phantom; it also takes --plds with one value "
        "for a single delay, and --t1-after-arrival, default tissue)"
    )
    p.add_argument(
        "--motion",
        choices=["none", "drift", "jumps"],
        default=None,
        type=str.lower,
        help="head motion: none (default), drift (0->2 mm, 0->2 deg) or jumps",
    )
    p.add_argument(
        "--outlier-types",
        nargs="+",
        default=None,
        choices=["none", "all", "slab_dropout", "spikes", "global", "slab_motion"],
        type=str.lower,
        help="corruptions (default none)",
    )
    return parser


_MNI_ONLY = ("lesion", "label_first", "no_motion", "no_outliers", "distortion", "bold")
_PHANTOM_ONLY = ("motion", "outlier_types")


def parse_args(argv=None) -> argparse.Namespace:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.n_subjects < 1:
        parser.error("--n-subjects must be at least 1")
    if args.n_pairs < 1:
        parser.error("--n-pairs must be at least 1")
    if args.pld_repeats is not None and args.plds is None:
        parser.error("--pld-repeats needs --plds")
    if args.pld_repeats is not None and args.pld_repeats < 1:
        parser.error("--pld-repeats must be at least 1")
    if args.noise_scale < 0:
        parser.error("--noise-scale must be >= 0")
    if args.fieldmap != "pepolar" and not args.distortion:
        parser.error("--fieldmap needs --distortion")
    if args.t1w_voxel_size is None:
        args.t1w_voxel_size = 1.5 if args.generator == "phantom" else 1.0
    if not 0.5 <= args.t1w_voxel_size <= 4:
        parser.error("--t1w-voxel-size must be between 0.5 and 4 mm")
    if args.generator == "phantom":
        used = [n for n in _MNI_ONLY if getattr(args, n)]
        if args.m0_type != "separate":
            used.append("m0_type")
        if used:
            parser.error(
                "--generator phantom does not take "
                + ", ".join("--" + n.replace("_", "-") for n in used)
                + " (use --motion / --outlier-types)"
            )
    else:
        used = [n for n in _PHANTOM_ONLY if getattr(args, n) is not None]
        if used:
            parser.error(
                ", ".join("--" + n.replace("_", "-") for n in used) + " need --generator phantom"
            )
    return args


def _multi_pld_kwargs(args) -> dict:
    """Keyword arguments of the multi-PLD options, only those given (so that a
    single-PLD run calls the simulator exactly as before)."""
    kw = {}
    if args.plds is not None:
        kw["plds"] = list(args.plds)
    if args.pld_repeats is not None:
        kw["pld_repeats"] = args.pld_repeats
    if args.t1_after_arrival is not None:
        kw["t1_after_arrival"] = args.t1_after_arrival
    if args.distortion:
        kw["distortion"] = True
        if args.fieldmap != "pepolar":
            kw["fieldmap"] = args.fieldmap
    if args.bold:
        kw["bold"] = True
    return kw


def main(argv=None) -> int:
    """Entry point of ``asl-simulate``; returns the exit code."""
    args = parse_args(argv)
    from asl_pipeline.errors import ASLInputError
    from asl_pipeline.simulate import simulate_dataset

    start = time.perf_counter()

    def progress(i, n, label, sub):
        print(
            f"[{i + 1}/{n}] sub-{label}: {sub.asl.shape[3]} volumes, "
            f"{len(sub.outlier_volumes)} spike volumes, {len(sub.outlier_slices)} corrupted "
            f"slices, GM CBF {float(sub.cbf[sub.gm > 0.5].mean()):.1f} mL/100 g/min "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )

    if args.generator == "phantom":
        return _main_phantom(args, start)
    try:
        out = simulate_dataset(
            args.output_dir,
            n_subjects=args.n_subjects,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=progress,
            labeling=args.labeling.upper(),
            readout=args.readout.upper(),
            n_pairs=args.n_pairs,
            motion=not args.no_motion,
            outliers=not args.no_outliers,
            lesion=args.lesion,
            noise_scale=args.noise_scale,
            background_suppression=args.background_suppression,
            label_first=args.label_first,
            m0_type=args.m0_type.capitalize(),
            t1w_voxel_size=args.t1w_voxel_size,
            **_multi_pld_kwargs(args),
        )
    except ASLInputError as exc:
        print(f"asl-simulate: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({time.perf_counter() - start:.1f} s)")
    return 0


def _main_phantom(args, start) -> int:
    from asl_pipeline.errors import ASLInputError
    from asl_pipeline.simulate.phantom import simulate_phantom_dataset

    def progress(i, n, label, sub):
        print(
            f"[{i + 1}/{n}] sub-{label}: {sub.asl.shape[3]} volumes, "
            f"{len(sub.outlier_rows)} corrupted (volume, slice) rows, GM CBF "
            f"{float(sub.cbf[sub.gm > 0.7].mean()):.1f} mL/100 g/min "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )

    try:
        out = simulate_phantom_dataset(
            args.output_dir,
            n_subjects=args.n_subjects,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=progress,
            labeling=args.labeling.upper(),
            readout=args.readout.upper(),
            plds=args.plds,
            pld_repeats=args.pld_repeats,
            n_pairs=args.n_pairs,
            background_suppression=args.background_suppression,
            noise_level=args.noise_scale,
            motion=args.motion or "none",
            outliers=[] if args.outlier_types is None else args.outlier_types,
            t1_after_arrival=args.t1_after_arrival or "tissue",
            t1w_voxel_size=args.t1w_voxel_size,
        )
    except ASLInputError as exc:
        print(f"asl-simulate: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
