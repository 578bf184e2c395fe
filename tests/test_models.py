"""Networks: parameter counts, receptive field, shapes, file format and checksums."""

import json

import numpy as np
import pytest
import torch

from asl_pipeline.errors import ASLInputError
from asl_pipeline.models import DWAN, DilatedNet, UNet, build_model, load_model, save_model
from asl_pipeline.models.io import default_weights_path, file_sha256, find_manifest


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_dwan_default_parameter_count_and_receptive_field():
    model = DWAN()
    # stem 320 + 8 blocks x 73,888 + head 577 + skip 10 (spec: "about 0.59 M")
    assert _n_params(model) == 592_011
    assert model.receptive_field() == 73
    # the released Keras variant: 1x1 head/skip, depth 3, global blocks dilated 8
    keras = DWAN(depth=3, global_dilations=(8, 8, 8), head_kernel=1)
    assert keras.receptive_field() == 2 * (1 + 3 * 9) + 1


def test_dwan_receptive_field_measured():
    torch.manual_seed(0)
    # same dilations and kernels as the default, narrow so the test is fast
    model = DWAN(width=4, expansion=2).double()
    x = torch.randn(1, 1, 91, 91, dtype=torch.float64).mul(50).requires_grad_(True)
    model(x)[0, 0, 45, 45].backward()
    rows = np.flatnonzero(x.grad[0, 0].abs().sum(1).numpy() > 0)
    cols = np.flatnonzero(x.grad[0, 0].abs().sum(0).numpy() > 0)
    assert rows[-1] - rows[0] + 1 == model.receptive_field() == 73
    assert cols[-1] - cols[0] + 1 == 73


@pytest.mark.parametrize("arch", ["dwan", "unet", "dilatednet"])
def test_any_slice_size_and_cbf_scale_is_saved(arch):
    torch.manual_seed(0)
    model = build_model(arch).eval()
    x = torch.randn(2, 1, 37, 45) * 30 + 50
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert float(model.state_dict()["cbf_scale"]) == 100.0


def test_baseline_parameter_counts():
    assert _n_params(UNet()) == 466_593
    assert _n_params(DilatedNet()) == 224_513


def test_save_load_round_trip_exact(tmp_path):
    torch.manual_seed(1)
    model = DWAN(width=8, expansion=2, depth=2, global_dilations=(2, 4)).eval()
    path = tmp_path / "m.pt"
    sha = save_model(model, path, metadata={"note": "test", "epochs": 3})
    loaded, info = load_model(path)
    assert info["sha256"] == sha == file_sha256(path)
    assert info["metadata"] == {"note": "test", "epochs": 3}
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    x = torch.randn(1, 1, 20, 24) * 40
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def _small_file(tmp_path):
    model = DWAN(width=4, expansion=1, depth=1, global_dilations=(2,))
    path = tmp_path / "w.pt"
    return path, save_model(model, path)


def test_corrupted_file_refused(tmp_path):
    path, sha = _small_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ASLInputError, match="sha256 .* does not match") as err:
        load_model(path, expected_sha256=sha)
    assert str(path) in str(err.value)
    # without a known sha256, the stored weight checksum (or the reader) catches it
    with pytest.raises(ASLInputError, match="corrupted|cannot read"):
        load_model(path)


def test_truncated_and_foreign_files_refused(tmp_path):
    path, _ = _small_file(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ASLInputError, match="cannot read the model file"):
        load_model(path)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ASLInputError, match="not an asl_pipeline model file"):
        load_model(other)
    with pytest.raises(ASLInputError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_tampered_weights_refused_by_stored_checksum(tmp_path):
    path, _ = _small_file(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["stem.bias"] += 1.0
    torch.save(payload, path)
    with pytest.raises(ASLInputError, match="checksum does not match"):
        load_model(path)


def test_shipped_weights_match_manifest():
    path = default_weights_path()
    manifest = find_manifest()
    assert manifest is not None
    assets = {a["path"]: a for a in json.loads(manifest.read_text())["assets"]}
    entry = assets["asl_pipeline/data/dwan_lfn_l1.pt"]
    assert entry["sha256"] == file_sha256(path)
    assert entry["size"] == path.stat().st_size
    model, info = load_model()
    # 592,011 parameters of the 1-channel study network, plus 3 extra input channels
    # x 32 x 9 stem weights (the skip conv sees the CBF channel only)
    assert info["arch"] == "dwan" and _n_params(model) == 592_011 + 3 * 32 * 9
    assert info["config"]["channels"] == ["cbf", "noise", "gm", "wm"]
    assert info["metadata"]["command"] == entry["command"]


def test_shipped_weights_refused_when_manifest_disagrees(tmp_path, monkeypatch):
    assert default_weights_path().is_file()
    fake = tmp_path / "data_manifest.json"
    entry = {"path": "asl_pipeline/data/dwan_lfn_l1.pt", "sha256": "0" * 64}
    fake.write_text(json.dumps({"assets": [entry]}))
    monkeypatch.setenv("ASL_PIPELINE_MANIFEST", str(fake))
    with pytest.raises(ASLInputError, match="corrupted or was replaced"):
        load_model()
