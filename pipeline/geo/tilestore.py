"""TileStore: one MBTiles (SQLite) file per AOI x layer x zoom.

Tiles keep their original bytes (no recompression). Besides the standard MBTiles
`metadata` and `tiles` tables, a `tile_status` table records every requested tile
as ok / empty / failed with a reason, so a store says what it does not contain and
why. Every write is one SQLite transaction: a process killed at any moment leaves
the store with everything committed before, and `complete` in the metadata stays
"false" until the harvest has finished, so a partial store never looks complete.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import numpy as np

from pipeline.core.errors import LuminescenceError
from pipeline.geo.tiles import TILE_SIZE, TileId, tile_bounds_3857, tms_row

SCHEMA = """
CREATE TABLE IF NOT EXISTS metadata (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS tiles (
    zoom_level INTEGER NOT NULL, tile_column INTEGER NOT NULL, tile_row INTEGER NOT NULL,
    tile_data BLOB NOT NULL, PRIMARY KEY (zoom_level, tile_column, tile_row));
CREATE TABLE IF NOT EXISTS tile_status (
    zoom_level INTEGER NOT NULL, tile_column INTEGER NOT NULL, tile_row INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'empty', 'failed')),
    reason TEXT NOT NULL DEFAULT '', nbytes INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL,
    PRIMARY KEY (zoom_level, tile_column, tile_row));
"""

# Largest decoded tile we accept: guards against decompression bombs in untrusted tiles.
MAX_TILE_PIXELS = 4096 * 4096


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
                                 f"(dvc repro) or harvest it with `python -m pipeline.stages.fetch harvest`")
            uri = f"file:{self.path.resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False)
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
            raise StoreError(f"{self.path} is not a Luminescence tile store ({exc}); "
                             f"delete it and harvest again") from None

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
        return dict(self._db.execute("SELECT name, value FROM metadata").fetchall())

    def set_metadata(self, values: dict[str, object]) -> None:
        with self._db:
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
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO tile_status VALUES (?, ?, ?, ?, ?, ?, ?)", rows_status)
            self._db.executemany("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?)", rows_tiles)
            self._db.executemany(
                "DELETE FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?", deletes)
        return len(rows_status)

    # ---------------------------------------------------------------- reads
    def status(self, tile: TileId) -> TileStatus | None:
        row = self._db.execute(
            "SELECT status FROM tile_status WHERE zoom_level=? AND tile_column=? AND tile_row=?",
            (tile.z, tile.x, tms_row(tile.z, tile.y))).fetchone()
        return TileStatus(row[0]) if row else None

    def statuses(self) -> dict[TileId, tuple[TileStatus, str]]:
        rows = self._db.execute(
            "SELECT zoom_level, tile_column, tile_row, status, reason FROM tile_status").fetchall()
        return {TileId(z, x, tms_row(z, r)): (TileStatus(s), reason) for z, x, r, s, reason in rows}

    def tiles(self, status: TileStatus | None = TileStatus.OK) -> list[TileId]:
        """Tiles with the given status (all recorded tiles when status is None), sorted."""
        if status is None:
            rows = self._db.execute("SELECT zoom_level, tile_column, tile_row FROM tile_status")
        else:
            rows = self._db.execute(
                "SELECT zoom_level, tile_column, tile_row FROM tile_status WHERE status=?",
                (str(status),))
        return sorted(TileId(z, x, tms_row(z, r)) for z, x, r in rows)

    def counts(self) -> dict[TileStatus, int]:
        out = dict.fromkeys(TileStatus, 0)
        for s, n in self._db.execute("SELECT status, COUNT(*) FROM tile_status GROUP BY status"):
            out[TileStatus(s)] = n
        return out

    def get(self, tile: TileId) -> bytes | None:
        """Original bytes of an ok tile, or None."""
        row = self._db.execute(
            "SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?",
            (tile.z, tile.x, tms_row(tile.z, tile.y))).fetchone()
        return bytes(row[0]) if row else None

    def iter_data(self) -> Iterator[tuple[TileId, bytes]]:
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


class TileRefused(ValueError):
    """A tile that decodes but must not be used (decompression bomb, wrong size): retrying won't help."""


def _open_checked(data: bytes, expected_size: int | None):  # -> PIL.Image.Image, loaded
    """Open and fully decode untrusted bytes, refusing bombs and wrong sizes before decoding."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; our own guard decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > MAX_TILE_PIXELS:
            raise TileRefused(f"image of {w}x{h} pixels refused (decompression bomb guard)")
        if expected_size is not None and (w, h) != (expected_size, expected_size):
            raise TileRefused(f"image is {w}x{h}, expected {expected_size}x{expected_size}")
        img.load()  # decodes everything: truncated or corrupt data fails here
    except ValueError:
        raise
    except Image.DecompressionBombError as exc:
        raise TileRefused(f"image refused (decompression bomb guard: {exc})") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ValueError(f"not a decodable image ({type(exc).__name__}: {exc})") from None
    return img


def decode_tile(data: bytes, expected_size: int | None = TILE_SIZE) -> np.ndarray:
    """Decode untrusted tile bytes to (H, W, 4) uint8 RGBA, refusing decompression bombs.

    Raises ValueError with a short reason when the bytes are not a usable image
    (`TileRefused`, a ValueError, when the image is a bomb or has the wrong size).
    """
    with _open_checked(data, expected_size) as img:
        return np.asarray(img if img.mode == "RGBA" else img.convert("RGBA"))


@dataclass(frozen=True)
class TileSummary:
    """What a harvester needs to know about a tile without converting its pixels."""

    width: int
    height: int
    mode: str
    transparent: bool  # every pixel fully transparent
    single_colour: tuple[int, ...] | None  # the colour (in `mode` bands) when all pixels are equal


def inspect_tile(data: bytes, expected_size: int | None = TILE_SIZE) -> TileSummary:
    """Decode untrusted bytes (same guards as decode_tile) and summarise them without an RGBA copy.

    `getcolors(1)` gives up at the second distinct colour, and the alpha band's extrema are
    computed in C: together several times faster than building an RGBA array, which matters
    when checking hundreds of tiles per second.
    """
    with _open_checked(data, expected_size) as img:
        w, h = img.size
        mode = img.mode
        if mode not in ("RGBA", "LA", "RGB", "L") or "transparency" in img.info:
            img = img.convert("RGBA")  # palettes, tRNS chunks, 16-bit, 1-bit: normalise
        colours = img.getcolors(1)  # None as soon as a second colour turns up
        single = colours[0][1] if colours else None
        if single is not None and not isinstance(single, tuple):
            single = (single,)
        transparent = "A" in img.getbands() and img.getchannel("A").getextrema()[1] == 0
    return TileSummary(w, h, mode, transparent, tuple(int(v) for v in single) if single is not None else None)
