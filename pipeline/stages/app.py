"""The web app: `python -m pipeline.stages.app [--port 8000] [--host 127.0.0.1] [--model PATH]`.

Serves the map page: each view of params.yaml `app.views` shows its historic layer colourised
live by a model, swiped against the original and the modern photo; "download this view" gives a
Cloud-Optimized GeoTIFF; a scanned photo can be uploaded and comes back colourised. The same
server answers the bundled sample's WMTS requests. It listens on 127.0.0.1 unless --host says
otherwise, and writes only under app.data_dir (default data/app).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.app import AREA_WINDOWS
from pipeline.core.config import PARAMS_FILE, load_params
from pipeline.core.errors import LuminescenceError, cli_entry
from pipeline.inference.layout import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.app",
        description="Serve the web app: historic aerial photos colourised live on a map, swiped against "
                    "the original and the modern photo (views: params.yaml app.views).")
    parser.add_argument("--port", type=int, default=None,
                        help="TCP port (default: app.port in params.yaml, 8000; 0 = any free port)")
    parser.add_argument("--host", default=None,
                        help="interface to listen on (default: app.host, 127.0.0.1 = this machine only); "
                             "0.0.0.0 exposes the app to the network deliberately")
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="model.pt for every view (default: each view's model, else app.model)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="where the app keeps colourised tiles, exports and uploads "
                             "(default: app.data_dir)")
    parser.add_argument("--model-workers", type=int, default=None, metavar="N",
                        help="forward passes run side by side (default: on the CPU one per core, at most 4, "
                             "splitting torch's threads between them; 1 on a GPU)")
    parser.add_argument("--norm-stats-windows", type=int, default=None, metavar="N",
                        help="a model with instance norms (the release model) colours each view with "
                             "statistics of N windows spread over its area, so tiles match (default: "
                             f"{AREA_WINDOWS}; 0: each window's own statistics)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="the model's passes: auto (bfloat16 where this CPU runs it at least 1.2x "
                             "faster, timed as the app starts), fp32 or bf16 (default: app.precision, auto)")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise LuminescenceError(f"--port {args.port} is not a TCP port (0-65535)")
    if args.norm_stats_windows is not None and args.norm_stats_windows < 0:
        raise LuminescenceError(f"--norm-stats-windows {args.norm_stats_windows}: give 0 or more")
    if args.model_workers is not None and args.model_workers < 1:
        raise LuminescenceError(f"--model-workers {args.model_workers}: give at least 1 (or leave it out "
                                f"to let the app choose)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    params = load_params(args.params)
    if params.app is None:
        raise LuminescenceError(f"{args.params} has no `app` section (views, model); see README.md 'Web app'")
    if args.precision is not None:
        app_cfg = params.app.model_copy(update={"precision": args.precision})
        params = params.model_copy(update={"app": app_cfg})
    from pipeline.app.serve import WebApp

    print("starting the web app (the first start builds the sample's cached layers)…", flush=True)
    web = WebApp(params, host=args.host, port=args.port, model=args.model, data_dir=args.data_dir,
                 access_log=args.verbose, model_workers=args.model_workers,
                 area_windows=args.norm_stats_windows)
    for view in web.state.views.values():
        note = (f"model {view.model_path}, {view.colour.runner.precision}" if view.colour
                else f"NO colourised layer: {view.model_error}")
        print(f"  view {view.name}: {view.cfg.title} ({note})")
    print(f"Luminescence web app: {web.url}  (Ctrl-C to stop)", flush=True)
    web.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
