"""Memory layout of a loaded model for inference: channels_last where it is faster on the CPU.

Measured by `python -m bench.inference_layout` (docs/benchmarks/inference_layout.md, 2 CPU
cores, batches of 2): the release model's EfficientNet-Lite2 U-Net runs 1.1x faster with its
weights in channels_last (NHWC), the study's unet_128 1.2x and its batch-normalised ResNet
(pix2pix) 1.13x, while its instance-normalised ResNets (CycleGAN, CUT) run 10-20% slower.
Outputs are the same to float32 rounding. Training and the evaluate stage keep PyTorch's
default layout.
"""

from __future__ import annotations

from typing import Any


def prefers_channels_last(net_g: str, norm: str, device_type: str) -> bool:
    """Whether a generator `net_g` with normalisation `norm` runs faster in channels_last."""
    return device_type == "cpu" and not (net_g.startswith("resnet_") and norm == "instance")


def use_fast_layout(model: Any) -> bool:
    """Move a loaded model's networks to channels_last when `prefers_channels_last` says so.

    Convolutions follow their weights' layout, so inputs need no conversion. Returns whether
    the layout changed."""
    import torch

    opts = model.opts
    if not prefers_channels_last(str(getattr(opts, "netG", "")), str(getattr(opts, "norm", "")),
                                 model.device.type):
        return False
    for net in model.nets.values():
        net.to(memory_format=torch.channels_last)
    return True
