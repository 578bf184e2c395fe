"""Saving and loading denoising models, with checksums.

A model file is a ``torch.save`` dictionary of plain types and tensors (so it
loads with ``weights_only=True``)::

    {"format": "asl_pipeline.model/1", "arch": "dwan", "config": {...},
     "state_dict": {...}, "state_sha256": "...", "metadata": {...}}

Two checks guard against corrupted or swapped weights:

1. the whole file's sha256 against its entry in ``data_manifest.json``
   (required for the shipped weights; used for any file the manifest lists);
2. ``state_sha256``, a sha256 over the tensors' names, dtypes, shapes and
   bytes, written at save time and verified at load time for every file.

A failing check raises :class:`~asl_pipeline.errors.ASLInputError`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from importlib import resources
from pathlib import Path

from asl_pipeline.errors import ASLInputError

FORMAT = "asl_pipeline.model/1"

#: File name of the shipped default weights inside ``asl_pipeline.data``.
DEFAULT_WEIGHTS = "dwan_lfn_l1.pt"

#: Path of the shipped weights as listed in ``data_manifest.json``.
MANIFEST_PREFIX = "asl_pipeline/data/"


def _architectures():
    from asl_pipeline.models.dilatednet import DilatedNet
    from asl_pipeline.models.dwan import DWAN
    from asl_pipeline.models.unet import UNet

    return {"dwan": DWAN, "unet": UNet, "dilatednet": DilatedNet}


def build_model(arch: str, **config):
    """Instantiate the network ``arch`` (dwan, unet, dilatednet) with ``config``."""
    archs = _architectures()
    if arch not in archs:
        raise ValueError(f"unknown model {arch!r}; choose one of {sorted(archs)}")
    return archs[arch](**config)


def default_weights_path() -> Path:
    """Path of the shipped default DWAN weights (learning from noise, L1 loss)."""
    return Path(str(resources.files("asl_pipeline.data").joinpath(DEFAULT_WEIGHTS)))


def file_sha256(path) -> str:
    """sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fobj:
        for chunk in iter(lambda: fobj.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_sha256(state_dict) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict's tensors."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).numpy().tobytes())
    return digest.hexdigest()


#: File name of the manifest, shipped in ``asl_pipeline.data`` (a copy of the
#: repository's top-level ``data_manifest.json``).
MANIFEST = "data_manifest.json"


def find_manifest() -> Path | None:
    """``data_manifest.json``: ``$ASL_PIPELINE_MANIFEST``, else the copy shipped as package data.

    Found with :mod:`importlib.resources`, so installed wheels check the
    shipped weights as source checkouts do. ``None`` only when the package
    data is missing (a broken install).
    """
    env = os.environ.get("ASL_PIPELINE_MANIFEST")
    if env:
        return Path(env)
    candidate = Path(str(resources.files("asl_pipeline.data").joinpath(MANIFEST)))
    return candidate if candidate.is_file() else None


def manifest_entry(path, manifest=None) -> dict | None:
    """The manifest's asset entry for the shipped file ``path`` (matched by name), or None."""
    manifest = find_manifest() if manifest is None else Path(manifest)
    if manifest is None or not manifest.is_file():
        return None
    path = Path(path).resolve()
    package_data = Path(str(resources.files("asl_pipeline.data"))).resolve()
    if path.parent != package_data:
        return None
    assets = json.loads(manifest.read_text()).get("assets", [])
    for asset in assets:
        if asset.get("path") == MANIFEST_PREFIX + path.name:
            return asset
    return None


def save_model(model, path, *, metadata: dict | None = None) -> str:
    """Write ``model`` (architecture, config, weights, checksum, metadata) to ``path``.

    Returns the sha256 of the written file.
    """
    import torch

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "arch": model.arch,
        "config": dict(model.config),
        "state_dict": state,
        "state_sha256": state_sha256(state),
        "metadata": json.loads(json.dumps(metadata or {})),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return file_sha256(path)


_FIX = "re-install asl_pipeline or re-train the weights with asl-train"


def _expected_sha256(path: Path, expected_sha256, manifest) -> str | None:
    """The sha256 ``path`` must have: given, or the manifest's for shipped files."""
    if expected_sha256 is not None:
        return expected_sha256
    entry = manifest_entry(path, manifest)
    if entry is not None:
        return entry["sha256"]
    shipped = path.resolve().parent == default_weights_path().resolve().parent
    if shipped:
        raise ASLInputError(
            "shipped weights file is not listed in data_manifest.json (or the manifest is "
            "missing from the installation).",
            file=path,
            field="assets",
            fix="re-install asl_pipeline, or pass your own weights with --dwan-weights",
        )
    return None


def _check_sha256(path: Path, expected_sha256, manifest) -> str:
    if not path.is_file():
        raise ASLInputError("model weights file not found.", file=path, field="weights", fix=_FIX)
    sha = file_sha256(path)
    expected = _expected_sha256(path, expected_sha256, manifest)
    if expected is not None and sha != expected:
        raise ASLInputError(
            f"sha256 {sha} does not match the expected {expected}: the file is "
            "corrupted or was replaced.",
            file=path,
            field="sha256",
            fix=_FIX,
        )
    return sha


def _read_payload(path: Path, device) -> dict:
    """The saved dictionary, read with ``weights_only=True`` (never unpickling code)."""
    import torch

    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip/pickle
        # torch's message advises weights_only=False, i.e. running the file's
        # code: never relay it.
        raise ASLInputError(
            f"cannot read the model file ({type(exc).__name__}): it is damaged or holds "
            "more than tensors and plain values, which is never loaded.",
            file=path,
            field="weights",
            fix=_FIX,
        ) from None
    keys = {"arch", "config", "state_dict", "state_sha256"}
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or keys - set(payload):
        raise ASLInputError(
            f"not an asl_pipeline model file (expected format {FORMAT}).",
            file=path,
            field="format",
            fix="save models with asl_pipeline.models.save_model or asl-train",
        )
    return payload


def _check_state(path: Path, payload: dict) -> None:
    import torch

    state = payload["state_dict"]
    valid = isinstance(state, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    )
    if not valid or state_sha256(state) != payload["state_sha256"]:
        raise ASLInputError(
            "the weights' checksum does not match the one stored at save time: the "
            "file is corrupted.",
            file=path,
            field="state_sha256",
            fix=_FIX,
        )


def _config_error(path: Path, problem: str) -> ASLInputError:
    return ASLInputError(
        problem,
        file=path,
        field="config",
        fix="use a model file written by asl-train (or save_model) for this version",
    )


def _meta_model(path: Path, arch, config):
    """The network of ``arch``/``config`` on torch's meta device: shapes, no memory."""
    import torch

    archs = _architectures()
    if not isinstance(arch, str) or arch not in archs:
        raise _config_error(path, f"unknown architecture {arch!r}; known: {sorted(archs)}.")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise _config_error(path, f"the architecture config is not a mapping: {config!r:.80}.")
    params = set(inspect.signature(archs[arch]).parameters)
    unknown = sorted(set(config) - params)
    if unknown:
        raise _config_error(path, f"unknown {arch} parameter(s) {unknown}.")
    try:
        with torch.device("meta"):
            return build_model(arch, **config)
    except (TypeError, ValueError, RuntimeError, OverflowError, KeyError) as exc:
        problem = f"invalid {arch} config ({type(exc).__name__}: {exc})."
        raise _config_error(path, problem) from None


def _check_architecture(path: Path, payload: dict) -> None:
    """The config builds a network whose tensors have the stored names and shapes."""
    meta = _meta_model(path, payload["arch"], payload["config"])
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in payload["state_dict"].items()}
    if expected != stored:
        differ = sorted(set(expected.items()) ^ set(stored.items()))[:3]
        raise _config_error(
            path, f"the architecture config does not match the stored weights ({differ})."
        )


