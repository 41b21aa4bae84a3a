"""A disk cache of the targets' features: every ablation of a dataset is scored against the
same target tiles, so their features are extracted once (`.cache/features/`, git-ignored)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.files import replacing

FEATURE_CACHE = Path(".cache/features")


def cached_target_extractions(targets: np.ndarray, extractors: list[Any], *, batch_size: int,
                              progress: bool) -> dict[str, Any]:
    """Target features are the same for every ablation of a dataset: extract them once.

    The cache is keyed by the sha256 of the target pixels and of everything that decides the
    extractor's features (`FeatureExtractor.identity`: weights, preprocessing, torch version,
    the source of the modules that compute them), so it never returns features of other
    images, another network or older code.
    """
    from eval.extractors import Extraction

    pixels = hashlib.sha256(np.ascontiguousarray(targets).tobytes()).hexdigest()
    out: dict[str, Any] = {}
    for ex in extractors:
        key = hashlib.sha256(json.dumps({"targets": pixels, "shape": list(targets.shape),
                                         "extractor": ex.identity()}, sort_keys=True).encode())
        path = FEATURE_CACHE / f"{ex.name}-{key.hexdigest()[:32]}.npz"
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as npz:
                    cached = Extraction(features=npz["features"], logits=npz["logits"])
                if cached.features.shape == (len(targets), ex.feature_dim):
                    out[ex.name] = cached
                    continue
            except (OSError, ValueError, KeyError):  # damaged: extract again and overwrite
                pass
        extraction = ex.extract(targets, batch_size, layout="NHWC", progress=progress)
        with replacing(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, features=extraction.features, logits=extraction.logits)
        out[ex.name] = extraction
    return out
