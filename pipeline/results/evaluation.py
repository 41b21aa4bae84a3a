"""Evaluate stage: colourise a dataset's test split and its held-out area, and score them.

    python -m pipeline.stages.evaluate ABLATION          # a trained model
    python -m pipeline.stages.evaluate --baseline NAME   # a baseline

Baselines go through the same scoring code as the models: `input` scores the grayscale
input itself as the prediction (the floor every colouriser must beat), `lut` and `transfer`
colour it from the train split's statistics alone (pipeline/results/baselines.py), `layer`
scores the tiles of another harvested layer at the same tiles (e.g. Academia Sinica's own
AI colourisation, or the sample's real 2011 colours).

Each scored set of tiles ("area": the test split, and the held-out area when the dataset
has one) gets every metric of eval.scores with a seeded tile-bootstrap interval. Outputs:
- metrics/<name>.json: the headline numbers only (`HEADLINE`, `heldout_` for the held-out
  area), so `dvc metrics show` / `diff` read as one table;
- reports/evaluation/<name>.json: everything else the report needs: every metric, its
  interval, N, the tiles' hash, the extractors' provenance (package, file, hashes),
  the dataset and layers, the synthetic flag, the bootstrap settings, latent-draw spreads;
- reports/evaluation/<name>.npz: the bootstrap replicates (for paired differences);
- reports/samples/<name>.png: a few tiles of each area, input | output | target.
Every random draw (BicycleGAN's latent codes, KID subsets, IS shuffles, the bootstrap) is
seeded from `evaluate.seed`, so re-running the stage on the same model gives the same numbers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import LuminescenceError
from pipeline.core.paths import DATASETS_DIR, METRICS_DIR, REPORTS_DIR, RUNS_DIR, store_path
from pipeline.datasets.storage import (
    HELDOUT,
    INPUT_CHANNEL,
    TARGET_CHANNELS,
    atomic_write_bytes,
    open_split,
    read_info,
)
from pipeline.results.feature_cache import cached_target_extractions

SAMPLES_DIR = REPORTS_DIR / "samples"
DETAILS_DIR = REPORTS_DIR / "evaluation"
GRID_TILES = 4  # tiles of each area shown in the sample grid
AREAS = ("test", HELDOUT)
HELDOUT_PREFIX = "heldout_"
# metrics/<name>.json: the numbers a user compares (file key, key in eval.scores' results).
HEADLINE = (("fid", "fid"), ("kid_mean", "kid_mean"), ("kid_std", "kid_std"),
            ("delta_e2000", "delta_e2000_mean"), ("psnr", "psnr"), ("ssim", "ssim"),
            ("colourfulness", "colourfulness_output"))
HELDOUT_HEADLINE = ("fid", "kid_mean", "delta_e2000", "psnr", "ssim", "colourfulness")


class EvaluateError(LuminescenceError):
    pass


# --------------------------------------------------------------------------- areas
@dataclass
class Area:
    """One set of tiles to score: the test split, or the held-out area."""

    key: str  # "test" or "heldout"
    gray: np.ndarray  # (N, H, W) uint8 model input
    targets: np.ndarray  # (N, H, W, 3) uint8 modern colour
    tiles: list[tuple[int, int, int]]  # z/x/y of each row
    synthetic: bool
    label: str


def split_tiles(dataset_dir: Path, split: str) -> list[tuple[int, int, int]]:
    """z/x/y of each row of <split>.npy, in order, from the dataset's manifest."""
    rows = []
    with open(dataset_dir / "manifest.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == split:
                rows.append((int(row["index"]), int(row["z"]), int(row["x"]), int(row["y"])))
    rows.sort()
    return [(z, x, y) for _, z, x, y in rows]


def load_areas(dataset: str) -> tuple[Path, Any, list[Area]]:
    root = DATASETS_DIR / dataset
    info = read_info(root)
    areas = []
    for key in AREAS:
        if key == HELDOUT and not info.heldout:
            continue
        pairs = open_split(root, key)
        if len(pairs) < 2:
            raise EvaluateError(f"dataset '{dataset}' has {len(pairs)} {key} tile(s); at least 2 are needed "
                                f"to score distributions: enlarge the AOI or raise align.splits.test")
        if key == "test":
            synthetic = info.synthetic_input
            label = f"test split of {dataset} ({info.target_layer}, z{info.zoom})"
        else:
            ho = info.heldout
            if ho is None:  # unreachable: the held-out area is skipped above when the dataset has none
                raise EvaluateError(f"dataset '{dataset}' has no held-out area in its dataset.json")
            synthetic = bool(ho.get("synthetic_input"))
            label = (f"held-out area {ho.get('aoi', '?')} ({ho.get('target_layer', '?')}, "
                     f"z{ho.get('zoom', '?')})")
        areas.append(Area(key, np.ascontiguousarray(pairs[..., INPUT_CHANNEL]),
                          np.ascontiguousarray(pairs[..., TARGET_CHANNELS]), split_tiles(root, key),
                          synthetic, label))
    return root, info, areas


def tiles_hash(tiles: list[tuple[int, int, int]]) -> str:
    """Identity of a scored tile set: two results are paired only when these are equal."""
    return hashlib.sha256(json.dumps(tiles).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- predictions
def colourise_tiles(model: Any, gray: np.ndarray, *, batch_size: int, device: Any,
                    progress: bool = True) -> np.ndarray:
    """Run a trained model over whole (N, H, W) uint8 gray tiles -> (N, H, W, 3) uint8 RGB."""
    import torch
    from tqdm import tqdm

    out = np.empty((*gray.shape, 3), dtype=np.uint8)
    starts = range(0, len(gray), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="colourising tiles", unit="batch", disable=not progress,
                          leave=False):
            chunk = torch.from_numpy(np.ascontiguousarray(gray[start:start + batch_size]))
            a = chunk.unsqueeze(1).float().div_(255.0).to(device)
            rgb = model.colourise(a).clamp_(0.0, 1.0)
            out[start:start + len(chunk)] = (rgb.mul(255.0).round_().to(torch.uint8)
                                             .permute(0, 2, 3, 1).cpu().numpy())
    return out


def input_as_output(gray: np.ndarray) -> np.ndarray:
    """The floor: the grayscale input itself, as an RGB prediction."""
    return np.repeat(gray[..., None], 3, axis=-1)


def layer_predictions(store_path: Path, tiles: list[tuple[int, int, int]]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Tiles of another layer at the given tiles: (predictions, mask of usable rows).

    Rows whose tile is missing, empty or has transparent pixels are left out of scoring.
    """
    from pipeline.geo.pixels import decode_tile
    from pipeline.geo.tiles import TileId
    from pipeline.geo.tilestore import TileStore

    if not store_path.exists():
        raise EvaluateError(f"baseline layer store {store_path} is missing; run its fetch stage "
                            f"(dvc repro fetch@{store_path.stem})")
    preds = np.zeros((len(tiles), 256, 256, 3), dtype=np.uint8)
    usable = np.zeros(len(tiles), dtype=bool)
    with TileStore(store_path, readonly=True) as store:
        if tiles and store.zoom != tiles[0][0]:
            raise EvaluateError(
                f"baseline layer store {store_path} is at zoom {store.zoom} but the tiles to score "
                f"are at zoom {tiles[0][0]}; harvest the baseline layer at zoom {tiles[0][0]}")
        for i, (z, x, y) in enumerate(tiles):
            data = store.get(TileId(z, x, y))
            if data is None:
                continue
            rgba = decode_tile(data)
            if (rgba[..., 3] < 255).any():
                continue
            preds[i] = rgba[..., :3]
            usable[i] = True
    return preds, usable


# A predictor turns an area into prediction draws (one, or several for a latent-code model)
# and the mask of tiles it can score; None: it has nothing for this area.
Predictor = Callable[[Area], tuple[list[np.ndarray], np.ndarray] | None]


def model_predictor(name: str, params: Any, progress: bool,
                    model_file: Path | None = None) -> tuple[Predictor, dict[str, Any]]:
    """An ablation's model (runs/<name>/model.pt), or the given model file."""
    import torch

    from models.networks.norm_stats import gray_batches, instance_norms
    from pipeline.training.checkpoint import load_model
    from pipeline.training.devices import pick_device

    cfg = params.evaluate
    given = model_file is not None
    if model_file is not None:
        if not model_file.exists():
            raise EvaluateError(f"{model_file} is missing (params.yaml `trained_models.{name}.file`); "
                                "for the release model, check out release/ from git or run `make release`")
    else:
        model_file = RUNS_DIR / name / "model.pt"
        if not model_file.exists():
            raise EvaluateError(f"{model_file} is missing; train the ablation first (dvc repro train@{name})")
    device = pick_device(params.train.device if params.train else "auto")
    model = load_model(model_file, device)
    draws = cfg.z_draws if model.samples_latent else 1

    def predict(area: Area) -> tuple[list[np.ndarray], np.ndarray]:
        if cfg.norm_stats == "area":  # the area's own inputs, never its colours (as colourise does)
            model.fit_norm_stats(gray_batches(area.gray, cfg.norm_stats_windows, cfg.batch_size))
        outputs = []
        for k in range(draws):
            torch.manual_seed(cfg.seed + k)  # draw k's latent codes: the same on every run
            outputs.append(colourise_tiles(model, area.gray, batch_size=cfg.batch_size, device=device,
                                           progress=progress))
        return outputs, np.ones(len(area.gray), dtype=bool)

    options_file = model_file.parent / "options.json"
    options = json.loads(options_file.read_text()) if options_file.exists() else {}
    extra = {"model": model.name, "preset": params.train.preset if params.train and not given else None,
             "steps": options.get("steps") or options.get("total_steps"), "model_file": str(model_file)}
    if given:  # not an ablation: its own options (e.g. the release model's options.json)
        extra["options"] = options.get("options", {})
    if draws > 1:
        extra["latent_draws"] = draws
    if cfg.norm_stats == "area" and instance_norms(model.nets[model.colourising_net]):
        extra["norm_stats"] = ("area: each scored area's own statistics, from up to "
                               f"{cfg.norm_stats_windows} of its gray tiles")
    return predict, extra


def baseline_predictor(spec: Any, root: Path) -> tuple[Predictor, dict[str, Any]]:
    if spec.kind == "input":
        def predict_input(area: Area) -> tuple[list[np.ndarray], np.ndarray]:
            return [input_as_output(area.gray)], np.ones(len(area.gray), dtype=bool)
        return predict_input, {"baseline": "input as output (the gray input scored as the colourisation)"}
    if spec.kind in ("lut", "transfer"):
        from pipeline.results.baselines import fit_lightness_lookup, fit_transfer

        train = open_split(root, "train")
        gray, targets = train[..., INPUT_CHANNEL], train[..., TARGET_CHANNELS]
        table = (fit_lightness_lookup if spec.kind == "lut" else fit_transfer)(gray, targets)

        def predict_table(area: Area) -> tuple[list[np.ndarray], np.ndarray]:
            return [table.predict(area.gray)], np.ones(len(area.gray), dtype=bool)
        return predict_table, {"baseline": f"{spec.kind}: {table.description}"}

    layers = {"test": spec.layer, HELDOUT: spec.heldout_layer}

    def predict_layer(area: Area) -> tuple[list[np.ndarray], np.ndarray] | None:
        layer = layers[area.key]
        if layer is None:
            return None
        preds, usable = layer_predictions(store_path(layer), area.tiles)
        return [preds], usable
    return predict_layer, {"baseline": f"tiles of layer {spec.layer}"
                           + (f" (held-out area: {spec.heldout_layer})" if spec.heldout_layer else "")}


# --------------------------------------------------------------------------- scoring
def _mean_over_draws(draws: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Numbers averaged over latent draws (other values from the first), and each draw's numbers."""
    if len(draws) == 1:
        return dict(draws[0]), {}
    values: dict[str, Any] = {}
    per_draw: dict[str, list[float]] = {}
    for key, first in draws[0].items():
        numbers = [v for v in (d.get(key) for d in draws) if isinstance(v, float)]
        if isinstance(first, float) and len(numbers) == len(draws):
            values[key] = float(np.mean(numbers))
            per_draw[key] = [float(v) for v in numbers]
        else:
            values[key] = first
    return values, per_draw


def score_area(area: Area, predictor: Predictor, extractors: dict[str, list[Any]], cfg: Any, *,
               progress: bool) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray] | None:
    """An area's record (values, intervals, N, tiles, draws), its replicates, and one prediction set."""
    from eval import bootstrap
    from eval.scores import INTERVAL_METHODS, score_set

    made = predictor(area)
    if made is None:
        return None
    outputs, usable = made
    n = int(usable.sum())
    if n < 2:
        raise EvaluateError(f"the predictions cover {n} of the {len(usable)} tiles of the {area.label}; "
                            f"at least 2 are needed")
    targets = area.targets[usable]
    tiles = [t for t, u in zip(area.tiles, usable, strict=True) if u]
    exs = extractors[area.key]
    target_ex = cached_target_extractions(targets, exs, batch_size=cfg.batch_size, progress=progress)
    idx = bootstrap.indices(n, cfg.bootstrap_samples, cfg.seed)
    scored = [score_set(out[usable], targets, extractors=exs, batch_size=cfg.batch_size,
                        is_splits=cfg.is_splits, kid_subsets=cfg.kid_subsets,
                        kid_subset_size=cfg.kid_subset_size, seed=cfg.seed, target_extractions=target_ex,
                        bootstrap_indices=idx, progress=progress) for out in outputs]
    values, per_draw = _mean_over_draws([s.values for s in scored])
    replicates = {k: np.mean([s.replicates[k] for s in scored], axis=0) for k in scored[0].replicates}
    intervals: dict[str, list[float] | None] = {}
    for key, reps in replicates.items():
        point = values.get(key)
        ci = bootstrap.interval(point, reps, confidence=cfg.confidence, method=INTERVAL_METHODS[key]) \
            if isinstance(point, float) and bool(np.all(np.isfinite(reps))) else None
        intervals[key] = [ci.low, ci.high] if ci else None
    record: dict[str, Any] = {
        "label": area.label, "n": n, "tiles": len(area.tiles), "tiles_sha256": tiles_hash(tiles),
        "synthetic_input": area.synthetic, "values": values, "intervals": intervals,
    }
    if per_draw:
        record["latent_draws"] = {"n": len(outputs), "values": per_draw,
                                  "std": {k: float(np.std(v)) for k, v in per_draw.items()}}
    return record, replicates, outputs[0]


def headline(areas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The metric file: fid, kid_mean, kid_std, delta_e2000, psnr, ssim, colourfulness and
    their held-out versions (`heldout_`); numbers only."""
    out: dict[str, Any] = {}
    for area, prefix, keys in (("test", "", [k for k, _ in HEADLINE]),
                               (HELDOUT, HELDOUT_PREFIX, list(HELDOUT_HEADLINE))):
        if area not in areas:
            continue
        values = areas[area]["values"]
        for file_key, score_key in HEADLINE:
            if file_key in keys and values.get(score_key) is not None:
                out[prefix + file_key] = values[score_key]
    return out


# --------------------------------------------------------------------------- outputs
def sample_grid(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], *, title: str,
                synthetic: bool, path: Path) -> Path:
    """A PNG of a few tiles per area: input | output | target, a label on each row."""
    from PIL import Image, ImageDraw

    thumb, label_h, head_h = 128, 14, 22
    width = 3 * thumb + 8
    img = Image.new("RGB", (width, head_h + len(rows) * (thumb + label_h)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), title + ("  [SYNTHETIC input]" if synthetic else ""),
              fill=(178, 34, 34) if synthetic else (0, 0, 0))
    for r, (label, gray, out, target) in enumerate(rows):
        y = head_h + r * (thumb + label_h)
        draw.text((4, y), f"{label}: input | output | target", fill=(60, 60, 60))
        for c, tile in enumerate((np.repeat(gray[..., None], 3, axis=-1), out, target)):
            img.paste(Image.fromarray(tile).resize((thumb, thumb), Image.Resampling.BILINEAR),
                      (c * (thumb + 4), y + label_h))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_json(path: Path, record: dict[str, Any]) -> Path:
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
    return path


def write_replicates(path: Path, replicates: dict[str, dict[str, np.ndarray]]) -> Path:
    buf = io.BytesIO()
    # Typed Any: mypy matches a ** dict against every keyword of numpy's stub, allow_pickle: bool too.
    arrays: dict[str, Any] = {f"{area}/{key}": reps.astype(np.float64)
                              for area, by_key in replicates.items() for key, reps in by_key.items()}
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_line(name: str, record: dict[str, Any]) -> str:
    parts = []
    for area, data in record["areas"].items():
        v = data["values"]
        shown = ", ".join(f"{k} {_fmt(v.get(k))}" for k in ("fid", "kid_mean", "delta_e2000_mean", "ssim"))
        parts.append(f"{area} (N {data['n']}): {shown}")
    return f"evaluated {name} on {record['dataset']}: " + "; ".join(parts)


# --------------------------------------------------------------------------- the stage
def evaluate(name: str, params: Any, *, baseline: bool = False, trained: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Score one ablation (or baseline, or with `trained` a model of `trained_models` such as the
    release model) on its dataset's test split and held-out area; write its metric file,
    details, replicates and sample grid. Returns the details record."""
    import torch

    from eval.extractors import EfficientNetLite0Extractor, FeatureExtractor, fid_inception
    from pipeline.core.config import lookup

    cfg = params.evaluate
    torch.manual_seed(cfg.seed)
    if baseline:
        spec = lookup(params.baselines, name, "baseline", "baselines")
    elif trained:
        spec = lookup(params.trained_models, name, "trained model", "trained_models")
    else:
        spec = lookup(params.ablations, name, "ablation", "ablations")
    root, info, areas = load_areas(spec.dataset)
    if baseline:
        predictor, extra = baseline_predictor(spec, root)
    else:
        predictor, extra = model_predictor(name, params, progress,
                                           model_file=Path(spec.file) if trained else None)

    # FID/KID (the reference Inception) everywhere; EfficientNet-Lite0 (IS-EffNet where the
    # Inception has no classifier, FD/KID-EffNet) on the test split only, to keep the stage short.
    inception = fid_inception(cfg.inception_weights, allow_download=cfg.allow_download)
    lite0 = EfficientNetLite0Extractor()
    extractors: dict[str, list[FeatureExtractor]] = {"test": [inception, lite0], HELDOUT: [inception]}

    results: dict[str, dict[str, Any]] = {}
    replicates: dict[str, dict[str, np.ndarray]] = {}
    grid_rows = []
    for area in areas:
        scored = score_area(area, predictor, extractors, cfg, progress=progress)
        if scored is None:
            continue
        results[area.key], replicates[area.key], preds = scored
        picks = np.linspace(0, len(area.gray) - 1, min(GRID_TILES, len(area.gray))).round().astype(int)
        label = "test" if area.key == "test" else "held-out" + (" (SYNTHETIC)" if area.synthetic else "")
        grid_rows += [(label, area.gray[i], preds[i], area.targets[i]) for i in picks]

    stem = f"baseline_{name}" if baseline else f"model_{name}" if trained else name
    record: dict[str, Any] = {
        "kind": "baseline" if baseline else "trained model" if trained else "model",
        "name": name,
        "dataset": spec.dataset,
        "input": info.input_kind,
        "input_layer": info.input_layer,
        "target_layer": info.target_layer,
        "synthetic_input": info.synthetic_input,
        **extra,
        "extractors": {e.name: {**e.provenance, "weights_sha256": e.weights_sha256, "resize": e.resize,
                                "areas": [a for a, exs in extractors.items() if e in exs]}
                       for e in (inception, lite0)},
        "inception_score": "with the 1008-way classifier" if inception.num_classes else
        "not computed: the FID Inception trunk has no classifier (pytorch-fid's file adds it; see README)",
        "bootstrap": {"samples": cfg.bootstrap_samples, "seed": cfg.seed, "confidence": cfg.confidence,
                      "unit": "tile (prediction and target resampled together)",
                      "methods": _interval_methods()},
        "heldout": info.heldout,
        "areas": results,
    }
    if info.synthetic_input:
        record["note"] = ("input is SYNTHETIC: a film emulation of a modern photo, not a real "
                          "historic photograph")
    write_json(METRICS_DIR / f"{stem}.json", headline(results))
    write_json(DETAILS_DIR / f"{stem}.json", record)
    write_replicates(DETAILS_DIR / f"{stem}.npz", replicates)
    sample_grid(grid_rows, title=f"{stem} on {spec.dataset}", synthetic=info.synthetic_input,
                path=SAMPLES_DIR / f"{stem}.png")
    return record


def _interval_methods() -> dict[str, str]:
    from eval.scores import INTERVAL_METHODS

    return dict(INTERVAL_METHODS)
