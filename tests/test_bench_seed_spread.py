"""bench/seed_spread.py: only the seed changes, and the spread is read against one run's interval."""

from __future__ import annotations

import pytest

from bench.seed_spread import SCORES, scores, seeded_params, spread_ratio


def test_seeded_params_change_only_the_training_seed() -> None:
    params = {"train": {"seed": 0, "preset": "cpu"}, "ablations": {"a": {"model": "pix2pix"}},
              "evaluate": {"seed": 0}}
    out = seeded_params(params, "a", 3)
    assert out["train"] == {"seed": 3, "preset": "cpu"}
    assert out["evaluate"] == {"seed": 0} and out["ablations"] == params["ablations"]
    assert params["train"]["seed"] == 0  # the original is left as it was
    with pytest.raises(SystemExit, match="'b' is not an ablation"):
        seeded_params(params, "b", 1)


def test_scores_read_values_and_intervals_of_both_areas() -> None:
    evaluation = {"areas": {
        "test": {"values": {"delta_e2000_mean": 4.7, "fid": 169.0},
                 "intervals": {"delta_e2000_mean": [4.4, 5.0], "fid": [158.0, 180.0]}},
        "heldout": {"values": {"delta_e2000_mean": 6.0, "fid": 236.0}, "intervals": {}}}}
    got = scores(evaluation)
    assert list(got) == [column for column, _, _ in SCORES]
    assert got["test ΔE2000"] == (4.7, (4.4, 5.0)) and got["held-out FID"] == (236.0, None)


def test_spread_ratio_is_the_seeds_range_over_the_interval_width() -> None:
    assert spread_ratio([4.37, 6.64, 6.02, 4.46], (5.84, 6.21)) == pytest.approx(2.27 / 0.37)
    assert spread_ratio([1.0, 1.0], (0.5, 1.5)) == 0.0
