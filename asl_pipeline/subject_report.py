"""The per-subject HTML report, built from the derivatives alone.

:func:`write_subject_report` reads what the participant level stored under
``OUTPUT_DIR/sub-<label>/`` (maps, masks, transforms, tables, sidecars) and
``OUTPUT_DIR/logs/`` (the run's configuration, provenance and methods text,
crash files), draws the figures with :mod:`asl_pipeline.reportlets` into
``sub-<label>/figures/`` and writes ``sub-<label>/figures/sub-<label>_report.html``
beside them, as fMRIPrep assembles its reports. Nothing is recomputed but the
figures, so ``asl-pipeline ... --reports-only`` regenerates the reports of a
finished (or failed) run without its work directory.

Sections: Summary, Anatomical, then per ASL run: registration (before/after
flicker), motion and confounds, carpet plot, CBF maps, outlier matrix, QC
table with units, reference ranges and flags; then Methods (with numbered
references), About and Errors. No nipype here.
"""

from __future__ import annotations

import csv
import html
import json
import platform
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nib
import numpy as np

from asl_pipeline import __version__

#: Provenance file of a subject, written by the CLI before processing starts.
PROVENANCE = "logs/asl_pipeline_run_sub-{subject}.json"
REPORT_NAME = "sub-{subject}_report.html"

#: Citations the methods texts use (a pattern found in the text -> reference).
REFERENCES = (
    (
        r"Alsop et al\.? \(?2015|ASL white paper",
        "Alsop DC, Detre JA, Golay X, et al. Recommended implementation of arterial spin-"
        "labeled perfusion MRI for clinical applications: a consensus of the ISMRM perfusion "
        "study group and the European consortium for ASL in dementia. Magn Reson Med. "
        "2015;73(1):102-116. doi:10.1002/mrm.25197",
    ),
    (
        r"Wang \(?2012",
        "Wang Z. Improving cerebral blood flow quantification for arterial spin labeled "
        "perfusion MRI by removing residual motion artifacts and global signal fluctuations. "
        "Magn Reson Imaging. 2012;30(10):1409-1415. doi:10.1016/j.mri.2012.05.004",
    ),
    (
        r"Power et al\.? \(?2012",
        "Power JD, Barnes KA, Snyder AZ, Schlaggar BL, Petersen SE. Spurious but systematic "
        "correlations in functional connectivity MRI networks arise from subject motion. "
        "NeuroImage. 2012;59(3):2142-2154. doi:10.1016/j.neuroimage.2011.10.018",
    ),
    (
        r"Jenkinson \(?2002",
        "Jenkinson M, Bannister P, Brady M, Smith S. Improved optimization for the robust and "
        "accurate linear registration and motion correction of brain images. NeuroImage. "
        "2002;17(2):825-841. doi:10.1006/nimg.2002.1132",
    ),
    (
        r"Li et al\.? \(?2018",
        "Li Y, Dolui S, Xie DF, Wang Z. Priors-guided slice-wise adaptive outlier cleaning "
        "for arterial spin labeling perfusion MRI. J Neurosci Methods. 2018;307:248-253. "
        "doi:10.1016/j.jneumeth.2018.06.007",
    ),
    (
        r"Dolui et al\.? \(?2017",
        "Dolui S, Wang Z, Shinohara RT, Wolk DA, Detre JA. Structural Correlation-based "
        "Outlier Rejection (SCORE) algorithm for arterial spin labeling time series. J Magn "
        "Reson Imaging. 2017;45(6):1786-1797. doi:10.1002/jmri.25436",
    ),
    (
        r"Wang \(?2013|\bAOC\b",
        "Wang Z. 2013: adaptive outlier cleaning (AOC) of ASLtbx, as cited in the methods "
        "specification of asl_pipeline (shared/specs/asl-methods.md, section 5.2); see the "
        "ASLtbx documentation for the full reference",
    ),
    (
        r"Buxton et al\.? \(?1998",
        "Buxton RB, Frank LR, Wong EC, Siewert B, Warach S, Edelman RR. A general kinetic "
        "model for quantitative perfusion imaging with arterial spin labeling. Magn Reson "
        "Med. 1998;40(3):383-396. doi:10.1002/mrm.1910400308",
    ),
    (
        r"Asllani et al\.? \(?2008",
        "Asllani I, Borogovac A, Brown TR. Regression algorithm correcting for partial volume "
        "effects in arterial spin labeling MRI. Magn Reson Med. 2008;60(6):1362-1371. "
        "doi:10.1002/mrm.21670",
    ),
    (
        r"\bN4\b",
        "Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. IEEE "
        "Trans Med Imaging. 2010;29(6):1310-1320. doi:10.1109/TMI.2010.2046908",
    ),
    (
        r"\bSyN\b|\bANTs\b",
        "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image "
        "registration with cross-correlation: evaluating automated labeling of elderly and "
        "neurodegenerative brain. Med Image Anal. 2008;12(1):26-41. "
        "doi:10.1016/j.media.2007.06.004",
    ),
    (
        r"Atropos",
        "Avants BB, Tustison NJ, Wu J, Cook PA, Gee JC. An open source multivariate framework "
        "for n-tissue segmentation with evaluation on public data. Neuroinformatics. "
        "2011;9(4):381-400. doi:10.1007/s12021-011-9109-y",
    ),
    (
        r"MNI152|ICBM",
        "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average "
        "age-appropriate brain templates from birth to adulthood. NeuroImage. 2009;47:S102. "
        "doi:10.1016/S1053-8119(09)70884-5",
    ),
    (
        r"DWAN|learning from noise",
        "Xie D, Li Y, Yang H, et al. Denoising arterial spin labeling perfusion MRI with deep "
        "machine learning. Magn Reson Imaging. 2020;68:95-105. "
        "doi:10.1016/j.mri.2020.01.005",
    ),
    (
        r"Nipype",
        "Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and "
        "extensible neuroimaging data processing framework in Python. Front Neuroinform. "
        "2011;5:13. doi:10.3389/fninf.2011.00013",
    ),
)


