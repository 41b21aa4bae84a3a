"""The align stage end to end on small real-image stores, and its one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.core.config import SplitConfig, parse_params
from pipeline.datasets import build
from pipeline.datasets.splits import GUARD, SplitPlan
from pipeline.datasets.storage import SPLITS, open_split, read_info
from pipeline.geo.pixels import luma
from pipeline.geo.registration import estimate_offset
from pipeline.geo.tiles import TileId
from pipeline.geo.tilestore import TileRecord, TileStatus
from pipeline.stages import align
from tests.imagery import ERIE_Z18, cut_tiles, make_store, params_for, png_bytes, render_mosaic, to_records

N = 4
X0, Y0 = ERIE_Z18.x - 1, ERIE_Z18.y - 1
SHIFT = (3.0, -2.0)  # SYNTHETIC misregistration of the "historic" test store, in pixels


def _seed_with_every_split(block_size: int) -> int:
    """A split seed that gives the 4x4 test area blocks of all three splits."""
    tiles = [TileId(18, X0 + i, Y0 + j) for i in range(N) for j in range(N)]
    for seed in range(1000):
        plan = SplitPlan(SplitConfig(block_size=block_size, guard_band=0, seed=seed))
        if {plan.split(t) for t in tiles} == set(SPLITS):
            return seed
    raise AssertionError("no seed")


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real NYSDOP 2021 imagery at z18 (target) and the same imagery shifted by SHIFT (input)."""
    root = tmp_path_factory.mktemp("tiles")
    target = render_mosaic("erie_2021", 18, X0, Y0, N, N)
    shifted = render_mosaic("erie_2021", 18, X0, Y0, N, N, SHIFT)
    make_store(root / "t-modern.mbtiles", to_records(cut_tiles(target, 18, X0, Y0)), layer="erie_2021",
               zoom=18)
    make_store(root / "t-hist.mbtiles", to_records(cut_tiles(shifted, 18, X0, Y0)), layer="erie_2021_shifted",
               zoom=18, synthetic=True)
    return root


def _params(**align_cfg: object) -> dict:
    return params_for({"gray": {"input": "gray", "target": "t-modern"},
                       "historic": {"input": "historic", "historic": "t-hist", "target": "t-modern"}},
                      ["t-modern", "t-hist"], **align_cfg)


