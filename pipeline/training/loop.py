"""The training loop: one planned run (pipeline.training.plan) to a checkpoint, logs and
sample grids. Its collaborators each do one job: `resume` (restore a checkpoint's
state), `checkpointer` (save it), `live_log` (losses to DVCLive), `validation`
(val L1 and sample grids), `precision` (bf16 on GPUs), `records` (options.json).

Exactness. Batches are a pure function of (seed, step, rank) (pipeline.datasets.batches);
networks, optimizers, LR schedulers, every global RNG and the model's extra state
(image pools) go into each checkpoint; validation runs with the RNGs saved and restored.
So on CPU with `train.deterministic: true` a run interrupted at any checkpoint and
resumed ends with bit-identical weights to an uninterrupted run (same machine, torch
version and thread count). "Deterministic" here means: seeded Python/NumPy/torch RNGs
and `torch.use_deterministic_algorithms(True)` (strict on CPU; on CUDA deterministic
cuDNN/cuBLAS kernels, no autotuning, warnings for ops without a deterministic kernel).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from models.base import GANModel
from pipeline.core.files import remove_stale_temp_files
from pipeline.datasets.batches import PairBatches
from pipeline.datasets.storage import atomic_write_bytes, open_split
from pipeline.training.checkpoint import save_model_file
from pipeline.training.checkpointer import Checkpointer
from pipeline.training.devices import (
    Distributed,
    average_buffers,
    average_gradients,
    barrier,
    broadcast_state,
    configure_determinism,
    describe,
    distributed_from_env,
    init_distributed,
    pick_device,
    seed_everything,
    set_deterministic,
    shutdown_distributed,
)
from pipeline.training.live_log import LossLogger
from pipeline.training.plan import RunPlan, TrainingError, dataset_fingerprint
from pipeline.training.precision import Precision
from pipeline.training.records import changed_options, options_record, run_description
from pipeline.training.resume import adopt_checkpoint_threads, checkpoint_to_resume, restore
from pipeline.training.schedule import make_schedulers
from pipeline.training.validation import Validator


# --------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    ablation: str
    start_step: int
    end_step: int
    total_steps: int
    seconds: float
    step_seconds: float  # time inside training steps only (their sum)
    device: str
    checkpoint: Path
    val_l1: float | None = None
    synthetic_input: bool = False
    skipped: bool = False
    losses: dict[str, float] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)  # seconds of each step this run

    @property
    def finished(self) -> bool:
        return self.end_step >= self.total_steps

    @property
    def steps_run(self) -> int:
        return self.end_step - self.start_step


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def summary_line(r: TrainResult) -> str:
    synthetic = " (dataset input is SYNTHETIC)" if r.synthetic_input else ""
    if r.skipped:
        return (f"{r.ablation}: already trained ({r.end_step}/{r.total_steps} steps, {r.checkpoint}); "
                f"nothing to do (pass --no-resume to train again){synthetic}")
    per_step = r.step_seconds / r.steps_run if r.steps_run else 0.0
    line = (f"trained {r.ablation}: {r.steps_run} steps in {format_duration(r.seconds)} "
            f"({per_step:.2f} s/step) on {r.device}")
    if r.start_step:
        line += f", resumed at step {r.start_step}"
    if r.val_l1 is not None:
        line += f"; val L1 {r.val_l1:.3f}"
    if not r.finished:
        line += f"; stopped at step {r.end_step}/{r.total_steps}, re-run to continue"
    return line + synthetic


# --------------------------------------------------------------------------- batches
def batch_stream(batches: PairBatches, start: int, end: int, *, prefetch: bool = False,
                 pin: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Batches for steps start..end-1. With `prefetch` (on GPUs) the next batch is prepared
    (and pinned) in a thread while the current step runs; batches are pure functions of
    the step, so this changes nothing but speed. On CPU the cores are busy with the step."""
    def prepare(step: int) -> dict[str, torch.Tensor]:
        batch = batches.batch(step)
        return {k: v.pin_memory() for k, v in batch.items()} if pin else batch

    if not prefetch:
        for step in range(start, end):
            yield prepare(step)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(prepare, start) if start < end else None
        for step in range(start, end):
            assert upcoming is not None
            current = upcoming.result()
            upcoming = pool.submit(prepare, step + 1) if step + 1 < end else None
            yield current


# --------------------------------------------------------------------------- train
def train(plan: RunPlan, *, resume: bool = True, stop_at: int | None = None, device: str | None = None,
          progress: bool = True) -> TrainResult:
    """Train (or resume) one run. Under torchrun every process calls this.

    resume: continue from `plan.checkpoint_path` when it exists (it must match the plan;
    a finished run is a no-op); False trains from scratch and overwrites it.
    stop_at: stop once this many steps are done (a resumable checkpoint is written).
    """
    info = distributed_from_env()
    dev = pick_device(device or plan.config.device, info.local_rank)
    started_group = info.enabled and not torch.distributed.is_initialized()
    init_distributed(info, dev)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    try:
        configure_determinism(plan.config.deterministic, dev)
        return _train(plan, info, dev, resume=resume, stop_at=stop_at, progress=progress)
    finally:
        set_deterministic(was_deterministic, warn_only=was_warn_only)
        torch.set_num_threads(threads)  # a resume may have adopted its checkpoint's count
        if started_group:
            shutdown_distributed()


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _check_finite(plan: RunPlan, losses: dict[str, float], done: int) -> None:
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        raise TrainingError(
            f"{plan.ablation}: loss {bad[0]} became {losses[bad[0]]} at step {done}; training "
            f"diverged (the last checkpoint is kept). Lower lr or change gan_mode in "
            f"ablations.{plan.ablation}, then re-run with --no-resume")


