"""Generators with an ImageNet-pretrained EfficientNet-Lite1/Lite2 encoder (netG unet_effnet_lite*)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from models.colour import ColourSpace
from models.networks import (
    GENERATORS,
    PRETRAINED_GENERATORS,
    check_image_size,
    count_parameters,
    define_generator,
)
from models.networks.efficientnet_lite import EfficientNetLite
from models.networks.effnet_unet import EffNetUnetGenerator
from models.networks.pretrained import LITE_WEIGHTS, lite_weights_path, load_lite
from models.registry import get_model_class, resolve_options
from models.weights import WeightsError
from pipeline.core.errors import ConfigError
from pipeline.inference.colourise import size_multiple

CAT_CLASSES = {281, 282, 285}  # ImageNet: tabby, tiger cat, Egyptian cat


def _model(name: str, **options: object) -> object:
    opts = resolve_options(name, ablation_name="x", ablation={"color_space": "lab", **options})
    return get_model_class(name)(opts, torch.device("cpu"))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pix2pix() -> object:
    torch.manual_seed(0)
    return _model("pix2pix", netG="unet_effnet_lite1", ngf=8, ndf=8, encoder_warmup_iters=2,
                  encoder_lr_scale=0.1)


# --------------------------------------------------------------------------- architecture and weights
@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_lite_architecture_fits_the_shipped_weights_and_recognises_a_cat(variant: str) -> None:
    net, sha = load_lite(variant)  # strict names and shapes, exact size and sha256
    assert sha == LITE_WEIGHTS[variant].sha256
    size = net.native_size
    cat = torch.from_numpy(data.chelsea()[:, 50:350].copy()).permute(2, 0, 1)[None].float() / 255
    x = EfficientNetLite.normalise_rgb(F.interpolate(cat, size=(size, size), mode="bilinear",
                                                      antialias=True))
    with torch.no_grad():
        top = int(net.eval()(x).argmax())
    assert top in CAT_CLASSES


def test_a_wrong_weights_file_is_refused(tmp_path: object) -> None:
    path = tmp_path / "lite1.pth"  # type: ignore[operator]
    raw = bytearray(lite_weights_path("lite1").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: same size, another sha256
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="sha256"):
        load_lite("lite1", path)


def test_lite0_is_not_offered_as_an_encoder() -> None:
    """Lite0 scores the models (FD-EffNet): a generator must not be judged by its own features."""
    assert set(PRETRAINED_GENERATORS) == {"unet_effnet_lite1", "unet_effnet_lite2"}
    assert not any("lite0" in g for g in GENERATORS)


def test_the_encoder_holds_the_imagenet_weights(pix2pix: object) -> None:
    g = pix2pix.G  # type: ignore[attr-defined]
    shipped = torch.load(lite_weights_path("lite1"), map_location="cpu", weights_only=True)
    own = g.encoder.state_dict()
    assert len(own) > 300
    for key, value in own.items():
        torch.testing.assert_close(value, shipped[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(("name", "in_ch", "out_ch", "space"), [
    ("unet_effnet_lite1", 1, 2, "lab"), ("unet_effnet_lite2", 3, 2, "lab"),
    ("unet_effnet_lite1", 3, 1, "rgb")])
def test_shapes(name: str, in_ch: int, out_ch: int, space: str) -> None:
    g = EffNetUnetGenerator(name.rsplit("_", 1)[1], in_ch, out_ch, ngf=8, input_space=space)  # type: ignore[arg-type]
    x = torch.rand(2, in_ch, 96, 64) * 2 - 1
    y = g(x)
    assert y.shape == (2, out_ch, 96, 64) and y.abs().max() <= 1
    layers = [0, 4, 8, 12, 16]  # CUT's default nce_layers index the encoder
    feats = g.encode(x, layers)
    assert [f.shape[1] for f in feats] == g.feature_channels(layers)
    out, same = g.forward_features(x, layers)
    torch.testing.assert_close(out, y)
    for a, b in zip(feats, same, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="outside the encoder"):
        g.feature_channels([99])
    with pytest.raises(Exception, match="multiples of 32"):
        check_image_size(g, 100, 64)
    assert size_multiple(name) == 32
    assert count_parameters(lambda: define_generator(name, 1, 2, 8, input_space="lab")) > 3_000_000


@pytest.mark.parametrize("space", ["rgb", "lab"])
def test_gray_reaches_the_encoder_replicated_and_normalised(space: str) -> None:
    g = EffNetUnetGenerator("lite1", 1, 2, ngf=8, input_space=space)  # type: ignore[arg-type]
    gray = torch.rand(1, 1, 32, 32)
    x = g.encoder_input(ColourSpace(space).encode_gray(gray))  # type: ignore[arg-type]
    assert x.shape == (1, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    torch.testing.assert_close(x[:, :1], (gray * 255 - 127) / 128, atol=2e-4, rtol=0)


# --------------------------------------------------------------------------- training behaviour
def test_encoder_frozen_during_warm_up_then_fine_tuned_slower(pix2pix: object) -> None:
    m = pix2pix
    g = m.G  # type: ignore[attr-defined]
    opt = m.optimizers["G"]  # type: ignore[attr-defined]
    lrs = sorted(group["lr"] for group in opt.param_groups)
    assert lrs == pytest.approx([2e-5, 2e-4])  # encoder at lr * encoder_lr_scale
    batch = {"A": torch.rand(1, 1, 64, 64), "B": torch.rand(1, 3, 64, 64)}
    enc0 = {k: v.clone() for k, v in g.encoder.state_dict().items()}
    dec0 = [p.detach().clone() for p in g.decoder_parameters()]
    m.train()  # type: ignore[attr-defined]
    for _ in range(2):  # warm-up: encoder_warmup_iters = 2
        m.train_step(batch)  # type: ignore[attr-defined]
        assert g.encoder_frozen and not any(p.requires_grad for p in g.encoder_parameters())
    enc_warm = g.encoder.state_dict()
    assert all(torch.equal(enc0[k], enc_warm[k]) for k in enc0)  # weights and BN statistics
    assert any(not torch.equal(a, b) for a, b in zip(dec0, g.decoder_parameters(), strict=True))
    m.train_step(batch)  # type: ignore[attr-defined]
    assert not g.encoder_frozen and all(p.requires_grad for p in g.encoder_parameters())
    after = g.encoder.state_dict()
    changed = [k for k in enc0 if not torch.equal(enc0[k], after[k])]
    assert any(k.endswith("_conv_stem.weight") for k in changed)
    # encoder_bn: frozen keeps the ImageNet running statistics while fine-tuning
    assert not any(k.endswith(("running_mean", "running_var")) for k in changed)
    assert not g.encoder.training and g.decoder.training


def test_lightness_is_the_inputs_exactly(pix2pix: object) -> None:
    gray = torch.rand(2, 1, 64, 64)
    out = pix2pix.translate(gray)  # type: ignore[attr-defined]
    assert out.shape == (2, 3, 64, 64)
    assert torch.equal(out[:, :1], ColourSpace("lab").encode_gray(gray))
    assert pix2pix.colourise(gray).shape == (2, 3, 64, 64)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["cut", "fastcut", "cyclegan"])
def test_unpaired_variants_take_the_pretrained_encoder(name: str) -> None:
    torch.manual_seed(0)
    m = _model(name, netG="unet_effnet_lite2", ngf=8, ndf=8, encoder_warmup_iters=1, netF_nc=16,
               num_patches=8) if "cut" in name else _model(name, netG="unet_effnet_lite2", ngf=8, ndf=8,
                                                           encoder_warmup_iters=1)
    batch = {"A": torch.rand(1, 1, 64, 64), "B": torch.rand(1, 3, 64, 64)}
    m.train()  # type: ignore[attr-defined]
    for _ in range(2):
        losses = m.train_step(batch)  # type: ignore[attr-defined]
        assert all(np.isfinite(v) for v in losses.values())
    gray = torch.rand(1, 1, 64, 64)
    assert torch.equal(m.translate(gray)[:, :1], ColourSpace("lab").encode_gray(gray))  # type: ignore[attr-defined]


def test_options_are_validated_with_the_params_key() -> None:
    with pytest.raises(ConfigError, match=r"ablations\.x\.netG.*color_space: lab"):
        resolve_options("pix2pix", ablation_name="x", ablation={"netG": "unet_effnet_lite1"})
    with pytest.raises(ConfigError, match=r"ablations\.x\.encoder_lr_scale"):
        resolve_options("pix2pix", ablation_name="x", ablation={"encoder_lr_scale": 0})
    with pytest.raises(ConfigError, match="did you mean 'unet_effnet_lite"):
        resolve_options("cut", ablation_name="x", ablation={"netG": "unet_effnet_lite", "color_space": "lab"})
    with pytest.raises(ConfigError, match=r"ablations\.x\.netG"):
        resolve_options("bicyclegan", ablation_name="x",
                        ablation={"netG": "unet_effnet_lite1", "color_space": "lab"})
