"""Areas of interest (AOIs): polygons read from a shapefile (or any vector file) in any CRS.

`read_aoi` returns one `Aoi` in EPSG:3857, the CRS of the tile grid:

1. read the file with geopandas (pyogrio engine); every way it can be unusable is an
   `AoiError` with one line saying what is wrong and how to fix it;
2. pick one feature (`name_field` + `feature`) or union all of them;
3. repair invalid polygons with shapely's make_valid (logged), refuse what cannot be repaired;
4. densify edges in the source CRS to at most DENSIFY_STEP_M on the ground, so a straight
   edge of, say, TWD97 stays on its true path once reprojected (web mercator bends it);
5. buffer by `buffer_m` metres in a local azimuthal equidistant projection centred on the
   AOI (true distances near the AOI; EPSG:3857 would be off by 1/cos(latitude));
6. reproject to EPSG:3857 and check every coordinate is finite.

Given a zoom and a tile limit, an AOI whose tile count is sure to exceed the limit is refused
between steps 3 and 4, from its corners alone (`tiles.check_cover_estimate`).

CLI (pipeline/stages/aoi.py): `luminescence aoi info FILE [--zoom Z ...] [--buffer-m M]`.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import geopandas
import numpy as np
import pyogrio
import shapely
from pyproj import CRS, Geod, Transformer
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from pipeline.core.config import AoiConfig
from pipeline.core.errors import LuminescenceError
from pipeline.geo.tiles import check_cover_estimate, tile_cover_count

log = logging.getLogger(__name__)

WEB_MERCATOR = CRS.from_epsg(3857)
WGS84 = CRS.from_epsg(4326)
# Longest edge left after densifying, on the ground. Between two conformal projections a
# straight 25 m edge bends by well under a millimetre, far below a tile pixel at z20.
DENSIFY_STEP_M = 25.0
_METRES_PER_DEGREE = 111_320.0  # at the equator; turns DENSIFY_STEP_M into degrees
_VECTOR_SUFFIXES = (".shp", ".gpkg", ".geojson", ".json", ".fgb", ".kml", ".gml", ".sqlite")
_MAX_LISTED = 12  # values listed in an error message before "..."


class AoiError(LuminescenceError):
    """An AOI file or its settings cannot be used."""


@dataclass(frozen=True)
class Aoi:
    """One area of interest in EPSG:3857 metres, with where it came from."""

    name: str
    geometry_3857: Polygon | MultiPolygon
    source_crs: str  # e.g. "EPSG:3826"
    path: str

    @cached_property
    def geometry_wgs84(self) -> Polygon | MultiPolygon:
        """The AOI in longitude/latitude degrees (x = lon), EPSG:4326."""
        return _reproject(self.geometry_3857, WEB_MERCATOR, WGS84)

    @property
    def bounds_wgs84(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees."""
        w, s, e, n = self.geometry_wgs84.bounds
        return (w, s, e, n)

    @cached_property
    def area_km2(self) -> float:
        """True (geodesic, WGS84 ellipsoid) area in km², holes excluded."""
        geod = Geod(ellps="WGS84")
        total = 0.0
        for part in _polygons(self.geometry_wgs84):
            area, _ = geod.geometry_area_perimeter(orient(part, sign=1.0))
            total += area
        return total / 1e6