# --------------------------------------------------------------------------
# What the participant level stored
# --------------------------------------------------------------------------
@dataclass
class RunOutputs:
    """The stored files of one ASL run (absent ones are None)."""

    stem: str
    folder: Path
    files: dict[str, Path | None] = field(default_factory=dict)
    template_maps: dict[str, list[tuple[str, Path]]] = field(default_factory=dict)
    outlier_method: str | None = None

    def get(self, key) -> Path | None:
        return self.files.get(key)


@dataclass
class AnatOutputs:
    t1w: Path | None
    mask: Path | None
    probsegs: dict[str, Path]
    to_template: dict[str, Path]


def _first(paths) -> Path | None:
    paths = sorted(paths)
    return paths[0] if paths else None


def find_runs(subject_dir: Path) -> list[RunOutputs]:
    """Every ASL run under ``sub-<label>/[ses-*/]perf`` (by its preprocessed series
    or, when that step failed, by its QC table or mean CBF)."""
    stems: dict[str, Path] = {}
    for pattern, tail in (
        ("*_desc-preproc_asl.nii.gz", "_desc-preproc_asl.nii.gz"),
        ("*_desc-qualitycontrol_cbf.tsv", "_desc-qualitycontrol_cbf.tsv"),
        ("*_aslref.nii.gz", "_aslref.nii.gz"),
    ):
        for path in subject_dir.glob(f"**/perf/{pattern}"):
            stem = path.name[: -len(tail)]
            if "_space-" not in stem and "_desc-" not in stem:
                stems.setdefault(stem, path.parent)
    return [_run_outputs(stem, folder) for stem, folder in sorted(stems.items())]


def _run_outputs(stem: str, folder: Path) -> RunOutputs:
    def one(pattern):
        return _first(folder.glob(f"{stem}_{pattern}"))

    run = RunOutputs(stem=stem, folder=folder)
    outliers = [
        p
        for p in folder.glob(f"{stem}_desc-*_outliers.tsv")
        if not p.stem.endswith("pairs_outliers")
    ]
    if outliers:
        run.outlier_method = re.search(r"_desc-([a-z]+)_outliers", outliers[0].name).group(1)
    files = {
        "asl_preproc": one("desc-preproc_asl.nii.gz"),
        "asl_json": one("desc-preproc_asl.json"),
        "asl_ref": one("aslref.nii.gz"),
        "asl_ref_distorted": one("desc-hmc_aslref.nii.gz"),
        "mask": one("desc-brain_mask.nii.gz"),
        "gm": one("label-GM_probseg.nii.gz"),
        "wm": one("label-WM_probseg.nii.gz"),
        "csf": one("label-CSF_probseg.nii.gz"),
        "asl_to_t1w": one("from-asl_to-T1w_mode-image_xfm.mat"),
        "confounds": one("desc-confounds_timeseries.tsv"),
        "qc": one("desc-qualitycontrol_cbf.tsv"),
        "mean_cbf": one("desc-mean_cbf.nii.gz") or one("desc-meanSmooth*_cbf.nii.gz"),
        "denoised_cbf": one("desc-denoised_cbf.nii.gz") or one("desc-denoisedSmooth*_cbf.nii.gz"),
        "att": one("att.nii.gz"),
        "m0": one("desc-preproc_m0scan.nii.gz"),
        "pvc_gm": one("desc-pvcGM_cbf.nii.gz"),
        "pvc_wm": one("desc-pvcWM_cbf.nii.gz"),
        "fieldmap": _fieldmap_of(folder),
    }
    if run.outlier_method:
        m = run.outlier_method
        files["cleaned_cbf"] = one(f"desc-{m}_cbf.nii.gz") or one(f"desc-{m}Smooth*_cbf.nii.gz")
        files["outlier_matrix"] = one(f"desc-{m}_outliers.tsv")
        files["volume_status"] = one(f"desc-{m}pairs_outliers.tsv")
    run.files = files
    for path in sorted(folder.glob(f"{stem}_space-*_desc-*_cbf.nii.gz")):
        space, desc = re.search(
            r"_space-([A-Za-z0-9]+)_desc-([A-Za-z0-9]+)_cbf", path.name
        ).groups()
        run.template_maps.setdefault(space, []).append((desc, path))
    order = ("mean", run.outlier_method or "", "denoised")
    for entries in run.template_maps.values():
        entries.sort(
            key=lambda e: next((k for k, o in enumerate(order) if e[0].startswith(o) and o), 9)
        )
    return run


def _fieldmap_of(perf: Path) -> Path | None:
    """The SDC field map (``fmap/*_desc-preproc_fieldmap.nii.gz``, Hz) stored next to
    the run's ``perf/`` folder (same subject/session), if any."""
    return _first((perf.parent / "fmap").glob("*_desc-preproc_fieldmap.nii.gz"))


def find_anat(subject_dir: Path) -> AnatOutputs:
    anat = list(subject_dir.glob("**/anat"))
    folder = anat[0] if anat else subject_dir / "anat"
    probsegs = {}
    for label in ("GM", "WM", "CSF"):
        path = _first(
            p for p in folder.glob(f"*_label-{label}_probseg.nii.gz") if "_space-" not in p.name
        )
        if path is not None:
            probsegs[label] = path
    to_template = {}
    for path in folder.glob("*_from-T1w_to-*_mode-image_xfm.h5"):
        to_template[re.search(r"_to-([A-Za-z0-9]+)_mode", path.name).group(1)] = path
    return AnatOutputs(
        t1w=_first(p for p in folder.glob("*_desc-preproc_T1w.nii.gz") if "_space-" not in p.name),
        mask=_first(p for p in folder.glob("*_desc-brain_mask.nii.gz") if "_space-" not in p.name),
        probsegs=probsegs,
        to_template=to_template,
    )


