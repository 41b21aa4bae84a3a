"""BicycleGAN's networks: a U-Net generator that takes a latent code z, and the ResNet
encoder E that maps an image to (mu, logvar).

`where_add` says where z enters the generator (z is tiled to the feature map's size
and concatenated as extra channels):
- `input`:  only to the image at the input (reference G_Unet_add_input);
- `all`:    to the input of every level's down convolution (reference G_Unet_add_all);
- `middle`: only at the bottleneck: concatenated to the innermost (1x1 at the U-Net's
  native size) code after its activation, as input of the first up-convolution. The
  reference names this mode but never implemented it.
In `all` mode z passes through each level's LeakyReLU before the convolution, as in
the reference.
The U-Net here is BicycleGAN's own variant (every conv has a bias; levels return
cat(up, skip)), not pix2pix's, so parameter counts match that reference.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.networks.generators import unet_levels
from models.networks.layers import NormKind, norm_layer

WhereAdd = Literal["input", "all", "middle"]
Upsample = Literal["basic", "bilinear"]


def _tile(z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return z.view(z.shape[0], z.shape[1], 1, 1).expand(-1, -1, like.shape[2], like.shape[3])


def _up_layers(in_ch: int, out_ch: int, upsample: Upsample) -> list[nn.Module]:
    if upsample == "basic":
        return [nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)]
    return [nn.Upsample(scale_factor=2, mode="bilinear"), nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3)]


class UnetZGenerator(nn.Module):
    """U-Net G(x, z) with z injected according to `where_add` (see the module doc)."""

    arch_name: str  # the reference's name, set by define_z_generator

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        nz: int,
        num_downs: int,
        ngf: int = 64,
        norm: NormKind = "instance",
        nl: Literal["relu", "lrelu", "elu"] = "relu",
        dropout: bool = False,
        upsample: Upsample = "basic",
        where_add: WhereAdd = "all",
    ) -> None:
        super().__init__()
        self.nz, self.num_downs, self.where_add = nz, num_downs, where_add
        self.size_multiple = 2**num_downs
        # which down convolutions receive z, and whether the bottleneck does
        self.z_at_level = [
            nz > 0 and (where_add == "all" or (where_add == "input" and k == 0)) for k in range(num_downs)
        ]
        self.z_at_bottleneck = nz > 0 and where_add == "middle"

        def level(k: int, outer: int, inner: int) -> tuple[list[nn.Module], list[nn.Module]]:
            outermost, innermost = k == 0, k == num_downs - 1
            source = (in_channels if outermost else outer) + (nz if self.z_at_level[k] else 0)
            conv = nn.Conv2d(source, inner, 4, stride=2, padding=1)
            down: list[nn.Module] = [conv] if outermost else [nn.LeakyReLU(0.2, True), conv]
            if not (outermost or innermost) and norm != "none":
                down.append(norm_layer(norm, inner))
            up_in = inner + (nz if self.z_at_bottleneck else 0) if innermost else 2 * inner
            up: list[nn.Module] = [_nonlinearity(nl), *_up_layers(up_in, outer, upsample)]
            if outermost:
                up.append(nn.Tanh())
            elif norm != "none":
                up.append(norm_layer(norm, outer))
            return down, up

        self.downs, self.ups = unet_levels(num_downs, out_channels, ngf, dropout, level)

    def z_consumers(self) -> list[tuple[nn.Module, slice]]:
        """(layer, input-channel slice) pairs that receive z: where it claims to enter."""
        out: list[tuple[nn.Module, slice]] = []
        for k, has_z in enumerate(self.z_at_level):
            if has_z:
                conv = next(m for m in self.downs[k].children() if isinstance(m, nn.Conv2d))
                out.append((conv, slice(conv.in_channels - self.nz, conv.in_channels)))
        if self.z_at_bottleneck:
            up = next(m for m in self.ups[-1].children() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d))
            out.append((up, slice(up.in_channels - self.nz, up.in_channels)))
        return out

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is None:
            if self.nz:
                raise ValueError("this generator needs a latent code z")
            z = x.new_zeros(x.shape[0], 0)  # nz = 0: z enters nowhere
        skips = []
        for k, down in enumerate(self.downs):
            skips.append(x)
            x = down(torch.cat([x, _tile(z, x)], 1) if self.z_at_level[k] else x)
        for k in range(self.num_downs - 1, -1, -1):
            if k == self.num_downs - 1 and self.z_at_bottleneck:
                # after the up path's activation, so z reaches the convolution unclipped
                act, *rest = self.ups[k].children()
                x = act(x)
                x = torch.cat([x, _tile(z, x)], 1)
                for layer in rest:
                    x = layer(x)
            else:
                x = self.ups[k](x)
            if k > 0:
                x = torch.cat([x, skips[k]], 1)
        return x


def _nonlinearity(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(True)
    if kind == "lrelu":
        return nn.LeakyReLU(0.2, True)
    if kind == "elu":
        return nn.ELU(inplace=True)
    raise ValueError(f"unknown nonlinearity '{kind}' (known: relu, lrelu, elu)")


class _EncoderBlock(nn.Module):
    """Pre-activation residual block that halves the size (BicycleGAN's BasicBlock)."""

    def __init__(self, cin: int, cout: int, norm: NormKind) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if norm != "none":
            layers.append(norm_layer(norm, cin))
        layers += [nn.LeakyReLU(0.2, True), nn.Conv2d(cin, cin, 3, padding=1)]
        if norm != "none":
            layers.append(norm_layer(norm, cin))
        layers += [nn.LeakyReLU(0.2, True), nn.Conv2d(cin, cout, 3, padding=1), nn.AvgPool2d(2)]
        self.conv = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # main path first, as the reference: without a norm its in-place activation
        # also reaches the shortcut
        return self.conv(x) + self.shortcut(x)


class ResnetEncoder(nn.Module):
    """E(B) -> (mu, logvar): c4s2-nef, (n_blocks-1) halving residual blocks up to 4*nef,
    LeakyReLU, global average pool, two linear heads (BicycleGAN's E_ResNet, vaeLike).

    The reference pools with a fixed 8x8 window, which is the global average at its
    image size (256 for resnet_256, 128 for resnet_128); global pooling gives the same
    numbers there and also works at other sizes."""

    def __init__(
        self, in_channels: int, nz: int, nef: int = 64, n_blocks: int = 5, norm: NormKind = "instance"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, nef, 4, stride=2, padding=1)]
        cout = nef
        for n in range(1, n_blocks):
            cin, cout = nef * min(4, n), nef * min(4, n + 1)
            layers.append(_EncoderBlock(cin, cout, norm))
        layers.append(nn.LeakyReLU(0.2, True))
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(cout, nz)
        self.fc_var = nn.Linear(cout, nz)
        self.size_multiple = 2**n_blocks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)
        return self.fc(h), self.fc_var(h)
