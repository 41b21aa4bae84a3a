"""Command line of the align stage: `luminescence align DATASET` builds data/datasets/<DATASET>/
(what it pairs, registers, splits and writes: pipeline.datasets.build)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.core.config import load_params
from pipeline.core.errors import cli_entry
from pipeline.core.paths import DATASETS_DIR, TILES_DIR
from pipeline.datasets.build import build_dataset


# --------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="luminescence align",
        description="Pair, register and split the tiles of one dataset of params.yaml `datasets:` "
                    "into data/datasets/<DATASET>/ (the DVC stage align@DATASET).")
    parser.add_argument("dataset", help="a key of params.yaml `datasets:` (e.g. gray, historic)")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--tiles-dir", type=Path, default=TILES_DIR,
                        help=f"folder of the harvested tile stores (default: {TILES_DIR})")
    parser.add_argument("--out-dir", type=Path, default=DATASETS_DIR,
                        help=f"folder of the datasets (default: {DATASETS_DIR})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = load_params(args.params)
    build_dataset(args.dataset, params, tiles_dir=args.tiles_dir, out_dir=args.out_dir,
                  progress=not args.no_progress)


if __name__ == "__main__":
    main()
