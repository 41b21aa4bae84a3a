"""Pairing: grey conversion, resampling between grids, and registration on real-image stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets.pairing import InputReader, PairingError, grid_of
from pipeline.geo.pixels import luma, to_gray
from pipeline.geo.registration import estimate_offset
from pipeline.geo.tiles import TileId, tile_bounds_3857
from pipeline.geo.tilestore import TileRecord, TileStatus, TileStore
from tests.imagery import ERIE_Z18, cut_tiles, make_store, png_bytes, render_mosaic, to_records


def _store_from_mosaic(path: Path, layer: str, zoom: int, x0: int, y0: int, n: int,
                       shift_px: tuple[float, float] = (0.0, 0.0)) -> Path:
    mosaic = render_mosaic(layer, zoom, x0, y0, n, n, shift_px)
    return make_store(path, to_records(cut_tiles(mosaic, zoom, x0, y0)), layer=layer, zoom=zoom)


@pytest.fixture(scope="module")
def target_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real NYSDOP 2021 imagery, z18, 3x3 tiles around ERIE_Z18."""
    path = tmp_path_factory.mktemp("stores") / "target.mbtiles"
    return _store_from_mosaic(path, "erie_2021", 18, ERIE_Z18.x - 1, ERIE_Z18.y - 1, 3)


def _target_luma(store_path: Path, tile: TileId) -> np.ndarray:
    with TileStore(store_path, readonly=True) as store:
        rgba = store.read_rgba(tile)
    assert rgba is not None
    return luma(rgba[..., :3])


# --------------------------------------------------------------------------- grey levels
def test_luma_formulas() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 200, 200]]], np.uint8)
    assert luma(rgb, "rec601").tolist() == [[76, 150, 29, 200]]
    assert luma(rgb, "rec709").tolist() == [[54, 182, 18, 200]]


def test_grey_layer_keeps_its_channel_and_colour_is_flagged() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 10
    rgba[..., 3] = 255
    gray, colour = to_gray(rgba)
    assert not colour and np.array_equal(gray, rgba[..., 0])
    rgba[0, 0, 0] = 250
    assert to_gray(rgba)[1]
    rgba[0, 0, 0] = rgba[0, 0, 1] + 1  # JPEG rounding: still a grey layer
    assert not to_gray(rgba)[1]


# --------------------------------------------------------------------------- registration on stores
@pytest.mark.parametrize("shift", [(3.4, -2.2), (-1.3, 0.6)])
def test_known_store_offset_is_recovered_and_removed(tmp_path: Path, target_store: Path,
                                                     shift: tuple[float, float]) -> None:
    # The input store is the same real imagery with a SYNTHETIC misregistration: content
    # shown `shift` pixels right/down of where it belongs.
    source = _store_from_mosaic(tmp_path / "shifted.mbtiles", "erie_2021", 18, ERIE_Z18.x - 1,
                                ERIE_Z18.y - 1, 3, shift)
    reference = _target_luma(target_store, ERIE_Z18)
    with TileStore(source, readonly=True) as src, TileStore(target_store, readonly=True) as tgt:
        reader = InputReader(src, grid_of(src, "historic"), grid_of(tgt, "target"), max_shift_px=8)
        assert reader.direct
        gray, alpha = reader.read(ERIE_Z18)
        offset = estimate_offset(reference, gray, max_shift_px=12)
        assert offset.dx == pytest.approx(shift[0], abs=0.5)
        assert offset.dy == pytest.approx(shift[1], abs=0.5)
        # Sampling the input at (x + dx, y + dy) puts it back in place, with real pixels at the edges.
        aligned, alpha = reader.read(ERIE_Z18, (offset.dx, offset.dy))
        assert alpha.min() == 255
        residual = estimate_offset(reference, aligned, max_shift_px=12)
        assert residual.magnitude < 0.25
        assert np.abs(aligned.astype(int) - reference).mean() < np.abs(gray.astype(int) - reference).mean()


# --------------------------------------------------------------------------- resampling between grids
@pytest.mark.parametrize("zoom", [17, 19])
def test_real_imagery_at_another_zoom_lands_on_the_target_grid(tmp_path: Path, target_store: Path,
                                                                zoom: int) -> None:
    factor = 2.0 ** (zoom - 18)
    x0, y0 = int((ERIE_Z18.x - 1) * factor), int((ERIE_Z18.y - 1) * factor)
    n = max(2, int(3 * factor))
    source = _store_from_mosaic(tmp_path / f"z{zoom}.mbtiles", "erie_2021", zoom, x0, y0, n)
    with TileStore(source, readonly=True) as src, TileStore(target_store, readonly=True) as tgt:
        reader = InputReader(src, grid_of(src, "historic"), grid_of(tgt, "target"))
        assert not reader.direct
        gray, alpha = reader.read(ERIE_Z18)
    assert gray.shape == (256, 256) and alpha.min() == 255
    offset = estimate_offset(_target_luma(target_store, ERIE_Z18), gray, max_shift_px=12)
    assert offset.magnitude < 0.5, offset


