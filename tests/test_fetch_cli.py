"""The fetch CLI and harvester end to end, against the project's own WMTS server on 127.0.0.1.

Fault injection (the store must be identical to a fault-free harvest), SIGKILL mid-harvest and
resume (only missing tiles requested), every bad input as one line, the DVC stage entry, cached
re-harvests, XYZ and list-layers.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import pytest
import yaml
from shapely.geometry import LineString, box

from pipeline.core.config import HarvestConfig, SampleConfig, load_params
from pipeline.geo.harvest_plan import harvest_aoi, wmts_target
from pipeline.geo.pixels import decode_tile
from pipeline.geo.tilecache import SourceKey, TileCache
from pipeline.geo.tilestore import TileStatus, TileStore
from pipeline.server.bundled import serve_sample
from pipeline.server.faults import FaultPlan
from pipeline.server.httpd import WmtsServer
from pipeline.stages.fetch import main
from tests.conftest import ROOT

LAYER = "erie_2021"
ZOOM = 18
# About 30 z18 tiles inside erie_2021 (footprint -78.93728 42.59040 -78.91493 42.60144).
SMALL_BOX = box(-78.9330, 42.5930, -78.9250, 42.5975)


@pytest.fixture(scope="module")
def sample_cfg() -> SampleConfig:
    params = load_params(ROOT / "params.yaml")
    return SampleConfig(data_dir=str(ROOT / params.sample.data_dir),
                        derived_dir=str(ROOT / params.sample.derived_dir), film=params.sample.film)


@contextmanager
def wmts(sample_cfg: SampleConfig, faults: FaultPlan | None = None) -> Iterator[WmtsServer]:
    with serve_sample(sample_cfg, faults, prepare=[LAYER]) as server:
        yield server


def write_aoi(path: Path, geometry: object = SMALL_BOX, crs: str = "EPSG:4326") -> Path:
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[geometry], crs=crs).to_file(path)
    return path


@pytest.fixture
def aoi(tmp_path: Path) -> Path:
    return write_aoi(tmp_path / "small.shp")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def harvest_args(server: WmtsServer, aoi: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["harvest", "--wmts", server.capabilities_url, "--layer", LAYER, "--aoi", str(aoi),
            "--zoom", str(ZOOM), "--out", str(out), "--cache-dir", str(cache), "--rps", "0", "--quiet",
            *extra]


def store_content(path: Path) -> tuple[dict[object, object], dict[object, bytes]]:
    with TileStore(path, readonly=True) as store:
        statuses = {t: s for t, (s, _) in store.statuses().items()}
        return statuses, dict(store.iter_data())


# --------------------------------------------------------------------------- faults
def test_fault_injection_gives_identical_store(sample_cfg: SampleConfig, aoi: Path, tmp_path: Path) -> None:
    from pipeline.geo.aoi import read_aoi

    region = read_aoi(aoi)
    clean_cfg = HarvestConfig(concurrency=4, requests_per_second=None, cache_dir=str(tmp_path / "c0"))
    with wmts(sample_cfg) as server:
        target = wmts_target(server.capabilities_url, LAYER, ZOOM, clean_cfg)
        harvest_aoi(target, region, ZOOM, tmp_path / "clean.mbtiles", clean_cfg, label="clean",
                    progress=False)
        clean_requests = server.total_tile_requests

    faults = FaultPlan(error_rate=0.25, throttle_rate=0.1, unavailable_rate=0.05, truncate_rate=0.1,
                       slow_rate=0.05, slow_s=3.0, exception_rate=0.15, retry_after_s=1, faults_per_tile=2,
                       seed=7)
    # Small backoff cap so Retry-After: 1 costs 0.05 s here; read timeout below slow_s.
    faulty_cfg = HarvestConfig(concurrency=4, requests_per_second=None, max_retries=6, backoff_base_s=0.01,
                               backoff_max_s=0.05, read_timeout_s=1.0, cache_dir=str(tmp_path / "c1"))
    with wmts(sample_cfg, faults) as server:
        target = wmts_target(server.capabilities_url, LAYER, ZOOM, faulty_cfg)
        report = harvest_aoi(target, region, ZOOM, tmp_path / "faulty.mbtiles", faulty_cfg, label="faulty",
                             progress=False)
        counts = server.tile_requests()
    n = report.total
    assert 20 <= n <= 60 and clean_requests == n
    # The server really misbehaved: at least one fault for over 20% of requests per tile, on average.
    kinds = {faults.fault_for(LAYER, *k[1:], attempt) for k, c in counts.items() for attempt in range(c)}
    assert {"error", "throttle", "truncate", "exception"} <= kinds
    assert sum(counts.values()) >= 1.2 * n
    assert report.failed == 0
    clean_status, clean_data = store_content(tmp_path / "clean.mbtiles")
    faulty_status, faulty_data = store_content(tmp_path / "faulty.mbtiles")
    assert faulty_status == clean_status and faulty_data == clean_data  # identical, byte for byte
    for data in faulty_data.values():
        assert decode_tile(data).shape == (256, 256, 4)  # no corrupt tile
    with TileStore(tmp_path / "faulty.mbtiles", readonly=True) as store:
        assert store.complete


def test_unchanged_harvest_gives_a_byte_identical_store(sample_cfg: SampleConfig, aoi: Path,
                                                        tmp_path: Path) -> None:
    """The same harvest three ways (one worker; four workers with faults reordering the answers;
    all from the tile cache) gives the same file, byte for byte: DVC sees an unchanged output."""
    from pipeline.geo.aoi import read_aoi

    region = read_aoi(aoi)
    fast = {"requests_per_second": None, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retries": 6}
    faults = FaultPlan(error_rate=0.3, throttle_rate=0.1, truncate_rate=0.1, faults_per_tile=2, seed=11)
    runs = [(HarvestConfig(concurrency=1, cache_dir=str(tmp_path / "c1"), **fast), None),
            (HarvestConfig(concurrency=4, cache_dir=str(tmp_path / "c2"), **fast), faults),
            (HarvestConfig(concurrency=2, cache_dir=str(tmp_path / "c1"), **fast), None)]
    outputs = []
    for i, (cfg, plan) in enumerate(runs):
        with wmts(sample_cfg, plan) as server:
            target = wmts_target(server.capabilities_url, LAYER, ZOOM, cfg, service_key="sample:test")
            report = harvest_aoi(target, region, ZOOM, tmp_path / f"{i}.mbtiles", cfg, label="same",
                                 progress=False)
            requests = server.total_tile_requests
        assert report.failed == 0
        outputs.append((tmp_path / f"{i}.mbtiles").read_bytes())
        if i == 1:
            assert requests > report.total  # the faults did happen (and were retried)
        if i == 2:
            assert requests == 0 and report.cached == report.total - report.empty
    assert outputs[0] == outputs[1] == outputs[2]
    with TileStore(tmp_path / "0.mbtiles", readonly=True) as store:
        assert store.complete and store.counts()[TileStatus.OK] > 0


# --------------------------------------------------------------------------- SIGKILL and resume
def test_sigkill_then_resume_fetches_only_missing(sample_cfg: SampleConfig, aoi: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = tmp_path / "k.mbtiles", tmp_path / "cache"
    with wmts(sample_cfg, FaultPlan(latency_s=0.15)) as server:
        args = harvest_args(server, aoi, out, cache, "--concurrency", "2")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages.fetch", *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            committed = 0
            while time.monotonic() < deadline and proc.poll() is None:
                committed = _count_ok(out)
                if committed >= 4:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the harvest finished before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert committed >= 4
        with TileStore(out, readonly=True) as store:
            assert not store.complete
            done = {t for t, (s, _) in store.statuses().items() if s is not TileStatus.FAILED}
        with TileCache(cache) as c:
            key = SourceKey(server.capabilities_url, LAYER, "GoogleMapsCompatible", "image/png")
            cached = {(x, y) for x, y in c.statuses(key, ZOOM)}
        before = server.total_tile_requests

        code, stdout, err = cli(capsys, *args)
        assert code == 0, err
        with TileStore(out, readonly=True) as store:
            assert store.complete and store.counts()[TileStatus.FAILED] == 0
            cover = set(store.tiles(None))
        missing = {t for t in cover if t not in done and (t.x, t.y) not in cached}
        assert 0 < len(missing) < len(cover)
        requested = server.tile_requests()
        # Run 2 asked the server for exactly the tiles that were neither stored nor cached.
        assert server.total_tile_requests - before == len(missing)
        assert all(requested[(LAYER, t.z, t.x, t.y)] >= 1 for t in missing)
        assert f"{len(cover)} tiles" in stdout


def _count_ok(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as db:
            return db.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    except sqlite3.Error:
        return 0


# --------------------------------------------------------------------------- cache, XYZ, listing
def test_fully_cached_reharvest_makes_no_tile_requests(sample_cfg: SampleConfig, aoi: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with wmts(sample_cfg) as server:
        code, _, err = cli(capsys, *harvest_args(server, aoi, tmp_path / "a.mbtiles", tmp_path / "cache"))
        assert code == 0, err
        before = server.total_tile_requests
        code, out, err = cli(capsys, *harvest_args(server, aoi, tmp_path / "b.mbtiles", tmp_path / "cache"))
        assert code == 0, err
        assert server.total_tile_requests == before  # zero HTTP tile requests
    assert " 0 fetched, " in out and "from cache" in out
    assert store_content(tmp_path / "a.mbtiles") == store_content(tmp_path / "b.mbtiles")


def test_xyz_legacy_endpoint_matches_wmts(sample_cfg: SampleConfig, aoi: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with wmts(sample_cfg) as server:
        code, _, err = cli(capsys, *harvest_args(server, aoi, tmp_path / "w.mbtiles", tmp_path / "c1"))
        assert code == 0, err
        template = server.base_url + "/file-exists.php?img={layer}-{ext}-{z}-{x}-{y}"
        code, _, err = cli(capsys, "harvest", "--xyz", template, "--layer", LAYER, "--aoi", str(aoi),
                           "--zoom", str(ZOOM), "--out", str(tmp_path / "x.mbtiles"), "--cache-dir",
                           str(tmp_path / "c2"), "--rps", "0", "--quiet")
        assert code == 0, err
    assert store_content(tmp_path / "w.mbtiles") == store_content(tmp_path / "x.mbtiles")


def test_list_layers(sample_cfg: SampleConfig, capsys: pytest.CaptureFixture[str]) -> None:
    with wmts(sample_cfg) as server:
        code, out, err = cli(capsys, "list-layers", server.capabilities_url)
    assert code == 0, err
    lines = out.splitlines()
    film = next(line for line in lines if line.startswith("erie_2011_film"))
    assert "SYNTHETIC" in film
    erie = next(line for line in lines if line.startswith("erie_2021 "))
    assert "png, jpg" in erie and "GoogleMapsCompatible" in erie and "-78.9" in erie
    ids = {line.split()[0] for line in lines[3:]}
    assert {"columbia_2010", "erie_2011", "erie_2021", "erie_2011_film"} <= ids


def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for args in ([], ["list-layers"], ["harvest"], ["stage"]):
        code, out, _ = cli(capsys, *args, "--help")
        assert code == 0 and "usage:" in out


# --------------------------------------------------------------------------- bad input
def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _line_aoi(tmp: Path) -> Path:
    return write_aoi(tmp / "line.shp", LineString([(-78.93, 42.59), (-78.92, 42.60)]))


def _no_prj(tmp: Path) -> Path:
    path = write_aoi(tmp / "noprj.shp")
    path.with_suffix(".prj").unlink()
    return path


def _empty(tmp: Path) -> Path:
    frame = gpd.GeoDataFrame({"name": []}, geometry=gpd.GeoSeries([], crs="EPSG:4326"), crs="EPSG:4326")
    frame.to_file(tmp / "empty.shp", geometry_type="Polygon")
    return tmp / "empty.shp"


def _taipei(tmp: Path) -> Path:
    return write_aoi(tmp / "taipei.shp", box(121.50, 25.00, 121.52, 25.02))


BAD_INPUTS = [
    ("missing .prj", _no_prj, [], "has no .prj"),
    ("empty shapefile", _empty, [], "has no features"),
    ("line geometry", _line_aoi, [], "must be polygons"),
    ("AOI outside the layer", _taipei, [], "lies outside layer 'erie_2021'"),
    ("unknown layer", None, ["--layer", "erie_2012"], "did you mean"),
    ("zoom out of range", None, ["--zoom", "23"], "available zooms are 0-20"),
    ("cover above max_tiles", None, ["--max-tiles", "5"], "more than the limit of 5"),
]


@pytest.mark.parametrize("case, make_aoi, extra, expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line(case: str, make_aoi: object, extra: list[str], expected: str,
                               sample_cfg: SampleConfig, aoi: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    path = make_aoi(tmp_path) if callable(make_aoi) else aoi
    out = tmp_path / "bad.mbtiles"
    with wmts(sample_cfg) as server:
        args = harvest_args(server, path, out, tmp_path / "cache")
        for i in range(0, len(extra), 2):  # later flags win in argparse
            args += [extra[i], extra[i + 1]]
        code, _, err = cli(capsys, *args)
        assert server.total_tile_requests == 0
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err
    if out.exists():
        with TileStore(out, readonly=True) as store:
            assert not store.complete


def test_bad_input_details(sample_cfg: SampleConfig, aoi: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    with wmts(sample_cfg) as server:
        _, _, err = cli(capsys, *harvest_args(server, _taipei(tmp_path), tmp_path / "o.mbtiles", tmp_path))
        assert "W,S,E,N = 121.5" in err and "W,S,E,N = -78.9" in err  # both bounds printed
        args = harvest_args(server, aoi, tmp_path / "o.mbtiles", tmp_path, "--max-tiles", "5")
        _, _, err = cli(capsys, *args)
        # an AOI sure to exceed the limit is refused from its corners' estimate ("at least N")
        count = int(err.split("covers ")[1].removeprefix("at least ").split()[0])
        assert count > 5


def test_unreachable_server_subprocess(aoi: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_unused_port()}/wmts/1.0.0/WMTSCapabilities.xml"
    out = tmp_path / "u.mbtiles"
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.fetch", "harvest", "--wmts", url,
                           "--layer", LAYER, "--aoi", str(aoi), "--zoom", "18", "--out", str(out), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "connection refused" in lines[0] and url in lines[0]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_refuses_to_mix_into_a_different_store(sample_cfg: SampleConfig, aoi: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.mbtiles"
    with wmts(sample_cfg) as server:
        assert cli(capsys, *harvest_args(server, aoi, out, tmp_path / "c"))[0] == 0
        code, _, err = cli(capsys, *harvest_args(server, aoi, out, tmp_path / "c", "--zoom", "17"))
    assert code == 2 and "already holds a different harvest" in err and "minzoom '18'" in err
    with TileStore(out, readonly=True) as store:
        assert store.complete and store.zoom == 18  # the existing store is untouched


# --------------------------------------------------------------------------- the DVC stage entry
def test_stage_serves_sample_and_labels_synthetic(sample_cfg: SampleConfig, aoi: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    params = {
        "sources": {"sample": {"kind": "sample", "attribution": "test attribution"}},
        "aois": {"small": {"path": str(aoi)}},
        "harvest": {"requests_per_second": None, "cache_dir": str(tmp_path / "cache")},
        "fetch": {"small-film": {"source": "sample", "layer": "erie_2011_film", "aoi": "small", "zoom": 17},
                  "small-2021": {"source": "sample", "layer": LAYER, "aoi": "small", "zoom": 17}},
        "sample": sample_cfg.model_dump(mode="json"),
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "stage", "small-film", "--quiet")
    assert code == 0, err
    assert out.startswith("harvested small-film: ")
    with TileStore(tmp_path / "data/tiles/small-film.mbtiles", readonly=True) as store:
        meta = store.metadata
        assert store.complete and store.counts()[TileStatus.OK] > 0
    assert meta["synthetic"] == "true" and meta["layer"] == "erie_2011_film"
    assert meta["source_url"].startswith("sample:") and "127.0.0.1" not in meta["source_url"]
    assert meta["attribution"] == "test attribution" and meta["aoi"] == "small"
    code, _, err = cli(capsys, "stage", "small-2022")
    assert code == 2 and "did you mean 'small-2021'" in err


def test_kvp_gettile_against_the_server_matches_rest(sample_cfg: SampleConfig, aoi: Path,
                                                      tmp_path: Path) -> None:
    import re

    import requests

    from pipeline.geo.aoi import read_aoi
    from pipeline.geo.harvester import harvest
    from pipeline.geo.tiles import tile_cover
    from pipeline.geo.wmts_client import parse_capabilities, resolve_source

    with wmts(sample_cfg) as server:
        data = requests.get(server.capabilities_url, timeout=10).content
        rest = resolve_source(parse_capabilities(data, server.capabilities_url), LAYER, zoom=ZOOM)
        # Without ResourceURLs a client must fall back to KVP GetTile (declared in OperationsMetadata).
        stripped = re.sub(rb"<(\w+:)?ResourceURL[^>]*/>", b"", data)
        kvp = resolve_source(parse_capabilities(stripped, server.capabilities_url), LAYER, zoom=ZOOM)
        assert (rest.encoding, kvp.encoding) == ("REST", "KVP")
        tiles = sorted(tile_cover(read_aoi(aoi).geometry_3857, ZOOM))[:6]
        cfg = HarvestConfig(requests_per_second=None)
        for name, source in (("rest", rest), ("kvp", kvp)):
            with TileStore(tmp_path / f"{name}.mbtiles") as store:
                report = harvest(source, tiles, store, cfg, label=name, progress=False)
                assert report.fetched == 6
    assert store_content(tmp_path / "rest.mbtiles") == store_content(tmp_path / "kvp.mbtiles")


def test_sample_cache_key_is_stable_and_follows_the_sample_config() -> None:
    from pipeline.server.bundled import sample_service_key

    params = load_params(ROOT / "params.yaml")
    film = params.sample.film.model_copy(update={"seed": params.sample.film.seed + 1})
    changed = params.model_copy(update={"sample": params.sample.model_copy(update={"film": film})})
    key = sample_service_key(params.sample)
    assert key == sample_service_key(load_params(ROOT / "params.yaml").sample)
    assert key != sample_service_key(changed.sample)
    assert key.startswith("sample:")


def test_sample_cache_key_follows_the_code_that_renders_tiles(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.server import bundled, rendering

    sample = load_params(ROOT / "params.yaml").sample
    key = bundled.sample_service_key(sample)
    edited = tmp_path / "rendering.py"
    edited.write_bytes(Path(rendering.__file__).read_bytes() + b"# a change to the renderer\n")
    monkeypatch.setattr(rendering, "__file__", str(edited))
    assert bundled.sample_service_key(sample) != key
