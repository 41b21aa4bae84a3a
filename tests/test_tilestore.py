"""TileStore: MBTiles layout, per-tile status, transactions, safe decoding, georeferencing."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import mercantile
import numpy as np
import pytest
from PIL import Image

from pipeline.geo import tilestore
from pipeline.geo.pixels import TileRefused, decode_tile
from pipeline.geo.tiles import TileId, tms_row
from pipeline.geo.tilestore import StoreError, TileRecord, TileStatus, TileStore, write_canonical
from tests.test_harvester import bomb_png, png_bytes, tile_png

T1, T2, T3 = TileId(18, 75500, 96800), TileId(18, 75501, 96800), TileId(18, 75500, 96801)


def test_put_get_status_and_mbtiles_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.mbtiles"
    data = tile_png(T1)
    with TileStore(path) as store:
        store.set_metadata({"name": "x", "format": "png", "minzoom": 18, "maxzoom": 18})
        store.put_many([TileRecord(T1, TileStatus.OK, data),
                        TileRecord(T2, TileStatus.EMPTY, reason="empty: fully transparent"),
                        TileRecord(T3, TileStatus.FAILED, reason="HTTP 500")])
        assert store.get(T1) == data and store.get(T2) is None
        assert store.status(T2) is TileStatus.EMPTY and store.status(TileId(18, 1, 1)) is None
        assert store.counts() == {TileStatus.OK: 1, TileStatus.EMPTY: 1, TileStatus.FAILED: 1}
        assert store.tiles() == [T1] and store.tiles(None) == sorted([T1, T2, T3])
        assert not store.complete
        # A failed tile that later succeeds replaces its status; an ok tile turned empty loses its data.
        store.put_many([TileRecord(T3, TileStatus.OK, data), TileRecord(T1, TileStatus.EMPTY)])
        assert store.get(T1) is None and store.get(T3) == data
        store.mark_complete()
        assert store.complete and store.zoom == 18
    # Plain MBTiles: rows are TMS (counted from the south); readers like GDAL rely on it.
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT zoom_level, tile_column, tile_row FROM tiles").fetchall()
    assert rows == [(18, T3.x, tms_row(18, T3.y))]


def test_put_many_is_one_transaction(tmp_path: Path) -> None:
    with TileStore(tmp_path / "s.mbtiles") as store:
        with pytest.raises(ValueError, match="no data"):
            store.put_many([TileRecord(T1, TileStatus.OK, b"x"), TileRecord(T2, TileStatus.OK, None)])
        assert store.counts()[TileStatus.OK] == 0  # nothing of the failed batch was written


def test_canonical_form_depends_only_on_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiles = [TileId(18, 75500 + i, 96800 + j) for i in range(4) for j in range(3)]
    records = [TileRecord(t, TileStatus.OK, tile_png(t)) if (t.x + t.y) % 3 else
               TileRecord(t, TileStatus.EMPTY, reason="empty: fully transparent") for t in tiles]
    meta = {"name": "x", "format": "png", "minzoom": 18, "maxzoom": 18, "layer": "l", "complete": "true"}
    paths = []
    for i, (order, batch, clock) in enumerate([(records, 5, "2026-01-01T00:00:00+00:00"),
                                               (records[::-1], 2, "2027-06-30T12:34:56+00:00")]):
        monkeypatch.setattr(tilestore, "_now", lambda clock=clock: clock)
        path = tmp_path / f"{i}.mbtiles"
        with TileStore(path) as store:
            store.set_metadata(dict(reversed(meta.items())) if i else meta)
            store.put_many([TileRecord(tiles[0], TileStatus.FAILED, reason="HTTP 500")])  # later replaced
            for k in range(0, len(order), batch):
                store.put_many(order[k:k + batch])
        paths.append(path)
    assert paths[0].read_bytes() != paths[1].read_bytes()  # same content, different files
    with TileStore(paths[0], readonly=True) as store:
        before = (store.metadata, store.statuses(), dict(store.iter_data()))
    (tmp_path / ".0.mbtiles.canonical.tmp").write_bytes(b"left over by a crash")
    for path in paths:
        write_canonical(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.mbtiles", "1.mbtiles"]
    with TileStore(paths[0], readonly=True) as store:
        assert (store.metadata, store.statuses(), dict(store.iter_data())) == before
        ok = sum(r.status is TileStatus.OK for r in records)
        assert store.complete and store.counts()[TileStatus.OK] == ok
    write_canonical(paths[0])  # idempotent
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_readonly_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        TileStore(tmp_path / "missing.mbtiles", readonly=True)
    bogus = tmp_path / "bogus.mbtiles"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a Luminescence tile store"):
        TileStore(bogus)


def test_decode_tile_guards() -> None:
    rgba = decode_tile(tile_png(T1))
    assert rgba.shape == (256, 256, 4) and rgba.dtype == np.uint8
    with pytest.raises(TileRefused, match="decompression bomb"):
        decode_tile(bomb_png())
    with pytest.raises(TileRefused, match="expected 256x256"):
        decode_tile(png_bytes(np.zeros((128, 128, 3), np.uint8)))
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_tile(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    # A JPEG decodes to RGBA with an opaque alpha.
    buf = io.BytesIO()
    Image.fromarray(np.full((256, 256, 3), 120, np.uint8)).save(buf, "JPEG")
    assert (decode_tile(buf.getvalue())[..., 3] == 255).all()


def test_export_geotiff_is_georeferenced(tmp_path: Path) -> None:
    import rasterio

    with TileStore(tmp_path / "s.mbtiles") as store:
        store.put_many([TileRecord(T1, TileStatus.OK, tile_png(T1))])
        out = store.export_geotiff(T1, tmp_path / "t.tif")
        with pytest.raises(StoreError, match="not in"):
            store.export_geotiff(T2, tmp_path / "missing.tif")
    expected = mercantile.xy_bounds(T1.x, T1.y, T1.z)
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 3857
        assert (ds.width, ds.height, ds.count) == (256, 256, 4)
        b = ds.bounds
        assert b.left == pytest.approx(expected.left, abs=1e-6)
        assert b.bottom == pytest.approx(expected.bottom, abs=1e-6)
        assert b.right == pytest.approx(expected.right, abs=1e-6)
        assert b.top == pytest.approx(expected.top, abs=1e-6)
        pixels = ds.read()
    assert np.array_equal(np.moveaxis(pixels, 0, -1), decode_tile(tile_png(T1)))


def _encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("img, transparent, single", [
    (Image.new("RGBA", (256, 256), (0, 0, 0, 0)), True, True),
    (Image.new("RGBA", (256, 256), (10, 20, 30, 255)), False, True),
    (Image.new("L", (256, 256), 7), False, True),
    (Image.new("LA", (256, 256), (7, 0)), True, True),
    (Image.new("P", (256, 256), 0), False, True),
])
def test_inspect_tile_agrees_with_rgba_decode(img: Image.Image, transparent: bool, single: bool) -> None:
    from pipeline.geo.pixels import inspect_tile

    for variant in (img, img.copy()):
        if variant is not img:  # break uniformity with one pixel
            variant.putpixel((5, 5), (255,) * len(variant.getbands()) if variant.mode != "P" else 1)
        data = _encode(variant)
        summary = inspect_tile(data)
        rgba = decode_tile(data)
        flat = rgba.reshape(-1, 4)
        assert summary.transparent == (not rgba[..., 3].any())
        assert (summary.single_colour is not None) == bool((flat == flat[0]).all())
    assert inspect_tile(_encode(img)).transparent == transparent


def test_inspect_tile_honours_png_transparency_chunk() -> None:
    from pipeline.geo.pixels import inspect_tile

    # A palette PNG whose only colour is marked transparent (tRNS), like many "no data" tiles.
    img = Image.new("P", (256, 256), 0)
    img.putpalette([255, 255, 255] * 256)
    summary = inspect_tile(_encode(img, transparency=0))
    assert summary.transparent
    # An 8-bit grey PNG with a tRNS value on one grey level only: not transparent overall.
    grey = Image.new("L", (256, 256), 3)
    grey.putpixel((0, 0), 200)
    assert not inspect_tile(_encode(grey, transparency=3)).transparent
