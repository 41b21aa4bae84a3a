"""Train / val / test splits by spatial blocks, stable when the AOI grows.

Neighbouring tiles look alike (one field spans several tiles), so a random tile split
leaks: the model is scored on near-copies of its training tiles. Instead the grid is cut
into blocks of `block_size` x `block_size` tiles, block (x // b, y // b), and each block
goes to one split.

Assignment: hash (seed, zoom, block_x, block_y) with BLAKE2b to a number u uniform in
[0, 1) and threshold it: u < train -> train, u < train + val -> val, else test. It depends on
nothing but the block's own position, so it is deterministic for a seed, independent of
the AOI and of the order of tiles, and a tile keeps its split when the AOI grows.
Fractions: each block is an independent draw, so over n blocks the realised block fraction
of a split with probability p has standard deviation sqrt(p (1 - p) / n): about 0.04 for
p = 0.15 and 100 blocks, 0.01 for 1,000. Small AOIs can deviate a lot (or miss a split);
the stage reports the realised counts. Tile counts follow block counts, except that edge
blocks are partly outside the AOI and the guard band thins some blocks more than others.

Guard band (`guard_band` = g tiles): a tile is discarded when any grid position within
Chebyshev distance g (the 8-neighbourhood for g = 1) lies in a block of another split that
ranks above its own (test > val > train). Of two nearby tiles in different splits the
lower-ranked one always goes, so no two kept tiles closer than g + 1 tiles are in different
splits, while the small val/test blocks stay whole and the band is taken from train (a
symmetric band would discard both sides and leave small AOIs with almost no val/test).
It is a function of position alone (neighbour positions outside the AOI count too), so it
is stable when the AOI grows as well.
"""

from __future__ import annotations

import hashlib
import struct

from pipeline.core.config import SplitConfig
from pipeline.geo.tiles import TileId

GUARD = "guard_band"
# Which side of a split boundary keeps its tiles: the higher rank.
_RANK = {"train": 0, "val": 1, "test": 2}


def block_of(tile: TileId, block_size: int) -> tuple[int, int]:
    return tile.x // block_size, tile.y // block_size


def block_uniform(seed: int, zoom: int, block_x: int, block_y: int) -> float:
    """A number in [0, 1) that is a fixed function of the block and the seed."""
    key = struct.pack("<qqqq", seed, zoom, block_x, block_y)
    digest = hashlib.blake2b(key, digest_size=8, person=b"lum-splits").digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


def split_of_block(cfg: SplitConfig, zoom: int, block_x: int, block_y: int) -> str:
    u = block_uniform(cfg.seed, zoom, block_x, block_y)
    if u < cfg.train:
        return "train"
    if u < cfg.train + cfg.val:
        return "val"
    return "test"


class SplitPlan:
    """Split (or guard band) of any tile of the grid, for one SplitConfig."""

    def __init__(self, cfg: SplitConfig) -> None:
        self.cfg = cfg
        self._blocks: dict[tuple[int, int, int], str] = {}

    def split(self, tile: TileId) -> str:
        """The split of the tile's block, ignoring the guard band."""
        bx, by = block_of(tile, self.cfg.block_size)
        key = (tile.z, bx, by)
        if key not in self._blocks:
            self._blocks[key] = split_of_block(self.cfg, tile.z, bx, by)
        return self._blocks[key]

    def in_guard_band(self, tile: TileId) -> bool:
        g = self.cfg.guard_band
        if g == 0:
            return False
        own = _RANK[self.split(tile)]
        last = (1 << tile.z) - 1
        for y in range(max(0, tile.y - g), min(last, tile.y + g) + 1):
            for x in range(max(0, tile.x - g), min(last, tile.x + g) + 1):
                if _RANK[self.split(TileId(tile.z, x, y))] > own:
                    return True
        return False

    def assign(self, tile: TileId) -> str:
        """'train', 'val', 'test', or GUARD for a tile discarded by the guard band."""
        return GUARD if self.in_guard_band(tile) else self.split(tile)



class WholeAreaPlan:
    """A held-out area: every tile in one split (no blocks, no guard band: nothing of this
    area is trained on, so nothing can leak into it)."""

    def __init__(self, split: str = "test") -> None:
        self._split = split

    def split(self, tile: TileId) -> str:
        return self._split

    def in_guard_band(self, tile: TileId) -> bool:
        return False
