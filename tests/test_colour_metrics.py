"""Colour metrics: CIEDE2000 (Sharma et al. 2005 test data), PSNR, SSIM, colourfulness."""

from __future__ import annotations

import numpy as np
import pytest

from eval.colour_metrics import (
    colourfulness,
    delta_e2000,
    delta_e2000_lab,
    mean_colourfulness,
    mean_ssim,
    per_image_metrics,
    psnr,
)


def _uniform(rgb: tuple[int, int, int], n: int = 2, size: int = 8) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (n, size, size, 3)).copy()


# Rows of the CIEDE2000 test data published with Sharma, Wu & Dalal (2005).
SHARMA_PAIRS = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, 2.8361, -74.0200), (50.0, 0.0, -82.7485), 3.4412),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
]


@pytest.mark.parametrize(("lab1", "lab2", "expected"), SHARMA_PAIRS)
def test_ciede2000_sharma_test_data(lab1, lab2, expected) -> None:
    assert float(delta_e2000_lab(np.array(lab1), np.array(lab2))) == pytest.approx(expected, abs=5e-5)


def test_ciede2000_agrees_with_skimage_on_random_and_edge_cases() -> None:
    from skimage.color import deltaE_ciede2000

    rng = np.random.default_rng(3)
    n = 20000
    lab1 = np.stack([rng.uniform(0, 100, n), rng.uniform(-110, 110, n), rng.uniform(-110, 110, n)], -1)
    lab2 = lab1 + rng.normal(0, 15, lab1.shape)
    lab1[:100, 1:] = 0  # zero chroma on one side
    lab2[50:150, 1:] = 0  # and on both
    lab2[200:300, 1] = -lab1[200:300, 1]  # hues across the a* = 0 wrap-around
    lab2[200:300, 2] = lab1[200:300, 2] * 1e-3
    ours = delta_e2000_lab(lab1, lab2)
    np.testing.assert_allclose(ours, deltaE_ciede2000(lab1, lab2), rtol=1e-9, atol=1e-9)


def test_delta_e2000_of_images_agrees_with_the_skimage_route() -> None:
    from skimage.color import deltaE_ciede2000, rgb2lab

    rng = np.random.default_rng(4)
    out = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    tgt = np.clip(out.astype(int) + rng.integers(-40, 41, out.shape), 0, 255).astype(np.uint8)
    reference = deltaE_ciede2000(rgb2lab(out / 255.0), rgb2lab(tgt / 255.0))
    mean, median = delta_e2000(out, tgt, chunk=2)
    assert mean == pytest.approx(float(reference.mean()), rel=1e-4)
    assert median == pytest.approx(float(np.median(reference)), rel=1e-4)


def test_identical_images() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert delta_e2000(img, img) == (0.0, 0.0)
    assert psnr(img, img) is None  # infinite PSNR is reported as null
    assert mean_ssim(img, img) == pytest.approx(1.0)


def test_black_versus_white_is_delta_e_100() -> None:
    # sRGB black and white are L* 0 and 100 with a* = b* = 0; at mean L* 50, S_L = 1.
    mean, median = delta_e2000(_uniform((0, 0, 0)), _uniform((255, 255, 255)))
    assert mean == pytest.approx(100.0, abs=1e-3)
    assert median == pytest.approx(100.0, abs=1e-3)


def test_mean_and_median_over_all_pixels() -> None:
    out = _uniform((0, 0, 0), n=3)
    tgt = out.copy()
    tgt[0] = 255  # one image in three is white: a third of the pixels differ by 100
    mean, median = delta_e2000(out, tgt)
    assert mean == pytest.approx(100.0 / 3, abs=1e-3)
    assert median == 0.0


def test_psnr_known_value() -> None:
    out = _uniform((1, 1, 1))
    tgt = _uniform((0, 0, 0))
    assert psnr(out, tgt) == pytest.approx(20 * np.log10(255.0), rel=1e-12)  # MSE = 1
    tgt2 = tgt.copy()
    tgt2[0] = 1  # half the images exact, half off by 1: set-level MSE 0.5
    assert psnr(out, tgt2) == pytest.approx(10 * np.log10(255.0**2 / 0.5), rel=1e-12)


@pytest.mark.parametrize("shape", [(5, 64, 48, 3), (3, 5, 5, 3), (2, 9, 20, 3)])
def test_ssim_agrees_with_skimage(shape: tuple[int, int, int, int]) -> None:
    # The batched torch SSIM is skimage's definition (window, sample covariance, cropped border).
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    smooth = np.clip(a.astype(np.int16) // 2 + rng.integers(0, 128, shape), 0, 255).astype(np.uint8)
    win = min(7, min(shape[1:3]) if min(shape[1:3]) % 2 else min(shape[1:3]) - 1)
    reference = [structural_similarity(o, t, channel_axis=-1, data_range=255, win_size=win)
                 for o, t in zip(a, smooth, strict=True)]
    ours = per_image_metrics(a, smooth).ssim
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)
    assert mean_ssim(a, smooth) == pytest.approx(float(np.mean(reference)), abs=1e-12)


def test_ssim_small_images_and_errors() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    assert -1.0 <= mean_ssim(a, 255 - a) < 0.5
    with pytest.raises(ValueError, match="3x3"):
        mean_ssim(a[:, :2, :2], a[:, :2, :2])
    with pytest.raises(ValueError, match="same shape"):
        mean_ssim(a, a[:1])
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), a.astype(np.float32))


def test_colourfulness_known_values() -> None:
    gray = np.repeat(np.random.default_rng(2).integers(0, 256, (1, 10, 10, 1), dtype=np.uint8), 3, axis=3)
    assert mean_colourfulness(gray) == pytest.approx(0.0, abs=1e-12)
    # uniform pure red: rg = 255, yb = 127.5, no spread
    assert colourfulness(_uniform((255, 0, 0), n=1)[0]) == pytest.approx(0.3 * np.hypot(255.0, 127.5))
    # half red / half green columns: means cancel in rg, spread sigma_rg = 255
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    img[:, :2, 0] = 255
    img[:, 2:, 1] = 255
    expected = np.sqrt(255.0**2 + 0.0) + 0.3 * np.hypot(0.0, 127.5)
    assert colourfulness(img) == pytest.approx(expected)
