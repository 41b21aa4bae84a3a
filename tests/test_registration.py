"""Offset estimation by phase correlation recovers known subpixel shifts of real imagery."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.geo.pixels import luma
from pipeline.geo.registration import estimate_offset
from tests.imagery import ERIE_Z18, render_mosaic


@pytest.fixture(scope="module")
def erie_gray() -> np.ndarray:
    """Luma of a real 3x3-tile NYSDOP 2021 mosaic (z18) centred on ERIE_Z18."""
    mosaic = render_mosaic("erie_2021", 18, ERIE_Z18.x - 1, ERIE_Z18.y - 1, 3, 3)
    return luma(mosaic[..., :3]).astype(np.float32)


def _tile(img: np.ndarray, i: int, j: int) -> np.ndarray:
    return img[j * 256:(j + 1) * 256, i * 256:(i + 1) * 256]


@pytest.mark.parametrize(("dx", "dy"), [(0.3, -0.7), (2.5, 1.25), (-5.6, 3.3), (7.9, -7.1), (-0.45, 0.0)])
def test_recovers_known_subpixel_shifts_with_the_documented_sign(erie_gray: np.ndarray, dx: float,
                                                                 dy: float) -> None:
    # SYNTHETIC misregistration of real imagery: content moved dx right and dy down
    # (ndimage.shift: out(x) = in(x - shift)), so a feature at (x, y) shows at (x + dx, y + dy).
    moved = ndimage.shift(erie_gray, (dy, dx), order=3, mode="nearest")
    for i, j in [(1, 1), (0, 2), (2, 0)]:
        offset = estimate_offset(_tile(erie_gray, i, j), _tile(moved, i, j), max_shift_px=12)
        assert abs(offset.dx - dx) < 0.5 and abs(offset.dy - dy) < 0.5, (i, j, offset)
        assert offset.peak > 0.5


def test_subpixel_accuracy_is_well_below_the_requirement(erie_gray: np.ndarray) -> None:
    moved = ndimage.shift(erie_gray, (1.37, -2.61), order=3, mode="nearest")
    offset = estimate_offset(_tile(erie_gray, 1, 1), _tile(moved, 1, 1), max_shift_px=12)
    assert offset.dx == pytest.approx(-2.61, abs=0.1) and offset.dy == pytest.approx(1.37, abs=0.1)


def test_search_stays_within_max_shift(erie_gray: np.ndarray) -> None:
    moved = ndimage.shift(erie_gray, (0.0, 10.0), order=1, mode="nearest")
    offset = estimate_offset(_tile(erie_gray, 1, 1), _tile(moved, 1, 1), max_shift_px=5)
    assert offset.magnitude <= 5 + 1e-9
    assert offset.peak < 0.5  # the true peak is outside the search: a weak, unreliable estimate


def test_identical_tiles_have_zero_offset_and_full_peak(erie_gray: np.ndarray) -> None:
    tile = _tile(erie_gray, 1, 1)
    offset = estimate_offset(tile, tile.copy(), max_shift_px=12)
    assert (offset.dx, offset.dy) == (0.0, 0.0) and offset.peak == pytest.approx(1.0, abs=1e-3)


def test_featureless_tile_is_not_confident(erie_gray: np.ndarray) -> None:
    flat = np.full((256, 256), 120.0, np.float32)
    assert estimate_offset(_tile(erie_gray, 1, 1), flat, max_shift_px=12).peak == 0.0
    noise = np.random.default_rng(0).normal(120, 10, (256, 256)).astype(np.float32)
    assert estimate_offset(_tile(erie_gray, 1, 1), noise, max_shift_px=12).peak < 0.1


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError):
        estimate_offset(np.zeros((8, 8)), np.zeros((8, 9)), max_shift_px=2)
