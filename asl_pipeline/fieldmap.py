"""B0 field maps that are not PEPOLAR pairs: phase differences and direct field maps.

BIDS ("fieldmaps", cases 1-3) stores two kinds of field map besides the
reverse phase-encoded pairs of :mod:`asl_pipeline.sdc`:

* ``fmap/*_phasediff.nii.gz`` with ``*_magnitude1`` (and optionally
  ``*_magnitude2``) and the sidecar fields ``EchoTime1`` < ``EchoTime2`` (s):
  the phase difference ``dphi`` (radians) of two gradient echoes gives the
  off-resonance field ``f = dphi / (2 pi (EchoTime2 - EchoTime1))`` (Hz). Phase
  stored as the integers 0..4095 of Siemens scanners (dcm2niix, no scaling)
  is read as ``-pi + 2 pi v / 4096``; with the scanner's scaling applied by
  the reader (-4096..4094) as ``pi v / 4096``; which one is detected from the
  data range and logged. A field beyond ``+-1 / (2 dTE)`` (+-203 Hz at the
  common dTE 2.46 ms) wraps to the other sign; :func:`prepare_field` unwraps
  the phase inside the magnitude's head mask (:func:`unwrap_field`). Case 2
  (``phase1``/``phase2``) is refused with a message naming the file.
* ``fmap/*_fieldmap.nii.gz`` with ``*_magnitude`` and the sidecar ``Units``
  (``Hz``, ``rad/s`` or ``T``/``Tesla``), converted to Hz.

The map lives on its own grid and head position. :func:`prepare_field` turns
it into a field (Hz) on the ASL grid: a head mask of the magnitude
(:func:`head_mask`), the phase unwrapped in it (phase differences only), a
smooth tensor-product cubic B-spline fitted to the field, continued
smoothly outside the mask (the model of :mod:`asl_pipeline.sdc`,
:func:`fit_smooth_field`), which denoises the phase and extrapolates it
outside the head, and a resampling
through the rigid transform found by registering the magnitude to the ASL
image (:func:`asl_pipeline.registration.register_asl_to_t1w`, Mattes MI).

Nothing here imports nipype: images are arrays and metadata are dicts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from asl_pipeline.errors import ASLInputError
from asl_pipeline.sdc import PhaseEncoding, _grid, _ids, phase_encoding
from asl_pipeline.smoothing import fwhm_to_sigma

LOGGER = logging.getLogger("nipype.interface")

#: Proton gyromagnetic ratio / 2 pi (Hz per tesla), CODATA 2018.
GAMMA_HZ_PER_T = 42.577478518e6

#: Accepted ``Units`` of a direct field map -> factor to Hz.
UNITS_TO_HZ = {"hz": 1.0, "rad/s": 1.0 / (2 * np.pi), "t": GAMMA_HZ_PER_T, "tesla": GAMMA_HZ_PER_T}

#: Largest plausible echo time difference of a phase-difference map (s).
MAX_DELTA_TE = 0.05

#: Control-point spacing (mm) and the FWHM (mm) of the continuation outside
#: the head of :func:`fit_smooth_field`.
DEFAULT_SPACING_MM = 12.0
DEFAULT_FILL_FWHM_MM = 10.0

#: The two field-map kinds handled here (BIDS suffix of the field image).
KINDS = ("phasediff", "fieldmap")


@dataclass(frozen=True)
class FieldmapFiles:
    """One BIDS field map of a run (phase difference or direct), with its magnitude."""

    #: ``"phasediff"`` or ``"fieldmap"``.
    kind: str
    #: The phase-difference or field image.
    file: str
    #: Its merged sidecar.
    metadata: dict
    #: ``magnitude1`` (phasediff) or ``magnitude`` (fieldmap) image.
    magnitude_file: str


@dataclass(frozen=True)
class FieldmapSource:
    """The field map of an ASL run and where its field goes (:func:`fieldmap_source`).

    ``frame``, ``asl_pe`` and ``m0_pe`` mean what they mean for
    :class:`asl_pipeline.sdc.PepolarPair`: the magnitude is registered to the
    run's separate M0 (``frame="m0"``, mean of its volumes) or, without one,
    to the first ASL volume (``"reference"``).
    """

    fmap: FieldmapFiles
    #: The fixed image of the registration (the M0, or the ASL series).
    reference_file: str
    #: ``"m0"`` or ``"reference"``.
    frame: str
    asl_pe: PhaseEncoding
    m0_pe: PhaseEncoding | None


# --------------------------------------------------------------------------
# the field maps of a BIDS run


def _stem_suffix(path) -> tuple[str, str]:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    stem, _, suffix = name.rpartition("_")
    return stem, suffix


def _companion(path, suffix: str):
    stem, _ = _stem_suffix(path)
    for ext in (".nii.gz", ".nii"):
        candidate = Path(path).with_name(f"{stem}_{suffix}{ext}")
        if candidate.exists():
            return candidate
    return None


def fieldmap_files(run) -> list[FieldmapFiles]:
    """The phase-difference and direct field maps of an
    :class:`~asl_pipeline.bids.ASLRun` (:attr:`fieldmap_files`), each with its
    magnitude; refuses ``phase1``/``phase2`` maps and a missing magnitude."""
    out = []
    for path, md in run.fieldmap_files:
        _, suffix = _stem_suffix(path)
        if suffix in ("phase1", "phase2"):
            raise ASLInputError(
                "is a two-phase-image field map (BIDS case 2, phase1/phase2), which "
                "asl_pipeline does not support.",
                file=path,
                field="suffix",
                fix="store the wrapped phase difference (phase2 - phase1) as *_phasediff with "
                "EchoTime1/EchoTime2 in its sidecar and magnitude1 next to it, remove it from "
                "the run's IntendedFor/B0FieldSource, or run with --ignore fieldmaps.",
            )
        magnitude = "magnitude1" if suffix == "phasediff" else "magnitude"
        mag = _companion(path, magnitude)
        if mag is None:
            stem, _ = _stem_suffix(path)
            raise ASLInputError(
                f"has no magnitude image ({stem}_{magnitude}.nii.gz expected next to it); "
                "it is needed to register the field map to the ASL images.",
                file=path,
                field=magnitude,
                fix=f"add {stem}_{magnitude}.nii.gz (dcm2niix writes it with the field map), "
                "or run with --ignore fieldmaps.",
            )
        out.append(FieldmapFiles(suffix, str(path), dict(md), str(mag)))
    return out


def fieldmap_source(run) -> FieldmapSource | None:
    """The field map of a run, checked before any work, or None without one.

    With several, the one whose ``B0FieldIdentifier`` the run names in its
    ``B0FieldSource``, else the first. Refuses (file, field, fix): case 2
    maps, a missing magnitude, missing or wrong ``EchoTime1``/``EchoTime2``
    or ``Units``, a magnitude on another grid, phase values that are neither
    radians nor the scanner's integers, and an ASL series (or M0) without a
    valid ``PhaseEncodingDirection``/``TotalReadoutTime``.
    """
    files = fieldmap_files(run)
    if not files:
        return None
    sources = _ids(run.metadata.get("B0FieldSource"))

    def named(f):
        return bool(sources & _ids(f.metadata.get("B0FieldIdentifier")))

    fmap = sorted(files, key=lambda f: not named(f))[0]
    check_fieldmap(fmap, {p: _grid(p) for p in (fmap.file, fmap.magnitude_file)})
    if fmap.kind == "phasediff":  # the value range decides how the phase is read
        import nibabel as nib

        phase_to_radians(np.asanyarray(nib.load(fmap.file).dataobj), fmap.file)
    asl_pe = phase_encoding(run.metadata, run.sidecar_file)
    separate = run.m0_type == "Separate" and run.m0_file is not None
    m0_pe = None
    if separate and "PhaseEncodingDirection" in run.m0_metadata:
        m0_pe = phase_encoding(
            run.m0_metadata,
            Path(run.m0_file).with_name(_stem_suffix(run.m0_file)[0] + "_m0scan.json"),
        )
    return FieldmapSource(
        fmap=fmap,
        reference_file=str(run.m0_file if separate else run.asl_file),
        frame="m0" if separate else "reference",
        asl_pe=asl_pe,
        m0_pe=m0_pe,
    )


# --------------------------------------------------------------------------
# sidecar checks and unit conversions


def echo_time_difference(metadata: dict, file=None) -> float:
    """``EchoTime2 - EchoTime1`` (s) of a phase-difference sidecar; refused with
    an :class:`~asl_pipeline.errors.ASLInputError` naming the field otherwise."""
    times = []
    for key in ("EchoTime1", "EchoTime2"):
        value = metadata.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ASLInputError(
                "is missing." if value is None else f"is {value!r}, not a time in seconds.",
                file=file,
                field=key,
                fix="add EchoTime1 and EchoTime2 in seconds (e.g. 0.00492 and 0.00738; "
                "dcm2niix writes them for the phase-difference image), or run with "
                "--ignore fieldmaps.",
            )
        times.append(float(value))
    delta = times[1] - times[0]
    if not 0 < delta <= MAX_DELTA_TE:
        raise ASLInputError(
            f"is {times[1]!r} s and EchoTime1 {times[0]!r} s: EchoTime2 - EchoTime1 must "
            f"be in (0, {MAX_DELTA_TE}] s.",
            file=file,
            field="EchoTime2",
            fix="check the echo times (seconds, EchoTime2 the longer one; milliseconds "
            "must be divided by 1000), or run with --ignore fieldmaps.",
        )
    return delta


def units_to_hz(metadata: dict, file=None) -> float:
    """Factor converting a direct field map with the sidecar's ``Units`` to Hz."""
    units = metadata.get("Units")
    factor = UNITS_TO_HZ.get(units.strip().lower()) if isinstance(units, str) else None
    if factor is None:
        raise ASLInputError(
            "is missing." if units is None else f"is {units!r}, not one of Hz, rad/s, T.",
            file=file,
            field="Units",
            fix='set "Units" to "Hz", "rad/s" or "T" (BIDS), as the map was written, or '
            "run with --ignore fieldmaps.",
        )
    return factor


