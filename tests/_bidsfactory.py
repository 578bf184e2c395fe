"""Tiny BIDS ASL datasets for the reader and CLI tests.

``make_dataset`` writes a minimal valid single-subject dataset whose sidecar,
aslcontext and images can each be overridden or broken; ``copy_example``
copies one of the five real example datasets (sidecars only upstream) and
writes NIfTI images of the shapes their sidecars imply.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np

#: Small in-plane matrix: the reader never looks at the voxel values beyond
#: NaN checks, so tiny images keep the tests fast.
NX, NY = 4, 5

BASE_SIDECAR = {
    "MagneticFieldStrength": 3,
    "MRAcquisitionType": "3D",
    "ArterialSpinLabelingType": "PCASL",
    "PostLabelingDelay": 1.8,
    "LabelingDuration": 1.8,
    "BackgroundSuppression": False,
    "M0Type": "Separate",
    "RepetitionTimePreparation": 4.5,
    "TotalAcquiredPairs": 3,
    "EchoTime": 0.012,  # REQUIRED by the BIDS validator, unused by the pipeline
}
BASE_CONTEXT = ("control", "label") * 3
M0_SIDECAR = {
    "RepetitionTimePreparation": 6.0,
    "EchoTime": 0.012,
    "IntendedFor": "perf/sub-01_asl.nii.gz",
}

#: ``simulate_dataset`` settings of a small, fast simulated BIDS dataset with
#: (nearly) known per-pair CBF: no motion, no outliers. At 8 x 8 x 14 mm the
#: realignment is ill-posed (spurious 1-2 mm shifts); at 5 x 5 x 9 mm it is not.
SIM_BIDS_SMALL = dict(
    n_pairs=8,
    shape=(40, 40, 14),
    voxel_size=(5.0, 5.0, 9.0),
    resolution=2,
    subsample=(1, 1, 1),
    t1w_voxel_size=4.0,
    outliers=False,
    motion=False,
)


def write_nifti(path: Path, shape, *, seed=0, dtype=np.float32, affine=None, nan=False):
    rng = np.random.default_rng(seed)
    data = (100 + 10 * rng.standard_normal(shape)).astype(dtype)
    if nan:
        data.flat[0] = np.nan
    img = nb.Nifti1Image(data, np.diag([3.0, 3.0, 4.0, 1.0]) if affine is None else affine)
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(img, str(path))
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def write_context(path: Path, types) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("volume_type\n" + "".join(f"{t}\n" for t in types))
    return path


def make_dataset(
    root: Path,
    *,
    sidecar: dict | None = None,
    drop: tuple[str, ...] = (),
    context=BASE_CONTEXT,
    nz: int = 3,
    n_volumes: int | None = None,
    m0: bool = True,
    m0_shape=None,
    t1w: bool = True,
    subject: str = "01",
    nan: bool = False,
) -> Path:
    """A one-subject dataset; ``sidecar`` updates :data:`BASE_SIDECAR`,
    ``drop`` removes fields, ``n_volumes`` overrides the image's 4th
    dimension (default: the aslcontext length; 0 writes a 3D image)."""
    root = Path(root)
    write_json(root / "dataset_description.json", {"Name": "test", "BIDSVersion": "1.8.0"})
    md = {**BASE_SIDECAR, **(sidecar or {})}
    for key in drop:
        md.pop(key, None)
    perf = root / f"sub-{subject}" / "perf"
    write_json(perf / f"sub-{subject}_asl.json", md)
    if context is not None:
        write_context(perf / f"sub-{subject}_aslcontext.tsv", context)
    nv = len(context or ()) if n_volumes is None else n_volumes
    shape = (NX, NY, nz) if nv == 0 else (NX, NY, nz, nv)
    write_nifti(perf / f"sub-{subject}_asl.nii.gz", shape, nan=nan)
    if m0:
        write_nifti(perf / f"sub-{subject}_m0scan.nii.gz", m0_shape or (NX, NY, nz), seed=1)
        write_json(perf / f"sub-{subject}_m0scan.json", M0_SIDECAR)
    if t1w:
        write_nifti(root / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz", (6, 6, 6))
    return root


def _n_slices(sidecar: dict) -> int:
    return len(sidecar.get("SliceTiming", [0, 0, 0]))


def copy_example(src: Path, dst: Path) -> Path:
    """Copy a real example dataset and write images of the implied shapes.

    Volumes = aslcontext rows; slices = len(SliceTiming) for 2D data (else 3);
    every ``*.json`` image sidecar in ``anat``, ``perf`` or ``fmap`` gets its
    NIfTI (M0 images: the ASL grid, one volume).
    """
    shutil.copytree(src, dst)
    for sidecar in sorted(dst.rglob("sub-*/*/*.json")):
        md = json.loads(sidecar.read_text())
        stem = sidecar.name[: -len(".json")]
        out = sidecar.with_name(stem + ".nii.gz")
        if stem.endswith("_T1w"):
            write_nifti(out, (6, 6, 6))
        elif stem.endswith("_asl"):
            context = sidecar.with_name(stem[: -len("_asl")] + "_aslcontext.tsv")
            rows = [r for r in context.read_text().split("\n")[1:] if r.strip()]
            write_nifti(out, (NX, NY, _n_slices(md), len(rows)), dtype=np.int16)
        elif stem.endswith("_m0scan"):
            write_nifti(out, (NX, NY, _n_slices(md)), seed=2)
    return dst


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file, to prove a tree was not touched."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }
