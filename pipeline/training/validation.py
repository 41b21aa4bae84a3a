"""Validation during training: mean RGB L1 over whole val tiles and a sample grid, run
without disturbing any random generator (so validating never changes training)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from models.base import GANModel
from pipeline.datasets.batches import full_tiles
from pipeline.datasets.storage import atomic_write_bytes
from pipeline.training.checkpoint import capture_rng, restore_rng
from pipeline.training.devices import seed_everything
from pipeline.training.precision import autocast

VAL_BATCH = 8  # whole tiles per validation forward pass


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run a block without disturbing any global RNG, so validating never changes training."""
    saved = capture_rng(device)
    try:
        yield
    finally:
        restore_rng(saved, device)


def sample_indices(n_val: int, k: int) -> list[int]:
    """`k` val tiles spread evenly over the split (the same ones at every validation)."""
    if n_val == 0 or k == 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n_val - 1, min(k, n_val)).round()})


@torch.no_grad()
def validate(model: GANModel, val_pairs: np.ndarray, device: torch.device, *, bf16: bool = False,
             samples: list[int] | tuple[int, ...] = (), batch_size: int = VAL_BATCH
             ) -> tuple[float, torch.Tensor | None]:
    """Mean absolute error in RGB [0, 1] over whole val tiles, and a sample grid.

    The grid has one row per sample tile: input | output | target (a (3, H, W) tensor).
    """
    model.eval()
    wanted = set(samples)
    picked: dict[int, torch.Tensor] = {}
    abs_sum, count = 0.0, 0
    try:
        with preserved_rng(device):
            seed_everything(0)  # models that sample (e.g. BicycleGAN's z) validate reproducibly
            for start in range(0, len(val_pairs), batch_size):
                stop = min(len(val_pairs), start + batch_size)
                # A writable copy of the chunk: torch warns about read-only memmaps.
                chunk = np.array(val_pairs[start:stop])
                batch = full_tiles(chunk, 0, len(chunk))
                gray = batch["A"].to(device)
                with autocast(device, bf16):
                    out = model.colourise(gray)
                out = out.float().clamp(0.0, 1.0).cpu()
                abs_sum += (out - batch["B"]).abs().double().sum().item()
                count += batch["B"].numel()
                for i in range(start, stop):
                    if i in wanted:
                        j = i - start
                        picked[i] = torch.stack([batch["A"][j].expand(3, -1, -1), out[j], batch["B"][j]])
    finally:
        model.train()
    grid = None
    if picked:
        grid = make_grid(torch.cat([picked[i] for i in sorted(picked)]), ncols=3)
    return (abs_sum / count if count else float("nan")), grid


def make_grid(images: torch.Tensor, *, ncols: int, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) images -> one (C, H', W') image, `ncols` per row, `padding` pixels of
    `pad_value` around each (the layout of torchvision's make_grid, whose import alone
    pulls in torchvision.models and torch._dynamo: seconds of every run's start-up)."""
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("make_grid: no images")
    cols = min(ncols, n)
    rows = -(-n // cols)
    grid = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i in range(n):
        y = (i // cols) * (h + padding) + padding
        x = (i % cols) * (w + padding) + padding
        grid[:, y:y + h, x:x + w] = images[i]
    return grid


def png_bytes(image: torch.Tensor) -> bytes:
    """A (3, H, W) image in [0, 1] as PNG (rounded to 8 bits like torchvision's save_image)."""
    from PIL import Image

    pixels = image.detach().float().mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()).save(buffer, format="png")
    return buffer.getvalue()


def write_samples(out_dir: Path, step: int, grid: torch.Tensor) -> Path:
    data = png_bytes(grid)
    path = out_dir / "samples" / f"step_{step:06d}.png"
    atomic_write_bytes(path, data)
    atomic_write_bytes(out_dir / "samples" / "latest.png", data)
    return path


class Validator:
    """Validates a run's model at its schedule (every `every` steps and at the last step)
    and writes the sample grids; only the main process validates.

    With `max_tiles`, validation scores that many val tiles spread evenly over the split
    (the same ones every time) and the grid shows some of them: on a CPU a pass over a
    whole val split can cost more than a short run's training steps.
    """

    def __init__(self, model: GANModel, val_pairs: np.ndarray, device: torch.device, *, out_dir: Path,
                 every: int, total: int, num_samples: int, max_tiles: int | None = None,
                 bf16: bool = False, enabled: bool = True) -> None:
        self.model = model
        if max_tiles is not None and max_tiles < len(val_pairs):
            # Only the chosen tiles are read from the memory-mapped split.
            val_pairs = np.asarray(val_pairs[sample_indices(len(val_pairs), max_tiles)])
        self.val_pairs = val_pairs
        self.device = device
        self.out_dir = out_dir
        self.every = every
        self.total = total
        self.bf16 = bf16
        self.enabled = enabled and len(val_pairs) > 0
        self.samples = sample_indices(len(val_pairs), num_samples)

    def due(self, done: int) -> bool:
        return self.enabled and (done % self.every == 0 or done == self.total)

    def run(self, done: int) -> float:
        """Validate after `done` steps: the val L1 (the sample grid is written)."""
        val_l1, grid = validate(self.model, self.val_pairs, self.device, bf16=self.bf16, samples=self.samples)
        if grid is not None:
            write_samples(self.out_dir, done, grid)
        return val_l1
