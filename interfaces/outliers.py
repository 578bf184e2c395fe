"""Nipype interface over :mod:`asl_pipeline.outliers`: PAOCSL, SCORE, AOC, plain mean.

:class:`CleanCBF` loads the CBF series (one map per control/label pair), the
tissue probability maps, the brain mask and the motion parameters, runs the
chosen method and writes the cleaned mean CBF map with a JSON sidecar, the
slice x pair outlier matrix and the status of every pair as TSV files.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from asl_pipeline import outliers as core
from asl_pipeline.derivatives import sidecar_text
from asl_pipeline.errors import ASLInputError
from asl_pipeline.rundesc import pair_volumes, read_aslcontext

LOGGER = logging.getLogger("nipype.interface")

#: Column names of the 6 rigid-body parameters in a motion TSV with a header
#: (fMRIPrep / BIDS confounds names); without them the first 6 columns are
#: taken in SPM's order (3 translations in mm, then 3 rotations in radians).
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")

#: Inputs each method needs besides the CBF series.
_NEEDS = {
    "paocsl": ("gm", "wm", "mask"),
    "score": ("gm", "wm", "csf", "mask"),
    "aoc": ("mask",),
    "mean": (),
}


def read_motion(path) -> np.ndarray:
    """``(n_volumes, 6)`` motion parameters from a TSV/CSV/txt file.

    A header with ``trans_x .. rot_z`` selects those columns; a file without
    a header (SPM ``rp_*.txt``, whitespace separated) gives its first 6
    columns.
    """
    text = Path(path).read_text().strip()
    if not text:
        raise ASLInputError(
            "the motion file is empty", file=path, field="motion", fix="re-run motion correction"
        )
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    delim = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else None)
    rows = [ln.split(delim) if delim else ln.split() for ln in lines]
    first = [c.strip() for c in rows[0]]

    def _num(cell):
        try:
            return float(cell)
        except ValueError:
            return None

    try:
        if all(_num(c) is not None for c in first):
            table = np.array([[float(c) for c in r] for r in rows])
            if table.shape[1] < 6:
                raise ValueError(f"{table.shape[1]} columns")
            return table[:, :6]
        missing = [c for c in MOTION_COLUMNS if c not in first]
        if missing:
            raise ASLInputError(
                f"the motion table has no column(s) {', '.join(missing)}",
                file=path,
                field="motion",
                fix="name the columns trans_x trans_y trans_z rot_x rot_y rot_z, "
                "or give 6 columns without a header",
            )
        cols = [first.index(c) for c in MOTION_COLUMNS]
        table = np.array(
            [
                [float(r[c]) if r[c].strip() not in ("", "n/a") else np.nan for c in cols]
                for r in rows[1:]
            ]
        )
        return table
    except (ValueError, IndexError) as err:
        raise ASLInputError(
            f"cannot read the motion parameters ({err})",
            file=path,
            field="motion",
            fix="give one row of 6 numbers per volume",
        ) from err


def _cell(cell: str) -> float:
    cell = cell.strip()
    return np.nan if cell in ("", "n/a") else float(cell)


def _load(path, what: str, ndim: tuple[int, ...]) -> tuple[nb.Nifti1Image, np.ndarray]:
    img = nb.load(path)
    data = np.asanyarray(img.dataobj).astype(np.float64)
    if data.ndim == 4 and 3 in ndim and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in ndim:
        raise ASLInputError(
            f"the {what} must be {' or '.join(f'{n}D' for n in ndim)}, got shape {data.shape}",
            file=path,
            field=what,
            fix=f"give a {ndim[0]}D image",
        )
    return img, data


def _write_matrix(path: str, outliers: np.ndarray) -> str:
    """Slice x pair 0/1 matrix with a header row and a ``slice`` column."""
    with open(path, "w", newline="") as fobj:
        writer = csv.writer(fobj, delimiter="\t", lineterminator="\n")
        writer.writerow(["slice"] + [f"pair_{i}" for i in range(outliers.shape[1])])
        for s, row in enumerate(outliers.astype(int)):
            writer.writerow([s, *row.tolist()])
    return path


def _write_status(path: str, result: core.CleaningResult, pairs) -> str:
    """One row per pair: its control and label volumes, status, slices removed."""
    with open(path, "w", newline="") as fobj:
        writer = csv.writer(fobj, delimiter="\t", lineterminator="\n")
        writer.writerow(["pair", "control_volume", "label_volume", "status", "n_slices_removed"])
        for i, status in enumerate(result.status):
            cv, lv = ("n/a", "n/a") if pairs is None else pairs[i].tolist()
            writer.writerow([i, cv, lv, status, int(result.outliers[:, i].sum())])
    return path


def _write_mean(path: str, mean: np.ndarray, ref: nb.Nifti1Image) -> str:
    """Float32 NIfTI on the CBF grid, NaN/inf written as 0."""
    data = np.nan_to_num(mean.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    hdr = ref.header.copy()
    hdr.set_data_dtype(np.float32)
    img = nb.Nifti1Image(data, ref.affine, hdr)
    img.header.set_slope_inter(1.0, 0.0)
    img.to_filename(path)
    return path


def _method_kwargs(inp, pairs) -> dict:
    """Keyword arguments of the core function for ``inp.method``."""
    kwargs = {}
    if inp.method == "paocsl":
        kwargs = {
            "min_slices": inp.min_slices,
            "isolated_frac": inp.isolated_frac,
            "n_passes": inp.n_passes,
            "motion_sd": inp.motion_sd,
            "motion_pairs": pairs,
        }
        if isdefined(inp.min_drop_z):
            kwargs["min_drop_z"] = inp.min_drop_z
        if inp.noise_aware:
            kwargs.update(core.PAOCSL_NOISE_AWARE)
    elif inp.method == "aoc":
        kwargs = {"motion_pairs": pairs}
    elif inp.method == "score":
        kwargs = {"tissue_threshold": inp.tissue_threshold}
    if inp.method in ("paocsl", "aoc") and isdefined(inp.th):
        kwargs["th"] = inp.th
    return kwargs


#: Entries of the series' sidecar that describe that file, not how its CBF was
#: quantified: the cleaned map's sidecar does not take them over.
_NOT_INHERITED = ("Sources", "Description", "Units", "RawSources")


class _CleanCBFInputSpec(BaseInterfaceInputSpec):
    cbf_ts = File(
        exists=True,
        mandatory=True,
        desc="4D CBF series in mL/100 g/min, one map per control/label pair",
    )
    cbf_ts_apply = File(
        exists=True,
        desc="optional CBF series of the same run (e.g. regressed or smoothed) whose mean over "
        "the pairs kept in each slice is returned; the decisions are made on cbf_ts",
    )
    cbf_ts_json = File(
        exists=True,
        desc="JSON sidecar of the series whose mean is returned (cbf_ts_apply where given, "
        "else cbf_ts): how it was quantified (parameters, M0, gain drift correction) is kept "
        "in the cleaned map's sidecar, under the cleaning's own entries",
    )
    method = traits.Enum(
        "paocsl",
        "score",
        "aoc",
        "mean",
        usedefault=True,
        desc="cleaning method: PAOCSL (slice-wise), SCORE, AOC or the plain mean",
    )
    gm = File(exists=True, desc="GM probability map on the CBF grid (PAOCSL, SCORE)")
    wm = File(exists=True, desc="WM probability map on the CBF grid (PAOCSL, SCORE)")
    csf = File(exists=True, desc="CSF probability map on the CBF grid (SCORE)")
    mask = File(exists=True, desc="brain mask on the CBF grid (PAOCSL, SCORE, AOC)")
    motion = File(
        exists=True,
        desc="motion parameters of every ASL volume (n_volumes x 6): TSV with trans_x..rot_z "
        "columns, or 6 columns without a header (SPM order, rotations in radians)",
    )
    aslcontext = File(
        exists=True,
        desc="BIDS aslcontext.tsv of the ASL series, to find each pair's motion rows; "
        "without it rows 2i and 2i+1 belong to pair i",
    )
    th = traits.Float(
        desc="threshold: PAOCSL candidate threshold (default 2), AOC correlation threshold "
        "(default 0.17); unused by SCORE and the mean"
    )
    min_slices = traits.Int(
        2, usedefault=True, desc="PAOCSL: pairs flagged in fewer slices are kept everywhere"
    )
    isolated_frac = traits.Float(
        0.2,
        usedefault=True,
        desc="PAOCSL: pairs flagged in fewer than max(min_slices, this fraction of the "
        "evaluated slices), none adjacent, are kept everywhere",
    )
    n_passes = traits.Int(
        2, usedefault=True, desc="PAOCSL: Jacobi passes over the slices (order independent)"
    )
    min_drop_z = traits.Float(
        desc="PAOCSL: if set, a greedy removal must lower the cost by this many robust SDs "
        "more than the median removal (noise-aware stop); unset = spec rule (any drop)"
    )
    motion_sd = traits.Float(
        3.0,
        usedefault=True,
        desc="PAOCSL: a pair whose control-label motion difference exceeds median + this many "
        "SD in any parameter is removed everywhere (spec: 3)",
    )
    noise_aware = traits.Bool(
        False,
        usedefault=True,
        desc="PAOCSL: use the noise-aware stop and keep single-slice flags "
        "(min_drop_z=4, min_slices=1, isolated_frac=0; overrides those inputs) instead of "
        "the spec rules",
    )
    tissue_threshold = traits.Float(
        0.9, usedefault=True, desc="SCORE: probability threshold of the tissue masks"
    )


class _CleanCBFOutputSpec(TraitedSpec):
    mean_cbf = File(exists=True, desc="cleaned mean CBF map (mL/100 g/min)")
    mean_cbf_json = File(exists=True, desc="JSON sidecar: method, parameters, units, counts")
    outlier_matrix = File(
        exists=True, desc="TSV, one row per slice, one 0/1 column per pair (1 = removed)"
    )
    volume_status = File(
        exists=True, desc="TSV, one row per pair: its volumes, status and slices removed"
    )
    counts = traits.Dict(desc="numbers of pairs and slice-pairs kept and removed")


class CleanCBF(SimpleInterface):
    """Outlier cleaning of a CBF series and its mean CBF map.

    ``method`` picks PAOCSL (needs gm, wm, mask; motion optional), SCORE
    (gm, wm, csf, mask), AOC (mask; motion optional) or the plain mean.
    """

    input_spec = _CleanCBFInputSpec
    output_spec = _CleanCBFOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        method = inp.method
        img, cbf_ts = _load(inp.cbf_ts, "cbf_ts", (4,))
        files = {"cbf_ts": inp.cbf_ts}
        maps = {}
        for name in ("gm", "wm", "csf", "mask"):
            value = getattr(inp, name)
            if name in _NEEDS[method] and not isdefined(value):
                raise ASLInputError(
                    f"method {method!r} needs the {name} input",
                    field=name,
                    fix=f"connect the {name} image or choose another method",
                )
            if isdefined(value):
                maps[name] = _load(value, name, (3,))[1]
                files[name] = value
        n_pairs = cbf_ts.shape[3]
        pairs = None
        if isdefined(inp.aslcontext):
            vtypes = read_aslcontext(inp.aslcontext)
            pairs = pair_volumes(vtypes, source=inp.aslcontext)
            if len(pairs) != n_pairs:
                LOGGER.warning(
                    "%d CBF maps but %s control/label pairs in %s: pairs not mapped to "
                    "volumes, motion screening skipped",
                    n_pairs,
                    len(pairs) or "no",
                    inp.aslcontext,
                )
                pairs = None
        motion = None
        if isdefined(inp.motion) and method in ("paocsl", "aoc"):
            files["motion"] = inp.motion
            motion = read_motion(inp.motion)
            if isdefined(inp.aslcontext) and pairs is None:
                motion = None
            elif pairs is not None and len(vtypes) != motion.shape[0]:
                raise ASLInputError(
                    f"{motion.shape[0]} motion rows but {len(vtypes)} aslcontext rows",
                    file=inp.motion,
                    field="motion",
                    fix="give the motion parameters of every volume of the ASL series",
                )
        kwargs = _method_kwargs(inp, pairs)
        try:
            result = core.clean(method, cbf_ts, motion=motion, **maps, **kwargs)
        except ASLInputError as err:
            if err.file is None and err.field in files:
                fix = err.fix
                if err.field == "motion" and not isdefined(inp.aslcontext):
                    fix = "connect the aslcontext input so that motion rows map to pairs"
                raise ASLInputError(
                    err.problem, file=files[err.field], field=err.field, fix=fix
                ) from err
            raise

        mean_cbf = result.mean_cbf
        if isdefined(inp.cbf_ts_apply):
            files["cbf_ts_apply"] = inp.cbf_ts_apply
            mean_cbf = core.apply_outliers(
                _load(inp.cbf_ts_apply, "cbf_ts_apply", (4,))[1], result.outliers
            )
        stem = Path(str(inp.cbf_ts)).name.removesuffix(".gz").removesuffix(".nii")
        base = fname_presuffix(f"{stem}_{method}", newpath=runtime.cwd)
        out_nii = _write_mean(f"{base}_meancbf.nii.gz", mean_cbf, img)
        counts = result.counts
        quantified = {}
        if isdefined(inp.cbf_ts_json):
            quantified = {
                k: v
                for k, v in json.loads(Path(inp.cbf_ts_json).read_text()).items()
                if k not in _NOT_INHERITED
            }
        meta = {
            **quantified,
            "Units": "mL/100 g/min",
            "OutlierCleaningMethod": method,
            "Parameters": result.parameters,
            "Counts": counts,
            "Details": result.details,
            "Sources": [str(v) for v in files.values()],
        }
        out_json = f"{base}_meancbf.json"
        Path(out_json).write_text(sidecar_text(meta))

        out_matrix = _write_matrix(f"{base}_outliers.tsv", result.outliers)
        out_status = _write_status(f"{base}_status.tsv", result, pairs)
        LOGGER.info(
            "%s: %d of %d pairs kept, %d removed, %d removed in some slices",
            method,
            counts["n_pairs_kept"],
            counts["n_pairs"],
            counts["n_pairs_removed"],
            counts["n_pairs_removed_in_some_slices"],
        )
        self._results.update(
            mean_cbf=out_nii,
            mean_cbf_json=out_json,
            outlier_matrix=out_matrix,
            volume_status=out_status,
            counts=counts,
        )
        return runtime
