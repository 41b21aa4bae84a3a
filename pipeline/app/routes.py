"""The web app's HTTP interface (Starlette): the page, its JSON, tiles, export and upload.

    GET  /                                   the map page (static, vendored Leaflet)
    GET  /api/views                          the configured views (layers, labels, AOI outlines)
    GET  /tiles/{view}/{role}/{z}/{x}/{y}    role: historic | modern | colourised
    GET  /api/views/{view}/export?bbox=W,S,E,N   "download this view" (COG)
    POST /api/upload?view=V&name=FILE        body: the photo's bytes -> JSON with result links
    GET  /api/uploads/{id}/{file}            an upload's result or preview

Every refusal is one JSON {"error": "..."} the page shows as is, and one log line.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.app.export import export_view, parse_bbox
from pipeline.app.runner import ModelUnavailable
from pipeline.app.sources import LayerUnavailable
from pipeline.app.uploads import check_name, colourise_photo, decode, prune, write_result
from pipeline.app.views import ROLES, AppState, RequestError
from pipeline.core.errors import one_line

log = logging.getLogger("luminescence.app")
STATIC = Path(__file__).parent / "static"
KEEP_UPLOADS = 20
RESOLVE_WAIT_S = 8.0  # how long the page's view list waits for a slow map service
_TOKEN = re.compile(r"[0-9a-f]{32}")
_RESULT_FILES = {"result.tif": "image/tiff", "result.png": "image/png", "preview.png": "image/png"}
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                 b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def _transparent_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("LA", (256, 256), (0, 0)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


TRANSPARENT = _transparent_png()  # what the map shows where a layer has no data


def refuse(request: Request, message: str, status: int) -> JSONResponse:
    log.warning("refused %s %s (%d): %s", request.method, request.url.path, status, one_line(message))
    return JSONResponse({"error": one_line(message)}, status_code=status)


def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Turn user errors into one clear JSON message; bugs into a 500 with the traceback logged."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as exc:
            return refuse(request, str(exc), exc.status)
        except LayerUnavailable as exc:
            return refuse(request, str(exc), 502)
        except ModelUnavailable as exc:
            return refuse(request, str(exc), 503)
        except Exception:
            log.exception("error while serving %s %s", request.method, request.url.path)
            return JSONResponse({"error": "internal error; the operator's log has the details"},
                                status_code=500)

    return endpoint


class SecurityHeaders:
    """Adds a strict Content-Security-Policy (everything from this server) to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_routes(state: AppState) -> list[BaseRoute]:
    cfg = state.cfg
    uploads_dir = state.data_dir / "uploads"
    exports_dir = state.data_dir / "exports"

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def views(request: Request) -> Response:
        # Titles and SYNTHETIC flags come from the services' capabilities: read them all at once,
        # and wait for a slow or unreachable service only so long (it keeps resolving meanwhile).
        pending = [layer for view in state.views.values() for layer in (view.historic, view.modern)
                   if not layer.resolved]
        if pending:
            tasks = {asyncio.ensure_future(layer.aresolve()): layer for layer in pending}
            done, _ = await asyncio.wait(tasks, timeout=RESOLVE_WAIT_S)
            for task, layer in tasks.items():
                if task not in done:
                    task.add_done_callback(lambda t: t.exception())  # finishes later; nobody waits
                    log.warning("layer %s of source %s: no answer within %g s", layer.cfg.layer,
                                layer.cfg.source, RESOLVE_WAIT_S)
                elif task.exception() is not None:
                    log.warning("%s", one_line(str(task.exception())))
        described = []
        for view in state.views.values():
            item = view.describe()
            for role, layer in (("historic", view.historic), ("modern", view.modern)):
                if not layer.resolved:
                    item["layers"][role]["available"] = False
                    item["layers"][role]["error"] = (f"layer '{layer.cfg.layer}' of source "
                                                     f"'{layer.cfg.source}' cannot be reached now (see "
                                                     f"the operator's log)")
            described.append(item)
        return JSONResponse({"views": described, "upload": {"max_bytes": cfg.upload.max_bytes,
                                                            "max_pixels": cfg.upload.max_pixels}})

    async def tile(request: Request) -> Response:
        p = request.path_params
        view = state.view(p["view"])
        role = p["role"]
        if role not in ROLES:
            raise RequestError(f"unknown layer '{role}' (layers: {', '.join(ROLES)})", 404)
        t = view.check_tile(p["z"], p["x"], p["y"])
        if request.query_params:  # e.g. ?url=...: tiles come only from the view's configured layers
            names = ", ".join(sorted(request.query_params.keys()))[:80]
            raise RequestError(f"tile requests take no parameters (got {names}); the layers are the "
                               f"view's configured ones")
        headers = {"Cache-Control": "public, max-age=3600"}
        if role == "colourised":
            if view.colour is None:
                raise ModelUnavailable(view.model_error)
            data = await view.colour.png(t)
            return Response(data or TRANSPARENT, media_type="image/png", headers=headers)
        layer = view.historic if role == "historic" else view.modern
        src = await layer.tile(t)
        if src.data is None:
            return Response(TRANSPARENT, media_type="image/png", headers=headers)
        return Response(src.data, media_type=src.mime, headers=headers)

    async def export(request: Request) -> Response:
        view = state.view(request.path_params["view"])
        path, name = await export_view(view, parse_bbox(request.query_params.get("bbox")), exports_dir,
                                       cfg.export_max_tiles)
        return FileResponse(path, media_type="image/tiff", filename=name)

    async def upload(request: Request) -> Response:
        stem = check_name(request.query_params.get("name", ""))
        view = state.view(request.query_params.get("view") or next(iter(state.views)))
        if view.colour is None:
            raise ModelUnavailable(view.model_error)
        limit = cfg.upload.max_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(f"the file is {int(declared):,} bytes, more than the limit of {limit:,} bytes "
                               f"(params.yaml app.upload.max_bytes)", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(f"the file is larger than the limit of {limit:,} bytes "
                                   f"(params.yaml app.upload.max_bytes)", 413)
        if not body:
            raise RequestError("the upload is empty: send the photo's bytes as the request body")
        loop = asyncio.get_running_loop()
        photo = await loop.run_in_executor(None, decode, bytes(body), cfg.upload.max_pixels)
        del body
        runner = view.colour.runner
        rgba = await colourise_photo(runner, photo)
        result = await loop.run_in_executor(None, write_result, rgba, photo, uploads_dir, stem, runner.label)
        await loop.run_in_executor(None, prune, uploads_dir, KEEP_UPLOADS)
        log.info("colourised an upload: %s, %dx%d pixels", result["file_name"], result["width"],
                 result["height"])
        return JSONResponse(result)

    async def upload_file(request: Request) -> Response:
        token, name = request.path_params["token"], request.path_params["file"]
        if not _TOKEN.fullmatch(token) or name not in _RESULT_FILES:
            raise RequestError("no such upload result", 404)
        path = uploads_dir / token / name
        if not path.is_file():
            raise RequestError("this upload result is gone (only the newest are kept); upload again", 404)
        download = None
        if name.startswith("result"):
            download = (uploads_dir / token / "name.txt").read_text(encoding="utf-8")
        return FileResponse(path, media_type=_RESULT_FILES[name], filename=download)

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # browsers ask for it; there is none

    return [
        Route("/", page),
        Route("/favicon.ico", favicon),
        Route("/api/views", guarded(views)),
        Route("/tiles/{view}/{role}/{z:int}/{x:int}/{y:int}", guarded(tile)),
        Route("/api/views/{view}/export", guarded(export)),
        Route("/api/upload", guarded(upload), methods=["POST"]),
        Route("/api/uploads/{token}/{file}", guarded(upload_file)),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]


async def not_found(request: Request, exc: Exception) -> Response:
    return refuse(request, f"no such page or endpoint: {request.url.path[:100]}", 404)


async def not_allowed(request: Request, exc: Exception) -> Response:
    return refuse(request, f"{request.method} is not allowed on {request.url.path[:100]}", 405)


def _resolve_failed(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("not ready at start-up (the page will ask again): %s", one_line(str(task.exception())))


async def _prepare_areas(colours: list[Any]) -> None:
    """Each view's area statistics, one view after the other in params.yaml's order: the page
    opens the first view, which then need not share the machine with the others'. The later
    views' are background work: they wait while the model colours tiles (a page is open),
    until one of their own tiles asks for them."""
    for i, colour in enumerate(colours):
        try:
            await colour.area_ready(background=i > 0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported; its tiles ask again
            log.info("not ready at start-up (the page will ask again): %s", one_line(str(exc)))


def resolve_at_startup(state: AppState) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """A lifespan that starts reading every layer's capabilities as soon as the app serves, so
    that the page's first /api/views finds them read, and gathering each view's area statistics
    (a model with instance norms), so that its first tiles need not wait for them. Nothing waits
    for it: a slow or unreachable service is still asked again, and reported, when the page asks
    for the views."""
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        layers = [layer for view in state.views.values() for layer in (view.historic, view.modern)]
        tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(layer.aresolve()) for layer in layers]
        colours = [view.colour for view in state.views.values()
                   if view.colour is not None and view.colour.area_key]
        if colours:
            tasks.append(asyncio.ensure_future(_prepare_areas(colours)))
        for task in tasks:
            task.add_done_callback(_resolve_failed)
        yield
        for task in tasks:
            task.cancel()
    return lifespan


def create_app(state: AppState, *, extra_routes: list[BaseRoute] | None = None) -> Any:
    """The ASGI application: the web app's routes (and, e.g., the WMTS endpoints) in one app.
    Whoever built `state` closes it."""
    app = Starlette(routes=build_routes(state) + list(extra_routes or []),
                    exception_handlers={404: not_found, 405: not_allowed}, lifespan=resolve_at_startup(state))
    return SecurityHeaders(app)
