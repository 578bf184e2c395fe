"""DilatedNet baseline (Kim et al., Radiology 2018; methods spec, section 6.2).

A local path of ``depth`` conv-BN-ReLU layers (3x3, dilation 1) runs in
parallel with a global path of as many dilated conv-BN-ReLU layers (rates 2,
4, 8, 16); their features are concatenated, a 3x3 conv maps them to one
channel, and the input is added (residual learning). Kim et al. fed ASL and
M0 images; here the input is the single CBF slice, like DWAN's, so that the
comparison isolates the architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from asl_pipeline.models.dwan import CBF_SCALE
from asl_pipeline.models.normalise import check_input_kind, normalise_input


def _conv_bn_relu(cin: int, cout: int, dilation: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class DilatedNet(nn.Module):
    """Parallel local / dilated convolution paths with a residual output.

    Parameters
    ----------
    in_channels
        Input channels (1: a CBF slice).
    width
        Features of every conv layer.
    depth
        Layers per path.
    dilations
        Rates of the global path's layers (default 2, 4, 8, 16).
    cbf_scale
        Divisor applied to the input CBF (mL/100 g/min) inside the model.
    input_kind
        ``"cbf"`` (CBF in mL/100 g/min, divided by ``cbf_scale``) or ``"bold"``
        (a BOLD-weighted image, divided by each slice's median; methods spec,
        section 6.4). The output is CBF in mL/100 g/min either way; see
        :mod:`asl_pipeline.models.normalise`. The identity shortcut (input
        added to the output) applies to CBF inputs only.
    """

    arch = "dilatednet"

    def __init__(
        self,
        *,
        in_channels: int = 1,
        width: int = 64,
        depth: int = 4,
        dilations: Sequence[int] | None = (2, 4, 8, 16),
        cbf_scale: float = CBF_SCALE,
        input_kind: str = "cbf",
    ):
        super().__init__()
        dilations = list(dilations or [2 ** (i + 1) for i in range(depth)])
        if len(dilations) != depth:
            raise ValueError("dilations needs one value per layer")
        self.config = {
            "in_channels": in_channels,
            "width": width,
            "depth": depth,
            "dilations": dilations,
            "cbf_scale": float(cbf_scale),
            "input_kind": check_input_kind(input_kind),
        }
        self.register_buffer("cbf_scale", torch.tensor(float(cbf_scale)))
        local, glob = [], []
        for k in range(depth):
            cin = in_channels if k == 0 else width
            local += _conv_bn_relu(cin, width, 1)
            glob += _conv_bn_relu(cin, width, dilations[k])
        self.local_path = nn.Sequential(*local)
        self.global_path = nn.Sequential(*glob)
        self.head = nn.Conv2d(2 * width, 1, 3, padding=1)

    def forward(self, x, scale=None):
        """CBF (mL/100 g/min) of a batch ``(n, in_channels, h, w)`` of input slices.

        The inputs are CBF slices (mL/100 g/min) for ``input_kind="cbf"``, or
        BOLD-weighted slices (any units) for ``"bold"``, divided by ``scale``
        (one per sample; default, each slice's median non-zero voxel).
        """
        x = normalise_input(x, self.cbf_scale, self.config["input_kind"], scale)
        both = torch.cat([self.local_path(x), self.global_path(x)], dim=1)
        y = self.head(both)
        if self.config["input_kind"] == "cbf":
            y = y + x[:, :1]  # identity shortcut: a BOLD input is not a CBF estimate
        return y * self.cbf_scale
