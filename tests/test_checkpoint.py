"""Checkpoints: atomic writes, safe loading, one-line errors, exact resume after SIGKILL."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.datasets.storage import write_split
from pipeline.training import checkpoint as ckpt_mod
from pipeline.training.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    differences,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from pipeline.training.loop import train
from pipeline.training.plan import plan_run
from tests.conftest import ROOT
from tests.test_training import assert_same_tree, trained_state
from tests.tiny_gan import TinyP2P, tiny_pairs, tiny_params, write_params

pytestmark = pytest.mark.usefixtures("quiet_cpu")



@pytest.fixture()
def trained(datasets: Path, tmp_path: Path) -> Path:
    """A finished tiny run's checkpoint."""
    plan = plan_run("tiny", tiny_params(), out_dir=tmp_path / "run", datasets_dir=datasets)
    train(plan, progress=False)
    return plan.checkpoint_path


def _one_line_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and f"rm {path}" in message
    return message


# --------------------------------------------------------------------------- unreadable files
def test_truncated_checkpoint(trained: Path) -> None:
    data = trained.read_bytes()
    trained.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _one_line_error(trained)


def test_random_bytes(trained: Path) -> None:
    trained.write_bytes(np.random.default_rng(0).bytes(5000))
    assert "corrupt" in _one_line_error(trained)


def test_empty_file(trained: Path) -> None:
    trained.write_bytes(b"")
    assert "corrupt" in _one_line_error(trained)


