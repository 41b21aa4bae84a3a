"""bench.tile_seams' measures: the seam ratio of a mosaic, and instance norms with shared statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.tile_seams import SharedNormStats, edge_jump_ratio


def _smooth_mosaic() -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:512, 0:512] / 512.0
    ab = np.stack([10 * x + 5 * y, 8 * np.sin(3 * x) - 4 * y], axis=-1)
    return ab + rng.normal(0, 0.3, ab.shape)  # texture: every adjacent pair differs a little


def test_a_seamless_mosaic_scores_about_one_and_a_shifted_tile_column_shows() -> None:
    ab = _smooth_mosaic()
    cols, rows = edge_jump_ratio(ab)
    assert cols == pytest.approx(1.0, abs=0.15) and rows == pytest.approx(1.0, abs=0.15)
    shifted = ab.copy()
    shifted[:, 256:] += np.array([3.0, -2.0])  # the right-hand tiles a little greener
    cols, rows = edge_jump_ratio(shifted)
    assert cols > 5.0 and rows == pytest.approx(1.0, abs=0.15)


def test_a_mosaic_must_hold_whole_tiles() -> None:
    with pytest.raises(ValueError, match="2 x 2 whole 256-px tiles"):
        edge_jump_ratio(np.zeros((300, 512, 2)))


def test_shared_statistics_make_a_window_agree_with_the_whole_image() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.InstanceNorm2d(4), nn.Conv2d(4, 2, 1)).eval()
    image = torch.rand(1, 1, 64, 64) * torch.linspace(0.2, 1.0, 64)  # brighter to the right
    window = image[..., 32:]
    with torch.no_grad():
        own = net(image)
    norms = SharedNormStats(net)
    with torch.no_grad():
        # Each window normalised by its own statistics: the right half alone comes out differently.
        assert not torch.allclose(net(window), net(image)[..., 32:], atol=1e-3)
        with norms.collecting():
            net(image)
        with norms.shared():
            whole, part = net(image), net(window)
        # 1x1 convolutions: with the whole image's statistics, a window is the whole's crop.
        torch.testing.assert_close(part, whole[..., 32:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(whole, own)  # the statistics gathered are the whole image's own
        # Outside `shared()`, each input is normalised by its own statistics again.
        assert not torch.allclose(net(window), whole[..., 32:], atol=1e-3)


def test_collecting_without_running_the_network_is_an_error() -> None:
    norms = SharedNormStats(nn.Sequential(nn.InstanceNorm2d(2)))
    with pytest.raises(RuntimeError, match="no statistics gathered"), norms.collecting():
        pass


class _WindowMeanModel:
    """Colours depend on the whole window seen (as with instance norms): green by its mean."""

    def colourise(self, gray: torch.Tensor) -> torch.Tensor:
        mean = gray.mean(dim=(2, 3), keepdim=True)
        return torch.cat([0.3 + 0.4 * gray, 0.2 + 0.6 * mean.expand_as(gray), 0.3 + 0.4 * gray], dim=1)


class _Tiles:
    """A smooth, textured gray landscape cut into tiles (no edge in the image at tile edges)."""

    def get(self, tile: object) -> np.ndarray:
        from pipeline.geo.tiles import TileId

        assert isinstance(tile, TileId)
        y, x = np.mgrid[0:256, 0:256]
        x, y = x + 256 * tile.x, y + 256 * tile.y
        texture = np.random.default_rng(tile.x * 1000 + tile.y).integers(0, 4, (256, 256))
        gray = 120 + 60 * np.sin(x / 150) + 60 * np.cos(y / 170) + texture
        return np.stack([gray.astype(np.uint8), np.full((256, 256), 255, np.uint8)], axis=-1)


def test_cross_faded_tiles_show_no_seams_where_window_centres_do() -> None:
    from bench.tile_seams import score_blocks
    from pipeline.geo.tiles import TileId

    corner = [TileId(19, 100, 200)]
    centres, _ = score_blocks(_WindowMeanModel(), _Tiles(), corner, 32, "centre")
    blended, mosaic = score_blocks(_WindowMeanModel(), _Tiles(), corner, 32, "blend")
    assert centres["cols"] > 3 and centres["rows"] > 3
    assert blended["cols"] < 1.5 and blended["rows"] < 1.5
    assert mosaic.shape == (1024, 1024, 3)
    pairs, _ = score_blocks(_WindowMeanModel(), _Tiles(), corner, 32, "pairs")  # 2 x 2 tiles a window
    assert pairs["cols"] < 1.5 and pairs["rows"] < 1.5
