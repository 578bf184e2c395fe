"""Dataset level (``asl-pipeline BIDS_DIR OUTPUT_DIR group``).

Reads what the participant level stored, re-runs nothing, and writes:

* ``group_qc.tsv``: one row per ASL run (subject, session, run, GM and WM CBF
  of the measured map, their ratio, QEI, framewise displacement, pairs the
  outlier cleaning removed) with the flags of :data:`FLAGS`;
* ``group_report.html``: the distribution of each metric over the runs, flagged
  runs highlighted, and the table;
* ``sub-<label>/perf/sub-<label>_desc-regional_cbf.tsv``: CBF per tissue class
  (GM, WM, CSF from the ASL-space probability maps) of every CBF map of each of
  the subject's runs.

Regions are tissue classes only: no installed package ships a lobar or
vascular-territory atlas with a usable license (nilearn's bundled data holds
the MNI152 template and its GM/WM maps, no parcellation).
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from asl_pipeline import __version__
from asl_pipeline.derivatives import parse_entities
from asl_pipeline.errors import ASLInputError

#: QC tables of the participant level (one per run).
QC_GLOB = "sub-*/**/perf/*_desc-qualitycontrol_cbf.tsv"
QC_SUFFIX = "_desc-qualitycontrol_cbf.tsv"

#: Columns of ``group_qc.tsv`` taken from each run's QC table (the ``cbf_``
#: columns describe the measured map: cleaned when cleaning ran, else the mean).
METRICS = {
    "gm_cbf": ("cbf_gm_cbf_mean", "GM CBF", "mL/100 g/min"),
    "wm_cbf": ("cbf_wm_cbf_mean", "WM CBF", "mL/100 g/min"),
    "gm_wm_ratio": ("cbf_gm_wm_ratio", "GM/WM CBF ratio", ""),
    "qei": ("cbf_qei", "Quality evaluation index (QEI)", ""),
    "fd_mean": ("framewise_displacement_mean", "Mean framewise displacement", "mm"),
    "fd_max": ("framewise_displacement_max", "Maximum framewise displacement", "mm"),
    "pairs_removed": ("outlier_volumes_all_slices", "Pairs removed by the cleaning", ""),
    "pairs_partial": ("outlier_pairs_partial", "Pairs removed in some slices only", ""),
    "n_pairs": ("n_pairs", "Label/control pairs", ""),
    "coreg_dice": ("coreg_dice", "ASL-T1w mask Dice", ""),
    "att_gm": ("att_gm_mean", "GM arterial transit time (multi-PLD)", "s"),
    "att_wm": ("att_wm_mean", "WM arterial transit time (multi-PLD)", "s"),
}


@dataclass(frozen=True)
class Flag:
    """A documented limit on one metric of :data:`METRICS`."""

    metric: str
    low: float | None
    high: float | None
    reason: str

    def text(self) -> str:
        name, units = METRICS[self.metric][1], METRICS[self.metric][2]
        units = f" {units}" if units else ""
        if self.low is not None and self.high is not None:
            return f"{name} outside {self.low:g}-{self.high:g}{units}"
        if self.low is not None:
            return f"{name} below {self.low:g}{units}"
        return f"{name} above {self.high:g}{units}"

    def raised(self, value: float) -> bool:
        if not np.isfinite(value):
            return False
        return (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        )


#: Absolute limits (adults at rest; loose on purpose, so that a flag means
#: "look at this run", not "exclude it").
FLAGS = (
    Flag(
        "gm_cbf",
        30.0,
        90.0,
        "healthy adult grey-matter CBF lies around 40-80 mL/100 g/min (ASL white paper, "
        "Alsop et al. 2015); far outside it, suspect the M0, the labeling efficiency or "
        "the registration",
    ),
    Flag(
        "gm_wm_ratio",
        1.5,
        None,
        "grey matter is perfused 2-3 times more than white matter; a low ratio means "
        "blurred or mis-registered maps, or tissue maps that do not fit the ASL image",
    ),
    Flag("fd_max", None, 1.0, "a displacement above 1 mm between volumes corrupts pairs"),
    Flag(
        "qei",
        0.5,
        None,
        "QEI (Dolui et al. 2024) runs from 0 to 1; below 0.5 the map is of poor quality",
    ),
)
#: Runs whose metric lies this many robust z-scores (median, 1.4826 MAD) from
#: the group's median are also flagged, from this many runs on.
ROBUST_Z = 3.5
MIN_RUNS_FOR_Z = 5


def find_qc_tables(output_dir: str | Path) -> list[Path]:
    """The participant level's QC tables under ``output_dir``; a clear error if none."""
    output_dir = Path(output_dir)
    tables = sorted(output_dir.glob(QC_GLOB))
    if not tables:
        raise ASLInputError(
            f"no participant-level outputs (no sub-*/perf/*{QC_SUFFIX}); nothing was written.",
            file=output_dir,
            field="analysis_level",
            fix="run `asl-pipeline BIDS_DIR OUTPUT_DIR participant` first, with the same "
            "OUTPUT_DIR.",
        )
    return tables


