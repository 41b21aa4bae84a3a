"""Where training runs: device choice, determinism, seeding and multi-process set-up.

Multi-GPU runs are launched with torchrun, which sets RANK / WORLD_SIZE / LOCAL_RANK.
GANs step several optimizers per iteration (D, then G, sometimes more), which
DistributedDataParallel handles poorly (one reducer per wrapped module, unused-parameter
detection, gradients of G flowing through D). So each process keeps plain modules and
the trainer sets `GANModel.gradient_hook = average_gradients`: gradients are averaged
across processes right before each optimizer step, which gives every process the same
update and the same weights, as DDP would.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline.core.errors import LuminescenceError


class DeviceError(LuminescenceError):
    """The requested device is not usable here."""


# --------------------------------------------------------------------------- devices
def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: CUDA, then Apple MPS, then CPU. A named device must be available."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device 'cuda' requested (train.device or --device) but PyTorch sees no "
                              "CUDA GPU here; use --device auto or cpu")
        return torch.device("cuda", local_rank)
    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("device 'mps' requested but Apple MPS is not available here; "
                              "use --device auto or cpu")
        return torch.device("mps")
    if requested == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device '{requested}'; use auto, cpu, cuda or mps")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def uses_bf16(device: torch.device, enabled: bool) -> bool:
    """bf16 autocast only on CUDA GPUs that support it (Ampere and newer)."""
    return enabled and device.type == "cuda" and torch.cuda.is_bf16_supported()


# --------------------------------------------------------------------------- determinism
def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic mode: the same inputs give bit-identical results on the same machine.

    CPU: strict (an op without a deterministic kernel is an error); costs nothing
    measurable for these conv nets (see docs/benchmarks/training.md). CUDA: deterministic
    cuDNN/cuBLAS kernels and no cuDNN autotuning; ops without a deterministic kernel only
    warn, so CUDA runs are reproducible in practice but not guaranteed bit-identical.
    """
    if device.type == "cuda":
        if deterministic:
            # cuBLAS reads this when its first handle is created, i.e. before any matmul.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
    set_deterministic(deterministic, warn_only=device.type != "cpu")


def set_deterministic(mode: bool, warn_only: bool = False) -> None:
    """`torch.use_deterministic_algorithms` without importing the compiler.

    torch's function also sets `torch._inductor.config.deterministic`, and importing that
    module imports torch._inductor and torch._dynamo: 2-3 s of every stage's start-up on
    a CPU. Nothing here is compiled, so the flag is set in ATen directly, and in the
    inductor's configuration too when something has loaded it already.
    """
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = mode  # type: ignore[attr-defined]
    torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and every GPU) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from several integers (e.g. base seed and rank)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0]) >> 1


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """The process's place in a torchrun launch (a single process when not launched so)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise DeviceError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers ({exc}); launch with torchrun") \
            from None
    if world < 1 or not 0 <= rank < world:
        raise DeviceError(f"RANK {rank} is outside WORLD_SIZE {world}; launch with torchrun")
    return Distributed(rank=rank, world_size=world, local_rank=local)


def init_distributed(info: Distributed, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo on CPU."""
    if not info.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # Rank 0 validates alone while the others wait at their next all-reduce.
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=60),
                            device_id=device if device.type == "cuda" else None)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _all_reduce_mean(tensors: Iterable[torch.Tensor]) -> None:
    """Average tensors in place across processes: one collective per dtype (a flat
    concatenation of that dtype's tensors)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(dist.get_world_size())
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """The GANModel.gradient_hook under torch.distributed: mean gradient over processes.

    Parameters without a gradient are skipped; they are the same on every process
    because every process runs the same model code on same-shaped batches.
    """
    _all_reduce_mean(p.grad for p in params if p.grad is not None)


def average_buffers(nets: Iterable[nn.Module]) -> None:
    """Average floating-point buffers (batch-norm running statistics) across processes.

    Each process normalises with its own batch, so running statistics drift apart;
    averaging them after every step keeps all copies identical (DDP instead copies
    rank 0's; the average uses every process's data).
    """
    _all_reduce_mean(b for net in nets for b in net.buffers() if b.is_floating_point())


def broadcast_state(nets: Iterable[nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    with torch.no_grad():
        for net in nets:
            for tensor in net.state_dict().values():
                dist.broadcast(tensor, src=0)


def gather_objects(obj: object, info: Distributed) -> list[object] | None:
    """Every process's `obj` on rank 0 (None elsewhere); just [obj] when not distributed."""
    if not info.enabled:
        return [obj]
    out: list[object] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(info: Distributed) -> None:
    if info.enabled:
        dist.barrier()
