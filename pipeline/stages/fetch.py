"""Fetch tiles: list a WMTS's layers, harvest one layer for an AOI, or run a DVC fetch stage.

    python -m pipeline.stages.fetch list-layers URL
    python -m pipeline.stages.fetch harvest --wmts URL --layer ID --aoi FILE --zoom Z --out FILE.mbtiles
    python -m pipeline.stages.fetch harvest --xyz TEMPLATE [--layer ID] --aoi FILE --zoom Z --out FILE.mbtiles
    python -m pipeline.stages.fetch stage KEY          (what dvc.yaml runs for fetch@KEY)

The stage and the harvest command run the same code: the bundled sample is served over HTTP by
the project's loopback WMTS server (pipeline.server) and harvested like any other WMTS.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.config import PARAMS_FILE, HarvestConfig, Params, load_params, lookup
from pipeline.core.errors import LuminescenceError, cli_entry
from pipeline.core.paths import store_path
from pipeline.geo.harvester import HarvestReport, harvest_to_store
from pipeline.geo.tiles import TileId
from pipeline.geo.wmts_client import (
    Capabilities,
    LayerInfo,
    TileSource,
    format_extension,
    read_capabilities,
    resolve_source,
    xyz_source,
)

if TYPE_CHECKING:
    from pipeline.geo.aoi import Aoi



class AoiOutsideLayerError(LuminescenceError):
    """The AOI does not overlap the layer's WGS84 bounds at all."""


# --------------------------------------------------------------------------- shared flow
@dataclass(frozen=True)
class Target:
    """A validated source plus what the store's metadata says about it."""

    source: TileSource
    service_key: str  # the cache key and the store's source_url
    layer: LayerInfo | None  # None for XYZ templates (no capabilities)
    attribution: str = ""


def _fmt_bounds(b: Sequence[float]) -> str:
    return "W,S,E,N = " + ", ".join(f"{v:.5f}" for v in b)


def wmts_target(url: str, layer: str, zoom: int, cfg: HarvestConfig, *, matrix_set: str | None = None,
                fmt: str | None = None, service_key: str | None = None, attribution: str = "") -> Target:
    caps: Capabilities = read_capabilities(url, user_agent=cfg.user_agent,
                                           timeout=(cfg.connect_timeout_s, cfg.read_timeout_s))
    source = resolve_source(caps, layer, zoom=zoom, matrix_set=matrix_set, fmt=fmt)
    return Target(source, service_key or url, source.layer, attribution)


def xyz_target(template: str, layer: str | None, fmt: str | None, attribution: str = "") -> Target:
    return Target(xyz_source(template, layer, fmt), template, None, attribution)


def check_overlap(aoi: Aoi, layer: LayerInfo | None) -> None:
    """Refuse an AOI that lies entirely outside the layer's declared WGS84 bounds."""
    if layer is None or layer.bounds_wgs84 is None:
        return
    from shapely.geometry import box

    if not box(*layer.bounds_wgs84).intersects(aoi.geometry_wgs84):
        raise AoiOutsideLayerError(
            f"AOI '{aoi.name}' ({_fmt_bounds(aoi.bounds_wgs84)}) lies outside layer '{layer.id}' "
            f"({_fmt_bounds(layer.bounds_wgs84)}); check the AOI file's CRS (.prj) or choose a layer "
            f"that covers it (list-layers shows each layer's bounds)")


def cover(aoi: Aoi, zoom: int, max_tiles: int, hint: str) -> list[TileId]:
    from pipeline.geo.tiles import TooManyTilesError, tile_cover

    try:
        tiles = tile_cover(aoi.geometry_3857, zoom, max_tiles=max_tiles)
    except TooManyTilesError as exc:
        if hint:
            raise LuminescenceError(f"{exc} {hint}") from None
        raise
    if not tiles:
        raise LuminescenceError(f"AOI '{aoi.name}' covers no tiles at zoom {zoom}")
    return tiles


