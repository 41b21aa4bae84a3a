"""Numeric precision of a run: float32, or bf16 autocast with channels_last on CUDA GPUs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from models.base import GANModel
from pipeline.training.devices import uses_bf16


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when enabled (CUDA only, see devices.uses_bf16); otherwise nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class Precision:
    """How batches and steps run. `bf16`: bf16 is used at all; `wrap`: the trainer wraps
    the model's whole train_step (and colourise) in autocast, because the model does not
    autocast its own forward passes."""

    device: torch.device
    bf16: bool = False
    wrap: bool = False

    @classmethod
    def configure(cls, model: GANModel, device: torch.device, enabled: bool) -> Precision:
        """Choose the precision and prepare `model` for it."""
        bf16 = uses_bf16(device, enabled)
        if not bf16:
            return cls(device)
        # channels_last lets cuDNN use tensor-core kernels for bf16 convolutions.
        for net in model.nets.values():
            net.to(memory_format=torch.channels_last)
        # Variants built on models.gan.ColourGAN autocast their forward passes themselves
        # (`autocast_dtype`), keeping backward and optimizer steps in float32; any other
        # GANModel gets its whole train_step (and colourise) wrapped by the trainer.
        if hasattr(model, "autocast_dtype"):
            model.autocast_dtype = torch.bfloat16
            return cls(device, bf16=True, wrap=False)
        return cls(device, bf16=True, wrap=True)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.bf16:
            out = {k: v.contiguous(memory_format=torch.channels_last) for k, v in out.items()}
        return out

    def step_context(self) -> contextlib.AbstractContextManager[Any]:
        """Around a train_step: a wrapped one runs forward, backward and the optimizer steps
        under autocast (the contract keeps them in one call); bf16 needs no loss scaling."""
        return autocast(self.device, self.wrap)
