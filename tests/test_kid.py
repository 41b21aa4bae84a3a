"""KID: unbiased MMD² with the cubic polynomial kernel, against explicit double loops."""

from __future__ import annotations

import numpy as np
import pytest

from eval.kid import kernel_inception_distance, unbiased_mmd2


def _brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_unbiased_mmd2_matches_double_loops() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 5))
    y = rng.standard_normal((7, 5)) * 1.5 + 0.3
    assert unbiased_mmd2(x, y) == pytest.approx(_brute_force_mmd2(x, y), rel=1e-12)


def test_kid_with_full_set_subsets_equals_brute_force() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 6))
    y = rng.standard_normal((12, 6)) + 0.5
    mean, std = kernel_inception_distance(x, y, n_subsets=4, subset_size=1000, seed=0)
    assert mean == pytest.approx(_brute_force_mmd2(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set


def test_kid_is_seeded_and_separates_distributions() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((200, 16))
    b = rng.standard_normal((200, 16))
    c = rng.standard_normal((200, 16)) + 1.0
    same = kernel_inception_distance(a, b, n_subsets=20, subset_size=50, seed=7)
    assert same == kernel_inception_distance(a, b, n_subsets=20, subset_size=50, seed=7)
    assert same != kernel_inception_distance(a, b, n_subsets=20, subset_size=50, seed=8)
    shifted = kernel_inception_distance(a, c, n_subsets=20, subset_size=50, seed=7)
    assert abs(same[0]) < 3 * same[1] + 1e-3  # unbiased: centred near 0 for equal distributions
    assert shifted[0] > 10 * abs(same[0]) and shifted[0] > 0.1


def test_kid_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="equal d"):
        kernel_inception_distance(np.zeros((4, 3)), np.zeros((4, 2)))
