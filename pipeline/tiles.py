"""Tile math for the GoogleMapsCompatible (EPSG:3857) grid, on top of mercantile.

This module owns tile geometry: bounds, TMS row flipping and the exact AOI cover.
"""

from __future__ import annotations

from typing import NamedTuple

import mercantile

TILE_SIZE = 256


class TileId(NamedTuple):
    """An XYZ tile: x = column, y = row counted from the north (as in WMTS and XYZ URLs)."""

    z: int
    x: int
    y: int

    def __str__(self) -> str:
        return f"{self.z}/{self.x}/{self.y}"


def tms_row(z: int, y: int) -> int:
    """MBTiles stores rows counted from the south (TMS); XYZ rows count from the north."""
    return (1 << z) - 1 - y


def tile_bounds_3857(tile: TileId) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of the tile in EPSG:3857 metres."""
    b = mercantile.xy_bounds(tile.x, tile.y, tile.z)
    return (b.left, b.bottom, b.right, b.top)


def tile_bounds_wgs84(tile: TileId) -> tuple[float, float, float, float]:
    """(west, south, east, north) of the tile in degrees."""
    b = mercantile.bounds(tile.x, tile.y, tile.z)
    return (b.west, b.south, b.east, b.north)


def union_bounds_wgs84(tiles: list[TileId]) -> tuple[float, float, float, float]:
    """Smallest (west, south, east, north) box covering all tiles."""
    if not tiles:
        raise ValueError("no tiles")
    boxes = [tile_bounds_wgs84(t) for t in tiles]
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))
