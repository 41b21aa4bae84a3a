"""Command line of the colourise stage (how tiles are colourised without seams:
pipeline.inference.colourise).

    luminescence colourise --model release/model.pt --store AREA.mbtiles \\
        --out AREA_colour.mbtiles [--geotiff AREA_colour.tif] [--preview AREA.png]
    luminescence colourise --stage      # what dvc.yaml runs: params.yaml `colourise`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.cpu import CpuPolicy
from pipeline.core.errors import cli_entry
from pipeline.core.paths import RELEASE_DIR
from pipeline.inference.colourise import ColouriseError, run


def _count(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


NORM_STATS_WINDOWS = 64
# Options that --stage takes from params.yaml instead (option -> key of `colourise`, or where set).
STAGE_SETS = {"model": "colourise.model", "store": "colourise.store", "out": "colourise.store",
              "geotiff": "colourise.store", "preview": "colourise.store", "margin": "colourise.margin",
              "norm_stats": "colourise.norm_stats", "norm_stats_windows": "colourise.norm_stats_windows"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luminescence colourise",
        description="Colourise every tile of a tile store (MBTiles) with a trained model, seamlessly, "
                    "into a new MBTiles (and optionally a GeoTIFF mosaic and a preview PNG).",
        epilog="A new area: first `luminescence fetch harvest ... --out AREA.mbtiles`.")
    parser.add_argument("--stage", action="store_true",
                        help="the dvc.yaml stage: model, store, margin and norm statistics from params.yaml "
                             "`colourise`, "
                             "outputs in data/colourised/ and reports/colourised/")
    parser.add_argument("--model", type=Path, default=None,
                        help=f"a model file: the release model (default: {RELEASE_DIR / 'model.pt'}) or "
                             "runs/ABLATION/model.pt")
    parser.add_argument("--store", type=Path, help="input tile store (.mbtiles)")
    parser.add_argument("--out", type=Path, help="output tile store (.mbtiles)")
    parser.add_argument("--geotiff", type=Path, default=None, help="also write a GeoTIFF mosaic")
    parser.add_argument("--preview", type=Path, default=None, help="also write a preview PNG")
    parser.add_argument("--margin", type=lambda t: _count(t, 1), default=None,
                        help="context pixels around each tile, 1 to 128; tiles are cross-faded with their "
                             "neighbours within them (default: the smallest >= 32 that fits the generator)")
    parser.add_argument("--luma", choices=["rec601", "rec709"], default=None,
                        help="gray conversion for colour input tiles (default: rec601; with --stage, "
                             "params.yaml align.luma, the one the models were trained on)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.add_argument("--batch-size", type=lambda t: _count(t, 1), default=2,
                        help="tiles per model call (default 2: fastest per tile on a CPU, "
                             "docs/benchmarks/inference_layout.md; more on a GPU)")
    parser.add_argument("--norm-stats", choices=["area", "model"], default=None,
                        help="instance norms (the release model's decoder): the area's own statistics, "
                             "gathered over --norm-stats-windows of its windows, for every tile (default: "
                             "no seams), or as the model file has them (each window's own)")
    parser.add_argument("--norm-stats-windows", type=lambda t: _count(t, 1), default=None, metavar="N",
                        help="windows, spread over the area, for --norm-stats area "
                             f"(default: {NORM_STATS_WINDOWS})")
    parser.add_argument("--no-progress", action="store_true")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cpu = CpuPolicy.start()  # before torch loads (pipeline/core/cpu.py)
    if args.stage:
        from pipeline.core.config import load_params
        from pipeline.core.paths import COLOURISED_DIR, REPORTS_DIR, store_path

        given = [name for name in STAGE_SETS if getattr(args, name) is not None]
        if given:  # never silently replaced by params.yaml
            flag = "--" + given[0].replace("_", "-")
            raise ColouriseError(f"{flag} cannot be combined with --stage, which takes it from params.yaml "
                                 f"`{STAGE_SETS[given[0]]}`: edit params.yaml, or drop --stage and name "
                                 "--store and --out")
        params = load_params()
        cfg = params.colourise
        if cfg is None:
            raise ColouriseError("params.yaml has no `colourise` section (model, store)")
        # The models saw gray made with align.luma: a colour input must be converted the same way.
        if args.luma is not None and args.luma != params.align.luma:
            raise ColouriseError(f"--luma {args.luma} differs from params.yaml align.luma "
                                 f"({params.align.luma}), which the models were trained on; drop --luma")
        args.luma = params.align.luma
        args.model = Path(cfg.model)
        args.store = store_path(cfg.store)
        args.out = COLOURISED_DIR / f"{cfg.store}.mbtiles"
        args.geotiff = COLOURISED_DIR / f"{cfg.store}.tif"
        args.preview = REPORTS_DIR / "colourised" / f"{cfg.store}.png"
        args.margin = cfg.margin
        args.norm_stats, args.norm_stats_windows = cfg.norm_stats, cfg.norm_stats_windows
        args.out.unlink(missing_ok=True)  # a stage re-run starts over (model or area changed)
    else:
        if not (args.store and args.out):
            parser.error("--store and --out are required (or --stage)")
        if args.norm_stats == "model" and args.norm_stats_windows is not None:
            parser.error("--norm-stats-windows applies to --norm-stats area only; drop one of them")
        args.model = args.model or RELEASE_DIR / "model.pt"
        args.norm_stats = args.norm_stats or "area"
        args.norm_stats_windows = args.norm_stats_windows or NORM_STATS_WINDOWS
    threads = cpu.apply()
    if threads.source != "kept":
        print(threads.describe(), file=sys.stderr)
    print(run(args.model, args.store, args.out, geotiff=args.geotiff, preview=args.preview,
              margin=args.margin, luma=args.luma or "rec601", device_name=args.device,
              batch_size=args.batch_size, progress=not args.no_progress,
              norm_stats_windows=args.norm_stats_windows if args.norm_stats == "area" else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
