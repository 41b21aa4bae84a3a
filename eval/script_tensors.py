"""Read the tensors of a TorchScript archive without running any of its code.

A TorchScript file (`torch.jit.save`) is a zip holding the program's Python-like source
(`code/`), the module tree pickled in `data.pkl`, and one raw little-endian storage per
tensor in `data/<key>`. `torch.jit.load` would compile and run that program; this module
never does. It unpickles `data.pkl` with an unpickler that knows exactly five things:
- TorchScript classes (`__torch__.*`) become inert records of their attributes
  (`ScriptObject`): no class of the archive is ever looked up or called;
- `torch._utils._rebuild_tensor_v2` is replaced by a bounds-checked `as_strided` view;
- `torch.<Type>Storage` names a dtype;
- `collections.OrderedDict` (the empty backward-hooks argument);
- `torch.jit._pickle.build_intlist` (and its float and bool twins): checked short lists.
Any other global is refused, every storage is checked against its zip entry's size, and
the pickle and the archive are size-bounded, so a hostile file fails with one clear error.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.core.errors import LuminescenceError

__all__ = ["ScriptArchiveError", "ScriptObject", "read_script_archive", "script_objects"]

MAX_PICKLE_BYTES = 4 << 20  # the module tree of a large network is a few tens of kB
MAX_ENTRIES = 20_000
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class ScriptArchiveError(LuminescenceError):
    """The file is not a TorchScript archive this reader accepts."""


@dataclass
class ScriptObject:
    """An instance of a TorchScript class, as attributes only (its methods are never run)."""

    type_name: str  # e.g. "__torch__.inceptionv3.Conv2dLayer"
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        return self.type_name.rsplit(".", 1)[-1]

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: the attributes, nothing else
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise ScriptArchiveError(f"{self.type_name}: attributes are not a mapping of names")
        self.state = dict(state)


@dataclass(frozen=True)
class _DType:
    dtype: torch.dtype


# TorchScript pickles typed list attributes (e.g. a padding [0, 3]) through these helpers.
_TYPED_LISTS = {"build_intlist": int, "build_doublelist": float, "build_boollist": bool}


def _typed_list(unpickler: _Unpickler, name: str) -> Any:
    kind = _TYPED_LISTS[name]

    def build(values: Any) -> list[Any]:
        if not isinstance(values, list) or len(values) > 1024 or \
                not all(type(v) is kind or (kind is float and type(v) is int) for v in values):
            raise unpickler.fail(f"{name} of something that is not a short list of {kind.__name__}")
        return list(values)
    return build


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.root = root
        self.path = path
        self.storages: dict[str, torch.Tensor] = {}
        self.keys: dict[int, str] = {}  # id(tensor) -> storage key, to check the file order
        self._classes: dict[str, type] = {}

    def fail(self, why: str) -> ScriptArchiveError:
        return ScriptArchiveError(f"{self.path} is not a readable TorchScript weights archive: {why}")

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__.") or module == "__torch__":
            return self._record_class(f"{module}.{name}")
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in _TYPED_LISTS:
            return _typed_list(self, name)
        if module == "torch" and name in STORAGE_DTYPES:
            return _DType(STORAGE_DTYPES[name])
        raise self.fail(f"it refers to {module}.{name}, which a file of tensors never needs")

    def _record_class(self, type_name: str) -> type:
        """A fresh Python class per TorchScript type: NEWOBJ makes it, BUILD fills its state."""
        if type_name not in self._classes:
            def new(cls: type, *args: Any) -> ScriptObject:
                return ScriptObject(type_name)
            self._classes[type_name] = type("_Record", (), {"__new__": new})
        return self._classes[type_name]

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise self.fail(f"unexpected persistent id {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _DType) or not isinstance(key, str) or not key.isdigit() \
                or not isinstance(numel, int) or numel < 0:
            raise self.fail(f"malformed storage reference {str(pid)[:80]}")
        if key in self.storages:
            return self.storages[key]
        name = f"{self.root}/data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise self.fail(f"storage {name} is missing") from None
        itemsize = torch.empty((), dtype=kind.dtype).element_size()
        if info.file_size != numel * itemsize:
            raise self.fail(f"storage {name} holds {info.file_size} bytes, not {numel} x {itemsize}")
        raw = bytearray(self.archive.read(info))
        tensor = torch.frombuffer(raw, dtype=kind.dtype) if numel else torch.empty(0, dtype=kind.dtype)
        self.storages[key] = tensor
        self.keys[id(tensor)] = key
        return tensor

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                        hooks: Any = None, metadata: Any = None) -> torch.Tensor:
        if not isinstance(storage, torch.Tensor) or id(storage) not in self.keys:
            raise self.fail("a tensor without a storage from the archive")
        dims = (offset, *size, *stride)
        if not all(isinstance(v, int) and v >= 0 for v in dims) or len(size) != len(stride):
            raise self.fail(f"bad tensor geometry offset={offset} size={size} stride={stride}")
        last = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True)) if all(size) else offset
        if any(size) and all(size) and last >= storage.numel():
            raise self.fail(f"tensor of size {tuple(size)} overruns its storage of {storage.numel()}")
        out = storage.as_strided(tuple(size), tuple(stride), offset)
        if not (offset == 0 and out.is_contiguous() and out.numel() == storage.numel()):
            out = out.clone()  # a view of part of a shared storage: own its memory
        self.keys[id(out)] = self.keys[id(storage)]
        return out


@dataclass
class ScriptArchive:
    """The module tree of a TorchScript file and where each tensor's storage came from."""

    root: ScriptObject
    storage_key: dict[int, str]  # id(tensor) -> key of its storage (data/<key>)

    def key_of(self, tensor: torch.Tensor) -> int:
        return int(self.storage_key[id(tensor)])


def read_script_archive(path: Path) -> ScriptArchive:
    """Unpickle a TorchScript file's module tree with its tensors, running none of its code."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ScriptArchiveError(f"{path} is not a TorchScript archive (not a zip file: {exc})") from None
    with archive:
        names = archive.namelist()
        if len(names) > MAX_ENTRIES:
            raise ScriptArchiveError(f"{path} has {len(names)} entries; a weights archive has far fewer")
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ScriptArchiveError(f"{path} is not a TorchScript archive (no single <name>/data.pkl)")
        root = pickles[0].split("/", 1)[0]
        info = archive.getinfo(pickles[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise ScriptArchiveError(f"{path}: {pickles[0]} is {info.file_size} bytes, over the "
                                     f"{MAX_PICKLE_BYTES}-byte limit for a module tree")
        unpickler = _Unpickler(archive.read(info), archive, root, path)
        try:
            tree = unpickler.load()
        except ScriptArchiveError:
            raise
        except Exception as exc:  # truncated or malformed pickles fail in many ways
            raise unpickler.fail(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(tree, ScriptObject):
        raise ScriptArchiveError(f"{path}: data.pkl does not hold a TorchScript module")
    return ScriptArchive(tree, unpickler.keys)


def script_objects(node: Any) -> Iterator[ScriptObject]:
    """Every ScriptObject of the tree, depth first, attributes in their stored order."""
    if isinstance(node, ScriptObject):
        yield node
        node = node.state
    if isinstance(node, dict):
        for value in node.values():
            yield from script_objects(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from script_objects(value)
