"""Training batches are a pure function of (seed, step, rank)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.datasets.batches import PairBatches, full_tiles


def _pairs(n: int = 5, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    gray = rgb.mean(axis=-1).astype(np.uint8)
    return np.concatenate([gray[..., None], rgb], axis=-1)


def test_batches_repeat_exactly_for_the_same_step() -> None:
    loader = PairBatches(_pairs(), batch_size=2, crop_size=16, load_size=32, paired=True, seed=3)
    first, again = loader.batch(7), loader.batch(7)
    assert torch.equal(first["A"], again["A"]) and torch.equal(first["B"], again["B"])
    assert not torch.equal(first["B"], loader.batch(8)["B"])
    assert first["A"].shape == (2, 1, 16, 16) and first["B"].shape == (2, 3, 16, 16)


def test_paired_crops_stay_aligned() -> None:
    loader = PairBatches(_pairs(), batch_size=3, crop_size=16, load_size=32, paired=True, seed=0)
    for step in range(6):
        b = loader.batch(step)
        gray_of_target = (b["B"] * 255).round().mean(dim=1, keepdim=True).floor()
        assert torch.allclose(gray_of_target, (b["A"] * 255).round(), atol=1.0)


def test_each_epoch_visits_every_sample_once() -> None:
    pairs = _pairs(n=6)
    loader = PairBatches(pairs, batch_size=2, crop_size=32, load_size=32, paired=True, seed=1,
                         flip=False)
    seen = []
    for step in range(3):
        for img in loader.batch(step)["B"]:
            match = [i for i in range(6) if torch.equal(
                img, torch.from_numpy(pairs[i][..., 1:]).permute(2, 0, 1).float() / 255)]
            seen.extend(match)
    assert sorted(seen) == list(range(6))


def test_ranks_draw_different_samples() -> None:
    pairs = _pairs(n=8)
    r0 = PairBatches(pairs, batch_size=2, crop_size=32, load_size=32, paired=True, seed=0, rank=0,
                     world_size=2, flip=False).batch(0)
    r1 = PairBatches(pairs, batch_size=2, crop_size=32, load_size=32, paired=True, seed=0, rank=1,
                     world_size=2, flip=False).batch(0)
    assert not torch.equal(r0["B"], r1["B"])


def test_full_tiles_are_unaugmented() -> None:
    pairs = _pairs(n=3)
    b = full_tiles(pairs, 0, 2)
    assert b["A"].shape == (2, 1, 32, 32)
    assert torch.equal((b["B"][1] * 255).round().byte(), torch.from_numpy(pairs[1][..., 1:]).permute(2, 0, 1))
