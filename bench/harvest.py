"""Benchmark: harvester throughput against a naive sequential loop, in the same run.

The project's WMTS server serves the bundled sample in a separate process with an added latency
per tile (FaultPlan.latency_s), standing in for a remote server. Its render cache is warmed
first, so the numbers measure the client. Then, over the same N distinct tiles:

  naive      requests.get per tile, PIL decode, one PNG file per tile (sequential)
  harvester  pipeline.geo.harvester at concurrency 4 and 16, rate cap lifted; and the default
             (concurrency 4, requests_per_second from params.yaml) on a subset, for transparency
  cached     re-harvest of the same AOI into a fresh store, entirely from the tile cache

    python -m bench.harvest [--tiles 1000] [--latency 0.05] [--out docs/benchmarks/harvest.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

from bench.timing import cpu_model, shown_command
from pipeline.core.config import HarvestConfig, load_params
from pipeline.geo.harvester import harvest_to_store
from pipeline.geo.tiles import TileId
from pipeline.geo.wmts_client import WmtsSource, read_capabilities, resolve_source


# --------------------------------------------------------------------------- server process
def _serve(conn, latency_s: float) -> None:  # runs in the child process
    from pipeline.server.bundled import serve_sample
    from pipeline.server.faults import FaultPlan

    params = load_params()
    with serve_sample(params.sample, FaultPlan(latency_s=latency_s)) as server:
        conn.send(server.capabilities_url)
        conn.recv()  # block until the parent says stop


class ServerProcess:
    """The sample WMTS in its own process, so its work does not share our GIL."""

    def __init__(self, latency_s: float) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, latency_s), daemon=True)

    def __enter__(self) -> str:
        self._proc.start()
        if not self._conn.poll(600):
            raise RuntimeError("the sample WMTS server did not start within 10 minutes")
        return self._conn.recv()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()


# --------------------------------------------------------------------------- workloads
def pick_tiles(source: WmtsSource, zoom: int, n: int) -> list[TileId]:
    """n distinct tiles well inside the layer's footprint (a compact block, column by column)."""
    from pyproj import Transformer
    from shapely.geometry import box

    from pipeline.geo.tiles import tile_cover

    w, s, e, n_ = source.layer.bounds_wgs84 or (0, 0, 0, 0)
    to_3857 = Transformer.from_crs(4326, 3857, always_xy=True)
    x0, y0 = to_3857.transform(w, s)
    x1, y1 = to_3857.transform(e, n_)
    margin = 0.1 * min(x1 - x0, y1 - y0)
    tiles = tile_cover(box(x0 + margin, y0 + margin, x1 - margin, y1 - margin), zoom)
    if len(tiles) < n:
        raise SystemExit(f"only {len(tiles)} tiles inside {source.layer_id} at z{zoom}; lower --tiles or "
                         f"raise --zoom")
    return sorted(tiles)[:n]


