"""models.losses: GAN objectives, a real WGAN-GP gradient penalty, PatchNCE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.losses import GANLoss, PatchSampleMLP, gradient_penalty, patch_nce_loss


def test_gan_objectives() -> None:
    pred = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    assert torch.isclose(GANLoss("lsgan")(pred, True), ((pred - 1) ** 2).mean())
    assert torch.isclose(GANLoss("lsgan")(pred, False), (pred**2).mean())
    assert torch.isclose(GANLoss("vanilla")(pred, True), F.softplus(-pred).mean())
    assert torch.isclose(GANLoss("vanilla")(pred, False), F.softplus(pred).mean())
    assert torch.isclose(GANLoss("wgangp")(pred, True), -pred.mean())
    assert torch.isclose(GANLoss("wgangp")(pred, False), pred.mean())
    # a multiscale discriminator's maps are summed
    assert torch.isclose(
        GANLoss("lsgan")([pred, pred * 2], True),
        GANLoss("lsgan")(pred, True) + GANLoss("lsgan")(pred * 2, True),
    )
    with pytest.raises(ValueError, match="unknown gan_mode"):
        GANLoss("hinge")  # type: ignore[arg-type]


class LinearCritic(nn.Module):
    """D(x) = <w, x> + b per image: its input gradient is w everywhere."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1) + self.b


def test_gradient_penalty_of_a_linear_critic_is_analytic() -> None:
    torch.manual_seed(0)
    critic = LinearCritic((2, 3, 3))
    real, fake = torch.rand(4, 2, 3, 3, dtype=torch.float64), torch.rand(4, 2, 3, 3, dtype=torch.float64)
    gp = gradient_penalty(critic, real, fake, weight=10.0)
    expected = 10.0 * (critic.w.norm() - 1) ** 2
    assert gp.item() > 0
    assert torch.isclose(gp, expected)
    # and it trains the critic: d gp / d w = 20 (|w| - 1) w / |w|
    gp.backward()
    assert torch.allclose(critic.w.grad, 20 * (critic.w.norm() - 1) * critic.w / critic.w.norm())


def test_gradient_penalty_matches_finite_differences_on_a_tiny_conv_critic() -> None:
    torch.manual_seed(1)
    critic = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(3, 1, 3)).double()
    real, fake = torch.rand(2, 2, 5, 5, dtype=torch.float64), torch.rand(2, 2, 5, 5, dtype=torch.float64)
    alpha = torch.tensor([0.3, 0.8], dtype=torch.float64)
    gp = gradient_penalty(critic, real, fake, weight=10.0, alpha=alpha)
    # numerical input gradient of the summed critic score at each interpolate
    eps, norms = 1e-6, []
    for i in range(2):
        x = alpha[i] * real[i] + (1 - alpha[i]) * fake[i]
        grad = torch.zeros_like(x)
        for j in range(x.numel()):
            d = torch.zeros(x.numel(), dtype=torch.float64)
            d[j] = eps
            d = d.view_as(x)
            with torch.no_grad():
                grad.view(-1)[j] = (critic((x + d)[None]).sum() - critic((x - d)[None]).sum()) / (2 * eps)
        norms.append(grad.norm())
    expected = 10.0 * sum((n - 1) ** 2 for n in norms) / 2
    assert float(gp.detach()) > 0
    assert math.isclose(float(gp.detach()), float(expected), rel_tol=1e-6)


def test_gradient_penalty_reaches_critic_parameters() -> None:
    critic = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 1, 3))
    gp = gradient_penalty(critic, torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), weight=10.0)
    gp.backward()
    # (biases get none: with ReLU the input gradient does not depend on them)
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in (critic[0], critic[2]))


def _nce_by_hand(q: torch.Tensor, k: torch.Tensor, batch: int, t: float) -> torch.Tensor:
    """Per-patch loss written out: -log softmax of the positive among [own key, other keys of the image]."""
    per_image = q.shape[0] // batch
    out = []
    for i in range(q.shape[0]):
        img = i // per_image
        keys = k[img * per_image : (img + 1) * per_image]
        j = i - img * per_image
        pos = q[i] @ k[i]
        neg = keys @ q[i]
        neg[j] = -10.0  # own location among the negatives: masked as the reference does
        logits = torch.cat([pos[None], neg]) / t
        out.append(-torch.log_softmax(logits, 0)[0])
    return torch.stack(out)


def test_patch_nce_matches_the_written_out_definition() -> None:
    torch.manual_seed(0)
    q = F.normalize(torch.randn(2 * 6, 5, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(2 * 6, 5, dtype=torch.float64), dim=1)
    ours = patch_nce_loss(q, k, batch_size=2, temperature=0.07)
    assert ours.shape == (12,)
    assert torch.allclose(ours.double(), _nce_by_hand(q, k, 2, 0.07))


def test_patch_nce_prefers_matching_patches_and_blocks_key_gradients() -> None:
    torch.manual_seed(0)
    k = F.normalize(torch.randn(16, 8), dim=1)
    q_match = k.clone().requires_grad_(True)
    q_random = F.normalize(torch.randn(16, 8), dim=1)
    keys = k.clone().requires_grad_(True)
    matched = patch_nce_loss(q_match, keys, 1, 0.07).mean()
    assert matched < patch_nce_loss(q_random, k, 1, 0.07).mean()
    matched.backward()
    assert q_match.grad is not None and keys.grad is None  # no gradient through the keys
    assert patch_nce_loss(q_random, k, 2, 0.07, negatives_from_minibatch=True).shape == (16,)


def test_patch_sample_mlp() -> None:
    torch.manual_seed(0)
    head = PatchSampleMLP([3, 8], nc=16)
    feats = [torch.rand(2, 3, 10, 10), torch.rand(2, 8, 5, 5)]
    out, ids = head(feats, num_patches=12)
    assert [o.shape for o in out] == [(24, 16), (24, 16)]
    assert torch.allclose(out[0].norm(dim=1), torch.ones(24), atol=1e-5)
    assert len(set(ids[0].tolist())) == 12
    again, _ = head(feats, num_patches=12, patch_ids=ids)
    assert all(torch.equal(a, b) for a, b in zip(again, out, strict=True))
    # fewer locations than patches: all of them
    out, ids = head([torch.rand(1, 3, 2, 2)], num_patches=12)
    assert out[0].shape == (4, 16)
    plain = PatchSampleMLP([3], use_mlp=False)
    assert not list(plain.parameters())
    assert plain([torch.rand(1, 3, 4, 4)], 5)[0][0].shape == (5, 3)
