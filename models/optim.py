"""Adam for the variants: torch.optim.Adam without torch.compile's machinery at start-up.

torch wraps `Optimizer.add_param_group`, `zero_grad`, `state_dict` and `load_state_dict`
in `torch._disable_dynamo`, which imports torch._dynamo the first time one of them runs,
and `Adam.step` imports it on every call (to place graph breaks when compiled). That
import costs about 2.4 s of CPU, as much again as `import torch`, in every training
process, for a compiler that nothing here uses. This subclass calls torch's own
undecorated methods instead (`inspect.unwrap`): the same update kernels, the same
state_dict (checkpoints are interchangeable with torch.optim.Adam's), the same profiler
hooks; only the torch.compile integration of these methods is skipped, so do not wrap
an optimizer step of this class in torch.compile.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch


def _plain(method: Callable[..., Any]) -> Callable[..., Any]:
    return inspect.unwrap(method)


class Adam(torch.optim.Adam):
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _plain(torch.optim.Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _plain(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return _plain(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _plain(torch.optim.Optimizer.load_state_dict)(self, state_dict)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        # torch's wrapper runs the step with autograd off (this optimizer is not differentiable).
        with torch.no_grad():
            return _plain(torch.optim.Adam.step)(self, closure)
