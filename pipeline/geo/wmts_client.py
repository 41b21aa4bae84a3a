"""WMTS and XYZ tile sources: read capabilities safely, validate a request, build tile URLs.

Capabilities are fetched with requests (within a total deadline, the body streamed and
size-capped before and after decompression: pipeline.geo.bounded_http), checked for
DTDs/entities with defusedxml, and only then parsed by OWSLib, once. Everything the harvester
needs is copied into plain frozen dataclasses; tile URLs are built here from the ResourceURL
template (or KVP GetTile) rather than with OWSLib's `gettile`, which mutates state between
calls and is not thread-safe.
"""

from __future__ import annotations

import difflib
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from pipeline.core.config import HarvestConfig
from pipeline.core.errors import LuminescenceError, warn
from pipeline.geo import bounded_http
from pipeline.geo.bounded_http import BodyRefused, DeadlineExceeded, host_of
from pipeline.geo.tiles import MAX_ZOOM, TILE_SIZE, TileId, check_zoom

DEFAULT_MATRIX_SET = "GoogleMapsCompatible"
WEB_MERCATOR_HALF = 20037508.342789244  # metres from the origin to the grid's edge
SCALE_DENOMINATOR_Z0 = 559082264.0287178  # OGC well-known scale set GoogleMapsCompatible, z0
MAX_CAPABILITIES_BYTES = 64 * 1024 * 1024

_MIME_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/webp": "webp",
             "image/gif": "gif", "image/tiff": "tif"}
_EXT_MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
             "gif": "image/gif", "tif": "image/tiff", "tiff": "image/tiff"}


class CapabilitiesError(LuminescenceError):
    """The capabilities document cannot be fetched, is unsafe or is not a WMTS document."""


class ServiceUnreachableError(LuminescenceError):
    """Connection refused, DNS failure or timeout: the server cannot be reached at all."""


class LayerRequestError(LuminescenceError):
    """The requested layer, matrix set, zoom or format is not offered."""


# --------------------------------------------------------------------------- plain metadata
@dataclass(frozen=True)
class TileLimits:
    """TileMatrixLimits of one zoom: the inclusive column/row range that has tiles."""

    min_col: int
    max_col: int
    min_row: int
    max_row: int

    def contains(self, tile: TileId) -> bool:
        return self.min_col <= tile.x <= self.max_col and self.min_row <= tile.y <= self.max_row


@dataclass(frozen=True)
class TileMatrix:
    identifier: str  # what goes into URLs: "18" on most servers, "EPSG:3857:18" on some
    zoom: int | None  # the web-mercator zoom, or None when not on the GoogleMapsCompatible grid
    tile_width: int
    tile_height: int
    matrix_width: int
    matrix_height: int


@dataclass(frozen=True)
class LayerMatrixSet:
    """A matrix set as linked from one layer: its zooms and per-zoom limits."""

    id: str
    crs: str
    web_mercator: bool  # every matrix is on the XYZ / mercantile grid
    matrices: dict[int, TileMatrix]  # by zoom (web-mercator sets only)
    limits: dict[int, TileLimits]  # by zoom; empty when the layer declares none

    @property
    def zooms(self) -> list[int]:
        # With TileMatrixSetLimits declared, only the listed matrices have tiles.
        zooms = self.limits.keys() if self.limits else self.matrices.keys()
        return sorted(zooms)

    @property
    def zoom_range(self) -> tuple[int, int] | None:
        zooms = self.zooms
        return (zooms[0], zooms[-1]) if zooms else None

    def describe_range(self) -> str:
        r = self.zoom_range
        return "none" if r is None else f"{r[0]}-{r[1]}"


@dataclass(frozen=True)
class ResourceUrl:
    format: str
    resource_type: str
    template: str


@dataclass(frozen=True)
class LayerInfo:
    id: str
    title: str
    abstract: str
    keywords: tuple[str, ...]
    formats: tuple[str, ...]
    matrix_sets: dict[str, LayerMatrixSet]
    bounds_wgs84: tuple[float, float, float, float] | None  # None when the server omits it
    resource_urls: tuple[ResourceUrl, ...]
    styles: tuple[str, ...]
    default_style: str | None
    dimensions: dict[str, str]  # dimension identifier -> default value

    @property
    def synthetic(self) -> bool:
        return ("synthetic" in (k.lower() for k in self.keywords)
                or "synthetic" in self.title.lower())