def _verified(path: Path, expected_sha256, manifest, device) -> tuple[str, dict]:
    """The file's sha256 and payload, after every check."""
    sha = _check_sha256(path, expected_sha256, manifest)
    payload = _read_payload(path, device)
    _check_state(path, payload)
    _check_architecture(path, payload)
    return sha, payload


def verify_weights(path=None, *, expected_sha256=None, manifest=None) -> str:
    """Check a model file as :func:`load_model` does, without building the network.

    Run at start-up, before any work. Returns the file's sha256.
    """
    path = default_weights_path() if path is None else Path(path)
    return _verified(path, expected_sha256, manifest, "cpu")[0]


def load_model(path=None, *, device="cpu", expected_sha256: str | None = None, manifest=None):
    """Load a model file written by :func:`save_model`, verifying its checksums.

    Parameters
    ----------
    path
        Model file; ``None`` for the shipped default weights.
    device
        Torch device to map the weights to.
    expected_sha256
        sha256 the file must have. When ``None``, the manifest entry is used
        for files shipped in ``asl_pipeline/data`` (required for them).
    manifest
        ``data_manifest.json`` to use instead of :func:`find_manifest`.

    Returns
    -------
    model, info
        The network in eval mode on ``device``, and a dict with ``path``,
        ``sha256``, ``arch``, ``config``, ``input_kind`` (``"cbf"`` for files
        written before BOLD inputs existed) and ``metadata``.
    """
    path = default_weights_path() if path is None else Path(path)
    sha, payload = _verified(path, expected_sha256, manifest, device)
    model = build_model(payload["arch"], **payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    info = {
        "path": str(path),
        "sha256": sha,
        "arch": payload["arch"],
        "config": payload["config"],
        "input_kind": model.config.get("input_kind", "cbf"),
        "metadata": payload.get("metadata", {}),
    }
    return model, info
