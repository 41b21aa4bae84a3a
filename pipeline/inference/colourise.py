"""Colourise a harvested area with a trained model, without seams between tiles.

    python -m pipeline.stages.colourise --model runs/ABLATION/model.pt --store AREA.mbtiles \
        --out AREA_colour.mbtiles [--geotiff AREA_colour.tif] [--preview AREA.png]

The input is any tile store (a fetch stage's output, or `python -m pipeline.stages.fetch harvest`
for a new area). Each tile is colourised inside a larger window made of its neighbours
(`--margin` pixels on every side), and near its edges the tile is cross-faded with its
neighbours' windows (pipeline/inference/blend.py), so colours run on across tile edges and
the mosaic shows no tile seams (the reference implementations colourise tiles one by one,
and their zero padding shows).
Colour input tiles (a modern layer) are converted to gray with the align stage's luma
first, and the output says so. Output tiles keep the input's transparency and its
z/x/y, so the GeoTIFF mosaic carries EPSG:3857 and the exact tile bounds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import LuminescenceError
from pipeline.core.files import replacing
from pipeline.core.outputs import PNG, SQLITE, TIFF, Output, check_outputs
from pipeline.geo.pixels import GrayTiles, to_gray
from pipeline.geo.tiles import TILE_SIZE, TileId, tile_bounds_3857, union_bounds_wgs84
from pipeline.geo.tilestore import TileRecord, TileStatus, TileStore, check_store_file, sqlite_files
from pipeline.inference.blend import NEIGHBOURS, blend_tile
from pipeline.inference.layout import colourise_windows

MIN_MARGIN = 32


class ColouriseError(LuminescenceError):
    pass


def size_multiple(net_g: str) -> int:
    """Input sizes the generator accepts must be multiples of this."""
    from models.networks import PRETRAINED_GENERATORS
    from models.networks.effnet_unet import EffNetUnetGenerator

    if net_g in PRETRAINED_GENERATORS:
        return EffNetUnetGenerator.size_multiple
    if net_g.startswith("unet_"):
        return int(net_g.split("_")[1])
    return 4  # ResNet generators: two stride-2 downsamplings


def context_margin(multiple: int, min_margin: int = MIN_MARGIN) -> int:
    """Smallest margin >= min_margin with (256 + 2 * margin) a multiple of `multiple`."""
    margin = min_margin
    while (TILE_SIZE + 2 * margin) % multiple:
        margin += 1
    return margin


def context_window(tiles: GrayTiles, tile: TileId, margin: int) -> np.ndarray:
    """The tile's gray pixels with `margin` pixels of its neighbours around it.

    Where a neighbour is missing, the tile is mirrored instead (as reflection padding
    would), so the window is always complete.
    """
    centre = tiles.get(tile)
    assert centre is not None
    n = TILE_SIZE
    window = np.pad(centre[..., 0], margin, mode="symmetric")
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx == dy == 0:
                continue
            nb = tiles.get(TileId(tile.z, tile.x + dx, tile.y + dy))
            if nb is None or (nb[..., 1] < 255).any():
                continue
            # Window rows/cols covered by this neighbour, and the matching source slice.
            ys = (0, margin) if dy < 0 else (margin, margin + n) if dy == 0 else (margin + n, 2 * margin + n)
            xs = (0, margin) if dx < 0 else (margin, margin + n) if dx == 0 else (margin + n, 2 * margin + n)
            sy = slice(n - margin, n) if dy < 0 else slice(0, n) if dy == 0 else slice(0, margin)
            sx = slice(n - margin, n) if dx < 0 else slice(0, n) if dx == 0 else slice(0, margin)
            window[ys[0]:ys[1], xs[0]:xs[1]] = nb[sy, sx, 0]
    return window


def png_rgba(rgb: np.ndarray, alpha: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.dstack([rgb, alpha])).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


@dataclass
class ColouriseReport:
    tiles: int
    colour_input_tiles: int
    margin: int
    seconds: float
    undecodable: int = 0  # input tiles whose bytes are not an image: recorded as failed, skipped
    norm_stats_windows: int = 0  # windows the area's instance-norm statistics came from (0: none)


def fit_area_norm_stats(model: Any, gray_tiles: GrayTiles, tiles: list[TileId], *, margin: int,
                        windows: int, batch_size: int) -> int:
    """Give the model's instance norms the statistics of this area: gathered over the context
    windows of up to `windows` of its tiles, evenly spread over them (all tiles with data, done
    or not, so a resumed run gets the same ones). Returns the windows used (0: the model has no
    instance norms)."""
    from models.networks.norm_stats import gray_batches, instance_norms, spread

    if not instance_norms(model.nets[model.colourising_net]):
        return 0
    usable = [t for t in tiles if gray_tiles.get(t) is not None]
    if not usable:
        return 0
    picked = [usable[i] for i in spread(len(usable), windows)]
    sample = np.stack([context_window(gray_tiles, t, margin) for t in picked])
    model.fit_norm_stats(gray_batches(sample, len(sample), batch_size))
    return len(sample)


def window_order(todo: list[TileId], has_data: set[TileId]) -> list[TileId]:
    """The windows the tiles of `todo` are blended from (`blend_tile`): theirs and their
    neighbours' with data, row by row, so that a tile can be finished (and its windows let go)
    a row after its own."""
    needed = {TileId(t.z, t.x + dx, t.y + dy) for t in todo for dx, dy in NEIGHBOURS}
    return sorted(needed & has_data, key=lambda t: (t.z, t.y, t.x))


def colourise_store(model: Any, source: TileStore, out: TileStore, *, margin: int, luma: str,
                    batch_size: int = 4, progress: bool = True,
                    norm_stats_windows: int | None = None) -> ColouriseReport:
    """Colourise every tile with data in `source` into `out` (resumable: done tiles are skipped).
    Each tile is cross-faded from its own and its neighbours' context windows (`blend_tile`), so
    colours run on across tile edges; the model's outputs are kept only until every tile that
    needs them is written (about two rows of windows).
    norm_stats_windows: give instance norms the area's statistics first (`fit_area_norm_stats`)."""
    import time

    import torch
    from tqdm import tqdm

    gray_tiles = GrayTiles(source, luma, skip_undecodable=True)  # a damaged tile: skipped, counted
    done = set(out.tiles(TileStatus.OK))
    all_tiles = source.tiles(TileStatus.OK)
    todo = [t for t in all_tiles if t not in done]
    start = time.perf_counter()
    fitted = (fit_area_norm_stats(model, gray_tiles, all_tiles, margin=margin, windows=norm_stats_windows,
                                  batch_size=batch_size)
              if norm_stats_windows and todo else 0)
    has_data = {t for t in all_tiles if gray_tiles.get(t) is not None}
    bad = [t for t in todo if t not in has_data]
    if bad:
        out.put_many(TileRecord(t, TileStatus.FAILED, reason="input tile is not a decodable image")
                     for t in bad)
    todo = [t for t in todo if t in has_data]
    order = window_order(todo, has_data)
    pending = set(todo)
    # windows still to run before a tile can be blended; tiles still to blend that use a window
    missing = {t: sum(TileId(t.z, t.x + dx, t.y + dy) in has_data for dx, dy in NEIGHBOURS) for t in todo}
    users = {w: sum(TileId(w.z, w.x + dx, w.y + dy) in pending for dx, dy in NEIGHBOURS) for w in order}
    outputs: dict[TileId, np.ndarray] = {}
    with torch.inference_mode(), tqdm(total=len(todo) + len(bad), desc="colourising", unit="tile",
                                      disable=not progress) as bar:
        bar.update(len(bad))
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            windows = np.stack([context_window(gray_tiles, t, margin) for t in batch])
            rgb = colourise_windows(model, torch.from_numpy(windows).unsqueeze(1).float().div_(255.0))
            finished: list[TileId] = []
            for w, pixels in zip(batch, rgb, strict=True):
                outputs[w] = pixels
                for dx, dy in NEIGHBOURS:
                    t = TileId(w.z, w.x + dx, w.y + dy)
                    if t in pending:
                        missing[t] -= 1
                        if not missing[t]:
                            finished.append(t)
            records = []
            for t in finished:
                around = {(dx, dy): outputs.get(TileId(t.z, t.x + dx, t.y + dy)) for dx, dy in NEIGHBOURS}
                tile = gray_tiles.get(t)
                if tile is None:  # unreachable: tiles without a usable image were taken out of todo
                    raise ColouriseError(f"input tile {t} has no usable image")
                pixels = blend_tile(around, margin)
                records.append(TileRecord(t, TileStatus.OK, png_rgba(pixels, tile[..., 1])))
                pending.discard(t)
                for dx, dy in NEIGHBOURS:
                    w = TileId(t.z, t.x + dx, t.y + dy)
                    if w in users:
                        users[w] -= 1
                        if not users[w]:
                            outputs.pop(w, None)
            if records:
                out.put_many(records)  # one transaction per batch: a killed run keeps what it wrote
                bar.update(len(records))
    return ColouriseReport(tiles=len(todo), colour_input_tiles=len(gray_tiles.colour_tiles),
                           margin=margin, seconds=time.perf_counter() - start, undecodable=len(bad),
                           norm_stats_windows=fitted)


