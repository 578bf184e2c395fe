"""Report figures: brain panels are stored as raster layers with vector text."""

import re

from asl_pipeline import reportlets
from asl_pipeline.registration import load_template


def test_segmentation_svg_rasterizes_image_and_contours(tmp_path):
    tpl = load_template(2)
    probsegs = {"GM": tpl.gm, "WM": tpl.wm, "CSF": tpl.csf}
    fig = reportlets.plot_segmentation(tpl.t1, tpl.brain_mask, probsegs)
    path = reportlets.save_svg(fig, tmp_path / "seg.svg")
    svg = path.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    # one PNG layer per cut (7 cuts x 3 planes) holds the T1w and its contours
    panels = re.findall(r"<image [^>]*data:image/png;base64", svg)
    assert len(panels) >= 21, len(panels)
    # no contour is left as a vector path: the paths left are the text glyphs
    path_chars = sum(len(d) for d in re.findall(r'<path [^>]*d="([^"]*)"', svg))
    assert path_chars < 50_000, path_chars
    # cut coordinates and L/R marks stay vector text (matplotlib's glyph paths)
    assert re.search(r'<use xlink:href="#DejaVuSans-', svg)
    # a 1 mm T1w's figure was 4.1 MB with vector contours, 0.77 MB rasterized
    assert path.stat().st_size < 1_000_000, path.stat().st_size


def _oblique(img, degrees=15.0):
    """The same voxels with the head turned about x: the affine rotates."""
    import nibabel as nib
    import numpy as np

    a = np.deg2rad(degrees)
    turn = np.eye(4)
    turn[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return nib.Nifti1Image(np.asanyarray(img.dataobj), turn @ img.affine)


def test_oblique_images_are_resampled_once_per_figure(monkeypatch):
    """nilearn resampled an oblique image at each of the three rows it was
    drawn on; the figure now resamples each image once, before drawing."""
    import nilearn.image.resampling as resampling
    import numpy as np

    tpl = load_template(2)
    aligned = reportlets._img(tpl.t1)
    assert np.array_equal(reportlets._on_axes(aligned).affine, aligned.affine)

    images = [_oblique(i) for i in (tpl.t1, tpl.brain_mask, tpl.gm, tpl.wm, tpl.csf)]
    on_axes = reportlets._on_axes(images[0])
    rotation = on_axes.affine[:3, :3]
    assert np.count_nonzero(np.abs(rotation) > 1e-3) == 3  # one axis per voxel axis
    mask = reportlets._on_axes(images[1])
    assert set(np.unique(mask.get_fdata())) <= {0.0, 1.0}  # binary: nearest neighbour

    calls = []
    real = resampling.resample_img
    monkeypatch.setattr(
        resampling, "resample_img", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    t1, brain, gm, wm, csf = images
    reportlets.plot_segmentation(t1, brain, {"GM": gm, "WM": wm, "CSF": csf})
    assert len(calls) == len(images), len(calls)  # 15 (5 images x 3 rows) before
