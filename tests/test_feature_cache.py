"""The evaluate stage's cache of target features is keyed by everything that decides them:
changed preprocessing, weights or extractor code must miss it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eval import extractors as ex_mod
from eval.extractors import FeatureExtractor
from pipeline.results import feature_cache
from pipeline.results.feature_cache import cached_target_extractions


class _MeanNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class CountingExtractor(FeatureExtractor):
    """Features = per-channel means after the resize: they depend on the preprocessing."""

    name = "counting"
    weights_sha256 = "0" * 64
    input_size = 8
    resize = "bilinear to 8x8"
    feature_dim = 3
    num_classes = 2

    def __init__(self) -> None:
        super().__init__(_MeanNet())
        self.calls = 0

    def extract(self, images, batch_size=16, *, layout="NCHW", progress=True):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().extract(images, batch_size, layout=layout, progress=progress)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.network(x)
        return f, f[:, :2]


@pytest.fixture()
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(feature_cache, "FEATURE_CACHE", tmp_path / "features")
    return tmp_path / "features"


def _targets() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)


def test_same_extractor_and_targets_hit_the_cache(cache_dir: Path) -> None:
    ex = CountingExtractor()
    first = cached_target_extractions(_targets(), [ex], batch_size=2, progress=False)
    again = cached_target_extractions(_targets(), [ex], batch_size=2, progress=False)
    assert ex.calls == 1 and len(list(cache_dir.glob("*.npz"))) == 1
    assert np.array_equal(first["counting"].features, again["counting"].features)


def test_changed_preprocessing_misses_the_cache(cache_dir: Path) -> None:
    ex = CountingExtractor()
    cached_target_extractions(_targets(), [ex], batch_size=2, progress=False)
    ex.input_size = 4  # another resize: other features
    ex.resize = "bilinear to 4x4"
    cached_target_extractions(_targets(), [ex], batch_size=2, progress=False)
    assert ex.calls == 2 and len(list(cache_dir.glob("*.npz"))) == 2


def test_changed_weights_or_code_miss_the_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = CountingExtractor()
    cached_target_extractions(_targets(), [ex], batch_size=2, progress=False)
    ex.weights_sha256 = "1" * 64
    cached_target_extractions(_targets(), [ex], batch_size=2, progress=False)
    assert ex.calls == 2
    # An edit to the modules that compute features changes their source digest.
    monkeypatch.setattr(ex_mod, "source_digest", lambda modules: "edited")
    cached_target_extractions(_targets(), [ex], batch_size=2, progress=False)
    assert ex.calls == 3


def test_identity_covers_the_feature_code() -> None:
    ident = CountingExtractor().identity()
    assert ident["source_sha256"] == ex_mod.source_digest(
        tuple(sorted({"tests.test_feature_cache", "eval.weights"})))
    assert {"weights_sha256", "input_size", "resize", "torch", "channels_last"} <= set(ident)


def test_damaged_cache_file_is_rebuilt(cache_dir: Path) -> None:
    ex = CountingExtractor()
    cached_target_extractions(_targets(), [ex], batch_size=2, progress=False)
    (path,) = cache_dir.glob("*.npz")
    path.write_bytes(b"not an npz")
    out = cached_target_extractions(_targets(), [ex], batch_size=2, progress=False)
    assert ex.calls == 2 and out["counting"].features.shape == (3, 3)
