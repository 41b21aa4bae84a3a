"""The project's own OGC WMTS 1.0.0 server over local rasters (GeoTIFF, JPEG 2000, VRT).

The default pipeline harvests the bundled sample over HTTP from this server with exactly the
client code used for Academia Sinica, so it imitates that service (see
/work/shared/notes/sinica-wmts.md): one matrix set `GoogleMapsCompatible` (EPSG:3857, 0-21,
256 px), KVP and RESTful encodings, a REST template with the COLUMN BEFORE THE ROW
(`.../{TileMatrix}/{TileCol}/{TileRow}.png`, as in tileserver-php), Sinica's legacy XYZ endpoint
`/file-exists.php?img={LAYER}-{png|jpg}-{z}-{x}-{y}`, and HTTP 200 with a small transparent PNG
for tiles outside a layer. Malformed or out-of-range requests get HTTP 400 with an OGC
`ows:ExceptionReport`. A deterministic `FaultPlan` injects errors for tests and benchmarks.

Rendering. Each layer's sources are converted once into a cached tiled GeoTIFF (256 px blocks,
ZSTD, bands + alpha, average overviews) under `<cache_dir>` (default data/derived/cache),
keyed by the sources' path, size and mtime and the bands, so JPEG 2000 is decoded once per
source rather than per tile. Consecutive sources on one pixel grid (CRS, resolution, alignment) are merged
into one cached mosaic (the first source wins where they overlap), which keeps seams invisible. A tile
is warped with rasterio from the overview level just finer than the tile to EPSG:3857 at the
tile's exact mercantile bounds: bilinear when the tile is finer than the source (upsampling),
`average` when the source is finer (area-weighted, anti-aliased; lanczos was 2-4x slower).
Pixels with less than half coverage are transparent (alpha 0); JPEG tiles are black there.
Datasets stay open in a pool of per-thread readers, and rendered tile bytes are kept in an LRU
cache (`render_cache_tiles`).

Out-of-range rules: a TileMatrix outside 0..MAX_ZOOM, or a row/column outside the matrix, is
`TileOutOfRange` (400); a tile inside the matrix but outside the layer is a transparent PNG (200).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import threading
import time
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import mercantile
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_bounds
from rasterio.warp import reproject, transform, transform_bounds

from pipeline.core.config import SampleConfig
from pipeline.core.errors import LuminescenceError
from pipeline.geo.tiles import TILE_SIZE, TileId, tile_bounds_3857
from pipeline.sample.film import (
    SYNTHETIC_NOTE,
    build_film_layer,
    film_layer_id,
    grid_key,
    raster_files,
    read_mosaic,
)

log = logging.getLogger(__name__)

MATRIX_SET = "GoogleMapsCompatible"
CRS_URN = "urn:ogc:def:crs:EPSG::3857"
MATRIX_ZOOMS = range(0, 22)  # matrices declared in the matrix set
MAX_ZOOM = 20  # zooms served (TileMatrixSetLimits)
# OGC WMTS 1.0.0 Annex E.4 GoogleMapsCompatible: scale denominator at zoom 0, halved per zoom.
SCALE_DENOMINATOR_Z0 = 559082264.0287178
TOP_LEFT = (-20037508.3427892, 20037508.3427892)
CACHE_VERSION = 1
FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
EXTENSIONS = {"png": "png", "jpeg": "jpg"}  # REST and XYZ file extensions per format
NYSDOP_ATTRIBUTION = (
    "Orthoimagery: New York State ITS GIS Program Office, NYS Digital Orthoimagery Program (NYSDOP).")

NS = {
    "": "http://www.opengis.net/wmts/1.0",
    "ows": "http://www.opengis.net/ows/1.1",
    "xlink": "http://www.w3.org/1999/xlink",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "gml": "http://www.opengis.net/gml",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)
_LAYER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# rasterio silences this warning for its in-memory warp destination with warnings.catch_warnings,
# which is not thread-safe: under concurrent rendering it leaks about once per few thousand tiles
# (the tiles are correct). Ignore exactly that message from rasterio.warp.
warnings.filterwarnings("ignore", message="Dataset has no geotransform", category=NotGeoreferencedWarning,
                        module=r"rasterio\.warp")


class ServerError(LuminescenceError):
    pass


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class LayerSource:
    """One WMTS layer served from local rasters, mosaicked in order (first source on top)."""

    id: str
    title: str
    abstract: str
    paths: tuple[Path, ...]
    bands: tuple[int, ...]  # (1, 2, 3) RGB or (1,) gray
    formats: tuple[str, ...] = ("png",)  # "png" (RGBA, transparent outside) and/or "jpeg"
    keywords: tuple[str, ...] = ()
    synthetic: bool = False
    attribution: str = ""


_FAULT_KINDS = ("error", "throttle", "unavailable", "truncate", "slow", "exception")


@dataclass(frozen=True)
class FaultPlan:
    """Deterministic fault injection: which attempts of which tiles fail, and how.

    Attempt n (0-based, counted per tile over all endpoints) of tile (layer, z, x, y) draws
    u = sha256(seed, layer, z, x, y, n) in [0, 1) and fails with the first kind whose cumulative
    rate exceeds u, for n < faults_per_tile; later attempts always succeed.
    """

    error_rate: float = 0.0  # HTTP 500
    throttle_rate: float = 0.0  # HTTP 429 with Retry-After
    unavailable_rate: float = 0.0  # HTTP 503 with Retry-After
    truncate_rate: float = 0.0  # Content-Length declared, body cut short, connection closed
    slow_rate: float = 0.0  # respond after slow_s (longer than the client's timeout)
    slow_s: float = 2.0
    exception_rate: float = 0.0  # HTTP 200 or 400 with an OGC exception XML body
    latency_s: float = 0.0  # added to every tile response
    faults_per_tile: int = 2  # a tile fails at most this many times, then succeeds
    seed: int = 0
    retry_after_s: int = 1  # Retry-After of 429 and 503 answers

    def __post_init__(self) -> None:
        rates = self.rates()
        if any(not 0.0 <= r <= 1.0 for r in rates.values()) or sum(rates.values()) > 1.0 + 1e-9:
            raise ServerError(f"fault rates must lie in [0, 1] and sum to at most 1 (got {rates})")
        if self.slow_s < 0 or self.latency_s < 0 or self.faults_per_tile < 0 or self.retry_after_s < 0:
            raise ServerError("slow_s, latency_s, faults_per_tile and retry_after_s must not be negative")

    def rates(self) -> dict[str, float]:
        return {kind: float(getattr(self, f"{kind}_rate")) for kind in _FAULT_KINDS}

    def draw(self, layer: str, z: int, x: int, y: int, attempt: int) -> float:
        key = f"{self.seed}|{layer}|{z}|{x}|{y}|{attempt}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64

    def fault_for(self, layer: str, z: int, x: int, y: int, attempt: int) -> str | None:
        """The fault kind of this attempt, or None when it succeeds."""
        if attempt >= self.faults_per_tile:
            return None
        u = self.draw(layer, z, x, y, attempt)
        edge = 0.0
        for kind, rate in self.rates().items():
            edge += rate
            if u < edge:
                return kind
        return None


# --------------------------------------------------------------------------- rasters
@dataclass
class _RasterGroup:
    """Consecutive sources on one pixel grid (`film.grid_key`): one cached mosaic GeoTIFF."""

    paths: tuple[Path, ...]
    bounds_3857: tuple[float, float, float, float]
    src_per_3857_m: float  # source CRS units per EPSG:3857 metre near the group's centre
    cached: Path | None = None
    res: float = 0.0
    factors: tuple[int, ...] = (1,)


@dataclass
class _Layer:
    source: LayerSource
    wgs84: tuple[float, float, float, float]
    bounds_3857: tuple[float, float, float, float]
    groups: list[_RasterGroup]
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: bool = False

    @property
    def nbands(self) -> int:
        return len(self.source.bands)


def _union(boxes: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


def _intersects(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def footprint_wgs84(path: Path) -> tuple[float, float, float, float]:
    """(west, south, east, north) of a raster, reprojected with densified edges."""
    with rasterio.open(path) as ds:
        return transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)


def _inspect_layer(src: LayerSource) -> _Layer:
    if not _LAYER_ID.match(src.id):
        raise ServerError(f"layer id '{src.id}' must be letters, digits, '.', '_' or '-' (no '/')")
    if not src.paths:
        raise ServerError(f"layer '{src.id}' has no source rasters")
    if not src.formats or any(f not in FORMATS for f in src.formats):
        raise ServerError(f"layer '{src.id}': formats must be among {sorted(FORMATS)}, got {src.formats}")
    if len(src.bands) not in (1, 3):
        raise ServerError(f"layer '{src.id}': bands must be (r, g, b) or (gray,), got {src.bands}")
    groups: list[_RasterGroup] = []
    boxes, boxes_3857, keys = [], [], []
    for path in src.paths:
        if not Path(path).is_file():
            raise ServerError(f"layer '{src.id}': source raster {path} does not exist")
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise ServerError(f"layer '{src.id}': {path} has no CRS (add a .prj/.aux.xml or world file)")
            if ds.count < max(src.bands):
                raise ServerError(f"layer '{src.id}': {path} has {ds.count} band(s), needs {max(src.bands)}")
            boxes.append(transform_bounds(ds.crs, "EPSG:4326", *ds.bounds))
            boxes_3857.append(transform_bounds(ds.crs, "EPSG:3857", *ds.bounds))
            keys.append(grid_key(ds))
            crs, bounds = ds.crs, ds.bounds
        if groups and keys[-1] == keys[-2]:
            g = groups[-1]
            g.paths += (Path(path),)
            g.bounds_3857 = _union([g.bounds_3857, boxes_3857[-1]])
        else:
            cx, cy = (bounds.left + bounds.right) / 2, (bounds.bottom + bounds.top) / 2
            xs, ys = transform(crs, "EPSG:3857", [cx, cx + 1.0], [cy, cy])
            groups.append(_RasterGroup((Path(path),), boxes_3857[-1], 1.0 / math.hypot(xs[1] - xs[0],
                                                                                        ys[1] - ys[0])))
    return _Layer(src, _union(boxes), _union(boxes_3857), groups)


def _cache_key(paths: Sequence[Path], bands: Sequence[int]) -> str:
    ident = [CACHE_VERSION, list(bands)]
    for p in paths:
        st = Path(p).stat()
        ident.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def _overview_factors(width: int, height: int) -> list[int]:
    factors, f = [], 2
    while max(width, height) / f >= TILE_SIZE / 2:
        factors.append(f)
        f *= 2
    return factors


def build_cached_mosaic(paths: Sequence[Path], bands: Sequence[int], out: Path) -> None:
    """Write sources (one CRS) as a tiled GeoTIFF with the bands + an alpha band and overviews."""
    mosaic = read_mosaic(paths, bands)
    alpha = np.where(mosaic.valid, 255, 0).astype(np.uint8)
    count, h, w = len(bands) + 1, *mosaic.valid.shape
    profile = {
        "driver": "GTiff", "width": w, "height": h, "count": count, "dtype": "uint8",
        "crs": mosaic.crs, "transform": mosaic.transform, "tiled": True, "blockxsize": TILE_SIZE,
        "blockysize": TILE_SIZE, "compress": "zstd", "zstd_level": 1, "predictor": 2,
        "interleave": "pixel", "alpha": "YES", "photometric": "RGB" if len(bands) == 3 else "MINISBLACK",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(np.concatenate([mosaic.data, alpha[None]], axis=0))
            dst.build_overviews(_overview_factors(w, h), Resampling.average)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are shared like any other file
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


class _Reader:
    """Open datasets (path, overview level) for one thread at a time (GDAL handles are not shared)."""

    def __init__(self) -> None:
        self._open: dict[tuple[Path, int], rasterio.DatasetReader] = {}

    def dataset(self, path: Path, level: int) -> rasterio.DatasetReader:
        key = (path, level)
        if key not in self._open:
            kwargs = {"overview_level": level - 1} if level > 0 else {}
            self._open[key] = rasterio.open(path, **kwargs)
        return self._open[key]

    def close(self) -> None:
        for ds in self._open.values():
            ds.close()
        self._open.clear()


_EPSG3857 = CRS.from_epsg(3857)


def _transparent_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (TILE_SIZE, TILE_SIZE), (0, 0, 0, 0)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


TRANSPARENT_PNG = _transparent_png()


def encode_tile(color: np.ndarray, alpha: np.ndarray, fmt: str) -> bytes:
    """(C, 256, 256) colour (C = 1 or 3) + (256, 256) alpha -> PNG (RGBA) or JPEG (RGB) bytes."""
    from PIL import Image

    rgb = np.repeat(color, 3, axis=0) if color.shape[0] == 1 else color
    buf = io.BytesIO()
    if fmt == "png":
        rgba = np.concatenate([rgb, alpha[None]], axis=0).transpose(1, 2, 0)
        # zlib level 1: 4-5x faster than Pillow's default 6 on aerial photos, and no larger.
        Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, format="PNG", compress_level=1)
    else:
        rgb = np.where(alpha[None] > 0, rgb, 0).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class TileRenderer:
    """Warps a layer's cached rasters into EPSG:3857 tiles; thread-safe."""

    def __init__(self, layers: dict[str, _Layer], cache_dir: Path, cache_tiles: int) -> None:
        self.layers = layers
        self.cache_dir = Path(cache_dir)
        self._idle: list[_Reader] = []  # readers not in use by a thread
        self._readers_lock = threading.Lock()
        self._closed = False
        self._lru: collections.OrderedDict[tuple[str, str, int, int, int], bytes] = collections.OrderedDict()
        self._lru_lock = threading.Lock()
        self._cache_tiles = cache_tiles

    # ----------------------------------------------------------- source preparation
    def prepare(self, layer: _Layer) -> None:
        """Build (or find) the cached GeoTIFFs of a layer; idempotent and thread-safe."""
        if layer.ready:
            return
        with layer.lock:
            if layer.ready:
                return
            for index, group in enumerate(layer.groups):
                key = _cache_key(group.paths, layer.source.bands)
                path = self.cache_dir / f"{layer.source.id}.{index}.{key}.tif"
                if not path.exists():
                    log.info("caching %s as a tiled GeoTIFF (one-off)", layer.source.id)
                    started = time.monotonic()
                    build_cached_mosaic(group.paths, layer.source.bands, path)
                    log.info("cached %s (%d source file(s)) as %s in %.1f s", layer.source.id,
                             len(group.paths), path, time.monotonic() - started)
                    for stale in self.cache_dir.glob(f"{layer.source.id}.{index}.*.tif"):
                        if stale != path:
                            stale.unlink(missing_ok=True)
                with rasterio.open(path) as ds:
                    group.res = float(max(abs(ds.res[0]), abs(ds.res[1])))
                    group.factors = (1, *ds.overviews(1))
                group.cached = path
            layer.ready = True

    # ----------------------------------------------------------- rendering
    def tile_bytes(self, layer_id: str, fmt: str, tile: TileId) -> bytes:
        """Encoded tile; the small transparent PNG when the layer has no data in it."""
        key = (layer_id, fmt, tile.z, tile.x, tile.y)
        with self._lru_lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
        rendered = self.render(layer_id, tile)
        data = TRANSPARENT_PNG if rendered is None else encode_tile(*rendered, fmt)
        if self._cache_tiles > 0:
            with self._lru_lock:
                self._lru[key] = data
                while len(self._lru) > self._cache_tiles:
                    self._lru.popitem(last=False)
        return data

    def render(self, layer_id: str, tile: TileId) -> tuple[np.ndarray, np.ndarray] | None:
        """(colour (C, 256, 256), alpha (256, 256)) of a tile, or None when it has no data."""
        layer = self.layers[layer_id]
        bounds = tile_bounds_3857(tile)
        if not _intersects(bounds, layer.bounds_3857):
            return None
        self.prepare(layer)
        n = layer.nbands
        color = np.zeros((n, TILE_SIZE, TILE_SIZE), np.uint8)
        alpha = np.zeros((TILE_SIZE, TILE_SIZE), np.uint8)
        dst_transform = from_bounds(*bounds, TILE_SIZE, TILE_SIZE)
        tile_m = (bounds[2] - bounds[0]) / TILE_SIZE
        reader = self._acquire()
        try:
            for group in layer.groups:
                if not _intersects(bounds, group.bounds_3857):
                    continue
                level, resampling = _pick_level(group, tile_m * group.src_per_3857_m)
                ds = reader.dataset(group.cached, level)
                buf = np.zeros((n + 1, TILE_SIZE, TILE_SIZE), np.uint8)
                reproject(rasterio.band(ds, list(range(1, n + 2))), buf, dst_transform=dst_transform,
                          dst_crs=_EPSG3857, resampling=resampling, src_alpha=n + 1, dst_alpha=n + 1)
                take = (alpha == 0) & (buf[n] >= 128)  # first source on top
                color[:, take] = buf[:n, take]
                alpha[take] = 255
        finally:
            self._release(reader)
        if not alpha.any():
            return None
        return color, alpha

    def _acquire(self) -> _Reader:
        with self._readers_lock:
            return self._idle.pop() if self._idle else _Reader()

    def _release(self, reader: _Reader) -> None:
        with self._readers_lock:
            if not self._closed:
                self._idle.append(reader)
                return
        reader.close()  # closed meanwhile: never close datasets another thread is warping from

    def open(self) -> None:
        with self._readers_lock:
            self._closed = False

    def close(self) -> None:
        """Close idle datasets now; readers still rendering close when they finish."""
        with self._readers_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for reader in idle:
            reader.close()


