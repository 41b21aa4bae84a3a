"""Command line of pipeline.sample.film: see its docstring."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.errors import cli_entry
from pipeline.sample.film import SYNTHETIC_NOTE, _existing_hash, build_film_layer, film_path


# --------------------------------------------------------------------------- CLI
@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.core.config import PARAMS_FILE, load_params

    parser = argparse.ArgumentParser(
        prog="luminescence film",
        description="Build the SYNTHETIC 'historic' film layers (grayscale film emulations of each of "
        "sample.film.source_layers, parameters from params.yaml sample.film). They are not real "
        "historic photographs. Each is rebuilt only when the parameters or its source rasters change.")
    parser.add_argument("--out", type=Path, default=None,
                        help="GeoTIFF to write, with --layer (default: <derived_dir>/<layer>_film.tif)")
    parser.add_argument("--layer", default=None,
                        help="build only this source layer (default: every one of sample.film.source_layers)")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the file is up to date")
    args = parser.parse_args(argv)
    sample = load_params(args.params).sample
    if args.out is not None and args.layer is None and len(sample.film.source_layers) > 1:
        parser.error("--out needs --layer (sample.film.source_layers names several layers)")
    for layer in [args.layer] if args.layer else sample.film.source_layers:
        target = args.out or film_path(sample, layer)
        before = _existing_hash(target) if target.exists() else None
        path = build_film_layer(sample, args.out, force=args.force, source_layer=layer)
        after = _existing_hash(path)
        state = "up to date" if before == after and not args.force else "wrote"
        print(f"{state}: {path} ({SYNTHETIC_NOTE.format(src=layer)}; params hash {after})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
