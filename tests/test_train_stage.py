"""The `python -m pipeline.stages.train` command: help, errors, outputs, resume, no-op."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.stages.train import main
from tests.conftest import ROOT
from tests.tiny_gan import write_params, write_tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_works_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.stages.train", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for flag in ("ABLATION", "--steps", "--stop-at", "--out", "--device", "--no-resume"):
        assert flag.lower() in done.stdout.lower()


def test_unknown_ablation_is_one_line_with_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["p2p_unet_rgb_grey"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "unknown ablation 'p2p_unet_rgb_grey'" in err and "did you mean 'p2p_unet_rgb_gray'" in err


def test_missing_dataset_says_which_stage_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = write_params(tmp_path / "params.yaml")
    code, _, err = _run(["tiny", "--params", str(params), "--datasets", str(tmp_path / "none")], capsys)
    assert code == 2 and err.count("\n") == 1 and "run the align stage" in err


def test_cuda_requested_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    write_tiny_dataset(tmp_path / "datasets" / "tiny")
    params = write_params(tmp_path / "params.yaml")
    code, _, err = _run(["tiny", "--params", str(params), "--datasets", str(tmp_path / "datasets"),
                         "--out", str(tmp_path / "run"), "--device", "cuda"], capsys)
    assert code == 2 and "no CUDA GPU" in err and err.count("\n") == 1


def test_stage_outputs_resume_no_op_and_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # default paths: runs/<ablation>, data/datasets/<name>
    write_tiny_dataset(tmp_path / "data" / "datasets" / "tiny")
    write_params(tmp_path / "params.yaml")
    run = tmp_path / "runs" / "tiny"

    code, out, _ = _run(["tiny", "--stop-at", "3", "--no-progress"], capsys)
    assert code == 0 and "stopped at step 3/8, re-run to continue" in out

    code, out, _ = _run(["tiny", "--no-progress"], capsys)
    assert code == 0 and out.startswith("trained tiny: 5 steps in ") and "resumed at step 3" in out
    for name in ("checkpoint.pt", "model.pt", "options.json", "dvclive/metrics.json", "samples/latest.png",
                 "samples/step_000008.png"):
        assert (run / name).is_file(), name
    options = json.loads((run / "options.json").read_text())
    assert options["dataset"]["synthetic_input"] is True and options["parameters"]["G"] > 0
    assert options["preset"]["name"] == "t" and options["options"]["ngf"] == 8

    code, out, _ = _run(["tiny"], capsys)
    assert code == 0 and "already trained (8/8 steps" in out

    write_params(tmp_path / "params.yaml", ablations={"tiny": {"model": "tiny_p2p", "dataset": "tiny",
                                                               "netD": "pixel"}})
    code, _, err = _run(["tiny"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "options.netD: 'basic' in the checkpoint, 'pixel' now" in err and "rm -r runs/tiny" in err

    code, out, _ = _run(["tiny", "--no-resume", "--no-progress", "--steps", "2"], capsys)
    assert code == 0 and out.startswith("trained tiny: 2 steps")


def test_dvc_mode_resumes_only_interrupted_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """--resume-interrupted-only (dvc.yaml): DVC re-runs a stage only when something changed,
    so finished or mismatched checkpoints are retrained, interrupted matching ones resumed."""
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "data" / "datasets" / "tiny")
    write_params(tmp_path / "params.yaml")

    code, out, _ = _run(["tiny", "--stop-at", "3", "--no-progress"], capsys)
    assert code == 0
    code, out, err = _run(["tiny", "--resume-interrupted-only", "--no-progress"], capsys)
    assert code == 0 and "resumed at step 3" in out and "resuming the interrupted run" in err

    code, out, err = _run(["tiny", "--resume-interrupted-only", "--no-progress"], capsys)
    assert code == 0 and out.startswith("trained tiny: 8 steps") and "is finished" in err

    write_params(tmp_path / "params.yaml", ablations={"tiny": {"model": "tiny_p2p", "dataset": "tiny",
                                                               "netD": "pixel"}})
    code, out, err = _run(["tiny", "--resume-interrupted-only", "--no-progress"], capsys)
    assert code == 0 and out.startswith("trained tiny: 8 steps") and "from other settings" in err
