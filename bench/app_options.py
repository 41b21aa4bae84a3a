"""What the web app's benchmarks share: the options that choose the view, the model and the
sample's cached layers, and the scratch data folder each run starts from."""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.timing import shown_command
from pipeline.core.config import Params

OUT = Path("bench/out")


def add_app_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--view", default=None, help="a view of params.yaml app.views (default: the first)")
    parser.add_argument("--model", default=None, help="model.pt (default: the view's, else app.model)")
    parser.add_argument("--derived", default=str(OUT / "derived"),
                        help="the sample's cached layers (built once, not timed)")


def view_name(params: Params, view: str | None) -> str:
    """The view asked for, or the first of params.yaml app.views."""
    if params.app is None or not params.app.views:
        raise SystemExit("error: params.yaml has no app.views to open")
    if view is not None and view not in params.app.views:
        raise SystemExit(f"error: no view '{view}' in params.yaml app.views "
                         f"(views: {', '.join(params.app.views)})")
    return view or next(iter(params.app.views))


def fresh_data_dir(prefix: str) -> str:
    """A new, empty data folder under bench/out (empty tile cache and stores: everything cold),
    removed when the benchmark exits: each holds the tiles of one cold run, and the runs add up."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix=prefix, dir=OUT)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def report_header(title: str, module: str, *, load_before: float, load_after: float,
                  extra: str = "") -> list[str]:
    """A report's title (with the time) and the line that says how and where it was measured."""
    import torch

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [f"# {title} ({stamp})", "",
            f"`{shown_command(module, sys.argv[1:])}` on {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, torch {torch.__version__}{extra}; load average "
            f"{load_before:.2f} before, {load_after:.2f} after (shared machine).", ""]
