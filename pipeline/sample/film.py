"""SYNTHETIC "historic" film emulation: colour orthophoto -> grayscale aerial-film look.

No real pre-1990 photograph of the sample areas exists, so the historic stand-in layers
`<source>_film` (`erie_2011_film` for training, `columbia_2010_film` for the held-out area)
are derived from colour orthophotos (`sample.film.source_layers`) by the explicit, deterministic
steps below (parameters: `sample.film` in params.yaml, `pipeline.core.config.FilmConfig`).
The result is labelled SYNTHETIC wherever it appears (GeoTIFF tags, WMTS layer title).

Steps, in the order light goes through a camera and a scanner:
1. panchromatic response: a weighted sum of R, G, B and NIR (`band_weights`, normalised);
2. lens/scan softness: Gaussian blur of `blur_sigma_px`;
3. vignetting per photo frame: frames of `frame_size_m` tile the map from the CRS origin; inside
   each, exposure falls off with the cos^4 law of natural vignetting, scaled so a frame corner
   receives `1 - vignette_strength` of the centre's light;
4. characteristic curve: an S-shaped (tanh) curve of steepness `contrast` (0 = linear) that
   keeps 0, 0.5 and 1 fixed, then `gamma` (> 1 darkens mid-tones);
5. film grain: white Gaussian noise from `seed`, blurred to clumps of `grain_size_px`, scaled to
   a standard deviation of `grain_sigma` (fraction of full scale) and added. The noise field is
   generated once over the whole raster, so a ground pixel always gets the same grain;
6. quantised to uint8; pixels where the source has no data stay masked.

`build_film_layer` writes the result as a tiled GeoTIFF in the source's CRS and resolution, and
rebuilds it only when the parameters, the algorithm version or the source files change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from scipy.ndimage import gaussian_filter

from pipeline.core.config import FilmConfig, SampleConfig
from pipeline.core.errors import LuminescenceError
from pipeline.core.files import replacing, sha256_of_file
from pipeline.core.outputs import TIFF, Output, check_outputs

# Bump when the emulation changes in a way that alters pixels: forces a rebuild.
FILM_ALGORITHM_VERSION = 1
RASTER_SUFFIXES = (".jp2", ".tif", ".tiff", ".vrt")
SYNTHETIC_NOTE = "SYNTHETIC film emulation of {src}, not a real historic photograph"


class FilmError(LuminescenceError):
    pass


# --------------------------------------------------------------------------- pure steps
def panchromatic(bands: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """(C, H, W) uint8 bands -> (H, W) float32 in [0, 1], weights normalised over the C bands."""
    w = np.asarray(weights[: bands.shape[0]], dtype=np.float64)
    if w.sum() <= 0:
        raise FilmError("sample.film.band_weights must have a positive sum over the source bands")
    w = w / w.sum()
    out = np.zeros(bands.shape[1:], dtype=np.float32)
    for weight, band in zip(w, bands, strict=True):
        out += np.float32(weight / 255.0) * band.astype(np.float32)
    return out


def characteristic_curve(x: np.ndarray, contrast: float, gamma: float) -> np.ndarray:
    """S-shaped tone curve through (0,0), (0.5,0.5), (1,1) with midpoint slope ~contrast, then gamma."""
    x = np.clip(x, 0.0, 1.0)
    s = x
    if contrast > 1e-6:  # contrast -> 0 tends to the identity
        s = 0.5 + 0.5 * np.tanh(contrast * (2.0 * x - 1.0)) / math.tanh(contrast)
    return np.power(np.clip(s, 0.0, 1.0), gamma).astype(np.float32)


def film_grain(shape: tuple[int, int], seed: int, size_px: float, sigma: float) -> np.ndarray:
    """Deterministic grain field: blurred white noise with standard deviation `sigma`."""
    if sigma <= 0:
        return np.zeros(shape, dtype=np.float32)
    noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    if size_px > 0:
        noise = gaussian_filter(noise, size_px, mode="reflect")
    std = float(noise.std())
    return noise * np.float32(sigma / std) if std > 0 else noise


def vignette(shape: tuple[int, int], transform: Affine, metres_per_unit: float, frame_size_m: float,
             strength: float) -> np.ndarray:
    """Light fall-off factor in (0, 1] per pixel, for photo frames laid out in map coordinates.

    Frames are squares of `frame_size_m` aligned to the CRS origin; within each the factor follows
    the cos^4 law, 1 at the frame centre and `1 - strength` at its corners.
    """
    h, w = shape
    if strength <= 0:
        return np.ones(shape, dtype=np.float32)
    # Angle of view at the corner that gives cos^4 = 1 - strength there.
    theta_corner = math.acos(max(1.0 - min(strength, 0.999), 1e-6) ** 0.25)
    tan_corner = math.tan(theta_corner)
    cols = np.arange(w, dtype=np.float64) + 0.5
    out = np.empty(shape, dtype=np.float32)
    half = frame_size_m / 2.0
    for r0 in range(0, h, 512):  # row blocks bound the float64 temporaries
        rows = np.arange(r0, min(h, r0 + 512), dtype=np.float64)[:, None] + 0.5
        x = (transform.a * cols + transform.b * rows + transform.c) * metres_per_unit
        y = (transform.d * cols + transform.e * rows + transform.f) * metres_per_unit
        u = (x - (np.floor(x / frame_size_m) + 0.5) * frame_size_m) / half  # -1..1 inside the frame
        v = (y - (np.floor(y / frame_size_m) + 0.5) * frame_size_m) / half
        r = np.sqrt((u * u + v * v) / 2.0)  # 1 at a corner
        out[r0 : r0 + rows.shape[0]] = 1.0 / (1.0 + (r * tan_corner) ** 2) ** 2
    return out


def emulate_film(bands: np.ndarray, cfg: FilmConfig, *, transform: Affine | None = None,
                 metres_per_unit: float = 1.0, valid: np.ndarray | None = None) -> np.ndarray:
    """(C, H, W) uint8 bands (R, G, B[, NIR]) -> (H, W) uint8 SYNTHETIC panchromatic film image.

    `transform` maps pixels to map units (default: 1 unit per pixel from the origin) and places
    the photo frames; `valid` marks pixels with source data (others come out 0).
    """
    if bands.ndim != 3 or bands.shape[0] < 3:
        raise FilmError(f"film emulation needs (bands, rows, cols) with at least R, G, B; got {bands.shape}")
    shape = bands.shape[1:]
    exposure = panchromatic(bands, cfg.band_weights)
    if valid is not None and not valid.all() and valid.any():
        exposure[~valid] = float(exposure[valid].mean())  # keep nodata from bleeding in the blur
    if cfg.blur_sigma_px > 0:
        exposure = gaussian_filter(exposure, cfg.blur_sigma_px, mode="nearest")
    exposure *= vignette(shape, transform or Affine.identity(), metres_per_unit, cfg.frame_size_m,
                         cfg.vignette_strength)
    tone = characteristic_curve(exposure, cfg.contrast, cfg.gamma)
    tone += film_grain(shape, cfg.seed, cfg.grain_size_px, cfg.grain_sigma)
    gray = np.rint(np.clip(tone, 0.0, 1.0) * 255.0).astype(np.uint8)
    if valid is not None:
        gray[~valid] = 0
    return gray


# --------------------------------------------------------------------------- rasters
@dataclass(frozen=True)
class Mosaic:
    """Source rasters merged on one grid: data (C, H, W), valid (H, W) bool."""

    data: np.ndarray
    valid: np.ndarray
    transform: Affine
    crs: CRS


def raster_files(folder: Path) -> list[Path]:
    """The raster files of a sample layer folder, in name order."""
    if not folder.is_dir():
        raise FilmError(f"raster folder {folder} does not exist; check sample.data_dir in params.yaml")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
    if not files:
        raise FilmError(f"no rasters ({', '.join(RASTER_SUFFIXES)}) in {folder}")
    return files


def grid_key(ds: rasterio.DatasetReader) -> tuple[str, float, float, float, float]:
    """Sources with equal keys lie on one pixel grid (same CRS, resolution and pixel phase)."""
    rx, ry = abs(ds.res[0]), abs(ds.res[1])
    phase_x = round((ds.bounds.left / rx) % 1.0, 6) % 1.0
    phase_y = round((ds.bounds.top / ry) % 1.0, 6) % 1.0
    return (ds.crs.to_wkt() if ds.crs else "", round(rx, 9), round(ry, 9), phase_x, phase_y)


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# The NYSDOP JPEG 2000 files make OpenJPEG warn about an empty SOT marker; the pixels decode fine.
_EMPTY_SOT = _DropMessage("Empty SOT marker detected")


def read_mosaic(paths: Sequence[Path], bands: Sequence[int]) -> Mosaic:
    """Mosaic rasters on one pixel grid (see `grid_key`); the first file wins where they overlap.

    Coverage comes from each file's dataset mask, so black pixels stay valid data.
    """
    datasets = [rasterio.open(p) for p in paths]
    gdal_log = logging.getLogger("rasterio._err")
    gdal_log.addFilter(_EMPTY_SOT)
    try:
        first = datasets[0]
        for ds in datasets:
            if ds.count < max(bands):
                raise FilmError(f"{ds.name} has {ds.count} band(s); band {max(bands)} was asked for")
            if ds.dtypes[0] != "uint8" or ds.transform.b or ds.transform.d:
                raise FilmError(f"{ds.name}: only north-up 8-bit rasters are supported")
            if grid_key(ds) != grid_key(first):
                raise FilmError(f"{ds.name} is not on the pixel grid of {first.name} (CRS, resolution "
                                "or pixel alignment differ); mosaic them first, e.g. with gdalbuildvrt")
        rx, ry = abs(first.res[0]), abs(first.res[1])
        left = min(ds.bounds.left for ds in datasets)
        top = max(ds.bounds.top for ds in datasets)
        width = round((max(ds.bounds.right for ds in datasets) - left) / rx)
        height = round((top - min(ds.bounds.bottom for ds in datasets)) / ry)
        data = np.zeros((len(bands), height, width), np.uint8)
        valid = np.zeros((height, width), bool)
        for ds in datasets:
            col, row = round((ds.bounds.left - left) / rx), round((top - ds.bounds.top) / ry)
            window = (slice(row, row + ds.height), slice(col, col + ds.width))
            take = (ds.dataset_mask() > 0) & ~valid[window]
            block = ds.read(list(bands))
            data[(slice(None), *window)][:, take] = block[:, take]
            valid[window] |= take
        transform = Affine(rx, 0.0, left, 0.0, -ry, top)
        return Mosaic(data, valid, transform, first.crs)
    finally:
        gdal_log.removeFilter(_EMPTY_SOT)
        for ds in datasets:
            ds.close()


def metres_per_unit(crs: CRS) -> float:
    if crs is None or not crs.is_projected:
        raise FilmError("film emulation needs rasters in a projected CRS (frames are laid out in metres)")
    return float(crs.linear_units_factor[1])


def _emulation_params(cfg: FilmConfig) -> dict[str, object]:
    """The parameters that change a film layer's pixels (not the list of layers to make)."""
    return cfg.model_dump(mode="json", exclude={"source_layers"})


