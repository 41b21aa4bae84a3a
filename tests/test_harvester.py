"""The harvester engine against a tiny scripted tile server on 127.0.0.1 (an ephemeral port).

Each test scripts exactly what the server answers, so retries, Retry-After, quoting of server
messages, empty tiles and refusals are checked precisely. Integration with the project's own
WMTS server (fault injection, SIGKILL, bad inputs) is in tests/test_fetch_cli.py.
"""

from __future__ import annotations

import functools
import io
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import HarvestConfig
from pipeline.geo.harvester import (
    HarvestFailedError,
    RateLimiter,
    StoreMismatchError,
    TileFault,
    backoff_delay,
    classify_tile,
    harvest,
    harvest_to_store,
    parse_retry_after,
)
from pipeline.geo.tilecache import TileCache
from pipeline.geo.tiles import TileId
from pipeline.geo.tilestore import TileStatus, TileStore
from pipeline.geo.wmts_client import ServiceUnreachableError, xyz_source
from tests.loopback_http import LoopbackServer, send

# --------------------------------------------------------------------------- tile bytes


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=256)
def tile_png(tile: TileId) -> bytes:
    rng = np.random.default_rng(tile.x * 7919 + tile.y)
    yy, xx = np.mgrid[0:256, 0:256]
    arr = np.stack([(xx + tile.x) % 256, (yy + tile.y) % 256, (xx ^ yy) % 256], -1).astype(np.uint8)
    arr = np.clip(arr + rng.integers(0, 40, arr.shape), 0, 255).astype(np.uint8)
    return png_bytes(arr)


