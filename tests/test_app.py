"""The web app over HTTP: views, colourised tiles (context, coalescing, batching, persistence),
export to COG, uploads and the safety rules. A real uvicorn on 127.0.0.1 (ephemeral port), the
bundled sample served by the app's own WMTS endpoints, and a briefly trained real pix2pix."""

from __future__ import annotations

import io
import logging
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
import requests
import torch
from PIL import Image
from rasterio.transform import from_bounds

from pipeline.app.serve import WebApp
from pipeline.geo.tiles import TileId, tile_bounds_3857
from pipeline.geo.tilestore import TileStore
from tests.app_model import ZOOM, app_params, chroma, derived_dir
from tests.conftest import ROOT
from tests.imagery import render_mosaic

# Inside the erie village AOI, away from its edges.
CENTRE = mercantile.tile(-78.926, 42.596, ZOOM)
T0 = TileId(ZOOM, CENTRE.x, CENTRE.y)


@pytest.fixture(scope="module")
def web(app_model: Path, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebApp]:
    data = tmp_path_factory.mktemp("appdata")
    app = WebApp(app_params(app_model, data), sample_derived_dir=str(derived_dir(request, tmp_path_factory)))
    with app:
        yield app


def get(web: WebApp, path: str, **kw: object) -> requests.Response:
    return requests.get(web.server.base_url + path, timeout=120, **kw)


def tile_url(role: str, t: TileId, view: str = "erie") -> str:
    return f"/tiles/{view}/{role}/{t.z}/{t.x}/{t.y}"


