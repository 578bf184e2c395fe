"""Report figures and HTML assembly."""

import numpy as np

from asl_pipeline import reports


def test_report_contains_sections_and_figures(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(50, 10, (16, 16, 8))
    mask = np.zeros((16, 16, 8), bool)
    mask[4:12, 4:12] = True
    figs = [
        ("mosaic", reports.figure_to_png(reports.plot_mosaic(vol, title="CBF"))),
        ("overlay", reports.figure_to_png(reports.plot_overlay(vol, mask))),
        (
            "motion",
            reports.figure_to_png(reports.plot_motion(rng.random(10), params=rng.random((10, 6)))),
        ),
        ("carpet", reports.figure_to_png(reports.plot_carpet(rng.random((16, 16, 8, 10)), mask))),
        (
            "outliers",
            reports.figure_to_png(reports.plot_outlier_matrix(rng.random((8, 10)) > 0.9)),
        ),
    ]
    for _, png in figs:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    page = reports.build_report(
        "sub-01 <report>",
        [
            reports.ReportSection(
                "CBF", figures=figs, tables=[("QC", {"gm": 55.123456})], text="Methods paragraph."
            )
        ],
        warnings=["M0 TR unknown"],
    )
    assert page.count("<img") == 5
    assert "sub-01 &lt;report&gt;" in page
    assert "55.12" in page and "M0 TR unknown" in page