def _build_model(plan: RunPlan, dev: torch.device) -> GANModel:
    # Same seed on every process for the initial weights (rank 0's are broadcast anyway).
    seed_everything(plan.config.seed)
    return plan.model_cls(plan.options, dev)


def _prepare_run_folder(plan: RunPlan, model: GANModel, dev: torch.device, info: Distributed,
                        fingerprint: str, start: int) -> None:
    """Main process: the run folder, fresh for a run from scratch, and its options.json."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(plan.checkpoint_path)
    if start == 0:  # a fresh run: nothing of an older one may survive it
        shutil.rmtree(plan.out_dir / "samples", ignore_errors=True)
        plan.model_path.unlink(missing_ok=True)
    record = options_record(plan, model, dev, info.world_size, fingerprint)
    atomic_write_bytes(plan.out_dir / "options.json", (json.dumps(record, indent=2) + "\n").encode())


def _train(plan: RunPlan, info: Distributed, dev: torch.device, *, resume: bool, stop_at: int | None,
           progress: bool) -> TrainResult:
    t_start = time.perf_counter()
    cfg, total = plan.config, plan.total_steps
    fingerprint = dataset_fingerprint(plan.dataset_dir)
    identity = plan.identity(fingerprint)
    result = TrainResult(ablation=plan.ablation, start_step=0, end_step=0, total_steps=total, seconds=0.0,
                         step_seconds=0.0, device=describe(dev), checkpoint=plan.checkpoint_path,
                         synthetic_input=plan.dataset.synthetic_input)

    ckpt = checkpoint_to_resume(plan, identity, resume)
    if ckpt is not None and ckpt["finished"]:
        result.start_step = result.end_step = int(ckpt["step"])
        result.skipped = True
        if info.is_main and not plan.model_path.exists():
            save_model_file(plan.model_path, ckpt)
        return result

    if ckpt is not None:
        adopt_checkpoint_threads(ckpt, dev, cfg.deterministic, say=_say)
    model = _build_model(plan, dev)
    precision = Precision.configure(model, dev, cfg.bf16)
    schedulers = make_schedulers(model, plan.constant_steps, plan.decay_steps)
    if info.enabled:
        broadcast_state(model.nets.values())
        model.gradient_hook = average_gradients
    start = restore(model, schedulers, ckpt, seed=cfg.seed, info=info, device=dev,
                    source=plan.checkpoint_path, say=_say)
    del ckpt
    end = total if stop_at is None else max(start, min(total, stop_at))
    result.start_step = result.end_step = start

    batches = PairBatches(open_split(plan.dataset_dir, "train"), batch_size=plan.preset.batch_size,
                          crop_size=plan.preset.crop_size, load_size=plan.preset.load_size,
                          paired=plan.model_cls.paired, seed=cfg.seed, rank=info.rank,
                          world_size=info.world_size)
    validator = Validator(model, open_split(plan.dataset_dir, "val"), dev, out_dir=plan.out_dir,
                          every=plan.val_every, total=total, num_samples=cfg.num_val_samples,
                          max_tiles=plan.preset.val_tiles, bf16=precision.wrap, enabled=info.is_main)
    checkpointer = Checkpointer(plan, identity, model, schedulers, info, dev)
    if info.is_main:
        _prepare_run_folder(plan, model, dev, info, fingerprint, start)
        _say(run_description(plan, model, dev, info.world_size))
        _say(changed_options(plan))
        if start:
            _say(f"resuming from {plan.checkpoint_path} at step {start}/{total}")

    on_gpu = dev.type == "cuda"
    stream = batch_stream(batches, start, end, prefetch=on_gpu, pin=on_gpu)
    bar = tqdm(total=total, initial=start, desc=plan.ablation, unit="step", dynamic_ncols=True,
               disable=not (progress and info.is_main), file=sys.stderr)
    with bar, LossLogger(plan.out_dir, resume_step=start, every=cfg.log_every, enabled=info.is_main) as log:
        model.train()
        for step, cpu_batch in zip(range(start, end), stream, strict=True):
            t0 = time.perf_counter()
            batch = precision.to_device(cpu_batch)
            lrs = {name: opt.param_groups[0]["lr"] for name, opt in model.optimizers.items()}
            with precision.step_context():
                losses = model.train_step(batch)
            for sched in schedulers.values():
                sched.step()
            if info.enabled:
                average_buffers(model.nets.values())
            result.step_times.append(time.perf_counter() - t0)
            result.step_seconds += result.step_times[-1]
            done = result.end_step = step + 1

            _check_finite(plan, losses, done)
            result.losses = dict(losses)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
            log.log_step(done, losses, lrs, last=done == end)
            if validator.due(done):
                result.val_l1 = validator.run(done)
                log.log_validation(done, result.val_l1)
                bar.write(f"step {done}/{total}: val L1 {result.val_l1:.4f}", file=sys.stderr)
            if checkpointer.due(done, end):
                checkpointer.save(done)
    barrier(info)
    result.seconds = time.perf_counter() - t_start
    return result
