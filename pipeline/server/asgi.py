"""The WMTS endpoints as an ASGI application: `WmtsAsgi(service)`.

Each GET goes through `pipeline.server.handling.handle` (in a thread: rendering is blocking GDAL
work), waits the response's delay without holding a thread, and sends it. The request target is
passed as sent (`raw_path`, percent-encoding intact), so the traversal check sees what the
client sent and the app can be mounted anywhere in a larger ASGI app (the web app mounts it).

An injected truncation declares the full Content-Length, sends half the body and returns
without completing the response; uvicorn then closes the connection, which is the fault a
client must detect. uvicorn logs such an unfinished response as an error; that one log line is
dropped for deliberate truncations only (`_DeliberateTruncation`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.server.handling import Response, handle
from pipeline.server.service import WmtsService

_TRUNCATED = contextvars.ContextVar("wmts_truncated", default=False)
_UNFINISHED = "ASGI callable returned without completing response."
WMTS_PATHS = ("/wmts", "/file-exists.php")  # what the web app routes here


class _DeliberateTruncation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _UNFINISHED and _TRUNCATED.get())


_filter = _DeliberateTruncation()
if _filter not in logging.getLogger("uvicorn.error").filters:
    logging.getLogger("uvicorn.error").addFilter(_filter)


class WmtsAsgi:
    """ASGI app answering WMTS GET (and HEAD) requests against one `WmtsService`."""

    def __init__(self, service: WmtsService, *, threads: int = 16) -> None:
        self.service = service
        # Its own threads: a caller in this process waiting on the WMTS (the web app fetching its
        # own sample layers) must never starve the renderer of threads.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wmts")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, Response(405, b"only GET is supported\n", "text/plain; charset=utf-8",
                                       (("Allow", "GET, HEAD"),)), head=False)
            return
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.decode("latin-1").split("?", 1)[0]
        query = scope.get("query_string", b"").decode("latin-1")
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self._pool, handle, self.service, path, query)
        if response.delay_s > 0:
            await asyncio.sleep(response.delay_s)
        await _send(send, response, head=scope["method"] == "HEAD")


async def _send(send: Any, response: Response, *, head: bool) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.all_headers()]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    if head:
        await send({"type": "http.response.body", "body": b""})
        return
    if response.truncate:
        _TRUNCATED.set(True)
        await send({"type": "http.response.body", "body": response.body[: len(response.body) // 2],
                    "more_body": True})
        return  # unfinished: the server closes the connection
    await send({"type": "http.response.body", "body": response.body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