def _marker_store(path: Path, zoom: int, centre: tuple[float, float], half_m: float) -> Path:
    """A SYNTHETIC store: flat grey tiles with one bright square centred on a 3857 point."""
    records = []
    tiles = {}
    for tile in _tiles_around(zoom, centre):
        left, _, right, top = tile_bounds_3857(tile)
        res = (right - left) / 256
        xs = left + (np.arange(256) + 0.5) * res
        ys = top - (np.arange(256) + 0.5) * res
        inside = (np.abs(xs[None, :] - centre[0]) < half_m) & (np.abs(ys[:, None] - centre[1]) < half_m)
        rgba = np.full((256, 256, 4), 60, np.uint8)
        rgba[..., 3] = 255
        rgba[inside, :3] = 240
        tiles[tile] = rgba
        records.append(TileRecord(tile, TileStatus.OK, png_bytes(rgba)))
    return make_store(path, records, layer="marker", zoom=zoom, synthetic=True)


def _tiles_around(zoom: int, centre: tuple[float, float]) -> list[TileId]:
    import mercantile

    lon, lat = mercantile.lnglat(*centre)
    t = mercantile.tile(lon, lat, zoom)
    return [TileId(zoom, t.x + i, t.y + j) for i in (-1, 0, 1) for j in (-1, 0, 1)]


@pytest.mark.parametrize("zoom", [17, 19])
def test_georeferenced_marker_lands_at_its_pixel(tmp_path: Path, zoom: int) -> None:
    target_tile = ERIE_Z18
    left, _, right, top = tile_bounds_3857(target_tile)
    res = (right - left) / 256
    expected = (100.0, 60.0)  # pixel coordinates (x, y), pixel centres at i + 0.5
    centre = (left + expected[0] * res, top - expected[1] * res)
    half = 4 * res  # an 8 x 8 target-pixel square: 16 px at z19, 4 px at z17
    source = _marker_store(tmp_path / "marker.mbtiles", zoom, centre, half)
    blank = png_bytes(np.full((256, 256, 4), 255, np.uint8))
    target = make_store(tmp_path / "target.mbtiles", [TileRecord(target_tile, TileStatus.OK, blank)],
                        layer="blank", zoom=18, synthetic=True)
    with TileStore(source, readonly=True) as src, TileStore(target, readonly=True) as tgt:
        gray, _ = InputReader(src, grid_of(src, "m"), grid_of(tgt, "t")).read(target_tile)
    weight = np.clip(gray.astype(float) - 60, 0, None)
    ys, xs = np.mgrid[0:256, 0:256] + 0.5
    cx, cy = (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()
    assert cx == pytest.approx(expected[0], abs=0.5) and cy == pytest.approx(expected[1], abs=0.5)


def test_another_grid_without_resampling_is_refused(tmp_path: Path, target_store: Path) -> None:
    source = _store_from_mosaic(tmp_path / "z19.mbtiles", "erie_2021", 19, ERIE_Z18.x * 2, ERIE_Z18.y * 2, 2)
    with TileStore(source, readonly=True) as src, TileStore(target_store, readonly=True) as tgt, \
            pytest.raises(PairingError, match=r"align\.resampling"):
        InputReader(src, grid_of(src, "historic"), grid_of(tgt, "target"), resampling="none")


def test_unsupported_matrix_set_is_refused(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.mbtiles", [], layer="l", zoom=18, matrix_set="EPSG:3826")
    with TileStore(path, readonly=True) as store, pytest.raises(PairingError, match="EPSG:3826"):
        grid_of(store, "historic")


def test_drop_reasons_come_from_statuses(tmp_path: Path, target_store: Path) -> None:
    a, b, c = ERIE_Z18, ERIE_Z18._replace(x=ERIE_Z18.x + 1), ERIE_Z18._replace(y=ERIE_Z18.y + 1)
    rgba = np.full((256, 256, 4), 255, np.uint8)
    source = make_store(tmp_path / "s.mbtiles", [
        TileRecord(a, TileStatus.OK, png_bytes(rgba)), TileRecord(b, TileStatus.EMPTY),
        TileRecord(c, TileStatus.FAILED, reason="HTTP 500")], layer="l", zoom=18)
    with TileStore(source, readonly=True) as src, TileStore(target_store, readonly=True) as tgt:
        reader = InputReader(src, grid_of(src, "historic"), grid_of(tgt, "target"))
        assert reader.drop_reason(a) is None
        assert reader.drop_reason(b) == "input_empty"
        assert reader.drop_reason(c) == "input_failed"
        assert reader.drop_reason(ERIE_Z18._replace(x=ERIE_Z18.x - 1)) == "input_missing"
