"""Test support: a real pix2pix trained briefly on real tiles, for the web app's tests.

Not a test module. The model is the project's pix2pix (U-Net 128, RGB output, 1/16 of the
reference width) trained for a few dozen steps on real NYSDOP erie_2021 z18 tiles (their luma
-> their colours), through the project's own training loop. It is far from converged: the
tests use it to check the app's plumbing and that colour comes out, not colour quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import Params, parse_params
from pipeline.datasets.storage import DatasetInfo, write_info, write_split
from pipeline.geo.pixels import luma
from pipeline.geo.tiles import TILE_SIZE
from tests.conftest import ROOT
from tests.imagery import ERIE_Z18, cut_tiles, render_mosaic

ZOOM = 18
NX, NY = 3, 2


def train_app_model(folder: Path, steps: int = 30, lr: float = 0.002) -> Path:
    """Train and return folder/runs/app_p2p/model.pt."""
    import torch

    from pipeline.training.loop import train
    from pipeline.training.plan import plan_run

    x0, y0 = ERIE_Z18.x - 1, ERIE_Z18.y
    tiles = cut_tiles(render_mosaic("erie_2021", ZOOM, x0, y0, NX, NY), ZOOM, x0, y0)
    order = sorted(tiles)
    root = folder / "data" / "datasets" / "real"
    splits = {"train": order[:-1], "val": order[-1:]}
    for split, ids in splits.items():
        pairs = [np.dstack([luma(tiles[t][..., :3]), tiles[t][..., :3]]) for t in ids]
        write_split(root, split, np.stack(pairs))
    write_info(root, DatasetInfo(name="real", input_kind="gray", input_layer="erie_2021 (luma)",
                                 target_layer="erie_2021", synthetic_input=False, tile_size=TILE_SIZE,
                                 zoom=ZOOM, luma="rec601", counts={k: len(v) for k, v in splits.items()}))
    params = parse_params({
        "sources": {"sample": {"kind": "sample"}},
        "aois": {"a": {"path": "aoi/none.shp"}},
        "fetch": {"erie": {"source": "sample", "layer": "erie_2021", "aoi": "a", "zoom": ZOOM}},
        "datasets": {"real": {"input": "gray", "target": "erie"}},
        "train": {"preset": "t", "seed": 0, "val_every": steps, "checkpoint_every": steps,
                  "num_val_samples": 1, "device": "cpu",
                  "presets": {"t": {"crop_size": 128, "load_size": 256, "width_scale": 0.0625,
                                    "steps": steps, "decay_steps": steps // 2, "unet": "unet_128"}}},
        "ablations": {"app_p2p": {"model": "pix2pix", "dataset": "real", "lr": lr}},
    })
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(folder)
            train(plan_run("app_p2p", params), progress=False)
    finally:
        torch.set_num_threads(threads)
    return folder / "runs" / "app_p2p" / "model.pt"


def app_params(model: Path, data_dir: Path, **app: object) -> Params:
    """The repository's params.yaml with one small test view (the erie village at z18: the
    SYNTHETIC film layer against erie_2021) colourised by `model`."""
    import yaml

    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    # Absolute paths: module-scoped fixtures may run before the tests' chdir to the repository.
    data["sample"]["data_dir"] = str(ROOT / data["sample"]["data_dir"])
    for aoi in data["aois"].values():
        aoi["path"] = str(ROOT / aoi["path"])
    data["app"] = {
        "model": str(model), "data_dir": str(data_dir), "port": 0, "batch_wait_ms": 100,
        "export_max_tiles": 12, "upload": {"max_bytes": 2_000_000, "max_pixels": 1_000_000},
        "views": {"erie": {"title": "Erie village (test)", "aoi": "erie_village", "zoom": ZOOM,
                           "historic": {"source": "sample", "layer": "erie_2011_film"},
                           "modern": {"source": "sample", "layer": "erie_2021"}}},
        **app,
    }
    return parse_params(data)


def derived_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the sample's film layer and cached mosaics go: pytest's cache when there is one
    (shared with the WMTS tests; keyed by parameters and sources, so reuse is safe)."""
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("luminescence-derived")) if cache else tmp_path_factory.mktemp("derived")


def chroma(rgb: np.ndarray) -> float:
    """Mean max(R, G, B) - min(R, G, B): 0 for any gray image."""
    rgb = rgb[..., :3].astype(np.int16)
    return float((rgb.max(axis=-1) - rgb.min(axis=-1)).mean())


def instance_norm_model(folder: Path) -> Path:
    """An untrained pix2pix with instance norms (the release model's kind of normalisation), for
    the tests of area statistics: its colours are arbitrary, its normalisation is what counts."""
    import torch

    from models.registry import get_model_class
    from pipeline.training.checkpoint import save_model_file

    cls = get_model_class("pix2pix")
    torch.manual_seed(0)
    opts = cls.Options.model_validate({"netG": "unet_128", "ngf": 8, "ndf": 4, "norm": "instance"})
    model = cls(opts, torch.device("cpu"))
    path = Path(folder) / "instance_model.pt"
    save_model_file(path, {"ablation": "instance_test", "model": "pix2pix",
                           "options": opts.model_dump(mode="json"), "identity_hash": "test", "step": 0,
                           "dataset": {"name": "none"},
                           "nets": {k: n.state_dict() for k, n in model.nets.items()}})
    return path
