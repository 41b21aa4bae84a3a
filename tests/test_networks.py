"""models.networks: reference parameter counts, shapes, size errors, blur layers, z injection.

The expected parameter counts were obtained by building the reference implementations'
networks (pytorch-CycleGAN-and-pix2pix, contrastive-unpaired-translation, BicycleGAN)
with the same arguments; our networks are built on the meta device (no memory, no run).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.networks import (
    ImageSizeError,
    UnknownNetworkError,
    check_image_size,
    count_parameters,
    define_discriminator,
    define_encoder,
    define_generator,
    define_z_generator,
    init_weights,
)
from models.networks.layers import BlurDownsample, BlurUpsample

REFERENCE_COUNTS = [
    # (what, builder, reference parameter count)
    (
        "resnet_9blocks ngf64 batch 3->3",
        lambda: define_generator("resnet_9blocks", 3, 3, 64, "batch"),
        11_383_427,
    ),
    (
        "resnet_9blocks ngf64 instance 3->3",
        lambda: define_generator("resnet_9blocks", 3, 3, 64, "instance"),
        11_378_179,
    ),
    (
        "resnet_6blocks ngf64 instance 3->3",
        lambda: define_generator("resnet_6blocks", 3, 3, 64, "instance"),
        7_837_699,
    ),
    ("unet_256 ngf64 batch 3->3", lambda: define_generator("unet_256", 3, 3, 64, "batch", True), 54_413_955),
    ("unet_128 ngf64 batch 3->3", lambda: define_generator("unet_128", 3, 3, 64, "batch", True), 41_828_995),
    (
        "CUT resnet_9blocks antialiased",
        lambda: define_generator("resnet_9blocks", 3, 3, 64, "instance", antialias=True),
        11_378_179,
    ),
    ("PatchGAN basic 6ch ndf64 batch", lambda: define_discriminator("basic", 6, 64, 3, "batch"), 2_768_705),
    (
        "PatchGAN basic 3ch ndf64 instance",
        lambda: define_discriminator("basic", 3, 64, 3, "instance"),
        2_764_737,
    ),
    (
        "PatchGAN n_layers=5 6ch batch",
        lambda: define_discriminator("n_layers", 6, 64, 5, "batch"),
        11_159_361,
    ),
    ("PixelGAN 6ch batch", lambda: define_discriminator("pixel", 6, 64, 3, "batch"), 9_024),
    (
        "BicycleGAN G unet_256 input",
        lambda: define_z_generator("unet_256", 3, 3, 8, 64, where_add="input"),
        54_417_795,
    ),
    (
        "BicycleGAN G unet_256 all",
        lambda: define_z_generator("unet_256", 3, 3, 8, 64, where_add="all"),
        54_794_627,
    ),
    ("BicycleGAN E resnet_256", lambda: define_encoder("resnet_256", 3, 8, 64), 2_590_032),
    ("BicycleGAN E resnet_128", lambda: define_encoder("resnet_128", 3, 8, 64), 1_344_080),
    (
        "BicycleGAN D basic_256_multi",
        lambda: define_discriminator("basic_256_multi", 3, 64, norm="instance"),
        3_458_978,
    ),
]


@pytest.mark.parametrize(
    ("what", "build", "expected"), REFERENCE_COUNTS, ids=[r[0] for r in REFERENCE_COUNTS]
)
def test_parameter_counts_equal_the_reference(what: str, build, expected: int) -> None:  # type: ignore[no-untyped-def]
    assert count_parameters(build) == expected


def test_middle_injection_adds_only_nz_bottleneck_inputs() -> None:
    base = count_parameters(lambda: define_z_generator("unet_256", 1, 3, 0, 64, where_add="middle"))
    middle = count_parameters(lambda: define_z_generator("unet_256", 1, 3, 8, 64, where_add="middle"))
    # one transposed 4x4 conv gains 8 input channels: 8 * 512 * 4 * 4 weights
    assert middle - base == 8 * 512 * 16


@pytest.mark.parametrize("name", ["unet_128", "resnet_9blocks", "resnet_6blocks"])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_generator_shapes(name: str, norm: str) -> None:
    g = define_generator(name, 1, 2, 4, norm)  # type: ignore[arg-type]
    size = 128 if name.startswith("unet") else 32
    y = g(torch.rand(2, 1, size, size))
    assert y.shape == (2, 2, size, size)
    assert y.abs().max() <= 1  # tanh


def test_antialiased_resnet_and_nce_features() -> None:
    g = define_generator("resnet_9blocks", 3, 2, 4, "instance", antialias=True)
    x = torch.rand(1, 3, 32, 32)
    layers = [0, 4, 8, 12, 16]
    out, feats = g.forward_features(x, layers)
    assert out.shape == (1, 2, 32, 32)
    assert [f.shape[1] for f in feats] == g.feature_channels(layers) == [3, 8, 16, 16, 16]
    enc = g.encode(x, layers)
    assert all(torch.equal(a, b) for a, b in zip(enc, feats, strict=True))
    assert torch.equal(g(x), out)


def test_unet_dropout_levels() -> None:
    g = define_generator("unet_256", 1, 3, 4, "batch", dropout=True)
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) == 3  # num_downs - 5


@pytest.mark.parametrize("name", ["basic", "n_layers", "pixel", "basic_256_multi", "basic_128"])
def test_discriminator_shapes(name: str) -> None:
    d = define_discriminator(name, 4, 4, 2, "instance")
    out = d(torch.rand(2, 4, 64, 64))
    outs = out if isinstance(out, list) else [out]
    assert all(o.shape[0] == 2 and o.shape[1] == 1 for o in outs)


def test_image_size_errors_are_one_line_and_say_what_to_do() -> None:
    g = define_generator("unet_256", 1, 3, 4)
    with pytest.raises(ImageSizeError) as info:
        check_image_size(g, 128, 128)
    msg = str(info.value)
    assert "\n" not in msg and "256" in msg and "crop_size" in msg and "unet_128" in msg
    check_image_size(g, 256, 512)
    with pytest.raises(ImageSizeError, match="multiples of 4"):
        check_image_size(define_generator("resnet_6blocks", 1, 3, 4), 30, 30)
    with pytest.raises(ImageSizeError, match="at least"):
        check_image_size(define_discriminator("basic", 3, 4), 16, 16, "netD")


def test_unknown_network_suggests_a_close_name() -> None:
    with pytest.raises(UnknownNetworkError, match="did you mean 'unet_256'"):
        define_generator("unet256", 1, 3)
    with pytest.raises(UnknownNetworkError, match="did you mean 'resnet_9blocks'"):
        define_generator("resnet9", 1, 3)
    with pytest.raises(UnknownNetworkError, match="unknown discriminator"):
        define_discriminator("patch", 3)


@pytest.mark.parametrize("kind", ["normal", "xavier", "kaiming", "orthogonal"])
def test_init_types(kind: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(8, 64, 3), nn.BatchNorm2d(64), nn.ConvTranspose2d(64, 8, 3), nn.Linear(8, 64)
    )
    init_weights(net, kind, 0.02)  # type: ignore[arg-type]
    net.requires_grad_(False)
    conv, bn, convt, lin = net
    assert all(float(m.bias.abs().max()) == 0 for m in (conv, convt, lin))
    assert abs(float(bn.weight.mean()) - 1) < 0.02 and float(bn.bias.abs().max()) == 0
    if kind == "normal":
        assert abs(float(conv.weight.std()) - 0.02) < 0.003
    if kind == "orthogonal":
        w = conv.weight.flatten(1)  # 64 rows of 72: orthogonal rows scaled by the gain
        assert torch.allclose(w @ w.T, 0.02**2 * torch.eye(64), atol=1e-5)


def test_blur_downsample_is_the_binomial_filter_with_reflect_padding() -> None:
    x = torch.rand(2, 3, 10, 14, dtype=torch.float64)
    k = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    filt = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), filt, stride=2, groups=3)
    assert torch.allclose(BlurDownsample(3)(x), expected)


def test_blur_upsample_is_the_transposed_binomial_filter() -> None:
    # CUT's definition: replicate-pad by 1, transposed conv with [1,3,3,1] x [1,3,3,1] / 16
    # (scaled by stride^2), stride 2, padding 2, then drop the first and last row/column.
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    filt = (k[:, None] * k[None, :] / 64 * 4).expand(3, 1, 4, 4)
    y = F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), filt, stride=2, padding=2, groups=3)
    expected = y[:, :, 1:-1, 1:-1]
    assert torch.allclose(BlurUpsample(3)(x), expected)


# --------------------------------------------------------------------------- BicycleGAN's z
@pytest.mark.parametrize("where", ["input", "all", "middle"])
def test_z_enters_where_claimed(where: str) -> None:
    torch.manual_seed(0)
    g = define_z_generator("unet_128", 1, 2, 8, 4, where_add=where, init_type="normal")  # type: ignore[arg-type]
    g.eval()
    consumers = g.z_consumers()
    expected = {"input": 1, "all": 7, "middle": 1}[where]
    assert len(consumers) == expected
    x = torch.rand(2, 1, 128, 128)
    z1, z2 = torch.randn(2, 8), torch.randn(2, 8)

    # the consuming layers see z tiled in their last nz input channels
    seen: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, inp, s=chans: seen.append(inp[0][:, s]))
        for layer, chans in consumers
    ]
    with torch.no_grad():
        y1 = g(x, z1)
    for h in hooks:
        h.remove()
    assert len(seen) == expected
    for i, block in enumerate(seen):
        tiled = z1.view(2, 8, 1, 1).expand_as(block)
        # in `all` mode the inner levels see z through their LeakyReLU, as in the reference
        want = F.leaky_relu(tiled, 0.2) if where == "all" and i > 0 else tiled
        assert torch.allclose(block, want)
    with torch.no_grad():
        assert (g(x, z2) - y1).abs().max() > 1e-4  # z changes the output

    # with the weights that read z zeroed, z has no effect at all
    with torch.no_grad():
        for layer, chans in consumers:
            if isinstance(layer, nn.ConvTranspose2d):
                layer.weight[chans] = 0  # (in, out, kh, kw)
            else:
                layer.weight[:, chans] = 0  # (out, in, kh, kw)
        assert torch.equal(g(x, z1), g(x, z2))


def test_where_add_middle_is_only_the_bottleneck() -> None:
    g = define_z_generator("unet_128", 1, 2, 8, 4, where_add="middle")
    ((layer, _),) = g.z_consumers()
    assert layer is next(m for m in g.ups[-1] if isinstance(m, nn.ConvTranspose2d))
    assert all(not flag for flag in g.z_at_level)


def test_encoder_outputs_mu_and_logvar_at_any_multiple_of_its_depth() -> None:
    e = define_encoder("resnet_256", 3, 8, 4)
    for size in (64, 256):
        mu, logvar = e(torch.rand(2, 3, size, size))
        assert mu.shape == logvar.shape == (2, 8)