def phase_to_radians(data, file=None) -> tuple[np.ndarray, str]:
    """Phase difference in radians, wrapped to ``(-pi, pi]``, and how it was read.

    Radians (values within [-pi, 2 pi]) are taken as they are; Siemens
    integers 0..4095 as ``-pi + 2 pi v / 4096``; the same scaled by the
    scanner's slope 2 and intercept -4096 (values in -4096..4094) as
    ``pi v / 4096``. Anything else is refused.
    """
    a = np.asarray(data, dtype=float)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    tol = 1e-3
    if lo >= -np.pi - tol and hi <= 2 * np.pi + tol:
        how = "radians"
        rad = a
    elif lo >= 0 and hi <= 4096 and np.allclose(finite, np.round(finite)):
        how = "Siemens integers 0..4095 read as -pi + 2 pi v/4096"
        rad = a * (2 * np.pi / 4096) - np.pi
    elif lo >= -4096 and hi <= 4096:
        how = "scaled Siemens phase -4096..4094 read as pi v/4096"
        rad = a * (np.pi / 4096)
    else:
        raise ASLInputError(
            f"holds values from {lo:g} to {hi:g}: neither radians ([-pi, 2 pi]) nor the "
            "Siemens 0..4095 integer phase.",
            file=file,
            field="data (phase difference)",
            fix="store the phase difference in radians or as the scanner's 0..4095 "
            "integers (dcm2niix), or run with --ignore fieldmaps.",
        )
    rad = np.where(np.isfinite(rad), rad, 0.0)
    return np.angle(np.exp(1j * rad)), how


