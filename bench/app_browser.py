"""The web app's first view in a real browser: how long until the map is fully colourised, cold.

    .venv/bin/python -m bench.app_browser [--view NAME] [--model PATH] [--swipe 0.5] [--rounds 5] [--out FILE]

Each round starts the app with a fresh data folder (empty tile cache, empty colourised store,
so every colourised tile is computed), waits until the app says its model is ready, then opens
the page in the headless Chromium the browser test uses (1280 x 800, Debian's `chromium` and
`chromium-driver`) and waits until every tile on the map has loaded. The times come from the
browser's own Resource Timing entries, measured from the start of the page's navigation:

- first view: when the last colourised tile of the map arrived (page, scripts, view list and
  historic tiles included: what a user waits for);
- the colourised tiles' requests: the first one's start and each one's latency.

Each side of the swipe loads only its own tiles, so the divider's start (`--swipe`, the page's
`swipe=` address parameter; the page's default is the middle) decides how many colourised
tiles the first view needs: `--swipe 0` colours the whole map.

Unlike `bench.app_tiles`, the client is the page itself (Leaflet's requests, in its order, over
the browser's own connections) and runs in its own processes, as it does for a user; the
browser's CPU shares the same cores. The machine's load average is printed beside the results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

from bench.app_options import add_app_options, fresh_data_dir, report_header, view_name
from bench.timing import write_report
from pipeline.core.config import load_params
from pipeline.core.cpu import _read_sample, usable_cpus
from tests.browser import TILE_TIMINGS, chrome, find_browser, wait_for_tiles


def machine_busy_s() -> float | None:
    """CPU-seconds this process's CPUs have been busy since boot, every process counted (the
    stages' CPU policy reads the same /proc/stat counters); None where there are none."""
    # pipeline.core.cpu's reader is private there; it is the one parser of /proc/stat we have.
    sample = _read_sample(usable_cpus())
    return None if sample is None else sample.busy


class BusySampler:
    """Samples `machine_busy_s` every `step_s` in a thread, so that the busy time up to a moment
    known only afterwards (the last tile's arrival) can be read back."""

    def __init__(self, step_s: float = 0.05) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._step = step_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = machine_busy_s()
            if busy is None:
                return
            self.samples.append((time.perf_counter(), busy))
            self._stop.wait(self._step)

    def __enter__(self) -> BusySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def busy_between(self, t0: float, t1: float) -> float:
        """Busy CPU-seconds between two perf_counter times (nearest samples); NaN without samples."""
        if not self.samples:
            return float("nan")

        def at(t: float) -> float:
            return min(self.samples, key=lambda s: abs(s[0] - t))[1]
        return at(t1) - at(t0)


def first_view(entries: list[dict[str, object]], role: str = "colourised") -> dict[str, float]:
    """Seconds from navigation start: the first request of `role` tiles, the last arrival, and
    each request's latency (p50, max); `count` tiles."""
    mine = [e for e in entries if f"/{role}/" in str(e["url"])]
    if not mine:
        raise ValueError(f"the page requested no {role} tiles")
    starts = [float(str(e["start"])) / 1000 for e in mine]
    ends = [float(str(e["end"])) / 1000 for e in mine]
    latency = [b - a for a, b in zip(starts, ends, strict=True)]
    return {"count": len(mine), "first_request": min(starts), "done": max(ends),
            "latency_p50": statistics.median(latency), "latency_max": max(latency)}


