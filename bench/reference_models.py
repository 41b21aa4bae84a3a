"""Adapters that build the reference implementations' models for `bench.train_speed`.

They import the references' own model classes from checkouts the user points to
(`--reference-dir`; nothing of theirs is part of this repository) and return a
`step()` that runs one `set_input` + `optimize_parameters`, with the settings our
models use (same networks, widths, losses and batch).

This module must not import the project's `models` package: the reference
repositories have their own top-level `models` (and `util`, `options`, `data`)
packages, so each reference runs in its own worker process with its checkout first
on sys.path.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PIX2PIX_REPO = "pytorch-CycleGAN-and-pix2pix"
CUT_REPO = "contrastive-unpaired-translation"
REPO_OF = {
    "pix2pix_unet256": PIX2PIX_REPO,
    "pix2pix_resnet9": PIX2PIX_REPO,
    "cyclegan": PIX2PIX_REPO,
    "cut": CUT_REPO,
    "fastcut": CUT_REPO,
}


def find_repo(reference_dir: Path, repo: str) -> Path | None:
    """A checkout of `repo` directly under `reference_dir` (named `repo` or `owner+repo`)."""
    for path in sorted(reference_dir.iterdir()) if reference_dir.is_dir() else []:
        if (
            path.is_dir()
            and (path.name == repo or path.name.endswith(f"+{repo}"))
            and (path / "models").is_dir()
        ):
            return path
    return None


def _import_from(repo: Path, module: str) -> Any:
    sys.path.insert(0, str(repo))
    import importlib

    return importlib.import_module(module)


def _pix2pix_opt(**overrides: Any) -> argparse.Namespace:
    """Options of pytorch-CycleGAN-and-pix2pix's training script, defaults first."""
    opt = argparse.Namespace(
        gpu_ids=[],
        isTrain=True,
        checkpoints_dir=tempfile.mkdtemp(prefix="refbench"),
        name="bench",
        preprocess="resize_and_crop",
        input_nc=3,
        output_nc=3,
        ngf=64,
        ndf=64,
        netD="basic",
        n_layers_D=3,
        norm="instance",
        init_type="normal",
        init_gain=0.02,
        no_dropout=False,
        pool_size=50,
        gan_mode="lsgan",
        lr=2e-4,
        beta1=0.5,
        direction="AtoB",
        lr_policy="linear",
        epoch_count=1,
        n_epochs=100,
        n_epochs_decay=100,
        niter=100,
        niter_decay=100,
        continue_train=False,
        verbose=False,
        load_iter=0,
        epoch="latest",
    )
    for key, value in overrides.items():
        setattr(opt, key, value)
    return opt


def build_reference(
    config: str, reference_dir: Path, size: int, batch_size: int, device: str
) -> tuple[Callable[[], None], dict[str, int], str]:
    """(step, parameter counts per network, description) for one benchmark config."""
    import torch

    repo = find_repo(reference_dir, REPO_OF[config])
    if repo is None:
        raise FileNotFoundError(f"no checkout of {REPO_OF[config]} under {reference_dir}")
    gpu_ids = [0] if device == "cuda" else []
    torch.manual_seed(0)
    gray = torch.rand(batch_size, 1, size, size) * 2 - 1  # synthetic random tiles, timing only
    rgb = torch.rand(batch_size, 3, size, size) * 2 - 1
    if config.startswith("pix2pix"):
        module = _import_from(repo, "models.pix2pix_model")
        net_g = "unet_256" if config == "pix2pix_unet256" else "resnet_9blocks"
        opt = _pix2pix_opt(
            gpu_ids=gpu_ids,
            input_nc=1,
            output_nc=3,
            netG=net_g,
            norm="batch",
            pool_size=0,
            gan_mode="vanilla",
            lambda_L1=100.0,
        )
        model = module.Pix2PixModel(opt)
        data = {"A": gray, "B": rgb}
        nets = {"G": model.netG, "D": model.netD}
        what = f"{repo.name} Pix2PixModel, {net_g}, input_nc 1, output_nc 3"
    elif config == "cyclegan":
        module = _import_from(repo, "models.cycle_gan_model")
        # its identity loss needs equal channel counts: the gray input as 3 channels
        opt = _pix2pix_opt(
            gpu_ids=gpu_ids,
            netG="resnet_9blocks",
            no_dropout=True,
            lambda_A=10.0,
            lambda_B=10.0,
            lambda_identity=0.5,
        )
        model = module.CycleGANModel(opt)
        data = {"A": gray.expand(-1, 3, -1, -1).contiguous(), "B": rgb}
        nets = {"G_A": model.netG_A, "G_B": model.netG_B, "D_A": model.netD_A, "D_B": model.netD_B}
        what = f"{repo.name} CycleGANModel, resnet_9blocks, 3 <-> 3 channels"
    else:
        sys.path.insert(0, str(repo))
        from options.train_options import TrainOptions  # type: ignore[import-not-found]

        import models as ref_models  # type: ignore[import-not-found]  # the reference's package

        # Its CUT_mode presets are read from sys.argv, not from cmd_line: pass FastCUT's explicitly.
        mode = (
            ["--nce_idt", "False", "--lambda_NCE", "10", "--flip_equivariance", "True"]
            if config == "fastcut"
            else []
        )
        args = [
            "--dataroot",
            ".",
            "--gpu_ids",
            "0" if gpu_ids else "-1",
            "--checkpoints_dir",
            tempfile.mkdtemp(prefix="refbench"),
            "--batch_size",
            str(batch_size),
            "--CUT_mode",
            "FastCUT" if config == "fastcut" else "CUT",
            *mode,
        ]
        opt = TrainOptions(cmd_line=" ".join(args)).parse()
        model = ref_models.create_model(opt)
        data = {"A": gray.expand(-1, 3, -1, -1).contiguous(), "B": rgb}
        data_paths = {**data, "A_paths": "", "B_paths": ""}
        model.data_dependent_initialize(data_paths)  # builds its MLP head on the first batch
        model.setup(opt)
        nets = {"G": model.netG, "D": model.netD, "F": model.netF}
        what = f"{repo.name} CUTModel ({'FastCUT' if config == 'fastcut' else 'CUT'}), 3 -> 3 channels"
    batch = {**data, "A_paths": "", "B_paths": ""}

    def step() -> None:
        model.set_input(batch)
        model.optimize_parameters()

    counts = {k: sum(p.numel() for p in n.parameters()) for k, n in nets.items()}
    return step, counts, what
