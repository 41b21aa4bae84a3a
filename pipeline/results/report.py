"""Report stage: reports/summary.md with the study's tables, intervals, baselines and verdicts.

Reads the evaluation records (reports/evaluation/<name>.json and .npz, written by the
evaluate stage) of the ablations and baselines that params.yaml defines NOW (records of
removed ablations may linger on disk; they are ignored), the training curves logged by
DVCLive, and writes:
- reports/summary.md: one table per model family on the test split, the held-out area's
  table (and what differs there), the baselines and which models beat them, and the
  study's claims re-tested with paired bootstrap intervals: "yes", "no" or "inconclusive";
- reports/figures/*.png: bar charts with intervals and training curves (DVC plots).
Every number comes from this run's records: the verdicts are this run's, not the study's.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import LuminescenceError
from pipeline.core.paths import REPORTS_DIR, RUNS_DIR
from pipeline.datasets.storage import atomic_write_bytes

DETAILS_DIR = REPORTS_DIR / "evaluation"
FAMILIES = {"pix2pix": "pix2pix", "cyclegan": "CycleGAN", "cut": "CUT / FastCUT",
            "fastcut": "CUT / FastCUT", "bicyclegan": "BicycleGAN"}
# Table columns: (metric key, header, lower is better; None: closer to the targets' is better).
# Missing keys show as "—".
COLUMNS: list[tuple[str, str, bool | None]] = [
    ("fid", "FID", True),
    ("kid_mean", "KID", True),
    ("delta_e2000_mean", "ΔE00", True),
    ("psnr", "PSNR", False),
    ("ssim", "SSIM", False),
    ("colourfulness_output", "colourful.", None),
    ("is_max", "IS max", False),
    ("is_mean", "IS mean", False),
]
EFFNET_COLUMNS: list[tuple[str, str, bool | None]] = [
    ("is_efficientnet_lite0_max", "IS-EffNet max", False),
    ("is_efficientnet_lite0_mean", "IS-EffNet mean", False),
    ("fd_efficientnet_lite0", "FD-EffNet", True),
]
VERDICT_METRICS = (("fid", "FID", True), ("delta_e2000_mean", "ΔE00", True))
CHART_METRICS = [("test", "fid"), ("test", "delta_e2000_mean"), ("heldout", "fid"),
                 ("heldout", "delta_e2000_mean")]


class ReportError(LuminescenceError):
    pass


TRAINED = "trained model"  # Entry.kind of params.yaml `trained_models` (the release model)


@dataclass
class Entry:
    """One scored ablation or baseline: its record and bootstrap replicates."""

    name: str
    kind: str  # "model" or "baseline"
    model: str | None
    dataset: str
    input: str
    synthetic: bool
    options: dict[str, Any]  # the ablation's own keys (what differs from the defaults)
    record: dict[str, Any]
    replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        if self.kind == "baseline":
            return f"baseline: {self.name}"
        if self.kind == TRAINED:
            net = self.options.get("netG")
            return f"{self.name} ({self.record.get('model_file', '?')}{f', {net}' if net else ''})"
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name} ({opts})" if opts else f"{self.name} (defaults)"

    def area(self, key: str) -> dict[str, Any] | None:
        return self.record.get("areas", {}).get(key)

    def value(self, area: str, metric: str) -> float | None:
        data = self.area(area)
        v = data["values"].get(metric) if data else None
        return float(v) if isinstance(v, int | float) and math.isfinite(float(v)) else None

    def interval(self, area: str, metric: str) -> list[float] | None:
        data = self.area(area)
        return data["intervals"].get(metric) if data else None


# --------------------------------------------------------------------------- loading
def load_entries(params: Any, details_dir: Path = DETAILS_DIR) -> tuple[list[Entry], list[str]]:
    """Entries for the ablations and baselines in params; names without an evaluation record."""
    entries, missing = [], []
    jobs = [(name, ab.model, ab.dataset, ab.options, name) for name, ab in params.ablations.items()]
    jobs += [(name, None, bl.dataset, {}, f"baseline_{name}") for name, bl in params.baselines.items()]
    jobs += [(name, None, tm.dataset, {}, f"model_{name}") for name, tm in params.trained_models.items()]
    for name, model, dataset, options, stem in jobs:
        path = details_dir / f"{stem}.json"
        if not path.exists():
            missing.append(stem)
            continue
        rec = json.loads(path.read_text(encoding="utf-8"))
        reps: dict[str, dict[str, np.ndarray]] = {}
        npz_path = path.with_suffix(".npz")
        if npz_path.exists():
            with np.load(npz_path, allow_pickle=False) as npz:
                for key in npz.files:
                    area, metric = key.split("/", 1)
                    reps.setdefault(area, {})[metric] = npz[key]
        kind = rec.get("kind", "model")
        if kind == TRAINED:  # the release model: its class and options come from its own files
            model, options = rec.get("model"), rec.get("options", {})
        entries.append(Entry(name=name, kind=kind, model=model, dataset=dataset,
                             input=rec.get("input", "?"), synthetic=bool(rec.get("synthetic_input")),
                             options=dict(options), record=rec, replicates=reps))
    return entries, missing


def model_defaults(model: str) -> dict[str, Any]:
    from models.registry import get_model_class

    fields = get_model_class(model).Options.model_fields
    return {k: f.default for k, f in fields.items()}


def effective_options(entry: Entry) -> dict[str, Any]:
    """The ablation's options with the model's reference defaults filled in."""
    return {**model_defaults(entry.model), **entry.options} if entry.model else dict(entry.options)


# --------------------------------------------------------------------------- numbers
def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.4f}"
        return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def fmt_ci(value: float | None, ci: list[float] | None) -> str:
    """`4.63 [4.41, 4.86]`, or the value alone where there is no interval."""
    if value is None:
        return "—"
    return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else fmt(value)


def _columns(entries: Sequence[Entry], area: str) -> list[tuple[str, str, bool | None]]:
    cols = [c for c in COLUMNS if any(e.value(area, c[0]) is not None for e in entries)]
    if not any(e.value(area, "is_max") is not None for e in entries):  # no classifier: IS-EffNet
        cols += [c for c in EFFNET_COLUMNS[:2] if any(e.value(area, c[0]) is not None for e in entries)]
    return cols


def table(entries: Sequence[Entry], area: str = "test") -> list[str]:
    rows = [e for e in entries if e.area(area)]
    cols = _columns(rows, area)
    arrows = {True: " ↓", False: " ↑", None: ""}
    head = ["input", "variant", "N", *[h + arrows[low] for _, h, low in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in sorted(rows, key=lambda e: (e.input, e.kind != "baseline", e.name)):
        synthetic = bool(e.area(area).get("synthetic_input"))  # type: ignore[union-attr]
        label = e.input + (" (SYNTHETIC)" if synthetic else "")
        cells = [fmt_ci(e.value(area, k), e.interval(area, k)) for k, _, _ in cols]
        lines.append("| " + " | ".join([label, e.variant, str(e.area(area)["n"]), *cells]) + " |")  # type: ignore[index]
    return lines


# --------------------------------------------------------------------------- paired comparisons
@dataclass(frozen=True)
class Comparison:
    """treatment - control on one metric and area, with its paired bootstrap interval."""

    metric: str
    label: str
    difference: float
    low: float
    high: float
    verdict: str  # yes / no / inconclusive: is the treatment better?

    def text(self) -> str:
        return f"{self.label} {fmt(self.difference)} [{fmt(self.low)}, {fmt(self.high)}] → **{self.verdict}**"


def compare(treatment: Entry, control: Entry, metric: str, label: str, lower_is_better: bool,
            area: str = "test") -> Comparison | None:
    """Paired bootstrap of treatment - control; None unless both were scored on the same tiles
    with the same bootstrap draws (then their replicates pair up)."""
    from eval.bootstrap import difference_interval, verdict
    from eval.scores import INTERVAL_METHODS

    ta, ca = treatment.area(area), control.area(area)
    if not ta or not ca or ta["tiles_sha256"] != ca["tiles_sha256"]:
        return None
    if treatment.record.get("bootstrap", {}).get("seed") != control.record.get("bootstrap", {}).get("seed"):
        return None
    vt, vc = treatment.value(area, metric), control.value(area, metric)
    rt = treatment.replicates.get(area, {}).get(metric)
    rc = control.replicates.get(area, {}).get(metric)
    if vt is None or vc is None or rt is None or rc is None or rt.shape != rc.shape:
        return None
    if not (np.all(np.isfinite(rt)) and np.all(np.isfinite(rc))):
        return None
    confidence = float(treatment.record.get("bootstrap", {}).get("confidence", 0.95))
    diff, ci = difference_interval(vt, rt, vc, rc, confidence=confidence,
                                   method=INTERVAL_METHODS.get(metric, "percentile"))
    return Comparison(metric, label, diff, ci.low, ci.high, verdict(ci, lower_is_better=lower_is_better))


def verdict_cells(treatment: Entry, control: Entry, area: str = "test") -> str | None:
    parts = [compare(treatment, control, m, label, low, area) for m, label, low in VERDICT_METRICS]
    found = [c.text() for c in parts if c is not None]
    return "; ".join(found) if found else None


# --------------------------------------------------------------------------- the study's claims
@dataclass(frozen=True)
class Claim:
    """One conclusion of the study, re-tested on this run's numbers."""

    text: str  # e.g. "Lab beat RGB for pix2pix on {input} input"
    family: Callable[[Entry], bool]
    treatment: Callable[[dict[str, Any]], bool]
    control: Callable[[dict[str, Any]], bool]
    factors: tuple[str, ...]  # options allowed to differ between treatment and control


