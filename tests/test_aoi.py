"""AOIs: any CRS in, EPSG:3857 out, true distances for buffers, one-line errors."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType

import geopandas
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import CRS, Geod, Transformer
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box

from pipeline.core.config import AoiConfig
from pipeline.core.errors import LuminescenceError
from pipeline.geo.aoi import Aoi, AoiError, load_aoi, read_aoi
from pipeline.geo.tiles import tile_cover_count
from pipeline.stages.aoi import main

GEOD = Geod(ellps="WGS84")
FT_US = 1200 / 3937


def write(folder: Path, geometries: list, crs: str | None, name: str = "aoi", **fields: list) -> Path:
    path = folder / f"{name}.shp"
    frame = geopandas.GeoDataFrame(fields or {"name": [f"f{i}" for i in range(len(geometries))]},
                                   geometry=geopandas.GeoSeries(geometries), crs=crs)
    frame.to_file(path, engine="pyogrio")
    return path


def error_of(path: Path | str, **kwargs: object) -> str:
    with pytest.raises(AoiError) as info:
        read_aoi(path, **kwargs)
    assert isinstance(info.value, LuminescenceError)
    message = str(info.value)
    assert "\n" not in message
    return message


def make_aois_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_aois", Path("aoi/make_aois.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def geodesic_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    return GEOD.inv(a[0], a[1], b[0], b[1])[2]


# --------------------------------------------------------------------------- shipped AOIs
SHIPPED = {  # name: (stored CRS, geometry type, W S E N that must contain the AOI)
    "erie_village": ("EPSG:2262", "Polygon", (-78.93728, 42.59040, -78.91493, 42.60144)),
    "columbia_fields": ("EPSG:4326", "Polygon", (-73.54557, 42.37562, -73.50082, 42.39795)),
    "columbia_heldout": ("EPSG:2260", "Polygon", (-73.54557, 42.37562, -73.50082, 42.39795)),
    "sinica_nangang": ("EPSG:3826", "Polygon", (121.607, 25.038, 121.620, 25.048)),
    "taipei_basin": ("EPSG:3826", "MultiPolygon", (121.34, 24.94, 121.72, 25.23)),
}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_aoi_reads_in_its_crs_and_lies_in_its_layers(name: str) -> None:
    crs, kind, (west, south, east, north) = SHIPPED[name]
    aoi = read_aoi(f"aoi/{name}.shp")
    assert aoi.name == name and aoi.source_crs == crs and aoi.path == f"aoi/{name}.shp"
    assert aoi.geometry_3857.geom_type == kind and aoi.geometry_3857.is_valid
    w, s, e, n = aoi.bounds_wgs84
    assert west < w < e < east and south < s < n < north
    if name == "erie_village":  # inset about 40 m from the erie_2021 footprint on every side
        for inset in (geodesic_m((west, s), (west, south)), geodesic_m((w, s), (west, s)),
                      geodesic_m((e, n), (east, n)), geodesic_m((e, n), (e, north))):
            assert 30 < inset < 50
    if name == "columbia_fields":
        assert len(aoi.geometry_3857.interiors) == 1
        assert 0.2 < aoi.area_km2 / 8.9 < 0.3  # about a quarter of columbia_2010
    if name == "columbia_heldout":  # the held-out area: >= 150 tiles at the training zoom (19)
        from pipeline.geo.tiles import tile_cover

        assert len(tile_cover(aoi.geometry_3857, 19)) >= 150


def test_shipped_files_are_what_make_aois_writes(tmp_path: Path) -> None:
    built = make_aois_module().build_aois()
    assert set(built) == set(SHIPPED)
    for name, frame in built.items():
        stored = geopandas.read_file(f"aoi/{name}.shp", engine="pyogrio")
        assert CRS.from_user_input(stored.crs).equals(frame.crs)
        assert stored.geometry[0].normalize().equals_exact(frame.geometry[0].normalize(), 1e-6)
        assert list(stored["name"]) == [name]
        assert Path(f"aoi/{name}.cpg").is_file()


@pytest.mark.parametrize(("name", "layers"), [("erie_village", ["erie_2011", "erie_2021"]),
                                              ("columbia_fields", ["columbia_2010"]),
                                              ("columbia_heldout", ["columbia_2010"])])
def test_sample_aois_lie_on_real_pixels(name: str, layers: list[str], sample_dir: Path) -> None:
    module = make_aois_module()
    frame = geopandas.read_file(f"aoi/{name}.shp", engine="pyogrio")
    for layer in layers:
        inside, nodata = module.nodata_cells_inside(frame, sample_dir / layer, decimation=32)
        assert inside > 1000 and nodata == 0


def test_known_twd97_corner_maps_to_its_lon_lat_within_centimetres() -> None:
    aoi = read_aoi("aoi/sinica_nangang.shp")
    corner = (311300.0, 2770200.0)  # first corner of sinica_nangang in TWD97 / TM2 zone 121
    lon, lat = Transformer.from_crs(3826, 4326, always_xy=True).transform(*corner)
    assert 121.607 < lon < 121.620 and 25.038 < lat < 25.048
    vertices = shapely.get_coordinates(aoi.geometry_wgs84)
    nearest = min(geodesic_m((lon, lat), tuple(v)) for v in vertices)
    assert nearest < 0.01


def test_straight_twd97_edges_stay_on_their_true_path() -> None:
    # Reprojecting only the two ends of this 1.9 km edge would leave its middle ~3 cm off.
    aoi = read_aoi("aoi/taipei_basin.shp")
    to_3857 = Transformer.from_crs(3826, 3857, always_xy=True)
    middle = Point(to_3857.transform(301950.0, 2769800.0))
    scale = np.cos(np.radians(25.03))  # web-mercator metres to ground metres here
    assert aoi.geometry_3857.boundary.distance(middle) * scale < 0.002


def test_area_is_true_area_not_mercator_area() -> None:
    aoi = read_aoi("aoi/erie_village.shp")
    inset = round(40 / FT_US, 2)
    planar_m2 = (6000 - 2 * inset) * (4000 - 2 * inset) * FT_US**2  # in NY West, scale ~1
    assert aoi.area_km2 * 1e6 == pytest.approx(planar_m2, rel=2e-4)
    assert aoi.geometry_3857.area > 1.8 * planar_m2  # what mercator metres would have said


# --------------------------------------------------------------------------- selection
def test_features_are_unioned_by_default_or_picked_by_name(tmp_path: Path) -> None:
    a, b = box(311000, 2770000, 311500, 2770500), box(312000, 2770000, 312500, 2770500)
    path = write(tmp_path, [a, b], "EPSG:3826", NAME=["west", "east"], CODE=[1, 2])
    both = read_aoi(path)
    assert both.geometry_3857.geom_type == "MultiPolygon" and both.name == "aoi"
    east = read_aoi(path, name_field="NAME", feature="east")
    assert east.name == "east" and east.area_km2 == pytest.approx(0.25, rel=1e-3)
    assert read_aoi(path, name_field="CODE", feature="2", name="x").bounds_wgs84 == east.bounds_wgs84
    assert both.area_km2 == pytest.approx(2 * east.area_km2, rel=1e-5)  # TM scale varies


def test_load_aoi_uses_params_settings_and_names_the_key(tmp_path: Path) -> None:
    aoi = load_aoi(AoiConfig(path="aoi/sinica_nangang.shp", buffer_m=50), "campus")
    assert isinstance(aoi, Aoi) and aoi.name == "campus"
    assert aoi.area_km2 > read_aoi("aoi/sinica_nangang.shp").area_km2
    with pytest.raises(AoiError, match=r"^params.yaml `aois.campus`: aoi/sinica_nangan.shp: no such file"):
        load_aoi(AoiConfig(path="aoi/sinica_nangan.shp"), "campus")


# --------------------------------------------------------------------------- buffer
@pytest.mark.parametrize(("epsg", "centre", "unit_m"), [
    (3826, (306000.0, 2770000.0), 1.0),  # Taipei, metres
    (2262, (1056000.0, 946000.0), FT_US),  # Erie County NY, US survey feet
])
def test_buffer_is_in_metres_on_the_ground(tmp_path: Path, epsg: int, centre: tuple[float, float],
                                           unit_m: float) -> None:
    half = 100 / unit_m  # a 200 m square in the file's own units
    square = box(centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    path = write(tmp_path, [square], f"EPSG:{epsg}")
    plain, grown = read_aoi(path), read_aoi(path, buffer_m=100)
    # geodesic distance from each vertex of the grown AOI to the square's outline
    to_wgs84 = Transformer.from_crs(epsg, 4326, always_xy=True)
    outline = shapely.get_coordinates(shapely.segmentize(square.exterior, 0.5 / unit_m))
    ring_lon, ring_lat = to_wgs84.transform(outline[:, 0], outline[:, 1])
    for lon, lat in shapely.get_coordinates(grown.geometry_wgs84)[::7]:
        _, _, distances = GEOD.inv(np.full(len(ring_lon), lon), np.full(len(ring_lon), lat),
                                   ring_lon, ring_lat)
        assert distances.min() == pytest.approx(100, abs=0.1)
    assert plain.area_km2 == pytest.approx(0.04, rel=1e-3)
    assert grown.area_km2 * 1e6 == pytest.approx(400**2 - (4 - np.pi) * 100**2, rel=2e-3)


def test_negative_buffer_shrinks_and_too_much_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, [box(306000, 2770000, 306200, 2770200)], "EPSG:3826")
    assert read_aoi(path, buffer_m=-50).area_km2 * 1e6 == pytest.approx(100**2, rel=1e-3)
    message = error_of(path, buffer_m=-120)
    assert "buffer of -120 m leaves nothing" in message


# --------------------------------------------------------------------------- bad input
def test_missing_file_suggests_close_names() -> None:
    message = error_of("aoi/sinica_nangan.shp")
    assert "no such file" in message and "aoi/sinica_nangang.shp" in message


def test_missing_prj(tmp_path: Path) -> None:
    path = write(tmp_path, [box(0, 0, 1, 1)], "EPSG:3826")
    path.with_suffix(".prj").unlink()
    message = error_of(path)
    assert "has no .prj, so its coordinate system is unknown" in message
    assert "Save Features As" in message


def test_empty_shapefile(tmp_path: Path) -> None:
    path = tmp_path / "empty.shp"
    frame = geopandas.GeoDataFrame({"name": pd.Series([], dtype=str)},
                                   geometry=geopandas.GeoSeries([], crs="EPSG:4326"))
    frame.to_file(path, engine="pyogrio", geometry_type="Polygon")
    assert "has no features" in error_of(path)


@pytest.mark.parametrize(("geometry", "kind"), [
    (LineString([(306000, 2770000), (306500, 2770400)]), "LineString"),
    (Point(306000, 2770000), "Point"),
])
def test_line_and_point_geometry(tmp_path: Path, geometry: shapely.Geometry, kind: str) -> None:
    message = error_of(write(tmp_path, [geometry], "EPSG:3826"))
    assert f"holds {kind} geometry" in message and "must be polygons" in message


def test_invalid_geometry_is_repaired_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bowtie = Polygon([(306000, 2770000), (306200, 2770200), (306200, 2770000), (306000, 2770200)])
    with caplog.at_level(logging.WARNING, logger="pipeline.geo.aoi"):
        aoi = read_aoi(write(tmp_path, [bowtie], "EPSG:3826"))
    assert aoi.geometry_3857.is_valid
    assert aoi.area_km2 * 1e6 == pytest.approx(2 * 100 * 200 / 2, rel=1e-3)  # two triangles
    assert any("repaired invalid geometry" in r.getMessage() for r in caplog.records)


def test_unrepairable_geometry(tmp_path: Path) -> None:
    flat = Polygon([(306000, 2770000), (306100, 2770100), (306200, 2770200), (306000, 2770000)])
    message = error_of(write(tmp_path, [flat], "EPSG:3826"))
    assert "cannot be repaired" in message


def test_unknown_name_field_and_feature(tmp_path: Path) -> None:
    path = write(tmp_path, [box(306000, 2770000, 306200, 2770200)] * 2, "EPSG:3826",
                 NAME=["campus", "campus"], ID=["a", "b"])
    message = error_of(path, name_field="NAM", feature="campus")
    assert "no field 'NAM'" in message and "'NAME'" in message and "ID" in message
    message = error_of(path, name_field="ID", feature="c")
    assert "no feature has ID = 'c'" in message and "a, b" in message
    assert "2 features have NAME = 'campus'" in error_of(path, name_field="NAME", feature="campus")
    assert "needs `name_field`" in error_of(path, feature="a")
    assert "needs `feature`" in error_of(path, name_field="ID")


def test_coordinates_that_do_not_fit_the_crs(tmp_path: Path) -> None:
    # TWD97 metres in a file that says EPSG:4326 (degrees)
    path = write(tmp_path, [box(306000, 2770000, 306200, 2770200)], "EPSG:4326")
    assert "non-finite" in error_of(path)


# --------------------------------------------------------------------------- CLI
def test_cli_info_prints_crs_area_and_tile_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "aoi/taipei_basin.shp", "--zoom", "16", "17"]) == 0
    out = capsys.readouterr().out
    aoi = read_aoi("aoi/taipei_basin.shp")
    assert "EPSG:3826" in out and "TWD97 / TM2 zone 121" in out and "MultiPolygon" in out
    assert f"{aoi.area_km2:.3f} km2" in out
    assert f"tiles z17  {tile_cover_count(aoi.geometry_3857, 17)}" in out


def test_cli_bad_file_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["info", "aoi/nowhere.shp"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: aoi/nowhere.shp: no such file") and err.count("\n") == 1


def test_multipolygon_input_kept_as_parts(tmp_path: Path) -> None:
    parts = MultiPolygon([box(306000, 2770000, 306200, 2770200), box(307000, 2770000, 307200, 2770200)])
    aoi = read_aoi(write(tmp_path, [parts], "EPSG:3826"))
    assert len(aoi.geometry_3857.geoms) == 2
