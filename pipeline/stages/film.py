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
        description="Build the SYNTHETIC 'historic' film layer (a grayscale film emulation of "
        "sample.film.source_layer, parameters from params.yaml sample.film). It is not a real "
        "historic photograph. Rebuilt only when the parameters or the source rasters change.")
    parser.add_argument("--out", type=Path, default=None,
                        help="GeoTIFF to write (default: <sample.derived_dir>/<source_layer>_film.tif)")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the file is up to date")
    args = parser.parse_args(argv)
    sample = load_params(args.params).sample
    target = args.out or film_path(sample)
    before = _existing_hash(target) if target.exists() else None
    path = build_film_layer(sample, args.out, force=args.force)
    after = _existing_hash(path)
    state = "up to date" if before == after and not args.force else "wrote"
    print(f"{state}: {path} ({SYNTHETIC_NOTE.format(src=sample.film.source_layer)}; params hash {after})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
