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

Fréchet distance and KID compare predictions with targets; IS is of the predictions.
With fewer than 2 images the distribution metrics are left out (one warning);
the colour metrics are still computed. See docs/metrics.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eval.colour_metrics import delta_e2000, mean_colourfulness, mean_ssim, psnr
from eval.extractors import Extraction, FeatureExtractor, default_extractors
from eval.frechet import feature_statistics, frechet_distance
from eval.inception_score import inception_score
from eval.kid import kernel_inception_distance
from pipeline.core.config import EvaluateConfig
from pipeline.core.errors import LuminescenceError

log = logging.getLogger(__name__)

MetricValue = float | int | str | None

__all__ = ["colour_metrics", "distribution_metrics", "extract_all", "metric_names", "score_predictions",
           "score_with_config"]


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
    """Fréchet distance and KID (predictions vs targets) and IS (predictions) on one extractor."""
    names = metric_names(extractor)
    mu_p, s_p = feature_statistics(predicted.features)
    mu_t, s_t = feature_statistics(target.features)
    kid_mean, kid_std = kernel_inception_distance(predicted.features, target.features, n_subsets=kid_subsets,
                                                  subset_size=kid_subset_size, seed=seed)
    score = inception_score(predicted.logits, splits=is_splits, seed=seed)
    return {
        names["fd"]: frechet_distance(mu_p, s_p, mu_t, s_t),
        names["kid_mean"]: kid_mean,
        names["kid_std"]: kid_std,
        names["is_mean"]: score.mean,
        names["is_std"]: score.std,
        names["is_max"]: score.max,
    }


def colour_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
    """Pixel-level metrics of predictions against targets (see eval/colour_metrics.py)."""
    de_mean, de_median = delta_e2000(predictions, targets)
    return {
        "delta_e2000_mean": de_mean,
        "delta_e2000_median": de_median,
        "psnr": psnr(predictions, targets),
        "ssim": mean_ssim(predictions, targets),
        "colourfulness_output": mean_colourfulness(predictions),
        "colourfulness_target": mean_colourfulness(targets),
    }


def score_predictions(predictions: np.ndarray, targets: np.ndarray, *,
                      extractors: Sequence[FeatureExtractor], batch_size: int = 16, is_splits: int = 10,
                      kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
                      target_extractions: Mapping[str, Extraction] | None = None,
                      progress: bool = True) -> dict[str, MetricValue]:
    """All metrics of uint8 predictions (N, H, W, 3) against their targets (same shape).

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
    result: dict[str, Any] = {"n_images": n, "extractors": ",".join(e.name for e in extractors)}
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
    result.update(colour_metrics(predictions, targets))
    return result


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