@pytest.fixture(scope="module")
def historic_dataset(tiles_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("datasets")
    splits = {"block_size": 2, "guard_band": 0, "seed": _seed_with_every_split(2)}
    params = parse_params(_params(splits=splits, contact_sheet_pairs=2))
    summary = build.build_dataset("historic", params, tiles_dir=tiles_dir, out_dir=out, progress=False)
    return out / "historic", summary


def test_end_to_end_writes_every_output(historic_dataset: tuple[Path, dict]) -> None:
    root, summary = historic_dataset
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    assert rows and list(rows[0]) == build.MANIFEST_COLUMNS
    total = 0
    for split in SPLITS:
        arr = open_split(root, split)
        mine = [r for r in rows if r["split"] == split]
        assert arr.dtype == np.uint8 and arr.shape[1:] == (256, 256, 4)
        assert len(mine) == len(arr) == summary["counts"][split] > 0
        assert [int(r["index"]) for r in mine] == list(range(len(arr)))
        total += len(arr)
        aligned = sorted((root / "aligned" / split).glob("*.png"))
        assert len(aligned) == len(arr)
        assert len(list((root / "unpaired" / f"{split}A").glob("*.png"))) == len(arr)
        assert len(list((root / "unpaired" / f"{split}B").glob("*.png"))) == len(arr)
        with Image.open(aligned[0]) as img:
            assert img.size == (512, 256) and img.mode == "RGB"
        # Row i of the manifest is sample i of the array: its B half is that sample's target.
        first = mine[0]
        with Image.open(root / "aligned" / split / f"{first['z']}_{first['x']}_{first['y']}.png") as img:
            ab = np.asarray(img)
        assert np.array_equal(ab[:, 256:], arr[0][..., 1:]) and np.array_equal(ab[:, :256, 0], arr[0][..., 0])
    assert total == len(rows) == summary["pairs"] == N * N
    for name in ("offsets.png", "split_map.png", "contact_sheet.png"):
        with Image.open(root / "figures" / name) as img:
            assert img.size[0] > 200
    info = read_info(root)
    assert info.synthetic_input and info.input_kind == "historic" and info.counts == summary["counts"]
    on_disk = json.loads((root / "summary.json").read_text())
    assert on_disk["luma_formula"].startswith("Y = 0.299 R + 0.587 G + 0.114 B")
    assert on_disk["synthetic_input"] is True and on_disk["counts"] == summary["counts"]
    assert not list(root.parent.glob(".historic*"))  # no temporary or old folder left


def test_offsets_are_estimated_applied_and_recorded(historic_dataset: tuple[Path, dict]) -> None:
    root, summary = historic_dataset
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    reliable = [r for r in rows if r["reliable"] == "True"]
    assert len(reliable) >= len(rows) // 2
    for r in reliable:
        assert float(r["dx_px"]) == pytest.approx(SHIFT[0], abs=0.5)
        assert float(r["dy_px"]) == pytest.approx(SHIFT[1], abs=0.5)
        assert r["applied"] == "True"
        assert float(r["dx_m"]) == pytest.approx(float(r["dx_px"]) * summary["metres_per_px"], rel=0.01)
    assert summary["offsets"]["median_px"] == pytest.approx(np.hypot(*SHIFT), abs=0.5)
    # The stored input is back in place: no offset left against the target's luma.
    train = open_split(root, "train")
    index = next(int(r["index"]) for r in reliable if r["split"] == "train")
    residual = estimate_offset(luma(train[index][..., 1:]), train[index][..., 0], max_shift_px=12)
    assert residual.magnitude < 0.3


def test_gray_dataset_is_the_targets_luma_and_honours_the_guard_band(tiles_dir: Path, tmp_path: Path) -> None:
    splits = {"block_size": 3, "guard_band": 1, "seed": 0}
    params = parse_params(_params(splits=splits, export_layouts=False))
    summary = build.build_dataset("gray", params, tiles_dir=tiles_dir, out_dir=tmp_path, progress=False)
    plan = SplitPlan(SplitConfig(**splits))
    tiles = [TileId(18, X0 + i, Y0 + j) for i in range(N) for j in range(N)]
    guard = sum(plan.assign(t) == GUARD for t in tiles)
    assert summary["dropped"].get("guard_band", 0) == guard
    assert summary["pairs"] == N * N - guard
    assert summary["offsets"]["estimated"] == 0 and "zero by construction" in summary["summary"]
    assert not (tmp_path / "gray" / "aligned").exists()
    for split in SPLITS:
        arr = open_split(tmp_path / "gray", split)
        for sample in arr:
            assert np.array_equal(sample[..., 0], luma(sample[..., 1:]))
    assert read_info(tmp_path / "gray").synthetic_input is False


def test_a_failed_run_keeps_the_previous_dataset(tiles_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    params = parse_params(_params(export_layouts=True, splits={"guard_band": 0}))
    build.build_dataset("gray", params, tiles_dir=tiles_dir, out_dir=tmp_path, progress=False)
    before = (tmp_path / "gray" / "dataset.json").read_bytes()

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(build, "write_layouts", boom)
    with pytest.raises(OSError):
        build.build_dataset("gray", params, tiles_dir=tiles_dir, out_dir=tmp_path, progress=False)
    assert (tmp_path / "gray" / "dataset.json").read_bytes() == before
    assert len(open_split(tmp_path / "gray", "train")) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gray"]


# --------------------------------------------------------------------------- one-line errors
def _flat_records(tiles: list[TileId], alpha: int = 255) -> list[TileRecord]:
    rgba = np.zeros((256, 256, 4), np.uint8)
    rgba[..., :3] = np.arange(256, dtype=np.uint8)[None, :, None]  # a ramp, so nothing is empty
    rgba[..., 3] = 255
    rgba[:, :128, 3] = alpha
    data = png_bytes(rgba)
    return [TileRecord(t, TileStatus.OK, data) for t in tiles]


def _area(x0: int, y0: int, n: int = 3, z: int = 18) -> list[TileId]:
    return [TileId(z, x0 + i, y0 + j) for i in range(n) for j in range(n)]


def _cli(tmp_path: Path, dataset: str, params: dict, capsys: pytest.CaptureFixture[str]) -> str:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exc:
        align.main([dataset, "--params", str(tmp_path / "params.yaml"),
                    "--tiles-dir", str(tmp_path / "tiles"), "--out-dir", str(tmp_path / "datasets"),
                    "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "datasets" / dataset / "dataset.json").exists()
    return err


HIST = {"h": {"input": "historic", "historic": "a-hist", "target": "a-modern"}}


def test_missing_store_names_its_fetch_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "tiles" / "a-modern.mbtiles", _flat_records(_area(100, 100)), layer="m", zoom=18)
    err = _cli(tmp_path, "h", params_for(HIST, ["a-modern", "a-hist"]), capsys)
    assert "a-hist.mbtiles" in err and "dvc repro fetch@a-hist" in err


def test_incomplete_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "tiles" / "a-modern.mbtiles", _flat_records(_area(100, 100)), layer="m", zoom=18,
               complete=False)
    err = _cli(tmp_path, "h", params_for(HIST, ["a-modern", "a-hist"]), capsys)
    assert "incomplete" in err and "fetch@a-modern" in err


def test_stores_of_different_aois_without_overlap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "tiles" / "a-modern.mbtiles", _flat_records(_area(100, 100)), layer="m", zoom=18,
               aoi="north")
    make_store(tmp_path / "tiles" / "a-hist.mbtiles", _flat_records(_area(500, 500)), layer="h", zoom=18,
               aoi="south")
    err = _cli(tmp_path, "h", params_for(HIST, ["a-modern", "a-hist"]), capsys)
    assert "do not overlap" in err and "'north'" in err and "'south'" in err


def test_zoom_mismatch_without_resampling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "tiles" / "a-modern.mbtiles", _flat_records(_area(100, 100)), layer="m", zoom=18)
    make_store(tmp_path / "tiles" / "a-hist.mbtiles", _flat_records(_area(200, 200, 6, 19)), layer="h",
               zoom=19)
    err = _cli(tmp_path, "h", params_for(HIST, ["a-modern", "a-hist"], resampling="none"), capsys)
    assert "zoom 19" in err and "zoom 18" in err and "align.resampling" in err


