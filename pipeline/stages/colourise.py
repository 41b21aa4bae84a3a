"""Colourise a harvested area with a trained model, without seams between tiles.

    python -m pipeline.stages.colourise --model runs/ABLATION/model.pt --store AREA.mbtiles \\
        --out AREA_colour.mbtiles [--geotiff AREA_colour.tif] [--preview AREA.png]

The input is any tile store (a fetch stage's output, or `python -m pipeline.stages.fetch harvest`
for a new area). Each tile is colourised inside a larger window made of its neighbours
(`--margin` pixels on every side) and only the centre is kept: the generator sees the
same context across a tile edge from both sides, so the mosaic shows no tile seams (the
reference implementations colourise tiles one by one, and their zero padding shows).
Colour input tiles (a modern layer) are converted to gray with the align stage's luma
first, and the output says so. Output tiles keep the input's transparency and its
z/x/y, so the GeoTIFF mosaic carries EPSG:3857 and the exact tile bounds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.cpu import CpuPolicy
from pipeline.core.errors import cli_entry
from pipeline.inference.colourise import ColouriseError, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.colourise",
        description="Colourise every tile of a tile store (MBTiles) with a trained model, seamlessly, "
                    "into a new MBTiles (and optionally a GeoTIFF mosaic and a preview PNG).",
        epilog="A new area: first `python -m pipeline.stages.fetch harvest ... --out AREA.mbtiles`.")
    parser.add_argument("--stage", action="store_true",
                        help="the dvc.yaml stage: model, store and margin from params.yaml `colourise`, "
                             "outputs in data/colourised/ and reports/colourised/")
    parser.add_argument("--model", type=Path, help="runs/ABLATION/model.pt")
    parser.add_argument("--store", type=Path, help="input tile store (.mbtiles)")
    parser.add_argument("--out", type=Path, help="output tile store (.mbtiles)")
    parser.add_argument("--geotiff", type=Path, default=None, help="also write a GeoTIFF mosaic")
    parser.add_argument("--preview", type=Path, default=None, help="also write a preview PNG")
    parser.add_argument("--margin", type=int, default=None,
                        help="context pixels around each tile (default: the smallest >= 32 that fits the "
                             "generator)")
    parser.add_argument("--luma", choices=["rec601", "rec709"], default="rec601",
                        help="gray conversion for colour input tiles (default rec601, as align)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--no-progress", action="store_true")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cpu = CpuPolicy.start()  # before torch loads (pipeline/core/cpu.py)
    if args.stage:
        from pipeline.core.config import load_params
        from pipeline.core.paths import COLOURISED_DIR, REPORTS_DIR, RUNS_DIR, store_path

        cfg = load_params().colourise
        if cfg is None:
            raise ColouriseError("params.yaml has no `colourise` section (ablation, store)")
        args.model = RUNS_DIR / cfg.ablation / "model.pt"
        args.store = store_path(cfg.store)
        args.out = COLOURISED_DIR / f"{cfg.store}.mbtiles"
        args.geotiff = COLOURISED_DIR / f"{cfg.store}.tif"
        args.preview = REPORTS_DIR / "colourised" / f"{cfg.store}.png"
        args.margin = cfg.margin
        args.out.unlink(missing_ok=True)  # a stage re-run starts over (model or area changed)
    elif not (args.model and args.store and args.out):
        parser.error("--model, --store and --out are required (or --stage)")
    threads = cpu.apply()
    if threads.source != "kept":
        print(threads.describe(), file=sys.stderr)
    print(run(args.model, args.store, args.out, geotiff=args.geotiff, preview=args.preview,
              margin=args.margin, luma=args.luma, device_name=args.device, batch_size=args.batch_size,
              progress=not args.no_progress))
    return 0


if __name__ == "__main__":
    sys.exit(main())
