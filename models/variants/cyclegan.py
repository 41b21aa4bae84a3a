"""CycleGAN (Zhu et al. 2017): two generators and two discriminators, unpaired data.

G_A: A -> B (gray or L -> colour), G_B: B -> A; D_A judges B images, D_B judges A
images; LSGAN; cycle losses weighted 10/10; identity loss 0.5; image pools of 50.

The domains have different channel counts (1 vs 3), so the identity terms feed each
generator the other domain's image projected into its input domain: G_A gets B's
luma (or L) and should give back B; G_B gets A shown as colour (gray in R=G=B, or
L with zero a*b*) and should give back A. The reference needs equal channel counts
for its identity loss and cannot do this. In Lab mode G_A predicts a*b* and keeps
its input's L.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from models.gan import ColourGAN, frozen
from models.image_pool import ImagePool
from models.losses import GanMode
from models.networks import PatchDiscriminatorName, define_discriminator, define_generator, generator_option
from models.networks.layers import NormKind
from models.pretrained import PretrainedEncoderOptions
from models.registry import register_model


class CycleGANOptions(PretrainedEncoderOptions):
    """Defaults = pytorch-CycleGAN-and-pix2pix `--model cycle_gan`; netG may also be a
    pretrained-encoder U-Net (both G_A and G_B then have one)."""

    netG: Annotated[str, generator_option()] = "resnet_9blocks"
    netD: PatchDiscriminatorName = "basic"
    norm: NormKind = "instance"
    dropout: bool = False
    gan_mode: GanMode = "lsgan"
    lambda_A: float = Field(default=10.0, ge=0)  # cycle A -> B -> A
    lambda_B: float = Field(default=10.0, ge=0)  # cycle B -> A -> B
    lambda_identity: float = Field(default=0.5, ge=0)  # identity weight, relative to lambda_A/B
    pool_size: int = Field(default=50, ge=0)


@register_model
class CycleGANModel(ColourGAN):
    name = "cyclegan"
    colourising_net = "G_A"
    Options = CycleGANOptions
    opts: CycleGANOptions
    paired = False

    def __init__(self, opts: CycleGANOptions, device: torch.device) -> None:
        super().__init__(opts, device)
        o = opts

        def generator(in_channels: int, out_channels: int) -> nn.Module:
            return define_generator(
                o.netG, in_channels, out_channels, o.ngf, o.norm, o.dropout, o.init_type, o.init_gain,
                input_space=o.color_space,
            )

        def discriminator(in_channels: int) -> nn.Module:
            return define_discriminator(
                o.netD, in_channels, o.ndf, o.n_layers_D, o.norm, o.init_type, o.init_gain
            )

        self.G_A = self.add_net("G_A", generator(1, self.codec.out_channels))
        self.G_B = self.add_net("G_B", generator(3, 1))
        self.D_A = self.add_net("D_A", discriminator(3))
        self.D_B = self.add_net("D_B", discriminator(1))
        self.add_optimizer("G", [self.G_A, self.G_B])
        self.add_optimizer("D", [self.D_A, self.D_B])
        self.pool_A = ImagePool(o.pool_size)  # fake A images for D_B
        self.pool_B = ImagePool(o.pool_size)  # fake B images for D_A
        self.fuse = self.per_sample(o.norm)
        # A pretrained encoder's batch norms in training mode would mix a fused batch.
        self.fuse_g = self.fuse and o.encoder_bn == "frozen"
        self.configure_encoders()

    def _g_a(self, a: torch.Tensor) -> torch.Tensor:
        return self.codec.assemble(a, self.G_A(a))

    def generate(self, a: torch.Tensor) -> torch.Tensor:
        self.check_size(a.shape[2], a.shape[3], self.G_A, [self.D_A])
        return self._g_a(a)

    def _pair(
        self, net: nn.Module, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """net(x), net(y): one batch when normalisation is per-sample, else two passes."""
        if y is None:
            return net(x), None
        if self.fuse_g:
            out = net(torch.cat([x, y]))
            return out[: x.shape[0]], out[x.shape[0] :]
        return net(x), net(y)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        o = self.opts
        self.schedule_encoders()
        real_a, real_b = self.encode_batch(batch)
        self.check_size(real_a.shape[2], real_a.shape[3], self.G_A, [self.D_A, self.D_B])
        codec = self.codec
        losses: dict[str, torch.Tensor | float] = {}
        with self.autocast():
            if self.updates_generator():
                identity = o.lambda_identity > 0
                # G_A on A (and on B's luma for the identity term); G_B likewise
                out_a, out_idt_a = self._pair(
                    self.G_A, real_a, codec.colour_as_gray(real_b) if identity else None
                )
                fake_b = codec.assemble(real_a, out_a)
                fake_a, idt_b = self._pair(
                    self.G_B, real_b, codec.gray_as_colour(real_a) if identity else None
                )
                rec_a = self.G_B(fake_b)
                rec_b = self._g_a(fake_a)
                self.zero_grad("G")
                with frozen(self.D_A, self.D_B):
                    loss_g_a = self.criterion_gan(self.D_A(fake_b), True)
                    loss_g_b = self.criterion_gan(self.D_B(fake_a), True)
                    loss_cycle_a = F.l1_loss(rec_a.float(), real_a) * o.lambda_A
                    loss_cycle_b = F.l1_loss(rec_b.float(), real_b) * o.lambda_B
                    loss_g = loss_g_a + loss_g_b + loss_cycle_a + loss_cycle_b
                    loss_idt_a: torch.Tensor | float
                    loss_idt_b: torch.Tensor | float
                    if out_idt_a is not None and idt_b is not None:  # computed when identity
                        idt_a = codec.assemble(codec.colour_as_gray(real_b), out_idt_a)
                        loss_idt_a = F.l1_loss(idt_a.float(), real_b) * o.lambda_B * o.lambda_identity
                        loss_idt_b = F.l1_loss(idt_b.float(), real_a) * o.lambda_A * o.lambda_identity
                        loss_g = loss_g + loss_idt_a + loss_idt_b
                    else:
                        loss_idt_a = loss_idt_b = 0.0
                loss_g.backward()
                self.optimizer_step("G")
                losses.update(
                    G_A=loss_g_a,
                    G_B=loss_g_b,
                    cycle_A=loss_cycle_a,
                    cycle_B=loss_cycle_b,
                    idt_A=loss_idt_a,
                    idt_B=loss_idt_b,
                )
            else:
                with torch.no_grad():
                    fake_b = self._g_a(real_a)
                    fake_a = self.G_B(real_b)
            # discriminators, on pooled fakes (real first, as the reference)
            self.zero_grad("D")
            real_da, fake_da, gp_a = self.discriminator_loss(
                self.D_A, real_b, self.pool_B.query(fake_b), fuse=self.fuse, fake_first=False
            )
            real_db, fake_db, gp_b = self.discriminator_loss(
                self.D_B, real_a, self.pool_A.query(fake_a), fuse=self.fuse, fake_first=False
            )
            loss_d_a = 0.5 * (real_da + fake_da)
            loss_d_b = 0.5 * (real_db + fake_db)
            total = loss_d_a + loss_d_b
            if gp_a is not None and gp_b is not None:
                total = total + gp_a + gp_b
                losses.update(D_A_GP=gp_a, D_B_GP=gp_b)
        total.backward()
        self.optimizer_step("D")
        losses.update(D_A=loss_d_a, D_B=loss_d_b)
        self.iteration += 1
        return self.floats(losses)

    def extra_state(self) -> dict[str, Any]:
        state = super().extra_state()
        state.update({f"pool_A.{k}": v for k, v in self.pool_A.state().items()})
        state.update({f"pool_B.{k}": v for k, v in self.pool_B.state().items()})
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        for name, pool in (("pool_A", self.pool_A), ("pool_B", self.pool_B)):
            pool.load_state(
                {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(name + ".")}, self.device
            )