def _pick_level(group: _RasterGroup, tile_res: float) -> tuple[int, Resampling]:
    """Coarsest overview still at least as fine as the tile, and the resampling for it."""
    level = 0
    for i, f in enumerate(group.factors):
        if group.res * f <= tile_res * 1.01:
            level = i
    finer = group.res * group.factors[level] < tile_res / 1.01
    return level, (Resampling.average if finer else Resampling.bilinear)


def tile_limits(wgs84: tuple[float, float, float, float], z: int) -> tuple[int, int, int, int]:
    """(min_row, max_row, min_col, max_col) of the tiles at zoom z touching a lon/lat box."""
    w, s, e, n = wgs84
    ul = mercantile.tile(w, n, z)
    lr = mercantile.tile(e, s, z)
    # A box edge exactly on a tile edge does not touch the next tile.
    max_col = lr.x - 1 if lr.x > ul.x and mercantile.bounds(lr.x, lr.y, z).west >= e else lr.x
    max_row = lr.y - 1 if lr.y > ul.y and mercantile.bounds(lr.x, lr.y, z).north <= s else lr.y
    top = (1 << z) - 1
    return (min(ul.y, top), min(max_row, top), min(ul.x, top), min(max_col, top))


# --------------------------------------------------------------------------- XML documents
def _q(tag: str) -> str:
    prefix, _, local = tag.rpartition(":")
    return f"{{{NS[prefix]}}}{local}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, _q(tag), {(_q(k) if ":" in k else k): v for k, v in attrib.items()})
    if text is not None:
        el.text = text
    return el


