"""Hostile and broken inputs against the CLIs: each case once made a command lose data, write into
a file that was not its own, hang, grow without bound or end in a traceback.

Hostile documents come from a tiny threaded HTTP server on 127.0.0.1 (an ephemeral port):
slow-drip bodies and headers, gzip bombs, capabilities too big for the XML parser, zoom levels
outside the tile grid, redirects and templates that point at another host. The other cases use
small local files: damaged tile stores, mismatched model files, aliased and unwritable output
paths. Deadlines here are short (1 s) and every hostile answer is finite, so a regression shows
as a failed assertion, never as a hung suite.
"""

from __future__ import annotations

import gzip
import io
import os
import sqlite3
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from shapely.geometry import box

from pipeline.geo import wmts_client
from pipeline.geo.tilecache import TileCache
from pipeline.geo.tiles import TileId
from pipeline.geo.tilestore import StoreError, TileRecord, TileStatus, TileStore
from pipeline.stages import colourise as colourise_cli
from pipeline.stages import fetch as fetch_cli
from pipeline.training.checkpoint import save_model_file
from tests.loopback_http import LoopbackServer
from tests.loopback_http import send as send_reply
from tests.test_wmts_client import caps_xml, gm_matrix_set, layer_xml
from tests.tiny_gan import TinyOptions, TinyP2P

ZOOM = 18
# 2 x 2 tiles at zoom 18 near (0, 0): small enough that every harvest here takes milliseconds.
SMALL_AOI = box(0.0002, 0.0002, 0.0024, 0.0024)
DRIP_PIECES = 20  # a dripping answer takes DRIP_PIECES * DRIP_INTERVAL_S = 4 s in all
DRIP_INTERVAL_S = 0.2
DEADLINE_S = 1


# --------------------------------------------------------------------------- the hostile server
def noise_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


Route = Callable[[BaseHTTPRequestHandler], None]


class HostileServer:
    """Answers by path prefix: routes[prefix](handler). Finite answers only (drips end)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.ok_caps = b""  # the valid capabilities document the routes serve in various ways
        self.http = LoopbackServer(self._answer)
        self.port = self.http.port
        self.base = self.http.base
        # The same server under another host name: "a different host" without the network.
        self.other_base = f"http://localhost:{self.port}"

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        route = self.routes.get("/" + h.path.lstrip("/").split("/", 1)[0])
        if route is None:
            send(h, 404, b"not found", "text/plain")
        else:
            route(h)

    def close(self) -> None:
        self.http.close()


def send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str,
         headers: dict[str, str] | None = None) -> None:
    send_reply(h, status, body, {"Content-Type": ctype, **(headers or {})})


def drip_body(h: BaseHTTPRequestHandler, body: bytes, ctype: str) -> None:
    """A complete, correct answer whose body trickles in: every read returns within the read
    timeout, so only a deadline on the whole request stops waiting for it."""
    h.send_response(200)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.flush()
    step = -(-len(body) // DRIP_PIECES)
    for i in range(0, len(body), step):
        h.wfile.write(body[i:i + step])
        h.wfile.flush()
        time.sleep(DRIP_INTERVAL_S)


def drip_headers(h: BaseHTTPRequestHandler, body: bytes, ctype: str) -> None:
    """The status line and headers trickle in, one header at a time, before a normal body."""
    h.wfile.write(b"HTTP/1.1 200 OK\r\n")
    h.wfile.flush()
    for i in range(DRIP_PIECES):
        time.sleep(DRIP_INTERVAL_S)
        h.wfile.write(f"X-Padding-{i}: slow\r\n".encode())
        h.wfile.flush()
    h.wfile.write(f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    h.close_connection = True


def tile_route(h: BaseHTTPRequestHandler) -> None:
    _z, x, y = (int(v) for v in h.path.split("?")[0].rsplit(".", 1)[0].split("/")[-3:])
    send(h, 200, noise_png(x * 31 + y), "image/png")


def caps_for(template: str, *, zmax: int = 20) -> bytes:
    return caps_xml([layer_xml("l", template=template, bbox=None)], sets=[gm_matrix_set(zmax=zmax)])


def gzip_bomb(inflated_mb: int) -> bytes:
    """A small gzip body that inflates to `inflated_mb` MiB of zeros."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(inflated_mb)) + packer.flush()


