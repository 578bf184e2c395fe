"""Template spaces by their TemplateFlow names, found offline.

``MNI152NLin2009aSym`` is nilearn's bundled MNI152 (ICBM 2009a non-linear
symmetric), always available. Any other TemplateFlow template
(``MNI152NLin2009cAsym``, ``MNI152NLin6Asym``, ...) is read from a local
TemplateFlow folder: ``$TEMPLATEFLOW_HOME`` (TemplateFlow's own default,
``~/.cache/templateflow``, when unset), laid out as TemplateFlow lays it out::

    tpl-<name>/tpl-<name>_res-<r>_T1w.nii.gz
    tpl-<name>/tpl-<name>_res-<r>_desc-brain_mask.nii.gz

Nothing is downloaded: a template missing from the folder is an error saying
how to get it (on a machine with internet, once). ``name:res-<r>`` picks a
resolution; otherwise the one closest to 2 mm is used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from asl_pipeline.errors import ASLInputError

#: The template bundled with nilearn (no TemplateFlow folder needed).
BUNDLED = "MNI152NLin2009aSym"
#: Spaces that are not templates.
NATIVE_SPACES = ("asl", "T1w")
_NAME = re.compile(r"^[A-Za-z0-9]+$")


@dataclass(frozen=True)
class TemplateImages:
    """A template's T1w image (skull-stripped within its brain mask) and mask."""

    name: str
    t1: nib.Nifti1Image
    brain_mask: nib.Nifti1Image
    source: str