def naive(source: WmtsSource, tiles: list[TileId], out_dir: Path) -> tuple[float, int]:
    """The loop people write first: one requests.get per tile, decode, write a file."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    nbytes = 0
    t0 = time.perf_counter()
    for t in tiles:
        resp = requests.get(source.url(t), timeout=30)
        resp.raise_for_status()
        with Image.open(io.BytesIO(resp.content)) as img:
            img.load()
        (out_dir / f"{t.z}_{t.x}_{t.y}.png").write_bytes(resp.content)
        nbytes += len(resp.content)
    return time.perf_counter() - t0, nbytes


@dataclass
class Result:
    name: str
    tiles: int
    seconds: float
    requests: int = 0

    @property
    def rate(self) -> float:
        return self.tiles / self.seconds


def run_harvester(name: str, source: WmtsSource, tiles: list[TileId], cfg: HarvestConfig, work: Path,
                  cache_dir: Path) -> Result:
    store = work / f"{name}.mbtiles"
    t0 = time.perf_counter()
    report = harvest_to_store(source, tiles, store, cfg, label=name, aoi="bench", cache_dir=cache_dir,
                              progress=False)
    seconds = time.perf_counter() - t0
    if report.failed:
        raise SystemExit(f"{name}: {report.failed} tiles failed: {report.failures[:3]}")
    print(f"  {name}: {report.summary()}", flush=True)
    return Result(name, len(tiles), seconds, report.requests)


# --------------------------------------------------------------------------- report
def machine() -> str:
    model = cpu_model(default="unknown CPU")
    return f"{os.cpu_count()} CPUs (nproc), {model}; Python {platform.python_version()}, {platform.system()}"


def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def write_markdown(path: Path, *, command: str, results: dict[str, Result], naive_res: Result,
                   args: argparse.Namespace, layer: str, zoom: int, default_cfg: HarvestConfig,
                   loads: tuple[str, str]) -> str:
    def ratio(r: Result) -> float:
        return r.rate / naive_res.rate

    c4, c16, cached = results["c4"], results["c16"], results["cached"]
    goals = [
        ("concurrency 16 vs naive", f"{ratio(c16):.1f}x", ">= 8x", ratio(c16) >= 8),
        ("concurrency 4 vs naive", f"{ratio(c4):.1f}x", ">= 3.5x", ratio(c4) >= 3.5),
        ("cached re-harvest", f"{cached.rate:.0f} tiles/s", ">= 500 tiles/s", cached.rate >= 500),
    ]
    rows = [("naive sequential loop (requests.get, PIL decode, one PNG file per tile)", naive_res)]
    rows += [("harvester, concurrency 4, no rate cap", c4), ("harvester, concurrency 16, no rate cap", c16)]
    if "default" in results:
        d = results["default"]
        rows.append((f"harvester, defaults (concurrency {default_cfg.concurrency}, "
                     f"{default_cfg.requests_per_second} requests/s cap), {d.tiles} tiles", d))
    rows.append(("re-harvest of the same tiles, all from the cache", cached))
    lines = [
        "# Harvest benchmark",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}",
        f"- Load average (1/5/15 min) at start and end: {loads[0]} and {loads[1]} (other processes share "
        "the CPUs; the ratios compare runs made back to back in the same process)",
        f"- Command: `{command}`",
        f"- Workload: {args.tiles} distinct tiles of `{layer}` at z{zoom} (PNG, 256x256) from the project's "
        f"WMTS server (pipeline.server) on 127.0.0.1 in a separate process, with "
        f"{args.latency * 1000:.0f} ms added latency per tile (FaultPlan.latency_s). The server's render "
        "cache was warmed with one full pass first, so the numbers measure the client. Every harvester "
        "run starts with an empty store and an empty cache (except the cached re-harvest).",
        "- The naive loop writes the original bytes to one file per tile after decoding them with PIL "
        "(no re-encoding, which would only make it slower).",
        "",
        "| client | tiles | seconds | tiles/s | vs naive |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, r in rows:
        lines.append(f"| {label} | {r.tiles} | {r.seconds:.2f} | {r.rate:.1f} | {ratio(r):.1f}x |")
    lines += ["", "| goal | measured | target | met |", "|---|---:|---:|---|"]
    lines += [f"| {g} | {m} | {t} | {'yes' if ok else 'NO'} |" for g, m, t, ok in goals]
    lines += [
        "",
        "Notes: the harvester's CPU cost is about 4 ms per 256-px PNG tile on this machine, most of it "
        "the full PNG decode that proves a tile is intact (zlib, which releases the GIL). Two changes "
        "made during profiling: tiles are checked from PIL band summaries (`getcolors(1)`, alpha "
        "extrema) instead of building an RGBA array (-1.5 ms/tile), and proxy/CA settings are read "
        "from the environment once per session instead of per request (-1 ms/tile). The rate-capped "
        "default run is limited by its cap (requests_per_second), as intended for remote servers.",
        "",
    ]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    return text


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.harvest",
        description="Harvester throughput vs a naive sequential loop against the project's WMTS "
                    "server with added latency (same run), plus cached re-harvest speed.")
    parser.add_argument("--tiles", type=int, default=1000, help="distinct tiles per run (default 1000)")
    parser.add_argument("--latency", type=float, default=0.05, help="added seconds per tile (default 0.05)")
    parser.add_argument("--layer", default="columbia_2010", help="sample layer (default columbia_2010)")
    parser.add_argument("--zoom", type=int, default=19, help="zoom (default 19)")
    parser.add_argument("--capped-tiles", type=int, default=200,
                        help="tiles for the default, rate-capped run (default 200; 0 skips it)")
    parser.add_argument("--out", default="docs/benchmarks/harvest.md", help="markdown report to write")
    args = parser.parse_args(argv)
    command = shown_command("bench.harvest", argv if argv is not None else sys.argv[1:])

    load_start = load_average()
    default_cfg = load_params().harvest
    fast = default_cfg.model_copy(update={"requests_per_second": None})
    work = Path(tempfile.mkdtemp(prefix="bench-harvest-"))
    try:
        print(f"starting the sample WMTS server (latency {args.latency * 1000:.0f} ms per tile)...",
              flush=True)
        with ServerProcess(args.latency) as caps_url:
            caps = read_capabilities(caps_url, user_agent=default_cfg.user_agent)
            source = resolve_source(caps, args.layer, zoom=args.zoom)
            tiles = pick_tiles(source, args.zoom, args.tiles)
            print(f"warming the server's render cache with {len(tiles)} tiles of {args.layer} "
                  f"z{args.zoom}...", flush=True)
            run_harvester("warmup", source, tiles, fast.model_copy(update={"concurrency": 16}), work,
                          work / "cache-warmup")
            print("naive sequential loop...", flush=True)
            seconds, _ = naive(source, tiles, work / "naive")
            naive_res = Result("naive", len(tiles), seconds, len(tiles))
            print(f"  naive: {len(tiles)} tiles in {seconds:.1f} s ({naive_res.rate:.1f} tiles/s)",
                  flush=True)
            results = {
                "c4": run_harvester("c4", source, tiles, fast.model_copy(update={"concurrency": 4}), work,
                                    work / "cache-c4"),
                "c16": run_harvester("c16", source, tiles, fast.model_copy(update={"concurrency": 16}), work,
                                     work / "cache-c16"),
            }
            if args.capped_tiles:
                results["default"] = run_harvester("default", source, tiles[: args.capped_tiles], default_cfg,
                                                   work, work / "cache-default")
            results["cached"] = run_harvester("cached", source, tiles, fast, work, work / "cache-c16")
            if results["cached"].requests:
                raise SystemExit("the cached re-harvest made HTTP requests")
        text = write_markdown(Path(args.out), command=command, results=results, naive_res=naive_res,
                              args=args, layer=args.layer, zoom=args.zoom, default_cfg=default_cfg,
                              loads=(load_start, load_average()))
        print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