def raw_deflate(data: bytes) -> bytes:
    """Deflate without the zlib wrapper, as some servers send `Content-Encoding: deflate`."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    s = HostileServer()
    tiles = "/t/{TileMatrix}/{TileCol}/{TileRow}.png"
    ok_caps = caps_for(s.base + tiles)
    drip_caps = caps_for(s.base + "/drip-tile/{TileMatrix}/{TileCol}/{TileRow}.png")
    foreign_caps = caps_for(s.other_base + tiles)
    zoom40_caps = caps_for(s.base + tiles, zmax=40)
    huge_caps = caps_xml([layer_xml("l", template=s.base + tiles, bbox=None, title="x" * 11_000_000)])
    bomb = gzip_bomb(200)
    s.routes.update({
        "/t": tile_route,
        "/ok.xml": lambda h: send(h, 200, ok_caps, "application/xml"),
        "/foreign.xml": lambda h: send(h, 200, foreign_caps, "application/xml"),
        "/zoom40.xml": lambda h: send(h, 200, zoom40_caps, "application/xml"),
        "/huge.xml": lambda h: send(h, 200, huge_caps, "application/xml"),
        "/bomb.xml": lambda h: send(h, 200, bomb, "application/xml", {"Content-Encoding": "gzip"}),
        "/moved.xml": lambda h: send(h, 302, b"", "text/plain", {"Location": s.other_base + "/ok.xml"}),
        "/drip.xml": lambda h: drip_body(h, ok_caps, "application/xml"),
        "/drip-headers.xml": lambda h: drip_headers(h, ok_caps, "application/xml"),
        "/drip-caps-tiles.xml": lambda h: send(h, 200, drip_caps, "application/xml"),
        "/drip-tile": lambda h: drip_body(h, noise_png(1), "image/png"),
        "/drip-head-tile": lambda h: drip_headers(h, noise_png(2), "image/png"),
        "/bomb-tile": lambda h: send(h, 200, bomb, "image/png", {"Content-Encoding": "gzip"}),
        "/gzip.xml": lambda h: send(h, 200, gzip.compress(ok_caps), "application/xml",
                                    {"Content-Encoding": "gzip"}),
        "/deflate.xml": lambda h: send(h, 200, zlib.compress(ok_caps), "application/xml",
                                       {"Content-Encoding": "deflate"}),
        "/raw-deflate.xml": lambda h: send(h, 200, raw_deflate(ok_caps), "application/xml",
                                           {"Content-Encoding": "deflate"}),
        "/brotli.xml": lambda h: send(h, 200, b"\x0b\x02\x80", "application/xml", {"Content-Encoding": "br"}),
    })
    s.ok_caps = ok_caps
    yield s
    s.close()


# --------------------------------------------------------------------------- helpers
def run_cli(main: Callable[[list[str]], Any], capsys: pytest.CaptureFixture[str],
            *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return int(code or 0), out, err


def one_error_line(err: str) -> str:
    """The command's only stderr line that is an error, which must be its last word."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err, err
    return lines[-1]


def write_aoi(path: Path, geometry: object = SMALL_AOI) -> Path:
    driver = "GPKG" if path.suffix == ".gpkg" else None
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[geometry], crs="EPSG:4326").to_file(path, driver=driver)
    return path


def use_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **harvest: object) -> None:
    """Run from tmp_path with a params.yaml holding only a harvest section (the CLIs read it)."""
    params = {"sources": {}, "aois": {}, "fetch": {}, "harvest": harvest}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)


def harvest_args(url: str, aoi: Path, out: Path, cache: Path, *extra: str, wmts: bool = True,
                 zoom: int = ZOOM) -> list[str]:
    source = ["--wmts", url, "--layer", "l"] if wmts else ["--xyz", url]
    return ["harvest", *source, "--aoi", str(aoi), "--zoom", str(zoom), "--out", str(out),
            "--cache-dir", str(cache), "--rps", "0", "--quiet", *extra]


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# --------------------------------------------------------------------------- 1. aliased outputs
@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    """A model.pt of the tiny test GAN (untrained: colours don't matter here)."""
    return write_model(tmp_path / "model.pt")


def write_model(path: Path, *, options: dict[str, Any] | None = None, model: str = "tiny_p2p",
                nets: dict[str, Any] | None = None) -> Path:
    opts = TinyOptions(ngf=4, ndf=4)
    net = TinyP2P(opts, torch.device("cpu"))
    save_model_file(path, {
        "ablation": "tiny", "model": model, "options": options if options is not None else opts.model_dump(),
        "identity_hash": "0" * 64, "step": 1, "dataset": {},
        "nets": nets if nets is not None else {k: n.state_dict() for k, n in net.nets.items()},
    })
    return path


