"""Training batches from a memory-mapped dataset split (see pipeline.datasets.storage).

`PairBatches.batch(step)` is a pure function of (seed, step, rank): which samples,
which crop and which flip are derived from those numbers alone, so a resumed run
sees exactly the batches an uninterrupted one would, with no loader state to save.
Preprocessing follows the reference: resize to load_size, random crop to crop_size,
random horizontal flip.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.datasets.storage import INPUT_CHANNEL, TARGET_CHANNELS


class PairBatches:
    def __init__(self, pairs: np.ndarray, *, batch_size: int, crop_size: int, load_size: int,
                 paired: bool, seed: int, rank: int = 0, world_size: int = 1,
                 flip: bool = True) -> None:
        if len(pairs) == 0:
            raise ValueError("the training split is empty")
        if crop_size > load_size:
            raise ValueError(f"crop_size {crop_size} is larger than load_size {load_size}")
        self.pairs = pairs
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.load_size = load_size
        self.paired = paired
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.flip = flip

    def __len__(self) -> int:
        return len(self.pairs)

    def _indices(self, step: int, stream: int) -> np.ndarray:
        """Sample indices for this step: each epoch visits every sample once."""
        n = len(self.pairs)
        first = (step * self.world_size + self.rank) * self.batch_size
        positions = np.arange(first, first + self.batch_size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(positions // n):
            perm = np.random.default_rng([self.seed, stream, int(epoch)]).permutation(n)
            sel = positions // n == epoch
            out[sel] = perm[positions[sel] % n]
        return out

    def _augment(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Resize (B, C, H, W) to load_size, crop to crop_size and maybe flip, per sample."""
        if images.shape[-1] != self.load_size:
            images = F.interpolate(images, size=(self.load_size, self.load_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        out = []
        for img in images:
            top, left = rng.integers(0, self.load_size - self.crop_size + 1, size=2)
            img = img[:, top:top + self.crop_size, left:left + self.crop_size]
            if self.flip and rng.random() < 0.5:
                img = img.flip(-1)
            out.append(img)
        return torch.stack(out).clamp_(0.0, 1.0)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """{"A": (B, 1, crop, crop) gray, "B": (B, 3, crop, crop) RGB}, floats in [0, 1]."""
        idx_a = self._indices(step, stream=0)
        idx_b = idx_a if self.paired else self._indices(step, stream=1)
        rng = np.random.default_rng([self.seed, 2, step, self.rank])
        a = torch.from_numpy(np.stack([self.pairs[i][..., INPUT_CHANNEL] for i in idx_a]))
        b = torch.from_numpy(np.stack([self.pairs[i][..., TARGET_CHANNELS] for i in idx_b]))
        a = a.unsqueeze(1).float().div_(255.0)
        b = b.permute(0, 3, 1, 2).float().div_(255.0)
        if self.paired:
            # One crop/flip for the pair, so input and target stay pixel-aligned.
            both = self._augment(torch.cat([a, b], dim=1), rng)
            return {"A": both[:, :1].contiguous(), "B": both[:, 1:].contiguous()}
        return {"A": self._augment(a, rng), "B": self._augment(b, rng)}


def full_tiles(pairs: np.ndarray, start: int, stop: int) -> dict[str, torch.Tensor]:
    """Whole tiles [start:stop] for validation and evaluation, no augmentation."""
    chunk = np.array(pairs[start:stop])  # a writable copy (torch warns on read-only memmaps)
    a = torch.from_numpy(chunk[..., INPUT_CHANNEL]).unsqueeze(1).float().div_(255.0)
    b = torch.from_numpy(chunk[..., TARGET_CHANNELS]).permute(0, 3, 1, 2).float().div_(255.0)
    return {"A": a, "B": b}
