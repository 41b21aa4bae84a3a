"""What a run says about itself: the opening log line and runs/<ablation>/options.json."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from models.base import GANModel
from pipeline.training.devices import describe
from pipeline.training.plan import RunPlan


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
            f"{params} parameters; on {describe(device)}{procs}; {_validation(plan)}")


def _validation(plan: RunPlan) -> str:
    tiles = min(plan.val_tiles, plan.preset.val_tiles or plan.val_tiles)
    when = "at the end"
    if plan.val_every < plan.total_steps:
        when = f"every {plan.val_every} steps and {when}"
    return f"validating on {tiles} of {plan.val_tiles} val tiles {when}"


def option_sources(plan: RunPlan) -> dict[str, dict[str, Any]]:
    """Per option: its value, where it came from (`reference`, `train.presets.<name>`,
    `train.defaults` or `ablations.<name>`), the reference default when the value differs,
    and the value before the preset's width scaling when that changed it."""
    values = plan.options.model_dump(mode="json")
    if plan.option_sources is None:  # a plan built by hand, without provenance
        return {name: {"value": value, "source": "unknown"} for name, value in values.items()}
    return {name: plan.option_sources[name].to_json(value) for name, value in values.items()}


def changed_options(plan: RunPlan) -> str:
    """One line naming the options that are not the reference's (for the run's log)."""
    parts = []
    for name, info in option_sources(plan).items():
        if "default" in info:
            parts.append(f"{name}={info['value']} ({info['source']}; reference {info['default']})")
    return "options differing from the reference: " + (", ".join(parts) if parts else "none")


def options_record(plan: RunPlan, model: GANModel, device: torch.device, world: int,
                   fingerprint: str) -> dict[str, Any]:
    """The content of runs/<ablation>/options.json."""
    return {
        "ablation": plan.ablation,
        "model": plan.model_cls.name,
        "paired": plan.model_cls.paired,
        "options": plan.options.model_dump(mode="json"),
        "option_sources": option_sources(plan),
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
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
    }
