"""Figures of the per-subject report ("reportlets", as nireports calls them).

Plain functions over nibabel images and arrays, built on
:mod:`nilearn.plotting` (orientation marks, L/R annotation, cut coordinates in
world space, carpet plots with tissue bands) and matplotlib; each returns a
matplotlib figure, which :func:`save_svg` writes as SVG. No nipype, no
configuration.

Every brain figure uses explicit cut coordinates computed from a mask, so the
panels of a before/after pair (the registration flicker) show the same slices
and no panel falls outside the brain.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

CBF_UNITS = "mL/100 g/min"
#: Colour of each tissue contour (segmentation figure) and carpet band.
TISSUE_COLOURS = {"GM": "#e0409a", "WM": "#2f7bd8", "CSF": "#f2b705"}


def _img(img) -> nib.Nifti1Image:
    if isinstance(img, str | Path):
        img = nib.load(str(img))
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    return nib.Nifti1Image(np.nan_to_num(data), img.affine)


def _on_axes(img, interpolation: str = "linear") -> nib.Nifti1Image:
    """``img`` on a grid whose axes run along x, y and z.

    nilearn resamples an oblique image (one whose affine rotates, as most
    scans' do) every time it draws it, with cubic splines: 1.6 s for a 1 mm
    T1w, and the segmentation figure draws five images on three rows.
    Resampled once here (linear interpolation, nearest neighbour for a binary
    image, as nilearn does), it is drawn as it is. An image already on such a
    grid is returned as is."""
    img = _img(img)
    if np.all((np.abs(img.affine[:3, :3]) > 1e-3).sum(axis=0) == 1):
        return img
    from nilearn.image import reorder_img

    data = img.get_fdata()
    if np.all((data == 0) | (data == 1)):
        interpolation = "nearest"
    return reorder_img(img, resample=interpolation)


def _binary(img, threshold: float = 0.5) -> nib.Nifti1Image:
    img = _img(img)
    return nib.Nifti1Image((img.get_fdata() > threshold).astype(np.uint8), img.affine)


def mask_centre(mask) -> tuple[float, float, float]:
    """World coordinates (mm) of the centre of mass of a mask's voxels."""
    img = _img(mask)
    ijk = np.argwhere(img.get_fdata() > 0.5)
    if ijk.size == 0:
        ijk = np.argwhere(np.ones(img.shape[:3], bool))
    centre = ijk.mean(axis=0)
    return tuple(float(v) for v in nib.affines.apply_affine(img.affine, centre))


def mask_cuts(mask, axis: str, n_cuts: int, *, margin: float = 0.12) -> list[float]:
    """``n_cuts`` world coordinates along ``axis`` ("x", "y", "z") spread
    over the extent of a mask (without its outer ``margin`` on each side)."""
    img = _img(mask)
    ijk = np.argwhere(img.get_fdata() > 0.5)
    if ijk.size == 0:
        ijk = np.argwhere(np.ones(img.shape[:3], bool))
    world = nib.affines.apply_affine(img.affine, ijk)[:, "xyz".index(axis)]
    low, high = np.quantile(world, [margin, 1 - margin])
    return [float(v) for v in np.linspace(low, high, n_cuts)]


def _three_rows(fig, n_rows_total: int, first_row: int):
    """Axes rectangles [left, bottom, width, height] of rows x, y, z."""
    height = 1.0 / n_rows_total
    return {
        axis: [0.0, 1.0 - height * (first_row + k + 1), 1.0, height * 0.96]
        for k, axis in enumerate("xyz")
    }


def _plane(fig, rect, axis: str, mask, n_cuts: int) -> dict:
    """nilearn options of one row of cuts along ``axis`` spread over ``mask``: black
    background, no cross, no colour bar, no dimming."""
    return {
        "display_mode": axis,
        "cut_coords": mask_cuts(mask, axis, n_cuts),
        "figure": fig,
        "axes": rect,
        "annotate": True,
        "draw_cross": False,
        "black_bg": True,
        "colorbar": False,
        "dim": 0,
    }


def plot_planes(
    background,
    *,
    mask,
    contours=(),
    n_cuts: int = 7,
    vmax=None,
    title: str | None = None,
    figure_width: float = 12.0,
):
    """Three rows of cuts (sagittal, coronal, axial) of ``background`` with
    contours ``[(image, level, colour), ...]`` drawn on every cut; cuts spread
    over ``mask``."""
    from nilearn import plotting

    background = _img(background)
    if vmax is None:
        inside = background.get_fdata()[_binary(mask).get_fdata() > 0]
        vmax = float(np.percentile(inside, 99.5)) if inside.size else None
    background = _on_axes(background)
    contours = [(_on_axes(img), level, colour) for img, level, colour in contours]
    fig = plt.figure(figsize=(figure_width, figure_width * 0.55))
    for axis, rect in _three_rows(fig, 3, 0).items():
        display = plotting.plot_anat(
            background, **_plane(fig, rect, axis, mask, n_cuts), vmin=0, vmax=vmax
        )
        for img, level, colour in contours:
            display.add_contours(img, levels=[level], colors=[colour], linewidths=0.9)
    if title:
        fig.suptitle(title, color="w", fontsize=10, y=0.995)
    fig.patch.set_facecolor("black")
    rasterize_layers(fig)
    return fig


#: zorder below which a brain panel's artists are drawn as one raster layer in
#: the SVG: the image (zorder 0) and the contours (collections, zorder 2), not
#: the text (cut coordinates, L/R marks: zorder 3) nor the figure's titles.
RASTER_ZORDER = 2.5

#: Resolution (dots per inch) of the raster layers of an SVG figure.
RASTER_DPI = 100


def rasterize_layers(fig, zorder: float = RASTER_ZORDER):
    """Draw the images and contours of every axes of ``fig`` as an embedded
    PNG when saved as SVG, keeping the text as vectors.

    A segmentation figure of a 1 mm T1w has four contour sets on 21 cuts: as
    vector paths they made a 4-5 MB SVG; rasterized at :data:`RASTER_DPI` the
    page stays light and the text stays sharp.
    """
    for ax in fig.axes:
        ax.set_rasterization_zorder(zorder)
    return fig


def plot_segmentation(t1w, brain_mask, probsegs: dict):
    """T1w with the brain mask (red) and GM/WM/CSF (probability 0.5) contours."""
    contours = [(brain_mask, 0.5, "#ff2020")]
    contours += [(img, 0.5, TISSUE_COLOURS[label]) for label, img in probsegs.items()]
    return plot_planes(t1w, mask=brain_mask, contours=contours)


def plot_registration_pair(
    before, after, *, fixed_mask, boundary, n_cuts: int = 6, vmax=None
) -> tuple:
    """The two frames of a registration flicker: ``before`` and ``after``
    resampled on the fixed image's grid, the same cuts, the fixed image's
    ``boundary`` contour (e.g. its WM surface) on both."""
    before, after = _img(before), _img(after)
    if vmax is None:
        data = after.get_fdata()
        vmax = float(np.percentile(data[data > 0], 99.5)) if np.any(data > 0) else None
    contours = [(_on_axes(boundary), 0.5, "#ff3030")]
    return tuple(
        plot_planes(img, mask=fixed_mask, contours=contours, n_cuts=n_cuts, vmax=vmax)
        for img in (before, after)
    )


def plot_cbf_maps(
    maps: list[tuple[str, object]],
    *,
    mask,
    vmax: float,
    vmin: float = 0.0,
    n_axial: int = 5,
    cmap: str = "inferno",
    background=None,
):
    """One row per CBF map: an orthogonal view (three planes, L/R marked) and
    ``n_axial`` axial cuts, all at the same cuts and on one colour scale,
    with a single colour bar in mL/100 g/min."""
    from nilearn import plotting

    centre = mask_centre(mask)
    z_cuts = mask_cuts(mask, "z", n_axial, margin=0.15)
    n = len(maps)
    if background is not None:
        background = _on_axes(background)
    row_h = 2.3
    fig = plt.figure(figsize=(13.0, row_h * n + 0.9))
    fig.patch.set_facecolor("black")
    bar_h = 0.7 / (row_h * n + 0.9)
    usable = 1.0 - 1.5 * bar_h
    for k, (title, img) in enumerate(maps):
        img = _on_axes(img, "nearest")
        bottom = 1.0 - usable * (k + 1) / n
        h = usable / n * 0.9
        common = dict(
            figure=fig,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            colorbar=False,
            black_bg=True,
            draw_cross=False,
            resampling_interpolation="nearest",
        )
        if background is not None:
            common["bg_img"] = background
        disp = plotting.plot_img(
            img,
            display_mode="ortho",
            cut_coords=centre,
            axes=[0.0, bottom, 0.42, h],
            annotate=True,
            title=title,
            **common,
        )
        del disp
        plotting.plot_img(
            img,
            display_mode="z",
            cut_coords=z_cuts,
            axes=[0.43, bottom, 0.57, h],
            annotate=True,
            **common,
        )
    cax = fig.add_axes([0.3, 0.35 * bar_h, 0.4, bar_h * 0.45])
    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(vmin, vmax), cmap=cmap)
    bar = fig.colorbar(sm, cax=cax, orientation="horizontal")
    bar.set_label(f"CBF ({CBF_UNITS})", color="w")
    bar.ax.tick_params(colors="w")
    return fig


