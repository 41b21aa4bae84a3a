"""Checking and loading pretrained weights files: exact size, sha256, names and shapes.

Shared by the evaluation's feature extractors (eval/weights.py finds the FID Inception
file) and the generators with an ImageNet-pretrained encoder (models/networks/pretrained.py).
Nothing here downloads anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from pipeline.core.errors import LuminescenceError
from pipeline.core.files import atomic_write_bytes, sha256_of_file

log = logging.getLogger(__name__)

SHA_SIDECAR_SUFFIX = ".sha256.json"


class WeightsError(LuminescenceError):
    """A weights file is missing, damaged or not the expected one."""


def cached_sha256(path: Path) -> str:
    """sha256 of `path`, cached in `<path>.sha256.json` keyed by size and mtime.

    A stale or unreadable cache is recomputed; an unwritable directory just skips caching.
    """
    path = Path(path)
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = path.with_name(path.name + SHA_SIDECAR_SUFFIX)
    try:
        cached = json.loads(sidecar.read_text(encoding="utf-8"))
        if isinstance(cached, dict) and all(cached.get(k) == v for k, v in key.items()):
            sha = cached.get("sha256")
            if isinstance(sha, str) and len(sha) == 64:
                return sha
    except (OSError, ValueError):
        pass
    sha = sha256_of_file(path)
    try:
        atomic_write_bytes(sidecar, json.dumps({**key, "sha256": sha}).encode())
    except OSError as exc:
        log.debug("could not cache the sha256 of %s: %s", path, exc)
    return sha


def check_file(path: Path, *, size: int, sha256_prefix: str, cache_hash: bool = True) -> str:
    """Return the file's sha256 if it has exactly `size` bytes and a sha256 starting with
    `sha256_prefix` (a full sha256 checks everything); else WeightsError.

    cache_hash: keep the sha256 in a sidecar file (big files); False for read-only places
    such as an installed package.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    actual = path.stat().st_size
    if actual != size:
        raise WeightsError(f"weights file {path} has {actual:,} bytes, expected {size:,}: "
                           "it is not the expected file or is incomplete; replace it")
    sha = cached_sha256(path) if cache_hash else sha256_of_file(path)
    if not sha.startswith(sha256_prefix):
        raise WeightsError(f"weights file {path} has sha256 {sha[:16]}..., expected one starting "
                           f"with {sha256_prefix[:16]}: it is damaged or a different file; replace it")
    return sha


def load_state_dict(path: Path, expected_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Load a plain state dict with torch.load(weights_only=True) and check names and shapes.

    BatchNorm `num_batches_tracked` counters (training bookkeeping, unused in eval) are
    filled with 0 when a file saved by an older PyTorch lacks them.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors are varied; all mean an unusable file
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} is not a plain state dict of tensors")
    state = dict(state)
    for key in expected_shapes:
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in expected_shapes if k not in state]
    unexpected = [k for k in state if k not in expected_shapes]
    wrong = [k for k, shape in expected_shapes.items()
             if k in state and tuple(state[k].shape) != tuple(shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong)) if keys)
        raise WeightsError(f"weights file {path} does not fit the network ({detail})")
    return state
