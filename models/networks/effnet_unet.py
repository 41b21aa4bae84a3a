"""U-Net generators whose encoder is an ImageNet-pretrained EfficientNet-Lite1/Lite2
(`unet_effnet_lite1`, `unet_effnet_lite2`).

Lite0 is deliberately not offered: Lite0's features score the models (FD/KID/IS-EffNet,
eval/extractors.py), and a model must not be judged by its own features.

Input. The generator takes the model's own domain tensor (1 channel: gray*2-1 or L/50-1;
3 channels: RGB*2-1 or normalised L*a*b*, as CUT and CycleGAN's G_B feed it) and turns it
into what the encoder was trained on: sRGB in [0, 1] (gray replicated to three
channels), then the TF-Lite normalisation (255 x - 127) / 128. This step is
differentiable (CUT embeds generated images with the same encoder).

Encoder. The Lite stem and MBConv blocks with the package's weights (head and classifier
dropped). It taps the features at strides 2, 4, 8, 16 and 32 (the last block of each
resolution). `set_encoder_frozen` switches its parameters' gradients off (the warm-up)
and on; its batch norms keep the ImageNet running statistics while frozen, and
throughout when `freeze_bn` (batches of one or two crops give useless statistics).

Decoder. Per level, nearest-neighbour 2x upsampling (its backward is deterministic on
CUDA, unlike bilinear's), concatenation with the skip, and two 3x3 conv-norm-ReLU layers;
widths 4, 2, 1, 1/2, 1/2 x ngf from the deepest level up; the last level's skip is the
generator's input itself, so fine detail of the gray image reaches the output. A 3x3
convolution and tanh give `out_channels` (2 for a*b* in Lab mode).

CUT's PatchNCE reads encoder layers by index: 0 = the normalised encoder input,
1 = the stem, 1 + k = MBConv block k (k = 1 .. number of blocks), so the reference's
default `0,4,8,12,16` picks the input and four blocks spread over strides 4 to 16.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from models.colour import denormalise_lab, lab_to_rgb
from models.networks.efficientnet_lite import STEM_CHANNELS, EfficientNetLite, MBConv
from models.networks.layers import NormKind, conv_bias, norm_layer

InputSpace = Literal["rgb", "lab"]
EFFNET_GENERATORS: dict[str, str] = {"unet_effnet_lite1": "lite1", "unet_effnet_lite2": "lite2"}


class LiteEncoder(nn.Module):
    """The stem and MBConv blocks of an EfficientNet-Lite, with the packages' parameter names."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        full = EfficientNetLite(variant)
        self.variant = variant
        self._conv_stem = full._conv_stem
        self._bn0 = full._bn0
        self._blocks = full._blocks
        # The last block of each resolution: the features the decoder's skips take.
        strides = [cast(MBConv, b).stride for b in self._blocks] + [2]
        self.taps = [i for i in range(len(self._blocks)) if strides[i + 1] == 2]
        self.tap_channels: list[int] = [self.block(i).channels_out for i in self.taps]

    def block(self, i: int) -> MBConv:
        return cast(MBConv, self._blocks[i])

    def load_from(self, full: EfficientNetLite) -> None:
        """Copy the stem and blocks of a (pretrained) full network."""
        own = self.state_dict()
        own.update({k: v for k, v in full.state_dict().items() if k in own})
        self.load_state_dict(own, strict=True)

    def layer_channels(self) -> list[int]:
        """Channels of NCE layer i: 0 the input (3), 1 the stem, 1 + k block k."""
        return [3, STEM_CHANNELS] + [self.block(i).channels_out for i in range(len(self._blocks))]

    def forward(self, x: torch.Tensor, layers: Sequence[int] = ()) -> tuple[list[torch.Tensor],
                                                                            list[torch.Tensor]]:
        """(skip features at strides 2..32, features of the requested NCE layers)."""
        wanted = set(layers)
        nce = [x] if 0 in wanted else []
        x = F.relu6(self._bn0(self._conv_stem(x)))
        if 1 in wanted:
            nce.append(x)
        skips = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i + 2 in wanted:
                nce.append(x)
            if i in self.taps:
                skips.append(x)
        return skips, nce

    def encode(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Only the requested NCE layers' features; stops after the last of them."""
        wanted, last = set(layers), max(layers)
        out = [x] if 0 in wanted else []
        if last >= 1:
            x = F.relu6(self._bn0(self._conv_stem(x)))
            if 1 in wanted:
                out.append(x)
        for i, block in enumerate(self._blocks):
            if i + 2 > last:
                break
            x = block(x)
            if i + 2 in wanted:
                out.append(x)
        return out


class DecoderBlock(nn.Module):
    """Upsample 2x, concatenate the skip, two 3x3 conv-norm-ReLU (optionally dropout)."""

    def __init__(self, channels_in: int, skip: int, channels_out: int, norm: NormKind,
                 dropout: bool) -> None:
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(channels_in + skip, channels_out, 3, padding=1, bias=bias),
            norm_layer(norm, channels_out), nn.ReLU(True),
            nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=bias),
            norm_layer(norm, channels_out), nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.body(torch.cat([x, skip], 1))


