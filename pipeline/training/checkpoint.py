"""Training checkpoints: everything an exact resume needs, saved atomically, loaded safely.

A checkpoint is one `torch.save` file holding only tensors and plain Python data
(dicts, lists, str, int, float, bool, None), so it loads with `torch.load(weights_only=True)`
and a hostile file cannot run code. Contents:
- `format`, `version`; `ablation`, `model`, `options` (resolved), `identity` and its
  `identity_hash` (model, options, dataset fingerprint and the training settings that
  shape the trajectory; a resume must match it exactly);
- `step` (iterations done), `total_steps`, `finished`;
- `nets`, `optimizers` (GANModel.state_dict), `schedulers`;
- `ranks`: per process, its RNG states (torch CPU/CUDA/MPS, NumPy, Python) and the
  model's `extra_state` (e.g. image pools), so multi-process runs also resume exactly;
- `dataset` (DatasetInfo as a dict) and `meta` (torch version, device, world size).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.errors import LuminescenceError
from pipeline.core.files import replacing

FORMAT = "luminescence-train-checkpoint"
MODEL_FORMAT = "luminescence-model"  # runs/<ablation>/model.pt: trained networks only
VERSION = 1
_MODEL_KEYS = ("ablation", "model", "options", "identity_hash", "step", "nets", "dataset")
# optional: {net name: {instance norm name: {"mean", "var"}}}, statistics fixed after training
# (models/networks/norm_stats.py), and how they were gathered
_OPTIONAL_MODEL_KEYS = ("norm_stats", "norm_stats_source")
_REQUIRED = ("ablation", "model", "options", "identity", "identity_hash", "step", "total_steps",
             "finished", "nets", "optimizers", "schedulers", "ranks")


class CheckpointError(LuminescenceError):
    """A checkpoint cannot be read (corrupt, truncated, unsafe or not ours)."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint was made for a different configuration."""


