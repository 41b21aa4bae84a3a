"""Benchmark: a trained model's inference speed on the CPU by memory layout and batch size.

    .venv/bin/python -m bench.inference_layout [MODEL.pt ...] [--rounds 3]
        [--out docs/benchmarks/inference_layout.md]   (--out - prints the report instead)

For each model (default: the release model and those of a few study ablations that exist
under runs/), it times `model.colourise` on the context windows the colourise stage and the
web app feed it (256 px plus the model's margin on every side), per window, for PyTorch's
default layout (NCHW) and channels_last (NHWC), at several batch sizes, alternating the
variants within each round; the best round counts (the least disturbed on a shared machine).
The inputs are random gray windows: a network's speed does not depend on its pixel values.
pipeline/inference/layout.py chooses the layout from these numbers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

from bench.timing import cpu_model, set_memory_layout, shown_command, write_report
from pipeline.geo.tiles import TILE_SIZE
from pipeline.inference.colourise import context_margin, size_multiple
from pipeline.training.checkpoint import load_model

DEFAULT_MODELS = ("release/model.pt", "runs/p2p_unet_rgb_gray/model.pt", "runs/p2p_unet_cap_gray/model.pt",
                  "runs/cyc_gray/model.pt", "runs/cut_cap_gray/model.pt", "runs/p2p_resnet_cap_gray/model.pt")
BATCH_SIZES = (1, 2, 4, 8)


def time_model(path: Path, rounds: int) -> list[str]:
    model = load_model(path, "cpu")
    net_g = str(getattr(model.opts, "netG", "?"))
    window = TILE_SIZE + 2 * context_margin(size_multiple(net_g))
    windows = torch.rand(max(BATCH_SIZES) * 2, 1, window, window, generator=torch.Generator().manual_seed(0))
    best: dict[tuple[str, int], float] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for layout in ("NCHW", "channels_last"):
                set_memory_layout(model, channels_last=layout == "channels_last")
                for bs in BATCH_SIZES:
                    model.colourise(windows[:bs])  # warm-up: oneDNN picks its kernels
                    start = time.perf_counter()
                    for i in range(0, len(windows), bs):
                        model.colourise(windows[i:i + bs])
                    per_window = (time.perf_counter() - start) / len(windows)
                    best[layout, bs] = min(best.get((layout, bs), float("inf")), per_window)
    base = best["NCHW", max(BATCH_SIZES)]
    cells = []
    for bs in BATCH_SIZES:
        nchw, nhwc = best["NCHW", bs], best["channels_last", bs]
        cells.append(f"{1000 * nchw:.0f} / {1000 * nhwc:.0f}")
    fastest = min(best, key=lambda k: best[k])
    return [f"{path}", f"{model.name} {net_g}", f"{window}", *cells,
            f"{fastest[0]}, batch {fastest[1]}: {base / best[fastest]:.2f}x"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path, help="model.pt files (default: the release "
                        "model and a few study ablations, where present)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("LUMINESCENCE_THREADS", "2")))
    parser.add_argument("--out", default="docs/benchmarks/inference_layout.md",
                        help="the report (Markdown); - prints it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = args.models or [Path(p) for p in DEFAULT_MODELS if Path(p).is_file()]
    if not paths:
        parser.error("no model files: pass some, or train the study's ablations first")
    load_before = os.getloadavg()[0]
    rows = []
    for path in paths:
        print(f"timing {path} ...", file=sys.stderr)
        rows.append(time_model(path, args.rounds))
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = ["model file", "model", "window px", *[f"batch {b}: NCHW / NHWC ms" for b in BATCH_SIZES],
            "fastest, speed-up over NCHW batch 8"]
    lines = [
        f"# Inference layout and batch size ({now})", "",
        f"`{shown_command('bench.inference_layout', sys.argv[1:])}` on {platform.machine()}, "
        f"{cpu_model(platform.processor() or '?')}, {args.threads} threads, torch {torch.__version__}; "
        f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after. Milliseconds "
        f"per context window, best of {args.rounds} rounds, layouts alternated within each round.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        *["| " + " | ".join(r) + " |" for r in rows], ""]
    text = "\n".join(lines)
    write_report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
