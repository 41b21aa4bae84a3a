"""Networks found by name: `define_generator`, `define_discriminator`, `define_encoder`.

Names and defaults are the references': generators unet_256 | unet_128 |
resnet_9blocks | resnet_6blocks, discriminators basic | n_layers | pixel (and
BicycleGAN's basic_256_multi | basic_128_multi | basic_256 | basic_128), encoders
resnet_256 | resnet_128. Ours: generators unet_effnet_lite1 | unet_effnet_lite2, U-Nets
whose encoder is an ImageNet-pretrained EfficientNet-Lite (models/networks/effnet_unet.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import partial
from typing import Literal, Protocol, get_args, runtime_checkable

import torch
from pydantic import AfterValidator
from torch import nn

from models.networks.bicycle import ResnetEncoder, UnetZGenerator, Upsample, WhereAdd
from models.networks.discriminators import MultiscaleDiscriminator, NLayerDiscriminator, PixelDiscriminator
from models.networks.effnet_unet import EFFNET_GENERATORS, EffNetUnetGenerator, InputSpace
from models.networks.generators import ResnetGenerator, UnetGenerator
from models.networks.init import InitKind, init_weights
from models.networks.layers import NormKind, is_per_sample
from pipeline.core.errors import LuminescenceError

__all__ = [
    "DISCRIMINATORS",
    "ENCODERS",
    "GENERATORS",
    "PRETRAINED_GENERATORS",
    "DiscriminatorName",
    "ImageSizeError",
    "UnknownNetworkError",
    "check_image_size",
    "count_parameters",
    "define_discriminator",
    "define_encoder",
    "define_generator",
    "define_z_generator",
    "generator_option",
    "init_weights",
    "is_per_sample",
    "known_generator",
    "pretrained_encoder",
]

# Options fields type discriminator names with these (pydantic validates them); the tuples
# are the same names for the run-time checks here.
PatchDiscriminatorName = Literal["basic", "n_layers", "pixel"]
MultiscaleDiscriminatorName = Literal["basic_256_multi", "basic_128_multi", "basic_256", "basic_128"]
DiscriminatorName = Literal[PatchDiscriminatorName, MultiscaleDiscriminatorName]

SCRATCH_GENERATORS = ("unet_256", "unet_128", "resnet_9blocks", "resnet_6blocks")
PRETRAINED_GENERATORS = tuple(EFFNET_GENERATORS)  # ImageNet-pretrained encoders
GENERATORS = SCRATCH_GENERATORS + PRETRAINED_GENERATORS
DISCRIMINATORS: tuple[str, ...] = get_args(PatchDiscriminatorName)
MULTISCALE_DISCRIMINATORS: tuple[str, ...] = get_args(MultiscaleDiscriminatorName)
ENCODERS = ("resnet_256", "resnet_128")
_UNET_DEPTH = {"unet_256": 8, "unet_128": 7}


class UnknownNetworkError(LuminescenceError):
    """A network name that is not defined."""


class ImageSizeError(LuminescenceError):
    """Images whose size the network cannot process."""


def unknown_name_message(what: str, name: str, known: tuple[str, ...]) -> str:
    hint = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
    suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
    return f"unknown {what} '{name}'{suggestion} (known: {', '.join(known)})"


def _check_name(what: str, name: str, known: tuple[str, ...]) -> None:
    if name not in known:
        raise UnknownNetworkError(unknown_name_message(what, name, known))


def _finish(net: nn.Module, init_type: InitKind, init_gain: float) -> nn.Module:
    if not any(p.is_meta for p in net.parameters()):
        init_weights(net, init_type, init_gain)
    return net


def define_generator(
    name: str,
    in_channels: int,
    out_channels: int,
    ngf: int = 64,
    norm: NormKind = "batch",
    dropout: bool = False,
    init_type: InitKind = "normal",
    init_gain: float = 0.02,
    antialias: bool = False,
    input_space: InputSpace = "rgb",
) -> nn.Module:
    """A generator by its name. `antialias`: CUT's blur-pooled ResNet. `input_space`: the
    colour space of the input tensor, which a pretrained encoder must turn into RGB."""
    _check_name("generator (netG)", name, GENERATORS)
    if name in EFFNET_GENERATORS:
        return _pretrained_unet(name, in_channels, out_channels, ngf, norm, dropout, init_type, init_gain,
                                input_space)
    net: UnetGenerator | ResnetGenerator
    if name in _UNET_DEPTH:
        net = UnetGenerator(in_channels, out_channels, _UNET_DEPTH[name], ngf, norm, dropout)
    else:
        blocks = 9 if name == "resnet_9blocks" else 6
        net = ResnetGenerator(
            in_channels,
            out_channels,
            ngf,
            norm,
            dropout,
            blocks,
            antialias_down=antialias,
            antialias_up=antialias,
        )
    net.arch_name = name
    return _finish(net, init_type, init_gain)


def _pretrained_unet(name: str, in_channels: int, out_channels: int, ngf: int, norm: NormKind,
                     dropout: bool, init_type: InitKind, init_gain: float,
                     input_space: InputSpace) -> nn.Module:
    """The decoder initialised like every other network, the encoder from ImageNet."""
    from models.networks.pretrained import load_lite

    net = EffNetUnetGenerator(EFFNET_GENERATORS[name], in_channels, out_channels, ngf, norm, dropout,
                              input_space)
    net.arch_name = name  # type: ignore[assignment]
    if any(p.is_meta for p in net.parameters()):
        return net
    init_weights(net.decoder, init_type, init_gain)
    init_weights(net.head, init_type, init_gain)
    pretrained, sha = load_lite(EFFNET_GENERATORS[name])
    net.encoder.load_from(pretrained)
    net.encoder_sha256 = sha  # type: ignore[assignment]
    return net


def pretrained_encoder(net: nn.Module) -> bool:
    """Whether `net` is a generator with a pretrained encoder (it has a warm-up and its own LR)."""
    return isinstance(net, EffNetUnetGenerator)


def define_z_generator(
    name: str,
    in_channels: int,
    out_channels: int,
    nz: int,
    ngf: int = 64,
    norm: NormKind = "instance",
    dropout: bool = False,
    init_type: InitKind = "xavier",
    init_gain: float = 0.02,
    where_add: WhereAdd = "all",
    upsample: Upsample = "basic",
) -> nn.Module:
    """BicycleGAN's U-Net generator G(x, z) (unet_256 | unet_128)."""
    _check_name("generator (netG)", name, tuple(_UNET_DEPTH))
    net = UnetZGenerator(
        in_channels, out_channels, nz, _UNET_DEPTH[name], ngf, norm, "relu", dropout, upsample, where_add
    )
    net.arch_name = name
    return _finish(net, init_type, init_gain)


