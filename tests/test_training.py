"""The training loop: exact resume, LR schedule, validation, DVCLive logs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.datasets.storage import open_split
from pipeline.training import checkpoint as ckpt_mod
from pipeline.training import loop as training
from pipeline.training import resume as resume_mod
from pipeline.training.checkpoint import read_checkpoint
from pipeline.training.loop import summary_line, train
from pipeline.training.plan import plan_run
from pipeline.training.schedule import ConstantThenLinear
from pipeline.training.validation import validate
from tests.tiny_gan import TinyOptions, TinyP2P, tiny_params, write_tiny_dataset

pytestmark = pytest.mark.usefixtures("quiet_cpu")



def _plan(datasets: Path, out: Path, **kwargs: Any) -> training.RunPlan:
    ablations = kwargs.pop("ablations", None)
    steps = kwargs.pop("steps_override", None)
    return plan_run("tiny", tiny_params(ablations=ablations, **kwargs), out_dir=out, steps=steps,
                    datasets_dir=datasets)


def assert_same_tree(a: Any, b: Any, path: str = "") -> None:
    """Bit-identical nested state (tensors compared with torch.equal)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{path} differs"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def trained_state(path: Path) -> dict[str, Any]:
    """What must match after a resume: weights, optimizers, schedulers, RNGs, extra state."""
    ck = read_checkpoint(path)
    ranks = [{k: v for k, v in r.items() if k != "weights"} for r in ck["ranks"]]
    return {k: ck[k] for k in ("nets", "optimizers", "schedulers", "step")} | {"ranks": ranks}


