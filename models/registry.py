"""Models found by name: adding a variant is adding one module under models/variants/.

A variant module defines a `GANModel` subclass (with its `Options`) and decorates it
with `@register_model`. `resolve_options` merges, in order of precedence (last wins):
the model's reference defaults < the training preset < `train.defaults` < the
ablation's own keys, validates the result once, and names the params.yaml key in
any error. `resolve_options_with_sources` also says, for every option, which of those
set its value (the preset's width scaling counts as the preset), for the run's
options.json.

Modules of models/variants/ whose name starts with an underscore are not discovered:
`_template.py` documents how to add a model without registering one.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from models.base import GANModel, ModelOptions
from pipeline.core.config import ConfigError, TrainPreset, _unknown_name, format_validation_error

M = TypeVar("M", bound=type[GANModel])

_MODELS: dict[str, type[GANModel]] = {}
_discovered = False


def register_model(cls: M) -> M:
    """Class decorator: make a GANModel subclass available by its `name`."""
    name = cls.name
    if name in _MODELS and _MODELS[name] is not cls:
        raise RuntimeError(f"two models registered as {name!r}: {_MODELS[name]} and {cls}")
    _MODELS[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import models.variants as variants

    for info in pkgutil.iter_modules(variants.__path__):
        if info.name.startswith("_"):  # templates and private helpers are not models
            continue
        importlib.import_module(f"models.variants.{info.name}")
    _discovered = True


def model_names() -> list[str]:
    _discover()
    return sorted(_MODELS)


def get_model_class(name: str, key: str = "model") -> type[GANModel]:
    _discover()
    if name not in _MODELS:
        raise ConfigError(f"params.yaml: `{key}`: {_unknown_name('model', name, _MODELS)}")
    return _MODELS[name]


REFERENCE = "reference"


@dataclass(frozen=True)
class OptionSource:
    """Where one resolved option's value came from.

    `source`: "reference" (the model's reference default), "train.presets.<name>" (the
    preset: its U-Net choice or its width scaling), "train.defaults" or
    "ablations.<name>". `default` is the reference default; `scaled_from` the value (and
    its source) before the preset's width scaling, when that changed it.
    """

    source: str
    default: Any
    scaled_from: tuple[Any, str] | None = None

    def to_json(self, value: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"value": value, "source": self.source}
        if value != self.default:
            out["default"] = self.default
        if self.scaled_from is not None:
            out["scaled_from"] = {"value": self.scaled_from[0], "source": self.scaled_from[1]}
        return out


def resolve_options(model: str, *, ablation_name: str, ablation: dict[str, Any],
                    shared: dict[str, Any] | None = None,
                    preset: TrainPreset | None = None) -> ModelOptions:
    """Validated options for one ablation (see the module docstring for precedence)."""
    return resolve_options_with_sources(model, ablation_name=ablation_name, ablation=ablation,
                                        shared=shared, preset=preset)[0]


def resolve_options_with_sources(
    model: str, *, ablation_name: str, ablation: dict[str, Any], shared: dict[str, Any] | None = None,
    preset: TrainPreset | None = None, preset_name: str | None = None,
) -> tuple[ModelOptions, dict[str, OptionSource]]:
    """Validated options for one ablation and, per option, where its value came from."""
    cls = get_model_class(model, key=f"ablations.{ablation_name}.model")
    options_cls = cls.Options
    shared = dict(shared or {})
    preset_key = f"train.presets.{preset_name}" if preset_name else "train.presets"
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    fields = options_cls.model_fields
    if preset is not None and str(fields["netG"].default) == "unet_256":
        # unet_256 needs 256-pixel crops; the preset names the U-Net that fits its crop.
        merged["netG"] = preset.unet
        origin["netG"] = preset_key
        if "netE" in fields and str(fields["netE"].default) == "resnet_256" and preset.unet == "unet_128":
            merged["netE"] = "resnet_128"  # BicycleGAN's encoder sized like its U-Net
            origin["netE"] = preset_key
    merged.update(shared)
    origin.update(dict.fromkeys(shared, "train.defaults"))
    merged.update(ablation)
    origin.update(dict.fromkeys(ablation, f"ablations.{ablation_name}"))
    try:
        opts = options_cls.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"]
        from_ablation = bool(first) and first[0] in ablation
        prefix = f"ablations.{ablation_name}" if from_ablation else "train.defaults"
        raise ConfigError(format_validation_error(exc, options_cls, prefix=prefix)) from None
    defaults = options_cls().model_dump(mode="json")
    before = opts.model_dump(mode="json")
    scaled_from: dict[str, tuple[Any, str]] = {}
    if preset is not None and preset.width_scale != 1.0:
        scaled = {f: max(1, round(getattr(opts, f) * preset.width_scale))
                  for f in options_cls.width_fields}
        opts = opts.model_copy(update=scaled)
        for f, value in scaled.items():
            if value != before[f]:
                scaled_from[f] = (before[f], origin.get(f, REFERENCE))
                origin[f] = preset_key
    sources = {f: OptionSource(origin.get(f, REFERENCE), defaults[f], scaled_from.get(f)) for f in fields}
    return opts, sources