def _is(*models: str) -> Callable[[Entry], bool]:
    return lambda e: e.kind == "model" and e.model in models


def _capacity(o: dict[str, Any]) -> bool:
    return o["ngf"] > o["ndf"]


CLAIMS = [
    Claim("ngf 128 / ndf 32 beat 64 / 64 for {model} on {input} input",
          _is("pix2pix", "cyclegan", "cut", "fastcut"), _capacity, lambda o: o["ngf"] == o["ndf"],
          ("ngf", "ndf")),
    Claim("a higher generator learning rate (lr_G) helped {model} on {input} input",
          _is("pix2pix", "cyclegan"), lambda o: o.get("lr_G") is not None and o["lr_G"] > o["lr"],
          lambda o: o.get("lr_G") is None, ("lr_G",)),
    Claim("Lab beat RGB for pix2pix on {input} input", _is("pix2pix"),
          lambda o: o["color_space"] == "lab", lambda o: o["color_space"] == "rgb", ("color_space",)),
    Claim("ResNet beat U-Net generators for pix2pix on {input} input", _is("pix2pix"),
          lambda o: o["netG"].startswith("resnet"), lambda o: o["netG"].startswith("unet"), ("netG",)),
    Claim("LSGAN beat the vanilla GAN loss for {model} on {input} input", _is("cut", "fastcut"),
          lambda o: o["gan_mode"] == "lsgan", lambda o: o["gan_mode"] == "vanilla", ("gan_mode",)),
    Claim("LSGAN beat WGAN-GP for {model} on {input} input", _is("cut", "fastcut"),
          lambda o: o["gan_mode"] == "lsgan", lambda o: o["gan_mode"] == "wgangp", ("gan_mode",)),
]


