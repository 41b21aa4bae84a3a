"""Training-run noise: how far an ablation's scores move when only the training seed changes,
against the width of one run's bootstrap interval (which covers the choice of tiles only).

    .venv/bin/python -m bench.seed_spread [--ablations p2p_unet_lab_gray cut_gray] [--seeds 1 2 3]
        [--out docs/benchmarks/seed_spread.md]   (--out - prints the report instead)

Each (ablation, seed) is trained and scored by the stages' own commands (`pipeline.stages.train`
and `pipeline.stages.evaluate`) in a scratch folder whose params.yaml is this checkout's with
`train.seed` changed; data/ and aoi/ are linked from this checkout and only read, so its runs/,
metrics/ and reports/ are never touched (the targets' feature cache, .cache/features, is
shared). Seed `train.seed` itself is this checkout's own run, read from
reports/evaluation/ABLATION.json. Needs `dvc repro` (datasets, tile stores, those runs) first.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.timing import shown_command, write_report

# (column, area, key in the evaluation file's values / intervals)
SCORES = [("test ΔE2000", "test", "delta_e2000_mean"), ("held-out ΔE2000", "heldout", "delta_e2000_mean"),
          ("test FID", "test", "fid"), ("held-out FID", "heldout", "fid")]
LINKED = ("data", "aoi")


def seeded_params(params: dict[str, Any], ablation: str, seed: int) -> dict[str, Any]:
    """params.yaml's content with `train.seed` set to `seed` (nothing else changes)."""
    if ablation not in params.get("ablations", {}):
        raise SystemExit(f"error: {ablation!r} is not an ablation of params.yaml")
    out = copy.deepcopy(params)
    out["train"]["seed"] = seed
    return out


def scores(evaluation: dict[str, Any]) -> dict[str, tuple[float, tuple[float, float] | None]]:
    """Each SCORES column's value and 95% interval from an evaluation file."""
    out = {}
    for column, area, key in SCORES:
        part = evaluation["areas"][area]
        interval = part.get("intervals", {}).get(key)
        out[column] = (float(part["values"][key]), tuple(interval) if interval else None)
    return out


def spread_ratio(values: list[float], interval: tuple[float, float]) -> float:
    """The seeds' range over the width of one run's interval (1: as wide; >1: wider)."""
    return (max(values) - min(values)) / (interval[1] - interval[0])


def scratch_run(root: Path, params: dict[str, Any], ablation: str) -> tuple[dict[str, Any], float]:
    """Train and score `ablation` with `params` in a scratch folder: (its evaluation file, seconds)."""
    with tempfile.TemporaryDirectory(prefix="seed-spread-") as tmp:
        folder = Path(tmp)
        for name in LINKED:
            (folder / name).symlink_to(root / name, target_is_directory=True)
        cache = root / ".cache"
        cache.mkdir(exist_ok=True)
        (folder / ".cache").symlink_to(cache, target_is_directory=True)
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        start = time.perf_counter()
        for stage in ("train", "evaluate"):
            command = [sys.executable, "-m", f"pipeline.stages.{stage}", ablation, "--no-progress"]
            done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
                raise SystemExit(f"error: {stage} {ablation} failed: {tail[0]}")
        seconds = time.perf_counter() - start
        evaluation = json.loads((folder / "reports" / "evaluation" / f"{ablation}.json").read_text())
    return evaluation, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ablations", nargs="+", default=["p2p_unet_lab_gray", "cut_gray"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3],
                        help="seeds to train with besides params.yaml's own (default 1 2 3)")
    parser.add_argument("--out", default="docs/benchmarks/seed_spread.md",
                        help="Markdown report; - prints it")
    args = parser.parse_args(argv)
    root = Path.cwd()
    params = yaml.safe_load((root / "params.yaml").read_text())
    own_seed = int(params["train"]["seed"])
    if own_seed in args.seeds:
        parser.error(f"--seeds: {own_seed} is params.yaml's own train.seed (read from this checkout)")
    rows: list[str] = []
    summary: list[str] = []
    for ablation in args.ablations:
        committed = root / "reports" / "evaluation" / f"{ablation}.json"
        seeded_params(params, ablation, own_seed)  # the ablation exists
        if not committed.is_file():
            parser.error(f"{committed} not found: run `dvc repro evaluate@{ablation}` first")
        runs = {own_seed: (scores(json.loads(committed.read_text())), 0.0)}
        for seed in args.seeds:
            evaluation, seconds = scratch_run(root, seeded_params(params, ablation, seed), ablation)
            runs[seed] = (scores(evaluation), seconds)
            print(f"{ablation} seed {seed}: trained and scored in {seconds:.0f} s", file=sys.stderr)
        for seed, (values, seconds) in runs.items():
            cells = [f"{v:.2f} [{i[0]:.2f}, {i[1]:.2f}]" if i else f"{v:.2f}" for v, i in values.values()]
            own = " (this checkout's run)" if seed == own_seed else f" ({seconds:.0f} s)"
            rows.append(f"| `{ablation}` | {seed}{own} | " + " | ".join(cells) + " |")
        base = runs[own_seed][0]
        ratios = []
        for column, _, _ in SCORES:
            per_seed = [r[0][column][0] for r in runs.values()]
            interval = base[column][1]
            ratio = f", {spread_ratio(per_seed, interval):.1f}x the width of one run's interval" \
                if interval else ""
            ratios.append(f"{column} {min(per_seed):.2f}-{max(per_seed):.2f}{ratio}")
        summary.append(f"- `{ablation}` over {len(runs)} seeds: " + "; ".join(ratios) + ".")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Training-run noise: the same ablation with other seeds ({now})", "",
             f"`{shown_command('bench.seed_spread', sys.argv[1:] if argv is None else argv)}`: each "
             "ablation trained and scored again by the stages' own commands with only `train.seed` "
             "changed, on the same tiles (test split N = 108, held-out area N = 152 on the sample). "
             "Intervals: 95% bootstrap over tiles, as the report gives them.", "",
             "| ablation | seed | " + " | ".join(c for c, _, _ in SCORES) + " |",
             "|---|---|" + "---:|" * len(SCORES), *rows, "", *summary, ""]
    write_report("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