@dataclass(frozen=True)
class Capabilities:
    url: str
    title: str
    layers: dict[str, LayerInfo]
    kvp_url: str | None  # GetTile endpoint for KVP requests, when the service declares one

    def layer(self, layer_id: str) -> LayerInfo:
        if layer_id in self.layers:
            return self.layers[layer_id]
        hint = difflib.get_close_matches(layer_id, list(self.layers), n=3, cutoff=0.6)
        if not hint:  # case slips are common with Sinica's mixed-case ids
            hint = [name for name in self.layers if name.lower() == layer_id.lower()]
        suggestion = f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
        raise LayerRequestError(
            f"layer '{layer_id}' is not offered by {self.url}{suggestion} "
            f"(it has {len(self.layers)} layers; list them with "
            f"`luminescence fetch list-layers {self.url}`)")


# --------------------------------------------------------------------------- tile sources
class TileSource(Protocol):
    """Anything the harvester can fetch tiles from. The members are read-only: a source may
    hold them as (frozen) fields or compute them as properties."""

    @property
    def service_url(self) -> str: ...

    @property
    def layer_id(self) -> str: ...

    @property
    def matrix_set(self) -> str: ...

    @property
    def format(self) -> str: ...  # MIME type

    @property
    def tile_size(self) -> int: ...

    def url(self, tile: TileId) -> str: ...

    def limits(self, zoom: int) -> TileLimits | None: ...


def format_extension(mime: str) -> str:
    """MBTiles-style short name of a MIME type: image/png -> png, image/jpeg -> jpg."""
    base = mime.split(";")[0].strip().lower()
    return _MIME_EXT.get(base, base.split("/")[-1])


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def _compile_template(template: str, fixed: dict[str, str], variable: dict[str, str],
                      what: str) -> str:
    """Turn a URL template into a str.format pattern.

    Names in `fixed` are substituted now; names in `variable` become {x}/{y}/{m} style
    fields; matching is case-insensitive (servers write {TileMatrix} or {tilematrix}).
    Literal braces are escaped. Unknown placeholders are an error.
    """
    fixed_l = {k.lower(): v for k, v in fixed.items()}
    variable_l = {k.lower(): v for k, v in variable.items()}
    out: list[str] = []
    pos = 0
    seen: set[str] = set()
    for m in _PLACEHOLDER.finditer(template):
        out.append(template[pos:m.start()].replace("{", "{{").replace("}", "}}"))
        name = m.group(1).strip().lower()
        if name in variable_l:
            out.append("{" + variable_l[name] + "}")
        elif name in fixed_l:
            out.append(fixed_l[name].replace("{", "{{").replace("}", "}}"))
        else:
            known = ", ".join("{" + k + "}" for k in [*variable, *fixed])
            raise LayerRequestError(f"{what} has the placeholder {{{m.group(1)}}}, which is not one "
                                    f"of {known}: {template}")
        seen.add(name)
        pos = m.end()
    out.append(template[pos:].replace("{", "{{").replace("}", "}}"))
    missing = [k for k in variable if k.lower() not in seen]
    if missing:
        raise LayerRequestError(f"{what} lacks {', '.join('{' + k + '}' for k in missing)}: {template}")
    return "".join(out)


@dataclass(frozen=True)
class WmtsSource:
    """One validated (service, layer, matrix set, format, style): builds tile URLs."""

    service_url: str  # the capabilities URL: the cache key and the store's source_url
    layer: LayerInfo
    matrix_set_info: LayerMatrixSet
    format: str
    style: str
    encoding: str  # "REST" or "KVP"
    _pattern: str = field(repr=False)

    @property
    def layer_id(self) -> str:
        return self.layer.id

    @property
    def matrix_set(self) -> str:
        return self.matrix_set_info.id

    @property
    def tile_size(self) -> int:
        first = next(iter(self.matrix_set_info.matrices.values()), None)
        return first.tile_width if first else TILE_SIZE

    def limits(self, zoom: int) -> TileLimits | None:
        return self.matrix_set_info.limits.get(zoom)

    def url(self, tile: TileId) -> str:
        matrix = self.matrix_set_info.matrices[tile.z].identifier
        return self._pattern.format(m=matrix, x=tile.x, y=tile.y)