def templateflow_home() -> Path:
    """``$TEMPLATEFLOW_HOME``, or TemplateFlow's default ``~/.cache/templateflow``."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "templateflow"


#: Surface spaces of fMRIPrep, which this volume pipeline cannot produce.
SURFACE_SPACES = ("fsnative", "fsaverage", "fsaverage5", "fsaverage6", "fsLR")


def split_space(space: str) -> tuple[str, str | None]:
    """``"MNI152NLin2009cAsym:res-2"`` -> ``("MNI152NLin2009cAsym", "2")``;
    ValueError for a surface space or a malformed name."""
    name, _, modifier = space.partition(":")
    if name in SURFACE_SPACES:
        raise ValueError(
            f"output space {space!r} is a surface space; asl-pipeline writes volumes only "
            "(asl, T1w or a TemplateFlow volume template)"
        )
    res = None
    if modifier:
        match = re.fullmatch(r"res-(\d+)", modifier)
        if match is None:
            raise ValueError(
                f"output space {space!r}: the only modifier understood is res-<n> "
                "(e.g. MNI152NLin2009cAsym:res-2)"
            )
        res = match.group(1)
    if not _NAME.fullmatch(name):
        raise ValueError(f"output space {space!r}: a template name is alphanumeric")
    return name, res


def _how_to_get(name: str, home: Path) -> str:
    return (
        f"get it once on a machine with internet access, e.g. `pip install templateflow && "
        f'TEMPLATEFLOW_HOME={home} python -c "import templateflow.api as tf; '
        f"tf.get('{name}', resolution=2, suffix='T1w', desc=None); "
        f"tf.get('{name}', resolution=2, desc='brain', suffix='mask')\"` "
        f"(or copy tpl-{name}/ from an fMRIPrep installation's TemplateFlow folder) and set "
        "TEMPLATEFLOW_HOME to that folder; asl-pipeline downloads nothing at run time"
    )


def _resolution_files(folder: Path, name: str) -> dict[str, tuple[Path, Path]]:
    """``res label -> (T1w, brain mask)`` for the resolutions that have both
    (no cohort; TemplateFlow's plain ``res-<r>_T1w``)."""
    out = {}
    for t1 in folder.glob(f"tpl-{name}_res-*_T1w.nii.gz"):
        match = re.fullmatch(rf"tpl-{name}_res-(\d+)_T1w\.nii\.gz", t1.name)
        if not match:
            continue
        res = match.group(1)
        mask = folder / f"tpl-{name}_res-{res}_desc-brain_mask.nii.gz"
        if mask.is_file():
            out[res] = (t1, mask)
    return out


def find_templateflow(space: str, home: Path | None = None) -> tuple[Path, Path]:
    """The T1w and brain-mask files of a TemplateFlow template in the local
    folder, or :class:`ASLInputError` naming the folder and how to fill it."""
    name, res = split_space(space)
    home = Path(home) if home is not None else templateflow_home()
    folder = home / f"tpl-{name}"
    files = _resolution_files(folder, name) if folder.is_dir() else {}
    if not files:
        raise ASLInputError(
            f"output space {name}: template not found in the local TemplateFlow folder "
            f"({folder}/tpl-{name}_res-<r>_T1w.nii.gz and _res-<r>_desc-brain_mask.nii.gz)",
            file=folder,
            field="--output-spaces",
            fix=_how_to_get(name, home),
        )
    if res is not None:
        match = [k for k in files if int(k) == int(res)]
        if not match:
            raise ASLInputError(
                f"output space {space}: resolution res-{res} not in {folder} (there: "
                f"{', '.join('res-' + k for k in sorted(files))})",
                file=folder,
                field="--output-spaces",
            )
        return files[match[0]]
    best = min(files, key=lambda k: (abs(_voxel_mm(files[k][0]) - 2.0), k))
    return files[best]


def _voxel_mm(path: Path) -> float:
    return float(np.mean(nib.load(str(path)).header.get_zooms()[:3]))


def check_spaces(spaces, home: Path | None = None) -> list[ASLInputError]:
    """Problems with the requested output spaces (templates missing locally)."""
    problems = []
    for space in spaces:
        if space in NATIVE_SPACES or split_space(space)[0] == BUNDLED:
            continue
        try:
            find_templateflow(space, home)
        except ASLInputError as exc:
            problems.append(exc)
    return problems


def template_name(space: str) -> str:
    """The ``space-`` entity of a space (its name without modifiers)."""
    return split_space(space)[0]


def get_template(space: str, home: Path | None = None) -> TemplateImages:
    """The template's T1w (zero outside its brain mask) and brain mask."""
    name, _ = split_space(space)
    if name == BUNDLED:
        from asl_pipeline.registration import load_template

        tpl = load_template(2)
        return TemplateImages(name, tpl.t1, tpl.brain_mask, "nilearn (bundled)")
    t1_file, mask_file = find_templateflow(space, home)
    t1, mask = nib.load(str(t1_file)), nib.load(str(mask_file))
    brain = np.asarray(mask.dataobj) > 0.5
    t1_data = np.asarray(t1.dataobj, dtype=np.float32) * brain
    return TemplateImages(
        name,
        nib.Nifti1Image(t1_data, t1.affine),
        nib.Nifti1Image(brain.astype(np.float32), mask.affine),
        str(t1_file),
    )


def register_to_template(t1w_file, out_dir, space: str, **options) -> dict:
    """Register a (bias-corrected, skull-on) T1w to a template, affine then SyN,
    as the bundled template is registered (:func:`asl_pipeline.registration.register_t1w_to_mni`).

    Writes and returns ``{"t1w_to_template": .h5, "template_to_t1w": .h5,
    "reference": the template T1w (.nii.gz), "t1w_template": the T1w resampled}``.
    """
    from asl_pipeline import registration

    tpl = get_template(space)
    zooms = tpl.t1.header.get_zooms()[:3]
    res = max(1, int(round(float(np.mean(zooms)))))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = registration.register_t1w_to_mni(
        nib.load(str(t1w_file)),
        out_dir,
        template=registration.Template(tpl.t1, tpl.brain_mask, None, None, None),
        template_resolution=res,
        t1w_file=t1w_file,
        **options,
    )
    name = tpl.name
    paths = {
        "t1w_to_template": str(out_dir / f"from-T1w_to-{name}_xfm.h5"),
        "template_to_t1w": str(out_dir / f"from-{name}_to-T1w_xfm.h5"),
        "reference": str(out_dir / f"tpl-{name}_T1w.nii.gz"),
        "t1w_template": str(out_dir / f"space-{name}_T1w.nii.gz"),
    }
    Path(result.t1w_to_mni).replace(paths["t1w_to_template"])
    Path(result.mni_to_t1w).replace(paths["template_to_t1w"])
    tpl.t1.to_filename(paths["reference"])
    result.warped.to_filename(paths["t1w_template"])
    return paths
