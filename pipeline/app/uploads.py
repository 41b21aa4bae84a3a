"""Uploaded photos: untrusted bytes checked, decoded within limits, colourised and written back.

Accepted: a GeoTIFF of a scanned photo (any CRS; the result keeps its georeferencing and is a
Cloud-Optimized GeoTIFF) or a plain TIFF, PNG or JPEG (the result is a PNG). The type is
decided by the file's first bytes, never by its name or the client's Content-Type; the size is
limited while the body arrives; the pixel count is checked from the header before anything is
decoded (decompression bombs); GDAL reads the TIFF from memory with only its GTiff driver and
never looks for side-car files. The model colourises the photo in 256-pixel blocks, each inside
a window of its neighbours and cross-faded with theirs near its edges (no seams), in its own
pixel grid.
"""

from __future__ import annotations

import asyncio
import io
import re
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.app import AREA_WINDOWS
from pipeline.app.runner import PRIORITY_UPLOAD, ModelRunner
from pipeline.app.views import RequestError
from pipeline.geo.tiles import TILE_SIZE
from pipeline.inference.blend import NEIGHBOURS, blend_tile

MAGIC = {b"II*\x00": "tiff", b"MM\x00*": "tiff", b"II+\x00": "tiff", b"MM\x00+": "tiff",
         b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.,()+-]{0,119}")


def check_name(name: str) -> str:
    """A safe stem for the download's file name; path-like or odd names are refused."""
    if not name:
        return "photo"
    if "/" in name or "\\" in name or ".." in name or not _NAME.fullmatch(name):
        raise RequestError(f"file name {name[:60]!r} is not a plain file name (letters, digits, spaces, "
                           f"'._-,()+', at most 120 characters, no folders); rename the file")
    return Path(name).stem or "photo"


def sniff(data: bytes) -> str:
    for magic, kind in MAGIC.items():
        if data.startswith(magic):
            return kind
    head = data[:8].hex(" ") if data else "nothing"
    raise RequestError(f"the file is not a GeoTIFF, TIFF, PNG or JPEG (it starts with {head}); upload a "
                       f"scanned photo in one of those formats", 415)


@dataclass
class Photo:
    gray: np.ndarray  # (H, W) uint8
    alpha: np.ndarray  # (H, W) uint8, 255 where the photo has data
    crs: Any = None  # rasterio CRS when georeferenced
    transform: Any = None


def decode(data: bytes, max_pixels: int) -> Photo:
    """Decode an upload to gray + alpha within the pixel limit (RequestError otherwise)."""
    kind = sniff(data)
    photo = _decode_tiff(data, max_pixels) if kind == "tiff" else _decode_pil(data, max_pixels)
    if min(photo.gray.shape) < 16:
        raise RequestError(f"the photo is {photo.gray.shape[1]}x{photo.gray.shape[0]} pixels; it must be at "
                           f"least 16 pixels on each side")
    return photo


def _too_big(w: int, h: int, max_pixels: int) -> RequestError:
    return RequestError(f"the photo is {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,} "
                        f"(params.yaml app.upload.max_pixels); crop or downsample it", 413)


def _decode_pil(data: bytes, max_pixels: int) -> Photo:
    from PIL import Image

    from pipeline.geo.pixels import luma

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
        w, h = img.size  # from the header: nothing is decoded yet
        if w * h > max_pixels:
            raise _too_big(w, h, max_pixels)
        img.load()
    except RequestError:
        raise
    except Image.DecompressionBombError:  # PIL's own guard fires first for gigantic headers
        raise RequestError(f"the photo claims more than {Image.MAX_IMAGE_PIXELS:,} pixels, more than the "
                           f"limit of {max_pixels:,} (params.yaml app.upload.max_pixels); it is refused as a "
                           f"decompression bomb", 413) from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise RequestError(f"the image cannot be decoded ({type(exc).__name__}: {str(exc)[:120]})") from None
    rgba = np.asarray(img.convert("RGBA"))
    return Photo(luma(rgba[..., :3]), rgba[..., 3].copy())