def run(target: Target, aoi: Aoi, zoom: int, out: Path, cfg: HarvestConfig, *, label: str,
        progress: bool = True, max_tiles_hint: str = "") -> HarvestReport:
    check_overlap(aoi, target.layer)
    tiles = cover(aoi, zoom, cfg.max_tiles, max_tiles_hint)
    layer = target.layer
    report = harvest_to_store(
        target.source, tiles, out, cfg, label=label, aoi=aoi.name, attribution=target.attribution,
        layer_title=layer.title if layer else target.source.layer_id,
        keywords=layer.keywords if layer else (), synthetic=layer.synthetic if layer else False,
        service_key=target.service_key, progress=progress)
    print(report.summary(), flush=True)
    return report


# --------------------------------------------------------------------------- sample source
def sample_service_key(params: Params) -> str:
    """A stable cache identity for the bundled sample (the server's port changes every run)."""
    from pipeline.server.sample_identity import sample_service_key as key

    return key(params.sample)


@contextmanager
def _sample_server(params: Params) -> Iterator[str]:
    from pipeline.server.bundled import serve_sample

    with serve_sample(params.sample) as server:
        yield server.capabilities_url


# --------------------------------------------------------------------------- commands
def _harvest_config(path: Path = PARAMS_FILE) -> HarvestConfig:
    return load_params(path).harvest if path.exists() else HarvestConfig()


def cmd_list_layers(args: argparse.Namespace) -> int:
    cfg = _harvest_config()
    caps = read_capabilities(args.url, user_agent=cfg.user_agent,
                             timeout=(cfg.connect_timeout_s, cfg.read_timeout_s))
    print(format_layer_table(caps))
    return 0


def format_layer_table(caps: Capabilities) -> str:
    rows = [("id", "title", "formats", "matrix sets (zooms)", "WGS84 bounds (W S E N)")]
    for layer in sorted(caps.layers.values(), key=lambda ly: ly.id.lower()):
        title = layer.title if len(layer.title) <= 50 else layer.title[:49] + "…"
        if layer.synthetic and "synthetic" not in title.lower():
            title += " [SYNTHETIC]"
        sets = ", ".join(f"{ms.id} ({ms.describe_range()})" if ms.web_mercator else f"{ms.id} (not 3857)"
                         for ms in layer.matrix_sets.values())
        bounds = " ".join(f"{v:.4f}" for v in layer.bounds_wgs84) if layer.bounds_wgs84 else "(not declared)"
        rows.append((layer.id, title, ", ".join(format_extension(f) for f in layer.formats), sets, bounds))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = f"{caps.title or 'WMTS'}: {len(caps.layers)} layers ({caps.url})"
    return "\n".join([head, *lines])


def cmd_harvest(args: argparse.Namespace) -> int:
    from pipeline.geo.aoi import read_aoi

    cfg = _harvest_config()
    overrides: dict[str, object] = {}
    if args.concurrency is not None:
        overrides["concurrency"] = args.concurrency
    if args.rps is not None:
        overrides["requests_per_second"] = None if args.rps <= 0 else args.rps
    if args.cache_dir is not None:
        overrides["cache_dir"] = args.cache_dir
    if args.max_tiles is not None:
        overrides["max_tiles"] = args.max_tiles
    if args.max_retries is not None:
        overrides["max_retries"] = args.max_retries
    cfg = HarvestConfig.model_validate({**cfg.model_dump(), **overrides})
    aoi = read_aoi(args.aoi, buffer_m=args.buffer_m)
    if args.wmts:
        target = wmts_target(args.wmts, args.layer, args.zoom, cfg, matrix_set=args.matrix_set,
                             fmt=args.format)
    else:
        target = xyz_target(args.xyz, args.layer, args.format)
    label = args.name or f"{aoi.name}-{target.source.layer_id or 'xyz'}"
    run(target, aoi, args.zoom, Path(args.out), cfg, label=label, progress=not args.quiet,
        max_tiles_hint="(or pass --max-tiles)")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from pipeline.geo.aoi import load_aoi

    params = load_params()
    fetch = lookup(params.fetch, args.key, "fetch key", f"fetch.{args.key}")
    source_cfg = params.sources[fetch.source]
    aoi = load_aoi(params.aois[fetch.aoi], fetch.aoi)
    out = store_path(args.key)
    cfg = params.harvest
    progress = not args.quiet
    if source_cfg.kind == "sample":
        # Our own loopback server: the politeness cap protects remote servers, not this one.
        cfg = cfg.model_copy(update={"requests_per_second": None})
        with _sample_server(params) as url:
            target = wmts_target(url, fetch.layer, fetch.zoom, cfg, matrix_set=fetch.matrix_set,
                                 fmt=fetch.format, service_key=sample_service_key(params),
                                 attribution=source_cfg.attribution)
            run(target, aoi, fetch.zoom, out, cfg, label=args.key, progress=progress)
    elif source_cfg.kind == "wmts":
        assert source_cfg.url is not None
        target = wmts_target(source_cfg.url, fetch.layer, fetch.zoom, cfg, matrix_set=fetch.matrix_set,
                             fmt=fetch.format, attribution=source_cfg.attribution)
        run(target, aoi, fetch.zoom, out, cfg, label=args.key, progress=progress)
    else:
        assert source_cfg.url is not None
        target = xyz_target(source_cfg.url, fetch.layer, fetch.format, source_cfg.attribution)
        run(target, aoi, fetch.zoom, out, cfg, label=args.key, progress=progress)
    return 0


