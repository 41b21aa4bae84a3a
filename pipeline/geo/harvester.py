"""The harvester: fetch a list of tiles from a TileSource into a TileStore, politely and resumably.

- Bounded concurrency (worker threads) over ONE pooled requests.Session, a requests-per-second
  cap (a token bucket shared by all workers), connect/read timeouts and a deadline on each
  request as a whole; bodies are read in size-capped chunks (pipeline.geo.bounded_http).
- Retries with exponential backoff and full jitter on 5xx, timeouts, connection resets and
  truncated or undecodable bodies; 429/503 Retry-After pauses every worker.
- Every response is checked (status, content type, OGC exception or HTML body quoted, decodes
  as an image of the tile size, no decompression bombs). Empty tiles are recorded as such.
- Original bytes are kept. Results are committed in batches (one transaction each), first to
  the shared cache, then to the store: a run killed at any moment loses nothing committed and
  the next run fetches only what is neither stored nor cached.
"""

from __future__ import annotations

import email.utils
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests

from pipeline.core.config import HarvestConfig
from pipeline.core.errors import LuminescenceError
from pipeline.core.outputs import SQLITE, Output, check_outputs
from pipeline.geo import bounded_http
from pipeline.geo.bounded_http import BodyRefused, DeadlineExceeded
from pipeline.geo.pixels import TileRefused, TileSummary, inspect_tile
from pipeline.geo.tilecache import CACHE_FILE, SourceKey, TileCache
from pipeline.geo.tiles import TileId, union_bounds_wgs84
from pipeline.geo.tilestore import (
    TileRecord,
    TileStatus,
    TileStore,
    check_store_file,
    sqlite_files,
    write_canonical,
)
from pipeline.geo.wmts_client import (
    ServiceUnreachableError,
    TileSource,
    describe_connection_error,
    format_extension,
    server_message,
)

BATCH_SIZE = 64  # records per store transaction
BATCH_SECONDS = 0.5  # ... or this long since the last commit, whichever comes first
MAX_BODY_BYTES = 16 * 1024 * 1024  # a 256-px tile is well under 1 MB; anything this big is not a tile
RETRY_STATUSES = {408, 429, 500, 502, 503, 504, 509, 520, 521, 522, 523, 524}
_OCTET = {"application/octet-stream", "binary/octet-stream", ""}


class HarvestFailedError(LuminescenceError):
    """More tiles failed than harvest.max_failed_fraction allows."""


class StoreMismatchError(LuminescenceError):
    """An existing store holds a different source/layer/zoom/AOI."""


