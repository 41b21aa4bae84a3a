"""The one gray-tile cache (pipeline.geo.pixels.GrayTiles) shared by align and colourise."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.geo.pixels import GrayTiles, luma
from pipeline.geo.tiles import TileId
from tests.imagery import png_bytes

GRAY, COLOUR, BROKEN, MISSING = (TileId(10, i, 0) for i in range(4))


class CountingStore:
    """Tile bytes from a dict, counting reads (what GrayTiles must avoid repeating)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        g = rng.integers(0, 256, (256, 256), dtype=np.uint8)
        rgb = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        alpha = np.full((256, 256, 1), 255, np.uint8)
        self.rgb = rgb
        self.gray = g
        self.tiles = {GRAY: png_bytes(np.dstack([g, g, g, alpha])),
                      COLOUR: png_bytes(np.dstack([rgb, alpha])),
                      BROKEN: b"\x89PNG\r\n\x1a\n" + b"\0" * 40}
        self.reads = 0

    def get(self, tile: TileId) -> bytes | None:
        self.reads += 1
        return self.tiles.get(tile)


def test_gray_and_colour_tiles_decode_once() -> None:
    store = CountingStore()
    tiles = GrayTiles(store, "rec709", cache_tiles=8)
    gray, colour = tiles.get(GRAY), tiles.get(COLOUR)
    assert gray is not None and colour is not None and gray.shape == colour.shape == (256, 256, 2)
    assert np.array_equal(gray[..., 0], store.gray) and (gray[..., 1] == 255).all()
    assert np.array_equal(colour[..., 0], luma(store.rgb, "rec709"))
    assert tiles.get(MISSING) is None
    reads = store.reads
    tiles.get(GRAY), tiles.get(COLOUR), tiles.get(MISSING)
    assert store.reads == reads  # all three served from the cache, the missing one too
    assert tiles.colour_tiles == {COLOUR}


def test_eviction_rereads_but_counts_a_colour_tile_once() -> None:
    store = CountingStore()
    tiles = GrayTiles(store, cache_tiles=1)
    for _ in range(3):
        tiles.get(COLOUR)
        tiles.get(GRAY)
    assert store.reads == 6 and tiles.colour_tiles == {COLOUR}


def test_undecodable_tiles_raise_or_count_as_missing() -> None:
    with pytest.raises(ValueError, match="not a decodable image"):
        GrayTiles(CountingStore()).get(BROKEN)
    store = CountingStore()
    lenient = GrayTiles(store, skip_undecodable=True)
    assert lenient.get(BROKEN) is None and lenient.get(BROKEN) is None and store.reads == 1
