"""Write simulated subjects as a BIDS dataset with the ground truth alongside.

Layout of ``out_dir``::

    dataset_description.json  README  participants.tsv  participants.json
    sub-XX/anat/sub-XX_T1w.nii.gz (+ .json)
    sub-XX/perf/sub-XX_asl.nii.gz (+ _asl.json, _aslcontext.tsv)
    sub-XX/perf/sub-XX_m0scan.nii.gz (+ .json, IntendedFor the ASL run)
    sub-XX/fmap/sub-XX_dir-AP_m0scan.nii.gz (+ .json)  reverse-PE M0 (``distortion``)
    sub-XX/fmap/sub-XX_phasediff.nii.gz, _magnitude1/2 (+ .json)  instead, with
        ``fieldmap="phasediff"``; sub-XX_fieldmap.nii.gz, _magnitude with ``"fieldmap"``
    sub-XX/func/sub-XX_task-rest_bold.nii.gz (+ .json)  resting BOLD run (``bold``)
    derivatives/simulation/            (DatasetType "derivative")
        .bidsignore                     files BIDS derivatives do not cover
        sub-XX/perf/sub-XX_desc-true_cbf.nii.gz     true CBF, ASL space
        sub-XX/perf/sub-XX_desc-true_att.nii.gz     true ATT (s), ASL space
        sub-XX/perf/sub-XX_desc-true_m0.nii.gz      fully relaxed M0, ASL space
        sub-XX/perf/sub-XX_desc-true{GM,WM}_cbf.nii.gz  tissue CBF of each voxel
        sub-XX/perf/sub-XX_label-{GM,WM,CSF}_probseg.nii.gz, _desc-brain_mask
        sub-XX/perf/sub-XX_desc-lesion_mask.nii.gz  (with ``lesion=True``)
        sub-XX/perf/sub-XX_desc-true_kinetics.json  kinetic model (multi-PLD only)
        sub-XX/perf/sub-XX_desc-true_motion.tsv     true motion (+ .json)
        sub-XX/perf/sub-XX_desc-true_outliers.tsv   corrupted volumes/slices
        sub-XX/perf/sub-XX_from-ASL_to-T1w_mode-image_xfm.txt
        sub-XX/fmap/sub-XX_desc-true_fieldmap.nii.gz (+ .json)  B0 field, Hz (``distortion``)
        sub-XX/fmap/sub-XX_space-fmap_desc-true_fieldmap.nii.gz  the same on the field
            map's grid and head position (``fieldmap`` phasediff/fieldmap)
        sub-XX/anat/sub-XX_label-{GM,WM,CSF}_probseg.nii.gz, _desc-brain_mask
        sub-XX/func/sub-XX_task-rest_desc-true_cbf.nii.gz   true CBF, BOLD grid (``bold``)
        sub-XX/func/sub-XX_task-rest_desc-trueamplitude_boldmap.nii.gz  a(x) (``bold``)
        sub-XX/func/sub-XX_task-rest_desc-true_motion.tsv   BOLD head motion (``bold``)
        sub-XX/func/sub-XX_task-rest_from-bold_to-ASL_mode-image_xfm.txt  4x4 BOLD world
            (head at BOLD volume 0) -> ASL world (head at ASL volume 0) (``bold``)
        sub-XX/anat/sub-XX_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json
        sub-XX/anat/sub-XX_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.nii.gz

Storage, as scanners do: the ASL series, M0 scan and T1w are int16 with a
``scl_slope`` chosen by nibabel to use the int16 range (so values are
quantised to about 1e-4 of the image maximum); truth maps are float32 and
masks uint8, except the 1 mm T1w-space probability maps: uint8 with
``scl_slope = 1/255``. All NIfTI files are gzip-compressed with a zero timestamp, so a
given seed gives byte-identical files.

The transforms: ``..._from-ASL_to-T1w_mode-image_xfm.txt`` is the 4x4 RAS+
world-to-world matrix mapping a point of the ASL scan (head at the position of
volume 0) to the same tissue point in the T1w scan (``x_t1w = M @ x_asl``).
The ``..._to-MNI152NLin2009aSym_mode-image_xfm.json`` stores the exact T1w->MNI
mapping (affine part and B-spline coefficients of the displacement, see
:func:`load_true_mapping`); the ``.nii.gz`` of the same name samples its
displacement ``x_mni - x_t1w`` (mm, 4D, last axis x/y/z) on a grid of twice
the T1w voxel size, for viewers and non-Python tools.

Distortion (``simulate_subject(distortion=True)``, ``asl-simulate
--distortion``): the reverse phase-encoded M0 is written as the BIDS PEPOLAR
field map ``fmap/sub-XX_dir-AP_m0scan.nii.gz`` (PhaseEncodingDirection ``j-``;
the ASL run and its M0 are ``j``, posterior to anterior along the RAS+ ``j``
axis), with ``IntendedFor`` naming the ASL run and its M0 and
``B0FieldIdentifier`` ``pepolar0``; the M0 scan (the other half of the pair)
carries the same identifier, and the M0 and ASL sidecars name it in
``B0FieldSource``. The true field (Hz, undistorted ASL space, head position of
volume 0) is ``derivatives/simulation/sub-XX/fmap/sub-XX_desc-true_fieldmap``.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from asl_pipeline import __version__
from asl_pipeline.errors import ASLInputError
from asl_pipeline.kinetics import LAMBDA, T1_BLOOD
from asl_pipeline.simulate.anatomy import TEMPLATE_SPACE, SmoothField, SubjectDeformation
from asl_pipeline.simulate.series import SimulatedSubject, simulate_subject

BIDS_VERSION = "1.10.0"

#: ``B0FieldIdentifier`` of the simulated PEPOLAR pair (``distortion``).
B0_FIELD_ID = "pepolar0"

#: ``B0FieldIdentifier`` of a simulated phasediff / direct field map
#: (``distortion`` with ``fieldmap`` phasediff or fieldmap).
FIELDMAP_ID = "gre0"

_T1W_SIDECAR = {
    "Manufacturer": "asl_pipeline simulator",
    "ManufacturersModelName": "asl_pipeline.simulate",
    "MagneticFieldStrength": 3,
    "MRAcquisitionType": "3D",
    "PulseSequenceType": "MPRAGE",
    "RepetitionTime": 2.3,
    "EchoTime": 0.00296,
    "InversionTime": 0.9,
    "FlipAngle": 9,
}


def subject_seed(seed: int, index: int) -> int:
    """Seed of subject ``index`` (0-based) of a dataset simulated with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_json(path: Path, obj) -> None:
    _write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _write_tsv(path: Path, header, rows) -> None:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in r) for r in rows]
    _write_bytes(path, ("\n".join(lines) + "\n").encode())


