"""models.networks.winograd: the F(2x2, 3x3) convolution equals direct convolution,
forward and backward (input, weight and bias gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.networks import winograd
from models.networks.winograd import Conv3x3, winograd_conv3x3


@pytest.mark.parametrize(("n", "c", "k", "size"), [(1, 3, 5, 6), (2, 4, 3, 8), (3, 2, 2, 4)])
def test_matches_direct_convolution_and_its_gradients(n: int, c: int, k: int, size: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(n, c, size + 2, size + 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(k, c, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(k, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(n, k, size, size, dtype=torch.float64)
    direct = F.conv2d(x, w, b)
    grads_direct = torch.autograd.grad(direct, (x, w, b), gy)
    ours = winograd_conv3x3(x, w, b)
    grads_ours = torch.autograd.grad(ours, (x, w, b), gy)
    assert torch.allclose(ours, direct, atol=1e-12)
    for a, g in zip(grads_ours, grads_direct, strict=True):
        assert torch.allclose(a, g, atol=1e-10)


def test_float32_rounding_only() -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 16, 18, 18)
    w = torch.randn(16, 16, 3, 3) * 0.1
    assert ((winograd_conv3x3(x, w) - F.conv2d(x, w)).abs().max() / F.conv2d(x, w).abs().max()) < 1e-5


def test_layer_uses_winograd_only_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = winograd.winograd_conv3x3
    monkeypatch.setattr(winograd, "winograd_conv3x3", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)
    layer = Conv3x3(4, 4)
    x = torch.randn(1, 4, 10, 10, requires_grad=True)
    y = layer(x)
    assert calls == [1]
    assert torch.allclose(y, F.conv2d(x, layer.weight, layer.bias), atol=1e-5)
    y.sum().backward()
    layer(torch.randn(1, 4, 9, 9))  # odd output size: direct convolution
    winograd.set_enabled(False)
    try:
        layer(x)
    finally:
        winograd.set_enabled(True)
    assert calls == [1]
    assert dict(layer.state_dict()).keys() == {"weight", "bias"}
