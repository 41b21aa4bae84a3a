"""Benchmark: the fixed cost of each stage kind (start -> first model step, last step ->
exit) against a bare `python -c "import torch"` measured in the same run.

    .venv/bin/python -m bench.startup [--rounds 3] [--before DIR] [--kinds train,evaluate]
                                      [--ablations cyc_hist,p2p_unet_rgb_gray] [--out FILE.md]

Each measurement is a fresh process, as DVC starts it: `python bench/stage_probe.py` runs
the stage's own CLI (`pipeline.stages.<kind>.main`) and notes when the first model step
starts and the last one ends (bench/stage_probe.py); the parent notes when it started the
process and when the process exited. So

    fixed cost = (start -> first step) + (last step -> exit) - feature extraction in those phases,

and the table gives it beside the bare `import torch` of the same round. The stages run:
- train: `train ABLATION --steps 3 --no-resume` (CPU preset: crop 128, widths x0.25; the
  end includes the final validation, the checkpoint, model.pt and DVCLive);
- evaluate: `evaluate ABLATION` on the model that train wrote (feature extraction of the
  predictions is timed apart; the targets' features are cached after the first round,
  as in `make repro` after a dataset's first evaluation);
- colourise (optional): `colourise --model ... --store columbia_fields...` (179 tiles).

`--before DIR` also measures the code in DIR (e.g. `git archive OLD | tar -x -C DIR`), with
DIR's own params.yaml, alternating with this checkout in every round, so the comparison is
same-run. Every
variant runs in its own scratch folder under bench/out/startup/ whose `data` is a link to
this repository's data/ (the align stage's datasets and the fetched tile stores must
exist: `dvc repro align@gray align@historic fetch@columbia_fields-columbia_2010`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "out" / "startup"
PROBE = ROOT / "bench" / "stage_probe.py"
STORE = "columbia_fields-columbia_2010"


def _run(cmd: list[str], cwd: Path, code_dir: Path, env_extra: dict[str, str] | None = None
         ) -> tuple[float, float, float, int, str]:
    """(start, exit, child CPU seconds, return code, stderr tail)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "LUMINESCENCE_THREADS")}
    env.update(PYTHONPATH=str(code_dir), DVC_NO_ANALYTICS="1", **(env_extra or {}))
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    end = time.perf_counter()
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return start, end, cpu, proc.returncode, proc.stderr[-1500:]


def bare_torch(code_dir: Path) -> dict[str, float]:
    start, end, cpu, rc, err = _run([sys.executable, "-c", "import torch"], ROOT, code_dir)
    if rc:
        raise RuntimeError(f"import torch failed: {err}")
    return {"wall": end - start, "cpu": cpu}


def _scratch(name: str, code_dir: Path) -> Path:
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    # Each variant runs with its own params.yaml: a change there (e.g. a batch size) is part
    # of what is compared.
    shutil.copy(code_dir / "params.yaml", work / "params.yaml")
    link = work / "data"
    if not link.exists():
        link.symlink_to(ROOT / "data", target_is_directory=True)
    return work


def stage(kind: str, args: list[str], work: Path, code_dir: Path) -> dict[str, Any]:
    marks_file = work / f"marks-{kind}.json"
    marks_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(PROBE), str(marks_file), kind, *args]
    start, end, cpu, rc, err = _run(cmd, work, code_dir)
    if rc or not marks_file.exists():
        raise RuntimeError(f"{kind} {' '.join(args)} in {code_dir} failed (exit {rc}): {err}")
    m = json.loads(marks_file.read_text())
    if "first_step" not in m:
        raise RuntimeError(f"{kind} ran no model step: {err}")
    before = m["first_step"] - start
    after = end - m["last_step_end"]
    # CPU seconds of the fixed phases: before the first step, and from the last step's end to
    # exit (the child's total CPU time from the parent, less what the probe saw used by then).
    cpu_fixed = m["first_step_cpu"] + (cpu - m["last_step_end_cpu"]) - m["extract_cpu"]
    return {"total": end - start, "to_first_step": before, "after_last_step": after,
            "work": m["last_step_end"] - m["first_step"], "extract": m["extract_s"],
            "fixed": before + after - m["extract_s"], "cpu": cpu, "cpu_fixed": cpu_fixed,
            "steps": m["steps"], "threads": m.get("torch_threads")}