def _tile_pattern_rest(layer: LayerInfo, resource: ResourceUrl, matrix_set: str, style: str) -> str:
    fixed = {"TileMatrixSet": matrix_set, "Style": style, "Layer": layer.id}
    fixed.update(layer.dimensions)
    return _compile_template(resource.template, fixed, {"TileMatrix": "m", "TileCol": "x", "TileRow": "y"},
                             f"the ResourceURL template of layer '{layer.id}'")


def _tile_pattern_kvp(base: str, layer: LayerInfo, fmt: str, matrix_set: str, style: str) -> str:
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k.upper() not in {"SERVICE", "REQUEST", "VERSION"}]
    query += [("SERVICE", "WMTS"), ("REQUEST", "GetTile"), ("VERSION", "1.0.0"), ("LAYER", layer.id),
              ("STYLE", style), ("FORMAT", fmt), ("TILEMATRIXSET", matrix_set)]
    query += sorted(layer.dimensions.items())
    fixed = urlencode(query).replace("{", "{{").replace("}", "}}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path,
                       fixed + "&TILEMATRIX={m}&TILEROW={y}&TILECOL={x}", ""))


def resolve_source(caps: Capabilities, layer_id: str, *, zoom: int, matrix_set: str | None = None,
                   fmt: str | None = None) -> WmtsSource:
    """Validate layer, matrix set, zoom and format against the capabilities (one-line errors).

    Tiles served from another host than the capabilities' own are allowed (CDNs do that) but
    announced with a warning.
    """
    check_zoom(zoom)
    layer = caps.layer(layer_id)
    offered = sorted(layer.matrix_sets)
    if matrix_set is None:
        if DEFAULT_MATRIX_SET in layer.matrix_sets:
            matrix_set = DEFAULT_MATRIX_SET
        else:
            mercator = [m for m in offered if layer.matrix_sets[m].web_mercator]
            if len(mercator) != 1:
                raise LayerRequestError(
                    f"layer '{layer.id}' does not offer {DEFAULT_MATRIX_SET}; choose a matrix set with "
                    f"--matrix-set (params.yaml: fetch.<key>.matrix_set): offered: "
                    f"{', '.join(offered) or 'none'}")
            matrix_set = mercator[0]
    if matrix_set not in layer.matrix_sets:
        hint = difflib.get_close_matches(matrix_set, offered, n=1, cutoff=0.5)
        raise LayerRequestError(
            f"layer '{layer.id}' has no matrix set '{matrix_set}'"
            + (f"; did you mean '{hint[0]}'?" if hint else "")
            + f" (offered: {', '.join(offered) or 'none'})")
    ms = layer.matrix_sets[matrix_set]
    if not ms.web_mercator:
        raise LayerRequestError(
            f"matrix set '{matrix_set}' of layer '{layer.id}' ({ms.crs}) is not the web-mercator "
            f"GoogleMapsCompatible grid (EPSG:3857, 256-px tiles, 2^z x 2^z) that the pipeline uses; "
            f"offered: {', '.join(offered)}")
    if zoom not in ms.zooms:
        raise LayerRequestError(
            f"zoom {zoom} is not available for layer '{layer.id}' in matrix set '{matrix_set}': "
            f"available zooms are {ms.describe_range()}")
    fmt = _choose_format(layer, fmt)
    style = layer.default_style or (layer.styles[0] if layer.styles else "default")
    rest = [r for r in layer.resource_urls if r.resource_type.lower() == "tile"
            and r.format.lower() == fmt.lower()]
    if rest:
        pattern = _tile_pattern_rest(layer, rest[0], matrix_set, style)
        encoding = "REST"
    elif caps.kvp_url:
        pattern = _tile_pattern_kvp(caps.kvp_url, layer, fmt, matrix_set, style)
        encoding = "KVP"
    else:
        raise LayerRequestError(
            f"layer '{layer.id}' declares no tile ResourceURL for {fmt} and {caps.url} declares no KVP "
            f"GetTile endpoint: there is no way to request its tiles")
    source = WmtsSource(caps.url, layer, ms, fmt, style, encoding, pattern)
    tile_host = host_of(source.url(TileId(zoom, 0, 0)))
    if tile_host != host_of(caps.url):
        warn(f"layer '{layer.id}' serves its tiles from {tile_host or '(no host)'}, not from "
             f"{host_of(caps.url)} where its capabilities are ({encoding} URLs); harvesting from "
             f"{tile_host or '(no host)'}")
    return source