class _Payload:
    """Unpickling this object runs code (creates a folder)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_pickle_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt_mod.FORMAT, "version": 1, "nets": _Payload(marker)}, path)
    assert "refused" in _one_line_error(path)
    assert not marker.exists()


class _Arbitrary:
    def __init__(self) -> None:
        self.value = 1


def test_arbitrary_objects_are_refused_so_weights_only_is_used(trained: Path) -> None:
    obj = torch.load(trained, weights_only=True)
    obj["meta"]["note"] = _Arbitrary()
    torch.save(obj, trained)
    assert torch.load(trained, weights_only=False)["meta"]["note"].value == 1  # loadable unsafely...
    assert "refused" in _one_line_error(trained)  # ...but we never do


def test_a_plain_state_dict_is_not_a_training_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "latest_net_G.pth"
    torch.save(torch.nn.Conv2d(1, 1, 1).state_dict(), path)
    assert "not a Luminescence checkpoint" in _one_line_error(path)


def test_newer_format_version(trained: Path) -> None:
    obj = torch.load(trained, weights_only=True)
    obj["version"] = ckpt_mod.VERSION + 1
    torch.save(obj, trained)
    assert "update the code" in _one_line_error(trained)


def test_training_over_a_corrupt_checkpoint_errors_and_keeps_it(trained: Path, datasets: Path,
                                                               tmp_path: Path) -> None:
    trained.write_bytes(b"garbage")
    plan = plan_run("tiny", tiny_params(), out_dir=tmp_path / "run", datasets_dir=datasets)
    with pytest.raises(CheckpointError):
        train(plan, progress=False)
    assert trained.read_bytes() == b"garbage"
    assert train(plan, resume=False, progress=False).finished  # --no-resume replaces it


# --------------------------------------------------------------------------- mismatches
def _mismatch(plan_kwargs: dict[str, Any], datasets: Path, tmp_path: Path, **kw: Any) -> str:
    plan = plan_run("tiny", tiny_params(**plan_kwargs), out_dir=tmp_path / "run", datasets_dir=datasets,
                    **kw)
    with pytest.raises(CheckpointMismatch) as info:
        train(plan, progress=False)
    message = str(info.value)
    assert "\n" not in message and "from ablation 'tiny'" in message and "--no-resume" in message
    return message


def test_changed_options_name_the_difference(trained: Path, datasets: Path, tmp_path: Path) -> None:
    message = _mismatch({"ablations": {"tiny": {"model": "tiny_p2p", "dataset": "tiny", "ngf": 64}}},
                        datasets, tmp_path)
    assert "options.ngf: 8 in the checkpoint, 16 now" in message
    assert f"rm -r {trained.parent}" in message


def test_changed_model_is_named(trained: Path, datasets: Path, tmp_path: Path) -> None:
    message = _mismatch({"ablations": {"tiny": {"model": "tiny_pool", "dataset": "tiny"}}},
                        datasets, tmp_path)
    assert "model: 'tiny_p2p' in the checkpoint, 'tiny_pool' now" in message


def test_rebuilt_dataset_is_noticed(trained: Path, datasets: Path, tmp_path: Path) -> None:
    write_split(datasets / "tiny", "train", tiny_pairs(6, 32, seed=99))
    assert "dataset.fingerprint" in _mismatch({}, datasets, tmp_path)


def test_changed_schedule_is_named(trained: Path, datasets: Path, tmp_path: Path) -> None:
    message = _mismatch({}, datasets, tmp_path, steps=20)
    assert "train.constant_steps: 4 in the checkpoint, 10 now" in message


def test_differences_walks_nested_values() -> None:
    assert differences({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 2, "c": (1, 2)}, "d": 0}) == [
        ("a.b", 1, 2), ("d", "<unset>", 0)]


# --------------------------------------------------------------------------- atomic writes
def test_a_failed_save_keeps_the_previous_checkpoint(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = trained.read_bytes()

    def dies_half_way(obj: Any, fh: Any) -> None:
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", dies_half_way)
    with pytest.raises(OSError):
        save_checkpoint(trained, {"step": 1})
    assert trained.read_bytes() == before
    assert [p.name for p in trained.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_load_model_for_inference(trained: Path) -> None:
    weights = read_checkpoint(trained)["nets"]["G"]["0.weight"]
    for path in (trained, trained.parent / "model.pt"):
        model = load_model(path)
        assert isinstance(model, TinyP2P) and not model.nets["G"].training
        assert torch.equal(model.nets["G"][0].weight, weights)


def test_model_file_is_small_and_not_resumable(trained: Path) -> None:
    model_file = trained.parent / "model.pt"
    assert model_file.stat().st_size < 0.6 * trained.stat().st_size  # no Adam moments, no RNG
    assert "not a Luminescence training checkpoint" in _one_line_error(model_file)


def test_model_file_only_for_finished_runs(datasets: Path, tmp_path: Path) -> None:
    plan = plan_run("tiny", tiny_params(), out_dir=tmp_path / "run", datasets_dir=datasets)
    train(plan, progress=False)
    assert plan.model_path.exists()
    train(plan, resume=False, stop_at=3, progress=False)  # starting over removes the old one
    assert not plan.model_path.exists()
    train(plan, progress=False)
    plan.model_path.unlink()
    assert train(plan, progress=False).skipped and plan.model_path.exists()  # no-op restores it


# --------------------------------------------------------------------------- SIGKILL
def test_resume_after_sigkill_is_bit_identical(datasets: Path, tmp_path: Path) -> None:
    """Kill a real training process mid-run, resume it, compare with an uninterrupted run."""
    params = write_params(tmp_path / "params.yaml", steps=20, decay=20, checkpoint_every=1, val_every=10)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.tiny_gan", "tiny", "--params", str(params), "--datasets",
         str(datasets), "--out", str(out), "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "checkpoint.pt").exists() and read_checkpoint(out / "checkpoint.pt")["step"] >= 6:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()!r}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    killed_at = read_checkpoint(out / "checkpoint.pt")["step"]
    assert 6 <= killed_at < 40

    params_obj = tiny_params(steps=20, decay=20, checkpoint_every=1, val_every=10)
    resumed = train(plan_run("tiny", params_obj, out_dir=out, datasets_dir=datasets), progress=False)
    assert resumed.start_step == killed_at and resumed.finished
    assert [p for p in out.iterdir() if p.name.endswith(".tmp")] == []
    straight = plan_run("tiny", params_obj, out_dir=tmp_path / "straight", datasets_dir=datasets)
    train(straight, progress=False)
    assert_same_tree(trained_state(out / "checkpoint.pt"), trained_state(straight.checkpoint_path))


@pytest.mark.parametrize(("value", "named"), [
    (np.float32(1.0), "numpy.float32"),
    (collections.deque([1]), "deque"),
    (torch.torch_version.TorchVersion("2.0"), "TorchVersion"),
])
def test_unloadable_state_is_refused_when_saving(tmp_path: Path, value: Any, named: str) -> None:
    with pytest.raises(TypeError, match=named):
        save_checkpoint(tmp_path / "c.pt", {"ranks": [{"extra": {"pool": value}}]})
    assert not (tmp_path / "c.pt").exists()


def test_checkpoints_get_the_usual_file_permissions(trained: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    assert trained.stat().st_mode & 0o777 == 0o666 & ~mask
