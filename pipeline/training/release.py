"""Training the release model: `release` in params.yaml -> release/ (see pipeline/stages/release.py).

One model, built by name from the registry with its typed options, trained on
pipeline.datasets.release's native-resolution crops (film augmentation included), with
the constant-then-linear learning-rate schedule of every other run. Every `val_every`
steps (and at the end) it scores the validation windows: CIEDE2000 ΔE mean of the
colourised output against the real colours, with clean gray input and with the
`sample.film` emulation as input, next to the same score of the gray input itself. The
weights kept are those of the best clean validation ΔE (`select: best_val`) or the last.
The held-out area plays no part here (pipeline/results/release_card.py scores it).

Then, with `norm_stats: training_data`, the generator's instance norms get fixed statistics,
gathered over `norm_stats_samples` training inputs drawn as in training (film augmentation
included; models/networks/norm_stats.py says why: no seams between windows).

Time to quality: the wall time and iterations until the validation ΔE2000 mean first drops
below the gray input's (measured at validation steps, so at most `val_every` late).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from tqdm import tqdm

from eval.colour_metrics import delta_e2000
from models.base import GANModel, ModelOptions
from models.networks.norm_stats import NormStats, gathering, instance_norms
from models.registry import get_model_class
from pipeline.core.config import ConfigError, Params, ReleaseConfig, format_validation_error
from pipeline.core.errors import LuminescenceError
from pipeline.datasets.release import (
    ReleaseBatches,
    ReleaseData,
    build_release_data,
    crop_inputs,
    release_batches,
)
from pipeline.training.checkpoint import save_model_file
from pipeline.training.devices import configure_determinism, describe, pick_device, seed_everything
from pipeline.training.loop import make_schedulers

VAL_BATCH = 8
NORM_STATS_STEP0 = 10**9  # sample streams of the norm statistics: never those of a training step


class ReleaseError(LuminescenceError):
    """The release model cannot be trained or saved as configured."""


def release_options(release: ReleaseConfig) -> tuple[type[GANModel], ModelOptions]:
    """The model class and its validated options (errors name `release.options.<key>`)."""
    cls = get_model_class(release.model, key="release.model")
    try:
        return cls, cls.Options.model_validate(release.options)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, cls.Options, prefix="release.options")) from None


def colourise_u8(model: GANModel, gray: np.ndarray, device: torch.device,
                 batch: int = VAL_BATCH) -> np.ndarray:
    """(N, H, W) uint8 gray -> (N, H, W, 3) uint8 RGB, in eval mode without autograd."""
    out = []
    for start in range(0, len(gray), batch):
        x = torch.from_numpy(np.ascontiguousarray(gray[start:start + batch])).unsqueeze(1).float() / 255.0
        rgb = model.colourise(x.to(device)).float().clamp(0, 1).cpu()
        out.append((rgb * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def gray_as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


@dataclass
class ValSet:
    """Validation windows: targets (N, H, W, 3) and the two inputs (N, H, W)."""

    target: np.ndarray
    clean: np.ndarray
    film: np.ndarray
    gray_delta_e_clean: float = 0.0
    gray_delta_e_film: float = 0.0

    @classmethod
    def of(cls, data: ReleaseData, params: Params, seed: int) -> ValSet:
        target = np.ascontiguousarray(data.val.rgb.transpose(0, 2, 3, 1))
        clean = crop_inputs(data.val, None)
        film = crop_inputs(data.val, params.sample.film, seed)
        return cls(target, clean, film, delta_e2000(gray_as_rgb(clean), target)[0],
                   delta_e2000(gray_as_rgb(film), target)[0])

    def score(self, model: GANModel, device: torch.device) -> tuple[float, float]:
        """(ΔE2000 mean with clean input, with film input) of the model's colours."""
        with torch.random.fork_rng(devices=[]):
            return (delta_e2000(colourise_u8(model, self.clean, device), self.target)[0],
                    delta_e2000(colourise_u8(model, self.film, device), self.target)[0])


