"""Tile math for the GoogleMapsCompatible (EPSG:3857) grid, on top of mercantile.

This module owns tile geometry: bounds, TMS row flipping, the exact AOI cover and the
rectangle of tiles over a bounding box.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import mercantile
import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from pipeline.core.errors import LuminescenceError

TILE_SIZE = 256
MAX_ZOOM = 30  # finer than a centimetre per pixel; 2**30 tiles a side still fit tile ids everywhere
_HALF_WORLD = mercantile.CE / 2  # EPSG:3857 extent of the tile grid is +-_HALF_WORLD


class ZoomError(LuminescenceError, ValueError):
    """A zoom level outside the web-mercator tile grid (0 to MAX_ZOOM)."""


def check_zoom(zoom: int, what: str = "zoom") -> int:
    """`zoom`, or ZoomError when it is not a zoom level of the tile grid. `what` names where it
    came from in the message ("--zoom", "fetch.<key>.zoom")."""
    if isinstance(zoom, bool) or not isinstance(zoom, int) or not 0 <= zoom <= MAX_ZOOM:
        raise ZoomError(f"{what} {zoom} is outside the web-mercator tile grid, whose zoom levels go "
                        f"from 0 to {MAX_ZOOM}; choose a zoom in that range (list-layers shows a "
                        f"layer's zooms)")
    return zoom


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
    """(left, bottom, right, top) of the tile in EPSG:3857 metres.

    Each grid line is computed from its own index (the right edge is the left edge of
    the next column), so neighbouring tiles and parent/child tiles share bit-identical
    edges; mercantile's `right = left + size` is off by one ulp about half the time.
    """
    z, x, y = tile
    last = (1 << z) - 1
    b = mercantile.xy_bounds(x, y, z)
    right = mercantile.xy_bounds(x + 1, y, z).left if x < last else _HALF_WORLD
    bottom = mercantile.xy_bounds(x, y + 1, z).top if y < last else -_HALF_WORLD
    return (b.left, bottom, right, b.top)


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


# --------------------------------------------------------------------------- AOI cover
class TooManyTilesError(LuminescenceError):
    """The AOI needs more tiles at this zoom than the configured limit allows."""

    def __init__(self, count: int, zoom: int, limit: int, *, at_least: bool = False) -> None:
        super().__init__(
            f"the AOI covers {'at least ' if at_least else ''}{count} tiles at zoom {zoom}, more than the "
            f"limit of {limit}; lower the zoom or raise harvest.max_tiles in params.yaml")
        self.count = count
        self.zoom = zoom
        self.limit = limit


# A tile is in the cover when the interiors of tile and AOI intersect (DE-9IM II = T),
# which for two areal shapes is exactly "the intersection has area > 0".
_INTERIORS_INTERSECT = "T********"


class _CoverParts(NamedTuple):
    """The cover as found by the quadtree descent, before expansion to single tiles."""

    blocks: list[tuple[int, np.ndarray, np.ndarray]]  # (level, xs, ys): tiles fully inside
    edge_xs: np.ndarray  # tiles at the target zoom that are partly inside
    edge_ys: np.ndarray

    def count(self, zoom: int) -> int:
        full = sum(len(xs) * 4 ** (zoom - level) for level, xs, _ in self.blocks)
        return int(full) + len(self.edge_xs)


def _boxes(level: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    pairs = zip(xs.tolist(), ys.tolist(), strict=True)
    bounds = np.array([tile_bounds_3857(TileId(level, x, y)) for x, y in pairs], np.float64).reshape(-1, 4)
    return shapely.box(bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3])


def _start_tiles(geometry: BaseGeometry, zoom: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The smallest tile holding the AOI's bounding box (at most `zoom`) and its 8 neighbours.

    The neighbours make the start robust to mercantile's epsilon at the box edges; the
    descent drops them at once when they do not meet the AOI.
    """
    minx, miny, maxx, maxy = geometry.bounds
    minx, maxx = max(minx, -_HALF_WORLD), min(maxx, _HALF_WORLD)
    miny, maxy = max(miny, -_HALF_WORLD), min(maxy, _HALF_WORLD)
    if minx >= maxx or miny >= maxy:  # entirely outside the web-mercator square
        return zoom, np.empty(0, np.int64), np.empty(0, np.int64)
    west, north = mercantile.lnglat(minx, maxy)
    east, south = mercantile.lnglat(maxx, miny)
    start = mercantile.bounding_tile(west, south, east, north)
    if start.z > zoom:
        start = mercantile.parent(start, zoom=zoom)
    n = 1 << start.z
    xs = [x for x in (start.x - 1, start.x, start.x + 1) if 0 <= x < n]
    ys = [y for y in (start.y - 1, start.y, start.y + 1) if 0 <= y < n]
    gx, gy = np.meshgrid(np.array(xs, np.int64), np.array(ys, np.int64), indexing="ij")
    return start.z, gx.ravel(), gy.ravel()


