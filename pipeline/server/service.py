"""`WmtsService`: what every WMTS request needs, whatever transport carries it.

It holds the inspected layers, their renderer, the fault plan and the per-tile attempt counters
(the fault plan and the tests read them), and the capabilities document for the URL the service
is reached at. `pipeline.server.handling.handle` answers one request against it; a transport
(`pipeline.server.httpd`, or an ASGI app) binds it to its base URL, opens it, passes requests
through and closes it.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from pipeline.geo.tiles import TileId
from pipeline.server.capabilities import capabilities_xml
from pipeline.server.errors import ServerError
from pipeline.server.faults import FaultPlan
from pipeline.server.layers import Layer, LayerSource, inspect_layer
from pipeline.server.rendering import TileRenderer

CAPABILITIES_PATH = "/wmts/1.0.0/WMTSCapabilities.xml"


class WmtsService:
    """Layers, renderer, faults and counters of one WMTS; thread-safe."""

    def __init__(self, layers: Sequence[LayerSource], *, faults: FaultPlan | None = None,
                 render_cache_tiles: int = 4096,
                 cache_dir: str | os.PathLike[str] = "data/derived/cache") -> None:
        ids = [layer.id for layer in layers]
        if len(set(ids)) != len(ids):
            raise ServerError(f"duplicate layer ids: {ids}")
        self.layers: dict[str, Layer] = {src.id: inspect_layer(src) for src in layers}
        self.faults = faults or FaultPlan()
        self.renderer = TileRenderer(self.layers, Path(cache_dir), render_cache_tiles)
        self.base_url = ""
        self._capabilities: tuple[str, bytes] | None = None
        self._counts: collections.Counter[tuple[str, int, int, int]] = collections.Counter()
        self._counts_lock = threading.Lock()

    # ----------------------------------------------------------- where it is reached
    def bind(self, base_url: str) -> None:
        """Set the URL clients reach the service at (`http://host:port`, no trailing slash)."""
        self.base_url = base_url.rstrip("/")

    @property
    def capabilities_url(self) -> str:
        return f"{self.base_url}{CAPABILITIES_PATH}"

    @property
    def capabilities(self) -> bytes:
        """The capabilities document for `base_url` (built once per URL)."""
        cached = self._capabilities
        if cached is None or cached[0] != self.base_url:
            cached = (self.base_url, capabilities_xml(list(self.layers.values()), self.base_url))
            self._capabilities = cached
        return cached[1]

    # ----------------------------------------------------------- lifecycle
    def open(self) -> None:
        self.renderer.open()

    def close(self) -> None:
        self.renderer.close()

    def prepare(self, layer_ids: Sequence[str] | None = None) -> None:
        """Build the cached GeoTIFFs now instead of on the first tile of each layer."""
        for layer_id in list(self.layers) if layer_ids is None else layer_ids:
            if layer_id not in self.layers:
                raise ServerError(f"unknown layer '{layer_id}' (known: {', '.join(self.layers)})")
            self.renderer.prepare(self.layers[layer_id])

    # ----------------------------------------------------------- counters
    def count_attempt(self, layer_id: str, tile: TileId) -> int:
        """Record one GetTile attempt; return its 0-based attempt number for this tile."""
        key = (layer_id, tile.z, tile.x, tile.y)
        with self._counts_lock:
            attempt = self._counts[key]
            self._counts[key] = attempt + 1
        return attempt

    def tile_requests(self) -> collections.Counter[tuple[str, int, int, int]]:
        """GetTile attempts received per (layer, z, x, y), faulted ones included (a copy)."""
        with self._counts_lock:
            return collections.Counter(self._counts)

    @property
    def total_tile_requests(self) -> int:
        with self._counts_lock:
            return sum(self._counts.values())
