"""Fréchet distance between two Gaussians fitted to feature sets (the distance behind FID).

    d² = |mu1 - mu2|² + tr S1 + tr S2 - 2 tr sqrt(S1 S2)

tr sqrt(S1 S2) is computed without a general matrix square root: S1 S2 is similar to
the symmetric PSD matrix M = sqrt(S1) S2 sqrt(S1), so its eigenvalues are M's, and
M's eigenvalues come from `eigvalsh`. Two symmetric eigendecompositions are faster and
steadier than `scipy.linalg.sqrtm` of the non-symmetric S1 S2 (no complex parts, no
"singular product" retries), and they stay finite for rank-deficient covariances.

Eigenvalues within rounding noise of 0 are set to 0, not just the negative ones: where
the exact eigenvalue is 0 (hundreds of them when N < d) rounding leaves residues of a
few machine epsilons times the largest eigenvalue, and their square roots (~1e-8 each)
would otherwise dominate the error (~1e-7 relative; this way ~1e-12, see
bench/eval_speed.py). The noise level is taken as 4 eps * largest eigenvalue, or twice
the largest negative eigenvalue's magnitude if that is larger (a PSD matrix has no
negative eigenvalues, so those are pure noise).
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["feature_statistics", "frechet_distance", "frechet_distance_from_features", "nuclear_norm"]


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of features (N, d), both float64.

    Needs N >= 2 (a covariance of one sample is undefined).
    """
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, d), got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"feature statistics need at least 2 samples, got {feats.shape[0]}")
    mu = feats.mean(axis=0)
    sigma = np.cov(feats, rowvar=False)
    return mu, np.atleast_2d(sigma)


def _clip_noise(eigenvalues: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues of a PSD matrix that are indistinguishable from rounding noise."""
    top = float(eigenvalues.max(initial=0.0))
    lowest = float(eigenvalues.min(initial=0.0))
    tol = max(4.0 * np.finfo(np.float64).eps * top, -2.0 * lowest)
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix: V diag(sqrt(w)) V^T, noise eigenvalues zeroed."""
    w, v = np.linalg.eigh(sigma)
    root = np.sqrt(_clip_noise(w))
    return (v * root) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2) for symmetric PSD S1, S2 via eigenvalues of sqrt(S1) S2 sqrt(S1)."""
    # One BLAS thread: on small shared machines multithreaded OpenBLAS eigensolvers spin
    # and ran >10x slower than one thread (measured: d=1280 eigh 5.7 s vs 0.46 s).
    with threadpool_limits(limits=1, user_api="blas"):
        root1 = _psd_sqrt(sigma1)
        m = root1 @ sigma2 @ root1
        m = 0.5 * (m + m.T)  # undo rounding asymmetry so eigvalsh sees a symmetric matrix
        eigs = _clip_noise(np.linalg.eigvalsh(m))
    return float(np.sqrt(eigs).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    The result is clipped at 0: rounding can push an exact 0 slightly negative.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}"
        )
    if not (np.all(np.isfinite(s1)) and np.all(np.isfinite(s2))):
        raise ValueError("covariance contains NaN or inf (features must be finite)")
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    diff = mu1 - mu2
    value = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * trace_sqrt_product(s1, s2)
    return max(value, 0.0)


def nuclear_norm(matrices: np.ndarray) -> np.ndarray:
    """Sum of singular values of each matrix of a stack (..., m, n), float64.

    On one thread: LAPACK's multithreaded SVD of small (~100 x 100) matrices spins, and ran
    15x slower in CPU time than one thread on our shared 2-core machine (1009 vs 67 ms for
    64 matrices of 108 x 108)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stack = torch.from_numpy(np.ascontiguousarray(matrices, dtype=np.float64))
        return torch.linalg.svdvals(stack).sum(-1).numpy()
    finally:
        torch.set_num_threads(threads)


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N1, d) and (N2, d).

    With fewer samples than dimensions (our test sets: N ~ 100-200, d = 2048) it is computed
    exactly from the N1 x N2 matrix of centred feature products instead of d x d covariances:
    with A, B the centred features / sqrt(N - 1), S1 = AᵀA and S2 = BᵀB, the non-zero
    eigenvalues of S1 S2 are those of (A Bᵀ)(A Bᵀ)ᵀ, so tr sqrt(S1 S2) is the nuclear norm of
    A Bᵀ, and tr S = |A|². Same value (to ~1e-12 relative), ~100x faster at d = 2048, and no
    d x d rounding noise to clip.
    """
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N, d) arrays of equal d, got {f1.shape} and {f2.shape}")
    if min(f1.shape[0], f2.shape[0]) >= f1.shape[1]:
        mu1, s1 = feature_statistics(f1)
        mu2, s2 = feature_statistics(f2)
        return frechet_distance(mu1, s1, mu2, s2)
    if f1.shape[0] < 2 or f2.shape[0] < 2:
        raise ValueError(f"feature statistics need at least 2 samples, got {f1.shape[0]} and {f2.shape[0]}")
    if not (np.all(np.isfinite(f1)) and np.all(np.isfinite(f2))):
        raise ValueError("features contain NaN or inf")
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a = (f1 - mu1) / np.sqrt(f1.shape[0] - 1)
    b = (f2 - mu2) / np.sqrt(f2.shape[0] - 1)
    diff = mu1 - mu2
    value = float(diff @ diff) + float(np.sum(a * a)) + float(np.sum(b * b)) \
        - 2.0 * float(nuclear_norm(a @ b.T))
    return max(value, 0.0)
