"""Shared machinery of the GAN variants (colour domains, optimizers, discriminator
losses, the critic schedule). Variants subclass `ColourGAN`.

Speed without changing the maths (see docs/benchmarks/train_speed.md):
- Adam runs as one fused kernel per optimizer (`fused=True`): the same update rule
  as the reference's per-tensor loop, which dominated small models' step time on CPU.
- When a network's normalisation is per-sample (instance norm or none), the passes
  that the reference runs one after the other on different images with the same
  weights (real and fake through a discriminator, a generator's two inputs) run as one
  batch: per-sample normalisation makes that exactly the same computation. Never with
  batch norm, whose statistics would mix the images.
- Parameters of networks that a step does not update have requires_grad off while
  their forward passes run, so no weight gradients are computed for them.
- Losses become Python floats once per step (one device sync).
- (In the networks) ResNet blocks' 256-channel 3x3 convolutions use Winograd's
  F(2x2, 3x3) on the CPU (models/networks/winograd.py); CUT's NCE keys reuse the
  generator's forward pass (models/variants/cut.py).
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from models.base import GANModel, ModelOptions
from models.colour import ColourSpace
from models.losses import GANLoss, Prediction, gradient_penalty
from models.networks import check_image_size, is_per_sample, pretrained_encoder
from models.optim import Adam


@contextlib.contextmanager
def frozen(*nets: nn.Module | None) -> Iterator[None]:
    """Parameters of `nets` do not require grad inside the block (restored after)."""
    saved = [(p, p.requires_grad) for n in nets if n is not None for p in n.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def split_prediction(pred: Prediction, n: int) -> tuple[Prediction, Prediction]:
    """Split a prediction for cat([x, y]) into the predictions for x (first n) and y."""
    if isinstance(pred, list | tuple):
        return [p[:n] for p in pred], [p[n:] for p in pred]
    return pred[:n], pred[n:]


class ColourGAN(GANModel):
    """Base of our variants: owns the colour space, the GAN criterion, optimizer
    construction and the n_critic schedule."""

    def __init__(self, opts: ModelOptions, device: torch.device) -> None:
        super().__init__(opts, device)
        self.codec = ColourSpace(opts.color_space)
        self.criterion_gan = GANLoss(opts.gan_mode)
        # Mixed precision for accelerators (e.g. torch.bfloat16); None = float32.
        self.autocast_dtype: torch.dtype | None = None
        self.iteration = 0  # train_step calls so far (drives n_critic)
        self._checked_size: tuple[int, int] | None = None

    # ------------------------------------------------------------------ building
    def add_net(self, name: str, net: nn.Module) -> nn.Module:
        net = net.to(self.device)
        self.nets[name] = net
        return net

    def lr_for(self, role: str) -> float:
        """Learning rate of an optimizer: lr_G for 'G', lr_D for discriminators, lr otherwise."""
        o = self.opts
        if role == "G" and o.lr_G is not None:
            return o.lr_G
        if role.startswith("D") and o.lr_D is not None:
            return o.lr_D
        return o.lr

    def add_optimizer(
        self, name: str, nets: Iterable[nn.Module], role: str | None = None, beta2: float | None = None
    ) -> None:
        """Declare optimizer `name` over `nets` (built on first use, see `Optimizers`)."""
        betas = (self.opts.beta1, self.opts.beta2 if beta2 is None else beta2)
        lr = self.lr_for(role or name)
        params: list[nn.Parameter] = []
        encoder: list[nn.Parameter] = []  # pretrained encoders: their own, lower learning rate
        for net in nets:
            if pretrained_encoder(net):
                params += list(net.decoder_parameters())  # type: ignore[operator]
                encoder += list(net.encoder_parameters())  # type: ignore[operator]
            else:
                params += list(net.parameters())
        groups: list[dict[str, Any]] = [{"params": params}]
        if encoder:
            groups.append({"params": encoder, "lr": lr * getattr(self.opts, "encoder_lr_scale", 1.0)})
        fused = all(
            p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
            for p in params + encoder
        )
        self.optimizers.add(name, lambda: Adam(groups, lr=lr, betas=betas, fused=fused or None))

    def pretrained_generators(self) -> list[nn.Module]:
        return [net for net in self.nets.values() if pretrained_encoder(net)]

    def configure_encoders(self) -> None:
        """Apply the variant's encoder_bn option to its pretrained-encoder generators."""
        train_bn = getattr(self.opts, "encoder_bn", "frozen") == "train"
        for net in self.pretrained_generators():
            net.freeze_bn = not train_bn  # type: ignore[assignment]
            net.train(net.training)

    def schedule_encoders(self) -> None:
        """Pretrained encoders are frozen for the first encoder_warmup_iters iterations,
        then fine-tuned (called at the start of every train_step; resumes follow `iteration`)."""
        frozen_now = self.iteration < getattr(self.opts, "encoder_warmup_iters", 0)
        for net in self.pretrained_generators():
            net.set_encoder_frozen(frozen_now)  # type: ignore[operator]

    # ------------------------------------------------------------------ per step
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def check_size(
        self, height: int, width: int, generator: nn.Module, discriminators: Iterable[nn.Module] = ()
    ) -> None:
        if self._checked_size == (height, width):
            return
        check_image_size(generator, height, width, "netG")
        for d in discriminators:
            check_image_size(d, height, width, "netD")
        self._checked_size = (height, width)

    def encode_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(domain A, domain B) tensors on the model's device."""
        gray = batch["A"].to(self.device, torch.float32, non_blocking=True)
        rgb = batch["B"].to(self.device, torch.float32, non_blocking=True)
        if gray.dim() != 4 or gray.shape[1] != 1:
            raise ValueError(f"batch['A'] must be gray images (B, 1, H, W); got {tuple(gray.shape)}")
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"batch['B'] must be RGB images (B, 3, H, W); got {tuple(rgb.shape)}")
        with torch.no_grad():
            return self.codec.encode_gray(gray), self.codec.encode_rgb(rgb)

    def updates_generator(self) -> bool:
        """Whether this iteration also updates the generator(s): every n_critic-th, after
        n_critic discriminator updates (WGAN-GP's schedule; every step when n_critic=1)."""
        return self.iteration % self.opts.n_critic == self.opts.n_critic - 1

    def zero_grad(self, *names: str) -> None:
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)

    def discriminator_loss(
        self, net: nn.Module, real: torch.Tensor, fake: torch.Tensor, fuse: bool, fake_first: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(loss on real, loss on fake, gradient penalty or None). `fuse`: one forward
        pass over cat([real, fake]) (only for per-sample normalisation); otherwise two
        passes in the reference's order (`fake_first`), which batch norm's running
        statistics remember."""
        fake = fake.detach()
        if fuse:
            pred_real, pred_fake = split_prediction(net(torch.cat([real, fake])), real.shape[0])
        elif fake_first:
            pred_fake = net(fake)
            pred_real = net(real)
        else:
            pred_real = net(real)
            pred_fake = net(fake)
        loss_real = self.criterion_gan(pred_real, True)
        loss_fake = self.criterion_gan(pred_fake, False)
        penalty = None
        if self.opts.gan_mode == "wgangp" and self.opts.lambda_gp > 0:
            penalty = gradient_penalty(net, real, fake, self.opts.lambda_gp)
        return loss_real, loss_fake, penalty

    @staticmethod
    def per_sample(norm: str) -> bool:
        return is_per_sample(norm)  # type: ignore[arg-type]

    @staticmethod
    def floats(losses: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """All losses as floats with a single device synchronisation."""
        keys = list(losses)
        values = [
            v.detach().float().reshape(()) if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            for v in losses.values()
        ]
        if not values:
            return {}
        device = next((v.device for v in values if v.device.type != "cpu"), torch.device("cpu"))
        return dict(zip(keys, torch.stack([v.to(device) for v in values]).tolist(), strict=True))

    # ------------------------------------------------------------------ inference
    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode and no autograd inside the block; the previous modes come back after."""
        modes = {k: n.training for k, n in self.nets.items()}
        self.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            for k, n in self.nets.items():
                n.train(modes[k])

    @abstractmethod
    def generate(self, a: torch.Tensor) -> torch.Tensor:
        """Domain A -> the generator's output in domain B (inference; no grad)."""

    def translate(self, gray: torch.Tensor) -> torch.Tensor:
        """Gray in [0, 1] -> the output in domain B (RGB*2-1, or normalised Lab whose L
        channel is exactly the input's), in eval mode without autograd."""
        with self.evaluating():
            a = self.codec.encode_gray(gray.to(self.device, torch.float32))
            with self.autocast():
                return self.generate(a).float()

    def colourise(self, gray: torch.Tensor) -> torch.Tensor:
        """Gray (B, 1, H, W) in [0, 1] -> RGB (B, 3, H, W) in [0, 1]."""
        out = self.translate(gray)
        with torch.inference_mode():
            return self.codec.decode(out)

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return {"iteration": torch.tensor(self.iteration)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "iteration" in state:
            self.iteration = int(state["iteration"])
