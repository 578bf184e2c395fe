"""The closing summary of ``asl-pipeline``: one line per ASL run.

Read back from the QC tables the run wrote, so the line shows exactly what
the derivatives hold: mean GM and WM CBF of the measured map (the
outlier-cleaned map when cleaning ran, else the plain mean; never the
denoised one), their ratio, and how many pairs the cleaning removed; for a
multi-PLD fit, the mean GM and WM ATT and the share of failed fits instead.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from asl_pipeline.group import QC_GLOB as _QC_GLOB


def _number(row: dict, key: str) -> float:
    try:
        return float(row.get(key, "nan"))
    except ValueError:
        return float("nan")


def _pairs_text(row: dict) -> str:
    removed = row.get("outlier_volumes_all_slices")
    if removed in (None, "", "n/a"):
        return "no outlier cleaning"
    text = f"{int(float(removed))} of {int(_number(row, 'n_pairs'))} pairs removed"
    partial = _number(row, "outlier_pairs_partial")
    if partial > 0:
        text += f", {int(partial)} more in some slices only"
    return text


def _att_text(row: dict) -> str:
    """A multi-PLD fit's ATT and its failed fits (the pairs are not cleaned there)."""
    gm, wm = _number(row, "att_gm_mean"), _number(row, "att_wm_mean")
    text = f"ATT GM {gm:.2f}, WM {wm:.2f} s"
    failed = [_number(row, f"att_{t}_failed_percent") for t in ("gm", "wm")]
    if all(math.isfinite(v) for v in failed):
        text += f", fit failed in {failed[0]:.0f}% of GM and {failed[1]:.0f}% of WM voxels"
    return text


def summary_line(qc_file: Path) -> str:
    with qc_file.open(newline="") as fh:
        row = next(csv.DictReader(fh, delimiter="\t"), {})
    run = qc_file.name.removesuffix("_desc-qualitycontrol_cbf.tsv")
    gm, wm = _number(row, "cbf_gm_cbf_mean"), _number(row, "cbf_wm_cbf_mean")
    ratio = _number(row, "cbf_gm_wm_ratio")
    tail = _att_text(row) if "att_gm_mean" in row else _pairs_text(row)
    return f"{run}: GM {gm:.1f}, WM {wm:.1f} mL/100 g/min, GM/WM {ratio:.2f}; {tail}"


def summary_lines(output_dir: str | Path) -> list[str]:
    """One line per QC table under ``output_dir`` (sorted by path)."""
    return [summary_line(f) for f in sorted(Path(output_dir).glob(_QC_GLOB))]