def plot_fieldmap(reference, fieldmap, *, mask, vmax: float, n_cuts: int = 6):
    """The B0 field (Hz, diverging colours, symmetric +/-``vmax``, transparent
    near 0) over ``reference`` in three planes, with a colour bar in Hz."""
    from nilearn import plotting

    reference, fieldmap = _on_axes(reference), _on_axes(fieldmap, "nearest")
    fig = plt.figure(figsize=(12.0, 7.2))
    fig.patch.set_facecolor("black")
    for axis, rect in _three_rows(fig, 3, 0).items():
        rect = [rect[0], rect[1] + 0.06, rect[2], rect[3] * 0.92]
        plotting.plot_stat_map(
            fieldmap,
            bg_img=reference,
            **_plane(fig, rect, axis, mask, n_cuts),
            cmap="RdBu_r",
            vmax=vmax,
            symmetric_cbar=True,
            threshold=0.05 * vmax,
            resampling_interpolation="nearest",
        )
    cax = fig.add_axes([0.3, 0.02, 0.4, 0.02])
    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(-vmax, vmax), cmap="RdBu_r")
    bar = fig.colorbar(sm, cax=cax, orientation="horizontal")
    bar.set_label("B0 field (Hz)", color="w")
    bar.ax.tick_params(colors="w")
    return fig


