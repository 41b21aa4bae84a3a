"""Writing a run's checkpoints (and its model file once finished), from every process's state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from models.base import GANModel
from pipeline.training.checkpoint import (
    capture_rng,
    identity_hash,
    save_checkpoint,
    save_model_file,
    weights_digest,
)
from pipeline.training.devices import Distributed, gather_objects
from pipeline.training.plan import RunPlan, TrainingError


class Checkpointer:
    """Saves the training state after a step: networks, optimizers, schedulers and, per
    process, every RNG and the model's extra state (gathered on the main process, which
    alone writes). Every process must call `save` at the same steps."""

    def __init__(self, plan: RunPlan, identity: dict[str, Any], model: GANModel,
                 schedulers: Mapping[str, LRScheduler], info: Distributed, device: torch.device) -> None:
        self.plan = plan
        self.identity = identity
        self.model = model
        self.schedulers = schedulers
        self.info = info
        self.device = device

    def due(self, done: int, end: int) -> bool:
        """Every `train.checkpoint_every` steps and at the last step of this run."""
        return done % self.plan.config.checkpoint_every == 0 or done == end

    def save(self, done: int) -> None:
        plan, info, model = self.plan, self.info, self.model
        rank_state = {"rng": capture_rng(self.device), "extra": model.extra_state(),
                      "weights": weights_digest(model.nets)}
        all_ranks = gather_objects(rank_state, info)
        if not info.is_main:
            return
        assert all_ranks is not None
        if len({r["weights"] for r in all_ranks}) > 1:  # type: ignore[index]
            raise TrainingError(
                f"{plan.ablation}: the {info.world_size} processes hold different weights at step "
                f"{done}; the model must update through GANModel.optimizer_step (a bug, please report)")
        total = plan.total_steps
        state = model.state_dict()
        payload = {
            "ablation": plan.ablation, "model": plan.model_cls.name,
            "options": plan.options.model_dump(mode="json"), "identity": self.identity,
            "identity_hash": identity_hash(self.identity), "step": done, "total_steps": total,
            "finished": done >= total, "nets": state["nets"], "optimizers": state["optimizers"],
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()}, "ranks": all_ranks,
            "dataset": asdict(plan.dataset),
            "meta": {"torch": str(torch.__version__), "device": str(self.device),
                     "world_size": info.world_size, "deterministic": plan.config.deterministic,
                     "threads": torch.get_num_threads()},
        }
        save_checkpoint(plan.checkpoint_path, payload)
        if done >= total:
            save_model_file(plan.model_path, payload)