def _write_nifti(path: Path, data, affine, *, dtype, tr=None, slope=None) -> None:
    """Write a NIfTI-1 image gzip-compressed with a zero timestamp (reproducible).

    Float data stored as an integer ``dtype`` get nibabel's automatic
    ``scl_slope``/``scl_inter``; ``slope`` instead stores ``data`` (already
    integer) with that fixed slope.
    """
    data = np.asarray(data)
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_data_dtype(dtype)
    if slope is not None:
        hdr.set_slope_inter(slope, 0.0)
    hdr.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if tr is not None and data.ndim == 4:
        zooms = list(hdr.get_zooms()[:3]) + [float(tr)]
        hdr.set_zooms(zooms)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6, filename="") as gz:
        gz.write(img.to_bytes())
    _write_bytes(path, buf.getvalue())


def mapping_to_dict(deformation: SubjectDeformation) -> dict:
    """JSON-serialisable exact description of a T1w -> MNI mapping."""
    return {
        "Description": (
            "True mapping from T1w world coordinates (RAS+, mm) to "
            f"{TEMPLATE_SPACE} (mm): x_mni = A @ x + u(x), u a cubic B-spline "
            "(scipy.ndimage.map_coordinates(coef, (x - Origin) / Spacing, order=3, "
            "prefilter=False, mode='grid-constant')) per component."
        ),
        "FromSpace": "T1w",
        "ToSpace": TEMPLATE_SPACE,
        "Affine": np.round(deformation.affine, 12).tolist(),
        "Origin": [float(v) for v in deformation.fields[0].origin],
        "Spacing": float(deformation.fields[0].spacing),
        "Shape": list(deformation.fields[0].coef.shape),
        "Coefficients": [np.round(f.coef, 9).ravel().tolist() for f in deformation.fields],
    }


