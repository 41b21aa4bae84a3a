"""Evaluate, baseline, report and colourise stages on real sample tiles and a real (briefly
trained) pix2pix. The model is trained for a few steps only: the tests check the plumbing
and the numbers' provenance, not colourisation quality."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from pipeline.core.config import parse_params
from pipeline.datasets.pairing import luma
from pipeline.datasets.storage import DatasetInfo, write_info, write_split
from pipeline.geo.tiles import TILE_SIZE, TileId, tile_bounds_3857
from tests.imagery import ERIE_Z18, cut_tiles, make_store, render_mosaic, to_records

NX, NY = 3, 2  # six real z18 tiles of the erie village


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiles() -> dict[TileId, np.ndarray]:
    x0, y0 = ERIE_Z18.x - 1, ERIE_Z18.y
    return cut_tiles(render_mosaic("erie_2021", 18, x0, y0, NX, NY), 18, x0, y0)


def _params(tmp: Path, ablations: dict, baselines: dict | None = None) -> dict:
    data = {
        "sources": {"sample": {"kind": "sample"}},
        "aois": {"a": {"path": "aoi/none.shp"}},
        "fetch": {"erie": {"source": "sample", "layer": "erie_2021", "aoi": "a", "zoom": 18},
                  "copy": {"source": "sample", "layer": "erie_2021", "aoi": "a", "zoom": 18}},
        "datasets": {"real": {"input": "gray", "target": "erie"}},
        "train": {"preset": "t", "seed": 0, "val_every": 2, "checkpoint_every": 2, "num_val_samples": 1,
                  "device": "cpu",
                  "presets": {"t": {"crop_size": 128, "load_size": 256, "width_scale": 0.0625,
                                    "steps": 2, "decay_steps": 1, "unet": "unet_128"}}},
        "ablations": ablations,
        "baselines": baselines or {},
        "evaluate": {"batch_size": 4},
        "colourise": {"ablation": next(iter(ablations)), "store": "erie"},
    }
    (tmp / "params.yaml").write_text(yaml.safe_dump(data))
    return data


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/datasets/real (real tiles: 2 train, 1 val, 3 test) and data/tiles/{erie,copy}.mbtiles."""
    tmp = tmp_path_factory.mktemp("stages")
    tiles = _tiles()
    order = sorted(tiles)
    splits = {"train": order[:2], "val": order[2:3], "test": order[3:]}
    root = tmp / "data" / "datasets" / "real"
    rows = []
    for split, ids in splits.items():
        arr = np.stack([np.dstack([luma(tiles[t][..., :3]), tiles[t][..., :3]]) for t in ids])
        write_split(root, split, arr)
        rows += [{"split": split, "index": i, "z": t.z, "x": t.x, "y": t.y} for i, t in enumerate(ids)]
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_info(root, DatasetInfo(name="real", input_kind="gray", input_layer="erie_2021 (luma)",
                                 target_layer="erie_2021", synthetic_input=False, tile_size=TILE_SIZE,
                                 zoom=18, luma="rec601", counts={k: len(v) for k, v in splits.items()}))
    records = to_records(tiles)
    for key in ("erie", "copy"):
        make_store(tmp / "data" / "tiles" / f"{key}.mbtiles", records, layer="erie_2021", zoom=18)
    return tmp


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:
    """Two real pix2pix ablations (RGB and Lab), trained 3 steps each."""
    from pipeline.training.loop import plan_run, train

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        data = _params(workdir, {"p2p_rgb": {"model": "pix2pix", "dataset": "real"},
                                 "p2p_lab": {"model": "pix2pix", "dataset": "real", "color_space": "lab"}})
        params = parse_params(data)
        for name in params.ablations:
            train(plan_run(name, params), progress=False)
    return workdir