def _num(v: float) -> str:
    return repr(float(v))


def _dcp(op: ET.Element, gets: Sequence[tuple[str, str]]) -> None:
    http = _sub(_sub(op, "ows:DCP"), "ows:HTTP")
    for href, encoding in gets:
        get = _sub(http, "ows:Get", **{"xlink:href": href})
        allowed = _sub(_sub(get, "ows:Constraint", name="GetEncoding"), "ows:AllowedValues")
        _sub(allowed, "ows:Value", encoding)


def capabilities_xml(layers: Sequence[_Layer], base_url: str) -> bytes:
    """The WMTS 1.0.0 capabilities document for these layers at base_url."""
    root = ET.Element(_q("Capabilities"), {"version": "1.0.0", _q("xsi:schemaLocation"):
                      "http://www.opengis.net/wmts/1.0 "
                      "http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd"})
    ident = _sub(root, "ows:ServiceIdentification")
    _sub(ident, "ows:Title", "Luminescence local WMTS")
    _sub(ident, "ows:Abstract", "Local rasters served as an OGC WMTS on the loopback interface by "
         "Luminescence (pipeline/server/wmts.py), imitating Academia Sinica's tile services. Layers "
         "marked SYNTHETIC are derived by emulation and are not real historic photographs.")
    kws = _sub(ident, "ows:Keywords")
    for kw in ("WMTS", "orthoimagery", "aerial photography"):
        _sub(kws, "ows:Keyword", kw)
    _sub(ident, "ows:ServiceType", "OGC WMTS")
    _sub(ident, "ows:ServiceTypeVersion", "1.0.0")
    _sub(ident, "ows:Fees", "none")
    _sub(ident, "ows:AccessConstraints", "see each layer's attribution")
    provider = _sub(root, "ows:ServiceProvider")
    _sub(provider, "ows:ProviderName", "Luminescence (local)")
    _sub(_sub(provider, "ows:ServiceContact"), "ows:IndividualName", "Luminescence")

    ops = _sub(root, "ows:OperationsMetadata")
    caps_url = f"{base_url}/wmts/1.0.0/WMTSCapabilities.xml"
    _dcp(_sub(ops, "ows:Operation", name="GetCapabilities"),
         [(caps_url, "RESTful"), (f"{base_url}/wmts?", "KVP")])
    _dcp(_sub(ops, "ows:Operation", name="GetTile"),
         [(f"{base_url}/wmts/", "RESTful"), (f"{base_url}/wmts?", "KVP")])

    contents = _sub(root, "Contents")
    for layer in layers:
        src = layer.source
        el = _sub(contents, "Layer")
        _sub(el, "ows:Title", src.title)
        abstract = src.abstract + (f" Attribution: {src.attribution}" if src.attribution else "")
        _sub(el, "ows:Abstract", abstract)
        kws = _sub(el, "ows:Keywords")
        keywords = list(src.keywords) + (["synthetic"] if src.synthetic and "synthetic" not in src.keywords
                                         else [])
        for kw in keywords:
            _sub(kws, "ows:Keyword", kw)
        wgs = _sub(el, "ows:WGS84BoundingBox", crs="urn:ogc:def:crs:OGC:2:84")
        _sub(wgs, "ows:LowerCorner", f"{_num(layer.wgs84[0])} {_num(layer.wgs84[1])}")
        _sub(wgs, "ows:UpperCorner", f"{_num(layer.wgs84[2])} {_num(layer.wgs84[3])}")
        _sub(el, "ows:Identifier", src.id)
        bb = _sub(el, "ows:BoundingBox", crs=CRS_URN)
        _sub(bb, "ows:LowerCorner", f"{_num(layer.bounds_3857[0])} {_num(layer.bounds_3857[1])}")
        _sub(bb, "ows:UpperCorner", f"{_num(layer.bounds_3857[2])} {_num(layer.bounds_3857[3])}")
        style = _sub(el, "Style", isDefault="true")
        _sub(style, "ows:Title", "Default")
        _sub(style, "ows:Identifier", "default")
        for fmt in src.formats:
            _sub(el, "Format", FORMATS[fmt])
        link = _sub(el, "TileMatrixSetLink")
        _sub(link, "TileMatrixSet", MATRIX_SET)
        limits = _sub(link, "TileMatrixSetLimits")
        for z in range(0, MAX_ZOOM + 1):
            min_row, max_row, min_col, max_col = tile_limits(layer.wgs84, z)
            lim = _sub(limits, "TileMatrixLimits")
            _sub(lim, "TileMatrix", str(z))
            _sub(lim, "MinTileRow", str(min_row))
            _sub(lim, "MaxTileRow", str(max_row))
            _sub(lim, "MinTileCol", str(min_col))
            _sub(lim, "MaxTileCol", str(max_col))
        for fmt in src.formats:
            _sub(el, "ResourceURL", format=FORMATS[fmt], resourceType="tile",
                 template=f"{base_url}/wmts/{src.id}/{{TileMatrixSet}}/{{TileMatrix}}/{{TileCol}}/"
                          f"{{TileRow}}.{EXTENSIONS[fmt]}")

    tms = _sub(contents, "TileMatrixSet")
    _sub(tms, "ows:Title", "Google Maps compatible (EPSG:3857)")
    _sub(tms, "ows:Identifier", MATRIX_SET)
    bb = _sub(tms, "ows:BoundingBox", crs=CRS_URN)
    _sub(bb, "ows:LowerCorner", f"{TOP_LEFT[0]} {-TOP_LEFT[1]}")
    _sub(bb, "ows:UpperCorner", f"{-TOP_LEFT[0]} {TOP_LEFT[1]}")
    _sub(tms, "ows:SupportedCRS", CRS_URN)
    _sub(tms, "WellKnownScaleSet", "urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible")
    for z in MATRIX_ZOOMS:
        tm = _sub(tms, "TileMatrix")
        _sub(tm, "ows:Identifier", str(z))
        _sub(tm, "ScaleDenominator", _num(SCALE_DENOMINATOR_Z0 / (1 << z)))
        _sub(tm, "TopLeftCorner", f"{TOP_LEFT[0]} {TOP_LEFT[1]}")
        _sub(tm, "TileWidth", str(TILE_SIZE))
        _sub(tm, "TileHeight", str(TILE_SIZE))
        _sub(tm, "MatrixWidth", str(1 << z))
        _sub(tm, "MatrixHeight", str(1 << z))
    _sub(root, "ServiceMetadataURL", **{"xlink:href": caps_url})
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def exception_report(code: str, text: str, locator: str | None = None) -> bytes:
    """An OWS 1.1 ExceptionReport document."""
    root = ET.Element(_q("ows:ExceptionReport"),
                      {"version": "1.1.0", "{http://www.w3.org/XML/1998/namespace}lang": "en"})
    attrib = {"exceptionCode": code, **({"locator": locator} if locator else {})}
    exc = _sub(root, "ows:Exception", **attrib)
    _sub(exc, "ows:ExceptionText", text)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def _service_exception(text: str) -> bytes:
    root = ET.Element("ServiceExceptionReport", {"version": "1.1.1"})
    ET.SubElement(root, "ServiceException", {"code": "NoApplicableCode"}).text = text
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