def load_true_mapping(path) -> Callable[[np.ndarray], np.ndarray]:
    """Load a ``..._to-MNI152NLin2009aSym_mode-image_xfm.json`` as a function.

    Returns ``f(points)`` mapping ``(N, 3)`` T1w-world points (mm) to MNI (mm),
    identical to :meth:`SimulatedSubject.subject_to_mni_points` up to the
    9-decimal rounding of the stored coefficients.
    """
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
        shape = tuple(spec["Shape"])
        fields = []
        for coef in spec["Coefficients"]:
            f = SmoothField.__new__(SmoothField)
            f.origin = np.asarray(spec["Origin"], float)
            f.spacing = float(spec["Spacing"])
            f.coef = np.asarray(coef, float).reshape(shape)
            fields.append(f)
        deform = SubjectDeformation.__new__(SubjectDeformation)
        deform.affine = np.asarray(spec["Affine"], float)
        deform.fields = fields
    except (OSError, KeyError, ValueError) as exc:
        raise ASLInputError(
            f"cannot read the true mapping ({exc}).",
            file=path,
            field="Coefficients",
            fix="pass a *_mode-image_xfm.json written by asl_pipeline.simulate.",
        ) from exc
    return deform


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ASLInputError(
            "the output path exists and is not a directory.",
            file=out_dir,
            field="out_dir",
            fix="choose a new directory name.",
        )
    if out_dir.is_dir() and any(out_dir.iterdir()) and overwrite:
        # overwrite only ever replaces a previous simulation, never real data
        desc = out_dir / "dataset_description.json"
        try:
            generated = json.loads(desc.read_text()).get("GeneratedBy", [])
            ours = any(g.get("Name") == "asl_pipeline.simulate" for g in generated)
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise ASLInputError(
                "the directory is not empty and is not a dataset written by "
                "asl_pipeline.simulate, so it is not overwritten.",
                file=desc,
                field="GeneratedBy",
                fix="choose a new or empty directory.",
            )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ASLInputError(
            "the output directory is not empty; the simulator never writes into "
            "existing (possibly input) datasets.",
            file=out_dir,
            field="out_dir",
            fix="choose a new or empty directory, or pass overwrite=True "
            "(asl-simulate --overwrite) to replace a previous simulation.",
        )


def kinetics_truth(sub: SimulatedSubject) -> dict:
    """The kinetic model and constants of a multi-PLD subject's ΔM (for the
    ``desc-true_kinetics.json`` of the ground truth)."""
    return {
        "Description": (
            "Kinetic model of the simulated control-label difference: Buxton general "
            "kinetic model, single compartment, one CBF and ATT per voxel (desc-true_cbf, "
            "desc-true_att); blood T1 during transit, then T1AfterArrival: 'tissue' = "
            "apparent tissue T1 (1/T1app = 1/T1Tissue + f/lambda), 'blood' = T1Blood."
        ),
        "T1AfterArrival": sub.t1_after_arrival,
        "T1Tissue": float(sub.t1_tissue),
        "T1Blood": T1_BLOOD[3.0],
        "PartitionCoefficient": LAMBDA,
        "LabelingEfficiency": float(sub.alpha),
        "PostLabelingDelays": [float(p) for p in sub.plds],
    }


