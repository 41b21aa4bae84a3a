"""The loopback WMTS server: OWSLib-parseable capabilities, georeferenced tiles, errors, faults."""

from __future__ import annotations

import dataclasses
import http.client
import io
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
import requests
from owslib.wmts import WebMapTileService
from PIL import Image
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject, transform_bounds

from pipeline.core.config import SampleConfig
from pipeline.geo.tiles import TileId, tile_bounds_3857
from pipeline.server.bundled import sample_layers
from pipeline.server.errors import ServerError
from pipeline.server.faults import FaultPlan
from pipeline.server.httpd import WmtsServer
from pipeline.server.layers import MAX_ZOOM
from pipeline.server.rendering import TRANSPARENT_PNG

OWS = "{http://www.opengis.net/ows/1.1}"
ERIE_2011 = sorted(Path("data/sample/erie_2011").glob("*.jp2"))
# A point inside erie_2011 (and erie_2021), away from the edges.
INSIDE = (-78.925, 42.596)


@pytest.fixture(scope="module")
def sample(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SampleConfig:
    # Derived files (film GeoTIFF, cached mosaics) persist in pytest's cache between runs; they
    # are keyed by parameters and source identity, so reuse is safe and keeps the suite fast.
    cache = getattr(request.config, "cache", None)
    derived = cache.mkdir("luminescence-derived") if cache else tmp_path_factory.mktemp("derived")
    return SampleConfig(derived_dir=str(derived))


@pytest.fixture(scope="module")
def server(sample: SampleConfig) -> Iterator[WmtsServer]:
    with WmtsServer(sample_layers(sample), cache_dir=Path(sample.derived_dir) / "cache") as srv:
        yield srv


@pytest.fixture(scope="module")
def web() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def wmts(server: WmtsServer, web: requests.Session) -> WebMapTileService:
    xml = web.get(server.capabilities_url, timeout=30).content
    return WebMapTileService(server.capabilities_url, xml=xml)


def rgba(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (256, 256)
        return np.asarray(img.convert("RGBA"))


def rest_url(wmts: WebMapTileService, layer: str, tile: TileId, fmt: str = "image/png") -> str:
    template = next(r["template"] for r in wmts[layer].resourceURLs if r["format"] == fmt)
    return template.format(TileMatrixSet="GoogleMapsCompatible", TileMatrix=tile.z, TileCol=tile.x,
                           TileRow=tile.y)


def inside_tile(z: int) -> TileId:
    t = mercantile.tile(*INSIDE, z)
    return TileId(z, t.x, t.y)


def exception_of(resp: requests.Response) -> tuple[str, str | None]:
    root = ET.fromstring(resp.content)
    assert root.tag == f"{OWS}ExceptionReport"
    exc = root.find(f"{OWS}Exception")
    assert exc is not None and exc.find(f"{OWS}ExceptionText") is not None
    return exc.get("exceptionCode", ""), exc.get("locator")


# --------------------------------------------------------------------------- capabilities
def test_owslib_parses_layers_formats_and_matrix_set(wmts: WebMapTileService) -> None:
    assert set(wmts.contents) == {"columbia_2010", "erie_2011", "erie_2021", "erie_2011_film"}
    assert wmts.identification.type == "OGC WMTS"
    assert wmts["erie_2011"].formats == ["image/png", "image/jpeg"]
    assert wmts["erie_2011_film"].formats == ["image/png"]
    assert list(wmts["erie_2011"].styles) == ["default"]
    assert not wmts.restonly  # KVP is declared, as is RESTful
    encodings = {str(m["constraints"]) for m in wmts.getOperationByName("GetTile").methods}
    assert any("KVP" in e for e in encodings) and any("RESTful" in e for e in encodings)

    tms = wmts.tilematrixsets["GoogleMapsCompatible"]
    assert tms.crs == "urn:ogc:def:crs:EPSG::3857"
    assert sorted(int(k) for k in tms.tilematrix) == list(range(22))
    z0, z18 = tms.tilematrix["0"], tms.tilematrix["18"]
    assert z0.scaledenominator == pytest.approx(559082264.0287178, rel=1e-12)
    assert z18.scaledenominator == pytest.approx(2132.729583849784, rel=1e-12)
    assert z0.topleftcorner == pytest.approx((-20037508.3427892, 20037508.3427892))
    assert (z18.tilewidth, z18.matrixwidth, z18.matrixheight) == (256, 1 << 18, 1 << 18)


def test_wgs84_bounds_are_the_reprojected_footprints(wmts: WebMapTileService, sample: SampleConfig) -> None:
    for layer in ("columbia_2010", "erie_2011", "erie_2021"):
        boxes = []
        for path in sorted(Path("data/sample", layer).glob("*.jp2")):
            with rasterio.open(path) as ds:
                boxes.append(transform_bounds(ds.crs, "EPSG:4326", *ds.bounds))
        expected = (min(b[0] for b in boxes), min(b[1] for b in boxes),
                    max(b[2] for b in boxes), max(b[3] for b in boxes))
        assert wmts[layer].boundingBoxWGS84 == pytest.approx(expected, abs=1e-6)
    # The film layer has the footprint of its source layer.
    assert wmts["erie_2011_film"].boundingBoxWGS84 == pytest.approx(wmts["erie_2011"].boundingBoxWGS84,
                                                                     abs=1e-6)
    # The README's published footprint of erie_2011.
    assert wmts["erie_2011"].boundingBoxWGS84 == pytest.approx((-78.94842, 42.59037, -78.90379, 42.60148),
                                                               abs=1e-5)


def test_matrix_limits_cover_exactly_the_touched_tiles(wmts: WebMapTileService) -> None:
    limits = wmts["erie_2021"].tilematrixsetlinks["GoogleMapsCompatible"].tilematrixlimits
    assert sorted(int(z) for z in limits) == list(range(MAX_ZOOM + 1))
    for z in (10, 14, 16, 17):
        tiles = list(mercantile.tiles(*wmts["erie_2021"].boundingBoxWGS84, z))
        lim = limits[str(z)]
        assert (lim.mintilecol, lim.maxtilecol) == (min(t.x for t in tiles), max(t.x for t in tiles))
        assert (lim.mintilerow, lim.maxtilerow) == (min(t.y for t in tiles), max(t.y for t in tiles))


def test_resource_url_puts_column_before_row(wmts: WebMapTileService, server: WmtsServer) -> None:
    for layer in wmts.contents.values():
        templates = [r["template"] for r in layer.resourceURLs if r["resourceType"] == "tile"]
        assert len(templates) == len(layer.formats)
        for template in templates:
            assert template.startswith(f"{server.base_url}/wmts/{layer.id}/{{TileMatrixSet}}/")
            assert template.index("{TileCol}") < template.index("{TileRow}")


def test_film_layer_is_labelled_synthetic(wmts: WebMapTileService) -> None:
    film = wmts["erie_2011_film"]
    assert "SYNTHETIC" in film.title and "not a real historic photograph" in film.title
    assert "synthetic" in film.keywords
    assert "SYNTHETIC" in film.abstract
    assert "synthetic" not in wmts["erie_2011"].keywords
    assert "NYSDOP" in wmts["erie_2011"].abstract


def test_kvp_capabilities_equal_rest(server: WmtsServer, web: requests.Session) -> None:
    kvp = web.get(f"{server.base_url}/wmts", params={"service": "WMTS", "request": "GetCapabilities"})
    assert kvp.status_code == 200 and kvp.headers["Content-Type"] == "application/xml"
    assert kvp.content == web.get(server.capabilities_url).content


# --------------------------------------------------------------------------- tiles
def test_kvp_and_rest_give_identical_bytes(wmts: WebMapTileService, web: requests.Session) -> None:
    tile = inside_tile(17)
    kvp = wmts.gettile(layer="erie_2011", tilematrixset="GoogleMapsCompatible", tilematrix=str(tile.z),
                       row=tile.y, column=tile.x, format="image/png").read()
    rest = web.get(rest_url(wmts, "erie_2011", tile))
    assert rest.status_code == 200 and rest.headers["Content-Type"] == "image/png"
    assert kvp == rest.content
    assert (rgba(kvp)[..., 3] == 255).all()
    jpeg = web.get(rest_url(wmts, "erie_2011", tile, "image/jpeg"))
    assert jpeg.headers["Content-Type"] == "image/jpeg" and jpeg.content[:3] == b"\xff\xd8\xff"


def _reference_tile(tile: TileId) -> np.ndarray:
    """Independent rendering: bilinear reprojection of the original JP2s to the tile's bounds."""
    out = np.full((3, 256, 256), np.nan, np.float32)
    dst = from_bounds(*tile_bounds_3857(tile), 256, 256)
    for path in ERIE_2011:
        with rasterio.open(path) as ds:
            part = np.full((3, 256, 256), np.nan, np.float32)
            reproject(rasterio.band(ds, [1, 2, 3]), part, dst_transform=dst, dst_crs="EPSG:3857",
                      resampling=Resampling.bilinear, dst_nodata=np.nan)
            out = np.where(np.isnan(out), part, out)
    assert not np.isnan(out).any()
    return out.transpose(1, 2, 0)


def test_tile_is_georeferenced_correctly(wmts: WebMapTileService, web: requests.Session) -> None:
    tile = inside_tile(18)
    got = rgba(web.get(rest_url(wmts, "erie_2011", tile)).content)[..., :3].astype(np.float32)
    ref = _reference_tile(tile)
    errors = {}
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            a = got[8 + dy: 248 + dy, 8 + dx: 248 + dx]
            errors[(dx, dy)] = float(np.abs(a - ref[8:248, 8:248]).mean())
    assert min(errors, key=errors.get) == (0, 0)
    assert errors[(0, 0)] < 2.0  # same pixels up to resampling round-off
    assert errors[(1, 0)] > 2 * errors[(0, 0)] and errors[(0, 1)] > 2 * errors[(0, 0)]


def test_tile_across_the_seam_of_two_source_files_is_complete(wmts: WebMapTileService,
                                                              web: requests.Session) -> None:
    # erie_2011 is two JPEG 2000 files that meet at x = 1056000 ft (NY West); the tile across the
    # join must have no transparent column.
    with rasterio.open(ERIE_2011[0]) as ds:
        lon, lat = rasterio.warp.transform(ds.crs, "EPSG:4326", [1056000.0], [946000.0])
    t = mercantile.tile(lon[0], lat[0], 18)
    img = rgba(web.get(rest_url(wmts, "erie_2011", TileId(18, t.x, t.y))).content)
    assert (img[..., 3] == 255).all()


def test_outside_coverage_is_a_tiny_transparent_png(wmts: WebMapTileService, web: requests.Session) -> None:
    far = web.get(rest_url(wmts, "erie_2011", TileId(18, 0, 0)))
    assert far.status_code == 200 and far.headers["Content-Type"] == "image/png"
    assert len(far.content) < 1000 and (rgba(far.content)[..., 3] == 0).all()
    # A tile on the layer's edge is partly transparent.
    limits = wmts["erie_2011"].tilematrixsetlinks["GoogleMapsCompatible"].tilematrixlimits["18"]
    corner = TileId(18, limits.mintilecol, limits.mintilerow)
    edge = rgba(web.get(rest_url(wmts, "erie_2011", corner)).content)
    alpha = edge[..., 3]
    assert (alpha == 0).any() and (alpha == 255).any() and set(np.unique(alpha)) <= {0, 255}
    assert (edge[alpha == 0][:, :3] == 0).all()


def test_film_tiles_are_gray(wmts: WebMapTileService, web: requests.Session) -> None:
    img = rgba(web.get(rest_url(wmts, "erie_2011_film", inside_tile(17))).content)
    assert (img[..., 3] == 255).all()
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert img[..., 0].std() > 10  # an image, not a flat fill


def test_legacy_xyz_endpoint(server: WmtsServer, wmts: WebMapTileService, web: requests.Session) -> None:
    outside = web.get(f"{server.base_url}/file-exists.php", params={"img": "erie_2011-png-18-5-7"})
    assert outside.status_code == 200 and outside.content == TRANSPARENT_PNG and len(outside.content) < 1000
    tile = inside_tile(17)
    inside = web.get(f"{server.base_url}/file-exists.php?img=erie_2011-png-{tile.z}-{tile.x}-{tile.y}")
    assert inside.content == web.get(rest_url(wmts, "erie_2011", tile)).content
    jpg = web.get(f"{server.base_url}/file-exists.php?img=erie_2011-jpg-{tile.z}-{tile.x}-{tile.y}")
    assert jpg.headers["Content-Type"] == "image/jpeg"
    # The extension must match a format of the layer; the film layer is png only.
    assert web.get(f"{server.base_url}/file-exists.php?img=erie_2011_film-jpg-17-1-1").status_code == 404
    assert web.get(f"{server.base_url}/file-exists.php?img=nope-png-17-1-1").status_code == 404


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("query", "code", "locator"), [
    ({"LAYER": "nope"}, "InvalidParameterValue", "LAYER"),
    ({"TILEROW": str(1 << 17)}, "TileOutOfRange", "TILEROW"),
    ({"TILECOL": "-1"}, "InvalidParameterValue", "TILECOL"),
    ({"TILEMATRIX": "21"}, "TileOutOfRange", "TILEMATRIX"),
    ({"TILEMATRIX": "abc"}, "InvalidParameterValue", "TILEMATRIX"),
    ({"FORMAT": "image/gif"}, "InvalidParameterValue", "FORMAT"),
    ({"STYLE": "fancy"}, "InvalidParameterValue", "STYLE"),
    ({"TILEMATRIXSET": "WGS84"}, "InvalidParameterValue", "TILEMATRIXSET"),
    ({"TILEROW": None}, "MissingParameterValue", "TILEROW"),
])
def test_bad_kvp_requests_get_exception_reports(server: WmtsServer, web: requests.Session,
                                                query: dict[str, str | None], code: str,
                                                locator: str) -> None:
    params = {"SERVICE": "WMTS", "REQUEST": "GetTile", "VERSION": "1.0.0", "LAYER": "erie_2011",
              "STYLE": "default", "TILEMATRIXSET": "GoogleMapsCompatible", "TILEMATRIX": "17",
              "TILEROW": "10", "TILECOL": "10", "FORMAT": "image/png"}
    params.update(query)
    resp = web.get(f"{server.base_url}/wmts", params={k: v for k, v in params.items() if v is not None})
    assert resp.status_code == 400
    assert resp.headers["Content-Type"] == "application/xml"
    assert exception_of(resp) == (code, locator)


def test_bad_rest_requests_get_exception_reports(server: WmtsServer, web: requests.Session) -> None:
    base = f"{server.base_url}/wmts"
    assert exception_of(web.get(f"{base}/nope/GoogleMapsCompatible/1/0/0.png")) == (
        "InvalidParameterValue", "layer")
    assert exception_of(web.get(f"{base}/erie_2011/GoogleMapsCompatible/2/4/0.png")) == (
        "TileOutOfRange", "TileCol")
    assert exception_of(web.get(f"{base}/erie_2011/GoogleMapsCompatible/2/0/4.png")) == (
        "TileOutOfRange", "TileRow")
    assert exception_of(web.get(f"{base}/erie_2011_film/GoogleMapsCompatible/2/0/0.jpg"))[0] == (
        "InvalidParameterValue")
    unsupported = web.get(base, params={"SERVICE": "WMTS", "REQUEST": "GetFeatureInfo"})
    assert unsupported.status_code == 501 and exception_of(unsupported)[0] == "OperationNotSupported"


@pytest.mark.parametrize("path", [
    "/wmts/../../etc/passwd",
    "/wmts/%2e%2e/%2e%2e/etc/passwd",
    "/%2E%2E/%2E%2E/etc/passwd",
    "/wmts/%252e%252e/erie_2011/GoogleMapsCompatible/1/0/0.png",
    "/wmts/erie_2011/GoogleMapsCompatible/1/..%5c..%5cetc/0.png",
    "/wmts/erie_2011%00/GoogleMapsCompatible/1/0/0.png",
    "//etc/passwd",
    "/etc/passwd",
    "/data/sample/erie_2011/w_10500944_24_19200_4bd_2011.jp2",
    "/file-exists.php?img=../../../etc/passwd-png-1-0-0",
    "/file-exists.php?img=/etc/passwd",
    "/wmts/..%2f..%2fetc%2fpasswd/GoogleMapsCompatible/1/0/0.png",
])
def test_path_traversal_is_rejected_without_opening_files(server: WmtsServer, path: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = rasterio.open

    def spy(fp, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", spy)
    host, port = server.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path)  # sent verbatim: no client-side normalisation of '..'
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status in (400, 404)
    assert b"root:" not in body and b"\xff\x4f\xff\x51" not in body  # no /etc/passwd, no JP2 codestream
    assert opened == []


def test_server_binds_to_loopback_only(sample: SampleConfig) -> None:
    with pytest.raises(ServerError, match="loopback"):
        WmtsServer([], host="0.0.0.0")
    layers = sample_layers(sample)
    with pytest.raises(ServerError, match="layer id"):
        WmtsServer([dataclasses.replace(layers[0], id="../x")])


# --------------------------------------------------------------------------- faults and counters
def test_fault_plan_is_a_pure_function() -> None:
    plan = FaultPlan(error_rate=0.3, throttle_rate=0.2, seed=5)
    draws = [plan.fault_for("a", 10, x, 3, 0) for x in range(400)]
    assert draws == [plan.fault_for("a", 10, x, 3, 0) for x in range(400)]
    assert draws != [FaultPlan(error_rate=0.3, throttle_rate=0.2, seed=6).fault_for("a", 10, x, 3, 0)
                     for x in range(400)]
    assert 0.4 < sum(d is not None for d in draws) / 400 < 0.6
    assert all(plan.fault_for("a", 10, x, 3, 2) is None for x in range(400))  # faults_per_tile = 2
    with pytest.raises(ServerError):
        FaultPlan(error_rate=0.7, throttle_rate=0.6)


def _fetch_until_ok(session: requests.Session, url: str, max_attempts: int) -> list[str]:
    outcomes = []
    for _ in range(max_attempts):
        try:
            resp = session.get(url, timeout=(5, 0.3))
        except requests.Timeout:
            outcomes.append("timeout")
            continue
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):  # truncated body
            outcomes.append("broken")
            continue
        ctype = resp.headers.get("Content-Type", "")
        if resp.status_code == 200 and ctype == "image/png":
            Image.open(io.BytesIO(resp.content)).verify()
            outcomes.append("ok")
            return outcomes
        outcomes.append(f"{resp.status_code}:{'xml' if 'xml' in ctype else ctype}")
        if resp.status_code in (429, 503):
            assert resp.headers["Retry-After"] == "1"
    return outcomes


EXPECTED_OUTCOME = {None: {"ok"}, "error": {"500:text/html"}, "throttle": {"429:text/plain"},
                    "unavailable": {"503:text/plain"}, "truncate": {"broken"}, "slow": {"timeout"},
                    "exception": {"200:xml", "400:xml"}}


def test_fault_injection_rates_recovery_and_counters(sample: SampleConfig) -> None:
    plan = FaultPlan(error_rate=0.15, throttle_rate=0.1, unavailable_rate=0.1, truncate_rate=0.1,
                     slow_rate=0.03, slow_s=1.0, exception_rate=0.1, faults_per_tile=2, seed=11)
    layers = [layer for layer in sample_layers(sample) if layer.id == "erie_2011"]
    # Tiles outside the layer's coverage render instantly; faults do not care about coverage.
    tiles = [TileId(12, x, y) for x in range(16) for y in range(10)]
    with WmtsServer(layers, faults=plan, cache_dir=Path(sample.derived_dir) / "cache") as srv, \
            requests.Session() as session:
        outcomes = {t: _fetch_until_ok(session, f"{srv.base_url}/wmts/erie_2011/GoogleMapsCompatible/"
                                       f"{t.z}/{t.x}/{t.y}.png", plan.faults_per_tile + 1) for t in tiles}
        counts = srv.tile_requests()
        total = srv.total_tile_requests
    assert all(o[-1] == "ok" for o in outcomes.values())  # every tile eventually succeeds
    assert all(len(o) <= plan.faults_per_tile + 1 for o in outcomes.values())
    # Every attempt went as the plan's pure function says.
    for t, observed in outcomes.items():
        for attempt, outcome in enumerate(observed):
            assert outcome in EXPECTED_OUTCOME[plan.fault_for("erie_2011", t.z, t.x, t.y, attempt)]
    assert counts == {("erie_2011", t.z, t.x, t.y): len(o) for t, o in outcomes.items()}
    assert total == sum(len(o) for o in outcomes.values())
    first = [o[0] for o in outcomes.values()]
    failed = sum(f != "ok" for f in first) / len(first)
    assert abs(failed - sum(plan.rates().values())) < 0.12
    kinds = {f for o in outcomes.values() for f in o}
    assert {"500:text/html", "429:text/plain", "503:text/plain", "broken", "timeout"} <= kinds
    assert {"200:xml", "400:xml"} <= kinds  # both flavours of exception bodies


def test_latency_is_added_to_every_tile(sample: SampleConfig) -> None:
    layers = [layer for layer in sample_layers(sample) if layer.id == "erie_2011"]
    plan = FaultPlan(latency_s=0.2)
    with WmtsServer(layers, faults=plan, cache_dir=Path(sample.derived_dir) / "cache") as srv, \
            requests.Session() as session:
        url = f"{srv.base_url}/wmts/erie_2011/GoogleMapsCompatible/3/0/0.png"
        session.get(url, timeout=10)
        assert session.get(url, timeout=10).elapsed.total_seconds() >= 0.2


def test_counters_are_thread_safe(server: WmtsServer) -> None:
    before = server.tile_requests()
    tiles = [TileId(9, x, 0) for x in range(4)]

    def worker() -> None:
        with requests.Session() as session:
            for t in tiles * 5:
                assert session.get(f"{server.base_url}/wmts/erie_2011/GoogleMapsCompatible/"
                                   f"{t.z}/{t.x}/{t.y}.png", timeout=10).status_code == 200

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    after = server.tile_requests()
    for t in tiles:
        assert after[("erie_2011", t.z, t.x, t.y)] - before[("erie_2011", t.z, t.x, t.y)] == 40


def test_render_cache_renders_each_tile_once(sample: SampleConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    layers = [layer for layer in sample_layers(sample) if layer.id == "erie_2011_film"]
    with WmtsServer(layers, cache_dir=Path(sample.derived_dir) / "cache", render_cache_tiles=2) as srv, \
            requests.Session() as session:
        calls: list[TileId] = []
        real = srv.renderer.render
        monkeypatch.setattr(srv.renderer, "render", lambda lid, t: calls.append(t) or real(lid, t))
        a, b, c = inside_tile(16), inside_tile(15), inside_tile(14)

        def get(t: TileId) -> bytes:
            return session.get(f"{srv.base_url}/wmts/erie_2011_film/GoogleMapsCompatible/"
                               f"{t.z}/{t.x}/{t.y}.png").content

        first = get(a)
        assert get(a) == first and calls == [a]
        get(b)
        get(c)  # evicts a (capacity 2)
        assert get(a) == first and calls == [a, b, c, a]
