"""One WMTS request -> one `Response`, with no HTTP library involved.

`handle(service, path, query)` answers GET requests for every endpoint the server offers:

- `/wmts/1.0.0/WMTSCapabilities.xml` and `/wmts?SERVICE=WMTS&REQUEST=GetCapabilities`;
- KVP GetTile: `/wmts?SERVICE=WMTS&REQUEST=GetTile&...`;
- REST GetTile: `/wmts/{layer}/{TileMatrixSet}/{TileMatrix}/{TileCol}/{TileRow}.{png|jpg}`;
- Sinica's legacy XYZ endpoint: `/file-exists.php?img={LAYER}-{png|jpg}-{z}-{x}-{y}`;
- `/`: a one-line pointer to the capabilities.

A transport (pipeline.server.httpd, or an ASGI app) passes the request path as sent
(percent-encoding intact: the traversal check decodes it itself) and the raw query string, waits
`Response.delay_s`, then sends the status, headers and body, plus a Content-Length. A response
with `truncate` set must declare the full Content-Length, send only the first half of the body
and close the connection: that is the injected fault a client has to detect.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.geo.tiles import TileId
from pipeline.server.capabilities import exception_report, service_exception
from pipeline.server.errors import OwsException
from pipeline.server.layers import EXTENSIONS, FORMATS, MATRIX_SET, MAX_ZOOM, Layer
from pipeline.server.rendering import TRANSPARENT_PNG
from pipeline.server.service import CAPABILITIES_PATH, WmtsService

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
XML = "application/xml"


@dataclass(frozen=True)
class Response:
    """What to send back: `headers` are the extra ones; `all_headers()` lists every header."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0  # wait this long before answering (injected latency and slowness)
    truncate: bool = False  # declare the full length, send half the body, close the connection

    def all_headers(self) -> list[tuple[str, str]]:
        """Every header to send, Content-Length included, in order."""
        out = [("Content-Type", self.content_type), ("Content-Length", str(len(self.body))),
               ("Access-Control-Allow-Origin", "*"), *self.headers]
        if self.truncate:
            out.append(("Connection", "close"))
        return out


def handle(service: WmtsService, path: str, query: str = "") -> Response:
    """Answer one GET request; never raises (bugs and GDAL failures become a 500 report)."""
    if _unsafe_path(path):
        return Response(400, b"bad request path\n", TEXT)
    route = urlsplit(path).path  # an absolute-form target (http://host/...) routes like its path
    try:
        if route == CAPABILITIES_PATH:
            return Response(200, service.capabilities, XML)
        if route in ("/wmts", "/wmts/"):
            return _kvp(service, parse_qs(query, keep_blank_values=True))
        if route.startswith("/wmts/"):
            return _rest(service, route[len("/wmts/"):])
        if route == "/file-exists.php":
            return _xyz(service, parse_qs(query, keep_blank_values=True))
        if route == "/":
            return Response(200, f"Luminescence WMTS. Capabilities: {service.capabilities_url}\n".encode(),
                            TEXT)
        return Response(404, b"not found\n", TEXT)
    except OwsException as exc:
        return Response(exc.status, exception_report(exc.code, exc.text, exc.locator), XML)
    except Exception:  # a bug or a GDAL failure: answer like a real server, log the traceback
        log.exception("error while serving %s", path)
        return Response(500, exception_report("NoApplicableCode", "internal server error"), XML)


def _unsafe_path(raw: str) -> bool:
    """True for request paths that try to leave the URL space (traversal, NUL, backslashes)."""
    decoded = raw
    for _ in range(3):  # catch double-encoded %252e%252e too
        decoded = unquote(decoded)
    if "\x00" in decoded or "\\" in decoded or decoded.startswith("//"):
        return True
    return any(part in ("..", ".") for part in decoded.split("/"))


# --------------------------------------------------------------------------- encodings
def _kvp(service: WmtsService, query: dict[str, list[str]]) -> Response:
    params = {k.upper(): v[-1] for k, v in query.items()}

    def need(name: str) -> str:
        if name not in params or params[name] == "":
            raise OwsException("MissingParameterValue", f"parameter {name} is missing", name)
        return params[name]

    if need("SERVICE").upper() != "WMTS":
        raise OwsException("InvalidParameterValue", "SERVICE must be WMTS", "SERVICE")
    request = need("REQUEST")
    version = params.get("VERSION", "1.0.0")
    if request.lower() == "getcapabilities":
        return Response(200, service.capabilities, XML)
    if request.lower() != "gettile":
        raise OwsException("OperationNotSupported", f"request {request} is not supported "
                           "(GetCapabilities, GetTile)", "REQUEST", status=501)
    if version != "1.0.0":
        raise OwsException("InvalidParameterValue", f"VERSION {version} is not supported (1.0.0)",
                           "VERSION")
    layer = _layer(service, need("LAYER"), "LAYER")
    style = need("STYLE")
    if style != "default":
        raise OwsException("InvalidParameterValue", f"unknown STYLE '{style}' (default)", "STYLE")
    _matrix_set(need("TILEMATRIXSET"), "TILEMATRIXSET")
    mime = need("FORMAT")
    fmt = next((f for f in layer.source.formats if FORMATS[f] == mime), None)
    if fmt is None:
        offered = ", ".join(FORMATS[f] for f in layer.source.formats)
        raise OwsException("InvalidParameterValue", f"FORMAT {mime} is not offered by layer "
                           f"{layer.source.id} ({offered})", "FORMAT")
    tile = parse_tile(need("TILEMATRIX"), need("TILECOL"), need("TILEROW"),
                      ("TILEMATRIX", "TILECOL", "TILEROW"))
    return _tile(service, layer, fmt, tile)


