"""A run's DVCLive log: training losses averaged over a window of steps, learning rates
and validation results, under runs/<ablation>/dvclive/."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.datasets.storage import atomic_write_bytes


def truncate_live_history(live_dir: Path, last_step: int) -> None:
    """Drop DVCLive plot rows logged after `last_step` (by a run killed after its last
    checkpoint), so a resumed run does not log those steps twice."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
        if not lines:
            continue
        header = lines[0].rstrip("\r\n").split("\t")
        if "step" not in header:
            continue
        col = header.index("step")
        kept = [lines[0]] + [ln for ln in lines[1:]
                             if ln.strip() and int(ln.split("\t")[col]) <= last_step]
        if len(kept) != len(lines):
            atomic_write_bytes(tsv, "".join(kept).encode())


def open_live(out_dir: Path, resume_step: int) -> Any:
    from dvclive import Live

    live_dir = out_dir / "dvclive"
    if resume_step:
        truncate_live_history(live_dir, resume_step)
    # dvcyaml=None: dvc.yaml declares the plots; DVCLive must not rewrite it.
    return Live(dir=str(live_dir), resume=resume_step > 0, dvcyaml=None, save_dvc_exp=False, report=None)


class LossLogger:
    """Logs `train/<loss>` (the mean over `every` steps), `lr/<optimizer>` and `val/l1_rgb`.

    A context manager: DVCLive is closed (its summary written) on every way out of the
    block, an exception such as diverging losses included. Disabled (no DVCLive at all)
    on processes other than the main one.
    """

    def __init__(self, out_dir: Path, *, resume_step: int, every: int, enabled: bool = True) -> None:
        self.every = every
        self.live = open_live(out_dir, resume_step) if enabled else None
        self._window: dict[str, float] = {}
        self._n = 0

    def __enter__(self) -> LossLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def log_step(self, done: int, losses: dict[str, float], lrs: dict[str, float], *,
                 last: bool = False) -> None:
        """Record the losses of step `done` (1-based) and the learning rates it used; the
        window is written every `every` steps and at the `last` step of this run."""
        if self.live is None:
            return
        for k, v in losses.items():
            self._window[k] = self._window.get(k, 0.0) + v
        self._n += 1
        if not (done % self.every == 0 or last):
            return
        self.live.step = done
        for k, v in self._window.items():
            self.live.log_metric(f"train/{k}", v / self._n)
        for name, lr in lrs.items():
            self.live.log_metric(f"lr/{name}", lr)
        self.live.make_summary()
        self._window, self._n = {}, 0

    def log_validation(self, done: int, val_l1: float) -> None:
        if self.live is None:
            return
        self.live.step = done
        self.live.log_metric("val/l1_rgb", val_l1)
        self.live.make_summary()

    def close(self) -> None:
        live, self.live = self.live, None
        if live is not None:
            live.end()