def mosaic(store: TileStore) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """All ok tiles of one zoom as one RGBA array and its EPSG:3857 bounds."""
    tiles = store.tiles(TileStatus.OK)
    if not tiles:
        raise ColouriseError(f"{store.path} has no tiles to mosaic")
    xs = [t.x for t in tiles]
    ys = [t.y for t in tiles]
    x0, y0 = min(xs), min(ys)
    n = TILE_SIZE
    out = np.zeros(((max(ys) - y0 + 1) * n, (max(xs) - x0 + 1) * n, 4), dtype=np.uint8)
    for t in tiles:
        try:
            rgba = store.read_rgba(t)
        except ValueError:  # an undecodable tile of a damaged store: left transparent
            continue
        if rgba is None:
            raise ColouriseError(f"{store.path}: tile {t} is marked ok but has no image data")
        out[(t.y - y0) * n:(t.y - y0 + 1) * n, (t.x - x0) * n:(t.x - x0 + 1) * n] = rgba
    z = tiles[0].z
    left, _, _, top = tile_bounds_3857(TileId(z, x0, y0))
    _, bottom, right, _ = tile_bounds_3857(TileId(z, max(xs), max(ys)))
    return out, (left, bottom, right, top)


def write_geotiff(store: TileStore, path: Path) -> Path:
    """The store's tiles as one Cloud-Optimized GeoTIFF (RGBA, EPSG:3857, overviews)."""
    from rasterio.transform import from_bounds

    from pipeline.geo.cog import write_cog

    rgba, bounds = mosaic(store)
    h, w = rgba.shape[:2]
    meta = store.metadata
    return write_cog(rgba, path, crs="EPSG:3857", transform=from_bounds(*bounds, w, h),
                     tags={k: meta[k] for k in ("description", "model", "source_store") if k in meta})