def bomb_png(side: int = 8192) -> bytes:
    """A real decompression bomb: a few kB of PNG that decodes to side x side pixels."""
    raw = (b"\x00" + b"\x00" * (side // 8)) * side  # filter byte + one row of 1-bit pixels
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


TRANSPARENT = png_bytes(np.zeros((256, 256, 4), np.uint8))
EXCEPTION_XML = (b'<?xml version="1.0" encoding="UTF-8"?><ExceptionReport xmlns="http://www.opengis.net/ows/1.1"'
                 b' version="1.1.0"><Exception exceptionCode="NoApplicableCode"><ExceptionText>tile backend '
                 b'overloaded</ExceptionText></Exception></ExceptionReport>')


# --------------------------------------------------------------------------- scripted server
Reply = tuple[int, dict[str, str], bytes] | str  # (status, headers, body) or "truncate" / "slow"


class ScriptedServer:
    """Serves /{z}/{x}/{y}.png; `script[tile]` lists replies used in order, then the real tile."""

    def __init__(self, slow_s: float = 1.5) -> None:
        self.script: dict[TileId, list[Reply]] = {}
        self.requests: Counter[TileId] = Counter()
        self.lock = threading.Lock()
        self.slow_s = slow_s
        self.http = LoopbackServer(self._answer)
        self.template = f"{self.http.base}/{{z}}/{{x}}/{{y}}.png"

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        z, x, y = (int(v) for v in h.path.strip("/").split(".")[0].split("/"))
        tile = TileId(z, x, y)
        with self.lock:
            self.requests[tile] += 1
            queue = self.script.get(tile)
            reply: Reply = queue.pop(0) if queue else (200, {"Content-Type": "image/png"}, tile_png(tile))
        if reply == "slow":
            time.sleep(self.slow_s)
            reply = (200, {"Content-Type": "image/png"}, tile_png(tile))
        if reply == "truncate":
            body = tile_png(tile)
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        assert not isinstance(reply, str)
        status, headers, body = reply
        send(h, status, body, headers)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    yield s
    s.close()


# Generous timeouts: the machine may be busy; only the slow-response test uses a short one.
FAST = HarvestConfig(concurrency=4, requests_per_second=None, max_retries=4, backoff_base_s=0.01,
                     backoff_max_s=0.05, connect_timeout_s=5.0, read_timeout_s=10.0)
TILES = [TileId(18, x, y) for x in range(70000, 70004) for y in range(90000, 90004)]  # 16 tiles


def run(server: ScriptedServer, tmp_path: Path, cfg: HarvestConfig = FAST, tiles: list[TileId] = TILES,
        name: str = "s", cache: bool = False) -> tuple[dict[TileId, tuple[TileStatus, str]], object]:
    src = xyz_source(server.template)
    with TileStore(tmp_path / f"{name}.mbtiles") as store:
        if cache:
            with TileCache(tmp_path / "cache") as c:
                report = harvest(src, tiles, store, cfg, cache=c, label=name, progress=False, seed=0)
        else:
            report = harvest(src, tiles, store, cfg, label=name, progress=False, seed=0)
        return store.statuses(), report


# --------------------------------------------------------------------------- pure functions
def test_empty_tiles_are_detected() -> None:
    kw = {"tile_size": 256, "empty_max_bytes": 1000}
    assert classify_tile(TRANSPARENT, "image/png", **kw)[0] is TileStatus.EMPTY
    assert len(TRANSPARENT) < 1000  # like Sinica's ~936-byte tile: tiny AND transparent
    status, why = classify_tile(TRANSPARENT, "image/png", tile_size=256, empty_max_bytes=0)
    assert (status, why) == (TileStatus.EMPTY, "empty: fully transparent")
    white = png_bytes(np.full((256, 256, 3), 255, np.uint8))
    status, why = classify_tile(white, "image/png", tile_size=256, empty_max_bytes=0)
    assert status is TileStatus.EMPTY and "single colour" in why
    data = tile_png(TileId(1, 0, 0))
    assert classify_tile(data, "image/png", **kw) == (TileStatus.OK, "")
    status, why = classify_tile(data, "image/png", tile_size=256, empty_max_bytes=len(data))
    assert status is TileStatus.EMPTY and "tiny" in why
    # One differing pixel is data, not an empty tile.
    almost = np.full((256, 256, 3), 255, np.uint8)
    almost[100, 100] = (0, 0, 0)
    assert classify_tile(png_bytes(almost), "image/png", tile_size=256, empty_max_bytes=0)[0] is TileStatus.OK


def test_bad_bodies_are_faults() -> None:
    kw = {"tile_size": 256, "empty_max_bytes": 1000}
    with pytest.raises(TileFault, match="NoApplicableCode: tile backend overloaded") as err:
        classify_tile(EXCEPTION_XML, "application/xml", **kw)
    assert err.value.retry
    with pytest.raises(TileFault, match="Service Unavailable"):
        classify_tile(b"<html><title>Service Unavailable</title></html>", "text/html", **kw)
    with pytest.raises(TileFault, match="decompression bomb") as err:
        classify_tile(bomb_png(), "image/png", **kw)
    assert not err.value.retry
    with pytest.raises(TileFault, match="expected 256x256") as err:
        classify_tile(png_bytes(np.zeros((512, 512, 3), np.uint8) + 9), "image/png", **kw)
    assert not err.value.retry
    with pytest.raises(TileFault, match="not a decodable image") as err:
        classify_tile(tile_png(TileId(1, 0, 0))[:500], "image/png", **kw)
    assert err.value.retry
    with pytest.raises(TileFault, match="content type"):
        classify_tile(tile_png(TileId(1, 0, 0)), "application/zip", **kw)


def test_parse_retry_after() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-3", now) is None


def test_backoff_full_jitter_is_bounded() -> None:
    import random

    rng = random.Random(1)
    for attempt in range(10):
        d = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        cap = min(30.0, 0.5 * 2 ** attempt)
        assert min(d) >= 0.0 and max(d) <= cap
        assert max(d) > 0.5 * cap  # spread over the whole interval (full jitter)


def test_rate_limiter_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(4.0, clock=lambda: now[0])
    waits = [limiter.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    now[0] = 10.0  # idle time does not accumulate beyond the bucket
    assert limiter.reserve() == 0.0
    assert limiter.reserve() == pytest.approx(0.25)
    limiter.pause(3.0)
    assert limiter.reserve() == pytest.approx(3.0)
    unlimited = RateLimiter(None, clock=lambda: now[0])
    assert unlimited.reserve() == 0.0
    unlimited.pause(2.0)
    assert unlimited.reserve() == pytest.approx(2.0)


# --------------------------------------------------------------------------- engine
def test_clean_harvest_keeps_original_bytes(server: ScriptedServer, tmp_path: Path) -> None:
    _statuses, report = run(server, tmp_path)
    assert report.fetched == 16 and report.failed == 0 and report.requests == 16
    with TileStore(tmp_path / "s.mbtiles", readonly=True) as store:
        for t in TILES:
            assert store.get(t) == tile_png(t)  # byte-identical: no recompression
    assert "16 tiles — 16 fetched, 0 from cache, 0 empty, 0 failed" in report.summary()


def test_retries_recover_from_transient_faults(server: ScriptedServer, tmp_path: Path) -> None:
    html = (503, {"Content-Type": "text/html"}, b"<html><title>busy</title></html>")
    server.script = {
        TILES[0]: [(500, {}, b"oops"), (502, {}, b"")],
        TILES[1]: ["truncate"],
        TILES[2]: ["truncate"],
        TILES[3]: [(200, {"Content-Type": "application/xml"}, EXCEPTION_XML)],
        TILES[4]: [html, html],
        TILES[5]: [(200, {"Content-Type": "image/png"}, tile_png(TILES[5])[:300])],
    }
    statuses, report = run(server, tmp_path)
    assert all(s is TileStatus.OK for s, _ in statuses.values()), statuses
    assert report.fetched == 16
    assert [server.requests[t] for t in TILES[:6]] == [3, 2, 2, 2, 3, 2]
    assert report.requests == server.total == 16 + 2 + 1 + 1 + 1 + 2 + 1


def test_slow_response_times_out_and_is_retried(server: ScriptedServer, tmp_path: Path) -> None:
    server.slow_s = 2.0
    server.script = {TILES[0]: ["slow"]}
    cfg = FAST.model_copy(update={"read_timeout_s": 0.5})
    statuses, _ = run(server, tmp_path, cfg, tiles=TILES[:1])
    assert statuses[TILES[0]][0] is TileStatus.OK and server.requests[TILES[0]] == 2


def test_retry_after_is_honoured_and_capped(server: ScriptedServer, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"backoff_max_s": 0.4, "concurrency": 1})
    server.script = {TILES[0]: [(429, {"Retry-After": "1"}, b"slow down")],
                     TILES[1]: [(503, {"Retry-After": "3600"}, b"maintenance")]}
    t0 = time.monotonic()
    statuses, _ = run(server, tmp_path, cfg, tiles=TILES[:2])
    elapsed = time.monotonic() - t0
    assert all(s is TileStatus.OK for s, _ in statuses.values())
    # 1 s and 3600 s are both capped at backoff_max_s = 0.4 s: waited twice, never an hour.
    assert 0.8 <= elapsed < 5.0


def test_persistent_failures_are_recorded_with_quoted_reason(server: ScriptedServer, tmp_path: Path) -> None:
    exc = (500, {"Content-Type": "application/xml"}, EXCEPTION_XML)
    server.script = {TILES[0]: [exc] * 10,
                     TILES[1]: [(404, {"Content-Type": "text/html"},
                                 b"<html><title>404 Not Found</title></html>")] * 10,
                     TILES[2]: [(200, {"Content-Type": "image/png"}, bomb_png())] * 10}
    statuses, report = run(server, tmp_path)
    assert report.failed == 3
    s0, why0 = statuses[TILES[0]]
    assert s0 is TileStatus.FAILED and "'NoApplicableCode: tile backend overloaded'" in why0
    assert "after 5 attempts" in why0 and server.requests[TILES[0]] == 5
    assert statuses[TILES[1]] == (TileStatus.FAILED, "HTTP 404: '404 Not Found'")
    assert server.requests[TILES[1]] == 1  # not retried: the tile does not exist
    s2, why2 = statuses[TILES[2]]
    assert s2 is TileStatus.FAILED and "decompression bomb" in why2
    assert server.requests[TILES[2]] == 1  # refused once, not retried
    with TileStore(tmp_path / "s.mbtiles", readonly=True) as store:
        assert store.get(TILES[2]) is None and store.counts()[TileStatus.OK] == 13


def test_ogc_exception_codes_decide_retry(server: ScriptedServer, tmp_path: Path) -> None:
    def report(code: str) -> tuple[int, dict[str, str], bytes]:
        return (400, {"Content-Type": "application/xml"}, EXCEPTION_XML.replace(b"NoApplicableCode", code))

    server.script = {TILES[0]: [report(b"NoApplicableCode")],  # a server-side failure: retried
                     TILES[1]: [report(b"InvalidParameterValue")] * 10,  # our request is wrong: not retried
                     TILES[2]: [report(b"TileOutOfRange")]}  # nothing there: empty
    statuses, _ = run(server, tmp_path)
    assert statuses[TILES[0]][0] is TileStatus.OK and server.requests[TILES[0]] == 2
    why = "HTTP 400: 'InvalidParameterValue: tile backend overloaded'"
    assert statuses[TILES[1]] == (TileStatus.FAILED, why)
    assert server.requests[TILES[1]] == 1
    assert statuses[TILES[2]][0] is TileStatus.EMPTY and server.requests[TILES[2]] == 1


def test_oversized_body_is_refused(server: ScriptedServer, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.geo.harvester as harvester

    limit = 2 * len(tile_png(TILES[1]))
    monkeypatch.setattr(harvester, "MAX_BODY_BYTES", limit)
    server.script = {TILES[0]: [(200, {"Content-Type": "image/png"}, b"\0" * (2 * limit))]}
    statuses, _ = run(server, tmp_path, tiles=TILES[:2])
    assert statuses[TILES[0]] == (TileStatus.FAILED, f"response of {2 * limit} bytes refused (limit {limit})")
    assert statuses[TILES[1]][0] is TileStatus.OK and server.requests[TILES[0]] == 1


def test_empty_tiles_recorded_not_failed(server: ScriptedServer, tmp_path: Path) -> None:
    server.script = {TILES[0]: [(200, {"Content-Type": "image/png"}, TRANSPARENT)],
                     TILES[1]: [(204, {}, b"")]}
    statuses, report = run(server, tmp_path)
    assert statuses[TILES[0]][0] is TileStatus.EMPTY and statuses[TILES[1]][0] is TileStatus.EMPTY
    assert report.empty == 2 and report.failed == 0 and report.fetched == 14


def test_rerun_fetches_only_failed_and_missing(server: ScriptedServer, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"max_retries": 0})
    server.script = {TILES[0]: [(500, {}, b"")], TILES[1]: [(500, {}, b"")]}
    run(server, tmp_path, cfg, tiles=TILES[:8])
    assert server.total == 8
    server.requests.clear()
    statuses, report = run(server, tmp_path, cfg, tiles=TILES)  # bigger AOI, same store
    assert server.total == 2 + 8 and set(server.requests) == {TILES[0], TILES[1], *TILES[8:]}
    assert report.stored == 6 and report.fetched == 10
    assert all(s is TileStatus.OK for s, _ in statuses.values())


def test_cache_shared_across_stores(server: ScriptedServer, tmp_path: Path) -> None:
    server.script = {TILES[0]: [(200, {"Content-Type": "image/png"}, TRANSPARENT)]}
    first, _ = run(server, tmp_path, name="a", cache=True)
    server.requests.clear()
    second, report = run(server, tmp_path, name="b", cache=True)  # another store, same tiles
    assert server.total == 0
    assert report.cached == 15 and report.empty == 1 and report.fetched == 0
    assert first == second
    with TileStore(tmp_path / "a.mbtiles", readonly=True) as a, \
            TileStore(tmp_path / "b.mbtiles", readonly=True) as b:
        assert dict(a.iter_data()) == dict(b.iter_data())


def test_failures_are_not_cached(server: ScriptedServer, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"max_retries": 0})
    server.script = {TILES[0]: [(500, {}, b"")]}
    run(server, tmp_path, cfg, name="a", cache=True)
    server.requests.clear()
    statuses, _ = run(server, tmp_path, cfg, name="b", cache=True)
    assert dict(server.requests) == {TILES[0]: 1}
    assert statuses[TILES[0]][0] is TileStatus.OK


def test_rate_cap_limits_request_rate(server: ScriptedServer, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"requests_per_second": 20.0, "concurrency": 8})
    t0 = time.monotonic()
    run(server, tmp_path, cfg, tiles=TILES[:11])
    assert time.monotonic() - t0 >= 0.5  # 11 requests at 20/s need at least 10 intervals


