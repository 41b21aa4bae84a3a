"""CUT and FastCUT (Park et al. 2020): contrastive unpaired translation, one generator.

G: ResNet (resnet_9blocks) with anti-aliased down/upsampling and instance norm; D:
anti-aliased PatchGAN; LSGAN; PatchNCE on G's encoder layers 0,4,8,12,16 (256
patches, temperature 0.07, 2-layer 256-channel MLP head). CUT adds the identity NCE
term on B images (lambda_NCE 1); FastCUT drops it, weights NCE by 10 and enforces
flip equivariance.

Colour: PatchNCE embeds both the input and the output with G's encoder, so both live
in domain B's three channels: the gray input is shown as colour with zero chroma
((L, 0, 0) in Lab, gray in R=G=B in RGB, like the reference's grayscale handling).
In Lab mode G predicts a*b* (2 channels) and the output keeps the input's L; the
reference fails whenever input and output channel counts differ.

Speed, same maths: the NCE keys (the input's features) never receive gradients (the
reference detaches them after projecting), so they are taken from G's forward pass
that made the output (or, after a random flip, computed without autograd) instead of
a second encoder pass with autograd.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, field_validator

from models.gan import ColourGAN, frozen
from models.losses import GanMode, PatchSampleMLP, patch_nce_loss
from models.networks import (
    PRETRAINED_GENERATORS,
    PatchDiscriminatorName,
    define_discriminator,
    define_generator,
    generator_option,
    init_weights,
)
from models.networks.effnet_unet import EffNetUnetGenerator
from models.networks.generators import ResnetGenerator
from models.networks.init import InitKind
from models.networks.layers import NormKind
from models.pretrained import PretrainedEncoderOptions
from models.registry import register_model

_GENERATORS = ("resnet_9blocks", "resnet_6blocks", *PRETRAINED_GENERATORS)


class CUTOptions(PretrainedEncoderOptions):
    """Defaults = contrastive-unpaired-translation `--model cut --CUT_mode CUT`; netG may also
    be a pretrained-encoder U-Net, whose NCE layers index its encoder (models.networks.effnet_unet)."""

    netG: Annotated[str, generator_option(_GENERATORS)] = "resnet_9blocks"
    netD: PatchDiscriminatorName = "basic"
    norm: NormKind = "instance"  # the reference's normG and normD (both instance)
    dropout: bool = False
    init_type: InitKind = "xavier"
    gan_mode: GanMode = "lsgan"
    antialias: bool = True  # anti-aliased down/upsampling in G and D (reference: no_antialias(_up) off)
    lambda_GAN: float = Field(default=1.0, ge=0)
    lambda_NCE: float = Field(default=1.0, ge=0)
    nce_idt: bool = True  # identity NCE on B images
    nce_layers: str = "0,4,8,12,16"
    nce_T: float = Field(default=0.07, gt=0)
    num_patches: int = Field(default=256, ge=1)
    netF: str = "mlp_sample"
    netF_nc: int = Field(default=256, ge=1)
    flip_equivariance: bool = False
    nce_includes_all_negatives_from_minibatch: bool = False

    @field_validator("netF")
    @classmethod
    def _known_netF(cls, v: str) -> str:
        if v not in ("mlp_sample", "sample"):
            raise ValueError(f"unknown netF '{v}' (known: mlp_sample, sample)")
        return v

    @field_validator("nce_layers")
    @classmethod
    def _layer_list(cls, v: str) -> str:
        try:
            layers = [int(x) for x in str(v).split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"nce_layers must be comma-separated layer indices like '0,4,8,12,16', got {v!r}"
            ) from None
        if not layers or min(layers) < 0:
            raise ValueError(f"nce_layers must list layer indices >= 0, got {v!r}")
        return ",".join(str(i) for i in layers)


class FastCUTOptions(CUTOptions):
    """Defaults = contrastive-unpaired-translation `--model cut --CUT_mode FastCUT`."""

    lambda_NCE: float = Field(default=10.0, ge=0)
    nce_idt: bool = False
    flip_equivariance: bool = True


@register_model
class CUTModel(ColourGAN):
    name = "cut"
    Options = CUTOptions
    opts: CUTOptions
    paired = False

    def __init__(self, opts: CUTOptions, device: torch.device) -> None:
        super().__init__(opts, device)
        o = opts
        self.nce_layers = [int(i) for i in o.nce_layers.split(",")]
        generator = self.add_net(
            "G",
            define_generator(
                o.netG,
                3,
                self.codec.out_channels,
                o.ngf,
                o.norm,
                o.dropout,
                o.init_type,
                o.init_gain,
                antialias=o.antialias,
                input_space=o.color_space,
            ),
        )
        # CUTOptions admits these only: both expose encode() and feature_channels() for PatchNCE
        assert isinstance(generator, ResnetGenerator | EffNetUnetGenerator)
        self.G = generator
        self.D = self.add_net(
            "D",
            define_discriminator(
                o.netD, 3, o.ndf, o.n_layers_D, o.norm, o.init_type, o.init_gain, antialias=o.antialias
            ),
        )
        channels = self.G.feature_channels(self.nce_layers)
        head = PatchSampleMLP(channels, o.netF_nc, use_mlp=o.netF == "mlp_sample")
        self.F = self.add_net("F", init_weights(head, o.init_type, o.init_gain))
        self.add_optimizer("G", [self.G])
        self.add_optimizer("D", [self.D])
        if any(True for _ in self.F.parameters()):
            self.add_optimizer("F", [self.F])
        self.fuse_d = self.per_sample(o.norm)
        # reusing the forward pass's features as NCE keys needs per-sample norm
        # (a pretrained encoder's batch norms in training mode would mix the batch)
        self.reuse_keys = self.per_sample(o.norm) and o.encoder_bn == "frozen"
        self.configure_encoders()

    def generate(self, a: torch.Tensor) -> torch.Tensor:
        self.check_size(a.shape[2], a.shape[3], self.G, [self.D])
        return self.codec.assemble(a, self.G(self.codec.gray_as_colour(a)))

    @staticmethod
    def _flip_coin() -> bool:
        return bool(torch.rand(()) < 0.5)

    def _nce(
        self, src: torch.Tensor, tgt: torch.Tensor, src_feats: list[torch.Tensor] | None, flipped: bool
    ) -> torch.Tensor:
        o = self.opts
        feat_q = self.G.encode(tgt, self.nce_layers)
        if flipped:
            feat_q = [torch.flip(f, [3]) for f in feat_q]
        with torch.no_grad():
            if src_feats is None:
                src_feats = self.G.encode(src, self.nce_layers)
            feat_k, ids = self.F([f.detach() for f in src_feats], o.num_patches)
        feat_q, _ = self.F(feat_q, o.num_patches, ids)
        total = torch.zeros((), device=src.device)
        for q, k in zip(feat_q, feat_k, strict=True):
            loss = patch_nce_loss(q, k, src.shape[0], o.nce_T, o.nce_includes_all_negatives_from_minibatch)
            total = total + (loss * o.lambda_NCE).mean()
        return total / len(self.nce_layers)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        o = self.opts
        self.schedule_encoders()
        real_a, real_b = self.encode_batch(batch)
        self.check_size(real_a.shape[2], real_a.shape[3], self.G, [self.D])
        n = real_a.shape[0]
        update_g = self.updates_generator()
        src = self.codec.gray_as_colour(real_a)
        with_idt = o.nce_idt and update_g
        real = torch.cat([src, real_b]) if with_idt else src
        flipped = o.flip_equivariance and self._flip_coin()
        if flipped:
            real = torch.flip(real, [3])
        use_nce = update_g and o.lambda_NCE > 0
        losses: dict[str, torch.Tensor | float] = {}
        with self.autocast():
            if update_g:
                out, feats = self.G.forward_features(real, self.nce_layers)
            else:
                with torch.no_grad():
                    out, feats = self.G(real), []
            fake = self.codec.assemble(real[:, :1], out)
            fake_b, idt_b = fake[:n], fake[n:]
            self.zero_grad("D")
            loss_real, loss_fake, gp = self.discriminator_loss(self.D, real_b, fake_b, fuse=self.fuse_d)
            loss_d = 0.5 * (loss_fake + loss_real) + (gp if gp is not None else 0.0)
        loss_d.backward()
        self.optimizer_step("D")
        losses.update(D_real=loss_real, D_fake=loss_fake)
        if gp is not None:
            losses["D_GP"] = gp
        if update_g:
            self.zero_grad(*[k for k in ("G", "F") if k in self.optimizers])
            with frozen(self.D), self.autocast():
                loss_gan = (
                    self.criterion_gan(self.D(fake_b), True) * o.lambda_GAN
                    if o.lambda_GAN > 0
                    else torch.zeros((), device=self.device)
                )
                keys_from_forward = self.reuse_keys and not flipped
                if use_nce:
                    loss_nce = self._nce(
                        src, fake_b, [f[:n] for f in feats] if keys_from_forward else None, flipped
                    )
                else:
                    loss_nce = torch.zeros((), device=self.device)
                if with_idt and o.lambda_NCE > 0:
                    loss_nce_y = self._nce(
                        real_b, idt_b, [f[n:] for f in feats] if keys_from_forward else None, flipped
                    )
                    loss_g = loss_gan + 0.5 * (loss_nce + loss_nce_y)
                    losses["NCE_Y"] = loss_nce_y
                else:
                    loss_g = loss_gan + loss_nce
            loss_g.backward()
            self.optimizer_step("G")
            if "F" in self.optimizers:
                self.optimizer_step("F")
            losses.update(G_GAN=loss_gan, NCE=loss_nce, G=loss_g)
        self.iteration += 1
        return self.floats(losses)


@register_model
class FastCUTModel(CUTModel):
    name = "fastcut"
    Options = FastCUTOptions
