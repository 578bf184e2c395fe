"""2-D U-Net baseline for CBF denoising (methods spec, section 6.2).

A standard encoder-decoder (Ronneberger et al. 2015) with two conv-BN-ReLU
layers per level, max-pooling down, transposed convs up, skip
concatenations, and a residual output (the network predicts the correction
added to the input), as in the denoising U-Nets the study compares against.
Inputs of any size work: they are zero-padded to a multiple of
``2**(levels-1)`` and cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asl_pipeline.models.dwan import CBF_SCALE
from asl_pipeline.models.normalise import check_input_kind, normalise_input


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``levels`` resolution levels and ``width * 2**k`` features at level k.

    Parameters
    ----------
    in_channels
        Input channels (1: a CBF slice).
    width
        Features at the finest level.
    levels
        Resolution levels (3: two poolings).
    residual
        Add the input to the output (predict the noise correction); CBF
        inputs only, a BOLD input is not a CBF estimate to correct.
    cbf_scale
        Divisor applied to the input CBF (mL/100 g/min) inside the model.
    input_kind
        ``"cbf"`` (CBF in mL/100 g/min, divided by ``cbf_scale``) or ``"bold"``
        (a BOLD-weighted image, divided by each slice's median; methods spec,
        section 6.4). The output is CBF in mL/100 g/min either way; see
        :mod:`asl_pipeline.models.normalise`.
    """

    arch = "unet"

    def __init__(
        self,
        *,
        in_channels: int = 1,
        width: int = 32,
        levels: int = 3,
        residual: bool = True,
        cbf_scale: float = CBF_SCALE,
        input_kind: str = "cbf",
    ):
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "width": width,
            "levels": levels,
            "residual": residual,
            "cbf_scale": float(cbf_scale),
            "input_kind": check_input_kind(input_kind),
        }
        self.register_buffer("cbf_scale", torch.tensor(float(cbf_scale)))
        widths = [width * 2**k for k in range(levels)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_double_conv(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            self.up_conv.append(_double_conv(2 * w, w))
            cin = w
        self.out = nn.Conv2d(cin, 1, 1)
        self.residual = residual

    def forward(self, x, scale=None):
        """CBF (mL/100 g/min) of a batch ``(n, in_channels, h, w)`` of input slices.

        The inputs are CBF slices (mL/100 g/min) for ``input_kind="cbf"``, or
        BOLD-weighted slices (any units) for ``"bold"``, divided by ``scale``
        (one per sample; default, each slice's median non-zero voxel).
        """
        x = normalise_input(x, self.cbf_scale, self.config["input_kind"], scale)
        h, w = x.shape[-2:]
        mult = 2 ** (len(self.down) - 1)
        ph, pw = (-h) % mult, (-w) % mult
        y = F.pad(x, (0, pw, 0, ph))
        skips = []
        for k, block in enumerate(self.down):
            if k:
                y = F.max_pool2d(y, 2)
            y = block(y)
            skips.append(y)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips[:-1]), strict=True):
            y = conv(torch.cat([up(y), skip], dim=1))
        y = self.out(y)[..., :h, :w]
        if self.residual and self.config["input_kind"] == "cbf":
            y = y + x[:, :1]  # identity shortcut: a BOLD input is not a CBF estimate
        return y * self.cbf_scale
