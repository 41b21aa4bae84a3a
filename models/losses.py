"""Losses: adversarial (vanilla | lsgan | wgangp with a real gradient penalty) and
CUT's PatchNCE with its patch-sampling MLP head.

- `GANLoss(mode)(prediction, target_is_real)`: vanilla = BCE on logits, lsgan = MSE
  to 1/0, wgangp = -mean / +mean (the critic's score). A list of predictions (a
  multiscale discriminator) is summed, as BicycleGAN does.
- `gradient_penalty`: lambda_gp * E[(||grad_x D(x)||_2 - 1)^2] at random points x
  between real and fake images (Gulrajani et al. 2017). The pix2pix/CycleGAN/CUT
  references define such a function but never call it; our models add it to the
  discriminator loss whenever gan_mode is wgangp.
- `PatchSampleMLP` + `patch_nce_loss`: sample the same `num_patches` locations from
  the encoder features of the input and of the output, project each layer's features
  with a 2-layer MLP (256 channels) and L2-normalise; the InfoNCE loss with
  temperature nce_T treats the patch at the same location as the positive and the
  other patches of the same image as negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

GanMode = Literal["vanilla", "lsgan", "wgangp"]
Prediction = torch.Tensor | list[torch.Tensor]


class GANLoss:
    """Adversarial loss for a discriminator's prediction map(s)."""

    def __init__(self, mode: GanMode) -> None:
        if mode not in ("vanilla", "lsgan", "wgangp"):
            raise ValueError(f"unknown gan_mode '{mode}' (known: vanilla, lsgan, wgangp)")
        self.mode = mode

    def __call__(self, prediction: Prediction, target_is_real: bool) -> torch.Tensor:
        if isinstance(prediction, list | tuple):
            return torch.stack([self._one(p, target_is_real) for p in prediction]).sum()
        return self._one(prediction, target_is_real)

    def _one(self, pred: torch.Tensor, real: bool) -> torch.Tensor:
        pred = _atleast32(pred)
        if self.mode == "wgangp":
            return -pred.mean() if real else pred.mean()
        target = pred.new_tensor(1.0 if real else 0.0).expand_as(pred)
        if self.mode == "lsgan":
            return F.mse_loss(pred, target)
        return F.binary_cross_entropy_with_logits(pred, target)


def _atleast32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _score_sum(prediction: Prediction) -> torch.Tensor:
    if isinstance(prediction, list | tuple):
        return torch.stack([_atleast32(p).sum() for p in prediction]).sum()
    return _atleast32(prediction).sum()


def gradient_penalty(
    critic: Callable[[torch.Tensor], Prediction],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float = 10.0,
    target_norm: float = 1.0,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """weight * mean_i (||d critic(x_i) / d x_i||_2 - target_norm)^2, x_i = a_i real_i + (1 - a_i) fake_i.

    `alpha` (shape (B,)) defaults to uniform random numbers; the penalty is
    differentiable with respect to the critic's parameters (double backprop).
    """
    fake = fake.detach()
    if alpha is None:
        alpha = torch.rand(real.shape[0], device=real.device, dtype=real.dtype)
    a = alpha.view(-1, *([1] * (real.dim() - 1))).to(real.dtype)
    x = (a * real.detach() + (1 - a) * fake).requires_grad_(True)
    score = _score_sum(critic(x))
    (grad,) = torch.autograd.grad(score, x, create_graph=True)
    # sqrt(sum g^2 + eps): the norm's gradient stays finite where g = 0
    norm = (_atleast32(grad).flatten(1).pow(2).sum(1) + 1e-12).sqrt()
    return weight * (norm - target_norm).pow(2).mean()


class PatchSampleMLP(nn.Module):
    """CUT's netF: sample patch locations from each feature map, project with a
    2-layer MLP per layer (`mlp_sample`) or not at all (`sample`), L2-normalise.

    The MLPs are built eagerly from the known channel counts of the encoder layers
    (the reference builds them lazily on the first batch)."""

    def __init__(self, in_channels: Sequence[int], nc: int = 256, use_mlp: bool = True) -> None:
        super().__init__()
        self.use_mlp = use_mlp
        self.nc = nc
        self.mlps = nn.ModuleList(
            [nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)) for c in in_channels]
            if use_mlp
            else []
        )

    def forward(
        self, feats: Sequence[torch.Tensor], num_patches: int, patch_ids: Sequence[torch.Tensor] | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns ((B*num_patches, D) per layer, the sampled flat locations per layer).
        The same locations are used for every image of the batch (as the reference)."""
        out, ids = [], []
        for i, feat in enumerate(feats):
            _, c, h, w = feat.shape
            flat = feat.flatten(2)  # (B, C, H*W)
            if patch_ids is not None:
                idx = patch_ids[i]
            else:
                idx = torch.randperm(h * w, device=feat.device)[: min(num_patches, h * w)]
            x = flat[:, :, idx].transpose(1, 2).reshape(-1, c)  # (B*P, C), image-major
            if self.use_mlp:
                x = self.mlps[i](x)
            out.append(x / (x.norm(p=2, dim=1, keepdim=True) + 1e-7))
            ids.append(idx)
        return out, ids


def patch_nce_loss(
    feat_q: torch.Tensor,
    feat_k: torch.Tensor,
    batch_size: int,
    temperature: float = 0.07,
    negatives_from_minibatch: bool = False,
) -> torch.Tensor:
    """Per-patch InfoNCE loss, shape (B*P,). `feat_q`: projected output patches,
    `feat_k`: projected input patches (no gradient flows through the keys).

    Logits are [q.k+, q.k-...] / T; the positive is the key at the same location; the
    negatives are the other keys of the same image (or of the whole minibatch). A
    patch's similarity to its own key among the negatives is masked to -10, as the
    reference does."""
    feat_k = feat_k.detach()
    dim = feat_q.shape[1]
    l_pos = (feat_q * feat_k).sum(dim=1, keepdim=True)
    groups = 1 if negatives_from_minibatch else batch_size
    q = feat_q.view(groups, -1, dim)
    k = feat_k.view(groups, -1, dim)
    n = q.shape[1]
    l_neg = torch.bmm(q, k.transpose(1, 2))
    eye = torch.eye(n, device=q.device, dtype=torch.bool)
    l_neg = l_neg.masked_fill(eye, -10.0).view(-1, n)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target, reduction="none")
