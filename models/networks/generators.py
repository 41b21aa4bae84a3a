"""Generators: U-Net (unet_128 / unet_256) and ResNet (resnet_6blocks / resnet_9blocks).

Same layer structure, widths and parameter counts as the pix2pix/CycleGAN reference;
the ResNet generator optionally uses CUT's anti-aliased down/upsampling. Layer
indices of `ResnetGenerator.model` are the ones CUT's `nce_layers` refer to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from models.networks.layers import BlurDownsample, BlurUpsample, NormKind, conv_bias, norm_layer
from models.networks.winograd import Conv3x3


class ResnetBlock(nn.Module):
    """x + (pad, conv3x3, norm, relu, [dropout], pad, conv3x3, norm)(x). The 3x3
    convolutions use Winograd's algorithm where that is faster (models.networks.winograd)."""

    def __init__(self, dim: int, norm: NormKind, dropout: bool, padding: str = "reflect") -> None:
        super().__init__()
        bias = conv_bias(norm)
        pad: type[nn.Module] = {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d}.get(
            padding, nn.ZeroPad2d
        )
        layers: list[nn.Module] = [
            pad(1),
            Conv3x3(dim, dim, bias=bias),
            norm_layer(norm, dim),
            nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [pad(1), Conv3x3(dim, dim, bias=bias), norm_layer(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsamplings, n_blocks residual blocks, two upsamplings,
    c7s1-out, tanh. `antialias_down`/`antialias_up`: CUT's blur-pooled variants."""

    size_multiple = 4
    arch_name: str  # the reference's name, set by define_generator

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        norm: NormKind = "batch",
        dropout: bool = False,
        n_blocks: int = 9,
        antialias_down: bool = False,
        antialias_up: bool = False,
    ) -> None:
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            c = ngf * 2**i
            if antialias_down:
                layers += [
                    nn.Conv2d(c, 2 * c, 3, stride=1, padding=1, bias=bias),
                    norm_layer(norm, 2 * c),
                    nn.ReLU(True),
                    BlurDownsample(2 * c),
                ]
            else:
                layers += [
                    nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias),
                    norm_layer(norm, 2 * c),
                    nn.ReLU(True),
                ]
        layers += [ResnetBlock(ngf * 4, norm, dropout) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            if antialias_up:
                layers += [
                    BlurUpsample(c),
                    nn.Conv2d(c, c // 2, 3, stride=1, padding=1, bias=bias),
                    norm_layer(norm, c // 2),
                    nn.ReLU(True),
                ]
            else:
                layers += [
                    nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                    norm_layer(norm, c // 2),
                    nn.ReLU(True),
                ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The output and the outputs of the given layer indices (CUT's nce_layers)."""
        wanted = set(layers)
        feats = []
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in wanted:
                feats.append(x)
        return x, feats

    def encode(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Only the features of the given layers; stops after the last of them."""
        wanted, last = set(layers), max(layers)
        feats = []
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in wanted:
                feats.append(x)
            if i == last:
                break
        return feats

    def feature_channels(self, layers: Sequence[int]) -> list[int]:
        """Channel count of each requested layer's output (known without running it)."""
        channels, out = [], []
        first = self.model[1]
        assert isinstance(first, nn.Conv2d)  # after the padding, as built above
        current = first.in_channels
        for layer in self.model:
            for m in layer.modules():
                if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                    current = m.out_channels
            channels.append(current)
        for i in layers:
            if not 0 <= i < len(self.model):
                raise ValueError(f"nce layer {i} is outside the generator (0..{len(self.model) - 1})")
            out.append(channels[i])
        return out


# builds level k's (down layers, up layers) from k and its (outer, inner) channel widths
UnetLevel = Callable[[int, int, int], tuple[list[nn.Module], list[nn.Module]]]


def unet_levels(
    num_downs: int, out_channels: int, ngf: int, dropout: bool, level: UnetLevel
) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The down and up halves of a U-Net's levels (index 0 = outermost), shared by
    pix2pix's U-Net and BicycleGAN's: widths ngf, 2ngf, 4ngf, then 8ngf; `level` builds
    each level's layers, and dropout follows the up path of the num_downs-5 innermost
    non-bottleneck levels. Levels are built outermost first, down before up, as the
    references do: that order fixes which random numbers initialise which weights."""
    if num_downs < 5:
        raise ValueError("a U-Net needs num_downs >= 5")
    widths = [(out_channels, ngf), (ngf, 2 * ngf), (2 * ngf, 4 * ngf), (4 * ngf, 8 * ngf)]
    widths += [(8 * ngf, 8 * ngf)] * (num_downs - 4)
    downs, ups = [], []
    for k, (outer, inner) in enumerate(widths):
        down, up = level(k, outer, inner)
        if dropout and 4 <= k < num_downs - 1:
            up.append(nn.Dropout(0.5))
        downs.append(nn.Sequential(*down))
        ups.append(nn.Sequential(*up))
    return nn.ModuleList(downs), nn.ModuleList(ups)


class UnetGenerator(nn.Module):
    """U-Net with `num_downs` stride-2 levels (7: unet_128, 8: unet_256), ngf*8 at the
    deepest levels, dropout in the num_downs-5 innermost non-bottleneck levels.

    Level k (0 = outermost) halves the size on the way down and doubles it on the way
    up; every level but the outermost returns cat(skip, up) like the reference (the
    skip is the level's input after the down path's in-place LeakyReLU, which the
    following ReLU makes irrelevant).
    """

    arch_name: str  # the reference's name, set by define_generator

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_downs: int,
        ngf: int = 64,
        norm: NormKind = "batch",
        dropout: bool = False,
    ) -> None:
        super().__init__()
        bias = conv_bias(norm)

        def level(k: int, outer: int, inner: int) -> tuple[list[nn.Module], list[nn.Module]]:
            outermost, innermost = k == 0, k == num_downs - 1
            source = in_channels if outermost else outer
            conv = nn.Conv2d(source, inner, 4, stride=2, padding=1, bias=bias)
            down: list[nn.Module]
            if outermost:
                down = [conv]
            elif innermost:
                down = [nn.LeakyReLU(0.2, True), conv]
            else:
                down = [nn.LeakyReLU(0.2, True), conv, norm_layer(norm, inner)]
            up_in = inner if innermost else 2 * inner
            if outermost:  # the output: a biased convolution and tanh, no norm
                up_out = nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1)
                return down, [nn.ReLU(True), up_out, nn.Tanh()]
            up_conv = nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=bias)
            return down, [nn.ReLU(True), up_conv, norm_layer(norm, outer)]

        self.downs, self.ups = unet_levels(num_downs, out_channels, ngf, dropout, level)
        self.num_downs = num_downs
        self.size_multiple = 2**num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for k in range(self.num_downs - 1, -1, -1):
            x = self.ups[k](x)
            if k > 0:
                x = torch.cat([skips[k], x], 1)
        return x