def phasediff_to_hz(data, metadata: dict, file=None) -> tuple[np.ndarray, str]:
    """Field (Hz) of a phase-difference image, and how its phase was read."""
    delta = echo_time_difference(metadata, file)
    rad, how = phase_to_radians(data, file)
    return rad / (2 * np.pi * delta), how


def field_to_hz(data, kind: str, metadata: dict, file=None) -> tuple[np.ndarray, str]:
    """Field (Hz) of a phase-difference or direct field map, and a note for the log."""
    if kind == "phasediff":
        return phasediff_to_hz(data, metadata, file)
    if kind == "fieldmap":
        factor = units_to_hz(metadata, file)
        out = np.asarray(data, dtype=float) * factor
        return np.where(np.isfinite(out), out, 0.0), f"Units {metadata['Units']!r} x {factor:g}"
    raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def check_fieldmap(fmap: FieldmapFiles, grids: dict) -> None:
    """Pre-flight of one field map: sidecar fields and the magnitude's grid.

    ``grids`` maps a file to its ``(shape, affine)``. Raises
    :class:`~asl_pipeline.errors.ASLInputError` naming the file, field and fix.
    """
    if fmap.kind == "phasediff":
        echo_time_difference(fmap.metadata, fmap.file)
    else:
        units_to_hz(fmap.metadata, fmap.file)
    (shape, aff), (mshape, maff) = grids[fmap.file], grids[fmap.magnitude_file]
    if tuple(shape[:3]) != tuple(mshape[:3]) or not np.allclose(aff, maff, atol=1e-3):
        raise ASLInputError(
            f"has the voxel grid {tuple(mshape[:3])} (or an affine) different from "
            f"{fmap.file} ({tuple(shape[:3])}): the magnitude must be on the field map's grid.",
            file=fmap.magnitude_file,
            field="image dimensions/affine",
            fix="use the magnitude image reconstructed with the field map (same matrix, "
            "slices and orientation), or run with --ignore fieldmaps.",
        )
    if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
        raise ASLInputError(
            f"has {int(np.prod(shape[3:]))} volumes; a {fmap.kind} map is one 3D volume.",
            file=fmap.file,
            field="image dimensions",
            fix="keep the single 3D map (dcm2niix writes one), or run with --ignore fieldmaps.",
        )


