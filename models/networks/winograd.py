"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3), for the CPU.

The same convolution computed with 2.25x fewer multiplications (Lavin & Gray 2016):
each 2x2 output tile is A^T [(G g G^T) * (B^T d B)] A, where d is the 4x4 input tile,
g the 3x3 filter and * an elementwise product summed over input channels (16 batched
matrix products). The backward pass is the exact adjoint of each step (so weight and
input gradients also take 16 matrix products). Results differ from direct
convolution only by float rounding (relative ~1e-6 in float32).

On this project's CPUs oneDNN's direct convolution is at the arithmetic peak, so the
saved multiplications make ResNet blocks' 256-channel convolutions (resnet_9blocks at
256 px: ~87% of the generator's work) about 30% faster forward and backward. With
fewer channels the transforms cost more than they save, so `Conv3x3` falls back to
the ordinary convolution below `MIN_CHANNELS` and on other devices (GPUs choose their
own algorithms). `set_enabled(False)` or the environment variable
LUMINESCENCE_WINOGRAD=0 turns it off.

The transforms are many small elementwise operations, each an OpenMP parallel
region: when other busy processes share the cores, OpenMP's spin-waiting at each
region's barrier costs more here than in one big convolution (measured: a 2-core
machine with one competing busy process made a resnet_9blocks forward+backward ~3x
slower than oneDNN's; with OMP_WAIT_POLICY=PASSIVE it stayed ~20% faster). Training
runs one at a time in the pipeline; set OMP_WAIT_POLICY=PASSIVE on shared machines.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

MIN_CHANNELS = 256  # measured crossover on 2-core AVX2 CPUs (128 channels: slower)
_enabled = os.environ.get("LUMINESCENCE_WINOGRAD", "1") != "0"

# F(2x2, 3x3) filter transform G (4x3); the input (B^T) and output (A^T) transforms are
# written out as additions below.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def set_enabled(enabled: bool) -> None:
    """Use (True, default) or bypass the Winograd path in `Conv3x3` layers."""
    global _enabled
    _enabled = enabled


def _filter_transform(w: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) -> (16, K, C): G g G^T per filter."""
    g = torch.tensor(_G, dtype=w.dtype, device=w.device)
    return torch.einsum("ip,kcpq,jq->ijkc", g, w, g).reshape(16, w.shape[0], w.shape[1])


def _filter_transform_adjoint(gu: torch.Tensor, k: int, c: int) -> torch.Tensor:
    g = torch.tensor(_G, dtype=gu.dtype, device=gu.device)
    return torch.einsum("ip,ijkc,jq->kcpq", g, gu.view(4, 4, k, c), g)


def _input_transform(x: torch.Tensor) -> torch.Tensor:
    """One image (1, C, 2h+2, 2w+2) -> (16, C, h*w): B^T d B for every 4x4 tile (stride 2)."""
    _, c, hp, wp = x.shape
    h, w = (hp - 2) // 2, (wp - 2) // 2
    v = x.new_empty(16, c, h, w)
    r0, r1, r2, r3 = (x[0, :, i : i + 2 * h : 2] for i in range(4))
    for i, t in enumerate((r0 - r2, r1 + r2, r2 - r1, r1 - r3)):
        c0, c1, c2, c3 = (t[..., j : j + 2 * w : 2] for j in range(4))
        torch.sub(c0, c2, out=v[4 * i])
        torch.add(c1, c2, out=v[4 * i + 1])
        torch.sub(c2, c1, out=v[4 * i + 2])
        torch.sub(c1, c3, out=v[4 * i + 3])
    return v.view(16, c, h * w)


def _input_transform_adjoint(gv: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(16, C, h*w) -> gradient of the image (1, C, 2h+2, 2w+2): B g B^T, tiles overlap-added."""
    c = gv.shape[1]
    g = gv.view(4, 4, c, h, w)
    cols = []
    for i in range(4):
        g0, g1, g2, g3 = g[i]
        cols.append((g0, g1 - g2 + g3, g1 + g2 - g0, -g3))
    rows = (
        cols[0],
        tuple(cols[1][j] - cols[2][j] + cols[3][j] for j in range(4)),
        tuple(cols[1][j] + cols[2][j] - cols[0][j] for j in range(4)),
        tuple(-cols[3][j] for j in range(4)),
    )
    gx = gv.new_zeros(1, c, 2 * h + 2, 2 * w + 2)
    for a in range(4):
        for b in range(4):
            gx[0, :, a : a + 2 * h : 2, b : b + 2 * w : 2] += rows[a][b]
    return gx


