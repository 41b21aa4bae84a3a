"""The `luminescence` command: one subcommand per stage CLI.

    luminescence fetch harvest --wmts URL --layer ID --aoi AREA.shp --zoom 17 --out AREA.mbtiles
    luminescence colourise --model runs/ABLATION/model.pt --store AREA.mbtiles --out AREA_colour.mbtiles

`luminescence STAGE ARGS…` is exactly `python -m pipeline.stages.STAGE ARGS…`: the stage's
own parser reads the arguments (so `luminescence STAGE --help` is that stage's help), and
only the chosen stage's module is imported, so a subcommand starts as fast as its module.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line purpose); the modules are imported only when chosen
COMMANDS: dict[str, tuple[str, str]] = {
    "film": ("pipeline.stages.film", "make the SYNTHETIC film layers of the bundled sample"),
    "fetch": ("pipeline.stages.fetch", "list a WMTS's layers, harvest an AOI, or run a fetch stage"),
    "align": ("pipeline.stages.align", "pair, register and split one dataset of params.yaml"),
    "train": ("pipeline.stages.train", "train one ablation of params.yaml"),
    "evaluate": ("pipeline.stages.evaluate", "score an ablation or baseline: test split and held-out area"),
    "report": ("pipeline.stages.report", "write reports/summary.md and its figures"),
    "colourise": ("pipeline.stages.colourise", "colourise a tile store with a trained model"),
    "serve": ("pipeline.stages.serve", "serve the bundled sample as a loopback WMTS"),
    "app": ("pipeline.stages.app", "the web app: historic layers colourised live on a map"),
    "aoi": ("pipeline.stages.aoi", "describe an area of interest (bounds, tile counts per zoom)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {purpose}" for name, (_, purpose) in COMMANDS.items())
    return ("usage: luminescence COMMAND [ARGS...]\n\n"
            "Colourise historic aerial photographs; each command is a stage of dvc.yaml or a tool.\n\n"
            f"commands:\n{rows}\n\n"
            "`luminescence COMMAND --help` shows a command's options.")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"luminescence {name}"
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