# --------------------------------------------------------------------------
# mask and smooth field


def head_mask(magnitude, zooms, *, erode_mm: float = 0.0) -> np.ndarray:
    """The head in a magnitude image: Otsu threshold, largest component, holes filled.

    ``erode_mm`` trims the rim, where the phase of a gradient echo is noisy.
    """
    from asl_pipeline.qc import largest_component
    from asl_pipeline.registration import _erode, _otsu

    a = np.asarray(magnitude, dtype=float)
    a = a.mean(-1) if a.ndim == 4 else a
    values = a[np.isfinite(a) & (a > 0)]
    if values.size == 0:
        return np.zeros(a.shape, bool)
    mask = ndimage.binary_fill_holes(largest_component(a > 0.5 * _otsu(values)))
    if erode_mm > 0:
        core = _erode(mask, erode_mm, np.asarray(zooms, float)[:3])
        mask = core if core.sum() > 0.5 * mask.sum() else mask
    return mask


def unwrap_field(field_hz, mask, period_hz: float) -> tuple[np.ndarray, int]:
    """Field (Hz) of a wrapped phase difference, unwrapped inside ``mask``.

    ``period_hz`` is ``1 / dTE``: the phase difference wraps every
    ``period_hz`` of field. The phase (``2 pi field / period_hz``) is unwrapped
    in 3D by the reliability-guided algorithm of Herraez et al. (2002) and
    Abdul-Rahman et al. (2007) (``skimage.restoration.unwrap_phase``), which
    needs the field to change by less than half a period between neighbouring
    voxels, as a B0 field does away from noise. The unwrapped phase is
    defined up to a whole number of periods; the one that puts the median of
    the head nearest 0 Hz is kept (the scanner's shim centres the field on
    the head). Each part of the mask not connected to the largest is shifted
    by whole periods to the largest part's median. Outside ``mask`` the values
    are returned as given.

    Returns the field and the number of voxels moved by a period or more.
    """
    from skimage.restoration import unwrap_phase

    hz = np.asarray(field_hz, dtype=float)
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return hz.copy(), 0
    phase = np.angle(np.exp(2j * np.pi * hz / period_hz))
    unwrapped = np.asarray(np.ma.filled(unwrap_phase(np.ma.array(phase, mask=~m)), 0.0))
    labels, n = ndimage.label(m)
    sizes = ndimage.sum(m, labels, range(1, n + 1))
    main = unwrapped[labels == 1 + int(np.argmax(sizes))]
    # the main part's median nearest 0; every part's median nearest the main part's
    target = np.median(main) - 2 * np.pi * np.round(np.median(main) / (2 * np.pi))
    for part in range(1, n + 1):
        inside = labels == part
        unwrapped[inside] -= (
            2 * np.pi * np.round((np.median(unwrapped[inside]) - target) / (2 * np.pi))
        )
    out = np.where(m, unwrapped * period_hz / (2 * np.pi), hz)
    moved = int((np.abs(out - hz) > 0.5 * period_hz)[m].sum())
    return out, moved


