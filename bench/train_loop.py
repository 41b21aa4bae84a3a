"""Benchmark: training speed of one ablation with the default CPU preset, and what the
trainer adds on top of the model's own train_step.

    .venv/bin/python -m bench.train_loop [--ablation p2p_unet_rgb_gray] [--steps 60] [--rounds 3]
                                         [--out docs/benchmarks/training.md]

The dataset is the ablation's own one when the align stage has built it (data/datasets/);
otherwise 256-px tiles are cut from the bundled NYSDOP erie_2021 orthophotos (real imagery,
resampled from 0.30 m to ~0.46 m per pixel; not reprojected onto map tiles, which does not
matter for speed). Every number comes from the same process; the three step timings alternate
in rounds:
- `model only`: a bare loop over the same batches calling `model.train_step`;
- `trainer, deterministic` / `trainer, not deterministic`: `pipeline.training.loop.train`
  (schedulers, logging, progress bar; validation and checkpoints excluded, timed apart);
- one validation pass over the val split and one checkpoint save.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling

from pipeline.core.config import load_params
from pipeline.core.paths import DATASETS_DIR
from pipeline.datasets.batches import PairBatches
from pipeline.datasets.storage import DatasetInfo, open_split, write_info, write_split
from pipeline.training.devices import seed_everything
from pipeline.training.loop import train
from pipeline.training.plan import plan_run
from pipeline.training.validation import validate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "erie_2021"
WORK = ROOT / "bench" / "out" / "train_loop"
SCALE = 0.30 / 0.46  # 1 ft pixels to ~z18 ground resolution


def build_dataset(root: Path, name: str, tile: int = 256) -> Path:
    """Cut 256-px RGB tiles (+ rec601 luma) from the erie_2021 orthophotos; 80/20 train/val."""
    out = root / name
    if (out / "dataset.json").exists():
        return out
    tiles = []
    for jp2 in sorted(SAMPLE.glob("*.jp2")):
        with rasterio.open(jp2) as src:
            h, w = round(src.height * SCALE), round(src.width * SCALE)
            rgb = src.read([1, 2, 3], out_shape=(3, h, w), resampling=Resampling.average)
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                tiles.append(np.moveaxis(rgb[:, y:y + tile, x:x + tile], 0, -1))
    rgb = np.stack(tiles)
    gray = np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    pairs = np.concatenate([gray.astype(np.uint8)[..., None], rgb], axis=-1)
    order = np.random.default_rng(0).permutation(len(pairs))
    n_val = len(pairs) // 5
    write_split(out, "train", pairs[order[n_val:]])
    write_split(out, "val", pairs[order[:n_val]])
    write_info(out, DatasetInfo(name=name, input_kind="gray", input_layer="erie_2021 (bench cut)",
                                target_layer="erie_2021 (bench cut)", synthetic_input=False,
                                tile_size=tile, zoom=18, luma="rec601",
                                counts={"train": len(pairs) - n_val, "val": n_val}))
    return out


def model_only_times(plan, first: int, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds of each step of a bare loop: the model's train_step on the trainer's batches."""
    seed_everything(0)
    model = plan.model_cls(plan.options, torch.device("cpu"))
    batches = PairBatches(open_split(plan.dataset_dir, "train"), batch_size=plan.preset.batch_size,
                          crop_size=plan.preset.crop_size, load_size=plan.preset.load_size,
                          paired=plan.model_cls.paired, seed=0)
    model.train()
    times = []
    for step in range(first, first + steps):
        start = time.perf_counter()
        model.train_step(batches.batch(step))
        times.append(time.perf_counter() - start)
    return times


