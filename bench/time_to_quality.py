"""Time to quality: how soon a colouriser beats the gray input on the validation windows.

Two models train on the same release data (params.yaml `release.data`: native-resolution
crops, film augmentation, the same batch at every step for both): the release model's
generator with its ImageNet-pretrained encoder (`release.options`) and the reference
pix2pix `unet_256` from scratch (the pix2pix defaults). Their steps alternate in one
process, so machine load hits both alike. Every `--val-every` iterations each is scored on
the validation windows (CIEDE2000 ΔE mean, clean gray input); the result per model is the
first iteration, and the training-step seconds spent until then, at which its ΔE2000 mean
is below the gray input's. Validation time is not counted. The run stops when both got
there or after `--max-steps`.

    python -m bench.time_to_quality                         # the full run (long: minutes to hours)
    python -m bench.time_to_quality --max-steps 4 --val-every 2 --crop-size 128 --val-crops 2 \\
        --reference '{"netG": "unet_128"}' --threads 1 --out "$(mktemp -d)/ttq.md"   # a check

Writes a markdown table (default docs/benchmarks/time_to_quality.md) and a JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.timing import shown_command
from models.registry import get_model_class
from pipeline.core.config import Params, load_params
from pipeline.datasets.release import build_release_data, release_batches
from pipeline.training.devices import configure_determinism, seed_everything
from pipeline.training.loop import make_schedulers
from pipeline.training.release import ValSet, release_options

DEFAULT_OUT = Path("docs/benchmarks/time_to_quality.md")


def _contenders(params: Params, reference: dict[str, Any]) -> dict[str, tuple[type, Any]]:
    release = params.release
    assert release is not None
    cls, options = release_options(release)
    ref_cls = get_model_class("pix2pix")
    return {f"pretrained ({options.netG})": (cls, options),
            f"pix2pix {reference.get('netG', 'unet_256')} from scratch":
                (ref_cls, ref_cls.Options.model_validate(reference))}


def run(params: Params, *, max_steps: int, val_every: int, reference: dict[str, Any],
        log: Any = sys.stderr) -> dict[str, Any]:
    release = params.release
    if release is None:
        raise SystemExit("params.yaml has no `release` section")
    configure_determinism(True, torch.device("cpu"))
    data = build_release_data(release.data, params)
    batches = release_batches(data, release, params)
    val = ValSet.of(data, params, release.seed)
    device = torch.device("cpu")
    runs: dict[str, dict[str, Any]] = {}
    for name, (cls, options) in _contenders(params, reference).items():
        seed_everything(release.seed)
        model = cls(options, device)
        model.train()
        runs[name] = {"model": model, "schedulers": make_schedulers(model, max_steps, 0), "seconds": 0.0,
                      "steps": None, "time": None, "curve": [], "parameters": model.parameter_counts()}
    print(f"gray input: validation ΔE2000 mean {val.gray_delta_e_clean:.3f} ({len(val.target)} windows)",
          file=log)
    for step in range(max_steps):
        batch = batches.batch(step)
        for r in runs.values():
            if r["steps"] is not None:
                continue
            t0 = time.perf_counter()
            r["model"].train_step(batch)
            for sched in r["schedulers"].values():
                sched.step()
            r["seconds"] += time.perf_counter() - t0
        done = step + 1
        if done % val_every and done != max_steps:
            continue
        for name, r in runs.items():
            if r["steps"] is not None:
                continue
            de = val.score(r["model"], device)[0]
            r["curve"].append({"step": done, "train_seconds": round(r["seconds"], 2), "val_delta_e2000": de})
            print(f"{name}: step {done}, {r['seconds']:.0f} s training, val ΔE2000 {de:.3f}", file=log)
            if de < val.gray_delta_e_clean:
                r["steps"], r["time"] = done, r["seconds"]
        if all(r["steps"] is not None for r in runs.values()):
            break
    return {
        "gray_delta_e2000": val.gray_delta_e_clean, "val_windows": len(val.target), "max_steps": max_steps,
        "val_every": val_every, "batch_size": release.batch_size, "crop_size": release.data.crop_size,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "torch": str(torch.__version__),
        "runs": {name: {k: v for k, v in r.items() if k not in ("model", "schedulers")}
                 for name, r in runs.items()},
    }


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        "# Time to quality",
        "",
        f"Command: `{command}`; {result['threads']} torch threads, torch {result['torch']}, batch "
        f"{result['batch_size']}, {result['crop_size']}-px crops, validation every {result['val_every']} "
        f"iterations on {result['val_windows']} windows; gray input ΔE2000 mean "
        f"{result['gray_delta_e2000']:.3f}. Training-step time only; both models alternate step by step.",
        "",
        "| model | parameters | iterations to beat gray | training seconds to beat gray | last val ΔE2000 |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["runs"].items():
        params = " + ".join(f"{k} {v / 1e6:.2f} M" for k, v in r["parameters"].items())
        last = r["curve"][-1]["val_delta_e2000"] if r["curve"] else float("nan")
        if r["steps"] is None:
            reached = f"not within {result['max_steps']} | —"
        else:
            reached = f"{r['steps']} | {r['time']:.0f}"
        lines.append(f"| {name} | {params} | {reached} | {last:.3f} |")
    times = [r["time"] for r in result["runs"].values()]
    if all(t is not None for t in times) and times[0] > 0:
        lines += ["", f"Speed-up of the pretrained encoder: {times[1] / times[0]:.1f}x sooner."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.time_to_quality",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--crop-size", type=int, default=None, help="override release.data.crop_size")
    parser.add_argument("--val-crops", type=int, default=None, help="override release.data.max_val_crops")
    parser.add_argument("--reference", type=json.loads, default={"netG": "unet_256"},
                        help="pix2pix options of the from-scratch reference (JSON)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; on a loaded machine 1 avoids thrashing)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    if params.release is None:
        parser.error("params.yaml has no `release` section")
    data = params.release.data
    if args.crop_size:
        data = data.model_copy(update={"crop_size": args.crop_size, "val_crop_size": args.crop_size})
    if args.val_crops:
        data = data.model_copy(update={"max_val_crops": args.val_crops})
    params = params.model_copy(update={"release": params.release.model_copy(update={"data": data})})
    result = run(params, max_steps=args.max_steps, val_every=args.val_every, reference=args.reference)
    command = shown_command("bench.time_to_quality", argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(result, command.strip()), encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
