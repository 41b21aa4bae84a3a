"""`WmtsServer`: a `WmtsService` served over HTTP/1.1 by the standard library on 127.0.0.1.

The transport only moves bytes: each GET goes through `pipeline.server.handling.handle`, and the
`Response` is written back (after its delay; cut short when it is an injected truncation).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from pipeline.server.errors import ServerError
from pipeline.server.faults import FaultPlan
from pipeline.server.handling import Response, handle
from pipeline.server.layers import Layer, LayerSource
from pipeline.server.rendering import TileRenderer
from pipeline.server.service import WmtsService

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    service: WmtsService
    verbose: bool

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that time out or drop connections are normal under fault injection.
        log.debug("connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server_version = "LuminescenceWMTS/1.0"
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections are closed after this
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        if self.server.verbose:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def do_GET(self) -> None:
        try:
            response = handle(self.server.service, self.path.split("?", 1)[0], urlsplit(self.path).query)
            if response.delay_s > 0:
                time.sleep(response.delay_s)
            self._send(response)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (e.g. it timed out)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.all_headers():
            self.send_header(name, value)
        self.end_headers()
        if response.truncate:
            self.wfile.write(response.body[: len(response.body) // 2])
            self.wfile.flush()
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(response.body)


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
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

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
        if self._httpd is not None:
            return self
        try:
            httpd = _HTTPServer((self._host, self._port), _Handler)
        except OSError as exc:
            raise ServerError(f"cannot listen on {self._host}:{self._port} ({exc.strerror}); "
                              "pick another port (0 = any free port)") from None
        httpd.service = self.service
        httpd.verbose = self.verbose
        self._httpd = httpd
        self.service.open()
        host, port = httpd.server_address[:2]
        self.service.bind(f"http://{host}:{port}")
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="wmts-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self.service.close()

    def __enter__(self) -> WmtsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
