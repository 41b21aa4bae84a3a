"""Tile pixels: decoding untrusted tile bytes, gray levels, and the gray-tile cache.

- `decode_tile` / `inspect_tile`: bytes from a server or a store -> RGBA array / summary, with
  guards against decompression bombs and wrong sizes (the bytes are untrusted).
- `luma` / `to_gray`: gray levels of gamma-encoded sRGB by Rec. 601 or Rec. 709 weights (the
  `align.luma` choice), applied identically by the align, evaluate and colourise code.
- `GrayTiles`: a store's tiles as gray + alpha, decoded once and kept in a small LRU cache
  (neighbouring windows and mosaics need the same tiles again).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.geo.tiles import TILE_SIZE, TileId

# Largest decoded tile we accept: guards against decompression bombs in untrusted tiles.
MAX_TILE_PIXELS = 4096 * 4096

LUMA_WEIGHTS = {"rec601": (0.299, 0.587, 0.114), "rec709": (0.2126, 0.7152, 0.0722)}
LUMA_FORMULAS = {
    "rec601": "Y = 0.299 R + 0.587 G + 0.114 B (Rec. 601 luma of the 8-bit sRGB values, rounded)",
    "rec709": "Y = 0.2126 R + 0.7152 G + 0.0722 B (Rec. 709 luma of the 8-bit sRGB values, rounded)",
}
# A grey layer saved as colour JPEG decodes with R, G, B a level or two apart.
GRAY_TOLERANCE = 2


# --------------------------------------------------------------------------- decoding
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


# --------------------------------------------------------------------------- grey levels
def luma(rgb: np.ndarray, formula: str = "rec601") -> np.ndarray:
    """Luma of (..., 3) uint8 gamma-encoded sRGB: no linearisation, as in Rec. 601/709 Y'."""
    wr, wg, wb = LUMA_WEIGHTS[formula]
    rgb = np.asarray(rgb)
    y = wr * rgb[..., 0].astype(np.float32) + wg * rgb[..., 1] + wb * rgb[..., 2]
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def to_gray(rgba: np.ndarray, formula: str = "rec601") -> tuple[np.ndarray, bool]:
    """(grey, is_colour) of an RGBA tile.

    A grey layer (R == G == B) gives its one channel unchanged; otherwise the luma, and
    `is_colour` is true when the channels differ by more than GRAY_TOLERANCE levels.
    """
    r, g, b = rgba[..., 0], rgba[..., 1], rgba[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):
        return r.copy(), False
    valid = rgba[..., 3] > 0
    spread = np.maximum(np.abs(r.astype(np.int16) - g), np.abs(g.astype(np.int16) - b))
    return luma(rgba[..., :3], formula), bool(valid.any() and spread[valid].max() > GRAY_TOLERANCE)


def nodata_fraction(alpha: np.ndarray) -> float:
    """Fraction of fully transparent (alpha 0) pixels."""
    return float(np.count_nonzero(alpha == 0)) / alpha.size


# --------------------------------------------------------------------------- the gray-tile cache
class TileBytes(Protocol):
    """Where tiles come from: a TileStore, or anything else that gives a tile's bytes."""

    def get(self, tile: TileId) -> bytes | None: ...


class GrayTiles:
    """A store's tiles as (256, 256, 2) uint8 gray + alpha, decoded once, in a small LRU cache.

    `colour_tiles` collects the tiles whose channels differed (converted by `formula`). Bytes
    that do not decode raise ValueError, or, when `skip_undecodable` is set, give None like a
    missing tile and are collected in `undecodable` (a damaged store).
    """

    def __init__(self, store: TileBytes, formula: str = "rec601", cache_tiles: int = 256, *,
                 skip_undecodable: bool = False) -> None:
        self.store = store
        self.formula = formula
        self.skip_undecodable = skip_undecodable
        self.colour_tiles: set[TileId] = set()
        self.undecodable: set[TileId] = set()
        self._cache: OrderedDict[TileId, np.ndarray | None] = OrderedDict()
        self._size = cache_tiles

    def get(self, tile: TileId) -> np.ndarray | None:
        """(256, 256, 2) uint8 gray + alpha, or None where there is no (usable) tile."""
        if tile in self._cache:
            self._cache.move_to_end(tile)
            return self._cache[tile]
        data = self.store.get(tile)
        out = None
        if data is not None:
            try:
                rgba = decode_tile(data)
            except ValueError:
                if not self.skip_undecodable:
                    raise
                self.undecodable.add(tile)
            else:
                gray, colour = to_gray(rgba, self.formula)
                if colour:
                    self.colour_tiles.add(tile)
                out = np.stack([gray, rgba[..., 3]], axis=-1)
        self._cache[tile] = out
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return out
