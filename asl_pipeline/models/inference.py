"""Applying a denoising network to CBF maps: slice-wise, brain-masked, batched.

The networks are 2-D and were trained on axial slices set to zero outside the
brain mask; :func:`denoise_volume` applies them the same way to a 3-D map, in
native or template space (the networks are fully convolutional, so any
in-plane size works).
"""

from __future__ import annotations

import numpy as np


def axial_axis(affine) -> int:
    """Voxel axis closest to the superior-inferior direction of an image's affine."""
    import nibabel as nb

    codes = nb.aff2axcodes(affine)
    return next(i for i, c in enumerate(codes) if c in ("S", "I"))


def denoise_volume(model, volume, mask, *, axis: int = 2, batch_size: int = 16, device="cpu"):
    """Denoise a 3-D CBF map slice by slice along ``axis`` (the axial one).

    The input is set to zero outside ``mask`` (as in training) and the output
    is zero outside it. Deterministic (eval mode, no randomness).
    """
    import torch

    volume = np.asarray(volume, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if volume.shape != mask.shape or volume.ndim != 3:
        raise ValueError(f"volume {volume.shape} and mask {mask.shape} must be equal 3-D shapes")
    if axis != 2:
        moved = denoise_volume(
            model,
            np.moveaxis(volume, axis, 2),
            np.moveaxis(mask, axis, 2),
            batch_size=batch_size,
            device=device,
        )
        return np.moveaxis(moved, 2, axis)
    out = np.zeros_like(volume)
    zs = [z for z in range(volume.shape[2]) if mask[:, :, z].any()]
    model.eval()
    with torch.no_grad():
        for start in range(0, len(zs), batch_size):
            chunk = zs[start : start + batch_size]
            x = np.stack([np.where(mask[:, :, z], volume[:, :, z], 0) for z in chunk])
            y = model(torch.from_numpy(x[:, None]).to(device)).cpu().numpy()[:, 0]
            for k, z in enumerate(chunk):
                out[:, :, z] = np.where(mask[:, :, z], y[k], 0)
    return out


def denoise_cbf(volume, mask, *, weights=None, affine=None, device="cpu", batch_size=16):
    """Denoise a 3-D CBF map (mL/100 g/min) with a saved model (default: shipped DWAN).

    ``affine`` (the image's voxel-to-world matrix) selects the axial axis;
    without it the third voxel axis is used. Returns the denoised map (zero
    outside ``mask``) and the model's info (path, sha256, architecture,
    training metadata) from :func:`asl_pipeline.models.load_model`.
    """
    from asl_pipeline.models.io import load_model

    model, info = load_model(weights, device=device)
    axis = 2 if affine is None else axial_axis(affine)
    out = denoise_volume(model, volume, mask, axis=axis, batch_size=batch_size, device=device)
    return out, info