def _model_label(model_file: Path) -> str:
    return "the release model" if model_file.parent.name == "release" else f"model {model_file.parent.name}"


def write_preview(source: TileStore, out: TileStore, path: Path, *, luma: str, model_label: str = "model",
                  max_px: int = 1400) -> Path:
    """A PNG: the gray input, its colourisation and, when the source tiles are a colour photo,
    that real photo, side by side under a header naming each panel, downsampled."""
    from PIL import Image, ImageDraw

    src, _ = mosaic(source)
    col, _ = mosaic(out)
    gray = to_gray(src, luma)[0]
    panels = [("gray input", np.dstack([gray, gray, gray, src[..., 3]])),
              (f"colours estimated by {model_label}", col)]
    rgb = src[..., :3].astype(np.int16)
    if np.abs(rgb[..., 0] - rgb[..., 1]).max() > 0 or np.abs(rgb[..., 1] - rgb[..., 2]).max() > 0:
        panels.append(("real colour photo", src))  # a colour source was converted to gray first
    gap = np.zeros((src.shape[0], 16, 4), np.uint8)
    row = np.concatenate([x for _, p in panels for x in (p, gap)][:-1], axis=1)
    img = Image.fromarray(row)
    scale = max_px / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    framed = Image.new("RGBA", (img.width, img.height + 22), (255, 255, 255, 255))
    framed.paste(img, (0, 22))
    draw = ImageDraw.Draw(framed)
    step = img.width / len(panels)
    for i, (label, _) in enumerate(panels):
        draw.text((round(i * step) + 4, 5), label, fill=(0, 0, 0, 255))
    with replacing(path) as tmp:
        framed.save(tmp, format="PNG")
    return path


