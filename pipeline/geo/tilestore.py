"""TileStore: one MBTiles (SQLite) file per AOI x layer x zoom.

Tiles keep their original bytes (no recompression). Besides the standard MBTiles
`metadata` and `tiles` tables, a `tile_status` table records every requested tile
as ok / empty / failed with a reason, so a store says what it does not contain and
why. Every write is one SQLite transaction: a process killed at any moment leaves
the store with everything committed before, and `complete` in the metadata stays
"false" until the harvest has finished, so a partial store never looks complete.

A finished store is rewritten by `write_canonical`, so the same tiles always give the same file
bytes, whatever order concurrent workers stored them in (DVC then sees an unchanged output).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote

import numpy as np

from pipeline.core.errors import LuminescenceError
from pipeline.core.files import remove_stale_temp_files, replacing
from pipeline.geo.pixels import decode_tile
from pipeline.geo.tiles import TileId, tile_bounds_3857, tms_row

# One transaction: a store is created whole or not at all (a kill between two CREATEs would
# leave a file that is neither empty nor a store).
SCHEMA = """
BEGIN;
CREATE TABLE IF NOT EXISTS metadata (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS tiles (
    zoom_level INTEGER NOT NULL, tile_column INTEGER NOT NULL, tile_row INTEGER NOT NULL,
    tile_data BLOB NOT NULL, PRIMARY KEY (zoom_level, tile_column, tile_row));
CREATE TABLE IF NOT EXISTS tile_status (
    zoom_level INTEGER NOT NULL, tile_column INTEGER NOT NULL, tile_row INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'empty', 'failed')),
    reason TEXT NOT NULL DEFAULT '', nbytes INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL,
    PRIMARY KEY (zoom_level, tile_column, tile_row));
COMMIT;
"""
STORE_TABLES = frozenset({"metadata", "tiles", "tile_status"})
SQLITE_HEADER = b"SQLite format 3\x00"


class TileStatus(StrEnum):
    OK = "ok"
    EMPTY = "empty"
    FAILED = "failed"


@dataclass(frozen=True)
class TileRecord:
    """The outcome of fetching one tile. `data` is set only for status ok."""

    tile: TileId
    status: TileStatus
    data: bytes | None = None
    reason: str = ""


class StoreError(LuminescenceError):
    pass


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sqlite_files(path: str | Path) -> list[Path]:
    """An SQLite database and the journal files SQLite keeps beside it."""
    path = Path(path)
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


def check_store_file(path: str | Path) -> None:
    """Refuse (StoreError) an existing file that is not a Luminescence tile store, before anything
    writes to it: a GeoPackage, the tile cache or any other SQLite file must never gain our tables.

    Absent and empty files, and SQLite files without any table, are fine: nothing in them to lose.
    The file is only read (its header, then its table names through a read-only connection).
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"{path} is not a file; give the tile store a file name")
    with open(path, "rb") as fh:
        head = fh.read(len(SQLITE_HEADER))
    if not head:
        return
    if head != SQLITE_HEADER:
        raise StoreError(f"{path} exists and is not a Luminescence tile store (not even an SQLite file); "
                         f"it is left untouched: choose another output file")
    try:
        db = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is an SQLite file that cannot be read ({exc}); it is left untouched: "
                         f"choose another output file") from None
    if tables and not tables >= STORE_TABLES:
        shown = ", ".join(sorted(tables)[:6]) + (", …" if len(tables) > 6 else "")
        raise StoreError(f"{path} exists and is not a Luminescence tile store (an SQLite database with "
                         f"tables {shown}); it is left untouched: choose another output file")


def _database_error(path: Path, exc: sqlite3.DatabaseError, doing: str) -> StoreError:
    """One line for an SQLite failure, saying what it means for the user."""
    text = str(exc)
    if "readonly" in text or "unable to open" in text:
        advice = "the file or its folder cannot be written; choose another path or fix its permissions"
    elif "full" in text:
        advice = "the disk is full; free some space and re-run (what was written is kept)"
    elif "locked" in text or "busy" in text:
        advice = "another program is using it; wait for it to finish and re-run"
    else:
        advice = "the file is damaged; harvest it again into a new file"
    return StoreError(f"{path}: {doing} failed ({text}): {advice}")


