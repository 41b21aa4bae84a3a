"""Building blocks shared by the generators and discriminators.

Normalisation follows the reference implementations: batch norm has learnable affine
parameters and running statistics; instance norm has neither; convolutions carry a
bias only when followed by instance norm (batch norm's shift makes a bias redundant;
the references also leave it out with `norm: none`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

NormKind = Literal["batch", "instance", "none"]


def norm_layer(kind: NormKind, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}' (known: batch, instance, none)")


def conv_bias(kind: NormKind) -> bool:
    """Whether a convolution followed by this norm carries a bias (reference rule)."""
    return kind == "instance"


def is_per_sample(kind: NormKind) -> bool:
    """True when a network's output for one image does not depend on the others in the
    batch (no batch statistics), so real and fake images may share one forward pass."""
    return kind in ("instance", "none")


class BlurDownsample(nn.Module):
    """Anti-aliased 2x downsampling (CUT): reflect-pad by 1, blur with the binomial
    filter [1, 2, 1] x [1, 2, 1] / 16, keep every second pixel.

    Written as two separable strided sums rather than a depthwise convolution; the
    result is the same filter.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels  # for printing; the filter is fixed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        x = 0.25 * (x[..., 0:-2:2] + x[..., 2::2]) + 0.5 * x[..., 1:-1:2]
        return 0.25 * (x[..., 0:-2:2, :] + x[..., 2::2, :]) + 0.5 * x[..., 1:-1:2, :]

    def extra_repr(self) -> str:
        return f"{self.channels}, filter=[1,2,1]/4 separable, stride=2, pad=reflect"


class BlurUpsample(nn.Module):
    """Anti-aliased 2x upsampling (CUT): the transposed binomial filter [1, 3, 3, 1]
    with replicated edges. That filter is exactly bilinear interpolation with
    align_corners=False, which torch implements directly."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"{self.channels}, filter=[1,3,3,1]/4 (bilinear), stride=2"
