"""CPU threads for the stages that run networks (train, evaluate, colourise) on a machine
that other processes may share.

Why. PyTorch runs every operation on as many OpenMP threads as there are cores and makes
them meet at a barrier after each one. When another busy process shares the cores, the
thread that shares a core with it waits for the scheduler's time slices at every
barrier, while the others spin: a 2-core machine with one busy process made training
5.6x slower per step instead of the fair 2x (docs/benchmarks/shared_cpu.md). So a stage
measures, while it starts (over the seconds that importing torch takes anyway), how
much of the machine other processes keep busy, and runs on the cores left free. On an
idle machine that is torch's own choice, so nothing changes there.

Two calls, because OpenMP reads its environment once, when torch is imported:

    policy = CpuPolicy.start()     # before importing torch: sets the OpenMP wait policy
    ...                            # import torch and the rest (the measurement window)
    choice = policy.apply()        # the thread count, from what other processes used

Overrides, in the environment: `LUMINESCENCE_THREADS=N` (or OpenMP's own
`OMP_NUM_THREADS=N`) fixes the thread count; `OMP_WAIT_POLICY` / `GOMP_SPINCOUNT` set by
the user are kept. The choice is made once per process: with `train.deterministic` the
same thread count is needed for bit-identical results (a resumed run reuses its
checkpoint's, see pipeline.training.loop), so it does not change mid-run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

THREADS_ENV = "LUMINESCENCE_THREADS"
# How long OpenMP threads spin at a barrier before sleeping (libgomp's default is 300,000
# spins). Shorter spins hand a shared core back sooner; see docs/benchmarks/shared_cpu.md.
DEFAULT_SPINCOUNT = "10000"
MIN_WINDOW_S = 0.3  # shorter measurements are topped up by sleeping (only when torch loads fast)


@dataclass(frozen=True)
class CpuSample:
    """Busy and total time of the CPUs this process may use, and this process's own CPU time."""

    wall: float
    busy: float  # seconds, all processes (from /proc/stat)
    own: float  # seconds, this process (user + system)


def _read_sample(cpus: set[int]) -> CpuSample | None:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            lines = fh.read(1 << 20).splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        fields = [int(x) for x in rest.split()[:8]]
        if len(fields) < 8:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy += user + nice + system + irq + softirq + steal
    times = os.times()
    return CpuSample(wall=time.monotonic(), busy=busy / tick, own=times.user + times.system)


def usable_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def threads_for(cores: int, others_busy: float, cap: int) -> int:
    """Threads to run beside other processes that keep `others_busy` cores' worth busy:
    the cores they leave free (at least 1, at most `cap`, torch's own choice)."""
    return max(1, min(cap, cores, round(cores - others_busy)))


@dataclass(frozen=True)
class CpuChoice:
    threads: int
    cores: int
    source: str  # "measured", THREADS_ENV, "OMP_NUM_THREADS", "torch default" or "kept" (in-process)
    others_busy: float | None = None
    wait: str = ""

    def describe(self) -> str:
        if self.source == "measured":
            why = f"other processes kept {self.others_busy:.1f} of {self.cores} cores busy"
        elif self.source in (THREADS_ENV, "OMP_NUM_THREADS"):
            why = f"{self.source} is set"
        else:
            why = self.source
        wait = f"; {self.wait}" if self.wait else ""
        return (f"CPU: {self.threads} thread{'s' if self.threads != 1 else ''} ({why}; set "
                f"{THREADS_ENV}=N to choose){wait}")


class CpuPolicy:
    """Chooses the OpenMP wait behaviour (at `start`) and the thread count (at `apply`)."""

    def __init__(self, env: MutableMapping[str, str], torch_loaded: bool) -> None:
        self.env = env
        self.torch_loaded = torch_loaded
        self.cpus = usable_cpus()
        self.first = None if torch_loaded else _read_sample(self.cpus)
        self.wait = ""
        if not torch_loaded and "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
            env["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT
            self.wait = f"OpenMP spins {DEFAULT_SPINCOUNT} before sleeping"

    @classmethod
    def start(cls, env: MutableMapping[str, str] | None = None) -> CpuPolicy:
        """Call before torch is imported. In a process that has already imported torch
        (a stage called as a function, e.g. by tests) nothing is changed."""
        return cls(os.environ if env is None else env, torch_loaded="torch" in sys.modules)

    def fixed_threads(self) -> tuple[int, str] | None:
        for name in (THREADS_ENV, "OMP_NUM_THREADS"):
            value = self.env.get(name, "").strip()
            if value:
                try:
                    n = int(value)
                except ValueError:
                    n = 0
                if n < 1:
                    from pipeline.core.errors import LuminescenceError

                    raise LuminescenceError(f"{name}={value!r} must be a whole number of threads "
                                            f"(at least 1); unset it to let the stage choose")
                return n, name
        return None

    def choose(self, cap: int) -> CpuChoice:
        """The thread count; `cap` is torch's own default (never exceeded)."""
        cores = len(self.cpus)
        fixed = self.fixed_threads()
        if fixed is not None:
            return CpuChoice(fixed[0], cores, fixed[1], wait=self.wait)
        if self.torch_loaded:
            return CpuChoice(cap, cores, "kept")
        if self.first is None:
            return CpuChoice(cap, cores, "torch default", wait=self.wait)
        if time.monotonic() - self.first.wall < MIN_WINDOW_S:
            time.sleep(MIN_WINDOW_S - (time.monotonic() - self.first.wall))
        second = _read_sample(self.cpus)
        if second is None:
            return CpuChoice(cap, cores, "torch default", wait=self.wait)
        wall = max(second.wall - self.first.wall, 1e-6)
        others = max(0.0, (second.busy - self.first.busy) - (second.own - self.first.own)) / wall
        return CpuChoice(threads_for(cores, others, cap), cores, "measured", others_busy=others,
                         wait=self.wait)

    def apply(self) -> CpuChoice:
        """Measure, then set torch's thread count (imports torch)."""
        import torch

        choice = self.choose(torch.get_num_threads())
        if choice.source not in ("kept",) and choice.threads != torch.get_num_threads():
            torch.set_num_threads(choice.threads)
        return choice
