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