def _output_transform(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(16, K, h*w) -> one image (1, K, 2h, 2w): A^T m A per tile."""
    k = m.shape[1]
    m = m.view(4, 4, k, h, w)
    y = m.new_empty(1, k, h, 2, w, 2)
    for a, r in enumerate((m[0] + m[1] + m[2], m[1] - m[2] - m[3])):
        torch.add(r[0] + r[1], r[2], out=y[0, :, :, a, :, 0])
        torch.sub(r[1] - r[2], r[3], out=y[0, :, :, a, :, 1])
    return y.view(1, k, 2 * h, 2 * w)


def _output_transform_adjoint(gy: torch.Tensor) -> torch.Tensor:
    """Gradient of one output image (1, K, 2h, 2w) -> (16, K, h*w): A gy A^T per tile."""
    _, k, hh, ww = gy.shape
    h, w = hh // 2, ww // 2
    g = gy.view(k, h, 2, w, 2)
    g00, g01, g10, g11 = g[:, :, 0, :, 0], g[:, :, 0, :, 1], g[:, :, 1, :, 0], g[:, :, 1, :, 1]
    gm = gy.new_empty(4, 4, k, h, w)
    for i, (u, v) in enumerate(((g00, g01), (g00 + g10, g01 + g11), (g00 - g10, g01 - g11), (-g10, -g11))):
        gm[i, 0] = u
        torch.add(u, v, out=gm[i, 1])
        torch.sub(u, v, out=gm[i, 2])
        torch.neg(v, out=gm[i, 3])
    return gm.view(16, k, h * w)


class _WinogradConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        u = _filter_transform(weight)
        h, w = (x.shape[2] - 2) // 2, (x.shape[3] - 2) // 2
        # one image at a time: contiguous transforms, one batch of 16 products each
        parts = [_output_transform(torch.bmm(u, _input_transform(x[n : n + 1])), h, w) for n in range(len(x))]
        y = parts[0] if len(parts) == 1 else torch.cat(parts)
        if bias is not None:
            y += bias.view(1, -1, 1, 1)
        ctx.save_for_backward(x, u)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # torch's stubs type ctx as FunctionCtx, which lacks the backward context's fields
        x, u = ctx.saved_tensors  # type: ignore[attr-defined]
        # False for an input that is not a tensor, so also when there is no bias
        need_x, need_w, need_b = ctx.needs_input_grad  # type: ignore[attr-defined]
        gy = gy.contiguous()
        k, c = u.shape[1], u.shape[2]
        h, w = (x.shape[2] - 2) // 2, (x.shape[3] - 2) // 2
        gx = torch.empty_like(x) if need_x else None
        gu = x.new_zeros(16, k, c) if need_w else None
        ut = u.transpose(1, 2)
        for n in range(len(x)):
            gm = _output_transform_adjoint(gy[n : n + 1])
            if gx is not None:
                gx[n : n + 1] = _input_transform_adjoint(torch.bmm(ut, gm), h, w)
            if gu is not None:
                gu.baddbmm_(gm, _input_transform(x[n : n + 1]).transpose(1, 2))
        gw = _filter_transform_adjoint(gu, k, c) if gu is not None else None
        gb = gy.sum((0, 2, 3)) if need_b else None
        return gx, gw, gb


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """conv2d(x, weight, bias) for a 3x3 kernel, stride 1, no padding, even output size."""
    return _WinogradConv3x3.apply(x, weight, bias)


class Conv3x3(nn.Conv2d):
    """nn.Conv2d (3x3, stride 1, padding 0) that uses `winograd_conv3x3` where it is faster:
    on the CPU in float32, with >= MIN_CHANNELS input and output channels and an even
    output size. Same parameters, state dict and results up to rounding."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 3, bias=bias)

    def _use_winograd(self, x: torch.Tensor) -> bool:
        return (
            _enabled
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.dim() == 4
            and min(self.in_channels, self.out_channels) >= MIN_CHANNELS
            and x.shape[2] % 2 == 0
            and x.shape[3] % 2 == 0
            and not torch.is_autocast_enabled("cpu")
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_winograd(x):
            return winograd_conv3x3(x, self.weight, self.bias)
        return F.conv2d(x, self.weight, self.bias)
