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

from asl_pipeline import pvc, qc, reports

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
    subject = traits.Str(mandatory=True, desc="subject label")
    run_name = traits.Str(mandatory=True, desc="name of the run (BIDS file stem)")
    mean_cbf = File(exists=True, mandatory=True, desc="mean CBF, native space")
    cleaned_cbf = File(exists=True, desc="outlier-cleaned mean CBF, native space")
    denoised_cbf = File(exists=True, desc="DWAN-denoised CBF, native space")
    mni_cbf = File(exists=True, desc="final CBF map in MNI space")
    final_label = traits.Str(
        "measured", usedefault=True, desc="which map the final (MNI) map is, for its caption"
    )
    mni_mask = File(exists=True, desc="MNI template brain mask for the MNI overlay")
    ref_image = File(exists=True, desc="ASL reference image")
    t1w_mask_asl = File(exists=True, desc="T1w brain mask resampled into ASL space")
    asl_series = File(exists=True, desc="motion-corrected ASL series (carpet plot)")
    asl_mask = File(exists=True, desc="ASL brain mask")
    confounds = File(exists=True, desc="confounds TSV (FD, RMSD, motion parameters)")
    outlier_matrix = File(exists=True, desc="slice x pair outlier TSV")
    qc_json = File(exists=True, desc="QC figures (JSON)")
    methods = traits.Str("", usedefault=True, desc="methods paragraph built from the workflow")
    warnings = traits.List(traits.Str, desc="warnings raised while reading the run")


class _SubjectReportOutputSpec(TraitedSpec):
    out_report = File(desc="self-contained HTML report")


class SubjectReport(SimpleInterface):
    """Per-run HTML report: CBF maps, registration, motion, carpet, outliers."""

    input_spec = _SubjectReportInputSpec
    output_spec = _SubjectReportOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        png = reports.figure_to_png
        opt = {
            k: getattr(inp, k) for k in inp.copyable_trait_names() if isdefined(getattr(inp, k))
        }
        mean = _load(inp.mean_cbf)
        vmax = float(np.percentile(mean[mean > 0], 99)) if np.any(mean > 0) else 100.0
        cbf_figs = [
            (
                "Mean CBF, native space (mL/100 g/min)",
                png(reports.plot_mosaic(mean, title="mean CBF", vmax=vmax, label="mL/100 g/min")),
            )
        ]
        for key, title in (
            ("cleaned_cbf", "outlier-cleaned CBF"),
            ("denoised_cbf", "DWAN-denoised CBF"),
        ):
            if key in opt:
                cbf_figs.append(
                    (
                        f"{title[0].upper()}{title[1:]}, native space",
                        png(
                            reports.plot_mosaic(
                                _load(opt[key]), title=title, vmax=vmax, label="mL/100 g/min"
                            )
                        ),
                    )
                )
        if "mni_cbf" in opt:
            cbf_figs.append(
                (
                    f"Final CBF ({inp.final_label} map) in MNI152NLin2009aSym space",
                    png(
                        reports.plot_mosaic(
                            _load(opt["mni_cbf"]),
                            title="CBF, MNI",
                            vmax=vmax,
                            label="mL/100 g/min",
                            n_slices=16,
                        )
                    ),
                )
            )
        sections = [reports.ReportSection("Cerebral blood flow", figures=cbf_figs)]
        if "qc_json" in opt:
            table = json.loads(Path(opt["qc_json"]).read_text())
            caption = (
                "Quality control: cbf_* describe the measured map (outlier-cleaned when "
                "cleaning ran, else the plain mean); mean_* the plain mean of all pairs; "
                "denoised_* the DWAN map, when denoising ran"
            )
            sections[0].tables.append((caption, table))
        if "ref_image" in opt and "t1w_mask_asl" in opt:
            sections.append(
                reports.ReportSection(
                    "Registration",
                    figures=[
                        (
                            "T1w brain mask (red) on the ASL reference",
                            png(
                                reports.plot_overlay(
                                    _load(opt["ref_image"]), _load(opt["t1w_mask_asl"])
                                )
                            ),
                        )
                    ],
                )
            )
        if "mni_cbf" in opt and "mni_mask" in opt:
            sections[-1].figures.append(
                (
                    "MNI template brain outline (red) on CBF in MNI space",
                    png(reports.plot_overlay(_load(opt["mni_cbf"]), _load(opt["mni_mask"]))),
                )
            )
        motion = reports.ReportSection("Head motion and signal")
        if "confounds" in opt:
            conf = _read_tsv(opt["confounds"])
            params = None
            names = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
            if all(n in conf for n in names):
                params = np.column_stack([conf[n] for n in names])
            if "framewise_displacement" in conf:
                motion.figures.append(
                    (
                        "Framewise displacement and motion parameters",
                        png(
                            reports.plot_motion(
                                np.nan_to_num(conf["framewise_displacement"]),
                                rmsd=conf.get("rmsd"),
                                params=params,
                            )
                        ),
                    )
                )
        if "asl_series" in opt and "asl_mask" in opt:
            motion.figures.append(
                (
                    "Carpet plot of the motion-corrected series",
                    png(reports.plot_carpet(_load(opt["asl_series"]), _load(opt["asl_mask"]) > 0)),
                )
            )
        if motion.figures:
            sections.append(motion)
        if "outlier_matrix" in opt:
            mat = np.loadtxt(opt["outlier_matrix"], delimiter="\t", skiprows=1, ndmin=2)
            sections.append(
                reports.ReportSection(
                    "Outlier cleaning",
                    figures=[
                        (
                            "Slice x pair outlier matrix",
                            png(reports.plot_outlier_matrix(mat[:, 1:])),
                        )
                    ],
                )
            )
        sections.append(reports.ReportSection("Methods", text=inp.methods))
        page = reports.build_report(
            f"asl_pipeline report: sub-{inp.subject}, {inp.run_name}",
            sections,
            warnings=inp.warnings if isdefined(inp.warnings) else (),
        )
        out = Path(runtime.cwd) / "report.html"
        out.write_text(page)
        self._results["out_report"] = str(out)
        return runtime
