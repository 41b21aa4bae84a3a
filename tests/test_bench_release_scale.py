"""bench.release_scale's upsampling: the centre of each window at finer pixels, nothing else."""

from __future__ import annotations

import numpy as np

from bench.release_scale import upsampled
from pipeline.datasets.release import Crops


def crops_of(bands: np.ndarray) -> Crops:
    return Crops(bands, ["a"] * len(bands), [(0, 0)] * len(bands), [0.6] * len(bands))


def test_factor_one_is_the_windows_themselves() -> None:
    c = crops_of(np.random.default_rng(0).integers(0, 256, (2, 4, 64, 64), dtype=np.uint8))
    assert upsampled(c, 1.0) is c


def test_upsampling_keeps_the_size_and_shows_the_centre_at_finer_pixels() -> None:
    bands = np.zeros((1, 4, 64, 64), np.uint8)
    bands[:, :, 16:48, 16:48] = 200  # a square filling the centre half
    out = upsampled(crops_of(bands), 2.0)
    assert out.bands.shape == bands.shape and out.bands.dtype == np.uint8
    assert out.metres_per_px == [0.3]
    assert (out.bands == 200).all()  # the centre half, blown up to the whole window
    flat = upsampled(crops_of(np.full((1, 4, 64, 64), 90, np.uint8)), 2.76)
    assert (flat.bands == 90).all()
