"""Models found by name: adding a variant is adding one module under models/variants/.

A variant module defines a `GANModel` subclass (with its `Options`) and decorates it
with `@register_model`. `resolve_options` merges, in order of precedence (last wins):
the model's reference defaults < the training preset < `train.defaults` < the
ablation's own keys, validates the result once, and names the params.yaml key in
any error.
"""

from __future__ import annotations

import importlib
import pkgutil
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


def resolve_options(model: str, *, ablation_name: str, ablation: dict[str, Any],
                    shared: dict[str, Any] | None = None,
                    preset: TrainPreset | None = None) -> ModelOptions:
    """Validated options for one ablation (see the module docstring for precedence)."""
    cls = get_model_class(model, key=f"ablations.{ablation_name}.model")
    options_cls = cls.Options
    shared = dict(shared or {})
    merged: dict[str, Any] = {}
    fields = options_cls.model_fields
    if preset is not None and str(fields["netG"].default) == "unet_256":
        # unet_256 needs 256-pixel crops; the preset names the U-Net that fits its crop.
        merged["netG"] = preset.unet
        if "netE" in fields and str(fields["netE"].default) == "resnet_256" and preset.unet == "unet_128":
            merged["netE"] = "resnet_128"  # BicycleGAN's encoder sized like its U-Net
    merged.update(shared)
    merged.update(ablation)
    try:
        opts = options_cls.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"]
        from_ablation = bool(first) and first[0] in ablation
        prefix = f"ablations.{ablation_name}" if from_ablation else "train.defaults"
        raise ConfigError(format_validation_error(exc, options_cls, prefix=prefix)) from None
    if preset is not None and preset.width_scale != 1.0:
        scaled = {f: max(1, round(getattr(opts, f) * preset.width_scale))
                  for f in options_cls.width_fields}
        opts = opts.model_copy(update=scaled)
    return opts
