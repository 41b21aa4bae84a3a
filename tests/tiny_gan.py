"""Test double for the training loop: a tiny paired conv GAN, plus tiny datasets and params.

`TinyP2P` follows the GANModel contract like a real pix2pix (generator with dropout,
optional batch norm, conditional discriminator, two optimizers, D then G step through
`optimizer_step`), just small enough for tests to train in milliseconds. It is
registered under the test-only name `tiny_p2p`; `TinyPooled` (`tiny_pool`) adds an
unpaired image pool in `extra_state`, like CycleGAN's, drawn with Python's `random`.

Run as a module it is the `pipeline.stages.train` CLI with these models registered (used by the
multi-process and SIGKILL tests): `python -m tests.tiny_gan ABLATION --params FILE ...`.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import Field
from torch import nn

from models.base import GANModel, ModelOptions
from models.registry import register_model
from pipeline.core.config import Params, parse_params
from pipeline.datasets.storage import DatasetInfo, write_info, write_split


class TinyOptions(ModelOptions):
    netG: str = "tiny"
    ngf: int = Field(default=32, ge=1)
    ndf: int = Field(default=32, ge=1)
    norm: Literal["batch", "instance", "none"] = "batch"
    optimizer: Literal["adam", "sgd"] = "adam"
    lambda_L1: float = 100.0


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    return nn.Identity()


@register_model
class TinyP2P(GANModel):
    name = "tiny_p2p"
    Options = TinyOptions
    paired = True

    def __init__(self, opts: TinyOptions, device: torch.device) -> None:  # type: ignore[override]
        super().__init__(opts, device)
        g = nn.Sequential(
            nn.Conv2d(1, opts.ngf, 3, padding=1), _norm(opts.norm, opts.ngf), nn.ReLU(),
            nn.Dropout(0.5) if opts.dropout else nn.Identity(),
            nn.Conv2d(opts.ngf, 3, 3, padding=1), nn.Sigmoid(),
        )
        d = nn.Sequential(
            nn.Conv2d(4, opts.ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(opts.ndf, 1, 3, padding=1),
        )
        for net in (g, d):
            for m in net.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, 0.0, opts.init_gain)
                    nn.init.zeros_(m.bias)
        self.nets = {"G": g.to(device), "D": d.to(device)}
        self.optimizers = {k: self._optimizer(n) for k, n in self.nets.items()}
        self.bce = nn.BCEWithLogitsLoss()

    def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        if self.opts.optimizer == "sgd":
            return torch.optim.SGD(net.parameters(), lr=self.opts.lr)
        return torch.optim.Adam(net.parameters(), lr=self.opts.lr,
                                betas=(self.opts.beta1, self.opts.beta2))

    def _d_input(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        a, b = batch["A"], batch["B"]
        G, D = self.nets["G"], self.nets["D"]
        fake = G(a)
        # D step
        self.optimizers["D"].zero_grad()
        pred_fake = D(self._d_input(a, self._pool_fake(fake.detach())))
        pred_real = D(self._d_input(a, b))
        loss_d = 0.5 * (self.bce(pred_fake, torch.zeros_like(pred_fake))
                        + self.bce(pred_real, torch.ones_like(pred_real)))
        loss_d.backward()
        self.optimizer_step("D")
        # G step
        self.optimizers["G"].zero_grad()
        pred = D(self._d_input(a, fake))
        loss_gan = self.bce(pred, torch.ones_like(pred))
        loss_l1 = torch.nn.functional.l1_loss(fake, b)
        (loss_gan + self.opts.lambda_L1 * loss_l1).backward()
        self.optimizer_step("G")
        return {"G_GAN": loss_gan.item(), "G_L1": loss_l1.item(), "D": loss_d.item()}

    def _pool_fake(self, fake: torch.Tensor) -> torch.Tensor:
        return fake

    @torch.no_grad()
    def colourise(self, gray: torch.Tensor) -> torch.Tensor:
        return self.nets["G"](gray).clamp(0, 1)


@register_model
class TinyPooled(TinyP2P):
    """TinyP2P with a CycleGAN-style history of fakes (state that must survive a resume)."""

    name = "tiny_pool"
    paired = False
    pool_size = 3

    def __init__(self, opts: TinyOptions, device: torch.device) -> None:  # type: ignore[override]
        super().__init__(opts, device)
        self.pool: list[torch.Tensor] = []

    def _pool_fake(self, fake: torch.Tensor) -> torch.Tensor:
        out = []
        for img in fake:
            img = img.unsqueeze(0)
            if len(self.pool) < self.pool_size:
                self.pool.append(img.clone())
                out.append(img)
            elif random.random() < 0.5:
                i = random.randrange(self.pool_size)
                out.append(self.pool[i].clone())
                self.pool[i] = img.clone()
            else:
                out.append(img)
        return torch.cat(out)

    def extra_state(self) -> dict[str, Any]:
        return {"pool": [t.cpu() for t in self.pool]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.pool = [t.to(self.device) for t in state.get("pool", [])]


# --------------------------------------------------------------------------- data + params
def tiny_pairs(n: int, size: int, seed: int = 0, symmetric: bool = False) -> np.ndarray:
    """(n, size, size, 4) uint8 SYNTHETIC pairs: smooth random colour fields and their luma.

    With `symmetric`, every tile is its own mirror image, so random flips change nothing.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 3, 4, 4)).astype(np.float32)
    rgb = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size),
                                          mode="bilinear", align_corners=False)
    rgb = rgb + 0.1 * torch.from_numpy(rng.standard_normal((n, 3, size, size)).astype(np.float32))
    if symmetric:
        rgb = 0.5 * (rgb + rgb.flip(-1))
    rgb = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    gray = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round()
    return np.concatenate([gray.astype(np.uint8)[..., None], rgb], axis=-1)


