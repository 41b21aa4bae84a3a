"""models.colour: sRGB <-> CIE L*a*b* against skimage, round trips, normalisation, gray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import lab2rgb, rgb2lab

from models.colour import (
    ColourSpace,
    denormalise_lab,
    gray_to_lightness,
    lab_to_rgb,
    normalise_lab,
    rgb_to_gray,
    rgb_to_lab,
)


def _nchw_to_hwc(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).double().numpy()


@pytest.fixture(scope="module")
def rgb() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 40, 50, generator=g, dtype=torch.float64)
    x[..., :2, :] = 0.0  # exact black
    x[..., 2:4, :] = 1.0  # exact white
    x[..., 4, :5] = 0.03  # below the sRGB linear threshold
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rgb_to_lab_matches_skimage(rgb: torch.Tensor, dtype: torch.dtype) -> None:
    ours = rgb_to_lab(rgb.to(dtype))
    expected = rgb2lab(_nchw_to_hwc(rgb))
    assert ours.dtype == dtype
    assert np.abs(_nchw_to_hwc(ours) - expected).max() < 1e-3


def test_lab_to_rgb_matches_skimage_including_out_of_gamut() -> None:
    g = torch.Generator().manual_seed(1)
    lab = torch.stack(
        [
            torch.rand(30, 30, generator=g) * 100,
            torch.rand(30, 30, generator=g) * 200 - 100,
            torch.rand(30, 30, generator=g) * 200 - 100,
        ]
    )[None].double()
    ours = lab_to_rgb(lab)
    with pytest.warns(UserWarning):  # skimage warns about the clipped (out-of-gamut) values
        expected = lab2rgb(_nchw_to_hwc(lab))
    assert np.abs(_nchw_to_hwc(ours) - expected).max() < 1e-3
    assert ours.min() >= 0 and ours.max() <= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip(rgb: torch.Tensor, dtype: torch.dtype) -> None:
    x = rgb.to(dtype)
    assert (lab_to_rgb(rgb_to_lab(x)) - x).abs().max() < 1e-4


def test_batched_any_leading_dims_and_half_precision(rgb: torch.Tensor) -> None:
    batch = torch.cat([rgb, rgb.flip(-1)]).float()
    lab = rgb_to_lab(batch)
    assert lab.shape == batch.shape
    assert torch.allclose(lab[1], rgb_to_lab(batch[1:])[0])
    half = rgb_to_lab(batch.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16  # computed in float32, returned as given
    assert (half.float() - lab).abs().max() < 1.0  # bfloat16 output rounding only


def test_differentiable_and_finite_at_extremes() -> None:
    x = torch.tensor([0.0, 0.002, 0.5, 1.0], dtype=torch.float64).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    x = x.clone().requires_grad_(True)
    rgb_to_lab(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    y = torch.rand(1, 3, 3, 3, dtype=torch.float64) * 0.8 + 0.1
    assert torch.autograd.gradcheck(rgb_to_lab, (y.requires_grad_(),))
    lab = rgb_to_lab(y.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(lab_to_rgb, (lab,))


def test_gray_lightness_is_the_L_of_the_neutral_colour() -> None:
    gray = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(gray_to_lightness(gray), rgb_to_lab(gray.expand(-1, 3, -1, -1))[:, :1], atol=1e-9)


def test_normalisation_is_the_reference_colorization_mode() -> None:
    lab = torch.tensor([0.0, -110.0, 110.0]).view(1, 3, 1, 1)
    assert normalise_lab(lab).flatten().tolist() == [-1.0, -1.0, 1.0]
    lab = torch.tensor([100.0, 55.0, -22.0]).view(1, 3, 1, 1)
    assert torch.allclose(normalise_lab(lab).flatten(), torch.tensor([1.0, 0.5, -0.2]))
    assert torch.allclose(denormalise_lab(normalise_lab(lab)), lab)


def test_rgb_to_gray_rec601_torch_and_numpy() -> None:
    rgb = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]).view(3, 1, 3).expand(3, 2, 3)
    gray = rgb_to_gray(rgb)
    assert gray.shape == (1, 2, 3)
    assert torch.allclose(gray[0, 0], torch.tensor([0.299, 0.587, 0.114]))
    arr = (np.random.default_rng(0).random((3, 4, 4)) * 255).astype(np.uint8)
    expected = 0.299 * arr[0] + 0.587 * arr[1] + 0.114 * arr[2]
    assert np.allclose(rgb_to_gray(arr)[0], expected, atol=1e-3)
    assert torch.allclose(rgb_to_gray(rgb, luma="rec709")[0, 0], torch.tensor([0.2126, 0.7152, 0.0722]))
    with pytest.raises(ValueError, match="unknown luma"):
        rgb_to_gray(rgb, luma="srgb")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["rgb", "lab"])
def test_colour_space_domains(name: str) -> None:
    cs = ColourSpace(name)  # type: ignore[arg-type]
    rgb = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    gray = rgb_to_gray(rgb)
    b = cs.encode_rgb(rgb)
    a = cs.encode_gray(gray)
    assert b.shape == (2, 3, 6, 6) and a.shape == (2, 1, 6, 6)
    assert a.abs().max() <= 1 + 1e-9 and b[:, :1].abs().max() <= 1 + 1e-9
    assert (cs.decode(b) - rgb).abs().max() < 1e-4
    out = torch.zeros(2, cs.out_channels, 6, 6, dtype=torch.float64)
    assembled = cs.assemble(a, out)
    assert assembled.shape == (2, 3, 6, 6)
    if name == "lab":
        assert torch.equal(assembled[:, :1], a)  # output keeps the input's L exactly
        assert torch.equal(cs.colour_as_gray(b), b[:, :1])
        # a gray input shown as colour decodes to gray
        shown = cs.decode(cs.gray_as_colour(a))
        assert (shown - gray.expand(-1, 3, -1, -1)).abs().max() < 1e-3
    else:
        assert torch.allclose(cs.colour_as_gray(b), rgb_to_gray(rgb) * 2 - 1)
        assert torch.equal(cs.gray_as_colour(a)[:, 2:], a)
    assert cs.chroma(b).shape[1] == cs.out_channels


def test_unknown_colour_space() -> None:
    with pytest.raises(ValueError, match="unknown color_space"):
        ColourSpace("hsv")  # type: ignore[arg-type]
