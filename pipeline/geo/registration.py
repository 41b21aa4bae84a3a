"""Misregistration between an input tile and its target: estimate the offset by phase correlation.

Historic photos sit metres off modern orthophotos. The offset of a pair is estimated on
gradient-magnitude images (edges survive the change of sensor, season and film response
far better than raw grey levels), Hann-windowed, by phase correlation with numpy FFTs.

Sign convention (used everywhere: manifest, figures, the shift that is applied):
    a feature at pixel (x, y) of the reference (target) appears at (x + dx, y + dy) in
    the moving image (input); x grows to the right (east), y grows down (south).
So dx > 0 means the input content sits east of where it belongs, and aligning the input
means sampling it at (x + dx, y + dy) for each target pixel (x, y).

Why our own numpy implementation rather than skimage.registration.phase_cross_correlation:
the search must be bounded to `offset.max_shift_px` (a tile of fields or water has
spurious peaks anywhere; the true misregistration is known to be small), we want a
peak-height confidence on a fixed 0..1 scale, and a mild low-pass weighting of the
cross-power spectrum that makes the peak robust to noise. skimage offers none of the
three. Subpixel refinement uses the same idea as skimage (Guizar-Sicairos et al. 2008):
the correlation surface is evaluated on a fine grid around the integer peak by a
matrix-multiply DFT, which is exact for the band-limited surface (no parabola bias).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage

# Relative low-pass on the cross-power spectrum: a Gaussian whose sigma is this fraction of
# the sampling frequency. It widens the correlation peak to a few pixels so noise in the
# highest frequencies (film grain, JPEG blocks) does not scatter it.
SPECTRAL_SIGMA = 0.15
UPSAMPLE = 20  # subpixel grid: 1/20 px


@dataclass(frozen=True)
class Offset:
    """Displacement of the input relative to the target, in target pixels (see module doc)."""

    dx: float
    dy: float
    peak: float  # height of the correlation peak, 0..1 (1: identical edge structure)

    @property
    def magnitude(self) -> float:
        return float(np.hypot(self.dx, self.dy))


def gradient_magnitude(gray: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of a 2-D image, float32."""
    img = np.asarray(gray, dtype=np.float32)
    return np.hypot(ndimage.sobel(img, axis=1), ndimage.sobel(img, axis=0))


@functools.lru_cache(maxsize=8)
def _hann2d(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _spectral_weight(shape: tuple[int, int]) -> np.ndarray:
    """Gaussian low-pass over the FFT bins, normalised so a perfect match peaks at 1."""
    fy, fx = np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1])
    weight = np.exp(-(fy[:, None] ** 2 + fx[None, :] ** 2) / (2 * SPECTRAL_SIGMA ** 2))
    return (weight / weight.sum()).astype(np.float32)


def estimate_offset(reference: np.ndarray, moving: np.ndarray, max_shift_px: float,
                    upsample: int = UPSAMPLE) -> Offset:
    """Offset of `moving` relative to `reference` (both 2-D grey, same shape), within max_shift_px."""
    if reference.shape != moving.shape or reference.ndim != 2:
        raise ValueError(f"need two 2-D images of the same shape, got {reference.shape}, {moving.shape}")
    ny, nx = reference.shape
    window = _hann2d((ny, nx))
    spectra = []
    for img in (reference, moving):
        g = gradient_magnitude(img)
        spectra.append(fft.fft2((g - g.mean()) * window))  # float32 in: complex64 out
    cross = spectra[1] * np.conj(spectra[0])
    magnitude = np.abs(cross)
    if not magnitude.any():  # a flat image has no edges to correlate
        return Offset(0.0, 0.0, 0.0)
    # Phase only (whitened), low-passed, scaled so a perfect match peaks at 1.
    spectrum = cross / np.maximum(magnitude, 1e-12 * magnitude.max()) * _spectral_weight((ny, nx))
    surface = fft.ifft2(spectrum).real * (nx * ny)

    sy, sx = np.fft.fftfreq(ny) * ny, np.fft.fftfreq(nx) * nx  # integer shift of each bin
    inside = sy[:, None] ** 2 + sx[None, :] ** 2 <= max_shift_px ** 2
    masked = np.where(inside, surface, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(masked)), masked.shape)
    dy0, dx0 = float(sy[iy]), float(sx[ix])

    # Subpixel: evaluate the surface on a 1/4 px grid within +-1 px of the integer peak, then
    # on a 1/upsample grid within +-1/4 px of the best of those.
    for steps in (np.arange(-4, 5) / 4, np.arange(-upsample // 4, upsample // 4 + 1) / upsample):
        fine = _surface_near(spectrum, dy0 + steps, dx0 + steps)
        fy_i, fx_i = np.unravel_index(int(np.argmax(fine)), fine.shape)
        dy0, dx0 = dy0 + float(steps[fy_i]), dx0 + float(steps[fx_i])
    dy, dx = dy0, dx0
    if dx * dx + dy * dy > max_shift_px ** 2:  # refinement may step just past the bound
        scale = max_shift_px / float(np.hypot(dx, dy))
        dx, dy = dx * scale, dy * scale
    return Offset(float(dx), float(dy), float(fine[fy_i, fx_i]))


def _surface_near(spectrum: np.ndarray, shifts_y: np.ndarray, shifts_x: np.ndarray) -> np.ndarray:
    """The correlation surface at fractional shifts: a matrix-multiply DFT of the spectrum.

    einsum without BLAS on purpose: multithreaded OpenBLAS is ~50x slower on these small
    products when the CPU is shared (measured on the 2-core machine).
    """
    ny, nx = spectrum.shape
    ky, kx = np.fft.fftfreq(ny) * ny, np.fft.fftfreq(nx) * nx
    rows = np.exp(2j * np.pi * np.outer(shifts_y, ky) / ny)  # (m, ny)
    cols = np.exp(2j * np.pi * np.outer(kx, shifts_x) / nx)  # (nx, m)
    half = np.einsum("yk,kx->yx", rows, spectrum.astype(np.complex128), optimize=False)
    return np.einsum("yk,kx->yx", half, cols, optimize=False).real

