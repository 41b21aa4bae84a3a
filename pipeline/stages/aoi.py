"""Command line of pipeline.geo.aoi: see its docstring."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.errors import cli_entry
from pipeline.geo.aoi import Aoi, AoiError, _polygons, _read_frame, read_aoi
from pipeline.geo.tiles import tile_cover_count


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luminescence aoi", description="Inspect areas of interest (AOI files).")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser(
        "info", help="CRS, features, area, WGS84 bounds and tile counts of an AOI file",
        description="Print the CRS, features, true area, WGS84 bounds and the number of "
                    "web-mercator tiles covering the AOI at each zoom.")
    info.add_argument("file", help="a polygon shapefile (.shp with .shx .dbf .prj) or other vector file")
    info.add_argument("--zoom", type=int, nargs="+", default=[16, 17, 18], metavar="Z",
                      help="zoom levels to count tiles at (default: 16 17 18)")
    info.add_argument("--buffer-m", type=float, default=0.0, metavar="M",
                      help="grow (or, negative, shrink) the AOI by M metres first (default: 0)")
    info.add_argument("--name-field", default=None, help="field holding feature names")
    info.add_argument("--feature", default=None, help="use only the feature with this name")
    return parser


def describe(aoi: Aoi, zooms: Sequence[int]) -> list[str]:
    """The lines `info` prints for an AOI already read."""
    frame = _read_frame(Path(aoi.path))
    crs_name = frame.crs.name if frame.crs is not None else "unknown"
    w, s, e, n = aoi.bounds_wgs84
    fields = ", ".join(str(c) for c in frame.columns if c != frame.geometry.name) or "none"
    types = ", ".join(f"{count} {kind}" for kind, count in
                      sorted(frame.geometry.geom_type.value_counts().items()))
    lines = [
        f"file      {aoi.path}",
        f"crs       {aoi.source_crs} ({crs_name})",
        f"features  {len(frame)}: {types} (fields: {fields})",
        f"aoi       {aoi.name}: {aoi.geometry_3857.geom_type}, "
        f"{len(_polygons(aoi.geometry_3857))} part(s), "
        f"{sum(len(p.interiors) for p in _polygons(aoi.geometry_3857))} hole(s)",
        f"area      {aoi.area_km2:.3f} km2 (geodesic)",
        f"bounds    W {w:.6f}  S {s:.6f}  E {e:.6f}  N {n:.6f} (WGS84 degrees)",
    ]
    lines += [f"tiles z{z:<3d} {tile_cover_count(aoi.geometry_3857, z)}" for z in zooms]
    return lines


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bad = [z for z in args.zoom if not 0 <= z <= 30]
    if bad:
        raise AoiError(f"--zoom {bad[0]} is out of range; web-mercator zooms go from 0 to 30")
    aoi = read_aoi(args.file, buffer_m=args.buffer_m, name_field=args.name_field, feature=args.feature)
    print("\n".join(describe(aoi, args.zoom)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
