"""bench/film_floor.py: the oracle keeps the input's lightness and takes the real photo's chroma."""

from __future__ import annotations

import numpy as np
import torch

from bench.film_floor import oracle_chroma
from models.colour import gray_to_lightness, rgb_to_lab


def test_oracle_has_the_inputs_lightness_and_the_real_chroma() -> None:
    rng = np.random.default_rng(0)
    real = rng.integers(40, 216, (2, 16, 16, 3), dtype=np.uint8)
    gray = rng.integers(30, 226, (2, 16, 16), dtype=np.uint8)  # unrelated to real: a bad film
    lab = rgb_to_lab(torch.from_numpy(oracle_chroma(gray, real)).permute(0, 3, 1, 2).double() / 255)
    real_lab = rgb_to_lab(torch.from_numpy(real).permute(0, 3, 1, 2).double() / 255)
    want_l = gray_to_lightness(torch.from_numpy(gray).double()[:, None] / 255)
    # Most pixels: the input's L* and the real a*b* (to uint8 rounding). The rest fell outside the
    # sRGB gamut and were clipped, as any colouriser's output would be.
    l_error = (lab[:, :1] - want_l).abs().flatten()
    ab_error = (lab[:, 1:] - real_lab[:, 1:]).abs().amax(1).flatten()
    assert l_error.quantile(0.75) < 0.5
    assert ab_error.quantile(0.5) < 1.0


def test_neutral_real_photo_with_its_own_gray_is_its_own_oracle() -> None:
    values = np.arange(0, 256, 17, dtype=np.uint8)
    real = np.repeat(np.broadcast_to(values, (1, 4, len(values)))[..., None], 3, axis=-1).copy()
    out = oracle_chroma(real[..., 0].copy(), real)
    assert np.abs(out.astype(int) - real.astype(int)).max() <= 1
