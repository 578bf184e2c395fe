"""Input normalisation inside the networks: CBF by a fixed scale, BOLD by its median.

A model's ``input_kind`` (saved in its config) says what it takes:

``"cbf"``
    CBF in mL/100 g/min, divided by the model's ``cbf_scale`` buffer (the
    behaviour of every model written before BOLD inputs existed).
``"bold"``
    A BOLD-weighted image in arbitrary units (methods spec, section 6.4: the
    label/control average of a window of pairs). Each sample (an axial slice)
    is divided by the median of its non-zero voxels, i.e. of the brain-mask
    voxels since inputs are zero outside the mask. That makes the output
    independent of the image's global intensity scale, which depends on the
    scanner, coil and gain. The output is CBF in mL/100 g/min either way.

Training on random crops passes each crop's ``scale`` (the median of its
whole slice) explicitly, so that training and whole-slice inference divide by
the same number.
"""

from __future__ import annotations

import numpy as np

#: Values of a model's ``input_kind``.
INPUT_KINDS = ("cbf", "bold")


def check_input_kind(input_kind: str) -> str:
    """``input_kind`` if it is one of :data:`INPUT_KINDS`, else ``ValueError``."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"unknown input_kind {input_kind!r}; use one of {INPUT_KINDS}")
    return input_kind


def bold_scale(image) -> float:
    """Divisor of a 2-D BOLD slice: the lower median of its non-zero voxels (1 if none).

    The lower median (the middle value, or the lower of the two middle ones)
    is what ``torch.median`` returns, so this equals the scale the model
    computes itself on a whole slice.
    """
    values = np.sort(np.asarray(image, dtype=np.float32)[np.asarray(image) != 0], axis=None)
    return float(values[(values.size - 1) // 2]) if values.size else 1.0


def normalise_input(x, cbf_scale, input_kind: str, scale=None):
    """The network's input ``x`` ``(n, c, h, w)`` divided as its ``input_kind`` asks.

    ``scale`` (BOLD only): one divisor per sample; default, the lower median
    of the sample's non-zero voxels of channel 0 (1 for an all-zero sample).
    """
    import torch

    if input_kind == "cbf":
        if scale is not None:
            raise ValueError("scale applies to BOLD inputs only (input_kind 'bold')")
        return x / cbf_scale
    if scale is None:
        scale = torch.stack(
            [
                sample[sample != 0].median() if bool((sample != 0).any()) else x.new_ones(())
                for sample in x[:, 0]
            ]
        )
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    return x / scale