def _choose_format(layer: LayerInfo, fmt: str | None) -> str:
    if not layer.formats:
        raise LayerRequestError(f"layer '{layer.id}' declares no image format")
    if fmt is None:
        return layer.formats[0]
    wanted = fmt.strip().lower()
    for offered in layer.formats:
        if wanted in (offered.lower(), format_extension(offered)) or _EXT_MIME.get(wanted) == offered.lower():
            return offered
    raise LayerRequestError(f"layer '{layer.id}' does not offer format '{fmt}' "
                            f"(offered: {', '.join(layer.formats)})")


@dataclass(frozen=True)
class XyzSource:
    """A plain XYZ URL template: {z} {x} {y} plus optional {layer} and {ext}.

    Covers Academia Sinica's legacy `file-exists.php?img={layer}-{ext}-{z}-{x}-{y}` endpoint.
    """

    template: str
    layer_id: str = ""
    format: str = "image/png"
    tile_size: int = TILE_SIZE
    matrix_set: str = "xyz"
    _pattern: str = field(default="", repr=False)

    @property
    def service_url(self) -> str:
        return self.template

    def limits(self, zoom: int) -> TileLimits | None:
        return None

    def url(self, tile: TileId) -> str:
        return self._pattern.format(z=tile.z, x=tile.x, y=tile.y)


def xyz_source(template: str, layer: str | None = None, fmt: str | None = None) -> XyzSource:
    mime = _EXT_MIME.get((fmt or "png").lower().removeprefix("image/"))
    if mime is None:
        raise LayerRequestError(f"unknown tile format '{fmt}' (use png or jpeg)")
    needs_layer = "{layer}" in template.lower()
    if needs_layer and not layer:
        raise LayerRequestError(f"the XYZ template has {{layer}}; give the layer id (--layer): {template}")
    fixed = {"ext": format_extension(mime)}
    if layer:
        fixed["layer"] = layer
    pattern = _compile_template(template, fixed, {"z": "z", "x": "x", "y": "y"}, "the XYZ URL template")
    return XyzSource(template, layer or "", mime, _pattern=pattern)


# --------------------------------------------------------------------------- fetching
def describe_connection_error(url: str, exc: BaseException) -> str:
    """One line saying why `url` could not be reached and what to check."""
    host = urlsplit(url).netloc or url
    text = str(exc)
    if isinstance(exc, requests.Timeout):
        return f"{url} did not answer in time ({type(exc).__name__}); check the URL and your network"
    if any(s in text for s in ("NameResolution", "Name or service not known", "getaddrinfo",
                               "nodename nor servname", "Temporary failure in name resolution")):
        return (f"cannot reach {url}: the host name '{urlsplit(url).hostname}' does not resolve; "
                f"check the URL and your internet connection")
    if "refused" in text.lower():
        return (f"cannot reach {url}: connection refused by {host}; check that the server is running "
                f"and the host/port in the URL")
    return f"cannot reach {url}: {type(exc).__name__}; check the URL and your network"