def _comparable(a: dict[str, Any], b: dict[str, Any], factors: tuple[str, ...]) -> bool:
    keys = (set(a) | set(b)) - set(factors)
    return all(a.get(k) == b.get(k) for k in keys)


def _input_label(e: Entry) -> str:
    return e.input + (" (SYNTHETIC)" if e.synthetic else "")


def _claim_line(text: str, t: Entry, c: Entry) -> str:
    cells = verdict_cells(t, c)
    detail = cells if cells else "not paired (different tiles or bootstrap draws)"
    return f"| {text} | {t.name} vs {c.name} | {detail} |"


def conclusions(entries: Sequence[Entry]) -> list[str]:
    lines: list[str] = []
    models = [e for e in entries if e.kind == "model"]
    opts = {id(e): effective_options(e) for e in models}
    for claim in CLAIMS:
        fam = [e for e in models if claim.family(e)]
        for t in fam:
            ot = opts[id(t)]
            if not claim.treatment(ot):
                continue
            for c in fam:
                oc = opts[id(c)]
                if c is t or c.dataset != t.dataset or c.model != t.model or not claim.control(oc):
                    continue
                if _comparable(ot, oc, claim.factors):
                    lines.append(_claim_line(claim.text.format(input=_input_label(t), model=t.model), t, c))
    # FastCUT vs CUT (different models, same dataset and options otherwise).
    for t in (e for e in models if e.model == "fastcut"):
        for c in (e for e in models if e.model == "cut" and e.dataset == t.dataset):
            if c.options == t.options:
                lines.append(_claim_line(f"FastCUT beat CUT on {_input_label(t)} input"
                                         + (f" ({', '.join(f'{k}={v}' for k, v in t.options.items())})"
                                            if t.options else ""), t, c))
    # CycleGAN / CUT vs pix2pix on the historic input: the best of each side (by FID).
    for dataset in sorted({e.dataset for e in models if e.input == "historic"}):
        unpaired = [e for e in models if e.dataset == dataset and e.model in ("cyclegan", "cut", "fastcut")
                    and e.value("test", "fid") is not None]
        paired = [e for e in models if e.dataset == dataset and e.model == "pix2pix"
                  and e.value("test", "fid") is not None]
        if unpaired and paired:
            best_u = min(unpaired, key=lambda e: e.value("test", "fid"))  # type: ignore[arg-type,return-value]
            best_p = min(paired, key=lambda e: e.value("test", "fid"))  # type: ignore[arg-type,return-value]
            lines.append(_claim_line(f"CycleGAN/CUT beat pix2pix on {dataset} input (the best of each by "
                                     f"FID, chosen on the same tiles)", best_u, best_p))
    # BicycleGAN: where z enters the generator, every pair.
    for dataset in sorted({e.dataset for e in models if e.model == "bicyclegan"}):
        bic = sorted((e for e in models if e.model == "bicyclegan" and e.dataset == dataset),
                     key=lambda e: str(opts[id(e)].get("where_add")))
        for i, t in enumerate(bic):
            for c in bic[i + 1:]:
                where_t, where_c = opts[id(t)].get("where_add"), opts[id(c)].get("where_add")
                lines.append(_claim_line(f"BicycleGAN: z at '{where_t}' beat z at '{where_c}' on "
                                         f"{_input_label(t)} input", t, c))
    if not lines:
        return []
    return ["| claim | compared | treatment − control, 95% paired interval → better? |", "|---|---|---|",
            *lines]


