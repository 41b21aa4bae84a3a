"""Run an ASGI application under uvicorn on a socket bound here, in the foreground or a thread.

Binding the socket before uvicorn starts gives the real port at once (port 0 = any free port),
so the caller knows its URL before the first request, and a port in use is one clear error.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

from pipeline.core.errors import LuminescenceError

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ListenError(LuminescenceError):
    pass


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0 = any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another port "
                          f"(0 = any free port)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_host(host: str) -> str:
    """The host to put in URLs for a server bound to `host` (all interfaces: the loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class AsgiServer:
    """uvicorn serving `app` on host:port. `start()` runs it in a daemon thread; `run()` blocks."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, access_log: bool = False,
                 log_level: str = "warning", sock: socket.socket | None = None) -> None:
        """`sock`: a socket already bound by `bind(host, port)` (e.g. before a slow start-up)."""
        import uvicorn

        self.sock = sock or bind(host, port)
        bound_host, bound_port = self.sock.getsockname()[:2]
        self.port = int(bound_port)
        self.base_url = f"http://{url_host(host)}:{self.port}"
        # httptools (C) parses requests ~20-30 % cheaper than h11 in the cached-tile benchmark;
        # keep-alive lets a harvester or a browser reuse its connections.
        config = uvicorn.Config(app, http="httptools", loop="asyncio", lifespan="on", access_log=access_log,
                                log_level="info" if access_log else log_level, timeout_keep_alive=60,
                                timeout_graceful_shutdown=2, server_header=False)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        del bound_host

    def run(self) -> None:
        """Serve in the calling thread until Ctrl-C (uvicorn handles the signal)."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def start(self, timeout_s: float = 30.0) -> AsgiServer:
        """Serve in a daemon thread; return once the server accepts requests."""
        if self._thread is not None:
            return self

        def serve() -> None:
            asyncio.run(self.server.serve(sockets=[self.sock]))

        self._thread = threading.Thread(target=serve, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise ListenError(f"the server on port {self.port} stopped while starting (see the log)")
            if time.monotonic() > deadline:
                raise ListenError(f"the server on port {self.port} did not start within {timeout_s:g} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._thread is None:
            self.sock.close()
            return
        self.server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():  # a request that does not finish: close connections hard
            self.server.force_exit = True
            self._thread.join(timeout=5)
        self._thread = None
        self.sock.close()

    def __enter__(self) -> AsgiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
