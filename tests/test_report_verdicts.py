"""The report's paired comparisons: verdicts from the bootstrap interval of a difference."""

from __future__ import annotations

import numpy as np

from eval.bootstrap import indices, mean_replicates
from pipeline.results.report import Entry, compare, fmt_ci


def _entry(name: str, per_tile: np.ndarray, *, tiles: str = "abc", seed: int = 0) -> Entry:
    idx = indices(len(per_tile), 500, seed)
    record = {"kind": "model", "bootstrap": {"seed": seed, "confidence": 0.95},
              "areas": {"test": {"n": len(per_tile), "tiles_sha256": tiles,
                                 "values": {"delta_e2000_mean": float(per_tile.mean())},
                                 "intervals": {}}}}
    return Entry(name=name, kind="model", model="pix2pix", dataset="gray", input="gray", synthetic=False,
                 options={}, record=record,
                 replicates={"test": {"delta_e2000_mean": mean_replicates(per_tile, idx)}})


def test_a_model_better_on_every_tile_is_a_yes_and_the_reverse_a_no() -> None:
    base = np.random.default_rng(0).uniform(5, 15, 100)
    better, worse = _entry("better", base - 0.3), _entry("worse", base + 0.3)
    control = _entry("control", base)
    yes = compare(better, control, "delta_e2000_mean", "ΔE00", True)
    no = compare(worse, control, "delta_e2000_mean", "ΔE00", True)
    assert yes is not None and yes.verdict == "yes" and yes.high < 0
    assert no is not None and no.verdict == "no" and no.low > 0
    assert "**yes**" in yes.text() and "-0.3" in yes.text()


def test_noise_is_inconclusive() -> None:
    rng = np.random.default_rng(1)
    a, b = _entry("a", rng.uniform(5, 15, 60)), _entry("b", rng.uniform(5, 15, 60))
    c = compare(a, b, "delta_e2000_mean", "ΔE00", True)
    assert c is not None and c.low < 0 < c.high and c.verdict == "inconclusive"


def test_results_on_other_tiles_or_draws_are_not_compared() -> None:
    base = np.linspace(1, 2, 50)
    other_tiles, other_draws = _entry("b", base, tiles="other"), _entry("c", base, seed=1)
    assert compare(_entry("a", base), other_tiles, "delta_e2000_mean", "ΔE00", True) is None
    assert compare(_entry("a", base), other_draws, "delta_e2000_mean", "ΔE00", True) is None


def test_values_are_shown_with_their_interval() -> None:
    assert fmt_ci(4.634, [4.412, 4.857]) == "4.63 [4.41, 4.86]"
    assert fmt_ci(None, None) == "—" and fmt_ci(0.9876, None) == "0.988"