class OwsException(Exception):
    """A request error answered with an ExceptionReport."""

    def __init__(self, code: str, text: str, locator: str | None = None, status: int = 400) -> None:
        super().__init__(text)
        self.code, self.text, self.locator, self.status = code, text, locator, status


# --------------------------------------------------------------------------- HTTP
def _unsafe_path(raw: str) -> bool:
    """True for request paths that try to leave the URL space (traversal, NUL, backslashes)."""
    decoded = raw
    for _ in range(3):  # catch double-encoded %252e%252e too
        decoded = unquote(decoded)
    if "\x00" in decoded or "\\" in decoded or decoded.startswith("//"):
        return True
    return any(part in ("..", ".") for part in decoded.split("/"))


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
        if self.server.owner.verbose:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def do_GET(self) -> None:
        try:
            self._route()
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (e.g. it timed out)

    def _route(self) -> None:
        owner = self.server.owner
        if _unsafe_path(self.path.split("?", 1)[0]):
            self._send(400, b"bad request path\n", "text/plain; charset=utf-8")
            return
        parts = urlsplit(self.path)
        path = parts.path
        try:
            if path == "/wmts/1.0.0/WMTSCapabilities.xml":
                self._send(200, owner.capabilities, "application/xml")
            elif path in ("/wmts", "/wmts/"):
                self._kvp(parse_qs(parts.query, keep_blank_values=True))
            elif path.startswith("/wmts/"):
                self._rest(path[len("/wmts/"):])
            elif path == "/file-exists.php":
                self._xyz(parse_qs(parts.query, keep_blank_values=True))
            elif path == "/":
                body = (f"Luminescence WMTS. Capabilities: {owner.capabilities_url}\n").encode()
                self._send(200, body, "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")
        except OwsException as exc:
            self._send(exc.status, exception_report(exc.code, exc.text, exc.locator), "application/xml")
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception:  # a bug or a GDAL failure: answer like a real server, log the traceback
            log.exception("error while serving %s", self.path)
            self._send(500, exception_report("NoApplicableCode", "internal server error"), "application/xml")

    # ----------------------------------------------------------- encodings
    def _kvp(self, query: dict[str, list[str]]) -> None:
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
            self._send(200, self.server.owner.capabilities, "application/xml")
            return
        if request.lower() != "gettile":
            raise OwsException("OperationNotSupported", f"request {request} is not supported "
                               "(GetCapabilities, GetTile)", "REQUEST", status=501)
        if version != "1.0.0":
            raise OwsException("InvalidParameterValue", f"VERSION {version} is not supported (1.0.0)",
                               "VERSION")
        layer = self._layer(need("LAYER"), "LAYER")
        style = need("STYLE")
        if style != "default":
            raise OwsException("InvalidParameterValue", f"unknown STYLE '{style}' (default)", "STYLE")
        self._matrix_set(need("TILEMATRIXSET"), "TILEMATRIXSET")
        mime = need("FORMAT")
        fmt = next((f for f in layer.source.formats if FORMATS[f] == mime), None)
        if fmt is None:
            offered = ", ".join(FORMATS[f] for f in layer.source.formats)
            raise OwsException("InvalidParameterValue", f"FORMAT {mime} is not offered by layer "
                               f"{layer.source.id} ({offered})", "FORMAT")
        tile = _tile(need("TILEMATRIX"), need("TILECOL"), need("TILEROW"),
                     ("TILEMATRIX", "TILECOL", "TILEROW"))
        self._tile(layer, fmt, tile)

    def _rest(self, rest: str) -> None:
        segments = rest.split("/")
        if len(segments) != 5:
            raise OwsException("InvalidParameterValue", "REST tile paths are "
                               "/wmts/{layer}/{TileMatrixSet}/{TileMatrix}/{TileCol}/{TileRow}.{ext}")
        layer_id, matrix_set, z, col, last = segments
        layer = self._layer(layer_id, "layer")
        self._matrix_set(matrix_set, "TileMatrixSet")
        row, _, ext = last.partition(".")
        fmt = next((f for f in layer.source.formats if ext in (EXTENSIONS[f], f)), None)
        if fmt is None:
            offered = ", ".join(EXTENSIONS[f] for f in layer.source.formats)
            raise OwsException("InvalidParameterValue", f"file extension '.{ext}' is not offered by layer "
                               f"{layer.source.id} ({offered})", "Format")
        self._tile(layer, fmt, _tile(z, col, row, ("TileMatrix", "TileCol", "TileRow")))

    def _xyz(self, query: dict[str, list[str]]) -> None:
        # Sinica's legacy endpoint: img={LAYER}-{png|jpg}-{z}-{x}-{y}
        spec = query.get("img", [""])[-1]
        parts = spec.rsplit("-", 4)
        owner = self.server.owner
        layer = owner.layers.get(parts[0]) if len(parts) == 5 else None
        fmt = None
        if layer is not None:
            fmt = next((f for f in layer.source.formats if EXTENSIONS[f] == parts[1]), None)
        if layer is None or fmt is None:
            self._send(404, b"no such layer or format\n", "text/plain; charset=utf-8")
            return
        try:
            tile = _tile(parts[2], parts[3], parts[4], ("z", "x", "y"))
        except OwsException:
            self._send(404, b"no such tile\n", "text/plain; charset=utf-8")
            return
        self._tile(layer, fmt, tile)

    def _layer(self, layer_id: str, locator: str) -> _Layer:
        layer = self.server.owner.layers.get(layer_id)
        if layer is None:
            raise OwsException("InvalidParameterValue", f"unknown layer '{layer_id}'", locator)
        return layer

    @staticmethod
    def _matrix_set(name: str, locator: str) -> None:
        if name != MATRIX_SET:
            raise OwsException("InvalidParameterValue", f"unknown TileMatrixSet '{name}' ({MATRIX_SET})",
                               locator)

    # ----------------------------------------------------------- tiles and faults
    def _tile(self, layer: _Layer, fmt: str, tile: TileId) -> None:
        owner = self.server.owner
        attempt = owner._count(layer.source.id, tile)
        plan = owner.faults
        if plan.latency_s > 0:
            time.sleep(plan.latency_s)
        fault = plan.fault_for(layer.source.id, tile.z, tile.x, tile.y, attempt)
        retry = {"Retry-After": str(plan.retry_after_s)}
        if fault == "error":
            self._send(500, b"<html><body><h1>500 Internal Server Error</h1>(injected)</body></html>",
                       "text/html")
            return
        if fault == "throttle":
            self._send(429, b"too many requests (injected)\n", "text/plain", retry)
            return
        if fault == "unavailable":
            self._send(503, b"service unavailable (injected)\n", "text/plain", retry)
            return
        if fault == "exception":
            # Some servers answer 200 with a WMS-style exception, others 400 with an OWS report.
            if plan.draw(f"{layer.source.id}#exception", tile.z, tile.x, tile.y, attempt) < 0.5:
                self._send(200, _service_exception("injected backend failure"), "application/vnd.ogc.se_xml")
            else:
                self._send(400, exception_report("NoApplicableCode", "injected backend failure"),
                           "application/xml")
            return
        if fault == "slow":
            time.sleep(plan.slow_s)
        body = owner.renderer.tile_bytes(layer.source.id, fmt, tile)
        ctype = "image/png" if body is TRANSPARENT_PNG or fmt == "png" else "image/jpeg"
        if fault == "truncate":
            self._send(200, body, ctype, truncate=True)
            return
        self._send(200, body, ctype, {"Cache-Control": "public, max-age=86400"})

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None, *,
              truncate: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if truncate:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


