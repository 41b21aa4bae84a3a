"""GAN variants: every model trains on tiny tiles in RGB and Lab, keeps L in Lab mode,
colourises to valid RGB, uses its reference defaults, and implements WGAN-GP for real."""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import torch

from models.base import ModelOptions
from models.colour import gray_to_lightness, rgb_to_lab
from models.gan import ColourGAN
from models.registry import get_model_class, model_names

CPU = torch.device("cpu")
# tiny networks; U-Net models need 128-pixel tiles (unet_128), the others run at 32-64
TINY: dict[str, dict[str, Any]] = {
    "pix2pix": {"netG": "resnet_6blocks", "ngf": 4, "ndf": 4},
    "cyclegan": {"netG": "resnet_6blocks", "ngf": 4, "ndf": 4, "pool_size": 2},
    "cut": {"netG": "resnet_6blocks", "ngf": 4, "ndf": 4, "num_patches": 16},
    "fastcut": {"netG": "resnet_6blocks", "ngf": 4, "ndf": 4, "num_patches": 16},
    "bicyclegan": {"netG": "unet_128", "netE": "resnet_128", "ngf": 4, "ndf": 4, "nef": 4},
}
SIZE = {"pix2pix": 32, "cyclegan": 32, "cut": 32, "fastcut": 32, "bicyclegan": 128}


def make(name: str, **options: Any) -> ColourGAN:
    cls = get_model_class(name)
    model = cls(cls.Options(**{**TINY[name], **options}), CPU)
    assert isinstance(model, ColourGAN)
    return model


def batch(size: int, n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(n, 3, size, size, generator=g)
    gray = 0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:]
    return {"A": gray, "B": rgb}


def test_all_variants_registered() -> None:
    assert set(model_names()) >= {"pix2pix", "cyclegan", "cut", "fastcut", "bicyclegan"}


@pytest.mark.parametrize("name", sorted(TINY))
def test_opts_annotation_covers_the_options_class(name: str) -> None:
    """mypy reads a variant's fields through its `opts: XOptions` annotation; the registry
    builds `Options`. Every `Options` instance must be an `opts` type, or the checked
    field accesses would not be the ones that run."""
    cls = get_model_class(name)
    declared = typing.get_type_hints(cls)["opts"]
    assert declared is not ModelOptions, f"{cls.__name__} does not declare its options type"
    assert issubclass(cls.Options, declared)


EXPECTED_LOSSES = {
    "pix2pix": {"G_GAN", "G_L1", "D_real", "D_fake"},
    "cyclegan": {"D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B"},
    "cut": {"G_GAN", "D_real", "D_fake", "G", "NCE", "NCE_Y"},
    "fastcut": {"G_GAN", "D_real", "D_fake", "G", "NCE"},
    "bicyclegan": {"G_GAN", "D", "G_GAN2", "D2", "G_L1", "z_L1", "kl"},
}


@pytest.mark.parametrize("color_space", ["rgb", "lab"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_trains_a_few_steps_with_finite_losses(name: str, color_space: str) -> None:
    torch.manual_seed(0)
    model = make(name, color_space=color_space)
    data = batch(SIZE[name])
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in model.nets.items()}
    for _ in range(2):
        losses = model.train_step(data)
        assert set(losses) == EXPECTED_LOSSES[name]
        assert all(math.isfinite(v) for v in losses.values()), losses
    for key, net in model.nets.items():
        moved = any(not torch.equal(a, b) for a, b in zip(before[key], net.parameters(), strict=True))
        assert moved, f"{name}: {key} did not change"
    rgb = model.colourise(data["A"])
    assert rgb.shape == data["B"].shape and rgb.dtype == torch.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert all(net.training for net in model.nets.values())  # colourise restores train mode


@pytest.mark.parametrize("name", sorted(TINY))
def test_lab_output_keeps_the_input_lightness(name: str) -> None:
    torch.manual_seed(0)
    model = make(name, color_space="lab")
    data = batch(SIZE[name])
    model.train_step(data)
    out = model.translate(data["A"])
    a = model.codec.encode_gray(data["A"])
    assert torch.equal(out[:, :1], a)  # exactly the input's L
    # after conversion to RGB, L survives up to gamut clipping: compare where the colour is in gamut
    rgb = model.colourise(data["A"])
    light = rgb_to_lab(rgb)[:, :1]
    in_gamut = ((rgb > 1e-3) & (rgb < 1 - 1e-3)).all(1, keepdim=True)
    assert in_gamut.float().mean() > 0.5
    assert (light - gray_to_lightness(data["A"]))[in_gamut].abs().max() < 0.05


def test_wgangp_penalty_and_n_critic_schedule() -> None:
    torch.manual_seed(0)
    model = make("pix2pix", gan_mode="wgangp", n_critic=3, norm="instance")
    data = batch(32)

    def snapshot(net: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in net.parameters()]

    for step in range(6):
        g_before, d_before = snapshot(model.G), snapshot(model.D)
        losses = model.train_step(data)
        assert losses["D_GP"] > 0
        g_moved = any(not torch.equal(a, b) for a, b in zip(g_before, model.G.parameters(), strict=True))
        d_moved = any(not torch.equal(a, b) for a, b in zip(d_before, model.D.parameters(), strict=True))
        assert d_moved
        assert g_moved == (step % 3 == 2), step  # G after every third critic step
        assert ("G_GAN" in losses) == g_moved


@pytest.mark.parametrize("name", ["cyclegan", "cut", "bicyclegan"])
def test_wgangp_in_every_variant(name: str) -> None:
    torch.manual_seed(0)
    model = make(name, gan_mode="wgangp")
    losses = model.train_step(batch(SIZE[name]))
    gp = [v for k, v in losses.items() if k.endswith("GP")]
    assert gp and all(v > 0 for v in gp)
    assert all(math.isfinite(v) for v in losses.values())


def test_cyclegan_pool_state_survives_a_checkpoint() -> None:
    torch.manual_seed(0)
    model = make("cyclegan", pool_size=3)
    for seed in range(2):
        model.train_step(batch(32, seed=seed))
    state = model.state_dict()
    extra = state["extra"]
    assert all(isinstance(v, torch.Tensor) for v in extra.values())
    assert extra["pool_B.images"].shape == (3, 3, 32, 32)  # 2 steps x 2 images, capped at 3
    restored = make("cyclegan", pool_size=3)
    restored.load_state_dict(state)
    assert restored.iteration == 2
    assert all(torch.equal(a, b) for a, b in zip(model.pool_A.images, restored.pool_A.images, strict=True))
    # resumed training continues identically
    torch.manual_seed(5)
    a = model.train_step(batch(32, seed=9))
    torch.manual_seed(5)
    b = restored.train_step(batch(32, seed=9))
    assert a == b


@pytest.mark.parametrize("n", [1, 2, 3])
def test_bicyclegan_any_batch_size(n: int) -> None:
    torch.manual_seed(0)
    model = make("bicyclegan")
    losses = model.train_step(batch(128, n=n))
    assert all(math.isfinite(v) for v in losses.values())


def test_bicyclegan_colourise_samples_z() -> None:
    torch.manual_seed(0)
    model = make("bicyclegan", where_add="middle")
    model.train_step(batch(128))
    gray = batch(128)["A"]
    assert not torch.equal(model.colourise(gray), model.colourise(gray))  # a random mode each time


def test_image_size_error_from_train_step() -> None:
    from models.networks import ImageSizeError

    model = make("pix2pix", netG="unet_256")
    with pytest.raises(ImageSizeError, match="crop_size"):
        model.train_step(batch(128))


def test_unknown_generator_name_in_options() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="did you mean 'resnet_9blocks'"):
        get_model_class("cyclegan").Options(netG="resnet9blocks")