class TileStore:
    """An MBTiles file with per-tile status. Use as a context manager."""

    def __init__(self, path: str | Path, *, readonly: bool = False, wal: bool = False) -> None:
        """`wal`: write-ahead logging, so readers on other connections never wait for a writer
        (the web app reads tiles while it writes new ones)."""
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise StoreError(f"tile store {self.path} does not exist; run its fetch stage first "
                                 f"(dvc repro) or harvest it with `luminescence fetch harvest`")
            uri = f"file:{self.path.resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            check_store_file(self.path)  # never add our tables to someone else's file
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, check_same_thread=False)
            except (OSError, sqlite3.DatabaseError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise StoreError(f"cannot create the tile store {self.path} ({reason}); choose another "
                                 f"path") from None
        try:
            if not readonly:
                if wal:
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(SCHEMA)
            self._db.execute("SELECT 1 FROM metadata LIMIT 1").fetchall()
            self._db.execute("SELECT 1 FROM tile_status LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if not readonly and isinstance(exc, sqlite3.OperationalError):
                raise _database_error(self.path, exc, "creating the tile store") from None
            raise StoreError(f"{self.path} is not a Luminescence tile store ({exc}); check the path "
                             f"(stores are made by a fetch stage or `fetch harvest`)") from None

    @contextmanager
    def _sql(self, doing: str) -> Iterator[None]:
        """Every query: SQLite's errors (damaged pages, full disk, ...) become one-line StoreErrors."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise _database_error(self.path, exc, doing) from None

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- metadata
    @property
    def metadata(self) -> dict[str, str]:
        with self._sql("reading the metadata"):
            return dict(self._db.execute("SELECT name, value FROM metadata").fetchall())

    def set_metadata(self, values: dict[str, object]) -> None:
        with self._sql("writing the metadata"), self._db:
            self._db.executemany(
                "INSERT INTO metadata (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                [(k, str(v)) for k, v in values.items()])

    @property
    def complete(self) -> bool:
        return self.metadata.get("complete") == "true"

    def mark_complete(self, complete: bool = True) -> None:
        self.set_metadata({"complete": "true" if complete else "false"})

    @property
    def zoom(self) -> int:
        return int(self.metadata["minzoom"])

    @property
    def format(self) -> str:
        return self.metadata.get("format", "png")

    # ---------------------------------------------------------------- writes
    def put_many(self, records: Iterable[TileRecord]) -> int:
        """Store records in one transaction. Returns how many were written."""
        now = _now()
        rows_status = []
        rows_tiles = []
        deletes = []
        for r in records:
            row = (r.tile.z, r.tile.x, tms_row(r.tile.z, r.tile.y))
            nbytes = len(r.data) if r.data else 0
            rows_status.append((*row, str(r.status), r.reason, nbytes, now))
            if r.status is TileStatus.OK:
                if not r.data:
                    raise ValueError(f"tile {r.tile} has status ok but no data")
                rows_tiles.append((*row, r.data))
            else:
                deletes.append(row)
        with self._sql("writing tiles"), self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO tile_status VALUES (?, ?, ?, ?, ?, ?, ?)", rows_status)
            self._db.executemany("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?)", rows_tiles)
            self._db.executemany(
                "DELETE FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?", deletes)
        return len(rows_status)

    # ---------------------------------------------------------------- reads
    def status(self, tile: TileId) -> TileStatus | None:
        with self._sql(f"reading the status of tile {tile}"):
            row = self._db.execute(
                "SELECT status FROM tile_status WHERE zoom_level=? AND tile_column=? AND tile_row=?",
                (tile.z, tile.x, tms_row(tile.z, tile.y))).fetchone()
        return TileStatus(row[0]) if row else None

    def statuses(self) -> dict[TileId, tuple[TileStatus, str]]:
        with self._sql("reading tile statuses"):
            rows = self._db.execute(
                "SELECT zoom_level, tile_column, tile_row, status, reason FROM tile_status").fetchall()
        return {TileId(z, x, tms_row(z, r)): (TileStatus(s), reason) for z, x, r, s, reason in rows}

    def tiles(self, status: TileStatus | None = TileStatus.OK) -> list[TileId]:
        """Tiles with the given status (all recorded tiles when status is None), sorted."""
        with self._sql("listing tiles"):
            if status is None:
                rows = self._db.execute("SELECT zoom_level, tile_column, tile_row FROM tile_status")
            else:
                rows = self._db.execute(
                    "SELECT zoom_level, tile_column, tile_row FROM tile_status WHERE status=?",
                    (str(status),))
            return sorted(TileId(z, x, tms_row(z, r)) for z, x, r in rows)

    def counts(self) -> dict[TileStatus, int]:
        out = dict.fromkeys(TileStatus, 0)
        with self._sql("counting tiles"):
            for s, n in self._db.execute("SELECT status, COUNT(*) FROM tile_status GROUP BY status"):
                out[TileStatus(s)] = n
        return out

    def get(self, tile: TileId) -> bytes | None:
        """Original bytes of an ok tile, or None."""
        with self._sql(f"reading tile {tile}"):
            row = self._db.execute(
                "SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?",
                (tile.z, tile.x, tms_row(tile.z, tile.y))).fetchone()
        return bytes(row[0]) if row else None

    def iter_data(self) -> Iterator[tuple[TileId, bytes]]:
        with self._sql("reading tiles"):
            for z, x, r, data in self._db.execute(
                    "SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles"):
                yield TileId(z, x, tms_row(z, r)), bytes(data)

    def read_rgba(self, tile: TileId) -> np.ndarray | None:
        """Decode an ok tile to (H, W, 4) uint8 RGBA, or None if not stored."""
        data = self.get(tile)
        return None if data is None else decode_tile(data)

    def export_geotiff(self, tile: TileId, path: str | Path) -> Path:
        """Write one tile as a GeoTIFF in EPSG:3857 with the tile's exact bounds."""
        import rasterio
        from rasterio.transform import from_bounds

        rgba = self.read_rgba(tile)
        if rgba is None:
            raise StoreError(f"tile {tile} is not in {self.path} (status: {self.status(tile)})")
        h, w = rgba.shape[:2]
        transform = from_bounds(*tile_bounds_3857(tile), w, h)
        path = Path(path)
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=4, dtype="uint8",
                           crs="EPSG:3857", transform=transform, photometric="RGB",
                           alpha="YES") as dst:
            dst.write(np.moveaxis(rgba, -1, 0))
        return path


# Rows of the canonical form, in key order. Per-tile times are when a worker happened to store
# the tile: a finished store keeps none ('' in the NOT NULL column), so equal content is equal bytes.
_CANONICAL_COPY = (
    "INSERT INTO main.metadata (name, value) SELECT name, value FROM src.metadata ORDER BY name",
    "INSERT INTO main.tiles (zoom_level, tile_column, tile_row, tile_data) "
    "SELECT zoom_level, tile_column, tile_row, tile_data FROM src.tiles "
    "ORDER BY zoom_level, tile_column, tile_row",
    "INSERT INTO main.tile_status (zoom_level, tile_column, tile_row, status, reason, nbytes, updated_at) "
    "SELECT zoom_level, tile_column, tile_row, status, reason, nbytes, '' FROM src.tile_status "
    "ORDER BY zoom_level, tile_column, tile_row",
)


def _uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(path.resolve()))}?mode={mode}"


def write_canonical(path: str | Path) -> None:
    """Rewrite a closed store so that its bytes depend only on its content.

    An SQLite file also records its history: rows in insertion order (which concurrent
    harvesting shuffles), free pages, change counters. The copy is built in a fresh file next
    to the store by one fixed sequence of statements, metadata by name and tiles in (zoom,
    column, row) order, then replaces the store (`pipeline.core.files.replacing`, durable): a crash leaves the
    old store or the new one, never a mix.
    """
    path = Path(path)
    remove_stale_temp_files(path)  # leftovers of a crash during an earlier rewrite
    with replacing(path, durable=True) as tmp:
        db = sqlite3.connect(_uri(tmp, "rwc"), uri=True, isolation_level=None)
        try:
            db.executescript(SCHEMA)
            db.execute("ATTACH DATABASE ? AS src", (_uri(path, "ro"),))
            db.execute("BEGIN")
            for statement in _CANONICAL_COPY:
                db.execute(statement)
            db.execute("COMMIT")
            db.execute("DETACH DATABASE src")
        finally:
            db.close()
