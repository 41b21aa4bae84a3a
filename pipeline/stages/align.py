"""The align stage: `python -m pipeline.stages.align DATASET` builds data/datasets/<DATASET>/.

For the dataset's entry in params.yaml `datasets:` it reads the target (modern colour) tile
store and, for input `historic`, the historic store; pairs tiles on the target's grid
(pipeline.datasets.pairing), estimates and applies each pair's misregistration
(pipeline.geo.registration), splits by spatial blocks (pipeline.datasets.splits) and writes:

- train.npy / val.npy / test.npy (N, 256, 256, 4) uint8: channel 0 input grey, 1-3 target
  RGB (pipeline.datasets.storage), and dataset.json;
- manifest.csv: one row per stored pair (split, index, tile, bounds, offset, sources);
- aligned/{train,val,test}/<z>_<x>_<y>.png (pix2pix A|B, 256x512) and
  unpaired/{train,val,test}{A,B}/ (CycleGAN-style folders), unless align.export_layouts is false;
- figures/offsets.png, figures/split_map.png, figures/contact_sheet.png;
- summary.json: counts, drop reasons, luma formula, offset statistics, layers, synthetic flag.

Everything is written into a hidden temporary folder beside the dataset, dataset.json last,
and the folder is renamed into place at the end: a killed run never leaves a dataset that
looks complete, and the previous dataset stays until the new one is whole.
"""

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
        prog="python -m pipeline.stages.align",
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
