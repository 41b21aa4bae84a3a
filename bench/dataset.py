"""Benchmark: align-stage build time for 5,000 pairs and training-loader throughput.

    python -m bench.dataset            # stores are generated once into bench/out/dataset/
    python -m bench.dataset --help

Stores (cached under --out; --regenerate rebuilds them):
- target: REAL NYSDOP 2011 colour orthophotos (data/sample/erie_2011, 0.61 m) rendered with
  rasterio into EPSG:3857 z20 tiles (0.11 m/px nominal: upsampled about 5.5x, so blurrier
  than true z20 imagery; the content is real). A 125 x 40 tile rectangle: 5,000 tiles.
- input: the same imagery, converted to grey (Rec. 601) and rendered with a SYNTHETIC
  misregistration of (+2.5, -1.5) px, stored with synthetic=true. It is a stand-in for a
  historic layer so the registration path runs on every pair; it is not a historic photo.

Measured in one run: building the `gray` dataset (with and without the pix2pix/unpaired
PNG layouts) and the `historic` dataset (registration + resampled shift per pair); then
samples/s of pipeline.datasets.batches.PairBatches on the memory-mapped train.npy at crop 256
and 128 (load 256, batch 1) against a baseline that decodes the aligned A|B PNGs with PIL
at every step (the reference pix2pix loader's approach), with the same crops and flips.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import mercantile
import numpy as np
import torch
from PIL import Image

from pipeline.core.config import parse_params
from pipeline.datasets.batches import PairBatches
from pipeline.datasets.build import build_dataset
from pipeline.datasets.storage import open_split
from pipeline.geo.pixels import luma
from pipeline.geo.tilestore import TileRecord, TileStatus, TileStore
from tests.imagery import cut_tiles, make_store, png_bytes, render_mosaic

ZOOM = 20
SHIFT = (2.5, -1.5)
TRAINER_SAMPLES_PER_S = 2.0  # pix2pix unet_256 at 256 px: ~0.5 s per step on this machine (batch 1)


def _origin() -> tuple[int, int]:
    # Inside the erie_2011 footprint (-78.94842 42.59037 -78.90379 42.60148), off its edges.
    ul = mercantile.tile(-78.94842, 42.60148, ZOOM)
    return ul.x + 3, ul.y + 2


def generate_stores(tiles_dir: Path, n_tiles: int, cols: int = 125) -> None:
    """Render the target and the synthetic-input store, a strip of tile rows at a time."""
    rows = -(-n_tiles // cols)
    x0, y0 = _origin()
    tiles_dir.mkdir(parents=True, exist_ok=True)
    target_path, input_path = tiles_dir / "bench-target.mbtiles", tiles_dir / "bench-input.mbtiles"
    for p in (target_path, input_path):
        p.unlink(missing_ok=True)
    make_store(target_path, [], layer="erie_2011", zoom=ZOOM, aoi="bench", complete=False)
    make_store(input_path, [], layer="erie_2011_gray_shifted", zoom=ZOOM, aoi="bench", synthetic=True,
               complete=False, layer_title="SYNTHETIC: erie_2011 grey, shifted (+2.5, -1.5) px")
    render = render_mosaic.__wrapped__  # no caching of these large strips
    done = 0
    strip = 4
    for r in range(0, rows, strip):
        n = min(strip, rows - r)
        t0 = time.perf_counter()
        colour = render("erie_2011", ZOOM, x0, y0 + r, cols, n)
        shifted = render("erie_2011", ZOOM, x0, y0 + r, cols, n, SHIFT)
        target_records, input_records = [], []
        moved_tiles = cut_tiles(shifted, ZOOM, x0, y0 + r)
        for tile, rgba in sorted(cut_tiles(colour, ZOOM, x0, y0 + r).items()):
            moved = moved_tiles[tile]
            if done >= n_tiles:
                break
            done += 1
            target_records.append(TileRecord(tile, TileStatus.OK, png_bytes(rgba)))
            input_records.append(TileRecord(tile, TileStatus.OK, png_bytes(luma(moved[..., :3]))))
        with TileStore(target_path) as s:
            s.put_many(target_records)
        with TileStore(input_path) as s:
            s.put_many(input_records)
        print(f"  rendered rows {r}-{r + n - 1}: {done}/{n_tiles} tiles ({time.perf_counter() - t0:.1f} s)")
    for p in (target_path, input_path):
        with TileStore(p) as s:
            s.mark_complete()


class PngPairs:
    """Baseline loader: decode the aligned A|B PNG with PIL at each step, then crop and flip."""

    def __init__(self, files: list[Path], *, crop_size: int, load_size: int, seed: int) -> None:
        self.files = files
        self.crop_size, self.load_size, self.seed = crop_size, load_size, seed

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        path = self.files[int(rng.integers(len(self.files)))]
        with Image.open(path) as img:
            ab = img.convert("RGB")
        w, h = ab.size
        a = ab.crop((0, 0, w // 2, h)).convert("L")
        b = ab.crop((w // 2, 0, w, h))
        if self.load_size != h:
            a = a.resize((self.load_size, self.load_size), Image.BICUBIC)
            b = b.resize((self.load_size, self.load_size), Image.BICUBIC)
        top, left = rng.integers(0, self.load_size - self.crop_size + 1, size=2)
        box = (int(left), int(top), int(left) + self.crop_size, int(top) + self.crop_size)
        ta = torch.from_numpy(np.asarray(a.crop(box))).float().div_(255).unsqueeze(0)
        tb = torch.from_numpy(np.asarray(b.crop(box))).float().div_(255).permute(2, 0, 1)
        if rng.random() < 0.5:
            ta, tb = ta.flip(-1), tb.flip(-1)
        return {"A": ta.unsqueeze(0), "B": tb.unsqueeze(0)}


def samples_per_s(loader: PairBatches | PngPairs, steps: int, batch_size: int = 1) -> float:
    for step in range(5):  # warm-up
        loader.batch(step)
    t0 = time.perf_counter()
    for step in range(steps):
        loader.batch(1000 + step)
    return steps * batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dataset", description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=5000, help="tile pairs to build (default 5000)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/dataset"), help="work folder")
    parser.add_argument("--steps", type=int, default=400, help="loader steps per measurement")
    parser.add_argument("--regenerate", action="store_true", help="render the stores again")
    parser.add_argument("--skip-build", action="store_true", help="reuse the datasets of a previous run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    tiles_dir, ds_dir = args.out / "tiles", args.out / "datasets"
    results: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "command": "python -m bench.dataset " + " ".join(argv or []), "tiles": args.tiles}
    stamp = tiles_dir / f"stores-{args.tiles}.done"
    if args.regenerate or not stamp.exists():
        print(f"rendering {args.tiles} z{ZOOM} tiles x 2 stores from data/sample/erie_2011 ...")
        t0 = time.perf_counter()
        generate_stores(tiles_dir, args.tiles)
        stamp.write_text("ok")
        results["store_generation_s"] = time.perf_counter() - t0

    fetch = {k: {"source": "sample", "layer": k, "aoi": "bench", "zoom": ZOOM}
             for k in ("bench-target", "bench-input")}
    base = {"sources": {"sample": {"kind": "sample"}}, "aois": {"bench": {"path": "aoi/bench.shp"}},
            "fetch": fetch,
            "datasets": {"gray": {"input": "gray", "target": "bench-target"},
                         "historic": {"input": "historic", "historic": "bench-input",
                                      "target": "bench-target"}}}
    if not args.skip_build:
        builds = {}
        for name, export in (("gray", False), ("gray", True), ("historic", True)):
            # No guard band, so all 5,000 tiles become pairs (the band only skips tiles early).
            params = parse_params({**base, "align": {"export_layouts": export, "splits": {"guard_band": 0}}})
            t0 = time.perf_counter()
            summary = build_dataset(name, params, tiles_dir=tiles_dir, out_dir=ds_dir)
            seconds = time.perf_counter() - t0
            key = f"{name}{'' if export else '_no_layouts'}"
            builds[key] = {"seconds": seconds, "pairs": summary["pairs"],
                           "pairs_per_s": summary["pairs"] / seconds, "counts": summary["counts"],
                           "dropped": summary["dropped"], "offsets": summary["offsets"]}
            print(f"  build {key}: {seconds:.1f} s for {summary['pairs']} pairs")
        results["build"] = builds

    train = open_split(ds_dir / "gray", "train")
    files = sorted((ds_dir / "gray" / "aligned" / "train").glob("*.png"))
    loaders = {}
    for crop in (256, 128):
        fast = PairBatches(train, batch_size=1, crop_size=crop, load_size=256, paired=True, seed=0)
        slow = PngPairs(files, crop_size=crop, load_size=256, seed=0)
        fast_sps = samples_per_s(fast, args.steps)
        slow_sps = samples_per_s(slow, args.steps)
        loaders[f"crop{crop}"] = {"pair_batches_samples_per_s": fast_sps, "png_pil_samples_per_s": slow_sps,
                                  "speedup": fast_sps / slow_sps,
                                  "x_trainer_consumption": fast_sps / TRAINER_SAMPLES_PER_S}
        print(f"  loader crop {crop}: PairBatches {fast_sps:.0f} samples/s, PIL PNG {slow_sps:.0f} samples/s "
              f"({fast_sps / slow_sps:.1f}x); {fast_sps / TRAINER_SAMPLES_PER_S:.0f}x what a "
              f"unet_256 step consumes")
    results["loader"] = loaders
    results["store_sizes_mb"] = {p.name: p.stat().st_size / 1e6 for p in sorted(tiles_dir.glob("*.mbtiles"))}
    results["dataset_sizes_mb"] = {
        name: sum(f.stat().st_size for f in (ds_dir / name).rglob("*") if f.is_file()) / 1e6
        for name in ("gray", "historic") if (ds_dir / name).exists()}
    results["train_samples"] = len(train)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