def fit_smooth_field(
    field_hz,
    mask,
    zooms,
    *,
    spacing_mm: float = DEFAULT_SPACING_MM,
    fill_fwhm_mm: float = DEFAULT_FILL_FWHM_MM,
) -> np.ndarray:
    """Smooth field (Hz) on the whole grid from ``field_hz`` inside ``mask``.

    Two steps: the values outside the mask (noise, random phase) are replaced
    by normalised convolutions of the values inside (:func:`_continuation`,
    Gaussians from ``fill_fwhm_mm`` up: a smooth continuation that decays
    to the mean of the head's edge), then the cubic B-spline of :mod:`asl_pipeline.sdc`
    (control points ``spacing_mm`` apart) is fitted by least squares to the
    whole grid, which denoises the phase inside and leaves no step at the
    mask's edge. On the simulator's phase-difference map (2.55 x 2.55 x
    4.5 mm, seed 7) the error in the head was 0.20 Hz mean, 2.5 Hz p99 (8 or
    10 mm spacing: 0.22-0.27 Hz mean, 3-4 Hz p99; refitting with the values
    outside replaced by the spline's did not change it). A weighted fit
    restricted to the mask (conjugate gradients on the masked normal
    equations, P-spline penalty) was tried first: it did not converge in
    400 iterations (coefficients far from the head are only held by the
    penalty) and took 20 s on a 94 x 94 x 30 map.
    """
    from asl_pipeline.sdc import _SplineField

    f = np.asarray(field_hz, dtype=float)
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("the mask is empty: no field values to fit")
    zooms = np.asarray(zooms, float)[:3]
    filled = np.where(m, f, _continuation(f, m, zooms, fill_fwhm_mm))
    spline = _SplineField(f.shape, spacing_mm / zooms, 0)
    return spline.evaluate(spline.fit(filled))


def _continuation(values, mask, zooms, fwhm_mm) -> np.ndarray:
    """Smooth continuation of ``values`` in ``mask`` over the whole grid.

    Normalised convolutions at FWHM ``fwhm_mm``, 3x and 9x that, each used
    where the mask's smoothed weight exceeds 0.05 and blended linearly below
    it with the next coarser one (the coarsest with the mean in the mask), so
    the result has no step anywhere.
    """
    value = np.full(values.shape, float(values[mask].mean()))
    inside = np.where(mask, values, 0.0)
    for scale in (9.0, 3.0, 1.0):
        sigma = fwhm_to_sigma(scale * float(fwhm_mm), zooms)
        num = ndimage.gaussian_filter(inside, sigma, mode="nearest")
        den = ndimage.gaussian_filter(mask.astype(float), sigma, mode="nearest")
        blend = np.clip(den / 0.05, 0.0, 1.0)
        value = blend * num / np.maximum(den, 1e-12) + (1 - blend) * value
    return value


def resample_field(
    field, field_affine, target_shape, target_affine, target_to_field
) -> np.ndarray:
    """``field`` (its own grid) sampled at the voxel centres of the target grid.

    ``target_to_field`` is the 4x4 point map from target world (mm) to the
    field's world; cubic interpolation, the nearest edge value beyond the
    field's grid (the field is already smooth and extrapolated).
    """
    vox = np.linalg.inv(field_affine) @ np.asarray(target_to_field, float) @ target_affine
    ijk = np.indices(tuple(target_shape[:3]), dtype=float).reshape(3, -1)
    coords = vox[:3, :3] @ ijk + vox[:3, 3:4]
    out = ndimage.map_coordinates(np.asarray(field, float), coords, order=3, mode="nearest")
    return out.reshape(tuple(target_shape[:3]))


# --------------------------------------------------------------------------
# the whole preparation


@dataclass
class PreparedField:
    """Result of :func:`prepare_field`."""

    #: Field (Hz) on the target (ASL) grid.
    field_hz: np.ndarray
    #: Magnitude resampled onto the target grid (for checking the registration).
    magnitude: np.ndarray
    #: Smooth field (Hz) on the field map's own grid.
    field_native: np.ndarray
    #: Head mask on the field map's grid.
    mask: np.ndarray
    #: 4x4 point map, target world -> field map world (the registration).
    target_to_field: np.ndarray
    #: How the values were read (phase scaling or units).
    note: str


