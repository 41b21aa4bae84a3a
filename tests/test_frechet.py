"""Fréchet distance: eigenvalue route against scipy's sqrtm and closed-form answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from eval.frechet import feature_statistics, frechet_distance, frechet_distance_from_features


def _sqrtm_reference(mu1, s1, mu2, s2) -> float:
    """The textbook route: principal square root of the (non-symmetric) product S1 S2."""
    covmean = linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean).real)


def _random_spd(rng: np.random.Generator, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + rng.standard_normal(d)
    return feature_statistics(x)


def test_feature_statistics_float64_and_unbiased() -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.mean(axis=0))
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(x[:1])


def test_agrees_with_scipy_sqrtm_on_random_features() -> None:
    rng = np.random.default_rng(0)
    mu1, s1 = _random_spd(rng, 64, 400)
    mu2, s2 = _random_spd(rng, 64, 400)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = _sqrtm_reference(mu1, s1, mu2, s2)
    assert ours > 0
    assert abs(ours - ref) <= 1e-6 * abs(ref)


def test_identical_statistics_give_zero() -> None:
    rng = np.random.default_rng(1)
    mu, s = _random_spd(rng, 32, 200)
    value = frechet_distance(mu, s, mu, s)
    assert 0.0 <= value <= 1e-9 * np.trace(s)


def test_equal_covariances_give_squared_mean_difference() -> None:
    rng = np.random.default_rng(2)
    mu1, s = _random_spd(rng, 16, 100)
    mu2 = mu1 + rng.standard_normal(16)
    expected = float(np.sum((mu1 - mu2) ** 2))
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(expected, rel=1e-8, abs=1e-9 * np.trace(s))


@pytest.mark.parametrize("a", [0.25, 2.0, 9.0])
def test_scaled_covariance_closed_form(a: float) -> None:
    rng = np.random.default_rng(3)
    mu, s = _random_spd(rng, 24, 120)
    expected = (1.0 - np.sqrt(a)) ** 2 * np.trace(s)
    assert frechet_distance(mu, s, mu, a * s) == pytest.approx(expected, rel=1e-8)


def test_rank_deficient_covariances_stay_finite_and_non_negative() -> None:
    rng = np.random.default_rng(4)
    d = 128
    f1 = rng.standard_normal((20, d))  # N < d: covariance rank 19
    f2 = rng.standard_normal((30, d)) + 0.1
    value = frechet_distance_from_features(f1, f2)
    assert np.isfinite(value) and value >= 0
    # identical rank-deficient sets: exactly the zero case, no NaN from sqrt of -eps
    assert 0 <= frechet_distance_from_features(f1, f1) <= 1e-9 * np.trace(np.cov(f1, rowvar=False))
    # symmetric in its arguments (the eigen route is applied to S1 only)
    assert frechet_distance_from_features(f2, f1) == pytest.approx(value, rel=1e-7)


def test_rank_deficient_matches_feature_space_reference() -> None:
    """With S = A^T A (A: N x d centred features / sqrt(N-1)), tr sqrt(S1 S2) is the nuclear
    norm of the small N1 x N2 matrix A1 A2^T: an independent reference free of the
    ~1e-16 noise eigenvalues that a d x d route must suppress."""
    rng = np.random.default_rng(6)
    d = 256
    basis = rng.standard_normal((64, d)) / np.arange(1, 65)[:, None]
    f1 = np.abs(rng.standard_normal((40, 64)) @ basis + 0.05 * rng.standard_normal((40, d)))
    f2 = np.abs(rng.standard_normal((50, 64)) @ basis + 0.05 * rng.standard_normal((50, d)) + 0.05)
    a1 = (f1 - f1.mean(axis=0)) / np.sqrt(len(f1) - 1)
    a2 = (f2 - f2.mean(axis=0)) / np.sqrt(len(f2) - 1)
    mu1, s1 = feature_statistics(f1)
    mu2, s2 = feature_statistics(f2)
    nuclear = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * nuclear)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_commuting_covariances_exact_trace() -> None:
    """S1, S2 sharing eigenvectors: tr sqrt(S1 S2) = sum sqrt(l1 l2), an exact answer."""
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    l1 = rng.uniform(0, 3, 40)
    l2 = rng.uniform(0, 3, 40)
    l1[:10] = 0.0  # singular directions
    s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
    mu = np.zeros(40)
    expected = l1.sum() + l2.sum() - 2 * np.sqrt(l1 * l2).sum()
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-10)


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))