def film_hash(cfg: FilmConfig, sources: Sequence[Path]) -> str:
    """Identity of a film layer: parameters, algorithm version and source file contents."""
    payload = {
        "version": FILM_ALGORITHM_VERSION,
        "params": _emulation_params(cfg),
        "sources": [[p.name, sha256_of_file(p)] for p in sources],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def film_layer_id(source_layer: str) -> str:
    return f"{source_layer}_film"


def film_path(sample: SampleConfig, source_layer: str | None = None) -> Path:
    layer = source_layer or sample.film.source_layers[0]
    return Path(sample.derived_dir) / f"{film_layer_id(layer)}.tif"


def _existing_hash(path: Path) -> str | None:
    try:
        with rasterio.open(path) as ds:
            return ds.tags().get("LUMINESCENCE_FILM_HASH")
    except Exception:  # unreadable or partial file: rebuild it
        return None


def build_film_layer(sample: SampleConfig, out: Path | None = None, *, force: bool = False,
                     source_layer: str | None = None) -> Path:
    """Write (or reuse) the SYNTHETIC film GeoTIFF of one source layer (default: the first of
    `sample.film.source_layers`); return its path."""
    cfg = sample.film
    layer = source_layer or cfg.source_layers[0]
    sources = raster_files(Path(sample.data_dir) / layer)
    out = Path(out) if out is not None else film_path(sample, layer)
    check_outputs([Output("--out", out, TIFF)], {"a source raster": sources})
    digest = film_hash(cfg, sources)
    if not force and out.exists() and _existing_hash(out) == digest:
        return out
    mosaic = read_mosaic(sources, _film_bands(sources[0]))
    gray = emulate_film(mosaic.data, cfg, transform=mosaic.transform,
                        metres_per_unit=metres_per_unit(mosaic.crs), valid=mosaic.valid)
    _write_film_tif(out, gray, mosaic, cfg, digest, sources, layer)
    return out


def _film_bands(path: Path) -> list[int]:
    with rasterio.open(path) as ds:
        if ds.count < 3:
            raise FilmError(f"{path} has {ds.count} band(s); the film source needs R, G, B (and NIR)")
        return list(range(1, min(ds.count, 4) + 1))


def _overview_factors(width: int, height: int, smallest: int = 256) -> list[int]:
    factors, f = [], 2
    while max(width, height) / f >= smallest / 2:
        factors.append(f)
        f *= 2
    return factors


def _write_film_tif(out: Path, gray: np.ndarray, mosaic: Mosaic, cfg: FilmConfig, digest: str,
                    sources: Sequence[Path], source_layer: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    note = SYNTHETIC_NOTE.format(src=source_layer)
    tags = {
        "SYNTHETIC": "YES",
        "LUMINESCENCE_PRODUCT": note,
        "LUMINESCENCE_FILM_METHOD": "panchromatic band weighting, Gaussian lens/scan blur, cos^4 "
        "vignetting per photo frame, tanh S-curve + gamma, seeded Gaussian film grain "
        f"(pipeline/sample/film.py, algorithm version {FILM_ALGORITHM_VERSION})",
        "LUMINESCENCE_FILM_PARAMS": json.dumps(_emulation_params(cfg), sort_keys=True),
        "LUMINESCENCE_FILM_HASH": digest,
        "LUMINESCENCE_FILM_SOURCES": ", ".join(p.name for p in sources),
        "LUMINESCENCE_ATTRIBUTION": "Derived (synthetically) from orthoimagery of the New York State "
        "ITS GIS Program Office, NYS Digital Orthoimagery Program (NYSDOP).",
        "TIFFTAG_IMAGEDESCRIPTION": note,
    }
    h, w = gray.shape
    profile = {
        "driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "uint8",
        "crs": mosaic.crs, "transform": mosaic.transform, "tiled": True,
        "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 2,
    }
    with (replacing(out) as tmp, rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
          rasterio.open(tmp, "w", **profile) as dst):
        dst.write(gray, 1)
        dst.write_mask(np.where(mosaic.valid, 255, 0).astype(np.uint8))
        dst.update_tags(**tags)
        dst.build_overviews(_overview_factors(w, h), Resampling.average)