def _rest(service: WmtsService, rest: str) -> Response:
    segments = rest.split("/")
    if len(segments) != 5:
        raise OwsException("InvalidParameterValue", "REST tile paths are "
                           "/wmts/{layer}/{TileMatrixSet}/{TileMatrix}/{TileCol}/{TileRow}.{ext}")
    layer_id, matrix_set, z, col, last = segments
    layer = _layer(service, layer_id, "layer")
    _matrix_set(matrix_set, "TileMatrixSet")
    row, _, ext = last.partition(".")
    fmt = next((f for f in layer.source.formats if ext in (EXTENSIONS[f], f)), None)
    if fmt is None:
        offered = ", ".join(EXTENSIONS[f] for f in layer.source.formats)
        raise OwsException("InvalidParameterValue", f"file extension '.{ext}' is not offered by layer "
                           f"{layer.source.id} ({offered})", "Format")
    return _tile(service, layer, fmt, parse_tile(z, col, row, ("TileMatrix", "TileCol", "TileRow")))


def _xyz(service: WmtsService, query: dict[str, list[str]]) -> Response:
    # Sinica's legacy endpoint: img={LAYER}-{png|jpg}-{z}-{x}-{y}; it answers 404, not OWS reports.
    spec = query.get("img", [""])[-1]
    parts = spec.rsplit("-", 4)
    layer = service.layers.get(parts[0]) if len(parts) == 5 else None
    fmt = None
    if layer is not None:
        fmt = next((f for f in layer.source.formats if EXTENSIONS[f] == parts[1]), None)
    if layer is None or fmt is None:
        return Response(404, b"no such layer or format\n", TEXT)
    try:
        tile = parse_tile(parts[2], parts[3], parts[4], ("z", "x", "y"))
    except OwsException:
        return Response(404, b"no such tile\n", TEXT)
    return _tile(service, layer, fmt, tile)


def _layer(service: WmtsService, layer_id: str, locator: str) -> Layer:
    layer = service.layers.get(layer_id)
    if layer is None:
        raise OwsException("InvalidParameterValue", f"unknown layer '{layer_id}'", locator)
    return layer


def _matrix_set(name: str, locator: str) -> None:
    if name != MATRIX_SET:
        raise OwsException("InvalidParameterValue", f"unknown TileMatrixSet '{name}' ({MATRIX_SET})", locator)


def parse_tile(z: str, col: str, row: str, names: tuple[str, str, str]) -> TileId:
    """The tile of (TileMatrix, TileCol, TileRow) strings, or OwsException naming the bad one."""
    values = []
    for value, name in zip((z, col, row), names, strict=True):
        if not re.fullmatch(r"[0-9]{1,9}", value or ""):
            raise OwsException("InvalidParameterValue", f"{name} must be a non-negative integer, got "
                               f"'{value[:20]}'", name)
        values.append(int(value))
    zi, x, y = values
    if zi > MAX_ZOOM:
        raise OwsException("TileOutOfRange", f"{names[0]} {zi} is not served (0..{MAX_ZOOM})", names[0])
    if x >= 1 << zi:
        raise OwsException("TileOutOfRange", f"{names[1]} {x} is outside 0..{(1 << zi) - 1} at zoom {zi}",
                           names[1])
    if y >= 1 << zi:
        raise OwsException("TileOutOfRange", f"{names[2]} {y} is outside 0..{(1 << zi) - 1} at zoom {zi}",
                           names[2])
    return TileId(zi, x, y)


# --------------------------------------------------------------------------- tiles and faults
def _tile(service: WmtsService, layer: Layer, fmt: str, tile: TileId) -> Response:
    attempt = service.count_attempt(layer.source.id, tile)
    plan = service.faults
    delay = plan.latency_s
    fault = plan.fault_for(layer.source.id, tile.z, tile.x, tile.y, attempt)
    retry = (("Retry-After", str(plan.retry_after_s)),)
    if fault == "error":
        return Response(500, b"<html><body><h1>500 Internal Server Error</h1>(injected)</body></html>",
                        "text/html", delay_s=delay)
    if fault == "throttle":
        return Response(429, b"too many requests (injected)\n", "text/plain", retry, delay_s=delay)
    if fault == "unavailable":
        return Response(503, b"service unavailable (injected)\n", "text/plain", retry, delay_s=delay)
    if fault == "exception":
        # Some servers answer 200 with a WMS-style exception, others 400 with an OWS report.
        if plan.draw(f"{layer.source.id}#exception", tile.z, tile.x, tile.y, attempt) < 0.5:
            return Response(200, service_exception("injected backend failure"),
                            "application/vnd.ogc.se_xml", delay_s=delay)
        return Response(400, exception_report("NoApplicableCode", "injected backend failure"), XML,
                        delay_s=delay)
    if fault == "slow":
        delay += plan.slow_s
    body = service.renderer.tile_bytes(layer.source.id, fmt, tile)
    ctype = "image/png" if body is TRANSPARENT_PNG or fmt == "png" else "image/jpeg"
    if fault == "truncate":
        return Response(200, body, ctype, delay_s=delay, truncate=True)
    return Response(200, body, ctype, (("Cache-Control", "public, max-age=86400"),), delay_s=delay)
