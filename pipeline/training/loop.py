"""The training loop: one ablation from params.yaml to a checkpoint, logs and sample grids.

`plan_run` resolves everything a run depends on (model options, preset, schedule,
dataset) into a `RunPlan`; `train` executes it and returns a `TrainResult`; the CLI in
pipeline/stages/train.py is a thin wrapper.

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

import contextlib
import hashlib
import io
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from models.base import GANModel, ModelOptions
from models.registry import get_model_class, resolve_options
from pipeline.core.config import Params, TrainConfig, TrainPreset, lookup
from pipeline.core.errors import LuminescenceError
from pipeline.core.paths import DATASETS_DIR, RUNS_DIR
from pipeline.datasets.batches import PairBatches, full_tiles
from pipeline.datasets.storage import DatasetInfo, atomic_write_bytes, open_split, read_info
from pipeline.training.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    capture_rng,
    check_identity,
    identity_hash,
    read_checkpoint,
    remove_stale_temp_files,
    restore_rng,
    save_checkpoint,
    save_model_file,
    weights_digest,
)
from pipeline.training.devices import (
    Distributed,
    average_buffers,
    average_gradients,
    barrier,
    broadcast_state,
    configure_determinism,
    derived_seed,
    describe,
    distributed_from_env,
    gather_objects,
    init_distributed,
    pick_device,
    seed_everything,
    shutdown_distributed,
    uses_bf16,
)

VAL_BATCH = 8  # whole tiles per validation forward pass


class TrainingError(LuminescenceError):
    """Training cannot start or continue (e.g. the losses diverged)."""


# --------------------------------------------------------------------------- schedule
class ConstantThenLinear:
    """LR factor for update `i` (0-based): 1 for the first `constant` updates, then
    linear decay reaching 0 after the last of `decay` updates (the reference's rule,
    per iteration instead of per epoch). A class, not a lambda, so LambdaLR saves it."""

    def __init__(self, constant: int, decay: int) -> None:
        self.constant = constant
        self.decay = decay

    def __call__(self, i: int) -> float:
        return max(0.0, 1.0 - max(0, i - self.constant + 1) / (self.decay + 1))


def make_schedulers(model: GANModel, constant: int, decay: int) -> dict[str, LambdaLR]:
    return {name: LambdaLR(opt, ConstantThenLinear(constant, decay))
            for name, opt in model.optimizers.items()}


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class RunPlan:
    """Everything one training run depends on, resolved and validated."""

    ablation: str
    model_cls: type[GANModel]
    options: ModelOptions
    preset_name: str
    preset: TrainPreset
    config: TrainConfig
    dataset_dir: Path
    dataset: DatasetInfo
    train_tiles: int
    val_tiles: int
    constant_steps: int
    decay_steps: int
    out_dir: Path

    @property
    def total_steps(self) -> int:
        return self.constant_steps + self.decay_steps

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def model_path(self) -> Path:
        return self.out_dir / "model.pt"

    def identity(self, fingerprint: str) -> dict[str, Any]:
        """What a resumed checkpoint must match exactly (the params hash is its digest)."""
        return {
            "model": self.model_cls.name,
            "options": self.options.model_dump(mode="json"),
            "dataset": {"name": self.dataset.name, "fingerprint": fingerprint},
            "train": {"crop_size": self.preset.crop_size, "load_size": self.preset.load_size,
                      "batch_size": self.preset.batch_size, "seed": self.config.seed,
                      "constant_steps": self.constant_steps, "decay_steps": self.decay_steps},
        }


def plan_run(ablation: str, params: Params, *, out_dir: Path | None = None,
             steps: int | None = None, datasets_dir: Path = DATASETS_DIR) -> RunPlan:
    """Resolve an ablation of params.yaml into a RunPlan (raises one-line errors)."""
    if params.train is None:
        raise TrainingError("params.yaml has no `train` section; add one (see README: training)")
    ab = lookup(params.ablations, ablation, "ablation", "ablations")
    cfg = params.train
    preset = cfg.active_preset
    model_cls = get_model_class(ab.model, key=f"ablations.{ablation}.model")
    options = resolve_options(ab.model, ablation_name=ablation, ablation=ab.options,
                              shared=cfg.defaults, preset=preset)
    dataset_dir = Path(datasets_dir) / ab.dataset
    info = read_info(dataset_dir)
    train_split = open_split(dataset_dir, "train")
    val_split = open_split(dataset_dir, "val")
    if len(train_split) == 0:
        raise TrainingError(f"dataset '{ab.dataset}' has no training tiles ({dataset_dir}/train.npy is "
                            f"empty); enlarge its AOI or change align.splits")
    # Epoch-based schedules: an iteration of N processes consumes N batches.
    world = distributed_from_env().world_size
    constant, decay = preset.schedule(-(-len(train_split) // world))
    if steps is not None:
        if steps < 1:
            raise TrainingError(f"--steps must be at least 1 (got {steps})")
        # Keep the preset's constant:decay proportion.
        constant = round(steps * constant / (constant + decay)) if constant + decay else steps
        decay = steps - constant
    if constant + decay < 1:
        raise TrainingError(f"train.presets.{cfg.preset} gives a schedule of 0 steps; set steps/decay_steps "
                            f"or epochs/decay_epochs")
    return RunPlan(ablation=ablation, model_cls=model_cls, options=options, preset_name=cfg.preset,
                   preset=preset, config=cfg, dataset_dir=dataset_dir, dataset=info,
                   train_tiles=len(train_split), val_tiles=len(val_split), constant_steps=constant,
                   decay_steps=decay, out_dir=Path(out_dir) if out_dir else RUNS_DIR / ablation)


def dataset_fingerprint(dataset_dir: Path) -> str:
    """SHA-256 over the train and val arrays (about 1 s per GB): a rebuilt dataset is noticed."""
    digest = hashlib.sha256()
    for split in ("train", "val"):
        with open(Path(dataset_dir) / f"{split}.npy", "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


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


# --------------------------------------------------------------------------- validation
def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when enabled (CUDA only, see devices.uses_bf16); otherwise nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)



@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run a block without disturbing any global RNG, so validating never changes training."""
    saved = capture_rng(device)
    try:
        yield
    finally:
        restore_rng(saved, device)


