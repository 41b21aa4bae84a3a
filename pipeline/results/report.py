"""Report stage: reports/summary.md with the study's tables, charts and conclusions.

Reads the metric files of the ablations and baselines that params.yaml defines NOW
(metric files of removed ablations may linger on disk; they are ignored), the training
curves logged by DVCLive, and writes:
- reports/summary.md: one table per model family (input x variant -> FID, IS max, IS
  mean, KID, their EfficientNet-Lite0 counterparts, ΔE2000, PSNR, SSIM, colourfulness),
  the baselines, and "what this run reproduces of the study's conclusions", computed
  from the numbers;
- reports/figures/*.png: bar charts per metric and training curves (DVC plots).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.core.errors import LuminescenceError
from pipeline.core.paths import METRICS_DIR, REPORTS_DIR, RUNS_DIR
from pipeline.datasets.storage import atomic_write_bytes

FAMILIES = {"pix2pix": "pix2pix", "cyclegan": "CycleGAN", "cut": "CUT / FastCUT",
            "fastcut": "CUT / FastCUT", "bicyclegan": "BicycleGAN"}
# Table columns: (metric key, header, lower is better). Missing keys show as "—".
COLUMNS: list[tuple[str, str, bool]] = [
    ("fid", "FID", True),
    ("is_max", "IS max", False),
    ("is_mean", "IS mean", False),
    ("kid_mean", "KID", True),
    ("fd_efficientnet_lite0", "FD-EffNet", True),
    ("kid_efficientnet_lite0_mean", "KID-EffNet", True),
    ("is_efficientnet_lite0_max", "IS-EffNet max", False),
    ("is_efficientnet_lite0_mean", "IS-EffNet mean", False),
    ("delta_e2000_mean", "ΔE00 mean", True),
    ("delta_e2000_median", "ΔE00 median", True),
    ("psnr", "PSNR", False),
    ("ssim", "SSIM", False),
    ("colourfulness_output", "colourful. out", False),
    ("colourfulness_target", "colourful. target", False),
]
CHART_METRICS = ["fid", "fd_efficientnet_lite0", "kid_efficientnet_lite0_mean", "delta_e2000_mean", "ssim"]


class ReportError(LuminescenceError):
    pass


@dataclass(frozen=True)
class Entry:
    """One scored ablation or baseline."""

    name: str
    kind: str  # "model" or "baseline"
    model: str | None
    dataset: str
    input: str
    synthetic: bool
    n: int
    options: dict[str, Any]  # the ablation's own keys (what differs from the defaults)
    metrics: dict[str, Any]

    @property
    def variant(self) -> str:
        if self.kind == "baseline":
            return f"baseline: {self.name}"
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name} ({opts})" if opts else f"{self.name} (defaults)"


# --------------------------------------------------------------------------- loading
def load_entries(params: Any, metrics_dir: Path = METRICS_DIR) -> tuple[list[Entry], list[str]]:
    """Entries for the ablations and baselines in params; names without a metric file."""
    entries, missing = [], []
    jobs = [(name, ab.model, ab.dataset, ab.options, name) for name, ab in params.ablations.items()]
    jobs += [(name, None, bl.dataset, {}, f"baseline_{name}") for name, bl in params.baselines.items()]
    for name, model, dataset, options, stem in jobs:
        path = metrics_dir / f"{stem}.json"
        if not path.exists():
            missing.append(stem)
            continue
        rec = json.loads(path.read_text(encoding="utf-8"))
        entries.append(Entry(name=name, kind=rec.get("kind", "model"), model=model, dataset=dataset,
                             input=rec.get("input", "?"), synthetic=bool(rec.get("synthetic_input")),
                             n=int(rec.get("n", 0)), options=dict(options), metrics=rec["metrics"]))
    return entries, missing


def model_defaults(model: str) -> dict[str, Any]:
    from models.registry import get_model_class

    fields = get_model_class(model).Options.model_fields
    return {k: f.default for k, f in fields.items()}


def effective_options(entry: Entry) -> dict[str, Any]:
    """The ablation's options with the model's reference defaults filled in."""
    return {**model_defaults(entry.model), **entry.options} if entry.model else dict(entry.options)


# --------------------------------------------------------------------------- numbers
def primary_metric(entries: Sequence[Entry]) -> str:
    """FID when every entry has it (real Inception weights), else the EfficientNet FD."""
    if entries and all(e.metrics.get("fid") is not None for e in entries):
        return "fid"
    return "fd_efficientnet_lite0"


def _value(entry: Entry, key: str) -> float | None:
    v = entry.metrics.get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(float(v)) else None


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def table(entries: Sequence[Entry]) -> list[str]:
    cols = [c for c in COLUMNS if any(e.metrics.get(c[0]) is not None for e in entries)]
    head = ["input", "variant", "N", *[h + (" ↓" if low else " ↑") for _, h, low in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in sorted(entries, key=lambda e: (e.input, e.kind != "baseline", e.name)):
        label = e.input + (" (synthetic)" if e.synthetic else "")
        row = [label, e.variant, str(e.n), *[fmt(e.metrics.get(k)) for k, _, _ in cols]]
        lines.append("| " + " | ".join(row) + " |")
    return lines


# --------------------------------------------------------------------------- conclusions
@dataclass(frozen=True)
class Claim:
    """One conclusion of the study, re-tested on this run's numbers."""

    text: str  # e.g. "Lab beat RGB for pix2pix on {input} input"
    family: Callable[[Entry], bool]
    treatment: Callable[[dict[str, Any]], bool]
    control: Callable[[dict[str, Any]], bool]
    factors: tuple[str, ...]  # options allowed to differ between treatment and control