def test_unreachable_server_aborts_quickly(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = xyz_source(f"http://127.0.0.1:{port}/{{z}}/{{x}}/{{y}}.png")
    t0 = time.monotonic()
    with TileStore(tmp_path / "u.mbtiles") as store, pytest.raises(ServiceUnreachableError) as err:
        harvest(src, TILES, store, FAST, label="u", progress=False)
    assert "connection refused" in str(err.value) and f"127.0.0.1:{port}" in str(err.value)
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------- store-level run
def store_run(server: ScriptedServer, path: Path, cfg: HarvestConfig = FAST, tiles: list[TileId] = TILES,
              **kw: object) -> object:
    args: dict[str, object] = {"label": "t", "aoi": "test_aoi", "progress": False,
                               "cache_dir": path.parent / "cache"}
    args.update(kw)
    return harvest_to_store(xyz_source(server.template), tiles, path, cfg, **args)  # type: ignore[arg-type]


def test_failure_threshold_names_tiles_and_keeps_store_incomplete(server: ScriptedServer,
                                                                  tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"max_retries": 0})
    server.script = {t: [(500, {"Content-Type": "text/plain"}, b"disk full")] for t in TILES[:7]}
    path = tmp_path / "t.mbtiles"
    with pytest.raises(HarvestFailedError) as err:
        store_run(server, path, cfg)
    msg = str(err.value)
    assert "7 of 16 tiles failed" in msg and "HTTP 500: 'disk full'" in msg
    assert msg.count("18/") == 5 and "re-running retries only the failed tiles" in msg
    with TileStore(path, readonly=True) as store:
        assert not store.complete and store.counts()[TileStatus.FAILED] == 7
    server.requests.clear()
    store_run(server, path, cfg)  # the re-run retries exactly the failed tiles
    assert set(server.requests) == set(TILES[:7]) and server.total == 7
    with TileStore(path, readonly=True) as store:
        meta = store.metadata
        assert store.complete and store.counts()[TileStatus.OK] == 16
    assert meta["minzoom"] == meta["maxzoom"] == "18" and meta["aoi"] == "test_aoi"
    assert meta["format"] == "png" and meta["tile_size"] == "256" and meta["synthetic"] == "false"
    w, s, e, n = (float(v) for v in meta["bounds"].split(","))
    assert w < e and s < n
    assert "harvested_at" not in meta  # a timestamp would make every re-harvest a different file