def capabilities_url(url: str) -> str:
    """The URL to GET: as given when it names a document or a GetCapabilities request,
    otherwise the KVP GetCapabilities request on the given service endpoint."""
    parts = urlsplit(url)
    query = {k.lower(): v for k, v in parse_qsl(parts.query)}
    if parts.path.lower().endswith(".xml") or query.get("request", "").lower() == "getcapabilities":
        return url
    extra = urlencode([("SERVICE", "WMTS"), ("REQUEST", "GetCapabilities"), ("VERSION", "1.0.0")])
    return urlunsplit((parts.scheme, parts.netloc, parts.path,
                       f"{parts.query}&{extra}" if parts.query else extra, ""))


_TRANSIENT_STATUSES = {429, 500, 502, 503, 504}
_REFUSED = ("refused", "NameResolution", "Name or service not known", "getaddrinfo",
            "Temporary failure in name resolution", "nodename nor servname")


def fetch_capabilities(url: str, *, user_agent: str, timeout: tuple[float, float] = (5.0, 30.0),
                       session: requests.Session | None = None, retries: int = 3,
                       backoff_s: float = 1.0, deadline_s: float = 120.0) -> bytes:
    """GET the capabilities document; transient failures (5xx, 429, timeouts, resets) are retried.

    Each attempt must complete within `deadline_s` seconds, and the document may not exceed
    MAX_CAPABILITIES_BYTES, on the wire or inflated (it is read in chunks, so a gzip bomb is
    refused without ever being held in memory). A refused connection or an unknown host is
    reported at once: there is nothing to wait for.
    """
    target = capabilities_url(url)
    own_session = session is None
    if session is None:
        session = bounded_http.make_session(user_agent, 1, target,
                                            accept="application/xml,text/xml;q=0.9,*/*;q=0.1")
    try:
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                resp, data = bounded_http.get(session, target, timeout=timeout, deadline_s=deadline_s,
                                              max_bytes=MAX_CAPABILITIES_BYTES,
                                              headers={"User-Agent": user_agent})
            except DeadlineExceeded as exc:
                if last:
                    raise ServiceUnreachableError(
                        f"{target} sent {exc} (harvest.request_deadline_s): the server is stalling or "
                        f"very slow; try again later, or raise the deadline") from None
                time.sleep(backoff_s * 2 ** attempt)
                continue
            except BodyRefused as exc:
                raise CapabilitiesError(f"{target}: {exc.reason}; check the capabilities URL") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if last or any(s in str(exc) for s in _REFUSED):
                    raise ServiceUnreachableError(describe_connection_error(target, exc)) from None
                time.sleep(backoff_s * 2 ** attempt)
                continue
            except requests.RequestException as exc:
                raise CapabilitiesError(f"cannot fetch capabilities from {target}: {exc}") from None
            if resp.status_code in _TRANSIENT_STATUSES and not last:
                time.sleep(backoff_s * 2 ** attempt)
                continue
            if resp.status_code != 200:
                message = server_message(data, resp.headers.get("Content-Type", ""))
                raise CapabilitiesError(f"{target} answered HTTP {resp.status_code}"
                                        + (f": '{message}'" if message else "")
                                        + "; check the capabilities URL")
            return data
    finally:
        if own_session:
            session.close()
    raise AssertionError("unreachable")  # the loop always returns or raises


def safe_xml_root(data: bytes, source: str):  # -> xml.etree.ElementTree.Element
    """Parse untrusted XML, refusing DTDs, entity declarations and external references."""
    try:
        return SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise CapabilitiesError(f"{source}: refused an unsafe XML document ({type(exc).__name__}: "
                                f"DTDs and entities are not allowed)") from None
    except SafeET.ParseError as exc:
        raise CapabilitiesError(f"{source}: not well-formed XML ({exc})") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def ows_exception_text(root) -> str | None:
    """The message of an OGC ExceptionReport / ServiceExceptionReport, if `root` is one."""
    if _local(root.tag) not in {"ExceptionReport", "ServiceExceptionReport", "ServiceException",
                                "Exception"}:
        return None
    texts = []
    for el in root.iter():
        name = _local(el.tag)
        if name in {"Exception", "ServiceException"}:
            code = el.get("exceptionCode") or el.get("code")
            if code:
                texts.append(code + ":")
        if name in {"ExceptionText", "ServiceException"} and el.text and el.text.strip():
            texts.append(el.text.strip())
    return " ".join(texts).strip() or _local(root.tag)


