"""TEMPLATE for a new GAN variant: copy this file to add a model. It is not a model of
the study: modules of models/variants/ whose name starts with an underscore are not
discovered (models.registry), so `template` is never registered unless this module is
imported explicitly (as tests/test_template_variant.py does to check that it works).

To add a model:

1. Copy this file to `models/variants/<your_model>.py` (no leading underscore) and set
   `name` below: that is what an ablation's `model:` key names in params.yaml. The
   registry imports every module of this folder and `@register_model` makes the class
   known by `name` (two classes under one name are an error).
2. Options. Subclass `ModelOptions` (models/base.py) and give every field the reference
   implementation's default. What the registry validates, once, when params.yaml is
   loaded (`resolve_options`, errors name the params.yaml key and suggest close names):
   - unknown keys are errors (`extra="forbid"`); options are frozen after validation;
   - types and `Literal[...]` choices (e.g. `norm`, `gan_mode`), bounds given with
     `Field(ge=..., gt=...)`;
   - your own `field_validator`s, e.g. `known_generator` for `netG` below;
   - `width_fields`: the channel-width options that a training preset's `width_scale`
     multiplies (`ngf`, `ndf`; add yours, like BicycleGAN's `nef`);
   - a default `netG: unet_256` is replaced by the preset's U-Net (`unet_128` for
     128-pixel crops).
   Options are merged as reference defaults < preset < `train.defaults` < the ablation's
   keys, and options.json records which of them set each value.
3. The model. Subclass `ColourGAN` (models/gan.py), which handles the colour space
   (`self.codec`: RGB, or Lab with the input's L kept), the GAN criterion, Adam
   optimizers and the `n_critic` schedule. Define:
   - `__init__`: networks through `add_net` (named; they are checkpointed by name),
     optimizers through `add_optimizer` (built on first use, so inference never
     builds one);
   - `generate(a)`: domain A -> domain B, for inference (`colourise`);
   - `train_step(batch)`: one iteration; update through `optimizer_step(name)` (it
     averages gradients across processes under torchrun), run forward passes inside
     `self.autocast()` (bf16 on GPUs), freeze networks that a step does not update with
     `frozen(...)`, count `self.iteration`, and return `self.floats(losses)`;
   - `extra_state` / `load_extra_state` for anything else an exact resume needs (image
     pools, counters), as tensors and plain data.
   Set `paired = False` for unpaired data (A and B drawn independently).
4. Add its options to docs/model-defaults.md, its reference defaults to
   tests/test_variants.py (REFERENCE_DEFAULTS, TINY) and an ablation to params.yaml.

The model below is a small, complete example: a paired colouriser trained with a
least-squares GAN loss plus an L1 term (pix2pix's objective with LSGAN and a ResNet
generator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from models.base import ModelOptions
from models.gan import ColourGAN, frozen
from models.losses import GanMode
from models.networks import define_discriminator, define_generator, known_generator
from models.networks.layers import NormKind
from models.registry import register_model


class TemplateOptions(ModelOptions):
    """Defaults of the (here: imagined) reference implementation."""

    netG: str = "resnet_6blocks"
    norm: NormKind = "instance"
    dropout: bool = False
    gan_mode: GanMode = "lsgan"
    lambda_L1: float = Field(default=10.0, ge=0)  # weight of the L1 term against the GAN term

    @field_validator("netG")
    @classmethod
    def _known_netG(cls, v: str) -> str:
        return known_generator(v)


@register_model
class TemplateModel(ColourGAN):
    name = "template"  # the params.yaml name; change it in your copy
    Options = TemplateOptions
    paired = True

    def __init__(self, opts: TemplateOptions, device: torch.device) -> None:
        super().__init__(opts, device)
        o = opts
        out_ch = self.codec.out_channels  # 3 (RGB) or 2 (a*b* in Lab mode)
        self.G = self.add_net(
            "G", define_generator(o.netG, 1, out_ch, o.ngf, o.norm, o.dropout, o.init_type, o.init_gain))
        self.D = self.add_net(
            "D", define_discriminator(o.netD, 1 + out_ch, o.ndf, o.n_layers_D, o.norm, o.init_type,
                                      o.init_gain))
        self.add_optimizer("G", [self.G])
        self.add_optimizer("D", [self.D])
        self.lambda_l1 = o.lambda_L1  # `self.opts` is typed as the base class

    def generate(self, a: torch.Tensor) -> torch.Tensor:
        self.check_size(a.shape[2], a.shape[3], self.G, [self.D])
        return self.codec.assemble(a, self.G(a))  # Lab: puts the input's L back

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        real_a, real_b = self.encode_batch(batch)  # model domains, on the model's device
        self.check_size(real_a.shape[2], real_a.shape[3], self.G, [self.D])
        target = self.codec.chroma(real_b)
        update_g = self.updates_generator()
        with self.autocast():
            fake = self.G(real_a)
            self.zero_grad("D")
            loss_real, loss_fake, gp = self.discriminator_loss(
                self.D, torch.cat([real_a, target], 1), torch.cat([real_a, fake], 1),
                fuse=self.per_sample(self.opts.norm))
            loss_d = 0.5 * (loss_real + loss_fake) + (gp if gp is not None else 0.0)
        loss_d.backward()
        self.optimizer_step("D")
        losses: dict[str, torch.Tensor | float] = {"D_real": loss_real, "D_fake": loss_fake}
        if update_g:
            self.zero_grad("G")
            with frozen(self.D), self.autocast():
                loss_gan = self.criterion_gan(self.D(torch.cat([real_a, fake], 1)), True)
                loss_l1 = F.l1_loss(fake.float(), target) * self.lambda_l1
            (loss_gan + loss_l1).backward()
            self.optimizer_step("G")
            losses.update(G_GAN=loss_gan, G_L1=loss_l1)
        self.iteration += 1
        return self.floats(losses)
