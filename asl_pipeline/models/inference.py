"""Applying a denoising network to CBF maps: slice-wise, brain-masked, batched.

The networks are 2-D and were trained on axial slices set to zero outside the
brain mask; :func:`denoise_volume` applies them the same way to a 3-D map, in
native or template space (the networks are fully convolutional, so any
in-plane size works).

A model's ``input_kind`` says what it takes: a CBF map (``"cbf"``, the
denoisers; :func:`denoise_cbf`) or a BOLD-weighted image (``"bold"``, methods
spec section 6.4; :func:`predict_cbf_from_bold`). Each function refuses the
other kind of model, so a BOLD-to-CBF network is never run as a denoiser.
"""

from __future__ import annotations

import numpy as np


def axial_axis(affine) -> int:
    """Voxel axis closest to the superior-inferior direction of an image's affine."""
    import nibabel as nb

    codes = nb.aff2axcodes(affine)
    return next(i for i, c in enumerate(codes) if c in ("S", "I"))


def denoise_volume(
    model, volume, mask, *, axis: int = 2, batch_size: int = 16, device="cpu", extra=None
):
    """Apply a network to a 3-D map slice by slice along ``axis`` (the axial one).

    The input (a CBF map, or a BOLD-weighted image for a ``"bold"`` model) is
    set to zero outside ``mask`` (as in training) and the output is zero
    outside it. A model with named ``channels``
    (:mod:`asl_pipeline.models.channels`) takes its other channels from
    ``extra`` (``{"noise": ..., "gm": ..., ...}``, 3-D maps on the same
    grid). Deterministic (eval mode, no randomness).
    """
    import torch

    from asl_pipeline.models.channels import stack_channels

    volume = np.asarray(volume, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if volume.shape != mask.shape or volume.ndim != 3:
        raise ValueError(f"volume {volume.shape} and mask {mask.shape} must be equal 3-D shapes")
    channels = getattr(model, "config", {}).get("channels") or ("cbf",)
    stack = stack_channels(channels, mask, **{**(extra or {}), "cbf": volume})
    stack = np.moveaxis(stack, axis + 1, 3)
    mask_z = np.moveaxis(mask, axis, 2)
    out = np.zeros(mask_z.shape, np.float32)
    zs = [z for z in range(mask_z.shape[2]) if mask_z[:, :, z].any()]
    model.eval()
    with torch.no_grad():
        for start in range(0, len(zs), batch_size):
            chunk = zs[start : start + batch_size]
            x = np.ascontiguousarray(np.stack([stack[:, :, :, z] for z in chunk]))
            y = model(torch.from_numpy(x).to(device)).cpu().numpy()[:, 0]
            for k, z in enumerate(chunk):
                out[:, :, z] = np.where(mask_z[:, :, z], y[k], 0)
    return np.moveaxis(out, 2, axis)


def denoise_cbf(
    volume, mask, *, weights=None, affine=None, device="cpu", batch_size=16, extra=None
):
    """Denoise a 3-D CBF map (mL/100 g/min) with a saved model (default: shipped DWAN).

    ``affine`` (the image's voxel-to-world matrix) selects the axial axis;
    without it the third voxel axis is used. Returns the denoised map (zero
    outside ``mask``) and the model's info (path, sha256, architecture,
    training metadata) from :func:`asl_pipeline.models.load_model`. ``extra``:
    the model's other input channels (see :func:`denoise_volume`).
    """
    return _apply_saved(volume, mask, weights, "cbf", affine, device, batch_size, extra)


def denoise_run(
    mean,
    mask,
    *,
    series=None,
    gm=None,
    wm=None,
    m0=None,
    weights=None,
    affine=None,
    finetune_seconds: float = 0.0,
    seed: int = 0,
    device="cpu",
    batch_size: int = 16,
    keep=None,
):
    """Denoise a run's mean CBF map with everything its model takes.

    ``mean`` is the unsmoothed (cleaned) mean of the run's pairs, ``series``
    its per-pair CBF series ``(x, y, z, n)``: the ``"noise"`` channel is
    :func:`~asl_pipeline.models.channels.noise_sd_map` of the series for the
    mean of its ``n`` pairs. ``gm``/``wm``/``m0`` fill the channels of the same
    names. ``finetune_seconds > 0`` first fine-tunes the model on the run's
    own pairs (:func:`asl_pipeline.lfn.finetune`, subject-level learning from
    noise). ``keep``, the ``(z, n)`` complement of the cleaning's outlier
    matrix (slices along the array's third axis, as the cleaning reads them),
    makes both use only the pairs that ``mean`` averages: the noise channel is
    that of the mean of each slice's kept pairs, and the removed pairs are
    left out of the fine-tuning. Returns the denoised map, the model's info
    and the fine-tuning record (None without fine-tuning).
    """
    from asl_pipeline.errors import ASLInputError
    from asl_pipeline.models.channels import noise_sd_map
    from asl_pipeline.models.io import load_model

    model, info = load_model(weights, device=device)
    require_input_kind(info, "cbf")
    channels = model.config.get("channels") or ("cbf",)
    mask = np.asarray(mask, bool)
    needs_series = "noise" in channels or finetune_seconds > 0
    if needs_series and (series is None or np.ndim(series) != 4 or np.shape(series)[3] < 2):
        raise ASLInputError(
            "this denoising model needs the run's per-pair CBF series (at least 2 pairs) "
            "to estimate the noise level of the mean map"
            + (" and to fine-tune on" if finetune_seconds > 0 else "")
            + ".",
            file=info["path"],
            field="channels",
            fix="pass the per-pair series (DWANDenoise.cbf_ts), or use weights without a "
            "noise channel",
        )
    extra = {"gm": gm, "wm": wm, "m0": m0}
    if keep is not None and np.ndim(series) == 4:
        from asl_pipeline.outliers import check_outlier_matrix

        keep = np.asarray(keep, bool)
        check_outlier_matrix(keep, (np.shape(mask)[2], np.shape(series)[3]))
    if series is not None and np.ndim(series) == 4:
        series = np.nan_to_num(np.asarray(series, np.float32))
        extra["noise"] = noise_sd_map(series, mask, keep=keep)
    axis = 2 if affine is None else axial_axis(affine)
    fit = None
    if finetune_seconds > 0:
        from asl_pipeline import lfn

        maps = {
            k: None if v is None else np.moveaxis(np.asarray(v), axis, 2)
            for k, v in extra.items()
            if k != "noise"
        }
        fit = lfn.finetune(
            model,
            np.moveaxis(series, axis, 2),
            np.moveaxis(mask, axis, 2),
            maps,
            seconds=finetune_seconds,
            seed=seed,
            device=device,
            keep=lfn.axial_keep(keep, axis, np.shape(mask)[axis]),
        )
    out = denoise_volume(
        model, mean, mask, axis=axis, batch_size=batch_size, device=device, extra=extra
    )
    return out, info, fit


def _apply_saved(volume, mask, weights, input_kind, affine, device, batch_size, extra=None):
    """Load ``weights``, check they take ``input_kind``, apply them along the axial axis."""
    from asl_pipeline.models.io import load_model

    model, info = load_model(weights, device=device)
    require_input_kind(info, input_kind)
    axis = 2 if affine is None else axial_axis(affine)
    out = denoise_volume(
        model, volume, mask, axis=axis, batch_size=batch_size, device=device, extra=extra
    )
    return out, info


def require_input_kind(info: dict, expected: str) -> None:
    """Raise :class:`ASLInputError` naming the weights file unless the model takes ``expected``.

    ``info`` is the second value returned by :func:`asl_pipeline.models.load_model`.
    """
    from asl_pipeline.errors import ASLInputError

    kind = info["input_kind"]
    if kind == expected:
        return
    if kind == "bold":
        problem = (
            "this model predicts CBF from a BOLD-weighted image (input_kind 'bold'); "
            "it is not a CBF denoiser."
        )
        fix = (
            "apply it with asl_pipeline.models.inference.predict_cbf_from_bold or the "
            "BOLDToCBF interface, or pass CBF-input weights (asl-train --input cbf)"
        )
    else:
        problem = f"this model takes a CBF map (input_kind {kind!r}), not a BOLD-weighted image."
        fix = (
            "pass weights trained with asl-train --input bold, or denoise CBF maps with "
            "asl_pipeline.models.inference.denoise_cbf or DWANDenoise"
        )
    raise ASLInputError(problem, file=info["path"], field="input_kind", fix=fix)


def predict_cbf_from_bold(bold_volume, mask, *, weights, affine=None, device="cpu", batch_size=16):
    """CBF (mL/100 g/min) predicted from a 3-D BOLD-weighted image (methods spec 6.4).

    Parameters
    ----------
    bold_volume
        The label/control average of a window of pairs (or a mean BOLD
        image), any units: the model divides each axial slice by its median
        in-mask value, so the global intensity scale does not matter.
    mask
        Brain mask; the input is zeroed outside it and the output is zero there.
    weights
        A model file written by ``asl-train --input bold`` (none is shipped).
    affine
        The image's voxel-to-world matrix, to find the axial axis (default:
        the third voxel axis).

    Returns the predicted CBF map and the model's info (path, sha256,
    architecture, input kind, training metadata). A CBF-input model is
    refused with :class:`~asl_pipeline.errors.ASLInputError`.
    """
    return _apply_saved(bold_volume, mask, weights, "bold", affine, device, batch_size)
