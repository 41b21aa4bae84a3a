"""Memory layout of a loaded model for inference: channels_last where it is faster on the CPU.

Measured by `python -m bench.inference_layout` (docs/benchmarks/inference_layout.md, 2 CPU
cores, batches of 2): the release model's EfficientNet-Lite2 U-Net runs 1.1x faster with its
weights in channels_last (NHWC), the study's unet_128 1.2x and its batch-normalised ResNet
(pix2pix) 1.13x, while its instance-normalised ResNets (CycleGAN, CUT) run 10-20% slower.
Outputs are the same to float32 rounding. Training and the evaluate stage keep PyTorch's
default layout.

The web app may also run the model in bfloat16 where the CPU does that faster
(`bf16_speedup`, measured as it starts; docs/benchmarks/app.md): colours within a few levels
of float32's. The colourise and evaluate stages always run float32, so their outputs do not
depend on the machine's instruction set.
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


BF16_MIN_SPEEDUP = 1.2  # below this, bfloat16's rounding is not worth it
PRECISIONS = ("auto", "fp32", "bf16")  # what the web app's passes may run in (app.precision)


def colourise_windows(model: Any, gray: Any, *, bf16: bool = False) -> Any:
    """(N, 1, H, W) float gray in [0, 1] -> (N, H, W, 3) uint8 RGB on the CPU; `bf16`: the
    convolutions in bfloat16 (autocast), the rest in float32."""
    import torch

    with torch.inference_mode():
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            rgb = model.colourise(gray.to(model.device)).float()
        return rgb.clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def bf16_speedup(model: Any, window: int, *, threads: int | None = None, rounds: int = 2) -> float:
    """How much faster one window runs in bfloat16 than in float32 on this machine, with
    `threads` torch threads (None: as set); best of `rounds` each, after one pass of each for
    set-up. CPUs with bfloat16 instructions (AVX-512 BF16, AMX) run the release model 1.4-1.8x
    faster; others emulate it and run slower."""
    import time

    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        x = torch.zeros(1, 1, window, window)
        best = {False: float("inf"), True: float("inf")}
        for bf16 in (False, True):
            colourise_windows(model, x, bf16=bf16)
        for _ in range(rounds):
            for bf16 in (False, True):
                start = time.perf_counter()
                colourise_windows(model, x, bf16=bf16)
                best[bf16] = min(best[bf16], time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return best[False] / best[True]
