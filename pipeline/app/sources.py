"""Source tiles of the configured layers, through the harvester's fetcher and the tile cache.

Every layer the app shows is a layer of a source in params.yaml (`sources`): the bundled sample
(served by this same application's WMTS endpoints), a WMTS or an XYZ template. A tile is looked
up in the persistent tile cache first and otherwise fetched with the harvester's `TileFetcher`
(response checks, retries with backoff, Retry-After), at most `harvest.concurrency` at a time
and `harvest.requests_per_second` for remote services: the same politeness as the fetch stage.
Clients never name a URL: they name a view, and the view names the layer.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.config import AppLayerConfig, HarvestConfig, SourceConfig
from pipeline.core.errors import LuminescenceError
from pipeline.geo.harvester import RateLimiter, TileFetcher, make_session, source_key
from pipeline.geo.tilecache import TileCache
from pipeline.geo.tiles import TileId
from pipeline.geo.tilestore import TileStatus, decode_tile
from pipeline.geo.wmts_client import LayerInfo, TileSource, read_capabilities_for, resolve_source, xyz_source

log = logging.getLogger("luminescence.app")
DECODED_CACHE_TILES = 512


class LayerUnavailable(LuminescenceError):
    """A configured layer cannot be reached or resolved (message says why and what to do)."""


@dataclass(frozen=True)
class SourceTile:
    """One source tile: its original bytes and MIME type, or nothing (outside the layer)."""

    data: bytes | None
    mime: str = "image/png"


class SourceGate:
    """What every layer of one source shares, so the source's politeness limits hold in total:
    one rate limiter (`harvest.requests_per_second`; none for our own server) and one pool of
    `harvest.concurrency` threads, whatever the number of views and layers using it."""

    def __init__(self, name: str, kind: str, harvest: HarvestConfig) -> None:
        self.limiter = RateLimiter(None if kind == "sample" else harvest.requests_per_second)
        self.pool = ThreadPoolExecutor(max_workers=harvest.concurrency, thread_name_prefix=f"src-{name}")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class LayerTiles:
    """One configured layer (`source`, `layer`, optional gray) at one service.

    `resolve()` reads the capabilities once (WMTS and the sample) and checks the layer offers
    the view's zoom; `tile()` and `gray_alpha()` are coroutines that never block the event loop.
    Concurrent requests for one tile share one fetch.
    """

    def __init__(self, name: str, cfg: AppLayerConfig, source: SourceConfig, harvest: HarvestConfig,
                 cache: TileCache, gate: SourceGate, *, zoom: int, sample_caps_url: Callable[[], str],
                 sample_key: str, luma: str = "rec601") -> None:
        self.name = name
        self.cfg = cfg
        self.source_cfg = source
        self.harvest = harvest
        self.cache = cache
        self.zoom = zoom
        self.luma = luma
        self._sample_caps_url = sample_caps_url
        self._sample_key = sample_key
        self._source: TileSource | None = None
        self._info: LayerInfo | None = None
        self._fetcher: TileFetcher | None = None
        self._gate = gate
        self._pool = gate.pool
        self._resolve_lock = threading.Lock()
        self._inflight: dict[TileId, asyncio.Future[SourceTile]] = {}
        self._decoded: OrderedDict[TileId, np.ndarray | None] = OrderedDict()
        self.fetches = 0  # tiles requested from the service (cache misses)

    # ------------------------------------------------------------------ identity
    @property
    def service_key(self) -> str:
        """What identifies this layer's service in caches (stable across the app's ports)."""
        if self.source_cfg.kind == "sample":
            return self._sample_key
        assert self.source_cfg.url is not None
        return self.source_cfg.url

    @property
    def title(self) -> str:
        # A synthetic layer's service title repeats the SYNTHETIC note the page shows anyway.
        base = self.cfg.title or (self._info.title if self._info and not self.synthetic else self.cfg.layer)
        return f"{base} — in gray (luma)" if self.cfg.gray else base

    @property
    def resolved(self) -> bool:
        return self._source is not None

    @property
    def synthetic(self) -> bool:
        return bool(self._info and self._info.synthetic)

    @property
    def attribution(self) -> str:
        note = "SYNTHETIC layer (film emulation), not a real historic photograph. " if self.synthetic else ""
        return note + self.source_cfg.attribution

    # ------------------------------------------------------------------ resolving
    def resolve(self) -> TileSource:
        """The validated tile source (blocking: capabilities are read once, then kept)."""
        with self._resolve_lock:
            if self._source is not None:
                return self._source
            kind, cfg = self.source_cfg.kind, self.harvest
            try:
                if kind == "xyz":
                    assert self.source_cfg.url is not None
                    source: TileSource = xyz_source(self.source_cfg.url, self.cfg.layer)
                else:
                    url = self._sample_caps_url() if kind == "sample" else self.source_cfg.url
                    assert url is not None
                    caps = read_capabilities_for(url, cfg)  # the harvest section's limits and deadline
                    wmts = resolve_source(caps, self.cfg.layer, zoom=self.zoom)
                    self._info = wmts.layer
                    source = wmts
            except LuminescenceError as exc:
                raise LayerUnavailable(f"layer '{self.cfg.layer}' of source '{self.cfg.source}': {exc}") \
                    from None
            session = make_session(cfg.user_agent, cfg.concurrency, source.url(TileId(self.zoom, 0, 0)))
            self._fetcher = TileFetcher(source, cfg, session, self._gate.limiter)
            self._source = source
            return source

    async def aresolve(self) -> TileSource:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.resolve)

    # ------------------------------------------------------------------ tiles
    async def tile(self, tile: TileId) -> SourceTile:
        """The tile's bytes as the service sent them (gray layers: a gray PNG)."""
        src = await self._source_tile(tile)
        if not self.cfg.gray or src.data is None:
            return src
        data = await asyncio.get_running_loop().run_in_executor(self._pool, _gray_png, src.data, self.luma)
        return SourceTile(data, "image/png")

    async def _source_tile(self, tile: TileId) -> SourceTile:
        """The tile as the service sent it, colour layers shown in gray included: the page's
        gray PNG is made only when the page asks (`tile`), and the model's gray pixels come from
        these bytes directly (`gray_alpha`), not through an encoded PNG and back."""
        pending = self._inflight.get(tile)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SourceTile] = loop.create_future()
        self._inflight[tile] = future
        try:
            result = await loop.run_in_executor(self._pool, self._get_blocking, tile)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody is warned about it
            raise
        finally:
            del self._inflight[tile]

    async def gray_alpha(self, tile: TileId) -> np.ndarray | None:
        """(256, 256, 2) uint8 gray + alpha of a tile, or None where the layer has no data."""
        if tile in self._decoded:
            self._decoded.move_to_end(tile)
            return self._decoded[tile]
        src = await self._source_tile(tile)
        out = None
        if src.data is not None:
            out = await asyncio.get_running_loop().run_in_executor(self._pool, self._decode_gray, src.data)
        self._decoded[tile] = out
        while len(self._decoded) > DECODED_CACHE_TILES:
            self._decoded.popitem(last=False)
        return out

    def _decode_gray(self, data: bytes) -> np.ndarray:
        from pipeline.geo.pixels import to_gray

        rgba = decode_tile(data)
        gray, _ = to_gray(rgba, self.luma)
        return np.stack([gray, rgba[..., 3]], axis=-1)

    def _get_blocking(self, tile: TileId) -> SourceTile:
        source = self.resolve()
        assert self._fetcher is not None
        key = source_key(source, self.service_key)
        lim = source.limits(tile.z)
        if lim is not None and not lim.contains(tile):
            return SourceTile(None)
        cached = self.cache.get_many(key, [tile])
        if cached:
            record = cached[0]
        else:
            self.fetches += 1
            result = self._fetcher.fetch(tile)
            record = result.record
            if record.status is TileStatus.FAILED:
                log.warning("source tile %s of %s failed: %s", tile, self.cfg.layer, record.reason)
                raise LayerUnavailable(f"{self.cfg.layer} tile {tile}: {record.reason}")
            if result.raw is not None:
                self.cache.put_many(key, [(record, result.raw)])
        if record.status is not TileStatus.OK or record.data is None:
            return SourceTile(None)
        return SourceTile(record.data, source.format)

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.session.close()


def _gray_png(data: bytes, luma: str) -> bytes:
    from PIL import Image

    from pipeline.geo.pixels import to_gray

    rgba = decode_tile(data)
    gray, _ = to_gray(rgba, luma)
    buf = io.BytesIO()
    Image.fromarray(np.stack([gray, rgba[..., 3]], axis=-1)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


async def gather_tiles(fetch: Callable[[TileId], Awaitable[Any]], tiles: list[TileId]) -> dict[TileId, Any]:
    """{tile: await fetch(tile)} for tiles fetched concurrently."""
    values = await asyncio.gather(*(fetch(t) for t in tiles))
    return dict(zip(tiles, values, strict=True))

