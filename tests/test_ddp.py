"""Multi-process training (torchrun, gloo on CPU): gradients averaged, replicas identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.training.checkpoint import read_checkpoint
from pipeline.training.loop import train
from pipeline.training.plan import plan_run
from tests.conftest import ROOT
from tests.tiny_gan import tiny_params, write_params, write_tiny_dataset

# No batch norm, no dropout, plain SGD and mirror-symmetric full-size tiles (so random
# crops and flips change nothing): then 2 processes x batch 1 with averaged gradients
# must equal 1 process x batch 2 up to rounding, and must differ from 1 process x batch 1.
LINEAR = {"tiny": {"model": "tiny_p2p", "dataset": "tiny", "norm": "none", "dropout": False,
                   "optimizer": "sgd", "lr": 0.05}}


pytestmark = pytest.mark.usefixtures("quiet_cpu")


def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         "-m", "tests.tiny_gan", *args, "--no-progress"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    nets = read_checkpoint(path)["nets"]
    return {f"{n}.{k}": v for n, sd in nets.items() for k, v in sd.items() if v.is_floating_point()}


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_processes_average_gradients_like_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    write_tiny_dataset(datasets / "tiny", n_train=8, symmetric=True)
    common: dict[str, Any] = {"ablations": LINEAR, "steps": 3, "decay": 3}
    params = write_params(tmp_path / "params.yaml", **common)
    done = torchrun(["tiny", "--params", str(params), "--datasets", str(datasets), "--out",
                     str(tmp_path / "ddp")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x 2 processes" in done.stderr and done.stdout.count("trained tiny: 6 steps") == 1
    ck = read_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert len(ck["ranks"]) == 2
    assert ck["ranks"][0]["weights"] == ck["ranks"][1]["weights"]  # replicas identical
    assert not torch.equal(ck["ranks"][0]["rng"]["torch"], ck["ranks"][1]["rng"]["torch"])

    ddp = _weights(tmp_path / "ddp" / "checkpoint.pt")
    singles = {}
    for batch in (1, 2):
        plan = plan_run("tiny", tiny_params(batch=batch, **common), out_dir=tmp_path / f"b{batch}",
                        datasets_dir=datasets)
        train(plan, progress=False)
        singles[batch] = _weights(plan.checkpoint_path)
    same, different = _gap(ddp, singles[2]), _gap(ddp, singles[1])
    assert different > 1e-4
    assert same < 1e-3 * different, (same, different)


def test_real_pix2pix_replicas_stay_identical_with_batch_norm(tmp_path: Path) -> None:
    """Batch norm (running statistics per process) and dropout (a random stream per
    process): weights, buffers and optimizer state must still agree after every step."""
    datasets = tmp_path / "datasets"
    write_tiny_dataset(datasets / "tiny", n_train=8)
    params = write_params(tmp_path / "params.yaml", steps=2, decay=1, checkpoint_every=1, ablations={
        "p2p": {"model": "pix2pix", "dataset": "tiny", "netG": "resnet_6blocks", "ngf": 16, "ndf": 16}})
    done = torchrun(["p2p", "--params", str(params), "--datasets", str(datasets), "--out",
                     str(tmp_path / "ddp")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ck = read_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ck["step"] == 3 and len(ck["ranks"]) == 2
    assert ck["ranks"][0]["weights"] == ck["ranks"][1]["weights"]
    means = [v for k, v in ck["nets"]["G"].items() if k.endswith("running_mean")]
    assert means and all(m.abs().sum() > 0 for m in means)  # batch norm, and its statistics moved
