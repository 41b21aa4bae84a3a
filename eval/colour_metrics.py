"""Pixel-level colour metrics of colourised outputs against the modern target tiles.

All functions take uint8 RGB image stacks (N, H, W, 3) and return plain floats.
- CIEDE2000 ΔE: sRGB (D65) -> CIE L*a*b* with skimage.color.rgb2lab, then
  skimage.color.deltaE_ciede2000 per pixel; mean and median over every pixel of
  every image.
- PSNR: over the whole set (one MSE over all pixels, channels and images), RGB,
  data range 255 (identical to data range 1 on [0, 1] images). None when the
  outputs equal the targets exactly (infinite PSNR), so metric files stay valid JSON.
- SSIM: skimage.metrics.structural_similarity per image, channel_axis=-1,
  data_range=255, its default 7x7 uniform window (K1 0.01, K2 0.03), averaged over
  channels and then over images. Images smaller than 7 px use the largest odd window
  that fits.
- Colourfulness (Hasler & Süsstrunk 2003) per image on 0-255 RGB, averaged over images.
"""

from __future__ import annotations

import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import structural_similarity

__all__ = [
    "colourfulness",
    "delta_e2000",
    "delta_e2000_lab",
    "mean_colourfulness",
    "mean_ssim",
    "psnr",
]


def _check_pair(outputs: np.ndarray, targets: np.ndarray) -> None:
    _check_images(outputs, "outputs")
    _check_images(targets, "targets")
    if outputs.shape != targets.shape:
        raise ValueError(f"outputs {outputs.shape} and targets {targets.shape} must have the same shape")


def _check_images(images: np.ndarray, what: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what} must be uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is empty")


def delta_e2000_lab(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference between L*a*b* arrays (..., 3) (kL = kC = kH = 1)."""
    return deltaE_ciede2000(np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64))


def delta_e2000(outputs: np.ndarray, targets: np.ndarray, *, chunk: int = 16) -> tuple[float, float]:
    """(mean, median) CIEDE2000 ΔE over all pixels of all images (sRGB, D65)."""
    _check_pair(outputs, targets)
    parts = []
    for start in range(0, outputs.shape[0], chunk):
        lab_out = rgb2lab(outputs[start:start + chunk].astype(np.float64) / 255.0)
        lab_tgt = rgb2lab(targets[start:start + chunk].astype(np.float64) / 255.0)
        parts.append(delta_e2000_lab(lab_out, lab_tgt).astype(np.float32).ravel())
    values = np.concatenate(parts)
    return float(values.mean(dtype=np.float64)), float(np.median(values))


def psnr(outputs: np.ndarray, targets: np.ndarray) -> float | None:
    """Set-level PSNR in dB (data range 255); None when outputs equal targets exactly."""
    _check_pair(outputs, targets)
    total = 0.0
    for out, tgt in zip(outputs, targets, strict=True):
        diff = out.astype(np.float64) - tgt.astype(np.float64)
        total += float(np.sum(diff * diff))
    mse = total / outputs.size
    if mse == 0.0:
        return None
    return float(10.0 * np.log10(255.0**2 / mse))


def mean_ssim(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean over images of skimage's SSIM (RGB channels averaged, data_range 255)."""
    _check_pair(outputs, targets)
    side = min(outputs.shape[1], outputs.shape[2])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {outputs.shape[1:3]}")
    scores = [
        structural_similarity(o, t, channel_axis=-1, data_range=255, win_size=win)
        for o, t in zip(outputs, targets, strict=True)
    ]
    return float(np.mean(scores))


def colourfulness(image: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness of one RGB image (H, W, 3) on 0-255.

    rg = R - G, yb = (R + G)/2 - B; M = sqrt(σrg² + σyb²) + 0.3 sqrt(μrg² + μyb²).
    """
    rgb = np.asarray(image, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    spread = np.sqrt(rg.var() + yb.var())
    offset = np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(spread + 0.3 * offset)


def mean_colourfulness(images: np.ndarray) -> float:
    """Mean colourfulness over a stack of uint8 RGB images (N, H, W, 3)."""
    _check_images(images, "images")
    return float(np.mean([colourfulness(img) for img in images]))
