"""models.registry: models by name, option resolution (precedence, presets, errors)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.registry import get_model_class, model_names, resolve_options
from models.variants.cut import FastCUTOptions
from pipeline.core.config import ConfigError, TrainPreset

CPU_PRESET = TrainPreset(
    crop_size=128, load_size=256, width_scale=0.25, steps=10, decay_steps=10, unet="unet_128"
)
FULL_PRESET = TrainPreset(crop_size=256, load_size=286, width_scale=1.0, epochs=1, decay_epochs=1)


def test_names() -> None:
    assert {"pix2pix", "cyclegan", "cut", "fastcut", "bicyclegan"} <= set(model_names())


def test_unknown_model_suggests_a_name() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_options("cylegan", ablation_name="x", ablation={})
    msg = str(info.value)
    assert "ablations.x.model" in msg and "did you mean 'cyclegan'" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="did you mean 'pix2pix'"):
        get_model_class("pix2pics")


def test_unknown_option_names_the_ablation_key_and_the_closest_option() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_options("pix2pix", ablation_name="p2p_lab", ablation={"lamda_L1": 50})
    msg = str(info.value)
    assert "`ablations.p2p_lab.lamda_L1` is not a valid key" in msg
    assert "`ablations.p2p_lab.lambda_L1`" in msg


def test_unknown_option_in_train_defaults_is_named_there() -> None:
    with pytest.raises(ConfigError, match=r"`train.defaults.ngff`"):
        resolve_options("cyclegan", ablation_name="c", ablation={}, shared={"ngff": 32})


def test_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_options("cut", ablation_name="c", ablation={"gan_mode": "hinge"})
    assert "`ablations.c.gan_mode` must be one of" in str(info.value)
    with pytest.raises(ConfigError, match="did you mean 'unet_256'"):
        resolve_options("pix2pix", ablation_name="p", ablation={"netG": "unet256"})
    with pytest.raises(ConfigError, match="nce_layers"):
        resolve_options("cut", ablation_name="c", ablation={"nce_layers": "0,four"})


def test_precedence_reference_preset_shared_ablation() -> None:
    opts = resolve_options(
        "pix2pix", ablation_name="p", ablation={"lr": 1e-3}, shared={"lr": 5e-4, "beta1": 0.9}
    )
    assert opts.lr == 1e-3 and opts.beta1 == 0.9 and opts.lambda_L1 == 100.0
    assert resolve_options("pix2pix", ablation_name="p", ablation={}).netG == "unet_256"


def test_width_scale_and_preset_unet() -> None:
    p2p = resolve_options("pix2pix", ablation_name="p", ablation={"ngf": 128, "ndf": 32}, preset=CPU_PRESET)
    assert (p2p.ngf, p2p.ndf, p2p.netG) == (32, 8, "unet_128")
    cyc = resolve_options("cyclegan", ablation_name="c", ablation={}, preset=CPU_PRESET)
    assert (cyc.ngf, cyc.ndf, cyc.netG) == (16, 16, "resnet_9blocks")
    bic = resolve_options("bicyclegan", ablation_name="b", ablation={}, preset=CPU_PRESET)
    assert (bic.ngf, bic.ndf, bic.nef, bic.netG, bic.netE) == (16, 16, 16, "unet_128", "resnet_128")
    full = resolve_options("bicyclegan", ablation_name="b", ablation={}, preset=FULL_PRESET)
    assert (full.nef, full.netG, full.netE) == (64, "unet_256", "resnet_256")
    explicit = resolve_options(
        "pix2pix", ablation_name="p", ablation={"netG": "resnet_9blocks"}, preset=CPU_PRESET
    )
    assert explicit.netG == "resnet_9blocks"


def test_options_are_frozen() -> None:
    opts = resolve_options("fastcut", ablation_name="f", ablation={})
    assert isinstance(opts, FastCUTOptions)
    with pytest.raises(ValidationError) as info:
        opts.lambda_NCE = 1.0
    assert [(e["type"], e["loc"]) for e in info.value.errors()] == [("frozen_instance", ("lambda_NCE",))]
    assert opts.lambda_NCE == 10.0