def _write_fieldmap(root, s, fm, has_m0: bool, nii) -> list:
    """The field map of ``fm`` (SimulatedFieldmap) in ``fmap/``, with its magnitudes
    and sidecars (``IntendedFor`` the series and its M0, ``B0FieldIdentifier``);
    the true field on the field map's grid goes with the ground truth."""
    fmap = root / s / "fmap"
    written = []
    targets = [f"bids::{s}/perf/{s}_asl.nii.gz"]
    if has_m0:
        targets.append(f"bids::{s}/perf/{s}_m0scan.nii.gz")
    common = {"IntendedFor": targets, "B0FieldIdentifier": FIELDMAP_ID}
    if fm.kind == "phasediff":
        names = ("magnitude1", "magnitude2")
        nii(fmap / f"{s}_phasediff.nii.gz", fm.data, fm.affine, np.uint16)
    else:
        names = ("magnitude",)
        nii(fmap / f"{s}_fieldmap.nii.gz", fm.data, fm.affine, np.float32)
    _write_json(fmap / f"{s}_{fm.kind}.json", dict(fm.metadata, **common))
    written.append(fmap / f"{s}_{fm.kind}.json")
    for name, mag in zip(names, fm.magnitudes, strict=True):
        nii(fmap / f"{s}_{name}.nii.gz", mag, fm.affine, np.int16)
        _write_json(fmap / f"{s}_{name}.json", dict(common))
        written.append(fmap / f"{s}_{name}.json")
    truth = root / "derivatives" / "simulation" / s / "fmap"
    nii(truth / f"{s}_space-fmap_desc-true_fieldmap.nii.gz", fm.field_hz, fm.affine, np.float32)
    return written


def _write_bold(root: Path, s: str, bold) -> list[Path]:
    """The BOLD run (``func/``) and its truth (``derivatives/simulation/.../func``)."""
    func = root / s / "func"
    truth = root / "derivatives" / "simulation" / s / "func"
    stem = f"{s}_task-{bold.metadata['TaskName']}"
    tr = bold.metadata["RepetitionTime"]
    paths = [func / f"{stem}_bold.nii.gz", func / f"{stem}_bold.json"]
    _write_nifti(paths[0], bold.data, bold.affine, dtype=np.int16, tr=tr)
    _write_json(paths[1], bold.metadata)
    for desc, data in (("true", bold.cbf), ("trueamplitude", bold.amplitude)):
        path = truth / f"{stem}_desc-{desc}_cbf.nii.gz"
        if desc == "trueamplitude":
            path = truth / f"{stem}_desc-trueamplitude_boldmap.nii.gz"
        _write_nifti(path, data, bold.affine, dtype=np.float32)
        paths.append(path)
    cols = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    motion = truth / f"{stem}_desc-true_motion.tsv"
    _write_tsv(motion, cols, [[f"{v:.9f}" for v in row] for row in bold.motion])
    xfm = truth / f"{stem}_from-bold_to-ASL_mode-image_xfm.txt"
    _write_bytes(
        xfm,
        ("\n".join(" ".join(f"{v:.12g}" for v in r) for r in bold.bold_to_asl) + "\n").encode(),
    )
    return paths + [motion, xfm]


