"""One trained model behind a queue: context windows from concurrent requests share forward passes.

Every window a model sees has one size (256 + 2 x margin pixels), whether it comes from a map
tile or from a block of an uploaded photo, so windows of different requests stack into one
batch. One worker thread owns the model: it takes the first waiting window, gathers more for at
most `wait_s` (up to `batch_size`), runs them together and hands each caller its result. Map
tiles go before upload blocks (priority), so an upload never holds up the map.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
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


class ModelUnavailable(LuminescenceError):
    pass


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    window: np.ndarray = field(compare=False)
    future: Future[np.ndarray] = field(compare=False)


@dataclass
class RunnerStats:
    batches: int = 0
    windows: int = 0
    seconds: float = 0.0  # time in forward passes


class ModelRunner:
    """Loads `path` once and colourises (H, W) uint8 gray windows in shared batches."""

    def __init__(self, path: str | Path, *, batch_size: int = 2, wait_s: float = 0.005,
                 device: str = "auto") -> None:
        """`device`: auto (a CUDA GPU, else Apple MPS, else the CPU), cpu, cuda or mps."""
        from pipeline.inference.colourise import context_margin, size_multiple
        from pipeline.inference.layout import use_fast_layout
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
        self.net_g = str(getattr(self.model.opts, "netG", "?"))
        self.margin = context_margin(size_multiple(self.net_g))
        self.window = TILE_SIZE + 2 * self.margin
        self.batch_size = batch_size
        self.wait_s = wait_s
        self.stats = RunnerStats()
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"model-{self.digest[:8]}", daemon=True)
        self._thread.start()

    @property
    def model_id(self) -> str:
        """Identifies the model's weights (the colourised tile stores are keyed by it)."""
        return self.digest[:16]

    @property
    def label(self) -> str:
        layout = ", channels_last" if self.channels_last else ""
        return f"{self.model.name} ({self.net_g}) from {self.path} on {self.device.type}{layout}"

    def submit(self, window: np.ndarray, priority: int = PRIORITY_TILE) -> Future[np.ndarray]:
        """Colourise one (window, window) uint8 gray array; the future gives (window, window, 3) uint8."""
        if window.shape != (self.window, self.window) or window.dtype != np.uint8:
            raise ValueError(f"windows must be ({self.window}, {self.window}) uint8, got {window.shape} "
                             f"{window.dtype}")
        if self._closed.is_set():
            raise ModelUnavailable("the model runner is closed")
        future: Future[np.ndarray] = Future()
        self._queue.put(_Job(priority, next(self._seq), window, future))
        return future

    def close(self) -> None:
        self._closed.set()
        self._queue.put(_Job(-1, -1, np.zeros((0, 0), np.uint8), Future()))  # wake the worker
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the worker
    def _collect(self) -> list[_Job]:
        first = self._queue.get()
        if self._closed.is_set():
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

    def _work(self) -> None:
        import torch

        while not self._closed.is_set():
            jobs = self._collect()
            if not jobs:
                continue
            try:
                start = time.perf_counter()
                batch = np.stack([j.window for j in jobs])
                with torch.inference_mode():
                    a = torch.from_numpy(batch).unsqueeze(1).float().div_(255.0).to(self.device)
                    rgb = self.model.colourise(a).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
                    out = rgb.permute(0, 2, 3, 1).cpu().numpy()
                self.stats.batches += 1
                self.stats.windows += len(jobs)
                self.stats.seconds += time.perf_counter() - start
            except Exception as exc:  # a bug or out of memory: every caller gets the error
                log.exception("model forward pass failed")
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            for job, pixels in zip(jobs, out, strict=True):
                job.future.set_result(pixels)


def load_runner(path: str | Path, **kwargs: Any) -> ModelRunner | str:
    """A runner, or the one-line reason the model cannot be used (the app serves on without it)."""
    try:
        return ModelRunner(path, **kwargs)
    except LuminescenceError as exc:
        return str(exc)
