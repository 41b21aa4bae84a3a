"""Pixel-level colour metrics of colourised outputs against the modern target tiles.

All functions take uint8 RGB image stacks (N, H, W, 3) and return plain floats.
- CIEDE2000 ΔE: sRGB (D65) -> CIE L*a*b* with the project's colour module
  (models.colour.rgb_to_lab, float64), then the CIEDE2000 formula of Sharma, Wu & Dalal
  (2005) per pixel, in torch (agrees with skimage.color.deltaE_ciede2000 to 1e-9; about
  2x faster than skimage's rgb2lab + deltaE_ciede2000 on 2 cores); mean and median over every pixel
  of every image.
- PSNR: over the whole set (one MSE over all pixels, channels and images), RGB,
  data range 255 (identical to data range 1 on [0, 1] images). None when the
  outputs equal the targets exactly (infinite PSNR), so metric files stay valid JSON.
- SSIM: skimage.metrics.structural_similarity's definition (channel_axis=-1,
  data_range=255, its default 7x7 uniform window, sample covariance, K1 0.01, K2 0.03,
  the border of half a window left out), averaged over channels and then over images,
  computed for a batch of images at once in torch (window sums exact from int64 integral
  images; agrees with skimage to 1e-12, tests/test_colour_metrics.py). Images smaller
  than 7 px use the largest odd window that fits.
- Colourfulness (Hasler & Süsstrunk 2003) per image on 0-255 RGB, averaged over images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.colour import rgb_to_lab

__all__ = [
    "PerImage",
    "colourfulness",
    "delta_e2000",
    "delta_e2000_lab",
    "mean_colourfulness",
    "mean_ssim",
    "per_image_metrics",
    "psnr",
    "psnr_from_mse",
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


def _ciede2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 (kL = kC = kH = 1) of two (..., 3) L*a*b* tensors, as in Sharma et al. 2005."""
    l1, a1, b1 = lab1.unbind(-1)
    l2, a2, b2 = lab2.unbind(-1)
    c_mean = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    c7 = c_mean**7
    g = 0.5 * (1 - torch.sqrt(c7 / (c7 + 25.0**7)))
    a1p, a2p = a1 * (1 + g), a2 * (1 + g)
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p = torch.remainder(torch.atan2(b1, a1p), 2 * math.pi)
    h2p = torch.remainder(torch.atan2(b2, a2p), 2 * math.pi)
    chroma_zero = (c1p * c2p) == 0
    dh = h2p - h1p
    dh = torch.where(dh > math.pi, dh - 2 * math.pi, torch.where(dh < -math.pi, dh + 2 * math.pi, dh))
    dh = torch.where(chroma_zero, torch.zeros_like(dh), dh)
    d_l = l2 - l1
    d_c = c2p - c1p
    d_h = 2 * torch.sqrt(c1p * c2p) * torch.sin(dh / 2)
    l_mean = (l1 + l2) / 2
    cp_mean = (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_mean = torch.where(
        (h1p - h2p).abs() <= math.pi,
        h_sum / 2,
        torch.where(h_sum < 2 * math.pi, (h_sum + 2 * math.pi) / 2, (h_sum - 2 * math.pi) / 2),
    )
    h_mean = torch.where(chroma_zero, h_sum, h_mean)
    t = (1 - 0.17 * torch.cos(h_mean - math.radians(30)) + 0.24 * torch.cos(2 * h_mean)
         + 0.32 * torch.cos(3 * h_mean + math.radians(6)) - 0.20 * torch.cos(4 * h_mean - math.radians(63)))
    d_theta = math.radians(30) * torch.exp(-(((torch.rad2deg(h_mean) - 275) / 25) ** 2))
    cp7 = cp_mean**7
    r_c = 2 * torch.sqrt(cp7 / (cp7 + 25.0**7))
    l50 = (l_mean - 50) ** 2
    s_l = 1 + 0.015 * l50 / torch.sqrt(20 + l50)
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    r_t = -torch.sin(2 * d_theta) * r_c
    tl, tc, th = d_l / s_l, d_c / s_c, d_h / s_h
    return torch.sqrt(tl**2 + tc**2 + th**2 + r_t * tc * th)


def delta_e2000_lab(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference between L*a*b* arrays (..., 3) (kL = kC = kH = 1)."""
    x1 = torch.as_tensor(np.asarray(lab1, dtype=np.float64))
    x2 = torch.as_tensor(np.asarray(lab2, dtype=np.float64))
    return _ciede2000(x1, x2).numpy()


def _lab_of(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB (N, H, W, 3) -> float64 L*a*b* (N, H, W, 3)."""
    rgb = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float64) / 255.0
    return rgb_to_lab(rgb).permute(0, 2, 3, 1)


def _delta_e_values(outputs: np.ndarray, targets: np.ndarray, chunk: int) -> np.ndarray:
    """(N, H*W) float32 CIEDE2000 of every pixel."""
    parts = []
    for start in range(0, outputs.shape[0], chunk):
        stop = start + chunk
        values = _ciede2000(_lab_of(outputs[start:stop]), _lab_of(targets[start:stop]))
        parts.append(values.to(torch.float32).reshape(values.shape[0], -1).numpy())
    return np.concatenate(parts)


def delta_e2000(outputs: np.ndarray, targets: np.ndarray, *, chunk: int = 16) -> tuple[float, float]:
    """(mean, median) CIEDE2000 ΔE over all pixels of all images (sRGB, D65)."""
    _check_pair(outputs, targets)
    values = _delta_e_values(outputs, targets, chunk)
    return float(values.mean(dtype=np.float64)), float(np.median(values))


def _squared_error(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N,) mean squared error per image over pixels and channels, float64."""
    return np.array([np.mean(np.square(o.astype(np.float64) - t.astype(np.float64)))
                     for o, t in zip(outputs, targets, strict=True)])


def psnr_from_mse(mse: float) -> float | None:
    """10 log10(255² / MSE); None for an MSE of 0 (identical images: infinite PSNR)."""
    return None if mse == 0.0 else float(10.0 * np.log10(255.0**2 / mse))


def psnr(outputs: np.ndarray, targets: np.ndarray) -> float | None:
    """Set-level PSNR in dB (data range 255); None when outputs equal targets exactly."""
    _check_pair(outputs, targets)
    # Every image has the same pixel count, so the set's MSE is the mean of the images' MSEs.
    return psnr_from_mse(float(_squared_error(outputs, targets).mean()))


def _box_mean(x: torch.Tensor, win: int) -> torch.Tensor:
    """Mean over every win x win window that fits inside integer (N, C, H, W), as float64.

    Window sums come from an integral image in int64, so they are exact (uint8 products sum
    to well under 2**63): no float summation error, one rounding in the division.
    """
    integral = F.pad(x.cumsum(2).cumsum(3), (1, 0, 1, 0))
    sums = (integral[..., win:, win:] - integral[..., :-win, win:]
            - integral[..., win:, :-win] + integral[..., :-win, :-win])
    return sums.to(torch.float64) / float(win * win)


def _ssim_batch(outputs: np.ndarray, targets: np.ndarray, win: int) -> np.ndarray:
    """(N,) SSIM as skimage defines it, for uint8 (N, H, W, 3) stacks."""
    x = torch.from_numpy(outputs).permute(0, 3, 1, 2).to(torch.int64)
    y = torch.from_numpy(targets).permute(0, 3, 1, 2).to(torch.int64)
    # skimage's filters run over the padded image but it then drops a border of (win - 1) / 2,
    # which leaves exactly the windows that fit inside the image.
    ux, uy = _box_mean(x, win), _box_mean(y, win)
    uxx, uyy, uxy = _box_mean(x * x, win), _box_mean(y * y, win), _box_mean(x * y, win)
    cov_norm = win * win / (win * win - 1.0)  # skimage's use_sample_covariance=True
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


def _ssim_values(outputs: np.ndarray, targets: np.ndarray, chunk: int = 16) -> np.ndarray:
    side = min(outputs.shape[1], outputs.shape[2])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {outputs.shape[1:3]}")
    return np.concatenate([_ssim_batch(outputs[i:i + chunk], targets[i:i + chunk], win)
                           for i in range(0, outputs.shape[0], chunk)])


def mean_ssim(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean over images of skimage's SSIM (RGB channels averaged, data_range 255)."""
    _check_pair(outputs, targets)
    return float(np.mean(_ssim_values(outputs, targets)))


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


@dataclass(frozen=True)
class PerImage:
    """Each metric of each image pair (N,), and the set's ΔE median (no per-image form).

    The set-level numbers are means of these (PSNR: of the squared errors), so resampling
    images resamples them exactly (eval/bootstrap.py).
    """

    delta_e2000: np.ndarray  # mean CIEDE2000 over the image's pixels
    squared_error: np.ndarray  # MSE over pixels and channels (0-255 scale)
    ssim: np.ndarray
    colourfulness_output: np.ndarray
    colourfulness_target: np.ndarray
    delta_e2000_median: float


def per_image_metrics(outputs: np.ndarray, targets: np.ndarray, *, chunk: int = 16) -> PerImage:
    """Every colour metric per image pair, in one pass over the images."""
    _check_pair(outputs, targets)
    de = _delta_e_values(outputs, targets, chunk)
    return PerImage(
        delta_e2000=de.mean(axis=1, dtype=np.float64),
        squared_error=_squared_error(outputs, targets),
        ssim=_ssim_values(outputs, targets, chunk),
        colourfulness_output=np.array([colourfulness(o) for o in outputs]),
        colourfulness_target=np.array([colourfulness(t) for t in targets]),
        delta_e2000_median=float(np.median(de)),
    )
