"""Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel.

k(x, y) = (x·y / d + 1)³. Each of `n_subsets` draws takes `min(subset_size, N1, N2)`
samples from each set without replacement; KID is the mean (and std) of the unbiased
MMD² estimates. Unlike FID it has an unbiased estimator, so it is the fairer number
for small sets (see docs/metrics.md).
"""

from __future__ import annotations

import numpy as np

__all__ = ["kernel_inception_distance", "polynomial_kernel", "unbiased_mmd2"]


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x·y / d + 1)³ for every row pair of x (n, d) and y (m, d), float64."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² between samples x (m, d) and y (n, d) under the polynomial kernel.

    Within-set kernel sums leave out the diagonal (i == j); the cross term uses all pairs.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD² needs at least 2 samples per set, got {m} and {n}")
    k_xx = polynomial_kernel(x, x)
    k_yy = polynomial_kernel(y, y)
    k_xy = polynomial_kernel(x, y)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    term_xy = k_xy.sum() / (m * n)
    return float(term_xx + term_yy - 2.0 * term_xy)


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, *, n_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of unbiased MMD² over `n_subsets` random subsets; seeded, float64.

    std is the population standard deviation over subsets (ddof=0, as torch-fidelity).
    """
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N, d) arrays of equal d, got {f1.shape} and {f2.shape}")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    size = min(subset_size, f1.shape[0], f2.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {f1.shape[0]} and {f2.shape[0]}")
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets, dtype=np.float64)
    for i in range(n_subsets):
        a = f1[rng.choice(f1.shape[0], size, replace=False)]
        b = f2[rng.choice(f2.shape[0], size, replace=False)]
        values[i] = unbiased_mmd2(a, b)
    return float(values.mean()), float(values.std())
