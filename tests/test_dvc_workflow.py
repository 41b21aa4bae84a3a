"""The experiment workflow users rely on, checked with DVC itself in a temporary clone.

The clone gets this checkout's dvc.yaml, params.yaml and .dvcignore; every stage output is a small
placeholder recorded with `dvc commit -f`, so the pipeline starts up to date without
training anything. Then params.yaml is edited as a user would and `dvc status` says
which stages changed; the stages `dvc repro` would run are those plus everything
downstream of them in DVC's own graph.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from tests.conftest import ROOT

DVC = [sys.executable, "-m", "dvc"]
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def stage_graph(repo_dir: Path) -> tuple[nx.DiGraph, list[object]]:
    from dvc.repo import Repo

    # stage names (`addressing`) are relative to the working directory, as in `dvc status`
    with contextlib.chdir(repo_dir), Repo(".") as repo:
        stages = list(repo.index.stages)
        graph = nx.DiGraph()
        for stage in repo.index.graph.nodes:
            graph.add_node(stage.addressing)
        for a, b in repo.index.graph.edges:  # a depends on b
            graph.add_edge(a.addressing, b.addressing)
        return graph, stages


def would_run(repo_dir: Path) -> set[str]:
    """Stages `dvc repro` would run: changed ones and everything downstream of them."""
    changed = set(json.loads(run([*DVC, "status", "--json"], repo_dir)))
    graph, _ = stage_graph(repo_dir)
    unknown = changed - set(graph)
    assert not unknown, f"dvc status names stages missing from the graph: {unknown}"
    downstream = set().union(*(nx.ancestors(graph, s) for s in changed))
    return changed | downstream


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone whose pipeline is fully up to date (placeholder outputs, committed lock)."""
    repo = tmp_path_factory.mktemp("workflow") / "repo"
    run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(repo)], ROOT)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    _, stages = stage_graph(repo)
    for stage in stages:
        for item in [*stage.deps, *stage.outs]:  # type: ignore[attr-defined]
            if type(item).__name__ == "ParamsDependency":
                continue
            path = Path(item.fs_path)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"placeholder for {item.def_path}\n")
    run([*DVC, "commit", "-f", "-q"], repo)
    assert json.loads(run([*DVC, "status", "--json"], repo)) == {}
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "up to date"], repo)
    return repo


@pytest.fixture
def repo(clone: Path) -> Path:
    yield clone
    run(["git", "checkout", "-q", "--", "params.yaml"], clone)


def edit_params(repo: Path, pattern: str, replacement: str) -> None:
    path = repo / "params.yaml"
    text, n = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.M)
    assert n == 1, pattern
    path.write_text(text)


