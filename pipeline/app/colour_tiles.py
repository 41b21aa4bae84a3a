"""A colourised layer computed on demand, tile by tile, and kept: each tile is computed once.

At the view's zoom (the zoom the model was trained on) a tile is colourised inside a window of
its neighbours' pixels and only its centre is kept, exactly as the colourise stage does, so
tiles meet without seams. Coarser zooms (down to `zoom_out` levels) are built from their four
children, never by running the model at a scale it was not trained on. Results go to an
MBTiles store keyed by the model's weights (digest) and the layer, under the app's data
folder; two requests for one tile share one computation.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np

from pipeline.app.runner import PRIORITY_TILE, ModelRunner
from pipeline.app.sources import LayerTiles
from pipeline.geo.tiles import TILE_SIZE, TileId
from pipeline.geo.tilestore import TileRecord, TileStatus, TileStore

log = logging.getLogger("luminescence.app")


class _Window:
    """`context_window` reads neighbours through `.get(tile)`; here they are prefetched."""

    def __init__(self, tiles: dict[TileId, np.ndarray | None]) -> None:
        self.tiles = tiles

    def get(self, tile: TileId) -> np.ndarray | None:
        return self.tiles.get(tile)


def encode_png(rgb: np.ndarray, alpha: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.dstack([rgb, alpha])).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def downsample(children: dict[tuple[int, int], np.ndarray | None]) -> np.ndarray | None:
    """The parent tile (RGBA) of four child tiles (RGBA or None), alpha-weighted 2x2 means."""
    if all(c is None for c in children.values()):
        return None
    full = np.zeros((2 * TILE_SIZE, 2 * TILE_SIZE, 4), np.float32)
    for (dx, dy), child in children.items():
        if child is not None:
            full[dy * TILE_SIZE:(dy + 1) * TILE_SIZE, dx * TILE_SIZE:(dx + 1) * TILE_SIZE] = child
    alpha = full[..., 3:4] / 255.0
    blocks = (full[..., :3] * alpha).reshape(TILE_SIZE, 2, TILE_SIZE, 2, 3).sum(axis=(1, 3))
    weight = alpha.reshape(TILE_SIZE, 2, TILE_SIZE, 2, 1).sum(axis=(1, 3))
    rgb = np.where(weight > 0, blocks / np.maximum(weight, 1e-6), 0)
    a = weight[..., 0] / 4.0 * 255.0
    return np.dstack([np.rint(rgb), np.rint(a)]).clip(0, 255).astype(np.uint8)


class ColourLayer:
    """The colourised version of one historic layer by one model."""

    def __init__(self, source: LayerTiles, runner: ModelRunner, *, zoom: int, zoom_out: int,
                 store_dir: Path) -> None:
        self.source = source
        self.runner = runner
        self.zoom = zoom
        self.min_zoom = max(0, zoom - zoom_out)
        ident = f"{source.service_key}|{source.cfg.layer}|{source.cfg.gray}|{source.luma}|{runner.margin}"
        name = f"{source.cfg.source}-{source.cfg.layer}{'-gray' if source.cfg.gray else ''}"
        self.path = Path(store_dir) / runner.model_id / \
            f"{name}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}.mbtiles"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = TileStore(self.path, wal=True)
        self._writer.set_metadata({
            "name": f"{name} colourised", "format": "png", "type": "overlay",
            "description": f"COLOURISED by {runner.label}; colours are the model's estimate, not "
                           "observations", "model": str(runner.path), "model_sha256": runner.digest,
            "source_layer": source.cfg.layer, "margin": runner.margin, "minzoom": self.min_zoom,
            "maxzoom": zoom})
        self._reader = TileStore(self.path, readonly=True)
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="colour-store")
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="colour-png")
        self._inflight: dict[TileId, asyncio.Future[bytes | None]] = {}
        self.computed = 0  # tiles computed by the model (not read from the store)

    def stored(self, tile: TileId) -> tuple[bool, bytes | None]:
        """(known, png): known is False when the tile was never computed."""
        status = self._reader.status(tile)
        if status is None:
            return False, None
        return True, self._reader.get(tile) if status is TileStatus.OK else None

    async def png(self, tile: TileId) -> bytes | None:
        """The colourised tile as PNG (None where the historic layer has no data)."""
        if not self.min_zoom <= tile.z <= self.zoom:
            raise ValueError(f"zoom {tile.z} is outside {self.min_zoom}..{self.zoom}")
        known, data = self.stored(tile)
        if known:
            return data
        pending = self._inflight.get(tile)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._inflight[tile] = future
        try:
            data = await (self._compute(tile) if tile.z == self.zoom else self._overview(tile))
            record = TileRecord(tile, TileStatus.OK, data) if data is not None else \
                TileRecord(tile, TileStatus.EMPTY, reason="no historic data")
            await loop.run_in_executor(self._io, self._writer.put_many, [record])
            future.set_result(data)
            return data
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._inflight[tile]

    async def rgba(self, tile: TileId) -> np.ndarray | None:
        from pipeline.geo.tilestore import decode_tile

        data = await self.png(tile)
        if data is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(self._cpu, decode_tile, data)

    async def _compute(self, tile: TileId) -> bytes | None:
        from pipeline.inference.colourise import context_window

        centre = await self.source.gray_alpha(tile)
        if centre is None or not centre[..., 1].any():
            return None
        around = [TileId(tile.z, tile.x + dx, tile.y + dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        values = await asyncio.gather(*(self.source.gray_alpha(t) for t in around), return_exceptions=True)
        # A neighbour that failed to load is treated as missing (mirrored), not as a failed tile.
        tiles = {t: (None if isinstance(v, BaseException) else v)
                 for t, v in zip(around, values, strict=True)}
        loop = asyncio.get_running_loop()
        # context_window reads tiles through `.get`, which _Window provides (duck-typed GrayTiles).
        window = await loop.run_in_executor(self._cpu, context_window, cast(Any, _Window(tiles)), tile,
                                            self.runner.margin)
        rgb = await asyncio.wrap_future(self.runner.submit(window, PRIORITY_TILE))
        m = self.runner.margin
        self.computed += 1
        return await loop.run_in_executor(self._cpu, encode_png, rgb[m:m + TILE_SIZE, m:m + TILE_SIZE],
                                          centre[..., 1])

    async def _overview(self, tile: TileId) -> bytes | None:
        kids = {(dx, dy): TileId(tile.z + 1, 2 * tile.x + dx, 2 * tile.y + dy)
                for dy in (0, 1) for dx in (0, 1)}
        values = await asyncio.gather(*(self.rgba(t) for t in kids.values()))
        loop = asyncio.get_running_loop()
        parent = await loop.run_in_executor(self._cpu, downsample, dict(zip(kids, values, strict=True)))
        if parent is None:
            return None
        return await loop.run_in_executor(self._cpu, encode_png, parent[..., :3], parent[..., 3])

    def close(self) -> None:
        self._io.shutdown(wait=True)
        self._cpu.shutdown(wait=False, cancel_futures=True)
        self._reader.close()
        self._writer.close()
