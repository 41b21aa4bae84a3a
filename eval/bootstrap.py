"""Seeded bootstrap over tiles: confidence intervals for every metric, and for differences.

Every replicate b draws N tile indices with replacement, `indices(n, samples, seed)`, and
recomputes each metric on those tiles (prediction and target of a tile stay together).
The draws depend only on (N, samples, seed): two ablations scored on the same tiles get the
same draws, so the replicate-wise difference of their metrics is a *paired* bootstrap of
the difference (`difference_interval`): the tile-to-tile variation both share cancels.

Intervals:
- metrics that are means over tiles (ΔE2000, SSIM, colourfulness; PSNR from the mean
  squared error): the percentile interval of the replicates;
- FID and KID: the *centred* interval [θ + q_lo - m, θ + q_hi - m], m the replicates' mean.
  Resampling with replacement repeats about a third of the tiles, which inflates these
  small-N-biased distances in every replicate (measured: FID replicates ~15-20 above the
  point estimate at N = 108-152), so a percentile interval can lie entirely above θ. The
  centred interval keeps the replicates' spread (how much the number moves with the choice
  of tiles at this N) and places it around θ; it does not remove FID's small-N bias itself
  (compare FIDs only at equal N).
See docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from eval.frechet import nuclear_norm

Method = Literal["percentile", "centred"]
CHUNK = 64  # replicates per batched gather: (64, N, N) float64 stays ~10 MB at N = 150

__all__ = ["Interval", "difference_interval", "frechet_replicates", "indices", "interval",
           "kid_replicates", "mean_replicates", "verdict"]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def indices(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n) tile indices drawn with replacement from default_rng(seed)."""
    if n < 1 or samples < 1:
        raise ValueError(f"the bootstrap needs n >= 1 and samples >= 1, got {n} and {samples}")
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def interval(point: float, replicates: np.ndarray, *, confidence: float = 0.95,
             method: Method = "percentile") -> Interval:
    """Two-sided `confidence` interval from bootstrap replicates (NaNs are an error)."""
    reps = np.asarray(replicates, dtype=np.float64)
    if reps.ndim != 1 or reps.size == 0 or not np.all(np.isfinite(reps)):
        raise ValueError("bootstrap replicates must be a non-empty 1-D array of finite numbers")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    if method == "centred":
        shift = point - float(reps.mean())
        lo, hi = lo + shift, hi + shift
    return Interval(float(lo), float(hi))


def mean_replicates(per_tile: np.ndarray, idx: np.ndarray,
                    transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Replicates of the mean of a per-tile value (optionally transformed, e.g. MSE -> PSNR)."""
    means = np.asarray(per_tile, dtype=np.float64)[idx].mean(axis=1)
    return transform(means) if transform is not None else means


def _gather(k: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """k[idx_b][:, idx_b] for every replicate b of the chunk: (b, n, n)."""
    return k[idx[:, :, None], idx[:, None, :]]


def _double_centre(m: np.ndarray) -> np.ndarray:
    return (m - m.mean(axis=2, keepdims=True) - m.mean(axis=1, keepdims=True)
            + m.mean(axis=(1, 2), keepdims=True))


def frechet_replicates(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Fréchet distance of every replicate's tiles, features x (predictions) vs y (targets).

    From the N x N products of the features (see eval.frechet): for a replicate's tiles,
    |μx - μy|² = mean(Kxx + Kyy - Kxy - Kyx), tr S = trace of the double-centred K / (N - 1),
    tr sqrt(Sx Sy) = nuclear norm of the double-centred Kxy / (N - 1).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    kxx, kyy, kxy = x @ x.T, y @ y.T, x @ y.T
    n = idx.shape[1]
    out = np.empty(idx.shape[0])
    for start in range(0, idx.shape[0], CHUNK):
        part = idx[start:start + CHUNK]
        gxx, gyy, gxy = _gather(kxx, part), _gather(kyy, part), _gather(kxy, part)
        mean_term = (gxx.sum(axis=(1, 2)) + gyy.sum(axis=(1, 2)) - 2.0 * gxy.sum(axis=(1, 2))) / n**2
        trace_x = np.trace(_double_centre(gxx), axis1=1, axis2=2) / (n - 1)
        trace_y = np.trace(_double_centre(gyy), axis1=1, axis2=2) / (n - 1)
        cross = nuclear_norm(_double_centre(gxy)) / (n - 1)
        out[start:start + len(part)] = np.maximum(mean_term + trace_x + trace_y - 2.0 * cross, 0.0)
    return out


def kid_replicates(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Unbiased MMD² (KID's cubic kernel) of every replicate's tiles, on the whole resample."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    n = idx.shape[1]
    out = np.empty(idx.shape[0])
    for start in range(0, idx.shape[0], CHUNK):
        part = idx[start:start + CHUNK]
        gxx, gyy, gxy = _gather(kxx, part), _gather(kyy, part), _gather(kxy, part)
        within_x = (gxx.sum(axis=(1, 2)) - np.trace(gxx, axis1=1, axis2=2)) / (n * (n - 1))
        within_y = (gyy.sum(axis=(1, 2)) - np.trace(gyy, axis1=1, axis2=2)) / (n * (n - 1))
        out[start:start + len(part)] = within_x + within_y - 2.0 * gxy.mean(axis=(1, 2))
    return out


def difference_interval(point_a: float, replicates_a: np.ndarray, point_b: float,
                        replicates_b: np.ndarray, *, confidence: float = 0.95,
                        method: Method = "percentile") -> tuple[float, Interval]:
    """a - b and its paired bootstrap interval (both replicate sets from the same draws)."""
    ra, rb = np.asarray(replicates_a, dtype=np.float64), np.asarray(replicates_b, dtype=np.float64)
    if ra.shape != rb.shape:
        raise ValueError(f"paired replicates must have one shape, got {ra.shape} and {rb.shape}")
    diff = point_a - point_b
    return diff, interval(diff, ra - rb, confidence=confidence, method=method)


def verdict(difference: Interval, *, lower_is_better: bool) -> str:
    """'yes' when the treatment - control interval excludes 0 on the better side, 'no' when it
    excludes 0 on the worse side, 'inconclusive' when it covers 0."""
    if difference.covers(0.0):
        return "inconclusive"
    better = difference.high < 0 if lower_is_better else difference.low > 0
    return "yes" if better else "no"
