"""pix2pix (Isola et al. 2017): conditional GAN with an L1 term, paired data.

G: U-Net (unet_256) with batch norm and dropout; D: PatchGAN on cat(input, output);
vanilla GAN loss; loss = GAN + 100 * L1. Colour: RGB mode maps gray (1 channel) to
RGB; Lab mode maps L to a*b* and keeps the input's L (the reference colorization
mode), and D sees cat(L, a*b*).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from models.gan import ColourGAN, frozen
from models.losses import GanMode
from models.networks import PatchDiscriminatorName, define_discriminator, define_generator, generator_option
from models.networks.layers import NormKind
from models.pretrained import PretrainedEncoderOptions
from models.registry import register_model


class Pix2PixOptions(PretrainedEncoderOptions):
    """Defaults = pytorch-CycleGAN-and-pix2pix `--model pix2pix`; netG may also be a
    pretrained-encoder U-Net (models.pretrained)."""

    netG: Annotated[str, generator_option()] = "unet_256"
    netD: PatchDiscriminatorName = "basic"
    norm: NormKind = "batch"
    dropout: bool = True
    gan_mode: GanMode = "vanilla"
    lambda_L1: float = Field(default=100.0, ge=0)


@register_model
class Pix2PixModel(ColourGAN):
    name = "pix2pix"
    Options = Pix2PixOptions
    opts: Pix2PixOptions
    paired = True

    def __init__(self, opts: Pix2PixOptions, device: torch.device) -> None:
        super().__init__(opts, device)
        o = opts
        out_ch = self.codec.out_channels
        self.G = self.add_net(
            "G",
            define_generator(o.netG, 1, out_ch, o.ngf, o.norm, o.dropout, o.init_type, o.init_gain,
                             input_space=o.color_space),
        )
        self.D = self.add_net(
            "D",
            define_discriminator(o.netD, 1 + out_ch, o.ndf, o.n_layers_D, o.norm, o.init_type, o.init_gain),
        )
        self.add_optimizer("G", [self.G])
        self.add_optimizer("D", [self.D])
        self.fuse_d = self.per_sample(o.norm)
        self.configure_encoders()

    def generate(self, a: torch.Tensor) -> torch.Tensor:
        self.check_size(a.shape[2], a.shape[3], self.G, [self.D])
        return self.codec.assemble(a, self.G(a))

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        o = self.opts
        self.schedule_encoders()
        real_a, real_b = self.encode_batch(batch)
        self.check_size(real_a.shape[2], real_a.shape[3], self.G, [self.D])
        update_g = self.updates_generator()
        target = self.codec.chroma(real_b)
        with self.autocast():
            if update_g:
                fake = self.G(real_a)  # a*b* in Lab mode, RGB otherwise
            else:
                with torch.no_grad():
                    fake = self.G(real_a)
            # D: conditional on the input, fake (detached) then real as the reference
            self.zero_grad("D")
            loss_real, loss_fake, gp = self.discriminator_loss(
                self.D, torch.cat([real_a, target], 1), torch.cat([real_a, fake], 1), fuse=self.fuse_d
            )
            loss_d = 0.5 * (loss_fake + loss_real) + (gp if gp is not None else 0.0)
        loss_d.backward()
        self.optimizer_step("D")
        losses: dict[str, torch.Tensor | float] = {"D_real": loss_real, "D_fake": loss_fake}
        if gp is not None:
            losses["D_GP"] = gp
        if update_g:
            self.zero_grad("G")
            with frozen(self.D), self.autocast():
                loss_gan = self.criterion_gan(self.D(torch.cat([real_a, fake], 1)), True)
                loss_l1 = F.l1_loss(fake.float(), target) * o.lambda_L1
                loss_g = loss_gan + loss_l1
            loss_g.backward()
            self.optimizer_step("G")
            losses.update(G_GAN=loss_gan, G_L1=loss_l1)
        self.iteration += 1
        return self.floats(losses)
