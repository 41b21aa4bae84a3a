"""Persistent tile cache shared by every run and AOI, so no tile is downloaded twice.

One SQLite file under `harvest.cache_dir` (default `.tilecache/tiles.sqlite`), outside DVC's
outputs: `dvc repro` deletes a stage's tile store before re-running it, the cache survives.
Keyed by (service URL, layer, matrix set, format, z, x, y); stores the original bytes and the
outcome (ok or empty). Failures are never cached, so they are retried on the next run.
WAL mode plus a busy timeout lets parallel stages share it; a lock makes it thread-safe.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from pipeline.core.errors import LuminescenceError
from pipeline.geo.tiles import TileId
from pipeline.geo.tilestore import TileRecord, TileStatus

CACHE_FILE = "tiles.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    id INTEGER PRIMARY KEY, service TEXT NOT NULL, layer TEXT NOT NULL, matrix_set TEXT NOT NULL,
    format TEXT NOT NULL, UNIQUE (service, layer, matrix_set, format));
CREATE TABLE IF NOT EXISTS tiles (
    source_id INTEGER NOT NULL REFERENCES sources(id), z INTEGER NOT NULL, x INTEGER NOT NULL,
    y INTEGER NOT NULL, status TEXT NOT NULL CHECK (status IN ('ok', 'empty')),
    reason TEXT NOT NULL DEFAULT '', data BLOB NOT NULL, fetched_at TEXT NOT NULL,
    PRIMARY KEY (source_id, z, x, y));
"""


class CacheError(LuminescenceError):
    pass


class SourceKey(NamedTuple):
    """What identifies a tile's bytes besides z/x/y."""

    service: str
    layer: str
    matrix_set: str
    format: str


class TileCache:
    """Thread-safe, transactional cache of fetched tiles. Use as a context manager."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        self.path = self.dir / CACHE_FILE
        self._lock = threading.Lock()
        self._source_ids: dict[SourceKey, int] = {}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise CacheError(f"tile cache {self.path} is unusable ({exc}); delete {self.dir} to start "
                             f"a fresh cache (tiles will be downloaded again)") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> TileCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _source_id(self, key: SourceKey) -> int:
        if key in self._source_ids:
            return self._source_ids[key]
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO sources (service, layer, matrix_set, format) "
                             "VALUES (?, ?, ?, ?)", tuple(key))
        (sid,) = self._db.execute(
            "SELECT id FROM sources WHERE service=? AND layer=? AND matrix_set=? AND format=?",
            tuple(key)).fetchone()
        self._source_ids[key] = sid
        return sid

    def statuses(self, key: SourceKey, zoom: int) -> dict[tuple[int, int], TileStatus]:
        """(x, y) -> ok/empty for every cached tile of this source at this zoom (no bytes)."""
        with self._lock:
            sid = self._source_id(key)
            rows = self._db.execute("SELECT x, y, status FROM tiles WHERE source_id=? AND z=?",
                                    (sid, zoom)).fetchall()
        return {(x, y): TileStatus(s) for x, y, s in rows}

    def get_many(self, key: SourceKey, tiles: Iterable[TileId]) -> list[TileRecord]:
        """Cached records of these tiles (those not cached are skipped)."""
        out = []
        with self._lock:
            sid = self._source_id(key)
            for t in tiles:
                row = self._db.execute(
                    "SELECT status, reason, data FROM tiles WHERE source_id=? AND z=? AND x=? AND y=?",
                    (sid, t.z, t.x, t.y)).fetchone()
                if row is None:
                    continue
                status = TileStatus(row[0])
                out.append(TileRecord(t, status, bytes(row[2]) if status is TileStatus.OK else None,
                                      row[1]))
        return out

    def put_many(self, key: SourceKey, entries: Iterable[tuple[TileRecord, bytes]]) -> int:
        """Store (record, original bytes) pairs in one transaction; failures are refused.

        Empty tiles keep their bytes too (they are small), so the cache holds what the server sent.
        """
        now = datetime.now(UTC).isoformat(timespec="seconds")
        rows = []
        for record, data in entries:
            if record.status not in (TileStatus.OK, TileStatus.EMPTY):
                raise ValueError(f"only ok/empty tiles are cached, not {record.status}")
            t = record.tile
            rows.append((t.z, t.x, t.y, str(record.status), record.reason, data, now))
        if not rows:
            return 0
        with self._lock:
            sid = self._source_id(key)
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     [(sid, *r) for r in rows])
        return len(rows)

    def count(self, key: SourceKey | None = None) -> int:
        with self._lock:
            if key is None:
                return self._db.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
            sid = self._source_id(key)
            return self._db.execute("SELECT COUNT(*) FROM tiles WHERE source_id=?", (sid,)).fetchone()[0]