def swipe_address(swipe: float | None) -> str:
    """The page address's `swipe=` part (nothing for the page's default); one error line for a
    value the page would ignore."""
    if swipe is None:
        return ""
    if not 0.0 <= swipe <= 1.0:  # NaN too
        raise SystemExit(f"error: --swipe {swipe:g} is outside 0..1 (a share of the map's width)")
    return f"&swipe={swipe:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_app_options(parser)
    parser.add_argument("--rounds", type=int, default=5, help="cold first views, each with a fresh app")
    parser.add_argument("--swipe", type=float, default=None, metavar="0..1",
                        help="where the divider starts, as a share of the map's width (default: the "
                             "page's own, the middle); 0 puts the colourised side across the whole map")
    parser.add_argument("--norm-stats-windows", type=int, default=None, metavar="N",
                        help="windows of the view's area for a model with instance norms (default: the "
                             "app's; 0: each window's own statistics)")
    parser.add_argument("--out", default=None, help="also write the Markdown here (- : print only)")
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit("error: --rounds must be at least 1")
    address = swipe_address(args.swipe)
    found = find_browser()
    if isinstance(found, str):
        raise SystemExit(f"error: {found}")


    from pipeline.app.serve import WebApp

    params = load_params()
    name = view_name(params, args.view)
    load0 = os.getloadavg()[0]
    rows: list[dict[str, float]] = []
    label = ""
    for i in range(args.rounds):
        data = fresh_data_dir("app-browser-")  # fresh: everything is cold
        started = time.perf_counter()
        with WebApp(params, port=0, model=args.model, data_dir=data, sample_derived_dir=args.derived,
                    area_windows=args.norm_stats_windows) as web:
            view = web.state.views[name]
            if view.colour is None:
                raise SystemExit(f"error: view {name} has no colourised layer: {view.model_error}")
            runner = view.colour.runner
            label = (f"model {runner.label} (sha256 {runner.model_id}), {runner.window}-px context "
                     f"windows (margin {runner.margin})")
            if not runner.wait_ready(timeout_s=120):
                raise SystemExit("error: the model did not finish warming up in 120 s")
            # The app gathers the view's area statistics as it starts (a model with instance
            # norms): timed, then the page is opened, as after the model's warm-up.
            while not view.colour.area_prepared:
                if time.perf_counter() - started > 300:
                    raise SystemExit("error: the view's area statistics were not ready in 300 s")
                time.sleep(0.05)
            prepared = time.perf_counter() - started
            driver = chrome(1280, 800)  # started before the clock: a user's browser is already open
            try:
                cpu0 = time.process_time()
                with BusySampler() as sampler:
                    wall0 = time.perf_counter()
                    driver.get(f"{web.url}?view={name}{address}")
                    wait_for_tiles(driver, timeout_s=300)
                app_cpu = time.process_time() - cpu0
                entries = driver.execute_script(TILE_TIMINGS)
                row = first_view(entries)
                # The whole machine's busy CPU from navigation to the last colourised tile.
                row["machine_cpu"] = sampler.busy_between(wall0, wall0 + row["done"])
            finally:
                driver.quit()
        photos = first_view(entries, "historic")
        row["historic"], row["historic_done"] = photos["count"], photos["done"]
        row["app_cpu"] = app_cpu
        row["prepared"] = prepared
        rows.append(row)
        print(f"round {i + 1}: app ready {prepared:.1f} s after its start (model warmed up"
              + (", area statistics gathered" if view.colour.area_key else "") + "); "
              f"first view {row['done']:.2f} s ({row['count']:.0f} colourised tiles, "
              f"first requested at {row['first_request']:.2f} s; historic {row['historic_done']:.2f} s), "
              f"app CPU {app_cpu:.1f} s, machine {row['machine_cpu']:.1f} CPU-s", flush=True)
    load1 = os.getloadavg()[0]

    done = [r["done"] for r in rows]
    lines = [
        *report_header("Web app: the first view in a real browser", "bench.app_browser", load_before=load0,
                       load_after=load1, extra=", headless Chromium at 1280 x 800"),
        f"View `{name}`; {label}; the swipe's divider at "
        f"{'the middle (the page default)' if args.swipe is None else f'{args.swipe:g} of the map width'}. "
        "Each round: a fresh app (cold caches and store), its model warmed up and (a model with instance "
        "norms) the view's area statistics gathered, then the page opened; seconds from the start of the "
        "page's navigation. App ready: seconds from the app's start until then.",
        "",
        "| round | colourised tiles | first colourised request | last colourised tile arrived | "
        "latency p50 | latency max | last historic tile arrived | whole machine's CPU until the last "
        "colourised tile | app's CPU until the map settled | app ready |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r['count']:.0f} (+ {r['historic']:.0f} historic) | "
                     f"{r['first_request']:.2f} s | **{r['done']:.2f} s** | {r['latency_p50']:.2f} s | "
                     f"{r['latency_max']:.2f} s | {r['historic_done']:.2f} s | "
                     f"{r['machine_cpu']:.1f} CPU-s | {r['app_cpu']:.1f} CPU-s | {r['prepared']:.1f} s |")
    under = sum(d <= 5.0 for d in done)
    lines += ["", f"First view, fully colourised: median **{statistics.median(done):.2f} s** "
              f"(min {min(done):.2f}, max {max(done):.2f}); {under} of {len(done)} rounds within the "
              "5 s goal.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out and args.out != "-":
        write_report(text, args.out)


if __name__ == "__main__":
    main()
