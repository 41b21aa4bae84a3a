""""Download this view": the colourised tiles of an area as one Cloud-Optimized GeoTIFF.

The area is the part of the view's AOI inside the map's current bounds, at the view's zoom
(the model's own resolution), so the file holds exactly the tiles the map shows when zoomed in.
It is EPSG:3857 with the tiles' exact bounds, deflate-compressed, 256-pixel blocks and average
overviews, and says in its metadata that its colours are a model's estimate.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from pipeline.app.views import RequestError, View
from pipeline.geo.tiles import TILE_SIZE, TileId, tile_bounds_3857


def parse_bbox(text: str | None) -> tuple[float, float, float, float] | None:
    """'west,south,east,north' in degrees, or None for the whole area."""
    if not text:
        return None
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise RequestError(f"bbox {text[:80]!r} must be four numbers: west,south,east,north "
                           f"(degrees)") from None
    if not (-180 <= w < e <= 180 and -85.06 <= s < n <= 85.06):
        raise RequestError(f"bbox {text[:80]!r} is not west < east, south < north within the "
                           f"web-mercator world")
    return w, s, e, n


async def export_view(view: View, bbox: tuple[float, float, float, float] | None, folder: Path,
                      max_tiles: int) -> tuple[Path, str]:
    """(file, download name) of the COG of the view's colourised tiles inside bbox."""
    from rasterio.transform import from_bounds

    from pipeline.geo.cog import write_cog

    if view.colour is None:
        raise RequestError(f"view '{view.name}' has no colourised layer: {view.model_error}", 503)
    grid = view.tile_grid(bbox)  # counted before any tile is listed: a huge area is refused at once
    if not len(grid):
        raise RequestError(f"the requested area holds no tiles of view '{view.name}'")
    if len(grid) > max_tiles:
        raise RequestError(f"this area needs {len(grid)} tiles at zoom {view.zoom}, more than "
                           f"app.export_max_tiles ({max_tiles}); zoom in and download again", 413)
    tiles = grid.tiles()
    runner = view.colour.runner
    xs, ys = [t.x for t in tiles], [t.y for t in tiles]
    x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    name = f"{view.name}_z{view.zoom}_{x0}_{y0}_{x1}_{y1}_{runner.model_id[:8]}.tif"
    path = folder / name
    if path.exists():
        return path, name
    rgbas = await asyncio.gather(*(view.colour.rgba(t) for t in tiles))
    mosaic = np.zeros(((y1 - y0 + 1) * TILE_SIZE, (x1 - x0 + 1) * TILE_SIZE, 4), np.uint8)
    for t, rgba in zip(tiles, rgbas, strict=True):
        if rgba is not None:
            r, c = (t.y - y0) * TILE_SIZE, (t.x - x0) * TILE_SIZE
            mosaic[r:r + TILE_SIZE, c:c + TILE_SIZE] = rgba
    left, _, _, top = tile_bounds_3857(TileId(view.zoom, x0, y0))
    _, bottom, right, _ = tile_bounds_3857(TileId(view.zoom, x1, y1))
    h, w = mosaic.shape[:2]
    tags = {"description": f"COLOURISED {view.historic.title} (view {view.name}) by {runner.label}; colours "
                           f"are the model's estimate, not observations",
            "model_sha256": runner.digest, "attribution": view.historic.attribution}
    transform = from_bounds(left, bottom, right, top, w, h)
    await asyncio.get_running_loop().run_in_executor(
        None, lambda: write_cog(mosaic, path, crs="EPSG:3857", transform=transform, tags=tags))
    return path, name
