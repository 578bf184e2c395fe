"""Denoising networks (methods spec, section 6) and their file format.

Torch is imported by the submodules only, so ``import asl_pipeline.models``
stays cheap; the classes load on first access.
"""

from asl_pipeline.models.io import (
    build_model,
    default_weights_path,
    file_sha256,
    load_model,
    save_model,
)

__all__ = [
    "DWAN",
    "DilatedNet",
    "UNet",
    "build_model",
    "default_weights_path",
    "file_sha256",
    "load_model",
    "save_model",
]


def __getattr__(name):
    if name == "DWAN":
        from asl_pipeline.models.dwan import DWAN

        return DWAN
    if name == "UNet":
        from asl_pipeline.models.unet import UNet

        return UNet
    if name == "DilatedNet":
        from asl_pipeline.models.dilatednet import DilatedNet

        return DilatedNet
    raise AttributeError(name)
