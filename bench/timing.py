"""Timing and machine-description helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], T], repeat: int = 3) -> tuple[float, T]:
    """(best wall-clock seconds over `repeat` calls, the last call's result): the best run is
    the least disturbed by other processes on a shared machine."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def cpu_model(default: str) -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else `default`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def shown_command(module: str, argv: list[str]) -> str:
    """`python -m module args` as a report shows it: without `--out FILE`, which names where
    this copy of the report was written (often a scratch path outside the repository)."""
    import shlex

    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            shown.append(arg)
    return shlex.join(["python", "-m", module, *shown])


def write_report(text: str, out: str) -> None:
    """Write a benchmark's Markdown report to `out` (its folder made if needed), or print it
    for `-`."""
    import sys

    if out == "-":
        print(text)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def set_memory_layout(model: Any, *, channels_last: bool) -> None:
    """Put every network of a model in channels_last (NHWC) or PyTorch's default layout, to time
    one against the other (pipeline/inference/layout.py chooses for the stages and the app)."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for net in model.nets.values():
        net.to(memory_format=fmt)