def run(model_file: Path, source_path: Path, out_path: Path, *, geotiff: Path | None, preview: Path | None,
        margin: int | None, luma: str, device_name: str, batch_size: int, progress: bool,
        norm_stats_windows: int | None = None) -> str:
    """norm_stats_windows: instance norms use the area's statistics, gathered over this many
    context windows (None: as the model file has them)."""
    from pipeline.inference.layout import use_fast_layout
    from pipeline.training.checkpoint import load_model
    from pipeline.training.devices import pick_device

    if not model_file.exists():
        raise ColouriseError(f"model {model_file} not found; pass release/model.pt (the committed release "
                             f"model: `make release` retrains it) or train an ablation (dvc repro "
                             f"train@ABLATION) and pass runs/ABLATION/model.pt")
    # The output rule, before anything is loaded or written: no output is an input or another
    # output, none is an existing file of another kind, every one can be created.
    outputs = [Output("--out", out_path, SQLITE)]
    outputs += [Output("--geotiff", geotiff, TIFF)] if geotiff else []
    outputs += [Output("--preview", preview, PNG)] if preview else []
    check_outputs(outputs, {"--model": [model_file], "--store": sqlite_files(source_path)})
    check_store_file(out_path)
    device = pick_device(device_name)
    model = load_model(model_file, device)
    use_fast_layout(model)
    multiple = size_multiple(model.opts.netG)
    margin = context_margin(multiple) if margin is None else margin
    if not 0 < margin <= TILE_SIZE // 2:  # tiles are cross-faded with their neighbours within the margin
        raise ColouriseError(f"--margin {margin}: give 1 to {TILE_SIZE // 2} pixels (each tile is "
                             f"cross-faded with its neighbours' windows within it); the default is "
                             f"{context_margin(multiple)}")
    if (TILE_SIZE + 2 * margin) % multiple:
        raise ColouriseError(f"--margin {margin} gives {TILE_SIZE + 2 * margin}-pixel windows, but the "
                             f"model's {model.opts.netG} needs multiples of {multiple}; try "
                             f"--margin {context_margin(multiple, margin)}")
    norm_label = f"area ({norm_stats_windows} windows)" if norm_stats_windows else "model"
    with TileStore(source_path, readonly=True) as source:
        meta = source.metadata
        if out_path.exists():
            with TileStore(out_path, readonly=True) as prev:
                if prev.metadata.get("source_store") != str(source_path) or \
                        prev.metadata.get("model") != str(model_file) or \
                        prev.metadata.get("norm_stats", "model") != norm_label:
                    raise ColouriseError(f"{out_path} holds another colourisation; choose another --out "
                                         f"or delete it")
        tiles = source.tiles(TileStatus.OK)
        if not tiles:
            raise ColouriseError(f"{source_path} has no tiles with data to colourise")
        with TileStore(out_path) as out:
            w, s, e, n = union_bounds_wgs84(tiles)
            out.set_metadata({
                "name": f"{meta.get('name', source_path.stem)} colourised",
                "format": "png", "type": "overlay", "version": "1",
                "bounds": f"{w},{s},{e},{n}", "minzoom": tiles[0].z, "maxzoom": tiles[0].z,
                "description": f"COLOURISED by a Luminescence model ({model_file}); colours are the "
                               f"model's estimate, not observations",
                "model": str(model_file), "source_store": str(source_path),
                "source_layer": meta.get("layer", ""), "attribution": meta.get("attribution", ""),
                "luma": luma, "margin": margin, "norm_stats": norm_label, "complete": "false",
                "colourised_at": datetime.now(UTC).isoformat(timespec="seconds"),
            })
            report = colourise_store(model, source, out, margin=margin, luma=luma,
                                     batch_size=batch_size, progress=progress,
                                     norm_stats_windows=norm_stats_windows)
            out.mark_complete()
            if geotiff:
                write_geotiff(out, geotiff)
            if preview:
                write_preview(source, out, preview, luma=luma, model_label=_model_label(model_file))
    note = (f"; {report.colour_input_tiles} colour input tiles were converted to gray ({luma} luma) first"
            if report.colour_input_tiles else "")
    if report.undecodable:
        note += (f"; {report.undecodable} input tile{'s' if report.undecodable > 1 else ''} could not be "
                 f"decoded (damaged store) and {'were' if report.undecodable > 1 else 'was'} recorded as "
                 f"failed in {out_path}")
    if report.norm_stats_windows:
        note += (f"; instance norms used the area's statistics, from {report.norm_stats_windows} of its "
                 "windows")
    rate = report.tiles / report.seconds if report.seconds > 0 else 0.0
    return (f"colourised {report.tiles} tiles of {source_path} with {model_file} ({margin}-px context "
            f"margin) in {report.seconds:.1f} s ({rate:.1f} tiles/s) -> {out_path}{note}")
