"""The compact training format: one memory-mappable uint8 .npy file per split.

A dataset folder (data/datasets/<name>/) holds:
- `train.npy`, `val.npy`, `test.npy` (and `heldout.npy` for a dataset with a held-out
  area): arrays of shape (N, H, W, 4), uint8. Channel 0 is
  the model input (grayscale: the luma of the modern tile, or the historic photo) and
  channels 1-3 the target (modern colour) RGB. Pixel-aligned in the map frame.
- `manifest.csv`: one row per stored pair (index within its split, split, z/x/y, bounds,
  offset, source layers and tile ids).
- `dataset.json`: `DatasetInfo` below.
Loading is `np.load(path, mmap_mode="r")`: no per-step image decoding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import LuminescenceError
from pipeline.core.files import atomic_write_bytes, replacing
from pipeline.core.outputs import FolderKind

SPLITS = ("train", "val", "test")
# What a dataset folder is recognised by before the align stage replaces it.
DATASET_FOLDER = FolderKind("a dataset folder", "dataset.json")
HELDOUT = "heldout"  # tiles of another area, never trained on (datasets.<name>.heldout)
INPUT_CHANNEL = 0
TARGET_CHANNELS = slice(1, 4)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_kind: str  # "gray" or "historic"
    input_layer: str
    target_layer: str
    synthetic_input: bool  # true when the input layer is synthetic (e.g. film-emulated)
    tile_size: int
    zoom: int
    luma: str
    counts: dict[str, int] = field(default_factory=dict)
    # The held-out area: counts, layers, zoom, pixel size, synthetic flag, note (None: no such area).
    heldout: dict[str, object] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def write_split(root: Path, split: str, pairs: np.ndarray) -> Path:
    """Atomically write one split array of shape (N, H, W, 4) uint8."""
    if split not in (*SPLITS, HELDOUT):
        raise ValueError(f"unknown split {split!r}")
    if pairs.dtype != np.uint8 or pairs.ndim != 4 or pairs.shape[-1] != 4:
        raise ValueError(f"expected (N, H, W, 4) uint8, got {pairs.shape} {pairs.dtype}")
    path = Path(root) / f"{split}.npy"
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(pairs), allow_pickle=False)
    return path


def open_split(root: Path, split: str) -> np.ndarray:
    """Memory-map one split: (N, H, W, 4) uint8, read-only."""
    path = Path(root) / f"{split}.npy"
    if not path.exists():
        raise LuminescenceError(f"dataset split {path} is missing; run the align stage "
                                f"(dvc repro align@{Path(root).name})")
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 4:
        raise LuminescenceError(f"{path} is not a Luminescence dataset split "
                                f"(shape {arr.shape}, {arr.dtype}); rebuild it with the align stage")
    return arr


def write_info(root: Path, info: DatasetInfo) -> None:
    atomic_write_bytes(Path(root) / "dataset.json", info.to_json().encode())


def read_info(root: Path) -> DatasetInfo:
    path = Path(root) / "dataset.json"
    if not path.exists():
        raise LuminescenceError(f"{path} is missing; run the align stage (dvc repro align@{Path(root).name})")
    return DatasetInfo(**json.loads(path.read_text()))
