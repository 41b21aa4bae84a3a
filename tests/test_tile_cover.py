"""tile_cover is exactly the set of tiles whose footprint meets the AOI with area > 0.

Checked against a brute force over every tile of the AOI's bounding-box range, each
tested with shapely's intersection area (the same rule, computed a different way).
"""

from __future__ import annotations

from pathlib import Path

import geopandas
import mercantile
import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon, box

from pipeline.core.errors import LuminescenceError
from pipeline.geo.aoi import read_aoi
from pipeline.geo.tiles import TileId, TooManyTilesError, tile_bounds_3857, tile_cover, tile_cover_count

SHIPPED = ["erie_village", "columbia_fields", "sinica_nangang", "taipei_basin"]


def bbox_tiles(geometry: shapely.Geometry, zoom: int) -> list[TileId]:
    """Every tile of the bounding box's tile range, grown by one tile on each side."""
    west, south = mercantile.lnglat(*geometry.bounds[:2])
    east, north = mercantile.lnglat(*geometry.bounds[2:])
    tiles = list(mercantile.tiles(west, south, east, north, zoom))
    xs = [t.x for t in tiles]
    ys = [t.y for t in tiles]
    last = (1 << zoom) - 1
    return [TileId(zoom, x, y)
            for x in range(max(min(xs) - 1, 0), min(max(xs) + 1, last) + 1)
            for y in range(max(min(ys) - 1, 0), min(max(ys) + 1, last) + 1)]


def brute_force_cover(geometry: shapely.Geometry, zoom: int) -> list[TileId]:
    candidates = bbox_tiles(geometry, zoom)
    bounds = np.array([tile_bounds_3857(t) for t in candidates])
    boxes = shapely.box(bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3])
    areas = shapely.area(shapely.intersection(geometry, boxes))
    return sorted(t for t, area in zip(candidates, areas, strict=True) if area > 0)


def write_aoi(folder: Path, geometry: shapely.Geometry, crs: str) -> Path:
    path = folder / "aoi.shp"
    geopandas.GeoDataFrame({"name": ["x"]}, geometry=[geometry], crs=crs).to_file(path, engine="pyogrio")
    return path


@pytest.fixture(scope="module")
def shipped() -> dict[str, shapely.Geometry]:
    return {name: read_aoi(f"aoi/{name}.shp").geometry_3857 for name in SHIPPED}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_aois_match_brute_force(shipped: dict[str, shapely.Geometry], name: str) -> None:
    geometry = shipped[name]
    for zoom in range(10, 19):
        cover = tile_cover(geometry, zoom)
        assert cover == brute_force_cover(geometry, zoom), f"{name} z{zoom}"
        assert tile_cover_count(geometry, zoom) == len(cover)


def test_wgs84_l_shape_with_hole_differs_from_bbox(tmp_path: Path) -> None:
    # An L in EPSG:4326 near Taipei whose corner block has a hole of ~600 m.
    outer = [(121.50, 25.00), (121.56, 25.00), (121.56, 25.02), (121.52, 25.02),
             (121.52, 25.06), (121.50, 25.06)]
    hole = [(121.505, 25.005), (121.511, 25.005), (121.511, 25.011), (121.505, 25.011)]
    geometry = read_aoi(write_aoi(tmp_path, Polygon(outer, [hole]), "EPSG:4326")).geometry_3857
    for zoom in range(10, 17):
        cover = tile_cover(geometry, zoom)
        assert cover == brute_force_cover(geometry, zoom)
        assert tile_cover_count(geometry, zoom) == len(cover)
    # the L leaves out a big part of its bounding box
    in_bbox = list(mercantile.tiles(121.50, 25.00, 121.56, 25.06, 16))
    assert len(cover) < 0.7 * len(in_bbox)
    empty_corner = mercantile.tile(121.55, 25.05, 16)
    assert empty_corner in in_bbox and TileId(16, empty_corner.x, empty_corner.y) not in cover


def test_state_plane_diagonal_multipolygon(tmp_path: Path) -> None:
    # EPSG:2262 (NY West, US survey feet): a diagonal strip and a separate square.
    strip = Polygon([(1053000, 944000), (1053400, 944000), (1058000, 948000), (1057600, 948000)])
    square = box(1050000, 946000, 1051000, 947000)
    geometry = read_aoi(write_aoi(tmp_path, MultiPolygon([strip, square]), "EPSG:2262")).geometry_3857
    for zoom in range(10, 18):
        cover = tile_cover(geometry, zoom)
        assert cover == brute_force_cover(geometry, zoom)
        assert tile_cover_count(geometry, zoom) == len(cover)
    assert len(tile_cover(geometry, 17)) < 0.3 * len(bbox_tiles(geometry, 17))


def test_tiles_inside_a_hole_are_excluded(shipped: dict[str, shapely.Geometry]) -> None:
    geometry = shipped["columbia_fields"]
    hole = Polygon(geometry.interiors[0])
    zoom = 18
    in_hole = [t for t in bbox_tiles(geometry, zoom) if hole.contains(box(*tile_bounds_3857(t)))]
    assert len(in_hole) >= 4  # the hole is larger than several z18 tiles
    cover = set(tile_cover(geometry, zoom))
    assert not cover & set(in_hole)
    filled = set(tile_cover(Polygon(geometry.exterior), zoom))
    assert set(in_hole) <= filled