def plot_confounds(
    confounds: dict,
    *,
    fd_threshold: float,
    removed=None,
    title: str = "",
):
    """Translations, rotations, framewise displacement with its threshold,
    and DVARS, per volume; volumes of pairs the cleaning removed shaded."""
    fd = np.asarray(confounds.get("framewise_displacement", []), dtype=float)
    n_vol = len(fd) if fd.size else len(next(iter(confounds.values())))
    x = np.arange(n_vol)
    panels = []
    trans = [k for k in ("trans_x", "trans_y", "trans_z") if k in confounds]
    rots = [k for k in ("rot_x", "rot_y", "rot_z") if k in confounds]
    if trans:
        panels.append(("translation (mm)", [(k, np.asarray(confounds[k])) for k in trans]))
    if rots:
        panels.append(
            ("rotation (deg)", [(k, np.degrees(np.asarray(confounds[k]))) for k in rots])
        )
    if fd.size:
        panels.append(("FD (mm)", [("framewise_displacement", fd)]))
    if "dvars" in confounds:
        panels.append(("DVARS", [("dvars", np.asarray(confounds["dvars"], dtype=float))]))
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(11, 1.45 * len(panels) + 0.5), sharex=True, squeeze=False
    )
    removed = np.asarray(removed if removed is not None else np.zeros(n_vol), dtype=bool)
    for ax, (label, series) in zip(axes[:, 0], panels, strict=True):
        for name, values in series:
            ax.plot(x, values, lw=1, label=name)
        for v in np.flatnonzero(removed):
            ax.axvspan(v - 0.5, v + 0.5, color="0.85", zorder=0, lw=0)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7, ncol=3, loc="upper right", frameon=False)
        if label.startswith("FD"):
            ax.axhline(fd_threshold, color="r", ls="--", lw=1)
            peak = float(np.nanmax(fd)) if np.isfinite(fd).any() else 0.0
            ax.set_ylim(0, max(fd_threshold, peak) * 1.15)
            ax.text(
                0.005,
                fd_threshold,
                f" threshold {fd_threshold:g} mm",
                color="r",
                fontsize=7,
                va="bottom",
                transform=ax.get_yaxis_transform(),
            )
    axes[-1, 0].set_xlabel("volume", fontsize=8)
    if removed.any():
        axes[0, 0].set_title(
            "grey bands: volumes of pairs removed by the outlier cleaning", fontsize=8, loc="right"
        )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def tissue_labels(gm, wm, csf, mask=None) -> nib.Nifti1Image:
    """Hard tissue labels (1 GM, 2 WM, 3 CSF: the most probable class where
    it exceeds 0.5, inside ``mask``) for the carpet plot's bands."""
    probs = np.stack([_img(p).get_fdata() for p in (gm, wm, csf)])
    labels = (np.argmax(probs, axis=0) + 1) * (probs.max(axis=0) > 0.5)
    if mask is not None:
        labels = labels * (_img(mask).get_fdata() > 0.5)
    return nib.Nifti1Image(labels.astype(np.int16), _img(gm).affine)