def _is(model: str) -> Callable[[Entry], bool]:
    return lambda e: e.kind == "model" and e.model == model


CLAIMS = [
    Claim("Lab beat RGB for pix2pix on {input} input", _is("pix2pix"),
          lambda o: o["color_space"] == "lab", lambda o: o["color_space"] == "rgb", ("color_space",)),
    Claim("ResNet beat U-Net generators for pix2pix on {input} input", _is("pix2pix"),
          lambda o: o["netG"].startswith("resnet"), lambda o: o["netG"].startswith("unet"), ("netG",)),
    Claim("ngf 128 / ndf 32 beat 64 / 64 for pix2pix on {input} input", _is("pix2pix"),
          lambda o: o["ngf"] > o["ndf"], lambda o: o["ngf"] == o["ndf"], ("ngf", "ndf")),
    Claim("ngf 128 / ndf 32 beat 64 / 64 for CycleGAN on {input} input", _is("cyclegan"),
          lambda o: o["ngf"] > o["ndf"], lambda o: o["ngf"] == o["ndf"], ("ngf", "ndf")),
    Claim("LSGAN beat vanilla GAN loss for {model} on {input} input",
          lambda e: e.kind == "model" and e.model in ("cut", "fastcut"),
          lambda o: o["gan_mode"] == "lsgan", lambda o: o["gan_mode"] == "vanilla", ("gan_mode",)),
    Claim("LSGAN beat WGAN-GP for {model} on {input} input",
          lambda e: e.kind == "model" and e.model in ("cut", "fastcut"),
          lambda o: o["gan_mode"] == "lsgan", lambda o: o["gan_mode"] == "wgangp", ("gan_mode",)),
]


def _comparable(a: dict[str, Any], b: dict[str, Any], factors: tuple[str, ...]) -> bool:
    keys = (set(a) | set(b)) - set(factors)
    return all(a.get(k) == b.get(k) for k in keys)


def _verdict(text: str, t: Entry, c: Entry, metric: str, lower_better: bool) -> str | None:
    vt, vc = _value(t, metric), _value(c, metric)
    if vt is None or vc is None:
        return None
    better = vt < vc if lower_better else vt > vc
    diff = abs(vt - vc)
    rel = diff / abs(vc) * 100 if vc else float("nan")
    word = "**yes**" if better else "**no**"
    return (f"- {text}: {word}, {metric} {fmt(vt)} ({t.name}) vs {fmt(vc)} ({c.name}), "
            f"{'better' if better else 'worse'} by {fmt(diff)} ({rel:.0f}%)")


