"""Evaluate stage: colourise a dataset's held-out test split and score it.

    python -m pipeline.stages.evaluate ABLATION          # a trained model  -> metrics/ABLATION.json
    python -m pipeline.stages.evaluate --baseline NAME   # a baseline       -> metrics/baseline_NAME.json

Baselines go through the same scoring code as the models: `input` scores the grayscale
input itself as the prediction (the floor every colouriser must beat), `layer` scores
the tiles of another harvested layer at the test tiles (e.g. Academia Sinica's own AI
colourisation `taipei/Taipei_aerialphoto_1980_AI`, or the sample's real 2011 colours).
Each metric file records N, the dataset, the extractors with their weights' hashes and
resize methods (see eval.scores and docs/metrics.md), and whether the input is synthetic.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import LuminescenceError
from pipeline.core.paths import DATASETS_DIR, METRICS_DIR, REPORTS_DIR, RUNS_DIR, store_path
from pipeline.datasets.storage import (
    INPUT_CHANNEL,
    TARGET_CHANNELS,
    atomic_write_bytes,
    open_split,
    read_info,
)
from pipeline.results.feature_cache import cached_target_extractions

SAMPLES_DIR = REPORTS_DIR / "samples"
GRID_TILES = 6  # test tiles shown in each sample grid


class EvaluateError(LuminescenceError):
    pass


# --------------------------------------------------------------------------- predictions
def colourise_tiles(model: Any, gray: np.ndarray, *, batch_size: int, device: Any,
                    progress: bool = True) -> np.ndarray:
    """Run a trained model over whole (N, H, W) uint8 gray tiles -> (N, H, W, 3) uint8 RGB."""
    import torch
    from tqdm import tqdm

    out = np.empty((*gray.shape, 3), dtype=np.uint8)
    starts = range(0, len(gray), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="colourising test tiles", unit="batch", disable=not progress,
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


def test_tiles(dataset_dir: Path) -> list[tuple[int, int, int]]:
    """z/x/y of each row of test.npy, in order, from the dataset's manifest."""
    rows = []
    with open(dataset_dir / "manifest.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "test":
                rows.append((int(row["index"]), int(row["z"]), int(row["x"]), int(row["y"])))
    rows.sort()
    return [(z, x, y) for _, z, x, y in rows]


def layer_predictions(store_path: Path, tiles: list[tuple[int, int, int]]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Tiles of another layer at the test tiles: (predictions, mask of usable rows).

    Rows whose tile is missing, empty or has transparent pixels are left out of scoring.
    """
    from pipeline.geo.tiles import TileId
    from pipeline.geo.tilestore import TileStore, decode_tile

    if not store_path.exists():
        raise EvaluateError(f"baseline layer store {store_path} is missing; run its fetch stage "
                            f"(dvc repro fetch@{store_path.stem})")
    preds = np.zeros((len(tiles), 256, 256, 3), dtype=np.uint8)
    usable = np.zeros(len(tiles), dtype=bool)
    with TileStore(store_path, readonly=True) as store:
        if tiles and store.zoom != tiles[0][0]:
            raise EvaluateError(
                f"baseline layer store {store_path} is at zoom {store.zoom} but the dataset's test "
                f"tiles are at zoom {tiles[0][0]}; harvest the baseline layer at zoom {tiles[0][0]}")
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


# --------------------------------------------------------------------------- outputs
def sample_grid(inputs: np.ndarray, outputs: np.ndarray, targets: np.ndarray, *, title: str,
                synthetic: bool, path: Path) -> Path:
    """A PNG of a few test tiles: input | output | target columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(GRID_TILES, len(inputs))
    idx = np.linspace(0, len(inputs) - 1, n).round().astype(int) if n else []
    fig, axes = plt.subplots(max(n, 1), 3, figsize=(7.5, 2.5 * max(n, 1) + 0.6), squeeze=False)
    heads = ["input (SYNTHETIC historic)" if synthetic else "input", "output", "target (modern)"]
    for row, i in enumerate(idx):
        for col, img in enumerate((inputs[i], outputs[i], targets[i])):
            ax = axes[row][col]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(heads[col], fontsize=9)
    fig.suptitle(title, fontsize=10, color="firebrick" if synthetic else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_metrics(path: Path, record: dict[str, Any]) -> Path:
    atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=False) + "\n").encode())
    return path


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_line(name: str, record: dict[str, Any]) -> str:
    m = record["metrics"]
    parts = [f"{k} {_fmt(m[k])}" for k in ("fid", "fd_efficientnet_lite0", "kid_efficientnet_lite0_mean",
                                           "delta_e2000_mean", "ssim") if k in m]
    return f"evaluated {name} on {record['n']} test tiles of {record['dataset']}: " + ", ".join(parts)


