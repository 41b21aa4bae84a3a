"""A view's tiles as columns x rows: the same tiles, in the same order, as listing every tile
mercantile finds and keeping those that meet the view's rectangle, without listing them."""

from __future__ import annotations

import random

import mercantile
import pytest
from shapely.geometry import box

from models.networks.norm_stats import spread
from pipeline.app.views import spread_tiles
from pipeline.geo.tiles import TileId, tile_bounds_3857, tile_rect


def to_3857(bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    (left, bottom), (right, top) = mercantile.xy(*bbox[:2]), mercantile.xy(*bbox[2:])
    return left, bottom, right, top


def listed(bounds_3857: tuple[float, float, float, float], bbox: tuple[float, float, float, float],
           zoom: int) -> list[TileId]:
    """The listing the grid replaces (row order, as the area sample reads it)."""
    rect = box(*bounds_3857)
    tiles = [TileId(t.z, t.x, t.y) for t in mercantile.tiles(*bbox, zoom)]
    return sorted((t for t in tiles if rect.intersects(box(*tile_bounds_3857(t)))), key=lambda t: (t.y, t.x))


@pytest.mark.parametrize("seed", range(40))
def test_grid_holds_the_listed_tiles_in_row_order(seed: int) -> None:
    rng = random.Random(seed)
    zoom = rng.choice([12, 16, 18, 19])
    w, s = rng.uniform(-120, 120), rng.uniform(-60, 60)
    size = 10 ** rng.uniform(-4.5, -2)  # a few tiles to a few hundred a side
    bbox = (w, s, w + size * rng.uniform(0.3, 3), s + size * rng.uniform(0.3, 3))
    if seed % 4 == 0:  # a view's own rectangle, edges exactly on tile lines
        t = mercantile.tile(w, s, zoom)
        sw, ne = mercantile.bounds(t.x, t.y, t.z), mercantile.bounds(t.x + 3, t.y - 2, t.z)
        bbox = (sw.west, sw.south, ne.east, ne.north)
    bounds = to_3857(bbox)
    if seed % 4 == 1:  # the view's rectangle inside the box asked for: edge tiles are dropped
        left, bottom, right, top = bounds
        dx, dy = (right - left) * 0.2, (top - bottom) * 0.2
        bounds = (left + dx, bottom + dy, right - dx, top - dy)
    grid = tile_rect(bounds, bbox, zoom)
    expected = listed(bounds, bbox, zoom)
    assert grid.tiles() == expected
    assert len(grid) == len(expected)
    picks = spread(len(expected), 32)
    assert spread_tiles(grid, 32) == [expected[i] for i in picks]


def test_a_large_area_is_counted_and_sampled_without_listing_it() -> None:
    bbox = (121.0, 24.5, 121.8, 25.3)  # about 80 km a side: 1.5 million tiles at zoom 19
    grid = tile_rect(to_3857(bbox), bbox, 19)
    assert len(grid) > 1_000_000
    sample = spread_tiles(grid, 32)
    assert len(sample) == 32 and sample[0] == grid.tile_at(0) and sample[-1] == grid.tile_at(len(grid) - 1)
    assert len({(t.x, t.y) for t in sample}) == 32