def test_failures_within_threshold_complete(server: ScriptedServer, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"max_retries": 0, "max_failed_fraction": 0.1})
    server.script = {TILES[0]: [(500, {}, b"")]}
    store_run(server, tmp_path / "t.mbtiles", cfg)
    with TileStore(tmp_path / "t.mbtiles", readonly=True) as store:
        assert store.complete and store.counts()[TileStatus.FAILED] == 1


def test_refuses_to_mix_a_different_harvest(server: ScriptedServer, tmp_path: Path) -> None:
    path = tmp_path / "t.mbtiles"
    store_run(server, path)
    with pytest.raises(StoreMismatchError, match=r"layer|aoi") as err:
        store_run(server, path, aoi="elsewhere")
    assert "aoi 'test_aoi' (new: 'elsewhere')" in str(err.value)
    with pytest.raises(StoreMismatchError, match="minzoom '18'"):
        store_run(server, path, tiles=[TileId(17, 35000, 45000)])
    server.requests.clear()
    store_run(server, path)  # the same harvest resumes: nothing to fetch
    assert server.total == 0


def test_fully_cached_reharvest_makes_no_requests(server: ScriptedServer, tmp_path: Path) -> None:
    store_run(server, tmp_path / "a.mbtiles")
    server.requests.clear()
    report = store_run(server, tmp_path / "b.mbtiles")
    assert server.total == 0 and report.cached == 16  # type: ignore[attr-defined]




