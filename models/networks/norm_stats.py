"""Instance norms with fixed statistics: gathered once over training data, then used for every input.

An instance norm normalises each image with its own mean and variance. For a model that
colourises a map window by window, that makes each window's colours depend on what else is in
the window, and the mosaic shows faint seams at window edges (docs/benchmarks/tile_seams.md:
5.45x more colour change across tile edges than inside tiles for the release model). With
statistics gathered over many training inputs and fixed afterwards, a norm becomes the same
per-channel affine map for every window, as batch norm is in eval mode.

Fixed statistics use PyTorch's own mechanism: `InstanceNorm2d` with `track_running_stats` uses
`running_mean`/`running_var` in eval mode. They are registered as non-persistent buffers, so a
network's `state_dict` (its weights) stays the same; model files carry them separately.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

NormStats = dict[str, dict[str, torch.Tensor]]  # norm's module name -> {"mean": (C,), "var": (C,)}


def instance_norms(net: nn.Module) -> dict[str, nn.InstanceNorm2d]:
    """A network's instance norms by module name, in module order."""
    return {name: m for name, m in net.named_modules() if isinstance(m, nn.InstanceNorm2d)}


class StatsGatherer:
    """Sums per-channel first and second moments of every instance norm's inputs, pooled over
    all images and pixels seen (so the variance includes the spread between images)."""

    def __init__(self, norms: dict[str, nn.InstanceNorm2d]) -> None:
        self._sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._images = 0
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in norms.items()]
        self._names = list(norms)

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def gather(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            # each image's mean and variance in the network's precision (two-pass, so no
            # cancellation), pooled over images in float64
            var, mean = torch.var_mean(args[0].detach(), dim=(2, 3), correction=0)
            mean, var = mean.double(), var.double()
            square = (var + mean * mean).sum(0)
            mean = mean.sum(0)
            old = self._sums.get(name)
            self._sums[name] = (mean, square) if old is None else (old[0] + mean, old[1] + square)
            if name == self._names[0]:
                self._images += args[0].shape[0]
        return gather

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def result(self) -> NormStats:
        """Each norm's pooled mean and variance (float32)."""
        missing = [n for n in self._names if n not in self._sums]
        if missing or self._images == 0:
            raise RuntimeError("no statistics gathered: run the network on some inputs while gathering")
        out: NormStats = {}
        for name in self._names:
            total, square = self._sums[name]
            mean = total / self._images
            var = (square / self._images - mean * mean).clamp(min=0.0)
            out[name] = {"mean": mean.float(), "var": var.float()}
        return out

    @property
    def images(self) -> int:
        return self._images


@contextmanager
def own_statistics(net: nn.Module) -> Iterator[None]:
    """Within the block, every instance norm of `net` normalises each input with its own statistics,
    even where statistics are fixed (PyTorch then also blends the inputs' statistics into the
    fixed ones, so those are put back afterwards)."""
    fixed = {m: (m.running_mean.clone(), m.running_var.clone())  # type: ignore[union-attr]
             for m in instance_norms(net).values() if m.track_running_stats and m.running_mean is not None}
    for m in fixed:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, (mean, var) in fixed.items():
            m.running_mean.copy_(mean)  # type: ignore[union-attr]
            m.running_var.copy_(var)  # type: ignore[union-attr]
            m.track_running_stats = True


@contextmanager
def gathering(net: nn.Module) -> Iterator[StatsGatherer]:
    """Within the block, every forward pass of `net` adds to the statistics of its instance norms,
    which normalise each input with its own statistics meanwhile (`own_statistics`)."""
    with own_statistics(net):
        gatherer = StatsGatherer(instance_norms(net))
        try:
            yield gatherer
        finally:
            gatherer.remove()


def check_norm_stats(net: nn.Module, stats: object) -> str:
    """Why `stats` cannot be fixed into `net` (names, shapes, values), briefly; "" when it fits."""
    norms = instance_norms(net)
    if not isinstance(stats, dict):
        return "not a mapping"
    missing = [n for n in norms if n not in stats]
    unexpected = [n for n in stats if n not in norms]
    if missing or unexpected:
        return (f"{len(missing)} instance norms without statistics, {len(unexpected)} unknown"
                f" (e.g. {(missing or unexpected)[0]!r})")
    for name, norm in norms.items():
        entry = stats[name]
        if not isinstance(entry, dict) or set(entry) != {"mean", "var"}:
            return f"{name}: expected 'mean' and 'var'"
        for key in ("mean", "var"):
            value = entry[key]
            if not isinstance(value, torch.Tensor) or value.shape != (norm.num_features,):
                return f"{name}.{key}: expected a tensor of shape ({norm.num_features},)"
            if not torch.isfinite(value).all():
                return f"{name}.{key}: not finite"
        if (entry["var"] < 0).any():
            return f"{name}.var: negative"
    return ""


def fix_norm_stats(net: nn.Module, stats: NormStats) -> None:
    """Make every instance norm of `net` use `stats` in eval mode (check with check_norm_stats)."""
    problem = check_norm_stats(net, stats)
    if problem:
        raise ValueError(f"norm statistics do not fit the network: {problem}")
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    for name, norm in instance_norms(net).items():
        norm.register_buffer("running_mean", stats[name]["mean"].float().to(device), persistent=False)
        norm.register_buffer("running_var", stats[name]["var"].float().to(device), persistent=False)
        norm.register_buffer("num_batches_tracked", torch.tensor(0, device=device), persistent=False)
        norm.track_running_stats = True


def fixed_norm_stats(net: nn.Module) -> NormStats | None:
    """The statistics fixed into `net` (None when its instance norms use each input's own)."""
    norms = instance_norms(net)
    if not norms or not all(m.track_running_stats and m.running_mean is not None for m in norms.values()):
        return None
    return {name: {"mean": m.running_mean.detach().cpu().clone(),  # type: ignore[union-attr]
                   "var": m.running_var.detach().cpu().clone()}  # type: ignore[union-attr]
            for name, m in norms.items()}


def spread(n: int, k: int) -> np.ndarray:
    """Up to `k` indices of `n` items, evenly spread from first to last (all when n <= k)."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def gray_batches(gray: np.ndarray, limit: int, batch_size: int) -> Iterator[torch.Tensor]:
    """(B, 1, H, W) float batches in [0, 1] of up to `limit` of the (N, H, W) uint8 gray windows,
    evenly spread over them: the inputs an area's statistics are gathered from."""
    picked = gray[spread(len(gray), limit)]
    for start in range(0, len(picked), batch_size):
        chunk = np.ascontiguousarray(picked[start:start + batch_size])
        yield torch.from_numpy(chunk).unsqueeze(1).float().div_(255.0)