def conclusions(entries: Sequence[Entry], metric: str) -> list[str]:
    lines: list[str] = []
    models = [e for e in entries if e.kind == "model"]
    for claim in CLAIMS:
        fam = [e for e in models if claim.family(e)]
        for t in fam:
            ot = effective_options(t)
            if not claim.treatment(ot):
                continue
            for c in fam:
                oc = effective_options(c)
                if c is t or c.dataset != t.dataset or c.model != t.model or not claim.control(oc):
                    continue
                if not _comparable(ot, oc, claim.factors):
                    continue
                text = claim.text.format(input=t.input + (" (synthetic)" if t.synthetic else ""),
                                         model=t.model)
                line = _verdict(text, t, c, metric, lower_better=True)
                if line:
                    lines.append(line)
    # FastCUT vs CUT (different models, same dataset and options otherwise).
    for t in (e for e in models if e.model == "fastcut" and not e.options.get("gan_mode")):
        for c in (e for e in models if e.model == "cut" and e.dataset == t.dataset):
            if c.options == t.options:
                line = _verdict(f"FastCUT beat CUT on {t.input} input", t, c, metric, True)
                if line:
                    lines.append(line)
    # CycleGAN / CUT vs pix2pix on the historic input: best of each side.
    for dataset in sorted({e.dataset for e in models if e.input == "historic"}):
        unpaired = [e for e in models if e.dataset == dataset and e.model in ("cyclegan", "cut", "fastcut")
                    and _value(e, metric) is not None]
        paired = [e for e in models if e.dataset == dataset and e.model == "pix2pix"
                  and _value(e, metric) is not None]
        if unpaired and paired:
            best_u = min(unpaired, key=lambda e: _value(e, metric))
            best_p = min(paired, key=lambda e: _value(e, metric))
            line = _verdict(f"CycleGAN/CUT beat pix2pix on historic input ({dataset}; best of each)",
                            best_u, best_p, metric, True)
            if line:
                lines.append(line)
    # BicycleGAN: where z enters the generator (a ranking, the study compared three).
    for dataset in sorted({e.dataset for e in models if e.model == "bicyclegan"}):
        bic = [e for e in models if e.model == "bicyclegan" and e.dataset == dataset
               and _value(e, metric) is not None]
        if len(bic) > 1:
            ranked = sorted(bic, key=lambda e: _value(e, metric))
            order = " < ".join(f"{effective_options(e).get('where_add')} ({fmt(_value(e, metric))})"
                               for e in ranked)
            lines.append(f"- BicycleGAN, where z enters G, on {bic[0].input} input ({metric}, best "
                         f"first): {order}")
    # Every model against the input-as-output floor.
    floors = {e.dataset: e for e in entries if e.kind == "baseline" and e.name.startswith("input")}
    for dataset, floor in sorted(floors.items()):
        ms = [e for e in models if e.dataset == dataset and _value(e, "delta_e2000_mean") is not None]
        if ms and _value(floor, "delta_e2000_mean") is not None:
            beat = [e.name for e in ms if _value(e, "delta_e2000_mean") < _value(floor, "delta_e2000_mean")]
            lines.append(f"- Models whose colours (ΔE00 mean) beat the grayscale input on {dataset}: "
                         f"{len(beat)} of {len(ms)}" + (f" ({', '.join(beat)})" if beat else ""))
    return lines


