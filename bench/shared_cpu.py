"""Benchmark: training speed alone and beside one CPU-bound process, with torch's default
threading and with the stages' CPU policy (pipeline/core/cpu.py), alternated in one run.

    .venv/bin/python -m bench.shared_cpu [--ablations cyc_hist,p2p_unet_rgb_gray] [--steps 20]
                                         [--rounds 2] [--settings default,ours] [--out FILE.md]

Each measurement is a fresh process that trains one ablation of params.yaml (CPU preset)
for `--steps` steps through the real trainer (pipeline.training.loop.train, no validation
or checkpoint inside the timed steps) and reports its per-step times; the first two steps
(lazy optimizer construction, first-touch allocations) are left out of the median. The
busy process is `python -c "while True: pass"`, started before the measured process (as a
user's other job would be) and stopped after it. Settings:
- `default`: torch's own choice (one thread per core, libgomp's default spinning);
- `passive`: `OMP_WAIT_POLICY=PASSIVE` (the remedy an earlier benchmark note documented);
- `ours`: what train / evaluate / colourise do by default (pipeline.core.cpu.CpuPolicy).
Rounds alternate the order of conditions and settings, so all see the same machine.
The ResNet model is `cyc_hist` (CycleGAN, resnet_9blocks), the U-Net one `p2p_unet_rgb_gray`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "out" / "shared_cpu"
RESULT_TAG = "BENCH_RESULT "
SETTINGS = ("default", "passive", "ours")
WARMUP = 2


def run_worker(ablation: str, steps: int, setting: str) -> dict[str, Any]:
    policy = None
    if setting == "ours":
        from pipeline.core.cpu import CpuPolicy

        policy = CpuPolicy.start()  # before torch loads, as the stages do
    import torch

    from pipeline.core.config import load_params
    from pipeline.training.loop import train
    from pipeline.training.plan import plan_run

    params = load_params(ROOT / "params.yaml")
    choice = policy.apply() if policy is not None else None
    plan = plan_run(ablation, params, out_dir=WORK / f"{ablation}-{setting}", steps=10**6)
    result = train(plan, resume=False, stop_at=steps, progress=False)
    return {"times": result.step_times, "threads": torch.get_num_threads(),
            "choice": choice.describe() if choice is not None else "torch default",
            "load": os.getloadavg()[0]}


def _spawn(ablation: str, steps: int, setting: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "LUMINESCENCE_THREADS")}
    env["DVC_NO_ANALYTICS"] = "1"
    if setting == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, "-m", "bench.shared_cpu", "--worker", ablation, "--steps", str(steps),
           "--settings", setting]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])  # type: ignore[no-any-return]
    raise RuntimeError(f"worker {ablation}/{setting} failed: {proc.stderr[-1500:]}")


def measure(ablations: list[str], settings: list[str], steps: int, rounds: int
            ) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in range(rounds):
        conditions = ["alone", "busy"] if r % 2 == 0 else ["busy", "alone"]
        for condition in conditions:
            for ablation in ablations:
                order = settings if r % 2 == 0 else list(reversed(settings))
                for setting in order:
                    busy = None
                    if condition == "busy":
                        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    try:
                        out = _spawn(ablation, steps, setting)
                    finally:
                        if busy is not None:
                            busy.kill()
                            busy.wait()
                    runs.setdefault((ablation, setting, condition), []).append(out)
                    timed = out["times"][WARMUP:]
                    print(f"round {r + 1} {condition:5s} {ablation} {setting:8s}: median "
                          f"{statistics.median(timed):.3f} s/step, {out['threads']} threads, load "
                          f"{out['load']:.1f}", file=sys.stderr, flush=True)
    return runs


def summarise(runs: dict[tuple[str, str, str], list[dict[str, Any]]]) -> dict[tuple[str, str, str], float]:
    return {key: statistics.median(t for out in outs for t in out["times"][WARMUP:])
            for key, outs in runs.items()}


def report(runs: dict[tuple[str, str, str], list[dict[str, Any]]], args: argparse.Namespace,
           ablations: list[str], settings: list[str]) -> str:
    med = summarise(runs)
    loads = [out["load"] for outs in runs.values() for out in outs]
    lines = [
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `python -m bench.shared_cpu "
        f"{' '.join(args.argv)}` on {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; {args.rounds} rounds x {args.steps} steps ({WARMUP} warm-up steps "
        f"left out), medians; 1-minute load average at the end of each measurement "
        f"{min(loads):.1f}-{max(loads):.1f}.",
        "",
        "| ablation | setting | alone s/step | beside a busy process s/step | busy / alone "
        "| alone: setting / default | threads alone, busy |",
        "|---|---|---|---|---|---|---|",
    ]
    for ablation in ablations:
        for setting in settings:
            alone, busy = med[(ablation, setting, "alone")], med[(ablation, setting, "busy")]
            base = med.get((ablation, "default", "alone"))
            vs_default = f"{alone / base:.2f}" if base else "n/a"
            threads = (f"{runs[(ablation, setting, 'alone')][0]['threads']}, "
                       f"{runs[(ablation, setting, 'busy')][0]['threads']}")
            lines.append(f"| {ablation} | {setting} | {alone:.3f} | {busy:.3f} | {busy / alone:.2f} "
                         f"| {vs_default} | {threads} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.shared_cpu", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ablations", default="cyc_hist,p2p_unet_rgb_gray",
                   help="ablations of params.yaml (default: cyc_hist, a ResNet CycleGAN, and "
                        "p2p_unet_rgb_gray, a U-Net pix2pix)")
    p.add_argument("--steps", type=int, default=20, help="training steps per measurement (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    p.add_argument("--settings", default="default,ours",
                   help=f"comma-separated subset of {', '.join(SETTINGS)} (default: default,ours)")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    p.add_argument("--worker", metavar="ABLATION", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if args.worker:
        print(RESULT_TAG + json.dumps(run_worker(args.worker, args.steps, settings[0])), flush=True)
        return 0
    unknown = set(settings) - set(SETTINGS)
    if unknown or args.steps <= WARMUP:
        print(f"error: settings must be among {', '.join(SETTINGS)} and --steps above {WARMUP}",
              file=sys.stderr)
        return 2
    ablations = [a.strip() for a in args.ablations.split(",") if a.strip()]
    runs = measure(ablations, settings, args.steps, args.rounds)
    text = report(runs, args, ablations, settings)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