def params(repo: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((repo / "params.yaml").read_text())


def ablations(repo: Path) -> list[str]:
    return list(params(repo)["ablations"])


def test_nothing_runs_when_nothing_changed(repo: Path) -> None:
    assert would_run(repo) == set()


def test_the_align_stages_reference_layout_exports_are_not_tracked(repo: Path) -> None:
    # .dvcignore leaves out aligned/ and unpaired/ (PNG copies for the reference code, read by
    # no stage): a changed export changes nothing, a changed split still re-runs what reads it.
    folder = repo / "data" / "datasets" / "gray"
    placeholder = folder.read_text()
    folder.unlink()
    (folder / "aligned" / "train").mkdir(parents=True)
    (folder / "unpaired" / "trainA").mkdir(parents=True)
    (folder / "train.npy").write_bytes(b"split")
    (folder / "aligned" / "train" / "0.png").write_bytes(b"png")
    try:
        run([*DVC, "commit", "-f", "-q", "align@gray"], repo)
        assert json.loads(run([*DVC, "status", "--json", "align@gray"], repo)) == {}
        (folder / "aligned" / "train" / "1.png").write_bytes(b"another png")
        (folder / "unpaired" / "trainA" / "0.png").write_bytes(b"png")
        assert json.loads(run([*DVC, "status", "--json", "align@gray"], repo)) == {}
        (folder / "train.npy").write_bytes(b"another split")
        assert "align@gray" in json.loads(run([*DVC, "status", "--json", "align@gray"], repo))
    finally:
        shutil.rmtree(folder)
        folder.write_text(placeholder)
        run(["git", "checkout", "-q", "--", "dvc.lock"], repo)
    assert would_run(repo) == set()


def test_python_bytecode_beside_the_code_reruns_nothing(repo: Path) -> None:
    # Python writes __pycache__/*.pyc next to the modules it imports (unless
    # PYTHONDONTWRITEBYTECODE is set): .dvcignore leaves them out, or running one stage, or the
    # tests, would change the code folders that every stage depends on.
    caches = [repo / folder / "__pycache__" for folder in ("pipeline/core", "models", "eval")]
    stray = repo / "models" / "stray.pyc"
    module = repo / "pipeline" / "core" / "probe_new_module.py"
    try:
        for cache in caches:
            cache.mkdir(exist_ok=True)
            (cache / "probe.cpython-311.pyc").write_bytes(b"bytecode")
        stray.write_bytes(b"bytecode")
        assert would_run(repo) == set()
        module.write_text("x = 1\n")  # a real code change still counts
        assert "film" in would_run(repo)
    finally:
        for cache in caches:
            shutil.rmtree(cache, ignore_errors=True)
        stray.unlink(missing_ok=True)
        module.unlink(missing_ok=True)
    assert would_run(repo) == set()


def test_no_stage_reads_the_reference_layout_exports() -> None:
    code = [p for d in ("pipeline/training", "pipeline/results") for p in (ROOT / d).rglob("*.py")]
    code += [ROOT / "pipeline/stages/train.py", ROOT / "pipeline/stages/evaluate.py"]
    readers = [p.name for p in code if re.search(r"[\"'/](aligned|unpaired)[/\"']", p.read_text())]
    assert readers == [], f"these read the align stage's exports, which .dvcignore leaves out: {readers}"
    ignored = (ROOT / ".dvcignore").read_text().splitlines()
    assert {"data/datasets/*/aligned/", "data/datasets/*/unpaired/"} <= set(ignored)


def test_the_committed_lock_records_only_stages_that_exist() -> None:
    """DVC keeps a removed or renamed stage's entry in dvc.lock; the committed lock must not
    (its hashes would describe results that `make repro` no longer makes)."""
    import yaml

    graph, _ = stage_graph(ROOT)
    locked = set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"])
    assert locked - set(graph) == set(), "dvc.lock records stages that dvc.yaml no longer defines"


def test_adding_an_ablation_runs_only_its_stages_and_the_report(repo: Path) -> None:
    new = "  p2p_unet_small_gray: {model: pix2pix, dataset: gray, ngf: 32}\n"
    edit_params(repo, r"^ablations:\n", "ablations:\n" + new)
    assert would_run(repo) == {"train@p2p_unet_small_gray", "evaluate@p2p_unet_small_gray", "report"}


def test_changing_one_ablation_reruns_only_it(repo: Path) -> None:
    name = ablations(repo)[0]
    edit_params(repo, rf"^(  {name}: {{.*)}}$", r"\1, lambda_L1: 50}")
    assert would_run(repo) == {f"train@{name}", f"evaluate@{name}", "report"}


def test_colourising_with_an_ablation_instead_of_the_release_model(repo: Path) -> None:
    assert params(repo)["colourise"]["model"] == "release/model.pt"
    name = ablations(repo)[0]
    edit_params(repo, r"^  model: release/model.pt$", f"  model: runs/{name}/model.pt")
    assert would_run(repo) == {"colourise"}  # the ablation is up to date: nothing is retrained


def test_changing_shared_training_defaults_reruns_every_ablation(repo: Path) -> None:
    edit_params(repo, r"^  defaults: {}", "  defaults: {lr: 0.0001}")
    expected = {f"{kind}@{a}" for a in ablations(repo) for kind in ("train", "evaluate")}
    assert would_run(repo) == expected | {"report"}  # colourise uses the release model


def test_adding_an_area_of_interest_reruns_nothing(repo: Path) -> None:
    # each fetch stage depends on its own `aois.<key>` only (the frozen release stage is not run)
    edit_params(repo, r"^aois:\n", "aois:\n  new_area: {path: aoi/erie_village.shp, buffer_m: -100}\n")
    assert would_run(repo) == set()


def test_changing_one_area_of_interest_refetches_only_its_stores(repo: Path) -> None:
    edit_params(repo, r"^(  columbia_heldout: {path: [^,}]*)}", r"\1, buffer_m: 10}")
    stages = would_run(repo)
    changed = {s for s in stages if s.startswith("fetch@")}
    expected = {f"fetch@{k}" for k, v in params(repo)["fetch"].items() if v["aoi"] == "columbia_heldout"}
    assert changed == expected and expected and "fetch@erie_village-erie_2021" not in stages


def test_removing_an_ablation_reruns_only_the_report(repo: Path) -> None:
    name = ablations(repo)[0]
    edit_params(repo, rf"^  {name}: {{.*}}\n", "")
    assert would_run(repo) == {"report"}


def test_metrics_diff_between_two_commits_shows_per_ablation_changes(repo: Path) -> None:
    names = ablations(repo)[:2]

    def write(values: dict[str, float]) -> None:
        for name, fid in zip(names, values.values(), strict=True):
            record = {"fid": fid, "kid_mean": 0.05, "delta_e2000": 12.5, "heldout_fid": 150.0}
            (repo / "metrics" / f"{name}.json").write_text(json.dumps(record))

    write({names[0]: 80.0, names[1]: 90.0})
    run(["git", "commit", "-qam", "first run"], repo)
    write({names[0]: 70.0, names[1]: 90.0})
    run(["git", "commit", "-qam", "second run"], repo)
    try:
        diff = json.loads(run([*DVC, "metrics", "diff", "HEAD~1", "HEAD", "--json"], repo))
        changed = diff[f"metrics/{names[0]}.json"]["fid"]
        assert changed == {"old": 80.0, "new": 70.0, "diff": -10.0}
        assert f"metrics/{names[1]}.json" not in diff  # unchanged files are left out
        table = run([*DVC, "metrics", "diff", "HEAD~1", "HEAD"], repo)
        assert f"metrics/{names[0]}.json" in table and "-10" in table
    finally:
        run(["git", "reset", "-q", "--hard", "HEAD~2"], repo)


def test_metrics_show_of_the_whole_table_fits_250_columns(repo: Path) -> None:
    """The metric files hold the headline numbers only, so `dvc metrics show` of every ablation
    and baseline reads as one table no wider than 250 columns (values shaped like a real run's)."""
    import random

    rng = random.Random(0)
    stems = [*ablations(repo), *(f"baseline_{b}" for b in params(repo)["baselines"])]
    for stem in stems:
        values = {"fid": rng.uniform(50, 400), "kid_mean": rng.uniform(0.01, 0.6),
                  "kid_std": rng.uniform(0.001, 0.05), "delta_e2000": rng.uniform(3, 30),
                  "psnr": rng.uniform(12, 35), "ssim": rng.uniform(0.3, 0.99),
                  "colourfulness": rng.uniform(0, 50)}
        record = {**values, **{f"heldout_{k}": v * 1.1 for k, v in values.items() if k != "kid_std"}}
        (repo / "metrics" / f"{stem}.json").write_text(json.dumps(record))
    try:
        table = run([*DVC, "metrics", "show"], repo)
        lines = table.splitlines()
        assert len(lines) >= len(stems) and all(f"metrics/{s}.json" in table for s in stems)
        assert max(map(len, lines)) <= 250, max(map(len, lines))
        assert "heldout_fid" in lines[0] and "kid_std" in lines[0]
    finally:
        run(["git", "checkout", "-q", "--", "metrics"], repo)