def _tile(z: str, col: str, row: str, names: tuple[str, str, str]) -> TileId:
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


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    owner: WmtsServer

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that time out or drop connections are normal under fault injection.
        log.debug("connection error from %s", client_address, exc_info=True)


class WmtsServer:
    """A WMTS over local rasters on 127.0.0.1. Use as a context manager or start()/stop()."""

    def __init__(self, layers: Sequence[LayerSource], *, host: str = "127.0.0.1", port: int = 0,
                 faults: FaultPlan | None = None, render_cache_tiles: int = 4096,
                 cache_dir: str | os.PathLike[str] = "data/derived/cache", verbose: bool = False) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ServerError(f"the WMTS server binds to the loopback interface only, not {host}")
        ids = [layer.id for layer in layers]
        if len(set(ids)) != len(ids):
            raise ServerError(f"duplicate layer ids: {ids}")
        self.layers: dict[str, _Layer] = {src.id: _inspect_layer(src) for src in layers}
        self.faults = faults or FaultPlan()
        self.verbose = verbose
        self.renderer = TileRenderer(self.layers, Path(cache_dir), render_cache_tiles)
        self._host, self._port = host, port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counts: collections.Counter[tuple[str, int, int, int]] = collections.Counter()
        self._counts_lock = threading.Lock()
        self.base_url = ""
        self.capabilities_url = ""
        self.capabilities = b""

    # ----------------------------------------------------------- lifecycle
    def start(self) -> WmtsServer:
        if self._httpd is not None:
            return self
        try:
            httpd = _HTTPServer((self._host, self._port), _Handler)
        except OSError as exc:
            raise ServerError(f"cannot listen on {self._host}:{self._port} ({exc.strerror}); "
                              "pick another port (0 = any free port)") from None
        httpd.owner = self
        self._httpd = httpd
        self.renderer.open()
        host, port = httpd.server_address[:2]
        self.base_url = f"http://{host}:{port}"
        self.capabilities_url = f"{self.base_url}/wmts/1.0.0/WMTSCapabilities.xml"
        self.capabilities = capabilities_xml(list(self.layers.values()), self.base_url)
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
        self.renderer.close()

    def __enter__(self) -> WmtsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def prepare(self, layer_ids: Sequence[str] | None = None) -> None:
        """Build the cached GeoTIFFs now instead of on the first tile of each layer."""
        for layer_id in list(self.layers) if layer_ids is None else layer_ids:
            if layer_id not in self.layers:
                raise ServerError(f"unknown layer '{layer_id}' (known: {', '.join(self.layers)})")
            self.renderer.prepare(self.layers[layer_id])

    # ----------------------------------------------------------- counters
    def _count(self, layer_id: str, tile: TileId) -> int:
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


