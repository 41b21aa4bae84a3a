"""Benchmark: training speed (seconds per iteration) and peak memory of our GAN variants,
against the reference implementations measured in the same run.

    .venv/bin/python -m bench.train_speed [--reference-dir /tmp/ref] [--configs cut,fastcut]

Every measurement runs in a fresh worker process (one model, `--warmup` untimed then
`--iters` timed iterations on synthetic random 256-pixel tiles, batch 1) so peak
memory is per model: the process's peak resident set size (ru_maxrss), which includes
Python and torch themselves (about 0.3 GB). Ours and the reference's workers
alternate for `--rounds` rounds, so both see the same machine load; the ratios are
ours / reference of the median and of the minimum iteration times (the minimum is the
least disturbed by other processes on a shared machine). Without `--reference-dir`
the reference columns show the times documented in docs (measured on this machine
type) marked "not same run".

`--reference-dir` holds checkouts of junyanz/pytorch-CycleGAN-and-pix2pix and
taesungp/contrastive-unpaired-translation (directory names may carry an `owner+`
prefix). Their model classes are imported from there and their
`optimize_parameters` is timed with our settings: same networks and widths, 1-channel
gray input for pix2pix (the reference's `--input_nc 1`), the gray input as 3 channels
for CycleGAN (its identity loss needs equal channel counts) and CUT.

With `--device cuda` the workers run on the GPU and also report images/s, in fp32 and
(ours) bf16 autocast, and peak GPU memory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    # name: (our model, our options, documented reference s/iter on this project's 2-core CPU machines)
    "pix2pix_unet256": {"model": "pix2pix", "options": {"netG": "unet_256"}, "documented": 0.50},
    "pix2pix_resnet9": {"model": "pix2pix", "options": {"netG": "resnet_9blocks"}, "documented": 1.12},
    "cyclegan": {"model": "cyclegan", "options": {}, "documented": 5.3},
    "cut": {"model": "cut", "options": {}, "documented": 4.26},
    "fastcut": {"model": "fastcut", "options": {}, "documented": 2.24},
}
RESULT_TAG = "BENCH_RESULT "


# --------------------------------------------------------------------------- worker
def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _time_steps(step: Any, warmup: int, iters: int, sync: Any) -> list[float]:
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if args.worker == "ref":
        from bench.reference_models import build_reference

        step, counts, what = build_reference(
            args.config, Path(args.reference_dir), args.size, args.batch_size, device
        )
    else:
        from bench.timing import set_memory_layout
        from models.registry import get_model_class

        spec = CONFIGS[args.config]
        cls = get_model_class(spec["model"])
        model = cls(cls.Options(**spec["options"]), torch.device(device))
        channels_last = args.worker == "ours_cl"
        if channels_last:  # the networks' weights in NHWC: convolutions then run NHWC throughout
            set_memory_layout(model, channels_last=True)
        if args.precision == "bf16":
            model.autocast_dtype = torch.bfloat16  # type: ignore[attr-defined]
        g = torch.Generator().manual_seed(0)
        rgb = torch.rand(args.batch_size, 3, args.size, args.size, generator=g)  # synthetic, timing only
        batch = {"A": 0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:], "B": rgb}
        if channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}

        def step() -> None:
            model.train_step(batch)

        counts = model.parameter_counts()
        layout = " channels_last" if channels_last else ""
        what = f"ours {spec['model']} {spec['options'] or ''}{layout}".strip()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    load_before = os.getloadavg()[0]
    times = _time_steps(step, args.warmup, args.iters, sync)
    out: dict[str, Any] = {
        "times": times,
        "load": [load_before, os.getloadavg()[0]],
        "params": counts,
        "what": what,
        "peak_rss_mib": _peak_rss_mib(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    return out


# --------------------------------------------------------------------------- parent
def _spawn(worker: str, config: str, args: argparse.Namespace, precision: str = "fp32") -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.train_speed",
        "--worker",
        worker,
        "--config",
        config,
        "--size",
        str(args.size),
        "--batch-size",
        str(args.batch_size),
        "--warmup",
        str(args.warmup),
        "--iters",
        str(args.iters),
        "--device",
        args.device,
        "--precision",
        precision,
    ]
    if args.reference_dir:
        cmd += ["--reference-dir", str(args.reference_dir)]
    env = os.environ.copy()
    if args.threads:
        cmd += ["--threads", str(args.threads)]
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], env=env
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"{worker} worker for {config} failed: {' | '.join(tail)}")


def _reference_available(config: str, reference_dir: Path | None) -> bool:
    if reference_dir is None:
        return False
    from bench.reference_models import REPO_OF, find_repo

    return find_repo(reference_dir, REPO_OF[config]) is not None


def measure(config: str, args: argparse.Namespace) -> dict[str, Any]:
    with_ref = _reference_available(config, args.reference_dir)
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "ref": [], "ours_bf16": [], "ours_cl": []}
    for r in range(args.rounds):
        order = ["ref", "ours", "ours_cl"] if args.channels_last else ["ref", "ours"]
        if r % 2:
            order.reverse()
        for side in order:
            if side == "ref" and not with_ref:
                continue
            runs[side].append(_spawn(side, config, args))
            last = runs[side][-1]
            times = " ".join(f"{t:.2f}" for t in last["times"])
            load = f"load average {last['load'][0]:.1f} -> {last['load'][1]:.1f}"
            print(f"  {config}: round {r + 1} {side}: {times} s ({load})", file=sys.stderr, flush=True)
        if args.device == "cuda":
            runs["ours_bf16"].append(_spawn("ours", config, args, precision="bf16"))
    result: dict[str, Any] = {"config": config}
    for side, items in runs.items():
        if not items:
            continue
        times = [t for item in items for t in item["times"]]
        result[side] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "n": len(times),
            "peak_rss_mib": max(i["peak_rss_mib"] for i in items),
            "params": items[0]["params"],
            "what": items[0]["what"],
            "threads": items[0]["threads"],
            "load_max": max(max(i["load"]) for i in items),
            **(
                {"peak_gpu_mib": max(i["peak_gpu_mib"] for i in items), "gpu": items[0]["gpu"]}
                if args.device == "cuda"
                else {}
            ),
        }
    if "ours_cl" in result:
        result["cl_over_default"] = result["ours_cl"]["median_s"] / result["ours"]["median_s"]
    if with_ref:
        result["ratio"] = result["ours"]["median_s"] / result["ref"]["median_s"]
        if "ours_cl" in result:
            result["ratio_cl"] = result["ours_cl"]["median_s"] / result["ref"]["median_s"]
        result["ratio_min"] = result["ours"]["min_s"] / result["ref"]["min_s"]
        result["same_run"] = True
    else:
        documented = CONFIGS[config]["documented"]
        result["ref"] = {"median_s": documented, "documented": True}
        result["ratio"] = result["ours"]["median_s"] / documented if args.device == "cpu" else None
        result["ratio_min"] = None
        result["same_run"] = False
    return result


def _fmt_params(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items())


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    load = max((r[s]["load_max"] for r in results for s in ("ours", "ref") if "load_max" in r[s]), default=0)
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}; device {args.device}; {args.size} px, batch {args.batch_size}; "
        f"{args.rounds} rounds x {args.iters} timed iterations after {args.warmup} warm-up, median; "
        f"torch threads {results[0]['ours']['threads'] if results else '?'}; highest 1-minute load average "
        f"during the measurements {load:.1f}.",
        "",
        "| config | ours s/iter median (min) | reference s/iter median (min) | ours / reference: medians "
        "| ours / reference: minima | ours peak RSS MiB | reference peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ref = r["ref"]
        ours = r["ours"]
        if r["same_run"]:
            ref_s = f"{ref['median_s']:.2f} ({ref['min_s']:.2f})"
        else:
            ref_s = f"{ref['median_s']:.2f} (documented, not same run)"
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
        ratio_min = "n/a" if r["ratio_min"] is None else f"{r['ratio_min']:.2f}"
        lines.append(
            f"| {r['config']} | {ours['median_s']:.2f} ({ours['min_s']:.2f}) | {ref_s} | {ratio} "
            f"| {ratio_min} | "
            f"{ours['peak_rss_mib']:.0f} | {ref.get('peak_rss_mib', float('nan')):.0f} |"
        )
    with_cl = [r for r in results if "ours_cl" in r]
    if with_cl:
        lines += ["", "The same runs, ours with every network and batch in channels_last (NHWC) memory "
                  "layout (`--channels-last`), alternated with the two above:", "",
                  "| config | ours channels_last s/iter median (min) | channels_last / default layout | "
                  "ours channels_last / reference |", "|---|---|---|---|"]
        for r in with_cl:
            cl = r["ours_cl"]
            ratio_cl = f"{r['ratio_cl']:.2f}" if "ratio_cl" in r else "n/a"
            lines.append(f"| {r['config']} | {cl['median_s']:.2f} ({cl['min_s']:.2f}) | "
                         f"{r['cl_over_default']:.2f} | {ratio_cl} |")
    lines += ["", "Parameters (ours; reference):", ""]
    for r in results:
        ref_params = _fmt_params(r["ref"]["params"]) if "params" in r["ref"] else "not built"
        lines.append(f"- {r['config']}: {_fmt_params(r['ours']['params'])}; {ref_params}")
    if args.device == "cuda":
        lines += [
            "",
            "| config | ours fp32 img/s | ours bf16 img/s | reference fp32 img/s | ours fp32 peak GPU MiB |",
            "|---|---|---|---|---|",
        ]
        for r in results:
            ips = args.batch_size / r["ours"]["median_s"]
            bf = args.batch_size / r["ours_bf16"]["median_s"] if "ours_bf16" in r else float("nan")
            rf = args.batch_size / r["ref"]["median_s"] if r["same_run"] else float("nan")
            lines.append(
                f"| {r['config']} | {ips:.1f} | {bf:.1f} | {rf:.1f} | {r['ours']['peak_gpu_mib']:.0f} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.train_speed",
        description="Seconds per training iteration and peak memory of pix2pix (U-Net, ResNet), "
        "CycleGAN, CUT and FastCUT, ours vs the reference implementations in the same run.",
    )
    p.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated subset of {', '.join(CONFIGS)} (default: all)",
    )
    p.add_argument(
        "--reference-dir",
        type=Path,
        default=None,
        help="directory with checkouts of pytorch-CycleGAN-and-pix2pix and "
        "contrastive-unpaired-translation; without it the documented reference times are shown",
    )
    p.add_argument("--size", type=int, default=256, help="tile size in pixels (default 256)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per worker (default 2)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per worker (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating ours/reference rounds (default 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device (default cpu)")
    p.add_argument(
        "--threads", type=int, default=0, help="torch/OpenMP threads per worker (default: one per core)"
    )
    p.add_argument("--channels-last", action="store_true",
                   help="also time ours with the networks and batches in channels_last layout, alternated")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    # internal: one measurement in this process
    p.add_argument("--worker", choices=["ours", "ours_cl", "ref"], help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_TAG + json.dumps(run_worker(args)), flush=True)
        return
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"error: unknown config(s) {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    if args.reference_dir is not None and not args.reference_dir.is_dir():
        raise SystemExit(f"error: --reference-dir {args.reference_dir} is not a directory")
    results = []
    for config in configs:
        print(f"measuring {config} ...", file=sys.stderr, flush=True)
        try:
            results.append(measure(config, args))
        except RuntimeError as exc:  # a worker failed: its last lines say why, in one line
            raise SystemExit(f"error: {exc}") from None
    text = report(results, args)
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
