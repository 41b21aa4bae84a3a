"""The contract between GAN variants and the trainer.

A variant is one module under `models/variants/` that defines an options class
(`ModelOptions` subclass with the reference implementation's defaults) and a
`GANModel` subclass, and registers them with `@register_model` (models.registry).
The model class names its options class twice: `Options = XOptions` (what the
registry validates params.yaml with) and the annotation `opts: XOptions` (what the
type checker reads its fields as); tests/test_variants.py checks that they agree.

Data convention at this boundary (the trainer and the evaluator rely on it):
- `batch["A"]`: model input, grayscale in [0, 1], shape (B, 1, H, W), float32.
- `batch["B"]`: target colour RGB in [0, 1], shape (B, 3, H, W), float32.
  For paired models A[i] and B[i] show the same place; for unpaired models the
  trainer draws them independently.
- `colourise(A)` returns RGB in [0, 1], shape (B, 3, H, W).
Colour-space conversion and normalisation (RGB or CIE L*a*b*) happen inside the
model through `models.colour`, so the trainer never needs to know about them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from models.colour import ColourSpaceName
from models.losses import GanMode
from models.networks import DiscriminatorName
from models.networks.init import InitKind
from models.networks.layers import NormKind
from models.networks.norm_stats import NormStats

GradientHook = Callable[[Iterable[nn.Parameter]], None]


class ModelOptions(BaseModel):
    """Options every variant understands. Subclasses override defaults to match
    their reference implementation and add their own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # Fields holding channel widths; the training preset's width_scale multiplies them.
    width_fields: ClassVar[tuple[str, ...]] = ("ngf", "ndf")

    color_space: ColourSpaceName = "rgb"
    netG: str = "unet_256"
    netD: DiscriminatorName = "basic"  # variants narrow it to the discriminators they support
    n_layers_D: int = Field(default=3, ge=1)
    ngf: int = Field(default=64, ge=1)
    ndf: int = Field(default=64, ge=1)
    norm: NormKind = "batch"
    init_type: InitKind = "normal"
    init_gain: float = Field(default=0.02, gt=0)
    dropout: bool = True
    gan_mode: GanMode = "vanilla"
    lambda_gp: float = Field(default=10.0, ge=0)  # gradient-penalty weight (wgangp)
    n_critic: int = Field(default=1, ge=1)  # discriminator steps per generator step (wgangp: 5)
    lr: float = Field(default=2e-4, gt=0)  # default for every network
    lr_G: float | None = Field(default=None, gt=0)  # per-network overrides
    lr_D: float | None = Field(default=None, gt=0)
    beta1: float = Field(default=0.5, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)


class Optimizers(Mapping[str, torch.optim.Optimizer]):
    """Named optimizers, each built on first use: inference (evaluate, colourise) never
    builds one, which also spares it torch's optimizer start-up (~2 s on a CPU)."""

    def __init__(self) -> None:
        self._factories: dict[str, Callable[[], torch.optim.Optimizer]] = {}
        self._built: dict[str, torch.optim.Optimizer] = {}

    def add(self, name: str, factory: Callable[[], torch.optim.Optimizer]) -> None:
        self._factories[name] = factory
        self._built.pop(name, None)

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        if name not in self._built:
            self._built[name] = self._factories[name]()
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)


class GANModel(ABC):
    """A trainable GAN colouriser. Owns its networks and optimizers."""

    name: ClassVar[str]
    Options: ClassVar[type[ModelOptions]] = ModelOptions
    paired: ClassVar[bool] = True  # False: the trainer feeds independent A and B
    # True: colourise() draws a random latent code (multimodal output); the evaluator seeds the
    # draws and scores several of them.
    samples_latent: ClassVar[bool] = False
    colourising_net: ClassVar[str] = "G"  # the network colourise() runs (CycleGAN: G_A)

    def __init__(self, opts: ModelOptions, device: torch.device) -> None:
        self.opts = opts
        self.device = device
        self.nets: dict[str, nn.Module] = {}
        self.optimizers = Optimizers()
        # Set by the trainer under torch.distributed: averages gradients across
        # processes before each optimizer step (GANs step several optimizers per
        # iteration, which DistributedDataParallel handles poorly).
        self.gradient_hook: GradientHook | None = None

    # -------------------------------------------------------------- to implement
    @abstractmethod
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One training iteration on a batch; returns named losses as floats."""

    @abstractmethod
    def colourise(self, gray: torch.Tensor) -> torch.Tensor:
        """Inference: (B, 1, H, W) gray in [0, 1] -> (B, 3, H, W) RGB in [0, 1]."""

    # -------------------------------------------------------------- shared
    def gather_norm_stats(self, gray_batches: Iterable[torch.Tensor]) -> NormStats | None:
        """The colourising network's instance-norm statistics over these inputs (an area's gray
        windows, (B, 1, H, W) in [0, 1]), pooled over all their pixels; None for a network
        without instance norms. The network is left as it was (models/networks/norm_stats.py)."""
        from models.networks.norm_stats import gathering, instance_norms

        net = self.nets[self.colourising_net]
        if not instance_norms(net):
            return None
        # forked and seeded: a latent-code model's random codes make the statistics no less
        # repeatable, and its later draws stay those its own seed gives
        with gathering(net) as gatherer, torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for gray in gray_batches:
                self.colourise(gray.to(self.device))
            return gatherer.result()

    def fit_norm_stats(self, gray_batches: Iterable[torch.Tensor]) -> int:
        """Fix the colourising network's instance-norm statistics to those of these inputs
        (`gather_norm_stats`), so that every window of the area is then normalised alike.
        Returns how many norms were fixed (0 for a network without instance norms, which is
        left as it is)."""
        from models.networks.norm_stats import fix_norm_stats

        stats = self.gather_norm_stats(gray_batches)
        if stats is None:
            return 0
        fix_norm_stats(self.nets[self.colourising_net], stats)
        return len(stats)

    def optimizer_step(self, name: str) -> None:
        """Step one optimizer (after averaging gradients when distributed)."""
        opt = self.optimizers[name]
        if self.gradient_hook is not None:
            params = [p for g in opt.param_groups for p in g["params"]]
            self.gradient_hook(params)
        opt.step()

    def train(self) -> None:
        for net in self.nets.values():
            net.train()

    def eval(self) -> None:
        for net in self.nets.values():
            net.eval()

    def parameter_counts(self) -> dict[str, int]:
        return {k: sum(p.numel() for p in n.parameters()) for k, n in self.nets.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": {k: n.state_dict() for k, n in self.nets.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, n in self.nets.items():
            n.load_state_dict(state["nets"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        """Other state that must survive a resume (e.g. CycleGAN's image pools)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state
