"""The training loop's collaborators: DVCLive closed on every exit path, where each option
came from (options.json), the loss window."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.registry import resolve_options_with_sources
from pipeline.core.config import TrainPreset
from pipeline.training.live_log import LossLogger
from pipeline.training.loop import train
from pipeline.training.plan import TrainingError, plan_run
from tests.tiny_gan import TinyP2P, tiny_params

pytestmark = pytest.mark.usefixtures("quiet_cpu")

CPU_PRESET = TrainPreset(crop_size=128, load_size=256, width_scale=0.25, steps=10, decay_steps=10,
                         unet="unet_128")


@pytest.fixture()
def live_ends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every DVCLive `end()` (by the directory of the Live that ended)."""
    import dvclive

    ended: list[str] = []

    class SpyLive(dvclive.Live):  # type: ignore[misc]
        def end(self) -> None:
            ended.append(str(self.dir))
            super().end()

    monkeypatch.setattr(dvclive, "Live", SpyLive)
    return ended


def _fail_at_step_3(monkeypatch: pytest.MonkeyPatch, make_bad: Any) -> None:
    original = TinyP2P.train_step

    def step(self: TinyP2P, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        out = original(self, batch)
        self._n = getattr(self, "_n", 0) + 1
        return make_bad(out) if self._n == 3 else out

    monkeypatch.setattr(TinyP2P, "train_step", step)


def _nan(out: dict[str, float]) -> dict[str, float]:
    return {**out, "G_GAN": float("nan")}


def _crash(out: dict[str, float]) -> dict[str, float]:
    raise RuntimeError("out of memory (simulated)")


@pytest.mark.parametrize(("make_bad", "error"), [(_nan, TrainingError), (_crash, RuntimeError)])
def test_dvclive_is_closed_when_training_stops_with_an_error(
        datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live_ends: list[str],
        make_bad: Any, error: type[Exception]) -> None:
    _fail_at_step_3(monkeypatch, make_bad)
    plan = plan_run("tiny", tiny_params(log_every=1), out_dir=tmp_path / "run", datasets_dir=datasets)
    with pytest.raises(error):
        train(plan, progress=False)
    assert live_ends == [str(tmp_path / "run" / "dvclive")]
    # The closed log holds the steps before the failure (step 3's losses were not logged).
    summary = json.loads((tmp_path / "run" / "dvclive" / "metrics.json").read_text())
    assert summary["step"] == 2


def test_dvclive_is_closed_once_after_a_normal_run(datasets: Path, tmp_path: Path,
                                                   live_ends: list[str]) -> None:
    plan = plan_run("tiny", tiny_params(), out_dir=tmp_path / "run", datasets_dir=datasets)
    train(plan, stop_at=3, progress=False)
    assert live_ends == [str(tmp_path / "run" / "dvclive")]


def test_loss_window_is_the_mean_over_the_logged_steps(tmp_path: Path) -> None:
    with LossLogger(tmp_path, resume_step=0, every=2) as log:
        log.log_step(1, {"G": 1.0}, {"G": 0.1})
        log.log_step(2, {"G": 3.0}, {"G": 0.1})
        log.log_step(3, {"G": 10.0}, {"G": 0.05}, last=True)
    rows = (tmp_path / "dvclive" / "plots" / "metrics" / "train" / "G.tsv").read_text().splitlines()
    assert [r.split("\t")[-2:] for r in rows[1:]] == [["2", "2.0"], ["3", "10.0"]]
    assert log.live is None  # closed by the with block


# --------------------------------------------------------------------------- option sources
def test_each_option_says_where_its_value_came_from() -> None:
    opts, src = resolve_options_with_sources(
        "pix2pix", ablation_name="p2p_cap", ablation={"ngf": 128, "lambda_L1": 50.0},
        shared={"lr": 5e-4, "ndf": 32}, preset=CPU_PRESET, preset_name="cpu")
    assert (opts.netG, opts.ngf, opts.ndf, opts.lr, opts.lambda_L1) == ("unet_128", 32, 8, 5e-4, 50.0)
    assert src["beta1"].source == "reference"
    assert src["netG"].to_json("unet_128") == {"value": "unet_128", "source": "train.presets.cpu",
                                               "default": "unet_256"}
    assert src["lr"].source == "train.defaults" and src["lambda_L1"].source == "ablations.p2p_cap"
    # Width scaling counts as the preset; the value it scaled is kept with its own source.
    assert src["ngf"].to_json(32) == {"value": 32, "source": "train.presets.cpu", "default": 64,
                                      "scaled_from": {"value": 128, "source": "ablations.p2p_cap"}}
    assert src["ndf"].scaled_from == (32, "train.defaults")
    assert src["beta1"].to_json(0.5) == {"value": 0.5, "source": "reference"}


def test_a_value_set_explicitly_to_the_default_still_names_its_setter() -> None:
    _, src = resolve_options_with_sources("cyclegan", ablation_name="c", ablation={"lambda_A": 10.0})
    assert src["lambda_A"].to_json(10.0) == {"value": 10.0, "source": "ablations.c"}
    assert src["ngf"].source == "reference" and src["ngf"].scaled_from is None  # no preset: no scaling


def test_options_json_records_every_options_source(datasets: Path, tmp_path: Path) -> None:
    params = tiny_params(ablations={"tiny": {"model": "tiny_p2p", "dataset": "tiny", "lambda_L1": 10.0}},
                         defaults={"beta1": 0.9})
    plan = plan_run("tiny", params, out_dir=tmp_path / "run", datasets_dir=datasets)
    train(plan, stop_at=1, progress=False)
    record = json.loads((tmp_path / "run" / "options.json").read_text())
    sources = record["option_sources"]
    assert set(sources) == set(record["options"])
    assert all(sources[k]["value"] == v for k, v in record["options"].items())
    assert sources["lambda_L1"] == {"value": 10.0, "source": "ablations.tiny", "default": 100.0}
    assert sources["beta1"] == {"value": 0.9, "source": "train.defaults", "default": 0.5}
    assert sources["ngf"] == {"value": 8, "source": "train.presets.t", "default": 32,
                              "scaled_from": {"value": 32, "source": "reference"}}
    assert sources["lr"] == {"value": 2e-4, "source": "reference"}


# --------------------------------------------------------------------------- validation budget
def test_a_preset_can_validate_fewer_tiles_less_often(datasets: Path, tmp_path: Path) -> None:
    from pipeline.core.config import parse_params
    from tests.tiny_gan import tiny_params_dict

    data = tiny_params_dict(val_every=2)
    data["train"]["presets"]["t"].update(val_every=100, val_tiles=2)
    plan = plan_run("tiny", parse_params(data), out_dir=tmp_path / "run", datasets_dir=datasets)
    assert plan.val_every == 100  # the preset's, not train.val_every
    result = train(plan, progress=False)
    samples = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert samples == ["latest.png", "step_000008.png"]  # once, at the end
    # The val L1 is the one of tiles 0 and 2 of the 3 (spread evenly), and only those.
    from pipeline.datasets.storage import open_split
    from pipeline.training.checkpoint import load_model
    from pipeline.training.validation import validate

    val = open_split(datasets / "tiny", "val")
    model = load_model(plan.model_path)
    expected, _ = validate(model, np.asarray(val[[0, 2]]), torch.device("cpu"))
    everything, _ = validate(model, val, torch.device("cpu"))
    assert result.val_l1 == pytest.approx(expected, rel=1e-6) and expected != pytest.approx(everything)


def test_a_bad_validation_budget_names_its_key() -> None:
    from pipeline.core.config import ConfigError, parse_params
    from tests.tiny_gan import tiny_params_dict

    data = tiny_params_dict()
    data["train"]["presets"]["t"]["val_tiles"] = 0
    with pytest.raises(ConfigError, match=r"train\.presets\.t\.val_tiles"):
        parse_params(data)