# --------------------------------------------------------------------------- reading
def read_aoi(path: str | Path, *, buffer_m: float = 0.0, name_field: str | None = None,
             feature: str | None = None, name: str | None = None, zoom: int | None = None,
             max_tiles: int | None = None) -> Aoi:
    """Read an AOI from a polygon file in any CRS; see the module docstring for the steps.

    Default: all features are unioned into one AOI. With `name_field` and `feature`, the
    single feature whose `name_field` value (compared as text) equals `feature` is used.
    With `zoom` and `max_tiles`, an AOI whose tile count at `zoom` is sure to exceed
    `max_tiles` is refused (TooManyTilesError) from its corners alone, before densifying its
    outline: a whole-world polygon at zoom 19 would take minutes and gigabytes to densify.
    """
    path = Path(path)
    _check_file(path)
    gdf = _read_frame(path)
    crs = gdf.crs
    if crs is None:
        raise AoiError(f"{path}: has no coordinate system; save it again with its CRS "
                       "(e.g. QGIS: Save Features As..., choosing the CRS)")
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    if len(gdf) == 0:
        raise AoiError(f"{path}: has no features with a geometry; draw at least one polygon "
                       "in it (e.g. QGIS: Toggle Editing, Add Polygon Feature) and save it")
    gdf = _select(gdf, path, name_field, feature)
    _check_polygonal(gdf, path)
    geometry = _union_valid(list(gdf.geometry), path)

    # check the corners first: densifying coordinates that are nonsense in this CRS
    # (metres labelled as degrees) could make millions of vertices
    corners_3857 = _reproject(geometry, crs, WEB_MERCATOR)
    _check_finite(corners_3857, path, crs)
    if zoom is not None and max_tiles is not None and buffer_m >= 0:
        # so could an AOI far too large for the tile limit (a negative buffer may shrink the AOI
        # below the estimate; the exact count after the buffer decides then)
        check_cover_estimate(corners_3857, zoom, max_tiles)
    geometry = shapely.segmentize(geometry, _densify_step(crs))
    if buffer_m:
        geometry, crs = _buffer(geometry, crs, buffer_m, path)
    geometry_3857 = _reproject(geometry, crs, WEB_MERCATOR)
    _check_finite(geometry_3857, path, gdf.crs)
    if not geometry_3857.is_valid:  # reprojection can fold a sliver; repair it the same way
        geometry_3857 = _repair(geometry_3857, path, "after reprojection")
    return Aoi(name=name or feature or path.stem, geometry_3857=geometry_3857,
               source_crs=_crs_label(gdf.crs), path=str(path))


def load_aoi(cfg: AoiConfig, name: str, *, zoom: int | None = None, max_tiles: int | None = None) -> Aoi:
    """The AOI `aois.<name>` of params.yaml (`zoom`, `max_tiles`: see read_aoi)."""
    try:
        return read_aoi(cfg.path, buffer_m=cfg.buffer_m, name_field=cfg.name_field,
                        feature=cfg.feature, name=name, zoom=zoom, max_tiles=max_tiles)
    except AoiError as exc:
        raise AoiError(f"params.yaml `aois.{name}`: {exc}") from None


def describe_aoi(aoi: Aoi, zooms: Sequence[int]) -> list[str]:
    """Lines describing an AOI already read: its file, CRS, features, parts, area, bounds and
    the number of web-mercator tiles covering it at each of `zooms`."""
    frame = _read_frame(Path(aoi.path))
    crs_name = frame.crs.name if frame.crs is not None else "unknown"
    w, s, e, n = aoi.bounds_wgs84
    fields = ", ".join(str(c) for c in frame.columns if c != frame.geometry.name) or "none"
    types = ", ".join(f"{count} {kind}" for kind, count in
                      sorted(frame.geometry.geom_type.value_counts().items()))
    parts = _polygons(aoi.geometry_3857)
    lines = [
        f"file      {aoi.path}",
        f"crs       {aoi.source_crs} ({crs_name})",
        f"features  {len(frame)}: {types} (fields: {fields})",
        f"aoi       {aoi.name}: {aoi.geometry_3857.geom_type}, {len(parts)} part(s), "
        f"{sum(len(p.interiors) for p in parts)} hole(s)",
        f"area      {aoi.area_km2:.3f} km2 (geodesic)",
        f"bounds    W {w:.6f}  S {s:.6f}  E {e:.6f}  N {n:.6f} (WGS84 degrees)",
    ]
    lines += [f"tiles z{z:<3d} {tile_cover_count(aoi.geometry_3857, z)}" for z in zooms]
    return lines
def source_files(path: str | Path) -> list[Path]:
    """Every file an AOI is read from: a shapefile's parts (same name, any extension) or a
    single-file format with the journal files SQLite-based ones (GeoPackage) keep beside it."""
    path = Path(path)
    if path.suffix.lower() == ".shp" and path.parent.is_dir():
        return [p for p in path.parent.iterdir() if p.stem == path.stem] or [path]
    return [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))]