def sample_indices(n_val: int, k: int) -> list[int]:
    """`k` val tiles spread evenly over the split (the same ones at every validation)."""
    if n_val == 0 or k == 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n_val - 1, min(k, n_val)).round()})


@torch.no_grad()
def validate(model: GANModel, val_pairs: np.ndarray, device: torch.device, *, bf16: bool = False,
             samples: list[int] | tuple[int, ...] = (), batch_size: int = VAL_BATCH
             ) -> tuple[float, torch.Tensor | None]:
    """Mean absolute error in RGB [0, 1] over whole val tiles, and a sample grid.

    The grid has one row per sample tile: input | output | target (a (3, H, W) tensor).
    """
    model.eval()
    wanted = set(samples)
    picked: dict[int, torch.Tensor] = {}
    abs_sum, count = 0.0, 0
    try:
        with preserved_rng(device):
            seed_everything(0)  # models that sample (e.g. BicycleGAN's z) validate reproducibly
            for start in range(0, len(val_pairs), batch_size):
                stop = min(len(val_pairs), start + batch_size)
                # A writable copy of the chunk: torch warns about read-only memmaps.
                chunk = np.array(val_pairs[start:stop])
                batch = full_tiles(chunk, 0, len(chunk))
                gray = batch["A"].to(device)
                with autocast(device, bf16):
                    out = model.colourise(gray)
                out = out.float().clamp(0.0, 1.0).cpu()
                abs_sum += (out - batch["B"]).abs().double().sum().item()
                count += batch["B"].numel()
                for i in range(start, stop):
                    if i in wanted:
                        j = i - start
                        picked[i] = torch.stack([batch["A"][j].expand(3, -1, -1), out[j], batch["B"][j]])
    finally:
        model.train()
    grid = None
    if picked:
        grid = make_grid(torch.cat([picked[i] for i in sorted(picked)]), nrow=3, padding=2, pad_value=1.0)
    return (abs_sum / count if count else float("nan")), grid


