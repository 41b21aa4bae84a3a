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
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from pipeline.core.config import PARAMS_FILE, HarvestConfig, load_params, lookup, with_overrides
from pipeline.core.errors import LuminescenceError, cli_entry
from pipeline.core.paths import store_path
from pipeline.geo.harvest_plan import Target, harvest_aoi, wmts_target, xyz_target
from pipeline.geo.harvester import check_harvest_output
from pipeline.geo.layer_table import format_layer_table
from pipeline.geo.tiles import TooManyTilesError, check_zoom
from pipeline.geo.wmts_client import read_capabilities_for


# --------------------------------------------------------------------------- commands
def _harvest_config(path: Path = PARAMS_FILE) -> HarvestConfig:
    return load_params(path).harvest if path.exists() else HarvestConfig()


def cmd_list_layers(args: argparse.Namespace) -> int:
    cfg = _harvest_config()
    caps = read_capabilities_for(args.url, cfg)
    print(format_layer_table(caps))
    return 0


def cmd_harvest(args: argparse.Namespace) -> int:
    from pipeline.geo.aoi import read_aoi, source_files

    cfg = _harvest_config()
    check_zoom(args.zoom, "--zoom")
    overrides: dict[str, tuple[str, object]] = {}
    if args.concurrency is not None:
        overrides["concurrency"] = ("--concurrency", args.concurrency)
    if args.rps is not None:
        overrides["requests_per_second"] = ("--rps", None if args.rps <= 0 else args.rps)
    if args.cache_dir is not None:
        overrides["cache_dir"] = ("--cache-dir", args.cache_dir)
    if args.max_tiles is not None:
        overrides["max_tiles"] = ("--max-tiles", args.max_tiles)
    if args.max_retries is not None:
        overrides["max_retries"] = ("--max-retries", args.max_retries)
    if args.request_deadline_s is not None:
        overrides["request_deadline_s"] = ("--request-deadline-s", args.request_deadline_s)
    cfg = with_overrides(cfg, overrides)
    check_harvest_output(args.out, cfg, inputs={"--aoi": source_files(args.aoi)})
    try:
        aoi = read_aoi(args.aoi, buffer_m=args.buffer_m, zoom=args.zoom, max_tiles=cfg.max_tiles)
    except TooManyTilesError as exc:
        raise LuminescenceError(f"{exc} (or pass --max-tiles)") from None
    if args.wmts:
        target = wmts_target(args.wmts, args.layer, args.zoom, cfg, matrix_set=args.matrix_set,
                             fmt=args.format)
    else:
        target = xyz_target(args.xyz, args.layer, args.format)
    label = args.name or f"{aoi.name}-{target.source.layer_id or 'xyz'}"
    report = harvest_aoi(target, aoi, args.zoom, Path(args.out), cfg, label=label, progress=not args.quiet,
                         max_tiles_hint="(or pass --max-tiles)")
    print(report.summary(), flush=True)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from pipeline.geo.aoi import load_aoi, source_files
    from pipeline.server.bundled import sample_service_key, serve_sample

    params = load_params()
    fetch = lookup(params.fetch, args.key, "fetch key", f"fetch.{args.key}")
    source_cfg = params.sources[fetch.source]
    out = store_path(args.key)
    cfg = params.harvest
    aoi_cfg = params.aois[fetch.aoi]
    check_harvest_output(out, cfg, flag=f"the output of fetch@{args.key}",
                         inputs={f"aois.{fetch.aoi}": source_files(aoi_cfg.path)})
    aoi = load_aoi(aoi_cfg, fetch.aoi, zoom=fetch.zoom, max_tiles=cfg.max_tiles)
    with ExitStack() as stack:
        target: Target
        if source_cfg.kind == "sample":
            # Our own loopback server: the politeness cap protects remote servers, not this one.
            cfg = cfg.model_copy(update={"requests_per_second": None})
            server = stack.enter_context(serve_sample(params.sample))
            target = wmts_target(server.capabilities_url, fetch.layer, fetch.zoom, cfg,
                                 matrix_set=fetch.matrix_set, fmt=fetch.format,
                                 service_key=sample_service_key(params.sample),
                                 attribution=source_cfg.attribution)
        elif source_cfg.kind == "wmts":
            assert source_cfg.url is not None
            target = wmts_target(source_cfg.url, fetch.layer, fetch.zoom, cfg, matrix_set=fetch.matrix_set,
                                 fmt=fetch.format, attribution=source_cfg.attribution)
        else:
            assert source_cfg.url is not None
            target = xyz_target(source_cfg.url, fetch.layer, fetch.format, source_cfg.attribution)
        report = harvest_aoi(target, aoi, fetch.zoom, out, cfg, label=args.key,
                             progress=not args.quiet)
    print(report.summary(), flush=True)
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
    p.add_argument("--request-deadline-s", type=float, metavar="S",
                   help="most seconds one request may take in all, however slowly the server answers "
                        "(default 120)")
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