@dataclass
class ReleaseResult:
    model: str
    options: dict[str, Any]
    steps: int
    constant_steps: int
    decay_steps: int
    batch_size: int
    kept_step: int
    seconds: float
    step_seconds: float
    device: str
    threads: int
    parameters: dict[str, int]
    train_positions: int
    val_windows: int
    val: dict[str, float]  # the kept weights' scores and the gray input's
    time_to_quality: dict[str, float | int | None]
    curves: list[dict[str, float]] = field(default_factory=list)
    encoder_sha256: str | None = None
    stopped_early_at: int | None = None  # the step where --max-minutes stopped the run
    norm_stats: dict[str, Any] | None = None  # how the instance norms' fixed statistics were gathered

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _identity(release: ReleaseConfig, params: Params) -> str:
    doc = {"release": release.model_dump(mode="json"), "film": params.sample.film.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def gather_norm_stats(model: GANModel, batches: ReleaseBatches, samples: int, device: torch.device, *,
                      progress: bool = False) -> tuple[dict[str, NormStats], dict[str, Any]] | None:
    """Statistics for the generator's instance norms over `samples` training inputs (drawn like
    training batches, from streams no training step uses), and a record of how; None when the
    generator has no instance norms."""
    name = model.colourising_net
    net = model.nets[name]
    if not instance_norms(net):
        return None
    t0 = time.perf_counter()
    model.eval()
    bar = tqdm(total=samples, desc="norm statistics", unit="input", disable=not progress, file=sys.stderr)
    with gathering(net) as gatherer, torch.no_grad(), torch.random.fork_rng(devices=[]):
        for start in range(0, samples, VAL_BATCH):
            # one sample per stream, so the inputs do not depend on the training batch size
            inputs = np.stack([batches.sample(NORM_STATS_STEP0 + j, 0)[0]
                               for j in range(start, min(start + VAL_BATCH, samples))])
            model.colourise(torch.from_numpy(inputs).unsqueeze(1).float().div_(255.0).to(device))
            bar.update(len(inputs))
        stats = gatherer.result()
    bar.close()
    record = {"source": "training_data", "network": name, "samples": gatherer.images,
              "crop_size": batches.data.crop_size, "norms": len(stats),
              "seconds": round(time.perf_counter() - t0, 1)}
    return {name: stats}, record


def _snapshot(model: GANModel) -> dict[str, dict[str, torch.Tensor]]:
    return {k: {n: t.detach().cpu().clone() for n, t in net.state_dict().items()}
            for k, net in model.nets.items()}


def train_release(release: ReleaseConfig, params: Params, out_dir: Path, *, steps: int | None = None,
                  progress: bool = True, data: ReleaseData | None = None,
                  max_minutes: float | None = None) -> ReleaseResult:
    """Train, validate, keep the selected weights in out_dir/model.pt; returns the record.

    steps: total iterations instead of release.steps + release.decay_steps (keeping their
    ratio), for short checks of the whole stage. max_minutes: a wall-time cap; when it is
    reached the run validates once more and stops early (the record says so), keeping
    the best validated weights as usual."""
    cls, options = release_options(release)
    constant, decay = release.steps, release.decay_steps
    if steps is not None:
        if steps < 1:
            raise ReleaseError(f"--steps must be at least 1 (got {steps})")
        constant = round(steps * constant / (constant + decay))
        decay = steps - constant
    total = constant + decay
    if release.threads:
        torch.set_num_threads(release.threads)
    device = pick_device(release.device)
    configure_determinism(True, device)
    t_start = time.perf_counter()
    data = data or build_release_data(release.data, params)
    batches = release_batches(data, release, params)
    val = ValSet.of(data, params, release.seed)
    seed_everything(release.seed)
    model = cls(options, device)
    schedulers = make_schedulers(model, constant, decay)
    curves: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Any]] | None = None
    quality: dict[str, float | int | None] = {"steps": None, "seconds": None}
    step_seconds = 0.0
    stopped_at: int | None = None
    window: dict[str, float] = {}
    window_n = 0
    model.train()
    bar = tqdm(total=total, desc="release", unit="step", disable=not progress, file=sys.stderr)
    try:
        for step in range(total):
            t0 = time.perf_counter()
            losses = model.train_step(batches.batch(step))
            for sched in schedulers.values():
                sched.step()
            step_seconds += time.perf_counter() - t0
            bad = [k for k, v in losses.items() if not np.isfinite(v)]
            if bad:
                raise ReleaseError(f"release: loss {bad[0]} became {losses[bad[0]]} at step {step + 1}; "
                                   "training diverged. Lower `release.options.lr` and run `make release` "
                                   "again")
            for k, v in losses.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            bar.update(1)
            done = step + 1
            out_of_time = (max_minutes is not None and done != total
                           and time.perf_counter() - t_start > max_minutes * 60)
            if done % release.val_every and done != total and not out_of_time:
                continue
            de_clean, de_film = val.score(model, device)
            row = {"step": done, "seconds": round(time.perf_counter() - t_start, 2),
                   "val_delta_e2000_clean": de_clean, "val_delta_e2000_film": de_film,
                   **{f"train_{k}": v / window_n for k, v in window.items()}}
            curves.append(row)
            window, window_n = {}, 0
            bar.write(f"step {done}/{total}: val ΔE2000 {de_clean:.2f} clean, {de_film:.2f} film (gray "
                      f"input {val.gray_delta_e_clean:.2f}, {val.gray_delta_e_film:.2f})", file=sys.stderr)
            if quality["steps"] is None and de_clean < val.gray_delta_e_clean:
                quality = {"steps": done, "seconds": row["seconds"]}
            if release.select == "last" or best is None or de_clean < best[0]:
                best = (de_clean, done, _snapshot(model))
            if out_of_time:
                bar.write(f"release: stopping at step {done}/{total}: --max-minutes {max_minutes:g} reached",
                          file=sys.stderr)
                stopped_at = done
                break
    finally:
        bar.close()
    assert best is not None
    kept_step = best[1]
    for name, net in model.nets.items():
        net.load_state_dict(best[2][name])
    kept = next(r for r in curves if r["step"] == kept_step)
    gathered = (gather_norm_stats(model, batches, release.norm_stats_samples, device, progress=progress)
                if release.norm_stats == "training_data" else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model_file(out_dir / "model.pt", {
        "ablation": "release", "model": cls.name, "options": options.model_dump(mode="json"),
        "identity_hash": _identity(release, params), "step": kept_step,
        "nets": {k: n.state_dict() for k, n in model.nets.items()},
        "dataset": {"name": "release", "layers": list(release.data.layers),
                    "held_out": list(release.data.held_out), "val_aoi": release.data.val_aoi,
                    "synthetic_input": False},
        "norm_stats": gathered[0] if gathered else None,
        "norm_stats_source": gathered[1] if gathered else None,
    })
    size_mb = (out_dir / "model.pt").stat().st_size / 1e6
    if size_mb > release.max_weights_mb:
        raise ReleaseError(f"{out_dir / 'model.pt'} is {size_mb:.1f} MB, over `release.max_weights_mb` "
                           f"({release.max_weights_mb:g}); use smaller ngf/ndf or netG in `release.options`")
    generator = model.nets[model.colourising_net]
    return ReleaseResult(
        model=cls.name, options=options.model_dump(mode="json"), steps=total, constant_steps=constant,
        decay_steps=decay, batch_size=release.batch_size, kept_step=kept_step,
        seconds=round(time.perf_counter() - t_start, 1), step_seconds=round(step_seconds, 1),
        device=describe(device), threads=torch.get_num_threads(), parameters=model.parameter_counts(),
        train_positions=data.train_positions, val_windows=len(val.target),
        val={"delta_e2000_clean": kept["val_delta_e2000_clean"],
             "delta_e2000_film": kept["val_delta_e2000_film"],
             "gray_delta_e2000_clean": val.gray_delta_e_clean,
             "gray_delta_e2000_film": val.gray_delta_e_film},
        time_to_quality=quality, curves=curves, encoder_sha256=getattr(generator, "encoder_sha256", None),
        stopped_early_at=stopped_at, norm_stats=gathered[1] if gathered else None)
