"""The app's model runner: how many forward passes run side by side, and that concurrent passes
give every caller its own window's result and shut down cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.app.runner import MAX_CPU_WORKERS, ModelRunner, cpu_cores, worker_plan


@pytest.mark.parametrize(("cores", "workers", "expected"), [
    (2, None, (2, 1, 2)),    # the 2-core default: two one-thread passes, or one on both cores
    (1, None, (1, 1, 1)),
    (16, None, (MAX_CPU_WORKERS, 16 // MAX_CPU_WORKERS, 16)),
    (2, 1, (1, 2, 2)),       # one pass at a time on both cores, by choice
    (3, 2, (2, 1, 3)),
])
def test_worker_plan_on_the_cpu(cores: int, workers: int | None, expected: tuple[int, int, int]) -> None:
    assert worker_plan("cpu", workers, cores) == expected


def test_worker_plan_on_a_gpu_leaves_threads_alone() -> None:
    assert worker_plan("cuda", None, 8) == (1, None, None)
    assert worker_plan("cuda", 3, 8) == (3, None, None)


def test_worker_plan_refuses_zero_workers() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        worker_plan("cpu", 0, 2)


def test_cpu_cores_honours_the_thread_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUMINESCENCE_THREADS", "3")
    assert cpu_cores() == 3
    monkeypatch.delenv("LUMINESCENCE_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_cores() >= 1


def test_two_workers_give_each_window_its_own_result(app_model: Path) -> None:
    before = torch.get_num_threads()
    rng = np.random.default_rng(0)
    single = ModelRunner(app_model, batch_size=1, workers=1, device="cpu")
    windows = [rng.integers(0, 256, (single.window, single.window), dtype=np.uint8) for _ in range(6)]
    try:
        expected = [single.submit(w).result(timeout=120) for w in windows]
    finally:
        single.close()
    runner = ModelRunner(app_model, batch_size=1, workers=2, device="cpu")
    try:
        assert runner.workers == 2 and len(runner._worker_threads) == 2
        futures = [runner.submit(w) for w in windows]
        got = [f.result(timeout=120) for f in futures]
    finally:
        runner.close()
    for g, e in zip(got, expected, strict=True):
        # one thread against several: sums may round one level apart, never another window's colours
        assert np.abs(g.astype(int) - e.astype(int)).max() <= 1
    assert runner.stats.windows == 6 and runner.stats.batches == 6
    assert not any(t.is_alive() for t in runner._worker_threads)  # close() stopped every worker
    assert torch.get_num_threads() == before  # and gave torch its thread count back


def test_a_pass_alone_gets_every_core_and_side_by_side_passes_share_them(app_model: Path) -> None:
    before = torch.get_num_threads()
    runner = ModelRunner(app_model, batch_size=1, workers=2, device="cpu")
    try:
        assert runner.wait_ready(timeout_s=120)  # the warm-up passes have ended
        assert runner.threads is not None and runner.alone_threads is not None
        runner._pass_starts()  # nothing else running or waiting: every core
        assert torch.get_num_threads() == runner.alone_threads == cpu_cores()
        runner._pass_starts()  # a second pass beside it: each its share
        assert torch.get_num_threads() == runner.threads == max(1, cpu_cores() // 2)
        runner._pass_ends()
        runner._pass_ends()
        runner._pass_starts()
        assert torch.get_num_threads() == runner.alone_threads
        runner._pass_ends()
    finally:
        runner.close()
    assert torch.get_num_threads() == before


def test_the_runner_warms_its_model_up_and_windows_sent_meanwhile_wait(app_model: Path) -> None:
    runner = ModelRunner(app_model, batch_size=1, workers=2, device="cpu")
    try:
        early = runner.submit(np.full((runner.window, runner.window), 128, np.uint8))  # before ready
        assert runner.wait_ready(timeout_s=120)
        assert runner._warm == 2  # one warm-up pass per worker
        assert early.result(timeout=120).shape == (runner.window, runner.window, 3)
        assert runner.stats.windows == 1  # warm-up passes are not counted as work
    finally:
        runner.close()
