"""params.yaml is validated once; errors name the key and the closest valid one."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from pipeline.core.config import load_params, parse_params
from pipeline.core.errors import ConfigError


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    with open("params.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _error(raw: dict[str, Any], edit) -> str:
    data = copy.deepcopy(raw)
    edit(data)
    with pytest.raises(ConfigError) as info:
        parse_params(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bundled_params_load() -> None:
    params = load_params()
    assert params.sources["sample"].kind == "sample"
    assert all(f.source in params.sources for f in params.fetch.values())


def test_misspelt_key_names_key_and_suggestion(raw: dict[str, Any]) -> None:
    msg = _error(raw, lambda d: d["harvest"].update(concurency=3))
    assert "`harvest.concurency` is not a valid key" in msg
    assert "`harvest.concurrency`" in msg


def test_unknown_top_level_section(raw: dict[str, Any]) -> None:
    msg = _error(raw, lambda d: d.update(harvst={}))
    assert "`harvst`" in msg and "`harvest`" in msg


def test_nested_unknown_key_inside_named_entry(raw: dict[str, Any]) -> None:
    key = next(iter(raw["fetch"]))
    msg = _error(raw, lambda d: d["fetch"][key].update(zom=3))
    assert f"`fetch.{key}.zom`" in msg and f"`fetch.{key}.zoom`" in msg


def test_wrong_type_names_expected_type(raw: dict[str, Any]) -> None:
    msg = _error(raw, lambda d: d["harvest"].update(concurrency="four"))
    assert "`harvest.concurrency` must be an integer" in msg


def test_bad_choice_lists_choices(raw: dict[str, Any]) -> None:
    msg = _error(raw, lambda d: d["align"].update(resampling="bicubic"))
    assert "`align.resampling` must be one of" in msg and "'bilinear'" in msg


def test_dangling_reference_suggests_name(raw: dict[str, Any]) -> None:
    key = next(iter(raw["fetch"]))
    aoi = raw["fetch"][key]["aoi"]
    msg = _error(raw, lambda d: d["fetch"][key].update(aoi=aoi[:-1]))
    assert f"did you mean '{aoi}'" in msg


def test_split_fractions_must_sum_to_one(raw: dict[str, Any]) -> None:
    msg = _error(raw, lambda d: d["align"]["splits"].update(train=0.9))
    assert "align.splits" in msg and "sum to 1" in msg


def test_unknown_preset(raw: dict[str, Any]) -> None:
    msg = _error(raw, lambda d: d["train"].update(preset="fulll"))
    assert "did you mean 'full'" in msg


def test_invalid_yaml_is_one_line(tmp_path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("harvest: [1, 2\nfetch: {}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_app_views_are_validated(raw: dict[str, Any]) -> None:
    params = load_params()
    assert params.app is not None and set(params.app.views) >= {"erie_film", "columbia_gray"}
    assert params.app.views["columbia_gray"].historic.gray
    msg = _error(raw, lambda d: d["app"]["views"]["erie_film"]["historic"].update(source="nowhere"))
    assert "`app.views.erie_film.historic.source`" in msg and "nowhere" in msg
    msg = _error(raw, lambda d: d["app"]["views"]["erie_film"].update(aoi="erie_vilage"))
    assert "`app.views.erie_film.aoi`" in msg and "did you mean 'erie_village'" in msg
    msg = _error(raw, lambda d: d["app"]["views"]["erie_film"]["modern"].update(url="http://x"))
    assert "`app.views.erie_film.modern.url` is not a valid key" in msg
    msg = _error(raw, lambda d: d["app"]["views"].update({"../x": d["app"]["views"]["erie_film"]}))
    assert "view name '../x'" in msg
    msg = _error(raw, lambda d: d["app"]["upload"].update(max_pixels=10))
    assert "`app.upload.max_pixels`" in msg


def test_model_files_and_trained_models_are_checked(raw: dict[str, Any]) -> None:
    msg = _error(raw, lambda d: d["colourise"].update(model="/elsewhere/model.pt"))
    assert "`colourise.model`" in msg and "release/model.pt" in msg
    msg = _error(raw, lambda d: d["colourise"].update(model="../model.pt"))
    assert "`colourise.model`" in msg
    msg = _error(raw, lambda d: d["trained_models"]["release"].update(dataset="grey"))
    assert "`trained_models.release.dataset`" in msg and "did you mean 'gray'" in msg
    assert load_params().colourise.model == "release/model.pt"  # the release model by default