def define_discriminator(
    name: str,
    in_channels: int,
    ndf: int = 64,
    n_layers_D: int = 3,
    norm: NormKind = "batch",
    init_type: InitKind = "normal",
    init_gain: float = 0.02,
    antialias: bool = False,
    num_D: int = 2,
) -> nn.Module:
    """A discriminator by its reference name (PatchGAN `basic`/`n_layers`, `pixel`, or
    BicycleGAN's `basic_256_multi` family)."""
    _check_name("discriminator (netD)", name, DISCRIMINATORS + MULTISCALE_DISCRIMINATORS)
    net: nn.Module
    if name == "basic":
        net = NLayerDiscriminator(in_channels, ndf, 3, norm, antialias)
    elif name == "n_layers":
        net = NLayerDiscriminator(in_channels, ndf, n_layers_D, norm, antialias)
    elif name == "pixel":
        net = PixelDiscriminator(in_channels, ndf, norm)
    else:
        n_layers = 3 if name.startswith("basic_256") else 2
        net = MultiscaleDiscriminator(
            in_channels, ndf, n_layers, norm, num_D if name.endswith("multi") else 1
        )
    return _finish(net, init_type, init_gain)


def define_encoder(
    name: str,
    in_channels: int,
    nz: int,
    nef: int = 64,
    norm: NormKind = "instance",
    init_type: InitKind = "xavier",
    init_gain: float = 0.02,
) -> nn.Module:
    """BicycleGAN's ResNet encoder E (resnet_256: 5 blocks, resnet_128: 4)."""
    _check_name("encoder (netE)", name, ENCODERS)
    net = ResnetEncoder(in_channels, nz, nef, 5 if name == "resnet_256" else 4, norm)
    return _finish(net, init_type, init_gain)


def count_parameters(build: Callable[[], nn.Module]) -> int:
    """Parameters of a network built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        net = build()
    return sum(p.numel() for p in net.parameters())


@runtime_checkable
class _HasMinSize(Protocol):
    """A network that needs images of at least min_size() pixels (the discriminators)."""

    def min_size(self) -> int: ...


def check_image_size(net: nn.Module, height: int, width: int, role: str = "netG") -> None:
    """One-line error when the images do not fit the network's down/upsampling."""
    multiple = getattr(net, "size_multiple", 1)
    name = getattr(net, "arch_name", type(net).__name__)
    if height % multiple or width % multiple:
        if name == "unet_256":
            fix = "use crop_size 256 (preset 'full') or netG unet_128 (preset 'cpu' with crop_size 128)"
        elif name == "unet_128":
            fix = "use a crop_size that is a multiple of 128, e.g. 128 (preset 'cpu')"
        elif name in EFFNET_GENERATORS:
            fix = "use a crop_size that is a multiple of 32"
        else:
            fix = f"use a crop_size that is a multiple of {multiple}"
        raise ImageSizeError(
            f"{role} {name} needs image sides that are multiples of {multiple}, got {height}x{width}; {fix}"
        )
    min_size = net.min_size() if isinstance(net, _HasMinSize) else 1
    if min(height, width) < min_size:
        raise ImageSizeError(
            f"{role} {name} needs images of at least {min_size}x{min_size} pixels, got "
            f"{height}x{width}; use a larger crop_size or fewer n_layers_D"
        )


def known_generator(name: str, known: tuple[str, ...] = GENERATORS) -> str:
    """Validator for an options field: the name, or ValueError suggesting a close one."""
    if name not in known:
        raise ValueError(unknown_name_message("generator", name, known))
    return name


def generator_option(known: tuple[str, ...] = GENERATORS) -> AfterValidator:
    """The validation of an options field naming a generator among `known`:
    `netG: Annotated[str, generator_option()] = "unet_256"`."""
    return AfterValidator(partial(known_generator, known=known))
