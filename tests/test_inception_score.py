"""Inception Score: closed-form answers and split handling."""

from __future__ import annotations

import numpy as np
import pytest

from eval.inception_score import inception_score, inception_score_from_probabilities, log_softmax


def test_uniform_predictions_score_one() -> None:
    score = inception_score(np.zeros((50, 1008)), splits=10)
    assert score.mean == pytest.approx(1.0, abs=1e-12)
    assert score.std == pytest.approx(0.0, abs=1e-12)
    assert score.max == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_balanced_one_hot_classes_score_k(k: int) -> None:
    labels = np.arange(10 * k) % k  # every contiguous split of size k holds each class once
    probs = np.eye(20)[labels]
    score = inception_score_from_probabilities(probs, splits=10, seed=None)
    assert score.mean == pytest.approx(k, rel=1e-12)
    assert score.max == pytest.approx(k, rel=1e-12)


def test_confident_logits_approach_k() -> None:
    k = 4
    logits = np.full((400, 1008), -30.0)
    logits[np.arange(400), np.arange(400) % k] = 30.0
    score = inception_score(logits, splits=10, seed=0)  # shuffled splits are nearly balanced
    assert 3.8 < score.mean <= 4.0 + 1e-9
    assert score.max <= 4.0 + 1e-9


def test_splits_when_n_not_divisible() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((23, 7)) * 3
    score = inception_score(logits, splits=10, seed=None)
    # split boundaries at i*N//splits: sizes 2 or 3, covering every sample once
    bounds = [(i * 23 // 10, (i + 1) * 23 // 10) for i in range(10)]
    assert sum(hi - lo for lo, hi in bounds) == 23
    p = np.exp(log_softmax(logits))
    manual = []
    for lo, hi in bounds:
        chunk = p[lo:hi]
        kl = (chunk * (np.log(chunk) - np.log(chunk.mean(axis=0)))).sum(axis=1)
        manual.append(np.exp(kl.mean()))
    assert score.mean == pytest.approx(np.mean(manual), rel=1e-12)
    assert score.std == pytest.approx(np.std(manual), rel=1e-10)
    assert score.max == pytest.approx(np.max(manual), rel=1e-12)
    with pytest.raises(ValueError, match="at least 10 samples"):
        inception_score(logits[:9], splits=10)


def test_shuffle_is_seeded_and_logits_match_probabilities() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((60, 12)) * 4
    a = inception_score(logits, splits=6, seed=3)
    assert a == inception_score(logits, splits=6, seed=3)
    b = inception_score_from_probabilities(np.exp(log_softmax(logits)), splits=6, seed=3)
    assert a.mean == pytest.approx(b.mean, rel=1e-10)
    one = inception_score(logits, splits=1)
    assert one.mean == pytest.approx(inception_score(logits, splits=1, seed=None).mean, rel=1e-12)


def test_huge_logits_are_stable() -> None:
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0]])
    score = inception_score(logits, splits=1)
    assert np.isfinite(score.mean) and score.mean == pytest.approx(2.0, rel=1e-9)
