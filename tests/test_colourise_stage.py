"""The colourise stage converts colour input tiles to gray exactly as the align stage made the
training data (params.yaml align.luma), not with the command line's default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml


def _write_params(tmp: Path, luma: str) -> None:
    data = {
        "sources": {"sample": {"kind": "sample"}},
        "aois": {"a": {"path": "aoi/none.shp"}},
        "fetch": {"area": {"source": "sample", "layer": "erie_2021", "aoi": "a", "zoom": 18}},
        "align": {"luma": luma},
        "datasets": {"d": {"input": "gray", "target": "area"}},
        "train": {"presets": {"t": {"crop_size": 16, "load_size": 16, "width_scale": 1, "steps": 1}},
                  "preset": "t"},
        "ablations": {"m": {"model": "pix2pix", "dataset": "d"}},
        "colourise": {"model": "runs/m/model.pt", "store": "area"},
    }
    (tmp / "params.yaml").write_text(yaml.safe_dump(data))


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import pipeline.stages.colourise as stage

    seen: list[dict[str, Any]] = []

    def fake_run(*args: Any, **kwargs: Any) -> str:
        seen.append(kwargs)
        return "ok"

    monkeypatch.setattr(stage, "run", fake_run)
    return seen


@pytest.mark.parametrize("luma", ["rec601", "rec709"])
def test_stage_uses_the_align_luma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   calls: list[dict[str, Any]], luma: str) -> None:
    from pipeline.stages.colourise import main

    monkeypatch.chdir(tmp_path)
    _write_params(tmp_path, luma)
    assert main(["--stage", "--no-progress"]) == 0
    assert calls[-1]["luma"] == luma


def test_stage_refuses_a_luma_other_than_the_training_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          calls: list[dict[str, Any]],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.stages.colourise import main

    monkeypatch.chdir(tmp_path)
    _write_params(tmp_path, "rec709")
    with pytest.raises(SystemExit) as exit_info:
        main(["--stage", "--luma", "rec601"])
    assert exit_info.value.code == 2 and not calls
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "align.luma" in err[0]


def test_command_line_default_stays_rec601(tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    from pipeline.stages.colourise import main

    assert main(["--model", "m.pt", "--store", "s.mbtiles", "--out", str(tmp_path / "o.mbtiles")]) == 0
    assert calls[-1]["luma"] == "rec601"


def test_preview_shows_the_real_colour_photo_beside_input_and_model_colours(tmp_path: Path) -> None:
    """A colour source (converted to gray for the model) gets a third panel: the real photo."""
    from PIL import Image

    from pipeline.geo.tilestore import TileStore
    from pipeline.inference.colourise import write_preview
    from tests.imagery import ERIE_Z18, cut_tiles, make_store, render_mosaic, to_records

    x, y = ERIE_Z18.x, ERIE_Z18.y
    colour = cut_tiles(render_mosaic("erie_2021", 18, x, y, 2, 1), 18, x, y)
    gray = {t: np.dstack([a[..., :3].mean(axis=2, keepdims=True).repeat(3, axis=2).astype(np.uint8),
                          a[..., 3]]) for t, a in colour.items()}
    widths = {}
    for name, tiles in (("colour", colour), ("gray", gray)):
        src = make_store(tmp_path / f"{name}.mbtiles", to_records(tiles), layer=name, zoom=18)
        out = make_store(tmp_path / f"{name}_out.mbtiles", to_records(colour), layer="out", zoom=18)
        with TileStore(src, readonly=True) as s, TileStore(out, readonly=True) as o:
            png = write_preview(s, o, tmp_path / f"{name}.png", luma="rec601",
                                model_label="the release model", max_px=10_000)
        widths[name] = Image.open(png).width
    assert widths["colour"] == 3 * 512 + 2 * 16  # gray input | model colours | real photo
    assert widths["gray"] == 2 * 512 + 16  # no real colours to show for a gray source


@pytest.mark.parametrize("option", [["--margin", "40"], ["--norm-stats", "model"],
                                    ["--norm-stats-windows", "8"], ["--model", "m.pt"],
                                    ["--out", "o.mbtiles"]])
def test_stage_refuses_options_that_params_yaml_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     calls: list[dict[str, Any]], option: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """With --stage, params.yaml decides: an option it would replace is an error, not ignored."""
    from pipeline.stages.colourise import main

    monkeypatch.chdir(tmp_path)
    _write_params(tmp_path, "rec601")
    with pytest.raises(SystemExit) as exit_info:
        main(["--stage", *option])
    assert exit_info.value.code == 2 and not calls
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option[0] in err[0] and "params.yaml `colourise." in err[0]


def test_norm_stats_windows_needs_area_statistics(tmp_path: Path, calls: list[dict[str, Any]],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.stages.colourise import main

    base = ["--model", "m.pt", "--store", "s.mbtiles", "--out", str(tmp_path / "o.mbtiles")]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--norm-stats", "model", "--norm-stats-windows", "8"])
    assert exit_info.value.code == 2 and not calls
    assert "--norm-stats-windows applies to --norm-stats area" in capsys.readouterr().err
    assert main([*base, "--norm-stats-windows", "8"]) == 0
    assert calls[-1]["norm_stats_windows"] == 8
    assert main([*base, "--norm-stats", "model"]) == 0
    assert calls[-1]["norm_stats_windows"] is None
    assert main(base) == 0
    assert calls[-1]["norm_stats_windows"] == 64