def plot_carpet(series, labels: nib.Nifti1Image, *, t_r: float | None = None, title=None):
    """nilearn's carpet plot of the realigned series (detrended, z-scored),
    voxels grouped in GM, WM and CSF bands."""
    from nilearn import plotting

    present = set(np.unique(np.asanyarray(labels.dataobj)).astype(int)) - {0}
    mask_labels = {name: k for k, name in enumerate(("GM", "WM", "CSF"), start=1) if k in present}
    fig = plt.figure(figsize=(11, 4))
    # nilearn prints and warns about casting the label image: not the user's concern
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)
        _carpet(plotting, series, labels, mask_labels, t_r, fig, title)
    return fig


def _carpet(plotting, series, labels, mask_labels, t_r, fig, title):
    plotting.plot_carpet(
        series if isinstance(series, nib.Nifti1Image) else nib.load(str(series)),
        mask_img=labels,
        mask_labels=mask_labels,
        t_r=t_r,
        figure=fig,
        title=title,
        standardize="zscore_sample",
        cmap_labels="Set1",
    )


def plot_outlier_matrix(matrix, *, removed_pairs=None, method: str = ""):
    """Slices (rows) by label/control pairs (columns), dark = removed."""
    matrix = np.asarray(matrix, dtype=float)
    n_slices, n_pairs = matrix.shape
    fig, ax = plt.subplots(figsize=(11, min(4.5, 1.2 + 0.12 * n_slices)))
    ax.imshow(
        matrix,
        aspect="auto",
        cmap="Greys",
        vmin=0,
        vmax=1,
        interpolation="nearest",
        origin="lower",
        extent=(-0.5, n_pairs - 0.5, -0.5, n_slices - 0.5),
    )
    ax.set_xlabel("label/control pair", fontsize=8)
    ax.set_ylabel("slice", fontsize=8)
    ax.tick_params(labelsize=7)
    whole = int(np.all(matrix > 0, axis=0).sum())
    partial = int((matrix.any(axis=0) & ~matrix.all(axis=0)).sum())
    ax.set_title(
        f"{method + ': ' if method else ''}{int(matrix.sum())} of {matrix.size} slice-pairs "
        f"removed; {whole} pair(s) in every slice, {partial} in some slices (black = removed)",
        fontsize=8,
    )
    if removed_pairs is not None:
        for p in np.flatnonzero(np.asarray(removed_pairs, bool)):
            ax.axvline(p, color="r", lw=0.6, alpha=0.5)
    fig.tight_layout()
    return fig


def save_svg(fig, path) -> Path:
    """Write ``fig`` as SVG (no date, so reruns give the same file) and close it."""
    path = Path(path)
    fig.savefig(
        path,
        format="svg",
        dpi=RASTER_DPI,
        facecolor=fig.get_facecolor(),
        bbox_inches="tight",
        metadata={"Date": None},
    )
    plt.close(fig)
    return path
