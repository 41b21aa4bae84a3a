"""The seeded tile bootstrap on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from eval import bootstrap
from eval.bootstrap import difference_interval, frechet_replicates, indices, interval, kid_replicates, verdict
from eval.frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from eval.kid import unbiased_mmd2


def test_indices_are_seeded_and_depend_only_on_n_samples_seed() -> None:
    a, b = indices(50, 200, 3), indices(50, 200, 3)
    assert np.array_equal(a, b) and a.shape == (200, 50) and a.min() >= 0 and a.max() < 50
    assert not np.array_equal(a, indices(50, 200, 4))


def test_constant_metric_gives_a_zero_width_interval() -> None:
    per_tile = np.full(40, 4.63)
    reps = bootstrap.mean_replicates(per_tile, indices(40, 500, 0))
    ci = interval(4.63, reps)
    assert ci.low == pytest.approx(4.63, abs=1e-12) and ci.high == pytest.approx(4.63, abs=1e-12)


def test_interval_covers_the_mean_at_about_the_stated_rate() -> None:
    """Over many samples of a known distribution the 95% interval covers the true mean ~95%."""
    rng = np.random.default_rng(1)
    idx = indices(60, 400, 0)
    hits = 0
    for _ in range(200):
        x = rng.normal(10.0, 2.0, 60)
        hits += interval(x.mean(), bootstrap.mean_replicates(x, idx)).covers(10.0)
    assert 0.88 <= hits / 200 <= 0.99


def test_shifted_copy_difference_excludes_zero_and_paired_draws_cancel_noise() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(5.0, 3.0, 108)  # large tile-to-tile spread
    shifted = base + 0.5  # every tile 0.5 worse: a real, small difference
    idx = indices(108, 1000, 0)
    diff, ci = difference_interval(shifted.mean(), bootstrap.mean_replicates(shifted, idx),
                                   base.mean(), bootstrap.mean_replicates(base, idx))
    assert diff == pytest.approx(0.5) and ci.low == pytest.approx(0.5) and ci.high == pytest.approx(0.5)
    assert verdict(ci, lower_is_better=True) == "no" and verdict(ci, lower_is_better=False) == "yes"
    # Unpaired (independent draws) the same shift is lost in the tile-to-tile noise.
    _, unpaired = difference_interval(shifted.mean(), bootstrap.mean_replicates(shifted, idx),
                                      base.mean(), bootstrap.mean_replicates(base, indices(108, 1000, 9)))
    assert unpaired.covers(0.0)


def test_noisy_difference_is_inconclusive() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 80), rng.normal(0, 1, 80)
    idx = indices(80, 1000, 0)
    _, ci = difference_interval(a.mean(), bootstrap.mean_replicates(a, idx), b.mean(),
                                bootstrap.mean_replicates(b, idx))
    assert ci.covers(0.0) and verdict(ci, lower_is_better=True) == "inconclusive"


def test_frechet_replicates_equal_the_direct_computation() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 64)), rng.normal(0.3, 1.2, size=(30, 64))
    idx = indices(30, 5, 0)
    reps = frechet_replicates(x, y, idx)
    for b in range(5):
        mu1, s1 = feature_statistics(x[idx[b]])
        mu2, s2 = feature_statistics(y[idx[b]])
        assert reps[b] == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-9)
    # The identity draw reproduces the point estimate.
    ident = frechet_replicates(x, y, np.arange(30)[None, :])[0]
    assert ident == pytest.approx(frechet_distance_from_features(x, y), rel=1e-12)


def test_kid_replicates_equal_the_direct_computation() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(25, 16)), rng.normal(0.2, 1.0, size=(25, 16))
    ident = kid_replicates(x, y, np.arange(25)[None, :])[0]
    assert ident == pytest.approx(unbiased_mmd2(x, y), rel=1e-12)
    perm = np.random.default_rng(0).permutation(25)  # a draw without repeats: same sets
    assert kid_replicates(x, y, perm[None, :])[0] == pytest.approx(ident, rel=1e-12)


def test_gram_route_frechet_equals_the_covariance_route() -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(40, 300)), rng.normal(0.1, 1.1, size=(55, 300))
    mu1, s1 = feature_statistics(x)
    mu2, s2 = feature_statistics(y)
    assert frechet_distance_from_features(x, y) == pytest.approx(frechet_distance(mu1, s1, mu2, s2),
                                                                 rel=1e-9)


def test_centred_interval_keeps_the_spread_around_the_point() -> None:
    reps = np.array([11.0, 12.0, 13.0, 14.0, 15.0] * 20)  # replicates biased above a point of 10
    ci = interval(10.0, reps, method="centred", confidence=0.8)
    pct = interval(10.0, reps, method="percentile", confidence=0.8)
    assert pct.low > 10.0  # the percentile interval misses the point estimate entirely
    assert ci.covers(10.0) and ci.high - ci.low == pytest.approx(pct.high - pct.low)
    assert ci.low == pytest.approx(pct.low - 3.0)  # shifted by point - mean of the replicates


def test_bad_replicates_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        interval(1.0, np.array([1.0, np.nan]))
