"""Start-up: the training, evaluation and colourisation stages import only what they use."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.training.validation import make_grid, png_bytes
from tests.conftest import ROOT

HEAVY = ("torchvision", "torch._dynamo", "torch._inductor", "sympy", "matplotlib")


def _imported_after(code: str) -> set[str]:
    """Top-level heavy modules imported by `code` in a fresh interpreter."""
    probe = (f"{code}\nimport sys\n"
             f"print(' '.join(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return {m for m in done.stdout.split() if m in HEAVY}


def test_the_training_stage_imports_no_torchvision_or_compiler() -> None:
    # Everything a train stage runs: its imports (the variants included), deterministic
    # mode, training steps with the LR schedulers, a checkpoint's state and its reloading.
    code = """
import pipeline.stages.train, pipeline.training.loop, pipeline.training.resume
import torch
from models.registry import get_model_class
from pipeline.training.devices import configure_determinism
from pipeline.training.schedule import make_schedulers
configure_determinism(True, torch.device("cpu"))
for name in ("pix2pix", "cyclegan"):
    cls = get_model_class(name)
    model = cls(cls.Options(netG="resnet_6blocks", ngf=4, ndf=4), torch.device("cpu"))
    schedulers = make_schedulers(model, 1, 1)
    rgb = torch.rand(1, 3, 32, 32)
    model.train_step({"A": rgb.mean(1, keepdim=True), "B": rgb})
    for s in schedulers.values():
        s.step()
    model.load_state_dict(model.state_dict())
    [s.state_dict() for s in schedulers.values()]
"""
    assert _imported_after(code) == set()


def test_deterministic_mode_is_set_without_the_compiler() -> None:
    code = """
import torch
from pipeline.training.devices import set_deterministic
set_deterministic(True, warn_only=True)
assert torch.are_deterministic_algorithms_enabled()
assert torch.is_deterministic_algorithms_warn_only_enabled()
set_deterministic(False)
assert not torch.are_deterministic_algorithms_enabled()
"""
    assert _imported_after(code) == set()


def test_our_adam_updates_exactly_like_torchs_fused_adam() -> None:
    from models.optim import Adam

    torch.manual_seed(0)
    theirs_p = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    ours_p = [p.detach().clone().requires_grad_() for p in theirs_p]
    theirs = torch.optim.Adam(theirs_p, lr=0.01, betas=(0.5, 0.999), fused=True)
    ours = Adam(ours_p, lr=0.01, betas=(0.5, 0.999), fused=True)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in theirs_p]
        for opt, params in ((theirs, theirs_p), (ours, ours_p)):
            opt.zero_grad()
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(theirs_p, ours_p, strict=True))
    # Checkpoints are interchangeable: the same state_dict, loadable either way.
    a, b = theirs.state_dict(), ours.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])
    ours.load_state_dict(a)
    ours.zero_grad()
    assert all(p.grad is None for p in ours_p)


def test_the_colourise_stage_imports_no_torchvision_or_compiler() -> None:
    code = "import pipeline.stages.colourise, pipeline.training.checkpoint, pipeline.inference.colourise"
    assert _imported_after(code) == set()


def test_the_grid_is_torchvisions_layout() -> None:
    from torchvision.utils import make_grid as tv_make_grid

    images = torch.rand(7, 3, 5, 6)
    for ncols in (1, 3, 7, 9):
        assert torch.equal(make_grid(images, ncols=ncols),
                           tv_make_grid(images, nrow=ncols, padding=2, pad_value=1.0))


def test_png_pixels_are_torchvisions() -> None:
    from torchvision.utils import save_image

    image = torch.rand(3, 9, 11)
    image[0, 0, 0], image[1, 0, 0] = 1.0, 0.0
    theirs = io.BytesIO()
    save_image(image, theirs, format="png")
    ours_px = np.asarray(Image.open(io.BytesIO(png_bytes(image))))
    theirs_px = np.asarray(Image.open(theirs))
    assert ours_px.shape == (9, 11, 3) and np.array_equal(ours_px, theirs_px)


def test_a_grid_of_no_images_is_refused() -> None:
    with pytest.raises(ValueError, match="no images"):
        make_grid(torch.rand(0, 3, 4, 4), ncols=3)
