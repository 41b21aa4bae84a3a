"""dvc.yaml is correct by construction: every module a stage runs is one of its deps, and the
stages' paths are the ones pipeline.core.paths defines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.core import paths
from tests.conftest import ROOT
from tests.stage_deps import Stage, import_closure, stages, uncovered_modules


@pytest.fixture(scope="module")
def dvc() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_command_names_a_stage_module(dvc: dict[str, Any]) -> None:
    found = {s.name: s.entry for s in stages(dvc)}
    assert set(found) == set(dvc["stages"]), "a stage whose cmd is not `python -m MODULE`"
    assert all(entry.startswith("pipeline.stages.") for entry in found.values())


@pytest.mark.parametrize("name", ["film", "fetch", "align", "train", "evaluate", "baseline", "report",
                                  "colourise", "release"])
def test_stage_deps_cover_every_module_the_stage_imports(dvc: dict[str, Any], name: str) -> None:
    stage = next(s for s in stages(dvc) if s.name == name)
    missing = uncovered_modules(ROOT, stage)
    assert not missing, (f"dvc.yaml stage {name!r} runs {missing} but none of its deps covers them: "
                         f"add their folder to the stage's deps")


def test_the_check_fails_when_a_needed_dep_is_removed(dvc: dict[str, Any]) -> None:
    train = next(s for s in stages(dvc) if s.name == "train")
    without_models = Stage(train.name, train.entry, tuple(d for d in train.deps if d != "models"))
    missing = uncovered_modules(ROOT, without_models)
    assert "models/registry.py" in missing and "models/gan.py" in missing


def test_lazy_imports_inside_functions_count(tmp_path: Path) -> None:
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pipeline import b\n    return b\n")
    (pkg / "b.py").write_text("from .c import X\n")
    (pkg / "c.py").write_text("X = 1\n")
    assert import_closure(tmp_path, "pipeline.a") == {Path("pipeline/__init__.py"), Path("pipeline/a.py"),
                                                      Path("pipeline/b.py"), Path("pipeline/c.py")}


def _outs(stage: dict[str, Any]) -> list[str]:
    body = stage.get("do", stage)
    return [next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics") for o in body.get(key, [])]


def test_stage_outputs_live_where_pipeline_core_paths_says(dvc: dict[str, Any]) -> None:
    s = dvc["stages"]
    assert _outs(s["fetch"]) == [paths.store_path("${key}").as_posix()]
    assert _outs(s["align"]) == [(paths.DATASETS_DIR / "${key}").as_posix()]
    assert {(paths.RUNS_DIR / "${key}" / f).as_posix() for f in ("checkpoint.pt", "model.pt", "options.json",
                                                                 "samples")} == set(_outs(s["train"]))
    assert (paths.METRICS_DIR / "${key}.json").as_posix() in _outs(s["evaluate"])
    assert (paths.METRICS_DIR / "baseline_${key}.json").as_posix() in _outs(s["baseline"])
    assert (paths.REPORTS_DIR / "summary.md").as_posix() in _outs(s["report"])
    assert (paths.COLOURISED_DIR / "${colourise.store}.mbtiles").as_posix() in _outs(s["colourise"])
    for name in ("evaluate", "baseline"):
        for dep in s[name]["do"]["deps"]:
            if dep.startswith("data/datasets"):
                assert dep.startswith(paths.DATASETS_DIR.as_posix() + "/")

