"""`python -m pipeline.stages.aoi info FILE`: describe an area of interest (see pipeline.geo.aoi)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pipeline.core.errors import cli_entry
from pipeline.geo.aoi import AoiError, describe_aoi, read_aoi


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


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bad = [z for z in args.zoom if not 0 <= z <= 30]
    if bad:
        raise AoiError(f"--zoom {bad[0]} is out of range; web-mercator zooms go from 0 to 30")
    aoi = read_aoi(args.file, buffer_m=args.buffer_m, name_field=args.name_field, feature=args.feature)
    print("\n".join(describe_aoi(aoi, args.zoom)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