def _cover_parts(geometry_3857: BaseGeometry, zoom: int) -> _CoverParts:
    """Quadtree descent: keep tiles whose interior meets the AOI's interior; a tile
    inside the AOI contributes all its descendants; only partly covered tiles are split."""
    check_zoom(zoom)
    if geometry_3857.geom_type not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"tile_cover needs a Polygon or MultiPolygon, got {geometry_3857.geom_type}")
    empty = np.empty(0, np.int64)
    if geometry_3857.is_empty:
        return _CoverParts([], empty, empty)
    shapely.prepare(geometry_3857)  # caches a spatial index; the geometry itself is unchanged
    level, xs, ys = _start_tiles(geometry_3857, zoom)
    blocks: list[tuple[int, np.ndarray, np.ndarray]] = []
    while True:
        boxes = _boxes(level, xs, ys)
        meets = shapely.relate_pattern(geometry_3857, boxes, _INTERIORS_INTERSECT)
        xs, ys, boxes = xs[meets], ys[meets], boxes[meets]
        inside = shapely.contains(geometry_3857, boxes)
        if inside.any():
            blocks.append((level, xs[inside], ys[inside]))
        xs, ys = xs[~inside], ys[~inside]
        if level == zoom or len(xs) == 0:
            return _CoverParts(blocks, xs, ys)
        # the four children of each partly covered tile
        xs = (np.repeat(xs * 2, 4) + np.tile(np.array([0, 1, 0, 1], np.int64), len(xs)))
        ys = (np.repeat(ys * 2, 4) + np.tile(np.array([0, 0, 1, 1], np.int64), len(ys)))
        level += 1


