"""Options of the variants whose generator may have an ImageNet-pretrained encoder
(netG unet_effnet_lite1 | unet_effnet_lite2: pix2pix, CUT/FastCUT, CycleGAN).

The encoder is frozen for `encoder_warmup_iters` training iterations, so the randomly
initialised decoder first learns to use the ImageNet features instead of wrecking them
with large early gradients; then it is fine-tuned with the learning rate multiplied by
`encoder_lr_scale`. Its batch norms keep the ImageNet statistics (`encoder_bn: frozen`)
unless `encoder_bn: train`: the batches here are one or a few crops, whose statistics
are far noisier than ImageNet's. These options do nothing for other generators.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from models.base import ModelOptions
from models.networks import PRETRAINED_GENERATORS


class PretrainedEncoderOptions(ModelOptions):
    encoder_warmup_iters: int = Field(default=500, ge=0)
    encoder_lr_scale: float = Field(default=0.1, gt=0, le=1)
    encoder_bn: Literal["frozen", "train"] = "frozen"

    @field_validator("netG")
    @classmethod
    def _pretrained_needs_lab(cls, v: str, info: ValidationInfo) -> str:
        if v in PRETRAINED_GENERATORS and info.data.get("color_space") != "lab":
            raise ValueError(f"netG {v} predicts a*b* and keeps the input's L exactly: set color_space: lab")
        return v