def write_subject(out_dir, label: str, sub: SimulatedSubject) -> list[Path]:
    """Write one simulated subject (raw files and derivatives); returns the paths."""
    root = Path(out_dir)
    s = f"sub-{label}"
    perf = root / s / "perf"
    anat = root / s / "anat"
    deriv = root / "derivatives" / "simulation" / s
    written = []

    def nii(path, data, affine, dtype, **kw):
        _write_nifti(path, data, affine, dtype=dtype, **kw)
        written.append(path)

    tr = sub.metadata["RepetitionTimePreparation"]
    nii(perf / f"{s}_asl.nii.gz", sub.asl, sub.asl_affine, np.int16, tr=tr)
    _write_tsv(perf / f"{s}_aslcontext.tsv", ["volume_type"], [[c] for c in sub.aslcontext])
    written += [perf / f"{s}_asl.json", perf / f"{s}_aslcontext.tsv"]
    pepolar = sub.m0_reverse is not None
    fmap_sim = getattr(sub, "fieldmap", None)
    field_id = B0_FIELD_ID if pepolar else FIELDMAP_ID if fmap_sim is not None else None
    asl_md = dict(sub.metadata, B0FieldSource=field_id) if field_id else sub.metadata
    _write_json(perf / f"{s}_asl.json", asl_md)
    if sub.m0_metadata is not None:  # M0Type Separate
        nii(perf / f"{s}_m0scan.nii.gz", sub.m0, sub.asl_affine, np.int16)
        m0_md = dict(sub.m0_metadata)
        m0_md["IntendedFor"] = f"bids::{s}/perf/{s}_asl.nii.gz"
        if pepolar:
            m0_md.update(B0FieldIdentifier=B0_FIELD_ID, B0FieldSource=B0_FIELD_ID)
        elif field_id:
            m0_md.update(B0FieldSource=field_id)
        _write_json(perf / f"{s}_m0scan.json", m0_md)
        written.append(perf / f"{s}_m0scan.json")
    if pepolar:
        fmap = root / s / "fmap"
        nii(fmap / f"{s}_dir-AP_m0scan.nii.gz", sub.m0_reverse, sub.asl_affine, np.int16)
        targets = [f"bids::{s}/perf/{s}_asl.nii.gz"]
        if sub.m0_metadata is not None:
            targets.append(f"bids::{s}/perf/{s}_m0scan.nii.gz")
        rev_md = dict(sub.m0_reverse_metadata, IntendedFor=targets, B0FieldIdentifier=B0_FIELD_ID)
        _write_json(fmap / f"{s}_dir-AP_m0scan.json", rev_md)
        written.append(fmap / f"{s}_dir-AP_m0scan.json")
    if fmap_sim is not None:
        written += _write_fieldmap(root, s, fmap_sim, sub.m0_metadata is not None, nii)
    if getattr(sub, "bold", None) is not None:
        written += _write_bold(root, s, sub.bold)
    if sub.t1w is not None:
        nii(anat / f"{s}_T1w.nii.gz", sub.t1w, sub.t1w_affine, np.int16)
        _write_json(anat / f"{s}_T1w.json", _T1W_SIDECAR)
        written.append(anat / f"{s}_T1w.json")

    # ground truth
    dp, da = deriv / "perf", deriv / "anat"
    aff = sub.asl_affine
    nii(dp / f"{s}_desc-true_cbf.nii.gz", sub.cbf, aff, np.float32)
    nii(dp / f"{s}_desc-true_att.nii.gz", sub.att, aff, np.float32)
    nii(dp / f"{s}_desc-true_m0.nii.gz", sub.m0_true, aff, np.float32)
    for tissue in ("gm", "wm"):  # cbf = gm * trueGM + wm * trueWM (partial-volume truth)
        tissue_cbf = getattr(sub, f"cbf_{tissue}")
        if tissue_cbf is not None:
            path = dp / f"{s}_desc-true{tissue.upper()}_cbf.nii.gz"
            nii(path, tissue_cbf, aff, np.float32)
    for name in ("gm", "wm", "csf"):
        nii(dp / f"{s}_label-{name.upper()}_probseg.nii.gz", getattr(sub, name), aff, np.float32)
    nii(dp / f"{s}_desc-brain_mask.nii.gz", sub.brain_mask.astype(np.uint8), aff, np.uint8)
    if sub.lesion is not None:
        nii(dp / f"{s}_desc-lesion_probseg.nii.gz", sub.lesion, aff, np.float32)
    if sub.field_hz is not None:
        df = deriv / "fmap"
        nii(df / f"{s}_desc-true_fieldmap.nii.gz", sub.field_hz, aff, np.float32)
        _write_json(
            df / f"{s}_desc-true_fieldmap.json",
            {
                "Units": "Hz",
                "Description": (
                    "True off-resonance field of the simulated EPI readout, undistorted ASL "
                    "space at the head position of the first ASL volume (it moves with the "
                    "head). A readout with PhaseEncodingDirection s (+1 for j, -1 for j-) and "
                    "TotalReadoutTime T places the signal of voxel x at x + s*T*field(x) "
                    "voxels along the phase-encoding axis (asl_pipeline.sdc)."
                ),
            },
        )
        written.append(df / f"{s}_desc-true_fieldmap.json")
    if sub.plds is not None:  # multi-PLD: the kinetic model the signal was made with
        kin = dp / f"{s}_desc-true_kinetics.json"
        _write_json(kin, kinetics_truth(sub))
        written.append(kin)
    cols = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    _write_tsv(
        dp / f"{s}_desc-true_motion.tsv",
        cols,
        [[f"{v:.9f}" for v in row] for row in sub.motion],
    )
    _write_json(
        dp / f"{s}_desc-true_motion.json",
        {
            "Description": (
                "True head motion of each ASL volume relative to the first "
                "control/label volume: x -> R (x - c) + c + t with "
                "R = Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z) in SPM's spm_matrix sign "
                "convention (Rx = [[1,0,0],[0,cos,sin],[0,-sin,cos]], "
                "Ry = [[cos,0,sin],[0,1,0],[-sin,0,cos]], "
                "Rz = [[cos,sin,0],[-sin,cos,0],[0,0,1]]), c = FOVCentre; maps "
                "the reference head position to the moved one (scanner RAS+ mm), "
                "as asl_pipeline.motion.params_to_matrix does."
            ),
            "FOVCentre": [
                float(v) for v in (aff @ np.r_[(np.array(sub.asl.shape[:3]) - 1) / 2, 1])[:3]
            ],
            "M0ScanMotion": [float(v) for v in sub.m0_motion],
            **{c: {"Units": "mm"} for c in cols[:3]},
            **{c: {"Units": "rad"} for c in cols[3:]},
        },
    )
    # pair index of a volume (an included M0 volume comes first)
    first = sub.aslcontext.index("control") if "m0scan" in sub.aslcontext else 0
    first = min(first, sub.aslcontext.index("label"))
    rows = [[t, "n/a", (t - first) // 2, "spike"] for t in sub.outlier_volumes]
    rows += [
        [t, z, (t - first) // 2, kind]
        for (t, z), kind in zip(sub.outlier_slices, sub.outlier_slice_kinds, strict=True)
    ]
    rows.sort(key=lambda r: (r[0], -1 if r[1] == "n/a" else r[1]))
    _write_tsv(dp / f"{s}_desc-true_outliers.tsv", ["volume", "slice", "pair", "type"], rows)
    xfm = dp / f"{s}_from-ASL_to-T1w_mode-image_xfm.txt"
    _write_bytes(
        xfm, ("\n".join(" ".join(f"{v:.12g}" for v in r) for r in sub.asl_to_t1w) + "\n").encode()
    )
    written += [dp / f"{s}_desc-true_motion.tsv", dp / f"{s}_desc-true_outliers.tsv", xfm]
    if sub.t1w is not None:
        taff = sub.t1w_affine
        for name in ("gm", "wm", "csf"):
            # uint8 with scl_slope 1/255: 0.4% steps, 4x smaller files at 1 mm
            prob = np.round(np.clip(getattr(sub, f"{name}_t1w"), 0, 1) * 255).astype(np.uint8)
            nii(
                da / f"{s}_label-{name.upper()}_probseg.nii.gz",
                prob,
                taff,
                np.uint8,
                slope=1 / 255,
            )
        nii(
            da / f"{s}_desc-brain_mask.nii.gz", sub.brain_mask_t1w.astype(np.uint8), taff, np.uint8
        )
        stem = f"{s}_from-T1w_to-{TEMPLATE_SPACE}_mode-image_xfm"
        _write_json(da / f"{stem}.json", mapping_to_dict(sub.deformation))
        coarse = np.diag([2.0, 2.0, 2.0, 1.0])
        caff = taff @ coarse
        cshape = tuple(int(np.ceil(n / 2)) for n in sub.t1w.shape)
        disp = sub.deformation.displacement_on_grid(caff, cshape)
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in cshape], indexing="ij"), -1)
        world = ijk @ caff[:3, :3].T + caff[:3, 3]
        lin = world @ sub.deformation.affine[:3, :3].T + sub.deformation.affine[:3, 3]
        nii(da / f"{stem}.nii.gz", (lin + disp - world).astype(np.float32), caff, np.float32)
        written.append(da / f"{stem}.json")
    return written


