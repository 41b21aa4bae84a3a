"""Tiles cross-faded from overlapping context windows (pipeline/inference/blend.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.inference.blend import NEIGHBOURS, blend_tile, ramp

TILE = 16  # small tiles keep these exact checks quick; the code is the same for 256


def windows_of(image: np.ndarray, tiles: tuple[int, int], margin: int) -> dict[tuple[int, int], np.ndarray]:
    """Every tile's window cut from one (H, W, C) image that has `margin` px of border all round."""
    side = TILE + 2 * margin
    return {(tx, ty): image[ty * TILE:ty * TILE + side, tx * TILE:tx * TILE + side]
            for ty in range(tiles[1]) for tx in range(tiles[0])}


def mosaic(outputs: dict[tuple[int, int], np.ndarray], tiles: tuple[int, int], margin: int) -> np.ndarray:
    rows = []
    for ty in range(tiles[1]):
        row = [blend_tile({(dx, dy): outputs.get((tx + dx, ty + dy)) for dx, dy in NEIGHBOURS}, margin, TILE)
               for tx in range(tiles[0])]
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


@pytest.mark.parametrize("margin", [1, 3, 7])
def test_a_window_and_its_neighbour_weigh_one_together(margin: int) -> None:
    r = ramp(margin, TILE)
    assert r.shape == (TILE + 2 * margin,) and r.min() > 0 and r.max() == 1
    # pixel u of a tile near its left edge: its own window's column u + margin, the left
    # neighbour's column u + TILE + margin
    u = np.arange(margin)
    np.testing.assert_allclose(r[u + margin] + r[u + TILE + margin], 1.0, atol=1e-6)
    assert (r[2 * margin:TILE] == 1).all()  # inside, a tile is its own window only


def test_windows_that_agree_give_back_the_image_they_agree_on() -> None:
    rng = np.random.default_rng(0)
    margin, tiles = 4, (3, 3)
    image = rng.integers(0, 256, (3 * TILE + 2 * margin, 3 * TILE + 2 * margin, 3), dtype=np.uint8)
    got = mosaic(windows_of(image, tiles, margin), tiles, margin)
    np.testing.assert_array_equal(got, image[margin:-margin, margin:-margin])


def test_windows_that_disagree_meet_without_a_jump() -> None:
    # every window a different flat colour: keeping centres would jump by up to 200 at each edge
    margin, tiles = 4, (3, 2)
    side = TILE + 2 * margin
    rng = np.random.default_rng(1)
    outputs = {(tx, ty): np.full((side, side, 3), rng.integers(0, 200), np.uint8)
               for ty in range(tiles[1]) for tx in range(tiles[0])}
    got = mosaic(outputs, tiles, margin).astype(int)
    steps = np.abs(np.diff(got, axis=1)).max(axis=(0, 2))
    edges = [k * TILE - 1 for k in range(1, tiles[0])]
    largest_colour_step = 200 / (2 * margin)  # the cross-fade spreads a jump over 2 x margin px
    assert steps[edges].max() <= largest_colour_step + 1
    centres = [outputs[(tx, 0)][margin:-margin, margin:-margin] for tx in range(3)]
    centres_only = np.concatenate(centres, axis=1)
    assert np.abs(np.diff(centres_only.astype(int), axis=1)).max() > 2 * steps[edges].max()


def test_inside_a_tile_its_own_window_is_kept_exactly() -> None:
    margin = 4
    side = TILE + 2 * margin
    rng = np.random.default_rng(2)
    outputs = {offset: rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for offset in NEIGHBOURS}
    got = blend_tile(outputs, margin, TILE)
    inner = slice(margin, TILE - margin)
    np.testing.assert_array_equal(got[inner, inner], outputs[(0, 0)][2 * margin:TILE, 2 * margin:TILE])


def test_a_missing_neighbour_leaves_its_side_to_the_tile_itself() -> None:
    margin = 4
    side = TILE + 2 * margin
    own = np.full((side, side, 3), 100, np.uint8)
    right = np.full((side, side, 3), 200, np.uint8)
    got = blend_tile({(0, 0): own, (1, 0): right, (-1, 0): None}, margin, TILE)
    assert (got[:, :TILE - margin] == 100).all()  # left side: no neighbour there, the tile's own colour
    assert (got[:, -1] > 140).all() and (got[:, -1] < 160).all()  # right edge: half way to the neighbour


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="own window is missing"):
        blend_tile({(1, 0): np.zeros((24, 24, 3), np.uint8)}, 4, TILE)
    with pytest.raises(ValueError, match="must be 24 x 24"):
        blend_tile({(0, 0): np.zeros((20, 20, 3), np.uint8)}, 4, TILE)
    with pytest.raises(ValueError, match="at most half a tile"):
        blend_tile({(0, 0): np.zeros((34, 34, 3), np.uint8)}, 9, TILE)
