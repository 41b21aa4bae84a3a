"""Train the release model: `python -m pipeline.stages.release` (the frozen dvc.yaml `release`
stage; `make release` runs it).

Reads `release` in params.yaml, trains the model on the sample's training layers with film
augmentation, keeps the weights chosen on the validation area, scores the held-out area
and writes release/: model.pt, options.json, curves.tsv, curves.png, metrics.json and
MODEL_CARD.md (generated from the run). Those files are committed to git.
`--norm-stats-only` gathers the instance norms' fixed statistics (`release.norm_stats`) for the
model already there and scores it again, without retraining. `--steps N` runs a short schedule
of N iterations (a check of the whole stage; then write to another --out folder, not over the
committed release).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.errors import cli_entry
from pipeline.core.paths import RELEASE_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.release",
        description="Train the release model (params.yaml `release`), score it on the held-out area and "
                    "write release/ with its generated model card.")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="total iterations instead of release.steps + decay_steps (short checks)")
    parser.add_argument("--out", type=Path, default=RELEASE_DIR, metavar="DIR",
                        help=f"output folder (default: {RELEASE_DIR})")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), metavar="FILE")
    parser.add_argument("--max-minutes", type=float, default=None, metavar="M",
                        help="stop training after M minutes of wall time (validates once more and keeps the "
                             "best validated weights; the model card says where it stopped)")
    parser.add_argument("--score-only", action="store_true",
                        help="do not train: score the model already in --out and rewrite its metrics, curves "
                             "and model card")
    parser.add_argument("--norm-stats-only", action="store_true",
                        help="do not train: gather the instance norms' fixed statistics (release.norm_stats) "
                             "for the model already in --out, then score it as --score-only does")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.core.config import load_params
    from pipeline.results.release_card import fix_release_norm_stats, run_release, score_release, summary_line

    params = load_params(args.params)
    if args.score_only and args.norm_stats_only:
        raise SystemExit("error: --score-only and --norm-stats-only exclude each other (--norm-stats-only "
                         "also scores)")
    if args.norm_stats_only:
        record = fix_release_norm_stats(params, args.out, progress=not args.no_progress)
    elif args.score_only:
        record = score_release(params, args.out)
    else:
        record = run_release(params, args.out, steps=args.steps, progress=not args.no_progress,
                             max_minutes=args.max_minutes)
    print(summary_line(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
