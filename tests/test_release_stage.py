"""The frozen `release` stage end to end on tiny data, its generated model card, and dvc.yaml/Makefile."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from models.networks.norm_stats import fixed_norm_stats
from pipeline.core.paths import RELEASE_DIR
from pipeline.results.release_card import (
    bootstrap_interval,
    fix_release_norm_stats,
    render_model_card,
    run_release,
    score_release,
    summary_line,
)
from pipeline.training.checkpoint import load_model
from tests.conftest import ROOT
from tests.test_release_data import _params, tiny  # noqa: F401  (the tiny sample fixture)


@pytest.fixture(scope="module")
def released(tiny: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:  # noqa: F811
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    params = _params(tiny, max_val_crops=2)
    release = params.release.model_copy(update={
        "options": {"netG": "unet_effnet_lite1", "color_space": "lab", "ngf": 8, "ndf": 8, "norm": "instance",
                    "encoder_warmup_iters": 2},
        "batch_size": 1, "val_every": 2, "held_out_crops": 3, "steps": 3, "decay_steps": 1,
        "norm_stats": "training_data", "norm_stats_samples": 6})
    params = params.model_copy(update={"release": release})
    out = tmp_path_factory.mktemp("release_out")
    try:
        return out, run_release(params, out, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_the_stage_writes_every_output_from_one_run(released: tuple[Path, dict[str, Any]]) -> None:
    out, record = released
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "curves.png", "curves.tsv",
                                                     "metrics.json", "model.pt", "options.json", "train.json"]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(record))
    train = record["train"]
    assert train["steps"] == 4 and "curves" not in train  # the curves have their own file
    rows = (out / "curves.tsv").read_text().splitlines()
    assert rows[0].startswith("step\tseconds\tval_delta_e2000_clean\tval_delta_e2000_film") and len(rows) == 3
    assert train["kept_step"] in (2, 4) and train["val"]["gray_delta_e2000_clean"] > 0
    held = record["held_out"]["held_layer"]
    assert held["windows"] == 3 and set(held) == {"windows", "window_px", "clean", "film",
                                                  "area_stats_windows", "clean_area", "film_area"}
    assert held["area_stats_windows"] == 3  # instance norms: also scored with the area's statistics
    low, high = held["clean"]["difference_ci95"]
    assert low <= held["clean"]["difference_mean"] <= high
    model = load_model(out / "model.pt")  # what users load, e.g. `colourise --model release/model.pt`
    assert model.opts.netG == "unet_effnet_lite1"
    assert json.loads((out / "options.json").read_text())["kept_step"] == train["kept_step"]


def test_the_model_card_numbers_come_from_the_record(released: tuple[Path, dict[str, Any]]) -> None:
    out, record = released
    card = (out / "MODEL_CARD.md").read_text()
    assert card == render_model_card(record)
    held = record["held_out"]["held_layer"]["clean"]
    assert f"{held['delta_e2000_mean']:.2f}" in card
    assert f"{record['train']['val']['delta_e2000_clean']:.2f}" in card
    assert "synthetic" in card.lower() and "NYSDOP" in card and "no CC licence" in card
    assert "| held_layer | clean, area statistics (3 windows) | 3 |" in card
    changed = copy.deepcopy(record)
    changed["held_out"]["held_layer"]["clean"]["delta_e2000_mean"] = 123.456
    assert "123.46" in render_model_card(changed) and "123.46" not in card


def test_score_only_rewrites_the_scores_and_card_from_the_saved_run(
        released: tuple[Path, dict[str, Any]], tiny: dict[str, Any]) -> None:  # noqa: F811
    out, record = released
    (out / "MODEL_CARD.md").write_text("stale")
    params = _params(tiny, max_val_crops=2)
    params = params.model_copy(update={"release": params.release.model_copy(update={"held_out_crops": 2})})
    rescored = score_release(params, out)
    assert rescored["train"] == record["train"]  # no retraining: the saved run's record
    assert rescored["held_out"]["held_layer"]["windows"] == 2
    assert (out / "MODEL_CARD.md").read_text() == render_model_card(rescored)
    score_release(params.model_copy(update={"release": params.release}), out)  # restore for other tests


def test_the_release_model_keeps_fixed_norm_statistics_from_training_inputs(
        released: tuple[Path, dict[str, Any]], tiny: dict[str, Any]) -> None:  # noqa: F811
    out, record = released
    gathered = record["train"]["norm_stats"]
    assert gathered["samples"] == 6 and gathered["network"] == "G" and gathered["norms"] > 0
    stats = fixed_norm_stats(load_model(out / "model.pt").nets["G"])
    assert stats is not None and len(stats) == gathered["norms"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "fixed statistics, gathered over 6 training inputs" in card
    # --norm-stats-only: `window` drops them, `training_data` gathers the same ones again (same
    # weights, same sample streams), without retraining
    params = _params(tiny, max_val_crops=2)
    release = params.release.model_copy(update={
        "options": record["train"]["options"], "held_out_crops": 3, "norm_stats": "training_data",
        "norm_stats_samples": 6})
    dropped = fix_release_norm_stats(
        params.model_copy(update={"release": release.model_copy(update={"norm_stats": "window"})}), out,
        progress=False)
    assert dropped["train"]["norm_stats"] is None
    assert fixed_norm_stats(load_model(out / "model.pt").nets["G"]) is None
    assert "statistics of the area being coloured" in (out / "MODEL_CARD.md").read_text()
    again = fix_release_norm_stats(params.model_copy(update={"release": release}), out, progress=False)
    assert again["train"]["norm_stats"]["samples"] == 6
    regathered = fixed_norm_stats(load_model(out / "model.pt").nets["G"])
    assert regathered is not None and all(torch.allclose(stats[k]["var"], regathered[k]["var"], rtol=1e-5)
                                          for k in stats)
    assert again["train"]["kept_step"] == record["train"]["kept_step"]


def test_max_minutes_stops_early_and_keeps_validated_weights(
        tiny: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    params = _params(tiny, max_val_crops=2)
    release = params.release.model_copy(update={
        "options": {"netG": "unet_effnet_lite1", "color_space": "lab", "ngf": 8, "ndf": 8},
        "batch_size": 1, "val_every": 100, "held_out_crops": 2, "steps": 50, "decay_steps": 50})
    record = run_release(params.model_copy(update={"release": release}), tmp_path, progress=False,
                         max_minutes=0.0)
    train = record["train"]
    assert train["stopped_early_at"] == 1 and train["kept_step"] == 1 and train["steps"] == 100
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "stopped early by `--max-minutes` at iteration 1 of 100" in card
    assert "trained 1 of 100 iterations (stopped by --max-minutes)" in summary_line(record)


def test_bootstrap_interval_of_a_mean() -> None:
    values = torch.arange(100, dtype=torch.float64).numpy()
    low, high = bootstrap_interval(values, seed=1)
    assert low < 49.5 < high and high - low < 25
    assert bootstrap_interval(values * 0 + 3.0) == (3.0, 3.0)


def test_dvc_release_stage_is_frozen_and_committed_to_git() -> None:
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["release"]
    assert stage["frozen"] is True
    assert "metrics" not in stage  # its record is no headline metric: `dvc metrics show` stays narrow
    outs = stage["outs"] + stage["plots"]
    paths = {next(iter(o)) for o in outs}
    assert paths == {(RELEASE_DIR / f).as_posix() for f in ("model.pt", "options.json", "curves.png",
                                                             "MODEL_CARD.md", "metrics.json", "curves.tsv",
                                                             "train.json")}
    assert all(next(iter(o.values()))["cache"] is False for o in outs)  # in git, not only in DVC's cache
    makefile = (ROOT / "Makefile").read_text()
    assert "python -m pipeline.stages.release" in makefile and "dvc commit --force release" in makefile
    # `make repro` is a plain `dvc repro` (DVC skips the frozen stage), after checking that the
    # committed release outputs are there
    assert re.search(r"^\tLUMINESCENCE_THREADS=.* \$\(BIN\)/dvc repro$", makefile, re.M)
    assert "test -f release/model.pt" in makefile
