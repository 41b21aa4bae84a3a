"""Pairing: read the input layer onto the target's tile grid, pixel-aligned in the map frame.

A pair is one target tile (z/x/y of the modern colour store) and the input over exactly the
same ground. When both stores share a grid (matrix set, CRS, zoom) the input tile with the
same id is used as is. Otherwise the input tiles under the target tile are mosaicked and
resampled into the target tile's bounds with `rasterio.warp.reproject` (GDAL's warper; the
kernel is `align.resampling`, scaled to the zoom ratio when downsampling), so pixel (i, j)
of both images always covers the same ground. The same path applies an estimated offset:
the destination bounds are translated by it, so a shift is one resampling of the original
tiles, with real neighbouring pixels at the edges rather than padding.

Grids are described by `TileGrid` (CRS + tile bounds + which tiles cover an area). Only
GoogleMapsCompatible (EPSG:3857) exists today; a store in another tile matrix set needs
only its TileGrid, since every resampling goes through the grids' CRS and bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mercantile
import numpy as np
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject, transform_bounds

from pipeline.core.errors import LuminescenceError
from pipeline.geo.pixels import GrayTiles
from pipeline.geo.tiles import TILE_SIZE, TileId, tile_bounds_3857
from pipeline.geo.tilestore import TileStatus, TileStore

Bounds = tuple[float, float, float, float]  # left, bottom, right, top in the grid's CRS

class PairingError(LuminescenceError):
    """The stores cannot be paired as configured."""


# --------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one store lie: its tile matrix set, CRS and zoom."""

    matrix_set: str
    crs: str
    zoom: int
    tile_size: int = TILE_SIZE

    def tile_bounds(self, tile: TileId) -> Bounds:
        return tile_bounds_3857(tile)

    @property
    def pixel_size(self) -> float:
        """Edge of one pixel in CRS units."""
        left, _, right, _ = self.tile_bounds(TileId(self.zoom, 0, 0))
        return (right - left) / self.tile_size

    def tiles_over(self, bounds: Bounds) -> list[TileId]:
        """Tiles of this grid that overlap `bounds` (touching edges do not count)."""
        left, bottom, right, top = bounds
        eps = self.pixel_size * 1e-3
        west, south = mercantile.lnglat(left + eps, bottom + eps)
        east, north = mercantile.lnglat(right - eps, top - eps)
        return sorted(TileId(t.z, t.x, t.y) for t in mercantile.tiles(west, south, east, north, self.zoom))

    def ground_metres_per_crs_unit(self, tile: TileId) -> float:
        """Scale from CRS units to metres on the ground at the tile centre (Mercator: cos lat)."""
        left, bottom, right, top = self.tile_bounds(tile)
        _, lat = mercantile.lnglat((left + right) / 2, (bottom + top) / 2)
        return math.cos(math.radians(lat))


# Matrix sets we can georeference. A new one needs a TileGrid subclass with its CRS,
# tile_bounds and tiles_over (e.g. from the WMTS TileMatrix origin and scale).
SUPPORTED_MATRIX_SETS = {"GoogleMapsCompatible": "EPSG:3857", "WebMercatorQuad": "EPSG:3857"}


def grid_of(store: TileStore, label: str) -> TileGrid:
    """The TileGrid of a harvested store, from its metadata."""
    meta = store.metadata
    matrix_set = meta.get("matrix_set") or "GoogleMapsCompatible"
    if matrix_set not in SUPPORTED_MATRIX_SETS:
        raise PairingError(
            f"{label} store {store.path} uses tile matrix set '{matrix_set}', which the align stage "
            f"cannot georeference yet (supported: {', '.join(SUPPORTED_MATRIX_SETS)}); harvest the "
            f"layer in GoogleMapsCompatible (fetch.<key>.matrix_set)")
    if meta.get("minzoom") != meta.get("maxzoom"):
        raise PairingError(f"{label} store {store.path} holds zooms {meta.get('minzoom')}-"
                           f"{meta.get('maxzoom')}; a store must hold one zoom")
    tile_size = int(meta.get("tile_size") or TILE_SIZE)
    if tile_size != TILE_SIZE:
        raise PairingError(f"{label} store {store.path} has {tile_size}-px tiles; only {TILE_SIZE} "
                           f"are supported")
    return TileGrid(matrix_set, SUPPORTED_MATRIX_SETS[matrix_set], store.zoom, tile_size)


def same_grid(a: TileGrid, b: TileGrid) -> bool:
    return (a.crs, a.zoom, a.tile_size) == (b.crs, b.zoom, b.tile_size) and \
        SUPPORTED_MATRIX_SETS[a.matrix_set] == SUPPORTED_MATRIX_SETS[b.matrix_set]


# --------------------------------------------------------------------------- input reader
class Undecodable(Exception):
    """An input tile under the target tile has bytes that do not decode."""


