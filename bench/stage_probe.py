"""Run one stage CLI in this process and note when its real work starts and ends.

    python bench/stage_probe.py MARKS.json KIND [STAGE ARGS...]     (KIND: train | evaluate | colourise)

Used by bench/startup.py, which runs it with PYTHONPATH set to the code under test (this
repository, or a checkout of an older revision), so it imports nothing of the project
itself before the stage does, and nothing but the standard library (the stage must be the
first to load torch: it sets OpenMP's environment before that).

The marks are CLOCK_MONOTONIC readings (time.perf_counter on Linux), comparable with the
parent process's: the first and last model step (`train_step` for training; `colourise`
for evaluation and colourisation) and the time spent in feature extraction
(eval.extractors.FeatureExtractor.extract) before the first or after the last model step
(extraction between steps is part of the work, not of the fixed phases), each also as this process's CPU time
(time.process_time), which a loaded machine disturbs much less than wall-clock time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

MARKS: dict[str, Any] = {"steps": 0, "extract_spans": []}
_depth = {"step": 0, "extract": 0}


def _timed_step(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        outer = _depth["step"] == 0  # variants calling their parent's method count once
        _depth["step"] += 1
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _depth["step"] -= 1
            if outer:
                MARKS.setdefault("first_step", t0)
                MARKS.setdefault("first_step_cpu", c0)
                MARKS["last_step_end"] = time.perf_counter()
                MARKS["last_step_end_cpu"] = time.process_time()
                MARKS["steps"] += 1
    return wrapper


def _timed_extract(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        outer = _depth["extract"] == 0
        _depth["extract"] += 1
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _depth["extract"] -= 1
            if outer:
                MARKS["extract_spans"].append((t0, time.perf_counter(), c0, time.process_time()))
    return wrapper


def _outside(start: float, end: float, first: float | None, last: float | None) -> float:
    """How much of [start, end] lies before `first` or after `last` (the model-step window)."""
    if first is None or last is None:
        return end - start
    return max(0.0, min(end, first) - start) + max(0.0, end - max(start, last))


def _extraction_outside_steps() -> None:
    # evaluation extracts features between model steps too; only what runs before the first
    # step or after the last one counts against the fixed phases
    spans = MARKS["extract_spans"]
    MARKS["extract_total_s"] = sum(t1 - t0 for t0, t1, _, _ in spans)
    MARKS["extract_s"] = sum(_outside(t0, t1, MARKS.get("first_step"), MARKS.get("last_step_end"))
                             for t0, t1, _, _ in spans)
    MARKS["extract_cpu"] = sum(_outside(c0, c1, MARKS.get("first_step_cpu"), MARKS.get("last_step_end_cpu"))
                               for _, _, c0, c1 in spans)


def _patch_models_base(module: ModuleType, method: str) -> None:
    """Time `method` of every GANModel subclass defined from now on."""
    base = module.GANModel
    original = base.__dict__.get("__init_subclass__")

    def init_subclass(cls: type, **kwargs: Any) -> None:
        if original is not None:
            original.__func__(cls, **kwargs)
        else:
            super(base, cls).__init_subclass__(**kwargs)
        if method in cls.__dict__:
            setattr(cls, method, _timed_step(cls.__dict__[method]))

    base.__init_subclass__ = classmethod(init_subclass)


def _patch_extractors(module: ModuleType) -> None:
    cls = module.FeatureExtractor
    cls.extract = _timed_extract(cls.extract)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `hooks[name](module)` right after module `name` has executed."""

    def __init__(self, hooks: dict[str, Callable[[ModuleType], None]]) -> None:
        self.hooks = hooks

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.hooks:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader, hook = spec.loader, self.hooks.pop(name)
        exec_module = loader.exec_module

        def exec_and_hook(module: ModuleType) -> None:
            exec_module(module)
            hook(module)

        loader.exec_module = exec_and_hook  # type: ignore[method-assign]
        return spec


def main(argv: list[str]) -> int:
    marks_path, kind, stage_args = argv[0], argv[1], argv[2:]
    MARKS["start"] = time.perf_counter()
    method = "train_step" if kind == "train" else "colourise"
    hooks: dict[str, Callable[[ModuleType], None]] = {
        "models.base": lambda m: _patch_models_base(m, method)}
    if kind == "evaluate":
        hooks["eval.extractors"] = _patch_extractors
    sys.meta_path.insert(0, _AfterImport(hooks))
    stage = importlib.import_module(f"pipeline.stages.{kind}")
    try:
        code = stage.main(stage_args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    MARKS["main_end"] = time.perf_counter()
    _extraction_outside_steps()
    MARKS["torch_threads"] = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    with open(marks_path, "w", encoding="utf-8") as fh:
        json.dump(MARKS, fh)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