# --------------------------------------------------------------------------- the stage
def _test_data(dataset: str) -> tuple[Path, Any, np.ndarray, np.ndarray]:
    root = DATASETS_DIR / dataset
    info = read_info(root)
    test = open_split(root, "test")
    if len(test) < 2:
        raise EvaluateError(f"dataset '{dataset}' has {len(test)} test tile(s); at least 2 are needed "
                            f"to score distributions: enlarge the AOI or raise align.splits.test")
    gray = np.ascontiguousarray(test[..., INPUT_CHANNEL])
    targets = np.ascontiguousarray(test[..., TARGET_CHANNELS])
    return root, info, gray, targets


def _record(kind: str, name: str, dataset: str, info: Any, n: int, metrics: dict[str, Any],
            extra: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "dataset": dataset,
        "input": info.input_kind,
        "input_layer": info.input_layer,
        "target_layer": info.target_layer,
        "synthetic_input": info.synthetic_input,
        "n": n,
        "split": "test",
        **extra,
        "metrics": metrics,
    }
    if info.synthetic_input:
        record["note"] = ("input is SYNTHETIC: a film emulation of a modern photo, not a real "
                          "historic photograph")
    return record


def evaluate(name: str, params: Any, *, baseline: bool = False, progress: bool = True) -> dict[str, Any]:
    """Score one ablation (or baseline) and write its metric file and sample grid."""
    from eval.extractors import default_extractors
    from eval.scores import score_with_config
    from pipeline.core.config import lookup

    cfg = params.evaluate
    if baseline:
        spec = lookup(params.baselines, name, "baseline", "baselines")
    else:
        spec = lookup(params.ablations, name, "ablation", "ablations")
    dataset = spec.dataset
    root, info, gray, targets = _test_data(dataset)

    extra: dict[str, Any]
    if baseline and spec.kind == "input":
        preds, usable = input_as_output(gray), np.ones(len(gray), dtype=bool)
        extra = {"baseline": "input as output (the grayscale input scored as the colourisation)"}
    elif baseline:
        store = store_path(spec.layer)
        preds, usable = layer_predictions(store, test_tiles(root))
        if usable.sum() < 2:
            raise EvaluateError(f"baseline layer {spec.layer} covers {int(usable.sum())} of the "
                                f"{len(gray)} test tiles of '{dataset}'; at least 2 are needed")
        extra = {"baseline": f"tiles of layer {spec.layer}", "baseline_store": str(store),
                 "test_tiles_covered": int(usable.sum()), "test_tiles": len(gray)}
    else:
        from pipeline.training.checkpoint import load_model
        from pipeline.training.devices import pick_device

        model_file = RUNS_DIR / name / "model.pt"
        if not model_file.exists():
            raise EvaluateError(f"{model_file} is missing; train the ablation first "
                                f"(dvc repro train@{name})")
        device = pick_device(params.train.device if params.train else "auto")
        model = load_model(model_file, device)
        preds = colourise_tiles(model, gray, batch_size=cfg.batch_size, device=device,
                                progress=progress)
        usable = np.ones(len(gray), dtype=bool)
        options = json.loads((RUNS_DIR / name / "options.json").read_text()) \
            if (RUNS_DIR / name / "options.json").exists() else {}
        extra = {"model": spec.model, "preset": params.train.preset if params.train else None,
                 "steps": options.get("steps") or options.get("total_steps")}

    preds, gray_u, targets_u = preds[usable], gray[usable], targets[usable]
    extractors = default_extractors(cfg.inception_weights, allow_download=cfg.allow_download)
    target_ex = None
    if usable.all():
        target_ex = cached_target_extractions(targets_u, extractors, batch_size=cfg.batch_size,
                                              progress=progress)
    metrics = score_with_config(preds, targets_u, cfg, extractors=extractors,
                                target_extractions=target_ex, progress=progress)
    kind = "baseline" if baseline else "model"
    record = _record(kind, name, dataset, info, len(preds), metrics, extra)
    stem = f"baseline_{name}" if baseline else name
    write_metrics(METRICS_DIR / f"{stem}.json", record)
    title = f"{stem} on {dataset} (test split)"
    sample_grid(gray_u, preds, targets_u, title=title, synthetic=info.synthetic_input,
                path=SAMPLES_DIR / f"{stem}.png")
    return record
