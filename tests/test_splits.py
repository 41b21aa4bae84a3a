"""Spatial block splits: no leakage across the guard band, deterministic, stable as the AOI grows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pytest

from pipeline.core.config import SplitConfig
from pipeline.datasets.splits import GUARD, SplitPlan, block_of, block_uniform
from pipeline.datasets.storage import SPLITS
from pipeline.geo.tiles import TileId

Z = 18
X0, Y0 = 73500, 96700


def assign_splits(tiles: Iterable[TileId], cfg: SplitConfig) -> dict[TileId, str]:
    plan = SplitPlan(cfg)
    return {t: plan.assign(t) for t in tiles}


def split_counts(assignment: dict[TileId, str]) -> dict[str, int]:
    counts = dict.fromkeys((*SPLITS, GUARD), 0)
    for split in assignment.values():
        counts[split] += 1
    return counts


def _area(nx: int, ny: int, x0: int = X0, y0: int = Y0) -> list[TileId]:
    return [TileId(Z, x0 + i, y0 + j) for j in range(ny) for i in range(nx)]


@pytest.mark.parametrize("guard", [1, 2])
def test_guard_band_leaves_no_touching_tiles_in_different_splits(guard: int) -> None:
    cfg = SplitConfig(block_size=4 + 2 * guard, guard_band=guard, seed=3)
    assignment = assign_splits(_area(48, 40), cfg)
    kept = {t: s for t, s in assignment.items() if s != GUARD}
    assert {"train", "val", "test"} <= set(kept.values())
    for tile, split in kept.items():
        for dy in range(-guard, guard + 1):
            for dx in range(-guard, guard + 1):
                other = kept.get(TileId(Z, tile.x + dx, tile.y + dy))
                assert other is None or other == split, (tile, dx, dy)


def test_without_guard_band_blocks_are_whole_and_nothing_is_dropped() -> None:
    cfg = SplitConfig(block_size=4, guard_band=0, seed=0)
    assignment = assign_splits(_area(30, 30, X0 + 1, Y0 + 2), cfg)  # blocks cut by the AOI edge too
    assert GUARD not in assignment.values()
    by_block: dict[tuple[int, int], set[str]] = {}
    for tile, split in assignment.items():
        by_block.setdefault(block_of(tile, 4), set()).add(split)
    assert all(len(s) == 1 for s in by_block.values())
    assert {"train", "val", "test"} == set(assignment.values())


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    tiles = _area(40, 40)
    a = assign_splits(tiles, SplitConfig(seed=7))
    assert a == assign_splits(list(reversed(tiles)), SplitConfig(seed=7))
    assert a != assign_splits(tiles, SplitConfig(seed=8))


def test_stable_when_the_aoi_grows() -> None:
    cfg = SplitConfig(block_size=4, guard_band=1, seed=0)
    small = assign_splits(_area(9, 7, X0 + 13, Y0 + 5), cfg)
    big = assign_splits(_area(60, 50), cfg)
    assert all(big[t] == s for t, s in small.items())  # split and guard status both kept


def test_realised_fractions_are_close_on_a_large_aoi() -> None:
    cfg = SplitConfig(block_size=4, guard_band=0, seed=0)
    tiles = _area(200, 200)  # 2,500 blocks
    counts = split_counts(assign_splits(tiles, cfg))
    for split, expected in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        # sd of a block fraction is sqrt(p(1-p)/2500) <= 0.01: allow 4 sd
        assert counts[split] / len(tiles) == pytest.approx(expected, abs=0.04)


def test_block_numbers_are_uniform_and_thresholded() -> None:
    values = [block_uniform(0, Z, bx, by) for bx in range(60) for by in range(60)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert Counter(int(v * 10) for v in values).most_common()[-1][1] > 0.8 * len(values) / 10
    cfg = SplitConfig(train=1.0, val=0.0, test=0.0, guard_band=1)
    assert set(assign_splits(_area(20, 20), cfg).values()) == {"train"}


def test_zoom_is_part_of_the_key() -> None:
    plan = SplitPlan(SplitConfig(block_size=1, guard_band=0))
    same_xy = [(plan.split(TileId(17, x, 5)), plan.split(TileId(18, x, 5))) for x in range(200)]
    assert any(a != b for a, b in same_xy)


def test_guard_band_takes_the_lower_ranked_side_only() -> None:
    """test > val > train: test tiles are never discarded, train tiles only next to others."""
    cfg = SplitConfig(block_size=2, guard_band=1, seed=5)
    tiles = [TileId(16, x, y) for x in range(100, 140) for y in range(200, 240)]
    plan = SplitPlan(cfg)
    assignment = assign_splits(tiles, cfg)
    assert all(assignment[t] == "test" for t in tiles if plan.split(t) == "test")
    dropped = [t for t in tiles if assignment[t] == GUARD]
    assert dropped and all(plan.split(t) in ("train", "val") for t in dropped)