# --------------------------------------------------------------------------- argparse
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.fetch",
        description="Harvest map tiles (WMTS or XYZ) for an area of interest into an MBTiles tile store.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list-layers", help="list a WMTS's layers (id, title, formats, zooms, bounds)",
                       description="Print the layers a WMTS offers, read from its capabilities.")
    p.add_argument("url", help="capabilities URL (…/WMTSCapabilities.xml) or the service's KVP endpoint")
    p.set_defaults(func=cmd_list_layers)

    p = sub.add_parser(
        "harvest", help="harvest one layer for an AOI (outside DVC)",
        description="Harvest one layer for an AOI into an MBTiles file, with the same code as the fetch "
                    "stage. Defaults come from params.yaml's harvest section when it exists. An existing "
                    "--out of the same source/layer/zoom/AOI is resumed; a different one is refused.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--wmts", metavar="URL", help="WMTS capabilities URL")
    src.add_argument("--xyz", metavar="TEMPLATE",
                     help="XYZ URL template with {z} {x} {y} (and optionally {layer} {ext}), e.g. "
                          "'https://gis.sinica.edu.tw/taipei/file-exists.php?img={layer}-{ext}-{z}-{x}-{y}'")
    p.add_argument("--layer", metavar="ID", help="layer identifier (required with --wmts)")
    p.add_argument("--matrix-set", metavar="ID", help="default: GoogleMapsCompatible when offered")
    p.add_argument("--format", metavar="F", help="png or jpeg (default: the layer's first format)")
    p.add_argument("--aoi", required=True, metavar="FILE", help="AOI polygon file (shapefile with .prj, …)")
    p.add_argument("--buffer-m", type=float, default=0.0, metavar="M", help="grow the AOI by M metres")
    p.add_argument("--zoom", type=int, required=True, metavar="Z", help="zoom level (tile matrix)")
    p.add_argument("--out", required=True, metavar="FILE.mbtiles", help="tile store to create or resume")
    p.add_argument("--name", help="store name (default: <aoi>-<layer>)")
    p.add_argument("--concurrency", type=int, metavar="N", help="parallel requests (default 4)")
    p.add_argument("--rps", type=float, metavar="R", help="requests per second cap; 0 lifts it (default 8)")
    p.add_argument("--cache-dir", metavar="D", help="persistent tile cache (default .tilecache)")
    p.add_argument("--max-tiles", type=int, metavar="N", help="refuse covers larger than N tiles")
    p.add_argument("--max-retries", type=int, metavar="N", help="retries per tile (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_harvest)

    p = sub.add_parser("stage", help="run the DVC stage fetch@KEY (reads params.yaml)",
                       description="Harvest params.yaml's fetch.KEY into data/tiles/KEY.mbtiles. Sources of "
                                   "kind 'sample' are served by the project's loopback WMTS server and "
                                   "harvested over HTTP like any WMTS.")
    p.add_argument("key", help="a key of the fetch section of params.yaml")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_stage)
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "harvest" and args.wmts and not args.layer:
        raise LuminescenceError(f"harvest --wmts needs --layer; list the layers with "
                                f"`python -m pipeline.stages.fetch list-layers {args.wmts}`")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