# --------------------------------------------------------------------------- politeness
class RateLimiter:
    """Token bucket shared by all workers (capacity `burst`), plus a global pause for Retry-After.

    `rate=None` lifts the cap; pauses still apply. Clock and sleep are injectable for tests.
    """

    def __init__(self, rate: float | None, burst: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock
        self._sleep = sleep or time.sleep
        self._lock = threading.Lock()
        self._tat = 0.0  # theoretical arrival time of the next request (GCRA form of the bucket)
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Hold every worker for `seconds` (the server asked us to slow down)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def reserve(self) -> float:
        """Reserve the next slot; return how long to wait before using it."""
        with self._lock:
            now = self._clock()
            start = max(now, self._paused_until)
            if self.rate is None:
                return start - now
            interval = 1.0 / self.rate
            tat = max(self._tat, start)
            allowed = tat - (self.burst - 1.0) * interval
            self._tat = tat + interval
            return max(0.0, allowed - now, start - now)

    def acquire(self, stop: threading.Event | None = None) -> None:
        wait = self.reserve()
        if wait > 0:
            if stop is not None:
                stop.wait(wait)
            else:
                self._sleep(wait)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    return rng.uniform(0.0, min(cap, base * (2.0 ** attempt)))


def make_session(user_agent: str, pool_size: int, url: str | None = None) -> requests.Session:
    """One pooled session for all workers, whose requests honour the per-request deadline."""
    return bounded_http.make_session(
        user_agent, pool_size, url, accept="image/png,image/jpeg,image/webp;q=0.9,image/*;q=0.8,*/*;q=0.1")


# --------------------------------------------------------------------------- checking a tile
class TileFault(Exception):
    """A tile response that is not a usable image. `retry` says whether trying again may help."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


def empty_reason(summary: TileSummary, nbytes: int, empty_max_bytes: int) -> str | None:
    """Why a decoded tile holds no data (tiny, fully transparent, one colour), or None."""
    if nbytes <= empty_max_bytes:
        return f"empty: tiny tile ({nbytes} bytes <= {empty_max_bytes})"
    if summary.transparent:
        return "empty: fully transparent"
    if summary.single_colour is not None:
        return f"empty: single colour {summary.mode}{summary.single_colour}"
    return None


def classify_tile(data: bytes, content_type: str, *, tile_size: int,
                  empty_max_bytes: int) -> tuple[TileStatus, str]:
    """(ok|empty, reason) for a 200 response body, or raise TileFault."""
    ctype = content_type.split(";")[0].strip().lower()
    if not data:
        raise TileFault("empty response body", retry=True)
    textual = (data.lstrip()[:1] == b"<" or ctype.startswith("text/") or "xml" in ctype
               or "html" in ctype or "json" in ctype)
    if textual:
        message = server_message(data, content_type)
        kind = "an OGC exception" if b"Exception" in data[:2048] else f"{ctype or 'text'}"
        raise TileFault(f"server sent {kind} instead of an image: '{message}'", retry=True)
    if not ctype.startswith("image/") and ctype not in _OCTET:
        raise TileFault(f"unexpected content type '{ctype}' instead of an image", retry=True)
    try:
        summary = inspect_tile(data, tile_size)
    except TileRefused as exc:
        raise TileFault(str(exc), retry=False) from None
    except ValueError as exc:  # corrupt or truncated: a fresh copy may be fine
        raise TileFault(str(exc), retry=True) from None
    reason = empty_reason(summary, len(data), empty_max_bytes)
    return (TileStatus.EMPTY, reason) if reason else (TileStatus.OK, "")


def _is_unreachable(exc: requests.RequestException) -> bool:
    text = str(exc)
    return isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.Timeout) and any(
        s in text for s in ("refused", "NameResolution", "Name or service not known", "getaddrinfo",
                            "Temporary failure in name resolution", "nodename nor servname"))


@dataclass
class FetchResult:
    record: TileRecord
    raw: bytes | None  # original bytes of ok/empty tiles (cached), None for failures
    attempts: int


class TileFetcher:
    """Fetch and check one tile at a time; safe to call from many threads."""

    def __init__(self, source: TileSource, cfg: HarvestConfig, session: requests.Session,
                 limiter: RateLimiter, *, stop: threading.Event | None = None,
                 seed: int | None = None) -> None:
        self.source = source
        self.cfg = cfg
        self.session = session
        self.limiter = limiter
        self.stop = stop or threading.Event()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.requests = 0
        self.server_answered = False

    def _jitter(self, attempt: int) -> float:
        with self._rng_lock:
            return backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s, self._rng)

    def fetch(self, tile: TileId) -> FetchResult:
        url = self.source.url(tile)
        reason = ""
        attempts = 0
        for attempt in range(self.cfg.max_retries + 1):
            if self.stop.is_set():
                break
            attempts += 1
            wait, outcome = self._attempt(tile, url)
            if isinstance(outcome, FetchResult):
                outcome.attempts = attempts
                return outcome
            reason, retry = outcome
            if not retry or attempt == self.cfg.max_retries:
                break
            self.stop.wait(wait if wait is not None else self._jitter(attempt))
        if attempts > 1:
            reason = f"{reason} (after {attempts} attempts)"
        return FetchResult(TileRecord(tile, TileStatus.FAILED, reason=reason), None, attempts)

    def _attempt(self, tile: TileId, url: str) -> tuple[float | None, FetchResult | tuple[str, bool]]:
        """One request. Returns (wait before retrying or None for backoff, result or (reason, retry))."""
        self.limiter.acquire(self.stop)
        with self._count_lock:
            self.requests += 1
        timeout = (self.cfg.connect_timeout_s, self.cfg.read_timeout_s)
        try:
            resp, data = bounded_http.get(self.session, url, timeout=timeout,
                                          deadline_s=self.cfg.request_deadline_s, max_bytes=MAX_BODY_BYTES)
        except BodyRefused as refused:
            return None, (refused.reason, refused.retry)
        except DeadlineExceeded as exc:
            return None, (f"{exc} (harvest.request_deadline_s)", True)
        except requests.Timeout as exc:
            what = "connect" if isinstance(exc, requests.ConnectTimeout) else "read"
            return None, (f"{what} timeout after {timeout[0 if what == 'connect' else 1]:g} s", True)
        except requests.RequestException as exc:
            if not self.server_answered and _is_unreachable(exc):
                # Nothing has ever answered: the server is not there; retrying every tile won't help.
                raise ServiceUnreachableError(describe_connection_error(url, exc)) from None
            return None, (f"connection error ({_short_exc(exc)})", True)
        self.server_answered = True
        status = resp.status_code
        ctype = resp.headers.get("Content-Type", "")
        expected = resp.headers.get("Content-Length")
        if expected is not None and expected.isdigit() and int(expected) != len(data) \
                and not resp.headers.get("Content-Encoding"):
            return None, (f"truncated body ({len(data)} of {expected} bytes)", True)
        if status == 200:
            try:
                tile_status, reason = classify_tile(data, ctype, tile_size=self.source.tile_size,
                                                    empty_max_bytes=self.cfg.empty_max_bytes)
            except TileFault as fault:
                return None, (fault.reason, fault.retry)
            record = TileRecord(tile, tile_status, data if tile_status is TileStatus.OK else None, reason)
            return None, FetchResult(record, data, 1)
        if status == 204:
            return None, FetchResult(TileRecord(tile, TileStatus.EMPTY, reason="empty: HTTP 204 No Content"),
                                     b"", 1)
        message = server_message(data, ctype)
        quoted = f": '{message}'" if message else ""
        if status in (429, 503):
            after = parse_retry_after(resp.headers.get("Retry-After"))
            if after is not None:
                wait = min(after, self.cfg.backoff_max_s)
                self.limiter.pause(wait)  # every worker slows down, not just this one
                return wait, (f"HTTP {status} (Retry-After {after:g} s){quoted}", True)
        if status in RETRY_STATUSES or 500 <= status < 600:
            return None, (f"HTTP {status}{quoted}", True)
        if "NoApplicableCode" in message:
            # OGC maps NoApplicableCode to a server-side failure (HTTP 500), whatever status came with it.
            return None, (f"HTTP {status}{quoted}", True)
        if "TileOutOfRange" in message:
            return None, FetchResult(TileRecord(tile, TileStatus.EMPTY,
                                                reason=f"empty: outside the layer's range{quoted}"), data, 1)
        return None, (f"HTTP {status}{quoted}", False)


def _short_exc(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    for marker in ("RemoteDisconnected", "ConnectionResetError", "IncompleteRead", "ProtocolError",
                   "BrokenPipe", "refused"):
        if marker in text:
            return f"{type(exc).__name__}: {marker}"
    return f"{type(exc).__name__}: {text[:120]}"


# --------------------------------------------------------------------------- the engine
@dataclass
class HarvestReport:
    label: str
    total: int = 0
    stored: int = 0  # already in the store (ok or empty) before this run
    fetched: int = 0  # ok tiles downloaded
    cached: int = 0  # ok tiles copied from the cache
    empty: int = 0  # empty tiles recorded this run (downloaded, cached or outside the limits)
    failed: int = 0
    requests: int = 0  # HTTP tile requests made, retries included
    nbytes: int = 0  # bytes of ok tiles written this run
    seconds: float = 0.0
    failures: list[tuple[TileId, str]] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.fetched + self.cached + self.empty + self.failed

    def summary(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        parts = [f"{self.fetched} fetched", f"{self.cached} from cache", f"{self.empty} empty",
                 f"{self.failed} failed"]
        if self.stored:
            parts.append(f"{self.stored} already stored")
        return (f"harvested {self.label}: {self.total} tiles — {', '.join(parts)}; "
                f"{_megabytes(self.nbytes)} in {self.seconds:.1f} s ({rate:.0f} tiles/s)")


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def source_key(source: TileSource, service_key: str | None = None) -> SourceKey:
    return SourceKey(service_key or source.service_url, source.layer_id, source.matrix_set, source.format)


class _Batch:
    """Collects records and commits them (cache first, then store) in transactions."""

    def __init__(self, store: TileStore, cache: TileCache | None, key: SourceKey) -> None:
        self.store, self.cache, self.key = store, cache, key
        self.records: list[TileRecord] = []
        self.raw: list[tuple[TileRecord, bytes]] = []
        self.last = time.monotonic()

    def add(self, record: TileRecord, raw: bytes | None = None) -> None:
        self.records.append(record)
        if raw is not None and record.status is not TileStatus.FAILED:
            self.raw.append((record, raw))

    def due(self) -> bool:
        return len(self.records) >= BATCH_SIZE or time.monotonic() - self.last >= BATCH_SECONDS

    def flush(self) -> None:
        if self.cache is not None and self.raw:
            self.cache.put_many(self.key, self.raw)
        if self.records:
            self.store.put_many(self.records)
        self.records, self.raw = [], []
        self.last = time.monotonic()


def harvest(source: TileSource, tiles: Sequence[TileId], store: TileStore, cfg: HarvestConfig, *,
            cache: TileCache | None = None, label: str = "tiles", progress: bool = True,
            session: requests.Session | None = None, service_key: str | None = None,
            seed: int | None = None) -> HarvestReport:
    """Bring every tile of `tiles` into `store` (ok / empty / failed). Returns what happened.

    Tiles already ok/empty in the store are skipped; failed ones are retried. Does not mark the
    store complete: see `harvest_to_store`.
    """
    from tqdm import tqdm

    t0 = time.monotonic()
    wanted = list(dict.fromkeys(tiles))
    report = HarvestReport(label, total=len(wanted))
    existing = store.statuses()
    todo: list[TileId] = []
    for t in wanted:
        prior = existing.get(t)
        if prior is not None and prior[0] is not TileStatus.FAILED:
            report.stored += 1
        else:
            todo.append(t)

    key = source_key(source, service_key)
    batch = _Batch(store, cache, key)
    interactive = sys.stderr.isatty()
    bar = tqdm(total=report.total, initial=report.stored, unit="tile", desc=label, disable=not progress,
               leave=False, dynamic_ncols=True, mininterval=0.1 if interactive else 10.0)

    def record(rec: TileRecord, raw: bytes | None, origin: str) -> None:
        if rec.status is TileStatus.OK:
            report.nbytes += len(rec.data or b"")
            if origin == "cache":
                report.cached += 1
            else:
                report.fetched += 1
        elif rec.status is TileStatus.EMPTY:
            report.empty += 1
        else:
            report.failed += 1
            report.failures.append((rec.tile, rec.reason))
        batch.add(rec, raw if origin == "net" else None)
        bar.update(1)
        if batch.due():
            batch.flush()

    try:
        # 1. tiles outside the layer's TileMatrixSetLimits: no request, nothing there.
        remaining = []
        for t in todo:
            lim = source.limits(t.z)
            if lim is not None and not lim.contains(t):
                outside = "empty: outside the layer's TileMatrixSetLimits"
                record(TileRecord(t, TileStatus.EMPTY, reason=outside), None, "limits")
            else:
                remaining.append(t)
        # 2. tiles already in the shared cache.
        if cache is not None and remaining:
            cached_keys: set[TileId] = set()
            for z in sorted({t.z for t in remaining}):
                have = cache.statuses(key, z)
                cached_keys.update(t for t in remaining if t.z == z and (t.x, t.y) in have)
            hits = [t for t in remaining if t in cached_keys]
            for i in range(0, len(hits), 256):
                for rec in cache.get_many(key, hits[i:i + 256]):
                    record(rec, None, "cache")
            remaining = [t for t in remaining if t not in cached_keys]
        batch.flush()
        # 3. the network.
        if remaining:
            own_session = session is None
            session = session or make_session(cfg.user_agent, cfg.concurrency, source.url(remaining[0]))
            try:
                report.requests = _fetch_all(source, remaining, cfg, session, record, batch, seed)
            finally:
                if own_session:
                    session.close()
        batch.flush()
    finally:
        # Whatever happened (error, Ctrl-C), commit what was received.
        try:
            batch.flush()
        finally:
            bar.close()
            report.seconds = time.monotonic() - t0
    return report


def _fetch_all(source: TileSource, tiles: list[TileId], cfg: HarvestConfig, session: requests.Session,
               record: Callable[[TileRecord, bytes | None, str], None], batch: _Batch,
               seed: int | None) -> int:
    """Run the worker pool; `record` is called on the calling thread for every result."""
    stop = threading.Event()
    limiter = RateLimiter(cfg.requests_per_second)
    fetcher = TileFetcher(source, cfg, session, limiter, stop=stop, seed=seed)
    todo: queue.SimpleQueue[TileId] = queue.SimpleQueue()
    for t in tiles:
        todo.put(t)
    results: queue.SimpleQueue[FetchResult | BaseException] = queue.SimpleQueue()

    def worker() -> None:
        while not stop.is_set():
            try:
                t = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results.put(fetcher.fetch(t))
            except BaseException as exc:  # handed to the main thread, which stops everyone
                results.put(exc)
                return

    threads = [threading.Thread(target=worker, name=f"harvest-{i}", daemon=True)
               for i in range(min(cfg.concurrency, len(tiles)))]
    for th in threads:
        th.start()
    received = 0
    finished = False
    try:
        while received < len(tiles):
            try:
                item = results.get(timeout=BATCH_SECONDS)
            except queue.Empty:
                if batch.records:
                    batch.flush()
                if not any(th.is_alive() for th in threads) and results.empty():
                    break
                continue
            if isinstance(item, BaseException):
                raise item
            received += 1
            record(item.record, item.raw, "net")
        finished = True
    finally:
        stop.set()
        # On an error or Ctrl-C, don't wait out requests in flight: their threads are daemons.
        for th in threads:
            th.join(timeout=cfg.request_deadline_s + 1 if finished else 1.0)
        # Results that arrived while stopping are complete tiles: keep them.
        while True:
            try:
                item = results.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, FetchResult) and item.record.status is not TileStatus.FAILED:
                record(item.record, item.raw, "net")
    return fetcher.requests


# --------------------------------------------------------------------------- store-level run
IDENTITY_KEYS = ("source_url", "layer", "matrix_set", "format", "minzoom", "aoi")


def store_metadata(source: TileSource, *, label: str, tiles: Sequence[TileId], aoi: str,
                   attribution: str, layer_title: str = "", keywords: Sequence[str] = (),
                   synthetic: bool = False, service_key: str | None = None) -> dict[str, str]:
    zooms = sorted({t.z for t in tiles})
    w, s, e, n = union_bounds_wgs84(list(tiles))
    title = layer_title or source.layer_id
    return {
        "name": label,
        "format": format_extension(source.format),
        "bounds": f"{w:.8f},{s:.8f},{e:.8f},{n:.8f}",
        "center": f"{(w + e) / 2:.8f},{(s + n) / 2:.8f},{zooms[0]}",
        "minzoom": str(zooms[0]),
        "maxzoom": str(zooms[-1]),
        "type": "baselayer",
        "description": f"{title}{' (SYNTHETIC)' if synthetic and 'synthetic' not in title.lower() else ''}"
                       f" for AOI {aoi}",
        "source_url": service_key or source.service_url,
        "layer": source.layer_id,
        "layer_title": title,
        "keywords": ",".join(keywords),
        "synthetic": "true" if synthetic else "false",
        "matrix_set": source.matrix_set,
        "attribution": attribution,
        "aoi": aoi,
        "tile_size": str(source.tile_size),
    }


def check_store_matches(store: TileStore, meta: dict[str, str]) -> None:
    """Refuse to mix a different source/layer/matrix set/format/zoom/AOI into an existing store."""
    old = store.metadata
    if "source_url" not in old:
        return  # a new (or never-started) store
    diffs = [f"{k} '{old.get(k)}' (new: '{meta[k]}')" for k in IDENTITY_KEYS if old.get(k) != meta[k]]
    if diffs:
        raise StoreMismatchError(
            f"{store.path} already holds a different harvest: {'; '.join(diffs)}; "
            f"use another output file or delete it")


def check_harvest_output(out: str | Path, cfg: HarvestConfig, *, flag: str = "--out",
                         inputs: dict[str, Sequence[Path]] | None = None,
                         cache_dir: str | Path | None = None) -> None:
    """The output rule for a harvest, checked before anything is written: the store is not one of
    `inputs` (e.g. the AOI file), not the tile cache, and not an existing file of another kind."""
    cache = Path(cache_dir if cache_dir is not None else cfg.cache_dir)
    check_outputs([Output(flag, Path(out), SQLITE)],
                  {**(inputs or {}), "the tile cache": sqlite_files(cache / CACHE_FILE)})
    check_store_file(out)


def harvest_to_store(source: TileSource, tiles: Sequence[TileId], store_path: str | Path,
                     cfg: HarvestConfig, *, label: str, aoi: str, attribution: str = "",
                     layer_title: str = "", keywords: Sequence[str] = (), synthetic: bool = False,
                     service_key: str | None = None, cache_dir: str | Path | None = None,
                     progress: bool = True, session: requests.Session | None = None) -> HarvestReport:
    """Harvest into an MBTiles store (resuming it), then mark it complete or raise.

    The store says complete=false until every tile is recorded and failures are within
    `cfg.max_failed_fraction`; then complete=true, and it is rewritten in canonical form, so an
    unchanged harvest gives a byte-identical file.
    """
    if not tiles:
        raise LuminescenceError(f"{label}: the AOI covers no tiles")
    meta = store_metadata(source, label=label, tiles=tiles, aoi=aoi, attribution=attribution,
                          layer_title=layer_title, keywords=keywords, synthetic=synthetic,
                          service_key=service_key)
    cache_path = Path(cache_dir if cache_dir is not None else cfg.cache_dir)
    check_harvest_output(store_path, cfg, flag="the tile store", cache_dir=cache_path)
    with TileStore(store_path) as store:
        check_store_matches(store, meta)
        store.set_metadata({**meta, "complete": "false"})
        with TileCache(cache_path) as cache:
            report = harvest(source, tiles, store, cfg, cache=cache, label=label, progress=progress,
                             session=session, service_key=service_key)
        wanted = set(tiles)
        statuses = store.statuses()
        failed = [(t, statuses[t][1]) for t in sorted(wanted)
                  if t in statuses and statuses[t][0] is TileStatus.FAILED]
        missing = [t for t in wanted if t not in statuses]
        if missing:  # should not happen; never call such a store complete
            raise HarvestFailedError(f"{label}: {len(missing)} tiles were not recorded (e.g. {missing[0]}); "
                                     f"re-run to fetch them")
        fraction = len(failed) / len(wanted)
        if fraction > cfg.max_failed_fraction:
            shown = "; ".join(f"{t}: {why}" for t, why in failed[:5])
            raise HarvestFailedError(
                f"{label}: {len(failed)} of {len(wanted)} tiles failed ({fraction:.1%} > "
                f"harvest.max_failed_fraction {cfg.max_failed_fraction:g}): {shown}"
                f"{'; …' if len(failed) > 5 else ''}; the store is kept incomplete and re-running "
                f"retries only the failed tiles")
        store.mark_complete(True)
    # Same tiles, same bytes: no harvest time, rows in key order (see tilestore.write_canonical).
    write_canonical(store_path)
    return report
