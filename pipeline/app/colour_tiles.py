"""A colourised layer computed on demand, tile by tile, and kept: each tile is computed once.

At the view's zoom (the zoom the model was trained on) a tile is colourised inside a window of
its neighbours' pixels and cross-faded near its edges with its neighbours' windows, exactly as
the colourise stage does (pipeline/inference/blend.py), so tiles meet without seams; a
window's output is kept while neighbouring tiles need it. Coarser zooms (down to `zoom_out`
levels) are built from their four children, never by running the model at a scale it was
not trained on. Results go to an MBTiles store keyed by the model's weights (digest) and the
layer, under the app's data folder; two requests for one tile share one computation.

A model with instance norms colours the view's area with that area's own statistics, as the
colourise stage does: before its first tile, the layer gathers them over the context windows
of the tiles of `area_sample`, spread over the view's area (once: they are kept beside the
store and read back on the next start), so every tile is normalised alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np

from pipeline.app.runner import PRIORITY_TILE, ModelRunner
from pipeline.app.sources import LayerTiles
from pipeline.geo.tiles import TILE_SIZE, TileId
from pipeline.geo.tilestore import TileRecord, TileStatus, TileStore
from pipeline.inference.blend import NEIGHBOURS, blend_tile

log = logging.getLogger("luminescence.app")
AREA_READ_CHUNK = 4  # windows read at a time while gathering in the background
QUIET_POLL_S = 0.05  # how often background gathering looks whether the model is idle again
OUTPUTS_KEPT = 256  # model outputs over context windows kept for neighbouring tiles (~0.3 MB each)


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


def read_stats(path: Path) -> Any:
    """Statistics kept by an earlier start (None when absent or unreadable: gathered again)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # damaged: not worth more than gathering them again
        log.warning("%s is unreadable: gathering the statistics again", path)
        return None


def write_stats(path: Path, stats: Any) -> None:
    import torch

    from pipeline.core.files import replacing

    with replacing(path) as tmp, open(tmp, "wb") as fh:
        torch.save(stats, fh)


