"""BicycleGAN (Zhu et al. 2017): multimodal paired translation with a latent code z.

G(A, z): BicycleGAN's U-Net (unet_256) taking an 8-d z (where_add: input | all |
middle); E: ResNet encoder of B to (mu, logvar); D (cVAE-GAN: fakes from encoded z)
and D2 (cLR-GAN: fakes from random z), each a 2-scale PatchGAN; LSGAN; losses
L1 10, KL 0.01, latent regression (z_L1) 0.5. One step updates G and E first, then
D and D2, as the reference.

Batches: the reference asserts an even batch and uses its first half with encoded z
and the second half's B only as D2's real images. Here any batch works: the first
ceil(n/2) samples are encoded (and also get a random z); the rest are D2's real
images; with a batch of 1 (the CPU preset) the single sample plays both roles.

The latent-regression term E(G(A, z_random)) -> z_random trains G only, as in the
reference (which switches E's gradients off before that backward pass).
`colourise` draws z ~ N(0, I) for every image (a random sample of the modes).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from models.base import ModelOptions
from models.gan import ColourGAN, frozen
from models.losses import GanMode
from models.networks import (
    MultiscaleDiscriminatorName,
    define_discriminator,
    define_encoder,
    define_z_generator,
    generator_option,
)
from models.networks.bicycle import Upsample, WhereAdd
from models.networks.init import InitKind
from models.networks.layers import NormKind
from models.registry import register_model


class BicycleGANOptions(ModelOptions):
    """Defaults = junyanz/BicycleGAN train options (`--model bicycle_gan`)."""

    width_fields: ClassVar[tuple[str, ...]] = ("ngf", "ndf", "nef")

    netG: Annotated[str, generator_option(("unet_256", "unet_128"))] = "unet_256"
    netD: MultiscaleDiscriminatorName = "basic_256_multi"
    netD2: MultiscaleDiscriminatorName = "basic_256_multi"
    num_Ds: int = Field(default=2, ge=1)
    netE: Literal["resnet_256", "resnet_128"] = "resnet_256"
    nef: int = Field(default=64, ge=1)
    nz: int = Field(default=8, ge=1)
    where_add: WhereAdd = "all"
    upsample: Upsample = "basic"
    norm: NormKind = "instance"
    dropout: bool = False
    init_type: InitKind = "xavier"
    gan_mode: GanMode = "lsgan"
    conditional_D: bool = False
    use_same_D: bool = False
    lambda_L1: float = Field(default=10.0, ge=0)
    lambda_GAN: float = Field(default=1.0, ge=0)
    lambda_GAN2: float = Field(default=1.0, ge=0)
    lambda_z: float = Field(default=0.5, ge=0)
    lambda_kl: float = Field(default=0.01, ge=0)


@register_model
class BicycleGANModel(ColourGAN):
    name = "bicyclegan"
    Options = BicycleGANOptions
    opts: BicycleGANOptions
    paired = True
    samples_latent = True  # z ~ N(0, I) at inference: one output among many

    def __init__(self, opts: BicycleGANOptions, device: torch.device) -> None:
        super().__init__(opts, device)
        o = opts
        out_ch = self.codec.out_channels
        self.G = self.add_net(
            "G",
            define_z_generator(
                o.netG,
                1,
                out_ch,
                o.nz,
                o.ngf,
                o.norm,
                o.dropout,
                o.init_type,
                o.init_gain,
                o.where_add,
                o.upsample,
            ),
        )
        self.E = self.add_net("E", define_encoder(o.netE, 3, o.nz, o.nef, o.norm, o.init_type, o.init_gain))
        d_in = 1 + out_ch if o.conditional_D else 3

        def discriminator(name: str) -> nn.Module:
            return define_discriminator(
                name, d_in, o.ndf, norm=o.norm, init_type=o.init_type, init_gain=o.init_gain, num_D=o.num_Ds
            )

        self.D = self.add_net("D", discriminator(o.netD))
        self.D2 = None if o.use_same_D else self.add_net("D2", discriminator(o.netD2))
        # the reference's Adam for BicycleGAN uses beta2 0.999 for every network
        self.add_optimizer("G", [self.G])
        self.add_optimizer("E", [self.E])
        self.add_optimizer("D", [self.D], role="D")
        if self.D2 is not None:
            self.add_optimizer("D2", [self.D2], role="D")
        self.per_sample_nets = self.per_sample(o.norm)

    def generate(self, a: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        self.check_size(a.shape[2], a.shape[3], self.G, [self.D])
        if z is None:
            z = torch.randn(a.shape[0], self.opts.nz, device=a.device)
        return self.codec.assemble(a, self.G(a, z))

    def _d_input(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, self.codec.chroma(b)], 1) if self.opts.conditional_D else b

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        o = self.opts
        real_a, real_b = self.encode_batch(batch)
        self.check_size(real_a.shape[2], real_a.shape[3], self.G, [self.D])
        n = real_a.shape[0]
        half = (n + 1) // 2
        a_enc, b_enc = real_a[:half], real_b[:half]
        a_rnd, b_rnd = (real_a[half:], real_b[half:]) if n > 1 else (a_enc, b_enc)
        update_g = self.updates_generator()
        codec = self.codec
        d2 = self.D2 if self.D2 is not None else self.D
        losses: dict[str, torch.Tensor | float] = {}
        with self.autocast():
            z_random = torch.randn(half, o.nz, device=self.device)
            with torch.enable_grad() if update_g else torch.no_grad():
                mu, logvar = self.E(b_enc)
                z_enc = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
                # G on (A, z_encoded) and (A, z_random): one batch with per-sample norm
                if self.per_sample_nets:
                    out = self.G(torch.cat([a_enc, a_enc]), torch.cat([z_enc, z_random]))
                    out_enc, out_rnd = out[:half], out[half:]
                else:
                    out_enc, out_rnd = self.G(a_enc, z_enc), self.G(a_enc, z_random)
                fake_enc = codec.assemble(a_enc, out_enc)
                fake_rnd = codec.assemble(a_enc, out_rnd)
            fake_data_enc, fake_data_rnd = self._d_input(a_enc, fake_enc), self._d_input(a_enc, fake_rnd)
            if update_g:
                self.zero_grad("G", "E")
                with frozen(self.D, self.D2):
                    loss_gan = (
                        self.criterion_gan(self.D(fake_data_enc), True) * o.lambda_GAN
                        if o.lambda_GAN > 0
                        else torch.zeros((), device=self.device)
                    )
                    loss_gan2 = (
                        self.criterion_gan(d2(fake_data_rnd), True) * o.lambda_GAN2
                        if o.lambda_GAN2 > 0
                        else torch.zeros((), device=self.device)
                    )
                kl = torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) * (-0.5 * o.lambda_kl)
                loss_l1 = F.l1_loss(codec.chroma(fake_enc).float(), codec.chroma(b_enc)) * o.lambda_L1
                loss_g = loss_gan + loss_gan2 + loss_l1 + kl
                if o.lambda_z > 0:
                    with frozen(self.E):  # latent regression trains G only
                        mu2, _ = self.E(fake_rnd)
                    loss_z = F.l1_loss(mu2.float(), z_random) * o.lambda_z
                    loss_g = loss_g + loss_z
                else:
                    loss_z = torch.zeros((), device=self.device)
                loss_g.backward()
                self.optimizer_step("E")
                self.optimizer_step("G")
                losses.update(G_GAN=loss_gan, G_GAN2=loss_gan2, G_L1=loss_l1, z_L1=loss_z, kl=kl)
            # discriminators: D on encoded-z fakes, D2 on random-z fakes (loss = fake + real)
            fuse = self.per_sample_nets
            total_d = torch.zeros((), device=self.device)
            self.zero_grad(*(["D", "D2"] if self.D2 is not None else ["D"]))
            if o.lambda_GAN > 0:
                real_d, fake_d, gp = self.discriminator_loss(
                    self.D, self._d_input(a_enc, b_enc), fake_data_enc, fuse=fuse
                )
                loss_d = real_d + fake_d + (gp if gp is not None else 0.0)
                total_d = total_d + loss_d
                losses["D"] = loss_d
                if gp is not None:
                    losses["D_GP"] = gp
            if o.lambda_GAN2 > 0:
                real_d2, fake_d2, gp2 = self.discriminator_loss(
                    d2, self._d_input(a_rnd, b_rnd), fake_data_rnd, fuse=fuse and a_rnd.shape[0] == half
                )
                loss_d2 = real_d2 + fake_d2 + (gp2 if gp2 is not None else 0.0)
                total_d = total_d + loss_d2
                losses["D2"] = loss_d2
                if gp2 is not None:
                    losses["D2_GP"] = gp2
        if total_d.requires_grad:
            total_d.backward()
            self.optimizer_step("D")
            if self.D2 is not None:
                self.optimizer_step("D2")
        self.iteration += 1
        return self.floats(losses)