def _beats(model: Entry, base: Entry, area: str) -> bool:
    found = [compare(model, base, m, label, low, area) for m, label, low in VERDICT_METRICS]
    return all(c is not None and c.verdict == "yes" for c in found)


def baseline_matrix(entries: Sequence[Entry], area: str) -> list[str]:
    """For each dataset: which models beat which baseline (paired intervals on FID and ΔE00)."""
    lines: list[str] = []
    for dataset in sorted({e.dataset for e in entries}):
        bases = [e for e in entries if e.kind == "baseline" and e.dataset == dataset and e.area(area)]
        models = [e for e in entries
                  if e.kind in ("model", TRAINED) and e.dataset == dataset and e.area(area)]
        if not bases or not models:
            continue
        lines += [f"**{dataset}** ({'test split' if area == 'test' else 'held-out area'}): model − baseline; "
                  "**yes** = the model is better, beyond the 95% paired interval.", "",
                  "| model | " + " | ".join(f"vs {b.name}" for b in bases) + " |",
                  "|---|" + "---|" * len(bases)]
        for m in sorted(models, key=lambda e: e.name):
            cells = []
            for b in bases:
                parts = [compare(m, b, metric, label, low, area) for metric, label, low in VERDICT_METRICS]
                cells.append(", ".join(f"{c.label} {c.verdict}" for c in parts if c) or "—")
            lines.append(f"| {m.name} | " + " | ".join(cells) + " |")
        beat_all = [m.name for m in models if all(_beats(m, b, area) for b in bases)]
        shown = ", ".join(beat_all) if beat_all else "none"
        lines += ["", f"Models better than every baseline on both FID and ΔE00: {shown} "
                      f"({len(beat_all)} of {len(models)}).", ""]
    return lines


