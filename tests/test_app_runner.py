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


def test_an_area_colours_with_its_own_statistics_and_batches_never_mix_areas(instance_model: Path) -> None:
    from models.networks.norm_stats import gray_batches
    from pipeline.training.checkpoint import load_model

    runner = ModelRunner(instance_model, batch_size=4, workers=1, device="cpu", wait_s=0.2)
    rng = np.random.default_rng(1)
    dark = rng.integers(0, 90, (3, runner.window, runner.window), dtype=np.uint8)
    bright = rng.integers(120, 256, (3, runner.window, runner.window), dtype=np.uint8)
    try:
        assert runner.adapts
        runner.add_area("dark", runner.area_stats(dark))
        runner.add_area("bright", runner.area_stats(bright))
        with pytest.raises(KeyError, match="add_area first"):
            runner.submit(dark[0], area="nowhere")
        probe = dark[0]
        # queued together: one batch would mix them; each must get its own area's colours
        futures = [runner.submit(probe, area=a) for a in ("dark", "bright", "")]
        got = [f.result(timeout=120) for f in futures]
    finally:
        runner.close()
    expected = []
    for windows in (dark, bright, None):
        model = load_model(instance_model)
        if windows is not None:
            model.fit_norm_stats(gray_batches(windows, len(windows), 4))
        with torch.inference_mode():
            x = torch.from_numpy(probe)[None, None].float() / 255
            expected.append(model.colourise(x).clamp(0, 1).mul(255).round().to(torch.uint8)[0]
                            .permute(1, 2, 0).numpy())
    for g, e in zip(got, expected, strict=True):
        assert np.abs(g.astype(int) - e.astype(int)).max() <= 1
    assert np.abs(got[0].astype(int) - got[1].astype(int)).max() > 2  # the statistics matter
    assert runner.stats.batches == 3  # three areas: three passes, however they were queued


def test_a_batch_normalised_model_has_no_area_statistics(app_model: Path) -> None:
    runner = ModelRunner(app_model, batch_size=1, workers=1, device="cpu")
    try:
        assert not runner.adapts
        assert runner.area_stats(np.zeros((1, runner.window, runner.window), np.uint8)) is None
    finally:
        runner.close()


def test_an_uploaded_photo_is_coloured_with_its_own_statistics(instance_model: Path) -> None:
    import asyncio

    from pipeline.app.uploads import Photo, blocks, colourise_photo

    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (300, 520), dtype=np.uint8)
    photo = Photo(gray=gray, alpha=np.full(gray.shape, 255, np.uint8))
    runner = ModelRunner(instance_model, batch_size=2, workers=1, device="cpu")
    try:
        got = asyncio.run(colourise_photo(runner, photo))
        own = asyncio.run(colourise_photo(runner, photo, area_windows=0))
        assert runner._areas == {}  # the photo's statistics are dropped once it is done
        padded, cells = blocks(gray, runner.margin)
        side = 256 + 2 * runner.margin
        windows = np.stack([padded[r:r + side, c:c + side] for r, c in cells])
        runner.add_area("by hand", runner.area_stats(windows))
        first = runner.submit(np.ascontiguousarray(windows[0]), area="by hand").result(timeout=60)
    finally:
        runner.close()
    m = runner.margin
    assert got.shape == (300, 520, 4) and (got[..., 3] == 255).all()
    # the first block, away from the edges it shares with the next blocks (cross-faded there)
    inside = slice(0, 256 - m)
    assert np.abs(got[inside, inside, :3].astype(int) - first[m:256, m:256].astype(int)).max() <= 1
    assert np.abs(got[..., :3].astype(int) - own[..., :3].astype(int)).max() > 2


def test_bfloat16_passes_give_colours_close_to_float32s(instance_model: Path) -> None:
    runner = ModelRunner(instance_model, batch_size=1, workers=1, device="cpu", precision="bf16")
    try:
        assert runner.bf16 and runner.precision == "bf16" and "bfloat16" in runner.label
        window = np.random.default_rng(3).integers(0, 256, (runner.window, runner.window), dtype=np.uint8)
        low = runner.submit(window).result(timeout=60)
        runner.bf16 = False
        full = runner.submit(window).result(timeout=60)
    finally:
        runner.close()
    diff = np.abs(low.astype(int) - full.astype(int))
    assert diff.max() > 0 and diff.mean() < 2  # rounded differently, not coloured differently


def test_precision_auto_takes_bfloat16_only_where_it_pays(instance_model: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.inference.layout as layout

    for speedup, expected in ((1.05, "fp32"), (1.7, "bf16")):
        monkeypatch.setattr(layout, "bf16_speedup", lambda *a, s=speedup, **k: s)
        runner = ModelRunner(instance_model, batch_size=1, workers=1, device="cpu", precision="auto")
        runner.close()
        assert runner.precision == expected and runner.bf16_speedup == speedup
    runner = ModelRunner(instance_model, batch_size=1, workers=1, device="cpu")  # fp32 unless asked
    runner.close()
    assert runner.precision == "fp32" and runner.bf16_speedup is None
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        ModelRunner(instance_model, batch_size=1, workers=1, device="cpu", precision="fp16")


def test_bf16_speedup_is_a_measured_ratio(instance_model: Path) -> None:
    from pipeline.inference.layout import bf16_speedup
    from pipeline.training.checkpoint import load_model

    model = load_model(instance_model, torch.device("cpu"))
    before = torch.get_num_threads()
    ratio = bf16_speedup(model, 128, threads=1, rounds=1)
    assert ratio > 0 and np.isfinite(ratio) and torch.get_num_threads() == before


def test_params_and_the_runner_know_the_same_precisions() -> None:
    import typing

    from pipeline.core.config import AppConfig
    from pipeline.inference.layout import PRECISIONS

    assert typing.get_args(AppConfig.model_fields["precision"].annotation) == PRECISIONS
