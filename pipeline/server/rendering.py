"""Rendering: a layer's rasters -> encoded 256-px EPSG:3857 tiles.

Each layer's sources are converted once into a cached tiled GeoTIFF (256 px blocks, ZSTD, bands
+ alpha, average overviews) under `<cache_dir>` (default data/derived/cache), keyed by the
sources' path, size and mtime and the bands, so JPEG 2000 is decoded once per source rather than
per tile. Consecutive sources on one pixel grid (CRS, resolution, alignment) are merged into one
cached mosaic (the first source wins where they overlap), which keeps seams invisible. A tile is
warped with rasterio from the overview level just finer than the tile to EPSG:3857 at the tile's
exact mercantile bounds: bilinear when the tile is finer than the source (upsampling), `average`
when the source is finer (area-weighted, anti-aliased; lanczos was 2-4x slower). Pixels with
less than half coverage are transparent (alpha 0); JPEG tiles are black there. Datasets stay
open in a pool of per-thread readers, and rendered tile bytes are kept in an LRU cache
(`render_cache_tiles`).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_bounds
from rasterio.warp import reproject

from pipeline.core.files import replacing
from pipeline.geo.tiles import TILE_SIZE, TileId, tile_bounds_3857
from pipeline.sample.film import read_mosaic
from pipeline.server.layers import Layer, RasterGroup, intersects

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# rasterio silences this warning for its in-memory warp destination with warnings.catch_warnings,
# which is not thread-safe: under concurrent rendering it leaks about once per few thousand tiles
# (the tiles are correct). Ignore exactly that message from rasterio.warp.
warnings.filterwarnings("ignore", message="Dataset has no geotransform", category=NotGeoreferencedWarning,
                        module=r"rasterio\.warp")


def _cache_key(paths: Sequence[Path], bands: Sequence[int]) -> str:
    ident = [CACHE_VERSION, list(bands)]
    for p in paths:
        st = Path(p).stat()
        ident.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def _overview_factors(width: int, height: int) -> list[int]:
    factors, f = [], 2
    while max(width, height) / f >= TILE_SIZE / 2:
        factors.append(f)
        f *= 2
    return factors


def build_cached_mosaic(paths: Sequence[Path], bands: Sequence[int], out: Path) -> None:
    """Write sources (one CRS) as a tiled GeoTIFF with the bands + an alpha band and overviews."""
    mosaic = read_mosaic(paths, bands)
    alpha = np.where(mosaic.valid, 255, 0).astype(np.uint8)
    count, h, w = len(bands) + 1, *mosaic.valid.shape
    profile = {
        "driver": "GTiff", "width": w, "height": h, "count": count, "dtype": "uint8",
        "crs": mosaic.crs, "transform": mosaic.transform, "tiled": True, "blockxsize": TILE_SIZE,
        "blockysize": TILE_SIZE, "compress": "zstd", "zstd_level": 1, "predictor": 2,
        "interleave": "pixel", "alpha": "YES", "photometric": "RGB" if len(bands) == 3 else "MINISBLACK",
    }
    with replacing(out) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.concatenate([mosaic.data, alpha[None]], axis=0))
        dst.build_overviews(_overview_factors(w, h), Resampling.average)


class _Reader:
    """Open datasets (path, overview level) for one thread at a time (GDAL handles are not shared)."""

    def __init__(self) -> None:
        self._open: dict[tuple[Path, int], rasterio.DatasetReader] = {}

    def dataset(self, path: Path, level: int) -> rasterio.DatasetReader:
        key = (path, level)
        if key not in self._open:
            kwargs = {"overview_level": level - 1} if level > 0 else {}
            self._open[key] = rasterio.open(path, **kwargs)
        return self._open[key]

    def close(self) -> None:
        for ds in self._open.values():
            ds.close()
        self._open.clear()


_EPSG3857 = CRS.from_epsg(3857)


def _transparent_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (TILE_SIZE, TILE_SIZE), (0, 0, 0, 0)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


TRANSPARENT_PNG = _transparent_png()


def encode_tile(color: np.ndarray, alpha: np.ndarray, fmt: str) -> bytes:
    """(C, 256, 256) colour (C = 1 or 3) + (256, 256) alpha -> PNG (RGBA) or JPEG (RGB) bytes."""
    from PIL import Image

    rgb = np.repeat(color, 3, axis=0) if color.shape[0] == 1 else color
    buf = io.BytesIO()
    if fmt == "png":
        rgba = np.concatenate([rgb, alpha[None]], axis=0).transpose(1, 2, 0)
        # zlib level 1: 4-5x faster than Pillow's default 6 on aerial photos, and no larger.
        Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, format="PNG", compress_level=1)
    else:
        rgb = np.where(alpha[None] > 0, rgb, 0).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class TileRenderer:
    """Warps a layer's cached rasters into EPSG:3857 tiles; thread-safe."""

    def __init__(self, layers: dict[str, Layer], cache_dir: Path, cache_tiles: int) -> None:
        self.layers = layers
        self.cache_dir = Path(cache_dir)
        self._idle: list[_Reader] = []  # readers not in use by a thread
        self._readers_lock = threading.Lock()
        self._closed = False
        self._lru: collections.OrderedDict[tuple[str, str, int, int, int], bytes] = collections.OrderedDict()
        self._lru_lock = threading.Lock()
        self._cache_tiles = cache_tiles

    # ----------------------------------------------------------- source preparation
    def prepare(self, layer: Layer) -> None:
        """Build (or find) the cached GeoTIFFs of a layer; idempotent and thread-safe."""
        if layer.ready:
            return
        with layer.lock:
            if layer.ready:
                return
            for index, group in enumerate(layer.groups):
                key = _cache_key(group.paths, layer.source.bands)
                path = self.cache_dir / f"{layer.source.id}.{index}.{key}.tif"
                if not path.exists():
                    log.info("caching %s as a tiled GeoTIFF (one-off)", layer.source.id)
                    started = time.monotonic()
                    build_cached_mosaic(group.paths, layer.source.bands, path)
                    log.info("cached %s (%d source file(s)) as %s in %.1f s", layer.source.id,
                             len(group.paths), path, time.monotonic() - started)
                    for stale in self.cache_dir.glob(f"{layer.source.id}.{index}.*.tif"):
                        if stale != path:
                            stale.unlink(missing_ok=True)
                with rasterio.open(path) as ds:
                    group.res = float(max(abs(ds.res[0]), abs(ds.res[1])))
                    group.factors = (1, *ds.overviews(1))
                group.cached = path
            layer.ready = True

    # ----------------------------------------------------------- rendering
    def tile_bytes(self, layer_id: str, fmt: str, tile: TileId) -> bytes:
        """Encoded tile; the small transparent PNG when the layer has no data in it."""
        key = (layer_id, fmt, tile.z, tile.x, tile.y)
        with self._lru_lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
        rendered = self.render(layer_id, tile)
        data = TRANSPARENT_PNG if rendered is None else encode_tile(*rendered, fmt)
        if self._cache_tiles > 0:
            with self._lru_lock:
                self._lru[key] = data
                while len(self._lru) > self._cache_tiles:
                    self._lru.popitem(last=False)
        return data

    def render(self, layer_id: str, tile: TileId) -> tuple[np.ndarray, np.ndarray] | None:
        """(colour (C, 256, 256), alpha (256, 256)) of a tile, or None when it has no data."""
        layer = self.layers[layer_id]
        bounds = tile_bounds_3857(tile)
        if not intersects(bounds, layer.bounds_3857):
            return None
        self.prepare(layer)
        n = layer.nbands
        color = np.zeros((n, TILE_SIZE, TILE_SIZE), np.uint8)
        alpha = np.zeros((TILE_SIZE, TILE_SIZE), np.uint8)
        dst_transform = from_bounds(*bounds, TILE_SIZE, TILE_SIZE)
        tile_m = (bounds[2] - bounds[0]) / TILE_SIZE
        reader = self._acquire()
        try:
            for group in layer.groups:
                if not intersects(bounds, group.bounds_3857):
                    continue
                level, resampling = _pick_level(group, tile_m * group.src_per_3857_m)
                assert group.cached is not None  # prepare() has cached every group
                ds = reader.dataset(group.cached, level)
                buf = np.zeros((n + 1, TILE_SIZE, TILE_SIZE), np.uint8)
                reproject(rasterio.band(ds, list(range(1, n + 2))), buf, dst_transform=dst_transform,
                          dst_crs=_EPSG3857, resampling=resampling, src_alpha=n + 1, dst_alpha=n + 1)
                take = (alpha == 0) & (buf[n] >= 128)  # first source on top
                color[:, take] = buf[:n, take]
                alpha[take] = 255
        finally:
            self._release(reader)
        if not alpha.any():
            return None
        return color, alpha

    def _acquire(self) -> _Reader:
        with self._readers_lock:
            return self._idle.pop() if self._idle else _Reader()

    def _release(self, reader: _Reader) -> None:
        with self._readers_lock:
            if not self._closed:
                self._idle.append(reader)
                return
        reader.close()  # closed meanwhile: never close datasets another thread is warping from

    def open(self) -> None:
        with self._readers_lock:
            self._closed = False

    def close(self) -> None:
        """Close idle datasets now; readers still rendering close when they finish."""
        with self._readers_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for reader in idle:
            reader.close()


def _pick_level(group: RasterGroup, tile_res: float) -> tuple[int, Resampling]:
    """Coarsest overview still at least as fine as the tile, and the resampling for it."""
    level = 0
    for i, f in enumerate(group.factors):
        if group.res * f <= tile_res * 1.01:
            level = i
    finer = group.res * group.factors[level] < tile_res / 1.01
    return level, (Resampling.average if finer else Resampling.bilinear)


