"""The closing summary line of asl-pipeline (asl_pipeline.cli.summary)."""

from asl_pipeline.cli.summary import summary_lines


def _qc(path, **row):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(row) + "\n" + "\t".join(str(v) for v in row.values()) + "\n")


def test_summary_reads_the_measured_map_and_outlier_counts(tmp_path):
    _qc(
        tmp_path / "sub-01/perf/sub-01_asl_desc-qualitycontrol_cbf.tsv",
        cbf_gm_cbf_mean=47.04, cbf_wm_cbf_mean=22.31, cbf_gm_wm_ratio=2.108,
        denoised_gm_cbf_mean=38.0, outlier_volumes_all_slices=2, outlier_pairs_partial=3,
        n_pairs=40,
    )  # fmt: skip
    _qc(
        tmp_path / "sub-02/ses-1/perf/sub-02_ses-1_asl_desc-qualitycontrol_cbf.tsv",
        cbf_gm_cbf_mean=50.0, cbf_wm_cbf_mean=25.0, cbf_gm_wm_ratio=2.0,
    )  # fmt: skip
    assert summary_lines(tmp_path) == [
        "sub-01_asl: GM 47.0, WM 22.3 mL/100 g/min, GM/WM 2.11; 2 of 40 pairs removed, "
        "3 more in some slices only",
        "sub-02_ses-1_asl: GM 50.0, WM 25.0 mL/100 g/min, GM/WM 2.00; no outlier cleaning",
    ]


def test_summary_of_a_multi_pld_fit(tmp_path):
    _qc(
        tmp_path / "sub-01/perf/sub-01_asl_desc-qualitycontrol_cbf.tsv",
        cbf_gm_cbf_mean=58.2, cbf_wm_cbf_mean=25.0, cbf_gm_wm_ratio=2.328,
        att_gm_mean=1.021, att_wm_mean=1.304, att_gm_failed_percent=18.2,
        att_wm_failed_percent=27.7,
    )  # fmt: skip
    assert summary_lines(tmp_path) == [
        "sub-01_asl: GM 58.2, WM 25.0 mL/100 g/min, GM/WM 2.33; ATT GM 1.02, WM 1.30 s, "
        "fit failed in 18% of GM and 28% of WM voxels"
    ]