def _max_weight_gap(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max((x - b["nets"][n][k]).abs().max().item()
               for n in a["nets"] for k, x in a["nets"][n].items() if x.is_floating_point())


# --------------------------------------------------------------------------- schedule
def test_lr_factor_is_constant_then_linear_to_zero() -> None:
    f = ConstantThenLinear(constant=4, decay=4)
    assert [f(i) for i in range(9)] == pytest.approx([1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2, 0.0])
    assert f(20) == 0.0
    assert [ConstantThenLinear(3, 0)(i) for i in range(4)] == [1, 1, 1, 0]


def test_trained_learning_rates_follow_the_schedule(datasets: Path, tmp_path: Path) -> None:
    plan = _plan(datasets, tmp_path / "run", log_every=1, steps=3, decay=4,
                 ablations={"tiny": {"model": "tiny_p2p", "dataset": "tiny", "lr": 0.001}})
    train(plan, progress=False)
    with open(tmp_path / "run" / "dvclive" / "plots" / "metrics" / "lr" / "G.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    assert [float(r["G"]) for r in rows] == pytest.approx(
        [0.001 * f for f in (1, 1, 1, 0.8, 0.6, 0.4, 0.2)])
    ck = read_checkpoint(plan.checkpoint_path)
    assert ck["optimizers"]["G"]["param_groups"][0]["lr"] == 0.0  # after the last update


def test_steps_override_keeps_the_presets_proportion(datasets: Path, tmp_path: Path) -> None:
    plan = _plan(datasets, tmp_path / "r", steps=300, decay=100, steps_override=8)
    assert (plan.constant_steps, plan.decay_steps) == (6, 2)


def test_epoch_schedule_counts_iterations_from_the_split(datasets: Path, tmp_path: Path) -> None:
    params = tiny_params(batch=4)
    data = params.model_dump()
    data["train"]["presets"]["t"].update(steps=None, decay_steps=None, epochs=2, decay_epochs=1)
    from pipeline.core.config import parse_params

    plan = plan_run("tiny", parse_params(data), out_dir=tmp_path / "r", datasets_dir=datasets)
    assert (plan.constant_steps, plan.decay_steps) == (4, 2)  # 6 train tiles, batch 4: 2 per epoch


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize("model", ["tiny_p2p", "tiny_pool"])
def test_interrupted_and_resumed_run_is_bit_identical(datasets: Path, tmp_path: Path, model: str) -> None:
    abl = {"tiny": {"model": model, "dataset": "tiny"}}
    interrupted = _plan(datasets, tmp_path / "a", ablations=abl)
    first = train(interrupted, stop_at=3, progress=False)
    assert (first.end_step, first.finished) == (3, False)
    at_3 = trained_state(interrupted.checkpoint_path)
    assert at_3["step"] == 3
    second = train(interrupted, progress=False)  # a fresh call: everything comes from the file
    assert (second.start_step, second.end_step, second.finished) == (3, 8, True)

    straight = _plan(datasets, tmp_path / "b", ablations=abl)
    train(straight, progress=False)
    a, b = trained_state(interrupted.checkpoint_path), trained_state(straight.checkpoint_path)
    assert_same_tree(a, b)
    if model == "tiny_pool":
        assert len(a["ranks"][0]["extra"]["pool"]) == 3
    # The weights moved after the resume, so the comparison means something.
    assert _max_weight_gap(a, at_3) > 0
    assert any(torch.is_tensor(v) for v in a["optimizers"]["G"]["state"][0].values())


def test_resume_without_restoring_rng_would_differ(datasets: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The exactness test above can fail: dropout depends on the restored RNG state."""
    straight = _plan(datasets, tmp_path / "b")
    train(straight, progress=False)
    broken = _plan(datasets, tmp_path / "a")
    train(broken, stop_at=3, progress=False)
    monkeypatch.setattr(resume_mod, "restore_rng", lambda state, device: None)
    train(broken, progress=False)
    gap = _max_weight_gap(trained_state(broken.checkpoint_path), trained_state(straight.checkpoint_path))
    assert gap > 0


def test_finished_run_is_a_no_op(datasets: Path, tmp_path: Path) -> None:
    plan = _plan(datasets, tmp_path / "run")
    train(plan, progress=False)
    before = plan.checkpoint_path.stat().st_mtime_ns
    again = train(plan, progress=False)
    assert again.skipped and again.end_step == 8
    assert plan.checkpoint_path.stat().st_mtime_ns == before
    assert "already trained" in summary_line(again)


def test_no_resume_starts_over(datasets: Path, tmp_path: Path) -> None:
    plan = _plan(datasets, tmp_path / "run")
    train(plan, stop_at=4, progress=False)
    again = train(plan, resume=False, stop_at=2, progress=False)
    assert again.start_step == 0 and read_checkpoint(plan.checkpoint_path)["step"] == 2


def test_validation_does_not_change_the_training_trajectory(datasets: Path, tmp_path: Path) -> None:
    often = _plan(datasets, tmp_path / "a", val_every=1)
    never = _plan(datasets, tmp_path / "b", val_every=1000)
    train(often, progress=False)
    train(never, progress=False)
    assert_same_tree(trained_state(often.checkpoint_path), trained_state(never.checkpoint_path))


def test_diverging_losses_stop_with_one_line(datasets: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    original = TinyP2P.train_step

    def nan_at_step_3(self: TinyP2P, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        out = original(self, batch)
        self._n = getattr(self, "_n", 0) + 1
        return {**out, "G_GAN": float("nan")} if self._n == 3 else out

    monkeypatch.setattr(TinyP2P, "train_step", nan_at_step_3)
    with pytest.raises(training.TrainingError) as info:
        train(_plan(datasets, tmp_path / "run"), progress=False)
    assert "loss G_GAN became nan at step 3" in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- validation + logs
def test_validate_is_mean_rgb_l1_over_whole_tiles_with_a_grid(datasets: Path) -> None:
    val = open_split(datasets / "tiny", "val")
    model = TinyP2P(TinyOptions(ngf=4, ndf=4), torch.device("cpu"))
    l1, grid = validate(model, val, torch.device("cpu"), samples=[0, 2], batch_size=2)
    assert model.nets["G"].training  # back in training mode
    gray = torch.from_numpy(np.array(val[..., :1])).permute(0, 3, 1, 2).float() / 255
    target = torch.from_numpy(np.array(val[..., 1:])).permute(0, 3, 1, 2).float() / 255
    model.eval()
    expected = (model.colourise(gray) - target).abs().mean().item()
    assert l1 == pytest.approx(expected, rel=1e-5)
    assert grid is not None and grid.shape == (3, 2 * 34 + 2, 3 * 34 + 2)  # 2 rows x (in|out|target)


def test_a_run_writes_samples_options_and_dvclive_metrics(datasets: Path, tmp_path: Path) -> None:
    plan = _plan(datasets, tmp_path / "run", log_every=2)
    result = train(plan, progress=False)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "latest.png", "step_000004.png", "step_000008.png"]
    with Image.open(run / "samples" / "latest.png") as img:
        assert img.size == (3 * 34 + 2, 2 * 34 + 2)  # num_val_samples 2, 32-px tiles
    metrics = run / "dvclive" / "plots" / "metrics"
    names = sorted(str(p.relative_to(metrics)) for p in metrics.rglob("*.tsv"))
    assert names == ["lr/D.tsv", "lr/G.tsv", "train/D.tsv", "train/G_GAN.tsv", "train/G_L1.tsv",
                     "val/l1_rgb.tsv"]
    with open(metrics / "train" / "G_L1.tsv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh, delimiter="\t")] == [2, 4, 6, 8]
    summary = json.loads((run / "dvclive" / "metrics.json").read_text())
    assert summary["step"] == 8 and summary["val"]["l1_rgb"] == pytest.approx(result.val_l1)
    assert not (run / "dvclive" / "dvc.yaml").exists() and not (tmp_path / "dvc.yaml").exists()
    options = json.loads((run / "options.json").read_text())
    assert options["dataset"]["synthetic_input"] is True
    assert options["options"]["ngf"] == 8  # 32 x width_scale 0.25
    assert options["parameters"]["G"] == sum(p.numel() for p in TinyP2P(
        TinyOptions(ngf=8, ndf=8), torch.device("cpu")).nets["G"].parameters())
    assert options["schedule"] == {"constant_steps": 4, "decay_steps": 4, "total_steps": 8}
    line = summary_line(result)
    assert line.startswith("trained tiny: 8 steps in ") and "on cpu; val L1 " in line
    assert "SYNTHETIC" in line


def test_resumed_run_does_not_log_steps_twice(datasets: Path, tmp_path: Path) -> None:
    plan = _plan(datasets, tmp_path / "run", log_every=1, checkpoint_every=2)
    train(plan, stop_at=2, progress=False)
    # As if the run had logged step 3 and then died before checkpointing it:
    tsv = tmp_path / "run" / "dvclive" / "plots" / "metrics" / "train" / "D.tsv"
    with open(tsv, "a") as fh:
        fh.write("3\t0.5\n")
    train(plan, progress=False)
    with open(tsv) as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh, delimiter="\t")]
    assert steps == list(range(1, 9))


def test_prefetched_batches_equal_sequential_ones(datasets: Path) -> None:
    from pipeline.datasets.batches import PairBatches

    batches = PairBatches(open_split(datasets / "tiny", "train"), batch_size=2, crop_size=16,
                          load_size=32, paired=True, seed=5)
    plain = list(training.batch_stream(batches, 3, 9))
    threaded = list(training.batch_stream(batches, 3, 9, prefetch=True))
    assert len(plain) == len(threaded) == 6
    for a, b in zip(plain, threaded, strict=True):
        assert torch.equal(a["A"], b["A"]) and torch.equal(a["B"], b["B"])


# --------------------------------------------------------------------------- real variants
# Tiny versions of the real models (width_scale 0.25 of the tiny preset: 16 -> 4 channels);
# U-Net models need 128-pixel tiles, the ResNet ones run at 32.
REAL: dict[str, tuple[dict[str, Any], int]] = {
    "pix2pix": ({"netG": "resnet_6blocks", "ngf": 16, "ndf": 16}, 32),
    "pix2pix_unet": ({"netG": "unet_128", "ngf": 16, "ndf": 16}, 128),
    "cyclegan": ({"netG": "resnet_6blocks", "ngf": 16, "ndf": 16, "pool_size": 2}, 32),
    "cut": ({"netG": "resnet_6blocks", "ngf": 16, "ndf": 16, "num_patches": 16}, 32),
    "fastcut": ({"netG": "resnet_6blocks", "ngf": 16, "ndf": 16, "num_patches": 16}, 32),
    "bicyclegan": ({"netG": "unet_128", "netE": "resnet_128", "ngf": 16, "ndf": 16, "nef": 16}, 128),
}


def _real_plan(name: str, tmp_path: Path, out: str, **train_kw: Any) -> training.RunPlan:
    options, size = REAL[name]
    datasets = tmp_path / f"datasets{size}"
    if not (datasets / "tiny" / "dataset.json").exists():
        write_tiny_dataset(datasets / "tiny", n_train=4, n_val=2, size=size)
    model = name.split("_")[0]
    params = tiny_params(ablations={"tiny": {"model": model, "dataset": "tiny", **options}},
                         crop=size, load=size, **train_kw)
    return plan_run("tiny", params, out_dir=tmp_path / out, datasets_dir=datasets)


@pytest.mark.parametrize("name", sorted(REAL))
def test_each_real_variant_trains_through_the_loop(name: str, tmp_path: Path) -> None:
    plan = _real_plan(name, tmp_path, "run", steps=2, decay=1, val_every=3, log_every=1)
    result = train(plan, progress=False)
    assert result.finished and result.val_l1 is not None and 0 < result.val_l1 < 1
    logged = {p.stem for p in (tmp_path / "run" / "dvclive" / "plots" / "metrics" / "train").glob("*.tsv")}
    assert logged == set(result.losses) and logged
    model = ckpt_mod.load_model(plan.model_path)
    assert model.parameter_counts() == json.loads((tmp_path / "run" / "options.json").read_text())[
        "parameters"]
    size = REAL[name][1]
    assert model.colourise(torch.rand(1, 1, size, size)).shape == (1, 3, size, size)


@pytest.mark.parametrize("name", ["pix2pix", "cyclegan"])
def test_real_variants_resume_bit_identically(name: str, tmp_path: Path) -> None:
    interrupted = _real_plan(name, tmp_path, "a", steps=3, decay=2)
    train(interrupted, stop_at=2, progress=False)
    train(interrupted, progress=False)
    straight = _real_plan(name, tmp_path, "b", steps=3, decay=2)
    train(straight, progress=False)
    a, b = trained_state(interrupted.checkpoint_path), trained_state(straight.checkpoint_path)
    assert_same_tree(a, b)
    extra = a["ranks"][0]["extra"]
    assert int(extra["iteration"]) == 5
    if name == "cyclegan":  # the image pools (drawn with torch's RNG) came back exactly
        assert extra["pool_A.images"].shape[0] == 2