def read_tsv(path) -> dict[str, np.ndarray]:
    """A numeric TSV as columns (``n/a`` -> NaN); non-numeric columns as strings."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        try:
            out[key] = np.array([np.nan if v in ("n/a", "") else float(v) for v in values])
        except ValueError:
            out[key] = np.array(values)
    return out


# --------------------------------------------------------------------------
# QC table: units, reference ranges, flags
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class QCRow:
    column: str
    label: str
    units: str = ""
    low: float | None = None
    high: float | None = None
    source: str = ""

    def range_text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low:g}-{self.high:g}"
        if self.low is not None:
            return f">= {self.low:g}"
        if self.high is not None:
            return f"<= {self.high:g}"
        return ""

    def flagged(self, value) -> bool:
        if value is None or not np.isfinite(value):
            return False
        return (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        )


def qc_rows() -> list[QCRow]:
    """The rows of the QC table; the limits are the group level's
    (:data:`asl_pipeline.group.FLAGS`), so a run flagged here is flagged there."""
    from asl_pipeline.group import FLAGS, METRICS

    limits = {METRICS[f.metric][0]: f for f in FLAGS}

    def row(column, label, units=""):
        flag = limits.get(column)
        if flag is None:
            return QCRow(column, label, units)
        return QCRow(column, label, units, flag.low, flag.high, flag.reason)

    rows = [
        row("cbf_gm_cbf_mean", "GM CBF, measured map", "mL/100 g/min"),
        row("cbf_wm_cbf_mean", "WM CBF, measured map", "mL/100 g/min"),
        row("cbf_gm_wm_ratio", "GM/WM CBF ratio, measured map"),
        row("cbf_gm_negative_percent", "Negative GM CBF, measured map", "% of GM voxels"),
        row("cbf_qei", "Quality evaluation index (QEI), measured map"),
        row("att_gm_mean", "GM arterial transit time (kinetic fit)", "s"),
        row("att_wm_mean", "WM arterial transit time (kinetic fit)", "s"),
        row("att_gm_failed_percent", "Failed kinetic fits in GM", "% of GM voxels"),
        row("att_wm_failed_percent", "Failed kinetic fits in WM", "% of WM voxels"),
        row("mean_gm_cbf_mean", "GM CBF, plain mean of all pairs", "mL/100 g/min"),
        row("mean_wm_cbf_mean", "WM CBF, plain mean of all pairs", "mL/100 g/min"),
        row("mean_gm_wm_ratio", "GM/WM CBF ratio, plain mean"),
        row("mean_qei", "QEI, plain mean"),
        row("denoised_gm_cbf_mean", "GM CBF, DWAN-denoised map", "mL/100 g/min"),
        row("denoised_wm_cbf_mean", "WM CBF, DWAN-denoised map", "mL/100 g/min"),
        row("denoised_gm_wm_ratio", "GM/WM CBF ratio, denoised map"),
        row("pvc_gm_cbf_mean", "GM CBF after partial-volume correction", "mL/100 g/min"),
        row("pvc_wm_cbf_mean", "WM CBF after partial-volume correction", "mL/100 g/min"),
        row("framewise_displacement_mean", "Framewise displacement, mean", "mm"),
        row("framewise_displacement_max", "Framewise displacement, maximum", "mm"),
        row("rmsd_mean", "RMS displacement, mean", "mm"),
        row("rmsd_max", "RMS displacement, maximum", "mm"),
        row("dvars_mean", "DVARS, mean", "signal units"),
        row("dvars_max", "DVARS, maximum", "signal units"),
        row("coreg_dice", "ASL/T1w brain-mask Dice"),
        row("n_pairs", "Label/control pairs"),
        row("outlier_volumes_all_slices", "Pairs removed in every slice", "pairs"),
        row("outlier_pairs_partial", "Pairs removed in some slices only", "pairs"),
        row("outlier_slice_volumes", "Slice-pairs removed", "slice-pairs"),
        row("outlier_fraction", "Fraction of slice-pairs removed"),
    ]
    # a ratio of the other maps is held to the same limit as the measured map's
    ratio = limits.get("cbf_gm_wm_ratio")
    gm = limits.get("cbf_gm_cbf_mean")
    return [
        QCRow(r.column, r.label, r.units, src.low, src.high, src.reason)
        if r.low is None and r.high is None and (src := _same_limit(r.column, ratio, gm))
        else r
        for r in rows
    ]


def _same_limit(column, ratio, gm):
    if column.endswith("_gm_wm_ratio") and ratio is not None:
        return ratio
    if column in ("mean_gm_cbf_mean", "denoised_gm_cbf_mean") and gm is not None:
        return gm
    return None


# --------------------------------------------------------------------------
# Methods and references
# --------------------------------------------------------------------------
def cite(paragraphs: list[str]) -> tuple[list[str], list[str]]:
    """Number the references the paragraphs cite, in order of first citation:
    ``[n]`` is appended to each sentence that cites; returns the paragraphs and
    the numbered reference list."""
    order: list[int] = []
    out = []
    for text in paragraphs:
        sentences = re.split(r"(?<=\.)\s+(?=[A-Z])", text)
        cited = []
        for sentence in sentences:
            numbers = []
            for k, (pattern, _) in enumerate(REFERENCES):
                if re.search(pattern, sentence):
                    if k not in order:
                        order.append(k)
                    numbers.append(order.index(k) + 1)
            if numbers:
                marks = ", ".join(str(n) for n in sorted(set(numbers)))
                sentence = (
                    sentence[:-1] + f" [{marks}]."
                    if sentence.endswith(".")
                    else sentence + f" [{marks}]"
                )
            cited.append(sentence)
        out.append(" ".join(cited))
    return out, [REFERENCES[k][1] for k in order]


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
@dataclass
class Section:
    title: str
    anchor: str
    body: list[str] = field(default_factory=list)


_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#222}
nav{position:sticky;top:0;background:#2b3a55;padding:.4em 1em;z-index:9}
nav a{color:#fff;margin-right:1.1em;text-decoration:none;font-size:90%}
main{max-width:1250px;margin:auto;padding:0 1em 3em}
h1{border-bottom:2px solid #2b3a55}h2{color:#2b3a55;border-bottom:1px solid #ccd;margin-top:1.6em}
h3{color:#445;margin-top:1.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:88%;text-align:left;vertical-align:top}th{background:#eef}
.flag{background:#fdd;color:#900;font-weight:bold}.ok{color:#070}
figure{margin:.6em 0}figure img{width:100%;display:block}
figcaption{font-size:85%;color:#444;margin:.3em 0 .8em}
.flicker{position:relative;width:100%}
.flicker img{width:100%;display:block}
.flicker img.after{position:absolute;top:0;left:0;animation:flick 2.4s steps(1) infinite}
.flicker:hover img.after{animation-play-state:paused}
@keyframes flick{0%{opacity:0}50%{opacity:1}}
.label{font-size:85%;color:#555}
pre{background:#f5f5f5;padding:.6em;overflow-x:auto;font-size:80%}
.warn{color:#a40}.error{color:#900}
"""