def rgba(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGBA"))


def files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def untracked() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


# --------------------------------------------------------------------------- page and views
def test_page_views_and_vendored_assets(web: WebApp) -> None:
    page = get(web, "/")
    assert page.status_code == 200 and "leaflet-1.9.4/leaflet.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]  # nothing from elsewhere
    for asset in ("/static/vendor/leaflet-1.9.4/leaflet.js", "/static/app.js",
                  "/static/vendor/leaflet-side-by-side-2.2.0/index.js",
                  "/static/vendor/leaflet-1.9.4/leaflet.css"):
        assert get(web, asset).status_code == 200, asset
    for licence in ("leaflet-1.9.4", "leaflet-side-by-side-2.2.0"):
        assert (ROOT / "pipeline/app/static/vendor" / licence / "LICENSE").stat().st_size > 500
    (view,) = get(web, "/api/views").json()["views"]
    assert view["name"] == "erie" and view["zoom"] == ZOOM and view["min_zoom"] == ZOOM - 2
    layers = view["layers"]
    assert layers["historic"]["synthetic"] is True and "SYNTHETIC" in layers["historic"]["attribution"]
    assert layers["modern"]["synthetic"] is False and "NYSDOP" in layers["modern"]["attribution"]
    assert layers["colourised"]["available"]
    assert "colours estimated by model pix2pix" in layers["colourised"]["label"]
    assert view["aoi"]["type"] == "Polygon"


def test_the_sample_layers_come_from_the_apps_own_wmts(web: WebApp) -> None:
    caps = get(web, "/wmts/1.0.0/WMTSCapabilities.xml")
    assert caps.status_code == 200 and f"{web.server.base_url}/wmts/erie_2021/" in caps.text
    before = web.sample.total_tile_requests
    t = TileId(ZOOM, T0.x + 3, T0.y + 2)
    modern = get(web, tile_url("modern", t))
    assert modern.status_code == 200
    assert web.sample.total_tile_requests == before + 1  # fetched over HTTP from /wmts, then cached
    direct = get(web, f"/wmts/erie_2021/GoogleMapsCompatible/{t.z}/{t.x}/{t.y}.png")
    assert modern.content == direct.content
    assert get(web, tile_url("modern", t)).content == modern.content
    assert web.sample.total_tile_requests == before + 2  # the direct request only: the app used its cache


# --------------------------------------------------------------------------- colourised tiles
def test_colourised_tile_is_the_model_on_its_neighbourhood(web: WebApp) -> None:
    from pipeline.inference.colourise import context_window

    view = web.state.views["erie"]
    assert view.colour is not None
    runner = view.colour.runner
    got = rgba(get(web, tile_url("colourised", T0)).content)
    # The same computation by hand: the gray historic tiles around T0, one window, the model.
    grays = {}
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            t = TileId(ZOOM, T0.x + dx, T0.y + dy)
            grays[t] = rgba(get(web, tile_url("historic", t)).content)[..., [0, 3]]

    class Tiles:
        def get(self, t: TileId) -> np.ndarray | None:
            return grays.get(t)

    window = context_window(Tiles(), T0, runner.margin)
    m = runner.margin
    # The window holds the real neighbours (not mirrored padding) on every side.
    assert np.array_equal(window[:m, m:m + 256], grays[TileId(ZOOM, T0.x, T0.y - 1)][256 - m:, :, 0])
    expected = runner.submit(window).result(timeout=60)[m:m + 256, m:m + 256]
    diff = np.abs(got[..., :3].astype(int) - expected.astype(int))
    assert diff.max() <= 1  # batched vs single forward passes may round differently by one level
    assert (got[..., 3] == 255).all()
    assert chroma(got) > chroma(grays[T0][..., [0, 0, 0]]) == 0  # colour out of a gray input


def test_a_gray_view_of_a_colour_layer_shows_and_colourises_its_luma(
        app_model: Path, request: pytest.FixtureRequest, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # The page gets a gray PNG; the model gets the same gray straight from the colour tile's
    # bytes (no PNG made and decoded again in between).
    from pipeline.core.config import parse_params
    from pipeline.geo.pixels import to_gray
    from pipeline.inference.colourise import context_window

    data = app_params(app_model, tmp_path / "data").model_dump(mode="json", exclude_none=True)
    data["app"]["views"]["erie"]["historic"] = {"source": "sample", "layer": "erie_2021", "gray": True}
    with WebApp(parse_params(data), sample_derived_dir=str(derived_dir(request, tmp_path_factory))) as app:
        view = app.state.views["erie"]
        assert view.colour is not None
        around = [TileId(ZOOM, T0.x + dx, T0.y + dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        grays = {}
        for t in around:
            colour = rgba(get(app, tile_url("modern", t)).content)
            shown = rgba(get(app, tile_url("historic", t)).content)
            luma, is_colour = to_gray(colour, view.historic.luma)
            assert is_colour and np.array_equal(shown[..., 0], luma)
            assert np.array_equal(shown[..., 1], luma) and np.array_equal(shown[..., 2], luma)
            grays[t] = np.stack([luma, colour[..., 3]], axis=-1)

        class Tiles:
            def get(self, t: TileId) -> np.ndarray | None:
                return grays.get(t)

        runner = view.colour.runner
        got = rgba(get(app, tile_url("colourised", T0)).content)
        expected = runner.submit(context_window(Tiles(), T0, runner.margin)).result(timeout=60)
        m = runner.margin
        assert np.abs(got[..., :3].astype(int) - expected[m:m + 256, m:m + 256].astype(int)).max() <= 1


def test_concurrent_requests_share_one_computation_and_batches(web: WebApp) -> None:
    view = web.state.views["erie"]
    assert view.colour is not None
    fresh = TileId(ZOOM, T0.x + 2, T0.y - 2)
    computed = view.colour.computed
    results: list[bytes] = []

    def fetch(t: TileId) -> None:
        results.append(get(web, tile_url("colourised", t)).content)

    threads = [threading.Thread(target=fetch, args=(fresh,)) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(set(results)) == 1 and view.colour.computed == computed + 1  # coalesced

    stats = view.colour.runner.stats
    batches, windows = stats.batches, stats.windows
    distinct = [TileId(ZOOM, T0.x - 3 + i, T0.y + 3) for i in range(6)]
    threads = [threading.Thread(target=fetch, args=(t,)) for t in distinct]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # a row of 6 tiles is blended from 8 x 3 windows (theirs and their neighbours'), each run once,
    # and windows of concurrent requests shared passes
    assert stats.windows - windows == 8 * 3 and stats.batches - batches < 8 * 3

    # Persistent: the tile is in the store keyed by the model's digest, and served from it.
    assert view.colour.runner.model_id in str(view.colour.path)
    with TileStore(view.colour.path, readonly=True) as store:
        assert store.get(fresh) == results[0]
    assert get(web, tile_url("colourised", fresh)).content == results[0]
    assert view.colour.computed == computed + 1 + 6


def test_overview_tiles_are_built_from_their_children(web: WebApp) -> None:
    view = web.state.views["erie"]
    assert view.colour is not None
    parent = TileId(ZOOM - 1, T0.x // 2, T0.y // 2)
    data = get(web, tile_url("colourised", parent)).content
    kids = [TileId(ZOOM, 2 * parent.x + dx, 2 * parent.y + dy) for dy in (0, 1) for dx in (0, 1)]
    kids = [rgba(get(web, tile_url("colourised", t)).content) for t in kids]
    mosaic = np.concatenate([np.concatenate(kids[:2], axis=1), np.concatenate(kids[2:], axis=1)], axis=0)
    expected = mosaic[..., :3].astype(float).reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(rgba(data)[..., :3] - expected).max() <= 1.0
    assert get(web, tile_url("colourised", TileId(ZOOM - 3, T0.x // 8, T0.y // 8))).status_code == 404


# --------------------------------------------------------------------------- export
def test_download_this_view_is_a_valid_cog(web: WebApp, tmp_path: Path) -> None:
    from pipeline.geo.cog import validate_cog

    w, s, e, n = mercantile.bounds(T0.x, T0.y, ZOOM)
    eps = 1e-7
    bbox = f"{w + eps},{s + eps - (n - s)},{e + (e - w) - eps},{n - eps}"  # T0 and three neighbours
    resp = get(web, "/api/views/erie/export", params={"bbox": bbox})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-disposition"].endswith('.tif"')
    path = tmp_path / "view.tif"
    path.write_bytes(resp.content)
    assert validate_cog(path) == []
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.count == 4 and (ds.width, ds.height) == (512, 512)
        assert ds.overviews(1) == [2]
        left, _, _, top = tile_bounds_3857(T0)
        assert ds.bounds.left == pytest.approx(left, abs=1e-6)
        assert ds.bounds.top == pytest.approx(top, abs=1e-6)
        assert "COLOURISED" in ds.tags()["description"]
        first = np.moveaxis(ds.read(window=((0, 256), (0, 256))), 0, -1)
    assert np.abs(first.astype(int) - rgba(get(web, tile_url("colourised", T0)).content)).max() == 0
    too_big = get(web, "/api/views/erie/export")  # the whole AOI: more than export_max_tiles
    assert too_big.status_code == 413 and "zoom in" in too_big.json()["error"]


# --------------------------------------------------------------------------- uploads
def _gray_photo() -> np.ndarray:
    from pipeline.geo.pixels import luma

    return luma(render_mosaic("erie_2021", ZOOM, T0.x, T0.y, 2, 1)[:200, :300, :3])


def test_upload_png_comes_back_coloured(web: WebApp) -> None:
    buf = io.BytesIO()
    Image.fromarray(_gray_photo()).save(buf, format="PNG")
    resp = requests.post(web.server.base_url + "/api/upload", data=buf.getvalue(), timeout=120,
                         params={"view": "erie", "name": "scan 1974.png"})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["georeferenced"] is False and result["file_name"] == "scan 1974_colourised.png"
    out = rgba(get(web, result["download"]).content)
    assert out.shape == (200, 300, 4) and chroma(out) > 1.0
    assert get(web, result["preview"]).status_code == 200


def test_upload_geotiff_comes_back_as_a_georeferenced_cog(web: WebApp, tmp_path: Path) -> None:
    from pipeline.geo.cog import validate_cog

    gray = _gray_photo()
    left, bottom, right, top = tile_bounds_3857(T0)
    transform = from_bounds(left, bottom, right, top, 300, 200)
    src = tmp_path / "scan.tif"
    with rasterio.open(src, "w", driver="GTiff", width=300, height=200, count=1, dtype="uint8",
                       crs="EPSG:3857", transform=transform) as dst:
        dst.write(gray, 1)
    resp = requests.post(web.server.base_url + "/api/upload", params={"name": "scan.tif"},
                         data=src.read_bytes(), timeout=120)
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["georeferenced"] is True and result["file_name"] == "scan_colourised.tif"
    out = tmp_path / "out.tif"
    out.write_bytes(get(web, result["download"]).content)
    assert validate_cog(out) == []
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.transform.almost_equals(transform) and ds.count == 4
        assert chroma(np.moveaxis(ds.read([1, 2, 3]), 0, -1)) > 1.0


# --------------------------------------------------------------------------- safety
def _bomb_png(side: int) -> bytes:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\x00" * (side + 1) * 8, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("params", "body", "status", "message"), [
    ({"name": "big.png"}, b"\x89PNG\r\n\x1a\n" + b"\x00" * 2_100_000, 413,
     "more than the limit of 2,000,000 bytes"),
    ({"name": "notes.png"}, b"just some text, not a photo", 415, "not a GeoTIFF, TIFF, PNG or JPEG"),
    ({"name": "../../etc/passwd.png"}, b"\x89PNG\r\n\x1a\n", 400, "not a plain file name"),
    ({"name": "..\\evil.png"}, b"\x89PNG\r\n\x1a\n", 400, "not a plain file name"),
    ({"name": "bomb.png"}, _bomb_png(20000), 413, "pixels, more than the limit of 1,000,000"),
    ({"name": "x.png", "view": "elsewhere"}, b"\x89PNG\r\n\x1a\n", 404, "unknown view 'elsewhere'"),
    ({"name": "empty.png"}, b"", 400, "the upload is empty"),
])
def test_bad_uploads_are_refused_and_nothing_is_written(web: WebApp, params: dict, body: bytes, status: int,
                                                        message: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    before, repo = files(web.state.data_dir), untracked()
    resp = requests.post(web.server.base_url + "/api/upload", params=params, data=body, timeout=60)
    assert resp.status_code == status and message in resp.json()["error"]
    assert files(web.state.data_dir) == before and untracked() == repo
    assert any(message in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)


def test_an_oversized_upload_without_a_declared_length_is_cut_off(web: WebApp) -> None:
    def chunks() -> Iterator[bytes]:  # chunked transfer: the limit is enforced while reading
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(40):
            yield b"\x00" * 65536

    before = files(web.state.data_dir)
    resp = requests.post(web.server.base_url + "/api/upload", params={"name": "big.png"}, data=chunks(),
                         timeout=60)
    assert resp.status_code == 413 and "larger than the limit of 2,000,000 bytes" in resp.json()["error"]
    assert files(web.state.data_dir) == before


@pytest.mark.parametrize(("path", "status", "message"), [
    (tile_url("erie_2011", T0), 404, "unknown layer 'erie_2011'"),
    (tile_url("historic", T0, view="sinica"), 404, "unknown view 'sinica'"),
    (tile_url("historic", T0) + "?url=http://example.com/tile.png", 400, "take no parameters"),
    (tile_url("historic", TileId(ZOOM, 1, 1)), 404, "outside the area of view 'erie'"),
    (tile_url("historic", TileId(ZOOM + 1, 2 * T0.x, 2 * T0.y)), 404, f"serves zooms {ZOOM - 2}..{ZOOM}"),
    ("/api/proxy?url=http://example.com/", 404, "no such page or endpoint"),
    ("/api/uploads/..%2F..%2Fparams.yaml/result.png", 404, "no such page or endpoint"),
    ("/api/uploads/params.yaml/result.png", 404, "no such upload result"),
    ("/api/views/erie/export?bbox=1,2,3", 400, "must be four numbers"),
])
def test_unconfigured_layers_and_urls_are_refused(web: WebApp, path: str, status: int, message: str) -> None:
    before, repo = files(web.state.data_dir), untracked()
    resp = get(web, path)
    assert resp.status_code == status and message in resp.json()["error"], resp.text
    assert files(web.state.data_dir) == before and untracked() == repo


def test_wmts_of_the_app_refuses_unknown_layers_and_traversal(web: WebApp) -> None:
    resp = get(web, f"/wmts/secret/GoogleMapsCompatible/{ZOOM}/{T0.x}/{T0.y}.png")
    assert resp.status_code == 400 and "unknown layer 'secret'" in resp.text
    assert get(web, "/wmts/..%2F..%2Fparams.yaml").status_code == 400


def test_missing_model_is_explained_and_the_photos_still_serve(
        request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    params = app_params(tmp_path / "runs" / "nothing" / "model.pt", tmp_path / "data")
    with WebApp(params, sample_derived_dir=str(derived_dir(request, tmp_path_factory))) as app:
        colour = get(app, "/api/views").json()["views"][0]["layers"]["colourised"]
        assert colour["available"] is False and "nothing/model.pt not found" in colour["error"]
        resp = get(app, tile_url("colourised", T0))
        assert resp.status_code == 503
        assert "not found" in resp.json()["error"] and "--model" in resp.json()["error"]
        assert get(app, tile_url("historic", T0)).status_code == 200
        assert get(app, tile_url("modern", T0)).status_code == 200


def test_layers_are_resolved_as_the_app_starts_before_any_request(
        request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    import time

    params = app_params(tmp_path / "runs" / "nothing" / "model.pt", tmp_path / "data")
    with WebApp(params, sample_derived_dir=str(derived_dir(request, tmp_path_factory))) as app:
        layers = [layer for view in app.state.views.values() for layer in (view.historic, view.modern)]
        deadline = time.monotonic() + 60
        while not all(layer.resolved for layer in layers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(layer.resolved for layer in layers)  # nobody asked for /api/views


def test_app_command_help_and_bad_ports(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from pipeline.stages.app import main as app_main
    from pipeline.stages.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_:
        cli_main(["app", "--help"])
    assert exit_.value.code == 0 and "--host" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        app_main(["--port", "70000"])
    assert exit_.value.code == 2 and "--port 70000 is not a TCP port" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["app", "--help"])
    assert "--precision {auto,fp32,bf16}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        app_main(["--precision", "fp16"])
    assert exit_.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        app_main(["--model-workers", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--model-workers 0: give at least 1" in err and err.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            app_main(["--port", str(port)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1


def test_an_unreachable_service_is_reported_and_the_other_layers_serve(
        app_model: Path, request: pytest.FixtureRequest, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    import socket

    from pipeline.core.config import parse_params

    with socket.socket() as s:  # a port nobody listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = app_params(app_model, tmp_path / "data").model_dump(mode="json", exclude_none=True)
    data["sources"]["down"] = {"kind": "wmts", "url": f"http://127.0.0.1:{port}/wmts/1.0.0/WMTSCapabilities.xml"}
    data["app"]["views"]["erie"]["modern"] = {"source": "down", "layer": "somewhere"}
    with WebApp(parse_params(data), sample_derived_dir=str(derived_dir(request, tmp_path_factory))) as app:
        layers = get(app, "/api/views").json()["views"][0]["layers"]
        assert layers["modern"]["available"] is False and "cannot be reached" in layers["modern"]["error"]
        assert layers["historic"]["available"] is True
        resp = get(app, tile_url("modern", T0))
        assert resp.status_code == 502 and "connection refused" in resp.json()["error"]
        assert get(app, tile_url("historic", T0)).status_code == 200


def test_a_model_with_instance_norms_colours_a_view_with_its_areas_statistics(
        instance_model: Path, request: pytest.FixtureRequest, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Before its first tile the view gathers the statistics over windows spread over its area
    (kept beside its store); every tile then uses them, and the next start reads them back."""
    from models.networks.norm_stats import fixed_norm_stats
    from pipeline.app.colour_tiles import read_stats

    params = app_params(instance_model, tmp_path / "data")
    derived = str(derived_dir(request, tmp_path_factory))
    with caplog.at_level(logging.INFO, logger="luminescence.app"), \
            WebApp(params, sample_derived_dir=derived, area_windows=4) as web:
        colour = web.state.views["erie"].colour
        assert colour is not None and colour.area_key == "view:erie" and len(colour.area_sample) == 4
        first = rgba(get(web, tile_url("colourised", T0)).content)
        assert "gathered over 4 windows" in caplog.text
        stats = read_stats(colour.stats_path)
        model = colour.runner._areas["view:erie"]
        assert stats is not None and all(torch.equal(stats[k]["mean"], v["mean"])
                                         for k, v in fixed_norm_stats(model.nets["G"]).items())
        with TileStore(colour.path, readonly=True) as store:
            assert store.metadata["norm_stats"] == "area (4 tiles' windows)"
        own = colour.runner.submit(np.full((colour.runner.window,) * 2, 128, np.uint8)).result(timeout=60)
        by_area = colour.runner.submit(np.full((colour.runner.window,) * 2, 128, np.uint8),
                                       area="view:erie").result(timeout=60)
        assert np.abs(own.astype(int) - by_area.astype(int)).max() > 2  # the area's, not each window's
        store_path = colour.path
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="luminescence.app"), \
            WebApp(params, sample_derived_dir=derived, area_windows=4) as web:
        colour = web.state.views["erie"].colour
        assert colour is not None and colour.path == store_path
        east = TileId(ZOOM, T0.x + 1, T0.y)  # not computed before: needs the statistics
        get(web, tile_url("colourised", east))
        assert "read from" in caplog.text and "gathered" not in caplog.text
        assert np.array_equal(rgba(get(web, tile_url("colourised", T0)).content), first)
    with WebApp(params, sample_derived_dir=derived, area_windows=0) as web:  # each window's own
        colour = web.state.views["erie"].colour
        assert colour is not None and colour.area_key == "" and colour.path != store_path


def test_start_up_prepares_the_views_areas_one_after_the_other_in_order() -> None:
    """The page opens the first view: its statistics do not share the machine with the others',
    and one view's failure does not keep the next from being prepared."""
    import asyncio

    from pipeline.app.routes import _prepare_areas

    events: list[str] = []

    class FakeColour:
        def __init__(self, name: str, fails: bool) -> None:
            self.name, self.fails = name, fails

        async def area_ready(self, *, background: bool = False) -> None:
            events.append(f"start {self.name}{' (background)' if background else ''}")
            await asyncio.sleep(0.01)
            events.append(f"end {self.name}")
            if self.fails:
                raise OSError("service down")

    asyncio.run(_prepare_areas([FakeColour("a", True), FakeColour("b", False), FakeColour("c", False)]))
    assert events == ["start a", "end a", "start b (background)", "end b", "start c (background)", "end c"]


def test_the_runner_says_when_it_is_busy_and_gathering_pauses_before_each_batch(instance_model: Path) -> None:
    """Background gathering looks at `busy()`: windows queued or running, or just finished (a
    page's tiles come in bursts); `area_stats` lets it wait before every batch."""
    from pipeline.app.runner import ModelRunner

    runner = ModelRunner(instance_model, batch_size=2, workers=1)
    try:
        assert runner.wait_ready(timeout_s=60)
        window = np.full((runner.window,) * 2, 128, np.uint8)
        assert not runner.busy(quiet_s=0.0)
        done = runner.submit(window)
        assert runner.busy(quiet_s=0.0) or done.done()
        done.result(timeout=60)
        assert runner.busy() and not runner.busy(quiet_s=0.0)  # just finished: still counts for a moment
        pauses: list[int] = []
        stats = runner.area_stats(np.stack([window] * 5), pause=lambda: pauses.append(1))
        assert stats is not None and len(pauses) == 3  # batches of 2, 2 and 1
    finally:
        runner.close()


def test_a_layer_gathering_in_the_background_waits_until_the_model_is_idle_or_its_tile_asks() -> None:
    import asyncio
    from types import SimpleNamespace

    from pipeline.app.colour_tiles import ColourLayer

    busy = [True]
    layer = ColourLayer.__new__(ColourLayer)  # only the pausing logic: no source, store or model
    layer.runner = SimpleNamespace(busy=lambda: busy[0])  # type: ignore[assignment]
    layer.area_key, layer._wanted, layer._waited_s = "", False, 0.0

    async def scenario() -> None:
        waiting = asyncio.ensure_future(layer._quiet())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the model is busy with another view's tiles
        await layer.area_ready()  # a tile of this layer asks: no more waiting
        await asyncio.wait_for(waiting, timeout=1)
        layer._wanted, busy[0] = False, False
        await asyncio.wait_for(layer._quiet(), timeout=1)  # idle model: goes on at once

    asyncio.run(scenario())
    assert layer._waited_s >= 0.3
