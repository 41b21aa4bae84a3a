"""What the server offers: its one tile matrix set, its formats, and the layers it serves.

A `LayerSource` is a layer as configured (local rasters, bands, formats, labels); `inspect_layer`
checks it and turns it into a `Layer`: its footprint in WGS84 and EPSG:3857, and its sources
grouped by pixel grid (`RasterGroup`), which the renderer caches as one mosaic each.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import rasterio
from rasterio.warp import transform, transform_bounds

from pipeline.sample.film import grid_key
from pipeline.server.errors import ServerError

MATRIX_SET = "GoogleMapsCompatible"
CRS_URN = "urn:ogc:def:crs:EPSG::3857"
MATRIX_ZOOMS = range(0, 22)  # matrices declared in the matrix set
MAX_ZOOM = 20  # zooms served (TileMatrixSetLimits)
# OGC WMTS 1.0.0 Annex E.4 GoogleMapsCompatible: scale denominator at zoom 0, halved per zoom.
SCALE_DENOMINATOR_Z0 = 559082264.0287178
TOP_LEFT = (-20037508.3427892, 20037508.3427892)
FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
EXTENSIONS = {"png": "png", "jpeg": "jpg"}  # REST and XYZ file extensions per format

_LAYER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Box = tuple[float, float, float, float]


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


@dataclass
class RasterGroup:
    """Consecutive sources on one pixel grid (`film.grid_key`): one cached mosaic GeoTIFF."""

    paths: tuple[Path, ...]
    bounds_3857: Box
    src_per_3857_m: float  # source CRS units per EPSG:3857 metre near the group's centre
    cached: Path | None = None  # set by the renderer once the cached GeoTIFF exists
    res: float = 0.0
    factors: tuple[int, ...] = (1,)


@dataclass
class Layer:
    """A checked layer: its footprint and raster groups; the renderer prepares it once."""

    source: LayerSource
    wgs84: Box
    bounds_3857: Box
    groups: list[RasterGroup]
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: bool = False

    @property
    def nbands(self) -> int:
        return len(self.source.bands)


def union(boxes: Sequence[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


def intersects(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def inspect_layer(src: LayerSource) -> Layer:
    """Check a configured layer (id, formats, bands, readable georeferenced rasters) and measure it."""
    if not _LAYER_ID.match(src.id):
        raise ServerError(f"layer id '{src.id}' must be letters, digits, '.', '_' or '-' (no '/')")
    if not src.paths:
        raise ServerError(f"layer '{src.id}' has no source rasters")
    if not src.formats or any(f not in FORMATS for f in src.formats):
        raise ServerError(f"layer '{src.id}': formats must be among {sorted(FORMATS)}, got {src.formats}")
    if len(src.bands) not in (1, 3):
        raise ServerError(f"layer '{src.id}': bands must be (r, g, b) or (gray,), got {src.bands}")
    groups: list[RasterGroup] = []
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
            g.bounds_3857 = union([g.bounds_3857, boxes_3857[-1]])
        else:
            cx, cy = (bounds.left + bounds.right) / 2, (bounds.bottom + bounds.top) / 2
            xs, ys = transform(crs, "EPSG:3857", [cx, cx + 1.0], [cy, cy])
            groups.append(RasterGroup((Path(path),), boxes_3857[-1], 1.0 / math.hypot(xs[1] - xs[0],
                                                                                       ys[1] - ys[0])))
    return Layer(src, union(boxes), union(boxes_3857), groups)
