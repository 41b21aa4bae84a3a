"""Shared fixtures. Tests run from the repository root with the bundled sample."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def pytest_configure(config: pytest.Config) -> None:
    # The rendering module ignores this warning process-wide (pipeline/server/rendering.py: a
    # side effect of rasterio's non-thread-safe warnings.catch_warnings during concurrent warps,
    # tiles correct). pytest restores its warning filters after each test, so a filter added
    # when that module is first imported inside a test is lost after it, and the race let 2-8
    # of these through in different runs. The same filter, applied by pytest to every test:
    config.addinivalue_line("filterwarnings", "ignore:Dataset has no geotransform:"
                            "rasterio.errors.NotGeoreferencedWarning:rasterio.warp")


@pytest.fixture(autouse=True)
def _run_from_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread: tiny convolutions on a busy 2-core machine thrash with two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def quiet_cpu(one_thread: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One torch thread and a working directory outside the repository (DVCLive then
    skips opening the DVC repo)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture()
def datasets(tmp_path: Path) -> Path:
    """A datasets folder holding the tiny paired dataset `tiny` (tests/tiny_gan.py)."""
    from tests.tiny_gan import write_tiny_dataset

    root = tmp_path / "datasets"
    write_tiny_dataset(root / "tiny")
    return root


@pytest.fixture(scope="session")
def app_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real pix2pix trained briefly on real erie_2021 tiles (tests/app_model.py)."""
    from tests.app_model import train_app_model

    return train_app_model(tmp_path_factory.mktemp("app_model"))


@pytest.fixture(scope="session")
def instance_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained pix2pix with instance norms (tests/app_model.py)."""
    from tests.app_model import instance_norm_model

    return instance_norm_model(tmp_path_factory.mktemp("instance_model"))