# --------------------------------------------------------------------------- reference defaults
REFERENCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pix2pix": dict(
        netG="unet_256",
        netD="basic",
        n_layers_D=3,
        ngf=64,
        ndf=64,
        norm="batch",
        dropout=True,
        gan_mode="vanilla",
        lambda_L1=100.0,
        init_type="normal",
        init_gain=0.02,
        lr=2e-4,
        beta1=0.5,
        beta2=0.999,
    ),
    "cyclegan": dict(
        netG="resnet_9blocks",
        netD="basic",
        ngf=64,
        ndf=64,
        norm="instance",
        dropout=False,
        gan_mode="lsgan",
        lambda_A=10.0,
        lambda_B=10.0,
        lambda_identity=0.5,
        pool_size=50,
        init_type="normal",
        init_gain=0.02,
        lr=2e-4,
        beta1=0.5,
    ),
    "cut": dict(
        netG="resnet_9blocks",
        netD="basic",
        norm="instance",
        dropout=False,
        init_type="xavier",
        init_gain=0.02,
        gan_mode="lsgan",
        lambda_GAN=1.0,
        lambda_NCE=1.0,
        nce_idt=True,
        nce_layers="0,4,8,12,16",
        nce_T=0.07,
        num_patches=256,
        netF="mlp_sample",
        netF_nc=256,
        flip_equivariance=False,
        antialias=True,
        lr=2e-4,
        beta1=0.5,
        beta2=0.999,
    ),
    "fastcut": dict(
        lambda_NCE=10.0, nce_idt=False, flip_equivariance=True, gan_mode="lsgan", num_patches=256, nce_T=0.07
    ),
    "bicyclegan": dict(
        netG="unet_256",
        nz=8,
        where_add="all",
        netE="resnet_256",
        nef=64,
        netD="basic_256_multi",
        netD2="basic_256_multi",
        num_Ds=2,
        norm="instance",
        dropout=False,
        init_type="xavier",
        gan_mode="lsgan",
        lambda_L1=10.0,
        lambda_kl=0.01,
        lambda_z=0.5,
        lambda_GAN=1.0,
        lambda_GAN2=1.0,
        conditional_D=False,
        use_same_D=False,
    ),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_DEFAULTS))
def test_defaults_equal_the_reference(name: str) -> None:
    opts = get_model_class(name).Options()
    for key, value in REFERENCE_DEFAULTS[name].items():
        assert getattr(opts, key) == value, (name, key)


def _doc_table() -> dict[str, dict[str, str]]:
    """docs/model-defaults.md: option -> {model: our default}."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "model-defaults.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    header = next(line for line in text.splitlines() if line.startswith("| option"))
    models = [h.strip() for h in header.strip("|").split("|")[1:]]
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        key = cells[0].strip("`")
        table[key] = dict(zip(models, cells[1:], strict=False))
    return table


def _ours(cell: str) -> str:
    """The cell's first value (ours); the reference's follows in parentheses when it differs."""
    return re.sub(r"\s*\(.*\)\s*$", "", cell).strip("` ")


def test_docs_table_lists_every_option_with_our_default() -> None:
    table = _doc_table()
    for name in ("pix2pix", "cyclegan", "cut", "fastcut", "bicyclegan"):
        options = get_model_class(name).Options.model_fields
        for key, field in options.items():
            assert key in table, f"docs/model-defaults.md misses `{key}`"
            cell = _ours(table[key][name])
            if cell == "-":
                continue
            default = field.default
            shown = (
                "null"
                if default is None
                else str(default).lower()
                if isinstance(default, bool)
                else str(default)
            )
            assert cell == shown, (name, key, cell, shown)
