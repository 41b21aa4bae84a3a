"""Request handling is a plain function: path + query -> Response, with no socket or HTTP library.

The layer is a tiny GeoTIFF written by the test (a colour gradient on four z12 tiles), so these
checks need neither the bundled sample nor a port.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_bounds

from pipeline.geo.tiles import TileId, tile_bounds_3857
from pipeline.server.errors import ServerError
from pipeline.server.faults import FaultPlan, parse_faults
from pipeline.server.handling import Response, handle
from pipeline.server.layers import LayerSource
from pipeline.server.rendering import TRANSPARENT_PNG
from pipeline.server.service import WmtsService

OWS = "{http://www.opengis.net/ows/1.1}"
TILE = TileId(12, 1100, 1500)  # the raster covers this tile and its east, south and south-east neighbours


@pytest.fixture(scope="module")
def raster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("raster") / "gradient.tif"
    left, _, _, top = tile_bounds_3857(TILE)
    _, bottom, right, _ = tile_bounds_3857(TileId(12, TILE.x + 1, TILE.y + 1))
    ramp = np.linspace(0, 255, 512, dtype=np.float32)
    rgb = np.stack([np.tile(ramp, (512, 1)), np.tile(ramp[:, None], (1, 512)), np.full((512, 512), 90.0)])
    with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=3, dtype="uint8",
                       crs="EPSG:3857", transform=from_bounds(left, bottom, right, top, 512, 512)) as dst:
        dst.write(rgb.astype(np.uint8))
    return path


def make_service(raster: Path, cache: Path, faults: FaultPlan | None = None) -> WmtsService:
    layer = LayerSource(id="grad", title="gradient", abstract="test raster", paths=(raster,), bands=(1, 2, 3),
                        formats=("png", "jpeg"))
    service = WmtsService([layer], faults=faults, cache_dir=cache)
    service.bind("http://example.test:8123/")
    return service


@pytest.fixture(scope="module")
def service(raster: Path, tmp_path_factory: pytest.TempPathFactory) -> WmtsService:
    return make_service(raster, tmp_path_factory.mktemp("cache"))


def rest(tile: TileId, ext: str = "png", layer: str = "grad") -> str:
    return f"/wmts/{layer}/GoogleMapsCompatible/{tile.z}/{tile.x}/{tile.y}.{ext}"


def kvp(tile: TileId, fmt: str = "image/png") -> str:
    return (f"SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=grad&STYLE=default"
            f"&TILEMATRIXSET=GoogleMapsCompatible&TILEMATRIX={tile.z}&TILECOL={tile.x}&TILEROW={tile.y}"
            f"&FORMAT={fmt}")


def exception_of(resp: Response) -> tuple[str, str | None]:
    assert resp.content_type == "application/xml"
    exc = ET.fromstring(resp.body).find(f"{OWS}Exception")
    assert exc is not None
    return exc.get("exceptionCode", ""), exc.get("locator")


def test_rest_kvp_and_xyz_give_the_same_tile(service: WmtsService) -> None:
    answers = [handle(service, rest(TILE)), handle(service, "/wmts", kvp(TILE)),
               handle(service, "/file-exists.php", f"img=grad-png-{TILE.z}-{TILE.x}-{TILE.y}")]
    assert [(a.status, a.content_type) for a in answers] == [(200, "image/png")] * 3
    assert answers[0].body == answers[1].body == answers[2].body != TRANSPARENT_PNG
    with Image.open(io.BytesIO(answers[0].body)) as img:
        pixels = np.asarray(img.convert("RGBA"))
    # Same grid as the raster: the west half of its ramp, opaque.
    assert pixels[..., 3].min() == 255 and pixels[0, 0, 0] < 5 and 120 < pixels[0, 255, 0] < 135
    assert dict(answers[0].all_headers())["Content-Length"] == str(len(answers[0].body))
    jpeg = handle(service, rest(TILE, "jpg"))
    assert jpeg.status == 200 and jpeg.content_type == "image/jpeg" and jpeg.body[:2] == b"\xff\xd8"
    outside = handle(service, rest(TileId(12, 0, 0)))
    assert outside.status == 200 and outside.body == TRANSPARENT_PNG


def test_capabilities_name_the_bound_url(service: WmtsService) -> None:
    resp = handle(service, "/wmts/1.0.0/WMTSCapabilities.xml")
    kvp_caps = handle(service, "/wmts", "SERVICE=WMTS&REQUEST=GetCapabilities")
    assert resp.status == 200 and resp.body == kvp_caps.body
    template = "http://example.test:8123/wmts/grad/{TileMatrixSet}/{TileMatrix}/{TileCol}/{TileRow}.png"
    assert f'template="{template}"'.encode() in resp.body
    assert handle(service, "/").body == b"Luminescence WMTS. Capabilities: " \
        b"http://example.test:8123/wmts/1.0.0/WMTSCapabilities.xml\n"


def test_bad_requests_are_answered_not_raised(service: WmtsService, monkeypatch: pytest.MonkeyPatch) -> None:
    assert exception_of(handle(service, rest(TILE, layer="nope"))) == ("InvalidParameterValue", "layer")
    assert exception_of(handle(service, rest(TileId(2, 4, 0)))) == ("TileOutOfRange", "TileCol")
    assert exception_of(handle(service, "/wmts", kvp(TILE).replace("STYLE=default", "STYLE=x"))) == (
        "InvalidParameterValue", "STYLE")
    assert handle(service, "/wmts", "SERVICE=WMTS&REQUEST=GetFeatureInfo").status == 501
    assert handle(service, "/file-exists.php", "img=grad-png-1-5-0").status == 404
    assert handle(service, "/wmts/%2e%2e/etc/passwd").status == 400
    assert handle(service, "/elsewhere").status == 404

    def broken(*args: object) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service.renderer, "tile_bytes", broken)
    resp = handle(service, rest(TILE))
    assert resp.status == 500 and exception_of(resp) == ("NoApplicableCode", None)


def test_faults_are_data_for_the_transport(raster: Path, tmp_path: Path) -> None:
    tile = TileId(12, TILE.x + 1, TILE.y)
    plan = FaultPlan(truncate_rate=0.5, slow_rate=0.5, slow_s=4.0, latency_s=0.25, faults_per_tile=2)
    service = make_service(raster, tmp_path, plan)
    kinds = [plan.fault_for("grad", *tile, attempt) for attempt in range(3)]
    answers = [handle(service, rest(tile)) for _ in range(3)]
    assert service.tile_requests()[("grad", *tile)] == 3
    for kind, resp in zip(kinds, answers, strict=True):
        assert resp.status == 200
        assert resp.truncate == (kind == "truncate")
        assert resp.delay_s == pytest.approx(0.25 + (4.0 if kind == "slow" else 0.0))
        assert (("Connection", "close") in resp.all_headers()) == resp.truncate
    assert kinds[2] is None and answers[2].body == answers[0].body  # the same bytes once faults stop

    throttled = make_service(raster, tmp_path, FaultPlan(throttle_rate=1.0, retry_after_s=3))
    resp = handle(throttled, rest(tile))
    assert resp.status == 429 and ("Retry-After", "3") in resp.headers


def test_parse_faults() -> None:
    plan = parse_faults("error=0.1, throttle_rate=0.05,latency_s=0.5,seed=3")
    assert (plan.error_rate, plan.throttle_rate, plan.latency_s, plan.seed) == (0.1, 0.05, 0.5, 3)
    with pytest.raises(ServerError, match="--faults: 'bogus=1' is not NAME=VALUE"):
        parse_faults("bogus=1")
    with pytest.raises(ServerError, match="'seed=x': 'x' is not a number"):
        parse_faults("seed=x")
    with pytest.raises(ServerError, match="sum to at most 1"):
        parse_faults("error=0.7,throttle=0.7")
