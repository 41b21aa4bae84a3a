"""One trained model behind a queue: context windows from concurrent requests share forward passes.

Every window a model sees has one size (256 + 2 x margin pixels), whether it comes from a map
tile or from a block of an uploaded photo, so windows of different requests stack into one
batch. A worker thread takes the first waiting window, gathers more for at most `wait_s` (up
to `batch_size`), runs them together and hands each caller its result. Map tiles go before
upload blocks (priority), so an upload never holds up the map.

On the CPU several workers run the model side by side, sharing the cores: the release
model's depthwise convolutions keep two threads of one pass poorly busy, so two one-thread
passes get through a view's windows sooner than one two-thread pass. A pass that runs alone
(nothing else running or waiting) gets every core, so a lone tile is not slowed down. torch
has one process-wide thread count; each pass sets it as it starts (docs/benchmarks/app.md).
On a GPU one worker feeds it. Each worker runs one pass on a blank window as the app starts,
so the first map tiles do not pay for the model's first-pass set-up.

A model with instance norms colours an area with that area's own statistics, as the colourise
stage does (models/networks/norm_stats.py): `area_stats` gathers them over some of the area's
windows, `add_area` keeps a copy of the model with them fixed, and windows submitted with that
area's key are coloured by it (a batch never mixes areas).
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import LuminescenceError
from pipeline.core.files import sha256_of_file
from pipeline.geo.tiles import TILE_SIZE

log = logging.getLogger("luminescence.app")
PRIORITY_TILE = 0
PRIORITY_UPLOAD = 1
MAX_CPU_WORKERS = 4  # each concurrent pass holds its own activations: this bounds the memory
QUIET_S = 0.5  # the runner counts as busy this long after its last window: a page's tiles come in bursts


class ModelUnavailable(LuminescenceError):
    pass


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    window: np.ndarray = field(compare=False)
    future: Future[np.ndarray] = field(compare=False)
    area: str = field(default="", compare=False)  # "": the model as loaded; else a key of add_area


@dataclass
class RunnerStats:
    batches: int = 0
    windows: int = 0
    seconds: float = 0.0  # time in forward passes


class ModelRunner:
    """Loads `path` once and colourises (H, W) uint8 gray windows in shared batches."""

    def __init__(self, path: str | Path, *, batch_size: int = 2, wait_s: float = 0.005,
                 device: str = "auto", workers: int | None = None, precision: str = "fp32") -> None:
        """`device`: auto (a CUDA GPU, else Apple MPS, else the CPU), cpu, cuda or mps.
        `workers`: forward passes run side by side (None: one per core on the CPU, at most
        MAX_CPU_WORKERS, sharing torch's threads between them; one on a GPU).
        `precision`: fp32; bf16 (autocast); auto: bf16 on a CPU that runs the model at least
        BF16_MIN_SPEEDUP times faster that way (timed here, about a second), else fp32."""
        from pipeline.inference.colourise import context_margin, size_multiple
        from pipeline.inference.layout import BF16_MIN_SPEEDUP, PRECISIONS, bf16_speedup, use_fast_layout
        from pipeline.training.checkpoint import load_model
        from pipeline.training.devices import pick_device

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelUnavailable(f"model {self.path} not found: train one (`dvc repro train@ABLATION`, "
                                   f"then set app.model to runs/ABLATION/model.pt) or pass --model")
        self.digest = sha256_of_file(self.path)
        self.device = pick_device(device)
        self.model = load_model(self.path, self.device)
        self.channels_last = use_fast_layout(self.model)
        from models.networks.norm_stats import instance_norms

        # whether colours depend on the statistics an area gives the model's instance norms
        self.adapts = bool(instance_norms(self.model.nets[self.model.colourising_net]))
        self._areas: dict[str, Any] = {}  # area key -> a copy of the model with the area's statistics
        self._areas_lock = threading.Lock()
        self.net_g = str(getattr(self.model.opts, "netG", "?"))
        self.margin = context_margin(size_multiple(self.net_g))
        self.window = TILE_SIZE + 2 * self.margin
        self.batch_size = batch_size
        self.wait_s = wait_s
        # threads: per pass when passes run side by side; alone_threads: for a pass on its own.
        self.workers, self.threads, self.alone_threads = worker_plan(self.device.type, workers)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, "
                             f"got {precision!r}")
        self.bf16_speedup: float | None = None  # measured when precision is auto, on the CPU
        if precision == "auto" and self.device.type == "cpu":  # timed as the passes will run
            self.bf16_speedup = bf16_speedup(self.model, self.window, threads=self.threads)
        self.bf16 = precision == "bf16" or (self.bf16_speedup or 0.0) >= BF16_MIN_SPEEDUP
        self._threads_before: int | None = None
        self._active = 0  # passes running now
        self._last_work = 0.0  # time.monotonic() of the last window submitted or pass ended
        self._warm = 0  # workers that have run their warm-up pass
        self._ready = threading.Event()
        self._active_lock = threading.Lock()
        if self.threads is not None:
            import torch

            # Process-wide (torch has one intra-op pool): the runner is what runs torch in the app.
            self._threads_before = torch.get_num_threads()
        self.stats = RunnerStats()
        self._stats_lock = threading.Lock()
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._closed = threading.Event()
        self._worker_threads = [
            threading.Thread(target=self._work, name=f"model-{self.digest[:8]}-{i}", daemon=True)
            for i in range(self.workers)]
        for thread in self._worker_threads:
            thread.start()

    @property
    def model_id(self) -> str:
        """Identifies the model's weights (the colourised tile stores are keyed by it)."""
        return self.digest[:16]

    @property
    def precision(self) -> str:
        """What the passes run in (colours differ a little: stores are kept apart by it)."""
        return "bf16" if self.bf16 else "fp32"

    @property
    def label(self) -> str:
        layout = ", channels_last" if self.channels_last else ""
        if self.bf16:
            measured = f", {self.bf16_speedup:.1f}x float32's speed" if self.bf16_speedup else ""
            layout += f", bfloat16{measured}"
        passes = ""
        if self.workers > 1 or self.threads is not None:
            threads = f" x {self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else ""
            alone = f" ({self.alone_threads} when one runs alone)" \
                if self.alone_threads is not None and self.alone_threads != self.threads else ""
            passes = f", {self.workers} concurrent pass{'es' if self.workers != 1 else ''}{threads}{alone}"
        return f"{self.model.name} ({self.net_g}) from {self.path} on {self.device.type}{layout}{passes}"

    def submit(self, window: np.ndarray, priority: int = PRIORITY_TILE, area: str = "") -> Future[np.ndarray]:
        """Colourise one (window, window) uint8 gray array; the future gives (window, window, 3) uint8.
        `area`: a key given to `add_area` (its statistics), or "" for the model as loaded."""
        if window.shape != (self.window, self.window) or window.dtype != np.uint8:
            raise ValueError(f"windows must be ({self.window}, {self.window}) uint8, got {window.shape} "
                             f"{window.dtype}")
        if self._closed.is_set():
            raise ModelUnavailable("the model runner is closed")
        if area:
            with self._areas_lock:
                if area not in self._areas:
                    raise KeyError(f"no statistics for area {area!r}: add_area first")
        future: Future[np.ndarray] = Future()
        self._last_work = time.monotonic()
        self._queue.put(_Job(priority, next(self._seq), window, future, area))
        return future

    def busy(self, quiet_s: float = QUIET_S) -> bool:
        """Whether windows are waiting or running, or were within the last `quiet_s` seconds
        (a page asks for its tiles in bursts): background work waits while it is."""
        with self._active_lock:
            active = self._active
        return active > 0 or not self._queue.empty() or time.monotonic() - self._last_work < quiet_s

    # ------------------------------------------------------------------ areas (instance norms)
    def area_stats(self, windows: np.ndarray, pause: Callable[[], None] | None = None) -> Any:
        """The instance-norm statistics of these (N, window, window) uint8 gray windows of an area,
        for `add_area` (None for a model without instance norms). Runs on the calling thread, on a
        copy of the model, so passes running meanwhile are not disturbed. `pause` is called
        before each batch (it may block, to let other work go first)."""
        from models.networks.norm_stats import gray_batches

        if not self.adapts or len(windows) == 0:
            return None
        # gathering switches the norms to each input's own statistics while it runs
        model = copy.deepcopy(self.model)
        batches = gray_batches(windows, len(windows), self.batch_size)
        return model.gather_norm_stats(batches if pause is None else _paced(batches, pause))

    def add_area(self, key: str, stats: Any) -> None:
        """Windows submitted with `area=key` are coloured with these statistics (checked: a
        ValueError names what does not fit this model)."""
        from models.networks.norm_stats import fix_norm_stats

        model = copy.deepcopy(self.model)
        fix_norm_stats(model.nets[model.colourising_net], stats)
        with self._areas_lock:
            self._areas[key] = model

    def has_area(self, key: str) -> bool:
        with self._areas_lock:
            return key in self._areas

    def drop_area(self, key: str) -> None:
        with self._areas_lock:
            self._areas.pop(key, None)

    def close(self) -> None:
        self._closed.set()
        self._queue.put(_Job(-1, -1, np.zeros((0, 0), np.uint8), Future()))  # wakes the workers in turn
        for thread in self._worker_threads:
            thread.join(timeout=10)
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    # ------------------------------------------------------------------ the worker
    def _pass_starts(self) -> None:
        """Count the pass in and set torch's threads: every core for a pass on its own, a
        share when passes run (or wait) side by side. The count is process-wide, so a pass
        already running adopts the new share from its next operation on."""
        with self._active_lock:
            self._active += 1
            if self.threads is None:
                return
            import torch

            alone = self._active == 1 and self._queue.empty()
            wanted = self.alone_threads if alone and self.alone_threads is not None else self.threads
            if torch.get_num_threads() != wanted:  # asked each time: another runner may have set it
                torch.set_num_threads(wanted)

    def _pass_ends(self) -> None:
        with self._active_lock:
            self._active -= 1
            self._last_work = time.monotonic()

    def _collect(self) -> list[_Job]:
        first = self._queue.get()
        if first.seq < 0 or self._closed.is_set():
            self._queue.put(first)  # the close marker (or a job nobody will run): the next worker sees it
            return []
        jobs = [first]
        deadline = time.monotonic() + self.wait_s
        while len(jobs) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job.seq < 0:  # the close marker
                self._queue.put(job)
                break
            jobs.append(job)
        return [j for j in jobs if j.future.set_running_or_notify_cancel()]

    def _forward(self, batch: np.ndarray, model: Any = None) -> np.ndarray:
        """(N, window, window) uint8 gray -> (N, window, window, 3) uint8 RGB."""
        import torch

        from pipeline.inference.layout import colourise_windows

        model = self.model if model is None else model
        a = torch.from_numpy(batch).unsqueeze(1).float().div_(255.0)
        return colourise_windows(model, a, bf16=self.bf16)

    def _model_of(self, area: str) -> Any:
        if not area:
            return self.model
        with self._areas_lock:
            model = self._areas.get(area)
        if model is None:
            raise KeyError(f"the statistics of area {area!r} were dropped before its windows ran")
        return model

    def _warm_up(self) -> None:
        """One pass on a blank window, so that the first map tiles do not pay for the model's
        first-pass set-up (memory, convolution kernels); then count this worker as ready."""
        self._pass_starts()
        try:
            self._forward(np.zeros((1, self.window, self.window), np.uint8))
        except Exception:  # the first real pass reports it to its caller
            log.exception("model warm-up failed")
        finally:
            self._pass_ends()
            with self._active_lock:
                self._warm += 1
                if self._warm == self.workers:
                    self._ready.set()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Whether every worker has warmed up (waits at most `timeout_s`). Windows submitted
        earlier are not lost: they wait in the queue."""
        return self._ready.wait(timeout_s)

    def _work(self) -> None:
        self._warm_up()
        while not self._closed.is_set():
            collected = self._collect()
            for area in dict.fromkeys(j.area for j in collected):  # one pass per area, in order
                self._run([j for j in collected if j.area == area], area)

    def _run(self, jobs: list[_Job], area: str) -> None:
        self._pass_starts()
        try:
            start = time.perf_counter()
            out = self._forward(np.stack([j.window for j in jobs]), self._model_of(area))
            with self._stats_lock:
                self.stats.batches += 1
                self.stats.windows += len(jobs)
                self.stats.seconds += time.perf_counter() - start
        except Exception as exc:  # a bug or out of memory: every caller gets the error
            log.exception("model forward pass failed")
            for job in jobs:
                job.future.set_exception(exc)
            return
        finally:
            self._pass_ends()
        for job, pixels in zip(jobs, out, strict=True):
            job.future.set_result(pixels)


def _paced(batches: Iterator[Any], pause: Callable[[], None]) -> Iterator[Any]:
    for batch in batches:
        pause()
        yield batch


def worker_plan(device_type: str, workers: int | None,
                cores: int | None = None) -> tuple[int, int | None, int | None]:
    """(concurrent forward passes, torch threads per pass when they run side by side, torch
    threads for a pass on its own); the thread counts are None where torch's choice stands."""
    if workers is not None and workers < 1:
        raise ValueError(f"model workers must be at least 1, got {workers}")
    if device_type != "cpu":
        return workers or 1, None, None
    if cores is None:
        cores = cpu_cores()
    n = workers or max(1, min(cores, MAX_CPU_WORKERS))
    return n, max(1, cores // n), cores


def cpu_cores() -> int:
    """Cores the model may use: LUMINESCENCE_THREADS or OMP_NUM_THREADS when set, else this
    process's CPUs (the same overrides the stages honour, pipeline/core/cpu.py)."""
    from pipeline.core.cpu import CpuPolicy, usable_cpus

    fixed = CpuPolicy(dict(os.environ), torch_loaded=True).fixed_threads()
    return fixed[0] if fixed else len(usable_cpus())


def load_runner(path: str | Path, **kwargs: Any) -> ModelRunner | str:
    """A runner, or the one-line reason the model cannot be used (the app serves on without it)."""
    try:
        return ModelRunner(path, **kwargs)
    except LuminescenceError as exc:
        return str(exc)