def _decode_tiff(data: bytes, max_pixels: int) -> Photo:
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    from pipeline.geo.pixels import luma

    env = rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_NUM_THREADS="1")
    try:
        with env, warnings.catch_warnings(), MemoryFile(data) as mem, mem.open(driver="GTiff") as ds:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if ds.width * ds.height > max_pixels:
                raise _too_big(ds.width, ds.height, max_pixels)
            interp = list(ds.colorinterp)
            alpha_band = interp.index(ColorInterp.alpha) + 1 if ColorInterp.alpha in interp else None
            colour = [i + 1 for i, c in enumerate(interp) if i + 1 != alpha_band][:3]
            if ds.dtypes[0] not in ("uint8", "uint16"):
                raise RequestError(f"the TIFF holds {ds.dtypes[0]} pixels; upload 8- or 16-bit imagery")
            bands = ds.read(colour)
            if bands.dtype == np.uint16:
                bands = (bands.astype(np.uint32) // 257).astype(np.uint8)
            gray = bands[0] if len(colour) < 3 else luma(np.moveaxis(bands, 0, -1))
            alpha = ds.read(alpha_band) if alpha_band else ds.dataset_mask()
            alpha = np.where(alpha > 0, 255, 0).astype(np.uint8)
            georef = ds.crs is not None and not ds.transform.is_identity
            return Photo(gray, alpha, ds.crs if georef else None, ds.transform if georef else None)
    except RequestError:
        raise
    except (RasterioError, ValueError, IndexError) as exc:
        raise RequestError(f"the TIFF cannot be read ({str(exc)[:160]})") from None


def blocks(gray: np.ndarray, margin: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The photo padded (mirrored) by `margin` and to whole blocks, and the blocks' (row, col)."""
    h, w = gray.shape
    ph, pw = -h % TILE_SIZE, -w % TILE_SIZE
    padded = np.pad(gray, ((margin, margin + ph), (margin, margin + pw)), mode="symmetric")
    cells = [(r, c) for r in range(0, h + ph, TILE_SIZE) for c in range(0, w + pw, TILE_SIZE)]
    return padded, cells


async def colourise_photo(runner: ModelRunner, photo: Photo,
                          area_windows: int = AREA_WINDOWS) -> np.ndarray:
    """(H, W, 4) RGBA: every block colourised inside its context window, alpha kept. A model with
    instance norms colours the photo with statistics of up to `area_windows` of its own blocks
    (as a view with its area's), so the blocks meet without seams."""
    from models.networks.norm_stats import spread

    m = runner.margin
    padded, cells = blocks(photo.gray, m)
    side = TILE_SIZE + 2 * m
    windows = [np.ascontiguousarray(padded[r:r + side, c:c + side]) for r, c in cells]
    area = ""
    if runner.adapts and area_windows:
        picked = np.stack([windows[i] for i in spread(len(windows), area_windows)])
        stats = await asyncio.get_running_loop().run_in_executor(None, runner.area_stats, picked)
        area = f"upload:{uuid.uuid4().hex}"
        runner.add_area(area, stats)
    try:
        results = await asyncio.gather(*(asyncio.wrap_future(runner.submit(w, PRIORITY_UPLOAD, area))
                                         for w in windows))
    finally:
        if area:
            runner.drop_area(area)
    h, w = photo.gray.shape
    out = np.zeros((h + (-h % TILE_SIZE), w + (-w % TILE_SIZE), 3), np.uint8)
    by_cell = dict(zip(cells, results, strict=True))
    for r, c in cells:  # each block cross-faded with its neighbours' windows: no seams between blocks
        around = {(dx, dy): by_cell.get((r + dy * TILE_SIZE, c + dx * TILE_SIZE)) for dx, dy in NEIGHBOURS}
        out[r:r + TILE_SIZE, c:c + TILE_SIZE] = blend_tile(around, m)
    return np.dstack([out[:h, :w], photo.alpha])


PREVIEW_PX = 1024


def write_result(rgba: np.ndarray, photo: Photo, folder: Path, stem: str, model_label: str) -> dict[str, Any]:
    """Write the result (COG when georeferenced, else PNG) and a PNG preview under a fresh random
    token in `folder`; return what the page shows (no path of this machine)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from pipeline.geo.cog import write_cog

    token = uuid.uuid4().hex
    target = folder / token
    target.mkdir(parents=True)
    note = f"COLOURISED by {model_label}; colours are the model's estimate, not observations"
    if photo.crs is not None:
        name = f"{stem}_colourised.tif"
        write_cog(rgba, target / "result.tif", crs=photo.crs, transform=photo.transform,
                  tags={"description": note})
    else:
        name = f"{stem}_colourised.png"
        info = PngInfo()
        info.add_text("Description", note)
        Image.fromarray(rgba).save(target / "result.png", format="PNG", pnginfo=info)
    preview = Image.fromarray(rgba)
    preview.thumbnail((PREVIEW_PX, PREVIEW_PX), Image.Resampling.LANCZOS)
    preview.save(target / "preview.png", format="PNG")
    (target / "name.txt").write_text(name, encoding="utf-8")
    h, w = rgba.shape[:2]
    return {"id": token, "file_name": name, "georeferenced": photo.crs is not None, "width": w, "height": h,
            "download": f"/api/uploads/{token}/{'result.tif' if photo.crs is not None else 'result.png'}",
            "preview": f"/api/uploads/{token}/preview.png", "note": note}


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` results (the folder would otherwise only grow)."""
    import shutil

    if not folder.is_dir():
        return
    entries = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                     reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