_TAG = re.compile(r"<[^>]+>")
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)


def server_message(data: bytes, content_type: str = "", limit: int = 200) -> str:
    """A short, quotable message from an error body (OGC exception XML, HTML or text)."""
    head = data.lstrip()[:1]
    ctype = content_type.lower()
    if head == b"<" and ("xml" in ctype or data.lstrip()[:5] in (b"<?xml", b"<Exce", b"<ows:", b"<Serv")):
        try:
            root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        except Exception:
            root = None
        if root is not None:
            text = ows_exception_text(root)
            if text:
                return _shorten(text, limit)
    if head == b"<" or "html" in ctype:
        title = _TITLE.search(data[:65536])
        raw = title.group(1) if title else data[:4096]
        text = _TAG.sub(" ", raw.decode("utf-8", "replace"))
        return _shorten(text, limit)
    try:
        return _shorten(data[:1024].decode("utf-8"), limit)
    except UnicodeDecodeError:
        return ""


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- parsing
def _wgs84_box(bounds: object) -> tuple[float, float, float, float] | None:
    """(west, south, east, north) from OWSLib's boundingBoxWGS84; None when absent or not 4 values."""
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 4:
        return None
    w, s, e, n = (float(v) for v in bounds)
    return (w, s, e, n)


def parse_capabilities(data: bytes, url: str) -> Capabilities:
    """Safe parse: defusedxml check first, then OWSLib, then copy into plain dataclasses."""
    root = safe_xml_root(data, url)
    message = ows_exception_text(root)
    if message is not None:
        raise CapabilitiesError(f"{url} answered with an exception instead of capabilities: '{message}'")
    if _local(root.tag) != "Capabilities":
        raise CapabilitiesError(f"{url} is not a WMTS capabilities document (root element "
                                f"<{_local(root.tag)}>); check the URL")
    from owslib.wmts import WebMapTileService

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wmts = WebMapTileService(url, xml=data)
        matrix_sets = {ident: _matrices(tms) for ident, tms in wmts.tilematrixsets.items()}
        crs = {ident: tms.crs for ident, tms in wmts.tilematrixsets.items()}
        layers = {}
        for layer_id, cm in wmts.contents.items():
            layers[layer_id] = _layer_info(cm, matrix_sets, crs)
        title = getattr(getattr(wmts, "identification", None), "title", None) or ""
        kvp_url = _kvp_url(wmts)
    except KeyError as exc:
        raise CapabilitiesError(f"{url}: incomplete capabilities (missing attribute {exc} on a "
                                f"ResourceURL or element)") from None
    except SyntaxError as exc:  # lxml's XMLSyntaxError: its safety limits (huge text nodes, depth)
        raise CapabilitiesError(f"{url}: the XML parser refused the capabilities document "
                                f"({_first_line(exc)}); it is too large or too deeply nested to be "
                                f"read safely") from None
    except (ValueError, AttributeError, TypeError, IndexError, OverflowError) as exc:
        raise CapabilitiesError(f"{url}: malformed capabilities ({_first_line(exc)})") from None
    return Capabilities(url=url, title=title, layers=layers, kvp_url=kvp_url)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _matrices(tms) -> dict[str, TileMatrix]:
    out = {}
    mercator_crs = any(code in (tms.crs or "") for code in ("3857", "900913", "3785"))
    for ident, tm in tms.tilematrix.items():
        out[ident] = TileMatrix(ident, _mercator_zoom(tm) if mercator_crs else None, tm.tilewidth,
                                tm.tileheight, tm.matrixwidth, tm.matrixheight)
    return out