# --------------------------------------------------------------------------- the bundled sample
def _year(name: str) -> str:
    match = re.search(r"(19|20)\d\d", name)
    return match.group(0) if match else "unknown year"


def sample_layers(sample: SampleConfig) -> list[LayerSource]:
    """The bundled NYSDOP layers (colour, NIR dropped) and the SYNTHETIC film layers (built if needed)."""
    data_dir = Path(sample.data_dir)
    if not data_dir.is_dir():
        raise ServerError(f"sample folder {data_dir} does not exist; set sample.data_dir in params.yaml")
    layers = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        paths = tuple(raster_files(folder))
        with rasterio.open(paths[0]) as ds:
            res_m = abs(ds.res[0]) * float(ds.crs.linear_units_factor[1]) if ds.crs else 0.0
        year = _year(folder.name)
        layers.append(LayerSource(
            id=folder.name,
            title=f"{folder.name} — NYSDOP colour orthoimagery, {year}",
            abstract=f"Real colour aerial orthophoto ({year}, {res_m:.2f} m pixels) from the New York "
            f"State Digital Orthoimagery Program: bands 1-3 (R, G, B) of {len(paths)} JPEG 2000 "
            "file(s); the near-infrared band is dropped.",
            paths=paths, bands=(1, 2, 3), formats=("png", "jpeg"),
            keywords=("orthoimagery", "colour", "NYSDOP", year), attribution=NYSDOP_ATTRIBUTION))
    known = {layer.id for layer in layers}
    for source_layer in sample.film.source_layers:
        if source_layer not in known:
            raise ServerError(f"sample.film.source_layers: '{source_layer}' is not a folder of {data_dir}")
        film_tif = build_film_layer(sample, source_layer=source_layer)
        note = SYNTHETIC_NOTE.format(src=source_layer)
        layers.append(LayerSource(
            id=film_layer_id(source_layer),
            title=f"{film_layer_id(source_layer)} — {note}",
            abstract=f"{note}. Made by pipeline/sample/film.py from the {source_layer} colour orthophoto: "
            "panchromatic weighting of R, G, B and NIR, lens/scan blur, per-frame vignetting, an S-shaped "
            "characteristic curve with gamma, and seeded film grain (parameters: params.yaml sample.film). "
            "Use it as a stand-in for a historic grayscale aerial photograph only.",
            paths=(film_tif,), bands=(1,), formats=("png",),
            keywords=("synthetic", "film emulation", "panchromatic", "grayscale"), synthetic=True,
            attribution=f"SYNTHETIC; derived from {source_layer}. {NYSDOP_ATTRIBUTION}"))
    return layers


@contextmanager
def serve_sample(sample: SampleConfig, faults: FaultPlan | None = None, *, port: int = 0,
                 verbose: bool = False, prepare: bool | Sequence[str] = True,
                 render_cache_tiles: int = 4096) -> Iterator[WmtsServer]:
    """Serve the bundled sample on 127.0.0.1 for the duration of the block.

    `prepare` builds the cached GeoTIFFs before serving (all layers, or the named ones), so no
    client waits for a one-off JPEG 2000 conversion inside its read timeout.
    """
    server = WmtsServer(sample_layers(sample), port=port, faults=faults, verbose=verbose,
                        cache_dir=Path(sample.derived_dir) / "cache", render_cache_tiles=render_cache_tiles)
    if prepare:
        server.prepare(None if prepare is True else list(prepare))
    with server:
        yield server
