"""What one training run depends on: `plan_run` resolves an ablation of params.yaml
(model options and where each came from, preset, schedule, dataset) into a `RunPlan`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.base import GANModel, ModelOptions
from models.registry import OptionSource, get_model_class, resolve_options_with_sources
from pipeline.core.config import Params, TrainConfig, TrainPreset, lookup
from pipeline.core.errors import LuminescenceError
from pipeline.core.paths import DATASETS_DIR, RUNS_DIR
from pipeline.datasets.storage import DatasetInfo, open_split, read_info
from pipeline.training.devices import distributed_from_env


class TrainingError(LuminescenceError):
    """Training cannot start or continue (e.g. the losses diverged)."""


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
    # Where each option's value came from (models.registry.resolve_options_with_sources).
    option_sources: dict[str, OptionSource] | None = None

    @property
    def total_steps(self) -> int:
        return self.constant_steps + self.decay_steps

    @property
    def val_every(self) -> int:
        """Steps between validations: the preset's, else train.val_every."""
        return self.preset.val_every or self.config.val_every

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
    options, sources = resolve_options_with_sources(
        ab.model, ablation_name=ablation, ablation=ab.options, shared=cfg.defaults, preset=preset,
        preset_name=cfg.preset)
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
                   decay_steps=decay, out_dir=Path(out_dir) if out_dir else RUNS_DIR / ablation,
                   option_sources=sources)


def dataset_fingerprint(dataset_dir: Path) -> str:
    """SHA-256 over the train and val arrays (about 1 s per GB): a rebuilt dataset is noticed."""
    digest = hashlib.sha256()
    for split in ("train", "val"):
        with open(Path(dataset_dir) / f"{split}.npy", "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
