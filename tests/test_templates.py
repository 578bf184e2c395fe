"""Template spaces by TemplateFlow name, from a local TemplateFlow folder."""

import os
import shutil

import nibabel as nib
import pytest

from asl_pipeline import templates
from asl_pipeline.cli.run import validate
from asl_pipeline.config import Config
from asl_pipeline.errors import ASLInputError
from tests.test_workflows import _build, _nodes, dataset  # noqa: F401 (fixture)

TPL = "MNI152NLin2009cAsym"


@pytest.fixture
def tf_home(tmp_path, monkeypatch):
    """A TemplateFlow folder holding a copy of nilearn's template under TPL's name."""
    from asl_pipeline.registration import load_template

    home = tmp_path / "templateflow"
    folder = home / f"tpl-{TPL}"
    folder.mkdir(parents=True)
    tpl = load_template(2)
    tpl.t1.to_filename(folder / f"tpl-{TPL}_res-02_T1w.nii.gz")
    tpl.brain_mask.to_filename(folder / f"tpl-{TPL}_res-02_desc-brain_mask.nii.gz")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    return home


def test_templateflow_template_found_offline(tf_home):
    t1, mask = templates.find_templateflow(TPL)
    assert t1.name == f"tpl-{TPL}_res-02_T1w.nii.gz"
    assert mask.name == f"tpl-{TPL}_res-02_desc-brain_mask.nii.gz"
    assert templates.find_templateflow(f"{TPL}:res-2") == (t1, mask)
    tpl = templates.get_template(TPL)
    assert tpl.name == TPL and tpl.t1.shape == nib.load(t1).shape
    assert templates.check_spaces(["asl", "T1w", "MNI152NLin2009aSym", TPL]) == []


def test_missing_template_names_the_folder_and_the_fix(tf_home):
    with pytest.raises(ASLInputError) as err:
        templates.find_templateflow("MNI152NLin6Asym")
    msg = str(err.value)
    assert str(tf_home / "tpl-MNI152NLin6Asym") in msg
    assert "TEMPLATEFLOW_HOME" in msg and "downloads nothing" in msg
    with pytest.raises(ASLInputError, match="res-1 not in"):
        templates.find_templateflow(f"{TPL}:res-1")
    shutil.rmtree(tf_home)
    assert len(templates.check_spaces([TPL])) == 1


def test_bundled_template_needs_no_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty"))
    assert templates.check_spaces(["MNI152NLin2009aSym"]) == []
    assert templates.get_template("MNI152NLin2009aSym").source.startswith("nilearn")


@pytest.mark.parametrize("bad", ["fsaverage", f"{TPL}:cohort-1", "MNI/../x"])
def test_bad_space_names(bad):
    with pytest.raises(ValueError):
        Config(bids_dir="b", output_dir="o", output_spaces=[bad])


def test_validate_reports_a_missing_template(dataset, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "none"))
    config = Config(
        bids_dir=dataset, output_dir=tmp_path / "o", work_dir=tmp_path / "w",
        output_spaces=["asl", TPL], validate_only=True,
    )  # fmt: skip
    _, problems = validate(config)
    assert any("TemplateFlow" in str(p) and TPL in str(p) for p in problems), problems


def test_template_space_graph(dataset, tmp_path, tf_home):  # noqa: F811
    wf = _build(dataset, tmp_path, "--output-spaces", "asl", "MNI152NLin2009aSym", TPL)
    nodes = _nodes(wf)
    reg = nodes[f"t1w_to_{TPL}"]
    assert reg.inputs.template == TPL
    assert nodes[f"ds_t1w_to_{TPL}"].inputs.to_space == TPL
    sink = nodes[f"ds_tpl_{TPL}_cleaned_cbf"]
    assert sink.inputs.space == TPL
    assert sink.inputs.desc == nodes["ds_cleaned_cbf"].inputs.desc
    assert f"bids::sub-01/anat/sub-01_from-T1w_to-{TPL}_mode-image_xfm.h5" in sink.inputs.sources
    assert "ds_mni_cleaned_cbf" in nodes  # the bundled template stays
    from asl_pipeline.cli.workflow import methods_texts

    assert any(TPL in text for text in methods_texts(wf))


@pytest.mark.slow
def test_t1w_to_template_registers_a_simulated_t1w(tf_home, tmp_path):
    """T1wToTemplate runs a real affine + SyN registration to a template read from
    the local TemplateFlow folder, and the registered T1w matches the template."""
    import numpy as np

    from asl_pipeline.interfaces.registration import T1wToTemplate
    from asl_pipeline.simulate import simulate_subject

    small = dict(shape=(32, 32, 12), voxel_size=(6.0, 6.0, 10.0), resolution=2)
    sub = simulate_subject(2, n_pairs=1, t1w_voxel_size=2.0, subsample=(1, 1, 2), **small)
    t1w_file = tmp_path / "sub-01_desc-preproc_T1w.nii.gz"
    nib.Nifti1Image(sub.t1w.astype(np.float32), sub.t1w_affine).to_filename(t1w_file)
    work = tmp_path / "reg"
    work.mkdir()
    res = T1wToTemplate(t1w_file=str(t1w_file), template=TPL).run(cwd=str(work))
    out = res.outputs
    for name in ("t1w_to_template", "template_to_t1w", "reference", "t1w_template"):
        assert os.path.isfile(getattr(out, name)), name
    assert out.t1w_to_template.endswith(f"from-T1w_to-{TPL}_xfm.h5")
    tpl = templates.get_template(TPL)
    warped = nib.load(out.t1w_template)
    assert warped.shape == tpl.t1.shape
    np.testing.assert_allclose(warped.affine, tpl.t1.affine, atol=1e-4)
    brain = np.asarray(tpl.brain_mask.dataobj) > 0.5
    a = np.asarray(warped.dataobj, dtype=float)[brain]
    b = np.asarray(tpl.t1.dataobj, dtype=float)[brain]
    r = np.corrcoef(a, b)[0, 1]
    # the T1w merely resampled into the template grid (no registration): r = 0.47
    from nilearn.image import resample_to_img

    unregistered = resample_to_img(
        nib.load(t1w_file), tpl.t1, interpolation="linear", force_resample=True,
        copy_header=True,
    )  # fmt: skip
    r0 = np.corrcoef(np.asarray(unregistered.dataobj, dtype=float)[brain], b)[0, 1]
    assert r > 0.8 and r > r0 + 0.2, f"registered T1w vs template: r = {r:.3f} (before {r0:.3f})"
