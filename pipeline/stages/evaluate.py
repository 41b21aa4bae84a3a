"""Evaluate stage: colourise a dataset's held-out test split and score it.

    python -m pipeline.stages.evaluate ABLATION          # a trained model  -> metrics/ABLATION.json
    python -m pipeline.stages.evaluate --baseline NAME   # a baseline       -> metrics/baseline_NAME.json

Baselines go through the same scoring code as the models: `input` scores the grayscale
input itself as the prediction (the floor every colouriser must beat), `layer` scores
the tiles of another harvested layer at the test tiles (e.g. Academia Sinica's own AI
colourisation `taipei/Taipei_aerialphoto_1980_AI`, or the sample's real 2011 colours).
Each metric file records N, the dataset, the extractors with their weights' hashes and
resize methods (see eval.scores and docs/metrics.md), and whether the input is synthetic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.cpu import CpuPolicy
from pipeline.core.errors import cli_entry
from pipeline.results.evaluation import evaluate, summary_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.evaluate",
        description="Colourise a dataset's test split with a trained ablation (or score a baseline) "
                    "and write metrics/<name>.json and reports/samples/<name>.png.")
    parser.add_argument("name", help="an ablation of params.yaml (or, with --baseline, a baseline)")
    parser.add_argument("--baseline", action="store_true",
                        help="NAME is a key of `baselines` in params.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), metavar="FILE")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cpu = CpuPolicy.start()  # before torch loads (pipeline/core/cpu.py)
    from pipeline.core.config import load_params

    params = load_params(args.params)
    threads = cpu.apply()
    if threads.source != "kept":
        print(threads.describe(), file=sys.stderr)
    record = evaluate(args.name, params, baseline=args.baseline, progress=not args.no_progress)
    print(summary_line(("baseline " if args.baseline else "") + args.name, record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
