"""QC table, confounds table and the per-subject HTML report."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from asl_pipeline import pvc, qc, subject_report

LOGGER = logging.getLogger("nipype.interface")


def _load(path):
    return np.asanyarray(nib.load(path).dataobj, dtype=np.float64)


def _read_tsv(path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        return {}
    return {
        key: np.array([np.nan if r[key] in ("n/a", "") else float(r[key]) for r in rows])
        for key in rows[0]
    }


def _write_tsv(path, columns: dict[str, np.ndarray | list]) -> None:
    keys = list(columns)
    n = len(columns[keys[0]]) if keys else 0
    with open(path, "w", newline="") as fh:
        fh.write("\t".join(keys) + "\n")
        for i in range(n):
            vals = []
            for k in keys:
                v = columns[k][i]
                vals.append("n/a" if isinstance(v, float) and not np.isfinite(v) else f"{v:.6g}")
            fh.write("\t".join(vals) + "\n")


class _ComputeQCInputSpec(BaseInterfaceInputSpec):
    cbf = File(exists=True, mandatory=True, desc="mean CBF map to assess (mL/100 g/min)")
    gm = File(exists=True, mandatory=True, desc="GM probability map in ASL space")
    wm = File(exists=True, mandatory=True, desc="WM probability map in ASL space")
    csf = File(exists=True, mandatory=True, desc="CSF probability map in ASL space")
    asl_mask = File(exists=True, mandatory=True, desc="brain mask of the ASL run")
    t1w_mask = File(exists=True, desc="T1w brain mask brought into ASL space (for Dice)")
    ref_image = File(
        exists=True,
        desc="ASL reference image; its own intensity mask is compared with t1w_mask "
        "(coregistration Dice)",
    )
    confounds = File(exists=True, desc="confounds TSV with framewise_displacement, rmsd, dvars")
    outlier_matrix = File(exists=True, desc="slice x pair outlier TSV (1 = removed)")
    extra_maps = InputMultiObject(File(exists=True), desc="further CBF maps to assess")
    extra_names = traits.List(traits.Str, desc="names of extra_maps, used as column prefixes")
    att = File(
        exists=True,
        desc="arterial transit time map (s) of a multi-PLD fit: the columns att_gm_mean and "
        "att_wm_mean",
    )
    att_failed = File(
        exists=True,
        requires=["att"],
        desc="mask of the voxels whose kinetic fit failed: the columns att_gm_failed_percent "
        "and att_wm_failed_percent",
    )
    pvc_gm_cbf = File(
        exists=True,
        desc="partial-volume corrected GM CBF (0 = not estimated): its mean where GM > 0.5 "
        "becomes the column pvc_gm_cbf_mean",
    )
    pvc_wm_cbf = File(
        exists=True,
        desc="partial-volume corrected WM CBF (0 = not estimated): its mean where WM > 0.5 "
        "becomes the column pvc_wm_cbf_mean",
    )


class _ComputeQCOutputSpec(TraitedSpec):
    qc_file = File(desc="one-row QC TSV")
    qc_json = File(desc="the same figures as JSON")


class ComputeQC(SimpleInterface):
    """Section 7 QC figures of one run, as a one-row TSV."""

    input_spec = _ComputeQCInputSpec
    output_spec = _ComputeQCOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        img = nib.load(inp.cbf)
        zooms = img.header.get_zooms()[:3]
        gm, wm, csf = (_load(f) for f in (inp.gm, inp.wm, inp.csf))
        row: dict[str, float] = {}
        maps = [("cbf", inp.cbf)]
        if isdefined(inp.extra_maps):
            names = inp.extra_names if isdefined(inp.extra_names) else []
            for i, path in enumerate(inp.extra_maps):
                maps.append((names[i] if i < len(names) else f"map{i + 1}", path))
        for name, path in maps:
            cbf = _load(path)
            for key, value in qc.tissue_cbf_stats(cbf, gm, wm).items():
                row[f"{name}_{key}"] = value
            row[f"{name}_qei"] = qc.qei(cbf, gm, wm, csf, zooms=zooms)
        if isdefined(inp.att):
            failed = _load(inp.att_failed) if isdefined(inp.att_failed) else None
            for key, value in qc.tissue_att_stats(_load(inp.att), gm, wm, failed).items():
                row[f"att_{key}"] = value
        if isdefined(inp.pvc_gm_cbf) and isdefined(inp.pvc_wm_cbf):
            gm_pvc, wm_pvc = (_load(f) for f in (inp.pvc_gm_cbf, inp.pvc_wm_cbf))
            row.update(
                pvc.regional_means(
                    np.where(gm_pvc != 0, gm_pvc, np.nan),
                    np.where(wm_pvc != 0, wm_pvc, np.nan),
                    gm,
                    wm,
                )
            )
        if isdefined(inp.t1w_mask) and isdefined(inp.ref_image):
            own = qc.intensity_mask(_load(inp.ref_image))
            row["coreg_dice"] = qc.dice(own, _load(inp.t1w_mask) > 0.5)
        if isdefined(inp.confounds):
            conf = _read_tsv(inp.confounds)
            for col in ("framewise_displacement", "rmsd", "dvars"):
                if col in conf:
                    vals = conf[col][np.isfinite(conf[col])]
                    row[f"{col}_mean"] = float(vals.mean()) if vals.size else float("nan")
                    row[f"{col}_max"] = float(vals.max()) if vals.size else float("nan")
        if isdefined(inp.outlier_matrix):
            mat = np.loadtxt(inp.outlier_matrix, delimiter="\t", skiprows=1, ndmin=2)
            mat = mat[:, 1:] if mat.shape[1] > 1 else mat  # first column: slice index
            row["outlier_slice_volumes"] = int(mat.sum())
            row["outlier_fraction"] = float(mat.mean()) if mat.size else 0.0
            row["outlier_volumes_all_slices"] = int(np.all(mat > 0, axis=0).sum())
            row["outlier_pairs_partial"] = int((mat.any(axis=0) & ~mat.all(axis=0)).sum())
            row["n_pairs"] = int(mat.shape[1])
        out = Path(runtime.cwd) / "qc.tsv"
        _write_tsv(out, {k: [v] for k, v in row.items()})
        out_json = Path(runtime.cwd) / "qc.json"
        out_json.write_text(json.dumps(row, indent=2, default=float) + "\n")
        self._results["qc_file"] = str(out)
        self._results["qc_json"] = str(out_json)
        return runtime


class _ConfoundsInputSpec(BaseInterfaceInputSpec):
    asl_file = File(exists=True, mandatory=True, desc="motion-corrected 4D ASL series")
    mask = File(exists=True, mandatory=True, desc="brain mask in ASL space")
    motion_confounds = File(
        exists=True, mandatory=True, desc="TSV of motion parameters, FD and RMSD per volume"
    )
    aslcontext = File(exists=True, mandatory=True, desc="aslcontext TSV of the run")
    volume_status = File(
        exists=True,
        desc="pair status TSV of the outlier cleaning (pair, control_volume, label_volume, "
        "status, n_slices_removed)",
    )


class _ConfoundsOutputSpec(TraitedSpec):
    confounds = File(desc="confounds TSV: motion, FD, RMSD, DVARS, outlier flags")


class ConfoundsTable(SimpleInterface):
    """Merge motion figures, DVARS and outlier flags into one TSV per volume."""

    input_spec = _ConfoundsInputSpec
    output_spec = _ConfoundsOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        cols = _read_tsv(inp.motion_confounds)
        series = _load(inp.asl_file)
        n_vol = series.shape[3] if series.ndim == 4 else 1
        n_rows = len(next(iter(cols.values()))) if cols else n_vol
        if n_rows != n_vol:
            raise ValueError(f"{inp.motion_confounds}: {n_rows} rows for {n_vol} volumes")
        cols["dvars"] = qc.dvars(series.reshape(*series.shape[:3], n_vol), _load(inp.mask) > 0)
        if isdefined(inp.volume_status):
            removed, n_slices = np.zeros(n_vol), np.zeros(n_vol)
            with open(inp.volume_status, newline="") as fh:
                for row in csv.DictReader(fh, delimiter="\t"):
                    for key in ("control_volume", "label_volume"):
                        vol = int(row[key])
                        removed[vol] = float(row["status"] == "removed")
                        n_slices[vol] = float(row["n_slices_removed"])
            cols["outlier_removed"] = removed
            cols["outlier_slices_removed"] = n_slices
        out = Path(runtime.cwd) / "confounds.tsv"
        _write_tsv(out, cols)
        self._results["confounds"] = str(out)
        return runtime


class _SubjectReportInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Directory(
        exists=True, mandatory=True, desc="root of the derivatives dataset (participant level)"
    )
    subject = traits.Str(mandatory=True, desc="subject label, without sub-")
    work_dir = traits.Directory(desc="work directory searched for crash files")


class _SubjectReportOutputSpec(TraitedSpec):
    out_report = File(desc="sub-<label>/figures/sub-<label>_report.html")


class SubjectReport(SimpleInterface):
    """The subject's HTML report, assembled from the stored derivatives
    (:func:`asl_pipeline.subject_report.write_subject_report`)."""

    input_spec = _SubjectReportInputSpec
    output_spec = _SubjectReportOutputSpec

    def _run_interface(self, runtime):
        work_dir = self.inputs.work_dir if isdefined(self.inputs.work_dir) else None
        self._results["out_report"] = str(
            subject_report.write_subject_report(
                self.inputs.output_dir, self.inputs.subject, work_dir=work_dir
            )
        )
        return runtime
