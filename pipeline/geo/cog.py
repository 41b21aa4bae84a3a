"""Cloud-Optimized GeoTIFFs: RGBA arrays written as COGs with overviews, and their validation.

A COG keeps tiles (256-px blocks) and overviews in an order that lets a client read any area at
any scale with a few range requests; QGIS and GDAL open it like any GeoTIFF. rio-cogeo builds
it in memory (nothing is written beside the destination) and `cog_validate` checks the layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from affine import Affine

from pipeline.core.errors import LuminescenceError
from pipeline.core.files import replacing

BLOCK = 256


class CogError(LuminescenceError):
    pass


def write_cog(rgba: np.ndarray, path: str | os.PathLike[str], *, crs: object, transform: Affine,
              tags: Mapping[str, str] | None = None) -> Path:
    """Write (H, W, 3 or 4) uint8 pixels (4th band: alpha) as a deflate COG with average overviews.

    The file appears atomically (written to a temporary name beside it, then renamed).
    """
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.io import MemoryFile
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] not in (3, 4):
        raise CogError(f"write_cog needs (H, W, 3|4) uint8 pixels, got {rgba.shape} {rgba.dtype}")
    h, w, n = rgba.shape
    path = Path(path)
    profile = dict(cog_profiles.get("deflate"), blockxsize=BLOCK, blockysize=BLOCK, predictor=2)
    interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue] + ([ColorInterp.alpha] if n == 4 else [])
    with replacing(path) as tmp, rasterio.Env(GDAL_NUM_THREADS="1"), MemoryFile() as mem:
        with mem.open(driver="GTiff", width=w, height=h, count=n, dtype="uint8", crs=crs,
                      transform=transform, photometric="RGB") as src:
            src.colorinterp = interp
            src.write(np.moveaxis(rgba, -1, 0))
        with mem.open() as src:
            cog_translate(src, tmp, profile, overview_resampling="average", in_memory=True, quiet=True,
                          additional_cog_metadata=dict(tags or {}))
    return path


def validate_cog(path: str | os.PathLike[str]) -> list[str]:
    """The problems that make `path` not a valid COG (empty when it is one; warnings included)."""
    from rio_cogeo.cogeo import cog_validate

    valid, errors, warnings = cog_validate(str(path), quiet=True)
    return list(errors) + list(warnings) if not valid or warnings else []