def test_all_empty_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "tiles" / "a-modern.mbtiles", _flat_records(_area(100, 100)), layer="m", zoom=18)
    make_store(tmp_path / "tiles" / "a-hist.mbtiles",
               [TileRecord(t, TileStatus.EMPTY, reason="transparent") for t in _area(100, 100)],
               layer="old_photos", zoom=18)
    err = _cli(tmp_path, "h", params_for(HIST, ["a-modern", "a-hist"]), capsys)
    assert "no tiles with data" in err and "9 empty" in err and "old_photos" in err


def test_no_pairs_left_names_the_filter_and_the_param(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path / "tiles" / "a-modern.mbtiles", _flat_records(_area(100, 100), alpha=0), layer="m",
               zoom=18)
    params = params_for({"g": {"input": "gray", "target": "a-modern"}}, ["a-modern"],
                        splits={"guard_band": 0})
    err = _cli(tmp_path, "g", params, capsys)
    assert "no pairs left" in err and "9 nodata" in err and "align.max_nodata_fraction" in err


def test_unknown_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli(tmp_path, "hist", params_for(HIST, ["a-modern", "a-hist"]), capsys)
    assert "unknown dataset 'hist'" in err and "(known: h)" in err


def test_help_runs() -> None:
    with pytest.raises(SystemExit) as exc:
        align.parse_args(["--help"])
    assert exc.value.code == 0