def _check_finite(geometry_3857: BaseGeometry, path: Path, crs: CRS) -> None:
    if not np.isfinite(shapely.get_coordinates(geometry_3857)).all():
        raise AoiError(f"{path}: its coordinates do not fit its CRS {_crs_label(crs)} "
                       "(reprojecting to EPSG:3857 gives non-finite values); check that the .prj "
                       "matches the coordinates, e.g. metres labelled as degrees")


def _check_file(path: Path) -> None:
    if path.is_file():
        if path.suffix.lower() == ".shp":
            _check_shapefile_parts(path)
        return
    folder = path.parent
    if not folder.is_dir():
        raise AoiError(f"{path}: no such file (the folder {folder} does not exist); "
                       "check the path, relative to the repository root")
    candidates = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _VECTOR_SUFFIXES)
    close = difflib.get_close_matches(path.name, candidates, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(str(folder / c) for c in close)}? " if close else ""
    listed = _listing(candidates) or "none"
    raise AoiError(f"{path}: no such file; {hint}(AOI files in {folder}: {listed})")


def _check_shapefile_parts(path: Path) -> None:
    if _sidecar(path, ".shx") is None:
        raise AoiError(f"{path}: has no .shx index beside it; copy every part of the shapefile "
                       "(.shp .shx .dbf .prj) into the same folder")
    if _sidecar(path, ".prj") is None:
        raise AoiError(f"{path}: has no .prj, so its coordinate system is unknown; export it again "
                       "with its CRS (e.g. QGIS: Save Features As...)")


def _sidecar(path: Path, suffix: str) -> Path | None:
    for candidate in (path.with_suffix(suffix), path.with_suffix(suffix.upper())):
        if candidate.is_file():
            return candidate
    return None


def _read_frame(path: Path) -> geopandas.GeoDataFrame:
    try:
        return geopandas.read_file(path, engine="pyogrio")
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError,
            pyogrio.errors.GeometryError, pyogrio.errors.FieldError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AoiError(f"{path}: cannot be read as a vector file ({reason}); "
                       "save it again as a shapefile or GeoPackage") from None


