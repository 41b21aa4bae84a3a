"""bench.reference_models builds the reference implementations' models from checkouts of
different generations. The checkouts here are fakes laid out like the upstream repository
(tests/fake_reference): the real ones are not part of this repository, and tests run offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fake_reference import write_fake_checkout


def _reference_worker(reference_dir: Path, config: str) -> dict[str, object]:
    """One `bench.train_speed` reference measurement, in its own process as the benchmark runs it
    (the checkout's `models` package must not meet ours)."""
    cmd = [sys.executable, "-m", "bench.train_speed", "--worker", "ref", "--config", config,
           "--reference-dir", str(reference_dir), "--size", "16", "--warmup", "0", "--iters", "1",
           "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT "))
    return json.loads(line.removeprefix("BENCH_RESULT "))  # type: ignore[no-any-return]


def _conv(c_in: int, c_out: int) -> int:
    return c_in * c_out * 9 + c_out


@pytest.mark.parametrize("config", ["pix2pix_unet256", "cyclegan"])
def test_a_checkout_whose_model_reads_options_set_outside_the_parser(tmp_path: Path, config: str) -> None:
    # Its BaseModel reads opt.device, which its parse() (never run by the benchmark) would set.
    out = _reference_worker(write_fake_checkout(tmp_path, "current"), config)
    assert len(out["times"]) == 1  # type: ignore[arg-type]
    if config == "cyclegan":
        g, d = _conv(3, 3), _conv(3, 1)
        assert out["params"] == {"G_A": g, "G_B": g, "D_A": d, "D_B": d}
    else:  # our settings arrived: 1-channel gray input, 3-channel output
        assert out["params"] == {"G": _conv(1, 3), "D": _conv(4, 1)}


def test_a_2018_checkout_with_initialize_and_the_old_option_names(tmp_path: Path) -> None:
    out = _reference_worker(write_fake_checkout(tmp_path, "old_2018"), "pix2pix_resnet9")
    assert out["params"] == {"G": _conv(1, 3), "D": _conv(4, 1)}


def test_a_checkout_older_than_python_3_7_is_refused_in_one_line(tmp_path: Path) -> None:
    # Mid-2018 upstream commits call `.cuda(..., async=True)`: a syntax error since Python 3.7.
    root = write_fake_checkout(tmp_path, "old_2018")
    model = root / "pytorch-CycleGAN-and-pix2pix" / "models" / "pix2pix_model.py"
    model.write_text(model.read_text() + "\n\ndef _old(x):\n    return x.cuda(0, async=True)\n")
    cmd = [sys.executable, "-m", "bench.train_speed", "--configs", "pix2pix_resnet9", "--reference-dir",
           str(root), "--size", "16", "--warmup", "0", "--iters", "1", "--rounds", "1", "--threads", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "is not valid Python" in last and "pix2pix_model.py" in last
    assert "Traceback" not in done.stderr
