"""Benchmark the loopback WMTS server: ms per tile cold / warm, HTTP throughput, and the
direct-from-JPEG-2000 rendering the server avoids (same run, so ratios are comparable).

    .venv/bin/python -m bench.server_tiles [--zoom 18] [--concurrency 4] [--fresh]

Results go to stdout as a Markdown table (copy them into docs/benchmarks/server.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import mercantile
import numpy as np
import rasterio
import requests
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject

from pipeline.core.config import load_params
from pipeline.geo.tiles import TileId, tile_bounds_3857
from pipeline.server.bundled import sample_layers
from pipeline.server.httpd import WmtsServer
from pipeline.server.rendering import encode_tile


def layer_tiles(server: WmtsServer, layer_id: str, z: int) -> list[TileId]:
    return [TileId(t.z, t.x, t.y) for t in mercantile.tiles(*server.layers[layer_id].wgs84, z)]


def ms(seconds: float, n: int) -> str:
    return f"{1000 * seconds / max(n, 1):.1f}"


def direct_jp2(paths: list[Path], tiles: list[TileId]) -> float:
    """The naive alternative: warp each tile straight from the JPEG 2000 sources."""
    datasets = [rasterio.open(p) for p in paths]
    started = time.perf_counter()
    for tile in tiles:
        out = np.zeros((4, 256, 256), np.uint8)
        dst = from_bounds(*tile_bounds_3857(tile), 256, 256)
        for ds in datasets:
            part = np.zeros((4, 256, 256), np.uint8)
            reproject(rasterio.band(ds, [1, 2, 3]), part[:3], dst_transform=dst, dst_crs="EPSG:3857",
                      resampling=Resampling.bilinear)
            out = np.maximum(out, part)
        encode_tile(out[:3], np.full((256, 256), 255, np.uint8), "png")
    elapsed = time.perf_counter() - started
    for ds in datasets:
        ds.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server_tiles", description=__doc__.split("\n")[0])
    parser.add_argument("--zoom", type=int, default=18)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--fresh", action="store_true",
                        help="build the film layer and tile caches in a temporary folder "
                        "(measures the one-off cost)")
    parser.add_argument("--direct-tiles", type=int, default=100, help="tiles for the direct-JP2 baseline")
    args = parser.parse_args()
    warnings.simplefilter("ignore", PendingDeprecationWarning)  # affine's `*` notice inside rasterio
    sample = load_params().sample
    tmp = tempfile.TemporaryDirectory() if args.fresh else None
    if tmp is not None:
        sample = sample.model_copy(update={"derived_dir": tmp.name})
    rows: list[tuple[str, str, str]] = []

    started = time.perf_counter()
    layers = sample_layers(sample)
    rows.append(("film layer ready (build if --fresh)", f"{time.perf_counter() - started:.1f} s", ""))
    server = WmtsServer(layers, cache_dir=Path(sample.derived_dir) / "cache")
    for layer_id in server.layers:
        started = time.perf_counter()
        server.prepare([layer_id])
        rows.append((f"tile cache ready: {layer_id}", f"{time.perf_counter() - started:.1f} s", ""))

    z = args.zoom
    work = [(lid, t) for lid in ("erie_2011", "erie_2011_film", "erie_2021")
            for t in layer_tiles(server, lid, z)]
    work += [("erie_2011", t) for t in layer_tiles(server, "erie_2011", z - 1)]
    renderer = server.renderer
    for label in ("cold (render + encode)", "warm (LRU hit)"):
        started = time.perf_counter()
        for lid, tile in work:
            renderer.tile_bytes(lid, "png", tile)
        elapsed = time.perf_counter() - started
        rows.append((f"in-process {label}, {len(work)} png tiles z{z}/z{z - 1}", ms(elapsed, len(work)),
                     "ms/tile, 1 thread"))
    sample_tiles = layer_tiles(server, "erie_2011", z)[: args.direct_tiles]
    rendered = [renderer.render("erie_2011", t) for t in sample_tiles]
    started = time.perf_counter()
    for r in rendered:
        if r is not None:
            encode_tile(*r, "png")
    rows.append(("  of which PNG encoding", ms(time.perf_counter() - started, len(rendered)), "ms/tile"))
    started = time.perf_counter()
    for r in rendered:
        if r is not None:
            encode_tile(*r, "jpeg")
    rows.append(("  JPEG encoding instead", ms(time.perf_counter() - started, len(rendered)), "ms/tile"))
    jp2 = sorted((Path(sample.data_dir) / "erie_2011").glob("*.jp2"))
    elapsed = direct_jp2(jp2, sample_tiles)
    rows.append((f"baseline: warp straight from JPEG 2000, {len(sample_tiles)} tiles z{z}",
                 ms(elapsed, len(sample_tiles)), "ms/tile, 1 thread"))
    low = layer_tiles(server, "erie_2011", z - 3)
    elapsed_low = direct_jp2(jp2, low)
    renderer._lru.clear()
    started = time.perf_counter()
    for t in low:
        renderer.tile_bytes("erie_2011", "png", t)
    cached_low = time.perf_counter() - started
    rows.append((f"z{z - 3} ({len(low)} tiles): from JPEG 2000 vs cached GeoTIFF",
                 f"{ms(elapsed_low, len(low))} vs {ms(cached_low, len(low))}", "ms/tile"))

    # HTTP: a fresh server (empty LRU), `concurrency` clients, like the harvester.
    server.renderer._lru.clear()
    with server, requests.Session() as session:
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=args.concurrency)
        session.mount("http://", adapter)
        urls = [f"{server.base_url}/wmts/{lid}/GoogleMapsCompatible/{t.z}/{t.x}/{t.y}.png" for lid, t in work]

        def get(url: str) -> float:
            t0 = time.perf_counter()
            resp = session.get(url, timeout=60)
            resp.raise_for_status()
            return time.perf_counter() - t0

        for label in ("cold", "warm"):
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                latencies = list(pool.map(get, urls))
            elapsed = time.perf_counter() - started
            rows.append((f"HTTP {label}, {len(urls)} tiles, {args.concurrency} clients",
                         f"{len(urls) / elapsed:.0f} tiles/s",
                         f"median latency {1000 * statistics.median(latencies):.1f} ms"))
    if tmp is not None:
        tmp.cleanup()

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"# WMTS server benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
          f"rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__}); load average before "
          f"finishing {load[0]:.1f}\n")
    print("| measurement | result | unit / note |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    main()