def write_store(path: Path, records: list[TileRecord] | None = None) -> Path:
    tiles = [TileId(ZOOM, x, y) for x in (131072, 131073) for y in (131070, 131071)]
    with TileStore(path) as store:
        store.set_metadata({"name": "area", "format": "png", "minzoom": ZOOM, "maxzoom": ZOOM,
                            "complete": "true"})
        store.put_many(records or [TileRecord(t, TileStatus.OK, noise_png(i)) for i, t in enumerate(tiles)])
    return path


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return write_store(tmp_path / "area.mbtiles")


def colourise(capsys: pytest.CaptureFixture[str], model: Path, store: Path, out: Path,
              *extra: str) -> tuple[int, str, str]:
    return run_cli(colourise_cli.main, capsys, "--model", str(model), "--store", str(store),
                   "--out", str(out), "--device", "cpu", "--no-progress", *extra)


@pytest.mark.parametrize(("flag", "victim"), [
    ("--geotiff", "store"),  # the input store replaced by a TIFF
    ("--preview", "model"),  # the model replaced by a PNG
    ("--out", "store"),
    ("--geotiff", "out"),  # two outputs that are one file
])
def test_colourise_refuses_an_output_that_is_an_input(flag: str, victim: str, model_file: Path, store: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    out = tmp_path / "colour.mbtiles"
    path = {"store": store, "model": model_file, "out": out}[victim]
    before = {p: snapshot(p) for p in (store, model_file)}
    extra = [] if flag == "--out" else [flag, str(path)]
    code, _, err = colourise(capsys, model_file, store, path if flag == "--out" else out, *extra)
    line = one_error_line(err)
    assert code == 2 and flag in line and str(path) in line
    assert {p: snapshot(p) for p in before} == before  # nothing was modified...
    assert not out.exists()  # ...nor written


def test_colourise_refuses_an_output_that_links_to_an_input(model_file: Path, store: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "link.mbtiles"
    link.symlink_to(store)
    before = snapshot(store)
    code, _, err = colourise(capsys, model_file, store, link)
    assert code == 2 and "--store" in one_error_line(err)
    assert snapshot(store) == before


@pytest.mark.parametrize(("flag", "name", "content"), [
    ("--preview", "notes.png", b"my notes, not a PNG\n"),
    ("--geotiff", "photo.tif", b"\xff\xd8\xff\xe0 a JPEG named .tif"),
    ("--out", "data.mbtiles", b"a text file named .mbtiles\n"),
])
def test_colourise_never_modifies_an_existing_file_of_another_kind(
        flag: str, name: str, content: bytes, model_file: Path, store: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / name
    foreign.write_bytes(content)
    out = foreign if flag == "--out" else tmp_path / "colour.mbtiles"
    extra = [] if flag == "--out" else [flag, str(foreign)]
    code, _, err = colourise(capsys, model_file, store, out, *extra)
    line = one_error_line(err)
    assert code == 2 and str(foreign) in line and "delete" not in line
    assert foreign.read_bytes() == content
    assert not (tmp_path / "colour.mbtiles").exists()  # refused before anything was written


# ------------------------------------------------------------- the same rule for the other writers
def test_align_never_replaces_a_folder_that_holds_its_input_stores(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out-dir D with dataset `gray` replaces D/gray whole: here D/gray is the tiles folder."""
    from pipeline.stages import align as align_cli
    from tests.imagery import params_for

    tiles = tmp_path / "gray"
    tiles.mkdir()
    store_file = write_store(tiles / "t.mbtiles")
    before = snapshot(store_file)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(params_for({"gray": {"input": "gray", "target": "t"}}, ["t"])))
    code, _, err = run_cli(align_cli.main, capsys, "gray", "--params", str(params), "--tiles-dir", str(tiles),
                           "--out-dir", str(tmp_path), "--no-progress")
    line = one_error_line(err)
    assert code == 2 and "--out-dir" in line and str(store_file) in line
    assert snapshot(store_file) == before


def test_align_never_replaces_a_folder_that_is_not_a_dataset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.stages import align as align_cli
    from tests.imagery import params_for

    write_store(tmp_path / "tiles" / "t.mbtiles")
    photos = tmp_path / "out" / "gray"
    photos.mkdir(parents=True)
    (photos / "holiday.jpg").write_bytes(b"\xff\xd8 my photo")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(params_for({"gray": {"input": "gray", "target": "t"}}, ["t"])))
    code, _, err = run_cli(align_cli.main, capsys, "gray", "--params", str(params), "--tiles-dir",
                           str(tmp_path / "tiles"), "--out-dir", str(tmp_path / "out"), "--no-progress")
    line = one_error_line(err)
    assert code == 2 and "not a dataset folder" in line and "holiday.jpg" in line
    assert sorted(p.name for p in photos.iterdir()) == ["holiday.jpg"]


def test_film_never_writes_over_its_source_raster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from pipeline.stages import film as film_cli
    from tests.conftest import SAMPLE

    shutil.copytree(SAMPLE / "erie_2011", tmp_path / "sample" / "erie_2011")
    source = sorted((tmp_path / "sample" / "erie_2011").glob("*.jp2"))[0]
    before = snapshot(source)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"sources": {}, "aois": {}, "fetch": {}, "sample": {
        "data_dir": str(tmp_path / "sample"), "derived_dir": str(tmp_path / "derived")}}))
    code, _, err = run_cli(film_cli.main, capsys, "--params", str(params), "--out", str(source))
    assert code == 2 and "source raster" in one_error_line(err)
    assert snapshot(source) == before


def test_train_never_writes_into_its_dataset(datasets: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.stages import train as train_cli
    from tests.tiny_gan import write_params

    params = write_params(tmp_path / "params.yaml")
    dataset = datasets / "tiny"
    before = sorted(p.name for p in dataset.iterdir())
    code, _, err = run_cli(train_cli.main, capsys, "tiny", "--params", str(params), "--datasets",
                           str(datasets), "--out", str(dataset), "--no-progress", "--device", "cpu")
    assert code == 2 and "the dataset" in one_error_line(err)
    assert sorted(p.name for p in dataset.iterdir()) == before


# --------------------------------------------------------------------------- 2. foreign SQLite files
def test_harvest_out_equal_to_a_geopackage_aoi_is_refused_untouched(
        hostile: HostileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aoi = write_aoi(tmp_path / "area.gpkg")
    before = snapshot(aoi)
    code, _, err = run_cli(fetch_cli.main, capsys,
                           *harvest_args(hostile.base + "/ok.xml", aoi, aoi, tmp_path / "cache"))
    line = one_error_line(err)
    assert code == 2 and "--aoi" in line and "--out" in line
    assert snapshot(aoi) == before


def test_harvest_out_equal_to_the_tile_cache_is_refused_untouched(
        hostile: HostileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aoi = write_aoi(tmp_path / "area.gpkg")
    cache = tmp_path / "cache"
    code, _, err = run_cli(fetch_cli.main, capsys,
                           *harvest_args(hostile.base + "/ok.xml", aoi, tmp_path / "a.mbtiles", cache))
    assert code == 0, err
    with TileCache(cache) as c:
        cache_file = c.path
    before = snapshot(cache_file)
    code, _, err = run_cli(fetch_cli.main, capsys,
                           *harvest_args(hostile.base + "/ok.xml", aoi, cache_file, cache))
    assert code == 2 and "tile cache" in one_error_line(err)
    assert snapshot(cache_file) == before
    with sqlite3.connect(cache_file) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "tile_status" not in tables


def test_a_tile_store_never_writes_into_another_programs_sqlite_file(tmp_path: Path) -> None:
    gpkg = write_aoi(tmp_path / "someone_elses.gpkg")
    before = snapshot(gpkg)
    with pytest.raises(StoreError) as info:
        TileStore(gpkg)
    message = str(info.value)
    assert "not a Luminescence tile store" in message and "gpkg_" in message and "delete" not in message
    assert snapshot(gpkg) == before


# --------------------------------------------------------------------------- 3. deadlines
@pytest.mark.parametrize("route", ["/drip.xml", "/drip-headers.xml"])
def test_a_dripping_capabilities_document_hits_the_deadline(
        route: str, hostile: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    use_params(tmp_path, monkeypatch, request_deadline_s=DEADLINE_S, read_timeout_s=30, max_retries=0)
    code, _, err = run_cli(fetch_cli.main, capsys, "list-layers", hostile.base + route)
    line = one_error_line(err)
    assert code == 2 and f"within {DEADLINE_S} s" in line and "harvest.request_deadline_s" in line


@pytest.mark.parametrize("route", ["/drip-tile", "/drip-head-tile"])
def test_a_dripping_tile_hits_the_deadline(route: str, hostile: HostileServer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    use_params(tmp_path, monkeypatch, request_deadline_s=DEADLINE_S, read_timeout_s=30, max_retries=0)
    aoi = write_aoi(tmp_path / "area.gpkg", box(0.0002, 0.0002, 0.0010, 0.0010))  # one tile
    template = hostile.base + route + "/{z}/{x}/{y}.png"
    code, _, err = run_cli(fetch_cli.main, capsys, *harvest_args(
        template, aoi, tmp_path / "a.mbtiles", tmp_path / "cache", wmts=False))
    line = one_error_line(err)
    assert code == 2 and "1 of 1 tiles failed" in line and f"within {DEADLINE_S} s" in line
    with TileStore(tmp_path / "a.mbtiles", readonly=True) as s:
        assert s.counts()[TileStatus.FAILED] == 1 and not s.complete


def test_a_request_cut_by_its_deadline_leaves_the_session_usable(hostile: HostileServer) -> None:
    """The watchdog shuts the stalled connection down; the pool must not hand it out again."""
    from pipeline.geo import bounded_http

    session = bounded_http.make_session("test", 1)
    with pytest.raises(bounded_http.DeadlineExceeded):
        bounded_http.get(session, hostile.base + "/drip-tile/1/0/0.png", timeout=(5, 30), deadline_s=0.5,
                         max_bytes=1 << 20)
    resp, body = bounded_http.get(session, hostile.base + "/t/1/3/4.png", timeout=(5, 30), deadline_s=10,
                                  max_bytes=1 << 20)
    assert resp.status_code == 200 and body == noise_png(3 * 31 + 4)
    session.close()


@pytest.mark.parametrize("route", ["/gzip.xml", "/deflate.xml", "/raw-deflate.xml"])
def test_compressed_capabilities_are_inflated_by_the_bounded_reader(route: str,
                                                                   hostile: HostileServer) -> None:
    data = wmts_client.fetch_capabilities(hostile.base + route, user_agent="test", retries=0)
    assert data == hostile.ok_caps


def test_an_encoding_that_was_not_asked_for_is_refused(hostile: HostileServer) -> None:
    with pytest.raises(wmts_client.CapabilitiesError, match="Content-Encoding 'br' is not supported"):
        wmts_client.fetch_capabilities(hostile.base + "/brotli.xml", user_agent="test", retries=0)


# --------------------------------------------------------------------------- 4. gzip bomb
def test_a_gzip_bomb_capabilities_document_is_refused_in_bounded_memory(
        hostile: HostileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wmts_client, "MAX_CAPABILITIES_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(wmts_client.CapabilitiesError) as info:
            wmts_client.fetch_capabilities(hostile.base + "/bomb.xml", user_agent="test", retries=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "after decompression" in str(info.value) and "\n" not in str(info.value)
    assert peak < 32 << 20, f"{peak / 2 ** 20:.0f} MiB held for a 1 MiB limit"  # the bomb inflates to 200


def test_a_gzip_bomb_tile_is_refused(hostile: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    use_params(tmp_path, monkeypatch, max_retries=0)
    aoi = write_aoi(tmp_path / "area.gpkg", box(0.0002, 0.0002, 0.0010, 0.0010))
    code, _, err = run_cli(fetch_cli.main, capsys, *harvest_args(
        hostile.base + "/bomb-tile/{z}/{x}/{y}.png", aoi, tmp_path / "a.mbtiles", tmp_path / "c", wmts=False))
    assert code == 2 and "after decompression" in one_error_line(err)


# --------------------------------------------------------------------------- 5. XML parser limits
def test_capabilities_too_big_for_the_xml_parser_are_one_line(
        hostile: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    use_params(tmp_path, monkeypatch)
    code, _, err = run_cli(fetch_cli.main, capsys, "list-layers", hostile.base + "/huge.xml")
    line = one_error_line(err)
    assert code == 2 and hostile.base + "/huge.xml" in line and "XML" in line


# --------------------------------------------------------------------------- 6. zoom range
@pytest.mark.parametrize("zoom", [-1, 31])
def test_a_zoom_outside_the_tile_grid_is_one_line(zoom: int, hostile: HostileServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    use_params(tmp_path, monkeypatch)
    aoi = write_aoi(tmp_path / "area.gpkg")
    code, _, err = run_cli(fetch_cli.main, capsys, *harvest_args(
        hostile.base + "/t/{z}/{x}/{y}.png", aoi, tmp_path / "a.mbtiles", tmp_path / "c", wmts=False,
        zoom=zoom))
    line = one_error_line(err)
    assert code == 2 and f"--zoom {zoom}" in line and "0 to 30" in line
    assert not (tmp_path / "a.mbtiles").exists()


def test_capabilities_declaring_zoom_40_are_handled(hostile: HostileServer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    use_params(tmp_path, monkeypatch)
    url = hostile.base + "/zoom40.xml"
    code, out, err = run_cli(fetch_cli.main, capsys, "list-layers", url)
    assert code == 0 and "GoogleMapsCompatible (0-30)" in out, err
    aoi = write_aoi(tmp_path / "area.gpkg")
    code, _, err = run_cli(fetch_cli.main, capsys,
                           *harvest_args(url, aoi, tmp_path / "a.mbtiles", tmp_path / "c", zoom=40))
    line = one_error_line(err)
    assert code == 2 and "--zoom 40" in line and "0 to 30" in line


# --------------------------------------------------------------------------- 7. damaged stores
def test_colourising_a_store_with_an_undecodable_tile_skips_it(
        model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = [TileRecord(TileId(ZOOM, 131072, y), TileStatus.OK, noise_png(y)) for y in (131070, 131071)]
    bad = TileRecord(TileId(ZOOM, 131073, 131070), TileStatus.OK, b"<html>not an image</html>")
    source = write_store(tmp_path / "area.mbtiles", [*good, bad])
    out = tmp_path / "colour.mbtiles"
    code, stdout, err = colourise(capsys, model_file, source, out)
    assert code == 0, err
    assert "1 input tile could not be decoded" in stdout
    with TileStore(out, readonly=True) as s:
        assert set(s.tiles(TileStatus.OK)) == {r.tile for r in good}
        assert s.statuses()[bad.tile][0] is TileStatus.FAILED


def test_colourising_a_store_with_corrupt_pages_is_one_line(
        model_file: Path, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(store) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name='tiles'").fetchone()[0]
    with open(store, "r+b") as fh:  # overwrite the `tiles` table's root page with garbage
        fh.seek((root - 1) * page_size)
        fh.write(b"\xa5" * page_size)
    code, _, err = colourise(capsys, model_file, store, tmp_path / "colour.mbtiles")
    line = one_error_line(err)
    assert code == 2 and str(store) in line and "damaged" in line


# --------------------------------------------------------------------------- 8. unwritable outputs
def test_harvest_into_an_unwritable_place_is_one_line(hostile: HostileServer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("I am a file, not a folder\n")
    aoi = write_aoi(tmp_path / "area.gpkg")
    out = blocker / "sub" / "a.mbtiles"
    code, _, err = run_cli(fetch_cli.main, capsys,
                           *harvest_args(hostile.base + "/ok.xml", aoi, out, tmp_path / "c"))
    line = one_error_line(err)
    assert code == 2 and "--out" in line and str(blocker) in line and "not a folder" in line
    assert blocker.read_text() == "I am a file, not a folder\n"


@pytest.mark.parametrize("flag", ["--out", "--geotiff", "--preview"])
def test_colourise_into_an_unwritable_place_is_one_line(flag: str, model_file: Path, store: Path,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    bad = blocker / "result"
    out = bad if flag == "--out" else tmp_path / "colour.mbtiles"
    extra = [] if flag == "--out" else [flag, str(bad)]
    code, _, err = colourise(capsys, model_file, store, out, *extra)
    line = one_error_line(err)
    assert code == 2 and flag in line and "not a folder" in line
    assert not (tmp_path / "colour.mbtiles").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root may write into a read-only folder; the file-as-folder cases cover root")
def test_harvest_into_a_read_only_folder_is_one_line(hostile: HostileServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        aoi = write_aoi(tmp_path / "area.gpkg")
        code, _, err = run_cli(fetch_cli.main, capsys, *harvest_args(
            hostile.base + "/ok.xml", aoi, locked / "a.mbtiles", tmp_path / "c"))
        assert code == 2 and "not writable" in one_error_line(err)
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------- 9. mismatched model files
@pytest.mark.parametrize(("case", "expected"), [
    ("weights", "do not match"),
    ("options", "invalid options"),
    ("model", "unknown model"),
    ("network", "no network 'G'"),
])
def test_a_model_file_that_does_not_fit_itself_is_one_line(
        case: str, expected: str, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.pt"
    if case == "weights":  # options say ngf=16; the weights were made with ngf=4
        write_model(path, options=TinyOptions(ngf=16, ndf=4).model_dump())
    elif case == "options":
        write_model(path, options={**TinyOptions().model_dump(), "ngf": -3, "norm": "sparkly"})
    elif case == "model":
        write_model(path, model="no_such_gan")
    else:
        write_model(path, nets={"D": {}})
    code, _, err = colourise(capsys, path, store, tmp_path / "colour.mbtiles")
    line = one_error_line(err)
    assert code == 2 and str(path) in line and expected in line
    assert "--no-resume" not in line and "params.yaml" not in line and len(line) < 400
    assert not (tmp_path / "colour.mbtiles").exists()


# --------------------------------------------------------------------------- 10. CLI overrides
@pytest.mark.parametrize(("flag", "value"), [("--concurrency", "-1"), ("--concurrency", "1000"),
                                             ("--max-tiles", "0"), ("--max-retries", "-1"),
                                             ("--request-deadline-s", "0")])
def test_harvest_overrides_are_validated_like_params_yaml(flag: str, value: str, hostile: HostileServer,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    use_params(tmp_path, monkeypatch)
    aoi = write_aoi(tmp_path / "area.gpkg")
    code, _, err = run_cli(fetch_cli.main, capsys, *harvest_args(
        hostile.base + "/ok.xml", aoi, tmp_path / "a.mbtiles", tmp_path / "c", flag, value))
    line = one_error_line(err)
    assert code == 2 and f"`{flag}`" in line and value in line


# --------------------------------------------------------------------------- whole-world AOI
def test_a_whole_world_aoi_at_zoom_19_is_refused_before_densifying(
        hostile: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The tile count is estimated from the polygon's corners first: the costly steps (densifying
    the outline, the exact cover) never start. (Measured time and memory: docs/benchmarks.md.)"""
    from pipeline.geo import aoi as aoi_mod
    from pipeline.geo import tiles as tiles_mod

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the estimate should have refused this AOI first")

    monkeypatch.setattr(aoi_mod, "_densify_step", must_not_run)
    monkeypatch.setattr(tiles_mod, "_cover_parts", must_not_run)
    use_params(tmp_path, monkeypatch)
    world = write_aoi(tmp_path / "world.gpkg", box(-180, -85, 180, 85))
    code, _, err = run_cli(fetch_cli.main, capsys, *harvest_args(
        hostile.base + "/t/{z}/{x}/{y}.png", world, tmp_path / "w.mbtiles", tmp_path / "c", wmts=False,
        zoom=19))
    line = one_error_line(err)
    assert code == 2 and "at least" in line and "20000" in line and "zoom 19" in line
    assert not (tmp_path / "w.mbtiles").exists()


# --------------------------------------------------------------------------- other hosts
def test_tiles_on_another_host_are_harvested_with_a_warning(
        hostile: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    use_params(tmp_path, monkeypatch)
    aoi = write_aoi(tmp_path / "area.gpkg")
    code, _, err = run_cli(fetch_cli.main, capsys, *harvest_args(
        hostile.base + "/foreign.xml", aoi, tmp_path / "a.mbtiles", tmp_path / "c"))
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "localhost" in warnings[0] and "127.0.0.1" in warnings[0]


def test_a_redirect_to_another_host_is_followed_with_a_warning(
        hostile: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    use_params(tmp_path, monkeypatch)
    code, out, err = run_cli(fetch_cli.main, capsys, "list-layers", hostile.base + "/moved.xml")
    assert code == 0 and "l " in out, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "redirect" in warnings[0] and "localhost" in warnings[0]


def test_gzip_helper_is_a_real_bomb() -> None:
    """The bomb used above really is one (so the memory test tests something)."""
    bomb = gzip_bomb(8)
    assert len(bomb) < 64 * 1024 and len(gzip.decompress(bomb)) == 8 << 20
