"""What to harvest: a validated tile source (`Target`), the AOI's tiles at a zoom, and the run.

`wmts_target` reads a WMTS's capabilities and checks the layer, matrix set, zoom and format
before any tile is requested; `xyz_target` wraps a URL template. `harvest_aoi` refuses an AOI
outside the layer's declared bounds, covers the AOI with tiles (bounded by harvest.max_tiles)
and harvests them into a tile store (pipeline.geo.harvester).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shapely.geometry import box

from pipeline.core.config import HarvestConfig
from pipeline.core.errors import LuminescenceError
from pipeline.geo.harvester import HarvestReport, harvest_to_store
from pipeline.geo.tiles import TileId, TooManyTilesError, tile_cover
from pipeline.geo.wmts_client import LayerInfo, TileSource, read_capabilities_for, resolve_source, xyz_source

if TYPE_CHECKING:  # reading AOIs pulls in geopandas; planning only needs the type
    from pipeline.geo.aoi import Aoi


class AoiOutsideLayerError(LuminescenceError):
    """The AOI does not overlap the layer's WGS84 bounds at all."""


@dataclass(frozen=True)
class Target:
    """A validated source plus what the store's metadata says about it."""

    source: TileSource
    service_key: str  # the cache key and the store's source_url
    layer: LayerInfo | None  # None for XYZ templates (no capabilities)
    attribution: str = ""


def wmts_target(url: str, layer: str, zoom: int, cfg: HarvestConfig, *, matrix_set: str | None = None,
                fmt: str | None = None, service_key: str | None = None, attribution: str = "") -> Target:
    """A layer of the WMTS whose capabilities are at `url`, checked against them.

    `service_key` replaces the URL as the cache identity (for servers whose URL changes between
    runs, like the loopback sample server on an ephemeral port).
    """
    caps = read_capabilities_for(url, cfg)  # the harvest section's timeouts, total deadline, retries
    source = resolve_source(caps, layer, zoom=zoom, matrix_set=matrix_set, fmt=fmt)
    return Target(source, service_key or url, source.layer, attribution)


def xyz_target(template: str, layer: str | None, fmt: str | None, attribution: str = "") -> Target:
    """An XYZ URL template ({z} {x} {y}, optionally {layer} {ext}); nothing to check it against."""
    return Target(xyz_source(template, layer, fmt), template, None, attribution)


def _fmt_bounds(b: Sequence[float]) -> str:
    return "W,S,E,N = " + ", ".join(f"{v:.5f}" for v in b)


def check_overlap(aoi: Aoi, layer: LayerInfo | None) -> None:
    """Refuse an AOI that lies entirely outside the layer's declared WGS84 bounds."""
    if layer is None or layer.bounds_wgs84 is None:
        return
    if not box(*layer.bounds_wgs84).intersects(aoi.geometry_wgs84):
        raise AoiOutsideLayerError(
            f"AOI '{aoi.name}' ({_fmt_bounds(aoi.bounds_wgs84)}) lies outside layer '{layer.id}' "
            f"({_fmt_bounds(layer.bounds_wgs84)}); check the AOI file's CRS (.prj) or choose a layer "
            f"that covers it (list-layers shows each layer's bounds)")


def cover(aoi: Aoi, zoom: int, max_tiles: int, hint: str = "") -> list[TileId]:
    """The tiles covering the AOI at `zoom`; `hint` is added to the too-many-tiles error."""
    try:
        tiles = tile_cover(aoi.geometry_3857, zoom, max_tiles=max_tiles)
    except TooManyTilesError as exc:
        if hint:
            raise LuminescenceError(f"{exc} {hint}") from None
        raise
    if not tiles:
        raise LuminescenceError(f"AOI '{aoi.name}' covers no tiles at zoom {zoom}")
    return tiles


def harvest_aoi(target: Target, aoi: Aoi, zoom: int, out: Path, cfg: HarvestConfig, *, label: str,
                progress: bool = True, max_tiles_hint: str = "") -> HarvestReport:
    """Harvest the AOI's tiles at `zoom` from `target` into the store `out` (resuming it)."""
    check_overlap(aoi, target.layer)
    tiles = cover(aoi, zoom, cfg.max_tiles, max_tiles_hint)
    layer = target.layer
    return harvest_to_store(
        target.source, tiles, out, cfg, label=label, aoi=aoi.name, attribution=target.attribution,
        layer_title=layer.title if layer else target.source.layer_id,
        keywords=layer.keywords if layer else (), synthetic=layer.synthetic if layer else False,
        service_key=target.service_key, progress=progress)
