"""Command line of the report stage, `luminescence report`: reports/summary.md with the study's
tables, intervals, baselines and verdicts, and reports/figures/ (pipeline.results.report).

It reads the evaluation records (reports/evaluation/<name>.json and .npz) of the ablations and
baselines that params.yaml defines NOW (records of removed ablations may linger on disk; they
are ignored) and the training curves logged by DVCLive.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.errors import cli_entry
from pipeline.results.report import load_entries, write_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luminescence report",
        description="Write reports/summary.md (tables with intervals, held-out area, baselines, "
                    "verdicts on the study's claims) and reports/figures/*.png from the evaluation "
                    "records of the ablations and baselines in params.yaml.")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), metavar="FILE")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.core.config import load_params

    params = load_params(args.params)
    path = write_report(params)
    entries, missing = load_entries(params)
    print(f"wrote {path}: {len(entries)} scored ({len(missing)} missing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