class EffNetUnetGenerator(nn.Module):
    """See the module docstring. `pretrained=False` leaves the encoder randomly
    initialised (tests, parameter counting); generators built by `define_generator`
    always load the ImageNet weights."""

    size_multiple = 32

    def __init__(self, variant: str, in_channels: int, out_channels: int, ngf: int = 64,
                 norm: NormKind = "batch", dropout: bool = False, input_space: InputSpace = "rgb",
                 freeze_bn: bool = True) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"a pretrained-encoder generator takes 1 or 3 input channels, got {in_channels}")
        if input_space not in ("rgb", "lab"):
            raise ValueError(f"input_space must be 'rgb' or 'lab', got {input_space!r}")
        self.in_channels = in_channels
        self.input_space = input_space
        self.freeze_bn = freeze_bn
        self.encoder_frozen = False
        self.encoder = LiteEncoder(variant)
        widths = [4 * ngf, 2 * ngf, ngf, max(1, ngf // 2), max(1, ngf // 2)]
        skips = [*self.encoder.tap_channels[-2::-1], in_channels]  # strides 16, 8, 4, 2, then 1
        blocks: list[DecoderBlock] = []
        current = self.encoder.tap_channels[-1]
        for level, (skip, width) in enumerate(zip(skips, widths, strict=True)):
            blocks.append(DecoderBlock(current, skip, width, norm, dropout and level < 2))
            current = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.Conv2d(current, out_channels, 3, padding=1), nn.Tanh())

    # ------------------------------------------------------------------ input
    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """Domain tensor -> sRGB in [0, 1] (gray replicated) -> the TF-Lite normalisation."""
        if self.input_space == "rgb":
            rgb = (x + 1.0) * 0.5
        elif self.in_channels == 1:  # L/50 - 1 -> the sRGB gray of (L, 0, 0)
            lab = torch.cat([(x + 1.0) * 50.0, torch.zeros_like(x), torch.zeros_like(x)], 1)
            rgb = lab_to_rgb(lab)[:, :1]
        else:
            rgb = lab_to_rgb(denormalise_lab(x))
        rgb = rgb.clamp(0.0, 1.0)
        if rgb.shape[1] == 1:
            rgb = rgb.expand(-1, 3, -1, -1)
        return EfficientNetLite.normalise_rgb(rgb)

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor, layers: Sequence[int]
                         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The output and the requested NCE layers' features from the same pass."""
        skips, nce = self.encoder(self.encoder_input(x), layers)
        y = skips[-1]
        for block, skip in zip(self.decoder, [*skips[-2::-1], x], strict=True):
            y = block(y, skip)
        return self.head(y), nce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x, ())[0]

    def encode(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        return self.encoder.encode(self.encoder_input(x), layers)

    def feature_channels(self, layers: Sequence[int]) -> list[int]:
        channels = self.encoder.layer_channels()
        for i in layers:
            if not 0 <= i < len(channels):
                raise ValueError(f"nce layer {i} is outside the encoder (0..{len(channels) - 1})")
        return [channels[i] for i in layers]

    def min_size(self) -> int:
        return self.size_multiple

    # ------------------------------------------------------------------ fine-tuning
    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.decoder.parameters()
        yield from self.head.parameters()

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Frozen: no gradients for the encoder and its batch norms in eval mode."""
        if frozen == self.encoder_frozen:
            return
        self.encoder_frozen = frozen
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> EffNetUnetGenerator:
        super().train(mode)
        if mode and (self.encoder_frozen or self.freeze_bn):
            self.encoder.eval()  # keep the ImageNet batch-norm statistics
        return self