def write_tiny_dataset(root: Path, *, n_train: int = 6, n_val: int = 3, size: int = 32,
                       symmetric: bool = False, synthetic: bool = True) -> Path:
    write_split(root, "train", tiny_pairs(n_train, size, seed=1, symmetric=symmetric))
    write_split(root, "val", tiny_pairs(n_val, size, seed=2, symmetric=symmetric))
    write_info(root, DatasetInfo(name=root.name, input_kind="gray", input_layer="tiny_synthetic",
                                 target_layer="tiny_synthetic", synthetic_input=synthetic,
                                 tile_size=size, zoom=0, luma="rec601",
                                 counts={"train": n_train, "val": n_val}))
    return root


def tiny_params_dict(*, ablations: dict[str, dict[str, Any]] | None = None, crop: int = 32,
                     load: int = 32, steps: int = 4, decay: int = 4, batch: int = 1,
                     **train: Any) -> dict[str, Any]:
    return {
        "sources": {"s": {"kind": "sample"}},
        "aois": {"a": {"path": "aoi/none.shp"}},
        "fetch": {"f": {"source": "s", "layer": "l", "aoi": "a", "zoom": 1}},
        "datasets": {"tiny": {"input": "gray", "target": "f"}},
        "train": {
            "preset": "t",
            "presets": {"t": {"crop_size": crop, "load_size": load, "width_scale": 0.25,
                              "steps": steps, "decay_steps": decay, "batch_size": batch}},
            "seed": 0, "val_every": 4, "checkpoint_every": 4, "num_val_samples": 2,
            "device": "cpu", **train,
        },
        "ablations": ablations or {"tiny": {"model": "tiny_p2p", "dataset": "tiny"}},
    }


def tiny_params(**kwargs: Any) -> Params:
    return parse_params(tiny_params_dict(**kwargs))


def write_params(path: Path, **kwargs: Any) -> Path:
    path.write_text(yaml.safe_dump(tiny_params_dict(**kwargs)), encoding="utf-8")
    return path


if __name__ == "__main__":
    from pipeline.stages.train import main

    main(sys.argv[1:])
