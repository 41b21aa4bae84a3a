"""The colour baselines: a look-up of colour by lightness and a global colour transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.colour_metrics import delta_e2000
from models.colour import lab_to_rgb, rgb_to_lab
from pipeline.results.baselines import fit_lightness_lookup, fit_transfer, gray_lightness


def _colour_of_lightness(light: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A SYNTHETIC colour rule: a* and b* are smooth functions of L* (in gamut for L in 20-90)."""
    return 18.0 * np.sin(light / 12.0), 14.0 * np.cos(light / 17.0) + 6.0


def _synthetic_tiles(seed: int, n: int = 4, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Gray inputs and colour targets whose colour is a function of the input's lightness."""
    rng = np.random.default_rng(seed)
    gray = rng.integers(60, 240, size=(n, size, size), dtype=np.uint8)
    light = gray_lightness()[gray]
    a, b = _colour_of_lightness(light)
    lab = torch.from_numpy(np.stack([light, a, b], axis=1))  # (n, 3, H, W)
    rgb = lab_to_rgb(lab).permute(0, 2, 3, 1).numpy()
    return gray, np.round(rgb * 255).astype(np.uint8)


def test_lookup_reproduces_colour_that_is_a_function_of_lightness() -> None:
    train_gray, train_rgb = _synthetic_tiles(0)
    test_gray, test_rgb = _synthetic_tiles(1)
    table = fit_lightness_lookup(train_gray, train_rgb)
    predicted = table.predict(test_gray)
    de_lookup, _ = delta_e2000(predicted, test_rgb)
    de_gray, _ = delta_e2000(np.repeat(test_gray[..., None], 3, axis=-1), test_rgb)
    assert de_lookup < 1.0 < 10.0 < de_gray  # the rule is learnt; the gray input is far off
    # Lightness is the input's: the look-up only adds chroma.
    lab = rgb_to_lab(torch.from_numpy(predicted).permute(0, 3, 1, 2).double() / 255).numpy()
    assert np.abs(lab[:, 0] - gray_lightness()[test_gray]).max() < 1.0


def test_lookup_extends_its_outermost_bins_beyond_the_fitted_lightness() -> None:
    """Gray levels never seen in training take the colour of the nearest fitted bin."""
    train_gray, train_rgb = _synthetic_tiles(3)  # gray levels 60..239 only
    table = fit_lightness_lookup(train_gray, train_rgb)
    lab = rgb_to_lab(torch.from_numpy(table.rgb.T.reshape(1, 3, 1, 256)).double() / 255)[0, :, 0].numpy()
    low = gray_lightness()[:40]
    assert np.ptp(lab[1, 10:40]) < 2.0 and np.all(np.isfinite(low))  # flat a* below the data


def test_transfer_matches_the_train_targets_statistics() -> None:
    train_gray, train_rgb = _synthetic_tiles(2)
    table = fit_transfer(train_gray, train_rgb)
    out = table.predict(train_gray)
    lab_out = rgb_to_lab(torch.from_numpy(out).permute(0, 3, 1, 2).double() / 255).numpy()
    lab_t = rgb_to_lab(torch.from_numpy(train_rgb).permute(0, 3, 1, 2).double() / 255).numpy()
    for c in range(3):
        assert lab_out[:, c].mean() == pytest.approx(lab_t[:, c].mean(), abs=1.0)
    assert lab_out[:, 0].std() == pytest.approx(lab_t[:, 0].std(), rel=0.05)
    assert lab_out[:, 1].std() < 1.0  # one global chroma


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="train split is empty"):
        fit_lightness_lookup(np.zeros((0, 4, 4), np.uint8), np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="expected gray"):
        fit_transfer(np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4, 5, 3), np.uint8))