def read_qc_row(path: Path) -> dict:
    """One run's QC table as a ``group_qc.tsv`` row (NaN for a missing column)."""
    table = pd.read_csv(path, sep="\t")
    if table.empty:
        raise ASLInputError(
            "the QC table has no row.",
            file=path,
            field="rows",
            fix="run the participant level again for this subject.",
        )
    qc = table.iloc[0]
    ent = parse_entities(path)
    row = {
        "subject": ent["sub"],
        "session": ent.get("ses", "n/a"),
        "run": ent.get("run", "n/a"),
        "acquisition": ent.get("acq", "n/a"),
        "qc_file": path.name,
    }
    for column, (source, _, _) in METRICS.items():
        row[column] = pd.to_numeric(qc.get(source, np.nan), errors="coerce")
    return row


def robust_z(values) -> np.ndarray:
    """(x - median) / (1.4826 MAD); NaN where the MAD is 0 or the value is missing."""
    x = np.asarray(values, dtype=float)
    med = np.nanmedian(x)
    mad = 1.4826 * np.nanmedian(np.abs(x - med))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x - med) / mad if mad > 0 else np.full_like(x, np.nan)


def flag_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``flags`` (``; ``-separated, ``n/a`` when none) and ``n_flags`` columns."""
    flags: list[list[str]] = [[] for _ in range(len(table))]
    for flag in FLAGS:
        for i, value in enumerate(table[flag.metric]):
            if flag.raised(value):
                flags[i].append(flag.text())
    if len(table) >= MIN_RUNS_FOR_Z:
        for metric in ("gm_cbf", "gm_wm_ratio", "qei", "fd_max"):
            for i, z in enumerate(robust_z(table[metric])):
                if np.isfinite(z) and abs(z) > ROBUST_Z:
                    flags[i].append(f"{METRICS[metric][1]} {z:+.1f} robust SD from the group")
    out = table.copy()
    out["n_flags"] = [len(f) for f in flags]
    out["flags"] = ["; ".join(f) if f else "n/a" for f in flags]
    return out


def group_qc_table(qc_files: list[Path]) -> pd.DataFrame:
    """One row per run (QC table), with flags."""
    return flag_runs(pd.DataFrame([read_qc_row(p) for p in qc_files]))


# --------------------------------------------------------------------------------------
# regional CBF
# --------------------------------------------------------------------------------------

TISSUES = ("GM", "WM", "CSF")
#: Voxels above this probability make a tissue's region (as in the QC table).
TISSUE_THRESHOLD = 0.7


def run_maps(qc_file: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """The native-space CBF maps (by ``desc``) and ASL-space probsegs of a run."""
    stem = qc_file.name.removesuffix(QC_SUFFIX)
    folder = qc_file.parent
    maps = {}
    for path in sorted(folder.glob(f"{stem}_desc-*_cbf.nii.gz")):
        desc = parse_entities(path).get("desc")
        if desc and desc != "timeseries" and "space" not in parse_entities(path):
            maps[desc] = path
    tissues = {t: folder / f"{stem}_label-{t}_probseg.nii.gz" for t in TISSUES}
    return maps, {t: p for t, p in tissues.items() if p.exists()}


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asanyarray(img.dataobj, dtype=float), img.affine


def regional_cbf(maps: dict[str, Path], tissues: dict[str, Path]) -> list[dict]:
    """CBF statistics per map and tissue class.

    For each tissue: the mean, median and SD over voxels whose probability
    exceeds :data:`TISSUE_THRESHOLD`, their count, and the probability-weighted
    mean over all voxels (less sensitive to the threshold).
    """
    probs = {}
    for tissue, path in tissues.items():
        probs[tissue], affine = _load(path)
    rows = []
    for desc, path in maps.items():
        cbf, cbf_affine = _load(path)
        for tissue, prob in probs.items():
            if prob.shape != cbf.shape or not np.allclose(affine, cbf_affine, atol=1e-3):
                raise ASLInputError(
                    f"not on the grid of {path.name}.",
                    file=tissues[tissue],
                    field="shape/affine",
                    fix="run the participant level again for this subject.",
                )
            sel = (prob > TISSUE_THRESHOLD) & np.isfinite(cbf)
            vals = cbf[sel]
            weights = np.where(np.isfinite(cbf), np.clip(prob, 0, 1), 0)
            total = weights.sum()
            rows.append(
                {
                    "map": desc,
                    "region": tissue,
                    "n_voxels": int(sel.sum()),
                    "cbf_mean": float(vals.mean()) if vals.size else np.nan,
                    "cbf_median": float(np.median(vals)) if vals.size else np.nan,
                    "cbf_sd": float(vals.std(ddof=1)) if vals.size > 1 else np.nan,
                    "cbf_weighted_mean": float((np.nan_to_num(cbf) * weights).sum() / total)
                    if total > 0
                    else np.nan,
                }
            )
    return rows


REGIONAL_COLUMNS = {
    "session": {"Description": "session label (n/a without sessions)"},
    "run": {"Description": "run label (n/a without runs)"},
    "acquisition": {"Description": "acq label (n/a without one)"},
    "map": {
        "Description": "desc of the native-space CBF map: mean (all pairs), the cleaning "
        "method (outlier-cleaned, e.g. paocsl), denoised (DWAN, opt-in)"
    },
    "region": {"Description": "tissue class, from the run's ASL-space label-<X>_probseg"},
    "n_voxels": {"Description": f"voxels with tissue probability > {TISSUE_THRESHOLD}"},
    "cbf_mean": {"Description": "mean CBF over those voxels", "Units": "mL/100 g/min"},
    "cbf_median": {"Description": "median CBF over those voxels", "Units": "mL/100 g/min"},
    "cbf_sd": {"Description": "SD of CBF over those voxels", "Units": "mL/100 g/min"},
    "cbf_weighted_mean": {
        "Description": "tissue-probability-weighted mean CBF over all voxels",
        "Units": "mL/100 g/min",
    },
}


def regional_tables(output_dir: str | Path, qc_files: list[Path]) -> dict[str, pd.DataFrame]:
    """Per subject, the regional CBF of every run (rows: run x map x region)."""
    per_subject: dict[str, list[dict]] = {}
    for qc_file in qc_files:
        ent = parse_entities(qc_file)
        maps, tissues = run_maps(qc_file)
        for row in regional_cbf(maps, tissues):
            keys = {
                "session": ent.get("ses", "n/a"),
                "run": ent.get("run", "n/a"),
                "acquisition": ent.get("acq", "n/a"),
            }
            per_subject.setdefault(ent["sub"], []).append(keys | row)
    return {sub: pd.DataFrame(rows) for sub, rows in per_subject.items()}


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def _figure_png(table: pd.DataFrame, metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, name, units = METRICS[metric]
    values = table[metric].to_numpy(dtype=float)
    flagged = table["n_flags"].to_numpy() > 0
    labels = _run_labels(table)
    fig, ax = plt.subplots(figsize=(6.0, 1.8))
    finite = np.isfinite(values)
    if finite.sum() > 1:
        box = {"widths": 0.5, "showfliers": False}
        try:  # matplotlib >= 3.10
            ax.boxplot(values[finite], orientation="horizontal", **box)
        except TypeError:
            ax.boxplot(values[finite], vert=False, **box)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, size=len(values))
    ax.scatter(values[~flagged], 1 + jitter[~flagged], color="tab:blue", s=22, zorder=3)
    ax.scatter(values[flagged], 1 + jitter[flagged], color="tab:red", s=36, zorder=4)
    for i in np.flatnonzero(flagged & finite):
        ax.annotate(labels[i], (values[i], 1 + jitter[i]), fontsize=7, color="tab:red",
                    xytext=(3, 6), textcoords="offset points")  # fmt: skip
    for flag in FLAGS:
        if flag.metric == metric:
            for limit in (flag.low, flag.high):
                if limit is not None:
                    ax.axvline(limit, color="tab:red", linestyle="--", linewidth=1)
    ax.set_yticks([])
    ax.set_xlabel(f"{name} ({units})" if units else name)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _run_labels(table: pd.DataFrame) -> list[str]:
    return [f.removesuffix(QC_SUFFIX) for f in table["qc_file"]]


def _html_table(table: pd.DataFrame, highlight=None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for i, (_, row) in enumerate(table.iterrows()):
        cells = "".join(
            f"<td>{v:.3g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
            for v in row
        )
        cls = ' class="flagged"' if highlight is not None and highlight[i] else ""
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render_report(table: pd.DataFrame, regional: dict[str, pd.DataFrame]) -> str:
    """The group report: a self-contained HTML page (figures inlined as PNG)."""
    n_flagged = int((table["n_flags"] > 0).sum())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>asl_pipeline group report</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}tr.flagged{background:#fdd}",
        "</style></head><body>",
        "<h1>asl_pipeline group report</h1>",
        f"<p>{len(table)} ASL run(s) of {table['subject'].nunique()} subject(s); "
        f"{n_flagged} run(s) flagged (red). asl_pipeline {__version__}.</p>",
        "<h2>Flags</h2><ul>",
    ]
    parts += [f"<li><b>{html.escape(f.text())}</b>: {html.escape(f.reason)}.</li>" for f in FLAGS]
    parts.append(
        f"<li><b>group outlier</b>: GM CBF, GM/WM ratio, QEI or FD max more than {ROBUST_Z} "
        f"robust SD (1.4826 MAD) from the group median, from {MIN_RUNS_FOR_Z} runs on.</li>"
        "</ul>"
    )
    parts.append("<h2>Distributions</h2>")
    for metric in ("gm_cbf", "wm_cbf", "gm_wm_ratio", "qei", "fd_mean", "fd_max",
                   "pairs_removed", "att_gm", "att_wm"):  # fmt: skip
        if table[metric].notna().any():
            png = base64.b64encode(_figure_png(table, metric)).decode()
            parts.append(
                f"<figure><img alt='{html.escape(METRICS[metric][1])}' "
                f"src='data:image/png;base64,{png}'></figure>"
            )
    parts.append("<h2>Runs</h2>")
    parts.append(_html_table(table, highlight=(table["n_flags"] > 0).to_list()))
    parts.append(
        "<h2>Regional CBF (tissue classes)</h2><p>Mean CBF (mL/100 g/min) over voxels "
        f"with tissue probability above {TISSUE_THRESHOLD}, from each run's ASL-space "
        "probability maps. Lobes and vascular territories are not reported: no installed "
        "package ships such an atlas with a usable license (nilearn's bundled data has "
        "none).</p>"
    )
    for subject, frame in sorted(regional.items()):
        if frame.empty:
            continue
        wide = frame.pivot_table(
            index=["session", "run", "acquisition", "map"], columns="region", values="cbf_mean"
        ).reset_index()
        wide.columns.name = None
        parts.append(f"<h3>sub-{html.escape(subject)}</h3>" + _html_table(wide))
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------
# the whole group level
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupOutputs:
    qc_table: Path
    report: Path
    regional: tuple[Path, ...]


def qc_columns_description() -> dict:
    """JSON sidecar of ``group_qc.tsv``: what each column is."""
    desc = {
        "subject": {"Description": "participant label"},
        "session": {"Description": "session label (n/a without sessions)"},
        "run": {"Description": "run label (n/a without runs)"},
        "acquisition": {"Description": "acq label (n/a without one)"},
        "qc_file": {"Description": "the run's QC table (its sub-*/perf folder)"},
    }
    for column, (source, name, units) in METRICS.items():
        desc[column] = {"Description": f"{name} (QC column {source})"}
        if units:
            desc[column]["Units"] = units
    desc["n_flags"] = {"Description": "number of flags raised"}
    desc["flags"] = {
        "Description": "flags raised (n/a when none): the limits in Levels, and '<metric> "
        f"<z> robust SD from the group' for a run more than {ROBUST_Z} robust SD from the "
        f"group median (from {MIN_RUNS_FOR_Z} runs on)",
        "Delimiter": "; ",
        "Levels": {f.text(): f.reason for f in FLAGS},
    }
    return desc


def run_group_level(output_dir: str | Path) -> GroupOutputs:
    """Write the group QC table, the group report and the regional tables.

    Everything is read and computed before anything is written, so a problem
    (no participant outputs, an unreadable table) leaves ``output_dir`` as it was.
    """
    output_dir = Path(output_dir)
    qc_files = find_qc_tables(output_dir)
    table = group_qc_table(qc_files)
    regional = regional_tables(output_dir, qc_files)
    report = render_report(table, regional)

    qc_path = output_dir / "group_qc.tsv"
    table.to_csv(qc_path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    (output_dir / "group_qc.json").write_text(
        json.dumps(qc_columns_description(), indent=2) + "\n"
    )
    report_path = output_dir / "group_report.html"
    report_path.write_text(report)
    written = []
    for subject, frame in sorted(regional.items()):
        path = output_dir / f"sub-{subject}" / "perf" / f"sub-{subject}_desc-regional_cbf.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        sources = sorted(
            f"bids::{p.relative_to(output_dir).as_posix()}"
            for q in qc_files
            if parse_entities(q)["sub"] == subject
            for group in run_maps(q)
            for p in group.values()
        )
        meta = {"Sources": sources, **REGIONAL_COLUMNS}
        path.with_suffix("").with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        written.append(path)
    return GroupOutputs(qc_path, report_path, tuple(written))
