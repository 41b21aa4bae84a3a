"""Tiles cross-faded from overlapping context windows, so colours run on across tile edges.

Each tile is colourised inside a window of its neighbours' pixels (`margin` on every side).
Keeping only each window's centre is not enough for a model whose colours depend on the
window (instance norms, padding): each tile's edge pixels then come from a different window
than the pixels across the edge, and the mosaic shows the tile grid. Here every pixel within
`margin` of a tile edge is a weighted mean of the windows that cover it: a window's weight
falls linearly from 1 at `margin` inside its tile's edge to 0 at its own border, and the
weights of the (up to 9) windows covering a pixel add up to 1. Across an edge both tiles mix
the same two windows with the same weights, so no jump is left; inside a tile, `margin` from
every edge, the tile is its own window's centre unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.geo.tiles import TILE_SIZE

NEIGHBOURS = tuple((dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1))  # (0, 0): the tile itself


def ramp(margin: int, tile: int = TILE_SIZE) -> np.ndarray:
    """A window's weight along one axis, (tile + 2 * margin,) float32: 1 over the tile's
    inside, falling linearly to 0 at the window's border across the `2 * margin` around each
    tile edge (each pixel weighted at its centre, so a window's and its neighbour's add to 1)."""
    if margin <= 0:
        return np.ones(tile, np.float32)
    u = np.arange(tile + 2 * margin, dtype=np.float64) - margin + 0.5  # pixel centres, tile coords
    weight = np.minimum(u + margin, tile + margin - u) / (2 * margin)
    return np.clip(weight, 0.0, 1.0).astype(np.float32)


def _span(offset: int, margin: int, tile: int) -> tuple[slice, slice]:
    """(in the tile, in the window) along one axis for the window `offset` tiles away."""
    if offset < 0:
        return slice(0, margin), slice(tile + margin, tile + 2 * margin)
    if offset > 0:
        return slice(tile - margin, tile), slice(0, margin)
    return slice(0, tile), slice(margin, margin + tile)


def blend_tile(windows: Mapping[tuple[int, int], np.ndarray | None], margin: int,
               tile: int = TILE_SIZE) -> np.ndarray:
    """One tile's (tile, tile, C) uint8 pixels from the model's outputs over the windows of
    the tile and its neighbours, keyed by (dx, dy) offset: each (tile + 2 * margin)-px
    square, (S, S, C) uint8; a missing or None neighbour (no data there) is left out and the
    others' weights renormalised. The tile's own window, (0, 0), must be there."""
    own = windows.get((0, 0))
    if own is None:
        raise ValueError("the tile's own window is missing")
    if 2 * margin > tile:  # cross-fades of opposite edges would overlap: weights no longer add up to 1
        raise ValueError(f"a {margin}-px margin is more than half a tile ({tile} px): the blend needs at "
                         "most half a tile")
    side = tile + 2 * margin
    if own.shape[:2] != (side, side):
        raise ValueError(f"windows must be {side} x {side} for a {margin}-px margin, got {own.shape[:2]}")
    if margin <= 0:
        return own[:tile, :tile].copy()
    weight_1d = ramp(margin, tile)
    total = np.zeros((tile, tile, own.shape[2]), np.float32)
    weights = np.zeros((tile, tile, 1), np.float32)
    for dx, dy in NEIGHBOURS:
        window = windows.get((dx, dy))
        if window is None:
            continue
        if window.shape != own.shape:
            raise ValueError(f"window {(dx, dy)} is {window.shape}, the tile's own {own.shape}")
        tx, wx = _span(dx, margin, tile)
        ty, wy = _span(dy, margin, tile)
        w = (weight_1d[wy, None] * weight_1d[None, wx])[..., None]
        total[ty, tx] += w * window[wy, wx]
        weights[ty, tx] += w
    return np.rint(total / weights).clip(0, 255).astype(np.uint8)