def write_dataset(
    out_dir,
    n_subjects: int,
    seed: int,
    *,
    simulate: Callable,
    write: Callable,
    title: str,
    author: str,
    description: str,
    readme: str,
    overwrite: bool = False,
    progress: Callable | None = None,
    **subject_kwargs,
) -> Path:
    """Simulate subjects one by one and write them, with the dataset-level files.

    Shared by both generators: subject ``i`` is ``simulate(subject_seed(seed,
    i), **subject_kwargs)`` written by ``write(out, label, subject)``. The first
    subject is simulated before anything is written, so that bad arguments
    (e.g. an impossible set of PLDs) leave no partial dataset. ``title`` and
    ``author`` name the dataset and its author, ``description`` the
    GeneratedBy call and ``readme`` is the README text.
    """
    out = Path(out_dir)
    if int(n_subjects) < 1:
        raise ASLInputError(
            f"n_subjects={n_subjects} would write an empty dataset.",
            field="n_subjects",
            fix="ask for at least one subject.",
        )
    _check_out_dir(out, overwrite)
    first = simulate(subject_seed(seed, 0), **subject_kwargs)
    out.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(n_subjects)))
    labels = [f"{i + 1:0{width}d}" for i in range(int(n_subjects))]
    generated = {
        "Name": "asl_pipeline.simulate",
        "Version": __version__,
        "Description": description,
    }
    _write_json(
        out / "dataset_description.json",
        {
            "Name": title,
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": [author],
            "GeneratedBy": [generated],
        },
    )
    _write_bytes(out / "README", readme.encode())
    _write_json(
        out / "participants.json",
        {
            "age": {"Description": "simulated age", "Units": "year"},
            "sex": {"Description": "simulated sex", "Levels": {"F": "female", "M": "male"}},
        },
    )
    deriv = out / "derivatives" / "simulation"
    _write_json(
        deriv / "dataset_description.json",
        {
            "Name": "Ground truth of the simulated ASL dataset",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [generated],
            "SourceDatasets": [{"URL": "../.."}],
        },
    )
    # BIDS derivatives cover neither perf-space truth maps nor these
    # transforms/TSVs; declare them so the validator (with -r) accepts them
    _write_bytes(
        deriv / ".bidsignore",
        b"# ground-truth files the BIDS derivatives specification does not cover\n"
        b"**/perf/*\n**/*_xfm.*\n" + (b"**/func/*\n" if subject_kwargs.get("bold") else b""),
    )
    rows = []
    for i, label in enumerate(labels):
        sseed = subject_seed(seed, i)
        sub = first if i == 0 else simulate(sseed, **subject_kwargs)
        write(out, label, sub)
        meta_rng = np.random.default_rng(sseed)
        rows.append([f"sub-{label}", int(meta_rng.integers(20, 80)), meta_rng.choice(["F", "M"])])
        if progress is not None:
            progress(i, len(labels), label, sub)
    _write_tsv(out / "participants.tsv", ["participant_id", "age", "sex"], rows)
    return out