class ColourLayer:
    """The colourised version of one historic layer by one model."""

    def __init__(self, source: LayerTiles, runner: ModelRunner, *, zoom: int, zoom_out: int,
                 store_dir: Path, area_key: str = "", area_sample: list[TileId] | None = None) -> None:
        """area_key, area_sample: give a model with instance norms the statistics of these tiles'
        windows (spread over the view's area) under this key; none: each window's own."""
        self.source = source
        self.runner = runner
        self.zoom = zoom
        self.min_zoom = max(0, zoom - zoom_out)
        adapt = bool(area_sample and runner.adapts)
        self.area_key = area_key if adapt else ""
        self.area_sample = list(area_sample or []) if adapt else []
        # "blend": tiles cross-faded from their neighbours' windows (older stores are not reused)
        ident = (f"{source.service_key}|{source.cfg.layer}|{source.cfg.gray}|{source.luma}|{runner.margin}"
                 f"|blend{'|bf16' if runner.precision == 'bf16' else ''}")
        if adapt:  # other statistics, other colours: another store
            ident += f"|area:{','.join(f'{t.z}/{t.x}/{t.y}' for t in self.area_sample)}"
        name = f"{source.cfg.source}-{source.cfg.layer}{'-gray' if source.cfg.gray else ''}"
        self.path = Path(store_dir) / runner.model_id / \
            f"{name}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}.mbtiles"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = TileStore(self.path, wal=True)
        self._writer.set_metadata({
            "name": f"{name} colourised", "format": "png", "type": "overlay",
            "description": f"COLOURISED by {runner.label}; colours are the model's estimate, not "
                           "observations", "model": str(runner.path), "model_sha256": runner.digest,
            "source_layer": source.cfg.layer, "margin": runner.margin, "precision": runner.precision,
            "minzoom": self.min_zoom,
            "maxzoom": zoom,
            "norm_stats": f"area ({len(self.area_sample)} tiles' windows)" if adapt else "model"})
        self.stats_path = self.path.with_suffix(".normstats.pt")
        self._area_ready: asyncio.Future[None] | None = None
        # Until a tile of this layer waits for the statistics, gathering them is background work
        # that lets the model's other work (another view's map) go first.
        self._wanted = False
        self._waited_s = 0.0
        self._reader = TileStore(self.path, readonly=True)
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="colour-store")
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="colour-png")
        self._inflight: dict[TileId, asyncio.Future[bytes | None]] = {}
        self._outputs: OrderedDict[TileId, asyncio.Future[np.ndarray | None]] = OrderedDict()
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

    async def _window(self, tile: TileId) -> tuple[np.ndarray, np.ndarray] | None:
        """(context window, the tile's gray+alpha), or None where the layer has no data there."""
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
        return window, centre

    async def _compute(self, tile: TileId) -> bytes | None:
        centre = await self.source.gray_alpha(tile)
        if centre is None or not centre[..., 1].any():
            return None
        await self.area_ready()
        # the tile is cross-faded from its own and its neighbours' windows (as the colourise
        # stage does), so it meets the tiles around it without a seam
        around = [TileId(tile.z, tile.x + dx, tile.y + dy) for dx, dy in NEIGHBOURS]
        found = await asyncio.gather(*(self._output(t) for t in around), return_exceptions=True)
        own = found[NEIGHBOURS.index((0, 0))]
        if isinstance(own, BaseException):
            raise own
        if own is None:
            return None
        outputs: dict[tuple[int, int], np.ndarray | None] = {}
        for offset, t, value in zip(NEIGHBOURS, around, found, strict=True):
            if isinstance(value, BaseException):  # a neighbour that failed to load: left out, as if missing
                log.warning("tile %s/%s/%s of %s could not be read (%s): left out of its neighbour's blend",
                            t.z, t.x, t.y, self.source.cfg.layer, value)
                outputs[offset] = None
            else:
                outputs[offset] = value
        self.computed += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._cpu, self._blend_png, outputs, centre[..., 1])

    def _blend_png(self, outputs: dict[tuple[int, int], np.ndarray | None], alpha: np.ndarray) -> bytes:
        return encode_png(blend_tile(outputs, self.runner.margin), alpha)

    async def _output(self, tile: TileId) -> np.ndarray | None:
        """The model's (window, window, 3) uint8 output over the tile's context window (None where
        the layer has no data): computed once while neighbouring tiles need it, kept for
        OUTPUTS_KEPT windows, two requests sharing one computation."""
        kept = self._outputs.get(tile)
        if kept is not None:
            self._outputs.move_to_end(tile)
            return await asyncio.shield(kept)
        future = asyncio.ensure_future(self._run_window(tile))
        self._outputs[tile] = future
        if len(self._outputs) > OUTPUTS_KEPT:
            self._outputs.popitem(last=False)
        try:
            return await asyncio.shield(future)
        except BaseException:
            if self._outputs.get(tile) is future:  # a failure is not kept: the next request tries again
                del self._outputs[tile]
            raise

    async def _run_window(self, tile: TileId) -> np.ndarray | None:
        found = await self._window(tile)
        if found is None:
            return None
        window, _ = found
        return await asyncio.wrap_future(self.runner.submit(window, PRIORITY_TILE, self.area_key))

    @property
    def area_prepared(self) -> bool:
        """Whether the tiles can be coloured now (the area's statistics are in, or not needed);
        safe to ask from any thread."""
        return not self.area_key or self.runner.has_area(self.area_key)

    async def area_ready(self, *, background: bool = False) -> None:
        """Wait until the model has this area's statistics (gathered once, by the first caller).
        `background`: nobody is waiting for this layer's tiles yet, so the gathering pauses
        while the model has other windows to colour (until a tile of this layer asks)."""
        if not background:
            self._wanted = True
        if not self.area_key:
            return
        ready = self._area_ready
        if ready is None or (ready.done() and (ready.cancelled() or ready.exception() is not None)):
            self._area_ready = ready = asyncio.ensure_future(self._prepare_area())  # (again, if it failed)
        await asyncio.shield(ready)

    async def _prepare_area(self) -> None:
        loop = asyncio.get_running_loop()
        stats = await loop.run_in_executor(self._io, read_stats, self.stats_path)
        how = f"read from {self.stats_path.name}"
        if stats is not None:
            try:
                self.runner.add_area(self.area_key, stats)
                log.info("%s: instance-norm statistics of the area %s", self.area_key, how)
                return
            except ValueError:  # another model's (or a damaged) file: gather them again
                log.warning("%s does not fit the model: gathering the statistics again", self.stats_path)
        start = time.perf_counter()
        found: list[Any] = []
        pending = list(self.area_sample)
        while pending:  # in the background a few windows at a time, each batch when the model is idle
            await self._quiet()
            count = len(pending) if self._wanted else AREA_READ_CHUNK
            chunk, pending = pending[:count], pending[count:]
            found += await asyncio.gather(*(self._window(t) for t in chunk), return_exceptions=True)
        failed = [f for f in found if isinstance(f, BaseException)]
        if failed and len(failed) == len(found):  # the service failed, not the area: try again later
            raise failed[0]
        windows = [f[0] for f in found if f is not None and not isinstance(f, BaseException)]
        if not windows:
            log.warning("%s: no tile of the area has data; each window's own statistics are used",
                        self.area_key)
            self.area_key = ""
            return
        fetched = time.perf_counter()
        stats = await loop.run_in_executor(None, self.runner.area_stats, np.stack(windows),
                                           self._quiet_blocking)
        await loop.run_in_executor(self._io, write_stats, self.stats_path, stats)
        self.runner.add_area(self.area_key, stats)
        done = time.perf_counter()
        waited = f", of which {self._waited_s:.1f} s waiting for other tiles" \
            if self._waited_s >= 0.05 else ""
        how = (f"gathered over {len(windows)} windows in {done - start:.1f} s ({fetched - start:.1f} s "
               f"reading their tiles, {done - fetched:.1f} s in the model{waited})")
        log.info("%s: instance-norm statistics of the area %s", self.area_key, how)

    def _yields(self) -> bool:
        return not self._wanted and self.runner.busy()

    async def _quiet(self) -> None:
        """Background gathering: wait while the model has other work (or had it just now)."""
        if self._yields():  # the wait itself on a worker thread: one loop for both callers
            await asyncio.get_running_loop().run_in_executor(None, self._quiet_blocking)

    def _quiet_blocking(self) -> None:
        """As `_quiet`, on the gathering's worker thread, before each batch of passes."""
        start = time.perf_counter()
        while self._yields():
            time.sleep(QUIET_POLL_S)
        self._waited_s += time.perf_counter() - start

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
