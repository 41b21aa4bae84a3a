"""Command line of the evaluate stage (what it scores and writes: pipeline.results.evaluation).

    luminescence evaluate ABLATION          # a trained model  -> metrics/ABLATION.json
    luminescence evaluate --baseline NAME   # a baseline       -> metrics/baseline_NAME.json
    luminescence evaluate --trained NAME    # e.g. the release model -> metrics/model_NAME.json

Baselines go through the same scoring code as the models: `input` scores the grayscale
input itself (the floor every colouriser must beat), `lut` and `transfer` colour it from
the train split's statistics alone, `layer` scores the tiles of another harvested layer
(e.g. Academia Sinica's own AI colourisation, or the sample's real 2011 colours).
metrics/<name>.json holds the headline numbers; reports/evaluation/<name>.json their
intervals, N, the extractors' provenance and the rest (pipeline/results/evaluation.py).
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
        prog="luminescence evaluate",
        description="Colourise a dataset's test split and held-out area with a trained ablation (or "
                    "score a baseline) and write metrics/<name>.json (headline numbers), "
                    "reports/evaluation/<name>.json and .npz (intervals, provenance, bootstrap "
                    "replicates) and reports/samples/<name>.png.")
    parser.add_argument("name", help="an ablation of params.yaml (or, with --baseline, a baseline)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--baseline", action="store_true",
                      help="NAME is a key of `baselines` in params.yaml")
    kind.add_argument("--trained", action="store_true",
                      help="NAME is a key of `trained_models` in params.yaml (e.g. the release model) "
                           "-> metrics/model_NAME.json")
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
    record = evaluate(args.name, params, baseline=args.baseline, trained=args.trained,
                      progress=not args.no_progress)
    label = "baseline " if args.baseline else "trained model " if args.trained else ""
    print(summary_line(label + args.name, record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
