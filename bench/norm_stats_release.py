"""Instance-norm statistics for the release model: each window's own, fixed from its training
inputs, or the colourised area's own. An experiment, scored on the validation and held-out areas.

    .venv/bin/python -m bench.norm_stats_release [--model release/model.pt] [--samples 256]
        [--area-samples 64] [--out FILE]

The release model's decoder (`norm: instance`) normalises each window by its own mean and
variance, which makes a colourised mosaic show its windows' edges (bench.tile_seams). Fixed
statistics make every window's normalisation the same. Which ones? This compares:

- `window`: each window's own (the model file as trained; `norm_stats: model` in the stages);
- `training_data`: pooled over `--samples` training inputs, drawn as the release stage draws its
  training batches (params.yaml `release.data`: crops of the training layers, film
  augmentation included) from random streams no training step uses;
- `area`: pooled over up to `--area-samples` windows (evenly spread) of the area being scored,
  per input kind (clean gray or film-emulated): the area's inputs only, never its colours, as a user
  colourising an area would have them.

Each is scored as the release stage scores its model (pipeline/results/release_card.py): the
validation windows (inside the training area) and the held-out layers' windows (never trained
on), clean gray and film-emulated input, ΔE2000 mean against the real colours, its paired
difference from the gray input's with a 95% bootstrap interval, and colourfulness.
Statistics are gathered with every norm on its input's own statistics, then fixed for all
(models/networks/norm_stats.py; `area` is what the colourise and evaluate stages do by default).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.app_options import report_header
from bench.timing import write_report

TRAINING_STREAM0 = 10**9  # sample streams no training step uses (steps count from 0)


# --------------------------------------------------------------------------- the experiment
def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.norm_stats_release",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="release/model.pt", help="a model file with instance norms")
    parser.add_argument("--samples", type=int, default=256, help="training inputs for `training_data`")
    parser.add_argument("--area-samples", type=int, default=64,
                        help="windows of each scored area (per input kind) for `area`")
    parser.add_argument("--params", default="params.yaml", help="its `release` section gives the data")
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    args = parser.parse_args()
    if args.samples < 1 or args.area_samples < 1:
        raise SystemExit("error: --samples and --area-samples must be at least 1")
    if not Path(args.model).is_file():
        raise SystemExit(f"error: --model {args.model} does not exist")

    import torch

    from models.networks.norm_stats import fix_norm_stats, gathering, gray_batches, instance_norms
    from pipeline.core.config import load_params
    from pipeline.datasets.release import build_release_data, crop_inputs, held_out_crops, release_batches
    from pipeline.results.release_card import score_windows
    from pipeline.training.checkpoint import load_model
    from pipeline.training.release import VAL_BATCH, ValSet

    params = load_params(Path(args.params))
    release = params.release
    if release is None:
        raise SystemExit(f"error: {args.params} has no `release` section")
    device = torch.device("cpu")
    model = load_model(Path(args.model), device)
    if not instance_norms(model.nets[model.colourising_net]):
        raise SystemExit(f"error: {args.model}'s generator has no instance norms: nothing to compare")

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    data = build_release_data(release.data, params)
    val = ValSet.of(data, params, release.seed)
    val_target = val.target
    areas: list[tuple[str, dict[str, np.ndarray], np.ndarray]] = [
        ("validation", {"clean": val.clean, "film": val.film}, val_target)]
    for name in release.data.held_out:
        crops = held_out_crops(Path(params.sample.data_dir), name, release.data.val_crop_size,
                               release.held_out_crops)
        areas.append((f"held-out {name}", {"clean": crop_inputs(crops, None),
                                           "film": crop_inputs(crops, params.sample.film, release.seed)},
                      np.ascontiguousarray(crops.rgb.transpose(0, 2, 3, 1))))
    batches = release_batches(data, release, params)
    training = np.stack([batches.sample(TRAINING_STREAM0 + j, 0)[0] for j in range(args.samples)])
    trained = copy.deepcopy(model)
    net = trained.nets[trained.colourising_net]
    with gathering(net) as gatherer, torch.no_grad():
        for batch in gray_batches(training, len(training), VAL_BATCH):
            trained.colourise(batch)
    fix_norm_stats(net, gatherer.result())

    rows: list[tuple[str, str, str, int, dict[str, Any]]] = []
    for variant in ("window", "training_data", "area"):
        for area, inputs, target in areas:
            for kind, gray in inputs.items():
                scored = model if variant == "window" else trained if variant == "training_data" else \
                    copy.deepcopy(model)
                if variant == "area":
                    scored.fit_norm_stats(gray_batches(gray, args.area_samples, VAL_BATCH))
                scores = score_windows(scored, gray, target, device, release.seed)
                rows.append((variant, area, kind, len(gray), scores))
                low, high = scores["difference_ci95"]
                print(f"{variant:13s} {area:24s} {kind:5s} N {len(gray):3d}: ΔE2000 "
                      f"{scores['delta_e2000_mean']:.2f} (gray {scores['gray_delta_e2000_mean']:.2f}, "
                      "difference "
                      f"[{low:+.2f}, {high:+.2f}]), colourfulness {scores['colourfulness']:.1f} / real "
                      f"{scores['real_colourfulness']:.1f}", flush=True)
    load1 = os.getloadavg()[0]

    lines = [
        *report_header("Instance-norm statistics of the release model", "bench.norm_stats_release",
                       load_before=load0, load_after=load1,
                       extra=f", {torch.get_num_threads()} torch threads"),
        f"Model {args.model}; `training_data`: {args.samples} training inputs; `area`: up to "
        f"{args.area_samples} windows of each scored area and input kind; "
        f"{time.perf_counter() - t0:.0f} s in all.",
        "",
        "| statistics | area | input | windows | ΔE2000 model | ΔE2000 gray input | difference [95% CI] "
        "| colourfulness model / real |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for variant, area, kind, n, s in rows:
        low, high = s["difference_ci95"]
        lines.append(f"| {variant} | {area} | {kind} | {n} | {s['delta_e2000_mean']:.2f} | "
                     f"{s['gray_delta_e2000_mean']:.2f} | {s['difference_mean']:+.2f} "
                     f"[{low:+.2f}, {high:+.2f}] | "
                     f"{s['colourfulness']:.1f} / {s['real_colourfulness']:.1f} |")
    lines += ["", "Difference: model ΔE2000 − gray input ΔE2000 per window (negative is better), mean and "
              "95% bootstrap interval over windows.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_report(text, args.out)


if __name__ == "__main__":
    main()
