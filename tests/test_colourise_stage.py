"""The colourise stage converts colour input tiles to gray exactly as the align stage made the
training data (params.yaml align.luma), not with the command line's default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