def png_bytes(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    save_image(image, buffer, format="png")
    return buffer.getvalue()


def write_samples(out_dir: Path, step: int, grid: torch.Tensor) -> Path:
    data = png_bytes(grid)
    path = out_dir / "samples" / f"step_{step:06d}.png"
    atomic_write_bytes(path, data)
    atomic_write_bytes(out_dir / "samples" / "latest.png", data)
    return path


# --------------------------------------------------------------------------- logging
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


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}k"


def run_description(plan: RunPlan, model: GANModel, device: torch.device, world: int) -> str:
    counts = model.parameter_counts()
    params = " + ".join(f"{k} {_count(v)}" for k, v in counts.items())
    kind = "SYNTHETIC " if plan.dataset.synthetic_input else ""
    procs = f" x {world} processes" if world > 1 else ""
    return (f"{plan.ablation}: {plan.model_cls.name} on dataset '{plan.dataset.name}' ({plan.train_tiles} "
            f"train / {plan.val_tiles} val tiles, {kind}{plan.dataset.input_kind} input); "
            f"{plan.total_steps} steps ({plan.constant_steps} constant + {plan.decay_steps} decay), "
            f"batch {plan.preset.batch_size}, crop {plan.preset.crop_size} of {plan.preset.load_size}; "
            f"{params} parameters; on {describe(device)}{procs}")


def options_record(plan: RunPlan, model: GANModel, device: torch.device, world: int,
                   fingerprint: str) -> dict[str, Any]:
    """The content of runs/<ablation>/options.json."""
    return {
        "ablation": plan.ablation,
        "model": plan.model_cls.name,
        "paired": plan.model_cls.paired,
        "options": plan.options.model_dump(mode="json"),
        "preset": {"name": plan.preset_name, **plan.preset.model_dump(mode="json")},
        "total_steps": plan.total_steps,
        "schedule": {"constant_steps": plan.constant_steps, "decay_steps": plan.decay_steps,
                     "total_steps": plan.total_steps},
        "parameters": model.parameter_counts(),
        "dataset": {**asdict(plan.dataset), "train_tiles": plan.train_tiles,
                    "val_tiles": plan.val_tiles, "fingerprint": fingerprint},
        "seed": plan.config.seed,
        "deterministic": plan.config.deterministic,
        "device": str(device),
        "world_size": world,
        "torch": str(torch.__version__),
    }


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
    try:
        configure_determinism(plan.config.deterministic, dev)
        return _train(plan, info, dev, resume=resume, stop_at=stop_at, progress=progress)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        if started_group:
            shutdown_distributed()


