"""`WmtsServer`: a `WmtsService` served over HTTP/1.1 on 127.0.0.1 by uvicorn (ASGI).

The transport only moves bytes: `pipeline.server.asgi.WmtsAsgi` passes each GET through
`pipeline.server.handling.handle` and sends the `Response` back (after its delay; cut short
when it is an injected truncation). The web app serves the same ASGI endpoints in its own app.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Sequence

from pipeline.server.asgi import WmtsAsgi
from pipeline.server.asgi_server import LOOPBACK, AsgiServer, ListenError
from pipeline.server.errors import ServerError
from pipeline.server.faults import FaultPlan
from pipeline.server.layers import Layer, LayerSource
from pipeline.server.rendering import TileRenderer
from pipeline.server.service import WmtsService

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = LOOPBACK


class WmtsServer:
    """A WMTS over local rasters on 127.0.0.1. Use as a context manager or start()/stop()."""

    def __init__(self, layers: Sequence[LayerSource], *, host: str = "127.0.0.1", port: int = 0,
                 faults: FaultPlan | None = None, render_cache_tiles: int = 4096,
                 cache_dir: str | os.PathLike[str] = "data/derived/cache", verbose: bool = False) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ServerError(f"the WMTS server binds to the loopback interface only, not {host}")
        self.service = WmtsService(layers, faults=faults, render_cache_tiles=render_cache_tiles,
                                   cache_dir=cache_dir)
        self.verbose = verbose
        self._host, self._port = host, port
        self._server: AsgiServer | None = None
        self._app: WmtsAsgi | None = None

    # ----------------------------------------------------------- what the service holds
    @property
    def layers(self) -> dict[str, Layer]:
        return self.service.layers

    @property
    def faults(self) -> FaultPlan:
        return self.service.faults

    @property
    def renderer(self) -> TileRenderer:
        return self.service.renderer

    @property
    def base_url(self) -> str:
        return self.service.base_url

    @property
    def capabilities_url(self) -> str:
        return self.service.capabilities_url if self.service.base_url else ""  # "" until started

    @property
    def capabilities(self) -> bytes:
        return self.service.capabilities

    def prepare(self, layer_ids: Sequence[str] | None = None) -> None:
        """Build the cached GeoTIFFs now instead of on the first tile of each layer."""
        self.service.prepare(layer_ids)

    def tile_requests(self) -> collections.Counter[tuple[str, int, int, int]]:
        """GetTile attempts received per (layer, z, x, y), faulted ones included (a copy)."""
        return self.service.tile_requests()

    @property
    def total_tile_requests(self) -> int:
        return self.service.total_tile_requests

    # ----------------------------------------------------------- lifecycle
    def start(self) -> WmtsServer:
        if self._server is not None:
            return self
        app = WmtsAsgi(self.service)
        try:
            server = AsgiServer(app, host=self._host, port=self._port, access_log=self.verbose)
        except ListenError as exc:
            app.close()
            raise ServerError(str(exc)) from None
        self.service.open()
        self.service.bind(server.base_url)
        try:
            server.start()
        except BaseException:
            app.close()
            self.service.close()
            raise
        self._server, self._app = server, app
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        if self._app is not None:
            self._app.close()
        self._server = self._app = None
        self.service.close()

    def __enter__(self) -> WmtsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
