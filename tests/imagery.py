"""Test support: real NYSDOP sample imagery rendered into EPSG:3857 XYZ tiles.

Not a test module (no `test_` prefix). The tiles are the bundled orthophotos
(data/sample) reprojected with rasterio into each tile's GoogleMapsCompatible
bounds, i.e. what a WMTS server in EPSG:3857 would serve for that area. They are
real imagery, only resampled; anything made synthetic on top (shifts, markers,
film-like processing) is done and labelled by the test that uses it.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject

from pipeline.geo.tiles import TILE_SIZE, TileId, tile_bounds_3857
from pipeline.geo.tilestore import TileRecord, TileStatus, TileStore
from tests.conftest import SAMPLE

# The 2010/2011 files carry only a world file; their CRS is given in data/sample/README.md.
SAMPLE_CRS = {"erie_2011": "EPSG:2262", "columbia_2010": "EPSG:2260", "erie_2021": None}
# A 2021 tile over houses, roads and a rail line in the erie village (z18, all four files cover it).
ERIE_Z18 = TileId(18, 73599, 96725)


@functools.lru_cache(maxsize=32)
def render_mosaic(layer: str, zoom: int, x0: int, y0: int, nx: int, ny: int,
                  shift_px: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """RGBA (ny*256, nx*256, 4) of the sample layer over tiles x0..x0+nx-1, y0..y0+ny-1.

    Alpha is 0 where no sample file covers the pixel. `shift_px` = (dx, dy) makes a
    SYNTHETIC misregistration: the content lands dx pixels right and dy pixels down of
    where it belongs (a feature of pixel (x, y) shows at (x + dx, y + dy)).
    Cached and read-only: copy before changing it.
    """
    left, _, _, top = tile_bounds_3857(TileId(zoom, x0, y0))
    _, bottom, right, _ = tile_bounds_3857(TileId(zoom, x0 + nx - 1, y0 + ny - 1))
    width, height = nx * TILE_SIZE, ny * TILE_SIZE
    res = (right - left) / width
    # Pixel x + dx must show the ground of pixel x: the raster's origin moves west by dx pixels.
    east, north = -shift_px[0] * res, shift_px[1] * res
    dst_transform = from_bounds(left + east, bottom + north, right + east, top + north, width, height)
    out = np.zeros((4, height, width), dtype=np.uint8)
    for path in sorted((SAMPLE / layer).glob("*.jp2")):
        with rasterio.open(path) as src:
            src_crs = src.crs or SAMPLE_CRS[layer]
            band = np.zeros((4, height, width), dtype=np.uint8)
            reproject(rasterio.band(src, [1, 2, 3]), band[:3], src_crs=src_crs, dst_transform=dst_transform,
                      dst_crs="EPSG:3857", resampling=Resampling.bilinear)
            coverage = np.zeros((height, width), dtype=np.uint8)
            reproject(np.full((src.height, src.width), 255, np.uint8), coverage, src_transform=src.transform,
                      src_crs=src_crs, dst_transform=dst_transform, dst_crs="EPSG:3857",
                      resampling=Resampling.nearest)
            band[3] = coverage
        new = (band[3] > 0) & (out[3] == 0)
        out[:, new] = band[:, new]
    result = np.ascontiguousarray(np.moveaxis(out, 0, -1))
    result.flags.writeable = False
    return result


def cut_tiles(mosaic: np.ndarray, zoom: int, x0: int, y0: int) -> dict[TileId, np.ndarray]:
    ny, nx = mosaic.shape[0] // TILE_SIZE, mosaic.shape[1] // TILE_SIZE
    return {TileId(zoom, x0 + i, y0 + j):
            mosaic[j * TILE_SIZE:(j + 1) * TILE_SIZE, i * TILE_SIZE:(i + 1) * TILE_SIZE]
            for j in range(ny) for i in range(nx)}


def png_bytes(rgba: np.ndarray, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    mode = "RGBA" if rgba.ndim == 3 and rgba.shape[-1] == 4 else None
    Image.fromarray(np.ascontiguousarray(rgba), mode=mode).save(buf, format="PNG",
                                                                compress_level=compress_level)
    return buf.getvalue()


def to_records(tiles: dict[TileId, np.ndarray]) -> list[TileRecord]:
    """ok records for tiles with any data, empty records for fully transparent ones."""
    out = []
    for tile, rgba in sorted(tiles.items()):
        if rgba[..., 3].any():
            out.append(TileRecord(tile, TileStatus.OK, png_bytes(rgba)))
        else:
            out.append(TileRecord(tile, TileStatus.EMPTY, reason="fully transparent"))
    return out


def make_store(path: Path, records: list[TileRecord], *, layer: str, zoom: int, aoi: str = "test",
               synthetic: bool = False, complete: bool = True, **metadata: object) -> Path:
    """A tile store with the metadata the harvest stage writes."""
    with TileStore(path) as store:
        store.put_many(records)
        store.set_metadata({
            "name": f"{aoi}-{layer}", "format": "png", "minzoom": zoom, "maxzoom": zoom,
            "layer": layer, "layer_title": layer, "synthetic": "true" if synthetic else "false",
            "matrix_set": "GoogleMapsCompatible", "aoi": aoi, "tile_size": TILE_SIZE,
            "source_url": "file://data/sample", "attribution": "NYSDOP (test)",
            **metadata})
        store.mark_complete(complete)
    return path


def params_for(datasets: dict[str, dict], fetch_keys: list[str], zoom: int = 18, **align: object) -> dict:
    """A minimal params.yaml mapping for align tests (stores named data/tiles/<key>.mbtiles)."""
    return {
        "sources": {"sample": {"kind": "sample"}},
        "aois": {"test": {"path": "aoi/test.shp"}},
        "fetch": {k: {"source": "sample", "layer": k, "aoi": "test", "zoom": zoom} for k in fetch_keys},
        "align": align,
        "datasets": datasets,
    }