def test_evaluate_writes_metrics_with_provenance(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages.evaluate import evaluate

    monkeypatch.chdir(trained)
    monkeypatch.delenv("LUMINESCENCE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(trained / "no-torch-home"))
    params = parse_params(_params(trained, {"p2p_rgb": {"model": "pix2pix", "dataset": "real"},
                                            "p2p_lab": {"model": "pix2pix", "dataset": "real",
                                                        "color_space": "lab"}}))
    record = evaluate("p2p_rgb", params, progress=False)
    saved = json.loads((trained / "metrics" / "p2p_rgb.json").read_text())
    assert saved == json.loads(json.dumps(record))
    m = saved["metrics"]
    assert saved["n"] == 3 and m["n_images"] == 3 and saved["dataset"] == "real"
    assert saved["synthetic_input"] is False and saved["model"] == "pix2pix"
    assert m["extractors"] == "efficientnet_lite0" and len(m["efficientnet_lite0_weights_sha256"]) == 64
    assert "224" in m["efficientnet_lite0_resize"]
    # Without the Inception weights the FID keys are left out, never filled with something else.
    assert not {"fid", "is_mean", "kid_mean"} & set(m)
    assert m["fd_efficientnet_lite0"] > 0 and 0 <= m["ssim"] <= 1
    assert (trained / "reports" / "samples" / "p2p_rgb.png").stat().st_size > 1000


def test_baselines_floor_and_identical_layer(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The input-as-output floor has real colour error; a layer equal to the targets has none."""
    from pipeline.stages.evaluate import evaluate

    monkeypatch.chdir(trained)
    params = parse_params(_params(trained, {"p2p_rgb": {"model": "pix2pix", "dataset": "real"}},
                                  {"floor": {"kind": "input", "dataset": "real"},
                                   "same": {"kind": "layer", "dataset": "real", "layer": "copy"}}))
    floor = evaluate("floor", params, baseline=True, progress=False)["metrics"]
    same = evaluate("same", params, baseline=True, progress=False)
    assert floor["delta_e2000_mean"] > 1.0 and floor["colourfulness_output"] == pytest.approx(0, abs=1e-9)
    assert same["metrics"]["delta_e2000_mean"] == pytest.approx(0, abs=1e-9)
    assert same["metrics"]["fd_efficientnet_lite0"] == pytest.approx(0, abs=1e-6)
    assert same["test_tiles_covered"] == 3 and (trained / "metrics" / "baseline_same.json").exists()


def test_report_tables_conclusions_and_no_lingering_ablations(trained: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.report import write_report

    monkeypatch.chdir(trained)
    both = {"p2p_rgb": {"model": "pix2pix", "dataset": "real"},
            "p2p_lab": {"model": "pix2pix", "dataset": "real", "color_space": "lab"}}
    params = parse_params(_params(trained, both, {"floor": {"kind": "input", "dataset": "real"}}))
    for name in both:
        evaluate(name, params, progress=False)
    evaluate("floor", params, baseline=True, progress=False)
    text = write_report(params).read_text()
    assert "## pix2pix" in text and "p2p_lab (color_space=lab)" in text
    assert "Lab beat RGB for pix2pix on gray input: **" in text
    rgb = json.loads((trained / "metrics" / "p2p_rgb.json").read_text())["metrics"]["fd_efficientnet_lite0"]
    assert f"{rgb:.2f}" in text  # the table and conclusion quote the real numbers
    assert (trained / "reports" / "figures" / "bar_fd_efficientnet_lite0.png").exists()
    assert (trained / "reports" / "figures" / "curves_p2p_rgb.png").exists()

    only_rgb = parse_params(_params(trained, {"p2p_rgb": both["p2p_rgb"]}))
    text = write_report(only_rgb).read_text()
    assert "p2p_lab" not in text  # its metric file is still on disk but the ablation is gone
    assert not (trained / "reports" / "figures" / "curves_p2p_lab.png").exists()


def test_colourise_is_georeferenced_and_uses_neighbour_context(trained: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.geo.tilestore import TileStore
    from pipeline.inference.colourise import GrayTiles, context_window
    from pipeline.stages.colourise import main

    monkeypatch.chdir(trained)
    _params(trained, {"p2p_rgb": {"model": "pix2pix", "dataset": "real"}})
    with TileStore(trained / "data" / "tiles" / "erie.mbtiles", readonly=True) as store:
        tiles = GrayTiles(store, "rec601")
        t = TileId(18, ERIE_Z18.x, ERIE_Z18.y)  # the middle column: neighbours on both sides
        window = context_window(tiles, t, 64)
        x0, y0 = ERIE_Z18.x - 1, ERIE_Z18.y
        full = luma(render_mosaic("erie_2021", 18, x0, y0, NX, NY)[..., :3])
        # Real neighbour pixels left and right; the row above is outside the store: mirrored.
        assert np.array_equal(window[64:320, :], full[0:256, 256 - 64:512 + 64])
        assert np.array_equal(window[63, 64:320], window[64, 64:320])
    assert main(["--stage", "--no-progress"]) == 0
    tif = trained / "data" / "colourised" / "erie.tif"
    with rasterio.open(tif) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.count == 4
        left, _, _, top = tile_bounds_3857(TileId(18, x0, y0))
        _, bottom, right, _ = tile_bounds_3857(TileId(18, x0 + NX - 1, y0 + NY - 1))
        assert ds.bounds.left == pytest.approx(left, abs=1e-6)
        assert ds.bounds.top == pytest.approx(top, abs=1e-6)
        assert ds.bounds.right == pytest.approx(right, abs=1e-6)
        assert ds.bounds.bottom == pytest.approx(bottom, abs=1e-6)
        assert "COLOURISED" in ds.tags()["description"]
        assert ds.overviews(1) and ds.block_shapes[0] == (256, 256)
    from pipeline.geo.cog import validate_cog

    assert validate_cog(tif) == []  # a valid Cloud-Optimized GeoTIFF (rio-cogeo)
    with TileStore(trained / "data" / "colourised" / "erie.mbtiles", readonly=True) as out:
        assert out.complete and len(out.tiles()) == NX * NY
    assert (trained / "reports" / "colourised" / "erie.png").exists()