def measure_round(variants: dict[str, Path], kinds: list[str], ablations: list[str],
                  order: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in order:
        code_dir = variants[name]
        work = _scratch(name, code_dir)
        row: dict[str, Any] = {"torch": bare_torch(code_dir)}
        for ablation in ablations:
            runs_dir = Path("runs") / ablation
            if "train" in kinds or not (work / runs_dir / "model.pt").exists():
                train_args = [ablation, "--steps", "3", "--no-resume", "--no-progress",
                              "--out", str(runs_dir)]
                trained = stage("train", train_args, work, code_dir)
                if "train" in kinds:  # else only a model for the evaluate stage, not a measurement
                    row[f"train:{ablation}"] = trained
            if "evaluate" in kinds:
                row[f"evaluate:{ablation}"] = stage("evaluate", [ablation, "--no-progress"], work, code_dir)
        if "colourise" in kinds:
            out_store = work / "colourised.mbtiles"
            out_store.unlink(missing_ok=True)
            row["colourise"] = stage(
                "colourise", ["--model", str(Path("runs") / ablations[0] / "model.pt"), "--store",
                              str(Path("data/tiles") / f"{STORE}.mbtiles"), "--out", str(out_store),
                              "--no-progress"], work, code_dir)
        row["torch_after"] = bare_torch(code_dir)
        out[name] = row
    return out


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant and measurement: the median of each field over the rounds."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for variant in rounds[0]:
        summary[variant] = {}
        for key in rounds[0][variant]:
            if key == "torch_after":
                continue
            samples = [r[variant][key] for r in rounds]
            if key == "torch":  # the bare import before and after each variant's stages
                samples += [r[variant]["torch_after"] for r in rounds]
            summary[variant][key] = {f: statistics.median(s[f] for s in samples)
                                     for f in samples[0] if isinstance(samples[0][f], int | float)}
    return summary


def report(summary: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace,
           loads: list[float]) -> str:
    lines = [
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `python -m bench.startup "
        f"{' '.join(args.argv)}` on {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; {args.rounds} rounds, variants alternating, medians; 1-minute load "
        f"average {min(loads):.1f}-{max(loads):.1f} during the run.",
        "",
        "Wall-clock seconds:",
        "",
        "| code | stage | total | start -> first step | last step -> exit | feature extraction in those "
        "| fixed cost | bare `import torch` | fixed - import torch | threads |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    cpu_lines = [
        "",
        "CPU seconds of the same processes (what the fixed phases cost without competition for the cores):",
        "",
        "| code | stage | process total | fixed phases | bare `import torch` | fixed - import torch |",
        "|---|---|---|---|---|---|",
    ]
    for variant, rows in summary.items():
        torch_s, torch_cpu = rows["torch"]["wall"], rows["torch"]["cpu"]
        for key, r in rows.items():
            if key == "torch":
                continue
            lines.append(
                f"| {variant} | {key} | {r['total']:.1f} | {r['to_first_step']:.1f} "
                f"| {r['after_last_step']:.1f} | {r['extract']:.1f} | {r['fixed']:.1f} | {torch_s:.1f} "
                f"| {r['fixed'] - torch_s:.1f} "
                f"| {r.get('threads', 0):.0f} |")
            cpu_lines.append(f"| {variant} | {key} | {r['cpu']:.1f} | {r['cpu_fixed']:.1f} | {torch_cpu:.1f} "
                             f"| {r['cpu_fixed'] - torch_cpu:.1f} |")
    lines += cpu_lines
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--kinds", default="train,evaluate",
                   help="comma-separated stage kinds: train, evaluate, colourise (default train,evaluate)")
    p.add_argument("--ablations", default="cyc_hist,p2p_unet_rgb_gray",
                   help="ablations of params.yaml to train/evaluate (default cyc_hist,p2p_unet_rgb_gray)")
    p.add_argument("--before", type=Path, default=None, metavar="DIR",
                   help="also measure the code in DIR (an export of an older revision), alternating")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    p.add_argument("--json", type=Path, default=None, help="also write every measurement as JSON")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(kinds) - {"train", "evaluate", "colourise"}
    if unknown:
        print(f"error: unknown stage kind(s) {', '.join(sorted(unknown))}; use train, evaluate, colourise",
              file=sys.stderr)
        return 2
    ablations = [a.strip() for a in args.ablations.split(",") if a.strip()]
    variants = {"this checkout": ROOT}
    if args.before is not None:
        if not (args.before / "pipeline" / "stages").is_dir():
            print(f"error: --before {args.before} holds no pipeline/stages; export an older revision there "
                  f"(git archive REV | tar -x -C DIR)", file=sys.stderr)
            return 2
        variants = {"before": args.before.resolve(), **variants}
    rounds, loads = [], []
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        loads.append(os.getloadavg()[0])
        rounds.append(measure_round(variants, kinds, ablations, order))
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds} done (load {loads[-1]:.1f})", file=sys.stderr, flush=True)
    if args.json:  # first: the raw measurements survive a failure in the summary
        args.json.write_text(json.dumps({"rounds": rounds, "loads": loads}, indent=1), encoding="utf-8")
    text = report(summarise(rounds), args, loads)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