def _select(gdf: geopandas.GeoDataFrame, path: Path, name_field: str | None,
            feature: str | None) -> geopandas.GeoDataFrame:
    fields = [c for c in gdf.columns if c != gdf.geometry.name]
    if name_field is None:
        if feature is not None:
            raise AoiError(f"{path}: `feature: {feature}` needs `name_field`, the field that holds "
                           f"feature names (fields: {_listing(fields) or 'none'})")
        return gdf
    if name_field not in fields:
        close = difflib.get_close_matches(name_field, fields, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise AoiError(f"{path}: has no field '{name_field}'; {hint}"
                       f"(fields: {_listing(fields) or 'none'})")
    values = gdf[name_field].astype(str)
    available = sorted(set(values))
    if feature is None:
        raise AoiError(f"{path}: `name_field: {name_field}` needs `feature`, one of its values "
                       f"({_listing(available)}); or remove name_field to union all features")
    chosen = gdf[values == str(feature)]
    if len(chosen) == 0:
        close = difflib.get_close_matches(str(feature), available, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise AoiError(f"{path}: no feature has {name_field} = '{feature}'; {hint}"
                       f"(values: {_listing(available)})")
    if len(chosen) > 1:
        raise AoiError(f"{path}: {len(chosen)} features have {name_field} = '{feature}'; pick a field "
                       f"with unique values (fields: {_listing(fields)}) or merge them first "
                       "(QGIS: Vector > Geoprocessing Tools > Dissolve)")
    return chosen


def _check_polygonal(gdf: geopandas.GeoDataFrame, path: Path) -> None:
    types = sorted(set(gdf.geometry.geom_type))
    wrong = [t for t in types if t not in ("Polygon", "MultiPolygon")]
    if wrong:
        raise AoiError(f"{path}: holds {', '.join(wrong)} geometry, but an AOI must be polygons "
                       "(Polygon or MultiPolygon); draw a polygon layer, or buffer the "
                       f"{'lines' if any('Line' in t for t in wrong) else 'shapes'} in a GIS "
                       "(QGIS: Vector > Geoprocessing Tools > Buffer) and save that")


def _union_valid(geometries: list[BaseGeometry], path: Path) -> BaseGeometry:
    repaired = []
    for index, geometry in enumerate(geometries):
        if not geometry.is_valid:
            geometry = _repair(geometry, path, f"feature #{index + 1}")
        repaired.append(geometry)
    union = shapely.union_all(repaired)
    if union.is_empty or union.area <= 0:
        raise AoiError(f"{path}: its polygons enclose no area; redraw the AOI as a polygon "
                       "with at least three distinct corners")
    return union


def _repair(geometry: BaseGeometry, path: Path, where: str) -> Polygon | MultiPolygon:
    reason = shapely.is_valid_reason(geometry)
    fixed = shapely.make_valid(geometry)
    polygons = [p for p in _polygons(fixed) if p.area > 0]
    if not polygons:
        raise AoiError(f"{path}: {where} has invalid geometry ({reason}) that cannot be repaired "
                       "(make_valid leaves no area); redraw it (QGIS: Vector > Geometry Tools > "
                       "Check Validity shows where)")
    result = shapely.union_all(polygons)
    log.warning("%s: repaired invalid geometry of %s (%s) with make_valid", path, where, reason)
    return result


def _polygons(geometry: BaseGeometry) -> list[Polygon]:
    """The polygons inside any geometry (collections are searched; lines and points dropped)."""
    found: list[Polygon] = []
    for part in shapely.get_parts(geometry):
        if isinstance(part, Polygon):
            found.append(part)
        elif part.geom_type in ("MultiPolygon", "GeometryCollection"):
            found += _polygons(part)
    return found


def _densify_step(crs: CRS) -> float:
    """DENSIFY_STEP_M expressed in the units of the CRS's x axis."""
    if crs.is_geographic:
        return DENSIFY_STEP_M / _METRES_PER_DEGREE
    axes = crs.axis_info
    metres_per_unit = axes[0].unit_conversion_factor if axes else 1.0
    return DENSIFY_STEP_M / metres_per_unit


def _local_metric_crs(geometry: BaseGeometry, crs: CRS) -> CRS:
    """Azimuthal equidistant projection centred on the AOI: distances true near the AOI."""
    lon_lat = _reproject(geometry.envelope.centroid, crs, WGS84)
    return CRS.from_dict({"proj": "aeqd", "lat_0": lon_lat.y, "lon_0": lon_lat.x,
                          "datum": "WGS84", "units": "m"})


def _buffer(geometry: BaseGeometry, crs: CRS, buffer_m: float,
            path: Path) -> tuple[BaseGeometry, CRS]:
    local = _local_metric_crs(geometry, crs)
    buffered = _reproject(geometry, crs, local).buffer(buffer_m, quad_segs=16)
    polygons = [p for p in _polygons(buffered) if p.area > 0]
    if not polygons:
        raise AoiError(f"{path}: a buffer of {buffer_m:g} m leaves nothing of the AOI (it is "
                       "narrower than twice that everywhere); use a smaller negative buffer_m")
    buffered = shapely.segmentize(shapely.union_all(polygons), DENSIFY_STEP_M)
    return buffered, local


def _reproject(geometry: BaseGeometry, source: CRS, target: CRS) -> BaseGeometry:
    transformer = Transformer.from_crs(source, target, always_xy=True)
    return shapely.transform(geometry, lambda xy: np.column_stack(
        transformer.transform(xy[:, 0], xy[:, 1], errcheck=False)))


def _crs_label(crs: CRS) -> str:
    authority = crs.to_authority(min_confidence=70)
    return f"{authority[0]}:{authority[1]}" if authority else crs.name


def _listing(values: Sequence[str]) -> str:
    shown = ", ".join(values[:_MAX_LISTED])
    return shown + (f", ... ({len(values)} in all)" if len(values) > _MAX_LISTED else "")
