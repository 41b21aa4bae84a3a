"""Inference memory layout (pipeline/inference/layout.py): which models switch, and that the
colours do not change when they do."""

from __future__ import annotations

import pytest
import torch

from models.registry import get_model_class
from pipeline.inference.layout import prefers_channels_last, use_fast_layout


@pytest.mark.parametrize(("net_g", "norm", "device", "expected"), [
    ("unet_128", "batch", "cpu", True),
    ("unet_effnet_lite2", "instance", "cpu", True),   # the release model: its encoder dominates
    ("resnet_9blocks", "batch", "cpu", True),         # pix2pix's ResNet
    ("resnet_9blocks", "instance", "cpu", False),     # CycleGAN, CUT: slower in channels_last
    ("unet_128", "batch", "cuda", False),             # measured on the CPU only
])
def test_which_generators_switch(net_g: str, norm: str, device: str, expected: bool) -> None:
    assert prefers_channels_last(net_g, norm, device) is expected


@pytest.mark.parametrize(("name", "options", "switches"), [
    ("pix2pix", {"netG": "unet_128", "ngf": 4, "ndf": 4}, True),
    ("cyclegan", {"netG": "resnet_6blocks", "ngf": 4, "ndf": 4}, False),
])
def test_layout_keeps_the_colours(name: str, options: dict[str, object], switches: bool) -> None:
    cls = get_model_class(name)
    torch.manual_seed(0)
    model = cls(cls.Options(**options), torch.device("cpu"))
    model.eval()
    gray = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(1))
    before = model.colourise(gray)
    assert use_fast_layout(model) is switches
    generator = next(iter(model.nets.values()))  # G or G_A: the first network is the generator
    # (a one-channel, 1x1 or single-output weight is both layouts at once: look further in)
    conv = next(m for m in generator.modules() if isinstance(m, torch.nn.Conv2d)
                and m.in_channels > 1 and m.out_channels > 1 and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is switches
    after = model.colourise(gray)
    assert after.shape == before.shape
    assert torch.allclose(after, before, atol=1e-5)
