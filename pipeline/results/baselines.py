"""Colour baselines a model must beat, fitted on a dataset's train split only.

Both map a gray input pixel to a colour through its gray level alone, so each is a
256-entry table from gray value to RGB; they are scored by exactly the code that scores
the models (pipeline/results/evaluation.py).

- `lut` (luminance-conditioned colour look-up): L* of the input pixel in bins of one L*
  unit; each bin holds the mean a*, b* of the train split's target pixels whose input falls
  in it. The output keeps the input's L* and takes a*, b* interpolated linearly between bin
  centres (empty bins are interpolated over). A colouriser that cannot beat this has learnt
  nothing beyond "this brightness is usually this colour": no semantics.
- `transfer` (global colour transfer, Reinhard-style): the input's L* standardised with the
  train split's input mean and std, then given the train targets' L* mean and std; a*, b*
  are the train targets' means (a gray input has no chroma to rescale).
Conversions are the project's (models.colour: sRGB D65 <-> CIE L*a*b*, as skimage).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.colour import gray_to_lightness, lab_to_rgb, rgb_to_lab

BINS = 100  # L* bins of one unit over [0, 100]
CHUNK = 16  # tiles per Lab conversion (memory: ~16 x 65536 x 3 floats)

__all__ = ["ColourTable", "fit_lightness_lookup", "fit_transfer", "gray_lightness"]


def gray_lightness() -> np.ndarray:
    """L* of the neutral colour (g, g, g) for each gray value g = 0..255, float64."""
    g = torch.arange(256, dtype=torch.float64).div(255.0).view(1, 1, 256)
    return gray_to_lightness(g).view(256).numpy()


@dataclass(frozen=True)
class ColourTable:
    """RGB (256, 3) uint8 for each gray value: a baseline's whole prediction rule."""

    rgb: np.ndarray
    description: str

    def predict(self, gray: np.ndarray) -> np.ndarray:
        """(N, H, W) uint8 gray -> (N, H, W, 3) uint8 RGB."""
        return self.rgb[np.asarray(gray, dtype=np.uint8)]


def _table_from_lab(light: np.ndarray, a: np.ndarray, b: np.ndarray, description: str) -> ColourTable:
    lab = torch.from_numpy(np.stack([light, a, b])).view(3, 1, 256)
    rgb = lab_to_rgb(lab).view(3, 256).T.numpy()
    return ColourTable(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8), description)


def _target_lab(targets: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) float64 L*a*b*."""
    rgb = torch.from_numpy(np.ascontiguousarray(targets)).permute(0, 3, 1, 2).to(torch.float64) / 255.0
    return rgb_to_lab(rgb)


def _check(gray: np.ndarray, targets: np.ndarray) -> None:
    if gray.dtype != np.uint8 or targets.dtype != np.uint8 or gray.ndim != 3 \
            or targets.shape != (*gray.shape, 3):
        raise ValueError(f"expected gray (N, H, W) and targets (N, H, W, 3) uint8, got {gray.shape} "
                         f"{gray.dtype} and {targets.shape} {targets.dtype}")
    if len(gray) == 0:
        raise ValueError("the train split is empty: nothing to fit a baseline on")


def _per_gray_level_sums(gray: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per input gray level: pixel count, and sums and squared sums of target L*, a*, b*."""
    counts = np.zeros(256)
    sums = np.zeros((3, 256))
    squares = np.zeros((3, 256))
    for start in range(0, len(gray), CHUNK):
        g = np.asarray(gray[start:start + CHUNK]).ravel()
        lab = _target_lab(targets[start:start + CHUNK]).permute(1, 0, 2, 3).reshape(3, -1).numpy()
        counts += np.bincount(g, minlength=256)
        for c in range(3):
            sums[c] += np.bincount(g, weights=lab[c], minlength=256)
            squares[c] += np.bincount(g, weights=lab[c] ** 2, minlength=256)
    return counts, sums, squares


def fit_lightness_lookup(gray: np.ndarray, targets: np.ndarray, bins: int = BINS) -> ColourTable:
    """The mean a*b* of the train split's target pixels per L* bin of their input pixel."""
    _check(gray, targets)
    counts, sums, _ = _per_gray_level_sums(gray, targets)
    light = gray_lightness()
    bin_of_level = np.clip(np.floor(light / (100.0 / bins)).astype(int), 0, bins - 1)
    bin_counts = np.bincount(bin_of_level, weights=counts, minlength=bins)
    filled = bin_counts > 0
    centres = (np.arange(bins) + 0.5) * (100.0 / bins)
    chroma = []
    for c in (1, 2):
        bin_sums = np.bincount(bin_of_level, weights=sums[c], minlength=bins)
        means = bin_sums[filled] / bin_counts[filled]
        # Linear between the centres of filled bins, constant beyond the outermost ones.
        chroma.append(np.interp(light, centres[filled], means))
    return _table_from_lab(light, chroma[0], chroma[1],
                           f"mean a*b* per L* bin ({bins} bins, {int(filled.sum())} filled), "
                           f"fitted on {len(gray)} train tiles")


def fit_transfer(gray: np.ndarray, targets: np.ndarray) -> ColourTable:
    """Global colour transfer: the train split's input L* statistics onto its targets' Lab ones."""
    _check(gray, targets)
    counts, sums, squares = _per_gray_level_sums(gray, targets)
    n = counts.sum()
    light = gray_lightness()
    in_mean = float((counts * light).sum() / n)
    in_std = float(np.sqrt(max((counts * (light - in_mean) ** 2).sum() / n, 0.0)))
    t_mean = sums.sum(axis=1) / n
    t_std = np.sqrt(np.maximum(squares.sum(axis=1) / n - t_mean**2, 0.0))
    scale = t_std[0] / in_std if in_std > 0 else 0.0
    out_light = np.clip((light - in_mean) * scale + t_mean[0], 0.0, 100.0)
    return _table_from_lab(out_light, np.full(256, t_mean[1]), np.full(256, t_mean[2]),
                           f"train targets' Lab mean {np.round(t_mean, 2).tolist()} and L* std "
                           f"{t_std[0]:.2f} onto the inputs' L* (mean {in_mean:.2f}, std {in_std:.2f}), "
                           f"fitted on {len(gray)} train tiles")
