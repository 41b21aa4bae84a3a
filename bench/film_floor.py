"""How close can a colouriser that keeps the input's lightness get? ΔE2000 with perfect chroma.

    .venv/bin/python -m bench.film_floor [--datasets gray historic] [--split heldout]
        [--out docs/benchmarks/film_floor.md]   (--out - prints the report instead)

The release model (and every Lab ablation) outputs the input's L* and predicts only a*b*. On
clean gray input, L* of the luma is close to the real photo's L*; on film-emulated input the
film's tone curve, grain, blur and vignetting change the lightness, and no a*b* can undo that.
This script measures that floor on a dataset split's real tiles: each input's L* combined with
the real photo's own a*b* (an oracle no model can beat), scored with the evaluate stage's
ΔE2000 against the real photo, next to the gray input itself. Needs the aligned datasets
(`dvc repro align@gray align@historic`).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import torch

from bench.timing import shown_command, write_report
from eval.colour_metrics import delta_e2000
from models.colour import gray_to_lightness, lab_to_rgb, rgb_to_lab


def oracle_chroma(gray: np.ndarray, real: np.ndarray) -> np.ndarray:
    """uint8 RGB with the gray input's L* (as the Lab models decode it) and the real a*b*."""
    lightness = gray_to_lightness(torch.from_numpy(gray).to(torch.float64).div(255.0)[:, None])
    real_lab = rgb_to_lab(torch.from_numpy(real).permute(0, 3, 1, 2).to(torch.float64).div(255.0))
    rgb = lab_to_rgb(torch.cat([lightness, real_lab[:, 1:]], dim=1)).clamp(0, 1)
    return rgb.mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["gray", "historic"])
    parser.add_argument("--split", default="heldout", help="heldout (default), test, val or train")
    parser.add_argument("--root", type=Path, default=Path("data/datasets"))
    parser.add_argument("--out", default="docs/benchmarks/film_floor.md", help="Markdown report; - prints it")
    args = parser.parse_args(argv)
    rows = []
    for name in args.datasets:
        path = args.root / name / f"{args.split}.npy"
        if not path.is_file():
            parser.error(f"{path} not found: run `dvc repro align@{name}` first")
        pairs = np.load(path, mmap_mode="r")
        gray, real = np.ascontiguousarray(pairs[..., 0]), np.ascontiguousarray(pairs[..., 1:4])
        as_input = np.repeat(gray[..., None], 3, axis=-1)
        oracle = oracle_chroma(gray, real)
        rows.append((name, len(pairs), delta_e2000(as_input, real)[0], delta_e2000(oracle, real)[0]))
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Lightness floor of an L-keeping colouriser ({now})", "",
             f"`{shown_command('bench.film_floor', sys.argv[1:])}`: split `{args.split}`; ΔE2000 "
             "(mean over all pixels, the evaluate stage's code) against the real colour photo.", "",
             "| dataset | tiles (N) | gray input as output | input L* + the real photo's a*b* (oracle) |",
             "|---|---:|---:|---:|"]
    lines += [f"| {n} | {count} | {inp:.2f} | {orc:.2f} |" for n, count, inp, orc in rows]
    text = "\n".join(lines) + "\n"
    write_report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
