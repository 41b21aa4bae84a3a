"""models/variants/_template.py: documented, never registered by discovery, and working
when copied (it registers under its name and trains through the real loop)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models import registry
from pipeline.core.config import ConfigError
from pipeline.training.checkpoint import load_model
from pipeline.training.loop import train
from pipeline.training.plan import plan_run
from tests.conftest import ROOT
from tests.tiny_gan import tiny_params, write_tiny_dataset

TEMPLATE = ROOT / "models" / "variants" / "_template.py"
REAL = {"pix2pix", "cyclegan", "cut", "fastcut", "bicyclegan"}


@pytest.fixture()
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever a test registers is gone afterwards (other tests see the usual models)."""
    registry.model_names()  # the real variants are imported and registered for good first
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith(("models.variants._template", "my_colouriser")):
            del sys.modules[name]


def test_discovery_skips_the_template(isolated_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    real_import = importlib.import_module

    def spy(name: str, package: str | None = None) -> object:
        imported.append(name)
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", spy)
    monkeypatch.setattr(registry, "_discovered", False)
    names = registry.model_names()
    assert "models.variants.cyclegan" in imported and "models.variants._template" not in imported
    assert set(names) >= REAL and "template" not in names


def test_the_template_registers_when_imported(isolated_registry: None) -> None:
    importlib.import_module("models.variants._template")
    assert registry.get_model_class("template").__name__ == "TemplateModel"


def _import_copy(tmp_path: Path, name: str) -> None:
    """What a user does: copy the template to a module of its own and rename the model."""
    source = TEMPLATE.read_text(encoding="utf-8")
    assert source.count('name = "template"') == 1
    path = tmp_path / f"{name}.py"
    path.write_text(source.replace('name = "template"', f'name = "{name}"'), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def test_a_copied_template_validates_its_options(isolated_registry: None, tmp_path: Path) -> None:
    _import_copy(tmp_path, "my_colouriser")
    with pytest.raises(ConfigError, match=r"`ablations\.x\.lamda_L1` is not a valid key"):
        registry.resolve_options("my_colouriser", ablation_name="x", ablation={"lamda_L1": 1.0})
    with pytest.raises(ConfigError, match="did you mean 'resnet_9blocks'"):
        registry.resolve_options("my_colouriser", ablation_name="x", ablation={"netG": "resnet_9block"})
    with pytest.raises(ConfigError, match=r"ablations\.x\.lambda_L1"):
        registry.resolve_options("my_colouriser", ablation_name="x", ablation={"lambda_L1": -1})


@pytest.mark.usefixtures("quiet_cpu")
@pytest.mark.parametrize("color_space", ["rgb", "lab"])
def test_a_copied_template_trains_through_the_loop(isolated_registry: None, tmp_path: Path,
                                                   color_space: str) -> None:
    _import_copy(tmp_path, "my_colouriser")
    datasets = tmp_path / "datasets"
    write_tiny_dataset(datasets / "tiny", n_train=2, n_val=1, size=32)
    params = tiny_params(ablations={"tiny": {"model": "my_colouriser", "dataset": "tiny",
                                             "color_space": color_space}},
                         steps=1, decay=1, val_every=2)
    plan = plan_run("tiny", params, out_dir=tmp_path / "run", datasets_dir=datasets)
    result = train(plan, progress=False)
    assert result.finished and set(result.losses) == {"D_real", "D_fake", "G_GAN", "G_L1"}
    assert all(math.isfinite(v) for v in result.losses.values())
    record = json.loads((tmp_path / "run" / "options.json").read_text())
    assert record["model"] == "my_colouriser" and record["options"]["ngf"] == 16  # 64 x 0.25
    model = load_model(plan.model_path)
    gray = torch.rand(1, 1, 32, 32)
    out = model.colourise(gray)
    assert out.shape == (1, 3, 32, 32) and out.min() >= 0 and out.max() <= 1


def test_a_variant_without_generate_cannot_be_built() -> None:
    from models.gan import ColourGAN

    class Forgetful(ColourGAN):
        name = "forgetful"

        def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
            return {}

    with pytest.raises(TypeError, match="generate"):
        Forgetful(registry.get_model_class("pix2pix").Options(), torch.device("cpu"))  # type: ignore[abstract]
