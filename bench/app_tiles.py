"""Benchmark the web app's colourised tiles: cold latency, the first view of the map, the store.

    .venv/bin/python -m bench.app_tiles [--view NAME] [--model PATH] [--out docs/benchmarks/app.md]

It starts the app (uvicorn on 127.0.0.1, the sample's WMTS inside it) with a fresh data folder
(empty tile cache, empty colourised stores), so every number below "cold" includes fetching the
source tiles from the app's own WMTS, the model and the PNG encoding. Then:

1. first view: the tiles a 1280 x 736 map shows at the view's zoom around its centre, historic
   and colourised, requested as a browser does (6 connections at once); the time until every
   colourised tile has arrived, and each request's latency;
2. cold single tiles: other tiles, one request at a time (no batching help): p50 and p95;
3. from the store: the first view's colourised tiles again, many times over 4 keep-alive
   connections: tiles per second.

The machine's load average is printed beside the results (the machine is shared).
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.app_options import add_app_options, fresh_data_dir, report_header, view_name
from pipeline.core.config import load_params
from pipeline.geo.tiles import TileId

MAP_W, MAP_H = 1280, 736  # the page's map at a 1280 x 800 window


def viewport_tiles(lat: float, lon: float, z: int, width: int = MAP_W, height: int = MAP_H,
                   shift: tuple[int, int] = (0, 0)) -> list[TileId]:
    """The tiles Leaflet requests for a map of width x height pixels centred on (lat, lon)."""
    n = 256 * (1 << z)
    cx = (lon + 180.0) / 360.0 * n + shift[0] * 256
    cy = (1 - math.log(math.tan(math.radians(lat)) + 1 / math.cos(math.radians(lat))) / math.pi) / 2 * n \
        + shift[1] * 256
    x0, x1 = int((cx - width / 2) // 256), int((cx + width / 2 - 1) // 256)
    y0, y1 = int((cy - height / 2) // 256), int((cy + height / 2 - 1) // 256)
    return [TileId(z, x, y) for y in range(y0, y1 + 1) for x in range(x0, x1 + 1)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_app_options(parser)
    parser.add_argument("--requests", type=int, default=3000, help="requests for the store throughput")
    parser.add_argument("--out", default=None, help="also write the Markdown here (- : print only)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per forward pass (default: params.yaml app.batch_size)")
    parser.add_argument("--workers", type=int, default=None,
                        help="forward passes side by side (default: the app's choice for this machine)")
    parser.add_argument("--layout", choices=["auto", "nchw"], default="auto",
                        help="auto: the app's choice (pipeline/inference/layout.py); nchw: PyTorch's "
                             "default layout, to compare against")
    args = parser.parse_args()

    from bench.timing import set_memory_layout, write_report
    from pipeline.app.serve import WebApp
    from pipeline.core.cpu import usable_cpus

    params = load_params()
    name = view_name(params, args.view)
    data = fresh_data_dir("app-bench-")  # fresh: everything is cold
    web = WebApp(params, port=0, model=args.model, data_dir=data, sample_derived_dir=args.derived,
                 model_workers=args.workers)
    view = web.state.views[name]
    if view.colour is None:
        raise SystemExit(f"error: view {name} has no colourised layer: {view.model_error}")
    runner = view.colour.runner
    if args.batch_size is not None:
        runner.batch_size = args.batch_size
    if args.layout == "nchw" and runner.channels_last:
        set_memory_layout(runner.model, channels_last=False)
        runner.channels_last = False
    base = web.server.base_url
    with web:
        # The app warms its model up as it starts (startup cost, not tile latency): wait for it.
        if not runner.wait_ready(timeout_s=120):
            raise SystemExit("error: the model did not finish warming up in 120 s")
        (s, w), (n, e) = view.describe()["bounds"]
        lat, lon = (s + n) / 2, (w + e) / 2
        first = [t for t in viewport_tiles(lat, lon, view.zoom) if _inside(view, t)]

        def fetch(session: requests.Session, role: str, t: TileId) -> tuple[str, float]:
            start = time.perf_counter()
            r = session.get(f"{base}/tiles/{name}/{role}/{t.z}/{t.x}/{t.y}", timeout=300)
            r.raise_for_status()
            return role, time.perf_counter() - start

        load0 = os.getloadavg()[0]
        sessions = [requests.Session() for _ in range(6)]
        jobs = [(role, t) for t in first for role in ("historic", "colourised")]
        start = time.perf_counter()
        cpu_start = time.process_time()  # every thread of this process: the app and the client
        done_colour = 0.0
        lat_first: list[float] = []
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(fetch, sessions[i % 6], role, t) for i, (role, t) in enumerate(jobs)]
            for fut in futures:
                role, secs = fut.result()
                if role == "colourised":
                    lat_first.append(secs)
                    done_colour = max(done_colour, time.perf_counter() - start)
        first_cpu = time.process_time() - cpu_start
        cores = len(usable_cpus())
        # Cold single tiles, away from the first view (their neighbours are not cached either).
        single: list[float] = []
        others = [t for t in viewport_tiles(lat, lon, view.zoom, 768, 512, shift=(0, 6)) if _inside(view, t)]
        others = [t for t in others if t not in set(first)][:12]
        for t in others:
            single.append(fetch(sessions[0], "colourised", t)[1])
        # From the store: a light client (http.client, one keep-alive connection per thread), so
        # the client's own CPU on the same two cores weighs less than with requests.
        reps = max(1, args.requests // len(first))
        store_jobs = [t for _ in range(reps) for t in first]
        port = web.server.port

        def hammer(chunk: list[TileId]) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for t in chunk:
                conn.request("GET", f"/tiles/{name}/colourised/{t.z}/{t.x}/{t.y}")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise SystemExit(f"error: HTTP {resp.status} for a stored tile")
            conn.close()

        with ThreadPoolExecutor(4) as pool:
            start = time.perf_counter()
            list(pool.map(hammer, [store_jobs[i::4] for i in range(4)]))
            store_s = time.perf_counter() - start
        load1 = os.getloadavg()[0]
        for s_ in sessions:
            s_.close()

    lines = [
        *report_header("Web app tiles", "bench.app_tiles", load_before=load0, load_after=load1),
        f"View `{name}` at zoom {view.zoom}; model {runner.label} (sha256 {runner.model_id}), "
        f"{runner.window}-px context windows (margin {runner.margin}), batches of up to "
        f"{runner.batch_size}.",
        "",
        "| measure | result | goal |",
        "|---|---|---|",
        f"| first view of the map, cold: {len(first)} colourised + {len(first)} historic tiles, "
        f"6 connections | all colourised in **{done_colour:.2f} s** | ≤ 5 s |",
        f"| CPU time of the first view (app and this benchmark's HTTP client, one process) | "
        f"{first_cpu:.1f} CPU-s: at least {first_cpu / cores:.2f} s on {cores} cores | – |",
        f"| colourised tile latency inside that first view (queueing included) | "
        f"p50 {statistics.median(lat_first):.2f} s, p95 {pct(lat_first, 0.95):.2f} s | – |",
        f"| cold single tiles, one at a time ({len(single)} tiles) | "
        f"p50 {statistics.median(single) * 1000:.0f} ms, p95 {pct(single, 0.95) * 1000:.0f} ms | – |",
        f"| from the store: {len(store_jobs)} requests, 4 keep-alive connections | "
        f"**{len(store_jobs) / store_s:.0f} tiles/s** | ≥ 500 tiles/s |",
        f"| forward passes for the first view and the single tiles | {runner.stats.batches} passes for "
        f"{runner.stats.windows} windows ({runner.stats.seconds:.2f} s in the model) | – |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out and args.out != "-":
        write_report(text, args.out)


def _inside(view, tile: TileId) -> bool:  # type: ignore[no-untyped-def]
    try:
        view.check_tile(tile.z, tile.x, tile.y)
    except Exception:
        return False
    return True


if __name__ == "__main__":
    main()
