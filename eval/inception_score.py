"""Inception Score: exp(E_x KL(p(y|x) || p(y))), averaged over splits.

Conventions (torch-fidelity's): class probabilities are the softmax of the logits, in
float64; the N samples are shuffled once (seeded) and cut into `splits` contiguous
parts at i*N//splits, so splits differ in size by at most one when N is not divisible;
p(y) is the mean of p(y|x) within each split. Mean and std (ddof=0) over splits are
reported, plus the max (the study this project grows from reported "IS max").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["InceptionScore", "inception_score", "inception_score_from_probabilities", "log_softmax"]


@dataclass(frozen=True)
class InceptionScore:
    mean: float
    std: float
    max: float
    splits: int


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _score_from_log_probs(log_p: np.ndarray, splits: int, seed: int | None) -> InceptionScore:
    n = log_p.shape[0]
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    if n < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} samples, got {n}")
    if seed is not None:
        log_p = log_p[np.random.default_rng(seed).permutation(n)]
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_chunk, log_chunk = p[lo:hi], log_p[lo:hi]
        marginal = p_chunk.mean(axis=0)
        # 0 * log 0 is 0: where p(y|x) underflowed to 0 the term vanishes.
        with np.errstate(divide="ignore", invalid="ignore"):
            log_marginal = np.log(marginal)
            terms = np.where(p_chunk > 0, p_chunk * (log_chunk - log_marginal), 0.0)
        scores.append(float(np.exp(terms.sum(axis=1).mean())))
    arr = np.asarray(scores)
    return InceptionScore(mean=float(arr.mean()), std=float(arr.std()), max=float(arr.max()), splits=splits)


def inception_score(logits: np.ndarray, *, splits: int = 10, seed: int | None = 0) -> InceptionScore:
    """IS from logits (N, classes). `seed=None` keeps the given order (no shuffle)."""
    arr = np.asarray(logits)
    if arr.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got shape {arr.shape}")
    return _score_from_log_probs(log_softmax(arr), splits, seed)


def inception_score_from_probabilities(probs: np.ndarray, *, splits: int = 10,
                                       seed: int | None = 0) -> InceptionScore:
    """IS from class probabilities (N, classes) whose rows sum to 1."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, classes), got shape {p.shape}")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("probabilities must be non-negative with rows summing to 1")
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    return _score_from_log_probs(log_p, splits, seed)
