"""Where the release model loses to the look-up table: the area, or the ground resolution?

    .venv/bin/python -m bench.release_scale [--model release/model.pt] [--windows 160]
        [--out docs/benchmarks/release_scale.md]   (--out - prints the report instead)

Two scores of the release model on Columbia County disagree about the look-up baseline. The
evaluate stage scores it on the gray dataset's held-out tiles (the `columbia_heldout` AOI at
z19, 0.22 m pixels: the 0.61 m photo upsampled about 2.8x), where the look-up table wins. The
release stage scores it on native-resolution windows of the whole columbia_2010 footprint.
This script scores the gray input, the evaluate stage's look-up table (fitted on the gray
dataset's train split, as `baseline@lut_gray` fits it) and the model on both, and on the
native windows upsampled by factors up to the z19 one, with seeded paired bootstrap intervals
of model - look-up over windows. Needs the aligned gray dataset (`dvc repro align@gray`).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.timing import shown_command, write_report
from eval import bootstrap
from eval.colour_metrics import per_image_metrics
from models.base import GANModel
from pipeline.core.config import load_params
from pipeline.datasets.release import Crops, crop_inputs, held_out_crops
from pipeline.datasets.storage import INPUT_CHANNEL, TARGET_CHANNELS, open_split, read_info
from pipeline.results.baselines import ColourTable, fit_lightness_lookup
from pipeline.training.checkpoint import load_model
from pipeline.training.release import colourise_u8

BOOTSTRAP_SAMPLES = 1000
SEED = 0


def upsampled(crops: Crops, factor: float) -> Crops:
    """The centre 1/factor of each window, bilinearly upsampled back to the window size: what the
    same ground looks like on tiles whose pixels are `factor` times finer than the photo's."""
    if factor == 1.0:
        return crops
    size = crops.bands.shape[-1]
    keep = round(size / factor)
    start = (size - keep) // 2
    bands = torch.from_numpy(crops.bands[..., start:start + keep, start:start + keep]).float()
    bands = F.interpolate(bands, size=(size, size), mode="bilinear", align_corners=False)
    return Crops(bands.round().clamp(0, 255).to(torch.uint8).numpy(), crops.layer, crops.origin,
                 [m / factor for m in crops.metres_per_px])


def score(gray: np.ndarray, real: np.ndarray, table: ColourTable, model: GANModel) -> dict[str, object]:
    """Per-window ΔE2000 of gray input, look-up and model, and model - look-up with its interval."""
    device = torch.device("cpu")
    per = {name: per_image_metrics(out, real).delta_e2000 for name, out in (
        ("gray", np.repeat(gray[..., None], 3, axis=-1)),
        ("lut", table.predict(gray)),
        ("model", colourise_u8(model, gray, device)),
    )}
    idx = bootstrap.indices(len(gray), BOOTSTRAP_SAMPLES, SEED)
    reps = {k: bootstrap.mean_replicates(v, idx) for k, v in per.items()}
    diff, ci = bootstrap.difference_interval(float(per["model"].mean()), reps["model"],
                                             float(per["lut"].mean()), reps["lut"])
    return {"n": len(gray), **{k: float(v.mean()) for k, v in per.items()}, "diff": diff, "ci": ci,
            "verdict": bootstrap.verdict(ci, lower_is_better=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("release/model.pt"))
    parser.add_argument("--dataset", default="gray", help="the dataset whose train split fits the look-up "
                                                          "table and whose held-out tiles are scored")
    parser.add_argument("--windows", type=int, default=160, help="native windows of the held-out layer")
    parser.add_argument("--out", default="docs/benchmarks/release_scale.md",
                        help="Markdown report; - prints it")
    args = parser.parse_args(argv)
    params = load_params()
    root = Path("data/datasets") / args.dataset
    if not (root / "heldout.npy").is_file():
        parser.error(f"{root}/heldout.npy not found: run `dvc repro align@{args.dataset}` first")
    if params.release is None or not params.release.data.held_out:
        parser.error("params.yaml has no `release.data.held_out` layer")
    torch.manual_seed(SEED)

    train = open_split(root, "train")
    table = fit_lightness_lookup(train[..., INPUT_CHANNEL], train[..., TARGET_CHANNELS])
    model = load_model(args.model, torch.device("cpu"))
    heldout_info = read_info(root).heldout or {}
    tile_m = float(heldout_info.get("metres_per_px", 0.0))
    rows: list[tuple[str, str, dict[str, object]]] = []

    heldout = open_split(root, "heldout")
    rows.append((f"evaluate stage's held-out tiles ({heldout_info.get('aoi', '?')}, "
                 f"z{heldout_info.get('zoom', '?')})", f"{tile_m:.2f} m tiles",
                 score(np.ascontiguousarray(heldout[..., INPUT_CHANNEL]),
                       np.ascontiguousarray(heldout[..., TARGET_CHANNELS]),
                       table, model)))

    layer = params.release.data.held_out[0]
    native = held_out_crops(Path(params.sample.data_dir), layer, 256, args.windows)
    native_m = native.metres_per_px[0]
    z19_factor = native_m / tile_m if tile_m else 1.0
    factors = sorted({1.0, round(1 + (z19_factor - 1) / 2, 2), round(z19_factor, 2)})
    for factor in factors:
        crops = upsampled(native, factor)
        real = np.ascontiguousarray(crops.rgb.transpose(0, 2, 3, 1))
        what = "native" if factor == 1.0 else f"upsampled x{factor:g}"
        pixels = f"{what} ({native_m / factor:.2f} m)"
        rows.append((f"release stage's windows (whole {layer} footprint)", pixels,
                     score(crop_inputs(crops, None), real, table, model)))
        print(f"scored {what}", file=sys.stderr, flush=True)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Release model vs the look-up table: area and ground resolution ({now})", "",
             f"`{shown_command('bench.release_scale', sys.argv[1:] if argv is None else argv)}`: model "
             f"`{args.model}`; look-up table fitted on `{args.dataset}`'s train split ({len(train)} tiles); "
             "ΔE2000 per window (mean over its pixels, the evaluate stage's code), then the mean over "
             f"windows; model - look-up with a paired bootstrap 95% interval over windows "
             f"({BOOTSTRAP_SAMPLES} resamples, seed {SEED}).", "",
             "| windows | pixels | N | gray input | look-up | model | model - look-up [95% CI] "
             "| model beats look-up |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for area, pixels, r in rows:
        ci = r["ci"]
        assert isinstance(ci, bootstrap.Interval)
        lines.append(f"| {area} | {pixels} | {r['n']} | {r['gray']:.2f} | {r['lut']:.2f} | "
                     f"{r['model']:.2f} | {r['diff']:+.2f} [{ci.low:+.2f}, {ci.high:+.2f}] | "
                     f"{r['verdict']} |")
    write_report("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
