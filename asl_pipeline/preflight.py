"""Pre-flight check of the selected runs, before the first output byte is written.

The BIDS reader (:mod:`asl_pipeline.bids`) validates the sidecars and reads
the image headers; this module reads every image of every run fully (ASL
series, M0, reverse phase-encoding M0, T1w) and refuses what would make the
processing fail or quantify nonsense minutes later:

* a header with an absurd matrix (e.g. 8000 x 8000 x 20 voxels) or voxel size,
  checked before any data is read, and a memory estimate of the largest run
  compared with ``mem_gb`` (or the machine's memory);
* data that cannot be decompressed or is truncated;
* NaN or infinite voxels, intensities beyond :data:`MAX_INTENSITY` (an
  overflowing ``scl_slope``), and images whose voxels all hold one value (all
  zero, for instance).

:func:`check_runs` returns every problem at once, one
:class:`~asl_pipeline.errors.ASLInputError` each (file, field, fix), so a
user fixes a dataset in one pass.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asl_pipeline.errors import ASLInputError

LOGGER = logging.getLogger("asl_pipeline.preflight")

#: Largest matrix along one spatial axis (clinical and research MRI stay at or below 1024).
MAX_MATRIX = 1024
#: Most volumes in one series.
MAX_VOLUMES = 10_000
#: Largest plausible voxel size (mm) along one axis.
MAX_VOXEL_MM = 50.0
#: Largest plausible absolute intensity; float32 overflows near 3.4e38.
MAX_INTENSITY = 1e20
#: Working memory per voxel of an ASL series (bytes): the processing holds
#: about four float64 copies at once (series, realigned series, differences,
#: cleaned series).
BYTES_PER_VOXEL = 4 * 8

_REEXPORT = "re-export the image from the scanner data (e.g. with dcm2niix)."
_READ_ERRORS = (EOFError, zlib.error, OSError, ValueError, MemoryError)


@dataclass(frozen=True)
class Image:
    """One image file of a run and its role in the pipeline."""

    path: Path
    role: str


def run_images(run) -> tuple[Image, ...]:
    """The images of an :class:`~asl_pipeline.bids.ASLRun` the pipeline reads."""
    images = [Image(Path(run.asl_file), "ASL series")]
    if run.m0_file is not None:
        images.append(Image(Path(run.m0_file), "M0"))
    images += [Image(Path(p), "M0 (reverse phase encoding)") for p in run.m0_pepolar_files]
    images += [Image(Path(p), "field map") for p, _ in run.fieldmap_files]
    if run.t1w_file is not None:
        images.append(Image(Path(run.t1w_file), "T1w"))
    return tuple(images)


def _error(image: Image, problem: str, field: str, fix: str = _REEXPORT) -> ASLInputError:
    return ASLInputError(f"({image.role}) {problem}", file=image.path, field=field, fix=fix)


def _load(image: Image):
    import nibabel as nb

    try:
        return nb.load(str(image.path))
    except Exception as exc:  # nibabel raises many types on corrupt files
        raise _error(
            image,
            f"cannot be read as a NIfTI image ({exc}).",
            "image",
            "re-export the image (e.g. with dcm2niix) as a valid NIfTI file.",
        ) from None


def _matrix_problems(image: Image, shape: tuple[int, ...]) -> list[ASLInputError]:
    spatial, volumes = shape[:3], shape[3:]
    if len(shape) < 3 or min(shape) < 1 or max(spatial) > MAX_MATRIX:
        return [
            _error(
                image,
                f"has the matrix {shape}; each of the first three dimensions must be "
                f"between 1 and {MAX_MATRIX}.",
                "dim",
                "check the NIfTI header (dim): re-export the image from the scanner data.",
            )
        ]
    if any(n > MAX_VOLUMES for n in volumes):
        return [
            _error(
                image,
                f"has {volumes[0]} volumes; at most {MAX_VOLUMES} are accepted.",
                "dim",
                "check the NIfTI header (dim[4]): re-export the image from the scanner data.",
            )
        ]
    return []


def _zoom_problems(image: Image, zooms) -> list[ASLInputError]:
    if all(np.isfinite(z) and 0 < z <= MAX_VOXEL_MM for z in zooms):
        return []
    return [
        _error(
            image,
            f"has the voxel size {tuple(float(z) for z in zooms)} mm; each must be "
            f"positive and at most {MAX_VOXEL_MM:g} mm.",
            "pixdim",
            "check the NIfTI header (pixdim): re-export the image from the scanner data.",
        )
    ]


def _size_problems(image: Image, img) -> list[ASLInputError]:
    """An uncompressed file shorter than its header says is truncated."""
    if not str(image.path).endswith(".nii"):
        return []
    header = img.header
    expected = int(header.get_data_offset()) + int(
        np.prod(img.shape, dtype=np.int64) * header.get_data_dtype().itemsize
    )
    actual = image.path.stat().st_size
    if actual >= expected:
        return []
    return [
        _error(
            image,
            f"holds {actual} bytes but its header describes {expected}: the file is truncated.",
            "image data",
            "copy the file again from its source, or re-export it.",
        )
    ]


def header_problems(image: Image, img) -> list[ASLInputError]:
    """Problems found from the header alone, before any voxel is read."""
    shape = tuple(int(s) for s in img.shape)
    problems = _matrix_problems(image, shape)
    if problems:
        return problems
    return _zoom_problems(image, img.header.get_zooms()[:3]) + _size_problems(image, img)


def load_header(path, role: str):
    """The image at ``path`` (data not read), after its header checks.

    Raises
    ------
    ASLInputError
        The first problem of the file or its header.
    """
    image = Image(Path(path), role)
    img = _load(image)
    problems = header_problems(image, img)
    if problems:
        raise problems[0]
    return img


def _read(image: Image, img) -> np.ndarray:
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asanyarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise _error(
            image,
            f"cannot be read fully ({type(exc).__name__}: {exc}): the file is truncated "
            "or its compressed data is corrupt.",
            "image data",
            "copy the file again from its source, or re-export it.",
        ) from None


def _scaled(img) -> bool:
    slope = getattr(img.dataobj, "slope", 1.0)
    inter = getattr(img.dataobj, "inter", 0.0)
    return (slope, inter) != (1.0, 0.0)


def value_problems(image: Image, img, data: np.ndarray) -> list[ASLInputError]:
    """Non-finite, implausibly large or constant voxel values."""
    field = "scl_slope" if _scaled(img) else "image data"
    finite = np.isfinite(data)
    if not finite.all():
        return [
            _error(
                image,
                f"contains {int((~finite).sum())} NaN or infinite voxel values.",
                field,
                "re-export the image from the scanner data; do not mask with NaN "
                "(the pipeline computes its own brain mask).",
            )
        ]
    low, high = float(data.min()), float(data.max())
    if max(abs(low), abs(high)) > MAX_INTENSITY:
        return [
            _error(
                image,
                f"has intensities up to {max(abs(low), abs(high)):.3g} (limit "
                f"{MAX_INTENSITY:g}): the scaling overflows.",
                field,
                "re-export the image without an extreme scl_slope/scl_inter.",
            )
        ]
    if low == high:
        return [
            _error(
                image,
                f"holds the single value {low:g} in every voxel: it carries no signal.",
                "image data",
                "check that the right file was converted; re-export it from the scanner data.",
            )
        ]
    return []


def memory_estimate_gb(shape) -> float:
    """Working memory (GiB) of processing an image of ``shape``."""
    return float(np.prod(shape, dtype=np.float64)) * BYTES_PER_VOXEL / 2**30


def machine_memory_gb() -> float | None:
    """Physical memory of this machine (GiB), None when unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def memory_problems(image: Image, shape, mem_gb: float | None) -> list[ASLInputError]:
    """The image needs more memory than ``mem_gb`` (default: the machine's memory)."""
    limit = mem_gb if mem_gb is not None else machine_memory_gb()
    need = memory_estimate_gb(shape)
    if limit is None or need <= limit:
        return []
    source = "--mem-gb" if mem_gb is not None else "this machine's memory"
    return [
        _error(
            image,
            f"needs about {need:.1f} GiB to process (matrix {tuple(shape)}), more than "
            f"the {limit:.1f} GiB of {source}.",
            "dim",
            "run on a machine with more memory and raise --mem-gb, or check that the "
            "header's matrix size is right.",
        )
    ]


def check_image(image: Image, *, mem_gb: float | None = None) -> list[ASLInputError]:
    """Every problem of one image: header and memory first, then its data read fully."""
    try:
        img = _load(image)
        problems = header_problems(image, img) or memory_problems(image, img.shape, mem_gb)
        if problems:
            return problems
        return value_problems(image, img, _read(image, img))
    except ASLInputError as exc:
        return [exc]


def _unique_images(runs) -> list[Image]:
    seen: dict[Path, Image] = {}
    for run in runs:
        for image in run_images(run):
            seen.setdefault(image.path, image)
    return list(seen.values())


def check_runs(runs, *, mem_gb: float | None = None) -> list[ASLInputError]:
    """Every problem of the runs' images, in one pass; an empty list when all pass.

    ``mem_gb`` is the memory the run may use (``--mem-gb``); None compares
    with this machine's memory. Nothing is written anywhere.
    """
    problems = []
    for image in _unique_images(runs):
        problems += check_image(image, mem_gb=mem_gb)
        LOGGER.debug("checked %s", image.path)
    return problems
