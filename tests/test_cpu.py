"""pipeline.core.cpu: threads for a shared machine, chosen from what other processes use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.core import cpu
from pipeline.core.cpu import CpuPolicy, CpuSample, threads_for
from pipeline.core.errors import LuminescenceError
from tests.conftest import ROOT


@pytest.mark.parametrize(("cores", "others", "cap", "expected"), [
    (2, 0.0, 2, 2),      # idle: torch's own choice
    (2, 0.3, 2, 2),      # a little background work does not cost a thread
    (2, 1.0, 2, 1),      # one busy process: the free core
    (2, 0.9, 2, 1),
    (2, 5.0, 2, 1),      # never fewer than one
    (16, 4.2, 16, 12),
    (16, 0.0, 8, 8),     # never more than torch would use
])
def test_threads_are_the_cores_left_free(cores: int, others: float, cap: int, expected: int) -> None:
    assert threads_for(cores, others, cap) == expected


def _policy(monkeypatch: pytest.MonkeyPatch, samples: list[CpuSample], env: dict[str, str] | None = None,
            cpus: int = 2) -> CpuPolicy:
    it = iter(samples)
    monkeypatch.setattr(cpu, "_read_sample", lambda _cpus: next(it))
    monkeypatch.setattr(cpu, "usable_cpus", lambda: set(range(cpus)))
    return CpuPolicy({} if env is None else env, torch_loaded=False)


def test_other_processes_load_is_measured_without_our_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # Over 3 s the CPUs were busy 5.7 s, 2.7 of them ours (importing torch): others kept 1 core busy.
    policy = _policy(monkeypatch, [CpuSample(wall=10.0, busy=100.0, own=0.5),
                                   CpuSample(wall=13.0, busy=105.7, own=3.2)])
    monkeypatch.setattr(cpu.time, "monotonic", lambda: 13.0)
    choice = policy.choose(cap=2)
    assert choice.source == "measured" and choice.others_busy == pytest.approx(1.0)
    assert choice.threads == 1
    assert "1 thread (other processes kept 1.0 of 2 cores busy" in choice.describe()


def test_an_idle_machine_keeps_torchs_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy(monkeypatch, [CpuSample(10.0, 100.0, 0.5), CpuSample(13.0, 102.8, 3.2)])
    monkeypatch.setattr(cpu.time, "monotonic", lambda: 13.0)
    assert policy.choose(cap=2).threads == 2


@pytest.mark.parametrize("name", ["LUMINESCENCE_THREADS", "OMP_NUM_THREADS"])
def test_the_environment_fixes_the_thread_count(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    policy = _policy(monkeypatch, [CpuSample(10.0, 100.0, 0.5)], env={name: "3"})
    choice = policy.choose(cap=2)
    assert (choice.threads, choice.source) == (3, name) and f"{name} is set" in choice.describe()


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    policy = _policy(monkeypatch, [CpuSample(10.0, 100.0, 0.5)], env={"LUMINESCENCE_THREADS": value})
    with pytest.raises(LuminescenceError, match=r"LUMINESCENCE_THREADS=.* must be a whole number"):
        policy.choose(cap=2)


def test_openmp_spinning_is_shortened_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    env: dict[str, str] = {}
    _policy(monkeypatch, [CpuSample(10.0, 100.0, 0.5)], env=env)
    assert env == {"GOMP_SPINCOUNT": cpu.DEFAULT_SPINCOUNT}
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(chosen)
        _policy(monkeypatch, [CpuSample(10.0, 100.0, 0.5)], env=env)
        assert env == chosen


def test_a_process_that_already_loaded_torch_is_left_alone() -> None:
    import torch

    env: dict[str, str] = {}
    policy = CpuPolicy.start(env)
    threads = torch.get_num_threads()
    assert env == {} and policy.apply().source == "kept" and torch.get_num_threads() == threads


def test_a_stage_process_applies_the_policy() -> None:
    code = ("import os\nfrom pipeline.core.cpu import CpuPolicy\np = CpuPolicy.start()\n"
            "import torch\nc = p.apply()\n"
            "print(c.source, c.threads == torch.get_num_threads(), os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "LUMINESCENCE_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["measured", "True", cpu.DEFAULT_SPINCOUNT]