def _mercator_zoom(tm) -> int | None:
    """The XYZ zoom of a tile matrix on the GoogleMapsCompatible grid, else None."""
    if tm.matrixwidth != tm.matrixheight or tm.matrixwidth < 1:
        return None
    z = round(math.log2(tm.matrixwidth))
    if 1 << z != tm.matrixwidth or tm.tilewidth != TILE_SIZE or tm.tileheight != TILE_SIZE:
        return None
    x0, y0 = tm.topleftcorner
    tol = 1.0  # metres
    if abs(x0 + WEB_MERCATOR_HALF) > tol or abs(y0 - WEB_MERCATOR_HALF) > tol:
        return None
    if abs(tm.scaledenominator / (SCALE_DENOMINATOR_Z0 / (1 << z)) - 1.0) > 0.01:
        return None
    return z


def _layer_info(cm, matrix_sets: dict[str, dict[str, TileMatrix]], crs: dict[str, str]) -> LayerInfo:
    sets: dict[str, LayerMatrixSet] = {}
    for ms_id, link in cm.tilematrixsetlinks.items():
        matrices = matrix_sets.get(ms_id)
        if matrices is None:
            continue  # a link to a set the service does not define: unusable
        web_mercator = bool(matrices) and all(m.zoom is not None for m in matrices.values())
        # Matrices finer than MAX_ZOOM are on the grid but beyond what the pipeline requests:
        # they are left out, as if not offered.
        by_zoom = ({m.zoom: m for m in matrices.values() if m.zoom is not None and m.zoom <= MAX_ZOOM}
                   if web_mercator else {})
        limits = {}
        for ident, lim in link.tilematrixlimits.items():
            m = matrices.get(ident)
            if m is None or m.zoom is None or m.zoom > MAX_ZOOM or None in (
                    lim.mintilecol, lim.maxtilecol, lim.mintilerow, lim.maxtilerow):
                continue
            limits[m.zoom] = TileLimits(lim.mintilecol, lim.maxtilecol, lim.mintilerow, lim.maxtilerow)
        sets[ms_id] = LayerMatrixSet(ms_id, crs.get(ms_id, ""), web_mercator, by_zoom, limits)
    bounds = getattr(cm, "boundingBoxWGS84", None)  # absent when the server omits it
    styles = tuple(cm.styles)
    default_style = next((s for s, v in cm.styles.items() if v.get("isDefault")), None)
    return LayerInfo(
        id=cm.id,
        title=(cm.title or cm.id).strip(),
        abstract=(cm.abstract or "").strip(),
        keywords=tuple(k.strip() for k in cm.keywords if k and k.strip()),
        formats=tuple(f.strip() for f in cm.formats if f),
        matrix_sets=sets,
        bounds_wgs84=_wgs84_box(bounds),
        resource_urls=tuple(ResourceUrl(r["format"], r["resourceType"], r["template"])
                            for r in cm.resourceURLs),
        styles=styles,
        default_style=default_style,
        dimensions={name: (d.get("default") or d["values"][0]) for name, d in cm.dimensions.items()},
    )


def _kvp_url(wmts) -> str | None:
    for op in getattr(wmts, "operations", []):
        if getattr(op, "name", None) != "GetTile":
            continue
        for method in op.methods:
            if method.get("type", "").lower() != "get":
                continue
            values = [str(v).lower() for c in method.get("constraints", []) for v in c.values]
            if not values or "kvp" in values:
                return method["url"]
    return None


def read_capabilities(url: str, *, user_agent: str, timeout: tuple[float, float] = (5.0, 30.0),
                      session: requests.Session | None = None, deadline_s: float = 120.0,
                      retries: int = 3, backoff_s: float = 1.0) -> Capabilities:
    data = fetch_capabilities(url, user_agent=user_agent, timeout=timeout, session=session,
                              deadline_s=deadline_s, retries=retries, backoff_s=backoff_s)
    return parse_capabilities(data, url)


def read_capabilities_for(url: str, cfg: HarvestConfig) -> Capabilities:
    """read_capabilities with the harvest section's timeouts, deadline and retries (at most 3)."""
    return read_capabilities(url, user_agent=cfg.user_agent,
                             timeout=(cfg.connect_timeout_s, cfg.read_timeout_s),
                             deadline_s=cfg.request_deadline_s, retries=min(3, cfg.max_retries),
                             backoff_s=cfg.backoff_base_s)