def test_tiles_touching_only_along_an_edge_or_corner_are_not_in_the_cover() -> None:
    # An L made of three z15 tiles, built from their exact footprints.
    tiles = [TileId(15, 27440, 14000), TileId(15, 27441, 14000), TileId(15, 27440, 14001)]
    geometry = shapely.union_all([box(*tile_bounds_3857(t)) for t in tiles])
    assert tile_cover(geometry, 15) == sorted(tiles)
    children = sorted(TileId(16, c.x, c.y) for t in tiles for c in mercantile.children(t.x, t.y, t.z))
    assert tile_cover(geometry, 16) == children
    assert tile_cover(geometry, 16) == brute_force_cover(geometry, 16)
    # a triangle in tile (27440, 14000) touching (27441, 14001) only at a corner and
    # (27441, 14000) and (27440, 14001) only along an edge
    left, _, _, top = tile_bounds_3857(TileId(15, 27441, 14001))
    triangle = Polygon([(left, top), (left - 100, top), (left, top + 100)])
    assert TileId(15, 27441, 14001) not in tile_cover(triangle, 15)
    assert tile_cover(triangle, 15) == brute_force_cover(triangle, 15) == [TileId(15, 27440, 14000)]


def test_count_of_millions_of_tiles_matches_geometry() -> None:
    # 2 x 3 tiles at z8, exactly; at z20 that is 6 * 4**12 tiles, counted without a list.
    tiles = [TileId(8, x, y) for x in (214, 215) for y in (109, 110, 111)]
    geometry = shapely.union_all([box(*tile_bounds_3857(t)) for t in tiles])
    assert tile_cover_count(geometry, 20) == 6 * 4**12
    assert tile_cover_count(geometry, 8) == 6
    cover = tile_cover(geometry, 13)
    assert len(cover) == 6 * 4**5 == len(set(cover))
    assert cover == sorted(cover)
    assert {mercantile.parent(t.x, t.y, t.z, zoom=8) for t in cover} == {
        mercantile.Tile(t.x, t.y, t.z) for t in tiles}


def test_count_of_a_large_round_aoi_is_bounded_by_areas(shipped: dict[str, shapely.Geometry]) -> None:
    # A 40 km disc: too big to brute-force at z18, but the cover must lie between the
    # disc and the disc grown by one tile diagonal.
    centre = shipped["taipei_basin"].centroid
    disc = centre.buffer(40_000, quad_segs=256)
    zoom = 18
    side = 2 * mercantile.CE / 2 / 2**zoom
    count = tile_cover_count(disc, zoom)
    assert disc.area <= count * side**2 <= disc.buffer(side * 2**0.5).area


def test_max_tiles_raises_with_exact_count(shipped: dict[str, shapely.Geometry]) -> None:
    geometry = shipped["taipei_basin"]
    count = tile_cover_count(geometry, 17)
    assert len(tile_cover(geometry, 17, max_tiles=count)) == count
    with pytest.raises(TooManyTilesError) as info:
        tile_cover(geometry, 17, max_tiles=count - 1)
    err = info.value
    assert isinstance(err, LuminescenceError)
    assert err.count == count
    message = str(err)
    assert "\n" not in message
    assert f"{count} tiles at zoom 17" in message and f"limit of {count - 1}" in message
    assert "harvest.max_tiles" in message


def test_neighbouring_and_nested_tiles_share_exact_edges() -> None:
    rng = np.random.default_rng(0)
    for zoom in (1, 9, 17, 22):
        for x, y in rng.integers(0, (1 << zoom) - 1, size=(200, 2)).tolist():
            left, bottom, right, top = tile_bounds_3857(TileId(zoom, x, y))
            assert right == tile_bounds_3857(TileId(zoom, x + 1, y))[0]
            assert bottom == tile_bounds_3857(TileId(zoom, x, y + 1))[3]
            child = tile_bounds_3857(TileId(zoom + 1, 2 * x + 1, 2 * y + 1))
            assert (child[2], child[1]) == (right, bottom)
            assert tile_bounds_3857(TileId(zoom + 1, 2 * x, 2 * y))[::3] == (left, top)
    assert tile_bounds_3857(TileId(0, 0, 0)) == (-mercantile.CE / 2, -mercantile.CE / 2,
                                                 mercantile.CE / 2, mercantile.CE / 2)


def test_empty_and_outside_the_grid() -> None:
    assert tile_cover(Polygon(), 12) == []
    assert tile_cover_count(box(0, 3.0e7, 10, 3.1e7), 5) == 0  # beyond 85.05 degrees north
    with pytest.raises(ValueError, match="Polygon or MultiPolygon"):
        tile_cover(shapely.LineString([(0, 0), (1, 1)]), 3)


_coordinate = st.tuples(st.floats(13_520_000, 13_540_000), st.floats(2_870_000, 2_890_000))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(points=st.lists(_coordinate, min_size=3, max_size=8), zoom=st.integers(10, 15))
def test_random_polygons_match_brute_force(points: list[tuple[float, float]], zoom: int) -> None:
    geometry = shapely.make_valid(Polygon(points))
    polygons = [p for p in shapely.get_parts(geometry) if p.geom_type == "Polygon" and p.area > 0]
    if not polygons:
        return
    geometry = shapely.union_all(polygons)
    assert tile_cover(geometry, zoom) == brute_force_cover(geometry, zoom)
