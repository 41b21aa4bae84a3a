"""Discriminators: PatchGAN (`basic` = 3 layers, `n_layers`), 1x1 PixelGAN (`pixel`),
and BicycleGAN's multiscale PatchGAN. Structures and parameter counts follow the
references (including which convolutions carry a bias)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.networks.layers import BlurDownsample, NormKind, conv_bias, norm_layer


class NLayerDiscriminator(nn.Module):
    """PatchGAN: c4s2-ndf, (n_layers-1) x c4s2 doubling up to 8*ndf, c4s1, c4s1-1.
    With `antialias` (CUT), each stride-2 conv becomes stride 1 + blur-pool."""

    def __init__(
        self,
        in_channels: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm: NormKind = "batch",
        antialias: bool = False,
    ) -> None:
        super().__init__()
        self.n_layers = n_layers
        bias = conv_bias(norm)
        stride = 1 if antialias else 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=stride, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        if antialias:
            layers.append(BlurDownsample(ndf))
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
            if antialias:
                layers.append(BlurDownsample(ndf * mult))
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=bias),
            norm_layer(norm, ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*layers)

    def min_size(self) -> int:
        """Smallest image side that still leaves a 1x1 patch map."""
        return 2**self.n_layers * 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN (PixelGAN): judges every pixel's colour on its own."""

    def __init__(self, in_channels: int, ndf: int = 64, norm: NormKind = "batch") -> None:
        super().__init__()
        bias = conv_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, ndf, 1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, 2 * ndf, 1, bias=bias),
            norm_layer(norm, 2 * ndf),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * ndf, 1, 1, bias=bias),
        )

    def min_size(self) -> int:
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _patch_layers(in_channels: int, ndf: int, n_layers: int, norm: NormKind) -> nn.Sequential:
    """BicycleGAN's PatchGAN: like NLayerDiscriminator but every conv has a bias."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers):
        prev, mult = mult, min(2**n, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1),
            norm_layer(norm, ndf * mult),
            nn.LeakyReLU(0.2, True),
        ]
    prev, mult = mult, min(2**n_layers, 8)
    layers += [
        nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1),
        norm_layer(norm, ndf * mult),
        nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),
    ]
    return nn.Sequential(*layers)


class MultiscaleDiscriminator(nn.Module):
    """BicycleGAN's D: `num_D` PatchGANs, the i-th on the image average-pooled i times
    (3x3, stride 2, padding excluded) with ndf / 2**i filters. Returns a list of maps."""

    def __init__(
        self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: NormKind = "instance", num_D: int = 2
    ) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.scales = nn.ModuleList(
            [_patch_layers(in_channels, max(1, round(ndf / 2**i)), n_layers, norm) for i in range(num_D)]
        )

    def min_size(self) -> int:
        return 2**self.n_layers * 3 * 2 ** (len(self.scales) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, net in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(net(x))
        return out