# --------------------------------------------------------------------------- held-out area
HX0 = X0 + N + 1  # a 2 x 2 area of real erie_2021 tiles east of the training area, not touching it


@pytest.fixture(scope="module")
def heldout_tiles(tiles_dir: Path) -> Path:
    area = render_mosaic("erie_2021", 18, HX0, Y0, 2, 2)
    shifted = render_mosaic("erie_2021", 18, HX0, Y0, 2, 2, SHIFT)
    make_store(tiles_dir / "h-modern.mbtiles", to_records(cut_tiles(area, 18, HX0, Y0)), layer="erie_2021",
               zoom=18, aoi="elsewhere")
    make_store(tiles_dir / "h-hist.mbtiles", to_records(cut_tiles(shifted, 18, HX0, Y0)),
               layer="erie_2021_shifted", zoom=18, synthetic=True, aoi="elsewhere")
    # The training area's own tiles under another name: not a held-out area.
    target = render_mosaic("erie_2021", 18, X0, Y0, N, N)
    make_store(tiles_dir / "same-area.mbtiles", to_records(cut_tiles(target, 18, X0, Y0)), layer="erie_2021",
               zoom=18)
    return tiles_dir


def test_heldout_area_is_paired_like_the_dataset_and_kept_apart(heldout_tiles: Path, tmp_path: Path) -> None:
    datasets = {"historic": {"input": "historic", "historic": "t-hist", "target": "t-modern",
                             "heldout": {"target": "h-modern", "historic": "h-hist", "note": "elsewhere"}}}
    params = parse_params(params_for(datasets, ["t-modern", "t-hist", "h-modern", "h-hist"],
                                     splits={"block_size": 2, "guard_band": 0}))
    summary = build.build_dataset("historic", params, tiles_dir=heldout_tiles, out_dir=tmp_path,
                                  progress=False)
    root = tmp_path / "historic"
    heldout = open_split(root, "heldout")
    assert heldout.shape == (4, 256, 256, 4) and summary["heldout"]["count"] == 4
    rows = [r for r in csv.DictReader((root / "manifest.csv").open()) if r["split"] == "heldout"]
    assert [int(r["index"]) for r in rows] == [0, 1, 2, 3]
    assert {int(r["x"]) for r in rows} == {HX0, HX0 + 1}  # only the held-out area's tiles
    assert all(r["input_layer"] == "erie_2021_shifted" for r in rows)
    # Registered like the training pairs: the synthetic shift is found on the held-out tiles too.
    reliable = [r for r in rows if r["reliable"] == "True"]
    assert reliable and all(float(r["dx_px"]) == pytest.approx(SHIFT[0], abs=0.5) for r in reliable)
    info = read_info(root).heldout
    assert info is not None and info["count"] == 4 and info["synthetic_input"] is True
    assert info["note"] == "elsewhere" and info["zoom"] == 18 and info["aoi"] == "elsewhere"
    # Held-out pixels: luma of the held-out target store's tiles, nothing of the training area.
    area = cut_tiles(render_mosaic("erie_2021", 18, HX0, Y0, 2, 2), 18, HX0, Y0)
    first = TileId(18, int(rows[0]["x"]), int(rows[0]["y"]))
    assert np.array_equal(heldout[0][..., 1:], area[first][..., :3])


def test_heldout_area_overlapping_the_training_area_is_refused(heldout_tiles: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    datasets = {"gray": {"input": "gray", "target": "t-modern", "heldout": {"target": "same-area"}}}
    params = parse_params(params_for(datasets, ["t-modern", "same-area"]))
    with pytest.raises(build.AlignError, match=r"shares \d+ tiles with the training area"):
        build.build_dataset("gray", params, tiles_dir=heldout_tiles, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "gray").exists()


def test_heldout_reusing_a_training_store_is_a_config_error() -> None:
    from pipeline.core.errors import ConfigError

    datasets = {"gray": {"input": "gray", "target": "t-modern", "heldout": {"target": "t-modern"}}}
    with pytest.raises(ConfigError, match=r"datasets\.gray\.heldout"):
        parse_params(params_for(datasets, ["t-modern"]))
