"""Regenerate the project's AOI shapefiles (see aoi/README.md for what each one is).

    .venv/bin/python aoi/make_aois.py            # write aoi/*.shp and check them against the sample data
    .venv/bin/python aoi/make_aois.py --out DIR  # write elsewhere (tests compare with the shipped files)

Corners are written in each file's own CRS, as a GIS user would have drawn them there.
The NYSDOP AOIs are then checked with rasterio against the real JPEG 2000 files in
data/sample: the polygon must lie inside every layer's pixels, with no blank (nodata) pixel.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas
import numpy as np
import rasterio
import rasterio.features
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.ops import unary_union

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "data" / "sample"
FT_US = 1200 / 3937  # metres per US survey foot

# erie_2021's four files span x 1053000-1059000, y 944000-948000 ft (NY West, ftUS);
# erie_2011 spans x 1050000-1062000 over the same y range. The AOI is that overlap,
# inset by 40 m on every side.
ERIE_INSET_FT = round(40 / FT_US, 2)
ERIE_VILLAGE_2262 = box(1053000 + ERIE_INSET_FT, 944000 + ERIE_INSET_FT,
                        1059000 - ERIE_INSET_FT, 948000 - ERIE_INSET_FT)

# Drawn in NY East (ftUS, EPSG:2260, the CRS of columbia_2010) over the fields in the west
# of the sample, then written in longitude/latitude. The hole leaves out a woodlot.
COLUMBIA_FIELDS_2260 = Polygon(
    [(751300, 1293200), (755600, 1293200), (755600, 1296600), (753600, 1299300), (751300, 1299300)],
    holes=[[(751800, 1294800), (753300, 1294800), (753300, 1296300), (752500, 1296600),
            (751800, 1296300)]])

# The held-out area (never used for training or model selection): a 2,050 ft square in NY East
# (ftUS, EPSG:2260) over the hamlet, its fields and the road in the middle of columbia_2010,
# stored in that CRS. At z19, the zoom of the training data, it covers 152 tiles (>= 150; each
# held-out tile is scored by every ablation, so no more than needed).
COLUMBIA_HELDOUT_2260 = box(752600, 1293800, 754650, 1295850)

# TWD97 / TM2 zone 121 (EPSG:3826) metres: the Academia Sinica campus, Nangang.
SINICA_NANGANG_3826 = Polygon([(311300, 2770200), (312100, 2770150), (312500, 2770500),
                               (312500, 2771150), (311750, 2771200), (311300, 2770850)])

# TWD97 / TM2 zone 121: two parts of the Taipei basin. West: Zhongzheng / Ximending;
# east: a tilted quadrilateral over Da'an and Xinyi.
TAIPEI_BASIN_3826 = MultiPolygon([
    Polygon([(301000, 2769800), (302900, 2769800), (302900, 2771000), (302300, 2771350),
             (301000, 2771350)]),
    Polygon([(304000, 2769200), (305600, 2768700), (306400, 2770200), (304800, 2770800)]),
])


def _to_wgs84(geometry: Polygon, epsg: int) -> Polygon:
    """Move only the corners (edges stay straight in degrees), rounded to 1e-7 degrees (~1 cm)."""
    transformer = Transformer.from_crs(epsg, 4326, always_xy=True)

    def ring(coords: object) -> list[tuple[float, float]]:
        xs, ys = np.asarray(coords).T
        lon, lat = transformer.transform(xs, ys)
        return list(zip(np.round(lon, 7).tolist(), np.round(lat, 7).tolist(), strict=True))

    return Polygon(ring(geometry.exterior.coords), holes=[ring(h.coords) for h in geometry.interiors])


def build_aois() -> dict[str, geopandas.GeoDataFrame]:
    """name -> one-feature GeoDataFrame in the CRS it is stored in."""
    def frame(geometry: object, epsg: int, note: str, name: str) -> geopandas.GeoDataFrame:
        return geopandas.GeoDataFrame({"name": [name], "note": [note]}, geometry=[geometry],
                                      crs=f"EPSG:{epsg}")

    return {
        "erie_village": frame(ERIE_VILLAGE_2262, 2262, "overlap of erie_2011 and erie_2021, inset 40 m",
                              "erie_village"),
        "columbia_fields": frame(_to_wgs84(COLUMBIA_FIELDS_2260, 2260), 4326,
                                 "fields inside columbia_2010; hole: woodlot", "columbia_fields"),
        "columbia_heldout": frame(COLUMBIA_HELDOUT_2260, 2260, "held-out area inside columbia_2010: "
                                  "hamlet, fields, road", "columbia_heldout"),
        "sinica_nangang": frame(SINICA_NANGANG_3826, 3826, "Academia Sinica campus, Nangang",
                                "sinica_nangang"),
        "taipei_basin": frame(TAIPEI_BASIN_3826, 3826, "Zhongzheng/Ximending + Da'an/Xinyi",
                              "taipei_basin"),
    }


def nodata_cells_inside(aoi: geopandas.GeoDataFrame, layer_dir: Path, decimation: int = 8) -> tuple[int, int]:
    """(cells inside the AOI, of which nodata) over a layer's files, read at 1/decimation.

    A cell is a decimation x decimation block of pixels, averaged (about 5 m at 2 ft
    pixels). Nodata = masked, or part of a patch of at least 2x2 cells that are 0 in all
    four bands (NYSDOP's fill value). Lone black cells are deep shadow: real data.
    Exits when part of the AOI lies outside every file of the layer.
    """
    files = sorted(layer_dir.glob("*.jp2"))
    with rasterio.open(files[0]) as first:
        crs = first.crs
    polygon = unary_union(list(aoi.to_crs(crs).geometry))
    footprints = []
    inside_total = nodata_total = 0
    for path in files:
        with rasterio.open(path) as src:
            footprints.append(box(*src.bounds))
            shape = (src.height // decimation, src.width // decimation)
            transform = src.transform @ Affine.scale(src.width / shape[1], src.height / shape[0])
            inside = rasterio.features.geometry_mask([polygon], shape, transform, invert=True)
            if not inside.any():
                continue
            bands = src.read(out_shape=(src.count, *shape), resampling=Resampling.average)
            masked = src.read_masks(1, out_shape=shape, resampling=Resampling.nearest) == 0
            fill = ndimage.binary_opening((bands == 0).all(axis=0), structure=np.ones((2, 2)))
            inside_total += int(inside.sum())
            nodata_total += int(((fill | masked) & inside).sum())
    outside = polygon.difference(unary_union(footprints)).area
    if outside > 0:
        raise SystemExit(f"{aoi.name[0]}: {outside:.0f} square units of the AOI lie outside {layer_dir}")
    return inside_total, nodata_total


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the AOI shapefiles (aoi/*.shp).")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write to (default: aoi/)")
    parser.add_argument("--no-verify", action="store_true", help="skip the check against data/sample")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    aois = build_aois()
    for name, frame in aois.items():
        target = args.out / f"{name}.shp"
        frame.to_file(target, engine="pyogrio", encoding="UTF-8")
        print(f"wrote {target} ({frame.crs.to_string()}, {frame.geometry[0].geom_type})")
    if args.no_verify:
        return
    checks = {"erie_village": ["erie_2011", "erie_2021"], "columbia_fields": ["columbia_2010"],
              "columbia_heldout": ["columbia_2010"]}
    for name, layers in checks.items():
        for layer in layers:
            inside, nodata = nodata_cells_inside(aois[name], SAMPLE / layer)
            print(f"{name} in {layer}: {inside} cells of 8x8 pixels inside the AOI, {nodata} nodata")
            if nodata:
                raise SystemExit(f"{name}: {nodata} nodata cells inside the AOI in {layer}")


if __name__ == "__main__":
    main()
