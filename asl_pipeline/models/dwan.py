"""DWAN: Dilated Wide Activation Network for ASL CBF denoising.

Methods spec, section 6.1 (the source study, chapters 3-4). A 2-D network:
one axial CBF slice in, one denoised slice out.

Architecture with the default parameters (the text of the study)::

    x -> conv3x3(1->32) -> local path:  4 WA blocks, dilation 1           -+
                       -> global path: 4 WA blocks, dilations 2, 4, 8, 16 -+-> concat (64)
    concat -> conv3x3(64->1) (head)  +  conv3x3(1->1) of x (skip)  =  y

A wide-activation (WA) block is ``conv3x3(32->128, dilation d), ReLU,
conv3x3(128->32)`` added to the block's input. That makes 592,011
parameters ("about 0.59 M") and a receptive field of 73 x 73 pixels.

The authors' released Keras code differs from their text (1x1 head and skip,
two stems, depth 3, every global block dilated 8); every such choice is a
parameter here, the defaults follow the text.

Intensity normalisation is part of the model: ``forward`` takes CBF in
mL/100 g/min, divides it by the ``cbf_scale`` buffer (saved with the weights)
and multiplies the output back, so callers never have to remember it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from asl_pipeline.models.channels import check_channels, normalise_channels
from asl_pipeline.models.normalise import check_input_kind, normalise_input

#: Default CBF scale (mL/100 g/min) by which inputs are divided inside the model.
CBF_SCALE = 100.0


class WideActivationBlock(nn.Module):
    """``x + conv(relu(conv_dilated(x)))`` with an expanded middle layer."""

    def __init__(self, width: int, expansion: int, dilation: int = 1):
        super().__init__()
        wide = width * expansion
        self.expand = nn.Conv2d(width, wide, 3, padding=dilation, dilation=dilation)
        self.act = nn.ReLU(inplace=True)
        self.reduce = nn.Conv2d(wide, width, 3, padding=1)

    def forward(self, x):
        return x + self.reduce(self.act(self.expand(x)))


class DWAN(nn.Module):
    """Dilated Wide Activation Network (2-D).

    Parameters
    ----------
    in_channels
        Input channels (1: a CBF slice).
    width
        Features of the stem and of every block's input/output (study: 32).
    expansion
        Factor of the wide activation inside a block (study: 4, i.e. 128).
    depth
        Blocks per pathway (study: 4).
    local_dilations
        Dilation of the first conv of each local-pathway block (default all 1).
    global_dilations
        Dilation of the first conv of each global-pathway block
        (study: 2, 4, 8, 16; the released code: 8, 8, 8).
    head_kernel
        Kernel of the head conv (64 -> 1) and of the input skip conv
        (study text: 3; released code: 1).
    stem_kernel
        Kernel of the stem conv.
    cbf_scale
        Divisor applied to the input CBF (mL/100 g/min) inside the model.
    channels
        Names of the input channels (:mod:`asl_pipeline.models.channels`),
        e.g. ``("cbf", "noise", "gm", "wm")``; the input skip conv then sees
        the CBF channel only. ``None``: ``in_channels`` unnamed channels and a
        skip over all of them (models written before channels existed).
    scale_by_noise
        Divide the CBF and noise channels of each slice by its noise level
        (the ``"noise"`` channel) instead of ``cbf_scale``, and multiply the
        output back: the network sees signal-to-noise units and is
        positively homogeneous, ``f(a x, a sigma) = a f(x, sigma)``, so a
        scanner, calibration or perfusion level outside the training data
        scales the output instead of being pulled to familiar values.
    input_kind
        ``"cbf"`` (CBF in mL/100 g/min, divided by ``cbf_scale``) or ``"bold"``
        (a BOLD-weighted image, divided by each slice's median; methods spec,
        section 6.4). The output is CBF in mL/100 g/min either way; see
        :mod:`asl_pipeline.models.normalise`.
    """

    arch = "dwan"

    def __init__(
        self,
        *,
        in_channels: int = 1,
        width: int = 32,
        expansion: int = 4,
        depth: int = 4,
        local_dilations: Sequence[int] | None = None,
        global_dilations: Sequence[int] | None = (2, 4, 8, 16),
        head_kernel: int = 3,
        stem_kernel: int = 3,
        cbf_scale: float = CBF_SCALE,
        input_kind: str = "cbf",
        channels: Sequence[str] | None = None,
        scale_by_noise: bool = False,
    ):
        super().__init__()
        if channels is not None:
            channels = list(check_channels(channels))
            if input_kind != "cbf":
                raise ValueError("named channels apply to CBF denoisers (input_kind 'cbf')")
            in_channels = len(channels)
        local_dilations = list(local_dilations or [1] * depth)
        global_dilations = list(global_dilations or [2 ** (i + 1) for i in range(depth)])
        if len(local_dilations) != depth or len(global_dilations) != depth:
            raise ValueError("local_dilations and global_dilations need one value per block")
        self.config = {
            "in_channels": in_channels,
            "width": width,
            "expansion": expansion,
            "depth": depth,
            "local_dilations": local_dilations,
            "global_dilations": global_dilations,
            "head_kernel": head_kernel,
            "stem_kernel": stem_kernel,
            "cbf_scale": float(cbf_scale),
            "input_kind": check_input_kind(input_kind),
        }
        if channels is not None:
            self.config["channels"] = channels
        if scale_by_noise:
            if channels is None or "noise" not in channels:
                raise ValueError("scale_by_noise needs a 'noise' input channel")
            self.config["scale_by_noise"] = True
        self.register_buffer("cbf_scale", torch.tensor(float(cbf_scale)))
        self.stem = nn.Conv2d(in_channels, width, stem_kernel, padding=stem_kernel // 2)
        self.local_path = nn.Sequential(
            *[WideActivationBlock(width, expansion, d) for d in local_dilations]
        )
        self.global_path = nn.Sequential(
            *[WideActivationBlock(width, expansion, d) for d in global_dilations]
        )
        self.head = nn.Conv2d(2 * width, 1, head_kernel, padding=head_kernel // 2)
        skip_in = 1 if channels is not None else in_channels
        self.skip = nn.Conv2d(skip_in, 1, head_kernel, padding=head_kernel // 2)

    def forward(self, x, scale=None):
        """CBF (mL/100 g/min) of a batch ``(n, in_channels, h, w)`` of input slices.

        The inputs are CBF slices (mL/100 g/min) for ``input_kind="cbf"``, or
        BOLD-weighted slices (any units) for ``"bold"``, divided by ``scale``
        (one per sample; default, each slice's median non-zero voxel).
        """
        channels = self.config.get("channels")
        unit = self.cbf_scale
        if channels is None:
            x = normalise_input(x, self.cbf_scale, self.config["input_kind"], scale)
            skip_in = x
        else:
            if self.config.get("scale_by_noise"):
                noise = x[:, channels.index("noise")].flatten(1).amax(dim=1)
                unit = noise.clamp(min=1e-3).reshape(-1, 1, 1, 1)
            x = normalise_channels(x, channels, unit)
            skip_in = x[:, :1]
        feat = self.stem(x)
        both = torch.cat([self.local_path(feat), self.global_path(feat)], dim=1)
        return (self.head(both) + self.skip(skip_in)) * unit

    def receptive_field(self) -> int:
        """Side, in pixels, of the square receptive field of one output pixel."""
        cfg = self.config
        radius_stem = cfg["stem_kernel"] // 2
        local = sum(d + 1 for d in cfg["local_dilations"])
        glob = sum(d + 1 for d in cfg["global_dilations"])
        radius = radius_stem + max(local, glob) + cfg["head_kernel"] // 2
        return 2 * max(radius, cfg["head_kernel"] // 2) + 1