def resume_decision(plan: RunPlan) -> tuple[bool, str]:
    """For `--resume-interrupted-only` (what dvc.yaml runs): resume only an unfinished
    checkpoint of exactly these settings; anything else trains afresh.

    DVC re-runs a train stage only when its code, data or params changed (or its outputs
    are gone), so a finished or mismatched checkpoint is stale there, while an unfinished
    matching one is an interrupted `dvc repro` to continue. Returns (resume, why).
    """
    path = plan.checkpoint_path
    if not path.exists():
        return False, ""
    try:
        ckpt = read_checkpoint(path)
        check_identity(ckpt, plan.identity(dataset_fingerprint(plan.dataset_dir)), path)
    except CheckpointMismatch:
        return False, f"{path} is from other settings; training {plan.ablation} afresh"
    except CheckpointError as exc:
        return False, f"{path} is unusable ({exc}); training {plan.ablation} afresh"
    if ckpt["finished"]:
        return False, f"{path} is finished but its stage is being re-run (code or data changed); " \
                      f"training {plan.ablation} afresh"
    return True, f"resuming the interrupted run of {plan.ablation} at step {int(ckpt['step'])}"


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


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _train(plan: RunPlan, info: Distributed, dev: torch.device, *, resume: bool, stop_at: int | None,
           progress: bool) -> TrainResult:
    t_start = time.perf_counter()
    cfg, total = plan.config, plan.total_steps
    ckpt_path = plan.checkpoint_path
    fingerprint = dataset_fingerprint(plan.dataset_dir)
    identity = plan.identity(fingerprint)
    result = TrainResult(ablation=plan.ablation, start_step=0, end_step=0, total_steps=total, seconds=0.0,
                         step_seconds=0.0, device=describe(dev), checkpoint=ckpt_path,
                         synthetic_input=plan.dataset.synthetic_input)

    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        check_identity(ckpt, identity, ckpt_path)
        if ckpt["finished"]:
            result.start_step = result.end_step = int(ckpt["step"])
            result.skipped = True
            if info.is_main and not plan.model_path.exists():
                save_model_file(plan.model_path, ckpt)
            return result

    # Same seed on every process for the initial weights (rank 0's are broadcast anyway).
    seed_everything(cfg.seed)
    model = plan.model_cls(plan.options, dev)
    bf16 = uses_bf16(dev, cfg.bf16)
    if bf16:  # channels_last lets cuDNN use tensor-core kernels for bf16 convolutions
        for net in model.nets.values():
            net.to(memory_format=torch.channels_last)
    # Variants built on models.gan.ColourGAN autocast their forward passes themselves
    # (`autocast_dtype`), keeping backward and optimizer steps in float32; any other
    # GANModel gets its whole train_step (and colourise) wrapped by the trainer.
    if bf16 and hasattr(model, "autocast_dtype"):
        model.autocast_dtype = torch.bfloat16
        wrap_bf16 = False
    else:
        wrap_bf16 = bf16
    schedulers = make_schedulers(model, plan.constant_steps, plan.decay_steps)
    if info.enabled:
        broadcast_state(model.nets.values())
        model.gradient_hook = average_gradients

    start = 0
    if ckpt is not None:
        start = int(ckpt["step"])
        ranks = ckpt["ranks"]
        same_world = len(ranks) == info.world_size
        own = ranks[info.rank] if same_world else ranks[0]
        model.load_state_dict({"nets": ckpt["nets"], "optimizers": ckpt["optimizers"],
                               "extra": own.get("extra", {})})
        for name, sched in schedulers.items():
            sched.load_state_dict(ckpt["schedulers"][name])
        if same_world:
            restore_rng(own["rng"], dev)
        else:
            seed_everything(derived_seed(cfg.seed, info.rank, start))
            if info.is_main:
                _say(f"warning: {ckpt_path} was written by {len(ranks)} process(es), this run has "
                     f"{info.world_size}: training continues, but not bit-identically")
    else:
        # Each process its own stream (dropout masks etc.); rank 0 of N == single process.
        seed_everything(derived_seed(cfg.seed, info.rank))
    del ckpt
    end = total if stop_at is None else max(start, min(total, stop_at))
    result.start_step = result.end_step = start

    train_split = open_split(plan.dataset_dir, "train")
    val_split = open_split(plan.dataset_dir, "val")
    batches = PairBatches(train_split, batch_size=plan.preset.batch_size, crop_size=plan.preset.crop_size,
                          load_size=plan.preset.load_size, paired=plan.model_cls.paired, seed=cfg.seed,
                          rank=info.rank, world_size=info.world_size)
    samples = sample_indices(len(val_split), cfg.num_val_samples)

    live = None
    if info.is_main:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(ckpt_path)
        if start == 0:  # a fresh run: nothing of an older one may survive it
            shutil.rmtree(plan.out_dir / "samples", ignore_errors=True)
            plan.model_path.unlink(missing_ok=True)
        record = options_record(plan, model, dev, info.world_size, fingerprint)
        atomic_write_bytes(plan.out_dir / "options.json", (json.dumps(record, indent=2) + "\n").encode())
        live = open_live(plan.out_dir, start)
        _say(run_description(plan, model, dev, info.world_size))
        if start:
            _say(f"resuming from {ckpt_path} at step {start}/{total}")

    def save(done: int) -> None:
        rank_state = {"rng": capture_rng(dev), "extra": model.extra_state(),
                      "weights": weights_digest(model.nets)}
        all_ranks = gather_objects(rank_state, info)
        if info.is_main:
            assert all_ranks is not None
            if len({r["weights"] for r in all_ranks}) > 1:  # type: ignore[index]
                raise TrainingError(
                    f"{plan.ablation}: the {info.world_size} processes hold different weights at step "
                    f"{done}; the model must update through GANModel.optimizer_step (a bug, please report)")
            state = model.state_dict()
            payload = {
                "ablation": plan.ablation, "model": plan.model_cls.name,
                "options": plan.options.model_dump(mode="json"), "identity": identity,
                "identity_hash": identity_hash(identity), "step": done, "total_steps": total,
                "finished": done >= total, "nets": state["nets"], "optimizers": state["optimizers"],
                "schedulers": {k: s.state_dict() for k, s in schedulers.items()}, "ranks": all_ranks,
                "dataset": asdict(plan.dataset),
                "meta": {"torch": str(torch.__version__), "device": str(dev), "world_size": info.world_size,
                         "deterministic": cfg.deterministic},
            }
            save_checkpoint(ckpt_path, payload)
            if done >= total:
                save_model_file(plan.model_path, payload)

    window: dict[str, float] = {}
    window_n = 0
    bar = tqdm(total=total, initial=start, desc=plan.ablation, unit="step", dynamic_ncols=True,
               disable=not (progress and info.is_main), file=sys.stderr)
    on_gpu = dev.type == "cuda"
    stream = batch_stream(batches, start, end, prefetch=on_gpu, pin=on_gpu)
    model.train()
    try:
        for step, cpu_batch in zip(range(start, end), stream, strict=True):
            t0 = time.perf_counter()
            batch = {k: v.to(dev, non_blocking=True) for k, v in cpu_batch.items()}
            if bf16:
                batch = {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}
            lrs = {name: opt.param_groups[0]["lr"] for name, opt in model.optimizers.items()}
            # A wrapped train_step runs forward, backward and step under autocast (the
            # contract keeps them in one call); bf16 needs no loss scaling.
            with autocast(dev, wrap_bf16):
                losses = model.train_step(batch)
            for sched in schedulers.values():
                sched.step()
            if info.enabled:
                average_buffers(model.nets.values())
            result.step_times.append(time.perf_counter() - t0)
            result.step_seconds += result.step_times[-1]
            done = step + 1
            result.end_step = done

            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                raise TrainingError(
                    f"{plan.ablation}: loss {bad[0]} became {losses[bad[0]]} at step {done}; training "
                    f"diverged (the last checkpoint is kept). Lower lr or change gan_mode in "
                    f"ablations.{plan.ablation}, then re-run with --no-resume")
            for k, v in losses.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            result.losses = dict(losses)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)

            if live is not None and (done % cfg.log_every == 0 or done == end):
                live.step = done
                for k, v in window.items():
                    live.log_metric(f"train/{k}", v / window_n)
                for name, lr in lrs.items():
                    live.log_metric(f"lr/{name}", lr)
                live.make_summary()
                window, window_n = {}, 0
            if info.is_main and (done % cfg.val_every == 0 or done == total) and len(val_split):
                val_l1, grid = validate(model, val_split, dev, bf16=wrap_bf16, samples=samples)
                result.val_l1 = val_l1
                if grid is not None:
                    write_samples(plan.out_dir, done, grid)
                if live is not None:
                    live.step = done
                    live.log_metric("val/l1_rgb", val_l1)
                    live.make_summary()
                bar.write(f"step {done}/{total}: val L1 {val_l1:.4f}", file=sys.stderr)
            if done % cfg.checkpoint_every == 0 or done == end:
                save(done)
    finally:
        bar.close()
    if live is not None:
        live.end()
    barrier(info)
    result.seconds = time.perf_counter() - t_start
    return result
