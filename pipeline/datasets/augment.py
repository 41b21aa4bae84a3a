"""Augmentation of native-resolution crops for the release model.

Geometry: random multiples of 90 degrees and a horizontal flip (aerial views have no up),
applied to all bands of a crop at once, before its input is made from it, so input and
target stay pixel-aligned by construction.

Film: the input of a sample may be made by the project's film emulation
(pipeline.sample.film.emulate_film, the function that makes the SYNTHETIC erie_2011_film
layer) with random parameters drawn uniformly from `release.data.film`'s ranges around the
`sample.film` values: S-curve contrast, gamma, grain strength and size, blur, vignetting
strength and photo-frame size, band response (each of `sample.film.band_weights` times
U(1 - j, 1 + j)), a fresh grain seed, and the crop's position inside its photo frame.
Otherwise the input is the Rec. 601 luma the align stage uses. Only the input changes:
the target is the crop's RGB either way.
"""

from __future__ import annotations

import numpy as np
from affine import Affine

from pipeline.core.config import FilmAugmentConfig, FilmConfig
from pipeline.geo.pixels import luma
from pipeline.sample.film import emulate_film

_RANGED = ("contrast", "gamma", "grain_sigma", "grain_size_px", "blur_sigma_px", "vignette_strength",
           "frame_size_m")


def random_geometry(bands: np.ndarray, rng: np.random.Generator, *, rotate90: bool, flip: bool) -> np.ndarray:
    """(C, H, W) -> the same crop turned by k x 90 degrees and maybe mirrored (a copy)."""
    if rotate90:
        bands = np.rot90(bands, int(rng.integers(4)), axes=(1, 2))
    if flip and rng.random() < 0.5:
        bands = bands[:, :, ::-1]
    return np.ascontiguousarray(bands)


def random_film_config(base: FilmConfig, ranges: FilmAugmentConfig, rng: np.random.Generator) -> FilmConfig:
    """`base` with every ranged parameter drawn uniformly, jittered band weights and a new grain seed."""
    update: dict[str, object] = {key: float(rng.uniform(*getattr(ranges, key))) for key in _RANGED}
    j = ranges.band_weight_jitter
    update["band_weights"] = tuple(float(w * rng.uniform(1 - j, 1 + j)) for w in base.band_weights)
    update["seed"] = int(rng.integers(2**31))
    return base.model_copy(update=update)


def film_input(bands: np.ndarray, cfg: FilmConfig, *, metres_per_px: float, rng: np.random.Generator
               ) -> np.ndarray:
    """(C >= 3, H, W) uint8 bands (R, G, B[, NIR]) -> (H, W) uint8 film-emulated gray, the crop
    placed at a random position of its photo frame (so vignetting varies across samples)."""
    ox, oy = rng.uniform(0.0, cfg.frame_size_m, size=2)
    transform = Affine(metres_per_px, 0.0, float(ox), 0.0, -metres_per_px, float(oy))
    return emulate_film(bands, cfg, transform=transform, metres_per_unit=1.0)


def clean_input(bands: np.ndarray) -> np.ndarray:
    """(C >= 3, H, W) uint8 -> (H, W) uint8 Rec. 601 luma of the RGB bands (the `gray` input)."""
    return luma(np.moveaxis(bands[:3], 0, -1), "rec601")


def make_input(bands: np.ndarray, *, base: FilmConfig, ranges: FilmAugmentConfig, metres_per_px: float,
               rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(input gray (H, W) uint8, whether it is film-emulated) for one augmented crop."""
    if ranges.probability > 0 and rng.random() < ranges.probability:
        cfg = random_film_config(base, ranges, rng)
        return film_input(bands, cfg, metres_per_px=metres_per_px, rng=rng), True
    return clean_input(bands), False