def _esc(text) -> str:
    return html.escape(str(text))


def _figure(src: str, caption: str, alt: str | None = None) -> str:
    return (
        f"<figure><img src='{_esc(src)}' alt='{_esc(alt or caption)}'>"
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _flicker(before: str, after: str, caption: str) -> str:
    return (
        "<figure><div class='flicker'>"
        f"<img class='before' src='{_esc(before)}' alt='before registration'>"
        f"<img class='after' src='{_esc(after)}' alt='after registration'>"
        f"</div><figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _table(header: list[str], rows: list[list[str]], classes=None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>"]
    for k, row in enumerate(rows):
        cls = f" class='{classes[k]}'" if classes and classes[k] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _fmt(value) -> str:
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return "n/a"
        if float(value).is_integer() and abs(value) < 1e6:
            return f"{int(value)}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


class _Figures:
    """Writes the figures of one subject into ``figures/`` and remembers failures."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.problems: list[str] = []

    def make(self, name: str, builder):
        """``builder()`` -> figure (or tuple of figures); returns file names or None."""
        from asl_pipeline import reportlets

        try:
            figs = builder()
        except Exception as exc:  # a figure that cannot be drawn is reported, not fatal
            self.problems.append(f"{name}: {type(exc).__name__}: {exc}")
            return None
        single = not isinstance(figs, tuple)
        figs = (figs,) if single else figs
        names = []
        for k, fig in enumerate(figs):
            fname = f"{name}.svg" if single else f"{name}{'ab'[k] if k < 2 else k}.svg"
            reportlets.save_svg(fig, self.folder / fname)
            names.append(fname)
        return names[0] if single else names


def _load(path) -> nib.Nifti1Image:
    img = nib.load(str(path))
    return nib.Nifti1Image(np.asanyarray(img.dataobj, dtype=np.float32), img.affine)


def _field_origin(fieldmap: Path) -> str:
    """How the stored field map was made, from its sidecar's ``FieldmapType``
    (written for phasediff and direct field maps; absent for PEPOLAR)."""
    sidecar = fieldmap.with_name(fieldmap.name.replace(".nii.gz", ".json"))
    try:
        kind = json.loads(sidecar.read_text()).get("FieldmapType")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind == "phasediff":
        return "measured with the phase-difference field map, registered to the ASL images"
    if kind == "fieldmap":
        return "measured with the B0 field map, registered to the ASL images"
    return "estimated from the reverse phase-encoded M0 pair"


def _run_metadata(run: RunOutputs) -> dict:
    path = run.get("asl_json")
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _sequence(meta: dict, context: dict) -> str:
    label = meta.get("ArterialSpinLabelingType", "?")
    readout = meta.get("MRAcquisitionType", "")
    pld = meta.get("PostLabelingDelay")
    if isinstance(pld, list):
        uniq = sorted({round(float(p), 3) for p in pld if p})
        pld = ", ".join(f"{p:g}" for p in uniq) if len(uniq) < 6 else f"{len(uniq)} PLDs"
    parts = [f"{label}{' ' + readout if readout else ''}"]
    if pld is not None:
        parts.append(f"PLD {pld} s")
    if meta.get("LabelingDuration"):
        parts.append(f"labeling {meta['LabelingDuration']} s")
    if meta.get("BackgroundSuppression"):
        parts.append("background suppression")
    del context
    return ", ".join(parts)


def _crash_files(output_dir: Path, subject: str, work_dir: Path | None) -> list[Path]:
    """Crash files of the subject (nipype's ``crash-*.txt`` in logs/ and the work
    directory, Pydra's ``_error.pklz`` in the work directory)."""
    found = list((output_dir / "logs").glob("crash-*"))
    if work_dir is not None and Path(work_dir).is_dir():
        found += list(Path(work_dir).rglob("crash-*.txt"))
        found += list(Path(work_dir).rglob("_error.pklz"))
    out = []
    for path in sorted(set(found)):
        if path.suffix == ".pklz":
            if f"sub_{subject}_wf" in str(path) or f"sub-{subject}" in str(path):
                out.append(path)
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if f"sub_{subject}_wf" in text or f"sub-{subject}" in text:
            out.append(path)
    return out


def _crash_summary(path: Path) -> tuple[str, str]:
    if path.suffix == ".pklz":
        return path.parent.name, "Pydra error file (Python pickle): load it to see the traceback"
    node, lines = "?", path.read_text(errors="replace").splitlines()
    for line in lines:
        if line.startswith("Node:"):
            node = line.split(":", 1)[1].strip()
    tail = [ln for ln in lines if ln.strip()][-12:]
    return node, "\n".join(tail)


def read_provenance(output_dir: Path, subject: str) -> dict:
    path = output_dir / PROVENANCE.format(subject=subject)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _config_file(output_dir: Path, subject: str, provenance: dict) -> Path | None:
    name = provenance.get("config_file")
    if name and (output_dir / "logs" / name).is_file():
        return output_dir / "logs" / name
    candidates = sorted(
        (output_dir / "logs").glob("asl_pipeline_config_*.toml"), key=lambda p: p.stat().st_mtime
    )
    for path in reversed(candidates):
        if f"sub-{subject}" in path.name:
            return path
    return candidates[-1] if candidates else None


def write_subject_report(output_dir, subject: str, *, work_dir=None) -> Path:
    """Draw the figures and write ``sub-<label>/figures/sub-<label>_report.html``.

    Reads only what is under ``output_dir`` (and crash files under
    ``work_dir`` when given). Returns the report's path. A figure that cannot be
    drawn (a missing or damaged file) is named in the Errors section instead.
    """
    output_dir = Path(output_dir)
    subject_dir = output_dir / f"sub-{subject}"
    if (
        not subject_dir.is_dir()
        and not (output_dir / PROVENANCE.format(subject=subject)).is_file()
    ):
        raise FileNotFoundError(
            f"{subject_dir}: no outputs of sub-{subject} (run the participant level first)"
        )
    folder = subject_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    figs = _Figures(folder)
    provenance = read_provenance(output_dir, subject)
    config_path = _config_file(output_dir, subject, provenance)
    config = {}
    if config_path is not None:
        try:
            config = tomllib.loads(config_path.read_text()).get("asl_pipeline", {})
        except (OSError, tomllib.TOMLDecodeError):
            config = {}
    anat = find_anat(subject_dir)
    runs = find_runs(subject_dir)

    sections = [_summary_section(subject, runs, anat, config, provenance)]
    sections.append(_anat_section(subject, anat, figs))
    for run in runs:
        sections.append(_run_section(run, anat, figs))
    sections.append(_methods_section(provenance, runs))
    sections.append(_about_section(provenance, config, config_path))
    sections.append(_errors_section(output_dir, subject, work_dir, figs))
    page = _page(f"sub-{subject}", sections)
    out = folder / REPORT_NAME.format(subject=subject)
    out.write_text(page, encoding="utf-8")
    return out


def _summary_section(subject, runs, anat, config, provenance) -> Section:
    sec = Section("Summary", "summary")
    ran = []
    if config:
        method = config.get("outlier_method", "paocsl")
        ran.append(f"outlier cleaning: {method}")
        ran.append("DWAN denoising: " + ("on" if config.get("denoise") else "off"))
        ran.append(
            "nuisance regression: " + ("on" if config.get("nuisance_regression") else "off")
        )
        fwhm = float(config.get("smoothing_fwhm", 0) or 0)
        ran.append(f"smoothing: {fwhm:g} mm" if fwhm else "smoothing: off")
        ran.append(f"partial-volume correction: {config.get('pvc', 'none')}")
        ran.append(f"quantification: {config.get('quantification', 'white-paper')}")
        ran.append(f"registration backend: {config.get('registration_backend', 'embedded')}")
        ran.append("output spaces: " + ", ".join(config.get("output_spaces", [])))
    rows = [
        ["Subject", f"sub-{subject}"],
        ["T1w", anat.t1w.name if anat.t1w else "not found"],
        ["ASL runs", str(len(runs))],
        ["Processing", "; ".join(ran) if ran else "configuration not found in logs/"],
        ["Templates", ", ".join(sorted(anat.to_template)) or "none"],
    ]
    sec.body.append(_table(["", ""], rows))
    run_rows = []
    for run in runs:
        meta = _run_metadata(run)
        qc = read_tsv(run.get("qc")) if run.get("qc") else {}
        n_pairs = qc.get("n_pairs")
        n_vol = None
        if run.get("confounds"):
            conf = read_tsv(run.get("confounds"))
            n_vol = len(next(iter(conf.values()))) if conf else None
        run_rows.append(
            [
                run.stem,
                _sequence(meta, {}),
                _fmt(n_vol) if n_vol is not None else "n/a",
                _fmt(float(n_pairs[0])) if n_pairs is not None else "n/a",
                meta.get("M0Type", "n/a"),
                run.outlier_method or "none",
                ", ".join(sorted(run.template_maps)) or "native only",
            ]
        )
    if run_rows:
        sec.body.append(
            _table(
                ["Run", "Sequence", "Volumes", "Pairs (cleaned)", "M0", "Cleaning", "Spaces"],
                run_rows,
            )
        )
    return sec


def _anat_section(subject, anat: AnatOutputs, figs: _Figures) -> Section:
    from asl_pipeline import reportlets

    sec = Section("Anatomical", "anat")
    if anat.t1w is None or anat.mask is None:
        sec.body.append("<p class='warn'>No preprocessed T1w or brain mask was found.</p>")
        return sec
    name = figs.make(
        f"sub-{subject}_desc-seg_T1w",
        lambda: reportlets.plot_segmentation(
            _load(anat.t1w), _load(anat.mask), {k: _load(v) for k, v in anat.probsegs.items()}
        ),
    )
    if name:
        sec.body.append(
            _figure(
                name,
                "Brain mask (red) and tissue segmentation (GM magenta, WM blue, CSF yellow: "
                "probability 0.5) on the bias-corrected T1w; sagittal, coronal and axial cuts.",
            )
        )
    for space, xfm in sorted(anat.to_template.items()):
        names = figs.make(
            f"sub-{subject}_space-{space}_desc-normalisation_T1w",
            lambda xfm=xfm, space=space: _normalisation_frames(anat, xfm, space),
        )
        if names:
            sec.body.append(f"<h3>Spatial normalisation to {_esc(space)}</h3>")
            sec.body.append(
                _flicker(
                    names[0],
                    names[1],
                    f"Flicker: the {space} template (frame 1) and the subject's T1w "
                    "resampled into it (frame 2); red: the template's brain mask. Hover to "
                    "pause.",
                )
            )
    return sec


def _normalisation_frames(anat: AnatOutputs, xfm: Path, space: str):
    from asl_pipeline import registration, reportlets, templates

    tpl = templates.get_template(space)
    moved = registration.apply_transforms(_load(anat.t1w), tpl.t1, [str(xfm)])
    mask = tpl.brain_mask
    contour = [(mask, 0.5, "#ff2020")]
    return tuple(
        reportlets.plot_planes(img, mask=mask, contours=contour) for img in (tpl.t1, moved)
    )


def _run_section(run: RunOutputs, anat: AnatOutputs, figs: _Figures) -> Section:
    sec = Section(f"ASL run {run.stem}", f"run-{run.stem}")
    qc = {k: float(v[0]) for k, v in read_tsv(run.get("qc")).items()} if run.get("qc") else {}
    parts = [
        _registration_part(run, anat, figs),
        _confounds_part(run, figs),
        _carpet_part(run, figs),
        _sdc_part(run, figs),
        _cbf_part(run, figs),
        _pvc_part(run, figs),
        _outliers_part(run, figs),
        _qc_part(qc),
    ]
    sec.body += [p for p in parts if p]
    return sec


def _registration_part(run, anat, figs) -> str:
    from asl_pipeline import registration, reportlets

    if not (run.get("asl_ref") and run.get("asl_to_t1w") and anat.t1w and anat.mask):
        return (
            "<h3>ASL to T1w registration</h3><p class='warn'>Reference or transform missing.</p>"
        )

    def frames():
        t1w = _load(anat.t1w)
        ref = _load(run.get("asl_ref"))
        before = registration.apply_transforms(ref, t1w, [])  # header (scanner) alignment
        after = registration.apply_transforms(ref, t1w, [str(run.get("asl_to_t1w"))])
        boundary = _load(anat.probsegs["WM"]) if "WM" in anat.probsegs else _load(anat.mask)
        return reportlets.plot_registration_pair(
            before, after, fixed_mask=_load(anat.mask), boundary=boundary
        )

    names = figs.make(f"{run.stem}_desc-coreg_aslref", frames)
    if not names:
        return ""
    return "<h3>ASL to T1w registration</h3>" + _flicker(
        names[0],
        names[1],
        "Flicker between the ASL reference before registration (scanner coordinates, "
        "frame 1) and after the rigid ASL-to-T1w registration (frame 2), both on the T1w "
        "grid; red: the T1w white-matter boundary (probability 0.5). Hover to pause.",
    )


def _confounds_part(run, figs) -> str:
    from asl_pipeline import reportlets
    from asl_pipeline.group import FLAGS

    path = run.get("confounds")
    if path is None:
        return ""
    conf = read_tsv(path)
    fd_limit = next(f.high for f in FLAGS if f.metric == "fd_max")
    removed = conf.get("outlier_removed")
    name = figs.make(
        f"{run.stem}_desc-confounds_timeseries",
        lambda: reportlets.plot_confounds(
            conf, fd_threshold=fd_limit, removed=None if removed is None else removed > 0
        ),
    )
    if not name:
        return ""
    fd = conf.get("framewise_displacement")
    over = int(np.nansum(fd > fd_limit)) if fd is not None else 0
    return "<h3>Motion and confounds</h3>" + _figure(
        name,
        f"Head motion (cleaned parameters), framewise displacement with the {fd_limit:g} mm "
        f"threshold (red; {over} volume(s) above it) and DVARS of the realigned series.",
    )


def _carpet_part(run, figs) -> str:
    from asl_pipeline import reportlets

    if not all(run.get(k) for k in ("asl_preproc", "gm", "wm", "csf")):
        return ""
    meta = _run_metadata(run)
    t_r = meta.get("RepetitionTimePreparation") or meta.get("RepetitionTime")
    t_r = float(t_r[0] if isinstance(t_r, list) else t_r) if t_r else None

    def carpet():
        series = nib.load(str(run.get("asl_preproc")))
        labels = reportlets.tissue_labels(
            run.get("gm"), run.get("wm"), run.get("csf"), run.get("mask")
        )
        return reportlets.plot_carpet(series, labels, t_r=t_r)

    name = figs.make(f"{run.stem}_desc-carpet_asl", carpet)
    if not name:
        return ""
    return "<h3>Carpet plot</h3>" + _figure(
        name,
        "Voxel time courses of the realigned ASL series (detrended, z-scored), grouped by "
        "tissue (coloured bands on the left: GM, WM, CSF, most probable class above 0.5). "
        "The alternating control/label signal shows as fine vertical stripes; a band of "
        "bright or dark columns is a corrupted volume.",
    )


def _cbf_part(run, figs) -> str:
    from asl_pipeline import reportlets

    maps = [("mean CBF (all pairs)", run.get("mean_cbf"))]
    if run.get("cleaned_cbf"):
        maps.append((f"cleaned CBF ({run.outlier_method}; measured map)", run.get("cleaned_cbf")))
    if run.get("denoised_cbf"):
        maps.append(("DWAN-denoised CBF", run.get("denoised_cbf")))
    maps = [(t, p) for t, p in maps if p is not None]
    if not maps or run.get("mask") is None:
        return ""
    mask = _load(run.get("mask"))
    imgs = [(t, _load(p)) for t, p in maps]
    ref_data = imgs[min(1, len(imgs) - 1)][1].get_fdata()[mask.get_fdata() > 0.5]
    vmax = float(np.percentile(ref_data, 99)) if ref_data.size else 100.0
    vmax = max(vmax, 1.0)
    out = ["<h3>CBF maps</h3>"]
    name = figs.make(
        f"{run.stem}_desc-maps_cbf",
        lambda: reportlets.plot_cbf_maps(imgs, mask=mask, vmax=vmax),
    )
    if name:
        out.append(
            _figure(
                name,
                f"CBF in native ASL space, one colour scale for all maps (0-{vmax:.0f} "
                "mL/100 g/min, the 99th percentile of the measured map in the brain mask): "
                "three planes at the brain's centre (L/R marked) and five axial cuts.",
            )
        )
    for space, entries in sorted(run.template_maps.items()):
        t_imgs = [(f"{desc} CBF, {space}", _load(p)) for desc, p in entries]

        def template_maps(t_imgs=t_imgs, space=space):
            from asl_pipeline import templates

            tpl = templates.get_template(space)
            return reportlets.plot_cbf_maps(
                t_imgs, mask=tpl.brain_mask, vmax=vmax, background=None
            )

        name = figs.make(f"{run.stem}_space-{space}_desc-maps_cbf", template_maps)
        if name:
            out.append(
                _figure(
                    name,
                    f"The same maps resampled into {space} (one interpolation through the "
                    "composed ASL-to-T1w and T1w-to-template transforms), same colour scale.",
                )
            )
    return "".join(out)


def _sdc_part(run, figs) -> str:
    """Susceptibility distortion correction: the estimated field (Hz) over the
    corrected reference, and a flicker of the distorted vs corrected reference.

    The distorted frame is the stored reference before the correction
    (``desc-hmc_aslref``). Outputs of older runs lack it: their distorted frame is
    the corrected reference pushed back through the estimated field with the
    forward model (:func:`asl_pipeline.sdc.distort`), and the caption says so."""
    from asl_pipeline import registration, reportlets, sdc

    if not (run.get("fieldmap") and run.get("asl_ref") and run.get("mask")):
        return ""
    ref, mask = _load(run.get("asl_ref")), _load(run.get("mask"))
    field = _load(run.get("fieldmap"))
    if field.shape[:3] != ref.shape[:3] or not np.allclose(field.affine, ref.affine, atol=1e-3):
        field = registration.apply_transforms(field, ref, [])
    field_hz = np.asarray(field.get_fdata(), np.float32)
    out = ["<h3>Susceptibility distortion correction</h3>"]
    inside = np.abs(field_hz[mask.get_fdata() > 0.5])
    limit = max(float(np.percentile(inside, 99)) if inside.size else 1.0, 1.0)
    name = figs.make(
        f"{run.stem}_desc-fieldmap_aslref",
        lambda: reportlets.plot_fieldmap(ref, field, mask=mask, vmax=limit),
    )
    if name:
        out.append(
            _figure(
                name,
                f"Estimated B0 field (Hz; colour scale +/-{limit:.0f} Hz, the 99th percentile "
                "of |field| in the brain mask) over the corrected ASL reference; the field was "
                f"{_field_origin(run.get('fieldmap'))} ({run.get('fieldmap').name}).",
            )
        )
    try:
        meta = _run_metadata(run)
        pe = sdc.phase_encoding(meta, file=run.get("asl_json"))
    except Exception:  # sidecar lacks PE fields: field only, no flicker
        out.append(
            "<p class='warn'>The run's sidecar has no PhaseEncodingDirection/"
            "TotalReadoutTime, so the before/after view cannot be drawn.</p>"
        )
        return "".join(out)
    shift = np.abs(sdc.hz_to_voxels(field_hz, pe))[mask.get_fdata() > 0.5]

    stored = run.get("asl_ref_distorted")

    def frames():
        if stored is not None:
            distorted = _load(stored)
        else:
            data = np.asarray(ref.get_fdata(), np.float32)
            distorted = nib.Nifti1Image(sdc.distort(data, field_hz, pe), ref.affine)
        return reportlets.plot_registration_pair(distorted, ref, fixed_mask=mask, boundary=mask)

    origin = (
        f"The distorted frame is the reference before the correction ({stored.name})."
        if stored is not None
        else "The distorted frame is the corrected reference pushed back through the "
        "estimated field (forward model; this run's outputs hold no uncorrected reference)."
    )

    names = figs.make(f"{run.stem}_desc-sdc_aslref", frames)
    if names:
        p95 = float(np.percentile(shift, 95)) if shift.size else 0.0
        out.append(
            _flicker(
                names[0],
                names[1],
                f"Flicker between the distorted (frame 1) and the distortion-corrected "
                f"(frame 2) ASL reference, phase encoding {pe.direction}; red: the brain "
                f"mask of the corrected reference. Displacement along the phase-encoding "
                f"axis: 95th percentile {p95:.2f} voxels in the brain. {origin} Hover to pause.",
            )
        )
    return "".join(out)


def _pvc_part(run, figs) -> str:
    """Partial-volume correction: GM and WM maps next to the uncorrected map."""
    from asl_pipeline import reportlets

    if not (run.get("pvc_gm") or run.get("pvc_wm")) or run.get("mask") is None:
        return ""
    uncorrected = run.get("cleaned_cbf") or run.get("mean_cbf") or run.get("denoised_cbf")
    maps = [("uncorrected CBF", uncorrected)] if uncorrected else []
    maps += [
        ("PVC grey-matter CBF", run.get("pvc_gm")),
        ("PVC white-matter CBF", run.get("pvc_wm")),
    ]
    maps = [(t, p) for t, p in maps if p is not None]
    mask = _load(run.get("mask"))
    imgs = [(t, _load(p)) for t, p in maps]
    values = np.concatenate([i.get_fdata()[mask.get_fdata() > 0.5] for _, i in imgs])
    vmax = max(float(np.percentile(values, 99)) if values.size else 100.0, 1.0)
    name = figs.make(
        f"{run.stem}_desc-pvc_cbf", lambda: reportlets.plot_cbf_maps(imgs, mask=mask, vmax=vmax)
    )
    if not name:
        return ""
    return "<h3>Partial-volume correction</h3>" + _figure(
        name,
        f"Uncorrected CBF and the partial-volume-corrected grey- and white-matter CBF "
        f"(pure-tissue estimates, linear regression), one colour scale (0-{vmax:.0f} "
        "mL/100 g/min, 99th percentile of all maps in the brain mask): three planes at the "
        "brain's centre (L/R marked) and five axial cuts.",
    )


def _outliers_part(run, figs) -> str:
    from asl_pipeline import reportlets

    path = run.get("outlier_matrix")
    if path is None:
        return ""
    cols = read_tsv(path)
    pair_cols = [k for k in cols if k != "slice"]
    matrix = np.column_stack([cols[k] for k in pair_cols]) if pair_cols else np.zeros((1, 1))
    name = figs.make(
        f"{run.stem}_desc-{run.outlier_method}_outliers",
        lambda: reportlets.plot_outlier_matrix(matrix, method=run.outlier_method or ""),
    )
    if not name:
        return ""
    return "<h3>Outlier cleaning</h3>" + _figure(
        name,
        "Slices (rows) by label/control pairs (columns); black: the pair was left out of "
        "the mean in that slice.",
    )


def _qc_part(qc: dict) -> str:
    if not qc:
        return "<h3>Quality control</h3><p class='warn'>No QC table found.</p>"
    rows, classes = [], []
    for row in qc_rows():
        if row.column not in qc:
            continue
        value = qc[row.column]
        flagged = row.flagged(value)
        rows.append(
            [
                row.label,
                _fmt(value),
                row.units,
                row.range_text(),
                "FLAG" if flagged else ("ok" if row.range_text() else ""),
                row.source,
            ]
        )
        classes.append("flag" if flagged else "")
    n_flags = classes.count("flag")
    head = (
        f"<p class='{'error' if n_flags else 'ok'}'>{n_flags} metric(s) outside their "
        "reference range. A flag means “look at this run”, not “exclude it”.</p>"
    )
    return (
        "<h3>Quality control</h3>"
        + head
        + _table(["Metric", "Value", "Units", "Reference", "Flag", "Why"], rows, classes)
    )


def _methods_section(provenance: dict, runs) -> Section:
    sec = Section("Methods", "methods")
    methods = provenance.get("methods") or {}
    paragraphs = list(methods.get("subject", []))
    for run in runs:
        paragraphs += [p for p in methods.get("runs", {}).get(run.stem, []) if p not in paragraphs]
    if not paragraphs:
        sec.body.append(
            "<p class='warn'>The methods text was not recorded for this subject (logs/ has "
            "no provenance file); <code>asl-pipeline ... --boilerplate-only</code> writes it.</p>"
        )
        return sec
    paragraphs.append(
        "The workflow was run with Nipype (Gorgolewski et al. 2011)."
        if provenance.get("engine", "nipype") == "nipype"
        else "The workflow was run with Pydra, Nipype's successor engine (Nipype interfaces)."
    )
    cited, references = cite(paragraphs)
    sec.body.append(
        "<p class='label'>Generated from the workflow that ran; it may be copied into a "
        "manuscript's methods section.</p>"
    )
    sec.body += [f"<p>{_esc(p)}</p>" for p in cited]
    if references:
        sec.body.append("<h3>References</h3><ol>")
        sec.body += [f"<li>{_esc(r)}</li>" for r in references]
        sec.body.append("</ol>")
    return sec


def _about_section(provenance: dict, config: dict, config_path) -> Section:
    sec = Section("About", "about")
    rows = [
        ["asl_pipeline version", provenance.get("version", "n/a")],
        ["Report version", __version__],
        ["Command", provenance.get("command", "n/a")],
        ["Run started", provenance.get("started", "n/a")],
        ["Report written", datetime.now(UTC).isoformat(timespec="seconds")],
        ["Platform", provenance.get("platform", "n/a")],
        ["Python", provenance.get("python", "n/a")],
        ["Report platform", platform.platform()],
        ["Configuration file", str(config_path.name) if config_path else "n/a"],
    ]
    sec.body.append(_table(["", ""], rows))
    if config:
        sec.body.append(
            "<details><summary>Configuration</summary><pre>"
            + _esc(json.dumps(config, indent=1, default=str))
            + "</pre></details>"
        )
    return sec


def _errors_section(output_dir, subject, work_dir, figs: _Figures) -> Section:
    sec = Section("Errors", "errors")
    crashes = _crash_files(output_dir, subject, work_dir)
    if not crashes and not figs.problems:
        sec.body.append("<p class='ok'>No errors to report.</p>")
        return sec
    for path in crashes:
        node, tail = _crash_summary(path)
        sec.body.append(
            f"<h3 class='error'>Node {_esc(node)}</h3><p>{_esc(path)}</p><pre>{_esc(tail)}</pre>"
        )
    if figs.problems:
        sec.body.append("<h3 class='error'>Figures that could not be drawn</h3><ul>")
        sec.body += [f"<li>{_esc(p)}</li>" for p in figs.problems]
        sec.body.append("</ul>")
    return sec


def _page(title: str, sections: list[Section]) -> str:
    nav = "".join(f"<a href='#{_esc(s.anchor)}'>{_esc(s.title)}</a>" for s in sections)
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_esc(title)}: asl_pipeline report</title><style>{_CSS}</style></head><body>",
        f"<nav>{nav}</nav><main><h1>{_esc(title)}: asl_pipeline report</h1>",
    ]
    for sec in sections:
        out.append(f"<section id='{_esc(sec.anchor)}'><h2>{_esc(sec.title)}</h2>")
        out += sec.body
        out.append("</section>")
    out.append("</main></body></html>")
    return "\n".join(out)


def subjects_in(output_dir) -> list[str]:
    """Labels of the subjects with outputs under ``output_dir``."""
    return sorted(p.name[4:] for p in Path(output_dir).glob("sub-*") if p.is_dir())