def simulate_dataset(
    out_dir,
    n_subjects: int = 3,
    seed: int = 0,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int, str, SimulatedSubject], None] | None = None,
    **subject_kwargs,
) -> Path:
    """Simulate ``n_subjects`` subjects and write them as a BIDS dataset.

    Subject ``i`` (label ``01``, ``02``, ...) is
    ``simulate_subject(subject_seed(seed, i), **subject_kwargs)``, so the
    dataset is deterministic for a given ``seed`` (byte-identical files).
    ``progress(i, n, label, subject)`` is called after each subject is
    written. Refuses a non-empty ``out_dir`` unless ``overwrite`` and the
    directory holds a dataset written by this simulator (its files are then
    replaced; files it would not write are left alone). Returns the dataset
    root. See the module docstring for the layout.
    """
    return write_dataset(
        out_dir,
        n_subjects,
        seed,
        simulate=simulate_subject,
        write=write_subject,
        title="Simulated ASL dataset (asl_pipeline)",
        author="asl_pipeline simulator",
        description=f"simulate_dataset(seed={int(seed)}, n_subjects={int(n_subjects)})",
        readme=(
            "Simulated arterial spin labeling dataset written by asl_pipeline.simulate "
            f"(seed {int(seed)}).\nAnatomy from the MNI152 2009a templates with a random "
            "smooth deformation per subject; perfusion, motion, noise and outliers are "
            "simulated and their ground truth is in derivatives/simulation.\n"
        ),
        overwrite=overwrite,
        progress=progress,
        **subject_kwargs,
    )