# --------------------------------------------------------------------------- identity
def identity_hash(identity: dict[str, Any]) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            out.extend(differences(old.get(key, "<unset>"), new.get(key, "<unset>"), path))
        return out
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        old, new = list(old), list(new)
    return [] if old == new else [(prefix, old, new)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_identity(ckpt: dict[str, Any], identity: dict[str, Any], path: Path) -> None:
    """Raise CheckpointMismatch naming what differs when `ckpt` was made for another setup."""
    if ckpt["identity_hash"] == identity_hash(identity):
        return
    diffs = differences(ckpt["identity"], identity)
    shown = "; ".join(f"{k}: {_short(a)} in the checkpoint, {_short(b)} now" for k, a, b in diffs[:3])
    if len(diffs) > 3:
        shown += f"; and {len(diffs) - 3} more"
    run_dir = path.parent
    raise CheckpointMismatch(
        f"{path} (from ablation '{ckpt['ablation']}') was trained with different settings "
        f"({shown or 'identity differs'}); to train afresh delete it (rm -r {run_dir}) or pass "
        f"--no-resume, or restore the old settings in params.yaml to resume it")


def weights_digest(nets: dict[str, Any]) -> str:
    """SHA-256 of every network's parameters and buffers (compares replicas across processes)."""
    digest = hashlib.sha256()
    for name in sorted(nets):
        for key, tensor in nets[name].state_dict().items():
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- RNG state
def capture_rng(device: torch.device) -> dict[str, Any]:
    """Every global generator's state, as tensors and plain types (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": [int(x) for x in py_state],
                   "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


# --------------------------------------------------------------------------- files
def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a training checkpoint atomically (see `save_atomic`)."""
    check_plain(payload)
    save_atomic(path, {"format": FORMAT, "version": VERSION, **payload})


_PLAIN = (str, bytes, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Fail at save time (not at the next resume) when something would not load with
    weights_only=True, e.g. a variant's extra_state holding a deque or a NumPy array."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str or int keys")
            check_plain(value, f"{where}.{key}")
    elif isinstance(obj, list | tuple | set):
        if type(obj) not in (list, tuple, set):  # namedtuples etc. need their class to load
            raise TypeError(f"{where} is a {type(obj).__name__}; store a plain list or tuple")
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"{where} holds a {type(obj).__module__}.{type(obj).__name__}, which "
                        f"torch.load(weights_only=True) refuses; store tensors and plain data only")
    elif isinstance(obj, str | int | float) and type(obj) not in (str, int, float, bool):
        raise TypeError(f"{where} is a {type(obj).__name__} (a subclass of a plain type); convert it")


def save_model_file(path: Path, checkpoint: dict[str, Any]) -> None:
    """The trained networks alone (no optimizer or RNG state): what evaluation and
    inference load, small enough to version with DVC."""
    save_atomic(path, {"format": MODEL_FORMAT, "version": VERSION,
                       **{k: checkpoint[k] for k in _MODEL_KEYS},
                       **{k: checkpoint[k] for k in _OPTIONAL_MODEL_KEYS if checkpoint.get(k) is not None}})


def read_model_file(path: Path) -> dict[str, Any]:
    """A model file's contents (runs/<ablation>/model.pt, release/model.pt), loaded safely."""
    obj = _load_safely(Path(path), _unusable_model)
    if obj.get("format") != MODEL_FORMAT:
        raise _unusable_model(Path(path), "a training checkpoint, not a model file")
    missing = [k for k in _MODEL_KEYS if k not in obj]
    if missing:
        raise _unusable_model(Path(path), f"incomplete: missing {', '.join(missing)}")
    return obj


def save_atomic(path: Path, obj: dict[str, Any]) -> None:
    """torch.save to a temporary file in the same folder, flushed, then renamed.

    A crash (even SIGKILL) at any moment leaves either the previous file or the new
    one, never a half-written file.
    """
    with replacing(path, durable=True) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def _unreadable(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a usable training checkpoint ({reason}); delete it to "
                           f"train from scratch (rm {path}) or pass --no-resume")


def _unusable_model(path: Path, reason: str) -> CheckpointError:
    """For the commands that only load a model (evaluate, colourise): their advice, not train's."""
    return CheckpointError(f"{path} is not a usable model file ({reason}); train it again (dvc repro "
                           f"train@ABLATION writes runs/ABLATION/model.pt) or use another model file")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint with weights_only=True and check its structure."""
    obj = _load_safely(Path(path))
    if obj.get("format") != FORMAT:
        raise _unreadable(path, "not a Luminescence training checkpoint (a plain state dict, a "
                                "model.pt or another program's file?)")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise _unreadable(path, f"incomplete: missing {', '.join(missing)}")
    return obj


def _load_safely(path: Path, unreadable: Callable[[Path, str], CheckpointError] = _unreadable
                 ) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "GLOBAL" in text:  # a class or function reference: the way pickles run code
            raise unreadable(path, "it holds Python objects other than tensors and plain data, "
                                    "refused because loading them could run code") from None
        detail = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0]
        raise unreadable(path, f"corrupt: {_first_line(detail)}") from None
    except Exception as exc:  # truncated zip, random bytes, ...: torch raises many kinds
        raise unreadable(path, f"truncated or corrupt: {_first_line(exc)}") from None
    if not isinstance(obj, dict) or obj.get("format") not in (FORMAT, MODEL_FORMAT):
        raise unreadable(path, "not a Luminescence checkpoint (a plain state dict or another "
                                "program's file?)")
    if not isinstance(obj.get("version"), int) or obj["version"] > VERSION:
        raise unreadable(path, f"format version {obj.get('version')!r}, this code reads up to "
                                f"{VERSION}; update the code")
    return obj


def _first_line(detail: BaseException | str) -> str:
    """One short line of an error or its message (the exception's type when it has none)."""
    text = " ".join(str(detail).split()) or type(detail).__name__
    return text if len(text) <= 90 else text[:87] + "..."


def load_model(path: Path, device: torch.device | str = "cpu") -> Any:
    """A trained GANModel, networks loaded, in eval mode (for evaluation and inference),
    from runs/<ablation>/model.pt or a training checkpoint.

    A file whose model, options or weights do not fit together is a CheckpointError in one
    line (never pydantic's or load_state_dict's report of hundreds of keys).
    """
    from pydantic import ValidationError

    from models.registry import get_model_class, model_names

    path = Path(path)
    device = torch.device(device)
    ckpt = _load_safely(path, _unusable_model)
    missing = [k for k in _MODEL_KEYS if k not in ckpt]
    if missing:
        raise _unusable_model(path, f"incomplete: missing {', '.join(missing)}")
    name, options, nets = ckpt["model"], ckpt["options"], ckpt["nets"]
    if not isinstance(name, str) or name not in model_names():
        raise _unusable_model(path, f"it names unknown model {name!r}; this code has "
                                    f"{', '.join(model_names())}")
    if not isinstance(options, dict) or not isinstance(nets, dict):
        raise _unusable_model(path, "its options or networks are not mappings")
    cls = get_model_class(name)
    try:
        opts = cls.Options.model_validate(options)
    except ValidationError as exc:
        raise _unusable_model(path, f"invalid options for model {name}: {_validation_summary(exc)}") from None
    model = cls(opts, device)
    for net_name, net in model.nets.items():
        if net_name not in nets:
            raise _unusable_model(path, f"it has no network '{net_name}' for model {name}")
        problem = _state_mismatch(net, nets[net_name])
        if problem:
            raise _unusable_model(path, f"the weights of network '{net_name}' do not match its options "
                                        f"({problem})")
        net.load_state_dict(nets[net_name])
    _fix_norm_stats(model, ckpt.get("norm_stats"), path)
    model.eval()
    return model


def _fix_norm_stats(model: Any, stats: Any, path: Path) -> None:
    """Use the file's fixed instance-norm statistics, when it has them."""
    from models.networks.norm_stats import check_norm_stats, fix_norm_stats

    if stats is None:
        return
    if not isinstance(stats, dict) or any(name not in model.nets for name in stats):
        raise _unusable_model(path, "its norm statistics name networks the model does not have")
    for net_name, net_stats in stats.items():
        problem = check_norm_stats(model.nets[net_name], net_stats)
        if problem:
            raise _unusable_model(path, f"the norm statistics of network '{net_name}' do not fit it "
                                        f"({problem})")
        fix_norm_stats(model.nets[net_name], net_stats)


def _validation_summary(exc: Any) -> str:
    errors = exc.errors()
    shown = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']} "
                      f"(got {_short(e.get('input'))})" for e in errors[:2])
    return shown + (f"; and {len(errors) - 2} more" if len(errors) > 2 else "")


def _state_mismatch(net: torch.nn.Module, state: Any) -> str:
    """What keeps `state` from loading into `net` (missing, unexpected or misshapen tensors), briefly;
    "" when it fits."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "not a mapping of tensors"
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} expected"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    parts = []
    for what, items in (("with the wrong shape", shapes), ("missing", missing), ("unexpected", unexpected)):
        if items:
            parts.append(f"{len(items)} {what}, e.g. {items[0]}")
    return "; ".join(parts)
