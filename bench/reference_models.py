"""Adapters that build the reference implementations' models for `bench.train_speed`.

They import the references' own model classes from checkouts the user points to
(`--reference-dir`; nothing of theirs is part of this repository) and return a
`step()` that runs one `set_input` + `optimize_parameters`, with the settings our
models use (same networks, widths, losses and batch).

Checkouts differ in how their training script builds the options (2018 versions
named several of them differently and built models with `initialize(opt)`; some set
values such as the device outside the option parser): the options are read from the
checkout's own parser, and what its scripts set elsewhere is set here
(`_reference_opt`), so the adapter assumes as little as possible about the version.

This module must not import the project's `models` package: the reference
repositories have their own top-level `models` (and `util`, `options`, `data`)
packages, so each reference runs in its own worker process with its checkout first
on sys.path.
"""

from __future__ import annotations

import argparse
import inspect
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

    try:
        return importlib.import_module(module)
    except SyntaxError as exc:  # e.g. mid-2018 checkouts pass `async=True`, a keyword since 3.7
        where = f"{Path(exc.filename or '?').name}:{exc.lineno}"
        raise SystemExit(f"error: the reference checkout {repo} is not valid Python "
                         f"{sys.version_info.major}.{sys.version_info.minor} ({where}: {exc.msg}); "
                         f"use a checkout from 2019 or later") from None


# Our settings under the option names of older checkouts (2018 and earlier used these).
RENAMED = {"netG": "which_model_netG", "netD": "which_model_netD", "direction": "which_direction",
           "batch_size": "batchSize", "load_size": "loadSize", "crop_size": "fineSize"}


def _parser_defaults(repo: Path, model_cls: Any) -> argparse.Namespace:
    """Every option the checkout's training script defines, at its default: its
    TrainOptions (with BaseOptions) and the model's `modify_commandline_options`. Read
    from its own parser, so options this adapter has never heard of are there too."""
    train_options = _import_from(repo, "options.train_options")
    options = train_options.TrainOptions()
    if inspect.signature(options.initialize).parameters:  # 2019 on: initialize(parser) returns it
        parser = options.initialize(argparse.ArgumentParser())
    else:  # 2018: initialize() fills self.parser
        options.initialize()
        parser = options.parser
    setter = getattr(model_cls, "modify_commandline_options", None)
    if setter is not None:
        parser = setter(parser, True)
    # Required options (the dataset root) get a placeholder: no data is read.
    required = [a.option_strings[0] for a in parser._actions if a.required and a.option_strings]
    opt, _ = parser.parse_known_args([arg for flag in required for arg in (flag, ".")])
    return opt


def _reference_opt(repo: Path, model_cls: Any, device: str, **ours: Any) -> argparse.Namespace:
    """The options a checkout's train.py would hand its model, with our settings.

    Besides its parser's defaults, a model reads values that the checkout sets
    elsewhere, which differ between versions: `isTrain` and `gpu_ids` as a list (in
    BaseOptions.parse), the device (derived from gpu_ids in the model, or an `opt.device`
    set by the options or the training script in other versions). All are set here, so
    no version's model finds one missing.
    """
    import torch

    opt = _parser_defaults(repo, model_cls)
    gpu_ids = [0] if device == "cuda" else []
    opt.isTrain = True
    opt.gpu_ids = gpu_ids
    # A torch.device works where a version calls .to(opt.device) or torch.device(opt.device).
    opt.device = torch.device("cuda", 0) if gpu_ids else torch.device("cpu")
    opt.checkpoints_dir = tempfile.mkdtemp(prefix="refbench")
    opt.name = "bench"
    opt.continue_train = False
    opt.verbose = False
    for key, value in ours.items():
        old = RENAMED.get(key)
        setattr(opt, old if old and hasattr(opt, old) and not hasattr(opt, key) else key, value)
    if "gan_mode" in ours and hasattr(opt, "no_lsgan") and not hasattr(opt, "gan_mode"):
        opt.no_lsgan = ours["gan_mode"] == "vanilla"  # before `gan_mode`: LSGAN unless no_lsgan
    return opt


def _build_model(model_cls: Any, opt: argparse.Namespace) -> Any:
    """`Model(opt)` (2019 and later) or `Model()` then `initialize(opt)` (2018)."""
    if any("__init__" in vars(c) for c in model_cls.__mro__ if c is not object):
        return model_cls(opt)
    model = model_cls()
    model.initialize(opt)
    return model


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
        opt = _reference_opt(
            repo, module.Pix2PixModel, device,
            input_nc=1, output_nc=3, netG=net_g, norm="batch", pool_size=0, gan_mode="vanilla",
            lambda_L1=100.0, batch_size=batch_size, direction="AtoB", no_dropout=False,
        )
        model = _build_model(module.Pix2PixModel, opt)
        data = {"A": gray, "B": rgb}
        nets = {"G": model.netG, "D": model.netD}
        what = f"{repo.name} Pix2PixModel, {net_g}, input_nc 1, output_nc 3"
    elif config == "cyclegan":
        module = _import_from(repo, "models.cycle_gan_model")
        # its identity loss needs equal channel counts: the gray input as 3 channels
        opt = _reference_opt(
            repo, module.CycleGANModel, device,
            input_nc=3, output_nc=3, netG="resnet_9blocks", norm="instance", no_dropout=True,
            gan_mode="lsgan", pool_size=50, lambda_A=10.0, lambda_B=10.0, lambda_identity=0.5,
            batch_size=batch_size, direction="AtoB",
        )
        model = _build_model(module.CycleGANModel, opt)
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