def trainer_times(plan, steps: int, deterministic: bool) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds of each step inside the trainer's loop (validation and checkpoints excluded)."""
    cfg = plan.config.model_copy(update={"deterministic": deterministic, "val_every": 10**9,
                                         "checkpoint_every": 10**9})
    plan = dataclasses.replace(plan, config=cfg)
    shutil.rmtree(plan.out_dir, ignore_errors=True)
    return train(plan, resume=False, stop_at=steps, progress=False).step_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ablation", default="p2p_unet_rgb_gray")
    parser.add_argument("--steps", type=int, default=60, help="steps per set-up, over all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/training.md"))
    args = parser.parse_args()

    params = load_params()
    dataset = params.ablations[args.ablation].dataset
    if (DATASETS_DIR / dataset / "dataset.json").exists():
        datasets = DATASETS_DIR
        source = (f"the align stage's `{dataset}` dataset ({DATASETS_DIR / dataset}: real NYSDOP "
                  f"map tiles served by the loopback WMTS)")
    else:
        datasets = WORK / "datasets"
        build_dataset(datasets, dataset)
        source = "256-px tiles cut from the bundled NYSDOP erie_2021 orthophotos (real imagery)"
    plan = plan_run(args.ablation, params, out_dir=WORK / "run", datasets_dir=datasets)

    # Rounds alternate the three set-ups so that all see the same machine load; each
    # figure is the median step time over all its rounds (robust to load bursts).
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {"bare": [], "det": [], "nondet": []}
    per_round = max(1, args.steps // args.rounds)
    for r in range(args.rounds):
        times["bare"] += model_only_times(plan, r * per_round, per_round)
        times["det"] += trainer_times(plan, per_round, deterministic=True)
        times["nondet"] += trainer_times(plan, per_round, deterministic=False)
    bare, det, nondet = (statistics.median(times[k]) for k in ("bare", "det", "nondet"))
    mean = {k: statistics.fmean(v) for k, v in times.items()}

    model = plan.model_cls(plan.options, torch.device("cpu"))
    val = open_split(plan.dataset_dir, "val")
    start = time.perf_counter()
    validate(model, val, torch.device("cpu"), samples=[0, 1, 2, 3])
    val_s = time.perf_counter() - start
    ckpt = plan.checkpoint_path
    shutil.rmtree(plan.out_dir, ignore_errors=True)
    start = time.perf_counter()
    train(plan, resume=False, stop_at=1, progress=False)  # one step + one checkpoint
    first_step_and_save = time.perf_counter() - start
    size_mb = ckpt.stat().st_size / 1e6

    total = plan.total_steps
    n_val = -(-total // plan.config.val_every)
    estimate = det * total + n_val * val_s  # median-based: a quiet machine's duration
    loaded = mean["det"] * total + n_val * val_s
    counts = model.parameter_counts()
    lines = [
        "# Training speed benchmark",
        "",
        f"Measured {datetime.date.today()} on {platform.machine()}, {torch.get_num_threads()} CPU threads, "
        f"torch {torch.__version__}, by `python -m bench.train_loop --ablation {args.ablation} "
        f"--steps {args.steps}`.",
        f"Ablation `{args.ablation}` ({plan.model_cls.name}, {plan.options.netG}, ngf {plan.options.ngf}, "
        f"ndf {plan.options.ndf}; parameters "
        + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())
        + f") with the `{plan.preset_name}` preset: batch {plan.preset.batch_size}, "
        f"crop {plan.preset.crop_size} of {plan.preset.load_size}-px tiles. Dataset: {plan.train_tiles} "
        f"train / {plan.val_tiles} val tiles, {source}.",
        f"Median step time over {per_round * args.rounds} steps per set-up, in {args.rounds} alternating "
        f"rounds, all in the same process. Load average (1 min) {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores.",
        "",
        "| what | median s/step | ratio to model only | mean s/step (load bursts included) |",
        "|---|---|---|---|",
        f"| model only (bare loop over the same batches) | {bare:.3f} | 1.00 | {mean['bare']:.3f} |",
        f"| trainer, deterministic (default) | {det:.3f} | {det / bare:.2f} | {mean['det']:.3f} |",
        f"| trainer, not deterministic | {nondet:.3f} | {nondet / bare:.2f} | {mean['nondet']:.3f} |",
        "",
        f"One validation pass ({plan.val_tiles} whole tiles + sample grid): {val_s:.1f} s. "
        f"First step + checkpoint save: {first_step_and_save:.1f} s; checkpoint {size_mb:.1f} MB.",
        f"Estimated full `{plan.preset_name}` run ({total} steps, {n_val} validations): "
        f"{estimate / 60:.1f} min from the median step, {loaded / 60:.1f} min at this run's load "
        "(mean step).",
        "",
        "The machine is shared and noisy: compare the ratios, not the absolute times.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