# --------------------------------------------------------------------------- the cache itself
def test_cache_is_thread_safe_persistent_and_refuses_failures(tmp_path: Path) -> None:
    from pipeline.geo.tilecache import CacheError, SourceKey
    from pipeline.geo.tilestore import TileRecord

    key = SourceKey("http://x/wmts", "layer", "GoogleMapsCompatible", "image/png")
    other = SourceKey("http://x/wmts", "layer", "GoogleMapsCompatible", "image/jpeg")

    def writer(cache: TileCache, col: int) -> None:
        for y in range(20):
            t = TileId(18, col, y)
            cache.put_many(key, [(TileRecord(t, TileStatus.OK, tile_png(t)), tile_png(t))])

    with TileCache(tmp_path / "c") as cache:
        threads = [threading.Thread(target=writer, args=(cache, col)) for col in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        with pytest.raises(ValueError, match="only ok/empty"):
            cache.put_many(key, [(TileRecord(TileId(18, 9, 9), TileStatus.FAILED, reason="x"), b"")])
    with TileCache(tmp_path / "c") as cache:  # reopened: everything is still there
        assert cache.count(key) == 80 and cache.count(other) == 0
        assert len(cache.statuses(key, 18)) == 80 and cache.statuses(key, 17) == {}
        (rec,) = cache.get_many(key, [TileId(18, 2, 3)])
        assert rec.data == tile_png(TileId(18, 2, 3)) and rec.status is TileStatus.OK
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tiles.sqlite").write_bytes(b"garbage" * 1000)
    with pytest.raises(CacheError, match="delete"):
        TileCache(bad)