class InputReader:
    """The input layer read onto target tiles as (grey, alpha) uint8 arrays of 256x256.

    Decoded input tiles are kept in the gray-tile cache (pipeline.geo.pixels.GrayTiles):
    neighbouring target tiles share input tiles (mosaics at another zoom, and the margins
    needed by shifts).
    """

    def __init__(self, store: TileStore, grid: TileGrid, target_grid: TileGrid, *,
                 formula: str = "rec601", resampling: str = "bilinear", max_shift_px: float = 0.0,
                 cache_tiles: int = 1024) -> None:
        self.store = store
        self.grid = grid
        self.target_grid = target_grid
        self.formula = formula
        self.resampling = resampling
        self.direct = same_grid(grid, target_grid)
        if not self.direct and resampling == "none":
            raise PairingError(
                f"the input store {store.path} is on another grid ({grid.matrix_set} zoom {grid.zoom}) "
                f"than the target ({target_grid.matrix_set} zoom {target_grid.zoom}) and "
                f"align.resampling is none; set align.resampling to bilinear (or nearest, cubic, "
                f"lanczos) or harvest both layers at one zoom")
        self.statuses = store.statuses()
        self._tiles = GrayTiles(store, formula, cache_tiles, skip_undecodable=True)
        # Margin of input pixels read around a target tile: the shift plus kernel support.
        scale = target_grid.pixel_size / grid.pixel_size
        self._margin = (math.ceil(max_shift_px * scale) + 4) * grid.pixel_size

    # ---------------------------------------------------------------- geometry
    def _source_bounds(self, target_tile: TileId, shift_px: tuple[float, float] = (0.0, 0.0)) -> Bounds:
        """The target tile's ground, moved by the shift, in the input CRS."""
        left, bottom, right, top = self.target_grid.tile_bounds(target_tile)
        res = self.target_grid.pixel_size
        # Output pixel (x, y) samples the input at (x + dx, y + dy): the window moves east by
        # dx pixels and south (down) by dy pixels.
        east, north = shift_px[0] * res, -shift_px[1] * res
        bounds = (left + east, bottom + north, right + east, top + north)
        if self.grid.crs != self.target_grid.crs:
            bounds = transform_bounds(self.target_grid.crs, self.grid.crs, *bounds, densify_pts=21)
        return bounds

    def covering(self, target_tile: TileId) -> list[TileId]:
        """Input tiles under the target tile (no margin)."""
        return self.grid.tiles_over(self._source_bounds(target_tile))

    def drop_reason(self, target_tile: TileId) -> str | None:
        """Why the input cannot give this pair, from the store's tile statuses alone."""
        found = [self.statuses[t][0] for t in self.covering(target_tile) if t in self.statuses]
        if not found:
            return "input_missing"
        if TileStatus.FAILED in found:
            return "input_failed"
        if TileStatus.OK not in found:
            return "input_empty"
        return None

    # ---------------------------------------------------------------- pixels
    @property
    def colour_tiles(self) -> set[TileId]:
        """Input tiles that were colour (converted with the luma formula)."""
        return self._tiles.colour_tiles

    def _tile(self, tile: TileId) -> np.ndarray | None:
        """(256, 256, 2) grey + alpha of one input tile; None when not stored or undecodable."""
        return self._tiles.get(tile)

    def read(self, target_tile: TileId, shift_px: tuple[float, float] = (0.0, 0.0)
             ) -> tuple[np.ndarray, np.ndarray]:
        """(grey, alpha) of the input over the target tile, sampled at (x + dx, y + dy)."""
        if self.direct and shift_px == (0.0, 0.0):
            tile = self._tile(target_tile)
            if tile is None:  # drop_reason() has passed, so the tile is stored: it does not decode
                raise Undecodable(str(target_tile))
            return tile[..., 0], tile[..., 1]
        if self.resampling == "none":
            raise PairingError("shifting the input needs a resampling method; align.resampling is none")
        primary = set(self.covering(target_tile))
        left, bottom, right, top = self._source_bounds(target_tile, shift_px)
        m = self._margin
        tiles = self.grid.tiles_over((left - m, bottom - m, right + m, top + m))
        xs = sorted({t.x for t in tiles})
        ys = sorted({t.y for t in tiles})
        size = self.grid.tile_size
        mosaic = np.zeros((2, len(ys) * size, len(xs) * size), dtype=np.uint8)
        for t in tiles:
            pixels = self._tile(t)
            if pixels is None:
                if t in primary and self.statuses.get(t, (None,))[0] is TileStatus.OK:
                    raise Undecodable(str(t))
                continue
            j, i = (t.y - ys[0]) * size, (t.x - xs[0]) * size
            mosaic[:, j:j + size, i:i + size] = np.moveaxis(pixels, -1, 0)
        m_left, _, _, m_top = self.grid.tile_bounds(TileId(self.grid.zoom, xs[0], ys[0]))
        _, m_bottom, m_right, _ = self.grid.tile_bounds(TileId(self.grid.zoom, xs[-1], ys[-1]))
        src_transform = from_bounds(m_left, m_bottom, m_right, m_top, mosaic.shape[2], mosaic.shape[1])
        t_left, t_bottom, t_right, t_top = self.target_grid.tile_bounds(target_tile)
        res = self.target_grid.pixel_size
        east, north = shift_px[0] * res, -shift_px[1] * res
        n = self.target_grid.tile_size
        dst_transform = from_bounds(t_left + east, t_bottom + north, t_right + east, t_top + north, n, n)
        out = np.zeros((2, n, n), dtype=np.uint8)
        reproject(mosaic, out, src_transform=src_transform, src_crs=self.grid.crs,
                  dst_transform=dst_transform, dst_crs=self.target_grid.crs,
                  resampling=Resampling[self.resampling], src_alpha=2, dst_alpha=2)
        return out[0], out[1]

    def used_tiles(self, target_tile: TileId) -> list[TileId]:
        """Input tiles recorded in the store under the target tile (for the manifest)."""
        return [t for t in self.covering(target_tile) if t in self.statuses]