# --------------------------------------------------------------------------- figures
def bar_charts(entries: Sequence[Entry], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric in CHART_METRICS:
        rows = [(e, _value(e, metric)) for e in entries if _value(e, metric) is not None]
        if not rows:
            continue
        rows.sort(key=lambda r: (r[0].dataset, r[1]))
        fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
        colours = ["#999999" if e.kind == "baseline" else ("#c0504d" if e.synthetic else "#4f81bd")
                   for e, _ in rows]
        ax.barh([f"{e.dataset}: {e.name}" for e, _ in rows], [v for _, v in rows], color=colours)
        ax.invert_yaxis()
        ax.set_xlabel(metric + ("" if metric in ("ssim",) else " (lower is better)"))
        ax.set_title(f"{metric} per ablation (test split; red: synthetic historic input, grey: baselines)",
                     fontsize=9)
        fig.tight_layout()
        path = out_dir / f"bar_{metric}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def _read_tsv(path: Path) -> tuple[list[float], list[float]]:
    steps, values = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            key = next(k for k in row if k not in ("step", "timestamp"))
            steps.append(float(row["step"]))
            values.append(float(row[key]))
    return steps, values


def training_curves(names: Sequence[str], out_dir: Path, runs_dir: Path = RUNS_DIR) -> list[Path]:
    """One PNG per ablation with its logged losses and validation L1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name in names:
        plots = runs_dir / name / "dvclive" / "plots" / "metrics"
        series = sorted(plots.glob("train/*.tsv")) + sorted(plots.glob("val/*.tsv"))
        if not series:
            continue
        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.2))
        for tsv in series:
            steps, values = _read_tsv(tsv)
            ax = ax_val if tsv.parent.name == "val" else ax_loss
            ax.plot(steps, values, label=tsv.stem)
        ax_loss.set_title(f"{name}: training losses", fontsize=9)
        ax_val.set_title(f"{name}: validation", fontsize=9)
        for ax in (ax_loss, ax_val):
            ax.set_xlabel("step")
            if ax.lines:
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"curves_{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- the stage
def summary_markdown(params: Any, entries: Sequence[Entry], missing: Sequence[str],
                     figures: Sequence[Path]) -> str:
    metric = primary_metric([e for e in entries if e.kind == "model"])
    lines = ["# Luminescence: results", "",
             f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m pipeline.stages.report` "
             f"from metrics/*.json (training preset `{params.train.preset if params.train else '?'}`).",
             ""]
    if any(e.synthetic for e in entries):
        lines += ["> **The `historic` input of the bundled sample is SYNTHETIC**: a film emulation of "
                  "the 2011 NYSDOP photo (`erie_2011_film`), not a real historic photograph. Results "
                  "on it test the pipeline, not the study's claims about real old photos.", ""]
    if all(e.metrics.get("fid") is None for e in entries):
        lines += ["> FID / IS / KID (Inception) are absent: the pytorch-fid Inception weights were not "
                  "found (see README, 'FID weights'). The EfficientNet-Lite0 columns are the offline "
                  "stand-ins and are NOT comparable with published FIDs.", ""]
    ns = sorted({e.n for e in entries})
    lines += [f"Test-set sizes N: {', '.join(map(str, ns))}. Fréchet distances and IS are biased at "
              "small N; compare only at equal N (KID is the fairer one). ↓ lower is better, ↑ higher.", ""]
    baselines = [e for e in entries if e.kind == "baseline"]
    by_family: dict[str, list[Entry]] = {}
    for e in entries:
        if e.kind == "model":
            by_family.setdefault(FAMILIES.get(e.model or "", e.model or "?"), []).append(e)
    for family, members in by_family.items():
        datasets = {m.dataset for m in members}
        floor = [b for b in baselines if b.dataset in datasets]
        lines += [f"## {family}", "", *table(members + floor), ""]
    if baselines:
        lines += ["## Baselines", "", *table(baselines), ""]
    lines += ["## What this run reproduces of the study's conclusions", "",
              f"Each line compares ablations that differ only in the factor named, on `{metric}` "
              "(lower is better). Small test sets and the short CPU training budget make single "
              "differences noisy: read them as a check of the pipeline, not as evidence.", ""]
    found = conclusions(entries, metric)
    lines += found or ["- (no comparable ablation pairs in params.yaml)"]
    lines.append("")
    if missing:
        lines += ["## Not yet scored", "", *[f"- {m}: no metrics file (run its evaluate stage)"
                                             for m in missing], ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in figures]
        lines.append("")
    return "\n".join(lines)


def write_report(params: Any, *, metrics_dir: Path = METRICS_DIR, runs_dir: Path = RUNS_DIR,
                 out_dir: Path = REPORTS_DIR) -> Path:
    entries, missing = load_entries(params, metrics_dir)
    if not entries:
        raise ReportError(f"no metric files in {metrics_dir} for the ablations in params.yaml; run "
                          f"the evaluate stages first (dvc repro)")
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):  # removed ablations must not linger
        stale.unlink()
    figures = bar_charts(entries, fig_dir)
    figures += training_curves([e.name for e in entries if e.kind == "model"], fig_dir, runs_dir)
    path = out_dir / "summary.md"
    atomic_write_bytes(path, summary_markdown(params, entries, missing, figures).encode())
    return path