# --------------------------------------------------------------------------- the held-out area
def heldout_description(entries: Sequence[Entry]) -> list[str]:
    lines = []
    seen = set()
    for e in entries:
        ho = e.record.get("heldout")
        if not ho or e.dataset in seen:
            continue
        seen.add(e.dataset)
        test = e.area("test") or {}
        lines.append(f"- **{e.dataset}**: trained on {e.record.get('input_layer')} → "
                     f"{e.record.get('target_layer')} ({test.get('label', '?')}); held out: "
                     f"{ho.get('input_layer')} → {ho.get('target_layer')}, "
                     f"AOI `{ho.get('aoi')}`, {ho.get('count')} tiles at z{ho.get('zoom')} "
                     f"({float(ho.get('metres_per_px', 0)):.3f} m per pixel)"
                     + (", input SYNTHETIC (film emulation)" if ho.get("synthetic_input") else "")
                     + (f". {ho['note']}" if ho.get("note") else "."))
    return lines


# --------------------------------------------------------------------------- figures
def bar_charts(entries: Sequence[Entry], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for area, metric in CHART_METRICS:
        rows = [(e, v, e.interval(area, metric)) for e in entries
                if (v := e.value(area, metric)) is not None]
        if not rows:
            continue
        rows.sort(key=lambda r: (r[0].dataset, r[1]))
        fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.2))
        colours = ["#999999" if e.kind == "baseline" else ("#c0504d" if e.synthetic else "#4f81bd")
                   for e, _, _ in rows]
        values = [v for _, v, _ in rows]
        errors = np.array([[v - ci[0], ci[1] - v] if ci else [0.0, 0.0] for _, v, ci in rows]).T
        ax.barh([f"{e.dataset}: {e.name}" for e, _, _ in rows], values, color=colours,
                xerr=np.clip(errors, 0, None), ecolor="black", capsize=2)
        ax.invert_yaxis()
        ax.set_xlabel(f"{metric} (lower is better; 95% bootstrap interval)")
        ax.set_title(f"{metric}, {'test split' if area == 'test' else 'held-out area'} (red: SYNTHETIC "
                     "historic input, grey: baselines)", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"bar_{area}_{metric}.png"
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
def _provenance_lines(entries: Sequence[Entry]) -> list[str]:
    extractors: dict[str, Any] = next(
        (e.record["extractors"] for e in entries if e.record.get("extractors")), {})
    fid = extractors.get("inception_v3_fid", {})
    lines = []
    if fid:
        hashes = ", ".join(f"{k} `{fid[k]}`" for k in ("sha1", "sha256") if fid.get(k))
        lines.append(f"FID and KID: the 2015-12-05 TensorFlow Inception v3 (pool3, 2048-d), weights from "
                     f"{fid.get('source', '?')}, file `{fid.get('file', '?')}` ({hashes}); "
                     f"{fid.get('resize', '')}.")
    if entries and not any(e.value("test", "is_max") is not None for e in entries):
        lines.append("Inception Score is not shown: the offline FID weights are the Inception trunk "
                     "without its 1008-way classifier. With pytorch-fid's `pt_inception-2015-12-05-"
                     "6726825d.pth` in place (README, 'FID weights') the report gains `IS max` / `IS mean`; "
                     "here the EfficientNet-Lite0 classifier's IS is shown under its own name (IS-EffNet), "
                     "which is not comparable with published Inception Scores.")
    return lines


def summary_markdown(params: Any, entries: Sequence[Entry], missing: Sequence[str],
                     figures: Sequence[Path]) -> str:
    models = [e for e in entries if e.kind == "model"]
    boot: dict[str, Any] = next((e.record["bootstrap"] for e in entries if e.record.get("bootstrap")), {})
    lines = ["# Luminescence: results", "",
             f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m pipeline.stages.report` "
             "from reports/evaluation/*.json (training preset "
             f"`{params.train.preset if params.train else '?'}`).",
             ""]
    if any(e.synthetic for e in entries):
        lines += ["> **The `historic` input of the bundled sample is SYNTHETIC**: a film emulation of "
                  "the 2011 NYSDOP photo (`erie_2011_film`; held out: `columbia_2010_film`), not a real "
                  "historic photograph. Results on it test the pipeline, not the study's claims about "
                  "real old photos.", ""]
    lines += [*_provenance_lines(entries), ""]
    ns = sorted({f"{k} {a['n']}" for e in entries for k, a in e.record.get("areas", {}).items()})
    targets = sorted({f"{k} {a['values']['colourfulness_target']:.2f}" for e in entries
                      for k, a in e.record.get("areas", {}).items()
                      if isinstance(a["values"].get("colourfulness_target"), float)})
    lines += [f"Tiles scored (N): {', '.join(ns)}. Every number is followed by its "
              f"{float(boot.get('confidence', 0.95)):.0%} interval from a seeded bootstrap over tiles "
              f"({boot.get('samples', '?')} resamples, seed {boot.get('seed', '?')}; FID and KID: the "
              "replicates' spread centred on the value, the rest: percentile; docs/metrics.md). FID is "
              "biased upwards at small N: compare it only at equal N, never with published FIDs. "
              "↓ lower is better, ↑ higher; colourfulness: closer to the targets' is better "
              f"(targets: {', '.join(targets) or '—'}).", ""]
    adapted = sorted(e.name for e in entries if e.record.get("norm_stats"))
    if adapted:
        lines += [f"Models with instance norms ({', '.join(adapted)}) colour each scored area with that "
                  "area's own normalisation statistics, gathered over its gray tiles (never its colours), "
                  "as the colourise stage does (params.yaml `evaluate.norm_stats`; docs/model-defaults.md "
                  "\"Instance norms and tile seams\").", ""]
    baselines = [e for e in entries if e.kind == "baseline"]
    by_family: dict[str, list[Entry]] = {}
    for e in models:
        by_family.setdefault(FAMILIES.get(e.model or "", e.model or "?"), []).append(e)
    lines += ["## Test split (the training area's held-back blocks)", ""]
    for family, members in by_family.items():
        datasets = {m.dataset for m in members}
        floor = [b for b in baselines if b.dataset in datasets]
        lines += [f"### {family}", "", *table(members + floor, "test"), ""]
    trained = [e for e in entries if e.kind == TRAINED]
    if trained:
        floor = [b for b in baselines if b.dataset in {e.dataset for e in trained}]
        lines += ["## Trained outside the table: the release model", "",
                  "`make release` trains it (release/MODEL_CARD.md: data, schedule, caveats) on other "
                  "areas and longer than the table's CPU preset; here the same evaluate code scores it "
                  "on the same tiles as the ablations and baselines of its dataset.", "",
                  *table(trained + floor, "test"), ""]
    if any(e.area("heldout") for e in entries):
        lines += ["## Held-out area (never used for training or model selection)", "",
                  "What differs from the training area:", "", *heldout_description(entries), "",
                  *table([e for e in entries if e.area("heldout")], "heldout"), ""]
    if baselines:
        lines += ["## Baselines a model must beat", "",
                  "`input`: the gray input itself; `lut`: the mean a\\*b\\* of the train split's pixels "
                  "per L\\* bin (colour as a function of lightness alone); `transfer`: the train split's "
                  "Lab mean and std (one global colour); `layer`: another photo's real colours. A GAN that "
                  "cannot beat the look-up has learnt no semantics.", "", *table(baselines, "test"), "",
                  *baseline_matrix(entries, "test"), *baseline_matrix(entries, "heldout")]
    lines += ["## The study's claims, re-tested on this run", "",
              "Each row compares two ablations that differ only in the factor named, scored on the same "
              "tiles: the difference treatment − control of FID and of ΔE00 (lower is better for both) "
              "with its paired bootstrap interval. **yes**: the treatment is better beyond the interval; "
              "**no**: it is worse beyond it; **inconclusive**: the interval covers 0. The verdicts are "
              "this run's (short CPU training, one seed), not the study's.", ""]
    found = conclusions(entries)
    lines += found or ["- (no comparable ablation pairs in params.yaml)"]
    lines.append("")
    if missing:
        lines += ["## Not yet scored", "", *[f"- {m}: no evaluation record (run its evaluate stage)"
                                             for m in missing], ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in figures]
        lines.append("")
    return "\n".join(lines)


def write_report(params: Any, *, details_dir: Path = DETAILS_DIR, runs_dir: Path = RUNS_DIR,
                 out_dir: Path = REPORTS_DIR) -> Path:
    entries, missing = load_entries(params, details_dir)
    if not entries:
        raise ReportError(f"no evaluation records in {details_dir} for the ablations in params.yaml; run "
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
