"""Resuming a run: whether to, and putting a checkpoint's state back into a fresh model."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from models.base import GANModel
from pipeline.training.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    check_identity,
    read_checkpoint,
    restore_rng,
)
from pipeline.training.devices import Distributed, derived_seed, seed_everything
from pipeline.training.plan import RunPlan, dataset_fingerprint


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


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


def checkpoint_to_resume(plan: RunPlan, identity: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The run folder's checkpoint when resuming and there is one (it must match
    `identity`: a CheckpointMismatch names what differs); None to start afresh."""
    path = plan.checkpoint_path
    if not (resume and path.exists()):
        return None
    ckpt = read_checkpoint(path)
    check_identity(ckpt, identity, path)
    return ckpt


def restore(model: GANModel, schedulers: Mapping[str, LRScheduler], ckpt: dict[str, Any] | None, *,
            seed: int, info: Distributed, device: torch.device, source: object = "the checkpoint",
            say: Callable[[str], None] = _stderr) -> int:
    """Put `ckpt`'s state into `model` and `schedulers` and return its step (0 without a
    checkpoint; `source` names it in messages). Every global RNG continues exactly where
    the checkpoint left it when the process count is the same; otherwise each process is
    re-seeded (with a warning)."""
    if ckpt is None:
        # Each process its own stream (dropout masks etc.); rank 0 of N == single process.
        seed_everything(derived_seed(seed, info.rank))
        return 0
    start = int(ckpt["step"])
    ranks = ckpt["ranks"]
    same_world = len(ranks) == info.world_size
    own = ranks[info.rank] if same_world else ranks[0]
    model.load_state_dict({"nets": ckpt["nets"], "optimizers": ckpt["optimizers"],
                           "extra": own.get("extra", {})})
    for name, sched in schedulers.items():
        sched.load_state_dict(ckpt["schedulers"][name])
    if same_world:
        restore_rng(own["rng"], device)
    else:
        seed_everything(derived_seed(seed, info.rank, start))
        if info.is_main:
            say(f"warning: {source} was written by {len(ranks)} process(es), this run has "
                f"{info.world_size}: training continues, but not bit-identically")
    return start


def adopt_checkpoint_threads(ckpt: dict[str, Any], device: torch.device, deterministic: bool,
                             say: Callable[[str], None] = _stderr) -> None:
    """Deterministic CPU training is bit-identical only with the same thread count (the
    convolutions split their sums by thread), and each stage picks its count from the
    machine's load when it starts (pipeline.core.cpu). So a resumed run uses the count
    its checkpoint was written with."""
    saved = ckpt.get("meta", {}).get("threads")
    now = torch.get_num_threads()
    if not (deterministic and device.type == "cpu" and isinstance(saved, int) and saved >= 1) or saved == now:
        return
    plural = "s" if saved != 1 else ""
    say(f"resuming with {saved} CPU thread{plural} like the checkpoint (instead of {now}), so the run "
        f"stays bit-identical to an uninterrupted one")
    torch.set_num_threads(saved)
