"""The per-subject report, built from a small derivatives tree; rendered in
headless Chromium (Debian's ``chromium``) to catch broken images, empty
panels and console errors, as a person opening it would."""

import json
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from asl_pipeline.cli.run import main
from asl_pipeline.interfaces.reports import SubjectReport
from asl_pipeline.registration import write_itk_affine
from asl_pipeline.subject_report import PROVENANCE, cite, find_runs, write_subject_report

SECTIONS = ("summary", "anat", "run-sub-01", "methods", "about", "errors")


def _save(arr, affine, path):
    nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), affine), path)


def _sphere(shape, radius):
    grid = np.indices(shape) - (np.array(shape)[:, None, None, None] - 1) / 2
    return np.sqrt((grid**2).sum(0)) / radius


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A participant-level output of one subject (small images, known QC)."""
    root = tmp_path_factory.mktemp("deriv")
    out = root / "out"
    anat, perf, logs = out / "sub-01/anat", out / "sub-01/perf", out / "logs"
    for d in (anat, perf, logs):
        d.mkdir(parents=True)
    a_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    a_aff[:3, 3] = [-24, -28, -24]
    r = _sphere((25, 29, 25), 10)
    _save(np.where(r < 1, 100 * (1.2 - r), 0), a_aff, anat / "sub-01_desc-preproc_T1w.nii.gz")
    _save(r < 1, a_aff, anat / "sub-01_desc-brain_mask.nii.gz")
    tissues = {"GM": (r > 0.7) & (r < 1), "WM": r <= 0.7, "CSF": (r >= 1) & (r < 1.1)}
    for label, m in tissues.items():
        _save(m, a_aff, anat / f"sub-01_label-{label}_probseg.nii.gz")
    p_aff = np.diag([4.0, 4.0, 5.0, 1.0])
    p_aff[:3, 3] = [-24, -28, -20]
    r = _sphere((13, 15, 9), 5.5)
    rng = np.random.default_rng(0)
    brain = r < 1
    cbf = np.where(brain, np.where(r > 0.6, 60.0, 25.0), 0) + rng.normal(0, 3, r.shape) * brain
    series = 1000 * brain[..., None] + rng.normal(0, 5, r.shape + (8,))
    series[..., 1::2] -= 10 * brain[..., None]
    _save(series, p_aff, perf / "sub-01_desc-preproc_asl.nii.gz")
    (perf / "sub-01_desc-preproc_asl.json").write_text(
        json.dumps(
            {
                "ArterialSpinLabelingType": "PCASL",
                "MRAcquisitionType": "2D",
                "PostLabelingDelay": 1.8,
                "LabelingDuration": 1.8,
                "M0Type": "Separate",
                "RepetitionTimePreparation": 4.0,
            }
        )
    )
    _save(series.mean(-1), p_aff, perf / "sub-01_aslref.nii.gz")
    _save(brain, p_aff, perf / "sub-01_desc-brain_mask.nii.gz")
    for label, m in {"GM": (r > 0.6) & brain, "WM": r <= 0.6, "CSF": (r >= 1) & (r < 1.2)}.items():
        _save(m, p_aff, perf / f"sub-01_label-{label}_probseg.nii.gz")
    write_itk_affine(np.eye(4), perf / "sub-01_from-asl_to-T1w_mode-image_xfm.mat")
    _save(cbf * 0.7, p_aff, perf / "sub-01_desc-mean_cbf.nii.gz")
    _save(cbf, p_aff, perf / "sub-01_desc-paocsl_cbf.nii.gz")
    fd = [0.0, 0.1, 0.2, 1.7, 0.3, 0.1, 0.1, 0.1]  # one volume above the 1 mm threshold
    names = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    lines = ["\t".join(names + ["framewise_displacement", "dvars", "outlier_removed"])]
    for k in range(8):
        lines.append("\t".join(["0.1"] * 6 + [str(fd[k]), "1.5", "1" if k in (2, 3) else "0"]))
    (perf / "sub-01_desc-confounds_timeseries.tsv").write_text("\n".join(lines) + "\n")
    mat = np.zeros((9, 4), int)
    mat[:, 1] = 1
    mat[3, 2] = 1
    rows = ["slice\t" + "\t".join(f"pair_{i}" for i in range(4))]
    rows += [f"{z}\t" + "\t".join(map(str, mat[z])) for z in range(9)]
    (perf / "sub-01_desc-paocsl_outliers.tsv").write_text("\n".join(rows) + "\n")
    qc = {
        "cbf_gm_cbf_mean": 95.0,  # above the 30-90 range: flagged
        "cbf_wm_cbf_mean": 25.0,
        "cbf_gm_wm_ratio": 3.8,
        "cbf_qei": 0.8,
        "framewise_displacement_mean": 0.34,
        "framewise_displacement_max": 1.7,  # above 1 mm: flagged
        "n_pairs": 4,
    }
    (perf / "sub-01_desc-qualitycontrol_cbf.tsv").write_text(
        "\t".join(qc) + "\n" + "\t".join(str(v) for v in qc.values()) + "\n"
    )
    (logs / "asl_pipeline_config_sub-01.toml").write_text(
        '[asl_pipeline]\noutlier_method = "paocsl"\ndenoise = false\noutput_spaces = ["asl"]\n'
    )
    (out / PROVENANCE.format(subject="01")).write_text(
        json.dumps(
            {
                "version": "9.9.9",
                "command": "asl-pipeline bids out participant",
                "started": "2025-01-01T00:00:00",
                "platform": "test",
                "config_file": "asl_pipeline_config_sub-01.toml",
                "methods": {
                    "subject": ["The T1w image was corrected with N4."],
                    "runs": {
                        "sub-01": [
                            "Framewise displacement (Power et al. 2012) was computed. CBF "
                            "followed the ASL white paper (Alsop et al. 2015)."
                        ]
                    },
                },
            }
        )
    )
    (logs / "crash-20250101-sub_01_wf.asl_sub_01.clean_cbf-x.txt").write_text(
        "Node: asl_pipeline_wf.sub_01_wf.asl_sub_01.clean_cbf\nTraceback:\nValueError: boom\n"
    )
    return out


@pytest.fixture(scope="module")
def report(tree):
    return write_subject_report(tree, "01")


def test_report_has_every_section_and_figure(report, tree):
    page = report.read_text()
    assert report == tree / "sub-01/figures/sub-01_report.html"
    for anchor in SECTIONS:
        assert f"id='{anchor}'" in page, anchor
    srcs = re.findall(r"<img[^>]* src='([^']+)'", page)
    # segmentation, coregistration before/after, confounds, carpet, CBF maps, outliers
    assert len(srcs) == 7, srcs
    for src in srcs:
        svg = (report.parent / src).read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg, src
    assert "Figures that could not be drawn" not in page


def test_qc_table_flags_values_outside_their_range(report):
    page = report.read_text()
    rows = re.findall(r"<tr( class='flag')?><td>([^<]+)</td><td>([^<]+)</td>", page)
    flagged = {label for cls, label, _ in rows if cls}
    assert flagged == {"GM CBF, measured map", "Framewise displacement, maximum"}
    assert "2 metric(s) outside their reference range" in page
    assert "<td>mL/100 g/min</td>" in page and "<td>30-90</td>" in page


def test_methods_cite_numbered_references(report):
    page = report.read_text()
    assert "corrected with N4 [1]." in page
    assert "(Power et al. 2012) was computed [2]." in page
    assert "(Alsop et al. 2015) [3]." in page
    refs = re.findall(r"<li>([^<]+)</li>", page.split("id='methods'")[1].split("</ol>")[0])
    assert refs[0].startswith("Tustison NJ") and refs[1].startswith("Power JD")
    assert any(r.startswith("Alsop DC") for r in refs)


def test_about_and_errors(report):
    page = report.read_text()
    about = page.split("id='about'")[1]
    assert "asl-pipeline bids out participant" in about and "9.9.9" in about
    errors = page.split("id='errors'")[1]
    assert "asl_pipeline_wf.sub_01_wf.asl_sub_01.clean_cbf" in errors and "boom" in errors


def test_cite_numbers_in_order_of_first_citation():
    text, refs = cite(["Wang 2012 first. Then Alsop et al. 2015 and Wang 2012 again."])
    assert text == ["Wang 2012 first [1]. Then Alsop et al. 2015 and Wang 2012 again [1, 2]."]
    assert refs[0].startswith("Wang Z.") and refs[1].startswith("Alsop DC")


def test_interface(tree, tmp_path):
    res = SubjectReport(output_dir=str(tree), subject="01").run(cwd=tmp_path)
    assert res.outputs.out_report.endswith("sub-01/figures/sub-01_report.html")


def test_reports_only_regenerates_without_processing(tree, tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    report = tree / "sub-01/figures/sub-01_report.html"
    report.unlink(missing_ok=True)
    argv = [str(bids), str(tree), "participant", "--reports-only", "-w", str(tmp_path / "w")]
    assert main(argv) == 0
    assert f"Report: {report}" in capsys.readouterr().out
    assert report.is_file() and not (tmp_path / "w").exists()
    assert main(argv + ["--participant-label", "02"]) == 1
    assert "no outputs of sub-02" in capsys.readouterr().err


_CHECK = """
<script>
window.addEventListener('load', () => {
  const bad = [];
  for (const img of document.images) {
    const box = img.getBoundingClientRect();
    if (!img.complete || img.naturalWidth === 0 || box.width < 50 || box.height < 20) {
      bad.push(img.getAttribute('src'));
    }
  }
  const pre = document.createElement('pre');
  pre.id = 'render-check';
  pre.textContent = JSON.stringify({n: document.images.length, bad: bad});
  document.body.appendChild(pre);
});
</script>
"""


def test_report_renders_in_headless_chromium(report):
    _render_check(report, 7)


def _render_check(report, n_images):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    check = report.with_name("render_check.html")
    check.write_text(report.read_text().replace("</body>", _CHECK + "</body>"))
    try:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--allow-file-access-from-files", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=15000", "--dump-dom", check.as_uri()],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        check.unlink()
    match = re.search(r"<pre id=\"render-check\">([^<]+)</pre>", proc.stdout)
    assert match, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(match.group(1).replace("&quot;", '"'))
    assert result["n"] == n_images and result["bad"] == [], result
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console


@pytest.fixture(scope="module")
def corrected_tree(tree, tmp_path_factory):
    """The same output with SDC (a field map, PE in the sidecar) and PVC maps."""
    out = tmp_path_factory.mktemp("deriv_corr") / "out"
    shutil.copytree(tree, out)
    shutil.rmtree(out / "sub-01/figures", ignore_errors=True)
    perf, fmap = out / "sub-01/perf", out / "sub-01/fmap"
    fmap.mkdir()
    ref = nib.load(perf / "sub-01_aslref.nii.gz")
    y = np.arange(ref.shape[1])[None, :, None] * np.ones(ref.shape)
    _save(
        30.0 * np.sin(y / 4.0),
        ref.affine,
        fmap / "sub-01_fmapid-auto00000_desc-preproc_fieldmap.nii.gz",
    )
    before = np.roll(ref.get_fdata(), 1, axis=1)  # the reference before the correction
    _save(before, ref.affine, perf / "sub-01_desc-hmc_aslref.nii.gz")
    side = perf / "sub-01_desc-preproc_asl.json"
    meta = json.loads(side.read_text())
    meta.update(PhaseEncodingDirection="j", TotalReadoutTime=0.03)
    side.write_text(json.dumps(meta))
    cbf = nib.load(perf / "sub-01_desc-paocsl_cbf.nii.gz")
    _save(cbf.get_fdata() * 1.3, cbf.affine, perf / "sub-01_desc-pvcGM_cbf.nii.gz")
    _save(cbf.get_fdata() * 0.4, cbf.affine, perf / "sub-01_desc-pvcWM_cbf.nii.gz")
    return out


@pytest.fixture(scope="module")
def corrected_report(corrected_tree):
    return write_subject_report(corrected_tree, "01")


def test_sdc_view_of_older_outputs_models_the_distorted_frame(corrected_tree, tmp_path):
    """Outputs without the stored "before" reference: the flicker's distorted frame is
    the corrected reference pushed through the field, and the caption says so."""
    out = tmp_path / "out"
    shutil.copytree(corrected_tree, out)
    shutil.rmtree(out / "sub-01/figures", ignore_errors=True)
    (out / "sub-01/perf/sub-01_desc-hmc_aslref.nii.gz").unlink()
    page = write_subject_report(out, "01").read_text()
    assert "pushed back through the estimated field (forward model" in page
    assert "sub-01_desc-sdc_aslrefa.svg" in page


def test_report_shows_sdc_and_pvc(corrected_report):
    page = corrected_report.read_text()
    assert "Figures that could not be drawn" not in page
    assert "<h3>Susceptibility distortion correction</h3>" in page
    assert "<h3>Partial-volume correction</h3>" in page
    assert "+/-30 Hz" in page  # the field's 99th percentile of |field|
    # 30 Hz x 0.03 s = 0.9 voxel peak displacement
    p95 = float(re.search(r"95th percentile ([0-9.]+) voxels", page).group(1))
    assert 0.6 < p95 <= 0.9
    srcs = re.findall(r"<img[^>]* src='([^']+)'", page)
    assert len(srcs) == 7 + 4, srcs  # + field map, SDC before/after, PVC maps
    for name in (
        "desc-fieldmap_aslref.svg",
        "desc-sdc_aslrefa.svg",
        "desc-sdc_aslrefb.svg",
        "desc-pvc_cbf.svg",
    ):
        assert f"sub-01_{name}" in srcs, name
        svg = (corrected_report.parent / f"sub-01_{name}").read_text()
        assert "<svg" in svg
    # the stored "before" reference is the distorted frame, not a second run
    assert "before the correction (sub-01_desc-hmc_aslref.nii.gz)" in page
    assert [r.stem for r in find_runs(corrected_report.parents[1])] == ["sub-01"]
    pvc_svg = (corrected_report.parent / "sub-01_desc-pvc_cbf.svg").read_text()
    assert "mL/100 g/min" in pvc_svg and "PVC grey" in pvc_svg
    assert (
        "B0 field (Hz)"
        in (corrected_report.parent / "sub-01_desc-fieldmap_aslref.svg").read_text()
    )


def test_report_without_corrections_has_no_such_sections(report):
    page = report.read_text()
    assert "Susceptibility distortion correction" not in page
    assert "<h3>Partial-volume correction</h3>" not in page


def test_corrected_report_renders_in_headless_chromium(corrected_report):
    _render_check(corrected_report, 11)
