"""Pre-flight checks on synthetic images with known answers."""

from pathlib import Path

import nibabel as nb
import numpy as np

from asl_pipeline.preflight import (
    BYTES_PER_VOXEL,
    Image,
    check_image,
    memory_estimate_gb,
)


def _write(tmp_path: Path, data, name="x.nii.gz", **header) -> Image:
    img = nb.Nifti1Image(data, np.diag([3.0, 3.0, 4.0, 1.0]))
    for key, value in header.items():
        img.header[key] = value
    path = tmp_path / name
    nb.save(img, str(path))
    return Image(path, "ASL series")


def test_memory_estimate_known_answer():
    assert memory_estimate_gb((64, 64, 20, 100)) == 64 * 64 * 20 * 100 * BYTES_PER_VOXEL / 2**30
    assert BYTES_PER_VOXEL == 32


def test_clean_image_passes(tmp_path):
    data = np.random.default_rng(0).normal(100, 10, (4, 5, 3, 6)).astype(np.float32)
    assert check_image(_write(tmp_path, data)) == []


def test_over_memory_limit_reported_before_reading(tmp_path):
    data = np.random.default_rng(0).normal(100, 10, (64, 64, 16, 8)).astype(np.float32)
    image = _write(tmp_path, data)
    need = memory_estimate_gb(data.shape)
    (problem,) = check_image(image, mem_gb=need / 2)
    assert problem.field == "dim" and f"{need:.1f} GiB" in problem.problem
    assert check_image(image, mem_gb=need * 2) == []


def test_constant_and_non_finite_named(tmp_path):
    (const,) = check_image(_write(tmp_path, np.full((4, 4, 4), 3.0, np.float32)))
    assert "single value 3" in const.problem and const.field == "image data"
    data = np.ones((4, 4, 4), np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    (bad,) = check_image(_write(tmp_path, data, "nan.nii.gz"))
    assert "2 NaN or infinite" in bad.problem


def test_one_problem_per_image_all_images_reported(tmp_path):
    from types import SimpleNamespace

    from asl_pipeline.preflight import check_runs

    asl = _write(tmp_path, np.zeros((4, 4, 3, 2), np.float32), "asl.nii.gz")
    m0 = _write(tmp_path, np.full((4, 4, 3), np.nan, np.float32), "m0.nii.gz")
    run = SimpleNamespace(
        asl_file=asl.path,
        m0_file=m0.path,
        m0_pepolar_files=(),
        t1w_file=None,
        fieldmap_files=(),
    )
    problems = check_runs([run, run])  # the same files twice are read once
    assert [Path(p.file).name for p in problems] == ["asl.nii.gz", "m0.nii.gz"]
