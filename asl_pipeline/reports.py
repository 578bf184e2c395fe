"""Figures and the per-subject HTML report.

Plain functions over arrays: each ``plot_*`` returns a matplotlib figure, and
:func:`build_report` assembles figures (as inline PNGs), tables and the
methods text into one self-contained HTML file.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _slices(n_z: int, n_show: int) -> np.ndarray:
    n_show = min(n_show, n_z)
    return np.unique(np.linspace(0, n_z - 1, n_show + 2)[1:-1].round().astype(int))


def plot_mosaic(volume, *, title="", vmin=0.0, vmax=None, cmap="viridis", n_slices=12, label=""):
    """Axial slices of a 3D map on one row pair, with a colour bar."""
    volume = np.nan_to_num(np.asarray(volume, dtype=float))
    zs = _slices(volume.shape[2], n_slices)
    if vmax is None:
        vmax = float(np.percentile(volume[volume != 0], 99)) if np.any(volume) else 1.0
    ncol = int(np.ceil(len(zs) / 2))
    fig, axes = plt.subplots(2, ncol, figsize=(1.6 * ncol + 0.8, 3.6), squeeze=False)
    im = None
    for ax, z in zip(axes.flat, list(zs) + [None] * (axes.size - len(zs)), strict=True):
        ax.axis("off")
        if z is None:
            continue
        im = ax.imshow(volume[:, :, z].T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(f"z={z}", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label=label)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_overlay(background, mask, *, title="", n_slices=8):
    """Contour of a mask (e.g. the T1w brain mask in ASL space) on an image."""
    background = np.nan_to_num(np.asarray(background, dtype=float))
    mask = np.asarray(mask, dtype=float)
    zs = _slices(background.shape[2], n_slices)
    fig, axes = plt.subplots(1, len(zs), figsize=(1.6 * len(zs), 2.0), squeeze=False)
    vmax = float(np.percentile(background, 99.5)) or 1.0
    for ax, z in zip(axes.flat, zs, strict=True):
        ax.imshow(background[:, :, z].T, origin="lower", cmap="gray", vmin=0, vmax=vmax)
        if mask[:, :, z].any():
            ax.contour(mask[:, :, z].T, levels=[0.5], colors="r", linewidths=0.6, origin="lower")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig


def plot_motion(fd, *, rmsd=None, params=None, title="Head motion"):
    """Framewise displacement (and RMS displacement, raw parameters)."""
    n_rows = 1 + (params is not None)
    fig, axes = plt.subplots(n_rows, 1, figsize=(8, 1.8 * n_rows), squeeze=False)
    ax = axes[0, 0]
    ax.plot(np.asarray(fd), label="FD (mm)", lw=1)
    if rmsd is not None:
        ax.plot(np.asarray(rmsd), label="RMSD (mm)", lw=1)
    ax.set_xlabel("volume")
    ax.legend(fontsize=7, loc="upper right")
    if params is not None:
        params = np.asarray(params)
        ax2 = axes[1, 0]
        for i, name in enumerate(("x", "y", "z")):
            ax2.plot(params[:, i], lw=0.8, label=f"t{name} (mm)")
        for i, name in enumerate(("x", "y", "z")):
            ax2.plot(np.degrees(params[:, 3 + i]), lw=0.8, ls="--", label=f"r{name} (deg)")
        ax2.legend(fontsize=6, ncol=6, loc="upper right")
        ax2.set_xlabel("volume")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_carpet(series, mask, *, title="Carpet plot (voxels x volumes, z-scored)", max_rows=2000):
    """Voxel time courses inside the mask, z-scored, as an image."""
    data = np.asarray(series, dtype=float)[np.asarray(mask, dtype=bool)]
    if data.shape[0] > max_rows:
        data = data[np.linspace(0, data.shape[0] - 1, max_rows).astype(int)]
    sd = data.std(axis=1, keepdims=True)
    z = (data - data.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    fig, ax = plt.subplots(figsize=(8, 2.6))
    ax.imshow(z, aspect="auto", cmap="gray", vmin=-2, vmax=2, interpolation="nearest")
    ax.set_xlabel("volume")
    ax.set_ylabel("voxel")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_outlier_matrix(matrix, *, title="Outliers (slice x pair; dark = removed)"):
    """The slice x volume outlier matrix of the outlier cleaning."""
    matrix = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(8, 2.2))
    ax.imshow(matrix, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("label/control pair")
    ax.set_ylabel("slice")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure_to_png(fig) -> bytes:
    """PNG bytes of a figure (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


@dataclass
class ReportSection:
    """One section of the report: a title, figures (PNG bytes), tables, text."""

    title: str
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    tables: list[tuple[str, dict]] = field(default_factory=list)
    text: str = ""


_CSS = """
body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}
h1{border-bottom:2px solid #446}h2{color:#446;margin-top:1.5em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;
font-size:90%;text-align:left}img{max-width:100%}figcaption{font-size:85%;color:#555}
.warn{color:#a40}
"""


def build_report(title: str, sections: list[ReportSection], *, warnings=()) -> str:
    """One self-contained HTML page (figures inline as base64 PNG)."""
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if warnings:
        out.append("<h2>Warnings</h2><ul>")
        out += [f"<li class='warn'>{html.escape(w)}</li>" for w in warnings]
        out.append("</ul>")
    for sec in sections:
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.text:
            out += [f"<p>{html.escape(p)}</p>" for p in sec.text.split("\n\n") if p.strip()]
        for caption, table in sec.tables:
            out.append(f"<table><caption>{html.escape(caption)}</caption>")
            for key, value in table.items():
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                out.append(
                    f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(shown)}</td></tr>"
                )
            out.append("</table>")
        for caption, png in sec.figures:
            data = base64.b64encode(png).decode("ascii")
            out.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out)