def _expand(parts: _CoverParts, zoom: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for level, bx, by in parts.blocks:
        n = 1 << (zoom - level)
        offsets = np.arange(n, dtype=np.int64)
        xs = bx[:, None, None] * n + offsets[None, :, None]
        ys = by[:, None, None] * n + offsets[None, None, :]
        xs, ys = np.broadcast_arrays(xs, ys)
        yield xs.ravel(), ys.ravel()
    yield parts.edge_xs, parts.edge_ys


def tile_cover(geometry_3857: BaseGeometry, zoom: int, *, max_tiles: int | None = None) -> list[TileId]:
    """Exactly the XYZ tiles (GoogleMapsCompatible) at `zoom` whose footprint meets the AOI.

    Boundary rule: a tile is in the cover when its intersection with the AOI has an area
    greater than zero (the interiors intersect). Tiles that only touch the AOI along an
    edge or at a corner are NOT in the cover, and neither are tiles inside a hole.
    The AOI is `geometry_3857`, a Polygon or MultiPolygon in EPSG:3857 metres.

    Found by a quadtree descent from the smallest tile holding the AOI, with a prepared
    geometry: a tile inside the AOI contributes all its descendants without more tests,
    so the work grows with the AOI's outline, not its area. Sorted by (x, y).
    Raises TooManyTilesError (before building the list) when `max_tiles` is exceeded.
    """
    parts = _cover_parts(geometry_3857, zoom)
    count = parts.count(zoom)
    if max_tiles is not None and count > max_tiles:
        raise TooManyTilesError(count, zoom, max_tiles)
    pieces = list(_expand(parts, zoom))
    xs = np.concatenate([p[0] for p in pieces])
    ys = np.concatenate([p[1] for p in pieces])
    order = np.lexsort((ys, xs))
    return [TileId(zoom, x, y) for x, y in zip(xs[order].tolist(), ys[order].tolist(), strict=True)]


def tile_cover_count(geometry_3857: BaseGeometry, zoom: int) -> int:
    """len(tile_cover(geometry_3857, zoom)) without building the list (same rule, same descent)."""
    return _cover_parts(geometry_3857, zoom).count(zoom)


# --------------------------------------------------------------------------- early estimate
def cover_count_lower_bound(geometry_3857: BaseGeometry, zoom: int) -> int:
    """A number of tiles the cover of `geometry_3857` at `zoom` is sure to reach, found in
    microseconds from its area and extent (no descent, no list).

    - area: the covering tiles contain the AOI, so there are at least area / tile area of them;
    - extent: a polygon is connected, so each tile column (row) its x (y) range crosses holds at
      least one covering tile; a MultiPolygon has at least as many as its largest part.
    """
    check_zoom(zoom)
    if geometry_3857.is_empty:
        return 0
    side = 2 * _HALF_WORLD / (1 << zoom)
    by_area = math.ceil(geometry_3857.area / (side * side) - 1e-9)
    by_extent = 0
    for part in shapely.get_parts(geometry_3857):
        minx, miny, maxx, maxy = part.bounds
        cols = math.ceil((maxx + _HALF_WORLD) / side) - math.floor((minx + _HALF_WORLD) / side)
        rows = math.ceil((_HALF_WORLD - miny) / side) - math.floor((_HALF_WORLD - maxy) / side)
        by_extent = max(by_extent, cols, rows)
    return max(0, by_area, by_extent)


def check_cover_estimate(geometry_3857: BaseGeometry, zoom: int, max_tiles: int, *,
                         slack: float = 2.0) -> None:
    """Refuse (TooManyTilesError) an AOI whose cover is sure to exceed `max_tiles` before anything
    costly is done with it (densifying its outline, the exact cover).

    `geometry_3857` may be the AOI before densifying, whose straight edges differ slightly from
    the final outline; `slack` keeps that difference from refusing an AOI near the limit, whose
    exact count (cheap for it) then decides.
    """
    lower = cover_count_lower_bound(geometry_3857, zoom)
    if lower > slack * max_tiles:
        raise TooManyTilesError(lower, zoom, max_tiles, at_least=True)


@dataclass(frozen=True)
class TileRect:
    """The tiles of a rectangle at one zoom: every column of `xs` in every row of `ys`."""

    zoom: int
    xs: range
    ys: range

    def __len__(self) -> int:
        return len(self.xs) * len(self.ys)

    def tile_at(self, index: int) -> TileId:
        """The index-th tile in row order (north to south, west to east)."""
        row, col = divmod(index, len(self.xs))
        return TileId(self.zoom, self.xs[col], self.ys[row])

    def tiles(self) -> list[TileId]:
        return [TileId(self.zoom, x, y) for y in self.ys for x in self.xs]


def tile_rect(bounds_3857: tuple[float, float, float, float], bbox_wgs84: tuple[float, float, float, float],
              zoom: int) -> TileRect:
    """The tiles that mercantile finds over bbox_wgs84 and that meet the rectangle bounds_3857
    (edges included). Two rectangles meet where both their x and their y intervals do, so
    columns and rows are checked apart: O(columns + rows), not O(tiles)."""
    w, s, e, n = bbox_wgs84
    w, s, e, n = max(-180.0, w), max(-85.051129, s), min(180.0, e), min(85.051129, n)
    first = mercantile.tile(w, n, zoom)  # as mercantile.tiles picks its corners
    last = mercantile.tile(e - mercantile.LL_EPSILON, s + mercantile.LL_EPSILON, zoom)
    left, bottom, right, top = bounds_3857
    xs = [x for x in range(first.x, last.x + 1)
          if (b := tile_bounds_3857(TileId(zoom, x, first.y)))[0] <= right and b[2] >= left]
    ys = [y for y in range(first.y, last.y + 1)
          if (b := tile_bounds_3857(TileId(zoom, first.x, y)))[1] <= top and b[3] >= bottom]
    if not xs or not ys:
        return TileRect(zoom, range(0), range(0))
    return TileRect(zoom, range(xs[0], xs[-1] + 1), range(ys[0], ys[-1] + 1))