def prepare_field(
    data,
    magnitude,
    field_affine,
    target,
    target_affine,
    *,
    kind: str,
    metadata: dict,
    file=None,
    register=None,
    zooms=None,
    spacing_mm: float = DEFAULT_SPACING_MM,
    unwrap: bool = True,
) -> PreparedField:
    """A phasediff or direct field map -> smooth field (Hz) on the target's grid.

    ``data``/``magnitude`` are the field map and its magnitude (same grid,
    ``field_affine``); ``target`` the fixed image (the M0 or the first ASL
    volume). ``register(magnitude, mask, target)`` returns the 4x4 point map
    from target world to field map world; default: rigid Mattes MI with
    :func:`register_magnitude`. A phase difference is unwrapped in the head
    mask (:func:`unwrap_field`) unless ``unwrap`` is false; voxels whose
    unwrapped field still lies half a period or more from the smooth fit
    (noisy phase at the rim) are moved by whole periods toward it, and the
    fit is repeated once.
    """
    hz, note = field_to_hz(np.squeeze(np.asarray(data)), kind, metadata, file)
    mag = np.asarray(magnitude, dtype=float)
    mag = mag.mean(-1) if mag.ndim == 4 else mag
    zooms = np.sqrt((np.asarray(field_affine)[:3, :3] ** 2).sum(0)) if zooms is None else zooms
    mask = head_mask(mag, zooms, erode_mm=float(np.min(zooms)))
    unwrapping = kind == "phasediff" and unwrap
    if unwrapping:
        period = 1.0 / echo_time_difference(metadata, file)
        hz, moved = unwrap_field(hz, mask, period)
    smooth = fit_smooth_field(hz, mask, zooms, spacing_mm=spacing_mm)
    if unwrapping:
        periods = np.where(mask, np.round((smooth - hz) / period), 0.0)
        if periods.any():
            hz = hz + period * periods
            smooth = fit_smooth_field(hz, mask, zooms, spacing_mm=spacing_mm)
        note += (
            f"; phase unwrapped in the head mask ({moved} of {int(mask.sum())} voxels "
            f"moved by whole periods of {period:.0f} Hz, {int((periods != 0).sum())} more "
            "toward the smooth fit)"
        )
    register = register or register_magnitude
    point_map = register(mag, mask, field_affine, np.asarray(target, float), target_affine)
    field_t = resample_field(smooth, field_affine, np.shape(target), target_affine, point_map)
    mag_t = resample_field(mag, field_affine, np.shape(target), target_affine, point_map)
    inside = smooth[mask]
    LOGGER.info(
        "%s field map (%s): %.1f to %.1f Hz in the head (p1-p99 %.1f to %.1f Hz)",
        kind,
        note,
        inside.min(),
        inside.max(),
        np.percentile(inside, 1),
        np.percentile(inside, 99),
    )
    return PreparedField(
        field_hz=field_t.astype(np.float32),
        magnitude=mag_t.astype(np.float32),
        field_native=smooth.astype(np.float32),
        mask=mask,
        target_to_field=point_map,
        note=note,
    )


def register_magnitude(magnitude, mask, field_affine, target, target_affine, *, seed=1):
    """Rigid registration (6 dof, Mattes MI, antspyx) of a field map's magnitude
    to the target; returns the 4x4 point map target world -> field map world.

    Reuses :func:`asl_pipeline.registration.register_asl_to_t1w` with the
    target as the fixed image (sampled on the coarse ASL grid) and the
    magnitude as the moving one, restricted to its head mask.
    """
    import tempfile

    import nibabel as nib

    from asl_pipeline.registration import read_itk_affine, register_asl_to_t1w

    with tempfile.TemporaryDirectory() as tmp:
        out = register_asl_to_t1w(
            nib.Nifti1Image(np.asarray(target, np.float32), target_affine),
            nib.Nifti1Image(np.asarray(magnitude, np.float32), field_affine),
            Path(tmp) / "target_to_fmap.mat",
            t1w_mask=nib.Nifti1Image(np.asarray(mask, np.float32), field_affine),
            seed=seed,
        )
        # register_asl_to_t1w writes "asl_to_t1w": as a point map, moving (field
        # map) world -> fixed (target) world; its inverse is what sampling needs
        return np.linalg.inv(read_itk_affine(out))
